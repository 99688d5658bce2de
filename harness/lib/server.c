/*
 * libdext server: the driver process's side of dextd's channels.
 *
 * Two socketpairs are inherited from dextd:
 *   DEXT_CONTROL_FD  dextd -> driver requests (START, STOP, NEW_CLIENT, PING),
 *                    served by the main thread in dext_server_main().
 *   DEXT_RPC_FD      driver -> dextd requests (device access), used by any
 *                    thread under one lock; dextd never sends unsolicited
 *                    messages there, so the caller reads its own reply
 *                    directly (no extra thread hop on the MMIO path).
 * Each user client has its own socket to the app and a thread serving it.
 */
#include "internal.h"
#include "fdsource.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define CALLBACK_MS 60000

static struct {
    char *name;
    int ctrl_fd;
    int rpc_fd;
    GMutex rpc_lock;
    uint32_t rpc_serial;
    bool rpc_dead;
    const DextClassOps *const *classes;
    GMutex lock;
    GHashTable *services;       /* id -> DextService* */
    /* Nubs published by this process: id -> PubNub*.  NUB_CLIENT and
     * NUB_RESET name only the nub; this finds the service serving it.
     * Under lock; publishing counts NUB_PUBLISH calls in flight (a client
     * can connect before the publishing thread has recorded its nub). */
    GHashTable *nubs;
    unsigned publishing;
    GCond nub_cond;
    GMutex ram_lock;
    int ram_fd;
    uint64_t ram_size;
} srv = { .ctrl_fd = -1, .rpc_fd = -1, .ram_fd = -1 };

const char *dext_server_name(void)
{
    return srv.name ? srv.name : "?";
}

/* ---- RPC ---------------------------------------------------------------- */

int dext__rpc(uint16_t type, GVariant *body, bool posted, DextMsg *reply)
{
    DextMsg req, tmp;
    int rc;
    char *why = NULL;

    dext_msg_init(&req, type, body);
    g_mutex_lock(&srv.rpc_lock);
    if (srv.rpc_fd < 0 || srv.rpc_dead) {
        rc = -ESHUTDOWN;
    } else if (posted) {
        req.flags = DEXT_MSG_F_POSTED;
        req.serial = ++srv.rpc_serial;
        rc = dext_ipc_send(srv.rpc_fd, &req);
    } else {
        rc = dext_ipc_call(srv.rpc_fd, DEXT_CH_RPC, &srv.rpc_serial, &req,
                           reply ? reply : &tmp, DEXT_IPC_TIMEOUT_MS, &why);
        if (rc == 0 && !reply) {
            dext_msg_clear(&tmp);
        }
    }
    if (rc == -EPIPE || rc == -ECONNRESET || rc == -ETIMEDOUT) {
        /* A lost or stuck daemon: later calls fail fast instead of each
         * waiting out the bound. */
        srv.rpc_dead = true;
    }
    g_mutex_unlock(&srv.rpc_lock);
    if (rc < 0 && why) {
        DEXT_DEBUG("%s: %s", dext_msg_name(type), why);
    }
    g_free(why);
    dext_msg_clear(&req);
    return rc;
}

int dext__ram_fd(uint64_t *size)
{
    int rc = 0;
    g_mutex_lock(&srv.ram_lock);
    if (srv.ram_fd < 0) {
        DextMsg r;
        rc = dext__rpc(DEXT_MSG_DMA_RAM, NULL, false, &r);
        if (rc == 0) {
            g_variant_get(r.body, "(t)", &srv.ram_size);
            srv.ram_fd = dext_msg_take_fd(&r, 0);
            dext_msg_clear(&r);
        }
    }
    if (rc == 0) {
        rc = srv.ram_fd;
        if (size) {
            *size = srv.ram_size;
        }
    }
    g_mutex_unlock(&srv.ram_lock);
    return rc;
}

/* ---- services ----------------------------------------------------------- */

typedef struct {
    uint64_t id;
    uint64_t parent;            /* 0: published under the service itself */
    DextService *svc;
} PubNub;

uint64_t dext_service_id(const DextService *svc) { return svc->id; }
const char *dext_service_class(const DextService *svc) { return svc->class_name; }
DextQueue *dext_service_queue(DextService *svc) { return svc->queue; }
void dext_service_set_priv(DextService *svc, void *priv) { svc->priv = priv; }
void *dext_service_get_priv(const DextService *svc) { return svc->priv; }
uint64_t dext_service_provider_id(const DextService *svc) { return svc->provider_id; }
DextPciDevice *dext_service_pci(DextService *svc) { return svc->pci; }

char *dext_service_provider_property(const DextService *svc, const char *key)
{
    GVariant *v = g_variant_lookup_value(svc->props, key, NULL);
    if (!v) {
        return NULL;
    }
    char *s = g_variant_print(v, FALSE);
    g_variant_unref(v);
    return s;
}

int dext_service_provider_u64(const DextService *svc, const char *key, uint64_t *out)
{
    GVariant *v = g_variant_lookup_value(svc->props, key, NULL);
    int rc = 0;
    if (!v) {
        return -ENOENT;
    }
    if (g_variant_is_of_type(v, G_VARIANT_TYPE_BYTE)) {
        *out = g_variant_get_byte(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT16)) {
        *out = g_variant_get_uint16(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32)) {
        *out = g_variant_get_uint32(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT64)) {
        *out = g_variant_get_uint64(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT32)) {
        *out = (uint64_t)(int64_t)g_variant_get_int32(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT64)) {
        *out = (uint64_t)g_variant_get_int64(v);
    } else {
        rc = -EINVAL;
    }
    g_variant_unref(v);
    return rc;
}

/* ---- nubs ---------------------------------------------------------------- */

int dext_service_publish_nub(DextService *svc, uint64_t parent_nub, const char *name,
                             const char *io_class, const char *props_text, uint64_t *nub_id)
{
    GVariant *props;
    if (!svc || !name || !io_class || !nub_id) {
        return -EINVAL;
    }
    if (props_text) {
        GError *e = NULL;
        props = g_variant_parse(G_VARIANT_TYPE("a{sv}"), props_text, NULL, NULL, &e);
        if (!props) {
            DEXT_ERROR("nub %s: properties are not an a{sv} text: %s", name, e->message);
            g_error_free(e);
            return -EINVAL;
        }
    } else {
        props = g_variant_ref_sink(g_variant_new_array(G_VARIANT_TYPE("{sv}"), NULL, 0));
    }
    g_mutex_lock(&srv.lock);
    srv.publishing++;
    g_mutex_unlock(&srv.lock);
    DextMsg r;
    int rc = dext__rpc(DEXT_MSG_NUB_PUBLISH,
                       g_variant_new("(ttss@a{sv})", (guint64)svc->id, (guint64)parent_nub,
                                     name, io_class, props), false, &r);
    g_variant_unref(props);
    g_mutex_lock(&srv.lock);
    if (rc == 0) {
        guint64 id;
        g_variant_get(r.body, "(t)", &id);
        dext_msg_clear(&r);
        PubNub *n = g_new0(PubNub, 1);
        n->id = id;
        n->parent = parent_nub;
        n->svc = svc;
        g_hash_table_replace(srv.nubs, &n->id, n);
        *nub_id = id;
    }
    srv.publishing--;
    g_cond_broadcast(&srv.nub_cond);
    g_mutex_unlock(&srv.lock);
    return rc;
}

/* Forget @id and every nub under it.  srv.lock held. */
static void forget_nub_locked(uint64_t id)
{
    GList *kids = NULL;
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, srv.nubs);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        PubNub *n = v;
        if (n->parent == id) {
            kids = g_list_prepend(kids, GSIZE_TO_POINTER(n->id));
        }
    }
    for (GList *l = kids; l; l = l->next) {
        forget_nub_locked(GPOINTER_TO_SIZE(l->data));
    }
    g_list_free(kids);
    g_hash_table_remove(srv.nubs, &id);
}

/* Forget every nub of @svc (dextd terminates them when it stops). */
static void forget_service_nubs(DextService *svc)
{
    g_mutex_lock(&srv.lock);
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, srv.nubs);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        if (((PubNub *)v)->svc == svc) {
            g_hash_table_iter_remove(&it);
        }
    }
    g_mutex_unlock(&srv.lock);
}

int dext_service_terminate_nub(DextService *svc, uint64_t nub_id)
{
    if (!svc || !nub_id) {
        return -EINVAL;
    }
    int rc = dext__rpc(DEXT_MSG_NUB_TERMINATE, g_variant_new("(t)", (guint64)nub_id), false,
                       NULL);
    if (rc == 0 || rc == -ENOENT) {
        g_mutex_lock(&srv.lock);
        PubNub *n = g_hash_table_lookup(srv.nubs, &nub_id);
        if (n && n->svc == svc) {
            forget_nub_locked(nub_id);
        }
        g_mutex_unlock(&srv.lock);
    }
    return rc;
}

int dext__provider_open(DextService *svc, int *fd)
{
    DextMsg r;
    if (!svc || !fd) {
        return -EINVAL;
    }
    int rc = dext__rpc(DEXT_MSG_PROVIDER_OPEN, g_variant_new("(t)", (guint64)svc->id), false, &r);
    if (rc < 0) {
        return rc;
    }
    *fd = dext_msg_take_fd(&r, 0);
    dext_msg_clear(&r);
    return *fd >= 0 ? 0 : -EPROTO;
}

void dext__service_add_stop_hook(DextService *svc, DextStopHookFn fn, void *ctx)
{
    DextStopHook h = { .fn = fn, .ctx = ctx };
    g_mutex_lock(&svc->uc_lock);
    g_array_append_val(svc->stop_hooks, h);
    g_mutex_unlock(&svc->uc_lock);
}

static void run_stop_hooks(DextService *svc, int phase)
{
    g_mutex_lock(&svc->uc_lock);
    GArray *hooks = g_array_copy(svc->stop_hooks);
    g_mutex_unlock(&svc->uc_lock);
    for (guint i = 0; i < hooks->len; i++) {
        DextStopHook *h = &g_array_index(hooks, DextStopHook, i);
        h->fn(svc, phase, h->ctx);
    }
    g_array_free(hooks, TRUE);
}

/* ---- user clients ------------------------------------------------------- */

struct DextUserClient {
    DextService *svc;
    uint64_t id;
    char *app_id;
    int fd;
    GMutex send_lock;
    bool send_dead;             /* the app stopped reading: connection shut down */
    GThread *thread;
    gint done;
    const DextMethod *table;
    uint32_t count;
    const DextUserClientOps *ops;
    void *ctx;
};

DextService *dext_user_client_service(DextUserClient *uc) { return uc->svc; }
const char *dext_user_client_app_id(const DextUserClient *uc) { return uc->app_id; }
uint64_t dext_user_client_id(const DextUserClient *uc) { return uc->id; }

void dext_user_client_set_dispatch(DextUserClient *uc, const DextMethod *table,
                                   uint32_t count, const DextUserClientOps *ops, void *ctx)
{
    uc->table = table;
    uc->count = count;
    uc->ops = ops;
    uc->ctx = ctx;
}

/*
 * Replies and completions go out from whichever thread produced them, often
 * a driver's interrupt handler: an app that stops reading must not stall it
 * (and every other client it serves) for good.  Its queue gets
 * UC_SEND_ROOM_MS to drain; then the connection is shut down, as if the app
 * had closed it (its thread sees the end and the driver's closed callback
 * runs), and later sends fail at once.
 */
#define UC_SEND_ROOM_MS 1000

static int uc_send(DextUserClient *uc, DextMsg *m)
{
    g_mutex_lock(&uc->send_lock);
    int rc = uc->fd < 0 || uc->send_dead ? -ENOTCONN
                                        : dext_ipc_send_timeout(uc->fd, m, UC_SEND_ROOM_MS);
    if (rc == -ETIMEDOUT) {
        DEXT_WARN("user client %" G_GUINT64_FORMAT " (%s) does not read its messages "
                  "(nothing taken for %d ms): closing its connection", uc->id, uc->app_id,
                  UC_SEND_ROOM_MS);
        uc->send_dead = true;
        shutdown(uc->fd, SHUT_RDWR);
    }
    g_mutex_unlock(&uc->send_lock);
    return rc;
}

int dext_user_client_complete_async(DextUserClient *uc, uint64_t async_ref, int status,
                                    const uint64_t *data, uint32_t n)
{
    if (!uc || !async_ref || n > DEXT_UC_MAX_ASYNC_DATA || (n && !data)) {
        return -EINVAL;
    }
    if (g_atomic_int_get(&uc->done)) {
        return -ENOTCONN;
    }
    DextMsg m;
    dext_msg_init(&m, DEXT_MSG_UC_ASYNC,
                  g_variant_new("(ti@at)", (guint64)async_ref, status,
                                g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, data, n,
                                                          sizeof(uint64_t))));
    m.flags = DEXT_MSG_F_POSTED;
    int rc = uc_send(uc, &m);
    dext_msg_clear(&m);
    return rc;
}

/*
 * User-client calls run on the connection's thread when the service queue
 * is idle, holding the queue (dext__queue_try_run: still serial with the
 * queue's other work), instead of two thread hand-offs per call through
 * dext_queue_dispatch_sync.  Such a call has no dispatch bound to time out
 * on, so a watchdog thread looks once a second for one running longer than
 * CALLBACK_MS and ends the process as a timed-out dispatch does (dextd sees
 * the exit and applies its policy).
 */
typedef struct {
    GList link;                 /* in wd.calls while the call runs */
    gint64 deadline;            /* g_get_monotonic_time() */
    const char *what;
    uint32_t sel;
    const char *cls;
} WdCall;

static struct {
    GMutex lock;
    GQueue calls;               /* WdCall, earliest deadline first */
    GThread *thread;            /* NULL: calls are always dispatched */
} wd;

static gpointer wd_thread(gpointer data)
{
    for (;;) {
        g_usleep(G_USEC_PER_SEC);
        g_mutex_lock(&wd.lock);
        WdCall *c = wd.calls.head ? wd.calls.head->data : NULL;
        if (c && g_get_monotonic_time() >= c->deadline) {
            DEXT_ERROR("%s %u of %s did not finish in %d ms: giving up on the process",
                       c->what, c->sel, c->cls, CALLBACK_MS);
            _exit(70);
        }
        g_mutex_unlock(&wd.lock);
    }
    return NULL;
}

/* Run fn(ctx) on the client's service queue and wait for it: inline when
 * the queue is idle, else dispatched; a hang ends the process either way. */
static void uc_run(DextUserClient *uc, DextBlockFn fn, void *ctx, const char *what,
                   uint32_t sel)
{
    DextQueue *q = uc->svc->queue;
    if (wd.thread) {
        WdCall c = { .link.data = &c, .what = what, .sel = sel, .cls = uc->svc->class_name };
        g_mutex_lock(&wd.lock);
        /* same bound for every call: pushing in time order keeps the
         * earliest deadline at the head */
        c.deadline = g_get_monotonic_time() + (gint64)CALLBACK_MS * 1000;
        g_queue_push_tail_link(&wd.calls, &c.link);
        g_mutex_unlock(&wd.lock);
        int rc = dext__queue_try_run(q, fn, ctx);
        g_mutex_lock(&wd.lock);
        g_queue_unlink(&wd.calls, &c.link);
        g_mutex_unlock(&wd.lock);
        if (rc == 0) {
            return;
        }
    }
    if (dext_queue_dispatch_sync(q, fn, ctx, CALLBACK_MS) < 0) {
        DEXT_ERROR("%s %u of %s did not finish in %d ms: giving up on the process", what, sel,
                   uc->svc->class_name, CALLBACK_MS);
        _exit(70); /* a hung driver: dextd sees the exit and applies its policy */
    }
}

typedef struct {
    DextUserClient *uc;
    const DextMethod *meth;
    DextMethodArgs args;
    int rc;
} CallCtx;

static void run_method(void *data)
{
    CallCtx *c = data;
    c->rc = c->meth->fn(c->uc, c->uc->ctx, &c->args);
}

static void reply_error(DextUserClient *uc, const DextMsg *req, int err, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
static void reply_error(DextUserClient *uc, const DextMsg *req, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    DextMsg e;
    dext_msg_init_error(&e, req, err, "%s", s);
    uc_send(uc, &e);
    dext_msg_clear(&e);
    g_free(s);
}

/* A failed call: an ERROR reply, or for a posted call (which has no reply)
 * a completion of its async reference with the error and no data. */
static void call_error(DextUserClient *uc, const DextMsg *req, uint64_t async_ref, int err,
                       const char *fmt, ...) G_GNUC_PRINTF(5, 6);
static void call_error(DextUserClient *uc, const DextMsg *req, uint64_t async_ref, int err,
                       const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    if (!(req->flags & DEXT_MSG_F_POSTED)) {
        reply_error(uc, req, err, "%s", s);
    } else if (async_ref) {
        DEXT_DEBUG("user client %" G_GUINT64_FORMAT ": posted call failed: %s", uc->id, s);
        DextMsg m;
        dext_msg_init(&m, DEXT_MSG_UC_ASYNC,
                      g_variant_new("(ti@at)", (guint64)async_ref, err,
                                    g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, NULL, 0,
                                                              sizeof(uint64_t))));
        m.flags = DEXT_MSG_F_POSTED;
        uc_send(uc, &m);
        dext_msg_clear(&m);
    } else {
        DEXT_WARN("user client %" G_GUINT64_FORMAT " (%s): posted call without an async "
                  "reference failed, nobody to tell: %s", uc->id, uc->app_id, s);
    }
    g_free(s);
}

static void uc_call(DextUserClient *uc, DextMsg *m)
{
    guint32 sel, nout, sout_cap;
    guint64 async_ref;
    GVariant *vs, *vb;
    g_variant_get(m->body, "(u@at@ayuut)", &sel, &vs, &vb, &nout, &sout_cap, &async_ref);
    gsize nin, sin_len;
    const uint64_t *in = g_variant_get_fixed_array(vs, &nin, sizeof(uint64_t));
    const void *sin = g_variant_get_fixed_array(vb, &sin_len, 1);
    const DextMethod *meth = sel < uc->count && uc->table[sel].fn ? &uc->table[sel] : NULL;
    uint64_t scalars_out[DEXT_UC_MAX_SCALARS];
    uint8_t *struct_out = NULL;

    if (!meth) {
        call_error(uc, m, async_ref, -EINVAL, "invalid selector %u", sel);
        goto out;
    }
    if (nin != meth->scalar_in) {
        call_error(uc, m, async_ref, -EINVAL, "selector %u takes %u scalar inputs, got %zu",
                   sel, meth->scalar_in, (size_t)nin);
        goto out;
    }
    if (meth->struct_in == DEXT_UC_VARIABLE ? sin_len > DEXT_UC_MAX_STRUCT
                                            : sin_len != meth->struct_in) {
        call_error(uc, m, async_ref, -EINVAL,
                   "selector %u: structure input of %zu bytes, expected %s%u", sel,
                   (size_t)sin_len, meth->struct_in == DEXT_UC_VARIABLE ? "<= " : "",
                   meth->struct_in == DEXT_UC_VARIABLE ? DEXT_UC_MAX_STRUCT : meth->struct_in);
        goto out;
    }
    if (nout != meth->scalar_out || nout > DEXT_UC_MAX_SCALARS) {
        call_error(uc, m, async_ref, -EINVAL,
                   "selector %u returns %u scalars, caller expects %u", sel, meth->scalar_out,
                   nout);
        goto out;
    }
    uint32_t sout_max = meth->struct_out == DEXT_UC_VARIABLE ? DEXT_UC_MAX_STRUCT : meth->struct_out;
    if (sout_cap > DEXT_UC_MAX_STRUCT ||
        (meth->struct_out != DEXT_UC_VARIABLE && sout_cap < meth->struct_out)) {
        call_error(uc, m, async_ref, -EINVAL,
                   "selector %u: structure output capacity %u, needs %u", sel, sout_cap,
                   meth->struct_out);
        goto out;
    }
    if (async_ref && !meth->async) {
        call_error(uc, m, async_ref, -EINVAL, "selector %u is not asynchronous", sel);
        goto out;
    }
    if (!async_ref && meth->async) {
        call_error(uc, m, async_ref, -EINVAL, "selector %u needs an async reference", sel);
        goto out;
    }
    size_t cap = MIN(sout_cap, sout_max);
    struct_out = g_malloc0(cap ? cap : 1);
    CallCtx c = {
        .uc = uc, .meth = meth,
        .args = {
            .scalar_in = in, .scalar_in_count = nin,
            .struct_in = sin_len ? sin : NULL, .struct_in_size = sin_len,
            .scalar_out = scalars_out, .scalar_out_count = nout,
            .struct_out = cap ? struct_out : NULL, .struct_out_size = cap,
            .async_ref = async_ref,
        },
    };
    memset(scalars_out, 0, sizeof(scalars_out));
    uc_run(uc, run_method, &c, "selector", sel);
    if (c.rc < 0) {
        call_error(uc, m, async_ref, c.rc, "selector %u failed: %s", sel, g_strerror(-c.rc));
        goto out;
    }
    if (c.args.struct_out_size > cap) {
        DEXT_ERROR("selector %u produced %zu bytes of a %zu-byte output", sel,
                   c.args.struct_out_size, cap);
        call_error(uc, m, async_ref, -EOVERFLOW, "driver produced too much output");
        goto out;
    }
    if (m->flags & DEXT_MSG_F_POSTED) {
        goto out; /* success: the completion (if any) is the only answer */
    }
    DextMsg r;
    dext_msg_init_reply(&r, m,
                        g_variant_new("(@at@ay)",
                                      g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, scalars_out,
                                                                nout, sizeof(uint64_t)),
                                      g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, struct_out,
                                                                c.args.struct_out_size, 1)));
    uc_send(uc, &r);
    dext_msg_clear(&r);
out:
    g_free(struct_out);
    g_variant_unref(vs);
    g_variant_unref(vb);
}

typedef struct {
    DextUserClient *uc;
    uint32_t type;
    DextBuffer *buf;
    bool ro;
    int rc;
} MemCtx;

static void run_memory(void *data)
{
    MemCtx *c = data;
    c->rc = c->uc->ops && c->uc->ops->client_memory
                ? c->uc->ops->client_memory(c->uc, c->uc->ctx, c->type, &c->buf, &c->ro)
                : -EOPNOTSUPP;
}

static void uc_memory(DextUserClient *uc, DextMsg *m)
{
    guint32 type, flags;
    g_variant_get(m->body, "(uu)", &type, &flags);
    MemCtx c = { .uc = uc, .type = type };
    uc_run(uc, run_memory, &c, "client memory of type", type);
    if (c.rc < 0 || !c.buf) {
        reply_error(uc, m, c.rc < 0 ? c.rc : -EINVAL, "no client memory of type %u", type);
        return;
    }
    int fd;
    uint64_t offset;
    if (dext__buffer_share(c.buf, &fd, &offset) < 0) {
        reply_error(uc, m, -EINVAL, "memory type %u is not shareable", type);
        return;
    }
    int send_fd = -1;
    if (c.ro || (flags & 1)) {
        /* A new read-only open of the same memfd: the app can map it
         * PROT_READ only, while the driver keeps its writable mapping. */
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        send_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (send_fd < 0) {
            reply_error(uc, m, -errno, "cannot reopen memory read-only");
            return;
        }
    }
    DextMsg r;
    dext_msg_init_reply(&r, m, g_variant_new("(tt)", (guint64)dext_buffer_capacity(c.buf),
                                              (guint64)offset));
    r.fds[0] = send_fd >= 0 ? send_fd : fd;
    r.nfds = 1;
    uc_send(uc, &r);
    r.nfds = 0;
    dext_msg_clear(&r);
    if (send_fd >= 0) {
        close(send_fd);
    }
}

static void uc_methods(DextUserClient *uc, DextMsg *m)
{
    GVariantBuilder b;
    g_variant_builder_init(&b, G_VARIANT_TYPE("a(uuuuu)"));
    for (uint32_t i = 0; i < uc->count; i++) {
        if (uc->table[i].fn) {
            g_variant_builder_add(&b, "(uuuuu)", i, uc->table[i].scalar_in, uc->table[i].struct_in,
                                  uc->table[i].scalar_out, uc->table[i].struct_out);
        }
    }
    DextMsg r;
    dext_msg_init_reply(&r, m, g_variant_new("(a(uuuuu))", &b));
    uc_send(uc, &r);
    dext_msg_clear(&r);
}

static void run_closed(void *data)
{
    DextUserClient *uc = data;
    if (uc->ops && uc->ops->closed) {
        uc->ops->closed(uc, uc->ctx);
    }
}

static gpointer uc_thread(gpointer data)
{
    DextUserClient *uc = data;
    for (;;) {
        DextMsg m;
        char *why = NULL;
        int rc = dext_ipc_recv(uc->fd, DEXT_CH_UC, &m, 1000, &why);
        if (rc == -ETIMEDOUT) {
            if (g_atomic_int_get(&uc->done)) {
                break;
            }
            continue;
        }
        if (rc < 0) {
            if (rc == -ECONNRESET || rc == -EPIPE || rc == -EBADF) {
                g_free(why);
                break;
            }
            DEXT_WARN("user client %" G_GUINT64_FORMAT " (%s): bad message: %s",
                      uc->id, uc->app_id, why ? why : g_strerror(-rc));
            if (m.serial && rc != -EMSGSIZE) {
                reply_error(uc, &m, rc, "%s", why ? why : "invalid message");
                g_free(why);
                continue;
            }
            /* Unframeable: close this connection only. */
            g_free(why);
            break;
        }
        if (m.flags & DEXT_MSG_F_REPLY) {
            dext_msg_clear(&m);
            continue; /* apps never reply to anything */
        }
        switch (m.type) {
        case DEXT_MSG_UC_METHODS:
            uc_methods(uc, &m);
            break;
        case DEXT_MSG_UC_CALL:
            uc_call(uc, &m);
            break;
        case DEXT_MSG_UC_MEMORY:
            uc_memory(uc, &m);
            break;
        default:
            reply_error(uc, &m, -EOPNOTSUPP, "unexpected %s", dext_msg_name(m.type));
        }
        dext_msg_clear(&m);
    }
    g_mutex_lock(&uc->send_lock);
    shutdown(uc->fd, SHUT_RDWR);
    g_mutex_unlock(&uc->send_lock);
    g_atomic_int_set(&uc->done, 1);
    dext_queue_dispatch_sync(uc->svc->queue, run_closed, uc, CALLBACK_MS);
    return NULL;
}

static void uc_free(DextUserClient *uc)
{
    g_thread_join(uc->thread);
    close(uc->fd);
    g_mutex_clear(&uc->send_lock);
    g_free(uc->app_id);
    g_free(uc);
}

/* Join and free clients whose connection ended (all of them if @all,
 * after shutting their sockets down). */
static void reap_clients(DextService *svc, bool all)
{
    GPtrArray *dead = g_ptr_array_new();
    g_mutex_lock(&svc->uc_lock);
    for (guint i = 0; i < svc->ucs->len;) {
        DextUserClient *uc = svc->ucs->pdata[i];
        if (all) {
            g_atomic_int_set(&uc->done, 1);
            shutdown(uc->fd, SHUT_RDWR);
        }
        if (all || g_atomic_int_get(&uc->done)) {
            g_ptr_array_add(dead, uc);
            g_ptr_array_remove_index(svc->ucs, i);
        } else {
            i++;
        }
    }
    g_mutex_unlock(&svc->uc_lock);
    for (guint i = 0; i < dead->len; i++) {
        uc_free(dead->pdata[i]);
    }
    g_ptr_array_free(dead, TRUE);
}

/* ---- control channel ---------------------------------------------------- */

typedef struct {
    DextService *svc;
    DextUserClient *uc;
    int rc;
} OpCtx;

static void run_start(void *data)
{
    OpCtx *c = data;
    c->rc = c->svc->ops->start(c->svc);
}

static void run_stop(void *data)
{
    OpCtx *c = data;
    c->svc->ops->stop(c->svc);
}

static void run_new_client(void *data)
{
    OpCtx *c = data;
    c->rc = c->svc->ops->new_user_client(c->svc, c->uc);
}

typedef struct {
    DextService *svc;
    uint64_t nub, client;
    int fd;
    int rc;
} NubCtx;

static void run_nub_client(void *data)
{
    NubCtx *c = data;
    c->rc = c->svc->ops->nub_client(c->svc, c->nub, c->client, c->fd);
}

static void run_nub_reset(void *data)
{
    NubCtx *c = data;
    c->rc = c->svc->ops->nub_reset(c->svc, c->nub);
}

static void service_free(DextService *svc)
{
    if (svc->pci) {
        if (dext__pci_is_open(svc->pci)) {
            dext_pci_close(svc->pci);
        }
        dext__pci_free(svc->pci);
    }
    if (svc->queue) {
        dext_queue_destroy(svc->queue);
    }
    g_ptr_array_free(svc->ucs, TRUE);
    g_array_free(svc->stop_hooks, TRUE);
    g_mutex_clear(&svc->uc_lock);
    g_variant_unref(svc->props);
    g_free(svc->class_name);
    g_free(svc);
}

static int handle_start(DextMsg *m)
{
    guint64 id, provider;
    const char *cls;
    GVariant *props;
    g_variant_get(m->body, "(t&st@a{sv})", &id, &cls, &provider, &props);
    const DextClassOps *ops = NULL;
    for (const DextClassOps *const *c = srv.classes; *c; c++) {
        if (!strcmp((*c)->name, cls)) {
            ops = *c;
        }
    }
    if (!ops || !ops->start || !ops->stop) {
        DEXT_ERROR("no class %s in this server", cls);
        g_variant_unref(props);
        return -ENOENT;
    }
    g_mutex_lock(&srv.lock);
    bool dup = g_hash_table_contains(srv.services, &id);
    g_mutex_unlock(&srv.lock);
    if (dup) {
        g_variant_unref(props);
        return -EEXIST;
    }
    DextService *svc = g_new0(DextService, 1);
    svc->id = id;
    svc->provider_id = provider;
    svc->class_name = g_strdup(cls);
    svc->ops = ops;
    svc->props = props;
    svc->ucs = g_ptr_array_new();
    svc->stop_hooks = g_array_new(FALSE, FALSE, sizeof(DextStopHook));
    g_mutex_init(&svc->uc_lock);
    char *qn = g_strdup_printf("%s.default", cls);
    int rc = dext_queue_create(qn, &svc->queue);
    g_free(qn);
    if (rc < 0) {
        service_free(svc);
        return rc;
    }
    svc->pci = dext__pci_new(svc); /* NULL unless the provider is PCI */
    OpCtx c = { .svc = svc };
    if (dext_queue_dispatch_sync(svc->queue, run_start, &c, CALLBACK_MS) < 0) {
        DEXT_ERROR("%s Start did not return in %d ms", cls, CALLBACK_MS);
        _exit(70);
    }
    if (c.rc < 0) {
        DEXT_WARN("%s Start failed: %s", cls, g_strerror(-c.rc));
        run_stop_hooks(svc, 0);
        run_stop_hooks(svc, 1);
        forget_service_nubs(svc);
        service_free(svc);
        return c.rc;
    }
    g_mutex_lock(&srv.lock);
    g_hash_table_insert(srv.services, &svc->id, svc);
    g_mutex_unlock(&srv.lock);
    DEXT_INFO("%s started (service %" G_GUINT64_FORMAT ")", cls, id);
    return 0;
}

static void stop_service(DextService *svc)
{
    reap_clients(svc, true);
    run_stop_hooks(svc, 0);
    OpCtx c = { .svc = svc };
    if (dext_queue_dispatch_sync(svc->queue, run_stop, &c, CALLBACK_MS) < 0) {
        DEXT_ERROR("%s Stop did not return in %d ms", svc->class_name, CALLBACK_MS);
        _exit(70);
    }
    run_stop_hooks(svc, 1);
    forget_service_nubs(svc);
    DEXT_INFO("%s stopped (service %" G_GUINT64_FORMAT ")", svc->class_name, svc->id);
    service_free(svc);
}

static int handle_stop(DextMsg *m)
{
    guint64 id;
    g_variant_get(m->body, "(t)", &id);
    g_mutex_lock(&srv.lock);
    DextService *svc = g_hash_table_lookup(srv.services, &id);
    if (svc) {
        g_hash_table_steal(srv.services, &id);
    }
    g_mutex_unlock(&srv.lock);
    if (!svc) {
        return -ENOENT;
    }
    stop_service(svc);
    return 0;
}

static int handle_new_client(DextMsg *m)
{
    guint64 id, client;
    const char *app;
    g_variant_get(m->body, "(tt&s)", &id, &client, &app);
    g_mutex_lock(&srv.lock);
    DextService *svc = g_hash_table_lookup(srv.services, &id);
    g_mutex_unlock(&srv.lock);
    if (!svc) {
        return -ENOENT;
    }
    if (!svc->ops->new_user_client) {
        return -EOPNOTSUPP;
    }
    reap_clients(svc, false);
    DextUserClient *uc = g_new0(DextUserClient, 1);
    uc->svc = svc;
    uc->id = client;
    uc->app_id = g_strdup(app);
    uc->fd = dext_msg_take_fd(m, 0);
    g_mutex_init(&uc->send_lock);
    OpCtx c = { .svc = svc, .uc = uc };
    if (dext_queue_dispatch_sync(svc->queue, run_new_client, &c, CALLBACK_MS) < 0) {
        _exit(70);
    }
    if (c.rc == 0 && !uc->table) {
        DEXT_ERROR("%s new_user_client set no dispatch table", svc->class_name);
        c.rc = -EPROTO;
    }
    if (c.rc == 0 && !wd.thread) {
        /* without it (no thread to spare) calls are simply dispatched */
        wd.thread = g_thread_try_new("dext-uc-wd", wd_thread, NULL, NULL);
    }
    if (c.rc == 0) {
        uc->thread = g_thread_try_new("dext-uc", uc_thread, uc, NULL);
        if (!uc->thread) {
            c.rc = -EAGAIN;
        }
    }
    if (c.rc < 0) {
        close(uc->fd);
        g_mutex_clear(&uc->send_lock);
        g_free(uc->app_id);
        g_free(uc);
        return c.rc;
    }
    g_mutex_lock(&svc->uc_lock);
    g_ptr_array_add(svc->ucs, uc);
    g_mutex_unlock(&svc->uc_lock);
    DEXT_INFO("user client %" G_GUINT64_FORMAT " opened by %s", client, app);
    return 0;
}

/* The service that published @nub, waiting (bounded) for publish calls
 * in flight to record theirs. */
static DextService *nub_service(uint64_t nub)
{
    gint64 end = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
    DextService *svc = NULL;
    g_mutex_lock(&srv.lock);
    for (;;) {
        PubNub *n = g_hash_table_lookup(srv.nubs, &nub);
        if (n) {
            svc = n->svc;
            break;
        }
        if (!srv.publishing || !g_cond_wait_until(&srv.nub_cond, &srv.lock, end)) {
            break;
        }
    }
    g_mutex_unlock(&srv.lock);
    return svc;
}

static int handle_nub_client(DextMsg *m)
{
    guint64 nub, client;
    g_variant_get(m->body, "(tt)", &nub, &client);
    int fd = dext_msg_take_fd(m, 0);
    DextService *svc = nub_service(nub);
    if (!svc || !svc->ops->nub_client) {
        DEXT_WARN("provider channel for nub %" G_GUINT64_FORMAT " refused: %s", nub,
                  svc ? "the class serves no nub clients" : "not a nub of this process");
        close(fd);
        return svc ? -EOPNOTSUPP : -ENOENT;
    }
    NubCtx c = { .svc = svc, .nub = nub, .client = client, .fd = fd };
    if (dext_queue_dispatch_sync(svc->queue, run_nub_client, &c, CALLBACK_MS) < 0) {
        DEXT_ERROR("%s nub_client did not return in %d ms", svc->class_name, CALLBACK_MS);
        _exit(70);
    }
    return c.rc;
}

static int handle_nub_reset(DextMsg *m)
{
    guint64 nub;
    g_variant_get(m->body, "(t)", &nub);
    DextService *svc = nub_service(nub);
    if (!svc) {
        return -ENOENT;
    }
    if (!svc->ops->nub_reset) {
        return -EOPNOTSUPP;
    }
    NubCtx c = { .svc = svc, .nub = nub, .fd = -1 };
    if (dext_queue_dispatch_sync(svc->queue, run_nub_reset, &c, CALLBACK_MS) < 0) {
        DEXT_ERROR("%s nub_reset did not return in %d ms", svc->class_name, CALLBACK_MS);
        _exit(70);
    }
    return c.rc;
}

static int env_fd(const char *name)
{
    const char *s = g_getenv(name);
    if (!s) {
        return -1;
    }
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < 0 || v > 65535 || fcntl((int)v, F_GETFD) < 0) {
        return -1;
    }
    fcntl((int)v, F_SETFD, FD_CLOEXEC);
    return (int)v;
}

int dext_server_main(int argc, char **argv, const DextClassOps *const *classes)
{
    srv.classes = classes;
    srv.name = g_strdup(g_getenv("DEXT_SERVER_NAME") ? g_getenv("DEXT_SERVER_NAME")
                                                      : (argc ? argv[0] : "dext"));
    srv.ctrl_fd = env_fd("DEXT_CONTROL_FD");
    srv.rpc_fd = env_fd("DEXT_RPC_FD");
    srv.services = g_hash_table_new(g_int64_hash, g_int64_equal);
    srv.nubs = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, g_free);
    if (srv.ctrl_fd < 0 || srv.rpc_fd < 0) {
        DEXT_ERROR("not started by dextd (DEXT_CONTROL_FD/DEXT_RPC_FD missing)");
        return 2;
    }
    DextMsg r;
    int rc = dext__rpc(DEXT_MSG_HELLO, g_variant_new("(sx)", srv.name, (gint64)getpid()),
                       false, &r);
    if (rc < 0) {
        DEXT_ERROR("dextd refused HELLO: %s", g_strerror(-rc));
        return 2;
    }
    dext_msg_clear(&r);

    int status = 0;
    for (;;) {
        DextMsg m;
        char *why = NULL;
        rc = dext_ipc_recv(srv.ctrl_fd, DEXT_CH_CTRL, &m, 1000, &why);
        if (rc == -ETIMEDOUT) {
            continue;
        }
        if (rc == -ECONNRESET || rc == -EPIPE) {
            break; /* dextd closed the channel: shut down */
        }
        if (rc < 0) {
            DEXT_ERROR("control channel: %s", why ? why : g_strerror(-rc));
            g_free(why);
            status = 3;
            break;
        }
        if (m.flags & DEXT_MSG_F_REPLY) {
            dext_msg_clear(&m);
            continue;
        }
        DextMsg rep;
        switch (m.type) {
        case DEXT_MSG_START:
            rc = handle_start(&m);
            dext_msg_init_reply(&rep, &m, g_variant_new("(i)", rc));
            break;
        case DEXT_MSG_STOP:
            rc = handle_stop(&m);
            dext_msg_init_reply(&rep, &m, g_variant_new("(i)", rc));
            break;
        case DEXT_MSG_NEW_CLIENT:
            rc = handle_new_client(&m);
            dext_msg_init_reply(&rep, &m, g_variant_new("(i)", rc));
            break;
        case DEXT_MSG_NUB_CLIENT:
            rc = handle_nub_client(&m);
            dext_msg_init_reply(&rep, &m, g_variant_new("(i)", rc));
            break;
        case DEXT_MSG_NUB_RESET:
            rc = handle_nub_reset(&m);
            dext_msg_init_reply(&rep, &m, g_variant_new("(i)", rc));
            break;
        case DEXT_MSG_PING:
            dext_msg_init_reply(&rep, &m, NULL);
            break;
        default:
            dext_msg_init_error(&rep, &m, -EOPNOTSUPP, "unexpected %s", dext_msg_name(m.type));
        }
        dext_ipc_send(srv.ctrl_fd, &rep);
        dext_msg_clear(&rep);
        dext_msg_clear(&m);
    }
    /* Orderly shutdown: stop whatever is still running. */
    GList *svcs = g_hash_table_get_values(srv.services);
    g_hash_table_remove_all(srv.services);
    for (GList *l = svcs; l; l = l->next) {
        stop_service(l->data);
    }
    g_list_free(svcs);
    return status;
}
