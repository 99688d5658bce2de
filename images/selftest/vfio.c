/*
 * vfio.c: VFIO type1 client for one PCI function (see vfio.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "vfio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/vfio.h>

#define DXL_VFIO_MAX_BARS   6
#define DXL_VFIO_MAX_VEC    64
#define DXL_VFIO_MAX_MAPS   32

struct dxl_vfio_map {
    uint64_t iova;
    uint64_t len;
};

struct dxl_vfio {
    int container;
    int group;
    int device;
    int group_no;
    struct vfio_region_info cfg;
    void *bar[DXL_VFIO_MAX_BARS];
    uint64_t bar_len[DXL_VFIO_MAX_BARS];
    int efd[DXL_VFIO_MAX_VEC];
    unsigned nvec;
    struct dxl_vfio_map map[DXL_VFIO_MAX_MAPS];
    unsigned nmap;
};

static int neg_errno(void)
{
    return errno ? -errno : -EIO;
}

/* The IOMMU group number from /sys/bus/pci/devices/BDF/iommu_group. */
static int group_of(const char *bdf)
{
    char path[PATH_MAX], link[PATH_MAX];
    const char *slash;
    ssize_t n;

    snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s/iommu_group", bdf);
    n = readlink(path, link, sizeof(link) - 1);
    if (n < 0) {
        return neg_errno();
    }
    link[n] = '\0';
    slash = strrchr(link, '/');
    return atoi(slash ? slash + 1 : link);
}

static int region_info(struct dxl_vfio *v, unsigned index,
                       struct vfio_region_info *ri)
{
    memset(ri, 0, sizeof(*ri));
    ri->argsz = sizeof(*ri);
    ri->index = index;
    if (ioctl(v->device, VFIO_DEVICE_GET_REGION_INFO, ri) < 0) {
        return neg_errno();
    }
    return 0;
}

int dxl_vfio_open(const char *bdf, struct dxl_vfio **out)
{
    struct vfio_group_status gs = { .argsz = sizeof(gs) };
    struct dxl_vfio *v;
    char path[64];
    int ret;
    unsigned i;

    v = calloc(1, sizeof(*v));
    if (!v) {
        return -ENOMEM;
    }
    v->container = v->group = v->device = -1;
    for (i = 0; i < DXL_VFIO_MAX_VEC; i++) {
        v->efd[i] = -1;
    }

    ret = group_of(bdf);
    if (ret < 0) {
        goto fail_free;
    }
    v->group_no = ret;

    v->container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (v->container < 0) {
        ret = neg_errno();
        goto fail_free;
    }
    if (ioctl(v->container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) {
        ret = -EPROTO;
        goto fail_container;
    }
    /* Debian's kernel has no no-IOMMU mode: type1 is the only choice. */
    if (ioctl(v->container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) != 1) {
        ret = -ENOTSUP;
        goto fail_container;
    }

    snprintf(path, sizeof(path), "/dev/vfio/%d", v->group_no);
    v->group = open(path, O_RDWR | O_CLOEXEC);
    if (v->group < 0) {
        ret = neg_errno();
        goto fail_container;
    }
    if (ioctl(v->group, VFIO_GROUP_GET_STATUS, &gs) < 0) {
        ret = neg_errno();
        goto fail_group;
    }
    /* Viable = every device of the group is bound to vfio (or none). */
    if (!(gs.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        ret = -EBUSY;
        goto fail_group;
    }
    if (ioctl(v->group, VFIO_GROUP_SET_CONTAINER, &v->container) < 0) {
        ret = neg_errno();
        goto fail_group;
    }
    if (ioctl(v->container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
        ret = neg_errno();
        goto fail_unset;
    }
    v->device = ioctl(v->group, VFIO_GROUP_GET_DEVICE_FD, bdf);
    if (v->device < 0) {
        ret = neg_errno();
        goto fail_unset;
    }
    ret = region_info(v, VFIO_PCI_CONFIG_REGION_INDEX, &v->cfg);
    if (ret < 0) {
        goto fail_device;
    }
    *out = v;
    return 0;

fail_device:
    close(v->device);
fail_unset:
    ioctl(v->group, VFIO_GROUP_UNSET_CONTAINER);
fail_group:
    close(v->group);
fail_container:
    close(v->container);
fail_free:
    free(v);
    return ret;
}

void dxl_vfio_close(struct dxl_vfio *v)
{
    unsigned i;

    if (!v) {
        return;
    }
    dxl_vfio_msix_disable(v);
    for (i = 0; i < DXL_VFIO_MAX_BARS; i++) {
        if (v->bar[i]) {
            munmap(v->bar[i], v->bar_len[i]);
        }
    }
    while (v->nmap) {
        dxl_vfio_dma_unmap(v, v->map[v->nmap - 1].iova,
                           v->map[v->nmap - 1].len);
    }
    close(v->device);
    ioctl(v->group, VFIO_GROUP_UNSET_CONTAINER);
    close(v->group);
    close(v->container);
    free(v);
}

int dxl_vfio_group(const struct dxl_vfio *v)
{
    return v->group_no;
}

int dxl_vfio_cfg_read(struct dxl_vfio *v, uint32_t off, void *buf, size_t len)
{
    ssize_t n;

    if (off + len > v->cfg.size) {
        return -EINVAL;
    }
    n = pread(v->device, buf, len, v->cfg.offset + off);
    if (n < 0) {
        return neg_errno();
    }
    return n == (ssize_t)len ? 0 : -EIO;
}

int dxl_vfio_cfg_write(struct dxl_vfio *v, uint32_t off, const void *buf,
                       size_t len)
{
    ssize_t n;

    if (off + len > v->cfg.size) {
        return -EINVAL;
    }
    n = pwrite(v->device, buf, len, v->cfg.offset + off);
    if (n < 0) {
        return neg_errno();
    }
    return n == (ssize_t)len ? 0 : -EIO;
}

int dxl_vfio_bar_size(struct dxl_vfio *v, unsigned bar, uint64_t *size)
{
    struct vfio_region_info ri;
    int ret;

    if (bar >= DXL_VFIO_MAX_BARS) {
        return -EINVAL;
    }
    ret = region_info(v, VFIO_PCI_BAR0_REGION_INDEX + bar, &ri);
    if (ret < 0) {
        return ret;
    }
    *size = ri.size;
    return 0;
}

int dxl_vfio_bar_map(struct dxl_vfio *v, unsigned bar, volatile void **ptr,
                     uint64_t *size)
{
    struct vfio_region_info ri;
    void *p;
    int ret;

    if (bar >= DXL_VFIO_MAX_BARS) {
        return -EINVAL;
    }
    if (v->bar[bar]) {
        *ptr = v->bar[bar];
        *size = v->bar_len[bar];
        return 0;
    }
    ret = region_info(v, VFIO_PCI_BAR0_REGION_INDEX + bar, &ri);
    if (ret < 0) {
        return ret;
    }
    if (!ri.size || !(ri.flags & VFIO_REGION_INFO_FLAG_MMAP)) {
        /* e.g. the MSI-X table BAR: the kernel keeps it to itself */
        return -ENOTSUP;
    }
    p = mmap(NULL, ri.size, PROT_READ | PROT_WRITE, MAP_SHARED, v->device,
             ri.offset);
    if (p == MAP_FAILED) {
        return neg_errno();
    }
    v->bar[bar] = p;
    v->bar_len[bar] = ri.size;
    *ptr = p;
    *size = ri.size;
    return 0;
}

int dxl_vfio_iova_pick(struct dxl_vfio *v, uint64_t min, uint64_t len,
                       uint64_t align, uint64_t *iova)
{
    struct vfio_iommu_type1_info probe = { .argsz = sizeof(probe) };
    struct vfio_iommu_type1_info *info;
    struct vfio_info_cap_header *h;
    uint32_t off;
    int ret = -ENOSPC;

    if (ioctl(v->container, VFIO_IOMMU_GET_INFO, &probe) < 0) {
        return neg_errno();
    }
    if (!(probe.flags & VFIO_IOMMU_INFO_CAPS) || probe.argsz <= sizeof(probe)) {
        /* No range list: assume everything from @min is usable. */
        *iova = (min + align - 1) & ~(align - 1);
        return 0;
    }
    info = calloc(1, probe.argsz);
    if (!info) {
        return -ENOMEM;
    }
    info->argsz = probe.argsz;
    if (ioctl(v->container, VFIO_IOMMU_GET_INFO, info) < 0) {
        ret = neg_errno();
        goto out;
    }
    for (off = info->cap_offset; off; off = h->next) {
        struct vfio_iommu_type1_info_cap_iova_range *r;
        uint32_t i;

        if (off + sizeof(*h) > info->argsz) {
            break;
        }
        h = (struct vfio_info_cap_header *)((char *)info + off);
        if (h->id != VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE) {
            continue;
        }
        r = (void *)h;
        for (i = 0; i < r->nr_iovas; i++) {
            uint64_t s = r->iova_ranges[i].start, e = r->iova_ranges[i].end;
            uint64_t a = s < min ? min : s;

            a = (a + align - 1) & ~(align - 1);
            if (a >= s && a <= e && e - a + 1 >= len) {
                *iova = a;
                ret = 0;
                goto out;
            }
        }
    }
out:
    free(info);
    return ret;
}

int dxl_vfio_dma_map(struct dxl_vfio *v, void *vaddr, uint64_t iova,
                     uint64_t len)
{
    struct vfio_iommu_type1_dma_map m = {
        .argsz = sizeof(m),
        .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        .vaddr = (uintptr_t)vaddr,
        .iova = iova,
        .size = len,
    };

    if (v->nmap == DXL_VFIO_MAX_MAPS) {
        return -ENOSPC;
    }
    if (ioctl(v->container, VFIO_IOMMU_MAP_DMA, &m) < 0) {
        return neg_errno();
    }
    v->map[v->nmap].iova = iova;
    v->map[v->nmap].len = len;
    v->nmap++;
    return 0;
}

int dxl_vfio_dma_unmap(struct dxl_vfio *v, uint64_t iova, uint64_t len)
{
    struct vfio_iommu_type1_dma_unmap u = {
        .argsz = sizeof(u), .iova = iova, .size = len,
    };
    unsigned i;
    int ret = 0;

    for (i = 0; i < v->nmap; i++) {
        if (v->map[i].iova == iova && v->map[i].len == len) {
            break;
        }
    }
    if (i == v->nmap) {
        return -ENOENT;
    }
    if (ioctl(v->container, VFIO_IOMMU_UNMAP_DMA, &u) < 0) {
        ret = neg_errno();
    }
    /* Forget it either way: a failed unmap is not retried by close(). */
    v->map[i] = v->map[--v->nmap];
    return ret;
}

int dxl_vfio_msix_count(struct dxl_vfio *v)
{
    struct vfio_irq_info ii = {
        .argsz = sizeof(ii), .index = VFIO_PCI_MSIX_IRQ_INDEX,
    };

    if (ioctl(v->device, VFIO_DEVICE_GET_IRQ_INFO, &ii) < 0) {
        return neg_errno();
    }
    return ii.count;
}

int dxl_vfio_msix_enable(struct dxl_vfio *v, unsigned nvec)
{
    struct vfio_irq_set *set;
    size_t sz = sizeof(*set) + nvec * sizeof(int32_t);
    int32_t *fds;
    unsigned i;
    int ret;

    ret = dxl_vfio_msix_count(v);
    if (ret < 0) {
        return ret;
    }
    if (nvec == 0 || nvec > (unsigned)ret || nvec > DXL_VFIO_MAX_VEC) {
        return -ENOSPC;
    }
    if (v->nvec) {
        return -EBUSY;
    }
    set = calloc(1, sz);
    if (!set) {
        return -ENOMEM;
    }
    fds = (int32_t *)set->data;
    for (i = 0; i < nvec; i++) {
        v->efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (v->efd[i] < 0) {
            ret = neg_errno();
            goto fail_fds;
        }
        fds[i] = v->efd[i];
    }
    set->argsz = sz;
    set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    set->index = VFIO_PCI_MSIX_IRQ_INDEX;
    set->start = 0;
    set->count = nvec;
    if (ioctl(v->device, VFIO_DEVICE_SET_IRQS, set) < 0) {
        ret = neg_errno();
        goto fail_fds;
    }
    v->nvec = nvec;
    free(set);
    return 0;

fail_fds:
    while (i--) {
        close(v->efd[i]);
        v->efd[i] = -1;
    }
    free(set);
    return ret;
}

int dxl_vfio_msix_disable(struct dxl_vfio *v)
{
    struct vfio_irq_set set = {
        .argsz = sizeof(set),
        .flags = VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        .index = VFIO_PCI_MSIX_IRQ_INDEX,
        .start = 0,
        .count = 0,
    };
    unsigned i;
    int ret = 0;

    if (!v->nvec) {
        return 0;
    }
    if (ioctl(v->device, VFIO_DEVICE_SET_IRQS, &set) < 0) {
        ret = neg_errno();
    }
    for (i = 0; i < v->nvec; i++) {
        close(v->efd[i]);
        v->efd[i] = -1;
    }
    v->nvec = 0;
    return ret;
}

int dxl_vfio_irq_eventfd(const struct dxl_vfio *v, unsigned vec)
{
    return vec < v->nvec ? v->efd[vec] : -EINVAL;
}

int64_t dxl_vfio_irq_wait(struct dxl_vfio *v, unsigned vec, int timeout_ms)
{
    struct pollfd pfd;
    uint64_t cnt;
    int ret;

    if (vec >= v->nvec) {
        return -EINVAL;
    }
    pfd.fd = v->efd[vec];
    pfd.events = POLLIN;
    do {
        ret = poll(&pfd, 1, timeout_ms);
    } while (ret < 0 && errno == EINTR);
    if (ret < 0) {
        return neg_errno();
    }
    if (ret == 0) {
        return -ETIMEDOUT;
    }
    if (read(v->efd[vec], &cnt, sizeof(cnt)) != sizeof(cnt)) {
        return neg_errno();
    }
    return (int64_t)cnt;
}

int dxl_vfio_reset(struct dxl_vfio *v)
{
    struct vfio_device_info di = { .argsz = sizeof(di) };

    if (ioctl(v->device, VFIO_DEVICE_GET_INFO, &di) < 0) {
        return neg_errno();
    }
    if (!(di.flags & VFIO_DEVICE_FLAGS_RESET)) {
        return -ENOTSUP;
    }
    if (ioctl(v->device, VFIO_DEVICE_RESET) < 0) {
        return neg_errno();
    }
    return 0;
}

int dxl_vfio_phys_addr(const void *vaddr, uint64_t *pa)
{
    long psz = sysconf(_SC_PAGESIZE);
    uint64_t ent;
    int fd;
    ssize_t n;

    fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return neg_errno();
    }
    n = pread(fd, &ent, sizeof(ent), ((uintptr_t)vaddr / psz) * sizeof(ent));
    close(fd);
    if (n != sizeof(ent)) {
        return n < 0 ? neg_errno() : -EIO;
    }
    /* bit 63: present; bits 0-54: PFN (zero without CAP_SYS_ADMIN) */
    if (!(ent >> 63) || !(ent & ((1ULL << 55) - 1))) {
        return -EPERM;
    }
    *pa = (ent & ((1ULL << 55) - 1)) * psz + (uintptr_t)vaddr % psz;
    return 0;
}
