/*
 * xHCI hardware backend on the platform API (platform.h; the qtest
 * backend, and the shape the in-guest VFIO one shares): BAR0 through
 * dext_platform_bar_read/write (posted writes), DMA memory from the
 * platform's allocator reached through its memory mapping (device address
 * = DextDmaRange.iova), interrupter 0 on MSI-X vector 0 bound to the
 * driver's eventfd.
 */
#include <errno.h>
#include <string.h>

#include "xhci.h"

typedef struct PlatHw {
    DextPlatform *p;
    DextPciAddr addr;
    uint8_t *ram;                /* the platform's map of its DMA memory */
    uint64_t ram_size;
    bool msix;
    bool bound;
    GMutex lock;
    GHashTable *allocs;          /* iova -> size, what we allocated */
} PlatHw;

static int plat_read32(void *hw, uint64_t off, uint32_t *val)
{
    PlatHw *h = hw;
    uint64_t v = 0;
    int ret = dext_platform_bar_read(h->p, h->addr, 0, off, 4, &v);

    *val = (uint32_t)v;
    return ret;
}

static int plat_write32(void *hw, uint64_t off, uint32_t val)
{
    PlatHw *h = hw;

    return dext_platform_bar_write(h->p, h->addr, 0, off, 4, val);
}

static int plat_dma_alloc(void *hw, uint64_t size, DextXhciDma *out)
{
    PlatHw *h = hw;
    DextDmaRange r;
    int ret = dext_platform_dma_alloc(h->p, size, 4096, &r);

    if (ret < 0) {
        return ret;
    }
    if (r.fd_offset + r.size > h->ram_size || r.fd_offset + r.size < r.size) {
        dext_platform_dma_free(h->p, r.iova);
        return -ERANGE;
    }
    out->ptr = h->ram + r.fd_offset;
    out->iova = r.iova;
    out->size = r.size;
    out->handle = r.iova;
    g_mutex_lock(&h->lock);
    g_hash_table_insert(h->allocs, g_memdup2(&r.iova, sizeof(r.iova)),
                        g_memdup2(&r.size, sizeof(r.size)));
    g_mutex_unlock(&h->lock);
    return 0;
}

static void plat_dma_free(void *hw, DextXhciDma *d)
{
    PlatHw *h = hw;

    g_mutex_lock(&h->lock);
    g_hash_table_remove(h->allocs, &d->handle);
    g_mutex_unlock(&h->lock);
    dext_platform_dma_free(h->p, d->handle);
}

/* the controller may only be given memory this driver allocated (device
 * addresses are IOVAs: guest-physical under qtest, the container's IOVA
 * space under VFIO) */
static bool plat_dma_ok(void *hw, uint64_t iova, uint64_t len)
{
    PlatHw *h = hw;
    GHashTableIter it;
    gpointer k, v;
    bool ok = false;

    if (iova + len < iova) {
        return false;
    }
    g_mutex_lock(&h->lock);
    g_hash_table_iter_init(&it, h->allocs);
    while (!ok && g_hash_table_iter_next(&it, &k, &v)) {
        uint64_t a = *(uint64_t *)k, sz = *(uint64_t *)v;

        ok = iova >= a && iova + len <= a + sz;
    }
    g_mutex_unlock(&h->lock);
    return ok;
}

static int plat_irq_bind(void *hw, int eventfd)
{
    PlatHw *h = hw;
    DextIrqKind used;
    int ret;

    if (!h->msix) {
        return -ENOTSUP;
    }
    ret = dext_platform_irq_bind(h->p, h->addr, DEXT_IRQ_MSIX, 0, eventfd,
                                 &used);
    h->bound = ret == 0;
    return ret;
}

static void plat_irq_unbind(void *hw)
{
    PlatHw *h = hw;

    if (h->bound) {
        dext_platform_irq_unbind(h->p, h->addr, 0);
        h->bound = false;
    }
}

static bool plat_alive(void *hw)
{
    return dext_platform_alive(((PlatHw *)hw)->p);
}

static void plat_destroy(void *hw)
{
    PlatHw *h = hw;

    g_hash_table_destroy(h->allocs);
    g_mutex_clear(&h->lock);
    g_free(h);
}

static const DextXhciHwOps plat_ops = {
    .name = "qtest-platform",
    .read32 = plat_read32,
    .write32 = plat_write32,
    .dma_alloc = plat_dma_alloc,
    .dma_free = plat_dma_free,
    .dma_ok = plat_dma_ok,
    .irq_bind = plat_irq_bind,
    .irq_unbind = plat_irq_unbind,
    .alive = plat_alive,
    .destroy = plat_destroy,
};

int dext_xhci_platform_hw(DextPlatform *p, DextPciAddr addr,
                          const DextXhciHwOps **ops, void **hw,
                          uint64_t *bar0_size)
{
    DextPciFunction fn;
    PlatHw *h;
    int ret = dext_platform_pci_get(p, addr, &fn);

    if (ret < 0) {
        return ret;
    }
    if (fn.class_base != 0x0c || fn.class_sub != 0x03 ||
        fn.class_prog_if != 0x30 || fn.bars[0].kind == DEXT_BAR_NONE ||
        fn.bars[0].kind == DEXT_BAR_IO) {
        return -ENODEV;
    }
    h = g_new0(PlatHw, 1);
    h->p = p;
    h->addr = addr;
    h->msix = fn.msix_cap != 0;
    g_mutex_init(&h->lock);
    h->allocs = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                      g_free);
    h->ram = dext_platform_memory_map(p, &h->ram_size);
    ret = h->ram ? dext_platform_pci_set_enables(p, addr,
                                                 DEXT_PCI_ENABLE_MEM |
                                                 DEXT_PCI_ENABLE_BUSMASTER,
                                                 true)
                 : -ENOTSUP;
    if (ret < 0) {
        plat_destroy(h);
        return ret;
    }
    *ops = &plat_ops;
    *hw = h;
    *bar0_size = fn.bars[0].size;
    return 0;
}

int dext_xhci_create(DextPlatform *p, DextPciAddr addr,
                     const DextXhciConfig *cfg, DextXhci **out)
{
    const DextXhciHwOps *ops;
    void *hw;
    uint64_t bar0;
    int ret = dext_xhci_platform_hw(p, addr, &ops, &hw, &bar0);

    if (ret < 0) {
        return ret;
    }
    return dext_xhci_create_hw(ops, hw, bar0, cfg, out);
}
