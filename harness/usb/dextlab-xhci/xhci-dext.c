/* xHCI backend over libdext; see xhci-dext.h. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "xhci-dext.h"
#include "dext/memory.h"
/* dext__buffer_share(): a DMA buffer's guest-RAM fd and offset.  The
 * xHCI dext is the USB provider, whose buffers client driver processes
 * map (docs/runtime/nubs.md): it needs what libdext keeps internal. */
#include "internal.h"

typedef struct DextHw {
    DextPciDevice *dev;
    DextQueue *q;
    GMutex lock;
    GHashTable *dma;             /* iova -> DmaAlloc */
    DextInterruptSource *irq;
    DextXhci *x;                 /* direct: process events in dx_irq */
} DextHw;

typedef struct DmaAlloc {
    DextBuffer *buf;
    DextDmaCommand *cmd;
    uint64_t iova;
    uint64_t size;
} DmaAlloc;

static int dx_read32(void *hw, uint64_t off, uint32_t *val)
{
    return dext_pci_memory_read32(((DextHw *)hw)->dev, 0, off, val);
}

static int dx_write32(void *hw, uint64_t off, uint32_t val)
{
    return dext_pci_memory_write32(((DextHw *)hw)->dev, 0, off, val);
}

static void dma_alloc_free(DmaAlloc *a)
{
    if (a->cmd) {
        dext_dma_command_complete(a->cmd);
        dext_dma_command_release(a->cmd);
    }
    if (a->buf) {
        dext_buffer_release(a->buf);
    }
    g_free(a);
}

static int dx_dma_alloc(void *hw, uint64_t size, DextXhciDma *out)
{
    DextHw *h = hw;
    DmaAlloc *a = g_new0(DmaAlloc, 1);
    DextDmaSegment seg;
    uint32_t nseg = 1;
    int ret;

    size = (size + 4095) & ~4095ull;
    if ((ret = dext_buffer_create(DEXT_DMA_INOUT, size, 4096, &a->buf)) < 0 ||
        (ret = dext_dma_command_create(h->dev, 64, size, &a->cmd)) < 0 ||
        (ret = dext_dma_command_prepare(a->cmd, a->buf, 0, size, &seg,
                                        &nseg)) < 0) {
        dma_alloc_free(a);
        return ret;
    }
    if (nseg != 1 || seg.length < size) {
        dma_alloc_free(a);
        return -ENOMEM;        /* the driver needs contiguous rings */
    }
    a->iova = seg.address;
    a->size = size;
    out->ptr = dext_buffer_map(a->buf);
    out->iova = a->iova;
    out->size = size;
    out->handle = a->iova;
    g_mutex_lock(&h->lock);
    g_hash_table_insert(h->dma, &a->iova, a);
    g_mutex_unlock(&h->lock);
    return 0;
}

static void dx_dma_free(void *hw, DextXhciDma *d)
{
    DextHw *h = hw;

    g_mutex_lock(&h->lock);
    g_hash_table_remove(h->dma, &d->handle);     /* frees */
    g_mutex_unlock(&h->lock);
}

/* the controller may only be given memory this process prepared */
static bool dx_dma_ok(void *hw, uint64_t iova, uint64_t len)
{
    DextHw *h = hw;
    GHashTableIter it;
    gpointer k, v;
    bool ok = false;

    g_mutex_lock(&h->lock);
    g_hash_table_iter_init(&it, h->dma);
    while (!ok && g_hash_table_iter_next(&it, &k, &v)) {
        DmaAlloc *a = v;

        ok = iova >= a->iova && iova + len >= iova &&
             iova + len <= a->iova + a->size;
    }
    g_mutex_unlock(&h->lock);
    return ok;
}

static int dx_dma_fd(void *hw, const DextXhciDma *d, uint64_t *offset)
{
    DextHw *h = hw;
    DmaAlloc *a;
    int fd = -1, ret = -ENOENT;

    g_mutex_lock(&h->lock);
    a = g_hash_table_lookup(h->dma, &d->handle);
    if (a) {
        ret = dext__buffer_share(a->buf, &fd, offset);
    }
    g_mutex_unlock(&h->lock);
    if (ret == 0 && (*offset & 4095)) {
        ret = -ENOTSUP;
    }
    return ret < 0 ? ret : fd;
}

/* The interrupt source's thread (its queue is ours alone, so the handler
 * runs inline there): the event ring is processed right here and the
 * completions run on this thread, one wake-up per interrupt. */
static void dx_irq(void *ctx, uint64_t count, uint64_t time_ns)
{
    DextHw *h = ctx;

    dext_xhci_interrupt(h->x);
}

static int dx_irq_bind_direct(void *hw, DextXhci *x)
{
    DextHw *h = hw;
    int ret;

    if (dext_pci_msix_count(h->dev) == 0) {
        return -ENOTSUP;
    }
    h->x = x;
    ret = dext_interrupt_source_create(h->dev, 0, h->q, dx_irq, h, &h->irq);
    if (ret < 0) {
        h->x = NULL;
        return ret;
    }
    dext_interrupt_source_set_enabled(h->irq, true);
    return 0;
}

static void dx_irq_unbind(void *hw)
{
    DextHw *h = hw;

    if (h->irq) {
        dext_interrupt_source_set_enabled(h->irq, false);
        dext_interrupt_source_destroy(h->irq);     /* waits for dx_irq */
        h->irq = NULL;
    }
    h->x = NULL;
}

static bool dx_alive(void *hw)
{
    uint32_t v;

    /* dextd answers for the device; a dead machine fails the read */
    return dext_pci_config_read32(((DextHw *)hw)->dev, 0, &v) == 0;
}

static void dx_destroy(void *hw)
{
    DextHw *h = hw;

    dx_irq_unbind(h);
    g_hash_table_destroy(h->dma);
    g_mutex_clear(&h->lock);
    g_free(h);
}

const DextXhciHwOps dext_xhci_dext_ops = {
    .name = "libdext",
    .read32 = dx_read32,
    .write32 = dx_write32,
    .dma_alloc = dx_dma_alloc,
    .dma_free = dx_dma_free,
    .dma_ok = dx_dma_ok,
    .irq_bind_direct = dx_irq_bind_direct,
    .irq_unbind = dx_irq_unbind,
    .alive = dx_alive,
    .destroy = dx_destroy,
    .dma_fd = dx_dma_fd,
};

void *dext_xhci_dext_new(DextPciDevice *dev, DextQueue *q)
{
    DextHw *h = g_new0(DextHw, 1);

    h->dev = dev;
    h->q = q;
    g_mutex_init(&h->lock);
    h->dma = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL,
                                   (GDestroyNotify)dma_alloc_free);
    return h;
}
