/*
 * dextlab-dma: the driver for the dextlab DMA engine (docs/devices/dextlab-dma.md),
 * written against libdext's public API and the register map only.  It is
 * the model to copy: docs/drivers/dextlab-dma.md walks through it.
 *
 * Shape:
 *   - one serial dispatch queue per hardware queue ("dxl.qN"): its MSI-X
 *     interrupt source delivers there and completions are reaped there;
 *     submissions write descriptors straight from the method that
 *     validated them (no extra thread hop per request); a per-queue mutex
 *     orders the two;
 *   - an admin queue for the error vector: drains the device's error log,
 *     recovers a halted queue;
 *   - the service queue runs Start/Stop and the user-client methods, which
 *     validate a request and hand it to its hardware queue;
 *   - an app's submission ring (dextlab-dma-uc.h) is looked at after each of
 *     its requests completes, on the thread that completed it, so a busy
 *     app submits with no message and no wake-up of ours (ring_drain).
 * Data: each app's window is a DMA buffer shared with the app (zero copy);
 * descriptors point into it.  Hot path: descriptors are written to shared
 * memory, the SQ doorbell and CQ head are posted writes, completions are
 * found by the CQ phase tag: no register read while data moves.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <dext/dext.h>
#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>

#include "hw/dextlab/dextlab-dma-regs.h"
#include "dextlab-dma-uc.h"

#define RING            256             /* SQ and CQ entries per queue */
#define ERRLOG_KEEP     DXL_UC_ERRLOG_MAX
/* An address nothing decodes, for DXL_UC_OP_DIAG_UNMAPPED (bit 46: above
 * any RAM or MMIO window of the emulated machines). */
#define DIAG_UNMAPPED_ADDR (1ull << 46)

typedef struct Drv Drv;

/* A synchronous waiter (DXL_UC_SEL_SUBMIT_WAIT) with two references, the
 * waiting method's and the request's: a method that timed out never
 * leaves the request a dangling pointer. */
typedef struct {
    gint ref;
    GMutex lock;
    GCond cond;
    bool done;
    int status;
    uint64_t data[DXL_UC_CPL_COUNT];
} Waiter;

typedef struct {
    DextBuffer *buf;
    DextDmaCommand *cmd;
    uint64_t iova;
    uint64_t size;
} Window;

typedef struct Client {
    gint ref;                   /* the connection + each request in flight */
    Drv *d;
    GMutex lock;                /* protects uc */
    DextUserClient *uc;         /* NULL once the app closed */
    Window *win;                /* current window (service queue) */
    GPtrArray *old_wins;        /* replaced windows, freed with the client */
    gint inflight;              /* requests not yet finished */
    /* Submission ring.  ring_lock orders drains (any thread) and guards
     * win against DXL_UC_SEL_SET_WINDOW while a ring exists. */
    GMutex ring_lock;
    DextBuffer *ring_buf;
    struct dxl_uc_ring *ring;   /* shared with the app: untrusted */
    uint64_t ring_ref;          /* the completion reference of its requests */
    uint32_t ring_head;         /* ours; the shared head is only written */
    bool ring_closed;           /* the app is gone: take nothing more */
    bool ring_broken;
} Client;

typedef struct Req {
    Client *cl;
    uint64_t win_iova;          /* the window at submission */
    uint32_t op;
    uint32_t qi;
    uint64_t src, dst, len, arg, tag, ref;
    uint64_t submitted;         /* bytes handed to the device */
    uint64_t done;              /* bytes completed successfully */
    uint32_t chunks_out;        /* descriptors in flight */
    uint32_t descs;
    uint32_t crc;
    uint8_t dev_status;
    bool queued;                /* still in HwQueue.pending */
    int status;
    uint64_t t_submit, t_irq;
    Waiter *w;
} Req;

typedef struct {
    Req *r;                     /* NULL: slot free */
    uint32_t len;
} Slot;

typedef struct {
    Drv *d;
    unsigned idx;
    DextQueue *dq;
    DextInterruptSource *irq;
    GMutex lock;                /* ring state and pending, below */
    bool lock_init;
    DextBuffer *sq_buf, *cq_buf;
    DextDmaCommand *sq_cmd, *cq_cmd;
    uint64_t sq_iova, cq_iova;
    struct dxl_dma_desc *sq;
    struct dxl_dma_cpl *cq;
    /* ring state (under lock) */
    uint32_t sq_tail, sq_head, sq_inflight, cq_head;
    uint32_t cq_unacked;        /* reaped, CQ_HEAD not yet written */
    bool quiesced;              /* device reset under way: ring no doorbell */
    uint8_t phase;
    uint32_t gen;               /* bumps on every re-init: stale cookies */
    GQueue pending;             /* Req*, FIFO, not yet fully submitted */
    GPtrArray *to_drain;        /* Client* (ref) whose ring to look at after unlock */
    Slot slots[RING];
    struct dxl_uc_queue_stats st;   /* written here, read atomically */
} HwQueue;

struct Drv {
    DextService *svc;
    DextPciDevice *pci;
    unsigned nq;
    uint32_t version;
    HwQueue q[DXL_DMA_NUM_QUEUES];
    DextQueue *admin_q;
    DextInterruptSource *admin_irq;
    GMutex lock;                /* errlog and the counters below */
    uint64_t irqs_admin, errlog_entries, errlog_overflow, resets;
    uint64_t ring_taken, ring_refused, ring_kicks, ring_drains;     /* atomic */
    struct dxl_uc_errlog_entry errlog[ERRLOG_KEEP];
    uint64_t errlog_seq;
};

#define STAT_ADD(q, field, n) __atomic_fetch_add(&(q)->st.field, (n), __ATOMIC_RELAXED)
#define DRV_ADD(d, field, n) __atomic_fetch_add(&(d)->field, (n), __ATOMIC_RELAXED)

static int ring_drain(Client *cl);

static inline int wr32(Drv *d, uint64_t off, uint32_t v)
{
    return dext_pci_memory_write32(d->pci, DXL_DMA_BAR_REGS, off, v);
}

static inline int rd32(Drv *d, uint64_t off, uint32_t *v)
{
    return dext_pci_memory_read32(d->pci, DXL_DMA_BAR_REGS, off, v);
}

static const char *err_name(unsigned code)
{
    switch (code) {
    case DXL_ERR_OK: return "OK";
    case DXL_ERR_BAD_OPCODE: return "BAD_OPCODE";
    case DXL_ERR_BAD_LENGTH: return "BAD_LENGTH";
    case DXL_ERR_BAD_FLAGS: return "BAD_FLAGS";
    case DXL_ERR_RSVD_FIELD: return "RSVD_FIELD";
    case DXL_ERR_ADDR_WRAP: return "ADDR_WRAP";
    case DXL_ERR_DMA_UNMAPPED: return "DMA_UNMAPPED";
    case DXL_ERR_DMA_MMIO: return "DMA_MMIO";
    case DXL_ERR_DMA_SELF: return "DMA_SELF";
    case DXL_ERR_DEVMEM_RANGE: return "DEVMEM_RANGE";
    case DXL_ERR_OVERLAP: return "OVERLAP";
    case DXL_ERR_DMA_READ: return "DMA_READ";
    case DXL_ERR_DMA_WRITE: return "DMA_WRITE";
    case DXL_ERR_BAD_SQ_BASE: return "BAD_SQ_BASE";
    case DXL_ERR_BAD_SQ_SIZE: return "BAD_SQ_SIZE";
    case DXL_ERR_BAD_CQ_BASE: return "BAD_CQ_BASE";
    case DXL_ERR_BAD_CQ_SIZE: return "BAD_CQ_SIZE";
    case DXL_ERR_BAD_SQ_TAIL: return "BAD_SQ_TAIL";
    case DXL_ERR_BAD_CQ_HEAD: return "BAD_CQ_HEAD";
    case DXL_ERR_SQ_FETCH: return "SQ_FETCH";
    case DXL_ERR_CQ_WRITE: return "CQ_WRITE";
    case DXL_ERR_QUEUE_DISABLED: return "QUEUE_DISABLED";
    case DXL_ERR_REG_ACCESS: return "REG_ACCESS";
    default: return "?";
    }
}

/* ---- windows, clients, requests ------------------------------------------ */

static void window_free(gpointer p)
{
    Window *w = p;
    if (!w) {
        return;
    }
    if (w->cmd) {
        dext_dma_command_complete(w->cmd);
        dext_dma_command_release(w->cmd);
    }
    dext_buffer_release(w->buf);
    g_free(w);
}

static int window_new(Drv *d, uint64_t size, Window **out)
{
    Window *w = g_new0(Window, 1);
    DextDmaSegment seg;
    uint32_t n = 1;
    int rc;
    if ((rc = dext_buffer_create(DEXT_DMA_INOUT, size, 4096, &w->buf)) < 0 ||
        (rc = dext_dma_command_create(d->pci, 64, 0, &w->cmd)) < 0 ||
        (rc = dext_dma_command_prepare(w->cmd, w->buf, 0, size, &seg, &n)) < 0) {
        window_free(w);
        return rc;
    }
    w->iova = seg.address;
    w->size = size;
    *out = w;
    return 0;
}

static void client_unref(Client *cl)
{
    if (g_atomic_int_dec_and_test(&cl->ref)) {
        /* No request is left: the device no longer touches any window. */
        window_free(cl->win);
        g_ptr_array_free(cl->old_wins, TRUE);
        dext_buffer_release(cl->ring_buf);
        g_mutex_clear(&cl->ring_lock);
        g_mutex_clear(&cl->lock);
        g_free(cl);
    }
}

static void waiter_unref(Waiter *w)
{
    if (g_atomic_int_dec_and_test(&w->ref)) {
        g_mutex_clear(&w->lock);
        g_cond_clear(&w->cond);
        g_free(w);
    }
}

/* The request is over (every descriptor it put in flight came back, or
 * was abandoned by a reset): report it exactly once and free it. */
static void req_finish(HwQueue *q, Req *r)
{
    uint64_t data[DXL_UC_CPL_COUNT] = {
        [DXL_UC_CPL_TAG] = r->tag,
        [DXL_UC_CPL_RESULT] = r->op == DXL_UC_OP_CRC32C ? r->crc : r->done,
        [DXL_UC_CPL_DEV_STATUS] = r->dev_status,
        [DXL_UC_CPL_BYTES] = r->done,
        [DXL_UC_CPL_T_SUBMIT] = r->t_submit,
        [DXL_UC_CPL_T_IRQ] = r->t_irq,
        [DXL_UC_CPL_T_DONE] = dext_time_ns(),
        [DXL_UC_CPL_DESCS] = r->descs,
    };
    if (r->status == 0 && r->done != r->len) {
        r->status = -EIO; /* the device reported less than asked */
    }
    if (r->status == 0) {
        STAT_ADD(q, req_ok, 1);
    } else {
        STAT_ADD(q, req_failed, 1);
    }
    if (r->w) {
        Waiter *w = r->w;
        g_mutex_lock(&w->lock);
        w->status = r->status;
        memcpy(w->data, data, sizeof(data));
        w->done = true;
        g_cond_broadcast(&w->cond);
        g_mutex_unlock(&w->lock);
        waiter_unref(w);
    } else {
        Client *cl = r->cl;
        g_mutex_lock(&cl->lock);
        if (cl->uc) {
            int rc = dext_user_client_complete_async(cl->uc, r->ref, r->status, data,
                                                     DXL_UC_CPL_COUNT);
            if (rc < 0 && rc != -ENOTCONN) {
                DEXT_WARN("q%u: completion of request %" G_GUINT64_FORMAT " not sent: %s",
                          q->idx, r->tag, g_strerror(-rc));
            }
        }
        g_mutex_unlock(&cl->lock);
    }
    g_atomic_int_dec_and_test(&r->cl->inflight);
    if (__atomic_load_n(&r->cl->ring, __ATOMIC_ACQUIRE)) {
        /* After the count went down: the app may have published more, and
         * while it had requests in flight it did not kick (ring_drain). */
        if (!q->to_drain) {
            q->to_drain = g_ptr_array_new();
        }
        if (!g_ptr_array_find(q->to_drain, r->cl, NULL)) {
            g_atomic_int_inc(&r->cl->ref);
            g_ptr_array_add(q->to_drain, r->cl);
        }
    }
    client_unref(r->cl);
    g_free(r);
}

/* Unlock a queue, then look at the rings of the clients whose requests it
 * finished (not under q->lock: a drain submits to any queue). */
static void q_unlock(HwQueue *q)
{
    GPtrArray *l = q->to_drain;
    q->to_drain = NULL;
    g_mutex_unlock(&q->lock);
    if (l) {
        for (guint i = 0; i < l->len; i++) {
            Client *cl = l->pdata[i];
            DRV_ADD(q->d, ring_drains, 1);
            ring_drain(cl);
            client_unref(cl);
        }
        g_ptr_array_free(l, TRUE);
    }
}

/* ---- hardware queue: submission and completion (queue thread) ------------- */

static void q_ack_cq(HwQueue *q)
{
    wr32(q->d, DXL_REG_Q(q->idx, DXL_Q_CQ_HEAD), q->cq_head);
    q->cq_unacked = 0;
}

static void q_kick(HwQueue *q)
{
    unsigned n = 0;

    if (q->quiesced) {
        return; /* a doorbell now would hit a reset queue; requests wait */
    }
    for (;;) {
        if (g_queue_is_empty(&q->pending)) {
            break;
        }
        /*
         * CQ occupancy is at most the completions reaped but not yet
         * acknowledged plus the descriptors in flight; keeping the sum
         * below the ring size means the device never stalls on a full CQ,
         * so CQ_HEAD need not be written on every reap.
         */
        if (q->sq_inflight + q->cq_unacked >= RING - 1) {
            if (!q->cq_unacked) {
                break; /* ring full: completions will make room */
            }
            q_ack_cq(q);
            continue;
        }
        Req *r = g_queue_peek_head(&q->pending);
        if (r->op == DXL_UC_OP_CRC32C && r->chunks_out) {
            break; /* CRC chunks chain: each starts from the previous result */
        }
        uint64_t chunk = MIN(r->len - r->submitted, (uint64_t)DXL_DMA_MAX_XFER);
        uint32_t slot = q->sq_tail;
        struct dxl_dma_desc *de = &q->sq[slot];
        bool last = r->submitted + chunk == r->len;
        memset(de, 0, sizeof(*de));
        de->length = (uint32_t)chunk;
        de->cookie = (uint64_t)q->gen << 32 | slot;
        /* One interrupt per request (its last descriptor), or per CRC
         * chunk; error completions interrupt anyway. */
        de->flags = last || r->op == DXL_UC_OP_CRC32C ? DXL_DESC_F_IRQ : 0;
        switch (r->op) {
        case DXL_UC_OP_COPY:
            de->opcode = DXL_OP_COPY;
            de->src = r->win_iova + r->src + r->submitted;
            de->dst = r->win_iova + r->dst + r->submitted;
            break;
        case DXL_UC_OP_FILL:
            de->opcode = DXL_OP_FILL;
            de->src = r->arg;
            de->dst = r->win_iova + r->dst + r->submitted;
            break;
        case DXL_UC_OP_CRC32C:
            de->opcode = DXL_OP_CRC32C;
            de->src = r->win_iova + r->src + r->submitted;
            de->dst = r->crc;
            break;
        case DXL_UC_OP_DIAG_BAD_OPCODE:
            de->opcode = DXL_OP_MAX + 0x40;
            de->src = r->win_iova;
            de->dst = r->win_iova;
            break;
        case DXL_UC_OP_DIAG_UNMAPPED:
            de->opcode = DXL_OP_COPY;
            de->src = DIAG_UNMAPPED_ADDR;
            de->dst = r->win_iova;
            break;
        }
        q->slots[slot].r = r;
        q->slots[slot].len = (uint32_t)chunk;
        r->submitted += chunk;
        r->chunks_out++;
        r->descs++;
        if (last) {
            g_queue_pop_head(&q->pending);
            r->queued = false;
        }
        q->sq_tail = (q->sq_tail + 1) % RING;
        q->sq_inflight++;
        n++;
    }
    if (n) {
        /* Descriptors in memory before the doorbell reaches the device. */
        __atomic_thread_fence(__ATOMIC_RELEASE);
        wr32(q->d, DXL_REG_Q(q->idx, DXL_Q_SQ_TAIL), q->sq_tail);
        STAT_ADD(q, descs, n);
        STAT_ADD(q, doorbells, 1);
    }
}

static void q_complete_one(HwQueue *q, Slot *s, const struct dxl_dma_cpl *c, uint64_t t_irq)
{
    Req *r = s->r;
    r->chunks_out--;
    r->t_irq = t_irq;
    if (c->status == DXL_ERR_OK) {
        if (r->op >= DXL_UC_OP_DIAG_BAD_OPCODE) {
            r->status = -EPROTO; /* the device accepted a bad descriptor */
        } else {
            r->done += s->len;
            if (r->op == DXL_UC_OP_CRC32C) {
                r->crc = c->result;
            }
            STAT_ADD(q, bytes, s->len);
        }
    } else {
        STAT_ADD(q, cpl_errors, 1);
        if (!r->dev_status) {
            r->dev_status = c->status;
        }
        if (r->status == 0) {
            r->status = -EIO;
        }
        if (r->op < DXL_UC_OP_DIAG_BAD_OPCODE) {
            DEXT_WARN("q%u: request %" G_GUINT64_FORMAT ": device error %s (0x%02x) after %u "
                      "bytes of a descriptor", q->idx, r->tag, err_name(c->status), c->status,
                      c->result);
        }
        if (r->queued) {
            /* stop feeding a failed request; descriptors in flight drain */
            g_queue_remove(&q->pending, r);
            r->queued = false;
        }
    }
    s->r = NULL;
    if (r->chunks_out == 0 && !r->queued) {
        req_finish(q, r);
    }
}

/* Reap every new completion (phase tag), tell the device, refill the ring. */
static void q_reap(HwQueue *q, uint64_t t_irq)
{
    unsigned n = 0;
    for (;;) {
        struct dxl_dma_cpl *c = &q->cq[q->cq_head];
        if ((__atomic_load_n(&c->flags, __ATOMIC_ACQUIRE) & DXL_CPL_F_PHASE) != q->phase) {
            break;
        }
        uint32_t slot = (uint32_t)c->cookie;
        if ((uint32_t)(c->cookie >> 32) != q->gen || slot != q->sq_head || !q->slots[slot].r) {
            /* The device completes in order: anything else is stale or
             * corrupt and must not complete someone's request. */
            DEXT_ERROR("q%u: unexpected completion cookie 0x%" G_GINT64_MODIFIER "x at CQ %u "
                       "(expected slot %u gen %u)", q->idx, c->cookie, q->cq_head, q->sq_head,
                       q->gen);
        } else {
            q_complete_one(q, &q->slots[slot], c, t_irq);
            q->sq_head = (q->sq_head + 1) % RING;
            q->sq_inflight--;
        }
        q->cq_head = (q->cq_head + 1) % RING;
        if (q->cq_head == 0) {
            q->phase ^= 1;
        }
        n++;
    }
    if (n) {
        q->cq_unacked += n;
        if (q->cq_unacked >= RING / 4) {
            q_ack_cq(q);
        }
        STAT_ADD(q, completions, n);
    }
    q_kick(q);
}

static void q_irq(void *ctx, uint64_t count, uint64_t time_ns)
{
    HwQueue *q = ctx;
    STAT_ADD(q, irqs, count);
    STAT_ADD(q, irq_calls, 1);
    g_mutex_lock(&q->lock);
    q_reap(q, time_ns);
    q_unlock(q);
}

/* Fail everything the queue holds with @status (reset, halt, stop). */
static void q_abort_all(HwQueue *q, int status, uint8_t dev_status)
{
    while (!g_queue_is_empty(&q->pending)) {
        Req *r = g_queue_pop_head(&q->pending);
        r->queued = false;
        if (r->status == 0) {
            r->status = status;
            r->dev_status = r->dev_status ? r->dev_status : dev_status;
        }
        if (r->chunks_out == 0) {
            req_finish(q, r);
        }
    }
    for (unsigned i = 0; i < RING; i++) {
        Req *r = q->slots[i].r;
        if (!r) {
            continue;
        }
        q->slots[i].r = NULL;
        r->chunks_out--;
        if (r->status == 0) {
            r->status = status;
            r->dev_status = r->dev_status ? r->dev_status : dev_status;
        }
        if (r->chunks_out == 0) {
            req_finish(q, r);
        }
    }
}

static void q_reset_state(HwQueue *q)
{
    q->sq_tail = q->sq_head = q->sq_inflight = q->cq_head = q->cq_unacked = 0;
    q->phase = 1;
    q->gen++;
    memset(q->cq, 0, RING * sizeof(*q->cq));
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Program rings and coalescing, then enable (all posted writes). */
static void q_program(HwQueue *q)
{
    Drv *d = q->d;
    unsigned i = q->idx;
    wr32(d, DXL_REG_Q(i, DXL_Q_SQ_BASE_LO), (uint32_t)q->sq_iova);
    wr32(d, DXL_REG_Q(i, DXL_Q_SQ_BASE_HI), (uint32_t)(q->sq_iova >> 32));
    wr32(d, DXL_REG_Q(i, DXL_Q_SQ_SIZE), RING);
    wr32(d, DXL_REG_Q(i, DXL_Q_CQ_BASE_LO), (uint32_t)q->cq_iova);
    wr32(d, DXL_REG_Q(i, DXL_Q_CQ_BASE_HI), (uint32_t)(q->cq_iova >> 32));
    wr32(d, DXL_REG_Q(i, DXL_Q_CQ_SIZE), RING);
    /*
     * Coalescing: an interrupt for every completion that asks for one (the
     * driver asks once per request), no timer.  COAL_USEC counts the VM's
     * virtual time, which under qtest moves only when stepped (dextd now
     * steps it after host time, about 1 ms late at best), so a count
     * threshold would leave its remainder waiting that long or forever.
     * Interrupts that arrive while the handler runs are merged by the
     * interrupt source (its count argument) anyway.
     */
    wr32(d, DXL_REG_Q(i, DXL_Q_COAL_COUNT), 1);
    wr32(d, DXL_REG_Q(i, DXL_Q_COAL_USEC), 0);
    wr32(d, DXL_REG_Q(i, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
}

typedef struct {
    HwQueue *q;
    int status;
    uint8_t dev_status;
    bool reset_queue;           /* Q_CTRL.RESET first (a halted queue) */
} ReinitCtx;

static void q_reinit_block(void *data)
{
    ReinitCtx *c = data;
    HwQueue *q = c->q;
    g_mutex_lock(&q->lock);
    if (c->reset_queue) {
        wr32(q->d, DXL_REG_Q(q->idx, DXL_Q_CTRL), DXL_QCTRL_RESET);
    }
    q_abort_all(q, c->status, c->dev_status);
    q_reset_state(q);
    q_program(q);
    q->quiesced = false;
    q_unlock(q);
}

static void q_recover_block(void *data)
{
    ReinitCtx *c = data;
    DEXT_WARN("q%u halted (%s): resetting the queue, failing its requests", c->q->idx,
              err_name(c->dev_status));
    STAT_ADD(c->q, halts, 1);
    q_reinit_block(c);
    g_free(c);
}

/* Called by the submitting method: queue the requests and ring once. */
static void q_enqueue(HwQueue *q, Req *const *reqs, unsigned n)
{
    g_mutex_lock(&q->lock);
    for (unsigned i = 0; i < n; i++) {
        g_queue_push_tail(&q->pending, reqs[i]);
        reqs[i]->queued = true;
    }
    q_kick(q);
    g_mutex_unlock(&q->lock);
}

static void q_abort_block(void *data)
{
    HwQueue *q = data;
    g_mutex_lock(&q->lock);
    q_abort_all(q, -ECANCELED, 0);
    q_unlock(q);
}

/* ---- admin / error vector ------------------------------------------------- */

static void admin_irq(void *ctx, uint64_t count, uint64_t time_ns)
{
    Drv *d = ctx;
    uint32_t n = 0, ovf = 0;
    g_mutex_lock(&d->lock);
    d->irqs_admin += count;
    g_mutex_unlock(&d->lock);
    /* Register reads are fine here: errors are the slow path. */
    if (rd32(d, DXL_REG_ERR_COUNT, &n) < 0) {
        return;
    }
    /* Bounded by the FIFO depth; errors added meanwhile raise the vector
     * again. */
    for (uint32_t i = 0; i < MIN(n, (uint32_t)DXL_DMA_ERRLOG_DEPTH); i++) {
        uint32_t head = 0, lo = 0, hi = 0;
        if (rd32(d, DXL_REG_ERR_HEAD, &head) < 0 || rd32(d, DXL_REG_ERR_ADDR_LO, &lo) < 0 ||
            rd32(d, DXL_REG_ERR_ADDR_HI, &hi) < 0) {
            return;
        }
        wr32(d, DXL_REG_ERR_POP, 1);
        unsigned code = head & DXL_ERRH_CODE_MASK;
        unsigned qi = (head & DXL_ERRH_QUEUE_MASK) >> DXL_ERRH_QUEUE_SHIFT;
        unsigned idx = (head & DXL_ERRH_INDEX_MASK) >> DXL_ERRH_INDEX_SHIFT;
        uint64_t addr = (uint64_t)hi << 32 | lo;
        g_mutex_lock(&d->lock);
        d->errlog_entries++;
        struct dxl_uc_errlog_entry *e = &d->errlog[d->errlog_seq % ERRLOG_KEEP];
        e->seq = ++d->errlog_seq;
        e->addr = addr;
        e->code = code;
        e->queue = qi;
        e->index = idx;
        g_mutex_unlock(&d->lock);
        DEXT_WARN("device error %s (0x%02x) queue %u slot/offset 0x%x addr 0x%" G_GINT64_MODIFIER
                  "x", err_name(code), code, qi, idx, addr);
        if ((code == DXL_ERR_SQ_FETCH || code == DXL_ERR_CQ_WRITE) && qi < d->nq) {
            ReinitCtx *c = g_new0(ReinitCtx, 1);
            c->q = &d->q[qi];
            c->status = -EIO;
            c->dev_status = (uint8_t)code;
            c->reset_queue = true;
            if (dext_queue_dispatch_async(d->q[qi].dq, q_recover_block, c) < 0) {
                g_free(c);
            }
        }
    }
    if (rd32(d, DXL_REG_ERR_OVERFLOW, &ovf) == 0) {
        g_mutex_lock(&d->lock);
        d->errlog_overflow = ovf;
        g_mutex_unlock(&d->lock);
    }
    wr32(d, DXL_REG_INT_STATUS, DXL_INT_ERROR); /* W1C the latched cause */
}

/* ---- start / stop -------------------------------------------------------- */

static int prepare1(DextDmaCommand *c, DextBuffer *b, uint64_t *iova)
{
    DextDmaSegment seg;
    uint32_t n = 1;
    int rc = dext_dma_command_prepare(c, b, 0, dext_buffer_length(b), &seg, &n);
    if (rc == 0) {
        *iova = seg.address;
    }
    return rc;
}

/* Release everything of a queue; safe on a partly set-up one. */
static void q_teardown(HwQueue *q)
{
    dext_interrupt_source_destroy(q->irq);
    q->irq = NULL;
    if (q->dq) {
        /* Requests left here belong to clients that are gone. */
        dext_queue_dispatch_sync(q->dq, q_abort_block, q, 10000);
        dext_queue_destroy(q->dq);
        q->dq = NULL;
    }
    DextDmaCommand *cmds[] = { q->sq_cmd, q->cq_cmd };
    for (unsigned i = 0; i < G_N_ELEMENTS(cmds); i++) {
        if (cmds[i]) {
            dext_dma_command_complete(cmds[i]);
            dext_dma_command_release(cmds[i]);
        }
    }
    dext_buffer_release(q->sq_buf);
    dext_buffer_release(q->cq_buf);
    q->sq_cmd = q->cq_cmd = NULL;
    q->sq_buf = q->cq_buf = NULL;
    if (q->lock_init) {
        g_mutex_clear(&q->lock);
        q->lock_init = false;
    }
}

static int q_setup(Drv *d, unsigned i)
{
    HwQueue *q = &d->q[i];
    char name[32];
    int rc;
    q->d = d;
    q->idx = i;
    g_queue_init(&q->pending);
    g_mutex_init(&q->lock);
    q->lock_init = true;
    snprintf(name, sizeof(name), "dxl.q%u", i);
    if ((rc = dext_queue_create(name, &q->dq)) < 0 ||
        (rc = dext_buffer_create(DEXT_DMA_OUT, RING * sizeof(struct dxl_dma_desc), 4096,
                                 &q->sq_buf)) < 0 ||
        (rc = dext_buffer_create(DEXT_DMA_IN, RING * sizeof(struct dxl_dma_cpl), 4096,
                                 &q->cq_buf)) < 0 ||
        (rc = dext_dma_command_create(d->pci, 64, 0, &q->sq_cmd)) < 0 ||
        (rc = dext_dma_command_create(d->pci, 64, 0, &q->cq_cmd)) < 0 ||
        (rc = prepare1(q->sq_cmd, q->sq_buf, &q->sq_iova)) < 0 ||
        (rc = prepare1(q->cq_cmd, q->cq_buf, &q->cq_iova)) < 0) {
        return rc;
    }
    q->sq = dext_buffer_map(q->sq_buf);
    q->cq = dext_buffer_map(q->cq_buf);
    q_reset_state(q);
    return dext_interrupt_source_create(d->pci, DXL_DMA_VEC_QUEUE(i), q->dq, q_irq, q, &q->irq);
}

/* No more doorbells from any context until the queue is set up again. */
static void quiesce_queues(Drv *d)
{
    for (unsigned i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        HwQueue *q = &d->q[i];
        if (q->lock_init) {
            g_mutex_lock(&q->lock);
            q->quiesced = true;
            g_mutex_unlock(&q->lock);
        }
    }
}

/* Quiesce the device, free everything; safe on a partly started driver. */
static void drv_teardown(Drv *d)
{
    quiesce_queues(d);
    /* Engine first: after the flush no DMA reaches memory we free. */
    wr32(d, DXL_REG_CTRL, DXL_CTRL_RESET);
    dext_pci_set_bus_master_enable(d->pci, false);
    dext_pci_flush(d->pci);
    dext_interrupt_source_destroy(d->admin_irq);
    for (unsigned i = 0; i < DXL_DMA_NUM_QUEUES; i++) {
        q_teardown(&d->q[i]);
    }
    if (d->admin_q) {
        dext_queue_destroy(d->admin_q);
    }
    dext_pci_set_memory_enable(d->pci, false);
    dext_pci_close(d->pci);
    g_mutex_clear(&d->lock);
    g_free(d);
}

static int drv_start(DextService *svc)
{
    Drv *d;
    uint32_t id = 0, cap = 0, st = 0;
    int rc;
    DextPciDevice *pci = dext_service_pci(svc);

    if (!pci) {
        return -ENODEV;
    }
    if ((rc = dext_pci_open(pci)) < 0) {
        return rc;
    }
    d = g_new0(Drv, 1);
    g_mutex_init(&d->lock);
    d->svc = svc;
    d->pci = pci;
    if ((rc = dext_pci_set_memory_enable(pci, true)) < 0 ||
        (rc = dext_pci_set_bus_master_enable(pci, true)) < 0 ||
        (rc = rd32(d, DXL_REG_ID, &id)) < 0 || (rc = rd32(d, DXL_REG_VERSION, &d->version)) < 0 ||
        (rc = rd32(d, DXL_REG_CAP, &cap)) < 0) {
        goto fail;
    }
    if (id != DXL_DMA_ID_MAGIC || (d->version >> 16) != DXL_DMA_VERSION_MAJOR) {
        DEXT_ERROR("%s: not a dextlab-dma v1 (ID 0x%08x VERSION 0x%08x)", dext_pci_address(pci),
                   id, d->version);
        rc = -ENODEV;
        goto fail;
    }
    const uint32_t need = DXL_CAP_OP_COPY | DXL_CAP_OP_FILL | DXL_CAP_OP_CRC32C | DXL_CAP_ERRLOG;
    d->nq = MIN(cap & DXL_CAP_NUM_QUEUES_MASK, (unsigned)DXL_DMA_NUM_QUEUES);
    if ((cap & need) != need || d->nq == 0 ||
        dext_pci_msix_count(pci) < DXL_DMA_VEC_QUEUE(d->nq - 1) + 1) {
        DEXT_ERROR("%s: CAP 0x%08x with %u MSI-X vectors lacks what this driver needs",
                   dext_pci_address(pci), cap, dext_pci_msix_count(pci));
        rc = -ENOTSUP;
        goto fail;
    }
    /* A known state, whatever the previous owner left. */
    wr32(d, DXL_REG_CTRL, DXL_CTRL_RESET);
    d->resets = 1;
    if ((rc = dext_queue_create("dxl.admin", &d->admin_q)) < 0 ||
        (rc = dext_interrupt_source_create(pci, DXL_DMA_VEC_ADMIN, d->admin_q, admin_irq, d,
                                           &d->admin_irq)) < 0) {
        goto fail;
    }
    for (unsigned i = 0; i < d->nq; i++) {
        if ((rc = q_setup(d, i)) < 0) {
            DEXT_ERROR("queue %u set-up failed: %s", i, g_strerror(-rc));
            goto fail;
        }
        q_program(&d->q[i]);
    }
    wr32(d, DXL_REG_INT_MASK, 0);
    wr32(d, DXL_REG_CTRL, DXL_CTRL_ENABLE);
    /* One read per queue at start (never on the data path): a refused ring
     * set-up shows here, not as a silent hang later. */
    for (unsigned i = 0; i < d->nq; i++) {
        if ((rc = rd32(d, DXL_REG_Q(i, DXL_Q_STATUS), &st)) < 0) {
            goto fail;
        }
        if (!(st & DXL_QSTS_ENABLED)) {
            unsigned code = (st & DXL_QSTS_ERR_MASK) >> DXL_QSTS_ERR_SHIFT;
            DEXT_ERROR("queue %u refused its rings: %s (0x%02x)", i, err_name(code), code);
            rc = -EIO;
            goto fail;
        }
    }
    dext_service_set_priv(svc, d);
    DEXT_INFO("%s: dextlab-dma v%u.%u, %u queues x %u entries, MSI-X vectors 0..%u",
              dext_pci_address(pci), d->version >> 16, d->version & 0xffff, d->nq, RING,
              DXL_DMA_VEC_QUEUE(d->nq - 1));
    return 0;

fail:
    drv_teardown(d);
    return rc;
}

static void drv_stop(DextService *svc)
{
    Drv *d = dext_service_get_priv(svc);
    uint64_t ok = 0, failed = 0;
    for (unsigned i = 0; i < d->nq; i++) {
        ok += __atomic_load_n(&d->q[i].st.req_ok, __ATOMIC_RELAXED);
        failed += __atomic_load_n(&d->q[i].st.req_failed, __ATOMIC_RELAXED);
    }
    DEXT_INFO("%s: stopping (%" G_GUINT64_FORMAT " requests done, %" G_GUINT64_FORMAT " failed)",
              dext_pci_address(d->pci), ok, failed);
    dext_service_set_priv(svc, NULL);
    drv_teardown(d);
}

/* ---- user client ---------------------------------------------------------- */

static int m_info(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    uint64_t *o = a->scalar_out;
    o[0] = DXL_UC_VERSION;
    o[1] = d->nq;
    o[2] = cl->win ? cl->win->size : 0;
    o[3] = DXL_UC_REQ_MAX;
    o[4] = DXL_UC_MAX_INFLIGHT;
    o[5] = DXL_DMA_MAX_XFER;
    o[6] = RING;
    o[7] = d->version;
    return 0;
}

static int m_set_window(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    uint64_t size = a->scalar_in[0];
    Window *w;
    if (size < DXL_UC_WINDOW_MIN || size > DXL_UC_WINDOW_MAX) {
        return -EINVAL;
    }
    if (g_atomic_int_get(&cl->inflight)) {
        return -EBUSY;
    }
    size = (size + 4095) & ~4095ull;
    int rc = window_new(cl->d, size, &w);
    if (rc < 0) {
        return rc;
    }
    /* The app may still have the old window mapped: its memory must not go
     * to anyone else while this connection lives. */
    g_mutex_lock(&cl->ring_lock); /* a drain may be checking against it */
    if (cl->win) {
        g_ptr_array_add(cl->old_wins, cl->win);
    }
    cl->win = w;
    g_mutex_unlock(&cl->ring_lock);
    a->scalar_out[0] = size;
    return 0;
}

static bool range_ok(uint64_t off, uint64_t len, uint64_t size)
{
    return off <= size && len <= size - off;
}

/* Validate a request from the app; on success *len_out is its length. */
static int req_check(Client *cl, const uint64_t *in, uint64_t *len_out)
{
    Drv *d = cl->d;
    uint64_t qi = in[0], op = in[1], src = in[2], dst = in[3], len = in[4], arg = in[5];
    if (qi >= d->nq) {
        return -EINVAL;
    }
    if (!cl->win) {
        return -ENXIO; /* DXL_UC_SEL_SET_WINDOW first */
    }
    uint64_t ws = cl->win->size;
    switch (op) {
    case DXL_UC_OP_COPY:
        if (len == 0 || len > DXL_UC_REQ_MAX || !range_ok(src, len, ws) ||
            !range_ok(dst, len, ws) || (src < dst + len && dst < src + len)) {
            return -EINVAL;
        }
        break;
    case DXL_UC_OP_FILL:
        if (len == 0 || len > DXL_UC_REQ_MAX || !range_ok(dst, len, ws)) {
            return -EINVAL;
        }
        break;
    case DXL_UC_OP_CRC32C:
        if (len == 0 || len > DXL_UC_REQ_MAX || !range_ok(src, len, ws) || arg > UINT32_MAX) {
            return -EINVAL;
        }
        break;
    case DXL_UC_OP_DIAG_BAD_OPCODE:
    case DXL_UC_OP_DIAG_UNMAPPED:
        len = DXL_UC_WINDOW_MIN; /* within any window */
        break;
    default:
        return -EINVAL;
    }
    *len_out = len;
    return 0;
}

/* A validated request, accounted to its client (in flight, reference). */
static Req *req_new(Client *cl, const uint64_t *in, uint64_t len, uint64_t ref, Waiter *w)
{
    Req *r = g_new0(Req, 1);
    bool diag = in[1] >= DXL_UC_OP_DIAG_BAD_OPCODE;
    r->cl = cl;
    r->win_iova = cl->win->iova;
    r->op = (uint32_t)in[1];
    r->qi = (uint32_t)in[0];
    r->src = diag ? 0 : in[2];
    r->dst = diag ? 0 : in[3];
    r->len = len;
    r->arg = diag ? 0 : in[5];
    r->crc = (uint32_t)r->arg;
    r->tag = in[6];
    r->ref = ref;
    r->w = w;
    r->t_submit = dext_time_ns();
    STAT_ADD(&cl->d->q[r->qi], requests, 1);
    g_atomic_int_inc(&cl->inflight);
    g_atomic_int_inc(&cl->ref);
    if (w) {
        g_atomic_int_inc(&w->ref);
    }
    return r;
}

static int submit(Client *cl, const uint64_t *in, uint64_t ref, Waiter *w)
{
    uint64_t len;
    int rc = req_check(cl, in, &len);
    if (rc < 0) {
        return rc;
    }
    if (g_atomic_int_get(&cl->inflight) >= DXL_UC_MAX_INFLIGHT) {
        return -EAGAIN;
    }
    Req *r = req_new(cl, in, len, ref, w);
    q_enqueue(&cl->d->q[r->qi], &r, 1);
    return 0;
}

static int m_submit_batch(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    const struct dxl_uc_req *in = a->struct_in;
    size_t n = a->struct_in_size / sizeof(*in);
    uint64_t lens[DXL_UC_BATCH_MAX];
    int rc;
    if (!in || n == 0 || n > DXL_UC_BATCH_MAX || a->struct_in_size % sizeof(*in)) {
        return -EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        if ((rc = req_check(cl, (const uint64_t *)&in[i], &lens[i])) < 0) {
            return rc;
        }
    }
    if (g_atomic_int_get(&cl->inflight) + (int)n > DXL_UC_MAX_INFLIGHT) {
        return -EAGAIN;
    }
    /* grouped per queue: one doorbell per queue for the whole batch */
    Req *byq[DXL_DMA_NUM_QUEUES][DXL_UC_BATCH_MAX];
    unsigned nq[DXL_DMA_NUM_QUEUES] = { 0 };
    for (size_t i = 0; i < n; i++) {
        Req *r = req_new(cl, (const uint64_t *)&in[i], lens[i], a->async_ref, NULL);
        byq[r->qi][nq[r->qi]++] = r;
    }
    for (unsigned qi = 0; qi < d->nq; qi++) {
        if (nq[qi]) {
            q_enqueue(&d->q[qi], byq[qi], nq[qi]);
        }
    }
    rc = 0;
    a->scalar_out[0] = n;
    return rc;
}

/* ---- submission ring -------------------------------------------------------- */

/* An entry the driver refused completes at once, like a failed request. */
static void ring_refuse(Client *cl, uint64_t tag, int status)
{
    uint64_t data[DXL_UC_CPL_COUNT] = { [DXL_UC_CPL_TAG] = tag };
    DRV_ADD(cl->d, ring_refused, 1);
    g_mutex_lock(&cl->lock);
    if (cl->uc) {
        dext_user_client_complete_async(cl->uc, cl->ring_ref, status, data, DXL_UC_CPL_COUNT);
    }
    g_mutex_unlock(&cl->lock);
}

/* ring_drain continued on the service queue (its budget ran out). */
static void ring_drain_block(void *data)
{
    Client *cl = data;
    ring_drain(cl);
    client_unref(cl);
}

/*
 * Take what the app published, then decide who looks next (the protocol is
 * in dextlab-dma-uc.h): with requests of this client in flight, their
 * completions call here again (req_finish), so need_kick stays 0 and the
 * app posts nothing; with none, need_kick is set and the tail read once
 * more after a full fence, the other half of the app's publish, fence,
 * read need_kick.  Runs on any thread, never under a queue's lock.  At most
 * a ring's worth per call: an app refilling it as fast as it is taken (say
 * with entries that are only refused) continues on the service queue
 * instead of holding an interrupt thread that serves other clients.
 */
static int ring_drain(Client *cl)
{
    g_mutex_lock(&cl->ring_lock);
    struct dxl_uc_ring *rg = cl->ring;
    if (!rg || cl->ring_closed || cl->ring_broken) {
        int rc = rg && cl->ring_broken ? -EPROTO : 0;
        g_mutex_unlock(&cl->ring_lock);
        return rc;
    }
    uint32_t budget = DXL_UC_RING_ENTRIES;
    for (;;) {
        uint32_t tail = __atomic_load_n(&rg->tail, __ATOMIC_ACQUIRE);
        uint32_t avail = tail - cl->ring_head;
        if (avail > DXL_UC_RING_ENTRIES) {
            DEXT_WARN("submission ring: tail %u is %u entries ahead of head %u (at most %u): "
                      "the ring is broken, requests in flight still complete", tail, avail,
                      cl->ring_head, DXL_UC_RING_ENTRIES);
            cl->ring_broken = true;
            __atomic_store_n(&rg->status, EPROTO, __ATOMIC_RELEASE);
            __atomic_store_n(&rg->need_kick, 1, __ATOMIC_RELEASE);
            break;
        }
        int room = DXL_UC_MAX_INFLIGHT - g_atomic_int_get(&cl->inflight);
        uint32_t n = MIN(avail, (uint32_t)MAX(room, 0));
        n = MIN(n, MIN((uint32_t)DXL_UC_BATCH_MAX, budget));
        budget -= n;
        Req *byq[DXL_DMA_NUM_QUEUES][DXL_UC_BATCH_MAX];
        unsigned nq[DXL_DMA_NUM_QUEUES] = { 0 };
        for (uint32_t i = 0; i < n; i++) {
            /* one copy, then only the copy is looked at (the app may be
             * rewriting the slot) */
            struct dxl_uc_req e;
            memcpy(&e, &rg->e[(cl->ring_head + i) % DXL_UC_RING_ENTRIES], sizeof(e));
            const uint64_t *in = (const uint64_t *)&e;
            uint64_t len;
            int rc = req_check(cl, in, &len);
            if (rc < 0) {
                ring_refuse(cl, e.tag, rc);
                continue;
            }
            Req *r = req_new(cl, in, len, cl->ring_ref, NULL);
            byq[r->qi][nq[r->qi]++] = r;
        }
        cl->ring_head += n;
        __atomic_store_n(&rg->head, cl->ring_head, __ATOMIC_RELEASE);
        DRV_ADD(cl->d, ring_taken, n);
        for (unsigned qi = 0; qi < cl->d->nq; qi++) {
            if (nq[qi]) {
                q_enqueue(&cl->d->q[qi], byq[qi], nq[qi]);
            }
        }
        if (n < avail) {
            if (room > (int)n && budget) {
                continue; /* a batch's worth taken: more waiting */
            }
            if (room > (int)n) {
                g_atomic_int_inc(&cl->ref);
                if (dext_queue_dispatch_async(dext_service_queue(cl->d->svc), ring_drain_block,
                                              cl) < 0) {
                    client_unref(cl); /* stopping: nothing more is taken anyway */
                }
            }
            /* at the in-flight limit (the completions will be back) or out
             * of budget (the block above will) */
            __atomic_store_n(&rg->need_kick, 0, __ATOMIC_RELEASE);
            break;
        }
        if (g_atomic_int_get(&cl->inflight) > 0) {
            __atomic_store_n(&rg->need_kick, 0, __ATOMIC_RELEASE);
            break;
        }
        __atomic_store_n(&rg->need_kick, 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        if (__atomic_load_n(&rg->tail, __ATOMIC_RELAXED) == cl->ring_head) {
            break;
        }
        /* published meanwhile: ours to take (its kick finds nothing) */
        __atomic_store_n(&rg->need_kick, 0, __ATOMIC_RELAXED);
    }
    int rc = cl->ring_broken ? -EPROTO : 0;
    g_mutex_unlock(&cl->ring_lock);
    return rc;
}

static int m_ring_attach(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    DextBuffer *b;
    if (cl->ring) {
        return -EBUSY;
    }
    size_t size = (sizeof(struct dxl_uc_ring) + 4095) & ~(size_t)4095;
    int rc = dext_buffer_create(DEXT_DMA_INOUT, size, 4096, &b);
    if (rc < 0) {
        return rc;
    }
    struct dxl_uc_ring *rg = dext_buffer_map(b);
    memset(rg, 0, size);
    rg->need_kick = 1;
    g_mutex_lock(&cl->ring_lock);
    cl->ring_buf = b;
    cl->ring_ref = a->async_ref;
    cl->ring_head = 0;
    /* last: req_finish looks at cl->ring without the lock */
    __atomic_store_n(&cl->ring, rg, __ATOMIC_RELEASE);
    g_mutex_unlock(&cl->ring_lock);
    a->scalar_out[0] = DXL_UC_RING_ENTRIES;
    return 0;
}

static int m_ring_kick(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    if (!cl->ring) {
        return -ENXIO;
    }
    DRV_ADD(cl->d, ring_kicks, 1);
    return ring_drain(cl);
}

static int m_submit(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    static uint64_t next_id;
    int rc = submit(ctx, a->scalar_in, a->async_ref, NULL);
    if (rc == 0) {
        a->scalar_out[0] = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED);
    }
    return rc;
}

static int m_submit_wait(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    uint64_t ms = a->scalar_in[7];
    if (ms == 0 || ms > 30000) {
        return -EINVAL;
    }
    Waiter *w = g_new0(Waiter, 1);
    w->ref = 1;
    g_mutex_init(&w->lock);
    g_cond_init(&w->cond);
    int rc = submit(ctx, a->scalar_in, 0, w);
    if (rc == 0) {
        gint64 end = g_get_monotonic_time() + (gint64)ms * 1000;
        g_mutex_lock(&w->lock);
        while (!w->done && g_cond_wait_until(&w->cond, &w->lock, end)) {
        }
        a->scalar_out[0] = (uint64_t)(int64_t)(w->done ? w->status : -ETIMEDOUT);
        if (w->done) {
            memcpy(&a->scalar_out[1], w->data, sizeof(w->data));
        }
        g_mutex_unlock(&w->lock);
    }
    waiter_unref(w);
    return rc;
}

static uint64_t rd64(Drv *d, uint64_t lo_off)
{
    uint32_t hi = 0, lo = 0, hi2 = 0;
    for (int i = 0; i < 4; i++) {
        rd32(d, lo_off + 4, &hi);
        rd32(d, lo_off, &lo);
        rd32(d, lo_off + 4, &hi2);
        if (hi == hi2) {
            break;
        }
    }
    return (uint64_t)hi2 << 32 | lo;
}

static int m_stats(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    struct dxl_uc_stats *s = a->struct_out;
    memset(s, 0, sizeof(*s));
    s->version = DXL_UC_VERSION;
    s->num_queues = d->nq;
    s->dev_desc = rd64(d, DXL_REG_STAT_DESC_LO);
    s->dev_bytes = rd64(d, DXL_REG_STAT_BYTES_LO);
    s->dev_errors = rd64(d, DXL_REG_STAT_ERRORS_LO);
    s->dev_irqs = rd64(d, DXL_REG_STAT_IRQS_LO);
    s->dev_doorbells = rd64(d, DXL_REG_STAT_DOORBELLS_LO);
    g_mutex_lock(&d->lock);
    s->irqs_admin = d->irqs_admin;
    s->errlog_entries = d->errlog_entries;
    s->errlog_overflow = d->errlog_overflow;
    s->resets = d->resets;
    g_mutex_unlock(&d->lock);
    s->ring_taken = __atomic_load_n(&d->ring_taken, __ATOMIC_RELAXED);
    s->ring_refused = __atomic_load_n(&d->ring_refused, __ATOMIC_RELAXED);
    s->ring_kicks = __atomic_load_n(&d->ring_kicks, __ATOMIC_RELAXED);
    s->ring_drains = __atomic_load_n(&d->ring_drains, __ATOMIC_RELAXED);
    for (unsigned i = 0; i < d->nq; i++) {
        const uint64_t *src = (const uint64_t *)&d->q[i].st;
        uint64_t *dst = (uint64_t *)&s->q[i];
        for (size_t k = 0; k < sizeof(s->q[i]) / 8; k++) {
            dst[k] = __atomic_load_n(&src[k], __ATOMIC_RELAXED);
        }
    }
    a->struct_out_size = sizeof(*s);
    return 0;
}

static int m_reset(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    DEXT_INFO("%s: reset requested by %s", dext_pci_address(d->pci),
              dext_user_client_app_id(uc));
    /* Engine first: after the flush the device holds no work. */
    quiesce_queues(d);
    wr32(d, DXL_REG_CTRL, DXL_CTRL_RESET);
    int rc = dext_pci_flush(d->pci);
    if (rc < 0) {
        return rc;
    }
    for (unsigned i = 0; i < d->nq; i++) {
        ReinitCtx c = { .q = &d->q[i], .status = -ECANCELED };
        if ((rc = dext_queue_dispatch_sync(d->q[i].dq, q_reinit_block, &c, 10000)) < 0) {
            return rc;
        }
    }
    wr32(d, DXL_REG_INT_MASK, 0);
    wr32(d, DXL_REG_CTRL, DXL_CTRL_ENABLE);
    if ((rc = dext_pci_flush(d->pci)) < 0) {
        return rc;
    }
    g_mutex_lock(&d->lock);
    a->scalar_out[0] = ++d->resets;
    g_mutex_unlock(&d->lock);
    return 0;
}

static int m_errlog(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Client *cl = ctx;
    Drv *d = cl->d;
    struct dxl_uc_errlog *l = a->struct_out;
    memset(l, 0, sizeof(*l));
    g_mutex_lock(&d->lock);
    uint64_t n = MIN(d->errlog_seq, (uint64_t)ERRLOG_KEEP);
    for (uint64_t i = 0; i < n; i++) {
        l->e[i] = d->errlog[(d->errlog_seq - n + i) % ERRLOG_KEEP];
    }
    l->count = (uint32_t)n;
    l->total = d->errlog_entries;
    g_mutex_unlock(&d->lock);
    a->struct_out_size = sizeof(*l);
    return 0;
}

static const DextMethod methods[DXL_UC_SEL_COUNT] = {
    [DXL_UC_SEL_INFO] = { m_info, 0, 0, 8, 0, false },
    [DXL_UC_SEL_SET_WINDOW] = { m_set_window, 1, 0, 1, 0, false },
    [DXL_UC_SEL_SUBMIT] = { m_submit, 7, 0, 1, 0, true },
    [DXL_UC_SEL_SUBMIT_WAIT] = { m_submit_wait, 8, 0, DXL_UC_CPL_COUNT + 1, 0, false },
    [DXL_UC_SEL_STATS] = { m_stats, 0, 0, 0, sizeof(struct dxl_uc_stats), false },
    [DXL_UC_SEL_RESET] = { m_reset, 0, 0, 1, 0, false },
    [DXL_UC_SEL_ERRLOG] = { m_errlog, 0, 0, 0, sizeof(struct dxl_uc_errlog), false },
    [DXL_UC_SEL_SUBMIT_BATCH] = { m_submit_batch, 0, DEXT_UC_VARIABLE, 1, 0, true },
    [DXL_UC_SEL_RING_ATTACH] = { m_ring_attach, 0, 0, 1, 0, true },
    [DXL_UC_SEL_RING_KICK] = { m_ring_kick, 0, 0, 0, 0, true },
};

static int uc_memory(DextUserClient *uc, void *ctx, uint32_t type, DextBuffer **out, bool *ro)
{
    Client *cl = ctx;
    if (type == DXL_UC_MEM_RING) {
        if (!cl->ring) {
            return -ENXIO; /* DXL_UC_SEL_RING_ATTACH first */
        }
        *out = cl->ring_buf;
        *ro = false;
        return 0;
    }
    if (type != DXL_UC_MEM_WINDOW) {
        return -EINVAL;
    }
    if (!cl->win) {
        return -ENXIO; /* DXL_UC_SEL_SET_WINDOW first */
    }
    *out = cl->win->buf;
    *ro = false;
    return 0;
}

static void uc_closed(DextUserClient *uc, void *ctx)
{
    Client *cl = ctx;
    g_mutex_lock(&cl->ring_lock);
    cl->ring_closed = true;
    g_mutex_unlock(&cl->ring_lock);
    g_mutex_lock(&cl->lock);
    cl->uc = NULL;
    g_mutex_unlock(&cl->lock);
    /* Requests still in flight keep the client and its windows alive and
     * finish silently. */
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
    cl->old_wins = g_ptr_array_new_with_free_func(window_free);
    g_mutex_init(&cl->lock);
    g_mutex_init(&cl->ring_lock);
    dext_user_client_set_dispatch(uc, methods, G_N_ELEMENTS(methods), &uc_ops, cl);
    return 0;
}

static const DextClassOps dxl_class = {
    .name = DXL_UC_CLASS,
    .start = drv_start,
    .stop = drv_stop,
    .new_user_client = drv_new_uc,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &dxl_class, NULL };
    return dext_server_main(argc, argv, classes);
}
