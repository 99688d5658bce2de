/*
 * dextlab-usb: a vendor-specific USB loopback device for dextlab.
 *
 * One configuration, one vendor-specific interface (two alternate
 * settings that change the max packet sizes) with
 *   - bulk OUT 0x01 + bulk IN 0x81: loopback through a bounded FIFO that
 *     keeps transfer boundaries (NAK while empty / full),
 *   - interrupt IN 0x82: 16-byte event records (rate timer on the virtual
 *     clock, or triggered by a vendor request),
 *   - vendor control requests: device registers, FIFO reset, forced stall,
 *     event rate, event trigger, echo.
 * Full/high speed descriptors always, SuperSpeed ones (BOS, endpoint
 * companions) unless superspeed=off.
 *
 * The register map, request codes and descriptor key values are in
 * include/hw/dextlab/dextlab-usb-regs.h, the datasheet in
 * docs/devices/dextlab-usb.md.  Every host request is bounds-checked: bad
 * ones STALL and are logged as guest errors; nothing a host does can
 * abort QEMU or make it loop.
 *
 * Copyright (c) 2026 dextlab authors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qemu/log.h"
#include "qemu/module.h"
#include "qemu/main-loop.h"
#include "qemu/timer.h"
#include "qemu/bswap.h"
#include "qapi/error.h"
#include "hw/qdev-properties.h"
#include "hw/usb.h"
#include "migration/vmstate.h"
#include "../usb/desc.h"
#include "qom/object.h"
#include "hw/dextlab/dextlab-usb-regs.h"
#include "trace.h"

#define TYPE_DEXTLAB_USB "dextlab-usb"
OBJECT_DECLARE_SIMPLE_TYPE(DextlabUsbState, DEXTLAB_USB)

/* endpoint slots for halt state and wake-ups */
enum { EPI_BULK_OUT, EPI_BULK_IN, EPI_INTR_IN, EPI_COUNT };

struct DextlabUsbState {
    USBDevice dev;

    /* properties */
    uint32_t fifo_size;
    bool superspeed;

    /* loopback FIFO: byte ring + ring of message lengths (remaining) */
    uint8_t *fifo;
    uint32_t fifo_head;           /* read position */
    uint32_t fifo_level;          /* bytes held */
    uint32_t msg_len[DEXTLAB_USB_FIFO_MSGS];
    uint32_t msg_head;
    uint32_t msg_count;

    /* interrupt events, packed DextlabUsbEvent records */
    uint8_t evq[DEXTLAB_USB_EVENT_QUEUE * DEXTLAB_USB_EVENT_SIZE];
    uint32_t ev_head;
    uint32_t ev_count;
    uint32_t ev_seq;
    uint32_t ev_lost_total;
    uint32_t ev_lost_pending;     /* lost since the last queued event */
    uint32_t tick_count;
    uint32_t event_rate;          /* Hz, 0 = off */
    int64_t tick_next_ns;         /* virtual clock deadline of next tick */
    QEMUTimer *tick_timer;

    bool halted[EPI_COUNT];
    uint32_t scratch;
    uint32_t out_bytes, in_bytes, naks, stalls;

    uint8_t echo[DEXTLAB_USB_ECHO_MAX];
    uint32_t echo_len;

    /*
     * endpoints that NAKed and must be kicked when state changes; the
     * kick runs from a bottom half so the host controller is never
     * re-entered from inside one of its own packet callbacks
     */
    uint32_t wake_pending;
    QEMUBH *wake_bh;
};

/* ----------------------------------------------------------- descriptors */

static const USBDescStrings desc_strings = {
    [DEXTLAB_USB_STR_MANUFACTURER] = DEXTLAB_USB_MANUFACTURER,
    [DEXTLAB_USB_STR_PRODUCT]      = DEXTLAB_USB_PRODUCT,
    [DEXTLAB_USB_STR_SERIAL]       = "1",
    [DEXTLAB_USB_STR_CONFIG]       = DEXTLAB_USB_CONFIG_NAME,
    [DEXTLAB_USB_STR_IFACE_ALT0]   = DEXTLAB_USB_IFACE_ALT0_NAME,
    [DEXTLAB_USB_STR_IFACE_ALT1]   = DEXTLAB_USB_IFACE_ALT1_NAME,
};

#define DEXTLAB_IFACE(alt, epsv)                                    \
    {                                                               \
        .bInterfaceNumber   = DEXTLAB_USB_IFACE_NUM,                \
        .bAlternateSetting  = (alt),                                \
        .bNumEndpoints      = DEXTLAB_USB_NUM_EPS,                  \
        .bInterfaceClass    = DEXTLAB_USB_IFACE_CLASS,              \
        .bInterfaceSubClass = DEXTLAB_USB_IFACE_SUBCLASS,           \
        .bInterfaceProtocol = DEXTLAB_USB_IFACE_PROTOCOL,           \
        .iInterface         = (alt) ? DEXTLAB_USB_STR_IFACE_ALT1    \
                                    : DEXTLAB_USB_STR_IFACE_ALT0,   \
        .eps                = (epsv),                               \
    }

#define DEXTLAB_EPS_USB2(alt, bulk_mps, intr_interval)              \
    (USBDescEndpoint[]) {                                           \
        {                                                           \
            .bEndpointAddress = DEXTLAB_USB_EP_BULK_OUT,            \
            .bmAttributes     = USB_ENDPOINT_XFER_BULK,             \
            .wMaxPacketSize   = (bulk_mps),                         \
        }, {                                                        \
            .bEndpointAddress = DEXTLAB_USB_EP_BULK_IN,             \
            .bmAttributes     = USB_ENDPOINT_XFER_BULK,             \
            .wMaxPacketSize   = (bulk_mps),                         \
        }, {                                                        \
            .bEndpointAddress = DEXTLAB_USB_EP_INTR_IN,             \
            .bmAttributes     = USB_ENDPOINT_XFER_INT,              \
            .wMaxPacketSize   = DEXTLAB_USB_INTR_MPS(alt),          \
            .bInterval        = (intr_interval),                    \
        },                                                          \
    }

#define DEXTLAB_EPS_SS(alt)                                         \
    (USBDescEndpoint[]) {                                           \
        {                                                           \
            .bEndpointAddress = DEXTLAB_USB_EP_BULK_OUT,            \
            .bmAttributes     = USB_ENDPOINT_XFER_BULK,             \
            .wMaxPacketSize   = DEXTLAB_USB_BULK_MPS_SS(alt),       \
            .bMaxBurst        = DEXTLAB_USB_BULK_BURST_SS(alt),     \
        }, {                                                        \
            .bEndpointAddress = DEXTLAB_USB_EP_BULK_IN,             \
            .bmAttributes     = USB_ENDPOINT_XFER_BULK,             \
            .wMaxPacketSize   = DEXTLAB_USB_BULK_MPS_SS(alt),       \
            .bMaxBurst        = DEXTLAB_USB_BULK_BURST_SS(alt),     \
        }, {                                                        \
            .bEndpointAddress = DEXTLAB_USB_EP_INTR_IN,             \
            .bmAttributes     = USB_ENDPOINT_XFER_INT,              \
            .wMaxPacketSize   = DEXTLAB_USB_INTR_MPS(alt),          \
            .bInterval        = DEXTLAB_USB_INTR_INTERVAL_SS,       \
            .wBytesPerInterval = DEXTLAB_USB_INTR_MPS(alt),         \
        },                                                          \
    }

static const USBDescIface desc_ifaces_full[] = {
    DEXTLAB_IFACE(0, DEXTLAB_EPS_USB2(0, DEXTLAB_USB_BULK_MPS_FS(0),
                                      DEXTLAB_USB_INTR_INTERVAL_FS)),
    DEXTLAB_IFACE(1, DEXTLAB_EPS_USB2(1, DEXTLAB_USB_BULK_MPS_FS(1),
                                      DEXTLAB_USB_INTR_INTERVAL_FS)),
};

static const USBDescIface desc_ifaces_high[] = {
    DEXTLAB_IFACE(0, DEXTLAB_EPS_USB2(0, DEXTLAB_USB_BULK_MPS_HS(0),
                                      DEXTLAB_USB_INTR_INTERVAL_HS)),
    DEXTLAB_IFACE(1, DEXTLAB_EPS_USB2(1, DEXTLAB_USB_BULK_MPS_HS(1),
                                      DEXTLAB_USB_INTR_INTERVAL_HS)),
};

static const USBDescIface desc_ifaces_super[] = {
    DEXTLAB_IFACE(0, DEXTLAB_EPS_SS(0)),
    DEXTLAB_IFACE(1, DEXTLAB_EPS_SS(1)),
};

#define DEXTLAB_CONFIG(ifacesv)                                     \
    (USBDescConfig[]) {                                             \
        {                                                           \
            .bNumInterfaces      = 1,                               \
            .bConfigurationValue = DEXTLAB_USB_CONFIG_VALUE,        \
            .iConfiguration      = DEXTLAB_USB_STR_CONFIG,          \
            .bmAttributes        = DEXTLAB_USB_CONFIG_ATTR,         \
            .bMaxPower           = DEXTLAB_USB_CONFIG_MAXPOWER,     \
            .nif                 = ARRAY_SIZE(ifacesv),             \
            .ifs                 = (ifacesv),                       \
        },                                                          \
    }

static const USBDescDevice desc_device_full = {
    .bcdUSB             = DEXTLAB_USB_BCD_USB_HS,
    .bMaxPacketSize0    = DEXTLAB_USB_EP0_MPS_HS,
    .bNumConfigurations = 1,
    .confs              = DEXTLAB_CONFIG(desc_ifaces_full),
};

static const USBDescDevice desc_device_high = {
    .bcdUSB             = DEXTLAB_USB_BCD_USB_HS,
    .bMaxPacketSize0    = DEXTLAB_USB_EP0_MPS_HS,
    .bNumConfigurations = 1,
    .confs              = DEXTLAB_CONFIG(desc_ifaces_high),
};

static const USBDescDevice desc_device_super = {
    .bcdUSB             = DEXTLAB_USB_BCD_USB_SS,
    .bMaxPacketSize0    = DEXTLAB_USB_EP0_MPS_SS_EXP,
    .bNumConfigurations = 1,
    .confs              = DEXTLAB_CONFIG(desc_ifaces_super),
};

#define DEXTLAB_DESC_ID                                             \
    {                                                               \
        .idVendor      = DEXTLAB_USB_VID,                           \
        .idProduct     = DEXTLAB_USB_PID,                           \
        .bcdDevice     = DEXTLAB_USB_BCD_DEVICE,                    \
        .iManufacturer = DEXTLAB_USB_STR_MANUFACTURER,              \
        .iProduct      = DEXTLAB_USB_STR_PRODUCT,                   \
        .iSerialNumber = DEXTLAB_USB_STR_SERIAL,                    \
    }

/* superspeed=on (default): full, high and SuperSpeed */
static const USBDesc desc_dextlab_ss = {
    .id    = DEXTLAB_DESC_ID,
    .full  = &desc_device_full,
    .high  = &desc_device_high,
    .super = &desc_device_super,
    .str   = desc_strings,
};

/*
 * superspeed=off: a USB 2.0 device, attaches at high speed even on a
 * port that could do SuperSpeed
 */
static const USBDesc desc_dextlab_hs = {
    .id    = DEXTLAB_DESC_ID,
    .full  = &desc_device_full,
    .high  = &desc_device_high,
    .str   = desc_strings,
};

/* ------------------------------------------------------------ helpers */

static int dextlab_usb_epi(int ep_addr)
{
    switch (ep_addr) {
    case DEXTLAB_USB_EP_BULK_OUT:
        return EPI_BULK_OUT;
    case DEXTLAB_USB_EP_BULK_IN:
        return EPI_BULK_IN;
    case DEXTLAB_USB_EP_INTR_IN:
        return EPI_INTR_IN;
    default:
        return -1;
    }
}

static USBEndpoint *dextlab_usb_ep(DextlabUsbState *s, int epi)
{
    switch (epi) {
    case EPI_BULK_OUT:
        return usb_ep_get(&s->dev, USB_TOKEN_OUT,
                          DEXTLAB_USB_EP_BULK_OUT & 0xf);
    case EPI_BULK_IN:
        return usb_ep_get(&s->dev, USB_TOKEN_IN, DEXTLAB_USB_EP_BULK_IN & 0xf);
    default:
        return usb_ep_get(&s->dev, USB_TOKEN_IN, DEXTLAB_USB_EP_INTR_IN & 0xf);
    }
}

static void dextlab_usb_wake(DextlabUsbState *s, int epi)
{
    s->wake_pending |= 1u << epi;
    qemu_bh_schedule(s->wake_bh);
}

static void dextlab_usb_wake_bh(void *opaque)
{
    DextlabUsbState *s = opaque;
    uint32_t pending = s->wake_pending;

    s->wake_pending = 0;
    if (!s->dev.attached) {
        return;
    }
    for (int epi = 0; epi < EPI_COUNT; epi++) {
        if (pending & (1u << epi)) {
            trace_dextlab_usb_wakeup(epi);
            usb_wakeup(dextlab_usb_ep(s, epi), 0);
        }
    }
}

static uint32_t dextlab_usb_bulk_mps(DextlabUsbState *s)
{
    int alt = s->dev.altsetting[DEXTLAB_USB_IFACE_NUM] ? 1 : 0;

    switch (s->dev.speed) {
    case USB_SPEED_SUPER:
        return DEXTLAB_USB_BULK_MPS_SS(alt);
    case USB_SPEED_HIGH:
        return DEXTLAB_USB_BULK_MPS_HS(alt);
    default:
        return DEXTLAB_USB_BULK_MPS_FS(alt);
    }
}

static void dextlab_usb_fifo_reset(DextlabUsbState *s)
{
    bool was_full = s->fifo_level || s->msg_count;

    s->fifo_head = 0;
    s->fifo_level = 0;
    s->msg_head = 0;
    s->msg_count = 0;
    memset(s->msg_len, 0, sizeof(s->msg_len));
    if (was_full) {
        dextlab_usb_wake(s, EPI_BULK_OUT);
    }
}

/* ------------------------------------------------------------- events */

static void dextlab_usb_event_push(DextlabUsbState *s, uint8_t type,
                                   uint32_t value)
{
    uint32_t seq = s->ev_seq++;
    uint8_t *rec;
    uint32_t lost;

    if (s->ev_count >= DEXTLAB_USB_EVENT_QUEUE) {
        /* the host is not reading: drop, count, report with the next one */
        s->ev_lost_total++;
        s->ev_lost_pending++;
        trace_dextlab_usb_event_lost(type, seq);
        return;
    }
    rec = &s->evq[((s->ev_head + s->ev_count) % DEXTLAB_USB_EVENT_QUEUE) *
                  DEXTLAB_USB_EVENT_SIZE];
    lost = MIN(s->ev_lost_pending, UINT16_MAX);
    rec[0] = type;
    rec[1] = lost ? DEXTLAB_USB_EVT_FLAG_LOST : 0;
    stw_le_p(rec + 2, lost);
    stl_le_p(rec + 4, seq);
    stl_le_p(rec + 8, value);
    stl_le_p(rec + 12,
             (uint32_t)(qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) / SCALE_US));
    s->ev_lost_pending = 0;
    s->ev_count++;
    trace_dextlab_usb_event(type, seq, value);
    dextlab_usb_wake(s, EPI_INTR_IN);
}

static void dextlab_usb_tick_arm(DextlabUsbState *s)
{
    if (s->event_rate) {
        timer_mod(s->tick_timer, s->tick_next_ns);
    } else {
        timer_del(s->tick_timer);
    }
}

static void dextlab_usb_tick(void *opaque)
{
    DextlabUsbState *s = opaque;
    int64_t now = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL);
    int64_t period;
    unsigned n = 0;

    if (!s->event_rate) {
        return;
    }
    period = NANOSECONDS_PER_SECOND / s->event_rate;
    /*
     * one event per elapsed period; a big clock jump is bounded by the
     * queue (what does not fit is counted as lost anyway)
     */
    while (s->tick_next_ns <= now && n < 2 * DEXTLAB_USB_EVENT_QUEUE) {
        dextlab_usb_event_push(s, DEXTLAB_USB_EVT_TICK, s->tick_count++);
        s->tick_next_ns += period;
        n++;
    }
    if (s->tick_next_ns <= now) {
        /* skipped periods: account them as lost, realign */
        int64_t skipped = (now - s->tick_next_ns) / period + 1;

        s->ev_lost_total += skipped;
        s->ev_lost_pending += skipped;
        s->ev_seq += skipped;
        s->tick_count += skipped;
        s->tick_next_ns += skipped * period;
    }
    dextlab_usb_tick_arm(s);
}

static void dextlab_usb_set_rate(DextlabUsbState *s, uint32_t hz)
{
    s->event_rate = hz;
    if (hz) {
        s->tick_next_ns = qemu_clock_get_ns(QEMU_CLOCK_VIRTUAL) +
                          NANOSECONDS_PER_SECOND / hz;
    }
    trace_dextlab_usb_event_rate(hz);
    dextlab_usb_tick_arm(s);
}

/* ------------------------------------------------------------ registers */

static bool dextlab_usb_reg_read(DextlabUsbState *s, unsigned reg,
                                 uint32_t *val)
{
    switch (reg) {
    case DEXTLAB_USB_REG_ID:
        *val = DEXTLAB_USB_ID_VALUE;
        break;
    case DEXTLAB_USB_REG_VERSION:
        *val = DEXTLAB_USB_VERSION_VALUE;
        break;
    case DEXTLAB_USB_REG_SCRATCH:
        *val = s->scratch;
        break;
    case DEXTLAB_USB_REG_FIFO_SIZE:
        *val = s->fifo_size;
        break;
    case DEXTLAB_USB_REG_FIFO_LEVEL:
        *val = s->fifo_level;
        break;
    case DEXTLAB_USB_REG_EVENT_RATE:
        *val = s->event_rate;
        break;
    case DEXTLAB_USB_REG_EVENT_SEQ:
        *val = s->ev_seq;
        break;
    case DEXTLAB_USB_REG_EVENTS_LOST:
        *val = s->ev_lost_total;
        break;
    case DEXTLAB_USB_REG_OUT_BYTES:
        *val = s->out_bytes;
        break;
    case DEXTLAB_USB_REG_IN_BYTES:
        *val = s->in_bytes;
        break;
    case DEXTLAB_USB_REG_NAKS:
        *val = s->naks;
        break;
    case DEXTLAB_USB_REG_STALLS:
        *val = s->stalls;
        break;
    case DEXTLAB_USB_REG_ALTSETTING:
        *val = s->dev.altsetting[DEXTLAB_USB_IFACE_NUM];
        break;
    case DEXTLAB_USB_REG_SPEED:
        *val = s->dev.speed == USB_SPEED_SUPER ? DEXTLAB_USB_SPEED_SUPER :
               s->dev.speed == USB_SPEED_HIGH ? DEXTLAB_USB_SPEED_HIGH :
               DEXTLAB_USB_SPEED_FULL;
        break;
    case DEXTLAB_USB_REG_EVENTS_QUEUED:
        *val = s->ev_count;
        break;
    default:
        return false;
    }
    return true;
}

static bool dextlab_usb_reg_write(DextlabUsbState *s, unsigned reg,
                                  uint32_t val)
{
    switch (reg) {
    case DEXTLAB_USB_REG_SCRATCH:
        s->scratch = val;
        return true;
    case DEXTLAB_USB_REG_EVENT_RATE:
        if (val > DEXTLAB_USB_EVENT_RATE_MAX) {
            return false;
        }
        dextlab_usb_set_rate(s, val);
        return true;
    default:
        return false;
    }
}

/* ------------------------------------------------------------- control */

static void dextlab_usb_guest_error(DextlabUsbState *s, USBPacket *p,
                                    const char *what, int request,
                                    int value, int index, int length)
{
    qemu_log_mask(LOG_GUEST_ERROR,
                  "dextlab-usb: %s (request 0x%04x value 0x%04x index 0x%04x"
                  " length %d): stall\n", what, request, value, index, length);
    p->status = USB_RET_STALL;
}

static void dextlab_usb_handle_control(USBDevice *dev, USBPacket *p,
                                       int request, int value, int index,
                                       int length, uint8_t *data)
{
    DextlabUsbState *s = DEXTLAB_USB(dev);
    int epi;
    int ret;

    trace_dextlab_usb_control(request, value, index, length);
    ret = usb_desc_handle_control(dev, p, request, value, index, length, data);
    if (ret >= 0) {
        return;
    }

    /*
     * the core bounds the data stage by sizeof(dev->data_buf); every
     * request below also checks wLength against its own limit
     */
    switch (request) {
    case EndpointOutRequest | USB_REQ_CLEAR_FEATURE:
    case EndpointOutRequest | USB_REQ_SET_FEATURE:
        epi = dextlab_usb_epi(index);
        if (value != 0 /* ENDPOINT_HALT */ || epi < 0) {
            goto stall;
        }
        s->halted[epi] = (request & 0xff) == USB_REQ_SET_FEATURE;
        trace_dextlab_usb_halt(index, s->halted[epi]);
        if (!s->halted[epi]) {
            dextlab_usb_wake(s, epi);
        }
        break;

    case EndpointRequest | USB_REQ_GET_STATUS:
        epi = dextlab_usb_epi(index);
        if (index == 0 || index == 0x80) {
            epi = -2;   /* ep0 is never halted */
        }
        if (epi == -1 || length < 2) {
            goto stall;
        }
        data[0] = (epi >= 0 && s->halted[epi]) ? 1 : 0;
        data[1] = 0;
        p->actual_length = 2;
        break;

    case VendorDeviceRequest | DEXTLAB_USB_REQ_READ_REG: {
        uint32_t val;

        if (length < 4 || !dextlab_usb_reg_read(s, index, &val)) {
            dextlab_usb_guest_error(s, p, "bad READ_REG", request, value,
                                    index, length);
            goto stalled;
        }
        stl_le_p(data, val);
        p->actual_length = 4;
        trace_dextlab_usb_reg_read(index, val);
        break;
    }
    case VendorDeviceOutRequest | DEXTLAB_USB_REQ_WRITE_REG: {
        uint32_t val;

        if (length != 4) {
            dextlab_usb_guest_error(s, p, "bad WRITE_REG length", request,
                                    value, index, length);
            goto stalled;
        }
        val = ldl_le_p(data);
        if (!dextlab_usb_reg_write(s, index, val)) {
            dextlab_usb_guest_error(s, p, "WRITE_REG to read-only/unknown "
                                    "register or bad value", request, value,
                                    index, length);
            goto stalled;
        }
        trace_dextlab_usb_reg_write(index, val);
        break;
    }
    case VendorDeviceOutRequest | DEXTLAB_USB_REQ_RESET_FIFO:
        if (length) {
            goto stall;
        }
        dextlab_usb_fifo_reset(s);
        trace_dextlab_usb_fifo_reset();
        break;

    case VendorDeviceOutRequest | DEXTLAB_USB_REQ_FORCE_STALL:
        if (length) {
            goto stall;
        }
        if (index == 0) {
            goto stall;         /* protocol stall of this request */
        }
        epi = dextlab_usb_epi(index);
        if (epi < 0) {
            dextlab_usb_guest_error(s, p, "FORCE_STALL of unknown endpoint",
                                    request, value, index, length);
            goto stalled;
        }
        s->halted[epi] = true;
        trace_dextlab_usb_halt(index, true);
        /* a transfer parked on NAK must now see the STALL */
        dextlab_usb_wake(s, epi);
        break;

    case VendorDeviceOutRequest | DEXTLAB_USB_REQ_SET_EVENT_RATE:
        if (length || value > DEXTLAB_USB_EVENT_RATE_MAX) {
            dextlab_usb_guest_error(s, p, "bad SET_EVENT_RATE", request,
                                    value, index, length);
            goto stalled;
        }
        dextlab_usb_set_rate(s, value);
        break;

    case VendorDeviceOutRequest | DEXTLAB_USB_REQ_TRIGGER_EVENTS:
        if (length || value < 1 || value > DEXTLAB_USB_TRIGGER_MAX) {
            dextlab_usb_guest_error(s, p, "bad TRIGGER_EVENTS", request,
                                    value, index, length);
            goto stalled;
        }
        for (int i = 0; i < value; i++) {
            dextlab_usb_event_push(s, DEXTLAB_USB_EVT_SOFT,
                                   ((uint32_t)index << 16) | i);
        }
        break;

    case VendorDeviceOutRequest | DEXTLAB_USB_REQ_ECHO:
        if (length > DEXTLAB_USB_ECHO_MAX) {
            dextlab_usb_guest_error(s, p, "ECHO too long", request, value,
                                    index, length);
            goto stalled;
        }
        memcpy(s->echo, data, length);
        s->echo_len = length;
        break;

    case VendorDeviceRequest | DEXTLAB_USB_REQ_ECHO:
        p->actual_length = MIN((uint32_t)length, s->echo_len);
        memcpy(data, s->echo, p->actual_length);
        break;

    default:
        goto stall;
    }
    return;

stall:
    trace_dextlab_usb_unknown_request(request, value, index, length);
    p->status = USB_RET_STALL;
stalled:
    s->stalls++;
}

/* ---------------------------------------------------------------- data */

static void dextlab_usb_bulk_out(DextlabUsbState *s, USBPacket *p)
{
    uint32_t size = usb_packet_size(p);
    uint32_t take, first;
    uint32_t tail;

    if (s->msg_count >= DEXTLAB_USB_FIFO_MSGS) {
        goto nak;
    }
    if (size > s->fifo_size) {
        /* larger than the FIFO: take what fits once it is empty */
        if (s->fifo_level) {
            goto nak;
        }
        take = s->fifo_size - s->fifo_size % dextlab_usb_bulk_mps(s);
    } else if (size > s->fifo_size - s->fifo_level) {
        goto nak;
    } else {
        take = size;
    }

    tail = (s->fifo_head + s->fifo_level) % s->fifo_size;
    first = MIN(take, s->fifo_size - tail);
    usb_packet_copy(p, s->fifo + tail, first);
    if (take > first) {
        usb_packet_copy(p, s->fifo, take - first);
    }
    s->fifo_level += take;
    s->msg_len[(s->msg_head + s->msg_count) % DEXTLAB_USB_FIFO_MSGS] = take;
    s->msg_count++;
    s->out_bytes += take;
    trace_dextlab_usb_bulk_out(size, take, s->fifo_level);
    dextlab_usb_wake(s, EPI_BULK_IN);
    return;

nak:
    s->naks++;
    trace_dextlab_usb_nak(DEXTLAB_USB_EP_BULK_OUT, size);
    p->status = USB_RET_NAK;
}

static void dextlab_usb_bulk_in(DextlabUsbState *s, USBPacket *p)
{
    uint32_t size = usb_packet_size(p);
    uint32_t *msg;
    uint32_t n, first;

    if (!s->msg_count) {
        s->naks++;
        trace_dextlab_usb_nak(DEXTLAB_USB_EP_BULK_IN, size);
        p->status = USB_RET_NAK;
        return;
    }
    msg = &s->msg_len[s->msg_head];
    n = MIN(*msg, size);
    first = MIN(n, s->fifo_size - s->fifo_head);
    usb_packet_copy(p, s->fifo + s->fifo_head, first);
    if (n > first) {
        usb_packet_copy(p, s->fifo, n - first);
    }
    s->fifo_head = (s->fifo_head + n) % s->fifo_size;
    s->fifo_level -= n;
    *msg -= n;
    if (*msg == 0) {
        /* the message (transfer) ends here: short or zero-length */
        s->msg_head = (s->msg_head + 1) % DEXTLAB_USB_FIFO_MSGS;
        s->msg_count--;
    }
    s->in_bytes += n;
    trace_dextlab_usb_bulk_in(size, n, s->fifo_level);
    dextlab_usb_wake(s, EPI_BULK_OUT);
}

static void dextlab_usb_intr_in(DextlabUsbState *s, USBPacket *p)
{
    uint32_t size = usb_packet_size(p);

    if (!s->ev_count) {
        trace_dextlab_usb_nak(DEXTLAB_USB_EP_INTR_IN, size);
        p->status = USB_RET_NAK;
        return;
    }
    usb_packet_copy(p, &s->evq[s->ev_head * DEXTLAB_USB_EVENT_SIZE],
                    MIN(size, DEXTLAB_USB_EVENT_SIZE));
    s->ev_head = (s->ev_head + 1) % DEXTLAB_USB_EVENT_QUEUE;
    s->ev_count--;
}

static void dextlab_usb_handle_data(USBDevice *dev, USBPacket *p)
{
    DextlabUsbState *s = DEXTLAB_USB(dev);
    int addr = p->ep->nr | (p->pid == USB_TOKEN_IN ? USB_DIR_IN : 0);
    int epi = dextlab_usb_epi(addr);

    if (epi < 0) {
        qemu_log_mask(LOG_GUEST_ERROR, "dextlab-usb: transfer to unknown "
                      "endpoint 0x%02x: stall\n", addr);
        goto stall;
    }
    if (s->halted[epi]) {
        goto stall;
    }
    switch (epi) {
    case EPI_BULK_OUT:
        dextlab_usb_bulk_out(s, p);
        break;
    case EPI_BULK_IN:
        dextlab_usb_bulk_in(s, p);
        break;
    default:
        dextlab_usb_intr_in(s, p);
        break;
    }
    return;

stall:
    s->stalls++;
    trace_dextlab_usb_stall(addr);
    p->status = USB_RET_STALL;
}

static void dextlab_usb_set_interface(USBDevice *dev, int interface,
                                      int alt_old, int alt_new)
{
    DextlabUsbState *s = DEXTLAB_USB(dev);

    /*
     * new max packet sizes: what the FIFO held was framed for the old
     * ones, and SET_INTERFACE resets endpoint state
     */
    trace_dextlab_usb_set_interface(interface, alt_old, alt_new);
    dextlab_usb_fifo_reset(s);
    memset(s->halted, 0, sizeof(s->halted));
}

/* -------------------------------------------------------------- qdev */

static void dextlab_usb_handle_reset(USBDevice *dev)
{
    DextlabUsbState *s = DEXTLAB_USB(dev);

    trace_dextlab_usb_reset();
    dextlab_usb_fifo_reset(s);
    s->ev_head = 0;
    s->ev_count = 0;
    s->ev_seq = 0;
    s->ev_lost_total = 0;
    s->ev_lost_pending = 0;
    s->tick_count = 0;
    dextlab_usb_set_rate(s, 0);
    memset(s->halted, 0, sizeof(s->halted));
    s->scratch = 0;
    s->out_bytes = s->in_bytes = s->naks = s->stalls = 0;
    s->echo_len = 0;
    s->wake_pending = 0;
}

static void dextlab_usb_realize(USBDevice *dev, Error **errp)
{
    DextlabUsbState *s = DEXTLAB_USB(dev);

    if (s->fifo_size < DEXTLAB_USB_FIFO_MIN ||
        s->fifo_size > DEXTLAB_USB_FIFO_MAX || s->fifo_size % 1024) {
        error_setg(errp, "fifo-size must be a multiple of 1024 in "
                   "[%u, %u]", DEXTLAB_USB_FIFO_MIN, DEXTLAB_USB_FIFO_MAX);
        return;
    }
    dev->usb_desc = s->superspeed ? &desc_dextlab_ss : &desc_dextlab_hs;
    /* the usb-device "serial" property wins over the port-path serial */
    usb_desc_create_serial(dev);
    usb_desc_init(dev);
    s->fifo = g_malloc0(s->fifo_size);
    s->tick_timer = timer_new_ns(QEMU_CLOCK_VIRTUAL, dextlab_usb_tick, s);
    s->wake_bh = qemu_bh_new(dextlab_usb_wake_bh, s);
    dextlab_usb_handle_reset(dev);
}

static void dextlab_usb_unrealize(USBDevice *dev)
{
    DextlabUsbState *s = DEXTLAB_USB(dev);

    timer_free(s->tick_timer);
    s->tick_timer = NULL;
    qemu_bh_delete(s->wake_bh);
    s->wake_bh = NULL;
    g_free(s->fifo);
    s->fifo = NULL;
}

static int dextlab_usb_post_load(void *opaque, int version_id)
{
    DextlabUsbState *s = opaque;
    uint32_t sum = 0;

    /* the stream is untrusted: indexes must stay inside the arrays */
    if (s->fifo_head >= s->fifo_size || s->fifo_level > s->fifo_size ||
        s->msg_head >= DEXTLAB_USB_FIFO_MSGS ||
        s->msg_count > DEXTLAB_USB_FIFO_MSGS ||
        s->ev_head >= DEXTLAB_USB_EVENT_QUEUE ||
        s->ev_count > DEXTLAB_USB_EVENT_QUEUE ||
        s->echo_len > DEXTLAB_USB_ECHO_MAX ||
        s->event_rate > DEXTLAB_USB_EVENT_RATE_MAX) {
        return -EINVAL;
    }
    for (uint32_t i = 0; i < s->msg_count; i++) {
        sum += s->msg_len[(s->msg_head + i) % DEXTLAB_USB_FIFO_MSGS];
        if (sum > s->fifo_level) {
            return -EINVAL;
        }
    }
    if (sum != s->fifo_level) {
        return -EINVAL;
    }
    return 0;
}

static const VMStateDescription vmstate_dextlab_usb = {
    .name = TYPE_DEXTLAB_USB,
    .version_id = 1,
    .minimum_version_id = 1,
    .post_load = dextlab_usb_post_load,
    .fields = (VMStateField[]) {
        VMSTATE_USB_DEVICE(dev, DextlabUsbState),
        VMSTATE_UINT32_EQUAL(fifo_size, DextlabUsbState, NULL),
        VMSTATE_VBUFFER_UINT32(fifo, DextlabUsbState, 1, NULL, fifo_size),
        VMSTATE_UINT32(fifo_head, DextlabUsbState),
        VMSTATE_UINT32(fifo_level, DextlabUsbState),
        VMSTATE_UINT32_ARRAY(msg_len, DextlabUsbState, DEXTLAB_USB_FIFO_MSGS),
        VMSTATE_UINT32(msg_head, DextlabUsbState),
        VMSTATE_UINT32(msg_count, DextlabUsbState),
        VMSTATE_BUFFER(evq, DextlabUsbState),
        VMSTATE_UINT32(ev_head, DextlabUsbState),
        VMSTATE_UINT32(ev_count, DextlabUsbState),
        VMSTATE_UINT32(ev_seq, DextlabUsbState),
        VMSTATE_UINT32(ev_lost_total, DextlabUsbState),
        VMSTATE_UINT32(ev_lost_pending, DextlabUsbState),
        VMSTATE_UINT32(tick_count, DextlabUsbState),
        VMSTATE_UINT32(event_rate, DextlabUsbState),
        VMSTATE_INT64(tick_next_ns, DextlabUsbState),
        VMSTATE_TIMER_PTR(tick_timer, DextlabUsbState),
        VMSTATE_BOOL_ARRAY(halted, DextlabUsbState, EPI_COUNT),
        VMSTATE_UINT32(scratch, DextlabUsbState),
        VMSTATE_UINT32(out_bytes, DextlabUsbState),
        VMSTATE_UINT32(in_bytes, DextlabUsbState),
        VMSTATE_UINT32(naks, DextlabUsbState),
        VMSTATE_UINT32(stalls, DextlabUsbState),
        VMSTATE_BUFFER(echo, DextlabUsbState),
        VMSTATE_UINT32(echo_len, DextlabUsbState),
        VMSTATE_END_OF_LIST()
    },
};

static Property dextlab_usb_properties[] = {
    DEFINE_PROP_UINT32("fifo-size", DextlabUsbState, fifo_size,
                       DEXTLAB_USB_FIFO_DEFAULT),
    DEFINE_PROP_BOOL("superspeed", DextlabUsbState, superspeed, true),
    DEFINE_PROP_END_OF_LIST(),
};

static void dextlab_usb_class_init(ObjectClass *klass, void *data)
{
    DeviceClass *dc = DEVICE_CLASS(klass);
    USBDeviceClass *uc = USB_DEVICE_CLASS(klass);

    uc->product_desc   = "dextlab USB loopback";
    uc->usb_desc       = &desc_dextlab_ss;
    uc->realize        = dextlab_usb_realize;
    uc->unrealize      = dextlab_usb_unrealize;
    uc->handle_attach  = usb_desc_attach;
    uc->handle_reset   = dextlab_usb_handle_reset;
    uc->handle_control = dextlab_usb_handle_control;
    uc->handle_data    = dextlab_usb_handle_data;
    uc->set_interface  = dextlab_usb_set_interface;
    dc->vmsd = &vmstate_dextlab_usb;
    dc->desc = "dextlab USB loopback device (bulk, interrupt, vendor requests)";
    set_bit(DEVICE_CATEGORY_MISC, dc->categories);
    device_class_set_props(dc, dextlab_usb_properties);
}

static const TypeInfo dextlab_usb_info = {
    .name          = TYPE_DEXTLAB_USB,
    .parent        = TYPE_USB_DEVICE,
    .instance_size = sizeof(DextlabUsbState),
    .class_init    = dextlab_usb_class_init,
};

static void dextlab_usb_register_types(void)
{
    type_register_static(&dextlab_usb_info);
}

type_init(dextlab_usb_register_types)
