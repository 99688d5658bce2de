/*
 * Helpers shared by the reliability tests (qtest/e2e/reliability-*.c) and
 * the dextd fuzzers (qtest/fuzz/dextd-*-fuzz.c, personality-fuzz.c): start
 * one dextd (through e2e-dextd) on the reliability machine with a chosen
 * set of driver bundles, query it, and look at its processes and file
 * descriptors through /proc.
 *
 * Environment (set by meson): DEXTD (daemon binary), DEXT_DRIVERS (the
 * build's bundle folder), DEXT_REL_MACHINE (machine file).  Header-only
 * over e2e_dextd_dep: each test is one program.
 */
#ifndef DEXT_RELIABILITY_LIB_H
#define DEXT_RELIABILITY_LIB_H

#include "dext/client.h"
#include "e2e-dextd.h"
#include "e2e-services.h"

#include <dirent.h>
#include <errno.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    E2eDextd *d;
    const char *sock;   /* dextd's app socket */
    const char *dir;    /* its work folder: bundles/, flags/, the log */
    char *flags;        /* folder for dext-hostile-dma's hang flags */
} RelDextd;

/* Start dextd with the bundles named in `bundles` (NULL-terminated, from
 * DEXT_DRIVERS, linked into the work folder's bundles/) and extra "K=V"
 * environment entries; waits (bounded) for its socket.  false (the reason
 * printed) if dextd failed to start. */
static inline bool rel_dextd_start(RelDextd *r, const char *const *bundles,
                                   const char *const *extra_env)
{
    const char *drivers = g_getenv("DEXT_DRIVERS"), *machine = g_getenv("DEXT_REL_MACHINE");
    g_assert_nonnull(drivers);
    g_assert_nonnull(machine);
    memset(r, 0, sizeof(*r));
    char *dir = g_dir_make_tmp("dextd-rel-XXXXXX", NULL);
    g_assert_nonnull(dir);
    r->flags = g_build_filename(dir, "flags", NULL);
    g_mkdir(r->flags, 0700);
    char *bdir = g_build_filename(dir, "bundles", NULL);
    g_mkdir(bdir, 0700);
    for (const char *const *b = bundles; *b; b++) {
        char *target = g_build_filename(drivers, *b, NULL), *link = g_build_filename(bdir, *b, NULL);
        g_assert_cmpint(symlink(target, link), ==, 0);
        g_free(target);
        g_free(link);
    }
    GPtrArray *env = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(env, g_strdup_printf("DEXT_HOSTILE_FLAGS=%s", r->flags));
    for (const char *const *e = extra_env; e && *e; e++) {
        g_ptr_array_add(env, g_strdup(*e));
    }
    g_ptr_array_add(env, NULL);
    char *name = g_path_get_basename(g_get_prgname() ? g_get_prgname() : "dextd-rel");
    E2eDextdConfig cfg = {
        .name = name,
        .machine = machine,
        .drivers = (const char *const[]){ bdir, NULL },
        .env = (const char *const *)env->pdata,
        .dir = dir,
        .start_timeout_ms = 60000,
    };
    GError *e = NULL;
    r->d = e2e_dextd_start(&cfg, &e);
    if (!r->d) {
        g_printerr("%s\n", e->message);
        g_error_free(e);
    } else {
        r->sock = e2e_dextd_socket(r->d);
        r->dir = e2e_dextd_dir(r->d);
    }
    g_free(name);
    g_ptr_array_free(env, TRUE);
    g_free(bdir);
    g_free(dir);
    return r->d != NULL;
}

static inline char *rel_log(const RelDextd *r)
{
    return e2e_dextd_read_log(r->d);
}

static inline unsigned rel_count(const char *hay, const char *needle)
{
    unsigned n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) {
        n++;
    }
    return n;
}

/* dextd still running (not reaped)? */
static inline bool rel_alive(RelDextd *r)
{
    return r->d && e2e_dextd_running(r->d);
}

static inline GPid rel_pid(const RelDextd *r)
{
    return r->d ? e2e_dextd_pid(r->d) : 0;
}

/* SIGTERM, bounded wait; returns the wait status or -1 (had to SIGKILL). */
static inline int rel_dextd_stop(RelDextd *r, unsigned ms)
{
    return r->d ? e2e_dextd_stop(r->d, ms) : -1;
}

/* Stop dextd if needed; keep: leave the work folder (its log named),
 * otherwise remove it. */
static inline void rel_cleanup(RelDextd *r, bool keep)
{
    e2e_dextd_free(r->d, keep);
    g_free(r->flags);
    memset(r, 0, sizeof(*r));
}

/* Field idx of the service table line for class (id class server state pid
 * launches starts), or NULL. */
static inline char *rel_service_field(const RelDextd *r, const char *cls, int idx)
{
    return e2e_service_field(r->sock, cls, idx);
}

static inline long rel_service_num(const RelDextd *r, const char *cls, int idx)
{
    char *s = rel_service_field(r, cls, idx);
    long v = s ? strtol(s, NULL, 10) : -1;
    g_free(s);
    return v;
}

static inline bool rel_wait_state(const RelDextd *r, const char *cls, const char *state,
                                  unsigned ms)
{
    gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;
    do {
        char *st = rel_service_field(r, cls, 3);
        bool ok = st && !strcmp(st, state);
        g_free(st);
        if (ok) {
            return true;
        }
        g_usleep(20000);
    } while (g_get_monotonic_time() < end);
    return false;
}

/* Open file descriptors of a process (-1 if gone). */
static inline int rel_fd_count(GPid pid)
{
    char *p = g_strdup_printf("/proc/%d/fd", (int)pid);
    GDir *d = g_dir_open(p, 0, NULL);
    g_free(p);
    if (!d) {
        return -1;
    }
    int n = 0;
    while (g_dir_read_name(d)) {
        n++;
    }
    g_dir_close(d);
    return n;
}

/* Children of pid (from /proc/<x>/stat), optionally only those whose comm
 * starts with `comm`.  Zombies count: they are leaks too. */
static inline GArray *rel_children(GPid pid, const char *comm)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(int));
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        int x = atoi(e->d_name);
        if (x <= 0) {
            continue;
        }
        char *p = g_strdup_printf("/proc/%d/stat", x), *s = NULL;
        if (g_file_get_contents(p, &s, NULL, NULL)) {
            char *open = strchr(s, '('), *close = strrchr(s, ')');
            int ppid = 0;
            char state;
            if (open && close && sscanf(close + 2, "%c %d", &state, &ppid) == 2 && ppid == pid) {
                char *name = g_strndup(open + 1, close - open - 1);
                if (!comm || g_str_has_prefix(name, comm)) {
                    g_array_append_val(a, x);
                }
                g_free(name);
            }
        }
        g_free(s);
        g_free(p);
    }
    if (d) {
        closedir(d);
    }
    return a;
}

static inline bool rel_pid_exists(int pid)
{
    return kill(pid, 0) == 0 || errno != ESRCH;
}

/* Is the process built with AddressSanitizer (libasan mapped or its
 * runtime linked in statically)? */
static inline bool rel_sanitized(GPid pid)
{
    char *p = g_strdup_printf("/proc/%d/maps", (int)pid), *s = NULL;
    bool asan = false;
    if (g_file_get_contents(p, &s, NULL, NULL)) {
        asan = strstr(s, "libasan") != NULL;
    }
    g_free(s);
    g_free(p);
    return asan;
}

/* Sanitizer or GLib-critical reports in a log. */
static inline const char *rel_log_problem(const char *log)
{
    static const char *const bad[] = {
        "ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "CRITICAL",
        "GLib-WARNING", "Segmentation fault",
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
        const char *p = strstr(log, bad[i]);
        if (p) {
            return p;
        }
    }
    return NULL;
}

#endif
