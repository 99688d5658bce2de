/*
 * dextlab-dma-fuzz: random guest behaviour against the dextlab-dma model.
 *
 * Drives the device through the runtime's platform layer (qtest protocol,
 * posted MMIO writes, guest RAM mapped in this process), so descriptor and
 * ring contents cost no qtest round trip and millions of operations fit in
 * a minute.  Operations: register reads and writes with values biased
 * towards the interesting (ring sizes and indices at their limits, DMA
 * addresses in RAM, in MMIO, in the device's own BARs, past the end of RAM,
 * about to wrap 2^64), random and half-valid descriptors rung in through
 * the doorbells, device-memory and MSI-X table accesses, config-space
 * writes, bus-master toggles, register resets and function-level resets.
 *
 * Every few thousand operations the device must still answer with its
 * identity, and QEMU must be alive; at the end a clean copy through a freshly
 * reset queue must complete and move the right bytes.  Run the fork built
 * with ASan/UBSan (build/qemu-build-asan) to catch memory errors: its report
 * goes to the QEMU log this program names when it fails.
 *
 *   dextlab-dma-fuzz [--seconds S] [--ops N] [--seed X] [--qemu PATH]
 *                    [--log PATH]
 *
 * Exit status 0 and a final "fuzz: N ops ... ok" line when the device
 * survived; 1 with the seed and the QEMU log path when it did not (rerun
 * with the same --seed to reproduce).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "platform.h"
#include "hw/dextlab/dextlab-dma-regs.h"

#define RING_AREA       (256 * 1024)        /* SQ and CQ rings of all queues */
#define DATA_AREA       (4 * 1024 * 1024)   /* descriptor source/destination */
#define CHECK_EVERY     4096                /* ops between liveness checks */

/* PCI config offsets (standard; not worth a dependency on pci_regs.h). */
#define CFG_COMMAND     0x04
#define CFG_BAR0        0x10
#define CFG_BAR5_END    0x28
#define CMD_MEM         0x2
#define CMD_MASTER      0x4

typedef enum FuzzOp {
    OP_REG_WRITE,
    OP_REG_READ,
    OP_QUEUE_SETUP,
    OP_DESC,
    OP_SUBMIT,
    OP_DOORBELL,
    OP_DEVMEM,
    OP_MSIX,
    OP_CONFIG,
    OP_BUSMASTER,
    OP_RESET,
    OP_FLR,
    OP_COUNT
} FuzzOp;

static const char *const op_names[OP_COUNT] = {
    "reg-write", "reg-read", "queue-setup", "descriptor", "submit", "doorbell",
    "devmem", "msix", "config", "busmaster", "reset", "flr",
};

/* Relative weights: mostly posted writes and memory, few waiting reads. */
static const unsigned op_weight[OP_COUNT] = {
    [OP_REG_WRITE] = 30, [OP_REG_READ] = 2, [OP_QUEUE_SETUP] = 6,
    [OP_DESC] = 20, [OP_SUBMIT] = 15, [OP_DOORBELL] = 15, [OP_DEVMEM] = 4, [OP_MSIX] = 3,
    [OP_CONFIG] = 2, [OP_BUSMASTER] = 1, [OP_RESET] = 1, [OP_FLR] = 1,
};

typedef struct Fuzz {
    DextPlatform *p;
    DextPciFunction fn;
    uint8_t *ram;
    uint64_t ram_size;
    DextDmaRange rings;
    DextDmaRange data;
    GRand *rng;
    uint64_t ops;
    uint64_t count[OP_COUNT];
    /* What the device reported doing (QOM stat-*), summed over samples;
     * a reset zeroes the counters, so this is a lower bound. */
    uint64_t seen_desc, seen_errors, last_desc, last_errors;
    /* Where OP_SUBMIT believes each queue's tail is (resets make it stale,
     * which is one more thing to fuzz). */
    uint32_t tail[DXL_DMA_NUM_QUEUES];
    const char *qemu_log;
    guint32 seed;
} Fuzz;

static G_GNUC_NORETURN G_GNUC_PRINTF(2, 3)
void fuzz_fail(Fuzz *f, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "fuzz: FAILED after %" PRIu64 " ops (seed %u): ",
            f->ops, f->seed);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nfuzz: QEMU's log (sanitizer reports): %s\n",
            f->qemu_log);
    exit(1);
}

/* Uniform in [0, n) for any 32-bit n (multiply-shift, no modulo bias
 * worth the name). */
static uint32_t rnd(Fuzz *f, uint32_t n)
{
    return ((uint64_t)g_rand_int(f->rng) * n) >> 32;
}

static uint64_t rnd64(Fuzz *f)
{
    return ((uint64_t)g_rand_int(f->rng) << 32) | g_rand_int(f->rng);
}

/* An address a guest could put in a descriptor or ring base register. */
static uint64_t fuzz_addr(Fuzz *f)
{
    const DextPciBar *bars = f->fn.bars;

    switch (rnd(f, 12)) {
    case 0: case 1: case 2:
        return f->data.iova + rnd(f, DATA_AREA);           /* usual case */
    case 3:
        return f->rings.iova + rnd(f, RING_AREA);          /* into rings */
    case 4:
        return rnd64(f) % f->ram_size;                     /* anywhere */
    case 5:
        return f->ram_size + rnd(f, 1u << 30);             /* past RAM */
    case 6:
        return bars[rnd(f, 3)].addr + rnd(f, 0x4000);      /* own BARs */
    case 7:
        return 0xfee00000ull + rnd(f, 0x1000);             /* MSI window */
    case 8:
        return 0xfec00000ull + rnd(f, 0x100);              /* IOAPIC */
    case 9:
        return UINT64_MAX - rnd(f, 1u << 24);              /* wraps */
    case 10:
        return f->data.iova + DATA_AREA - rnd(f, 4096);    /* runs off */
    default:
        return rnd64(f);
    }
}

/* A register value: limits, sizes, indices, addresses, noise. */
static uint32_t fuzz_value(Fuzz *f)
{
    switch (rnd(f, 10)) {
    case 0:
        return 0;
    case 1:
        return UINT32_MAX;
    case 2:
        return 1u << rnd(f, 32);                           /* sizes */
    case 3:
        return (1u << rnd(f, 13)) - rnd(f, 2);             /* size +- 1 */
    case 4:
        return rnd(f, 8);                                  /* small ints */
    case 5:
        return (uint32_t)fuzz_addr(f);
    case 6:
        return (uint32_t)(fuzz_addr(f) >> 32);
    case 7:
        return DXL_QCTRL_ENABLE | (rnd(f, 2) ? DXL_QCTRL_RESET : 0);
    default:
        return g_rand_int(f->rng);
    }
}

/* A BAR0 offset: mostly defined registers, sometimes anywhere. */
static uint32_t fuzz_reg(Fuzz *f)
{
    static const uint32_t global[] = {
        DXL_REG_ID, DXL_REG_SCRATCH, DXL_REG_CTRL, DXL_REG_STATUS,
        DXL_REG_INT_STATUS, DXL_REG_INT_MASK, DXL_REG_INT_SET,
        DXL_REG_ERR_COUNT, DXL_REG_ERR_HEAD, DXL_REG_ERR_POP,
        DXL_REG_STAT_DESC_LO, DXL_REG_VERSION,
    };
    uint32_t q = rnd(f, DXL_DMA_NUM_QUEUES + 1);    /* one past the last */

    switch (rnd(f, 4)) {
    case 0:
        return global[rnd(f, G_N_ELEMENTS(global))];
    case 1:
    case 2:
        return DXL_REG_Q(q, rnd(f, DXL_Q_STAT_ERRORS / 4 + 2) * 4);
    default:
        return rnd(f, DXL_DMA_BAR0_SIZE / 4) * 4 + (rnd(f, 8) ? 0 : rnd(f, 4));
    }
}

static unsigned fuzz_width(Fuzz *f)
{
    static const unsigned widths[] = { 4, 4, 4, 4, 1, 2, 8 };

    return widths[rnd(f, G_N_ELEMENTS(widths))];
}

static void bar_write(Fuzz *f, unsigned bar, uint64_t off, unsigned width,
                      uint64_t val)
{
    int r;

    off &= ~(uint64_t)(width - 1);
    if (off + width > f->fn.bars[bar].size) {
        return;
    }
    r = dext_platform_bar_write(f->p, f->fn.addr, bar, off, width, val);
    if (r == -ESHUTDOWN || r == -EPIPE) {
        fuzz_fail(f, "QEMU died (BAR%u write at 0x%" PRIx64 ")", bar, off);
    }
}

static uint64_t bar_read(Fuzz *f, unsigned bar, uint64_t off, unsigned width)
{
    uint64_t val = 0;
    int r;

    off &= ~(uint64_t)(width - 1);
    if (off + width > f->fn.bars[bar].size) {
        return 0;
    }
    r = dext_platform_bar_read(f->p, f->fn.addr, bar, off, width, &val);
    if (r == -ESHUTDOWN || r == -EPIPE || r == -ETIMEDOUT) {
        fuzz_fail(f, "BAR%u read at 0x%" PRIx64 ": %s", bar, off,
                  dext_platform_last_error(f->p));
    }
    return val;
}

static void set_enables(Fuzz *f, uint32_t mask, bool on)
{
    if (dext_platform_pci_set_enables(f->p, f->fn.addr, mask, on) < 0) {
        fuzz_fail(f, "config write failed: %s", dext_platform_last_error(f->p));
    }
}

/* Program queue q with rings inside the ring area (sizes may be wild). */
static void queue_setup(Fuzz *f, unsigned q, uint32_t sq_size, uint32_t cq_size)
{
    uint64_t per_q = RING_AREA / DXL_DMA_NUM_QUEUES;
    uint64_t sq = f->rings.iova + q * per_q;
    uint64_t cq = sq + per_q / 2;

    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_CTRL), 4, DXL_QCTRL_RESET);
    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_SQ_BASE_LO), 4, (uint32_t)sq);
    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_SQ_BASE_HI), 4, sq >> 32);
    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_SQ_SIZE), 4, sq_size);
    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_CQ_BASE_LO), 4, (uint32_t)cq);
    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_CQ_BASE_HI), 4, cq >> 32);
    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_CQ_SIZE), 4, cq_size);
    bar_write(f, 0, DXL_REG_Q(q, DXL_Q_CTRL), 4, DXL_QCTRL_ENABLE);
}

#define SUBMIT_SQ_SIZE  64

/* Fill SQ slot @slot of queue @q with a (half-)valid descriptor. */
static void fuzz_descriptor(Fuzz *f, unsigned q, unsigned slot)
{
    uint64_t per_q = RING_AREA / DXL_DMA_NUM_QUEUES;
    struct dxl_dma_desc d;
    uint8_t *where = f->ram + f->rings.fd_offset + q * per_q + slot * sizeof(d);

    if (rnd(f, 8) == 0) {
        for (size_t i = 0; i < sizeof(d); i++) {
            ((uint8_t *)&d)[i] = rnd(f, 256);               /* pure noise */
        }
    } else {
        d.opcode = rnd(f, 10) ? rnd(f, DXL_OP_MAX + 1) : rnd(f, 256);
        d.flags = rnd(f, 6) ? rnd(f, DXL_DESC_F_VALID_MASK + 1) : rnd(f, 256);
        d.rsvd0 = rnd(f, 12) ? 0 : rnd(f, 65536);
        switch (rnd(f, 6)) {
        case 0:
            d.length = 1 + rnd(f, 64);
            break;
        case 1:
            d.length = DXL_DMA_MAX_XFER + rnd(f, 2);
            break;
        case 2:
            d.length = 0;
            break;
        default:
            d.length = 1 + rnd(f, 256 * 1024);
            break;
        }
        d.src = d.opcode == DXL_OP_READ_DEV ? rnd(f, DXL_DMA_DEVMEM_SIZE + 64)
              : d.opcode == DXL_OP_FILL ? rnd64(f) : fuzz_addr(f);
        d.dst = d.opcode == DXL_OP_WRITE_DEV ? rnd(f, DXL_DMA_DEVMEM_SIZE + 64)
              : d.opcode == DXL_OP_CRC32C ? (rnd(f, 4) ? rnd(f, UINT32_MAX) : rnd64(f))
              : fuzz_addr(f);
        d.cookie = rnd64(f);
    }
    memcpy(where, &d, sizeof(d));
}

static uint64_t qom_stat(Fuzz *f, const char *name)
{
    g_autofree char *args = g_strdup_printf(
        "{\"path\": \"/machine/peripheral/dxl\", \"property\": \"%s\"}", name);
    g_autofree char *ret = NULL;

    if (dext_platform_qmp(f->p, "qom-get", args, &ret) < 0) {
        fuzz_fail(f, "qom-get %s: %s", name, dext_platform_last_error(f->p));
    }
    return g_ascii_strtoull(ret, NULL, 10);
}

static void sample_stats(Fuzz *f)
{
    uint64_t desc = qom_stat(f, "stat-desc");
    uint64_t errors = qom_stat(f, "stat-errors");

    f->seen_desc += desc >= f->last_desc ? desc - f->last_desc : desc;
    f->seen_errors += errors >= f->last_errors ? errors - f->last_errors : errors;
    f->last_desc = desc;
    f->last_errors = errors;
}

static void fuzz_one(Fuzz *f, FuzzOp op)
{
    unsigned q = rnd(f, DXL_DMA_NUM_QUEUES);

    switch (op) {
    case OP_REG_WRITE:
        bar_write(f, 0, fuzz_reg(f), fuzz_width(f), fuzz_value(f));
        break;
    case OP_REG_READ:
        bar_read(f, 0, fuzz_reg(f), fuzz_width(f));
        break;
    case OP_QUEUE_SETUP:
        bar_write(f, 0, DXL_REG_CTRL, 4, DXL_CTRL_ENABLE);
        queue_setup(f, q, rnd(f, 4) ? 1u << rnd(f, 13) : fuzz_value(f),
                    rnd(f, 4) ? 1u << rnd(f, 13) : fuzz_value(f));
        break;
    case OP_DESC:
        fuzz_descriptor(f, q, rnd(f, RING_AREA / DXL_DMA_NUM_QUEUES / 2 /
                                     sizeof(struct dxl_dma_desc)));
        break;
    case OP_SUBMIT: {
        /* A burst the way a driver would post it: consecutive slots from
         * the tail, then one doorbell.  Sets the queue up first, now and
         * then, so that bursts mostly land on a working queue. */
        unsigned n = 1 + rnd(f, 8);

        if (rnd(f, 16) == 0) {
            bar_write(f, 0, DXL_REG_CTRL, 4, DXL_CTRL_ENABLE);
            queue_setup(f, q, SUBMIT_SQ_SIZE, SUBMIT_SQ_SIZE);
            f->tail[q] = 0;
        }
        /* consume what came back, or the CQ fills and the queue stalls */
        bar_write(f, 0, DXL_REG_Q(q, DXL_Q_CQ_HEAD), 4, f->tail[q]);
        for (unsigned i = 0; i < n; i++) {
            fuzz_descriptor(f, q, f->tail[q]);
            f->tail[q] = (f->tail[q] + 1) % SUBMIT_SQ_SIZE;
        }
        bar_write(f, 0, DXL_REG_Q(q, DXL_Q_SQ_TAIL), 4, f->tail[q]);
        break;
    }
    case OP_DOORBELL:
        bar_write(f, 0, DXL_REG_Q(q, rnd(f, 3) ? DXL_Q_SQ_TAIL : DXL_Q_CQ_HEAD),
                  4, rnd(f, 8) ? rnd(f, 4096) : fuzz_value(f));
        break;
    case OP_DEVMEM:
        if (rnd(f, 4)) {
            bar_write(f, 2, rnd(f, DXL_DMA_DEVMEM_SIZE), fuzz_width(f), rnd64(f));
        } else {
            bar_read(f, 2, rnd(f, DXL_DMA_DEVMEM_SIZE), fuzz_width(f));
        }
        break;
    case OP_MSIX:
        bar_write(f, 1, rnd(f, f->fn.bars[1].size), 4, fuzz_value(f));
        break;
    case OP_CONFIG: {
        /* Anywhere but the BARs; keep memory decode on so the device stays
         * reachable (decode off is covered by OP_BUSMASTER's sibling). */
        unsigned off = 0x04 + rnd(f, 0x100 - 0x04);
        unsigned width = 1u << rnd(f, 3);
        uint32_t val = fuzz_value(f);

        off &= ~(width - 1);
        if (off + width > CFG_BAR0 && off < CFG_BAR5_END) {
            break;
        }
        if (f->fn.pcie_cap && off <= f->fn.pcie_cap + 0x0bu &&
            off + width > f->fn.pcie_cap + 0x08u) {
            break;      /* Device Control (initiate FLR): see OP_FLR */
        }
        if (off <= CFG_COMMAND && off + width > CFG_COMMAND) {
            val |= CMD_MEM << ((CFG_COMMAND - off) * 8);
        }
        if (dext_platform_cfg_write(f->p, f->fn.addr, off, width, val) < 0) {
            fuzz_fail(f, "config write 0x%x: %s", off,
                      dext_platform_last_error(f->p));
        }
        break;
    }
    case OP_BUSMASTER:
        set_enables(f, DEXT_PCI_ENABLE_BUSMASTER, rnd(f, 4) != 0);
        break;
    case OP_RESET:
        if (rnd(f, 2)) {
            sample_stats(f);        /* a device reset zeroes the counters */
            bar_write(f, 0, DXL_REG_CTRL, 4, DXL_CTRL_RESET);
            f->last_desc = f->last_errors = 0;
        } else {
            bar_write(f, 0, DXL_REG_Q(q, DXL_Q_CTRL), 4, DXL_QCTRL_RESET);
        }
        break;
    case OP_FLR:
        sample_stats(f);
        f->last_desc = f->last_errors = 0;
        if (dext_platform_reset_function(f->p, f->fn.addr, true) < 0) {
            fuzz_fail(f, "FLR: %s", dext_platform_last_error(f->p));
        }
        set_enables(f, DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true);
        break;
    case OP_COUNT:
        g_assert_not_reached();
    }
}

static FuzzOp pick_op(Fuzz *f)
{
    static unsigned total;
    unsigned r;

    if (!total) {
        for (unsigned i = 0; i < OP_COUNT; i++) {
            total += op_weight[i];
        }
    }
    r = rnd(f, total);
    for (unsigned i = 0; i < OP_COUNT; i++) {
        if (r < op_weight[i]) {
            return i;
        }
        r -= op_weight[i];
    }
    return OP_REG_WRITE;
}

/* The device answers and QEMU is alive. */
static void check_alive(Fuzz *f)
{
    uint64_t id;

    sample_stats(f);
    set_enables(f, DEXT_PCI_ENABLE_MEM, true);
    id = bar_read(f, 0, DXL_REG_ID, 4);
    if (id != DXL_DMA_ID_MAGIC) {
        fuzz_fail(f, "ID register reads 0x%" PRIx64 ", not 0x%x", id,
                  DXL_DMA_ID_MAGIC);
    }
}

/* After all that, a clean copy must still work: reset, one queue, verify. */
static void check_still_works(Fuzz *f)
{
    const uint32_t len = 64 * 1024;
    uint64_t src = f->data.iova, dst = f->data.iova + DATA_AREA / 2;
    uint8_t *hsrc = f->ram + f->data.fd_offset;
    uint8_t *hdst = hsrc + DATA_AREA / 2;
    uint64_t per_q = RING_AREA / DXL_DMA_NUM_QUEUES;
    uint8_t *sq = f->ram + f->rings.fd_offset;
    struct dxl_dma_cpl *cq = (void *)(sq + per_q / 2);
    struct dxl_dma_desc d = {
        .opcode = DXL_OP_COPY, .length = len, .src = src, .dst = dst,
        .cookie = 0xc0ffee,
    };
    gint64 deadline;

    set_enables(f, DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true);
    if (f->fn.pm_cap &&
        dext_platform_cfg_write(f->p, f->fn.addr, f->fn.pm_cap + 4, 2, 0) < 0) {
        fuzz_fail(f, "back to D0: %s", dext_platform_last_error(f->p));
    }
    bar_write(f, 0, DXL_REG_CTRL, 4, DXL_CTRL_RESET);
    for (uint32_t i = 0; i < len; i++) {
        hsrc[i] = i * 7 + 3;
    }
    memset(hdst, 0, len);
    memset(sq, 0, per_q);
    memcpy(sq, &d, sizeof(d));
    bar_write(f, 0, DXL_REG_CTRL, 4, DXL_CTRL_ENABLE);
    queue_setup(f, 0, 16, 16);
    bar_write(f, 0, DXL_REG_Q(0, DXL_Q_SQ_TAIL), 4, 1);

    deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (!(__atomic_load_n(&cq[0].flags, __ATOMIC_ACQUIRE) & DXL_CPL_F_PHASE)) {
        if (g_get_monotonic_time() > deadline) {
            fuzz_fail(f, "no completion for a clean copy within 10 s "
                      "(queue status 0x%" PRIx64 ")",
                      bar_read(f, 0, DXL_REG_Q(0, DXL_Q_STATUS), 4));
        }
        g_usleep(100);
    }
    if (cq[0].status != DXL_ERR_OK || cq[0].cookie != 0xc0ffee ||
        cq[0].result != len) {
        fuzz_fail(f, "clean copy completed with status 0x%x cookie 0x%" PRIx64
                  " result %u", cq[0].status, cq[0].cookie, cq[0].result);
    }
    if (memcmp(hsrc, hdst, len) != 0) {
        fuzz_fail(f, "clean copy moved the wrong bytes");
    }
}

int main(int argc, char **argv)
{
    double seconds = 20;
    gint64 max_ops = 0;
    gint64 seed = -1;
    const char *qemu = NULL;
    g_autofree char *log = NULL;
    const char *log_arg = NULL;
    GOptionEntry entries[] = {
        { "seconds", 0, 0, G_OPTION_ARG_DOUBLE, &seconds, "run time", "S" },
        { "ops", 0, 0, G_OPTION_ARG_INT64, &max_ops, "stop after N ops", "N" },
        { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "random seed", "X" },
        { "qemu", 0, 0, G_OPTION_ARG_FILENAME, &qemu, "QEMU binary", "PATH" },
        { "log", 0, 0, G_OPTION_ARG_FILENAME, &log_arg, "QEMU log", "PATH" },
        { NULL }
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- fuzz dextlab-dma");
    g_autoptr(GError) err = NULL;
    const char *devices[] = {
        "pcie-root-port,id=rp0,chassis=1,slot=0",
        "dextlab-dma,bus=rp0,id=dxl",
        NULL
    };
    DextMachineDesc desc = { 0 };
    Fuzz f = { 0 };
    DextPciFunction *fns;
    size_t n;
    gint64 t0, end;
    double elapsed;

    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "dextlab-dma-fuzz: %s\n", err->message);
        return 2;
    }
    if (!qemu) {
        qemu = g_getenv("DEXTLAB_QEMU_ASAN");
    }
    if (qemu && access(qemu, X_OK) < 0) {
        fprintf(stderr, "fuzz: no QEMU at %s: the sanitizer build of the fork "
                "is made by 'make check-fuzz' (or tools/setup --sanitizers)\n",
                qemu);
        return 1;
    }
    f.seed = seed >= 0 ? (guint32)seed : g_random_int();
    f.rng = g_rand_new_with_seed(f.seed);
    log = log_arg ? g_strdup(log_arg)
                  : g_strdup_printf("%s/dextlab-dma-fuzz-%u.qemu.log",
                                    g_get_tmp_dir(), f.seed);
    f.qemu_log = log;
    unlink(log);

    desc.qemu_binary = qemu;       /* NULL: the platform's default fork */
    desc.machine = "q35";
    desc.ram_size = 256 * 1024 * 1024;
    desc.devices = devices;
    desc.qemu_log_path = log;
    desc.timeout_ms = 20000;       /* sanitizers slow QEMU down */
    if (dext_platform_qtest_create(&desc, &f.p) < 0) {
        fprintf(stderr, "fuzz: cannot start QEMU: %s (log %s)\n",
                dext_platform_last_error(NULL), log);
        return 1;
    }
    if (dext_platform_pci_enumerate(f.p, false, &fns, &n) < 0) {
        fuzz_fail(&f, "enumerate: %s", dext_platform_last_error(f.p));
    }
    for (size_t i = 0; i < n; i++) {
        if (fns[i].vendor_id == DXL_PCI_VENDOR_ID &&
            fns[i].device_id == DXL_DMA_PCI_DEVICE_ID) {
            f.fn = fns[i];
        }
    }
    g_free(fns);
    if (f.fn.vendor_id != DXL_PCI_VENDOR_ID) {
        fuzz_fail(&f, "no dextlab-dma function found");
    }
    f.ram = dext_platform_memory_map(f.p, &f.ram_size);
    if (!f.ram ||
        dext_platform_dma_alloc(f.p, RING_AREA, 4096, &f.rings) < 0 ||
        dext_platform_dma_alloc(f.p, DATA_AREA, 4096, &f.data) < 0) {
        fuzz_fail(&f, "DMA memory: %s", dext_platform_last_error(f.p));
    }
    set_enables(&f, DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true);
    check_alive(&f);

    printf("fuzz: seed %u, QEMU log %s\n", f.seed, log);
    t0 = g_get_monotonic_time();
    end = t0 + (gint64)(seconds * G_USEC_PER_SEC);
    while (max_ops ? f.ops < (uint64_t)max_ops : g_get_monotonic_time() < end) {
        FuzzOp op = pick_op(&f);

        fuzz_one(&f, op);
        f.count[op]++;
        f.ops++;
        if (f.ops % CHECK_EVERY == 0) {
            check_alive(&f);
        }
    }
    check_alive(&f);
    check_still_works(&f);
    elapsed = (g_get_monotonic_time() - t0) / 1e6;

    for (unsigned i = 0; i < OP_COUNT; i++) {
        printf("fuzz:   %-12s %" PRIu64 "\n", op_names[i], f.count[i]);
    }
    printf("fuzz: the device completed at least %" PRIu64 " descriptors and "
           "reported at least %" PRIu64 " errors\n", f.seen_desc, f.seen_errors);
    printf("fuzz: %" PRIu64 " ops in %.1f s (%.0f ops/s), device still works: ok\n",
           f.ops, elapsed, f.ops / elapsed);
    dext_platform_destroy(f.p);
    g_rand_free(f.rng);
    unlink(log);
    return 0;
}
