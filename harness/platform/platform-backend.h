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
    /* Bulk guest memory access when there is no shared mapping. */
    int (*mem_read)(DextPlatform *p, uint64_t gpa, void *buf, size_t len);
    int (*mem_write)(DextPlatform *p, uint64_t gpa, const void *buf,
                     size_t len);

    /* Interrupt plumbing: the backend owns routing of messages/lines to
     * eventfds.  msi_route returns the (address, data) pair the device must
     * send for a binding, and registers eventfd for it. */
    bool (*has_msi)(DextPlatform *p);
    int (*msi_route_add)(DextPlatform *p, int eventfd, uint64_t *addr,
                         uint32_t *data);
    void (*msi_route_del)(DextPlatform *p, uint64_t addr, uint32_t data);
    int (*intx_route_add)(DextPlatform *p, int gsi, int eventfd);
    void (*intx_route_del)(DextPlatform *p, int gsi, int eventfd);
    int (*intx_level)(DextPlatform *p, int gsi);
    void (*irq_stats)(DextPlatform *p, DextIrqStats *out);

    void (*set_event_cb)(DextPlatform *p, DextPlatformEventFn fn, void *op);

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
    GHashTable *irq_bindings;    /* key "bdf:vector" -> DextIrqBinding */

    /* Guest RAM shared mapping and DMA allocator. */
    int mem_fd;
    void *mem_map;
    uint64_t ram_size;
    DextRangeAlloc *dma;

    GPrivate *err_key;           /* per-thread last error text */
};

void dext_platform_init_common(DextPlatform *p, const DextPlatformOps *ops);
void dext_platform_fini_common(DextPlatform *p);
/* Record an error for the calling thread and log it; returns err. */
int dext_platform_set_error(DextPlatform *p, int err, const char *fmt, ...)
    G_GNUC_PRINTF(3, 4);
void dext_platform_log(DextPlatform *p, GLogLevelFlags level,
                       const char *fmt, ...) G_GNUC_PRINTF(3, 4);

#endif
