/*
 * dextlab platform layer: the daemon's access to hardware.
 *
 * One opaque DextPlatform per machine.  A backend constructor creates it
 * (today: the qtest backend, which drives the dextlab QEMU fork over the
 * qtest line protocol with guest RAM in a shared file; later: an in-guest
 * backend on VFIO/usbfs).  Everything above this header (dextd, matching,
 * registry, driver processes) is backend-agnostic.
 *
 * Conventions
 *  - Every function returning int returns 0 (or a documented non-negative
 *    value) on success and a negative errno on failure.  A human-readable
 *    text for the most recent failure of the calling thread is available
 *    from dext_platform_last_error(); it is also sent to the log callback.
 *  - Common errors: -EINVAL bad argument, -ENODEV no such function/BAR,
 *    -ERANGE access outside a BAR or config space, -ENOTSUP not supported
 *    by this backend/device, -ETIMEDOUT a bounded wait expired,
 *    -ESHUTDOWN/-EPIPE the machine died (QEMU exited or its socket
 *    closed): once that happened every pending and every future call
 *    returns -ESHUTDOWN promptly (pending ones may see -EPIPE).
 *  - No call blocks forever: every wait is bounded by the machine
 *    description's timeout_ms (default 10 s).
 *
 * Threading model
 *  - All functions taking a DextPlatform are thread-safe and may be called
 *    concurrently from any thread, except dext_platform_destroy(), which
 *    must be called once, when no other call is in progress.
 *  - Commands are sent in the order callers obtain an internal send lock;
 *    commands issued by one thread reach the device in program order
 *    (a posted write followed by a read from the same thread is ordered,
 *    as on PCI: the read's reply comes after the write has been applied).
 *  - Writes to BARs are POSTED: the call returns once the command is sent,
 *    without waiting for QEMU's reply.  A failure of a posted write is
 *    recorded and returned by the next call that waits for a reply
 *    (any read, config write, dext_platform_flush()).  Config-space writes
 *    are non-posted (they wait), as on PCI.
 *  - The qtest backend runs one reader thread per platform.  It consumes
 *    replies and asynchronous lines (interrupts) and signals bound
 *    eventfds directly from that thread, so interrupt latency does not
 *    depend on any caller thread.  The event callback (see
 *    dext_platform_set_event_cb) runs on that reader thread: it must be
 *    short and must not call any blocking dext_platform_* function (such
 *    calls fail with -EDEADLK instead of hanging).
 *
 * Ownership
 *  - Strings and arrays returned through out-pointers are owned by the
 *    caller and freed with g_free() (or dext_platform_* helpers when said).
 *  - File descriptors passed in (eventfds) are dup()ed; the caller keeps
 *    and closes its own.  File descriptors returned (memory_fd) stay owned
 *    by the platform and are valid until dext_platform_destroy().
 */
#ifndef DEXT_PLATFORM_H
#define DEXT_PLATFORM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

typedef struct DextPlatform DextPlatform;

/* ---------------------------------------------------------------- machine */

/* Log sink.  level is a GLogLevelFlags value (G_LOG_LEVEL_WARNING, ...). */
typedef void (*DextPlatformLogFn)(void *opaque, GLogLevelFlags level,
                                  const char *msg);

typedef struct DextMachineDesc {
    /* QEMU binary; NULL: $DEXT_QEMU_BINARY, then $QTEST_QEMU_BINARY,
     * then <repo>/build/qemu-build/qemu-system-x86_64 as configured. */
    const char *qemu_binary;
    /* "q35" (default when NULL) or "pc". */
    const char *machine;
    /* Guest RAM in bytes; 0 means 256 MiB.  Must be a multiple of 2 MiB
     * and at most 2 GiB (the qtest backend keeps all RAM below 4 GiB so
     * a guest-physical address equals its offset in the memory file). */
    uint64_t ram_size;
    /* Bytes of RAM reserved for DMA allocations (dext_platform_dma_alloc),
     * taken from the top of RAM; 0 means ram_size / 2. */
    uint64_t dma_size;
    /* NULL-terminated list of -device arguments, e.g.
     * "pcie-root-port,id=rp0,chassis=1", "dextlab-dma,bus=rp0". */
    const char *const *devices;
    /* NULL-terminated list of extra QEMU arguments, passed verbatim. */
    const char *const *extra_args;
    /* Upper bound in ms for every wait (reply, start-up, QMP); 0: 10000. */
    unsigned timeout_ms;
    /* QEMU's stderr: NULL inherits ours; otherwise a file path to append. */
    const char *qemu_log_path;
    /* NULL: QEMU inherits our CPU affinity; else a Linux CPU list ("1",
     * "0-3", "2,5-7"; see cpu-list.h) QEMU's threads are bound to, like
     * libvirt's <emulatorpin>.  Borrowed (read during create only).  A bad
     * list fails create with -EINVAL; if the kernel refuses the set, QEMU
     * runs unpinned with a note on its stderr and a warning in our log.
     * Only the qtest backend uses it (the vfio backend runs no QEMU). */
    const char *emulator_cpus;
    /* Optional log sink; NULL logs through g_log(domain "dext-platform"). */
    DextPlatformLogFn log_fn;
    void *log_opaque;
} DextMachineDesc;

/*
 * Start a QEMU (fork) under -accel qtest from @desc and connect to it:
 * qtest socket, QMP socket (capabilities negotiated), guest RAM in a
 * memfd that QEMU inherits (memory-backend-file on /proc/self/fd/N,
 * share=on): no file exists in /dev/shm, so nothing is left behind even if
 * this process or QEMU crashes.  Enables the MSI intercept when the fork
 * supports it (see dext_platform_has_msi()) and the IOAPIC intercept.
 * q35 gets native PCIe hotplug (ACPI hotplug off; see pci_unplug).
 * Does not enumerate: call dext_platform_pci_enumerate().
 * On success *out owns the QEMU process (killed by destroy).  QEMU is
 * spawned with PR_SET_PDEATHSIG, which Linux ties to the creating THREAD:
 * create the platform from a long-lived thread (e.g. the main thread).
 */
int dext_platform_qtest_create(const DextMachineDesc *desc, DextPlatform **out);

typedef struct DextAttachDesc {
    /* Path of a listening qtest socket: QEMU started with
     * -qtest unix:PATH,server=on,wait=off (or any chardev listening). */
    const char *qtest_socket;
    /* Path of a listening QMP socket: -qmp unix:PATH,server=on,wait=off. */
    const char *qmp_socket;
    /* Guest RAM file (memory-backend-file mem-path with share=on), or NULL
     * when the machine has no shared RAM (DMA calls then return -ENOTSUP). */
    const char *mem_path;
    uint64_t ram_size;      /* size of guest RAM (required with mem_path) */
    uint64_t dma_size;      /* as in DextMachineDesc */
    const char *machine;    /* "q35" or "pc"; NULL: q35 */
    unsigned timeout_ms;
    DextPlatformLogFn log_fn;
    void *log_opaque;
} DextAttachDesc;

/* Attach to an already running QEMU.  destroy() disconnects; it does not
 * kill that QEMU. */
int dext_platform_qtest_attach(const DextAttachDesc *desc, DextPlatform **out);

/*
 * In-guest backend (platform-vfio.c; see docs/runtime/platform-vfio.md):
 * the "machine" is the Linux system this process runs on.  PCI functions
 * are reached through VFIO with a type1 IOMMU container: config space
 * through the VFIO config region, BARs through mmap of the VFIO BAR regions
 * (pread/pwrite where the kernel does not allow mmap), interrupts through
 * VFIO_DEVICE_SET_IRQS eventfds, reset through VFIO_DEVICE_RESET.  DMA
 * memory is a memfd pool mapped into the container's IOVA space with
 * VFIO_IOMMU_MAP_DMA: dext_platform_memory_fd() returns that memfd and
 * DextDmaRange.iova is the IOVA the device must be given.
 *
 * Only functions bound to vfio-pci are enumerated (the kernel keeps the
 * others).  Needs root (binding, /dev/vfio).  All groups share one
 * container, hence one IOVA space.
 */
typedef struct DextVfioDesc {
    /* NULL-terminated list of functions to bind to vfio-pci first (through
     * driver_override, unbinding a kernel driver): "0000:01:00.0" or a
     * "vvvv:dddd" vendor:device pair (hex).  NULL: $DEXT_VFIO_BIND
     * (comma separated), else bind nothing.  Functions already bound to
     * vfio-pci are always taken. */
    const char *const *bind;
    /* NULL-terminated list of functions to LIST although a kernel driver
     * owns them (never bound, opened or touched: every access is -ENODEV),
     * so personalities can match them: a BDF, "vvvv:dddd" or a class
     * "cccccc" (hex, e.g. "0c0330": xHCI, for the usbfs USB provider).
     * They follow the VFIO functions in the description.  NULL:
     * $DEXT_VFIO_KERNEL_OWNED (comma separated), else none. */
    const char *const *kernel_owned;
    /* Bytes of the DMA pool (pinned while the platform lives); 0: 128 MiB.
     * Multiple of 2 MiB, at most 1 GiB. */
    uint64_t dma_size;
    /* sysfs root; NULL: "/sys". */
    const char *sysfs;
    unsigned timeout_ms;     /* 0: 10000 */
    DextPlatformLogFn log_fn;
    void *log_opaque;
} DextVfioDesc;

int dext_platform_vfio_create(const DextVfioDesc *desc, DextPlatform **out);

/*
 * Backend by name: "qtest" (dext_platform_qtest_create(@desc)) or "vfio"
 * (dext_platform_vfio_create() with @desc's dma_size, timeout_ms and log
 * sink; its bind list from $DEXT_VFIO_BIND).  -EINVAL for another name.
 */
int dext_platform_create(const char *backend, const DextMachineDesc *desc,
                         DextPlatform **out);

/* Stop the reader, kill (own) QEMU, reap it, close fds, unmap, free.
 * NULL is accepted. */
void dext_platform_destroy(DextPlatform *p);

/* Text of the calling thread's last failure (never NULL; "" if none); @p
 * may be NULL, e.g. after a failed create.  Valid until the next failing
 * platform call from this thread. */
const char *dext_platform_last_error(DextPlatform *p);

/* Backend name ("qtest" or "vfio"). */
const char *dext_platform_backend_name(DextPlatform *p);

/* True while the machine is alive (QEMU running and connected). */
bool dext_platform_alive(DextPlatform *p);

/* ------------------------------------------------------------------- PCI */

typedef struct DextPciAddr {
    uint16_t seg;
    uint8_t bus;
    uint8_t dev;   /* 0..31 */
    uint8_t fn;    /* 0..7 */
} DextPciAddr;

/* "0000:00:1f.0" style; buf needs 13 bytes.  Returns buf. */
char *dext_pci_addr_format(DextPciAddr a, char buf[13]);
static inline bool dext_pci_addr_equal(DextPciAddr a, DextPciAddr b)
{
    return a.seg == b.seg && a.bus == b.bus && a.dev == b.dev && a.fn == b.fn;
}

typedef enum DextBarKind {
    DEXT_BAR_NONE = 0,     /* not implemented (or upper half of a 64-bit BAR) */
    DEXT_BAR_MEM32,
    DEXT_BAR_MEM64,
    DEXT_BAR_IO,
} DextBarKind;

#define DEXT_PCI_NUM_BARS 6

enum { DEXT_WIN_IO = 0, DEXT_WIN_MEM = 1, DEXT_WIN_PREF = 2 };

typedef struct DextPciBar {
    DextBarKind kind;
    bool prefetchable;
    uint64_t addr;   /* assigned bus address (guest-physical / port) */
    uint64_t size;   /* decoded size in bytes (power of two); 0 if none */
} DextPciBar;

typedef struct DextPciFunction {
    DextPciAddr addr;
    uint16_t vendor_id;
    uint16_t device_id;
    uint16_t subsys_vendor_id;   /* 0 for bridges */
    uint16_t subsys_id;
    uint8_t class_base;          /* class code: base class (0x06 bridge ...) */
    uint8_t class_sub;
    uint8_t class_prog_if;
    uint8_t revision;
    uint8_t header_type;         /* without the multi-function bit */
    bool multifunction;
    uint8_t irq_pin;             /* 0 none, 1..4 INTA..INTD */
    int irq_gsi;                 /* routed IOAPIC input for INTx, -1 unknown */

    /* Type 0 (endpoints): 6 BARs; type 1 (bridges): BARs 0..1 only. */
    DextPciBar bars[DEXT_PCI_NUM_BARS];

    /* Upstream bridge (root port, PCI bridge); has_parent false on bus 0. */
    bool has_parent;
    DextPciAddr parent;

    /* Bridges (header type 1). */
    bool is_bridge;
    uint8_t secondary_bus;
    uint8_t subordinate_bus;
    /* Forwarding windows [base, base + size) indexed by DEXT_WIN_*;
     * size 0 means the window is closed. */
    uint64_t window_base[3];
    uint64_t window_size[3];

    /* Capability summary.  *_cap is the config-space offset, 0 if absent. */
    uint8_t msi_cap;
    uint8_t msi_vectors;         /* Multiple Message Capable, 1..32 */
    bool msi_64bit;
    bool msi_maskable;
    uint8_t msix_cap;
    uint16_t msix_table_size;    /* number of vectors */
    uint8_t msix_table_bar;
    uint32_t msix_table_offset;
    uint8_t msix_pba_bar;
    uint32_t msix_pba_offset;
    uint8_t pcie_cap;
    uint8_t pcie_port_type;      /* PCI_EXP_TYPE_* (0 endpoint, 4 root port...) */
    bool has_flr;                /* PCIe Function Level Reset */
    uint8_t pm_cap;
} DextPciFunction;

/*
 * Enumerate PCI.  The first call walks bus 0, recurses through PCI-PCI
 * bridges and PCIe root/downstream ports assigning bus numbers, sizes and
 * assigns every BAR (I/O, 32-bit memory, 64-bit memory) and bridge window,
 * like firmware would (under -accel qtest no firmware runs), and routes
 * INTx.  Memory/I/O decode is left disabled on endpoints (drivers enable
 * it); bridges are enabled so their secondary side is reachable.
 * Later calls return the cached result unless @rescan is true: then the
 * hierarchy is walked and assigned again (only safe when no driver is
 * using any device: addresses may move and every interrupt binding is
 * dropped).  Use it after QMP device_add.  *out is an array of *n functions in depth-first
 * bus order, bridges before what is behind them; free with g_free().
 */
int dext_platform_pci_enumerate(DextPlatform *p, bool rescan,
                                DextPciFunction **out, size_t *n);

/* Copy the cached description of one function (-ENODEV if unknown). */
int dext_platform_pci_get(DextPlatform *p, DextPciAddr addr,
                          DextPciFunction *out);

/* Config space access.  width 1, 2 or 4; offset naturally aligned and
 * within config space (256 bytes, 4096 for PCIe on q35): -EINVAL/-ERANGE.
 * Writes are non-posted (they wait for completion). */
int dext_platform_cfg_read(DextPlatform *p, DextPciAddr addr, unsigned off,
                           unsigned width, uint32_t *val);
int dext_platform_cfg_write(DextPlatform *p, DextPciAddr addr, unsigned off,
                            unsigned width, uint32_t val);

/* BAR access.  width 1, 2, 4 or 8 (8 only on memory BARs); off + width
 * must lie within the BAR: -ERANGE; BAR absent: -ENODEV; bad width or
 * misaligned offset: -EINVAL.  Writes are posted (see threading model);
 * reads wait.  With decode off the device does not answer: reads return
 * what the bus gives for unclaimed addresses (0 under QEMU, all-ones on
 * hardware) and writes are dropped. */
int dext_platform_bar_read(DextPlatform *p, DextPciAddr addr, unsigned bar,
                           uint64_t off, unsigned width, uint64_t *val);
int dext_platform_bar_write(DextPlatform *p, DextPciAddr addr, unsigned bar,
                            uint64_t off, unsigned width, uint64_t val);

/* Wait until every posted write has completed; returns the first error a
 * posted write hit since the last wait (then clears it). */
int dext_platform_flush(DextPlatform *p);

/* Command-register enables (read-modify-write of PCI_COMMAND). */
enum {
    DEXT_PCI_ENABLE_IO = 1u << 0,
    DEXT_PCI_ENABLE_MEM = 1u << 1,
    DEXT_PCI_ENABLE_BUSMASTER = 1u << 2,
    DEXT_PCI_DISABLE_INTX = 1u << 10,   /* same bit as PCI_COMMAND_INTX_DISABLE */
};
/* Set (@on) or clear the DEXT_PCI_ENABLE_* bits in @mask. */
int dext_platform_pci_set_enables(DextPlatform *p, DextPciAddr addr,
                                  uint32_t mask, bool on);

/*
 * Reset one function: Function Level Reset when it has FLR, else a
 * secondary bus reset on its parent bridge (which resets every function
 * behind that bridge: -EBUSY if other functions sit there and @allow_bus
 * is false; -ENOTSUP on bus 0 without FLR).  Afterwards BARs are restored
 * to their assigned addresses, interrupt bindings of the reset functions
 * are dropped, and memory/IO decode and bus mastering are left DISABLED
 * (the driver must re-enable them, as after a DriverKit relaunch).
 */
int dext_platform_reset_function(DextPlatform *p, DextPciAddr addr,
                                 bool allow_bus);

/*
 * Hot-unplug the device owning function @addr from a hot-plug capable PCIe
 * port: QMP device_del of its qdev id (found with query-pci; the device
 * must have been created with id=...), then, acting as the guest OS
 * would, power the slot off through the port's Slot Control, wait for
 * DEVICE_DELETED (bounded), and power the slot on again for later
 * device_add.  The device's functions leave the enumeration cache and
 * their interrupt bindings are dropped.  -ENOTSUP: parent is not a
 * hot-plug capable port or the device has no id; -ETIMEDOUT: QEMU did not
 * remove it.
 */
int dext_platform_pci_unplug(DextPlatform *p, DextPciAddr addr);

/* ----------------------------------------------------------- port I/O */

/* Raw x86 port I/O (width 1, 2, 4); posted writes as for BARs. */
int dext_platform_port_read(DextPlatform *p, uint16_t port, unsigned width,
                            uint32_t *val);
int dext_platform_port_write(DextPlatform *p, uint16_t port, unsigned width,
                             uint32_t val);

/* -------------------------------------------------------- DMA memory */

typedef struct DextDmaRange {
    uint64_t iova;       /* device address to program into the device */
    uint64_t size;       /* bytes (rounded up to the allocation granule) */
    uint64_t fd_offset;  /* offset of the range in the memory fd */
} DextDmaRange;

/* The fd backing guest RAM (shared, mmap-able with MAP_SHARED) and its
 * size.  Owned by the platform; pass it on with SCM_RIGHTS (which dups).
 * -ENOTSUP when attached without shared RAM. */
int dext_platform_memory_fd(DextPlatform *p, int *fd, uint64_t *size);

/* The platform's own mapping of guest RAM (valid until destroy) or NULL. */
void *dext_platform_memory_map(DextPlatform *p, uint64_t *size);

/* Allocate @size bytes (rounded up to 4 KiB) aligned to @align (power of
 * two, >= 4096 effective; 0 means 4096) from the DMA region.  The memory is
 * zeroed.  -ENOMEM when no fitting hole, -EINVAL bad size/align. */
int dext_platform_dma_alloc(DextPlatform *p, uint64_t size, uint64_t align,
                            DextDmaRange *out);
/* Free a range previously returned (by iova); -EINVAL if not allocated. */
int dext_platform_dma_free(DextPlatform *p, uint64_t iova);

/* Copy between guest-physical memory and a buffer (through the shared
 * mapping when possible, else through qtest).  Bounds-checked: -ERANGE. */
int dext_platform_mem_read(DextPlatform *p, uint64_t gpa, void *buf,
                           size_t len);
int dext_platform_mem_write(DextPlatform *p, uint64_t gpa, const void *buf,
                            size_t len);

/* ------------------------------------------------------- interrupts */

typedef enum DextIrqKind {
    DEXT_IRQ_AUTO = 0,   /* MSI-X if present, else MSI, else INTx (MSI
                          * kinds only when the machine reports them) */
    DEXT_IRQ_MSIX,
    DEXT_IRQ_MSI,
    DEXT_IRQ_INTX,
} DextIrqKind;

/* True when the fork reports MSI messages (qtest msi_intercept). */
bool dext_platform_has_msi(DextPlatform *p);

/*
 * Bind interrupt @vector of @addr to @eventfd: each message the device
 * raises on that vector makes the platform add 1 to the eventfd (same model
 * as VFIO_DEVICE_SET_IRQS with an eventfd trigger).
 *  - MSI-X: programs table entry @vector with a platform-chosen
 *    address/data pair, unmasks it, enables MSI-X in the capability.
 *  - MSI: vector < msi_vectors; programs the capability (multiple message
 *    enable covering the highest bound vector) and enables MSI.
 *  - INTx: vector must be 0; the eventfd gets 1 on every rising edge of
 *    the function's IOAPIC input (level semantics: the line stays asserted
 *    until the device lowers it; query with dext_platform_intx_level()).
 * The kind actually used is stored in *used if non-NULL.  Rebinding a
 * bound vector replaces its eventfd.  -ENOTSUP: the device lacks that
 * kind, or MSI without the fork's intercept; -ERANGE: vector too big;
 * -EBUSY: mixing kinds on one function (unbind all first).
 */
int dext_platform_irq_bind(DextPlatform *p, DextPciAddr addr, DextIrqKind kind,
                           unsigned vector, int eventfd, DextIrqKind *used);
/* Unbind: masks the vector (MSI-X), disables MSI/MSI-X when the last vector
 * goes, closes the dup'ed eventfd.  -ENOENT if not bound. */
int dext_platform_irq_unbind(DextPlatform *p, DextPciAddr addr,
                             unsigned vector);
/* Current INTx level of the function's line (0/1), -ENOTSUP if none.
 * Flushes posted writes first, so the level reflects them.  The line is
 * shared (the chipset ORs several functions into one GSI). */
int dext_platform_intx_level(DextPlatform *p, DextPciAddr addr);

/* Interrupt counters (for tests and benchmarks). */
typedef struct DextIrqStats {
    uint64_t msi_received;     /* MSIs delivered: relayed lines + direct */
    uint64_t msi_unclaimed;    /* MSI lines matching no binding */
    uint64_t intx_edges;       /* INTx rising edges seen */
    uint64_t last_msi_ns;      /* CLOCK_MONOTONIC (g_get_monotonic_time
                                * scale x1000) of the latest MSI: when the
                                * reader parsed its line, or when QEMU
                                * signalled a direct eventfd: for latency
                                * figures */
    uint64_t msi_direct;       /* of msi_received: signalled by QEMU on the
                                * binding's eventfd itself (qtest fork's
                                * msi_eventfd), counted by QEMU */
    unsigned direct_bindings;  /* live bindings QEMU signals directly */
} DextIrqStats;
void dext_platform_irq_stats(DextPlatform *p, DextIrqStats *out);

/* ------------------------------------------------ direct MMIO channel */

/*
 * A channel lets a driver process reach a function's BARs without the
 * daemon: a SOCK_SEQPACKET socket whose other end QEMU serves (records in
 * harness/common/mmio-channel.h).  Only the qtest backend of the dextlab
 * fork (patch 0006) has it; elsewhere open returns -ENOTSUP and accesses
 * take the normal path.
 *
 * open: @win[i] is how many bytes from the start of BAR i the channel may
 * touch (0: none; I/O BARs and lengths beyond the BAR are -EINVAL); the
 * caller owns *fd (CLOEXEC) and the id.  close revokes the channel: QEMU
 * closes its end, the holder sees EOF/EPIPE; -ENOENT if it is already gone.
 * The platform revokes a function's channels by itself when it resets the
 * function, the function is unplugged, or a rescan re-enumerates it (its
 * BARs may move): a holder must be ready to lose it at any time.
 * count: channels QEMU serves right now (tests).
 */
int dext_platform_mmio_channel_open(DextPlatform *p, DextPciAddr addr,
                                    const uint64_t win[DEXT_PCI_NUM_BARS],
                                    int *fd, unsigned *id);
int dext_platform_mmio_channel_close(DextPlatform *p, unsigned id);
unsigned dext_platform_mmio_channel_count(DextPlatform *p);

/* ----------------------------------------------------------- events */

typedef enum DextPlatformEvent {
    DEXT_EVENT_DIED = 1,        /* QEMU exited or the connection broke */
    DEXT_EVENT_MSI_UNCLAIMED,   /* a = address, b = data */
    DEXT_EVENT_QMP,             /* json = the event object text */
} DextPlatformEvent;

typedef void (*DextPlatformEventFn)(void *opaque, DextPlatformEvent ev,
                                    uint64_t a, uint64_t b, const char *json);

/* Install (or clear with NULL) the event callback.  Runs on the reader
 * thread; see threading model. */
void dext_platform_set_event_cb(DextPlatform *p, DextPlatformEventFn fn,
                                void *opaque);

/* --------------------------------------------------- virtual time */

/*
 * Device timers (interrupt coalescing, USB interrupt endpoints, the DMA
 * engine's link timing model) run on the machine's virtual clock.  Under
 * -accel qtest that clock moves only when told to, so a test controls time
 * exactly, and a daemon that wants devices to behave in real time asks the
 * platform to make virtual time follow the host's.
 *
 * dext_platform_clock_step: advance virtual time by @ns, running every timer
 * that falls due (@ns 0: to the next timer deadline).  *now_ns (optional)
 * gets the new virtual time.  -ENOTSUP where virtual time is real time.
 *
 * dext_platform_clock_follow: with @period_us > 0 a platform thread keeps
 * virtual time at least at the host time elapsed since the call, adjusting
 * every @period_us (so a timer fires at most that late); explicit steps may
 * still move it further ahead.  0 stops following.  Adjustments are posted
 * (they cost no round trip).  -ENOTSUP as above.
 */
int dext_platform_clock_step(DextPlatform *p, uint64_t ns, uint64_t *now_ns);
int dext_platform_clock_follow(DextPlatform *p, unsigned period_us);

/* ------------------------------------------------------------ QMP */

/*
 * Execute a QMP command.  @args_json is a JSON object text or NULL.
 * On success *ret_json (if non-NULL) receives the "return" value as JSON
 * text (caller g_free()s).  A QMP error reply gives -EIO and last_error
 * "<class>: <desc>".  Bounded by timeout_ms.
 */
int dext_platform_qmp(DextPlatform *p, const char *command,
                      const char *args_json, char **ret_json);

/* Wait up to @timeout_ms for the QMP event @name (e.g. "DEVICE_DELETED")
 * received after the previous wait for it; *event_json receives the event
 * object (optional).  -ETIMEDOUT if none. */
int dext_platform_qmp_wait_event(DextPlatform *p, const char *name,
                                 unsigned timeout_ms, char **event_json);

G_END_DECLS

#endif /* DEXT_PLATFORM_H */
