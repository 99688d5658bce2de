/*
 * dext-platform-bench: figures for the qtest platform, each beside a
 * baseline measured in the same run (a benchmark, not a test: it reports,
 * it does not pass or fail).
 *
 *   baseline  eventfd ping-pong between two processes: round trip, and
 *             half of it as the one-way wake-up floor
 *   mmio-rd   BAR register read round trip (qtest readl + reply)
 *   post-wr   posted BAR writes per second (then one flush)
 *   msi       MSI-X delivery: a posted write to the device's INT_SET
 *             register -> the device raises vector 1 -> the fork reports
 *             "IRQ msi" -> the platform's reader thread writes the bound
 *             eventfd -> a thread blocked in read() wakes.  Timed from just
 *             before the write call to the wake-up; also the segment from
 *             the reader parsing the IRQ line to the wake-up, and an
 *             estimate of device-raise -> wake-up (total minus half an
 *             MMIO read round trip, i.e. minus the write's trip to QEMU).
 *
 * Usage: dext-platform-bench [iterations]   (QEMU from $DEXT_QEMU_BINARY)
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "platform.h"
#include "hw/dextlab/dextlab-dma-regs.h"

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

typedef struct Stats {
    double p50, p99, mean;   /* microseconds */
} Stats;

static Stats stats(uint64_t *v, size_t n)
{
    Stats s;
    double sum = 0;

    qsort(v, n, sizeof(*v), cmp_u64);
    for (size_t i = 0; i < n; i++) {
        sum += v[i];
    }
    s.p50 = v[n / 2] / 1000.0;
    s.p99 = v[(n * 99) / 100] / 1000.0;
    s.mean = sum / n / 1000.0;
    return s;
}

/* Two processes bounce a token through two eventfds. */
static Stats eventfd_pingpong(size_t n, uint64_t *buf)
{
    int a = eventfd(0, 0), b = eventfd(0, 0);
    uint64_t one = 1, v;
    pid_t pid = fork();

    if (pid == 0) {
        for (size_t i = 0; i < n + 100; i++) {
            if (read(a, &v, 8) != 8 || write(b, &one, 8) != 8) {
                _exit(1);
            }
        }
        _exit(0);
    }
    for (size_t i = 0; i < n + 100; i++) {
        uint64_t t0 = now_ns();

        if (write(a, &one, 8) != 8 || read(b, &v, 8) != 8) {
            break;
        }
        if (i >= 100) {                        /* warm-up discarded */
            buf[i - 100] = now_ns() - t0;
        }
    }
    waitpid(pid, NULL, 0);
    close(a);
    close(b);
    return stats(buf, n);
}

typedef struct Waiter {
    DextPlatform *p;
    int efd;
    int ack;                   /* tells the sender the wake-up was taken */
    size_t n;
    uint64_t *woke;            /* per message: wake-up time */
    uint64_t *seg;             /* reader parsed the line -> waiter woke */
} Waiter;

static gpointer waiter_main(gpointer opaque)
{
    Waiter *w = opaque;
    uint64_t v;

    for (size_t i = 0; i < w->n; i++) {
        if (read(w->efd, &v, 8) != 8) {
            break;
        }
        w->woke[i] = now_ns();
        {
            DextIrqStats st;
            uint64_t one = 1;

            dext_platform_irq_stats(w->p, &st);
            w->seg[i] = w->woke[i] - st.last_msi_ns;
            if (write(w->ack, &one, 8) != 8) {
                break;
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 0) : 20000;
    const char *const devs[] = {
        "pcie-root-port,id=rp0,chassis=1",
        "dextlab-dma,id=dma0,bus=rp0",
        NULL,
    };
    DextMachineDesc d = { .devices = devs, .timeout_ms = 10000 };
    DextPlatform *p;
    DextPciFunction *fns, dma = { 0 };
    size_t nf;
    uint64_t *buf = g_new(uint64_t, n), *sent = g_new(uint64_t, n);
    Stats base, rd, msi, seg = { 0 };
    double wr_rate, rd_rate;
    uint64_t t0, v;
    int r, efd;
    Waiter w;
    GThread *th;

    if (n < 200) {
        n = 200;
    }
    base = eventfd_pingpong(n, buf);

    r = dext_platform_qtest_create(&d, &p);
    if (r < 0) {
        fprintf(stderr, "create: %s\n", dext_platform_last_error(NULL));
        return 1;
    }
    if (dext_platform_pci_enumerate(p, false, &fns, &nf) < 0) {
        fprintf(stderr, "enumerate: %s\n", dext_platform_last_error(p));
        return 1;
    }
    for (size_t i = 0; i < nf; i++) {
        if (fns[i].vendor_id == DXL_PCI_VENDOR_ID) {
            dma = fns[i];
        }
    }
    g_free(fns);
    if (!dma.vendor_id) {
        fprintf(stderr, "no dextlab-dma\n");
        return 1;
    }
    dext_platform_pci_set_enables(p, dma.addr, DEXT_PCI_ENABLE_MEM |
                                  DEXT_PCI_ENABLE_BUSMASTER, true);

    /* MMIO read round trip */
    for (size_t i = 0; i < n; i++) {
        t0 = now_ns();
        if (dext_platform_bar_read(p, dma.addr, 0, DXL_REG_SCRATCH, 4, &v)) {
            fprintf(stderr, "read: %s\n", dext_platform_last_error(p));
            return 1;
        }
        buf[i] = now_ns() - t0;
    }
    rd = stats(buf, n);
    rd_rate = 1e6 / rd.mean;

    /* posted write rate: n * 5 writes, then one flush */
    t0 = now_ns();
    for (size_t i = 0; i < n * 5; i++) {
        dext_platform_bar_write(p, dma.addr, 0, DXL_REG_SCRATCH, 4, i);
    }
    r = dext_platform_flush(p);
    wr_rate = n * 5 / ((now_ns() - t0) / 1e9);
    if (r < 0) {
        fprintf(stderr, "flush: %s\n", dext_platform_last_error(p));
    }

    /* MSI-X delivery latency */
    if (!dext_platform_has_msi(p)) {
        printf("msi: the fork has no msi_intercept; skipped\n");
        memset(&msi, 0, sizeof(msi));
    } else {
        efd = eventfd(0, EFD_CLOEXEC);
        if (dext_platform_irq_bind(p, dma.addr, DEXT_IRQ_MSIX,
                                   DXL_DMA_VEC_QUEUE(0), efd, NULL) < 0) {
            fprintf(stderr, "bind: %s\n", dext_platform_last_error(p));
            return 1;
        }
        w = (Waiter){ .p = p, .efd = efd, .ack = eventfd(0, EFD_CLOEXEC),
                      .n = n, .woke = g_new0(uint64_t, n),
                      .seg = g_new0(uint64_t, n) };
        th = g_thread_new("waiter", waiter_main, &w);
        for (size_t i = 0; i < n; i++) {
            sent[i] = now_ns();
            dext_platform_bar_write(p, dma.addr, 0, DXL_REG_INT_SET, 4,
                                    DXL_INT_QUEUE(0));
            /* one message in flight at a time: block until it was taken */
            if (read(w.ack, &v, 8) != 8) {
                break;
            }
        }
        g_thread_join(th);
        for (size_t i = 0; i < n; i++) {
            buf[i] = w.woke[i] - sent[i];
        }
        msi = stats(buf, n);
        seg = stats(w.seg, n);
        g_free(w.woke);
        g_free(w.seg);
        close(w.ack);
        dext_platform_irq_unbind(p, dma.addr, DXL_DMA_VEC_QUEUE(0));
        close(efd);
    }
    dext_platform_destroy(p);

    printf("dext-platform-bench: %zu iterations, qtest backend, q35\n", n);
    printf("%-34s %9s %9s %9s\n", "", "p50 us", "p99 us", "mean us");
    printf("%-34s %9.2f %9.2f %9.2f\n", "eventfd ping-pong round trip",
           base.p50, base.p99, base.mean);
    printf("%-34s %9.2f %9.2f %9.2f\n", "eventfd one-way floor (rt/2)",
           base.p50 / 2, base.p99 / 2, base.mean / 2);
    printf("%-34s %9.2f %9.2f %9.2f\n", "MMIO read round trip",
           rd.p50, rd.p99, rd.mean);
    printf("%-34s %9.2f %9.2f %9.2f\n", "MSI-X write->eventfd wake",
           msi.p50, msi.p99, msi.mean);
    printf("%-34s %9.2f %9.2f %9.2f\n", "  of which reader line->wake",
           seg.p50, seg.p99, seg.mean);
    printf("%-34s %9.2f %9s %9s\n", "  device raise->wake (est.)",
           msi.p50 - rd.p50 / 2, "", "");
    printf("posted writes: %.0f /s  (%.1fx the read rate of %.0f /s)\n",
           wr_rate, wr_rate / rd_rate, rd_rate);
    printf("ratios: MMIO read p50 = %.1fx eventfd round trip p50\n",
           rd.p50 / base.p50);
    if (msi.p50 > 0) {
        printf("ratios: MSI p50 = %.1fx one-way floor p50, p99 = %.1fx "
               "floor p99; MSI p50 = %.2fx MMIO read p50\n",
               msi.p50 / (base.p50 / 2), msi.p99 / (base.p99 / 2),
               msi.p50 / rd.p50);
        printf("ratios: reader line->wake p50 = %.1fx floor p50, p99 = "
               "%.1fx floor p99\n", seg.p50 / (base.p50 / 2),
               seg.p99 / (base.p99 / 2));
        printf("ratios: device raise->wake (est. = total - read rt/2) p50 = "
               "%.1fx floor p50\n", (msi.p50 - rd.p50 / 2) / (base.p50 / 2));
    }
    g_free(buf);
    g_free(sent);
    return 0;
}
