/*
 * dextlab-dma-e2e-bench: end-to-end figures for the dextlab-dma driver,
 * app -> driver -> device -> driver -> app, on the qtest platform.  Not a
 * test: it prints figures beside baselines measured in the same run.
 *
 *   1. Throughput of COPY requests of 4 KiB .. 16 MiB at queue depth
 *      1 .. 64 (requests in flight, spread over min(depth, 8) queues),
 *      against memcpy by the app over the same buffers (same working set)
 *      measured right after each point.
 *   2. Interrupt-to-completion latency: the driver's interrupt source sees
 *      the MSI-X message -> the app holds the completion (p50/p99), and the
 *      whole request round trip at depth 1, beside an eventfd ping-pong
 *      between two processes (the wake-up floor).
 *   3. CPU time per GiB moved, per process (app, driver, dextd, QEMU),
 *      beside memcpy's.
 *
 * It starts its own dextd (env DEXTD, DEXTLAB_DMA_BUNDLE) on a one-device
 * q35 machine.  --data FILE writes the throughput table for gnuplot
 * (tools/bench/dextlab-dma-e2e-bench.gp).  --quick: fewer points;
 * --sizes 1M,4M --depths 4,16: only those points (e.g. for a profile).
 * Requests go through the submission ring (dextlab-dma-uc.h); --no-ring
 * sends them as posted batch calls instead, for comparison.  --split: QEMU
 * on the last CPU this process may use (the machine file's EmulatorCpus=),
 * this app, dextd and the driver on the others (their affinity, which
 * dextd and the driver inherit): wake-ups between app and driver stay on
 * one CPU and the emulator's copy loop has its own.
 */
#include "dxl-app.h"
#include "e2e-dextd.h"
#include "bench-common.h"

#include <errno.h>
#include <glib.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static struct {
    E2eDextd *d;
    const char *sock;
} dd;

/* --split: our CPUs while driving the device (rest) and all of them (all) */
static struct {
    bool on;
    cpu_set_t all, rest;
} pl;

/* The memcpy baselines run on every CPU we may use, as without --split:
 * the split must not lower the baseline it is compared with (dextd's
 * clock thread shares the app's CPU there). */
static void baseline_begin(void)
{
    if (pl.on) {
        sched_setaffinity(0, sizeof(pl.all), &pl.all);
    }
}

static void baseline_end(void)
{
    if (pl.on) {
        sched_setaffinity(0, sizeof(pl.rest), &pl.rest);
    }
}

/* --split: pl.rest = our CPUs minus the last one, *emu = the last.  False
 * when we may use fewer than two CPUs. */
static bool split_cpus(int *emu)
{
    if (sched_getaffinity(0, sizeof(pl.all), &pl.all) < 0 || CPU_COUNT(&pl.all) < 2) {
        return false;
    }
    pl.rest = pl.all;
    for (int c = CPU_SETSIZE - 1; c >= 0; c--) {
        if (CPU_ISSET(c, &pl.all)) {
            *emu = c;
            CPU_CLR(c, &pl.rest);
            return true;
        }
    }
    return false;
}

/* @emu_cpu >= 0: the machine's EmulatorCpus= */
static int start_dextd(int emu_cpu)
{
    const char *bundle = g_getenv("DEXTLAB_DMA_BUNDLE");
    if (!g_getenv("DEXTD") || !bundle) {
        fprintf(stderr, "DEXTD and DEXTLAB_DMA_BUNDLE must be set (meson benchmark does)\n");
        return -1;
    }
    char *dir = g_dir_make_tmp("dxl-bench-XXXXXX", NULL);
    char *machine = g_build_filename(dir, "bench.machine", NULL);
    char *pin = emu_cpu >= 0 ? g_strdup_printf("EmulatorCpus=%d\n", emu_cpu) : g_strdup("");
    char *text = g_strdup_printf("[Machine]\nType=q35\nMemory=1G\nDmaMemory=600M\nTimeout=20000\n"
                                 "%s"
                                 "[Device rp0]\nArgs=pcie-root-port,id=rp0,chassis=1,slot=1\n"
                                 "[Device dma0]\nArgs=dextlab-dma,id=dma0,bus=rp0\n", pin);
    g_file_set_contents(machine, text, -1, NULL);
    g_free(text);
    g_free(pin);
    /* quiet: dextd's CPU time is measured, its debug log is not */
    E2eDextdConfig cfg = {
        .name = "dextlab-dma-e2e-bench",
        .machine = machine,
        .drivers = (const char *const[]){ bundle, NULL },
        .dir = dir,
        .quiet = true,
    };
    GError *e = NULL;
    dd.d = e2e_dextd_start(&cfg, &e);
    g_free(machine);
    g_free(dir);
    if (!dd.d) {
        fprintf(stderr, "cannot start dextd: %s\n", e->message);
        g_error_free(e);
        return -1;
    }
    dd.sock = e2e_dextd_socket(dd.d);
    /* the driver starts after the socket appears */
    for (int i = 0; i < 300; i++) {
        char *out = NULL;
        bool up = dext_daemon_services(dd.sock, &out) == 0 && strstr(out, " running ");
        g_free(out);
        if (up) {
            return 0;
        }
        g_usleep(20000);
    }
    fprintf(stderr, "driver did not start\n");
    e2e_dextd_free(dd.d, true);
    dd.d = NULL;
    return -1;
}

/* failed: keep dextd's log (and name it) */
static void stop_dextd(bool failed)
{
    e2e_dextd_stop(dd.d, 10000);
    e2e_dextd_free(dd.d, failed);
    dd.d = NULL;
}

/* ---- processes and CPU time --------------------------------------------- */

/* memcpy over the same regions the DMA job used (src -> dst of each). */
static double memcpy_mibs(DxlApp *a, uint64_t size, unsigned regions, double secs)
{
    uint64_t bytes = 0;
    baseline_begin();
    double t0 = bench_now_s(), t;
    unsigned r = 0;
    do {
        uint8_t *base = a->win + (uint64_t)r * 2 * size;
        memcpy(base + size, base, size);
        __asm__ volatile("" ::: "memory");
        bytes += size;
        r = (r + 1) % regions;
        t = bench_now_s();
    } while (t - t0 < secs);
    baseline_end();
    return (double)bytes / (1 << 20) / (t - t0);
}

/* ---- main ---------------------------------------------------------------- */

static void job_for(DxlJob *j, uint64_t size, unsigned depth)
{
    memset(j, 0, sizeof(*j));
    j->op = DXL_UC_OP_COPY;
    j->size = size;
    j->nq = MIN(depth, 8u);
    j->depth = depth / j->nq;
    for (unsigned q = 0; q < j->nq; q++) {
        j->qs[q] = q;
    }
    j->count = 1;
}

int main(int argc, char **argv)
{
    gboolean quick = FALSE, no_ring = FALSE, split = FALSE;
    char *data_path = NULL, *sizes_arg = NULL, *depths_arg = NULL;
    double secs = 0.4;
    GOptionEntry entries[] = {
        { "quick", 0, 0, G_OPTION_ARG_NONE, &quick, "fewer points, shorter runs", NULL },
        { "data", 0, 0, G_OPTION_ARG_FILENAME, &data_path, "throughput table for gnuplot", "FILE" },
        { "time", 't', 0, G_OPTION_ARG_DOUBLE, &secs, "seconds per point (0.4)", "S" },
        { "sizes", 0, 0, G_OPTION_ARG_STRING, &sizes_arg, "only these request sizes", "4K,1M" },
        { "depths", 0, 0, G_OPTION_ARG_STRING, &depths_arg, "only these depths", "4,16" },
        { "no-ring", 0, 0, G_OPTION_ARG_NONE, &no_ring, "posted batch calls, no ring", NULL },
        { "split", 0, 0, G_OPTION_ARG_NONE, &split, "QEMU on a CPU of its own, the rest on the others", NULL },
        { NULL },
    };
    GOptionContext *ctx = g_option_context_new("- dextlab-dma end-to-end benchmark");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, NULL)) {
        return 2;
    }
    g_option_context_free(ctx);
    if (quick) {
        secs = MIN(secs, 0.2);
    }
    signal(SIGPIPE, SIG_IGN);
    int emu_cpu = -1;
    if (split && !split_cpus(&emu_cpu)) {
        fprintf(stderr, "--split needs two CPUs: running without it\n");
        split = FALSE;
    }
    /* before dextd starts: it and the driver inherit the set */
    if (split && sched_setaffinity(0, sizeof(pl.rest), &pl.rest) < 0) {
        fprintf(stderr, "--split: %s: running without it\n", g_strerror(errno));
        split = FALSE;
        emu_cpu = -1;
    }
    pl.on = split;
    if (start_dextd(emu_cpu) < 0) {
        return 1;
    }
    DxlApp a;
    int rc = dxl_app_open(&a, dd.sock, "class", DXL_UC_CLASS, 1 << 20);
    if (rc < 0) {
        fprintf(stderr, "open: %s\n", g_strerror(-rc));
        stop_dextd(true);
        return 1;
    }
    if (!no_ring && (rc = dxl_app_ring_attach(&a, 1)) < 0) {
        fprintf(stderr, "submission ring: %s\n", g_strerror(-rc));
        dxl_app_close(&a);
        stop_dextd(true);
        return 1;
    }
    int drv_pid = bench_child_named(e2e_dextd_pid(dd.d), "dextlab-dma", false);
    int qemu_pid = bench_child_named(e2e_dextd_pid(dd.d), "qemu-system", false);
    char host[256] = "";
    gethostname(host, sizeof(host));
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double load[3] = { 0 };
    getloadavg(load, 3);
    printf("# dextlab-dma end to end (qtest platform), %ld CPUs, load %.2f at start, "
           "%.2f s per point, %s, %s\n", ncpu, load[0], secs,
           no_ring ? "posted batch calls" : "submission ring",
           split ? "split placement (QEMU on its own CPU)" : "default placement");

    /* 1. throughput */
    static const uint64_t sizes_all[] = { 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20,
                                          4 << 20, 16 << 20 };
    static const uint64_t sizes_quick[] = { 4 << 10, 64 << 10, 1 << 20, 16 << 20 };
    static const unsigned depths_all[] = { 1, 4, 16, 64 };
    const uint64_t *sizes = quick ? sizes_quick : sizes_all;
    unsigned nsizes = quick ? G_N_ELEMENTS(sizes_quick) : G_N_ELEMENTS(sizes_all);
    uint64_t sizes_sel[16], depths_sel[G_N_ELEMENTS(depths_all)];
    unsigned depths[G_N_ELEMENTS(depths_all)], ndepths = G_N_ELEMENTS(depths_all);
    memcpy(depths, depths_all, sizeof(depths));
    if (sizes_arg) {
        if (!bench_parse_sizes(sizes_arg, sizes_sel, &nsizes, G_N_ELEMENTS(sizes_sel))) {
            fprintf(stderr, "bad --sizes %s\n", sizes_arg);
            return 2;
        }
        sizes = sizes_sel;
    }
    if (depths_arg) {
        if (!bench_parse_sizes(depths_arg, depths_sel, &ndepths, G_N_ELEMENTS(depths_sel))) {
            fprintf(stderr, "bad --depths %s\n", depths_arg);
            return 2;
        }
        for (unsigned i = 0; i < ndepths; i++) {
            depths[i] = (unsigned)MIN(depths_sel[i], 64u);
        }
    }
    FILE *df = data_path ? fopen(data_path, "w") : NULL;
    GString *rows[G_N_ELEMENTS(depths_all)];
    for (unsigned di = 0; di < ndepths; di++) {
        rows[di] = g_string_new(NULL);
    }
    printf("\n%-9s %5s %12s %13s %7s %10s\n", "size", "depth", "e2e MiB/s", "memcpy MiB/s",
           "ratio", "req/s");
    for (unsigned si = 0; si < nsizes; si++) {
        for (unsigned di = 0; di < ndepths; di++) {
            /* Three alternating rounds of (driver, memcpy), medians of each:
             * a busy machine shifts both sides of a round alike. */
            DxlJob j;
            DxlResult r;
            double m[3], c[3];
            uint64_t ok = 0, ns = 0;
            bool failed = false;
            job_for(&j, sizes[si], depths[di]);
            j.min_ns = (uint64_t)(secs / 3 * 1e9);
            unsigned regions = (unsigned)MIN((uint64_t)j.nq * j.depth,
                                             DXL_UC_WINDOW_MAX / (2 * sizes[si]));
            for (int k = 0; k < 3 && !failed; k++) {
                if ((rc = dxl_app_job(&a, &j, &r)) < 0 || r.failed || r.first_status) {
                    printf("%-9" PRIu64 " %5u  failed: %s\n", sizes[si], depths[di],
                           g_strerror(rc < 0 ? -rc : -r.first_status));
                    failed = true;
                } else {
                    m[k] = (double)r.bytes / (1 << 20) / ((double)r.ns / 1e9);
                    ok += r.ok;
                    ns += r.ns;
                    c[k] = memcpy_mibs(&a, sizes[si], regions, secs / 6);
                }
                dxl_result_clear(&r);
            }
            if (failed) {
                continue;
            }
            qsort(m, 3, sizeof(double), bench_cmp_double);
            qsort(c, 3, sizeof(double), bench_cmp_double);
            double mibs = m[1], base = c[1];
            r.ok = ok;
            r.ns = ns;
            double reqs = (double)r.ok / ((double)r.ns / 1e9);
            char sz[32];
            if (sizes[si] >= (1 << 20)) {
                snprintf(sz, sizeof(sz), "%" PRIu64 " MiB", sizes[si] >> 20);
            } else {
                snprintf(sz, sizeof(sz), "%" PRIu64 " KiB", sizes[si] >> 10);
            }
            printf("%-9s %5u %12.1f %13.1f %7.3f %10.0f\n", sz, depths[di], mibs, base,
                   mibs / base, reqs);
            fflush(stdout);
            g_string_append_printf(rows[di], "%" PRIu64 " %u %.1f %.1f %.4f %.0f\n", sizes[si],
                                   depths[di], mibs, base, mibs / base, reqs);
        }
    }
    /* one gnuplot data block (index) per depth */
    for (unsigned di = 0; di < ndepths; di++) {
        if (df) {
            fprintf(df, "# depth %u: size_bytes depth e2e_MiBs memcpy_MiBs ratio req_per_s\n%s\n\n",
                    depths[di], rows[di]->str);
        }
        g_string_free(rows[di], TRUE);
    }
    if (df) {
        fclose(df);
    }

    /* 2. latency at depth 1, 4 KiB */
    {
        DxlJob j;
        DxlResult r;
        job_for(&j, 4096, 1);
        j.count = quick ? 500 : 3000;
        uint64_t t0 = dxl_now_ns();
        rc = dxl_app_job(&a, &j, &r);
        uint64_t total = dxl_now_ns() - t0;
        uint64_t f50, f99;
        bench_eventfd_floor(quick ? 500 : 3000, &f50, &f99);
        if (rc == 0 && r.nlat) {
            uint64_t p50 = dxl_result_lat_pct(&r, 50), p99 = dxl_result_lat_pct(&r, 99);
            printf("\ninterrupt -> completion in the app (4 KiB, depth 1, %" PRIu64 " requests):\n"
                   "  p50 %.1f us  p99 %.1f us   (%.1fx / %.1fx the eventfd floor)\n",
                   r.nlat, p50 / 1e3, p99 / 1e3, (double)p50 / (double)f50,
                   (double)p99 / (double)f99);
            printf("  request round trip app -> device -> app: mean %.1f us\n",
                   (double)total / 1e3 / (double)r.ok);
            printf("  eventfd ping-pong one way (same run): p50 %.1f us  p99 %.1f us\n",
                   f50 / 1e3, f99 / 1e3);
        }
        dxl_result_clear(&r);
    }

    /* 3. CPU time per GiB (1 MiB requests, depth 16) */
    {
        DxlJob j;
        DxlResult r;
        job_for(&j, 1 << 20, 16);
        j.min_ns = (uint64_t)(MAX(secs * 4, 1.0) * 1e9);
        double c_app = bench_self_cpu_s(), c_drv = bench_proc_cpu_s(drv_pid), c_dd = bench_proc_cpu_s(e2e_dextd_pid(dd.d)),
               c_q = bench_proc_cpu_s(qemu_pid);
        rc = dxl_app_job(&a, &j, &r);
        double gib = (double)r.bytes / (1 << 30);
        c_app = bench_self_cpu_s() - c_app;
        c_drv = bench_proc_cpu_s(drv_pid) - c_drv;
        c_dd = bench_proc_cpu_s(e2e_dextd_pid(dd.d)) - c_dd;
        c_q = bench_proc_cpu_s(qemu_pid) - c_q;
        baseline_begin();
        double m0 = bench_self_cpu_s(), w0 = bench_now_s();
        unsigned regions = 16;
        uint64_t bytes = 0;
        while (bench_now_s() - w0 < 1.0) {
            uint8_t *base = a.win + (uint64_t)(bytes >> 20) % regions * (2 << 20);
            memcpy(base + (1 << 20), base, 1 << 20);
            __asm__ volatile("" ::: "memory");
            bytes += 1 << 20;
        }
        double mcpu = (bench_self_cpu_s() - m0) / ((double)bytes / (1 << 30));
        baseline_end();
        if (rc == 0 && gib > 0) {
            printf("\nCPU time per GiB moved (1 MiB COPY, depth 16, %.2f GiB):\n", gib);
            printf("  app %.3f s  driver %.3f s  dextd %.3f s  QEMU %.3f s  total %.3f s\n",
                   c_app / gib, c_drv / gib, c_dd / gib, c_q / gib,
                   (c_app + c_drv + c_dd + c_q) / gib);
            printf("  memcpy by the app (same run): %.3f s per GiB\n", mcpu);
        }
        dxl_result_clear(&r);
    }
    getloadavg(load, 3);
    printf("\n# load %.2f at end\n", load[0]);
    dxl_app_close(&a);
    stop_dextd(false);
    g_free(data_path);
    g_free(sizes_arg);
    g_free(depths_arg);
    return 0;
}
