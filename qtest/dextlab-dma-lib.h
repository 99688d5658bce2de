/*
 * Helpers shared by the dextlab-dma qtests: start QEMU with guest RAM in a
 * shared file (so buffers are filled and checked with memcpy, not with
 * thousands of qtest memwrites), place the function on q35 (behind a
 * pcie-root-port) or pc, and drive its queues.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef DEXTLAB_DMA_LIB_H
#define DEXTLAB_DMA_LIB_H

#include "qemu/osdep.h"
#include <sys/mman.h>
#include "qemu/atomic.h"
#include "qemu/bswap.h"
#include "libqtest.h"
#include "libqos/pci.h"
#include "libqos/pci-pc.h"
#include "qapi/qmp/qdict.h"
#include "hw/pci/pci_regs.h"
#include "hw/dextlab/dextlab-dma-regs.h"

#define DXL_RAM_SIZE        (256 * 1024 * 1024)
#define DXL_RAM_BASE        (2 * 1024 * 1024)   /* bump allocator start */
#define DXL_WAIT_US         (20 * G_USEC_PER_SEC)
#define DXL_RP_DEVFN        0x08                /* root port at 00:01.0 */
#define DXL_Q35_DEVFN       0x100               /* 01:00.0 behind it */
#define DXL_PC_DEVFN        0x20                /* 00:04.0 */
#define DXL_APIC_ADDR       0xfee00000ULL

typedef struct DxlDev {
    QTestState *qts;
    QPCIBus *bus;
    QPCIDevice *pdev;
    QPCIBar bar0;
    QPCIBar bar2;
    uint64_t bar0_addr;
    uint64_t bar2_addr;
    uint8_t *ram;
    uint64_t alloc;
    bool q35;
} DxlDev;

typedef struct DxlRing {
    DxlDev *d;
    unsigned q;
    uint64_t sq;
    uint64_t cq;
    uint32_t size;
    uint32_t tail;      /* our SQ producer index */
    uint32_t head;      /* our CQ consumer index */
    bool phase;         /* phase tag expected next */
} DxlRing;

static inline const char *dxl_machine(bool q35)
{
    return q35 ? "q35" : "pc";
}

/* Start QEMU; @mem_path names the shared RAM file (created by QEMU). */
static QTestState *G_GNUC_UNUSED dxl_qemu_start(bool q35, const char *mem_path,
                                                const char *dev_props,
                                                const char *extra)
{
    g_autofree char *args = NULL;

    args = g_strdup_printf(
        "-nodefaults -machine %s,memory-backend=mem0 -m %u "
        "-object memory-backend-file,id=mem0,size=%u,mem-path=%s,share=on "
        "%s -device dextlab-dma,id=dxl%s%s%s %s",
        dxl_machine(q35), DXL_RAM_SIZE >> 20, DXL_RAM_SIZE, mem_path,
        q35 ? "-device pcie-root-port,id=rp0,chassis=1,slot=0,addr=1.0" : "",
        q35 ? ",bus=rp0,addr=0.0" : ",addr=4.0",
        dev_props ? "," : "", dev_props ? dev_props : "", extra ? extra : "");
    return qtest_init(args);
}

static uint8_t *G_GNUC_UNUSED dxl_map_ram(const char *mem_path)
{
    int fd = open(mem_path, O_RDWR);
    void *p;

    g_assert_cmpint(fd, >=, 0);
    p = mmap(NULL, DXL_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    g_assert(p != MAP_FAILED);
    close(fd);
    /* QEMU keeps its own mapping: the name can go now */
    unlink(mem_path);
    return p;
}

static inline uint32_t dxl_rd(DxlDev *d, uint32_t reg)
{
    return qpci_io_readl(d->pdev, d->bar0, reg);
}

static inline void dxl_wr(DxlDev *d, uint32_t reg, uint32_t val)
{
    qpci_io_writel(d->pdev, d->bar0, reg, val);
}

/*
 * (Re)discover the function and give it BARs.  On q35 the root port is set
 * up by hand first: under qtest there is no firmware to number buses and
 * open bridge windows.  Also used after FLR and system reset.
 */
static void G_GNUC_UNUSED dxl_pci_setup(DxlDev *d)
{
    g_free(d->pdev);
    d->pdev = NULL;
    if (d->bus) {
        qpci_free_pc(d->bus);
    }
    d->bus = qpci_new_pc(d->qts, NULL);
    if (d->q35) {
        QPCIDevice *rp = qpci_device_find(d->bus, DXL_RP_DEVFN);

        g_assert(rp);
        qpci_config_writeb(rp, PCI_PRIMARY_BUS, 0);
        qpci_config_writeb(rp, PCI_SECONDARY_BUS, 1);
        qpci_config_writeb(rp, PCI_SUBORDINATE_BUS, 1);
        /* Memory window 0xe0000000-0xefffffff covers every BAR we map */
        qpci_config_writew(rp, PCI_MEMORY_BASE, 0xe000);
        qpci_config_writew(rp, PCI_MEMORY_LIMIT, 0xeff0);
        qpci_config_writew(rp, PCI_PREF_MEMORY_BASE, 0xfff0);
        qpci_config_writew(rp, PCI_PREF_MEMORY_LIMIT, 0x0000);
        qpci_config_writew(rp, PCI_COMMAND,
                           PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
        g_free(rp);
    }
    d->pdev = qpci_device_find(d->bus, d->q35 ? DXL_Q35_DEVFN : DXL_PC_DEVFN);
    g_assert(d->pdev);
    g_assert_cmphex(qpci_config_readw(d->pdev, PCI_VENDOR_ID), ==,
                    DXL_PCI_VENDOR_ID);
    d->bar0 = qpci_iomap(d->pdev, DXL_DMA_BAR_REGS, NULL);
    d->bar2 = qpci_iomap(d->pdev, DXL_DMA_BAR_DEVMEM, NULL);
    d->bar0_addr = d->bar0.addr;
    d->bar2_addr = d->bar2.addr;
    qpci_device_enable(d->pdev);
}

static DxlDev *G_GNUC_UNUSED dxl_start_props(bool q35, const char *props,
                                             const char *extra)
{
    DxlDev *d = g_new0(DxlDev, 1);
    g_autofree char *path = g_strdup_printf("/dev/shm/dxl-qtest-%d-%u",
                                            getpid(), g_test_rand_int());

    d->q35 = q35;
    d->qts = dxl_qemu_start(q35, path, props, extra);
    d->ram = dxl_map_ram(path);
    d->alloc = DXL_RAM_BASE;
    dxl_pci_setup(d);
    return d;
}

static DxlDev *G_GNUC_UNUSED dxl_start(bool q35)
{
    return dxl_start_props(q35, NULL, NULL);
}

static void G_GNUC_UNUSED dxl_stop(DxlDev *d)
{
    g_free(d->pdev);
    qpci_free_pc(d->bus);
    qtest_quit(d->qts);
    munmap(d->ram, DXL_RAM_SIZE);
    g_free(d);
}

static uint64_t G_GNUC_UNUSED dxl_alloc(DxlDev *d, uint64_t size,
                                        uint64_t align)
{
    uint64_t a = QEMU_ALIGN_UP(d->alloc, align);

    g_assert_cmpuint(a + size, <=, DXL_RAM_SIZE);
    d->alloc = a + size;
    return a;
}

static inline void *dxl_ptr(DxlDev *d, uint64_t gpa)
{
    g_assert_cmpuint(gpa, <, DXL_RAM_SIZE);
    return d->ram + gpa;
}

/* Enable MSI-X with vector v -> APIC address, data 0x40 + v. */
static void G_GNUC_UNUSED dxl_msix_setup(DxlDev *d)
{
    QPCIDevice *p = d->pdev;
    unsigned v;

    qpci_msix_enable(p);
    for (v = 0; v < DXL_DMA_MSIX_VECTORS; v++) {
        uint64_t off = p->msix_table_off + v * PCI_MSIX_ENTRY_SIZE;

        qpci_io_writel(p, p->msix_table_bar, off + PCI_MSIX_ENTRY_LOWER_ADDR,
                       DXL_APIC_ADDR);
        qpci_io_writel(p, p->msix_table_bar, off + PCI_MSIX_ENTRY_UPPER_ADDR,
                       0);
        qpci_io_writel(p, p->msix_table_bar, off + PCI_MSIX_ENTRY_DATA,
                       0x40 + v);
        qpci_io_writel(p, p->msix_table_bar, off + PCI_MSIX_ENTRY_VECTOR_CTRL,
                       0);
    }
}

static void G_GNUC_UNUSED dxl_fill_random(void *p, size_t len)
{
    uint8_t *b = p;
    size_t i;
    uint32_t x = g_test_rand_int();

    for (i = 0; i < len; i++) {
        x = x * 1103515245 + 12345;
        b[i] = x >> 23;
    }
}

/* Program queue @q's rings (fresh guest memory) and enable it. */
static void G_GNUC_UNUSED dxl_ring_init(DxlDev *d, DxlRing *r, unsigned q,
                                        uint32_t size)
{
    memset(r, 0, sizeof(*r));
    r->d = d;
    r->q = q;
    r->size = size;
    r->phase = true;
    r->sq = dxl_alloc(d, size * sizeof(struct dxl_dma_desc), 4096);
    r->cq = dxl_alloc(d, size * sizeof(struct dxl_dma_cpl), 4096);
    memset(dxl_ptr(d, r->cq), 0, size * sizeof(struct dxl_dma_cpl));
    dxl_wr(d, DXL_REG_CTRL, DXL_CTRL_ENABLE);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_BASE_LO), r->sq);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_BASE_HI), r->sq >> 32);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_SQ_SIZE), size);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_BASE_LO), r->cq);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_BASE_HI), r->cq >> 32);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_CQ_SIZE), size);
    dxl_wr(d, DXL_REG_Q(q, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
    g_assert_cmphex(dxl_rd(d, DXL_REG_Q(q, DXL_Q_STATUS)) &
                    (DXL_QSTS_ENABLED | DXL_QSTS_HALTED), ==,
                    DXL_QSTS_ENABLED);
}

/* Write a descriptor at the SQ tail (no doorbell); returns its slot. */
static uint32_t G_GNUC_UNUSED dxl_ring_post(DxlRing *r, uint8_t op,
                                            uint8_t flags, uint32_t len,
                                            uint64_t src, uint64_t dst,
                                            uint64_t cookie)
{
    struct dxl_dma_desc desc = {
        .opcode = op, .flags = flags, .length = cpu_to_le32(len),
        .src = cpu_to_le64(src), .dst = cpu_to_le64(dst),
        .cookie = cpu_to_le64(cookie),
    };
    uint32_t slot = r->tail;

    memcpy(dxl_ptr(r->d, r->sq + slot * sizeof(desc)), &desc, sizeof(desc));
    r->tail = (r->tail + 1) % r->size;
    return slot;
}

static void G_GNUC_UNUSED dxl_ring_kick(DxlRing *r)
{
    smp_mb(); /* descriptors in shared memory before the doorbell */
    dxl_wr(r->d, DXL_REG_Q(r->q, DXL_Q_SQ_TAIL), r->tail);
}

static bool G_GNUC_UNUSED dxl_ring_peek(DxlRing *r, struct dxl_dma_cpl *c)
{
    struct dxl_dma_cpl *e = dxl_ptr(r->d, r->cq + r->head * sizeof(*c));

    smp_mb(); /* QEMU writes the CQ from another process: see it fresh */
    if (!!(qatomic_read(&e->flags) & DXL_CPL_F_PHASE) != r->phase) {
        return false;
    }
    smp_rmb(); /* the phase tag before the rest of the entry */
    memcpy(c, e, sizeof(*c));
    r->head = (r->head + 1) % r->size;
    if (r->head == 0) {
        r->phase = !r->phase;
    }
    return true;
}

/* Wait (bounded) for the next completion. */
static void G_GNUC_UNUSED dxl_ring_wait(DxlRing *r, struct dxl_dma_cpl *c)
{
    gint64 deadline = g_get_monotonic_time() + DXL_WAIT_US;

    while (!dxl_ring_peek(r, c)) {
        g_assert_cmpint(g_get_monotonic_time(), <, deadline);
        /* A register read is a round trip: QEMU's main loop ran meanwhile */
        dxl_rd(r->d, DXL_REG_STATUS);
    }
}

/* Tell the device how far we consumed the CQ. */
static void G_GNUC_UNUSED dxl_ring_ack(DxlRing *r)
{
    dxl_wr(r->d, DXL_REG_Q(r->q, DXL_Q_CQ_HEAD), r->head);
}

/* Post one descriptor, ring, wait for and return its completion. */
static void G_GNUC_UNUSED dxl_ring_run(DxlRing *r, uint8_t op, uint8_t flags,
                                       uint32_t len, uint64_t src,
                                       uint64_t dst, uint64_t cookie,
                                       struct dxl_dma_cpl *c)
{
    dxl_ring_post(r, op, flags, len, src, dst, cookie);
    dxl_ring_kick(r);
    dxl_ring_wait(r, c);
    dxl_ring_ack(r);
    g_assert_cmphex(le64_to_cpu(c->cookie), ==, cookie);
}

static uint64_t G_GNUC_UNUSED dxl_qom_get_uint(DxlDev *d, const char *prop)
{
    QDict *resp = qtest_qmp(d->qts, "{'execute': 'qom-get', 'arguments': "
                            "{'path': '/machine/peripheral/dxl', "
                            "'property': %s}}", prop);
    uint64_t v;

    g_assert(qdict_haskey(resp, "return"));
    v = qdict_get_int(resp, "return");
    qobject_unref(resp);
    return v;
}

/* CRC32C (Castagnoli), bitwise reference, independent of QEMU's table. */
static uint32_t G_GNUC_UNUSED dxl_ref_crc32c(uint32_t crc, const void *buf,
                                             size_t len)
{
    static uint32_t table[256];
    const uint8_t *p = buf;
    size_t i;

    if (!table[1]) {
        for (i = 0; i < 256; i++) {
            uint32_t c = i;
            int k;

            for (k = 0; k < 8; k++) {
                c = (c & 1) ? (c >> 1) ^ 0x82f63b78 : c >> 1;
            }
            table[i] = c;
        }
    }
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    }
    return ~crc;
}

/* Pop the oldest error log entry after checking it. */
static void G_GNUC_UNUSED dxl_expect_error(DxlDev *d, uint8_t code,
                                           unsigned q)
{
    uint32_t head;

    g_assert_cmpuint(dxl_rd(d, DXL_REG_ERR_COUNT), >, 0);
    head = dxl_rd(d, DXL_REG_ERR_HEAD);
    g_assert_cmphex(head & DXL_ERRH_CODE_MASK, ==, code);
    g_assert_cmphex((head & DXL_ERRH_QUEUE_MASK) >> DXL_ERRH_QUEUE_SHIFT, ==,
                    q);
    dxl_wr(d, DXL_REG_ERR_POP, 1);
}

#endif /* DEXTLAB_DMA_LIB_H */
