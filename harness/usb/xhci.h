/*
 * dextlab user-space xHCI host controller driver (harness/usb).
 *
 * Drives an xHCI controller (qemu-xhci on q35) through a hardware backend
 * (DextXhciHwOps; the qtest platform's is xhci-platform.c): BAR0 registers
 * with posted writes, every ring and context in DMA memory the driver
 * reaches through a host mapping shared with the device (zero-copy),
 * interrupter 0 on an eventfd (MSI-X) or polled.
 *
 * Layering: this header is the controller level (rings, commands, slots,
 * endpoints, TDs, ports).  USB client code uses the family API in usb.h,
 * which is built on it.
 *
 * Conventions: 0 / non-negative on success, negative errno on failure;
 * every wait is bounded (timeout_ms of the config, default 5000).  Every
 * value read back from the controller (TRBs, contexts, registers) is
 * untrusted: it is range-checked and a bad one is logged and dropped (or
 * fails the operation with -EIO), never dereferenced blindly.
 *
 * Threading: one event thread per controller consumes the event ring.
 * Commands are serialised by an internal lock and may be issued from any
 * thread except the event thread (-EDEADLK).  Transfer submission is
 * thread-safe.  Completion callbacks and the port callback run on the
 * event thread: keep them short, they may submit transfers but must not
 * wait (commands, synchronous transfers give -EDEADLK there).
 *
 * Ownership: DextXhci owns its DMA memory, eventfd and backend state;
 * destroy() frees them after stopping the controller.
 */
#ifndef DEXT_USB_XHCI_H
#define DEXT_USB_XHCI_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>
#include "platform.h"

G_BEGIN_DECLS

typedef struct DextXhci DextXhci;

/* USB speeds as reported by PORTSC (xHCI protocol speed ids of qemu-xhci) */
enum {
    DEXT_USB_SPEED_UNKNOWN = 0,
    DEXT_USB_SPEED_FULL = 1,
    DEXT_USB_SPEED_LOW = 2,
    DEXT_USB_SPEED_HIGH = 3,
    DEXT_USB_SPEED_SUPER = 4,
};

/* Port status change callback (event thread). */
typedef void (*DextXhciPortFn)(void *opaque, unsigned port, uint32_t portsc);

/* Advance the device-side clock by @ns (see DextXhciConfig.clock_step). */
typedef int (*DextXhciClockFn)(void *opaque, uint64_t ns);

typedef struct DextXhciConfig {
    unsigned timeout_ms;           /* bound of every wait; 0: 5000 */
    bool force_poll;               /* do not use MSI-X even if possible */
    /* Under -accel qtest QEMU's virtual clock only moves when told to, and
     * qemu-xhci schedules interrupt endpoints on it.  When set, the event
     * thread calls this (about every 100 us of real time) while interrupt
     * transfers are pending, asking for @clock_step_ns (0: 1 ms) each. */
    DextXhciClockFn clock_step;
    void *clock_opaque;
    uint64_t clock_step_ns;
    DextXhciPortFn port_fn;
    void *port_opaque;
} DextXhciConfig;

/* ------------------------------------------------- hardware backends */

/* DMA memory as the driver sees it: a host mapping and a device address */
typedef struct DextXhciDma {
    void *ptr;                /* host mapping (zero-copy with the device) */
    uint64_t iova;            /* address to program into the controller */
    uint64_t size;            /* bytes, >= the size asked for */
    uint64_t handle;          /* backend's own */
} DextXhciDma;

/*
 * How the driver reaches the controller: a const vtable per backend (the
 * qtest platform today, xhci-platform.c; a dext driver process's PCI API
 * later).  Return 0 / negative errno.  Called from any driver thread,
 * concurrently: backends must be thread-safe.
 */
typedef struct DextXhciHwOps {
    const char *name;
    /* BAR0 (the xHCI register space) 32-bit access; writes may be posted
     * but stay ordered with later reads from the same thread */
    int (*read32)(void *hw, uint64_t off, uint32_t *val);
    int (*write32)(void *hw, uint64_t off, uint32_t val);
    /* 4 KiB-aligned DMA memory of at least @size bytes */
    int (*dma_alloc)(void *hw, uint64_t size, DextXhciDma *out);
    void (*dma_free)(void *hw, DextXhciDma *d);
    /* may [iova, iova + len) be handed to the controller? */
    bool (*dma_ok)(void *hw, uint64_t iova, uint64_t len);
    /* interrupter 0's message adds 1 to @eventfd (dup it); NULL or an
     * error: the driver polls the event ring */
    int (*irq_bind)(void *hw, int eventfd);
    /* preferred over irq_bind when set: interrupter 0's message makes the
     * backend call dext_xhci_interrupt(@x) on its own interrupt thread, so
     * completions run there without a hop to the event thread */
    int (*irq_bind_direct)(void *hw, DextXhci *x);
    void (*irq_unbind)(void *hw);   /* either kind; no call after it */
    bool (*alive)(void *hw);
    void (*destroy)(void *hw);   /* free the backend state (may be NULL) */
    /* optional: the fd (borrowed) whose MAP_SHARED mapping at *@offset
     * (page-aligned) is @d's memory, for handing buffers to another
     * process; NULL or -ENOTSUP: not shareable */
    int (*dma_fd)(void *hw, const DextXhciDma *d, uint64_t *offset);
} DextXhciHwOps;

/* Take the controller behind @ops/@hw (BAR0 of @bar0_size bytes, memory
 * decode and bus mastering already on): halt and reset it, set up DCBAA,
 * scratchpad, command ring, event ring, interrupter 0, run it.  Takes
 * ownership of @hw (ops->destroy) also on failure. */
int dext_xhci_create_hw(const DextXhciHwOps *ops, void *hw,
                        uint64_t bar0_size, const DextXhciConfig *cfg,
                        DextXhci **out);

/* Platform backend (xhci-platform.c): the xHCI function @addr of the
 * qtest platform (class 0c0330, else -ENODEV); enables memory decode and
 * bus mastering; interrupter 0 on MSI-X vector 0 when the platform can
 * deliver it.  The platform must outlive the driver. */
int dext_xhci_create(DextPlatform *p, DextPciAddr addr,
                     const DextXhciConfig *cfg, DextXhci **out);
/* The same backend for a caller that wraps it (a fuzzer counting
 * accesses): checks and enables the function like dext_xhci_create() and
 * returns what dext_xhci_create_hw() takes; *hw is freed by
 * (*ops)->destroy. */
int dext_xhci_platform_hw(DextPlatform *p, DextPciAddr addr,
                          const DextXhciHwOps **ops, void **hw,
                          uint64_t *bar0_size);
/* Halt the controller, stop the event thread, free everything. */
void dext_xhci_destroy(DextXhci *x);

/* DMA memory for transfers (zeroed), from the controller's backend. */
int dext_xhci_dma_alloc(DextXhci *x, uint64_t size, DextXhciDma *out);
void dext_xhci_dma_free(DextXhci *x, DextXhciDma *d);
/* The backend's shareable fd of @d (DextXhciHwOps.dma_fd): fd or -errno. */
int dext_xhci_dma_fd(DextXhci *x, const DextXhciDma *d, uint64_t *offset);

/* True when called from the controller's event context (the event thread
 * or a direct interrupt: where completions run). */
bool dext_xhci_on_event_thread(DextXhci *x);
/* For irq_bind_direct backends, from their interrupt thread: process the
 * event ring now (completions run on the calling thread). */
void dext_xhci_interrupt(DextXhci *x);
unsigned dext_xhci_num_ports(DextXhci *x);
unsigned dext_xhci_timeout_ms(DextXhci *x);
/* Protocol of a root port: 2 (USB 2) or 3 (USB 3), from the supported
 * protocol capabilities; 0 if unknown. */
unsigned dext_xhci_port_protocol(DextXhci *x, unsigned port);
/* Per-port index within its protocol (1-based), 0 if unknown. */
unsigned dext_xhci_port_proto_index(DextXhci *x, unsigned port);

int dext_xhci_portsc(DextXhci *x, unsigned port, uint32_t *portsc);
/* Reset a connected port and wait for it to be enabled; *speed gets its
 * DEXT_USB_SPEED_*.  -ENODEV nothing connected, -ETIMEDOUT. */
int dext_xhci_port_reset(DextXhci *x, unsigned port, unsigned *speed);
/* Acknowledge (write-1-to-clear) the port's change bits. */
int dext_xhci_port_ack(DextXhci *x, unsigned port);

/* ---------------------------------------------------------- commands */

/* Raw command: returns the completion code (>= 0) or a negative errno;
 * *slot_out (optional) receives the slot id of the completion event. */
int dext_xhci_command(DextXhci *x, uint64_t param, uint32_t status,
                      uint32_t control, unsigned *slot_out);

/* xHCI completion codes used here */
enum {
    DEXT_XHCI_CC_SUCCESS = 1,
    DEXT_XHCI_CC_DATA_BUFFER = 2,
    DEXT_XHCI_CC_BABBLE = 3,
    DEXT_XHCI_CC_TRB_ERROR = 5,
    DEXT_XHCI_CC_STALL = 6,
    DEXT_XHCI_CC_SHORT_PACKET = 13,
    DEXT_XHCI_CC_STOPPED = 26,
    DEXT_XHCI_CC_STOPPED_LENGTH = 27,
};

/* ------------------------------------------------------- slots/endpoints */

typedef struct DextXhciSlot DextXhciSlot;

/* Enable Slot + Address Device for the device on root @port at @speed
 * (after dext_xhci_port_reset).  EP0 max packet starts at the speed's
 * default.  */
int dext_xhci_slot_create(DextXhci *x, unsigned port, unsigned speed,
                          DextXhciSlot **out);
/* Fail every pending transfer with @status, Disable Slot (unless the
 * controller is gone), free rings and contexts. */
void dext_xhci_slot_destroy(DextXhciSlot *s, int status);
unsigned dext_xhci_slot_id(DextXhciSlot *s);
/* Mark the slot's device gone: pending and future transfers fail with
 * -ENODEV (pending ones complete with -ECANCELED). */
void dext_xhci_slot_gone(DextXhciSlot *s);
/* Evaluate Context for a new EP0 max packet size. */
int dext_xhci_slot_set_ep0_mps(DextXhciSlot *s, unsigned mps);

typedef struct DextXhciEpDesc {
    uint8_t address;          /* bEndpointAddress */
    uint8_t attributes;       /* bmAttributes (type in bits 1:0) */
    uint16_t max_packet;      /* wMaxPacketSize (bits 10:0 + mult) */
    uint8_t interval;         /* bInterval */
    uint8_t max_burst;        /* SS companion bMaxBurst */
    uint16_t bytes_per_interval;
} DextXhciEpDesc;

/* Configure Endpoint: drop the endpoints in @drop_addrs (their pending
 * transfers fail with -ECANCELED first; unknown ones are ignored) and add
 * @n endpoints (-EINVAL if one is already configured and not dropped,
 * or isochronous).  Other endpoints keep running. */
int dext_xhci_configure(DextXhciSlot *s, const uint8_t *drop_addrs,
                        unsigned ndrop, const DextXhciEpDesc *eps,
                        unsigned n);

/* ---------------------------------------------------------- transfers */

typedef struct DextXhciXfer DextXhciXfer;
/* status: 0, or -EPIPE (stall), -ECANCELED (aborted / device gone),
 * -EOVERFLOW (babble), -EIO (other completion code); actual: bytes moved;
 * timestamp_ns: CLOCK_MONOTONIC when the event thread saw the completion */
typedef void (*DextXhciXferFn)(void *opaque, int status, uint32_t actual,
                               uint64_t timestamp_ns);

/* Queue a TD on endpoint @ep_addr (0 for control) of @s.
 *  - control: @setup is the 8-byte SETUP packet; data is @iova/@len
 *    (direction from bmRequestType).
 *  - bulk/interrupt: @setup NULL; @iova/@len in DMA memory.
 * @cb runs on the event thread.  -ENOSPC ring full, -EPIPE endpoint halted
 * (clear it first), -ENODEV device gone or endpoint not configured. */
int dext_xhci_submit(DextXhciSlot *s, unsigned ep_addr, const uint8_t *setup,
                     uint64_t iova, uint32_t len, DextXhciXferFn cb,
                     void *opaque);
/* Stop the endpoint and complete every pending TD with -ECANCELED
 * (before returning). */
int dext_xhci_abort(DextXhciSlot *s, unsigned ep_addr);
/* Recover a halted endpoint: Reset Endpoint, drop pending TDs
 * (-ECANCELED), Set TR Dequeue Pointer.  (The device's halt feature is the
 * caller's business: CLEAR_FEATURE(ENDPOINT_HALT).) */
int dext_xhci_reset_ep(DextXhciSlot *s, unsigned ep_addr);
bool dext_xhci_ep_halted(DextXhciSlot *s, unsigned ep_addr);

/* Fuzzing only: the slot of the device on root @port, or NULL.  Valid
 * until that device detaches (its slot is destroyed by the host then):
 * the caller must know no detach can happen meanwhile. */
DextXhciSlot *dext_xhci_port_slot(DextXhci *x, unsigned port);
/*
 * Fuzzing only (qtest/fuzz/dextlab-usb-fuzz.c): place @n raw TRBs
 * (@param[i], @status[i], @control[i]; the cycle bit is replaced by the
 * ring's) on endpoint @ep_addr's transfer ring at the enqueue pointer and
 * ring its doorbell.  No transfer is tracked: events for them are dropped
 * as unknown, their ring slots stay taken, and the controller's view of
 * the ring is unknown: dext_xhci_abort() the endpoint before using it
 * again.  -ENOSPC when @n does not fit, -ENODEV as dext_xhci_submit().
 */
int dext_xhci_submit_raw(DextXhciSlot *s, unsigned ep_addr,
                         const uint64_t *param, const uint32_t *status,
                         const uint32_t *control, unsigned n);

/* Counters for tests and benchmarks */
typedef struct DextXhciStats {
    uint64_t events;          /* event TRBs consumed */
    uint64_t irqs;            /* eventfd wake-ups */
    uint64_t bad_events;      /* events dropped as invalid */
    uint64_t doorbells;
    uint64_t clock_steps;
    bool msix;                /* interrupts (true) or polling */
} DextXhciStats;
void dext_xhci_stats(DextXhci *x, DextXhciStats *out);

G_END_DECLS

#endif /* DEXT_USB_XHCI_H */
