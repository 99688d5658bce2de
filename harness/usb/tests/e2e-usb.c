/*
 * End-to-end tests of dextlab-usb through the user-space xHCI driver and
 * the USB family API, on the qtest platform.
 *
 * One machine: qemu-xhci with a SuperSpeed dextlab-usb (usb3 port, 2 MiB
 * FIFO) and a high-speed one (superspeed=off, usb2 port, default FIFO).
 * Expected descriptor values come from dextlab-usb-regs.h, so a drift
 * between the model and its header fails here.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "usb-testbed.h"
#include "usb-match.h"
#include "hw/dextlab/dextlab-usb-regs.h"

static UsbTestbed *tb;

static const char *const devices[] = {
    "qemu-xhci,id=xhci",
    "dextlab-usb,id=ss,bus=xhci.0,fifo-size=2097152,serial=ss-1",
    "dextlab-usb,id=hs,bus=xhci.0,superspeed=off,serial=hs-1",
    NULL,
};

/* the attached device of @speed, referenced */
static DextUsbDevice *get_dev(unsigned speed)
{
    DextUsbDevice **v, *d = NULL;
    size_t n = dext_usb_host_devices(usb_testbed_host(tb), &v);

    for (size_t i = 0; i < n; i++) {
        if (!d && dext_usb_device_speed(v[i]) == speed) {
            d = dext_usb_device_ref(v[i]);
        }
        dext_usb_device_unref(v[i]);
    }
    g_free(v);
    g_assert_nonnull(d);
    return d;
}

typedef struct Fixture {
    DextUsbDevice *dev;
    DextUsbInterface *iface;
    DextUsbPipe *out, *in, *intr;
} Fixture;

static void fixture_open(Fixture *f, unsigned speed)
{
    f->dev = get_dev(speed);
    g_assert_cmpint(dext_usb_device_open(f->dev), ==, 0);
    g_assert_cmpint(dext_usb_device_set_configuration(f->dev,
                    DEXTLAB_USB_CONFIG_VALUE), ==, 0);
    f->iface = dext_usb_device_interface(f->dev, DEXTLAB_USB_IFACE_NUM);
    g_assert_nonnull(f->iface);
    g_assert_cmpint(dext_usb_interface_open(f->iface), ==, 0);
    g_assert_cmpint(dext_usb_interface_copy_pipe(f->iface,
                    DEXTLAB_USB_EP_BULK_OUT, &f->out), ==, 0);
    g_assert_cmpint(dext_usb_interface_copy_pipe(f->iface,
                    DEXTLAB_USB_EP_BULK_IN, &f->in), ==, 0);
    g_assert_cmpint(dext_usb_interface_copy_pipe(f->iface,
                    DEXTLAB_USB_EP_INTR_IN, &f->intr), ==, 0);
}

static void fixture_close(Fixture *f)
{
    if (dext_usb_device_attached(f->dev)) {
        dext_usb_interface_close(f->iface);
        dext_usb_device_close(f->dev);
    }
    dext_usb_device_unref(f->dev);
}

static int vendor_out(DextUsbDevice *d, uint8_t req, uint16_t val,
                      uint16_t idx, void *data, uint16_t len)
{
    return dext_usb_device_control(d, 0x40, req, val, idx, data, len, NULL,
                                   0);
}

static uint32_t read_reg(DextUsbDevice *d, unsigned reg)
{
    uint8_t b[4];
    uint32_t got = 0;

    g_assert_cmpint(dext_usb_device_control(d, 0xc0,
                    DEXTLAB_USB_REQ_READ_REG, 0, reg, b, 4, &got, 0), ==, 0);
    g_assert_cmpuint(got, ==, 4);
    return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

/* ------------------------------------------------------ enumeration */

static void check_descriptors(unsigned speed)
{
    DextUsbDevice *d = get_dev(speed);
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);
    const DextUsbConfigDesc *c = dext_usb_device_config(d);
    bool ss = speed == DEXT_USB_SPEED_SUPER;
    char s[128];
    uint8_t bos[64];
    uint32_t got = 0;

    g_assert_cmphex(dd->idVendor, ==, DEXTLAB_USB_VID);
    g_assert_cmphex(dd->idProduct, ==, DEXTLAB_USB_PID);
    g_assert_cmphex(dd->bcdDevice, ==, DEXTLAB_USB_BCD_DEVICE);
    g_assert_cmphex(dd->bcdUSB, ==, ss ? DEXTLAB_USB_BCD_USB_SS
                                       : DEXTLAB_USB_BCD_USB_HS);
    g_assert_cmpuint(dd->bMaxPacketSize0, ==, ss ? DEXTLAB_USB_EP0_MPS_SS_EXP
                                                 : DEXTLAB_USB_EP0_MPS_HS);
    g_assert_cmpuint(dd->bNumConfigurations, ==, 1);
    g_assert_cmpuint(c->bConfigurationValue, ==, DEXTLAB_USB_CONFIG_VALUE);
    g_assert_cmpuint(c->bmAttributes, ==, DEXTLAB_USB_CONFIG_ATTR);
    g_assert_cmpuint(c->bMaxPower, ==, DEXTLAB_USB_CONFIG_MAXPOWER);
    g_assert_cmpuint(c->bNumInterfaces, ==, 1);
    g_assert_cmpuint(c->n_alts, ==, DEXTLAB_USB_NUM_ALTS);
    for (unsigned alt = 0; alt < c->n_alts; alt++) {
        const DextUsbInterfaceDesc *i = &c->alts[alt];

        g_assert_cmpuint(i->bAlternateSetting, ==, alt);
        g_assert_cmpuint(i->bInterfaceClass, ==, DEXTLAB_USB_IFACE_CLASS);
        g_assert_cmpuint(i->bInterfaceSubClass, ==,
                         DEXTLAB_USB_IFACE_SUBCLASS);
        g_assert_cmpuint(i->bInterfaceProtocol, ==,
                         DEXTLAB_USB_IFACE_PROTOCOL);
        g_assert_cmpuint(i->n_endpoints, ==, DEXTLAB_USB_NUM_EPS);
        g_assert_cmphex(i->endpoints[0].bEndpointAddress, ==,
                        DEXTLAB_USB_EP_BULK_OUT);
        g_assert_cmphex(i->endpoints[1].bEndpointAddress, ==,
                        DEXTLAB_USB_EP_BULK_IN);
        g_assert_cmphex(i->endpoints[2].bEndpointAddress, ==,
                        DEXTLAB_USB_EP_INTR_IN);
        for (unsigned e = 0; e < 2; e++) {
            g_assert_cmpuint(i->endpoints[e].bmAttributes, ==, 2);
            g_assert_cmpuint(i->endpoints[e].wMaxPacketSize, ==,
                             ss ? DEXTLAB_USB_BULK_MPS_SS(alt)
                                : DEXTLAB_USB_BULK_MPS_HS(alt));
            g_assert_cmpint(i->endpoints[e].has_companion, ==, ss);
            if (ss) {
                g_assert_cmpuint(i->endpoints[e].bMaxBurst, ==,
                                 DEXTLAB_USB_BULK_BURST_SS(alt));
            }
        }
        g_assert_cmpuint(i->endpoints[2].bmAttributes, ==, 3);
        g_assert_cmpuint(i->endpoints[2].wMaxPacketSize, ==,
                         DEXTLAB_USB_INTR_MPS(alt));
        g_assert_cmpuint(i->endpoints[2].bInterval, ==,
                         ss ? DEXTLAB_USB_INTR_INTERVAL_SS
                            : DEXTLAB_USB_INTR_INTERVAL_HS);
        g_assert_cmpint(i->endpoints[2].has_companion, ==, ss);
        if (ss) {
            g_assert_cmpuint(i->endpoints[2].wBytesPerInterval, ==,
                             DEXTLAB_USB_INTR_MPS(alt));
        }
        g_assert_cmpint(dext_usb_device_string(d, i->iInterface, s,
                                               sizeof(s)), >, 0);
        g_assert_cmpstr(s, ==, alt ? DEXTLAB_USB_IFACE_ALT1_NAME
                                   : DEXTLAB_USB_IFACE_ALT0_NAME);
    }
    g_assert_cmpint(dext_usb_device_string(d, dd->iManufacturer, s,
                                           sizeof(s)), >, 0);
    g_assert_cmpstr(s, ==, DEXTLAB_USB_MANUFACTURER);
    g_assert_cmpint(dext_usb_device_string(d, dd->iProduct, s, sizeof(s)),
                    >, 0);
    g_assert_cmpstr(s, ==, DEXTLAB_USB_PRODUCT);
    g_assert_cmpint(dext_usb_device_string(d, dd->iSerialNumber, s,
                                           sizeof(s)), >, 0);
    g_assert_cmpstr(s, ==, ss ? "ss-1" : "hs-1");

    /* BOS (type 15): USB 2.0 extension, + SuperSpeed capability on SS */
    g_assert_cmpint(dext_usb_device_get_descriptor(d, 15, 0, bos,
                                                   sizeof(bos), &got), ==, 0);
    g_assert_cmpuint(got, >=, 5);
    g_assert_cmpuint(bos[1], ==, 15);
    g_assert_cmpuint(bos[2] | bos[3] << 8, ==, got);
    if (ss) {
        const uint8_t *cap = bos + 5 + 7;

        g_assert_cmpuint(bos[4], ==, DEXTLAB_USB_BOS_NUM_CAPS);
        g_assert_cmpuint(cap[2], ==, 3);     /* SuperSpeed USB */
        g_assert_cmphex(cap[4] | cap[5] << 8, ==, DEXTLAB_USB_SS_SPEEDS);
        g_assert_cmpuint(cap[6], ==, DEXTLAB_USB_SS_FUNC_SUPPORT);
        g_assert_cmpuint(cap[7], ==, DEXTLAB_USB_SS_U1_EXIT_LAT);
        g_assert_cmphex(cap[8] | cap[9] << 8, ==, DEXTLAB_USB_SS_U2_EXIT_LAT);
    }
    {
        DextUsbMatchKeys k;

        dext_usb_device_match_keys(d, &k);
        g_assert_cmphex(k.idVendor, ==, DEXTLAB_USB_VID);
        g_assert_cmphex(k.idProduct, ==, DEXTLAB_USB_PID);
        g_assert_false(k.is_interface);
    }
    /* the port kind matches the speed */
    g_assert_cmpuint(dext_xhci_port_protocol(
                         dext_usb_host_xhci(usb_testbed_host(tb)),
                         dext_usb_device_port(d)), ==, ss ? 3 : 2);
    dext_usb_device_unref(d);
}

static void test_enum_super(void)
{
    check_descriptors(DEXT_USB_SPEED_SUPER);
}

static void test_enum_high(void)
{
    check_descriptors(DEXT_USB_SPEED_HIGH);
}

/* ---------------------------------------------------------- control */

static void test_control(void)
{
    Fixture f;
    uint8_t buf[DEXTLAB_USB_ECHO_MAX], back[DEXTLAB_USB_ECHO_MAX + 8];
    uint32_t got;
    uint8_t v[4] = { 0x78, 0x56, 0x34, 0x12 };

    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    g_assert_cmphex(read_reg(f.dev, DEXTLAB_USB_REG_ID), ==,
                    DEXTLAB_USB_ID_VALUE);
    g_assert_cmphex(read_reg(f.dev, DEXTLAB_USB_REG_SPEED), ==,
                    DEXTLAB_USB_SPEED_SUPER);
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_WRITE_REG, 0,
                               DEXTLAB_USB_REG_SCRATCH, v, 4), ==, 0);
    g_assert_cmphex(read_reg(f.dev, DEXTLAB_USB_REG_SCRATCH), ==, 0x12345678);
    /* read-only register, unknown register, unknown request: STALL, and
     * the default pipe keeps working */
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_WRITE_REG, 0,
                               DEXTLAB_USB_REG_ID, v, 4), ==, -EPIPE);
    g_assert_cmpint(dext_usb_device_control(f.dev, 0xc0,
                    DEXTLAB_USB_REQ_READ_REG, 0, 999, buf, 4, &got, 0), ==,
                    -EPIPE);
    g_assert_cmpint(vendor_out(f.dev, 0x7f, 0, 0, NULL, 0), ==, -EPIPE);
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_FORCE_STALL, 0, 0,
                               NULL, 0), ==, -EPIPE);
    g_assert_cmphex(read_reg(f.dev, DEXTLAB_USB_REG_ID), ==,
                    DEXTLAB_USB_ID_VALUE);
    /* data stages of every length 0..256, IN shorter than asked */
    for (unsigned len = 0; len <= DEXTLAB_USB_ECHO_MAX; len += 17) {
        for (unsigned i = 0; i < len; i++) {
            buf[i] = (uint8_t)(i * 7 + len);
        }
        g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_ECHO, 0, 0, buf,
                                   len), ==, 0);
        memset(back, 0xee, sizeof(back));
        g_assert_cmpint(dext_usb_device_control(f.dev, 0xc0,
                        DEXTLAB_USB_REQ_ECHO, 0, 0, back, sizeof(back), &got,
                        0), ==, 0);
        g_assert_cmpuint(got, ==, len);
        g_assert_cmpmem(back, len, buf, len);
    }
    /* too long an OUT data stage: STALL */
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_ECHO, 0, 0, back,
                               DEXTLAB_USB_ECHO_MAX + 1), ==, -EPIPE);
    fixture_close(&f);
}

/* ------------------------------------------------------------ bulk */

typedef struct Done {
    GMutex lock;
    GCond cond;
    int n;
    int status;
    uint32_t actual;
    uint64_t ts;
} Done;

static void done_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    Done *d = opaque;

    g_mutex_lock(&d->lock);
    d->n++;
    d->status = status;
    d->actual = actual;
    d->ts = ts;
    g_cond_broadcast(&d->cond);
    g_mutex_unlock(&d->lock);
}

static bool done_wait(Done *d, int n, unsigned ms)
{
    gint64 deadline = g_get_monotonic_time() + ms * 1000ll;
    bool ok;

    g_mutex_lock(&d->lock);
    while (d->n < n && g_cond_wait_until(&d->cond, &d->lock, deadline)) {
    }
    ok = d->n >= n;
    g_mutex_unlock(&d->lock);
    return ok;
}

/* OUT @len bytes, IN them back (IN queued first), compare */
static void loop_once(Fixture *f, DextUsbBuffer *ob, DextUsbBuffer *ib,
                      uint32_t len, uint32_t seed)
{
    uint8_t *o = dext_usb_buffer_data(ob), *i = dext_usb_buffer_data(ib);
    Done in = { 0 };
    uint32_t got = 0;

    for (uint32_t k = 0; k < len; k++) {
        o[k] = (uint8_t)((k * 2654435761u + seed) >> 13);
    }
    memset(i, 0xa5, MIN(len + 1, dext_usb_buffer_size(ib)));
    g_assert_cmpint(dext_usb_pipe_async_io(f->in, ib, 0,
                    MIN(len + 1024, dext_usb_buffer_size(ib)), done_cb, &in),
                    ==, 0);
    g_assert_cmpint(dext_usb_pipe_io(f->out, ob, 0, len, &got, 10000), ==, 0);
    g_assert_cmpuint(got, ==, len);
    g_assert_true(done_wait(&in, 1, 10000));
    g_assert_cmpint(in.status, ==, 0);
    /* short IN: the transfer ends where the OUT ended (or a ZLP) */
    g_assert_cmpuint(in.actual, ==, len);
    g_assert_true(memcmp(o, i, len) == 0);
}

static void test_bulk_loopback(void)
{
    static const uint32_t sizes[] = {
        0, 1, 2, 511, 512, 513, 1023, 1024, 1025, 4096, 65535, 65536, 65537,
        200000, 512 * 1024, 1024 * 1024,
    };
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbBuffer *ob, *ib;
    Fixture f;

    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 2 << 20, &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 2 << 20, &ib), ==, 0);
    for (unsigned k = 0; k < G_N_ELEMENTS(sizes); k++) {
        loop_once(&f, ob, ib, sizes[k], k);
    }
    g_assert_cmpuint(read_reg(f.dev, DEXTLAB_USB_REG_FIFO_LEVEL), ==, 0);
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    fixture_close(&f);
}

/* One status per completion, for bursts. */
typedef struct Burst {
    GMutex lock;
    GCond cond;
    int n, bad;
} Burst;

static void burst_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    Burst *b = opaque;

    g_mutex_lock(&b->lock);
    b->n++;
    b->bad += status != 0 || actual != 64;
    g_cond_broadcast(&b->cond);
    g_mutex_unlock(&b->lock);
}

/*
 * Regression: qemu-xhci drops events while its event ring is full, and the
 * driver frees room only when its posted ERDP write crosses the qtest
 * socket.  With a 256-TRB ring, ~500 small transfers completing in a burst
 * lost completions (a client driver's 1 MiB loopback in 32 KiB pieces
 * hung).  Every TD's completion must arrive: the ring holds 4096 events
 * and the driver never has more TDs in flight than it has room for.
 */
static void test_bulk_event_burst(void)
{
    enum { N = 240 };
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbBuffer *ob, *ib;
    Burst outs = { 0 }, ins = { 0 };
    gint64 deadline;
    uint8_t *o, *i;
    Fixture f;

    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    g_assert_cmpint(dext_usb_buffer_alloc(h, N * 64, &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, N * 64, &ib), ==, 0);
    o = dext_usb_buffer_data(ob);
    i = dext_usb_buffer_data(ib);
    for (unsigned k = 0; k < N * 64; k++) {
        o[k] = (uint8_t)(k / 64 * 7 + k);
    }
    memset(i, 0, N * 64);
    for (unsigned k = 0; k < N; k++) {
        g_assert_cmpint(dext_usb_pipe_async_io(f.in, ib, k * 64, 64,
                                               burst_cb, &ins), ==, 0);
    }
    for (unsigned k = 0; k < N; k++) {
        g_assert_cmpint(dext_usb_pipe_async_io(f.out, ob, k * 64, 64,
                                               burst_cb, &outs), ==, 0);
    }
    deadline = g_get_monotonic_time() + 20 * G_TIME_SPAN_SECOND;
    g_mutex_lock(&ins.lock);
    while (ins.n < N && g_cond_wait_until(&ins.cond, &ins.lock, deadline)) {
    }
    g_mutex_unlock(&ins.lock);
    g_mutex_lock(&outs.lock);
    while (outs.n < N && g_cond_wait_until(&outs.cond, &outs.lock, deadline)) {
    }
    g_mutex_unlock(&outs.lock);
    g_assert_cmpint(outs.n, ==, N);
    g_assert_cmpint(ins.n, ==, N);
    g_assert_cmpint(outs.bad + ins.bad, ==, 0);
    g_assert_true(memcmp(o, i, N * 64) == 0);
    {
        DextXhciStats st;

        dext_xhci_stats(dext_usb_host_xhci(h), &st);
        g_assert_cmpuint(st.bad_events, ==, 0);
    }
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    fixture_close(&f);
}

/* high speed, default 64 KiB FIFO: a 1 MiB stream moves in FIFO-sized
 * transfers, several OUTs in flight, every byte checked */
static void test_bulk_stream_hs(void)
{
    const uint32_t total = 1 << 20, chunk = DEXTLAB_USB_FIFO_DEFAULT;
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbBuffer *ob, *ib;
    Done outs = { 0 };
    uint8_t *o, *i;
    uint32_t got = 0, at = 0;
    Fixture f;

    fixture_open(&f, DEXT_USB_SPEED_HIGH);
    g_assert_cmpint(dext_usb_buffer_alloc(h, total, &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, total, &ib), ==, 0);
    o = dext_usb_buffer_data(ob);
    i = dext_usb_buffer_data(ib);
    for (uint32_t k = 0; k < total; k++) {
        o[k] = (uint8_t)(k ^ (k >> 9));
    }
    for (uint32_t off = 0; off < total; off += chunk) {
        g_assert_cmpint(dext_usb_pipe_async_io(f.out, ob, off, chunk, done_cb,
                                               &outs), ==, 0);
    }
    while (at < total) {
        g_assert_cmpint(dext_usb_pipe_io(f.in, ib, at, chunk, &got, 10000),
                        ==, 0);
        g_assert_cmpuint(got, ==, chunk);
        at += got;
    }
    g_assert_true(done_wait(&outs, total / chunk, 10000));
    g_assert_cmpint(outs.status, ==, 0);
    g_assert_true(memcmp(o, i, total) == 0);
    g_assert_cmpuint(read_reg(f.dev, DEXTLAB_USB_REG_ALTSETTING), ==, 0);
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    fixture_close(&f);
}

/* ------------------------------------------------------- interrupt */

typedef struct EvSink {
    Fixture *f;
    DextUsbBuffer *buf;
    GMutex lock;
    GCond cond;
    GArray *events;            /* DextlabUsbEvent */
    int errors;
    bool stop;
    unsigned inflight;
} EvSink;

static void ev_cb(void *opaque, int status, uint32_t actual, uint64_t ts);

typedef struct EvSlot {
    EvSink *s;
    unsigned idx;
} EvSlot;

static void ev_submit(EvSlot *slot)
{
    EvSink *s = slot->s;

    if (dext_usb_pipe_async_io(s->f->intr, s->buf, slot->idx * 64, 64, ev_cb,
                               slot) == 0) {
        s->inflight++;
    }
}

static void ev_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    EvSlot *slot = opaque;
    EvSink *s = slot->s;
    const uint8_t *b = (uint8_t *)dext_usb_buffer_data(s->buf) +
                       slot->idx * 64;

    g_mutex_lock(&s->lock);
    s->inflight--;
    if (status == 0 && actual == DEXTLAB_USB_EVENT_SIZE) {
        DextlabUsbEvent e = {
            .type = b[0], .flags = b[1], .lost = b[2] | b[3] << 8,
            .seq = b[4] | b[5] << 8 | b[6] << 16 | (uint32_t)b[7] << 24,
            .value = b[8] | b[9] << 8 | b[10] << 16 | (uint32_t)b[11] << 24,
        };

        g_array_append_val(s->events, e);
    } else if (status != -ECANCELED) {
        s->errors++;
    }
    /* resubmitting from the completion keeps the endpoint busy (the
     * completion runs on the controller's event thread, where async IO is
     * allowed) */
    if (!s->stop && status == 0) {
        ev_submit(slot);
    }
    g_cond_broadcast(&s->cond);
    g_mutex_unlock(&s->lock);
}

static bool ev_wait_count(EvSink *s, guint n, unsigned ms)
{
    gint64 deadline = g_get_monotonic_time() + ms * 1000ll;
    bool ok;

    g_mutex_lock(&s->lock);
    while (s->events->len < n &&
           g_cond_wait_until(&s->cond, &s->lock, deadline)) {
    }
    ok = s->events->len >= n;
    g_mutex_unlock(&s->lock);
    return ok;
}

static void test_interrupt_events(void)
{
    DextUsbHost *h = usb_testbed_host(tb);
    EvSlot slots[8];
    EvSink s = { 0 };
    Fixture f;
    const unsigned bursts = 25, per = 20;
    uint32_t seq0;

    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    s.f = &f;
    s.events = g_array_new(FALSE, TRUE, sizeof(DextlabUsbEvent));
    g_mutex_init(&s.lock);
    g_cond_init(&s.cond);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 8 * 64, &s.buf), ==, 0);
    seq0 = read_reg(f.dev, DEXTLAB_USB_REG_EVENT_SEQ);
    g_mutex_lock(&s.lock);
    for (unsigned k = 0; k < G_N_ELEMENTS(slots); k++) {
        slots[k] = (EvSlot){ &s, k };
        ev_submit(&slots[k]);
    }
    g_mutex_unlock(&s.lock);

    /* triggered events: in order, none lost */
    for (unsigned b = 0; b < bursts; b++) {
        g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_TRIGGER_EVENTS, per,
                                   b, NULL, 0), ==, 0);
        g_assert_true(ev_wait_count(&s, (b + 1) * per, 10000));
    }
    g_mutex_lock(&s.lock);
    g_assert_cmpuint(s.events->len, ==, bursts * per);
    for (guint k = 0; k < s.events->len; k++) {
        DextlabUsbEvent *e = &g_array_index(s.events, DextlabUsbEvent, k);

        g_assert_cmpuint(e->type, ==, DEXTLAB_USB_EVT_SOFT);
        g_assert_cmpuint(e->seq, ==, seq0 + k);
        g_assert_cmpuint(e->lost, ==, 0);
        g_assert_cmphex(e->value, ==, ((k / per) << 16) | (k % per));
    }
    g_array_set_size(s.events, 0);
    g_mutex_unlock(&s.lock);
    g_assert_cmpuint(read_reg(f.dev, DEXTLAB_USB_REG_EVENTS_LOST), ==, 0);

    /* the rate timer (virtual clock, stepped by the driver's clock hook) */
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_SET_EVENT_RATE, 1000, 0,
                               NULL, 0), ==, 0);
    g_assert_true(ev_wait_count(&s, 30, 20000));
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_SET_EVENT_RATE, 0, 0,
                               NULL, 0), ==, 0);
    g_mutex_lock(&s.lock);
    for (guint k = 1; k < s.events->len; k++) {
        DextlabUsbEvent *a = &g_array_index(s.events, DextlabUsbEvent, k - 1);
        DextlabUsbEvent *e = &g_array_index(s.events, DextlabUsbEvent, k);

        g_assert_cmpuint(e->type, ==, DEXTLAB_USB_EVT_TICK);
        g_assert_cmpuint(e->seq, ==, a->seq + 1 + e->lost);
        g_assert_cmpuint(e->value, ==, a->value + 1 + e->lost);
    }
    g_assert_cmpint(s.errors, ==, 0);
    s.stop = true;
    g_mutex_unlock(&s.lock);
    /* out-of-range rate: STALL */
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_SET_EVENT_RATE,
                               DEXTLAB_USB_EVENT_RATE_MAX + 1, 0, NULL, 0),
                    ==, -EPIPE);
    g_assert_cmpint(dext_usb_pipe_abort(f.intr), ==, 0);
    g_assert_cmpuint(s.inflight, ==, 0);
    dext_usb_buffer_free(s.buf);
    g_array_free(s.events, TRUE);
    fixture_close(&f);
}

/* ------------------------------------------------------- stall */

static void test_stall_recovery(void)
{
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbBuffer *ob, *ib;
    uint32_t got = 0;
    Fixture f;

    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 8192, &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 8192, &ib), ==, 0);
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_FORCE_STALL, 0,
                               DEXTLAB_USB_EP_BULK_IN, NULL, 0), ==, 0);
    g_assert_cmpint(dext_usb_pipe_io(f.in, ib, 0, 512, &got, 5000), ==,
                    -EPIPE);
    /* halted: further IO refused until cleared */
    g_assert_cmpint(dext_usb_pipe_io(f.in, ib, 0, 512, &got, 5000), ==,
                    -EPIPE);
    g_assert_cmpint(dext_usb_pipe_clear_stall(f.in), ==, 0);
    loop_once(&f, ob, ib, 3000, 7);
    /* SET_FEATURE(ENDPOINT_HALT) by the host, on the OUT pipe */
    g_assert_cmpint(dext_usb_device_control(f.dev, 0x02, 3, 0,
                    DEXTLAB_USB_EP_BULK_OUT, NULL, 0, NULL, 0), ==, 0);
    g_assert_cmpint(dext_usb_pipe_io(f.out, ob, 0, 100, &got, 5000), ==,
                    -EPIPE);
    g_assert_cmpint(dext_usb_pipe_clear_stall(f.out), ==, 0);
    loop_once(&f, ob, ib, 100, 8);
    g_assert_cmpuint(read_reg(f.dev, DEXTLAB_USB_REG_STALLS), >=, 2);
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    fixture_close(&f);
}

/* -------------------------------------------------- alternate setting */

static void test_alt_setting(void)
{
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbBuffer *ob, *ib;
    DextUsbPipe *old_in;
    Done in = { 0 };
    uint32_t got = 0;
    Fixture f;

    fixture_open(&f, DEXT_USB_SPEED_HIGH);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 8192, &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 8192, &ib), ==, 0);
    /* an IN parked on NAK is aborted by the switch */
    g_assert_cmpint(dext_usb_pipe_async_io(f.in, ib, 0, 512, done_cb, &in),
                    ==, 0);
    old_in = f.in;
    g_assert_cmpint(dext_usb_interface_select_alt(f.iface, 1), ==, 0);
    g_assert_true(done_wait(&in, 1, 5000));
    g_assert_cmpint(in.status, ==, -ECANCELED);
    g_assert_cmpint(dext_usb_pipe_io(old_in, ib, 0, 64, &got, 1000), ==,
                    -EBADF);
    g_assert_cmpuint(dext_usb_interface_descriptor(f.iface)->bAlternateSetting,
                     ==, 1);
    g_assert_cmpint(dext_usb_interface_copy_pipe(f.iface,
                    DEXTLAB_USB_EP_BULK_OUT, &f.out), ==, 0);
    g_assert_cmpint(dext_usb_interface_copy_pipe(f.iface,
                    DEXTLAB_USB_EP_BULK_IN, &f.in), ==, 0);
    g_assert_cmpuint(dext_usb_pipe_descriptor(f.in)->wMaxPacketSize, ==,
                     DEXTLAB_USB_BULK_MPS_HS(1));
    /* at high speed the interrupt endpoint is what the setting changes */
    g_assert_cmpint(dext_usb_interface_copy_pipe(f.iface,
                    DEXTLAB_USB_EP_INTR_IN, &f.intr), ==, 0);
    g_assert_cmpuint(dext_usb_pipe_descriptor(f.intr)->wMaxPacketSize, ==,
                     DEXTLAB_USB_INTR_MPS(1));
    g_assert_cmpuint(DEXTLAB_USB_INTR_MPS(1), !=, DEXTLAB_USB_INTR_MPS(0));
    g_assert_cmpuint(read_reg(f.dev, DEXTLAB_USB_REG_ALTSETTING), ==, 1);
    loop_once(&f, ob, ib, 1000, 3);
    loop_once(&f, ob, ib, 64, 4);
    g_assert_cmpint(dext_usb_interface_select_alt(f.iface, 7), ==, -EINVAL);
    g_assert_cmpint(dext_usb_interface_select_alt(f.iface, 0), ==, 0);
    g_assert_cmpuint(read_reg(f.dev, DEXTLAB_USB_REG_ALTSETTING), ==, 0);
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    fixture_close(&f);
}

/* ------------------------------------------------------ two at once */

typedef struct Pump {
    unsigned speed;
    int failures;
} Pump;

static gpointer pump(gpointer opaque)
{
    Pump *p = opaque;
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbBuffer *ob, *ib;
    Fixture f;

    fixture_open(&f, p->speed);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 65536, &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 65536, &ib), ==, 0);
    for (unsigned k = 0; k < 40; k++) {
        loop_once(&f, ob, ib, 1000 + k * 1500, k + p->speed * 100);
    }
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    fixture_close(&f);
    return NULL;
}

static void test_two_devices(void)
{
    Pump a = { DEXT_USB_SPEED_SUPER }, b = { DEXT_USB_SPEED_HIGH };
    GThread *ta = g_thread_new("pump-ss", pump, &a);
    GThread *tb2 = g_thread_new("pump-hs", pump, &b);

    g_thread_join(ta);
    g_thread_join(tb2);
}

/* every call on a device that is gone answers -ENODEV, touches nothing */
static void check_gone(Fixture *f, DextUsbBuffer *b)
{
    uint8_t v[4];
    Done d = { 0 };

    g_assert_false(dext_usb_device_attached(f->dev));
    g_assert_cmpint(dext_usb_pipe_async_io(f->out, b, 0, 8, done_cb, &d), ==,
                    -ENODEV);
    g_assert_cmpint(dext_usb_pipe_io(f->intr, b, 0, 16, NULL, 100), ==,
                    -ENODEV);
    g_assert_cmpint(dext_usb_pipe_abort(f->in), ==, -ENODEV);
    g_assert_cmpint(dext_usb_pipe_clear_stall(f->in), ==, -ENODEV);
    g_assert_cmpint(dext_usb_interface_select_alt(f->iface, 1), ==, -ENODEV);
    g_assert_cmpint(dext_usb_device_set_configuration(f->dev, 1), ==, -ENODEV);
    g_assert_cmpint(dext_usb_device_control(f->dev, 0xc0,
                    DEXTLAB_USB_REQ_READ_REG, 0, 0, v, 4, NULL, 100), ==,
                    -ENODEV);
    g_assert_cmpint(dext_usb_device_open(f->dev), ==, -ENODEV);
    dext_usb_interface_close(f->iface);
    g_assert_cmpint(d.n, ==, 0);
}

/* ------------------------------------------------------ hot-plug */

static void test_hotplug(void)
{
    DextPlatform *p = usb_testbed_platform(tb);
    DextUsbHost *h = usb_testbed_host(tb);
    DextUsbBuffer *ib, *ob;
    Done in = { 0 };
    Fixture f;
    uint32_t got;

    fixture_open(&f, DEXT_USB_SPEED_HIGH);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 4096, &ib), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 4096, &ob), ==, 0);
    /* in-flight IN (NAKing: the FIFO is empty) when the device goes */
    g_assert_cmpint(dext_usb_pipe_async_io(f.in, ib, 0, 512, done_cb, &in),
                    ==, 0);
    g_assert_cmpint(dext_platform_qmp(p, "device_del", "{\"id\": \"hs\"}",
                                      NULL), ==, 0);
    g_assert_cmpint(dext_platform_qmp_wait_event(p, "DEVICE_DELETED", 10000,
                                                 NULL), ==, 0);
    g_assert_true(done_wait(&in, 1, 10000));
    g_assert_cmpint(in.status, ==, -ECANCELED);
    g_assert_cmpint(dext_usb_host_wait_devices(h, 1, 10000), ==, 0);
    g_assert_false(dext_usb_device_attached(f.dev));
    g_assert_cmpint(dext_usb_pipe_io(f.in, ib, 0, 512, &got, 1000), ==,
                    -ENODEV);
    check_gone(&f, ib);
    fixture_close(&f);

    /* replug: enumerated again, works */
    g_assert_cmpint(dext_platform_qmp(p, "device_add",
                    "{\"driver\": \"dextlab-usb\", \"id\": \"hs\", "
                    "\"bus\": \"xhci.0\", \"superspeed\": false, "
                    "\"serial\": \"hs-1\"}", NULL), ==, 0);
    g_assert_cmpint(dext_usb_host_wait_devices(h, 2, 10000), ==, 0);
    fixture_open(&f, DEXT_USB_SPEED_HIGH);
    loop_once(&f, ob, ib, 777, 9);
    fixture_close(&f);
    dext_usb_buffer_free(ib);
    dext_usb_buffer_free(ob);
}

/* ------------------------------------------------ matching (core) */

static const char personalities[] =
    "[Personality dev-vid]\n"
    "IOProviderClass=IOUSBHostDevice\nIOUserClass=V\nIOUserServerName=s\n"
    "idVendor=0x1209\n"
    "[Personality dev-vidpid]\n"
    "IOProviderClass=IOUSBHostDevice\nIOUserClass=VP\nIOUserServerName=s\n"
    "idVendor=0x1209\nidProduct=0x0001\n"
    "[Personality loopback-ifc]\n"
    "IOProviderClass=IOUSBHostInterface\nIOUserClass=L\nIOUserServerName=s\n"
    "idVendor=0x1209\nbInterfaceClass=0xff\nbInterfaceSubClass=0x44\n"
    "bInterfaceProtocol=1\nbInterfaceNumber=0\n"
    "[Personality hid-ifc]\n"
    "IOProviderClass=IOUSBHostInterface\nIOUserClass=H\nIOUserServerName=s\n"
    "bInterfaceClass=3\n"
    "[Entitlements]\ntransport.usb=0x1209\n";

static const char unentitled[] =
    "[Personality greedy]\n"
    "IOProviderClass=IOUSBHostDevice\nIOUserClass=G\nIOUserServerName=g\n"
    "IOProbeScore=5000\nidVendor=0x1209\n"
    "[Entitlements]\ntransport.usb=0x46f4\n";

static const char *winner(GPtrArray *ps, const DextUsbMatchKeys *k)
{
    DextDeviceInfo info;
    GArray *w;
    const char *name = NULL;

    dext_usb_match_info(k, &info);
    w = dext_match_select(ps, &info, NULL);
    if (w->len == 1) {
        name = g_array_index(w, DextMatchResult, 0).p->name;
    }
    g_array_free(w, TRUE);
    return name;
}

/* the keys a real enumeration yields drive the core matcher: the most
 * specific device personality wins, interface personalities match the
 * interface only, a bundle without the USB entitlement is refused */
static void test_matching(void)
{
    GError *err = NULL;
    DextBundle *b = dext_bundle_parse("usb.personality", personalities,
                                      sizeof(personalities) - 1, &err);
    DextBundle *g = dext_bundle_parse("greedy.personality", unentitled,
                                      sizeof(unentitled) - 1, &err);
    GPtrArray *ps = g_ptr_array_new();
    DextUsbMatchKeys k;
    Fixture f;

    g_assert_no_error(err);
    g_assert_nonnull(b);
    g_assert_nonnull(g);
    for (guint i = 0; i < b->personalities->len; i++) {
        g_ptr_array_add(ps, b->personalities->pdata[i]);
    }
    for (guint i = 0; i < g->personalities->len; i++) {
        g_ptr_array_add(ps, g->personalities->pdata[i]);
    }
    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    dext_usb_device_match_keys(f.dev, &k);
    g_assert_cmpstr(winner(ps, &k), ==, "dev-vidpid");
    dext_usb_interface_match_keys(f.iface, &k);
    g_assert_true(k.is_interface);
    g_assert_cmpuint(k.bInterfaceNumber, ==, DEXTLAB_USB_IFACE_NUM);
    g_assert_cmpuint(k.bInterfaceClass, ==, DEXTLAB_USB_IFACE_CLASS);
    g_assert_cmpstr(winner(ps, &k), ==, "loopback-ifc");
    fixture_close(&f);
    g_ptr_array_free(ps, TRUE);
    dext_bundle_free(b);
    dext_bundle_free(g);
}

/* ------------------------------------------------ hostile host */

/* Random control requests (every recipient, type, wValue/wIndex/wLength,
 * random OUT data) must neither abort nor hang QEMU nor wedge the device:
 * afterwards it still answers and loops data.  Only the requests that
 * legitimately re-address or re-configure the device are left out (they
 * are the host's state, not the device's robustness). */
static void test_hostile_requests(void)
{
    DextUsbHost *h = usb_testbed_host(tb);
    GRand *r = g_rand_new_with_seed(0xd3c7);
    uint8_t data[4096];
    DextUsbBuffer *ob, *ib;
    unsigned stalls = 0, ok = 0;
    Fixture f;

    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    for (unsigned i = 0; i < 3000; i++) {
        uint8_t rt = g_rand_int(r), req = g_rand_int_range(r, 0, 0x20);
        uint16_t val = g_rand_int(r), idx = g_rand_int(r);
        uint16_t len = g_rand_boolean(r) ? g_rand_int_range(r, 0, 16)
                                         : g_rand_int_range(r, 0, 4097);
        int ret;

        if (g_rand_boolean(r)) {
            idx = g_rand_int_range(r, 0, 0x100);   /* plausible indexes */
        }
        if ((rt & 0x60) == 0 && (req == 5 || req == 9 || req == 11)) {
            continue;          /* SET_ADDRESS/CONFIGURATION/INTERFACE */
        }
        if ((rt & 0x60) == 0x40 && req == DEXTLAB_USB_REQ_SET_EVENT_RATE) {
            val %= 2000;       /* keep the tick load sane */
        }
        for (unsigned k = 0; k < len; k++) {
            data[k] = g_rand_int(r);
        }
        ret = dext_usb_device_control(f.dev, rt, req, val, idx, data, len,
                                      NULL, 5000);
        g_assert_true(ret == 0 || ret == -EPIPE);
        stalls += ret == -EPIPE;
        ok += ret == 0;
    }
    g_assert_cmpuint(stalls, >, 0);
    g_assert_cmpuint(ok, >, 0);
    g_assert_true(dext_platform_alive(usb_testbed_platform(tb)));
    g_assert_cmphex(read_reg(f.dev, DEXTLAB_USB_REG_ID), ==,
                    DEXTLAB_USB_ID_VALUE);
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_SET_EVENT_RATE, 0, 0,
                               NULL, 0), ==, 0);
    /* whatever got halted on the device: clear it and loop data */
    g_assert_cmpint(dext_usb_pipe_clear_stall(f.out), ==, 0);
    g_assert_cmpint(dext_usb_pipe_clear_stall(f.in), ==, 0);
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_RESET_FIFO, 0, 0, NULL,
                               0), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 65536, &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(h, 65536, &ib), ==, 0);
    loop_once(&f, ob, ib, 40000, 11);
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    g_rand_free(r);
    fixture_close(&f);
}

/* ------------------------------------------------ no MSI-X */

/* the driver's polling fallback (no interrupt binding): same results */
static void test_poll_mode(void)
{
    static const char *const devs[] = {
        "qemu-xhci,id=xhci",
        "dextlab-usb,id=p,bus=xhci.0",
        NULL,
    };
    DextUsbHostConfig cfg = { .xhci = { .force_poll = true } };
    UsbTestbed *saved = tb;
    DextUsbBuffer *ob, *ib;
    DextXhciStats st;
    Fixture f;

    tb = usb_testbed_start(devs, &cfg);
    g_assert_nonnull(tb);
    g_assert_cmpint(dext_usb_host_wait_devices(usb_testbed_host(tb), 1,
                                               20000), ==, 0);
    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    g_assert_cmpint(dext_usb_buffer_alloc(usb_testbed_host(tb), 1 << 20,
                                          &ob), ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(usb_testbed_host(tb), 1 << 20,
                                          &ib), ==, 0);
    loop_once(&f, ob, ib, 60000, 1);
    g_assert_cmpint(vendor_out(f.dev, DEXTLAB_USB_REQ_TRIGGER_EVENTS, 1, 0,
                               NULL, 0), ==, 0);
    g_assert_cmpint(dext_usb_pipe_io(f.intr, ib, 0, 64, NULL, 5000), ==, 0);
    dext_xhci_stats(dext_usb_host_xhci(usb_testbed_host(tb)), &st);
    g_assert_false(st.msix);
    g_assert_cmpuint(st.irqs, ==, 0);
    g_assert_cmpuint(st.events, >, 0);
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    /* a device reference outlives the host: every call -ENODEV */
    usb_testbed_stop(tb);
    g_assert_false(dext_usb_device_attached(f.dev));
    g_assert_cmpint(dext_usb_pipe_abort(f.in), ==, -ENODEV);
    g_assert_cmpint(dext_usb_pipe_clear_stall(f.out), ==, -ENODEV);
    g_assert_cmpint(dext_usb_interface_select_alt(f.iface, 1), ==, -ENODEV);
    g_assert_cmpint(dext_usb_device_set_configuration(f.dev, 1), ==, -ENODEV);
    dext_usb_interface_close(f.iface);
    dext_usb_device_unref(f.dev);
    tb = saved;
}

/* ------------------------------------------------ completion context */

typedef struct Reentry {
    Fixture *f;
    DextUsbBuffer *b;
    int sync_ret, ctl_ret;
    Done done;
} Reentry;

static void reentry_cb(void *opaque, int status, uint32_t actual,
                       uint64_t ts)
{
    Reentry *r = opaque;
    uint8_t v[4];

    /* completions run on the event thread: waiting there would deadlock */
    r->sync_ret = dext_usb_pipe_io(r->f->out, r->b, 0, 1, NULL, 1000);
    r->ctl_ret = dext_usb_device_control(r->f->dev, 0xc0,
                                         DEXTLAB_USB_REQ_READ_REG, 0, 0, v, 4,
                                         NULL, 1000);
    done_cb(&r->done, status, actual, ts);
}

static void test_sync_in_completion(void)
{
    DextUsbBuffer *ob, *ib;
    Reentry r = { 0 };
    uint32_t got;
    Fixture f;

    fixture_open(&f, DEXT_USB_SPEED_SUPER);
    g_assert_cmpint(dext_usb_buffer_alloc(usb_testbed_host(tb), 4096, &ob),
                    ==, 0);
    g_assert_cmpint(dext_usb_buffer_alloc(usb_testbed_host(tb), 4096, &ib),
                    ==, 0);
    r.f = &f;
    r.b = ob;
    g_assert_cmpint(dext_usb_pipe_async_io(f.in, ib, 0, 64, reentry_cb, &r),
                    ==, 0);
    g_assert_cmpint(dext_usb_pipe_io(f.out, ob, 0, 10, &got, 5000), ==, 0);
    g_assert_true(done_wait(&r.done, 1, 5000));
    g_assert_cmpint(r.done.status, ==, 0);
    g_assert_cmpint(r.sync_ret, ==, -EDEADLK);
    g_assert_cmpint(r.ctl_ret, ==, -EDEADLK);
    dext_usb_buffer_free(ob);
    dext_usb_buffer_free(ib);
    fixture_close(&f);
}

int main(int argc, char **argv)
{
    int ret;

    g_test_init(&argc, &argv, NULL);
    tb = usb_testbed_start(devices, NULL);
    if (!tb) {
        return 1;
    }
    if (dext_usb_host_wait_devices(usb_testbed_host(tb), 2, 20000) < 0) {
        fprintf(stderr, "devices did not enumerate\n");
        usb_testbed_stop(tb);
        return 1;
    }
    g_test_add_func("/dextlab-usb/e2e/enumerate/super-speed", test_enum_super);
    g_test_add_func("/dextlab-usb/e2e/enumerate/high-speed", test_enum_high);
    g_test_add_func("/dextlab-usb/e2e/control", test_control);
    g_test_add_func("/dextlab-usb/e2e/bulk/loopback-1b-1mib",
                    test_bulk_loopback);
    g_test_add_func("/dextlab-usb/e2e/bulk/stream-hs", test_bulk_stream_hs);
    g_test_add_func("/dextlab-usb/e2e/bulk/event-burst", test_bulk_event_burst);
    g_test_add_func("/dextlab-usb/e2e/interrupt/events", test_interrupt_events);
    g_test_add_func("/dextlab-usb/e2e/stall-recovery", test_stall_recovery);
    g_test_add_func("/dextlab-usb/e2e/alt-setting", test_alt_setting);
    g_test_add_func("/dextlab-usb/e2e/two-devices", test_two_devices);
    g_test_add_func("/dextlab-usb/e2e/hotplug", test_hotplug);
    g_test_add_func("/dextlab-usb/e2e/matching", test_matching);
    g_test_add_func("/dextlab-usb/e2e/poll-mode", test_poll_mode);
    g_test_add_func("/dextlab-usb/e2e/sync-in-completion",
                    test_sync_in_completion);
    g_test_add_func("/dextlab-usb/e2e/hostile-requests", test_hostile_requests);
    ret = g_test_run();
    usb_testbed_stop(tb);
    return ret;
}
