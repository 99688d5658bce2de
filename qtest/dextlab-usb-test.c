/*
 * QTest testcases for the dextlab-usb device model (hw/dextlab/dextlab-usb.c)
 * that need no host controller driver: attach speed per port kind,
 * property validation, hot-plug cycles, and the migration stream.
 * Transfers, descriptors and requests are tested end to end through the
 * user-space xHCI driver (harness/usb/tests/e2e-usb.c, suite e2e).
 *
 * Copyright (c) 2026 dextlab authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"
#include "hw/dextlab/dextlab-usb-regs.h"

#define XHCI_ARGS "-M q35 -nodefaults -device qemu-xhci,id=xhci "

/*
 * Regression: without handle_attach = usb_desc_attach the device kept its
 * full-speed descriptors at any port speed.  The speed QEMU reports here
 * is the port's; the descriptors are checked against it end to end.
 */
static void test_attach_speeds(void)
{
    QTestState *qts = qtest_init(XHCI_ARGS
        "-device dextlab-usb,bus=xhci.0,id=ss "
        "-device dextlab-usb,bus=xhci.0,id=hs,superspeed=off");
    g_autofree char *info = qtest_hmp(qts, "info usb");

    g_assert_nonnull(strstr(info, "Speed 5000 Mb/s, Product "
                            DEXTLAB_USB_PRODUCT));
    g_assert_nonnull(strstr(info, "Speed 480 Mb/s, Product "
                            DEXTLAB_USB_PRODUCT));
    qtest_quit(qts);
}

static bool try_add(QTestState *qts, const char *id, unsigned fifo)
{
    QDict *resp = qtest_qmp(qts, "{'execute': 'device_add', 'arguments': {"
                            "'driver': 'dextlab-usb', 'bus': 'xhci.0', "
                            "'id': %s, 'fifo-size': %u}}", id, fifo);
    bool ok = !qdict_haskey(resp, "error");

    qobject_unref(resp);
    return ok;
}

/* fifo-size outside [1 KiB, 4 MiB] or not a multiple of 1 KiB is refused
 * at realize with an error (never an abort) */
static void test_fifo_size_property(void)
{
    static const unsigned bad[] = { 0, 1000, 1025, DEXTLAB_USB_FIFO_MAX + 1024,
                                    0xffffffffu };
    QTestState *qts = qtest_init(XHCI_ARGS);

    for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
        g_assert_false(try_add(qts, "bad", bad[i]));
    }
    g_assert_true(try_add(qts, "min", DEXTLAB_USB_FIFO_MIN));
    g_assert_true(try_add(qts, "max", DEXTLAB_USB_FIFO_MAX));
    qtest_qmp_device_del(qts, "min");
    qtest_qmp_device_del(qts, "max");
    qtest_quit(qts);
}

/* repeated plug/unplug (timer, bottom half, FIFO allocated and freed) */
static void test_hotplug_cycles(void)
{
    QTestState *qts = qtest_init(XHCI_ARGS);

    for (int i = 0; i < 20; i++) {
        qtest_qmp_device_add(qts, "dextlab-usb", "u", "{'bus': 'xhci.0', "
                             "'superspeed': %s}", i & 1 ? "false" : "true");
        qtest_qmp_device_del(qts, "u");
    }
    qtest_quit(qts);
}

static void wait_migration(QTestState *qts)
{
    for (int i = 0; i < 1000; i++) {
        QDict *r = qtest_qmp(qts, "{'execute': 'query-migrate'}");
        QDict *ret = qdict_get_qdict(r, "return");
        const char *st = ret && qdict_haskey(ret, "status")
                         ? qdict_get_str(ret, "status") : "";
        bool done = !strcmp(st, "completed");

        g_assert_cmpstr(st, !=, "failed");
        qobject_unref(r);
        if (done) {
            return;
        }
        g_usleep(10000);
    }
    g_assert_not_reached();
}

/* the VMState (FIFO buffer sized by the property, timer, queues) saves and
 * loads, and post_load accepts what save produced */
static void test_migration_stream(void)
{
    g_autofree char *dir = g_dir_make_tmp("dextlab-usb-mig-XXXXXX", NULL);
    g_autofree char *file = g_build_filename(dir, "stream", NULL);
    const char *dev = "-device dextlab-usb,bus=xhci.0,id=u,fifo-size=8192 ";
    g_autofree char *out_uri = g_strdup_printf("exec:cat > %s", file);
    g_autofree char *in_uri = g_strdup_printf("exec:cat %s", file);
    QTestState *src, *dst;
    g_autofree char *info = NULL;
    QDict *r;

    src = qtest_initf(XHCI_ARGS "%s", dev);
    r = qtest_qmp(src, "{'execute': 'migrate', 'arguments': {'uri': %s}}",
                  out_uri);
    g_assert_false(qdict_haskey(r, "error"));
    qobject_unref(r);
    wait_migration(src);
    qtest_quit(src);

    dst = qtest_initf(XHCI_ARGS "%s -incoming defer", dev);
    r = qtest_qmp(dst, "{'execute': 'migrate-incoming', 'arguments': "
                  "{'uri': %s}}", in_uri);
    g_assert_false(qdict_haskey(r, "error"));
    qobject_unref(r);
    qtest_qmp_eventwait(dst, "RESUME");
    info = qtest_hmp(dst, "info usb");
    g_assert_nonnull(strstr(info, DEXTLAB_USB_PRODUCT));
    qtest_quit(dst);

    /* a different FIFO size on the destination is refused: the incoming
     * QEMU reports the failed load and exits with status 1 */
    dst = qtest_initf(XHCI_ARGS "-device dextlab-usb,bus=xhci.0,id=u,"
                      "fifo-size=4096 -incoming defer");
    qtest_set_expected_status(dst, 1);
    r = qtest_qmp(dst, "{'execute': 'migrate-incoming', 'arguments': "
                  "{'uri': %s}}", in_uri);
    qobject_unref(r);
    for (int i = 0; i < 1000 && qtest_probe_child(dst); i++) {
        g_usleep(10000);
    }
    g_assert_false(qtest_probe_child(dst));
    qtest_quit(dst);
    unlink(file);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/dextlab-usb/attach/speeds", test_attach_speeds);
    qtest_add_func("/dextlab-usb/properties/fifo-size",
                   test_fifo_size_property);
    qtest_add_func("/dextlab-usb/hotplug/cycles", test_hotplug_cycles);
    qtest_add_func("/dextlab-usb/migration/stream", test_migration_stream);
    return g_test_run();
}
