/*
 * The USB provider (usb-provider.h) over the real test bed: QEMU with
 * qemu-xhci and two dextlab-usb devices (SuperSpeed, high speed), the
 * platform xHCI family implementation, fake publish/terminate callbacks,
 * and a raw client speaking the provider protocol with the IPC codec on a
 * socketpair.  What a client driver (harness/lib/usb.c) relies on is
 * checked message by message, including every refusal of bad input and
 * the order unplug promises: pending IO posted -ECANCELED, then the nubs
 * terminated (interfaces first).
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "usb-testbed.h"
#include "usb-provider.h"
#include "ipc.h"
#include "hw/dextlab/dextlab-usb-regs.h"

static UsbTestbed *tb;
static DextUsbProvider *prov;

static const char *const devices[] = {
    "qemu-xhci,id=xhci",
    "dextlab-usb,id=ss,bus=xhci.0,fifo-size=2097152,serial=ss-1",
    "dextlab-usb,id=hs,bus=xhci.0,superspeed=off,serial=hs-1",
    NULL,
};

/* ------------------------------------------------ fake publisher */

typedef struct Pub {
    uint64_t id, parent;
    char *name, *cls;
    GVariant *props;
    bool terminated;
    bool client_had_data;      /* watch_fd readable when terminated */
} Pub;

static GMutex pub_lock;
static GCond pub_cond;
static GPtrArray *pubs;
static GArray *term_order;      /* uint64 ids */
static uint64_t next_id = 100;
static int watch_fd = -1;

static int fake_publish(void *o, uint64_t parent, const char *name,
                        const char *cls, const char *props, uint64_t *id)
{
    GError *err = NULL;
    GVariant *v = g_variant_parse(G_VARIANT_TYPE("a{sv}"), props, NULL, NULL,
                                  &err);
    Pub *p;

    if (!v) {
        g_printerr("bad properties %s: %s\n", props, err->message);
        g_error_free(err);
        return -EINVAL;
    }
    p = g_new0(Pub, 1);
    p->parent = parent;
    p->name = g_strdup(name);
    p->cls = g_strdup(cls);
    p->props = g_variant_ref_sink(v);
    g_mutex_lock(&pub_lock);
    p->id = ++next_id;
    g_ptr_array_add(pubs, p);
    g_cond_broadcast(&pub_cond);
    g_mutex_unlock(&pub_lock);
    *id = p->id;
    return 0;
}

static int fake_terminate(void *o, uint64_t id)
{
    int ret = -ENOENT;

    g_mutex_lock(&pub_lock);
    for (unsigned k = 0; k < pubs->len; k++) {
        Pub *p = g_ptr_array_index(pubs, k);

        if (p->id == id && !p->terminated) {
            struct pollfd pf = { .fd = watch_fd, .events = POLLIN };

            p->terminated = true;
            p->client_had_data = watch_fd >= 0 && poll(&pf, 1, 0) == 1;
            g_array_append_val(term_order, id);
            ret = 0;
        }
    }
    g_cond_broadcast(&pub_cond);
    g_mutex_unlock(&pub_lock);
    return ret;
}

static const DextUsbProviderOps fake_ops = {
    .publish = fake_publish,
    .terminate = fake_terminate,
};

static uint32_t prop(Pub *p, const char *key)
{
    guint32 v = 0xdeadbeef;

    g_variant_lookup(p->props, key, "u", &v);
    return v;
}

static unsigned live_count(void)
{
    unsigned n = 0;

    for (unsigned k = 0; k < pubs->len; k++) {
        n += !((Pub *)g_ptr_array_index(pubs, k))->terminated;
    }
    return n;
}

static void wait_live(unsigned n)
{
    gint64 deadline = g_get_monotonic_time() + 15 * G_USEC_PER_SEC;

    g_mutex_lock(&pub_lock);
    while (live_count() != n &&
           g_cond_wait_until(&pub_cond, &pub_lock, deadline)) {
    }
    g_assert_cmpuint(live_count(), ==, n);
    g_mutex_unlock(&pub_lock);
}

/* the live nub of class @cls of the device at @speed */
static Pub *nub(const char *cls, unsigned speed)
{
    Pub *r = NULL;

    g_mutex_lock(&pub_lock);
    for (unsigned k = 0; k < pubs->len; k++) {
        Pub *p = g_ptr_array_index(pubs, k);

        if (!p->terminated && !strcmp(p->cls, cls) &&
            prop(p, "speed") == speed) {
            g_assert_null(r);
            r = p;
        }
    }
    g_mutex_unlock(&pub_lock);
    g_assert_nonnull(r);
    return r;
}

/* USB_BUFFER_ALLOC directions (DEXT_DMA_* of dext/memory.h) */
#define DIR_IN      1u
#define DIR_OUT     2u
#define DIR_INOUT   3u

#define DEV "IOUSBHostDevice"
#define IFC "IOUSBHostInterface"
#define SS DEXT_USB_SPEED_SUPER
#define HS DEXT_USB_SPEED_HIGH

/* ------------------------------------------------------ raw client */

typedef struct Ev {
    uint64_t ref;
    int status;
    uint32_t actual;
    uint64_t ts;
} Ev;

typedef struct Cli {
    int fd;
    uint32_t serial;
    GArray *evs;               /* Ev, as posted */
} Cli;

static Cli *cli_new(uint64_t nub_id)
{
    Cli *c = g_new0(Cli, 1);
    int sv[2];

    g_assert_cmpint(dext_ipc_socketpair(sv), ==, 0);
    g_assert_cmpint(dext_usb_provider_serve(prov, nub_id, sv[1]), ==, 0);
    c->fd = sv[0];
    c->evs = g_array_new(FALSE, FALSE, sizeof(Ev));
    return c;
}

static void cli_free(Cli *c)
{
    close(c->fd);
    g_array_free(c->evs, TRUE);
    g_free(c);
}

/* one message from the provider: an event is queued (1), a reply (0) */
static int cli_recv(Cli *c, DextMsg *r, int ms)
{
    char *why = NULL;
    int rc = dext_ipc_recv(c->fd, DEXT_CH_PROV | DEXT_CH_PROVEV, r, ms, &why);

    if (rc < 0) {
        g_free(why);
        return rc;
    }
    if (r->type == DEXT_MSG_USB_IO_DONE && !(r->flags & DEXT_MSG_F_REPLY)) {
        Ev e;
        guint64 ref, ts;

        g_assert_true(r->flags & DEXT_MSG_F_POSTED);
        g_variant_get(r->body, "(tiut)", &ref, &e.status, &e.actual, &ts);
        e.ref = ref;
        e.ts = ts;
        g_array_append_val(c->evs, e);
        dext_msg_clear(r);
        return 1;
    }
    g_assert_true(r->flags & DEXT_MSG_F_REPLY);
    return 0;
}

/* request -> 0 with *out (owned), or the ERROR's -errno */
static int call_fd(Cli *c, uint16_t type, GVariant *body, GVariant **out,
                   int *fd)
{
    DextMsg m, r;
    int rc;

    dext_msg_init(&m, type, body);
    m.serial = ++c->serial;
    rc = dext_ipc_send(c->fd, &m);
    dext_msg_clear(&m);
    if (rc < 0) {
        return rc;
    }
    for (;;) {
        rc = cli_recv(c, &r, 15000);
        if (rc == -ETIMEDOUT) {
            return -ENOLINK;    /* no reply at all (not an ERROR -ETIMEDOUT) */
        }
        if (rc < 0) {
            return rc;
        }
        if (rc == 1) {
            continue;
        }
        g_assert_cmpuint(r.reply_to, ==, c->serial);
        if (r.type == DEXT_MSG_ERROR) {
            const char *why;

            g_variant_get(r.body, "(i&s)", &rc, &why);
            g_assert_cmpstr(why, !=, "");
            dext_msg_clear(&r);
            return rc;
        }
        g_assert_cmpuint(r.type, ==, type);
        if (out) {
            *out = g_variant_ref(r.body);
        }
        if (fd) {
            *fd = dext_msg_take_fd(&r, 0);
        }
        dext_msg_clear(&r);
        return 0;
    }
}

static int call(Cli *c, uint16_t type, GVariant *body, GVariant **out)
{
    return call_fd(c, type, body, out, NULL);
}

static int call0(Cli *c, uint16_t type, GVariant *body)
{
    return call(c, type, body, NULL);
}

/* the event of @ref, waiting up to @ms */
static bool cli_event(Cli *c, uint64_t ref, Ev *out, int ms)
{
    gint64 deadline = g_get_monotonic_time() + ms * 1000ll;

    for (;;) {
        DextMsg r;
        int left;

        for (unsigned k = 0; k < c->evs->len; k++) {
            Ev *e = &g_array_index(c->evs, Ev, k);

            if (e->ref == ref) {
                *out = *e;
                g_array_remove_index(c->evs, k);
                return true;
            }
        }
        /* what is already on the socket counts even with @ms 0 */
        left = MAX(0, (int)((deadline - g_get_monotonic_time()) / 1000));
        int rc = cli_recv(c, &r, left);
        if (rc < 0) {
            return false;
        }
        g_assert_cmpint(rc, ==, 1);    /* no reply is outstanding */
    }
}

typedef struct Buf {
    uint64_t handle, cap;
    uint8_t *map;
} Buf;

static int buf_alloc(Cli *c, uint64_t cap, uint32_t dir, Buf *b)
{
    GVariant *r = NULL;
    guint64 h, got, off;
    int fd = -1, rc;

    rc = call_fd(c, DEXT_MSG_USB_BUFFER_ALLOC,
                 g_variant_new("(tu)", (guint64)cap, dir), &r, &fd);
    if (rc < 0) {
        return rc;
    }
    g_variant_get(r, "(ttt)", &h, &got, &off);
    g_variant_unref(r);
    g_assert_cmpuint(got, ==, cap);
    g_assert_cmpuint(off % 4096, ==, 0);
    g_assert_cmpint(fd, >=, 0);
    b->handle = h;
    b->cap = cap;
    b->map = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off);
    g_assert_true(b->map != MAP_FAILED);
    close(fd);
    return 0;
}

static int buf_free(Cli *c, Buf *b)
{
    int rc = call0(c, DEXT_MSG_USB_BUFFER_FREE,
                   g_variant_new("(t)", (guint64)b->handle));

    if (rc == 0) {
        munmap(b->map, b->cap);
        b->map = NULL;
    }
    return rc;
}

/* USB_IO: sync (ref 0) -> status of the transfer (or the ERROR), async
 * -> 0 queued or the ERROR */
static int io(Cli *c, uint8_t ep, Buf *b, uint64_t off, uint32_t len,
              uint32_t tmo, uint64_t ref, uint32_t *actual)
{
    GVariant *r = NULL;
    gint32 st;
    guint32 act;
    guint64 ts;
    int rc = call(c, DEXT_MSG_USB_IO,
                  g_variant_new("(yttuut)", ep, (guint64)b->handle,
                                (guint64)off, len, tmo, (guint64)ref), &r);

    if (rc < 0) {
        return rc;
    }
    g_variant_get(r, "(iut)", &st, &act, &ts);
    g_variant_unref(r);
    if (ref) {
        g_assert_cmpint(st, ==, 0);
        g_assert_cmpuint(act, ==, 0);
    } else if (st == 0) {
        g_assert_cmpuint(ts, >, 0);
    }
    if (actual) {
        *actual = act;
    }
    return st;
}

static int control(Cli *c, uint8_t rt, uint8_t req, uint16_t val,
                   uint16_t idx, uint16_t wlen, const void *odata,
                   size_t olen, void *in, uint32_t *actual)
{
    GVariant *r = NULL, *data;
    guint32 act;
    int rc = call(c, DEXT_MSG_USB_CONTROL,
                  g_variant_new("(yyqqqu@ay)", rt, req, val, idx, wlen, 0u,
                                g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE,
                                                          odata ? odata : "",
                                                          olen, 1)), &r);

    if (rc < 0) {
        return rc;
    }
    g_variant_get(r, "(u@ay)", &act, &data);
    if (in) {
        gsize n;
        const void *p = g_variant_get_fixed_array(data, &n, 1);

        g_assert_cmpuint(n, <=, wlen);
        memcpy(in, p, n);
    }
    if (actual) {
        *actual = act;
    }
    g_variant_unref(data);
    g_variant_unref(r);
    return 0;
}

static uint32_t read_reg(Cli *c, unsigned reg)
{
    uint8_t b[4];
    uint32_t got = 0;

    g_assert_cmpint(control(c, 0xc0, DEXTLAB_USB_REQ_READ_REG, 0, reg, 4,
                            NULL, 0, b, &got), ==, 0);
    g_assert_cmpuint(got, ==, 4);
    return b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
}

static int fd_baseline = -1;

static int count_fds(void)
{
    GDir *d = g_dir_open("/proc/self/fd", 0, NULL);
    int n = 0;

    g_assert_nonnull(d);
    while (g_dir_read_name(d)) {
        n++;
    }
    g_dir_close(d);
    return n;
}

static void check_clean(void)
{
    DextUsbProviderStats st;
    gint64 deadline = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;

    /* channels close on their own threads */
    do {
        dext_usb_provider_stats(prov, &st);
        if (st.channels == 0) {
            break;
        }
        g_usleep(10000);
    } while (g_get_monotonic_time() < deadline);
    g_assert_cmpuint(st.channels, ==, 0);
    g_assert_cmpuint(st.buffers, ==, 0);
    g_assert_cmpuint(st.pending_io, ==, 0);
    /* every channel's socket and eventfd closed, every buffer fd too */
    g_assert_cmpint(count_fds(), ==, fd_baseline);
}

/* ------------------------------------------------------------ tests */

static void check_published(unsigned speed, const char *serial)
{
    Pub *d = nub(DEV, speed), *i = nub(IFC, speed);
    g_autofree char *name = NULL;
    const char *s;

    name = g_strdup_printf("usb@%u", prop(d, "port"));
    g_assert_cmpstr(d->name, ==, name);
    g_assert_cmpuint(d->parent, ==, 0);
    g_assert_cmpuint(prop(d, "idVendor"), ==, DEXTLAB_USB_VID);
    g_assert_cmpuint(prop(d, "idProduct"), ==, DEXTLAB_USB_PID);
    g_assert_cmpuint(prop(d, "bcdDevice"), ==, DEXTLAB_USB_BCD_DEVICE);
    g_assert_cmpuint(prop(d, "bDeviceClass"), ==, 0);
    g_assert_cmpuint(prop(d, "bConfigurationValue"), ==,
                     DEXTLAB_USB_CONFIG_VALUE);
    g_assert_true(g_variant_lookup(d->props, "USB Serial Number", "&s", &s));
    g_assert_cmpstr(s, ==, serial);
    g_assert_true(g_variant_lookup(d->props, "USB Vendor Name", "&s", &s));
    g_assert_cmpstr(s, ==, DEXTLAB_USB_MANUFACTURER);
    g_assert_false(g_variant_lookup(d->props, "bInterfaceNumber", "u", NULL));

    g_assert_cmpstr(i->name, ==, "if0");
    g_assert_cmpuint(i->parent, ==, d->id);
    g_assert_cmpuint(prop(i, "idVendor"), ==, DEXTLAB_USB_VID);
    g_assert_cmpuint(prop(i, "idProduct"), ==, DEXTLAB_USB_PID);
    g_assert_cmpuint(prop(i, "bInterfaceNumber"), ==, DEXTLAB_USB_IFACE_NUM);
    g_assert_cmpuint(prop(i, "bInterfaceClass"), ==, DEXTLAB_USB_IFACE_CLASS);
    g_assert_cmpuint(prop(i, "bInterfaceSubClass"), ==,
                     DEXTLAB_USB_IFACE_SUBCLASS);
    g_assert_cmpuint(prop(i, "bInterfaceProtocol"), ==,
                     DEXTLAB_USB_IFACE_PROTOCOL);
    g_assert_cmpuint(prop(i, "bConfigurationValue"), ==,
                     DEXTLAB_USB_CONFIG_VALUE);
    g_assert_cmpuint(prop(i, "port"), ==, prop(d, "port"));
}

static void test_publish(void)
{
    wait_live(4);
    check_published(SS, "ss-1");
    check_published(HS, "hs-1");
}

/* the family's device at @speed, referenced */
static DextUsbDevice *host_dev(unsigned speed)
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

static void check_info(Cli *c, unsigned speed)
{
    GVariant *r = NULL, *dv, *cv;
    guint32 sp;
    guint8 cur;
    const uint8_t *dd, *cd, *raw;
    gsize dn, cn;
    size_t rawlen;
    DextUsbDevice *d = host_dev(speed);

    g_assert_cmpint(call(c, DEXT_MSG_USB_INFO, g_variant_new("()"), &r), ==,
                    0);
    g_variant_get(r, "(uy@ay@ay)", &sp, &cur, &dv, &cv);
    g_assert_cmpuint(sp, ==, speed);
    g_assert_cmpuint(cur, ==, DEXTLAB_USB_CONFIG_VALUE);
    dd = g_variant_get_fixed_array(dv, &dn, 1);
    g_assert_cmpuint(dn, ==, 18);
    g_assert_cmpuint(dd[0], ==, 18);
    g_assert_cmpuint(dd[1], ==, 1);
    g_assert_cmphex(dd[2] | dd[3] << 8, ==, speed == SS
                    ? DEXTLAB_USB_BCD_USB_SS : DEXTLAB_USB_BCD_USB_HS);
    g_assert_cmpuint(dd[7], ==, speed == SS ? DEXTLAB_USB_EP0_MPS_SS_EXP
                                            : DEXTLAB_USB_EP0_MPS_HS);
    g_assert_cmphex(dd[8] | dd[9] << 8, ==, DEXTLAB_USB_VID);
    g_assert_cmphex(dd[10] | dd[11] << 8, ==, DEXTLAB_USB_PID);
    g_assert_cmphex(dd[12] | dd[13] << 8, ==, DEXTLAB_USB_BCD_DEVICE);
    g_assert_cmpuint(dd[17], ==, 1);
    /* the configuration set as the device sent it */
    cd = g_variant_get_fixed_array(cv, &cn, 1);
    raw = dext_usb_device_config_raw(d, &rawlen);
    g_assert_cmpmem(cd, cn, raw, rawlen);
    g_assert_cmpuint(cn, ==, cd[2] | cd[3] << 8);
    g_assert_cmpuint(cd[5], ==, DEXTLAB_USB_CONFIG_VALUE);
    /* the device descriptor equals what GET_DESCRIPTOR returns (no open
     * needed for a standard IN request) */
    {
        uint8_t buf[18];
        uint32_t got = 0;

        g_assert_cmpint(control(c, 0x80, 6, 1 << 8, 0, 18, NULL, 0, buf,
                                &got), ==, 0);
        g_assert_cmpuint(got, ==, 18);
        g_assert_cmpmem(buf, 18, dd, 18);
    }
    g_variant_unref(dv);
    g_variant_unref(cv);
    g_variant_unref(r);
    dext_usb_device_unref(d);
}

static void test_info(void)
{
    Cli *a = cli_new(nub(DEV, SS)->id), *b = cli_new(nub(IFC, SS)->id);
    Cli *h = cli_new(nub(IFC, HS)->id);

    check_info(a, SS);
    check_info(b, SS);
    check_info(h, HS);
    cli_free(a);
    cli_free(b);
    cli_free(h);
    check_clean();
}

static void test_open(void)
{
    uint64_t ifn = nub(IFC, SS)->id;
    Cli *a = cli_new(ifn), *b = cli_new(ifn), *d = cli_new(nub(DEV, SS)->id);
    Buf bb;

    g_assert_cmpint(buf_alloc(b, 4096, DIR_IN, &bb), ==, 0);
    g_assert_cmpint(io(b, DEXTLAB_USB_EP_BULK_IN, &bb, 0, 512, 0, 0, NULL),
                    ==, -EBUSY);
    g_assert_cmpint(call0(a, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(a, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(b, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                    -EBUSY);
    g_assert_cmpint(io(b, DEXTLAB_USB_EP_BULK_IN, &bb, 0, 512, 0, 0, NULL),
                    ==, -EBUSY);
    g_assert_cmpint(call0(b, DEXT_MSG_USB_CLOSE, g_variant_new("()")), ==,
                    -EBUSY);
    /* the device nub is another object: its own open */
    g_assert_cmpint(call0(d, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(a, DEXT_MSG_USB_CLOSE, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(b, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(a, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                    -EBUSY);
    /* a channel that closes releases its open */
    cli_free(b);
    {
        gint64 deadline = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
        int rc;

        while ((rc = call0(a, DEXT_MSG_USB_OPEN, g_variant_new("()"))) ==
               -EBUSY && g_get_monotonic_time() < deadline) {
            g_usleep(10000);
        }
        g_assert_cmpint(rc, ==, 0);
    }
    cli_free(a);
    cli_free(d);
    check_clean();
}

static void test_control(void)
{
    Cli *d = cli_new(nub(DEV, SS)->id), *i = cli_new(nub(IFC, SS)->id);
    uint8_t v[4] = { 0x78, 0x56, 0x34, 0x12 }, buf[64], echo[200];
    uint32_t got = 0;

    /* vendor and OUT requests need the open */
    g_assert_cmpint(control(d, 0xc0, DEXTLAB_USB_REQ_READ_REG, 0,
                            DEXTLAB_USB_REG_ID, 4, NULL, 0, buf, &got), ==,
                    -EBUSY);
    g_assert_cmpint(call0(d, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmphex(read_reg(d, DEXTLAB_USB_REG_ID), ==, DEXTLAB_USB_ID_VALUE);
    g_assert_cmphex(read_reg(d, DEXTLAB_USB_REG_SPEED), ==,
                    DEXTLAB_USB_SPEED_SUPER);
    g_assert_cmpint(control(d, 0x40, DEXTLAB_USB_REQ_WRITE_REG, 0,
                            DEXTLAB_USB_REG_SCRATCH, 4, v, 4, NULL, &got), ==,
                    0);
    g_assert_cmpuint(got, ==, 4);
    g_assert_cmphex(read_reg(d, DEXTLAB_USB_REG_SCRATCH), ==, 0x12345678);
    /* a data stage both ways, shorter IN than asked */
    for (unsigned k = 0; k < sizeof(echo); k++) {
        echo[k] = (uint8_t)(k * 13 + 1);
    }
    g_assert_cmpint(control(d, 0x40, DEXTLAB_USB_REQ_ECHO, 0, 0, sizeof(echo),
                            echo, sizeof(echo), NULL, NULL), ==, 0);
    {
        uint8_t back[DEXTLAB_USB_ECHO_MAX];

        g_assert_cmpint(control(d, 0xc0, DEXTLAB_USB_REQ_ECHO, 0, 0,
                                sizeof(back), NULL, 0, back, &got), ==, 0);
        g_assert_cmpuint(got, ==, sizeof(echo));
        g_assert_cmpmem(back, got, echo, sizeof(echo));
    }
    /* the device's refusals arrive as -EPIPE; EP0 keeps working */
    g_assert_cmpint(control(d, 0xc0, DEXTLAB_USB_REQ_READ_REG, 0, 999, 4,
                            NULL, 0, buf, &got), ==, -EPIPE);
    g_assert_cmpint(control(d, 0x40, DEXTLAB_USB_REQ_WRITE_REG, 0,
                            DEXTLAB_USB_REG_ID, 4, v, 4, NULL, NULL), ==,
                    -EPIPE);
    g_assert_cmphex(read_reg(d, DEXTLAB_USB_REG_ID), ==, DEXTLAB_USB_ID_VALUE);
    /* malformed requests, refused by the provider */
    g_assert_cmpint(control(d, 0xc0, DEXTLAB_USB_REQ_READ_REG, 0, 0, 4, v, 4,
                            buf, NULL), ==, -EINVAL);          /* IN + data */
    g_assert_cmpint(control(d, 0x40, DEXTLAB_USB_REQ_WRITE_REG, 0,
                            DEXTLAB_USB_REG_SCRATCH, 4, v, 3, NULL, NULL), ==,
                    -EINVAL);                                  /* short OUT */
    g_assert_cmpint(control(d, 0xc0, DEXTLAB_USB_REQ_ECHO, 0, 0, 4097, NULL,
                            0, NULL, NULL), ==, -EINVAL);
    g_assert_cmpint(control(d, 0xe0, 0, 0, 0, 0, NULL, 0, NULL, NULL), ==,
                    -EINVAL);                                  /* reserved */
    /* the provider's own standard requests */
    g_assert_cmpint(control(d, 0x00, 9, 1, 0, 0, NULL, 0, NULL, NULL), ==,
                    -EPERM);
    g_assert_cmpint(control(d, 0x01, 11, 1, 0, 0, NULL, 0, NULL, NULL), ==,
                    -EPERM);
    g_assert_cmpint(control(d, 0x00, 5, 9, 0, 0, NULL, 0, NULL, NULL), ==,
                    -EPERM);
    /* interface nub: itself and its endpoints only */
    g_assert_cmpint(call0(i, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(control(i, 0x81, 10, 0, DEXTLAB_USB_IFACE_NUM, 1, NULL,
                            0, buf, &got), ==, 0);         /* GET_INTERFACE */
    g_assert_cmpuint(got, ==, 1);
    g_assert_cmpuint(buf[0], ==, 0);
    g_assert_cmpint(control(i, 0x81, 10, 0, 5, 1, NULL, 0, buf, &got), ==,
                    -EPERM);
    /* CLEAR_FEATURE(ENDPOINT_HALT) of its endpoint, not of another */
    g_assert_cmpint(control(i, 0x02, 1, 0, DEXTLAB_USB_EP_BULK_IN, 0, NULL, 0,
                            NULL, NULL), ==, 0);
    g_assert_cmpint(control(i, 0x02, 1, 0, 0x84, 0, NULL, 0, NULL, NULL), ==,
                    -EPERM);
    g_assert_cmpint(control(i, 0x00, 3, 1, 0, 0, NULL, 0, NULL, NULL), ==,
                    -EPERM);                  /* SET_FEATURE on the device */
    g_assert_cmpint(control(i, 0x80, 6, 1 << 8, 0, 18, NULL, 0, buf, &got),
                    ==, 0);
    g_assert_cmphex(read_reg(i, DEXTLAB_USB_REG_ID), ==, DEXTLAB_USB_ID_VALUE);
    cli_free(d);
    cli_free(i);
    check_clean();
}

/* OUT @len bytes sync, IN them back async, compare (IN queued first) */
static void loop_once(Cli *c, Buf *ob, Buf *ib, uint32_t len, uint32_t seed,
                      bool sync_in)
{
    uint32_t got = 0;
    Ev e;

    for (uint32_t k = 0; k < len; k++) {
        ob->map[k] = (uint8_t)((k * 2654435761u + seed) >> 13);
    }
    memset(ib->map, 0xa5, MIN(len + 1, ib->cap));
    if (sync_in) {
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_OUT, ob, 0, len, 10000, 0,
                           &got), ==, 0);
        g_assert_cmpuint(got, ==, len);
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, ib, 0,
                           MIN(len + 1024, ib->cap), 10000, 0, &got), ==, 0);
        g_assert_cmpuint(got, ==, len);
    } else {
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, ib, 0,
                           MIN(len + 1024, ib->cap), 0, 1000 + seed, NULL),
                        ==, 0);
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_OUT, ob, 0, len, 10000, 0,
                           &got), ==, 0);
        g_assert_cmpuint(got, ==, len);
        g_assert_true(cli_event(c, 1000 + seed, &e, 10000));
        g_assert_cmpint(e.status, ==, 0);
        g_assert_cmpuint(e.actual, ==, len);
        g_assert_cmpuint(e.ts, >, 0);
    }
    g_assert_true(memcmp(ob->map, ib->map, len) == 0);
}

static void test_bulk(void)
{
    static const uint32_t sizes[] = { 1, 512, 65536, 1 << 20, 0, 513, 200000 };
    Cli *c = cli_new(nub(IFC, SS)->id);
    Buf ob, ib;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 1 << 20, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, (1 << 20) + 4096, DIR_IN, &ib), ==, 0);
    for (unsigned k = 0; k < G_N_ELEMENTS(sizes); k++) {
        loop_once(c, &ob, &ib, sizes[k], k, false);
        loop_once(c, &ob, &ib, sizes[k], k + 100, true);
    }
    /* several in flight on both pipes: four INs then four OUTs, every
     * completion once, data in order */
    for (unsigned k = 0; k < 4; k++) {
        memset(ob.map + k * 4096, 0x10 + k, 4096);
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, k * 8192, 4096, 0,
                           50 + k, NULL), ==, 0);
    }
    for (unsigned k = 0; k < 4; k++) {
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_OUT, &ob, k * 4096, 4096, 0,
                           60 + k, NULL), ==, 0);
    }
    for (unsigned k = 0; k < 4; k++) {
        Ev e;

        g_assert_true(cli_event(c, 60 + k, &e, 10000));
        g_assert_cmpint(e.status, ==, 0);
        g_assert_true(cli_event(c, 50 + k, &e, 10000));
        g_assert_cmpint(e.status, ==, 0);
        g_assert_cmpuint(e.actual, ==, 4096);
        g_assert_cmpmem(ib.map + k * 8192, 4096, ob.map + k * 4096, 4096);
    }
    g_assert_cmpuint(c->evs->len, ==, 0);
    g_assert_cmpint(buf_free(c, &ob), ==, 0);
    g_assert_cmpint(buf_free(c, &ib), ==, 0);
    g_assert_cmpint(buf_free(c, &ib), ==, -ENOENT);
    cli_free(c);
    check_clean();
}

static void test_buffers(void)
{
    Cli *c = cli_new(nub(IFC, SS)->id);
    Buf b[5], x;
    Ev e;

    g_assert_cmpint(buf_alloc(c, 0, DIR_IN, &x), ==, -EINVAL);
    g_assert_cmpint(buf_alloc(c, DEXT_USB_PROV_MAX_BUFFER + 1ull, DIR_IN,
                              &x), ==, -EINVAL);
    g_assert_cmpint(buf_alloc(c, 1ull << 63, DIR_IN, &x), ==, -EINVAL);
    g_assert_cmpint(buf_alloc(c, 4096, 0, &x), ==, -EINVAL);
    g_assert_cmpint(buf_alloc(c, 4096, 4, &x), ==, -EINVAL);
    /* 64 MiB a channel */
    for (unsigned k = 0; k < 4; k++) {
        g_assert_cmpint(buf_alloc(c, 16u << 20, DIR_INOUT, &b[k]), ==, 0);
    }
    g_assert_cmpint(buf_alloc(c, 1, DIR_IN, &x), ==, -ENOMEM);
    g_assert_cmpint(buf_free(c, &b[3]), ==, 0);
    g_assert_cmpint(buf_alloc(c, 1, DIR_IN, &b[3]), ==, 0);
    /* fresh buffers are zeroed: nothing of an earlier user shows */
    for (unsigned k = 0; k < (16u << 20); k += 4096) {
        g_assert_cmpuint(b[0].map[k], ==, 0);
    }
    /* busy while IO is pending; USB_ABORT posts the completion before
     * its reply */
    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &b[1], 0, 512, 0, 77,
                       NULL), ==, 0);
    g_assert_cmpint(buf_free(c, &b[1]), ==, -EBUSY);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_ABORT,
                          g_variant_new("(y)", DEXTLAB_USB_EP_BULK_IN)), ==,
                    0);
    g_assert_cmpuint(c->evs->len, ==, 1);
    g_assert_true(cli_event(c, 77, &e, 0));
    g_assert_cmpint(e.status, ==, -ECANCELED);
    g_assert_cmpint(buf_free(c, &b[1]), ==, 0);
    g_assert_cmpint(buf_free(c, &b[0]), ==, 0);
    g_assert_cmpint(buf_free(c, &b[0]), ==, -ENOENT);
    /* the rest is freed by the channel's close */
    cli_free(c);
    check_clean();
}

static void test_stall(void)
{
    Cli *c = cli_new(nub(IFC, SS)->id);
    Buf ob, ib;
    uint32_t got;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    g_assert_cmpint(control(c, 0x40, DEXTLAB_USB_REQ_FORCE_STALL, 0,
                            DEXTLAB_USB_EP_BULK_IN, 0, NULL, 0, NULL, NULL),
                    ==, 0);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 5000, 0, &got),
                    ==, -EPIPE);
    /* halted until cleared */
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 5000, 0, &got),
                    ==, -EPIPE);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_CLEAR_STALL,
                          g_variant_new("(y)", DEXTLAB_USB_EP_BULK_IN)), ==,
                    0);
    loop_once(c, &ob, &ib, 3000, 7, false);
    /* an async IO that stalls completes -EPIPE */
    g_assert_cmpint(control(c, 0x40, DEXTLAB_USB_REQ_FORCE_STALL, 0,
                            DEXTLAB_USB_EP_BULK_OUT, 0, NULL, 0, NULL, NULL),
                    ==, 0);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_OUT, &ob, 0, 100, 0, 5, NULL),
                    ==, 0);
    {
        Ev e;

        g_assert_true(cli_event(c, 5, &e, 10000));
        g_assert_cmpint(e.status, ==, -EPIPE);
    }
    g_assert_cmpint(call0(c, DEXT_MSG_USB_CLEAR_STALL,
                          g_variant_new("(y)", DEXTLAB_USB_EP_BULK_OUT)), ==,
                    0);
    loop_once(c, &ob, &ib, 100, 8, true);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_CLEAR_STALL,
                          g_variant_new("(y)", 0x04)), ==, -ENOENT);
    cli_free(c);
    check_clean();
}

/* a posted async USB_IO (what the client library sends) */
static void io_post(Cli *c, uint8_t ep, uint64_t handle, uint64_t off,
                    uint32_t len, uint64_t ref)
{
    DextMsg m;

    dext_msg_init(&m, DEXT_MSG_USB_IO,
                  g_variant_new("(yttuut)", ep, (guint64)handle,
                                (guint64)off, len, 0u, (guint64)ref));
    m.serial = ++c->serial;
    m.flags = DEXT_MSG_F_POSTED;
    g_assert_cmpint(dext_ipc_send(c->fd, &m), ==, 0);
    dext_msg_clear(&m);
}

/*
 * Guards the posted USB_IO: it is never answered (cli_event asserts no
 * reply comes), its USB_IO_DONE carries the transfer's status or, when the
 * provider refuses it, the refusal; a posted sync IO (no async-ref) has
 * nothing to answer with and is dropped without harming the channel.
 */
static void test_posted_io(void)
{
    Cli *c = cli_new(nub(IFC, SS)->id);
    Buf ob, ib;
    Ev e;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    for (uint32_t k = 0; k < 3000; k++) {
        ob.map[k] = (uint8_t)(k * 7 + 1);
    }
    memset(ib.map, 0xa5, 4096);
    io_post(c, DEXTLAB_USB_EP_BULK_IN, ib.handle, 0, 4096, 31);
    io_post(c, DEXTLAB_USB_EP_BULK_OUT, ob.handle, 0, 3000, 32);
    g_assert_true(cli_event(c, 32, &e, 10000));
    g_assert_cmpint(e.status, ==, 0);
    g_assert_cmpuint(e.actual, ==, 3000);
    g_assert_true(cli_event(c, 31, &e, 10000));
    g_assert_cmpint(e.status, ==, 0);
    g_assert_cmpuint(e.actual, ==, 3000);
    g_assert_true(memcmp(ob.map, ib.map, 3000) == 0);
    /* refused: unknown buffer, a range outside it, a buffer of the other
     * direction */
    io_post(c, DEXTLAB_USB_EP_BULK_OUT, ob.handle + 100, 0, 10, 33);
    g_assert_true(cli_event(c, 33, &e, 10000));
    g_assert_cmpint(e.status, ==, -ENOENT);
    g_assert_cmpuint(e.actual, ==, 0);
    io_post(c, DEXTLAB_USB_EP_BULK_OUT, ob.handle, 8000, 193, 34);
    g_assert_true(cli_event(c, 34, &e, 10000));
    g_assert_cmpint(e.status, ==, -ERANGE);
    io_post(c, DEXTLAB_USB_EP_BULK_OUT, ib.handle, 0, 10, 35);
    g_assert_true(cli_event(c, 35, &e, 10000));
    g_assert_cmpint(e.status, ==, -EINVAL);
    /* the first IN on a stalled endpoint fails in the device, the next is
     * refused by the provider: both -EPIPE, as completions */
    g_assert_cmpint(control(c, 0x40, DEXTLAB_USB_REQ_FORCE_STALL, 0,
                            DEXTLAB_USB_EP_BULK_IN, 0, NULL, 0, NULL, NULL),
                    ==, 0);
    io_post(c, DEXTLAB_USB_EP_BULK_IN, ib.handle, 0, 512, 36);
    g_assert_true(cli_event(c, 36, &e, 10000));
    g_assert_cmpint(e.status, ==, -EPIPE);
    io_post(c, DEXTLAB_USB_EP_BULK_IN, ib.handle, 0, 512, 37);
    g_assert_true(cli_event(c, 37, &e, 10000));
    g_assert_cmpint(e.status, ==, -EPIPE);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_CLEAR_STALL,
                          g_variant_new("(y)", DEXTLAB_USB_EP_BULK_IN)), ==,
                    0);
    /* posted sync IO: dropped, nothing sent back, the channel serves on */
    g_test_expect_message(NULL, G_LOG_LEVEL_WARNING,
                          "*posted USB_IO without an async-ref ignored");
    io_post(c, DEXTLAB_USB_EP_BULK_OUT, ob.handle, 0, 10, 0);
    io_post(c, DEXTLAB_USB_EP_BULK_OUT, ob.handle, 0, 10, 0);   /* warned once */
    g_assert_false(cli_event(c, 0, &e, 200));
    loop_once(c, &ob, &ib, 100, 9, true);    /* in order: after the drop */
    g_test_assert_expected_messages();
    cli_free(c);
    check_clean();
}

static void test_select_alt(void)
{
    Cli *c = cli_new(nub(IFC, HS)->id), *d = cli_new(nub(DEV, HS)->id);
    Buf ob, ib;
    Ev e;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_SELECT_ALT,
                          g_variant_new("(y)", 1)), ==, -EBUSY);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(d, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(d, DEXT_MSG_USB_SELECT_ALT,
                          g_variant_new("(y)", 1)), ==, -EPERM);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    /* an IN parked on NAK is cancelled by the switch, posted first */
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 9, NULL),
                    ==, 0);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_SELECT_ALT,
                          g_variant_new("(y)", 1)), ==, 0);
    g_assert_true(cli_event(c, 9, &e, 0));
    g_assert_cmpint(e.status, ==, -ECANCELED);
    g_assert_cmpuint(read_reg(d, DEXTLAB_USB_REG_ALTSETTING), ==, 1);
    loop_once(c, &ob, &ib, 1000, 3, false);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_SELECT_ALT,
                          g_variant_new("(y)", 7)), ==, -EINVAL);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_SELECT_ALT,
                          g_variant_new("(y)", 0)), ==, 0);
    g_assert_cmpuint(read_reg(d, DEXTLAB_USB_REG_ALTSETTING), ==, 0);
    loop_once(c, &ob, &ib, 700, 4, true);
    cli_free(c);
    cli_free(d);
    check_clean();
}

/* interrupt IN: events triggered by a vendor request arrive through
 * USB_IO_DONE in order, none lost, with 8 transfers kept in flight */
static void test_interrupt(void)
{
    const unsigned total = 40, depth = 8;
    Cli *c = cli_new(nub(IFC, SS)->id);
    Buf b;
    uint32_t seq0 = 0;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, depth * 64, DIR_IN, &b), ==, 0);
    for (unsigned n = 0; n < depth; n++) {
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_INTR_IN, &b, n * 64, 64, 0,
                           1000 + n, NULL), ==, 0);
    }
    g_assert_cmpint(control(c, 0x40, DEXTLAB_USB_REQ_TRIGGER_EVENTS, total, 7,
                            0, NULL, 0, NULL, NULL), ==, 0);
    for (unsigned n = 0; n < total; n++) {
        const uint8_t *e = b.map + (n % depth) * 64;
        uint32_t seq, value;
        Ev ev;

        g_assert_true(cli_event(c, 1000 + n, &ev, 10000));
        g_assert_cmpint(ev.status, ==, 0);
        g_assert_cmpuint(ev.actual, ==, DEXTLAB_USB_EVENT_SIZE);
        g_assert_cmpuint(e[0], ==, DEXTLAB_USB_EVT_SOFT);
        g_assert_cmpuint(e[1], ==, 0);                  /* none lost */
        seq = e[4] | e[5] << 8 | e[6] << 16 | (uint32_t)e[7] << 24;
        value = e[8] | e[9] << 8 | e[10] << 16 | (uint32_t)e[11] << 24;
        if (n == 0) {
            seq0 = seq;
        }
        g_assert_cmpuint(seq, ==, seq0 + n);
        g_assert_cmphex(value, ==, 7u << 16 | n);
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_INTR_IN, &b, (n % depth) * 64,
                           64, 0, 1000 + n + depth, NULL), ==, 0);
    }
    g_assert_cmpint(call0(c, DEXT_MSG_USB_ABORT,
                          g_variant_new("(y)", DEXTLAB_USB_EP_INTR_IN)), ==, 0);
    for (unsigned n = total; n < total + depth; n++) {
        Ev ev;

        g_assert_true(cli_event(c, 1000 + n, &ev, 0));
        g_assert_cmpint(ev.status, ==, -ECANCELED);
    }
    munmap(b.map, b.cap);
    cli_free(c);
    check_clean();
}

/* two channels on two devices pumping at once, each from its own thread */
static gpointer pump(gpointer opaque)
{
    unsigned speed = GPOINTER_TO_UINT(opaque);
    Cli *c = cli_new(nub(IFC, speed)->id);
    Buf ob, ib;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 65536, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 65536, DIR_IN, &ib), ==, 0);
    for (unsigned k = 0; k < 30; k++) {
        loop_once(c, &ob, &ib, 1000 + k * 1500, k + speed * 100, k & 1);
    }
    cli_free(c);
    return NULL;
}

static void test_two_devices(void)
{
    GThread *a = g_thread_new("pump-ss", pump, GUINT_TO_POINTER(SS));
    GThread *b = g_thread_new("pump-hs", pump, GUINT_TO_POINTER(HS));

    g_thread_join(a);
    g_thread_join(b);
    check_clean();
}

static void test_hostile(void)
{
    Cli *c = cli_new(nub(IFC, SS)->id);
    Buf ob, ib;
    Ev e;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    /* buffer handles and ranges */
    {
        Buf bad = { .handle = 999999, .cap = 8192 };

        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &bad, 0, 1, 0, 0, NULL),
                        ==, -ENOENT);
        g_assert_cmpint(buf_free(c, &bad), ==, -ENOENT);
    }
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 8192, 1, 0, 0, NULL),
                    ==, -ERANGE);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 4096, 4097, 0, 0,
                       NULL), ==, -ERANGE);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, G_MAXUINT64, 2, 0, 0,
                       NULL), ==, -ERANGE);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, G_MAXUINT32, 0, 0,
                       NULL), ==, -EINVAL);
    /* endpoints: not in the setting, EP0, direction against the buffer */
    g_assert_cmpint(io(c, 0x05, &ob, 0, 1, 0, 0, NULL), ==, -ENOENT);
    g_assert_cmpint(io(c, 0x85, &ib, 0, 1, 0, 0, NULL), ==, -ENOENT);
    g_assert_cmpint(io(c, 0x00, &ob, 0, 1, 0, 0, NULL), ==, -EINVAL);
    g_assert_cmpint(io(c, 0x80, &ib, 0, 1, 0, 0, NULL), ==, -EINVAL);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ob, 0, 512, 0, 0, NULL),
                    ==, -EINVAL);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_OUT, &ib, 0, 512, 0, 0, NULL),
                    ==, -EINVAL);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_ABORT, g_variant_new("(y)", 0x07)),
                    ==, -ENOENT);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_SET_CONFIG, g_variant_new("(y)", 1)),
                    ==, -EPERM);            /* an interface nub */
    /* too many pending: the limit, then abort completes them all */
    dext_usb_provider_set_max_pending(prov, 8);
    for (unsigned k = 0; k < 8; k++) {
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 200 + k,
                           NULL), ==, 0);
    }
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 300, NULL),
                    ==, -EAGAIN);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 1000, 0, NULL),
                    ==, -EAGAIN);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_ABORT,
                          g_variant_new("(y)", DEXTLAB_USB_EP_BULK_IN)), ==,
                    0);
    for (unsigned k = 0; k < 8; k++) {
        g_assert_true(cli_event(c, 200 + k, &e, 0));
        g_assert_cmpint(e.status, ==, -ECANCELED);
    }
    dext_usb_provider_set_max_pending(prov, DEXT_USB_PROV_MAX_PENDING);
    /* a sync IO that times out is aborted: -ETIMEDOUT */
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 200, 0, NULL),
                    ==, -ETIMEDOUT);
    /* a request of another channel: refused, the channel lives on */
    {
        DextMsg m, r;

        dext_msg_init(&m, DEXT_MSG_PCI_OPEN, g_variant_new("(t)", 1));
        m.serial = ++c->serial;
        g_assert_cmpint(dext_ipc_send(c->fd, &m), ==, 0);
        dext_msg_clear(&m);
        g_assert_cmpint(cli_recv(c, &r, 5000), ==, 0);
        g_assert_cmpuint(r.type, ==, DEXT_MSG_ERROR);
        dext_msg_clear(&r);
        loop_once(c, &ob, &ib, 64, 1, true);
    }
    cli_free(c);
    check_clean();
}

/* closing mid-IO: the channel's IO is aborted (a sync one too), its
 * buffers freed (the client's mapping aside) and its open released */
static void test_close_mid_io(void)
{
    Cli *c = cli_new(nub(IFC, SS)->id), *c2;
    Buf ib;
    DextUsbProviderStats st;
    DextMsg m;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    for (unsigned k = 0; k < 4; k++) {
        g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 400 + k,
                           NULL), ==, 0);
    }
    /* and a sync one in flight */
    dext_msg_init(&m, DEXT_MSG_USB_IO,
                  g_variant_new("(yttuut)", DEXTLAB_USB_EP_BULK_IN,
                                (guint64)ib.handle, (guint64)0, 512u, 60000u,
                                (guint64)0));
    m.serial = ++c->serial;
    g_assert_cmpint(dext_ipc_send(c->fd, &m), ==, 0);
    dext_msg_clear(&m);
    dext_usb_provider_stats(prov, &st);
    g_assert_cmpuint(st.buffers, ==, 1);
    munmap(ib.map, ib.cap);
    cli_free(c);
    check_clean();
    c2 = cli_new(nub(IFC, SS)->id);
    g_assert_cmpint(call0(c2, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    cli_free(c2);
    check_clean();
}

/* a client that stops reading loses its channel (sends are bounded) and
 * stalls nobody else */
static void test_stuck_client(void)
{
    Cli *stuck = cli_new(nub(DEV, SS)->id), *c = cli_new(nub(IFC, SS)->id);
    DextUsbProviderStats st;
    gint64 deadline;
    unsigned sent = 0;
    Buf ob, ib;

    /* send until the provider stops taking requests for a second: it is
     * then blocked answering (its replies fill our socket) */
    for (unsigned idle = 0; idle < 50 && sent < 100000;) {
        uint8_t wire[256];
        DextMsg m;
        ssize_t len;

        dext_msg_init(&m, DEXT_MSG_USB_INFO, g_variant_new("()"));
        m.serial = stuck->serial + 1;
        len = dext_msg_encode(&m, wire, sizeof(wire));
        dext_msg_clear(&m);
        g_assert_cmpint(len, >, 0);
        if (send(stuck->fd, wire, len, MSG_DONTWAIT) == len) {
            stuck->serial++;
            sent++;
            idle = 0;
        } else {
            g_usleep(20000);
            idle++;
        }
    }
    g_assert_cmpuint(sent, >, 100);
    g_assert_cmpuint(sent, <, 100000);
    g_usleep(200000);
    /* meanwhile (the stuck channel's thread waits in a send) the other
     * channel and the controller carry on */
    dext_usb_provider_stats(prov, &st);
    g_assert_cmpuint(st.channels, ==, 2);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    loop_once(c, &ob, &ib, 4000, 3, false);
    cli_free(c);
    dext_usb_provider_stats(prov, &st);
    g_assert_cmpuint(st.channels, >=, 1);
    /* the stuck one is closed once a send has waited its bound */
    deadline = g_get_monotonic_time() + (DEXT_IPC_TIMEOUT_MS + 10000) * 1000ll;
    do {
        g_usleep(50000);
        dext_usb_provider_stats(prov, &st);
    } while (st.channels && g_get_monotonic_time() < deadline);
    g_assert_cmpuint(st.channels, ==, 0);
    cli_free(stuck);
    check_clean();
}

/* framing errors close the channel; nothing stays behind */
static void test_garbage(void)
{
    static const uint8_t junk[] = "definitely not a dextlab message";
    Cli *c = cli_new(nub(DEV, SS)->id);
    DextMsg r;
    Buf b;

    g_assert_cmpint(buf_alloc(c, 4096, DIR_IN, &b), ==, 0);
    g_assert_cmpint(send(c->fd, junk, sizeof(junk), 0), ==, sizeof(junk));
    g_assert_cmpint(cli_recv(c, &r, 5000), ==, -ECONNRESET);
    munmap(b.map, b.cap);
    cli_free(c);
    check_clean();
    /* unknown nub */
    {
        int sv[2];

        g_assert_cmpint(dext_ipc_socketpair(sv), ==, 0);
        g_assert_cmpint(dext_usb_provider_serve(prov, 424242, sv[1]), ==,
                        -ENOENT);
        close(sv[0]);
        g_assert_cmpint(dext_usb_provider_reset(prov, 424242), ==, -ENOENT);
        g_assert_cmpint(dext_ipc_socketpair(sv), ==, 0);
        g_assert_cmpint(dext_usb_provider_serve_port(prov, 200, -1, sv[1]), ==,
                        -ENOENT);
        close(sv[0]);
    }
    /* a bounded number of channels (a thread each) */
    {
        Cli *many[DEXT_USB_PROV_MAX_CHANNELS];
        int sv[2];

        for (unsigned k = 0; k < DEXT_USB_PROV_MAX_CHANNELS; k++) {
            many[k] = cli_new(nub(DEV, SS)->id);
        }
        g_assert_cmpint(dext_ipc_socketpair(sv), ==, 0);
        g_assert_cmpint(dext_usb_provider_serve(prov, nub(DEV, SS)->id,
                                                sv[1]), ==, -EMFILE);
        close(sv[0]);
        check_info(many[DEXT_USB_PROV_MAX_CHANNELS - 1], SS);
        for (unsigned k = 0; k < DEXT_USB_PROV_MAX_CHANNELS; k++) {
            cli_free(many[k]);
        }
        check_clean();
    }
    /* the publisher's own channel, by port */
    {
        Pub *d = nub(DEV, HS), *i = nub(IFC, HS);
        int sv[2];

        for (int ifnum = -1; ifnum <= 0; ifnum++) {
            g_assert_cmpint(dext_ipc_socketpair(sv), ==, 0);
            g_assert_cmpint(dext_usb_provider_serve_port(prov,
                            prop(ifnum < 0 ? d : i, "port"), ifnum, sv[1]),
                            ==, 0);
            c = g_new0(Cli, 1);
            c->fd = sv[0];
            c->evs = g_array_new(FALSE, FALSE, sizeof(Ev));
            check_info(c, HS);
            g_assert_cmpint(call0(c, DEXT_MSG_USB_SELECT_ALT,
                                  g_variant_new("(y)", 0)), ==,
                            ifnum < 0 ? -EPERM : -EBUSY);
            cli_free(c);
        }
        g_assert_cmpint(dext_ipc_socketpair(sv), ==, 0);
        g_assert_cmpint(dext_usb_provider_serve_port(prov, prop(d, "port"), 3,
                                                     sv[1]), ==, -ENOENT);
        close(sv[0]);
        check_clean();
    }
}

static void test_set_config(void)
{
    Pub *dn = nub(DEV, SS), *old_if = nub(IFC, SS);
    Cli *d = cli_new(dn->id), *i = cli_new(old_if->id);
    GVariant *r = NULL;
    guint8 cur;

    g_assert_cmpint(call0(d, DEXT_MSG_USB_SET_CONFIG, g_variant_new("(y)", 1)),
                    ==, -EBUSY);
    g_assert_cmpint(call0(d, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(call0(d, DEXT_MSG_USB_SET_CONFIG, g_variant_new("(y)", 7)),
                    ==, -EINVAL);
    g_assert_false(old_if->terminated);
    /* an IO of the interface's client in flight: posted -ECANCELED before
     * its nub goes */
    {
        Buf ib;
        Ev e;

        g_assert_cmpint(call0(i, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                        0);
        g_assert_cmpint(buf_alloc(i, 4096, DIR_IN, &ib), ==, 0);
        g_assert_cmpint(io(i, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 61,
                           NULL), ==, 0);
        g_mutex_lock(&pub_lock);
        watch_fd = i->fd;
        g_mutex_unlock(&pub_lock);
        g_assert_cmpint(call0(d, DEXT_MSG_USB_SET_CONFIG,
                              g_variant_new("(y)", 0)), ==, 0);
        g_mutex_lock(&pub_lock);
        watch_fd = -1;
        g_mutex_unlock(&pub_lock);
        g_assert_true(old_if->terminated);
        g_assert_true(old_if->client_had_data);
        g_assert_true(cli_event(i, 61, &e, 0));
        g_assert_cmpint(e.status, ==, -ECANCELED);
        munmap(ib.map, ib.cap);
    }
    g_assert_cmpint(call0(i, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                    -ENODEV);
    g_assert_cmpint(call(d, DEXT_MSG_USB_INFO, g_variant_new("()"), &r), ==, 0);
    g_variant_get_child(r, 1, "y", &cur);
    g_variant_unref(r);
    g_assert_cmpuint(cur, ==, 0);
    wait_live(3);
    g_assert_cmpint(call0(d, DEXT_MSG_USB_SET_CONFIG, g_variant_new("(y)", 1)),
                    ==, 0);
    wait_live(4);
    g_assert_cmpuint(nub(IFC, SS)->parent, ==, dn->id);
    g_assert_cmpuint(nub(IFC, SS)->id, !=, old_if->id);
    check_published(SS, "ss-1");
    cli_free(d);
    cli_free(i);
    check_clean();
}

static bool wait_terminated(Pub *p)
{
    gint64 deadline = g_get_monotonic_time() + 15 * G_USEC_PER_SEC;
    bool t;

    g_mutex_lock(&pub_lock);
    while (!p->terminated &&
           g_cond_wait_until(&pub_cond, &pub_lock, deadline)) {
    }
    t = p->terminated;
    g_mutex_unlock(&pub_lock);
    return t;
}

static int term_index(uint64_t id)
{
    int at = -1;

    g_mutex_lock(&pub_lock);
    for (unsigned k = 0; k < term_order->len; k++) {
        if (g_array_index(term_order, uint64_t, k) == id) {
            at = (int)k;
        }
    }
    g_mutex_unlock(&pub_lock);
    return at;
}

static void test_reset(void)
{
    Pub *dn = nub(DEV, SS), *in = nub(IFC, SS);
    Cli *c = cli_new(in->id);
    Buf ob, ib;
    Ev e;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 31, NULL),
                    ==, 0);
    g_mutex_lock(&pub_lock);
    watch_fd = c->fd;
    g_mutex_unlock(&pub_lock);
    g_assert_cmpint(dext_usb_provider_reset(prov, in->id), ==, 0);
    g_assert_true(wait_terminated(dn));
    g_assert_true(wait_terminated(in));
    g_assert_cmpint(term_index(in->id), <, term_index(dn->id));
    g_assert_true(in->client_had_data);
    g_assert_true(cli_event(c, 31, &e, 0));
    g_assert_cmpint(e.status, ==, -ECANCELED);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                    -ENODEV);
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 32, NULL),
                    ==, -ENODEV);
    g_mutex_lock(&pub_lock);
    watch_fd = -1;
    g_mutex_unlock(&pub_lock);
    munmap(ib.map, ib.cap);
    cli_free(c);
    /* enumerated again, published again (new ids), works */
    g_assert_cmpint(dext_usb_host_wait_devices(usb_testbed_host(tb), 2, 15000),
                    ==, 0);
    wait_live(4);
    g_assert_cmpuint(nub(DEV, SS)->id, !=, dn->id);
    check_published(SS, "ss-1");
    c = cli_new(nub(IFC, SS)->id);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    loop_once(c, &ob, &ib, 4000, 5, false);
    cli_free(c);
    check_clean();
}

static void test_unplug(void)
{
    DextPlatform *p = usb_testbed_platform(tb);
    Pub *dn = nub(DEV, HS), *in = nub(IFC, HS);
    Cli *c = cli_new(in->id), *d = cli_new(dn->id);
    Buf ob, ib;
    Ev e;

    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    /* in flight (NAKing: the FIFO is empty) when the device goes */
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 41, NULL),
                    ==, 0);
    g_mutex_lock(&pub_lock);
    watch_fd = c->fd;
    g_mutex_unlock(&pub_lock);
    g_assert_cmpint(dext_platform_qmp(p, "device_del", "{\"id\": \"hs\"}",
                                      NULL), ==, 0);
    g_assert_cmpint(dext_platform_qmp_wait_event(p, "DEVICE_DELETED", 10000,
                                                 NULL), ==, 0);
    g_assert_true(wait_terminated(in));
    g_assert_true(wait_terminated(dn));
    /* children first; the completion was on the client's socket before
     * its nub was terminated */
    g_assert_cmpint(term_index(in->id), <, term_index(dn->id));
    g_assert_true(in->client_had_data);
    g_assert_true(cli_event(c, 41, &e, 0));
    g_assert_cmpint(e.status, ==, -ECANCELED);
    g_mutex_lock(&pub_lock);
    watch_fd = -1;
    g_mutex_unlock(&pub_lock);
    /* the channels answer, the device is gone */
    g_assert_cmpint(io(c, DEXTLAB_USB_EP_BULK_IN, &ib, 0, 512, 0, 42, NULL),
                    ==, -ENODEV);
    g_assert_cmpint(call0(d, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                    -ENODEV);
    {
        GVariant *r = NULL;

        g_assert_cmpint(call(d, DEXT_MSG_USB_INFO, g_variant_new("()"), &r),
                        ==, 0);
        g_variant_unref(r);
    }
    munmap(ib.map, ib.cap);
    cli_free(c);
    cli_free(d);
    check_clean();
    wait_live(2);

    /* replug: published again, works */
    g_assert_cmpint(dext_platform_qmp(p, "device_add",
                    "{\"driver\": \"dextlab-usb\", \"id\": \"hs\", "
                    "\"bus\": \"xhci.0\", \"superspeed\": false, "
                    "\"serial\": \"hs-1\"}", NULL), ==, 0);
    g_assert_cmpint(dext_usb_host_wait_devices(usb_testbed_host(tb), 2, 15000),
                    ==, 0);
    wait_live(4);
    check_published(HS, "hs-1");
    c = cli_new(nub(IFC, HS)->id);
    g_assert_cmpint(call0(c, DEXT_MSG_USB_OPEN, g_variant_new("()")), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(c, 8192, DIR_IN, &ib), ==, 0);
    loop_once(c, &ob, &ib, 777, 9, false);
    cli_free(c);
    check_clean();
}

/* random requests of every kind with random fields on a device and an
 * interface channel: each gets a reply or an ERROR, the channels stay up,
 * nothing leaks, and the device works afterwards */
static void test_random(void)
{
    static const uint8_t eps[] = { 0x00, 0x01, 0x81, 0x82, 0x02, 0x83, 0x8f,
                                   0xff };
    Cli *cs[2] = { cli_new(nub(DEV, SS)->id), cli_new(nub(IFC, SS)->id) };
    GRand *r = g_rand_new_with_seed(20261124);
    uint64_t handles[8] = { 0 };
    unsigned counts[2] = { 0 };
    Buf ob, ib;

    for (unsigned n = 0; n < 3000; n++) {
        Cli *c = cs[g_rand_int_range(r, 0, 2)];
        uint8_t ep = eps[g_rand_int_range(r, 0, G_N_ELEMENTS(eps))];
        uint64_t h = g_rand_boolean(r) ? handles[g_rand_int_range(r, 0, 8)]
                                       : g_rand_int(r);
        uint64_t big = (uint64_t)g_rand_int(r) << g_rand_int_range(r, 0, 33);
        GVariant *out = NULL;
        int fd = -1, rc;

        switch (g_rand_int_range(r, 0, 10)) {
        case 0:
            rc = call0(c, g_rand_boolean(r) ? DEXT_MSG_USB_OPEN
                                            : DEXT_MSG_USB_CLOSE,
                       g_variant_new("()"));
            break;
        case 1: {
            uint16_t wlen = g_rand_int_range(r, 0, 5000);
            uint8_t rt = g_rand_int_range(r, 0, 256);
            gsize olen = g_rand_boolean(r) ? wlen : g_rand_int_range(r, 0, 300);
            g_autofree uint8_t *od = g_malloc0(MAX(olen, 1));
            uint8_t req = g_rand_int_range(r, 0, 24);

            if (req == 9 || req == 11) {
                req = 0x13;     /* keep SET_CONFIG/SELECT_ALT to their calls */
            }
            rc = call(c, DEXT_MSG_USB_CONTROL,
                      g_variant_new("(yyqqqu@ay)", rt, req,
                                    (guint16)g_rand_int(r),
                                    (guint16)g_rand_int_range(r, 0, 0x90),
                                    wlen, g_rand_int_range(r, 1, 100),
                                    g_variant_new_fixed_array(
                                        G_VARIANT_TYPE_BYTE, od, olen, 1)),
                      &out);
            break;
        }
        case 2:
            rc = call_fd(c, DEXT_MSG_USB_BUFFER_ALLOC,
                         g_variant_new("(tu)", g_rand_boolean(r)
                                       ? (guint64)g_rand_int_range(r, 0, 70000)
                                       : big, g_rand_int_range(r, 0, 5)),
                         &out, &fd);
            if (rc == 0) {
                guint64 hh;

                g_variant_get_child(out, 0, "t", &hh);
                handles[g_rand_int_range(r, 0, 8)] = hh;
                close(fd);
            }
            break;
        case 3:
            rc = call0(c, DEXT_MSG_USB_BUFFER_FREE,
                       g_variant_new("(t)", (guint64)h));
            break;
        case 4:
        case 5: {
            bool sync = g_rand_boolean(r);

            rc = call(c, DEXT_MSG_USB_IO,
                      g_variant_new("(yttuut)", ep, (guint64)h,
                                    g_rand_boolean(r)
                                    ? (guint64)g_rand_int_range(r, 0, 70000)
                                    : big,
                                    g_rand_boolean(r)
                                    ? (guint32)g_rand_int_range(r, 0, 70000)
                                    : g_rand_int(r),
                                    sync ? (guint32)g_rand_int_range(r, 1, 50)
                                         : (guint32)(g_rand_int_range(r, 0, 3) * 20),
                                    sync ? (guint64)0 : (guint64)n + 1),
                      &out);
            break;
        }
        case 6:
            rc = call0(c, DEXT_MSG_USB_ABORT, g_variant_new("(y)", ep));
            break;
        case 7:
            rc = call0(c, DEXT_MSG_USB_CLEAR_STALL, g_variant_new("(y)", ep));
            break;
        case 8:
            rc = call0(c, DEXT_MSG_USB_SELECT_ALT,
                       g_variant_new("(y)", g_rand_int_range(r, 0, 4)));
            break;
        default:
            rc = call(c, DEXT_MSG_USB_INFO, g_variant_new("()"), &out);
            break;
        }
        counts[rc == 0]++;
        /* a reply or a refusal; never the channel's end */
        g_assert_cmpint(rc, !=, -ECONNRESET);
        g_assert_cmpint(rc, !=, -ENOLINK);
        g_assert_cmpint(rc, !=, -ESHUTDOWN);
        if (out) {
            g_variant_unref(out);
        }
    }
    g_rand_free(r);
    /* both paths were exercised, not just the refusals */
    g_assert_cmpuint(counts[0], >, 300);
    g_assert_cmpuint(counts[1], >, 300);
    cli_free(cs[0]);
    cli_free(cs[1]);
    check_clean();
    /* still configured as published, and working */
    wait_live(4);
    cs[0] = cli_new(nub(DEV, SS)->id);
    g_assert_cmpint(call0(cs[0], DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                    0);
    g_assert_cmpint(control(cs[0], 0x40, DEXTLAB_USB_REQ_SET_EVENT_RATE, 0, 0,
                            0, NULL, 0, NULL, NULL), ==, 0);
    g_assert_cmpint(control(cs[0], 0x40, DEXTLAB_USB_REQ_RESET_FIFO, 0, 0, 0,
                            NULL, 0, NULL, NULL), ==, 0);
    cli_free(cs[0]);
    cs[1] = cli_new(nub(IFC, SS)->id);
    g_assert_cmpint(call0(cs[1], DEXT_MSG_USB_OPEN, g_variant_new("()")), ==,
                    0);
    g_assert_cmpint(call0(cs[1], DEXT_MSG_USB_SELECT_ALT,
                          g_variant_new("(y)", 0)), ==, 0);
    for (unsigned k = 0; k < 3; k++) {
        g_assert_cmpint(call0(cs[1], DEXT_MSG_USB_CLEAR_STALL,
                              g_variant_new("(y)", k == 0 ? 0x01 : k == 1
                                            ? 0x81 : 0x82)), ==, 0);
    }
    g_assert_cmpint(buf_alloc(cs[1], 8192, DIR_OUT, &ob), ==, 0);
    g_assert_cmpint(buf_alloc(cs[1], 8192, DIR_IN, &ib), ==, 0);
    loop_once(cs[1], &ob, &ib, 5000, 77, false);
    cli_free(cs[1]);
    check_clean();
}

int main(int argc, char **argv)
{
    DextUsbHostConfig hc = { .device_fn = dext_usb_provider_device_fn };
    int ret;

    g_test_init(&argc, &argv, NULL);
    pubs = g_ptr_array_new();
    term_order = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    g_assert_cmpint(dext_usb_provider_create(&fake_ops, NULL, &prov), ==, 0);
    hc.device_opaque = prov;
    tb = usb_testbed_start(devices, &hc);
    if (!tb) {
        return 1;
    }
    dext_usb_provider_set_host(prov, usb_testbed_host(tb));
    g_assert_cmpint(dext_usb_host_wait_devices(usb_testbed_host(tb), 2, 15000),
                    ==, 0);

    fd_baseline = count_fds();
    g_test_add_func("/usb-provider/publish", test_publish);
    g_test_add_func("/usb-provider/info", test_info);
    g_test_add_func("/usb-provider/open-exclusive", test_open);
    g_test_add_func("/usb-provider/control", test_control);
    g_test_add_func("/usb-provider/bulk-loopback", test_bulk);
    g_test_add_func("/usb-provider/buffers", test_buffers);
    g_test_add_func("/usb-provider/stall-clear", test_stall);
    g_test_add_func("/usb-provider/posted-io", test_posted_io);
    g_test_add_func("/usb-provider/select-alt", test_select_alt);
    g_test_add_func("/usb-provider/interrupt-events", test_interrupt);
    g_test_add_func("/usb-provider/two-devices", test_two_devices);
    g_test_add_func("/usb-provider/hostile", test_hostile);
    g_test_add_func("/usb-provider/close-mid-io", test_close_mid_io);
    g_test_add_func("/usb-provider/stuck-client", test_stuck_client);
    g_test_add_func("/usb-provider/garbage", test_garbage);
    g_test_add_func("/usb-provider/set-config", test_set_config);
    g_test_add_func("/usb-provider/reset", test_reset);
    g_test_add_func("/usb-provider/unplug-replug", test_unplug);
    g_test_add_func("/usb-provider/random-requests", test_random);
    ret = g_test_run();

    dext_usb_provider_shutdown(prov);
    usb_testbed_stop(tb);
    dext_usb_provider_destroy(prov);
    return ret;
}
