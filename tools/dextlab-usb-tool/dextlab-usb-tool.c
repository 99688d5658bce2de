/*
 * dextlab-usb-tool: command-line client of the dextlab-usb driver
 * (drivers/dextlab-usb) through dextd.
 *
 *   dextlab-usb-tool [-S SOCKET] [-D SERVICE-ID] COMMAND [options]
 *     list                       the driver's services and their devices
 *     loopback [-s SIZE] [-n COUNT] [-d DEPTH] [-x EXTRA]
 *                                verified bulk loopbacks (EXTRA: ask that many
 *                                bytes more back, the IN completes short)
 *     events [-n COUNT] [-r HZ]  subscribe, trigger COUNT soft events (or run
 *                                the tick timer at HZ) and check their order
 *     regs [REG [VALUE]]         dump the registers, read one or write one
 *     bench [-n COUNT] [-d DEPTH]  loopback throughput 64 KiB .. 1 MiB (data checked
 *                                by a stamp per 4 KiB page) beside
 *                                a memcpy baseline of the same run
 * Sizes take K/M suffixes.  Exit status 0 only if everything verified.
 */
#include "dxu-app.h"

#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hw/dextlab/dextlab-usb-regs.h"

static const char *sock;
static const char *dev_id;

static const char *const reg_names[DEXTLAB_USB_NUM_REGS] = {
    "ID", "VERSION", "SCRATCH", "FIFO_SIZE", "FIFO_LEVEL", "EVENT_RATE", "EVENT_SEQ",
    "EVENTS_LOST", "OUT_BYTES", "IN_BYTES", "NAKS", "STALLS", "ALTSETTING", "SPEED",
    "EVENTS_QUEUED",
};

static uint64_t parse_size(const char *s)
{
    char *end;
    uint64_t v = g_ascii_strtoull(s, &end, 0);
    if (*end == 'K' || *end == 'k') {
        v <<= 10;
    } else if (*end == 'M' || *end == 'm') {
        v <<= 20;
    } else if (*end) {
        fprintf(stderr, "bad size %s\n", s);
        exit(2);
    }
    return v;
}

static int open_app(DxuApp *a, uint64_t window)
{
    int rc = dxu_app_open(a, sock, dev_id ? "id" : "class", dev_id ? dev_id : DXU_UC_CLASS,
                          window);
    if (rc < 0) {
        fprintf(stderr, "cannot open %s: %s\n", dev_id ? dev_id : DXU_UC_CLASS, g_strerror(-rc));
    }
    return rc;
}

static int cmd_list(void)
{
    char *out = NULL;
    int rc = dext_daemon_services(sock, &out);
    if (rc < 0) {
        fprintf(stderr, "dextd: %s\n", g_strerror(-rc));
        return 1;
    }
    char **lines = g_strsplit(out, "\n", -1);
    unsigned n = 0;
    for (char **l = lines; *l; l++) {
        char **f = g_strsplit(*l, " ", -1);
        if (g_strv_length(f) == 7 && !strcmp(f[1], DXU_UC_CLASS)) {
            n++;
            printf("service %s: %s pid %s", f[0], f[3], f[4]);
            DxuApp a;
            if (!strcmp(f[3], "running") &&
                dxu_app_open(&a, sock, "id", f[0], DXU_UC_WINDOW_MIN) == 0) {
                printf(", speed %" G_GUINT64_FORMAT ", alt %" G_GUINT64_FORMAT
                       ", FIFO %" G_GUINT64_FORMAT " bytes, bulk mps %" G_GUINT64_FORMAT
                       ", interrupt mps %" G_GUINT64_FORMAT ", device v%" G_GUINT64_FORMAT
                       ".%" G_GUINT64_FORMAT, a.info[1], a.info[2], a.info[3], a.info[5],
                       a.info[6], a.info[7] >> 16, a.info[7] & 0xffff);
                dxu_app_close(&a);
            }
            printf("\n");
        }
        g_strfreev(f);
    }
    printf("%u dextlab-usb service%s\n", n, n == 1 ? "" : "s");
    g_strfreev(lines);
    g_free(out);
    return 0;
}

static int cmd_loopback(int argc, char **argv, bool bench)
{
    uint64_t size = 64 << 10, extra = 0;
    unsigned count = bench ? 64 : 16, depth = 4;
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "s:n:d:x:")) != -1) {
        switch (opt) {
        case 's': size = parse_size(optarg); break;
        case 'n': count = (unsigned)parse_size(optarg); break;
        case 'd': depth = (unsigned)parse_size(optarg); break;
        case 'x': extra = parse_size(optarg); break;
        default: return 2;
        }
    }
    if (!depth || depth > DXU_UC_MAX_INFLIGHT || size > DXU_UC_XFER_MAX ||
        size + extra > DXU_UC_XFER_MAX) {
        fprintf(stderr, "size <= 1M, depth 1..%u\n", DXU_UC_MAX_INFLIGHT);
        return 2;
    }
    DxuApp a;
    uint64_t slot = ((bench ? DXU_UC_XFER_MAX : size + extra) + 63) & ~63ull;
    uint64_t win = MAX(2 * depth * MAX(slot, 64), DXU_UC_WINDOW_MIN);
    if (win > DXU_UC_WINDOW_MAX) {
        fprintf(stderr, "window of %" G_GUINT64_FORMAT " bytes too large: lower -d\n", win);
        return 2;
    }
    if (open_app(&a, win) < 0) {
        return 1;
    }
    int status = 0;
    if (!bench) {
        DxuRun r;
        int rc = dxu_app_loopback_run(&a, size, extra, count, depth, 1, 20000, &r);
        printf("loopback %" G_GUINT64_FORMAT " bytes x %u, depth %u: %" G_GUINT64_FORMAT
               " ok, %" G_GUINT64_FORMAT " failed, %" G_GUINT64_FORMAT " bad data, %.1f MB/s\n",
               size, count, depth, r.ok, r.failed, r.bad_data,
               r.ns ? r.bytes * 1e3 / r.ns : 0.0);
        if (r.failed) {
            printf("first failure: %s (OUT %d, IN %d)\n", g_strerror(-r.first_status),
                   (int)(int64_t)r.first_out_status, (int)(int64_t)r.first_in_status);
        }
        if (rc < 0) {
            fprintf(stderr, "loopback: %s\n", g_strerror(-rc));
        }
        status = rc < 0 || r.failed || r.bad_data || r.ok != count;
    } else {
        /* memcpy baseline over the same sizes, same run */
        uint64_t msz = 1 << 20;
        uint8_t *src = g_malloc(msz), *dst = g_malloc(msz);
        memset(src, 1, msz);
        gint64 t0 = g_get_monotonic_time();
        unsigned reps = 2048;
        for (unsigned i = 0; i < reps; i++) {
            src[i % msz] = (uint8_t)i;
            memcpy(dst, src, msz);
        }
        double memcpy_mbs = (double)msz * reps / (g_get_monotonic_time() - t0);
        g_free(src);
        g_free(dst);
        printf("memcpy baseline: %.1f MB/s\n", memcpy_mbs);
        for (uint64_t s = 64 << 10; s <= DXU_UC_XFER_MAX; s <<= 1) {
            DxuRun r;
            int rc = dxu_app_loopback_bench(&a, s, count, depth, 7, 20000, &r);
            double mbs = r.ns ? r.bytes * 1e3 / r.ns : 0.0;
            printf("loopback %7" G_GUINT64_FORMAT " B x %u depth %u: %8.1f MB/s (%.4f x memcpy)"
                   "%s\n", s, count, depth, mbs, mbs / memcpy_mbs,
                   rc < 0 || r.failed || r.bad_data ? "  FAILED" : "");
            status |= rc < 0 || r.failed || r.bad_data;
        }
    }
    dxu_app_close(&a);
    return status;
}

static int cmd_events(int argc, char **argv)
{
    unsigned count = 64, rate = 0;
    int opt;
    optind = 1;
    while ((opt = getopt(argc, argv, "n:r:")) != -1) {
        switch (opt) {
        case 'n': count = (unsigned)parse_size(optarg); break;
        case 'r': rate = (unsigned)parse_size(optarg); break;
        default: return 2;
        }
    }
    if (!count || (rate == 0 && count > DEXTLAB_USB_TRIGGER_MAX) ||
        rate > DEXTLAB_USB_EVENT_RATE_MAX) {
        fprintf(stderr, "events: -n 1..%u (triggered) or -r 1..%u Hz\n", DEXTLAB_USB_TRIGGER_MAX,
                DEXTLAB_USB_EVENT_RATE_MAX);
        return 2;
    }
    DxuApp a;
    if (open_app(&a, DXU_UC_WINDOW_MIN) < 0) {
        return 1;
    }
    uint64_t next = 0;
    int rc = dxu_app_subscribe(&a, 1, &next);
    uint64_t in[2] = { rate ? rate : count, 0x5a };
    if (rc == 0) {
        rc = rate ? dxu_app_call(&a, DXU_UC_SEL_SET_EVENT_RATE, in, 1, NULL, 0)
                  : dxu_app_call(&a, DXU_UC_SEL_TRIGGER_EVENTS, in, 2, NULL, 0);
    }
    unsigned got = 0, gaps = 0, lost = 0;
    uint64_t last = 0;
    while (rc == 0 && got < count) {
        uint64_t ref, data[16];
        int st;
        uint32_t n;
        rc = dxu_app_wait(&a, 10000, &ref, &st, data, &n);
        if (rc < 0 || ref != 1) {
            continue;
        }
        if (st < 0 || n < DXU_EV_COUNT) {
            rc = st < 0 ? st : -EPROTO;
            break;
        }
        if (got && data[DXU_EV_SEQ] != last + 1) {
            gaps++;
        }
        lost += (unsigned)data[DXU_EV_LOST];
        last = data[DXU_EV_SEQ];
        got++;
        if (g_getenv("DXU_VERBOSE")) {
            printf("event seq %" G_GUINT64_FORMAT " type %" G_GUINT64_FORMAT " value 0x%08"
                   G_GINT64_MODIFIER "x t %" G_GUINT64_FORMAT " us\n", data[DXU_EV_SEQ],
                   data[DXU_EV_TYPE], data[DXU_EV_VALUE], data[DXU_EV_TIME_US]);
        }
    }
    if (rate) {
        in[0] = 0;
        dxu_app_call(&a, DXU_UC_SEL_SET_EVENT_RATE, in, 1, NULL, 0);
    }
    printf("events: %u received, %u sequence gaps, %u lost by the device, last seq %"
           G_GUINT64_FORMAT "\n", got, gaps, lost, last);
    if (rc < 0) {
        fprintf(stderr, "events: %s\n", g_strerror(-rc));
    }
    dxu_app_close(&a);
    return rc < 0 || got != count || gaps || lost;
}

static int cmd_regs(int argc, char **argv)
{
    DxuApp a;
    if (open_app(&a, DXU_UC_WINDOW_MIN) < 0) {
        return 1;
    }
    int rc = 0;
    if (argc >= 3) {
        uint32_t reg = (uint32_t)parse_size(argv[1]), v = (uint32_t)parse_size(argv[2]);
        rc = dxu_app_reg_write(&a, reg, v);
        if (rc == 0) {
            printf("reg %u <- 0x%08x\n", reg, v);
        }
    } else if (argc == 2) {
        uint32_t reg = (uint32_t)parse_size(argv[1]), v;
        rc = dxu_app_reg_read(&a, reg, &v);
        if (rc == 0) {
            printf("reg %u = 0x%08x\n", reg, v);
        }
    } else {
        for (uint32_t r = 0; r < DEXTLAB_USB_NUM_REGS && rc == 0; r++) {
            uint32_t v;
            rc = dxu_app_reg_read(&a, r, &v);
            if (rc == 0) {
                printf("%2u %-14s 0x%08x %u\n", r, reg_names[r], v, v);
            }
        }
    }
    if (rc < 0) {
        fprintf(stderr, "regs: %s\n", g_strerror(-rc));
    }
    dxu_app_close(&a);
    return rc < 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: dextlab-usb-tool [-S SOCKET] [-D SERVICE-ID] "
                    "list|loopback|events|regs|bench [options]\n");
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "+S:D:h")) != -1) {
        switch (opt) {
        case 'S': sock = optarg; break;
        case 'D': dev_id = optarg; break;
        default: usage(); return 2;
        }
    }
    if (optind >= argc) {
        usage();
        return 2;
    }
    const char *cmd = argv[optind];
    argc -= optind;
    argv += optind;
    if (!strcmp(cmd, "list")) {
        return cmd_list();
    } else if (!strcmp(cmd, "loopback")) {
        return cmd_loopback(argc, argv, false);
    } else if (!strcmp(cmd, "bench")) {
        return cmd_loopback(argc, argv, true);
    } else if (!strcmp(cmd, "events")) {
        return cmd_events(argc, argv);
    } else if (!strcmp(cmd, "regs")) {
        return cmd_regs(argc, argv);
    }
    usage();
    return 2;
}
