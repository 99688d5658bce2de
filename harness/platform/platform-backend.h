/*
 * dextlab platform layer: the backend vtable (for backend writers only;
 * users include platform.h).
 *
 * A backend fills a const DextPlatformOps and embeds DextPlatform as the
 * first member of its own state.  The public dext_platform_* functions in
 * platform.c validate arguments common to every backend (widths,
 * alignment, BAR bounds against the enumerated sizes, DMA bookkeeping)
 * and then call the op.  Ops return 0 or a negative errno and report text
 * with dext_platform_set_error().  A NULL op means -ENOTSUP.
 */
#ifndef DEXT_PLATFORM_BACKEND_H
#define DEXT_PLATFORM_BACKEND_H

#include "platform.h"
#include "range-alloc.h"

typedef struct DextPlatformOps {
    const char *name;
    void (*destroy)(DextPlatform *p);
    bool (*alive)(DextPlatform *p);

    /* Raw config access of any (possibly not yet enumerated) function;
     * width 1/2/4, off validated. */
    int (*cfg_read)(DextPlatform *p, DextPciAddr a, unsigned off,
                    unsigned width, uint32_t *val);
    int (*cfg_write)(DextPlatform *p, DextPciAddr a, unsigned off,
                     unsigned width, uint32_t val);
    /* Physical memory (MMIO) and port access, already bounds-checked. */
    int (*mmio_read)(DextPlatform *p, uint64_t addr, unsigned width,
                     uint64_t *val);
    int (*mmio_write)(DextPlatform *p, uint64_t addr, unsigned width,
                      uint64_t val);                       /* posted */
    int (*port_read)(DextPlatform *p, uint16_t port, unsigned width,
                     uint32_t *val);
    int (*port_write)(DextPlatform *p, uint16_t port, unsigned width,
                      uint32_t val);                       /* posted */
    int (*flush)(DextPlatform *p);
    /* Per-BAR access, for backends whose BARs are not reachable at their
     * bus address (VFIO: a region of the device fd).  When set, BAR
     * accesses come here (bounds already checked against the enumerated
     * size) instead of mmio_ and port_ ops.  Writes may be posted. */
    int (*bar_read)(DextPlatform *p, int fn_idx, unsigned bar, uint64_t off,
                    unsigned width, uint64_t *val);
    int (*bar_write)(DextPlatform *p, int fn_idx, unsigned bar, uint64_t off,
                     unsigned width, uint64_t val);
    /* Bulk guest memory access when there is no shared mapping. */
    int (*mem_read)(DextPlatform *p, uint64_t gpa, void *buf, size_t len);
    int (*mem_write)(DextPlatform *p, uint64_t gpa, const void *buf,
                     size_t len);

    /* PCI enumeration: NULL uses the firmware-like walker (pci-enum.c)
     * over cfg_read/cfg_write.  Fills p->fns/p->n_fns under p->lock. */
    int (*enumerate)(DextPlatform *p);
    /* Reset: NULL uses FLR / secondary bus reset through config space. */
    int (*reset_function)(DextPlatform *p, DextPciAddr a, bool allow_bus);

    /* Interrupts (validated: function enumerated, vector in range). */
    bool (*has_msi)(DextPlatform *p);
    int (*irq_bind)(DextPlatform *p, int fn_idx, DextIrqKind kind,
                    unsigned vector, int eventfd);
    int (*irq_unbind)(DextPlatform *p, int fn_idx, unsigned vector);
    int (*intx_level)(DextPlatform *p, int fn_idx);
    /* The function was reset: forget its bindings (device state is gone). */
    void (*irq_forget)(DextPlatform *p, int fn_idx);
    /* Function fn_idx left the cache: forget it, shift higher indices. */
    void (*irq_fn_removed)(DextPlatform *p, int fn_idx);
    void (*irq_stats)(DextPlatform *p, DextIrqStats *out);

    /* Direct MMIO channel (see platform.h): open one for function fn_idx
     * granting win[i] bytes from the start of BAR i (validated: memory
     * BARs only, within the BAR); *fd is the caller's end.  The backend
     * revokes a function's channels itself when it resets, loses or
     * re-enumerates the function (irq_forget, irq_fn_removed).  NULL:
     * -ENOTSUP (VFIO: the driver maps the BARs itself anyway). */
    int (*mmio_channel_open)(DextPlatform *p, int fn_idx,
                             const uint64_t win[DEXT_PCI_NUM_BARS], int *fd,
                             unsigned *id);
    int (*mmio_channel_close)(DextPlatform *p, unsigned id);
    unsigned (*mmio_channel_count)(DextPlatform *p);

    void (*set_event_cb)(DextPlatform *p, DextPlatformEventFn fn, void *op);

    /* DMA memory: make [iova, iova + size) of the pool reachable by devices
     * before dext_platform_dma_alloc hands it out (VFIO maps the pool into
     * the IOMMU on first use).  NULL: the whole pool always is. */
    int (*dma_prepare)(DextPlatform *p, uint64_t iova, uint64_t size);

    /* Virtual time (see platform.h); NULL: -ENOTSUP. */
    int (*clock_step)(DextPlatform *p, uint64_t ns, uint64_t *now_ns);
    int (*clock_follow)(DextPlatform *p, unsigned period_us);

    int (*qmp)(DextPlatform *p, const char *cmd, const char *args_json,
               char **ret_json);
    int (*qmp_wait_event)(DextPlatform *p, const char *name,
                          unsigned timeout_ms, char **event_json);
} DextPlatformOps;

/* Common state, first member of every backend's state. */
struct DextPlatform {
    const DextPlatformOps *ops;
    bool pc_machine;             /* "pc" (i440fx) rather than q35 */
    unsigned timeout_ms;
    DextPlatformLogFn log_fn;
    void *log_opaque;

    GMutex lock;                 /* protects the fields below */
    DextPciFunction *fns;        /* enumeration cache */
    size_t n_fns;
    bool enumerated;
    GMutex cfg_lock;             /* serialises config read-modify-write */

    /* Guest RAM shared mapping and DMA allocator.  The allocator works in
     * device (bus/IO virtual) addresses; mem_iova is the device address of
     * offset 0 of mem_fd (0 on qtest, where a guest-physical address is
     * its file offset; the VFIO pool's IOMMU mapping base otherwise). */
    int mem_fd;
    void *mem_map;
    uint64_t ram_size;
    uint64_t mem_iova;
    DextRangeAlloc *dma;
};

void dext_platform_init_common(DextPlatform *p, const DextPlatformOps *ops);
void dext_platform_fini_common(DextPlatform *p);
/* Record an error for the calling thread and log it; returns err. */
int dext_platform_set_error(DextPlatform *p, int err, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
void dext_platform_log(DextPlatform *p, GLogLevelFlags level,
                       const char *fmt, ...) G_GNUC_PRINTF(3, 4);


/* Index of an enumerated function in p->fns, or -1 (takes p->lock). */
int dext_platform_fn_index(DextPlatform *p, DextPciAddr a);
/* Generic firmware-like enumeration over the cfg ops (pci-enum.c). */
int dext_pci_enumerate_generic(DextPlatform *p, DextPciFunction **fns,
                               size_t *n);
/* Program interrupt vector @vector of function @f (MSI-X table entry or MSI
 * capability) to send (@addr, @data); @enable false masks it and, when
 * @last, disables MSI/MSI-X.  Uses cfg and mmio ops; flushes. */
int dext_pci_msi_program(DextPlatform *p, const DextPciFunction *f,
                         DextIrqKind kind, unsigned vector, uint64_t addr,
                         uint32_t data, bool enable, bool last);
/* Generic reset through config space (FLR or secondary bus reset) and
 * restore of bus numbers, windows and BARs. */
int dext_pci_reset_generic(DextPlatform *p, DextPciAddr a, bool allow_bus);

#endif
