/*
 * dextd command line.
 *
 *   dextd --platform qtest --machine FILE --drivers DIR [--drivers DIR2]
 *   dextd --platform vfio [--machine FILE] --drivers DIR   (inside a guest)
 *         [--socket PATH] [--dump-registry text|json] [--verbose]
 *
 * Starts the machine, enumerates, matches bundles from the driver folders,
 * launches driver servers and serves until SIGTERM/SIGINT.  With
 * --dump-registry the registry (after matching) is printed to stdout and
 * dextd exits without launching anything.
 */
#include "daemon.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char *platform = NULL, *machine = NULL, *sock = NULL, *dump = NULL;
    char **drivers = NULL;
    gboolean verbose = FALSE;
    GOptionEntry entries[] = {
        { "platform", 'p', 0, G_OPTION_ARG_STRING, &platform, "Platform backend (qtest, vfio)", "NAME" },
        { "machine", 'm', 0, G_OPTION_ARG_FILENAME, &machine, "Machine description file", "FILE" },
        { "drivers", 'd', 0, G_OPTION_ARG_FILENAME_ARRAY, &drivers, "Folder of driver bundles (repeatable)", "DIR" },
        { "socket", 's', 0, G_OPTION_ARG_FILENAME, &sock, "App socket path (default $DEXTD_SOCKET or $XDG_RUNTIME_DIR/dextd.sock)", "PATH" },
        { "dump-registry", 0, 0, G_OPTION_ARG_STRING, &dump, "Print the registry after matching and exit", "text|json" },
        { "verbose", 'v', 0, G_OPTION_ARG_NONE, &verbose, "Debug logging", NULL },
        { NULL },
    };
    GError *e = NULL;
    GOptionContext *ctx = g_option_context_new("- dextlab driver runtime daemon");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &e)) {
        fprintf(stderr, "dextd: %s\n", e->message);
        g_error_free(e);
        g_option_context_free(ctx);
        return 2;
    }
    g_option_context_free(ctx);
    if (dump && strcmp(dump, "text") && strcmp(dump, "json")) {
        fprintf(stderr, "dextd: --dump-registry takes text or json\n");
        return 2;
    }
    if (!sock && !dump) {
        sock = g_strdup(g_getenv("DEXTD_SOCKET"));
        if (!sock) {
            sock = g_build_filename(g_get_user_runtime_dir(), "dextd.sock", NULL);
        }
    }
    DextdConfig cfg = {
        .platform = platform ? platform : "qtest",
        .machine_file = machine,
        .driver_dirs = (const char *const *)drivers,
        .socket_path = dump ? NULL : sock,
        .verbose = verbose,
    };
    Dextd *d = NULL;
    char *err = NULL;
    int rc = dextd_create(&cfg, &d, &err);
    if (rc < 0) {
        fprintf(stderr, "dextd: %s\n", err ? err : g_strerror(-rc));
        g_free(err);
        return 1;
    }
    int status = 0;
    if (dump) {
        char *s = dextd_registry_dump(d, !strcmp(dump, "json"));
        fputs(s, stdout);
        if (s[0] && s[strlen(s) - 1] != '\n') {
            fputc('\n', stdout);
        }
        g_free(s);
    } else {
        status = dextd_run(d);
    }
    dextd_destroy(d);
    g_free(platform);
    g_free(machine);
    g_free(sock);
    g_free(dump);
    g_strfreev(drivers);
    return status;
}
