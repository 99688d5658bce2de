/*
 * dextctl end to end: one dextd on harness/machines/e2e.machine with the
 * dext-test and dext-unentitled bundles, and the dextctl binary run as a
 * person would, its printed output asserted.
 *
 * Environment (set by meson): DEXTD, DEXTCTL (the binary, with
 * dextctl.entitlements beside it), DEXT_DRIVERS (':'-separated bundle
 * folders), DEXT_MACHINE.  On failure the dextd log (with every driver's
 * output) is kept and its path printed.
 */
#include "e2e-dextd.h"

#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static struct {
    E2eDextd *d;
    const char *sock;
    const char *dir;        /* dextd's work folder, for scratch files too */
    const char *ctl;
    char *test_bundle;      /* build folder of dext-test */
} dd;

static void die_with_parent(gpointer data)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
}

/* Run dextctl with args; returns its exit status, output in *out and *err. */
static int ctl_as(const char *exe, char **out, char **err, const char *a1, const char *a2,
                  const char *a3)
{
    const char *argv[] = { exe, "--socket", dd.sock, a1, a2, a3, NULL };
    int status = -1;
    char *o = NULL, *e = NULL;
    GError *ge = NULL;
    g_assert_true(g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL, &o, &e,
                               &status, &ge));
    if (out) {
        *out = o;
    } else {
        g_free(o);
    }
    if (err) {
        *err = e;
    } else {
        g_free(e);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *ctl_ok(const char *a1, const char *a2, const char *a3)
{
    char *out = NULL, *err = NULL;
    int rc = ctl_as(dd.ctl, &out, &err, a1, a2, a3);
    if (rc != 0) {
        g_printerr("dextctl %s %s: exit %d: %s", a1, a2 ? a2 : "", rc, err);
    }
    g_assert_cmpint(rc, ==, 0);
    g_free(err);
    return out;
}

/* The `list` row (split into columns) for device addr and driver class
 * ("-" for a bare device), or NULL. */
static char **list_row(const char *addr, const char *driver)
{
    char *out = ctl_ok("list", NULL, NULL);
    char **lines = g_strsplit(out, "\n", -1);
    char **hit = NULL;
    g_assert_true(g_str_has_prefix(lines[0], "DEV "));
    for (char **l = lines + 1; *l && !hit; l++) {
        char **f = g_strsplit_set(*l, " ", -1);
        GPtrArray *cols = g_ptr_array_new();
        for (char **x = f; *x; x++) {
            if (**x) {
                g_ptr_array_add(cols, g_strdup(*x));
            }
        }
        g_ptr_array_add(cols, NULL);
        char **c = (char **)g_ptr_array_free(cols, FALSE);
        if (g_strv_length(c) == 10 && !strcmp(c[1], addr) && !strcmp(c[5], driver)) {
            hit = c;
        } else {
            g_strfreev(c);
        }
        g_strfreev(f);
    }
    g_strfreev(lines);
    g_free(out);
    return hit;
}

/* Wait (bounded) until the row for addr/driver has state st; returns it. */
static char **wait_row(const char *addr, const char *driver, const char *st, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    for (;;) {
        char **r = list_row(addr, driver);
        if (r && !strcmp(r[7], st)) {
            return r;
        }
        g_strfreev(r);
        if (g_get_monotonic_time() > end) {
            return NULL;
        }
        g_usleep(50000);
    }
}

static void start_dextd(void)
{
    const char *drivers = g_getenv("DEXT_DRIVERS"), *machine = g_getenv("DEXT_MACHINE");
    dd.ctl = g_getenv("DEXTCTL");
    g_assert_nonnull(drivers);
    g_assert_nonnull(machine);
    g_assert_nonnull(dd.ctl);
    char **dl = g_strsplit(drivers, ":", -1);
    for (char **x = dl; *x; x++) {
        if (g_str_has_suffix(*x, "/dext-test")) {
            dd.test_bundle = g_strdup(*x);
        }
    }
    g_strfreev(dl);
    g_assert_nonnull(dd.test_bundle);
    E2eDextdConfig cfg = { .name = "dextctl-e2e", .machine = machine, .drivers_path = drivers };
    GError *e = NULL;
    dd.d = e2e_dextd_start(&cfg, &e);
    g_assert_no_error(e);
    dd.sock = e2e_dextd_socket(dd.d);
    dd.dir = e2e_dextd_dir(dd.d);
}

/* list: a matched device shows its driver, server, running state, the
 * server's pid and no restarts; a device nothing matched says so. */
static void test_list(void)
{
    char **r = wait_row("0000:01:00.0", "DextTestDriver", "running", 20000);
    g_assert_nonnull(r);
    g_assert_cmpstr(r[2], ==, "dec5:0001");
    g_assert_cmpstr(r[6], ==, "org.dextlab.dext-test");
    g_assert_cmpint(atoi(r[8]), >, 0);
    g_assert_cmpstr(r[9], ==, "0");
    /* both dextlab-dma functions are served by the one process */
    char **r2 = wait_row("0000:04:00.0", "DextTestDriver", "running", 20000);
    g_assert_nonnull(r2);
    g_assert_cmpstr(r2[8], ==, r[8]);
    char **n = list_row("0000:02:00.0", "-");
    g_assert_nonnull(n);
    g_assert_cmpstr(n[2], ==, "1af4:1041");
    g_assert_cmpstr(n[7], ==, "unmatched");
    g_strfreev(r);
    g_strfreev(r2);
    g_strfreev(n);
}

/* ioreg: the tree shows the driver instance under its PCI device with
 * its properties; --json is the same tree, parseable. */
static void test_ioreg(void)
{
    char *t = ctl_ok("ioreg", NULL, NULL);
    g_assert_nonnull(strstr(t, "+-o 0000:01:00.0  <class IOPCIDevice"));
    g_assert_nonnull(strstr(t, "+-o DextTestDriver  <class DextTestDriver"));
    g_assert_nonnull(strstr(t, "\"IOUserServerName\" = 'org.dextlab.dext-test'"));
    g_assert_nonnull(strstr(t, "\"IOPersonality\" = 'dext-test/DextTest'"));
    g_free(t);

    char *j = ctl_ok("ioreg", "--json", NULL);
    JsonParser *p = json_parser_new();
    g_assert_true(json_parser_load_from_data(p, j, -1, NULL));
    JsonObject *root = json_node_get_object(json_parser_get_root(p));
    g_assert_cmpstr(json_object_get_string_member(root, "name"), ==, "Root");
    /* walk to Root/pci0000:00/0000:00:01.0/0000:01:00.0/DextTestDriver */
    JsonObject *o = root;
    const char *path[] = { "pci0000:00", "0000:00:01.0", "0000:01:00.0", "DextTestDriver" };
    for (unsigned k = 0; k < G_N_ELEMENTS(path); k++) {
        JsonArray *a = json_object_get_array_member(o, "clients");
        JsonObject *next = NULL;
        for (guint i = 0; i < json_array_get_length(a); i++) {
            JsonObject *c = json_array_get_object_element(a, i);
            if (!strcmp(json_object_get_string_member(c, "name"), path[k])) {
                next = c;
            }
        }
        g_assert_nonnull(next);
        o = next;
    }
    JsonObject *props = json_object_get_object_member(o, "properties");
    g_assert_cmpstr(json_object_get_string_member(props, "IOUserServerName"), ==,
                    "org.dextlab.dext-test");
    g_assert_cmpstr(json_object_get_string_member(props, "state"), ==, "running");
    g_object_unref(p);
    g_free(j);
}

static const char *explain_line(char **lines, const char *dev, const char *pers)
{
    for (char **l = lines; *l; l++) {
        if (g_str_has_prefix(*l, dev) && strstr(*l, pers)) {
            return *l;
        }
    }
    return NULL;
}

/* match --explain: every device x personality, with the matched one and
 * the first failed check of the others (class, IDs, entitlement). */
static void test_match_explain(void)
{
    char *out = ctl_ok("match", "--explain", NULL);
    char **lines = g_strsplit(out, "\n", -1);
    const char *l = explain_line(lines, "0000:01:00.0", "dext-test/DextTest");
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, " matched "));
    g_assert_nonnull(strstr(l, "score 1000"));
    l = explain_line(lines, "0000:01:00.0", "dext-unentitled/Greedy");
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, " no "));
    g_assert_nonnull(strstr(l, "entitlement: bundle dext-unentitled lacks a transport.pci"));
    l = explain_line(lines, "0000:02:00.0", "dext-test/DextTest");
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, "class: device 0x00020000 matches no IOPCIClassMatch"));
    l = explain_line(lines, "0000:02:00.0", "dext-unentitled/Greedy");
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, "IDs: device 0x10411af4 matches no IOPCIPrimaryMatch"));
    g_strfreev(lines);
    g_free(out);
    /* without --explain only the matches */
    out = ctl_ok("match", NULL, NULL);
    g_assert_nonnull(strstr(out, "0000:01:00.0 dext-test/DextTest org.dextlab.dext-test\n"));
    g_assert_null(strstr(out, "Greedy"));
    g_free(out);
}

/* log: the drivers' own lines, tagged with server name and pid. */
static void test_log(void)
{
    char **r = list_row("0000:01:00.0", "DextTestDriver");
    g_assert_nonnull(r);
    char *out = ctl_ok("log", NULL, NULL);
    char *want = g_strdup_printf("org.dextlab.dext-test[%s]: [dext org.dextlab.dext-test:%s] "
                                 "info: DextTestDriver started", r[8], r[8]);
    g_assert_nonnull(strstr(out, want));
    g_free(want);
    g_free(out);
    g_strfreev(r);
}

static bool file_has(const char *path, const char *needle, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    do {
        char *s = NULL;
        g_file_get_contents(path, &s, NULL, NULL);
        bool ok = s && strstr(s, needle);
        g_free(s);
        if (ok) {
            return true;
        }
        g_usleep(50000);
    } while (g_get_monotonic_time() < end);
    return false;
}

/* restart: a new process (new pid) serves both devices at once, counted
 * as a restart, not a crash; log -f, already following, shows the new
 * process's lines. */
static void test_restart_follow(void)
{
    char **r = wait_row("0000:01:00.0", "DextTestDriver", "running", 10000);
    g_assert_nonnull(r);
    char *followed = g_build_filename(dd.dir, "follow.txt", NULL);
    char *cmd = g_strdup_printf("exec '%s' --socket '%s' log -f >'%s'", dd.ctl, dd.sock, followed);
    char *argv[] = { "/bin/sh", "-c", cmd, NULL };
    GPid fpid;
    g_assert_true(g_spawn_async(NULL, argv, NULL, G_SPAWN_DO_NOT_REAP_CHILD, die_with_parent,
                                NULL, &fpid, NULL));
    g_assert_true(file_has(followed, "DextTestDriver started", 10000));

    char *out = ctl_ok("restart", "org.dextlab.dext-test", NULL);
    char *want = g_strdup_printf("restarting org.dextlab.dext-test (pid %s)\n", r[8]);
    g_assert_cmpstr(out, ==, want);
    g_free(want);
    g_free(out);
    char **n = NULL;
    gint64 end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    while (g_get_monotonic_time() < end) {
        n = wait_row("0000:01:00.0", "DextTestDriver", "running", 100);
        if (n && strcmp(n[8], r[8])) {
            break;
        }
        g_clear_pointer(&n, g_strfreev);
        g_usleep(50000);
    }
    g_assert_nonnull(n);
    g_assert_cmpstr(n[9], ==, "1");
    want = g_strdup_printf("org.dextlab.dext-test[%s]: [dext org.dextlab.dext-test:%s] info: "
                           "DextTestDriver started", n[8], n[8]);
    g_assert_true(file_has(followed, want, 10000));
    g_free(want);
    /* a follower ends cleanly on SIGTERM */
    kill(fpid, SIGTERM);
    int st;
    g_assert_cmpint(waitpid(fpid, &st, 0), ==, fpid);
    g_assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    g_spawn_close_pid(fpid);
    /* not counted by the crash policy */
    char *log = e2e_dextd_read_log(dd.d);
    g_assert_nonnull(strstr(log, "killing: restart requested (dextctl)"));
    g_assert_null(strstr(log, "relaunch policy for org.dextlab.dext-test"));
    g_free(log);
    g_strfreev(n);
    g_strfreev(r);
    g_free(cmd);
    g_unlink(followed);
    g_free(followed);
}

/* unload takes the driver's services out of the registry and stops its
 * process; load brings the bundle back and it serves both devices again;
 * a second load of the same bundle is refused. */
static void test_unload_load(void)
{
    char *out = ctl_ok("unload", "dext-test", NULL);
    g_assert_true(g_str_has_prefix(out, "unloading dext-test: 1 server(s) stopping"));
    g_free(out);
    char **bare = wait_row("0000:01:00.0", "-", "unmatched", 10000);
    g_assert_nonnull(bare);
    g_strfreev(bare);
    out = ctl_ok("ioreg", NULL, NULL);
    g_assert_null(strstr(out, "DextTestDriver"));
    g_free(out);
    out = ctl_ok("match", "--explain", NULL);
    g_assert_null(strstr(out, "dext-test/DextTest"));
    g_free(out);

    out = ctl_ok("load", dd.test_bundle, NULL);
    g_assert_cmpstr(out, ==, "loaded dext-test: 1 personalities, 2 services\n");
    g_free(out);
    char **r = wait_row("0000:01:00.0", "DextTestDriver", "running", 20000);
    g_assert_nonnull(r);
    g_assert_cmpstr(r[9], ==, "0");
    char **r2 = wait_row("0000:04:00.0", "DextTestDriver", "running", 20000);
    g_assert_nonnull(r2);
    g_strfreev(r);
    g_strfreev(r2);

    char *err = NULL;
    g_assert_cmpint(ctl_as(dd.ctl, NULL, &err, "load", dd.test_bundle, NULL), ==, 1);
    g_assert_nonnull(strstr(err, "a bundle named dext-test is already loaded"));
    g_free(err);
    g_assert_cmpint(ctl_as(dd.ctl, NULL, &err, "unload", "no-such-bundle", NULL), ==, 1);
    g_assert_nonnull(strstr(err, "no bundle no-such-bundle"));
    g_free(err);
}

/* load/unload/restart need dextd-control: the same binary without its
 * entitlements file is refused, and nothing changes. */
static void test_unentitled(void)
{
    char *copy = g_build_filename(dd.dir, "dextctl-copy", NULL);
    char *data = NULL;
    gsize len;
    g_assert_true(g_file_get_contents(dd.ctl, &data, &len, NULL));
    g_assert_true(g_file_set_contents(copy, data, len, NULL));
    g_chmod(copy, 0755);
    g_free(data);
    char **before = list_row("0000:01:00.0", "DextTestDriver");
    g_assert_nonnull(before);
    char *err = NULL;
    g_assert_cmpint(ctl_as(copy, NULL, &err, "restart", "org.dextlab.dext-test", NULL), ==, 1);
    g_assert_nonnull(strstr(err, "not entitled"));
    g_free(err);
    g_assert_cmpint(ctl_as(copy, NULL, &err, "unload", "dext-test", NULL), ==, 1);
    g_free(err);
    /* queries need no entitlement */
    char *out = NULL;
    g_assert_cmpint(ctl_as(copy, &out, NULL, "list", NULL, NULL), ==, 0);
    g_free(out);
    char **after = list_row("0000:01:00.0", "DextTestDriver");
    g_assert_nonnull(after);
    g_assert_cmpstr(after[8], ==, before[8]);
    g_assert_cmpstr(after[7], ==, "running");
    g_strfreev(before);
    g_strfreev(after);
    g_unlink(copy);
    g_free(copy);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    start_dextd();
    g_test_add_func("/dextctl/list", test_list);
    g_test_add_func("/dextctl/ioreg", test_ioreg);
    g_test_add_func("/dextctl/match-explain", test_match_explain);
    g_test_add_func("/dextctl/log", test_log);
    g_test_add_func("/dextctl/restart-log-follow", test_restart_follow);
    g_test_add_func("/dextctl/unentitled", test_unentitled);
    g_test_add_func("/dextctl/unload-load", test_unload_load);
    int rc = g_test_run();
    int st = e2e_dextd_stop(dd.d, 0);
    bool dextd_failed = !WIFEXITED(st) || WEXITSTATUS(st);
    e2e_dextd_free(dd.d, rc || dextd_failed);
    return rc ? rc : (WIFEXITED(st) ? WEXITSTATUS(st) : 1);
}
