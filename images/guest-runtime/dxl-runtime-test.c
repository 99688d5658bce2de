/*
 * dxl-runtime-test: the runtime inside the boot-test guest.
 *
 * First the platform layer alone (dext_platform_vfio_create on the
 * dextlab-dma function: enumeration, config, BAR, DMA pool, MSI-X/MSI/INTx
 * through the device's software interrupt, reset), then dextd on it:
 * starts dextd on the in-guest VFIO platform (dextd --platform vfio) with the
 * dextlab-dma driver bundle, waits (bounded) until the driver's user client
 * answers, then, as an app of that driver (the same dxl-app helpers as
 * dextlab-dma-tool), runs COPY, FILL and CRC32C requests with every byte
 * verified, checks that MSI-X completions arrived through VFIO, that a
 * device DMA to an unmapped IOVA is refused by the IOMMU and the device
 * recovers, that the driver's reset works, that the driver process holds no
 * VFIO fd (it reaches the device only through dextd), that a driver killed
 * with SIGKILL is relaunched and serves verified copies again, runs
 * dextlab-dma-tool itself, and stops dextd cleanly.  Each check prints one line for the host:
 *
 *   DEXTLAB-RESULT name=runtime-... status=pass|fail key=value ...
 *
 * With --bench it also prints "DEXTLAB-BENCH name=runtime-dma-throughput ..."
 * and "DEXTLAB-BENCH name=runtime-msix-latency ..." (a failed benchmark is a
 * failed result of that name): DMA copy throughput through the runtime beside the
 * guest's own memcpy of the same sizes, and the interrupt-to-app latency and
 * depth-1 request round trip beside an eventfd ping-pong between two
 * processes, all measured in this run.
 *
 *   dxl-runtime-test [--bench] [--go FIFO] [--dextd PATH] [--drivers DIR]
 *                    [--tool PATH]
 *
 * --go FIFO: wait (bounded) for "go" in FIFO before starting dextd, so /init
 * can start this program (its dynamic loading costs a fraction of a second
 * under TCG) while the modules load, and let it go once the function is
 * bound; anything else ("skip": nothing bound) exits 3 with no result.
 *
 * Exit status: 0 when every check passed, 1 otherwise.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "dxl-app.h"
#include "guest-check.h"
#include "platform.h"
#include "hw/dextlab/dextlab-dma-regs.h"

#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define SOCK        "/tmp/dextd.sock"
#define DEXTD_LOG   "/tmp/dextd.log"

static GPid dextd_pid;
static char dma_bdf[13] = "?";   /* found by the platform checks */



static bool dextd_running(int *status)
{
    return waitpid(dextd_pid, status, WNOHANG) == 0;
}

static int start_dextd(const char *dextd, const char *drivers)
{
    const char *argv[] = { dextd, "--platform", "vfio", "--drivers", drivers,
                           "--socket", SOCK, NULL };
    pid_t pid = guest_spawn_logged(argv, DEXTD_LOG, NULL, NULL);

    if (pid < 0) {
        return pid;
    }
    dextd_pid = pid;
    return 0;
}

/* Bounded: "go" arrives in the FIFO at @path within @ms (0), anything else
 * or its writer gone (-ECANCELED), nothing (-ETIMEDOUT). */
static int wait_go(const char *path, unsigned ms)
{
    char buf[16] = "";
    struct pollfd pfd = { .events = POLLIN };
    ssize_t n;

    pfd.fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (pfd.fd < 0) {
        return -errno;
    }
    if (poll(&pfd, 1, ms) <= 0) {
        close(pfd.fd);
        return -ETIMEDOUT;
    }
    n = read(pfd.fd, buf, sizeof(buf) - 1);
    close(pfd.fd);
    return n >= 2 && !strncmp(buf, "go", 2) ? 0 : -ECANCELED;
}

/* Bounded: the driver process must have started and published its user
 * client within @ms. */
static int open_app(DxlApp *a, unsigned ms, uint64_t *waited_ms)
{
    uint64_t t0 = dxl_now_ns();
    int rc = -ETIMEDOUT, st;

    while ((dxl_now_ns() - t0) / 1000000 < ms) {
        if (!dextd_running(&st)) {
            dextd_pid = 0;
            return -ECHILD;
        }
        rc = dxl_app_open(a, SOCK, "class", DXL_UC_CLASS, DXL_UC_WINDOW_MIN);
        if (rc == 0) {
            break;
        }
        /* the boot figure ends here: poll finer than 50 ms, but each try
         * costs dextd an accept and an entitlement check */
        g_usleep(20000);
    }
    *waited_ms = (dxl_now_ns() - t0) / 1000000;
    return rc;
}

static void job_all_queues(DxlApp *a, DxlJob *j)
{
    unsigned nq = dxl_app_queues(a);

    j->nq = 0;
    for (unsigned i = 0; i < nq && i < DXL_UC_NUM_QUEUES; i++) {
        j->qs[j->nq++] = i;
    }
}

/* One verified job; a result line named @name. */
static bool check_job(DxlApp *a, const char *name, unsigned op, uint64_t size,
                      uint64_t count, unsigned depth)
{
    DxlJob j = { .op = op, .size = size, .count = count, .depth = depth,
                 .verify = true, .pattern = 0x5a5aa5a5deadbeefull };
    DxlResult r = { 0 };
    int rc;
    bool ok;

    job_all_queues(a, &j);
    rc = dxl_app_job(a, &j, &r);
    ok = rc == 0 && r.ok == count && !r.failed && !r.verify_failed &&
         !r.first_status;
    guest_result(name, ok, "size=%" PRIu64 " count=%" PRIu64 " depth=%u queues=%u "
           "ok=%" PRIu64 " failed=%" PRIu64 " bad_data=%" PRIu64 " rc=%d "
           "first_status=%d dev_status=0x%x mib_s=%.1f", size, count, depth,
           j.nq, r.ok, r.failed, r.verify_failed, rc, r.first_status,
           r.first_dev, r.ns ? (double)r.bytes / (1 << 20) / (r.ns / 1e9) : 0);
    dxl_result_clear(&r);
    return ok;
}

/* dextlab-dma-tool itself: exit status 0 and its "verified" summary. */
static void check_tool(const char *tool, const char *cmd)
{
    g_autofree char *out = NULL, *err = NULL, *name = NULL;
    const char *argv[] = { tool, "-S", SOCK, cmd, "-s", "256K", "-n", "16",
                           "-d", "4", NULL };
    g_autoptr(GError) e = NULL;
    int st = -1;
    bool ok;

    name = g_strdup_printf("runtime-tool-%s", cmd);
    ok = g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL,
                      &out, &err, &st, &e) &&
         g_spawn_check_wait_status(st, NULL) && strstr(out, "verified") &&
         strstr(out, "16 ok, 0 failed, 0 bad data");
    if (out) {
        g_strdelimit(g_strstrip(out), "\n ", '_');
    }
    guest_result(name, ok, "exit=%d out=%s", st, out ? out : (e ? e->message : "-"));
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;

    return a < b ? -1 : a > b;
}

/* eventfd ping-pong between two processes: round trip, ns, p50. */
static uint64_t eventfd_rtt_p50(unsigned n)
{
    int ping = eventfd(0, EFD_CLOEXEC), pong = eventfd(0, EFD_CLOEXEC);
    g_autofree uint64_t *s = g_new0(uint64_t, n);
    uint64_t v = 1;
    unsigned got = 0;
    pid_t pid = fork();

    if (pid == 0) {
        for (unsigned i = 0; i < n; i++) {
            if (read(ping, &v, 8) != 8 || write(pong, &v, 8) != 8) {
                _exit(1);
            }
        }
        _exit(0);
    }
    for (; got < n && pid > 0; got++) {
        uint64_t t0 = dxl_now_ns();

        v = 1;
        if (write(ping, &v, 8) != 8 || read(pong, &v, 8) != 8) {
            break;
        }
        s[got] = dxl_now_ns() - t0;
    }
    if (pid > 0) {
        waitpid(pid, NULL, 0);
    }
    close(ping);
    close(pong);
    if (!got) {
        return 0;
    }
    qsort(s, got, sizeof(*s), cmp_u64);
    return s[got / 2];
}

static double memcpy_mibs(DxlApp *a, uint64_t size, uint64_t min_ns)
{
    uint8_t *src = a->win, *dst = a->win + size;
    uint64_t bytes = 0, t0, t;

    memcpy(dst, src, size);
    t0 = dxl_now_ns();
    do {
        memcpy(dst, src, size);
        __asm__ volatile("" ::: "memory");
        bytes += size;
        t = dxl_now_ns();
    } while (t - t0 < min_ns);
    return (double)bytes / (1 << 20) / ((double)(t - t0) / 1e9);
}

static void bench(DxlApp *a)
{
    const uint64_t size = 1 << 20;
    DxlJob j = { .op = DXL_UC_OP_COPY, .size = size, .count = 1, .depth = 4,
                 .min_ns = 1500000000ull };
    DxlResult r = { 0 };
    int rc = -ENOMEM;

    /* throughput: 1 MiB copies, 4 in flight per queue on every queue, >= 1.5 s,
     * then the CPU copying the same size inside the same window */
    job_all_queues(a, &j);
    if ((rc = dxl_app_ensure_window(a, 2 * size)) == 0 &&
        (rc = dxl_app_job(a, &j, &r)) == 0 && !r.failed && !r.first_status) {
        double dma = (double)r.bytes / (1 << 20) / (r.ns / 1e9);
        double cpy = memcpy_mibs(a, size, 500000000ull);

        printf("DEXTLAB-BENCH name=runtime-dma-throughput size=%" PRIu64
               " depth=%u queues=%u dma_mib_s=%.1f memcpy_mib_s=%.1f "
               "ratio=%.4f\n", size, j.depth, j.nq, dma, cpy, dma / cpy);
    } else {
        guest_result("runtime-dma-throughput", false, "rc=%d failed=%" PRIu64
               " first_status=%d", rc, r.failed, r.first_status);
    }
    dxl_result_clear(&r);

    /* latency: 4 KiB copies at depth 1 on one queue: the driver's MSI-X
     * dispatch source -> app (r.lat), and the whole request round trip,
     * beside an eventfd ping-pong between two processes */
    {
        DxlJob l = { .op = DXL_UC_OP_COPY, .size = 4096, .count = 500,
                     .depth = 1, .nq = 1 };
        uint64_t t0 = dxl_now_ns(), total, efd;

        rc = dxl_app_job(a, &l, &r);
        total = dxl_now_ns() - t0;
        efd = eventfd_rtt_p50(2000);
        if (rc == 0 && r.ok == l.count && r.nlat && efd) {
            double irq50 = dxl_result_lat_pct(&r, 50) / 1e3;
            double irq99 = dxl_result_lat_pct(&r, 99) / 1e3;
            double rtt = (double)total / l.count / 1e3;

            printf("DEXTLAB-BENCH name=runtime-msix-latency samples=%" PRIu64
                   " msix_p50_us=%.1f msix_p99_us=%.1f request_rtt_mean_us=%.1f"
                   " eventfd_oneway_p50_us=%.1f eventfd_rtt_p50_us=%.1f "
                   "ratio=%.2f rtt_ratio=%.2f\n", r.nlat, irq50, irq99, rtt,
                   efd / 2e3, efd / 1e3, irq50 / (efd / 2e3), rtt / (efd / 1e3));
        } else {
            guest_result("runtime-msix-latency", false, "rc=%d ok=%" PRIu64
                   " nlat=%" PRIu64, rc, r.ok, r.nlat);
        }
        dxl_result_clear(&r);
    }
}

/* pid of the process running @exe (the driver), or 0. */
static pid_t find_exe(const char *exe)
{
    GDir *d = g_dir_open("/proc", 0, NULL);
    const char *n;
    pid_t found = 0;

    while (d && (n = g_dir_read_name(d)) && !found) {
        g_autofree char *link = g_strdup_printf("/proc/%s/exe", n);
        g_autofree char *t = NULL;

        if (!g_ascii_isdigit(n[0])) {
            continue;
        }
        t = g_file_read_link(link, NULL);
        if (t && !strcmp(t, exe)) {
            found = atoi(n);
        }
    }
    if (d) {
        g_dir_close(d);
    }
    return found;
}

/*
 * The driver reaches the device only through dextd: no VFIO container,
 * group or device fd may leak into its process (they are close-on-exec in
 * dextd).  Counts what it holds: DMA memory (the pool memfd) is expected.
 */
static void check_isolation(pid_t pid)
{
    g_autofree char *dir = g_strdup_printf("/proc/%d/fd", (int)pid);
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *n;
    unsigned fds = 0, vfio = 0, memfd = 0;

    while (d && (n = g_dir_read_name(d))) {
        g_autofree char *link = g_build_filename(dir, n, NULL);
        g_autofree char *t = g_file_read_link(link, NULL);

        fds++;
        if (t && (g_str_has_prefix(t, "/dev/vfio") || strstr(t, "vfio"))) {
            vfio++;
        }
        if (t && strstr(t, "memfd:dextlab-dma")) {
            memfd++;
        }
    }
    if (d) {
        g_dir_close(d);
    }
    guest_result("runtime-driver-isolation", d && pid > 0 && vfio == 0,
           "driver_pid=%d fds=%u vfio_fds=%u dma_memfds=%u", (int)pid, fds,
           vfio, memfd);
}

/* dextd --dump-registry on the VFIO platform: enumerate, match, print, exit
 * without launching.  The device must sit in the registry under the vfio
 * platform with the dextlab-dma driver's service matched on it. */
static void check_registry(const char *dextd, const char *drivers)
{
    const char *argv[] = { dextd, "--platform", "vfio", "--drivers", drivers,
                           "--dump-registry", "json", NULL };
    g_autofree char *out = NULL, *err = NULL, *bdf = NULL;
    g_autoptr(GError) e = NULL;
    int st = -1;
    bool ran, dev, plat, svc;

    ran = g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_DEFAULT, NULL, NULL,
                       &out, &err, &st, &e) && g_spawn_check_wait_status(st, NULL);
    dev = ran && strstr(out, "\"IOPCIDevice\"") && strstr(out, dma_bdf);
    plat = ran && strstr(out, "\"vfio\"");
    svc = ran && strstr(out, "DextlabDmaDriver") &&
          strstr(out, "org.dextlab.dextlab-dma");
    guest_result("runtime-registry", dev && plat && svc, "exit=%d bdf=%s device=%d "
           "platform_vfio=%d service=%d bytes=%zu", st, dma_bdf, dev, plat, svc,
           out ? strlen(out) : 0);
    if (!(dev && plat && svc) && err) {
        g_auto(GStrv) l = g_strsplit(err, "\n", -1);

        for (char **p = l; *p; p++) {
            if (**p) {
                printf("DEXTLAB-DEXTD %s\n", *p);
            }
        }
    }
}

/* ---- the platform layer alone (before dextd owns the device) ------------ */

static int wait_efd(int fd, int ms)
{
    struct pollfd pf = { .fd = fd, .events = POLLIN };
    uint64_t n = 0;

    if (poll(&pf, 1, ms) != 1 || read(fd, &n, 8) != 8) {
        return 0;
    }
    return (int)n;
}

/* Spaces would split a result's key=value list. */
static char *one_word(const char *s)
{
    char *w = g_strdup(s && *s ? s : "-");

    return g_strdelimit(w, " \t\n=", '_');
}

/*
 * One interrupt kind through dext_platform_irq_bind: the device's software
 * interrupt (INT_SET, the error cause: MSI-X vector 0, MSI vector 0, INTx
 * pin A) must count on the eventfd, twice (the second proves re-arming:
 * for INTx the forwarder's unmask after the level dropped).
 */
static void check_irq(DextPlatform *p, DextPciAddr a, DextIrqKind kind,
                      const char *name)
{
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    DextIrqKind used = 0;
    int rc, got1 = 0, got2 = 0, lvl_hi = -1, lvl_lo = -1, spurious = 0;

    rc = dext_platform_irq_bind(p, a, kind, 0, efd, &used);
    if (rc == 0) {
        dext_platform_bar_write(p, a, 0, DXL_REG_INT_STATUS, 4, DXL_INT_ALL);
        dext_platform_bar_write(p, a, 0, DXL_REG_INT_MASK, 4,
                                DXL_INT_ALL & ~DXL_INT_ERROR);
        for (int round = 0; round < 2; round++) {
            int *got = round ? &got2 : &got1;

            dext_platform_bar_write(p, a, 0, DXL_REG_INT_SET, 4, DXL_INT_ERROR);
            *got = wait_efd(efd, 2000);
            if (kind == DEXT_IRQ_INTX && round == 0) {
                lvl_hi = dext_platform_intx_level(p, a);
            }
            dext_platform_bar_write(p, a, 0, DXL_REG_INT_STATUS, 4,
                                    DXL_INT_ERROR);
            if (kind == DEXT_IRQ_INTX && round == 0) {
                lvl_lo = dext_platform_intx_level(p, a);
            }
            g_usleep(20000);   /* a level left high would count again */
            spurious += wait_efd(efd, 0);
        }
        dext_platform_bar_write(p, a, 0, DXL_REG_INT_MASK, 4, DXL_INT_ALL);
        dext_platform_irq_unbind(p, a, 0);
    }
    {
        g_autofree char *err = rc < 0 ? one_word(dext_platform_last_error(p))
                                      : g_strdup("-");

        guest_result(name, rc == 0 && used == kind && got1 == 1 && got2 == 1 &&
               !spurious && (kind != DEXT_IRQ_INTX ||
                             (lvl_hi == 1 && lvl_lo == 0)),
               "rc=%d first=%d second=%d spurious=%d level_high=%d "
               "level_low=%d err=%s", rc, got1, got2, spurious, lvl_hi, lvl_lo,
               err);
    }
    close(efd);
}

/* MSI-X at the platform level: INT_SET -> the eventfd VFIO signals, p50,
 * beside an eventfd ping-pong between two processes. */
static void bench_platform_msix(DextPlatform *p, DextPciAddr a)
{
    enum { N = 1000 };
    g_autofree uint64_t *s = g_new0(uint64_t, N);
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    unsigned got = 0;
    uint64_t rtt;

    if (dext_platform_irq_bind(p, a, DEXT_IRQ_MSIX, 0, efd, NULL) == 0) {
        dext_platform_bar_write(p, a, 0, DXL_REG_INT_MASK, 4,
                                DXL_INT_ALL & ~DXL_INT_ERROR);
        for (; got < N; got++) {
            uint64_t t0 = dxl_now_ns();

            dext_platform_bar_write(p, a, 0, DXL_REG_INT_SET, 4, DXL_INT_ERROR);
            if (wait_efd(efd, 2000) != 1) {
                break;
            }
            s[got] = dxl_now_ns() - t0;
            dext_platform_bar_write(p, a, 0, DXL_REG_INT_STATUS, 4,
                                    DXL_INT_ERROR);
        }
        dext_platform_bar_write(p, a, 0, DXL_REG_INT_MASK, 4, DXL_INT_ALL);
        dext_platform_irq_unbind(p, a, 0);
    }
    close(efd);
    rtt = eventfd_rtt_p50(2000);
    if (got < N || !rtt) {
        guest_result("platform-msix-latency", false, "samples=%u", got);
        return;
    }
    qsort(s, got, sizeof(*s), cmp_u64);
    printf("DEXTLAB-BENCH name=platform-msix-latency samples=%u "
           "msix_p50_us=%.1f msix_p99_us=%.1f eventfd_oneway_p50_us=%.1f "
           "ratio=%.2f\n", got, s[got / 2] / 1e3, s[got * 99 / 100] / 1e3,
           rtt / 2e3, (double)s[got / 2] / (rtt / 2.0));
}

static void platform_checks(bool do_bench)
{
    g_autofree char *ids = g_strdup_printf("%04x:%04x", DXL_PCI_VENDOR_ID,
                                           DXL_DMA_PCI_DEVICE_ID);
    const char *bind[] = { ids, NULL };
    DextVfioDesc d = { .bind = bind, .dma_size = 4 << 20 };
    DextPlatform *p = NULL;
    DextPciFunction *fns = NULL, *f = NULL;
    size_t n = 0;
    uint32_t v32 = 0;
    uint64_t v = 0;
    int rc;
    char bdf[13] = "-";

    rc = dext_platform_vfio_create(&d, &p);
    {
        g_autofree char *err = one_word(rc < 0 ? dext_platform_last_error(NULL)
                                               : "");

        guest_result("platform-create", rc == 0, "rc=%d backend=%s err=%s", rc,
               rc == 0 ? dext_platform_backend_name(p) : "-", err);
    }
    if (rc < 0) {
        return;
    }
    rc = dext_platform_pci_enumerate(p, false, &fns, &n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        if (fns[i].vendor_id == DXL_PCI_VENDOR_ID &&
            fns[i].device_id == DXL_DMA_PCI_DEVICE_ID) {
            f = &fns[i];
        }
    }
    if (f) {
        dext_pci_addr_format(f->addr, bdf);
        memcpy(dma_bdf, bdf, sizeof(dma_bdf));
    }
    /* what config space says, as the qtest walker would report it */
    guest_result("platform-enumerate", f && f->msix_table_size == DXL_DMA_MSIX_VECTORS &&
           f->msix_table_bar == DXL_DMA_BAR_MSIX && f->msi_cap &&
           f->bars[DXL_DMA_BAR_REGS].size == DXL_DMA_BAR0_SIZE &&
           f->subsys_vendor_id == DXL_DMA_PCI_SUBVENDOR_ID && f->has_parent,
           "functions=%zu bdf=%s msix_vectors=%u msi_cap=0x%x bar0_size=0x%"
           PRIx64 " parent=%d irq_pin=%u irq_gsi=%d", n, bdf,
           f ? f->msix_table_size : 0, f ? f->msi_cap : 0,
           f ? f->bars[0].size : 0, f ? f->has_parent : 0,
           f ? f->irq_pin : 0, f ? f->irq_gsi : -1);
    if (!f) {
        goto out;
    }
    rc = dext_platform_cfg_read(p, f->addr, 0, 4, &v32);
    guest_result("platform-config", rc == 0 && v32 == (DXL_DMA_PCI_DEVICE_ID << 16 |
                                                 DXL_PCI_VENDOR_ID),
           "rc=%d id=0x%08x", rc, v32);
    dext_platform_pci_set_enables(p, f->addr, DEXT_PCI_ENABLE_MEM |
                                  DEXT_PCI_ENABLE_BUSMASTER, true);
    rc = dext_platform_bar_read(p, f->addr, DXL_DMA_BAR_REGS, DXL_REG_ID, 4, &v);
    {
        uint64_t w = 0;
        int r2 = dext_platform_bar_write(p, f->addr, 0, DXL_REG_SCRATCH, 4,
                                         0xa5c3e10f);
        int r3 = dext_platform_bar_read(p, f->addr, 0, DXL_REG_SCRATCH, 4, &w);
        uint64_t scratch = w;
        int r4 = dext_platform_bar_read(p, f->addr, 0, DXL_DMA_BAR0_SIZE, 4,
                                        &w);

        guest_result("platform-bar", rc == 0 && v == DXL_DMA_ID_MAGIC && r2 == 0 &&
               r3 == 0 && scratch == 0xa5c3e10f && r4 == -ERANGE,
               "rc=%d id=0x%" PRIx64 " scratch=0x%" PRIx64 " beyond_bar_rc=%d",
               rc, v, scratch, r4);
    }
    {
        DextDmaRange dr = { 0 };
        int mfd = -1;
        uint64_t msz = 0;

        rc = dext_platform_dma_alloc(p, 64 << 10, 0, &dr);
        int r2 = dext_platform_memory_fd(p, &mfd, &msz);
        guest_result("platform-dma-alloc", rc == 0 && r2 == 0 && dr.iova >= (1ull << 30)
               && dr.fd_offset + dr.size <= msz, "rc=%d iova=0x%" PRIx64
               " fd_offset=0x%" PRIx64 " pool=%" PRIu64, rc, dr.iova,
               dr.fd_offset, msz);
        if (rc == 0) {
            dext_platform_dma_free(p, dr.iova);
        }
    }
    check_irq(p, f->addr, DEXT_IRQ_MSIX, "platform-irq-msix");
    check_irq(p, f->addr, DEXT_IRQ_MSI, "platform-irq-msi");
    check_irq(p, f->addr, DEXT_IRQ_INTX, "platform-irq-intx");
    if (do_bench) {
        bench_platform_msix(p, f->addr);
    }
    /* VFIO_DEVICE_RESET: decode and bus mastering off afterwards, the
     * device answers again once re-enabled */
    rc = dext_platform_reset_function(p, f->addr, false);
    {
        uint32_t cmd = 0xffff;

        dext_platform_cfg_read(p, f->addr, 4, 2, &cmd);
        dext_platform_pci_set_enables(p, f->addr, DEXT_PCI_ENABLE_MEM, true);
        v = 0;
        dext_platform_bar_read(p, f->addr, 0, DXL_REG_ID, 4, &v);
        guest_result("platform-reset", rc == 0 && !(cmd & 7) && v == DXL_DMA_ID_MAGIC,
               "rc=%d cmd_after=0x%x id=0x%" PRIx64, rc, cmd, v);
        dext_platform_pci_set_enables(p, f->addr, DEXT_PCI_ENABLE_MEM, false);
    }
out:
    g_free(fns);
    dext_platform_destroy(p);
}

int main(int argc, char **argv)
{
    const char *dextd = "/usr/bin/dextd";
    const char *drivers = "/usr/lib/dextlab/drivers/dextlab-dma";
    const char *tool = "/usr/bin/dextlab-dma-tool";
    const char *go = NULL;
    bool do_bench = false;
    uint64_t waited = 0;
    struct dxl_uc_stats s0, s1;
    DxlApp a;
    int rc;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bench")) {
            do_bench = true;
        } else if (!strcmp(argv[i], "--go") && i + 1 < argc) {
            go = argv[++i];
        } else if (!strcmp(argv[i], "--dextd") && i + 1 < argc) {
            dextd = argv[++i];
        } else if (!strcmp(argv[i], "--drivers") && i + 1 < argc) {
            drivers = argv[++i];
        } else if (!strcmp(argv[i], "--tool") && i + 1 < argc) {
            tool = argv[++i];
        } else {
            fprintf(stderr, "usage: dxl-runtime-test [--bench] [--go FIFO] "
                    "[--dextd PATH] [--drivers DIR] [--tool PATH]\n");
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (go && (rc = wait_go(go, 120000)) < 0) {
        if (rc == -ECANCELED) {
            return 3;
        }
        guest_result("runtime-dextd", false, "reason=no_go_from_init rc=%d", rc);
        return 1;
    }

    /* dextd first, so runtime-driver-ready's uptime is boot to drivers
     * ready; the platform checks open the VFIO group themselves, so they
     * run once dextd has let go of it (below). */
    rc = start_dextd(dextd, drivers);
    if (rc < 0) {
        guest_result("runtime-dextd", false, "reason=spawn rc=%d", rc);
        return 1;
    }
    rc = open_app(&a, 30000, &waited);
    guest_result("runtime-dextd", rc != -ECHILD, "pid=%d platform=vfio",
           (int)dextd_pid);
    {
        /* guest uptime when the driver answered: boot to drivers-ready
         * through the runtime, for the boot benchmark */
        g_autofree char *up = NULL;

        g_file_get_contents("/proc/uptime", &up, NULL, NULL);
        guest_result("runtime-driver-ready", rc == 0, "rc=%d waited_ms=%" PRIu64
               " queues=%u uptime=%.2f", rc, waited,
               rc == 0 ? dxl_app_queues(&a) : 0, up ? g_ascii_strtod(up, NULL)
                                                     : -1.0);
    }
    if (rc < 0) {
        guest_dump_log(DEXTD_LOG);
        if (dextd_pid) {
            kill(dextd_pid, SIGKILL);
            waitpid(dextd_pid, NULL, 0);
        }
        return 1;
    }

    rc = dxl_app_stats(&a, &s0);
    check_job(&a, "runtime-dma-copy", DXL_UC_OP_COPY, 64 << 10, 64, 4);
    check_job(&a, "runtime-dma-copy-1m", DXL_UC_OP_COPY, 1 << 20, 16, 2);
    check_job(&a, "runtime-dma-fill", DXL_UC_OP_FILL, 64 << 10, 64, 4);
    check_job(&a, "runtime-dma-crc32c", DXL_UC_OP_CRC32C, 64 << 10, 64, 4);
    /* the submission ring in VFIO DMA memory: the same verified job, every
     * request taken from the ring (the jobs after this one use it too) */
    {
        struct dxl_uc_stats r0 = { 0 }, r1 = { 0 };
        int rrc = dxl_app_ring_attach(&a, 1);

        if (rrc == 0) {
            rrc = dxl_app_stats(&a, &r0);
        }
        if (rrc == 0) {
            check_job(&a, "runtime-dma-ring-copy", DXL_UC_OP_COPY, 64 << 10, 64, 4);
            rrc = dxl_app_stats(&a, &r1);
        }
        guest_result("runtime-dma-ring", rrc == 0 && r1.ring_taken - r0.ring_taken == 64,
                     "rc=%d taken=%" PRIu64 " kicks=%" PRIu64, rrc,
                     r1.ring_taken - r0.ring_taken, a.ring_kicks);
    }
    /* completions reach the driver as MSI-X through VFIO eventfds */
    if (rc == 0 && (rc = dxl_app_stats(&a, &s1)) == 0) {
        guest_result("runtime-msix", s1.dev_irqs > s0.dev_irqs, "device_irqs=%"
               PRIu64, s1.dev_irqs - s0.dev_irqs);
    } else {
        guest_result("runtime-msix", false, "rc=%d", rc);
    }

    /* The IOMMU: the device tries an IOVA nobody mapped; the request must
     * fail with the device's error, and the next one must work. */
    {
        uint64_t data[DXL_UC_CPL_COUNT] = { 0 };
        int dst = 0;

        rc = dxl_app_run(&a, 0, DXL_UC_OP_DIAG_UNMAPPED, 0, 0, 1, 0, 5000,
                         &dst, data);
        guest_result("runtime-iommu-unmapped", rc == 0 && dst == -EIO,
               "rc=%d req_status=%d dev_status=0x%" PRIx64, rc, dst,
               data[DXL_UC_CPL_DEV_STATUS]);
        check_job(&a, "runtime-iommu-recover", DXL_UC_OP_COPY, 4096, 8, 1);
    }

    /* Device reset through the driver (VFIO_DEVICE_RESET underneath) */
    {
        uint64_t n = 0;

        rc = dxl_app_reset(&a, &n);
        guest_result("runtime-reset", rc == 0 && n > 0, "rc=%d resets=%" PRIu64, rc,
               n);
        check_job(&a, "runtime-after-reset", DXL_UC_OP_COPY, 64 << 10, 16, 4);
    }

    g_autofree char *drv_exe = g_build_filename(drivers, "dextlab-dma", NULL);
    pid_t drv = find_exe(drv_exe);

    check_isolation(drv);
    if (do_bench) {
        bench(&a);
    }
    dxl_app_close(&a);

    /*
     * A driver crash on the VFIO platform: dextd sees it, releases and
     * resets the device (VFIO_DEVICE_RESET, interrupts unbound, the dead
     * driver's DMA freed) and relaunches; the new instance must serve
     * verified copies again.
     */
    if (drv > 0 && kill(drv, SIGKILL) == 0) {
        pid_t again = 0;
        uint64_t t0 = dxl_now_ns();

        for (int i = 0; i < 300 && (again == 0 || again == drv); i++) {
            g_usleep(50000);
            again = find_exe(drv_exe);
        }
        rc = again > 0 && again != drv ? open_app(&a, 20000, &waited) : -ESRCH;
        guest_result("runtime-driver-relaunch", rc == 0, "old_pid=%d new_pid=%d "
               "rc=%d ms=%" PRIu64, (int)drv, (int)again, rc,
               (dxl_now_ns() - t0) / 1000000);
        if (rc == 0) {
            check_job(&a, "runtime-after-relaunch", DXL_UC_OP_COPY, 64 << 10,
                      32, 4);
            dxl_app_close(&a);
        }
    } else {
        guest_result("runtime-driver-relaunch", false, "reason=no_driver_process");
    }

    check_tool(tool, "copy");
    check_tool(tool, "fill");
    check_tool(tool, "crc");

    /* dextd stops its driver and releases the device on SIGTERM, bounded */
    guest_stop(dextd_pid, 5000, "runtime-dextd-exit");
    if (guest_failures) {
        guest_dump_log(DEXTD_LOG);
    }

    /* The platform layer on its own, and dextd's registry dump, with the
     * group free again. */
    platform_checks(do_bench);
    check_registry(dextd, drivers);
    return guest_failures ? 1 : 0;
}
