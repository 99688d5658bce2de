/*
 * End-to-end tests of the runtime on the qtest platform: one dextd runs the
 * machine harness/machines/e2e.machine (dextlab-dma, virtio-net, xHCI) with
 * the bundles in build/drivers, and this program is the app.
 *
 * Environment (set by meson): DEXTD (daemon binary), DEXT_DRIVERS (':'-
 * separated bundle folders), DEXT_MACHINE (machine file), DEXT_PROBES (folder of the
 * uc-probe-* helpers).  Each test path names the behaviour it guards.
 */
#include "dext/client.h"
#include "e2e-dextd.h"
#include "e2e-services.h"

#include <errno.h>
#include <glib.h>
#include <json-glib/json-glib.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static E2eDextd *dd;

static const char *sock(void)
{
    return e2e_dextd_socket(dd);
}

static char *read_log(void)
{
    return e2e_dextd_read_log(dd);
}

static unsigned count_substr(const char *hay, const char *needle)
{
    unsigned n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) {
        n++;
    }
    return n;
}

/* Service table line for class, or NULL. */
static char *service_line(const char *cls)
{
    GPtrArray *a = e2e_services(sock(), cls);
    char *hit = a->len ? g_strjoinv(" ", a->pdata[0]) : NULL;
    g_ptr_array_unref(a);
    return hit;
}

static bool service_field(const char *cls, int idx, char **out)
{
    char *l = service_line(cls);
    if (!l) {
        return false;
    }
    char **f = g_strsplit(l, " ", -1);
    *out = g_strdup(f[idx]);
    g_strfreev(f);
    g_free(l);
    return true;
}

static bool wait_state(const char *cls, const char *state, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    while (g_get_monotonic_time() < end) {
        char *st = NULL;
        if (service_field(cls, 3, &st)) {
            bool ok = !strcmp(st, state);
            g_free(st);
            if (ok) {
                return true;
            }
        }
        g_usleep(50000);
    }
    return false;
}

static void start_dextd(void)
{
    const char *drivers = g_getenv("DEXT_DRIVERS"), *machine = g_getenv("DEXT_MACHINE");
    g_assert_nonnull(drivers);
    g_assert_nonnull(machine);
    /* DEXT_DRIVERS: ':'-separated bundle folders (only this test's
     * bundles: other suites' drivers in build/drivers must not compete). */
    E2eDextdConfig cfg = { .name = "dextd-e2e", .machine = machine, .drivers_path = drivers };
    GError *e = NULL;
    dd = e2e_dextd_start(&cfg, &e);
    g_assert_no_error(e);
}

/* --- matching and registry ------------------------------------------------ */

/* Guards: personalities are matched by score and entitlement; a higher
 * scored personality without the transport.pci entitlement is refused with
 * a logged reason and the entitled one wins. */
static void test_match_entitlement_refusal(void)
{
    g_assert_true(wait_state("DextTestDriver", "running", 30000));
    char *log = read_log();
    g_assert_nonnull(strstr(log, "refused dext-unentitled/Greedy (score 5000)"));
    g_assert_nonnull(strstr(log, "lacks a transport.pci entitlement"));
    g_assert_nonnull(strstr(log, "matched dext-test/DextTest"));
    g_assert_null(strstr(log, "UnentitledDriver Start"));
    g_free(log);
    char *l = service_line("UnentitledDriver");
    g_assert_null(l);
}

static JsonObject *find_entry(JsonObject *o, const char *name)
{
    if (!strcmp(json_object_get_string_member(o, "name"), name)) {
        return o;
    }
    JsonArray *a = json_object_get_array_member(o, "clients");
    for (guint i = 0; i < json_array_get_length(a); i++) {
        JsonObject *r = find_entry(json_array_get_object_element(a, i), name);
        if (r) {
            return r;
        }
    }
    return NULL;
}

/* Guards: the registry tree (host bridge -> root port -> device -> driver
 * instance) with typed properties, in JSON and text. */
static void test_registry(void)
{
    char *j = NULL, *t = NULL;
    g_assert_cmpint(dext_daemon_registry(sock(), 1, &j), ==, 0);
    g_assert_cmpint(dext_daemon_registry(sock(), 0, &t), ==, 0);
    JsonParser *p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, j, -1, NULL));
    JsonObject *root = json_node_get_object(json_parser_get_root(p));
    JsonObject *dma = find_entry(root, "0000:01:00.0");
    g_assert_nonnull(dma);
    JsonObject *props = json_object_get_object_member(dma, "properties");
    g_assert_cmpint(json_object_get_int_member(props, "vendor-id"), ==, 0xdec5);
    g_assert_cmpint(json_object_get_int_member(props, "device-id"), ==, 0x0001);
    g_assert_cmpint(json_object_get_int_member(props, "msix-vectors"), ==, 9);
    g_assert_cmpstr(json_object_get_string_member(props, "opened-by"), ==, "org.dextlab.dext-test");
    JsonArray *cl = json_object_get_array_member(dma, "clients");
    g_assert_cmpint(json_array_get_length(cl), ==, 1);
    JsonObject *drv = json_array_get_object_element(cl, 0);
    g_assert_cmpstr(json_object_get_string_member(drv, "class"), ==, "DextTestDriver");
    JsonObject *dp = json_object_get_object_member(drv, "properties");
    g_assert_cmpstr(json_object_get_string_member(dp, "state"), ==, "running");
    g_assert_cmpstr(json_object_get_string_member(dp, "IOUserServerName"), ==,
                    "org.dextlab.dext-test");
    /* the root port is the device's provider */
    JsonObject *rp = find_entry(root, "0000:00:01.0");
    g_assert_nonnull(rp);
    g_assert_nonnull(find_entry(rp, "0000:01:00.0"));
    g_assert_nonnull(strstr(t, "+-o DextTestDriver  <class DextTestDriver"));
    g_assert_nonnull(strstr(t, "\"vendor-id\" = 0xdec5"));
    g_object_unref(p);
    g_free(j);
    g_free(t);
}

/* --- the test driver ------------------------------------------------------ */

static DextConnection *open_test(void)
{
    DextConnection *c = NULL;
    int rc = dext_client_open(sock(), "class", "DextTestDriver", &c);
    g_assert_cmpint(rc, ==, 0);
    return c;
}

/* Guards: every libdext API used by the driver's Start self-test worked
 * against the device (config/BAR access of all widths, capabilities,
 * enables, reset, MSI-X sources, timers, actions, buffers, DMA commands,
 * a DMA copy, the runtime's register protections, exclusive open). */
static void test_driver_selftest(void)
{
    DextConnection *c = open_test();
    uint64_t st[6];
    uint32_t n = 6;
    g_assert_cmpint(dext_client_call(c, 2, NULL, 0, NULL, 0, st, &n, NULL, NULL), ==, 0);
    char report[4096];
    size_t rl = sizeof(report) - 1;
    g_assert_cmpint(dext_client_call(c, 5, NULL, 0, NULL, 0, NULL, NULL, report, &rl), ==, 0);
    report[rl] = 0;
    if (st[0] != st[1]) {
        g_test_message("driver report:\n%s", report);
    }
    g_assert_cmphex(st[0], ==, st[1]);
    g_assert_cmpuint(st[2], >=, 3);     /* admin interrupts */
    g_assert_cmpuint(st[3], >=, 2);     /* queue interrupts */
    g_assert_cmpuint(st[4], >=, 3);     /* timer ticks */
    g_assert_cmpuint(st[5], >=, 1);     /* DMA copies */
    g_assert_null(strstr(report, "FAIL"));
    g_assert_nonnull(strstr(report, "PASS dma-copy"));
    dext_client_close(c);
}

/* Guards: scalar and structure arguments reach the driver and come back;
 * the dispatch table is enforced on both sides. */
static void test_uc_methods(void)
{
    DextConnection *c = open_test();
    g_assert_cmpuint(dext_client_method_count(c), ==, 10);
    uint64_t in[2] = { 6, 7 }, out[2];
    uint32_t n = 2;
    g_assert_cmpint(dext_client_call(c, 0, in, 2, NULL, 0, out, &n, NULL, NULL), ==, 0);
    g_assert_cmpuint(out[0], ==, 13);
    g_assert_cmpuint(out[1], ==, 42);
    const char msg[] = "dextlab";
    char back[64];
    size_t bl = sizeof(back);
    g_assert_cmpint(dext_client_call(c, 1, NULL, 0, msg, 7, NULL, NULL, back, &bl), ==, 0);
    g_assert_cmpuint(bl, ==, 7);
    g_assert_cmpmem(back, 7, "baltxed", 7);
    /* wrong counts and sizes, unknown selector: refused before sending */
    n = 2;
    g_assert_cmpint(dext_client_call(c, 0, in, 1, NULL, 0, out, &n, NULL, NULL), ==, -EINVAL);
    n = 1;
    g_assert_cmpint(dext_client_call(c, 0, in, 2, NULL, 0, out, &n, NULL, NULL), ==, -EINVAL);
    g_assert_cmpint(dext_client_call(c, 99, NULL, 0, NULL, 0, NULL, NULL, NULL, NULL), ==, -EINVAL);
    char big[5000] = { 0 };
    bl = sizeof(back);
    g_assert_cmpint(dext_client_call(c, 1, NULL, 0, big, sizeof(big), NULL, NULL, back, &bl), ==,
                    -EINVAL);
    /* a method's own error comes back as its errno: reverse into too small */
    bl = 3;
    g_assert_cmpint(dext_client_call(c, 1, NULL, 0, msg, 7, NULL, NULL, back, &bl), ==, -EOVERFLOW);
    /* async-only method without a reference */
    uint64_t which = 0;
    g_assert_cmpint(dext_client_call(c, 3, &which, 1, NULL, 0, NULL, NULL, NULL, NULL), ==, -EINVAL);
    dext_client_close(c);
}

static int raw_send(int fd, const void *buf, size_t len)
{
    return send(fd, buf, len, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}

/* Guards: the driver validates what arrives on a user-client socket itself
 * (a hostile app bypassing libdextclient): well-framed bad requests get
 * errors and the connection lives; unframeable bytes close only that
 * connection. */
static void test_uc_hostile(void)
{
    DextConnection *c = open_test();
    int fd = dext_client_fd(c);
    /* valid header, UC_CALL with counts that contradict the table */
    uint8_t m[128];
    memset(m, 0, sizeof(m));
    memcpy(m, "DXT1", 4);
    m[4] = 1;
    m[6] = 81;           /* UC_CALL */
    m[8] = 0x77;         /* serial */
    m[16] = 7;           /* body size: garbage body */
    memset(m + 24, 0xff, 7);
    g_assert_cmpint(raw_send(fd, m, 31), ==, 0);
    /* unknown type */
    m[6] = 0xee;
    m[7] = 0x7e;
    m[16] = 0;
    g_assert_cmpint(raw_send(fd, m, 24), ==, 0);
    /* the connection still works (stale error replies are skipped) */
    uint64_t in[2] = { 1, 2 }, out[2];
    uint32_t n = 2;
    g_assert_cmpint(dext_client_call(c, 0, in, 2, NULL, 0, out, &n, NULL, NULL), ==, 0);
    g_assert_cmpuint(out[0], ==, 3);
    /* unframeable: 3 bytes */
    g_assert_cmpint(raw_send(fd, "xyz", 3), ==, 0);
    n = 2;
    int rc = dext_client_call(c, 0, in, 2, NULL, 0, out, &n, NULL, NULL);
    g_assert_cmpint(rc, ==, -ECONNRESET);
    dext_client_close(c);
    /* the driver and dextd are fine: a new connection works */
    c = open_test();
    n = 2;
    g_assert_cmpint(dext_client_call(c, 0, in, 2, NULL, 0, out, &n, NULL, NULL), ==, 0);
    dext_client_close(c);
    char *log = read_log();
    g_assert_nonnull(strstr(log, "bad message"));
    g_free(log);
}

/* Guards: async completions carry the interrupt's count and timestamp from
 * the driver's MSI-X handler to the app. */
static void test_uc_async_irq(void)
{
    DextConnection *c = open_test();
    for (uint64_t which = 0; which < 2; which++) {
        uint64_t ref = 0x1000 + which;
        g_assert_cmpint(dext_client_call_async(c, 3, ref, &which, 1, NULL, 0, NULL, NULL, NULL, NULL),
                        ==, 0);
        uint64_t got = 0, data[4];
        uint32_t n = 4;
        int status = -1;
        g_assert_cmpint(dext_client_wait_async(c, 5000, &got, &status, data, &n), ==, 0);
        g_assert_cmpuint(got, ==, ref);
        g_assert_cmpint(status, ==, 0);
        g_assert_cmpuint(n, ==, 4);
        g_assert_cmpuint(data[0], >=, 1);        /* count */
        g_assert_cmpuint(data[1], >, data[2]);   /* irq time after the request */
        g_assert_cmpuint(data[3], ==, which);
    }
    uint64_t r;
    g_assert_cmpint(dext_client_wait_async(c, 50, &r, NULL, NULL, NULL), ==, -ETIMEDOUT);
    dext_client_close(c);
}

/* Regression: libdextclient took a method's -EPIPE (e.g. a stalled USB
 * endpoint) for a broken socket, returned -ECONNRESET and marked a live
 * connection dead.  A driver's error is the app's answer; the connection
 * stays usable. */
static void test_uc_driver_errors(void)
{
    DextConnection *c = open_test();
    static const uint64_t errs[] = { EPIPE, ECONNRESET, EIO, ENODEV };
    for (unsigned i = 0; i < G_N_ELEMENTS(errs); i++) {
        g_assert_cmpint(dext_client_call(c, 9, &errs[i], 1, NULL, 0, NULL, NULL, NULL, NULL),
                        ==, -(int)errs[i]);
        uint64_t in[2] = { 6, 7 }, out[2];
        uint32_t n = 2;
        g_assert_cmpint(dext_client_call(c, 0, in, 2, NULL, 0, out, &n, NULL, NULL), ==, 0);
        g_assert_cmpuint(out[0], ==, 13);
    }
    dext_client_close(c);
}

/* Guards: client memory is shared zero-copy; read-only memory cannot be
 * mapped writable by the app. */
static void test_uc_shared_memory(void)
{
    DextConnection *c = open_test();
    void *p;
    uint64_t sz;
    g_assert_cmpint(dext_client_map_memory(c, 0, 0, &p, &sz), ==, -EACCES);
    g_assert_cmpint(dext_client_map_memory(c, 0, DEXT_CLIENT_MAP_READONLY, &p, &sz), ==, 0);
    g_assert_cmpuint(sz, >=, 4096);
    g_assert_nonnull(strstr(p, "PASS config"));
    munmap(p, sz);
    g_assert_cmpint(dext_client_map_memory(c, 1, 0, &p, &sz), ==, 0);
    uint64_t want = 0;
    for (uint64_t i = 0; i < sz; i++) {
        ((uint8_t *)p)[i] = (uint8_t)(i * 13);
        want += (uint8_t)(i * 13);
    }
    uint64_t sum;
    uint32_t n = 1;
    g_assert_cmpint(dext_client_call(c, 8, NULL, 0, NULL, 0, &sum, &n, NULL, NULL), ==, 0);
    g_assert_cmpuint(sum, ==, want);
    munmap(p, sz);
    /* an unknown memory type is refused by the driver */
    g_assert_cmpint(dext_client_map_memory(c, 7, 0, &p, &sz), ==, -EINVAL);
    dext_client_close(c);
}

/* Guards: DMA round trips through buffer descriptors and DMA commands, the
 * device's completion and the MSI-X handler, data verified by the driver. */
static void test_dma_round_trip(void)
{
    DextConnection *c = open_test();
    uint64_t st[6];
    uint32_t n = 6;
    g_assert_cmpint(dext_client_call(c, 2, NULL, 0, NULL, 0, st, &n, NULL, NULL), ==, 0);
    uint64_t before = st[5];
    static const uint64_t sizes[] = { 1, 4096, 65536, 100000, 256 * 1024 };
    for (unsigned i = 0; i < G_N_ELEMENTS(sizes); i++) {
        for (unsigned k = 0; k < 8; k++) {
            uint64_t in[2] = { sizes[i], i * 31 + k }, out;
            n = 1;
            g_assert_cmpint(dext_client_call(c, 4, in, 2, NULL, 0, &out, &n, NULL, NULL), ==, 0);
            g_assert_cmpuint(out, ==, sizes[i]);
        }
    }
    uint64_t bad[2] = { 0, 0 }, out;
    n = 1;
    g_assert_cmpint(dext_client_call(c, 4, bad, 2, NULL, 0, &out, &n, NULL, NULL), ==, -EINVAL);
    n = 6;
    g_assert_cmpint(dext_client_call(c, 2, NULL, 0, NULL, 0, st, &n, NULL, NULL), ==, 0);
    g_assert_cmpuint(st[5] - before, ==, 8 * G_N_ELEMENTS(sizes));
    dext_client_close(c);
}

/* Guards: one process per IOUserServerName: two matched devices give two
 * services (two driver instances) in the same dext-test process, each with
 * its own provider, both usable by id. */
static void test_two_instances(void)
{
    char *out = NULL;
    g_assert_cmpint(dext_daemon_services(sock(), &out), ==, 0);
    char **lines = g_strsplit(out, "\n", -1);
    char *pid = NULL;
    unsigned n = 0;
    for (char **l = lines; *l; l++) {
        char **f = g_strsplit(*l, " ", -1);
        if (g_strv_length(f) == 7 && !strcmp(f[1], "DextTestDriver")) {
            g_assert_cmpstr(f[3], ==, "running");
            if (pid) {
                g_assert_cmpstr(f[4], ==, pid);   /* same process */
            } else {
                pid = g_strdup(f[4]);
            }
            DextConnection *c = NULL;
            g_assert_cmpint(dext_client_open(sock(), "id", f[0], &c), ==, 0);
            g_assert_cmpuint(dext_client_service_id(c), ==, g_ascii_strtoull(f[0], NULL, 10));
            uint64_t st[6];
            uint32_t k = 6;
            g_assert_cmpint(dext_client_call(c, 2, NULL, 0, NULL, 0, st, &k, NULL, NULL), ==, 0);
            g_assert_cmphex(st[0], ==, st[1]);
            uint64_t in[2] = { 4096, n }, r;
            k = 1;
            g_assert_cmpint(dext_client_call(c, 4, in, 2, NULL, 0, &r, &k, NULL, NULL), ==, 0);
            dext_client_close(c);
            n++;
        }
        g_strfreev(f);
    }
    g_assert_cmpuint(n, ==, 2);
    g_strfreev(lines);
    g_free(out);
    g_free(pid);
    char *log = read_log();
    g_assert_cmpuint(count_substr(log, "launched org.dextlab.dext-test"), ==, 1);
    g_free(log);
}

/* --- entitlements for apps ------------------------------------------------- */

static int run_probe(const char *name)
{
    char *path = g_build_filename(g_getenv("DEXT_PROBES"), name, NULL);
    char *argv[] = { path, (char *)sock(), "class", "DextTestDriver", NULL };
    int status = -1;
    GError *e = NULL;
    g_assert_true(g_spawn_sync(NULL, argv, NULL, G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL, NULL,
                               &status, &e));
    g_free(path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Guards: an app without entitlements, or whose id the driver does not list,
 * cannot open the user client; the refusal names the reason in the log. */
static void test_app_entitlements(void)
{
    g_assert_cmpint(run_probe("uc-probe-noent"), ==, EACCES);
    g_assert_cmpint(run_probe("uc-probe-intruder"), ==, EACCES);
    char *log = read_log();
    g_assert_nonnull(strstr(log, "no valid entitlements for"));
    g_assert_nonnull(strstr(log, "does not list app org.dextlab.intruder"));
    g_free(log);
    /* by server name works for the entitled e2e app */
    DextConnection *c = NULL;
    g_assert_cmpint(dext_client_open(sock(), "name", "org.dextlab.dext-test", &c), ==, 0);
    dext_client_close(c);
    g_assert_cmpint(dext_client_open(sock(), "class", "NoSuchDriver", &c), ==, -ENOENT);
}

/* --- lifecycle -------------------------------------------------------------- */

/* Guards: a driver failing Start is reported, not relaunched, and whatever
 * it took (open device, bus mastering, DMA memory, MSI-X) is released. */
static void test_fail_start(void)
{
    g_assert_true(wait_state("FailStartDriver", "start-failed", 30000));
    char *l = service_line("FailStartDriver");
    char **f = g_strsplit(l, " ", -1);
    g_assert_cmpstr(f[5], ==, "1");   /* launched once */
    g_assert_cmpstr(f[6], ==, "0");   /* never started */
    g_strfreev(f);
    g_free(l);
    char *log = read_log();
    g_assert_nonnull(strstr(log, "FailStartDriver Start on 0000:02:00.0 failed: No such device"));
    g_assert_nonnull(strstr(log, "org.dextlab.dext-failstart: freed 1 DMA allocations"));
    g_free(log);
    char *j = NULL;
    g_assert_cmpint(dext_daemon_registry(sock(), 1, &j), ==, 0);
    JsonParser *p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, j, -1, NULL));
    JsonObject *net = find_entry(json_node_get_object(json_parser_get_root(p)), "0000:02:00.0");
    JsonObject *props = json_object_get_object_member(net, "properties");
    g_assert_false(json_object_has_member(props, "opened-by"));
    g_assert_cmpint(json_object_get_int_member(props, "pci-command") & 0x6, ==, 0);
    g_object_unref(p);
    g_free(j);
}

/* Guards: a crashing driver never takes dextd down; each crash releases the
 * device (bus mastering off, FLR-less device left disabled), DMA memory is
 * freed, the relaunch policy relaunches with backoff and gives up after 5
 * abnormal ends; other drivers keep running. */
static void test_crash_relaunch(void)
{
    g_assert_true(wait_state("CrashDriver", "gave-up", 30000));
    char *l = service_line("CrashDriver");
    char **f = g_strsplit(l, " ", -1);
    g_assert_cmpstr(f[5], ==, "5");
    g_assert_cmpstr(f[6], ==, "5");
    g_strfreev(f);
    g_free(l);
    char *log = read_log();
    g_assert_cmpuint(count_substr(log, "org.dextlab.dext-crash (pid"), >=, 5);
    g_assert_cmpuint(count_substr(log, "crashed by signal 11"), ==, 5);
    g_assert_cmpuint(count_substr(log, "org.dextlab.dext-crash: freed 1 DMA allocations"), ==, 5);
    g_assert_nonnull(strstr(log, "relaunch in 100 ms"));
    g_assert_nonnull(strstr(log, "relaunch in 800 ms"));
    g_assert_nonnull(strstr(log, "giving up"));
    g_free(log);
    char *j = NULL;
    g_assert_cmpint(dext_daemon_registry(sock(), 1, &j), ==, 0);
    JsonParser *p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, j, -1, NULL));
    JsonObject *x = find_entry(json_node_get_object(json_parser_get_root(p)), "0000:03:00.0");
    JsonObject *props = json_object_get_object_member(x, "properties");
    g_assert_false(json_object_has_member(props, "opened-by"));
    g_assert_cmpint(json_object_get_int_member(props, "pci-command") & 0x6, ==, 0);
    g_object_unref(p);
    g_free(j);
    g_assert_true(wait_state("DextTestDriver", "running", 1000));
}

static unsigned count_fds(pid_t pid)
{
    char *path = g_strdup_printf("/proc/%d/fd", (int)pid);
    GDir *d = g_dir_open(path, 0, NULL);
    unsigned n = 0;
    g_free(path);
    if (d) {
        while (g_dir_read_name(d)) {
            n++;
        }
        g_dir_close(d);
    }
    return n;
}

static JsonObject *registry_entry(JsonParser *p, const char *name)
{
    char *j = NULL;
    g_assert_cmpint(dext_daemon_registry(sock(), 1, &j), ==, 0);
    g_assert_true(json_parser_load_from_data(p, j, -1, NULL));
    g_free(j);
    return find_entry(json_node_get_object(json_parser_get_root(p)), name);
}

/* Guards: Stop and Start of one service on request (dextd-control apps
 * only) leave nothing behind: after each stop the device is closed with bus
 * mastering off, the service's DMA memory is back (the process stays: it
 * hosts the other dextlab-dma's service), dextd's own fd count is
 * unchanged; after each start the self-test passes again and the process
 * holds the same DMA allocations as the first time. */
static void test_stop_start_cycles(void)
{
    char *ids = NULL;
    g_assert_true(service_field("DextTestDriver", 0, &ids));
    guint64 id = g_ascii_strtoull(ids, NULL, 10);
    char *idarg = g_strdup_printf("%" G_GUINT64_FORMAT, id);
    /* refused for an app without dextd-control */
    char *path = g_build_filename(g_getenv("DEXT_PROBES"), "uc-probe-intruder", NULL);
    char *argv[] = { path, (char *)sock(), "ctl", idarg, "stop", NULL };
    int status = -1;
    g_assert_true(g_spawn_sync(NULL, argv, NULL, G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, NULL, NULL,
                               &status, NULL));
    g_assert_cmpint(WEXITSTATUS(status), ==, EACCES);
    g_assert_true(wait_state("DextTestDriver", "running", 1000));

    JsonParser *p = json_parser_new();
    JsonObject *drv = json_object_get_object_member(registry_entry(p, "DextTestDriver"), "properties");
    gint64 dma_running = json_object_get_int_member(drv, "server-dma-allocations");
    g_assert_cmpint(dma_running, >, 0);
    unsigned fds0 = 0;
    for (int cycle = 0; cycle < 3; cycle++) {
        g_assert_cmpint(dext_daemon_service_ctl(sock(), id, "stop"), ==, 0);
        g_assert_true(wait_state("DextTestDriver", "stopped", 10000));
        /* The process keeps running: it hosts the second device's service. */
        gint64 end;
        JsonObject *dev = json_object_get_object_member(registry_entry(p, "0000:01:00.0"),
                                                        "properties");
        g_assert_false(json_object_has_member(dev, "opened-by"));
        g_assert_cmpint(json_object_get_int_member(dev, "pci-command") & 0x6, ==, 0);
        /* Stop freed this service's buffers, the other service keeps its
         * own (both run the same self-test: half each). */
        drv = json_object_get_object_member(registry_entry(p, "DextTestDriver"), "properties");
        g_assert_cmpint(json_object_get_int_member(drv, "server-dma-allocations"), ==,
                        dma_running / 2);
        /* App connections of the queries above close asynchronously: give
         * dextd a moment to see their hang-ups before counting. */
        unsigned fds = count_fds(e2e_dextd_pid(dd));
        if (cycle == 0) {
            g_usleep(200000);
            fds0 = count_fds(e2e_dextd_pid(dd));
        } else {
            end = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
            while ((fds = count_fds(e2e_dextd_pid(dd))) > fds0 && g_get_monotonic_time() < end) {
                g_usleep(20000);
            }
            g_assert_cmpuint(fds, <=, fds0);
        }
        /* double stop is refused */
        g_assert_cmpint(dext_daemon_service_ctl(sock(), id, "stop"), ==, -EINVAL);

        g_assert_cmpint(dext_daemon_service_ctl(sock(), id, "start"), ==, 0);
        g_assert_true(wait_state("DextTestDriver", "running", 20000));
        drv = json_object_get_object_member(registry_entry(p, "DextTestDriver"), "properties");
        g_assert_cmpint(json_object_get_int_member(drv, "server-dma-allocations"), ==, dma_running);
        DextConnection *c = open_test();
        uint64_t st[6];
        uint32_t n = 6;
        g_assert_cmpint(dext_client_call(c, 2, NULL, 0, NULL, 0, st, &n, NULL, NULL), ==, 0);
        g_assert_cmphex(st[0], ==, st[1]);
        dext_client_close(c);
    }
    char *l = service_line("DextTestDriver");
    char **f = g_strsplit(l, " ", -1);
    g_assert_cmpstr(f[6], ==, "4");   /* four successful starts */
    g_strfreev(f);
    g_free(l);

    /* Both services stopped: the process hosts nothing and exits, all its
     * DMA memory is back; starting them relaunches it. */
    char *out = NULL;
    g_assert_cmpint(dext_daemon_services(sock(), &out), ==, 0);
    char **lines = g_strsplit(out, "\n", -1);
    GArray *both = g_array_new(FALSE, FALSE, sizeof(guint64));
    for (char **x = lines; *x; x++) {
        char **g = g_strsplit(*x, " ", -1);
        if (g_strv_length(g) == 7 && !strcmp(g[1], "DextTestDriver")) {
            guint64 v = g_ascii_strtoull(g[0], NULL, 10);
            g_array_append_val(both, v);
        }
        g_strfreev(g);
    }
    g_strfreev(lines);
    g_free(out);
    g_assert_cmpuint(both->len, ==, 2);
    for (guint i = 0; i < both->len; i++) {
        g_assert_cmpint(dext_daemon_service_ctl(sock(), g_array_index(both, guint64, i), "stop"),
                        ==, 0);
    }
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    char *pid = NULL;
    while ((!service_field("DextTestDriver", 4, &pid) || strcmp(pid, "0")) &&
           g_get_monotonic_time() < end) {
        g_free(pid);
        pid = NULL;
        g_usleep(20000);
    }
    g_assert_cmpstr(pid, ==, "0");
    g_free(pid);
    drv = json_object_get_object_member(registry_entry(p, "DextTestDriver"), "properties");
    g_assert_cmpint(json_object_get_int_member(drv, "server-dma-allocations"), ==, 0);
    for (guint i = 0; i < both->len; i++) {
        g_assert_cmpint(dext_daemon_service_ctl(sock(), g_array_index(both, guint64, i), "start"),
                        ==, 0);
    }
    g_assert_true(wait_state("DextTestDriver", "running", 20000));
    end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    while (g_get_monotonic_time() < end) {
        drv = json_object_get_object_member(registry_entry(p, "DextTestDriver"), "properties");
        if (json_object_get_int_member(drv, "server-dma-allocations") == dma_running) {
            break;
        }
        g_usleep(50000);
    }
    g_assert_cmpint(json_object_get_int_member(drv, "server-dma-allocations"), ==, dma_running);
    g_array_free(both, TRUE);
    g_object_unref(p);
    g_free(path);
    g_free(idarg);
    g_free(ids);
}

/* Guards: a driver writing raw bytes on its device-access channel gets an
 * error for each well-framed bad request (unknown type, wrong body, foreign
 * device, protected register) and normal service afterwards; unframeable
 * bytes close that channel only: the driver's process and every other
 * driver keep running, dextd keeps serving. */
static void test_raw_rpc_driver(void)
{
    g_assert_true(wait_state("RawRpcDriver", "running", 20000));
    char *log = read_log();
    g_assert_nonnull(strstr(log, "rawrpc: unknown type -> -95"));
    g_assert_nonnull(strstr(log, "rawrpc: wrong body -> -74"));
    g_assert_nonnull(strstr(log, "rawrpc: foreign device -> -19"));
    g_assert_nonnull(strstr(log, "rawrpc: BAR write -> -1"));
    g_assert_nonnull(strstr(log, "rawrpc: bridge decode off -> -1"));
    g_assert_nonnull(strstr(log, "rawrpc checks passed"));
    g_assert_nonnull(strstr(log, "org.dextlab.dext-rawrpc: malformed request"));
    g_assert_null(strstr(log, "org.dextlab.dext-rawrpc (pid"));   /* never ended */
    g_free(log);
    g_assert_true(wait_state("DextTestDriver", "running", 1000));
}

/* Guards: dextd answers garbage on its app socket with errors or by closing
 * that connection, and keeps serving. */
static void test_daemon_garbage(void)
{
    GRand *r = g_rand_new_with_seed(42);
    for (int i = 0; i < 200; i++) {
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, sock());
        g_assert_cmpint(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), ==, 0);
        uint8_t buf[256];
        size_t n = g_rand_int_range(r, 0, sizeof(buf));
        for (size_t k = 0; k < n; k++) {
            buf[k] = g_rand_int(r);
        }
        if (i % 2 && n >= 24) {
            memcpy(buf, "DXT1\x01\x00", 6);
            buf[6] = 64 + i % 4;
            buf[7] = 0;
            uint32_t bs = n - 24;
            memcpy(buf + 16, &bs, 4);
            buf[20] = buf[21] = buf[22] = buf[23] = 0;
        }
        raw_send(fd, buf, n);
        close(fd);
    }
    g_rand_free(r);
    char *out = NULL;
    g_assert_cmpint(dext_daemon_services(sock(), &out), ==, 0);
    g_assert_nonnull(strstr(out, "DextTestDriver"));
    g_free(out);
}

/* Guards: orderly shutdown calls Stop, the driver's open user client ends
 * cleanly (the app sees the connection reset, not a hang), dextd exits 0. */
static void test_shutdown(void)
{
    DextConnection *c = open_test();
    int status = e2e_dextd_stop(dd, 0);
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), ==, 0);
    uint64_t in[2] = { 1, 2 }, out[2];
    uint32_t n = 2;
    g_assert_cmpint(dext_client_call(c, 0, in, 2, NULL, 0, out, &n, NULL, NULL), ==, -ECONNRESET);
    dext_client_close(c);
    char *log = read_log();
    g_assert_nonnull(strstr(log, "DextTestDriver stopped (service"));
    g_assert_nonnull(strstr(log, "org.dextlab.dext-test (pid"));
    g_assert_nonnull(strstr(log, "exited with status 0"));
    g_assert_cmpuint(count_substr(log, "user client"), >=, 2);
    g_free(log);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    start_dextd();
    g_test_add_func("/dextd/e2e/match/entitlement-refusal", test_match_entitlement_refusal);
    g_test_add_func("/dextd/e2e/registry/tree-and-properties", test_registry);
    g_test_add_func("/dextd/e2e/driver/selftest-every-api", test_driver_selftest);
    g_test_add_func("/dextd/e2e/user-client/methods", test_uc_methods);
    g_test_add_func("/dextd/e2e/user-client/hostile-bytes", test_uc_hostile);
    g_test_add_func("/dextd/e2e/user-client/async-msix", test_uc_async_irq);
    g_test_add_func("/dextd/e2e/user-client/shared-memory", test_uc_shared_memory);
    g_test_add_func("/dextd/e2e/user-client/driver-errors", test_uc_driver_errors);
    g_test_add_func("/dextd/e2e/dma/round-trip", test_dma_round_trip);
    g_test_add_func("/dextd/e2e/lifecycle/two-instances-one-process", test_two_instances);
    g_test_add_func("/dextd/e2e/entitlement/apps", test_app_entitlements);
    g_test_add_func("/dextd/e2e/lifecycle/fail-start", test_fail_start);
    g_test_add_func("/dextd/e2e/lifecycle/crash-relaunch-give-up", test_crash_relaunch);
    g_test_add_func("/dextd/e2e/lifecycle/stop-start-cycles", test_stop_start_cycles);
    g_test_add_func("/dextd/e2e/ipc/raw-rpc-driver", test_raw_rpc_driver);
    g_test_add_func("/dextd/e2e/ipc/daemon-garbage", test_daemon_garbage);
    g_test_add_func("/dextd/e2e/shutdown/orderly-stop", test_shutdown);
    int rc = g_test_run();
    e2e_dextd_free(dd, rc != 0);
    return rc;
}
