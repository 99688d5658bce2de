/*
 * dxl-usbfs-test: the USB family API (harness/usb/usb.h) on its usbfs
 * implementation (usb-usbfs.c), inside the boot-test guest, against every
 * dextlab-usb device the guest kernel enumerated.  The same API the USB
 * provider serves client drivers from.  Prints
 *   DEXTLAB-RESULT name=usbfs-<tag>-<check> status=pass|fail key=value...
 * with <tag> hs or ss (link speed) or "all"; exit 0 iff all passed.
 *
 *   dxl-usbfs-test [test|bench]   (/init passes the boot mode; bench moves
 *                                  more data in the throughput check)
 *
 * Checks per device: descriptors against the register map (and the raw
 * configuration against GET_DESCRIPTOR), match keys, control requests and
 * protocol stalls, bulk loopback 0 B .. 64 KiB as single transfers and
 * 100 KB .. 1 MiB as split transfers (every byte verified; short and
 * zero-length packets end transfers), interrupt events in order, endpoint
 * stall and clear, abort and timeout, -EDEADLK from a completion, the
 * buffer's memfd, alternate setting 1, bulk throughput beside memcpy,
 * hot-unplug / replug by unbinding and binding the root hub's hub driver,
 * and dext_usb_device_reset_port.  Every wait is bounded.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <glib.h>

#include "hw/dextlab/dextlab-usb-regs.h"
#include "usb.h"

#define T_MS        10000   /* TCG guests are slow: generous bounds */
#define REQ_OUT     0x40    /* vendor, device, host-to-device */
#define REQ_IN      0xc0
#define BUF_SIZE    (2u << 20)

static int nfail;
static char tag[8] = "all";
static bool bench_mode;

static void result(const char *check, bool ok, const char *fmt, ...)
{
    va_list ap;

    printf("DEXTLAB-RESULT name=usbfs-%s-%s status=%s", tag, check,
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

/* ------------------------------------------------------- host events */

typedef struct Events {
    GMutex lock;
    GCond cond;
    unsigned attached, detached;
    DextUsbDevice *last_attached;       /* referenced */
    DextUsbDevice *last_detached;       /* referenced */
    bool io_done_at_detach;             /* Pending.done when detached */
    struct Pending *watch;
} Events;

static Events ev;

/* an async IO's outcome */
typedef struct Pending {
    GMutex lock;
    GCond cond;
    unsigned done;
    int status;
    uint32_t actual;
    uint64_t ts;
} Pending;

static void pending_init(Pending *p)
{
    memset(p, 0, sizeof(*p));
    g_mutex_init(&p->lock);
    g_cond_init(&p->cond);
}

static void pending_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    Pending *p = opaque;

    g_mutex_lock(&p->lock);
    p->done++;
    p->status = status;
    p->actual = actual;
    p->ts = ts;
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
}

static bool pending_wait(Pending *p, unsigned n, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000ll;
    bool ok;

    g_mutex_lock(&p->lock);
    while (p->done < n && g_cond_wait_until(&p->cond, &p->lock, end)) {
    }
    ok = p->done >= n;
    g_mutex_unlock(&p->lock);
    return ok;
}

static unsigned pending_done(Pending *p)
{
    unsigned n;

    g_mutex_lock(&p->lock);
    n = p->done;
    g_mutex_unlock(&p->lock);
    return n;
}

static void device_fn(void *opaque, DextUsbDevice *d, bool attached)
{
    g_mutex_lock(&ev.lock);
    if (attached) {
        ev.attached++;
        if (ev.last_attached) {
            dext_usb_device_unref(ev.last_attached);
        }
        ev.last_attached = dext_usb_device_ref(d);
    } else {
        ev.detached++;
        if (ev.last_detached) {
            dext_usb_device_unref(ev.last_detached);
        }
        ev.last_detached = dext_usb_device_ref(d);
        /* usb.h: a detached device's IO has completed already */
        ev.io_done_at_detach = ev.watch && pending_done(ev.watch) > 0;
    }
    g_cond_broadcast(&ev.cond);
    g_mutex_unlock(&ev.lock);
}

/* ------------------------------------------------------------ device */

typedef struct Dev {
    DextUsbHost *h;
    DextUsbDevice *d;
    DextUsbInterface *i;
    DextUsbPipe *out, *in, *intr;
    DextUsbBuffer *ob, *ib;
    bool ss;
    uint8_t alt;
} Dev;

static int reg_read(Dev *v, unsigned reg, uint32_t *val)
{
    uint8_t b[4];
    uint32_t got = 0;
    int r = dext_usb_device_control(v->d, REQ_IN, DEXTLAB_USB_REQ_READ_REG, 0,
                                    reg, b, 4, &got, T_MS);

    if (r < 0) {
        return r;
    }
    if (got != 4) {
        return -EIO;
    }
    *val = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
    return 0;
}

static int reg_write(Dev *v, unsigned reg, uint32_t val)
{
    uint8_t b[4] = { val, val >> 8, val >> 16, val >> 24 };

    return dext_usb_device_control(v->d, REQ_OUT, DEXTLAB_USB_REQ_WRITE_REG, 0,
                                   reg, b, 4, NULL, T_MS);
}

static int vendor_out(Dev *v, uint8_t req, uint16_t val, uint16_t idx)
{
    return dext_usb_device_control(v->d, REQ_OUT, req, val, idx, NULL, 0, NULL,
                                   T_MS);
}

static void fill(uint8_t *p, size_t len, unsigned seed)
{
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245 + 12345;
        p[i] = seed >> 23;
    }
}

static int get_pipes(Dev *v)
{
    int r;

    if ((r = dext_usb_interface_copy_pipe(v->i, DEXTLAB_USB_EP_BULK_OUT,
                                          &v->out)) < 0 ||
        (r = dext_usb_interface_copy_pipe(v->i, DEXTLAB_USB_EP_BULK_IN,
                                          &v->in)) < 0 ||
        (r = dext_usb_interface_copy_pipe(v->i, DEXTLAB_USB_EP_INTR_IN,
                                          &v->intr)) < 0) {
        return r;
    }
    return 0;
}

/*
 * One loopback: IN posted first (asking @ask bytes), then OUT of @len;
 * the IN must end with exactly @len bytes, equal to what went out.
 */
static bool loop_once(Dev *v, uint32_t len, uint32_t ask, unsigned seed,
                      char *why, size_t wlen)
{
    uint8_t *o = dext_usb_buffer_data(v->ob), *i = dext_usb_buffer_data(v->ib);
    Pending in, out;
    bool ok;
    int r;

    pending_init(&in);
    pending_init(&out);
    fill(o, len, seed);
    memset(i, 0xa5, MIN(ask + 1, BUF_SIZE));
    r = dext_usb_pipe_async_io(v->in, v->ib, 0, ask, pending_cb, &in);
    if (r < 0) {
        snprintf(why, wlen, "len=%u in_submit=%d", len, r);
        return false;
    }
    r = dext_usb_pipe_async_io(v->out, v->ob, 0, len, pending_cb, &out);
    if (r < 0) {
        dext_usb_pipe_abort(v->in);
        snprintf(why, wlen, "len=%u out_submit=%d", len, r);
        return false;
    }
    ok = pending_wait(&out, 1, T_MS) && pending_wait(&in, 1, T_MS);
    if (!ok) {
        dext_usb_pipe_abort(v->out);
        dext_usb_pipe_abort(v->in);
        snprintf(why, wlen, "len=%u timed_out=1 out_done=%u in_done=%u", len,
                 out.done, in.done);
        return false;
    }
    ok = out.status == 0 && out.actual == len && in.status == 0 &&
         in.actual == len && memcmp(o, i, len) == 0 &&
         (ask == len || i[len] == 0xa5);
    if (!ok) {
        snprintf(why, wlen, "len=%u ask=%u out=%d/%u in=%d/%u data=%s", len,
                 ask, out.status, out.actual, in.status, in.actual,
                 memcmp(o, i, MIN(len, in.actual)) ? "differs" : "same");
    }
    return ok;
}

static void check_descriptors(Dev *v)
{
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(v->d);
    const DextUsbConfigDesc *c = dext_usb_device_config(v->d);
    const uint8_t *raw;
    size_t raw_len = 0;
    uint8_t ctl[4096], bos[5];
    uint32_t got = 0, bos_got = 0;
    char mfr[64] = "", prod[64] = "";
    unsigned bad_alts = 0, bad_eps = 0;
    int r_raw, r_bos, r_m, r_p;
    bool ok;

    raw = dext_usb_device_config_raw(v->d, &raw_len);
    r_raw = dext_usb_device_get_descriptor(v->d, 2, 0, ctl, sizeof(ctl), &got);
    r_bos = dext_usb_device_get_descriptor(v->d, 0x0f, 0, bos, 5, &bos_got);
    r_m = dext_usb_device_string(v->d, dd->iManufacturer, mfr, sizeof(mfr));
    r_p = dext_usb_device_string(v->d, dd->iProduct, prod, sizeof(prod));
    for (unsigned k = 0; k < c->n_alts; k++) {
        const DextUsbInterfaceDesc *a = &c->alts[k];
        unsigned alt = a->bAlternateSetting;

        bad_alts += a->bInterfaceNumber != DEXTLAB_USB_IFACE_NUM ||
                    alt >= DEXTLAB_USB_NUM_ALTS ||
                    a->bInterfaceClass != DEXTLAB_USB_IFACE_CLASS ||
                    a->bInterfaceSubClass != DEXTLAB_USB_IFACE_SUBCLASS ||
                    a->bInterfaceProtocol != DEXTLAB_USB_IFACE_PROTOCOL ||
                    a->n_endpoints != DEXTLAB_USB_NUM_EPS;
        for (unsigned e = 0; e < a->n_endpoints; e++) {
            const DextUsbEndpointDesc *ep = &a->endpoints[e];

            if (ep->bEndpointAddress == DEXTLAB_USB_EP_INTR_IN) {
                bad_eps += (ep->bmAttributes & 3) != 3 ||
                           ep->wMaxPacketSize != DEXTLAB_USB_INTR_MPS(alt) ||
                           ep->bInterval != (v->ss ? DEXTLAB_USB_INTR_INTERVAL_SS
                                                   : DEXTLAB_USB_INTR_INTERVAL_HS);
            } else if (ep->bEndpointAddress == DEXTLAB_USB_EP_BULK_IN ||
                       ep->bEndpointAddress == DEXTLAB_USB_EP_BULK_OUT) {
                bad_eps += (ep->bmAttributes & 3) != 2 ||
                           ep->wMaxPacketSize !=
                           (v->ss ? DEXTLAB_USB_BULK_MPS_SS(alt)
                                  : DEXTLAB_USB_BULK_MPS_HS(alt)) ||
                           ep->has_companion != v->ss ||
                           (v->ss && ep->bMaxBurst !=
                            DEXTLAB_USB_BULK_BURST_SS(alt));
            } else {
                bad_eps++;
            }
        }
    }
    ok = dd->idVendor == DEXTLAB_USB_VID && dd->idProduct == DEXTLAB_USB_PID &&
         dd->bcdDevice == DEXTLAB_USB_BCD_DEVICE &&
         dd->bcdUSB == (v->ss ? DEXTLAB_USB_BCD_USB_SS
                              : DEXTLAB_USB_BCD_USB_HS) &&
         dd->bMaxPacketSize0 == (v->ss ? DEXTLAB_USB_EP0_MPS_SS_EXP
                                       : DEXTLAB_USB_EP0_MPS_HS) &&
         dd->bNumConfigurations == 1 &&
         c->bConfigurationValue == DEXTLAB_USB_CONFIG_VALUE &&
         c->bmAttributes == DEXTLAB_USB_CONFIG_ATTR &&
         c->bMaxPower == DEXTLAB_USB_CONFIG_MAXPOWER &&
         c->bNumInterfaces == 1 && c->n_alts == DEXTLAB_USB_NUM_ALTS &&
         !bad_alts && !bad_eps &&
         r_raw == 0 && raw && got == raw_len && !memcmp(raw, ctl, got) &&
         r_m > 0 && !strcmp(mfr, DEXTLAB_USB_MANUFACTURER) &&
         r_p > 0 && !strcmp(prod, DEXTLAB_USB_PRODUCT) &&
         r_bos == 0 && bos_got == 5 && bos[1] == 0x0f &&
         (v->ss ? bos[4] == DEXTLAB_USB_BOS_NUM_CAPS : bos[4] >= 1) &&
         dext_usb_device_speed(v->d) ==
         (v->ss ? DEXT_USB_SPEED_SUPER : DEXT_USB_SPEED_HIGH);
    /* values carry no spaces (the host splits key=value pairs on them) */
    g_strdelimit(mfr, " ", '_');
    g_strdelimit(prod, " ", '_');
    result("descriptors", ok, "vid=%04x pid=%04x bcd_usb=%04x mps0=%u "
           "alts=%u bad_alts=%u bad_eps=%u raw_len=%zu ctl=%d/%u "
           "raw_equal=%d bos=%d/%u caps=%u manufacturer=%s product=%s "
           "port=0x%x", dd->idVendor, dd->idProduct,
           dd->bcdUSB, dd->bMaxPacketSize0, c->n_alts, bad_alts, bad_eps,
           raw_len, r_raw, got, raw && got == raw_len &&
           !memcmp(raw, ctl, got), r_bos, bos_got, bos[4], mfr, prod,
           dext_usb_device_port(v->d));
}

static void check_match_keys(Dev *v)
{
    DextUsbMatchKeys dk, ik;

    dext_usb_device_match_keys(v->d, &dk);
    dext_usb_interface_match_keys(v->i, &ik);
    result("match-keys", !dk.is_interface && dk.idVendor == DEXTLAB_USB_VID &&
           dk.idProduct == DEXTLAB_USB_PID &&
           dk.bcdDevice == DEXTLAB_USB_BCD_DEVICE &&
           dk.bConfigurationValue == DEXTLAB_USB_CONFIG_VALUE &&
           ik.is_interface && ik.idVendor == DEXTLAB_USB_VID &&
           ik.bInterfaceNumber == DEXTLAB_USB_IFACE_NUM &&
           ik.bInterfaceClass == DEXTLAB_USB_IFACE_CLASS &&
           ik.bInterfaceSubClass == DEXTLAB_USB_IFACE_SUBCLASS &&
           ik.bInterfaceProtocol == DEXTLAB_USB_IFACE_PROTOCOL,
           "device=%04x:%04x/%04x cfg=%u iface=%u class=%02x/%02x/%02x",
           dk.idVendor, dk.idProduct, dk.bcdDevice, dk.bConfigurationValue,
           ik.bInterfaceNumber, ik.bInterfaceClass, ik.bInterfaceSubClass,
           ik.bInterfaceProtocol);
}

static void check_control(Dev *v)
{
    uint32_t id = 0, ver = 0, speed = 0, scratch = 0, after = 0;
    uint8_t out[100], in[DEXTLAB_USB_ECHO_MAX];
    uint32_t wgot = 0, rgot = 0;
    int r1 = reg_read(v, DEXTLAB_USB_REG_ID, &id);
    int r2 = reg_read(v, DEXTLAB_USB_REG_VERSION, &ver);
    int r3 = reg_read(v, DEXTLAB_USB_REG_SPEED, &speed);
    int r4 = reg_write(v, DEXTLAB_USB_REG_SCRATCH, 0x5a3c0ff1);
    int r5 = reg_read(v, DEXTLAB_USB_REG_SCRATCH, &scratch);
    int w, r, s1, s2, s3, s4;

    fill(out, sizeof(out), 7);
    w = dext_usb_device_control(v->d, REQ_OUT, DEXTLAB_USB_REQ_ECHO, 0, 0, out,
                                sizeof(out), &wgot, T_MS);
    r = dext_usb_device_control(v->d, REQ_IN, DEXTLAB_USB_REQ_ECHO, 0, 0, in,
                                sizeof(in), &rgot, T_MS);
    result("control", !r1 && !r2 && !r3 && !r4 && !r5 && !w && !r &&
           id == DEXTLAB_USB_ID_VALUE && ver == DEXTLAB_USB_VERSION_VALUE &&
           speed == (v->ss ? DEXTLAB_USB_SPEED_SUPER : DEXTLAB_USB_SPEED_HIGH) &&
           scratch == 0x5a3c0ff1 && wgot == sizeof(out) &&
           rgot == sizeof(out) && !memcmp(in, out, sizeof(out)),
           "id=0x%08x version=0x%08x speed_reg=%u scratch=0x%08x echo=%d/%u,"
           "%d/%u errno=%d", id, ver, speed, scratch, w, wgot, r, rgot,
           -(r1 ? r1 : r2 ? r2 : r3 ? r3 : r4 ? r4 : r5));

    /* protocol stalls (unknown register, FORCE_STALL 0) end in -EPIPE and
     * the default pipe works right after */
    s1 = reg_read(v, DEXTLAB_USB_NUM_REGS, &after);
    s2 = reg_read(v, DEXTLAB_USB_REG_ID, &after);
    s3 = vendor_out(v, DEXTLAB_USB_REQ_FORCE_STALL, 0, 0);
    s4 = dext_usb_device_control(v->d, 0xc0, 0x7f, 0, 0, in, 8, NULL, T_MS);
    id = 0;
    r1 = reg_read(v, DEXTLAB_USB_REG_ID, &id);
    result("control-stall", s1 == -EPIPE && s2 == 0 && s3 == -EPIPE &&
           s4 == -EPIPE && r1 == 0 && id == DEXTLAB_USB_ID_VALUE,
           "unknown_reg=%d next=%d force_stall0=%d unknown_req=%d after=%d",
           s1, s2, s3, s4, r1);
}

static void check_bulk(Dev *v)
{
    static const uint32_t sizes[] = {
        0, 1, 2, 511, 512, 513, 1023, 1024, 1025, 4096, 65535, 65536,
    };
    char why[160] = "";
    unsigned good = 0, k;
    uint32_t level = 1;

    for (k = 0; k < G_N_ELEMENTS(sizes); k++) {
        if (!loop_once(v, sizes[k], sizes[k] + 1024, k + 1, why,
                       sizeof(why))) {
            break;
        }
        good++;
    }
    reg_read(v, DEXTLAB_USB_REG_FIFO_LEVEL, &level);
    result("bulk", good == G_N_ELEMENTS(sizes) && level == 0,
           "ok=%u/%u fifo_level=%u %s", good, (unsigned)G_N_ELEMENTS(sizes),
           level, why);
}

/*
 * Transfers larger than one URB (set_urb_max 64 KiB: the device's FIFO
 * size, so each part is a message it takes whole): a short packet in the
 * first part ends a 4-part IN, its cancelled parts take no later message;
 * a ZLP ends one too; 100 KB .. 1 MiB loop back as single transfers.
 */
static void check_split(Dev *v)
{
    static const uint32_t sizes[] = { 100000, 262144, 524287, 1048576 };
    uint8_t *o = dext_usb_buffer_data(v->ob), *i = dext_usb_buffer_data(v->ib);
    uint32_t max = dext_usb_host_usbfs_set_urb_max(v->h, 64 * 1024);
    char why[160] = "";
    Pending in;
    unsigned good = 0, k;
    uint32_t level = 1;
    bool short_ok = false, zlp_ok = false, next_ok = false;

    /* 100 B out, 200 KiB (4 URBs) in: ends at 100 */
    pending_init(&in);
    fill(o, 100, 99);
    if (dext_usb_pipe_async_io(v->in, v->ib, 0, 200 * 1024, pending_cb,
                               &in) == 0 &&
        dext_usb_pipe_io(v->out, v->ob, 0, 100, NULL, T_MS) == 0 &&
        pending_wait(&in, 1, T_MS)) {
        short_ok = in.status == 0 && in.actual == 100 && !memcmp(o, i, 100);
    } else {
        dext_usb_pipe_abort(v->in);
    }
    /* the next message is whole: no cancelled part swallowed it */
    next_ok = loop_once(v, 3000, 3000, 1234, why, sizeof(why));
    /* a zero-length packet ends a split transfer at 0 */
    pending_init(&in);
    if (dext_usb_pipe_async_io(v->in, v->ib, 0, 200 * 1024, pending_cb,
                               &in) == 0 &&
        dext_usb_pipe_io(v->out, v->ob, 0, 0, NULL, T_MS) == 0 &&
        pending_wait(&in, 1, T_MS)) {
        zlp_ok = in.status == 0 && in.actual == 0;
    } else {
        dext_usb_pipe_abort(v->in);
    }
    result("bulk-split-short", max == 64 * 1024 && short_ok && next_ok &&
           zlp_ok, "urb_max=%u short=%d next=%d zlp=%d %s", max, short_ok,
           next_ok, zlp_ok, next_ok ? "" : why);

    why[0] = 0;
    for (k = 0; k < G_N_ELEMENTS(sizes); k++) {
        /* a message ending on a part boundary leaves the next part
         * waiting (the model ends transfers at whole TDs): ask exactly */
        uint32_t ask = sizes[k] % (64 * 1024) ? sizes[k] + 1024 : sizes[k];

        if (!loop_once(v, sizes[k], ask, 50 + k, why, sizeof(why))) {
            break;
        }
        good++;
    }
    dext_usb_host_usbfs_set_urb_max(v->h, 0);
    reg_read(v, DEXTLAB_USB_REG_FIFO_LEVEL, &level);
    result("bulk-1m", good == G_N_ELEMENTS(sizes) && level == 0,
           "ok=%u/%u max=%u fifo_level=%u %s", good,
           (unsigned)G_N_ELEMENTS(sizes), sizes[G_N_ELEMENTS(sizes) - 1],
           level, why);
}

/* ------------------------------------------------ bulk throughput */

typedef struct Pump {
    Dev *v;
    GMutex lock;
    GCond cond;
    uint32_t chunk, n;                  /* transfers each way */
    uint32_t out_next, in_next, out_done, in_done;
    int error;
    uint32_t bad_len;
} Pump;

static void pump_out_cb(void *opaque, int status, uint32_t actual,
                        uint64_t ts);
static void pump_in_cb(void *opaque, int status, uint32_t actual,
                       uint64_t ts);

/* lock held */
static void pump_submit(Pump *p)
{
    /* a window of 4 each way: bounded usbfs memory, FIFO kept busy */
    while (!p->error && p->out_next < p->n && p->out_next < p->in_done + 4) {
        int r = dext_usb_pipe_async_io(p->v->out, p->v->ob,
                                       (size_t)p->out_next * p->chunk,
                                       p->chunk, pump_out_cb, p);
        if (r < 0) {
            p->error = r;
            break;
        }
        p->out_next++;
    }
    while (!p->error && p->in_next < p->n && p->in_next < p->in_done + 4) {
        int r = dext_usb_pipe_async_io(p->v->in, p->v->ib,
                                       (size_t)p->in_next * p->chunk,
                                       p->chunk, pump_in_cb, p);
        if (r < 0) {
            p->error = r;
            break;
        }
        p->in_next++;
    }
}

static void pump_out_cb(void *opaque, int status, uint32_t actual,
                        uint64_t ts)
{
    Pump *p = opaque;

    g_mutex_lock(&p->lock);
    p->out_done++;
    if (status < 0 && !p->error) {
        p->error = status;
    }
    if (actual != p->chunk && !p->bad_len) {
        p->bad_len = actual + 1;
    }
    pump_submit(p);
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
}

static void pump_in_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    Pump *p = opaque;

    g_mutex_lock(&p->lock);
    p->in_done++;
    if (status < 0 && !p->error) {
        p->error = status;
    }
    if (actual != p->chunk && !p->bad_len) {
        p->bad_len = actual + 1;
    }
    pump_submit(p);
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
}

static void check_throughput(Dev *v)
{
    const uint32_t chunk = DEXTLAB_USB_FIFO_DEFAULT;
    const uint32_t total = BUF_SIZE;
    unsigned rounds = bench_mode ? 16 : 2, good = 0;
    uint8_t *o = dext_usb_buffer_data(v->ob), *i = dext_usb_buffer_data(v->ib);
    double usb_s = 0, cpy_s = 0;
    int err = 0;
    uint32_t bad_len = 0;
    uint8_t *a = g_malloc(total), *b = g_malloc(total);

    for (unsigned r = 0; r < rounds && !err; r++) {
        Pump p = { .v = v, .chunk = chunk, .n = total / chunk };
        gint64 t0, end;
        bool done;

        g_mutex_init(&p.lock);
        g_cond_init(&p.cond);
        fill(o, total, 1000 + r);
        memset(i, 0, total);
        t0 = g_get_monotonic_time();
        end = t0 + 60 * 1000000ll;
        g_mutex_lock(&p.lock);
        pump_submit(&p);
        for (;;) {
            bool all = p.in_done == p.n && p.out_done == p.n;
            bool drained = p.in_done == p.in_next &&
                           p.out_done == p.out_next;

            if (all || (p.error && drained) ||
                !g_cond_wait_until(&p.cond, &p.lock, end)) {
                break;
            }
        }
        done = p.in_done == p.n && p.out_done == p.n && !p.error;
        err = p.error ? p.error : done ? 0 : -ETIMEDOUT;
        bad_len = p.bad_len;
        g_mutex_unlock(&p.lock);
        usb_s += (g_get_monotonic_time() - t0) / 1e6;
        if (!done) {
            dext_usb_pipe_abort(v->out);
            dext_usb_pipe_abort(v->in);
            break;
        }
        good += !bad_len && memcmp(o, i, total) == 0;
    }
    /* baseline, same run: the guest's memcpy of as many bytes (pages
     * touched first: no page faults in the timing) */
    fill(a, total, 5);
    memset(b, 1, total);
    for (unsigned r = 0; r < rounds * 4; r++) {
        gint64 t0 = g_get_monotonic_time();

        memcpy(b, a, total);
        cpy_s += (g_get_monotonic_time() - t0) / 1e6;
        a[r % total] ^= b[(r * 7) % total];   /* keep the copies */
    }
    {
        double mib = (double)total * rounds / (1 << 20);
        double usb = usb_s > 0 ? mib / usb_s : 0;
        double cpy = cpy_s > 0 ? mib * 4 / cpy_s : 0;

        result("bulk-throughput", good == rounds && !err,
               "bytes=%u transfer=%u in_flight=4 rounds=%u verified=%u "
               "usb_mib_s=%.1f memcpy_mib_s=%.0f ratio=%.5f errno=%d "
               "bad_len=%u", total * rounds, chunk, rounds, good, usb, cpy,
               cpy > 0 ? usb / cpy : 0, -err, bad_len);
    }
    g_free(a);
    g_free(b);
}

/* ------------------------------------------------------- interrupt */

typedef struct EvSink {
    Dev *v;
    GMutex lock;
    GCond cond;
    DextlabUsbEvent got[64];
    unsigned n, want, inflight, slots_used;
    int error;
    int deadlk_io, deadlk_ctl;          /* sync calls from a completion */
    bool probed;
    bool stop;                          /* no resubmission */
} EvSink;

typedef struct EvSlot {
    EvSink *s;
    unsigned idx;
} EvSlot;

static void ev_cb(void *opaque, int status, uint32_t actual, uint64_t ts);

static int ev_submit(EvSlot *slot)
{
    return dext_usb_pipe_async_io(slot->s->v->intr, slot->s->v->ib,
                                  slot->idx * 64, 64, ev_cb, slot);
}

static void ev_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    EvSlot *slot = opaque;
    EvSink *s = slot->s;
    const uint8_t *b = (uint8_t *)dext_usb_buffer_data(s->v->ib) +
                       slot->idx * 64;
    uint32_t got = 0;

    if (!s->probed) {
        /* completions run on the reaper thread: sync calls must refuse */
        s->probed = true;
        s->deadlk_io = dext_usb_pipe_io(s->v->in, s->v->ob, 4096, 1, &got,
                                        100);
        s->deadlk_ctl = dext_usb_device_control(s->v->d, 0x80, 0, 0, 0,
                                                (void *)b, 2, NULL, 100);
    }
    g_mutex_lock(&s->lock);
    s->inflight--;
    if (status == 0 && actual == DEXTLAB_USB_EVENT_SIZE && s->n < 64) {
        memcpy(&s->got[s->n++], b, sizeof(DextlabUsbEvent));
    } else if (status != -ECANCELED && !s->error) {
        s->error = status ? status : -(int)(1000 + actual);
    }
    if (s->n + s->inflight < s->want && !s->error && !s->stop) {
        if (ev_submit(slot) == 0) {
            s->inflight++;
        }
    }
    g_cond_broadcast(&s->cond);
    g_mutex_unlock(&s->lock);
}

static void check_events(Dev *v)
{
    enum { N = 32, TAG = 0x5e, SLOTS = 4 };
    EvSink s = { .v = v, .want = N };
    EvSlot slots[SLOTS];
    uint32_t lost = 99;
    unsigned good = 0;
    gint64 end = g_get_monotonic_time() + T_MS * 1000ll;
    int t;

    g_mutex_init(&s.lock);
    g_cond_init(&s.cond);
    g_mutex_lock(&s.lock);
    for (unsigned k = 0; k < SLOTS; k++) {
        slots[k] = (EvSlot){ &s, 8 + k };   /* ib + 512 .. */
        if (ev_submit(&slots[k]) == 0) {
            s.inflight++;
        }
    }
    g_mutex_unlock(&s.lock);
    t = vendor_out(v, DEXTLAB_USB_REQ_TRIGGER_EVENTS, N, TAG);
    g_mutex_lock(&s.lock);
    while (s.n < N && !s.error && t == 0 &&
           g_cond_wait_until(&s.cond, &s.lock, end)) {
    }
    s.stop = true;
    g_mutex_unlock(&s.lock);
    /* the rest of the posted IN (NAKing) is aborted: completes first */
    dext_usb_pipe_abort(v->intr);
    g_mutex_lock(&s.lock);
    for (unsigned k = 0; k < s.n; k++) {
        good += s.got[k].type == DEXTLAB_USB_EVT_SOFT &&
                s.got[k].value == ((uint32_t)TAG << 16 | k) &&
                s.got[k].seq == s.got[0].seq + k &&
                !(s.got[k].flags & DEXTLAB_USB_EVT_FLAG_LOST);
    }
    reg_read(v, DEXTLAB_USB_REG_EVENTS_LOST, &lost);
    result("events", t == 0 && s.n == N && good == N && !s.error &&
           s.inflight == 0 && lost == 0, "trigger=%d got=%u/%u in_order=%u "
           "lost=%u inflight_after_abort=%u error=%d", t, s.n, N, good, lost,
           s.inflight, s.error);
    result("edeadlk", s.probed && s.deadlk_io == -EDEADLK &&
           s.deadlk_ctl == -EDEADLK, "pipe_io=%d control=%d", s.deadlk_io,
           s.deadlk_ctl);
    g_mutex_unlock(&s.lock);
}

/* ---------------------------------------------- stall, abort, timeout */

static void check_stall(Dev *v)
{
    uint32_t stalls0 = 0, stalls1 = 0, got = 0;
    char why[160] = "";
    Pending in;
    int f_in, f_out, io_in = 1, io_out, c_in, c_out;
    bool loop_ok;

    reg_read(v, DEXTLAB_USB_REG_STALLS, &stalls0);
    pending_init(&in);
    f_in = vendor_out(v, DEXTLAB_USB_REQ_FORCE_STALL, 0, DEXTLAB_USB_EP_BULK_IN);
    if (dext_usb_pipe_async_io(v->in, v->ib, 0, 512, pending_cb, &in) == 0 &&
        pending_wait(&in, 1, T_MS)) {
        io_in = in.status;
    }
    c_in = dext_usb_pipe_clear_stall(v->in);
    f_out = vendor_out(v, DEXTLAB_USB_REQ_FORCE_STALL, 0,
                       DEXTLAB_USB_EP_BULK_OUT);
    io_out = dext_usb_pipe_io(v->out, v->ob, 0, 64, &got, T_MS);
    c_out = dext_usb_pipe_clear_stall(v->out);
    loop_ok = loop_once(v, 700, 2048, 77, why, sizeof(why));
    reg_read(v, DEXTLAB_USB_REG_STALLS, &stalls1);
    result("stall", !f_in && !f_out && io_in == -EPIPE && io_out == -EPIPE &&
           !c_in && !c_out && loop_ok && stalls1 - stalls0 >= 2,
           "force=%d,%d io_in=%d io_out=%d clear=%d,%d stalls=+%u loop=%d %s",
           f_in, f_out, io_in, io_out, c_in, c_out, stalls1 - stalls0,
           loop_ok, why);
}

static void check_abort(Dev *v)
{
    Pending in;
    uint32_t got = 7;
    int sub, ab, to;
    unsigned done_at_return;
    char why[160] = "";
    bool loop_ok;
    gint64 t0;
    double to_ms;

    /* FIFO empty: the IN NAKs until taken back */
    pending_init(&in);
    sub = dext_usb_pipe_async_io(v->in, v->ib, 0, 4096, pending_cb, &in);
    g_usleep(50000);
    ab = dext_usb_pipe_abort(v->in);
    done_at_return = pending_done(&in);
    t0 = g_get_monotonic_time();
    to = dext_usb_pipe_io(v->in, v->ib, 0, 4096, &got, 300);
    to_ms = (g_get_monotonic_time() - t0) / 1e3;
    loop_ok = loop_once(v, 333, 1024, 5, why, sizeof(why));
    result("abort", sub == 0 && ab == 0 && done_at_return == 1 &&
           in.status == -ECANCELED && in.actual == 0 && to == -ETIMEDOUT &&
           got == 0 && to_ms >= 290 && loop_ok,
           "submit=%d abort=%d completed_before_return=%u io_status=%d "
           "timeout=%d after_ms=%.0f actual=%u loop=%d %s", sub, ab,
           done_at_return, in.status, to, to_ms, got, loop_ok, why);
}

static void check_buffer_fd(Dev *v)
{
    uint64_t off = 1;
    int fd = dext_usb_buffer_fd(v->ob, &off);
    uint8_t *m = MAP_FAILED;
    char why[160] = "";
    bool same = false, loop_ok = false;

    if (fd >= 0) {
        m = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
    }
    if (m != MAP_FAILED) {
        /* what another process would write through the fd is the IO's */
        fill(m, 8192, 4242);
        same = !memcmp(m, dext_usb_buffer_data(v->ob), 8192);
        {
            Pending in;

            pending_init(&in);
            memset(dext_usb_buffer_data(v->ib), 0, 8192);
            if (dext_usb_pipe_async_io(v->in, v->ib, 0, 9000, pending_cb,
                                       &in) == 0 &&
                dext_usb_pipe_io(v->out, v->ob, 0, 8192, NULL, T_MS) == 0 &&
                pending_wait(&in, 1, T_MS)) {
                loop_ok = in.status == 0 && in.actual == 8192 &&
                          !memcmp(dext_usb_buffer_data(v->ib), m, 8192);
            } else {
                dext_usb_pipe_abort(v->in);
                snprintf(why, sizeof(why), "loop_failed=1");
            }
        }
        munmap(m, 8192);
    }
    result("buffer-fd", fd >= 0 && off == 0 && same && loop_ok,
           "fd=%d offset=%llu shared=%d loop=%d %s", fd,
           (unsigned long long)off, same, loop_ok, why);
}

static void check_alt(Dev *v)
{
    static const uint32_t sizes[] = { 1, 100, 4096, 20000 };
    DextUsbPipe *old_out = v->out;
    const DextUsbEndpointDesc *ie = NULL, *be = NULL;
    const DextUsbInterfaceDesc *id;
    uint32_t reg1 = 9, reg0 = 9;
    char why[160] = "";
    unsigned good = 0;
    int sel1, sel0, stale, pipes;

    sel1 = dext_usb_interface_select_alt(v->i, 1);
    stale = dext_usb_pipe_async_io(old_out, v->ob, 0, 1, pending_cb, NULL);
    pipes = get_pipes(v);
    id = dext_usb_interface_descriptor(v->i);
    if (pipes == 0) {
        ie = dext_usb_pipe_descriptor(v->intr);
        be = dext_usb_pipe_descriptor(v->in);
    }
    reg_read(v, DEXTLAB_USB_REG_ALTSETTING, &reg1);
    for (unsigned k = 0; k < G_N_ELEMENTS(sizes) && pipes == 0; k++) {
        if (!loop_once(v, sizes[k], sizes[k] + 512, 300 + k, why,
                       sizeof(why))) {
            break;
        }
        good++;
    }
    sel0 = dext_usb_interface_select_alt(v->i, 0);
    pipes = pipes ? pipes : get_pipes(v);
    reg_read(v, DEXTLAB_USB_REG_ALTSETTING, &reg0);
    result("altsetting", sel1 == 0 && stale == -EBADF && id &&
           id->bAlternateSetting == 1 && ie &&
           ie->wMaxPacketSize == DEXTLAB_USB_INTR_MPS(1) && be &&
           be->wMaxPacketSize == (v->ss ? DEXTLAB_USB_BULK_MPS_SS(1)
                                        : DEXTLAB_USB_BULK_MPS_HS(1)) &&
           (!v->ss || be->bMaxBurst == DEXTLAB_USB_BULK_BURST_SS(1)) &&
           reg1 == 1 && good == G_N_ELEMENTS(sizes) && sel0 == 0 &&
           pipes == 0 && reg0 == 0 &&
           dext_usb_interface_descriptor(v->i)->bAlternateSetting == 0,
           "select1=%d stale_pipe=%d alt_reg=%u intr_mps=%u bulk_mps=%u "
           "loop=%u/%u select0=%d alt_reg_after=%u pipes=%d %s", sel1, stale,
           reg1, ie ? ie->wMaxPacketSize : 0, be ? be->wMaxPacketSize : 0,
           good, (unsigned)G_N_ELEMENTS(sizes), sel0, reg0, pipes, why);
}

/* ------------------------------------------------------------ hot-plug */

/*
 * sysfs "B-P" (root port P of bus B) -> its root hub's interface "B-0:1.0".
 * Unbinding the kernel's hub driver from it disconnects every device below
 * (as unplugging a hub does); binding it again powers the ports and
 * enumerates what is connected, with new device numbers.  (A port's own
 * "disable" switch is not enough: qemu-xhci reports no change when a USB 2
 * port is powered again, so the device may never come back.)
 */
static char *root_hub_intf(const char *sysname)
{
    unsigned bus, port;
    char extra;

    if (sscanf(sysname, "%u-%u%c", &bus, &port, &extra) != 2) {
        return NULL;           /* behind a hub: not this test's machine */
    }
    return g_strdup_printf("%u-0:1.0", bus);
}

static bool write_str(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    bool ok;

    if (fd < 0) {
        return false;
    }
    ok = write(fd, s, strlen(s)) == (ssize_t)strlen(s);
    close(fd);
    return ok;
}

/* the sysfs name of @d: the device whose busnum/devnum make its port */
static char *sysname_of(DextUsbDevice *d)
{
    unsigned port = dext_usb_device_port(d);
    GDir *dir = g_dir_open("/sys/bus/usb/devices", 0, NULL);
    const char *n;
    char *found = NULL;

    while (dir && !found && (n = g_dir_read_name(dir))) {
        g_autofree char *bp = g_strdup_printf("/sys/bus/usb/devices/%s/busnum",
                                              n);
        g_autofree char *dp = g_strdup_printf("/sys/bus/usb/devices/%s/devnum",
                                              n);
        g_autofree char *b = NULL, *dv = NULL;

        if (!strchr(n, ':') && g_file_get_contents(bp, &b, NULL, NULL) &&
            g_file_get_contents(dp, &dv, NULL, NULL) &&
            (unsigned)(atoi(b) << 8 | atoi(dv)) == port) {
            found = g_strdup(n);
        }
    }
    if (dir) {
        g_dir_close(dir);
    }
    return found;
}

static void check_hotplug(Dev *v)
{
    g_autofree char *name = sysname_of(v->d);
    g_autofree char *sw = name ? root_hub_intf(name) : NULL;
    DextUsbDevice *gone = NULL, *back = NULL;
    unsigned det0, att0, old_port = dext_usb_device_port(v->d), new_port = 0;
    Pending in;
    int sub, ctl_after = 1, io_after = 1, id_r = 1, open_r = 1;
    uint32_t id = 0;
    bool off = false, on = false, detached = false, attached = false;
    bool io_first = false;
    gint64 end;

    pending_init(&in);
    g_mutex_lock(&ev.lock);
    det0 = ev.detached;
    att0 = ev.attached;
    ev.watch = &in;
    g_mutex_unlock(&ev.lock);
    /* in flight (NAKing) when the device goes */
    sub = dext_usb_pipe_async_io(v->in, v->ib, 0, 512, pending_cb, &in);
    if (sw) {
        off = write_str("/sys/bus/usb/drivers/hub/unbind", sw);
    }
    end = g_get_monotonic_time() + 60 * 1000000ll;
    g_mutex_lock(&ev.lock);
    while (off && ev.detached == det0 &&
           g_cond_wait_until(&ev.cond, &ev.lock, end)) {
    }
    detached = ev.detached > det0;
    gone = detached ? dext_usb_device_ref(ev.last_detached) : NULL;
    io_first = ev.io_done_at_detach;
    ev.watch = NULL;
    g_mutex_unlock(&ev.lock);
    if (detached) {
        ctl_after = reg_read(v, DEXTLAB_USB_REG_ID, &id);
        io_after = dext_usb_pipe_async_io(v->out, v->ob, 0, 1, pending_cb,
                                          &in);
    }
    if (sw) {
        on = write_str("/sys/bus/usb/drivers/hub/bind", sw);
    }
    end = g_get_monotonic_time() + 60 * 1000000ll;
    g_mutex_lock(&ev.lock);
    while (on && ev.attached == att0 &&
           g_cond_wait_until(&ev.cond, &ev.lock, end)) {
    }
    attached = ev.attached > att0;
    back = attached ? dext_usb_device_ref(ev.last_attached) : NULL;
    g_mutex_unlock(&ev.lock);
    if (back) {
        Dev nv = { .h = v->h, .d = back };

        new_port = dext_usb_device_port(back);
        open_r = dext_usb_device_open(back);
        id = 0;
        id_r = reg_read(&nv, DEXTLAB_USB_REG_ID, &id);
        dext_usb_device_close(back);
    }
    result("hotplug", sub == 0 && off && detached && gone == v->d &&
           in.done == 1 && in.status == -ECANCELED && io_first &&
           !dext_usb_device_attached(v->d) && ctl_after == -ENODEV &&
           io_after == -ENODEV && on && attached && back &&
           dext_usb_device_descriptor(back)->idProduct == DEXTLAB_USB_PID &&
           new_port != old_port && open_r == 0 && id_r == 0 &&
           id == DEXTLAB_USB_ID_VALUE,
           "root_hub=%s unbind=%d detached=%d same_object=%d io_status=%d "
           "io_done_before_detach_fn=%d control_after=%d io_after=%d bind=%d "
           "attached=%d port=0x%x->0x%x open=%d id_read=%d",
           sw ? sw : "none", off, detached, gone == v->d, in.status, io_first,
           ctl_after, io_after, on, attached, old_port, new_port, open_r,
           id_r);
    dext_usb_device_unref(gone);
    dext_usb_device_unref(back);
}

/*
 * dext_usb_device_reset_port (what the provider does when a client driver
 * crashed): the device detaches, its port is reset, it attaches again as a
 * new object that answers.
 */
static void check_reset(DextUsbHost *h, DextUsbDevice *d, unsigned count)
{
    DextUsbDevice *back = NULL;
    unsigned det0, att0;
    int r, again = 1, w = 1, open_r = 1, id_r = 1;
    uint32_t id = 0;
    bool detached, attached;
    gint64 end;

    g_mutex_lock(&ev.lock);
    det0 = ev.detached;
    att0 = ev.attached;
    g_mutex_unlock(&ev.lock);
    r = dext_usb_device_reset_port(d);
    if (r == 0) {
        w = dext_usb_host_wait_devices(h, count, 60000);
    }
    end = g_get_monotonic_time() + 60 * 1000000ll;
    g_mutex_lock(&ev.lock);
    while (r == 0 && (ev.detached == det0 || ev.attached == att0) &&
           g_cond_wait_until(&ev.cond, &ev.lock, end)) {
    }
    detached = ev.detached > det0 && ev.last_detached == d;
    attached = ev.attached > att0;
    back = attached ? dext_usb_device_ref(ev.last_attached) : NULL;
    g_mutex_unlock(&ev.lock);
    again = dext_usb_device_reset_port(d);
    if (back) {
        Dev nv = { .h = h, .d = back };

        open_r = dext_usb_device_open(back);
        id_r = reg_read(&nv, DEXTLAB_USB_REG_ID, &id);
        dext_usb_device_close(back);
    }
    result("reset-port", r == 0 && w == 0 && detached && attached &&
           back != d && !dext_usb_device_attached(d) && again == -ENODEV &&
           open_r == 0 && id_r == 0 && id == DEXTLAB_USB_ID_VALUE,
           "reset=%d wait=%d detached=%d attached=%d new_object=%d "
           "again=%d open=%d id_read=%d", r, w, detached, attached,
           back && back != d, again, open_r, id_r);
    dext_usb_device_unref(back);
}

/* ---------------------------------------------------------------- main */

/* the USB devices sysfs lists now that the family should report: not
 * root hubs ("usbN"), interfaces or hubs */
static unsigned sysfs_devices(void)
{
    GDir *dir = g_dir_open("/sys/bus/usb/devices", 0, NULL);
    const char *n;
    unsigned count = 0;

    while (dir && (n = g_dir_read_name(dir))) {
        g_autofree char *p = g_strdup_printf("/sys/bus/usb/devices/%s/"
                                             "bDeviceClass", n);
        g_autofree char *cls = NULL;

        if (!strchr(n, ':') && strncmp(n, "usb", 3) &&
            g_file_get_contents(p, &cls, NULL, NULL) &&
            strtoul(cls, NULL, 16) != 9) {
            count++;
        }
    }
    if (dir) {
        g_dir_close(dir);
    }
    return count;
}

static void run_device(DextUsbHost *h, DextUsbDevice *d)
{
    Dev v = { .h = h, .d = d };
    int o, c, io;

    v.ss = dext_usb_device_speed(d) == DEXT_USB_SPEED_SUPER;
    snprintf(tag, sizeof(tag), "%s", v.ss ? "ss" : "hs");
    o = dext_usb_device_open(d);
    c = o ? o : dext_usb_device_set_configuration(d, DEXTLAB_USB_CONFIG_VALUE);
    v.i = dext_usb_device_interface(d, DEXTLAB_USB_IFACE_NUM);
    io = v.i ? dext_usb_interface_open(v.i) : -ENOENT;
    if (!io) {
        io = get_pipes(&v);
    }
    if (!io) {
        io = dext_usb_buffer_alloc(h, BUF_SIZE, &v.ob);
    }
    if (!io) {
        io = dext_usb_buffer_alloc(h, BUF_SIZE, &v.ib);
    }
    result("open", !o && !c && !io &&
           dext_usb_device_num_interfaces(d) == 1 &&
           dext_usb_device_open(d) == -EBUSY,
           "open=%d set_configuration=%d interfaces=%u interface_open=%d", o,
           c, dext_usb_device_num_interfaces(d), io);
    if (!o && !c && !io) {
        check_descriptors(&v);
        check_match_keys(&v);
        check_control(&v);
        check_bulk(&v);
        check_split(&v);
        check_events(&v);
        check_stall(&v);
        check_abort(&v);
        check_buffer_fd(&v);
        check_alt(&v);
        check_throughput(&v);
        check_hotplug(&v);
    }
    if (v.i) {
        dext_usb_interface_close(v.i);
    }
    dext_usb_device_close(d);
    dext_usb_buffer_free(v.ob);
    dext_usb_buffer_free(v.ib);
}

int main(int argc, char **argv)
{
    DextUsbHostConfig cfg = { .device_fn = device_fn };
    DextUsbHost *h = NULL;
    DextUsbDevice **devs = NULL;
    unsigned want, hs = 0, ss = 0, att, det;
    size_t n = 0;
    int r, w = -1;

    bench_mode = argc > 1 && !strcmp(argv[1], "bench");
    g_mutex_init(&ev.lock);
    g_cond_init(&ev.cond);
    cfg.xhci.timeout_ms = T_MS;
    want = sysfs_devices();
    r = dext_usb_host_create_usbfs(NULL, NULL, &cfg, &h);
    if (r == 0) {
        w = dext_usb_host_wait_devices(h, want, 20000);
        n = dext_usb_host_devices(h, &devs);
    }
    for (size_t k = 0; k < n; k++) {
        const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(devs[k]);

        if (dd->idVendor == DEXTLAB_USB_VID &&
            dd->idProduct == DEXTLAB_USB_PID) {
            hs += dext_usb_device_speed(devs[k]) == DEXT_USB_SPEED_HIGH;
            ss += dext_usb_device_speed(devs[k]) == DEXT_USB_SPEED_SUPER;
        }
    }
    g_mutex_lock(&ev.lock);
    att = ev.attached;
    g_mutex_unlock(&ev.lock);
    result("enumerate", r == 0 && w == 0 && n == want && att == n &&
           hs == 1 && ss == 1, "create=%d wait=%d devices=%zu sysfs=%u "
           "attach_events=%u dextlab_hs=%u dextlab_ss=%u", r, w, n, want,
           att, hs, ss);
    for (size_t k = 0; k < n; k++) {
        const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(devs[k]);

        if (dd->idVendor == DEXTLAB_USB_VID &&
            dd->idProduct == DEXTLAB_USB_PID) {
            run_device(h, devs[k]);
        }
    }
    for (size_t k = 0; k < n; k++) {
        dext_usb_device_unref(devs[k]);
    }
    g_free(devs);
    /* the devices as they are now (the hot-plug check replugged them) */
    n = h ? dext_usb_host_devices(h, &devs) : 0;
    for (size_t k = 0; k < n; k++) {
        const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(devs[k]);

        if (dd->idVendor == DEXTLAB_USB_VID &&
            dd->idProduct == DEXTLAB_USB_PID) {
            snprintf(tag, sizeof(tag), "%s",
                     dext_usb_device_speed(devs[k]) == DEXT_USB_SPEED_SUPER
                     ? "ss" : "hs");
            check_reset(h, devs[k], n);
        }
        dext_usb_device_unref(devs[k]);
    }
    g_free(devs);
    snprintf(tag, sizeof(tag), "all");
    if (h) {
        size_t left;
        DextUsbDevice **now = NULL;

        left = dext_usb_host_devices(h, &now);
        for (size_t k = 0; k < left; k++) {
            dext_usb_device_unref(now[k]);
        }
        g_free(now);
        g_mutex_lock(&ev.lock);
        det = ev.detached;
        g_mutex_unlock(&ev.lock);
        dext_usb_host_destroy(h);
        g_mutex_lock(&ev.lock);
        result("destroy", ev.detached - det == left, "attached=%zu "
               "detach_events=%u", left, ev.detached - det);
        g_mutex_unlock(&ev.lock);
    }
    g_mutex_lock(&ev.lock);
    dext_usb_device_unref(ev.last_attached);
    dext_usb_device_unref(ev.last_detached);
    g_mutex_unlock(&ev.lock);
    return nfail ? 1 : 0;
}
