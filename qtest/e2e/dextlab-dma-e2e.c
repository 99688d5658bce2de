/*
 * End-to-end tests of the dextlab-dma driver (drivers/dextlab-dma/), its
 * user client and dextlab-dma-tool on the qtest platform.
 *
 * One dextd runs a q35 machine with two dextlab-dma devices and only the
 * dextlab-dma bundle; a second QMP monitor (ExtraArgs) lets the test read
 * the device's own counters (qom-get stat-*), which the driver cannot
 * influence.  This program is the app (org.dextlab.dma-e2e, entitled to
 * control services for the stop/start cycles).
 *
 * Environment (meson): DEXTD, DEXTLAB_DMA_BUNDLE (bundle folder),
 * DEXTLAB_DMA_TOOL (the tool's executable); DEXTLAB_DMA_VALGRIND (path of
 * valgrind): run the driver under it through a wrapper bundle, and fail on
 * any memory error or definite leak it reports.  Each test path names the
 * behaviour it guards.
 */
#include "dxl-app.h"
#include "e2e-dextd.h"
#include "e2e-services.h"

#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hw/dextlab/dextlab-dma-regs.h"

static struct {
    E2eDextd *d;
    char *dir, *qmp_path;
    const char *sock;
    int qmp;
    uint64_t id[2];             /* service ids of dma0, dma1 */
    char *idstr[2];
} t = { .qmp = -1 };

static const char *const dev_qom[2] = {
    "/machine/peripheral/dma0", "/machine/peripheral/dma1",
};

/* ---- dextd --------------------------------------------------------------- */

static char *read_log(void)
{
    return e2e_dextd_read_log(t.d);
}

/* Lines "id class server state pid launches starts" of our class. */
static GPtrArray *services(void)
{
    return e2e_services(t.sock, DXL_UC_CLASS);
}

static char *service_field(uint64_t id, int idx)
{
    GPtrArray *a = services();
    char *v = NULL;
    for (guint i = 0; i < a->len && !v; i++) {
        char **f = a->pdata[i];
        if (g_ascii_strtoull(f[0], NULL, 10) == id) {
            v = g_strdup(f[idx]);
        }
    }
    g_ptr_array_free(a, TRUE);
    return v;
}

static bool wait_state(uint64_t id, const char *state, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    do {
        char *st = service_field(id, 3);
        bool ok = st && !strcmp(st, state);
        g_free(st);
        if (ok) {
            return true;
        }
        g_usleep(20000);
    } while (g_get_monotonic_time() < end);
    return false;
}

/* ---- QMP (the device's own view) ----------------------------------------- */

static JsonObject *qmp_read(JsonParser *p)
{
    char line[8192];
    size_t n = 0;
    for (;;) {
        char c;
        ssize_t r = read(t.qmp, &c, 1);
        g_assert_cmpint(r, ==, 1);
        if (c == '\n') {
            break;
        }
        g_assert_cmpuint(n, <, sizeof(line) - 1);
        line[n++] = c;
    }
    line[n] = 0;
    g_assert_true(json_parser_load_from_data(p, line, -1, NULL));
    return json_node_get_object(json_parser_get_root(p));
}

/* Execute and return the "return" member as an int (events skipped). */
static int64_t qmp_int(const char *cmd)
{
    g_assert_cmpint(write(t.qmp, cmd, strlen(cmd)), ==, (ssize_t)strlen(cmd));
    for (;;) {
        JsonParser *p = json_parser_new();
        JsonObject *o = qmp_read(p);
        if (json_object_has_member(o, "event")) {
            g_object_unref(p);
            continue;
        }
        if (!json_object_has_member(o, "return")) {
            g_error("QMP %s failed", cmd);
        }
        JsonNode *r = json_object_get_member(o, "return");
        int64_t v = JSON_NODE_HOLDS_VALUE(r) ? json_node_get_int(r) : 0;
        g_object_unref(p);
        return v;
    }
}

static uint64_t dev_stat(int dev, const char *prop)
{
    char *cmd = g_strdup_printf("{\"execute\":\"qom-get\",\"arguments\":{\"path\":\"%s\","
                                "\"property\":\"%s\"}}\n", dev_qom[dev], prop);
    uint64_t v = (uint64_t)qmp_int(cmd);
    g_free(cmd);
    return v;
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
    JsonObject *o = qmp_read(p); /* greeting */
    g_assert_true(json_object_has_member(o, "QMP"));
    g_object_unref(p);
    qmp_int("{\"execute\":\"qmp_capabilities\"}\n");
}

/* Every valgrind log of the run: no errors, no definite leaks. */
static bool valgrind_clean(void)
{
    GDir *d = g_dir_open(t.dir, 0, NULL);
    const char *n;
    unsigned logs = 0;
    bool ok = true;
    while (d && (n = g_dir_read_name(d))) {
        if (!g_str_has_prefix(n, "vg-")) {
            continue;
        }
        char *path = g_build_filename(t.dir, n, NULL), *s = NULL;
        g_file_get_contents(path, &s, NULL, NULL);
        logs++;
        if (!s || !strstr(s, "ERROR SUMMARY: 0 errors") ||
            (strstr(s, "definitely lost:") && !strstr(s, "definitely lost: 0 bytes"))) {
            g_printerr("valgrind reports problems in %s:\n%s\n", path, s ? s : "");
            ok = false;
        }
        g_free(s);
        g_free(path);
    }
    if (d) {
        g_dir_close(d);
    }
    return ok && logs > 0;
}

/* A process of the test's (the tool) must not outlive a test that failed
 * an assertion: it would hold meson's pipes open until the timeout. */
static void die_with_parent(gpointer unused)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
}

static void start_dextd(void)
{
    const char *bundle = g_getenv("DEXTLAB_DMA_BUNDLE");
    g_assert_nonnull(bundle);
    /* the machine file names the QMP socket in the work folder: made here,
     * handed to the E2eDextd */
    t.dir = g_dir_make_tmp("dxl-e2e-XXXXXX", NULL);
    if (g_getenv("DEXTLAB_DMA_VALGRIND")) {
        GError *vg_err = NULL;
        bundle = e2e_valgrind_bundle(t.dir, bundle, g_getenv("DEXTLAB_DMA_VALGRIND"), &vg_err);
        g_assert_no_error(vg_err);
    }
    t.qmp_path = g_build_filename(t.dir, "qmp.sock", NULL);
    char *machine = g_build_filename(t.dir, "dma2.machine", NULL);
    char *desc = g_strdup_printf(
        "[Machine]\nType=q35\nMemory=1G\nDmaMemory=512M\nTimeout=20000\n"
        "ExtraArgs=-qmp unix:%s,server=on,wait=off\n"
        "[Device rp0]\nArgs=pcie-root-port,id=rp0,chassis=1,slot=1\n"
        "[Device dma0]\nArgs=dextlab-dma,id=dma0,bus=rp0\n"
        "[Device rp1]\nArgs=pcie-root-port,id=rp1,chassis=2,slot=2\n"
        "[Device dma1]\nArgs=dextlab-dma,id=dma1,bus=rp1\n", t.qmp_path);
    g_assert_true(g_file_set_contents(machine, desc, -1, NULL));
    E2eDextdConfig cfg = {
        .name = "dextlab-dma-e2e",
        .machine = machine,
        .drivers = (const char *const[]){ bundle, NULL },
        .dir = t.dir,
    };
    GError *e = NULL;
    t.d = e2e_dextd_start(&cfg, &e);
    g_assert_no_error(e);
    t.sock = e2e_dextd_socket(t.d);
    g_free(desc);
    g_free(machine);
    qmp_connect();
}

static void open_dev(DxlApp *a, int dev, uint64_t window)
{
    int rc = dxl_app_open(a, t.sock, "id", t.idstr[dev], window);
    g_assert_cmpint(rc, ==, 0);
}

/* Run the tool against device @dev; returns its exit status, output in *out. */
static int run_tool(int dev, const char *args, char **out)
{
    const char *tool = g_getenv("DEXTLAB_DMA_TOOL");
    g_assert_nonnull(tool);
    char *cmd = g_strdup_printf("'%s' -S '%s' -D %s %s", tool, t.sock, t.idstr[dev], args);
    char *o = NULL, *e = NULL;
    int status = -1;
    g_assert_true(g_spawn_command_line_sync(cmd, &o, &e, &status, NULL));
    if (g_test_verbose()) {
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

/* ---- tests --------------------------------------------------------------- */

/* Guards: both devices are matched to this bundle and each gets its own
 * driver instance (service), both running, in one server process. */
static void test_two_instances(void)
{
    gint64 end = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    GPtrArray *a;
    for (;;) {
        a = services();
        unsigned running = 0;
        for (guint i = 0; i < a->len; i++) {
            running += !strcmp(((char **)a->pdata[i])[3], "running");
        }
        if (running == 2 || g_get_monotonic_time() > end) {
            break;
        }
        g_ptr_array_free(a, TRUE);
        g_usleep(50000);
    }
    g_assert_cmpuint(a->len, ==, 2);
    char **f0 = a->pdata[0], **f1 = a->pdata[1];
    g_assert_cmpstr(f0[3], ==, "running");
    g_assert_cmpstr(f1[3], ==, "running");
    g_assert_cmpstr(f0[2], ==, DXL_UC_SERVER);
    g_assert_cmpstr(f0[4], ==, f1[4]);          /* one process per server name */
    g_assert_cmpstr(f0[0], !=, f1[0]);
    /* registry order follows enumeration: dma0 (bus 1) before dma1 (bus 2) */
    char *j = NULL;
    g_assert_cmpint(dext_daemon_registry(t.sock, 1, &j), ==, 0);
    char *p0 = strstr(j, "0000:01:00.0"), *p1 = strstr(j, "0000:02:00.0");
    g_assert_nonnull(p0);
    g_assert_nonnull(p1);
    t.id[0] = g_ascii_strtoull(f0[0], NULL, 10);
    t.id[1] = g_ascii_strtoull(f1[0], NULL, 10);
    /* services are listed in creation order = enumeration order */
    t.idstr[0] = g_strdup(f0[0]);
    t.idstr[1] = g_strdup(f1[0]);
    char *log = read_log();
    char **parts = g_strsplit(log, "matched dextlab-dma/DextlabDma", -1);
    g_assert_cmpuint(g_strv_length(parts), ==, 3);
    g_strfreev(parts);
    g_free(log);
    g_free(j);
    g_ptr_array_free(a, TRUE);
}

/* Guards: the tool moves verified data with every op on all eight queues
 * of both devices, and each device saw its own share of the work. */
static void test_tool_all_queues(void)
{
    uint64_t before[2] = { dev_stat(0, "stat-desc"), dev_stat(1, "stat-desc") };
    char *out = NULL;
    g_assert_cmpint(run_tool(0, "copy -q all -s 256K -n 96 -d 4", &out), ==, 0);
    g_assert_nonnull(strstr(out, "96 ok, 0 failed, 0 bad data"));
    g_free(out);
    g_assert_cmpint(run_tool(0, "fill -q all -s 100003 -n 64 -d 2 -p 0x0123456789abcdef", NULL),
                    ==, 0);
    g_assert_cmpint(run_tool(0, "crc -q all -s 1M -n 32 -d 2", NULL), ==, 0);
    /* a CRC longer than one descriptor chains results across descriptors */
    g_assert_cmpint(run_tool(0, "crc -q 5 -s 40M -n 2 -d 1", NULL), ==, 0);
    g_assert_cmpint(run_tool(1, "copy -q all -s 64K -n 64 -d 8", NULL), ==, 0);
    uint64_t after[2] = { dev_stat(0, "stat-desc"), dev_stat(1, "stat-desc") };
    g_assert_cmpuint(after[0] - before[0], ==, 96 + 64 + 32 + 2 * 3);
    g_assert_cmpuint(after[1] - before[1], ==, 64);
    for (int q = 0; q < 8; q++) {
        char prop[32];
        snprintf(prop, sizeof(prop), "stat-q%d-desc", q);
        g_assert_cmpuint(dev_stat(0, prop), >=, 3);    /* every op reached every queue */
        g_assert_cmpuint(dev_stat(1, prop), ==, 64 / 8); /* one request per slot */
    }
}

/* One per-queue counter summed over the driver's queues. */
#define QUEUE_SUM(s, field) queue_sum((s), offsetof(struct dxl_uc_queue_stats, field))
static uint64_t queue_sum(const struct dxl_uc_stats *s, size_t off)
{
    uint64_t n = 0;
    for (unsigned q = 0; q < s->num_queues && q < DXL_UC_NUM_QUEUES; q++) {
        n += *(const uint64_t *)((const uint8_t *)&s->q[q] + off);
    }
    return n;
}

static uint64_t driver_irqs(const struct dxl_uc_stats *s)
{
    return s->irqs_admin + QUEUE_SUM(s, irqs);
}

/* @count verified requests of @op on all 8 queues, @depth in flight on
 * each: all must succeed with correct data. */
static void job_all_queues_ok(DxlApp *a, unsigned op, uint64_t size, uint64_t count,
                              unsigned depth)
{
    DxlJob j = { .op = op, .nq = 8, .size = size, .count = count, .depth = depth,
                 .verify = true };
    for (unsigned q = 0; q < 8; q++) {
        j.qs[q] = q;
    }
    DxlResult r;
    g_assert_cmpint(dxl_app_job(a, &j, &r), ==, 0);
    g_assert_cmpuint(r.ok, ==, count);
    g_assert_cmpuint(r.verify_failed, ==, 0);
    dxl_result_clear(&r);
}

/* Guards: every interrupt the device sent was handled by the driver and
 * every completion it wrote was reaped: the driver's counts equal the
 * device's own (QMP), after app traffic on all queues. */
static void test_irqs_equal_device(void)
{
    DxlApp a;
    open_dev(&a, 1, 1 << 20);
    job_all_queues_ok(&a, DXL_UC_OP_COPY, 32 << 10, 800, 4);
    /* An MSI whose completion an earlier handler already reaped is still
     * on its way: wait (bounded) for the counts to settle. */
    struct dxl_uc_stats s;
    uint64_t dev_irqs = 0, dev_desc = 0;
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    do {
        g_usleep(20000);
        g_assert_cmpint(dxl_app_stats(&a, &s), ==, 0);
        dev_irqs = dev_stat(1, "stat-irqs");
        dev_desc = dev_stat(1, "stat-desc");
    } while ((driver_irqs(&s) != dev_irqs || QUEUE_SUM(&s, completions) != dev_desc) &&
             g_get_monotonic_time() < end);
    g_assert_cmpuint(driver_irqs(&s), ==, dev_irqs);
    g_assert_cmpuint(QUEUE_SUM(&s, completions), ==, dev_desc);
    g_assert_cmpuint(s.dev_irqs, ==, dev_irqs);     /* registers and QOM agree */
    g_assert_cmpuint(dev_desc, >=, 800);
    /* one interrupt per request at most, not per descriptor of every kind */
    g_assert_cmpuint(dev_irqs, <=, dev_desc);
    g_assert_cmpuint(dev_stat(1, "stat-errors"), ==, 0);
    dxl_app_close(&a);
}

/* Guards: device errors reach the app as errors with the device's code,
 * are drained from the error log by the admin vector, counted like the
 * device counts them, and the queue keeps working afterwards. */
static void test_device_errors(void)
{
    DxlApp a;
    open_dev(&a, 0, 1 << 20);
    uint64_t errs0 = dev_stat(0, "stat-errors");
    struct dxl_uc_stats s0;
    g_assert_cmpint(dxl_app_stats(&a, &s0), ==, 0);
    int st = 0;
    uint64_t data[DXL_UC_CPL_COUNT];
    g_assert_cmpint(dxl_app_run(&a, 3, DXL_UC_OP_DIAG_BAD_OPCODE, 0, 0, 1, 0, 5000, &st, data),
                    ==, 0);
    g_assert_cmpint(st, ==, -EIO);
    g_assert_cmpuint(data[DXL_UC_CPL_DEV_STATUS], ==, DXL_ERR_BAD_OPCODE);
    /* async path too, on another queue */
    g_assert_cmpint(dxl_app_submit(&a, 6, DXL_UC_OP_DIAG_UNMAPPED, 0, 0, 1, 0, 77, 5), ==, 0);
    uint64_t ref = 0;
    g_assert_cmpint(dxl_app_wait(&a, 5000, &ref, &st, data), ==, 0);
    g_assert_cmpuint(ref, ==, 5);
    g_assert_cmpint(st, ==, -EIO);
    g_assert_cmpuint(data[DXL_UC_CPL_TAG], ==, 77);
    g_assert_cmpuint(data[DXL_UC_CPL_DEV_STATUS], ==, DXL_ERR_DMA_UNMAPPED);
    /* the error log, drained by the admin vector (asynchronously) */
    struct dxl_uc_errlog l;
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    do {
        g_usleep(10000);
        g_assert_cmpint(dxl_app_errlog(&a, &l), ==, 0);
    } while (l.total < s0.errlog_entries + 2 && g_get_monotonic_time() < end);
    g_assert_cmpuint(l.total, ==, s0.errlog_entries + 2);
    g_assert_cmpuint(l.e[l.count - 2].code, ==, DXL_ERR_BAD_OPCODE);
    g_assert_cmpuint(l.e[l.count - 2].queue, ==, 3);
    g_assert_cmpuint(l.e[l.count - 1].code, ==, DXL_ERR_DMA_UNMAPPED);
    g_assert_cmpuint(l.e[l.count - 1].queue, ==, 6);
    g_assert_cmpuint(l.e[l.count - 1].addr, ==, 1ull << 46);
    struct dxl_uc_stats s;
    g_assert_cmpint(dxl_app_stats(&a, &s), ==, 0);
    g_assert_cmpuint(s.irqs_admin, >=, s0.irqs_admin + 1);
    g_assert_cmpuint(s.q[3].cpl_errors, ==, s0.q[3].cpl_errors + 1);
    g_assert_cmpuint(s.q[6].req_failed, ==, s0.q[6].req_failed + 1);
    g_assert_cmpuint(dev_stat(0, "stat-errors") - errs0, ==, 2);
    g_assert_cmpuint(dev_stat(0, "stat-q3-errors"), >=, 1);
    /* the queues carry on */
    dxl_pattern(a.win, 4096, 9);
    g_assert_cmpint(dxl_app_run(&a, 3, DXL_UC_OP_COPY, 0, 8192, 4096, 0, 5000, &st, data), ==, 0);
    g_assert_cmpint(st, ==, 0);
    g_assert_cmpmem(a.win, 4096, a.win + 8192, 4096);
    dxl_app_close(&a);
    /* and the tool reports it as an error of the device */
    char *out = NULL;
    g_assert_cmpint(run_tool(0, "diag -q 1", &out), ==, 0);
    g_assert_nonnull(strstr(out, "device status BAD_OPCODE"));
    g_free(out);
}

/* Guards: every selector, count, size and buffer range from the app is
 * checked; a refused call submits nothing and the connection lives on. */
static void test_validation(void)
{
    DxlApp a;
    uint64_t out[16], in[8];
    uint32_t nout;
    int st;
    uint64_t data[DXL_UC_CPL_COUNT];
    /* no window yet */
    DextConnection *c = NULL;
    g_assert_cmpint(dext_client_open(t.sock, "id", t.idstr[0], &c), ==, 0);
    uint64_t sub[7] = { 0, DXL_UC_OP_FILL, 0, 0, 64, 0, 0 };
    nout = 1;
    g_assert_cmpint(dext_client_call_async(c, DXL_UC_SEL_SUBMIT, 1, sub, 7, NULL, 0, out, &nout,
                                           NULL, NULL), ==, -ENXIO);
    void *p;
    uint64_t sz;
    g_assert_cmpint(dext_client_map_memory(c, DXL_UC_MEM_WINDOW, 0, &p, &sz), <, 0);
    g_assert_cmpint(dext_client_map_memory(c, 7, 0, &p, &sz), <, 0);
    /* window sizes */
    const uint64_t bad_win[] = { 0, 4095, DXL_UC_WINDOW_MAX + 1, UINT64_MAX };
    for (unsigned i = 0; i < G_N_ELEMENTS(bad_win); i++) {
        nout = 1;
        g_assert_cmpint(dext_client_call(c, DXL_UC_SEL_SET_WINDOW, &bad_win[i], 1, NULL, 0, out,
                                         &nout, NULL, NULL), ==, -EINVAL);
    }
    /* selectors and counts */
    nout = 1;
    g_assert_cmpint(dext_client_call(c, DXL_UC_SEL_COUNT, NULL, 0, NULL, 0, out, &nout, NULL,
                                     NULL), <, 0);
    nout = 8;
    g_assert_cmpint(dext_client_call(c, DXL_UC_SEL_INFO, in, 1, NULL, 0, out, &nout, NULL,
                                     NULL), ==, -EINVAL);
    nout = 1;
    g_assert_cmpint(dext_client_call(c, DXL_UC_SEL_SUBMIT, sub, 7, NULL, 0, out, &nout, NULL,
                                     NULL), <, 0); /* async selector called sync */
    dext_client_close(c);

    open_dev(&a, 0, 64 << 10);
    struct dxl_uc_stats s0, s1;
    g_assert_cmpint(dxl_app_stats(&a, &s0), ==, 0);
    const uint64_t W = a.wsize;
    struct {
        uint64_t q, op, src, dst, len, arg;
    } bad[] = {
        { 8, DXL_UC_OP_COPY, 0, 8192, 64, 0 },              /* no such queue */
        { UINT64_MAX, DXL_UC_OP_COPY, 0, 8192, 64, 0 },
        { 0, 0, 0, 8192, 64, 0 },                           /* no such op */
        { 0, 0x7f, 0, 8192, 64, 0 },
        { 0, DXL_UC_OP_COPY, 0, 8192, 0, 0 },               /* empty */
        { 0, DXL_UC_OP_COPY, 0, 64, 128, 0 },               /* overlap */
        { 0, DXL_UC_OP_COPY, W - 63, 0, 64, 0 },            /* past the window */
        { 0, DXL_UC_OP_COPY, 0, W, 1, 0 },
        { 0, DXL_UC_OP_COPY, UINT64_MAX - 10, 0, 64, 0 },   /* wraps */
        { 0, DXL_UC_OP_FILL, 0, 1, UINT64_MAX, 0 },
        { 0, DXL_UC_OP_FILL, 0, 0, W + 1, 0 },
        { 0, DXL_UC_OP_CRC32C, 0, 0, 64, 1ull << 32 },      /* seed is 32-bit */
        { 0, DXL_UC_OP_CRC32C, W, 0, 1, 0 },
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_cmpint(dxl_app_submit(&a, (unsigned)bad[i].q, (unsigned)bad[i].op, bad[i].src,
                                       bad[i].dst, bad[i].len, bad[i].arg, i, 1), ==, -EINVAL);
        g_assert_cmpint(dxl_app_run(&a, (unsigned)bad[i].q, (unsigned)bad[i].op, bad[i].src,
                                    bad[i].dst, bad[i].len, bad[i].arg, 1000, &st, data),
                        ==, -EINVAL);
    }
    /* sync timeout bounds */
    uint64_t w0[8] = { 0, DXL_UC_OP_FILL, 0, 0, 64, 0, 0, 0 };
    nout = DXL_UC_CPL_COUNT + 1;
    g_assert_cmpint(dext_client_call(a.c, DXL_UC_SEL_SUBMIT_WAIT, w0, 8, NULL, 0, out, &nout,
                                     NULL, NULL), ==, -EINVAL);
    w0[7] = 30001;
    g_assert_cmpint(dext_client_call(a.c, DXL_UC_SEL_SUBMIT_WAIT, w0, 8, NULL, 0, out, &nout,
                                     NULL, NULL), ==, -EINVAL);
    /* batches: size checks, all or nothing */
    struct dxl_uc_req batch[DXL_UC_BATCH_MAX + 1];
    for (unsigned i = 0; i <= DXL_UC_BATCH_MAX; i++) {
        batch[i] = (struct dxl_uc_req){ i % 8, DXL_UC_OP_FILL, 0, 0, 64, i, i + 1 };
    }
    g_assert_cmpint(dxl_app_submit_batch(&a, batch, DXL_UC_BATCH_MAX + 1, 1), <, 0);
    batch[10].len = W + 1;
    g_assert_cmpint(dxl_app_submit_batch(&a, batch, 20, 1), ==, -EINVAL);
    nout = 1;
    g_assert_cmpint(dext_client_call_async(a.c, DXL_UC_SEL_SUBMIT_BATCH, 1, NULL, 0, batch, 55,
                                           out, &nout, NULL, NULL), ==, -EINVAL);
    /* posted (no reply): a refused batch completes its reference with the
     * error and no data; the checks are the same */
    g_assert_cmpint(dxl_app_submit_batch_posted(&a, batch, 20, 5), ==, 0);
    uint64_t pref = 0;
    g_assert_cmpint(dxl_app_wait(&a, 5000, &pref, &st, data), ==, -EINVAL);
    g_assert_cmpuint(pref, ==, 5);
    g_assert_cmpint(dext_client_call_posted(a.c, DXL_UC_SEL_SUBMIT_BATCH, 6, NULL, 0, batch, 55),
                    ==, 0);
    g_assert_cmpint(dxl_app_wait(&a, 5000, &pref, &st, data), ==, -EINVAL);
    g_assert_cmpuint(pref, ==, 6);
    g_assert_cmpint(dxl_app_stats(&a, &s1), ==, 0);
    for (unsigned q = 0; q < 8; q++) {
        g_assert_cmpuint(s1.q[q].requests, ==, s0.q[q].requests);  /* nothing submitted */
    }
    /* the connection still works */
    batch[10].len = 64;
    g_assert_cmpint(dxl_app_submit_batch(&a, batch, 16, 3), ==, 0);
    for (unsigned i = 0; i < 16; i++) {
        uint64_t ref;
        g_assert_cmpint(dxl_app_wait(&a, 5000, &ref, &st, data), ==, 0);
        g_assert_cmpint(st, ==, 0);
        g_assert_cmpuint(ref, ==, 3);
    }
    g_assert_cmpint(dxl_app_submit_batch_posted(&a, batch, 16, 4), ==, 0);
    for (unsigned i = 0; i < 16; i++) {
        uint64_t ref;
        g_assert_cmpint(dxl_app_wait(&a, 5000, &ref, &st, data), ==, 0);
        g_assert_cmpint(st, ==, 0);
        g_assert_cmpuint(ref, ==, 4);
    }
    dxl_app_close(&a);
}

/* Guards: requests published in the submission ring all run, on every
 * queue, with data verified, and a busy app submits without kicking: the
 * driver looks at the ring after each completion (a kick per request
 * would mean the suppression protocol broke; a lost wake-up would hang
 * the job and fail it after its 30 s wait). */
static void test_ring_verified(void)
{
    DxlApp a;
    open_dev(&a, 0, 1 << 20);
    g_assert_cmpint(dxl_app_ring_attach(&a, 1), ==, 0);
    struct dxl_uc_stats s0, s1;
    g_assert_cmpint(dxl_app_stats(&a, &s0), ==, 0);
    job_all_queues_ok(&a, DXL_UC_OP_COPY, 64 << 10, 1200, 4);
    job_all_queues_ok(&a, DXL_UC_OP_CRC32C, 64 << 10, 200, 4);
    g_assert_cmpint(dxl_app_stats(&a, &s1), ==, 0);
    uint64_t taken = s1.ring_taken - s0.ring_taken;
    g_assert_cmpuint(taken, ==, 1400);
    /* all through the ring */
    g_assert_cmpuint(QUEUE_SUM(&s1, requests) - QUEUE_SUM(&s0, requests), ==, 1400);
    g_assert_cmpuint(s1.ring_refused, ==, s0.ring_refused);
    g_assert_cmpuint(s1.ring_kicks - s0.ring_kicks, ==, a.ring_kicks);
    g_assert_cmpuint(s1.ring_drains, >, s0.ring_drains);
    if (g_test_verbose()) {
        g_printerr("ring: %" G_GUINT64_FORMAT " requests, %" G_GUINT64_FORMAT " kicks, %"
                   G_GUINT64_FORMAT " looks after a completion\n", taken, a.ring_kicks,
                   s1.ring_drains - s0.ring_drains);
    }
    g_assert_cmpuint(a.ring_kicks * 2, <, taken);
    dxl_app_close(&a);
}

/* Guards: the ring is app memory the driver must not trust.  Bad entries
 * complete -EINVAL with their own tag and do not stop the good ones; a tail
 * that runs past the ring breaks it (-EPROTO) without losing requests or
 * the connection; one ring per connection; no ring memory before attach. */
static void test_ring_untrusted(void)
{
    DxlApp a;
    uint64_t ref, data[DXL_UC_CPL_COUNT], sz;
    int st;
    void *p;
    open_dev(&a, 0, 64 << 10);
    const uint64_t W = a.wsize;
    g_assert_cmpint(dext_client_map_memory(a.c, DXL_UC_MEM_RING, 0, &p, &sz), ==, -ENXIO);
    g_assert_cmpint(dext_client_call_posted(a.c, DXL_UC_SEL_RING_KICK, 9, NULL, 0, NULL, 0), ==,
                    0);
    g_assert_cmpint(dxl_app_wait(&a, 5000, &ref, &st, data), ==, -ENXIO);
    g_assert_cmpint(dxl_app_ring_attach(&a, 7), ==, 0);
    DxlApp b = a;
    g_assert_cmpint(dxl_app_ring_attach(&b, 8), ==, -EBUSY);
    struct dxl_uc_stats s0, s1;
    g_assert_cmpint(dxl_app_stats(&a, &s0), ==, 0);
    struct dxl_uc_req e[] = {
        { 0, DXL_UC_OP_FILL, 0, 0, 4096, 0x11, 1 },
        { 8, DXL_UC_OP_COPY, 0, 8192, 64, 0, 2 },          /* no such queue */
        { 1, DXL_UC_OP_COPY, 0, 64, 128, 0, 3 },           /* overlap */
        { 2, DXL_UC_OP_FILL, 0, W - 8, 64, 0, 4 },         /* past the window */
        { 3, 0x7f, 0, 0, 64, 0, 5 },                       /* no such op */
        { 4, DXL_UC_OP_COPY, 0, 8192, 4096, 0, 6 },
        { 5, DXL_UC_OP_CRC32C, 0, 0, 64, 1ull << 32, 7 },  /* seed is 32-bit */
        { 6, DXL_UC_OP_FILL, 16384, 16384, 4096, 0x22, 8 },
    };
    const int want[] = { 0, -EINVAL, -EINVAL, -EINVAL, -EINVAL, 0, -EINVAL, 0 };
    g_assert_cmpint(dxl_app_ring_submit(&a, e, G_N_ELEMENTS(e)), ==, (int)G_N_ELEMENTS(e));
    unsigned seen = 0;
    for (unsigned i = 0; i < G_N_ELEMENTS(e); i++) {
        g_assert_cmpint(dxl_app_wait(&a, 5000, &ref, &st, data), ==, 0);
        g_assert_cmpuint(ref, ==, 7);
        uint64_t tag = data[DXL_UC_CPL_TAG];
        g_assert_cmpuint(tag, >=, 1);
        g_assert_cmpuint(tag, <=, G_N_ELEMENTS(e));
        g_assert_false(seen & (1u << tag));
        seen |= 1u << tag;
        g_assert_cmpint(st, ==, want[tag - 1]);
    }
    g_assert_cmpint(dxl_app_stats(&a, &s1), ==, 0);
    g_assert_cmpuint(s1.ring_taken - s0.ring_taken, ==, G_N_ELEMENTS(e));
    g_assert_cmpuint(s1.ring_refused - s0.ring_refused, ==, 5);
    g_assert_cmpuint(QUEUE_SUM(&s1, requests) - QUEUE_SUM(&s0, requests), ==, 3);
    /* a tail far past the driver's head: broken, reported, nothing taken */
    __atomic_store_n(&a.ring->tail, a.ring_tail + DXL_UC_RING_ENTRIES + 1, __ATOMIC_RELEASE);
    g_assert_cmpint(dext_client_call_posted(a.c, DXL_UC_SEL_RING_KICK, 7, NULL, 0, NULL, 0), ==,
                    0);
    g_assert_cmpint(dxl_app_wait(&a, 5000, &ref, &st, data), ==, -EPROTO);
    g_assert_cmpuint(ref, ==, 7);
    g_assert_cmpuint(__atomic_load_n(&a.ring->status, __ATOMIC_ACQUIRE), ==, EPROTO);
    g_assert_cmpint(dxl_app_ring_submit(&a, e, 1), ==, -EPROTO);
    g_assert_cmpint(dxl_app_stats(&a, &s0), ==, 0);
    g_assert_cmpuint(s0.ring_taken, ==, s1.ring_taken);
    /* the connection still works through calls */
    g_assert_cmpint(dxl_app_submit_batch(&a, e, 1, 3), ==, 0);
    g_assert_cmpint(dxl_app_wait(&a, 5000, &ref, &st, data), ==, 0);
    g_assert_cmpint(st, ==, 0);
    g_assert_cmpuint(ref, ==, 3);
    dxl_app_close(&a);
    char *lg = read_log();
    g_assert_nonnull(strstr(lg, "the ring is broken"));
    g_free(lg);
}

/* Guards: a reset with requests in flight completes every one of them
 * (done or -ECANCELED, none lost) and leaves a working device. */
static void test_reset(void)
{
    DxlApp a;
    open_dev(&a, 1, 64 << 20);
    unsigned n = 48;
    for (unsigned i = 0; i < n; i++) {
        g_assert_cmpint(dxl_app_submit(&a, i % 8, DXL_UC_OP_FILL, 0, (i % 4) * (16 << 20),
                                       16 << 20, i, i, 100 + i), ==, 0);
    }
    uint64_t resets = 0;
    g_assert_cmpint(dxl_app_reset(&a, &resets), ==, 0);
    g_assert_cmpuint(resets, >=, 2);
    unsigned ok = 0, cancelled = 0;
    for (unsigned i = 0; i < n; i++) {
        uint64_t ref, data[DXL_UC_CPL_COUNT];
        int st;
        g_assert_cmpint(dxl_app_wait(&a, 10000, &ref, &st, data), ==, 0);
        g_assert_true(st == 0 || st == -ECANCELED);
        ok += st == 0;
        cancelled += st == -ECANCELED;
    }
    g_assert_cmpuint(ok + cancelled, ==, n);
    if (g_test_verbose()) {
        g_printerr("reset: %u done, %u cancelled\n", ok, cancelled);
    }
    char *out = NULL;
    dxl_app_close(&a);
    g_assert_cmpint(run_tool(1, "copy -q all -s 128K -n 32 -d 2", &out), ==, 0);
    g_free(out);
}

static unsigned count_fds(const char *pid)
{
    char *path = g_strdup_printf("/proc/%s/fd", pid);
    GDir *d = g_dir_open(path, 0, NULL);
    unsigned n = 0;
    while (d && g_dir_read_name(d)) {
        n++;
    }
    if (d) {
        g_dir_close(d);
    }
    g_free(path);
    return n;
}

static uint64_t rss_kb(const char *pid)
{
    char *path = g_strdup_printf("/proc/%s/status", pid), *s = NULL;
    uint64_t v = 0;
    g_file_get_contents(path, &s, NULL, NULL);
    char *p = s ? strstr(s, "VmRSS:") : NULL;
    if (p) {
        v = g_ascii_strtoull(p + 6, NULL, 10);
    }
    g_free(s);
    g_free(path);
    return v;
}

static uint64_t dma_allocations(void)
{
    char *j = NULL;
    g_assert_cmpint(dext_daemon_registry(t.sock, 1, &j), ==, 0);
    char *p = strstr(j, "\"server-dma-allocations\"");
    g_assert_nonnull(p);
    uint64_t v = g_ascii_strtoull(strchr(p, ':') + 1, NULL, 10);
    g_free(j);
    return v;
}

/* Clients close asynchronously in the driver (after the app exits): wait,
 * bounded, for a counter to reach a value or to hold still. */
static uint64_t settle(uint64_t (*fn)(const char *), const char *arg, uint64_t want, bool any)
{
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    uint64_t v = fn(arg), prev = v + 1;
    while (g_get_monotonic_time() < end) {
        if (any ? v == prev : v == want) {
            break;
        }
        g_usleep(150000);
        prev = v;
        v = fn(arg);
    }
    return v;
}

static uint64_t fds_of(const char *pid) { return count_fds(pid); }
static uint64_t dma_of(const char *unused) { return dma_allocations(); }

/* Guards: Stop releases everything Start took and leaves the device idle;
 * repeated stop/start cycles with traffic leak no fds, memory or DMA
 * allocations in the driver process, and the device works after each. */
static void test_stop_start_cycles(void)
{
    char *pid = service_field(t.id[0], 4);
    g_assert_nonnull(pid);
    /* warm-up cycle: the first Stop/Start may allocate lazily (glib) */
    unsigned fds0 = 0;
    uint64_t rss0 = 0, dma0 = 0;
    for (int cycle = 0; cycle < 6; cycle++) {
        g_assert_cmpint(dext_daemon_service_ctl(t.sock, t.id[0], "stop"), ==, 0);
        g_assert_true(wait_state(t.id[0], "stopped", 20000));
        /* idle: the engine is disabled and nothing runs */
        uint64_t desc = dev_stat(0, "stat-desc");
        g_usleep(50000);
        g_assert_cmpuint(dev_stat(0, "stat-desc"), ==, desc);
        g_assert_cmpint(dext_daemon_service_ctl(t.sock, t.id[0], "start"), ==, 0);
        g_assert_true(wait_state(t.id[0], "running", 20000));
        char *pid2 = service_field(t.id[0], 4);
        g_assert_cmpstr(pid2, ==, pid);     /* same process: a leak would accumulate */
        g_free(pid2);
        /* the device's counters restart with the driver's reset */
        g_assert_cmpuint(dev_stat(0, "stat-desc"), ==, 0);
        char *out = NULL;
        g_assert_cmpint(run_tool(0, "copy -q all -s 64K -n 32 -d 2", &out), ==, 0);
        g_free(out);
        if (cycle == 1) {
            fds0 = (unsigned)settle(fds_of, pid, 0, true);
            dma0 = settle(dma_of, NULL, 0, true);
            rss0 = rss_kb(pid);
        } else if (cycle > 1) {
            g_assert_cmpuint(settle(fds_of, pid, fds0, false), ==, fds0);
            g_assert_cmpuint(settle(dma_of, NULL, dma0, false), ==, dma0);
            if (!g_getenv("DEXTLAB_DMA_VALGRIND")) { /* valgrind's own heap grows */
                g_assert_cmpuint(rss_kb(pid), <, rss0 + 2048); /* no per-cycle growth */
            }
        }
    }
    /* a stopped service's DMA allocations go back: only dma1's remain */
    g_assert_cmpint(dext_daemon_service_ctl(t.sock, t.id[0], "stop"), ==, 0);
    g_assert_true(wait_state(t.id[0], "stopped", 20000));
    g_assert_cmpuint(settle(dma_of, NULL, dma0 / 2, false), ==, dma0 / 2);
    g_assert_cmpint(dext_daemon_service_ctl(t.sock, t.id[0], "start"), ==, 0);
    g_assert_true(wait_state(t.id[0], "running", 20000));
    g_free(pid);
}

/* Guards: an app that dies with requests in flight costs the driver
 * nothing: its requests finish silently, its window is freed, other
 * clients are not affected. */
static void test_app_dies_midflight(void)
{
    const char *tool = g_getenv("DEXTLAB_DMA_TOOL");
    /* the tool itself (no shell in between): SIGKILL must hit the app */
    char *argv[] = { (char *)tool, "-S", (char *)t.sock, "-D", t.idstr[1], "copy", "-q", "all",
                     "-s", "8M", "-n", "100000", "-d", "4", "--no-verify", NULL };
    GPid pid;
    uint64_t dma_before = dma_allocations();
    g_assert_true(g_spawn_async(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD |
                                G_SPAWN_STDOUT_TO_DEV_NULL, die_with_parent, NULL, &pid, NULL));
    g_usleep(700000);
    g_assert_cmpint(kill(pid, SIGKILL), ==, 0);
    int status = 0;
    waitpid(pid, &status, 0);
    g_assert_true(WIFSIGNALED(status)); /* it was still running: killed mid-flight */
    g_assert_cmpuint(settle(dma_of, NULL, dma_before, false), ==, dma_before);
    char *out = NULL;
    g_assert_cmpint(run_tool(1, "crc -q all -s 256K -n 16 -d 2", &out), ==, 0);
    g_free(out);
    char *st = service_field(t.id[1], 3);
    g_assert_cmpstr(st, ==, "running");
    g_free(st);
}

/* Guards: an app that stops reading its completions loses its connection
 * within a bound instead of stalling the driver's interrupt threads, which
 * complete every other client's requests too (before, the driver blocked in
 * sendmsg for good and the other app's job below timed out). */
static void test_app_stops_reading(void)
{
    DxlApp mute, other;
    open_dev(&mute, 1, 1 << 20);
    open_dev(&other, 1, 1 << 20);
    /* 1024 completions (the in-flight limit) are more than an unread
     * SEQPACKET socket queues: net.unix.max_dgram_qlen (512 by default) and
     * the sender's buffer (net.core.wmem_default, ~200 KiB: a few hundred
     * such messages) both stop it well before */
    struct dxl_uc_req batch[DXL_UC_BATCH_MAX];
    for (unsigned b = 0; b < DXL_UC_MAX_INFLIGHT / DXL_UC_BATCH_MAX; b++) {
        for (unsigned i = 0; i < DXL_UC_BATCH_MAX; i++) {
            batch[i] = (struct dxl_uc_req){ i % 8, DXL_UC_OP_FILL, 0, i * 4096, 4096, b, i };
        }
        g_assert_cmpint(dxl_app_submit_batch_posted(&mute, batch, DXL_UC_BATCH_MAX, 1), ==, 0);
    }
    gint64 t0 = g_get_monotonic_time();
    job_all_queues_ok(&other, DXL_UC_OP_COPY, 32 << 10, 400, 2);
    if (g_test_verbose()) {
        g_printerr("the other app's job took %.2f s\n",
                   (double)(g_get_monotonic_time() - t0) / 1e6);
    }
    /* the mute app's connection is gone: what was queued, then the end */
    bool closed = false;
    for (unsigned i = 0; i < 2 * DXL_UC_MAX_INFLIGHT && !closed; i++) {
        uint64_t ref, data[DXL_UC_CPL_COUNT];
        int st;
        int rc = dxl_app_wait(&mute, 5000, &ref, &st, data);
        closed = rc < 0 && rc != -ETIMEDOUT;
        g_assert_cmpint(rc, !=, -ETIMEDOUT);
    }
    g_assert_true(closed);
    char *lg = read_log();
    g_assert_nonnull(strstr(lg, "does not read its messages"));
    g_free(lg);
    dxl_app_close(&mute);
    dxl_app_close(&other);
    char *st = service_field(t.id[1], 3);
    g_assert_cmpstr(st, ==, "running");
    g_free(st);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    signal(SIGPIPE, SIG_IGN);
    start_dextd();
    g_test_add_func("/dextlab-dma/e2e/two-devices-two-instances", test_two_instances);
    g_test_add_func("/dextlab-dma/e2e/tool-all-queues-verified", test_tool_all_queues);
    g_test_add_func("/dextlab-dma/e2e/irqs-equal-device-counts", test_irqs_equal_device);
    g_test_add_func("/dextlab-dma/e2e/device-errors-reach-app", test_device_errors);
    g_test_add_func("/dextlab-dma/e2e/user-client-validation", test_validation);
    g_test_add_func("/dextlab-dma/e2e/ring/verified-no-kicks", test_ring_verified);
    g_test_add_func("/dextlab-dma/e2e/ring/untrusted", test_ring_untrusted);
    g_test_add_func("/dextlab-dma/e2e/reset-midflight", test_reset);
    g_test_add_func("/dextlab-dma/e2e/stop-start-no-leaks", test_stop_start_cycles);
    g_test_add_func("/dextlab-dma/e2e/app-dies-midflight", test_app_dies_midflight);
    g_test_add_func("/dextlab-dma/e2e/app-stops-reading", test_app_stops_reading);
    int rc = g_test_run();
    close(t.qmp);
    int status = e2e_dextd_stop(t.d, 0);
    char *log = read_log();
    /* no driver crash, no "unexpected completion" anywhere in the run */
    if (strstr(log, "unexpected completion") || strstr(log, "crashed")) {
        g_printerr("dextd log shows a driver problem:\n%s", log);
        rc = 1;
    }
    if (rc == 0 && g_getenv("DEXTLAB_DMA_VALGRIND") && !valgrind_clean()) {
        rc = 1;
    }
    if (rc == 0 && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) {
        g_printerr("dextd exit status 0x%x\n", status);
        rc = 1;
    }
    e2e_dextd_free(t.d, rc != 0);
    g_free(log);
    return rc;
}
