/*
 * QEMU dying under a running runtime (suite 'e2e'): dextd on the
 * reliability machine with dext-hostile-dma and an app doing DMA copies;
 * then QEMU is killed with SIGKILL.  Required: dextd notices, logs a clear
 * error naming the machine's death and exits (non-zero) within a bounded
 * time; the app's calls end with an error (none hangs, none reports a copy
 * that did not happen); no process is left behind (driver, QEMU).
 */
#include "reliability-lib.h"

#include <sys/mman.h>

enum { SEL_COPY };
#define DATA_MAX (256 * 1024)
#define CLS "HostileDmaDriver"
#define EXIT_BOUND_S 20

static RelDextd dd;

typedef struct {
    gint stop;
    gint64 ok, failed, max_call_us;
    gint last_err;
} App;

static gpointer app_thread(gpointer data)
{
    App *a = data;
    DextConnection *c = NULL;
    if (dext_client_open(dd.sock, "class", CLS, &c) < 0) {
        return NULL;
    }
    void *src = NULL, *dst = NULL;
    uint64_t ssz = 0, dsz = 0;
    g_assert_cmpint(dext_client_map_memory(c, 0, 0, &src, &ssz), ==, 0);
    g_assert_cmpint(dext_client_map_memory(c, 1, DEXT_CLIENT_MAP_READONLY, &dst, &dsz), ==, 0);
    GRand *r = g_rand_new_with_seed(3);
    while (!g_atomic_int_get(&a->stop)) {
        uint32_t len = g_rand_int_range(r, 1, DATA_MAX + 1);
        uint8_t *s = src, v = (uint8_t)g_rand_int(r);
        for (uint32_t i = 0; i < len; i++) {
            s[i] = (uint8_t)(v + i);
        }
        uint64_t in = len, out;
        uint32_t nout = 1;
        gint64 t0 = g_get_monotonic_time();
        int rc = dext_client_call(c, SEL_COPY, &in, 1, NULL, 0, &out, &nout, NULL, NULL);
        gint64 dt = g_get_monotonic_time() - t0;
        if (dt > a->max_call_us) {
            a->max_call_us = dt;
        }
        if (rc == 0) {
            if (memcmp(src, dst, len)) {
                g_error("copy reported done but the destination differs");
            }
            a->ok++;
        } else {
            a->failed++;
            a->last_err = rc;
            break; /* the runtime is going away */
        }
    }
    g_rand_free(r);
    munmap(src, ssz);
    munmap(dst, dsz);
    dext_client_close(c);
    return NULL;
}

/* Guards: killing QEMU ends dextd with a clear error within a bound, fails
 * the app's outstanding call, and leaves no process behind. */
static void test_kill_qemu(void)
{
    const char *bundles[] = { "dext-hostile-dma", NULL };
    g_assert_true(rel_dextd_start(&dd, bundles, NULL));
    g_assert_true(rel_wait_state(&dd, CLS, "running", 30000));
    int drv = (int)rel_service_num(&dd, CLS, 4);
    GArray *q = rel_children(rel_pid(&dd), "qemu");
    g_assert_cmpuint(q->len, ==, 1);
    int qemu = g_array_index(q, int, 0);
    g_array_free(q, TRUE);
    g_assert_cmpint(drv, >, 0);

    App a = { 0 };
    GThread *th = g_thread_new("app", app_thread, &a);
    gint64 end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    while (g_atomic_pointer_get(&a.ok) < 20 && g_get_monotonic_time() < end) {
        g_usleep(5000);
    }
    g_assert_cmpint(a.ok, >=, 20);

    gint64 t0 = g_get_monotonic_time();
    g_assert_cmpint(kill(qemu, SIGKILL), ==, 0);
    int status = 0;
    bool exited = e2e_dextd_wait_exit(dd.d, EXIT_BOUND_S * 1000, &status);
    double secs = (g_get_monotonic_time() - t0) / 1e6;
    char *log = rel_log(&dd);
    if (!exited) {
        g_printerr("%s\n", log);
        rel_dextd_stop(&dd, 1);
    }
    g_assert_true(exited);
    g_printerr("# dextd exited %.2f s after QEMU was killed, status %d%s\n", secs,
               WIFEXITED(status) ? WEXITSTATUS(status) : -1,
               WIFSIGNALED(status) ? " (signal)" : "");
    /* A clear error, a failing exit status, no sanitizer report. */
    g_assert_nonnull(strstr(log, "machine died"));
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), !=, 0);
    const char *bad = rel_log_problem(log);
    if (bad) {
        g_printerr("%.*s\n", 1500, bad);
    }
    g_assert_null(bad);
    g_free(log);

    /* The app's call ended with an error, in bounded time. */
    g_atomic_int_set(&a.stop, 1);
    g_thread_join(th);
    g_printerr("# app: %" G_GINT64_FORMAT " copies verified before, %" G_GINT64_FORMAT
               " call failed (%s), longest call %.2f s\n", a.ok, a.failed,
               g_strerror(-a.last_err), a.max_call_us / 1e6);
    g_assert_cmpint(a.failed, ==, 1);
    g_assert_cmpint(a.max_call_us, <, (EXIT_BOUND_S + 5) * G_USEC_PER_SEC);
    /* And the daemon is gone for new apps too. */
    char *out = NULL;
    g_assert_cmpint(dext_daemon_services(dd.sock, &out), <, 0);

    /* No orphans: the driver and QEMU are gone (bounded wait). */
    end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    while ((rel_pid_exists(drv) || rel_pid_exists(qemu)) && g_get_monotonic_time() < end) {
        g_usleep(20000);
    }
    g_assert_false(rel_pid_exists(drv));
    g_assert_false(rel_pid_exists(qemu));
    rel_cleanup(&dd, false);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/reliability/qemu-death/kill-9-under-load", test_kill_qemu);
    return g_test_run();
}
