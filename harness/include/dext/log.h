/*
 * libdext logging: every line is tagged "[dext <server-name>:<pid>]" and the
 * level, and goes to stderr (which dextd forwards to its own log).
 * Thread-safe; lines from different threads never interleave.
 */
#ifndef DEXT_LOG_H
#define DEXT_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    DEXT_LOG_ERROR, DEXT_LOG_WARNING, DEXT_LOG_INFO, DEXT_LOG_DEBUG,
} DextLogLevel;

void dext_log(DextLogLevel level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Messages above this level are dropped (default INFO; DEXT_DEBUG=1 in the
 * environment sets DEBUG). */
void dext_log_set_level(DextLogLevel max);

#define DEXT_ERROR(...) dext_log(DEXT_LOG_ERROR, __VA_ARGS__)
#define DEXT_WARN(...)  dext_log(DEXT_LOG_WARNING, __VA_ARGS__)
#define DEXT_INFO(...)  dext_log(DEXT_LOG_INFO, __VA_ARGS__)
#define DEXT_DEBUG(...) dext_log(DEXT_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
