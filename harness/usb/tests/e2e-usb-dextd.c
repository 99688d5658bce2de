/*
 * The xHCI driver as a dext: dextd matches harness/usb/dextlab-xhci to the
 * machine's xHCI function by class, the driver runs the user-space xHCI
 * driver over libdext's PCI API (BAR0 over IPC, DMA buffers, MSI-X
 * interrupt source), enumerates two dextlab-usb devices, and an app drives
 * them through the driver's user client.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <glib.h>

#include "dext/client.h"
#include "dextlab-xhci-uc.h"
#include "e2e-dextd.h"
#include "hw/dextlab/dextlab-usb-regs.h"

static struct {
    E2eDextd *d;
    const char *sock;
    DextConnection *c;
} dd;

static void dump_log(void)
{
    g_autofree char *text = e2e_dextd_read_log(dd.d);

    fprintf(stderr, "---- dextd log ----\n%s\n", text);
}

static bool start(void)
{
    const char *bundle = g_getenv("DEXT_XHCI_BUNDLE"), *machine = g_getenv("DEXT_USB_MACHINE");
    E2eDextdConfig cfg = {
        .name = "usb-dextd",
        .machine = machine,
        .drivers = (const char *const[]){ bundle, NULL },
    };
    g_autoptr(GError) err = NULL;
    gint64 end;
    int ret = -ENOENT;

    if (!g_getenv("DEXTD") || !bundle || !machine) {
        fprintf(stderr, "DEXTD, DEXT_XHCI_BUNDLE, DEXT_USB_MACHINE needed\n");
        return false;
    }
    dd.d = e2e_dextd_start(&cfg, &err);
    if (!dd.d) {
        fprintf(stderr, "%s\n", err->message);   /* names and quotes the log */
        return false;
    }
    dd.sock = e2e_dextd_socket(dd.d);
    /* the service appears once dextd matched and the driver started */
    end = g_get_monotonic_time() + 30 * G_USEC_PER_SEC;
    while (g_get_monotonic_time() < end) {
        ret = dext_client_open(dd.sock, "name", DXHCI_SERVER_NAME, &dd.c);
        if (ret == 0) {
            return true;
        }
        g_usleep(50000);
    }
    fprintf(stderr, "cannot open %s: %s\n", DXHCI_SERVER_NAME,
            g_strerror(-ret));
    dump_log();
    return false;
}

static void stop(bool failed)
{
    if (dd.c) {
        dext_client_close(dd.c);
    }
    if (failed && dd.d) {
        dump_log();
    }
    e2e_dextd_free(dd.d, failed);
}

static unsigned list(DxhciUcDev *devs)
{
    uint64_t n = 0;
    uint32_t nout = 1;
    size_t len = DXHCI_UC_MAX_DEVS * sizeof(DxhciUcDev);

    g_assert_cmpint(dext_client_call(dd.c, DXHCI_UC_LIST, NULL, 0, NULL, 0,
                                     &n, &nout, devs, &len), ==, 0);
    g_assert_cmpuint(len, ==, n * sizeof(DxhciUcDev));
    return n;
}

/* both devices enumerated by the driver process, with the model's ids */
static void test_enumerated(void)
{
    DxhciUcDev devs[DXHCI_UC_MAX_DEVS];
    gint64 end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    unsigned n = 0, speeds = 0;

    while ((n = list(devs)) < 2 && g_get_monotonic_time() < end) {
        g_usleep(20000);
    }
    g_assert_cmpuint(n, ==, 2);
    for (unsigned i = 0; i < n; i++) {
        g_assert_cmphex(devs[i].id_vendor, ==, DEXTLAB_USB_VID);
        g_assert_cmphex(devs[i].id_product, ==, DEXTLAB_USB_PID);
        g_assert_cmphex(devs[i].bcd_device, ==, DEXTLAB_USB_BCD_DEVICE);
        speeds |= 1u << devs[i].speed;
    }
    g_assert_cmphex(speeds, ==, (1u << 4) | (1u << 3));   /* super, high */
}

/* control and bulk through the driver process, on both devices */
static void test_loopback(void)
{
    static const uint64_t sizes[] = { 0, 1, 511, 512, 4096, 65536 };
    DxhciUcDev devs[DXHCI_UC_MAX_DEVS];
    unsigned n = list(devs);

    g_assert_cmpuint(n, ==, 2);
    for (unsigned i = 0; i < n; i++) {
        uint64_t in[3], out[1];
        uint32_t nout = 1;

        in[0] = devs[i].port;
        in[1] = DEXTLAB_USB_REG_ID;
        g_assert_cmpint(dext_client_call(dd.c, DXHCI_UC_READ_REG, in, 2, NULL,
                                         0, out, &nout, NULL, NULL), ==, 0);
        g_assert_cmphex(out[0], ==, DEXTLAB_USB_ID_VALUE);
        /* the device STALLs an unknown register: an error, nothing more */
        in[1] = 999;
        nout = 1;
        g_assert_cmpint(dext_client_call(dd.c, DXHCI_UC_READ_REG, in, 2, NULL,
                                         0, out, &nout, NULL, NULL), ==,
                        -EPROTO);
        for (unsigned k = 0; k < G_N_ELEMENTS(sizes); k++) {
            in[1] = sizes[k];
            in[2] = k * 31 + i;
            nout = 1;
            g_assert_cmpint(dext_client_call(dd.c, DXHCI_UC_LOOPBACK, in, 3,
                                             NULL, 0, out, &nout, NULL, NULL),
                            ==, 0);
            g_assert_cmpuint(out[0], ==, sizes[k]);
        }
        /* bad arguments are refused, not acted on */
        in[1] = DXHCI_UC_LOOP_MAX + 1;
        nout = 1;
        g_assert_cmpint(dext_client_call(dd.c, DXHCI_UC_LOOPBACK, in, 3, NULL,
                                         0, out, &nout, NULL, NULL), ==,
                        -EINVAL);
    }
    {
        uint64_t in[3] = { 99, 10, 0 }, out[1];
        uint32_t nout = 1;

        g_assert_cmpint(dext_client_call(dd.c, DXHCI_UC_LOOPBACK, in, 3, NULL,
                                         0, out, &nout, NULL, NULL), ==,
                        -ENODEV);
    }
}

/* the controller's events came through the MSI-X dispatch source */
static void test_interrupts(void)
{
    uint64_t out[4];
    uint32_t nout = 4;

    g_assert_cmpint(dext_client_call(dd.c, DXHCI_UC_STATS, NULL, 0, NULL, 0,
                                     out, &nout, NULL, NULL), ==, 0);
    g_assert_cmpuint(out[0], >, 0);           /* events */
    g_assert_cmpuint(out[1], >, 0);           /* interrupts */
    g_assert_cmpuint(out[2], ==, 0);          /* bad events */
    g_assert_cmpuint(out[3], ==, 1);          /* MSI-X */
}

/* the command-line app, entitled on its own */
static void test_tool(void)
{
    const char *tool = g_getenv("DEXT_XHCI_TOOL");
    g_autofree char *out = NULL, *err = NULL;
    int status = -1;
    char *argv_list[] = { (char *)tool, "--socket", (char *)dd.sock, "list", NULL };
    char *argv_loop[] = { (char *)tool, "--socket", (char *)dd.sock, "loop", "1",
                          "4096", "8", NULL };

    g_assert_nonnull(tool);
    g_assert_true(g_spawn_sync(NULL, argv_list, NULL, 0, NULL, NULL, &out,
                               &err, &status, NULL));
    g_assert_cmpint(status, ==, 0);
    g_assert_nonnull(strstr(out, "port 1: 1209:0001 bcdDevice 0100 super speed"));
    g_assert_nonnull(strstr(out, "1209:0001 bcdDevice 0100 high speed"));
    g_free(out);
    g_free(err);
    g_assert_true(g_spawn_sync(NULL, argv_loop, NULL, 0, NULL, NULL, &out,
                               &err, &status, NULL));
    g_assert_cmpint(status, ==, 0);
    g_assert_nonnull(strstr(out, "32768 bytes looped and verified"));
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    if (!start()) {
        e2e_dextd_free(dd.d, true);  /* start() already showed the log */
        return 1;
    }
    g_test_add_func("/dextlab-usb/dextd/enumerated", test_enumerated);
    g_test_add_func("/dextlab-usb/dextd/loopback", test_loopback);
    g_test_add_func("/dextlab-usb/dextd/interrupts", test_interrupts);
    g_test_add_func("/dextlab-usb/dextd/tool", test_tool);
    ret = g_test_run();
    stop(ret != 0);
    return ret;
}
