/*
 * e2e-dextd: one dextd on the qtest platform for an end-to-end test (see
 * e2e-dextd.h).
 */
#include "e2e-dextd.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define START_TIMEOUT_MS 30000
#define STOP_TIMEOUT_MS 20000
#define POLL_US 20000
#define LOG_QUOTE_MAX 2048

struct E2eDextd {
    char *name;
    char *dextd;
    char **argv;        /* dextd's full command line */
    char **envp;
    char *dir, *sock, *log;
    unsigned start_timeout_ms;
    GPid pid;           /* 0: not running (never started, or reaped) */
    int status;         /* wait status once reaped; -1 before */
    int note;           /* failure-note slot, or -1 */
};

G_DEFINE_QUARK(e2e-dextd-error-quark, e2e_dextd_error)

/* ---- the failure note ------------------------------------------------------
 * A failed assertion aborts the test before it frees anything: the signal
 * handler still names the logs that explain it.  It may only write(), so
 * each note is formatted when dextd starts, in a fixed slot. */

#define NOTE_SLOTS 16
#define NOTE_MAX 768

static struct {
    volatile sig_atomic_t used;
    char text[NOTE_MAX];
} notes[NOTE_SLOTS];
static volatile sig_atomic_t notes_written;
static pid_t notes_owner;
static const int note_signals[] = { SIGABRT, SIGTRAP, SIGTERM };
static struct sigaction note_saved[G_N_ELEMENTS(note_signals)];

static void write_notes(void)
{
    if (notes_written || getpid() != notes_owner) {
        return;
    }
    notes_written = 1;
    for (unsigned i = 0; i < NOTE_SLOTS; i++) {
        if (notes[i].used) {
            ssize_t n = write(STDERR_FILENO, notes[i].text, strlen(notes[i].text));
            (void)n;
        }
    }
}

static void on_fatal_signal(int sig)
{
    write_notes();
    for (unsigned i = 0; i < G_N_ELEMENTS(note_signals); i++) {
        if (note_signals[i] == sig) {
            sigaction(sig, &note_saved[i], NULL);
        }
    }
    /* delivered once this handler returns, with the old disposition */
    raise(sig);
}

static void install_note_hooks(void)
{
    static gsize done;
    if (g_once_init_enter(&done)) {
        struct sigaction sa = { .sa_handler = on_fatal_signal };
        sigemptyset(&sa.sa_mask);
        notes_owner = getpid();
        for (unsigned i = 0; i < G_N_ELEMENTS(note_signals); i++) {
            sigaction(note_signals[i], &sa, &note_saved[i]);
        }
        atexit(write_notes);    /* exit() with a dextd not freed */
        g_once_init_leave(&done, 1);
    }
}

G_LOCK_DEFINE_STATIC(notes);

static int note_claim(const E2eDextd *d)
{
    int slot = -1;
    G_LOCK(notes);
    for (int i = 0; i < NOTE_SLOTS && slot < 0; i++) {
        if (!notes[i].used) {
            slot = i;
            snprintf(notes[i].text, NOTE_MAX,
                     "%s: failed; dextd log (dextd, QEMU errors, driver output): %s\n",
                     d->name, d->log);
            notes[i].used = 1;
        }
    }
    G_UNLOCK(notes);
    return slot;
}

static void note_release(E2eDextd *d)
{
    if (d->note >= 0) {
        notes[d->note].used = 0;
        d->note = -1;
    }
}

/* ---- the process ------------------------------------------------------- */

/* In the child, before exec: dextd must not outlive the test (a failed
 * assertion would otherwise leave it, QEMU and the drivers holding meson's
 * pipes open until the timeout). */
static void die_with_parent(gpointer unused)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
}

/* "...; its end:\n<last lines>" of the log, for a start failure. */
static char *log_quote(const E2eDextd *d)
{
    char *s = e2e_dextd_read_log(d);
    size_t len = strlen(s);
    const char *tail = len > LOG_QUOTE_MAX ? s + len - LOG_QUOTE_MAX : s;
    char *q = g_strdup_printf("dextd log %s%s\n%s", d->log, *tail ? "; its end:" : " (empty)",
                              tail);
    g_free(s);
    return q;
}

/* Reap dextd if it ended; true if it did (status kept). */
static bool reap(E2eDextd *d, int options)
{
    int st;
    if (d->pid <= 0) {
        return true;
    }
    pid_t r = waitpid(d->pid, &st, options);
    if (r == d->pid || (r < 0 && errno == ECHILD)) {
        d->status = r == d->pid ? st : -1;
        g_spawn_close_pid(d->pid);
        d->pid = 0;
        return true;
    }
    return false;
}

static void kill_and_reap(E2eDextd *d)
{
    if (d->pid > 0) {
        kill(d->pid, SIGKILL);
        reap(d, 0);
        d->status = -1;
    }
}

static bool launch(E2eDextd *d, GError **errp)
{
    GError *e = NULL;
    int out = open("/dev/null", O_WRONLY | O_CLOEXEC);
    int err = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0 || err < 0) {
        g_set_error(errp, E2E_DEXTD_ERROR, 0, "%s: cannot open %s: %s", d->name,
                    out < 0 ? "/dev/null" : d->log, g_strerror(errno));
        goto fail_close;
    }
    d->status = -1;
    if (!g_spawn_async_with_fds(NULL, d->argv, d->envp, G_SPAWN_DO_NOT_REAP_CHILD,
                                die_with_parent, NULL, &d->pid, -1, out, err, &e)) {
        g_set_error(errp, E2E_DEXTD_ERROR, 0, "%s: cannot start %s: %s", d->name, d->dextd,
                    e->message);
        g_error_free(e);
        d->pid = 0;
        goto fail_close;
    }
    close(err);
    close(out);

    gint64 end = g_get_monotonic_time() + (gint64)d->start_timeout_ms * 1000;
    while (!g_file_test(d->sock, G_FILE_TEST_EXISTS)) {
        if (reap(d, WNOHANG)) {
            char *q = log_quote(d);
            g_set_error(errp, E2E_DEXTD_ERROR, 0,
                        "%s: dextd ended (wait status 0x%x) before making %s; %s", d->name,
                        d->status, d->sock, q);
            g_free(q);
            return false;
        }
        if (g_get_monotonic_time() > end) {
            kill_and_reap(d);
            char *q = log_quote(d);
            g_set_error(errp, E2E_DEXTD_ERROR, 0, "%s: no dextd socket %s within %u ms; %s",
                        d->name, d->sock, d->start_timeout_ms, q);
            g_free(q);
            return false;
        }
        g_usleep(POLL_US);
    }
    return true;

fail_close:
    if (err >= 0) {
        close(err);
    }
    if (out >= 0) {
        close(out);
    }
    return false;
}

static char **build_argv(const E2eDextdConfig *cfg, const char *dextd, const char *sock)
{
    GPtrArray *a = g_ptr_array_new();
    g_ptr_array_add(a, g_strdup(dextd));
    g_ptr_array_add(a, g_strdup("--platform"));
    g_ptr_array_add(a, g_strdup("qtest"));
    g_ptr_array_add(a, g_strdup("--machine"));
    g_ptr_array_add(a, g_strdup(cfg->machine));
    for (const char *const *b = cfg->drivers; b && *b; b++) {
        g_ptr_array_add(a, g_strdup("--drivers"));
        g_ptr_array_add(a, g_strdup(*b));
    }
    if (cfg->drivers_path) {
        char **dl = g_strsplit(cfg->drivers_path, ":", -1);
        for (char **x = dl; *x; x++) {
            if (**x) {
                g_ptr_array_add(a, g_strdup("--drivers"));
                g_ptr_array_add(a, g_strdup(*x));
            }
        }
        g_strfreev(dl);
    }
    g_ptr_array_add(a, g_strdup("--socket"));
    g_ptr_array_add(a, g_strdup(sock));
    if (!cfg->quiet) {
        g_ptr_array_add(a, g_strdup("--verbose"));
    }
    for (const char *const *x = cfg->extra_args; x && *x; x++) {
        g_ptr_array_add(a, g_strdup(*x));
    }
    g_ptr_array_add(a, NULL);
    return (char **)g_ptr_array_free(a, FALSE);
}

static void destroy(E2eDextd *d)
{
    note_release(d);
    g_strfreev(d->argv);
    g_strfreev(d->envp);
    g_free(d->dextd);
    g_free(d->name);
    g_free(d->dir);
    g_free(d->sock);
    g_free(d->log);
    g_free(d);
}

E2eDextd *e2e_dextd_start(const E2eDextdConfig *cfg, GError **errp)
{
    const char *dextd = cfg->dextd ? cfg->dextd : g_getenv("DEXTD");
    GError *e = NULL;

    if (!cfg->name || !cfg->machine || !dextd) {
        g_set_error(errp, E2E_DEXTD_ERROR, 0, "%s: %s not given",
                    cfg->name ? cfg->name : "e2e-dextd",
                    !cfg->name ? "name" : !cfg->machine ? "machine file" : "dextd ($DEXTD)");
        return NULL;
    }
    E2eDextd *d = g_new0(E2eDextd, 1);
    d->name = g_strdup(cfg->name);
    d->dextd = g_strdup(dextd);
    d->note = -1;
    d->status = -1;
    d->start_timeout_ms = cfg->start_timeout_ms ? cfg->start_timeout_ms : START_TIMEOUT_MS;
    if (cfg->dir) {
        d->dir = g_strdup(cfg->dir);
    } else {
        char *tmpl = g_strdup_printf("%s-XXXXXX", cfg->name);
        d->dir = g_dir_make_tmp(tmpl, &e);
        g_free(tmpl);
        if (!d->dir) {
            g_propagate_prefixed_error(errp, e, "%s: ", cfg->name);
            goto fail;
        }
    }
    d->sock = g_build_filename(d->dir, "dextd.sock", NULL);
    d->log = g_build_filename(d->dir, "dextd.log", NULL);
    d->argv = build_argv(cfg, dextd, d->sock);
    d->envp = g_get_environ();
    for (const char *const *x = cfg->env; x && *x; x++) {
        char **kv = g_strsplit(*x, "=", 2);
        d->envp = g_environ_setenv(d->envp, kv[0], kv[1] ? kv[1] : "", TRUE);
        g_strfreev(kv);
    }

    install_note_hooks();
    d->note = note_claim(d);
    if (!launch(d, errp)) {
        goto fail;
    }
    return d;

fail:
    destroy(d);     /* the work folder stays: the log in it explains */
    return NULL;
}

bool e2e_dextd_restart(E2eDextd *d, GError **errp)
{
    if (!reap(d, WNOHANG)) {
        g_set_error(errp, E2E_DEXTD_ERROR, 0, "%s: dextd (pid %d) still runs", d->name,
                    (int)d->pid);
        return false;
    }
    unlink(d->sock);    /* a killed dextd leaves it: the wait is for the new one */
    return launch(d, errp);
}

const char *e2e_dextd_socket(const E2eDextd *d)
{
    return d->sock;
}

const char *e2e_dextd_log_path(const E2eDextd *d)
{
    return d->log;
}

const char *e2e_dextd_dir(const E2eDextd *d)
{
    return d->dir;
}

GPid e2e_dextd_pid(const E2eDextd *d)
{
    return d->pid;
}

char *e2e_dextd_read_log(const E2eDextd *d)
{
    char *s = NULL;
    g_file_get_contents(d->log, &s, NULL, NULL);
    return s ? s : g_strdup("");
}

bool e2e_dextd_running(E2eDextd *d)
{
    return !reap(d, WNOHANG);
}

bool e2e_dextd_wait_exit(E2eDextd *d, unsigned timeout_ms, int *status)
{
    gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    while (!reap(d, WNOHANG)) {
        if (g_get_monotonic_time() > end) {
            return false;
        }
        g_usleep(POLL_US);
    }
    if (status) {
        *status = d->status;
    }
    return true;
}

int e2e_dextd_stop(E2eDextd *d, unsigned timeout_ms)
{
    if (reap(d, WNOHANG)) {
        return d->status;
    }
    kill(d->pid, SIGTERM);
    if (!e2e_dextd_wait_exit(d, timeout_ms ? timeout_ms : STOP_TIMEOUT_MS, NULL)) {
        kill_and_reap(d);
    }
    return d->status;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    remove(path);
    return 0;
}

void e2e_dextd_free(E2eDextd *d, bool failed)
{
    if (!d) {
        return;
    }
    if (d->pid > 0) {
        e2e_dextd_stop(d, 0);
    }
    if (failed || g_getenv("DEXT_E2E_KEEP")) {
        g_printerr("%s: dextd log (dextd, QEMU errors, driver output) kept in %s\n", d->name,
                   d->log);
    } else {
        /* FTW_PHYS: a symlinked bundle goes, not what it points to */
        nftw(d->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    }
    destroy(d);
}

char *e2e_valgrind_bundle(const char *work_dir, const char *bundle, const char *valgrind,
                          GError **errp)
{
    g_autofree char *name = g_path_get_basename(bundle);
    g_autofree char *pers_name = g_strconcat(name, ".personality", NULL);
    g_autofree char *pers_src = g_build_filename(bundle, pers_name, NULL);
    g_autofree char *real = g_build_filename(bundle, name, NULL);
    g_autofree char *text = NULL, *with_exe = NULL, *sh = NULL, *pers = NULL, *wrap = NULL;
    char *vdir = g_build_filename(work_dir, "vg", name, NULL);

    pers = g_build_filename(vdir, pers_name, NULL);
    wrap = g_build_filename(vdir, "vg.sh", NULL);
    if (g_mkdir_with_parents(vdir, 0755) < 0) {
        g_set_error(errp, E2E_DEXTD_ERROR, 0, "mkdir %s: %s", vdir, g_strerror(errno));
        goto fail;
    }
    if (!g_file_get_contents(pers_src, &text, NULL, errp)) {
        goto fail;
    }
    with_exe = g_strconcat(text, "\n[Bundle]\nExecutable=vg.sh\n", NULL);
    sh = g_strdup_printf("#!/bin/sh\nexec '%s' --error-exitcode=99 --leak-check=full "
                         "--errors-for-leak-kinds=definite --log-file='%s/vg-%%p.log' "
                         "'%s' \"$@\"\n", valgrind, work_dir, real);
    if (!g_file_set_contents(pers, with_exe, -1, errp) ||
        !g_file_set_contents(wrap, sh, -1, errp)) {
        goto fail;
    }
    if (chmod(wrap, 0755) < 0) {
        g_set_error(errp, E2E_DEXTD_ERROR, 0, "chmod %s: %s", wrap, g_strerror(errno));
        goto fail;
    }
    return vdir;

fail:
    g_free(vdir);
    return NULL;
}
