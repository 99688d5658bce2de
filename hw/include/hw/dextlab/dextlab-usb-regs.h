/*
 * dextlab-usb: USB identity, descriptor key values, vendor requests,
 * device registers and the interrupt event record.
 *
 * Shared by the device model (hw/dextlab/dextlab-usb.c), its tests and its
 * drivers.  stdint only.  All multi-byte values on the wire are
 * little-endian (USB order).  The datasheet is docs/devices/dextlab-usb.md.
 *
 * Copyright (c) 2026 dextlab authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef HW_DEXTLAB_DEXTLAB_USB_REGS_H
#define HW_DEXTLAB_DEXTLAB_USB_REGS_H

#include <stdint.h>

/* ------------------------------------------------------------ identity */

/* pid.codes open vendor id; product 0x0001 is its "test PID" range */
#define DEXTLAB_USB_VID             0x1209
#define DEXTLAB_USB_PID             0x0001
#define DEXTLAB_USB_BCD_DEVICE      0x0100

#define DEXTLAB_USB_BCD_USB_HS      0x0210     /* 2.1: has a BOS */
#define DEXTLAB_USB_BCD_USB_SS      0x0320
#define DEXTLAB_USB_EP0_MPS_HS      64
#define DEXTLAB_USB_EP0_MPS_SS_EXP  9          /* 2^9 = 512 */

/* string descriptor indexes and texts (language 0x0409) */
#define DEXTLAB_USB_STR_MANUFACTURER    1
#define DEXTLAB_USB_STR_PRODUCT         2
#define DEXTLAB_USB_STR_SERIAL          3
#define DEXTLAB_USB_STR_CONFIG          4
#define DEXTLAB_USB_STR_IFACE_ALT0      5
#define DEXTLAB_USB_STR_IFACE_ALT1      6
#define DEXTLAB_USB_MANUFACTURER        "dextlab"
#define DEXTLAB_USB_PRODUCT             "dextlab USB loopback"
#define DEXTLAB_USB_CONFIG_NAME         "loopback"
#define DEXTLAB_USB_IFACE_ALT0_NAME     "loopback, full size"
#define DEXTLAB_USB_IFACE_ALT1_NAME     "loopback, small packets"

/* one configuration, one vendor-specific interface with two alt settings */
#define DEXTLAB_USB_CONFIG_VALUE    1
#define DEXTLAB_USB_CONFIG_ATTR     0x80       /* bus powered */
#define DEXTLAB_USB_CONFIG_MAXPOWER 50         /* x2 mA (HS), x8 mA (SS) */
#define DEXTLAB_USB_IFACE_NUM       0
#define DEXTLAB_USB_NUM_ALTS        2
#define DEXTLAB_USB_IFACE_CLASS     0xff       /* vendor specific */
#define DEXTLAB_USB_IFACE_SUBCLASS  0x44       /* 'D' */
#define DEXTLAB_USB_IFACE_PROTOCOL  0x01
#define DEXTLAB_USB_NUM_EPS         3

/* endpoint addresses */
#define DEXTLAB_USB_EP_BULK_OUT     0x01
#define DEXTLAB_USB_EP_BULK_IN      0x81
#define DEXTLAB_USB_EP_INTR_IN      0x82

/*
 * wMaxPacketSize per speed and alternate setting.  USB 2.0 (5.8.3) allows
 * exactly 512 for high-speed bulk endpoints (Linux rejects anything else:
 * "bulk endpoint has invalid maxpacket"), and USB 3 exactly 1024, so at
 * those speeds the alternate setting changes the interrupt endpoint and the
 * SuperSpeed burst; at full speed it changes the bulk packet size too.
 */
#define DEXTLAB_USB_BULK_MPS_FS(alt)    ((alt) ? 32 : 64)
#define DEXTLAB_USB_BULK_MPS_HS(alt)    512
#define DEXTLAB_USB_BULK_MPS_SS(alt)    1024
#define DEXTLAB_USB_BULK_BURST_SS(alt)  ((alt) ? 0 : 15)   /* bMaxBurst */
#define DEXTLAB_USB_INTR_MPS(alt)       ((alt) ? 64 : 16)  /* every speed */
/* bInterval: FS in frames (1 ms); HS/SS 2^(n-1) x 125 us (here 1 ms) */
#define DEXTLAB_USB_INTR_INTERVAL_FS    1
#define DEXTLAB_USB_INTR_INTERVAL_HS    4
#define DEXTLAB_USB_INTR_INTERVAL_SS    4

/* BOS: USB 2.0 extension (LPM) + SuperSpeed USB device capability */
#define DEXTLAB_USB_BOS_NUM_CAPS    2
#define DEXTLAB_USB_SS_SPEEDS       0x000e     /* full, high, super */
#define DEXTLAB_USB_SS_FUNC_SUPPORT 1          /* full speed is enough */
#define DEXTLAB_USB_SS_U1_EXIT_LAT  0x0a       /* us */
#define DEXTLAB_USB_SS_U2_EXIT_LAT  0x0020     /* us */

/* ------------------------------------------------------ vendor requests */

/*
 * bmRequestType 0x40 (OUT) or 0xc0 (IN), vendor, recipient device.
 * A request with bad arguments is answered with a STALL of the control
 * pipe (protocol stall; the next SETUP clears it).
 */
enum DextlabUsbRequest {
    /* IN, wIndex = register number, wLength >= 4: the u32 register */
    DEXTLAB_USB_REQ_READ_REG       = 0x10,
    /* OUT, wIndex = register number, wLength == 4: data = u32 value */
    DEXTLAB_USB_REQ_WRITE_REG      = 0x11,
    /* OUT, no data: drop FIFO content (and pending message boundaries) */
    DEXTLAB_USB_REQ_RESET_FIFO     = 0x12,
    /*
     * OUT, no data, wIndex = endpoint address (0x01, 0x81, 0x82): halt it
     * (every transfer STALLs until CLEAR_FEATURE(ENDPOINT_HALT)); wIndex 0
     * stalls this very request (protocol stall)
     */
    DEXTLAB_USB_REQ_FORCE_STALL    = 0x13,
    /*
     * OUT, no data, wValue = event rate in Hz (0 off, at most
     * DEXTLAB_USB_EVENT_RATE_MAX) of TICK events on the virtual clock
     */
    DEXTLAB_USB_REQ_SET_EVENT_RATE = 0x14,
    /*
     * OUT, no data, wValue = count (1..DEXTLAB_USB_TRIGGER_MAX),
     * wIndex = value tag: queue that many SOFT events now
     */
    DEXTLAB_USB_REQ_TRIGGER_EVENTS = 0x15,
    /*
     * OUT with up to DEXTLAB_USB_ECHO_MAX bytes: store them;
     * IN: return the stored bytes (at most wLength)
     */
    DEXTLAB_USB_REQ_ECHO           = 0x16,
};

#define DEXTLAB_USB_EVENT_RATE_MAX  8000
#define DEXTLAB_USB_TRIGGER_MAX     1024
#define DEXTLAB_USB_ECHO_MAX        256

/* ---------------------------------------------------- device registers */

/*
 * u32 registers addressed by number through READ_REG/WRITE_REG.
 * Writing a read-only or unknown register STALLs.
 */
enum DextlabUsbReg {
    DEXTLAB_USB_REG_ID           = 0,   /* RO DEXTLAB_USB_ID_VALUE */
    DEXTLAB_USB_REG_VERSION      = 1,   /* RO DEXTLAB_USB_VERSION_VALUE */
    DEXTLAB_USB_REG_SCRATCH      = 2,   /* RW, 0 after reset */
    DEXTLAB_USB_REG_FIFO_SIZE    = 3,   /* RO FIFO capacity in bytes */
    DEXTLAB_USB_REG_FIFO_LEVEL   = 4,   /* RO bytes in the FIFO */
    DEXTLAB_USB_REG_EVENT_RATE   = 5,   /* RW Hz, as SET_EVENT_RATE */
    DEXTLAB_USB_REG_EVENT_SEQ    = 6,   /* RO sequence of the next event */
    DEXTLAB_USB_REG_EVENTS_LOST  = 7,   /* RO events dropped (queue full) */
    DEXTLAB_USB_REG_OUT_BYTES    = 8,   /* RO bytes accepted (mod 2^32) */
    DEXTLAB_USB_REG_IN_BYTES     = 9,   /* RO bytes returned (mod 2^32) */
    DEXTLAB_USB_REG_NAKS         = 10,  /* RO NAKs given (mod 2^32) */
    DEXTLAB_USB_REG_STALLS       = 11,  /* RO STALLs given (mod 2^32) */
    DEXTLAB_USB_REG_ALTSETTING   = 12,  /* RO current alternate setting */
    DEXTLAB_USB_REG_SPEED        = 13,  /* RO DEXTLAB_USB_SPEED_* */
    DEXTLAB_USB_REG_EVENTS_QUEUED = 14, /* RO events waiting for the host */
    DEXTLAB_USB_NUM_REGS         = 15,
};

#define DEXTLAB_USB_ID_VALUE        0x44585553u    /* "DXUS" */
#define DEXTLAB_USB_VERSION_VALUE   0x00010000u

enum {
    DEXTLAB_USB_SPEED_FULL  = 1,
    DEXTLAB_USB_SPEED_HIGH  = 2,
    DEXTLAB_USB_SPEED_SUPER = 3,
};

/* ----------------------------------------------------------------- FIFO */

/*
 * Loopback FIFO.  Every bulk OUT transfer becomes one message; a bulk IN
 * transfer returns bytes of the oldest message and ends (short) at the end
 * of that message, so transfer boundaries and zero-length packets loop
 * back.  OUT NAKs until the whole transfer fits (or, when it is larger
 * than the FIFO, until the FIFO is empty: then the FIFO's size is taken,
 * rounded down to wMaxPacketSize, and the OUT completes short).  IN NAKs
 * while the FIFO is empty.
 */
#define DEXTLAB_USB_FIFO_DEFAULT    (64 * 1024)
#define DEXTLAB_USB_FIFO_MIN        1024
#define DEXTLAB_USB_FIFO_MAX        (4 * 1024 * 1024)
#define DEXTLAB_USB_FIFO_MSGS       64     /* message boundaries held */

/* ------------------------------------------------------ interrupt events */

/*
 * Event record, DEXTLAB_USB_EVENT_SIZE bytes, one per interrupt IN
 * transfer (short if the host asks for more).
 */
#define DEXTLAB_USB_EVENT_SIZE      16
#define DEXTLAB_USB_EVENT_QUEUE     64     /* events held for the host */

enum DextlabUsbEventType {
    DEXTLAB_USB_EVT_TICK = 1,   /* rate timer; value = tick number */
    /* TRIGGER_EVENTS; value = wIndex tag << 16 | index within the request */
    DEXTLAB_USB_EVT_SOFT = 2,
};

typedef struct DextlabUsbEvent {
    uint8_t type;       /* DextlabUsbEventType */
    uint8_t flags;      /* bit 0: events were lost before this one */
    uint16_t lost;      /* events lost just before this one (saturating) */
    uint32_t seq;       /* increments by one per event generated */
    uint32_t value;
    uint32_t time_us;   /* device (virtual) clock, microseconds, mod 2^32 */
} DextlabUsbEvent;

#define DEXTLAB_USB_EVT_FLAG_LOST   0x01

#endif /* HW_DEXTLAB_DEXTLAB_USB_REGS_H */
