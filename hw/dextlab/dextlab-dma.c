/*
 * dextlab DMA engine: a PCI Express / PCI endpoint with descriptor-ring DMA
 *
 * Eight submission queues of 32-byte descriptors in guest memory, each with
 * its own completion ring, MSI-X vector and interrupt coalescing; opcodes for
 * host-to-host copies, transfers to and from 1 MiB of device-local memory
 * (BAR2), pattern fills and CRC32C.  The register map is
 * include/hw/dextlab/dextlab-dma-regs.h, the datasheet
 * docs/devices/dextlab-dma.md in the dextlab repository.
 *
 * Work is done in a bottom half, in bounded slices, never in the MMIO
 * handlers.  Guest memory is accessed through the function's bus master
 * address space: each chunk is classified first (RAM, MMIO, unassigned, or
 * one of our own BARs) and only RAM is touched, mapped for zero-copy when
 * possible and through a bounce buffer otherwise.
 *
 * Copyright (c) 2026 dextlab contributors
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 * See the COPYING file in the top-level directory.
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qemu/crc32c.h"
#include "qemu/rcu.h"
#include "qemu/bswap.h"
#include "qemu/units.h"
#include "qemu/error-report.h"
#include "qapi/error.h"
#include "qapi/visitor.h"
#include "hw/pci/pci.h"
#include "hw/pci/pcie.h"
#include "hw/pci/msi.h"
#include "hw/pci/msix.h"
#include "hw/qdev-properties.h"
#include "migration/vmstate.h"
#include "sysemu/dma.h"
#include "sysemu/runstate.h"
#include "exec/memory.h"
#include "qom/object.h"
#include "hw/dextlab/dextlab-dma-regs.h"
#include "trace.h"

#define TYPE_DEXTLAB_DMA "dextlab-dma"
OBJECT_DECLARE_SIMPLE_TYPE(DextlabDmaState, DEXTLAB_DMA)

/* Work done per bottom-half run, and per queue per round-robin turn. */
#define DXL_BH_BUDGET       (4 * MiB)
#define DXL_SLICE           (2 * MiB)
/* Budget charged per descriptor, so that NOP storms stay bounded too. */
#define DXL_DESC_COST       (4 * KiB)
#define DXL_BOUNCE_SIZE     (64 * KiB)
#define DXL_FILL_TMPL       4096

typedef struct DxlErrEntry {
    uint8_t code;
    uint8_t queue;
    uint16_t index;
    uint64_t addr;
} DxlErrEntry;

typedef struct DxlQueue {
    DextlabDmaState *s;
    unsigned idx;
    QEMUTimer *coal_timer;

    /* Guest-visible registers */
    uint64_t sq_base;
    uint64_t cq_base;
    uint32_t sq_size;
    uint32_t cq_size;
    uint32_t sq_tail;
    uint32_t sq_head;
    uint32_t cq_head;
    uint32_t cq_tail;
    uint32_t coal_count;
    uint32_t coal_usec;
    bool enabled;
    bool halted;
    uint8_t last_err;
    bool cq_phase;              /* phase tag of the next completion */
    uint64_t stat_desc;
    uint64_t stat_bytes;
    uint32_t stat_errors;
    uint32_t coal_pending;      /* interrupt requests not yet signalled */

    /* The descriptor in flight: fetched, not yet completed */
    bool has_desc;
    bool started;
    bool data_done;             /* waiting for the timing model */
    uint16_t desc_slot;
    uint8_t op;
    uint8_t flags;
    uint32_t len;
    uint64_t src;
    uint64_t dst;
    uint64_t cookie;
    uint32_t done;
    uint32_t crc;
    uint8_t cpl_status;
    int64_t pace_deadline;
} DxlQueue;

struct DextlabDmaState {
    PCIDevice parent_obj;

    MemoryRegion mmio;
    MemoryRegion msix_bar;
    MemoryRegion devmem;
    uint8_t *devmem_ptr;
    QEMUBH *bh;
    QEMUTimer *pace_timer;
    VMChangeStateEntry *vmstate_change;
    uint8_t *bounce;
    uint8_t *fill_tmpl;

    /* Properties */
    uint8_t link_gen;
    uint8_t link_width;
    /* Config-space identity (x-vendor-id, x-device-id): lets the generic
     * DMA engine stand in for any VID:DID a new driver targets. */
    uint16_t vendor_id;
    uint16_t device_id;

    /* Guest-visible registers */
    uint32_t ctrl;
    uint32_t int_status;
    uint32_t int_mask;
    uint32_t scratch;
    DxlErrEntry errlog[DXL_DMA_ERRLOG_DEPTH];
    uint32_t err_head;
    uint32_t err_count;
    uint32_t err_overflow;
    uint32_t err_total;
    uint64_t stat_desc;
    uint64_t stat_bytes;
    uint64_t stat_errors;
    uint64_t stat_irqs;
    uint64_t stat_doorbells;
    int64_t link_free;          /* timing model: when the link is idle */

    DxlQueue q[DXL_DMA_NUM_QUEUES];
};

static const char *const dxl_err_names[] = {
    [DXL_ERR_OK] = "ok",
    [DXL_ERR_BAD_OPCODE] = "bad opcode",
    [DXL_ERR_BAD_LENGTH] = "bad length",
    [DXL_ERR_BAD_FLAGS] = "reserved flags set",
    [DXL_ERR_RSVD_FIELD] = "reserved field not zero",
    [DXL_ERR_ADDR_WRAP] = "address wraps past 2^64",
    [DXL_ERR_DMA_UNMAPPED] = "DMA to unmapped address",
    [DXL_ERR_DMA_MMIO] = "DMA to MMIO or read-only memory",
    [DXL_ERR_DMA_SELF] = "DMA into the device's own BAR",
    [DXL_ERR_DEVMEM_RANGE] = "device memory range out of bounds",
    [DXL_ERR_OVERLAP] = "copy source and destination overlap",
    [DXL_ERR_DMA_READ] = "DMA read error",
    [DXL_ERR_DMA_WRITE] = "DMA write error",
    [DXL_ERR_BAD_SQ_BASE] = "bad SQ base",
    [DXL_ERR_BAD_SQ_SIZE] = "bad SQ size",
    [DXL_ERR_BAD_CQ_BASE] = "bad CQ base",
    [DXL_ERR_BAD_CQ_SIZE] = "bad CQ size",
    [DXL_ERR_BAD_SQ_TAIL] = "SQ tail out of range",
    [DXL_ERR_BAD_CQ_HEAD] = "CQ head out of range",
    [DXL_ERR_SQ_FETCH] = "descriptor fetch failed, queue halted",
    [DXL_ERR_CQ_WRITE] = "completion write failed, queue halted",
    [DXL_ERR_QUEUE_DISABLED] = "doorbell on a disabled queue",
    [DXL_ERR_REG_ACCESS] = "bad register access",
};

static const char *dxl_err_name(uint8_t code)
{
    if (code < ARRAY_SIZE(dxl_err_names) && dxl_err_names[code]) {
        return dxl_err_names[code];
    }
    return "unknown";
}

/* ------------------------------------------------------------------------ */
/* Interrupts */

static bool dxl_intx_mode(DextlabDmaState *s)
{
    PCIDevice *pdev = &s->parent_obj;

    return !msix_enabled(pdev) && !msi_enabled(pdev);
}

static void dxl_update_intx(DextlabDmaState *s)
{
    PCIDevice *pdev = &s->parent_obj;
    int level = dxl_intx_mode(s) && (s->int_status & ~s->int_mask);

    if (level && !pci_irq_disabled(pdev) && !(pdev->irq_state & 1)) {
        s->stat_irqs++;
    }
    trace_dextlab_dma_intx(level);
    pci_set_irq(pdev, level);
}

static unsigned dxl_cause_vector(uint32_t cause)
{
    unsigned q;

    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        if (cause & DXL_INT_QUEUE(q)) {
            return DXL_DMA_VEC_QUEUE(q);
        }
    }
    return DXL_DMA_VEC_ADMIN;
}

/* Send the message for one unmasked cause (MSI-X or MSI mode only). */
static void dxl_signal(DextlabDmaState *s, uint32_t cause)
{
    PCIDevice *pdev = &s->parent_obj;
    unsigned vector = dxl_cause_vector(cause);

    if (msix_enabled(pdev)) {
        trace_dextlab_dma_irq(cause, vector, "msix");
        s->stat_irqs++;
        msix_notify(pdev, vector);
    } else if (msi_enabled(pdev)) {
        trace_dextlab_dma_irq(cause, 0, "msi");
        s->stat_irqs++;
        msi_notify(pdev, 0);
    }
}

/* Latch interrupt cause(s) and signal them unless masked. */
static void dxl_raise(DextlabDmaState *s, uint32_t cause)
{
    unsigned bit;

    s->int_status |= cause;
    if (dxl_intx_mode(s)) {
        dxl_update_intx(s);
        return;
    }
    for (bit = 0; bit < 32; bit++) {
        uint32_t c = BIT(bit);

        if ((cause & c) && !(s->int_mask & c)) {
            dxl_signal(s, c);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Error log */

static void dxl_error(DextlabDmaState *s, uint8_t code, unsigned queue,
                      uint32_t index, uint64_t addr)
{
    trace_dextlab_dma_error(code, queue, index, addr);
    qemu_log_mask(LOG_GUEST_ERROR,
                  "dextlab-dma: %s (code 0x%02x, queue %d, index %u, "
                  "addr/value 0x%" PRIx64 ")\n", dxl_err_name(code), code,
                  queue == DXL_ERR_QUEUE_NONE ? -1 : (int)queue, index, addr);
    s->err_total++;
    s->stat_errors++;
    if (s->err_count < DXL_DMA_ERRLOG_DEPTH) {
        DxlErrEntry *e = &s->errlog[(s->err_head + s->err_count) %
                                    DXL_DMA_ERRLOG_DEPTH];
        e->code = code;
        e->queue = queue;
        e->index = index;
        e->addr = addr;
        s->err_count++;
    } else {
        s->err_overflow++;
    }
    dxl_raise(s, DXL_INT_ERROR);
}

static void dxl_reg_error(DextlabDmaState *s, hwaddr addr, uint64_t val,
                          const char *what)
{
    qemu_log_mask(LOG_GUEST_ERROR, "dextlab-dma: %s at 0x%" HWADDR_PRIx "\n",
                  what, addr);
    dxl_error(s, DXL_ERR_REG_ACCESS, DXL_ERR_QUEUE_NONE, addr, val);
}

/* ------------------------------------------------------------------------ */
/* DMA address classification and data movement */

static bool dxl_can_run(DextlabDmaState *s)
{
    PCIDevice *pdev = &s->parent_obj;
    uint16_t pmcsr = pci_get_word(pdev->config + DXL_DMA_CAP_PM_OFFSET +
                                  PCI_PM_CTRL);

    /* No DMA while the VM is stopped (e.g. by migration) */
    return runstate_is_running() && (s->ctrl & DXL_CTRL_ENABLE) &&
           (pci_get_word(pdev->config + PCI_COMMAND) & PCI_COMMAND_MASTER) &&
           (pmcsr & PCI_PM_CTRL_STATE_MASK) == 0;
}

/*
 * Classify the bus address @addr for an access of up to *@plen bytes.
 * Returns 0 if it is RAM the device may access, and shortens *@plen to the
 * contiguous part; otherwise the DXL_ERR_* code.  Only RAM is ever touched:
 * DMA into MMIO (and into our own BARs above all) could re-enter device
 * models from the middle of a transfer.
 */
static uint8_t dxl_dma_classify(DextlabDmaState *s, uint64_t addr,
                                uint64_t *plen, bool is_write)
{
    AddressSpace *as = pci_get_address_space(&s->parent_obj);
    MemoryRegion *mr;
    hwaddr xlat, len = *plen;

    RCU_READ_LOCK_GUARD();
    mr = address_space_translate(as, addr, &xlat, &len, is_write,
                                 MEMTXATTRS_UNSPECIFIED);
    if (memory_region_owner(mr) == OBJECT(s)) {
        return DXL_ERR_DMA_SELF;
    }
    if (!memory_region_is_ram(mr)) {
        /*
         * Holes in the address space resolve to physmem's io_mem_unassigned,
         * the one region with neither owner nor name.
         */
        if (!mr->owner && !memory_region_name(mr)) {
            return DXL_ERR_DMA_UNMAPPED;
        }
        return DXL_ERR_DMA_MMIO;
    }
    if (is_write && (mr->readonly || mr->rom_device)) {
        return DXL_ERR_DMA_MMIO;
    }
    *plen = MIN(len, *plen);
    return *plen ? DXL_ERR_OK : DXL_ERR_DMA_UNMAPPED;
}

/* Check that [addr, addr + len) is RAM all the way. */
static uint8_t dxl_dma_check_range(DextlabDmaState *s, uint64_t addr,
                                   uint64_t len, bool is_write,
                                   uint64_t *bad)
{
    while (len) {
        uint64_t l = len;
        uint8_t err = dxl_dma_classify(s, addr, &l, is_write);

        if (err) {
            *bad = addr;
            return err;
        }
        addr += l;
        len -= l;
    }
    return DXL_ERR_OK;
}

/*
 * Map up to *@plen bytes of RAM at @addr.  On a classification error returns
 * NULL with *@err set.  Returns NULL with *@err == 0 when the mapping could
 * not be made (address_space_map ran out of bounce resources): the caller
 * then copies *@plen (<= DXL_BOUNCE_SIZE) bytes with pci_dma_read/write.
 */
static void *dxl_map(DextlabDmaState *s, uint64_t addr, uint64_t *plen,
                     bool is_write, uint8_t *err)
{
    dma_addr_t mlen;
    void *p;

    *err = dxl_dma_classify(s, addr, plen, is_write);
    if (*err) {
        return NULL;
    }
    mlen = *plen;
    p = pci_dma_map(&s->parent_obj, addr, &mlen,
                    is_write ? DMA_DIRECTION_FROM_DEVICE :
                               DMA_DIRECTION_TO_DEVICE);
    if (!p || !mlen) {
        if (p) {
            pci_dma_unmap(&s->parent_obj, p, mlen,
                          is_write ? DMA_DIRECTION_FROM_DEVICE :
                                     DMA_DIRECTION_TO_DEVICE, 0);
        }
        *plen = MIN(*plen, DXL_BOUNCE_SIZE);
        return NULL;
    }
    *plen = mlen;
    return p;
}

static void dxl_unmap(DextlabDmaState *s, void *p, uint64_t len,
                      bool is_write, uint64_t access_len)
{
    if (p) {
        pci_dma_unmap(&s->parent_obj, p, len,
                      is_write ? DMA_DIRECTION_FROM_DEVICE :
                                 DMA_DIRECTION_TO_DEVICE, access_len);
    }
}

/*
 * Move @len bytes from @src to @dst; each side is either a bus address or,
 * when @src_dev / @dst_dev, an offset into device memory (already range
 * checked).  Zero-copy when both sides map; one memcpy per contiguous chunk.
 */
static uint8_t dxl_move(DextlabDmaState *s, bool src_dev, uint64_t src,
                        bool dst_dev, uint64_t dst, uint64_t len,
                        uint32_t *done, uint64_t *bad)
{
    PCIDevice *pdev = &s->parent_obj;

    while (len) {
        uint64_t ls = len, ld = len, n;
        void *ps = NULL, *pd = NULL;
        bool src_mapped = false, dst_mapped = false;
        uint8_t err;

        if (src_dev) {
            ps = s->devmem_ptr + src;
        } else {
            ps = dxl_map(s, src, &ls, false, &err);
            if (err) {
                *bad = src;
                return err;
            }
            src_mapped = ps != NULL;
        }
        if (dst_dev) {
            pd = s->devmem_ptr + dst;
        } else {
            pd = dxl_map(s, dst, &ld, true, &err);
            if (err) {
                dxl_unmap(s, src_mapped ? ps : NULL, ls, false, 0);
                *bad = dst;
                return err;
            }
            dst_mapped = pd != NULL;
        }
        n = MIN(ls, ld);

        if (ps && pd) {
            memcpy(pd, ps, n);
        } else {
            /* Slow path through the bounce buffer, results checked */
            MemTxResult r = MEMTX_OK;

            n = MIN(n, DXL_BOUNCE_SIZE);
            if (ps) {
                memcpy(s->bounce, ps, n);
            } else {
                r = pci_dma_read(pdev, src, s->bounce, n);
            }
            if (r != MEMTX_OK) {
                err = DXL_ERR_DMA_READ;
                *bad = src;
            } else if (pd) {
                memcpy(pd, s->bounce, n);
            } else if (pci_dma_write(pdev, dst, s->bounce, n) != MEMTX_OK) {
                err = DXL_ERR_DMA_WRITE;
                *bad = dst;
            }
            if (err) {
                dxl_unmap(s, src_mapped ? ps : NULL, ls, false, 0);
                dxl_unmap(s, dst_mapped ? pd : NULL, ld, true, 0);
                return err;
            }
        }
        dxl_unmap(s, src_mapped ? ps : NULL, ls, false, n);
        dxl_unmap(s, dst_mapped ? pd : NULL, ld, true, n);
        if (dst_dev) {
            memory_region_set_dirty(&s->devmem, dst, n);
        }
        src += n;
        dst += n;
        len -= n;
        *done += n;
    }
    return DXL_ERR_OK;
}

/* Lay the 8-byte little-endian pattern out over the fill template. */
static void dxl_fill_prepare(DextlabDmaState *s, uint64_t pattern)
{
    unsigned i;

    for (i = 0; i < DXL_FILL_TMPL + 8; i += 8) {
        stq_le_p(s->fill_tmpl + i, pattern);
    }
}

/* Fill from the template; @off is the offset within the descriptor. */
static void dxl_fill_mem(DextlabDmaState *s, uint8_t *p, uint64_t n,
                         uint64_t off)
{
    uint64_t i = 0;

    while (i < n) {
        uint64_t k = MIN(n - i, DXL_FILL_TMPL);

        memcpy(p + i, s->fill_tmpl + ((off + i) & 7), k);
        i += k;
    }
}

static uint8_t dxl_fill(DextlabDmaState *s, uint64_t dst, uint64_t len,
                        uint32_t *done, uint64_t *bad)
{
    PCIDevice *pdev = &s->parent_obj;

    while (len) {
        uint64_t l = len;
        uint8_t err;
        void *p = dxl_map(s, dst, &l, true, &err);

        if (err) {
            *bad = dst;
            return err;
        }
        if (p) {
            dxl_fill_mem(s, p, l, *done);
            dxl_unmap(s, p, l, true, l);
        } else {
            dxl_fill_mem(s, s->bounce, l, *done);
            if (pci_dma_write(pdev, dst, s->bounce, l) != MEMTX_OK) {
                *bad = dst;
                return DXL_ERR_DMA_WRITE;
            }
        }
        dst += l;
        len -= l;
        *done += l;
    }
    return DXL_ERR_OK;
}

/*
 * @crc is the finished CRC32C of the data so far (0 for none); QEMU's
 * crc32c() inverts its result, so continuing means starting from ~crc.
 */
static uint8_t dxl_crc(DextlabDmaState *s, uint64_t src, uint64_t len,
                       uint32_t *crc, uint32_t *done, uint64_t *bad)
{
    PCIDevice *pdev = &s->parent_obj;

    while (len) {
        uint64_t l = len;
        uint8_t err;
        void *p = dxl_map(s, src, &l, false, &err);

        if (err) {
            *bad = src;
            return err;
        }
        if (p) {
            *crc = crc32c(~*crc, p, l);
            dxl_unmap(s, p, l, false, l);
        } else {
            if (pci_dma_read(pdev, src, s->bounce, l) != MEMTX_OK) {
                *bad = src;
                return DXL_ERR_DMA_READ;
            }
            *crc = crc32c(~*crc, s->bounce, l);
        }
        src += l;
        len -= l;
        *done += l;
    }
    return DXL_ERR_OK;
}

/* ------------------------------------------------------------------------ */
/* Queues */

static bool dxl_cq_full(DxlQueue *q)
{
    return ((q->cq_tail + 1) & (q->cq_size - 1)) == q->cq_head;
}

static void dxl_coal_fire(DxlQueue *q)
{
    DextlabDmaState *s = q->s;

    timer_del(q->coal_timer);
    if (q->coal_pending) {
        q->coal_pending = 0;
        dxl_raise(s, DXL_INT_QUEUE(q->idx));
    }
}

static void dxl_coal_timer_cb(void *opaque)
{
    dxl_coal_fire(opaque);
}

static void dxl_irq_request(DxlQueue *q)
{
    q->coal_pending++;
    if (q->coal_pending >= MAX(q->coal_count, 1)) {
        dxl_coal_fire(q);
    } else if (q->coal_usec && !timer_pending(q->coal_timer)) {
        timer_mod(q->coal_timer, qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) +
                  (int64_t)q->coal_usec * SCALE_US);
    }
}

static void dxl_queue_stop(DxlQueue *q)
{
    q->has_desc = false;
    q->started = false;
    q->data_done = false;
    q->sq_head = 0;
    q->sq_tail = 0;
    q->cq_head = 0;
    q->cq_tail = 0;
    q->cq_phase = true;
    q->coal_pending = 0;
    q->halted = false;
    q->enabled = false;
    q->last_err = 0;
    timer_del(q->coal_timer);
}

static void dxl_queue_reset(DxlQueue *q)
{
    dxl_queue_stop(q);
    q->sq_base = 0;
    q->cq_base = 0;
    q->sq_size = 0;
    q->cq_size = 0;
    q->coal_count = 0;
    q->coal_usec = 0;
    q->stat_desc = 0;
    q->stat_bytes = 0;
    q->stat_errors = 0;
}

static void dxl_queue_halt(DxlQueue *q, uint8_t code, uint64_t addr)
{
    q->halted = true;
    q->last_err = code;
    q->has_desc = false;
    dxl_error(q->s, code, q->idx, q->sq_head, addr);
}

static bool dxl_ring_size_ok(uint32_t size)
{
    return size >= DXL_DMA_QUEUE_MIN_ENTRIES &&
           size <= DXL_DMA_QUEUE_MAX_ENTRIES && is_power_of_2(size);
}

static void dxl_queue_enable(DxlQueue *q)
{
    DextlabDmaState *s = q->s;
    uint64_t bad = 0;
    uint8_t err = 0;

    if (!dxl_ring_size_ok(q->sq_size)) {
        err = DXL_ERR_BAD_SQ_SIZE;
        bad = q->sq_size;
    } else if (!dxl_ring_size_ok(q->cq_size)) {
        err = DXL_ERR_BAD_CQ_SIZE;
        bad = q->cq_size;
    } else if (q->sq_base & (sizeof(struct dxl_dma_desc) - 1) ||
               q->sq_base + (uint64_t)q->sq_size * 32 - 1 < q->sq_base ||
               dxl_dma_check_range(s, q->sq_base, (uint64_t)q->sq_size * 32,
                                   false, &bad)) {
        err = DXL_ERR_BAD_SQ_BASE;
        bad = q->sq_base;
    } else if (q->cq_base & (sizeof(struct dxl_dma_cpl) - 1) ||
               q->cq_base + (uint64_t)q->cq_size * 16 - 1 < q->cq_base ||
               dxl_dma_check_range(s, q->cq_base, (uint64_t)q->cq_size * 16,
                                   true, &bad)) {
        err = DXL_ERR_BAD_CQ_BASE;
        bad = q->cq_base;
    }
    if (err) {
        q->last_err = err;
        dxl_error(s, err, q->idx, 0, bad);
        return;
    }
    dxl_queue_stop(q);
    q->enabled = true;
    trace_dextlab_dma_queue_enable(q->idx, q->sq_base, q->sq_size,
                                   q->cq_base, q->cq_size);
}

/* Write the completion of the in-flight descriptor and retire it. */
static void dxl_post(DextlabDmaState *s, DxlQueue *q)
{
    struct dxl_dma_cpl cpl;
    uint64_t addr = q->cq_base + (uint64_t)q->cq_tail * sizeof(cpl);
    uint64_t l = sizeof(cpl), bad;
    uint8_t status = q->cpl_status;
    uint8_t err;

    cpl.cookie = cpu_to_le64(q->cookie);
    cpl.result = cpu_to_le32(q->op == DXL_OP_CRC32C && !status ?
                             q->crc : q->done);
    cpl.sq_head = cpu_to_le16(q->sq_head);
    cpl.status = status;
    cpl.flags = q->cq_phase ? DXL_CPL_F_PHASE : 0;

    q->has_desc = false;
    q->started = false;
    q->data_done = false;

    err = dxl_dma_check_range(s, addr, l, true, &bad);
    if (err || pci_dma_write(&s->parent_obj, addr, &cpl, l) != MEMTX_OK) {
        dxl_queue_halt(q, DXL_ERR_CQ_WRITE, addr);
        return;
    }
    trace_dextlab_dma_complete(q->idx, q->cq_tail, status, le32_to_cpu(
                               cpl.result), q->cookie);
    q->cq_tail = (q->cq_tail + 1) & (q->cq_size - 1);
    if (q->cq_tail == 0) {
        q->cq_phase = !q->cq_phase;
    }
    q->stat_desc++;
    s->stat_desc++;
    if (status) {
        q->stat_errors++;
    } else if (q->op != DXL_OP_CRC32C) {
        q->stat_bytes += q->done;
        s->stat_bytes += q->done;
    } else {
        q->stat_bytes += q->len;
        s->stat_bytes += q->len;
    }
    if ((q->flags & DXL_DESC_F_IRQ) || status) {
        dxl_irq_request(q);
    }
}

/* Link rate of the timing model in bytes per second per lane. */
static uint64_t dxl_lane_rate(uint8_t gen)
{
    static const uint64_t rate[] = {
        0, 250000000, 500000000, 984615384, 1969230769, 3938461538,
    };

    return gen < ARRAY_SIZE(rate) ? rate[gen] : 0;
}

static void dxl_pace_rearm(DextlabDmaState *s)
{
    int64_t next = INT64_MAX;
    unsigned i;

    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        if (s->q[i].has_desc && s->q[i].data_done) {
            next = MIN(next, s->q[i].pace_deadline);
        }
    }
    if (next == INT64_MAX) {
        timer_del(s->pace_timer);
    } else {
        timer_mod(s->pace_timer, next);
    }
}

static void dxl_finish(DextlabDmaState *s, DxlQueue *q, uint8_t status,
                       uint64_t bad)
{
    q->cpl_status = status;
    if (status) {
        dxl_error(s, status, q->idx, q->desc_slot, bad);
    }
    if (s->link_gen && q->done) {
        int64_t now = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
        uint64_t rate = dxl_lane_rate(s->link_gen) * s->link_width;
        int64_t t = muldiv64(q->done, NANOSECONDS_PER_SECOND, rate);

        s->link_free = MAX(s->link_free, now) + t;
        q->pace_deadline = s->link_free;
        q->data_done = true;
        dxl_pace_rearm(s);
        return;
    }
    dxl_post(s, q);
}

static void dxl_pace_timer_cb(void *opaque)
{
    DextlabDmaState *s = opaque;
    int64_t now = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
    unsigned i;

    if (!runstate_is_running()) {
        /* Posted when the VM runs again (dxl_vm_state_change) */
        return;
    }
    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        DxlQueue *q = &s->q[i];

        if (q->has_desc && q->data_done && q->pace_deadline <= now) {
            dxl_post(s, q);
        }
    }
    dxl_pace_rearm(s);
    qemu_bh_schedule(s->bh);
}

static bool dxl_addr_wraps(uint64_t addr, uint32_t len)
{
    return len && addr > UINT64_MAX - (len - 1);
}

static bool dxl_devmem_bad(uint64_t off, uint32_t len)
{
    return off >= DXL_DMA_DEVMEM_SIZE || len > DXL_DMA_DEVMEM_SIZE - off;
}

/* Check the descriptor's fields; returns DXL_ERR_* and the culprit. */
static uint8_t dxl_validate(DxlQueue *q, uint16_t rsvd0, uint64_t *bad)
{
    *bad = 0;
    if (q->op > DXL_OP_MAX) {
        *bad = q->op;
        return DXL_ERR_BAD_OPCODE;
    }
    if (q->flags & ~DXL_DESC_F_VALID_MASK) {
        *bad = q->flags;
        return DXL_ERR_BAD_FLAGS;
    }
    if (rsvd0) {
        *bad = rsvd0;
        return DXL_ERR_RSVD_FIELD;
    }
    if (q->op == DXL_OP_NOP) {
        if (q->len) {
            *bad = q->len;
            return DXL_ERR_BAD_LENGTH;
        }
        if (q->src || q->dst) {
            *bad = q->src ? q->src : q->dst;
            return DXL_ERR_RSVD_FIELD;
        }
        return DXL_ERR_OK;
    }
    if (q->len == 0 || q->len > DXL_DMA_MAX_XFER) {
        *bad = q->len;
        return DXL_ERR_BAD_LENGTH;
    }
    switch (q->op) {
    case DXL_OP_COPY:
        if (dxl_addr_wraps(q->src, q->len)) {
            *bad = q->src;
            return DXL_ERR_ADDR_WRAP;
        }
        if (dxl_addr_wraps(q->dst, q->len)) {
            *bad = q->dst;
            return DXL_ERR_ADDR_WRAP;
        }
        if (q->src < q->dst + q->len && q->dst < q->src + q->len) {
            *bad = q->dst;
            return DXL_ERR_OVERLAP;
        }
        break;
    case DXL_OP_WRITE_DEV:
        if (dxl_addr_wraps(q->src, q->len)) {
            *bad = q->src;
            return DXL_ERR_ADDR_WRAP;
        }
        if (dxl_devmem_bad(q->dst, q->len)) {
            *bad = q->dst;
            return DXL_ERR_DEVMEM_RANGE;
        }
        break;
    case DXL_OP_READ_DEV:
        if (dxl_devmem_bad(q->src, q->len)) {
            *bad = q->src;
            return DXL_ERR_DEVMEM_RANGE;
        }
        if (dxl_addr_wraps(q->dst, q->len)) {
            *bad = q->dst;
            return DXL_ERR_ADDR_WRAP;
        }
        break;
    case DXL_OP_FILL:
        if (dxl_addr_wraps(q->dst, q->len)) {
            *bad = q->dst;
            return DXL_ERR_ADDR_WRAP;
        }
        break;
    case DXL_OP_CRC32C:
        if (dxl_addr_wraps(q->src, q->len)) {
            *bad = q->src;
            return DXL_ERR_ADDR_WRAP;
        }
        if (q->dst >> 32) {
            *bad = q->dst;
            return DXL_ERR_RSVD_FIELD;
        }
        break;
    }
    return DXL_ERR_OK;
}

/* Fetch the descriptor at SQ head.  False if the queue halted. */
static bool dxl_fetch(DextlabDmaState *s, DxlQueue *q)
{
    struct dxl_dma_desc d;
    uint64_t addr = q->sq_base + (uint64_t)q->sq_head * sizeof(d);
    uint64_t bad;
    uint8_t err;

    err = dxl_dma_check_range(s, addr, sizeof(d), false, &bad);
    if (err || pci_dma_read(&s->parent_obj, addr, &d, sizeof(d)) != MEMTX_OK) {
        dxl_queue_halt(q, DXL_ERR_SQ_FETCH, addr);
        return false;
    }
    q->desc_slot = q->sq_head;
    q->sq_head = (q->sq_head + 1) & (q->sq_size - 1);
    q->op = d.opcode;
    q->flags = d.flags;
    q->len = le32_to_cpu(d.length);
    q->src = le64_to_cpu(d.src);
    q->dst = le64_to_cpu(d.dst);
    q->cookie = le64_to_cpu(d.cookie);
    q->done = 0;
    q->crc = q->op == DXL_OP_CRC32C ? (uint32_t)q->dst : 0;
    q->has_desc = true;
    q->started = false;
    q->data_done = false;
    trace_dextlab_dma_desc(q->idx, q->desc_slot, q->op, q->flags, q->len,
                           q->src, q->dst, q->cookie);

    err = dxl_validate(q, le16_to_cpu(d.rsvd0), &bad);
    if (err) {
        dxl_finish(s, q, err, bad);
    }
    return true;
}

static bool dxl_other_started(DextlabDmaState *s, DxlQueue *q)
{
    unsigned i;

    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        if (&s->q[i] != q && s->q[i].has_desc && s->q[i].started) {
            return true;
        }
    }
    return false;
}

static bool dxl_fence_waiting(DextlabDmaState *s, DxlQueue *q)
{
    return q->has_desc && !q->started && (q->flags & DXL_DESC_F_FENCE) &&
           dxl_other_started(s, q);
}

/* Run one turn of queue @q.  Returns the budget used; 0 = no progress. */
static uint64_t dxl_queue_step(DextlabDmaState *s, DxlQueue *q,
                               uint64_t budget)
{
    uint64_t cost = 0, n, bad = 0;
    uint8_t err = DXL_ERR_OK;

    if (!q->enabled || q->halted) {
        return 0;
    }
    if (!q->has_desc) {
        if (q->sq_head == q->sq_tail || dxl_cq_full(q)) {
            return 0;
        }
        cost = DXL_DESC_COST;
        if (!dxl_fetch(s, q) || !q->has_desc) {
            return cost;
        }
    }
    if (q->data_done || dxl_fence_waiting(s, q)) {
        return cost;
    }
    q->started = true;
    n = MIN(q->len - q->done, budget);
    switch (q->op) {
    case DXL_OP_COPY:
        err = dxl_move(s, false, q->src + q->done, false, q->dst + q->done,
                       n, &q->done, &bad);
        break;
    case DXL_OP_WRITE_DEV:
        err = dxl_move(s, false, q->src + q->done, true, q->dst + q->done,
                       n, &q->done, &bad);
        break;
    case DXL_OP_READ_DEV:
        err = dxl_move(s, true, q->src + q->done, false, q->dst + q->done,
                       n, &q->done, &bad);
        break;
    case DXL_OP_FILL:
        dxl_fill_prepare(s, q->src);
        err = dxl_fill(s, q->dst + q->done, n, &q->done, &bad);
        break;
    case DXL_OP_CRC32C:
        err = dxl_crc(s, q->src + q->done, n, &q->crc, &q->done, &bad);
        break;
    default:
        break;
    }
    if (err) {
        dxl_finish(s, q, err, bad);
    } else if (q->done == q->len) {
        dxl_finish(s, q, DXL_ERR_OK, 0);
    }
    return cost + n + 1;
}

static void dxl_bh(void *opaque)
{
    DextlabDmaState *s = opaque;
    uint64_t budget = DXL_BH_BUDGET;
    bool progress = true;
    unsigned i;

    if (!dxl_can_run(s)) {
        return;
    }
    while (progress && budget) {
        progress = false;
        for (i = 0; i < DXL_DMA_NUM_QUEUES && budget; i++) {
            uint64_t used = dxl_queue_step(s, &s->q[i],
                                           MIN(budget, DXL_SLICE));

            if (used) {
                progress = true;
                budget -= MIN(used, budget);
            }
        }
    }
    if (!budget) {
        /* More may be left: yield to the main loop, then carry on */
        qemu_bh_schedule(s->bh);
    }
}

static void dxl_kick(DextlabDmaState *s)
{
    if (dxl_can_run(s)) {
        qemu_bh_schedule(s->bh);
    }
}

/* ------------------------------------------------------------------------ */
/* Registers */

static void dxl_regs_reset(DextlabDmaState *s)
{
    unsigned i;

    qemu_bh_cancel(s->bh);
    timer_del(s->pace_timer);
    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        dxl_queue_reset(&s->q[i]);
    }
    s->ctrl = 0;
    s->int_status = 0;
    s->int_mask = 0;
    s->scratch = 0;
    memset(s->errlog, 0, sizeof(s->errlog));
    s->err_head = 0;
    s->err_count = 0;
    s->err_overflow = 0;
    s->err_total = 0;
    s->stat_desc = 0;
    s->stat_bytes = 0;
    s->stat_errors = 0;
    s->stat_irqs = 0;
    s->stat_doorbells = 0;
    s->link_free = 0;
}

static uint32_t dxl_status(DextlabDmaState *s)
{
    PCIDevice *pdev = &s->parent_obj;
    uint32_t v = 0;
    unsigned i;

    if (s->ctrl & DXL_CTRL_ENABLE) {
        v |= DXL_STATUS_READY;
    }
    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        if (s->q[i].enabled && !s->q[i].halted &&
            (s->q[i].has_desc || s->q[i].sq_head != s->q[i].sq_tail)) {
            v |= DXL_STATUS_BUSY;
        }
    }
    if (s->err_count) {
        v |= DXL_STATUS_ERRLOG;
    }
    if (!(pci_get_word(pdev->config + PCI_COMMAND) & PCI_COMMAND_MASTER)) {
        v |= DXL_STATUS_NO_BUSMASTER;
    }
    if (pci_get_word(pdev->config + DXL_DMA_CAP_PM_OFFSET + PCI_PM_CTRL) &
        PCI_PM_CTRL_STATE_MASK) {
        v |= DXL_STATUS_LOW_POWER;
    }
    return v;
}

static uint32_t dxl_queue_status(DextlabDmaState *s, DxlQueue *q)
{
    uint32_t v = (uint32_t)q->last_err << DXL_QSTS_ERR_SHIFT;

    if (q->enabled) {
        v |= DXL_QSTS_ENABLED;
        if (q->has_desc || q->sq_head != q->sq_tail) {
            v |= DXL_QSTS_BUSY;
        }
        if (!q->has_desc && q->sq_head != q->sq_tail && dxl_cq_full(q)) {
            v |= DXL_QSTS_CQ_FULL;
        }
        if (dxl_fence_waiting(s, q)) {
            v |= DXL_QSTS_FENCE_WAIT;
        }
    }
    if (q->halted) {
        v |= DXL_QSTS_HALTED;
    }
    return v;
}

static bool dxl_queue_read(DextlabDmaState *s, DxlQueue *q, hwaddr reg,
                           uint32_t *val)
{
    switch (reg) {
    case DXL_Q_SQ_BASE_LO:
        *val = q->sq_base;
        break;
    case DXL_Q_SQ_BASE_HI:
        *val = q->sq_base >> 32;
        break;
    case DXL_Q_SQ_SIZE:
        *val = q->sq_size;
        break;
    case DXL_Q_SQ_TAIL:
        *val = q->sq_tail;
        break;
    case DXL_Q_SQ_HEAD:
        *val = q->sq_head;
        break;
    case DXL_Q_CQ_BASE_LO:
        *val = q->cq_base;
        break;
    case DXL_Q_CQ_BASE_HI:
        *val = q->cq_base >> 32;
        break;
    case DXL_Q_CQ_SIZE:
        *val = q->cq_size;
        break;
    case DXL_Q_CQ_HEAD:
        *val = q->cq_head;
        break;
    case DXL_Q_CQ_TAIL:
        *val = q->cq_tail;
        break;
    case DXL_Q_CTRL:
        *val = q->enabled ? DXL_QCTRL_ENABLE : 0;
        break;
    case DXL_Q_STATUS:
        *val = dxl_queue_status(s, q);
        break;
    case DXL_Q_COAL_COUNT:
        *val = q->coal_count;
        break;
    case DXL_Q_COAL_USEC:
        *val = q->coal_usec;
        break;
    case DXL_Q_STAT_DESC_LO:
        *val = q->stat_desc;
        break;
    case DXL_Q_STAT_DESC_HI:
        *val = q->stat_desc >> 32;
        break;
    case DXL_Q_STAT_BYTES_LO:
        *val = q->stat_bytes;
        break;
    case DXL_Q_STAT_BYTES_HI:
        *val = q->stat_bytes >> 32;
        break;
    case DXL_Q_STAT_ERRORS:
        *val = q->stat_errors;
        break;
    default:
        return false;
    }
    return true;
}

static uint64_t dxl_mmio_read(void *opaque, hwaddr addr, unsigned size)
{
    DextlabDmaState *s = opaque;
    uint32_t val = 0;
    DxlErrEntry *e = &s->errlog[s->err_head];

    if (addr >= DXL_REG_Q_BASE &&
        addr < DXL_REG_Q(DXL_DMA_NUM_QUEUES, 0)) {
        DxlQueue *q = &s->q[(addr - DXL_REG_Q_BASE) / DXL_REG_Q_STRIDE];

        if (!dxl_queue_read(s, q, (addr - DXL_REG_Q_BASE) % DXL_REG_Q_STRIDE,
                            &val)) {
            qemu_log_mask(LOG_GUEST_ERROR, "dextlab-dma: read of unknown "
                          "register 0x%" HWADDR_PRIx "\n", addr);
        }
        trace_dextlab_dma_mmio_read(addr, val);
        return val;
    }

    switch (addr) {
    case DXL_REG_ID:
        val = DXL_DMA_ID_MAGIC;
        break;
    case DXL_REG_VERSION:
        val = DXL_DMA_VERSION;
        break;
    case DXL_REG_CAP:
        val = DXL_DMA_NUM_QUEUES |
              (DXL_DMA_MSIX_VECTORS << DXL_CAP_NUM_VECTORS_SHIFT) |
              DXL_CAP_OP_COPY | DXL_CAP_OP_DEV | DXL_CAP_OP_FILL |
              DXL_CAP_OP_CRC32C | DXL_CAP_FENCE | DXL_CAP_COALESCE |
              DXL_CAP_ERRLOG | DXL_CAP_PACING;
        break;
    case DXL_REG_DEVMEM_SIZE:
        val = DXL_DMA_DEVMEM_SIZE;
        break;
    case DXL_REG_MAX_XFER:
        val = DXL_DMA_MAX_XFER;
        break;
    case DXL_REG_QUEUE_MAX:
        val = DXL_DMA_QUEUE_MAX_ENTRIES;
        break;
    case DXL_REG_LINK:
        val = s->link_gen ? s->link_gen |
              (s->link_width << DXL_LINK_WIDTH_SHIFT) : 0;
        break;
    case DXL_REG_SCRATCH:
        val = s->scratch;
        break;
    case DXL_REG_CTRL:
        val = s->ctrl;
        break;
    case DXL_REG_STATUS:
        val = dxl_status(s);
        break;
    case DXL_REG_INT_STATUS:
        val = s->int_status;
        break;
    case DXL_REG_INT_MASK:
        val = s->int_mask;
        break;
    case DXL_REG_INT_SET:
    case DXL_REG_ERR_POP:
        val = 0;
        break;
    case DXL_REG_ERR_COUNT:
        val = s->err_count;
        break;
    case DXL_REG_ERR_OVERFLOW:
        val = s->err_overflow;
        break;
    case DXL_REG_ERR_TOTAL:
        val = s->err_total;
        break;
    case DXL_REG_ERR_HEAD:
        val = s->err_count ? e->code | (e->queue << DXL_ERRH_QUEUE_SHIFT) |
                             ((uint32_t)e->index << DXL_ERRH_INDEX_SHIFT) : 0;
        break;
    case DXL_REG_ERR_ADDR_LO:
        val = s->err_count ? e->addr : 0;
        break;
    case DXL_REG_ERR_ADDR_HI:
        val = s->err_count ? e->addr >> 32 : 0;
        break;
    case DXL_REG_STAT_DESC_LO:
        val = s->stat_desc;
        break;
    case DXL_REG_STAT_DESC_HI:
        val = s->stat_desc >> 32;
        break;
    case DXL_REG_STAT_BYTES_LO:
        val = s->stat_bytes;
        break;
    case DXL_REG_STAT_BYTES_HI:
        val = s->stat_bytes >> 32;
        break;
    case DXL_REG_STAT_ERRORS_LO:
        val = s->stat_errors;
        break;
    case DXL_REG_STAT_ERRORS_HI:
        val = s->stat_errors >> 32;
        break;
    case DXL_REG_STAT_IRQS_LO:
        val = s->stat_irqs;
        break;
    case DXL_REG_STAT_IRQS_HI:
        val = s->stat_irqs >> 32;
        break;
    case DXL_REG_STAT_DOORBELLS_LO:
        val = s->stat_doorbells;
        break;
    case DXL_REG_STAT_DOORBELLS_HI:
        val = s->stat_doorbells >> 32;
        break;
    default:
        qemu_log_mask(LOG_GUEST_ERROR, "dextlab-dma: read of unknown "
                      "register 0x%" HWADDR_PRIx "\n", addr);
        break;
    }
    trace_dextlab_dma_mmio_read(addr, val);
    return val;
}

static void dxl_queue_write(DextlabDmaState *s, DxlQueue *q, hwaddr addr,
                            hwaddr reg, uint32_t val)
{
    switch (reg) {
    case DXL_Q_SQ_BASE_LO:
    case DXL_Q_SQ_BASE_HI:
    case DXL_Q_SQ_SIZE:
    case DXL_Q_CQ_BASE_LO:
    case DXL_Q_CQ_BASE_HI:
    case DXL_Q_CQ_SIZE:
        if (q->enabled) {
            dxl_reg_error(s, addr, val, "ring setup written while enabled");
            return;
        }
        if (reg == DXL_Q_SQ_BASE_LO) {
            q->sq_base = deposit64(q->sq_base, 0, 32, val);
        } else if (reg == DXL_Q_SQ_BASE_HI) {
            q->sq_base = deposit64(q->sq_base, 32, 32, val);
        } else if (reg == DXL_Q_SQ_SIZE) {
            q->sq_size = val;
        } else if (reg == DXL_Q_CQ_BASE_LO) {
            q->cq_base = deposit64(q->cq_base, 0, 32, val);
        } else if (reg == DXL_Q_CQ_BASE_HI) {
            q->cq_base = deposit64(q->cq_base, 32, 32, val);
        } else {
            q->cq_size = val;
        }
        break;
    case DXL_Q_SQ_TAIL:
        if (!q->enabled) {
            dxl_error(s, DXL_ERR_QUEUE_DISABLED, q->idx, 0, val);
            return;
        }
        if (val >= q->sq_size) {
            dxl_error(s, DXL_ERR_BAD_SQ_TAIL, q->idx, 0, val);
            return;
        }
        trace_dextlab_dma_doorbell(q->idx, val);
        s->stat_doorbells++;
        q->sq_tail = val;
        dxl_kick(s);
        break;
    case DXL_Q_CQ_HEAD:
        if (!q->enabled) {
            dxl_error(s, DXL_ERR_QUEUE_DISABLED, q->idx, 0, val);
            return;
        }
        if (val >= q->cq_size) {
            dxl_error(s, DXL_ERR_BAD_CQ_HEAD, q->idx, 0, val);
            return;
        }
        trace_dextlab_dma_cq_doorbell(q->idx, val);
        q->cq_head = val;
        dxl_kick(s);
        break;
    case DXL_Q_CTRL:
        if (val & DXL_QCTRL_RESET) {
            trace_dextlab_dma_queue_reset(q->idx);
            dxl_queue_reset(q);
            dxl_pace_rearm(s);
        } else if ((val & DXL_QCTRL_ENABLE) && !q->enabled) {
            dxl_queue_enable(q);
        } else if (!(val & DXL_QCTRL_ENABLE) && q->enabled) {
            dxl_queue_stop(q);
            dxl_pace_rearm(s);
        }
        break;
    case DXL_Q_COAL_COUNT:
        q->coal_count = val;
        break;
    case DXL_Q_COAL_USEC:
        q->coal_usec = val;
        break;
    default:
        dxl_reg_error(s, addr, val, "write to read-only or unknown register");
        break;
    }
}

static void dxl_mmio_write(void *opaque, hwaddr addr, uint64_t val64,
                           unsigned size)
{
    DextlabDmaState *s = opaque;
    uint32_t val = val64;
    uint32_t old;

    trace_dextlab_dma_mmio_write(addr, val);

    if (addr >= DXL_REG_Q_BASE &&
        addr < DXL_REG_Q(DXL_DMA_NUM_QUEUES, 0)) {
        DxlQueue *q = &s->q[(addr - DXL_REG_Q_BASE) / DXL_REG_Q_STRIDE];

        dxl_queue_write(s, q, addr, (addr - DXL_REG_Q_BASE) %
                        DXL_REG_Q_STRIDE, val);
        return;
    }

    switch (addr) {
    case DXL_REG_SCRATCH:
        s->scratch = val;
        break;
    case DXL_REG_CTRL:
        if (val & DXL_CTRL_RESET) {
            trace_dextlab_dma_reset("register");
            dxl_regs_reset(s);
            dxl_update_intx(s);
            break;
        }
        s->ctrl = val & DXL_CTRL_ENABLE;
        dxl_kick(s);
        break;
    case DXL_REG_INT_STATUS:
        s->int_status &= ~val;
        dxl_update_intx(s);
        break;
    case DXL_REG_INT_MASK:
        old = s->int_mask;
        s->int_mask = val & DXL_INT_ALL;
        if (dxl_intx_mode(s)) {
            dxl_update_intx(s);
        } else {
            /* Causes that were pending while masked are signalled now */
            uint32_t now = old & ~s->int_mask & s->int_status;
            unsigned bit;

            for (bit = 0; bit < 32; bit++) {
                if (now & BIT(bit)) {
                    dxl_signal(s, BIT(bit));
                }
            }
        }
        break;
    case DXL_REG_INT_SET:
        if (val & ~DXL_INT_ALL) {
            dxl_reg_error(s, addr, val, "INT_SET of an undefined cause");
        }
        if (val & DXL_INT_ALL) {
            dxl_raise(s, val & DXL_INT_ALL);
        }
        break;
    case DXL_REG_ERR_POP:
        if ((val & 1) && s->err_count) {
            s->err_head = (s->err_head + 1) % DXL_DMA_ERRLOG_DEPTH;
            s->err_count--;
        }
        break;
    default:
        dxl_reg_error(s, addr, val, "write to read-only or unknown register");
        break;
    }
}

static const MemoryRegionOps dxl_mmio_ops = {
    .read = dxl_mmio_read,
    .write = dxl_mmio_write,
    .endianness = DEVICE_LITTLE_ENDIAN,
    .valid = {
        .min_access_size = 4,
        .max_access_size = 8,
    },
    .impl = {
        .min_access_size = 4,
        .max_access_size = 4,
    },
};

/* ------------------------------------------------------------------------ */
/* PCI glue */

static void dxl_write_config(PCIDevice *pdev, uint32_t addr, uint32_t val,
                             int len)
{
    DextlabDmaState *s = DEXTLAB_DMA(pdev);

    pci_default_write_config(pdev, addr, val, len);
    if (pci_is_express(pdev)) {
        pcie_cap_flr_write_config(pdev, addr, val, len);
    }
    /* Interrupt mode, bus mastering or power state may have changed */
    dxl_update_intx(s);
    dxl_kick(s);
}

static void dxl_vm_state_change(void *opaque, bool running, RunState state)
{
    if (running) {
        dxl_pace_rearm(opaque);
        dxl_kick(opaque);
    }
}

static void dxl_reset(DeviceState *dev)
{
    DextlabDmaState *s = DEXTLAB_DMA(dev);

    trace_dextlab_dma_reset("device");
    dxl_regs_reset(s);
}

static int dxl_post_load(void *opaque, int version_id)
{
    DextlabDmaState *s = opaque;
    unsigned i;

    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        DxlQueue *q = &s->q[i];

        if ((q->enabled && (!dxl_ring_size_ok(q->sq_size) ||
                            !dxl_ring_size_ok(q->cq_size) ||
                            q->sq_head >= q->sq_size ||
                            q->sq_tail >= q->sq_size ||
                            q->cq_head >= q->cq_size ||
                            q->cq_tail >= q->cq_size)) ||
            q->done > q->len || q->len > DXL_DMA_MAX_XFER) {
            return -EINVAL;
        }
        /* A descriptor that will still move data must be a valid one */
        if (q->has_desc && !q->data_done) {
            uint64_t bad;

            if (dxl_validate(q, 0, &bad) != DXL_ERR_OK) {
                return -EINVAL;
            }
        }
    }
    if (s->err_head >= DXL_DMA_ERRLOG_DEPTH ||
        s->err_count > DXL_DMA_ERRLOG_DEPTH) {
        return -EINVAL;
    }
    dxl_pace_rearm(s);
    dxl_kick(s);
    return 0;
}

/*
 * With the timing model on, advertise its link in the PCI Express
 * capability too (QEMU's default endpoint link is x1 at 2.5 GT/s), so that
 * lspci and drivers see the link the completions are paced at.
 */
static void dxl_pcie_set_link(PCIDevice *pdev, uint8_t gen, uint8_t width)
{
    uint8_t *exp = pdev->config + pdev->exp.exp_cap;
    uint32_t lnk = (uint32_t)width << 4 | gen;

    pci_long_test_and_clear_mask(exp + PCI_EXP_LNKCAP,
                                 PCI_EXP_LNKCAP_MLW | PCI_EXP_LNKCAP_SLS);
    pci_long_test_and_set_mask(exp + PCI_EXP_LNKCAP, lnk);
    pci_word_test_and_clear_mask(exp + PCI_EXP_LNKSTA,
                                 PCI_EXP_LNKSTA_NLW | PCI_EXP_LNKSTA_CLS);
    pci_word_test_and_set_mask(exp + PCI_EXP_LNKSTA, lnk);
    /* Supported Link Speeds Vector: every generation up to this one */
    pci_long_test_and_clear_mask(exp + PCI_EXP_LNKCAP2,
                                 0xfe); /* SLS vector, bits 7:1 */
    pci_long_test_and_set_mask(exp + PCI_EXP_LNKCAP2,
                               ((1u << gen) - 1) << 1);
}

static void dxl_realize(PCIDevice *pdev, Error **errp)
{
    DextlabDmaState *s = DEXTLAB_DMA(pdev);
    Error *err = NULL;
    unsigned i;
    int ret;

    if (s->link_gen > 5) {
        error_setg(errp, "link-gen must be 0 (unpaced) to 5");
        return;
    }
    if (s->link_gen && (!is_power_of_2(s->link_width) ||
                        s->link_width > 16)) {
        error_setg(errp, "link-width must be 1, 2, 4, 8 or 16");
        return;
    }
    if (s->vendor_id == 0xffff) {
        error_setg(errp, "x-vendor-id 0xffff is not a valid PCI vendor ID");
        return;
    }
    if (!pci_bus_is_express(pci_get_bus(pdev))) {
        pdev->cap_present &= ~QEMU_PCI_CAP_EXPRESS;
    }

    pci_config_set_vendor_id(pdev->config, s->vendor_id);
    pci_config_set_device_id(pdev->config, s->device_id);
    pci_config_set_interrupt_pin(pdev->config, 1);

    memory_region_init_io(&s->mmio, OBJECT(s), &dxl_mmio_ops, s,
                          "dextlab-dma-regs", DXL_DMA_BAR0_SIZE);
    pci_register_bar(pdev, DXL_DMA_BAR_REGS, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->mmio);

    memory_region_init(&s->msix_bar, OBJECT(s), "dextlab-dma-msix", 4 * KiB);
    ret = msix_init(pdev, DXL_DMA_MSIX_VECTORS,
                    &s->msix_bar, DXL_DMA_BAR_MSIX, DXL_DMA_MSIX_TABLE_OFFSET,
                    &s->msix_bar, DXL_DMA_BAR_MSIX, DXL_DMA_MSIX_PBA_OFFSET,
                    DXL_DMA_CAP_MSIX_OFFSET, errp);
    if (ret) {
        return;
    }
    pci_register_bar(pdev, DXL_DMA_BAR_MSIX, PCI_BASE_ADDRESS_SPACE_MEMORY,
                     &s->msix_bar);
    for (i = 0; i < DXL_DMA_MSIX_VECTORS; i++) {
        msix_vector_use(pdev, i);
    }

    if (msi_init(pdev, DXL_DMA_CAP_MSI_OFFSET, 1, true, true, &err)) {
        /* No MSI-capable interrupt controller: MSI-X and INTx remain */
        warn_report_err(err);
        err = NULL;
    }

    ret = pci_add_capability(pdev, PCI_CAP_ID_PM, DXL_DMA_CAP_PM_OFFSET,
                             PCI_PM_SIZEOF, errp);
    if (ret < 0) {
        goto fail_msix;
    }
    pci_set_word(pdev->config + DXL_DMA_CAP_PM_OFFSET + PCI_PM_PMC,
                 PCI_PM_CAP_VER_1_2);
    pci_set_word(pdev->wmask + DXL_DMA_CAP_PM_OFFSET + PCI_PM_CTRL,
                 PCI_PM_CTRL_STATE_MASK);
    /* D3hot -> D0 resets nothing: internal state is kept (No_Soft_Reset) */
    pci_set_word(pdev->config + DXL_DMA_CAP_PM_OFFSET + PCI_PM_CTRL,
                 PCI_PM_CTRL_NO_SOFT_RESET);

    if (pci_is_express(pdev)) {
        ret = pcie_endpoint_cap_init(pdev, DXL_DMA_CAP_EXP_OFFSET);
        if (ret < 0) {
            error_setg(errp, "failed to add the PCI Express capability");
            goto fail_msix;
        }
        pcie_cap_flr_init(pdev);
        if (s->link_gen) {
            dxl_pcie_set_link(pdev, s->link_gen, s->link_width);
        }
    }

    memory_region_init_ram(&s->devmem, OBJECT(s), "dextlab-dma-devmem",
                           DXL_DMA_DEVMEM_SIZE, &err);
    if (err) {
        error_propagate(errp, err);
        goto fail_msix;
    }
    s->devmem_ptr = memory_region_get_ram_ptr(&s->devmem);
    pci_register_bar(pdev, DXL_DMA_BAR_DEVMEM,
                     PCI_BASE_ADDRESS_SPACE_MEMORY |
                     PCI_BASE_ADDRESS_MEM_PREFETCH, &s->devmem);

    s->bounce = g_malloc(DXL_BOUNCE_SIZE);
    s->fill_tmpl = g_malloc(DXL_FILL_TMPL + 8);
    s->bh = qemu_bh_new_guarded(dxl_bh, s,
                                &DEVICE(pdev)->mem_reentrancy_guard);
    s->pace_timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, dxl_pace_timer_cb, s);
    s->vmstate_change = qemu_add_vm_change_state_handler(dxl_vm_state_change,
                                                         s);
    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        s->q[i].s = s;
        s->q[i].idx = i;
        s->q[i].coal_timer = timer_new_ns(QEMU_CLOCK_VIRTUAL,
                                          dxl_coal_timer_cb, &s->q[i]);
    }
    dxl_regs_reset(s);
    return;

fail_msix:
    msi_uninit(pdev);
    msix_uninit(pdev, &s->msix_bar, &s->msix_bar);
}

static void dxl_exit(PCIDevice *pdev)
{
    DextlabDmaState *s = DEXTLAB_DMA(pdev);
    unsigned i;

    qemu_del_vm_change_state_handler(s->vmstate_change);
    qemu_bh_delete(s->bh);
    timer_free(s->pace_timer);
    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        timer_free(s->q[i].coal_timer);
    }
    g_free(s->bounce);
    g_free(s->fill_tmpl);
    msi_uninit(pdev);
    msix_uninit(pdev, &s->msix_bar, &s->msix_bar);
}

static void dxl_instance_init(Object *obj)
{
    DextlabDmaState *s = DEXTLAB_DMA(obj);
    char *name;
    unsigned i;

    /*
     * A hybrid device: PCI Express when plugged into an express bus,
     * conventional PCI otherwise (realize drops the flag there).
     */
    PCI_DEVICE(obj)->cap_present |= QEMU_PCI_CAP_EXPRESS;

    object_property_add_uint64_ptr(obj, "stat-desc", &s->stat_desc,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "stat-bytes", &s->stat_bytes,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "stat-errors", &s->stat_errors,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "stat-irqs", &s->stat_irqs,
                                   OBJ_PROP_FLAG_READ);
    object_property_add_uint64_ptr(obj, "stat-doorbells", &s->stat_doorbells,
                                   OBJ_PROP_FLAG_READ);
    for (i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        name = g_strdup_printf("stat-q%u-desc", i);
        object_property_add_uint64_ptr(obj, name, &s->q[i].stat_desc,
                                       OBJ_PROP_FLAG_READ);
        g_free(name);
        name = g_strdup_printf("stat-q%u-bytes", i);
        object_property_add_uint64_ptr(obj, name, &s->q[i].stat_bytes,
                                       OBJ_PROP_FLAG_READ);
        g_free(name);
        name = g_strdup_printf("stat-q%u-errors", i);
        object_property_add_uint32_ptr(obj, name, &s->q[i].stat_errors,
                                       OBJ_PROP_FLAG_READ);
        g_free(name);
    }
}

static const VMStateDescription vmstate_dxl_errent = {
    .name = "dextlab-dma/errlog",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (VMStateField[]) {
        VMSTATE_UINT8(code, DxlErrEntry),
        VMSTATE_UINT8(queue, DxlErrEntry),
        VMSTATE_UINT16(index, DxlErrEntry),
        VMSTATE_UINT64(addr, DxlErrEntry),
        VMSTATE_END_OF_LIST()
    }
};

static const VMStateDescription vmstate_dxl_queue = {
    .name = "dextlab-dma/queue",
    .version_id = 1,
    .minimum_version_id = 1,
    .fields = (VMStateField[]) {
        VMSTATE_UINT64(sq_base, DxlQueue),
        VMSTATE_UINT64(cq_base, DxlQueue),
        VMSTATE_UINT32(sq_size, DxlQueue),
        VMSTATE_UINT32(cq_size, DxlQueue),
        VMSTATE_UINT32(sq_tail, DxlQueue),
        VMSTATE_UINT32(sq_head, DxlQueue),
        VMSTATE_UINT32(cq_head, DxlQueue),
        VMSTATE_UINT32(cq_tail, DxlQueue),
        VMSTATE_UINT32(coal_count, DxlQueue),
        VMSTATE_UINT32(coal_usec, DxlQueue),
        VMSTATE_BOOL(enabled, DxlQueue),
        VMSTATE_BOOL(halted, DxlQueue),
        VMSTATE_UINT8(last_err, DxlQueue),
        VMSTATE_BOOL(cq_phase, DxlQueue),
        VMSTATE_UINT64(stat_desc, DxlQueue),
        VMSTATE_UINT64(stat_bytes, DxlQueue),
        VMSTATE_UINT32(stat_errors, DxlQueue),
        VMSTATE_UINT32(coal_pending, DxlQueue),
        VMSTATE_TIMER_PTR(coal_timer, DxlQueue),
        VMSTATE_BOOL(has_desc, DxlQueue),
        VMSTATE_BOOL(started, DxlQueue),
        VMSTATE_BOOL(data_done, DxlQueue),
        VMSTATE_UINT16(desc_slot, DxlQueue),
        VMSTATE_UINT8(op, DxlQueue),
        VMSTATE_UINT8(flags, DxlQueue),
        VMSTATE_UINT32(len, DxlQueue),
        VMSTATE_UINT64(src, DxlQueue),
        VMSTATE_UINT64(dst, DxlQueue),
        VMSTATE_UINT64(cookie, DxlQueue),
        VMSTATE_UINT32(done, DxlQueue),
        VMSTATE_UINT32(crc, DxlQueue),
        VMSTATE_UINT8(cpl_status, DxlQueue),
        VMSTATE_INT64(pace_deadline, DxlQueue),
        VMSTATE_END_OF_LIST()
    }
};

static const VMStateDescription vmstate_dxl = {
    .name = TYPE_DEXTLAB_DMA,
    .version_id = 1,
    .minimum_version_id = 1,
    .post_load = dxl_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_PCI_DEVICE(parent_obj, DextlabDmaState),
        VMSTATE_MSIX(parent_obj, DextlabDmaState),
        VMSTATE_UINT32(ctrl, DextlabDmaState),
        VMSTATE_UINT32(int_status, DextlabDmaState),
        VMSTATE_UINT32(int_mask, DextlabDmaState),
        VMSTATE_UINT32(scratch, DextlabDmaState),
        VMSTATE_STRUCT_ARRAY(errlog, DextlabDmaState, DXL_DMA_ERRLOG_DEPTH,
                             1, vmstate_dxl_errent, DxlErrEntry),
        VMSTATE_UINT32(err_head, DextlabDmaState),
        VMSTATE_UINT32(err_count, DextlabDmaState),
        VMSTATE_UINT32(err_overflow, DextlabDmaState),
        VMSTATE_UINT32(err_total, DextlabDmaState),
        VMSTATE_UINT64(stat_desc, DextlabDmaState),
        VMSTATE_UINT64(stat_bytes, DextlabDmaState),
        VMSTATE_UINT64(stat_errors, DextlabDmaState),
        VMSTATE_UINT64(stat_irqs, DextlabDmaState),
        VMSTATE_UINT64(stat_doorbells, DextlabDmaState),
        VMSTATE_INT64(link_free, DextlabDmaState),
        VMSTATE_STRUCT_ARRAY(q, DextlabDmaState, DXL_DMA_NUM_QUEUES, 1,
                             vmstate_dxl_queue, DxlQueue),
        VMSTATE_END_OF_LIST()
    }
};

static Property dxl_properties[] = {
    DEFINE_PROP_UINT8("link-gen", DextlabDmaState, link_gen, 0),
    DEFINE_PROP_UINT8("link-width", DextlabDmaState, link_width, 4),
    DEFINE_PROP_UINT16("x-vendor-id", DextlabDmaState, vendor_id,
                       DXL_PCI_VENDOR_ID),
    DEFINE_PROP_UINT16("x-device-id", DextlabDmaState, device_id,
                       DXL_DMA_PCI_DEVICE_ID),
    DEFINE_PROP_END_OF_LIST(),
};

static void dxl_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    PCIDeviceClass *k = PCI_DEVICE_CLASS(klass);

    k->realize = dxl_realize;
    k->exit = dxl_exit;
    k->config_write = dxl_write_config;
    k->vendor_id = DXL_PCI_VENDOR_ID;
    k->device_id = DXL_DMA_PCI_DEVICE_ID;
    k->revision = DXL_DMA_PCI_REVISION;
    k->class_id = DXL_DMA_PCI_CLASS >> 8;
    k->subsystem_vendor_id = DXL_DMA_PCI_SUBVENDOR_ID;
    k->subsystem_id = DXL_DMA_PCI_SUBSYSTEM_ID;
    dc->desc = "dextlab DMA engine (descriptor rings, MSI-X)";
    dc->reset = dxl_reset;
    dc->vmsd = &vmstate_dxl;
    device_class_set_props(dc, dxl_properties);
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
}

static const TypeInfo dxl_info = {
    .name = TYPE_DEXTLAB_DMA,
    .parent = TYPE_PCI_DEVICE,
    .instance_size = sizeof(DextlabDmaState),
    .instance_init = dxl_instance_init,
    .class_init = dxl_class_init,
    .interfaces = (InterfaceInfo[]) {
        { INTERFACE_PCIE_DEVICE },
        { INTERFACE_CONVENTIONAL_PCI_DEVICE },
        { },
    },
};

static void dxl_register_types(void)
{
    type_register_static(&dxl_info);
}

type_init(dxl_register_types)
