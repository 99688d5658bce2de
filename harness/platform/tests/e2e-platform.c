/*
 * End-to-end tests of the platform layer against the dextlab QEMU fork
 * under -accel qtest: enumeration on q35 (devices behind root ports) and
 * pc, BAR placement, config/BAR access and its bounds, posted-write
 * ordering under concurrency, DMA memory shared with the device (a real
 * DMA round trip through dextlab-dma), MSI-X/MSI/INTx delivery to eventfds,
 * QMP, function reset, QEMU stopped (timeouts) and killed mid-call (clean
 * -EPIPE/-ESHUTDOWN in bounded time), emulator_cpus (every QEMU thread on
 * the CPUs asked for; a bad list refused before QEMU starts), and no fd,
 * process or /dev/shm leak.
 *
 * Fails when no QEMU binary is configured.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <CUnit/Basic.h>

#include "platform.h"
#include "../../common/mmio-channel.h"
#include "hw/dextlab/dextlab-dma-regs.h"

static const char *const q35_devices[] = {
    "pcie-root-port,id=rp0,chassis=1,slot=1",
    "pcie-root-port,id=rp1,chassis=2,slot=2",
    "dextlab-dma,id=dma0,bus=rp0",
    "qemu-xhci,id=xhci,bus=rp1",
    "virtio-net-pci,romfile=,id=net0",
    "pcie-root-port,id=rp2,chassis=3,slot=3",
    NULL,
};

static DextPlatform *plat;          /* the shared q35 machine */
static DextPciFunction *fns;
static size_t nfns;
static DextPciFunction dma;         /* dextlab-dma behind rp0 */

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    while ((e = readdir(d))) {
        n += e->d_name[0] != '.';
    }
    closedir(d);
    return n - 1;        /* the DIR's own fd */
}

static int count_shm(void)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    int n = 0;

    if (!d) {
        return 0;
    }
    while ((e = readdir(d))) {
        n += !strncmp(e->d_name, "dextlab", 7);
    }
    closedir(d);
    return n;
}

/* Our direct children whose name is qemu-system-* (pids). */
static GArray *qemu_children(void)
{
    GArray *a = g_array_new(FALSE, FALSE, sizeof(pid_t));
    DIR *d = opendir("/proc");
    struct dirent *e;

    while ((e = readdir(d))) {
        char path[64], *txt = NULL;
        pid_t pid = atoi(e->d_name);

        if (pid <= 0) {
            continue;
        }
        snprintf(path, sizeof(path), "/proc/%d/stat", pid);
        if (g_file_get_contents(path, &txt, NULL, NULL)) {
            char *rp = strrchr(txt, ')');
            int ppid = 0;
            char st;

            if (rp && sscanf(rp + 2, "%c %d", &st, &ppid) == 2 &&
                ppid == getpid() && strstr(txt, "qemu-system") && st != 'Z') {
                g_array_append_val(a, pid);
            }
            g_free(txt);
        }
    }
    closedir(d);
    return a;
}

static bool find_fn(uint16_t vid, uint16_t did, DextPciFunction *out)
{
    for (size_t i = 0; i < nfns; i++) {
        if (fns[i].vendor_id == vid && fns[i].device_id == did) {
            *out = fns[i];
            return true;
        }
    }
    return false;
}

static const DextPciFunction *fn_at(DextPciFunction *v, size_t n,
                                    DextPciAddr a)
{
    for (size_t i = 0; i < n; i++) {
        if (dext_pci_addr_equal(v[i].addr, a)) {
            return &v[i];
        }
    }
    return NULL;
}

static bool wait_efd(int efd, int ms, uint64_t *count)
{
    struct pollfd p = { .fd = efd, .events = POLLIN };
    uint64_t v = 0;

    if (poll(&p, 1, ms) != 1) {
        return false;
    }
    if (read(efd, &v, sizeof(v)) != sizeof(v)) {
        return false;
    }
    if (count) {
        *count = v;
    }
    return true;
}

static uint32_t reg_rd(uint32_t off)
{
    uint64_t v = ~0ull;

    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, DXL_DMA_BAR_REGS,
                                           off, 4, &v), 0);
    return v;
}

static void reg_wr(uint32_t off, uint32_t v)
{
    CU_ASSERT_EQUAL(dext_platform_bar_write(plat, dma.addr, DXL_DMA_BAR_REGS,
                                            off, 4, v), 0);
}

/* ------------------------------------------------------------ q35 */

static int q35_init(void)
{
    DextMachineDesc d = {
        .machine = "q35",
        .ram_size = 256ull << 20,
        .devices = q35_devices,
        .timeout_ms = 5000,
    };
    int r = dext_platform_qtest_create(&d, &plat);

    if (r < 0) {
        fprintf(stderr, "create: %s\n", dext_platform_last_error(NULL));
        return 1;
    }
    r = dext_platform_pci_enumerate(plat, false, &fns, &nfns);
    if (r < 0) {
        fprintf(stderr, "enumerate: %s\n", dext_platform_last_error(plat));
        return 1;
    }
    return find_fn(DXL_PCI_VENDOR_ID, DXL_DMA_PCI_DEVICE_ID, &dma) ? 0 : 1;
}

static int q35_clean(void)
{
    dext_platform_destroy(plat);
    g_free(fns);
    fns = NULL;
    plat = NULL;
    return 0;
}

static void test_q35_enumerate(void)
{
    DextPciFunction xhci, net, rp;
    const DextPciFunction *par;

    CU_ASSERT_TRUE(find_fn(0x8086, 0x29c0, &rp));     /* MCH */
    CU_ASSERT_TRUE_FATAL(find_fn(0x1b36, 0x000d, &xhci));
    CU_ASSERT_TRUE_FATAL(find_fn(0x1af4, 0x1000, &net));
    /* behind root ports, on their own buses */
    CU_ASSERT_TRUE(dma.has_parent);
    CU_ASSERT_TRUE(xhci.has_parent);
    CU_ASSERT_FALSE(net.has_parent);
    CU_ASSERT_NOT_EQUAL(dma.addr.bus, 0);
    CU_ASSERT_NOT_EQUAL(xhci.addr.bus, 0);
    CU_ASSERT_NOT_EQUAL(dma.addr.bus, xhci.addr.bus);
    par = fn_at(fns, nfns, dma.parent);
    CU_ASSERT_PTR_NOT_NULL_FATAL(par);
    CU_ASSERT_TRUE(par->is_bridge);
    CU_ASSERT_EQUAL(par->pcie_port_type, 4);          /* root port */
    CU_ASSERT_EQUAL(par->secondary_bus, dma.addr.bus);
    CU_ASSERT_EQUAL(par->class_base, 0x06);
    CU_ASSERT_EQUAL(par->class_sub, 0x04);
    /* identity and capabilities from the register map header */
    CU_ASSERT_EQUAL(dma.subsys_vendor_id, DXL_DMA_PCI_SUBVENDOR_ID);
    CU_ASSERT_EQUAL(dma.subsys_id, DXL_DMA_PCI_SUBSYSTEM_ID);
    CU_ASSERT_EQUAL(dma.revision, DXL_DMA_PCI_REVISION);
    CU_ASSERT_EQUAL((dma.class_base << 16) | (dma.class_sub << 8) |
                    dma.class_prog_if, DXL_DMA_PCI_CLASS);
    CU_ASSERT_EQUAL(dma.msix_cap, DXL_DMA_CAP_MSIX_OFFSET);
    CU_ASSERT_EQUAL(dma.msix_table_size, DXL_DMA_MSIX_VECTORS);
    CU_ASSERT_EQUAL(dma.msix_table_bar, DXL_DMA_BAR_MSIX);
    CU_ASSERT_EQUAL(dma.msix_pba_offset, DXL_DMA_MSIX_PBA_OFFSET);
    CU_ASSERT_EQUAL(dma.msi_cap, DXL_DMA_CAP_MSI_OFFSET);
    CU_ASSERT_EQUAL(dma.pcie_cap, DXL_DMA_CAP_EXP_OFFSET);
    CU_ASSERT_EQUAL(dma.pm_cap, DXL_DMA_CAP_PM_OFFSET);
    CU_ASSERT_EQUAL(dma.bars[0].size, DXL_DMA_BAR0_SIZE);
    CU_ASSERT_EQUAL(dma.bars[2].size, DXL_DMA_DEVMEM_SIZE);
    CU_ASSERT_TRUE(dma.bars[2].prefetchable);
    CU_ASSERT_EQUAL(dma.irq_pin, 1);
    CU_ASSERT(dma.irq_gsi >= 16 && dma.irq_gsi < 24);
    CU_ASSERT(net.bars[0].kind == DEXT_BAR_IO);
    CU_ASSERT(net.bars[4].kind == DEXT_BAR_MEM64);
}

/* All BARs: aligned, pairwise disjoint per space, inside every ancestor
 * bridge's window, and what config space holds. */
static void test_q35_bars(void)
{
    for (size_t i = 0; i < nfns; i++) {
        for (int b = 0; b < DEXT_PCI_NUM_BARS; b++) {
            const DextPciBar *x = &fns[i].bars[b];
            const DextPciFunction *f = &fns[i];
            uint32_t lo = 0;

            if (!x->kind) {
                continue;
            }
            CU_ASSERT_NOT_EQUAL(x->addr, 0);
            CU_ASSERT_EQUAL(x->addr % x->size, 0);
            CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, f->addr, 0x10 + 4 * b,
                                                   4, &lo), 0);
            CU_ASSERT_EQUAL(lo & ~0xfu & (x->kind == DEXT_BAR_IO ? ~0u : ~0u),
                            (uint32_t)x->addr & ~0xfu);
            for (size_t j = 0; j < nfns; j++) {
                for (int c = 0; c < DEXT_PCI_NUM_BARS; c++) {
                    const DextPciBar *y = &fns[j].bars[c];

                    if ((i == j && b == c) || !y->kind ||
                        (y->kind == DEXT_BAR_IO) != (x->kind == DEXT_BAR_IO)) {
                        continue;
                    }
                    CU_ASSERT_FALSE(x->addr < y->addr + y->size &&
                                    y->addr < x->addr + x->size);
                }
            }
            while (f->has_parent) {
                const DextPciFunction *p = fn_at(fns, nfns, f->parent);
                bool in = false;

                CU_ASSERT_PTR_NOT_NULL_FATAL(p);
                for (int w = 0; w < 3; w++) {
                    if ((w == DEXT_WIN_IO) != (x->kind == DEXT_BAR_IO)) {
                        continue;
                    }
                    in |= x->addr >= p->window_base[w] &&
                          x->addr + x->size <=
                          p->window_base[w] + p->window_size[w];
                }
                CU_ASSERT_TRUE(in);
                f = p;
            }
        }
    }
}

static void test_q35_cfg_bar_access(void)
{
    uint32_t v = 0;
    uint64_t q = 0;
    char *ret = NULL;

    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 0, 4, &v), 0);
    CU_ASSERT_EQUAL(v, DXL_PCI_VENDOR_ID | (DXL_DMA_PCI_DEVICE_ID << 16));
    /* extended config space works through ECAM on q35 */
    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 0x100, 4, &v), 0);
    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 0x1000, 4, &v),
                    -ERANGE);
    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 2, 4, &v), -EINVAL);
    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 0, 3, &v), -EINVAL);

    /* decode is off after enumeration: the device does not answer (QEMU
     * reads unassigned memory as 0, hardware as all-ones) */
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 0, DXL_REG_ID, 4,
                                           &q), 0);
    CU_ASSERT_NOT_EQUAL(q, DXL_DMA_ID_MAGIC);
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 4, 2, &v), 0);
    CU_ASSERT_EQUAL(v & 6, 6);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_ID), DXL_DMA_ID_MAGIC);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_VERSION), DXL_DMA_VERSION);
    /* posted write, then a read in the same thread sees it */
    reg_wr(DXL_REG_SCRATCH, 0xa5a55a5a);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_SCRATCH), 0xa5a55a5a);
    for (uint32_t i = 0; i < 100; i++) {
        reg_wr(DXL_REG_SCRATCH, i);
    }
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_SCRATCH), 99);
    /* 64-bit access of device memory (BAR2) */
    CU_ASSERT_EQUAL(dext_platform_bar_write(plat, dma.addr, 2, 8, 8,
                                            0x0123456789abcdefull), 0);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 2, 8, 8, &q), 0);
    CU_ASSERT_EQUAL(q, 0x0123456789abcdefull);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 2, 14, 2, &q), 0);
    CU_ASSERT_EQUAL(q, 0x0123);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 2, 9, 1, &q), 0);
    CU_ASSERT_EQUAL(q, 0xcd);
    /* bounds */
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 0,
                                           DXL_DMA_BAR0_SIZE, 4, &q), -ERANGE);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 0,
                                           DXL_DMA_BAR0_SIZE - 4, 8, &q),
                    -EINVAL);                          /* misaligned */
    CU_ASSERT_EQUAL(dext_platform_bar_write(plat, dma.addr, 2,
                                            DXL_DMA_DEVMEM_SIZE - 4, 8, 0),
                    -EINVAL);
    CU_ASSERT_EQUAL(dext_platform_bar_write(plat, dma.addr, 2,
                                            ~0ull & ~7ull, 8, 0), -ERANGE);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 5, 0, 4, &q),
                    -ENODEV);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 6, 0, 4, &q),
                    -EINVAL);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 0, 0, 3, &q),
                    -EINVAL);
    CU_ASSERT_NOT_EQUAL(strlen(dext_platform_last_error(plat)), 0);
    {
        DextPciAddr none = { 0, 0x7f, 3, 1 };

        CU_ASSERT_EQUAL(dext_platform_bar_read(plat, none, 0, 0, 4, &q),
                        -ENODEV);
    }
    /* QMP: the machine agrees on where it put the BAR */
    CU_ASSERT_EQUAL(dext_platform_qmp(plat, "query-pci", NULL, &ret), 0);
    if (ret) {
        char *hex = g_strdup_printf("%" PRIu64, dma.bars[0].addr);

        CU_ASSERT_PTR_NOT_NULL(strstr(ret, hex));
        g_free(hex);
        g_free(ret);
        ret = NULL;
    }
    CU_ASSERT_EQUAL(dext_platform_qmp(plat, "no-such-command", NULL, &ret),
                    -EIO);
    CU_ASSERT_PTR_NOT_NULL(strstr(dext_platform_last_error(plat),
                                  "CommandNotFound"));
    CU_ASSERT_EQUAL(dext_platform_qmp(plat, "qom-get", "{not json", &ret),
                    -EINVAL);
    CU_ASSERT_EQUAL(dext_platform_qmp(plat, "qom-get",
                    "{\"path\":\"/machine/peripheral/dma0\","
                    "\"property\":\"type\"}", &ret), 0);
    CU_ASSERT_STRING_EQUAL(ret ? ret : "", "\"dextlab-dma\"");
    g_free(ret);
}

/* Several threads interleave posted writes and reads on their own slice of
 * device memory: every read returns that thread's last write. */
typedef struct { int id; int errors; } ThrArg;

static gpointer hammer(gpointer opaque)
{
    ThrArg *a = opaque;

    for (uint64_t i = 0; i < 300; i++) {
        uint64_t off = 0x1000 + a->id * 64, v = 0;
        uint64_t want = ((uint64_t)a->id << 32) | i;

        if (dext_platform_bar_write(plat, dma.addr, 2, off, 8, want) < 0 ||
            dext_platform_bar_write(plat, dma.addr, 2, off + 8, 4, i) < 0 ||
            dext_platform_bar_read(plat, dma.addr, 2, off, 8, &v) < 0 ||
            v != want) {
            a->errors++;
        }
    }
    return NULL;
}

static void test_q35_threads(void)
{
    GThread *t[4];
    ThrArg a[4];

    for (int i = 0; i < 4; i++) {
        a[i] = (ThrArg){ .id = i };
        t[i] = g_thread_new("hammer", hammer, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        g_thread_join(t[i]);
        CU_ASSERT_EQUAL(a[i].errors, 0);
    }
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
}

/* A FILL descriptor through queue 0: the device writes guest RAM that we
 * see through the shared mapping, and the completion lands in the CQ. */
static void test_q35_dma_roundtrip(void)
{
    DextDmaRange sq, cq, buf;
    uint8_t *ram;
    uint64_t ramsz, efd_count = 0;
    int mfd = -1, efd = eventfd(0, EFD_CLOEXEC);
    struct dxl_dma_desc *d;
    volatile struct dxl_dma_cpl *c;
    DextIrqKind used;
    bool msi = dext_platform_has_msi(plat);

    CU_ASSERT_EQUAL_FATAL(dext_platform_memory_fd(plat, &mfd, &ramsz), 0);
    CU_ASSERT_EQUAL(ramsz, 256ull << 20);
    /* a separate mapping of the fd, as a driver process would make */
    ram = mmap(NULL, ramsz, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
    CU_ASSERT_FATAL(ram != MAP_FAILED);
    CU_ASSERT_EQUAL_FATAL(dext_platform_dma_alloc(plat, 32 * 4, 4096, &sq), 0);
    CU_ASSERT_EQUAL_FATAL(dext_platform_dma_alloc(plat, 16 * 4, 4096, &cq), 0);
    CU_ASSERT_EQUAL_FATAL(dext_platform_dma_alloc(plat, 3 * 4096 + 5, 65536,
                                                  &buf), 0);
    CU_ASSERT_EQUAL(buf.iova % 65536, 0);
    CU_ASSERT_EQUAL(buf.size, 4 * 4096);
    CU_ASSERT_EQUAL(dext_platform_dma_alloc(plat, 1ull << 40, 0, &buf),
                    -ENOMEM);
    CU_ASSERT_EQUAL(dext_platform_dma_alloc(plat, 4096, 3, &buf), -EINVAL);
    memset(ram + buf.fd_offset, 0, buf.size);

    if (msi) {
        CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_AUTO,
                                               DXL_DMA_VEC_QUEUE(0), efd,
                                               &used), 0);
        CU_ASSERT_EQUAL(used, DEXT_IRQ_MSIX);
    }
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    reg_wr(DXL_REG_CTRL, DXL_CTRL_ENABLE);
    reg_wr(DXL_REG_Q(0, DXL_Q_SQ_BASE_LO), (uint32_t)sq.iova);
    reg_wr(DXL_REG_Q(0, DXL_Q_SQ_BASE_HI), sq.iova >> 32);
    reg_wr(DXL_REG_Q(0, DXL_Q_SQ_SIZE), 4);
    reg_wr(DXL_REG_Q(0, DXL_Q_CQ_BASE_LO), (uint32_t)cq.iova);
    reg_wr(DXL_REG_Q(0, DXL_Q_CQ_BASE_HI), cq.iova >> 32);
    reg_wr(DXL_REG_Q(0, DXL_Q_CQ_SIZE), 4);
    reg_wr(DXL_REG_Q(0, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
    d = (struct dxl_dma_desc *)(ram + sq.fd_offset);
    *d = (struct dxl_dma_desc){
        .opcode = DXL_OP_FILL, .flags = DXL_DESC_F_IRQ, .length = 8192,
        .src = 0x1122334455667788ull, .dst = buf.iova + 4096,
        .cookie = 0xc00c1e,
    };
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    reg_wr(DXL_REG_Q(0, DXL_Q_SQ_TAIL), 1);
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    c = (volatile struct dxl_dma_cpl *)(ram + cq.fd_offset);
    for (int i = 0; i < 2000 && !(c->flags & DXL_CPL_F_PHASE); i++) {
        g_usleep(1000);
    }
    CU_ASSERT_TRUE(c->flags & DXL_CPL_F_PHASE);
    CU_ASSERT_EQUAL(c->cookie, 0xc00c1e);
    CU_ASSERT_EQUAL(c->status, DXL_ERR_OK);
    CU_ASSERT_EQUAL(ram[buf.fd_offset + 4095], 0);       /* before dst */
    CU_ASSERT_EQUAL(ram[buf.fd_offset + 4096], 0x88);
    CU_ASSERT_EQUAL(ram[buf.fd_offset + 4096 + 8191], 0x11);
    CU_ASSERT_EQUAL(ram[buf.fd_offset + 4096 + 8192], 0);  /* after */
    if (msi) {
        /* the completion's interrupt reached our eventfd */
        CU_ASSERT_TRUE(wait_efd(efd, 2000, &efd_count));
        CU_ASSERT_EQUAL(efd_count, 1);
        CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr,
                                                 DXL_DMA_VEC_QUEUE(0)), 0);
    }
    reg_wr(DXL_REG_Q(0, DXL_Q_CTRL), DXL_QCTRL_RESET);
    reg_wr(DXL_REG_CTRL, 0);
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_EQUAL(dext_platform_dma_free(plat, buf.iova), 0);
    CU_ASSERT_EQUAL(dext_platform_dma_free(plat, buf.iova), -EINVAL);
    CU_ASSERT_EQUAL(dext_platform_dma_free(plat, sq.iova), 0);
    CU_ASSERT_EQUAL(dext_platform_dma_free(plat, cq.iova), 0);
    munmap(ram, ramsz);
    close(efd);
}

static void test_q35_msix(void)
{
    int efd[3] = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC),
                   eventfd(0, EFD_CLOEXEC) };
    uint64_t n = 0;
    DextIrqStats st0, st1;

    if (!dext_platform_has_msi(plat)) {
        CU_FAIL("fork without msi_intercept");
        return;
    }
    dext_platform_irq_stats(plat, &st0);
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSIX,
                                           DXL_DMA_VEC_QUEUE(2), efd[0], NULL),
                    0);
    CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSIX,
                                           DXL_DMA_VEC_QUEUE(5), efd[1], NULL),
                    0);
    CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSIX,
                                           DXL_DMA_MSIX_VECTORS, efd[2], NULL),
                    -ERANGE);
    CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSI, 0,
                                           efd[2], NULL), -EBUSY);
    /* three raises on queue 2, one on queue 5: counts go where they belong */
    for (int i = 0; i < 3; i++) {
        reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(2));
    }
    reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(5));
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_TRUE(wait_efd(efd[0], 2000, &n));
    CU_ASSERT_EQUAL(n, 3);
    CU_ASSERT_TRUE(wait_efd(efd[1], 2000, &n));
    CU_ASSERT_EQUAL(n, 1);
    /* an unbound vector is masked: nothing arrives, nothing unclaimed */
    CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr,
                                             DXL_DMA_VEC_QUEUE(5)), 0);
    CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr,
                                             DXL_DMA_VEC_QUEUE(5)), -ENOENT);
    reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(5));
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_FALSE(wait_efd(efd[1], 100, NULL));
    dext_platform_irq_stats(plat, &st1);
    CU_ASSERT_EQUAL(st1.msi_received - st0.msi_received, 4);
    CU_ASSERT_EQUAL(st1.msi_unclaimed, st0.msi_unclaimed);
    CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr,
                                             DXL_DMA_VEC_QUEUE(2)), 0);
    reg_wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    for (int i = 0; i < 3; i++) {
        close(efd[i]);
    }
}

/*
 * The direct MSI path (fork patch 0006, msi_eventfd): a bound vector's MSI
 * reaches its eventfd from QEMU itself, the reader sees no "IRQ msi" line,
 * and the stats still count it (QEMU's count, harvested when the binding
 * goes).  Guards against the relay silently coming back on the hot path
 * and against a rebind or unbind leaving QEMU signalling a stale eventfd.
 */
static void test_q35_msix_direct(void)
{
    int efd[2] = { eventfd(0, EFD_CLOEXEC), eventfd(0, EFD_CLOEXEC) };
    uint64_t n = 0, t0;
    DextIrqStats st0, st1, st2;

    if (!dext_platform_has_msi(plat)) {
        CU_FAIL("fork without msi_intercept");
        return;
    }
    dext_platform_irq_stats(plat, &st0);
    t0 = g_get_monotonic_time() * 1000;
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSIX,
                                           DXL_DMA_VEC_QUEUE(3), efd[0], NULL),
                    0);
    dext_platform_irq_stats(plat, &st1);
    if (st1.direct_bindings != st0.direct_bindings + 1) {
        CU_FAIL("fork without msi_eventfd (hw/patches/0006)");
        dext_platform_irq_unbind(plat, dma.addr, DXL_DMA_VEC_QUEUE(3));
        goto out;
    }
    for (int i = 0; i < 5; i++) {
        reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(3));
    }
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_TRUE(wait_efd(efd[0], 2000, &n));
    CU_ASSERT_EQUAL(n, 5);
    dext_platform_irq_stats(plat, &st1);
    CU_ASSERT_EQUAL(st1.msi_direct - st0.msi_direct, 5);
    CU_ASSERT_EQUAL(st1.msi_received - st0.msi_received, 5);
    /* relayed = received - direct: the reader parsed no line */
    CU_ASSERT_EQUAL(st1.msi_received - st1.msi_direct,
                    st0.msi_received - st0.msi_direct);
    CU_ASSERT_TRUE(st1.last_msi_ns >= t0);
    CU_ASSERT_TRUE(st1.last_msi_ns <= (uint64_t)g_get_monotonic_time() * 1000);
    /* rebind to another eventfd: the old one hears nothing any more */
    CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSIX,
                                           DXL_DMA_VEC_QUEUE(3), efd[1], NULL),
                    0);
    reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(3));
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_TRUE(wait_efd(efd[1], 2000, &n));
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_FALSE(wait_efd(efd[0], 50, NULL));
    /* unbind: the count survives (harvested), nothing more is delivered */
    CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr,
                                             DXL_DMA_VEC_QUEUE(3)), 0);
    reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(3));
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_FALSE(wait_efd(efd[1], 100, NULL));
    dext_platform_irq_stats(plat, &st2);
    CU_ASSERT_EQUAL(st2.msi_direct - st0.msi_direct, 6);
    CU_ASSERT_EQUAL(st2.direct_bindings, st0.direct_bindings);
    CU_ASSERT_EQUAL(st2.msi_unclaimed, st0.msi_unclaimed);
out:
    reg_wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    close(efd[0]);
    close(efd[1]);
}

/*
 * Virtual time: a completion interrupt coalesced by time (COAL_COUNT 8,
 * COAL_USEC 500) fires only when the machine's virtual clock passes 500 us.
 * Under qtest that clock stands still until dext_platform_clock_step() moves
 * it, or dext_platform_clock_follow() makes it track host time (what dextd
 * does, so device timers behave in real time).
 */
static void test_q35_virtual_time(void)
{
    DextDmaRange sq, cq, buf;
    uint64_t ramsz, now0 = 0, now1 = 0, n = 0;
    uint8_t *ram = dext_platform_memory_map(plat, &ramsz);
    int efd = eventfd(0, EFD_CLOEXEC);
    volatile struct dxl_dma_cpl *c;

    CU_ASSERT_FATAL(ram != NULL);
    CU_ASSERT_EQUAL_FATAL(dext_platform_dma_alloc(plat, 4096, 0, &sq), 0);
    CU_ASSERT_EQUAL_FATAL(dext_platform_dma_alloc(plat, 4096, 0, &cq), 0);
    CU_ASSERT_EQUAL_FATAL(dext_platform_dma_alloc(plat, 4096, 0, &buf), 0);
    CU_ASSERT_EQUAL_FATAL(dext_platform_irq_bind(plat, dma.addr,
                          DEXT_IRQ_MSIX, DXL_DMA_VEC_QUEUE(1), efd, NULL), 0);
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    reg_wr(DXL_REG_CTRL, DXL_CTRL_ENABLE);
    reg_wr(DXL_REG_Q(1, DXL_Q_SQ_BASE_LO), (uint32_t)sq.iova);
    reg_wr(DXL_REG_Q(1, DXL_Q_SQ_BASE_HI), sq.iova >> 32);
    reg_wr(DXL_REG_Q(1, DXL_Q_SQ_SIZE), 16);
    reg_wr(DXL_REG_Q(1, DXL_Q_CQ_BASE_LO), (uint32_t)cq.iova);
    reg_wr(DXL_REG_Q(1, DXL_Q_CQ_BASE_HI), cq.iova >> 32);
    reg_wr(DXL_REG_Q(1, DXL_Q_CQ_SIZE), 16);
    reg_wr(DXL_REG_Q(1, DXL_Q_COAL_COUNT), 8);
    reg_wr(DXL_REG_Q(1, DXL_Q_COAL_USEC), 500);
    reg_wr(DXL_REG_Q(1, DXL_Q_CTRL), DXL_QCTRL_ENABLE);

    for (unsigned round = 0; round < 2; round++) {
        struct dxl_dma_desc *d = (struct dxl_dma_desc *)(ram + sq.fd_offset) +
                                 round;

        *d = (struct dxl_dma_desc){
            .opcode = DXL_OP_FILL, .flags = DXL_DESC_F_IRQ, .length = 64,
            .src = 0x5a, .dst = buf.iova, .cookie = round,
        };
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        reg_wr(DXL_REG_Q(1, DXL_Q_SQ_TAIL), round + 1);
        CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
        c = (volatile struct dxl_dma_cpl *)(ram + cq.fd_offset) + round;
        for (int i = 0; i < 2000 && !(c->flags & DXL_CPL_F_PHASE); i++) {
            g_usleep(500);
        }
        CU_ASSERT_TRUE(c->flags & DXL_CPL_F_PHASE);     /* done, not told */
        /* one request pending below the count: no interrupt while virtual
         * time stands still, however long the host waits */
        CU_ASSERT_FALSE(wait_efd(efd, 200, NULL));
        if (round == 0) {
            CU_ASSERT_EQUAL(dext_platform_clock_step(plat, 100000, &now0), 0);
            CU_ASSERT_FALSE(wait_efd(efd, 50, NULL));   /* 100 us: early */
            CU_ASSERT_EQUAL(dext_platform_clock_step(plat, 500000, &now1), 0);
            CU_ASSERT_EQUAL(now1 - now0, 500000);
            CU_ASSERT_TRUE(wait_efd(efd, 2000, &n));
            CU_ASSERT_EQUAL(n, 1);
        } else {
            /* host time now drives it: the timer fires within ms */
            CU_ASSERT_EQUAL(dext_platform_clock_follow(plat, 1000), 0);
            CU_ASSERT_TRUE(wait_efd(efd, 2000, &n));
            CU_ASSERT_EQUAL(n, 1);
            CU_ASSERT_EQUAL(dext_platform_clock_follow(plat, 0), 0);
            CU_ASSERT_EQUAL(dext_platform_clock_step(plat, 1, &now1), 0);
            CU_ASSERT_TRUE(now1 > now0 + 500000);
        }
    }
    CU_ASSERT_EQUAL(dext_platform_clock_follow(plat, 2000000), -EINVAL);

    CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr,
                                             DXL_DMA_VEC_QUEUE(1)), 0);
    reg_wr(DXL_REG_Q(1, DXL_Q_CTRL), DXL_QCTRL_RESET);
    reg_wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    reg_wr(DXL_REG_CTRL, 0);
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_EQUAL(dext_platform_dma_free(plat, sq.iova), 0);
    CU_ASSERT_EQUAL(dext_platform_dma_free(plat, cq.iova), 0);
    CU_ASSERT_EQUAL(dext_platform_dma_free(plat, buf.iova), 0);
    close(efd);
}

static void test_q35_msi_intx(void)
{
    int efd = eventfd(0, EFD_CLOEXEC);
    uint64_t n = 0;
    DextIrqKind used;

    /* MSI (single vector on this device) */
    if (dext_platform_has_msi(plat)) {
        CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSI,
                                               0, efd, &used), 0);
        CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSI,
                                               1, efd, &used), -ERANGE);
        reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(1));
        reg_wr(DXL_REG_INT_SET, DXL_INT_ERROR);
        CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
        CU_ASSERT_TRUE(wait_efd(efd, 2000, &n));
        CU_ASSERT_EQUAL(n, 2);
        CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr, 0), 0);
        reg_wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    }
    /* INTx: level, through the IOAPIC intercept */
    CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_INTX, 0,
                                           efd, &used), 0);
    CU_ASSERT_EQUAL(dext_platform_intx_level(plat, dma.addr), 0);
    reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(0));
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_TRUE(wait_efd(efd, 2000, &n));
    CU_ASSERT_EQUAL(n, 1);
    CU_ASSERT_EQUAL(dext_platform_intx_level(plat, dma.addr), 1);
    /* still asserted: a second cause is no new edge */
    reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(1));
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_FALSE(wait_efd(efd, 100, NULL));
    reg_wr(DXL_REG_INT_STATUS, DXL_INT_ALL);          /* RW1C: deassert */
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_INT_STATUS), 0);  /* a read orders it */
    CU_ASSERT_EQUAL(dext_platform_intx_level(plat, dma.addr), 0);
    CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr, 0), 0);
    close(efd);
}

static void test_q35_reset(void)
{
    uint32_t cmd = 0, bar0 = 0;
    int efd = eventfd(0, EFD_CLOEXEC);

    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    reg_wr(DXL_REG_SCRATCH, 0x5151);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_SCRATCH), 0x5151);
    if (dext_platform_has_msi(plat)) {
        CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSIX,
                                               1, efd, NULL), 0);
    }
    CU_ASSERT_EQUAL(dext_platform_reset_function(plat, dma.addr, false), 0);
    /* decode and bus mastering off, BARs where they were */
    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 4, 2, &cmd), 0);
    CU_ASSERT_EQUAL(cmd & 7, 0);
    CU_ASSERT_EQUAL(dext_platform_cfg_read(plat, dma.addr, 0x10, 4, &bar0), 0);
    CU_ASSERT_EQUAL(bar0 & ~0xfu, (uint32_t)dma.bars[0].addr);
    /* bindings were dropped with the device state */
    CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr, 1), -ENOENT);
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                                                  DEXT_PCI_ENABLE_MEM, true), 0);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_SCRATCH), 0);     /* device was reset */
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_ID), DXL_DMA_ID_MAGIC);
    close(efd);
}

/* ------------------------------------------- direct MMIO channel */

static int chan_req(int fd, uint8_t op, uint8_t size, uint8_t bar, uint64_t off,
                    uint64_t val)
{
    DextMmioReq q = { .op = op, .size = size, .bar = bar, .off = off,
                      .val = val };

    return send(fd, &q, sizeof(q), MSG_NOSIGNAL) == sizeof(q) ? 0 : -errno;
}

/* Wait (bounded) for one reply; -ENODATA on EOF, -ETIMEDOUT. */
static int chan_resp(int fd, DextMmioResp *r)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    ssize_t n;

    if (poll(&pfd, 1, 5000) <= 0) {
        return -ETIMEDOUT;
    }
    n = recv(fd, r, sizeof(*r), 0);
    return n == sizeof(*r) ? 0 : n == 0 ? -ENODATA : -EPROTO;
}

static int chan_read(int fd, uint8_t bar, uint64_t off, unsigned size,
                     uint64_t *val)
{
    DextMmioResp r;
    int rc = chan_req(fd, DEXT_MMIO_OP_READ, size, bar, off, 0);

    if (rc == 0) {
        rc = chan_resp(fd, &r);
    }
    if (rc == 0) {
        rc = r.status;
        *val = r.val;
    }
    return rc;
}

/*
 * The channel reaches the same device state as the qtest path: a write on
 * it is read back through qtest and the other way round, SYNC orders it,
 * accesses outside the granted windows and malformed records are refused
 * with a status (QEMU lives on), and a revoked channel reads EOF.  Guards
 * the record layout of harness/common/mmio-channel.h against the fork.
 */
static void test_q35_mmio_channel(void)
{
    uint64_t win[DEXT_PCI_NUM_BARS] = { dma.bars[0].size, 0,
                                        dma.bars[2].size / 2 };
    uint64_t v = 0;
    unsigned id = 0, n0 = dext_platform_mmio_channel_count(plat);
    DextMmioResp r;
    uint8_t shortmsg[10] = { DEXT_MMIO_OP_READ, 4 };
    int fd = -1;

    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    /* windows must lie in memory BARs */
    win[3] = 4096;
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_open(plat, dma.addr, win, &fd,
                                                    &id), -EINVAL);
    win[3] = 0;
    if (dext_platform_mmio_channel_open(plat, dma.addr, win, &fd, &id) < 0) {
        CU_FAIL("fork without mmio_channel (hw/patches/0006)");
        return;
    }
    CU_ASSERT_TRUE(fd >= 0 && id > 0);
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_count(plat), n0 + 1);
    /* channel write, qtest read */
    CU_ASSERT_EQUAL(chan_req(fd, DEXT_MMIO_OP_WRITE, 4, 0, DXL_REG_SCRATCH,
                             0xc4a77e1), 0);
    CU_ASSERT_EQUAL(chan_req(fd, DEXT_MMIO_OP_SYNC, 0, 0, 0, 0), 0);
    CU_ASSERT_EQUAL(chan_resp(fd, &r), 0);
    CU_ASSERT_EQUAL(r.status, 0);
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_SCRATCH), 0xc4a77e1);
    /* qtest write, channel read; 8 bytes of device memory in BAR2 */
    reg_wr(DXL_REG_SCRATCH, 0x600d);
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_EQUAL(chan_read(fd, 0, DXL_REG_SCRATCH, 4, &v), 0);
    CU_ASSERT_EQUAL(v, 0x600d);
    CU_ASSERT_EQUAL(chan_req(fd, DEXT_MMIO_OP_WRITE, 8, 2, 0x100,
                             0x0123456789abcdefull), 0);
    CU_ASSERT_EQUAL(chan_read(fd, 2, 0x100, 8, &v), 0);
    CU_ASSERT_EQUAL(v, 0x0123456789abcdefull);
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, dma.addr, 2, 0x100, 8, &v), 0);
    CU_ASSERT_EQUAL(v, 0x0123456789abcdefull);
    /* outside the windows: past BAR0, the ungranted BAR1 (MSI-X table),
     * the ungranted half of BAR2, straddling the end; bad size and op */
    CU_ASSERT_EQUAL(chan_read(fd, 0, dma.bars[0].size, 4, &v), -EFAULT);
    CU_ASSERT_EQUAL(chan_read(fd, 0, dma.bars[0].size - 2, 4, &v), -EFAULT);
    CU_ASSERT_EQUAL(chan_read(fd, 1, 0, 4, &v), -EINVAL);   /* no window */
    CU_ASSERT_EQUAL(chan_read(fd, 2, win[2], 4, &v), -EFAULT);
    CU_ASSERT_EQUAL(chan_read(fd, 0, DXL_REG_SCRATCH, 3, &v), -EINVAL);
    CU_ASSERT_EQUAL(chan_read(fd, 6, 0, 4, &v), -EINVAL);
    CU_ASSERT_EQUAL(chan_req(fd, 9, 4, 0, 0, 0), 0);
    CU_ASSERT_EQUAL(chan_resp(fd, &r), 0);
    CU_ASSERT_EQUAL(r.status, -EINVAL);
    CU_ASSERT_EQUAL(send(fd, shortmsg, sizeof(shortmsg), MSG_NOSIGNAL),
                    (ssize_t)sizeof(shortmsg));
    CU_ASSERT_EQUAL(chan_resp(fd, &r), 0);
    CU_ASSERT_EQUAL(r.status, -EINVAL);
    /* a bad write is dropped; the channel and later accesses carry on */
    CU_ASSERT_EQUAL(chan_req(fd, DEXT_MMIO_OP_WRITE, 4, 1, 0, 0xbad), 0);
    CU_ASSERT_EQUAL(chan_read(fd, 0, DXL_REG_ID, 4, &v), 0);
    CU_ASSERT_EQUAL(v, DXL_DMA_ID_MAGIC);
    /* revoke: EOF for the holder, -ENOENT the second time, QEMU lives */
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_close(plat, id), 0);
    CU_ASSERT_EQUAL(chan_resp(fd, &r), -ENODATA);
    CU_ASSERT_NOT_EQUAL(chan_req(fd, DEXT_MMIO_OP_SYNC, 0, 0, 0, 0), 0);
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_close(plat, id), -ENOENT);
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_count(plat), n0);
    CU_ASSERT_TRUE(dext_platform_alive(plat));
    CU_ASSERT_EQUAL(reg_rd(DXL_REG_ID), DXL_DMA_ID_MAGIC);
    close(fd);
    /* a reset of the function revokes its channels (device state gone) */
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_open(plat, dma.addr, win, &fd,
                                                    &id), 0);
    CU_ASSERT_EQUAL(dext_platform_reset_function(plat, dma.addr, false), 0);
    CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
    CU_ASSERT_EQUAL(chan_resp(fd, &r), -ENODATA);
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_count(plat), n0);
    CU_ASSERT_EQUAL(dext_platform_mmio_channel_close(plat, id), -ENOENT);
    close(fd);
}

/* device_add into the empty root port, then a rescan finds and places it */
static void test_q35_hotplug_rescan(void)
{
    DextPciFunction *v = NULL;
    size_t n = 0, before = nfns, found = 0;
    uint64_t id = 0;

    CU_ASSERT_EQUAL(dext_platform_qmp(plat, "device_add",
                    "{\"driver\":\"dextlab-dma\",\"id\":\"hp0\","
                    "\"bus\":\"rp2\"}", NULL), 0);
    /* the cache is unchanged until a rescan */
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(plat, false, &v, &n), 0);
    CU_ASSERT_EQUAL(n, before);
    g_free(v);
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(plat, true, &v, &n), 0);
    CU_ASSERT_EQUAL(n, before + 1);
    for (size_t i = 0; i < n; i++) {
        if (v[i].vendor_id != DXL_PCI_VENDOR_ID) {
            continue;
        }
        found++;
        CU_ASSERT_NOT_EQUAL(v[i].bars[0].addr, 0);
        CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, v[i].addr,
                        DEXT_PCI_ENABLE_MEM, true), 0);
        CU_ASSERT_EQUAL(dext_platform_bar_read(plat, v[i].addr, 0, DXL_REG_ID,
                                               4, &id), 0);
        CU_ASSERT_EQUAL(id, DXL_DMA_ID_MAGIC);
    }
    CU_ASSERT_EQUAL(found, 2);
    g_free(fns);
    fns = v;
    nfns = n;
    test_q35_bars();          /* still disjoint and inside windows */
}

/* Unplug the hotplugged device (the platform powers the slot off, as an OS
 * would), then plug it back and rescan. */
static void test_q35_unplug(void)
{
    DextPciFunction *v = NULL, hp = { 0 }, xhci;
    size_t n = 0;
    uint64_t id = 0;
    int efd = eventfd(0, EFD_CLOEXEC);

    for (size_t i = 0; i < nfns; i++) {
        if (fns[i].vendor_id == DXL_PCI_VENDOR_ID &&
            !dext_pci_addr_equal(fns[i].addr, dma.addr)) {
            hp = fns[i];
        }
    }
    CU_ASSERT_EQUAL_FATAL(hp.vendor_id, DXL_PCI_VENDOR_ID);
    /* rescan moved things: refresh dma */
    CU_ASSERT_TRUE(find_fn(DXL_PCI_VENDOR_ID, DXL_DMA_PCI_DEVICE_ID, &dma));
    if (dext_pci_addr_equal(dma.addr, hp.addr)) {
        for (size_t i = 0; i < nfns; i++) {
            if (fns[i].vendor_id == DXL_PCI_VENDOR_ID &&
                !dext_pci_addr_equal(fns[i].addr, hp.addr)) {
                dma = fns[i];
            }
        }
    }
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, hp.addr,
                    DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true), 0);
    if (dext_platform_has_msi(plat)) {
        CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, hp.addr, DEXT_IRQ_MSIX,
                                               1, efd, NULL), 0);
        CU_ASSERT_EQUAL(dext_platform_irq_bind(plat, dma.addr, DEXT_IRQ_MSIX,
                                               1, efd, NULL), 0);
    }
    CU_ASSERT_EQUAL(dext_platform_pci_unplug(plat, hp.addr), 0);
    if (getenv("DEXT_TEST_VERBOSE")) {
        fprintf(stderr, "unplug: %s\n", dext_platform_last_error(plat));
    }
    CU_ASSERT_EQUAL(dext_platform_bar_read(plat, hp.addr, 0, 0, 4, &id),
                    -ENODEV);
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(plat, false, &v, &n), 0);
    CU_ASSERT_EQUAL(n, nfns - 1);
    g_free(v);
    /* the other device's binding survived the index shift */
    if (dext_platform_has_msi(plat)) {
        uint64_t c = 0;

        CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, dma.addr,
                        DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER,
                        true), 0);
        reg_wr(DXL_REG_INT_SET, DXL_INT_QUEUE(0));
        CU_ASSERT_EQUAL(dext_platform_flush(plat), 0);
        CU_ASSERT_TRUE(wait_efd(efd, 2000, &c));
        CU_ASSERT_EQUAL(dext_platform_irq_unbind(plat, dma.addr, 1), 0);
        reg_wr(DXL_REG_INT_STATUS, DXL_INT_ALL);
    }
    /* no id, or not behind a hot-plug port: refused */
    CU_ASSERT_TRUE(find_fn(0x1af4, 0x1000, &xhci));
    CU_ASSERT_EQUAL(dext_platform_pci_unplug(plat, xhci.addr), -ENOTSUP);
    /* plug again into the powered slot */
    CU_ASSERT_EQUAL(dext_platform_qmp(plat, "device_add",
                    "{\"driver\":\"dextlab-dma\",\"id\":\"hp1\","
                    "\"bus\":\"rp2\"}", NULL), 0);
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(plat, true, &v, &n), 0);
    CU_ASSERT_EQUAL(n, nfns);
    g_free(fns);
    fns = v;
    nfns = n;
    CU_ASSERT_TRUE(find_fn(DXL_PCI_VENDOR_ID, DXL_DMA_PCI_DEVICE_ID, &hp));
    for (size_t i = 0; i < nfns; i++) {
        if (fns[i].vendor_id == DXL_PCI_VENDOR_ID && fns[i].addr.bus ==
            hp.addr.bus + 0) {
            /* every dextlab-dma answers */
        }
        if (fns[i].vendor_id == DXL_PCI_VENDOR_ID) {
            CU_ASSERT_EQUAL(dext_platform_pci_set_enables(plat, fns[i].addr,
                            DEXT_PCI_ENABLE_MEM, true), 0);
            CU_ASSERT_EQUAL(dext_platform_bar_read(plat, fns[i].addr, 0,
                            DXL_REG_ID, 4, &id), 0);
            CU_ASSERT_EQUAL(id, DXL_DMA_ID_MAGIC);
        }
    }
    close(efd);
}

/* ------------------------------------------------------------- pc */

static void test_pc_enumerate(void)
{
    const char *const devs[] = {
        "pci-bridge,id=br0,chassis_nr=1",
        "dextlab-dma,id=dma0,bus=br0,addr=3",
        "dextlab-dma,id=dma1",
        NULL,
    };
    DextMachineDesc d = { .machine = "pc", .devices = devs,
                          .ram_size = 64ull << 20, .timeout_ms = 5000 };
    DextPlatform *p = NULL;
    DextPciFunction *v = NULL;
    size_t n = 0, ndma = 0;
    uint64_t id = 0;
    int efd = eventfd(0, EFD_CLOEXEC), r;

    r = dext_platform_qtest_create(&d, &p);
    CU_ASSERT_EQUAL_FATAL(r, 0);
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(p, false, &v, &n), 0);
    for (size_t i = 0; i < n; i++) {
        if (v[i].vendor_id != DXL_PCI_VENDOR_ID) {
            continue;
        }
        ndma++;
        CU_ASSERT_EQUAL(v[i].pcie_cap, 0);           /* conventional PCI */
        CU_ASSERT_FALSE(v[i].has_flr);
        CU_ASSERT_NOT_EQUAL(v[i].bars[0].addr, 0);
        CU_ASSERT(v[i].irq_gsi == 10 || v[i].irq_gsi == 11);
        CU_ASSERT_EQUAL(dext_platform_pci_set_enables(p, v[i].addr,
                        DEXT_PCI_ENABLE_MEM | DEXT_PCI_ENABLE_BUSMASTER, true),
                        0);
        CU_ASSERT_EQUAL(dext_platform_bar_read(p, v[i].addr, 0, DXL_REG_ID, 4,
                                               &id), 0);
        CU_ASSERT_EQUAL(id, DXL_DMA_ID_MAGIC);
        /* cf8/cfc config space is 256 bytes */
        {
            uint32_t x;

            CU_ASSERT_EQUAL(dext_platform_cfg_read(p, v[i].addr, 0x100, 4, &x),
                            -ERANGE);
        }
        if (v[i].has_parent) {
            const DextPciFunction *br = fn_at(v, n, v[i].parent);
            uint64_t n1 = 0;

            CU_ASSERT_PTR_NOT_NULL_FATAL(br);
            CU_ASSERT_EQUAL(br->secondary_bus, v[i].addr.bus);
            CU_ASSERT(v[i].bars[0].addr >= br->window_base[DEXT_WIN_MEM] &&
                      v[i].bars[0].addr < br->window_base[DEXT_WIN_MEM] +
                                          br->window_size[DEXT_WIN_MEM]);
            /* INTx through the bridge's swizzle and PIIX routing */
            CU_ASSERT_EQUAL(dext_platform_irq_bind(p, v[i].addr, DEXT_IRQ_INTX,
                                                   0, efd, NULL), 0);
            CU_ASSERT_EQUAL(dext_platform_bar_write(p, v[i].addr, 0,
                            DXL_REG_INT_SET, 4, DXL_INT_QUEUE(0)), 0);
            CU_ASSERT_EQUAL(dext_platform_flush(p), 0);
            CU_ASSERT_TRUE(wait_efd(efd, 2000, &n1));
            CU_ASSERT_EQUAL(dext_platform_intx_level(p, v[i].addr), 1);
            /* no FLR on conventional PCI: reset goes through the bridge */
            CU_ASSERT_EQUAL(dext_platform_reset_function(p, v[i].addr, false),
                            0);
            CU_ASSERT_EQUAL(dext_platform_pci_set_enables(p, v[i].addr,
                            DEXT_PCI_ENABLE_MEM, true), 0);
            CU_ASSERT_EQUAL(dext_platform_bar_read(p, v[i].addr, 0,
                            DXL_REG_INT_STATUS, 4, &id), 0);
            CU_ASSERT_EQUAL(id, 0);
        } else {
            /* on bus 0 without FLR there is nothing to reset with */
            CU_ASSERT_EQUAL(dext_platform_reset_function(p, v[i].addr, true),
                            -ENOTSUP);
        }
    }
    CU_ASSERT_EQUAL(ndma, 2);
    g_free(v);
    dext_platform_destroy(p);
    close(efd);
}

/* ---------------------------------------------------- emulator_cpus */

/* Cpus_allowed_list of /proc/<pid>[/task/<tid>]/status, or NULL. */
static char *cpus_allowed(const char *status_path)
{
    char *txt = NULL, *line, *out = NULL;

    if (!g_file_get_contents(status_path, &txt, NULL, NULL)) {
        return NULL;
    }
    line = strstr(txt, "\nCpus_allowed_list:");
    if (line) {
        line += strlen("\nCpus_allowed_list:");
        out = g_strstrip(g_strndup(line, strcspn(line, "\n")));
    }
    g_free(txt);
    return out;
}

/*
 * Start a machine with @list and check that QEMU and every thread it has
 * (vCPU-less under qtest, but the main loop, RCU and worker threads) are
 * bound to exactly @expect, as the kernel prints it; the machine works.
 */
static void check_pinned_machine(const char *list, const char *expect)
{
    const char *const devs[] = { "dextlab-dma", NULL };
    DextMachineDesc d = { .devices = devs, .timeout_ms = 5000,
                          .emulator_cpus = list };
    DextPlatform *p = NULL;
    DextPciFunction *v = NULL;
    size_t n = 0;
    GArray *kids;
    char *path, *got;
    GDir *dir;
    const char *tid;
    int threads = 0;

    CU_ASSERT_EQUAL_FATAL(dext_platform_create("qtest", &d, &p), 0);
    kids = qemu_children();
    CU_ASSERT_EQUAL_FATAL(kids->len, 1);
    path = g_strdup_printf("/proc/%d/status", g_array_index(kids, pid_t, 0));
    got = cpus_allowed(path);
    CU_ASSERT_PTR_NOT_NULL(got);
    CU_ASSERT_STRING_EQUAL(got ? got : "", expect);
    if (got && strcmp(got, expect)) {
        printf("\nemulator_cpus \"%s\": QEMU's Cpus_allowed_list is %s, "
               "expected %s\n", list, got, expect);
    }
    g_free(got);
    g_free(path);

    path = g_strdup_printf("/proc/%d/task", g_array_index(kids, pid_t, 0));
    dir = g_dir_open(path, 0, NULL);
    CU_ASSERT_PTR_NOT_NULL(dir);
    while (dir && (tid = g_dir_read_name(dir))) {
        char *st = g_strdup_printf("%s/%s/status", path, tid);

        got = cpus_allowed(st);
        if (got) {          /* a thread may end while we look */
            CU_ASSERT_STRING_EQUAL(got, expect);
            threads++;
        }
        g_free(got);
        g_free(st);
    }
    if (dir) {
        g_dir_close(dir);
    }
    CU_ASSERT(threads >= 2);     /* QEMU runs at least main + RCU threads */
    g_free(path);
    g_array_free(kids, TRUE);

    /* and the pinned machine works */
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(p, false, &v, &n), 0);
    for (size_t i = 0; i < n; i++) {
        uint64_t id = 0;

        if (v[i].vendor_id != DXL_PCI_VENDOR_ID) {
            continue;
        }
        CU_ASSERT_EQUAL(dext_platform_pci_set_enables(p, v[i].addr,
                                                      DEXT_PCI_ENABLE_MEM,
                                                      true), 0);
        CU_ASSERT_EQUAL(dext_platform_bar_read(p, v[i].addr, 0, DXL_REG_ID,
                                               4, &id), 0);
        CU_ASSERT_EQUAL(id, DXL_DMA_ID_MAGIC);
    }
    g_free(v);
    dext_platform_destroy(p);
}

static void test_emulator_cpus(void)
{
    cpu_set_t mine;
    long conf = sysconf(_SC_NPROCESSORS_CONF);
    int allowed[2], na = 0;
    char list[64], expect[64];

    CU_ASSERT_EQUAL_FATAL(sched_getaffinity(0, sizeof(mine), &mine), 0);
    /* the highest CPUs we may use: not CPU 0 by default, so inheritance
     * of an unpinned affinity cannot pass for pinning on a big host */
    for (int c = (int)MIN(conf, CPU_SETSIZE) - 1; c >= 0 && na < 2; c--) {
        if (CPU_ISSET(c, &mine)) {
            allowed[na++] = c;
        }
    }
    if (na == 0) {
        printf("\nskipped: no CPU in this process's affinity\n");
        return;
    }
    snprintf(list, sizeof(list), "%d", allowed[0]);
    check_pinned_machine(list, list);
    if (na == 2) {
        /* a list with blanks and two items, as the kernel prints it back */
        snprintf(list, sizeof(list), " %d , %d ", allowed[1], allowed[0]);
        if (allowed[0] == allowed[1] + 1) {
            snprintf(expect, sizeof(expect), "%d-%d", allowed[1], allowed[0]);
        } else {
            snprintf(expect, sizeof(expect), "%d,%d", allowed[1], allowed[0]);
        }
        check_pinned_machine(list, expect);
    } else {
        printf("\nonly one CPU allowed: the two-CPU list is not tried\n");
    }
}

/* A bad list fails create with -EINVAL and a message, before any QEMU. */
static void test_emulator_cpus_bad(void)
{
    const char *const devs[] = { "dextlab-dma", NULL };
    char *absent = g_strdup_printf("%ld", sysconf(_SC_NPROCESSORS_CONF));
    const char *const bad[] = { "", "x", "1-0", "0,,1", "4096", absent };
    GArray *kids;

    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        DextMachineDesc d = { .devices = devs, .timeout_ms = 5000,
                              .emulator_cpus = bad[i] };
        DextPlatform *p = (DextPlatform *)0x1;

        CU_ASSERT_EQUAL(dext_platform_create("qtest", &d, &p), -EINVAL);
        CU_ASSERT_PTR_NULL(p);
        CU_ASSERT_PTR_NOT_NULL(strstr(dext_platform_last_error(NULL),
                                      "emulator_cpus"));
        p = (DextPlatform *)0x1;
        CU_ASSERT_EQUAL(dext_platform_qtest_create(&d, &p), -EINVAL);
        CU_ASSERT_PTR_NULL(p);
        if (p && p != (DextPlatform *)0x1) {
            dext_platform_destroy(p);
        }
    }
    kids = qemu_children();
    CU_ASSERT_EQUAL(kids->len, 0);
    g_array_free(kids, TRUE);
    g_free(absent);
}

/* ------------------------------------------------------ failure paths */

static void test_bad_desc(void)
{
    const char *const bad[] = { "no-such-device-model", NULL };
    DextMachineDesc d = { .devices = bad, .timeout_ms = 5000 };
    DextMachineDesc m = { .machine = "virt" };
    DextMachineDesc r = { .ram_size = 3 << 20 };
    DextPlatform *p = (DextPlatform *)0x1;
    GTimer *t = g_timer_new();

    CU_ASSERT_EQUAL(dext_platform_qtest_create(&m, &p), -EINVAL);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_EQUAL(dext_platform_qtest_create(&r, &p), -EINVAL);
    CU_ASSERT(dext_platform_qtest_create(&d, &p) < 0);
    CU_ASSERT_PTR_NULL(p);
    /* QEMU's own complaint is in the message, and it came fast */
    CU_ASSERT_PTR_NOT_NULL(strstr(dext_platform_last_error(NULL),
                                  "no-such-device-model"));
    CU_ASSERT(g_timer_elapsed(t, NULL) < 5.0);
    g_timer_destroy(t);
}

typedef struct {
    DextPlatform *p;
    DextPciAddr a;
    int last_err;
    gint64 err_at;
    volatile bool stop;
} Looper;

static gpointer read_loop(gpointer opaque)
{
    Looper *l = opaque;

    while (!l->stop) {
        uint64_t v;
        int r = dext_platform_bar_read(l->p, l->a, 0, DXL_REG_ID, 4, &v);

        if (r < 0) {
            l->last_err = r;
            l->err_at = g_get_monotonic_time();
            break;
        }
    }
    return NULL;
}

static int died_events;

static void on_event(void *op, DextPlatformEvent ev, uint64_t a, uint64_t b,
                     const char *json)
{
    if (ev == DEXT_EVENT_DIED) {
        g_atomic_int_inc(&died_events);
    }
}

static void test_stall_and_kill(void)
{
    const char *const devs[] = { "dextlab-dma", NULL };
    DextMachineDesc d = { .devices = devs, .timeout_ms = 1000 };
    DextPlatform *p = NULL;
    DextPciFunction *v = NULL, f;
    size_t n;
    GArray *kids;
    pid_t qpid;
    Looper l = { 0 };
    GThread *t;
    gint64 killed;
    uint64_t x;
    GTimer *tm;

    CU_ASSERT_EQUAL_FATAL(dext_platform_qtest_create(&d, &p), 0);
    dext_platform_set_event_cb(p, on_event, NULL);
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(p, false, &v, &n), 0);
    for (size_t i = 0; i < n; i++) {
        if (v[i].vendor_id == DXL_PCI_VENDOR_ID) {
            f = v[i];
        }
    }
    g_free(v);
    kids = qemu_children();
    CU_ASSERT_EQUAL_FATAL(kids->len, 1);
    qpid = g_array_index(kids, pid_t, 0);
    g_array_free(kids, TRUE);
    CU_ASSERT_EQUAL(dext_platform_pci_set_enables(p, f.addr,
                                                  DEXT_PCI_ENABLE_MEM, true), 0);

    /* stopped QEMU: bounded wait, then recovery when it resumes */
    kill(qpid, SIGSTOP);
    tm = g_timer_new();
    CU_ASSERT_EQUAL(dext_platform_bar_read(p, f.addr, 0, DXL_REG_ID, 4, &x),
                    -ETIMEDOUT);
    CU_ASSERT(g_timer_elapsed(tm, NULL) < 2.0);
    CU_ASSERT_EQUAL(dext_platform_flush(p), 0);   /* nothing posted */
    kill(qpid, SIGCONT);
    CU_ASSERT_EQUAL(dext_platform_bar_read(p, f.addr, 0, DXL_REG_ID, 4, &x), 0);
    CU_ASSERT_EQUAL(x, DXL_DMA_ID_MAGIC);        /* late reply was skipped */

    /* killed mid-call: the looping reader gets an error promptly */
    l.p = p;
    l.a = f.addr;
    t = g_thread_new("loop", read_loop, &l);
    g_usleep(100000);
    killed = g_get_monotonic_time();
    kill(qpid, SIGKILL);
    g_thread_join(t);
    CU_ASSERT(l.last_err == -EPIPE || l.last_err == -ESHUTDOWN);
    CU_ASSERT(l.err_at - killed < 500000);        /* well under timeout */
    CU_ASSERT_FALSE(dext_platform_alive(p));
    CU_ASSERT_EQUAL(dext_platform_bar_read(p, f.addr, 0, 0, 4, &x), -ESHUTDOWN);
    CU_ASSERT_EQUAL(dext_platform_bar_write(p, f.addr, 0, 0, 4, 0), -ESHUTDOWN);
    CU_ASSERT(dext_platform_flush(p) < 0);
    CU_ASSERT_EQUAL(dext_platform_qmp(p, "query-status", NULL, NULL),
                    -ESHUTDOWN);
    /* the callback runs on the reader thread: give it a moment */
    for (int i = 0; i < 100 && !g_atomic_int_get(&died_events); i++) {
        g_usleep(10000);
    }
    CU_ASSERT_EQUAL(g_atomic_int_get(&died_events), 1);
    g_timer_start(tm);
    dext_platform_destroy(p);
    CU_ASSERT(g_timer_elapsed(tm, NULL) < 2.0);
    g_timer_destroy(tm);
}

/* Attach to a QEMU started by someone else (listening sockets, RAM in a
 * memfd it inherited); destroy must leave that QEMU running. */
static void test_attach(void)
{
    const char *qemu = g_getenv("DEXT_QEMU_BINARY") ?: g_getenv("QTEST_QEMU_BINARY");
    char *dir = g_dir_make_tmp("dextatt-XXXXXX", NULL);
    char *qs = g_build_filename(dir, "q", NULL), *ms = g_build_filename(dir, "m", NULL);
    char *qarg = g_strdup_printf("unix:%s,server=on,wait=off", qs);
    char *marg = g_strdup_printf("unix:%s,server=on,wait=off", ms);
    char *mempath;
    int mfd = memfd_create("dextlab-attach-test", MFD_CLOEXEC);
    const gchar *argv[] = {
        qemu, "-accel", "qtest", "-qtest", qarg, "-qtest-log", "/dev/null",
        "-qmp", marg, "-display", "none", "-nodefaults", "-m", "64M",
        "-object", "memory-backend-file,id=r,size=64M,mem-path=/proc/self/fd/3,share=on",
        "-machine", "q35,memory-backend=r", "-L", "/usr/share/seabios",
        "-L", "/usr/share/qemu", "-device", "dextlab-dma", NULL,
    };
    gint src[1] = { mfd }, tgt[1] = { 3 };
    GPid pid = 0;
    DextAttachDesc ad = { .qtest_socket = qs, .qmp_socket = ms,
                          .ram_size = 64ull << 20, .dma_size = 16ull << 20,
                          .timeout_ms = 5000 };
    DextPlatform *p = NULL;
    DextPciFunction *v = NULL;
    size_t n = 0;
    DextDmaRange r;
    uint8_t *mine;
    uint64_t sz = 0, id = 0;
    int st;

    CU_ASSERT_EQUAL_FATAL(ftruncate(mfd, 64ull << 20), 0);
    CU_ASSERT_FATAL(g_spawn_async_with_pipes_and_fds(NULL, argv, NULL,
                    G_SPAWN_DO_NOT_REAP_CHILD, NULL, NULL, -1, -1, -1, src,
                    tgt, 1, &pid, NULL, NULL, NULL, NULL));
    for (int i = 0; i < 500 && !g_file_test(ms, G_FILE_TEST_EXISTS); i++) {
        g_usleep(10000);
    }
    mempath = g_strdup_printf("/proc/%d/fd/3", pid);
    ad.mem_path = mempath;
    CU_ASSERT_EQUAL(dext_platform_qtest_attach(&ad, &p), 0);
    if (p) {
        CU_ASSERT_EQUAL(dext_platform_pci_enumerate(p, false, &v, &n), 0);
        for (size_t i = 0; i < n; i++) {
            if (v[i].vendor_id == DXL_PCI_VENDOR_ID) {
                CU_ASSERT_EQUAL(dext_platform_pci_set_enables(p, v[i].addr,
                                DEXT_PCI_ENABLE_MEM, true), 0);
                CU_ASSERT_EQUAL(dext_platform_bar_read(p, v[i].addr, 0,
                                DXL_REG_ID, 4, &id), 0);
            }
        }
        CU_ASSERT_EQUAL(id, DXL_DMA_ID_MAGIC);
        /* DMA memory is the RAM file QEMU uses: the top 16 MiB */
        CU_ASSERT_EQUAL(dext_platform_dma_alloc(p, 4096, 0, &r), 0);
        CU_ASSERT(r.iova >= (48ull << 20));
        mine = mmap(NULL, 64ull << 20, PROT_READ | PROT_WRITE, MAP_SHARED,
                    mfd, 0);
        CU_ASSERT_FATAL(mine != MAP_FAILED);
        ((uint8_t *)dext_platform_memory_map(p, &sz))[r.fd_offset] = 0x5a;
        CU_ASSERT_EQUAL(sz, 64ull << 20);
        CU_ASSERT_EQUAL(mine[r.iova], 0x5a);
        munmap(mine, 64ull << 20);
        g_free(v);
        dext_platform_destroy(p);
    }
    /* not ours to kill */
    CU_ASSERT_EQUAL(waitpid(pid, &st, WNOHANG), 0);
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
    close(mfd);
    unlink(qs);
    unlink(ms);
    rmdir(dir);
    g_free(mempath);
    g_free(qarg);
    g_free(marg);
    g_free(qs);
    g_free(ms);
    g_free(dir);
}

/* Runs last: everything above was destroyed; nothing may be left. */
static int fds_at_start, shm_at_start;

static void test_no_leaks(void)
{
    GArray *kids;

    q35_clean();
    CU_ASSERT_EQUAL(count_fds(), fds_at_start);
    CU_ASSERT_EQUAL(count_shm(), shm_at_start);
    kids = qemu_children();
    CU_ASSERT_EQUAL(kids->len, 0);
    g_array_free(kids, TRUE);
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;
    const char *q = g_getenv("DEXT_QEMU_BINARY");

    if (!q) {
        q = g_getenv("QTEST_QEMU_BINARY");
    }
    if (!q || access(q, X_OK) < 0) {
        /* Meson always sets it: a missing fork is a broken build, not a
         * reason to skip. */
        fprintf(stderr, "no QEMU binary at %s (DEXT_QEMU_BINARY / "
                "QTEST_QEMU_BINARY): run tools/setup\n", q ? q : "(unset)");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    fds_at_start = count_fds();
    shm_at_start = count_shm();
    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 2;
    }
    s = CU_add_suite("platform-q35", q35_init, NULL);
    CU_add_test(s, "enumerate", test_q35_enumerate);
    CU_add_test(s, "bars", test_q35_bars);
    CU_add_test(s, "cfg-bar-access", test_q35_cfg_bar_access);
    CU_add_test(s, "threads", test_q35_threads);
    CU_add_test(s, "dma-roundtrip", test_q35_dma_roundtrip);
    CU_add_test(s, "msix", test_q35_msix);
    CU_add_test(s, "msix-direct", test_q35_msix_direct);
    CU_add_test(s, "msi-intx", test_q35_msi_intx);
    CU_add_test(s, "virtual-time", test_q35_virtual_time);
    CU_add_test(s, "reset", test_q35_reset);
    CU_add_test(s, "mmio-channel", test_q35_mmio_channel);
    CU_add_test(s, "hotplug-rescan", test_q35_hotplug_rescan);
    CU_add_test(s, "unplug-replug", test_q35_unplug);
    CU_add_test(s, "no-leaks-after-q35", test_no_leaks);
    s = CU_add_suite("platform-pc", NULL, NULL);
    CU_add_test(s, "enumerate-bridge-intx-reset", test_pc_enumerate);
    s = CU_add_suite("platform-emulator-cpus", NULL, NULL);
    CU_add_test(s, "pinned", test_emulator_cpus);
    CU_add_test(s, "bad-list", test_emulator_cpus_bad);
    s = CU_add_suite("platform-failures", NULL, NULL);
    CU_add_test(s, "bad-description", test_bad_desc);
    CU_add_test(s, "stall-and-kill", test_stall_and_kill);
    CU_add_test(s, "attach", test_attach);
    CU_add_test(s, "no-leaks", test_no_leaks);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed() +
            CU_get_number_of_suites_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
