/*
 * Range allocator: sorted singly linked free list of holes (first fit),
 * plus a hash of live allocations so free() needs only the start address
 * and a double or bogus free is detected instead of corrupting the list.
 */
#include <errno.h>
#include <stdbool.h>
#include <glib.h>

#include "range-alloc.h"

typedef struct Hole {
    uint64_t start;
    uint64_t size;
    struct Hole *next;
} Hole;

struct DextRangeAlloc {
    uint64_t base, size, granule;
    Hole *holes;             /* sorted by start, disjoint, never adjacent */
    GHashTable *live;        /* start (uint64 key) -> size (uint64 value) */
    uint64_t free_bytes;
};

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

DextRangeAlloc *dext_range_alloc_new(uint64_t base, uint64_t size,
                                     uint64_t granule)
{
    DextRangeAlloc *ra;

    if (!is_pow2(granule) || size == 0 || (base & (granule - 1)) ||
        (size & (granule - 1)) || base + size < base) {
        return NULL;
    }
    ra = g_new0(DextRangeAlloc, 1);
    ra->base = base;
    ra->size = size;
    ra->granule = granule;
    ra->holes = g_new0(Hole, 1);
    ra->holes->start = base;
    ra->holes->size = size;
    ra->free_bytes = size;
    ra->live = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                     g_free);
    return ra;
}

void dext_range_alloc_free_all(DextRangeAlloc *ra)
{
    Hole *h, *n;

    if (!ra) {
        return;
    }
    for (h = ra->holes; h; h = n) {
        n = h->next;
        g_free(h);
    }
    g_hash_table_destroy(ra->live);
    g_free(ra);
}

int dext_range_alloc(DextRangeAlloc *ra, uint64_t size, uint64_t align,
                     uint64_t *addr, uint64_t *real_size)
{
    Hole **pp, *h;
    uint64_t rsize;

    if (size == 0 || (align && !is_pow2(align))) {
        return -EINVAL;
    }
    if (align < ra->granule) {
        align = ra->granule;
    }
    rsize = (size + ra->granule - 1) & ~(ra->granule - 1);
    if (rsize < size) {
        return -EINVAL;              /* size + granule overflowed */
    }
    if (rsize > ra->size) {
        return -ENOMEM;
    }
    for (pp = &ra->holes; (h = *pp); pp = &h->next) {
        uint64_t a = (h->start + align - 1) & ~(align - 1);
        uint64_t pad, *k, *v;

        if (a < h->start) {          /* wrapped */
            continue;
        }
        pad = a - h->start;
        if (pad > h->size || h->size - pad < rsize) {
            continue;
        }
        /* Carve [a, a + rsize) out of h: up to two holes remain. */
        if (h->size - pad > rsize) {
            Hole *tail = g_new0(Hole, 1);

            tail->start = a + rsize;
            tail->size = h->size - pad - rsize;
            tail->next = h->next;
            h->next = tail;
        }
        if (pad) {
            h->size = pad;
        } else {
            *pp = h->next;
            g_free(h);
        }
        k = g_new(uint64_t, 1);
        v = g_new(uint64_t, 1);
        *k = a;
        *v = rsize;
        g_hash_table_insert(ra->live, k, v);
        ra->free_bytes -= rsize;
        *addr = a;
        if (real_size) {
            *real_size = rsize;
        }
        return 0;
    }
    return -ENOMEM;
}

int dext_range_release(DextRangeAlloc *ra, uint64_t addr)
{
    uint64_t *v, size;
    Hole **pp, *prev = NULL, *h;

    v = g_hash_table_lookup(ra->live, &addr);
    if (!v) {
        return -EINVAL;
    }
    size = *v;
    g_hash_table_remove(ra->live, &addr);
    ra->free_bytes += size;

    /* Find the first hole after addr; merge with neighbours. */
    for (pp = &ra->holes; (h = *pp) && h->start < addr; pp = &h->next) {
        prev = h;
    }
    if (prev && prev->start + prev->size == addr) {
        prev->size += size;
        if (h && prev->start + prev->size == h->start) {
            prev->size += h->size;
            prev->next = h->next;
            g_free(h);
        }
        return 0;
    }
    if (h && addr + size == h->start) {
        h->start = addr;
        h->size += size;
        return 0;
    }
    h = g_new0(Hole, 1);
    h->start = addr;
    h->size = size;
    h->next = *pp;
    *pp = h;
    return 0;
}

uint64_t dext_range_alloc_size(DextRangeAlloc *ra, uint64_t addr)
{
    uint64_t *v = g_hash_table_lookup(ra->live, &addr);

    return v ? *v : 0;
}

uint64_t dext_range_alloc_free_bytes(DextRangeAlloc *ra)
{
    return ra->free_bytes;
}

size_t dext_range_alloc_holes(DextRangeAlloc *ra)
{
    size_t n = 0;

    for (Hole *h = ra->holes; h; h = h->next) {
        n++;
    }
    return n;
}

uint64_t dext_range_alloc_largest(DextRangeAlloc *ra)
{
    uint64_t m = 0;

    for (Hole *h = ra->holes; h; h = h->next) {
        m = MAX(m, h->size);
    }
    return m;
}

int dext_range_alloc_check(DextRangeAlloc *ra)
{
    uint64_t sum = 0, live = 0;
    GHashTableIter it;
    gpointer k, v;

    for (Hole *h = ra->holes; h; h = h->next) {
        if (h->size == 0 || h->start < ra->base ||
            h->start + h->size > ra->base + ra->size ||
            (h->start | h->size) & (ra->granule - 1)) {
            return -EFAULT;
        }
        if (h->next && h->start + h->size >= h->next->start) {
            return -EFAULT;          /* overlapping or not coalesced */
        }
        sum += h->size;
    }
    g_hash_table_iter_init(&it, ra->live);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        uint64_t s = *(uint64_t *)k, n = *(uint64_t *)v;

        for (Hole *h = ra->holes; h; h = h->next) {
            if (s < h->start + h->size && h->start < s + n) {
                return -EFAULT;      /* allocation overlaps a hole */
            }
        }
        live += n;
    }
    if (sum != ra->free_bytes || sum + live != ra->size) {
        return -EFAULT;
    }
    return 0;
}
