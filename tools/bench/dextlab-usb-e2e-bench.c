/*
 * dextlab-usb-e2e-bench: end-to-end figures for the USB client path on the
 * qtest platform, app -> dextlab-usb driver -> dextlab-xhci (the user-space
 * host controller dext) -> qemu-xhci -> a SuperSpeed dextlab-usb and back.
 * Not a test: it prints figures beside baselines measured in the same run
 * (it fails only if data comes back wrong or events out of order).
 *
 *   1. Bulk loopback throughput (dxu_app_loopback_bench(): each request's
 *      data checked through a stamp per 4 KiB page) of 64 KiB, 256 KiB and
 *      1 MiB requests at 1, 4 and 8 in flight (where 2 x depth x size fits
 *      the 8 MiB window), against memcpy by the app over the same working
 *      set (the OUT -> IN halves of every slot) measured right after each
 *      round.
 *   2. Interrupt-endpoint event latency: one SOFT event per
 *      DXU_UC_SEL_TRIGGER_EVENTS call; the xHCI dext completing the
 *      interrupt IN transfer (DXU_EV_T_DRIVER) -> the app holds the event,
 *      and the whole trigger call -> event in the app, beside an eventfd
 *      ping-pong between two processes (the wake-up floor) of the same run.
 *   3. CPU time per GiB looped, per process (app, dextd, QEMU, the xHCI
 *      dext, the client driver), beside memcpy's.
 *
 * The SuperSpeed device gets fifo-size=4194304 as in
 * harness/usb/tests/usb-bench.c: with the default 64 KiB FIFO the driver
 * splits a 1 MiB request into 16 OUT/IN pairs and the figure measures the
 * FIFO, not the path.  The high-speed device keeps its default.
 *
 * It starts its own dextd (env DEXTD, DEXT_XHCI_BUNDLE, DEXTLAB_USB_BUNDLE)
 * on a machine file written into its work folder.  --quick: fewer samples,
 * shorter points; --time S: seconds per point; --sizes 64K,1M --depths 1,4:
 * only those points.  MB/s are 10^6 bytes looped (OUT and back IN) per s.
 */
#include "dxu-app.h"
#include "e2e-dextd.h"
#include "bench-common.h"

#include <errno.h>
#include <glib.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BENCH_FIFO  4194304u
#define EV_REF      1u          /* the event subscription's async reference */

static struct {
    E2eDextd *d;
    const char *sock;
    char *ss_id;                /* service id of the SuperSpeed device */
} dd;

/* The running SuperSpeed service with the bench FIFO (as the tool's
 * `list` finds services), or NULL. */
static char *find_ss_service(void)
{
    char *out = NULL, *hit = NULL;
    if (dext_daemon_services(dd.sock, &out) < 0) {
        return NULL;
    }
    char **lines = g_strsplit(out, "\n", -1);
    for (char **l = lines; *l && !hit; l++) {
        char **f = g_strsplit(*l, " ", -1);
        DxuApp a;
        if (g_strv_length(f) == 7 && !strcmp(f[1], DXU_UC_CLASS) && !strcmp(f[3], "running") &&
            dxu_app_open(&a, dd.sock, "id", f[0], DXU_UC_WINDOW_MIN) == 0) {
            if (a.info[1] == DXU_SPEED_SUPER && a.info[3] == BENCH_FIFO) {
                hit = g_strdup(f[0]);
            }
            dxu_app_close(&a);
        }
        g_strfreev(f);
    }
    g_strfreev(lines);
    g_free(out);
    return hit;
}

static int start_dextd(void)
{
    const char *xhci = g_getenv("DEXT_XHCI_BUNDLE"), *usb = g_getenv("DEXTLAB_USB_BUNDLE");
    if (!g_getenv("DEXTD") || !xhci || !usb) {
        fprintf(stderr, "DEXTD, DEXT_XHCI_BUNDLE and DEXTLAB_USB_BUNDLE must be set "
                        "(meson benchmark does)\n");
        return -1;
    }
    char *dir = g_dir_make_tmp("dxu-bench-XXXXXX", NULL);
    char *machine = g_build_filename(dir, "bench.machine", NULL);
    /* harness/machines/dextlab-usb.machine, the SuperSpeed FIFO enlarged */
    char *text = g_strdup_printf(
        "[Machine]\nType=q35\nMemory=256M\nDmaMemory=128M\nTimeout=10000\n"
        "[Device rp0]\nArgs=pcie-root-port,id=rp0,chassis=1,slot=1\n"
        "[Device xhci0]\nArgs=qemu-xhci,id=xhci,bus=rp0\n"
        "[Device usbss]\nArgs=dextlab-usb,bus=xhci.0,id=usbss,fifo-size=%u\n"
        "[Device usbhs]\nArgs=dextlab-usb,bus=xhci.0,id=usbhs,superspeed=off\n", BENCH_FIFO);
    g_file_set_contents(machine, text, -1, NULL);
    g_free(text);
    /* quiet: dextd's CPU time is measured, its debug log is not */
    E2eDextdConfig cfg = {
        .name = "dextlab-usb-e2e-bench",
        .machine = machine,
        .drivers = (const char *const[]){ xhci, usb, NULL },
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
    /* the xHCI dext enumerates, then the client driver starts per device */
    for (int i = 0; i < 1000 && !dd.ss_id; i++) {
        dd.ss_id = find_ss_service();
        if (!dd.ss_id) {
            g_usleep(20000);
        }
    }
    if (!dd.ss_id) {
        fprintf(stderr, "no running SuperSpeed dextlab-usb service with a %u-byte FIFO in 20 s\n",
                BENCH_FIFO);
        e2e_dextd_free(dd.d, true);
        dd.d = NULL;
        return -1;
    }
    return 0;
}

/* failed: keep dextd's log (and name it) */
static void stop_dextd(bool failed)
{
    e2e_dextd_stop(dd.d, 10000);
    e2e_dextd_free(dd.d, failed);
    dd.d = NULL;
    g_free(dd.ss_id);
}

/* ---- processes and CPU time --------------------------------------------- */

/* ---- baselines ----------------------------------------------------------- */

/* The slot size dxu_app_loopback_bench() uses: OUT at 2*s*slot, IN after. */
static uint64_t slot_of(uint64_t size)
{
    return (size + 63) & ~63ull;
}

/* memcpy OUT -> IN half of each of @depth slots: the run's working set. */
static double memcpy_mbs(DxuApp *a, uint64_t size, unsigned depth, double secs)
{
    uint64_t bytes = 0, slot = slot_of(size);
    double t0 = bench_now_s(), t;
    unsigned r = 0;
    do {
        uint8_t *base = a->win + (uint64_t)r * 2 * slot;
        memcpy(base + slot, base, size);
        __asm__ volatile("" ::: "memory");
        bytes += size;
        r = (r + 1) % depth;
        t = bench_now_s();
    } while (t - t0 < secs);
    return (double)bytes / 1e6 / (t - t0);
}

/* ---- main ---------------------------------------------------------------- */

static uint32_t seed_next = 1;

/* One verified run; false (and a printed reason) if anything failed. */
static bool lb_run(DxuApp *a, uint64_t size, unsigned count, unsigned depth, DxuRun *r)
{
    int rc = dxu_app_loopback_bench(a, size, count, depth, seed_next, 20000, r);
    seed_next += count;
    if (rc < 0 || r->failed || r->bad_data || r->ok != count) {
        printf("  loopback %" PRIu64 " B x %u depth %u FAILED: %s, %" PRIu64 " ok, %" PRIu64
               " failed (first %s, OUT %d, IN %d), %" PRIu64 " bad data\n", size, count, depth,
               rc < 0 ? g_strerror(-rc) : "completed", r->ok, r->failed,
               r->failed ? g_strerror(-r->first_status) : "-", (int)(int64_t)r->first_out_status,
               (int)(int64_t)r->first_in_status, r->bad_data);
        return false;
    }
    return true;
}

static void size_name(char *buf, size_t n, uint64_t size)
{
    if (size >= (1 << 20) && !(size & ((1 << 20) - 1))) {
        snprintf(buf, n, "%" PRIu64 " MiB", size >> 20);
    } else if (size >= 1024 && !(size & 1023)) {
        snprintf(buf, n, "%" PRIu64 " KiB", size >> 10);
    } else {
        snprintf(buf, n, "%" PRIu64 " B", size);
    }
}

/* Event latency: one SOFT event per trigger call.  false on a lost or
 * out-of-order event or a failed call. */
static bool event_latency(DxuApp *a, unsigned n, unsigned efd_n)
{
    uint64_t next = 0;
    int rc = dxu_app_subscribe(a, EV_REF, &next);
    if (rc < 0) {
        printf("\nevents: subscribe failed: %s\n", g_strerror(-rc));
        return false;
    }
    uint64_t *trig = g_new0(uint64_t, n), *deliv = g_new0(uint64_t, n), *call = g_new0(uint64_t, n);
    unsigned got = 0, ndeliv = 0, gaps = 0, lost = 0;
    uint64_t last = 0;
    bool ok = true;
    for (unsigned i = 0; i < n && ok; i++) {
        uint64_t in[2] = { 1, i & 0xffff };
        uint64_t t0 = bench_now_ns();
        rc = dxu_app_call(a, DXU_UC_SEL_TRIGGER_EVENTS, in, 2, NULL, 0);
        uint64_t tr = bench_now_ns();
        if (rc < 0) {
            printf("\nevents: trigger %u failed: %s\n", i, g_strerror(-rc));
            ok = false;
            break;
        }
        for (;;) {
            uint64_t ref, data[16];
            int st;
            uint32_t nd;
            rc = dxu_app_wait(a, 5000, &ref, &st, data, &nd);
            uint64_t t1 = bench_now_ns();
            if (rc < 0) {
                printf("\nevents: no event %u in 5 s: %s\n", i, g_strerror(-rc));
                ok = false;
                break;
            }
            if (ref != EV_REF) {
                continue;
            }
            if (st < 0 || nd < DXU_EV_COUNT) {
                printf("\nevents: subscription ended: %s\n", g_strerror(st < 0 ? -st : EPROTO));
                ok = false;
                break;
            }
            if (got && data[DXU_EV_SEQ] != last + 1) {
                gaps++;
            }
            lost += (unsigned)data[DXU_EV_LOST];
            last = data[DXU_EV_SEQ];
            got++;
            trig[i] = t1 - t0;
            call[i] = tr - t0;
            /* the xHCI dext's completion stamp, same clock (CLOCK_MONOTONIC) */
            if (data[DXU_EV_T_DRIVER] >= t0 && data[DXU_EV_T_DRIVER] <= t1) {
                deliv[ndeliv++] = t1 - data[DXU_EV_T_DRIVER];
            }
            break;
        }
    }
    uint64_t un = EV_REF;
    if (dxu_app_call(a, DXU_UC_SEL_UNSUBSCRIBE, &un, 1, NULL, 0) == 0) {
        /* its final -ECANCELED (bounded) */
        for (int k = 0; k < 100; k++) {
            uint64_t ref, data[16];
            int st;
            if (dxu_app_wait(a, 1000, &ref, &st, data, NULL) < 0 || (ref == EV_REF && st < 0)) {
                break;
            }
        }
    }
    uint64_t f50, f99;
    bench_eventfd_floor(efd_n, &f50, &f99);
    if (got) {
        qsort(trig, got, sizeof(*trig), bench_cmp_u64);
        qsort(call, got, sizeof(*call), bench_cmp_u64);
        printf("\ninterrupt-endpoint events through the runtime (SuperSpeed device, one SOFT event"
               " per trigger, %u events, %u sequence gaps, %u lost by the device):\n",
               got, gaps, lost);
        if (ndeliv) {
            qsort(deliv, ndeliv, sizeof(*deliv), bench_cmp_u64);
            uint64_t p50 = deliv[ndeliv / 2], p99 = deliv[ndeliv * 99 / 100];
            printf("  xHCI dext completes the interrupt IN -> event in the app: p50 %.1f us  "
                   "p99 %.1f us   (%.1fx / %.1fx the eventfd floor)\n", p50 / 1e3, p99 / 1e3,
                   f50 ? (double)p50 / (double)f50 : 0.0, f99 ? (double)p99 / (double)f99 : 0.0);
        }
        printf("  trigger call -> event in the app: p50 %.1f us  p99 %.1f us\n",
               trig[got / 2] / 1e3, trig[got * 99 / 100] / 1e3);
        printf("  trigger call alone (control request app -> device -> app): p50 %.1f us  "
               "p99 %.1f us\n", call[got / 2] / 1e3, call[got * 99 / 100] / 1e3);
    }
    printf("  eventfd ping-pong one way (same run): p50 %.1f us  p99 %.1f us\n", f50 / 1e3,
           f99 / 1e3);
    g_free(trig);
    g_free(deliv);
    g_free(call);
    return ok && got == n && !gaps && !lost;
}

int main(int argc, char **argv)
{
    gboolean quick = FALSE;
    char *sizes_arg = NULL, *depths_arg = NULL;
    /* 1.5 s: rounds of 0.2 s (0.6 s a point) swung 0.08-0.11x at 1 MiB x 4
     * where 1 s rounds gave 0.106-0.109x on the same quiet host */
    double secs = 1.5;
    GOptionEntry entries[] = {
        { "quick", 0, 0, G_OPTION_ARG_NONE, &quick, "fewer samples, shorter points", NULL },
        { "time", 't', 0, G_OPTION_ARG_DOUBLE, &secs, "seconds per point (1.5)", "S" },
        { "sizes", 0, 0, G_OPTION_ARG_STRING, &sizes_arg, "only these request sizes", "64K,1M" },
        { "depths", 0, 0, G_OPTION_ARG_STRING, &depths_arg, "only these depths", "1,4" },
        { NULL },
    };
    GOptionContext *ctx = g_option_context_new("- dextlab-usb end-to-end benchmark");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, NULL)) {
        return 2;
    }
    g_option_context_free(ctx);
    if (quick) {
        secs = MIN(secs, 0.3);
    }
    uint64_t sizes[8] = { 64 << 10, 256 << 10, 1 << 20 }, dsel[8] = { 1, 4, 8 };
    unsigned nsizes = 3, ndepths = 3;
    if (sizes_arg && !bench_parse_sizes(sizes_arg, sizes, &nsizes, G_N_ELEMENTS(sizes))) {
        fprintf(stderr, "bad --sizes %s\n", sizes_arg);
        return 2;
    }
    if (depths_arg && !bench_parse_sizes(depths_arg, dsel, &ndepths, G_N_ELEMENTS(dsel))) {
        fprintf(stderr, "bad --depths %s\n", depths_arg);
        return 2;
    }
    for (unsigned i = 0; i < nsizes; i++) {
        if (sizes[i] > DXU_UC_XFER_MAX) {
            fprintf(stderr, "--sizes: at most %u bytes per request\n", DXU_UC_XFER_MAX);
            return 2;
        }
    }
    for (unsigned i = 0; i < ndepths; i++) {
        if (dsel[i] > DXU_UC_MAX_INFLIGHT) {
            fprintf(stderr, "--depths: at most %u in flight\n", DXU_UC_MAX_INFLIGHT);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (start_dextd() < 0) {
        return 1;
    }
    DxuApp a;
    int rc = dxu_app_open(&a, dd.sock, "id", dd.ss_id, DXU_UC_WINDOW_MAX);
    if (rc < 0) {
        fprintf(stderr, "open service %s: %s\n", dd.ss_id, g_strerror(-rc));
        stop_dextd(true);
        return 1;
    }
    GPid dpid = e2e_dextd_pid(dd.d);
    int qemu_pid = bench_child_named(dpid, "qemu-system-x86_64", true);
    int xhci_pid = bench_child_named(dpid, "dextlab-xhci", true);
    int drv_pid = bench_child_named(dpid, "dextlab-usb", true);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    double load[3] = { 0 };
    getloadavg(load, 3);
    printf("# dextlab-usb end to end (qtest platform: app -> dextlab-usb -> dextlab-xhci -> "
           "qemu-xhci), %ld CPUs, load %.2f at start, %.2f s per point\n", ncpu, load[0], secs);
    printf("# service %s: speed %" PRIu64 " (SuperSpeed), FIFO %" PRIu64 " bytes, bulk mps %"
           PRIu64 ", window %" PRIu64 " bytes; MB/s = 10^6 bytes looped OUT and back IN per s\n",
           dd.ss_id, a.info[1], a.info[3], a.info[5], a.wsize);
    bool bad = false;

    /* 1. throughput */
    printf("\n%-9s %5s %12s %13s %7s %10s\n", "size", "depth", "e2e MB/s", "memcpy MB/s",
           "ratio", "req/s");
    for (unsigned si = 0; si < nsizes; si++) {
        for (unsigned di = 0; di < ndepths; di++) {
            uint64_t size = sizes[si];
            unsigned depth = (unsigned)dsel[di];
            char sz[32];
            size_name(sz, sizeof(sz), size);
            if (2 * depth * slot_of(size) > a.wsize) {
                printf("%-9s %5u   skipped: 2 x depth x size > the %" PRIu64 " MiB window\n", sz,
                       depth, a.wsize >> 20);
                continue;
            }
            /* warm-up and calibration: a round lasts about secs / 3 */
            DxuRun r;
            if (!lb_run(&a, size, 2 * depth, depth, &r)) {
                bad = true;
                continue;
            }
            double per_s = r.ns ? (double)r.ok / ((double)r.ns / 1e9) : 1;
            unsigned count = (unsigned)MIN(MAX(per_s * secs / 3, 2.0 * depth), 200000.0);
            /* Three alternating rounds of (loopback, memcpy), medians of
             * each: a busy machine shifts both sides of a round alike. */
            double m[3], c[3];
            uint64_t ok = 0, ns = 0;
            bool failed = false;
            for (int k = 0; k < 3 && !failed; k++) {
                if (!lb_run(&a, size, count, depth, &r)) {
                    failed = true;
                    break;
                }
                m[k] = (double)r.bytes / 1e6 / ((double)r.ns / 1e9);
                ok += r.ok;
                ns += r.ns;
                c[k] = memcpy_mbs(&a, size, depth, secs / 6);
            }
            if (failed) {
                bad = true;
                continue;
            }
            qsort(m, 3, sizeof(double), bench_cmp_double);
            qsort(c, 3, sizeof(double), bench_cmp_double);
            printf("%-9s %5u %12.1f %13.1f %7.3f %10.0f\n", sz, depth, m[1], c[1], m[1] / c[1],
                   (double)ok / ((double)ns / 1e9));
            fflush(stdout);
        }
    }

    /* 2. event latency */
    if (!event_latency(&a, quick ? 300 : 2000, quick ? 1000 : 5000)) {
        bad = true;
    }

    /* 3. CPU time per GiB (1 MiB loopbacks, depth 4) */
    {
        double c_app = bench_self_cpu_s(), c_dd = bench_proc_cpu_s(dpid), c_q = bench_proc_cpu_s(qemu_pid),
               c_x = bench_proc_cpu_s(xhci_pid), c_drv = bench_proc_cpu_s(drv_pid);
        double t0 = bench_now_s(), want = MAX(secs * 4, 1.5);
        uint64_t bytes = 0;
        DxuRun r;
        bool ok = true;
        while (ok && bench_now_s() - t0 < want) {
            ok = lb_run(&a, 1 << 20, 32, 4, &r);
            bytes += r.bytes;
        }
        double gib = (double)bytes / (1 << 30), took = bench_now_s() - t0;
        c_app = bench_self_cpu_s() - c_app;
        c_dd = bench_proc_cpu_s(dpid) - c_dd;
        c_q = bench_proc_cpu_s(qemu_pid) - c_q;
        c_x = bench_proc_cpu_s(xhci_pid) - c_x;
        c_drv = bench_proc_cpu_s(drv_pid) - c_drv;
        double m0 = bench_self_cpu_s(), w0 = bench_now_s();
        uint64_t mbytes = 0, slot = slot_of(1 << 20);
        while (bench_now_s() - w0 < 1.0) {
            uint8_t *base = a.win + (mbytes >> 20) % 4 * 2 * slot;
            memcpy(base + slot, base, 1 << 20);
            __asm__ volatile("" ::: "memory");
            mbytes += 1 << 20;
        }
        double mcpu = (bench_self_cpu_s() - m0) / ((double)mbytes / (1 << 30));
        if (!ok) {
            bad = true;
        } else if (gib > 0) {
            printf("\nCPU time per GiB looped (1 MiB loopbacks, depth 4, %.2f GiB in %.1f s):\n",
                   gib, took);
            printf("  app %.3f s  dextd %.3f s  QEMU %.3f s  xhci %.3f s  driver %.3f s  "
                   "total %.3f s\n", c_app / gib, c_dd / gib, c_q / gib, c_x / gib, c_drv / gib,
                   (c_app + c_dd + c_q + c_x + c_drv) / gib);
            if (qemu_pid < 0 || xhci_pid < 0 || drv_pid < 0) {
                printf("  (not found, counted as 0: %s%s%s)\n", qemu_pid < 0 ? "QEMU " : "",
                       xhci_pid < 0 ? "xhci " : "", drv_pid < 0 ? "driver" : "");
            }
            printf("  memcpy by the app (same run): %.3f s per GiB\n", mcpu);
        }
    }
    getloadavg(load, 3);
    printf("\n# load %.2f at end%s\n", load[0], bad ? "; FAILED: see above" : "");
    dxu_app_close(&a);
    stop_dextd(bad);
    g_free(sizes_arg);
    g_free(depths_arg);
    return bad ? 1 : 0;
}
