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
#include "qemu/bswap.h"
#include "libqtest.h"
#include "libqos/pci.h"
#include "libqos/pci-pc.h"
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

/* ------------------------------------------------------------------
 * A minimal xHCI driver on libqtest (polled event ring, one slot, EP0)
 * for what the user-space driver in harness/usb never sends: control
 * transfer descriptors that disagree with their SETUP packet.
 */

#define XHCI_DEVFN      QPCI_DEVFN(4, 0)
#define X_DCBAA         0x1000000ull
#define X_ERST          0x1001000ull
#define X_EVRING        0x1002000ull
#define X_CMDRING       0x1003000ull
#define X_INCTX         0x1004000ull
#define X_OUTCTX        0x1005000ull
#define X_EP0RING       0x1006000ull
#define X_DATA          0x1007000ull
#define X_INTRRING      0x1008000ull
#define X_EV_TRBS       64

enum { TRB_SETUP = 2, TRB_DATA = 3, TRB_STATUS = 4, CMD_ENABLE_SLOT = 9,
       CMD_ADDRESS_DEV = 11, CMD_RESET_EP = 14, CMD_SET_DEQ = 16,
       EV_TRANSFER = 32, EV_CMD_DONE = 33 };
#define TRB_C           (1u << 0)
#define TRB_IOC         (1u << 5)
#define TRB_IDT         (1u << 6)
#define TRB_DIR_IN      (1u << 16)
#define CC_SUCCESS      1
#define CC_STALL        6

typedef struct MiniXhci {
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *dev;
    QPCIBar bar;
    uint32_t op, rt, db;
    uint32_t ev_deq, ev_ccs;
    uint32_t cmd_enq, ep0_enq, ep0_pcs;
    unsigned slot, ctx_size, port, speed;
} MiniXhci;

static void trb_write(MiniXhci *x, uint64_t addr, uint64_t param,
                      uint32_t status, uint32_t control)
{
    uint32_t t[4] = { cpu_to_le32(param), cpu_to_le32(param >> 32),
                      cpu_to_le32(status), cpu_to_le32(control) };

    qtest_memwrite(x->qts, addr, t, sizeof(t));
}

/* Next event of @type (others, e.g. port status changes, are skipped);
 * *status gets its status dword, returns its control dword. */
static uint32_t xhci_wait_event(MiniXhci *x, unsigned type, uint32_t *status)
{
    for (int tries = 0; tries < 2000; tries++) {
        uint32_t t[4];

        qtest_memread(x->qts, X_EVRING + 16 * x->ev_deq, t, sizeof(t));
        if ((le32_to_cpu(t[3]) & TRB_C) != x->ev_ccs) {
            g_usleep(1000);
            continue;
        }
        if (++x->ev_deq == X_EV_TRBS) {
            x->ev_deq = 0;
            x->ev_ccs ^= 1;
        }
        qpci_io_writel(x->dev, x->bar, x->rt + 0x38,
                       X_EVRING + 16 * x->ev_deq);
        qpci_io_writel(x->dev, x->bar, x->rt + 0x3c, 0);
        if (((le32_to_cpu(t[3]) >> 10) & 0x3f) == type) {
            *status = le32_to_cpu(t[2]);
            return le32_to_cpu(t[3]);
        }
    }
    g_assert_not_reached();
}

/* A command; returns its completion code, *slot the event's slot id */
static unsigned xhci_command(MiniXhci *x, uint64_t param, uint32_t control,
                             unsigned *slot)
{
    uint32_t status, ctl;

    g_assert_cmpuint(x->cmd_enq, <, 16);       /* no link TRB needed */
    trb_write(x, X_CMDRING + 16 * x->cmd_enq++, param, 0, control | TRB_C);
    qpci_io_writel(x->dev, x->bar, x->db, 0);
    ctl = xhci_wait_event(x, EV_CMD_DONE, &status);
    if (slot) {
        *slot = ctl >> 24;
    }
    return status >> 24;
}

static void ep0_put(MiniXhci *x, uint64_t param, uint32_t status,
                    uint32_t control)
{
    g_assert_cmpuint(x->ep0_enq, <, 60);
    trb_write(x, X_EP0RING + 16 * x->ep0_enq++, param, status,
              control | x->ep0_pcs);
}

/* Ring EP0's doorbell and return the completion code of the TD */
static unsigned ep0_run(MiniXhci *x)
{
    uint32_t status;

    qpci_io_writel(x->dev, x->bar, x->db + 4 * x->slot, 1);
    xhci_wait_event(x, EV_TRANSFER, &status);
    return status >> 24;
}

static uint64_t setup_packet(uint8_t rt, uint8_t req, uint16_t val,
                             uint16_t idx, uint16_t len)
{
    return rt | (uint64_t)req << 8 | (uint64_t)val << 16 |
           (uint64_t)idx << 32 | (uint64_t)len << 48;
}

/* Start the controller, reset the port the device is on, Enable Slot and
 * Address Device: EP0 then takes control TDs */
static void mini_xhci_start(MiniXhci *x, const char *devices)
{
    uint32_t caplen, hcs1, hcc1, portsc = 0, speed;
    unsigned port = 0, nports;
    uint64_t erst[2] = { cpu_to_le64(X_EVRING), cpu_to_le64(X_EV_TRBS) };
    uint64_t dcbaa_entry;
    uint32_t ctx[8];

    memset(x, 0, sizeof(*x));
    x->qts = qtest_initf("-M q35 -nodefaults -device qemu-xhci,id=xhci,"
                         "addr=04.0 %s", devices);
    x->bus = qpci_new_pc(x->qts, NULL);
    x->dev = qpci_device_find(x->bus, XHCI_DEVFN);
    g_assert_nonnull(x->dev);
    x->bar = qpci_iomap(x->dev, 0, NULL);
    qpci_device_enable(x->dev);

    caplen = qpci_io_readl(x->dev, x->bar, 0) & 0xff;
    hcs1 = qpci_io_readl(x->dev, x->bar, 0x04);
    hcc1 = qpci_io_readl(x->dev, x->bar, 0x10);
    x->db = qpci_io_readl(x->dev, x->bar, 0x14) & ~3u;
    x->rt = qpci_io_readl(x->dev, x->bar, 0x18) & ~0x1fu;
    x->op = caplen;
    x->ctx_size = (hcc1 & (1u << 2)) ? 64 : 32;
    nports = hcs1 >> 24;

    qpci_io_writel(x->dev, x->bar, x->op + 0x00, 1u << 1);     /* HCRST */
    for (int i = 0; i < 1000 &&
         (qpci_io_readl(x->dev, x->bar, x->op) & (1u << 1)); i++) {
        g_usleep(1000);
    }
    qpci_io_writel(x->dev, x->bar, x->op + 0x38, 1);           /* CONFIG */
    qpci_io_writel(x->dev, x->bar, x->op + 0x30, X_DCBAA);
    qpci_io_writel(x->dev, x->bar, x->op + 0x34, 0);
    qpci_io_writel(x->dev, x->bar, x->op + 0x18, X_CMDRING | 1);
    qpci_io_writel(x->dev, x->bar, x->op + 0x1c, 0);
    qtest_memwrite(x->qts, X_ERST, erst, sizeof(erst));
    qtest_memset(x->qts, X_EVRING, 0, 16 * X_EV_TRBS);
    qpci_io_writel(x->dev, x->bar, x->rt + 0x28, 1);           /* ERSTSZ */
    qpci_io_writel(x->dev, x->bar, x->rt + 0x38, X_EVRING);    /* ERDP */
    qpci_io_writel(x->dev, x->bar, x->rt + 0x3c, 0);
    qpci_io_writel(x->dev, x->bar, x->rt + 0x30, X_ERST);      /* ERSTBA */
    qpci_io_writel(x->dev, x->bar, x->rt + 0x34, 0);
    x->ev_ccs = 1;
    qpci_io_writel(x->dev, x->bar, x->op + 0x00, 1);           /* RS */

    for (unsigned i = 1; i <= nports && !port; i++) {
        if (qpci_io_readl(x->dev, x->bar, x->op + 0x400 + 0x10 * (i - 1)) & 1) {
            port = i;
        }
    }
    g_assert_cmpuint(port, !=, 0);
    /* port reset (PP | PR); wait for the port to be enabled */
    qpci_io_writel(x->dev, x->bar, x->op + 0x400 + 0x10 * (port - 1),
                   (1u << 9) | (1u << 4));
    for (int i = 0; i < 1000; i++) {
        portsc = qpci_io_readl(x->dev, x->bar, x->op + 0x400 + 0x10 * (port - 1));
        if ((portsc & (1u << 1)) && !(portsc & (1u << 4))) {
            break;
        }
        g_usleep(1000);
    }
    g_assert_true(portsc & (1u << 1));
    speed = (portsc >> 10) & 0xf;
    x->port = port;
    x->speed = speed;

    g_assert_cmpuint(xhci_command(x, 0, CMD_ENABLE_SLOT << 10, &x->slot), ==,
                     CC_SUCCESS);
    g_assert_cmpuint(x->slot, !=, 0);
    dcbaa_entry = cpu_to_le64(X_OUTCTX);
    qtest_memwrite(x->qts, X_DCBAA + 8 * x->slot, &dcbaa_entry, 8);
    qtest_memset(x->qts, X_INCTX, 0, 33 * x->ctx_size);
    qtest_memset(x->qts, X_OUTCTX, 0, 32 * x->ctx_size);
    qtest_memset(x->qts, X_EP0RING, 0, 4096);
    memset(ctx, 0, sizeof(ctx));
    ctx[1] = cpu_to_le32(3);                    /* add slot + EP0 */
    qtest_memwrite(x->qts, X_INCTX, ctx, sizeof(ctx));
    memset(ctx, 0, sizeof(ctx));
    ctx[0] = cpu_to_le32((speed << 20) | (1u << 27));
    ctx[1] = cpu_to_le32(port << 16);
    qtest_memwrite(x->qts, X_INCTX + x->ctx_size, ctx, sizeof(ctx));
    memset(ctx, 0, sizeof(ctx));
    ctx[1] = cpu_to_le32((3u << 1) | (4u << 3) | (64u << 16));  /* control */
    ctx[2] = cpu_to_le32(X_EP0RING | 1);        /* DCS 1 */
    ctx[4] = cpu_to_le32(8);
    qtest_memwrite(x->qts, X_INCTX + 2 * x->ctx_size, ctx, sizeof(ctx));
    g_assert_cmpuint(xhci_command(x, X_INCTX, (CMD_ADDRESS_DEV << 10) |
                                  (x->slot << 24), NULL), ==, CC_SUCCESS);
    x->ep0_pcs = 1;
}

/* READ_REG(ID) the way a driver sends it; the device must answer */
static void mini_read_id(MiniXhci *x)
{
    uint32_t id = 0;

    qtest_memset(x->qts, X_DATA, 0, 4);
    ep0_put(x, setup_packet(0xc0, DEXTLAB_USB_REQ_READ_REG, 0,
                            DEXTLAB_USB_REG_ID, 4), 8,
            (TRB_SETUP << 10) | TRB_IDT | (3u << 16));
    ep0_put(x, X_DATA, 4, (TRB_DATA << 10) | TRB_DIR_IN);
    ep0_put(x, 0, 0, (TRB_STATUS << 10) | TRB_IOC);
    g_assert_cmpuint(ep0_run(x), ==, CC_SUCCESS);
    qtest_memread(x->qts, X_DATA, &id, 4);
    g_assert_cmphex(le32_to_cpu(id), ==, DEXTLAB_USB_ID_VALUE);
}

/* After a STALL: Reset Endpoint, then move EP0's dequeue past the TD */
static void mini_ep0_recover(MiniXhci *x)
{
    g_assert_cmpuint(xhci_command(x, 0, (CMD_RESET_EP << 10) |
                                  (x->slot << 24) | (1u << 16), NULL), ==,
                     CC_SUCCESS);
    g_assert_cmpuint(xhci_command(x, (X_EP0RING + 16 * x->ep0_enq) |
                                  x->ep0_pcs, (CMD_SET_DEQ << 10) |
                                  (x->slot << 24) | (1u << 16), NULL), ==,
                     CC_SUCCESS);
}

/*
 * Regression (found by dextlab-usb-fuzz, fixed in the fork by
 * hw/patches/0003-usb-core-control-data-stage-bounds.patch): qemu-xhci
 * hands a control transfer to the device as one packet whose data is the
 * Data Stage TRBs' buffers, and hw/usb/core.c do_parameter() copied
 * wLength bytes into or out of it.  A Data TRB shorter than wLength, or
 * none, aborted QEMU in usb_packet_copy (assertion).  Now an IN request is
 * cut to its data stage and an OUT request without all its data STALLs;
 * the device keeps answering.
 */
static void test_control_short_data_stage(void)
{
    MiniXhci x;
    uint8_t echo[16];
    unsigned cc;

    mini_xhci_start(&x, "-device dextlab-usb,bus=xhci.0,id=u,"
                        "superspeed=off");
    mini_read_id(&x);

    /* IN: wLength 4, a 2-byte data stage: the first two bytes of "DXUS" */
    qtest_memset(x.qts, X_DATA, 0xee, 4);
    ep0_put(&x, setup_packet(0xc0, DEXTLAB_USB_REQ_READ_REG, 0,
                             DEXTLAB_USB_REG_ID, 4), 8,
            (TRB_SETUP << 10) | TRB_IDT | (3u << 16));
    ep0_put(&x, X_DATA, 2, (TRB_DATA << 10) | TRB_DIR_IN);
    ep0_put(&x, 0, 0, (TRB_STATUS << 10) | TRB_IOC);
    cc = ep0_run(&x);
    g_assert_cmpuint(cc, ==, CC_SUCCESS);
    qtest_memread(x.qts, X_DATA, echo, 4);
    g_assert_cmphex(echo[0] | echo[1] << 8, ==,
                    DEXTLAB_USB_ID_VALUE & 0xffff);
    g_assert_cmphex(echo[2], ==, 0xee);

    /* IN: wLength 4 and no data stage at all */
    ep0_put(&x, setup_packet(0xc0, DEXTLAB_USB_REQ_READ_REG, 0,
                             DEXTLAB_USB_REG_ID, 4), 8,
            (TRB_SETUP << 10) | TRB_IDT | (3u << 16));
    ep0_put(&x, 0, 0, (TRB_STATUS << 10) | TRB_IOC);
    g_assert_cmpuint(ep0_run(&x), ==, CC_SUCCESS);
    mini_read_id(&x);

    /* OUT: ECHO with wLength 16 and a 4-byte data stage: STALL */
    memset(echo, 0x5a, sizeof(echo));
    qtest_memwrite(x.qts, X_DATA, echo, sizeof(echo));
    ep0_put(&x, setup_packet(0x40, DEXTLAB_USB_REQ_ECHO, 0, 0, 16), 8,
            (TRB_SETUP << 10) | TRB_IDT | (2u << 16));
    ep0_put(&x, X_DATA, 4, TRB_DATA << 10);
    ep0_put(&x, 0, 0, (TRB_STATUS << 10) | TRB_DIR_IN | TRB_IOC);
    g_assert_cmpuint(ep0_run(&x), ==, CC_STALL);
    mini_ep0_recover(&x);

    /* the device still works, and the refused ECHO stored nothing */
    mini_read_id(&x);
    qtest_memset(x.qts, X_DATA, 0, 16);
    ep0_put(&x, setup_packet(0xc0, DEXTLAB_USB_REQ_ECHO, 0, 0, 16), 8,
            (TRB_SETUP << 10) | TRB_IDT | (3u << 16));
    ep0_put(&x, X_DATA, 16, (TRB_DATA << 10) | TRB_DIR_IN);
    ep0_put(&x, 0, 0, (TRB_STATUS << 10) | TRB_IOC);
    g_assert_cmpuint(ep0_run(&x), ==, CC_SUCCESS);
    qtest_memread(x.qts, X_DATA, echo, sizeof(echo));
    g_assert_cmphex(echo[0], ==, 0);

    qpci_free_pc(x.bus);
    g_free(x.dev);
    qtest_quit(x.qts);
}

/* A request without data stage (SETUP, STATUS IN); its completion code */
static unsigned mini_control_nodata(MiniXhci *x, uint8_t rt, uint8_t req,
                                    uint16_t val, uint16_t idx)
{
    ep0_put(x, setup_packet(rt, req, val, idx, 0), 8,
            (TRB_SETUP << 10) | TRB_IDT);
    ep0_put(x, 0, 0, (TRB_STATUS << 10) | TRB_DIR_IN | TRB_IOC);
    return ep0_run(x);
}

/*
 * Regression (found by dextlab-usb-fuzz on the UBSan fork, fixed by
 * hw/patches/0004-xhci-endpoint-interval-range.patch): qemu-xhci computed
 * 1 << Interval from the endpoint context's 8-bit Interval field, valid
 * 0-15; 41 shifted an int by more than its width (undefined behaviour,
 * a UBSan abort).  Now it is taken as 15 (2^15 x 125 us = 4.096 s) and
 * the interrupt endpoint works at that interval.  The UB itself only
 * shows on the sanitizer fork (suite fuzz runs this path there too).
 */
static void test_endpoint_interval_out_of_range(void)
{
    MiniXhci x;
    uint32_t ctx[8], status = 0, ctl = 0;
    uint8_t rec[DEXTLAB_USB_EVENT_SIZE];
    bool done = false;

    mini_xhci_start(&x, "-device dextlab-usb,bus=xhci.0,id=u,"
                        "superspeed=off");
    g_assert_cmpuint(mini_control_nodata(&x, 0x00, 9 /* SET_CONFIGURATION */,
                                         DEXTLAB_USB_CONFIG_VALUE, 0), ==,
                     CC_SUCCESS);

    /* Configure Endpoint: interrupt IN 0x82 (DCI 5), Interval 41 */
    qtest_memset(x.qts, X_INCTX, 0, 33 * x.ctx_size);
    qtest_memset(x.qts, X_INTRRING, 0, 4096);
    memset(ctx, 0, sizeof(ctx));
    ctx[1] = cpu_to_le32((1u << 0) | (1u << 5));
    qtest_memwrite(x.qts, X_INCTX, ctx, sizeof(ctx));
    memset(ctx, 0, sizeof(ctx));
    ctx[0] = cpu_to_le32((x.speed << 20) | (5u << 27));
    ctx[1] = cpu_to_le32(x.port << 16);
    qtest_memwrite(x.qts, X_INCTX + x.ctx_size, ctx, sizeof(ctx));
    memset(ctx, 0, sizeof(ctx));
    ctx[0] = cpu_to_le32(41u << 16);
    ctx[1] = cpu_to_le32((3u << 1) | (7u << 3) |
                         (DEXTLAB_USB_INTR_MPS(0) << 16));
    ctx[2] = cpu_to_le32(X_INTRRING | 1);
    ctx[4] = cpu_to_le32(DEXTLAB_USB_INTR_MPS(0) |
                         (DEXTLAB_USB_INTR_MPS(0) << 16));
    qtest_memwrite(x.qts, X_INCTX + (1 + 5) * x.ctx_size, ctx, sizeof(ctx));
    g_assert_cmpuint(xhci_command(&x, X_INCTX, (12u << 10) | (x.slot << 24),
                                  NULL), ==, CC_SUCCESS);

    /* one event record, then an interrupt IN transfer collects it */
    g_assert_cmpuint(mini_control_nodata(&x, 0x40,
                                         DEXTLAB_USB_REQ_TRIGGER_EVENTS, 1,
                                         0x1234), ==, CC_SUCCESS);
    qtest_memset(x.qts, X_DATA + 0x100, 0, sizeof(rec));
    trb_write(&x, X_INTRRING, X_DATA + 0x100, sizeof(rec),
              (1u << 10) | TRB_IOC | TRB_C);
    qpci_io_writel(x.dev, x.bar, x.db + 4 * x.slot, 5);
    for (int i = 0; i < 100 && !done; i++) {
        uint32_t t[4];

        qtest_clock_step(x.qts, 100 * 1000 * 1000);
        qtest_memread(x.qts, X_EVRING + 16 * x.ev_deq, t, sizeof(t));
        done = (le32_to_cpu(t[3]) & TRB_C) == x.ev_ccs;
    }
    g_assert_true(done);
    ctl = xhci_wait_event(&x, EV_TRANSFER, &status);
    g_assert_cmpuint(status >> 24, ==, CC_SUCCESS);
    g_assert_cmpuint((ctl >> 16) & 0x1f, ==, 5);
    qtest_memread(x.qts, X_DATA + 0x100, rec, sizeof(rec));
    g_assert_cmpuint(rec[0], ==, DEXTLAB_USB_EVT_SOFT);
    g_assert_cmphex(ldl_le_p(rec + 8), ==, 0x1234u << 16);

    mini_read_id(&x);
    qpci_free_pc(x.bus);
    g_free(x.dev);
    qtest_quit(x.qts);
}

/*
 * Regression (found by dextlab-usb-fuzz, fixed by
 * hw/patches/0005-xhci-streams-config-mismatch-no-abort.patch): a
 * Configure Endpoint adding two endpoints with different MaxPStreams made
 * qemu-xhci's xhci_alloc_device_streams() abort() (FIXME "guest streams
 * config not identical for all eps").  Now the command fails with
 * Resource Error and the device keeps answering.
 */
static void test_streams_config_mismatch(void)
{
    MiniXhci x;
    uint32_t ctx[8];

    mini_xhci_start(&x, "-device dextlab-usb,bus=xhci.0,id=u,"
                        "superspeed=off");
    g_assert_cmpuint(mini_control_nodata(&x, 0x00, 9 /* SET_CONFIGURATION */,
                                         DEXTLAB_USB_CONFIG_VALUE, 0), ==,
                     CC_SUCCESS);

    /* bulk OUT 0x01 (DCI 2) with 4 streams, bulk IN 0x81 (DCI 3) with 8;
     * their stream context arrays (zeroed) at X_INTRRING */
    qtest_memset(x.qts, X_INCTX, 0, 33 * x.ctx_size);
    qtest_memset(x.qts, X_INTRRING, 0, 4096);
    memset(ctx, 0, sizeof(ctx));
    ctx[1] = cpu_to_le32((1u << 0) | (1u << 2) | (1u << 3));
    qtest_memwrite(x.qts, X_INCTX, ctx, sizeof(ctx));
    memset(ctx, 0, sizeof(ctx));
    ctx[0] = cpu_to_le32((x.speed << 20) | (3u << 27));
    ctx[1] = cpu_to_le32(x.port << 16);
    qtest_memwrite(x.qts, X_INCTX + x.ctx_size, ctx, sizeof(ctx));
    for (unsigned dci = 2; dci <= 3; dci++) {
        memset(ctx, 0, sizeof(ctx));
        ctx[0] = cpu_to_le32((dci - 1) << 10 | (1u << 15));    /* LSA */
        ctx[1] = cpu_to_le32((3u << 1) | ((dci == 2 ? 2u : 6u) << 3) |
                             (DEXTLAB_USB_BULK_MPS_HS(0) << 16));
        ctx[2] = cpu_to_le32(X_INTRRING + 1024 * (dci - 2));
        ctx[4] = cpu_to_le32(3072);
        qtest_memwrite(x.qts, X_INCTX + (1 + dci) * x.ctx_size, ctx,
                       sizeof(ctx));
    }
    g_assert_cmpuint(xhci_command(&x, X_INCTX, (12u << 10) | (x.slot << 24),
                                  NULL), ==, 7 /* Resource Error */);
    mini_read_id(&x);
    qpci_free_pc(x.bus);
    g_free(x.dev);
    qtest_quit(x.qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/dextlab-usb/attach/speeds", test_attach_speeds);
    qtest_add_func("/dextlab-usb/properties/fifo-size",
                   test_fifo_size_property);
    qtest_add_func("/dextlab-usb/hotplug/cycles", test_hotplug_cycles);
    qtest_add_func("/dextlab-usb/migration/stream", test_migration_stream);
    qtest_add_func("/dextlab-usb/xhci/control-short-data-stage",
                   test_control_short_data_stage);
    qtest_add_func("/dextlab-usb/xhci/endpoint-interval-out-of-range",
                   test_endpoint_interval_out_of_range);
    qtest_add_func("/dextlab-usb/xhci/streams-config-mismatch",
                   test_streams_config_mismatch);
    return g_test_run();
}
