/*
 * dxl-selftest: drive the dextlab-dma function from inside a Linux guest
 * through VFIO (type1 IOMMU, MSI-X to eventfds) and print one
 * "DEXTLAB-RESULT name=N status=pass|fail key=value..." line per check for the
 * host's boot test (qtest/boot) to assert.
 *
 *   dxl-selftest --ids             print DXL_VENDOR=0x.... DXL_DEVICE=0x....
 *                                  (sysfs spelling) for /init to find the
 *                                  function; the values come from the header
 *   dxl-selftest --bdf BDF         run the checks (function bound to vfio-pci)
 *   dxl-selftest --bdf BDF --bench ... then the benchmarks, printed as
 *                                  "DEXTLAB-BENCH name=N key=value..."
 *
 * Everything expected comes from hw/dextlab/dextlab-dma-regs.h.  Waits are
 * bounded (DXL_WAIT_MS), so a dead device fails a check instead of hanging
 * the guest.  Exit status: 0 if every check passed, 1 otherwise.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/pci_regs.h>

#include "hw/dextlab/dextlab-dma-regs.h"
#include "vfio.h"

#define DXL_WAIT_MS         5000
#define DXL_RING_SIZE       64
#define DXL_DMA_BUF_SIZE    (24u << 20)
/* IOVAs start well above guest RAM: a guest-physical address is never a
 * valid IOVA by accident, which the isolation check relies on. */
#define DXL_IOVA_MIN        (1ull << 36)

struct dma_buf {
    uint8_t *va;
    uint64_t iova;
    uint64_t size;
    uint64_t used;
};

struct ring {
    volatile uint8_t *bar0;
    unsigned q;
    struct dxl_dma_desc *sq;
    volatile struct dxl_dma_cpl *cq;
    uint64_t sq_iova, cq_iova;
    uint32_t size, tail, head;
    bool phase;
};

static struct dxl_vfio *vf;
static volatile uint8_t *bar0;
static struct dma_buf dbuf;
static struct ring rings[DXL_DMA_NUM_QUEUES];
static int nfail;

static void result(const char *name, bool ok, const char *fmt, ...)
{
    va_list ap;

    printf("DEXTLAB-RESULT name=%s status=%s", name, ok ? "pass" : "fail");
    if (fmt && *fmt) {
        putchar(' ');
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
    }
    putchar('\n');
    fflush(stdout);
    if (!ok) {
        nfail++;
    }
}

static double now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static uint32_t rd(uint32_t off)
{
    return *(volatile uint32_t *)(bar0 + off);
}

static void wr(uint32_t off, uint32_t val)
{
    /* descriptors and buffers in memory before any doorbell */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *(volatile uint32_t *)(bar0 + off) = val;
}

/* ---- DMA memory ---------------------------------------------------------- */

static void *dma_alloc(uint64_t len, uint64_t align, uint64_t *iova)
{
    uint64_t off = (dbuf.used + align - 1) & ~(align - 1);

    if (off + len > dbuf.size) {
        return NULL;
    }
    dbuf.used = off + len;
    *iova = dbuf.iova + off;
    return dbuf.va + off;
}

static void fill_random(void *p, size_t len, uint32_t seed)
{
    uint8_t *b = p;
    size_t i;

    for (i = 0; i < len; i++) {
        seed = seed * 1103515245 + 12345;
        b[i] = seed >> 23;
    }
}

/* CRC32C (Castagnoli), bitwise-table reference independent of the model. */
static uint32_t ref_crc32c(uint32_t crc, const void *buf, size_t len)
{
    static uint32_t table[256];
    const uint8_t *p = buf;
    size_t i;

    if (!table[1]) {
        for (i = 0; i < 256; i++) {
            uint32_t c = i;
            int k;

            for (k = 0; k < 8; k++) {
                c = (c & 1) ? (c >> 1) ^ 0x82f63b78 : c >> 1;
            }
            table[i] = c;
        }
    }
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

/* ---- queues ---------------------------------------------------------------- */

static int ring_init(struct ring *r, unsigned q)
{
    memset(r, 0, sizeof(*r));
    r->bar0 = bar0;
    r->q = q;
    r->size = DXL_RING_SIZE;
    r->phase = true;
    r->sq = dma_alloc(r->size * sizeof(struct dxl_dma_desc), 4096, &r->sq_iova);
    r->cq = dma_alloc(r->size * sizeof(struct dxl_dma_cpl), 4096, &r->cq_iova);
    if (!r->sq || !r->cq) {
        return -ENOMEM;
    }
    memset((void *)r->cq, 0, r->size * sizeof(struct dxl_dma_cpl));
    wr(DXL_REG_Q(q, DXL_Q_SQ_BASE_LO), r->sq_iova);
    wr(DXL_REG_Q(q, DXL_Q_SQ_BASE_HI), r->sq_iova >> 32);
    wr(DXL_REG_Q(q, DXL_Q_SQ_SIZE), r->size);
    wr(DXL_REG_Q(q, DXL_Q_CQ_BASE_LO), r->cq_iova);
    wr(DXL_REG_Q(q, DXL_Q_CQ_BASE_HI), r->cq_iova >> 32);
    wr(DXL_REG_Q(q, DXL_Q_CQ_SIZE), r->size);
    wr(DXL_REG_Q(q, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
    if ((rd(DXL_REG_Q(q, DXL_Q_STATUS)) & (DXL_QSTS_ENABLED | DXL_QSTS_HALTED))
        != DXL_QSTS_ENABLED) {
        return -EIO;
    }
    return 0;
}

static void ring_post(struct ring *r, uint8_t op, uint8_t flags, uint32_t len,
                      uint64_t src, uint64_t dst, uint64_t cookie)
{
    struct dxl_dma_desc d = {
        .opcode = op, .flags = flags, .length = len,
        .src = src, .dst = dst, .cookie = cookie,
    };

    memcpy(&r->sq[r->tail], &d, sizeof(d));
    r->tail = (r->tail + 1) % r->size;
}

static void ring_kick(struct ring *r)
{
    wr(DXL_REG_Q(r->q, DXL_Q_SQ_TAIL), r->tail);
}

/* Take the next completion if the device has written it (phase tag). */
static bool ring_peek(struct ring *r, struct dxl_dma_cpl *c)
{
    volatile struct dxl_dma_cpl *e = &r->cq[r->head];

    if (!!(e->flags & DXL_CPL_F_PHASE) != r->phase) {
        return false;
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    memcpy(c, (const void *)e, sizeof(*c));
    r->head = (r->head + 1) % r->size;
    if (r->head == 0) {
        r->phase = !r->phase;
    }
    return true;
}

static void ring_ack(struct ring *r)
{
    wr(DXL_REG_Q(r->q, DXL_Q_CQ_HEAD), r->head);
}

/* Poll (bounded) for the next completion. */
static int ring_poll(struct ring *r, struct dxl_dma_cpl *c)
{
    double deadline = now_us() + DXL_WAIT_MS * 1000.0;

    while (!ring_peek(r, c)) {
        if (now_us() > deadline) {
            return -ETIMEDOUT;
        }
        sched_yield();
    }
    return 0;
}

/*
 * Run one descriptor with DXL_DESC_F_IRQ: wait for queue q's MSI-X vector,
 * then take the completion.  *irqs gets the eventfd count.
 */
static int ring_run_irq(struct ring *r, uint8_t op, uint32_t len, uint64_t src,
                        uint64_t dst, uint64_t cookie, struct dxl_dma_cpl *c,
                        int64_t *irqs)
{
    int64_t n;

    ring_post(r, op, DXL_DESC_F_IRQ, len, src, dst, cookie);
    ring_kick(r);
    n = dxl_vfio_irq_wait(vf, DXL_DMA_VEC_QUEUE(r->q), DXL_WAIT_MS);
    if (irqs) {
        *irqs = n;
    }
    if (n < 0) {
        return (int)n;
    }
    if (!ring_peek(r, c)) {
        return -ENODATA;   /* interrupt before the completion: a bug */
    }
    ring_ack(r);
    wr(DXL_REG_INT_STATUS, DXL_INT_QUEUE(r->q));
    return 0;
}

/* Drain every vector's eventfd; returns the total count seen. */
static int64_t drain_irqs(void)
{
    int64_t total = 0, n;
    unsigned v;

    for (v = 0; v < DXL_DMA_MSIX_VECTORS; v++) {
        while ((n = dxl_vfio_irq_wait(vf, v, 0)) > 0) {
            total += n;
        }
    }
    return total;
}

/* ---- checks ---------------------------------------------------------------- */

static void check_config(void)
{
    uint16_t vid = 0, did = 0, svid = 0, sid = 0, cmd;
    uint32_t class_rev = 0;
    uint8_t pos = 0, ids[4] = { 0 };
    unsigned ncap = 0, i;
    uint16_t msix_flags = 0, msi_flags = 0, pm_pmc = 0;
    uint32_t devcap = 0;
    uint64_t sz[3] = { 0 };
    bool ok;

    dxl_vfio_cfg_read(vf, PCI_VENDOR_ID, &vid, 2);
    dxl_vfio_cfg_read(vf, PCI_DEVICE_ID, &did, 2);
    dxl_vfio_cfg_read(vf, PCI_CLASS_REVISION, &class_rev, 4);
    dxl_vfio_cfg_read(vf, PCI_SUBSYSTEM_VENDOR_ID, &svid, 2);
    dxl_vfio_cfg_read(vf, PCI_SUBSYSTEM_ID, &sid, 2);
    ok = vid == DXL_PCI_VENDOR_ID && did == DXL_DMA_PCI_DEVICE_ID &&
         (class_rev >> 8) == DXL_DMA_PCI_CLASS &&
         (class_rev & 0xff) == DXL_DMA_PCI_REVISION &&
         svid == DXL_DMA_PCI_SUBVENDOR_ID && sid == DXL_DMA_PCI_SUBSYSTEM_ID;
    result("config-ids", ok, "vendor=0x%04x device=0x%04x class=0x%06x "
           "rev=0x%02x subsys=0x%04x:0x%04x", vid, did, class_rev >> 8,
           class_rev & 0xff, svid, sid);

    /* Capability chain as VFIO shows it (it virtualises, never hides these) */
    dxl_vfio_cfg_read(vf, PCI_CAPABILITY_LIST, &pos, 1);
    while (pos && ncap < 16) {
        uint8_t id = 0, next = 0;

        dxl_vfio_cfg_read(vf, pos, &id, 1);
        dxl_vfio_cfg_read(vf, pos + 1, &next, 1);
        if (id == PCI_CAP_ID_PM && pos == DXL_DMA_CAP_PM_OFFSET) {
            ids[0] = 1;
            dxl_vfio_cfg_read(vf, pos + PCI_PM_PMC, &pm_pmc, 2);
        } else if (id == PCI_CAP_ID_MSI && pos == DXL_DMA_CAP_MSI_OFFSET) {
            ids[1] = 1;
            dxl_vfio_cfg_read(vf, pos + PCI_MSI_FLAGS, &msi_flags, 2);
        } else if (id == PCI_CAP_ID_MSIX && pos == DXL_DMA_CAP_MSIX_OFFSET) {
            ids[2] = 1;
            dxl_vfio_cfg_read(vf, pos + PCI_MSIX_FLAGS, &msix_flags, 2);
        } else if (id == PCI_CAP_ID_EXP && pos == DXL_DMA_CAP_EXP_OFFSET) {
            ids[3] = 1;
            dxl_vfio_cfg_read(vf, pos + PCI_EXP_DEVCAP, &devcap, 4);
        }
        pos = next;
        ncap++;
    }
    ok = ids[0] && ids[1] && ids[2] && ids[3] &&
         (msix_flags & PCI_MSIX_FLAGS_QSIZE) + 1 == DXL_DMA_MSIX_VECTORS &&
         (msi_flags & PCI_MSI_FLAGS_64BIT) && (msi_flags & PCI_MSI_FLAGS_MASKBIT) &&
         (devcap & PCI_EXP_DEVCAP_FLR);
    result("config-caps", ok, "caps=%u pm=%d msi=%d msix=%d express=%d "
           "msix_table=%u msi_flags=0x%04x pm_pmc=0x%04x flr=%d", ncap,
           ids[0], ids[1], ids[2], ids[3],
           (msix_flags & PCI_MSIX_FLAGS_QSIZE) + 1, msi_flags, pm_pmc,
           !!(devcap & PCI_EXP_DEVCAP_FLR));

    for (i = 0; i < 3; i++) {
        dxl_vfio_bar_size(vf, i, &sz[i]);
    }
    ok = sz[DXL_DMA_BAR_REGS] == DXL_DMA_BAR0_SIZE &&
         sz[DXL_DMA_BAR_DEVMEM] == DXL_DMA_DEVMEM_SIZE &&
         sz[DXL_DMA_BAR_MSIX] > DXL_DMA_MSIX_PBA_OFFSET;
    result("bars", ok, "bar0=0x%llx bar1=0x%llx bar2=0x%llx",
           (unsigned long long)sz[0], (unsigned long long)sz[1],
           (unsigned long long)sz[2]);

    /* Memory decode and bus mastering: the engine stalls without MASTER */
    dxl_vfio_cfg_read(vf, PCI_COMMAND, &cmd, 2);
    cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
    dxl_vfio_cfg_write(vf, PCI_COMMAND, &cmd, 2);
}

static bool check_identity(void)
{
    uint64_t size;
    uint32_t id, ver, cap, scratch;
    int ret;
    bool ok;

    ret = dxl_vfio_bar_map(vf, DXL_DMA_BAR_REGS, (volatile void **)&bar0,
                           &size);
    if (ret < 0) {
        result("bar0-map", false, "errno=%d", -ret);
        return false;
    }
    id = rd(DXL_REG_ID);
    ver = rd(DXL_REG_VERSION);
    cap = rd(DXL_REG_CAP);
    wr(DXL_REG_SCRATCH, 0x5a5aa5a5);
    scratch = rd(DXL_REG_SCRATCH);
    ok = id == DXL_DMA_ID_MAGIC && ver == DXL_DMA_VERSION &&
         (cap & DXL_CAP_NUM_QUEUES_MASK) == DXL_DMA_NUM_QUEUES &&
         ((cap & DXL_CAP_NUM_VECTORS_MASK) >> DXL_CAP_NUM_VECTORS_SHIFT) ==
             DXL_DMA_MSIX_VECTORS &&
         (cap & DXL_CAP_OP_COPY) && (cap & DXL_CAP_OP_FILL) &&
         (cap & DXL_CAP_OP_CRC32C) && (cap & DXL_CAP_OP_DEV) &&
         rd(DXL_REG_DEVMEM_SIZE) == DXL_DMA_DEVMEM_SIZE &&
         rd(DXL_REG_MAX_XFER) == DXL_DMA_MAX_XFER &&
         rd(DXL_REG_QUEUE_MAX) == DXL_DMA_QUEUE_MAX_ENTRIES &&
         scratch == 0x5a5aa5a5;
    result("identity", ok, "id=0x%08x version=0x%08x cap=0x%08x bar0=0x%llx "
           "scratch=0x%08x", id, ver, cap, (unsigned long long)size, scratch);
    return ok;
}

static bool setup_engine(void)
{
    int n, ret;
    unsigned q;

    n = dxl_vfio_msix_count(vf);
    ret = n == DXL_DMA_MSIX_VECTORS ? dxl_vfio_msix_enable(vf, n) : -ENOSPC;
    result("msix-enable", ret == 0, "vectors=%d errno=%d", n, ret < 0 ? -ret : 0);
    if (ret < 0) {
        return false;
    }
    wr(DXL_REG_CTRL, DXL_CTRL_ENABLE);
    wr(DXL_REG_INT_MASK, 0);
    wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        ret = ring_init(&rings[q], q);
        if (ret < 0) {
            break;
        }
    }
    result("queues", ret == 0, "queues=%u ring=%u dev_status=0x%08x errno=%d", q,
           DXL_RING_SIZE, rd(DXL_REG_STATUS), ret < 0 ? -ret : 0);
    return ret == 0;
}

static void check_copy(uint32_t len, uint32_t seed)
{
    struct dxl_dma_cpl c = { 0 };
    uint64_t si, di;
    uint8_t *s = dma_alloc(len, 4096, &si), *d = dma_alloc(len, 4096, &di);
    int64_t irqs = 0;
    char name[32];
    int ret;
    bool ok;

    snprintf(name, sizeof(name), "dma-copy-%u", len);
    if (!s || !d) {
        result(name, false, "reason=no_dma_memory");
        return;
    }
    fill_random(s, len, seed);
    memset(d, 0, len);
    ret = ring_run_irq(&rings[0], DXL_OP_COPY, len, si, di, 0xc0de0000 + seed,
                       &c, &irqs);
    ok = ret == 0 && c.status == DXL_ERR_OK && c.result == len &&
         c.cookie == 0xc0de0000ull + seed && memcmp(s, d, len) == 0;
    result(name, ok, "errno=%d cpl_status=0x%02x result=%u irqs=%lld "
           "data=%s", ret < 0 ? -ret : 0, c.status, c.result,
           (long long)irqs, memcmp(s, d, len) ? "mismatch" : "ok");
}

static void check_fill(void)
{
    const uint32_t len = 100003;    /* odd: the pattern wraps mid-word */
    const uint64_t pat = 0x0123456789abcdefull;
    struct dxl_dma_cpl c = { 0 };
    uint64_t di;
    uint8_t *d = dma_alloc(len + 16, 4096, &di);
    uint32_t i, bad = 0;
    int ret;

    memset(d, 0xee, len + 16);
    ret = ring_run_irq(&rings[1], DXL_OP_FILL, len, pat, di, 0xf111, &c, NULL);
    for (i = 0; i < len; i++) {
        bad += d[i] != (uint8_t)(pat >> (8 * (i % 8)));
    }
    for (i = len; i < len + 16; i++) {
        bad += d[i] != 0xee;    /* nothing past the end */
    }
    result("dma-fill", ret == 0 && c.status == 0 && c.result == len && !bad,
           "errno=%d cpl_status=0x%02x result=%u bad_bytes=%u",
           ret < 0 ? -ret : 0, c.status, c.result, bad);
}

static void check_crc(void)
{
    const uint32_t len = 256 * 1024;
    struct dxl_dma_cpl c1 = { 0 }, c2 = { 0 };
    uint64_t si;
    uint8_t *s = dma_alloc(len, 4096, &si);
    uint32_t want;
    int r1, r2;

    /* The standard check value first, then a large random buffer */
    memcpy(s, "123456789", 9);
    r1 = ring_run_irq(&rings[2], DXL_OP_CRC32C, 9, si, 0, 1, &c1, NULL);
    fill_random(s, len, 77);
    want = ref_crc32c(0, s, len);
    r2 = ring_run_irq(&rings[2], DXL_OP_CRC32C, len, si, 0, 2, &c2, NULL);
    result("dma-crc32c", !r1 && !r2 && !c1.status && !c2.status &&
           c1.result == 0xe3069283 && c2.result == want,
           "check=0x%08x crc=0x%08x want=0x%08x cpl_status=0x%02x,0x%02x",
           c1.result, c2.result, want, c1.status, c2.status);
}

/* Host memory -> device memory (BAR2) -> host memory, and BAR2 via mmap. */
static void check_devmem(void)
{
    const uint32_t len = 64 * 1024, off = DXL_DMA_DEVMEM_SIZE - len;
    struct dxl_dma_cpl c1 = { 0 }, c2 = { 0 };
    volatile uint8_t *bar2 = NULL;
    uint64_t si, di, sz = 0;
    uint8_t *s = dma_alloc(len, 4096, &si), *d = dma_alloc(len, 4096, &di);
    int r1, r2, rm;
    bool via_bar;

    fill_random(s, len, 99);
    memset(d, 0, len);
    r1 = ring_run_irq(&rings[3], DXL_OP_WRITE_DEV, len, si, off, 3, &c1, NULL);
    r2 = ring_run_irq(&rings[3], DXL_OP_READ_DEV, len, off, di, 4, &c2, NULL);
    rm = dxl_vfio_bar_map(vf, DXL_DMA_BAR_DEVMEM, (volatile void **)&bar2, &sz);
    via_bar = rm == 0 && memcmp((const void *)(bar2 + off), s, len) == 0;
    result("dma-devmem", !r1 && !r2 && !c1.status && !c2.status &&
           !memcmp(s, d, len) && via_bar,
           "cpl_status=0x%02x,0x%02x roundtrip=%s bar2_mmap=%s",
           c1.status, c2.status, memcmp(s, d, len) ? "mismatch" : "ok",
           rm ? "unmappable" : via_bar ? "ok" : "mismatch");
}

/* Queue q's completion interrupt arrives on MSI-X vector 1 + q, and only there. */
static void check_vectors(void)
{
    unsigned q, good = 0;
    char got[128] = "";
    size_t o = 0;

    drain_irqs();
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        struct dxl_dma_cpl c = { 0 };
        int64_t n = 0, others = 0;
        unsigned v;
        int ret = ring_run_irq(&rings[q], DXL_OP_NOP, 0, 0, 0, 0x100 + q, &c,
                               &n);

        for (v = 0; v < DXL_DMA_MSIX_VECTORS; v++) {
            int64_t k = dxl_vfio_irq_wait(vf, v, 0);
            others += k > 0 ? k : 0;
        }
        if (ret == 0 && n >= 1 && others == 0 && c.status == 0) {
            good++;
        }
        o += snprintf(got + o, sizeof(got) - o, "%s%u:%lld", q ? "," : "",
                      DXL_DMA_VEC_QUEUE(q), (long long)(ret ? ret : n));
    }
    result("msix-vectors", good == DXL_DMA_NUM_QUEUES, "ok=%u/%u vector:irqs=%s",
           good, DXL_DMA_NUM_QUEUES, got);
}

/*
 * IOMMU isolation: the device may only reach what was mapped with
 * VFIO_IOMMU_MAP_DMA.  A write to an IOVA never mapped, and a read of a
 * guest-physical address of real RAM (which would succeed without the IOMMU),
 * must both end in DXL_ERR_DMA_UNMAPPED -- an error completion, an error log
 * entry naming the address, an admin-vector interrupt -- and afterwards the
 * queue and the guest carry on.
 */
static void check_isolation(void)
{
    const uint32_t len = 4096;
    struct dxl_dma_cpl c1 = { 0 }, c2 = { 0 }, c3 = { 0 };
    uint64_t si, di, pa = 0, bad_iova = dbuf.iova + dbuf.size + (1ull << 30);
    uint8_t *s = dma_alloc(len, 4096, &si), *d = dma_alloc(len, 4096, &di);
    uint32_t head, lo, hi, count;
    int64_t admin;
    int r1, r2 = -1, r3, rp;
    bool log_ok;

    drain_irqs();
    wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    while (rd(DXL_REG_ERR_COUNT)) {
        wr(DXL_REG_ERR_POP, 1);
    }
    fill_random(s, len, 5);

    /* 1: write to an IOVA nothing maps */
    r1 = ring_run_irq(&rings[4], DXL_OP_COPY, len, si, bad_iova, 0xbad1, &c1,
                      NULL);
    count = rd(DXL_REG_ERR_COUNT);
    head = rd(DXL_REG_ERR_HEAD);
    lo = rd(DXL_REG_ERR_ADDR_LO);
    hi = rd(DXL_REG_ERR_ADDR_HI);
    log_ok = count >= 1 && (head & DXL_ERRH_CODE_MASK) == DXL_ERR_DMA_UNMAPPED &&
             ((head & DXL_ERRH_QUEUE_MASK) >> DXL_ERRH_QUEUE_SHIFT) == 4 &&
             (((uint64_t)hi << 32) | lo) == bad_iova;
    admin = dxl_vfio_irq_wait(vf, DXL_DMA_VEC_ADMIN, DXL_WAIT_MS);
    while (rd(DXL_REG_ERR_COUNT)) {
        wr(DXL_REG_ERR_POP, 1);
    }
    wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    result("iommu-unmapped-write", r1 == 0 && c1.status == DXL_ERR_DMA_UNMAPPED &&
           log_ok && admin >= 1,
           "iova=0x%llx cpl_status=0x%02x errlog=%u head=0x%08x "
           "addr=0x%08x%08x admin_irqs=%lld", (unsigned long long)bad_iova,
           c1.status, count, head, hi, lo, (long long)admin);

    /* 2: read the guest-physical address of our own (mapped) buffer */
    memset(d, 0, len);
    rp = dxl_vfio_phys_addr(s, &pa);
    if (rp == 0) {
        r2 = ring_run_irq(&rings[4], DXL_OP_COPY, len, pa, di, 0xbad2, &c2,
                          NULL);
        dxl_vfio_irq_wait(vf, DXL_DMA_VEC_ADMIN, DXL_WAIT_MS);
        while (rd(DXL_REG_ERR_COUNT)) {
            wr(DXL_REG_ERR_POP, 1);
        }
        wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    }
    result("iommu-gpa-read", rp == 0 && r2 == 0 &&
           c2.status == DXL_ERR_DMA_UNMAPPED && memcmp(s, d, len) != 0,
           "gpa=0x%llx cpl_status=0x%02x dst=%s", (unsigned long long)pa,
           c2.status, memcmp(s, d, len) ? "untouched" : "LEAKED");

    /* 3: the same queue still works */
    r3 = ring_run_irq(&rings[4], DXL_OP_COPY, len, si, di, 0x600d, &c3, NULL);
    result("iommu-recover", r3 == 0 && c3.status == 0 && !memcmp(s, d, len) &&
           !(rd(DXL_REG_Q(4, DXL_Q_STATUS)) & DXL_QSTS_HALTED),
           "cpl_status=0x%02x qstatus=0x%08x", c3.status,
           rd(DXL_REG_Q(4, DXL_Q_STATUS)));
}

/* Function-level reset through VFIO: registers return to reset values. */
static void check_flr(void)
{
    uint32_t scratch, ctrl, id;
    int ret;

    wr(DXL_REG_SCRATCH, 0x12345678);
    ret = dxl_vfio_reset(vf);
    id = rd(DXL_REG_ID);
    scratch = rd(DXL_REG_SCRATCH);
    ctrl = rd(DXL_REG_CTRL);
    result("flr", ret == 0 && id == DXL_DMA_ID_MAGIC && scratch == 0 &&
           !(ctrl & DXL_CTRL_ENABLE), "errno=%d id=0x%08x scratch=0x%08x "
           "ctrl=0x%08x", ret < 0 ? -ret : 0, id, scratch, ctrl);
}

/* ---- benchmarks -------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static void bench_throughput(void)
{
    const uint32_t blk = 1u << 20, depth = 8, rounds = 8;
    uint64_t si, di;
    uint8_t *s = dma_alloc(blk * depth, 4096, &si);
    uint8_t *d = dma_alloc(blk * depth, 4096, &di);
    struct ring *r = &rings[5];
    double t0, t_dma, t_cpu;
    uint32_t i, k, errors = 0;

    if (!s || !d) {
        return;
    }
    fill_random(s, blk * depth, 1);
    memset(d, 0, blk * depth);
    /* DMA: depth descriptors per doorbell, completions polled by phase tag */
    t0 = now_us();
    for (k = 0; k < rounds; k++) {
        for (i = 0; i < depth; i++) {
            ring_post(r, DXL_OP_COPY, 0, blk, si + i * blk, di + i * blk, i);
        }
        ring_kick(r);
        for (i = 0; i < depth; i++) {
            struct dxl_dma_cpl c;

            if (ring_poll(r, &c) < 0) {
                errors++;
                break;
            }
            errors += c.status != 0;
        }
        ring_ack(r);
    }
    t_dma = now_us() - t0;
    errors += memcmp(s, d, blk * depth) != 0;
    /* The guest CPU's own copy of the same bytes */
    t0 = now_us();
    for (k = 0; k < rounds; k++) {
        for (i = 0; i < depth; i++) {
            memcpy(d + i * blk, s + i * blk, blk);
        }
        __asm__ volatile("" ::: "memory");
    }
    t_cpu = now_us() - t0;
    printf("DEXTLAB-BENCH name=dma-throughput bytes=%u dma_mib_s=%.1f "
           "memcpy_mib_s=%.1f ratio=%.2f errors=%u\n", blk * depth * rounds,
           blk * depth * rounds / t_dma / 1.048576,
           blk * depth * rounds / t_cpu / 1.048576, t_cpu / t_dma, errors);
    fflush(stdout);
}

struct pingpong {
    int a, b;
    unsigned n;
};

static void *pong(void *opaque)
{
    struct pingpong *p = opaque;
    uint64_t v;
    unsigned i;

    for (i = 0; i < p->n; i++) {
        if (read(p->a, &v, sizeof(v)) != sizeof(v) ||
            write(p->b, &v, sizeof(v)) != sizeof(v)) {
            break;
        }
    }
    return NULL;
}

/*
 * Steer MSI-X vector @vec of this function to CPU 0 through
 * /proc/irq/N/smp_affinity (the kernel names it "vfio-msix[VEC](BDF)").
 */
static bool irq_to_cpu0(const char *bdf, unsigned vec)
{
    char want[96], line[512], path[64];
    FILE *f = fopen("/proc/interrupts", "re");
    bool ok = false;

    if (!f) {
        return false;
    }
    snprintf(want, sizeof(want), "vfio-msix[%u](%s)", vec, bdf);
    while (fgets(line, sizeof(line), f)) {
        if (strstr(line, want)) {
            FILE *a;

            snprintf(path, sizeof(path), "/proc/irq/%d/smp_affinity",
                     atoi(line));
            a = fopen(path, "we");
            if (a) {
                ok = fputs("1\n", a) >= 0;
                ok &= fclose(a) == 0;
            }
            break;
        }
    }
    fclose(f);
    return ok;
}

/*
 * Both latencies are taken on CPU 0 (process pinned, completion vector
 * steered there): under TCG a wakeup across vCPUs costs whatever the host
 * gives the other vCPU thread, which would swamp both figures.
 */
static void bench_latency(const char *bdf)
{
    enum { N = 1000 };
    static double lat_irq[N], lat_efd[N];
    struct ring *r = &rings[6];
    struct pingpong p = { .n = N };
    pthread_t th;
    unsigned i, got = 0;
    uint64_t v = 1;
    cpu_set_t cpus;
    bool pinned, steered;

    CPU_ZERO(&cpus);
    CPU_SET(0, &cpus);
    pinned = sched_setaffinity(0, sizeof(cpus), &cpus) == 0;
    steered = irq_to_cpu0(bdf, DXL_DMA_VEC_QUEUE(r->q));
    drain_irqs();
    for (i = 0; i < N; i++) {
        struct dxl_dma_cpl c;
        double t0 = now_us();

        if (ring_run_irq(r, DXL_OP_NOP, 0, 0, 0, i, &c, NULL) < 0) {
            break;
        }
        lat_irq[got++] = now_us() - t0;
    }
    p.a = eventfd(0, EFD_CLOEXEC);
    p.b = eventfd(0, EFD_CLOEXEC);
    pthread_create(&th, NULL, pong, &p);
    for (i = 0; i < N; i++) {
        double t0 = now_us();

        if (write(p.a, &v, sizeof(v)) != sizeof(v) ||
            read(p.b, &v, sizeof(v)) != sizeof(v)) {
            break;
        }
        lat_efd[i] = now_us() - t0;
    }
    pthread_join(th, NULL);
    close(p.a);
    close(p.b);
    if (got < 2 || i < 2) {
        printf("DEXTLAB-BENCH name=msix-latency error=incomplete\n");
        return;
    }
    qsort(lat_irq, got, sizeof(double), cmp_double);
    qsort(lat_efd, i, sizeof(double), cmp_double);
    printf("DEXTLAB-BENCH name=msix-latency n=%u msix_p50_us=%.1f "
           "msix_p99_us=%.1f eventfd_pingpong_p50_us=%.1f "
           "eventfd_pingpong_p99_us=%.1f ratio=%.2f cpu0_pinned=%d "
           "irq_on_cpu0=%d\n", got,
           lat_irq[got / 2], lat_irq[got * 99 / 100], lat_efd[i / 2],
           lat_efd[i * 99 / 100], lat_irq[got / 2] / lat_efd[i / 2], pinned,
           steered);
    fflush(stdout);
}

/* ---- main -------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: dxl-selftest --ids | --bdf BDF [--bench]\n");
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "ids", no_argument, NULL, 'i' },
        { "bdf", required_argument, NULL, 'b' },
        { "bench", no_argument, NULL, 'B' },
        { NULL, 0, NULL, 0 },
    };
    const char *bdf = NULL;
    bool bench = false;
    int c, ret;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'i':
            printf("DXL_VENDOR=0x%04x\nDXL_DEVICE=0x%04x\n", DXL_PCI_VENDOR_ID,
                   DXL_DMA_PCI_DEVICE_ID);
            return 0;
        case 'b':
            bdf = optarg;
            break;
        case 'B':
            bench = true;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (!bdf) {
        usage();
        return 2;
    }

    ret = dxl_vfio_open(bdf, &vf);
    result("vfio-open", ret == 0, "bdf=%s group=%d errno=%d", bdf,
           ret == 0 ? dxl_vfio_group(vf) : -1, ret < 0 ? -ret : 0);
    if (ret < 0) {
        return 1;
    }

    dbuf.size = DXL_DMA_BUF_SIZE;
    dbuf.va = mmap(NULL, dbuf.size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    ret = dbuf.va == MAP_FAILED ? -errno :
          dxl_vfio_iova_pick(vf, DXL_IOVA_MIN, dbuf.size, 1ull << 21,
                             &dbuf.iova);
    if (ret == 0) {
        ret = dxl_vfio_dma_map(vf, dbuf.va, dbuf.iova, dbuf.size);
    }
    result("dma-map", ret == 0, "iova=0x%llx size=0x%llx errno=%d",
           (unsigned long long)dbuf.iova, (unsigned long long)dbuf.size,
           ret < 0 ? -ret : 0);
    if (ret < 0) {
        goto out;
    }

    check_config();
    if (!check_identity() || !setup_engine()) {
        goto out;
    }
    check_copy(4096, 1);
    check_copy(1u << 20, 2);
    check_fill();
    check_crc();
    check_devmem();
    check_vectors();
    check_isolation();
    if (bench) {
        bench_throughput();
        bench_latency(bdf);
    }
    check_flr();
out:
    dxl_vfio_close(vf);
    return nfail ? 1 : 0;
}
