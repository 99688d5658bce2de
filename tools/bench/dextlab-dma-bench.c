/*
 * dextlab-dma benchmark (not a test: it prints figures).
 *
 *  - copy throughput of the device's COPY opcode for descriptor sizes from
 *    4 KiB to 16 MiB (timing model off), each beside memcpy() of the same
 *    sizes over the same buffers measured in this run;
 *  - MSI-X delivery rate (one message per descriptor, seen by the qtest
 *    client through the fork's msi_intercept) beside the rate of plain qtest
 *    register round trips measured in this run.
 *
 * Guest RAM is a shared file, so buffers are filled and checked with memcpy
 * and completions are polled in memory; the only qtest traffic in the copy
 * loop is one doorbell per batch.
 *
 * Usage: dextlab-dma-bench [--machine q35|pc] [--total MIB] [--reps N]
 *                          [--irqs N] [--min-size BYTES]
 * Needs QTEST_QEMU_BINARY (meson's benchmark() sets it).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "dextlab-dma-lib.h"

#define POOL        (64 * 1024 * 1024)  /* buffers cycled through */
#define RING        4096

static double now_s(void)
{
    return g_get_monotonic_time() / 1e6;
}

/*
 * Wait for @n completions on @r, polling shared memory only.  Sleep between
 * empty polls: on two cores a spinning poller would take CPU time from the
 * QEMU thread that does the copying.
 */
static void wait_cpls(DxlRing *r, unsigned n)
{
    struct dxl_dma_cpl c;
    gint64 deadline = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;

    while (n) {
        if (dxl_ring_peek(r, &c)) {
            if (c.status != DXL_ERR_OK) {
                g_error("completion status 0x%x", c.status);
            }
            n--;
            continue;
        }
        if (g_get_monotonic_time() > deadline) {
            g_error("timed out waiting for completions");
        }
        g_usleep(100);
    }
}

/*
 * Start both sides of a comparison with the same cold caches: the last
 * level cache is shared by QEMU's thread and ours.
 */
static void evict_caches(void)
{
    static uint8_t *junk;
    const size_t len = 128 * 1024 * 1024;

    if (!junk) {
        junk = g_malloc(len);
    }
    memset(junk, junk[len / 2] + 1, len);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return v[n / 2];
}

/* One batch of @count COPY descriptors of @size bytes; returns seconds. */
static double device_copy(DxlDev *d, DxlRing *r, uint64_t src, uint64_t dst,
                          uint32_t size, unsigned count)
{
    unsigned per = POOL / size, i;
    double t0, t;

    for (i = 0; i < count; i++) {
        uint64_t off = (uint64_t)(i % per) * size;

        dxl_ring_post(r, DXL_OP_COPY, 0, size, src + off, dst + off, i);
    }
    t0 = now_s();
    dxl_ring_kick(r);
    wait_cpls(r, count);
    t = now_s() - t0;
    dxl_ring_ack(r);
    return t;
}

/* The same copies with memcpy() in this process; returns seconds. */
static double host_copy(DxlDev *d, uint64_t src, uint64_t dst, uint32_t size,
                        unsigned count)
{
    unsigned per = POOL / size, i;
    double t0 = now_s();

    for (i = 0; i < count; i++) {
        uint64_t off = (uint64_t)(i % per) * size;

        memcpy(dxl_ptr(d, dst + off), dxl_ptr(d, src + off), size);
    }
    return now_s() - t0;
}

static void bench_copy(DxlDev *d, uint64_t total, unsigned reps,
                       uint32_t min_size)
{
    DxlRing r;
    uint64_t src = dxl_alloc(d, POOL, 4096);
    uint64_t dst = dxl_alloc(d, POOL, 4096);
    double t_dev[32], t_mem[32];
    uint32_t size;

    g_assert(reps <= ARRAY_SIZE(t_dev));
    dxl_fill_random(dxl_ptr(d, src), POOL);
    memset(dxl_ptr(d, dst), 0, POOL);
    dxl_ring_init(d, &r, 0, RING);

    printf("Copy throughput: %u runs each, device and memcpy alternating, "
           "caches evicted before each run\n", reps);
    printf("%-10s %6s | %9s %9s %6s | %9s %9s %6s\n", "", "",
           "median", "", "", "best", "", "");
    printf("%-10s %6s | %9s %9s %6s | %9s %9s %6s\n", "size", "count",
           "dev GB/s", "mem GB/s", "ratio", "dev GB/s", "mem GB/s", "ratio");
    for (size = min_size; size <= DXL_DMA_MAX_XFER; size *= 4) {
        unsigned count = MAX(MIN(total / size, RING - 1), 16);
        double bytes = (double)count * size, td, tm, bd, bm;
        unsigned k;

        for (k = 0; k < reps; k++) {
            memset(dxl_ptr(d, dst), 0, MIN(POOL, bytes));
            evict_caches();
            t_dev[k] = device_copy(d, &r, src, dst, size, count);
            if (memcmp(dxl_ptr(d, src), dxl_ptr(d, dst), MIN(POOL, bytes))) {
                g_error("device copy of %u-byte descriptors is wrong", size);
            }
            memset(dxl_ptr(d, dst), 0, MIN(POOL, bytes));
            evict_caches();
            t_mem[k] = host_copy(d, src, dst, size, count);
        }
        td = median(t_dev, reps);
        tm = median(t_mem, reps);
        bd = t_dev[0];          /* sorted by median() */
        bm = t_mem[0];
        printf("%7.*f KiB %6u | %9.2f %9.2f %6.2f | %9.2f %9.2f %6.2f\n",
               size % 1024 ? 2 : 0, size / 1024.0, count, bytes / td / 1e9,
               bytes / tm / 1e9, tm / td, bytes / bd / 1e9, bytes / bm / 1e9,
               bm / bd);
        fflush(stdout);
    }
}

/* Descriptor processing rate without payload: NOPs, one doorbell a batch. */
static void bench_nop(DxlDev *d, unsigned reps)
{
    DxlRing r;
    double t[32], t0;
    unsigned k, i;

    dxl_ring_init(d, &r, 2, RING);
    for (k = 0; k < reps; k++) {
        for (i = 0; i < RING - 1; i++) {
            dxl_ring_post(&r, DXL_OP_NOP, 0, 0, 0, 0, i);
        }
        t0 = now_s();
        dxl_ring_kick(&r);
        wait_cpls(&r, RING - 1);
        t[k] = now_s() - t0;
        dxl_ring_ack(&r);
    }
    printf("\nNOP descriptors (fetch + completion, no payload), %u per "
           "doorbell\n", RING - 1);
    printf("  median %.2f M descriptors/s (%.0f ns each)\n",
           (RING - 1) / median(t, reps) / 1e6,
           median(t, reps) / (RING - 1) * 1e9);
}

static void bench_msix(DxlDev *d, unsigned n)
{
    DxlRing r;
    uint64_t addr;
    uint32_t data;
    unsigned got = 0, posted = 0, i;
    double t0, t_irq, t_rt;

    qtest_msi_intercept(d->qts);
    dxl_msix_setup(d);
    dxl_ring_init(d, &r, 1, RING);

    t0 = now_s();
    while (posted < n) {
        unsigned batch = MIN(n - posted, 512);

        for (i = 0; i < batch; i++) {
            dxl_ring_post(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, posted++);
        }
        dxl_ring_kick(&r);
        /*
         * QEMU writes each message to the qtest socket as it is sent, so
         * keep reading: every reply brings the IRQ lines queued before it.
         */
        while (got < posted) {
            dxl_rd(d, DXL_REG_SCRATCH);
            while (qtest_msi_pop(d->qts, &addr, &data)) {
                if (data != 0x40 + DXL_DMA_VEC_QUEUE(1)) {
                    g_error("unexpected MSI data 0x%x", data);
                }
                got++;
            }
        }
        wait_cpls(&r, batch);
        dxl_ring_ack(&r);
    }
    t_irq = now_s() - t0;

    t0 = now_s();
    for (i = 0; i < n; i++) {
        dxl_rd(d, DXL_REG_SCRATCH);
    }
    t_rt = now_s() - t0;

    printf("\nMSI-X delivery (1 message per descriptor, %u messages)\n", n);
    printf("  MSI-X messages/s          %12.0f\n", n / t_irq);
    printf("  qtest round trips/s       %12.0f  (baseline, same run)\n",
           n / t_rt);
    printf("  ratio                     %12.2f\n", t_rt / t_irq);
}

int main(int argc, char **argv)
{
    bool q35 = true;
    uint64_t total = 128ULL << 20;
    unsigned irqs = 20000;
    unsigned reps = 9;
    uint32_t min_size = 4096;
    DxlDev *d;
    int i;

    g_test_init(&argc, &argv, NULL);    /* seeds g_test_rand_*() */
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--machine") && i + 1 < argc) {
            q35 = !strcmp(argv[++i], "q35");
        } else if (!strcmp(argv[i], "--total") && i + 1 < argc) {
            total = g_ascii_strtoull(argv[++i], NULL, 10) << 20;
        } else if (!strcmp(argv[i], "--min-size") && i + 1 < argc) {
            min_size = MIN(MAX(atoi(argv[++i]), 1), DXL_DMA_MAX_XFER);
        } else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = MIN(MAX(atoi(argv[++i]), 1), 32);
        } else if (!strcmp(argv[i], "--irqs") && i + 1 < argc) {
            irqs = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: %s [--machine q35|pc] [--total MIB] "
                    "[--reps N] [--irqs N] [--min-size BYTES]\n", argv[0]);
            return 2;
        }
    }
    d = dxl_start(q35);
    printf("dextlab-dma benchmark: %s, -accel qtest, unpaced, copy batches "
           "of up to %u MiB\n", dxl_machine(q35), (unsigned)(total >> 20));
    bench_copy(d, total, reps, min_size);
    bench_nop(d, reps);
    bench_msix(d, irqs);
    dxl_stop(d);
    return 0;
}
