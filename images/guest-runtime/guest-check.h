/*
 * guest-check: what the in-guest checks (dxl-runtime-test,
 * dxl-usb-runtime-test) share: the DEXTLAB-RESULT lines the host's boot
 * test reads, dextd started with its output in a log file, stopped with a
 * bounded wait, and its log replayed for the host when something failed.
 * Single-threaded callers.
 */
#ifndef DEXTLAB_GUEST_CHECK_H
#define DEXTLAB_GUEST_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned guest_failures;     /* results that did not pass */

/* One "DEXTLAB-RESULT name=N status=pass|fail K=V..." line. */
static void G_GNUC_PRINTF(3, 4) G_GNUC_UNUSED
guest_result(const char *name, bool pass, const char *fmt, ...)
{
    va_list ap;
    g_autofree char *kv = NULL;

    va_start(ap, fmt);
    kv = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    guest_failures += !pass;
    printf("DEXTLAB-RESULT name=%s status=%s %s\n", name, pass ? "pass" : "fail", kv);
    fflush(stdout);
}

/* Every line of @log as "DEXTLAB-DEXTD ..." for the host. */
static void G_GNUC_UNUSED guest_dump_log(const char *log)
{
    g_autofree char *s = NULL;

    if (g_file_get_contents(log, &s, NULL, NULL)) {
        g_auto(GStrv) l = g_strsplit(s, "\n", -1);

        for (char **p = l; *p; p++) {
            if (**p) {
                printf("DEXTLAB-DEXTD %s\n", *p);
            }
        }
    }
}

/* Run @argv (argv[0] the path) with stdout and stderr in @log and, if
 * @env_name, that variable set; its pid, or -errno. */
static pid_t G_GNUC_UNUSED guest_spawn_logged(const char *const *argv, const char *log,
                                              const char *env_name, const char *env_value)
{
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    pid_t pid;

    if (fd < 0) {
        return -errno;
    }
    pid = fork();
    if (pid < 0) {
        int e = errno;

        close(fd);
        return -e;
    }
    if (pid == 0) {
        if (env_name) {
            setenv(env_name, env_value, 1);
        }
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], (char **)argv);
        _exit(127);
    }
    close(fd);
    return pid;
}

/* SIGTERM @pid and wait up to @ms for its exit, then SIGKILL; result
 * @name passes if it exited 0 in time. */
static void G_GNUC_UNUSED guest_stop(pid_t pid, unsigned ms, const char *name)
{
    int st = 0;
    bool exited = false;

    kill(pid, SIGTERM);
    for (unsigned i = 0; i < ms / 50 && !exited; i++) {
        exited = waitpid(pid, &st, WNOHANG) == pid;
        if (!exited) {
            g_usleep(50000);
        }
    }
    if (!exited) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        guest_result(name, false, "reason=no_exit_after_SIGTERM");
    } else {
        guest_result(name, WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit=%d signal=%d",
                     WIFEXITED(st) ? WEXITSTATUS(st) : -1, WIFSIGNALED(st) ? WTERMSIG(st) : 0);
    }
}

#endif /* DEXTLAB_GUEST_CHECK_H */
