/* Shared measuring code of the end-to-end benchmarks; see bench-common.h. */
#include "bench-common.h"

#include <glib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double bench_now_s(void)
{
    return (double)bench_now_ns() / 1e9;
}

double bench_proc_cpu_s(int pid)
{
    if (pid <= 0) {
        return 0;
    }
    char *path = g_strdup_printf("/proc/%d/stat", pid), *s = NULL;
    double v = 0;
    if (g_file_get_contents(path, &s, NULL, NULL)) {
        char *p = strrchr(s, ')');
        unsigned long ut = 0, st = 0;
        /* fields after ")": state ppid pgrp session tty tpgid flags minflt
         * cminflt majflt cmajflt utime stime */
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
                        &st) == 2) {
            v = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
        }
    }
    g_free(s);
    g_free(path);
    return v;
}

double bench_self_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

int bench_child_named(int ppid, const char *name, bool exact)
{
    GDir *d = g_dir_open("/proc", 0, NULL);
    const char *n;
    size_t want = exact ? MIN(strlen(name), 15u) : strlen(name);
    int hit = -1;
    while (d && (n = g_dir_read_name(d)) && hit < 0) {
        int pid = atoi(n);
        if (pid <= 0) {
            continue;
        }
        char *path = g_strdup_printf("/proc/%d/stat", pid), *s = NULL;
        if (g_file_get_contents(path, &s, NULL, NULL)) {
            char *l = strchr(s, '('), *r = strrchr(s, ')');
            int pp = 0;
            if (l && r && sscanf(r + 2, "%*c %d", &pp) == 1 && pp == ppid &&
                (!exact || (size_t)(r - l - 1) == want) && !strncmp(l + 1, name, want)) {
                hit = pid;
            }
        }
        g_free(s);
        g_free(path);
    }
    if (d) {
        g_dir_close(d);
    }
    return hit;
}

int bench_cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

int bench_cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

void bench_eventfd_floor(unsigned n, uint64_t *p50, uint64_t *p99)
{
    int ping = eventfd(0, 0), pong = eventfd(0, 0);
    uint64_t v = 1, *s = g_new0(uint64_t, n);
    unsigned got = 0;
    pid_t pid = ping >= 0 && pong >= 0 ? fork() : -1;
    if (pid == 0) {
        for (unsigned i = 0; i < n; i++) {
            if (read(ping, &v, 8) != 8 || write(pong, &v, 8) != 8) {
                _exit(1);
            }
        }
        _exit(0);
    }
    for (unsigned i = 0; i < n && pid > 0; i++) {
        uint64_t t0 = bench_now_ns();
        v = 1;
        if (write(ping, &v, 8) != 8 || read(pong, &v, 8) != 8) {
            break;
        }
        s[got++] = (bench_now_ns() - t0) / 2;
    }
    if (pid > 0) {
        if (got < n) {
            kill(pid, SIGKILL);
        }
        waitpid(pid, NULL, 0);
    }
    qsort(s, got, sizeof(*s), bench_cmp_u64);
    *p50 = got ? s[got / 2] : 0;
    *p99 = got ? s[got * 99 / 100] : 0;
    g_free(s);
    if (ping >= 0) {
        close(ping);
    }
    if (pong >= 0) {
        close(pong);
    }
}

bool bench_parse_sizes(const char *s, uint64_t *out, unsigned *n, unsigned max)
{
    char **v = g_strsplit(s, ",", -1);
    bool ok = true;
    *n = 0;
    for (char **p = v; *p && ok; p++) {
        char *end;
        uint64_t x = g_ascii_strtoull(*p, &end, 10);
        uint64_t mul = *end == 'K' ? 1024 : *end == 'M' ? 1024 * 1024 : *end ? 0 : 1;
        ok = x && mul && (!*end || !end[1]) && *n < max;
        if (ok) {
            out[(*n)++] = x * mul;
        }
    }
    g_strfreev(v);
    return ok && *n;
}
