/* libdext logging, tagged with server name and pid. */
#include "dext/log.h"
#include "dext/service.h"

#include <glib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int max_level = -1;

void dext_log_set_level(DextLogLevel max)
{
    max_level = max;
}

void dext_log(DextLogLevel level, const char *fmt, ...)
{
    static const char *const names[] = { "error", "warning", "info", "debug" };
    if (max_level < 0) {
        max_level = g_getenv("DEXT_DEBUG") ? DEXT_LOG_DEBUG : DEXT_LOG_INFO;
    }
    if ((int)level > max_level) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    /* One write per line so lines from threads do not interleave. */
    char *line = g_strdup_printf("[dext %s:%d] %s: %s\n", dext_server_name(), (int)getpid(),
                                 names[level > DEXT_LOG_DEBUG ? DEXT_LOG_DEBUG : level], msg);
    size_t len = strlen(line);
    if (write(STDERR_FILENO, line, len) < 0) {
        /* nothing sensible to do */
    }
    g_free(line);
    g_free(msg);
}
