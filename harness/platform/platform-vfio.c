/*
 * dextlab platform layer: the in-guest backend (VFIO, type1 IOMMU).
 *
 * The "machine" is the Linux system we run on.  Functions are found in
 * sysfs, optionally bound to vfio-pci, and reached through their VFIO device
 * fds: config space through the config region, BARs through mmap of the BAR
 * regions (pread/pwrite where mmap is refused), interrupts as eventfds given
 * to VFIO_DEVICE_SET_IRQS (the kernel signals the caller's eventfd itself:
 * no thread of ours sits on the interrupt path), reset through
 * VFIO_DEVICE_RESET.  DMA memory is one memfd pool with one IOVA window in
 * the container; the allocator in platform.c hands out IOVAs and fd offsets
 * exactly as on qtest, so drivers cannot tell.  The window is mapped into
 * the IOMMU 2 MiB chunk by chunk as allocations first reach it, not up
 * front: pinning means allocating and zeroing every page, and the whole
 * 128 MiB took most of a second of dextd's start in a TCG guest.
 *
 * Why one container for every group: one IOVA space means one pool mapping
 * serves every device, and a buffer shared by two drivers has one address.
 *
 * See docs/runtime/platform-vfio.md.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/vfio.h>

#include "platform-backend.h"

#define VFIO_DEFAULT_POOL   (128ull << 20)
#define VFIO_MAX_POOL       (1ull << 30)
/* IOMMU mapping granule of the pool (pool sizes are multiples of it) */
#define VFIO_POOL_CHUNK     (2ull << 20)
/* IOVAs start at 1 GiB: a device address is then never mistaken for a
 * small guest-physical one in logs, and stays clear of low reserved
 * regions. */
#define VFIO_IOVA_MIN       (1ull << 30)

typedef struct VfioBar {
    uint64_t off;            /* region offset in the device fd */
    uint64_t size;
    uint32_t flags;
    volatile uint8_t *map;   /* NULL: pread/pwrite */
} VfioBar;

typedef struct VfioFn {
    char bdf[16];
    int group_no;
    int dev_fd;
    uint64_t cfg_off, cfg_size;
    VfioBar bar[DEXT_PCI_NUM_BARS];
    bool has_reset;
    /* Interrupt routing, under irq_lock. */
    DextIrqKind irq_kind;    /* DEXT_IRQ_AUTO (0): nothing enabled */
    unsigned irq_count;      /* vectors enabled in VFIO */
    int *efd;                /* per vector: our dup of the caller's, or -1 */
    unsigned n_efd;
    struct VfioIntx *intx;   /* INTx forwarder while INTx is bound */
} VfioFn;

/*
 * INTx: VFIO masks the line after each interrupt until told to unmask.  The
 * platform promises one eventfd count per rising edge, so a small thread
 * sits between VFIO's trigger and the caller's eventfd: it forwards the
 * edge, waits until the function's own INTx level (PCI Status bit 3) has
 * dropped -- the driver acknowledged the device -- and only then unmasks.
 * Unmasking earlier would turn one level into an interrupt storm.
 */
typedef struct VfioIntx {
    GThread *th;
    int trig;                /* VFIO signals this */
    int stop;                /* destroy/unbind signals this */
    int user;                /* our dup of the caller's eventfd */
    VfioFn *f;
} VfioIntx;

typedef struct VfioGroup {
    int no;
    int fd;
} VfioGroup;

typedef struct VfioPlatform {
    DextPlatform p;
    char *sysfs;
    int container;           /* -1 until the first group is attached */
    GArray *groups;          /* VfioGroup */
    GPtrArray *vf;           /* VfioFn *, same order as p.fns */
    GMutex irq_lock;
    bool pool_mapped;        /* IOVA window reserved (chunks map lazily) */
    uint64_t pool_iova, pool_size;
    GMutex map_lock;         /* protects chunk_mapped */
    bool *chunk_mapped;      /* per VFIO_POOL_CHUNK of the pool */
} VfioPlatform;

static VfioPlatform *VP(DextPlatform *p)
{
    return (VfioPlatform *)p;
}

/* ------------------------------------------------------------- sysfs */

static char *sysfs_read(VfioPlatform *v, const char *bdf, const char *attr)
{
    g_autofree char *path = g_strdup_printf("%s/bus/pci/devices/%s/%s",
                                            v->sysfs, bdf, attr);
    char *s = NULL;

    if (!g_file_get_contents(path, &s, NULL, NULL)) {
        return NULL;
    }
    return g_strstrip(s);
}

static int sysfs_write(VfioPlatform *v, const char *path, const char *val)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    ssize_t n;
    int e;

    if (fd < 0) {
        return -errno;
    }
    n = write(fd, val, strlen(val));
    e = errno;
    close(fd);
    (void)v;
    return n == (ssize_t)strlen(val) ? 0 : (n < 0 ? -e : -EIO);
}

/* Name of the driver bound to @bdf ("" if none), caller frees. */
static char *sysfs_driver(VfioPlatform *v, const char *bdf)
{
    g_autofree char *link = g_strdup_printf("%s/bus/pci/devices/%s/driver",
                                            v->sysfs, bdf);
    g_autofree char *t = g_file_read_link(link, NULL);

    return g_strdup(t ? strrchr(t, '/') + 1 : "");
}

static bool parse_bdf(const char *s, DextPciAddr *a)
{
    unsigned seg, bus, dev, fn;
    char tail;

    if (sscanf(s, "%4x:%2x:%2x.%1x%c", &seg, &bus, &dev, &fn, &tail) != 4 ||
        dev > 31 || fn > 7 || strlen(s) != 12) {
        return false;
    }
    *a = (DextPciAddr){ .seg = seg, .bus = bus, .dev = dev, .fn = fn };
    return true;
}

static bool bind_wanted(VfioPlatform *v, const char *bdf,
                        const char *const *bind)
{
    g_autofree char *ven = NULL, *dev = NULL;

    for (; bind && *bind; bind++) {
        unsigned a, b;
        char tail;

        if (!g_ascii_strcasecmp(*bind, bdf)) {
            return true;
        }
        if (sscanf(*bind, "%4x:%4x%c", &a, &b, &tail) == 2 &&
            strlen(*bind) == 9) {
            if (!ven) {
                ven = sysfs_read(v, bdf, "vendor");
                dev = sysfs_read(v, bdf, "device");
            }
            if (ven && dev && strtoul(ven, NULL, 16) == a &&
                strtoul(dev, NULL, 16) == b) {
                return true;
            }
        }
    }
    return false;
}

/* driver_override + unbind + drivers_probe, as the kernel documents for
 * vfio-pci; checks the result rather than trusting the writes. */
static int bind_vfio(VfioPlatform *v, const char *bdf)
{
    DextPlatform *p = &v->p;
    g_autofree char *drv = sysfs_driver(v, bdf);
    g_autofree char *ov = g_strdup_printf("%s/bus/pci/devices/%s/"
                                          "driver_override", v->sysfs, bdf);
    g_autofree char *probe = g_strdup_printf("%s/bus/pci/drivers_probe",
                                             v->sysfs);
    int r;

    if (!strcmp(drv, "vfio-pci")) {
        return 0;
    }
    if ((r = sysfs_write(v, ov, "vfio-pci")) < 0) {
        return dext_platform_set_error(p, r, "%s: driver_override: %s", bdf,
                                       g_strerror(-r));
    }
    if (*drv) {
        g_autofree char *unb = g_strdup_printf("%s/bus/pci/devices/%s/driver/"
                                               "unbind", v->sysfs, bdf);

        if ((r = sysfs_write(v, unb, bdf)) < 0) {
            return dext_platform_set_error(p, r, "%s: unbind from %s: %s",
                                           bdf, drv, g_strerror(-r));
        }
    }
    r = sysfs_write(v, probe, bdf);
    g_free(drv);
    drv = sysfs_driver(v, bdf);
    if (strcmp(drv, "vfio-pci")) {
        return dext_platform_set_error(p, r < 0 ? r : -ENODEV, "%s: not bound "
                                       "to vfio-pci after probe (driver "
                                       "\"%s\"; is vfio-pci loaded?)", bdf,
                                       drv);
    }
    dext_platform_log(p, G_LOG_LEVEL_INFO, "%s bound to vfio-pci", bdf);
    return 0;
}

/* Sorted BDFs of every function bound to vfio-pci, after binding those
 * @bind selects. */
static int collect(VfioPlatform *v, const char *const *bind, GPtrArray *out)
{
    g_autofree char *dir = g_strdup_printf("%s/bus/pci/devices", v->sysfs);
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *n;
    int r = 0;

    if (!d) {
        return dext_platform_set_error(&v->p, -ENOENT, "no %s", dir);
    }
    while ((n = g_dir_read_name(d))) {
        g_autofree char *drv = NULL;
        DextPciAddr a;

        if (!parse_bdf(n, &a)) {
            continue;
        }
        if (bind_wanted(v, n, bind) && (r = bind_vfio(v, n)) < 0) {
            break;
        }
        drv = sysfs_driver(v, n);
        if (!strcmp(drv, "vfio-pci")) {
            g_ptr_array_add(out, g_strdup(n));
        }
    }
    g_dir_close(d);
    /* BDF order (= bus order, bridges first), as the qtest walker gives */
    for (guint i = 1; i < out->len; i++) {
        for (guint j = i; j > 0 && strcmp(out->pdata[j - 1],
                                          out->pdata[j]) > 0; j--) {
            gpointer t = out->pdata[j];

            out->pdata[j] = out->pdata[j - 1];
            out->pdata[j - 1] = t;
        }
    }
    return r;
}

/* ------------------------------------------------------------- VFIO */

static int group_attach(VfioPlatform *v, int no)
{
    DextPlatform *p = &v->p;
    struct vfio_group_status gs = { .argsz = sizeof(gs) };
    char path[32];
    VfioGroup g = { .no = no };
    int r;

    for (guint i = 0; i < v->groups->len; i++) {
        if (g_array_index(v->groups, VfioGroup, i).no == no) {
            return g_array_index(v->groups, VfioGroup, i).fd;
        }
    }
    snprintf(path, sizeof(path), "/dev/vfio/%d", no);
    g.fd = open(path, O_RDWR | O_CLOEXEC);
    if (g.fd < 0) {
        return dext_platform_set_error(p, -errno, "%s: %s", path,
                                       g_strerror(errno));
    }
    if (ioctl(g.fd, VFIO_GROUP_GET_STATUS, &gs) < 0) {
        r = -errno;
        goto fail;
    }
    if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        /* another device of the group is still bound to a kernel driver */
        r = dext_platform_set_error(p, -EBUSY, "IOMMU group %d is not viable "
                                    "(bind every device of the group to "
                                    "vfio-pci)", no);
        goto fail;
    }
    if (ioctl(g.fd, VFIO_GROUP_SET_CONTAINER, &v->container) < 0) {
        r = dext_platform_set_error(p, -errno, "group %d: SET_CONTAINER: %s",
                                    no, g_strerror(errno));
        goto fail;
    }
    if (v->groups->len == 0 &&
        ioctl(v->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
        r = dext_platform_set_error(p, -errno, "VFIO_SET_IOMMU type1v2: %s",
                                    g_strerror(errno));
        ioctl(g.fd, VFIO_GROUP_UNSET_CONTAINER);
        goto fail;
    }
    g_array_append_val(v->groups, g);
    return g.fd;

fail:
    close(g.fd);
    return r < 0 ? r : -EIO;
}

static int region_info(int dev_fd, unsigned index, struct vfio_region_info *ri)
{
    memset(ri, 0, sizeof(*ri));
    ri->argsz = sizeof(*ri);
    ri->index = index;
    return ioctl(dev_fd, VFIO_DEVICE_GET_REGION_INFO, ri) < 0 ? -errno : 0;
}

static int cfg_rw(VfioFn *f, bool write, unsigned off, void *buf, size_t len)
{
    ssize_t n;

    if (off + len > f->cfg_size) {
        return -ERANGE;
    }
    n = write ? pwrite(f->dev_fd, buf, len, f->cfg_off + off)
              : pread(f->dev_fd, buf, len, f->cfg_off + off);
    if (n < 0) {
        return -errno;
    }
    return n == (ssize_t)len ? 0 : -EIO;
}

static uint32_t cfg_get(const uint8_t *c, size_t n, unsigned off,
                        unsigned width)
{
    uint32_t v = 0;

    if (off + width > n) {
        return 0;
    }
    memcpy(&v, c + off, width);   /* config space is little-endian, as x86 */
    return v;
}

/* Capability summary from a config snapshot; bounded like pci-enum.c's
 * walk (the list is device-controlled). */
static void parse_caps(const uint8_t *c, size_t n, DextPciFunction *f)
{
    unsigned pos, guard = 0;

    if (!(cfg_get(c, n, 0x06, 2) & 0x10)) {
        return;
    }
    pos = cfg_get(c, n, 0x34, 1) & 0xfc;
    while (pos >= 0x40 && pos < 0x100 && guard++ < 48) {
        uint32_t hdr = cfg_get(c, n, pos, 2), ctl, t, pba;

        switch (hdr & 0xff) {
        case 0x01:
            f->pm_cap = pos;
            break;
        case 0x05:
            f->msi_cap = pos;
            ctl = cfg_get(c, n, pos + 2, 2);
            f->msi_vectors = 1u << MIN((ctl >> 1) & 7, 5);
            f->msi_64bit = ctl & 0x80;
            f->msi_maskable = ctl & 0x100;
            break;
        case 0x10:
            f->pcie_cap = pos;
            f->pcie_port_type = (cfg_get(c, n, pos + 2, 2) >> 4) & 0xf;
            f->has_flr = (cfg_get(c, n, pos + 4, 4) >> 28) & 1;
            break;
        case 0x11:
            f->msix_cap = pos;
            ctl = cfg_get(c, n, pos + 2, 2);
            f->msix_table_size = (ctl & 0x7ff) + 1;
            t = cfg_get(c, n, pos + 4, 4);
            pba = cfg_get(c, n, pos + 8, 4);
            f->msix_table_bar = t & 7;
            f->msix_table_offset = t & ~7u;
            f->msix_pba_bar = pba & 7;
            f->msix_pba_offset = pba & ~7u;
            break;
        }
        pos = (hdr >> 8) & 0xfc;
    }
}

/* Parent bridge from the sysfs path (…/0000:00:1c.0/0000:01:00.0). */
static void find_parent(VfioPlatform *v, const char *bdf, DextPciFunction *f)
{
    g_autofree char *link = g_strdup_printf("%s/bus/pci/devices/%s", v->sysfs,
                                            bdf);
    g_autofree char *real = realpath(link, NULL);
    char *slash;

    if (!real || !(slash = strrchr(real, '/'))) {
        return;
    }
    *slash = '\0';
    slash = strrchr(real, '/');
    f->has_parent = slash && parse_bdf(slash + 1, &f->parent);
}

/* Listed, never opened: functions a kernel driver keeps (e.g. the xHCI,
 * owned by xhci_hcd, whose devices a USB provider reaches through usbfs)
 * selected by @list ("0000:01:00.0", "vvvv:dddd" or a class "cccccc",
 * hex).  They go into the description after every VFIO function (so the
 * ops' function indices still name VFIO functions only) and every access
 * to them -- config, BARs, interrupts, reset -- is refused with -ENODEV:
 * dextd can match personalities against them, a driver cannot touch them. */
static bool kernel_fn_wanted(VfioPlatform *v, const char *bdf,
                             const char *const *list)
{
    g_autofree char *cls = NULL;

    if (bind_wanted(v, bdf, list)) {
        return true;
    }
    for (; list && *list; list++) {
        if (strlen(*list) == 6 && strspn(*list, "0123456789abcdefABCDEF") == 6) {
            if (!cls) {
                cls = sysfs_read(v, bdf, "class");  /* "0x0c0330" */
            }
            if (cls && strtoul(cls, NULL, 16) == strtoul(*list, NULL, 16)) {
                return true;
            }
        }
    }
    return false;
}

static gint cmp_strp(gconstpointer a, gconstpointer b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* @f from the first 64 bytes of @cfg: ids, class, header type; the rest
 * (interrupts, capabilities, BARs, parent) is the caller's. */
static void describe_header(const char *bdf, const uint8_t *cfg,
                            DextPciFunction *f)
{
    memset(f, 0, sizeof(*f));
    parse_bdf(bdf, &f->addr);
    f->irq_gsi = -1;
    f->vendor_id = cfg_get(cfg, 256, 0, 2);
    f->device_id = cfg_get(cfg, 256, 2, 2);
    f->revision = cfg[8];
    f->class_prog_if = cfg[9];
    f->class_sub = cfg[10];
    f->class_base = cfg[11];
    f->header_type = cfg[0x0e] & 0x7f;
    f->multifunction = cfg[0x0e] & 0x80;
    if (f->header_type == 0) {
        f->subsys_vendor_id = cfg_get(cfg, 256, 0x2c, 2);
        f->subsys_id = cfg_get(cfg, 256, 0x2e, 2);
    }
    f->is_bridge = f->header_type == 1;
}

/* The description of a kernel-owned function from sysfs (config bytes as
 * the kernel reads them, BARs from "resource"). */
static int describe_kernel_fn(VfioPlatform *v, const char *bdf,
                              DextPciFunction *f)
{
    g_autofree char *path = g_strdup_printf("%s/bus/pci/devices/%s/config",
                                            v->sysfs, bdf);
    g_autofree char *res = NULL;
    g_autofree gchar *raw = NULL;
    uint8_t cfg[256] = { 0 };
    gsize n = 0;

    if (!g_file_get_contents(path, &raw, &n, NULL) || n < 64) {
        return -ENODEV;
    }
    memcpy(cfg, raw, MIN(n, sizeof(cfg)));
    describe_header(bdf, cfg, f);
    if (n >= 256) {
        parse_caps(cfg, 256, f);
    }
    find_parent(v, bdf, f);
    res = sysfs_read(v, bdf, "resource");   /* "start end flags" per line */
    if (res && f->header_type == 0) {
        g_auto(GStrv) lines = g_strsplit(res, "\n", -1);

        for (unsigned i = 0; i < 6 && lines[i]; i++) {
            uint64_t st, en, fl;

            if (sscanf(lines[i], "%" SCNx64 " %" SCNx64 " %" SCNx64, &st, &en,
                       &fl) != 3 || !en || en < st) {
                continue;
            }
            f->bars[i].addr = st;
            f->bars[i].size = en - st + 1;
            f->bars[i].kind = (fl & 0x100) ? DEXT_BAR_IO      /* IORESOURCE_IO */
                            : (fl & 0x100000) ? DEXT_BAR_MEM64 /* MEM_64 */
                            : DEXT_BAR_MEM32;
            f->bars[i].prefetchable = fl & 0x2000;            /* PREFETCH */
        }
    }
    return 0;
}

static int open_function(VfioPlatform *v, const char *bdf, VfioFn **out,
                         DextPciFunction *f)
{
    DextPlatform *p = &v->p;
    struct vfio_device_info di = { .argsz = sizeof(di) };
    struct vfio_region_info ri;
    g_autofree char *grp_link = g_strdup_printf("%s/bus/pci/devices/%s/"
                                                "iommu_group", v->sysfs, bdf);
    g_autofree char *grp = g_file_read_link(grp_link, NULL);
    g_autofree uint8_t *cfg = NULL;
    g_autofree char *res = NULL, *irq = NULL;
    VfioFn *vf;
    int gfd, r;

    if (!grp) {
        return dext_platform_set_error(p, -ENODEV, "%s has no IOMMU group "
                                       "(is the IOMMU on? intel_iommu=on)",
                                       bdf);
    }
    vf = g_new0(VfioFn, 1);
    g_strlcpy(vf->bdf, bdf, sizeof(vf->bdf));
    vf->group_no = atoi(strrchr(grp, '/') + 1);
    vf->dev_fd = -1;
    gfd = group_attach(v, vf->group_no);
    if (gfd < 0) {
        r = gfd;
        goto fail;
    }
    vf->dev_fd = ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (vf->dev_fd < 0) {
        r = dext_platform_set_error(p, -errno, "%s: GET_DEVICE_FD: %s", bdf,
                                    g_strerror(errno));
        goto fail;
    }
    if (ioctl(vf->dev_fd, VFIO_DEVICE_GET_INFO, &di) < 0 ||
        !(di.flags & VFIO_DEVICE_FLAGS_PCI)) {
        r = dext_platform_set_error(p, -ENODEV, "%s: not a VFIO PCI device",
                                    bdf);
        goto fail;
    }
    vf->has_reset = di.flags & VFIO_DEVICE_FLAGS_RESET;
    if ((r = region_info(vf->dev_fd, VFIO_PCI_CONFIG_REGION_INDEX, &ri)) < 0) {
        dext_platform_set_error(p, r, "%s: config region: %s", bdf,
                                g_strerror(-r));
        goto fail;
    }
    vf->cfg_off = ri.offset;
    vf->cfg_size = MIN(ri.size, 4096);
    cfg = g_malloc0(vf->cfg_size);
    if ((r = cfg_rw(vf, false, 0, cfg, MIN(vf->cfg_size, 256))) < 0) {
        dext_platform_set_error(p, r, "%s: config read: %s", bdf,
                                g_strerror(-r));
        goto fail;
    }

    /* The description, as the generic walker would fill it. */
    describe_header(bdf, cfg, f);
    f->irq_pin = cfg[0x3d] <= 4 ? cfg[0x3d] : 0;
    parse_caps(cfg, 256, f);
    find_parent(v, bdf, f);
    irq = sysfs_read(v, bdf, "irq");
    if (f->irq_pin && irq && atoi(irq) > 0) {
        f->irq_gsi = atoi(irq);
    }
    /* BARs: kind from the BAR register (VFIO virtualises it but keeps the
     * type bits), size from the region, bus address from sysfs (only for
     * the registry: access goes through the region). */
    res = sysfs_read(v, bdf, "resource");
    {
        g_auto(GStrv) lines = res ? g_strsplit(res, "\n", -1) : NULL;
        unsigned nbars = f->header_type == 0 ? 6 : (f->is_bridge ? 2 : 0);

        for (unsigned i = 0; i < nbars; i++) {
            uint32_t reg = cfg_get(cfg, 256, 0x10 + 4 * i, 4);
            DextPciBar *b = &f->bars[i];

            if (region_info(vf->dev_fd, VFIO_PCI_BAR0_REGION_INDEX + i,
                            &ri) < 0 || !ri.size) {
                continue;
            }
            vf->bar[i].off = ri.offset;
            vf->bar[i].size = ri.size;
            vf->bar[i].flags = ri.flags;
            b->size = ri.size;
            b->kind = (reg & 1) ? DEXT_BAR_IO
                    : ((reg >> 1) & 3) == 2 ? DEXT_BAR_MEM64 : DEXT_BAR_MEM32;
            b->prefetchable = !(reg & 1) && (reg & 8);
            if (lines && g_strv_length(lines) > i) {
                b->addr = g_ascii_strtoull(lines[i], NULL, 16);
            }
            /* mmap where the kernel allows it (the MSI-X table BAR too on
             * kernels with MSIX_MAPPABLE); pread/pwrite otherwise */
            if (b->kind != DEXT_BAR_IO && (ri.flags & VFIO_REGION_INFO_FLAG_MMAP)) {
                void *m = mmap(NULL, ri.size, PROT_READ | PROT_WRITE,
                               MAP_SHARED, vf->dev_fd, ri.offset);

                if (m != MAP_FAILED) {
                    vf->bar[i].map = m;
                }
            }
            if (b->kind == DEXT_BAR_MEM64) {
                i++;
            }
        }
    }
    /* Start quiet: no decode, no bus mastering, as the qtest walker leaves
     * endpoints (drivers enable what they use). */
    if (f->header_type == 0) {
        uint16_t cmd = cfg_get(cfg, 256, 4, 2) & ~(uint16_t)7;

        cfg_rw(vf, true, 4, &cmd, 2);
    }
    *out = vf;
    return 0;

fail:
    if (vf->dev_fd >= 0) {
        close(vf->dev_fd);
    }
    g_free(vf);
    return r < 0 ? r : -EIO;
}

static void intx_stop(VfioFn *f);

static void close_function(VfioFn *vf)
{
    intx_stop(vf);
    for (unsigned i = 0; i < DEXT_PCI_NUM_BARS; i++) {
        if (vf->bar[i].map) {
            munmap((void *)vf->bar[i].map, vf->bar[i].size);
        }
    }
    for (unsigned i = 0; i < vf->n_efd; i++) {
        if (vf->efd[i] >= 0) {
            close(vf->efd[i]);
        }
    }
    g_free(vf->efd);
    if (vf->dev_fd >= 0) {
        close(vf->dev_fd);   /* the kernel disables its interrupts */
    }
    g_free(vf);
}

/* Pick an IOVA window of @len from the container's usable ranges. */
static int iova_pick(VfioPlatform *v, uint64_t len, uint64_t *iova)
{
    struct vfio_iommu_type1_info probe = { .argsz = sizeof(probe) };
    g_autofree struct vfio_iommu_type1_info *info = NULL;
    const uint64_t align = 2ull << 20;
    uint32_t off;
    bool ranges = false;

    if (ioctl(v->container, VFIO_IOMMU_GET_INFO, &probe) < 0) {
        return -errno;
    }
    if ((probe.flags & VFIO_IOMMU_INFO_CAPS) && probe.argsz > sizeof(probe)) {
        info = g_malloc0(probe.argsz);
        info->argsz = probe.argsz;
        if (ioctl(v->container, VFIO_IOMMU_GET_INFO, info) < 0) {
            return -errno;
        }
        for (off = info->cap_offset; off && off + sizeof(struct vfio_info_cap_header)
             <= info->argsz;) {
            struct vfio_info_cap_header *h = (void *)((char *)info + off);

            if (h->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
                struct vfio_iommu_type1_info_cap_iova_range *r = (void *)h;

                ranges = true;
                for (uint32_t i = 0; i < r->nr_iovas; i++) {
                    uint64_t s = r->iova_ranges[i].start;
                    uint64_t e = r->iova_ranges[i].end;
                    uint64_t a = MAX(s, VFIO_IOVA_MIN);

                    a = (a + align - 1) & ~(align - 1);
                    if (a >= s && a <= e && e - a + 1 >= len) {
                        *iova = a;
                        return 0;
                    }
                }
            }
            if (h->next <= off) {
                break;
            }
            off = h->next;
        }
    }
    if (ranges) {
        return -ENOSPC;
    }
    *iova = VFIO_IOVA_MIN;
    return 0;
}

static int setup_pool(VfioPlatform *v, uint64_t size)
{
    DextPlatform *p = &v->p;
    int r;

    p->mem_fd = memfd_create("dextlab-dma", MFD_CLOEXEC);
    if (p->mem_fd < 0 || ftruncate(p->mem_fd, size) < 0) {
        return dext_platform_set_error(p, -errno, "DMA pool memfd: %s",
                                       g_strerror(errno));
    }
    /* no MAP_POPULATE: pages are allocated when a chunk is pinned */
    p->mem_map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED,
                      p->mem_fd, 0);
    if (p->mem_map == MAP_FAILED) {
        p->mem_map = NULL;
        return dext_platform_set_error(p, -errno, "DMA pool mmap: %s",
                                       g_strerror(errno));
    }
    p->ram_size = size;
    if (v->container < 0 || v->groups->len == 0) {
        /* nothing to DMA for: keep the memory fd, no allocator */
        return 0;
    }
    if ((r = iova_pick(v, size, &v->pool_iova)) < 0) {
        return dext_platform_set_error(p, r, "no IOVA window of 0x%" PRIx64
                                       " bytes", size);
    }
    v->chunk_mapped = g_new0(bool, size / VFIO_POOL_CHUNK);
    v->pool_mapped = true;
    v->pool_size = size;
    p->mem_iova = v->pool_iova;
    p->dma = dext_range_alloc_new(v->pool_iova, size, 4096);
    return p->dma ? 0 : -EINVAL;
}

/* Map the pool's chunks [first, last) into the IOMMU (one ioctl). */
static int map_chunks(VfioPlatform *v, uint64_t first, uint64_t last)
{
    struct vfio_iommu_type1_dma_map m = {
        .argsz = sizeof(m),
        .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        .vaddr = (uintptr_t)v->p.mem_map + first * VFIO_POOL_CHUNK,
        .iova = v->pool_iova + first * VFIO_POOL_CHUNK,
        .size = (last - first) * VFIO_POOL_CHUNK,
    };

    if (ioctl(v->container, VFIO_IOMMU_MAP_DMA, &m) < 0) {
        return dext_platform_set_error(&v->p, -errno, "VFIO_IOMMU_MAP_DMA 0x%"
                                       PRIx64 "+0x%" PRIx64 ": %s",
                                       (uint64_t)m.iova, (uint64_t)m.size,
                                       g_strerror(errno));
    }
    for (uint64_t c = first; c < last; c++) {
        v->chunk_mapped[c] = true;
    }
    return 0;
}

/* Chunks stay mapped until destroy: allocations come and go, and the pool
 * is bounded, so unmapping would only cost unpinning and re-pinning. */
static int vfio_dma_prepare(DextPlatform *p, uint64_t iova, uint64_t size)
{
    VfioPlatform *v = VP(p);
    uint64_t c, end, run = UINT64_MAX;
    int r = 0;

    if (!v->pool_mapped || !size || iova < v->pool_iova ||
        iova - v->pool_iova > v->pool_size - size) {
        return dext_platform_set_error(p, -EINVAL, "dma_prepare 0x%" PRIx64
                                       "+0x%" PRIx64 ": outside the pool",
                                       iova, size);
    }
    c = (iova - v->pool_iova) / VFIO_POOL_CHUNK;
    end = (iova - v->pool_iova + size - 1) / VFIO_POOL_CHUNK + 1;
    g_mutex_lock(&v->map_lock);
    for (; c <= end && r == 0; c++) {
        if (c < end && !v->chunk_mapped[c]) {
            run = run == UINT64_MAX ? c : run;
        } else if (run != UINT64_MAX) {
            r = map_chunks(v, run, c);
            run = UINT64_MAX;
        }
    }
    g_mutex_unlock(&v->map_lock);
    return r;
}

/* ------------------------------------------------------------- ops */

static VfioFn *fn_at(VfioPlatform *v, int idx)
{
    return idx >= 0 && (guint)idx < v->vf->len ? v->vf->pdata[idx] : NULL;
}

static VfioFn *fn_by_addr(VfioPlatform *v, DextPciAddr a)
{
    char b[13];

    dext_pci_addr_format(a, b);
    for (guint i = 0; i < v->vf->len; i++) {
        VfioFn *f = v->vf->pdata[i];

        if (!strcmp(f->bdf, b)) {
            return f;
        }
    }
    return NULL;
}

static void vfio_destroy(DextPlatform *p)
{
    VfioPlatform *v = VP(p);

    for (guint i = 0; v->vf && i < v->vf->len; i++) {
        close_function(v->vf->pdata[i]);
    }
    if (v->pool_mapped) {
        /* type1v2 unmaps every whole mapping in the window, holes allowed */
        struct vfio_iommu_type1_dma_unmap u = {
            .argsz = sizeof(u), .iova = v->pool_iova, .size = v->pool_size,
        };

        ioctl(v->container, VFIO_IOMMU_UNMAP_DMA, &u);
    }
    for (guint i = 0; v->groups && i < v->groups->len; i++) {
        VfioGroup *g = &g_array_index(v->groups, VfioGroup, i);

        ioctl(g->fd, VFIO_GROUP_UNSET_CONTAINER);
        close(g->fd);
    }
    if (v->container >= 0) {
        close(v->container);
    }
    if (v->vf) {
        g_ptr_array_free(v->vf, TRUE);
    }
    if (v->groups) {
        g_array_free(v->groups, TRUE);
    }
    g_mutex_clear(&v->irq_lock);
    g_mutex_clear(&v->map_lock);
    g_free(v->chunk_mapped);
    g_free(v->sysfs);
    dext_platform_fini_common(p);
    g_free(v);
}

static bool vfio_alive(DextPlatform *p)
{
    (void)p;
    return true;   /* the machine is the one we run on */
}

static int vfio_cfg_read(DextPlatform *p, DextPciAddr a, unsigned off,
                         unsigned width, uint32_t *val)
{
    VfioFn *f = fn_by_addr(VP(p), a);
    uint32_t v = 0;
    char b[13];
    int r;

    if (!f) {
        return dext_platform_set_error(p, -ENODEV, "%s is not a VFIO function "
                                       "of this platform",
                                       dext_pci_addr_format(a, b));
    }
    if ((r = cfg_rw(f, false, off, &v, width)) < 0) {
        return dext_platform_set_error(p, r, "%s: config read 0x%x/%u: %s",
                                       f->bdf, off, width, g_strerror(-r));
    }
    *val = v;
    return 0;
}

static int vfio_cfg_write(DextPlatform *p, DextPciAddr a, unsigned off,
                          unsigned width, uint32_t val)
{
    VfioFn *f = fn_by_addr(VP(p), a);
    char b[13];
    int r;

    if (!f) {
        return dext_platform_set_error(p, -ENODEV, "%s is not a VFIO function "
                                       "of this platform",
                                       dext_pci_addr_format(a, b));
    }
    if ((r = cfg_rw(f, true, off, &val, width)) < 0) {
        return dext_platform_set_error(p, r, "%s: config write 0x%x/%u: %s",
                                       f->bdf, off, width, g_strerror(-r));
    }
    return 0;
}

static int bar_rw(DextPlatform *p, VfioFn *f, unsigned bar, uint64_t off,
                  unsigned width, uint64_t *val, bool write)
{
    VfioBar *b = &f->bar[bar];
    ssize_t n;

    if (b->map) {
        volatile uint8_t *a = b->map + off;

        /* one access of exactly @width: registers have side effects */
        switch (width) {
        case 1:
            if (write) { *(volatile uint8_t *)a = *val; }
            else { *val = *(volatile uint8_t *)a; }
            break;
        case 2:
            if (write) { *(volatile uint16_t *)a = *val; }
            else { *val = *(volatile uint16_t *)a; }
            break;
        case 4:
            if (write) { *(volatile uint32_t *)a = *val; }
            else { *val = *(volatile uint32_t *)a; }
            break;
        default:
            if (write) { *(volatile uint64_t *)a = *val; }
            else { *val = *(volatile uint64_t *)a; }
            break;
        }
        return 0;
    }
    {
        uint64_t tmp = write ? *val : 0;

        n = write ? pwrite(f->dev_fd, &tmp, width, b->off + off)
                  : pread(f->dev_fd, &tmp, width, b->off + off);
        if (n != (ssize_t)width) {
            int e = n < 0 ? errno : EIO;

            return dext_platform_set_error(p, -e, "%s BAR%u+0x%" PRIx64
                                           " %s: %s", f->bdf, bar, off,
                                           write ? "write" : "read",
                                           g_strerror(e));
        }
        if (!write) {
            *val = tmp;
        }
    }
    return 0;
}

static int vfio_bar_read(DextPlatform *p, int idx, unsigned bar, uint64_t off,
                         unsigned width, uint64_t *val)
{
    VfioFn *f = fn_at(VP(p), idx);

    if (!f || !f->bar[bar].size) {
        return dext_platform_set_error(p, -ENODEV, "no VFIO region for BAR%u",
                                       bar);
    }
    return bar_rw(p, f, bar, off, width, val, false);
}

static int vfio_bar_write(DextPlatform *p, int idx, unsigned bar,
                          uint64_t off, unsigned width, uint64_t val)
{
    VfioFn *f = fn_at(VP(p), idx);

    if (!f || !f->bar[bar].size) {
        return dext_platform_set_error(p, -ENODEV, "no VFIO region for BAR%u",
                                       bar);
    }
    return bar_rw(p, f, bar, off, width, &val, true);
}

/* Physical-address MMIO (used by generic helpers): map the address back to
 * the (function, BAR) that decodes it. */
static int phys_to_bar(DextPlatform *p, uint64_t addr, unsigned width,
                       VfioFn **vf, unsigned *bar, uint64_t *off)
{
    VfioPlatform *v = VP(p);
    int r = -ENODEV;

    g_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->n_fns && r < 0; i++) {
        for (unsigned b = 0; b < DEXT_PCI_NUM_BARS; b++) {
            const DextPciBar *pb = &p->fns[i].bars[b];

            if (pb->kind != DEXT_BAR_NONE && pb->kind != DEXT_BAR_IO &&
                pb->size && addr >= pb->addr &&
                addr - pb->addr <= pb->size - width) {
                *vf = fn_at(v, i);
                *bar = b;
                *off = addr - pb->addr;
                r = *vf ? 0 : -ENODEV;
                break;
            }
        }
    }
    g_mutex_unlock(&p->lock);
    if (r < 0) {
        return dext_platform_set_error(p, r, "0x%" PRIx64 " is in no BAR of a "
                                       "VFIO function", addr);
    }
    return 0;
}

static int vfio_mmio_read(DextPlatform *p, uint64_t addr, unsigned width,
                          uint64_t *val)
{
    VfioFn *f;
    unsigned bar;
    uint64_t off;
    int r = phys_to_bar(p, addr, width, &f, &bar, &off);

    return r < 0 ? r : bar_rw(p, f, bar, off, width, val, false);
}

static int vfio_mmio_write(DextPlatform *p, uint64_t addr, unsigned width,
                           uint64_t val)
{
    VfioFn *f;
    unsigned bar;
    uint64_t off;
    int r = phys_to_bar(p, addr, width, &f, &bar, &off);

    return r < 0 ? r : bar_rw(p, f, bar, off, width, &val, true);
}

static int vfio_port_read(DextPlatform *p, uint16_t port, unsigned width,
                          uint32_t *val)
{
    (void)port; (void)width; (void)val;
    return dext_platform_set_error(p, -ENOTSUP, "raw port I/O is not "
                                   "available in the guest (use an I/O BAR)");
}

static int vfio_port_write(DextPlatform *p, uint16_t port, unsigned width,
                           uint32_t val)
{
    (void)port; (void)width; (void)val;
    return dext_platform_set_error(p, -ENOTSUP, "raw port I/O is not "
                                   "available in the guest (use an I/O BAR)");
}

static int vfio_flush(DextPlatform *p)
{
    VfioPlatform *v = VP(p);

    /* Stores to an uncached BAR mapping leave the CPU in program order; the
     * fence orders them before what follows.  Then a non-posted request to
     * each function: PCIe forbids a read completion from passing posted
     * writes on the same path, so when the config read returns, every
     * earlier BAR write has reached its device (registers are never read
     * here: a read can have side effects). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (guint i = 0; i < v->vf->len; i++) {
        uint16_t id;
        int r = cfg_rw(v->vf->pdata[i], false, 0, &id, 2);

        if (r < 0) {
            return dext_platform_set_error(p, r, "%s: flush read: %s",
                                           ((VfioFn *)v->vf->pdata[i])->bdf,
                                           g_strerror(-r));
        }
    }
    return 0;
}

static int vfio_enumerate(DextPlatform *p)
{
    /* The functions were opened at create time (binding and groups are
     * set-up, not a scan); a rescan returns the same set. */
    (void)p;
    return 0;
}

/* --- interrupts ----------------------------------------------------- */

static unsigned vfio_index(DextIrqKind k)
{
    return k == DEXT_IRQ_MSIX ? VFIO_PCI_MSIX_IRQ_INDEX
         : k == DEXT_IRQ_MSI ? VFIO_PCI_MSI_IRQ_INDEX : VFIO_PCI_INTX_IRQ_INDEX;
}

static int set_irqs(VfioFn *f, DextIrqKind k, unsigned start, unsigned count,
                    const int *fds)
{
    size_t sz = sizeof(struct vfio_irq_set) + count * sizeof(int32_t);
    g_autofree struct vfio_irq_set *s = g_malloc0(sz);

    s->argsz = sz;
    s->flags = (fds ? VFIO_IRQ_SET_DATA_EVENTFD : VFIO_IRQ_SET_DATA_NONE) |
               VFIO_IRQ_SET_ACTION_TRIGGER;
    s->index = vfio_index(k);
    s->start = start;
    s->count = count;
    for (unsigned i = 0; fds && i < count; i++) {
        ((int32_t *)s->data)[i] = fds[i];
    }
    if (!fds) {
        s->argsz = sizeof(*s);
    }
    return ioctl(f->dev_fd, VFIO_DEVICE_SET_IRQS, s) < 0 ? -errno : 0;
}

static int intx_unmask(VfioFn *f)
{
    struct vfio_irq_set s = {
        .argsz = sizeof(s),
        .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
        .index = VFIO_PCI_INTX_IRQ_INDEX, .start = 0, .count = 1,
    };

    return ioctl(f->dev_fd, VFIO_DEVICE_SET_IRQS, &s) < 0 ? -errno : 0;
}

static gpointer intx_thread(gpointer data)
{
    VfioIntx *x = data;
    struct pollfd pf[2] = {
        { .fd = x->trig, .events = POLLIN }, { .fd = x->stop, .events = POLLIN },
    };
    uint64_t n, one = 1;

    for (;;) {
        /* bounded wait; loops until stopped */
        if (poll(pf, 2, 1000) < 0 && errno != EINTR) {
            break;
        }
        if (pf[1].revents) {
            break;
        }
        if (!(pf[0].revents & POLLIN) || read(x->trig, &n, 8) != 8) {
            continue;
        }
        if (write(x->user, &one, 8) != 8) {
            /* counter saturated or fd gone: nothing better to do */
        }
        /* level semantics: re-arm once the line is low */
        for (;;) {
            uint16_t st = 0;
            struct pollfd ps = { .fd = x->stop, .events = POLLIN };

            if (cfg_rw(x->f, false, 6, &st, 2) < 0 || !(st & 8)) {
                break;
            }
            if (poll(&ps, 1, 1) > 0) {
                return NULL;
            }
        }
        intx_unmask(x->f);
    }
    return NULL;
}

static void intx_stop(VfioFn *f)
{
    VfioIntx *x = f->intx;
    uint64_t one = 1;

    if (!x) {
        return;
    }
    if (write(x->stop, &one, 8) == 8) {
        g_thread_join(x->th);
    }
    close(x->trig);
    close(x->stop);
    close(x->user);
    g_free(x);
    f->intx = NULL;
}

/* Route INTx to a forwarder that owns @user; called under irq_lock. */
static int intx_start(VfioFn *f, int user)
{
    VfioIntx *x = g_new0(VfioIntx, 1);
    int r;

    x->f = f;
    x->user = user;
    x->trig = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    x->stop = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (x->trig < 0 || x->stop < 0) {
        r = -errno;
        goto fail;
    }
    if ((r = set_irqs(f, DEXT_IRQ_INTX, 0, 1, &x->trig)) < 0) {
        goto fail;
    }
    x->th = g_thread_new("dext-vfio-intx", intx_thread, x);
    f->intx = x;
    return 0;

fail:
    if (x->trig >= 0) {
        close(x->trig);
    }
    if (x->stop >= 0) {
        close(x->stop);
    }
    g_free(x);
    return r;
}

static void irq_drop_locked(VfioFn *f)
{
    intx_stop(f);
    if (f->irq_kind) {
        set_irqs(f, f->irq_kind, 0, 0, NULL);
    }
    for (unsigned i = 0; i < f->n_efd; i++) {
        if (f->efd[i] >= 0) {
            close(f->efd[i]);
            f->efd[i] = -1;
        }
    }
    f->irq_kind = DEXT_IRQ_AUTO;
    f->irq_count = 0;
}

static bool vfio_has_msi(DextPlatform *p)
{
    (void)p;
    return true;
}

static int vfio_irq_bind(DextPlatform *p, int idx, DextIrqKind kind,
                         unsigned vector, int eventfd)
{
    VfioPlatform *v = VP(p);
    VfioFn *f = fn_at(v, idx);
    struct vfio_irq_info ii = { .argsz = sizeof(ii) };
    int nd, r = 0;

    if (!f) {
        return dext_platform_set_error(p, -ENODEV, "no such VFIO function");
    }
    ii.index = vfio_index(kind);
    if (ioctl(f->dev_fd, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0 ||
        vector >= ii.count) {
        return dext_platform_set_error(p, -ENOTSUP, "%s: VFIO offers no %s "
                                       "vector %u", f->bdf,
                                       kind == DEXT_IRQ_MSIX ? "MSI-X" :
                                       kind == DEXT_IRQ_MSI ? "MSI" : "INTx",
                                       vector);
    }
    nd = fcntl(eventfd, F_DUPFD_CLOEXEC, 0);
    if (nd < 0) {
        return dext_platform_set_error(p, -errno, "dup eventfd: %s",
                                       g_strerror(errno));
    }
    g_mutex_lock(&v->irq_lock);
    if (f->irq_kind && f->irq_kind != kind) {
        r = dext_platform_set_error(p, -EBUSY, "%s: another interrupt kind "
                                    "is bound (unbind all first)", f->bdf);
        goto out;
    }
    if (f->n_efd < ii.count) {
        f->efd = g_renew(int, f->efd, ii.count);
        for (unsigned i = f->n_efd; i < ii.count; i++) {
            f->efd[i] = -1;
        }
        f->n_efd = ii.count;
    }
    if (kind == DEXT_IRQ_INTX) {
        /* the forwarder takes its own dup; ours stays in efd[0] for
         * bookkeeping.  A rebind restarts it with the new eventfd. */
        int fwd = fcntl(nd, F_DUPFD_CLOEXEC, 0);

        intx_stop(f);
        if (fwd < 0) {
            r = -errno;
        } else if ((r = intx_start(f, fwd)) < 0) {
            close(fwd);
        } else {
            f->irq_kind = kind;
            f->irq_count = 1;
        }
    } else if (!f->irq_kind) {
        /* Enable every vector at once (unbound ones get -1): kernels
         * before 6.5 cannot add MSI-X vectors to an enabled set, and this
         * way later binds only swap one trigger. */
        g_autofree int *fds = g_new(int, ii.count);
        unsigned count = kind == DEXT_IRQ_INTX ? 1 : ii.count;

        for (unsigned i = 0; i < count; i++) {
            fds[i] = i == vector ? nd : -1;
        }
        r = set_irqs(f, kind, 0, count, fds);
        if (r == -ENOSPC && kind == DEXT_IRQ_MSI && vector == 0) {
            count = 1;   /* no multi-message MSI here: one vector will do */
            r = set_irqs(f, kind, 0, 1, fds);
        }
        if (r == 0) {
            f->irq_kind = kind;
            f->irq_count = count;
        }
    } else if (vector >= f->irq_count) {
        r = -ERANGE;
    } else {
        r = set_irqs(f, kind, vector, 1, &nd);
    }
    if (r < 0) {
        dext_platform_set_error(p, r, "%s: VFIO_DEVICE_SET_IRQS vector %u: %s",
                                f->bdf, vector, g_strerror(-r));
        goto out;
    }
    if (f->efd[vector] >= 0) {
        close(f->efd[vector]);
    }
    f->efd[vector] = nd;
    nd = -1;
out:
    g_mutex_unlock(&v->irq_lock);
    if (nd >= 0) {
        close(nd);
    }
    return r;
}

static int vfio_irq_unbind(DextPlatform *p, int idx, unsigned vector)
{
    VfioPlatform *v = VP(p);
    VfioFn *f = fn_at(v, idx);
    int r = 0, none = -1;
    bool any = false;

    if (!f) {
        return dext_platform_set_error(p, -ENODEV, "no such VFIO function");
    }
    g_mutex_lock(&v->irq_lock);
    if (vector >= f->n_efd || f->efd[vector] < 0) {
        g_mutex_unlock(&v->irq_lock);
        return dext_platform_set_error(p, -ENOENT, "%s: vector %u is not "
                                       "bound", f->bdf, vector);
    }
    for (unsigned i = 0; i < f->n_efd; i++) {
        any |= i != vector && f->efd[i] >= 0;
    }
    if (any) {
        r = set_irqs(f, f->irq_kind, vector, 1, &none);
        close(f->efd[vector]);
        f->efd[vector] = -1;
    } else {
        irq_drop_locked(f);   /* the last one: disable MSI-X/MSI/INTx */
    }
    g_mutex_unlock(&v->irq_lock);
    if (r < 0) {
        return dext_platform_set_error(p, r, "%s: unbind vector %u: %s",
                                       f->bdf, vector, g_strerror(-r));
    }
    return 0;
}

static int vfio_intx_level(DextPlatform *p, int idx)
{
    VfioFn *f = fn_at(VP(p), idx);
    uint16_t st = 0;
    int r;

    if (!f) {
        return -ENODEV;
    }
    /* PCI Status bit 3 is the function's own INTx level */
    if ((r = cfg_rw(f, false, 6, &st, 2)) < 0) {
        return dext_platform_set_error(p, r, "%s: status read", f->bdf);
    }
    return (st >> 3) & 1;
}

static void vfio_irq_forget(DextPlatform *p, int idx)
{
    VfioPlatform *v = VP(p);
    VfioFn *f = fn_at(v, idx);

    if (f) {
        g_mutex_lock(&v->irq_lock);
        irq_drop_locked(f);
        g_mutex_unlock(&v->irq_lock);
    }
}

static int vfio_reset(DextPlatform *p, DextPciAddr a, bool allow_bus)
{
    VfioPlatform *v = VP(p);
    VfioFn *f = fn_by_addr(v, a);
    uint16_t cmd;

    (void)allow_bus;   /* VFIO picks FLR, PM or bus reset within the group */
    if (!f) {
        return dext_platform_set_error(p, -ENODEV, "not a VFIO function");
    }
    if (!f->has_reset) {
        return dext_platform_set_error(p, -ENOTSUP, "%s: VFIO offers no reset "
                                       "for this function", f->bdf);
    }
    /* Platform contract: bindings go with the reset (the kernel would
     * otherwise restore MSI-X behind the driver's back). */
    g_mutex_lock(&v->irq_lock);
    irq_drop_locked(f);
    g_mutex_unlock(&v->irq_lock);
    if (ioctl(f->dev_fd, VFIO_DEVICE_RESET) < 0) {
        return dext_platform_set_error(p, -errno, "%s: VFIO_DEVICE_RESET: %s",
                                       f->bdf, g_strerror(errno));
    }
    /* and decode/bus mastering off, as after the generic reset */
    if (cfg_rw(f, false, 4, &cmd, 2) == 0) {
        cmd &= ~(uint16_t)7;
        cfg_rw(f, true, 4, &cmd, 2);
    }
    return 0;
}

static const DextPlatformOps vfio_ops = {
    .name = "vfio",
    .destroy = vfio_destroy,
    .alive = vfio_alive,
    .cfg_read = vfio_cfg_read,
    .cfg_write = vfio_cfg_write,
    .mmio_read = vfio_mmio_read,
    .mmio_write = vfio_mmio_write,
    .port_read = vfio_port_read,
    .port_write = vfio_port_write,
    .flush = vfio_flush,
    .bar_read = vfio_bar_read,
    .bar_write = vfio_bar_write,
    .enumerate = vfio_enumerate,
    .reset_function = vfio_reset,
    .has_msi = vfio_has_msi,
    .irq_bind = vfio_irq_bind,
    .irq_unbind = vfio_irq_unbind,
    .intx_level = vfio_intx_level,
    .irq_forget = vfio_irq_forget,
    .dma_prepare = vfio_dma_prepare,
};

/* ------------------------------------------------------------ create */

int dext_platform_vfio_create(const DextVfioDesc *desc, DextPlatform **out)
{
    VfioPlatform *v;
    DextPlatform *p;
    g_autoptr(GPtrArray) bdfs = g_ptr_array_new_with_free_func(g_free);
    g_auto(GStrv) env_bind = NULL, env_kern = NULL;
    const char *const *bind, *const *kern;
    GArray *fns;
    uint64_t pool;
    int r;

    if (!desc || !out) {
        return dext_platform_set_error(NULL, -EINVAL, "vfio_create: NULL");
    }
    pool = desc->dma_size ? desc->dma_size : VFIO_DEFAULT_POOL;
    if (pool % (2ull << 20) || pool > VFIO_MAX_POOL) {
        return dext_platform_set_error(NULL, -EINVAL, "dma_size 0x%" PRIx64
                                       ": a multiple of 2 MiB up to 1 GiB",
                                       pool);
    }
    v = g_new0(VfioPlatform, 1);
    p = &v->p;
    dext_platform_init_common(p, &vfio_ops);
    p->timeout_ms = desc->timeout_ms ? desc->timeout_ms : 10000;
    p->log_fn = desc->log_fn;
    p->log_opaque = desc->log_opaque;
    v->sysfs = g_strdup(desc->sysfs ? desc->sysfs : "/sys");
    v->container = -1;
    v->groups = g_array_new(FALSE, FALSE, sizeof(VfioGroup));
    v->vf = g_ptr_array_new();
    g_mutex_init(&v->irq_lock);
    g_mutex_init(&v->map_lock);

    bind = desc->bind;
    if (!bind && g_getenv("DEXT_VFIO_BIND")) {
        env_bind = g_strsplit(g_getenv("DEXT_VFIO_BIND"), ",", -1);
        bind = (const char *const *)env_bind;
    }
    if ((r = collect(v, bind, bdfs)) < 0) {
        goto fail;
    }
    if (bdfs->len) {
        v->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
        if (v->container < 0) {
            r = dext_platform_set_error(p, -errno, "/dev/vfio/vfio: %s",
                                        g_strerror(errno));
            goto fail;
        }
        if (ioctl(v->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION ||
            ioctl(v->container, VFIO_CHECK_EXTENSION,
                  VFIO_TYPE1v2_IOMMU) != 1) {
            r = dext_platform_set_error(p, -ENOTSUP, "VFIO without the type1v2 "
                                        "IOMMU (vfio_iommu_type1 loaded?)");
            goto fail;
        }
    }
    fns = g_array_new(FALSE, TRUE, sizeof(DextPciFunction));
    for (guint i = 0; i < bdfs->len; i++) {
        DextPciFunction f;
        VfioFn *vf = NULL;

        if ((r = open_function(v, bdfs->pdata[i], &vf, &f)) < 0) {
            g_array_free(fns, TRUE);
            goto fail;
        }
        g_ptr_array_add(v->vf, vf);
        g_array_append_val(fns, f);
        dext_platform_log(p, G_LOG_LEVEL_INFO, "%s %04x:%04x: VFIO group %d",
                          vf->bdf, f.vendor_id, f.device_id, vf->group_no);
    }
    /* then the kernel-owned functions asked for, listed only */
    kern = desc->kernel_owned;
    if (!kern && g_getenv("DEXT_VFIO_KERNEL_OWNED")) {
        env_kern = g_strsplit(g_getenv("DEXT_VFIO_KERNEL_OWNED"), ",", -1);
        kern = (const char *const *)env_kern;
    }
    if (kern) {
        g_autofree char *dir = g_strdup_printf("%s/bus/pci/devices", v->sysfs);
        g_autoptr(GPtrArray) names = g_ptr_array_new_with_free_func(g_free);
        GDir *dd = g_dir_open(dir, 0, NULL);
        const char *nm;

        while (dd && (nm = g_dir_read_name(dd))) {
            g_ptr_array_add(names, g_strdup(nm));
        }
        if (dd) {
            g_dir_close(dd);
        }
        g_ptr_array_sort(names, cmp_strp);
        for (guint i = 0; i < names->len; i++) {
            const char *bdf = names->pdata[i];
            g_autofree char *drv = NULL;
            DextPciFunction f;
            DextPciAddr a;

            if (!parse_bdf(bdf, &a) || !kernel_fn_wanted(v, bdf, kern)) {
                continue;
            }
            drv = sysfs_driver(v, bdf);
            if (!strcmp(drv, "vfio-pci") || describe_kernel_fn(v, bdf, &f) < 0) {
                continue;
            }
            g_array_append_val(fns, f);
            dext_platform_log(p, G_LOG_LEVEL_INFO, "%s %04x:%04x class %02x%02x"
                              "%02x: listed, owned by the kernel (driver "
                              "\"%s\"), not accessible", bdf, f.vendor_id,
                              f.device_id, f.class_base, f.class_sub,
                              f.class_prog_if, *drv ? drv : "none");
        }
    }
    g_mutex_lock(&p->lock);
    p->n_fns = fns->len;
    p->fns = (DextPciFunction *)g_array_free(fns, FALSE);
    p->enumerated = true;
    g_mutex_unlock(&p->lock);
    if ((r = setup_pool(v, pool)) < 0) {
        goto fail;
    }
    if (v->pool_mapped) {
        dext_platform_log(p, G_LOG_LEVEL_INFO, "DMA pool: %" PRIu64 " MiB at "
                          "IOVA 0x%" PRIx64 " (IOMMU-mapped on first use)",
                          pool >> 20, v->pool_iova);
    }
    *out = p;
    return 0;

fail:
    {
        /* keep the message: destroy may log */
        g_autofree char *msg = g_strdup(dext_platform_last_error(p));

        vfio_destroy(p);
        dext_platform_set_error(NULL, r, "%s", msg);
    }
    return r;
}

int dext_platform_create(const char *backend, const DextMachineDesc *desc,
                         DextPlatform **out)
{
    if (!backend || !strcmp(backend, "qtest")) {
        return dext_platform_qtest_create(desc, out);
    }
    if (!strcmp(backend, "vfio")) {
        DextVfioDesc vd = {
            .dma_size = desc ? desc->dma_size : 0,
            .timeout_ms = desc ? desc->timeout_ms : 0,
            .log_fn = desc ? desc->log_fn : NULL,
            .log_opaque = desc ? desc->log_opaque : NULL,
        };

        return dext_platform_vfio_create(&vd, out);
    }
    return dext_platform_set_error(NULL, -EINVAL, "unknown platform backend "
                                   "\"%s\" (qtest, vfio)", backend);
}
