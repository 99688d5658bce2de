/*
 * dextd-bench: runtime figures on the qtest platform, each beside a baseline
 * measured in the same run.  A benchmark (it reports; it does not pass or
 * fail).
 *
 *   floor     eventfd ping-pong between two processes: round trip, and half
 *             of it as the one-way wake-up floor
 *   irq       MSI-X through the whole runtime: inside the dext-test driver a
 *             posted BAR write to INT_SET (driver -> dextd -> QEMU), the
 *             device raises vector 1, the fork reports the MSI on the qtest
 *             socket, the platform's reader thread parses it and writes the
 *             eventfd, the driver's interrupt-source thread wakes and runs the
 *             handler on its queue.  Reported: doorbell -> handler (whole
 *             loop); delivery = the platform parsed the MSI line (its
 *             last_msi_ns, microsecond resolution) -> handler entry, which is
 *             "device raises MSI-X -> handler" as far as the host can see;
 *             and the last segment, eventfd read -> handler.
 *   mmio      BAR read round trip through dextd (driver -> dextd -> qtest ->
 *             back) and the posted-write rate through dextd, beside the same
 *             two measured directly on the platform layer (its own QEMU from
 *             the same machine file) in the same run: the runtime's cost.
 *
 * Usage: dextd-bench [samples]   (env DEXTD, DEXT_DRIVERS, DEXT_MACHINE as
 * for the e2e tests; meson's bench target sets them)
 */
#include "dext/client.h"
#include "daemon.h"
#include "hw/dextlab/dextlab-dma-regs.h"
#include "platform.h"

#include <errno.h>
#include <glib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double p50, p99, mean;   /* microseconds */
} Stats;

static Stats stats(uint64_t *v, size_t n)
{
    Stats s = { 0 };
    double sum = 0;
    qsort(v, n, sizeof(*v), cmp_u64);
    for (size_t i = 0; i < n; i++) {
        sum += v[i];
    }
    s.p50 = v[n / 2] / 1000.0;
    s.p99 = v[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / 1000.0;
    s.mean = sum / n / 1000.0;
    return s;
}

/* n eventfd round trips between two processes into rtt[] (ns). */
static void eventfd_rtts(uint64_t *rtt, size_t n)
{
    int a = eventfd(0, EFD_CLOEXEC), b = eventfd(0, EFD_CLOEXEC);
    uint64_t v = 1;
    pid_t pid = fork();
    if (pid == 0) {
        for (size_t i = 0; i < n + 10; i++) {
            if (read(a, &v, 8) != 8 || write(b, &v, 8) != 8) {
                _exit(1);
            }
        }
        _exit(0);
    }
    for (size_t i = 0; i < n + 10; i++) {
        uint64_t t0 = now_ns();
        if (write(a, &v, 8) != 8 || read(b, &v, 8) != 8) {
            break;
        }
        if (i >= 10) {
            rtt[i - 10] = now_ns() - t0;
        }
    }
    waitpid(pid, NULL, 0);
    close(a);
    close(b);
}

/* Raw platform figures: read RTT (us) and posted writes/s on dextlab-dma's
 * scratch register, no runtime in between. */
static int platform_mmio(const char *machine, size_t n, double *rd_us, double *wr_rate)
{
    GError *e = NULL;
    DextdMachine *m = dextd_machine_load(machine, &e);
    DextPlatform *p = NULL;
    DextPciFunction *fns = NULL;
    size_t nf = 0;
    int rc = -ENODEV;
    if (!m) {
        g_error_free(e);
        return -EINVAL;
    }
    if (dext_platform_qtest_create(dextd_machine_desc(m), &p) < 0 ||
        dext_platform_pci_enumerate(p, false, &fns, &nf) < 0) {
        goto out;
    }
    for (size_t i = 0; i < nf; i++) {
        if (fns[i].vendor_id != DXL_PCI_VENDOR_ID || fns[i].device_id != DXL_DMA_PCI_DEVICE_ID) {
            continue;
        }
        DextPciAddr a = fns[i].addr;
        uint64_t v;
        dext_platform_pci_set_enables(p, a, DEXT_PCI_ENABLE_MEM, true);
        uint64_t t0 = now_ns();
        for (size_t k = 0; k < n; k++) {
            dext_platform_bar_read(p, a, 0, DXL_REG_SCRATCH, 4, &v);
        }
        uint64_t t1 = now_ns();
        for (size_t k = 0; k < n; k++) {
            dext_platform_bar_write(p, a, 0, DXL_REG_SCRATCH, 4, k);
        }
        dext_platform_flush(p);
        uint64_t t2 = now_ns();
        *rd_us = (t1 - t0) / 1000.0 / n;
        *wr_rate = n / ((t2 - t1) / 1e9);
        rc = 0;
        break;
    }
out:
    g_free(fns);
    dext_platform_destroy(p);
    dextd_machine_free(m);
    return rc;
}

int main(int argc, char **argv)
{
    size_t samples = argc > 1 ? strtoul(argv[1], NULL, 0) : 5000;
    const char *dextd = g_getenv("DEXTD"), *drivers = g_getenv("DEXT_DRIVERS"),
               *machine = g_getenv("DEXT_MACHINE");
    if (!dextd || !drivers || !machine || samples < 100) {
        fprintf(stderr, "usage: DEXTD=... DEXT_DRIVERS=... DEXT_MACHINE=... %s [samples>=100]\n",
                argv[0]);
        return 2;
    }
    double plat_rd = 0, plat_wr = 0;
    int prc = platform_mmio(machine, 2000, &plat_rd, &plat_wr);
    char *dir = g_dir_make_tmp("dextd-bench-XXXXXX", NULL);
    char *sock = g_build_filename(dir, "dextd.sock", NULL);
    char *log = g_build_filename(dir, "dextd.log", NULL);
    char *cmd = g_strdup_printf("exec '%s' --machine '%s' --drivers '%s' --socket '%s' 2>'%s'",
                                dextd, machine, drivers, sock, log);
    char *sargv[] = { "/bin/sh", "-c", cmd, NULL };
    GPid pid;
    if (!g_spawn_async(NULL, sargv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, &pid, NULL)) {
        fprintf(stderr, "cannot start dextd\n");
        return 1;
    }
    DextConnection *c = NULL;
    int rc = -1;
    for (int i = 0; i < 300 && rc < 0; i++) {
        g_usleep(100000);
        rc = dext_client_open(sock, "class", "DextTestDriver", &c);
    }
    if (rc < 0) {
        fprintf(stderr, "cannot open DextTestDriver: %s (log %s)\n", g_strerror(-rc), log);
        kill(pid, SIGTERM);
        return 1;
    }


    /* MMIO through the daemon */
    uint64_t in = 2000, out[2];
    uint32_t nout = 2;
    rc = dext_client_call(c, 7, &in, 1, NULL, 0, out, &nout, NULL, NULL);
    double rd_us = rc ? 0 : out[0] / 1000.0 / in;
    double wr_rate = rc ? 0 : in / (out[1] / 1e9);

    /* Interrupts */
    uint64_t *tot = g_new(uint64_t, samples), *seg = g_new(uint64_t, samples),
             *dlv = g_new(uint64_t, samples), *efd = g_new(uint64_t, samples);
    size_t got = 0;
    while (got < samples) {
        uint64_t n = MIN(samples - got, 340);
        uint32_t buf[1024];
        size_t len = sizeof(buf);
        rc = dext_client_call(c, 6, &n, 1, NULL, 0, NULL, NULL, buf, &len);
        if (rc < 0) {
            fprintf(stderr, "irq bench: %s\n", g_strerror(-rc));
            break;
        }
        /* The floor is measured in chunks interleaved with the interrupt
         * samples, so both see the same machine load. */
        eventfd_rtts(efd + got, n);
        for (uint64_t i = 0; i < n; i++) {
            tot[got + i] = buf[3 * i];
            dlv[got + i] = buf[3 * i + 1];
            seg[got + i] = buf[3 * i + 2];
        }
        got += n;
    }
    dext_client_close(c);
    kill(pid, SIGTERM);
    /* MMIO through dextd was measured before the interrupts; the floor
     * for its ratio is the interleaved one below. */
    waitpid(pid, NULL, 0);

    if (!got) {
        fprintf(stderr, "no samples\n");
        return 1;
    }
    Stats floor_rtt = stats(efd, got);
    double floor_ow = floor_rtt.p50 / 2, floor_ow99 = floor_rtt.p99 / 2;
    printf("dextd-bench: %zu samples, qtest platform, dext-test driver on dextlab-dma\n", got);
    printf("  baseline eventfd ping-pong (2 processes): rtt p50 %.1f us p99 %.1f us; "
           "one-way floor p50 %.1f us p99 %.1f us\n", floor_rtt.p50, floor_rtt.p99, floor_ow,
           floor_ow99);
    printf("  mmio read round trip via dextd: %.1f us  (%.1fx floor rtt", rd_us,
           rd_us / floor_rtt.p50);
    if (prc == 0) {
        printf("; %.2fx the platform's own %.1f us", rd_us / plat_rd, plat_rd);
    }
    printf(")\n  posted writes via dextd: %.0f /s  (%.2f us each", wr_rate, 1e6 / wr_rate);
    if (prc == 0) {
        printf("; %.2fx the platform's own %.0f /s", wr_rate / plat_wr, plat_wr);
    }
    printf(")\n");
    if (got) {
        Stats t = stats(tot, got), s = stats(seg, got), dv = stats(dlv, got);
        printf("  irq doorbell -> handler (whole loop):          p50 %.1f us  p99 %.1f us  "
               "mean %.1f us\n", t.p50, t.p99, t.mean);
        printf("  irq MSI-X reaches host -> driver handler runs: p50 %.1f us (%.1fx floor p50)  "
               "p99 %.1f us (%.1fx floor p50, %.1fx floor p99)\n", dv.p50, dv.p50 / floor_ow,
               dv.p99, dv.p99 / floor_ow, dv.p99 / floor_ow99);
        printf("    of which eventfd read -> handler:            p50 %.2f us  p99 %.2f us\n",
               s.p50, s.p99);
    }
    unlink(log);
    unlink(sock);
    rmdir(dir);
    return 0;
}
