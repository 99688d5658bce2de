/*
 * Unit tests of the xHCI driver against a scripted fake controller (a
 * DextXhciHwOps backend in this file): the driver must treat everything
 * the controller says as untrusted.  Guards: bad capability values are
 * refused, a controller that never answers gives bounded -ETIMEDOUT,
 * forged events (bad slot, endpoint, cookie, TRB pointer, port, command
 * pointer) are counted and dropped without harm, Enable Slot returning a
 * bad slot id fails the slot, port reset without completion times out.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "xhci.h"

#define BAR_SIZE    0x4000
#define CAPLEN      0x40
#define RTSOFF      0x1000
#define DBOFF       0x2000
#define NPORTS      4
#define NSLOTS      8

typedef struct Fake {
    GMutex lock;
    uint32_t caps[8];            /* 0x00..0x1c */
    uint32_t usbcmd;
    uint32_t portsc[NPORTS + 1];
    uint64_t crcr, erstba, erdp;
    uint32_t erstsz;
    int efd;
    /* command ring consumer */
    uint32_t cmd_deq;
    uint32_t cmd_ccs;
    /* event ring producer */
    uint32_t ev_enq;
    uint32_t ev_pcs;
    /* behaviour */
    bool silent;                 /* never complete commands */
    int slot_reply;              /* slot id Enable Slot returns */
    GPtrArray *allocs;           /* of void * (iova == pointer) */
} Fake;

typedef struct Trb {
    uint64_t param;
    uint32_t status;
    uint32_t control;
} Trb;

static void *ptr(uint64_t iova)
{
    return (void *)(uintptr_t)iova;
}

static void push_event(Fake *f, uint64_t param, uint32_t status,
                       uint32_t control)
{
    uint64_t *erst = ptr(f->erstba);
    Trb *ev = ptr(erst[0]);
    uint32_t n = (uint32_t)erst[1];
    uint64_t one = 1;

    ev[f->ev_enq].param = param;
    ev[f->ev_enq].status = status;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    ev[f->ev_enq].control = (control & ~1u) | f->ev_pcs;
    if (++f->ev_enq == n) {
        f->ev_enq = 0;
        f->ev_pcs ^= 1;
    }
    if (f->efd >= 0 && write(f->efd, &one, 8) != 8) {
        /* the driver polls with a timeout anyway */
    }
}

/* process the command ring up to the first TRB we do not own */
static void run_commands(Fake *f)
{
    Trb *ring = ptr(f->crcr & ~63ull);

    for (int guard = 0; guard < 64; guard++) {
        Trb *t = &ring[f->cmd_deq];
        uint32_t type = (t->control >> 10) & 0x3f;
        uint64_t iova = (f->crcr & ~63ull) + f->cmd_deq * sizeof(Trb);

        if ((t->control & 1) != f->cmd_ccs) {
            return;
        }
        if (type == 6) {                         /* link */
            if (t->control & 2) {
                f->cmd_ccs ^= 1;
            }
            f->cmd_deq = 0;
            continue;
        }
        f->cmd_deq++;
        if (f->silent) {
            continue;
        }
        if (type == 9) {                         /* enable slot */
            push_event(f, iova, 1u << 24,
                       (33u << 10) | ((uint32_t)f->slot_reply << 24));
        } else {
            push_event(f, iova, 1u << 24, 33u << 10);
        }
    }
}

static int f_read32(void *hw, uint64_t off, uint32_t *val)
{
    Fake *f = hw;

    g_mutex_lock(&f->lock);
    if (off < 0x20) {
        *val = f->caps[off / 4];
    } else if (off == CAPLEN + 0x00) {
        *val = f->usbcmd & ~2u;                  /* HCRST self-clears */
    } else if (off == CAPLEN + 0x04) {
        *val = (f->usbcmd & 1) ? 0 : 1;          /* HCH */
    } else if (off == CAPLEN + 0x08) {
        *val = 1;                                /* 4 KiB pages */
    } else if (off >= CAPLEN + 0x400 &&
               off < CAPLEN + 0x400 + 0x10 * NPORTS && (off & 0xf) == 0) {
        *val = f->portsc[(off - CAPLEN - 0x400) / 0x10 + 1];
    } else {
        *val = 0;
    }
    g_mutex_unlock(&f->lock);
    return 0;
}

static int f_write32(void *hw, uint64_t off, uint32_t val)
{
    Fake *f = hw;

    g_mutex_lock(&f->lock);
    if (off == CAPLEN + 0x00) {
        f->usbcmd = val;
    } else if (off == CAPLEN + 0x18) {
        f->crcr = (f->crcr & ~0xffffffffull) | val;
    } else if (off == CAPLEN + 0x1c) {
        f->crcr = (f->crcr & 0xffffffffull) | ((uint64_t)val << 32);
        f->cmd_deq = 0;
        f->cmd_ccs = f->crcr & 1;
    } else if (off == RTSOFF + 0x28) {
        f->erstsz = val;
    } else if (off == RTSOFF + 0x30) {
        f->erstba = (f->erstba & ~0xffffffffull) | val;
    } else if (off == RTSOFF + 0x34) {
        f->erstba = (f->erstba & 0xffffffffull) | ((uint64_t)val << 32);
        f->ev_enq = 0;
        f->ev_pcs = 1;
    } else if (off == RTSOFF + 0x38) {
        f->erdp = (f->erdp & ~0xffffffffull) | val;
    } else if (off == DBOFF) {
        run_commands(f);
    }
    g_mutex_unlock(&f->lock);
    return 0;
}

static int f_dma_alloc(void *hw, uint64_t size, DextXhciDma *out)
{
    Fake *f = hw;
    void *p = NULL;

    size = (size + 4095) & ~4095ull;
    if (posix_memalign(&p, 4096, size)) {
        return -ENOMEM;
    }
    memset(p, 0, size);
    g_mutex_lock(&f->lock);
    g_ptr_array_add(f->allocs, p);
    g_mutex_unlock(&f->lock);
    out->ptr = p;
    out->iova = (uint64_t)(uintptr_t)p;
    out->size = size;
    out->handle = out->iova;
    return 0;
}

static void f_dma_free(void *hw, DextXhciDma *d)
{
    Fake *f = hw;

    g_mutex_lock(&f->lock);
    g_ptr_array_remove(f->allocs, ptr(d->handle));
    g_mutex_unlock(&f->lock);
    free(ptr(d->handle));
}

static bool f_dma_ok(void *hw, uint64_t iova, uint64_t len)
{
    return iova != 0;
}

static int f_irq_bind(void *hw, int efd)
{
    Fake *f = hw;

    f->efd = dup(efd);
    return f->efd < 0 ? -errno : 0;
}

static void f_irq_unbind(void *hw)
{
    Fake *f = hw;

    if (f->efd >= 0) {
        close(f->efd);
        f->efd = -1;
    }
}

static bool f_alive(void *hw)
{
    return true;
}

/* the test keeps the fake; destroy does nothing */
static const DextXhciHwOps fake_ops = {
    .name = "fake",
    .read32 = f_read32,
    .write32 = f_write32,
    .dma_alloc = f_dma_alloc,
    .dma_free = f_dma_free,
    .dma_ok = f_dma_ok,
    .irq_bind = f_irq_bind,
    .irq_unbind = f_irq_unbind,
    .alive = f_alive,
};

static Fake *fake_new(void)
{
    Fake *f = g_new0(Fake, 1);

    g_mutex_init(&f->lock);
    f->caps[0] = 0x01000000 | CAPLEN;                    /* HCIVERSION 1.0 */
    f->caps[1] = (NPORTS << 24) | (1 << 8) | NSLOTS;     /* HCSPARAMS1 */
    f->caps[5] = DBOFF;
    f->caps[6] = RTSOFF;
    f->efd = -1;
    f->slot_reply = 1;
    f->allocs = g_ptr_array_new();
    for (int p = 1; p <= NPORTS; p++) {
        f->portsc[p] = 1u << 9;                          /* powered, empty */
    }
    return f;
}

static void fake_free(Fake *f)
{
    g_assert_cmpuint(f->allocs->len, ==, 0);             /* nothing leaked */
    g_ptr_array_free(f->allocs, TRUE);
    f_irq_unbind(f);
    g_mutex_clear(&f->lock);
    g_free(f);
}

static DextXhci *create_ok(Fake *f)
{
    DextXhciConfig cfg = { .timeout_ms = 300 };
    DextXhci *x = NULL;

    g_assert_cmpint(dext_xhci_create_hw(&fake_ops, f, BAR_SIZE, &cfg, &x), ==,
                    0);
    g_assert_cmpuint(dext_xhci_num_ports(x), ==, NPORTS);
    return x;
}

static void test_create(void)
{
    Fake *f = fake_new();
    DextXhci *x = create_ok(f);
    DextXhciStats st;

    dext_xhci_stats(x, &st);
    g_assert_true(st.msix);
    g_assert_cmpuint(st.events, ==, 1);                  /* the NOOP */
    g_assert_cmpuint(st.bad_events, ==, 0);
    dext_xhci_destroy(x);
    fake_free(f);
}

/* capability values outside the BAR or nonsensical: refused */
static void test_bad_caps(void)
{
    static const struct { unsigned reg; uint32_t val; } bad[] = {
        { 0, 0x01000010 },                  /* CAPLENGTH < 0x20 */
        { 1, (0u << 24) | 8 },              /* no ports */
        { 1, (4u << 24) | 0 },              /* no slots */
        { 5, BAR_SIZE },                    /* doorbells outside BAR0 */
        { 6, BAR_SIZE - 8 },                /* runtime regs outside */
    };

    for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
        Fake *f = fake_new();
        DextXhciConfig cfg = { .timeout_ms = 300 };
        DextXhci *x = NULL;

        f->caps[bad[i].reg] = bad[i].val;
        g_assert_cmpint(dext_xhci_create_hw(&fake_ops, f, BAR_SIZE, &cfg, &x),
                        ==, -EIO);
        g_assert_null(x);
        fake_free(f);
    }
}

/* a controller that never completes a command: bounded failure */
static void test_silent_controller(void)
{
    Fake *f = fake_new();
    DextXhciConfig cfg = { .timeout_ms = 200 };
    DextXhci *x = NULL;
    gint64 t0 = g_get_monotonic_time();

    f->silent = true;
    g_assert_cmpint(dext_xhci_create_hw(&fake_ops, f, BAR_SIZE, &cfg, &x), ==,
                    -ETIMEDOUT);
    g_assert_cmpint(g_get_monotonic_time() - t0, <, 3 * G_USEC_PER_SEC);
    fake_free(f);
}

/* forged events are counted and dropped; the controller keeps working */
static void test_forged_events(void)
{
    Fake *f = fake_new();
    DextXhci *x = create_ok(f);
    DextXhciStats st;
    gint64 end;

    g_mutex_lock(&f->lock);
    /* transfer events: slot 0, slot beyond, slot not enabled */
    push_event(f, 0x1000, 1u << 24, (32u << 10) | (0u << 24) | (1u << 16));
    push_event(f, 0x1000, 1u << 24, (32u << 10) | (200u << 24) | (1u << 16));
    push_event(f, 0x1000, 1u << 24, (32u << 10) | (3u << 24) | (1u << 16));
    /* event data with a cookie nobody issued */
    push_event(f, 0xdeadbeef, 1u << 24,
               (32u << 10) | (1u << 24) | (2u << 16) | 4);
    /* command completion for no outstanding command */
    push_event(f, 0x12345000, 1u << 24, 33u << 10);
    /* port status change for ports 0 and 99 */
    push_event(f, 0ull << 24, 1u << 24, 34u << 10);
    push_event(f, 99ull << 24, 1u << 24, 34u << 10);
    g_mutex_unlock(&f->lock);

    end = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
    do {
        g_usleep(1000);
        dext_xhci_stats(x, &st);
    } while (st.bad_events < 7 && g_get_monotonic_time() < end);
    g_assert_cmpuint(st.bad_events, ==, 7);
    /* still answers commands */
    g_assert_cmpint(dext_xhci_command(x, 0, 0, 23u << 10, NULL), ==, 1);
    dext_xhci_destroy(x);
    fake_free(f);
}

/* Enable Slot handing out slot 0 or a slot beyond MaxSlots: refused */
static void test_bad_slot_id(void)
{
    Fake *f = fake_new();
    DextXhci *x = create_ok(f);
    DextXhciSlot *s = NULL;

    f->slot_reply = 0;
    g_assert_cmpint(dext_xhci_slot_create(x, 1, DEXT_USB_SPEED_HIGH, &s), ==,
                    -EIO);
    f->slot_reply = 200;
    g_assert_cmpint(dext_xhci_slot_create(x, 1, DEXT_USB_SPEED_HIGH, &s), ==,
                    -EIO);
    g_assert_null(s);
    /* bad arguments never reach the controller */
    g_assert_cmpint(dext_xhci_slot_create(x, 0, DEXT_USB_SPEED_HIGH, &s), ==,
                    -EINVAL);
    g_assert_cmpint(dext_xhci_slot_create(x, NPORTS + 1, DEXT_USB_SPEED_HIGH,
                                          &s), ==, -EINVAL);
    dext_xhci_destroy(x);
    fake_free(f);
}

/* port reset: nothing connected -> -ENODEV; reset never completing ->
 * bounded -ETIMEDOUT */
static void test_port_reset(void)
{
    Fake *f = fake_new();
    DextXhci *x = create_ok(f);
    unsigned speed;

    g_assert_cmpint(dext_xhci_port_reset(x, 1, &speed), ==, -ENODEV);
    f->portsc[2] |= 1;                                  /* CCS, PR stuck */
    g_assert_cmpint(dext_xhci_port_reset(x, 2, &speed), ==, -ETIMEDOUT);
    g_assert_cmpint(dext_xhci_port_reset(x, 0, &speed), ==, -EINVAL);
    g_assert_cmpint(dext_xhci_port_reset(x, 9, &speed), ==, -EINVAL);
    dext_xhci_destroy(x);
    fake_free(f);
}

typedef struct Count {
    int n;
    int cancelled;
    int other;
} Count;

static void count_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    Count *c = opaque;

    c->n++;
    if (status == -ECANCELED) {
        c->cancelled++;
    } else {
        c->other++;
    }
}

/* slot, Evaluate Context, Configure Endpoint argument checks, transfer
 * ring accounting (-ENOSPC when full, space back after abort), abort
 * completing every TD with -ECANCELED, bad buffers refused */
static void test_slot_and_ring(void)
{
    Fake *f = fake_new();
    DextXhci *x = create_ok(f);
    DextXhciSlot *s = NULL;
    DextXhciDma buf;
    DextXhciEpDesc bulk = { .address = 0x81, .attributes = 2,
                            .max_packet = 512 };
    DextXhciEpDesc iso = { .address = 0x02, .attributes = 1,
                           .max_packet = 512 };
    DextXhciEpDesc dup2[2] = { bulk, bulk };
    Count c = { 0 };
    int queued = 0, ret;

    g_assert_cmpint(dext_xhci_slot_create(x, 1, DEXT_USB_SPEED_HIGH, &s), ==,
                    0);
    g_assert_cmpuint(dext_xhci_slot_id(s), ==, 1);
    g_assert_cmpint(dext_xhci_slot_set_ep0_mps(s, 64), ==, 0);
    g_assert_cmpint(dext_xhci_slot_set_ep0_mps(s, 0), ==, -EINVAL);
    g_assert_cmpint(dext_xhci_slot_set_ep0_mps(s, 4096), ==, -EINVAL);
    g_assert_cmpint(dext_xhci_configure(s, NULL, 0, &iso, 1), ==, -EINVAL);
    g_assert_cmpint(dext_xhci_configure(s, NULL, 0, dup2, 2), ==, -EINVAL);
    g_assert_cmpint(dext_xhci_configure(s, NULL, 0, &bulk, 1), ==, 0);
    /* already configured and not dropped */
    g_assert_cmpint(dext_xhci_configure(s, NULL, 0, &bulk, 1), ==, -EINVAL);

    g_assert_cmpint(dext_xhci_dma_alloc(x, 4096, &buf), ==, 0);
    g_assert_cmpint(dext_xhci_submit(s, 0x81, NULL, 0, 16, count_cb, &c), ==,
                    -EFAULT);
    g_assert_cmpint(dext_xhci_submit(s, 0x02, NULL, buf.iova, 16, count_cb,
                                     &c), ==, -ENODEV);
    g_assert_cmpint(dext_xhci_submit(s, 0x81, (const uint8_t *)"12345678",
                                     buf.iova, 16, count_cb, &c), ==, -EINVAL);
    /* the fake never runs transfer rings: fill ours up */
    while ((ret = dext_xhci_submit(s, 0x81, NULL, buf.iova, 512, count_cb,
                                   &c)) == 0) {
        queued++;
        g_assert_cmpint(queued, <, 1000);
    }
    g_assert_cmpint(ret, ==, -ENOSPC);
    g_assert_cmpint(queued, >, 100);
    g_assert_cmpint(c.n, ==, 0);
    g_assert_cmpint(dext_xhci_abort(s, 0x81), ==, 0);
    g_assert_cmpint(c.n, ==, queued);
    g_assert_cmpint(c.cancelled, ==, queued);
    /* the space is back */
    g_assert_cmpint(dext_xhci_submit(s, 0x81, NULL, buf.iova, 512, count_cb,
                                     &c), ==, 0);
    /* dropping the endpoint cancels what is queued on it */
    {
        uint8_t drop = 0x81;

        g_assert_cmpint(dext_xhci_configure(s, &drop, 1, NULL, 0), ==, 0);
    }
    g_assert_cmpint(c.cancelled, ==, queued + 1);
    g_assert_cmpint(c.other, ==, 0);
    dext_xhci_dma_free(x, &buf);
    dext_xhci_slot_destroy(s, -ECANCELED);
    dext_xhci_destroy(x);
    fake_free(f);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    g_test_add_func("/usb/xhci-fake/create", test_create);
    g_test_add_func("/usb/xhci-fake/bad-caps", test_bad_caps);
    g_test_add_func("/usb/xhci-fake/silent-controller", test_silent_controller);
    g_test_add_func("/usb/xhci-fake/forged-events", test_forged_events);
    g_test_add_func("/usb/xhci-fake/bad-slot-id", test_bad_slot_id);
    g_test_add_func("/usb/xhci-fake/port-reset", test_port_reset);
    g_test_add_func("/usb/xhci-fake/slot-and-ring", test_slot_and_ring);
    return g_test_run();
}
