/*
 * dextctl: look at and steer a running dextd.
 *
 *   dextctl [--socket PATH] list                 devices, matched drivers, state, pid, restarts
 *                                                (nubs drivers published: DEVICE IOClass:name,
 *                                                ID idVendor:idProduct, CLASS the USB class triple)
 *   dextctl [--socket PATH] ioreg [--json]       the I/O registry tree with properties
 *   dextctl [--socket PATH] log [-f]             driver log lines (server[pid]: line); -f follows
 *   dextctl [--socket PATH] match --explain      each device x personality: matched, or why not
 *   dextctl [--socket PATH] load BUNDLE-DIR      load a driver bundle and start what it wins
 *   dextctl [--socket PATH] unload BUNDLE-NAME   stop its servers and forget the bundle
 *   dextctl [--socket PATH] restart SERVER|BUNDLE   kill and relaunch at once (not a crash)
 *   (registry and services: the older spellings of ioreg and a raw service table)
 *
 * load, unload and restart need dextd-control=true in the entitlements dextd
 * reads for this executable (dextctl.entitlements beside it, installed so).
 * Exit status: 0 done, 1 dextd refused or is unreachable, 2 usage.
 */
#include "dext/client.h"

#include <errno.h>
#include <glib.h>
#include <glib-unix.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static volatile int stop_follow;

static gboolean on_sig(gpointer data)
{
    stop_follow = 1;
    return G_SOURCE_CONTINUE;
}

/* The table of `list`: aligned columns for people. */
static void print_list(const char *raw)
{
    char **lines = g_strsplit(raw, "\n", -1);
    printf("%-4s %-24s %-9s %-6s %-5s %-22s %-28s %-12s %-8s %s\n", "DEV", "DEVICE", "ID", "CLASS",
           "SVC", "DRIVER", "SERVER", "STATE", "PID", "RESTARTS");
    for (char **l = lines; *l && **l; l++) {
        char **f = g_strsplit(*l, " ", -1);
        if (g_strv_length(f) == 11) {
            unsigned launches = (unsigned)g_ascii_strtoull(f[9], NULL, 10);
            printf("%-4s %-24s %-9s %-6s %-5s %-22s %-28s %-12s %-8s %u\n", f[0], f[1], f[2], f[3],
                   f[4], f[5], f[6], f[7], strcmp(f[8], "0") ? f[8] : "-",
                   launches ? launches - 1 : 0);
        }
        g_strfreev(f);
    }
    g_strfreev(lines);
}

static void print_explain(const char *raw)
{
    char **lines = g_strsplit(raw, "\n", -1);
    printf("%-24s %-34s %-8s %s\n", "DEVICE", "PERSONALITY", "RESULT", "WHY");
    for (char **l = lines; *l && **l; l++) {
        char **f = g_strsplit(*l, "\t", 5);
        if (g_strv_length(f) == 5) {
            printf("%-24s %-34s %-8s %s\n", f[0], f[1], f[3], f[4]);
        }
        g_strfreev(f);
    }
    g_strfreev(lines);
}

static int do_log(const char *sock, gboolean follow)
{
    uint64_t since = 0, next = 0;
    g_unix_signal_add(SIGINT, on_sig, NULL);
    g_unix_signal_add(SIGTERM, on_sig, NULL);
    for (;;) {
        char *out = NULL;
        int rc = dext_daemon_log(sock, since, &next, &out);
        if (rc < 0) {
            if (follow && since && (rc == -ECONNREFUSED || rc == -ENOENT || rc == -ECONNRESET)) {
                fprintf(stderr, "dextctl: dextd went away\n");
                return 0;
            }
            fprintf(stderr, "dextctl: %s: %s\n", sock, g_strerror(-rc));
            return 1;
        }
        fputs(out, stdout);
        fflush(stdout);
        gboolean more = next > since && *out;
        g_free(out);
        since = next ? next : 1;
        if (more) {
            continue;   /* a full reply: there may be more at once */
        }
        if (!follow) {
            return 0;
        }
        /* dextd answers queries; it does not push.  200 ms polling keeps
         * a follow cheap for dextd and prompt enough for a person. */
        for (int i = 0; i < 4 && !stop_follow; i++) {
            g_main_context_iteration(NULL, FALSE);
            g_usleep(50000);
        }
        g_main_context_iteration(NULL, FALSE);
        if (stop_follow) {
            return 0;
        }
    }
}

int main(int argc, char **argv)
{
    char *sock = NULL;
    gboolean json = FALSE, follow = FALSE, explain = FALSE;
    GOptionEntry entries[] = {
        { "socket", 's', 0, G_OPTION_ARG_FILENAME, &sock, "dextd socket (default $DEXTD_SOCKET)", "PATH" },
        { "json", 'j', 0, G_OPTION_ARG_NONE, &json, "JSON output (ioreg)", NULL },
        { "follow", 'f', 0, G_OPTION_ARG_NONE, &follow, "keep printing new lines (log)", NULL },
        { "explain", 'e', 0, G_OPTION_ARG_NONE, &explain, "why or why not (match)", NULL },
        { NULL },
    };
    GOptionContext *ctx = g_option_context_new("list | ioreg [--json] | log [-f] | match --explain | "
                                               "load DIR | unload BUNDLE | restart SERVER");
    g_option_context_set_summary(ctx, "Inspect and control a running dextd.");
    g_option_context_add_main_entries(ctx, entries, NULL);
    GError *e = NULL;
    if (!g_option_context_parse(ctx, &argc, &argv, &e) || argc < 2) {
        fprintf(stderr, "dextctl: %s\n", e ? e->message : "expected a command (see --help)");
        return 2;
    }
    g_option_context_free(ctx);
    if (!sock) {
        sock = g_strdup(g_getenv("DEXTD_SOCKET"));
        if (!sock) {
            sock = g_build_filename(g_get_user_runtime_dir(), "dextd.sock", NULL);
        }
    }
    const char *cmd = argv[1];
    bool want_arg = !strcmp(cmd, "load") || !strcmp(cmd, "unload") || !strcmp(cmd, "restart");
    if (argc != (want_arg ? 3 : 2)) {
        fprintf(stderr, "dextctl: %s takes %s\n", cmd, want_arg ? "one argument" : "no argument");
        return 2;
    }
    char *out = NULL;
    int rc;
    if (!strcmp(cmd, "registry") || !strcmp(cmd, "ioreg")) {
        rc = dext_daemon_registry(sock, json, &out);
    } else if (!strcmp(cmd, "services")) {
        rc = dext_daemon_services(sock, &out);
    } else if (!strcmp(cmd, "list")) {
        rc = dext_daemon_list(sock, &out);
        if (rc == 0) {
            print_list(out);
            g_clear_pointer(&out, g_free);
        }
    } else if (!strcmp(cmd, "match")) {
        rc = dext_daemon_match_explain(sock, &out);
        if (rc == 0 && explain) {
            print_explain(out);
            g_clear_pointer(&out, g_free);
        } else if (rc == 0) {
            /* without --explain: only what matched */
            char **lines = g_strsplit(out, "\n", -1);
            g_clear_pointer(&out, g_free);
            for (char **l = lines; *l && **l; l++) {
                char **f = g_strsplit(*l, "\t", 5);
                if (g_strv_length(f) == 5 && !strcmp(f[3], "matched")) {
                    printf("%s %s %s\n", f[0], f[1], f[2]);
                }
                g_strfreev(f);
            }
            g_strfreev(lines);
        }
    } else if (!strcmp(cmd, "log")) {
        rc = do_log(sock, follow);
        g_free(sock);
        return rc;
    } else if (want_arg) {
        rc = dext_daemon_bundle_ctl(sock, cmd, argv[2], &out);
        if (rc < 0) {
            fprintf(stderr, "dextctl: %s %s: %s\n", cmd, argv[2], out ? out : g_strerror(-rc));
            g_free(out);
            g_free(sock);
            return 1;
        }
        printf("%s\n", out);
        g_free(out);
        g_free(sock);
        return 0;
    } else {
        fprintf(stderr, "dextctl: unknown command %s (see --help)\n", cmd);
        return 2;
    }
    if (rc < 0) {
        fprintf(stderr, "dextctl: %s: %s\n", sock, g_strerror(-rc));
        return 1;
    }
    if (out) {
        fputs(out, stdout);
    }
    g_free(out);
    g_free(sock);
    return 0;
}
