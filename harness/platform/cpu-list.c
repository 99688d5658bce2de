/*
 * CPU lists: see cpu-list.h.  Strict on purpose: a typo in a pinning knob
 * would otherwise leave QEMU unpinned (or pinned somewhere else) without a
 * word, and the only symptom would be slower DMA.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <unistd.h>
#include <glib.h>

#include "cpu-list.h"

/* One decimal CPU number from *p (no sign, no blanks), advancing *p. */
static bool parse_cpu(const char **p, unsigned long *out)
{
    const char *s = *p;
    unsigned long v = 0;

    if (!g_ascii_isdigit(*s)) {
        return false;
    }
    for (; g_ascii_isdigit(*s); s++) {
        v = v * 10 + (unsigned long)(*s - '0');
        if (v >= CPU_SETSIZE) {
            v = CPU_SETSIZE;       /* saturate: reported as too big */
        }
    }
    *p = s;
    *out = v;
    return true;
}

static int fail(char **why, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int fail(char **why, const char *fmt, ...)
{
    va_list ap;

    if (why) {
        va_start(ap, fmt);
        *why = g_strdup_vprintf(fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

int dext_cpu_list_parse(const char *list, cpu_set_t *set, char **why)
{
    long conf = sysconf(_SC_NPROCESSORS_CONF);
    char **items;
    int r = 0;

    if (why) {
        *why = NULL;
    }
    if (!list || !set) {
        return fail(why, "no CPU list");
    }
    CPU_ZERO(set);
    items = g_strsplit(list, ",", -1);
    if (!items[0] || (!items[1] && !*g_strstrip(items[0]))) {
        r = fail(why, "empty CPU list");
    }
    for (char **it = items; !r && *it; it++) {
        const char *s = g_strstrip(*it);
        /* the item is named only when the list has several */
        char *where = items[1] ? g_strdup_printf("item \"%s\": ", *it)
                               : g_strdup("");
        unsigned long lo = 0, hi;
        bool syntax = parse_cpu(&s, &lo);

        hi = lo;
        if (syntax && *s == '-') {
            s++;
            syntax = parse_cpu(&s, &hi);
        }
        if (!**it) {
            r = fail(why, "empty item (expected N or N-M)");
        } else if (!syntax || *s) {
            r = fail(why, "%sexpected N or N-M", where);
        } else if (lo >= CPU_SETSIZE || hi >= CPU_SETSIZE) {
            r = fail(why, "%sCPU numbers must be below %d", where,
                     CPU_SETSIZE);
        } else if (hi < lo) {
            r = fail(why, "%sreversed range", where);
        } else if (conf > 0 && hi >= (unsigned long)conf) {
            r = fail(why, "%sCPU %lu is not configured on this host "
                     "(CPUs 0-%ld)", where, hi, conf - 1);
        } else {
            for (unsigned long c = lo; c <= hi; c++) {
                CPU_SET(c, set);
            }
        }
        g_free(where);
    }
    g_strfreev(items);
    if (r < 0) {
        CPU_ZERO(set);
    }
    return r;
}
