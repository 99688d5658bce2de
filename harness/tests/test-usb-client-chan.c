/*
 * libdext's USB client (harness/lib/usb.c) against a fake provider on a
 * socketpair: what the e2e test cannot force.  dext__provider_open is
 * replaced at link time (-Wl,--wrap) by one that hands usb.c one end of a
 * socketpair and serves the other here, as a publisher would (or as a
 * broken one would).
 *
 * Guards: async IO is posted (no round trip) and a completion, or the
 * publisher's refusal, is delivered exactly once on its queue; a handler
 * running on the channel's reader may call the publisher synchronously,
 * and completions arriving meanwhile never run nested in it; abort's
 * completions are
 * queued before abort returns; the stop hook's phase 0 returns only after
 * every pending completion ran and refuses new IO; a publisher that goes
 * away completes pending IO (-ECANCELED) and later calls fail -ESHUTDOWN;
 * hostile USB_IO_DONEs (unknown reference, actual beyond the length,
 * positive status) cannot overflow or confuse a caller; IO arguments are
 * checked before anything is sent.
 */
#include "cunit-main.h"
#include "usb-test-descriptors.h"
#include "internal.h"
#include "dext/usb.h"

#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

enum { MODE_NORMAL, MODE_HOLD, MODE_HOSTILE, MODE_REFUSE };

static const uint8_t dev_desc[18] = {
    18, 1, 0x10, 0x02, 0, 0, 0, 64, 0x09, 0x12, 0x01, 0x00, 0x00, 0x01, 1, 2, 3, 1,
};

typedef struct {
    uint64_t ref;
    uint8_t ep;
    uint32_t len;
} Held;

static struct {
    int fd;
    GThread *thread;
    gint mode;
    gint quit;
    GMutex lock;
    GArray *held;               /* Held */
    uint64_t next_handle;
    unsigned frees, aborts, ios, posted;
} prov = { .fd = -1 };

static void send_reply(DextMsg *req, GVariant *body)
{
    DextMsg r;
    dext_msg_init_reply(&r, req, body);
    dext_ipc_send(prov.fd, &r);
    dext_msg_clear(&r);
}

static void post_done(uint64_t ref, int status, uint32_t actual)
{
    DextMsg m;
    dext_msg_init(&m, DEXT_MSG_USB_IO_DONE,
                  g_variant_new("(tiut)", (guint64)ref, status, actual, (guint64)dext_time_ns()));
    m.flags = DEXT_MSG_F_POSTED;
    dext_ipc_send(prov.fd, &m);
    dext_msg_clear(&m);
}

/* An async USB_IO travels posted, as the real provider expects: it gets no
 * reply, only its USB_IO_DONE (which carries a refusal too). */
static void serve_io(DextMsg *m)
{
    guint8 ep;
    guint64 h, off, ref;
    guint32 len, tmo;
    bool posted = m->flags & DEXT_MSG_F_POSTED;
    g_variant_get(m->body, "(yttuut)", &ep, &h, &off, &len, &tmo, &ref);
    g_mutex_lock(&prov.lock);
    prov.ios++;
    prov.posted += posted;
    g_mutex_unlock(&prov.lock);
    if (!ref) {
        send_reply(m, g_variant_new("(iut)", 0, len, (guint64)1));
        return;
    }
    if (!posted) {
        send_reply(m, g_variant_new("(iut)", 0, 0u, (guint64)0));
    }
    switch (g_atomic_int_get(&prov.mode)) {
    case MODE_NORMAL:
        post_done(ref, 0, len);
        break;
    case MODE_HOLD: {
        Held x = { ref, ep, len };
        g_mutex_lock(&prov.lock);
        g_array_append_val(prov.held, x);
        g_mutex_unlock(&prov.lock);
        break;
    }
    case MODE_HOSTILE:
        post_done(ref + 1000, 0, 5);                /* nobody's */
        post_done(ref, 7, len * 2 + 5);             /* positive status, too long */
        break;
    case MODE_REFUSE:
        post_done(ref, -EPIPE, 0);                  /* e.g. a halted endpoint */
        break;
    }
}

static gpointer prov_thread(gpointer unused)
{
    while (!g_atomic_int_get(&prov.quit)) {
        DextMsg m;
        int rc = dext_ipc_recv(prov.fd, DEXT_CH_PROV, &m, 50, NULL);
        if (rc == -ETIMEDOUT) {
            continue;
        }
        if (rc < 0) {
            break;
        }
        switch (m.type) {
        case DEXT_MSG_USB_INFO:
            send_reply(&m, g_variant_new("(uy@ay@ay)", 3u, (guint8)1,
                                         g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, dev_desc,
                                                                   sizeof(dev_desc), 1),
                                         g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, cfg_hs,
                                                                   sizeof(cfg_hs), 1)));
            break;
        case DEXT_MSG_USB_OPEN:
        case DEXT_MSG_USB_CLOSE:
        case DEXT_MSG_USB_SELECT_ALT:
        case DEXT_MSG_USB_CLEAR_STALL:
            send_reply(&m, g_variant_new("()"));
            break;
        case DEXT_MSG_USB_CONTROL: {
            /* GET_INTERFACE answers alternate setting 0; anything else
             * returns 2 bytes whatever was asked (the library clamps) */
            guint8 zero[64] = { 0 };
            send_reply(&m, g_variant_new("(u@ay)", 64u,
                                         g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, zero,
                                                                   64, 1)));
            break;
        }
        case DEXT_MSG_USB_BUFFER_ALLOC: {
            guint64 cap;
            guint32 dir;
            g_variant_get(m.body, "(tu)", &cap, &dir);
            int fd = memfd_create("fake-usb", MFD_CLOEXEC);
            g_assert(fd >= 0 && ftruncate(fd, (off_t)((cap + 4095) & ~4095ull)) == 0);
            DextMsg r;
            dext_msg_init_reply(&r, &m, g_variant_new("(ttt)", (guint64)++prov.next_handle, cap,
                                                      (guint64)0));
            r.fds[0] = fd;
            r.nfds = 1;
            dext_ipc_send(prov.fd, &r);
            dext_msg_clear(&r);     /* closes our copy */
            break;
        }
        case DEXT_MSG_USB_BUFFER_FREE:
            g_mutex_lock(&prov.lock);
            prov.frees++;
            g_mutex_unlock(&prov.lock);
            send_reply(&m, g_variant_new("()"));
            break;
        case DEXT_MSG_USB_IO:
            serve_io(&m);
            break;
        case DEXT_MSG_USB_ABORT: {
            guint8 ep;
            g_variant_get(m.body, "(y)", &ep);
            g_mutex_lock(&prov.lock);
            prov.aborts++;
            for (guint i = 0; i < prov.held->len;) {
                Held *x = &g_array_index(prov.held, Held, i);
                if (x->ep == ep) {
                    post_done(x->ref, -ECANCELED, 0);
                    g_array_remove_index(prov.held, i);
                } else {
                    i++;
                }
            }
            g_mutex_unlock(&prov.lock);
            send_reply(&m, g_variant_new("()"));
            break;
        }
        default:
            break;
        }
        dext_msg_clear(&m);
    }
    return NULL;
}

int __wrap_dext__provider_open(DextService *svc, int *fd);
int __wrap_dext__provider_open(DextService *svc, int *fd)
{
    int sv[2];
    if (dext_ipc_socketpair(sv) < 0) {
        return -EIO;
    }
    *fd = sv[0];
    prov.fd = sv[1];
    g_atomic_int_set(&prov.quit, 0);
    prov.thread = g_thread_new("fake-provider", prov_thread, NULL);
    return 0;
}

/* The provider leaves (closes its end). */
static void prov_stop(void)
{
    if (prov.thread) {
        g_atomic_int_set(&prov.quit, 1);
        g_thread_join(prov.thread);
        prov.thread = NULL;
        close(prov.fd);
        prov.fd = -1;
    }
}

static DextService *svc_new(void)
{
    DextService *s = g_new0(DextService, 1);
    s->id = 42;
    s->class_name = g_strdup("Test");
    g_mutex_init(&s->uc_lock);
    s->stop_hooks = g_array_new(FALSE, FALSE, sizeof(DextStopHook));
    s->props = g_variant_ref_sink(g_variant_new_parsed(
        "{'idVendor': <uint16 0x1209>, 'idProduct': <uint16 1>, 'bInterfaceNumber': <byte 0>}"));
    CU_ASSERT_EQUAL(dext_queue_create("svc", &s->queue), 0);
    return s;
}

static void run_hooks(DextService *s, int phase)
{
    for (guint i = 0; i < s->stop_hooks->len; i++) {
        DextStopHook *h = &g_array_index(s->stop_hooks, DextStopHook, i);
        h->fn(s, phase, h->ctx);
    }
}

static void svc_free(DextService *s)
{
    run_hooks(s, 0);
    run_hooks(s, 1);
    CU_ASSERT_PTR_NULL(s->usb);
    dext_queue_destroy(s->queue);
    g_array_free(s->stop_hooks, TRUE);
    g_variant_unref(s->props);
    g_mutex_clear(&s->uc_lock);
    g_free(s->class_name);
    g_free(s);
    prov_stop();
}

typedef struct {
    gint calls;
    int status;
    uint32_t actual;
    DextQueue *q;
    bool on_queue;
} Done;

static void on_done(void *ctx, int status, uint32_t actual, uint64_t ts)
{
    Done *d = ctx;
    d->status = status;
    d->actual = actual;
    d->on_queue = dext_queue_current() == d->q;
    g_atomic_int_inc(&d->calls);
}

static void noop(void *ctx)
{
}

/* Wait for every block already queued on @q to have run. */
static void barrier(DextQueue *q)
{
    dext_queue_dispatch_sync(q, noop, NULL, 5000);
}

static bool wait_calls(Done *d, int n)
{
    for (int i = 0; i < 500 && g_atomic_int_get(&d->calls) < n; i++) {
        g_usleep(2000);
    }
    return g_atomic_int_get(&d->calls) == n;
}

typedef struct {
    DextService *s;
    DextUsbHostInterface *i;
    DextUsbHostPipe *out, *in;
    DextBuffer *buf;
} Fix;

static void fix_open(Fix *f)
{
    g_atomic_int_set(&prov.mode, MODE_NORMAL);
    f->s = svc_new();
    CU_ASSERT_EQUAL_FATAL(dext_service_usb_interface(f->s, &f->i), 0);
    CU_ASSERT_EQUAL(dext_usbhost_interface_open(f->i), 0);
    CU_ASSERT_EQUAL_FATAL(dext_usbhost_interface_copy_pipe(f->i, 0x01, &f->out), 0);
    CU_ASSERT_EQUAL_FATAL(dext_usbhost_interface_copy_pipe(f->i, 0x81, &f->in), 0);
    CU_ASSERT_EQUAL_FATAL(dext_usbhost_interface_create_io_buffer(f->i, DEXT_DMA_INOUT, 8192,
                                                                  &f->buf), 0);
}

static void fix_close(Fix *f)
{
    dext_buffer_release(f->buf);
    svc_free(f->s);
}

static void test_open_descriptors(void)
{
    prov.held = g_array_new(FALSE, FALSE, sizeof(Held));
    g_mutex_init(&prov.lock);
    DextService *s = svc_new();
    DextUsbHostDevice *d;
    DextUsbHostInterface *i, *i2;
    DextUsbHostPipe *p;
    /* an interface nub is not a device */
    CU_ASSERT_EQUAL(dext_service_usb_device(s, &d), -ENODEV);
    CU_ASSERT_EQUAL(dext_service_usb_interface(s, &i), 0);
    CU_ASSERT_EQUAL(dext_service_usb_interface(s, &i2), 0);
    CU_ASSERT_PTR_EQUAL(i, i2);             /* one channel per service */
    CU_ASSERT_EQUAL(dext_usbhost_interface_speed(i), DEXT_USBHOST_SPEED_HIGH);
    CU_ASSERT_EQUAL(dext_usbhost_interface_device_descriptor(i)->idVendor, 0x1209);
    const DextUsbInterfaceDescriptor *id = dext_usbhost_interface_descriptor(i);
    CU_ASSERT_PTR_NOT_NULL_FATAL(id);
    CU_ASSERT_EQUAL(id->bAlternateSetting, 0);
    CU_ASSERT_EQUAL(id->bInterfaceClass, 0xff);
    size_t len = 0;
    CU_ASSERT_PTR_NOT_NULL(dext_usbhost_interface_configuration(i, &len));
    CU_ASSERT_EQUAL(len, sizeof(cfg_hs));
    /* pipes need an open interface; only this setting's endpoints */
    CU_ASSERT_EQUAL(dext_usbhost_interface_copy_pipe(i, 0x82, &p), -EBUSY);
    CU_ASSERT_EQUAL(dext_usbhost_interface_open(i), 0);
    CU_ASSERT_EQUAL(dext_usbhost_interface_copy_pipe(i, 0x83, &p), -ENOENT);
    CU_ASSERT_EQUAL(dext_usbhost_interface_copy_pipe(i, 0x82, &p), 0);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_descriptor(p)->wMaxPacketSize, 16);
    /* a control IN never returns more than wLength, whatever came back */
    uint8_t two[4] = { 0xaa, 0xaa, 0xaa, 0xaa };
    uint32_t actual = 99;
    CU_ASSERT_EQUAL(dext_usbhost_interface_request(i, 0xc0, 0x10, 0, 0, two, 2, &actual, 0), 0);
    CU_ASSERT_EQUAL(actual, 2);
    CU_ASSERT_EQUAL(two[2], 0xaa);
    CU_ASSERT_EQUAL(dext_usbhost_interface_request(i, 0xc0, 0x10, 0, 0, NULL, 2, &actual, 0),
                    -EINVAL);
    CU_ASSERT_EQUAL(dext_usbhost_interface_request(i, 0xc0, 0x10, 0, 0, two, 4097, &actual, 0),
                    -EINVAL);
    /* select_alt: the old pipe is closed, the new one has the new size */
    CU_ASSERT_EQUAL(dext_usbhost_interface_select_alt(i, 2), -EINVAL);
    CU_ASSERT_EQUAL(dext_usbhost_interface_select_alt(i, 1), 0);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_abort(p), -EBADF);
    DextUsbHostPipe *p1;
    CU_ASSERT_EQUAL(dext_usbhost_interface_copy_pipe(i, 0x82, &p1), 0);
    CU_ASSERT_PTR_NOT_EQUAL(p, p1);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_descriptor(p1)->wMaxPacketSize, 64);
    CU_ASSERT_EQUAL(dext_usbhost_interface_descriptor(i)->bAlternateSetting, 1);
    svc_free(s);
}

static void test_io_completions(void)
{
    Fix f;
    fix_open(&f);
    /* the buffer is shareable as user-client memory */
    int fd = -1;
    uint64_t off = 1;
    CU_ASSERT_EQUAL(dext__buffer_share(f.buf, &fd, &off), 0);
    CU_ASSERT(fd >= 0);
    CU_ASSERT_EQUAL(off, 0);
    CU_ASSERT_PTR_NOT_NULL(dext_buffer_map(f.buf));
    uint32_t actual = 0;
    CU_ASSERT_EQUAL(dext_usbhost_pipe_io(f.in, f.buf, 0, 100, &actual, 0), 0);
    CU_ASSERT_EQUAL(actual, 100);
    g_atomic_int_set(&prov.mode, MODE_NORMAL);
    Done d[16] = { 0 };
    for (int k = 0; k < 16; k++) {
        d[k].q = f.s->queue;
        CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(k & 1 ? f.in : f.out, f.buf, 0,
                                                   100 + k, NULL, on_done, &d[k]), 0);
    }
    for (int k = 0; k < 16; k++) {
        CU_ASSERT_TRUE(wait_calls(&d[k], 1));
        CU_ASSERT_EQUAL(d[k].status, 0);
        CU_ASSERT_EQUAL(d[k].actual, 100u + k);
        CU_ASSERT_TRUE(d[k].on_queue);
    }
    g_usleep(20000);
    barrier(f.s->queue);
    for (int k = 0; k < 16; k++) {
        CU_ASSERT_EQUAL(g_atomic_int_get(&d[k].calls), 1); /* exactly once */
    }
    /* queueing is one posted message: no round trip to the publisher */
    CU_ASSERT_EQUAL(prov.posted, 16u);
    /* what the publisher refuses is the completion's status, exactly once */
    g_atomic_int_set(&prov.mode, MODE_REFUSE);
    Done rf = { .q = f.s->queue };
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, f.buf, 0, 64, NULL, on_done, &rf), 0);
    CU_ASSERT_TRUE(wait_calls(&rf, 1));
    CU_ASSERT_EQUAL(rf.status, -EPIPE);
    CU_ASSERT_EQUAL(rf.actual, 0u);
    g_usleep(20000);
    barrier(f.s->queue);
    CU_ASSERT_EQUAL(g_atomic_int_get(&rf.calls), 1);
    /* a hostile publisher: positive status, actual beyond the length, a
     * completion for a reference nobody used */
    g_atomic_int_set(&prov.mode, MODE_HOSTILE);
    Done h = { .q = f.s->queue };
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, f.buf, 0, 64, NULL, on_done, &h), 0);
    CU_ASSERT_TRUE(wait_calls(&h, 1));
    CU_ASSERT_EQUAL(h.status, -EIO);
    CU_ASSERT(h.actual <= 64);
    /* checked before anything is sent */
    unsigned ios = prov.ios;
    DextBuffer *shared;
    CU_ASSERT_EQUAL(dext_buffer_create_shared(4096, &shared), 0);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, shared, 0, 64, NULL, on_done, &h), -EINVAL);
    dext_buffer_release(shared);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, f.buf, 8000, 193, NULL, on_done, &h), -ERANGE);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_io(f.in, f.buf, UINT64_MAX, 1, &actual, 0), -ERANGE);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, f.buf, 0, 1, NULL, NULL, NULL), -EINVAL);
    CU_ASSERT_EQUAL(prov.ios, ios);
    unsigned frees = prov.frees;
    fix_close(&f);
    CU_ASSERT_EQUAL(prov.frees, frees + 1);   /* the buffer went back */
}

static void test_abort_and_stop(void)
{
    Fix f;
    fix_open(&f);
    g_atomic_int_set(&prov.mode, MODE_HOLD);
    Done d[6] = { 0 };
    for (int k = 0; k < 6; k++) {
        d[k].q = f.s->queue;
        CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(k < 3 ? f.in : f.out, f.buf, 0, 10, NULL,
                                                   on_done, &d[k]), 0);
    }
    /* abort: its completions are queued when it returns */
    CU_ASSERT_EQUAL(dext_usbhost_pipe_abort(f.in), 0);
    barrier(f.s->queue);
    for (int k = 0; k < 3; k++) {
        CU_ASSERT_EQUAL(g_atomic_int_get(&d[k].calls), 1);
        CU_ASSERT_EQUAL(d[k].status, -ECANCELED);
    }
    CU_ASSERT_EQUAL(g_atomic_int_get(&d[3].calls), 0);
    /* stop, phase 0: the rest completed and RAN before it returns; no new IO */
    run_hooks(f.s, 0);
    for (int k = 3; k < 6; k++) {
        CU_ASSERT_EQUAL(g_atomic_int_get(&d[k].calls), 1);
        CU_ASSERT_EQUAL(d[k].status, -ECANCELED);
    }
    Done late = { .q = f.s->queue };
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.out, f.buf, 0, 10, NULL, on_done, &late),
                    -ECANCELED);
    /* the driver's stop releases its buffer; phase 1 closes the channel */
    dext_buffer_release(f.buf);
    run_hooks(f.s, 1);
    CU_ASSERT_PTR_NULL(f.s->usb);
    g_array_set_size(f.s->stop_hooks, 0);
    svc_free(f.s);
}

/* A completion handler that calls the publisher synchronously. */
typedef struct {
    DextUsbHostPipe *abort_pipe, *io_pipe;
    DextBuffer *buf;
    int abort_rc, io_rc;
    uint32_t io_actual;
    gint64 us;
    gint seq;                   /* order stamp when it ran */
    gint calls;
    GThread *thread;            /* where it ran */
} Reentrant;

static GThread *held_thread;    /* where on_done_ordered ran */

static gint order;

static void on_done_reentrant(void *ctx, int status, uint32_t actual, uint64_t ts)
{
    Reentrant *r = ctx;
    gint64 t0 = g_get_monotonic_time();
    r->thread = g_thread_self();
    r->abort_rc = dext_usbhost_pipe_abort(r->abort_pipe);
    r->io_rc = dext_usbhost_pipe_io(r->io_pipe, r->buf, 0, 40, &r->io_actual, 0);
    r->us = g_get_monotonic_time() - t0;
    r->seq = g_atomic_int_add(&order, 1);
    g_atomic_int_inc(&r->calls);
}

static void on_done_ordered(void *ctx, int status, uint32_t actual, uint64_t ts)
{
    Done *d = ctx;
    on_done(ctx, status, actual, ts);
    held_thread = g_thread_self();
    d->actual = (uint32_t)g_atomic_int_add(&order, 1);     /* order stamp */
}

/*
 * Guards inline completions: a completion may run on the channel's reader
 * thread, and its handler may then call the publisher synchronously (abort,
 * sync IO) without waiting for itself (a deadlock broken only by the IPC
 * timeout).  A completion that arrives meanwhile runs exactly once and never
 * inside the waiting handler: on the handler's queue after it, on another
 * (idle) queue on that queue's thread.
 */
static void handler_calls_publisher(bool other_queue)
{
    Fix f;
    fix_open(&f);
    DextQueue *q2 = NULL;
    if (other_queue) {
        CU_ASSERT_EQUAL_FATAL(dext_queue_create("test-q2", &q2), 0);
    }
    g_atomic_int_set(&order, 0);
    held_thread = NULL;
    g_atomic_int_set(&prov.mode, MODE_HOLD);
    Done held = { .q = q2 ? q2 : f.s->queue };
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, f.buf, 0, 10, q2, on_done_ordered, &held),
                    0);
    g_usleep(20000);            /* the fake holds it before the next one */
    g_atomic_int_set(&prov.mode, MODE_NORMAL);
    Reentrant r = { .abort_pipe = f.in, .io_pipe = f.in, .buf = f.buf };
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.out, f.buf, 0, 20, NULL, on_done_reentrant, &r),
                    0);
    gint64 end = g_get_monotonic_time() + 10 * G_USEC_PER_SEC;
    while ((!g_atomic_int_get(&r.calls) || !g_atomic_int_get(&held.calls)) &&
           g_get_monotonic_time() < end) {
        g_usleep(1000);
    }
    CU_ASSERT_EQUAL(g_atomic_int_get(&r.calls), 1);
    CU_ASSERT_EQUAL(r.abort_rc, 0);
    CU_ASSERT_EQUAL(r.io_rc, 0);
    CU_ASSERT_EQUAL(r.io_actual, 40u);
    CU_ASSERT(r.us < DEXT_IPC_TIMEOUT_MS * 1000 / 2);
    /* the aborted IO: once, -ECANCELED, after the handler that aborted it */
    CU_ASSERT_EQUAL(g_atomic_int_get(&held.calls), 1);
    CU_ASSERT_EQUAL(held.status, -ECANCELED);
    CU_ASSERT_TRUE(held.on_queue);
    CU_ASSERT(held_thread != r.thread);         /* not nested in the handler */
    if (!other_queue) {
        CU_ASSERT(held.actual > (uint32_t)r.seq);
    }
    g_usleep(20000);
    barrier(f.s->queue);
    CU_ASSERT_EQUAL(g_atomic_int_get(&r.calls), 1);
    CU_ASSERT_EQUAL(g_atomic_int_get(&held.calls), 1);
    fix_close(&f);
    if (q2) {
        dext_queue_destroy(q2);
    }
}

static void test_handler_calls_publisher(void)
{
    handler_calls_publisher(false);
}

static void test_handler_calls_publisher_other_queue(void)
{
    handler_calls_publisher(true);
}

static void test_provider_gone(void)
{
    Fix f;
    fix_open(&f);
    g_atomic_int_set(&prov.mode, MODE_HOLD);
    Done d[3] = { 0 };
    for (int k = 0; k < 3; k++) {
        d[k].q = f.s->queue;
        CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, f.buf, 0, 10, NULL, on_done, &d[k]), 0);
    }
    prov_stop();
    for (int k = 0; k < 3; k++) {
        CU_ASSERT_TRUE(wait_calls(&d[k], 1));
        CU_ASSERT_EQUAL(d[k].status, -ECANCELED);
    }
    uint32_t actual;
    CU_ASSERT_EQUAL(dext_usbhost_pipe_io(f.in, f.buf, 0, 10, &actual, 0), -ESHUTDOWN);
    CU_ASSERT_EQUAL(dext_usbhost_pipe_async_io(f.in, f.buf, 0, 10, NULL, on_done, &d[0]),
                    -ESHUTDOWN);
    CU_ASSERT_EQUAL(dext_usbhost_interface_select_alt(f.i, 1), -ESHUTDOWN);
    barrier(f.s->queue);
    CU_ASSERT_EQUAL(g_atomic_int_get(&d[0].calls), 1);
    /* stop and release still work; releasing the buffer after the channel
     * closed only unmaps it */
    svc_free(f.s);
    dext_buffer_release(f.buf);
}

int main(void)
{
    static const DextTest tests[] = {
        { "open-descriptors-alt", test_open_descriptors },
        { "io-completions-once", test_io_completions },
        { "abort-and-stop-drain", test_abort_and_stop },
        { "handler-calls-publisher", test_handler_calls_publisher },
        { "handler-calls-publisher-other-queue", test_handler_calls_publisher_other_queue },
        { "provider-gone", test_provider_gone },
        { NULL, NULL },
    };
    return dext_cunit_run("usb-client-chan", tests);
}
