/*
 * dext-hostile: a driver process that attacks dextd over its own channels.
 * It does not use libdext: it speaks the IPC protocol itself (harness/common
 * ipc.c) so it can send what libdext never would.  Launched by dextd like
 * any driver (DEXT_CONTROL_FD, DEXT_RPC_FD), it says HELLO and then:
 *
 *   DEXT_HOSTILE_RAW=fuzz (default): answers START after sending junk on
 *     the control channel, then sends $DEXT_HOSTILE_ITER inputs on the RPC
 *     channel: random catalogue messages of every type and channel, random
 *     bodies of the right signature, byte mutations of valid requests, stray
 *     fds.  After each input it sends SYNC and reads every reply up to
 *     SYNC's: a non-posted request that dextd could frame must be answered
 *     (reply or ERROR naming its serial), and SYNC must always come back.
 *     Writes "key=value" counts to $DEXT_HOSTILE_REPORT, then waits for
 *     dextd to close its channels.
 *   DEXT_HOSTILE_RAW=ignore-start: never answers START (dextd's own
 *     Start bound must kill it; libdext drivers have a watchdog of their own).
 *   DEXT_HOSTILE_RAW=bad-start-reply: answers START with a reply of the
 *     wrong message type (a PING reply naming START's serial), then idles.
 *     dextd must treat the Start as failed, not read a bogus result.
 *
 * Writes to its real device are turned into out-of-range ones so the
 * machine stays usable for the other drivers under test.
 */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostile-gen.h"
#include "ipc.h"

static int ctrl_fd = -1, rpc_fd = -1;
static uint32_t serial_ctr = 1;

static int env_int(const char *k, int def)
{
    const char *v = g_getenv(k);
    return v ? atoi(v) : def;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "dext-hostile: %s: %s\n", what, g_strerror(-rc));
    exit(3);
}

/* Send raw bytes (+ optional fd) as one datagram. */
static int send_raw(int sock, const uint8_t *buf, size_t len, int fd)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    union {
        char b[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } cbuf;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        memset(&cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    return n == (ssize_t)len ? 0 : -errno;
}

/* Replies on RPC are typed by their request, so receive with every channel. */
#define ANY_CH DEXT_CH_ALL

typedef struct {
    uint64_t inputs, framed_requests, answered, errors, oks, syncs, unanswered, extra;
} Counts;

/* Keep writes to the real device harmless: out-of-range offsets/bars. */
static void defang(DextMsg *m, uint64_t dev)
{
    if ((m->flags & DEXT_MSG_F_REPLY) ||
        (m->type != DEXT_MSG_CFG_WRITE && m->type != DEXT_MSG_MMIO_WRITE &&
         m->type != DEXT_MSG_RESET)) {
        return;
    }
    guint64 id;
    g_variant_get_child(m->body, 0, "t", &id);
    if (id != dev) {
        return;
    }
    GVariant *nb = NULL;
    if (m->type == DEXT_MSG_CFG_WRITE) {
        guint16 off;
        guint8 w;
        guint32 v;
        g_variant_get(m->body, "(tqyu)", &id, &off, &w, &v);
        nb = g_variant_new("(tqyu)", id, (guint16)(0x1000 + (off & 0x7fff)), w, v);
    } else if (m->type == DEXT_MSG_MMIO_WRITE) {
        guint8 bar, w;
        guint64 off, v;
        g_variant_get(m->body, "(tytyt)", &id, &bar, &off, &w, &v);
        nb = g_variant_new("(tytyt)", id, (guint8)(bar | 8), off, w, v);
    } else {
        nb = g_variant_new("(tu)", id + 1000, 0u);
    }
    g_variant_unref(m->body);
    m->body = g_variant_ref_sink(nb);
}

/* Read replies until SYNC's; note whether `want` (0: none) was answered. */
static int drain_to_sync(Counts *c, uint32_t want, bool *got_want)
{
    static uint32_t probe_ctr;
    DextMsg s;
    dext_msg_init(&s, DEXT_MSG_SYNC, NULL);
    s.serial = HG_PROBE_SERIAL | (probe_ctr++ & 0x7fffffff);
    int rc = dext_ipc_send(rpc_fd, &s);
    uint32_t sync_serial = s.serial;
    dext_msg_clear(&s);
    if (rc < 0) {
        return rc;
    }
    *got_want = false;
    for (;;) {
        DextMsg r;
        rc = dext_ipc_recv(rpc_fd, ANY_CH, &r, 10000, NULL);
        if (rc < 0) {
            return rc;
        }
        if (r.reply_to == sync_serial && (r.flags & DEXT_MSG_F_REPLY)) {
            bool ok = r.type == DEXT_MSG_SYNC;
            dext_msg_clear(&r);
            c->syncs++;
            return ok ? 0 : -EPROTO;
        }
        if (want && r.reply_to == want) {
            *got_want = true;
            c->answered++;
            if (r.type == DEXT_MSG_ERROR) {
                c->errors++;
            } else {
                c->oks++;
            }
        } else {
            c->extra++; /* an answer to a mutated input we could not predict */
            if (r.type == DEXT_MSG_ERROR) {
                c->errors++;
            }
        }
        dext_msg_clear(&r);
    }
}

static void fuzz_rpc(uint64_t dev, int iters, Counts *c)
{
    GRand *r = g_rand_new_with_seed((guint32)env_int("DEXT_HOSTILE_SEED", 1));
    static uint8_t buf[DEXT_IPC_MAX_MSG];
    for (int i = 0; i < iters; i++) {
        DextMsg m;
        bool reply;
        int mode = g_rand_int_range(r, 0, 10);
        uint32_t channels = mode < 6 ? DEXT_CH_RPC : 0;
        if (!hg_message(r, channels, &m, &reply)) {
            continue;
        }
        if (m.type == DEXT_MSG_HELLO && !reply) {
            /* A HELLO that does not match is fatal by design (dextd kills a
             * process that lies about who it is): not an input to survive. */
            dext_msg_clear(&m);
            continue;
        }
        /* Aim half of the device requests at the device we own. */
        if (!reply && (dext_msg_spec(m.type)->channels & DEXT_CH_RPC) && m.body &&
            g_variant_n_children(m.body) > 0 && g_rand_boolean(r)) {
            GVariant *first = g_variant_get_child_value(m.body, 0);
            if (g_variant_is_of_type(first, G_VARIANT_TYPE_UINT64)) {
                gsize n = g_variant_n_children(m.body);
                GVariant **kids = g_new(GVariant *, n);
                kids[0] = g_variant_new_uint64(dev);
                for (gsize k = 1; k < n; k++) {
                    kids[k] = g_variant_get_child_value(m.body, k);
                }
                GVariant *nb = g_variant_ref_sink(g_variant_new_tuple(kids, n));
                g_free(kids);
                g_variant_unref(m.body);
                m.body = nb;
            }
            g_variant_unref(first);
        }
        defang(&m, dev);
        m.serial = serial_ctr++;
        ssize_t len = dext_msg_encode(&m, buf, sizeof(buf));
        bool posted = m.flags & DEXT_MSG_F_POSTED;
        uint32_t serial = m.serial;
        uint16_t type = m.type;
        dext_msg_clear(&m);
        if (len < 0) {
            continue;
        }
        bool mutated = mode >= 8;
        if (mutated) {
            len = (ssize_t)hg_mutate(r, buf, (size_t)len, sizeof(buf), 100);
            hg_unprobe_serial(buf, (size_t)len);
        }
        int fd = -1;
        if (g_rand_int_range(r, 0, 16) == 0) {
            fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        int rc = send_raw(rpc_fd, buf, (size_t)len, fd);
        if (fd >= 0) {
            close(fd);
        }
        if (rc < 0) {
            die("send", rc);
        }
        c->inputs++;
        bool expect = !mutated && !reply && !posted;
        if (expect) {
            c->framed_requests++;
        }
        bool got = false;
        rc = drain_to_sync(c, expect ? serial : 0, &got);
        if (rc < 0) {
            die("no SYNC answer after a hostile input", rc);
        }
        if (expect && !got) {
            c->unanswered++;
            fprintf(stderr, "dext-hostile: %s request serial %u got no answer\n",
                    dext_msg_name(type), serial);
        }
    }
    g_rand_free(r);
}

/* Junk on the control channel while START is pending: well-formed but
 * unexpected requests (dextd must not treat them as anything) and replies
 * to serials it never sent.  (A malformed control message makes dextd cut
 * the driver off: both channels closed, the process relaunched by policy,
 * so byte mutations here would end the run.) */
static void junk_ctrl(int n)
{
    GRand *r = g_rand_new_with_seed(7);
    static uint8_t buf[DEXT_IPC_MAX_MSG];
    for (int i = 0; i < n; i++) {
        DextMsg m;
        bool reply;
        if (!hg_message(r, DEXT_CH_CTRL, &m, &reply)) {
            continue;
        }
        const DextMsgSpec *s = dext_msg_spec(m.type);
        if (m.type != DEXT_MSG_ERROR && (reply ? s->reply_fds : s->req_fds)) {
            dext_msg_clear(&m); /* would need an fd: malformed without one */
            continue;
        }
        if (reply) {
            m.reply_to = 0x7f000000u + i; /* dextd never used these */
        }
        ssize_t len = dext_msg_encode(&m, buf, sizeof(buf));
        dext_msg_clear(&m);
        if (len > 0) {
            send_raw(ctrl_fd, buf, (size_t)len, -1);
        }
    }
    g_rand_free(r);
}

static int env_fd(const char *k)
{
    const char *v = g_getenv(k);
    return v ? atoi(v) : -1;
}

int main(int argc, char **argv)
{
    const char *mode = g_getenv("DEXT_HOSTILE_RAW") ? g_getenv("DEXT_HOSTILE_RAW") : "fuzz";
    ctrl_fd = env_fd("DEXT_CONTROL_FD");
    rpc_fd = env_fd("DEXT_RPC_FD");
    const char *name = g_getenv("DEXT_SERVER_NAME");
    if (ctrl_fd < 0 || rpc_fd < 0 || !name) {
        fprintf(stderr, "dext-hostile: not started by dextd\n");
        return 2;
    }
    DextMsg req, rep;
    dext_msg_init(&req, DEXT_MSG_HELLO, g_variant_new("(sx)", name, (gint64)getpid()));
    int rc = dext_ipc_call(rpc_fd, DEXT_CH_RPC, &serial_ctr, &req, &rep, 10000, NULL);
    dext_msg_clear(&req);
    if (rc < 0) {
        die("HELLO", rc);
    }
    dext_msg_clear(&rep);

    DextMsg start;
    rc = dext_ipc_recv(ctrl_fd, DEXT_CH_CTRL, &start, 30000, NULL);
    if (rc < 0 || start.type != DEXT_MSG_START) {
        die("no START", rc < 0 ? rc : -EPROTO);
    }
    guint64 svc, dev;
    g_variant_get(start.body, "(t&st@a{sv})", &svc, NULL, &dev, NULL);
    if (!strcmp(mode, "ignore-start")) {
        /* Never answer: dextd's own Start bound must end this process. */
        fprintf(stderr, "dext-hostile: ignoring START on purpose\n");
        dext_msg_clear(&start);
    } else if (!strcmp(mode, "bad-start-reply")) {
        DextMsg bad;
        dext_msg_init(&bad, DEXT_MSG_PING, NULL);
        bad.flags = DEXT_MSG_F_REPLY;
        bad.reply_to = start.serial;
        bad.serial = 1;
        dext_ipc_send(ctrl_fd, &bad);
        dext_msg_clear(&bad);
        dext_msg_clear(&start);
        fprintf(stderr, "dext-hostile: answered START with a PING reply\n");
    } else {
        junk_ctrl(env_int("DEXT_HOSTILE_CTRL_JUNK", 200));
        DextMsg ok;
        dext_msg_init_reply(&ok, &start, g_variant_new("(i)", 0));
        ok.serial = 2;
        dext_ipc_send(ctrl_fd, &ok);
        dext_msg_clear(&ok);
        dext_msg_clear(&start);

        Counts c = { 0 };
        gint64 t0 = g_get_monotonic_time();
        fuzz_rpc(dev, env_int("DEXT_HOSTILE_ITER", 20000), &c);
        double secs = (g_get_monotonic_time() - t0) / 1e6;
        const char *report = g_getenv("DEXT_HOSTILE_REPORT");
        char *s = g_strdup_printf("inputs=%" G_GUINT64_FORMAT "\nframed_requests=%" G_GUINT64_FORMAT
                                  "\nanswered=%" G_GUINT64_FORMAT "\nerrors=%" G_GUINT64_FORMAT
                                  "\noks=%" G_GUINT64_FORMAT "\nsyncs=%" G_GUINT64_FORMAT
                                  "\nunanswered=%" G_GUINT64_FORMAT "\nextra=%" G_GUINT64_FORMAT
                                  "\nseconds=%.3f\n", c.inputs, c.framed_requests, c.answered,
                                  c.errors, c.oks, c.syncs, c.unanswered, c.extra, secs);
        if (report) {
            char *tmp = g_strconcat(report, ".tmp", NULL);
            g_file_set_contents(tmp, s, -1, NULL);
            rename(tmp, report);
            g_free(tmp);
        }
        fputs(s, stderr);
        g_free(s);
    }
    /* Idle until dextd closes the control channel (stop or shutdown). */
    for (;;) {
        DextMsg m;
        rc = dext_ipc_recv(ctrl_fd, DEXT_CH_CTRL, &m, 1000, NULL);
        if (rc == -ETIMEDOUT) {
            continue;
        }
        if (rc < 0 && rc != -EBADMSG && rc != -EPERM && rc != -EOPNOTSUPP) {
            break;
        }
        if (rc == 0) {
            if (m.type == DEXT_MSG_STOP || m.type == DEXT_MSG_PING) {
                DextMsg ok;
                dext_msg_init_reply(&ok, &m, m.type == DEXT_MSG_STOP ? g_variant_new("(i)", 0) : NULL);
                dext_ipc_send(ctrl_fd, &ok);
                dext_msg_clear(&ok);
            }
            dext_msg_clear(&m);
        }
    }
    return 0;
}
