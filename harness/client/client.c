/*
 * libdextclient: app side of user clients and daemon queries.
 */
#include "dext/client.h"
#include "ipc.h"

#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_PENDING_ASYNC 1024

typedef struct {
    uint32_t scalar_in, struct_in, scalar_out, struct_out;
    bool valid;
} Method;

typedef struct {
    uint64_t ref;
    int status;
    uint32_t n;
    uint64_t data[16];
} Async;

struct DextConnection {
    int fd;
    uint32_t serial;
    uint64_t service;
    uint64_t client;
    Method *methods;
    uint32_t nmethods;
    GQueue asyncs;          /* Async* received while waiting for a reply */
    bool dead;
};

static int connect_daemon(const char *path, int *out)
{
    if (!path) {
        path = g_getenv("DEXTD_SOCKET");
    }
    if (!path) {
        return -EINVAL;
    }
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(path) >= sizeof(sa.sun_path)) {
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return -errno;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    *out = fd;
    return 0;
}

static int daemon_call_why(const char *path, uint16_t type, GVariant *body, DextMsg *reply,
                           char **reason);

/* One request/reply with dextd on a fresh connection. */
static int daemon_call(const char *path, uint16_t type, GVariant *body, DextMsg *reply)
{
    char *why = NULL;
    int rc = daemon_call_why(path, type, body, reply, &why);
    if (rc < 0 && why) {
        g_debug("dextd: %s", why);
    }
    g_free(why);
    return rc;
}

/* The same, handing dextd's error text (if any) to the caller. */
static int daemon_call_why(const char *path, uint16_t type, GVariant *body, DextMsg *reply,
                           char **reason)
{
    int fd = -1, rc;
    uint32_t serial = 0;
    if ((rc = connect_daemon(path, &fd)) < 0) {
        if (body) {
            g_variant_unref(g_variant_ref_sink(body));
        }
        return rc;
    }
    DextMsg m;
    dext_msg_init(&m, type, body);
    char *why = NULL;
    rc = dext_ipc_call(fd, DEXT_CH_APP, &serial, &m, reply, DEXT_IPC_TIMEOUT_MS, &why);
    *reason = why;
    dext_msg_clear(&m);
    close(fd);
    return rc;
}

static int uc_call(DextConnection *c, uint16_t type, GVariant *body, DextMsg *reply)
{
    DextMsg m;
    int rc;
    if (c->dead) {
        if (body) {
            g_variant_unref(g_variant_ref_sink(body));
        }
        return -ECONNRESET;
    }
    dext_msg_init(&m, type, body);
    m.serial = ++c->serial;
    rc = dext_ipc_send(c->fd, &m);
    if (rc < 0) {
        goto out;
    }
    gint64 end = g_get_monotonic_time() + (gint64)DEXT_IPC_TIMEOUT_MS * 1000;
    for (;;) {
        int left = (int)((end - g_get_monotonic_time()) / 1000);
        if (left < 0) {
            rc = -ETIMEDOUT;
            goto out;
        }
        rc = dext_ipc_recv(c->fd, DEXT_CH_UC | DEXT_CH_UCEV, reply, left, NULL);
        if (rc < 0) {
            goto out;
        }
        if (reply->type == DEXT_MSG_UC_ASYNC && !(reply->flags & DEXT_MSG_F_REPLY)) {
            /* A completion overtook our reply: keep it for wait_async. */
            if (c->asyncs.length < MAX_PENDING_ASYNC) {
                Async *a = g_new0(Async, 1);
                GVariant *d;
                guint64 ref;
                g_variant_get(reply->body, "(ti@at)", &ref, &a->status, &d);
                a->ref = ref;
                gsize n;
                const uint64_t *p = g_variant_get_fixed_array(d, &n, sizeof(uint64_t));
                a->n = MIN(n, G_N_ELEMENTS(a->data));
                if (a->n) { /* an empty array may be NULL */
                    if (a->n) { /* an empty array may be NULL */
                memcpy(a->data, p, a->n * sizeof(uint64_t));
            }
                }
                g_variant_unref(d);
                g_queue_push_tail(&c->asyncs, a);
            }
            dext_msg_clear(reply);
            continue;
        }
        if (!(reply->flags & DEXT_MSG_F_REPLY) || reply->reply_to != m.serial) {
            dext_msg_clear(reply);
            continue;
        }
        if (reply->type == DEXT_MSG_ERROR) {
            gint32 err;
            const char *txt;
            g_variant_get(reply->body, "(i&s)", &err, &txt);
            g_debug("driver: %s", txt);
            dext_msg_clear(reply);
            /* The driver's answer, not the transport's: a method may well
             * fail with -EPIPE (a stalled endpoint) on a live connection. */
            dext_msg_clear(&m);
            return err < 0 ? err : -EIO;
        }
        if (reply->type != type) {
            dext_msg_clear(reply);
            rc = -EPROTO;
            goto out;
        }
        rc = 0;
        goto out;
    }
out:
    if (rc == -ECONNRESET || rc == -EPIPE) {
        c->dead = true;
        rc = -ECONNRESET;
    }
    dext_msg_clear(&m);
    return rc;
}

int dext_client_open(const char *socket_path, const char *by, const char *value,
                     DextConnection **out)
{
    DextMsg r;
    if (!by || !value || !out) {
        return -EINVAL;
    }
    int rc = daemon_call(socket_path, DEXT_MSG_OPEN, g_variant_new("(ss)", by, value), &r);
    if (rc < 0) {
        return rc;
    }
    DextConnection *c = g_new0(DextConnection, 1);
    guint64 svc, client;
    g_variant_get(r.body, "(tt)", &svc, &client);
    c->service = svc;
    c->client = client;
    c->fd = dext_msg_take_fd(&r, 0);
    dext_msg_clear(&r);
    g_queue_init(&c->asyncs);

    /* Fetch the dispatch table so calls are checked before they leave. */
    rc = uc_call(c, DEXT_MSG_UC_METHODS, NULL, &r);
    if (rc < 0) {
        dext_client_close(c);
        return rc;
    }
    GVariantIter *it;
    guint32 sel, si, sti, so, sto;
    g_variant_get(r.body, "(a(uuuuu))", &it);
    while (g_variant_iter_next(it, "(uuuuu)", &sel, &si, &sti, &so, &sto)) {
        if (sel >= 4096) {
            continue; /* nonsense from a driver: ignore */
        }
        if (sel >= c->nmethods) {
            c->methods = g_renew(Method, c->methods, sel + 1);
            memset(c->methods + c->nmethods, 0, (sel + 1 - c->nmethods) * sizeof(Method));
            c->nmethods = sel + 1;
        }
        c->methods[sel] = (Method){ si, sti, so, sto, true };
    }
    g_variant_iter_free(it);
    dext_msg_clear(&r);
    *out = c;
    return 0;
}

void dext_client_close(DextConnection *c)
{
    if (!c) {
        return;
    }
    close(c->fd);
    g_queue_clear_full(&c->asyncs, g_free);
    g_free(c->methods);
    g_free(c);
}

uint64_t dext_client_service_id(const DextConnection *c) { return c->service; }
uint32_t dext_client_method_count(const DextConnection *c) { return c->nmethods; }
int dext_client_fd(const DextConnection *c) { return c->fd; }

static int call(DextConnection *c, uint32_t sel, uint64_t ref, const uint64_t *in, uint32_t nin,
                const void *sin, size_t sin_len, uint64_t *out, uint32_t *nout, void *sout,
                size_t *sout_len)
{
    uint32_t want_out = nout ? *nout : 0;
    size_t cap = sout_len ? *sout_len : 0;
    if (!c || (nin && !in) || (sin_len && !sin) || (want_out && !out) || (cap && !sout)) {
        return -EINVAL;
    }
    if (sel >= c->nmethods || !c->methods[sel].valid) {
        return -EINVAL;
    }
    const Method *m = &c->methods[sel];
    if (nin != m->scalar_in || want_out != m->scalar_out ||
        (m->struct_in == UINT32_MAX ? sin_len > 4096 : sin_len != m->struct_in) ||
        cap > 4096 || (m->struct_out != UINT32_MAX && cap < m->struct_out)) {
        return -EINVAL;
    }
    DextMsg r;
    int rc = uc_call(c, DEXT_MSG_UC_CALL,
                     g_variant_new("(u@at@ayuut)", sel,
                                   g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, in, nin,
                                                             sizeof(uint64_t)),
                                   g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, sin, sin_len, 1),
                                   want_out, (guint32)cap, (guint64)ref), &r);
    if (rc < 0) {
        return rc;
    }
    GVariant *vs, *vb;
    g_variant_get(r.body, "(@at@ay)", &vs, &vb);
    gsize ns, nb;
    const uint64_t *s = g_variant_get_fixed_array(vs, &ns, sizeof(uint64_t));
    const void *b = g_variant_get_fixed_array(vb, &nb, 1);
    if (ns != want_out || nb > cap) {
        rc = -EPROTO; /* the driver broke its own table */
    } else {
        if (ns) {
            memcpy(out, s, ns * sizeof(uint64_t));
        }
        if (nb) {
            memcpy(sout, b, nb);
        }
        if (sout_len) {
            *sout_len = nb;
        }
    }
    g_variant_unref(vs);
    g_variant_unref(vb);
    dext_msg_clear(&r);
    return rc;
}

int dext_client_call_posted(DextConnection *c, uint32_t selector, uint64_t ref,
                            const uint64_t *in, uint32_t nin, const void *sin, size_t sin_len)
{
    if (!c || !ref || (nin && !in) || (sin_len && !sin)) {
        return -EINVAL;
    }
    if (selector >= c->nmethods || !c->methods[selector].valid) {
        return -EINVAL;
    }
    const Method *m = &c->methods[selector];
    if (nin != m->scalar_in ||
        (m->struct_in == UINT32_MAX ? sin_len > 4096 : sin_len != m->struct_in)) {
        return -EINVAL;
    }
    if (c->dead) {
        return -ECONNRESET;
    }
    /* The driver checks the output shape too: ask for exactly the table's,
     * then drops the outputs (a posted call has no reply). */
    uint32_t cap = m->struct_out == UINT32_MAX ? 0 : m->struct_out;
    DextMsg msg;
    dext_msg_init(&msg, DEXT_MSG_UC_CALL,
                  g_variant_new("(u@at@ayuut)", selector,
                                g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, in, nin,
                                                          sizeof(uint64_t)),
                                g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, sin, sin_len, 1),
                                m->scalar_out, cap, (guint64)ref));
    msg.flags = DEXT_MSG_F_POSTED;
    msg.serial = ++c->serial;
    int rc = dext_ipc_send(c->fd, &msg);
    dext_msg_clear(&msg);
    if (rc == -ECONNRESET || rc == -EPIPE) {
        c->dead = true;
        rc = -ECONNRESET;
    }
    return rc;
}

int dext_client_call(DextConnection *c, uint32_t selector, const uint64_t *in, uint32_t nin,
                     const void *sin, size_t sin_len, uint64_t *out, uint32_t *nout, void *sout,
                     size_t *sout_len)
{
    return call(c, selector, 0, in, nin, sin, sin_len, out, nout, sout, sout_len);
}

int dext_client_call_async(DextConnection *c, uint32_t selector, uint64_t ref,
                           const uint64_t *in, uint32_t nin, const void *sin, size_t sin_len,
                           uint64_t *out, uint32_t *nout, void *sout, size_t *sout_len)
{
    if (!ref) {
        return -EINVAL;
    }
    return call(c, selector, ref, in, nin, sin, sin_len, out, nout, sout, sout_len);
}

int dext_client_wait_async(DextConnection *c, int timeout_ms, uint64_t *ref, int *status,
                           uint64_t *data, uint32_t *n)
{
    Async *a = g_queue_pop_head(&c->asyncs);
    uint32_t cap = n ? *n : 0;
    if (!a) {
        if (c->dead) {
            return -ECONNRESET;
        }
        gint64 end = g_get_monotonic_time() + (gint64)MAX(timeout_ms, 0) * 1000;
        for (;;) {
            DextMsg m;
            int left = (int)((end - g_get_monotonic_time()) / 1000);
            int rc = dext_ipc_recv(c->fd, DEXT_CH_UCEV, &m, MAX(left, 0), NULL);
            if (rc == -ECONNRESET || rc == -EPIPE) {
                c->dead = true;
                return -ECONNRESET;
            }
            if (rc < 0) {
                return rc;
            }
            if (m.type != DEXT_MSG_UC_ASYNC || (m.flags & DEXT_MSG_F_REPLY)) {
                dext_msg_clear(&m);
                continue;
            }
            a = g_new0(Async, 1);
            GVariant *d;
            guint64 r;
            g_variant_get(m.body, "(ti@at)", &r, &a->status, &d);
            a->ref = r;
            gsize k;
            const uint64_t *p = g_variant_get_fixed_array(d, &k, sizeof(uint64_t));
            a->n = MIN(k, G_N_ELEMENTS(a->data));
            if (a->n) { /* an empty array may be NULL */
                memcpy(a->data, p, a->n * sizeof(uint64_t));
            }
            g_variant_unref(d);
            dext_msg_clear(&m);
            break;
        }
    }
    if (ref) {
        *ref = a->ref;
    }
    if (status) {
        *status = a->status;
    }
    if (n) {
        *n = MIN(cap, a->n);
        if (data) {
            memcpy(data, a->data, *n * sizeof(uint64_t));
        }
    }
    g_free(a);
    return 0;
}

int dext_client_map_memory(DextConnection *c, uint32_t type, uint32_t flags, void **addr,
                           uint64_t *size)
{
    DextMsg r;
    if (!c || !addr || !size || (flags & ~DEXT_CLIENT_MAP_READONLY)) {
        return -EINVAL;
    }
    int rc = uc_call(c, DEXT_MSG_UC_MEMORY, g_variant_new("(uu)", type, flags), &r);
    if (rc < 0) {
        return rc;
    }
    guint64 sz, off;
    g_variant_get(r.body, "(tt)", &sz, &off);
    int fd = dext_msg_take_fd(&r, 0);
    dext_msg_clear(&r);
    /* A read-only fd from the driver cannot be mapped writable: try
     * writable only when asked and allowed. */
    int prot = PROT_READ | ((flags & DEXT_CLIENT_MAP_READONLY) ? 0 : PROT_WRITE);
    if (off & 4095) {
        close(fd);
        return -EPROTO;
    }
    void *p = mmap(NULL, sz, prot, MAP_SHARED, fd, (off_t)off);
    if (p == MAP_FAILED && (prot & PROT_WRITE) && errno == EACCES) {
        rc = -EACCES; /* the driver shared it read-only */
    } else if (p == MAP_FAILED) {
        rc = -errno;
    } else {
        *addr = p;
        *size = sz;
    }
    close(fd);
    return rc;
}

int dext_daemon_registry(const char *socket_path, int json, char **out)
{
    DextMsg r;
    int rc = daemon_call(socket_path, DEXT_MSG_REGISTRY, g_variant_new("(b)", json != 0), &r);
    if (rc < 0) {
        return rc;
    }
    g_variant_get(r.body, "(s)", out);
    dext_msg_clear(&r);
    return 0;
}

int dext_daemon_services(const char *socket_path, char **out)
{
    DextMsg r;
    int rc = daemon_call(socket_path, DEXT_MSG_SERVICES, NULL, &r);
    if (rc < 0) {
        return rc;
    }
    GString *s = g_string_new(NULL);
    GVariantIter *it;
    guint64 id;
    const char *cls, *srv, *state;
    gint64 pid;
    guint32 launches, starts;
    g_variant_get(r.body, "(a(tsssxuu))", &it);
    while (g_variant_iter_next(it, "(t&s&s&sxuu)", &id, &cls, &srv, &state, &pid, &launches,
                               &starts)) {
        g_string_append_printf(s, "%" G_GUINT64_FORMAT " %s %s %s %" G_GINT64_FORMAT " %u %u\n",
                               id, cls, srv, state, pid, launches, starts);
    }
    g_variant_iter_free(it);
    dext_msg_clear(&r);
    *out = g_string_free(s, FALSE);
    return 0;
}

int dext_daemon_service_ctl(const char *socket_path, uint64_t service, const char *op)
{
    DextMsg r;
    if (!op) {
        return -EINVAL;
    }
    int rc = daemon_call(socket_path, DEXT_MSG_SERVICE_CTL,
                         g_variant_new("(ts)", (guint64)service, op), &r);
    if (rc == 0) {
        dext_msg_clear(&r);
    }
    return rc;
}

int dext_daemon_list(const char *socket_path, char **out)
{
    DextMsg r;
    int rc = daemon_call(socket_path, DEXT_MSG_LIST, NULL, &r);
    if (rc < 0) {
        return rc;
    }
    GString *s = g_string_new(NULL);
    GVariantIter *it;
    guint64 dev_id, svc_id;
    const char *dev, *cls, *srv, *state;
    guint16 ven, did;
    guint32 class_code, launches, starts;
    gint64 pid;
    g_variant_get(r.body, "(a(tsqqutsssxuu))", &it);
    while (g_variant_iter_next(it, "(t&sqqut&s&s&sxuu)", &dev_id, &dev, &ven, &did, &class_code,
                               &svc_id, &cls, &srv, &state, &pid, &launches, &starts)) {
        char sid[24];
        g_snprintf(sid, sizeof(sid), "%" G_GUINT64_FORMAT, svc_id);
        g_string_append_printf(s, "%" G_GUINT64_FORMAT " %s %04x:%04x %06x %s %s %s %s %"
                               G_GINT64_FORMAT " %u %u\n", dev_id, dev, ven, did, class_code,
                               svc_id ? sid : "-", *cls ? cls : "-", *srv ? srv : "-", state,
                               pid, launches, starts);
    }
    g_variant_iter_free(it);
    dext_msg_clear(&r);
    *out = g_string_free(s, FALSE);
    return 0;
}

int dext_daemon_log(const char *socket_path, uint64_t since, uint64_t *next, char **out)
{
    DextMsg r;
    int rc = daemon_call(socket_path, DEXT_MSG_LOG, g_variant_new("(tu)", (guint64)since, 1000u),
                         &r);
    if (rc < 0) {
        return rc;
    }
    GString *s = g_string_new(NULL);
    GVariantIter *it;
    guint64 nx, seq;
    gint64 pid;
    const char *srv, *line;
    g_variant_get(r.body, "(ta(txss))", &nx, &it);
    while (g_variant_iter_next(it, "(tx&s&s)", &seq, &pid, &srv, &line)) {
        g_string_append_printf(s, "%s[%" G_GINT64_FORMAT "]: %s\n", srv, pid, line);
    }
    g_variant_iter_free(it);
    dext_msg_clear(&r);
    *next = nx;
    *out = g_string_free(s, FALSE);
    return 0;
}

int dext_daemon_match_explain(const char *socket_path, char **out)
{
    DextMsg r;
    int rc = daemon_call(socket_path, DEXT_MSG_MATCH_EXPLAIN, NULL, &r);
    if (rc < 0) {
        return rc;
    }
    GString *s = g_string_new(NULL);
    GVariantIter *it;
    const char *dev, *pers, *cls, *srv, *why;
    gboolean won;
    g_variant_get(r.body, "(a(ssssbs))", &it);
    while (g_variant_iter_next(it, "(&s&s&s&sb&s)", &dev, &pers, &cls, &srv, &won, &why)) {
        g_string_append_printf(s, "%s\t%s\t%s\t%s\t%s\n", dev, pers, srv, won ? "matched" : "no",
                               why);
    }
    g_variant_iter_free(it);
    dext_msg_clear(&r);
    *out = g_string_free(s, FALSE);
    return 0;
}

int dext_daemon_bundle_ctl(const char *socket_path, const char *op, const char *arg,
                           char **out)
{
    DextMsg r;
    char *why = NULL;
    if (!op || !arg) {
        return -EINVAL;
    }
    int rc = daemon_call_why(socket_path, DEXT_MSG_BUNDLE_CTL, g_variant_new("(ss)", op, arg),
                             &r, &why);
    if (rc < 0) {
        *out = why ? why : g_strdup(g_strerror(-rc));
        return rc;
    }
    g_free(why);
    g_variant_get(r.body, "(s)", out);
    dext_msg_clear(&r);
    return 0;
}
