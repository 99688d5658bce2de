/*
 * The IPC codec (harness/common/ipc.c) fed hostile datagrams, in process
 * (suite 'fuzz'): random catalogue messages with random bodies of the
 * right signature, the same mutated (header fields, bit flips, truncation,
 * junk), and random bytes, each decoded against a random channel mask with
 * 0-4 real file descriptors attached.
 *
 * Checked for every input:
 *   - a valid message round-trips: decode succeeds and re-encoding gives
 *     the same bytes;
 *   - anything decode accepts is a catalogue type allowed on the channel,
 *     its body has the catalogue signature in normal form, its fd count is
 *     the catalogue's, and it re-encodes to exactly the input (one encoding
 *     per message: nothing slips through in a second form);
 *   - a refusal is a negative errno with a reason, and every fd passed in
 *     is closed; an accepted message owns them and closes them on clear;
 *   - no fd leaks over the run (the process's fd count at the end).
 *
 *   ipc-codec-fuzz [--seconds N] [--iterations N] [--fuzz-seed N]
 * Long run: --seconds 600 (tens of millions of inputs).
 */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hostile-gen.h"
#include "ipc.h"

static struct {
    int seconds;
    gint64 iterations;
    unsigned seed;
} opt = { 30, G_MAXINT64, 1 };

static int fd_count(void)
{
    GDir *d = g_dir_open("/proc/self/fd", 0, NULL);
    int n = 0;
    while (g_dir_read_name(d)) {
        n++;
    }
    g_dir_close(d);
    return n;
}

static void test_codec(void)
{
    GRand *r = g_rand_new_with_seed(opt.seed);
    static uint8_t buf[DEXT_IPC_MAX_MSG], again[DEXT_IPC_MAX_MSG];
    const uint32_t all = DEXT_CH_ALL;
    uint64_t n = 0, accepted = 0, refused = 0, valid_rt = 0;
    int fds0 = fd_count();
    gint64 t0 = g_get_monotonic_time(), end = t0 + (gint64)opt.seconds * G_USEC_PER_SEC;
    for (gint64 i = 0; i < opt.iterations; i++) {
        if ((i & 255) == 0 && g_get_monotonic_time() > end) {
            break;
        }
        size_t len;
        int kind = g_rand_int_range(r, 0, 10);
        bool valid = false;
        unsigned nfds_want = 0;
        if (kind < 8) {
            DextMsg m;
            bool reply;
            if (!hg_message(r, 0, &m, &reply)) {
                continue;
            }
            const DextMsgSpec *s = dext_msg_spec(m.type);
            nfds_want = m.type == DEXT_MSG_ERROR ? 0 : reply ? s->reply_fds : s->req_fds;
            m.nfds = 0;
            ssize_t l = dext_msg_encode(&m, buf, sizeof(buf));
            dext_msg_clear(&m);
            if (l < 0) {
                continue; /* too large a random body: refused by encode */
            }
            len = (size_t)l;
            /* the header's fd count must match what travels */
            uint16_t h = (uint16_t)nfds_want;
            memcpy(buf + 22, &h, 2);
            valid = kind < 3;
            if (!valid) {
                len = hg_mutate(r, buf, len, sizeof(buf), 80);
            }
        } else {
            len = g_rand_int_range(r, 0, 300);
            for (size_t k = 0; k < len; k++) {
                buf[k] = (uint8_t)g_rand_int(r);
            }
            if (len >= 24 && g_rand_boolean(r)) {
                uint32_t magic = DEXT_IPC_MAGIC, bsz = (uint32_t)(len - 24);
                uint16_t ver = 1;
                memcpy(buf, &magic, 4);
                memcpy(buf + 4, &ver, 2);
                memcpy(buf + 16, &bsz, 4);
            }
        }
        unsigned nfds = valid ? nfds_want : (unsigned)g_rand_int_range(r, 0, DEXT_IPC_MAX_FDS + 1);
        int fds[DEXT_IPC_MAX_FDS];
        for (unsigned k = 0; k < nfds; k++) {
            fds[k] = open("/dev/null", O_RDONLY | O_CLOEXEC);
            g_assert_cmpint(fds[k], >=, 0);
        }
        uint32_t ch = valid ? all : (g_rand_boolean(r) ? all : 1u << g_rand_int_range(r, 0, DEXT_CH_COUNT));
        DextMsg m;
        char *why = NULL;
        int rc = dext_msg_decode(buf, len, fds, nfds, ch, &m, &why);
        n++;
        if (rc == 0) {
            accepted++;
            const DextMsgSpec *s = dext_msg_spec(m.type);
            g_assert_nonnull(s);
            g_assert_true(s->channels & ch);
            bool reply = m.flags & DEXT_MSG_F_REPLY;
            const char *sig = reply ? s->reply_sig : s->req_sig;
            g_assert_nonnull(sig);
            g_assert_cmpstr(g_variant_get_type_string(m.body), ==, sig);
            g_assert_true(g_variant_is_normal_form(m.body));
            g_assert_cmpuint(m.nfds, ==, nfds);
            g_assert_null(why);
            ssize_t l2 = dext_msg_encode(&m, again, sizeof(again));
            g_assert_cmpint(l2, ==, (ssize_t)len);
            g_assert_cmpmem(again, len, buf, len);
            if (valid) {
                valid_rt++;
            }
            dext_msg_clear(&m); /* closes the fds it owns */
        } else {
            refused++;
            g_assert_cmpint(rc, <, 0);
            g_assert_false(valid);
            g_assert_nonnull(why);
            g_free(why);
        }
        for (unsigned k = 0; k < nfds; k++) {
            /* closed either way: refused inputs by decode, accepted by clear */
            g_assert_cmpint(fcntl(fds[k], F_GETFD), ==, -1);
        }
    }
    double secs = (g_get_monotonic_time() - t0) / 1e6;
    g_assert_cmpint(fd_count(), ==, fds0);
    g_printerr("# ipc codec: %" G_GUINT64_FORMAT " inputs in %.1f s (%.0f/s): %" G_GUINT64_FORMAT
               " accepted (%" G_GUINT64_FORMAT " valid round trips), %" G_GUINT64_FORMAT
               " refused\n", n, secs, n / secs, accepted, valid_rt, refused);
    g_assert_cmpuint(valid_rt, >, 0);
    g_assert_cmpuint(refused, >, 0);
    g_rand_free(r);
}

static int send_with_fds(int sock, const uint8_t *b, size_t len, const int *fds, unsigned n)
{
    struct iovec iov = { .iov_base = (void *)b, .iov_len = len };
    union {
        char c[CMSG_SPACE(sizeof(int) * DEXT_IPC_MAX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (n) {
        memset(&cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf.c;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * n);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * n);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
    }
    return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}

/* The same inputs through a real socketpair and dext_ipc_recv(), with fds
 * attached: empty datagrams, short ones, random ones, valid ones.  Every
 * received fd is closed whatever happens: the process's fd count is the
 * same after every input.  Regression: an empty datagram carrying fds was
 * read as the peer's end and its fds leaked (found by dextd-ipc-fuzz: two
 * /dev/null fds left in dextd). */
static void test_socket(void)
{
    GRand *r = g_rand_new_with_seed(opt.seed + 1);
    static uint8_t buf[DEXT_IPC_MAX_MSG];
    const uint32_t all = DEXT_CH_ALL;
    int sv[2];
    g_assert_cmpint(dext_ipc_socketpair(sv), ==, 0);
    int base = fd_count();
    uint64_t n = 0;
    gint64 end = g_get_monotonic_time() + (gint64)MAX(opt.seconds / 6, 1) * G_USEC_PER_SEC;
    for (int i = 0; i < 200 || g_get_monotonic_time() < end; i++) {
        size_t len;
        int kind = i < 200 ? i % 4 : g_rand_int_range(r, 0, 4);
        if (kind == 0) {
            len = 0; /* the regression */
        } else if (kind == 1) {
            len = g_rand_int_range(r, 1, 40);
            for (size_t k = 0; k < len; k++) {
                buf[k] = (uint8_t)g_rand_int(r);
            }
        } else {
            DextMsg m;
            bool reply;
            if (!hg_message(r, 0, &m, &reply)) {
                continue;
            }
            ssize_t l = dext_msg_encode(&m, buf, sizeof(buf));
            dext_msg_clear(&m);
            if (l < 0) {
                continue;
            }
            len = kind == 3 ? hg_mutate(r, buf, (size_t)l, sizeof(buf), 80) : (size_t)l;
        }
        unsigned nf = g_rand_int_range(r, 1, DEXT_IPC_MAX_FDS + 1);
        int fds[DEXT_IPC_MAX_FDS];
        for (unsigned k = 0; k < nf; k++) {
            fds[k] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        g_assert_cmpint(send_with_fds(sv[0], buf, len, fds, nf), ==, 0);
        for (unsigned k = 0; k < nf; k++) {
            close(fds[k]);
        }
        DextMsg m;
        char *why = NULL;
        int rc = dext_ipc_recv(sv[1], all, &m, 1000, &why);
        g_free(why);
        if (rc == 0) {
            dext_msg_clear(&m);
        }
        n++;
        if (fd_count() != base) {
            g_error("input %" G_GUINT64_FORMAT " (%zu bytes, %u fds, rc %d) leaked %d fds", n, len,
                    nf, rc, fd_count() - base);
        }
    }
    close(sv[0]);
    close(sv[1]);
    g_printerr("# ipc socket: %" G_GUINT64_FORMAT " datagrams with fds, no fd leaked\n", n);
    g_rand_free(r);
}

int main(int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "seconds", 0, 0, G_OPTION_ARG_INT, &opt.seconds, "Time budget", "N" },
        { "iterations", 0, 0, G_OPTION_ARG_INT64, &opt.iterations, "Input budget", "N" },
        { "fuzz-seed", 0, 0, G_OPTION_ARG_INT, &opt.seed, "Random seed", "N" },
        { NULL },
    };
    g_test_init(&argc, &argv, NULL);
    GOptionContext *ctx = g_option_context_new("- IPC codec fuzzer");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, NULL)) {
        return 2;
    }
    g_option_context_free(ctx);
    g_printerr("# seed %u\n", opt.seed);
    g_test_add_func("/ipc-codec-fuzz/decode-hostile", test_codec);
    g_test_add_func("/ipc-codec-fuzz/recv-with-fds", test_socket);
    return g_test_run();
}
