/*
 * Malformed personality files and app entitlements (suite 'fuzz').
 *
 *   /personality-fuzz/corpus: every file in corpus/personality and
 *     corpus/entitlements is broken in one way, named by its first line
 *     "# expect: <line> <hint>"; each must be refused with an error that
 *     starts "<file>:<line>: " and contains the hint.
 *   /personality-fuzz/mutate: the valid personality files of drivers/ and
 *     entitlements of the tests, mutated line by line (deleted, duplicated,
 *     swapped, truncated, values replaced with hostile ones, random bytes
 *     and NULs) for --seconds: each result either parses or is refused with
 *     "<file>:<k>: " and 1 <= k <= lines + 1.  Runs under ASan/UBSan in a
 *     sanitizer build.
 *   /personality-fuzz/dextd: one dextd with every corpus personality as a
 *     bundle beside dext-hostile-dma: each is rejected in the log with its
 *     file:line error, the good one still runs; then copies of this program
 *     with each corpus entitlements file (and with none) try to open the
 *     user client: all refused with -EACCES, while the same program with a
 *     valid file gets in.
 *
 *   personality-fuzz [--seconds N] [--fuzz-seed N]     (long run: --seconds 600)
 */
#include "reliability-lib.h"
#include "personality.h"

#include <sys/stat.h>

static struct {
    int seconds;
    unsigned seed;
    char *probe;   /* --probe-open SOCKET: child mode */
} opt = { 20, 1, NULL };

static char *corpus_dir(const char *kind)
{
    return g_build_filename(g_getenv("DEXT_FUZZ_CORPUS"), kind, NULL);
}

static GPtrArray *list_files(const char *dir, const char *suffix)
{
    GPtrArray *a = g_ptr_array_new_with_free_func(g_free);
    GDir *d = g_dir_open(dir, 0, NULL);
    g_assert_nonnull(d);
    const char *n;
    while ((n = g_dir_read_name(d))) {
        if (g_str_has_suffix(n, suffix)) {
            g_ptr_array_add(a, g_build_filename(dir, n, NULL));
        }
    }
    g_dir_close(d);
    g_ptr_array_sort(a, (GCompareFunc)g_strcmp0);
    return a;
}

static void expectation(const char *data, int *line, char **hint)
{
    g_assert_true(g_str_has_prefix(data, "# expect: "));
    char *end = NULL;
    *line = (int)strtol(data + 10, &end, 10);
    const char *nl = strchr(end, '\n');
    *hint = g_strstrip(g_strndup(end, nl - end));
}

/* Parse as a bundle personality or app entitlements; returns error text. */
static char *parse(const char *file, const char *data, gsize len, bool ents)
{
    GError *e = NULL;
    if (ents) {
        DextAppEntitlements *a = dext_app_entitlements_parse(file, data, len, &e);
        if (a) {
            dext_app_entitlements_free(a);
            return NULL;
        }
    } else {
        DextBundle *b = dext_bundle_parse(file, data, len, &e);
        if (b) {
            dext_bundle_free(b);
            return NULL;
        }
    }
    g_assert_nonnull(e);
    char *m = g_strdup(e->message);
    g_error_free(e);
    return m;
}

static void check_corpus(const char *kind, const char *suffix, bool ents)
{
    char *dir = corpus_dir(kind);
    GPtrArray *files = list_files(dir, suffix);
    g_assert_cmpuint(files->len, >, 0);
    for (guint i = 0; i < files->len; i++) {
        const char *path = files->pdata[i];
        char *data = NULL, *hint = NULL;
        gsize len;
        int line;
        g_assert_true(g_file_get_contents(path, &data, &len, NULL));
        expectation(data, &line, &hint);
        char *base = g_path_get_basename(path);
        char *msg = parse(base, data, len, ents);
        char *want = g_strdup_printf("%s:%d: ", base, line);
        bool ok = msg && g_str_has_prefix(msg, want) && strstr(msg, hint);
        g_printerr("# %s: %s\n", base, msg ? msg : "(accepted!)");
        if (!ok && !g_getenv("DEXT_CORPUS_PRINT_ONLY")) {
            g_error("%s: want an error starting \"%s\" mentioning \"%s\"", base, want, hint);
        }
        g_free(base);
        g_free(msg);
        g_free(want);
        g_free(hint);
        g_free(data);
    }
    g_ptr_array_unref(files);
    g_free(dir);
}

static void test_corpus(void)
{
    check_corpus("personality", ".personality", false);
    check_corpus("entitlements", ".entitlements", true);
}

/* ---- mutation ---------------------------------------------------------------------- */

static const char *const hostile_values[] = {
    "", " ", "0x", "0xffffffff&0x0", "0x100000000", "-1", "99999999999999999999",
    "0x0001dec5&0xffffffff 0x", "&", "0x1&0x1&0x1", "IOPCIDevice", "IOUSBHostInterface",
    "\\", "\\x", "a;b;c", "../..", "*", "true", "maybe", "\xc3\x28", "0x0c0330",
};

static char *mutate(GRand *r, const char *text, int *nlines)
{
    char **l = g_strsplit(text, "\n", -1);
    GPtrArray *a = g_ptr_array_new_with_free_func(g_free);
    for (char **p = l; *p; p++) {
        g_ptr_array_add(a, g_strdup(*p));
    }
    g_strfreev(l);
    int n = g_rand_int_range(r, 1, 4);
    for (int k = 0; k < n && a->len; k++) {
        guint i = g_rand_int_range(r, 0, a->len);
        char *s = a->pdata[i];
        switch (g_rand_int_range(r, 0, 9)) {
        case 0:
            g_ptr_array_remove_index(a, i);
            break;
        case 1:
            g_ptr_array_insert(a, i, g_strdup(s));
            break;
        case 2: {
            guint j = g_rand_int_range(r, 0, a->len);
            a->pdata[i] = a->pdata[j];
            a->pdata[j] = s;
            break;
        }
        case 3:
            s[g_rand_int_range(r, 0, (gint32)strlen(s) + 1)] = 0;
            break;
        case 4: {
            char *eq = strchr(s, '=');
            if (eq) {
                *eq = 0;
                a->pdata[i] = g_strdup_printf("%s=%s", s, hostile_values[g_rand_int_range(
                                                              r, 0, G_N_ELEMENTS(hostile_values))]);
                g_free(s);
            }
            break;
        }
        case 5: {
            size_t len = strlen(s);
            if (len) {
                s[g_rand_int_range(r, 0, (gint32)len)] = (char)g_rand_int_range(r, 1, 256);
            }
            break;
        }
        case 6:
            g_ptr_array_insert(a, i, g_strdup(g_rand_boolean(r) ? "[Entitlements]"
                                                                : "[PCIEntitlement x]"));
            break;
        case 7:
            g_ptr_array_insert(a, i, g_strdup_printf("IOPCIMatch=%s", hostile_values[
                g_rand_int_range(r, 0, G_N_ELEMENTS(hostile_values))]));
            break;
        default: {
            /* a NUL inside the text */
            size_t len = strlen(s);
            char *t = g_malloc(len + 2);
            memcpy(t, s, len);
            t[len] = '\x01'; /* placeholder turned into NUL below */
            t[len + 1] = 0;
            a->pdata[i] = t;
            g_free(s);
            break;
        }
        }
    }
    g_ptr_array_add(a, NULL);
    char *out = g_strjoinv("\n", (char **)a->pdata);
    *nlines = (int)a->len - 1;
    g_ptr_array_unref(a);
    return out;
}

static void test_mutate(void)
{
    const char *drivers_src = g_getenv("DEXT_DRIVERS_SRC");
    g_assert_nonnull(drivers_src);
    GPtrArray *seeds = g_ptr_array_new_with_free_func(g_free);
    GPtrArray *kinds = g_ptr_array_new();
    GDir *d = g_dir_open(drivers_src, 0, NULL);
    const char *n;
    while ((n = g_dir_read_name(d))) {
        char *dir = g_build_filename(drivers_src, n, NULL);
        if (g_file_test(dir, G_FILE_TEST_IS_DIR)) {
            GPtrArray *f = list_files(dir, ".personality");
            for (guint i = 0; i < f->len; i++) {
                char *s = NULL;
                g_assert_true(g_file_get_contents(f->pdata[i], &s, NULL, NULL));
                g_ptr_array_add(seeds, s);
                g_ptr_array_add(kinds, GINT_TO_POINTER(0));
            }
            g_ptr_array_unref(f);
        }
        g_free(dir);
    }
    g_dir_close(d);
    static const char *const ents[] = {
        "[App]\nId=org.dextlab.reliability\nuserclient-access=org.dextlab.dext-hostile-dma\n"
        "dextd-control=true\n",
        "# comment\n[App]\nId=a.b\nuserclient-access=*\n",
    };
    for (unsigned i = 0; i < G_N_ELEMENTS(ents); i++) {
        g_ptr_array_add(seeds, g_strdup(ents[i]));
        g_ptr_array_add(kinds, GINT_TO_POINTER(1));
    }
    g_assert_cmpuint(seeds->len, >=, 5);
    GRand *r = g_rand_new_with_seed(opt.seed);
    uint64_t inputs = 0, refused = 0;
    gint64 t0 = g_get_monotonic_time(), end = t0 + (gint64)opt.seconds * G_USEC_PER_SEC;
    while (g_get_monotonic_time() < end) {
        for (int k = 0; k < 64; k++) {
            guint i = g_rand_int_range(r, 0, seeds->len);
            bool is_ents = GPOINTER_TO_INT(kinds->pdata[i]);
            int nlines;
            char *m = mutate(r, seeds->pdata[i], &nlines);
            gsize len = strlen(m);
            for (gsize j = 0; j < len; j++) {
                if (m[j] == '\x01') {
                    m[j] = 0;
                }
            }
            const char *file = is_ents ? "m.entitlements" : "m.personality";
            char *msg = parse(file, m, len, is_ents);
            inputs++;
            if (msg) {
                refused++;
                char *want = g_strdup_printf("%s:", file);
                char *end2 = NULL;
                long line = g_str_has_prefix(msg, want) ? strtol(msg + strlen(want), &end2, 10) : -1;
                if (line < 1 || line > nlines + 1 || !end2 || strncmp(end2, ": ", 2)) {
                    g_error("error without a valid file:line (lines %d): \"%s\"", nlines, msg);
                }
                g_free(want);
                g_free(msg);
            }
            g_free(m);
        }
    }
    double secs = (g_get_monotonic_time() - t0) / 1e6;
    g_printerr("# personality/entitlements mutation: %" G_GUINT64_FORMAT " inputs in %.1f s "
               "(%.0f/s), %" G_GUINT64_FORMAT " refused with file:line, %" G_GUINT64_FORMAT
               " accepted\n", inputs, secs, inputs / secs, refused, inputs - refused);
    g_assert_cmpuint(refused, >, 0);
    g_rand_free(r);
    g_ptr_array_unref(seeds);
    g_ptr_array_free(kinds, TRUE);
}

/* ---- live -------------------------------------------------------------------------- */

static int run_probe(const char *exe, const char *sock)
{
    char *out = NULL;
    int status = -1;
    char *argv[] = { (char *)exe, "--probe-open", (char *)sock, NULL };
    g_assert_true(g_spawn_sync(NULL, argv, NULL, G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, &out,
                               NULL, &status, NULL));
    int rc = out ? atoi(out) : 999;
    g_free(out);
    return rc;
}

static void test_dextd(void)
{
    RelDextd dd;
    const char *bundles[] = { "dext-hostile-dma", NULL };
    /* Build the broken bundles before dextd starts: it loads at start. */
    char *tmpl = g_build_filename(g_get_tmp_dir(), "dext-broken-XXXXXX", NULL);
    char *broken = g_mkdtemp(tmpl);
    g_assert_nonnull(broken);
    char *dir = corpus_dir("personality");
    GPtrArray *files = list_files(dir, ".personality");
    for (guint i = 0; i < files->len; i++) {
        char *base = g_path_get_basename(files->pdata[i]);
        char *stem = g_strndup(base, strlen(base) - strlen(".personality"));
        char *bdir = g_build_filename(broken, stem, NULL);
        g_mkdir(bdir, 0700);
        char *data = NULL;
        gsize len;
        g_assert_true(g_file_get_contents(files->pdata[i], &data, &len, NULL));
        char *pf = g_strdup_printf("%s/%s.personality", bdir, stem);
        g_assert_true(g_file_set_contents(pf, data, len, NULL));
        char *exe = g_build_filename(bdir, stem, NULL);
        g_assert_true(g_file_set_contents(exe, "#!/bin/sh\nexit 1\n", -1, NULL));
        chmod(exe, 0755);
        g_free(exe);
        g_free(pf);
        g_free(data);
        g_free(bdir);
        g_free(stem);
        g_free(base);
    }
    g_assert_true(rel_dextd_start(&dd, bundles, NULL));
    /* rel_dextd_start made its own bundle folder: restart with ours added. */
    rel_dextd_stop(&dd, 20000);
    char *bfold = g_build_filename(dd.dir, "bundles", NULL);
    for (guint i = 0; i < files->len; i++) {
        char *base = g_path_get_basename(files->pdata[i]);
        char *stem = g_strndup(base, strlen(base) - strlen(".personality"));
        char *src = g_build_filename(broken, stem, NULL), *dst = g_build_filename(bfold, stem, NULL);
        g_assert_cmpint(symlink(src, dst), ==, 0);
        g_free(src);
        g_free(dst);
        g_free(stem);
        g_free(base);
    }
    GError *err = NULL;
    g_assert_true(e2e_dextd_restart(dd.d, &err));
    g_assert_no_error(err);
    g_assert_true(rel_wait_state(&dd, "HostileDmaDriver", "running", 30000));
    char *log = rel_log(&dd);
    for (guint i = 0; i < files->len; i++) {
        char *base = g_path_get_basename(files->pdata[i]);
        char *data = NULL, *hint = NULL;
        int line;
        g_assert_true(g_file_get_contents(files->pdata[i], &data, NULL, NULL));
        expectation(data, &line, &hint);
        char *want = g_strdup_printf("%s:%d: ", base, line);
        const char *hit = strstr(log, want);
        if (!hit || !strstr(hit, hint)) {
            g_error("dextd's log lacks \"%s\" ... \"%s\"", want, hint);
        }
        g_free(want);
        g_free(hint);
        g_free(data);
        g_free(base);
    }
    g_assert_cmpuint(rel_count(log, "rejected: "), ==, files->len);
    g_free(log);

    /* App entitlements: copies of this program beside each broken file. */
    char *self = g_file_read_link("/proc/self/exe", NULL);
    char *ents_dir = corpus_dir("entitlements");
    GPtrArray *ef = list_files(ents_dir, ".entitlements");
    unsigned refused = 0;
    for (guint i = 0; i <= ef->len + 1; i++) {
        char *exe = g_strdup_printf("%s/app-%u", dd.dir, i);
        char *data = NULL;
        gsize len;
        g_assert_true(g_file_get_contents(self, &data, &len, NULL));
        g_assert_true(g_file_set_contents(exe, data, len, NULL));
        chmod(exe, 0755);
        g_free(data);
        char *ent = g_strconcat(exe, ".entitlements", NULL);
        const char *good = "[App]\nId=org.dextlab.reliability\n"
                           "userclient-access=org.dextlab.dext-hostile-dma\n";
        const char *wrong = "[App]\nId=org.dextlab.intruder\nuserclient-access=*\n";
        if (i < ef->len) {
            g_assert_true(g_file_get_contents(ef->pdata[i], &data, &len, NULL));
            g_assert_true(g_file_set_contents(ent, data, len, NULL));
            g_free(data);
        } else if (i == ef->len) {
            g_file_set_contents(ent, wrong, -1, NULL); /* valid, but not allowed by the driver */
        }
        /* i == ef->len + 1: no entitlements file at all */
        int rc = run_probe(exe, dd.sock);
        g_printerr("# app with %s: open -> %d\n",
                   i < ef->len ? (char *)ef->pdata[i] : i == ef->len ? "an unlisted app id"
                                                                     : "no entitlements file", rc);
        g_assert_cmpint(rc, ==, -EACCES);
        refused++;
        /* And the same copy with a valid file gets in. */
        if (i == 0) {
            g_file_set_contents(ent, good, -1, NULL);
            g_assert_cmpint(run_probe(exe, dd.sock), ==, 0);
        }
        g_free(ent);
        g_free(exe);
    }
    g_assert_cmpuint(refused, ==, ef->len + 2);
    g_ptr_array_unref(ef);
    g_free(ents_dir);
    g_free(self);

    g_assert_true(rel_alive(&dd));
    int status = rel_dextd_stop(&dd, 20000);
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    log = rel_log(&dd);
    g_assert_null(rel_log_problem(log));
    g_free(log);
    rel_cleanup(&dd, false);
    char *rm = g_strdup_printf("rm -rf '%s'", broken);
    g_assert_cmpint(system(rm), ==, 0);
    g_free(rm);
    g_free(broken);
    g_free(bfold);
    g_free(dir);
    g_ptr_array_unref(files);
}

int main(int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "seconds", 0, 0, G_OPTION_ARG_INT, &opt.seconds, "Mutation time budget", "N" },
        { "fuzz-seed", 0, 0, G_OPTION_ARG_INT, &opt.seed, "Random seed", "N" },
        { "probe-open", 0, 0, G_OPTION_ARG_STRING, &opt.probe, "(child) open and print rc", "SOCK" },
        { NULL },
    };
    GOptionContext *ctx = g_option_context_new("- malformed personalities and entitlements");
    g_option_context_add_main_entries(ctx, entries, NULL);
    g_option_context_set_ignore_unknown_options(ctx, TRUE);
    if (!g_option_context_parse(ctx, &argc, &argv, NULL)) {
        return 2;
    }
    g_option_context_free(ctx);
    if (opt.probe) {
        DextConnection *c = NULL;
        int rc = dext_client_open(opt.probe, "class", "HostileDmaDriver", &c);
        if (c) {
            dext_client_close(c);
        }
        printf("%d\n", rc);
        return 0;
    }
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/personality-fuzz/corpus", test_corpus);
    g_test_add_func("/personality-fuzz/mutate", test_mutate);
    g_test_add_func("/personality-fuzz/dextd", test_dextd);
    return g_test_run();
}
