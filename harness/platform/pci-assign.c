/*
 * PCI resource sizing and placement; see pci-assign.h.
 */
#include <errno.h>

#include "pci-assign.h"

static const uint64_t granule[DEXT_RES_NTYPES] = {
    [DEXT_RES_IO] = 0x1000,
    [DEXT_RES_MEM] = 0x100000,
    [DEXT_RES_PREF] = 0x100000,
};

uint64_t dext_bar_decode(uint32_t orig_lo, uint32_t probe_lo, uint32_t probe_hi,
                         bool *is_io, bool *is64, bool *pref)
{
    uint64_t mask;

    *is_io = orig_lo & 1;
    *is64 = false;
    *pref = false;
    if (*is_io) {
        mask = probe_lo & ~3u;
        if (!mask) {
            return 0;
        }
        if (!(mask & 0xffff0000u)) {
            mask |= 0xffff0000u;     /* 16-bit I/O decoder */
        }
        return (uint32_t)(~mask + 1);
    }
    *is64 = ((orig_lo >> 1) & 3) == 2;
    *pref = orig_lo & 8;
    mask = probe_lo & ~0xfu;
    if (*is64) {
        mask |= (uint64_t)probe_hi << 32;
        if (!mask) {
            return 0;
        }
        return ~mask + 1;
    }
    if (!mask) {
        return 0;
    }
    return (uint32_t)(~(uint32_t)mask + 1);
}

DextResBus *dext_res_bus_new(bool pref64)
{
    DextResBus *b = g_new0(DextResBus, 1);

    b->items = g_ptr_array_new();
    b->pref64 = pref64;
    return b;
}

void dext_res_bus_free(DextResBus *b)
{
    if (!b) {
        return;
    }
    for (guint i = 0; i < b->items->len; i++) {
        DextResItem *it = g_ptr_array_index(b->items, i);

        /* a child bus is shared by its three window items */
        if (it->child && it->type == DEXT_RES_IO) {
            dext_res_bus_free(it->child);
        }
        g_free(it);
    }
    g_ptr_array_free(b->items, TRUE);
    g_free(b);
}

DextResItem *dext_res_add_bar(DextResBus *b, int owner, int bar,
                              DextResType type, bool is64, uint64_t size)
{
    DextResItem *it = g_new0(DextResItem, 1);

    it->owner = owner;
    it->bar = bar;
    it->type = type;
    it->is64 = is64;
    it->size = size;
    it->align = size;
    g_ptr_array_add(b->items, it);
    return it;
}

void dext_res_add_bridge(DextResBus *parent, int owner, DextResBus *child)
{
    for (int t = 0; t < DEXT_RES_NTYPES; t++) {
        DextResItem *it = g_new0(DextResItem, 1);

        it->owner = owner;
        it->bar = -1;
        it->type = t;
        it->child = child;
        g_ptr_array_add(parent->items, it);
    }
}

static gint cmp_align_desc(gconstpointer a, gconstpointer b)
{
    const DextResItem *x = *(DextResItem * const *)a;
    const DextResItem *y = *(DextResItem * const *)b;

    if (x->align != y->align) {
        return x->align > y->align ? -1 : 1;
    }
    if (x->size != y->size) {
        return x->size > y->size ? -1 : 1;
    }
    return 0;
}

static bool pref_all64(DextResBus *b)
{
    for (guint i = 0; i < b->items->len; i++) {
        DextResItem *it = g_ptr_array_index(b->items, i);

        if (it->child) {
            if (it->type == DEXT_RES_PREF &&
                (!pref_all64(it->child) ||
                 (!it->child->pref64 && it->child->items->len))) {
                return false;
            }
        } else if (it->type == DEXT_RES_PREF && !it->is64) {
            return false;
        }
    }
    return true;
}

/* The type an item is placed as: PREF folds into MEM when !pref64. */
static DextResType eff_type(const DextResItem *it, bool pref64)
{
    return (it->type == DEXT_RES_PREF && !pref64) ? DEXT_RES_MEM : it->type;
}

/* Compute window sizes bottom-up: pack items of each type in alignment
 * order from offset 0; the bus needs the end offset, rounded. */
static int size_bus(DextResBus *b, bool pref64)
{
    /* children first: items are in the previous run's sorted order, so a
     * window item may come before the one that sizes its bus */
    for (guint i = 0; i < b->items->len; i++) {
        DextResItem *it = g_ptr_array_index(b->items, i);

        if (it->child && it->type == DEXT_RES_IO) {
            int r = size_bus(it->child, pref64);

            if (r < 0) {
                return r;
            }
        }
    }
    for (guint i = 0; i < b->items->len; i++) {
        DextResItem *it = g_ptr_array_index(b->items, i);

        if (it->child) {
            it->size = it->child->size[it->type];
            it->align = it->child->align[it->type];
            it->is64 = it->type == DEXT_RES_PREF && pref64;
        } else if (it->size == 0 || (it->size & (it->size - 1))) {
            return -EINVAL;
        }
    }
    g_ptr_array_sort(b->items, cmp_align_desc);
    for (int t = 0; t < DEXT_RES_NTYPES; t++) {
        uint64_t end = 0, maxalign = 0;

        for (guint i = 0; i < b->items->len; i++) {
            DextResItem *it = g_ptr_array_index(b->items, i);

            if (eff_type(it, pref64) != (DextResType)t || it->size == 0) {
                continue;
            }
            end = (end + it->align - 1) & ~(it->align - 1);
            if (end + it->size < end) {
                return -ENOSPC;
            }
            end += it->size;
            maxalign = MAX(maxalign, it->align);
        }
        if (end) {
            b->size[t] = (end + granule[t] - 1) & ~(granule[t] - 1);
            b->align[t] = MAX(maxalign, granule[t]);
        } else {
            b->size[t] = 0;
            b->align[t] = 0;
        }
    }
    return 0;
}

static void place_bus(DextResBus *b, bool pref64)
{
    for (int t = 0; t < DEXT_RES_NTYPES; t++) {
        uint64_t cur = b->base[t];

        for (guint i = 0; i < b->items->len; i++) {
            DextResItem *it = g_ptr_array_index(b->items, i);

            if (eff_type(it, pref64) != (DextResType)t || it->size == 0) {
                continue;
            }
            cur = (cur + it->align - 1) & ~(it->align - 1);
            it->addr = cur;
            cur += it->size;
            if (it->child) {
                it->child->base[it->type] = it->addr;
            }
        }
    }
    for (guint i = 0; i < b->items->len; i++) {
        DextResItem *it = g_ptr_array_index(b->items, i);

        if (it->child && it->type == DEXT_RES_IO) {
            /* MEM/PREF of the child were folded by the parent's view too */
            if (!pref64) {
                it->child->base[DEXT_RES_PREF] = 0;
            }
            place_bus(it->child, pref64);
        }
    }
}

/* Root window type that did not fit in this thread's last
 * dext_res_assign(), or -1 (overflow while sizing: any type). */
static __thread int tls_overflow = -1;

static bool fits(uint64_t base, uint64_t size, uint64_t align,
                 uint64_t wbase, uint64_t wend, uint64_t *out)
{
    uint64_t a;

    if (size == 0) {
        *out = 0;
        return true;
    }
    a = (wbase + align - 1) & ~(align - 1);
    (void)base;
    if (a < wbase || a + size < a || a + size > wend) {
        return false;
    }
    *out = a;
    return true;
}

int dext_res_assign(DextResBus *root, const DextResWindows *w)
{
    bool pref64 = pref_all64(root) && w->mem64_end > w->mem64_base;
    int r = size_bus(root, pref64);

    tls_overflow = -1;
    if (r < 0) {
        return r;            /* -ENOSPC from sizing: tls_overflow stays -1 */
    }
    if (!fits(0, root->size[DEXT_RES_IO], root->align[DEXT_RES_IO],
                        w->io_base, w->io_end, &root->base[DEXT_RES_IO])) {
        tls_overflow = DEXT_RES_IO;
    } else if (!fits(0, root->size[DEXT_RES_MEM], root->align[DEXT_RES_MEM],
                     w->mem32_base, w->mem32_end,
                     &root->base[DEXT_RES_MEM])) {
        tls_overflow = DEXT_RES_MEM;
    } else if (!fits(0, root->size[DEXT_RES_PREF],
                     root->align[DEXT_RES_PREF], w->mem64_base, w->mem64_end,
                     &root->base[DEXT_RES_PREF])) {
        tls_overflow = DEXT_RES_PREF;
    }
    if (tls_overflow >= 0) {
        return -ENOSPC;
    }
    place_bus(root, pref64);
    return 0;
}

/* Largest BAR (not a window) whose placement type is @t (-1: any). */
static DextResItem *largest(DextResBus *b, int t, bool pref64,
                            DextResBus **owner_bus)
{
    DextResItem *best = NULL;

    for (guint i = 0; i < b->items->len; i++) {
        DextResItem *it = g_ptr_array_index(b->items, i);
        DextResItem *c;
        DextResBus *cb = NULL;

        if (it->child) {
            if (it->type == DEXT_RES_IO &&
                (c = largest(it->child, t, pref64, &cb)) &&
                (!best || c->size > best->size)) {
                best = c;
                *owner_bus = cb;
            }
            continue;
        }
        if ((t < 0 || (int)eff_type(it, pref64) == t) &&
            (!best || it->size > best->size)) {
            best = it;
            *owner_bus = b;
        }
    }
    return best;
}

int dext_res_assign_best(DextResBus *root, const DextResWindows *w,
                         GArray *dropped)
{
    for (;;) {
        bool pref64 = pref_all64(root) && w->mem64_end > w->mem64_base;
        int r = dext_res_assign(root, w), t = tls_overflow;
        DextResBus *ob = NULL;
        DextResItem *it;

        if (r != -ENOSPC) {
            return r;
        }
        it = largest(root, t, pref64, &ob);
        if (!it) {
            return -ENOSPC;      /* windows alone overflow: cannot happen */
        }
        g_array_append_val(dropped, *it);
        g_ptr_array_remove(ob->items, it);
        g_free(it);
    }
}
