/*
 * qtests for the dextlab-dma device model (hw/dextlab/dextlab-dma.c):
 * identity and capabilities, interrupt delivery (MSI-X per vector, PBA,
 * MSI, INTx, coalescing), DMA correctness for every opcode, and every
 * guest error path.  Each runs on q35 (PCIe, behind a root port) and pc
 * (conventional PCI).  Reset, FLR and migration are in
 * dextlab-dma-reset-test.c.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/bswap.h"
#include "dextlab-dma-lib.h"

/* ------------------------------------------------------------------------ */
/* Identity */

/*
 * Guards the PCI identity the drivers match on and the capability layout
 * the datasheet promises: IDs, class, BAR sizes and types, MSI-X table size
 * and BIR, MSI 64-bit with per-vector masking, PM, and PCIe with FLR only on
 * an express bus.
 */
static void test_identity(const void *data)
{
    bool q35 = GPOINTER_TO_INT(data);
    DxlDev *d = dxl_start(q35);
    QPCIDevice *p = d->pdev;
    uint64_t size;
    uint8_t cap;
    uint32_t v;

    g_assert_cmphex(qpci_config_readw(p, PCI_VENDOR_ID), ==,
                    DXL_PCI_VENDOR_ID);
    g_assert_cmphex(qpci_config_readw(p, PCI_DEVICE_ID), ==,
                    DXL_DMA_PCI_DEVICE_ID);
    g_assert_cmphex(qpci_config_readb(p, PCI_REVISION_ID), ==,
                    DXL_DMA_PCI_REVISION);
    v = qpci_config_readl(p, PCI_CLASS_REVISION) >> 8;
    g_assert_cmphex(v, ==, DXL_DMA_PCI_CLASS);
    g_assert_cmphex(qpci_config_readw(p, PCI_SUBSYSTEM_VENDOR_ID), ==,
                    DXL_DMA_PCI_SUBVENDOR_ID);
    g_assert_cmphex(qpci_config_readb(p, PCI_INTERRUPT_PIN), ==, 1);

    /* BAR sizes: qpci_iomap sizes them by writing all ones */
    d->bar0 = qpci_iomap(p, DXL_DMA_BAR_REGS, &size);
    g_assert_cmphex(size, ==, DXL_DMA_BAR0_SIZE);
    qpci_iomap(p, DXL_DMA_BAR_MSIX, &size);
    g_assert_cmphex(size, ==, 4096);
    d->bar2 = qpci_iomap(p, DXL_DMA_BAR_DEVMEM, &size);
    g_assert_cmphex(size, ==, DXL_DMA_DEVMEM_SIZE);
    g_assert_cmphex(qpci_config_readl(p, PCI_BASE_ADDRESS_2) &
                    PCI_BASE_ADDRESS_MEM_PREFETCH, ==,
                    PCI_BASE_ADDRESS_MEM_PREFETCH);
    /* Nothing behind BAR3-5 */
    qpci_config_writel(p, PCI_BASE_ADDRESS_3, 0xffffffff);
    g_assert_cmphex(qpci_config_readl(p, PCI_BASE_ADDRESS_3), ==, 0);

    cap = qpci_find_capability(p, PCI_CAP_ID_MSIX, 0);
    g_assert_cmphex(cap, ==, DXL_DMA_CAP_MSIX_OFFSET);
    g_assert_cmpuint(qpci_msix_table_size(p), ==, DXL_DMA_MSIX_VECTORS);
    g_assert_cmpuint(DXL_DMA_MSIX_VECTORS, >=, 8);
    g_assert_cmphex(qpci_config_readl(p, cap + PCI_MSIX_TABLE), ==,
                    DXL_DMA_BAR_MSIX | DXL_DMA_MSIX_TABLE_OFFSET);
    g_assert_cmphex(qpci_config_readl(p, cap + PCI_MSIX_PBA), ==,
                    DXL_DMA_BAR_MSIX | DXL_DMA_MSIX_PBA_OFFSET);

    cap = qpci_find_capability(p, PCI_CAP_ID_MSI, 0);
    g_assert_cmphex(cap, ==, DXL_DMA_CAP_MSI_OFFSET);
    v = qpci_config_readw(p, cap + PCI_MSI_FLAGS);
    g_assert_cmphex(v & (PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT), ==,
                    PCI_MSI_FLAGS_64BIT | PCI_MSI_FLAGS_MASKBIT);

    cap = qpci_find_capability(p, PCI_CAP_ID_PM, 0);
    g_assert_cmphex(cap, ==, DXL_DMA_CAP_PM_OFFSET);

    cap = qpci_find_capability(p, PCI_CAP_ID_EXP, 0);
    if (q35) {
        g_assert_cmphex(cap, ==, DXL_DMA_CAP_EXP_OFFSET);
        v = qpci_config_readw(p, cap + PCI_EXP_FLAGS);
        g_assert_cmphex((v & PCI_EXP_FLAGS_TYPE) >> 4, ==,
                        PCI_EXP_TYPE_ENDPOINT);
        v = qpci_config_readl(p, cap + PCI_EXP_DEVCAP);
        g_assert_cmphex(v & PCI_EXP_DEVCAP_FLR, ==, PCI_EXP_DEVCAP_FLR);
    } else {
        g_assert_cmphex(cap, ==, 0);
    }

    g_assert_cmphex(dxl_rd(d, DXL_REG_ID), ==, DXL_DMA_ID_MAGIC);
    g_assert_cmphex(dxl_rd(d, DXL_REG_VERSION), ==, DXL_DMA_VERSION);
    v = dxl_rd(d, DXL_REG_CAP);
    g_assert_cmpuint(v & DXL_CAP_NUM_QUEUES_MASK, ==, DXL_DMA_NUM_QUEUES);
    g_assert_cmpuint((v & DXL_CAP_NUM_VECTORS_MASK) >>
                     DXL_CAP_NUM_VECTORS_SHIFT, ==, DXL_DMA_MSIX_VECTORS);
    g_assert_cmphex(dxl_rd(d, DXL_REG_DEVMEM_SIZE), ==, DXL_DMA_DEVMEM_SIZE);
    g_assert_cmphex(dxl_rd(d, DXL_REG_MAX_XFER), ==, DXL_DMA_MAX_XFER);
    g_assert_cmphex(dxl_rd(d, DXL_REG_QUEUE_MAX), ==,
                    DXL_DMA_QUEUE_MAX_ENTRIES);
    g_assert_cmphex(dxl_rd(d, DXL_REG_LINK), ==, 0);
    dxl_wr(d, DXL_REG_SCRATCH, 0xa5a55a5a);
    g_assert_cmphex(dxl_rd(d, DXL_REG_SCRATCH), ==, 0xa5a55a5a);
    g_assert_cmphex(dxl_rd(d, DXL_REG_STATUS) & ~DXL_STATUS_LOW_POWER, ==, 0);

    dxl_stop(d);
}

/* ------------------------------------------------------------------------ */
/* Interrupts */


static void dxl_msix_mask(DxlDev *d, unsigned v, bool mask)
{
    QPCIDevice *p = d->pdev;

    qpci_io_writel(p, p->msix_table_bar, p->msix_table_off +
                   v * PCI_MSIX_ENTRY_SIZE + PCI_MSIX_ENTRY_VECTOR_CTRL,
                   mask ? PCI_MSIX_ENTRY_CTRL_MASKBIT : 0);
}

/* Collect the messages reported so far; returns how many. */
static unsigned dxl_msi_drain(DxlDev *d, uint32_t *datas, unsigned max)
{
    uint64_t addr;
    uint32_t data;
    unsigned n = 0;

    /* Asynchronous IRQ lines are parsed while waiting for a reply */
    dxl_rd(d, DXL_REG_STATUS);
    while (qtest_msi_pop(d->qts, &addr, &data)) {
        g_assert_cmphex(addr, ==, DXL_APIC_ADDR);
        if (n < max) {
            datas[n] = data;
        }
        n++;
    }
    return n;
}

typedef struct DxlVecCase {
    bool q35;
    unsigned vector;
} DxlVecCase;

/*
 * One MSI-X vector: the event it is assigned to (vector 0: an error, vector
 * 1 + q: a completion on queue q) sends exactly one message, with that
 * vector's address and data, and activity on every other queue without an
 * interrupt request sends none.  Guards the vector assignment table in the
 * register-map header.
 */
static void test_msix_vector(const void *data)
{
    const DxlVecCase *vc = data;
    DxlDev *d = dxl_start(vc->q35);
    DxlRing r[DXL_DMA_NUM_QUEUES];
    struct dxl_dma_cpl c;
    uint32_t msgs[8];
    unsigned q;

    qtest_msi_intercept(d->qts);
    dxl_msix_setup(d);
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        dxl_ring_init(d, &r[q], q, 8);
        dxl_ring_run(&r[q], DXL_OP_NOP, 0, 0, 0, 0, q, &c);
    }
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 8), ==, 0);

    if (vc->vector == DXL_DMA_VEC_ADMIN) {
        /* A refused doorbell is an error-log event only */
        dxl_wr(d, DXL_REG_Q(2, DXL_Q_SQ_TAIL), 100);
        g_assert_cmpuint(dxl_msi_drain(d, msgs, 8), ==, 1);
        g_assert_cmphex(msgs[0], ==, 0x40 + DXL_DMA_VEC_ADMIN);
        /* An error completion: the error, then the queue's own vector */
        dxl_ring_run(&r[3], 0x7f, 0, 0, 0, 0, 300, &c);
        g_assert_cmpuint(c.status, ==, DXL_ERR_BAD_OPCODE);
        g_assert_cmpuint(dxl_msi_drain(d, msgs, 8), ==, 2);
        g_assert_cmphex(msgs[0], ==, 0x40 + DXL_DMA_VEC_ADMIN);
        g_assert_cmphex(msgs[1], ==, 0x40 + DXL_DMA_VEC_QUEUE(3));
    } else {
        q = vc->vector - 1;
        dxl_ring_run(&r[q], DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 100, &c);
        g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
        g_assert_cmpuint(dxl_msi_drain(d, msgs, 8), ==, 1);
        g_assert_cmphex(msgs[0], ==, 0x40 + vc->vector);
        g_assert_cmpuint(dxl_qom_get_uint(d, "stat-irqs"), ==, 1);
    }
    dxl_stop(d);
}

/*
 * A masked MSI-X vector holds the message in the PBA; unmasking delivers
 * it exactly once.  Works without the qtest MSI patch: the vector's target
 * is a RAM word, so delivery is a visible memory write.
 */
static void test_msix_pba(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    QPCIDevice *p = d->pdev;
    uint64_t slot = dxl_alloc(d, 64, 64);
    uint32_t *word = dxl_ptr(d, slot);
    uint64_t off;
    DxlRing r;
    struct dxl_dma_cpl c;
    unsigned v = DXL_DMA_VEC_QUEUE(5);

    dxl_msix_setup(d);
    off = p->msix_table_off + v * PCI_MSIX_ENTRY_SIZE;
    qpci_io_writel(p, p->msix_table_bar, off + PCI_MSIX_ENTRY_LOWER_ADDR,
                   slot);
    qpci_io_writel(p, p->msix_table_bar, off + PCI_MSIX_ENTRY_DATA,
                   0xc0ffee05);
    dxl_msix_mask(d, v, true);
    dxl_ring_init(d, &r, 5, 4);

    *word = 0;
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 1, &c);
    g_assert(qpci_msix_masked(p, v));
    dxl_rd(d, DXL_REG_STATUS);
    g_assert_cmphex(qatomic_read(word), ==, 0);
    g_assert(qpci_msix_pending(p, v));
    /* qpci_msix_pending's write to the PBA is ignored: still pending */
    g_assert(qpci_msix_pending(p, v));
    g_assert(!qpci_msix_pending(p, DXL_DMA_VEC_QUEUE(4)));

    dxl_msix_mask(d, v, false);
    dxl_rd(d, DXL_REG_STATUS);
    g_assert_cmphex(qatomic_read(word), ==, 0xc0ffee05);
    g_assert(!qpci_msix_pending(p, v));
    dxl_stop(d);
}

static uint8_t dxl_msi_enable(DxlDev *d, uint32_t data)
{
    QPCIDevice *p = d->pdev;
    uint8_t cap = qpci_find_capability(p, PCI_CAP_ID_MSI, 0);
    uint16_t flags = qpci_config_readw(p, cap + PCI_MSI_FLAGS);

    qpci_config_writel(p, cap + PCI_MSI_ADDRESS_LO, DXL_APIC_ADDR);
    qpci_config_writel(p, cap + PCI_MSI_ADDRESS_HI, 0);
    qpci_config_writew(p, cap + PCI_MSI_DATA_64, data);
    qpci_config_writew(p, cap + PCI_MSI_FLAGS, flags | PCI_MSI_FLAGS_ENABLE);
    return cap;
}

/*
 * MSI: one vector for every cause; INT_MASK gates it and a cause pending
 * while masked is signalled on unmask; the MSI per-vector mask defers it.
 */
static void test_msi(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    DxlRing r;
    struct dxl_dma_cpl c;
    uint32_t msgs[4];
    uint8_t cap;

    qtest_msi_intercept(d->qts);
    cap = dxl_msi_enable(d, 0x4242);
    dxl_ring_init(d, &r, 2, 4);

    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 1, &c);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 1);
    g_assert_cmphex(msgs[0], ==, 0x4242);
    g_assert_cmphex(dxl_rd(d, DXL_REG_INT_STATUS), ==, DXL_INT_QUEUE(2));
    dxl_wr(d, DXL_REG_INT_STATUS, DXL_INT_QUEUE(2));

    /* Device-level mask: latched, sent on unmask */
    dxl_wr(d, DXL_REG_INT_MASK, DXL_INT_QUEUE(2));
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 2, &c);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_INT_STATUS), ==, DXL_INT_QUEUE(2));
    dxl_wr(d, DXL_REG_INT_MASK, 0);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 1);
    dxl_wr(d, DXL_REG_INT_STATUS, DXL_INT_QUEUE(2));

    /* MSI per-vector mask: pending bit, delivered on unmask */
    qpci_config_writel(d->pdev, cap + PCI_MSI_MASK_64, 1);
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 3, &c);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    g_assert_cmphex(qpci_config_readl(d->pdev, cap + PCI_MSI_PENDING_64), ==,
                    1);
    qpci_config_writel(d->pdev, cap + PCI_MSI_MASK_64, 0);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 1);
    g_assert_cmphex(msgs[0], ==, 0x4242);
    dxl_stop(d);
}

/* Route PIIX PIRQA-D to ISA IRQ 10/10/11/11 as firmware would (pc only). */
static void dxl_pc_route_pirqs(DxlDev *d)
{
    QPCIDevice *isa = qpci_device_find(d->bus, QPCI_DEVFN(1, 0));

    g_assert(isa);
    qpci_config_writel(isa, 0x60, 0x0b0b0a0a);
    g_free(isa);
}

/* Which IOAPIC input is high; -1 if none.  Asserts at most one is. */
static int dxl_intx_line(DxlDev *d)
{
    int i, line = -1;

    for (i = 0; i < 24; i++) {
        if (qtest_get_irq(d->qts, i)) {
            g_assert_cmpint(line, ==, -1);
            line = i;
        }
    }
    return line;
}

/*
 * INTx is a level: asserted while an unmasked cause is pending, deasserted
 * when the driver clears the cause or masks it, suppressed by
 * PCI_COMMAND_INTX_DISABLE, and silent in MSI-X mode.
 */
static void test_intx(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    DxlRing r;
    struct dxl_dma_cpl c;
    uint16_t cmd;
    int line;

    if (!d->q35) {
        dxl_pc_route_pirqs(d);
    }
    qtest_irq_intercept_in(d->qts, "ioapic");
    g_assert_cmpint(dxl_intx_line(d), ==, -1);

    dxl_wr(d, DXL_REG_INT_SET, DXL_INT_ERROR);
    line = dxl_intx_line(d);
    g_assert_cmpint(line, >=, 0);
    dxl_wr(d, DXL_REG_INT_STATUS, DXL_INT_ERROR);
    g_assert_cmpint(dxl_intx_line(d), ==, -1);

    /* A completion raises it, the acknowledge lowers it */
    dxl_ring_init(d, &r, 0, 4);
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 1, &c);
    g_assert_cmpint(dxl_intx_line(d), ==, line);
    /* Still asserted while another cause remains */
    dxl_wr(d, DXL_REG_INT_SET, DXL_INT_QUEUE(1));
    dxl_wr(d, DXL_REG_INT_STATUS, DXL_INT_QUEUE(0));
    g_assert_cmpint(dxl_intx_line(d), ==, line);
    /* Mask lowers, unmask raises again */
    dxl_wr(d, DXL_REG_INT_MASK, DXL_INT_QUEUE(1));
    g_assert_cmpint(dxl_intx_line(d), ==, -1);
    dxl_wr(d, DXL_REG_INT_MASK, 0);
    g_assert_cmpint(dxl_intx_line(d), ==, line);
    /* INTx disable in the command register */
    cmd = qpci_config_readw(d->pdev, PCI_COMMAND);
    qpci_config_writew(d->pdev, PCI_COMMAND, cmd | PCI_COMMAND_INTX_DISABLE);
    g_assert_cmpint(dxl_intx_line(d), ==, -1);
    qpci_config_writew(d->pdev, PCI_COMMAND, cmd);
    g_assert_cmpint(dxl_intx_line(d), ==, line);
    dxl_wr(d, DXL_REG_INT_STATUS, DXL_INT_ALL);
    g_assert_cmpint(dxl_intx_line(d), ==, -1);

    /* With MSI-X on, INTx stays low */
    dxl_msix_setup(d);
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 2, &c);
    g_assert_cmpint(dxl_intx_line(d), ==, -1);
    dxl_stop(d);
}

/* Coalescing by count: one message per COAL_COUNT requests. */
static void test_coalesce_count(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    DxlRing r;
    struct dxl_dma_cpl c;
    uint32_t msgs[4];
    int i;

    qtest_msi_intercept(d->qts);
    dxl_msix_setup(d);
    dxl_ring_init(d, &r, 1, 16);
    dxl_wr(d, DXL_REG_Q(1, DXL_Q_COAL_COUNT), 4);
    for (i = 0; i < 3; i++) {
        dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, i, &c);
        g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    }
    /* Completions without the IRQ flag do not count */
    dxl_ring_run(&r, DXL_OP_NOP, 0, 0, 0, 0, 10, &c);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 3, &c);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 1);
    g_assert_cmphex(msgs[0], ==, 0x40 + DXL_DMA_VEC_QUEUE(1));
    /* The count starts again */
    for (i = 0; i < 3; i++) {
        dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, i, &c);
    }
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    dxl_stop(d);
}

/* Coalescing by time: the first pending request starts the timer. */
static void test_coalesce_time(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    DxlRing r;
    struct dxl_dma_cpl c;
    uint32_t msgs[4];

    qtest_msi_intercept(d->qts);
    dxl_msix_setup(d);
    dxl_ring_init(d, &r, 6, 16);
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_COAL_COUNT), 100);
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_COAL_USEC), 50);
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 1, &c);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    qtest_clock_step(d->qts, 30 * 1000);
    dxl_ring_run(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 2, &c);
    qtest_clock_step(d->qts, 19 * 1000);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    qtest_clock_step(d->qts, 1 * 1000);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 1);
    g_assert_cmphex(msgs[0], ==, 0x40 + DXL_DMA_VEC_QUEUE(6));
    qtest_clock_step(d->qts, 100 * 1000);
    g_assert_cmpuint(dxl_msi_drain(d, msgs, 4), ==, 0);
    dxl_stop(d);
}

/* ------------------------------------------------------------------------ */
/* DMA correctness */

typedef struct DxlXfer {
    DxlRing *r;
    uint8_t op;
    uint32_t len;
    uint64_t src;
    uint64_t dst;
    uint64_t host_src;  /* the random source bytes, in guest RAM */
    uint64_t pattern;
    uint32_t seed;
    uint64_t cookie;
} DxlXfer;

static uint32_t dxl_rand_len(void)
{
    switch (g_test_rand_int_range(0, 5)) {
    case 0:
        return 1;
    case 1:
        return g_test_rand_int_range(1, 64);
    case 2:
        return g_test_rand_int_range(4000, 8300);   /* page crossing */
    case 3:
        return g_test_rand_int_range(1, 256 * 1024);
    default:
        return g_test_rand_int_range(256 * 1024, 1024 * 1024);
    }
}

/* Prepare buffers for one transfer; device memory is set up via BAR2. */
static void dxl_xfer_prepare(DxlDev *d, DxlXfer *x, uint8_t op, uint32_t len,
                             uint64_t devoff)
{
    x->op = op;
    x->len = len;
    x->src = dxl_alloc(d, len + 64, 8) + g_test_rand_int_range(0, 64);
    x->dst = dxl_alloc(d, len + 64, 8) + g_test_rand_int_range(0, 64);
    dxl_fill_random(dxl_ptr(d, x->src), len);
    x->host_src = x->src;
    memset(dxl_ptr(d, x->dst), 0xee, len + 1);
    x->pattern = ((uint64_t)g_test_rand_int() << 32) | g_test_rand_int();
    x->seed = 0;
    switch (op) {
    case DXL_OP_WRITE_DEV:
        x->dst = devoff;
        break;
    case DXL_OP_READ_DEV:
        /* Device memory gets its contents by MMIO through BAR2 */
        qpci_memwrite(d->pdev, d->bar2, devoff, dxl_ptr(d, x->src), len);
        x->src = devoff;
        break;
    case DXL_OP_FILL:
        x->src = x->pattern;
        break;
    case DXL_OP_CRC32C:
        x->seed = g_test_rand_bit() ? g_test_rand_int() : 0;
        x->dst = x->seed;
        break;
    }
}

static void dxl_xfer_check(DxlDev *d, DxlXfer *x, struct dxl_dma_cpl *c)
{
    g_autofree uint8_t *buf = NULL;
    uint32_t i;

    g_assert_cmpuint(c->status, ==, DXL_ERR_OK);
    switch (x->op) {
    case DXL_OP_COPY:
        g_assert_cmpuint(le32_to_cpu(c->result), ==, x->len);
        g_assert(memcmp(dxl_ptr(d, x->dst), dxl_ptr(d, x->src), x->len) == 0);
        break;
    case DXL_OP_WRITE_DEV:
        buf = g_malloc(x->len);
        qpci_memread(d->pdev, d->bar2, x->dst, buf, x->len);
        g_assert(memcmp(buf, dxl_ptr(d, x->src), x->len) == 0);
        break;
    case DXL_OP_READ_DEV:
        g_assert(memcmp(dxl_ptr(d, x->dst), dxl_ptr(d, x->host_src),
                        x->len) == 0);
        break;
    case DXL_OP_FILL:
        for (i = 0; i < x->len; i++) {
            uint8_t want = x->pattern >> (8 * (i % 8));

            if (((uint8_t *)dxl_ptr(d, x->dst))[i] != want) {
                g_assert_cmphex(((uint8_t *)dxl_ptr(d, x->dst))[i], ==, want);
            }
        }
        g_assert_cmphex(*(uint8_t *)dxl_ptr(d, x->dst + x->len), ==, 0xee);
        break;
    case DXL_OP_CRC32C:
        g_assert_cmphex(le32_to_cpu(c->result), ==,
                        dxl_ref_crc32c(x->seed, dxl_ptr(d, x->src), x->len));
        break;
    }
    if (x->op != DXL_OP_FILL && x->op != DXL_OP_CRC32C &&
        x->op != DXL_OP_WRITE_DEV) {
        /* Not a byte beyond the end */
        g_assert_cmphex(*(uint8_t *)dxl_ptr(d, x->dst + x->len), ==, 0xee);
    }
}

/*
 * Every opcode over random lengths (1 byte, sub-cacheline, page crossing,
 * up to 1 MiB) and alignments, one at a time, checked byte for byte; the
 * CRC against an independent bitwise-table implementation.
 */
static void test_dma_ops(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    static const uint8_t ops[] = {
        DXL_OP_COPY, DXL_OP_WRITE_DEV, DXL_OP_READ_DEV, DXL_OP_FILL,
        DXL_OP_CRC32C,
    };
    DxlRing r;
    struct dxl_dma_cpl c;
    int i, k;

    dxl_ring_init(d, &r, 0, 64);
    for (i = 0; i < ARRAY_SIZE(ops); i++) {
        for (k = 0; k < 6; k++) {
            DxlXfer x;
            uint32_t len = k == 0 ? 1 : dxl_rand_len();
            uint64_t devoff = g_test_rand_int_range(0, DXL_DMA_DEVMEM_SIZE -
                                                    len + 1);

            d->alloc = 64 * 1024 * 1024;
            dxl_xfer_prepare(d, &x, ops[i], len, devoff);
            dxl_ring_run(&r, x.op, 0, x.len, x.src, x.dst, i * 100 + k, &c);
            dxl_xfer_check(d, &x, &c);
        }
    }
    /* Known answer: CRC32C("123456789") = 0xe3069283 */
    memcpy(dxl_ptr(d, 0x100000), "123456789", 9);
    dxl_ring_run(&r, DXL_OP_CRC32C, 0, 9, 0x100000, 0, 1, &c);
    g_assert_cmphex(le32_to_cpu(c.result), ==, 0xe3069283);
    g_assert_cmphex(dxl_ref_crc32c(0, "123456789", 9), ==, 0xe3069283);
    /* Chaining: CRC of "12345" continued over "6789" */
    dxl_ring_run(&r, DXL_OP_CRC32C, 0, 5, 0x100000, 0, 2, &c);
    dxl_ring_run(&r, DXL_OP_CRC32C, 0, 4, 0x100005,
                 le32_to_cpu(c.result), 3, &c);
    g_assert_cmphex(le32_to_cpu(c.result), ==, 0xe3069283);
    dxl_stop(d);
}

/* The maximum length: 16 MiB copy, fill and CRC, verified. */
static void test_dma_16mib(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    const uint32_t len = DXL_DMA_MAX_XFER;
    uint64_t src = dxl_alloc(d, len + 4096, 4096) + 3;
    uint64_t dst = dxl_alloc(d, len + 4096, 4096) + 1;
    DxlRing r;
    struct dxl_dma_cpl c;
    uint32_t i;

    dxl_ring_init(d, &r, 7, 4);
    dxl_fill_random(dxl_ptr(d, src), len);
    dxl_ring_run(&r, DXL_OP_COPY, 0, len, src, dst, 1, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    g_assert_cmpuint(le32_to_cpu(c.result), ==, len);
    g_assert(memcmp(dxl_ptr(d, src), dxl_ptr(d, dst), len) == 0);

    dxl_ring_run(&r, DXL_OP_CRC32C, 0, len, dst, 0, 2, &c);
    g_assert_cmphex(le32_to_cpu(c.result), ==,
                    dxl_ref_crc32c(0, dxl_ptr(d, src), len));

    dxl_ring_run(&r, DXL_OP_FILL, 0, len, 0x0807060504030201ULL, dst, 3, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    for (i = 0; i < len; i++) {
        if (((uint8_t *)dxl_ptr(d, dst))[i] != (i % 8) + 1) {
            g_assert_cmpuint(((uint8_t *)dxl_ptr(d, dst))[i], ==, (i % 8) + 1);
        }
    }
    /* Length beyond the maximum is refused */
    dxl_ring_run(&r, DXL_OP_FILL, 0, len + 1, 0, dst, 4, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_BAD_LENGTH);
    dxl_stop(d);
}

/*
 * All queues at once: every queue gets a batch of mixed descriptors before
 * any doorbell, then all doorbells; the engine interleaves them in slices.
 * Each queue works on its own buffers and device memory window.
 */
static void test_dma_all_queues(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    enum { PER_Q = 6 };
    DxlRing r[DXL_DMA_NUM_QUEUES];
    DxlXfer x[DXL_DMA_NUM_QUEUES][PER_Q];
    struct dxl_dma_cpl c;
    unsigned q, k;
    char *name;

    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        dxl_ring_init(d, &r[q], q, 16);
    }
    d->alloc = 32 * 1024 * 1024;
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        for (k = 0; k < PER_Q; k++) {
            uint8_t op = DXL_OP_COPY + (q + k) % 5;
            uint32_t len = MIN(dxl_rand_len(), 16 * 1024);
            /* Disjoint 128 KiB device memory window per queue */
            uint64_t devoff = q * 128 * 1024 + k * 16 * 1024;

            if (k == PER_Q - 1 && op == DXL_OP_COPY) {
                len = 3 * 1024 * 1024 + 17;     /* a long one, sliced */
            }
            dxl_xfer_prepare(d, &x[q][k], op, len, devoff);
            x[q][k].cookie = ((uint64_t)q << 32) | k;
            dxl_ring_post(&r[q], x[q][k].op, DXL_DESC_F_IRQ, x[q][k].len,
                          x[q][k].src, x[q][k].dst, x[q][k].cookie);
        }
    }
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        dxl_ring_kick(&r[q]);
    }
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        for (k = 0; k < PER_Q; k++) {
            dxl_ring_wait(&r[q], &c);
            g_assert_cmphex(le64_to_cpu(c.cookie), ==, x[q][k].cookie);
            g_assert_cmpuint(le16_to_cpu(c.sq_head), ==, k + 1);
            dxl_xfer_check(d, &x[q][k], &c);
        }
        dxl_ring_ack(&r[q]);
        g_assert_cmpuint(dxl_rd(d, DXL_REG_Q(q, DXL_Q_STAT_DESC_LO)), ==,
                         PER_Q);
        name = g_strdup_printf("stat-q%u-desc", q);
        g_assert_cmpuint(dxl_qom_get_uint(d, name), ==, PER_Q);
        g_free(name);
    }
    g_assert_cmpuint(dxl_rd(d, DXL_REG_STAT_DESC_LO), ==,
                     DXL_DMA_NUM_QUEUES * PER_Q);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-desc"), ==,
                     DXL_DMA_NUM_QUEUES * PER_Q);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-bytes"), ==,
                     dxl_rd(d, DXL_REG_STAT_BYTES_LO) |
                     (uint64_t)dxl_rd(d, DXL_REG_STAT_BYTES_HI) << 32);
    /* An 8-byte read of a LO/HI pair returns both halves */
    g_assert_cmpuint(qpci_io_readq(d->pdev, d->bar0, DXL_REG_STAT_BYTES_LO),
                     ==, dxl_qom_get_uint(d, "stat-bytes"));
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-doorbells"), ==,
                     DXL_DMA_NUM_QUEUES);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-errors"), ==, 0);
    dxl_stop(d);
}

/*
 * FENCE: a fenced CRC on queue 1 of the tail of the buffer that queue 0 is
 * copying into must see the finished copy.  Without the fence the engine
 * interleaves the queues in 2 MiB slices, round robin from queue 0: the CRC
 * would read the tail while the copy is still at its head.
 */
static void test_fence(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    const uint32_t len = 12 * 1024 * 1024, tail = 2 * 1024 * 1024;
    uint64_t src = dxl_alloc(d, len, 4096);
    uint64_t dst = dxl_alloc(d, len, 4096);
    DxlRing r0, r1;
    struct dxl_dma_cpl c;

    dxl_ring_init(d, &r0, 0, 4);
    dxl_ring_init(d, &r1, 1, 4);
    dxl_fill_random(dxl_ptr(d, src), len);
    memset(dxl_ptr(d, dst), 0, len);
    dxl_ring_post(&r0, DXL_OP_COPY, 0, len, src, dst, 1);
    dxl_ring_post(&r1, DXL_OP_CRC32C, DXL_DESC_F_FENCE, tail,
                  dst + len - tail, 0, 2);
    /* Hold the engine so both doorbells land before it runs */
    dxl_wr(d, DXL_REG_CTRL, 0);
    dxl_ring_kick(&r0);
    dxl_ring_kick(&r1);
    dxl_wr(d, DXL_REG_CTRL, DXL_CTRL_ENABLE);
    dxl_ring_wait(&r1, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    g_assert_cmphex(le32_to_cpu(c.result), ==,
                    dxl_ref_crc32c(0, dxl_ptr(d, src + len - tail), tail));
    dxl_ring_wait(&r0, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    dxl_stop(d);
}

/*
 * The engine works in bounded slices: with 2 GiB of copies queued on all
 * queues, register reads keep being answered within a few slices' time.
 * Guards against doing a whole descriptor (or a whole ring) per bottom
 * half, which would stall the emulator for hundreds of milliseconds.
 */
static void test_responsive(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    const uint32_t len = 16 * 1024 * 1024;
    uint64_t src = dxl_alloc(d, len, 4096);
    DxlRing r[DXL_DMA_NUM_QUEUES];
    struct dxl_dma_cpl c;
    gint64 worst = 0;
    unsigned q, k, busy_reads = 0;

    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        uint64_t dst = dxl_alloc(d, len, 4096);

        dxl_ring_init(d, &r[q], q, 32);
        for (k = 0; k < 16; k++) {
            dxl_ring_post(&r[q], DXL_OP_COPY, 0, len, src, dst, k);
        }
    }
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        dxl_ring_kick(&r[q]);
    }
    while (dxl_rd(d, DXL_REG_STATUS) & DXL_STATUS_BUSY) {
        gint64 t0 = g_get_monotonic_time();

        dxl_rd(d, DXL_REG_SCRATCH);
        worst = MAX(worst, g_get_monotonic_time() - t0);
        busy_reads++;
    }
    g_test_message("%u reads while busy, slowest %" PRId64 " us", busy_reads,
                   worst);
    /* The work took many reads' time; none waited for more than slices */
    g_assert_cmpuint(busy_reads, >, 10);
    g_assert_cmpint(worst, <, 250 * 1000);
    for (q = 0; q < DXL_DMA_NUM_QUEUES; q++) {
        for (k = 0; k < 16; k++) {
            dxl_ring_wait(&r[q], &c);
            g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
        }
    }
    dxl_stop(d);
}

/*
 * A full CQ stalls the queue (CQ_FULL) without losing descriptors; moving
 * CQ_HEAD lets it continue.  Also checks the phase tag flips on wrap.
 */
static void test_cq_full(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    DxlRing r;
    struct dxl_dma_cpl c;
    int i;

    dxl_ring_init(d, &r, 4, 4);     /* CQ holds size - 1 = 3 entries */
    for (i = 0; i < 3; i++) {
        dxl_ring_post(&r, DXL_OP_NOP, 0, 0, 0, 0, i);
    }
    dxl_ring_kick(&r);
    for (i = 0; i < 3; i++) {
        dxl_ring_wait(&r, &c);
        g_assert_cmpuint(le64_to_cpu(c.cookie), ==, i);
    }
    /* Without an ack, the next one cannot complete */
    dxl_ring_post(&r, DXL_OP_NOP, 0, 0, 0, 0, 3);
    dxl_ring_kick(&r);
    dxl_rd(d, DXL_REG_STATUS);
    g_assert(!dxl_ring_peek(&r, &c));
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(4, DXL_Q_STATUS)) & DXL_QSTS_CQ_FULL,
                    ==, DXL_QSTS_CQ_FULL);
    dxl_ring_ack(&r);
    dxl_ring_wait(&r, &c);
    g_assert_cmpuint(le64_to_cpu(c.cookie), ==, 3);
    g_assert_cmpuint(c.flags & DXL_CPL_F_PHASE, ==, DXL_CPL_F_PHASE);
    g_assert_cmpuint(le16_to_cpu(c.sq_head), ==, 0);
    /* The CQ wrapped: the next entry carries phase 0 */
    dxl_ring_run(&r, DXL_OP_NOP, 0, 0, 0, 0, 4, &c);
    g_assert_cmpuint(c.flags & DXL_CPL_F_PHASE, ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(4, DXL_Q_STATUS)) &
                    (DXL_QSTS_CQ_FULL | DXL_QSTS_BUSY), ==, 0);
    dxl_stop(d);
}

/*
 * Timing model: with link-gen/link-width set, a completion is posted only
 * when the virtual clock has passed the transfer time on that link.
 */
static void test_pacing(const void *data)
{
    bool q35 = GPOINTER_TO_INT(data);
    DxlDev *d = dxl_start_props(q35, "link-gen=3,link-width=4", NULL);
    const uint32_t len = 1024 * 1024;
    /* 8 GT/s, 128b/130b, 4 lanes: 3938461536 bytes/s */
    int64_t ns = (int64_t)len * 1000000000 / (984615384LL * 4);
    uint64_t src = dxl_alloc(d, len, 4096);
    uint64_t dst = dxl_alloc(d, len, 4096);
    DxlRing r;
    struct dxl_dma_cpl c;

    g_assert_cmphex(dxl_rd(d, DXL_REG_LINK), ==,
                    3 | (4 << DXL_LINK_WIDTH_SHIFT));
    if (q35) {
        /* The PCIe capability advertises the same link: Gen3 (8 GT/s) x4 */
        uint8_t exp = qpci_find_capability(d->pdev, PCI_CAP_ID_EXP, 0);

        g_assert_cmphex(qpci_config_readw(d->pdev, exp + PCI_EXP_LNKSTA) &
                        (PCI_EXP_LNKSTA_NLW | PCI_EXP_LNKSTA_CLS), ==,
                        (4 << 4) | 3);
        g_assert_cmphex(qpci_config_readl(d->pdev, exp + PCI_EXP_LNKCAP) &
                        (PCI_EXP_LNKCAP_MLW | PCI_EXP_LNKCAP_SLS), ==,
                        (4 << 4) | 3);
    }
    dxl_ring_init(d, &r, 0, 4);
    dxl_ring_post(&r, DXL_OP_COPY, 0, len, src, dst, 1);
    dxl_ring_kick(&r);
    dxl_rd(d, DXL_REG_STATUS);
    dxl_rd(d, DXL_REG_STATUS);
    g_assert(!dxl_ring_peek(&r, &c));
    qtest_clock_step(d->qts, ns - 1000);
    g_assert(!dxl_ring_peek(&r, &c));
    qtest_clock_step(d->qts, 1000);
    dxl_ring_wait(&r, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    dxl_stop(d);
}

/* BAR2 is plain memory to the CPU and the same memory to the engine. */
static void test_devmem(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    uint64_t host = dxl_alloc(d, 4096, 4096);
    DxlRing r;
    struct dxl_dma_cpl c;

    qpci_io_writel(d->pdev, d->bar2, DXL_DMA_DEVMEM_SIZE - 4, 0x12345678);
    qpci_io_writeb(d->pdev, d->bar2, 5, 0x9a);
    g_assert_cmphex(qpci_io_readl(d->pdev, d->bar2, DXL_DMA_DEVMEM_SIZE - 4),
                    ==, 0x12345678);
    dxl_ring_init(d, &r, 0, 4);
    dxl_ring_run(&r, DXL_OP_READ_DEV, 0, 4, DXL_DMA_DEVMEM_SIZE - 4, host, 1,
                 &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    g_assert_cmphex(ldl_le_p(dxl_ptr(d, host)), ==, 0x12345678);
    stl_le_p(dxl_ptr(d, host), 0xfeedf00d);
    dxl_ring_run(&r, DXL_OP_WRITE_DEV, 0, 4, host, 0x800, 2, &c);
    g_assert_cmphex(qpci_io_readl(d->pdev, d->bar2, 0x800), ==, 0xfeedf00d);
    g_assert_cmphex(qpci_io_readb(d->pdev, d->bar2, 5), ==, 0x9a);
    dxl_stop(d);
}

/* ------------------------------------------------------------------------ */
/* Guest errors: each one reported, and the device still works after */

typedef enum {
    E_BAD_OPCODE, E_LEN_ZERO, E_LEN_MAX, E_BAD_FLAGS, E_RSVD, E_NOP_LEN,
    E_NOP_ADDR, E_WRAP_SRC, E_WRAP_DST, E_UNMAPPED, E_MMIO, E_SELF_REGS,
    E_SELF_DEVMEM, E_DEVMEM_RANGE, E_DEVMEM_WRAP, E_OVERLAP, E_CRC_DST,
    E_PARTIAL, E_MAX_DESC,
} DxlDescErr;

static const char *const desc_err_names[] = {
    "bad-opcode", "length-zero", "length-too-big", "bad-flags",
    "reserved-field", "nop-length", "nop-address", "wrap-src", "wrap-dst",
    "unmapped", "mmio", "self-regs", "self-devmem", "devmem-range",
    "devmem-wrap", "overlap", "crc-dst", "unmapped-mid-transfer",
};

typedef struct DxlErrCase {
    bool q35;
    DxlDescErr e;
} DxlErrCase;

static void dxl_check_works(DxlDev *d, DxlRing *r)
{
    uint64_t src = dxl_alloc(d, 8192, 4096) + 7;
    uint64_t dst = dxl_alloc(d, 8192, 4096) + 9;
    struct dxl_dma_cpl c;

    dxl_fill_random(dxl_ptr(d, src), 5000);
    dxl_ring_run(r, DXL_OP_COPY, DXL_DESC_F_IRQ, 5000, src, dst, 0x900d, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);
    g_assert(memcmp(dxl_ptr(d, src), dxl_ptr(d, dst), 5000) == 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(r->q, DXL_Q_STATUS)) &
                    DXL_QSTS_HALTED, ==, 0);
}

/*
 * One bad descriptor: error completion with the right status and cookie,
 * an error log entry naming queue and slot, the ERROR interrupt cause, a
 * LOG_GUEST_ERROR; then the same queue carries on.
 */
static void test_desc_error(const void *data)
{
    const DxlErrCase *ec = data;
    DxlDev *d = dxl_start(ec->q35);
    uint64_t buf = dxl_alloc(d, 64 * 1024, 4096);
    uint8_t op = DXL_OP_COPY, flags = 0, want;
    uint32_t len = 4096, slot;
    uint64_t src = buf, dst = buf + 32 * 1024, cookie = 0xbad0 + ec->e;
    uint16_t rsvd = 0;
    DxlRing r;
    struct dxl_dma_cpl c;
    struct dxl_dma_desc *desc;

    dxl_ring_init(d, &r, 3, 8);
    switch (ec->e) {
    case E_BAD_OPCODE:
        op = DXL_OP_MAX + 1;
        want = DXL_ERR_BAD_OPCODE;
        break;
    case E_LEN_ZERO:
        len = 0;
        want = DXL_ERR_BAD_LENGTH;
        break;
    case E_LEN_MAX:
        len = DXL_DMA_MAX_XFER + 1;
        want = DXL_ERR_BAD_LENGTH;
        break;
    case E_BAD_FLAGS:
        flags = 0x80;
        want = DXL_ERR_BAD_FLAGS;
        break;
    case E_RSVD:
        rsvd = 1;
        want = DXL_ERR_RSVD_FIELD;
        break;
    case E_NOP_LEN:
        op = DXL_OP_NOP;
        want = DXL_ERR_BAD_LENGTH;
        break;
    case E_NOP_ADDR:
        op = DXL_OP_NOP;
        len = 0;
        want = DXL_ERR_RSVD_FIELD;
        break;
    case E_WRAP_SRC:
        src = UINT64_MAX - 100;
        want = DXL_ERR_ADDR_WRAP;
        break;
    case E_WRAP_DST:
        op = DXL_OP_FILL;
        dst = UINT64_MAX - 4094;
        want = DXL_ERR_ADDR_WRAP;
        break;
    case E_UNMAPPED:
        dst = 0x4000000000ULL;          /* 256 GiB: nothing there */
        want = DXL_ERR_DMA_UNMAPPED;
        break;
    case E_MMIO:
        dst = 0xfec00000;               /* the IOAPIC */
        want = DXL_ERR_DMA_MMIO;
        break;
    case E_SELF_REGS:
        /* Writing into our own registers must never reach them */
        dst = d->bar0_addr;
        want = DXL_ERR_DMA_SELF;
        break;
    case E_SELF_DEVMEM:
        op = DXL_OP_CRC32C;
        src = d->bar2_addr;
        dst = 0;
        want = DXL_ERR_DMA_SELF;
        break;
    case E_DEVMEM_RANGE:
        op = DXL_OP_WRITE_DEV;
        dst = DXL_DMA_DEVMEM_SIZE - 100;
        want = DXL_ERR_DEVMEM_RANGE;
        break;
    case E_DEVMEM_WRAP:
        op = DXL_OP_READ_DEV;
        src = UINT64_MAX - 10;
        want = DXL_ERR_DEVMEM_RANGE;
        break;
    case E_OVERLAP:
        dst = src + 100;
        want = DXL_ERR_OVERLAP;
        break;
    case E_CRC_DST:
        op = DXL_OP_CRC32C;
        dst = 1ULL << 32;
        want = DXL_ERR_RSVD_FIELD;
        break;
    case E_PARTIAL:
        /* Runs off the end of RAM: some bytes move, then the error */
        src = DXL_RAM_SIZE - 1000;
        want = DXL_ERR_DMA_UNMAPPED;
        break;
    default:
        g_assert_not_reached();
    }
    memset(dxl_ptr(d, buf + 32 * 1024), 0x77, 4096);
    slot = dxl_ring_post(&r, op, flags, len, src, dst, cookie);
    desc = dxl_ptr(d, r.sq + slot * sizeof(*desc));
    desc->rsvd0 = cpu_to_le16(rsvd);
    dxl_ring_kick(&r);
    dxl_ring_wait(&r, &c);
    dxl_ring_ack(&r);

    g_assert_cmpuint(c.status, ==, want);
    g_assert_cmphex(le64_to_cpu(c.cookie), ==, cookie);
    g_assert_cmpuint(le16_to_cpu(c.sq_head), ==, slot + 1);
    if (ec->e == E_PARTIAL) {
        g_assert_cmpuint(le32_to_cpu(c.result), ==, 1000);
    } else {
        g_assert_cmpuint(le32_to_cpu(c.result), ==, 0);
        /* Nothing written where a rejected descriptor pointed */
        g_assert_cmphex(*(uint8_t *)dxl_ptr(d, buf + 32 * 1024), ==, 0x77);
    }
    g_assert_cmphex(dxl_rd(d, DXL_REG_INT_STATUS) & DXL_INT_ERROR, ==,
                    DXL_INT_ERROR);
    g_assert_cmphex(dxl_rd(d, DXL_REG_STATUS) & DXL_STATUS_ERRLOG, ==,
                    DXL_STATUS_ERRLOG);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_COUNT), ==, 1);
    g_assert_cmphex(dxl_rd(d, DXL_REG_ERR_HEAD) >> DXL_ERRH_INDEX_SHIFT, ==,
                    slot);
    dxl_expect_error(d, want, 3);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_COUNT), ==, 0);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_Q(3, DXL_Q_STAT_ERRORS)), ==, 1);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-q3-errors"), ==, 1);
    dxl_wr(d, DXL_REG_INT_STATUS, DXL_INT_ALL);
    dxl_check_works(d, &r);
    dxl_stop(d);
}

/*
 * Bad ring setup is refused at enable (queue stays disabled, error logged);
 * bad doorbell values are ignored and logged; ring registers cannot change
 * under a running queue; a bad register write is logged.  After each, a
 * good setup of the same queue works.
 */
static void test_queue_errors(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    const unsigned q = 2;
    uint64_t ring = dxl_alloc(d, 64 * 1024, 4096);
    static const struct {
        uint64_t sq;
        uint32_t sqs;
        uint64_t cq;
        uint32_t cqs;
        uint8_t err;
    } bad[] = {
        { 0, 3, 0x8000, 4, DXL_ERR_BAD_SQ_SIZE },
        { 0, 0, 0x8000, 4, DXL_ERR_BAD_SQ_SIZE },
        { 0, 1, 0x8000, 4, DXL_ERR_BAD_SQ_SIZE },
        { 0, 8192, 0x8000, 4, DXL_ERR_BAD_SQ_SIZE },
        { 0, 4, 0x8000, 6, DXL_ERR_BAD_CQ_SIZE },
        { 8, 4, 0x8000, 4, DXL_ERR_BAD_SQ_BASE },
        { 0, 4, 0x8004, 4, DXL_ERR_BAD_CQ_BASE },
        { 0x4000000000ULL, 4, 0x8000, 4, DXL_ERR_BAD_SQ_BASE },
        { 0, 4, 0xfec00000, 4, DXL_ERR_BAD_CQ_BASE },
        { 0, 4, DXL_RAM_SIZE - 32, 4, DXL_ERR_BAD_CQ_BASE },
        { UINT64_MAX - 63, 4, 0x8000, 4, DXL_ERR_BAD_SQ_BASE },
    };
    DxlRing r;
    int i;

    dxl_wr(d, DXL_REG_CTRL, DXL_CTRL_ENABLE);
    for (i = 0; i < ARRAY_SIZE(bad); i++) {
        uint64_t sq = bad[i].sq >= DXL_RAM_SIZE ? bad[i].sq : ring + bad[i].sq;
        uint64_t cq = bad[i].cq >= DXL_RAM_SIZE - 64 ? bad[i].cq :
                      ring + bad[i].cq;

        dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_BASE_LO), sq);
        dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_BASE_HI), sq >> 32);
        dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_SIZE), bad[i].sqs);
        dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_BASE_LO), cq);
        dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_BASE_HI), cq >> 32);
        dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_SIZE), bad[i].cqs);
        dxl_wr(d, DXL_REG_Q(q, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
        g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_STATUS)), ==,
                        (uint32_t)bad[i].err << DXL_QSTS_ERR_SHIFT);
        g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_CTRL)), ==, 0);
        dxl_expect_error(d, bad[i].err, q);
    }

    /* Doorbells on a disabled queue */
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_TAIL), 1);
    dxl_expect_error(d, DXL_ERR_QUEUE_DISABLED, q);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_HEAD), 1);
    dxl_expect_error(d, DXL_ERR_QUEUE_DISABLED, q);

    dxl_ring_init(d, &r, q, 8);
    /* Out-of-range doorbells are ignored */
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_TAIL), 8);
    dxl_expect_error(d, DXL_ERR_BAD_SQ_TAIL, q);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_Q(q, DXL_Q_SQ_TAIL)), ==, 0);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_HEAD), 0xffffffff);
    dxl_expect_error(d, DXL_ERR_BAD_CQ_HEAD, q);
    /* Ring registers are frozen while enabled */
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_BASE_LO), 0x1000);
    dxl_expect_error(d, DXL_ERR_REG_ACCESS, DXL_ERR_QUEUE_NONE);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_SQ_BASE_LO)), ==,
                    (uint32_t)r.sq);
    /* Read-only and unknown registers */
    dxl_wr(d, DXL_REG_ID, 0);
    dxl_expect_error(d, DXL_ERR_REG_ACCESS, DXL_ERR_QUEUE_NONE);
    dxl_wr(d, 0x3ffc, 1);
    dxl_expect_error(d, DXL_ERR_REG_ACCESS, DXL_ERR_QUEUE_NONE);
    g_assert_cmphex(dxl_rd(d, DXL_REG_ID), ==, DXL_DMA_ID_MAGIC);
    g_assert_cmphex(dxl_rd(d, 0x3ffc), ==, 0);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_COUNT), ==, 0);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_TOTAL), ==, ARRAY_SIZE(bad) + 7);
    dxl_check_works(d, &r);
    dxl_stop(d);
}

/* The error log keeps the oldest DEPTH entries and counts the rest. */
static void test_errlog_overflow(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    int i;

    for (i = 0; i < DXL_DMA_ERRLOG_DEPTH + 5; i++) {
        dxl_wr(d, DXL_REG_Q(i % DXL_DMA_NUM_QUEUES, DXL_Q_SQ_TAIL), i);
    }
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_COUNT), ==, DXL_DMA_ERRLOG_DEPTH);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_OVERFLOW), ==, 5);
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_TOTAL), ==,
                     DXL_DMA_ERRLOG_DEPTH + 5);
    for (i = 0; i < DXL_DMA_ERRLOG_DEPTH; i++) {
        g_assert_cmphex(dxl_rd(d, DXL_REG_ERR_ADDR_LO), ==, i);
        dxl_expect_error(d, DXL_ERR_QUEUE_DISABLED, i % DXL_DMA_NUM_QUEUES);
    }
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_COUNT), ==, 0);
    g_assert_cmphex(dxl_rd(d, DXL_REG_ERR_HEAD), ==, 0);
    dxl_wr(d, DXL_REG_ERR_POP, 1);      /* popping an empty log: harmless */
    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_COUNT), ==, 0);
    g_assert_cmpuint(dxl_qom_get_uint(d, "stat-errors"), ==,
                     DXL_DMA_ERRLOG_DEPTH + 5);
    dxl_stop(d);
}

/*
 * The engine does not master the bus while bus mastering is off or the
 * function is in D3hot; the work waits and runs once allowed again.
 */
static void test_busmaster_pm(const void *data)
{
    DxlDev *d = dxl_start(GPOINTER_TO_INT(data));
    uint8_t pm = qpci_find_capability(d->pdev, PCI_CAP_ID_PM, 0);
    uint16_t cmd = qpci_config_readw(d->pdev, PCI_COMMAND);
    DxlRing r;
    struct dxl_dma_cpl c;

    dxl_ring_init(d, &r, 0, 4);
    qpci_config_writew(d->pdev, PCI_COMMAND, cmd & ~PCI_COMMAND_MASTER);
    g_assert_cmphex(dxl_rd(d, DXL_REG_STATUS) & DXL_STATUS_NO_BUSMASTER, ==,
                    DXL_STATUS_NO_BUSMASTER);
    dxl_ring_post(&r, DXL_OP_NOP, 0, 0, 0, 0, 1);
    dxl_ring_kick(&r);
    dxl_rd(d, DXL_REG_STATUS);
    g_assert(!dxl_ring_peek(&r, &c));
    qpci_config_writew(d->pdev, PCI_COMMAND, cmd);
    dxl_ring_wait(&r, &c);
    dxl_ring_ack(&r);

    qpci_config_writew(d->pdev, pm + PCI_PM_CTRL, 3);   /* D3hot */
    g_assert_cmphex(dxl_rd(d, DXL_REG_STATUS) & DXL_STATUS_LOW_POWER, ==,
                    DXL_STATUS_LOW_POWER);
    dxl_ring_post(&r, DXL_OP_NOP, 0, 0, 0, 0, 2);
    dxl_ring_kick(&r);
    dxl_rd(d, DXL_REG_STATUS);
    g_assert(!dxl_ring_peek(&r, &c));
    qpci_config_writew(d->pdev, pm + PCI_PM_CTRL, 0);
    dxl_ring_wait(&r, &c);
    g_assert_cmpuint(le64_to_cpu(c.cookie), ==, 2);
    dxl_stop(d);
}

/*
 * Map BAR1 (MSI-X, unused here) at @addr.  At 0xa0000 it shows through the
 * legacy VGA/SMRAM window over RAM (on q35 the root port forwards that
 * window once its VGA enable is set).
 */
static void dxl_bar1_at(DxlDev *d, uint32_t addr)
{
    if (d->q35) {
        QPCIDevice *rp = qpci_device_find(d->bus, DXL_RP_DEVFN);

        qpci_config_writew(rp, PCI_BRIDGE_CONTROL, PCI_BRIDGE_CTL_VGA);
        g_free(rp);
    }
    qpci_config_writel(d->pdev, PCI_BASE_ADDRESS_1, addr);
}

/*
 * Rings that stop being RAM after the queue was enabled (here: the device's
 * own BAR1 mapped over them) halt the queue with SQ_FETCH or CQ_WRITE; the
 * queue does nothing more until Q_CTRL.RESET, and works again after it.
 * Other queues never stop.
 */
static void test_queue_halt(const void *data)
{
    bool q35 = GPOINTER_TO_INT(data) & 1;
    bool cq_case = GPOINTER_TO_INT(data) & 2;
    DxlDev *d = dxl_start(q35);
    const uint64_t win = 0xa0000;
    DxlRing r, other;
    struct dxl_dma_cpl c;
    uint64_t sq, cq;

    dxl_ring_init(d, &other, 0, 4);
    sq = cq_case ? dxl_alloc(d, 4096, 4096) : win;
    cq = cq_case ? win : dxl_alloc(d, 4096, 4096);
    memset(dxl_ptr(d, win), 0, 4096);
    memset(&r, 0, sizeof(r));
    r.d = d;
    r.q = 6;
    r.size = 4;
    r.phase = true;
    r.sq = sq;
    r.cq = cq;
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_SQ_BASE_LO), sq);
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_SQ_SIZE), 4);
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_CQ_BASE_LO), cq);
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_CQ_SIZE), 4);
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(6, DXL_Q_STATUS)), ==,
                    DXL_QSTS_ENABLED);
    /* Works while the window is RAM */
    dxl_ring_run(&r, DXL_OP_NOP, 0, 0, 0, 0, 1, &c);
    g_assert_cmpuint(c.status, ==, DXL_ERR_OK);

    dxl_bar1_at(d, win);
    dxl_ring_post(&r, DXL_OP_NOP, DXL_DESC_F_IRQ, 0, 0, 0, 2);
    dxl_ring_kick(&r);
    dxl_rd(d, DXL_REG_STATUS);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(6, DXL_Q_STATUS)) & DXL_QSTS_HALTED,
                    ==, DXL_QSTS_HALTED);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(6, DXL_Q_STATUS)) >>
                    DXL_QSTS_ERR_SHIFT, ==,
                    cq_case ? DXL_ERR_CQ_WRITE : DXL_ERR_SQ_FETCH);
    g_assert_cmphex(dxl_rd(d, DXL_REG_ERR_ADDR_LO), ==,
                    cq_case ? cq + 16 : sq + 32);
    dxl_expect_error(d, cq_case ? DXL_ERR_CQ_WRITE : DXL_ERR_SQ_FETCH, 6);
    g_assert_cmphex(dxl_rd(d, DXL_REG_INT_STATUS) & DXL_INT_ERROR, ==,
                    DXL_INT_ERROR);

    /* Halted: even with the memory back, nothing happens */
    dxl_bar1_at(d, 0xe8000000);
    dxl_ring_kick(&r);
    dxl_rd(d, DXL_REG_STATUS);
    g_assert(!dxl_ring_peek(&r, &c));
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(6, DXL_Q_STATUS)) & DXL_QSTS_HALTED,
                    ==, DXL_QSTS_HALTED);

    /* The other queue was never affected */
    dxl_check_works(d, &other);
    /* Reset brings the queue back */
    dxl_wr(d, DXL_REG_Q(6, DXL_Q_CTRL), DXL_QCTRL_RESET);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(6, DXL_Q_STATUS)), ==, 0);
    dxl_ring_init(d, &r, 6, 4);
    dxl_check_works(d, &r);
    dxl_stop(d);
}

static void add_both(const char *name, GTestDataFunc fn)
{
    int m;

    for (m = 0; m < 2; m++) {
        g_autofree char *path = g_strdup_printf("/dextlab-dma/%s/%s",
                                                dxl_machine(m == 0), name);

        g_test_add_data_func(path, GINT_TO_POINTER(m == 0), fn);
    }
}

int main(int argc, char **argv)
{
    static DxlErrCase cases[2][E_MAX_DESC];
    static DxlVecCase vecs[2][DXL_DMA_MSIX_VECTORS];
    int m, e, v;

    g_test_init(&argc, &argv, NULL);

    add_both("identity", test_identity);
    for (m = 0; m < 2; m++) {
        for (v = 0; v < DXL_DMA_MSIX_VECTORS; v++) {
            g_autofree char *path = g_strdup_printf(
                "/dextlab-dma/%s/msix/vector-%d", dxl_machine(m == 0), v);

            vecs[m][v].q35 = m == 0;
            vecs[m][v].vector = v;
            g_test_add_data_func(path, &vecs[m][v], test_msix_vector);
        }
    }
    add_both("msix/masked-pba", test_msix_pba);
    add_both("msi", test_msi);
    add_both("intx", test_intx);
    add_both("coalesce/count", test_coalesce_count);
    add_both("coalesce/time", test_coalesce_time);
    add_both("dma/ops", test_dma_ops);
    add_both("dma/16mib", test_dma_16mib);
    add_both("dma/all-queues", test_dma_all_queues);
    add_both("dma/fence", test_fence);
    g_test_add_data_func("/dextlab-dma/q35/dma/responsive",
                         GINT_TO_POINTER(true), test_responsive);
    add_both("dma/cq-full", test_cq_full);
    add_both("dma/pacing", test_pacing);
    add_both("devmem", test_devmem);
    add_both("errors/queue-setup", test_queue_errors);
    add_both("errors/log-overflow", test_errlog_overflow);
    add_both("busmaster-pm", test_busmaster_pm);
    for (m = 0; m < 2; m++) {
        g_autofree char *p1 = g_strdup_printf(
            "/dextlab-dma/%s/errors/sq-fetch-halt", dxl_machine(m == 0));
        g_autofree char *p2 = g_strdup_printf(
            "/dextlab-dma/%s/errors/cq-write-halt", dxl_machine(m == 0));

        g_test_add_data_func(p1, GINT_TO_POINTER(m == 0), test_queue_halt);
        g_test_add_data_func(p2, GINT_TO_POINTER((m == 0) | 2),
                             test_queue_halt);
    }
    for (m = 0; m < 2; m++) {
        for (e = 0; e < E_MAX_DESC; e++) {
            g_autofree char *path = NULL;

            cases[m][e].q35 = m == 0;
            cases[m][e].e = e;
            path = g_strdup_printf("/dextlab-dma/%s/errors/desc/%s",
                                   dxl_machine(m == 0), desc_err_names[e]);
            g_test_add_data_func(path, &cases[m][e], test_desc_error);
        }
    }
    return g_test_run();
}
