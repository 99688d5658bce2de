/*
 * dextlab-usb user-client protocol: shared by the driver
 * (drivers/dextlab-usb/dextlab-usb.c) and its apps (dextlab-usb-tool, the
 * e2e test).  <stdint.h> only; little-endian host assumed.
 *
 * An app opens the service by class DXU_UC_CLASS (or by registry id when
 * several devices exist), sizes its data window with DXU_UC_SEL_SET_WINDOW
 * and maps it with dext_client_map_memory(DXU_UC_MEM_WINDOW).  The window
 * is a USB IO buffer of the host controller's memory: the app, the driver
 * and the controller share its bytes, nothing is copied.  Requests name
 * byte ranges of the window; the driver never takes an address.
 *
 * Loopback: window[out..+len) is written to bulk OUT 0x01 and read back
 * from bulk IN 0x81 into window[in..+in_len).  The device's FIFO keeps
 * transfer boundaries: the driver splits a request into chunks of at most
 * the device's FIFO size (each chunk one OUT and one IN transfer, at most
 * 64 of each in flight for the whole device) and the
 * IN of the last chunk may ask for more than was written (in_len > len,
 * single-chunk requests only): it completes short.  len 0 sends a
 * zero-length packet, which comes back as a zero-length IN.
 *
 * Completions (dext_client_wait_async):
 *   loopback  status 0 or the first error (-EPIPE stall, -ECANCELED
 *             aborted/unplugged/stopping, -ENODEV, -ETIMEDOUT, -EIO);
 *             data[DXU_LB_*].
 *   event     one per interrupt event, status 0, data[DXU_EV_*], on the
 *             subscription's async reference; a final completion with
 *             status -ECANCELED ends a subscription (stop, unsubscribe).
 *
 * A control request the device refuses (STALL: unknown register, read-only
 * register, bad value) fails the call with -EREMOTEIO.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DEXTLAB_USB_UC_H
#define DEXTLAB_USB_UC_H

#include <stdint.h>

#define DXU_UC_CLASS        "DextlabUsbDriver"
#define DXU_UC_SERVER       "org.dextlab.dextlab-usb"
#define DXU_UC_VERSION      1

/* DXU_UC_SEL_INFO speed values (dext/usb.h DEXT_USBHOST_SPEED_*, the xHCI
 * port speed IDs). */
#define DXU_SPEED_FULL      1
#define DXU_SPEED_LOW       2
#define DXU_SPEED_HIGH      3
#define DXU_SPEED_SUPER     4

#define DXU_UC_MEM_WINDOW   0       /* client memory type: the window, read/write */

#define DXU_UC_WINDOW_MIN   4096u
#define DXU_UC_WINDOW_MAX   (8u << 20)
#define DXU_UC_XFER_MAX     (1u << 20)  /* bytes per loopback request */
#define DXU_UC_MAX_INFLIGHT 16          /* loopback requests per client */
#define DXU_UC_MAX_SUBS     8           /* event subscriptions per client */

enum {
    /* out[8]: version, speed (DXU_SPEED_*), alternate setting,
     * device FIFO size, window bytes, bulk wMaxPacketSize, interrupt
     * wMaxPacketSize, device VERSION register. */
    DXU_UC_SEL_INFO = 0,
    /* in[1]: window bytes (MIN..MAX, rounded up to 4 KiB); out[1]: size.
     * -EBUSY while loopbacks are in flight. */
    DXU_UC_SEL_SET_WINDOW = 1,
    /* async.  in[5]: out offset, in offset, len (0..XFER_MAX), in_len
     * (>= len; > len only if len <= FIFO size), tag.  out[1]: chunks. */
    DXU_UC_SEL_LOOPBACK = 2,
    /* async.  in[0].  Every interrupt event from now on completes on this
     * reference (in device order).  out[1]: sequence of the next event the
     * driver will deliver (0 if none seen yet). */
    DXU_UC_SEL_SUBSCRIBE = 3,
    /* in[1]: the subscription's reference: its final -ECANCELED follows. */
    DXU_UC_SEL_UNSUBSCRIBE = 4,
    /* in[1]: register number; out[1]: value (READ_REG). */
    DXU_UC_SEL_REG_READ = 5,
    /* in[2]: register number, value (WRITE_REG; -EREMOTEIO if the device
     * refuses it). */
    DXU_UC_SEL_REG_WRITE = 6,
    /* in[1]: Hz (0..8000) of TICK events. */
    DXU_UC_SEL_SET_EVENT_RATE = 7,
    /* in[2]: count (1..1024), tag: SOFT events now. */
    DXU_UC_SEL_TRIGGER_EVENTS = 8,
    /* in[1]: endpoint (0x01, 0x81, 0x82): the device halts it. */
    DXU_UC_SEL_FORCE_STALL = 9,
    /* in[1]: endpoint: clear the halt (reset endpoint + CLEAR_FEATURE);
     * for 0x82 the event reads are re-armed. */
    DXU_UC_SEL_CLEAR_STALL = 10,
    /* in[1]: alternate setting (0..1).  -EBUSY while loopbacks are in
     * flight.  Pipes are re-opened and event reads re-armed. */
    DXU_UC_SEL_SELECT_ALT = 11,
    /* out: struct dxu_uc_stats (exact size). */
    DXU_UC_SEL_STATS = 12,
    /* Drop the device FIFO's content (RESET_FIFO), e.g. after a stall. */
    DXU_UC_SEL_RESET_FIFO = 13,
    /* async.  in[3]: in offset, len (1..XFER_MAX), tag.  One bulk IN read
     * of what the FIFO holds (completion as a loopback's, OUT fields 0).
     * Pends while the FIFO is empty: until data comes, the pipe is
     * aborted, the device goes away or the driver stops. */
    DXU_UC_SEL_BULK_IN = 14,
    DXU_UC_SEL_COUNT
};

/* Loopback completion data. */
enum {
    DXU_LB_TAG = 0,
    DXU_LB_OUT_ACTUAL,          /* bytes the device accepted */
    DXU_LB_IN_ACTUAL,           /* bytes read back */
    DXU_LB_OUT_STATUS,          /* first OUT error (0 or -errno as int64) */
    DXU_LB_IN_STATUS,
    DXU_LB_T_SUBMIT,            /* CLOCK_MONOTONIC ns: driver accepted it */
    DXU_LB_T_DONE,              /* ns: the last transfer completed */
    DXU_LB_CHUNKS,
    DXU_LB_COUNT
};

/* Event completion data. */
enum {
    DXU_EV_SEQ = 0,             /* the device's sequence number */
    DXU_EV_TYPE,                /* DEXTLAB_USB_EVT_* */
    DXU_EV_VALUE,
    DXU_EV_TIME_US,             /* device virtual clock, us mod 2^32 */
    DXU_EV_LOST,                /* the device lost this many just before */
    DXU_EV_T_DRIVER,            /* ns: the driver saw the interrupt transfer */
    DXU_EV_COUNT
};

struct dxu_uc_stats {
    uint32_t version;           /* DXU_UC_VERSION */
    uint32_t alt;
    uint64_t lb_requests, lb_ok, lb_failed;
    uint64_t bytes_out, bytes_in;
    uint64_t io_submitted, io_completed, io_errors;
    uint64_t stalls, clears;
    uint64_t events, events_lost, event_reads, event_errors;
    uint64_t event_seq_next;    /* sequence number expected next */
    uint64_t alt_switches;
    uint64_t control_requests;
};

#endif /* DEXTLAB_USB_UC_H */
