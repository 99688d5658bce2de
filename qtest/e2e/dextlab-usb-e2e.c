/*
 * End-to-end tests of the USB client path on the qtest platform: dextd runs
 * the user-space xHCI dext (harness/usb/dextlab-xhci), which publishes a
 * nub per USB device and interface; drivers/dextlab-usb is matched to
 * interface 0 of each dextlab-usb (one SuperSpeed, one high-speed: two
 * services in one process) and talks to the xHCI dext over the provider
 * channel (docs/runtime/nubs.md).  This program is the app
 * (org.dextlab.dextlab-usb-e2e); a QMP monitor (ExtraArgs) gives it
 * device_del/device_add for hot-plug.
 *
 * Environment (meson): DEXTD, DEXT_XHCI_BUNDLE, DEXTLAB_USB_BUNDLE,
 * DEXTLAB_USB_TOOL, DEXTLAB_USB_MACHINE; DEXTLAB_USB_VALGRIND (path of
 * valgrind): run the driver under it through a wrapper bundle, and fail on
 * any memory error or definite leak it reports.  Each test path names the
 * behaviour it guards.  The tests run in order and share the dextd.
 */
#include "dxu-app.h"
#include "e2e-dextd.h"
#include "e2e-services.h"

#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hw/dextlab/dextlab-usb-regs.h"

enum { SS = 0, HS = 1 };

static struct {
    E2eDextd *d;
    const char *sock;
    char *qmp_path;
    int qmp;
    char *id[2];                /* service ids (decimal) of the SS and HS devices */
    char *pid;                  /* the driver process */
} t = { .qmp = -1 };

/* ---- QMP ------------------------------------------------------------------- */

static JsonObject *qmp_read(JsonParser *p)
{
    GString *line = g_string_new(NULL);
    for (;;) {
        char c;
        ssize_t r = read(t.qmp, &c, 1);
        g_assert_cmpint(r, ==, 1);
        if (c == '\n') {
            break;
        }
        g_assert_cmpuint(line->len, <, 65536);
        g_string_append_c(line, c);
    }
    g_assert_true(json_parser_load_from_data(p, line->str, -1, NULL));
    g_string_free(line, TRUE);
    return json_node_get_object(json_parser_get_root(p));
}

/* Execute; true on "return", false on "error" (events skipped). */
static bool qmp(const char *cmd)
{
    g_assert_cmpint(write(t.qmp, cmd, strlen(cmd)), ==, (ssize_t)strlen(cmd));
    for (;;) {
        JsonParser *p = json_parser_new();
        JsonObject *o = qmp_read(p);
        bool ev = json_object_has_member(o, "event");
        bool ok = json_object_has_member(o, "return");
        if (!ev && !ok && g_test_verbose()) {
            g_printerr("QMP %s: error\n", cmd);
        }
        g_object_unref(p);
        if (!ev) {
            return ok;
        }
    }
}

static void qmp_connect(void)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    g_strlcpy(sa.sun_path, t.qmp_path, sizeof(sa.sun_path));
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    for (;;) {
        t.qmp = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(t.qmp, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
            break;
        }
        close(t.qmp);
        g_assert_cmpint(g_get_monotonic_time(), <, end);
        g_usleep(20000);
    }
    JsonParser *p = json_parser_new();
    JsonObject *o = qmp_read(p);
    g_assert_true(json_object_has_member(o, "QMP"));
    g_object_unref(p);
    g_assert_true(qmp("{\"execute\":\"qmp_capabilities\"}\n"));
}

/* ---- services ------------------------------------------------------------------ */

/* Our class's lines "id class server state pid launches starts". */
static GPtrArray *services(void)
{
    return e2e_services(t.sock, DXU_UC_CLASS);
}

/* Wait until exactly @n services of ours run, none with pid @not_pid
 * (NULL: any); returns them. */
static GPtrArray *wait_running(unsigned n, const char *not_pid, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;
    for (;;) {
        GPtrArray *a = services();
        unsigned running = 0, total = 0;
        for (guint i = 0; i < a->len; i++) {
            char **f = a->pdata[i];
            if (!strcmp(f[3], "running") && (!not_pid || strcmp(f[4], not_pid))) {
                running++;
            }
            total += !strcmp(f[3], "running");
        }
        if ((running == n && total == n) || g_get_monotonic_time() > end) {
            if (running != n || total != n) {
                g_printerr("waiting for %u running services: %u (%u); see %s\n", n, running,
                           total, e2e_dextd_log_path(t.d));
            }
            g_assert_cmpuint(running, ==, n);
            g_assert_cmpuint(total, ==, n);
            return a;
        }
        g_ptr_array_free(a, TRUE);
        g_usleep(50000);
    }
}

/* Map the running services to SS/HS by their device's speed. */
static void learn_ids(GPtrArray *a)
{
    g_clear_pointer(&t.id[SS], g_free);
    g_clear_pointer(&t.id[HS], g_free);
    g_clear_pointer(&t.pid, g_free);
    for (guint i = 0; i < a->len; i++) {
        char **f = a->pdata[i];
        if (strcmp(f[3], "running")) {
            continue;
        }
        DxuApp app;
        g_assert_cmpint(dxu_app_open(&app, t.sock, "id", f[0], DXU_UC_WINDOW_MIN), ==, 0);
        int which = app.info[1] == DXU_SPEED_SUPER ? SS : HS;
        g_assert_null(t.id[which]);
        t.id[which] = g_strdup(f[0]);
        if (t.pid) {
            g_assert_cmpstr(t.pid, ==, f[4]);   /* one process per server name */
        } else {
            t.pid = g_strdup(f[4]);
        }
        dxu_app_close(&app);
    }
}

static void open_dev(DxuApp *a, int dev, uint64_t window)
{
    g_assert_nonnull(t.id[dev]);
    int rc = dxu_app_open(a, t.sock, "id", t.id[dev], window);
    if (rc < 0) {
        g_printerr("open %s: %s\n", t.id[dev], g_strerror(-rc));
    }
    g_assert_cmpint(rc, ==, 0);
}

static void call_ok(DxuApp *a, uint32_t sel, uint64_t v0, uint64_t v1, uint32_t nin)
{
    uint64_t in[2] = { v0, v1 };
    g_assert_cmpint(dxu_app_call(a, sel, in, nin, NULL, 0), ==, 0);
}

/* One loopback, waited for: status, data[] filled. */
static int loopback1(DxuApp *a, uint64_t len, uint64_t in_len, uint64_t *data)
{
    memset(a->win, 0x11, len);
    memset(a->win + a->wsize / 2, 0, in_len);
    g_assert_cmpint(dxu_app_loopback(a, 7, 0, a->wsize / 2, len, in_len, 42), ==, 0);
    for (;;) {
        uint64_t ref;
        int st;
        uint32_t n;
        g_assert_cmpint(dxu_app_wait(a, 10000, &ref, &st, data, &n), ==, 0);
        if (ref == 7) {
            g_assert_cmpuint(n, ==, DXU_LB_COUNT);
            g_assert_cmpuint(data[DXU_LB_TAG], ==, 42);
            return st;
        }
    }
}

static void run_ok(DxuApp *a, uint64_t size, uint64_t extra, unsigned count, unsigned depth)
{
    DxuRun r;
    int rc = dxu_app_loopback_run(a, size, extra, count, depth, (uint32_t)size, 20000, &r);
    if (rc < 0 || r.ok != count) {
        g_printerr("loopback %" G_GUINT64_FORMAT "+%" G_GUINT64_FORMAT " x%u d%u: rc %d, %"
                   G_GUINT64_FORMAT " ok %" G_GUINT64_FORMAT " failed (%d: OUT %d IN %d) %"
                   G_GUINT64_FORMAT " bad\n", size, extra, count, depth, rc, r.ok, r.failed,
                   r.first_status, (int)(int64_t)r.first_out_status,
                   (int)(int64_t)r.first_in_status, r.bad_data);
    }
    g_assert_cmpint(rc, ==, 0);
    g_assert_cmpuint(r.failed, ==, 0);
    g_assert_cmpuint(r.bad_data, ==, 0);
    g_assert_cmpuint(r.ok, ==, count);
}

/* ---- tests ---------------------------------------------------------------------- */

/* Guards: the xHCI dext publishes the two devices' interfaces, the
 * dextlab-usb personality matches each (two services, one process), and
 * each Start opened its interface over the provider channel. */
static void test_two_instances(void)
{
    GPtrArray *a = wait_running(2, NULL, 60000);
    learn_ids(a);
    g_assert_nonnull(t.id[SS]);
    g_assert_nonnull(t.id[HS]);
    g_assert_cmpstr(((char **)a->pdata[0])[2], ==, DXU_UC_SERVER);
    g_ptr_array_free(a, TRUE);
    /* string descriptors reached the driver through the interface nub */
    char *log = e2e_dextd_read_log(t.d);
    char **parts = g_strsplit(log, "\"" DEXTLAB_USB_PRODUCT "\" (serial", -1);
    g_assert_cmpuint(g_strv_length(parts), ==, 3);
    g_strfreev(parts);
    g_free(log);
}

/* Guards: what the driver reports equals the device model's header (speed,
 * FIFO, packet sizes per speed), and vendor register access works both
 * ways; bad registers come back as the device's stall (-EREMOTEIO), not a
 * hang or a broken connection. */
static void test_info_regs(void)
{
    for (int dev = SS; dev <= HS; dev++) {
        DxuApp a;
        uint32_t v;
        open_dev(&a, dev, DXU_UC_WINDOW_MIN);
        g_assert_cmpuint(a.info[0], ==, DXU_UC_VERSION);
        g_assert_cmpuint(a.info[1], ==, dev == SS ? DXU_SPEED_SUPER : DXU_SPEED_HIGH);
        g_assert_cmpuint(a.info[2], ==, 0);
        g_assert_cmpuint(a.info[3], ==, DEXTLAB_USB_FIFO_DEFAULT);
        g_assert_cmpuint(a.info[5], ==, dev == SS ? DEXTLAB_USB_BULK_MPS_SS(0) : DEXTLAB_USB_BULK_MPS_HS(0));
        g_assert_cmpuint(a.info[6], ==, DEXTLAB_USB_INTR_MPS(0));
        g_assert_cmpuint(a.info[7], ==, DEXTLAB_USB_VERSION_VALUE);
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_ID, &v), ==, 0);
        g_assert_cmphex(v, ==, DEXTLAB_USB_ID_VALUE);
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_SPEED, &v), ==, 0);
        g_assert_cmpuint(v, ==, dev == SS ? DEXTLAB_USB_SPEED_SUPER : DEXTLAB_USB_SPEED_HIGH);
        g_assert_cmpint(dxu_app_reg_write(&a, DEXTLAB_USB_REG_SCRATCH, 0xc0ffee00u + dev), ==, 0);
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_SCRATCH, &v), ==, 0);
        g_assert_cmphex(v, ==, 0xc0ffee00u + dev);
        g_assert_cmpint(dxu_app_reg_read(&a, 99, &v), ==, -EREMOTEIO);
        g_assert_cmpint(dxu_app_reg_write(&a, DEXTLAB_USB_REG_ID, 1), ==, -EREMOTEIO);
        /* and the control pipe still works after the stalls */
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_VERSION, &v), ==, 0);
        g_assert_cmphex(v, ==, DEXTLAB_USB_VERSION_VALUE);
        dxu_app_close(&a);
    }
}

/* Guards: bulk loopback moves verified data of every size from 1 byte to
 * 1 MiB (packet-size edges, multi-chunk requests beyond the 64 KiB FIFO),
 * one at a time and several in flight, on both speeds. */
static void test_loopback_sizes(void)
{
    static const uint64_t sizes[] = {
        1, 2, 511, 512, 513, 1023, 1024, 1025, 4096, 65535, 65536, 65537, 100003, 262144,
        1 << 20,
    };
    for (int dev = SS; dev <= HS; dev++) {
        DxuApp a;
        open_dev(&a, dev, DXU_UC_WINDOW_MAX);
        for (size_t i = 0; i < G_N_ELEMENTS(sizes); i++) {
            run_ok(&a, sizes[i], 0, 3, 1);
            run_ok(&a, sizes[i], 0, 8, 4);
        }
        struct dxu_uc_stats st;
        g_assert_cmpint(dxu_app_stats(&a, &st), ==, 0);
        g_assert_cmpuint(st.lb_failed, ==, 0);
        g_assert_cmpuint(st.bytes_out, ==, st.bytes_in);
        dxu_app_close(&a);
    }
}

/* Guards: transfer boundaries loop back: an IN asking for more than was
 * written completes short with exactly what was written (incl. at a
 * packet-size multiple, which needs a zero-length packet to end it), and a
 * zero-length OUT comes back as a zero-length IN. */
static void test_loopback_short_zlp(void)
{
    for (int dev = SS; dev <= HS; dev++) {
        DxuApp a;
        open_dev(&a, dev, 1 << 20);
        run_ok(&a, 1000, 1000, 4, 1);
        run_ok(&a, 1, 4095, 4, 2);
        run_ok(&a, 512, 512, 4, 1);
        run_ok(&a, 1024, 1024, 4, 1);
        run_ok(&a, 0, 512, 4, 1);
        run_ok(&a, 0, 512, 8, 4);
        uint64_t data[16];
        g_assert_cmpint(loopback1(&a, 0, 64, data), ==, 0);
        g_assert_cmpuint(data[DXU_LB_OUT_ACTUAL], ==, 0);
        g_assert_cmpuint(data[DXU_LB_IN_ACTUAL], ==, 0);
        /* and data still flows after the zero-length ones */
        run_ok(&a, 70000, 0, 2, 2);
        dxu_app_close(&a);
    }
}

/* Collect @n events of subscription @ref; asserts the order.  *lost: the
 * losses the device reported between them. */
static void collect_events(DxuApp *a, uint64_t ref, unsigned n, uint64_t *first_seq,
                           uint64_t *values, unsigned *lost)
{
    unsigned got = 0;
    uint64_t last = 0;
    *lost = 0;
    while (got < n) {
        uint64_t r, data[16];
        int st;
        uint32_t cnt;
        int rc = dxu_app_wait(a, 10000, &r, &st, data, &cnt);
        if (rc < 0) {
            g_printerr("events: %u of %u, then %s\n", got, n, g_strerror(-rc));
        }
        g_assert_cmpint(rc, ==, 0);
        if (r != ref) {
            continue;
        }
        g_assert_cmpint(st, ==, 0);
        g_assert_cmpuint(cnt, ==, DXU_EV_COUNT);
        if (got == 0) {
            *first_seq = data[DXU_EV_SEQ];
        } else {
            /* in order; a gap only where the device itself reports losses */
            g_assert_cmpuint(data[DXU_EV_SEQ], ==, last + 1 + data[DXU_EV_LOST]);
        }
        if (got) {
            /* the first one may report losses from before we listened
             * (e.g. rate-timer events nobody drained fast enough) */
            *lost += (unsigned)data[DXU_EV_LOST];
        }
        last = data[DXU_EV_SEQ];
        if (values) {
            values[got] = data[DXU_EV_VALUE] | data[DXU_EV_TYPE] << 32;
        }
        got++;
    }
}

/* Guards: interrupt events reach a subscribed app in the device's order
 * with consecutive sequence numbers, none lost, in batches that fit the
 * device's queue. */
static void test_events_in_order(void)
{
    for (int dev = SS; dev <= HS; dev++) {
        DxuApp a;
        open_dev(&a, dev, DXU_UC_WINDOW_MIN);
        uint32_t lost0, lost1;
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_EVENTS_LOST, &lost0), ==, 0);
        g_assert_cmpint(dxu_app_subscribe(&a, 3, NULL), ==, 0);
        uint64_t prev_end = 0;
        for (unsigned batch = 0; batch < 8; batch++) {
            uint64_t vals[32], first;
            unsigned lost;
            call_ok(&a, DXU_UC_SEL_TRIGGER_EVENTS, 32, 0x100 + batch, 2);
            collect_events(&a, 3, 32, &first, vals, &lost);
            g_assert_cmpuint(lost, ==, 0);
            if (batch) {
                g_assert_cmpuint(first, ==, prev_end);
            }
            prev_end = first + 32;
            for (unsigned i = 0; i < 32; i++) {
                g_assert_cmphex(vals[i], ==, (uint64_t)DEXTLAB_USB_EVT_SOFT << 32 |
                                             (0x100u + batch) << 16 | i);
            }
        }
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_EVENTS_LOST, &lost1), ==, 0);
        g_assert_cmpuint(lost1, ==, lost0);
        struct dxu_uc_stats st;
        g_assert_cmpint(dxu_app_stats(&a, &st), ==, 0);
        g_assert_cmpuint(st.events, >=, 256);
        dxu_app_close(&a);
    }
}

/* Guards: rate-timer events arrive in order; every sequence gap is one the
 * device reported as lost (the runtime and driver lose none). */
static void test_events_tick(void)
{
    DxuApp a;
    open_dev(&a, SS, DXU_UC_WINDOW_MIN);
    g_assert_cmpint(dxu_app_subscribe(&a, 5, NULL), ==, 0);
    call_ok(&a, DXU_UC_SEL_SET_EVENT_RATE, 1000, 0, 1);
    uint64_t vals[40], first;
    unsigned lost;
    collect_events(&a, 5, 40, &first, vals, &lost);
    call_ok(&a, DXU_UC_SEL_SET_EVENT_RATE, 0, 0, 1);
    for (unsigned i = 0; i < 40; i++) {
        g_assert_cmpuint(vals[i] >> 32, ==, DEXTLAB_USB_EVT_TICK);
    }
    dxu_app_close(&a);
}

/* Guards: a stalled endpoint fails its transfer with -EPIPE (a loopback's
 * other half is cancelled, not left hanging), and clear-stall recovers
 * every endpoint, the interrupt one with its queued events. */
static void test_stall_recovery(void)
{
    DxuApp a;
    uint64_t data[16];
    open_dev(&a, HS, 1 << 20);
    call_ok(&a, DXU_UC_SEL_FORCE_STALL, DEXTLAB_USB_EP_BULK_OUT, 0, 1);
    g_assert_cmpint(loopback1(&a, 4096, 4096, data), ==, -EPIPE);
    g_assert_cmpint((int64_t)data[DXU_LB_OUT_STATUS], ==, -EPIPE);
    g_assert_cmpint((int64_t)data[DXU_LB_IN_STATUS], ==, -ECANCELED);
    call_ok(&a, DXU_UC_SEL_CLEAR_STALL, DEXTLAB_USB_EP_BULK_OUT, 0, 1);
    call_ok(&a, DXU_UC_SEL_RESET_FIFO, 0, 0, 0);
    run_ok(&a, 4096, 0, 4, 2);

    call_ok(&a, DXU_UC_SEL_FORCE_STALL, DEXTLAB_USB_EP_BULK_IN, 0, 1);
    g_assert_cmpint(loopback1(&a, 3000, 3000, data), ==, -EPIPE);
    g_assert_cmpint((int64_t)data[DXU_LB_IN_STATUS], ==, -EPIPE);
    call_ok(&a, DXU_UC_SEL_CLEAR_STALL, DEXTLAB_USB_EP_BULK_IN, 0, 1);
    call_ok(&a, DXU_UC_SEL_RESET_FIFO, 0, 0, 0);
    run_ok(&a, 65536, 0, 4, 2);

    g_assert_cmpint(dxu_app_subscribe(&a, 9, NULL), ==, 0);
    call_ok(&a, DXU_UC_SEL_FORCE_STALL, DEXTLAB_USB_EP_INTR_IN, 0, 1);
    g_usleep(300000);
    call_ok(&a, DXU_UC_SEL_TRIGGER_EVENTS, 4, 0x77, 2);
    call_ok(&a, DXU_UC_SEL_CLEAR_STALL, DEXTLAB_USB_EP_INTR_IN, 0, 1);
    uint64_t vals[4], first;
    unsigned lost;
    collect_events(&a, 9, 4, &first, vals, &lost);
    for (unsigned i = 0; i < 4; i++) {
        g_assert_cmphex(vals[i] & 0xffffffff, ==, 0x770000u | i);
    }
    struct dxu_uc_stats st;
    g_assert_cmpint(dxu_app_stats(&a, &st), ==, 0);
    g_assert_cmpuint(st.stalls, >=, 2);
    g_assert_cmpuint(st.clears, >=, 3);
    dxu_app_close(&a);
}

/* Guards: switching the alternate setting re-opens the pipes with the new
 * packet sizes (interrupt 16 -> 64 bytes), the device sees it, and data and
 * events keep flowing; and back. */
static void test_alt_switch(void)
{
    for (int dev = SS; dev <= HS; dev++) {
        DxuApp a;
        uint32_t v;
        open_dev(&a, dev, 1 << 20);
        call_ok(&a, DXU_UC_SEL_SELECT_ALT, 1, 0, 1);
        g_assert_cmpint(dxu_app_info(&a), ==, 0);
        g_assert_cmpuint(a.info[2], ==, 1);
        g_assert_cmpuint(a.info[6], ==, DEXTLAB_USB_INTR_MPS(1));
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_ALTSETTING, &v), ==, 0);
        g_assert_cmpuint(v, ==, 1);
        run_ok(&a, 1, 0, 2, 1);
        run_ok(&a, 65536, 0, 4, 4);
        run_ok(&a, 100000, 0, 2, 2);
        g_assert_cmpint(dxu_app_subscribe(&a, 4, NULL), ==, 0);
        call_ok(&a, DXU_UC_SEL_TRIGGER_EVENTS, 16, 0x33, 2);
        uint64_t first;
        unsigned lost;
        collect_events(&a, 4, 16, &first, NULL, &lost);
        g_assert_cmpuint(lost, ==, 0);
        uint64_t bad = 2;
        g_assert_cmpint(dxu_app_call(&a, DXU_UC_SEL_SELECT_ALT, &bad, 1, NULL, 0), ==, -EINVAL);
        call_ok(&a, DXU_UC_SEL_SELECT_ALT, 0, 0, 1);
        g_assert_cmpint(dxu_app_info(&a), ==, 0);
        g_assert_cmpuint(a.info[2], ==, 0);
        g_assert_cmpuint(a.info[6], ==, DEXTLAB_USB_INTR_MPS(0));
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_ALTSETTING, &v), ==, 0);
        g_assert_cmpuint(v, ==, 0);
        run_ok(&a, 4096, 0, 2, 2);
        dxu_app_close(&a);
    }
}

/* Guards: the user client refuses bad calls (ranges, sizes, selectors)
 * with an error and keeps serving. */
static void test_bad_calls(void)
{
    DxuApp a;
    open_dev(&a, SS, 65536);
    uint64_t chunks;
    uint32_t n = 1;
    /* out of the window, overlapping, too long, short IN beyond one chunk */
    const uint64_t bad[][5] = {
        { 65000, 0, 1000, 1000, 0 }, { 0, 65000, 1000, 1000, 0 },
        { 0, 100, 1000, 1000, 0 }, { 0, 0, (1 << 20) + 1, (1 << 20) + 1, 0 },
        { 0, 1000, 1000, 999, 0 }, { UINT64_MAX, 0, 1, 1, 0 },
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_cmpint(dext_client_call_async(a.c, DXU_UC_SEL_LOOPBACK, 1, bad[i], 5, NULL, 0,
                                               &chunks, &n, NULL, NULL), ==, -EINVAL);
    }
    uint64_t in[2] = { 0, 0 };
    g_assert_cmpint(dxu_app_call(&a, DXU_UC_SEL_TRIGGER_EVENTS, in, 2, NULL, 0), ==, -EINVAL);
    in[0] = DEXTLAB_USB_EVENT_RATE_MAX + 1;
    g_assert_cmpint(dxu_app_call(&a, DXU_UC_SEL_SET_EVENT_RATE, in, 1, NULL, 0), ==, -EINVAL);
    in[0] = 0x03;
    g_assert_cmpint(dxu_app_call(&a, DXU_UC_SEL_FORCE_STALL, in, 1, NULL, 0), ==, -EINVAL);
    in[0] = DXU_UC_WINDOW_MAX + 1;
    g_assert_cmpint(dxu_app_call(&a, DXU_UC_SEL_SET_WINDOW, in, 1, in, 1), ==, -EINVAL);
    run_ok(&a, 1000, 0, 2, 1);
    dxu_app_close(&a);
}

static int run_tool(int dev, const char *args, char **out)
{
    const char *tool = g_getenv("DEXTLAB_USB_TOOL");
    g_assert_nonnull(tool);
    char *cmd = g_strdup_printf("'%s' -S '%s' %s%s %s", tool, t.sock, dev >= 0 ? "-D " : "",
                                dev >= 0 ? t.id[dev] : "", args);
    char *o = NULL, *e = NULL;
    int status = -1;
    g_assert_true(g_spawn_command_line_sync(cmd, &o, &e, &status, NULL));
    if (g_test_verbose() || !WIFEXITED(status) || WEXITSTATUS(status)) {
        g_printerr("$ %s\n%s%s", cmd, o, e);
    }
    g_free(cmd);
    g_free(e);
    if (out) {
        *out = o;
    } else {
        g_free(o);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* Guards: dextlab-usb-tool's commands work against both devices. */
static void test_tool(void)
{
    char *out = NULL;
    g_assert_cmpint(run_tool(-1, "list", &out), ==, 0);
    g_assert_nonnull(strstr(out, "2 dextlab-usb services"));
    g_assert_nonnull(strstr(out, "speed 4"));
    g_assert_nonnull(strstr(out, "speed 3"));
    g_free(out);
    g_assert_cmpint(run_tool(SS, "loopback -s 200K -n 8 -d 4", &out), ==, 0);
    g_assert_nonnull(strstr(out, "8 ok, 0 failed, 0 bad data"));
    g_free(out);
    g_assert_cmpint(run_tool(HS, "loopback -s 0 -x 64 -n 4 -d 1", NULL), ==, 0);
    g_assert_cmpint(run_tool(HS, "events -n 48", &out), ==, 0);
    g_assert_nonnull(strstr(out, "48 received, 0 sequence gaps, 0 lost"));
    g_free(out);
    g_assert_cmpint(run_tool(SS, "regs", &out), ==, 0);
    g_assert_nonnull(strstr(out, "ID             0x44585553"));
    g_free(out);
    g_assert_cmpint(run_tool(SS, "regs 2 0x1234", NULL), ==, 0);
    g_assert_cmpint(run_tool(SS, "regs 2", &out), ==, 0);
    g_assert_nonnull(strstr(out, "0x00001234"));
    g_free(out);
    g_assert_cmpint(run_tool(SS, "regs 0 1", NULL), ==, 1);
}

/* An IN read that pends (the FIFO is empty) on @dev: in flight until the
 * device or the driver goes. */
static void pend_read(DxuApp *a, uint64_t ref)
{
    call_ok(a, DXU_UC_SEL_RESET_FIFO, 0, 0, 0);
    uint64_t in[3] = { 0, 4096, 0xdead }, chunks;
    uint32_t n = 1;
    g_assert_cmpint(dext_client_call_async(a->c, DXU_UC_SEL_BULK_IN, ref, in, 3, NULL, 0,
                                           &chunks, &n, NULL, NULL), ==, 0);
    uint64_t r, data[16];
    int st;
    /* really pending */
    g_assert_cmpint(dxu_app_wait(a, 300, &r, &st, data, &n), ==, -ETIMEDOUT);
}

/* The pending read ends with an error: a completion with -ECANCELED or
 * -ENODEV, or (the service went before it could answer) the connection's
 * -ECONNRESET.  Never success, never a hang.  Returns what it saw. */
static int pend_outcome(DxuApp *a, uint64_t ref)
{
    for (;;) {
        uint64_t r, data[16];
        int st;
        uint32_t n;
        int rc = dxu_app_wait(a, 20000, &r, &st, data, &n);
        if (rc < 0) {
            g_assert_cmpint(rc, ==, -ECONNRESET);
            return rc;
        }
        if (r != ref) {
            continue;
        }
        g_assert_true(st == -ECANCELED || st == -ENODEV || st == -ESHUTDOWN);
        return st;
    }
}

/* Guards: device_del of one device stops its driver instance (Stop runs)
 * and fails the app's in-flight request with an error, the other device
 * keeps working; device_add brings a new instance that moves data (with a
 * small FIFO: many chunks per request). */
static void test_unplug_replug(void)
{
    DxuApp a, other;
    open_dev(&a, HS, 65536);
    open_dev(&other, SS, 65536);
    pend_read(&a, 11);
    char *log0 = e2e_dextd_read_log(t.d);
    char **parts = g_strsplit(log0, "stopping:", -1);
    size_t stops0 = g_strv_length(parts);
    g_strfreev(parts);
    g_assert_true(qmp("{\"execute\":\"device_del\",\"arguments\":{\"id\":\"usbhs\"}}\n"));
    int how = pend_outcome(&a, 11);
    g_printerr("# in-flight read after unplug: %s\n", g_strerror(-how));
    dxu_app_close(&a);
    GPtrArray *s = wait_running(1, NULL, 30000);
    g_assert_cmpstr(((char **)s->pdata[0])[0], ==, t.id[SS]);
    g_ptr_array_free(s, TRUE);
    /* the driver's Stop ran (its line reaches the log through a pipe) */
    size_t stops1 = 0;
    for (gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
         g_get_monotonic_time() < end; g_usleep(20000)) {
        char *log1 = e2e_dextd_read_log(t.d);
        parts = g_strsplit(log1, "stopping:", -1);
        stops1 = g_strv_length(parts);
        g_strfreev(parts);
        g_free(log1);
        if (stops1 > stops0) {
            break;
        }
    }
    g_assert_cmpuint(stops1, ==, stops0 + 1);
    g_free(log0);
    run_ok(&other, 10000, 0, 4, 2);
    dxu_app_close(&other);

    /* back with a 4 KiB FIFO: a 1 MiB loopback is 256 chunks, fed through
     * the driver's bounded window of transfers in flight */
    g_assert_true(qmp("{\"execute\":\"device_add\",\"arguments\":{\"driver\":\"dextlab-usb\","
                      "\"bus\":\"xhci.0\",\"id\":\"usbhs\",\"superspeed\":false,"
                      "\"fifo-size\":4096}}\n"));
    s = wait_running(2, NULL, 60000);
    char *old_hs = g_strdup(t.id[HS]);
    learn_ids(s);
    g_ptr_array_free(s, TRUE);
    g_assert_cmpstr(t.id[HS], !=, old_hs);
    g_free(old_hs);
    open_dev(&a, HS, 4 << 20);
    g_assert_cmpuint(a.info[1], ==, DXU_SPEED_HIGH);
    g_assert_cmpuint(a.info[3], ==, 4096);
    run_ok(&a, 1 << 20, 0, 2, 2);
    run_ok(&a, 1, 0, 2, 1);
    run_ok(&a, 4097, 0, 8, 4);
    run_ok(&a, 100, 3000, 4, 2);
    dxu_app_close(&a);
}

/* Guards (issue 8): kill -9 of the client driver mid-transfer: the app
 * gets a defined error, dextd resets the devices (NUB_RESET: port reset,
 * new nubs), relaunches the driver, and new transfers verify. */
static void test_crash_relaunch(void)
{
    DxuApp a;
    open_dev(&a, SS, 65536);
    pend_read(&a, 21);
    char *old_pid = g_strdup(t.pid);
    g_assert_cmpint(kill((pid_t)g_ascii_strtoll(old_pid, NULL, 10), SIGKILL), ==, 0);
    int how = pend_outcome(&a, 21);
    g_printerr("# in-flight read after kill -9: %s\n", g_strerror(-how));
    g_assert_cmpint(how, ==, -ECONNRESET);  /* the driver is gone: its connection */
    dxu_app_close(&a);
    GPtrArray *s = wait_running(2, old_pid, 60000);
    learn_ids(s);
    g_ptr_array_free(s, TRUE);
    g_assert_cmpstr(t.pid, !=, old_pid);
    g_free(old_pid);
    /* dextd reset both devices the dead driver had (not a PCI FLR) */
    char *log = e2e_dextd_read_log(t.d);
    char **parts = g_strsplit(log, "NUB_RESET", -1);
    g_assert_cmpuint(g_strv_length(parts), >=, 3);
    g_strfreev(parts);
    g_free(log);
    for (int dev = SS; dev <= HS; dev++) {
        open_dev(&a, dev, 2 << 20);
        uint32_t v;
        /* the port reset reset the device: scratch is 0 again */
        g_assert_cmpint(dxu_app_reg_read(&a, DEXTLAB_USB_REG_SCRATCH, &v), ==, 0);
        g_assert_cmpuint(v, ==, 0);
        run_ok(&a, 65536, 0, 4, 2);
        run_ok(&a, 1 << 20, 0, 1, 1);
        dxu_app_close(&a);
    }
}

/* Every complete valgrind log (the one killed by the crash test has no
 * summary): no errors, no definite leaks; at least one complete. */
static bool valgrind_clean(const char *dir)
{
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *n;
    unsigned logs = 0;
    bool ok = true;
    while (d && (n = g_dir_read_name(d))) {
        if (!g_str_has_prefix(n, "vg-")) {
            continue;
        }
        char *path = g_build_filename(dir, n, NULL), *s = NULL;
        g_file_get_contents(path, &s, NULL, NULL);
        if (s && strstr(s, "ERROR SUMMARY:")) {
            logs++;
            if (!strstr(s, "ERROR SUMMARY: 0 errors") ||
                (strstr(s, "definitely lost:") && !strstr(s, "definitely lost: 0 bytes"))) {
                g_printerr("valgrind reports problems in %s:\n%s\n", path, s);
                ok = false;
            }
        }
        g_free(s);
        g_free(path);
    }
    if (d) {
        g_dir_close(d);
    }
    return ok && logs > 0;
}

static char *machine_file(const char *dir)
{
    const char *src = g_getenv("DEXTLAB_USB_MACHINE");
    g_assert_nonnull(src);
    GKeyFile *kf = g_key_file_new();
    g_assert_true(g_key_file_load_from_file(kf, src, G_KEY_FILE_NONE, NULL));
    char *extra = g_strdup_printf("-qmp unix:%s,server=on,wait=off", t.qmp_path);
    g_key_file_set_string(kf, "Machine", "ExtraArgs", extra);
    char *path = g_build_filename(dir, "dextlab-usb.machine", NULL);
    g_assert_true(g_key_file_save_to_file(kf, path, NULL));
    g_free(extra);
    g_key_file_free(kf);
    return path;
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    const char *xhci = g_getenv("DEXT_XHCI_BUNDLE"), *usb = g_getenv("DEXTLAB_USB_BUNDLE");
    g_assert_nonnull(xhci);
    g_assert_nonnull(usb);
    char *dir = g_dir_make_tmp("dxu-e2e-XXXXXX", NULL);
    t.qmp_path = g_build_filename(dir, "qmp.sock", NULL);
    char *machine = machine_file(dir);
    const char *valgrind = g_getenv("DEXTLAB_USB_VALGRIND");
    GError *vg_err = NULL;
    char *vg_bundle = valgrind ? e2e_valgrind_bundle(dir, usb, valgrind, &vg_err) : NULL;
    g_assert_no_error(vg_err);
    const char *const bundles[] = { xhci, vg_bundle ? vg_bundle : usb, NULL };
    E2eDextdConfig cfg = {
        .name = "dextlab-usb-e2e",
        .machine = machine,
        .drivers = bundles,
        .dir = dir,
    };
    GError *err = NULL;
    t.d = e2e_dextd_start(&cfg, &err);
    g_assert_no_error(err);
    t.sock = e2e_dextd_socket(t.d);
    qmp_connect();

    g_test_add_func("/dextlab-usb/e2e/two-instances", test_two_instances);
    g_test_add_func("/dextlab-usb/e2e/info-regs", test_info_regs);
    g_test_add_func("/dextlab-usb/e2e/loopback-sizes", test_loopback_sizes);
    g_test_add_func("/dextlab-usb/e2e/loopback-short-zlp", test_loopback_short_zlp);
    g_test_add_func("/dextlab-usb/e2e/events-in-order", test_events_in_order);
    g_test_add_func("/dextlab-usb/e2e/events-tick", test_events_tick);
    g_test_add_func("/dextlab-usb/e2e/stall-recovery", test_stall_recovery);
    g_test_add_func("/dextlab-usb/e2e/alt-switch", test_alt_switch);
    g_test_add_func("/dextlab-usb/e2e/bad-calls", test_bad_calls);
    g_test_add_func("/dextlab-usb/e2e/tool", test_tool);
    g_test_add_func("/dextlab-usb/e2e/unplug-replug", test_unplug_replug);
    g_test_add_func("/dextlab-usb/e2e/crash-relaunch", test_crash_relaunch);
    int rc = g_test_run();
    close(t.qmp);
    int status = e2e_dextd_stop(t.d, 0);
    if (valgrind && !valgrind_clean(e2e_dextd_dir(t.d))) {
        rc = 1;
    }
    g_free(vg_bundle);
    e2e_dextd_free(t.d, rc != 0 || status == -1 || !WIFEXITED(status));
    g_free(machine);
    g_free(dir);
    g_free(t.qmp_path);
    g_free(t.id[SS]);
    g_free(t.id[HS]);
    g_free(t.pid);
    return rc;
}
