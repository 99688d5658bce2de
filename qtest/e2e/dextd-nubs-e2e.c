/*
 * Driver-published nubs end to end (suite 'e2e', docs/runtime/nubs.md):
 * dextd on the qtest platform with two dextlab-dma devices and the bundles
 * dext-nubtest (a publisher of fake USB device and interface nubs on each
 * device), dext-nubclient (an entitled client of the interface nub) and
 * dext-nubintruder (an unentitled claimant).  See
 * drivers/dext-nubtest/dext-nubtest.c for what each driver does and logs.
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
#include <sys/wait.h>
#include <unistd.h>

static E2eDextd *dd;

static const char *sock(void)
{
    return e2e_dextd_socket(dd);
}

static unsigned log_count(const char *needle)
{
    char *log = e2e_dextd_read_log(dd);
    unsigned n = 0;
    for (const char *p = log; (p = strstr(p, needle)); p += strlen(needle)) {
        n++;
    }
    g_free(log);
    return n;
}

static bool wait_log(const char *needle, unsigned count, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    while (g_get_monotonic_time() < end) {
        if (log_count(needle) >= count) {
            return true;
        }
        g_usleep(50000);
    }
    g_printerr("# not in the log %u time(s): %s\n", count, needle);
    return false;
}

/* Field idx of the SERVICES row (id class server state pid launches
 * starts) of class cls, or NULL; g_free. */
static char *service_field(const char *cls, int idx)
{
    return e2e_service_field(sock(), cls, idx);
}

static unsigned service_count(const char *cls)
{
    char *out = NULL;
    /* dextd answers: a count of 0 must not mean "no reply" */
    g_assert_cmpint(dext_daemon_services(sock(), &out), ==, 0);
    g_free(out);
    GPtrArray *a = e2e_services(sock(), cls);
    unsigned n = a->len;
    g_ptr_array_unref(a);
    return n;
}

static guint64 service_u64(const char *cls, int idx)
{
    char *s = service_field(cls, idx);
    guint64 v = s ? g_ascii_strtoull(s, NULL, 10) : 0;
    g_free(s);
    return v;
}

static bool wait_state(const char *cls, const char *state, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    while (g_get_monotonic_time() < end) {
        char *st = service_field(cls, 3);
        bool ok = st && !strcmp(st, state);
        g_free(st);
        if (ok) {
            return true;
        }
        g_usleep(50000);
    }
    return false;
}

static JsonObject *find_entry(JsonObject *o, const char *name)
{
    if (!strcmp(json_object_get_string_member(o, "name"), name)) {
        return o;
    }
    JsonArray *a = json_object_get_array_member(o, "clients");
    for (guint i = 0; a && i < json_array_get_length(a); i++) {
        JsonObject *r = find_entry(json_array_get_object_element(a, i), name);
        if (r) {
            return r;
        }
    }
    return NULL;
}

/* The registry as JSON (p owns it); the root entry. */
static JsonObject *registry(JsonParser *p)
{
    char *j = NULL;
    g_assert_cmpint(dext_daemon_registry(sock(), 1, &j), ==, 0);
    g_assert_true(json_parser_load_from_data(p, j, -1, NULL));
    g_free(j);
    return json_node_get_object(json_parser_get_root(p));
}

static bool registry_has(const char *name)
{
    JsonParser *p = json_parser_new();
    bool has = find_entry(registry(p), name) != NULL;
    g_object_unref(p);
    return has;
}

static bool wait_registry(const char *name, bool present, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    while (g_get_monotonic_time() < end) {
        if (registry_has(name) == present) {
            return true;
        }
        g_usleep(50000);
    }
    return false;
}

/* The second publisher's bad inputs (run after its Start) are done and
 * its 256 test nubs gone: until then the registry, list and explain
 * replies may be too large for one message (-EMSGSIZE). */
static void settle(unsigned runs)
{
    g_assert_true(wait_log("nubtest: bad inputs done", runs, 60000));
    gint64 end = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    for (;;) {
        char *j = NULL;
        int rc = dext_daemon_registry(sock(), 0, &j);
        bool gone = rc == 0 && !strstr(j, "+-o n0 ") && !strstr(j, "+-o n255 ");
        g_free(j);
        if (gone || g_get_monotonic_time() > end) {
            break;
        }
        g_usleep(50000);
    }
}

static int64_t prop_int(JsonObject *e, const char *key)
{
    return json_object_get_int_member(json_object_get_object_member(e, "properties"), key);
}

static const char *prop_str(JsonObject *e, const char *key)
{
    return json_object_get_string_member(json_object_get_object_member(e, "properties"), key);
}

/* The publisher's user client: 0 state, 1 terminate, 2 republish. */
static int publisher_call(uint32_t sel, uint64_t *out, uint32_t nout)
{
    DextConnection *c = NULL;
    int rc = dext_client_open(sock(), "class", "NubTestPublisher", &c);
    if (rc < 0) {
        return rc;
    }
    uint32_t n = nout;
    rc = dext_client_call(c, sel, NULL, 0, NULL, 0, out, out ? &n : NULL, NULL, NULL);
    dext_client_close(c);
    return rc;
}

/* Guards: the publisher's nubs are in the registry with their properties
 * and dextd's own (IOClass, published-by), the interface nub under the
 * device nub; the client personality is matched, launched and started;
 * its Start opened a provider channel (the publisher got NUB_CLIENT) and
 * read USB_INFO over it; list shows nubs as IOClass:name with
 * idVendor:idProduct and the class triple. */
static void test_publish_match_start(void)
{
    settle(1);
    g_assert_true(wait_state("NubTestClient", "running", 30000));
    g_assert_true(wait_log("nubclient: USB_INFO ok (speed 3, configuration 1, dec5:7e57", 1, 5000));
    g_assert_cmpint(log_count("nubtest: NUB_CLIENT for nub"), ==, 1);
    JsonParser *p = json_parser_new();
    JsonObject *root = registry(p);
    JsonObject *dev = find_entry(root, "usb@1");
    g_assert_nonnull(dev);
    g_assert_cmpstr(json_object_get_string_member(dev, "class"), ==, "IOUSBHostDevice");
    g_assert_cmpint(prop_int(dev, "idVendor"), ==, 0xdec5);
    g_assert_cmpint(prop_int(dev, "idProduct"), ==, 0x7e57);
    g_assert_cmpint(prop_int(dev, "bcdDevice"), ==, 0x100);
    g_assert_cmpint(prop_int(dev, "speed"), ==, 3);
    g_assert_cmpstr(prop_str(dev, "USB Product Name"), ==, "nubtest device");
    g_assert_cmpstr(prop_str(dev, "IOClass"), ==, "IOUSBHostDevice");
    g_assert_cmpstr(prop_str(dev, "published-by"), ==, "org.dextlab.nubtest");
    /* published under its publisher's service entry, on a dextlab-dma */
    JsonObject *d0 = find_entry(root, "0000:01:00.0"), *d1 = find_entry(root, "0000:02:00.0");
    g_assert_true((d0 && find_entry(d0, "usb@1")) || (d1 && find_entry(d1, "usb@1")));
    JsonObject *ifc = find_entry(dev, "if0");
    g_assert_nonnull(ifc);
    g_assert_cmpstr(json_object_get_string_member(ifc, "class"), ==, "IOUSBHostInterface");
    g_assert_cmpint(prop_int(ifc, "bInterfaceClass"), ==, 0xff);
    g_assert_cmpint(prop_int(ifc, "bInterfaceNumber"), ==, 0);
    JsonObject *cl = find_entry(ifc, "NubTestClient");
    g_assert_nonnull(cl);
    g_assert_cmpstr(prop_str(cl, "state"), ==, "running");
    g_assert_cmpstr(prop_str(cl, "IOUserServerName"), ==, "org.dextlab.nubclient");
    g_assert_null(find_entry(dev, "Unentitled"));
    g_object_unref(p);

    char *list = NULL;
    g_assert_cmpint(dext_daemon_list(sock(), &list), ==, 0);
    g_assert_nonnull(strstr(list, " IOUSBHostInterface:if0 dec5:7e57 ff0102 "));
    g_assert_nonnull(strstr(list, " NubTestClient org.dextlab.nubclient running "));
    g_assert_nonnull(strstr(list, " IOUSBHostDevice:usb@1 dec5:7e57 000000 - - - unmatched "));
    g_free(list);

    /* dextctl prints the same rows (and match --explain names the nub) */
    const char *ctl = g_getenv("DEXTCTL");
    g_assert_nonnull(ctl);
    char *argv[] = { (char *)ctl, "--socket", (char *)sock(), "list", NULL };
    char *out = NULL;
    int status = -1;
    g_assert_true(g_spawn_sync(NULL, argv, NULL, 0, NULL, NULL, &out, NULL, &status, NULL));
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_assert_true(g_regex_match_simple("\\bIOUSBHostInterface:if0 +dec5:7e57 +ff0102 +[0-9]+ "
                                       "+NubTestClient +org.dextlab.nubclient +running\\b", out,
                                       0, 0));
    g_free(out);
    char *argv2[] = { (char *)ctl, "--socket", (char *)sock(), "match", "--explain", NULL };
    g_assert_true(g_spawn_sync(NULL, argv2, NULL, 0, NULL, NULL, &out, NULL, &status, NULL));
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_assert_true(g_regex_match_simple("\\bIOUSBHostInterface:if0 +dext-nubclient/NubTestClient "
                                       "+matched\\b", out, 0, 0));
    g_assert_true(g_regex_match_simple("\\bIOUSBHostInterface:if0 +dext-nubintruder/Unentitled "
                                       "+no +entitlement: bundle dext-nubintruder lacks a "
                                       "transport.usb", out, 0, 0));
    g_free(out);

    uint64_t st[5];
    g_assert_cmpint(publisher_call(0, st, 5), ==, 0);
    g_assert_cmpuint(st[0], !=, 0);
    g_assert_cmpuint(st[2], ==, 0);     /* no reset yet */
    g_assert_cmpuint(st[3], ==, 1);     /* one provider channel */
    g_assert_cmpuint(st[4], ==, 1);     /* one USB_INFO answered */
}

/* Guards: a bundle without transport.usb for the nub's idVendor is not
 * matched to it (even with the higher score), match --explain says why;
 * PROVIDER_OPEN for a service whose provider is no nub is -ENODEV, for a
 * service that is not the caller's -EPERM. */
static void test_unentitled(void)
{
    g_assert_true(wait_state("NubTestClient", "running", 30000));
    g_assert_true(wait_log("refused dext-nubintruder/Unentitled (score 5000): bundle "
                           "dext-nubintruder lacks a transport.usb entitlement for idVendor 0xdec5",
                           1, 1000));
    g_assert_cmpuint(service_count("NubTestClient"), ==, 1);
    char *srv = service_field("NubTestClient", 2);
    g_assert_cmpstr(srv, ==, "org.dextlab.nubclient");
    g_free(srv);
    char *ex = NULL;
    g_assert_cmpint(dext_daemon_match_explain(sock(), &ex), ==, 0);
    bool found = false;
    char **lines = g_strsplit(ex, "\n", -1);
    for (char **l = lines; *l; l++) {
        if (g_str_has_prefix(*l, "IOUSBHostInterface:if0\tdext-nubintruder/Unentitled\t")) {
            found = true;
            g_assert_nonnull(strstr(*l, "lacks a transport.usb entitlement"));
        }
        if (g_str_has_prefix(*l, "IOUSBHostInterface:if0\tdext-nubclient/NubTestClient\t")) {
            g_assert_nonnull(strstr(*l, "matched"));
        }
    }
    g_assert_true(found);
    g_strfreev(lines);
    g_free(ex);
    g_assert_true(wait_log("nubintruder: PROVIDER_OPEN own PCI service -> -19", 2, 5000));
    g_assert_true(wait_log("nubintruder: PROVIDER_OPEN foreign id -> -1", 2, 5000));
}

/* Guards: each bad NUB_PUBLISH / NUB_TERMINATE gets its error (wrong or
 * unknown service -EPERM, unknown class / too many, oversized, nested or
 * reserved properties / no idProduct / bad name -EINVAL, a parent nub of
 * another service -EPERM, a parent that is no nub -ENOENT, the 257th nub
 * -ENOSPC) and nothing is lost: the good nubs and their client keep
 * running, the 256 nubs are terminated and gone. */
static void test_bad_publish(void)
{
    g_assert_true(wait_log("nubtest: bad inputs done", 1, 30000));
    static const char *const want[] = {
        "bad wrong-service -> -1", "bad unknown-service -> -1", "bad unknown-class -> -22",
        "bad unknown-class-2 -> -22", "bad too-many-properties -> -22", "bad long-key -> -22",
        "bad big-value -> -22", "bad nested-value -> -22", "bad reserved-key -> -22",
        "bad no-idProduct -> -22", "bad name -> -22", "bad text -> -22",
        "bad parent-of-another-service -> -1", "bad parent-not-a-nub -> -2",
        "bad terminate-not-a-nub -> -2", "bad terminate-unknown -> -2",
        "bad too-many-nubs -> -28 after 256",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(want); i++) {
        char *n = g_strdup_printf("nubtest: %s\n", want[i]);
        g_assert_cmpuint(log_count(n), >=, 1);
        g_free(n);
    }
    g_assert_true(wait_registry("n0", false, 10000));
    g_assert_true(wait_registry("n255", false, 10000));
    g_assert_true(registry_has("usb@1"));
    g_assert_true(wait_state("NubTestClient", "running", 5000));
    g_assert_cmpuint(service_u64("NubTestClient", 6), ==, 1); /* started once */
    g_assert_true(wait_state("NubTestPublisher", "running", 5000));
}

/* Guards: NUB_TERMINATE stops the client (its Stop runs) and removes the
 * nubs and the client's service; publishing again matches and starts a
 * new client service. */
static void test_terminate_republish(void)
{
    g_assert_true(wait_state("NubTestClient", "running", 30000));
    guint64 old = service_u64("NubTestClient", 0);
    unsigned stops = log_count("nubclient: Stop on nub");
    g_assert_cmpint(publisher_call(1, NULL, 0), ==, 0);
    g_assert_true(wait_log("nubclient: Stop on nub", stops + 1, 10000));
    g_assert_true(wait_registry("usb@1", false, 10000));
    g_assert_false(registry_has("if0"));
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while (service_count("NubTestClient") && g_get_monotonic_time() < end) {
        g_usleep(50000);
    }
    g_assert_cmpuint(service_count("NubTestClient"), ==, 0);
    uint64_t ids[2];
    g_assert_cmpint(publisher_call(2, ids, 2), ==, 0);
    g_assert_cmpuint(ids[0], !=, 0);
    g_assert_true(wait_state("NubTestClient", "running", 20000));
    g_assert_cmpuint(service_u64("NubTestClient", 0), !=, old);
    g_assert_true(registry_has("usb@1"));
    g_assert_true(wait_log("nubclient: USB_INFO ok", 2, 5000));
}

/* Guards: kill -9 of the client driver: dextd sends NUB_RESET for its nub
 * to the publisher (which re-publishes, as a USB port reset does), the
 * relaunch policy relaunches the client, which is matched to the new nub
 * and started again. */
static void test_client_crash_reset(void)
{
    g_assert_true(wait_state("NubTestClient", "running", 30000));
    guint64 pid = service_u64("NubTestClient", 4), launches = service_u64("NubTestClient", 5);
    unsigned infos = log_count("nubclient: USB_INFO ok");
    g_assert_cmpuint(pid, >, 0);
    g_assert_cmpint(kill((pid_t)pid, SIGKILL), ==, 0);
    g_assert_true(wait_log("its client ended abnormally: NUB_RESET to org.dextlab.nubtest", 1,
                           10000));
    g_assert_true(wait_log("nubtest: NUB_RESET of nub", 1, 10000));
    g_assert_true(wait_log("relaunch policy for org.dextlab.nubclient: relaunch", 1, 10000));
    g_assert_true(wait_log("nubclient: USB_INFO ok", infos + 1, 20000));
    g_assert_true(wait_state("NubTestClient", "running", 20000));
    g_assert_cmpuint(service_u64("NubTestClient", 4), !=, pid);
    g_assert_cmpuint(service_u64("NubTestClient", 5), ==, launches + 1);
    /* the relaunch waited for the publisher's answer to NUB_RESET */
    char *log = e2e_dextd_read_log(dd);
    const char *done = strstr(log, "org.dextlab.nubtest: NUB_RESET of nub");
    g_assert_nonnull(done);
    const char *l = g_strrstr(log, "launched org.dextlab.nubclient (");
    g_assert_nonnull(l);
    g_assert_true(done < l);
    g_free(log);
    g_assert_cmpuint(service_count("NubTestClient"), ==, 1);
    uint64_t st[5];
    g_assert_cmpint(publisher_call(0, st, 5), ==, 0);
    g_assert_cmpuint(st[2], ==, 1);     /* one reset */
}

/* Guards: kill -9 of the publisher: its nubs are terminated (the client's
 * Stop runs, the entries go), the publisher is relaunched, publishes
 * again, and the client is matched and started again. */
static void test_publisher_crash(void)
{
    g_assert_true(wait_state("NubTestClient", "running", 30000));
    g_assert_true(wait_state("NubTestPublisher", "running", 30000));
    guint64 pid = service_u64("NubTestPublisher", 4);
    unsigned stops = log_count("nubclient: Stop on nub");
    unsigned infos = log_count("nubclient: USB_INFO ok");
    unsigned pubs = log_count("nubtest: published usb@1");
    g_assert_cmpint(kill((pid_t)pid, SIGKILL), ==, 0);
    g_assert_true(wait_log("its publisher's process ended", 1, 10000));
    g_assert_true(wait_log("nubclient: Stop on nub", stops + 1, 10000));
    g_assert_true(wait_log("relaunch policy for org.dextlab.nubtest: relaunch", 1, 10000));
    g_assert_true(wait_log("nubtest: published usb@1", pubs + 1, 20000));
    settle(2); /* the relaunched second publisher's bad inputs, again */
    g_assert_true(wait_log("nubclient: USB_INFO ok", infos + 1, 20000));
    g_assert_true(wait_state("NubTestClient", "running", 20000));
    g_assert_true(wait_state("NubTestPublisher", "running", 20000));
    g_assert_cmpuint(service_u64("NubTestPublisher", 4), !=, pid);
    g_assert_cmpuint(service_count("NubTestClient"), ==, 1);
    g_assert_true(registry_has("usb@1"));
    uint64_t st[5];
    g_assert_cmpint(publisher_call(0, st, 5), ==, 0);
    g_assert_cmpuint(st[3], ==, 1);     /* the relaunched publisher's one channel */
}

/* Guards (issue 8): a client hanging in the Stop that its nub's
 * termination asked for is killed after the Stop bound and ends "stopped"
 * (not relaunched for that nub); the nub is removed once it is gone.  The
 * process's other client (on if0) did crash with it: NUB_RESET for if0 and
 * the relaunch policy bring it back. */
static void test_hung_stop_on_terminate(void)
{
    g_assert_true(wait_state("NubTestClient", "running", 30000));
    uint64_t if1 = 0;
    unsigned resets = log_count("nubtest: NUB_RESET of nub");
    g_assert_cmpint(publisher_call(3, &if1, 1), ==, 0);
    g_assert_cmpuint(if1, !=, 0);
    char *started = g_strdup_printf("nubclient: started on nub %" G_GUINT64_FORMAT "\n", if1);
    g_assert_true(wait_log(started, 1, 20000));
    g_free(started);
    g_assert_cmpuint(service_count("NubTestClient"), ==, 2);
    DextConnection *c = NULL;
    g_assert_cmpint(dext_client_open(sock(), "class", "NubTestPublisher", &c), ==, 0);
    g_assert_cmpint(dext_client_call(c, 4, &if1, 1, NULL, 0, NULL, NULL, NULL, NULL), ==, 0);
    dext_client_close(c);
    g_assert_true(wait_log("nubclient: hanging in Stop on purpose", 1, 10000));
    g_assert_true(wait_log("org.dextlab.nubclient: no reply to Stop within bound", 1, 10000));
    g_assert_true(wait_log("org.dextlab.nubclient: NubTestClient ends stopped (its Stop was "
                           "requested)", 1, 5000));
    char *removed = g_strdup_printf("nub IOUSBHostInterface:if1 (%" G_GUINT64_FORMAT ") removed",
                                    if1);
    g_assert_true(wait_log(removed, 1, 10000));
    g_free(removed);
    g_assert_false(registry_has("if1"));
    /* the if0 client crashed with the process: reset and relaunched */
    g_assert_true(wait_log("nubtest: NUB_RESET of nub", resets + 1, 10000));
    g_assert_true(wait_state("NubTestClient", "running", 20000));
    g_assert_cmpuint(service_count("NubTestClient"), ==, 1);
    g_assert_true(registry_has("if0"));
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    const char *drivers = g_getenv("DEXT_DRIVERS"), *machine = g_getenv("DEXT_MACHINE");
    g_assert_nonnull(drivers);
    g_assert_nonnull(machine);
    E2eDextdConfig cfg = { .name = "dextd-nubs-e2e", .machine = machine, .drivers_path = drivers };
    GError *e = NULL;
    dd = e2e_dextd_start(&cfg, &e);
    g_assert_no_error(e);
    g_test_add_func("/dextd/nubs/publish-match-start", test_publish_match_start);
    g_test_add_func("/dextd/nubs/unentitled", test_unentitled);
    g_test_add_func("/dextd/nubs/bad-publish", test_bad_publish);
    g_test_add_func("/dextd/nubs/terminate-republish", test_terminate_republish);
    g_test_add_func("/dextd/nubs/client-crash-reset", test_client_crash_reset);
    g_test_add_func("/dextd/nubs/publisher-crash", test_publisher_crash);
    g_test_add_func("/dextd/nubs/hung-stop-on-terminate", test_hung_stop_on_terminate);
    int rc = g_test_run();
    int status = e2e_dextd_stop(dd, 0);
    bool clean = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!clean) {
        g_printerr("dextd did not exit cleanly (status %d)\n", status);
    }
    e2e_dextd_free(dd, rc != 0 || !clean);
    return rc ? rc : !clean;
}
