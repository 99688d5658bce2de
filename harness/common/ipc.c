/*
 * dextlab IPC codec and socket helpers.  See ipc.h for the wire format.
 */
#include "ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>


/* The catalogue: the single source of truth for what each message carries. */
static const DextMsgSpec specs[] = {
    { DEXT_MSG_ERROR, "ERROR", NULL, "(is)", 0, 0, DEXT_CH_ALL, false },
    { DEXT_MSG_START, "START", "(tsta{sv})", "(i)", 0, 0, DEXT_CH_CTRL, false },
    { DEXT_MSG_STOP, "STOP", "(t)", "(i)", 0, 0, DEXT_CH_CTRL, false },
    { DEXT_MSG_NEW_CLIENT, "NEW_CLIENT", "(tts)", "(i)", 1, 0, DEXT_CH_CTRL, false },
    { DEXT_MSG_PING, "PING", "()", "()", 0, 0, DEXT_CH_CTRL, false },
    { DEXT_MSG_NUB_CLIENT, "NUB_CLIENT", "(tt)", "(i)", 1, 0, DEXT_CH_CTRL, false },
    { DEXT_MSG_NUB_RESET, "NUB_RESET", "(t)", "(i)", 0, 0, DEXT_CH_CTRL, false },
    { DEXT_MSG_HELLO, "HELLO", "(sx)", "(u)", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_PCI_OPEN, "PCI_OPEN", "(t)", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_PCI_CLOSE, "PCI_CLOSE", "(t)", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_CFG_READ, "CFG_READ", "(tqy)", "(u)", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_CFG_WRITE, "CFG_WRITE", "(tqyu)", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_MMIO_READ, "MMIO_READ", "(tyty)", "(t)", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_MMIO_WRITE, "MMIO_WRITE", "(tytyt)", "()", 0, 0, DEXT_CH_RPC, true },
    { DEXT_MSG_DMA_RAM, "DMA_RAM", "()", "(t)", 0, 1, DEXT_CH_RPC, false },
    { DEXT_MSG_DMA_ALLOC, "DMA_ALLOC", "(tt)", "(ttt)", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_DMA_FREE, "DMA_FREE", "(t)", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_IRQ_BIND, "IRQ_BIND", "(tu)", "(u)", 0, 1, DEXT_CH_RPC, false },
    { DEXT_MSG_IRQ_UNBIND, "IRQ_UNBIND", "(tu)", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_RESET, "RESET", "(tu)", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_SYNC, "SYNC", "()", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_IRQ_INFO, "IRQ_INFO", "(t)", "(u)", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_IRQ_STATS, "IRQ_STATS", "()", "(tt)", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_NUB_PUBLISH, "NUB_PUBLISH", "(ttssa{sv})", "(t)", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_NUB_TERMINATE, "NUB_TERMINATE", "(t)", "()", 0, 0, DEXT_CH_RPC, false },
    { DEXT_MSG_PROVIDER_OPEN, "PROVIDER_OPEN", "(t)", "()", 0, 1, DEXT_CH_RPC, false },
    { DEXT_MSG_MMIO_CHANNEL, "MMIO_CHANNEL", "(t)", "(uat)", 0, 1, DEXT_CH_RPC, false },
    { DEXT_MSG_OPEN, "OPEN", "(ss)", "(tt)", 0, 1, DEXT_CH_APP, false },
    { DEXT_MSG_REGISTRY, "REGISTRY", "(b)", "(s)", 0, 0, DEXT_CH_APP, false },
    { DEXT_MSG_SERVICES, "SERVICES", "()", "(a(tsssxuu))", 0, 0, DEXT_CH_APP, false },
    { DEXT_MSG_SERVICE_CTL, "SERVICE_CTL", "(ts)", "()", 0, 0, DEXT_CH_APP, false },
    { DEXT_MSG_LIST, "LIST", "()", "(a(tsqqutsssxuu))", 0, 0, DEXT_CH_APP, false },
    { DEXT_MSG_LOG, "LOG", "(tu)", "(ta(txss))", 0, 0, DEXT_CH_APP, false },
    { DEXT_MSG_MATCH_EXPLAIN, "MATCH_EXPLAIN", "()", "(a(ssssbs))", 0, 0, DEXT_CH_APP, false },
    { DEXT_MSG_BUNDLE_CTL, "BUNDLE_CTL", "(ss)", "(s)", 0, 0, DEXT_CH_APP, false },
    { DEXT_MSG_UC_METHODS, "UC_METHODS", "()", "(a(uuuuu))", 0, 0, DEXT_CH_UC, false },
    { DEXT_MSG_UC_CALL, "UC_CALL", "(uatayuut)", "(atay)", 0, 0, DEXT_CH_UC, true },
    { DEXT_MSG_UC_MEMORY, "UC_MEMORY", "(uu)", "(tt)", 0, 1, DEXT_CH_UC, false },
    { DEXT_MSG_UC_ASYNC, "UC_ASYNC", "(tiat)", NULL, 0, 0, DEXT_CH_UCEV, true },
    { DEXT_MSG_USB_INFO, "USB_INFO", "()", "(uyayay)", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_OPEN, "USB_OPEN", "()", "()", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_CLOSE, "USB_CLOSE", "()", "()", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_CONTROL, "USB_CONTROL", "(yyqqquay)", "(uay)", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_SET_CONFIG, "USB_SET_CONFIG", "(y)", "()", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_SELECT_ALT, "USB_SELECT_ALT", "(y)", "()", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_BUFFER_ALLOC, "USB_BUFFER_ALLOC", "(tu)", "(ttt)", 0, 1, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_BUFFER_FREE, "USB_BUFFER_FREE", "(t)", "()", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_IO, "USB_IO", "(yttuut)", "(iut)", 0, 0, DEXT_CH_PROV, true },
    { DEXT_MSG_USB_ABORT, "USB_ABORT", "(y)", "()", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_CLEAR_STALL, "USB_CLEAR_STALL", "(y)", "()", 0, 0, DEXT_CH_PROV, false },
    { DEXT_MSG_USB_IO_DONE, "USB_IO_DONE", "(tiut)", NULL, 0, 0, DEXT_CH_PROVEV, true },
};

const DextMsgSpec *dext_msg_spec(uint16_t type)
{
    for (size_t i = 0; i < G_N_ELEMENTS(specs); i++) {
        if (specs[i].type == type) {
            return &specs[i];
        }
    }
    return NULL;
}

const char *dext_msg_name(uint16_t type)
{
    const DextMsgSpec *s = dext_msg_spec(type);
    return s ? s->name : "UNKNOWN";
}

void dext_msg_init(DextMsg *m, uint16_t type, GVariant *body)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->body = body ? g_variant_ref_sink(body) : g_variant_ref_sink(g_variant_new("()"));
}

void dext_msg_init_reply(DextMsg *m, const DextMsg *req, GVariant *body)
{
    dext_msg_init(m, req->type, body);
    m->flags = DEXT_MSG_F_REPLY;
    m->reply_to = req->serial;
}

void dext_msg_init_error(DextMsg *m, const DextMsg *req, int neg_errno,
                         const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    dext_msg_init(m, DEXT_MSG_ERROR, g_variant_new("(is)", neg_errno < 0 ? neg_errno : -EINVAL, s));
    m->flags = DEXT_MSG_F_REPLY;
    m->reply_to = req ? req->serial : 0;
    g_free(s);
}

void dext_msg_clear(DextMsg *m)
{
    if (m->body) {
        g_variant_unref(m->body);
        m->body = NULL;
    }
    for (unsigned i = 0; i < m->nfds; i++) {
        if (m->fds[i] >= 0) {
            close(m->fds[i]);
        }
    }
    m->nfds = 0;
}

int dext_msg_take_fd(DextMsg *m, unsigned i)
{
    if (i >= m->nfds) {
        return -1;
    }
    int fd = m->fds[i];
    m->fds[i] = -1;
    return fd;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(uint8_t *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static uint16_t get16(const uint8_t *p) { return p[0] | (uint16_t)p[1] << 8; }
static uint32_t get32(const uint8_t *p) { return get16(p) | (uint32_t)get16(p + 2) << 16; }

/* Header layout (little-endian):
 *  0 magic u32 | 4 version u16 | 6 type u16 | 8 serial u32 | 12 reply_to u32
 * 16 body_size u32 | 20 flags u16 | 22 nfds u16 */
ssize_t dext_msg_encode(const DextMsg *m, uint8_t *buf, size_t cap)
{
    const DextMsgSpec *s = dext_msg_spec(m->type);
    if (!s || !m->body) {
        return -EINVAL;
    }
    const char *sig = (m->flags & DEXT_MSG_F_REPLY) ? s->reply_sig : s->req_sig;
    if (!sig || !g_variant_is_of_type(m->body, G_VARIANT_TYPE(sig))) {
        return -EINVAL;
    }
    size_t bsz = g_variant_get_size(m->body);
    if (bsz > DEXT_IPC_MAX_BODY || DEXT_IPC_HDR_SIZE + bsz > cap) {
        return -EMSGSIZE;
    }
    put32(buf, DEXT_IPC_MAGIC);
    put16(buf + 4, DEXT_IPC_VERSION);
    put16(buf + 6, m->type);
    put32(buf + 8, m->serial);
    put32(buf + 12, m->reply_to);
    put32(buf + 16, (uint32_t)bsz);
    put16(buf + 20, m->flags);
    put16(buf + 22, m->nfds);
    g_variant_store(m->body, buf + DEXT_IPC_HDR_SIZE);
    return DEXT_IPC_HDR_SIZE + bsz;
}

static void close_fds(const int *fds, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        if (fds[i] >= 0) {
            close(fds[i]);
        }
    }
}

#define FAIL(err, ...) do { \
        if (reason) { *reason = g_strdup_printf(__VA_ARGS__); } \
        rc = (err); goto fail; \
    } while (0)

int dext_msg_decode(const uint8_t *buf, size_t len, const int *fds,
                    unsigned nfds, uint32_t channels, DextMsg *m,
                    char **reason)
{
    int rc;
    memset(m, 0, sizeof(*m));
    if (reason) {
        *reason = NULL;
    }
    if (nfds > DEXT_IPC_MAX_FDS) {
        FAIL(-EBADMSG, "too many fds (%u)", nfds);
    }
    if (len < DEXT_IPC_HDR_SIZE) {
        FAIL(-EBADMSG, "short message (%zu bytes)", len);
    }
    if (get32(buf) != DEXT_IPC_MAGIC) {
        FAIL(-EBADMSG, "bad magic 0x%08x", get32(buf));
    }
    m->serial = get32(buf + 8);
    if (get16(buf + 4) != DEXT_IPC_VERSION) {
        FAIL(-EPROTONOSUPPORT, "protocol version %u, expected %u",
             get16(buf + 4), DEXT_IPC_VERSION);
    }
    uint16_t type = get16(buf + 6);
    uint32_t bsz = get32(buf + 16);
    uint16_t flags = get16(buf + 20);
    uint16_t hnfds = get16(buf + 22);
    if (bsz != len - DEXT_IPC_HDR_SIZE) {
        FAIL(-EBADMSG, "body size %u but %zu bytes follow header", bsz,
             len - DEXT_IPC_HDR_SIZE);
    }
    if (flags & ~(DEXT_MSG_F_REPLY | DEXT_MSG_F_POSTED)) {
        FAIL(-EBADMSG, "unknown flags 0x%x", flags);
    }
    const DextMsgSpec *s = dext_msg_spec(type);
    if (!s) {
        FAIL(-EOPNOTSUPP, "unknown message type %u", type);
    }
    if (!(s->channels & channels)) {
        FAIL(-EPERM, "message %s not allowed on this channel", s->name);
    }
    bool is_reply = flags & DEXT_MSG_F_REPLY;
    if ((flags & DEXT_MSG_F_POSTED) && (is_reply || !s->may_post)) {
        FAIL(-EBADMSG, "message %s cannot be posted", s->name);
    }
    const char *sig = is_reply ? s->reply_sig : s->req_sig;
    if (!sig) {
        FAIL(-EBADMSG, "message %s cannot be a %s", s->name,
             is_reply ? "reply" : "request");
    }
    unsigned want_fds = type == DEXT_MSG_ERROR ? 0 : (is_reply ? s->reply_fds : s->req_fds);
    if (hnfds != nfds || nfds != want_fds) {
        FAIL(-EBADMSG, "message %s carries %u fds (header says %u), expected %u",
             s->name, nfds, hnfds, want_fds);
    }
    /* Copy so the variant owns aligned memory independent of buf.  The
     * allocation is padded with zeros past the body: GLib 2.74's normal-form
     * check can read a byte beyond some malformed bodies (seen by valgrind
     * in the fuzz test), which must stay inside our own memory. */
    uint8_t *copy = g_malloc0(bsz + 16);
    memcpy(copy, buf + DEXT_IPC_HDR_SIZE, bsz);
    GBytes *bytes = g_bytes_new_take(copy, bsz);
    GVariant *v = g_variant_new_from_bytes(G_VARIANT_TYPE(sig), bytes, FALSE);
    g_bytes_unref(bytes);
    g_variant_ref_sink(v);
    if (!g_variant_is_normal_form(v)) {
        g_variant_unref(v);
        FAIL(-EBADMSG, "message %s body is not a valid %s", s->name, sig);
    }
    m->type = type;
    m->flags = flags;
    m->serial = get32(buf + 8);
    m->reply_to = get32(buf + 12);
    m->body = v;
    m->nfds = nfds;
    for (unsigned i = 0; i < nfds; i++) {
        m->fds[i] = fds[i];
    }
    return 0;

fail:
    if (m->body) {
        g_variant_unref(m->body);
        m->body = NULL;
    }
    close_fds(fds, nfds > DEXT_IPC_MAX_FDS ? DEXT_IPC_MAX_FDS : nfds);
    return rc;
}

/* @room_ms < 0: a blocking socket may block in sendmsg (the peer is
 * trusted to read); otherwise never wait longer than that for room. */
static int ipc_send(int sock, DextMsg *m, int room_ms)
{
    uint8_t buf[DEXT_IPC_MAX_MSG];
    ssize_t len = dext_msg_encode(m, buf, sizeof(buf));
    if (len < 0) {
        return (int)len;
    }
    struct iovec iov = { .iov_base = buf, .iov_len = (size_t)len };
    union {
        char b[CMSG_SPACE(sizeof(int) * DEXT_IPC_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (m->nfds) {
        if (m->nfds > DEXT_IPC_MAX_FDS) {
            return -EINVAL;
        }
        memset(&cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * m->nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * m->nfds);
        memcpy(CMSG_DATA(c), m->fds, sizeof(int) * m->nfds);
    }
    gint64 end = room_ms < 0 ? 0 : g_get_monotonic_time() + (gint64)room_ms * 1000;
    for (;;) {
        ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL | (room_ms < 0 ? 0 : MSG_DONTWAIT));
        if (n == len) {
            return 0;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* Peer socket full: wait a bounded time for room. */
            int wait_ms = DEXT_IPC_TIMEOUT_MS;
            if (room_ms >= 0) {
                gint64 left = end - g_get_monotonic_time();
                wait_ms = left > 0 ? (int)((left + 999) / 1000) : 0;
            }
            struct pollfd p = { .fd = sock, .events = POLLOUT };
            int r = wait_ms > 0 ? poll(&p, 1, wait_ms) : 0;
            if (r < 0 && errno == EINTR) {
                continue;
            }
            if (r <= 0) {
                return -ETIMEDOUT;
            }
            continue;
        }
        return n < 0 ? -errno : -EIO;
    }
}

int dext_ipc_send(int sock, DextMsg *m)
{
    return ipc_send(sock, m, -1);
}

int dext_ipc_send_timeout(int sock, DextMsg *m, int timeout_ms)
{
    return ipc_send(sock, m, MAX(timeout_ms, 0));
}

int dext_ipc_recv(int sock, uint32_t channels, DextMsg *m, int timeout_ms,
                  char **reason)
{
    uint8_t buf[DEXT_IPC_MAX_MSG];
    union {
        char b[CMSG_SPACE(sizeof(int) * DEXT_IPC_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    int fds[DEXT_IPC_MAX_FDS * 2];
    unsigned nfds = 0;
    ssize_t n;

    if (reason) {
        *reason = NULL;
    }
    if (timeout_ms < 0) {
        timeout_ms = DEXT_IPC_TIMEOUT_MS;
    }
    for (bool first = true;; first = false) {
        struct pollfd p = { .fd = sock, .events = POLLIN };
        /* timeout 0 (draining a readable socket): try the read first and
         * save a poll() per message on the posted-write path. */
        int r = timeout_ms == 0 && first ? 1 : poll(&p, 1, timeout_ms);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r < 0) {
            return -errno;
        }
        if (r == 0) {
            return -ETIMEDOUT;
        }
        struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = cbuf.b, .msg_controllen = sizeof(cbuf.b),
        };
        n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN && timeout_ms == 0) {
            return -ETIMEDOUT;
        }
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
            continue;
        }
        if (n < 0) {
            return -errno;
        }
        /* Collect passed fds before anything else: an empty datagram (read
         * like the peer's end) can carry fds too, and they must not leak. */
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
                unsigned k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (unsigned i = 0; i < k && nfds < G_N_ELEMENTS(fds); i++) {
                    memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                }
            }
        }
        if (n == 0) {
            close_fds(fds, nfds);
            return -ECONNRESET; /* orderly shutdown by peer (or an empty datagram) */
        }
        if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
            close_fds(fds, nfds);
            if (reason) {
                *reason = g_strdup("message or its fds truncated (too large)");
            }
            return -EMSGSIZE;
        }
        return dext_msg_decode(buf, (size_t)n, fds, nfds, channels, m, reason);
    }
}

int dext_ipc_call(int sock, uint32_t channels, uint32_t *serial_ctr,
                  DextMsg *req, DextMsg *reply, int timeout_ms, char **reason)
{
    int rc;
    if (reason) {
        *reason = NULL;
    }
    req->serial = ++*serial_ctr;
    if (req->serial == 0) {
        req->serial = ++*serial_ctr;
    }
    rc = dext_ipc_send(sock, req);
    if (rc < 0) {
        return rc;
    }
    gint64 deadline = g_get_monotonic_time() +
        (gint64)(timeout_ms < 0 ? DEXT_IPC_TIMEOUT_MS : timeout_ms) * 1000;
    for (;;) {
        int left = (int)((deadline - g_get_monotonic_time()) / 1000);
        if (left < 0) {
            return -ETIMEDOUT;
        }
        rc = dext_ipc_recv(sock, channels, reply, left, reason);
        if (rc < 0) {
            return rc;
        }
        if (!(reply->flags & DEXT_MSG_F_REPLY) || reply->reply_to != req->serial ||
            (reply->type != req->type && reply->type != DEXT_MSG_ERROR)) {
            /* A stale or unsolicited message: the peer is confused; drop it
             * and keep waiting for ours within the same bound. */
            dext_msg_clear(reply);
            continue;
        }
        if (reply->type == DEXT_MSG_ERROR) {
            gint32 err;
            const char *msg;
            g_variant_get(reply->body, "(i&s)", &err, &msg);
            if (reason) {
                g_free(*reason);
                *reason = g_strdup(msg);
            }
            dext_msg_clear(reply);
            return err < 0 ? err : -EIO;
        }
        return 0;
    }
}

int dext_ipc_socketpair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        return -errno;
    }
    return 0;
}
