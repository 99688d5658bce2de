/*
 * USB provider: the provider protocol (docs/runtime/nubs.md) over the
 * family API of usb.h.  See usb-provider.h for the contract.
 *
 * Shape: the provider keeps one ProvDev per attached device and one
 * ProvNub per published nub; a ProvChan per client channel runs on its
 * own thread.  An async IO's completion is posted by the thread that
 * completes it (controller event thread, or whoever aborts) when nothing
 * is queued before it and the socket takes it at once (MSG_DONTWAIT);
 * otherwise it is queued and the channel thread posts it.  Either way the
 * controller never waits on a client, completions keep their order, and
 * the hot path costs no thread hop in the publisher.  Sync USB_IO is an
 * async IO whose completion is sent as the reply: the channel keeps
 * serving (abort, other pipes) while it is in flight.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "usb-provider.h"
#include "ipc.h"

#define WAIT_POSTED_MS   5000   /* detach: completions reach the client */
#define RESOLVE_MS       5000   /* serve() racing the publish reply */
#define TEARDOWN_MS      10000  /* channel close: pending IO completes */
#define CONTROL_MAX_MS   60000  /* a control request blocks its channel */

typedef struct ProvDev ProvDev;
typedef struct ProvChan ProvChan;

typedef struct ProvNub {
    gint ref;
    uint64_t id;
    ProvDev *pd;                /* NULL once gone */
    DextUsbDevice *dev;         /* referenced */
    int ifnum;                  /* -1: device nub */
    bool gone;                  /* detached, reset or reconfigured away */
    ProvChan *owner;            /* USB_OPEN holder (p->lock) */
} ProvNub;

struct ProvDev {
    gint ref;                   /* p->devs; a USB_SET_CONFIG in progress */
    DextUsbDevice *dev;         /* referenced */
    uint8_t cur_config;         /* 0: unconfigured */
    ProvNub *devnub;
    GPtrArray *ifnubs;          /* ProvNub* (referenced) */
};

typedef struct ChanBuf {
    uint64_t handle;
    DextUsbBuffer *b;
    uint64_t cap;
    uint32_t dir;
    unsigned busy;              /* pending IO on it (c->lock) */
} ChanBuf;

typedef struct ProvIo {
    ProvChan *c;
    ChanBuf *buf;
    DextUsbPipe *pipe;
    uint64_t ref;               /* async-ref; 0: sync */
    uint32_t serial;            /* sync: the request to answer */
    gint64 deadline;            /* monotonic us; 0: none */
    bool timed_out;
    int status;
    uint32_t actual;
    uint64_t ts;
} ProvIo;

struct ProvChan {
    gint ref;
    DextUsbProvider *p;
    uint64_t nub_id;
    ProvNub *nub;               /* referenced, NULL until resolved */
    int fd;
    int wake;                   /* eventfd: completions queued, quit */
    gint quit;
    GMutex lock;                /* pending, done, bufs' busy, flushing */
    GCond cond;
    GHashTable *pending;        /* ProvIo* set */
    GQueue done;                /* ProvIo*, completion order */
    bool flushing;
    bool exited;
    bool warned_posted_sync;    /* channel thread */
    GHashTable *bufs;           /* handle -> ChanBuf* (channel thread) */
    uint64_t next_handle;
    uint64_t buf_bytes;
};

struct DextUsbProvider {
    DextUsbProviderOps ops;
    void *opaque;
    DextUsbHost *host;
    GMutex lock;                /* everything below, nub owners */
    GCond cond;
    GHashTable *devs;           /* DextUsbDevice* -> ProvDev* */
    GHashTable *nubs;           /* id (uint64 key) -> ProvNub* (live) */
    GPtrArray *chans;           /* ProvChan* (live threads) */
    unsigned publishing;        /* attach in progress */
    bool closing;
    /* interface objects are freed by SET_CONFIGURATION: writers change
     * the configuration or alternate setting, readers use pipes */
    GRWLock cfg;
    gint n_buffers;
    gint n_pending;
    unsigned max_pending;       /* per channel */
};

/* ----------------------------------------------------------- nubs */

static ProvNub *nub_ref(ProvNub *n)
{
    g_atomic_int_inc(&n->ref);
    return n;
}

static void nub_unref(ProvNub *n)
{
    if (n && g_atomic_int_dec_and_test(&n->ref)) {
        dext_usb_device_unref(n->dev);
        g_free(n);
    }
}

static uint8_t dev_speed(DextUsbDevice *d)
{
    return (uint8_t)dext_usb_device_speed(d);
}

static void add_u32(GVariantBuilder *b, const char *k, uint32_t v)
{
    g_variant_builder_add(b, "{sv}", k, g_variant_new_uint32(v));
}

static void add_string(GVariantBuilder *b, DextUsbDevice *d, const char *k,
                       uint8_t index)
{
    char s[256];

    if (index && dext_usb_device_string(d, index, s, sizeof(s)) > 0) {
        g_variant_builder_add(b, "{sv}", k, g_variant_new_string(s));
    }
}

/* Properties of a device nub (@ifnum < 0) or interface nub, as GVariant
 * text (g_free). */
static char *nub_props(ProvDev *pd, int ifnum)
{
    DextUsbDevice *d = pd->dev;
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);
    GVariantBuilder b;
    GVariant *v;
    char *txt;

    g_variant_builder_init(&b, G_VARIANT_TYPE("a{sv}"));
    add_u32(&b, "idVendor", dd->idVendor);
    add_u32(&b, "idProduct", dd->idProduct);
    add_u32(&b, "bcdDevice", dd->bcdDevice);
    if (ifnum < 0) {
        add_u32(&b, "bDeviceClass", dd->bDeviceClass);
        add_u32(&b, "bDeviceSubClass", dd->bDeviceSubClass);
        add_u32(&b, "bDeviceProtocol", dd->bDeviceProtocol);
    }
    if (pd->cur_config) {
        add_u32(&b, "bConfigurationValue", pd->cur_config);
    }
    if (ifnum >= 0) {
        DextUsbInterface *i = dext_usb_device_interface(d, (uint8_t)ifnum);
        const DextUsbInterfaceDesc *id = i ? dext_usb_interface_descriptor(i)
                                           : NULL;

        add_u32(&b, "bInterfaceNumber", (uint32_t)ifnum);
        if (id) {
            add_u32(&b, "bInterfaceClass", id->bInterfaceClass);
            add_u32(&b, "bInterfaceSubClass", id->bInterfaceSubClass);
            add_u32(&b, "bInterfaceProtocol", id->bInterfaceProtocol);
        }
    }
    add_u32(&b, "port", dext_usb_device_port(d));
    add_u32(&b, "speed", dev_speed(d));
    add_string(&b, d, "USB Vendor Name", dd->iManufacturer);
    add_string(&b, d, "USB Product Name", dd->iProduct);
    add_string(&b, d, "USB Serial Number", dd->iSerialNumber);
    v = g_variant_ref_sink(g_variant_builder_end(&b));
    txt = g_variant_print(v, TRUE);
    g_variant_unref(v);
    return txt;
}

/* Publish one nub of @pd (not holding p->lock: the callback is an RPC).
 * When publishing fails the nub exists all the same with id 0: not in
 * the registry, but served to the publisher itself (serve_port). */
static ProvNub *nub_publish(DextUsbProvider *p, ProvDev *pd, int ifnum,
                            uint64_t parent)
{
    g_autofree char *props = nub_props(pd, ifnum);
    g_autofree char *name = ifnum < 0
        ? g_strdup_printf("usb@%u", dext_usb_device_port(pd->dev))
        : g_strdup_printf("if%d", ifnum);
    uint64_t id = 0;
    ProvNub *n;
    int ret = -ENOENT;

    /* an interface of an unpublished device stays local too */
    if (ifnum < 0 || parent) {
        ret = p->ops.publish(p->opaque, parent, name,
                             ifnum < 0 ? "IOUSBHostDevice"
                                       : "IOUSBHostInterface", props, &id);
    }
    if (ret < 0 || id == 0) {
        g_warning("usb-provider: publish %s: %s (served locally only)", name,
                  g_strerror(ret < 0 ? -ret : EINVAL));
        id = 0;
    }
    n = g_new0(ProvNub, 1);
    n->ref = 1;                 /* p->nubs */
    n->id = id;
    n->pd = pd;
    n->dev = dext_usb_device_ref(pd->dev);
    n->ifnum = ifnum;
    g_mutex_lock(&p->lock);
    if (id) {
        g_hash_table_insert(p->nubs, &n->id, n);
    }
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
    return n;
}

/* Interfaces of the active configuration: opened (family level) by the
 * provider for as long as it is active. */
static void open_interfaces(ProvDev *pd, uint8_t *nums, unsigned *n)
{
    const DextUsbConfigDesc *c = dext_usb_device_config(pd->dev);

    *n = 0;
    for (unsigned k = 0; k < c->n_alts && *n < 32; k++) {
        DextUsbInterface *i;

        if (c->alts[k].bAlternateSetting != 0) {
            continue;
        }
        i = dext_usb_device_interface(pd->dev, c->alts[k].bInterfaceNumber);
        if (i && dext_usb_interface_open(i) == 0) {
            nums[(*n)++] = c->alts[k].bInterfaceNumber;
        }
    }
}

static void pd_unref(ProvDev *pd)
{
    if (pd && g_atomic_int_dec_and_test(&pd->ref)) {
        g_ptr_array_free(pd->ifnubs, TRUE);
        dext_usb_device_unref(pd->dev);
        g_free(pd);
    }
}

static void publish_interfaces(DextUsbProvider *p, ProvDev *pd,
                               const uint8_t *nums, unsigned n)
{
    for (unsigned k = 0; k < n && pd->devnub; k++) {
        ProvNub *in = nub_publish(p, pd, nums[k], pd->devnub->id);
        bool late;

        g_mutex_lock(&p->lock);
        /* detached while USB_SET_CONFIG published: take it back */
        late = pd->devnub->gone;
        if (late) {
            in->gone = true;
            in->pd = NULL;
            if (in->id) {
                g_hash_table_remove(p->nubs, &in->id);
            }
        } else {
            g_ptr_array_add(pd->ifnubs, in);
        }
        g_mutex_unlock(&p->lock);
        if (late) {
            if (in->id) {
                p->ops.terminate(p->opaque, in->id);
            }
            nub_unref(in);
        }
    }
}

static void dev_attach(DextUsbProvider *p, DextUsbDevice *d)
{
    ProvDev *pd;
    uint8_t nums[32];
    unsigned n = 0;
    uint8_t value;
    int ret;

    g_mutex_lock(&p->lock);
    if (p->closing || g_hash_table_contains(p->devs, d)) {
        g_mutex_unlock(&p->lock);
        return;
    }
    pd = g_new0(ProvDev, 1);
    pd->ref = 1;
    pd->dev = dext_usb_device_ref(d);
    pd->ifnubs = g_ptr_array_new();
    g_hash_table_insert(p->devs, d, pd);
    p->publishing++;
    g_mutex_unlock(&p->lock);

    /* what macOS does with a device no device driver claims: its first
     * configuration (the one the family read at attach) */
    value = dext_usb_device_config(d)->bConfigurationValue;
    g_rw_lock_writer_lock(&p->cfg);
    ret = dext_usb_device_open(d);
    if (ret == 0 && value) {
        ret = dext_usb_device_set_configuration(d, value);
        if (ret == 0) {
            pd->cur_config = value;
            open_interfaces(pd, nums, &n);
        } else {
            g_warning("usb-provider: port %u: SET_CONFIGURATION %u: %s",
                      dext_usb_device_port(d), value, g_strerror(-ret));
        }
    }
    g_rw_lock_writer_unlock(&p->cfg);

    pd->devnub = nub_publish(p, pd, -1, 0);
    publish_interfaces(p, pd, nums, n);

    g_mutex_lock(&p->lock);
    p->publishing--;
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
}

static ProvChan *chan_ref(ProvChan *c);
static void chan_unref(ProvChan *c);
static void chan_wait_posted(ProvChan *c, unsigned ms);

/* Mark @nubs gone and forget them (p->lock held); collect their channels
 * (referenced) into @chans. */
static void nubs_gone_locked(DextUsbProvider *p, ProvNub **nubs, unsigned n,
                             GPtrArray *chans)
{
    for (unsigned k = 0; k < n; k++) {
        nubs[k]->gone = true;
        nubs[k]->pd = NULL;
        nubs[k]->owner = NULL;
        if (nubs[k]->id) {
            g_hash_table_remove(p->nubs, &nubs[k]->id);
        }
    }
    for (unsigned k = 0; k < p->chans->len; k++) {
        ProvChan *c = g_ptr_array_index(p->chans, k);

        for (unsigned j = 0; j < n; j++) {
            if (c->nub == nubs[j]) {
                g_ptr_array_add(chans, chan_ref(c));
            }
        }
    }
}

/* Every completion of @chans posted (bounded), then terminate @nubs in
 * order (children first) and drop them. */
static void nubs_retire(DextUsbProvider *p, ProvNub **nubs, unsigned n,
                        GPtrArray *chans, bool terminate)
{
    for (unsigned k = 0; k < chans->len; k++) {
        ProvChan *c = g_ptr_array_index(chans, k);

        chan_wait_posted(c, WAIT_POSTED_MS);
        chan_unref(c);
    }
    for (unsigned k = 0; k < n; k++) {
        if (terminate && nubs[k]->id) {
            int ret = p->ops.terminate(p->opaque, nubs[k]->id);

            if (ret < 0 && ret != -ENOENT) {
                g_warning("usb-provider: terminate nub %" G_GUINT64_FORMAT
                          ": %s", nubs[k]->id, g_strerror(-ret));
            }
        }
        nub_unref(nubs[k]);
    }
}

static void dev_detach(DextUsbProvider *p, DextUsbDevice *d)
{
    g_autoptr(GPtrArray) chans = g_ptr_array_new();
    g_autoptr(GPtrArray) nubs = g_ptr_array_new();
    ProvDev *pd;
    bool terminate;

    g_mutex_lock(&p->lock);
    pd = g_hash_table_lookup(p->devs, d);
    if (!pd) {
        g_mutex_unlock(&p->lock);
        return;
    }
    g_hash_table_steal(p->devs, d);
    /* children first */
    for (unsigned k = 0; k < pd->ifnubs->len; k++) {
        g_ptr_array_add(nubs, g_ptr_array_index(pd->ifnubs, k));
    }
    if (pd->devnub) {
        g_ptr_array_add(nubs, pd->devnub);
    }
    nubs_gone_locked(p, (ProvNub **)nubs->pdata, nubs->len, chans);
    terminate = !p->closing;
    g_mutex_unlock(&p->lock);

    /* the family completed every IO -ECANCELED before telling us: let the
     * channels post them, then the nubs go */
    nubs_retire(p, (ProvNub **)nubs->pdata, nubs->len, chans, terminate);
    g_mutex_lock(&p->lock);
    g_ptr_array_set_size(pd->ifnubs, 0);    /* retired above */
    g_mutex_unlock(&p->lock);
    pd_unref(pd);
}

void dext_usb_provider_device_fn(void *provider, DextUsbDevice *dev,
                                 bool attached)
{
    if (attached) {
        dev_attach(provider, dev);
    } else {
        dev_detach(provider, dev);
    }
}

/* USB_SET_CONFIG on @pd's device nub (channel thread). */
static int dev_reconfigure(DextUsbProvider *p, ProvNub *devnub, uint8_t value)
{
    g_autoptr(GPtrArray) chans = g_ptr_array_new();
    g_autoptr(GPtrArray) old = NULL;
    ProvDev *pd;
    uint8_t nums[32];
    unsigned n = 0;
    int ret;

    g_mutex_lock(&p->lock);
    pd = devnub->pd;
    if (!pd || devnub->gone) {
        g_mutex_unlock(&p->lock);
        return -ENODEV;
    }
    if (value && value != dext_usb_device_config(pd->dev)->bConfigurationValue) {
        g_mutex_unlock(&p->lock);
        return -EINVAL;         /* the family knows one configuration */
    }
    g_atomic_int_inc(&pd->ref); /* a detach meanwhile frees nothing of it */
    old = pd->ifnubs;
    pd->ifnubs = g_ptr_array_new();
    nubs_gone_locked(p, (ProvNub **)old->pdata, old->len, chans);
    p->publishing++;            /* serve() waits for the new nubs' ids */
    g_mutex_unlock(&p->lock);

    g_rw_lock_writer_lock(&p->cfg);
    ret = dext_usb_device_set_configuration(pd->dev, value);
    pd->cur_config = ret == 0 ? value : 0;
    if (ret == 0 && value) {
        open_interfaces(pd, nums, &n);
    }
    g_rw_lock_writer_unlock(&p->cfg);

    nubs_retire(p, (ProvNub **)old->pdata, old->len, chans, true);
    publish_interfaces(p, pd, nums, n);
    g_mutex_lock(&p->lock);
    p->publishing--;
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
    pd_unref(pd);
    return ret;
}

/* ------------------------------------------------------- channels */

static ProvChan *chan_ref(ProvChan *c)
{
    g_atomic_int_inc(&c->ref);
    return c;
}

static void chan_unref(ProvChan *c)
{
    if (!c || !g_atomic_int_dec_and_test(&c->ref)) {
        return;
    }
    g_hash_table_destroy(c->pending);
    g_hash_table_destroy(c->bufs);
    g_mutex_clear(&c->lock);
    g_cond_clear(&c->cond);
    g_free(c);
}

static void chan_wake(ProvChan *c)
{
    uint64_t one = 1;

    /* under the lock: the fd is closed (and its number maybe reused) when
     * the channel exits */
    g_mutex_lock(&c->lock);
    if (c->wake >= 0 && write(c->wake, &one, sizeof(one)) < 0) {
        /* counter saturated: the thread is awake anyway */
    }
    g_mutex_unlock(&c->lock);
}

/* completions are all posted (or the channel is gone), bounded */
static void chan_wait_posted(ProvChan *c, unsigned ms)
{
    gint64 deadline = g_get_monotonic_time() + ms * 1000ll;

    chan_wake(c);
    g_mutex_lock(&c->lock);
    while (!c->exited && (g_hash_table_size(c->pending) ||
                          !g_queue_is_empty(&c->done) || c->flushing)) {
        if (!g_cond_wait_until(&c->cond, &c->lock, deadline)) {
            g_warning("usb-provider: channel of nub %" G_GUINT64_FORMAT
                      ": completions not posted in time", c->nub_id);
            break;
        }
    }
    g_mutex_unlock(&c->lock);
}

/* USB_IO_DONE for @ref, sent now or not at all: 0, -EAGAIN (socket full),
 * or another -errno (the client is gone).  Safe from any thread: one
 * SOCK_SEQPACKET message is atomic against the channel thread's sends. */
static int io_done_try_send(int fd, uint64_t ref, int status, uint32_t actual,
                            uint64_t ts)
{
    uint8_t buf[128];
    DextMsg m;
    ssize_t len, n;

    dext_msg_init(&m, DEXT_MSG_USB_IO_DONE,
                  g_variant_new("(tiut)", (guint64)ref, status, actual,
                                (guint64)ts));
    m.flags = DEXT_MSG_F_POSTED;
    len = dext_msg_encode(&m, buf, sizeof(buf));
    dext_msg_clear(&m);
    if (len < 0) {
        return -EAGAIN;         /* the channel thread's send will say why */
    }
    do {
        n = send(fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n == len) {
        return 0;
    }
    return n < 0 && errno != EWOULDBLOCK ? -errno : -EAGAIN;
}

/* IO completion: event thread, or the thread aborting the IO */
static void io_done(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    ProvIo *io = opaque;
    ProvChan *c = io->c;
    uint64_t one = 1;
    int ret = -EAGAIN;

    /* all of it under the lock: once the IO leaves c->pending the channel
     * may close and be freed, so nothing of c is touched after unlock; the
     * fd stays open while an IO is pending and teardown sets quit first */
    g_mutex_lock(&c->lock);
    io->status = io->timed_out ? -ETIMEDOUT : status;
    io->actual = actual;
    io->ts = ts;
    io->buf->busy--;
    g_hash_table_remove(c->pending, io);
    g_atomic_int_add(&c->p->n_pending, -1);
    if (io->ref && g_queue_is_empty(&c->done) && !c->flushing &&
        !g_atomic_int_get(&c->quit)) {
        ret = io_done_try_send(c->fd, io->ref, io->status, io->actual,
                               io->ts);
    }
    if (ret == 0) {
        g_free(io);
    } else {
        if (ret != -EAGAIN) {
            g_atomic_int_set(&c->quit, 1);     /* client gone: close */
        }
        g_queue_push_tail(&c->done, io);
        if (c->wake >= 0 && write(c->wake, &one, sizeof(one)) < 0) {
            /* counter saturated: the thread is awake anyway */
        }
    }
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
}

static int chan_send(ProvChan *c, DextMsg *m)
{
    int ret = dext_ipc_send(c->fd, m);

    if (ret < 0) {
        /* the client is gone or not reading (bounded send): close */
        g_atomic_int_set(&c->quit, 1);
    }
    return ret;
}

static void reply(ProvChan *c, const DextMsg *req, GVariant *body)
{
    DextMsg r;

    dext_msg_init_reply(&r, req, body);
    chan_send(c, &r);
    dext_msg_clear(&r);
}

static void reply_err(ProvChan *c, const DextMsg *req, int err,
                      const char *fmt, ...) G_GNUC_PRINTF(4, 5);
static void reply_err(ProvChan *c, const DextMsg *req, int err,
                      const char *fmt, ...)
{
    g_autofree char *s = NULL;
    DextMsg r;
    va_list ap;

    va_start(ap, fmt);
    s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    dext_msg_init_error(&r, req, err, "%s", s);
    chan_send(c, &r);
    dext_msg_clear(&r);
}

/* Post every queued completion: USB_IO_DONE, or the sync IO's reply. */
static void chan_flush(ProvChan *c)
{
    for (;;) {
        ProvIo *io;
        DextMsg m;

        g_mutex_lock(&c->lock);
        io = g_queue_pop_head(&c->done);
        c->flushing = io != NULL;
        if (!io) {
            g_cond_broadcast(&c->cond);
        }
        g_mutex_unlock(&c->lock);
        if (!io) {
            break;
        }
        if (!g_atomic_int_get(&c->quit)) {
            if (io->ref) {
                dext_msg_init(&m, DEXT_MSG_USB_IO_DONE,
                              g_variant_new("(tiut)", (guint64)io->ref,
                                            io->status, io->actual,
                                            (guint64)io->ts));
                m.flags = DEXT_MSG_F_POSTED;
                chan_send(c, &m);
                dext_msg_clear(&m);
            } else {
                DextMsg req = { .type = DEXT_MSG_USB_IO, .serial = io->serial };

                reply(c, &req, g_variant_new("(iut)", io->status, io->actual,
                                             (guint64)io->ts));
            }
        }
        g_free(io);
    }
}

/* Abort the endpoints of @ios (pipes), outside c->lock: completions run
 * synchronously and take it. */
static void abort_pipes(DextUsbProvider *p, GPtrArray *pipes)
{
    g_rw_lock_reader_lock(&p->cfg);
    for (unsigned k = 0; k < pipes->len; k++) {
        dext_usb_pipe_abort(g_ptr_array_index(pipes, k));
    }
    g_rw_lock_reader_unlock(&p->cfg);
}

static void add_pipe(GPtrArray *a, DextUsbPipe *pipe)
{
    if (!g_ptr_array_find(a, pipe, NULL)) {
        g_ptr_array_add(a, pipe);
    }
}

/* Sync IO past its deadline: abort its endpoint (-ETIMEDOUT for it,
 * -ECANCELED for the others there, as the family's sync IO does). */
static int chan_expire(ProvChan *c)
{
    g_autoptr(GPtrArray) pipes = g_ptr_array_new();
    gint64 now = g_get_monotonic_time(), next = G_MAXINT64;
    GHashTableIter it;
    gpointer k;

    g_mutex_lock(&c->lock);
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        ProvIo *io = k;

        if (!io->deadline || io->timed_out) {
            continue;
        }
        if (io->deadline <= now) {
            io->timed_out = true;
            add_pipe(pipes, io->pipe);
        } else {
            next = MIN(next, io->deadline);
        }
    }
    g_mutex_unlock(&c->lock);
    if (pipes->len) {
        abort_pipes(c->p, pipes);
        return 0;
    }
    return next == G_MAXINT64 ? 1000 : (int)MIN(1000, (next - now + 999) / 1000);
}

/* ----------------------------------------------------- requests */

/* The channel's nub, alive, and (when @open) opened by this channel. */
static int chan_check(ProvChan *c, bool open, const char **why)
{
    DextUsbProvider *p = c->p;
    int ret = 0;

    g_mutex_lock(&p->lock);
    if (c->nub->gone) {
        *why = "the device is gone";
        ret = -ENODEV;
    } else if (open && c->nub->owner != c) {
        *why = "not opened by this client";
        ret = -EBUSY;
    }
    g_mutex_unlock(&p->lock);
    return ret;
}

/* The pipe of @ep in the current alternate setting of the nub's
 * interface(s); p->cfg held for reading. */
static int find_pipe(ProvChan *c, uint8_t ep, DextUsbPipe **out)
{
    DextUsbDevice *d = c->nub->dev;
    bool gone;

    if ((ep & 0x0f) == 0 || (ep & 0x70)) {
        return -EINVAL;
    }
    /* a configuration change marks the old interface nubs gone before it
     * takes p->cfg: checked here, a gone nub never reaches the new
     * configuration's interface of the same number */
    g_mutex_lock(&c->p->lock);
    gone = c->nub->gone;
    g_mutex_unlock(&c->p->lock);
    if (gone) {
        return -ENODEV;
    }
    if (c->nub->ifnum >= 0) {
        DextUsbInterface *i = dext_usb_device_interface(d, c->nub->ifnum);

        return i ? dext_usb_interface_copy_pipe(i, ep, out) : -ENODEV;
    }
    for (unsigned k = 0; k < 256; k++) {
        DextUsbInterface *i = dext_usb_device_interface(d, (uint8_t)k);

        if (i && dext_usb_interface_copy_pipe(i, ep, out) == 0) {
            return 0;
        }
    }
    return -ENOENT;
}

static void h_info(ProvChan *c, DextMsg *m)
{
    DextUsbDevice *d = c->nub->dev;
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);
    uint8_t dev[18] = {
        18, 1, dd->bcdUSB & 0xff, dd->bcdUSB >> 8, dd->bDeviceClass,
        dd->bDeviceSubClass, dd->bDeviceProtocol, dd->bMaxPacketSize0,
        dd->idVendor & 0xff, dd->idVendor >> 8, dd->idProduct & 0xff,
        dd->idProduct >> 8, dd->bcdDevice & 0xff, dd->bcdDevice >> 8,
        dd->iManufacturer, dd->iProduct, dd->iSerialNumber,
        dd->bNumConfigurations,
    };
    size_t clen = 0;
    const uint8_t *cfg = dext_usb_device_config_raw(d, &clen);
    uint8_t cur = 0;

    g_mutex_lock(&c->p->lock);
    cur = c->nub->pd ? c->nub->pd->cur_config : 0;
    g_mutex_unlock(&c->p->lock);
    reply(c, m, g_variant_new("(uy@ay@ay)", dev_speed(d), cur,
                              g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE,
                                                        dev, 18, 1),
                              g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE,
                                                        cfg ? cfg : dev,
                                                        cfg ? clen : 0, 1)));
}

static void chan_abort_all(ProvChan *c)
{
    g_autoptr(GPtrArray) pipes = g_ptr_array_new();
    GHashTableIter it;
    gpointer k;

    g_mutex_lock(&c->lock);
    g_hash_table_iter_init(&it, c->pending);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        add_pipe(pipes, ((ProvIo *)k)->pipe);
    }
    g_mutex_unlock(&c->lock);
    abort_pipes(c->p, pipes);
}

static void h_open(ProvChan *c, DextMsg *m, bool open)
{
    DextUsbProvider *p = c->p;
    int ret = 0;
    const char *why = "";

    g_mutex_lock(&p->lock);
    if (c->nub->gone) {
        ret = -ENODEV;
        why = "the device is gone";
    } else if (open && c->nub->owner && c->nub->owner != c) {
        ret = -EBUSY;
        why = "opened by another client";
    } else if (!open && c->nub->owner != c) {
        ret = -EBUSY;
        why = "not opened by this client";
    } else {
        c->nub->owner = open ? c : NULL;
    }
    g_mutex_unlock(&p->lock);
    if (ret == 0 && !open) {
        chan_abort_all(c);
        chan_flush(c);
    }
    if (ret < 0) {
        reply_err(c, m, ret, "%s", why);
    } else {
        reply(c, m, g_variant_new("()"));
    }
}

static bool ep_in_iface(DextUsbDevice *d, int ifnum, uint8_t ep)
{
    DextUsbInterface *i = dext_usb_device_interface(d, (uint8_t)ifnum);
    const DextUsbInterfaceDesc *id = i ? dext_usb_interface_descriptor(i)
                                       : NULL;

    for (unsigned k = 0; id && k < id->n_endpoints; k++) {
        if (id->endpoints[k].bEndpointAddress == ep) {
            return true;
        }
    }
    return false;
}

static void h_control(ProvChan *c, DextMsg *m)
{
    guint8 rt, req;
    guint16 val, idx, wlen;
    guint32 tmo, actual = 0;
    g_autoptr(GVariant) odata = NULL;
    const uint8_t *od;
    gsize olen;
    uint8_t buf[DEXT_USB_PROV_MAX_CONTROL];
    unsigned type, recip;
    bool in, standard;
    const char *why = "";
    int ret;

    g_variant_get(m->body, "(yyqqqu@ay)", &rt, &req, &val, &idx, &wlen, &tmo,
                  &odata);
    od = g_variant_get_fixed_array(odata, &olen, 1);
    in = rt & 0x80;
    type = (rt >> 5) & 3;
    recip = rt & 0x1f;
    standard = type == 0;
    if (wlen > DEXT_USB_PROV_MAX_CONTROL) {
        reply_err(c, m, -EINVAL, "wLength %u > %u", wlen,
                  DEXT_USB_PROV_MAX_CONTROL);
        return;
    }
    if (in ? olen != 0 : olen != wlen) {
        reply_err(c, m, -EINVAL, "%s request with %zu data bytes, wLength %u",
                  in ? "IN" : "OUT", (size_t)olen, wlen);
        return;
    }
    if (type == 3 || recip > 3) {
        reply_err(c, m, -EINVAL, "reserved bmRequestType 0x%02x", rt);
        return;
    }
    if (standard && (req == 5 || req == 9 || req == 11)) {
        reply_err(c, m, -EPERM, "SET_ADDRESS/SET_CONFIGURATION/SET_INTERFACE "
                  "are the provider's (use USB_SET_CONFIG/USB_SELECT_ALT)");
        return;
    }
    if (c->nub->ifnum >= 0 && standard) {
        /* an interface may address itself and its endpoints; reading the
         * device (descriptors, status) is harmless */
        bool ok = (recip == 0 && in) ||
                  (recip == 1 && (idx & 0xff) == c->nub->ifnum) ||
                  (recip == 2 && ep_in_iface(c->nub->dev, c->nub->ifnum,
                                             idx & 0xff));

        if (!ok) {
            reply_err(c, m, -EPERM, "standard request 0x%02x/%u not addressed"
                      " to interface %d or its endpoints", rt, req,
                      c->nub->ifnum);
            return;
        }
    }
    ret = chan_check(c, !(standard && in), &why);
    if (ret < 0) {
        reply_err(c, m, ret, "%s", why);
        return;
    }
    if (!in && wlen) {
        memcpy(buf, od, wlen);
    }
    tmo = tmo ? MIN(tmo, CONTROL_MAX_MS) : DEXT_USB_PROV_DEFAULT_TIMEOUT_MS;
    ret = dext_usb_device_control(c->nub->dev, rt, req, val, idx, buf, wlen,
                                  &actual, tmo);
    if (ret < 0) {
        reply_err(c, m, ret, "control request 0x%02x/%u: %s", rt, req,
                  ret == -EPIPE ? "stall" : g_strerror(-ret));
        return;
    }
    actual = MIN(actual, wlen);
    reply(c, m, g_variant_new("(u@ay)", in ? actual : wlen,
                              g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE,
                                                        buf, in ? actual : 0,
                                                        1)));
}

static void h_set_config(ProvChan *c, DextMsg *m)
{
    guint8 v;
    const char *why = "";
    int ret;

    g_variant_get(m->body, "(y)", &v);
    if (c->nub->ifnum >= 0) {
        reply_err(c, m, -EPERM, "USB_SET_CONFIG on an interface nub");
        return;
    }
    if ((ret = chan_check(c, true, &why)) < 0) {
        reply_err(c, m, ret, "%s", why);
        return;
    }
    ret = dev_reconfigure(c->p, c->nub, v);
    chan_flush(c);
    if (ret < 0) {
        reply_err(c, m, ret, "SET_CONFIGURATION %u: %s", v, g_strerror(-ret));
    } else {
        reply(c, m, g_variant_new("()"));
    }
}

static void h_select_alt(ProvChan *c, DextMsg *m)
{
    DextUsbProvider *p = c->p;
    DextUsbInterface *i;
    guint8 alt;
    const char *why = "";
    int ret;

    g_variant_get(m->body, "(y)", &alt);
    if (c->nub->ifnum < 0) {
        reply_err(c, m, -EPERM, "USB_SELECT_ALT on a device nub");
        return;
    }
    if ((ret = chan_check(c, true, &why)) < 0) {
        reply_err(c, m, ret, "%s", why);
        return;
    }
    g_rw_lock_writer_lock(&p->cfg);
    i = dext_usb_device_interface(c->nub->dev, c->nub->ifnum);
    ret = i ? dext_usb_interface_select_alt(i, alt) : -ENODEV;
    g_rw_lock_writer_unlock(&p->cfg);
    chan_flush(c);
    if (ret < 0) {
        reply_err(c, m, ret, "alternate setting %u: %s", alt,
                  ret == -EINVAL ? "no such setting" : g_strerror(-ret));
    } else {
        reply(c, m, g_variant_new("()"));
    }
}

static void h_buffer_alloc(ProvChan *c, DextMsg *m)
{
    DextUsbProvider *p = c->p;
    guint64 cap, off = 0;
    guint32 dir;
    ChanBuf *cb;
    DextUsbBuffer *b = NULL;
    DextMsg r;
    int fd, ret;

    g_variant_get(m->body, "(tu)", &cap, &dir);
    if (cap == 0 || cap > DEXT_USB_PROV_MAX_BUFFER) {
        reply_err(c, m, -EINVAL, "capacity %" G_GUINT64_FORMAT " not in 1 .. %u",
                  cap, DEXT_USB_PROV_MAX_BUFFER);
        return;
    }
    if (dir == 0 || dir > 3) {
        reply_err(c, m, -EINVAL, "direction %u (IN 1, OUT 2, INOUT 3)", dir);
        return;
    }
    if (c->buf_bytes + cap > DEXT_USB_PROV_MAX_BUFFERS_BYTES) {
        reply_err(c, m, -ENOMEM, "more than %llu MiB of buffers on a channel",
                  DEXT_USB_PROV_MAX_BUFFERS_BYTES >> 20);
        return;
    }
    if (!p->host) {
        reply_err(c, m, -ENODEV, "no host controller");
        return;
    }
    ret = dext_usb_buffer_alloc(p->host, cap, &b);
    if (ret < 0) {
        reply_err(c, m, ret, "buffer of %" G_GUINT64_FORMAT " bytes: %s", cap,
                  g_strerror(-ret));
        return;
    }
    fd = dext_usb_buffer_fd(b, &off);
    if (fd < 0 || (off & 4095)) {
        dext_usb_buffer_free(b);
        reply_err(c, m, fd < 0 ? fd : -ENOTSUP,
                  "this controller's buffers cannot be shared");
        return;
    }
    cb = g_new0(ChanBuf, 1);
    cb->handle = ++c->next_handle;
    cb->b = b;
    cb->cap = cap;
    cb->dir = dir;
    g_hash_table_insert(c->bufs, &cb->handle, cb);
    c->buf_bytes += cap;
    g_atomic_int_inc(&p->n_buffers);
    dext_msg_init_reply(&r, m, g_variant_new("(ttt)", (guint64)cb->handle, cap,
                                             off));
    r.fds[0] = fd;              /* borrowed: the buffer's */
    r.nfds = 1;
    chan_send(c, &r);
    r.nfds = 0;
    dext_msg_clear(&r);
}

static void buf_free(DextUsbProvider *p, ChanBuf *cb)
{
    dext_usb_buffer_free(cb->b);
    g_atomic_int_add(&p->n_buffers, -1);
    g_free(cb);
}

static void h_buffer_free(ProvChan *c, DextMsg *m)
{
    guint64 h;
    ChanBuf *cb;
    unsigned busy;

    g_variant_get(m->body, "(t)", &h);
    cb = g_hash_table_lookup(c->bufs, &h);
    if (!cb) {
        reply_err(c, m, -ENOENT, "no buffer %" G_GUINT64_FORMAT, h);
        return;
    }
    g_mutex_lock(&c->lock);
    busy = cb->busy;
    g_mutex_unlock(&c->lock);
    if (busy) {
        reply_err(c, m, -EBUSY, "buffer %" G_GUINT64_FORMAT ": %u IO pending",
                  h, busy);
        return;
    }
    g_hash_table_steal(c->bufs, &h);
    c->buf_bytes -= cb->cap;
    buf_free(c->p, cb);
    reply(c, m, g_variant_new("()"));
}

/*
 * USB_IO.  A posted async request (what the client library sends) gets no
 * reply: if it is refused, its USB_IO_DONE carries the error instead, so
 * queueing an IO costs the client no round trip.
 */
static void h_io(ProvChan *c, DextMsg *m)
{
    DextUsbProvider *p = c->p;
    bool posted = m->flags & DEXT_MSG_F_POSTED;
    guint8 ep;
    guint64 h, off, ref;
    guint32 len, tmo;
    ChanBuf *cb;
    DextUsbPipe *pipe = NULL;
    ProvIo *io;
    const char *why = "";
    g_autofree char *msg = NULL;
    int ret;

    g_variant_get(m->body, "(yttuut)", &ep, &h, &off, &len, &tmo, &ref);
    if (posted && ref == 0) {
        /* a sync IO's result is its reply: nothing to answer it with;
         * said once per channel, so a client cannot flood the log */
        if (!c->warned_posted_sync) {
            c->warned_posted_sync = true;
            g_warning("usb-provider: channel of nub %" G_GUINT64_FORMAT
                      ": posted USB_IO without an async-ref ignored",
                      c->nub_id);
        }
        return;
    }
    if ((ret = chan_check(c, true, &why)) < 0) {
        msg = g_strdup(why);
        goto refuse;
    }
    if (len > DEXT_USB_PROV_MAX_IO) {
        ret = -EINVAL;
        msg = g_strdup_printf("length %u > %u", len, DEXT_USB_PROV_MAX_IO);
        goto refuse;
    }
    cb = g_hash_table_lookup(c->bufs, &h);
    if (!cb) {
        ret = -ENOENT;
        msg = g_strdup_printf("no buffer %" G_GUINT64_FORMAT
                              " on this channel", h);
        goto refuse;
    }
    if (off > cb->cap || len > cb->cap - off) {
        ret = -ERANGE;
        msg = g_strdup_printf("[%" G_GUINT64_FORMAT ", +%u) outside buffer"
                              " %" G_GUINT64_FORMAT " of %" G_GUINT64_FORMAT
                              " bytes", off, len, h, cb->cap);
        goto refuse;
    }
    if (!(cb->dir & ((ep & 0x80) ? 1u : 2u))) {
        ret = -EINVAL;
        msg = g_strdup_printf("endpoint 0x%02x %s a buffer allocated for %s",
                              ep, (ep & 0x80) ? "writes" : "reads",
                              cb->dir == 1 ? "IN only" : "OUT only");
        goto refuse;
    }
    g_mutex_lock(&c->lock);
    if (g_hash_table_size(c->pending) >= p->max_pending) {
        g_mutex_unlock(&c->lock);
        ret = -EAGAIN;
        msg = g_strdup_printf("%u IO pending on this channel",
                              p->max_pending);
        goto refuse;
    }
    g_mutex_unlock(&c->lock);

    io = g_new0(ProvIo, 1);
    io->c = c;
    io->buf = cb;
    io->ref = ref;
    io->serial = m->serial;
    if (ref == 0 || tmo) {
        io->deadline = g_get_monotonic_time() +
            (gint64)(tmo ? tmo : DEXT_USB_PROV_DEFAULT_TIMEOUT_MS) * 1000;
    }
    g_rw_lock_reader_lock(&p->cfg);
    ret = find_pipe(c, ep, &pipe);
    if (ret == 0) {
        io->pipe = pipe;
        g_mutex_lock(&c->lock);
        cb->busy++;
        g_hash_table_add(c->pending, io);
        g_atomic_int_inc(&p->n_pending);
        g_mutex_unlock(&c->lock);
        /* the completion may run before this returns: io is the
         * channel's from now on */
        ret = dext_usb_pipe_async_io(pipe, cb->b, off, len, io_done, io);
        if (ret < 0) {
            g_mutex_lock(&c->lock);
            cb->busy--;
            g_hash_table_remove(c->pending, io);
            g_atomic_int_add(&p->n_pending, -1);
            g_mutex_unlock(&c->lock);
        }
    }
    g_rw_lock_reader_unlock(&p->cfg);
    if (ret < 0) {
        g_free(io);
        if (ret == -ENODEV) {
            msg = g_strdup("the device is gone");
        } else if (ret == -ENOENT || ret == -EINVAL) {
            msg = g_strdup_printf("endpoint 0x%02x is not in the current "
                                  "alternate setting", ep);
        } else {
            msg = g_strdup_printf("endpoint 0x%02x: %s", ep,
                                  ret == -EPIPE ? "halted (clear the stall)"
                                                : g_strerror(-ret));
        }
        goto refuse;
    }
    if (ref && !posted) {
        reply(c, m, g_variant_new("(iut)", 0, 0u, (guint64)0));
    }
    return;

refuse:
    if (posted) {
        DextMsg d;

        /* after every completion already queued (order), from this thread */
        chan_flush(c);
        dext_msg_init(&d, DEXT_MSG_USB_IO_DONE,
                      g_variant_new("(tiut)", (guint64)ref, ret, 0u,
                                    (guint64)g_get_monotonic_time() * 1000));
        d.flags = DEXT_MSG_F_POSTED;
        chan_send(c, &d);
        dext_msg_clear(&d);
    } else {
        reply_err(c, m, ret, "%s", msg);
    }
}

static void h_pipe_op(ProvChan *c, DextMsg *m, bool clear)
{
    DextUsbProvider *p = c->p;
    DextUsbPipe *pipe = NULL;
    guint8 ep;
    const char *why = "";
    int ret;

    g_variant_get(m->body, "(y)", &ep);
    if ((ret = chan_check(c, true, &why)) < 0) {
        reply_err(c, m, ret, "%s", why);
        return;
    }
    g_rw_lock_reader_lock(&p->cfg);
    ret = find_pipe(c, ep, &pipe);
    if (ret == 0) {
        ret = clear ? dext_usb_pipe_clear_stall(pipe)
                    : dext_usb_pipe_abort(pipe);
    } else if (ret != -ENODEV) {
        ret = -ENOENT;
    }
    g_rw_lock_reader_unlock(&p->cfg);
    /* the aborted IO's completions go out before the reply */
    chan_flush(c);
    if (ret < 0) {
        reply_err(c, m, ret, "endpoint 0x%02x: %s", ep,
                  ret == -ENOENT ? "not in the current alternate setting"
                  : ret == -ENODEV ? "the device is gone" : g_strerror(-ret));
    } else {
        reply(c, m, g_variant_new("()"));
    }
}

static void chan_handle(ProvChan *c, DextMsg *m)
{
    switch (m->type) {
    case DEXT_MSG_USB_INFO:
        h_info(c, m);
        break;
    case DEXT_MSG_USB_OPEN:
        h_open(c, m, true);
        break;
    case DEXT_MSG_USB_CLOSE:
        h_open(c, m, false);
        break;
    case DEXT_MSG_USB_CONTROL:
        h_control(c, m);
        break;
    case DEXT_MSG_USB_SET_CONFIG:
        h_set_config(c, m);
        break;
    case DEXT_MSG_USB_SELECT_ALT:
        h_select_alt(c, m);
        break;
    case DEXT_MSG_USB_BUFFER_ALLOC:
        h_buffer_alloc(c, m);
        break;
    case DEXT_MSG_USB_BUFFER_FREE:
        h_buffer_free(c, m);
        break;
    case DEXT_MSG_USB_IO:
        h_io(c, m);
        break;
    case DEXT_MSG_USB_ABORT:
        h_pipe_op(c, m, false);
        break;
    case DEXT_MSG_USB_CLEAR_STALL:
        h_pipe_op(c, m, true);
        break;
    default:
        reply_err(c, m, -EOPNOTSUPP, "%s is not a provider request",
                  dext_msg_name(m->type));
        break;
    }
}

/* serve() ran while the nub's publish reply was still on its way */
static bool chan_resolve(ProvChan *c)
{
    DextUsbProvider *p = c->p;
    gint64 deadline = g_get_monotonic_time() + RESOLVE_MS * 1000ll;
    ProvNub *n;

    g_mutex_lock(&p->lock);
    while (!(n = g_hash_table_lookup(p->nubs, &c->nub_id)) && p->publishing &&
           !p->closing && g_cond_wait_until(&p->cond, &p->lock, deadline)) {
    }
    if (n) {
        c->nub = nub_ref(n);
    }
    g_mutex_unlock(&p->lock);
    return n != NULL;
}

static void chan_teardown(ProvChan *c)
{
    DextUsbProvider *p = c->p;
    gint64 deadline = g_get_monotonic_time() + TEARDOWN_MS * 1000ll;
    GHashTableIter it;
    gpointer k, v;
    bool leak = false;

    g_atomic_int_set(&c->quit, 1);
    /* close what the client had: its IO, its open, its buffers */
    chan_abort_all(c);
    g_mutex_lock(&c->lock);
    while (g_hash_table_size(c->pending)) {
        if (!g_cond_wait_until(&c->cond, &c->lock, deadline)) {
            leak = true;
            break;
        }
    }
    g_mutex_unlock(&c->lock);
    chan_flush(c);              /* frees the completions (quit: not sent) */
    g_mutex_lock(&p->lock);
    if (c->nub && c->nub->owner == c) {
        c->nub->owner = NULL;
    }
    g_mutex_unlock(&p->lock);
    if (leak) {
        /* the controller still owns memory of ours: never free it */
        g_warning("usb-provider: channel of nub %" G_GUINT64_FORMAT
                  ": IO did not complete; its buffers are leaked", c->nub_id);
        chan_ref(c);
    } else {
        g_hash_table_iter_init(&it, c->bufs);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            g_hash_table_iter_steal(&it);
            buf_free(p, v);
        }
    }
    close(c->fd);
    g_mutex_lock(&c->lock);
    close(c->wake);
    c->wake = -1;
    c->exited = true;
    g_cond_broadcast(&c->cond);
    g_mutex_unlock(&c->lock);
    /* gone from the list last: shutdown() returns once all is released */
    g_mutex_lock(&p->lock);
    g_ptr_array_remove_fast(p->chans, c);
    g_cond_broadcast(&p->cond);
    g_mutex_unlock(&p->lock);
    nub_unref(c->nub);
    c->nub = NULL;
    chan_unref(c);
}

static gpointer chan_thread(gpointer opaque)
{
    ProvChan *c = opaque;

    if (!c->nub && !chan_resolve(c)) {
        g_warning("usb-provider: client for unknown nub %" G_GUINT64_FORMAT,
                  c->nub_id);
        goto out;
    }
    while (!g_atomic_int_get(&c->quit)) {
        struct pollfd pf[2] = {
            { .fd = c->fd, .events = POLLIN },
            { .fd = c->wake, .events = POLLIN },
        };
        int tmo = chan_expire(c), rc;
        char *why = NULL;
        DextMsg m;

        if (poll(pf, 2, tmo) < 0 && errno != EINTR) {
            break;
        }
        if (pf[1].revents) {
            uint64_t n;

            if (read(c->wake, &n, sizeof(n)) < 0) {
                /* EAGAIN: raced with another reader of the counter */
            }
        }
        chan_flush(c);
        if (!pf[0].revents || g_atomic_int_get(&c->quit)) {
            continue;
        }
        rc = dext_ipc_recv(c->fd, DEXT_CH_PROV, &m, 0, &why);
        if (rc == -ETIMEDOUT) {
            continue;
        }
        if (rc < 0) {
            if (rc != -ECONNRESET && rc != -EPIPE && m.serial &&
                rc != -EMSGSIZE) {
                reply_err(c, &m, rc, "%s", why ? why : "invalid message");
                g_free(why);
                continue;
            }
            /* framing broken or the client gone: close this channel */
            g_free(why);
            break;
        }
        if (!(m.flags & DEXT_MSG_F_REPLY)) {
            chan_handle(c, &m);
        }
        dext_msg_clear(&m);
    }
out:
    chan_teardown(c);
    return NULL;
}

/* the nub of the device on @port (@ifnum < 0: its device nub); p->lock */
static ProvNub *nub_by_port(DextUsbProvider *p, unsigned port, int ifnum)
{
    GHashTableIter it;
    gpointer k, v;

    g_hash_table_iter_init(&it, p->devs);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        ProvDev *pd = v;

        if (dext_usb_device_port(pd->dev) != port) {
            continue;
        }
        if (ifnum < 0) {
            return pd->devnub;
        }
        for (unsigned j = 0; j < pd->ifnubs->len; j++) {
            ProvNub *n = g_ptr_array_index(pd->ifnubs, j);

            if (n->ifnum == ifnum) {
                return n;
            }
        }
    }
    return NULL;
}

static int serve(DextUsbProvider *p, uint64_t nub, bool by_port,
                 unsigned port, int ifnum, int fd)
{
    ProvChan *c;
    ProvNub *n;
    GThread *t;
    GError *err = NULL;
    int wake, fl;

    g_mutex_lock(&p->lock);
    n = by_port ? nub_by_port(p, port, ifnum)
                : g_hash_table_lookup(p->nubs, &nub);
    if (n) {
        nub = n->id;
    }
    if (p->closing || (!n && (by_port || !p->publishing)) ||
        p->chans->len >= DEXT_USB_PROV_MAX_CHANNELS) {
        int ret = p->closing ? -ESHUTDOWN : p->chans->len >=
                  DEXT_USB_PROV_MAX_CHANNELS ? -EMFILE : -ENOENT;

        g_mutex_unlock(&p->lock);
        close(fd);
        return ret;
    }
    wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake < 0) {
        int ret = -errno;

        g_mutex_unlock(&p->lock);
        close(fd);
        return ret;
    }
    /* sends are bounded (dext_ipc_send polls a full socket) */
    fl = fcntl(fd, F_GETFL);
    if (fl >= 0) {
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    }
    c = g_new0(ProvChan, 1);
    c->ref = 1;                 /* the thread's */
    c->p = p;
    c->nub_id = nub;
    c->nub = n ? nub_ref(n) : NULL;
    c->fd = fd;
    c->wake = wake;
    g_mutex_init(&c->lock);
    g_cond_init(&c->cond);
    c->pending = g_hash_table_new(NULL, NULL);
    c->bufs = g_hash_table_new(g_int64_hash, g_int64_equal);
    g_ptr_array_add(p->chans, c);
    g_mutex_unlock(&p->lock);

    t = g_thread_try_new("usb-prov-chan", chan_thread, c, &err);
    if (!t) {
        g_warning("usb-provider: %s", err->message);
        g_error_free(err);
        chan_teardown(c);
        return -EAGAIN;
    }
    g_thread_unref(t);
    return 0;
}

int dext_usb_provider_serve(DextUsbProvider *p, uint64_t nub, int fd)
{
    if (nub == 0) {
        close(fd);
        return -ENOENT;
    }
    return serve(p, nub, false, 0, 0, fd);
}

int dext_usb_provider_serve_port(DextUsbProvider *p, unsigned port, int ifnum,
                                 int fd)
{
    return serve(p, 0, true, port, ifnum, fd);
}

int dext_usb_provider_reset(DextUsbProvider *p, uint64_t nub)
{
    DextUsbDevice *d = NULL;
    ProvNub *n;
    int ret;

    g_mutex_lock(&p->lock);
    n = g_hash_table_lookup(p->nubs, &nub);
    if (n) {
        d = dext_usb_device_ref(n->dev);
    }
    g_mutex_unlock(&p->lock);
    if (!d) {
        return -ENOENT;
    }
    /* detach (IO -ECANCELED, posted; nubs terminated), port reset,
     * enumerate again (new nubs): all on the hub thread */
    ret = dext_usb_device_reset_port(d);
    dext_usb_device_unref(d);
    return ret;
}

/* ------------------------------------------------------- provider */

int dext_usb_provider_create(const DextUsbProviderOps *ops, void *opaque,
                             DextUsbProvider **out)
{
    DextUsbProvider *p;

    if (!ops || !ops->publish || !ops->terminate || !out) {
        return -EINVAL;
    }
    p = g_new0(DextUsbProvider, 1);
    p->ops = *ops;
    p->opaque = opaque;
    p->max_pending = DEXT_USB_PROV_MAX_PENDING;
    g_mutex_init(&p->lock);
    g_cond_init(&p->cond);
    g_rw_lock_init(&p->cfg);
    p->devs = g_hash_table_new(NULL, NULL);
    p->nubs = g_hash_table_new(g_int64_hash, g_int64_equal);
    p->chans = g_ptr_array_new();
    *out = p;
    return 0;
}

void dext_usb_provider_set_host(DextUsbProvider *p, DextUsbHost *h)
{
    g_mutex_lock(&p->lock);
    p->host = h;
    g_mutex_unlock(&p->lock);
}

void dext_usb_provider_set_max_pending(DextUsbProvider *p, unsigned n)
{
    p->max_pending = CLAMP(n, 1, DEXT_USB_PROV_MAX_PENDING);
}

void dext_usb_provider_stats(DextUsbProvider *p, DextUsbProviderStats *out)
{
    g_mutex_lock(&p->lock);
    out->channels = p->chans->len;
    out->nubs = g_hash_table_size(p->nubs);
    g_mutex_unlock(&p->lock);
    out->buffers = (unsigned)g_atomic_int_get(&p->n_buffers);
    out->pending_io = (unsigned)g_atomic_int_get(&p->n_pending);
}

void dext_usb_provider_shutdown(DextUsbProvider *p)
{
    gint64 deadline = g_get_monotonic_time() + 2 * TEARDOWN_MS * 1000ll;

    g_mutex_lock(&p->lock);
    p->closing = true;
    for (unsigned k = 0; k < p->chans->len; k++) {
        ProvChan *c = g_ptr_array_index(p->chans, k);

        g_atomic_int_set(&c->quit, 1);
        chan_wake(c);
    }
    g_cond_broadcast(&p->cond);
    while (p->chans->len) {
        if (!g_cond_wait_until(&p->cond, &p->lock, deadline)) {
            g_warning("usb-provider: %u channels did not close",
                      p->chans->len);
            break;
        }
    }
    g_mutex_unlock(&p->lock);
}

void dext_usb_provider_destroy(DextUsbProvider *p)
{
    GHashTableIter it;
    gpointer k, v;

    if (!p) {
        return;
    }
    dext_usb_provider_shutdown(p);
    if (p->chans->len) {
        return;                 /* threads still use it: leak, never free */
    }
    /* devices still known (the host was not destroyed): forget them */
    g_hash_table_iter_init(&it, p->devs);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        ProvDev *pd = v;

        for (unsigned j = 0; j < pd->ifnubs->len; j++) {
            nub_unref(g_ptr_array_index(pd->ifnubs, j));
        }
        nub_unref(pd->devnub);
        g_ptr_array_set_size(pd->ifnubs, 0);
        pd_unref(pd);
    }
    g_hash_table_destroy(p->devs);
    g_hash_table_destroy(p->nubs);
    g_ptr_array_free(p->chans, TRUE);
    g_rw_lock_clear(&p->cfg);
    g_mutex_clear(&p->lock);
    g_cond_clear(&p->cond);
    g_free(p);
}
