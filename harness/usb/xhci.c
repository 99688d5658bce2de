/*
 * dextlab user-space xHCI driver: controller, rings, commands, transfers.
 * See xhci.h for the contract.  xHCI 1.2 section numbers in comments.
 */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <time.h>

#include "xhci.h"

/* ------------------------------------------------------- register map */

#define CAP_CAPLENGTH     0x00
#define CAP_HCSPARAMS1    0x04
#define CAP_HCSPARAMS2    0x08
#define CAP_HCCPARAMS1    0x10
#define CAP_DBOFF         0x14
#define CAP_RTSOFF        0x18

#define OP_USBCMD         0x00
#define OP_USBSTS         0x04
#define OP_PAGESIZE       0x08
#define OP_CRCR           0x18
#define OP_DCBAAP         0x30
#define OP_CONFIG         0x38
#define OP_PORTSC(n)      (0x400 + 0x10 * ((n) - 1))

#define CMD_RS            (1u << 0)
#define CMD_HCRST         (1u << 1)
#define CMD_INTE          (1u << 2)
#define STS_HCH           (1u << 0)
#define STS_HSE           (1u << 2)
#define STS_CNR           (1u << 11)

#define PORTSC_CCS        (1u << 0)
#define PORTSC_PED        (1u << 1)
#define PORTSC_PR         (1u << 4)
#define PORTSC_PP         (1u << 9)
#define PORTSC_SPEED(v)   (((v) >> 10) & 0xf)
#define PORTSC_CHANGES    0x00fe0000u    /* CSC PEC WRC OCC PRC PLC CEC */
#define PORTSC_PRC        (1u << 21)
#define PORTSC_RW1C       (PORTSC_CHANGES | PORTSC_PED)

#define RT_IMAN(i)        (0x20 + 32 * (i))
#define RT_IMOD(i)        (0x24 + 32 * (i))
#define RT_ERSTSZ(i)      (0x28 + 32 * (i))
#define RT_ERSTBA(i)      (0x30 + 32 * (i))
#define RT_ERDP(i)        (0x38 + 32 * (i))
#define IMAN_IP           (1u << 0)
#define IMAN_IE           (1u << 1)
#define ERDP_EHB          (1u << 3)

/* TRB types and control bits (6.4) */
enum {
    TRB_NORMAL = 1, TRB_SETUP = 2, TRB_DATA = 3, TRB_STATUS = 4,
    TRB_LINK = 6, TRB_EVDATA = 7,
    CMD_ENABLE_SLOT = 9, CMD_DISABLE_SLOT = 10, CMD_ADDRESS_DEV = 11,
    CMD_CONFIG_EP = 12, CMD_EVAL_CTX = 13, CMD_RESET_EP = 14,
    CMD_STOP_EP = 15, CMD_SET_DEQ = 16,
    EV_TRANSFER = 32, EV_CMD_DONE = 33, EV_PORT = 34,
};
#define TRB_C             (1u << 0)
#define TRB_TC            (1u << 1)    /* link: toggle cycle */
#define TRB_ED            (1u << 2)    /* event: event data */
#define TRB_CH            (1u << 4)
#define TRB_IOC           (1u << 5)
#define TRB_IDT           (1u << 6)
#define TRB_TYPE(t)       ((uint32_t)(t) << 10)
#define TRB_GET_TYPE(c)   (((c) >> 10) & 0x3f)
#define TRB_DIR_IN        (1u << 16)

#define TRB_MAX_LEN       (64 * 1024)
#define CMD_RING_TRBS     64
#define EV_RING_TRBS      4096   /* qemu-xhci's largest segment */
/*
 * qemu-xhci drops an event when the event ring is full (real controllers
 * stop until software frees room), and we advance ERDP only once our
 * posted write crossed the qtest socket: so never have more TDs in flight
 * than the ring has room for their completion events.  The reserve covers
 * command completions (one outstanding) and port status changes.
 */
#define EV_RESERVE        128
#define EV_BUDGET         (EV_RING_TRBS - EV_RESERVE)
#define XFER_RING_TRBS    512
#define EP0_RING_TRBS     64

/* endpoint context types (6.2.3) */
enum { EPT_BULK_OUT = 2, EPT_INTR_OUT = 3, EPT_CTRL = 4, EPT_BULK_IN = 6,
       EPT_INTR_IN = 7 };

typedef struct XhciTrb {
    uint64_t param;
    uint32_t status;
    uint32_t control;
} XhciTrb;

/* producer ring (command or transfer); the last slot holds the link TRB */
typedef struct XRing {
    DextXhciDma dma;
    volatile XhciTrb *trb;
    uint32_t n;
    uint32_t enq;
    uint32_t pcs;
    uint32_t used;             /* TRBs owned by the controller */
} XRing;

struct DextXhciXfer {
    struct XEp *ep;
    DextXhciXferFn cb;
    void *opaque;
    uint64_t cookie;           /* event data parameter */
    uint32_t ntrbs;            /* ring slots consumed (incl. link) */
    uint32_t nevents;          /* completion events it may raise (IOC TRBs) */
    uint32_t len;
    uint32_t actual;
    bool control;
    bool got_ed;
    int status;
};

typedef struct XEp {
    bool configured;
    unsigned dci;
    unsigned type;
    XRing ring;
    GQueue pending;            /* DextXhciXfer, oldest first */
    bool halted;
} XEp;

struct DextXhciSlot {
    DextXhci *x;
    unsigned id;
    unsigned port;
    unsigned speed;
    DextXhciDma out_ctx;
    DextXhciDma in_ctx;
    XEp ep[32];                /* by DCI */
    bool gone;
};

struct DextXhci {
    const DextXhciHwOps *ops;
    void *hw;
    uint64_t bar0_size;
    DextXhciConfig cfg;
    unsigned timeout_ms;

    uint32_t caplen, dboff, rtsoff;
    unsigned max_slots, max_ports, ctx_size;
    uint8_t port_proto[256];
    uint8_t port_pidx[256];

    DextXhciDma base;          /* DCBAA | ERST | event ring */
    volatile uint64_t *dcbaa;
    volatile XhciTrb *ev;
    uint64_t ev_iova;
    uint32_t ev_deq;
    uint32_t ev_ccs;
    XRing cmd;
    DextXhciDma scratch_arr;
    GArray *scratch_pages;     /* DextXhciDma */

    GMutex lock;               /* rings, slots, pending lists, below */
    GCond cond;
    GMutex cmd_lock;           /* one command at a time */
    uint64_t cmd_iova;         /* TRB of the outstanding command, 0 none */
    bool cmd_done;
    uint32_t cmd_cc;
    unsigned cmd_slot;
    uint64_t next_cookie;
    DextXhciSlot *slots[256];
    unsigned intr_pending;
    unsigned ev_inflight;      /* completion events pending TDs may raise */

    GThread *thread;
    GThread *self_check;       /* == event thread, for -EDEADLK */
    GMutex proc_lock;          /* one event-ring pass (and its completions)
                                * at a time: per-endpoint order */
    int efd;                   /* MSI-X vector 0 (or wake-up only) */
    int stop;
    bool msix;
    bool irq_direct;           /* the backend calls dext_xhci_interrupt() */
    DextXhciStats stats;
};

/* --------------------------------------------------------------- utils */

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void *xh_ptr(DextXhci *x, const DextXhciDma *r)
{
    return r->ptr;
}

static int xh_dma_alloc(DextXhci *x, uint64_t size, DextXhciDma *r)
{
    int ret;

    memset(r, 0, sizeof(*r));
    ret = x->ops->dma_alloc(x->hw, size, r);
    if (ret < 0) {
        return ret;
    }
    if (!r->ptr || r->size < size || (r->iova & 4095) ||
        !x->ops->dma_ok(x->hw, r->iova, r->size)) {
        x->ops->dma_free(x->hw, r);
        memset(r, 0, sizeof(*r));
        return -EIO;           /* a backend bug: never hand it to hardware */
    }
    memset(r->ptr, 0, r->size);
    return 0;
}

static void xh_dma_free(DextXhci *x, DextXhciDma *r)
{
    if (r->size) {
        x->ops->dma_free(x->hw, r);
        memset(r, 0, sizeof(*r));
    }
}

int dext_xhci_dma_alloc(DextXhci *x, uint64_t size, DextXhciDma *out)
{
    if (size == 0) {
        return -EINVAL;
    }
    return xh_dma_alloc(x, size, out);
}

void dext_xhci_dma_free(DextXhci *x, DextXhciDma *d)
{
    xh_dma_free(x, d);
}

int dext_xhci_dma_fd(DextXhci *x, const DextXhciDma *d, uint64_t *offset)
{
    return x->ops->dma_fd ? x->ops->dma_fd(x->hw, d, offset) : -ENOTSUP;
}

static int rd32(DextXhci *x, uint64_t off, uint32_t *v)
{
    int ret = x->ops->read32(x->hw, off, v);

    if (ret < 0) {
        *v = 0;
    }
    return ret;
}

static int wr32(DextXhci *x, uint64_t off, uint32_t v)
{
    return x->ops->write32(x->hw, off, v);
}

/* 64-bit registers: low then high (qemu-xhci acts on the high write) */
static int wr64(DextXhci *x, uint64_t off, uint64_t v)
{
    int ret = wr32(x, off, (uint32_t)v);

    return ret < 0 ? ret : wr32(x, off + 4, (uint32_t)(v >> 32));
}

/* the controller whose completions the calling thread is running */
static __thread DextXhci *tls_in_events;

static bool on_event_thread(DextXhci *x)
{
    return tls_in_events == x ||
           (x->thread && g_thread_self() == x->self_check);
}

bool dext_xhci_on_event_thread(DextXhci *x)
{
    return on_event_thread(x);
}

/* wait (x->lock held) until *flag or the deadline; -ETIMEDOUT */
static int wait_flag(DextXhci *x, const bool *flag, gint64 deadline)
{
    while (!*flag) {
        if (!g_cond_wait_until(&x->cond, &x->lock, deadline)) {
            return *flag ? 0 : -ETIMEDOUT;
        }
    }
    return 0;
}

/* poll a register until (v & mask) == want, bounded */
static int poll_reg(DextXhci *x, uint64_t off, uint32_t mask, uint32_t want,
                    uint32_t *last)
{
    gint64 deadline = g_get_monotonic_time() + x->timeout_ms * 1000ll;
    uint32_t v;
    int ret;

    for (;;) {
        ret = rd32(x, off, &v);
        if (ret < 0) {
            return ret;
        }
        if (last) {
            *last = v;
        }
        if ((v & mask) == want) {
            return 0;
        }
        if (g_get_monotonic_time() > deadline) {
            return -ETIMEDOUT;
        }
        g_usleep(100);
    }
}

/* ---------------------------------------------------------------- rings */

static int ring_init(DextXhci *x, XRing *r, uint32_t n)
{
    int ret = xh_dma_alloc(x, n * sizeof(XhciTrb), &r->dma);

    if (ret < 0) {
        return ret;
    }
    r->trb = xh_ptr(x, &r->dma);
    r->n = n;
    r->enq = 0;
    r->pcs = 1;
    r->used = 0;
    /* the link TRB at the end points back at the start (6.4.4.1) */
    r->trb[n - 1].param = r->dma.iova;
    r->trb[n - 1].status = 0;
    r->trb[n - 1].control = TRB_TYPE(TRB_LINK) | TRB_TC;   /* cycle 0 */
    return 0;
}

static void ring_fini(DextXhci *x, XRing *r)
{
    xh_dma_free(x, &r->dma);
    r->trb = NULL;
}

static uint64_t ring_enq_iova(XRing *r)
{
    return r->dma.iova + (uint64_t)r->enq * sizeof(XhciTrb);
}

/* Free slots for a TD of k TRBs (one more may go to a link). */
static bool ring_room(XRing *r, uint32_t k)
{
    return r->used + k + 1 <= r->n - 1;
}

/*
 * Write one TRB at the enqueue pointer.  With @hold, its cycle bit is
 * written inverted (the controller does not own it yet) and the index is
 * returned so the caller can hand the whole TD over at once with
 * ring_release(): the controller may be walking this ring concurrently
 * (a device wake-up retries a NAKed TD at any time).
 */
static uint32_t ring_put(XRing *r, uint64_t param, uint32_t status,
                         uint32_t control, bool chain_link, bool hold,
                         uint32_t *consumed)
{
    uint32_t idx = r->enq;
    uint32_t cyc = hold ? (r->pcs ^ 1) : r->pcs;

    r->trb[idx].param = param;
    r->trb[idx].status = status;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    r->trb[idx].control = (control & ~TRB_C) | cyc;
    r->enq++;
    (*consumed)++;
    if (r->enq == r->n - 1) {
        uint32_t lc = TRB_TYPE(TRB_LINK) | TRB_TC | (chain_link ? TRB_CH : 0);

        __atomic_thread_fence(__ATOMIC_RELEASE);
        r->trb[r->n - 1].control = lc | r->pcs;
        r->pcs ^= 1;
        r->enq = 0;
        (*consumed)++;
    }
    return idx;
}

static void ring_release(XRing *r, uint32_t idx)
{
    __atomic_thread_fence(__ATOMIC_RELEASE);
    r->trb[idx].control ^= TRB_C;
}

/* ------------------------------------------------------------ doorbell */

static int doorbell(DextXhci *x, unsigned slot, unsigned target)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    x->stats.doorbells++;
    return wr32(x, x->dboff + 4 * slot, target);
}

/* ------------------------------------------------------------- commands */

int dext_xhci_command(DextXhci *x, uint64_t param, uint32_t status,
                      uint32_t control, unsigned *slot_out)
{
    gint64 deadline;
    uint32_t used = 0;
    uint64_t iova;
    int ret;

    if (on_event_thread(x)) {
        return -EDEADLK;
    }
    g_mutex_lock(&x->cmd_lock);
    g_mutex_lock(&x->lock);
    iova = ring_enq_iova(&x->cmd);
    x->cmd_iova = iova;
    x->cmd_done = false;
    ring_put(&x->cmd, param, status, control, false, false, &used);
    g_mutex_unlock(&x->lock);

    ret = doorbell(x, 0, 0);
    g_mutex_lock(&x->lock);
    if (ret == 0) {
        deadline = g_get_monotonic_time() + x->timeout_ms * 1000ll;
        ret = wait_flag(x, &x->cmd_done, deadline);
    }
    if (ret == 0) {
        ret = x->cmd_cc;
        if (slot_out) {
            *slot_out = x->cmd_slot;
        }
    }
    x->cmd_iova = 0;
    g_mutex_unlock(&x->lock);
    g_mutex_unlock(&x->cmd_lock);
    return ret;
}

static int cmd_ok(int cc)
{
    if (cc < 0) {
        return cc;
    }
    return cc == DEXT_XHCI_CC_SUCCESS ? 0 : -EIO;
}

/* --------------------------------------------------------------- events */

static int cc_to_status(uint32_t cc)
{
    switch (cc) {
    case DEXT_XHCI_CC_SUCCESS:
    case DEXT_XHCI_CC_SHORT_PACKET:
        return 0;
    case DEXT_XHCI_CC_STALL:
        return -EPIPE;
    case DEXT_XHCI_CC_BABBLE:
        return -EOVERFLOW;
    case DEXT_XHCI_CC_STOPPED:
    case DEXT_XHCI_CC_STOPPED_LENGTH:
        return -ECANCELED;
    default:
        return -EIO;
    }
}

/* take the head TD off @ep; x->lock held */
static DextXhciXfer *ep_pop(DextXhci *x, XEp *ep)
{
    DextXhciXfer *t = g_queue_pop_head(&ep->pending);

    if (t) {
        ep->ring.used -= MIN(ep->ring.used, t->ntrbs);
        x->ev_inflight -= MIN(x->ev_inflight, t->nevents);
        if (ep->type == EPT_INTR_IN || ep->type == EPT_INTR_OUT) {
            x->intr_pending--;
        }
    }
    return t;
}

static void xfer_finish(DextXhciXfer *t, uint64_t ts)
{
    if (t->cb) {
        t->cb(t->opaque, t->status, t->actual, ts);
    }
    g_free(t);
}

typedef struct PortNote {
    unsigned port;
} PortNote;

/* One transfer event (6.4.2.1); x->lock held.  A completed TD goes to
 * @done for completion outside the lock. */
static void ev_transfer(DextXhci *x, const XhciTrb *e, GQueue *done)
{
    unsigned slot = e->control >> 24;
    unsigned dci = (e->control >> 16) & 0x1f;
    uint32_t cc = e->status >> 24;
    uint32_t len = e->status & 0xffffff;
    bool ed = e->control & TRB_ED;
    DextXhciSlot *s;
    DextXhciXfer *t;
    XEp *ep;

    if (slot == 0 || slot > x->max_slots || !(s = x->slots[slot]) ||
        dci == 0 || !(ep = &s->ep[dci])->configured ||
        !(t = g_queue_peek_head(&ep->pending))) {
        goto bad;
    }
    if (ed) {
        if (e->param != t->cookie) {
            goto bad;
        }
        t->actual = MIN(len, t->len);
        t->got_ed = true;
        if (cc_to_status(cc) == 0 && t->control) {
            return;            /* the status stage event completes it */
        }
    } else {
        if (e->param < ep->ring.dma.iova ||
            e->param >= ep->ring.dma.iova + ep->ring.n * sizeof(XhciTrb)) {
            goto bad;
        }
        if (!t->got_ed) {
            t->actual = 0;     /* error on the first TRB: nothing moved */
        }
    }
    t->status = cc_to_status(cc);
    if (t->status == -EPIPE) {
        ep->halted = true;
    }
    ep_pop(x, ep);
    g_queue_push_tail(done, t);
    return;

bad:
    /* stale (already cancelled) or forged: count and drop */
    x->stats.bad_events++;
}

static void process_events(DextXhci *x)
{
    GQueue done = G_QUEUE_INIT;
    GArray *ports = g_array_new(FALSE, FALSE, sizeof(unsigned));
    DextXhci *outer = tls_in_events;
    bool any = false;
    uint64_t ts;

    /* the event thread (timeouts) and a direct interrupt may both get
     * here: one pass at a time, or an endpoint's completions could be
     * delivered out of order */
    g_mutex_lock(&x->proc_lock);
    tls_in_events = x;
    g_mutex_lock(&x->lock);
    for (unsigned budget = 0; budget < EV_RING_TRBS; budget++) {
        XhciTrb e;
        uint32_t ctl = __atomic_load_n(&x->ev[x->ev_deq].control,
                                       __ATOMIC_ACQUIRE);

        if ((ctl & TRB_C) != x->ev_ccs) {
            break;
        }
        e.param = x->ev[x->ev_deq].param;
        e.status = x->ev[x->ev_deq].status;
        e.control = ctl;
        any = true;
        x->stats.events++;
        switch (TRB_GET_TYPE(ctl)) {
        case EV_TRANSFER:
            ev_transfer(x, &e, &done);
            break;
        case EV_CMD_DONE:
            if (x->cmd_iova && e.param == x->cmd_iova) {
                x->cmd_cc = e.status >> 24;
                x->cmd_slot = e.control >> 24;
                x->cmd_done = true;
                g_cond_broadcast(&x->cond);
            } else {
                x->stats.bad_events++;
            }
            break;
        case EV_PORT: {
            unsigned port = (e.param >> 24) & 0xff;

            if (port >= 1 && port <= x->max_ports) {
                g_array_append_val(ports, port);
            } else {
                x->stats.bad_events++;
            }
            break;
        }
        default:
            break;             /* MFINDEX wrap, host controller, ... */
        }
        if (++x->ev_deq == EV_RING_TRBS) {
            x->ev_deq = 0;
            x->ev_ccs ^= 1;
        }
    }
    if (any) {
        uint64_t erdp = x->ev_iova + (uint64_t)x->ev_deq * sizeof(XhciTrb);

        /* the ring never moves, so the high half (written at start-up)
         * stays; qemu-xhci evaluates "more pending" on the low write, which
         * also clears EHB and re-raises the interrupt if events slipped in
         * meanwhile: one posted write per batch */
        wr32(x, x->rtsoff + RT_ERDP(0), (uint32_t)erdp | ERDP_EHB);
    }
    g_mutex_unlock(&x->lock);

    ts = now_ns();
    for (DextXhciXfer *t; (t = g_queue_pop_head(&done));) {
        xfer_finish(t, ts);
    }
    if (x->cfg.port_fn) {
        for (guint i = 0; i < ports->len; i++) {
            unsigned port = g_array_index(ports, unsigned, i);
            uint32_t sc = 0;

            rd32(x, x->caplen + OP_PORTSC(port), &sc);
            x->cfg.port_fn(x->cfg.port_opaque, port, sc);
        }
    }
    g_array_free(ports, TRUE);
    tls_in_events = outer;
    g_mutex_unlock(&x->proc_lock);
}

void dext_xhci_interrupt(DextXhci *x)
{
    __atomic_fetch_add(&x->stats.irqs, 1, __ATOMIC_RELAXED);
    process_events(x);
}

static gpointer event_thread(gpointer opaque)
{
    DextXhci *x = opaque;
    uint64_t last_step = 0;

    x->self_check = g_thread_self();
    while (!g_atomic_int_get(&x->stop)) {
        struct pollfd pfd = { .fd = x->efd, .events = POLLIN };
        /* interrupts wake us at once; without MSI-X the shared-memory
         * event ring is polled every 50 us (it costs no qtest traffic) */
        struct timespec tmo = { 0, x->msix ? 50000000 : 50000 };
        bool clock = x->cfg.clock_step && x->intr_pending;

        process_events(x);
        if (clock) {
            uint64_t now = now_ns();

            /* interrupt endpoints are scheduled on QEMU's virtual clock:
             * advance it at most every 100 us of real time, still waking
             * at once for events */
            if (now - last_step >= 100000) {
                x->cfg.clock_step(x->cfg.clock_opaque, x->cfg.clock_step_ns ?
                                  x->cfg.clock_step_ns : 1000000);
                x->stats.clock_steps++;
                last_step = now;
                continue;
            }
            tmo.tv_nsec = MIN(tmo.tv_nsec, (long)(100000 - (now - last_step)));
        }
        if (ppoll(&pfd, 1, &tmo, NULL) > 0) {
            uint64_t v;

            if (read(x->efd, &v, sizeof(v)) == sizeof(v)) {
                x->stats.irqs++;
            }
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ controller */

static void parse_protocols(DextXhci *x, uint32_t hcc1)
{
    uint32_t off = (hcc1 >> 16) << 2;

    /* extended capabilities (7): a bounded walk, every offset checked */
    for (unsigned guard = 0; off && guard < 64; guard++) {
        uint32_t d0 = 0, d2 = 0;

        if (off >= 0x10000 || rd32(x, off, &d0) < 0) {
            return;
        }
        if ((d0 & 0xff) == 2 && rd32(x, off + 8, &d2) == 0) {
            unsigned major = d0 >> 24;
            unsigned first = d2 & 0xff, count = (d2 >> 8) & 0xff;

            for (unsigned i = 0; i < count; i++) {
                unsigned port = first + i;

                if (port >= 1 && port <= x->max_ports &&
                    (major == 2 || major == 3)) {
                    x->port_proto[port] = major;
                    x->port_pidx[port] = i + 1;
                }
            }
        }
        if (!((d0 >> 8) & 0xff)) {
            return;
        }
        off += ((d0 >> 8) & 0xff) << 2;
    }
}

int dext_xhci_create_hw(const DextXhciHwOps *ops, void *hw,
                        uint64_t bar0_size, const DextXhciConfig *cfg,
                        DextXhci **out)
{
    DextXhci *x = g_new0(DextXhci, 1);
    uint32_t hcs1, hcs2, hcc1, v, pagesize;
    unsigned nscratch;
    volatile uint64_t *erst;
    uint64_t ev_bytes;
    int ret;

    x->ops = ops;
    x->hw = hw;
    x->bar0_size = bar0_size;
    if (cfg) {
        x->cfg = *cfg;
    }
    x->timeout_ms = x->cfg.timeout_ms ? x->cfg.timeout_ms : 5000;
    x->efd = -1;
    g_mutex_init(&x->lock);
    g_mutex_init(&x->proc_lock);
    g_mutex_init(&x->cmd_lock);
    g_cond_init(&x->cond);
    x->scratch_pages = g_array_new(FALSE, TRUE, sizeof(DextXhciDma));
    if (bar0_size < 0x1000) {
        ret = -ENODEV;
        goto fail;
    }

    /* capability registers (5.3): untrusted, range-checked */
    if ((ret = rd32(x, CAP_CAPLENGTH, &v)) < 0 ||
        (ret = rd32(x, CAP_HCSPARAMS1, &hcs1)) < 0 ||
        (ret = rd32(x, CAP_HCSPARAMS2, &hcs2)) < 0 ||
        (ret = rd32(x, CAP_HCCPARAMS1, &hcc1)) < 0 ||
        (ret = rd32(x, CAP_DBOFF, &x->dboff)) < 0 ||
        (ret = rd32(x, CAP_RTSOFF, &x->rtsoff)) < 0) {
        goto fail;
    }
    x->caplen = v & 0xff;
    x->max_slots = hcs1 & 0xff;
    x->max_ports = hcs1 >> 24;
    x->ctx_size = (hcc1 & (1u << 2)) ? 64 : 32;
    x->dboff &= ~3u;
    x->rtsoff &= ~0x1fu;
    if (x->caplen < 0x20 || x->max_slots == 0 || x->max_ports == 0 ||
        x->caplen + OP_PORTSC(x->max_ports) + 16 > bar0_size ||
        x->dboff + 4 * 256 > bar0_size ||
        x->rtsoff + RT_ERDP(0) + 8 > bar0_size) {
        ret = -EIO;
        goto fail;
    }
    parse_protocols(x, hcc1);

    /* halt, then reset (4.2) */
    if ((ret = wr32(x, x->caplen + OP_USBCMD, 0)) < 0 ||
        (ret = poll_reg(x, x->caplen + OP_USBSTS, STS_HCH, STS_HCH,
                        NULL)) < 0 ||
        (ret = wr32(x, x->caplen + OP_USBCMD, CMD_HCRST)) < 0 ||
        (ret = poll_reg(x, x->caplen + OP_USBCMD, CMD_HCRST, 0, NULL)) < 0 ||
        (ret = poll_reg(x, x->caplen + OP_USBSTS, STS_CNR, 0, NULL)) < 0) {
        goto fail;
    }
    x->max_slots = MIN(x->max_slots, 255u);
    if ((ret = wr32(x, x->caplen + OP_CONFIG, x->max_slots)) < 0) {
        goto fail;
    }

    /* DCBAA (2 KiB) | ERST (one entry) | event ring, in one allocation;
     * an event ring segment must not cross a 64 KiB boundary (6.5), and
     * ours is 64 KiB: room to place it on its own alignment */
    ev_bytes = EV_RING_TRBS * sizeof(XhciTrb);
    ret = xh_dma_alloc(x, 4096 + 2 * ev_bytes, &x->base);
    if (ret < 0) {
        goto fail;
    }
    x->dcbaa = xh_ptr(x, &x->base);
    erst = (volatile uint64_t *)((uint8_t *)xh_ptr(x, &x->base) + 2048);
    x->ev_iova = (x->base.iova + 4096 + ev_bytes - 1) & ~(uint64_t)(ev_bytes - 1);
    x->ev = (volatile XhciTrb *)((uint8_t *)xh_ptr(x, &x->base) +
                                 (x->ev_iova - x->base.iova));
    x->ev_ccs = 1;

    /* scratchpad (4.20) */
    nscratch = (((hcs2 >> 21) & 0x1f) << 5) | (hcs2 >> 27);
    if (nscratch) {
        uint64_t *arr;

        if ((ret = rd32(x, x->caplen + OP_PAGESIZE, &pagesize)) < 0) {
            goto fail;
        }
        pagesize = (pagesize & 0xffff) << 12;
        if (pagesize != 4096 ||
            (ret = xh_dma_alloc(x, nscratch * 8, &x->scratch_arr)) < 0) {
            ret = ret < 0 ? ret : -ENOTSUP;
            goto fail;
        }
        arr = xh_ptr(x, &x->scratch_arr);
        for (unsigned i = 0; i < nscratch; i++) {
            DextXhciDma pg;

            if ((ret = xh_dma_alloc(x, 4096, &pg)) < 0) {
                goto fail;
            }
            g_array_append_val(x->scratch_pages, pg);
            arr[i] = pg.iova;
        }
        x->dcbaa[0] = x->scratch_arr.iova;
    }
    if ((ret = wr64(x, x->caplen + OP_DCBAAP, x->base.iova)) < 0) {
        goto fail;
    }

    /* command ring (4.6.1) */
    if ((ret = ring_init(x, &x->cmd, CMD_RING_TRBS)) < 0 ||
        (ret = wr64(x, x->caplen + OP_CRCR, x->cmd.dma.iova | 1)) < 0) {
        goto fail;
    }

    /* interrupter 0 (4.9.4) */
    erst[0] = x->ev_iova;
    erst[1] = EV_RING_TRBS;
    if ((ret = wr32(x, x->rtsoff + RT_ERSTSZ(0), 1)) < 0 ||
        (ret = wr32(x, x->rtsoff + RT_ERDP(0) + 4,
                    (uint32_t)(x->ev_iova >> 32))) < 0 ||
        (ret = wr32(x, x->rtsoff + RT_ERDP(0), (uint32_t)x->ev_iova)) < 0 ||
        (ret = wr64(x, x->rtsoff + RT_ERSTBA(0), x->base.iova + 2048)) < 0 ||
        /* no moderation: qemu-xhci times IMOD on the virtual clock */
        (ret = wr32(x, x->rtsoff + RT_IMOD(0), 0)) < 0 ||
        (ret = wr32(x, x->rtsoff + RT_IMAN(0), IMAN_IE | IMAN_IP)) < 0) {
        goto fail;
    }

    x->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (x->efd < 0) {
        ret = -errno;
        goto fail;
    }
    if (!x->cfg.force_poll && ops->irq_bind_direct &&
        ops->irq_bind_direct(hw, x) == 0) {
        x->msix = x->irq_direct = true;
    } else if (!x->cfg.force_poll && ops->irq_bind &&
               ops->irq_bind(hw, x->efd) == 0) {
        x->msix = true;
    }
    x->stats.msix = x->msix;

    x->thread = g_thread_new("dext-xhci-events", event_thread, x);
    if ((ret = wr32(x, x->caplen + OP_USBCMD, CMD_RS | CMD_INTE)) < 0 ||
        (ret = poll_reg(x, x->caplen + OP_USBSTS, STS_HCH, 0, NULL)) < 0) {
        goto fail;
    }
    /* a no-op round trip through the command ring proves it works */
    ret = cmd_ok(dext_xhci_command(x, 0, 0, TRB_TYPE(23), NULL));
    if (ret < 0) {
        goto fail;
    }
    *out = x;
    return 0;

fail:
    dext_xhci_destroy(x);
    return ret;
}

void dext_xhci_destroy(DextXhci *x)
{
    if (!x) {
        return;
    }
    if (x->max_ports && x->ops->alive(x->hw)) {
        wr32(x, x->caplen + OP_USBCMD, 0);
        poll_reg(x, x->caplen + OP_USBSTS, STS_HCH, STS_HCH, NULL);
    }
    for (unsigned i = 1; i < G_N_ELEMENTS(x->slots); i++) {
        if (x->slots[i]) {
            x->slots[i]->gone = true;
            dext_xhci_slot_destroy(x->slots[i], -ECANCELED);
        }
    }
    /* no interrupt (direct ones process events) once teardown goes on */
    if (x->msix && x->ops->irq_unbind) {
        x->ops->irq_unbind(x->hw);
    }
    if (x->thread) {
        uint64_t one = 1;

        g_atomic_int_set(&x->stop, 1);
        if (write(x->efd, &one, sizeof(one)) < 0) {
            /* the thread polls with a timeout anyway */
        }
        g_thread_join(x->thread);
    }
    if (x->efd >= 0) {
        close(x->efd);
    }
    ring_fini(x, &x->cmd);
    for (guint i = 0; i < x->scratch_pages->len; i++) {
        xh_dma_free(x, &g_array_index(x->scratch_pages, DextXhciDma, i));
    }
    g_array_free(x->scratch_pages, TRUE);
    xh_dma_free(x, &x->scratch_arr);
    xh_dma_free(x, &x->base);
    if (x->ops->destroy) {
        x->ops->destroy(x->hw);
    }
    g_mutex_clear(&x->lock);
    g_mutex_clear(&x->proc_lock);
    g_mutex_clear(&x->cmd_lock);
    g_cond_clear(&x->cond);
    g_free(x);
}

unsigned dext_xhci_num_ports(DextXhci *x)
{
    return x->max_ports;
}

unsigned dext_xhci_timeout_ms(DextXhci *x)
{
    return x->timeout_ms;
}

unsigned dext_xhci_port_protocol(DextXhci *x, unsigned port)
{
    return port >= 1 && port <= x->max_ports ? x->port_proto[port] : 0;
}

unsigned dext_xhci_port_proto_index(DextXhci *x, unsigned port)
{
    return port >= 1 && port <= x->max_ports ? x->port_pidx[port] : 0;
}

void dext_xhci_stats(DextXhci *x, DextXhciStats *out)
{
    g_mutex_lock(&x->lock);
    *out = x->stats;
    g_mutex_unlock(&x->lock);
}

/* ---------------------------------------------------------------- ports */

int dext_xhci_portsc(DextXhci *x, unsigned port, uint32_t *portsc)
{
    if (port < 1 || port > x->max_ports) {
        return -EINVAL;
    }
    return rd32(x, x->caplen + OP_PORTSC(port), portsc);
}

int dext_xhci_port_ack(DextXhci *x, unsigned port)
{
    uint32_t sc;
    int ret = dext_xhci_portsc(x, port, &sc);

    if (ret < 0) {
        return ret;
    }
    return wr32(x, x->caplen + OP_PORTSC(port),
                (sc & ~PORTSC_RW1C & ~PORTSC_PR) | (sc & PORTSC_CHANGES));
}

int dext_xhci_port_reset(DextXhci *x, unsigned port, unsigned *speed)
{
    uint32_t sc;
    int ret = dext_xhci_portsc(x, port, &sc);

    if (ret < 0) {
        return ret;
    }
    if (!(sc & PORTSC_CCS)) {
        return -ENODEV;
    }
    ret = wr32(x, x->caplen + OP_PORTSC(port),
               (sc & ~PORTSC_RW1C) | PORTSC_PR | PORTSC_PP);
    if (ret < 0) {
        return ret;
    }
    ret = poll_reg(x, x->caplen + OP_PORTSC(port), PORTSC_PRC | PORTSC_PR,
                   PORTSC_PRC, &sc);
    if (ret < 0) {
        return ret;
    }
    dext_xhci_port_ack(x, port);
    if (!(sc & PORTSC_CCS)) {
        return -ENODEV;
    }
    if (!(sc & PORTSC_PED)) {
        return -EIO;
    }
    if (speed) {
        *speed = PORTSC_SPEED(sc);
    }
    return 0;
}

/* ------------------------------------------------------------ contexts */

static volatile uint32_t *in_ctx(DextXhciSlot *s, unsigned idx)
{
    /* idx 0: input control, 1: slot, 1 + dci: endpoint */
    return (volatile uint32_t *)((uint8_t *)xh_ptr(s->x, &s->in_ctx) +
                                 idx * s->x->ctx_size);
}

static volatile uint32_t *out_ctx(DextXhciSlot *s, unsigned dci)
{
    return (volatile uint32_t *)((uint8_t *)xh_ptr(s->x, &s->out_ctx) +
                                 dci * s->x->ctx_size);
}

static void in_ctx_clear(DextXhciSlot *s)
{
    memset((void *)in_ctx(s, 0), 0, 33 * s->x->ctx_size);
}

static unsigned ep0_default_mps(unsigned speed)
{
    switch (speed) {
    case DEXT_USB_SPEED_SUPER:
        return 512;
    case DEXT_USB_SPEED_HIGH:
        return 64;
    default:
        return 8;
    }
}

static void ep_ctx_fill(volatile uint32_t *c, unsigned type, unsigned mps,
                        unsigned burst, unsigned interval, unsigned esit,
                        uint64_t deq, unsigned avg)
{
    c[0] = (interval & 0xff) << 16;
    c[1] = (3u << 1) | (type << 3) | ((burst & 0xff) << 8) |
           ((mps & 0xffff) << 16);
    c[2] = (uint32_t)deq | 1;       /* DCS = 1: a fresh ring's cycle */
    c[3] = (uint32_t)(deq >> 32);
    c[4] = (avg & 0xffff) | ((esit & 0xffff) << 16);
}

int dext_xhci_slot_create(DextXhci *x, unsigned port, unsigned speed,
                          DextXhciSlot **out)
{
    DextXhciSlot *s;
    unsigned id = 0;
    volatile uint32_t *c;
    int ret;

    if (port < 1 || port > x->max_ports || speed < DEXT_USB_SPEED_FULL ||
        speed > DEXT_USB_SPEED_SUPER) {
        return -EINVAL;
    }
    ret = dext_xhci_command(x, 0, 0, TRB_TYPE(CMD_ENABLE_SLOT), &id);
    if ((ret = cmd_ok(ret)) < 0) {
        return ret;
    }
    g_mutex_lock(&x->lock);
    if (id == 0 || id > x->max_slots || x->slots[id]) {
        g_mutex_unlock(&x->lock);
        return -EIO;           /* controller handed out nonsense */
    }
    s = g_new0(DextXhciSlot, 1);
    s->x = x;
    s->id = id;
    s->port = port;
    s->speed = speed;
    x->slots[id] = s;
    g_mutex_unlock(&x->lock);

    if ((ret = xh_dma_alloc(x, 32 * x->ctx_size, &s->out_ctx)) < 0 ||
        (ret = xh_dma_alloc(x, 33 * x->ctx_size, &s->in_ctx)) < 0 ||
        (ret = ring_init(x, &s->ep[1].ring, EP0_RING_TRBS)) < 0) {
        goto fail;
    }
    s->ep[1].dci = 1;
    s->ep[1].type = EPT_CTRL;
    g_queue_init(&s->ep[1].pending);
    x->dcbaa[id] = s->out_ctx.iova;

    /* Address Device (4.3.3) */
    in_ctx_clear(s);
    in_ctx(s, 0)[1] = 0x3;                     /* add slot + EP0 */
    c = in_ctx(s, 1);
    c[0] = (speed << 20) | (1u << 27);         /* context entries 1 */
    c[1] = port << 16;
    ep_ctx_fill(in_ctx(s, 2), EPT_CTRL, ep0_default_mps(speed), 0, 0, 0,
                s->ep[1].ring.dma.iova, 8);
    ret = cmd_ok(dext_xhci_command(x, s->in_ctx.iova, 0,
                                   TRB_TYPE(CMD_ADDRESS_DEV) | (id << 24),
                                   NULL));
    if (ret < 0) {
        goto fail;
    }
    s->ep[1].configured = true;
    *out = s;
    return 0;

fail:
    dext_xhci_slot_destroy(s, -ECANCELED);
    return ret;
}

unsigned dext_xhci_slot_id(DextXhciSlot *s)
{
    return s->id;
}

int dext_xhci_slot_set_ep0_mps(DextXhciSlot *s, unsigned mps)
{
    if (mps == 0 || mps > 1024) {
        return -EINVAL;
    }
    in_ctx_clear(s);
    in_ctx(s, 0)[1] = 0x2;
    ep_ctx_fill(in_ctx(s, 2), EPT_CTRL, mps, 0, 0, 0,
                s->ep[1].ring.dma.iova, 8);
    return cmd_ok(dext_xhci_command(s->x, s->in_ctx.iova, 0,
                                    TRB_TYPE(CMD_EVAL_CTX) | (s->id << 24),
                                    NULL));
}

/* fail every pending TD of @ep with @status (calling thread) */
static void ep_flush(DextXhci *x, XEp *ep, int status)
{
    GQueue done = G_QUEUE_INIT;
    uint64_t ts = now_ns();

    g_mutex_lock(&x->lock);
    for (DextXhciXfer *t; (t = ep_pop(x, ep));) {
        t->status = status;
        g_queue_push_tail(&done, t);
    }
    ep->ring.used = 0;
    g_mutex_unlock(&x->lock);
    for (DextXhciXfer *t; (t = g_queue_pop_head(&done));) {
        xfer_finish(t, ts);
    }
}

void dext_xhci_slot_gone(DextXhciSlot *s)
{
    g_mutex_lock(&s->x->lock);
    s->gone = true;
    g_mutex_unlock(&s->x->lock);
    /* the controller forgets a detached device's TDs without events */
    for (unsigned dci = 1; dci < 32; dci++) {
        if (s->ep[dci].configured) {
            ep_flush(s->x, &s->ep[dci], -ECANCELED);
        }
    }
}

void dext_xhci_slot_destroy(DextXhciSlot *s, int status)
{
    DextXhci *x;

    if (!s) {
        return;
    }
    x = s->x;
    for (unsigned dci = 1; dci < 32; dci++) {
        if (s->ep[dci].configured) {
            ep_flush(x, &s->ep[dci], status);
        }
    }
    if (s->out_ctx.size && x->ops->alive(x->hw)) {
        /* also after a detach: the slot must be given back */
        dext_xhci_command(x, 0, 0, TRB_TYPE(CMD_DISABLE_SLOT) | (s->id << 24),
                          NULL);
    }
    g_mutex_lock(&x->lock);
    if (x->slots[s->id] == s) {
        x->slots[s->id] = NULL;
        x->dcbaa[s->id] = 0;
    }
    g_mutex_unlock(&x->lock);
    for (unsigned dci = 1; dci < 32; dci++) {
        ring_fini(x, &s->ep[dci].ring);
    }
    xh_dma_free(x, &s->in_ctx);
    xh_dma_free(x, &s->out_ctx);
    g_free(s);
}

static unsigned ep_dci(unsigned ep_addr)
{
    unsigned n = ep_addr & 0xf;

    return n == 0 ? 1 : 2 * n + ((ep_addr & 0x80) ? 1 : 0);
}

static unsigned ep_interval(unsigned speed, unsigned type, unsigned b)
{
    if (type != EPT_INTR_IN && type != EPT_INTR_OUT) {
        return 0;
    }
    if (speed >= DEXT_USB_SPEED_HIGH) {
        return CLAMP(b, 1u, 16u) - 1;          /* 2^(b-1) microframes */
    }
    /* full/low speed: frames -> exponent of 125 us units */
    {
        unsigned us125 = CLAMP(b, 1u, 255u) * 8, e = 0;

        while ((2u << e) <= us125) {
            e++;
        }
        return CLAMP(e, 3u, 10u);
    }
}

int dext_xhci_configure(DextXhciSlot *s, const uint8_t *drop_addrs,
                        unsigned ndrop, const DextXhciEpDesc *eps,
                        unsigned n)
{
    DextXhci *x = s->x;
    uint32_t drop = 0, add = 1;
    unsigned max_dci = 1;
    XEp fresh[32];
    volatile uint32_t *sc;
    int ret;

    if (s->gone) {
        return -ENODEV;
    }
    memset(fresh, 0, sizeof(fresh));
    in_ctx_clear(s);
    for (unsigned i = 0; i < ndrop; i++) {
        unsigned dci = ep_dci(drop_addrs[i]);

        if (dci >= 2 && s->ep[dci].configured) {
            drop |= 1u << dci;
        }
    }
    for (unsigned dci = 2; dci < 32; dci++) {
        if (s->ep[dci].configured && !(drop & (1u << dci))) {
            max_dci = dci;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        const DextXhciEpDesc *d = &eps[i];
        unsigned dci = ep_dci(d->address);
        unsigned xt = d->attributes & 3;
        bool in = d->address & 0x80;
        unsigned type, mps = d->max_packet & 0x7ff;
        unsigned mult = (d->max_packet >> 11) & 3;

        if (dci < 2 || (add & (1u << dci)) || xt == 0 || xt == 1 ||
            mps == 0 || (s->ep[dci].configured && !(drop & (1u << dci)))) {
            ret = -EINVAL;     /* isochronous is not supported */
            goto fail;
        }
        type = xt == 2 ? (in ? EPT_BULK_IN : EPT_BULK_OUT)
                       : (in ? EPT_INTR_IN : EPT_INTR_OUT);
        if ((ret = ring_init(x, &fresh[dci].ring, XFER_RING_TRBS)) < 0) {
            goto fail;
        }
        fresh[dci].dci = dci;
        fresh[dci].type = type;
        ep_ctx_fill(in_ctx(s, 1 + dci), type, mps,
                    s->speed == DEXT_USB_SPEED_SUPER ? d->max_burst
                                                     : (xt == 3 ? mult : 0),
                    ep_interval(s->speed, type, d->interval),
                    xt == 3 ? (d->bytes_per_interval ? d->bytes_per_interval
                                                     : mps * (mult + 1)) : 0,
                    fresh[dci].ring.dma.iova, xt == 3 ? mps : 3072);
        add |= 1u << dci;
        max_dci = MAX(max_dci, dci);
    }
    in_ctx(s, 0)[0] = drop;
    in_ctx(s, 0)[1] = add;
    sc = in_ctx(s, 1);
    for (unsigned i = 0; i < 4; i++) {
        sc[i] = out_ctx(s, 0)[i];
    }
    sc[0] = (sc[0] & ~(0x1fu << 27)) | (max_dci << 27);
    sc[3] = 0;

    /* pending TDs of dropped endpoints are cancelled first */
    for (unsigned dci = 2; dci < 32; dci++) {
        if (drop & (1u << dci)) {
            ep_flush(x, &s->ep[dci], -ECANCELED);
        }
    }
    ret = cmd_ok(dext_xhci_command(x, s->in_ctx.iova, 0,
                                   TRB_TYPE(CMD_CONFIG_EP) | (s->id << 24),
                                   NULL));
    if (ret < 0) {
        goto fail;
    }
    g_mutex_lock(&x->lock);
    for (unsigned dci = 2; dci < 32; dci++) {
        XRing old = s->ep[dci].ring;

        if (!(drop & (1u << dci)) && !(add & (1u << dci))) {
            continue;
        }
        s->ep[dci] = fresh[dci];
        g_queue_init(&s->ep[dci].pending);
        s->ep[dci].configured = add & (1u << dci);
        memset(&fresh[dci], 0, sizeof(fresh[dci]));
        fresh[dci].ring = old;             /* freed below */
    }
    g_mutex_unlock(&x->lock);
    ret = 0;
fail:
    for (unsigned dci = 2; dci < 32; dci++) {
        ring_fini(x, &fresh[dci].ring);
    }
    return ret;
}

/* ------------------------------------------------------------ transfers */

int dext_xhci_submit(DextXhciSlot *s, unsigned ep_addr, const uint8_t *setup,
                     uint64_t iova, uint32_t len, DextXhciXferFn cb,
                     void *opaque)
{
    DextXhci *x = s->x;
    unsigned dci = ep_dci(ep_addr);
    DextXhciXfer *t;
    XEp *ep;
    XRing *r;
    uint32_t k, first, used = 0;
    int ret;

    if ((ep_addr & 0x7f) > 15 || (dci == 1) != (setup != NULL)) {
        return -EINVAL;
    }
    if (len && (iova + len < iova || !x->ops->dma_ok(x->hw, iova, len))) {
        return -EFAULT;
    }
    /* TRBs needed: chunks not crossing 64 KiB, + event data (+ setup,
     * status for control) */
    k = 1;
    if (len) {
        k = (uint32_t)(((iova + len - 1) / TRB_MAX_LEN) - iova / TRB_MAX_LEN)
            + 1;
    }
    k += setup ? 3 : 1;
    if (setup && len > 4096) {
        return -EINVAL;
    }

    g_mutex_lock(&x->lock);
    ep = &s->ep[dci];
    r = &ep->ring;
    if (s->gone || !ep->configured) {
        ret = -ENODEV;
        goto out;
    }
    if (ep->halted) {
        ret = -EPIPE;
        goto out;
    }
    if (!ring_room(r, k) || x->ev_inflight + (setup ? 2 : 1) > EV_BUDGET) {
        ret = -ENOSPC;
        goto out;
    }
    t = g_new0(DextXhciXfer, 1);
    t->nevents = setup ? 2 : 1;        /* (event data +) status, or event data */
    t->ep = ep;
    t->cb = cb;
    t->opaque = opaque;
    t->len = len;
    t->control = setup != NULL;
    t->cookie = ((uint64_t)s->id << 56) | (++x->next_cookie & ((1ull << 56) - 1));

    if (setup) {
        bool in = setup[0] & 0x80;
        uint64_t sp;
        uint32_t trt = len ? (in ? 3u : 2u) : 0u;

        memcpy(&sp, setup, 8);
        first = ring_put(r, sp, 8, TRB_TYPE(TRB_SETUP) | TRB_IDT | (trt << 16),
                         false, true, &used);
        if (len) {
            ring_put(r, iova, len, TRB_TYPE(TRB_DATA) | TRB_CH |
                     (in ? TRB_DIR_IN : 0), true, false, &used);
            ring_put(r, t->cookie, 0, TRB_TYPE(TRB_EVDATA) | TRB_IOC, false,
                     false, &used);
        }
        ring_put(r, 0, 0, TRB_TYPE(TRB_STATUS) | TRB_IOC |
                 ((len && in) ? 0 : TRB_DIR_IN), false, false, &used);
    } else {
        uint64_t a = iova;
        uint32_t left = len;
        bool hold = true;

        first = r->enq;
        do {
            uint32_t chunk = MIN(left, TRB_MAX_LEN - (uint32_t)(a % TRB_MAX_LEN));
            uint32_t idx = ring_put(r, len ? a : 0, chunk,
                                    TRB_TYPE(TRB_NORMAL) | TRB_CH, true, hold,
                                    &used);

            if (hold) {
                first = idx;
                hold = false;
            }
            a += chunk;
            left -= chunk;
        } while (left);
        ring_put(r, t->cookie, 0, TRB_TYPE(TRB_EVDATA) | TRB_IOC, false, false,
                 &used);
    }
    t->ntrbs = used;
    r->used += used;
    x->ev_inflight += t->nevents;
    g_queue_push_tail(&ep->pending, t);
    if (ep->type == EPT_INTR_IN || ep->type == EPT_INTR_OUT) {
        x->intr_pending++;
    }
    ring_release(r, first);
    g_mutex_unlock(&x->lock);
    return doorbell(x, s->id, dci);

out:
    g_mutex_unlock(&x->lock);
    return ret;
}

bool dext_xhci_ep_halted(DextXhciSlot *s, unsigned ep_addr)
{
    bool h;

    g_mutex_lock(&s->x->lock);
    h = s->ep[ep_dci(ep_addr)].halted;
    g_mutex_unlock(&s->x->lock);
    return h;
}

/* point the controller's dequeue at our enqueue: drops queued TDs */
static int ep_set_deq(DextXhciSlot *s, XEp *ep)
{
    uint64_t deq;

    g_mutex_lock(&s->x->lock);
    deq = ring_enq_iova(&ep->ring) | ep->ring.pcs;
    g_mutex_unlock(&s->x->lock);
    return cmd_ok(dext_xhci_command(s->x, deq, 0, TRB_TYPE(CMD_SET_DEQ) |
                                    (s->id << 24) | (ep->dci << 16), NULL));
}

int dext_xhci_abort(DextXhciSlot *s, unsigned ep_addr)
{
    unsigned dci = ep_dci(ep_addr);
    XEp *ep = &s->ep[dci];
    int ret = 0;

    if (!ep->configured) {
        return -ENODEV;
    }
    if (!s->gone) {
        /* Stop Endpoint reports the TD in progress as stopped; a halted
         * or already stopped endpoint answers with a context state error,
         * which is fine (6.4.3.8) */
        dext_xhci_command(s->x, 0, 0, TRB_TYPE(CMD_STOP_EP) | (s->id << 24) |
                          (dci << 16), NULL);
        if (ep->halted) {
            dext_xhci_command(s->x, 0, 0, TRB_TYPE(CMD_RESET_EP) |
                              (s->id << 24) | (dci << 16), NULL);
        }
        ret = ep_set_deq(s, ep);
    }
    ep_flush(s->x, ep, -ECANCELED);
    g_mutex_lock(&s->x->lock);
    ep->halted = false;
    g_mutex_unlock(&s->x->lock);
    return s->gone ? -ENODEV : ret;
}

int dext_xhci_reset_ep(DextXhciSlot *s, unsigned ep_addr)
{
    unsigned dci = ep_dci(ep_addr);
    XEp *ep = &s->ep[dci];
    int ret;

    if (!ep->configured) {
        return -ENODEV;
    }
    if (s->gone) {
        return -ENODEV;
    }
    ret = cmd_ok(dext_xhci_command(s->x, 0, 0, TRB_TYPE(CMD_RESET_EP) |
                                   (s->id << 24) | (dci << 16), NULL));
    /* not halted on the controller's side: stop it to move the dequeue */
    if (ret < 0) {
        dext_xhci_command(s->x, 0, 0, TRB_TYPE(CMD_STOP_EP) | (s->id << 24) |
                          (dci << 16), NULL);
    }
    ret = ep_set_deq(s, ep);
    ep_flush(s->x, ep, -ECANCELED);
    g_mutex_lock(&s->x->lock);
    ep->halted = false;
    g_mutex_unlock(&s->x->lock);
    return ret;
}

int dext_xhci_submit_raw(DextXhciSlot *s, unsigned ep_addr,
                         const uint64_t *param, const uint32_t *status,
                         const uint32_t *control, unsigned n)
{
    DextXhci *x = s->x;
    unsigned dci = ep_dci(ep_addr);
    XEp *ep;
    uint32_t first = 0, used = 0;

    if ((ep_addr & 0x7f) > 15 || n == 0) {
        return -EINVAL;
    }
    g_mutex_lock(&x->lock);
    ep = &s->ep[dci];
    if (s->gone || !ep->configured) {
        g_mutex_unlock(&x->lock);
        return -ENODEV;
    }
    if (!ring_room(&ep->ring, n)) {
        g_mutex_unlock(&x->lock);
        return -ENOSPC;
    }
    /* whatever the TRBs say, the ring's own link TRB keeps its place: the
     * ring stays ours to reclaim with a Set TR Dequeue Pointer */
    for (unsigned i = 0; i < n; i++) {
        uint32_t idx = ring_put(&ep->ring, param[i], status[i], control[i],
                                false, i == 0, &used);

        if (i == 0) {
            first = idx;
        }
    }
    /* counted as the controller's until an abort resets the ring */
    ep->ring.used += used;
    ring_release(&ep->ring, first);
    g_mutex_unlock(&x->lock);
    return doorbell(x, s->id, dci);
}

DextXhciSlot *dext_xhci_port_slot(DextXhci *x, unsigned port)
{
    DextXhciSlot *found = NULL;

    g_mutex_lock(&x->lock);
    for (unsigned i = 1; i < G_N_ELEMENTS(x->slots) && !found; i++) {
        if (x->slots[i] && x->slots[i]->port == port && !x->slots[i]->gone) {
            found = x->slots[i];
        }
    }
    g_mutex_unlock(&x->lock);
    return found;
}
