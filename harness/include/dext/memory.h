/*
 * libdext memory: buffer memory descriptors (IOBufferMemoryDescriptor) and
 * DMA commands (IODMACommand).
 *
 * DMA buffers come from the machine's DMA memory (on the qtest platform: the
 * shared guest-RAM file).  dextd allocates the range and passes the RAM fd
 * once; the library mmaps just the buffer's range, so map() returns a
 * pointer the device reads and writes directly (zero copy).  Allocations
 * are returned to dextd on release and, if the process dies, by dextd.
 * Shared buffers (dext_buffer_create_shared) are memfd-backed: they can be
 * handed to apps (user-client memory) but are not DMA-capable.
 *
 * Threading: a buffer or command may be used from any thread but not
 * concurrently mutated (set_length, prepare/complete) from two.
 * Errors: negative errno.
 */
#ifndef DEXT_MEMORY_H
#define DEXT_MEMORY_H

#include <stdint.h>
#include "dext/pci.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    DEXT_DMA_IN = 1u << 0,   /* device writes the buffer */
    DEXT_DMA_OUT = 1u << 1,  /* device reads the buffer */
    DEXT_DMA_INOUT = DEXT_DMA_IN | DEXT_DMA_OUT,
};

typedef struct DextBuffer DextBuffer;

/* capacity > 0; alignment 0 or a power of two (the buffer's device address
 * is aligned to it; 4 KiB at least). */
int dext_buffer_create(uint32_t direction, uint64_t capacity, uint64_t alignment,
                       DextBuffer **out);
int dext_buffer_create_shared(uint64_t capacity, DextBuffer **out);
void dext_buffer_release(DextBuffer *b);

/* Pointer to the buffer's bytes in this process (valid until release). */
void *dext_buffer_map(DextBuffer *b);
uint64_t dext_buffer_capacity(const DextBuffer *b);
uint64_t dext_buffer_length(const DextBuffer *b);
/* Length starts equal to capacity; -ERANGE if len > capacity. */
int dext_buffer_set_length(DextBuffer *b, uint64_t len);
/* Virtual address range in this process, like GetAddressRange. */
int dext_buffer_get_address_range(DextBuffer *b, uint64_t *addr, uint64_t *len);
uint32_t dext_buffer_direction(const DextBuffer *b);
/* memfd of a shared buffer (borrowed), -1 for DMA buffers. */
int dext_buffer_fd(const DextBuffer *b);

typedef struct {
    uint64_t address;   /* device (bus) address */
    uint64_t length;
} DextDmaSegment;

typedef struct DextDmaCommand DextDmaCommand;
/* max_address_bits: the device's DMA addressing limit (e.g. 32 or 64).
 * max_segment: split segments at this size (0 = no limit). */
int dext_dma_command_create(DextPciDevice *dev, unsigned max_address_bits,
                            uint64_t max_segment, DextDmaCommand **out);
/* Map [offset, offset+length) of b for DMA.  On entry *nsegs is the capacity
 * of segs, on return the count.  -EBUSY already prepared, -ERANGE outside
 * the buffer's length, -EFAULT beyond max_address_bits, -ENOSPC too many
 * segments, -ENOTCONN device not open, -EINVAL not a DMA buffer. */
int dext_dma_command_prepare(DextDmaCommand *c, DextBuffer *b, uint64_t offset,
                             uint64_t length, DextDmaSegment *segs, uint32_t *nsegs);
/* End the DMA (makes device writes visible to the CPU: a full barrier). */
int dext_dma_command_complete(DextDmaCommand *c);
void dext_dma_command_release(DextDmaCommand *c);

#ifdef __cplusplus
}
#endif
#endif
