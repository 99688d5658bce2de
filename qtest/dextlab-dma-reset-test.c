/*
 * qtests for dextlab-dma under reset and migration: register reset, queue
 * reset, FLR and system reset in the middle of DMA stop the engine cleanly
 * (no write to guest memory afterwards, registers at their reset values,
 * the device usable again); migration in the middle of a descriptor stream
 * keeps every queue position and the in-flight descriptor.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "dextlab-dma-lib.h"
#include "migration-helpers.h"

#define BIG         (16 * 1024 * 1024)
#define PER_Q       4

typedef struct Busy {
    DxlRing r[DXL_DMA_NUM_QUEUES];
    uint64_t src;
    uint64_t dst[DXL_DMA_NUM_QUEUES];
} Busy;

/* Give every queue PER_Q 16 MiB copies: several hundred MiB of work. */
static void busy_start(DxlDev *d, Busy *b)
{
    unsigned q, k;

    b->src = dxl_alloc(d, BIG, 4096);
    dxl_fill_random(dxl_ptr(d, b->src), 4096);
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        dxl_ring_init(d, &b->r[q], q, 8);
        b->dst[q] = dxl_alloc(d, BIG, 4096);
        for (k = 0; k < PER_Q; k++) {
            dxl_ring_post(&b->r[q], DXL_OP_COPY, DXL_DESC_F_IRQ, BIG, b->src,
                          b->dst[q], k);
        }
    }
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        dxl_ring_kick(&b->r[q]);
    }
}

static unsigned busy_completions(DxlDev *d, Busy *b)
{
    unsigned q, k, n = 0;

    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        for (k = 0; k < b->r[q].size; k++) {
            struct dxl_dma_cpl *c = dxl_ptr(d, b->r[q].cq + k * sizeof(*c));

            n += !!(c->flags & DXL_CPL_F_PHASE);
        }
    }
    return n;
}

/*
 * After a reset: poison everything the engine could still write, let QEMU
 * run for a while, and check nothing changed.
 */
static void busy_check_stopped(DxlDev *d, Busy *b)
{
    unsigned q, i;
    uint8_t *p;

    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        memset(dxl_ptr(d, b->dst[q]), 0x55, BIG);
        memset(dxl_ptr(d, b->r[q].cq), 0, b->r[q].size * 16);
    }
    for (i = 0; i < 20; i++) {
        g_usleep(1000);
        qtest_clock_step(d->qts, 1000 * 1000);
    }
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        p = dxl_ptr(d, b->dst[q]);
        g_assert(p[0] == 0x55 && memcmp(p, p + 1, BIG - 1) == 0);
    }
    g_assert_cmpuint(busy_completions(d, b), ==, 0);
}

/* Registers are back at their reset values. */
static void check_reset_values(DxlDev *d)
{
    unsigned q;

    g_assert_cmphex(dxl_rd(d, DXL_REG_CTRL), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_INT_STATUS), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_INT_MASK), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_ERR_COUNT), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_STAT_DESC_LO), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_STATUS) &
                    (DXL_STATUS_READY | DXL_STATUS_BUSY), ==, 0);
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_CTRL)), ==, 0);
        g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_STATUS)), ==, 0);
        g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_SQ_BASE_LO)), ==, 0);
        g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_SQ_HEAD)), ==, 0);
        g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_CQ_TAIL)), ==, 0);
    }
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-desc"), ==, 0);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-bytes"), ==, 0);
}

static void check_works(DxlDev *d)
{
    uint64_t src = dxl_alloc(d, 1 << 20, 4096);
    uint64_t dst = dxl_alloc(d, 1 << 20, 4096);
    DxlRing r;
    struct dxl_dma_cpl c;

    dxl_fill_random(dxl_ptr(d, src), 1 << 20);
    dxl_ring_init(d, &r, 5, 4);
    dxl_ring_run(&r, DXL_OP_COPY, 0, 1 << 20, src, dst, 77, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    g_assert(memcmp(dxl_ptr(d, src), dxl_ptr(d, dst), 1 << 20) == 0);
}

typedef enum { RESET_REG, RESET_FLR, RESET_SYSTEM } ResetKind;

typedef struct ResetCase {
    bool q35;
    ResetKind kind;
} ResetCase;

/*
 * Reset with all eight queues busy.  Guards the engine's teardown: the bottom
 * half and timers cancelled, no mapping kept across slices, so nothing
 * touches guest memory once the reset returns.
 */
static void test_reset_mid_transfer(const void *data)
{
    const ResetCase *rc = data;
    DxlDev *d = dxl_start(rc->q35);
    Busy b;
    uint8_t exp;

    busy_start(d, &b);
    switch (rc->kind) {
    case RESET_REG:
        dxl_wr(d, DXL_REG_CTRL, DXL_CTRL_RESET);
        break;
    case RESET_FLR:
        exp = qpci_find_capability(d->pdev, PCI_CAP_ID_EXP, 0);
        g_assert(exp);
        qpci_config_writew(d->pdev, exp + PCI_EXP_DEVCTL,
                           qpci_config_readw(d->pdev, exp + PCI_EXP_DEVCTL) |
                           PCI_EXP_DEVCTL_BCR_FLR);
        /* FLR cleared the command register and BARs: map them again */
        g_assert_cmphex(qpci_config_readw(d->pdev, PCI_COMMAND) &
                        PCI_COMMAND_MEMORY, ==, 0);
        dxl_pci_setup(d);
        break;
    case RESET_SYSTEM:
        qtest_qmp_assert_success(d->qts, "{'execute': 'system_reset'}");
        qtest_qmp_eventwait(d->qts, "RESET");
        dxl_pci_setup(d);
        break;
    }
    /* Hundreds of MiB were queued: the reset cannot have come after them */
    g_assert_cmpuint(busy_completions(d, &b), <, DXL_DMA_NUM_QUEUES * PER_Q);
    check_reset_values(d);
    busy_check_stopped(d, &b);
    if (rc->kind != RESET_REG) {
        g_assert_cmphex(qpci_config_readw(d->pdev, DXL_DMA_CAP_MSIX_OFFSET +
                                          PCI_MSIX_FLAGS) &
                        PCI_MSIX_FLAGS_ENABLE, ==, 0);
    }
    check_works(d);
    dxl_stop(d);
}

/*
 * QCTRL.RESET of one busy queue stops it alone; the others finish their
 * work correctly.
 */
static void test_queue_reset(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    Busy b;
    struct dxl_dma_cpl c;
    unsigned q, k;

    busy_start(d, &b);
    dxl_wr(d, DXL_REG_Q(3, DXL_Q_CTRL), DXL_QCTRL_RESET);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(3, DXL_Q_STATUS)), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(3, DXL_Q_SQ_BASE_LO)), ==, 0);
    memset(dxl_ptr(d, b.dst[3]), 0x55, BIG);
    memset(dxl_ptr(d, b.r[3].cq), 0, b.r[3].size * 16);
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        if (q == 3) {
            continue;
        }
        for (k = 0; k < PER_Q; k++) {
            dxl_ring_wait(&b.r[q], &c);
            g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
            g_assert_cmpuint(le64_to_cpu(c.cookie), ==, k);
        }
        g_assert(memcmp(dxl_ptr(d, b.dst[q]), dxl_ptr(d, b.src), BIG) == 0);
    }
    g_assert(!dxl_ring_peek(&b.r[3], &c));
    g_assert_cmphex(*(uint8_t *)dxl_ptr(d, b.dst[3] + BIG - 1), ==, 0x55);
    dxl_stop(d);
}

/* ------------------------------------------------------------------------ */
/* Migration */

/*
 * Live migration mid-stream.  The timing model (link-gen=1, link-width=1)
 * holds each completion until the virtual clock passes its transfer time,
 * so the state at migration is exact: one completion posted, the second
 * descriptor fetched and moved but not completed, four more queued.  The
 * destination must carry on from there: same SQ head and CQ tail, the
 * in-flight completion and the rest delivered, every byte copied.  The
 * source, stopped, must not touch its memory any more.
 */
static void test_migrate(const void *data)
{
    bool q35 = GPOINTER_TO_INT(data);
    const uint32_t len = 64 * 1024;
    const int64_t t_xfer = (int64_t)len * 1000000000 / 250000000;
    const unsigned n = 6, q = 2;
    g_autofree char *dst_path = g_strdup_printf("/dev/shm/dxl-qtest-mig-%d",
                                                getpid());
    g_autofree char *uri = g_strdup_printf("unix:/tmp/dxl-qtest-mig-%d.sock",
                                           getpid());
    g_autofree char *incoming = g_strdup_printf("-incoming %s", uri);
    DxlDev *s = dxl_start_props(q35, "link-gen=1,link-width=1", NULL);
    DxlDev *d = g_new0(DxlDev, 1);
    uint64_t src[6], dst[6];
    uint32_t sq_head, cq_tail;
    struct dxl_dma_cpl c;
    DxlRing r, rd;
    unsigned i;

    dxl_ring_init(s, &r, q, 8);
    for (i = 0; i < n; i++) {
        src[i] = dxl_alloc(s, len, 4096);
        dst[i] = dxl_alloc(s, len, 4096);
        dxl_fill_random(dxl_ptr(s, src[i]), len);
        dxl_ring_post(&r, DXL_OP_COPY, DXL_DESC_F_IRQ, len, src[i], dst[i],
                      0x1000 + i);
    }
    dxl_ring_kick(&r);
    dxl_rd(s, DXL_REG_STATUS);
    g_assert(!dxl_ring_peek(&r, &c));
    qtest_clock_step(s->qts, t_xfer);
    dxl_ring_wait(&r, &c);
    g_assert_cmphex(le64_to_cpu(c.cookie), ==, 0x1000);
    /* The engine has moved descriptor 1 and waits for the link */
    dxl_rd(s, DXL_REG_STATUS);
    sq_head = dxl_rd(s, DXL_REG_Q(q, DXL_Q_SQ_HEAD));
    cq_tail = dxl_rd(s, DXL_REG_Q(q, DXL_Q_CQ_TAIL));
    g_assert_cmpuint(sq_head, ==, 2);
    g_assert_cmpuint(cq_tail, ==, 1);

    /* Destination: same machine, its own RAM file */
    d->q35 = q35;
    d->qts = dxl_qemu_start(q35, dst_path, "link-gen=1,link-width=1",
                            incoming);
    d->ram = dxl_map_ram(dst_path);
    migrate_qmp(s->qts, uri, "{}");
    wait_for_migration_complete(s->qts);
    qtest_qmp_eventwait(d->qts, "RESUME");

    /* Reach the function through the BARs the source had programmed */
    d->bus = qpci_new_pc(d->qts, NULL);
    d->pdev = qpci_device_find(d->bus, q35 ? DXL_Q35_DEVFN : DXL_PC_DEVFN);
    g_assert(d->pdev);
    d->bar0 = s->bar0;
    d->bar2 = s->bar2;
    g_assert_cmphex(dxl_rd(d, DXL_REG_ID), ==, DXL_DMA_ID_MAGIC);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_Q(q, DXL_Q_SQ_HEAD)), ==, sq_head);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_Q(q, DXL_Q_CQ_TAIL)), ==, cq_tail);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_Q(q, DXL_Q_SQ_TAIL)), ==, n);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_STATUS)) &
                    (DXL_QSTS_ENABLED | DXL_QSTS_BUSY), ==,
                    DXL_QSTS_ENABLED | DXL_QSTS_BUSY);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-desc"), ==, 1);

    /* Continue consuming the same ring, now in the destination's RAM */
    rd = r;
    rd.d = d;
    for (i = 1; i < n; i++) {
        gint64 deadline = g_get_monotonic_time() + DXL_WAIT_US;

        while (!dxl_ring_peek(&rd, &c)) {
            g_assert_cmpint(g_get_monotonic_time(), <, deadline);
            qtest_clock_step(d->qts, t_xfer / 4);
        }
        g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
        g_assert_cmphex(le64_to_cpu(c.cookie), ==, 0x1000 + i);
        g_assert_cmpuint(le16_to_cpu(c.sq_head), ==, i + 1);
        g_assert(memcmp(dxl_ptr(d, dst[i]), dxl_ptr(d, src[i]), len) == 0);
    }
    dxl_ring_ack(&rd);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-desc"), ==, n);
    g_assert(memcmp(dxl_ptr(d, dst[0]), dxl_ptr(d, src[0]), len) == 0);

    /* The stopped source posts nothing more, whatever its clock does */
    qtest_clock_step(s->qts, t_xfer * 10);
    dxl_rd(s, DXL_REG_STATUS);
    g_assert(!dxl_ring_peek(&r, &c));
    g_assert_cmpuint(dxl_rd(s, DXL_REG_Q(q, DXL_Q_CQ_TAIL)), ==, cq_tail);

    dxl_stop(d);
    dxl_stop(s);
}

int main(int argc, char **argv)
{
    static ResetCase cases[] = {
        { true, RESET_REG }, { false, RESET_REG },
        { true, RESET_FLR },
        { true, RESET_SYSTEM }, { false, RESET_SYSTEM },
    };
    static const char *const kind[] = { "register", "flr", "system" };
    int i;

    g_test_init(&argc, &argv, NULL);
    for (i = 0; i < ARRAY_SIZE(cases); i++) {
        g_autofree char *path = g_strdup_printf(
            "/dextlab-dma/%s/reset/%s-mid-transfer",
            dxl_machine(cases[i].q35), kind[cases[i].kind]);

        g_test_add_data_func(path, &cases[i], test_reset_mid_transfer);
    }
    for (i = 0; i < 2; i++) {
        g_autofree char *p1 = g_strdup_printf("/dextlab-dma/%s/reset/queue",
                                              dxl_machine(i == 0));
        g_autofree char *p2 = g_strdup_printf("/dextlab-dma/%s/migrate/"
                                              "mid-stream",
                                              dxl_machine(i == 0));

        g_test_add_data_func(p1, GINT_TO_POINTER(i == 0), test_queue_reset);
        g_test_add_data_func(p2, GINT_TO_POINTER(i == 0), test_migrate);
    }
    return g_test_run();
}
