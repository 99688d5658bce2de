/*
 * Unit tests of e2e-dextd (suite 'unit') against fake-dextd.sh, a shell
 * stand-in for dextd: the command line and environment dextd gets, the
 * bounded waits (socket never made, dextd dying first, SIGTERM ignored),
 * restart, the work folder kept or removed, and the failure note naming
 * the log when a test aborts or exits without freeing.
 *
 * Environment (meson): FAKE_DEXTD (the script).
 */
#include "e2e-dextd.h"

#include <glib/gstdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *fake(void)
{
    const char *f = g_getenv("FAKE_DEXTD");
    g_assert_nonnull(f);
    return f;
}

static E2eDextd *start_mode(const char *mode, unsigned timeout_ms, GError **err)
{
    const char *env[] = { "FAKE_DEXTD_ECHO=hello there", NULL };
    const char *drivers[] = { "/b/one", NULL };
    const char *extra[] = { "--extra", NULL };
    E2eDextdConfig cfg = {
        .name = "e2e-dextd-test",
        .dextd = fake(),
        .machine = "/m/x.machine",
        .drivers = drivers,
        .drivers_path = "/b/two::/b/three",
        .extra_args = extra,
        .env = env,
        .start_timeout_ms = timeout_ms,
    };
    g_setenv("FAKE_DEXTD_MODE", mode, TRUE);
    return e2e_dextd_start(&cfg, err);
}

/* Guards: the command line (machine, every bundle folder in order, empty
 * ':' entries skipped, socket in the work folder, --verbose, extra args),
 * the extra environment, stderr to the log and stdout away from it, and
 * an orderly stop returning dextd's exit status; a passing run's folder
 * is removed. */
static void test_start_stop(void)
{
    GError *err = NULL;
    E2eDextd *d = start_mode("serve", 0, &err);
    g_assert_no_error(err);
    char *dir = g_strdup(e2e_dextd_dir(d));
    g_assert_true(g_str_has_prefix(e2e_dextd_socket(d), dir));
    g_assert_true(g_str_has_prefix(e2e_dextd_log_path(d), dir));
    g_assert_true(g_file_test(e2e_dextd_socket(d), G_FILE_TEST_EXISTS));
    g_assert_cmpint(e2e_dextd_pid(d), >, 0);
    g_assert_true(e2e_dextd_running(d));
    char *want = g_strdup_printf("fake-dextd --platform qtest --machine /m/x.machine "
                                 "--drivers /b/one --drivers /b/two --drivers /b/three "
                                 "--socket %s --verbose --extra\n", e2e_dextd_socket(d));
    char *log = e2e_dextd_read_log(d);
    g_assert_nonnull(strstr(log, want));
    g_assert_nonnull(strstr(log, "echo=hello there\n"));
    g_assert_null(strstr(log, "on stdout"));
    g_free(log);
    g_free(want);

    int st = e2e_dextd_stop(d, 5000);
    g_assert_true(WIFEXITED(st));
    g_assert_cmpint(WEXITSTATUS(st), ==, 0);
    g_assert_cmpint(e2e_dextd_pid(d), ==, 0);
    g_assert_false(e2e_dextd_running(d));
    log = e2e_dextd_read_log(d);
    g_assert_nonnull(strstr(log, "SIGTERM, exiting"));
    g_free(log);
    /* a second stop reports the same end */
    g_assert_cmpint(e2e_dextd_stop(d, 5000), ==, st);
    e2e_dextd_free(d, false);
    g_assert_false(g_file_test(dir, G_FILE_TEST_EXISTS));
    g_free(dir);
}

/* Guards: dextd ending before its socket exists fails the start at once
 * (not after the timeout) with the log named and quoted; the folder with
 * the log is kept. */
static void test_dies_first(void)
{
    GError *err = NULL;
    gint64 t0 = g_get_monotonic_time();
    E2eDextd *d = start_mode("die", 20000, &err);
    g_assert_null(d);
    g_assert_error(err, E2E_DEXTD_ERROR, 0);
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 10 * G_USEC_PER_SEC);
    g_assert_nonnull(strstr(err->message, "ended (wait status 0x300)"));
    g_assert_nonnull(strstr(err->message, "fake-dextd: bad machine"));
    const char *lp = strstr(err->message, "dextd log /");
    g_assert_nonnull(lp);
    char *path = g_strndup(lp + strlen("dextd log "), strcspn(lp + strlen("dextd log "), ";"));
    g_assert_true(g_str_has_suffix(path, "/dextd.log"));
    g_assert_true(g_file_test(path, G_FILE_TEST_EXISTS));
    char *dir = g_path_get_dirname(path);
    g_unlink(path);
    g_rmdir(dir);
    g_free(dir);
    g_free(path);
    g_error_free(err);
}

/* Guards: the wait for the socket is bounded; past it dextd is killed. */
static void test_start_timeout(void)
{
    GError *err = NULL;
    gint64 t0 = g_get_monotonic_time();
    E2eDextd *d = start_mode("hang", 300, &err);
    g_assert_null(d);
    g_assert_error(err, E2E_DEXTD_ERROR, 0);
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 5 * G_USEC_PER_SEC);
    g_assert_nonnull(strstr(err->message, "within 300 ms"));
    g_error_free(err);
}

/* Guards: the stop is bounded too: a dextd ignoring SIGTERM is killed and
 * the stop says so (-1). */
static void test_stop_kills(void)
{
    GError *err = NULL;
    E2eDextd *d = start_mode("stubborn", 0, &err);
    g_assert_no_error(err);
    gint64 t0 = g_get_monotonic_time();
    g_assert_cmpint(e2e_dextd_stop(d, 300), ==, -1);
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 5 * G_USEC_PER_SEC);
    g_assert_false(e2e_dextd_running(d));
    e2e_dextd_free(d, false);
}

/* Guards: restart runs the same command in the same folder with a new
 * log, and is refused while dextd still runs; wait_exit is bounded. */
static void test_restart(void)
{
    GError *err = NULL;
    E2eDextd *d = start_mode("serve", 0, &err);
    g_assert_no_error(err);
    g_assert_false(e2e_dextd_restart(d, &err));
    g_assert_error(err, E2E_DEXTD_ERROR, 0);
    g_clear_error(&err);
    g_assert_false(e2e_dextd_wait_exit(d, 100, NULL));
    char *sock = g_strdup(e2e_dextd_socket(d));
    g_assert_cmpint(e2e_dextd_stop(d, 5000), ==, 0);
    g_assert_true(e2e_dextd_restart(d, &err));
    g_assert_no_error(err);
    g_assert_cmpstr(e2e_dextd_socket(d), ==, sock);
    char *log = e2e_dextd_read_log(d);
    g_assert_null(strstr(log, "SIGTERM"));     /* the first run's end is gone */
    g_free(log);
    kill(e2e_dextd_pid(d), SIGTERM);
    int st = -1;
    g_assert_true(e2e_dextd_wait_exit(d, 5000, &st));
    g_assert_cmpint(st, ==, 0);
    e2e_dextd_free(d, false);
    g_free(sock);
}

/* Guards: a failed run keeps the folder and names the log; a folder the
 * caller made is used and, on success, removed (symlinks in it, not what
 * they point to); quiet leaves out --verbose. */
static void test_keep_and_own_dir(void)
{
    GError *err = NULL;
    E2eDextd *d = start_mode("serve", 0, &err);
    g_assert_no_error(err);
    char *dir = g_strdup(e2e_dextd_dir(d)), *log = g_strdup(e2e_dextd_log_path(d));
    e2e_dextd_free(d, true);
    g_assert_true(g_file_test(log, G_FILE_TEST_EXISTS));
    g_unlink(log);
    char *sock = g_build_filename(dir, "dextd.sock", NULL);
    g_unlink(sock);
    g_free(sock);
    g_assert_cmpint(g_rmdir(dir), ==, 0);
    g_free(log);
    g_free(dir);

    char *mine = g_dir_make_tmp("e2e-own-XXXXXX", NULL);
    char *sub = g_build_filename(mine, "bundles", NULL);
    g_assert_cmpint(g_mkdir(sub, 0700), ==, 0);
    char *link = g_build_filename(sub, "root-link", NULL);
    g_assert_cmpint(symlink("/", link), ==, 0);
    g_free(link);
    E2eDextdConfig cfg = {
        .name = "own", .dextd = fake(), .machine = "m", .dir = mine, .quiet = true,
    };
    g_setenv("FAKE_DEXTD_MODE", "serve", TRUE);
    d = e2e_dextd_start(&cfg, &err);
    g_assert_no_error(err);
    g_assert_cmpstr(e2e_dextd_dir(d), ==, mine);
    char *text = e2e_dextd_read_log(d);   /* quiet: no --verbose */
    g_assert_nonnull(strstr(text, "--platform qtest --machine m --socket "));
    g_assert_null(strstr(text, "--verbose"));
    g_free(text);
    e2e_dextd_free(d, false);
    g_assert_false(g_file_test(mine, G_FILE_TEST_EXISTS));
    g_assert_true(g_file_test("/", G_FILE_TEST_IS_DIR));
    g_free(sub);
    g_free(mine);
}

/* Guards: a test that aborts (a failed assertion) or exits with a dextd
 * not freed names its log on stderr. */
static void test_failure_note(void)
{
    if (g_test_subprocess()) {
        GError *err = NULL;
        E2eDextd *d = start_mode("serve", 0, &err);
        g_assert_no_error(err);
        g_assert_nonnull(d);
        if (g_getenv("E2E_NOTE_EXIT")) {
            exit(1);
        }
        abort();
    }
    g_test_trap_subprocess(NULL, 20 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_DEFAULT);
    g_test_trap_assert_failed();
    g_test_trap_assert_stderr("*e2e-dextd-test: failed; dextd log (dextd, QEMU errors, "
                              "driver output): /*/dextd.log*");
    g_setenv("E2E_NOTE_EXIT", "1", TRUE);
    g_test_trap_subprocess(NULL, 20 * G_USEC_PER_SEC, G_TEST_SUBPROCESS_DEFAULT);
    g_unsetenv("E2E_NOTE_EXIT");
    g_test_trap_assert_failed();
    g_test_trap_assert_stderr("*e2e-dextd-test: failed; dextd log*");
}

int main(int argc, char **argv)
{
    /* Failing starts keep their folders, as they should: all go in one
     * folder of this run (TMPDIR, inherited by the subprocesses), removed
     * at the end.  Set before GLib first reads TMPDIR. */
    const char *parent = getenv("TMPDIR");
    char *tmp = g_strdup_printf("%s/e2e-dextd-test-XXXXXX", parent && *parent ? parent : "/tmp");
    bool sub = false;
    for (int i = 1; i < argc; i++) {
        sub |= !strcmp(argv[i], "--GTestSubprocess");
    }
    if (!sub) {
        g_assert_nonnull(mkdtemp(tmp));
        g_setenv("TMPDIR", tmp, TRUE);
    }
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/e2e-dextd/start-stop", test_start_stop);
    g_test_add_func("/e2e-dextd/dies-before-socket", test_dies_first);
    g_test_add_func("/e2e-dextd/start-timeout", test_start_timeout);
    g_test_add_func("/e2e-dextd/stop-kills-after-bound", test_stop_kills);
    g_test_add_func("/e2e-dextd/restart", test_restart);
    g_test_add_func("/e2e-dextd/keep-and-own-dir", test_keep_and_own_dir);
    g_test_add_func("/e2e-dextd/failure-note", test_failure_note);
    int rc = g_test_run();
    if (!sub) {
        char *rm[] = { "rm", "-rf", tmp, NULL };
        g_spawn_sync(NULL, rm, NULL, G_SPAWN_SEARCH_PATH, NULL, NULL, NULL, NULL, NULL, NULL);
    }
    g_free(tmp);
    return rc;
}
