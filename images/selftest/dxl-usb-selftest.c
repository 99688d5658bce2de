/*
 * dxl-usb-selftest: drive every dextlab-usb device in the guest through
 * usbfs (the guest kernel's xhci driver owns the controller) and print
 * "DEXTLAB-RESULT name=usb-<speed>-<check> status=pass|fail ..." lines, where
 * <speed> is fs, hs or ss from the link speed the kernel reports.
 *
 *   dxl-usb-selftest --ids    print DXL_USB_VID=.... DXL_USB_PID=.... (sysfs
 *                             spelling), from the register-map header
 *   dxl-usb-selftest          run the checks on each device found
 *
 * Checks: vendor requests (ID/VERSION/SPEED registers, SCRATCH, ECHO), bulk
 * loopback with message boundaries, interrupt events from TRIGGER_EVENTS,
 * alternate setting 1.  Every wait is bounded.  Exit 0 iff all passed.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hw/dextlab/dextlab-usb-regs.h"
#include "usbfs.h"

#define T_MS        3000
#define REQ_OUT     0x40    /* vendor, device, host-to-device */
#define REQ_IN      0xc0

static int nfail;
static char tag[8];

static void result(const char *check, bool ok, const char *fmt, ...)
{
    va_list ap;

    printf("DEXTLAB-RESULT name=usb-%s-%s status=%s", tag, check,
           ok ? "pass" : "fail");
    if (fmt && *fmt) {
        putchar(' ');
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
    }
    putchar('\n');
    fflush(stdout);
    nfail += !ok;
}

static int reg_read(struct dxl_usb *u, unsigned reg, uint32_t *val)
{
    uint8_t b[4];
    int n = dxl_usb_control(u, REQ_IN, DEXTLAB_USB_REQ_READ_REG, 0, reg, b, 4,
                            T_MS);

    if (n < 0) {
        return n;
    }
    if (n != 4) {
        return -EIO;
    }
    *val = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
    return 0;
}

static int reg_write(struct dxl_usb *u, unsigned reg, uint32_t val)
{
    uint8_t b[4] = { val, val >> 8, val >> 16, val >> 24 };
    int n = dxl_usb_control(u, REQ_OUT, DEXTLAB_USB_REQ_WRITE_REG, 0, reg, b,
                            4, T_MS);

    return n < 0 ? n : 0;
}

static void fill(uint8_t *p, unsigned len, unsigned seed)
{
    unsigned i;

    for (i = 0; i < len; i++) {
        seed = seed * 1103515245 + 12345;
        p[i] = seed >> 23;
    }
}

static void check_regs(struct dxl_usb *u, int want_speed)
{
    uint32_t id = 0, ver = 0, speed = 0, scratch = 0;
    int r1 = reg_read(u, DEXTLAB_USB_REG_ID, &id);
    int r2 = reg_read(u, DEXTLAB_USB_REG_VERSION, &ver);
    int r3 = reg_read(u, DEXTLAB_USB_REG_SPEED, &speed);
    int r4 = reg_write(u, DEXTLAB_USB_REG_SCRATCH, 0xa5c3e10f);
    int r5 = reg_read(u, DEXTLAB_USB_REG_SCRATCH, &scratch);

    result("regs", !r1 && !r2 && !r3 && !r4 && !r5 &&
           id == DEXTLAB_USB_ID_VALUE && ver == DEXTLAB_USB_VERSION_VALUE &&
           (int)speed == want_speed && scratch == 0xa5c3e10f,
           "id=0x%08x version=0x%08x speed_reg=%u want_speed=%d "
           "scratch=0x%08x errno=%d", id, ver, speed, want_speed, scratch,
           -(r1 ? r1 : r2 ? r2 : r3 ? r3 : r4 ? r4 : r5));
}

static void check_echo(struct dxl_usb *u)
{
    uint8_t out[100], in[DEXTLAB_USB_ECHO_MAX];
    int w, r;

    fill(out, sizeof(out), 11);
    memset(in, 0, sizeof(in));
    w = dxl_usb_control(u, REQ_OUT, DEXTLAB_USB_REQ_ECHO, 0, 0, out,
                        sizeof(out), T_MS);
    r = dxl_usb_control(u, REQ_IN, DEXTLAB_USB_REQ_ECHO, 0, 0, in, sizeof(in),
                        T_MS);
    result("echo", w == (int)sizeof(out) && r == (int)sizeof(out) &&
           !memcmp(in, out, sizeof(out)), "out=%d in=%d", w, r);
}

/* Each OUT transfer loops back as one IN transfer of the same bytes. */
static void check_bulk(struct dxl_usb *u, const char *name,
                       const unsigned *sizes, unsigned n)
{
    static uint8_t out[DEXTLAB_USB_FIFO_DEFAULT], in[DEXTLAB_USB_FIFO_DEFAULT];
    unsigned i, good = 0;
    int w = 0, r = 0;
    uint32_t level = 1;

    for (i = 0; i < n; i++) {
        fill(out, sizes[i], i + 1);
        memset(in, 0, sizes[i]);
        w = dxl_usb_bulk(u, DEXTLAB_USB_EP_BULK_OUT, out, sizes[i], T_MS);
        /* ask for more than was sent: the message boundary ends it short */
        r = dxl_usb_bulk(u, DEXTLAB_USB_EP_BULK_IN, in, sizeof(in), T_MS);
        if (w != (int)sizes[i] || r != (int)sizes[i] ||
            memcmp(in, out, sizes[i])) {
            break;
        }
        good++;
    }
    reg_read(u, DEXTLAB_USB_REG_FIFO_LEVEL, &level);
    result(name, good == n && level == 0, "ok=%u/%u last_out=%d last_in=%d "
           "fifo_level=%u", good, n, w, r, level);
}

static void check_events(struct dxl_usb *u)
{
    enum { N = 3, TAG = 0x77 };
    DextlabUsbEvent ev[N];
    uint32_t seq0 = 0;
    unsigned i, good = 0;
    int t, r = 0;

    memset(ev, 0, sizeof(ev));
    t = dxl_usb_control(u, REQ_OUT, DEXTLAB_USB_REQ_TRIGGER_EVENTS, N, TAG,
                        NULL, 0, T_MS);
    for (i = 0; i < N && t >= 0; i++) {
        r = dxl_usb_interrupt(u, DEXTLAB_USB_EP_INTR_IN, &ev[i],
                              DEXTLAB_USB_EVENT_SIZE, T_MS);
        if (r != DEXTLAB_USB_EVENT_SIZE) {
            break;
        }
        if (i == 0) {
            seq0 = ev[0].seq;
        }
        good += ev[i].type == DEXTLAB_USB_EVT_SOFT &&
                ev[i].value == ((uint32_t)TAG << 16 | i) &&
                ev[i].seq == seq0 + i;
    }
    result("events", t >= 0 && good == N, "ok=%u/%u last_len=%d type=%u "
           "value=0x%08x", good, N, r, ev[0].type, ev[0].value);
}

static void check_alt(struct dxl_usb *u)
{
    static const unsigned sizes[] = { 1, 100, 4096 };
    uint32_t alt = 99;
    int r = dxl_usb_set_alt(u, DEXTLAB_USB_IFACE_NUM, 1);

    reg_read(u, DEXTLAB_USB_REG_ALTSETTING, &alt);
    result("altsetting", r == 0 && alt == 1, "errno=%d alt_reg=%u", -r, alt);
    if (r == 0) {
        check_bulk(u, "bulk-alt1", sizes, 3);
        dxl_usb_set_alt(u, DEXTLAB_USB_IFACE_NUM, 0);
    }
}

static int speed_code(int mbps)
{
    return mbps >= 5000 ? DEXTLAB_USB_SPEED_SUPER :
           mbps >= 480 ? DEXTLAB_USB_SPEED_HIGH : DEXTLAB_USB_SPEED_FULL;
}

int main(int argc, char **argv)
{
    static const unsigned sizes[] = { 1, 64, 511, 512, 1024, 4096, 65536 };
    char name[64];
    unsigned idx;
    int ret;

    if (argc > 1 && !strcmp(argv[1], "--ids")) {
        printf("DXL_USB_VID=%04x\nDXL_USB_PID=%04x\n", DEXTLAB_USB_VID,
               DEXTLAB_USB_PID);
        return 0;
    }
    for (idx = 0; dxl_usb_find(DEXTLAB_USB_VID, DEXTLAB_USB_PID, idx, name,
                               sizeof(name)) == 0; idx++) {
        struct dxl_usb *u = NULL;
        int speed;

        snprintf(tag, sizeof(tag), "dev%u", idx);
        ret = dxl_usb_open(name, &u);
        if (ret < 0) {
            result("open", false, "sysfs=%s errno=%d", name, -ret);
            continue;
        }
        speed = dxl_usb_speed(u);
        snprintf(tag, sizeof(tag), "%s", speed >= 5000 ? "ss" :
                 speed >= 480 ? "hs" : "fs");
        ret = dxl_usb_claim(u, DEXTLAB_USB_IFACE_NUM);
        result("claim", ret == 0, "sysfs=%s speed=%d errno=%d", name, speed,
               -ret);
        if (ret == 0) {
            check_regs(u, speed_code(speed));
            check_echo(u);
            check_bulk(u, "bulk", sizes, sizeof(sizes) / sizeof(sizes[0]));
            check_events(u);
            check_alt(u);
        }
        dxl_usb_close(u);
    }
    snprintf(tag, sizeof(tag), "all");
    result("devices", idx > 0, "count=%u", idx);
    return nfail ? 1 : 0;
}
