/*
 * dextlab-usb-fuzz: random USB traffic against the dextlab-usb model,
 * through QEMU's xHCI (qemu-xhci), driven over the qtest protocol.
 *
 * Machine: q35, -nodefaults, qemu-xhci with two dextlab-usb devices, one
 * SuperSpeed and one high-speed (superspeed=off, small FIFO).  The host
 * side is the runtime's own user-space xHCI driver and USB family API
 * (harness/usb), running over the platform layer with a backend of this
 * program's (the platform's BAR0 and DMA memory, plus an access counter and
 * a switch that lets the driver forget a controller the fuzzer has wrecked).
 *
 * Well-formed but random (family API): control requests with random
 * bmRequestType/bRequest/wValue/wIndex/wLength, biased towards the model's
 * vendor requests and standard requests; bulk and interrupt IO of random
 * sizes (0, odd, above the FIFO) on random pipes, left in flight; aborts,
 * clear-stall, alternate settings, SET_CONFIGURATION, port resets, unplug
 * and re-plug (re-enumeration), virtual clock steps (event timer).
 *
 * Raw (what the controller sees): random TRBs and corrupted control TDs
 * (SETUP wLength vs. data stage length, directions, immediate data) on the
 * devices' transfer rings with random DMA addresses; random reads and
 * harmless-to-the-host writes of xHCI registers; and "chaos" episodes:
 * random commands with garbage input contexts, corrupted output contexts
 * and event ring segment table, random writes to the operational, runtime,
 * port and doorbell registers.  After an episode the host is torn down and
 * re-created (HCRST, fresh enumeration).
 *
 * Every CHECK_EVERY operations both devices must answer READ_REG(ID) (after
 * a host re-creation if the random traffic left them unreachable: then a
 * fresh enumeration must reach them) and QEMU must answer a register read;
 * at the end, on a fresh enumeration, a verified bulk loopback on both.
 * A QEMU crash, sanitizer report (ASan/UBSan abort QEMU), hang (a register
 * read that times out) or a device that does not come back fails the run.
 *
 * Counting: one operation is one submitted request (control request,
 * bulk/interrupt transfer, abort, clear-stall, alt setting, configuration,
 * port reset, re-plug, command, TRB batch, clock step) or one register
 * access the fuzzer makes itself; the driver's own register accesses are
 * counted separately ("mmio").
 *
 *   dextlab-usb-fuzz [--seconds S] [--ops N] [--seed X] [--qemu PATH]
 *                    [--log PATH] [--only OP]
 *
 * Exit status 0 and a final "fuzz: N ops ... ok" line when QEMU and the
 * devices survived; 1 with the seed and the QEMU log path when not (rerun
 * with the same --seed to reproduce; the traffic is single-threaded but
 * completions race with submissions, so a replay is close, not exact: in
 * practice the same seed reached each QEMU bug found so far at the same
 * operation).  --only OP runs one kind of operation (its name as in the
 * final counts), to profile or to narrow a failure down.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>

#include "platform.h"
#include "usb.h"
#include "xhci.h"
#include "hw/dextlab/dextlab-usb-regs.h"

#define CHECK_EVERY     2000        /* ops between liveness checks */
#define NDEV            2
#define NPIPE           3
#define IO_BUF_SIZE     (320 * 1024)
#define SCRATCH_SIZE    (64 * 1024) /* raw TRB data, garbage contexts */
#define MAX_INFLIGHT    6           /* per pipe */
#define OP_TIMEOUT_MS   1000        /* sync requests in the random part */

/* xHCI registers (xHCI 1.2, 5.x): what the raw part aims at */
#define CAP_CAPLENGTH   0x00
#define CAP_HCSPARAMS1  0x04
#define CAP_DBOFF       0x14
#define CAP_RTSOFF      0x18
#define OP_USBCMD       0x00
#define OP_USBSTS       0x04
#define OP_DNCTRL       0x14
#define OP_CRCR         0x18
#define OP_DCBAAP       0x30
#define OP_CONFIG       0x38
#define OP_PORTSC(n)    (0x400 + 0x10 * ((n) - 1))
#define RT_MFINDEX      0x00
#define RT_IR(i)        (0x20 + 32 * (i))
#define CMD_HCRST       (1u << 1)

static const uint8_t pipe_addr[NPIPE] = {
    DEXTLAB_USB_EP_BULK_OUT, DEXTLAB_USB_EP_BULK_IN, DEXTLAB_USB_EP_INTR_IN,
};

typedef enum FuzzOp {
    OP_CONTROL,
    OP_IO,
    OP_ABORT,
    OP_CLEAR_STALL,
    OP_SELECT_ALT,
    OP_SET_CONFIG,
    OP_PORT_RESET,
    OP_REPLUG,
    OP_CLOCK,
    OP_MMIO_READ,
    OP_MMIO_WRITE,
    OP_RAW_TRB,
    OP_RAW_CONTROL,
    OP_CHAOS,
    OP_COUNT
} FuzzOp;

static const char *const op_names[OP_COUNT] = {
    "control", "io", "abort", "clear-stall", "select-alt", "set-config",
    "port-reset", "replug", "clock", "mmio-read", "mmio-write", "raw-trb",
    "raw-control", "chaos",
};

/* Relative weights (per mille-ish); chaos re-creates the host: rare */
static const unsigned op_weight[OP_COUNT] = {
    [OP_CONTROL] = 300, [OP_IO] = 250, [OP_ABORT] = 40,
    [OP_CLEAR_STALL] = 30, [OP_SELECT_ALT] = 12, [OP_SET_CONFIG] = 6,
    [OP_PORT_RESET] = 3, [OP_REPLUG] = 1, [OP_CLOCK] = 30,
    [OP_MMIO_READ] = 60, [OP_MMIO_WRITE] = 150, [OP_RAW_TRB] = 50,
    [OP_RAW_CONTROL] = 50, [OP_CHAOS] = 1,
};

/* Completion statistics of one pipe (lives for the whole run: callbacks
 * of IO submitted to pipes long closed still land here) */
typedef struct PipeStats {
    gint inflight;
    gint ok, stall, cancel, other;
} PipeStats;

typedef struct FuzzDev {
    const char *id;                 /* qdev id */
    const char *add_json;           /* device_add arguments for re-plug */
    unsigned speed;                 /* DEXT_USB_SPEED_* it attaches at */
    DextUsbDevice *dev;             /* reference, NULL while gone */
    DextUsbInterface *iface;
    DextUsbPipe *pipe[NPIPE];
    PipeStats st[NPIPE];
} FuzzDev;

typedef struct Fuzz Fuzz;

/* The xHCI backend: the platform's own (xhci-platform.c) wrapped with an
 * access counter, and "dead" to make the driver skip the halt and Disable
 * Slot commands it would wait for on a wrecked controller. */
typedef struct FuzzHw {
    Fuzz *f;
    const DextXhciHwOps *base;
    void *hw;
} FuzzHw;

struct Fuzz {
    DextPlatform *p;
    DextPciFunction xfn;
    uint8_t *ram;
    uint64_t ram_size;
    DextUsbHost *host;
    DextXhci *x;
    uint32_t caplen, dboff, rtsoff, max_ports, max_slots;
    FuzzDev d[NDEV];
    DextUsbBuffer *io_buf;
    DextUsbBuffer *scratch;
    GRand *rng;
    guint32 seed;
    uint64_t ops;
    uint64_t count[OP_COUNT];
    gint hw_dead;
    bool in_chaos;
    bool want_check;
    uint64_t ctrl_timeouts;
    guint64 mmio;                   /* driver's + ours, through FuzzHw */
    uint64_t host_restarts, check_recoveries, start_retries;
    uint64_t ctrl_ok, ctrl_stall, ctrl_other;
    const char *qemu_log;
};

static G_GNUC_NORETURN G_GNUC_PRINTF(2, 3)
void fuzz_fail(Fuzz *f, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fprintf(stderr, "fuzz: FAILED after %" PRIu64 " ops (seed %u): ",
            f->ops, f->seed);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nfuzz: QEMU's log (guest errors, sanitizer reports): "
            "%s\nfuzz: reproduce with --seed %u\n", f->qemu_log, f->seed);
    fflush(stderr);
    _exit(1);       /* threads of the driver may be blocked: do not join */
}

static uint32_t rnd(Fuzz *f, uint32_t n)
{
    return ((uint64_t)g_rand_int(f->rng) * n) >> 32;
}

static uint64_t rnd64(Fuzz *f)
{
    return ((uint64_t)g_rand_int(f->rng) << 32) | g_rand_int(f->rng);
}

/* ------------------------------------------------------------ backend */

static int hw_read32(void *opaque, uint64_t off, uint32_t *val)
{
    FuzzHw *h = opaque;

    __atomic_add_fetch(&h->f->mmio, 1, __ATOMIC_RELAXED);
    return h->base->read32(h->hw, off, val);
}

static int hw_write32(void *opaque, uint64_t off, uint32_t val)
{
    FuzzHw *h = opaque;

    __atomic_add_fetch(&h->f->mmio, 1, __ATOMIC_RELAXED);
    return h->base->write32(h->hw, off, val);
}

static int hw_dma_alloc(void *opaque, uint64_t size, DextXhciDma *out)
{
    FuzzHw *h = opaque;

    return h->base->dma_alloc(h->hw, size, out);
}

static void hw_dma_free(void *opaque, DextXhciDma *d)
{
    FuzzHw *h = opaque;

    h->base->dma_free(h->hw, d);
}

static bool hw_dma_ok(void *opaque, uint64_t iova, uint64_t len)
{
    FuzzHw *h = opaque;

    return h->base->dma_ok(h->hw, iova, len);
}

static int hw_irq_bind(void *opaque, int efd)
{
    FuzzHw *h = opaque;

    return h->base->irq_bind(h->hw, efd);
}

static void hw_irq_unbind(void *opaque)
{
    FuzzHw *h = opaque;

    h->base->irq_unbind(h->hw);
}

static bool hw_alive(void *opaque)
{
    FuzzHw *h = opaque;

    return !g_atomic_int_get(&h->f->hw_dead) && h->base->alive(h->hw);
}

static void hw_destroy(void *opaque)
{
    FuzzHw *h = opaque;

    h->base->destroy(h->hw);
    g_free(h);
}

static const DextXhciHwOps fuzz_hw_ops = {
    .name = "usb-fuzz",
    .read32 = hw_read32,
    .write32 = hw_write32,
    .dma_alloc = hw_dma_alloc,
    .dma_free = hw_dma_free,
    .dma_ok = hw_dma_ok,
    .irq_bind = hw_irq_bind,
    .irq_unbind = hw_irq_unbind,
    .alive = hw_alive,
    .destroy = hw_destroy,
};

static int clock_fn(void *opaque, uint64_t ns)
{
    Fuzz *f = opaque;

    return dext_platform_clock_step(f->p, ns, NULL);
}

/* ------------------------------------------------------- raw registers */

static void reg_write(Fuzz *f, uint64_t off, uint32_t val)
{
    int r;

    off &= ~3ull;
    if (off + 4 > f->xfn.bars[0].size) {
        return;
    }
    __atomic_add_fetch(&f->mmio, 1, __ATOMIC_RELAXED);
    r = dext_platform_bar_write(f->p, f->xfn.addr, 0, off, 4, val);
    if (r == -ESHUTDOWN || r == -EPIPE) {
        fuzz_fail(f, "QEMU died (xHCI write 0x%x at 0x%" PRIx64 ")", val, off);
    }
}

static uint32_t reg_read(Fuzz *f, uint64_t off, unsigned width)
{
    uint64_t v = 0;
    int r;

    off &= ~(uint64_t)(width - 1);
    if (off + width > f->xfn.bars[0].size) {
        return 0;
    }
    __atomic_add_fetch(&f->mmio, 1, __ATOMIC_RELAXED);
    r = dext_platform_bar_read(f->p, f->xfn.addr, 0, off, width, &v);
    if (r == -ESHUTDOWN || r == -EPIPE || r == -ETIMEDOUT) {
        fuzz_fail(f, "xHCI read at 0x%" PRIx64 ": %s (QEMU %s)", off,
                  dext_platform_last_error(f->p),
                  dext_platform_alive(f->p) ? "hung" : "died");
    }
    return (uint32_t)v;
}

/* QEMU answers and the capability registers read what they did */
static void check_qemu(Fuzz *f)
{
    uint32_t v = reg_read(f, CAP_CAPLENGTH, 4);

    if ((v & 0xff) != f->caplen || reg_read(f, CAP_DBOFF, 4) != f->dboff) {
        fuzz_fail(f, "xHCI capability registers changed (0x%08x)", v);
    }
}

/* ------------------------------------------------------ fuzzed values */

/*
 * An address a TRB or context could carry.  Outside chaos episodes the
 * driver's own structures (rings, contexts, DCBAA: the upper half of RAM,
 * the platform's DMA pool), the xHCI's registers and the MSI window are
 * left alone: DMA there wrecks the host until the next re-creation, which
 * only an episode pays for.
 */
static uint64_t fuzz_addr(Fuzz *f)
{
    uint64_t scratch = dext_usb_buffer_iova(f->scratch);
    uint64_t io = dext_usb_buffer_iova(f->io_buf);

    switch (rnd(f, 12)) {
    case 0: case 1: case 2:
        return scratch + rnd(f, SCRATCH_SIZE);
    case 3:
        return io + rnd(f, IO_BUF_SIZE);
    case 4:
        /* anywhere in RAM; outside an episode, RAM nobody uses */
        return rnd64(f) % (f->in_chaos ? f->ram_size : f->ram_size / 2);
    case 5:
        return f->ram_size + rnd(f, 1u << 30);         /* past RAM */
    case 6:
        if (f->in_chaos) {                             /* the xHCI itself */
            return f->xfn.bars[0].addr + rnd(f, f->xfn.bars[0].size);
        }
        return 0xfed00000ull + rnd(f, 0x1000);         /* HPET */
    case 7:
        if (f->in_chaos) {
            return 0xfee00000ull + rnd(f, 0x1000);     /* MSI window */
        }
        return 0xffff0000ull + rnd(f, 0x10000);        /* BIOS ROM */
    case 8:
        return UINT64_MAX - rnd(f, 1u << 20);          /* wraps */
    case 9:
        return scratch + SCRATCH_SIZE - rnd(f, 64);    /* runs off */
    case 10:
        return rnd(f, 4096);                           /* page zero */
    default:
        return rnd64(f);
    }
}

static uint32_t fuzz_value(Fuzz *f)
{
    switch (rnd(f, 9)) {
    case 0:
        return 0;
    case 1:
        return UINT32_MAX;
    case 2:
        return 1u << rnd(f, 32);
    case 3:
        return (1u << rnd(f, 17)) - rnd(f, 2);
    case 4:
        return rnd(f, 16);
    case 5:
        return (uint32_t)fuzz_addr(f);
    default:
        return g_rand_int(f->rng);
    }
}

/* A transfer length: 0, 1, odd, packet multiples +- 1, above the FIFO */
static uint32_t fuzz_len(Fuzz *f, uint32_t max)
{
    uint32_t n;

    switch (rnd(f, 8)) {
    case 0:
        n = 0;
        break;
    case 1:
        n = 1 + rnd(f, 17);
        break;
    case 2:
        n = (1 + rnd(f, 64)) * 512 + rnd(f, 3) - 1;
        break;
    case 3:
        n = (1 + rnd(f, 16)) * 1024;
        break;
    case 4:
        n = DEXTLAB_USB_FIFO_DEFAULT + rnd(f, 3) - 1;
        break;
    case 5:
        n = 8192 + rnd(f, 3) - 1;                      /* HS FIFO size */
        break;
    default:
        n = rnd(f, max + 1);
        break;
    }
    return MIN(n, max);
}

/* --------------------------------------------------- devices and host */

static FuzzDev *fdev_by_speed(Fuzz *f, unsigned speed)
{
    for (unsigned i = 0; i < NDEV; i++) {
        if (f->d[i].speed == speed) {
            return &f->d[i];
        }
    }
    return NULL;
}

static void fdev_drop(FuzzDev *d)
{
    if (d->dev) {
        dext_usb_device_unref(d->dev);
    }
    d->dev = NULL;
    d->iface = NULL;
    memset(d->pipe, 0, sizeof(d->pipe));
}

/* Pipes of the current configuration / alternate setting. */
static void fdev_pipes(FuzzDev *d)
{
    memset(d->pipe, 0, sizeof(d->pipe));
    d->iface = d->dev ? dext_usb_device_interface(d->dev, 0) : NULL;
    if (!d->iface) {
        return;
    }
    dext_usb_interface_open(d->iface);      /* -EBUSY: already open */
    for (unsigned k = 0; k < NPIPE; k++) {
        if (dext_usb_interface_copy_pipe(d->iface, pipe_addr[k],
                                         &d->pipe[k]) < 0) {
            d->pipe[k] = NULL;
        }
    }
}

/* Take the devices the host has now (after create or re-plug). */
static void fuzz_take_devices(Fuzz *f)
{
    DextUsbDevice **devs;
    size_t n;

    for (unsigned i = 0; i < NDEV; i++) {
        fdev_drop(&f->d[i]);
    }
    n = dext_usb_host_devices(f->host, &devs);
    for (size_t i = 0; i < n; i++) {
        FuzzDev *d = fdev_by_speed(f, dext_usb_device_speed(devs[i]));

        if (!d || d->dev) {
            dext_usb_device_unref(devs[i]);
            continue;
        }
        d->dev = devs[i];
        dext_usb_device_open(d->dev);
        dext_usb_device_set_configuration(d->dev, DEXTLAB_USB_CONFIG_VALUE);
        fdev_pipes(d);
    }
    g_free(devs);
}

static void fuzz_host_start(Fuzz *f, bool retry)
{
    DextUsbHostConfig hc = { 0 };
    FuzzHw *h = g_new0(FuzzHw, 1);
    uint64_t bar0;
    int ret;

    h->f = f;
    hc.xhci.timeout_ms = OP_TIMEOUT_MS;
    hc.xhci.clock_step = clock_fn;
    hc.xhci.clock_opaque = f;
    hc.xhci.clock_step_ns = 1000000;
    ret = dext_xhci_platform_hw(f->p, f->xfn.addr, &h->base, &h->hw, &bar0);
    if (ret < 0) {
        fuzz_fail(f, "xHCI backend: %s (%s)", g_strerror(-ret),
                  dext_platform_last_error(f->p));
    }
    ret = dext_usb_host_create_hw(&fuzz_hw_ops, h, bar0, &hc,
                                  &f->host);
    if (ret < 0) {
        uint32_t cmd = 0;

        f->host = NULL;
        dext_platform_cfg_read(f->p, f->xfn.addr, 0x04, 4, &cmd);
        fprintf(stderr, "fuzz: the xHCI did not start (%s): USBCMD 0x%08x "
                "USBSTS 0x%08x CRCR 0x%08x PCI command/status 0x%08x\n",
                g_strerror(-ret), reg_read(f, f->caplen + OP_USBCMD, 4),
                reg_read(f, f->caplen + OP_USBSTS, 4),
                reg_read(f, f->caplen + OP_CRCR, 4), cmd);
        if (retry) {
            fuzz_fail(f, "the xHCI does not start again: %s",
                      g_strerror(-ret));
        }
        /* once more: a start that races the wreckage is not yet a bug */
        f->start_retries++;
        fuzz_host_start(f, true);
        return;
    }
    f->x = dext_usb_host_xhci(f->host);
    ret = dext_usb_host_wait_devices(f->host, NDEV, 15000);
    if (ret < 0) {
        fuzz_fail(f, "the devices are not enumerated again after a "
                  "controller reset: %s", g_strerror(-ret));
    }
    if (dext_usb_buffer_alloc(f->host, IO_BUF_SIZE, &f->io_buf) < 0 ||
        dext_usb_buffer_alloc(f->host, SCRATCH_SIZE, &f->scratch) < 0) {
        fuzz_fail(f, "DMA buffers");
    }
    fuzz_take_devices(f);
}

/*
 * Tear the host down and start it again.  @wrecked: the controller may be
 * in any state (chaos): reset it by hand, let the driver skip the commands
 * it would wait for.
 */
static void fuzz_host_restart(Fuzz *f, bool wrecked)
{
    if (wrecked) {
        g_atomic_int_set(&f->hw_dead, 1);
        reg_write(f, f->caplen + OP_USBCMD, 0);
        reg_write(f, f->caplen + OP_USBCMD, CMD_HCRST);
    }
    for (unsigned i = 0; i < NDEV; i++) {
        fdev_drop(&f->d[i]);
    }
    /* buffers are the controller's DMA memory: before the host goes
     * (in-flight IO on them is cancelled by the destroy, and the
     * controller's writes land in guest RAM either way) */
    dext_usb_buffer_free(f->io_buf);
    dext_usb_buffer_free(f->scratch);
    f->io_buf = f->scratch = NULL;
    dext_usb_host_destroy(f->host);
    f->host = NULL;
    f->x = NULL;
    g_atomic_int_set(&f->hw_dead, 0);
    check_qemu(f);
    f->host_restarts++;
    fuzz_host_start(f, false);
    for (unsigned i = 0; i < NDEV; i++) {
        for (unsigned k = 0; k < NPIPE; k++) {
            if (g_atomic_int_get(&f->d[i].st[k].inflight)) {
                fuzz_fail(f, "IO still in flight after the host was "
                          "destroyed (harness bug)");
            }
        }
    }
}

/* ------------------------------------------------- well-formed traffic */

static void io_done(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    PipeStats *st = opaque;

    switch (status) {
    case 0:
        g_atomic_int_inc(&st->ok);
        break;
    case -EPIPE:
        g_atomic_int_inc(&st->stall);
        break;
    case -ECANCELED:
        g_atomic_int_inc(&st->cancel);
        break;
    default:
        g_atomic_int_inc(&st->other);
        break;
    }
    g_atomic_int_add(&st->inflight, -1);
}

static FuzzDev *pick_dev(Fuzz *f)
{
    FuzzDev *d = &f->d[rnd(f, NDEV)];

    return d->dev ? d : NULL;
}

/* A well-formed request: the model's vendor requests and the standard
 * requests a USB device answers, arguments mostly in range */
static void valid_request(Fuzz *f, uint8_t *rt, uint8_t *req, uint16_t *val,
                          uint16_t *idx, uint16_t *len)
{
    static const uint8_t std_descs[] = { 1, 2, 3, 6, 15, 7 };
    uint16_t edge = rnd(f, 3) - 1;          /* -1, 0, +1 */

    *val = 0;
    *idx = 0;
    *len = 0;
    switch (rnd(f, 14)) {
    case 0: case 1:
        *rt = 0xc0;
        *req = DEXTLAB_USB_REQ_READ_REG;
        *idx = rnd(f, DEXTLAB_USB_NUM_REGS + 1);
        *len = rnd(f, 4) ? 4 : rnd(f, 9);
        break;
    case 2:
        *rt = 0x40;
        *req = DEXTLAB_USB_REQ_WRITE_REG;
        *idx = rnd(f, 2) ? DEXTLAB_USB_REG_SCRATCH : rnd(f, DEXTLAB_USB_NUM_REGS + 1);
        *len = rnd(f, 6) ? 4 : rnd(f, 9);
        break;
    case 3:
        *rt = 0x40;
        *req = DEXTLAB_USB_REQ_RESET_FIFO;
        break;
    case 4:
        *rt = 0x40;
        *req = DEXTLAB_USB_REQ_FORCE_STALL;
        *idx = rnd(f, 6) ? pipe_addr[rnd(f, NPIPE)] : rnd(f, 0x100);
        break;
    case 5:
        *rt = 0x40;
        *req = DEXTLAB_USB_REQ_SET_EVENT_RATE;
        *val = rnd(f, 2) ? rnd(f, 2000)
                         : (uint32_t)DEXTLAB_USB_EVENT_RATE_MAX + edge;
        break;
    case 6:
        *rt = 0x40;
        *req = DEXTLAB_USB_REQ_TRIGGER_EVENTS;
        *val = rnd(f, 2) ? 1 + rnd(f, 80)
                         : (uint32_t)DEXTLAB_USB_TRIGGER_MAX + edge;
        *idx = rnd(f, 65536);
        break;
    case 7:
        *rt = 0x40;
        *req = DEXTLAB_USB_REQ_ECHO;
        *len = rnd(f, 2) ? rnd(f, DEXTLAB_USB_ECHO_MAX + 1)
                         : (uint32_t)DEXTLAB_USB_ECHO_MAX + edge;
        break;
    case 8:
        *rt = 0xc0;
        *req = DEXTLAB_USB_REQ_ECHO;
        *len = rnd(f, 2) ? rnd(f, DEXTLAB_USB_ECHO_MAX + 8) : rnd(f, 4097);
        break;
    case 9:
        *rt = 0x80;                                     /* GET_DESCRIPTOR */
        *req = 6;
        *val = std_descs[rnd(f, G_N_ELEMENTS(std_descs))] << 8 | rnd(f, 8);
        *idx = *val >> 8 == 3 ? 0x409 : 0;
        *len = rnd(f, 2) ? 255 : rnd(f, 4097);
        break;
    case 10:
        *rt = 0x80 | rnd(f, 3);                         /* GET_STATUS */
        *req = 0;
        *idx = *rt == 0x82 ? pipe_addr[rnd(f, NPIPE)] : 0;
        *len = 2;
        break;
    case 11:
        *rt = 0x02;                           /* CLEAR/SET_FEATURE(HALT) */
        *req = rnd(f, 2) ? 1 : 3;
        *idx = pipe_addr[rnd(f, NPIPE)];
        break;
    case 12:
        *rt = rnd(f, 2) ? 0x80 : 0x81;        /* GET_CONFIGURATION/INTERFACE */
        *req = *rt == 0x80 ? 8 : 10;
        *len = 1;
        break;
    default:
        *rt = 0x01;                           /* SET_INTERFACE, unknown to */
        *req = 11;                            /* the driver */
        *val = rnd(f, 3);
        break;
    }
}

static unsigned fuzz_control(Fuzz *f)
{
    static const uint8_t types[] = {
        0x40, 0xc0, 0x40, 0xc0, 0x40, 0xc0,     /* vendor, device */
        0x80, 0x00, 0x81, 0x01, 0x82, 0x02,     /* standard */
        0x41, 0xc1, 0x42, 0xc2, 0x20, 0xa0, 0x60, 0xe0, 0x43, 0xc3,
    };
    static uint8_t data[4096];
    FuzzDev *d = pick_dev(f);
    uint8_t rt, req;
    uint16_t val, idx, len;
    uint32_t actual = 0;
    int ret;

    if (!d) {
        return 0;
    }
    rt = rnd(f, 8) ? types[rnd(f, G_N_ELEMENTS(types))] : rnd(f, 256);
    if ((rt & 0x60) == 0x40 && rnd(f, 8)) {
        req = DEXTLAB_USB_REQ_READ_REG + rnd(f, 8);     /* one past ECHO */
    } else {
        req = rnd(f, 4) ? rnd(f, 13) : rnd(f, 256);
    }
    /* SET_ADDRESS behind the driver's back would only strand the device
     * until the next check; SET_CONFIGURATION/SET_INTERFACE are fuzzed
     * here as raw requests too (the driver does not know) */
    if ((rt & 0x60) == 0 && req == 5 && rnd(f, 8)) {
        req = 0;
    }
    switch (rnd(f, 5)) {
    case 0:
        val = rnd(f, 4);
        break;
    case 1:
        val = rnd(f, DEXTLAB_USB_TRIGGER_MAX + 2);
        break;
    case 2:
        val = (rnd(f, 16) << 8) | rnd(f, 8);            /* descriptors */
        break;
    default:
        val = rnd(f, 65536);
        break;
    }
    switch (rnd(f, 4)) {
    case 0:
        idx = rnd(f, DEXTLAB_USB_NUM_REGS + 2);
        break;
    case 1:
        idx = pipe_addr[rnd(f, NPIPE)] ^ (rnd(f, 4) ? 0 : 0x80);
        break;
    case 2:
        idx = rnd(f, 4) ? 0 : 0x409;
        break;
    default:
        idx = rnd(f, 65536);
        break;
    }
    switch (rnd(f, 5)) {
    case 0:
        len = 0;
        break;
    case 1:
        len = rnd(f, 9);
        break;
    case 2:
        len = DEXTLAB_USB_ECHO_MAX + rnd(f, 3) - 1;
        break;
    case 3:
        len = rnd(f, sizeof(data) + 1);
        break;
    default:
        len = rnd(f, 300);
        break;
    }
    if (rnd(f, 2)) {
        /* half the time a request the model should take, arguments at
         * and around their limits */
        valid_request(f, &rt, &req, &val, &idx, &len);
    }
    if (!(rt & 0x80)) {
        for (unsigned i = 0; i < len; i += 4) {
            uint32_t v = g_rand_int(f->rng);

            memcpy(data + i, &v, MIN(4u, len - i));
        }
        if (req == DEXTLAB_USB_REQ_WRITE_REG && idx == DEXTLAB_USB_REG_EVENT_RATE &&
            len == 4 && rnd(f, 2)) {
            uint32_t hz = rnd(f, DEXTLAB_USB_EVENT_RATE_MAX + 2);

            memcpy(data, &hz, 4);
        }
    }
    ret = dext_usb_device_control(d->dev, rt, req, val, idx, len ? data : NULL,
                                  len, &actual, OP_TIMEOUT_MS);
    if (ret == 0) {
        f->ctrl_ok++;
    } else if (ret == -EPIPE) {
        f->ctrl_stall++;
    } else {
        f->ctrl_other++;
    }
    if (ret == -ETIMEDOUT) {
        f->want_check = true;       /* unreachable: check (and cure) now */
        f->ctrl_timeouts++;
    }
    return 1;
}

static unsigned fuzz_io(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);
    unsigned k = rnd(f, NPIPE);
    uint32_t len, off;
    int ret;

    if (!d || !d->pipe[k] ||
        g_atomic_int_get(&d->st[k].inflight) >= MAX_INFLIGHT) {
        return 0;
    }
    len = k == 2 ? (rnd(f, 2) ? DEXTLAB_USB_EVENT_SIZE : fuzz_len(f, 256))
                 : fuzz_len(f, IO_BUF_SIZE / 2);
    off = rnd(f, 4) ? 0 : rnd(f, IO_BUF_SIZE - len + 1);    /* unaligned */
    if (k == 0) {
        uint8_t *p = dext_usb_buffer_data(f->io_buf);

        for (uint32_t i = 0; i < MIN(len, 64u); i++) {
            p[off + i] = i;
        }
    }
    g_atomic_int_inc(&d->st[k].inflight);
    ret = dext_usb_pipe_async_io(d->pipe[k], f->io_buf, off, len, io_done,
                                 &d->st[k]);
    if (ret < 0) {
        g_atomic_int_add(&d->st[k].inflight, -1);
    }
    return 1;
}

static unsigned fuzz_abort(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);
    unsigned k = rnd(f, NPIPE);

    if (!d || !d->pipe[k]) {
        return 0;
    }
    dext_usb_pipe_abort(d->pipe[k]);
    return 1;
}

static unsigned fuzz_clear_stall(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);
    unsigned k = rnd(f, NPIPE);

    if (!d || !d->pipe[k]) {
        return 0;
    }
    dext_usb_pipe_clear_stall(d->pipe[k]);
    return 1;
}

static unsigned fuzz_select_alt(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);

    if (!d || !d->iface) {
        return 0;
    }
    dext_usb_interface_select_alt(d->iface, rnd(f, 8) ? rnd(f, 2)
                                                      : rnd(f, 256));
    fdev_pipes(d);
    return 1;
}

static unsigned fuzz_set_config(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);

    if (!d) {
        return 0;
    }
    dext_usb_device_set_configuration(d->dev, rnd(f, 4) ? rnd(f, 2)
                                                        : rnd(f, 256));
    fdev_pipes(d);
    return 1;
}

static unsigned fuzz_port_reset(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);
    unsigned speed;

    if (!d) {
        return 0;
    }
    dext_xhci_port_reset(f->x, dext_usb_device_port(d->dev), &speed);
    return 1;
}

/* Unplug a device and plug it back: detach with IO in flight, then a
 * fresh enumeration */
static unsigned fuzz_replug(Fuzz *f)
{
    FuzzDev *d = &f->d[rnd(f, NDEV)];
    g_autofree char *del = g_strdup_printf("{\"id\": \"%s\"}", d->id);
    int ret;

    ret = dext_platform_qmp(f->p, "device_del", del, NULL);
    if (ret == 0 &&
        dext_platform_qmp_wait_event(f->p, "DEVICE_DELETED", 10000, NULL) < 0) {
        fuzz_fail(f, "device_del %s: no DEVICE_DELETED", d->id);
    }
    if (dext_usb_host_wait_devices(f->host, NDEV - 1, 10000) < 0) {
        fuzz_fail(f, "the host did not see %s go", d->id);
    }
    if (dext_platform_qmp(f->p, "device_add", d->add_json, NULL) < 0) {
        fuzz_fail(f, "device_add %s: %s", d->id, dext_platform_last_error(f->p));
    }
    if (dext_usb_host_wait_devices(f->host, NDEV, 10000) < 0) {
        /* the controller may be in a state only a reset cures; the next
         * check decides */
        fuzz_host_restart(f, true);
    }
    fuzz_take_devices(f);
    return 1;
}

/* ------------------------------------------------------------ raw part */

enum {
    TRB_NORMAL = 1, TRB_SETUP = 2, TRB_DATA = 3, TRB_STATUS = 4, TRB_ISOCH = 5,
    TRB_LINK = 6, TRB_EVDATA = 7, TRB_NOOP = 8,
};
#define TRB_TYPE(t)     ((uint32_t)(t) << 10)
#define TRB_IOC         (1u << 5)
#define TRB_IDT         (1u << 6)
#define TRB_CH          (1u << 4)
#define TRB_DIR_IN      (1u << 16)

/* Fill scratch memory with noise (garbage contexts, data to read) */
static void scribble(Fuzz *f, uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = rnd(f, 4) ? g_rand_int(f->rng) : 0;

        memcpy(p + i, &v, MIN((size_t)4, len - i));
    }
}

static void raw_trb(Fuzz *f, uint64_t *param, uint32_t *status,
                    uint32_t *control)
{
    static const uint8_t types[] = {
        TRB_NORMAL, TRB_NORMAL, TRB_NORMAL, TRB_SETUP, TRB_DATA, TRB_STATUS,
        TRB_ISOCH, TRB_LINK, TRB_EVDATA, TRB_NOOP, 0, 9, 23, 33, 63,
    };
    uint32_t type = rnd(f, 8) ? types[rnd(f, G_N_ELEMENTS(types))]
                              : rnd(f, 64);

    *param = fuzz_addr(f);
    if (type == TRB_SETUP && rnd(f, 2)) {
        *param = rnd64(f);                  /* a random SETUP packet */
    }
    switch (rnd(f, 4)) {
    case 0:
        *status = fuzz_len(f, 0x1ffff);
        break;
    case 1:
        *status = g_rand_int(f->rng);       /* TD size, interrupter */
        break;
    default:
        *status = rnd(f, 0x20000);
        break;
    }
    *control = TRB_TYPE(type) | (rnd(f, 2) ? rnd(f, 0x400) & ~1u : 0) |
               (rnd(f, 4) ? 0 : (g_rand_int(f->rng) & 0xffff0000u));
}

/* Random TRBs on a random configured endpoint, then abort it. */
static unsigned fuzz_raw_trb(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);
    uint64_t param[16];
    uint32_t status[16], control[16];
    unsigned n = 1 + rnd(f, 16), k = rnd(f, NPIPE + 1);
    DextXhciSlot *s;
    DextUsbPipe *pipe;

    if (!d || !(s = dext_xhci_port_slot(f->x, dext_usb_device_port(d->dev)))) {
        return 0;
    }
    pipe = k < NPIPE ? d->pipe[k] : NULL;     /* k == NPIPE: EP0 */
    if (k < NPIPE && !pipe) {
        return 0;                             /* not configured now */
    }
    scribble(f, dext_usb_buffer_data(f->scratch), 512);
    for (unsigned i = 0; i < n; i++) {
        raw_trb(f, &param[i], &status[i], &control[i]);
    }
    /* nothing of the driver's in flight on the ring: its events would
     * be taken for the raw TRBs' */
    if (pipe) {
        dext_usb_pipe_abort(pipe);
    }
    if (dext_xhci_submit_raw(s, pipe ? pipe_addr[k] : 0, param, status,
                             control, n) < 0) {
        return 0;
    }
    if (rnd(f, 2)) {
        dext_platform_clock_step(f->p, rnd(f, 4000000), NULL);
    }
    /* the raw TDs may have halted the endpoint behind the driver's back
     * (an abort alone leaves a halted endpoint halted): Reset Endpoint,
     * Stop if it was not halted, dequeue past them */
    dext_xhci_reset_ep(s, pipe ? pipe_addr[k] : 0);
    return 1;
}

/*
 * A control TD the driver would never build: SETUP wLength vs. the data
 * stage's length, directions and TRT that disagree, immediate data,
 * missing or extra stages, data on random addresses.
 */
static unsigned fuzz_raw_control(Fuzz *f)
{
    FuzzDev *d = pick_dev(f);
    uint64_t param[6];
    uint32_t status[6], control[6];
    unsigned n = 0;
    DextXhciSlot *s;
    uint8_t setup[8];
    uint16_t wlen = rnd(f, 4) ? rnd(f, 600) : rnd(f, 65536);
    uint32_t dlen;
    bool in;

    if (!d || !(s = dext_xhci_port_slot(f->x, dext_usb_device_port(d->dev)))) {
        return 0;
    }
    setup[0] = rnd(f, 4) ? (rnd(f, 2) ? 0xc0 : 0x40) : rnd(f, 256);
    setup[1] = rnd(f, 4) ? DEXTLAB_USB_REQ_READ_REG + rnd(f, 7) : rnd(f, 256);
    setup[2] = rnd(f, 256);
    setup[3] = rnd(f, 4) ? 0 : rnd(f, 256);
    setup[4] = rnd(f, 2) ? rnd(f, DEXTLAB_USB_NUM_REGS + 1) : rnd(f, 256);
    setup[5] = rnd(f, 4) ? 0 : rnd(f, 256);
    setup[6] = wlen & 0xff;
    setup[7] = wlen >> 8;
    in = setup[0] & 0x80;
    if (rnd(f, 5)) {
        memcpy(&param[n], setup, 8);
        status[n] = rnd(f, 6) ? 8 : rnd(f, 0x20000);
        control[n] = TRB_TYPE(TRB_SETUP) | (rnd(f, 6) ? TRB_IDT : 0) |
                     ((rnd(f, 4) ? (wlen ? (in ? 3u : 2u) : 0u) : rnd(f, 4))
                      << 16) | (rnd(f, 8) ? 0 : TRB_IOC);
        n++;
    }
    if (rnd(f, 4)) {
        switch (rnd(f, 5)) {
        case 0:
            dlen = wlen;
            break;
        case 1:
            dlen = wlen + 1 + rnd(f, 4096);
            break;
        case 2:
            dlen = wlen ? rnd(f, wlen) : 0;
            break;
        default:
            dlen = rnd(f, 0x20000);
            break;
        }
        param[n] = rnd(f, 3) ? dext_usb_buffer_iova(f->scratch) +
                               rnd(f, SCRATCH_SIZE / 2) : fuzz_addr(f);
        status[n] = dlen;
        control[n] = TRB_TYPE(rnd(f, 6) ? TRB_DATA : TRB_NORMAL) |
                     ((rnd(f, 4) ? in : rnd(f, 2)) ? TRB_DIR_IN : 0) |
                     (rnd(f, 8) ? 0 : TRB_IDT) | (rnd(f, 3) ? 0 : TRB_CH) |
                     (rnd(f, 4) ? 0 : TRB_IOC);
        n++;
        if (rnd(f, 3) == 0) {
            param[n] = dext_usb_buffer_iova(f->scratch) + rnd(f, SCRATCH_SIZE);
            status[n] = fuzz_len(f, 0x10000);
            control[n] = TRB_TYPE(TRB_NORMAL) | (rnd(f, 2) ? TRB_CH : 0);
            n++;
        }
    }
    if (rnd(f, 6)) {
        param[n] = rnd(f, 8) ? 0 : fuzz_addr(f);
        status[n] = rnd(f, 8) ? 0 : g_rand_int(f->rng);
        control[n] = TRB_TYPE(TRB_STATUS) | (rnd(f, 2) ? TRB_DIR_IN : 0) |
                     TRB_IOC;
        n++;
    }
    if (rnd(f, 4) == 0) {
        raw_trb(f, &param[n], &status[n], &control[n]);
        n++;
    }
    if (n == 0) {
        return 0;
    }
    scribble(f, dext_usb_buffer_data(f->scratch), 1024);
    if (dext_xhci_submit_raw(s, 0, param, status, control, n) < 0) {
        return 0;
    }
    dext_xhci_reset_ep(s, 0);               /* as in fuzz_raw_trb() */
    return 1;
}

/* An xHCI register offset, with where it points */
static uint64_t fuzz_reg(Fuzz *f, bool harmless)
{
    unsigned nports = f->max_ports;

    if (harmless) {
        /* what cannot take the driver's controller away: capability
         * registers (read-only), MFINDEX, interrupters other than the
         * driver's, doorbells of unused slots, unimplemented space */
        switch (rnd(f, 5)) {
        case 0:
            return rnd(f, f->caplen);
        case 1:
            return f->rtsoff + (rnd(f, 8) ? RT_IR(1 + rnd(f, 15)) +
                                            rnd(f, 32) : RT_MFINDEX);
        case 2:
            return f->dboff + 4 * (f->max_slots - rnd(f, 4));
        case 3:
            return f->caplen + OP_DNCTRL;
        default:
            return f->caplen + OP_PORTSC(nports) + 0x10 + rnd(f, 0x100);
        }
    }
    switch (rnd(f, 8)) {
    case 0:
        return f->caplen + rnd(f, 0x40);                   /* operational */
    case 1:
        return f->caplen + OP_PORTSC(1 + rnd(f, nports)) + 4 * rnd(f, 4);
    case 2:
        return f->rtsoff + RT_IR(0) + rnd(f, 32);          /* interrupter 0 */
    case 3:
        return f->rtsoff + rnd(f, 0x20 + 32 * 16);
    case 4:
    case 5:
        return f->dboff + 4 * rnd(f, f->max_slots + 2);    /* doorbells */
    case 6:
        return f->caplen + (rnd(f, 2) ? OP_CRCR : OP_DCBAAP) + 4 * rnd(f, 2);
    default:
        return rnd(f, f->xfn.bars[0].size);
    }
}

static unsigned fuzz_mmio_read(Fuzz *f)
{
    static const unsigned widths[] = { 4, 4, 4, 1, 2, 8 };

    reg_read(f, fuzz_reg(f, rnd(f, 2)), widths[rnd(f, G_N_ELEMENTS(widths))]);
    return 1;
}

static unsigned fuzz_mmio_write(Fuzz *f)
{
    uint64_t off = fuzz_reg(f, true);
    uint32_t val = fuzz_value(f);

    if (off >= f->dboff && off < f->dboff + 4 * 256) {
        /* doorbell of a slot the driver does not use (the host takes the
         * lowest ids): endpoint targets and stream ids at random */
        unsigned slot = (off - f->dboff) / 4;

        if (slot <= NDEV + 2) {
            return 0;
        }
        val = rnd(f, 4) ? rnd(f, 34) | (rnd(f, 4) ? 0 : g_rand_int(f->rng) & 0xffff0000u)
                        : val;
    }
    reg_write(f, off, val);
    return 1;
}

/*
 * Chaos: what no driver would do.  Random commands with garbage input
 * contexts, corrupted output contexts and event ring segment table, then
 * random writes to the operational, port, interrupter-0 and doorbell
 * registers.  The controller is then reset and the host re-created.
 */
static unsigned fuzz_chaos(Fuzz *f)
{
    uint8_t *scratch = dext_usb_buffer_data(f->scratch);
    uint64_t siova = dext_usb_buffer_iova(f->scratch);
    unsigned ncmd = rnd(f, 5), nwrites = 1 + rnd(f, 24), ops = 1;

    f->in_chaos = true;
    scribble(f, scratch, SCRATCH_SIZE);
    for (unsigned i = 0; i < ncmd; i++) {
        static const uint8_t cmds[] = { 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                        18, 19, 20, 21, 22, 23, 0, 1, 63 };
        uint32_t type = cmds[rnd(f, G_N_ELEMENTS(cmds))];
        uint32_t slot = rnd(f, 4) ? 1 + rnd(f, NDEV + 1) : rnd(f, 256);
        uint32_t ctl = (type << 10) | (slot << 24) | (rnd(f, 32) << 16) |
                       (rnd(f, 2) ? (1u << 9) : 0);     /* BSR / DC / TSP */
        uint64_t param = rnd(f, 4) ? siova + 64 * rnd(f, SCRATCH_SIZE / 64 - 64)
                                   : fuzz_addr(f);

        if (rnd(f, 3) == 0) {
            param |= rnd(f, 16);            /* DCS and stream context type */
        }
        dext_xhci_command(f->x, param, rnd(f, 4) ? 0 : g_rand_int(f->rng), ctl,
                          NULL);
        ops++;
    }
    /* the controller's own structures, as it finds them in guest RAM */
    if (rnd(f, 2)) {
        uint64_t dcbaa = reg_read(f, f->caplen + OP_DCBAAP, 4) |
                         (uint64_t)reg_read(f, f->caplen + OP_DCBAAP + 4, 4) << 32;
        unsigned slot = 1 + rnd(f, NDEV);

        if (dcbaa < f->ram_size && dcbaa + 8 * (slot + 1) <= f->ram_size) {
            uint64_t ctx;

            memcpy(&ctx, f->ram + dcbaa + 8 * slot, 8);
            if (ctx && ctx < f->ram_size && ctx + 1024 <= f->ram_size) {
                scribble(f, f->ram + ctx + 32 * rnd(f, 8), 32 * (1 + rnd(f, 4)));
            } else if (rnd(f, 2)) {
                uint64_t a = fuzz_addr(f);

                memcpy(f->ram + dcbaa + 8 * slot, &a, 8);
            }
        }
    }
    if (rnd(f, 4) == 0) {
        uint64_t erst = reg_read(f, f->rtsoff + RT_IR(0) + 0x10, 4) |
                        (uint64_t)reg_read(f, f->rtsoff + RT_IR(0) + 0x14, 4) << 32;

        if (erst < f->ram_size && erst + 16 <= f->ram_size) {
            uint64_t e[2] = { fuzz_addr(f), rnd(f, 4) ? rnd(f, 512) : rnd64(f) };

            memcpy(f->ram + erst, e, sizeof(e));
        }
    }
    for (unsigned i = 0; i < nwrites; i++) {
        reg_write(f, fuzz_reg(f, false), fuzz_value(f));
        ops++;
        if (rnd(f, 4) == 0) {
            ops += fuzz_io(f);
            reg_read(f, fuzz_reg(f, false), 4);
            ops++;
        }
    }
    dext_platform_clock_step(f->p, rnd(f, 20000000), NULL);
    check_qemu(f);
    fuzz_host_restart(f, true);
    f->in_chaos = false;
    return ops;
}

/* ----------------------------------------------------------- liveness */

static int read_id(Fuzz *f, FuzzDev *d, uint32_t *id)
{
    uint32_t actual = 0;
    int ret;

    if (!d->dev || !dext_usb_device_attached(d->dev)) {
        return -ENODEV;
    }
    ret = dext_usb_device_control(d->dev, 0xc0, DEXTLAB_USB_REQ_READ_REG, 0,
                                  DEXTLAB_USB_REG_ID, id, 4, &actual, 3000);
    return ret < 0 ? ret : actual == 4 ? 0 : -EIO;
}

/* Both devices answer; if the random traffic left one unreachable (a raw
 * SET_ADDRESS, a port reset, a stuck endpoint), a re-created host must
 * reach both. */
static void check_alive(Fuzz *f, bool restarted)
{
    check_qemu(f);
    for (unsigned i = 0; i < NDEV; i++) {
        FuzzDev *d = &f->d[i];
        uint32_t id = 0;
        int ret = read_id(f, d, &id);

        if (ret == 0 && id != DEXTLAB_USB_ID_VALUE) {
            fuzz_fail(f, "%s: ID register reads 0x%08x", d->id, id);
        }
        if (ret < 0) {
            if (restarted) {
                fuzz_fail(f, "%s does not answer READ_REG(ID) on a fresh "
                          "enumeration: %s", d->id, g_strerror(-ret));
            }
            f->check_recoveries++;
            fuzz_host_restart(f, true);
            check_alive(f, true);
            return;
        }
    }
}

/* A clean, verified bulk loopback on every device of a fresh enumeration */
static void check_loopback(Fuzz *f)
{
    fuzz_host_restart(f, false);
    for (unsigned i = 0; i < NDEV; i++) {
        FuzzDev *d = &f->d[i];
        uint8_t *buf = dext_usb_buffer_data(f->io_buf);
        const uint32_t len = 4000;         /* fits either FIFO, odd packets */
        uint32_t actual = 0;
        int ret;

        if (!d->pipe[0] || !d->pipe[1]) {
            fuzz_fail(f, "%s: no bulk pipes after a fresh enumeration", d->id);
        }
        for (uint32_t k = 0; k < len; k++) {
            buf[k] = (uint8_t)(k * 13 + 7 + i);
        }
        memset(buf + IO_BUF_SIZE / 2, 0, len);
        ret = dext_usb_pipe_io(d->pipe[0], f->io_buf, 0, len, &actual, 5000);
        if (ret < 0 || actual != len) {
            fuzz_fail(f, "%s: clean bulk OUT: %s, %u bytes", d->id,
                      g_strerror(-ret), actual);
        }
        ret = dext_usb_pipe_io(d->pipe[1], f->io_buf, IO_BUF_SIZE / 2, 8192,
                               &actual, 5000);
        if (ret < 0 || actual != len) {
            fuzz_fail(f, "%s: clean bulk IN: %s, %u bytes", d->id,
                      g_strerror(-ret), actual);
        }
        if (memcmp(buf, buf + IO_BUF_SIZE / 2, len) != 0) {
            fuzz_fail(f, "%s: the loopback returned other bytes", d->id);
        }
    }
}

/* What QEMU said: guest errors it logged, and no sanitizer report (UBSan
 * and ASan abort QEMU, so this is a second look) */
static void log_summary(Fuzz *f, const char *path)
{
    FILE *fp = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    uint64_t lines = 0, model = 0, usb = 0;

    if (!fp) {
        return;
    }
    while (getline(&line, &cap, fp) >= 0) {
        lines++;
        if (!strncmp(line, "dextlab-usb:", 12)) {
            model++;
        } else if (!strncmp(line, "usb", 3) || !strncmp(line, "xhci", 4)) {
            usb++;
        } else if (strstr(line, "Sanitizer") || strstr(line, "runtime error")) {
            fuzz_fail(f, "sanitizer report in QEMU's log: %s", line);
        }
    }
    free(line);
    fclose(fp);
    printf("fuzz: QEMU logged %" PRIu64 " lines: %" PRIu64 " dextlab-usb guest "
           "errors, %" PRIu64 " xhci/usb core, the rest DMA to unassigned "
           "memory; no sanitizer report\n", lines, model, usb);
}

static int only_op = -1;             /* --only: one kind of operation */

static FuzzOp pick_op(Fuzz *f)
{
    static unsigned total;
    unsigned r;

    if (only_op >= 0) {
        return only_op;
    }
    if (!total) {
        for (unsigned i = 0; i < OP_COUNT; i++) {
            total += op_weight[i];
        }
    }
    r = rnd(f, total);
    for (unsigned i = 0; i < OP_COUNT; i++) {
        if (r < op_weight[i]) {
            return i;
        }
        r -= op_weight[i];
    }
    return OP_CONTROL;
}

/* Returns the operations done (0 when the pick found nothing to do) */
static unsigned fuzz_one(Fuzz *f, FuzzOp op)
{
    unsigned ops = 0;

    switch (op) {
    case OP_CONTROL:
        return fuzz_control(f);
    case OP_IO:
        return fuzz_io(f);
    case OP_ABORT:
        return fuzz_abort(f);
    case OP_CLEAR_STALL:
        return fuzz_clear_stall(f);
    case OP_SELECT_ALT:
        return fuzz_select_alt(f);
    case OP_SET_CONFIG:
        return fuzz_set_config(f);
    case OP_PORT_RESET:
        return fuzz_port_reset(f);
    case OP_REPLUG:
        return fuzz_replug(f);
    case OP_CLOCK:
        dext_platform_clock_step(f->p, rnd(f, 4) ? rnd(f, 2000000)
                                                 : rnd(f, 2000000000), NULL);
        return 1;
    case OP_MMIO_READ:
        return fuzz_mmio_read(f);
    case OP_MMIO_WRITE:
        /* posted writes are cheap: a burst, each access an op */
        for (unsigned n = 1 + rnd(f, 16); n; n--) {
            ops += fuzz_mmio_write(f);
        }
        return ops;
    case OP_RAW_TRB:
        return fuzz_raw_trb(f);
    case OP_RAW_CONTROL:
        return fuzz_raw_control(f);
    case OP_CHAOS:
        return fuzz_chaos(f);
    case OP_COUNT:
        break;
    }
    g_assert_not_reached();
}

int main(int argc, char **argv)
{
    double seconds = 20;
    gint64 max_ops = 0;
    gint64 seed = -1;
    const char *qemu = NULL;
    g_autofree char *log = NULL;
    const char *log_arg = NULL;
    const char *only = NULL;
    GOptionEntry entries[] = {
        { "only", 0, 0, G_OPTION_ARG_STRING, &only, "only this operation "
          "(control, io, raw-trb, ...)", "OP" },
        { "seconds", 0, 0, G_OPTION_ARG_DOUBLE, &seconds, "run time", "S" },
        { "ops", 0, 0, G_OPTION_ARG_INT64, &max_ops, "stop after N ops", "N" },
        { "seed", 0, 0, G_OPTION_ARG_INT64, &seed, "random seed", "X" },
        { "qemu", 0, 0, G_OPTION_ARG_FILENAME, &qemu, "QEMU binary", "PATH" },
        { "log", 0, 0, G_OPTION_ARG_FILENAME, &log_arg, "QEMU log", "PATH" },
        { NULL }
    };
    g_autoptr(GOptionContext) ctx = g_option_context_new("- fuzz dextlab-usb");
    g_autoptr(GError) err = NULL;
    static const char *const devices[] = {
        "qemu-xhci,id=xhci",
        "dextlab-usb,id=ss,bus=xhci.0,serial=ss-1",
        "dextlab-usb,id=hs,bus=xhci.0,superspeed=off,fifo-size=8192,serial=hs-1",
        NULL
    };
    static const char *const extra[] = { "-d", "guest_errors", NULL };
    DextMachineDesc desc = { 0 };
    Fuzz f = { 0 };
    DextPciAddr xaddr;
    uint64_t next_check = CHECK_EVERY;
    uint32_t hcs1;
    gint64 t0, end, next_note;
    double elapsed;
    PipeStats tot = { 0 };

    g_option_context_add_main_entries(ctx, entries, NULL);
    if (!g_option_context_parse(ctx, &argc, &argv, &err)) {
        fprintf(stderr, "dextlab-usb-fuzz: %s\n", err->message);
        return 2;
    }
    for (unsigned i = 0; only && i < OP_COUNT; i++) {
        if (!strcmp(only, op_names[i])) {
            only_op = i;
        }
    }
    if (only && only_op < 0) {
        fprintf(stderr, "dextlab-usb-fuzz: no operation %s\n", only);
        return 2;
    }
    if (!qemu) {
        qemu = g_getenv("DEXTLAB_QEMU_ASAN");
    }
    if (qemu && access(qemu, X_OK) < 0) {
        fprintf(stderr, "fuzz: no QEMU at %s: the sanitizer build of the fork "
                "is made by 'make check-fuzz' (or tools/setup --sanitizers)\n",
                qemu);
        return 1;
    }
    f.seed = seed >= 0 ? (guint32)seed : g_random_int();
    f.rng = g_rand_new_with_seed(f.seed);
    log = log_arg ? g_strdup(log_arg)
                  : g_strdup_printf("%s/dextlab-usb-fuzz-%u.qemu.log",
                                    g_get_tmp_dir(), f.seed);
    f.qemu_log = log;
    unlink(log);
    f.d[0] = (FuzzDev){ .id = "ss", .speed = DEXT_USB_SPEED_SUPER,
        .add_json = "{\"driver\": \"dextlab-usb\", \"id\": \"ss\", "
                    "\"bus\": \"xhci.0\", \"serial\": \"ss-1\"}" };
    f.d[1] = (FuzzDev){ .id = "hs", .speed = DEXT_USB_SPEED_HIGH,
        .add_json = "{\"driver\": \"dextlab-usb\", \"id\": \"hs\", "
                    "\"bus\": \"xhci.0\", \"superspeed\": false, "
                    "\"fifo-size\": 8192, \"serial\": \"hs-1\"}" };

    desc.qemu_binary = qemu;
    desc.machine = "q35";
    desc.ram_size = 512 * 1024 * 1024;
    desc.dma_size = 256 * 1024 * 1024;
    desc.devices = devices;
    desc.extra_args = extra;
    desc.qemu_log_path = log;
    desc.timeout_ms = 20000;        /* sanitizers slow QEMU down */
    if (dext_platform_qtest_create(&desc, &f.p) < 0) {
        fprintf(stderr, "fuzz: cannot start QEMU: %s (log %s)\n",
                dext_platform_last_error(NULL), log);
        return 1;
    }
    if (dext_usb_find_xhci(f.p, 0, &xaddr) < 0 ||
        dext_platform_pci_get(f.p, xaddr, &f.xfn) < 0) {
        fuzz_fail(&f, "no xHCI: %s", dext_platform_last_error(f.p));
    }
    f.ram = dext_platform_memory_map(f.p, &f.ram_size);
    if (!f.ram) {
        fuzz_fail(&f, "guest RAM: %s", dext_platform_last_error(f.p));
    }
    dext_platform_pci_set_enables(f.p, xaddr, DEXT_PCI_ENABLE_MEM |
                                  DEXT_PCI_ENABLE_BUSMASTER, true);
    f.caplen = reg_read(&f, CAP_CAPLENGTH, 4) & 0xff;
    hcs1 = reg_read(&f, CAP_HCSPARAMS1, 4);
    f.max_slots = hcs1 & 0xff;
    f.max_ports = hcs1 >> 24;
    f.dboff = reg_read(&f, CAP_DBOFF, 4);
    f.rtsoff = reg_read(&f, CAP_RTSOFF, 4) & ~0x1fu;
    if (f.caplen < 0x20 || !f.max_ports || !f.max_slots) {
        fuzz_fail(&f, "xHCI capability registers look wrong");
    }
    fuzz_host_start(&f, false);
    check_alive(&f, true);

    printf("fuzz: seed %u, QEMU log %s\n", f.seed, log);
    fflush(stdout);
    t0 = g_get_monotonic_time();
    end = t0 + (gint64)(seconds * G_USEC_PER_SEC);
    next_note = t0 + 60 * G_USEC_PER_SEC;
    while (max_ops ? f.ops < (uint64_t)max_ops : g_get_monotonic_time() < end) {
        FuzzOp op = pick_op(&f);
        unsigned n = fuzz_one(&f, op);

        f.count[op] += n;
        f.ops += n;
        if (f.ops >= next_check || f.want_check) {
            f.want_check = false;
            check_alive(&f, false);
            next_check = f.ops + CHECK_EVERY;
            if (g_get_monotonic_time() >= next_note) {
                /* long runs: a sign of life every minute */
                printf("fuzz: %" PRIu64 " ops, %.0f s, %" PRIu64
                       " host re-creations\n", f.ops,
                       (g_get_monotonic_time() - t0) / 1e6, f.host_restarts);
                fflush(stdout);
                next_note = g_get_monotonic_time() + 60 * G_USEC_PER_SEC;
            }
        }
    }
    check_alive(&f, false);
    check_loopback(&f);
    elapsed = (g_get_monotonic_time() - t0) / 1e6;

    for (unsigned i = 0; i < OP_COUNT; i++) {
        printf("fuzz:   %-12s %" PRIu64 "\n", op_names[i], f.count[i]);
    }
    for (unsigned i = 0; i < NDEV; i++) {
        for (unsigned k = 0; k < NPIPE; k++) {
            tot.ok += f.d[i].st[k].ok;
            tot.stall += f.d[i].st[k].stall;
            tot.cancel += f.d[i].st[k].cancel;
            tot.other += f.d[i].st[k].other;
        }
    }
    printf("fuzz: control requests %" PRIu64 " ok, %" PRIu64 " stalled, %"
           PRIu64 " other (%" PRIu64 " timed out); transfers %d ok, %d stalled, %d cancelled, %d "
           "other\n", f.ctrl_ok, f.ctrl_stall, f.ctrl_other, f.ctrl_timeouts, tot.ok,
           tot.stall, tot.cancel, tot.other);
    printf("fuzz: %" PRIu64 " host re-creations (%" PRIu64 " after a failed "
           "check, %" PRIu64 " second starts), %" PRIu64 " xHCI register "
           "accesses in all\n", f.host_restarts, f.check_recoveries,
           f.start_retries, f.mmio);
    printf("fuzz: %" PRIu64 " ops in %.1f s (%.0f ops/s), devices still "
           "work: ok\n", f.ops, elapsed, f.ops / elapsed);
    fflush(stdout);
    for (unsigned i = 0; i < NDEV; i++) {
        fdev_drop(&f.d[i]);
    }
    dext_usb_buffer_free(f.io_buf);
    dext_usb_buffer_free(f.scratch);
    dext_usb_host_destroy(f.host);
    dext_platform_destroy(f.p);
    g_rand_free(f.rng);
    log_summary(&f, log);
    unlink(log);
    return 0;
}
