/*
 * dextd: the driver runtime daemon.
 *
 * Lifecycle: dextd_create() (machine up, enumerated, registry published,
 * bundles loaded and matched), dextd_run() (launch driver servers, serve
 * drivers and apps until SIGTERM/SIGINT or dextd_quit()), dextd_destroy()
 * (stop services, reap processes, release devices, machine down).
 * Threading: everything runs on the thread that calls dextd_run() (a glib
 * main loop); the platform's reader thread only signals eventfds.
 * Errors: negative errno, with a message in *err.
 */
#ifndef DEXTD_DAEMON_H
#define DEXTD_DAEMON_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "platform.h"

typedef struct Dextd Dextd;

/* Why a server process ended, for the relaunch policy. */
typedef enum {
    DEXTD_END_EXITED,       /* exit status 0 after dextd stopped it */
    DEXTD_END_CRASHED,      /* killed by a signal */
    DEXTD_END_FAILED,       /* non-zero exit status, or exited on its own */
    DEXTD_END_HUNG,         /* dextd killed it (no HELLO / callback timeout) */
} DextdEndReason;

typedef struct {
    const char *server_name;
    DextdEndReason reason;
    int status;             /* exit status or signal number */
    unsigned launches;      /* total launches so far */
    unsigned recent_crashes;/* abnormal ends within the policy window */
    bool shutting_down;     /* dextd is stopping */
} DextdEndInfo;

typedef struct {
    bool relaunch;
    unsigned delay_ms;
    const char *why;        /* static text for the log */
} DextdRelaunch;

/* The relaunch-policy hook: decides what happens after a server ends. */
typedef DextdRelaunch (*DextdRelaunchPolicy)(const DextdEndInfo *info, void *opaque);
/* Default: relaunch abnormal ends with exponential backoff (100 ms doubling,
 * capped at 5 s), give up after 5 abnormal ends within 60 s (UMDF's
 * retry count); never relaunch a clean exit or during shutdown. */
DextdRelaunch dextd_default_relaunch_policy(const DextdEndInfo *info, void *opaque);

typedef struct {
    const char *platform;          /* "qtest" */
    const char *machine_file;      /* machine description (GKeyFile) */
    const char *const *driver_dirs;/* NULL-terminated: folders of bundles */
    const char *socket_path;       /* app socket */
    DextdRelaunchPolicy policy;    /* NULL: default */
    void *policy_opaque;
    bool verbose;
} DextdConfig;

int dextd_create(const DextdConfig *cfg, Dextd **out, char **err);
/* Registry dump of the current state (g_free). */
char *dextd_registry_dump(Dextd *d, bool json);
int dextd_run(Dextd *d);
void dextd_quit(Dextd *d);
void dextd_destroy(Dextd *d);

/* machine.c: parse a machine description into a platform descriptor.
 * The strings live in the returned object; free with dextd_machine_free. */
typedef struct DextdMachine DextdMachine;
DextdMachine *dextd_machine_load(const char *path, GError **err);
DextdMachine *dextd_machine_parse(const char *file, const char *data, gsize len,
                                  GError **err);
const DextMachineDesc *dextd_machine_desc(DextdMachine *m);
void dextd_machine_free(DextdMachine *m);

void dextd_log(GLogLevelFlags level, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

#endif
