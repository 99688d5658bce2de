/*
 * Linux CPU lists ("1", "0-3", "2,5-7"), as taskset -c and
 * /proc/<pid>/status Cpus_allowed_list write them: the one parser behind
 * DextMachineDesc.emulator_cpus, used by dextd's machine files (to refuse a
 * bad list when the file is read) and by the qtest backend (which must
 * check again: the descriptor is public API, filled without machine files).
 *
 * Needs _GNU_SOURCE (the project defines it) for cpu_set_t.
 */
#ifndef DEXT_CPU_LIST_H
#define DEXT_CPU_LIST_H

#include <sched.h>

/*
 * Parse @list into @set (cleared first).  Items are separated by commas;
 * each is a CPU number N or a range N-M with N <= M, in decimal, with
 * optional blanks around the item.  Every CPU must be below CPU_SETSIZE
 * and configured on this host (below sysconf(_SC_NPROCESSORS_CONF));
 * whether it is online or in this process's affinity is not checked (the
 * kernel decides when the set is applied).  Returns 0, or -EINVAL with the
 * reason in *why (optional; caller g_free()s).  Thread-safe; not
 * async-signal-safe (parse before fork, apply after).
 */
int dext_cpu_list_parse(const char *list, cpu_set_t *set, char **why);

#endif
