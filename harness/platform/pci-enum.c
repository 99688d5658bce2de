/*
 * Firmware-like PCI enumeration over a backend's config-space ops.
 *
 * Under -accel qtest no firmware runs, so nothing is numbered or assigned:
 * we do what SeaBIOS does (and libqos's qpci_device_foreach/qpci_iomap, but
 * without aborting): walk bus 0, number buses depth-first behind every
 * PCI-PCI bridge / PCIe port, size BARs, place them with pci-assign.c,
 * program BARs and bridge windows, and route INTx.  Endpoints are left
 * with decode off (their driver enables it); bridges forward everything.
 */
#include <errno.h>
#include <string.h>

#include "platform-backend.h"
#include "pci-assign.h"

/* Root windows.  q35: ECAM sits at 0xb0000000-0xbfffffff, so 32-bit MMIO
 * starts at 0xc0000000; pc: RAM is at most 2 GiB here, start at
 * 0xe0000000 like SeaBIOS does for small RAM.  Both end below the IOAPIC
 * (0xfec00000).  64-bit prefetchable memory goes to 512 GiB up, which
 * both machines route to PCI (pci_address_space sits below system RAM). */
#define MEM32_END   0xfec00000ull
#define MEM64_BASE  0x8000000000ull
#define MEM64_END   0x9000000000ull
#define IO_BASE     0x1000
#define IO_END      0x10000

typedef struct Walk {
    DextPlatform *p;
    GArray *fns;               /* DextPciFunction */
    unsigned last_bus;
    int err;
} Walk;

static uint32_t rd(Walk *w, DextPciAddr a, unsigned off, unsigned width)
{
    uint32_t v = ~0u;

    if (w->err == 0) {
        int r = w->p->ops->cfg_read(w->p, a, off, width, &v);

        if (r < 0) {
            w->err = r;
            v = ~0u;
        }
    }
    return v;
}

static void wr(Walk *w, DextPciAddr a, unsigned off, unsigned width,
               uint32_t v)
{
    if (w->err == 0) {
        int r = w->p->ops->cfg_write(w->p, a, off, width, v);

        if (r < 0) {
            w->err = r;
        }
    }
}

static void read_caps(Walk *w, DextPciFunction *f)
{
    unsigned pos, guard = 0;

    if (!(rd(w, f->addr, 0x06, 2) & 0x10)) {
        return;
    }
    pos = rd(w, f->addr, 0x34, 1) & 0xfc;
    /* a looping or wild list is guest-controlled: bound it */
    while (pos >= 0x40 && pos < 0x100 && guard++ < 48 && w->err == 0) {
        uint32_t hdr = rd(w, f->addr, pos, 2);
        uint32_t ctl;

        switch (hdr & 0xff) {
        case 0x01:
            f->pm_cap = pos;
            break;
        case 0x05:
            f->msi_cap = pos;
            ctl = rd(w, f->addr, pos + 2, 2);
            f->msi_vectors = 1u << MIN((ctl >> 1) & 7, 5);
            f->msi_64bit = ctl & 0x80;
            f->msi_maskable = ctl & 0x100;
            break;
        case 0x10:
            f->pcie_cap = pos;
            f->pcie_port_type = (rd(w, f->addr, pos + 2, 2) >> 4) & 0xf;
            f->has_flr = (rd(w, f->addr, pos + 4, 4) >> 28) & 1;
            break;
        case 0x11: {
            uint32_t t, pba;

            f->msix_cap = pos;
            ctl = rd(w, f->addr, pos + 2, 2);
            f->msix_table_size = (ctl & 0x7ff) + 1;
            t = rd(w, f->addr, pos + 4, 4);
            pba = rd(w, f->addr, pos + 8, 4);
            f->msix_table_bar = t & 7;
            f->msix_table_offset = t & ~7u;
            f->msix_pba_bar = pba & 7;
            f->msix_pba_offset = pba & ~7u;
            break;
        }
        }
        pos = (hdr >> 8) & 0xfc;
    }
}

static void probe_bars(Walk *w, DextPciFunction *f, int idx, unsigned nbars,
                       DextResBus *rb)
{
    for (unsigned i = 0; i < nbars && w->err == 0; i++) {
        unsigned off = 0x10 + 4 * i;
        uint32_t orig = rd(w, f->addr, off, 4), lo, hi = 0;
        bool io, is64, pref;
        uint64_t size;

        wr(w, f->addr, off, 4, 0xffffffff);
        lo = rd(w, f->addr, off, 4);
        wr(w, f->addr, off, 4, orig);
        if (!(orig & 1) && ((orig >> 1) & 3) == 2 && i + 1 < nbars) {
            uint32_t oh = rd(w, f->addr, off + 4, 4);

            wr(w, f->addr, off + 4, 4, 0xffffffff);
            hi = rd(w, f->addr, off + 4, 4);
            wr(w, f->addr, off + 4, 4, oh);
        }
        size = dext_bar_decode(orig, lo, hi, &io, &is64, &pref);
        if (is64) {
            i++;               /* the upper half is not a BAR of its own */
        }
        if (!size || (size & (size - 1))) {
            continue;          /* absent, or a broken device: ignore it */
        }
        {
            unsigned bi = is64 ? i - 1 : i;

            f->bars[bi].kind = io ? DEXT_BAR_IO
                                  : is64 ? DEXT_BAR_MEM64 : DEXT_BAR_MEM32;
            f->bars[bi].prefetchable = pref;
            f->bars[bi].size = size;
            dext_res_add_bar(rb, idx, bi,
                             io ? DEXT_RES_IO : pref ? DEXT_RES_PREF
                                                     : DEXT_RES_MEM,
                             is64, size);
        }
    }
}

static int walk_bus(Walk *w, unsigned bus, int parent, DextResBus *rb);

static void add_function(Walk *w, DextPciAddr a, int parent, DextResBus *rb)
{
    DextPciFunction f = { .addr = a, .irq_gsi = -1 };
    DextPciFunction *fp;
    uint32_t id = rd(w, a, 0, 4), cls = rd(w, a, 8, 4), hdr;
    int idx;

    f.vendor_id = id & 0xffff;
    f.device_id = id >> 16;
    f.revision = cls & 0xff;
    f.class_prog_if = (cls >> 8) & 0xff;
    f.class_sub = (cls >> 16) & 0xff;
    f.class_base = cls >> 24;
    hdr = rd(w, a, 0x0e, 1);
    f.header_type = hdr & 0x7f;
    f.multifunction = hdr & 0x80;
    f.irq_pin = rd(w, a, 0x3d, 1);
    if (f.irq_pin > 4) {
        f.irq_pin = 0;
    }
    if (parent >= 0) {
        f.has_parent = true;
        f.parent = g_array_index(w->fns, DextPciFunction, parent).addr;
    }
    /* decode off while sizing, as firmware does */
    wr(w, a, 0x04, 2, rd(w, a, 0x04, 2) & ~7u);
    read_caps(w, &f);
    idx = w->fns->len;
    g_array_append_val(w->fns, f);
    fp = &g_array_index(w->fns, DextPciFunction, idx);

    if (f.header_type == 0) {
        uint32_t ss = rd(w, a, 0x2c, 4);

        fp->subsys_vendor_id = ss & 0xffff;
        fp->subsys_id = ss >> 16;
        probe_bars(w, fp, idx, 6, rb);
    } else if (f.header_type == 1) {
        DextResBus *child;
        unsigned sec;
        bool pref64;

        probe_bars(w, fp, idx, 2, rb);
        fp = &g_array_index(w->fns, DextPciFunction, idx);
        if (w->last_bus >= 255) {
            dext_platform_log(w->p, G_LOG_LEVEL_WARNING,
                              "out of bus numbers; bridge skipped");
            return;
        }
        if (fp->pcie_cap) {
            /* A hot-plug slot with a card present but powered off (QEMU
             * resets empty slots to off; device_add then leaves the card
             * unpowered): power it on, as the OS's pciehp would. */
            unsigned pc = fp->pcie_cap;
            uint32_t flags = rd(w, a, pc + 2, 2);
            uint32_t sltcap = rd(w, a, pc + 0x14, 4);
            uint32_t sltsta = rd(w, a, pc + 0x1a, 2);
            uint32_t sltctl = rd(w, a, pc + 0x18, 2);

            if ((flags & 0x100) && (sltcap & 0x2) && (sltsta & 0x40) &&
                (sltctl & 0x400)) {
                wr(w, a, pc + 0x18, 2, (sltctl & ~0x700u) | 0x100);
            }
        }
        sec = ++w->last_bus;
        fp->is_bridge = true;
        fp->secondary_bus = sec;
        /* primary, secondary, subordinate (open until the walk is done) */
        wr(w, a, 0x18, 1, a.bus);
        wr(w, a, 0x19, 1, sec);
        wr(w, a, 0x1a, 1, 0xff);
        pref64 = (rd(w, a, 0x24, 2) & 0xf) == 1;
        child = dext_res_bus_new(pref64);
        walk_bus(w, sec, idx, child);
        fp = &g_array_index(w->fns, DextPciFunction, idx);
        fp->subordinate_bus = w->last_bus;
        wr(w, a, 0x1a, 1, w->last_bus);
        dext_res_add_bridge(rb, idx, child);
    }
}

static int walk_bus(Walk *w, unsigned bus, int parent, DextResBus *rb)
{
    for (unsigned dev = 0; dev < 32 && w->err == 0; dev++) {
        DextPciAddr a = { 0, bus, dev, 0 };
        uint32_t vid = rd(w, a, 0, 2);
        unsigned nfn;

        if (vid == 0xffff || vid == 0) {
            continue;
        }
        nfn = (rd(w, a, 0x0e, 1) & 0x80) ? 8 : 1;
        for (unsigned fn = 0; fn < nfn && w->err == 0; fn++) {
            a.fn = fn;
            vid = rd(w, a, 0, 2);
            if (vid == 0xffff || vid == 0) {
                continue;
            }
            add_function(w, a, parent, rb);
        }
    }
    return w->err;
}

static void record(Walk *w, DextResBus *b)
{
    for (guint i = 0; i < b->items->len; i++) {
        DextResItem *it = g_ptr_array_index(b->items, i);
        DextPciFunction *f = &g_array_index(w->fns, DextPciFunction,
                                            it->owner);

        if (it->child) {
            f->window_base[it->type] = it->size ? it->addr : 0;
            f->window_size[it->type] = it->size;
            if (it->type == DEXT_RES_IO) {
                record(w, it->child);
            }
        } else {
            f->bars[it->bar].addr = it->addr;
        }
    }
}

/* Write a function's assigned state back (after enumeration or reset). */
static void program_function(Walk *w, const DextPciFunction *f)
{
    unsigned nbars = f->header_type == 1 ? 2 : f->header_type == 0 ? 6 : 0;

    for (unsigned i = 0; i < nbars; i++) {
        const DextPciBar *b = &f->bars[i];

        if (b->kind == DEXT_BAR_NONE) {
            continue;
        }
        wr(w, f->addr, 0x10 + 4 * i, 4, (uint32_t)b->addr);
        if (b->kind == DEXT_BAR_MEM64) {
            wr(w, f->addr, 0x14 + 4 * i, 4, b->addr >> 32);
        }
    }
    if (f->is_bridge) {
        uint64_t base, end;

        wr(w, f->addr, 0x18, 1, f->addr.bus);
        wr(w, f->addr, 0x19, 1, f->secondary_bus);
        wr(w, f->addr, 0x1a, 1, f->subordinate_bus);
        /* I/O window: 4 KiB granularity; closed = base above limit */
        if (f->window_size[DEXT_WIN_IO]) {
            base = f->window_base[DEXT_WIN_IO];
            end = base + f->window_size[DEXT_WIN_IO] - 1;
            wr(w, f->addr, 0x1c, 1, (base >> 8) & 0xf0);
            wr(w, f->addr, 0x1d, 1, (end >> 8) & 0xf0);
        } else {
            wr(w, f->addr, 0x1c, 1, 0xf0);
            wr(w, f->addr, 0x1d, 1, 0x00);
        }
        wr(w, f->addr, 0x30, 4, 0);
        if (f->window_size[DEXT_WIN_MEM]) {
            base = f->window_base[DEXT_WIN_MEM];
            end = base + f->window_size[DEXT_WIN_MEM] - 1;
            wr(w, f->addr, 0x20, 2, (base >> 16) & 0xfff0);
            wr(w, f->addr, 0x22, 2, (end >> 16) & 0xfff0);
        } else {
            wr(w, f->addr, 0x20, 2, 0xfff0);
            wr(w, f->addr, 0x22, 2, 0x0000);
        }
        if (f->window_size[DEXT_WIN_PREF]) {
            base = f->window_base[DEXT_WIN_PREF];
            end = base + f->window_size[DEXT_WIN_PREF] - 1;
            wr(w, f->addr, 0x24, 2, (base >> 16) & 0xfff0);
            wr(w, f->addr, 0x26, 2, (end >> 16) & 0xfff0);
            wr(w, f->addr, 0x28, 4, base >> 32);
            wr(w, f->addr, 0x2c, 4, end >> 32);
        } else {
            wr(w, f->addr, 0x24, 2, 0xfff0);
            wr(w, f->addr, 0x26, 2, 0x0000);
            wr(w, f->addr, 0x28, 4, 0);
            wr(w, f->addr, 0x2c, 4, 0);
        }
        /* forward I/O, memory and upstream DMA (bus master) */
        wr(w, f->addr, 0x04, 2, rd(w, f->addr, 0x04, 2) | 7);
    } else {
        wr(w, f->addr, 0x04, 2, rd(w, f->addr, 0x04, 2) & ~7u);
    }
}

/* INTx: swizzle the pin up to bus 0, then the chipset's routing. */
static int route_gsi(DextPlatform *p, GArray *fns, int idx)
{
    const DextPciFunction *f = &g_array_index(fns, DextPciFunction, idx);
    unsigned pin, slot;

    if (!f->irq_pin) {
        return -1;
    }
    pin = f->irq_pin - 1;
    while (f->has_parent) {
        int par = -1;

        pin = (f->addr.dev + pin) % 4;
        for (guint i = 0; i < fns->len; i++) {
            if (dext_pci_addr_equal(g_array_index(fns, DextPciFunction,
                                                  i).addr, f->parent)) {
                par = i;
                break;
            }
        }
        if (par < 0) {
            return -1;
        }
        f = &g_array_index(fns, DextPciFunction, par);
    }
    slot = f->addr.dev;
    if (p->pc_machine) {
        /* PIIX3: PIRQ = (slot - 1 + pin) & 3, PIRQA..D -> ISA 10,10,11,11
         * (programmed below, as SeaBIOS does) */
        static const int isa[4] = { 10, 10, 11, 11 };

        return isa[(slot + pin - 1) & 3];
    }
    /* ICH9 (QEMU defaults): slots 25-29,31 INTx->PIRQ A-D, slot 30
     * PIRQ E-H, others (slot+pin)%4 + PIRQ E; GSI = 16 + PIRQ. */
    if (slot == 30) {
        return 16 + 4 + pin;
    }
    if (slot >= 25) {
        return 16 + pin;
    }
    return 16 + (slot + pin) % 4 + 4;
}

int dext_pci_enumerate_generic(DextPlatform *p, DextPciFunction **out,
                               size_t *n)
{
    Walk w = { .p = p, .fns = g_array_new(FALSE, TRUE,
                                          sizeof(DextPciFunction)) };
    DextResBus *root = dext_res_bus_new(true);
    DextResWindows win = {
        .io_base = IO_BASE, .io_end = IO_END,
        .mem32_base = p->pc_machine ? 0xe0000000ull : 0xc0000000ull,
        .mem32_end = MEM32_END,
        .mem64_base = MEM64_BASE, .mem64_end = MEM64_END,
    };
    int r;

    if (p->pc_machine) {
        /* PIIX3 (00:01.0) PIRQ route control, INTx routing above */
        DextPciAddr piix = { 0, 0, 1, 0 };

        if (rd(&w, piix, 0, 4) == 0x70008086) {
            wr(&w, piix, 0x60, 4, 0x0b0b0a0a);
        }
    }
    r = walk_bus(&w, 0, -1, root);
    if (r == 0) {
        GArray *dropped = g_array_new(FALSE, FALSE, sizeof(DextResItem));

        r = dext_res_assign_best(root, &win, dropped);
        if (r < 0) {
            dext_platform_set_error(p, r, "PCI resources cannot be placed "
                                    "(%s)", g_strerror(-r));
        }
        /* a BAR that does not fit is left unassigned (and inaccessible),
         * the rest of the machine still works */
        for (guint i = 0; i < dropped->len; i++) {
            DextResItem *it = &g_array_index(dropped, DextResItem, i);
            DextPciFunction *f = &g_array_index(w.fns, DextPciFunction,
                                                it->owner);
            char b[13];

            dext_platform_log(p, G_LOG_LEVEL_WARNING, "%s BAR %d (0x%"
                              G_GINT64_MODIFIER "x bytes) does not fit the "
                              "address space: left unassigned",
                              dext_pci_addr_format(f->addr, b), it->bar,
                              it->size);
            f->bars[it->bar].kind = DEXT_BAR_NONE;
            f->bars[it->bar].size = 0;
        }
        g_array_free(dropped, TRUE);
    } else {
        dext_platform_set_error(p, r, "PCI walk failed: %s", g_strerror(-r));
    }
    if (r == 0) {
        record(&w, root);
        for (guint i = 0; i < w.fns->len && w.err == 0; i++) {
            DextPciFunction *f = &g_array_index(w.fns, DextPciFunction, i);

            f->irq_gsi = route_gsi(p, w.fns, i);
            program_function(&w, f);
        }
        r = w.err;
    }
    if (r == 0) {
        r = p->ops->flush(p);
    }
    dext_res_bus_free(root);
    if (r < 0) {
        g_array_free(w.fns, TRUE);
        return r;
    }
    *n = w.fns->len;
    *out = (DextPciFunction *)g_array_free(w.fns, FALSE);
    return 0;
}

int dext_pci_reset_generic(DextPlatform *p, DextPciAddr a, bool allow_bus)
{
    Walk w = { .p = p };
    DextPciFunction *snap;
    size_t n;
    int idx = -1, par = -1;
    char b[13];

    g_mutex_lock(&p->lock);
    snap = g_memdup2(p->fns, p->n_fns * sizeof(*snap));
    n = p->n_fns;
    g_mutex_unlock(&p->lock);
    for (size_t i = 0; i < n; i++) {
        if (dext_pci_addr_equal(snap[i].addr, a)) {
            idx = i;
        }
    }
    if (idx < 0) {
        g_free(snap);
        return dext_platform_set_error(p, -ENODEV, "reset: unknown %s",
                                       dext_pci_addr_format(a, b));
    }
    g_mutex_lock(&p->cfg_lock);
    if (snap[idx].has_flr) {
        /* PCIe Device Control: Initiate Function Level Reset */
        uint32_t dc = rd(&w, a, snap[idx].pcie_cap + 8, 2);

        wr(&w, a, snap[idx].pcie_cap + 8, 2, dc | 0x8000);
        if (w.err == 0) {
            if (p->ops->irq_forget) {
                p->ops->irq_forget(p, idx);
            }
            program_function(&w, &snap[idx]);
        }
    } else {
        DextPciFunction *br = NULL;
        unsigned sec, sub, others = 0;

        for (size_t i = 0; snap[idx].has_parent && i < n; i++) {
            if (dext_pci_addr_equal(snap[i].addr, snap[idx].parent)) {
                br = &snap[i];
                par = i;
            }
        }
        if (!br) {
            g_mutex_unlock(&p->cfg_lock);
            g_free(snap);
            return dext_platform_set_error(p, -ENOTSUP, "reset %s: no FLR "
                                           "and no parent bridge",
                                           dext_pci_addr_format(a, b));
        }
        sec = br->secondary_bus;
        sub = br->subordinate_bus;
        for (size_t i = 0; i < n; i++) {
            if (snap[i].addr.bus >= sec && snap[i].addr.bus <= sub &&
                (int)i != idx) {
                others++;
            }
        }
        if (others && !allow_bus) {
            g_mutex_unlock(&p->cfg_lock);
            g_free(snap);
            return dext_platform_set_error(p, -EBUSY, "reset %s: secondary "
                                           "bus reset would also reset %u "
                                           "other functions",
                                           dext_pci_addr_format(a, b), others);
        }
        {
            uint32_t bc = rd(&w, br->addr, 0x3e, 2);

            wr(&w, br->addr, 0x3e, 2, bc | 0x40);
            wr(&w, br->addr, 0x3e, 2, bc & ~0x40u);
        }
        /* everything behind the bridge lost its state: restore in
         * enumeration order (bridges before their children) */
        for (size_t i = 0; i < n && w.err == 0; i++) {
            if (snap[i].addr.bus >= sec && snap[i].addr.bus <= sub) {
                if (p->ops->irq_forget) {
                    p->ops->irq_forget(p, i);
                }
                program_function(&w, &snap[i]);
            }
        }
    }
    g_mutex_unlock(&p->cfg_lock);
    g_free(snap);
    (void)par;
    if (w.err == 0) {
        w.err = p->ops->flush(p);
    }
    if (w.err < 0) {
        return dext_platform_set_error(p, w.err, "reset %s: %s",
                                       dext_pci_addr_format(a, b),
                                       g_strerror(-w.err));
    }
    return 0;
}
