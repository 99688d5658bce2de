/*
 * Hostile input against a live dextd (suite 'fuzz'): one dextd on the
 * reliability machine with two drivers, dext-hostile-dma (a real DMA
 * driver with a user client) and dext-hostile (a driver that attacks dextd
 * over its own control and RPC channels, see drivers/dext-hostile).  While
 * that driver attacks, this program is a hostile app:
 *
 *   app socket:  random catalogue messages of every channel with random
 *                bodies, byte mutations, stray fds; every framed request on
 *                the app channel must be answered (reply or ERROR naming its
 *                serial); broken framing may close that one connection.
 *   user client: raw UC_CALLs with random selectors, scalar counts,
 *                structure sizes, output counts and capacities, async
 *                references; UC_MEMORY with random types and flags; junk
 *                and mutated datagrams; connections closed mid-call.  Each
 *                call is checked against the driver's dispatch table: a call
 *                the table forbids must get an ERROR, an allowed one must
 *                succeed with the right output (echo compared byte for byte).
 *
 * Every 500 inputs a well-behaved client checks dextd and the driver still
 * serve it: an echo through the library and a DMA copy verified byte by
 * byte in the shared destination buffer.  At the end dextd must still be
 * running, have no sanitizer or GLib-critical report in its log, and exit 0
 * on SIGTERM.  A second short dextd run checks a driver answering START
 * with a reply of the wrong message type.
 *
 *   dextd-ipc-fuzz [--seconds N] [--uc-inputs N] [--app-inputs N]
 *                  [--raw-inputs N] [--fuzz-seed N] [--require-asan]
 * The run stops at whichever budget (time or inputs) ends first.  Long run:
 *   dextd-ipc-fuzz --seconds 1800 --uc-inputs 1000000 --app-inputs 200000 \
 *                  --raw-inputs 300000
 */
#include "reliability-lib.h"
#include "hostile-gen.h"
#include "ipc.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

enum { SEL_COPY, SEL_SLEEP, SEL_INFO, SEL_ECHO, SEL_COUNT };
static const struct {
    uint32_t sin, struct_in, sout, struct_out;
} table[SEL_COUNT] = {
    [SEL_COPY] = { 1, 0, 1, 0 },
    [SEL_SLEEP] = { 1, 0, 0, 0 },
    [SEL_INFO] = { 0, 0, 3, 0 },
    [SEL_ECHO] = { 3, UINT32_MAX, 1, UINT32_MAX },
};
#define DATA_MAX (256 * 1024)

static struct {
    int seconds;
    long uc_inputs, app_inputs, raw_inputs;
    unsigned seed;
    gboolean require_asan;
} opt = { 40, 2000000, 30000, 20000, 1, FALSE };

static RelDextd dd;
static GRand *rnd;
static uint8_t buf[DEXT_IPC_MAX_MSG];

static struct {
    uint64_t app_inputs, app_answered, app_errors, app_reconnects;
    uint64_t uc_calls, uc_bad, uc_bad_refused, uc_good, uc_good_ok, uc_memory, uc_junk,
        uc_reconnects, uc_mid_close, checks, copies_verified;
} st;

static int send_raw(int sock, const uint8_t *b, size_t len, int fd)
{
    struct iovec iov = { .iov_base = (void *)b, .iov_len = len };
    union {
        char c[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } cbuf;
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (fd >= 0) {
        memset(&cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf.c;
        mh.msg_controllen = CMSG_SPACE(sizeof(int));
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -errno;
}

#define ANY_CH DEXT_CH_ALL

/* Wait (bounded) for the reply naming `serial`; others are dropped.
 * Returns 1 ok reply, 0 ERROR reply (*err = errno), <0 socket error. */
static int wait_reply(int fd, uint32_t serial, DextMsg *out, int *err)
{
    for (;;) {
        DextMsg r;
        int rc = dext_ipc_recv(fd, ANY_CH, &r, 10000, NULL);
        if (rc < 0) {
            return rc;
        }
        if ((r.flags & DEXT_MSG_F_REPLY) && r.reply_to == serial) {
            int res = 1;
            if (r.type == DEXT_MSG_ERROR) {
                gint32 e;
                g_variant_get(r.body, "(i&s)", &e, NULL);
                *err = e;
                res = 0;
            }
            if (out) {
                *out = r;
            } else {
                dext_msg_clear(&r);
            }
            return res;
        }
        dext_msg_clear(&r);
    }
}

static int app_connect(void)
{
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    g_strlcpy(a.sun_path, dd.sock, sizeof(a.sun_path));
    g_assert_cmpint(connect(s, (struct sockaddr *)&a, sizeof(a)), ==, 0);
    return s;
}

/* A datagram no receiver can frame: too short for a header, or a bad
 * magic (no serial to name in an ERROR): the connection may be closed. */
static ssize_t unframeable(uint8_t *b)
{
    ssize_t len = g_rand_int_range(rnd, 0, 64);
    for (ssize_t i = 0; i < len; i++) {
        b[i] = (uint8_t)g_rand_int(rnd);
    }
    if (len >= 24) {
        memset(b + 8, 0, 4); /* serial 0 */
    }
    return len;
}

/* ---- app socket ------------------------------------------------------------ */

static void fuzz_app(long n, gint64 deadline)
{
    int s = app_connect();
    uint32_t serial = 1;
    for (long i = 0; i < n && g_get_monotonic_time() < deadline; i++) {
        DextMsg m;
        bool reply;
        bool app_only = g_rand_int_range(rnd, 0, 10) < 7;
        if (!hg_message(rnd, app_only ? DEXT_CH_APP : 0, &m, &reply)) {
            continue;
        }
        m.serial = serial++;
        ssize_t len = dext_msg_encode(&m, buf, sizeof(buf));
        bool expect = !reply && (dext_msg_spec(m.type)->channels & DEXT_CH_APP);
        uint32_t want = m.serial;
        uint16_t type = m.type, flags = m.flags;
        dext_msg_clear(&m);
        if (len < 0) {
            continue;
        }
        if (g_rand_int_range(rnd, 0, 4) == 0) {
            len = (ssize_t)hg_mutate(rnd, buf, (size_t)len, sizeof(buf), 90);
            expect = false;
        }
        if (g_rand_int_range(rnd, 0, 50) == 0) {
            len = unframeable(buf);
            expect = false;
        }
        int fd = g_rand_int_range(rnd, 0, 20) == 0 ? open("/dev/null", O_RDONLY | O_CLOEXEC) : -1;
        int rc = send_raw(s, buf, (size_t)len, fd);
        if (fd >= 0) {
            close(fd);
        }
        st.app_inputs++;
        /* Follow every input with a SERVICES query: it must be answered
         * unless dextd dropped the connection for broken framing. */
        hg_unprobe_serial(buf, (size_t)len);
        DextMsg q;
        dext_msg_init(&q, DEXT_MSG_SERVICES, NULL);
        q.serial = HG_PROBE_SERIAL | serial++;
        if (rc == 0) {
            rc = dext_ipc_send(s, &q);
        }
        uint32_t qs = q.serial;
        dext_msg_clear(&q);
        /* OPEN is answered after the driver's NEW_CLIENT reply, so it may
         * come after the probe's: wait for both. */
        bool answered = false, probed = false;
        while (rc == 0) {
            DextMsg r;
            rc = dext_ipc_recv(s, ANY_CH, &r, 10000, NULL);
            if (rc < 0) {
                break;
            }
            if ((r.flags & DEXT_MSG_F_REPLY) && r.reply_to == want && expect) {
                answered = true;
                st.app_answered++;
                st.app_errors += r.type == DEXT_MSG_ERROR;
            }
            probed |= (r.flags & DEXT_MSG_F_REPLY) && r.reply_to == qs;
            dext_msg_clear(&r);
            if (probed && (answered || !expect)) {
                break;
            }
        }
        if (rc < 0) {
            /* Only broken framing may cost the connection. */
            g_assert_true(rc == -ECONNRESET || rc == -EPIPE);
            g_assert_false(expect);
            close(s);
            s = app_connect();
            st.app_reconnects++;
            continue;
        }
        if (expect && !answered) {
            g_error("app request %s (flags 0x%x) serial %u was not answered",
                    dext_msg_name(type), flags, want);
        }
    }
    close(s);
}

/* ---- user client ------------------------------------------------------------ */

static DextConnection *uc_open(void)
{
    DextConnection *c = NULL;
    int rc = -1;
    for (int i = 0; i < 200 && rc < 0; i++) {
        rc = dext_client_open(dd.sock, "class", "HostileDmaDriver", &c);
        if (rc < 0) {
            g_usleep(20000);
        }
    }
    if (rc < 0) {
        g_error("cannot open HostileDmaDriver: %s", g_strerror(-rc));
    }
    return c;
}

/* Well-behaved client: echo through the library and a verified DMA copy. */
static void good_client_check(void)
{
    DextConnection *c = uc_open();
    uint64_t in[3] = { 1, 2, 39 }, out[1] = { 0 };
    uint32_t nout = 1;
    char sin[64], sout[64];
    for (unsigned i = 0; i < sizeof(sin); i++) {
        sin[i] = (char)g_rand_int(rnd);
    }
    size_t slen = sizeof(sout);
    g_assert_cmpint(dext_client_call(c, SEL_ECHO, in, 3, sin, sizeof(sin), out, &nout, sout, &slen),
                    ==, 0);
    g_assert_cmpuint(out[0], ==, 42);
    g_assert_cmpuint(slen, ==, sizeof(sin));
    g_assert_cmpmem(sin, sizeof(sin), sout, slen);

    void *src = NULL, *dst = NULL;
    uint64_t ssz = 0, dsz = 0;
    g_assert_cmpint(dext_client_map_memory(c, 0, 0, &src, &ssz), ==, 0);
    g_assert_cmpint(dext_client_map_memory(c, 1, DEXT_CLIENT_MAP_READONLY, &dst, &dsz), ==, 0);
    g_assert_cmpuint(ssz, ==, DATA_MAX);
    uint32_t len = g_rand_int_range(rnd, 1, 65536);
    uint8_t *s8 = src;
    for (uint32_t i = 0; i < len; i++) {
        s8[i] = (uint8_t)g_rand_int(rnd);
    }
    uint64_t l = len;
    nout = 1;
    g_assert_cmpint(dext_client_call(c, SEL_COPY, &l, 1, NULL, 0, out, &nout, NULL, NULL), ==, 0);
    g_assert_cmpmem(src, len, dst, len);
    st.copies_verified++;
    munmap(src, ssz);
    munmap(dst, dsz);
    dext_client_close(c);
    st.checks++;
}

static bool predict_ok(uint32_t sel, gsize nin, gsize sin_len, uint32_t nout, uint32_t cap,
                       uint64_t ref)
{
    if (sel >= SEL_COUNT || nin != table[sel].sin || nout != table[sel].sout || ref ||
        cap > 4096) {
        return false;
    }
    if (table[sel].struct_in == UINT32_MAX ? sin_len > 4096 : sin_len != table[sel].struct_in) {
        return false;
    }
    return true;
}

static void fuzz_uc(long n, gint64 deadline)
{
    DextConnection *c = uc_open();
    int fd = dext_client_fd(c);
    uint32_t serial = 1000;
    for (long i = 0; i < n && g_get_monotonic_time() < deadline; i++) {
        if (i % 500 == 0) {
            good_client_check();
        }
        int kind = g_rand_int_range(rnd, 0, 100);
        if (kind < 80) {
            /* a call with random shape */
            uint32_t sel = g_rand_int_range(rnd, 0, 3) ? (uint32_t)g_rand_int_range(rnd, 0, SEL_COUNT + 1)
                                                      : (uint32_t)hg_u64(rnd);
            gsize nin = g_rand_int_range(rnd, 0, 3) ? (gsize)(sel < SEL_COUNT ? table[sel].sin : 1)
                                                    : (uint32_t)g_rand_int_range(rnd, 0, 20);
            gsize sin_len = g_rand_int_range(rnd, 0, 3) ? g_rand_int_range(rnd, 0, 300)
                                                        : g_rand_int_range(rnd, 0, 9000);
            if (sel != SEL_ECHO && g_rand_boolean(rnd)) {
                sin_len = 0;
            }
            uint32_t nout = g_rand_int_range(rnd, 0, 3) ? (sel < SEL_COUNT ? table[sel].sout : 0)
                                                       : (uint32_t)g_rand_int_range(rnd, 0, 20);
            uint32_t cap = g_rand_int_range(rnd, 0, 3) ? (uint32_t)g_rand_int_range(rnd, 0, 4097)
                                                      : (uint32_t)hg_u64(rnd);
            uint64_t ref = g_rand_int_range(rnd, 0, 5) ? 0 : hg_u64(rnd);
            uint64_t sc[20];
            for (gsize k = 0; k < nin; k++) {
                sc[k] = hg_u64(rnd);
            }
            if (sel == SEL_SLEEP && nin >= 1) {
                sc[0] = g_rand_int_range(rnd, 0, 3); /* ms: keep the run moving */
            }
            if (sel == SEL_COPY && nin >= 1 && g_rand_boolean(rnd)) {
                sc[0] = g_rand_int_range(rnd, 0, DATA_MAX + 2);
            }
            uint8_t *sin = g_malloc(sin_len + 1);
            for (gsize k = 0; k < sin_len; k++) {
                sin[k] = (uint8_t)g_rand_int(rnd);
            }
            DextMsg m;
            dext_msg_init(&m, DEXT_MSG_UC_CALL,
                          g_variant_new("(u@at@ayuut)", sel,
                                        g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, sc, nin, 8),
                                        g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, sin, sin_len, 1),
                                        nout, cap, ref));
            m.serial = serial++;
            uint32_t want = m.serial;
            int rc = dext_ipc_send(fd, &m);
            dext_msg_clear(&m);
            g_assert_cmpint(rc, ==, 0);
            DextMsg r;
            int err = 0;
            rc = wait_reply(fd, want, &r, &err);
            g_assert_cmpint(rc, >=, 0);
            bool ok = predict_ok(sel, nin, sin_len, nout, cap, ref);
            st.uc_calls++;
            if (!ok) {
                st.uc_bad++;
                if (rc != 0) {
                    g_error("selector %u nin %zu sin %zu nout %u cap %u ref %" G_GUINT64_FORMAT
                            ": forbidden by the table but succeeded", sel, nin, sin_len, nout,
                            cap, ref);
                }
                g_assert_cmpint(err, <, 0);
                st.uc_bad_refused++;
            } else {
                st.uc_good++;
                bool expect_ok = true;
                if (sel == SEL_COPY) {
                    expect_ok = sc[0] >= 1 && sc[0] <= DATA_MAX;
                } else if (sel == SEL_ECHO) {
                    expect_ok = sin_len <= cap;
                }
                if (expect_ok != (rc == 1)) {
                    g_error("selector %u (nin %zu sin %zu cap %u arg %" G_GUINT64_FORMAT "): "
                            "expected %s, got %s %d", sel, nin, sin_len, cap, nin ? sc[0] : 0,
                            expect_ok ? "success" : "an error", rc == 1 ? "success" : "error", err);
                }
                if (rc == 1) {
                    st.uc_good_ok++;
                    gsize no = 0, so = 0;
                    GVariant *vo = g_variant_get_child_value(r.body, 0);
                    GVariant *vb = g_variant_get_child_value(r.body, 1);
                    const uint64_t *o = g_variant_get_fixed_array(vo, &no, 8);
                    const uint8_t *ob = g_variant_get_fixed_array(vb, &so, 1);
                    g_assert_cmpuint(no, ==, nout);
                    if (sel == SEL_ECHO) {
                        g_assert_cmpuint(o[0], ==, sc[0] + sc[1] + sc[2]);
                        g_assert_cmpmem(ob, so, sin, sin_len);
                    } else {
                        g_assert_cmpuint(so, ==, 0);
                    }
                    g_variant_unref(vo);
                    g_variant_unref(vb);
                    dext_msg_clear(&r);
                }
            }
            g_free(sin);
        } else if (kind < 88) {
            /* client memory of a random type */
            uint32_t type = g_rand_int_range(rnd, 0, 3) ? (uint32_t)g_rand_int_range(rnd, 0, 4)
                                                       : (uint32_t)hg_u64(rnd);
            DextMsg m, r;
            dext_msg_init(&m, DEXT_MSG_UC_MEMORY, g_variant_new("(uu)", type, (guint32)hg_u64(rnd)));
            m.serial = serial++;
            uint32_t want = m.serial;
            g_assert_cmpint(dext_ipc_send(fd, &m), ==, 0);
            dext_msg_clear(&m);
            int err = 0;
            int rc = wait_reply(fd, want, &r, &err);
            g_assert_cmpint(rc, >=, 0);
            if (type > 1) {
                g_assert_cmpint(rc, ==, 0);
                g_assert_cmpint(err, ==, -EINVAL);
            } else {
                g_assert_cmpint(rc, ==, 1);
                guint64 size, off;
                g_variant_get(r.body, "(tt)", &size, &off);
                g_assert_cmpuint(size, ==, DATA_MAX);
                g_assert_cmpuint(r.nfds, ==, 1);
                /* The range named must lie inside what the fd maps. */
                void *p = mmap(NULL, size, PROT_READ, MAP_SHARED, r.fds[0], (off_t)off);
                g_assert_true(p != MAP_FAILED);
                munmap(p, size);
                dext_msg_clear(&r);
            }
            st.uc_memory++;
        } else if (kind < 96) {
            /* junk: any message, maybe mutated; then UC_METHODS as a probe */
            DextMsg m;
            bool reply;
            if (!hg_message(rnd, g_rand_boolean(rnd) ? DEXT_CH_UC : 0, &m, &reply)) {
                continue;
            }
            m.serial = serial++;
            ssize_t len = dext_msg_encode(&m, buf, sizeof(buf));
            dext_msg_clear(&m);
            if (len < 0) {
                continue;
            }
            if (g_rand_boolean(rnd)) {
                len = (ssize_t)hg_mutate(rnd, buf, (size_t)len, sizeof(buf), 90);
            }
            if (g_rand_int_range(rnd, 0, 25) == 0) {
                len = unframeable(buf);
            }
            hg_unprobe_serial(buf, (size_t)len);
            int rc = send_raw(fd, buf, (size_t)len, -1);
            DextMsg q;
            dext_msg_init(&q, DEXT_MSG_UC_METHODS, NULL);
            q.serial = HG_PROBE_SERIAL | serial++;
            uint32_t want = q.serial;
            if (rc == 0) {
                rc = dext_ipc_send(fd, &q);
            }
            dext_msg_clear(&q);
            int err = 0;
            if (rc == 0) {
                rc = wait_reply(fd, want, NULL, &err);
            }
            st.uc_junk++;
            if (rc < 0) {
                g_assert_true(rc == -ECONNRESET || rc == -EPIPE);
                dext_client_close(c);
                c = uc_open();
                fd = dext_client_fd(c);
                st.uc_reconnects++;
            } else if (rc != 1) {
                g_error("UC_METHODS probe after junk (len %zd) refused: %s", len, g_strerror(-err));
            }
        } else {
            /* close mid-call: a second connection calls and goes away */
            DextConnection *c2 = uc_open();
            DextMsg m;
            uint64_t ms = g_rand_int_range(rnd, 0, 3);
            uint32_t sel = g_rand_boolean(rnd) ? SEL_SLEEP : SEL_COPY;
            if (sel == SEL_COPY) {
                ms = g_rand_int_range(rnd, 1, DATA_MAX);
            }
            dext_msg_init(&m, DEXT_MSG_UC_CALL,
                          g_variant_new("(u@at@ayuut)", sel,
                                        g_variant_new_fixed_array(G_VARIANT_TYPE_UINT64, &ms, 1, 8),
                                        g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, NULL, 0, 1),
                                        table[sel].sout, 0u, (guint64)0));
            m.serial = 1;
            dext_ipc_send(dext_client_fd(c2), &m);
            dext_msg_clear(&m);
            if (g_rand_boolean(rnd)) {
                g_usleep(g_rand_int_range(rnd, 0, 500));
            }
            dext_client_close(c2);
            st.uc_mid_close++;
        }
    }
    dext_client_close(c);
    good_client_check();
}

/* ---- the dext-hostile driver's report ------------------------------------------ */

static GKeyFile *wait_raw_report(const char *path, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;
    while (!g_file_test(path, G_FILE_TEST_EXISTS) && g_get_monotonic_time() < end) {
        char *state = rel_service_field(&dd, "HostileRawDriver", 3);
        bool gone = state && !strcmp(state, "gave-up");
        g_free(state);
        if (gone) {
            char *log = rel_log(&dd);
            g_printerr("%s\n", log);
            g_free(log);
            g_error("dext-hostile ended too often: dextd gave up on it");
        }
        g_usleep(100000);
    }
    char *s = NULL;
    if (!g_file_get_contents(path, &s, NULL, NULL)) {
        return NULL;
    }
    char *grp = g_strconcat("[r]\n", s, NULL);
    GKeyFile *k = g_key_file_new();
    g_assert_true(g_key_file_load_from_data(k, grp, -1, 0, NULL));
    g_free(s);
    g_free(grp);
    return k;
}

static void test_live(void)
{
    char *report = g_build_filename(g_get_tmp_dir(), "dext-hostile-XXXXXX", NULL);
    int tfd = g_mkstemp(report);
    close(tfd);
    unlink(report);
    char *e_report = g_strdup_printf("DEXT_HOSTILE_REPORT=%s", report);
    char *e_iter = g_strdup_printf("DEXT_HOSTILE_ITER=%ld", opt.raw_inputs);
    char *e_seed = g_strdup_printf("DEXT_HOSTILE_SEED=%u", opt.seed);
    const char *env[] = { e_report, e_iter, e_seed, NULL };
    const char *bundles[] = { "dext-hostile-dma", "dext-hostile", NULL };
    g_assert_true(rel_dextd_start(&dd, bundles, env));
    g_assert_true(rel_wait_state(&dd, "HostileDmaDriver", "running", 30000));
    g_assert_true(rel_wait_state(&dd, "HostileRawDriver", "running", 30000));
    if (!rel_sanitized(rel_pid(&dd))) {
        g_printerr("# dextd is NOT built with ASan (set up a build with -Db_sanitize=address,undefined)\n");
        g_assert_false(opt.require_asan);
    } else {
        g_printerr("# dextd runs with ASan+UBSan\n");
    }
    int fds0 = rel_fd_count(rel_pid(&dd));

    gint64 t0 = g_get_monotonic_time();
    gint64 deadline = t0 + (gint64)opt.seconds * G_USEC_PER_SEC;
    gint64 app_deadline = t0 + (gint64)opt.seconds * G_USEC_PER_SEC / 4;
    fuzz_app(opt.app_inputs, app_deadline);
    double app_s = (g_get_monotonic_time() - t0) / 1e6;
    gint64 t1 = g_get_monotonic_time();
    fuzz_uc(opt.uc_inputs, deadline);
    double uc_s = (g_get_monotonic_time() - t1) / 1e6;

    GKeyFile *k = wait_raw_report(report, 600000);
    g_assert_nonnull(k);
    guint64 raw_in = g_key_file_get_uint64(k, "r", "inputs", NULL);
    guint64 raw_framed = g_key_file_get_uint64(k, "r", "framed_requests", NULL);
    guint64 raw_unans = g_key_file_get_uint64(k, "r", "unanswered", NULL);
    guint64 raw_syncs = g_key_file_get_uint64(k, "r", "syncs", NULL);
    guint64 raw_err = g_key_file_get_uint64(k, "r", "errors", NULL);
    double raw_s = g_key_file_get_double(k, "r", "seconds", NULL);
    g_key_file_free(k);
    unlink(report);
    g_assert_cmpuint(raw_unans, ==, 0);
    g_assert_cmpuint(raw_syncs, ==, raw_in);
    g_assert_true(rel_wait_state(&dd, "HostileRawDriver", "running", 1000));

    good_client_check();
    g_assert_true(rel_alive(&dd));
    /* No fd leak in dextd from all those connections and refused fds
     * (connections the app just closed may take a moment to be reaped). */
    int fds1 = rel_fd_count(rel_pid(&dd));
    for (int i = 0; i < 100 && fds1 > fds0; i++) {
        g_usleep(30000);
        fds1 = rel_fd_count(rel_pid(&dd));
    }
    if (fds1 > fds0) {
        char *cmd = g_strdup_printf("ls -l /proc/%d/fd >&2", (int)rel_pid(&dd));
        if (system(cmd)) {
        }
        g_free(cmd);
    }
    g_assert_cmpint(fds1, <=, fds0);

    g_printerr("# app socket: %" G_GUINT64_FORMAT " inputs in %.1f s (%.0f/s), %" G_GUINT64_FORMAT
               " framed requests answered (%" G_GUINT64_FORMAT " errors), %" G_GUINT64_FORMAT
               " connections dropped for broken framing\n", st.app_inputs, app_s,
               st.app_inputs / app_s, st.app_answered, st.app_errors, st.app_reconnects);
    g_printerr("# user client: %" G_GUINT64_FORMAT " calls (%" G_GUINT64_FORMAT " forbidden, all "
               "refused; %" G_GUINT64_FORMAT " allowed, %" G_GUINT64_FORMAT " succeeded), %"
               G_GUINT64_FORMAT " memory requests, %" G_GUINT64_FORMAT " junk, %" G_GUINT64_FORMAT
               " closed mid-call, %" G_GUINT64_FORMAT " reconnects; %.1f s (%.0f inputs/s)\n",
               st.uc_calls, st.uc_bad, st.uc_good, st.uc_good_ok, st.uc_memory, st.uc_junk,
               st.uc_mid_close, st.uc_reconnects, uc_s,
               (st.uc_calls + st.uc_memory + st.uc_junk + st.uc_mid_close) / uc_s);
    g_printerr("# driver channels (dext-hostile): %" G_GUINT64_FORMAT " inputs in %.1f s (%.0f/s), "
               "%" G_GUINT64_FORMAT " framed requests all answered, %" G_GUINT64_FORMAT
               " errors\n", raw_in, raw_s, raw_in / (raw_s > 0 ? raw_s : 1), raw_framed, raw_err);
    g_printerr("# well-behaved client checks: %" G_GUINT64_FORMAT " (%" G_GUINT64_FORMAT
               " DMA copies verified)\n", st.checks, st.copies_verified);
    g_assert_cmpuint(st.uc_bad, ==, st.uc_bad_refused);

    int status = rel_dextd_stop(&dd, 30000);
    char *log = rel_log(&dd);
    const char *bad = rel_log_problem(log);
    if (bad) {
        g_printerr("%.*s\n", 2000, bad);
    }
    g_assert_null(bad);
    g_assert_true(WIFEXITED(status));
    g_assert_cmpint(WEXITSTATUS(status), ==, 0);
    g_free(log);
    rel_cleanup(&dd, false);
    g_free(report);
    g_free(e_report);
    g_free(e_iter);
    g_free(e_seed);
}

/* Guards: a driver answering START with a reply of another message type
 * (a well-formed PING reply naming START's serial) makes that Start fail;
 * dextd does not read a result out of the wrong body. */
static void test_bad_start_reply(void)
{
    const char *env[] = { "DEXT_HOSTILE_RAW=bad-start-reply", NULL };
    const char *bundles[] = { "dext-hostile", NULL };
    g_assert_true(rel_dextd_start(&dd, bundles, env));
    gint64 end = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    char *log = NULL;
    while (g_get_monotonic_time() < end) {
        g_free(log);
        log = rel_log(&dd);
        if (strstr(log, "HostileRawDriver Start") || strstr(log, "started HostileRawDriver") ||
            rel_log_problem(log)) {
            break;
        }
        g_usleep(50000);
    }
    g_usleep(300000);
    char *state = rel_service_field(&dd, "HostileRawDriver", 3);
    g_free(log);
    log = rel_log(&dd);
    g_assert_true(rel_alive(&dd));
    int status = rel_dextd_stop(&dd, 20000);
    const char *bad = rel_log_problem(log);
    if (bad) {
        g_printerr("%.*s\n", 600, bad);
    }
    g_assert_null(bad);
    g_assert_nonnull(strstr(log, "PING reply to a pending START: treated as failed"));
    g_assert_cmpstr(state, !=, "running");
    g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    g_free(state);
    g_free(log);
    rel_cleanup(&dd, false);
}

int main(int argc, char **argv)
{
    GOptionEntry entries[] = {
        { "seconds", 0, 0, G_OPTION_ARG_INT, &opt.seconds, "Time budget of the app/user-client phases", "N" },
        { "uc-inputs", 0, 0, G_OPTION_ARG_INT64, &opt.uc_inputs, "User-client inputs (max)", "N" },
        { "app-inputs", 0, 0, G_OPTION_ARG_INT64, &opt.app_inputs, "App-socket inputs (max)", "N" },
        { "raw-inputs", 0, 0, G_OPTION_ARG_INT64, &opt.raw_inputs, "Inputs dext-hostile sends on its channels", "N" },
        { "fuzz-seed", 0, 0, G_OPTION_ARG_INT, &opt.seed, "Random seed", "N" },
        { "require-asan", 0, 0, G_OPTION_ARG_NONE, &opt.require_asan, "Fail unless dextd runs with ASan", NULL },
        { NULL },
    };
    g_test_init(&argc, &argv, NULL);
    GOptionContext *ctx = g_option_context_new("- hostile input against a live dextd");
    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, NULL)) {
        return 2;
    }
    g_option_context_free(ctx);
    rnd = g_rand_new_with_seed(opt.seed);
    g_printerr("# seed %u\n", opt.seed);
    g_test_add_func("/dextd-fuzz/live/app-uc-driver-channels", test_live);
    g_test_add_func("/dextd-fuzz/ctrl/start-reply-of-wrong-type", test_bad_start_reply);
    return g_test_run();
}
