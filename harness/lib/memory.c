/*
 * Buffer memory descriptors and DMA commands.
 */
#include "internal.h"
#include "usb-client.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* Three kinds: shared (memfd, memfd >= 0), DMA (dma: a range of the
 * guest-RAM fd from dextd) and provider-owned (release != NULL: a USB IO
 * buffer the provider allocated and this process maps; fd_offset/prov_fd
 * name it for sharing with an app). */
struct DextBuffer {
    bool dma;
    DextBufferReleaseFn release;
    void *release_ctx;
    uint64_t handle;
    int prov_fd;
    uint32_t direction;
    uint64_t capacity;          /* as requested */
    uint64_t map_size;          /* mapped bytes (page-rounded) */
    uint64_t length;
    uint64_t iova;              /* DMA buffers */
    uint64_t fd_offset;         /* DMA buffers: offset in the guest-RAM fd */
    int memfd;                  /* shared buffers */
    void *addr;
};

struct DextDmaCommand {
    DextPciDevice *dev;
    unsigned bits;
    uint64_t max_segment;
    DextBuffer *prepared;
};

int dext_buffer_create(uint32_t direction, uint64_t capacity, uint64_t alignment,
                       DextBuffer **out)
{
    DextMsg r;
    uint64_t ram_size;
    if (!out || !capacity || (direction & ~DEXT_DMA_INOUT) || !direction ||
        (alignment & (alignment - 1))) {
        return -EINVAL;
    }
    int fd = dext__ram_fd(&ram_size);
    if (fd < 0) {
        return fd;
    }
    int rc = dext__rpc(DEXT_MSG_DMA_ALLOC, g_variant_new("(tt)", (guint64)capacity,
                                                        (guint64)alignment), false, &r);
    if (rc < 0) {
        return rc;
    }
    guint64 iova, size, off;
    g_variant_get(r.body, "(ttt)", &iova, &size, &off);
    dext_msg_clear(&r);
    /* Map only this range of guest RAM: the driver sees what it owns. */
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)off);
    if (p == MAP_FAILED) {
        rc = -errno;
        dext__rpc(DEXT_MSG_DMA_FREE, g_variant_new("(t)", iova), false, NULL);
        return rc;
    }
    DextBuffer *b = g_new0(DextBuffer, 1);
    b->dma = true;
    b->direction = direction;
    b->capacity = capacity;
    b->map_size = size;
    b->length = capacity;
    b->iova = iova;
    b->fd_offset = off;
    b->memfd = -1;
    b->prov_fd = -1;
    b->addr = p;
    *out = b;
    return 0;
}

DextBuffer *dext__buffer_new_provider(void *addr, uint64_t map_size, uint64_t capacity,
                                      uint32_t direction, int fd, uint64_t fd_offset,
                                      uint64_t handle, DextBufferReleaseFn release,
                                      void *ctx)
{
    DextBuffer *b = g_new0(DextBuffer, 1);
    b->direction = direction;
    b->capacity = capacity;
    b->map_size = map_size;
    b->length = capacity;
    b->fd_offset = fd_offset;
    b->memfd = -1;
    b->prov_fd = fd;
    b->addr = addr;
    b->handle = handle;
    b->release = release;
    b->release_ctx = ctx;
    return b;
}

bool dext__buffer_provider(const DextBuffer *b, uint64_t *handle, void **ctx)
{
    if (!b || !b->release) {
        return false;
    }
    *handle = b->handle;
    *ctx = b->release_ctx;
    return true;
}

int dext_buffer_create_shared(uint64_t capacity, DextBuffer **out)
{
    if (!out || !capacity) {
        return -EINVAL;
    }
    uint64_t size = (capacity + 4095) & ~4095ull;
    int fd = memfd_create("dext-shared", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        return -errno;
    }
    int rc;
    if (ftruncate(fd, (off_t)size) < 0) {
        rc = -errno;
        goto fail_fd;
    }
    /* The size is fixed for good: an app holding the fd cannot shrink it
     * under the driver's mapping (SIGBUS) nor grow it. */
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        rc = -errno;
        goto fail_fd;
    }
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = -errno;
        goto fail_fd;
    }
    DextBuffer *b = g_new0(DextBuffer, 1);
    b->direction = DEXT_DMA_INOUT;
    b->capacity = capacity;
    b->map_size = size;
    b->length = capacity;
    b->memfd = fd;
    b->prov_fd = -1;
    b->addr = p;
    *out = b;
    return 0;
fail_fd:
    close(fd);
    return rc;
}

void dext_buffer_release(DextBuffer *b)
{
    if (!b) {
        return;
    }
    munmap(b->addr, b->map_size);
    if (b->dma) {
        dext__rpc(DEXT_MSG_DMA_FREE, g_variant_new("(t)", (guint64)b->iova), false, NULL);
    }
    if (b->memfd >= 0) {
        close(b->memfd);
    }
    if (b->release) {
        /* Unmapped first: the provider may hand the memory out again. */
        b->release(b->release_ctx, b->handle);
    }
    if (b->prov_fd >= 0) {
        close(b->prov_fd);
    }
    g_free(b);
}

int dext__buffer_share(const DextBuffer *b, int *fd, uint64_t *offset)
{
    if (b->memfd >= 0) {
        *fd = b->memfd;
        *offset = 0;
        return 0;
    }
    if (b->prov_fd >= 0) {
        *fd = b->prov_fd;
        *offset = b->fd_offset;
        return 0;
    }
    int rfd = dext__ram_fd(NULL);
    if (rfd < 0) {
        return rfd;
    }
    *fd = rfd;
    *offset = b->fd_offset;
    return 0;
}

void *dext_buffer_map(DextBuffer *b) { return b ? b->addr : NULL; }
uint64_t dext_buffer_capacity(const DextBuffer *b) { return b->capacity; }
uint64_t dext_buffer_length(const DextBuffer *b) { return b->length; }
uint32_t dext_buffer_direction(const DextBuffer *b) { return b->direction; }
int dext_buffer_fd(const DextBuffer *b) { return b->memfd; }

int dext_buffer_set_length(DextBuffer *b, uint64_t len)
{
    if (len > b->capacity) {
        return -ERANGE;
    }
    b->length = len;
    return 0;
}

int dext_buffer_get_address_range(DextBuffer *b, uint64_t *addr, uint64_t *len)
{
    if (!b || !addr || !len) {
        return -EINVAL;
    }
    *addr = (uint64_t)(uintptr_t)b->addr;
    *len = b->length;
    return 0;
}

int dext_dma_command_create(DextPciDevice *dev, unsigned max_address_bits,
                            uint64_t max_segment, DextDmaCommand **out)
{
    if (!dev || !out || max_address_bits < 12 || max_address_bits > 64) {
        return -EINVAL;
    }
    DextDmaCommand *c = g_new0(DextDmaCommand, 1);
    c->dev = dev;
    c->bits = max_address_bits;
    c->max_segment = max_segment;
    *out = c;
    return 0;
}

int dext_dma_command_prepare(DextDmaCommand *c, DextBuffer *b, uint64_t offset,
                             uint64_t length, DextDmaSegment *segs, uint32_t *nsegs)
{
    if (!c || !b || !segs || !nsegs || !length) {
        return -EINVAL;
    }
    if (!b->dma) {
        return -EINVAL;
    }
    if (c->prepared) {
        return -EBUSY;
    }
    if (!dext__pci_is_open(c->dev)) {
        return -ENOTCONN;
    }
    if (offset > b->length || length > b->length - offset) {
        return -ERANGE;
    }
    uint64_t start = b->iova + offset;
    uint64_t last = start + length - 1;
    if (c->bits < 64 && (last >> c->bits)) {
        return -EFAULT;
    }
    uint64_t seg = c->max_segment ? c->max_segment : length;
    uint32_t need = (uint32_t)((length + seg - 1) / seg);
    if (need > *nsegs) {
        return -ENOSPC;
    }
    for (uint32_t i = 0; i < need; i++) {
        segs[i].address = start + i * seg;
        segs[i].length = MIN(seg, length - i * seg);
    }
    *nsegs = need;
    /* Make CPU writes visible before the device is told about the buffer. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    c->prepared = b;
    return 0;
}

int dext_dma_command_complete(DextDmaCommand *c)
{
    if (!c || !c->prepared) {
        return -EINVAL;
    }
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    c->prepared = NULL;
    return 0;
}

void dext_dma_command_release(DextDmaCommand *c)
{
    g_free(c);
}
