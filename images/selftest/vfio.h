/*
 * vfio.h: a small VFIO (type1 IOMMU) client for one PCI function.
 *
 * The seed of the runtime's in-guest platform backend: it does what that
 * backend needs from the kernel and nothing more -- open the function's IOMMU
 * group and a container, get the device fd, read/write config space, mmap
 * BARs, map DMA buffers to IOVAs, route MSI-X vectors to eventfds, reset.
 *
 * Conventions (as in harness/):
 *   - Every function returns 0 (or a non-negative value) on success and a
 *     negative errno on failure; nothing prints.
 *   - A struct dxl_vfio is opaque, created by dxl_vfio_open() and released by
 *     dxl_vfio_close(), which undoes everything still set up (DMA mappings,
 *     IRQ routing, BAR mappings, fds).
 *   - Not thread-safe: one thread owns a struct dxl_vfio.  Eventfds returned
 *     by dxl_vfio_irq_eventfd() may be waited on from any thread.
 *   - Waits are bounded: dxl_vfio_irq_wait() takes a timeout.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DXL_VFIO_H
#define DXL_VFIO_H

#include <stddef.h>
#include <stdint.h>

struct dxl_vfio;

/*
 * Open the PCI function @bdf ("0000:01:00.0"), which must already be bound to
 * vfio-pci.  Sets up a type1 container for its IOMMU group.
 */
int dxl_vfio_open(const char *bdf, struct dxl_vfio **out);
void dxl_vfio_close(struct dxl_vfio *v);

/* The IOMMU group number (N of /dev/vfio/N). */
int dxl_vfio_group(const struct dxl_vfio *v);

/* Config space access through the VFIO config region. */
int dxl_vfio_cfg_read(struct dxl_vfio *v, uint32_t off, void *buf, size_t len);
int dxl_vfio_cfg_write(struct dxl_vfio *v, uint32_t off, const void *buf,
                       size_t len);

/*
 * Map BAR @bar into this process.  *@size receives the region size.  The
 * mapping belongs to @v (unmapped by dxl_vfio_close); a second call returns
 * the same pointer.
 */
int dxl_vfio_bar_map(struct dxl_vfio *v, unsigned bar, volatile void **ptr,
                     uint64_t *size);
/* Size of BAR @bar as the kernel reports it (0 if absent). */
int dxl_vfio_bar_size(struct dxl_vfio *v, unsigned bar, uint64_t *size);

/*
 * A valid IOVA window of at least @len bytes, aligned to @align, at or above
 * @min, from the container's IOVA ranges (the MSI window and reserved regions
 * are excluded by the kernel).
 */
int dxl_vfio_iova_pick(struct dxl_vfio *v, uint64_t min, uint64_t len,
                       uint64_t align, uint64_t *iova);

/*
 * Map @len bytes at @vaddr (page aligned, process memory) for device read and
 * write at @iova.  The pages are pinned until dxl_vfio_dma_unmap() or close.
 */
int dxl_vfio_dma_map(struct dxl_vfio *v, void *vaddr, uint64_t iova,
                     uint64_t len);
int dxl_vfio_dma_unmap(struct dxl_vfio *v, uint64_t iova, uint64_t len);

/*
 * Enable @nvec MSI-X vectors, each signalling its own eventfd (created here,
 * owned by @v).  Fails with -ENOSPC if the function has fewer vectors.
 */
int dxl_vfio_msix_enable(struct dxl_vfio *v, unsigned nvec);
int dxl_vfio_msix_disable(struct dxl_vfio *v);
/* The eventfd of MSI-X vector @vec (after dxl_vfio_msix_enable), or -EINVAL. */
int dxl_vfio_irq_eventfd(const struct dxl_vfio *v, unsigned vec);
/* Number of MSI-X vectors VFIO reports for the function. */
int dxl_vfio_msix_count(struct dxl_vfio *v);

/*
 * Wait up to @timeout_ms for vector @vec; returns the number of interrupts
 * counted since the last wait (>= 1) or -ETIMEDOUT.
 */
int64_t dxl_vfio_irq_wait(struct dxl_vfio *v, unsigned vec, int timeout_ms);

/* Function-level reset through VFIO_DEVICE_RESET (-ENOTSUP if none). */
int dxl_vfio_reset(struct dxl_vfio *v);

/* Guest-physical address of the page holding @vaddr (root only), for tests. */
int dxl_vfio_phys_addr(const void *vaddr, uint64_t *pa);

#endif /* DXL_VFIO_H */
