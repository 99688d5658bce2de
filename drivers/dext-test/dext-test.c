/*
 * dext-test: the runtime's end-to-end test driver for the dextlab-dma
 * device.  Start runs a self-test touching every libdext API (config and
 * BAR access of every width, capabilities, enables, reset, MSI-X interrupt
 * sources, timers, actions, buffer descriptors, DMA commands, a DMA copy
 * through the device, the runtime's protections) and records each check;
 * its user client lets the e2e test read the results, run more DMA and
 * interrupt round trips, exercise every argument kind, async completions
 * and shared memory, and run the interrupt/MMIO benchmark.
 */
#include <dext/dext.h>
#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>

#include "hw/dextlab/dextlab-dma-regs.h"

enum {
    CHK_CONFIG, CHK_CAPS, CHK_ENABLE, CHK_MMIO32, CHK_MMIO_WIDTHS, CHK_RESET,
    CHK_IRQ_ADMIN, CHK_IRQ_QUEUE, CHK_TIMER, CHK_ACTION, CHK_BUFFER, CHK_DMA_CMD,
    CHK_DMA_COPY, CHK_PROTECT, CHK_OPEN_EXCL, CHK_COUNT
};
static const char *const chk_names[CHK_COUNT] = {
    "config", "capabilities", "enable", "mmio32", "mmio-widths", "reset", "irq-admin",
    "irq-queue", "timer", "action", "buffer", "dma-command", "dma-copy", "protection",
    "open-exclusive",
};

#define RING 32
#define DATA_MAX (256 * 1024)

typedef struct {
    DextService *svc;
    DextPciDevice *pci;
    DextQueue *irq_q;
    DextInterruptSource *irq[2];    /* admin (0), queue 0 (1) */
    DextTimerSource *timer;
    DextAction *action;
    DextBuffer *sq, *cq, *src, *dst;
    DextDmaCommand *cmd_sq, *cmd_cq, *cmd_src, *cmd_dst;
    uint64_t sq_iova, cq_iova, src_iova, dst_iova;
    uint32_t sq_tail, cq_head;
    uint8_t phase;
    DextBuffer *shm_ro, *shm_rw;

    GMutex lock;
    GCond cond;
    uint64_t irq_count[2];
    uint64_t irq_time[2];
    uint64_t irq_seen_at[2];
    uint64_t timer_ticks;
    int action_value;
    uint32_t pass;
    uint64_t dma_ok;
    GString *report;

    DextUserClient *async_uc;
    uint64_t async_ref;
    uint64_t async_t0;
} Drv;

static void check(Drv *d, int id, bool ok, const char *fmt, ...) G_GNUC_PRINTF(4, 5);
static void check(Drv *d, int id, bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_string_append_printf(d->report, "%s %s: %s\n", ok ? "PASS" : "FAIL", chk_names[id], s);
    if (ok) {
        d->pass |= 1u << id;
    } else {
        d->pass &= ~(1u << id);
        DEXT_ERROR("check %s failed: %s", chk_names[id], s);
    }
    g_free(s);
}

static void on_irq(Drv *d, int which, uint64_t count, uint64_t time, uint64_t now)
{
    g_mutex_lock(&d->lock);
    d->irq_count[which] += count;
    d->irq_time[which] = time;
    d->irq_seen_at[which] = now;
    g_cond_broadcast(&d->cond);
    DextUserClient *uc = d->async_uc;
    uint64_t ref = d->async_ref, t0 = d->async_t0;
    d->async_uc = NULL;
    g_mutex_unlock(&d->lock);
    if (uc && ref) {
        uint64_t data[4] = { count, time, t0, (uint64_t)which };
        dext_user_client_complete_async(uc, ref, 0, data, 4);
    }
}

static void on_irq_admin(void *ctx, uint64_t count, uint64_t time)
{
    Drv *d = ctx;
    uint64_t now = dext_time_ns(); /* handler entry, for latency figures */
    /* Acknowledge the cause (W1C) so the next INT_SET raises again. */
    dext_pci_memory_write32(d->pci, DXL_DMA_BAR_REGS, DXL_REG_INT_STATUS, DXL_INT_ERROR);
    on_irq(d, 0, count, time, now);
}

static void on_irq_q0(void *ctx, uint64_t count, uint64_t time)
{
    Drv *d = ctx;
    uint64_t now = dext_time_ns();
    dext_pci_memory_write32(d->pci, DXL_DMA_BAR_REGS, DXL_REG_INT_STATUS, DXL_INT_QUEUE(0));
    on_irq(d, 1, count, time, now);
}

/* Wait until irq_count[which] > before (bounded). */
static bool wait_irq(Drv *d, int which, uint64_t before, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    bool ok;
    g_mutex_lock(&d->lock);
    while (d->irq_count[which] <= before && g_cond_wait_until(&d->cond, &d->lock, end)) {
    }
    ok = d->irq_count[which] > before;
    g_mutex_unlock(&d->lock);
    return ok;
}

static uint64_t irq_count(Drv *d, int which)
{
    g_mutex_lock(&d->lock);
    uint64_t v = d->irq_count[which];
    g_mutex_unlock(&d->lock);
    return v;
}

static void on_timer(void *ctx, uint64_t count, uint64_t time)
{
    Drv *d = ctx;
    g_mutex_lock(&d->lock);
    d->timer_ticks += count;
    g_cond_broadcast(&d->cond);
    g_mutex_unlock(&d->lock);
}

static void on_action(DextAction *a, void *ctx, const void *args, size_t len)
{
    Drv *d = ctx;
    g_mutex_lock(&d->lock);
    d->action_value = len == sizeof(int) ? *(const int *)args : -1;
    g_cond_broadcast(&d->cond);
    g_mutex_unlock(&d->lock);
}

static int prepare1(DextDmaCommand *c, DextBuffer *b, uint64_t *iova)
{
    DextDmaSegment seg;
    uint32_t n = 1;
    int rc = dext_dma_command_prepare(c, b, 0, dext_buffer_length(b), &seg, &n);
    if (rc == 0) {
        *iova = seg.address;
    }
    return rc;
}

static int setup_queue(Drv *d)
{
    DextPciDevice *p = d->pci;
    int rc = 0;
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_SQ_BASE_LO), (uint32_t)d->sq_iova);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_SQ_BASE_HI), d->sq_iova >> 32);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_SQ_SIZE), RING);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CQ_BASE_LO), (uint32_t)d->cq_iova);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CQ_BASE_HI), d->cq_iova >> 32);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CQ_SIZE), RING);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_CTRL, DXL_CTRL_ENABLE);
    d->sq_tail = d->cq_head = 0;
    d->phase = 1;
    memset(dext_buffer_map(d->cq), 0, dext_buffer_capacity(d->cq));
    return rc ? -EIO : dext_pci_flush(p);
}

/* One COPY of len bytes src -> dst through queue 0, completion by MSI-X. */
static int dma_copy(Drv *d, uint32_t len, uint32_t seed, char *err, size_t errlen)
{
    uint8_t *src = dext_buffer_map(d->src), *dst = dext_buffer_map(d->dst);
    if (len == 0 || len > DATA_MAX) {
        return -EINVAL;
    }
    for (uint32_t i = 0; i < len; i++) {
        src[i] = (uint8_t)(seed + i * 7 + (i >> 8));
    }
    memset(dst, 0, len);
    struct dxl_dma_desc *sq = dext_buffer_map(d->sq);
    struct dxl_dma_desc *desc = &sq[d->sq_tail % RING];
    memset(desc, 0, sizeof(*desc));
    desc->opcode = DXL_OP_COPY;
    desc->flags = DXL_DESC_F_IRQ;
    desc->length = len;
    desc->src = d->src_iova;
    desc->dst = d->dst_iova;
    desc->cookie = 0xc0de0000u + d->sq_tail;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    d->sq_tail = (d->sq_tail + 1) % RING;
    uint64_t before = irq_count(d, 1);
    dext_pci_memory_write32(d->pci, 0, DXL_REG_Q(0, DXL_Q_SQ_TAIL), d->sq_tail);
    if (!wait_irq(d, 1, before, 5000)) {
        snprintf(err, errlen, "no queue interrupt within 5 s");
        return -ETIMEDOUT;
    }
    struct dxl_dma_cpl *cq = dext_buffer_map(d->cq);
    struct dxl_dma_cpl *c = &cq[d->cq_head];
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if ((c->flags & DXL_CPL_F_PHASE) != d->phase) {
        snprintf(err, errlen, "interrupt but no completion (phase %u)", c->flags & 1);
        return -EIO;
    }
    int rc = 0;
    if (c->status != DXL_ERR_OK || c->result != len || c->cookie != desc->cookie) {
        snprintf(err, errlen, "completion status 0x%x result %u cookie 0x%llx", c->status,
                 c->result, (unsigned long long)c->cookie);
        rc = -EIO;
    } else if (memcmp(src, dst, len)) {
        snprintf(err, errlen, "destination differs from source");
        rc = -EIO;
    }
    d->cq_head = (d->cq_head + 1) % RING;
    if (d->cq_head == 0) {
        d->phase ^= 1;
    }
    dext_pci_memory_write32(d->pci, 0, DXL_REG_Q(0, DXL_Q_CQ_HEAD), d->cq_head);
    if (rc == 0) {
        d->dma_ok++;
    }
    return rc;
}

static void selftest(Drv *d)
{
    DextPciDevice *p = d->pci;
    int rc;
    char err[160] = "";

    /* config space, all widths */
    uint16_t vid = 0, did = 0;
    uint8_t rev = 0;
    uint32_t id32 = 0;
    rc = dext_pci_config_read16(p, 0x00, &vid) | dext_pci_config_read16(p, 0x02, &did) |
         dext_pci_config_read8(p, 0x08, &rev) | dext_pci_config_read32(p, 0x00, &id32);
    uint8_t lat_old = 0, lat = 0;
    dext_pci_config_read8(p, 0x0d, &lat_old);
    int wrc = dext_pci_config_write8(p, 0x0d, 0x40);
    dext_pci_config_read8(p, 0x0d, &lat);
    dext_pci_config_write8(p, 0x0d, lat_old);
    check(d, CHK_CONFIG, rc == 0 && vid == DXL_PCI_VENDOR_ID && did == DXL_DMA_PCI_DEVICE_ID &&
          id32 == ((uint32_t)did << 16 | vid) && rev == DXL_DMA_PCI_REVISION && wrc == 0,
          "vendor %04x device %04x rev %u id32 %08x latency-timer write rc %d (read back 0x%x)",
          vid, did, rev, id32, wrc, lat);

    uint16_t msix = 0, pm = 0, dummy;
    int r1 = dext_pci_find_capability(p, 0x11, false, &msix);
    int r2 = dext_pci_find_capability(p, 0x01, false, &pm);
    int r3 = dext_pci_find_capability(p, 0x55, false, &dummy);
    check(d, CHK_CAPS, r1 == 0 && msix == DXL_DMA_CAP_MSIX_OFFSET && r2 == 0 &&
          pm == DXL_DMA_CAP_PM_OFFSET && r3 == -ENOENT && dext_pci_msix_count(p) == DXL_DMA_MSIX_VECTORS,
          "MSI-X at 0x%x (rc %d), PM at 0x%x (rc %d), absent cap rc %d, %u vectors", msix, r1,
          pm, r2, r3, dext_pci_msix_count(p));

    uint32_t before = 0, after = 0, magic = 0;
    dext_pci_memory_read32(p, 0, DXL_REG_ID, &before); /* decode off: all-ones */
    rc = dext_pci_set_memory_enable(p, true) | dext_pci_set_bus_master_enable(p, true);
    uint16_t cmd = 0;
    dext_pci_config_read16(p, 0x04, &cmd);
    dext_pci_memory_read32(p, 0, DXL_REG_ID, &magic);
    check(d, CHK_ENABLE, rc == 0 && (cmd & 0x6) == 0x6 && before != DXL_DMA_ID_MAGIC &&
          magic == DXL_DMA_ID_MAGIC, "command 0x%x, ID before enable 0x%08x after 0x%08x", cmd,
          before, magic);

    dext_pci_memory_write32(p, 0, DXL_REG_SCRATCH, 0x5a5aa5a5);
    dext_pci_memory_read32(p, 0, DXL_REG_SCRATCH, &after);
    uint32_t ver = 0;
    dext_pci_memory_read32(p, 0, DXL_REG_VERSION, &ver);
    check(d, CHK_MMIO32, after == 0x5a5aa5a5 && ver == DXL_DMA_VERSION,
          "scratch 0x%08x, version 0x%x", after, ver);

    /* BAR2 is plain RAM: every width */
    uint8_t b8 = 0;
    uint16_t b16 = 0;
    uint32_t b32 = 0;
    uint64_t b64 = 0;
    dext_pci_memory_write8(p, DXL_DMA_BAR_DEVMEM, 0x11, 0xab);
    dext_pci_memory_write16(p, DXL_DMA_BAR_DEVMEM, 0x22, 0xbeef);
    dext_pci_memory_write32(p, DXL_DMA_BAR_DEVMEM, 0x44, 0xdeadbeef);
    dext_pci_memory_write64(p, DXL_DMA_BAR_DEVMEM, 0x88, 0x0123456789abcdefull);
    rc = dext_pci_memory_read8(p, DXL_DMA_BAR_DEVMEM, 0x11, &b8) |
         dext_pci_memory_read16(p, DXL_DMA_BAR_DEVMEM, 0x22, &b16) |
         dext_pci_memory_read32(p, DXL_DMA_BAR_DEVMEM, 0x44, &b32) |
         dext_pci_memory_read64(p, DXL_DMA_BAR_DEVMEM, 0x88, &b64);
    int oob = dext_pci_memory_read32(p, DXL_DMA_BAR_DEVMEM, DXL_DMA_DEVMEM_SIZE, &b32);
    check(d, CHK_MMIO_WIDTHS, rc == 0 && b8 == 0xab && b16 == 0xbeef &&
          b64 == 0x0123456789abcdefull && oob == -ERANGE,
          "8:0x%x 16:0x%x 64:0x%llx out-of-BAR read rc %d", b8, b16, (unsigned long long)b64, oob);

    /* Reset: enables drop, the driver re-enables (as after a relaunch). */
    rc = dext_pci_reset(p);
    dext_pci_config_read16(p, 0x04, &cmd);
    uint16_t cmd2 = 0;
    int rc2 = dext_pci_set_memory_enable(p, true) | dext_pci_set_bus_master_enable(p, true);
    dext_pci_config_read16(p, 0x04, &cmd2);
    dext_pci_memory_read32(p, 0, DXL_REG_SCRATCH, &after);
    check(d, CHK_RESET, rc == 0 && !(cmd & 0x6) && rc2 == 0 && (cmd2 & 0x6) == 0x6 && after == 0,
          "reset rc %d, command after reset 0x%x, re-enabled 0x%x, scratch 0x%x", rc, cmd, cmd2,
          after);

    /* Interrupt sources on their own queue, raised via INT_SET. */
    rc = dext_interrupt_source_create(p, DXL_DMA_VEC_ADMIN, d->irq_q, on_irq_admin, d, &d->irq[0]);
    rc2 = dext_interrupt_source_create(p, DXL_DMA_VEC_QUEUE(0), d->irq_q, on_irq_q0, d, &d->irq[1]);
    bool ok0 = false, ok1 = false;
    if (rc == 0) {
        uint64_t c0 = irq_count(d, 0);
        dext_pci_memory_write32(p, 0, DXL_REG_INT_SET, DXL_INT_ERROR);
        ok0 = wait_irq(d, 0, c0, 5000);
        uint64_t c1 = irq_count(d, 0);
        dext_pci_memory_write32(p, 0, DXL_REG_INT_SET, DXL_INT_ERROR);
        ok0 = ok0 && wait_irq(d, 0, c1, 5000);
    }
    check(d, CHK_IRQ_ADMIN, rc == 0 && ok0, "bind rc %d, two admin interrupts %s", rc,
          ok0 ? "delivered" : "missing");
    if (rc2 == 0) {
        uint64_t c = irq_count(d, 1);
        dext_pci_memory_write32(p, 0, DXL_REG_INT_SET, DXL_INT_QUEUE(0));
        ok1 = wait_irq(d, 1, c, 5000);
    }
    check(d, CHK_IRQ_QUEUE, rc2 == 0 && ok1 && irq_count(d, 0) == 2,
          "bind rc %d, queue interrupt %s, admin count %llu", rc2, ok1 ? "delivered" : "missing",
          (unsigned long long)irq_count(d, 0));

    /* Timer: 3 ticks at 5 ms */
    rc = dext_timer_source_create(d->irq_q, on_timer, d, &d->timer);
    if (rc == 0) {
        dext_timer_source_arm(d->timer, 5000000, 5000000);
        gint64 end = g_get_monotonic_time() + 2000000;
        g_mutex_lock(&d->lock);
        while (d->timer_ticks < 3 && g_cond_wait_until(&d->cond, &d->lock, end)) {
        }
        g_mutex_unlock(&d->lock);
        dext_timer_source_arm(d->timer, 0, 0);
    }
    check(d, CHK_TIMER, rc == 0 && d->timer_ticks >= 3, "rc %d, %llu ticks", rc,
          (unsigned long long)d->timer_ticks);

    rc = dext_action_create(d->irq_q, on_action, d, &d->action);
    int v = 4242;
    if (rc == 0) {
        dext_action_invoke(d->action, &v, sizeof(v));
        gint64 end = g_get_monotonic_time() + 2000000;
        g_mutex_lock(&d->lock);
        while (d->action_value != v && g_cond_wait_until(&d->cond, &d->lock, end)) {
        }
        g_mutex_unlock(&d->lock);
    }
    check(d, CHK_ACTION, rc == 0 && d->action_value == v, "rc %d value %d", rc, d->action_value);

    /* Buffers */
    rc = dext_buffer_create(DEXT_DMA_OUT, RING * sizeof(struct dxl_dma_desc), 4096, &d->sq) |
         dext_buffer_create(DEXT_DMA_IN, RING * sizeof(struct dxl_dma_cpl), 4096, &d->cq) |
         dext_buffer_create(DEXT_DMA_OUT, DATA_MAX, 65536, &d->src) |
         dext_buffer_create(DEXT_DMA_IN, DATA_MAX, 0, &d->dst);
    uint64_t addr = 0, len = 0;
    int lrc = -1, arc = -1, lrc2 = -1;
    if (rc == 0) {
        lrc = dext_buffer_set_length(d->src, DATA_MAX + 1);
        lrc2 = dext_buffer_set_length(d->src, 4096);
        arc = dext_buffer_get_address_range(d->src, &addr, &len);
        dext_buffer_set_length(d->src, DATA_MAX);
    }
    check(d, CHK_BUFFER, rc == 0 && lrc == -ERANGE && lrc2 == 0 && arc == 0 &&
          addr == (uint64_t)(uintptr_t)dext_buffer_map(d->src) && len == 4096 &&
          dext_buffer_capacity(d->src) == DATA_MAX && dext_buffer_direction(d->cq) == DEXT_DMA_IN,
          "create rc %d, set_length over capacity rc %d, range %s", rc, lrc,
          arc == 0 ? "ok" : "failed");
    if (rc) {
        return;
    }

    /* DMA commands */
    rc = dext_dma_command_create(p, 64, 0, &d->cmd_sq) | dext_dma_command_create(p, 64, 0, &d->cmd_cq) |
         dext_dma_command_create(p, 64, 0, &d->cmd_src) | dext_dma_command_create(p, 64, 0, &d->cmd_dst);
    int prc = prepare1(d->cmd_sq, d->sq, &d->sq_iova) | prepare1(d->cmd_cq, d->cq, &d->cq_iova) |
              prepare1(d->cmd_src, d->src, &d->src_iova) | prepare1(d->cmd_dst, d->dst, &d->dst_iova);
    DextDmaSegment segs[8];
    uint32_t n = 1;
    int busy = dext_dma_command_prepare(d->cmd_src, d->src, 0, 16, segs, &n);
    DextDmaCommand *small, *split;
    dext_dma_command_create(p, 12, 0, &small);
    n = 1;
    int fault = dext_dma_command_prepare(small, d->src, 0, 16, segs, &n);
    n = 1;
    int range = dext_dma_command_prepare(small, d->src, DATA_MAX - 8, 16, segs, &n);
    dext_dma_command_release(small);
    dext_dma_command_create(p, 64, 65536, &split);
    n = 8;
    int src_rc = dext_dma_command_prepare(split, d->src, 0, DATA_MAX, segs, &n);
    bool split_ok = src_rc == 0 && n == 4 && segs[0].address == d->src_iova &&
                    segs[3].address == d->src_iova + 3 * 65536 && segs[3].length == 65536;
    dext_dma_command_complete(split);
    n = 2;
    int nospc = dext_dma_command_prepare(split, d->src, 0, DATA_MAX, segs, &n);
    dext_dma_command_release(split);
    check(d, CHK_DMA_CMD, rc == 0 && prc == 0 && busy == -EBUSY && fault == -EFAULT &&
          range == -ERANGE && split_ok && nospc == -ENOSPC && (d->src_iova & 65535) == 0,
          "create %d prepare %d busy %d fault %d range %d split %s nospc %d src 0x%llx", rc, prc,
          busy, fault, range, split_ok ? "ok" : "bad", nospc, (unsigned long long)d->src_iova);

    rc = setup_queue(d);
    if (rc == 0) {
        rc = dma_copy(d, 64 * 1024, 0x42, err, sizeof(err));
    }
    check(d, CHK_DMA_COPY, rc == 0, "64 KiB copy through queue 0: rc %d %s", rc, err);

    /* The runtime owns BARs and the MSI-X table. */
    int bar = dext_pci_config_write32(p, 0x10, 0);
    int msixw = dext_pci_config_write16(p, msix + 2, 0);
    /* A posted write to the MSI-X table is dropped by dextd; the vector
     * must still work afterwards. */
    dext_pci_memory_write32(p, DXL_DMA_BAR_MSIX, 0, 0xfee00000);
    dext_pci_memory_write32(p, DXL_DMA_BAR_MSIX, 8, 0x12345678);
    uint64_t c = irq_count(d, 0);
    dext_pci_memory_write32(p, 0, DXL_REG_INT_SET, DXL_INT_ERROR);
    bool still = wait_irq(d, 0, c, 5000);
    check(d, CHK_PROTECT, bar == -EPERM && msixw == -EPERM && still,
          "BAR0 write rc %d, MSI-X control write rc %d, vector after table write %s", bar, msixw,
          still ? "works" : "broken");

    int again = dext_pci_open(p);
    check(d, CHK_OPEN_EXCL, again == -EBUSY, "second open rc %d", again);
}

static int drv_start(DextService *svc)
{
    Drv *d = g_new0(Drv, 1);
    int rc;
    d->svc = svc;
    d->pci = dext_service_pci(svc);
    d->report = g_string_new(NULL);
    g_mutex_init(&d->lock);
    g_cond_init(&d->cond);
    if (!d->pci) {
        rc = -ENODEV;
        goto fail;
    }
    if ((rc = dext_pci_open(d->pci)) < 0) {
        goto fail;
    }
    if ((rc = dext_queue_create("dext-test.irq", &d->irq_q)) < 0) {
        goto fail_close;
    }
    dext_service_set_priv(svc, d);
    selftest(d);
    rc = dext_buffer_create_shared(4096, &d->shm_ro) | dext_buffer_create_shared(8192, &d->shm_rw);
    if (rc == 0) {
        g_strlcpy(dext_buffer_map(d->shm_ro), d->report->str, 4096);
    }
    DEXT_INFO("self-test on %s: %u/%u checks passed", dext_pci_address(d->pci),
              __builtin_popcount(d->pass), CHK_COUNT);
    return 0;

fail_close:
    dext_pci_close(d->pci);
fail:
    g_string_free(d->report, TRUE);
    g_free(d);
    return rc;
}

static void drv_stop(DextService *svc)
{
    Drv *d = dext_service_get_priv(svc);
    /* Quiesce the device first, then tear down what it could touch. */
    dext_pci_memory_write32(d->pci, 0, DXL_REG_CTRL, DXL_CTRL_RESET);
    dext_pci_set_bus_master_enable(d->pci, false);
    dext_pci_flush(d->pci);
    for (int i = 0; i < 2; i++) {
        dext_interrupt_source_destroy(d->irq[i]);
    }
    dext_timer_source_destroy(d->timer);
    DextDmaCommand *cmds[] = { d->cmd_sq, d->cmd_cq, d->cmd_src, d->cmd_dst };
    for (int i = 0; i < 4; i++) {
        if (cmds[i]) {
            dext_dma_command_complete(cmds[i]);
            dext_dma_command_release(cmds[i]);
        }
    }
    dext_buffer_release(d->sq);
    dext_buffer_release(d->cq);
    dext_buffer_release(d->src);
    dext_buffer_release(d->dst);
    dext_buffer_release(d->shm_ro);
    dext_buffer_release(d->shm_rw);
    dext_queue_destroy(d->irq_q);
    dext_action_release(d->action);
    dext_pci_close(d->pci);
    g_string_free(d->report, TRUE);
    g_mutex_clear(&d->lock);
    g_cond_clear(&d->cond);
    g_free(d);
}

/* ---- user client --------------------------------------------------------- */

static int m_addmul(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    a->scalar_out[0] = a->scalar_in[0] + a->scalar_in[1];
    a->scalar_out[1] = a->scalar_in[0] * a->scalar_in[1];
    return 0;
}

static int m_reverse(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    const uint8_t *in = a->struct_in;
    uint8_t *out = a->struct_out;
    if (a->struct_in_size > a->struct_out_size) {
        return -EOVERFLOW;
    }
    for (size_t i = 0; i < a->struct_in_size; i++) {
        out[i] = in[a->struct_in_size - 1 - i];
    }
    a->struct_out_size = a->struct_in_size;
    return 0;
}

static int m_stats(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    g_mutex_lock(&d->lock);
    a->scalar_out[0] = d->pass;
    a->scalar_out[1] = (1u << CHK_COUNT) - 1;
    a->scalar_out[2] = d->irq_count[0];
    a->scalar_out[3] = d->irq_count[1];
    a->scalar_out[4] = d->timer_ticks;
    a->scalar_out[5] = d->dma_ok;
    g_mutex_unlock(&d->lock);
    return 0;
}

static int m_async_irq(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    uint64_t which = a->scalar_in[0];
    if (which > 1) {
        return -EINVAL;
    }
    g_mutex_lock(&d->lock);
    if (d->async_uc) {
        g_mutex_unlock(&d->lock);
        return -EBUSY;
    }
    d->async_uc = uc;
    d->async_ref = a->async_ref;
    d->async_t0 = dext_time_ns();
    g_mutex_unlock(&d->lock);
    dext_pci_memory_write32(d->pci, 0, DXL_REG_INT_SET, which ? DXL_INT_QUEUE(0) : DXL_INT_ERROR);
    return 0;
}

static int m_dma(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    char err[160] = "";
    int rc = dma_copy(d, (uint32_t)MIN(a->scalar_in[0], (uint64_t)UINT32_MAX),
                      (uint32_t)a->scalar_in[1], err, sizeof(err));
    if (rc < 0) {
        DEXT_WARN("dma copy: %s", err[0] ? err : g_strerror(-rc));
        return rc;
    }
    a->scalar_out[0] = a->scalar_in[0];
    return 0;
}

static int m_report(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    size_t n = MIN(a->struct_out_size, d->report->len);
    memcpy(a->struct_out, d->report->str, n);
    a->struct_out_size = n;
    return 0;
}

/* Interrupt round trips driven inside the driver: posted INT_SET -> MSI-X
 * -> handler.  Out: per sample (u32 doorbell->handler ns, u32 platform
 * parsed the MSI line -> handler ns, u32 eventfd read -> handler ns). */
static int m_irq_bench(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    uint64_t n = a->scalar_in[0];
    uint32_t *out = a->struct_out;
    if (n == 0 || n * 12 > a->struct_out_size) {
        return -EINVAL;
    }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t c = irq_count(d, 1);
        uint64_t t0 = dext_time_ns();
        dext_pci_memory_write32(d->pci, 0, DXL_REG_INT_SET, DXL_INT_QUEUE(0));
        if (!wait_irq(d, 1, c, 5000)) {
            return -ETIMEDOUT;
        }
        uint64_t last_msi = 0;
        dext_platform_interrupt_stats(NULL, &last_msi);
        g_mutex_lock(&d->lock);
        uint64_t seen = d->irq_seen_at[1];
        out[3 * i] = (uint32_t)MIN(seen - t0, UINT32_MAX);
        out[3 * i + 1] = seen > last_msi ? (uint32_t)MIN(seen - last_msi, UINT32_MAX) : 0;
        out[3 * i + 2] = (uint32_t)MIN(seen - d->irq_time[1], UINT32_MAX);
        g_mutex_unlock(&d->lock);
    }
    a->struct_out_size = n * 12;
    return 0;
}

/* MMIO through the daemon: n reads (round trips), n posted writes + flush. */
static int m_mmio_bench(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    uint64_t n = a->scalar_in[0];
    uint32_t v;
    if (n == 0 || n > 1000000) {
        return -EINVAL;
    }
    uint64_t t0 = dext_time_ns();
    for (uint64_t i = 0; i < n; i++) {
        if (dext_pci_memory_read32(d->pci, 0, DXL_REG_SCRATCH, &v) < 0) {
            return -EIO;
        }
    }
    uint64_t t1 = dext_time_ns();
    for (uint64_t i = 0; i < n; i++) {
        dext_pci_memory_write32(d->pci, 0, DXL_REG_SCRATCH, (uint32_t)i);
    }
    dext_pci_flush(d->pci);
    uint64_t t2 = dext_time_ns();
    dext_pci_memory_read32(d->pci, 0, DXL_REG_SCRATCH, &v);
    if (v != (uint32_t)(n - 1)) {
        return -EIO; /* posted writes must all land, in order */
    }
    a->scalar_out[0] = t1 - t0;
    a->scalar_out[1] = t2 - t1;
    return 0;
}

static int m_shm_sum(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    const uint8_t *p = dext_buffer_map(d->shm_rw);
    uint64_t sum = 0;
    for (uint64_t i = 0; i < dext_buffer_capacity(d->shm_rw); i++) {
        sum += p[i];
    }
    a->scalar_out[0] = sum;
    return 0;
}

/* Fails with -in[0] (1..4095): how an app sees a driver's own error. */
static int m_fail(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    if (a->scalar_in[0] < 1 || a->scalar_in[0] > 4095) {
        return -EINVAL;
    }
    return -(int)a->scalar_in[0];
}

static const DextMethod methods[] = {
    [0] = { m_addmul, 2, 0, 2, 0, false },
    [1] = { m_reverse, 0, DEXT_UC_VARIABLE, 0, DEXT_UC_VARIABLE, false },
    [2] = { m_stats, 0, 0, 6, 0, false },
    [3] = { m_async_irq, 1, 0, 0, 0, true },
    [4] = { m_dma, 2, 0, 1, 0, false },
    [5] = { m_report, 0, 0, 0, DEXT_UC_VARIABLE, false },
    [6] = { m_irq_bench, 1, 0, 0, DEXT_UC_VARIABLE, false },
    [7] = { m_mmio_bench, 1, 0, 2, 0, false },
    [8] = { m_shm_sum, 0, 0, 1, 0, false },
    [9] = { m_fail, 1, 0, 0, 0, false },
};

static int uc_memory(DextUserClient *uc, void *ctx, uint32_t type, DextBuffer **out, bool *ro)
{
    Drv *d = ctx;
    if (type == 0) {
        *out = d->shm_ro;
        *ro = true;
        return d->shm_ro ? 0 : -ENOMEM;
    }
    if (type == 1) {
        *out = d->shm_rw;
        *ro = false;
        return d->shm_rw ? 0 : -ENOMEM;
    }
    return -EINVAL;
}

static void uc_closed(DextUserClient *uc, void *ctx)
{
    Drv *d = ctx;
    g_mutex_lock(&d->lock);
    if (d->async_uc == uc) {
        d->async_uc = NULL;
    }
    g_mutex_unlock(&d->lock);
    DEXT_INFO("user client %llu (%s) closed", (unsigned long long)dext_user_client_id(uc),
              dext_user_client_app_id(uc));
}

static const DextUserClientOps uc_ops = { uc_memory, uc_closed };

static int drv_new_uc(DextService *svc, DextUserClient *uc)
{
    dext_user_client_set_dispatch(uc, methods, G_N_ELEMENTS(methods), &uc_ops,
                                  dext_service_get_priv(svc));
    return 0;
}

static const DextClassOps dext_test_class = {
    .name = "DextTestDriver",
    .start = drv_start,
    .stop = drv_stop,
    .new_user_client = drv_new_uc,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &dext_test_class, NULL };
    return dext_server_main(argc, argv, classes);
}
