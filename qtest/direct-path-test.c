/*
 * The fork's qtest direct path
 * (hw/patches/0006-qtest-direct-mmio-channel-and-msi-eventfd): MMIO channels
 * and MSI eventfds, against a real device (dextlab-dma) so that accesses hit
 * its registers and its MSI-X vectors.
 *
 * The runtime's qtest platform hands these to driver processes, which are
 * less trusted than the qtest client: every test here checks, besides the
 * behaviour, that QEMU is still answering afterwards.  The record layout is
 * restated from harness/common/mmio-channel.h (this test does not depend on
 * the runtime), so a change on either side that breaks the wire format
 * fails here.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "dextlab-dma-lib.h"
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#define CH_WAIT_MS      5000

enum { CH_WRITE = 1, CH_READ = 2, CH_SYNC = 3 };

typedef struct ChReq {
    uint8_t op, size, bar, pad0;
    uint32_t pad1;
    uint64_t off;
    uint64_t val;
} ChReq;
typedef struct ChResp {
    int32_t status;
    uint32_t pad;
    uint64_t val;
} ChResp;
G_STATIC_ASSERT(sizeof(ChReq) == 24);
G_STATIC_ASSERT(sizeof(ChResp) == 16);

/* ------------------------------------------------------------------------ */
/* Channel client */

/* Opens a channel over BAR0 (registers) and BAR2 (device memory). */
static int ch_open(DxlDev *d, unsigned *id)
{
    uint64_t base[3] = { d->bar0_addr, 0, d->bar2_addr };
    uint64_t len[3] = { DXL_DMA_BAR0_SIZE, 0, DXL_DMA_DEVMEM_SIZE };
    int sv[2];

    g_assert_cmpint(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv),
                    ==, 0);
    *id = qtest_mmio_channel(d->qts, base, len, 3, sv[1]);
    close(sv[1]);
    return sv[0];
}

static bool ch_wait(int fd, short events, int ms)
{
    struct pollfd pfd = { .fd = fd, .events = events };

    return poll(&pfd, 1, ms) == 1;
}

static void ch_send_raw(int fd, const void *buf, size_t len)
{
    g_assert_cmpint(send(fd, buf, len, MSG_NOSIGNAL), ==, len);
}

static void ch_send(int fd, uint8_t op, uint8_t size, uint8_t bar,
                    uint64_t off, uint64_t val)
{
    ChReq r = { .op = op, .size = size, .bar = bar, .off = off, .val = val };

    ch_send_raw(fd, &r, sizeof(r));
}

static ChResp ch_reply(int fd)
{
    ChResp resp;

    g_assert_true(ch_wait(fd, POLLIN, CH_WAIT_MS));
    g_assert_cmpint(recv(fd, &resp, sizeof(resp), 0), ==, sizeof(resp));
    return resp;
}

static int ch_read(int fd, uint8_t size, uint8_t bar, uint64_t off,
                   uint64_t *val)
{
    ChResp resp;

    ch_send(fd, CH_READ, size, bar, off, 0);
    resp = ch_reply(fd);
    *val = resp.val;
    return resp.status;
}

static void ch_sync(int fd)
{
    ChResp resp;

    ch_send(fd, CH_SYNC, 0, 0, 0, 0);
    resp = ch_reply(fd);
    g_assert_cmpint(resp.status, ==, 0);
    g_assert_cmphex(resp.val, ==, 0);
}

/* Nothing more is queued for us (no unsolicited reply). */
static void ch_assert_quiet(int fd)
{
    g_assert_false(ch_wait(fd, POLLIN, 50));
}

/* QEMU has closed its end: EOF within the bounded wait. */
static void ch_assert_eof(int fd)
{
    char buf[64];

    g_assert_true(ch_wait(fd, POLLIN, CH_WAIT_MS));
    g_assert_cmpint(recv(fd, buf, sizeof(buf), MSG_DONTWAIT), ==, 0);
}

/* QEMU still serves the qtest stream and the device still works. */
static void assert_qemu_alive(DxlDev *d)
{
    g_assert_cmphex(qtest_readl(d->qts, d->bar0_addr + DXL_REG_ID), ==,
                    DXL_DMA_ID_MAGIC);
}

/* ------------------------------------------------------------------------ */
/* MMIO channel */

/*
 * Writes through the channel reach the device's registers and memory as
 * qtest's writel would (read back over qtest after a SYNC), and reads
 * through it see what qtest wrote, for every access size.  Guards the
 * address translation (BAR base + offset), the byte order and SYNC's
 * ordering promise.
 */
static void test_write_read(void)
{
    DxlDev *d = dxl_start(false);
    static const uint8_t sizes[] = { 1, 2, 4, 8 };
    unsigned id;
    uint64_t val;
    int fd = ch_open(d, &id);

    g_assert_cmpuint(id, >, 0);
    g_assert_cmpint(ch_read(fd, 4, 0, DXL_REG_ID, &val), ==, 0);
    g_assert_cmphex(val, ==, DXL_DMA_ID_MAGIC);
    g_assert_cmpint(ch_read(fd, 4, 0, DXL_REG_DEVMEM_SIZE, &val), ==, 0);
    g_assert_cmphex(val, ==, DXL_DMA_DEVMEM_SIZE);

    /* channel -> qtest */
    ch_send(fd, CH_WRITE, 4, 0, DXL_REG_SCRATCH, 0xa5a5f00d);
    ch_sync(fd);
    g_assert_cmphex(qtest_readl(d->qts, d->bar0_addr + DXL_REG_SCRATCH), ==,
                    0xa5a5f00d);
    /* qtest -> channel */
    qtest_writel(d->qts, d->bar0_addr + DXL_REG_SCRATCH, 0x12345678);
    g_assert_cmpint(ch_read(fd, 4, 0, DXL_REG_SCRATCH, &val), ==, 0);
    g_assert_cmphex(val, ==, 0x12345678);

    /* Device memory (BAR2) at every size, both directions */
    for (unsigned i = 0; i < ARRAY_SIZE(sizes); i++) {
        uint64_t off = 0x1000 + 0x10 * i;
        uint64_t pattern = 0x8877665544332211ULL;
        uint64_t mask = sizes[i] == 8 ? UINT64_MAX :
                        (1ULL << (8 * sizes[i])) - 1;

        qtest_writeq(d->qts, d->bar2_addr + off, 0);
        ch_send(fd, CH_WRITE, sizes[i], 2, off, pattern);
        ch_sync(fd);
        g_assert_cmphex(qtest_readq(d->qts, d->bar2_addr + off), ==,
                        pattern & mask);

        qtest_writeq(d->qts, d->bar2_addr + off, ~pattern);
        g_assert_cmpint(ch_read(fd, sizes[i], 2, off, &val), ==, 0);
        g_assert_cmphex(val, ==, ~pattern & mask);
    }
    /* The last byte of the window is reachable */
    g_assert_cmpint(ch_read(fd, 1, 2, DXL_DMA_DEVMEM_SIZE - 1, &val), ==, 0);

    qtest_mmio_channel_close(d->qts, id);
    close(fd);
    dxl_stop(d);
}

/*
 * An access outside a BAR's window gets -EFAULT (READ) or is dropped
 * (WRITE), including offsets that would wrap around; the device is not
 * touched and QEMU keeps serving the channel and qtest.  Guards the window
 * check that confines a driver to its own device's BARs.
 */
static void test_window(void)
{
    DxlDev *d = dxl_start(false);
    unsigned id;
    uint64_t val;
    int fd = ch_open(d, &id);

    g_assert_cmpint(ch_read(fd, 4, 0, DXL_DMA_BAR0_SIZE, &val), ==, -EFAULT);
    g_assert_cmpint(ch_read(fd, 8, 0, DXL_DMA_BAR0_SIZE - 4, &val), ==,
                    -EFAULT);
    g_assert_cmpint(ch_read(fd, 4, 2, UINT64_MAX - 1, &val), ==, -EFAULT);
    g_assert_cmpint(ch_read(fd, 2, 2, DXL_DMA_DEVMEM_SIZE - 1, &val), ==,
                    -EFAULT);
    g_assert_cmphex(val, ==, 0);

    /* A write just past BAR0 would land in whatever follows it */
    qtest_writel(d->qts, d->bar0_addr + DXL_REG_SCRATCH, 0x600d);
    ch_send(fd, CH_WRITE, 4, 0, DXL_DMA_BAR0_SIZE + DXL_REG_SCRATCH, 0xbad);
    ch_send(fd, CH_WRITE, 4, 0, UINT64_MAX - 3, 0xbad);
    ch_sync(fd);
    ch_assert_quiet(fd);
    g_assert_cmphex(qtest_readl(d->qts, d->bar0_addr + DXL_REG_SCRATCH), ==,
                    0x600d);

    g_assert_cmpint(ch_read(fd, 4, 0, DXL_REG_ID, &val), ==, 0);
    g_assert_cmphex(val, ==, DXL_DMA_ID_MAGIC);
    assert_qemu_alive(d);
    close(fd);
    dxl_stop(d);
}

/*
 * Garbage records: messages of the wrong length, unknown ops, bad sizes and
 * BARs (out of range, or a pair given with length 0).  Everything but a
 * WRITE is answered -EINVAL, in order; a bad WRITE is dropped without a
 * reply (the SYNC after it is the next reply).  Guards the record parser
 * against a buggy or hostile driver.
 */
static void test_bad_records(void)
{
    DxlDev *d = dxl_start(false);
    static const struct { uint8_t op, size, bar; } bad[] = {
        { 0, 4, 0 }, { 4, 4, 0 }, { 0xff, 4, 0 },       /* op */
        { CH_READ, 0, 0 }, { CH_READ, 3, 0 }, { CH_READ, 16, 0 }, /* size */
        { CH_READ, 4, 1 }, { CH_READ, 4, 6 }, { CH_READ, 4, 0xff }, /* bar */
    };
    uint8_t big[64] = { CH_READ, 4, 0 };
    unsigned id;
    uint64_t val;
    ChResp resp;
    int fd = ch_open(d, &id);

    for (unsigned i = 0; i < ARRAY_SIZE(bad); i++) {
        ch_send(fd, bad[i].op, bad[i].size, bad[i].bar, DXL_REG_ID, 0);
        resp = ch_reply(fd);
        g_assert_cmpint(resp.status, ==, -EINVAL);
        g_assert_cmphex(resp.val, ==, 0);
    }
    /* Short and long messages, also one beyond the receive buffer */
    ch_send_raw(fd, big, 10);
    g_assert_cmpint(ch_reply(fd).status, ==, -EINVAL);
    ch_send_raw(fd, big, 25);
    g_assert_cmpint(ch_reply(fd).status, ==, -EINVAL);
    ch_send_raw(fd, big, sizeof(big));
    g_assert_cmpint(ch_reply(fd).status, ==, -EINVAL);
    ch_send_raw(fd, big, 1);
    g_assert_cmpint(ch_reply(fd).status, ==, -EINVAL);

    /* Bad WRITEs: no reply, no effect */
    qtest_writel(d->qts, d->bar0_addr + DXL_REG_SCRATCH, 0x600d);
    ch_send(fd, CH_WRITE, 3, 0, DXL_REG_SCRATCH, 0xbad);
    ch_send(fd, CH_WRITE, 4, 1, DXL_REG_SCRATCH, 0xbad);
    ch_send(fd, CH_WRITE, 4, 9, DXL_REG_SCRATCH, 0xbad);
    big[0] = CH_WRITE;
    ch_send_raw(fd, big, 12);
    ch_sync(fd);
    ch_assert_quiet(fd);
    g_assert_cmphex(qtest_readl(d->qts, d->bar0_addr + DXL_REG_SCRATCH), ==,
                    0x600d);

    /* The channel still works */
    g_assert_cmpint(ch_read(fd, 4, 0, DXL_REG_SCRATCH, &val), ==, 0);
    g_assert_cmphex(val, ==, 0x600d);
    assert_qemu_alive(d);
    close(fd);
    dxl_stop(d);
}

/*
 * mmio_channel_close: the peer sees EOF, the ID is gone (a second close
 * fails), and IDs are not reused.  Guards revocation, which the runtime
 * relies on when a driver stops or dies.
 */
static void test_close(void)
{
    DxlDev *d = dxl_start(false);
    g_autofree char *reply = NULL;
    unsigned id, id2;
    uint64_t val;
    int fd = ch_open(d, &id);
    int fd2;

    g_assert_cmpint(ch_read(fd, 4, 0, DXL_REG_ID, &val), ==, 0);
    qtest_mmio_channel_close(d->qts, id);
    ch_assert_eof(fd);
    g_assert_cmpint(send(fd, &(ChReq){ .op = CH_SYNC }, sizeof(ChReq),
                         MSG_NOSIGNAL), ==, -1);
    g_assert_cmpint(errno, ==, EPIPE);
    reply = qtest_command_fd(d->qts, -1, "mmio_channel_close %u", id);
    g_assert_cmpstr(reply, ==, "FAIL unknown channel");

    fd2 = ch_open(d, &id2);
    g_assert_cmpuint(id2, >, id);
    g_assert_cmpint(ch_read(fd2, 4, 0, DXL_REG_ID, &val), ==, 0);
    close(fd);

    /* A peer that closes its end loses the channel in QEMU too */
    close(fd2);
    assert_qemu_alive(d);
    g_free(reply);
    reply = qtest_command_fd(d->qts, -1, "mmio_channel_close %u", id2);
    g_assert_cmpstr(reply, ==, "FAIL unknown channel");
    dxl_stop(d);
}

/*
 * A peer that sends READs and never reads the replies: QEMU cannot send a
 * reply at once, closes the channel rather than block, and keeps answering
 * qtest.  Guards the main loop against a stuck driver.
 */
static void test_stuck_peer(void)
{
    DxlDev *d = dxl_start(false);
    g_autofree char *reply = NULL;
    ChReq r = { .op = CH_READ, .size = 4, .off = DXL_REG_ID };
    gint64 deadline = g_get_monotonic_time() + 20 * G_USEC_PER_SEC;
    unsigned id;
    int fd = ch_open(d, &id);

    for (;;) {
        ssize_t n = send(fd, &r, sizeof(r), MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            break;      /* gone (ECONNRESET: with our requests unread) */
        }
        if (n < 0) {
            g_assert_cmpint(errno, ==, EAGAIN);
            /* our send buffer is full of unread requests: let QEMU run */
            ch_wait(fd, POLLOUT, 10);
        }
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
    }
    assert_qemu_alive(d);
    reply = qtest_command_fd(d->qts, -1, "mmio_channel_close %u", id);
    g_assert_cmpstr(reply, ==, "FAIL unknown channel");
    close(fd);
    dxl_stop(d);
}

/*
 * 64 channels at once, each served independently; a 65th is refused, and
 * closing one makes room.  Guards the channel table and its limit.
 */
static void test_many_channels(void)
{
    DxlDev *d = dxl_start(false);
    g_autofree char *reply = NULL;
    unsigned id[64], extra_id;
    int fd[64], sv[2], extra;
    uint64_t base = d->bar0_addr, len = DXL_DMA_BAR0_SIZE, val;

    for (unsigned i = 0; i < 64; i++) {
        fd[i] = ch_open(d, &id[i]);
        g_assert_cmpuint(id[i], >, i ? id[i - 1] : 0);
        /* Interleaved with the other channels' traffic */
        ch_send(fd[i], CH_WRITE, 4, 0, DXL_REG_SCRATCH, i);
        ch_sync(fd[i]);
        g_assert_cmpint(ch_read(fd[i / 2], 4, 0, DXL_REG_SCRATCH, &val), ==, 0);
        g_assert_cmpuint(val, ==, i);
    }
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), ==, 0);
    reply = qtest_command_fd(d->qts, sv[1], "mmio_channel 0x%" PRIx64
                             " 0x%" PRIx64, base, len);
    g_assert_cmpstr(reply, ==, "FAIL too many channels");
    close(sv[1]);
    /* QEMU did not keep the refused fd */
    ch_assert_eof(sv[0]);
    close(sv[0]);

    qtest_mmio_channel_close(d->qts, id[10]);
    ch_assert_eof(fd[10]);
    extra = ch_open(d, &extra_id);
    g_assert_cmpuint(extra_id, >, id[63]);
    g_assert_cmpint(ch_read(extra, 4, 0, DXL_REG_ID, &val), ==, 0);
    for (unsigned i = 0; i < 64; i++) {
        if (i != 10) {
            g_assert_cmpint(ch_read(fd[i], 4, 0, DXL_REG_ID, &val), ==, 0);
            g_assert_cmphex(val, ==, DXL_DMA_ID_MAGIC);
        }
        close(fd[i]);
    }
    close(extra);
    assert_qemu_alive(d);
    dxl_stop(d);
}

/*
 * Bad command lines: missing fd, wrong argument counts, bad numbers, more
 * than 6 BARs, a window that wraps around, the wrong kind of fd, unknown
 * IDs and data values.  Each gets a FAIL reply, QEMU closes every fd it
 * was given and does not keep (the peer sees EOF), and keeps running.
 * Guards the command parser: a bad line from the client must not abort QEMU.
 */
static void test_bad_commands(void)
{
    DxlDev *d = dxl_start(false);
    static const char *const bad_channel[] = {
        "mmio_channel",
        "mmio_channel 0xe0000000",
        "mmio_channel 0xe0000000 0x1000 0x0",
        "mmio_channel 0xe0000000 0x10zz",
        "mmio_channel -x 0x1000",
        "mmio_channel 0xffffffffffff0000 0x10001",
        "mmio_channel 1 0 2 0 3 0 4 0 5 0 6 0 7 0",
        "mmio_channel 0xe0000000 0x1000 0x10000000000000000 1",
    };
    static const char *const bad_fdless[] = {
        "msi_eventfd_clear 0x41",
        "msi_eventfd_stats 0x41",
        "msi_eventfd_clear",
        "msi_eventfd_stats 0x100000000",
        "mmio_channel_close 4242",
        "mmio_channel_close",
        "mmio_channel_close 0",
        "mmio_channel_close zz",
    };
    int sv[2], st[2], efd, p[2];
    char *reply;

    for (unsigned i = 0; i < ARRAY_SIZE(bad_channel); i++) {
        g_assert_cmpint(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), ==, 0);
        reply = qtest_command_fd(d->qts, sv[1], "%s", bad_channel[i]);
        g_assert_true(g_str_has_prefix(reply, "FAIL "));
        g_free(reply);
        close(sv[1]);
        ch_assert_eof(sv[0]);
        close(sv[0]);
    }
    reply = qtest_command_fd(d->qts, -1, "mmio_channel 0xe0000000 0x1000");
    g_assert_cmpstr(reply, ==, "FAIL no fd");
    g_free(reply);
    /* A stream socket would merge records */
    g_assert_cmpint(socketpair(AF_UNIX, SOCK_STREAM, 0, st), ==, 0);
    reply = qtest_command_fd(d->qts, st[1], "mmio_channel 0xe0000000 0x1000");
    g_assert_cmpstr(reply, ==, "FAIL not a SOCK_SEQPACKET socket");
    g_free(reply);
    close(st[1]);
    ch_assert_eof(st[0]);
    close(st[0]);

    reply = qtest_command_fd(d->qts, -1, "msi_eventfd 0x41");
    g_assert_cmpstr(reply, ==, "FAIL no fd");
    g_free(reply);
    efd = eventfd(0, EFD_CLOEXEC);
    g_assert_cmpint(efd, >=, 0);
    reply = qtest_command_fd(d->qts, efd, "msi_eventfd 0x100000000");
    g_assert_true(g_str_has_prefix(reply, "FAIL "));
    g_free(reply);
    reply = qtest_command_fd(d->qts, efd, "msi_eventfd 0x41 0x42");
    g_assert_true(g_str_has_prefix(reply, "FAIL "));
    g_free(reply);
    close(efd);
    /* A pipe could block QEMU once full: only eventfds are taken */
    g_assert_cmpint(pipe(p), ==, 0);
    reply = qtest_command_fd(d->qts, p[1], "msi_eventfd 0x41");
    g_assert_cmpstr(reply, ==, "FAIL not an eventfd");
    g_free(reply);
    close(p[1]);
    g_assert_true(ch_wait(p[0], POLLIN, CH_WAIT_MS));   /* EOF: closed */
    g_assert_cmpint(read(p[0], &efd, 1), ==, 0);
    close(p[0]);

    for (unsigned i = 0; i < ARRAY_SIZE(bad_fdless); i++) {
        reply = qtest_command_fd(d->qts, -1, "%s", bad_fdless[i]);
        g_assert_true(g_str_has_prefix(reply, "FAIL "));
        g_free(reply);
    }
    assert_qemu_alive(d);
    dxl_stop(d);
}

/* ------------------------------------------------------------------------ */
/* MSI eventfds */


/* Raise queue q's interrupt cause: MSI-X vector 1 + q. */
static void dxl_fire_queue(DxlDev *d, unsigned q)
{
    qtest_writel(d->qts, d->bar0_addr + DXL_REG_INT_SET, DXL_INT_QUEUE(q));
}

/* The eventfd's counter, 0 if it was not signalled. */
static uint64_t efd_take(int efd)
{
    uint64_t v = 0;

    if (ch_wait(efd, POLLIN, 0)) {
        g_assert_cmpint(read(efd, &v, sizeof(v)), ==, sizeof(v));
    }
    return v;
}

static uint64_t monotonic_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/*
 * A bound MSI-X vector is signalled on its eventfd, counted with a
 * CLOCK_MONOTONIC timestamp, and no longer reported as "IRQ msi"; an
 * unbound one still is; nothing is signalled before msi_intercept; a
 * rebind moves the vector to the new eventfd and a clear gives it back to
 * the qtest stream.  Guards the interrupt half of the direct path.
 */
static void test_msi_eventfd(void)
{
    DxlDev *d = dxl_start(false);
    uint32_t bound = 0x40 + DXL_DMA_VEC_QUEUE(0);
    uint32_t unbound = 0x40 + DXL_DMA_VEC_QUEUE(1);
    g_autofree char *reply = NULL;
    uint64_t count, last_ns, t0, t1, addr;
    uint32_t data;
    int efd = eventfd(0, EFD_CLOEXEC);
    int efd2 = eventfd(0, EFD_CLOEXEC);

    g_assert_cmpint(efd, >=, 0);
    g_assert_cmpint(efd2, >=, 0);
    dxl_msix_setup(d);
    qtest_msi_eventfd(d->qts, bound, efd);

    /* Without interception the message is delivered as usual */
    dxl_fire_queue(d, 0);
    g_assert_cmpuint(efd_take(efd), ==, 0);
    qtest_msi_eventfd_stats(d->qts, bound, &count, &last_ns);
    g_assert_cmpuint(count, ==, 0);
    g_assert_cmpuint(last_ns, ==, 0);

    qtest_msi_intercept(d->qts);
    t0 = monotonic_ns();
    dxl_fire_queue(d, 0);
    t1 = monotonic_ns();
    g_assert_cmpuint(qtest_msi_pending(d->qts), ==, 0);
    g_assert_cmpuint(efd_take(efd), ==, 1);
    qtest_msi_eventfd_stats(d->qts, bound, &count, &last_ns);
    g_assert_cmpuint(count, ==, 1);
    g_assert_cmpuint(last_ns, >=, t0);
    g_assert_cmpuint(last_ns, <=, t1);

    /* The unbound vector still comes over qtest */
    dxl_fire_queue(d, 1);
    g_assert_true(qtest_msi_pop(d->qts, &addr, &data));
    g_assert_cmphex(addr, ==, DXL_APIC_ADDR);
    g_assert_cmphex(data, ==, unbound);
    g_assert_cmpuint(efd_take(efd), ==, 0);

    /* Signals accumulate in the counter until read */
    dxl_fire_queue(d, 0);
    dxl_fire_queue(d, 0);
    g_assert_cmpuint(efd_take(efd), ==, 2);
    qtest_msi_eventfd_stats(d->qts, bound, &count, &last_ns);
    g_assert_cmpuint(count, ==, 3);

    /* A write through an MMIO channel raises it the same way */
    {
        unsigned id;
        int fd = ch_open(d, &id);

        ch_send(fd, CH_WRITE, 4, 0, DXL_REG_INT_SET, DXL_INT_QUEUE(0));
        ch_sync(fd);
        g_assert_cmpuint(efd_take(efd), ==, 1);
        qtest_mmio_channel_close(d->qts, id);
        close(fd);
    }

    /* Rebinding replaces the eventfd and starts a new count */
    qtest_msi_eventfd(d->qts, bound, efd2);
    dxl_fire_queue(d, 0);
    g_assert_cmpuint(efd_take(efd2), ==, 1);
    g_assert_cmpuint(efd_take(efd), ==, 0);
    qtest_msi_eventfd_stats(d->qts, bound, &count, &last_ns);
    g_assert_cmpuint(count, ==, 1);
    g_assert_cmpuint(qtest_msi_pending(d->qts), ==, 0);

    /* Cleared: reported again, and no stats any more */
    qtest_msi_eventfd_clear(d->qts, bound);
    dxl_fire_queue(d, 0);
    g_assert_cmpuint(efd_take(efd2), ==, 0);
    g_assert_true(qtest_msi_pop(d->qts, &addr, &data));
    g_assert_cmphex(data, ==, bound);
    reply = qtest_command_fd(d->qts, -1, "msi_eventfd_stats 0x%x", bound);
    g_assert_cmpstr(reply, ==, "FAIL not bound");

    close(efd);
    close(efd2);
    dxl_stop(d);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/qtest/direct/msi-eventfd", test_msi_eventfd);
    qtest_add_func("/qtest/direct/mmio-channel/write-read", test_write_read);
    qtest_add_func("/qtest/direct/mmio-channel/window", test_window);
    qtest_add_func("/qtest/direct/mmio-channel/bad-records", test_bad_records);
    qtest_add_func("/qtest/direct/mmio-channel/close", test_close);
    qtest_add_func("/qtest/direct/mmio-channel/stuck-peer", test_stuck_peer);
    qtest_add_func("/qtest/direct/mmio-channel/many-channels",
                   test_many_channels);
    qtest_add_func("/qtest/direct/bad-commands", test_bad_commands);
    return g_test_run();
}
