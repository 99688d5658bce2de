/*
 * qtest backend: drives the dextlab QEMU fork over the qtest line protocol.
 *
 * Why not libqtest: it g_asserts on every unexpected reply, on QEMU's death
 * and on timeouts, i.e. it aborts the process.  A daemon must survive all
 * of these and report an error, so this is a small robust client of the
 * same protocol: a reader thread demultiplexes replies (matched to commands
 * in FIFO order, as qtest answers strictly in order) from asynchronous IRQ
 * lines, which it turns into eventfd signals on the spot.  Writes are
 * posted (sent, reply consumed by the reader), reads wait with a deadline,
 * and EOF on either socket marks the machine dead so that every waiter
 * returns at once.
 *
 * Guest RAM is a memfd handed to QEMU as /proc/self/fd/N for a shared
 * memory-backend-file: nothing is ever created in /dev/shm, so no crash of
 * either process can leak a file there, and the same fd is what drivers
 * get over SCM_RIGHTS.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-glib/json-glib.h>

#include "cpu-list.h"
#include "platform-backend.h"
#include "qtest-proto.h"

#define MSI_ADDR 0xfee00000ull
#define QEMU_RAM_FD 3          /* fd number of the RAM memfd in QEMU */
#define MAX_GSI 256
#define MAX_QMP_EVENTS 1024

typedef struct QtReq {
    bool done;
    bool abandoned;            /* waiter timed out: reader frees it */
    int err;
    char *reply;               /* text after "OK " */
} QtReq;

/* Marker in the pending FIFO for a posted command (nobody waits). */
static QtReq posted_marker;
#define QT_POSTED (&posted_marker)
/* A posted command whose failure is expected and ignored (a clean-up that
 * may find nothing to clean). */
static QtReq quiet_marker;
#define QT_QUIET (&quiet_marker)

typedef struct IrqBinding {
    int fn_idx;
    unsigned vector;
    DextIrqKind kind;
    int efd;                   /* dup of the caller's eventfd */
    uint32_t data;             /* MSI data; gsi for INTx */
    bool direct;               /* QEMU signals efd itself (msi_eventfd) */
} IrqBinding;

typedef struct QtChannel {
    unsigned id;               /* QEMU's channel ID */
    int fn_idx;
} QtChannel;

typedef struct QtestPlatform {
    DextPlatform base;

    pid_t pid;                 /* QEMU we started, or 0 when attached */
    int qt_fd, qmp_fd, wake_fd;
    int stderr_fd;             /* memfd with QEMU's stderr (ours) */
    GThread *reader;
    GThread *reader_self;      /* for -EDEADLK detection */
    bool stopping;

    GMutex send_lock;          /* wire order == FIFO order */
    GMutex lock;               /* everything below */
    GCond cond;
    GQueue pending;            /* QtReq*, QT_POSTED or QT_QUIET, in wire
                                * order */
    unsigned posted;           /* posted commands not yet answered */
    int deferred_err;
    char *deferred_msg;
    bool dead;
    char *death;

    bool has_msi;
    uint32_t next_id;          /* MSI-X data counter */
    unsigned next_block;       /* MSI data block cursor */
    GHashTable *msi_routes;    /* data -> IrqBinding* */
    GPtrArray *bindings;       /* IrqBinding*, owned */
    bool no_msi_eventfd;       /* QEMU lacks msi_eventfd: relay only */
    uint64_t direct_retired;   /* signals of direct bindings since gone */
    uint64_t direct_last_ns;   /* latest signal among those */
    bool no_mmio_channel;      /* QEMU lacks mmio_channel */
    GArray *channels;          /* QtChannel: open MMIO channels */
    int gsi_level[MAX_GSI];
    DextIrqStats stats;
    DextPlatformEventFn ev_fn;
    void *ev_opaque;

    /* Virtual time following host time (dext_platform_clock_follow). */
    GThread *clock_thread;
    GMutex clock_lock;
    GCond clock_cond;
    bool clock_stop;

    GMutex qmp_lock;           /* one QMP command in flight */
    bool qmp_waiting;
    char *qmp_reply;           /* whole reply object text */
    GQueue qmp_events;         /* char* event texts */
} QtestPlatform;

static QtestPlatform *QP(DextPlatform *p)
{
    return (QtestPlatform *)p;
}

/* ----------------------------------------------------------- death */

/* Called with q->lock held. */
static void mark_dead_locked(QtestPlatform *q, const char *why)
{
    QtReq *r;

    if (q->dead) {
        return;
    }
    q->dead = true;
    q->death = g_strdup(why);
    while ((r = g_queue_pop_head(&q->pending))) {
        if (r == QT_POSTED || r == QT_QUIET) {
            continue;
        }
        r->err = -EPIPE;
        r->done = true;
        if (r->abandoned) {
            g_free(r);
        }
    }
    q->posted = 0;
    if (!q->deferred_err) {
        q->deferred_err = -EPIPE;
    }
    g_cond_broadcast(&q->cond);
}

static int dead_error(QtestPlatform *q)
{
    return dext_platform_set_error(&q->base, -ESHUTDOWN, "machine is gone: "
                                   "%s", q->death ? q->death : "?");
}

/* ------------------------------------------------------------ sending */

/* Send @len bytes; @fd >= 0 travels (SCM_RIGHTS) with the first bytes
 * that go out, i.e. with the command line that starts at @buf. */
static int send_all_fd(QtestPlatform *q, const char *buf, size_t len, int fd)
{
    gint64 end = g_get_monotonic_time() +
                 (gint64)q->base.timeout_ms * 1000;

    while (len) {
        ssize_t n;

        if (fd >= 0) {
            union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
            } u;
            struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
            struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
                                 .msg_control = u.buf,
                                 .msg_controllen = sizeof(u.buf) };
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

            memset(&u, 0, sizeof(u));
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof(int));
            n = sendmsg(q->qt_fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                fd = -1;                    /* the fd went with byte 0 */
            }
        } else {
            n = send(q->qt_fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        }

        if (n > 0) {
            buf += n;
            len -= n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = { .fd = q->qt_fd, .events = POLLOUT };
            gint64 left = (end - g_get_monotonic_time()) / 1000;

            if (left <= 0 || poll(&pfd, 1, left) == 0) {
                return -ETIMEDOUT;
            }
            continue;
        }
        return -EPIPE;
    }
    return 0;
}

static int send_all(QtestPlatform *q, const char *buf, size_t len)
{
    return send_all_fd(q, buf, len, -1);
}

/*
 * Queue and send one command line.  @req NULL posts it.  On a send failure
 * the connection is unusable (a partial line may be on the wire): the
 * machine is marked dead.
 */
static int qt_send_fd(QtestPlatform *q, const char *line, size_t len,
                      QtReq *req, int fd)
{
    int r;

    g_mutex_lock(&q->send_lock);
    g_mutex_lock(&q->lock);
    if (q->dead) {
        g_mutex_unlock(&q->lock);
        g_mutex_unlock(&q->send_lock);
        return dead_error(q);
    }
    g_queue_push_tail(&q->pending, req ? req : QT_POSTED);
    if (!req || req == QT_QUIET) {
        q->posted++;
    }
    g_mutex_unlock(&q->lock);
    r = send_all_fd(q, line, len, fd);
    if (r < 0) {
        g_mutex_lock(&q->lock);
        mark_dead_locked(q, r == -ETIMEDOUT ? "qtest socket stalled"
                                            : "qtest socket closed");
        g_mutex_unlock(&q->lock);
    }
    g_mutex_unlock(&q->send_lock);
    return r < 0 ? dext_platform_set_error(&q->base, r == -ETIMEDOUT ?
                                           -ETIMEDOUT : -EPIPE,
                                           "qtest send: %s", g_strerror(-r))
                 : 0;
}

static int qt_send(QtestPlatform *q, const char *line, size_t len, QtReq *req)
{
    return qt_send_fd(q, line, len, req, -1);
}

static int check_thread(QtestPlatform *q)
{
    if (g_thread_self() == q->reader_self) {
        return dext_platform_set_error(&q->base, -EDEADLK, "blocking platform "
                                       "call from the event callback");
    }
    return 0;
}

/* Send a command and wait for its reply.  *reply (optional) gets the text
 * after "OK". */
static int qt_cmd_fd(QtestPlatform *q, const char *line, size_t len,
                     char **reply, int fd)
{
    QtReq *req;
    gint64 end;
    int r;

    if ((r = check_thread(q)) < 0) {
        return r;
    }
    req = g_new0(QtReq, 1);
    r = qt_send_fd(q, line, len, req, fd);
    if (r < 0) {
        g_mutex_lock(&q->lock);
        /* dead before queueing: req is ours; after: mark_dead completed it */
        if (!g_queue_find(&q->pending, req)) {
            g_mutex_unlock(&q->lock);
            g_free(req);
        } else {
            req->abandoned = true;
            g_mutex_unlock(&q->lock);
        }
        return r;
    }
    end = g_get_monotonic_time() + (gint64)q->base.timeout_ms * 1000;
    g_mutex_lock(&q->lock);
    while (!req->done) {
        if (!g_cond_wait_until(&q->cond, &q->lock, end) && !req->done) {
            req->abandoned = true;
            g_mutex_unlock(&q->lock);
            return dext_platform_set_error(&q->base, -ETIMEDOUT, "qtest: no "
                                           "reply to '%.*s' within %u ms",
                                           (int)len - 1, line,
                                           q->base.timeout_ms);
        }
    }
    /* a failed posted write before this command is reported here */
    r = req->err;
    if (r == 0 && q->deferred_err) {
        r = dext_platform_set_error(&q->base, q->deferred_err, "posted write "
                                    "failed: %s", q->deferred_msg ?
                                    q->deferred_msg : "?");
        q->deferred_err = 0;
        g_clear_pointer(&q->deferred_msg, g_free);
    } else if (r == -EPIPE) {
        dext_platform_set_error(&q->base, r, "machine died during '%.*s': %s",
                                (int)len - 1, line, q->death ? q->death : "?");
    } else if (r < 0) {
        dext_platform_set_error(&q->base, r, "qtest '%.*s' failed: %s",
                                (int)len - 1, line, req->reply ? req->reply
                                                               : "");
    }
    g_mutex_unlock(&q->lock);
    if (r == 0 && reply) {
        *reply = req->reply;
        req->reply = NULL;
    }
    g_free(req->reply);
    g_free(req);
    return r;
}

static int qt_cmd(QtestPlatform *q, const char *line, size_t len,
                  char **reply)
{
    return qt_cmd_fd(q, line, len, reply, -1);
}

static int qt_cmd_u64(QtestPlatform *q, const char *line, size_t len,
                      uint64_t *val)
{
    char *rep = NULL;
    int r = qt_cmd(q, line, len, &rep);

    if (r == 0 && qt_parse_u64(rep, val) < 0) {
        r = dext_platform_set_error(&q->base, -EPROTO, "qtest: bad reply "
                                    "'%s'", rep);
    }
    g_free(rep);
    return r;
}

/* -------------------------------------------------------- reader */

static void signal_efd(int efd)
{
    uint64_t one = 1;

    /* eventfd write only fails on counter overflow: drop, it is counted */
    if (write(efd, &one, sizeof(one)) < 0) {
        /* nothing useful to do */
    }
}

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void handle_irq_line(QtestPlatform *q, const QtLine *l)
{
    DextPlatformEventFn fn = NULL;
    void *op = NULL;
    bool unclaimed = false;

    g_mutex_lock(&q->lock);
    if (l->kind == QT_LINE_IRQ_MSI) {
        IrqBinding *b = NULL;

        q->stats.msi_received++;
        q->stats.last_msi_ns = now_ns();
        if (l->a == MSI_ADDR) {
            b = g_hash_table_lookup(q->msi_routes,
                                    GUINT_TO_POINTER(l->b));
        }
        if (b) {
            signal_efd(b->efd);
        } else {
            q->stats.msi_unclaimed++;
            unclaimed = true;
            fn = q->ev_fn;
            op = q->ev_opaque;
        }
    } else if (l->a < MAX_GSI) {
        int lvl = l->kind == QT_LINE_IRQ_RAISE;

        if (lvl && !q->gsi_level[l->a]) {
            q->stats.intx_edges++;
            for (guint i = 0; i < q->bindings->len; i++) {
                IrqBinding *b = g_ptr_array_index(q->bindings, i);

                if (b->kind == DEXT_IRQ_INTX && b->data == l->a) {
                    signal_efd(b->efd);
                }
            }
        }
        q->gsi_level[l->a] = lvl;
    }
    g_mutex_unlock(&q->lock);
    if (unclaimed && fn) {
        fn(op, DEXT_EVENT_MSI_UNCLAIMED, l->a, l->b, NULL);
    }
}

static void handle_qt_line(QtestPlatform *q, char *line)
{
    QtLine l;
    QtReq *r;

    qt_parse_line(line, &l);
    if (qt_line_is_async(l.kind)) {
        handle_irq_line(q, &l);
        return;
    }
    g_mutex_lock(&q->lock);
    r = g_queue_pop_head(&q->pending);
    if (!r) {
        dext_platform_log(&q->base, G_LOG_LEVEL_WARNING, "qtest: unexpected "
                          "line '%s'", line);
    } else if (r == QT_POSTED || r == QT_QUIET) {
        if (r == QT_POSTED && l.kind != QT_LINE_OK && !q->deferred_err) {
            q->deferred_err = -EIO;
            q->deferred_msg = g_strdup(line);
        }
        if (--q->posted == 0) {
            g_cond_broadcast(&q->cond);
        }
    } else if (r->abandoned) {
        g_free(r);
    } else {
        r->err = l.kind == QT_LINE_OK ? 0 : -EIO;
        r->reply = g_strdup(l.kind == QT_LINE_BAD ? line : l.rest);
        r->done = true;
        g_cond_broadcast(&q->cond);
    }
    g_mutex_unlock(&q->lock);
}

static void handle_qmp_line(QtestPlatform *q, const char *line)
{
    JsonParser *jp = json_parser_new();
    JsonObject *o;
    DextPlatformEventFn fn = NULL;
    void *op = NULL;

    if (!json_parser_load_from_data(jp, line, -1, NULL) ||
        !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(jp))) {
        dext_platform_log(&q->base, G_LOG_LEVEL_WARNING, "QMP: bad line '%s'",
                          line);
        g_object_unref(jp);
        return;
    }
    o = json_node_get_object(json_parser_get_root(jp));
    g_mutex_lock(&q->lock);
    if (json_object_has_member(o, "event")) {
        g_queue_push_tail(&q->qmp_events, g_strdup(line));
        while (q->qmp_events.length > MAX_QMP_EVENTS) {
            g_free(g_queue_pop_head(&q->qmp_events));
        }
        fn = q->ev_fn;
        op = q->ev_opaque;
        g_cond_broadcast(&q->cond);
    } else if (q->qmp_waiting && !q->qmp_reply) {
        q->qmp_reply = g_strdup(line);
        g_cond_broadcast(&q->cond);
    }
    g_mutex_unlock(&q->lock);
    if (fn) {
        fn(op, DEXT_EVENT_QMP, 0, 0, line);
    }
    g_object_unref(jp);
}

/* Split complete lines out of @buf and hand them to @fn. */
static void drain_lines(QtestPlatform *q, GString *buf,
                        void (*fn)(QtestPlatform *, char *))
{
    char *nl;

    while ((nl = memchr(buf->str, '\n', buf->len))) {
        size_t n = nl - buf->str;

        *nl = '\0';
        if (n && buf->str[n - 1] == '\r') {
            buf->str[n - 1] = '\0';
        }
        fn(q, buf->str);
        g_string_erase(buf, 0, n + 1);
    }
}

static void qmp_line_cb(QtestPlatform *q, char *line)
{
    if (*line) {
        handle_qmp_line(q, line);
    }
}

static gpointer reader_main(gpointer opaque)
{
    QtestPlatform *q = opaque;
    GString *qt = g_string_sized_new(4096), *qm = g_string_sized_new(4096);
    char buf[65536];
    const char *why = NULL;
    DextPlatformEventFn fn;
    void *op;

    q->reader_self = g_thread_self();
    while (!why) {
        struct pollfd pfd[3] = {
            { .fd = q->qt_fd, .events = POLLIN },
            { .fd = q->qmp_fd, .events = POLLIN },
            { .fd = q->wake_fd, .events = POLLIN },
        };

        if (poll(pfd, 3, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            why = "poll failed";
            break;
        }
        if (pfd[2].revents) {
            break;                       /* destroy */
        }
        if (pfd[0].revents) {
            ssize_t n = recv(q->qt_fd, buf, sizeof(buf), MSG_DONTWAIT);

            if (n > 0) {
                g_string_append_len(qt, buf, n);
                drain_lines(q, qt, handle_qt_line);
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                why = "qtest socket closed (QEMU exited?)";
            }
        }
        if (pfd[1].revents && !why) {
            ssize_t n = recv(q->qmp_fd, buf, sizeof(buf), MSG_DONTWAIT);

            if (n > 0) {
                g_string_append_len(qm, buf, n);
                drain_lines(q, qm, qmp_line_cb);
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                why = "QMP socket closed (QEMU exited?)";
            }
        }
    }
    g_string_free(qt, TRUE);
    g_string_free(qm, TRUE);
    if (why) {
        g_mutex_lock(&q->lock);
        mark_dead_locked(q, why);
        fn = q->ev_fn;
        op = q->ev_opaque;
        g_mutex_unlock(&q->lock);
        dext_platform_log(&q->base, G_LOG_LEVEL_MESSAGE, "machine died: %s",
                          why);
        if (fn) {
            fn(op, DEXT_EVENT_DIED, 0, 0, NULL);
        }
    }
    return NULL;
}

/* --------------------------------------------------------- access ops */

static bool qt_alive(DextPlatform *p)
{
    QtestPlatform *q = QP(p);
    bool a;

    g_mutex_lock(&q->lock);
    a = !q->dead;
    g_mutex_unlock(&q->lock);
    return a;
}

static int qt_mmio_read(DextPlatform *p, uint64_t addr, unsigned width,
                        uint64_t *val)
{
    char line[64];
    int n = qt_fmt_mem_read(line, sizeof(line), width, addr);

    if (n < 0) {
        return dext_platform_set_error(p, n, "mmio read width %u", width);
    }
    return qt_cmd_u64(QP(p), line, n, val);
}

static int qt_mmio_write(DextPlatform *p, uint64_t addr, unsigned width,
                         uint64_t val)
{
    char line[80];
    int n = qt_fmt_mem_write(line, sizeof(line), width, addr, val);

    if (n < 0) {
        return dext_platform_set_error(p, n, "mmio write width %u", width);
    }
    return qt_send(QP(p), line, n, NULL);
}

static int qt_port_read(DextPlatform *p, uint16_t port, unsigned width,
                        uint32_t *val)
{
    char line[32];
    int n = qt_fmt_port_read(line, sizeof(line), width, port);
    uint64_t v = 0;
    int r;

    if (n < 0) {
        return dext_platform_set_error(p, n, "port read width %u", width);
    }
    r = qt_cmd_u64(QP(p), line, n, &v);
    *val = v;
    return r;
}

static int qt_port_write(DextPlatform *p, uint16_t port, unsigned width,
                         uint32_t val)
{
    char line[48];
    int n = qt_fmt_port_write(line, sizeof(line), width, port, val);

    if (n < 0) {
        return dext_platform_set_error(p, n, "port write width %u", width);
    }
    return qt_send(QP(p), line, n, NULL);
}

static int qt_flush(DextPlatform *p)
{
    QtestPlatform *q = QP(p);
    gint64 end = g_get_monotonic_time() + (gint64)p->timeout_ms * 1000;
    int r = 0;

    if ((r = check_thread(q)) < 0) {
        return r;
    }
    g_mutex_lock(&q->lock);
    while (q->posted && !q->dead) {
        if (!g_cond_wait_until(&q->cond, &q->lock, end) && q->posted) {
            g_mutex_unlock(&q->lock);
            return dext_platform_set_error(p, -ETIMEDOUT, "flush: %u posted "
                                           "writes unanswered after %u ms",
                                           q->posted, p->timeout_ms);
        }
    }
    if (q->deferred_err) {
        r = dext_platform_set_error(p, q->deferred_err, "posted write failed:"
                                    " %s", q->deferred_msg ? q->deferred_msg
                                    : (q->death ? q->death : "?"));
        if (!q->dead) {
            q->deferred_err = 0;
            g_clear_pointer(&q->deferred_msg, g_free);
        }
    } else if (q->dead) {
        r = -ESHUTDOWN;
        dead_error(q);
    }
    g_mutex_unlock(&q->lock);
    return r;
}

/*
 * Config space.  q35: ECAM (MMCONFIG) at 0xb0000000, enabled at start-up
 * through the MCH's PCIEXBAR: one qtest command per access (atomic with no
 * extra locking) and the 4 KiB extended space.  pc: 0xcf8/0xcfc; the
 * address/data pair is sent back to back under send_lock, so no other
 * command can slip in between.
 */
#define ECAM_BASE 0xb0000000ull

static uint64_t ecam_addr(DextPciAddr a, unsigned off)
{
    return ECAM_BASE | ((uint64_t)a.bus << 20) | ((uint64_t)a.dev << 15) |
           ((uint64_t)a.fn << 12) | off;
}

static int cf8_pair(QtestPlatform *q, DextPciAddr a, unsigned off,
                    unsigned width, bool write, uint32_t val, uint32_t *out)
{
    uint32_t cf8 = 0x80000000u | (a.bus << 16) | (a.dev << 11) |
                   (a.fn << 8) | (off & 0xfc);
    uint16_t port = 0xcfc + (off & 3);
    char l1[48], l2[48];
    int n1 = qt_fmt_port_write(l1, sizeof(l1), 4, 0xcf8, cf8);
    int n2 = write ? qt_fmt_port_write(l2, sizeof(l2), width, port, val)
                   : qt_fmt_port_read(l2, sizeof(l2), width, port);
    char *both;
    uint64_t v = 0;
    int r;

    if (n1 < 0 || n2 < 0) {
        return -EINVAL;
    }
    /* One send of both lines keeps them adjacent on the wire; the first
     * reply is consumed by the reader as a posted write. */
    both = g_strconcat(l1, l2, NULL);
    g_mutex_lock(&q->send_lock);
    g_mutex_lock(&q->lock);
    if (q->dead) {
        g_mutex_unlock(&q->lock);
        g_mutex_unlock(&q->send_lock);
        g_free(both);
        return dead_error(q);
    }
    g_mutex_unlock(&q->lock);
    /* The pair is sent as two commands while holding send_lock, so it is
     * contiguous in the FIFO and on the wire.  send_lock is recursive-free:
     * use the lower-level path. */
    {
        QtReq *req = g_new0(QtReq, 1);
        gint64 end;

        g_mutex_lock(&q->lock);
        g_queue_push_tail(&q->pending, QT_POSTED);
        q->posted++;
        g_queue_push_tail(&q->pending, req);
        g_mutex_unlock(&q->lock);
        r = send_all(q, both, n1 + n2);
        g_mutex_unlock(&q->send_lock);
        g_free(both);
        g_mutex_lock(&q->lock);
        if (r < 0) {
            mark_dead_locked(q, "qtest socket closed");
        }
        end = g_get_monotonic_time() + (gint64)q->base.timeout_ms * 1000;
        while (!req->done) {
            if (!g_cond_wait_until(&q->cond, &q->lock, end) && !req->done) {
                req->abandoned = true;
                g_mutex_unlock(&q->lock);
                return dext_platform_set_error(&q->base, -ETIMEDOUT,
                                               "config access timed out");
            }
        }
        r = req->err;
        if (r == 0 && !write && qt_parse_u64(req->reply, &v) < 0) {
            r = -EPROTO;
        }
        if (r == -EPIPE) {
            dext_platform_set_error(&q->base, r, "machine died: %s",
                                    q->death ? q->death : "?");
        } else if (r < 0) {
            dext_platform_set_error(&q->base, r, "config access failed: %s",
                                    req->reply ? req->reply : "");
        }
        g_mutex_unlock(&q->lock);
        g_free(req->reply);
        g_free(req);
    }
    if (out) {
        *out = v;
    }
    return r;
}

static int qt_cfg_read(DextPlatform *p, DextPciAddr a, unsigned off,
                       unsigned width, uint32_t *val)
{
    QtestPlatform *q = QP(p);
    int r;

    if ((r = check_thread(q)) < 0) {
        return r;
    }
    if (!p->pc_machine) {
        uint64_t v = 0;

        r = qt_mmio_read(p, ecam_addr(a, off), width, &v);
        *val = v;
        return r;
    }
    return cf8_pair(q, a, off, width, false, 0, val);
}

static int qt_cfg_write(DextPlatform *p, DextPciAddr a, unsigned off,
                        unsigned width, uint32_t val)
{
    QtestPlatform *q = QP(p);
    char line[80];
    int n, r;

    if ((r = check_thread(q)) < 0) {
        return r;
    }
    if (p->pc_machine) {
        return cf8_pair(q, a, off, width, true, val, NULL);
    }
    /* non-posted: wait for the reply */
    n = qt_fmt_mem_write(line, sizeof(line), width, ecam_addr(a, off), val);
    if (n < 0) {
        return -EINVAL;
    }
    return qt_cmd(q, line, n, NULL);
}

static int qt_mem_read(DextPlatform *p, uint64_t gpa, void *buf, size_t len)
{
    char line[64], *rep = NULL;
    int n = snprintf(line, sizeof(line), "b64read 0x%" PRIx64 " 0x%zx\n",
                     gpa, len);
    int r;

    if (len == 0) {
        return 0;
    }
    r = qt_cmd(QP(p), line, n, &rep);
    if (r == 0) {
        gsize dl = 0;
        guchar *d = g_base64_decode(rep, &dl);

        if (dl != len) {
            r = dext_platform_set_error(p, -EPROTO, "b64read: %zu bytes, "
                                        "wanted %zu", (size_t)dl, len);
        } else {
            memcpy(buf, d, len);
        }
        g_free(d);
    }
    g_free(rep);
    return r;
}

static int qt_mem_write(DextPlatform *p, uint64_t gpa, const void *buf,
                        size_t len)
{
    char *enc, *line;
    int r;

    if (len == 0) {
        return 0;
    }
    enc = g_base64_encode(buf, len);
    line = g_strdup_printf("b64write 0x%" PRIx64 " 0x%zx %s\n", gpa, len,
                           enc);
    r = qt_cmd(QP(p), line, strlen(line), NULL);
    g_free(enc);
    g_free(line);
    return r;
}

/* --------------------------------------------------------- interrupts */

static bool qt_has_msi(DextPlatform *p)
{
    return QP(p)->has_msi;
}

static IrqBinding *find_binding(QtestPlatform *q, int fn_idx, unsigned v)
{
    for (guint i = 0; i < q->bindings->len; i++) {
        IrqBinding *b = g_ptr_array_index(q->bindings, i);

        if (b->fn_idx == fn_idx && b->vector == v) {
            return b;
        }
    }
    return NULL;
}

static unsigned count_kind(QtestPlatform *q, int fn_idx, DextIrqKind *kind)
{
    unsigned n = 0;

    for (guint i = 0; i < q->bindings->len; i++) {
        IrqBinding *b = g_ptr_array_index(q->bindings, i);

        if (b->fn_idx == fn_idx) {
            *kind = b->kind;
            n++;
        }
    }
    return n;
}

static void binding_free(gpointer data)
{
    IrqBinding *b = data;

    close(b->efd);
    g_free(b);
}

/*
 * MSI data values are the routing keys, unique among live bindings and
 * not tied to a function's index (which moves when functions go away).
 * MSI-X data is 32 bits: a counter with the top bit set.  MSI data is 16
 * bits and the device ORs the vector into the low bits: one 32-aligned
 * block per function.  Called with q->lock held; UINT32_MAX if exhausted.
 */
static uint32_t alloc_data(QtestPlatform *q, DextIrqKind kind, int fn_idx,
                           unsigned vector)
{
    if (kind == DEXT_IRQ_MSIX) {
        uint32_t d;

        do {
            d = 0x80000000u | (q->next_id++ & 0x7fffffffu);
        } while (g_hash_table_contains(q->msi_routes, GUINT_TO_POINTER(d)));
        return d;
    }
    for (guint i = 0; i < q->bindings->len; i++) {
        IrqBinding *b = g_ptr_array_index(q->bindings, i);

        if (b->fn_idx == fn_idx && b->kind == DEXT_IRQ_MSI) {
            return (b->data & ~31u) | vector;
        }
    }
    for (unsigned n = 0; n < 2047; n++) {
        uint32_t base = ((q->next_block + n) % 2047 + 1) << 5;
        bool used = false;

        for (guint i = 0; i < q->bindings->len && !used; i++) {
            IrqBinding *b = g_ptr_array_index(q->bindings, i);

            used = b->kind == DEXT_IRQ_MSI && (b->data & ~31u) == base;
        }
        if (!used) {
            q->next_block += n + 1;
            return base | vector;
        }
    }
    return UINT32_MAX;
}

/* ------------------------------------------------ direct MSI eventfds */

/*
 * The fork's msi_eventfd command makes QEMU signal a bound vector's eventfd
 * itself: no "IRQ msi" line, no reader thread, no daemon in the path.  The
 * binding stays in msi_routes all the same, so the relay takes over
 * wherever the direct binding is missing (stock QEMU answers FAIL, the
 * command failed).  QEMU counts the signals per binding; a binding's count
 * is harvested into direct_retired before it goes away.
 */

/* Query QEMU's counters of the direct binding of @data. */
static int direct_query(QtestPlatform *q, uint32_t data, uint64_t *count,
                        uint64_t *last_ns)
{
    char line[48], *rep = NULL, *end = NULL;
    int n = snprintf(line, sizeof(line), "msi_eventfd_stats 0x%x\n", data);
    int r = qt_cmd(q, line, n, &rep);

    if (r == 0) {
        *count = g_ascii_strtoull(rep ? rep : "", &end, 0);
        if (!end || end == rep || *end != ' ') {
            r = dext_platform_set_error(&q->base, -EPROTO, "msi_eventfd_stats:"
                                        " bad reply '%s'", rep ? rep : "");
        } else {
            *last_ns = g_ascii_strtoull(end + 1, NULL, 0);
        }
    }
    g_free(rep);
    return r;
}

/* The direct binding of @data is going: keep its count, then drop it in
 * QEMU.  The clear is posted quietly (nothing to clear is no error), so
 * this also works from the reader thread, where only the count is lost. */
static void direct_retire(QtestPlatform *q, uint32_t data)
{
    uint64_t cnt = 0, last = 0;
    char line[48];
    int n;

    if (g_thread_self() != q->reader_self &&
        direct_query(q, data, &cnt, &last) == 0) {
        g_mutex_lock(&q->lock);
        q->direct_retired += cnt;
        q->direct_last_ns = MAX(q->direct_last_ns, last);
        g_mutex_unlock(&q->lock);
    }
    n = snprintf(line, sizeof(line), "msi_eventfd_clear 0x%x\n", data);
    qt_send(q, line, n, QT_QUIET);
}

/* Bind MSI data @data (already routed to a binding) to its eventfd in
 * QEMU.  Failure is not an error: the reader keeps relaying. */
static void direct_bind(QtestPlatform *q, uint32_t data)
{
    char line[48], *rep = NULL;
    IrqBinding *b;
    int n, efd = -1, r;

    g_mutex_lock(&q->lock);
    b = g_hash_table_lookup(q->msi_routes, GUINT_TO_POINTER(data));
    if (b && !q->no_msi_eventfd) {
        /* our own dup: the binding (and its fd) may go meanwhile */
        efd = fcntl(b->efd, F_DUPFD_CLOEXEC, 0);
    }
    g_mutex_unlock(&q->lock);
    if (efd < 0) {
        return;
    }
    n = snprintf(line, sizeof(line), "msi_eventfd 0x%x\n", data);
    r = qt_cmd_fd(q, line, n, &rep, efd);
    close(efd);
    g_mutex_lock(&q->lock);
    if (r == 0) {
        b = g_hash_table_lookup(q->msi_routes, GUINT_TO_POINTER(data));
        if (b) {
            b->direct = true;
        }
    } else if (r == -EIO) {
        /* "FAIL Unknown command": a fork without patch 0006 */
        q->no_msi_eventfd = true;
    }
    g_mutex_unlock(&q->lock);
    g_free(rep);
    if (r == 0 && !b) {
        direct_retire(q, data);             /* unbound meanwhile */
    }
    /* the probe's failure is not the caller's error */
    dext_platform_set_error(&q->base, 0, "%s", "");
}

static int qt_irq_bind(DextPlatform *p, int fn_idx, DextIrqKind kind,
                       unsigned vector, int eventfd)
{
    QtestPlatform *q = QP(p);
    DextPciFunction f;
    IrqBinding *b, *old;
    DextIrqKind cur = kind;
    int efd, r = 0;

    g_mutex_lock(&p->lock);
    f = p->fns[fn_idx];
    g_mutex_unlock(&p->lock);
    efd = fcntl(eventfd, F_DUPFD_CLOEXEC, 0);
    if (efd < 0) {
        return dext_platform_set_error(p, -errno, "irq_bind: dup eventfd: %s",
                                       g_strerror(errno));
    }
    g_mutex_lock(&q->lock);
    if (count_kind(q, fn_idx, &cur) && cur != kind) {
        g_mutex_unlock(&q->lock);
        close(efd);
        return dext_platform_set_error(p, -EBUSY, "function has bindings of "
                                       "another interrupt kind");
    }
    old = find_binding(q, fn_idx, vector);
    if (old) {
        /* rebind: swap the eventfd, device programming is unchanged */
        bool direct = old->direct;
        uint32_t data = old->data;

        close(old->efd);
        old->efd = efd;
        old->direct = false;
        g_mutex_unlock(&q->lock);
        if (direct) {
            direct_retire(q, data);
        }
        if (kind != DEXT_IRQ_INTX) {
            direct_bind(q, data);
        }
        return 0;
    }
    b = g_new0(IrqBinding, 1);
    b->fn_idx = fn_idx;
    b->vector = vector;
    b->kind = kind;
    b->efd = efd;
    b->data = kind == DEXT_IRQ_INTX ? (uint32_t)f.irq_gsi
                                    : alloc_data(q, kind, fn_idx, vector);
    if (b->data == UINT32_MAX) {
        g_mutex_unlock(&q->lock);
        binding_free(b);
        return dext_platform_set_error(p, -ENOSPC, "no MSI data values left");
    }
    g_ptr_array_add(q->bindings, b);
    if (kind != DEXT_IRQ_INTX) {
        g_hash_table_insert(q->msi_routes, GUINT_TO_POINTER(b->data), b);
    }
    g_mutex_unlock(&q->lock);

    if (kind != DEXT_IRQ_INTX) {
        uint32_t data = b->data;

        /* direct first, so that the first MSI already goes straight */
        direct_bind(q, data);
        r = dext_pci_msi_program(p, &f, kind, vector, MSI_ADDR, data,
                                 true, false);
        if (r < 0) {
            bool direct;

            g_mutex_lock(&q->lock);
            direct = b->direct;
            g_hash_table_remove(q->msi_routes, GUINT_TO_POINTER(data));
            g_ptr_array_remove_fast(q->bindings, b);
            g_mutex_unlock(&q->lock);
            if (direct) {
                direct_retire(q, data);
            }
        }
    }
    return r;
}

static int qt_irq_unbind(DextPlatform *p, int fn_idx, unsigned vector)
{
    QtestPlatform *q = QP(p);
    DextPciFunction f;
    IrqBinding *b;
    DextIrqKind kind, k2;
    uint32_t data;
    bool last, direct;
    int r = 0;

    g_mutex_lock(&p->lock);
    f = p->fns[fn_idx];
    g_mutex_unlock(&p->lock);
    g_mutex_lock(&q->lock);
    b = find_binding(q, fn_idx, vector);
    if (!b) {
        g_mutex_unlock(&q->lock);
        return dext_platform_set_error(p, -ENOENT, "vector %u not bound",
                                       vector);
    }
    kind = b->kind;
    data = b->data;
    direct = b->direct;
    if (kind != DEXT_IRQ_INTX) {
        g_hash_table_remove(q->msi_routes, GUINT_TO_POINTER(b->data));
    }
    g_ptr_array_remove_fast(q->bindings, b);    /* closes the eventfd */
    last = count_kind(q, fn_idx, &k2) == 0;
    g_mutex_unlock(&q->lock);
    if (kind != DEXT_IRQ_INTX) {
        r = dext_pci_msi_program(p, &f, kind, vector, 0, 0, false, last);
    }
    /* after masking: nothing can signal it between harvest and clear */
    if (direct) {
        direct_retire(q, data);
    }
    return r;
}

/* ------------------------------------------------ direct MMIO channel */

/*
 * The fork's mmio_channel command: QEMU serves DextMmioReq records from one
 * end of a SOCK_SEQPACKET pair in its main loop; the driver gets the other.
 * We only open, track and revoke them: the records never pass through here.
 */
static int qt_mmio_channel_open(DextPlatform *p, int fn_idx,
                                const uint64_t win[DEXT_PCI_NUM_BARS],
                                int *fd, unsigned *id)
{
    QtestPlatform *q = QP(p);
    DextPciFunction f;
    GString *line;
    char *rep = NULL, *end = NULL;
    uint64_t v = 0;
    int sv[2], r;

    g_mutex_lock(&q->lock);
    r = q->no_mmio_channel ? -ENOTSUP : 0;
    g_mutex_unlock(&q->lock);
    if (r < 0) {
        return dext_platform_set_error(p, r, "QEMU has no mmio_channel");
    }
    g_mutex_lock(&p->lock);
    f = p->fns[fn_idx];
    g_mutex_unlock(&p->lock);
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        return dext_platform_set_error(p, -errno, "mmio_channel: socketpair:"
                                       " %s", g_strerror(errno));
    }
    line = g_string_new("mmio_channel");
    for (unsigned i = 0; i < DEXT_PCI_NUM_BARS; i++) {
        g_string_append_printf(line, " 0x%" PRIx64 " 0x%" PRIx64,
                               win[i] ? f.bars[i].addr : 0, win[i]);
    }
    g_string_append_c(line, '\n');
    r = qt_cmd_fd(q, line->str, line->len, &rep, sv[1]);
    close(sv[1]);                       /* QEMU has its own now */
    g_string_free(line, TRUE);
    if (r == -EIO && rep && strstr(rep, "nknown command")) {
        g_mutex_lock(&q->lock);
        q->no_mmio_channel = true;
        g_mutex_unlock(&q->lock);
        r = dext_platform_set_error(p, -ENOTSUP, "QEMU has no mmio_channel");
    } else if (r == 0) {
        v = g_ascii_strtoull(rep ? rep : "", &end, 0);
        if (!end || end == rep || v == 0 || v > UINT_MAX) {
            r = dext_platform_set_error(p, -EPROTO, "mmio_channel: bad reply "
                                        "'%s'", rep ? rep : "");
        }
    }
    g_free(rep);
    if (r < 0) {
        close(sv[0]);
        return r;
    }
    {
        QtChannel c = { .id = (unsigned)v, .fn_idx = fn_idx };

        g_mutex_lock(&q->lock);
        g_array_append_val(q->channels, c);
        g_mutex_unlock(&q->lock);
    }
    *fd = sv[0];
    *id = (unsigned)v;
    return 0;
}

static int qt_mmio_channel_close(DextPlatform *p, unsigned id)
{
    QtestPlatform *q = QP(p);
    bool known = false;
    char line[48];
    int n, r;

    g_mutex_lock(&q->lock);
    for (guint i = 0; i < q->channels->len; i++) {
        if (g_array_index(q->channels, QtChannel, i).id == id) {
            g_array_remove_index_fast(q->channels, i);
            known = true;
            break;
        }
    }
    g_mutex_unlock(&q->lock);
    if (!known) {
        return dext_platform_set_error(p, -ENOENT, "no MMIO channel %u", id);
    }
    n = snprintf(line, sizeof(line), "mmio_channel_close %u\n", id);
    r = qt_cmd(q, line, n, NULL);
    return r == -EIO ? dext_platform_set_error(p, -ENOENT, "QEMU has no MMIO "
                                               "channel %u", id) : r;
}

static unsigned qt_mmio_channel_count(DextPlatform *p)
{
    QtestPlatform *q = QP(p);
    unsigned n;

    g_mutex_lock(&q->lock);
    n = q->channels->len;
    g_mutex_unlock(&q->lock);
    return n;
}

/* Revoke every channel of @fn_idx (-1: all).  Posted and quiet, so it also
 * works from the reader thread; wire order puts the close before any later
 * command, so nothing reaches the function through it afterwards. */
static void channels_revoke(QtestPlatform *q, int fn_idx)
{
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(unsigned));

    g_mutex_lock(&q->lock);
    for (guint i = q->channels->len; i-- > 0;) {
        QtChannel *c = &g_array_index(q->channels, QtChannel, i);

        if (fn_idx < 0 || c->fn_idx == fn_idx) {
            g_array_append_val(ids, c->id);
            g_array_remove_index_fast(q->channels, i);
        }
    }
    g_mutex_unlock(&q->lock);
    for (guint i = 0; i < ids->len; i++) {
        char line[48];
        int n = snprintf(line, sizeof(line), "mmio_channel_close %u\n",
                         g_array_index(ids, unsigned, i));

        qt_send(q, line, n, QT_QUIET);
    }
    g_array_free(ids, TRUE);
}

static void qt_irq_forget(DextPlatform *p, int fn_idx)
{
    QtestPlatform *q = QP(p);
    GArray *direct = g_array_new(FALSE, FALSE, sizeof(uint32_t));

    g_mutex_lock(&q->lock);
    for (guint i = q->bindings->len; i-- > 0;) {
        IrqBinding *b = g_ptr_array_index(q->bindings, i);

        if (b->fn_idx == fn_idx) {
            if (b->kind != DEXT_IRQ_INTX) {
                g_hash_table_remove(q->msi_routes, GUINT_TO_POINTER(b->data));
            }
            if (b->direct) {
                g_array_append_val(direct, b->data);
            }
            g_ptr_array_remove_index_fast(q->bindings, i);
        }
    }
    g_mutex_unlock(&q->lock);
    /* the function's state is gone (reset) or its BARs may move (rescan):
     * direct access to it stops here, its holders must ask again */
    channels_revoke(q, fn_idx);
    /* QEMU holds its own dup of each eventfd: drop those too, or a data
     * value handed out again would signal a dead binding's eventfd */
    for (guint i = 0; i < direct->len; i++) {
        direct_retire(q, g_array_index(direct, uint32_t, i));
    }
    g_array_free(direct, TRUE);
}

static void qt_irq_fn_removed(DextPlatform *p, int fn_idx)
{
    QtestPlatform *q = QP(p);

    qt_irq_forget(p, fn_idx);
    g_mutex_lock(&q->lock);
    for (guint i = 0; i < q->bindings->len; i++) {
        IrqBinding *b = g_ptr_array_index(q->bindings, i);

        if (b->fn_idx > fn_idx) {
            b->fn_idx--;
        }
    }
    for (guint i = 0; i < q->channels->len; i++) {
        QtChannel *c = &g_array_index(q->channels, QtChannel, i);

        if (c->fn_idx > fn_idx) {
            c->fn_idx--;
        }
    }
    g_mutex_unlock(&q->lock);
}

static int qt_intx_level(DextPlatform *p, int fn_idx)
{
    QtestPlatform *q = QP(p);
    int gsi, lvl, r;

    g_mutex_lock(&p->lock);
    gsi = p->fns[fn_idx].irq_gsi;
    g_mutex_unlock(&p->lock);
    if (gsi < 0 || gsi >= MAX_GSI) {
        return -ENOTSUP;
    }
    /* IRQ lines precede the replies of the commands that caused them:
     * once posted writes are answered, the level is current. */
    r = qt_flush(p);
    if (r < 0) {
        return r;
    }
    g_mutex_lock(&q->lock);
    lvl = q->gsi_level[gsi];
    g_mutex_unlock(&q->lock);
    return lvl;
}

/* The reader's counts plus QEMU's counts of the direct bindings (live
 * ones queried now, gone ones harvested when they went). */
static void qt_irq_stats(DextPlatform *p, DextIrqStats *out)
{
    QtestPlatform *q = QP(p);
    GArray *direct = g_array_new(FALSE, FALSE, sizeof(uint32_t));
    uint64_t cnt = 0, last = 0, sum = 0, max_ns = 0;

    g_mutex_lock(&q->lock);
    for (guint i = 0; i < q->bindings->len; i++) {
        IrqBinding *b = g_ptr_array_index(q->bindings, i);

        if (b->direct) {
            g_array_append_val(direct, b->data);
        }
    }
    g_mutex_unlock(&q->lock);
    if (g_thread_self() != q->reader_self) {
        for (guint i = 0; i < direct->len; i++) {
            if (direct_query(q, g_array_index(direct, uint32_t, i), &cnt,
                             &last) == 0) {
                sum += cnt;
                max_ns = MAX(max_ns, last);
            }
        }
    }
    g_mutex_lock(&q->lock);
    *out = q->stats;
    out->msi_direct = sum + q->direct_retired;
    out->direct_bindings = direct->len;
    out->msi_received += out->msi_direct;
    out->last_msi_ns = MAX(out->last_msi_ns, MAX(max_ns, q->direct_last_ns));
    g_mutex_unlock(&q->lock);
    g_array_free(direct, TRUE);
}

static void qt_set_event_cb(DextPlatform *p, DextPlatformEventFn fn, void *op)
{
    QtestPlatform *q = QP(p);

    g_mutex_lock(&q->lock);
    q->ev_fn = fn;
    q->ev_opaque = op;
    g_mutex_unlock(&q->lock);
}

/* ----------------------------------------------------------------- QMP */

static int qt_qmp(DextPlatform *p, const char *cmd, const char *args_json,
                  char **ret_json)
{
    QtestPlatform *q = QP(p);
    JsonBuilder *jb;
    JsonGenerator *gen;
    JsonParser *jp = NULL;
    JsonNode *root;
    JsonObject *o;
    char *text, *reply = NULL;
    gint64 end;
    int r;

    if ((r = check_thread(q)) < 0) {
        return r;
    }
    jb = json_builder_new();
    json_builder_begin_object(jb);
    json_builder_set_member_name(jb, "execute");
    json_builder_add_string_value(jb, cmd);
    if (args_json) {
        jp = json_parser_new();
        if (!json_parser_load_from_data(jp, args_json, -1, NULL) ||
            !JSON_NODE_HOLDS_OBJECT(json_parser_get_root(jp))) {
            g_object_unref(jp);
            g_object_unref(jb);
            return dext_platform_set_error(p, -EINVAL, "qmp %s: arguments "
                                           "are not a JSON object", cmd);
        }
        json_builder_set_member_name(jb, "arguments");
        json_builder_add_value(jb, json_node_copy(json_parser_get_root(jp)));
        g_object_unref(jp);
    }
    json_builder_end_object(jb);
    gen = json_generator_new();
    root = json_builder_get_root(jb);
    json_generator_set_root(gen, root);
    text = json_generator_to_data(gen, NULL);
    json_node_unref(root);
    g_object_unref(gen);
    g_object_unref(jb);

    g_mutex_lock(&q->qmp_lock);
    g_mutex_lock(&q->lock);
    if (q->dead) {
        g_mutex_unlock(&q->lock);
        g_mutex_unlock(&q->qmp_lock);
        g_free(text);
        return dead_error(q);
    }
    q->qmp_waiting = true;
    g_clear_pointer(&q->qmp_reply, g_free);
    g_mutex_unlock(&q->lock);
    {
        char *line = g_strconcat(text, "\n", NULL);
        size_t len = strlen(line), off = 0;

        r = 0;
        while (off < len) {
            ssize_t n = send(q->qmp_fd, line + off, len - off, MSG_NOSIGNAL);

            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n <= 0) {
                r = -EPIPE;
                break;
            }
            off += n;
        }
        g_free(line);
    }
    end = g_get_monotonic_time() + (gint64)p->timeout_ms * 1000;
    g_mutex_lock(&q->lock);
    while (r == 0 && !q->qmp_reply && !q->dead) {
        if (!g_cond_wait_until(&q->cond, &q->lock, end) && !q->qmp_reply) {
            r = -ETIMEDOUT;
        }
    }
    if (r == 0 && !q->qmp_reply) {
        r = -EPIPE;
    }
    reply = q->qmp_reply;
    q->qmp_reply = NULL;
    q->qmp_waiting = false;
    g_mutex_unlock(&q->lock);
    g_mutex_unlock(&q->qmp_lock);

    if (r < 0) {
        g_free(reply);
        g_free(text);
        return dext_platform_set_error(p, r, "qmp %s: %s", cmd,
                                       r == -ETIMEDOUT ? "no reply in time"
                                                       : "machine died");
    }
    jp = json_parser_new();
    if (!json_parser_load_from_data(jp, reply, -1, NULL)) {
        r = dext_platform_set_error(p, -EPROTO, "qmp %s: bad reply", cmd);
        goto out;
    }
    o = json_node_get_object(json_parser_get_root(jp));
    if (json_object_has_member(o, "error")) {
        JsonObject *e = json_object_get_object_member(o, "error");
        const char *cls = e ? json_object_get_string_member_with_default(
                                  e, "class", "?") : "?";
        const char *desc = e ? json_object_get_string_member_with_default(
                                   e, "desc", "?") : "?";

        r = dext_platform_set_error(p, -EIO, "%s: %s", cls, desc);
        goto out;
    }
    if (ret_json) {
        JsonNode *ret = json_object_get_member(o, "return");

        gen = json_generator_new();
        json_generator_set_root(gen, ret);
        *ret_json = json_generator_to_data(gen, NULL);
        g_object_unref(gen);
    }
out:
    g_object_unref(jp);
    g_free(reply);
    g_free(text);
    return r;
}

static bool event_is(const char *text, const char *name)
{
    JsonParser *jp = json_parser_new();
    bool m = false;

    if (json_parser_load_from_data(jp, text, -1, NULL)) {
        JsonObject *o = json_node_get_object(json_parser_get_root(jp));

        m = !g_strcmp0(json_object_get_string_member_with_default(o, "event",
                                                                  ""), name);
    }
    g_object_unref(jp);
    return m;
}

static int qt_qmp_wait_event(DextPlatform *p, const char *name,
                             unsigned timeout_ms, char **event_json)
{
    QtestPlatform *q = QP(p);
    gint64 end = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    int r;

    if ((r = check_thread(q)) < 0) {
        return r;
    }
    g_mutex_lock(&q->lock);
    for (;;) {
        for (GList *l = q->qmp_events.head; l; l = l->next) {
            if (event_is(l->data, name)) {
                char *t = l->data;

                g_queue_delete_link(&q->qmp_events, l);
                g_mutex_unlock(&q->lock);
                if (event_json) {
                    *event_json = t;
                } else {
                    g_free(t);
                }
                return 0;
            }
        }
        if (q->dead) {
            g_mutex_unlock(&q->lock);
            return dead_error(q);
        }
        if (!g_cond_wait_until(&q->cond, &q->lock, end)) {
            g_mutex_unlock(&q->lock);
            return dext_platform_set_error(p, -ETIMEDOUT, "no QMP event %s "
                                           "within %u ms", name, timeout_ms);
        }
    }
}

/* ------------------------------------------------------ life cycle */

/* ---------------------------------------------------- virtual time */

static int qt_clock_step(DextPlatform *p, uint64_t ns, uint64_t *now_ns)
{
    QtestPlatform *q = QP(p);
    char line[64];
    int len = ns ? snprintf(line, sizeof(line), "clock_step %" PRIu64 "\n", ns)
                 : snprintf(line, sizeof(line), "clock_step\n");
    uint64_t now;
    int r = qt_cmd_u64(q, line, len, &now);

    if (r == 0 && now_ns) {
        *now_ns = now;
    }
    return r;
}

typedef struct ClockFollow {
    QtestPlatform *q;
    unsigned period_us;
    uint64_t virt0;            /* virtual ns when following started */
    gint64 real0;              /* monotonic us then */
} ClockFollow;

static gpointer clock_main(gpointer opaque)
{
    ClockFollow *cf = opaque;
    QtestPlatform *q = cf->q;

    g_mutex_lock(&q->clock_lock);
    while (!q->clock_stop) {
        gint64 now = g_get_monotonic_time();
        uint64_t target = cf->virt0 + (uint64_t)(now - cf->real0) * 1000;
        char line[64];
        int len = snprintf(line, sizeof(line), "clock_set %" PRIu64 "\n",
                           target);

        /* Posted: clock_set never moves time backwards, so a late or
         * reordered one is harmless, and nobody waits for the reply. */
        g_mutex_unlock(&q->clock_lock);
        if (qt_send(q, line, len, NULL) < 0) {
            g_mutex_lock(&q->clock_lock);
            break;                          /* machine died */
        }
        g_mutex_lock(&q->clock_lock);
        g_cond_wait_until(&q->clock_cond, &q->clock_lock,
                          g_get_monotonic_time() + cf->period_us);
    }
    g_mutex_unlock(&q->clock_lock);
    g_free(cf);
    return NULL;
}

static void clock_follow_stop(QtestPlatform *q)
{
    GThread *t;

    g_mutex_lock(&q->clock_lock);
    t = q->clock_thread;
    q->clock_thread = NULL;
    q->clock_stop = true;
    g_cond_broadcast(&q->clock_cond);
    g_mutex_unlock(&q->clock_lock);
    if (t) {
        g_thread_join(t);
    }
}

static int qt_clock_follow(DextPlatform *p, unsigned period_us)
{
    QtestPlatform *q = QP(p);
    ClockFollow *cf;
    int r;

    clock_follow_stop(q);
    if (!period_us) {
        return 0;
    }
    cf = g_new0(ClockFollow, 1);
    cf->q = q;
    cf->period_us = period_us;
    r = qt_clock_step(p, 1, &cf->virt0);    /* where virtual time is now */
    if (r < 0) {
        g_free(cf);
        return r;
    }
    cf->real0 = g_get_monotonic_time();
    g_mutex_lock(&q->clock_lock);
    q->clock_stop = false;
    q->clock_thread = g_thread_new("dext-vclock", clock_main, cf);
    g_mutex_unlock(&q->clock_lock);
    return 0;
}

static void qt_destroy(DextPlatform *p)
{
    QtestPlatform *q = QP(p);
    uint64_t one = 1;

    clock_follow_stop(q);

    if (q->reader) {
        q->stopping = true;
        if (write(q->wake_fd, &one, sizeof(one)) < 0) {
            /* cannot happen with a fresh eventfd */
        }
        g_thread_join(q->reader);
    }
    if (q->pid > 0) {
        int st;

        kill(q->pid, SIGKILL);
        while (waitpid(q->pid, &st, 0) < 0 && errno == EINTR) {
        }
    }
    if (q->qt_fd >= 0) {
        close(q->qt_fd);
    }
    if (q->qmp_fd >= 0) {
        close(q->qmp_fd);
    }
    if (q->wake_fd >= 0) {
        close(q->wake_fd);
    }
    if (q->stderr_fd >= 0) {
        close(q->stderr_fd);
    }
    {
        QtReq *r;

        /* abandoned requests still queued belong to us now */
        while ((r = g_queue_pop_head(&q->pending))) {
            if (r != QT_POSTED && r != QT_QUIET && r->abandoned) {
                g_free(r->reply);
                g_free(r);
            }
        }
    }
    g_queue_clear_full(&q->qmp_events, g_free);
    g_hash_table_destroy(q->msi_routes);
    g_ptr_array_free(q->bindings, TRUE);
    g_array_free(q->channels, TRUE);
    g_free(q->deferred_msg);
    g_free(q->death);
    g_free(q->qmp_reply);
    g_mutex_clear(&q->send_lock);
    g_mutex_clear(&q->qmp_lock);
    g_mutex_clear(&q->clock_lock);
    g_cond_clear(&q->clock_cond);
    g_mutex_clear(&q->lock);
    g_cond_clear(&q->cond);
    dext_platform_fini_common(p);
    g_free(q);
}

static const DextPlatformOps qtest_ops = {
    .name = "qtest",
    .destroy = qt_destroy,
    .alive = qt_alive,
    .cfg_read = qt_cfg_read,
    .cfg_write = qt_cfg_write,
    .mmio_read = qt_mmio_read,
    .mmio_write = qt_mmio_write,
    .port_read = qt_port_read,
    .port_write = qt_port_write,
    .flush = qt_flush,
    .mem_read = qt_mem_read,
    .mem_write = qt_mem_write,
    .has_msi = qt_has_msi,
    .irq_bind = qt_irq_bind,
    .irq_unbind = qt_irq_unbind,
    .intx_level = qt_intx_level,
    .irq_forget = qt_irq_forget,
    .irq_fn_removed = qt_irq_fn_removed,
    .irq_stats = qt_irq_stats,
    .mmio_channel_open = qt_mmio_channel_open,
    .mmio_channel_close = qt_mmio_channel_close,
    .mmio_channel_count = qt_mmio_channel_count,
    .set_event_cb = qt_set_event_cb,
    .qmp = qt_qmp,
    .qmp_wait_event = qt_qmp_wait_event,
    .clock_step = qt_clock_step,
    .clock_follow = qt_clock_follow,
};

static QtestPlatform *qt_new(unsigned timeout_ms, const char *machine,
                             DextPlatformLogFn log_fn, void *log_opaque)
{
    QtestPlatform *q = g_new0(QtestPlatform, 1);

    dext_platform_init_common(&q->base, &qtest_ops);
    q->base.timeout_ms = timeout_ms ? timeout_ms : 10000;
    q->base.pc_machine = machine && !strcmp(machine, "pc");
    q->base.log_fn = log_fn;
    q->base.log_opaque = log_opaque;
    q->qt_fd = q->qmp_fd = q->wake_fd = q->stderr_fd = -1;
    g_mutex_init(&q->send_lock);
    g_mutex_init(&q->qmp_lock);
    g_mutex_init(&q->clock_lock);
    g_cond_init(&q->clock_cond);
    g_mutex_init(&q->lock);
    g_cond_init(&q->cond);
    g_queue_init(&q->pending);
    g_queue_init(&q->qmp_events);
    q->msi_routes = g_hash_table_new(g_direct_hash, g_direct_equal);
    q->bindings = g_ptr_array_new_with_free_func(binding_free);
    q->channels = g_array_new(FALSE, FALSE, sizeof(QtChannel));
    return q;
}

/* Read one QMP line synchronously (start-up, before the reader runs). */
static int qmp_read_line(QtestPlatform *q, GString *buf, char **line,
                         gint64 end)
{
    for (;;) {
        char *nl = memchr(buf->str, '\n', buf->len);
        char tmp[4096];
        struct pollfd pfd = { .fd = q->qmp_fd, .events = POLLIN };
        gint64 left;
        ssize_t n;

        if (nl) {
            *line = g_strndup(buf->str, nl - buf->str);
            g_string_erase(buf, 0, nl - buf->str + 1);
            return 0;
        }
        left = (end - g_get_monotonic_time()) / 1000;
        if (left <= 0 || poll(&pfd, 1, left) <= 0) {
            return -ETIMEDOUT;
        }
        n = recv(q->qmp_fd, tmp, sizeof(tmp), 0);
        if (n <= 0) {
            return -EPIPE;
        }
        g_string_append_len(buf, tmp, n);
    }
}

static int qmp_handshake(QtestPlatform *q)
{
    gint64 end = g_get_monotonic_time() + (gint64)q->base.timeout_ms * 1000;
    GString *buf = g_string_new(NULL);
    const char *caps = "{\"execute\":\"qmp_capabilities\"}\n";
    char *line = NULL;
    int r;

    r = qmp_read_line(q, buf, &line, end);          /* greeting */
    if (r == 0 && !strstr(line, "\"QMP\"")) {
        r = -EPROTO;
    }
    g_clear_pointer(&line, g_free);
    if (r == 0 && send(q->qmp_fd, caps, strlen(caps), MSG_NOSIGNAL) < 0) {
        r = -EPIPE;
    }
    while (r == 0) {
        r = qmp_read_line(q, buf, &line, end);
        if (r == 0 && strstr(line, "\"return\"")) {
            g_free(line);
            break;
        }
        if (r == 0 && strstr(line, "\"error\"")) {
            r = -EPROTO;
        }
        g_clear_pointer(&line, g_free);
    }
    /* events arriving with the handshake are not interesting */
    g_string_free(buf, TRUE);
    return r;
}

/* Common tail of create/attach: reader, MSI intercept, IOAPIC intercept,
 * ECAM. */
static int qt_start(QtestPlatform *q)
{
    DextPlatform *p = &q->base;
    char *rep = NULL;
    int r;

    q->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (q->wake_fd < 0) {
        return dext_platform_set_error(p, -errno, "eventfd: %s",
                                       g_strerror(errno));
    }
    {
        /* QMP sends block (rarely): bound them like every other wait */
        struct timeval tv = { .tv_sec = p->timeout_ms / 1000,
                              .tv_usec = (p->timeout_ms % 1000) * 1000 };

        setsockopt(q->qmp_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    r = qmp_handshake(q);
    if (r < 0) {
        return dext_platform_set_error(p, r, "QMP handshake failed: %s",
                                       g_strerror(-r));
    }
    /* A/B measurements: the paths of a fork without patch 0006 */
    if (g_getenv("DEXT_QTEST_NO_DIRECT")) {
        q->no_msi_eventfd = q->no_mmio_channel = true;
    }
    q->reader = g_thread_try_new("dext-qtest-rd", reader_main, q, NULL);
    if (!q->reader) {
        return dext_platform_set_error(p, -EAGAIN, "cannot start reader");
    }
    /* The fork's MSI intercept: "FAIL Unknown command" on stock QEMU. */
    r = qt_cmd(q, "msi_intercept\n", 14, &rep);
    q->has_msi = r == 0;
    dext_platform_set_error(p, 0, "%s", "");   /* the probe is not an error */
    g_free(rep);
    rep = NULL;
    if (r == -ESHUTDOWN || r == -EPIPE || r == -ETIMEDOUT) {
        return r;
    }
    r = qt_cmd(q, "irq_intercept_in ioapic\n", 24, NULL);
    if (r < 0) {
        dext_platform_log(p, G_LOG_LEVEL_WARNING, "no INTx intercept: %s",
                          dext_platform_last_error(p));
        if (r == -ESHUTDOWN || r == -EPIPE || r == -ETIMEDOUT) {
            return r;
        }
    }
    if (!p->pc_machine) {
        /* MCH PCIEXBAR (00:00.0, 0x60): base 0xb0000000, 256 buses, on.
         * Through 0xcf8/0xcfc, the only config path before ECAM exists. */
        DextPciAddr mch = { 0, 0, 0, 0 };
        uint32_t id = 0;

        p->pc_machine = true;          /* use cf8 for these accesses */
        r = qt_cfg_read(p, mch, 0, 4, &id);
        if (r == 0 && id != 0x29c08086) {
            r = dext_platform_set_error(p, -ENODEV, "not a q35 host bridge "
                                        "(id 0x%08x)", id);
        }
        if (r == 0) {
            r = qt_cfg_write(p, mch, 0x64, 4, 0);
        }
        if (r == 0) {
            r = qt_cfg_write(p, mch, 0x60, 4, (uint32_t)ECAM_BASE | 1);
        }
        p->pc_machine = false;
        if (r == 0) {
            r = qt_cfg_read(p, mch, 0, 4, &id);       /* through ECAM */
            if (r == 0 && id != 0x29c08086) {
                r = dext_platform_set_error(p, -EIO, "ECAM not working "
                                            "(read 0x%08x)", id);
            }
        }
    }
    return r;
}

static int setup_dma(QtestPlatform *q, uint64_t dma_size)
{
    DextPlatform *p = &q->base;
    uint64_t dsz = dma_size ? dma_size : p->ram_size / 2;

    dsz &= ~0xfffull;
    if (dsz == 0 || dsz > p->ram_size - 0x100000) {
        return dext_platform_set_error(p, -EINVAL, "dma_size 0x%"
                                       G_GINT64_MODIFIER "x does not fit RAM",
                                       dma_size);
    }
    p->mem_map = mmap(NULL, p->ram_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                      p->mem_fd, 0);
    if (p->mem_map == MAP_FAILED) {
        p->mem_map = NULL;
        return dext_platform_set_error(p, -errno, "mmap guest RAM: %s",
                                       g_strerror(errno));
    }
    /* the top of RAM; nothing else runs in a qtest machine */
    p->dma = dext_range_alloc_new(p->ram_size - dsz, dsz, 4096);
    return p->dma ? 0 : -EINVAL;
}

static const char *find_qemu(const DextMachineDesc *d)
{
    const char *b = d->qemu_binary;

    if (!b) {
        b = g_getenv("DEXT_QEMU_BINARY");
    }
    if (!b) {
        b = g_getenv("QTEST_QEMU_BINARY");
    }
#ifdef DEXT_DEFAULT_QEMU
    if (!b) {
        b = DEXT_DEFAULT_QEMU;
    }
#endif
    return b;
}

static int listen_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -errno;
    }
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
        listen(fd, 1) < 0) {
        int e = -errno;

        close(fd);
        return e;
    }
    return fd;
}

static int connect_unix(const char *path)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0) {
        return -errno;
    }
    if (strlen(path) >= sizeof(sa.sun_path)) {
        close(fd);
        return -ENAMETOOLONG;
    }
    g_strlcpy(sa.sun_path, path, sizeof(sa.sun_path));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        int e = -errno;

        close(fd);
        return e;
    }
    return fd;
}

/* What the forked child applies before exec (parsed before the fork). */
typedef struct ChildSetup {
    bool pin;                  /* desc->emulator_cpus was given */
    cpu_set_t cpus;
} ChildSetup;

/* Runs between fork and exec, with fd 2 already QEMU's stderr/log: only
 * async-signal-safe calls. */
static void child_setup(gpointer data)
{
    const ChildSetup *cs = data;

    /* QEMU must not outlive the daemon (no leaked processes on a crash).
     * Caveat documented in platform.md: tied to the creating thread. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* Its own process group: a terminal's Ctrl-C reaches the daemon only,
     * which stops its drivers in order and then ends QEMU itself, instead
     * of QEMU vanishing under drivers that are still running. */
    setpgid(0, 0);
    /* Before exec, so every thread QEMU creates inherits the set.  A
     * refusal (e.g. CPUs outside our cpuset) must not cost the machine:
     * say so where QEMU's messages go and run unpinned. */
    if (cs->pin && sched_setaffinity(0, sizeof(cs->cpus), &cs->cpus) < 0) {
        static const char msg[] = "dextlab: emulator_cpus: sched_setaffinity "
                                  "failed; QEMU runs unpinned\n";
        ssize_t n = write(2, msg, sizeof(msg) - 1);

        (void)n;
    }
}

/* After the spawn: tell our log when the kernel did not take the set (the
 * child could only write to QEMU's stderr). */
static void check_pinned(QtestPlatform *q, const ChildSetup *cs,
                         const char *list)
{
    cpu_set_t got;

    if (!cs->pin) {
        return;
    }
    if (sched_getaffinity(q->pid, sizeof(got), &got) < 0) {
        /* ESRCH: QEMU already gone; the start-up below reports why */
        if (errno == ESRCH) {
            return;
        }
        dext_platform_log(&q->base, G_LOG_LEVEL_WARNING, "emulator_cpus "
                          "\"%s\": cannot read QEMU's affinity: %s", list,
                          g_strerror(errno));
    } else if (!CPU_EQUAL(&got, &cs->cpus)) {
        dext_platform_log(&q->base, G_LOG_LEVEL_WARNING, "emulator_cpus "
                          "\"%s\": QEMU is not bound to exactly these CPUs "
                          "(outside this process's cpuset?)", list);
    }
}

static char *stderr_tail(QtestPlatform *q)
{
    char buf[2048];
    ssize_t n;
    off_t sz;

    if (q->stderr_fd < 0) {
        return g_strdup("");
    }
    sz = lseek(q->stderr_fd, 0, SEEK_END);
    n = pread(q->stderr_fd, buf, sizeof(buf) - 1,
              sz > (off_t)sizeof(buf) - 1 ? sz - (off_t)sizeof(buf) + 1 : 0);
    buf[n > 0 ? n : 0] = '\0';
    return g_strstrip(g_strdup(buf));
}

/* Accept QEMU's connection on @lfd, watching for its early exit. */
static int accept_qemu(QtestPlatform *q, int lfd, gint64 end)
{
    for (;;) {
        struct pollfd pfd = { .fd = lfd, .events = POLLIN };
        int st;

        if (poll(&pfd, 1, 50) > 0) {
            int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

            return fd < 0 ? -errno : fd;
        }
        if (waitpid(q->pid, &st, WNOHANG) == q->pid) {
            q->pid = 0;
            return -ECHILD;
        }
        if (g_get_monotonic_time() > end) {
            return -ETIMEDOUT;
        }
    }
}

int dext_platform_qtest_create(const DextMachineDesc *desc, DextPlatform **out)
{
    QtestPlatform *q;
    DextPlatform *p;
    GPtrArray *argv = NULL;
    char *dir = NULL, *qsock = NULL, *msock = NULL;
    int lq = -1, lm = -1, r, log_fd = -1;
    const char *qemu;
    uint64_t ram;
    GError *gerr = NULL;
    gint64 end;
    ChildSetup cs = { .pin = false };

    if (!desc || !out) {
        return -EINVAL;
    }
    *out = NULL;
    q = qt_new(desc->timeout_ms, desc->machine, desc->log_fn,
               desc->log_opaque);
    p = &q->base;
    if (desc->machine && strcmp(desc->machine, "q35") &&
        strcmp(desc->machine, "pc")) {
        r = dext_platform_set_error(p, -EINVAL, "machine '%s': q35 or pc",
                                    desc->machine);
        goto fail;
    }
    ram = desc->ram_size ? desc->ram_size : 256ull << 20;
    if ((ram & ((2ull << 20) - 1)) || ram > (2ull << 30) || ram < (4ull << 20)) {
        r = dext_platform_set_error(p, -EINVAL, "ram_size 0x%" PRIx64 ": 4 MiB"
                                    "..2 GiB in 2 MiB steps", ram);
        goto fail;
    }
    if (desc->emulator_cpus) {
        char *why = NULL;

        if (dext_cpu_list_parse(desc->emulator_cpus, &cs.cpus, &why) < 0) {
            r = dext_platform_set_error(p, -EINVAL, "emulator_cpus \"%s\": %s",
                                        desc->emulator_cpus, why);
            g_free(why);
            goto fail;
        }
        cs.pin = true;
    }
    qemu = find_qemu(desc);
    if (!qemu || access(qemu, X_OK) < 0) {
        r = dext_platform_set_error(p, -ENOENT, "no QEMU binary (%s); set "
                                    "DEXT_QEMU_BINARY", qemu ? qemu : "unset");
        goto fail;
    }

    /* Guest RAM: a sealed-size memfd, never a file in /dev/shm. */
    p->ram_size = ram;
    p->mem_fd = memfd_create("dextlab-ram", MFD_CLOEXEC);
    if (p->mem_fd < 0 || ftruncate(p->mem_fd, ram) < 0) {
        r = dext_platform_set_error(p, -errno, "guest RAM memfd: %s",
                                    g_strerror(errno));
        goto fail;
    }
    if (desc->qemu_log_path) {
        log_fd = open(desc->qemu_log_path,
                      O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (log_fd < 0) {
            r = dext_platform_set_error(p, -errno, "%s: %s",
                                        desc->qemu_log_path, g_strerror(errno));
            goto fail;
        }
    } else {
        /* keep QEMU's stderr for error messages */
        q->stderr_fd = memfd_create("dextlab-qemu-stderr", MFD_CLOEXEC);
        log_fd = q->stderr_fd >= 0 ? dup(q->stderr_fd) : -1;
    }

    dir = g_dir_make_tmp("dextlab-XXXXXX", &gerr);
    if (!dir) {
        r = dext_platform_set_error(p, -EIO, "tmpdir: %s", gerr->message);
        g_error_free(gerr);
        goto fail;
    }
    qsock = g_build_filename(dir, "qtest", NULL);
    msock = g_build_filename(dir, "qmp", NULL);
    lq = listen_unix(qsock);
    lm = listen_unix(msock);
    if (lq < 0 || lm < 0) {
        r = dext_platform_set_error(p, lq < 0 ? lq : lm, "listen: %s",
                                    g_strerror(-(lq < 0 ? lq : lm)));
        goto fail;
    }

    argv = g_ptr_array_new_with_free_func(g_free);
    g_ptr_array_add(argv, g_strdup(qemu));
#define ARG(...) g_ptr_array_add(argv, g_strdup_printf(__VA_ARGS__))
    ARG("-accel");
    ARG("qtest");
    ARG("-qtest");
    ARG("unix:%s", qsock);
    ARG("-qtest-log");
    ARG("/dev/null");
    ARG("-chardev");
    ARG("socket,path=%s,id=dextqmp", msock);
    ARG("-mon");
    ARG("chardev=dextqmp,mode=control");
    ARG("-display");
    ARG("none");
    ARG("-nodefaults");
    ARG("-m");
    ARG("%" PRIu64 "M", ram >> 20);
    ARG("-object");
    ARG("memory-backend-file,id=dextram,size=%" PRIu64 "M,"
        "mem-path=/proc/self/fd/%d,share=on", ram >> 20, QEMU_RAM_FD);
    ARG("-machine");
    ARG("%s,memory-backend=dextram", p->pc_machine ? "pc" : "q35");
    if (!p->pc_machine) {
        /* q35 defaults to ACPI hotplug, which needs a guest OS running ACPI
         * to eject; native PCIe hotplug is what the platform can drive */
        ARG("-global");
        ARG("ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off");
    }
    for (const char *const *dir2 = (const char *const[]){
             "/usr/share/seabios", "/usr/share/qemu", NULL };
         *dir2; dir2++) {
        if (g_file_test(*dir2, G_FILE_TEST_IS_DIR)) {
            ARG("-L");
            ARG("%s", *dir2);
        }
    }
    for (const char *const *d = desc->devices; d && *d; d++) {
        ARG("-device");
        ARG("%s", *d);
    }
    for (const char *const *e = desc->extra_args; e && *e; e++) {
        ARG("%s", *e);
    }
#undef ARG
    g_ptr_array_add(argv, NULL);

    {
        gint src[1] = { p->mem_fd }, tgt[1] = { QEMU_RAM_FD };
        GPid pid;

        if (!g_spawn_async_with_pipes_and_fds(NULL,
                (const gchar *const *)argv->pdata, NULL,
                G_SPAWN_DO_NOT_REAP_CHILD, child_setup, &cs,
                -1, -1, log_fd, src, tgt, 1, &pid, NULL, NULL, NULL,
                &gerr)) {
            r = dext_platform_set_error(p, -ECHILD, "spawn %s: %s", qemu,
                                        gerr->message);
            g_error_free(gerr);
            goto fail;
        }
        q->pid = pid;
        check_pinned(q, &cs, desc->emulator_cpus);
    }
    if (log_fd >= 0) {
        close(log_fd);
        log_fd = -1;
    }

    end = g_get_monotonic_time() + (gint64)p->timeout_ms * 1000;
    q->qt_fd = accept_qemu(q, lq, end);
    if (q->qt_fd >= 0) {
        q->qmp_fd = accept_qemu(q, lm, end);
    }
    if (q->qt_fd < 0 || q->qmp_fd < 0) {
        char *tail = stderr_tail(q);

        r = q->qt_fd < 0 ? q->qt_fd : q->qmp_fd;
        r = dext_platform_set_error(p, r, "QEMU did not connect (%s): %s",
                                    r == -ECHILD ? "it exited"
                                                 : g_strerror(-r), tail);
        g_free(tail);
        goto fail;
    }
    /* sockets are connected: their names are no longer needed */
    close(lq);
    close(lm);
    lq = lm = -1;
    unlink(qsock);
    unlink(msock);
    rmdir(dir);
    g_clear_pointer(&dir, g_free);

    r = qt_start(q);
    if (r < 0) {
        char *tail = stderr_tail(q), *msg;

        msg = g_strdup(dext_platform_last_error(p));
        dext_platform_set_error(p, r, "%s%s%s", msg, *tail ? "; QEMU: " : "",
                                tail);
        g_free(msg);
        g_free(tail);
        goto fail;
    }
    r = setup_dma(q, desc->dma_size);
    if (r < 0) {
        goto fail;
    }
    g_ptr_array_free(argv, TRUE);
    g_free(qsock);
    g_free(msock);
    *out = p;
    return 0;

fail:
    if (lq >= 0) {
        close(lq);
    }
    if (lm >= 0) {
        close(lm);
    }
    if (log_fd >= 0) {
        close(log_fd);
    }
    if (dir) {
        unlink(qsock);
        unlink(msock);
        rmdir(dir);
        g_free(dir);
    }
    g_free(qsock);
    g_free(msock);
    if (argv) {
        g_ptr_array_free(argv, TRUE);
    }
    {
        /* keep the error text across destroy (it logs nothing) */
        char *msg = g_strdup(dext_platform_last_error(p));

        qt_destroy(p);
        dext_platform_set_error(NULL, r, "%s", msg);
        g_free(msg);
    }
    return r;
}

int dext_platform_qtest_attach(const DextAttachDesc *desc, DextPlatform **out)
{
    QtestPlatform *q;
    DextPlatform *p;
    int r;

    if (!desc || !out || !desc->qtest_socket || !desc->qmp_socket) {
        return -EINVAL;
    }
    *out = NULL;
    q = qt_new(desc->timeout_ms, desc->machine, desc->log_fn,
               desc->log_opaque);
    p = &q->base;
    q->qt_fd = connect_unix(desc->qtest_socket);
    q->qmp_fd = connect_unix(desc->qmp_socket);
    if (q->qt_fd < 0 || q->qmp_fd < 0) {
        r = q->qt_fd < 0 ? q->qt_fd : q->qmp_fd;
        dext_platform_set_error(p, r, "connect: %s", g_strerror(-r));
        goto fail;
    }
    r = qt_start(q);
    if (r < 0) {
        goto fail;
    }
    if (desc->mem_path) {
        struct stat st;

        p->ram_size = desc->ram_size;
        p->mem_fd = open(desc->mem_path, O_RDWR | O_CLOEXEC);
        if (p->mem_fd < 0 || fstat(p->mem_fd, &st) < 0 ||
            (uint64_t)st.st_size < desc->ram_size || !desc->ram_size) {
            r = dext_platform_set_error(p, -EINVAL, "guest RAM %s unusable",
                                        desc->mem_path);
            goto fail;
        }
        r = setup_dma(q, desc->dma_size);
        if (r < 0) {
            goto fail;
        }
    }
    *out = p;
    return 0;

fail:
    {
        char *msg = g_strdup(dext_platform_last_error(p));

        qt_destroy(p);
        dext_platform_set_error(NULL, r, "%s", msg);
        g_free(msg);
    }
    return r;
}
