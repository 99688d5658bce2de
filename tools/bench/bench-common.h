/*
 * bench-common: what the end-to-end benchmarks (dextlab-dma-e2e-bench,
 * dextlab-usb-e2e-bench) measure the same way: clocks, CPU time of processes from /proc, the
 * eventfd ping-pong floor, size lists.  Single-threaded callers; nothing
 * here aborts.
 */
#ifndef DEXTLAB_BENCH_COMMON_H
#define DEXTLAB_BENCH_COMMON_H

#include <stdbool.h>
#include <stdint.h>

/* CLOCK_MONOTONIC, the clock the runtime stamps events with. */
uint64_t bench_now_ns(void);
double bench_now_s(void);

/* utime + stime of @pid in seconds (0 if it is gone or @pid <= 0). */
double bench_proc_cpu_s(int pid);
/* utime + stime of this process in seconds. */
double bench_self_cpu_s(void);
/* A child of @ppid whose command name (the kernel keeps 15 characters)
 * starts with @name, or equals it when @exact; -1 if none. */
int bench_child_named(int ppid, const char *name, bool exact);

/* One-way wake-up latency of an eventfd ping-pong between two processes,
 * @n round trips: p50 and p99 in ns (0 if nothing was measured). */
void bench_eventfd_floor(unsigned n, uint64_t *p50, uint64_t *p99);

/* "4K,1M,16" -> values (K and M are binary); false on a malformed or
 * empty list or more than @max entries. */
bool bench_parse_sizes(const char *s, uint64_t *out, unsigned *n, unsigned max);

/* qsort comparators */
int bench_cmp_u64(const void *x, const void *y);
int bench_cmp_double(const void *x, const void *y);

#endif /* DEXTLAB_BENCH_COMMON_H */
