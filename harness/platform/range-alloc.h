/*
 * A range allocator over [base, base + size): a sorted free list of holes,
 * first-fit with alignment, coalescing on free.  Used for DMA memory (and by
 * enumeration-free tests).  Not thread-safe: callers lock.
 *
 * Granule: every allocation and the region are multiples of @granule (a
 * power of two).  Allocations of size 0, non-power-of-two alignment, or
 * overflowing arithmetic give -EINVAL; no fitting hole gives -ENOMEM.
 */
#ifndef DEXT_RANGE_ALLOC_H
#define DEXT_RANGE_ALLOC_H

#include <stdint.h>
#include <stddef.h>

typedef struct DextRangeAlloc DextRangeAlloc;

/* NULL if base/size are not granule-aligned or size is 0. */
DextRangeAlloc *dext_range_alloc_new(uint64_t base, uint64_t size,
                                     uint64_t granule);
void dext_range_alloc_free_all(DextRangeAlloc *ra);   /* destroys */

/* Allocate; *addr receives the start, *real_size the rounded size. */
int dext_range_alloc(DextRangeAlloc *ra, uint64_t size, uint64_t align,
                     uint64_t *addr, uint64_t *real_size);
/* Free by start address; -EINVAL if @addr does not start an allocation. */
int dext_range_release(DextRangeAlloc *ra, uint64_t addr);
/* Size of the allocation starting at @addr, or 0. */
uint64_t dext_range_alloc_size(DextRangeAlloc *ra, uint64_t addr);

/* Accounting for tests: free bytes, number of holes, largest hole. */
uint64_t dext_range_alloc_free_bytes(DextRangeAlloc *ra);
size_t dext_range_alloc_holes(DextRangeAlloc *ra);
uint64_t dext_range_alloc_largest(DextRangeAlloc *ra);
/* Self-check of the invariants (sorted, disjoint, coalesced, accounting);
 * returns 0 or -EFAULT. */
int dext_range_alloc_check(DextRangeAlloc *ra);

#endif
