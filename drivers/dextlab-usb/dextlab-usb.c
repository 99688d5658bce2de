/*
 * dextlab-usb: the client driver for the dextlab-usb loopback device
 * (docs/devices/dextlab-usb.md), matched to its interface 0 as published
 * by the USB host controller driver (IOUSBHostInterface nub).  Written
 * against libdext's USB API (dext/usb.h) and the device's register header
 * only.  docs/drivers/dextlab-usb.md describes it.
 *
 * Shape: everything runs on the service queue (Start/Stop, user-client
 * methods and every USB completion), so the driver's state needs no lock.
 *   - bulk loopback: a request is split into chunks of at most the device's
 *     FIFO size, each one OUT and one IN transfer submitted together (the
 *     FIFO keeps transfer boundaries, so the k-th IN returns the k-th OUT),
 *     fed through a bounded window as earlier chunks complete; data lives in
 *     the client's window,
 *     a USB IO buffer the app maps: zero copy;
 *   - interrupt IN: EV_READS reads always armed, re-armed in their
 *     completion; each event goes to every subscriber as an async
 *     completion carrying its sequence number;
 *   - register access, event rate, stall: the device's vendor requests.
 * An error on a bulk transfer aborts both bulk pipes: the FIFO's message
 * order no longer matches the requests in flight, so they all fail
 * (-ECANCELED) instead of returning someone else's bytes.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <dext/dext.h>
#include <dext/usb.h>
#include <errno.h>
#include <glib.h>
#include <string.h>

#include "hw/dextlab/dextlab-usb-regs.h"
#include "dextlab-usb-uc.h"

G_STATIC_ASSERT(DXU_SPEED_HIGH == DEXT_USBHOST_SPEED_HIGH);
G_STATIC_ASSERT(DXU_SPEED_SUPER == DEXT_USBHOST_SPEED_SUPER);

#define EV_READS        4               /* interrupt reads kept armed */
#define EV_SLOT         64              /* bytes per read (>= any interrupt mps) */
/* Bulk transfers in flight, all clients: 64 per pipe, the messages the
 * device's FIFO holds.  Longer requests are fed chunk by chunk as earlier
 * ones complete. */
#define MAX_IOS         (2 * DEXTLAB_USB_FIFO_MSGS)
#define CTRL_MS         2000

typedef struct Drv Drv;

typedef struct Client {
    int ref;                    /* the connection + each request in flight */
    Drv *d;
    DextUserClient *uc;         /* NULL once the app closed */
    DextBuffer *win;
    GPtrArray *old_wins;        /* replaced windows: the app may still map them */
    unsigned inflight;
    uint64_t subs[DXU_UC_MAX_SUBS];
    unsigned nsubs;
} Client;

typedef struct {
    Client *cl;
    uint64_t ref, tag;
    DextBuffer *win;
    uint64_t out_off, in_off;
    uint32_t len, in_len;
    unsigned ios;               /* transfers not yet completed */
    unsigned chunks;
    unsigned next;              /* next chunk to submit */
    bool queued;                /* in Drv.pending: chunks left to submit */
    uint32_t out_actual, in_actual;
    int out_status, in_status;
    uint64_t t_submit, t_done;
} Req;

typedef struct {
    Req *r;
    bool in;
} Xfer;

typedef struct {
    Drv *d;
    unsigned gen;
    unsigned idx;
} EvRead;

struct Drv {
    DextService *svc;
    DextUsbHostInterface *intf;
    DextUsbHostPipe *out, *in, *intr;
    unsigned speed;
    uint8_t alt;
    uint32_t fifo_size, version;
    uint16_t bulk_mps, intr_mps;
    DextBuffer *evbuf;
    unsigned ev_gen;            /* bumps when reads are abandoned */
    unsigned ev_armed;
    bool ev_halted;
    bool stopping;
    unsigned ios;               /* bulk transfers in flight */
    GQueue pending;             /* Req* with chunks not yet submitted, FIFO */
    GPtrArray *clients;         /* Client* with an open connection */
    struct dxu_uc_stats st;
};

/* ---- device access --------------------------------------------------------- */

/* A control request the device STALLed is -EREMOTEIO at the user-client
 * boundary: libdextclient reads a method's -EPIPE as the connection
 * breaking. */
static int uc_err(int rc)
{
    return rc == -EPIPE ? -EREMOTEIO : rc;
}

static int vendor_out(Drv *d, uint8_t req, uint16_t value, uint16_t index, void *data,
                      uint16_t len)
{
    d->st.control_requests++;
    return uc_err(dext_usbhost_interface_request(d->intf, 0x40, req, value, index, data, len,
                                                 NULL, CTRL_MS));
}

static int reg_read(Drv *d, uint16_t reg, uint32_t *v)
{
    uint8_t b[4];
    uint32_t actual = 0;
    d->st.control_requests++;
    int rc = dext_usbhost_interface_request(d->intf, 0xc0, DEXTLAB_USB_REQ_READ_REG, 0, reg, b,
                                            sizeof(b), &actual, CTRL_MS);
    if (rc < 0) {
        return rc;
    }
    if (actual != 4) {
        return -EIO;
    }
    *v = b[0] | b[1] << 8 | b[2] << 16 | (uint32_t)b[3] << 24;
    return 0;
}

static int copy_pipes(Drv *d)
{
    int rc;
    if ((rc = dext_usbhost_interface_copy_pipe(d->intf, DEXTLAB_USB_EP_BULK_OUT, &d->out)) < 0 ||
        (rc = dext_usbhost_interface_copy_pipe(d->intf, DEXTLAB_USB_EP_BULK_IN, &d->in)) < 0 ||
        (rc = dext_usbhost_interface_copy_pipe(d->intf, DEXTLAB_USB_EP_INTR_IN, &d->intr)) < 0) {
        return rc;
    }
    d->bulk_mps = dext_usbhost_pipe_descriptor(d->in)->wMaxPacketSize & 0x7ff;
    d->intr_mps = dext_usbhost_pipe_descriptor(d->intr)->wMaxPacketSize & 0x7ff;
    if (!d->bulk_mps || !d->intr_mps || d->intr_mps > EV_SLOT) {
        DEXT_ERROR("unexpected endpoints: bulk mps %u, interrupt mps %u", d->bulk_mps,
                   d->intr_mps);
        return -ENODEV;
    }
    return 0;
}

/* ---- events ------------------------------------------------------------------ */

static void ev_arm(Drv *d, unsigned idx);

static void ev_deliver(Drv *d, const uint8_t *p, uint64_t t)
{
    DextlabUsbEvent e;
    memcpy(&e, p, sizeof(e));
    uint64_t data[DXU_EV_COUNT] = {
        [DXU_EV_SEQ] = e.seq,
        [DXU_EV_TYPE] = e.type,
        [DXU_EV_VALUE] = e.value,
        [DXU_EV_TIME_US] = e.time_us,
        [DXU_EV_LOST] = (e.flags & DEXTLAB_USB_EVT_FLAG_LOST) ? e.lost : 0,
        [DXU_EV_T_DRIVER] = t,
    };
    d->st.events++;
    d->st.events_lost += data[DXU_EV_LOST];
    d->st.event_seq_next = (uint64_t)e.seq + 1;
    for (guint i = 0; i < d->clients->len; i++) {
        Client *cl = d->clients->pdata[i];
        for (unsigned k = 0; k < cl->nsubs && cl->uc; k++) {
            dext_user_client_complete_async(cl->uc, cl->subs[k], 0, data, DXU_EV_COUNT);
        }
    }
}

static void ev_done(void *ctx, int status, uint32_t actual, uint64_t ts)
{
    EvRead *r = ctx;
    Drv *d = r->d;
    bool current = r->gen == d->ev_gen;
    if (current) {
        d->ev_armed--;
    }
    if (status == 0) {
        d->st.event_reads++;
        if (actual >= DEXTLAB_USB_EVENT_SIZE) {
            uint8_t *base = dext_buffer_map(d->evbuf);
            ev_deliver(d, base + r->idx * EV_SLOT, ts);
        } else {
            d->st.event_errors++;
        }
    } else if (status != -ECANCELED) {
        d->st.event_errors++;
        if (status == -EPIPE && current) {
            d->ev_halted = true;
            d->st.stalls++;
        }
        if (status != -ETIMEDOUT) {
            DEXT_DEBUG("interrupt read: %s", g_strerror(-status));
        }
    }
    if (current && !d->stopping && !d->ev_halted &&
        (status == 0 || status == -ETIMEDOUT)) {
        ev_arm(d, r->idx);
    }
    g_free(r);
}

static void ev_arm(Drv *d, unsigned idx)
{
    EvRead *r = g_new0(EvRead, 1);
    r->d = d;
    r->gen = d->ev_gen;
    r->idx = idx;
    int rc = dext_usbhost_pipe_async_io(d->intr, d->evbuf, idx * EV_SLOT, d->intr_mps, NULL,
                                        ev_done, r);
    if (rc < 0) {
        if (!d->stopping) {
            DEXT_WARN("interrupt read %u not armed: %s", idx, g_strerror(-rc));
        }
        g_free(r);
        return;
    }
    d->ev_armed++;
}

static void ev_arm_all(Drv *d)
{
    d->ev_halted = false;
    for (unsigned i = 0; i < EV_READS; i++) {
        ev_arm(d, i);
    }
}

/* Abandon the armed reads: their completions (-ECANCELED) re-arm nothing. */
static void ev_disarm(Drv *d)
{
    d->ev_gen++;
    d->ev_armed = 0;
}

/* ---- clients and loopback ---------------------------------------------------- */

static void client_unref(Client *cl)
{
    if (--cl->ref == 0) {
        if (cl->win) {
            dext_buffer_release(cl->win);
        }
        g_ptr_array_free(cl->old_wins, TRUE);
        g_free(cl);
    }
}

static void req_finish(Req *r)
{
    Client *cl = r->cl;
    Drv *d = cl->d;
    int status = r->out_status ? r->out_status : r->in_status;
    uint64_t data[DXU_LB_COUNT] = {
        [DXU_LB_TAG] = r->tag,
        [DXU_LB_OUT_ACTUAL] = r->out_actual,
        [DXU_LB_IN_ACTUAL] = r->in_actual,
        [DXU_LB_OUT_STATUS] = (uint64_t)(int64_t)r->out_status,
        [DXU_LB_IN_STATUS] = (uint64_t)(int64_t)r->in_status,
        [DXU_LB_T_SUBMIT] = r->t_submit,
        [DXU_LB_T_DONE] = dext_time_ns(),
        [DXU_LB_CHUNKS] = r->chunks,
    };
    if (status == 0) {
        d->st.lb_ok++;
    } else {
        d->st.lb_failed++;
    }
    if (cl->uc) {
        dext_user_client_complete_async(cl->uc, r->ref, status, data, DXU_LB_COUNT);
    }
    cl->inflight--;
    client_unref(cl);
    g_free(r);
}

static void bulk_abort(Drv *d)
{
    dext_usbhost_pipe_abort(d->out);
    dext_usbhost_pipe_abort(d->in);
}

static void req_maybe_finish(Req *r)
{
    if (r->ios == 0 && !r->queued) {
        req_finish(r);
    }
}

/* Requests still waiting to submit chunks fail (-ECANCELED): after a
 * failed or cancelled transfer the FIFO's messages no longer pair up. */
static void fail_pending(Drv *d)
{
    Req *r;
    while ((r = g_queue_pop_head(&d->pending))) {
        r->queued = false;
        if (!r->out_status) {
            r->out_status = -ECANCELED;
        }
        req_maybe_finish(r);
    }
}

static void xfer_done(void *ctx, int status, uint32_t actual, uint64_t ts);

static int xfer_submit(Drv *d, Req *r, bool in, uint64_t off, uint32_t len)
{
    Xfer *x = g_new0(Xfer, 1);
    x->r = r;
    x->in = in;
    int rc = dext_usbhost_pipe_async_io(in ? d->in : d->out, r->win, off, len, NULL, xfer_done, x);
    if (rc < 0) {
        g_free(x);
        return rc;
    }
    r->ios++;
    d->ios++;
    d->st.io_submitted++;
    return 0;
}

/*
 * Submit queued chunks while there is room.  Each chunk is one OUT and its
 * IN, submitted together (on the service queue: nothing interleaves), so
 * the k-th IN on the pipe returns the k-th OUT's message whatever requests
 * the chunks belong to.
 */
static void pump(Drv *d)
{
    Req *r;
    uint64_t chunk = d->fifo_size;
    while (!d->stopping && (r = g_queue_peek_head(&d->pending)) && d->ios + 2 <= MAX_IOS) {
        uint64_t o = (uint64_t)r->next * chunk;
        uint32_t n = (uint32_t)MIN(chunk, (uint64_t)r->len - o);
        uint32_t nin = r->next + 1 == r->chunks ? (uint32_t)(r->in_len - o) : n;
        int rc = xfer_submit(d, r, false, r->out_off + o, n);
        if (rc == 0 && (rc = xfer_submit(d, r, true, r->in_off + o, nin)) < 0) {
            r->in_status = rc;
            bulk_abort(d); /* an OUT without its IN would shift every later request */
        } else if (rc < 0) {
            r->out_status = rc;
        }
        if (rc < 0) {
            fail_pending(d);
            return;
        }
        if (++r->next == r->chunks) {
            g_queue_pop_head(&d->pending);
            r->queued = false;
        }
    }
    if (d->stopping) {
        fail_pending(d);
    }
}

static void xfer_done(void *ctx, int status, uint32_t actual, uint64_t ts)
{
    Xfer *x = ctx;
    Req *r = x->r;
    Drv *d = r->cl->d;
    d->ios--;
    d->st.io_completed++;
    if (x->in) {
        r->in_actual += actual;
        d->st.bytes_in += actual;
        if (status && !r->in_status) {
            r->in_status = status;
        }
    } else {
        r->out_actual += actual;
        d->st.bytes_out += actual;
        if (status && !r->out_status) {
            r->out_status = status;
        }
    }
    g_free(x);
    if (status) {
        d->st.io_errors++;
        if (status == -EPIPE) {
            d->st.stalls++;
        }
        if (status != -ECANCELED && !d->stopping) {
            /* Boundaries in the FIFO no longer line up with what is in
             * flight: fail everything rather than mix requests' data. */
            bulk_abort(d);
        }
        fail_pending(d);
    }
    r->ios--;
    req_maybe_finish(r);
    pump(d);
}

static bool range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

static int m_loopback(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    const uint64_t *in = a->scalar_in;
    uint64_t out_off = in[0], in_off = in[1], len = in[2], in_len = in[3];
    if (!cl->win) {
        return -ENXIO;
    }
    uint64_t ws = dext_buffer_capacity(cl->win);
    uint64_t chunk = d->fifo_size;
    if (len > DXU_UC_XFER_MAX || in_len < len || in_len > DXU_UC_XFER_MAX ||
        (in_len > len && len > chunk) || !range_ok(out_off, len, ws) ||
        !range_ok(in_off, in_len, ws) ||
        (len && in_len && out_off < in_off + in_len && in_off < out_off + len)) {
        return -EINVAL;
    }
    if (cl->inflight >= DXU_UC_MAX_INFLIGHT) {
        return -EAGAIN;
    }
    if (d->stopping) {
        return -ECANCELED;
    }
    Req *r = g_new0(Req, 1);
    r->cl = cl;
    r->ref = a->async_ref;
    r->tag = in[4];
    r->win = cl->win;
    r->out_off = out_off;
    r->in_off = in_off;
    r->len = (uint32_t)len;
    r->in_len = (uint32_t)in_len;
    r->chunks = len ? (unsigned)((len + chunk - 1) / chunk) : 1;
    r->t_submit = dext_time_ns();
    r->queued = true;
    cl->ref++;
    cl->inflight++;
    d->st.lb_requests++;
    a->scalar_out[0] = r->chunks;
    /* From here on the request completes (possibly with an error) exactly
     * once, even if none of its transfers could be submitted. */
    g_queue_push_tail(&d->pending, r);
    pump(d);
    return 0;
}

static int m_bulk_in(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    uint64_t off = a->scalar_in[0], len = a->scalar_in[1];
    if (!cl->win) {
        return -ENXIO;
    }
    if (len == 0 || len > DXU_UC_XFER_MAX || !range_ok(off, len, dext_buffer_capacity(cl->win))) {
        return -EINVAL;
    }
    if (cl->inflight >= DXU_UC_MAX_INFLIGHT || d->ios + 1 > MAX_IOS) {
        return -EAGAIN;
    }
    Req *r = g_new0(Req, 1);
    r->cl = cl;
    r->ref = a->async_ref;
    r->tag = a->scalar_in[2];
    r->win = cl->win;
    r->in_len = (uint32_t)len;
    r->chunks = 1;
    r->t_submit = dext_time_ns();
    int rc = xfer_submit(d, r, true, off, (uint32_t)len);
    if (rc < 0) {
        g_free(r);
        return rc;
    }
    cl->ref++;
    cl->inflight++;
    d->st.lb_requests++;
    a->scalar_out[0] = 1;
    return 0;
}

/* ---- user client ------------------------------------------------------------- */

static int m_info(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    uint64_t *o = a->scalar_out;
    o[0] = DXU_UC_VERSION;
    o[1] = d->speed;
    o[2] = d->alt;
    o[3] = d->fifo_size;
    o[4] = cl->win ? dext_buffer_capacity(cl->win) : 0;
    o[5] = d->bulk_mps;
    o[6] = d->intr_mps;
    o[7] = d->version;
    return 0;
}

static int m_set_window(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    uint64_t size = a->scalar_in[0];
    DextBuffer *b;
    if (size < DXU_UC_WINDOW_MIN || size > DXU_UC_WINDOW_MAX) {
        return -EINVAL;
    }
    if (cl->inflight) {
        return -EBUSY;
    }
    size = (size + 4095) & ~4095ull;
    int rc = dext_usbhost_interface_create_io_buffer(cl->d->intf, DEXT_DMA_INOUT, size, &b);
    if (rc < 0) {
        return rc;
    }
    if (cl->win) {
        g_ptr_array_add(cl->old_wins, cl->win);
    }
    cl->win = b;
    a->scalar_out[0] = size;
    return 0;
}

static int m_subscribe(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    if (cl->nsubs >= DXU_UC_MAX_SUBS) {
        return -ENOSPC;
    }
    for (unsigned k = 0; k < cl->nsubs; k++) {
        if (cl->subs[k] == a->async_ref) {
            return -EEXIST;
        }
    }
    cl->subs[cl->nsubs++] = a->async_ref;
    a->scalar_out[0] = cl->d->st.event_seq_next;
    return 0;
}

static int m_unsubscribe(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    for (unsigned k = 0; k < cl->nsubs; k++) {
        if (cl->subs[k] == a->scalar_in[0]) {
            dext_user_client_complete_async(uc, cl->subs[k], -ECANCELED, NULL, 0);
            cl->subs[k] = cl->subs[--cl->nsubs];
            return 0;
        }
    }
    return -ENOENT;
}

static int m_reg_read(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    uint32_t v;
    if (a->scalar_in[0] > 0xffff) {
        return -EINVAL;
    }
    int rc = reg_read(cl->d, (uint16_t)a->scalar_in[0], &v);
    if (rc == 0) {
        a->scalar_out[0] = v;
    }
    return uc_err(rc);
}

static int m_reg_write(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    if (a->scalar_in[0] > 0xffff || a->scalar_in[1] > UINT32_MAX) {
        return -EINVAL;
    }
    uint32_t v = (uint32_t)a->scalar_in[1];
    uint8_t b[4] = { v, v >> 8, v >> 16, v >> 24 };
    return vendor_out(cl->d, DEXTLAB_USB_REQ_WRITE_REG, 0, (uint16_t)a->scalar_in[0], b, 4);
}

static int m_set_event_rate(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    if (a->scalar_in[0] > DEXTLAB_USB_EVENT_RATE_MAX) {
        return -EINVAL;
    }
    return vendor_out(cl->d, DEXTLAB_USB_REQ_SET_EVENT_RATE, (uint16_t)a->scalar_in[0], 0, NULL,
                      0);
}

static int m_trigger_events(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    if (a->scalar_in[0] < 1 || a->scalar_in[0] > DEXTLAB_USB_TRIGGER_MAX ||
        a->scalar_in[1] > 0xffff) {
        return -EINVAL;
    }
    return vendor_out(cl->d, DEXTLAB_USB_REQ_TRIGGER_EVENTS, (uint16_t)a->scalar_in[0],
                      (uint16_t)a->scalar_in[1], NULL, 0);
}

static DextUsbHostPipe *pipe_of(Drv *d, uint64_t ep)
{
    switch (ep) {
    case DEXTLAB_USB_EP_BULK_OUT: return d->out;
    case DEXTLAB_USB_EP_BULK_IN: return d->in;
    case DEXTLAB_USB_EP_INTR_IN: return d->intr;
    default: return NULL;
    }
}

static int m_force_stall(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    if (!pipe_of(cl->d, a->scalar_in[0])) {
        return -EINVAL;
    }
    return vendor_out(cl->d, DEXTLAB_USB_REQ_FORCE_STALL, 0, (uint16_t)a->scalar_in[0], NULL, 0);
}

static int m_clear_stall(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    DextUsbHostPipe *p = pipe_of(d, a->scalar_in[0]);
    if (!p) {
        return -EINVAL;
    }
    bool intr = p == d->intr;
    if (intr) {
        /* Reads queued behind the stalled one are abandoned and armed anew. */
        ev_disarm(d);
        dext_usbhost_pipe_abort(p);
    }
    int rc = uc_err(dext_usbhost_pipe_clear_stall(p));
    if (rc == 0) {
        d->st.clears++;
    }
    if (intr && !d->stopping) {
        ev_arm_all(d);
    }
    return rc;
}

static int m_select_alt(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    uint64_t alt = a->scalar_in[0];
    if (alt >= DEXTLAB_USB_NUM_ALTS) {
        return -EINVAL;
    }
    if (d->ios || !g_queue_is_empty(&d->pending)) {
        return -EBUSY;
    }
    ev_disarm(d);
    int rc = dext_usbhost_interface_select_alt(d->intf, (uint8_t)alt);
    if (rc == 0) {
        d->alt = (uint8_t)alt;
        d->st.alt = d->alt;
        d->st.alt_switches++;
    }
    /* The old pipes are closed whatever happened: take the current ones. */
    int rc2 = copy_pipes(d);
    if (rc2 == 0) {
        ev_arm_all(d);
    } else {
        DEXT_ERROR("pipes after alternate setting %u: %s", (unsigned)alt, g_strerror(-rc2));
    }
    return uc_err(rc < 0 ? rc : rc2);
}

static int m_stats(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    memcpy(a->struct_out, &cl->d->st, sizeof(struct dxu_uc_stats));
    a->struct_out_size = sizeof(struct dxu_uc_stats);
    return 0;
}

static int m_reset_fifo(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    return vendor_out(cl->d, DEXTLAB_USB_REQ_RESET_FIFO, 0, 0, NULL, 0);
}

static const DextMethod methods[DXU_UC_SEL_COUNT] = {
    [DXU_UC_SEL_INFO] = { m_info, 0, 0, 8, 0, false },
    [DXU_UC_SEL_SET_WINDOW] = { m_set_window, 1, 0, 1, 0, false },
    [DXU_UC_SEL_LOOPBACK] = { m_loopback, 5, 0, 1, 0, true },
    [DXU_UC_SEL_SUBSCRIBE] = { m_subscribe, 0, 0, 1, 0, true },
    [DXU_UC_SEL_UNSUBSCRIBE] = { m_unsubscribe, 1, 0, 0, 0, false },
    [DXU_UC_SEL_REG_READ] = { m_reg_read, 1, 0, 1, 0, false },
    [DXU_UC_SEL_REG_WRITE] = { m_reg_write, 2, 0, 0, 0, false },
    [DXU_UC_SEL_SET_EVENT_RATE] = { m_set_event_rate, 1, 0, 0, 0, false },
    [DXU_UC_SEL_TRIGGER_EVENTS] = { m_trigger_events, 2, 0, 0, 0, false },
    [DXU_UC_SEL_FORCE_STALL] = { m_force_stall, 1, 0, 0, 0, false },
    [DXU_UC_SEL_CLEAR_STALL] = { m_clear_stall, 1, 0, 0, 0, false },
    [DXU_UC_SEL_SELECT_ALT] = { m_select_alt, 1, 0, 0, 0, false },
    [DXU_UC_SEL_STATS] = { m_stats, 0, 0, 0, sizeof(struct dxu_uc_stats), false },
    [DXU_UC_SEL_RESET_FIFO] = { m_reset_fifo, 0, 0, 0, 0, false },
    [DXU_UC_SEL_BULK_IN] = { m_bulk_in, 3, 0, 1, 0, true },
};

static int uc_memory(DextUserClient *uc, void *ctx, uint32_t type, DextBuffer **out, bool *ro)
{
    Client *cl = ctx;
    if (type != DXU_UC_MEM_WINDOW) {
        return -EINVAL;
    }
    if (!cl->win) {
        return -ENXIO;
    }
    *out = cl->win;
    *ro = false;
    return 0;
}

static void uc_closed(DextUserClient *uc, void *ctx)
{
    Client *cl = ctx;
    g_ptr_array_remove(cl->d->clients, cl);
    cl->uc = NULL;
    cl->nsubs = 0;
    /* Requests in flight keep the client and its window alive and finish
     * silently. */
    client_unref(cl);
}

static const DextUserClientOps uc_ops = { uc_memory, uc_closed };

static int drv_new_uc(DextService *svc, DextUserClient *uc)
{
    Drv *d = dext_service_get_priv(svc);
    if (!d) {
        return -ENODEV;
    }
    Client *cl = g_new0(Client, 1);
    cl->ref = 1;
    cl->d = d;
    cl->uc = uc;
    cl->old_wins = g_ptr_array_new_with_free_func((GDestroyNotify)dext_buffer_release);
    g_ptr_array_add(d->clients, cl);
    dext_user_client_set_dispatch(uc, methods, G_N_ELEMENTS(methods), &uc_ops, cl);
    return 0;
}

/* ---- lifecycle --------------------------------------------------------------- */

static void drv_free(Drv *d)
{
    d->stopping = true;
    fail_pending(d);
    if (d->out) {
        dext_usbhost_pipe_abort(d->out);
        dext_usbhost_pipe_abort(d->in);
        dext_usbhost_pipe_abort(d->intr);
    }
    if (d->evbuf) {
        dext_buffer_release(d->evbuf);
    }
    if (d->intf) {
        dext_usbhost_interface_close(d->intf);
    }
    g_ptr_array_free(d->clients, TRUE);
    g_free(d);
}

static int drv_start(DextService *svc)
{
    Drv *d = g_new0(Drv, 1);
    uint32_t id = 0;
    int rc;
    d->svc = svc;
    d->clients = g_ptr_array_new();
    if ((rc = dext_service_usb_interface(svc, &d->intf)) < 0) {
        DEXT_ERROR("no USB interface provider: %s", g_strerror(-rc));
        d->intf = NULL;
        goto fail;
    }
    const DextUsbDeviceDescriptor *dd = dext_usbhost_interface_device_descriptor(d->intf);
    const DextUsbInterfaceDescriptor *id_ = dext_usbhost_interface_descriptor(d->intf);
    if (!dd || !id_ || dd->idVendor != DEXTLAB_USB_VID || dd->idProduct != DEXTLAB_USB_PID ||
        id_->bInterfaceClass != DEXTLAB_USB_IFACE_CLASS ||
        id_->bInterfaceSubClass != DEXTLAB_USB_IFACE_SUBCLASS) {
        DEXT_ERROR("not a dextlab-usb interface");
        rc = -ENODEV;
        d->intf = NULL;
        goto fail;
    }
    d->speed = dext_usbhost_interface_speed(d->intf);
    d->alt = id_->bAlternateSetting;
    if ((rc = dext_usbhost_interface_open(d->intf)) < 0) {
        DEXT_ERROR("interface open: %s", g_strerror(-rc));
        d->intf = NULL;
        goto fail;
    }
    if ((rc = copy_pipes(d)) < 0) {
        goto fail;
    }
    if ((rc = reg_read(d, DEXTLAB_USB_REG_ID, &id)) < 0 ||
        (rc = reg_read(d, DEXTLAB_USB_REG_VERSION, &d->version)) < 0 ||
        (rc = reg_read(d, DEXTLAB_USB_REG_FIFO_SIZE, &d->fifo_size)) < 0) {
        DEXT_ERROR("register read: %s", g_strerror(-rc));
        goto fail;
    }
    if (id != DEXTLAB_USB_ID_VALUE || (d->version >> 16) != (DEXTLAB_USB_VERSION_VALUE >> 16) ||
        d->fifo_size < DEXTLAB_USB_FIFO_MIN || d->fifo_size > DEXTLAB_USB_FIFO_MAX) {
        DEXT_ERROR("unexpected device: ID 0x%08x VERSION 0x%08x FIFO %u", id, d->version,
                   d->fifo_size);
        rc = -ENODEV;
        goto fail;
    }
    if ((rc = dext_usbhost_interface_create_io_buffer(d->intf, DEXT_DMA_IN, EV_READS * EV_SLOT,
                                                      &d->evbuf)) < 0) {
        goto fail;
    }
    d->st.version = DXU_UC_VERSION;
    d->st.alt = d->alt;
    ev_arm_all(d);
    if (d->ev_armed == 0) {
        rc = -EIO;
        goto fail;
    }
    dext_service_set_priv(svc, d);
    char product[64] = "", serial[64] = "";
    dext_usbhost_interface_string(d->intf, dd->iProduct, product, sizeof(product));
    dext_usbhost_interface_string(d->intf, dd->iSerialNumber, serial, sizeof(serial));
    DEXT_INFO("\"%s\" (serial \"%s\") v%u.%u at speed %u, FIFO %u bytes, bulk mps %u, "
              "interrupt mps %u", product, serial, d->version >> 16, d->version & 0xffff,
              d->speed, d->fifo_size, d->bulk_mps, d->intr_mps);
    return 0;

fail:
    drv_free(d);
    return rc;
}

static void drv_stop(DextService *svc)
{
    Drv *d = dext_service_get_priv(svc);
    DEXT_INFO("stopping: %" G_GUINT64_FORMAT " loopbacks ok, %" G_GUINT64_FORMAT " failed, %"
              G_GUINT64_FORMAT " events", d->st.lb_ok, d->st.lb_failed, d->st.events);
    dext_service_set_priv(svc, NULL);
    drv_free(d);
}

static const DextClassOps dxu_class = {
    .name = DXU_UC_CLASS,
    .start = drv_start,
    .stop = drv_stop,
    .new_user_client = drv_new_uc,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &dxu_class, NULL };
    return dext_server_main(argc, argv, classes);
}
