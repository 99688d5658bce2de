/*
 * e2e-dextd: one dextd on the qtest platform for an end-to-end test.
 *
 * Every e2e test, fuzzer and generated driver test starts dextd the same
 * way; this is that one way:
 *
 *     E2eDextdConfig cfg = {
 *         .name = "my-e2e",
 *         .machine = g_getenv("DEXT_MACHINE"),
 *         .drivers = (const char *const[]){ bundle, NULL },
 *     };
 *     g_autoptr(GError) err = NULL;
 *     E2eDextd *d = e2e_dextd_start(&cfg, &err);
 *     g_assert_no_error(err);
 *     ... dext_client_open(e2e_dextd_socket(d), ...) ...
 *     int rc = g_test_run();
 *     int status = e2e_dextd_stop(d, 0);
 *     e2e_dextd_free(d, rc != 0 || !WIFEXITED(status) || WEXITSTATUS(status));
 *
 * dextd runs as `DEXTD --platform qtest --machine M --drivers B...
 * --socket SOCK --verbose` (plus extra_args; no --verbose if quiet),
 * stdout to /dev/null and stderr to the log: dextd's own lines, QEMU's
 * error output and every driver's output, tagged with its pid.  The socket and the log live in a
 * work folder that is removed by e2e_dextd_free() after a passing run and
 * kept (its log path printed) after a failing one.
 *
 * The log path is named whenever the test ends badly: a failed assertion
 * (SIGABRT, or SIGTRAP from g_error()) or a timeout's SIGTERM prints
 * "NAME: failed; dextd log (dextd, QEMU errors, driver output): PATH" for
 * every E2eDextd not yet freed, before the signal takes its default
 * course; so does a process that exits with one not freed.
 *
 * dextd is spawned with PR_SET_PDEATHSIG(SIGTERM): it (and through it QEMU
 * and the drivers) does not outlive the test process.  Linux ties that to
 * the creating thread, so start dextd from the thread that lives longest
 * (the main thread for g_test programs).
 *
 * Waits are bounded.  Errors: GError (domain E2E_DEXTD_ERROR) for the
 * calls that can fail; nothing here aborts.
 *
 * Threading: an E2eDextd belongs to one thread at a time.  The accessors
 * (socket, log path, folder, pid) may be read from any thread while the
 * owning thread does not stop or free it.
 */
#ifndef DEXTLAB_E2E_DEXTD_H
#define DEXTLAB_E2E_DEXTD_H

#include <glib.h>
#include <stdbool.h>

typedef struct E2eDextd E2eDextd;

typedef struct E2eDextdConfig {
    /* Short program name: names the work folder (NAME-XXXXXX in the temp
     * folder) and the failure note.  Required. */
    const char *name;
    /* dextd executable (or a wrapper script, e.g. valgrind-dextd.sh).
     * NULL: $DEXTD. */
    const char *dextd;
    /* Machine file.  Required. */
    const char *machine;
    /* Bundle folders, one --drivers each: a NULL-terminated list, and/or a
     * ':'-separated list (empty entries skipped) such as $DEXT_DRIVERS.
     * Those of `drivers` come first. */
    const char *const *drivers;
    const char *drivers_path;
    /* More arguments for dextd, NULL-terminated (may be NULL). */
    const char *const *extra_args;
    /* Extra "KEY=VALUE" entries for dextd's environment, NULL-terminated
     * (may be NULL); the rest is this process's environment. */
    const char *const *env;
    /* A folder the caller made (and filled: a machine file, bundles) to
     * use as the work folder.  The E2eDextd takes it over: it is removed
     * with all it holds by e2e_dextd_free() after a passing run.  NULL: a
     * new folder NAME-XXXXXX in the temp folder. */
    const char *dir;
    /* Bound on the wait for dextd's socket; 0: 30000. */
    unsigned start_timeout_ms;
    /* Leave out --verbose (dextd then logs warnings and errors only): for
     * benchmarks, whose figures include dextd's own CPU time. */
    bool quiet;
} E2eDextdConfig;

#define E2E_DEXTD_ERROR (e2e_dextd_error_quark())
GQuark e2e_dextd_error_quark(void);

/*
 * Make the work folder, spawn dextd and wait (bounded) until its socket
 * exists.  Fails if dextd cannot be spawned, exits first or does not make
 * its socket in time (it is then killed); the message names the log and
 * quotes its end, and the work folder is kept.  Returns a new E2eDextd
 * (free with e2e_dextd_free()) or NULL with *errp set.
 */
E2eDextd *e2e_dextd_start(const E2eDextdConfig *cfg, GError **errp);

/*
 * Start dextd again after it ended (e2e_dextd_stop() or on its own), with
 * the same configuration in the same work folder: same socket path, the
 * log written anew.  For a test that changes the bundle folders' contents
 * between two runs.  Same failures as e2e_dextd_start(); returns false
 * with *errp set.
 */
bool e2e_dextd_restart(E2eDextd *d, GError **errp);

/* Unix socket dextd serves apps on (libdextclient's daemon path). */
const char *e2e_dextd_socket(const E2eDextd *d);
/* dextd's stderr: its own log, QEMU's errors, every driver's output. */
const char *e2e_dextd_log_path(const E2eDextd *d);
/* The work folder: a place for the test's own scratch files too. */
const char *e2e_dextd_dir(const E2eDextd *d);
/* dextd's pid (the process spawned: a wrapper script execs dextd), or 0
 * once it has ended and been reaped. */
GPid e2e_dextd_pid(const E2eDextd *d);

/* The log's text so far (never NULL, "" if there is none); g_free() it. */
char *e2e_dextd_read_log(const E2eDextd *d);

/* Is dextd still running?  Reaps it (keeping its status) if it ended. */
bool e2e_dextd_running(E2eDextd *d);

/*
 * Wait up to timeout_ms for dextd to end on its own (no signal sent).
 * true: it ended, its wait status in *status (if not NULL); false: still
 * running.
 */
bool e2e_dextd_wait_exit(E2eDextd *d, unsigned timeout_ms, int *status);

/*
 * SIGTERM, then wait up to timeout_ms (0: 20000) for dextd's orderly
 * exit; past that SIGKILL.  Returns dextd's wait status (also when it had
 * already ended), or -1 if it had to be killed or never ran.
 */
int e2e_dextd_stop(E2eDextd *d, unsigned timeout_ms);

/*
 * Stop dextd if it still runs (as e2e_dextd_stop(d, 0)), then: failed (or
 * $DEXT_E2E_KEEP set): keep the work folder and print the log's path;
 * otherwise remove the work folder.  NULL is a no-op.
 */
void e2e_dextd_free(E2eDextd *d, bool failed);

/*
 * A copy of driver bundle @bundle under @work_dir/vg/<name> whose executable
 * runs the bundle's real one (named like the bundle folder) under
 * @valgrind: errors exit 99, definite leaks are errors, one log per
 * process as @work_dir/vg-<pid>.log.  Returns the new bundle folder
 * (g_free it), or NULL with @errp set.
 */
char *e2e_valgrind_bundle(const char *work_dir, const char *bundle, const char *valgrind,
                          GError **errp);

#endif
