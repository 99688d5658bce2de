/*
 * dxl-usb-runtime-test: USB through the runtime inside the boot-test guest.
 *
 * The same driver and app binaries as on the qtest platform
 * (drivers/dextlab-usb, tools/dextlab-usb-tool) behind dextd, with the
 * guest's USB publisher in place of the user-space xHCI dext: dextd
 * --platform vfio lists the xHCI function although xhci_hcd keeps it
 * ($DEXT_VFIO_KERNEL_OWNED=0c0330), matches harness/usb/dextlab-usbfs to
 * it, which publishes the USB devices below it as nubs (usbfs), and
 * dextd matches dextlab-usb to each dextlab-usb interface.  As an app of
 * that driver (org.dextlab.dextlab-usb-e2e, the dxu-app helpers) this
 * program checks, one result line each (DEXTLAB-RESULT name=usbrt-...):
 *
 *   usbrt-dextd             dextd starts and answers
 *   usbrt-matched           two dextlab-usb services running, one process,
 *                           each launched and started once; one at high
 *                           speed, one at SuperSpeed
 *   usbrt-registry          the registry dump: the xHCI IOPCIDevice with the
 *                           usbfs provider's service, >= 2 IOUSBHostDevice
 *                           and IOUSBHostInterface nubs (vendor 0x1209),
 *                           the dextlab-usb services on the interfaces
 *   usbrt-<hs|ss>-loopback  bulk loopback 1 B .. 1 MiB, every byte verified
 *   usbrt-<hs|ss>-events    dextlab-usb-tool events: in order, none lost
 *   usbrt-tool-loopback     dextlab-usb-tool loopback (verified)
 *   usbrt-crash-app-error   kill -9 of the driver with a bulk IN in
 *                           flight: the app's connection resets
 *   usbrt-crash-nub-reset   dextd sent NUB_RESET for both nubs, the
 *                           provider reset the ports through usbfs
 *   usbrt-crash-relaunch    both services run again in a new process
 *   usbrt-<hs|ss>-after-relaunch  SCRATCH reads 0 (the port reset reset
 *                           the device), verified loopback 64 KiB + 1 MiB
 *   usbrt-dextd-exit        dextd exits 0 on SIGTERM (bounded)
 *
 *   dxl-usb-runtime-test [MODE] [--dextd PATH] [--drivers DIR] [--tool PATH]
 *
 * Exit status: 0 when every check passed, 1 otherwise.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "dxu-app.h"
#include "guest-check.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hw/dextlab/dextlab-usb-regs.h"

#define SOCK        "/tmp/dextd-usb.sock"
#define DEXTD_LOG   "/tmp/dextd-usb.log"

enum { HS = 0, SS = 1 };
static const char *const spd[2] = { "hs", "ss" };

static pid_t dextd_pid;
static const char *tool = "/usr/bin/dextlab-usb-tool";
static char *id[2];              /* service ids of the HS and SS devices */
static char *drv_pid;            /* the dextlab-usb process */


static char *read_log(void)
{
    char *s = NULL;

    return g_file_get_contents(DEXTD_LOG, &s, NULL, NULL) ? s : g_strdup("");
}


static unsigned count_of(const char *hay, const char *needle)
{
    unsigned n = 0;

    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) {
        n++;
    }
    return n;
}

static int start_dextd(const char *dextd, const char *drivers)
{
    g_autofree char *usbfs = g_build_filename(drivers, "dextlab-usbfs", NULL);
    g_autofree char *usb = g_build_filename(drivers, "dextlab-usb", NULL);
    const char *argv[] = { dextd, "--platform", "vfio", "--drivers", usbfs,
                           "--drivers", usb, "--socket", SOCK, "--verbose",
                           NULL };
    /* list the xHCI function although xhci_hcd keeps it: the usbfs
     * provider matches it by class and never opens it */
    pid_t pid = guest_spawn_logged(argv, DEXTD_LOG, "DEXT_VFIO_KERNEL_OWNED", "0c0330");

    if (pid < 0) {
        return pid;
    }
    dextd_pid = pid;
    return 0;
}

static bool dextd_alive(void)
{
    int st;

    return dextd_pid > 0 && waitpid(dextd_pid, &st, WNOHANG) == 0;
}

/* "id class server state pid launches starts" lines of our class */
static GPtrArray *services(void)
{
    GPtrArray *a = g_ptr_array_new_with_free_func((GDestroyNotify)g_strfreev);
    g_autofree char *out = NULL;
    g_auto(GStrv) lines = NULL;

    if (dext_daemon_services(SOCK, &out) < 0) {
        return a;
    }
    lines = g_strsplit(out, "\n", -1);
    for (char **l = lines; *l; l++) {
        char **f = g_strsplit(*l, " ", -1);

        if (g_strv_length(f) == 7 && !strcmp(f[1], DXU_UC_CLASS)) {
            g_ptr_array_add(a, f);
        } else {
            g_strfreev(f);
        }
    }
    return a;
}

/* Bounded: exactly @n of our services running, none in process @not_pid;
 * NULL on timeout (or dextd gone). */
static GPtrArray *wait_running(unsigned n, const char *not_pid, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;

    while (g_get_monotonic_time() < end && dextd_alive()) {
        GPtrArray *a = services();
        unsigned run = 0;

        for (guint i = 0; i < a->len; i++) {
            char **f = a->pdata[i];

            run += !strcmp(f[3], "running") &&
                   (!not_pid || strcmp(f[4], not_pid));
        }
        if (run == n && a->len == n) {
            return a;
        }
        g_ptr_array_free(a, TRUE);
        g_usleep(100000);
    }
    return NULL;
}

/* Map the running services to HS/SS by the speed their driver reports;
 * false unless one of each, all in one process. */
static bool learn_ids(GPtrArray *a)
{
    bool ok = true;

    g_clear_pointer(&id[HS], g_free);
    g_clear_pointer(&id[SS], g_free);
    g_clear_pointer(&drv_pid, g_free);
    for (guint i = 0; i < a->len; i++) {
        char **f = a->pdata[i];
        DxuApp app;
        int w;

        if (dxu_app_open(&app, SOCK, "id", f[0], DXU_UC_WINDOW_MIN) < 0) {
            return false;
        }
        w = app.info[1] == DXU_SPEED_SUPER ? SS
          : app.info[1] == DXU_SPEED_HIGH ? HS : -1;
        dxu_app_close(&app);
        if (w < 0 || id[w]) {
            return false;
        }
        id[w] = g_strdup(f[0]);
        if (drv_pid) {
            ok &= !strcmp(drv_pid, f[4]);
        } else {
            drv_pid = g_strdup(f[4]);
        }
    }
    return ok && id[HS] && id[SS];
}

/* Verified loopbacks: count × size, depth in flight; failures counted. */
static bool loop_ok(DxuApp *a, uint64_t size, unsigned count, unsigned depth,
                    GString *why)
{
    DxuRun r = { 0 };
    int rc = dxu_app_loopback_run(a, size, 0, count, depth, (uint32_t)size,
                                  30000, &r);

    if (rc < 0 || r.ok != count || r.failed || r.bad_data) {
        g_string_append_printf(why, "%s%" G_GUINT64_FORMAT ":rc%d/ok%"
                               G_GUINT64_FORMAT "/bad%" G_GUINT64_FORMAT
                               "/st%d", why->len ? "," : "", size, rc, r.ok,
                               r.bad_data, r.first_status);
        return false;
    }
    return true;
}

static void check_loopback(int w)
{
    static const uint64_t sizes[] = {
        1, 2, 511, 512, 513, 1023, 1024, 1025, 4096, 65535, 65536, 65537,
        200000, 512 << 10, 1 << 20,
    };
    g_autoptr(GString) why = g_string_new("");
    g_autofree char *name = g_strdup_printf("usbrt-%s-loopback", spd[w]);
    uint64_t bytes = 0;
    unsigned ok = 0;
    DxuApp a;
    int rc = dxu_app_open(&a, SOCK, "id", id[w], 4 << 20);

    if (rc < 0) {
        guest_result(name, false, "reason=open rc=%d", rc);
        return;
    }
    for (unsigned i = 0; i < G_N_ELEMENTS(sizes); i++) {
        unsigned count = sizes[i] >= (512 << 10) ? 1 : 2;

        if (loop_ok(&a, sizes[i], count, 1, why)) {
            ok++;
            bytes += sizes[i] * count;
        }
    }
    /* and 8 in flight */
    if (loop_ok(&a, 65536, 16, 8, why)) {
        ok++;
        bytes += 16 * 65536;
    }
    dxu_app_close(&a);
    guest_result(name, ok == G_N_ELEMENTS(sizes) + 1, "sizes=1..1048576 ok=%u/%zu "
           "bytes_verified=%" G_GUINT64_FORMAT " speed=%s%s%s", ok,
           G_N_ELEMENTS(sizes) + 1, bytes, spd[w], why->len ? " failed=" : "",
           why->str);
}

/* dextlab-usb-tool against service @w (or all when < 0): exit 0 and
 * @want in its output */
static void check_tool(const char *name, int w, const char *args,
                       const char *want)
{
    g_autofree char *cmd = g_strdup_printf("%s -S %s %s%s %s", tool, SOCK,
                                           w >= 0 ? "-D " : "",
                                           w >= 0 ? id[w] : "", args);
    g_autofree char *out = NULL, *err = NULL;
    int st = -1;
    bool ran = g_spawn_command_line_sync(cmd, &out, &err, &st, NULL);
    bool ok = ran && WIFEXITED(st) && WEXITSTATUS(st) == 0 && out &&
              strstr(out, want);

    g_autofree char *arg1 = g_strdelimit(g_strdup(args), " ", '_');

    /* one word per value: the host rejects lines with stray words */
    guest_result(name, ok, "exit=%d args=%s", ran && WIFEXITED(st) ?
           WEXITSTATUS(st) : -1, arg1);
    if (!ok) {
        g_auto(GStrv) l = g_strsplit(out ? out : "", "\n", -1);

        for (char **p = l; *p; p++) {
            if (**p) {
                printf("DEXTLAB-TOOL %s\n", *p);
            }
        }
    }
}

static void check_registry(void)
{
    g_autofree char *out = NULL;
    int rc = dext_daemon_registry(SOCK, 0, &out);
    unsigned devs = 0, ifs = 0, clients = 0;
    bool ok;
    bool xhci = false, prov = false, vid = false, no_xhci_dext = false;

    if (rc == 0) {
        devs = count_of(out, "<class IOUSBHostDevice,");
        ifs = count_of(out, "<class IOUSBHostInterface,");
        clients = count_of(out, "<class DextlabUsbDriver,");
        xhci = strstr(out, "<class IOPCIDevice,") &&
               strstr(out, "\"class-code\" = 0xc0330");
        prov = strstr(out, "<class DextlabUsbfsDriver,") != NULL;
        vid = count_of(out, "\"idVendor\" = 0x1209") >= 4;  /* 2 dev + 2 if */
        /* the qtest platform's xHCI dext would claim the controller */
        no_xhci_dext = !strstr(out, "DextlabXhciDriver");
    }
    ok = rc == 0 && devs >= 2 && ifs >= 2 && xhci && prov && vid &&
         no_xhci_dext && clients == 2;
    guest_result("usbrt-registry", ok, "rc=%d usb_device_nubs=%u "
           "usb_interface_nubs=%u xhci_function=%d usbfs_provider=%d "
           "vendor_1209=%d no_xhci_dext=%d dextlab_usb_services=%u bytes=%zu", rc,
           devs, ifs, xhci, prov, vid, no_xhci_dext, clients,
           out ? strlen(out) : 0);
    if (rc == 0 && !ok) {
        g_auto(GStrv) l = g_strsplit(out, "\n", -1);

        for (char **p = l; *p; p++) {
            printf("DEXTLAB-REGISTRY %s\n", *p);
        }
    }
}

/* A bulk IN that pends (FIFO emptied first) on @a: in flight */
static int pend_read(DxuApp *a, uint64_t ref)
{
    uint64_t in[3] = { 0, 4096, 0xdead }, chunks, r, data[16];
    uint32_t n = 1;
    int st, rc;

    rc = dxu_app_call(a, DXU_UC_SEL_RESET_FIFO, NULL, 0, NULL, 0);
    if (rc < 0) {
        return rc;
    }
    rc = dext_client_call_async(a->c, DXU_UC_SEL_BULK_IN, ref, in, 3, NULL, 0,
                                &chunks, &n, NULL, NULL);
    if (rc < 0) {
        return rc;
    }
    /* really pending */
    rc = dxu_app_wait(a, 300, &r, &st, data, &n);
    return rc == -ETIMEDOUT ? 0 : -EPROTO;
}

static void check_crash(void)
{
    DxuApp a;
    uint64_t ref, data[16];
    uint32_t n, v = 1;
    int st = 0, how = 0, rc;
    g_autofree char *old = g_strdup(drv_pid);
    g_autofree char *log0 = read_log();
    unsigned resets0 = count_of(log0, "NUB_RESET to"), resets = 0;
    unsigned ports0 = count_of(log0, "port reset queued"), ports = 0;
    GPtrArray *s;
    gint64 t0;
    bool ok;

    /* SCRATCH set on both: a port reset clears it */
    for (int w = HS; w <= SS; w++) {
        if (dxu_app_open(&a, SOCK, "id", id[w], DXU_UC_WINDOW_MIN) == 0) {
            dxu_app_reg_write(&a, DEXTLAB_USB_REG_SCRATCH, 0x5a5a0000u + w);
            dxu_app_close(&a);
        }
    }
    rc = dxu_app_open(&a, SOCK, "id", id[SS], 65536);
    if (rc == 0 && (rc = pend_read(&a, 21)) == 0) {
        t0 = g_get_monotonic_time();
        kill((pid_t)g_ascii_strtoll(old, NULL, 10), SIGKILL);
        for (;;) {
            how = dxu_app_wait(&a, 20000, &ref, &st, data, &n);
            if (how < 0 || ref == 21) {
                break;
            }
        }
        dxu_app_close(&a);
        guest_result("usbrt-crash-app-error", how == -ECONNRESET, "driver_pid=%s "
               "in_flight_read=%d completion_status=%d", old, how,
               how < 0 ? 0 : st);
    } else {
        if (rc == 0 || rc != -ENOENT) {
            dxu_app_close(&a);
        }
        guest_result("usbrt-crash-app-error", false, "reason=pend_read rc=%d", rc);
        return;
    }
    s = wait_running(2, old, 90000);
    ok = s && learn_ids(s) && strcmp(drv_pid, old);
    guest_result("usbrt-crash-relaunch", ok, "old_pid=%s new_pid=%s relaunch_ms=%"
           G_GINT64_FORMAT, old, drv_pid ? drv_pid : "-",
           (g_get_monotonic_time() - t0) / 1000);
    if (s) {
        g_ptr_array_free(s, TRUE);
    }
    {
        g_autofree char *log = read_log();

        resets = count_of(log, "NUB_RESET to") - resets0;
        ports = count_of(log, "port reset queued") - ports0;
    }
    {
        g_autofree char *log = read_log();
        g_autofree char *tail = g_strdup(log + MIN(strlen(log0),
                                                   strlen(log)));
        g_auto(GStrv) l = g_strsplit(tail, "\n", -1);
        unsigned failed_starts = count_of(tail, " Start on ");

        /* dextd relaunches only after every NUB_RESET of the crash was
         * answered, and the provider answers once the old nubs are
         * terminated: no Start may land on a stale nub */
        guest_result("usbrt-crash-nub-reset",
               resets >= 2 && ports >= 2 && failed_starts == 0,
               "nub_resets=%u usbfs_port_resets=%u start_failures=%u",
               resets, ports, failed_starts);
        /* for the console log (not DEXTLAB- lines: the host ignores them):
         * what dextd and the processes said about the reset and relaunch */
        for (char **p = l; *p; p++) {
            if (strstr(*p, "NUB_RESET") || strstr(*p, "Start") ||
                strstr(*p, "published") || strstr(*p, "terminat") ||
                strstr(*p, "attached") || strstr(*p, "detached")) {
                printf("usbrt-log: %s\n", *p);
            }
        }
        fflush(stdout);
    }
    for (int w = HS; w <= SS; w++) {
        g_autofree char *name = g_strdup_printf("usbrt-%s-after-relaunch",
                                                spd[w]);
        g_autoptr(GString) why = g_string_new("");

        if (!id[w] || dxu_app_open(&a, SOCK, "id", id[w], 4 << 20) < 0) {
            guest_result(name, false, "reason=open");
            continue;
        }
        v = 1;
        ok = dxu_app_reg_read(&a, DEXTLAB_USB_REG_SCRATCH, &v) == 0 && v == 0;
        ok &= loop_ok(&a, 65536, 4, 2, why);
        ok &= loop_ok(&a, 1 << 20, 1, 1, why);
        dxu_app_close(&a);
        guest_result(name, ok, "scratch_after_reset=0x%x speed=%s%s%s", v, spd[w],
               why->len ? " failed=" : "", why->str);
    }
}

int main(int argc, char **argv)
{
    const char *dextd = "/usr/bin/dextd", *drivers = "/usr/lib/dextlab/drivers";
    GPtrArray *s;
    gint64 t0;
    bool ok;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--dextd") && i + 1 < argc) {
            dextd = argv[++i];
        } else if (!strcmp(argv[i], "--drivers") && i + 1 < argc) {
            drivers = argv[++i];
        } else if (!strcmp(argv[i], "--tool") && i + 1 < argc) {
            tool = argv[++i];
        }
        /* anything else: the boot mode (test/bench), nothing differs */
    }
    signal(SIGPIPE, SIG_IGN);
    t0 = g_get_monotonic_time();
    if (start_dextd(dextd, drivers) < 0) {
        guest_result("usbrt-dextd", false, "reason=fork");
        return 1;
    }
    s = wait_running(2, NULL, 90000);
    guest_result("usbrt-dextd", dextd_alive(), "pid=%d", (int)dextd_pid);
    if (!s) {
        guest_result("usbrt-matched", false, "reason=not_two_running_services "
               "waited_ms=%" G_GINT64_FORMAT,
               (g_get_monotonic_time() - t0) / 1000);
        check_registry();
        guest_dump_log(DEXTD_LOG);
        goto stop;
    }
    ok = learn_ids(s);
    for (guint i = 0; i < s->len; i++) {
        char **f = s->pdata[i];

        ok &= !strcmp(f[5], "1") && !strcmp(f[6], "1");  /* launches starts */
    }
    guest_result("usbrt-matched", ok, "services=%u hs=%s ss=%s driver_pid=%s "
           "ready_ms=%" G_GINT64_FORMAT, s->len, id[HS] ? id[HS] : "-",
           id[SS] ? id[SS] : "-", drv_pid ? drv_pid : "-",
           (g_get_monotonic_time() - t0) / 1000);
    g_ptr_array_free(s, TRUE);
    check_registry();
    if (!id[HS] || !id[SS]) {
        guest_dump_log(DEXTD_LOG);
        goto stop;
    }
    for (int w = HS; w <= SS; w++) {
        g_autofree char *ev = g_strdup_printf("usbrt-%s-events", spd[w]);

        check_loopback(w);
        check_tool(ev, w, "events -n 32", "32 received, 0 sequence gaps, 0 lost");
    }
    check_tool("usbrt-tool-loopback", SS, "loopback -s 200K -n 8 -d 4",
               "8 ok, 0 failed, 0 bad data");
    check_crash();
    if (guest_failures) {
        guest_dump_log(DEXTD_LOG);
    }

stop:
    guest_stop(dextd_pid, 10000, "usbrt-dextd-exit");
    return guest_failures ? 1 : 0;
}
