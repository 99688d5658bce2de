/*
 * dextlab platform layer: backend-independent part.  Validates arguments
 * once for every backend (widths, alignment, BAR bounds against the sizes
 * found at enumeration), keeps the enumeration cache and the DMA allocator,
 * and dispatches to the backend's const ops.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "platform-backend.h"

/* Per-thread last error text.  One slot per thread (not per platform):
 * "the calling thread's last failure" is what callers can act on. */
static GPrivate err_key = G_PRIVATE_INIT(g_free);

void dext_platform_init_common(DextPlatform *p, const DextPlatformOps *ops)
{
    p->ops = ops;
    p->mem_fd = -1;
    g_mutex_init(&p->lock);
    g_mutex_init(&p->cfg_lock);
}

void dext_platform_fini_common(DextPlatform *p)
{
    if (p->mem_map) {
        munmap(p->mem_map, p->ram_size);
        p->mem_map = NULL;
    }
    if (p->mem_fd >= 0) {
        close(p->mem_fd);
        p->mem_fd = -1;
    }
    dext_range_alloc_free_all(p->dma);
    p->dma = NULL;
    g_free(p->fns);
    p->fns = NULL;
    g_mutex_clear(&p->lock);
    g_mutex_clear(&p->cfg_lock);
}

void dext_platform_log(DextPlatform *p, GLogLevelFlags level,
                       const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (p && p->log_fn) {
        p->log_fn(p->log_opaque, level, msg);
    } else {
        g_log("dext-platform", level, "%s", msg);
    }
    g_free(msg);
}

int dext_platform_set_error(DextPlatform *p, int err, const char *fmt, ...)
{
    va_list ap;
    char *msg;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (p && p->log_fn) {
        p->log_fn(p->log_opaque, G_LOG_LEVEL_DEBUG, msg);
    }
    g_private_replace(&err_key, msg);
    return err;
}

const char *dext_platform_last_error(DextPlatform *p)
{
    const char *s = g_private_get(&err_key);

    (void)p;
    return s ? s : "";
}

const char *dext_platform_backend_name(DextPlatform *p)
{
    return p->ops->name;
}

bool dext_platform_alive(DextPlatform *p)
{
    return p->ops->alive(p);
}

void dext_platform_destroy(DextPlatform *p)
{
    if (p) {
        p->ops->destroy(p);
    }
}

char *dext_pci_addr_format(DextPciAddr a, char buf[13])
{
    snprintf(buf, 13, "%04x:%02x:%02x.%x", a.seg, a.bus, a.dev & 0x1f,
             a.fn & 7);
    return buf;
}

/* ------------------------------------------------------------- PCI */

int dext_platform_fn_index(DextPlatform *p, DextPciAddr a)
{
    int r = -1;

    g_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n_fns; i++) {
        if (dext_pci_addr_equal(p->fns[i].addr, a)) {
            r = i;
            break;
        }
    }
    g_mutex_unlock(&p->lock);
    return r;
}

static int get_fn(DextPlatform *p, DextPciAddr a, DextPciFunction *out)
{
    int r = -ENODEV;
    char b[13];

    g_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n_fns; i++) {
        if (dext_pci_addr_equal(p->fns[i].addr, a)) {
            *out = p->fns[i];
            r = i;
            break;
        }
    }
    g_mutex_unlock(&p->lock);
    if (r < 0) {
        return dext_platform_set_error(p, -ENODEV, "%s: no such function "
                                       "(not enumerated)",
                                       dext_pci_addr_format(a, b));
    }
    return r;
}

int dext_platform_pci_enumerate(DextPlatform *p, bool rescan,
                                DextPciFunction **out, size_t *n)
{
    int r = 0;

    if (!out || !n) {
        return dext_platform_set_error(p, -EINVAL, "enumerate: NULL out");
    }
    g_mutex_lock(&p->lock);
    if (!p->enumerated || rescan) {
        DextPciFunction *fns = NULL;
        size_t nf = 0;

        size_t old = p->enumerated ? p->n_fns : 0;

        g_mutex_unlock(&p->lock);
        /* indices change on a rescan: bindings to the old ones go */
        for (size_t i = 0; i < old && p->ops->irq_forget; i++) {
            p->ops->irq_forget(p, i);
        }
        r = p->ops->enumerate ? p->ops->enumerate(p)
                              : dext_pci_enumerate_generic(p, &fns, &nf);
        g_mutex_lock(&p->lock);
        if (r == 0 && !p->ops->enumerate) {
            g_free(p->fns);
            p->fns = fns;
            p->n_fns = nf;
            p->enumerated = true;
        } else {
            g_free(fns);
        }
    }
    if (r == 0) {
        *out = g_memdup2(p->fns, p->n_fns * sizeof(*p->fns));
        *n = p->n_fns;
    }
    g_mutex_unlock(&p->lock);
    return r;
}

int dext_platform_pci_get(DextPlatform *p, DextPciAddr addr,
                          DextPciFunction *out)
{
    int r = get_fn(p, addr, out);

    return r < 0 ? r : 0;
}

static unsigned cfg_space_size(DextPlatform *p)
{
    return p->pc_machine ? 256 : 4096;
}

static int check_cfg(DextPlatform *p, DextPciAddr a, unsigned off,
                     unsigned width)
{
    char b[13];

    if (width != 1 && width != 2 && width != 4) {
        return dext_platform_set_error(p, -EINVAL, "config access width %u",
                                       width);
    }
    if (off & (width - 1)) {
        return dext_platform_set_error(p, -EINVAL, "config offset 0x%x not "
                                       "aligned to %u", off, width);
    }
    if (off + width > cfg_space_size(p)) {
        return dext_platform_set_error(p, -ERANGE, "config offset 0x%x "
                                       "beyond config space", off);
    }
    if (a.seg != 0 || a.dev > 31 || a.fn > 7) {
        return dext_platform_set_error(p, -EINVAL, "bad PCI address %s",
                                       dext_pci_addr_format(a, b));
    }
    return 0;
}

int dext_platform_cfg_read(DextPlatform *p, DextPciAddr addr, unsigned off,
                           unsigned width, uint32_t *val)
{
    int r = check_cfg(p, addr, off, width);

    return r < 0 ? r : p->ops->cfg_read(p, addr, off, width, val);
}

int dext_platform_cfg_write(DextPlatform *p, DextPciAddr addr, unsigned off,
                            unsigned width, uint32_t val)
{
    int r = check_cfg(p, addr, off, width);

    if (r == 0) {
        g_mutex_lock(&p->cfg_lock);
        r = p->ops->cfg_write(p, addr, off, width, val);
        g_mutex_unlock(&p->cfg_lock);
    }
    return r;
}

/* Resolve (function, bar, offset, width) to a bus address after checks. */
static int bar_target(DextPlatform *p, DextPciAddr addr, unsigned bar,
                      uint64_t off, unsigned width, DextPciBar *out,
                      int *fn_idx)
{
    DextPciFunction f;
    int r;
    char b[13];

    if (width != 1 && width != 2 && width != 4 && width != 8) {
        return dext_platform_set_error(p, -EINVAL, "BAR access width %u",
                                       width);
    }
    if (off & (width - 1)) {
        return dext_platform_set_error(p, -EINVAL, "BAR offset 0x%" G_GINT64_MODIFIER
                                       "x not aligned to %u", off, width);
    }
    if (bar >= DEXT_PCI_NUM_BARS) {
        return dext_platform_set_error(p, -EINVAL, "BAR index %u", bar);
    }
    r = get_fn(p, addr, &f);
    if (r < 0) {
        return r;
    }
    *fn_idx = r;
    *out = f.bars[bar];
    if (out->kind == DEXT_BAR_NONE || out->size == 0) {
        return dext_platform_set_error(p, -ENODEV, "%s has no BAR %u",
                                       dext_pci_addr_format(addr, b), bar);
    }
    if (out->kind == DEXT_BAR_IO && width == 8) {
        return dext_platform_set_error(p, -EINVAL, "64-bit access to I/O "
                                       "BAR %u", bar);
    }
    if (off >= out->size || out->size - off < width) {
        return dext_platform_set_error(p, -ERANGE, "%s BAR %u: offset 0x%"
                                       G_GINT64_MODIFIER "x + %u beyond size "
                                       "0x%" G_GINT64_MODIFIER "x",
                                       dext_pci_addr_format(addr, b), bar, off,
                                       width, out->size);
    }
    return 0;
}

int dext_platform_bar_read(DextPlatform *p, DextPciAddr addr, unsigned bar,
                           uint64_t off, unsigned width, uint64_t *val)
{
    DextPciBar b;
    int idx;
    int r = bar_target(p, addr, bar, off, width, &b, &idx);

    if (r < 0) {
        return r;
    }
    if (p->ops->bar_read) {
        return p->ops->bar_read(p, idx, bar, off, width, val);
    }
    if (b.kind == DEXT_BAR_IO) {
        uint32_t v = 0;

        r = p->ops->port_read(p, b.addr + off, width, &v);
        *val = v;
        return r;
    }
    return p->ops->mmio_read(p, b.addr + off, width, val);
}

int dext_platform_bar_write(DextPlatform *p, DextPciAddr addr, unsigned bar,
                            uint64_t off, unsigned width, uint64_t val)
{
    DextPciBar b;
    int idx;
    int r = bar_target(p, addr, bar, off, width, &b, &idx);

    if (r < 0) {
        return r;
    }
    if (p->ops->bar_write) {
        return p->ops->bar_write(p, idx, bar, off, width, val);
    }
    if (b.kind == DEXT_BAR_IO) {
        return p->ops->port_write(p, b.addr + off, width, val);
    }
    return p->ops->mmio_write(p, b.addr + off, width, val);
}

int dext_platform_flush(DextPlatform *p)
{
    return p->ops->flush(p);
}

int dext_platform_port_read(DextPlatform *p, uint16_t port, unsigned width,
                            uint32_t *val)
{
    if (width != 1 && width != 2 && width != 4) {
        return dext_platform_set_error(p, -EINVAL, "port width %u", width);
    }
    if ((uint32_t)port + width > 0x10000) {
        return dext_platform_set_error(p, -ERANGE, "port 0x%x", port);
    }
    return p->ops->port_read(p, port, width, val);
}

int dext_platform_port_write(DextPlatform *p, uint16_t port, unsigned width,
                             uint32_t val)
{
    if (width != 1 && width != 2 && width != 4) {
        return dext_platform_set_error(p, -EINVAL, "port width %u", width);
    }
    if ((uint32_t)port + width > 0x10000) {
        return dext_platform_set_error(p, -ERANGE, "port 0x%x", port);
    }
    return p->ops->port_write(p, port, width, val);
}

int dext_platform_pci_set_enables(DextPlatform *p, DextPciAddr addr,
                                  uint32_t mask, bool on)
{
    uint32_t cmd;
    int r;

    if (mask & ~(uint32_t)(DEXT_PCI_ENABLE_IO | DEXT_PCI_ENABLE_MEM |
                           DEXT_PCI_ENABLE_BUSMASTER | DEXT_PCI_DISABLE_INTX)) {
        return dext_platform_set_error(p, -EINVAL, "enable mask 0x%x", mask);
    }
    r = check_cfg(p, addr, 4, 2);
    if (r < 0) {
        return r;
    }
    /* cfg_lock makes the read-modify-write atomic against other writers */
    g_mutex_lock(&p->cfg_lock);
    r = p->ops->cfg_read(p, addr, 4, 2, &cmd);
    if (r == 0) {
        cmd = on ? (cmd | mask) : (cmd & ~mask);
        r = p->ops->cfg_write(p, addr, 4, 2, cmd);
    }
    g_mutex_unlock(&p->cfg_lock);
    return r;
}

/* --------------------------------------------------------- interrupts */

bool dext_platform_has_msi(DextPlatform *p)
{
    return p->ops->has_msi && p->ops->has_msi(p);
}

int dext_platform_irq_bind(DextPlatform *p, DextPciAddr addr, DextIrqKind kind,
                           unsigned vector, int eventfd, DextIrqKind *used)
{
    DextPciFunction f;
    int idx = get_fn(p, addr, &f);
    char b[13];
    int r;

    if (idx < 0) {
        return idx;
    }
    if (eventfd < 0) {
        return dext_platform_set_error(p, -EINVAL, "irq_bind: bad eventfd");
    }
    if (kind == DEXT_IRQ_AUTO) {
        /* the best kind this machine can deliver */
        bool msi_ok = dext_platform_has_msi(p);

        kind = msi_ok && f.msix_cap ? DEXT_IRQ_MSIX
             : msi_ok && f.msi_cap ? DEXT_IRQ_MSI : DEXT_IRQ_INTX;
    }
    switch (kind) {
    case DEXT_IRQ_MSIX:
        if (!f.msix_cap) {
            return dext_platform_set_error(p, -ENOTSUP, "%s has no MSI-X",
                                           dext_pci_addr_format(addr, b));
        }
        if (vector >= f.msix_table_size) {
            return dext_platform_set_error(p, -ERANGE, "%s: MSI-X vector %u "
                                           ">= table size %u",
                                           dext_pci_addr_format(addr, b),
                                           vector, f.msix_table_size);
        }
        break;
    case DEXT_IRQ_MSI:
        if (!f.msi_cap) {
            return dext_platform_set_error(p, -ENOTSUP, "%s has no MSI",
                                           dext_pci_addr_format(addr, b));
        }
        if (vector >= f.msi_vectors) {
            return dext_platform_set_error(p, -ERANGE, "%s: MSI vector %u >= "
                                           "%u", dext_pci_addr_format(addr, b),
                                           vector, f.msi_vectors);
        }
        break;
    case DEXT_IRQ_INTX:
        if (!f.irq_pin || f.irq_gsi < 0) {
            return dext_platform_set_error(p, -ENOTSUP, "%s has no routed "
                                           "INTx", dext_pci_addr_format(addr, b));
        }
        if (vector != 0) {
            return dext_platform_set_error(p, -ERANGE, "INTx vector %u",
                                           vector);
        }
        break;
    default:
        return dext_platform_set_error(p, -EINVAL, "irq kind %d", kind);
    }
    if ((kind == DEXT_IRQ_MSIX || kind == DEXT_IRQ_MSI) &&
        !dext_platform_has_msi(p)) {
        return dext_platform_set_error(p, -ENOTSUP, "this machine does not "
                                       "report MSI messages (QEMU without "
                                       "the msi_intercept patch)");
    }
    if (!p->ops->irq_bind) {
        return dext_platform_set_error(p, -ENOTSUP, "no interrupt support");
    }
    r = p->ops->irq_bind(p, idx, kind, vector, eventfd);
    if (r == 0 && used) {
        *used = kind;
    }
    return r;
}

int dext_platform_irq_unbind(DextPlatform *p, DextPciAddr addr,
                             unsigned vector)
{
    DextPciFunction f;
    int idx = get_fn(p, addr, &f);

    if (idx < 0) {
        return idx;
    }
    if (!p->ops->irq_unbind) {
        return dext_platform_set_error(p, -ENOTSUP, "no interrupt support");
    }
    return p->ops->irq_unbind(p, idx, vector);
}

int dext_platform_intx_level(DextPlatform *p, DextPciAddr addr)
{
    DextPciFunction f;
    int idx = get_fn(p, addr, &f);

    if (idx < 0) {
        return idx;
    }
    if (!f.irq_pin || f.irq_gsi < 0 || !p->ops->intx_level) {
        return dext_platform_set_error(p, -ENOTSUP, "no routed INTx");
    }
    return p->ops->intx_level(p, idx);
}

void dext_platform_irq_stats(DextPlatform *p, DextIrqStats *out)
{
    memset(out, 0, sizeof(*out));
    if (p->ops->irq_stats) {
        p->ops->irq_stats(p, out);
    }
}

int dext_platform_mmio_channel_open(DextPlatform *p, DextPciAddr addr,
                                    const uint64_t win[DEXT_PCI_NUM_BARS],
                                    int *fd, unsigned *id)
{
    DextPciFunction f;
    int idx;

    if (!win || !fd || !id) {
        return dext_platform_set_error(p, -EINVAL, "mmio_channel: NULL "
                                       "argument");
    }
    *fd = -1;
    *id = 0;
    if (!p->ops->mmio_channel_open) {
        return dext_platform_set_error(p, -ENOTSUP, "no direct MMIO channel "
                                       "on the %s platform", p->ops->name);
    }
    idx = dext_platform_fn_index(p, addr);
    if (idx < 0) {
        char b[13];

        return dext_platform_set_error(p, -ENODEV, "mmio_channel: unknown "
                                       "%s", dext_pci_addr_format(addr, b));
    }
    g_mutex_lock(&p->lock);
    f = p->fns[idx];
    g_mutex_unlock(&p->lock);
    for (unsigned i = 0; i < DEXT_PCI_NUM_BARS; i++) {
        if (win[i] && (f.bars[i].kind == DEXT_BAR_IO ||
                       f.bars[i].kind == DEXT_BAR_NONE ||
                       win[i] > f.bars[i].size)) {
            return dext_platform_set_error(p, -EINVAL, "mmio_channel: BAR%u "
                                           "window 0x%" PRIx64 " not within "
                                           "a memory BAR", i, win[i]);
        }
    }
    return p->ops->mmio_channel_open(p, idx, win, fd, id);
}

int dext_platform_mmio_channel_close(DextPlatform *p, unsigned id)
{
    if (!p->ops->mmio_channel_close) {
        return dext_platform_set_error(p, -ENOTSUP, "no direct MMIO channel "
                                       "on the %s platform", p->ops->name);
    }
    return p->ops->mmio_channel_close(p, id);
}

unsigned dext_platform_mmio_channel_count(DextPlatform *p)
{
    return p->ops->mmio_channel_count ? p->ops->mmio_channel_count(p) : 0;
}

/* MSI/MSI-X programming through config space and the table BAR. */
int dext_pci_msi_program(DextPlatform *p, const DextPciFunction *f,
                         DextIrqKind kind, unsigned vector, uint64_t addr,
                         uint32_t data, bool enable, bool last)
{
    uint32_t ctl, cmd;
    int r;

    if (kind == DEXT_IRQ_MSIX) {
        const DextPciBar *tb = &f->bars[f->msix_table_bar];
        uint64_t e = tb->addr + f->msix_table_offset + 16ull * vector;

        if (tb->kind == DEXT_BAR_NONE || tb->kind == DEXT_BAR_IO ||
            f->msix_table_offset + 16ull * (vector + 1) > tb->size) {
            return dext_platform_set_error(p, -ENODEV, "MSI-X table outside "
                                           "its BAR");
        }
        /* The table sits in a BAR: decode must be on while we write it;
         * the entries live in the device, so restoring the command
         * register afterwards keeps them. */
        g_mutex_lock(&p->cfg_lock);
        r = p->ops->cfg_read(p, f->addr, 4, 2, &cmd);
        if (r == 0 && !(cmd & 2)) {
            r = p->ops->cfg_write(p, f->addr, 4, 2, cmd | 2);
        }
        if (r == 0 && enable) {
            if ((r = p->ops->mmio_write(p, e + 12, 4, 1)) == 0 &&
                (r = p->ops->mmio_write(p, e + 0, 4, (uint32_t)addr)) == 0 &&
                (r = p->ops->mmio_write(p, e + 4, 4, addr >> 32)) == 0 &&
                (r = p->ops->mmio_write(p, e + 8, 4, data)) == 0) {
                r = p->ops->mmio_write(p, e + 12, 4, 0);
            }
        } else if (r == 0) {
            r = p->ops->mmio_write(p, e + 12, 4, 1);
        }
        if (r == 0) {
            r = p->ops->flush(p);
        }
        if (r == 0 && !(cmd & 2)) {
            r = p->ops->cfg_write(p, f->addr, 4, 2, cmd);
        }
        if (r == 0) {
            r = p->ops->cfg_read(p, f->addr, f->msix_cap + 2, 2, &ctl);
        }
        if (r == 0) {
            uint32_t n = enable ? ((ctl | 0x8000) & ~0x4000u)
                                : (last ? (ctl & ~0x8000u) : ctl);

            if (n != ctl) {
                r = p->ops->cfg_write(p, f->addr, f->msix_cap + 2, 2, n);
            }
        }
        g_mutex_unlock(&p->cfg_lock);
        return r;
    }

    /* MSI: one address/data for the function; the device ORs the vector
     * number into the low data bits (data is aligned to 32 by the caller). */
    g_mutex_lock(&p->cfg_lock);
    r = p->ops->cfg_read(p, f->addr, f->msi_cap + 2, 2, &ctl);
    if (r == 0 && enable) {
        unsigned dataoff = f->msi_64bit ? 12 : 8;
        unsigned mme = 0;
        unsigned cur = (ctl >> 4) & 7;

        while ((1u << mme) < vector + 1) {
            mme++;
        }
        mme = MAX(mme, (ctl & 1) ? cur : 0);
        r = p->ops->cfg_write(p, f->addr, f->msi_cap + 4, 4, (uint32_t)addr);
        if (r == 0 && f->msi_64bit) {
            r = p->ops->cfg_write(p, f->addr, f->msi_cap + 8, 4, addr >> 32);
        }
        if (r == 0) {
            r = p->ops->cfg_write(p, f->addr, f->msi_cap + dataoff, 2,
                                  data & ~31u);
        }
        if (r == 0 && f->msi_maskable) {
            unsigned maskoff = f->msi_64bit ? 16 : 12;
            uint32_t m;

            r = p->ops->cfg_read(p, f->addr, f->msi_cap + maskoff, 4, &m);
            if (r == 0) {
                r = p->ops->cfg_write(p, f->addr, f->msi_cap + maskoff, 4,
                                      m & ~(1u << vector));
            }
        }
        if (r == 0) {
            ctl = (ctl & ~0x70u) | (mme << 4) | 1;
            r = p->ops->cfg_write(p, f->addr, f->msi_cap + 2, 2, ctl);
        }
    } else if (r == 0) {
        if (f->msi_maskable) {
            unsigned maskoff = f->msi_64bit ? 16 : 12;
            uint32_t m;

            r = p->ops->cfg_read(p, f->addr, f->msi_cap + maskoff, 4, &m);
            if (r == 0) {
                r = p->ops->cfg_write(p, f->addr, f->msi_cap + maskoff, 4,
                                      m | (1u << vector));
            }
        }
        if (r == 0 && last) {
            r = p->ops->cfg_write(p, f->addr, f->msi_cap + 2, 2, ctl & ~1u);
        }
    }
    g_mutex_unlock(&p->cfg_lock);
    return r;
}

/* ------------------------------------------------------------ events */

void dext_platform_set_event_cb(DextPlatform *p, DextPlatformEventFn fn,
                                void *opaque)
{
    if (p->ops->set_event_cb) {
        p->ops->set_event_cb(p, fn, opaque);
    }
}

/* --------------------------------------------------------------- QMP */

int dext_platform_qmp(DextPlatform *p, const char *command,
                      const char *args_json, char **ret_json)
{
    if (!command || !*command) {
        return dext_platform_set_error(p, -EINVAL, "qmp: no command");
    }
    if (!p->ops->qmp) {
        return dext_platform_set_error(p, -ENOTSUP, "no QMP on this backend");
    }
    return p->ops->qmp(p, command, args_json, ret_json);
}

int dext_platform_qmp_wait_event(DextPlatform *p, const char *name,
                                 unsigned timeout_ms, char **event_json)
{
    if (!name || !*name) {
        return dext_platform_set_error(p, -EINVAL, "qmp event: no name");
    }
    if (!p->ops->qmp_wait_event) {
        return dext_platform_set_error(p, -ENOTSUP, "no QMP on this backend");
    }
    return p->ops->qmp_wait_event(p, name, timeout_ms, event_json);
}

/* ------------------------------------------------------ virtual time */

int dext_platform_clock_step(DextPlatform *p, uint64_t ns, uint64_t *now_ns)
{
    if (!p->ops->clock_step) {
        return dext_platform_set_error(p, -ENOTSUP, "%s: virtual time is "
                                       "real time", p->ops->name);
    }
    return p->ops->clock_step(p, ns, now_ns);
}

int dext_platform_clock_follow(DextPlatform *p, unsigned period_us)
{
    if (!p->ops->clock_follow) {
        return dext_platform_set_error(p, -ENOTSUP, "%s: virtual time is "
                                       "real time", p->ops->name);
    }
    if (period_us > 1000000) {
        return dext_platform_set_error(p, -EINVAL, "clock follow period "
                                       "%u us is over a second", period_us);
    }
    return p->ops->clock_follow(p, period_us);
}

/* ------------------------------------------------------------ memory */

int dext_platform_memory_fd(DextPlatform *p, int *fd, uint64_t *size)
{
    if (p->mem_fd < 0) {
        return dext_platform_set_error(p, -ENOTSUP, "no shared guest RAM");
    }
    *fd = p->mem_fd;
    if (size) {
        *size = p->ram_size;
    }
    return 0;
}

void *dext_platform_memory_map(DextPlatform *p, uint64_t *size)
{
    if (size) {
        *size = p->mem_map ? p->ram_size : 0;
    }
    return p->mem_map;
}

int dext_platform_dma_alloc(DextPlatform *p, uint64_t size, uint64_t align,
                            DextDmaRange *out)
{
    uint64_t a, rs;
    int r;

    if (!p->dma) {
        return dext_platform_set_error(p, -ENOTSUP, "no DMA memory");
    }
    if (!out) {
        return dext_platform_set_error(p, -EINVAL, "dma_alloc: NULL out");
    }
    g_mutex_lock(&p->lock);
    r = dext_range_alloc(p->dma, size, align ? align : 4096, &a, &rs);
    g_mutex_unlock(&p->lock);
    if (r < 0) {
        return dext_platform_set_error(p, r, "dma_alloc(size 0x%"
                                       G_GINT64_MODIFIER "x, align 0x%"
                                       G_GINT64_MODIFIER "x): %s", size, align,
                                       g_strerror(-r));
    }
    if (p->ops->dma_prepare && (r = p->ops->dma_prepare(p, a, rs)) < 0) {
        g_mutex_lock(&p->lock);
        dext_range_release(p->dma, a);
        g_mutex_unlock(&p->lock);
        return r;
    }
    /* the allocator hands out device addresses; the fd offset is relative
     * to mem_iova (0 on qtest: guest-physical == file offset) */
    memset((uint8_t *)p->mem_map + (a - p->mem_iova), 0, rs);
    out->iova = a;
    out->size = rs;
    out->fd_offset = a - p->mem_iova;
    return 0;
}

int dext_platform_dma_free(DextPlatform *p, uint64_t iova)
{
    int r;

    if (!p->dma) {
        return dext_platform_set_error(p, -ENOTSUP, "no DMA memory");
    }
    g_mutex_lock(&p->lock);
    r = dext_range_release(p->dma, iova);
    g_mutex_unlock(&p->lock);
    if (r < 0) {
        return dext_platform_set_error(p, r, "dma_free(0x%" G_GINT64_MODIFIER
                                       "x): not an allocation", iova);
    }
    return 0;
}

int dext_platform_mem_read(DextPlatform *p, uint64_t gpa, void *buf,
                           size_t len)
{
    if (p->mem_map) {
        if (gpa < p->mem_iova || gpa - p->mem_iova > p->ram_size ||
            p->ram_size - (gpa - p->mem_iova) < len) {
            return dext_platform_set_error(p, -ERANGE, "mem_read outside "
                                           "RAM");
        }
        memcpy(buf, (uint8_t *)p->mem_map + (gpa - p->mem_iova), len);
        return 0;
    }
    if (!p->ops->mem_read) {
        return dext_platform_set_error(p, -ENOTSUP, "no memory access");
    }
    return p->ops->mem_read(p, gpa, buf, len);
}

int dext_platform_mem_write(DextPlatform *p, uint64_t gpa, const void *buf,
                            size_t len)
{
    if (p->mem_map) {
        if (gpa < p->mem_iova || gpa - p->mem_iova > p->ram_size ||
            p->ram_size - (gpa - p->mem_iova) < len) {
            return dext_platform_set_error(p, -ERANGE, "mem_write outside "
                                           "RAM");
        }
        memcpy((uint8_t *)p->mem_map + (gpa - p->mem_iova), buf, len);
        return 0;
    }
    if (!p->ops->mem_write) {
        return dext_platform_set_error(p, -ENOTSUP, "no memory access");
    }
    return p->ops->mem_write(p, gpa, buf, len);
}

int dext_platform_reset_function(DextPlatform *p, DextPciAddr addr,
                                 bool allow_bus)
{
    DextPciFunction f;
    int r = get_fn(p, addr, &f);

    if (r < 0) {
        return r;
    }
    return p->ops->reset_function ? p->ops->reset_function(p, addr, allow_bus)
                                  : dext_pci_reset_generic(p, addr, allow_bus);
}
