/*
 * dextlab-dma-tool: command-line client of the dextlab-dma driver, through
 * a running dextd (its socket: -S or $DEXTD_SOCKET).
 *
 *   dextlab-dma-tool [-S SOCK] [-D SERVICE-ID] COMMAND [options]
 *     copy|fill|crc  [-q QUEUE|all] [-s SIZE] [-n COUNT] [-d DEPTH] [-p PATTERN]
 *                    [--no-verify] [--keep-going] [--progress] [--no-ring]
 *     bench          [-q QUEUE|all] [-s SIZES] [-d DEPTHS] [-t SECONDS] [--no-ring]
 *     stats | errors | reset | info
 *     diag           [-q QUEUE] [--unmapped]   make the device fail a descriptor
 *
 * Requests go through the connection's submission ring (no message per
 * request while the driver is busy with ours); --no-ring sends them as
 * posted batch calls.  Sizes take K/M/G suffixes; lists are comma separated.  Exit status: 0 on
 * success, 1 when a request failed or data did not verify, 2 on bad usage,
 * 3 when the driver could not be reached.
 */
#include "dxl-app.h"

#include <errno.h>
#include <glib.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    uint64_t v = g_ascii_strtoull(s, &end, 0);
    uint64_t mul = 1;
    if (errno || end == s) {
        return false;
    }
    switch (g_ascii_toupper(*end)) {
    case 'K': mul = 1ull << 10; end++; break;
    case 'M': mul = 1ull << 20; end++; break;
    case 'G': mul = 1ull << 30; end++; break;
    }
    if (*end == 'i' || *end == 'B') {
        end += *end == 'i' ? (end[1] == 'B' ? 2 : 1) : 1;
    }
    if (*end || v > UINT64_MAX / mul) {
        return false;
    }
    *out = v * mul;
    return true;
}

static bool parse_list(const char *s, uint64_t *v, unsigned max, unsigned *n)
{
    char **parts = g_strsplit(s, ",", -1);
    bool ok = true;
    *n = 0;
    for (char **p = parts; *p && ok; p++) {
        ok = *n < max && parse_size(*p, &v[(*n)++]);
    }
    g_strfreev(parts);
    return ok && *n > 0;
}

static void human(double bytes, char *buf, size_t n)
{
    const char *u[] = { "B", "KiB", "MiB", "GiB" };
    int i = 0;
    while (bytes >= 1024 && i < 3) {
        bytes /= 1024;
        i++;
    }
    snprintf(buf, n, "%.4g %s", bytes, u[i]);
}

static void print_stats(const struct dxl_uc_stats *s)
{
    printf("device: descriptors %" PRIu64 " bytes %" PRIu64 " errors %" PRIu64 " irqs %" PRIu64
           " doorbells %" PRIu64 "\n", s->dev_desc, s->dev_bytes, s->dev_errors, s->dev_irqs,
           s->dev_doorbells);
    printf("driver: admin irqs %" PRIu64 " error-log entries %" PRIu64 " (lost %" PRIu64
           ") resets %" PRIu64 "\n", s->irqs_admin, s->errlog_entries, s->errlog_overflow,
           s->resets);
    printf("submission rings: taken %" PRIu64 " refused %" PRIu64 " kicks %" PRIu64
           " looks after a completion %" PRIu64 "\n", s->ring_taken, s->ring_refused,
           s->ring_kicks, s->ring_drains);
    printf("%-3s %10s %10s %8s %14s %10s %10s %8s %10s %10s %9s %6s\n", "q", "requests", "ok",
           "failed", "bytes", "descs", "cpls", "cpl-err", "irqs", "handlers", "doorbells", "halts");
    for (unsigned i = 0; i < s->num_queues && i < DXL_UC_NUM_QUEUES; i++) {
        const struct dxl_uc_queue_stats *q = &s->q[i];
        printf("%-3u %10" PRIu64 " %10" PRIu64 " %8" PRIu64 " %14" PRIu64 " %10" PRIu64
               " %10" PRIu64 " %8" PRIu64 " %10" PRIu64 " %10" PRIu64 " %9" PRIu64 " %6" PRIu64
               "\n", i, q->requests, q->req_ok, q->req_failed, q->bytes, q->descs,
               q->completions, q->cpl_errors, q->irqs, q->irq_calls, q->doorbells, q->halts);
    }
}

static double memcpy_mibs(DxlApp *a, uint64_t size, unsigned regions, uint64_t min_ns)
{
    /* Same-run baseline: the CPU copying the same buffers the job used
     * (region r: src at r * 2 * size, dst right after), so both sides see
     * the same working set and caches. */
    uint64_t bytes = 0, t0 = dxl_now_ns(), t;
    unsigned r = 0;
    do {
        uint8_t *base = a->win + (uint64_t)r * 2 * size;
        memcpy(base + size, base, size);
        __asm__ volatile("" ::: "memory");
        bytes += size;
        r = (r + 1) % regions;
        t = dxl_now_ns();
    } while (t - t0 < min_ns);
    return (double)bytes / (1 << 20) / ((double)(t - t0) / 1e9);
}

int main(int argc, char **argv)
{
    char *sock = NULL, *dev = NULL, *queue = NULL, *size_s = NULL, *depth_s = NULL;
    char *pattern_s = NULL;
    gint64 count = 0;
    double seconds = 0.5;
    gboolean no_verify = FALSE, keep_going = FALSE, progress = FALSE, unmapped = FALSE;
    gboolean no_ring = FALSE;
    GOptionEntry entries[] = {
        { "socket", 'S', 0, G_OPTION_ARG_FILENAME, &sock, "dextd socket ($DEXTD_SOCKET)", "PATH" },
        { "device", 'D', 0, G_OPTION_ARG_STRING, &dev, "service registry id (several devices)", "ID" },
        { "queue", 'q', 0, G_OPTION_ARG_STRING, &queue, "queue number or 'all' (default all)", "Q" },
        { "size", 's', 0, G_OPTION_ARG_STRING, &size_s, "request size(s)", "SIZE[,SIZE]" },
        { "count", 'n', 0, G_OPTION_ARG_INT64, &count, "requests (default 64)", "N" },
        { "depth", 'd', 0, G_OPTION_ARG_STRING, &depth_s, "requests in flight per queue", "D[,D]" },
        { "pattern", 'p', 0, G_OPTION_ARG_STRING, &pattern_s, "fill pattern (64-bit)", "X" },
        { "time", 't', 0, G_OPTION_ARG_DOUBLE, &seconds, "bench: seconds per point (0.5)", "S" },
        { "no-verify", 0, 0, G_OPTION_ARG_NONE, &no_verify, "do not check data", NULL },
        { "keep-going", 'k', 0, G_OPTION_ARG_NONE, &keep_going, "go on after a failure", NULL },
        { "progress", 'P', 0, G_OPTION_ARG_NONE, &progress, "progress line (default on a tty)", NULL },
        { "unmapped", 0, 0, G_OPTION_ARG_NONE, &unmapped, "diag: DMA from an unmapped address", NULL },
        { "no-ring", 0, 0, G_OPTION_ARG_NONE, &no_ring, "posted batch calls, no submission ring", NULL },
        { NULL },
    };
    GError *e = NULL;
    GOptionContext *ctx = g_option_context_new("copy|fill|crc|bench|stats|errors|reset|info|diag");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &e) || argc != 2) {
        fprintf(stderr, "dextlab-dma-tool: %s\n", e ? e->message : "one command expected");
        g_clear_error(&e);
        g_option_context_free(ctx);
        return 2;
    }
    g_option_context_free(ctx);
    const char *cmd = argv[1];

    DxlApp a;
    int rc = dxl_app_open(&a, sock, dev ? "id" : "class", dev ? dev : DXL_UC_CLASS,
                          DXL_UC_WINDOW_MIN);
    if (rc < 0) {
        fprintf(stderr, "dextlab-dma-tool: cannot open %s %s: %s\n", dev ? "service" : "class",
                dev ? dev : DXL_UC_CLASS, g_strerror(-rc));
        return 3;
    }
    int status = 0;
    unsigned nq = dxl_app_queues(&a);
    bool job = !strcmp(cmd, "copy") || !strcmp(cmd, "fill") || !strcmp(cmd, "crc") ||
               !strcmp(cmd, "bench");
    if (job && !no_ring && (rc = dxl_app_ring_attach(&a, 1)) < 0) {
        fprintf(stderr, "dextlab-dma-tool: submission ring: %s\n", g_strerror(-rc));
        status = 3;
        goto out;
    }
    DxlJob j = { .depth = 4, .size = 1 << 20, .count = count > 0 ? (uint64_t)count : 64,
                 .verify = !no_verify, .keep_going = keep_going,
                 .progress = progress || isatty(2) };
    if (!queue || !strcmp(queue, "all")) {
        for (unsigned i = 0; i < nq; i++) {
            j.qs[j.nq++] = i;
        }
    } else {
        uint64_t qv;
        if (!parse_size(queue, &qv) || qv >= nq) {
            fprintf(stderr, "dextlab-dma-tool: queue must be 0..%u or all\n", nq - 1);
            status = 2;
            goto out;
        }
        j.qs[j.nq++] = (unsigned)qv;
    }
    uint64_t sizes[16] = { 1 << 20 }, depths[16] = { 4 };
    unsigned nsizes = 1, ndepths = 1;
    if ((size_s && !parse_list(size_s, sizes, 16, &nsizes)) ||
        (depth_s && !parse_list(depth_s, depths, 16, &ndepths)) ||
        (pattern_s && !parse_size(pattern_s, &j.pattern))) {
        fprintf(stderr, "dextlab-dma-tool: bad size, depth or pattern\n");
        status = 2;
        goto out;
    }

    if (!strcmp(cmd, "copy") || !strcmp(cmd, "fill") || !strcmp(cmd, "crc")) {
        j.op = !strcmp(cmd, "copy") ? DXL_UC_OP_COPY : !strcmp(cmd, "fill") ? DXL_UC_OP_FILL
                                                                           : DXL_UC_OP_CRC32C;
        j.size = sizes[0];
        j.depth = (unsigned)depths[0];
        DxlResult r;
        rc = dxl_app_job(&a, &j, &r);
        if (rc < 0) {
            fprintf(stderr, "dextlab-dma-tool: %s: %s%s\n", cmd, g_strerror(-rc),
                    rc == -E2BIG ? " (size x depth x queues does not fit the 256 MiB window: lower "
                                   "one, or --no-verify to reuse buffers)" : "");
            status = rc == -EINVAL || rc == -E2BIG ? 2 : 1;
            goto out;
        }
        char hb[32];
        human((double)r.bytes, hb, sizeof(hb));
        printf("%s: %" PRIu64 " ok, %" PRIu64 " failed, %" PRIu64 " bad data; %s in %.3f s "
               "(%.1f MiB/s) on %u queue(s), depth %u%s\n", cmd, r.ok, r.failed, r.verify_failed,
               hb, (double)r.ns / 1e9, (double)r.bytes / (1 << 20) / ((double)r.ns / 1e9), j.nq,
               j.depth, j.verify ? ", verified" : "");
        if (r.first_status) {
            printf("error: %s", g_strerror(-r.first_status));
            if (r.first_dev) {
                printf(" (device status %s 0x%02x on queue %u)", dxl_err_name(r.first_dev),
                       r.first_dev, r.first_queue);
            }
            printf("\n");
        }
        status = r.failed || r.verify_failed || r.first_status || r.ok != j.count ? 1 : 0;
        dxl_result_clear(&r);
    } else if (!strcmp(cmd, "bench")) {
        if (!size_s) {
            uint64_t def[] = { 4 << 10, 64 << 10, 1 << 20, 16 << 20 };
            memcpy(sizes, def, sizeof(def));
            nsizes = 4;
        }
        if (!depth_s) {
            uint64_t def[] = { 1, 4, 16, 64 };
            memcpy(depths, def, sizeof(def));
            ndepths = 4;
        }
        printf("%-10s %6s %12s %12s %7s %10s\n", "size", "depth", "dma MiB/s", "memcpy MiB/s",
               "ratio", "irq->app us");
        for (unsigned si = 0; si < nsizes; si++) {
            for (unsigned di = 0; di < ndepths; di++) {
                DxlJob b = j;
                b.op = DXL_UC_OP_COPY;
                b.size = sizes[si];
                b.depth = (unsigned)depths[di];
                b.count = 1;
                b.verify = false;
                b.min_ns = (uint64_t)(seconds * 1e9);
                DxlResult r;
                rc = dxl_app_job(&a, &b, &r);
                if (rc < 0 || r.failed || r.first_status) {
                    fprintf(stderr, "bench %" PRIu64 "/%u: %s\n", b.size, b.depth,
                            g_strerror(rc < 0 ? -rc : -r.first_status));
                    status = 1;
                    dxl_result_clear(&r);
                    continue;
                }
                double mibs = (double)r.bytes / (1 << 20) / ((double)r.ns / 1e9);
                unsigned regions = (unsigned)MIN((uint64_t)b.nq * b.depth,
                                                 DXL_UC_WINDOW_MAX / (2 * b.size));
                double base = memcpy_mibs(&a, b.size, regions, (uint64_t)(seconds * 0.5e9));
                char hb[32];
                human((double)b.size, hb, sizeof(hb));
                printf("%-10s %6u %12.1f %12.1f %7.3f %10.1f\n", hb, b.depth, mibs, base,
                       mibs / base, (double)dxl_result_lat_pct(&r, 50) / 1e3);
                fflush(stdout);
                dxl_result_clear(&r);
            }
        }
    } else if (!strcmp(cmd, "stats")) {
        struct dxl_uc_stats s;
        if ((rc = dxl_app_stats(&a, &s)) < 0) {
            fprintf(stderr, "dextlab-dma-tool: stats: %s\n", g_strerror(-rc));
            status = 1;
        } else {
            print_stats(&s);
        }
    } else if (!strcmp(cmd, "errors")) {
        struct dxl_uc_errlog l;
        if ((rc = dxl_app_errlog(&a, &l)) < 0) {
            fprintf(stderr, "dextlab-dma-tool: errors: %s\n", g_strerror(-rc));
            status = 1;
        } else {
            printf("%" PRIu64 " device errors since start; latest %u:\n", l.total, l.count);
            for (unsigned i = 0; i < l.count; i++) {
                printf("  #%" PRIu64 " %s (0x%02x) queue %u slot/offset 0x%x addr 0x%" PRIx64 "\n",
                       l.e[i].seq, dxl_err_name(l.e[i].code), l.e[i].code, l.e[i].queue,
                       l.e[i].index, l.e[i].addr);
            }
        }
    } else if (!strcmp(cmd, "reset")) {
        uint64_t n = 0;
        if ((rc = dxl_app_reset(&a, &n)) < 0) {
            fprintf(stderr, "dextlab-dma-tool: reset: %s\n", g_strerror(-rc));
            status = 1;
        } else {
            printf("device reset (%" PRIu64 " resets since start)\n", n);
        }
    } else if (!strcmp(cmd, "info")) {
        printf("interface v%" PRIu64 ", %" PRIu64 " queues, device version %" PRIu64 ".%" PRIu64
               ", max request %" PRIu64 " bytes, %" PRIu64 " in flight per client, %" PRIu64
               " bytes per descriptor, %" PRIu64 " ring entries\n", a.info[0], a.info[1],
               a.info[7] >> 16, a.info[7] & 0xffff, a.info[3], a.info[4], a.info[5], a.info[6]);
    } else if (!strcmp(cmd, "diag")) {
        int st = 0;
        uint64_t data[DXL_UC_CPL_COUNT];
        rc = dxl_app_run(&a, j.qs[0], unmapped ? DXL_UC_OP_DIAG_UNMAPPED : DXL_UC_OP_DIAG_BAD_OPCODE,
                         0, 0, 1, 0, 5000, &st, data);
        if (rc < 0) {
            fprintf(stderr, "dextlab-dma-tool: diag: %s\n", g_strerror(-rc));
            status = 1;
        } else {
            printf("diag on queue %u: %s, device status %s (0x%02" PRIx64 ")\n", j.qs[0],
                   st ? g_strerror(-st) : "success", dxl_err_name((unsigned)data[DXL_UC_CPL_DEV_STATUS]),
                   data[DXL_UC_CPL_DEV_STATUS]);
            status = st == -EIO ? 0 : 1; /* the device must have refused it */
        }
    } else {
        fprintf(stderr, "dextlab-dma-tool: unknown command %s\n", cmd);
        status = 2;
    }
out:
    dxl_app_close(&a);
    g_free(sock);
    g_free(dev);
    g_free(queue);
    g_free(size_s);
    g_free(depth_s);
    g_free(pattern_s);
    return status;
}
