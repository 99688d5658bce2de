/*
 * libdext USB client (dext/usb.h) over the provider channel
 * (docs/runtime/nubs.md).
 *
 * One channel per service, opened on the first dext_service_usb_*() call
 * through dextd (PROVIDER_OPEN).  Any thread may call; requests carry a
 * serial and block on their own reply.  One reader thread per channel
 * reads everything the publisher sends: replies are handed to the caller
 * waiting on that serial, USB_IO_DONE events are turned into completions
 * on the queue the IO was submitted with.  Reading in one place keeps the
 * publisher's order: an abort's completions are dispatched before the
 * abort's reply wakes its caller.
 *
 * A completion whose queue is idle runs on the reader thread itself (the
 * queue held, as an interrupt source does): no thread wake-up per IO.  A
 * handler that then calls the publisher synchronously (abort, clear stall,
 * a control request) must not wait for the reader it is running on: such a
 * call reads the channel itself until its reply comes, handing other
 * replies to their callers and queueing other completions (never running
 * them inside the waiting handler; on its own queue they run after it, in
 * order).
 *
 * Lifetime: the service's stop hooks (server.c) end it.  Phase 0, before
 * the class's stop: no new IO is accepted, every pending IO is aborted at
 * the publisher (or completed here with -ECANCELED when the channel is
 * gone) and its completion has RUN before stop is dispatched.  Phase 1,
 * after stop: the channel is closed and the objects freed.  The channel
 * struct itself is reference-counted because IO buffers the driver still
 * holds point at it (releasing them later just unmaps).
 */
#include "internal.h"
#include "usb-client.h"
#include "fdsource.h"
#include "dext/usb.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define CTRL_DEFAULT_MS     5000
#define IO_DEFAULT_MS       5000
#define MAX_BUFFER          (16ull << 20)
#define MAX_CONTROL         4096
#define STOP_DRAIN_MS       15000

/* ---- channel ------------------------------------------------------------- */

typedef struct Chan Chan;
typedef struct UsbState UsbState;

typedef struct {
    bool done;
    int rc;
    DextMsg reply;
    char *why;
} Call;

typedef struct {
    UsbState *st;
    uint64_t ref;
    uint8_t ep;
    uint32_t length;            /* asked for: bounds the reported actual */
    DextQueue *q;
    DextUsbCompletion fn;
    void *ctx;
    int status;
    uint32_t actual;
    uint64_t ts;
} Io;

struct Chan {
    gint ref;
    int fd;
    GMutex send_lock;
    GMutex lock;                /* everything below */
    GCond cond;
    uint32_t serial;
    GHashTable *calls;          /* serial -> Call* (owned by the caller) */
    GHashTable *ios;            /* async-ref -> Io* */
    uint64_t next_ref;
    bool dead;                  /* reader ended: no more replies */
    bool closing;
    GThread *reader;
};

struct DextUsbHostDevice {
    UsbState *st;
};

struct DextUsbHostInterface {
    UsbState *st;
};

struct DextUsbHostPipe {
    UsbState *st;
    uint8_t addr;
    bool closed;                /* by select_alt / configuration change */
    DextUsbEndpointDescriptor desc;
};

struct UsbState {
    DextService *svc;
    Chan *ch;
    bool is_iface;
    uint8_t ifnum;
    GMutex lock;                /* objects below */
    GCond cond;
    unsigned speed;
    uint8_t config;
    DextUsbDeviceDescriptor ddesc;
    uint8_t *cfg;               /* configuration descriptor set */
    size_t cfg_len;             /* bytes that may be walked */
    GPtrArray *old_cfgs;        /* kept until the end: old pointers stay valid */
    uint8_t alt;
    bool opened;
    bool stopping;              /* phase 0 began: no new IO */
    int outstanding;            /* accepted IO whose completion has not run */
    GPtrArray *pipes;           /* DextUsbHostPipe*, all ever made */
    DextUsbHostDevice dev;
    DextUsbHostInterface intf;
};

static GMutex open_lock;        /* creation of svc->usb */
/* the channel whose reader thread this is (NULL elsewhere) */
static __thread Chan *tls_reader;
/* > 0 while a handler on the reader thread waits in chan_call */
static __thread unsigned tls_reader_waits;

static void chan_unref(Chan *ch)
{
    if (g_atomic_int_dec_and_test(&ch->ref)) {
        g_hash_table_destroy(ch->calls);
        g_hash_table_destroy(ch->ios);
        g_mutex_clear(&ch->lock);
        g_mutex_clear(&ch->send_lock);
        g_cond_clear(&ch->cond);
        if (ch->fd >= 0) {
            close(ch->fd);
        }
        g_free(ch);
    }
}

static void io_run(void *data)
{
    Io *io = data;
    UsbState *st = io->st;
    io->fn(io->ctx, io->status, io->actual, io->ts);
    g_mutex_lock(&st->lock);
    st->outstanding--;
    g_cond_broadcast(&st->cond);
    g_mutex_unlock(&st->lock);
    g_free(io);
}

/* Hand a finished IO to its queue (any thread; the IO is out of ch->ios). */
static void io_complete(Io *io, int status, uint32_t actual, uint64_t ts)
{
    io->status = status;
    io->actual = actual;
    io->ts = ts;
    /* inline only from the reader's own loop: never nested inside a
     * handler's synchronous call (it may hold locks another handler
     * needs) */
    if ((tls_reader && !tls_reader_waits ? dext_queue_run_or_dispatch(io->q, io_run, io)
                                         : dext_queue_dispatch_async(io->q, io_run, io)) < 0) {
        /* The queue is being destroyed: the driver gave up on it. */
        DEXT_WARN("USB completion for endpoint 0x%02x dropped: its queue is gone", io->ep);
        UsbState *st = io->st;
        g_mutex_lock(&st->lock);
        st->outstanding--;
        g_cond_broadcast(&st->cond);
        g_mutex_unlock(&st->lock);
        g_free(io);
    }
}

/* Everything still waiting on the channel fails: callers -ESHUTDOWN, IO
 * -ECANCELED (ch->lock held). */
static void chan_fail_all_locked(Chan *ch, GPtrArray *ios_out)
{
    GHashTableIter it;
    gpointer k, v;
    g_hash_table_iter_init(&it, ch->calls);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        Call *c = v;
        c->done = true;
        c->rc = -ESHUTDOWN;
        g_hash_table_iter_remove(&it);
    }
    g_hash_table_iter_init(&it, ch->ios);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        g_ptr_array_add(ios_out, v);
        g_hash_table_iter_steal(&it);
    }
    g_cond_broadcast(&ch->cond);
}

/* No more replies: callers fail -ESHUTDOWN, pending IO completes
 * -ECANCELED (reader thread). */
static void chan_kill(Chan *ch)
{
    GPtrArray *ios = g_ptr_array_new();
    g_mutex_lock(&ch->lock);
    ch->dead = true;
    chan_fail_all_locked(ch, ios);
    g_mutex_unlock(&ch->lock);
    for (guint i = 0; i < ios->len; i++) {
        io_complete(ios->pdata[i], -ECANCELED, 0, dext_time_ns());
    }
    g_ptr_array_free(ios, TRUE);
}

static void reader_event(Chan *ch, DextMsg *m)
{
    guint64 ref, ts;
    gint32 status;
    guint32 actual;
    g_variant_get(m->body, "(tiut)", &ref, &status, &actual, &ts);
    g_mutex_lock(&ch->lock);
    Io *io = g_hash_table_lookup(ch->ios, &ref);
    if (io) {
        g_hash_table_steal(ch->ios, &ref);
    }
    g_mutex_unlock(&ch->lock);
    if (!io) {
        DEXT_WARN("USB_IO_DONE for unknown request %" G_GUINT64_FORMAT " ignored", ref);
        return;
    }
    /* Statuses are the publisher's word: keep them within what usb.h
     * promises (negative errno or 0). */
    if (status > 0) {
        status = -EIO;
    }
    io_complete(io, status, MIN(actual, io->length), ts);
}

/*
 * Read one message and act on it (reader thread only): 0, -ETIMEDOUT
 * (nothing within @timeout_ms), or another -errno: the channel is broken
 * and was marked dead (calls fail, IO completes -ECANCELED).
 */
static int reader_step(Chan *ch, int timeout_ms)
{
    DextMsg m;
    char *why = NULL;
    int rc = dext_ipc_recv(ch->fd, DEXT_CH_PROV | DEXT_CH_PROVEV, &m, timeout_ms, &why);
    if (rc == -ETIMEDOUT) {
        return rc;
    }
    if (rc < 0) {
        /* The publisher went away or broke the protocol: either way
         * nothing more can be trusted on this channel. */
        if (rc != -ECONNRESET && rc != -EPIPE && rc != -EBADF) {
            DEXT_WARN("USB provider channel: %s: closing it", why ? why : g_strerror(-rc));
        }
        g_free(why);
        chan_kill(ch);
        return rc;
    }
    if (m.flags & DEXT_MSG_F_REPLY) {
        g_mutex_lock(&ch->lock);
        Call *c = g_hash_table_lookup(ch->calls, GUINT_TO_POINTER(m.reply_to));
        if (c) {
            g_hash_table_remove(ch->calls, GUINT_TO_POINTER(m.reply_to));
            c->reply = m;
            c->done = true;
            g_cond_broadcast(&ch->cond);
        }
        g_mutex_unlock(&ch->lock);
        if (!c) {
            dext_msg_clear(&m); /* a caller that gave up */
        }
        return 0;
    }
    if (m.type == DEXT_MSG_USB_IO_DONE) {
        reader_event(ch, &m);
    } else {
        DEXT_WARN("USB provider sent an unexpected %s: ignored", dext_msg_name(m.type));
    }
    dext_msg_clear(&m);
    return 0;
}

static gpointer reader_thread(gpointer data)
{
    Chan *ch = data;
    tls_reader = ch;
    for (;;) {
        int rc = reader_step(ch, 1000);
        if (rc == -ETIMEDOUT) {
            bool closing;
            g_mutex_lock(&ch->lock);
            closing = ch->closing;
            g_mutex_unlock(&ch->lock);
            if (closing) {
                break;
            }
        } else if (rc < 0) {
            break;
        }
    }
    /* closing: what is still waiting fails (after a broken channel this
     * finds nothing left) */
    chan_kill(ch);
    return NULL;
}

static int chan_new(int fd, Chan **out)
{
    Chan *ch = g_new0(Chan, 1);
    ch->ref = 1;
    ch->fd = fd;
    ch->next_ref = 1;
    g_mutex_init(&ch->lock);
    g_mutex_init(&ch->send_lock);
    g_cond_init(&ch->cond);
    ch->calls = g_hash_table_new(g_direct_hash, g_direct_equal);
    ch->ios = g_hash_table_new(g_int64_hash, g_int64_equal);
    ch->reader = g_thread_try_new("dext-usb", reader_thread, ch, NULL);
    if (!ch->reader) {
        chan_unref(ch);
        return -EAGAIN;
    }
    *out = ch;
    return 0;
}

/* Stop the reader (pending calls and IO fail as if the publisher left). */
static void chan_close(Chan *ch)
{
    g_mutex_lock(&ch->lock);
    ch->closing = true;
    g_mutex_unlock(&ch->lock);
    shutdown(ch->fd, SHUT_RDWR);
    g_thread_join(ch->reader);
    ch->reader = NULL;
}

/*
 * Send @type with @body and wait up to @timeout_ms for its reply.  An ERROR
 * reply becomes its -errno; *reply (if given) gets the reply's message,
 * which the caller clears.  -ESHUTDOWN once the channel is gone.
 */
static int chan_call(Chan *ch, uint16_t type, GVariant *body, DextMsg *reply,
                     unsigned timeout_ms)
{
    DextMsg req;
    Call c = { 0 };
    int rc;

    dext_msg_init(&req, type, body);
    g_mutex_lock(&ch->lock);
    if (ch->dead || ch->closing) {
        g_mutex_unlock(&ch->lock);
        dext_msg_clear(&req);
        return -ESHUTDOWN;
    }
    if (++ch->serial == 0) {
        ++ch->serial;
    }
    req.serial = ch->serial;
    g_hash_table_insert(ch->calls, GUINT_TO_POINTER(req.serial), &c);
    g_mutex_unlock(&ch->lock);

    g_mutex_lock(&ch->send_lock);
    rc = dext_ipc_send(ch->fd, &req);
    g_mutex_unlock(&ch->send_lock);

    gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    if (rc == 0 && tls_reader == ch) {
        /* a completion handler running on this channel's reader: read the
         * channel here until the reply comes (see the top of this file) */
        bool done = false;
        tls_reader_waits++;
        while (!done) {
            gint64 left = (end - g_get_monotonic_time()) / 1000;
            if (left <= 0 || reader_step(ch, (int)left) < 0) {
                break;
            }
            g_mutex_lock(&ch->lock);
            done = c.done;
            g_mutex_unlock(&ch->lock);
        }
        tls_reader_waits--;
    }
    g_mutex_lock(&ch->lock);
    if (rc == 0) {
        while (!c.done && tls_reader != ch && g_cond_wait_until(&ch->cond, &ch->lock, end)) {
        }
        rc = c.done ? c.rc : -ETIMEDOUT;
    } else if (rc == -EPIPE || rc == -ECONNRESET) {
        rc = -ESHUTDOWN;
    }
    if (!c.done) {
        g_hash_table_remove(ch->calls, GUINT_TO_POINTER(req.serial));
    }
    g_mutex_unlock(&ch->lock);
    dext_msg_clear(&req);

    if (rc == 0 && c.reply.type == DEXT_MSG_ERROR) {
        gint32 err;
        const char *msg;
        g_variant_get(c.reply.body, "(i&s)", &err, &msg);
        DEXT_DEBUG("%s: %s", dext_msg_name(type), msg);
        rc = err < 0 && err > -4096 ? err : -EPROTO;
    } else if (rc == 0 && c.reply.type != type) {
        rc = -EPROTO;
    }
    if (rc == 0 && reply) {
        *reply = c.reply;
    } else if (c.done && c.reply.body) {
        dext_msg_clear(&c.reply);
    }
    return rc;
}

/* ---- state ----------------------------------------------------------------- */

static bool is_interface_nub(DextService *svc)
{
    uint64_t v;
    return dext_service_provider_u64(svc, "bInterfaceNumber", &v) == 0;
}

/* Read USB_INFO into @st (speed, configuration, descriptors). */
static int state_refresh(UsbState *st)
{
    DextMsg r;
    int rc = chan_call(st->ch, DEXT_MSG_USB_INFO, NULL, &r, DEXT_IPC_TIMEOUT_MS);
    if (rc < 0) {
        return rc;
    }
    guint32 speed;
    guint8 config;
    GVariant *vd, *vc;
    g_variant_get(r.body, "(uy@ay@ay)", &speed, &config, &vd, &vc);
    gsize dlen, clen;
    const uint8_t *d = g_variant_get_fixed_array(vd, &dlen, 1);
    const uint8_t *c = g_variant_get_fixed_array(vc, &clen, 1);
    long total = dext__usb_config_check(c, clen);
    if (dlen < sizeof(DextUsbDeviceDescriptor) || d[0] < sizeof(DextUsbDeviceDescriptor) ||
        d[1] != DEXT__USB_DT_DEVICE || total < 0) {
        DEXT_ERROR("USB provider sent malformed descriptors (device %zu bytes, "
                   "configuration %zu bytes)", (size_t)dlen, (size_t)clen);
        rc = -EPROTO;
    } else {
        g_mutex_lock(&st->lock);
        memcpy(&st->ddesc, d, sizeof(st->ddesc));
        st->speed = speed <= DEXT_USBHOST_SPEED_SUPER ? speed : DEXT_USBHOST_SPEED_UNKNOWN;
        st->config = config;
        if (st->cfg) {
            g_ptr_array_add(st->old_cfgs, st->cfg);
        }
        st->cfg = g_memdup2(c, (gsize)total);
        st->cfg_len = (size_t)total;
        g_mutex_unlock(&st->lock);
    }
    g_variant_unref(vd);
    g_variant_unref(vc);
    dext_msg_clear(&r);
    return rc;
}

static void state_free(UsbState *st)
{
    g_ptr_array_free(st->pipes, TRUE);
    g_ptr_array_free(st->old_cfgs, TRUE);
    g_free(st->cfg);
    g_mutex_clear(&st->lock);
    g_cond_clear(&st->cond);
    g_free(st);
}

/* Phase 0 (before stop): every IO done and its completion run.  Phase 1
 * (after stop): channel closed, objects freed.  Control thread. */
static void stop_hook(DextService *svc, int phase, void *ctx)
{
    UsbState *st = ctx;
    Chan *ch = st->ch;
    if (phase == 0) {
        g_mutex_lock(&st->lock);
        st->stopping = true;
        g_mutex_unlock(&st->lock);
        /* Ask the publisher to abort, endpoint by endpoint: it posts each
         * IO's USB_IO_DONE(-ECANCELED) before the reply. */
        GArray *eps = g_array_new(FALSE, FALSE, 1);
        g_mutex_lock(&ch->lock);
        GHashTableIter it;
        gpointer k, v;
        g_hash_table_iter_init(&it, ch->ios);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            uint8_t ep = ((Io *)v)->ep;
            bool seen = false;
            for (guint i = 0; i < eps->len; i++) {
                seen |= g_array_index(eps, uint8_t, i) == ep;
            }
            if (!seen) {
                g_array_append_val(eps, ep);
            }
        }
        g_mutex_unlock(&ch->lock);
        for (guint i = 0; i < eps->len; i++) {
            int rc = chan_call(ch, DEXT_MSG_USB_ABORT,
                               g_variant_new("(y)", g_array_index(eps, uint8_t, i)), NULL,
                               DEXT_IPC_TIMEOUT_MS);
            if (rc < 0 && rc != -ESHUTDOWN) {
                DEXT_WARN("abort of endpoint 0x%02x at stop: %s", g_array_index(eps, uint8_t, i),
                          g_strerror(-rc));
            }
        }
        g_array_free(eps, TRUE);
        /* Whatever the publisher did not complete, we do. */
        GPtrArray *left = g_ptr_array_new();
        g_mutex_lock(&ch->lock);
        g_hash_table_iter_init(&it, ch->ios);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            g_ptr_array_add(left, v);
            g_hash_table_iter_steal(&it);
        }
        g_mutex_unlock(&ch->lock);
        for (guint i = 0; i < left->len; i++) {
            io_complete(left->pdata[i], -ECANCELED, 0, dext_time_ns());
        }
        g_ptr_array_free(left, TRUE);
        /* The completions run on their queues (the service queue is free:
         * hooks run on the control thread); wait until they all have. */
        gint64 end = g_get_monotonic_time() + STOP_DRAIN_MS * 1000;
        g_mutex_lock(&st->lock);
        while (st->outstanding > 0 && g_cond_wait_until(&st->cond, &st->lock, end)) {
        }
        if (st->outstanding > 0) {
            DEXT_ERROR("%d USB completions did not run within %d ms of stop", st->outstanding,
                       STOP_DRAIN_MS);
        }
        g_mutex_unlock(&st->lock);
        return;
    }
    /* Phase 1: the publisher sees the channel close, closes what we had
     * open and frees buffers we still held (their mappings stay ours
     * until released). */
    chan_close(ch);
    g_mutex_lock(&open_lock);
    svc->usb = NULL;
    g_mutex_unlock(&open_lock);
    /* A completion still counted would touch st: leak it rather than
     * free it under a late block (only after the error above). */
    g_mutex_lock(&st->lock);
    bool idle = st->outstanding == 0;
    g_mutex_unlock(&st->lock);
    if (idle) {
        state_free(st);
    }
    chan_unref(ch);
}

static int usb_request(UsbState *st, uint8_t bmRequestType, uint8_t bRequest, uint16_t wValue,
                       uint16_t wIndex, void *data, uint16_t wLength, uint32_t *actual,
                       unsigned timeout_ms);

static int state_get(DextService *svc, bool want_iface, UsbState **out)
{
    int rc, fd = -1;
    if (!svc || !out) {
        return -EINVAL;
    }
    g_mutex_lock(&open_lock);
    UsbState *st = svc->usb;
    if (st) {
        rc = st->is_iface == want_iface ? 0 : -ENODEV;
        goto out;
    }
    uint64_t vid;
    if (dext_service_provider_u64(svc, "idVendor", &vid) < 0 ||
        is_interface_nub(svc) != want_iface) {
        rc = -ENODEV;
        goto out;
    }
    if ((rc = dext__provider_open(svc, &fd)) < 0) {
        goto out;
    }
    st = g_new0(UsbState, 1);
    st->svc = svc;
    st->is_iface = want_iface;
    st->dev.st = st;
    st->intf.st = st;
    st->pipes = g_ptr_array_new_with_free_func(g_free);
    st->old_cfgs = g_ptr_array_new_with_free_func(g_free);
    g_mutex_init(&st->lock);
    g_cond_init(&st->cond);
    if (want_iface) {
        uint64_t n = 0;
        dext_service_provider_u64(svc, "bInterfaceNumber", &n);
        st->ifnum = (uint8_t)n;
    }
    if ((rc = chan_new(fd, &st->ch)) < 0) {
        close(fd);
        goto fail_state;
    }
    if ((rc = state_refresh(st)) < 0) {
        goto fail_chan;
    }
    if (want_iface &&
        dext__usb_find_interface(st->cfg, st->cfg_len, st->ifnum, 0) < 0) {
        DEXT_ERROR("USB provider: interface %u is not in the configuration", st->ifnum);
        rc = -EPROTO;
        goto fail_chan;
    }
    if (want_iface) {
        /* A previous client may have left another alternate setting:
         * ask the device (GET_INTERFACE needs no open). */
        uint8_t alt = 0;
        uint32_t n = 0;
        if (usb_request(st, 0x81, 10 /* GET_INTERFACE */, 0, st->ifnum, &alt, 1, &n, 0) == 0 &&
            n == 1 && dext__usb_find_interface(st->cfg, st->cfg_len, st->ifnum, alt) >= 0) {
            st->alt = alt;
        }
    }
    dext__service_add_stop_hook(svc, stop_hook, st);
    svc->usb = st;
    rc = 0;
    goto out;

fail_chan:
    chan_close(st->ch);
    chan_unref(st->ch);
fail_state:
    state_free(st);
    st = NULL;
out:
    g_mutex_unlock(&open_lock);
    if (rc == 0) {
        *out = st;
    }
    return rc;
}

int dext_service_usb_device(DextService *svc, DextUsbHostDevice **out)
{
    UsbState *st;
    int rc = state_get(svc, false, &st);
    if (rc == 0) {
        *out = &st->dev;
    }
    return rc;
}

int dext_service_usb_interface(DextService *svc, DextUsbHostInterface **out)
{
    UsbState *st;
    int rc = state_get(svc, true, &st);
    if (rc == 0) {
        *out = &st->intf;
    }
    return rc;
}

/* ---- shared by device and interface -------------------------------------- */

static int usb_open(UsbState *st)
{
    int rc = chan_call(st->ch, DEXT_MSG_USB_OPEN, NULL, NULL, DEXT_IPC_TIMEOUT_MS);
    if (rc == 0) {
        g_mutex_lock(&st->lock);
        st->opened = true;
        g_mutex_unlock(&st->lock);
    }
    return rc;
}

static void close_pipes_locked(UsbState *st)
{
    for (guint i = 0; i < st->pipes->len; i++) {
        ((DextUsbHostPipe *)st->pipes->pdata[i])->closed = true;
    }
}

static int usb_close(UsbState *st)
{
    int rc = chan_call(st->ch, DEXT_MSG_USB_CLOSE, NULL, NULL, DEXT_IPC_TIMEOUT_MS);
    g_mutex_lock(&st->lock);
    st->opened = false;
    close_pipes_locked(st);
    g_mutex_unlock(&st->lock);
    return rc;
}

static int usb_request(UsbState *st, uint8_t bmRequestType, uint8_t bRequest, uint16_t wValue,
                       uint16_t wIndex, void *data, uint16_t wLength, uint32_t *actual,
                       unsigned timeout_ms)
{
    if (wLength > MAX_CONTROL || (wLength && !data)) {
        return -EINVAL;
    }
    bool in = bmRequestType & 0x80;
    timeout_ms = timeout_ms ? timeout_ms : CTRL_DEFAULT_MS;
    GVariant *out = g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, in ? NULL : data,
                                              in ? 0 : wLength, 1);
    DextMsg r;
    int rc = chan_call(st->ch, DEXT_MSG_USB_CONTROL,
                       g_variant_new("(yyqqqu@ay)", bmRequestType, bRequest, wValue, wIndex,
                                     wLength, timeout_ms, out),
                       &r, timeout_ms + DEXT_IPC_TIMEOUT_MS);
    if (rc < 0) {
        return rc;
    }
    guint32 act;
    GVariant *vin;
    g_variant_get(r.body, "(u@ay)", &act, &vin);
    gsize n;
    const uint8_t *p = g_variant_get_fixed_array(vin, &n, 1);
    if (in) {
        /* Never more than asked for, whatever the publisher says. */
        n = MIN(n, (gsize)wLength);
        if (n) { /* an empty array may be NULL */
            memcpy(data, p, n);
        }
        act = MIN(act, (guint32)n);
    } else {
        act = MIN(act, (guint32)wLength);
    }
    if (actual) {
        *actual = act;
    }
    g_variant_unref(vin);
    dext_msg_clear(&r);
    return 0;
}

static int usb_string(UsbState *st, uint8_t index, char *buf, size_t size)
{
    uint8_t d[255];
    uint32_t n = 0;
    if (!buf || !size) {
        return -EINVAL;
    }
    buf[0] = 0;
    if (index == 0) {
        return -ENOENT;
    }
    int rc = usb_request(st, 0x80, 6 /* GET_DESCRIPTOR */, (uint16_t)(DEXT__USB_DT_STRING << 8 | index),
                         0x0409, d, sizeof(d), &n, 0);
    if (rc == -EPIPE) {
        return -ENOENT;
    }
    if (rc < 0) {
        return rc;
    }
    rc = dext__usb_string_decode(d, n, buf, size);
    return rc < 0 ? -EPROTO : 0;
}

/* ---- device ----------------------------------------------------------------- */

int dext_usbhost_device_open(DextUsbHostDevice *d)
{
    return d ? usb_open(d->st) : -EINVAL;
}

int dext_usbhost_device_close(DextUsbHostDevice *d)
{
    return d ? usb_close(d->st) : -EINVAL;
}

const DextUsbDeviceDescriptor *dext_usbhost_device_descriptor(DextUsbHostDevice *d)
{
    return d ? &d->st->ddesc : NULL;
}

unsigned dext_usbhost_device_speed(DextUsbHostDevice *d)
{
    return d ? d->st->speed : DEXT_USBHOST_SPEED_UNKNOWN;
}

const DextUsbConfigurationDescriptor *dext_usbhost_device_configuration(DextUsbHostDevice *d,
                                                                        size_t *len)
{
    if (!d) {
        return NULL;
    }
    if (len) {
        *len = d->st->cfg_len;
    }
    return (const DextUsbConfigurationDescriptor *)d->st->cfg;
}

int dext_usbhost_device_set_configuration(DextUsbHostDevice *d, uint8_t value)
{
    if (!d) {
        return -EINVAL;
    }
    int rc = chan_call(d->st->ch, DEXT_MSG_USB_SET_CONFIG, g_variant_new("(y)", value), NULL,
                       DEXT_IPC_TIMEOUT_MS);
    if (rc < 0) {
        return rc;
    }
    g_mutex_lock(&d->st->lock);
    close_pipes_locked(d->st);
    g_mutex_unlock(&d->st->lock);
    return state_refresh(d->st);
}

int dext_usbhost_device_request(DextUsbHostDevice *d, uint8_t bmRequestType, uint8_t bRequest,
                                uint16_t wValue, uint16_t wIndex, void *data, uint16_t wLength,
                                uint32_t *actual, unsigned timeout_ms)
{
    return d ? usb_request(d->st, bmRequestType, bRequest, wValue, wIndex, data, wLength, actual,
                           timeout_ms)
             : -EINVAL;
}

int dext_usbhost_device_string(DextUsbHostDevice *d, uint8_t index, char *buf, size_t size)
{
    return d ? usb_string(d->st, index, buf, size) : -EINVAL;
}

/* ---- interface -------------------------------------------------------------- */

int dext_usbhost_interface_open(DextUsbHostInterface *i)
{
    return i ? usb_open(i->st) : -EINVAL;
}

int dext_usbhost_interface_close(DextUsbHostInterface *i)
{
    return i ? usb_close(i->st) : -EINVAL;
}

const DextUsbInterfaceDescriptor *dext_usbhost_interface_descriptor(DextUsbHostInterface *i)
{
    if (!i) {
        return NULL;
    }
    UsbState *st = i->st;
    g_mutex_lock(&st->lock);
    long off = dext__usb_find_interface(st->cfg, st->cfg_len, st->ifnum, st->alt);
    const uint8_t *p = off < 0 ? NULL : st->cfg + off;
    g_mutex_unlock(&st->lock);
    return (const DextUsbInterfaceDescriptor *)p;
}

const DextUsbDeviceDescriptor *dext_usbhost_interface_device_descriptor(DextUsbHostInterface *i)
{
    return i ? &i->st->ddesc : NULL;
}

const DextUsbConfigurationDescriptor *dext_usbhost_interface_configuration(DextUsbHostInterface *i,
                                                                           size_t *len)
{
    if (!i) {
        return NULL;
    }
    if (len) {
        *len = i->st->cfg_len;
    }
    return (const DextUsbConfigurationDescriptor *)i->st->cfg;
}

unsigned dext_usbhost_interface_speed(DextUsbHostInterface *i)
{
    return i ? i->st->speed : DEXT_USBHOST_SPEED_UNKNOWN;
}

int dext_usbhost_interface_request(DextUsbHostInterface *i, uint8_t bmRequestType,
                                   uint8_t bRequest, uint16_t wValue, uint16_t wIndex, void *data,
                                   uint16_t wLength, uint32_t *actual, unsigned timeout_ms)
{
    return i ? usb_request(i->st, bmRequestType, bRequest, wValue, wIndex, data, wLength, actual,
                           timeout_ms)
             : -EINVAL;
}

int dext_usbhost_interface_string(DextUsbHostInterface *i, uint8_t index, char *buf, size_t size)
{
    return i ? usb_string(i->st, index, buf, size) : -EINVAL;
}

int dext_usbhost_interface_select_alt(DextUsbHostInterface *i, uint8_t alt)
{
    if (!i) {
        return -EINVAL;
    }
    UsbState *st = i->st;
    g_mutex_lock(&st->lock);
    long off = dext__usb_find_interface(st->cfg, st->cfg_len, st->ifnum, alt);
    g_mutex_unlock(&st->lock);
    if (off < 0) {
        return -EINVAL;
    }
    int rc = chan_call(st->ch, DEXT_MSG_USB_SELECT_ALT, g_variant_new("(y)", alt), NULL,
                       DEXT_IPC_TIMEOUT_MS);
    if (rc < 0) {
        return rc;
    }
    g_mutex_lock(&st->lock);
    st->alt = alt;
    close_pipes_locked(st);
    g_mutex_unlock(&st->lock);
    return 0;
}

int dext_usbhost_interface_copy_pipe(DextUsbHostInterface *i, uint8_t address,
                                     DextUsbHostPipe **out)
{
    if (!i || !out) {
        return -EINVAL;
    }
    UsbState *st = i->st;
    int rc = 0;
    g_mutex_lock(&st->lock);
    if (!st->opened) {
        rc = -EBUSY;
        goto out;
    }
    for (guint k = 0; k < st->pipes->len; k++) {
        DextUsbHostPipe *p = st->pipes->pdata[k];
        if (!p->closed && p->addr == address) {
            *out = p;
            goto out;
        }
    }
    long off = dext__usb_find_endpoint(st->cfg, st->cfg_len, st->ifnum, st->alt, address);
    if (off < 0) {
        rc = off == -ENOENT ? -ENOENT : -EPROTO;
        goto out;
    }
    DextUsbHostPipe *p = g_new0(DextUsbHostPipe, 1);
    p->st = st;
    p->addr = address;
    memcpy(&p->desc, st->cfg + off, sizeof(p->desc));
    g_ptr_array_add(st->pipes, p);
    *out = p;
out:
    g_mutex_unlock(&st->lock);
    return rc;
}

/* ---- IO buffers -------------------------------------------------------------- */

static void buffer_release(void *ctx, uint64_t handle)
{
    Chan *ch = ctx;
    int rc = chan_call(ch, DEXT_MSG_USB_BUFFER_FREE, g_variant_new("(t)", (guint64)handle), NULL,
                       DEXT_IPC_TIMEOUT_MS);
    if (rc < 0 && rc != -ESHUTDOWN) {
        DEXT_WARN("USB buffer %" G_GUINT64_FORMAT " not returned to the provider: %s", handle,
                  g_strerror(-rc));
    }
    chan_unref(ch);
}

int dext_usbhost_interface_create_io_buffer(DextUsbHostInterface *i, uint32_t direction,
                                            uint64_t capacity, DextBuffer **out)
{
    if (!i || !out || !direction || (direction & ~DEXT_DMA_INOUT) || !capacity ||
        capacity > MAX_BUFFER) {
        return -EINVAL;
    }
    Chan *ch = i->st->ch;
    DextMsg r;
    int rc = chan_call(ch, DEXT_MSG_USB_BUFFER_ALLOC,
                       g_variant_new("(tu)", (guint64)capacity, direction), &r,
                       DEXT_IPC_TIMEOUT_MS);
    if (rc < 0) {
        return rc;
    }
    guint64 handle, cap, off;
    g_variant_get(r.body, "(ttt)", &handle, &cap, &off);
    int fd = dext_msg_take_fd(&r, 0);
    dext_msg_clear(&r);
    long page = sysconf(_SC_PAGESIZE);
    uint64_t map = (capacity + (uint64_t)page - 1) & ~((uint64_t)page - 1);
    void *p = MAP_FAILED;
    if (fd < 0 || cap < capacity || off % (uint64_t)page) {
        DEXT_ERROR("USB provider answered a buffer of %" G_GUINT64_FORMAT " bytes at offset 0x%"
                   G_GINT64_MODIFIER "x for %" G_GUINT64_FORMAT, cap, off, capacity);
        rc = -EPROTO;
    } else {
        p = mmap(NULL, map, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)off);
        rc = p == MAP_FAILED ? -errno : 0;
    }
    if (rc < 0) {
        if (fd >= 0) {
            close(fd);
        }
        chan_call(ch, DEXT_MSG_USB_BUFFER_FREE, g_variant_new("(t)", handle), NULL,
                  DEXT_IPC_TIMEOUT_MS);
        return rc;
    }
    g_atomic_int_inc(&ch->ref);
    *out = dext__buffer_new_provider(p, map, capacity, direction, fd, off, handle,
                                     buffer_release, ch);
    return 0;
}

/* ---- pipes ------------------------------------------------------------------- */

const DextUsbEndpointDescriptor *dext_usbhost_pipe_descriptor(DextUsbHostPipe *p)
{
    return p ? &p->desc : NULL;
}

/* The buffer's provider handle if it is one of this channel's. */
static int io_check(DextUsbHostPipe *p, DextBuffer *buf, uint64_t offset, uint32_t length,
                    uint64_t *handle)
{
    void *owner;
    if (!p || !buf) {
        return -EINVAL;
    }
    if (!dext__buffer_provider(buf, handle, &owner) || owner != p->st->ch) {
        return -EINVAL; /* only the provider's own buffers can move data */
    }
    uint64_t cap = dext_buffer_capacity(buf);
    if (offset > cap || length > cap - offset) {
        return -ERANGE;
    }
    if (p->closed) {
        return -EBADF;
    }
    return 0;
}

int dext_usbhost_pipe_io(DextUsbHostPipe *p, DextBuffer *buf, uint64_t offset, uint32_t length,
                         uint32_t *actual, unsigned timeout_ms)
{
    uint64_t handle;
    int rc = io_check(p, buf, offset, length, &handle);
    if (rc < 0) {
        return rc;
    }
    timeout_ms = timeout_ms ? timeout_ms : IO_DEFAULT_MS;
    DextMsg r;
    rc = chan_call(p->st->ch, DEXT_MSG_USB_IO,
                   g_variant_new("(yttuut)", p->addr, (guint64)handle, (guint64)offset, length,
                                 timeout_ms, (guint64)0),
                   &r, timeout_ms + DEXT_IPC_TIMEOUT_MS);
    if (rc < 0) {
        return rc;
    }
    gint32 status;
    guint32 act;
    guint64 ts;
    g_variant_get(r.body, "(iut)", &status, &act, &ts);
    dext_msg_clear(&r);
    if (actual) {
        *actual = MIN(act, length);
    }
    return status > 0 ? -EIO : status;
}

int dext_usbhost_pipe_async_io(DextUsbHostPipe *p, DextBuffer *buf, uint64_t offset,
                               uint32_t length, DextQueue *q, DextUsbCompletion done, void *ctx)
{
    uint64_t handle;
    int rc = io_check(p, buf, offset, length, &handle);
    if (rc < 0) {
        return rc;
    }
    if (!done) {
        return -EINVAL;
    }
    UsbState *st = p->st;
    Chan *ch = st->ch;
    Io *io = g_new0(Io, 1);
    io->st = st;
    io->ep = p->addr;
    io->length = length;
    io->q = q ? q : dext_service_queue(st->svc);
    io->fn = done;
    io->ctx = ctx;
    g_mutex_lock(&st->lock);
    if (st->stopping) {
        g_mutex_unlock(&st->lock);
        g_free(io);
        return -ECANCELED;
    }
    st->outstanding++;
    g_mutex_unlock(&st->lock);
    /* Registered before it is sent: its USB_IO_DONE may come at once.
     * Posted: the publisher answers only with the USB_IO_DONE, which
     * carries its refusal too, so queueing costs no round trip. */
    g_mutex_lock(&ch->lock);
    if (ch->dead || ch->closing) {
        g_mutex_unlock(&ch->lock);
        rc = -ESHUTDOWN;
        goto not_sent;
    }
    io->ref = ch->next_ref++;
    g_hash_table_insert(ch->ios, &io->ref, io);
    g_mutex_unlock(&ch->lock);
    DextMsg req;
    dext_msg_init(&req, DEXT_MSG_USB_IO,
                  g_variant_new("(yttuut)", p->addr, (guint64)handle, (guint64)offset, length,
                                (guint32)0, (guint64)io->ref));
    req.flags = DEXT_MSG_F_POSTED;
    g_mutex_lock(&ch->send_lock);
    rc = dext_ipc_send(ch->fd, &req);
    g_mutex_unlock(&ch->send_lock);
    dext_msg_clear(&req);
    if (rc == 0) {
        return 0;
    }
    if (rc == -EPIPE || rc == -ECONNRESET) {
        rc = -ESHUTDOWN;
    }
    /* Not sent: no completion will come (unless the channel died and the
     * reader already completed it: then it was reported once). */
    g_mutex_lock(&ch->lock);
    bool mine = g_hash_table_steal(ch->ios, &io->ref);
    g_mutex_unlock(&ch->lock);
    if (!mine) {
        return 0;
    }
not_sent:
    g_mutex_lock(&st->lock);
    st->outstanding--;
    g_cond_broadcast(&st->cond);
    g_mutex_unlock(&st->lock);
    g_free(io);
    return rc;
}

int dext_usbhost_pipe_abort(DextUsbHostPipe *p)
{
    if (!p) {
        return -EINVAL;
    }
    if (p->closed) {
        return -EBADF;
    }
    return chan_call(p->st->ch, DEXT_MSG_USB_ABORT, g_variant_new("(y)", p->addr), NULL,
                     DEXT_IPC_TIMEOUT_MS);
}

int dext_usbhost_pipe_clear_stall(DextUsbHostPipe *p)
{
    if (!p) {
        return -EINVAL;
    }
    if (p->closed) {
        return -EBADF;
    }
    return chan_call(p->st->ch, DEXT_MSG_USB_CLEAR_STALL, g_variant_new("(y)", p->addr), NULL,
                     DEXT_IPC_TIMEOUT_MS);
}
