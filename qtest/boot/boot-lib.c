/*
 * boot-lib.c: run the guest image in the fork and parse its console.
 *
 * QEMU runs as a GSubprocess with the serial console on its stdout; both
 * stdout and stderr are appended to the log line by line as they arrive, and
 * the console lines go to the parser.  Three event sources drive the run on the
 * thread-default main context: the stdout reads, the child's exit, and a
 * timeout that kills QEMU -- so no outcome can block the test.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "boot-lib.h"

#include <errno.h>
#include <gio/gio.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DXL_BOOT_MEM_MB     512
#define DXL_BOOT_PROBE_S    12

typedef struct BootRun BootRun;

/* One of QEMU's output pipes, split into lines. */
typedef struct BootPipe {
    BootRun *run;
    GInputStream *in;
    GString *line;
    gboolean is_stderr;
    gboolean eof;
} BootPipe;

struct BootRun {
    DxlBoot *b;
    GSubprocess *proc;
    BootPipe out, err;
    FILE *log;
    gint64 t0;
    gboolean reaped;
};

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = g_getenv(name);

    return v && *v ? v : dflt;
}

const char *dxl_boot_qemu(void)
{
    return env_or("DEXTLAB_QEMU", env_or("QTEST_QEMU_BINARY", NULL));
}

const char *dxl_boot_kernel(void)
{
    return env_or("DEXTLAB_GUEST_KERNEL", NULL);
}

const char *dxl_boot_initrd(void)
{
    return env_or("DEXTLAB_GUEST_INITRD", NULL);
}

const char *dxl_boot_logdir(void)
{
    return env_or("DEXTLAB_BOOT_LOGDIR", ".");
}

guint dxl_boot_timeout(void)
{
    const char *v = g_getenv("DEXTLAB_BOOT_TIMEOUT");
    guint64 t;

    if (v && g_ascii_string_to_unsigned(v, 10, 5, 3600, &t, NULL)) {
        return t;
    }
    return 120;
}

static double since(gint64 t0)
{
    return (g_get_monotonic_time() - t0) / (double)G_USEC_PER_SEC;
}

static void result_free(gpointer p)
{
    DxlResult *r = p;

    g_free(r->name);
    g_hash_table_unref(r->kv);
    g_free(r);
}

/* "name=N status=S k=v ..." (status absent for bench lines) */
static DxlResult *parse_kv(const char *s, gboolean want_status)
{
    g_auto(GStrv) tok = g_strsplit_set(s, " \t", -1);
    DxlResult *r = g_new0(DxlResult, 1);
    const char *st;
    int i;

    r->kv = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    for (i = 0; tok[i]; i++) {
        char *eq = strchr(tok[i], '=');

        if (!*tok[i]) {
            continue;
        }
        if (!eq || eq == tok[i]) {
            result_free(r);
            return NULL;
        }
        /* a key given twice is a malformed line, not a silent overwrite */
        if (!g_hash_table_insert(r->kv, g_strndup(tok[i], eq - tok[i]),
                                 g_strdup(eq + 1))) {
            result_free(r);
            return NULL;
        }
    }
    r->name = g_strdup(g_hash_table_lookup(r->kv, "name"));
    st = g_hash_table_lookup(r->kv, "status");
    if (!r->name || (want_status && (!st || (strcmp(st, "pass") &&
                                             strcmp(st, "fail"))))) {
        result_free(r);
        return NULL;
    }
    r->pass = st && !strcmp(st, "pass");
    return r;
}

static gboolean prefixed(const char *line, const char *prefix,
                         const char **rest)
{
    size_t n = strlen(prefix);

    if (strncmp(line, prefix, n)) {
        return FALSE;
    }
    /* "PREFIX payload" or a bare "PREFIX" (an empty payload line) */
    if (line[n] == ' ') {
        *rest = line + n + 1;
        return TRUE;
    }
    if (line[n] == '\0') {
        *rest = line + n;
        return TRUE;
    }
    return FALSE;
}

static void parse_line(BootRun *run, const char *line)
{
    DxlBoot *b = run->b;
    const char *rest;
    DxlResult *r;

    if (strstr(line, "Kernel panic - not syncing")) {
        b->panic = TRUE;
    }
    if (strncmp(line, "DEXTLAB-", 8)) {
        return;
    }
    if (prefixed(line, "DEXTLAB-RESULT", &rest)) {
        r = parse_kv(rest, TRUE);
        if (r) {
            g_ptr_array_add(b->results, r);
            return;
        }
    } else if (prefixed(line, "DEXTLAB-BENCH", &rest)) {
        r = parse_kv(rest, FALSE);
        if (r) {
            g_ptr_array_add(b->bench, r);
            return;
        }
    } else if (prefixed(line, "DEXTLAB-LSPCI", &rest)) {
        g_ptr_array_add(b->lspci, g_strdup(rest));
        return;
    } else if (prefixed(line, "DEXTLAB-LSUSB", &rest)) {
        g_ptr_array_add(b->lsusb, g_strdup(rest));
        return;
    } else if (prefixed(line, "DEXTLAB-DMESG", &rest)) {
        g_ptr_array_add(b->dmesg, g_strdup(rest));
        return;
    } else if (prefixed(line, "DEXTLAB-READY", &rest)) {
        const char *u = strstr(rest, "uptime=");

        if (b->t_ready < 0) {
            b->t_ready = since(run->t0);
            b->guest_uptime_ready = u ? g_ascii_strtod(u + 7, NULL) : -1;
        }
        return;
    } else if (prefixed(line, "DEXTLAB-DONE", &rest)) {
        if (sscanf(rest, "results=%d failed=%d", &b->done_results,
                   &b->done_failed) == 2 && !b->done) {
            b->done = TRUE;
            b->t_done = since(run->t0);
            return;
        }
    } else if (prefixed(line, "DEXTLAB-LSPCI-ERR", &rest) ||
               prefixed(line, "DEXTLAB-LSUSB-ERR", &rest)) {
        /* the failed lspci/lsusb result carries the verdict; keep the text */
        g_ptr_array_add(b->unparsed, g_strdup(line));
        return;
    }
    g_ptr_array_add(b->unparsed, g_strdup(line));
}

/*
 * The log gets whole lines from either pipe, QEMU's own messages marked, so
 * a QEMU warning never splits a console line (they arrive interleaved).
 */
static void pipe_line(BootPipe *p)
{
    BootRun *run = p->run;

    if (p->is_stderr) {
        fprintf(run->log, "[qemu] %s\n", p->line->str);
    } else {
        fprintf(run->log, "%s\n", p->line->str);
        parse_line(run, p->line->str);
    }
    fflush(run->log);
    g_string_truncate(p->line, 0);
}

static void feed(BootPipe *p, const char *data, gsize len)
{
    gsize i;

    for (i = 0; i < len; i++) {
        if (data[i] == '\n') {
            pipe_line(p);
        } else if (data[i] != '\r') {
            g_string_append_c(p->line, data[i]);
        }
    }
}

static void read_done(GObject *src, GAsyncResult *res, gpointer opaque)
{
    BootPipe *p = opaque;
    g_autoptr(GBytes) bytes = NULL;
    gsize n = 0;
    const char *data = NULL;

    bytes = g_input_stream_read_bytes_finish(G_INPUT_STREAM(src), res, NULL);
    if (bytes) {
        data = g_bytes_get_data(bytes, &n);
    }
    if (!bytes || n == 0) {
        if (p->line->len) {
            pipe_line(p);
        }
        p->eof = TRUE;
        return;
    }
    feed(p, data, n);
    g_input_stream_read_bytes_async(p->in, 65536, G_PRIORITY_DEFAULT, NULL,
                                    read_done, p);
}

static void pipe_start(BootRun *run, BootPipe *p, GInputStream *in,
                       gboolean is_stderr)
{
    p->run = run;
    p->in = in;
    p->line = g_string_new(NULL);
    p->is_stderr = is_stderr;
    g_input_stream_read_bytes_async(in, 65536, G_PRIORITY_DEFAULT, NULL,
                                    read_done, p);
}

static void wait_done(GObject *src, GAsyncResult *res, gpointer opaque)
{
    BootRun *run = opaque;

    g_subprocess_wait_finish(G_SUBPROCESS(src), res, NULL);
    run->reaped = TRUE;
    run->b->t_exit = since(run->t0);
    if (g_subprocess_get_if_exited(run->proc)) {
        run->b->exited = TRUE;
        run->b->exit_status = g_subprocess_get_exit_status(run->proc);
    }
}

static gboolean timeout_cb(gpointer opaque)
{
    BootRun *run = opaque;

    run->b->timed_out = TRUE;
    g_subprocess_force_exit(run->proc);
    return G_SOURCE_REMOVE;
}

static GPtrArray *qemu_argv(const DxlBootOpts *o, const char *qemu)
{
    GPtrArray *a = g_ptr_array_new_with_free_func(g_free);
    const char *mode = o->mode == DXL_BOOT_BARE ? "bare" :
                       o->mode == DXL_BOOT_BENCH ? "bench" : "test";

#define ARG(...) g_ptr_array_add(a, g_strdup_printf(__VA_ARGS__))
    ARG("%s", qemu);
    ARG("-nodefaults");
    ARG("-machine");
    /*
     * Interrupt remapping (intremap=on) needs a split irqchip only where the
     * irqchip is in the kernel, i.e. under KVM; TCG's is always userspace.
     */
    ARG("q35%s", strcmp(o->accel, "kvm") ? "" : ",kernel-irqchip=split");
    ARG("-accel");
    ARG("%s", o->accel);
    ARG("-m");
    ARG("%u", DXL_BOOT_MEM_MB);
    ARG("-smp");
    ARG("2");
    ARG("-display");
    ARG("none");
    ARG("-monitor");
    ARG("none");
    ARG("-serial");
    ARG("stdio");
    ARG("-no-reboot");
    /* The same machine for every mode: a bare boot differs only in /init */
    if (o->devices) {
        ARG("-device");
        ARG("intel-iommu,intremap=on");
        ARG("-device");
        ARG("pcie-root-port,id=rp0,chassis=1,slot=0");
        ARG("-device");
        ARG("dextlab-dma,id=dxl0,bus=rp0");
        ARG("-device");
        ARG("pcie-root-port,id=rp1,chassis=2,slot=1");
        ARG("-device");
        ARG("qemu-xhci,id=xhci0,bus=rp1");
        /*
         * dextlab-usb twice: as a SuperSpeed device (on one of the xHCI's
         * USB 3 ports) and as a USB 2.0 device (on a USB 2 port, high speed).
         */
        ARG("-device");
        ARG("dextlab-usb,id=usb-ss,bus=xhci0.0,superspeed=on");
        ARG("-device");
        ARG("dextlab-usb,id=usb-hs,bus=xhci0.0,superspeed=off");
    }
    ARG("-kernel");
    ARG("%s", dxl_boot_kernel());
    ARG("-initrd");
    ARG("%s", dxl_boot_initrd());
    ARG("-append");
    /*
     * panic=-1 + -no-reboot: a panic ends QEMU at once instead of hanging.
     * no_timer_check: the kernel's early check that the timer interrupt
     * ticks through the (interrupt-remapped) IO-APIC counts wall-clock
     * time; a TCG guest on a loaded host can miss it and panic with "timer
     * doesn't work through Interrupt-remapped IO-APIC".
     */
    ARG("console=ttyS0 intel_iommu=on no_timer_check panic=-1 "
        "dextlab.mode=%s%s%s", mode,
        o->extra_append ? " " : "", o->extra_append ? o->extra_append : "");
#undef ARG
    g_ptr_array_add(a, NULL);
    return a;
}

DxlBoot *dxl_boot_run(const DxlBootOpts *o)
{
    g_autoptr(GPtrArray) argv = NULL;
    g_autoptr(GError) err = NULL;
    g_autoptr(GSubprocessLauncher) l = NULL;
    g_autofree char *logname = NULL;
    const char *qemu = dxl_boot_qemu();
    DxlBoot *b = g_new0(DxlBoot, 1);
    BootRun run = { .b = b };
    guint tid;

    b->results = g_ptr_array_new_with_free_func(result_free);
    b->bench = g_ptr_array_new_with_free_func(result_free);
    b->lspci = g_ptr_array_new_with_free_func(g_free);
    b->lsusb = g_ptr_array_new_with_free_func(g_free);
    b->dmesg = g_ptr_array_new_with_free_func(g_free);
    b->unparsed = g_ptr_array_new_with_free_func(g_free);
    b->t_ready = b->t_done = b->guest_uptime_ready = -1;
    b->exit_status = -1;

    logname = g_strdup_printf("boot-%s.log", o->name);
    b->log_path = g_build_filename(dxl_boot_logdir(), logname, NULL);
    if (!qemu || !dxl_boot_kernel() || !dxl_boot_initrd()) {
        b->cmdline = g_strdup("(DEXTLAB_QEMU, DEXTLAB_GUEST_KERNEL or "
                              "DEXTLAB_GUEST_INITRD not set)");
        return b;
    }
    argv = qemu_argv(o, qemu);
    b->cmdline = g_strjoinv(" ", (char **)argv->pdata);
    run.log = fopen(b->log_path, "w");
    if (!run.log) {
        g_free(b->cmdline);
        b->cmdline = g_strdup_printf("(cannot write %s: %s)", b->log_path,
                                     g_strerror(errno));
        return b;
    }
    fprintf(run.log, "# %s\n", b->cmdline);
    fflush(run.log);

    l = g_subprocess_launcher_new(G_SUBPROCESS_FLAGS_STDIN_PIPE |
                                  G_SUBPROCESS_FLAGS_STDOUT_PIPE |
                                  G_SUBPROCESS_FLAGS_STDERR_PIPE);
    run.t0 = g_get_monotonic_time();
    run.proc = g_subprocess_launcher_spawnv(l, (const char * const *)argv->pdata,
                                            &err);
    if (!run.proc) {
        fprintf(run.log, "# spawn failed: %s\n", err->message);
        fclose(run.log);
        b->t_exit = 0;
        return b;
    }
    pipe_start(&run, &run.out, g_subprocess_get_stdout_pipe(run.proc), FALSE);
    pipe_start(&run, &run.err, g_subprocess_get_stderr_pipe(run.proc), TRUE);
    g_subprocess_wait_async(run.proc, NULL, wait_done, &run);
    tid = g_timeout_add_seconds(o->timeout_s, timeout_cb, &run);

    while (!run.out.eof || !run.err.eof || !run.reaped) {
        g_main_context_iteration(NULL, TRUE);
    }
    if (!b->timed_out) {
        g_source_remove(tid);
    }
    fprintf(run.log, "\n# QEMU %s after %.1f s%s\n",
            b->exited ? "exited" : "was killed", b->t_exit,
            b->timed_out ? " (timeout)" : "");
    fclose(run.log);
    g_string_free(run.out.line, TRUE);
    g_string_free(run.err.line, TRUE);
    g_object_unref(run.proc);
    return b;
}

void dxl_boot_free(DxlBoot *b)
{
    if (!b) {
        return;
    }
    g_free(b->log_path);
    g_free(b->cmdline);
    g_ptr_array_unref(b->results);
    g_ptr_array_unref(b->bench);
    g_ptr_array_unref(b->lspci);
    g_ptr_array_unref(b->lsusb);
    g_ptr_array_unref(b->dmesg);
    g_ptr_array_unref(b->unparsed);
    g_free(b);
}

static const DxlResult *find(GPtrArray *a, const char *name)
{
    guint i;

    for (i = 0; i < a->len; i++) {
        const DxlResult *r = g_ptr_array_index(a, i);

        if (!strcmp(r->name, name)) {
            return r;
        }
    }
    return NULL;
}

const DxlResult *dxl_boot_result(const DxlBoot *b, const char *name)
{
    return find(b->results, name);
}

const DxlResult *dxl_boot_bench(const DxlBoot *b, const char *name)
{
    return find(b->bench, name);
}

const char *dxl_result_get(const DxlResult *r, const char *key)
{
    return r ? g_hash_table_lookup(r->kv, key) : NULL;
}

char *dxl_boot_describe(const DxlBoot *b)
{
    const char *how;

    if (b->timed_out) {
        how = "hung: killed at the timeout";
    } else if (b->panic) {
        how = "kernel panic";
    } else if (!b->exited) {
        how = "QEMU did not run or was killed";
    } else if (b->exit_status != 0) {
        how = "QEMU failed";
    } else if (!b->done) {
        how = "guest stopped before DEXTLAB-DONE";
    } else {
        how = "completed";
    }
    return g_strdup_printf("%s (exit %d, %.1f s, %u result lines); console "
                           "log: %s", how, b->exit_status, b->t_exit,
                           b->results->len, b->log_path);
}

/* --- accelerator probe --------------------------------------------------- */

static gint64 mtime_of(const char *path)
{
    struct stat st;

    return path && stat(path, &st) == 0 ? (gint64)st.st_mtime : -1;
}

const char *dxl_boot_accel(void)
{
    static const char *verdict;
    const char *env = g_getenv("DEXTLAB_BOOT_ACCEL");
    g_autofree char *cache = NULL, *key = NULL, *cached = NULL;
    DxlBootOpts o = {
        .mode = DXL_BOOT_BARE, .name = "kvm-probe", .accel = "kvm",
        .timeout_s = DXL_BOOT_PROBE_S, .devices = FALSE,
    };
    DxlBoot *b;

    if (env && (!strcmp(env, "tcg") || !strcmp(env, "kvm"))) {
        return env;
    }
    if (verdict) {
        return verdict;
    }
    if (access("/dev/kvm", R_OK | W_OK) != 0) {
        return verdict = "tcg";
    }
    cache = g_build_filename(dxl_boot_logdir(), "accel-probe", NULL);
    key = g_strdup_printf("%" G_GINT64_FORMAT " %" G_GINT64_FORMAT,
                          mtime_of(dxl_boot_qemu()), mtime_of(dxl_boot_kernel()));
    if (g_file_get_contents(cache, &cached, NULL, NULL) &&
        g_str_has_prefix(cached, key) && strlen(cached) > strlen(key) + 1) {
        return verdict = strstr(cached + strlen(key), "kvm") ? "kvm" : "tcg";
    }
    /*
     * /dev/kvm existing proves nothing here (guests fail to start or hang):
     * only a guest that reaches /init under KVM does.
     */
    b = dxl_boot_run(&o);
    verdict = b->t_ready >= 0 && b->exited && b->exit_status == 0 ?
              "kvm" : "tcg";
    g_test_message("KVM probe: %s (%s)", verdict, b->log_path);
    dxl_boot_free(b);
    {
        g_autofree char *line = g_strdup_printf("%s %s\n", key, verdict);

        g_file_set_contents(cache, line, -1, NULL);
    }
    return verdict;
}
