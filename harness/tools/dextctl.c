/*
 * dextctl: query a running dextd.
 *   dextctl [--socket PATH] registry [--json]   the I/O registry (ioreg-like)
 *   dextctl [--socket PATH] services            id class server state pid launches starts
 */
#include "dext/client.h"

#include <glib.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    char *sock = NULL;
    gboolean json = FALSE;
    GOptionEntry entries[] = {
        { "socket", 's', 0, G_OPTION_ARG_FILENAME, &sock, "dextd socket (default $DEXTD_SOCKET)", "PATH" },
        { "json", 'j', 0, G_OPTION_ARG_NONE, &json, "JSON output (registry)", NULL },
        { NULL },
    };
    GOptionContext *ctx = g_option_context_new("registry|services");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *e = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &e) || argc != 2) {
        fprintf(stderr, "dextctl: %s\n", e ? e->message : "expected one command: registry or services");
        return 2;
    }
    g_option_context_free(ctx);
    if (!sock) {
        sock = g_strdup(g_getenv("DEXTD_SOCKET"));
        if (!sock) {
            sock = g_build_filename(g_get_user_runtime_dir(), "dextd.sock", NULL);
        }
    }
    char *out = NULL;
    int rc;
    if (!strcmp(argv[1], "registry")) {
        rc = dext_daemon_registry(sock, json, &out);
    } else if (!strcmp(argv[1], "services")) {
        rc = dext_daemon_services(sock, &out);
    } else {
        fprintf(stderr, "dextctl: unknown command %s\n", argv[1]);
        return 2;
    }
    if (rc < 0) {
        fprintf(stderr, "dextctl: %s: %s\n", sock, g_strerror(-rc));
        return 1;
    }
    fputs(out, stdout);
    g_free(out);
    g_free(sock);
    return 0;
}
