/* IPC codec and socket tests: round trips, every validation rule, fds over
 * SCM_RIGHTS, and random bytes (never crash, never accept garbage silently). */
#include "cunit-main.h"
#include "ipc.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void test_roundtrip(void)
{
    DextMsg m, d;
    uint8_t buf[DEXT_IPC_MAX_MSG];
    dext_msg_init(&m, DEXT_MSG_MMIO_WRITE, g_variant_new("(tytyt)", (guint64)7, 2,
                                                       (guint64)0x1000, 4, (guint64)0xdeadbeef));
    m.serial = 42;
    m.flags = DEXT_MSG_F_POSTED;
    ssize_t n = dext_msg_encode(&m, buf, sizeof(buf));
    CU_ASSERT_FATAL(n > DEXT_IPC_HDR_SIZE);
    CU_ASSERT_EQUAL(dext_msg_decode(buf, n, NULL, 0, DEXT_CH_RPC, &d, NULL), 0);
    CU_ASSERT_EQUAL(d.type, DEXT_MSG_MMIO_WRITE);
    CU_ASSERT_EQUAL(d.serial, 42);
    CU_ASSERT_EQUAL(d.flags, DEXT_MSG_F_POSTED);
    guint64 dev, off, val;
    guchar bar, w;
    g_variant_get(d.body, "(tytyt)", &dev, &bar, &off, &w, &val);
    CU_ASSERT_EQUAL(dev, 7);
    CU_ASSERT_EQUAL(bar, 2);
    CU_ASSERT_EQUAL(off, 0x1000);
    CU_ASSERT_EQUAL(w, 4);
    CU_ASSERT_EQUAL(val, 0xdeadbeef);
    dext_msg_clear(&m);
    dext_msg_clear(&d);
}

static void test_encode_rejects_wrong_body(void)
{
    DextMsg m;
    uint8_t buf[256];
    dext_msg_init(&m, DEXT_MSG_CFG_READ, g_variant_new("(s)", "nope"));
    CU_ASSERT_EQUAL(dext_msg_encode(&m, buf, sizeof(buf)), -EINVAL);
    dext_msg_clear(&m);
    dext_msg_init(&m, 9999, NULL);
    CU_ASSERT_EQUAL(dext_msg_encode(&m, buf, sizeof(buf)), -EINVAL);
    dext_msg_clear(&m);
    /* Too large for the buffer. */
    GBytes *big = g_bytes_new_take(g_malloc0(1000), 1000);
    dext_msg_init(&m, DEXT_MSG_UC_CALL,
                  g_variant_new("(u@at@ayuut)", 1, g_variant_new_array(G_VARIANT_TYPE_UINT64, NULL, 0),
                                g_variant_new_from_bytes(G_VARIANT_TYPE_BYTESTRING, big, TRUE),
                                0, 0, (guint64)0));
    g_bytes_unref(big);
    CU_ASSERT_EQUAL(dext_msg_encode(&m, buf, sizeof(buf)), -EMSGSIZE);
    dext_msg_clear(&m);
}

static ssize_t enc(uint16_t type, uint16_t flags, GVariant *body, uint8_t *buf)
{
    DextMsg m;
    dext_msg_init(&m, type, body);
    m.flags = flags;
    m.serial = 5;
    ssize_t n = dext_msg_encode(&m, buf, DEXT_IPC_MAX_MSG);
    dext_msg_clear(&m);
    return n;
}

static int dec(const uint8_t *buf, size_t n, uint32_t ch, DextMsg *d)
{
    char *why = NULL;
    int rc = dext_msg_decode(buf, n, NULL, 0, ch, d, &why);
    if (rc < 0) {
        CU_ASSERT_PTR_NOT_NULL(why);
    }
    g_free(why);
    if (rc == 0) {
        dext_msg_clear(d);
    }
    return rc;
}

static void test_decode_validation(void)
{
    uint8_t buf[DEXT_IPC_MAX_MSG];
    DextMsg d;
    ssize_t n = enc(DEXT_MSG_CFG_READ, 0, g_variant_new("(tqy)", (guint64)1, 4, 4), buf);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_EQUAL(dec(buf, n, DEXT_CH_RPC, &d), 0);
    CU_ASSERT_EQUAL(d.serial, 5);
    /* short */
    CU_ASSERT_EQUAL(dec(buf, 10, DEXT_CH_RPC, &d), -EBADMSG);
    /* wrong channel */
    CU_ASSERT_EQUAL(dec(buf, n, DEXT_CH_APP, &d), -EPERM);
    /* truncated body / trailing garbage */
    CU_ASSERT_EQUAL(dec(buf, n - 1, DEXT_CH_RPC, &d), -EBADMSG);
    uint8_t big[DEXT_IPC_MAX_MSG];
    memcpy(big, buf, n);
    big[n] = 0;
    CU_ASSERT_EQUAL(dec(big, n + 1, DEXT_CH_RPC, &d), -EBADMSG);
    /* bad magic */
    memcpy(big, buf, n);
    big[0] ^= 0xff;
    CU_ASSERT_EQUAL(dec(big, n, DEXT_CH_RPC, &d), -EBADMSG);
    /* bad version */
    memcpy(big, buf, n);
    big[4] = 9;
    CU_ASSERT_EQUAL(dec(big, n, DEXT_CH_RPC, &d), -EPROTONOSUPPORT);
    /* unknown type */
    memcpy(big, buf, n);
    big[6] = 0xee;
    big[7] = 0x7e;
    CU_ASSERT_EQUAL(dec(big, n, DEXT_CH_RPC, &d), -EOPNOTSUPP);
    /* unknown flag */
    memcpy(big, buf, n);
    big[21] = 0x80;
    CU_ASSERT_EQUAL(dec(big, n, DEXT_CH_RPC, &d), -EBADMSG);
    /* posted on a non-postable request */
    memcpy(big, buf, n);
    big[20] = DEXT_MSG_F_POSTED;
    CU_ASSERT_EQUAL(dec(big, n, DEXT_CH_RPC, &d), -EBADMSG);
    /* header claims an fd that is not there */
    memcpy(big, buf, n);
    big[22] = 1;
    CU_ASSERT_EQUAL(dec(big, n, DEXT_CH_RPC, &d), -EBADMSG);
    /* body of another type: a reply body "(u)" in a request slot is the wrong
     * size for (tqy) and must not decode. */
    n = enc(DEXT_MSG_CFG_READ, DEXT_MSG_F_REPLY, g_variant_new("(u)", 1), buf);
    CU_ASSERT_FATAL(n > 0);
    memcpy(big, buf, n);
    big[20] = 0; /* pretend request */
    CU_ASSERT_EQUAL(dec(big, n, DEXT_CH_RPC, &d), -EBADMSG);
    /* ...while the genuine reply decodes. */
    CU_ASSERT_EQUAL(dec(buf, n, DEXT_CH_RPC, &d), 0);
    /* UC_ASYNC cannot be a reply */
    n = enc(DEXT_MSG_UC_ASYNC, 0, g_variant_new("(tiat)", (guint64)1, 0, NULL), buf);
    CU_ASSERT_FATAL(n > 0);
    buf[20] = DEXT_MSG_F_REPLY;
    CU_ASSERT_EQUAL(dec(buf, n, DEXT_CH_UCEV, &d), -EBADMSG);
}

static void test_non_normal_string(void)
{
    /* A string body without its NUL terminator is not normal form. */
    uint8_t buf[DEXT_IPC_MAX_MSG];
    DextMsg d;
    ssize_t n = enc(DEXT_MSG_OPEN, 0, g_variant_new("(ss)", "class", "Foo"), buf);
    CU_ASSERT_FATAL(n > 0);
    for (ssize_t i = DEXT_IPC_HDR_SIZE; i < n; i++) {
        if (buf[i] == 0) {
            buf[i] = 'x';
            break;
        }
    }
    CU_ASSERT_EQUAL(dec(buf, n, DEXT_CH_APP, &d), -EBADMSG);
}

static void test_socket_fds(void)
{
    int sv[2];
    CU_ASSERT_FATAL(dext_ipc_socketpair(sv) == 0);
    int pfd[2];
    CU_ASSERT_FATAL(pipe(pfd) == 0);
    DextMsg m, r;
    dext_msg_init(&m, DEXT_MSG_DMA_RAM, g_variant_new("(t)", (guint64)4096));
    m.flags = DEXT_MSG_F_REPLY;
    m.fds[0] = pfd[0];
    m.nfds = 1;
    CU_ASSERT_EQUAL(dext_ipc_send(sv[0], &m), 0);
    m.nfds = 0; /* we keep ownership of pfd[0] */
    dext_msg_clear(&m);
    CU_ASSERT_EQUAL_FATAL(dext_ipc_recv(sv[1], DEXT_CH_RPC, &r, 1000, NULL), 0);
    CU_ASSERT_EQUAL(r.nfds, 1);
    int got = dext_msg_take_fd(&r, 0);
    CU_ASSERT(got >= 0);
    CU_ASSERT(fcntl(got, F_GETFD) & FD_CLOEXEC);
    CU_ASSERT_EQUAL(write(pfd[1], "z", 1), 1);
    char c = 0;
    CU_ASSERT_EQUAL(read(got, &c, 1), 1);
    CU_ASSERT_EQUAL(c, 'z');
    close(got);
    dext_msg_clear(&r);

    /* An fd attached to a message that must carry none is closed, and the
     * message refused. */
    dext_msg_init(&m, DEXT_MSG_PING, NULL);
    m.fds[0] = pfd[1];
    m.nfds = 1;
    CU_ASSERT_EQUAL(dext_ipc_send(sv[0], &m), 0);
    m.nfds = 0;
    dext_msg_clear(&m);
    char *why = NULL;
    CU_ASSERT_EQUAL(dext_ipc_recv(sv[1], DEXT_CH_CTRL, &r, 1000, &why), -EBADMSG);
    CU_ASSERT_PTR_NOT_NULL(why);
    g_free(why);

    /* bounded wait */
    CU_ASSERT_EQUAL(dext_ipc_recv(sv[1], DEXT_CH_CTRL, &r, 20, NULL), -ETIMEDOUT);
    /* peer gone */
    close(sv[0]);
    CU_ASSERT_EQUAL(dext_ipc_recv(sv[1], DEXT_CH_CTRL, &r, 1000, NULL), -ECONNRESET);
    close(sv[1]);
    close(pfd[0]);
    close(pfd[1]);
}

/* A peer that stops reading: dext_ipc_send_timeout gives up after its bound
 * (-ETIMEDOUT) instead of blocking, and succeeds again once the peer reads. */
static void test_send_timeout(void)
{
    int sv[2];
    CU_ASSERT_FATAL(dext_ipc_socketpair(sv) == 0);
    DextMsg m, r;
    dext_msg_init(&m, DEXT_MSG_PING, NULL);
    unsigned sent = 0;
    int rc;
    while ((rc = dext_ipc_send_timeout(sv[0], &m, 0)) == 0 && sent < 100000) {
        sent++;
    }
    CU_ASSERT_EQUAL(rc, -ETIMEDOUT);
    CU_ASSERT(sent > 0 && sent < 100000);
    gint64 t0 = g_get_monotonic_time();
    CU_ASSERT_EQUAL(dext_ipc_send_timeout(sv[0], &m, 50), -ETIMEDOUT);
    gint64 waited = g_get_monotonic_time() - t0;
    CU_ASSERT(waited >= 40000 && waited < 5000000);
    /* the peer takes one: room for one more */
    CU_ASSERT_EQUAL(dext_ipc_recv(sv[1], DEXT_CH_CTRL, &r, 1000, NULL), 0);
    dext_msg_clear(&r);
    CU_ASSERT_EQUAL(dext_ipc_send_timeout(sv[0], &m, 1000), 0);
    /* the peer gone: an error at once, not a wait */
    close(sv[1]);
    CU_ASSERT_EQUAL(dext_ipc_send_timeout(sv[0], &m, 1000) < 0, 1);
    dext_msg_clear(&m);
    close(sv[0]);
}

static void test_call_error_reply(void)
{
    int sv[2];
    CU_ASSERT_FATAL(dext_ipc_socketpair(sv) == 0);
    /* Pre-load the "server" reply: a stale reply (wrong serial) must be
     * skipped, then the ERROR reply for serial 1 returned as its errno. */
    DextMsg req, rep, e;
    dext_msg_init(&req, DEXT_MSG_SYNC, NULL);
    req.serial = 1;
    dext_msg_init_reply(&rep, &req, NULL);
    rep.reply_to = 77;
    CU_ASSERT_EQUAL(dext_ipc_send(sv[1], &rep), 0);
    dext_msg_init_error(&e, &req, -ENODEV, "no device %d", 3);
    CU_ASSERT_EQUAL(dext_ipc_send(sv[1], &e), 0);
    uint32_t serial = 0;
    DextMsg reply;
    char *why = NULL;
    CU_ASSERT_EQUAL(dext_ipc_call(sv[0], DEXT_CH_RPC, &serial, &req, &reply, 1000, &why), -ENODEV);
    CU_ASSERT_STRING_EQUAL(why, "no device 3");
    g_free(why);
    dext_msg_clear(&req);
    dext_msg_clear(&rep);
    dext_msg_clear(&e);
    close(sv[0]);
    close(sv[1]);
}

/* Random bytes, and random mutations of valid messages: decode must return
 * either a valid message of a catalogue type/signature or an error. */
static void test_fuzz(void)
{
    GRand *r = g_rand_new_with_seed(0xd5715);
    uint8_t buf[DEXT_IPC_MAX_MSG];
    unsigned accepted = 0, rejected = 0;
    for (int i = 0; i < 200000; i++) {
        size_t n;
        if (i % 2) {
            n = g_rand_int_range(r, 0, 200);
            for (size_t k = 0; k < n; k++) {
                buf[k] = g_rand_int(r);
            }
            if (n >= 8 && i % 4 == 1) {
                /* give it a valid magic/version/type so deeper checks run */
                buf[0] = 'D'; buf[1] = 'X'; buf[2] = 'T'; buf[3] = '1';
                buf[4] = 1; buf[5] = 0;
                static const uint16_t types[] = { 16, 33, 35, 37, 38, 64, 81, 96, 1 };
                uint16_t t = types[g_rand_int_range(r, 0, G_N_ELEMENTS(types))];
                buf[6] = t; buf[7] = t >> 8;
                if (n >= 24) {
                    uint32_t bs = n - 24;
                    memcpy(buf + 16, &bs, 4);
                    buf[20] &= 3; buf[21] = 0; buf[22] = 0; buf[23] = 0;
                }
            }
        } else {
            ssize_t m = enc(DEXT_MSG_UC_CALL, 0,
                            g_variant_new("(u@at@ayuut)", 3,
                                          g_variant_new_array(G_VARIANT_TYPE_UINT64, NULL, 0),
                                          g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, "abc", 3, 1),
                                          2, 16, (guint64)0), buf);
            g_assert(m > 0);
            n = m;
            int flips = g_rand_int_range(r, 1, 4);
            for (int f = 0; f < flips; f++) {
                size_t at = g_rand_int_range(r, DEXT_IPC_HDR_SIZE - 8, n);
                buf[at] ^= 1u << g_rand_int_range(r, 0, 8);
            }
        }
        DextMsg d;
        char *why = NULL;
        int rc = dext_msg_decode(buf, n, NULL, 0, 0xff, &d, &why);
        if (rc == 0) {
            const DextMsgSpec *s = dext_msg_spec(d.type);
            CU_ASSERT_PTR_NOT_NULL_FATAL(s);
            const char *sig = (d.flags & DEXT_MSG_F_REPLY) ? s->reply_sig : s->req_sig;
            CU_ASSERT(g_variant_is_of_type(d.body, G_VARIANT_TYPE(sig)));
            CU_ASSERT(g_variant_is_normal_form(d.body));
            accepted++;
            dext_msg_clear(&d);
        } else {
            CU_ASSERT(rc < 0);
            CU_ASSERT_PTR_NOT_NULL(why);
            rejected++;
        }
        g_free(why);
    }
    CU_ASSERT(rejected > 0);
    CU_ASSERT(accepted > 0); /* some mutations leave a valid message */
    g_rand_free(r);
}

int main(void)
{
    static const DextTest tests[] = {
        { "roundtrip", test_roundtrip },
        { "encode-rejects", test_encode_rejects_wrong_body },
        { "decode-validation", test_decode_validation },
        { "non-normal-string", test_non_normal_string },
        { "socket-fds", test_socket_fds },
        { "send-timeout", test_send_timeout },
        { "call-error-reply", test_call_error_reply },
        { "fuzz-random-bytes", test_fuzz },
        { NULL, NULL },
    };
    return dext_cunit_run("ipc", tests);
}
