/*
 * dextlab USB family API over Linux usbfs (see usb.h, "usbfs
 * implementation"): the same objects and contract as usb.c, for code that
 * runs inside a Linux guest whose kernel owns the xHCI controller.
 *
 *   host     sysfs (@sysroot) lists devices; a hub thread rescans it on
 *            netlink uevents (and periodically, as a fallback) and diffs
 *            the result against its list: device_fn(attached/detached)
 *   device   one usbfs fd (@devroot/BBB/DDD) and one reaper thread that
 *            polls it (POLLOUT: a completed URB can be reaped; POLLHUP /
 *            POLLERR: disconnected) and runs the completions
 *   transfer one Xfer: one URB, or n URBs when it is larger than usbfs
 *            takes (a short packet in one ends the transfer); complete
 *            when every URB has been reaped
 *
 * Locks: d->lock (configuration, open state, EP0) before d->io_lock
 * (Xfer list, URB submission and reaping, pipe/interface state read by
 * async IO).  No lock is held while a completion runs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/netlink.h>
#include <linux/usbdevice_fs.h>

#include "usb.h"

#define USB_DT_DEVICE       1
#define USB_DT_CONFIG       2

/* Largest URB of a bulk transfer: usbfs charges every URB to
 * usbfs_memory_mb (16 MiB by default, all users) and bounces the data
 * through kernel memory (16 KiB scatter-gather pages when the controller
 * can, contiguous otherwise); interrupt URBs are always contiguous. */
#define URB_BULK_MAX        (4u << 20)
#define URB_INTR_MAX        (64u << 10)
#define URB_MIN             (16u << 10)
#define DEFAULT_TIMEOUT_MS  5000
#define RESCAN_MS           1000        /* with uevents; a fallback */
#define RESCAN_POLL_MS      250         /* without a uevent socket */
#define RAW_MAX             (64 * 1024) /* descriptors read from usbfs */

struct DextUsbBuffer {
    int fd;                             /* memfd, sealed against resizing */
    void *ptr;
    size_t size;
    size_t map_size;
};

struct DextUsbPipe {
    DextUsbDevice *dev;                 /* outlives iface (old_pipes) */
    DextUsbInterface *iface;            /* valid while !closed */
    DextUsbEndpointDesc desc;
    unsigned char urb_type;             /* USBDEVFS_URB_TYPE_* */
    bool closed;                        /* both locks to write */
    unsigned aborting;                  /* marked Xfers not yet called back */
};

struct DextUsbInterface {
    DextUsbDevice *dev;
    uint8_t number;
    const DextUsbInterfaceDesc *cur;    /* into the active config's alts */
    DextUsbPipe *pipes[30];
    unsigned n_pipes;
    bool open;                          /* claimed; both locks to write */
};

typedef struct Xfer {
    DextUsbDevice *d;                   /* referenced */
    DextUsbPipe *p;
    DextUsbIoFn cb;
    void *opaque;
    unsigned n_urbs, n_reaped;
    int submit_err;                     /* a later URB failed to submit */
    bool aborted;                       /* counted in p->aborting */
    bool detaching;                     /* counted in d->detach_wait */
    bool *reaped;
    struct usbdevfs_urb urbs[];
} Xfer;

struct DextUsbDevice {
    gint ref;
    DextUsbHost *h;
    char *sysname;
    unsigned busnum, devnum, speed;
    int fd;                             /* -1 once detached */
    bool attached;
    bool open;
    gint dead;                          /* usbfs said: disconnected (atomic) */
    GMutex lock;
    GMutex io_lock;
    GCond io_cond;                      /* an Xfer was called back */
    GList *xfers;                       /* in flight (submitted, not done) */
    unsigned detach_wait;
    int wake_fd;                        /* eventfd: reaper thread quit */
    bool quit;
    GThread *reaper;
    DextUsbDeviceDesc desc;
    uint8_t *raw;                       /* device + all configurations */
    size_t raw_len;
    unsigned n_configs;
    DextUsbConfigDesc *configs;
    size_t *config_off, *config_len;    /* into raw */
    unsigned cur_config;                /* index into configs */
    uint8_t active_config;              /* bConfigurationValue or 0 */
    DextUsbInterface *ifaces[32];
    unsigned n_ifaces;
    GPtrArray *old_pipes;               /* closed pipes, freed with dev */
};

struct DextUsbHost {
    DextUsbHostConfig cfg;
    char *devroot, *sysroot;
    unsigned timeout_ms;
    gint urb_max;                       /* bulk URB size (atomic) */
    GMutex lock;                        /* devs, scan state */
    GCond cond;
    GPtrArray *devs;                    /* DextUsbDevice, attached */
    GHashTable *failed;                 /* "name busnum devnum" warned */
    int wake_fd;                        /* eventfd: rescan / quit */
    int nl_fd;                          /* uevent socket or -1 */
    bool quit;
    unsigned scan_req, scan_done;       /* generations */
    GPtrArray *resets;                  /* devices to reset (referenced) */
    GThread *hub;
};

/* the reaper threads: completions run there, sync calls are -EDEADLK */
static __thread bool tl_reaper;

static uint64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static int neg_errno(void)
{
    return errno ? -errno : -EIO;
}

static void wake(int fd)
{
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof(one));

    (void)n;
}

static void drain(int fd)
{
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof(v));

    (void)n;
}

/* ------------------------------------------------------------ buffers */

int dext_usb_buffer_alloc(DextUsbHost *h, size_t size, DextUsbBuffer **out)
{
    long page = sysconf(_SC_PAGESIZE);
    DextUsbBuffer *b;
    int ret;

    if (!h || !size || size > (1ull << 40)) {
        return -EINVAL;
    }
    b = g_new0(DextUsbBuffer, 1);
    b->size = size;
    b->map_size = (size + page - 1) & ~(size_t)(page - 1);
    b->fd = memfd_create("dext-usb-buffer", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (b->fd < 0) {
        ret = neg_errno();
        goto fail_free;
    }
    if (ftruncate(b->fd, b->map_size) < 0) {
        ret = neg_errno();
        goto fail_close;
    }
    /* a client driver that gets the fd cannot shrink it under us (SIGBUS) */
    fcntl(b->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    b->ptr = mmap(NULL, b->map_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                  b->fd, 0);
    if (b->ptr == MAP_FAILED) {
        ret = neg_errno();
        goto fail_close;
    }
    *out = b;
    return 0;

fail_close:
    close(b->fd);
fail_free:
    g_free(b);
    return ret;
}

void dext_usb_buffer_free(DextUsbBuffer *b)
{
    if (b) {
        munmap(b->ptr, b->map_size);
        close(b->fd);
        g_free(b);
    }
}

void *dext_usb_buffer_data(DextUsbBuffer *b)
{
    return b->ptr;
}

size_t dext_usb_buffer_size(DextUsbBuffer *b)
{
    return b->size;
}

uint64_t dext_usb_buffer_iova(DextUsbBuffer *b)
{
    return 0;                  /* the kernel's HCD does the DMA */
}

int dext_usb_buffer_fd(DextUsbBuffer *b, uint64_t *offset)
{
    if (!b) {
        return -EINVAL;
    }
    *offset = 0;
    return b->fd;
}

/* ------------------------------------------------------ sync helpers */

/* shared by the waiter and the completion: whoever is last frees it, so
 * a waiter may give up (bounded) while usbfs still holds the URB */
typedef struct SyncIo {
    gint ref;
    GMutex lock;
    GCond cond;
    bool done;
    int status;
    uint32_t actual;
} SyncIo;

static SyncIo *sync_new(void)
{
    SyncIo *s = g_new0(SyncIo, 1);

    s->ref = 2;
    g_mutex_init(&s->lock);
    g_cond_init(&s->cond);
    return s;
}

static void sync_unref(SyncIo *s)
{
    if (g_atomic_int_dec_and_test(&s->ref)) {
        g_mutex_clear(&s->lock);
        g_cond_clear(&s->cond);
        g_free(s);
    }
}

static void sync_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    SyncIo *s = opaque;

    g_mutex_lock(&s->lock);
    s->status = status;
    s->actual = actual;
    s->done = true;
    g_cond_signal(&s->cond);
    g_mutex_unlock(&s->lock);
    sync_unref(s);
}

static bool sync_wait(SyncIo *s, unsigned timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;
    bool done;

    g_mutex_lock(&s->lock);
    while (!s->done) {
        if (!g_cond_wait_until(&s->cond, &s->lock, deadline)) {
            break;
        }
    }
    done = s->done;
    g_mutex_unlock(&s->lock);
    return done;
}

/* ----------------------------------------------------- transfers */

/* usbfs URB status -> the family's IO status */
static int map_status(int st)
{
    switch (st) {
    case 0:
    case -EREMOTEIO:           /* short packet on a SHORT_NOT_OK URB */
        return 0;
    case -EPIPE:
        return -EPIPE;
    case -ENOENT:              /* discarded (abort) */
    case -ECONNRESET:          /* unlinked */
    case -ESHUTDOWN:           /* device or controller went away */
    case -ENODEV:
        return -ECANCELED;
    default:
        return -EIO;
    }
}

/* Status and length of a finished Xfer: URBs in order up to the first
 * short or failed one (a short packet ends the transfer). */
static void xfer_result(Xfer *x, int *status, uint32_t *actual)
{
    uint32_t got = 0;

    *status = 0;
    for (unsigned k = 0; k < x->n_urbs; k++) {
        struct usbdevfs_urb *u = &x->urbs[k];
        uint32_t a = MIN((uint32_t)MAX(u->actual_length, 0),
                         (uint32_t)u->buffer_length);

        if (!x->reaped[k]) {
            *status = -ECANCELED;   /* taken back with the device */
            break;
        }
        got += a;
        if (u->status != 0) {
            *status = map_status(u->status);
            break;
        }
        if (a < (uint32_t)u->buffer_length) {
            break;
        }
        if (k + 1 == x->n_urbs && x->submit_err) {
            *status = x->submit_err;
        }
    }
    *actual = got;
}

/* discard every URB of @x not yet reaped; io_lock held */
static void xfer_discard(Xfer *x, unsigned from)
{
    DextUsbDevice *d = x->d;

    for (unsigned k = from; k < x->n_urbs && d->fd >= 0; k++) {
        if (!x->reaped[k]) {
            /* EINVAL: already completed, waiting to be reaped */
            ioctl(d->fd, USBDEVFS_DISCARDURB, &x->urbs[k]);
        }
    }
}

/* Run @x's completion (no lock held), then account for it. */
static void xfer_finish(Xfer *x)
{
    DextUsbDevice *d = x->d;
    uint32_t actual;
    int status;

    xfer_result(x, &status, &actual);
    x->cb(x->opaque, status, actual, now_ns());
    g_mutex_lock(&d->io_lock);
    if (x->aborted) {
        x->p->aborting--;
    }
    if (x->detaching) {
        d->detach_wait--;
    }
    g_cond_broadcast(&d->io_cond);
    g_mutex_unlock(&d->io_lock);
    g_free(x->reaped);
    g_free(x);
    dext_usb_device_unref(d);
}

/*
 * Reap what usbfs has completed for @d and run the completions.  Returns
 * false once the fd says the device is gone (nothing left to reap).
 * Reentrant: a completion may abort, which reaps from here again.
 */
static bool dev_reap(DextUsbDevice *d)
{
    for (;;) {
        struct usbdevfs_urb *u = NULL;
        Xfer *x;
        unsigned k;
        int ret;

        g_mutex_lock(&d->io_lock);
        if (d->fd < 0) {
            g_mutex_unlock(&d->io_lock);
            return false;
        }
        ret = ioctl(d->fd, USBDEVFS_REAPURBNDELAY, &u);
        if (ret < 0) {
            int e = errno;

            g_mutex_unlock(&d->io_lock);
            return e == EAGAIN || e == EINTR;
        }
        x = u ? u->usercontext : NULL;
        if (!x || u < x->urbs || u >= x->urbs + x->n_urbs) {
            g_mutex_unlock(&d->io_lock);
            g_warning("usbfs %s: reaped an URB that is not ours", d->sysname);
            continue;
        }
        k = u - x->urbs;
        x->reaped[k] = true;
        x->n_reaped++;
        /* a short or failed URB ends the transfer: take back the rest
         * (for bulk usbfs already did: SHORT_NOT_OK + BULK_CONTINUATION) */
        if (k + 1 < x->n_urbs &&
            (u->status != 0 || u->actual_length < u->buffer_length)) {
            xfer_discard(x, k + 1);
        }
        if (x->n_reaped < x->n_urbs) {
            g_mutex_unlock(&d->io_lock);
            continue;
        }
        d->xfers = g_list_remove(d->xfers, x);
        g_mutex_unlock(&d->io_lock);
        xfer_finish(x);
    }
}

static gpointer reaper_thread(gpointer opaque)
{
    DextUsbDevice *d = opaque;
    bool alive = true;

    tl_reaper = true;
    for (;;) {
        struct pollfd pfd[2] = {
            { .fd = d->wake_fd, .events = POLLIN },
            { .fd = d->fd, .events = POLLOUT },
        };

        /* once gone, usbfs keeps reporting POLLERR: stop polling it */
        if (poll(pfd, alive ? 2 : 1, 1000) < 0 && errno != EINTR) {
            g_usleep(1000);
        }
        if (pfd[0].revents & POLLIN) {
            drain(d->wake_fd);
        }
        if (alive && (pfd[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
            /* usbfs completes every URB before it reports the device
             * gone: what is reaped now is all there is */
            alive = dev_reap(d) &&
                    !(pfd[1].revents & (POLLERR | POLLHUP | POLLNVAL));
            if (!alive) {
                g_atomic_int_set(&d->dead, 1);
                wake(d->h->wake_fd);    /* the hub rescans and detaches */
            }
        }
        g_mutex_lock(&d->io_lock);
        if (d->quit) {
            g_mutex_unlock(&d->io_lock);
            break;
        }
        g_mutex_unlock(&d->io_lock);
    }
    return NULL;
}

/* ------------------------------------------------------------------ EP0 */

static unsigned tmo_of(DextUsbDevice *d, unsigned tmo)
{
    return tmo ? tmo : d->h->timeout_ms;
}

/* d->lock held */
static int control_locked(DextUsbDevice *d, uint8_t rt, uint8_t req,
                          uint16_t val, uint16_t idx, void *data,
                          uint16_t wlen, uint32_t *actual, unsigned tmo)
{
    struct usbdevfs_ctrltransfer ct = {
        .bRequestType = rt, .bRequest = req, .wValue = val, .wIndex = idx,
        .wLength = wlen, .timeout = tmo_of(d, tmo), .data = data,
    };
    int n;

    if (!d->attached || d->fd < 0) {
        return -ENODEV;
    }
    if (wlen > 4096) {
        return -EINVAL;
    }
    /* usbfs recovers EP0 after a protocol STALL (the next SETUP) */
    n = ioctl(d->fd, USBDEVFS_CONTROL, &ct);
    if (n < 0) {
        n = neg_errno();
        if (actual) {
            *actual = 0;
        }
        switch (n) {
        case -ESHUTDOWN:
        case -ENODEV:
            return -ENODEV;
        case -EPROTO:
        case -EILSEQ:
        case -EOVERFLOW:
            return -EIO;
        default:
            return n;          /* -EPIPE, -ETIMEDOUT, -EINVAL ... */
        }
    }
    if (actual) {
        *actual = MIN((unsigned)n, wlen);
    }
    return 0;
}

int dext_usb_device_control(DextUsbDevice *d, uint8_t rt, uint8_t req,
                            uint16_t val, uint16_t idx, void *data,
                            uint16_t wlen, uint32_t *actual, unsigned tmo)
{
    int ret;

    if ((rt & 0x60) != 0 || !(rt & 0x80)) {
        /* class/vendor or OUT requests change device state: open needed */
        if (!d->open) {
            return -EBUSY;
        }
    }
    if (wlen && !data) {
        return -EINVAL;
    }
    if (!d->attached) {
        return -ENODEV;
    }
    if (tl_reaper) {
        return -EDEADLK;
    }
    g_mutex_lock(&d->lock);
    ret = control_locked(d, rt, req, val, idx, data, wlen, actual, tmo);
    g_mutex_unlock(&d->lock);
    return ret;
}

/* --------------------------------------------------------- device objs */

DextUsbDevice *dext_usb_device_ref(DextUsbDevice *d)
{
    g_atomic_int_inc(&d->ref);
    return d;
}

static void iface_free(DextUsbInterface *i)
{
    for (unsigned k = 0; k < i->n_pipes; k++) {
        g_free(i->pipes[k]);
    }
    g_free(i);
}

void dext_usb_device_unref(DextUsbDevice *d)
{
    if (!d || !g_atomic_int_dec_and_test(&d->ref)) {
        return;
    }
    for (unsigned k = 0; k < d->n_ifaces; k++) {
        iface_free(d->ifaces[k]);
    }
    g_ptr_array_free(d->old_pipes, TRUE);
    for (unsigned k = 0; k < d->n_configs; k++) {
        dext_usb_config_desc_free(&d->configs[k]);
    }
    g_free(d->configs);
    g_free(d->config_off);
    g_free(d->config_len);
    g_free(d->raw);
    g_free(d->sysname);
    if (d->fd >= 0) {
        close(d->fd);
    }
    if (d->wake_fd >= 0) {
        close(d->wake_fd);
    }
    g_mutex_clear(&d->lock);
    g_mutex_clear(&d->io_lock);
    g_cond_clear(&d->io_cond);
    g_free(d);
}

bool dext_usb_device_attached(DextUsbDevice *d)
{
    return d->attached;
}

unsigned dext_usb_device_port(DextUsbDevice *d)
{
    return d->busnum << 8 | d->devnum;
}

unsigned dext_usb_device_speed(DextUsbDevice *d)
{
    return d->speed;
}

const DextUsbDeviceDesc *dext_usb_device_descriptor(DextUsbDevice *d)
{
    return &d->desc;
}

static DextUsbConfigDesc no_config;

const DextUsbConfigDesc *dext_usb_device_config(DextUsbDevice *d)
{
    return d->n_configs ? &d->configs[d->cur_config] : &no_config;
}

const uint8_t *dext_usb_device_config_raw(DextUsbDevice *d, size_t *len)
{
    if (!d->n_configs) {
        *len = 0;
        return NULL;
    }
    *len = d->config_len[d->cur_config];
    return d->raw + d->config_off[d->cur_config];
}

void dext_usb_device_match_keys(DextUsbDevice *d, DextUsbMatchKeys *k)
{
    memset(k, 0, sizeof(*k));
    k->idVendor = d->desc.idVendor;
    k->idProduct = d->desc.idProduct;
    k->bcdDevice = d->desc.bcdDevice;
    k->bDeviceClass = d->desc.bDeviceClass;
    k->bDeviceSubClass = d->desc.bDeviceSubClass;
    k->bDeviceProtocol = d->desc.bDeviceProtocol;
    k->bConfigurationValue = dext_usb_device_config(d)->bConfigurationValue;
    k->bInterfaceNumber = 0xff;
    k->bInterfaceClass = k->bInterfaceSubClass = k->bInterfaceProtocol = 0xff;
}

int dext_usb_device_open(DextUsbDevice *d)
{
    int ret = 0;

    g_mutex_lock(&d->lock);
    if (!d->attached) {
        ret = -ENODEV;
    } else if (d->open) {
        ret = -EBUSY;
    } else {
        d->open = true;
    }
    g_mutex_unlock(&d->lock);
    return ret;
}

void dext_usb_device_close(DextUsbDevice *d)
{
    g_mutex_lock(&d->lock);
    d->open = false;
    g_mutex_unlock(&d->lock);
}

static const DextUsbInterfaceDesc *find_alt(DextUsbDevice *d, uint8_t num,
                                            uint8_t alt)
{
    const DextUsbConfigDesc *c = dext_usb_device_config(d);

    for (unsigned k = 0; k < c->n_alts; k++) {
        if (c->alts[k].bInterfaceNumber == num &&
            c->alts[k].bAlternateSetting == alt) {
            return &c->alts[k];
        }
    }
    return NULL;
}

/*
 * Abort the Xfers in flight on @p and wait (bounded) until their
 * completions have run.  On a reaper thread (a completion aborting) the
 * reaping happens right here.
 */
static int abort_xfers(DextUsbDevice *d, DextUsbPipe *p)
{
    gint64 deadline = g_get_monotonic_time() +
                      d->h->timeout_ms * 1000ll;
    unsigned marked = 0;
    int ret = 0;

    g_mutex_lock(&d->io_lock);
    for (GList *l = d->xfers; l; l = l->next) {
        Xfer *x = l->data;

        if (x->p == p && !x->aborted) {
            x->aborted = true;
            p->aborting++;
            marked++;
        }
        if (x->p == p) {
            xfer_discard(x, 0);
        }
    }
    if (!marked && !(p && p->aborting)) {
        g_mutex_unlock(&d->io_lock);
        return 0;
    }
    while (p->aborting) {
        if (tl_reaper) {
            /* maybe our own reaper thread: reap them here */
            bool alive;

            g_mutex_unlock(&d->io_lock);
            alive = dev_reap(d);
            if (!alive || g_get_monotonic_time() > deadline) {
                g_mutex_lock(&d->io_lock);
                ret = !p->aborting ? 0 : alive ? -ETIMEDOUT : -ENODEV;
                break;
            }
            g_usleep(100);
            g_mutex_lock(&d->io_lock);
            continue;
        }
        if (!g_cond_wait_until(&d->io_cond, &d->io_lock, deadline)) {
            ret = p->aborting ? -ETIMEDOUT : 0;
            break;
        }
    }
    g_mutex_unlock(&d->io_lock);
    if (ret == -ETIMEDOUT) {
        g_warning("usbfs %s: endpoint 0x%02x: aborted IO did not complete",
                  d->sysname, p->desc.bEndpointAddress);
    }
    return ret;
}

/* abort + close the interface's pipes; d->lock held */
static void iface_close_pipes(DextUsbInterface *i)
{
    DextUsbDevice *d = i->dev;

    for (unsigned k = 0; k < i->n_pipes; k++) {
        abort_xfers(d, i->pipes[k]);
    }
    g_mutex_lock(&d->io_lock);
    for (unsigned k = 0; k < i->n_pipes; k++) {
        i->pipes[k]->closed = true;
        g_ptr_array_add(d->old_pipes, i->pipes[k]);
    }
    i->n_pipes = 0;
    g_mutex_unlock(&d->io_lock);
}

static void pipe_setup(DextUsbPipe *p)
{
    switch (p->desc.bmAttributes & 3) {
    case 2:
        p->urb_type = USBDEVFS_URB_TYPE_BULK;
        break;
    case 3:
        p->urb_type = USBDEVFS_URB_TYPE_INTERRUPT;
        break;
    default:
        p->urb_type = USBDEVFS_URB_TYPE_ISO;     /* not supported */
        break;
    }
}

/* create the pipes of @alt; d->lock held */
static void iface_open_alt(DextUsbInterface *i, const DextUsbInterfaceDesc *alt)
{
    DextUsbDevice *d = i->dev;

    g_mutex_lock(&d->io_lock);
    for (unsigned k = 0; k < alt->n_endpoints && i->n_pipes < 30; k++) {
        DextUsbPipe *p = g_new0(DextUsbPipe, 1);

        p->dev = d;
        p->iface = i;
        p->desc = alt->endpoints[k];
        pipe_setup(p);
        i->pipes[i->n_pipes++] = p;
    }
    i->cur = alt;
    g_mutex_unlock(&d->io_lock);
}

/* interface objects for the active configuration at @alts (sysfs's
 * current alternate settings; NULL: 0); d->lock held */
static void make_ifaces(DextUsbDevice *d, const uint8_t *alts)
{
    const DextUsbConfigDesc *c = dext_usb_device_config(d);

    for (unsigned k = 0; k < c->n_alts && d->n_ifaces < 32; k++) {
        const DextUsbInterfaceDesc *a = &c->alts[k];
        uint8_t want = alts ? alts[a->bInterfaceNumber] : 0;
        DextUsbInterface *i;

        if (a->bAlternateSetting != 0) {
            continue;
        }
        if (want && find_alt(d, a->bInterfaceNumber, want)) {
            a = find_alt(d, a->bInterfaceNumber, want);
        }
        i = g_new0(DextUsbInterface, 1);
        i->dev = d;
        i->number = a->bInterfaceNumber;
        d->ifaces[d->n_ifaces++] = i;
        iface_open_alt(i, a);
    }
}

/* close every interface (release claims); d->lock held */
static void drop_ifaces(DextUsbDevice *d)
{
    for (unsigned k = 0; k < d->n_ifaces; k++) {
        DextUsbInterface *i = d->ifaces[k];
        unsigned num = i->number;

        iface_close_pipes(i);
        if (i->open && d->fd >= 0) {
            ioctl(d->fd, USBDEVFS_RELEASEINTERFACE, &num);
        }
        iface_free(i);
        d->ifaces[k] = NULL;
    }
    d->n_ifaces = 0;
}

/* Unbind a kernel driver from interface @num; never another usbfs user's
 * claim (USBDEVFS_DISCONNECT would take that one too). */
static void disconnect_kernel_driver(DextUsbDevice *d, unsigned num)
{
    struct usbdevfs_getdriver gd = { .interface = num };
    struct usbdevfs_ioctl disc = {
        .ifno = num, .ioctl_code = USBDEVFS_DISCONNECT,
    };

    if (ioctl(d->fd, USBDEVFS_GETDRIVER, &gd) == 0 &&
        strncmp(gd.driver, "usbfs", sizeof(gd.driver)) != 0) {
        ioctl(d->fd, USBDEVFS_IOCTL, &disc);
    }
}

int dext_usb_device_set_configuration(DextUsbDevice *d, uint8_t value)
{
    int ret, cfg;
    unsigned idx = 0;

    if (tl_reaper) {
        return -EDEADLK;
    }
    g_mutex_lock(&d->lock);
    if (!d->attached) {
        ret = -ENODEV;
        goto out;
    }
    if (!d->open) {
        ret = -EBUSY;
        goto out;
    }
    if (value) {
        for (idx = 0; idx < d->n_configs; idx++) {
            if (d->configs[idx].bConfigurationValue == value) {
                break;
            }
        }
        if (idx == d->n_configs) {
            ret = -EINVAL;
            goto out;
        }
    }
    drop_ifaces(d);
    d->active_config = 0;
    /* usbfs refuses while any interface has a driver: detach kernel ones */
    for (unsigned k = 0; k < dext_usb_device_config(d)->n_alts; k++) {
        disconnect_kernel_driver(d,
                                 dext_usb_device_config(d)->alts[k].bInterfaceNumber);
    }
    /* the active value again: usbfs resets the configuration (alt 0,
     * endpoint state) without the kernel re-probing drivers */
    cfg = value ? value : -1;
    if (ioctl(d->fd, USBDEVFS_SETCONFIGURATION, &cfg) < 0) {
        ret = neg_errno();
        goto out;
    }
    ret = 0;
    if (value == 0) {
        goto out;
    }
    d->cur_config = idx;
    d->active_config = value;
    make_ifaces(d, NULL);
out:
    g_mutex_unlock(&d->lock);
    return ret;
}

unsigned dext_usb_device_num_interfaces(DextUsbDevice *d)
{
    return d->n_ifaces;
}

DextUsbInterface *dext_usb_device_interface(DextUsbDevice *d, uint8_t number)
{
    for (unsigned k = 0; k < d->n_ifaces; k++) {
        if (d->ifaces[k]->number == number) {
            return d->ifaces[k];
        }
    }
    return NULL;
}

/* ---------------------------------------------------------- interface */

DextUsbDevice *dext_usb_interface_device(DextUsbInterface *i)
{
    return i->dev;
}

const DextUsbInterfaceDesc *dext_usb_interface_descriptor(DextUsbInterface *i)
{
    return i->cur;
}

void dext_usb_interface_match_keys(DextUsbInterface *i, DextUsbMatchKeys *k)
{
    dext_usb_device_match_keys(i->dev, k);
    k->is_interface = true;
    k->bInterfaceNumber = i->number;
    k->bInterfaceClass = i->cur->bInterfaceClass;
    k->bInterfaceSubClass = i->cur->bInterfaceSubClass;
    k->bInterfaceProtocol = i->cur->bInterfaceProtocol;
}

static int claim(DextUsbDevice *d, unsigned num)
{
    struct usbdevfs_disconnect_claim dc = {
        .interface = num, .flags = USBDEVFS_DISCONNECT_CLAIM_EXCEPT_DRIVER,
        .driver = "usbfs",
    };

    /* one step: detach a kernel driver, never another usbfs user */
    if (ioctl(d->fd, USBDEVFS_DISCONNECT_CLAIM, &dc) == 0) {
        return 0;
    }
    if (errno != ENOTTY && errno != EINVAL) {
        return neg_errno();
    }
    disconnect_kernel_driver(d, num);
    return ioctl(d->fd, USBDEVFS_CLAIMINTERFACE, &num) < 0 ? neg_errno() : 0;
}

int dext_usb_interface_open(DextUsbInterface *i)
{
    DextUsbDevice *d = i->dev;
    int ret = 0;

    g_mutex_lock(&d->lock);
    if (!d->attached) {
        ret = -ENODEV;
    } else if (i->open) {
        ret = -EBUSY;
    } else if ((ret = claim(d, i->number)) == 0) {
        g_mutex_lock(&d->io_lock);
        i->open = true;
        g_mutex_unlock(&d->io_lock);
    }
    g_mutex_unlock(&d->lock);
    return ret;
}

void dext_usb_interface_close(DextUsbInterface *i)
{
    DextUsbDevice *d = i->dev;
    unsigned num = i->number;

    g_mutex_lock(&d->lock);
    for (unsigned k = 0; k < i->n_pipes; k++) {
        abort_xfers(d, i->pipes[k]);
    }
    if (i->open && d->fd >= 0) {
        ioctl(d->fd, USBDEVFS_RELEASEINTERFACE, &num);
    }
    g_mutex_lock(&d->io_lock);
    i->open = false;
    g_mutex_unlock(&d->io_lock);
    g_mutex_unlock(&d->lock);
}

int dext_usb_interface_select_alt(DextUsbInterface *i, uint8_t alt)
{
    DextUsbDevice *d = i->dev;
    const DextUsbInterfaceDesc *a;
    struct usbdevfs_setinterface si = { .interface = i->number,
                                        .altsetting = alt };
    int ret;

    if (tl_reaper) {
        return -EDEADLK;
    }
    g_mutex_lock(&d->lock);
    if (!d->attached) {
        ret = -ENODEV;
        goto out;
    }
    if (!i->open) {
        ret = -EBUSY;
        goto out;
    }
    a = find_alt(d, i->number, alt);
    if (!a) {
        ret = -EINVAL;
        goto out;
    }
    iface_close_pipes(i);
    /* SET_INTERFACE (9.4.10) through the kernel, which reconfigures the
     * controller's endpoints */
    ret = ioctl(d->fd, USBDEVFS_SETINTERFACE, &si) < 0 ? neg_errno() : 0;
    if (ret == 0) {
        iface_open_alt(i, a);
    }
out:
    g_mutex_unlock(&d->lock);
    return ret;
}

int dext_usb_interface_copy_pipe(DextUsbInterface *i, uint8_t address,
                                 DextUsbPipe **out)
{
    int ret = -ENOENT;

    g_mutex_lock(&i->dev->lock);
    if (!i->open) {
        ret = -EBUSY;
    } else {
        for (unsigned k = 0; k < i->n_pipes; k++) {
            if (i->pipes[k]->desc.bEndpointAddress == address) {
                *out = i->pipes[k];
                ret = 0;
            }
        }
    }
    g_mutex_unlock(&i->dev->lock);
    return ret;
}

/* --------------------------------------------------------------- pipe */

const DextUsbEndpointDesc *dext_usb_pipe_descriptor(DextUsbPipe *p)
{
    return &p->desc;
}

/* URB size for @p: whole packets (a split elsewhere looks like a short
 * packet to the device), at most @limit */
static uint32_t chunk_of(DextUsbPipe *p, uint32_t limit)
{
    uint16_t w = p->desc.wMaxPacketSize;
    uint32_t mps = (w & 0x7ff) * (1 + ((w >> 11) & 3));

    if (!mps || limit < mps) {
        return MAX(limit, 1u);
    }
    return limit - limit % mps;
}

static Xfer *xfer_build(DextUsbPipe *p, DextUsbBuffer *buf, size_t offset,
                        uint32_t len, uint32_t chunk)
{
    bool in = p->desc.bEndpointAddress & 0x80;
    bool bulk = p->urb_type == USBDEVFS_URB_TYPE_BULK;
    unsigned n = len ? (len + chunk - 1) / chunk : 1;
    Xfer *x = g_malloc0(sizeof(*x) + n * sizeof(x->urbs[0]));

    x->reaped = g_new0(bool, n);
    x->p = p;
    x->n_urbs = n;
    for (unsigned k = 0; k < n; k++) {
        struct usbdevfs_urb *u = &x->urbs[k];
        uint32_t at = k * chunk;

        u->type = p->urb_type;
        u->endpoint = p->desc.bEndpointAddress;
        u->buffer = len ? (uint8_t *)buf->ptr + offset + at : NULL;
        u->buffer_length = MIN(len - at, chunk);
        u->usercontext = x;
        /* a short packet before the last URB ends the transfer: usbfs
         * then cancels the rest of it (continuations) and no later bytes
         * land in this transfer's buffer */
        if (in && k + 1 < n) {
            u->flags |= USBDEVFS_URB_SHORT_NOT_OK;
        }
        if (bulk && k > 0) {
            u->flags |= USBDEVFS_URB_BULK_CONTINUATION;
        }
    }
    return x;
}

static void xfer_free(Xfer *x)
{
    g_free(x->reaped);
    g_free(x);
}

int dext_usb_pipe_async_io(DextUsbPipe *p, DextUsbBuffer *buf, size_t offset,
                           uint32_t len, DextUsbIoFn cb, void *opaque)
{
    DextUsbDevice *d = p->dev;
    uint32_t chunk;
    unsigned k;
    Xfer *x;
    int ret = 0;

    if (!buf || !cb || offset > buf->size || len > buf->size - offset) {
        return -EINVAL;
    }
    if (p->urb_type == USBDEVFS_URB_TYPE_ISO) {
        return -ENOTSUP;
    }
    /* one URB per transfer when it fits (the device sees the transfer as
     * the caller made it); interrupt buffers are contiguous kernel memory */
    chunk = chunk_of(p, p->urb_type == USBDEVFS_URB_TYPE_BULK
                        ? (uint32_t)g_atomic_int_get(&d->h->urb_max)
                        : URB_INTR_MAX);
    g_mutex_lock(&d->io_lock);
    if (p->closed) {
        ret = -EBADF;          /* p->iface may be gone */
    } else if (!d->attached || d->fd < 0) {
        ret = -ENODEV;
    } else if (!p->iface->open) {
        ret = -EBUSY;          /* usbfs would claim it behind our back */
    }
    if (ret < 0) {
        g_mutex_unlock(&d->io_lock);
        return ret;
    }
    for (;;) {
        x = xfer_build(p, buf, offset, len, chunk);
        /* under io_lock: no other transfer's URBs interleave with ours,
         * and the reaper cannot finish the Xfer before all parts are in */
        for (k = 0; k < x->n_urbs; k++) {
            if (ioctl(d->fd, USBDEVFS_SUBMITURB, &x->urbs[k]) < 0) {
                ret = neg_errno();
                break;
            }
        }
        if (k > 0 || ret != -ENOMEM || chunk <= URB_MIN) {
            break;
        }
        /* usbfs_memory_mb, or no contiguous kernel memory: smaller parts */
        xfer_free(x);
        chunk = chunk_of(p, chunk / 2);
        ret = 0;
    }
    x->n_urbs = k;
    if (k == 0) {
        g_mutex_unlock(&d->io_lock);
        xfer_free(x);
        return ret == -ESHUTDOWN ? -ENODEV : ret;
    }
    /* -EREMOTEIO: an earlier part ended short already (that is fine) */
    if (ret < 0 && ret != -EREMOTEIO) {
        x->submit_err = ret == -ENOMEM ? -ENOMEM : -EIO;
        xfer_discard(x, 0);
    }
    x->cb = cb;
    x->opaque = opaque;
    x->d = dext_usb_device_ref(d);
    d->xfers = g_list_append(d->xfers, x);
    g_mutex_unlock(&d->io_lock);
    return 0;
}

int dext_usb_pipe_io(DextUsbPipe *p, DextUsbBuffer *buf, size_t offset,
                     uint32_t len, uint32_t *actual, unsigned timeout_ms)
{
    DextUsbDevice *d = p->dev;
    SyncIo *s;
    int ret;

    if (tl_reaper) {
        return -EDEADLK;       /* would wait for ourselves */
    }
    s = sync_new();
    ret = dext_usb_pipe_async_io(p, buf, offset, len, sync_cb, s);
    if (ret < 0) {
        sync_unref(s);         /* the completion's share */
        sync_unref(s);
        return ret;
    }
    if (!sync_wait(s, tmo_of(d, timeout_ms))) {
        /* take back just this transfer: other IO on the pipe stays */
        g_mutex_lock(&d->io_lock);
        for (GList *l = d->xfers; l; l = l->next) {
            Xfer *x = l->data;

            if (x->opaque == s && x->cb == sync_cb) {
                xfer_discard(x, 0);
            }
        }
        g_mutex_unlock(&d->io_lock);
        if (!sync_wait(s, d->h->timeout_ms)) {
            g_warning("usbfs %s: endpoint 0x%02x: a discarded URB did not "
                      "complete", d->sysname, p->desc.bEndpointAddress);
        }
        ret = -ETIMEDOUT;
    } else {
        ret = s->status;
    }
    if (actual) {
        g_mutex_lock(&s->lock);
        *actual = s->actual;
        g_mutex_unlock(&s->lock);
    }
    sync_unref(s);
    return ret;
}

int dext_usb_pipe_abort(DextUsbPipe *p)
{
    DextUsbDevice *d = p->dev;

    if (p->closed) {
        return -EBADF;
    }
    if (!d->attached) {
        return -ENODEV;
    }
    return abort_xfers(d, p);
}

int dext_usb_pipe_clear_stall(DextUsbPipe *p)
{
    DextUsbDevice *d = p->dev;
    unsigned ep = p->desc.bEndpointAddress;
    int ret;

    if (p->closed) {
        return -EBADF;
    }
    if (tl_reaper) {
        return -EDEADLK;
    }
    g_mutex_lock(&d->lock);
    if (!d->attached || d->fd < 0) {
        g_mutex_unlock(&d->lock);
        return -ENODEV;
    }
    abort_xfers(d, p);
    /* CLEAR_FEATURE(ENDPOINT_HALT) on the device (9.4.1), and the kernel
     * resets the controller's endpoint state (toggle / sequence) */
    ret = ioctl(d->fd, USBDEVFS_CLEAR_HALT, &ep) < 0 ? neg_errno() : 0;
    g_mutex_unlock(&d->lock);
    return ret;
}

/* ------------------------------------------------------- enumeration */

static int sysfs_read(DextUsbHost *h, const char *dev, const char *attr,
                      char *buf, size_t size)
{
    g_autofree char *path = g_build_filename(h->sysroot, dev, attr, NULL);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0) {
        return neg_errno();
    }
    n = read(fd, buf, size - 1);
    close(fd);
    if (n < 0) {
        return -EIO;
    }
    buf[n] = 0;
    g_strchomp(buf);
    return 0;
}

static int sysfs_uint(DextUsbHost *h, const char *dev, const char *attr,
                      int base, unsigned *val)
{
    char buf[32], *end;
    unsigned long v;
    int ret = sysfs_read(h, dev, attr, buf, sizeof(buf));

    if (ret < 0) {
        return ret;
    }
    errno = 0;
    v = strtoul(buf, &end, base);
    if (end == buf || errno || v > UINT32_MAX) {
        return -EINVAL;        /* e.g. bConfigurationValue of "" */
    }
    *val = v;
    return 0;
}

static unsigned speed_of(const char *mbps)
{
    if (!strcmp(mbps, "1.5")) {
        return DEXT_USB_SPEED_LOW;
    }
    switch (atoi(mbps)) {
    case 12:
        return DEXT_USB_SPEED_FULL;
    case 480:
        return DEXT_USB_SPEED_HIGH;
    case 0:
        return DEXT_USB_SPEED_UNKNOWN;
    default:
        return atoi(mbps) >= 5000 ? DEXT_USB_SPEED_SUPER
                                  : DEXT_USB_SPEED_UNKNOWN;
    }
}

/* usbfs's read(): the device descriptor then every configuration as the
 * kernel read it from the device (untrusted bytes) */
static int parse_raw(DextUsbDevice *d)
{
    size_t off = 18;
    int ret = dext_usb_parse_device(d->raw, d->raw_len, &d->desc);

    if (ret < 0) {
        return ret;
    }
    d->configs = g_new0(DextUsbConfigDesc, MAX(d->desc.bNumConfigurations, 1));
    d->config_off = g_new0(size_t, MAX(d->desc.bNumConfigurations, 1));
    d->config_len = g_new0(size_t, MAX(d->desc.bNumConfigurations, 1));
    for (unsigned k = 0; k < d->desc.bNumConfigurations; k++) {
        size_t left = d->raw_len - off, len;

        if (left < 9) {
            break;
        }
        len = MIN(left, (size_t)(d->raw[off + 2] | d->raw[off + 3] << 8));
        if (len < 9) {
            return -EINVAL;
        }
        ret = dext_usb_parse_config(d->raw + off, len, &d->configs[k]);
        if (ret < 0) {
            return ret;
        }
        d->config_off[k] = off;
        d->config_len[k] = len;
        d->n_configs = k + 1;
        off += len;
    }
    return 0;
}

static int enumerate(DextUsbHost *h, const char *name, unsigned busnum,
                     unsigned devnum, DextUsbDevice **out)
{
    DextUsbDevice *d = g_new0(DextUsbDevice, 1);
    g_autofree char *path = NULL;
    uint8_t alts[256] = { 0 };
    char buf[32];
    unsigned cv = 0;
    ssize_t n;
    int ret;

    d->ref = 1;
    d->h = h;
    d->sysname = g_strdup(name);
    d->busnum = busnum;
    d->devnum = devnum;
    d->fd = -1;
    d->wake_fd = -1;
    g_mutex_init(&d->lock);
    g_mutex_init(&d->io_lock);
    g_cond_init(&d->io_cond);
    d->old_pipes = g_ptr_array_new_with_free_func(g_free);
    if (sysfs_read(h, name, "speed", buf, sizeof(buf)) == 0) {
        d->speed = speed_of(buf);
    }
    path = g_strdup_printf("%s/%03u/%03u", h->devroot, busnum, devnum);
    d->fd = open(path, O_RDWR | O_CLOEXEC);
    if (d->fd < 0) {
        ret = neg_errno();
        goto fail;
    }
    d->raw = g_malloc(RAW_MAX);
    n = pread(d->fd, d->raw, RAW_MAX, 0);
    if (n < 0) {
        ret = neg_errno();
        goto fail;
    }
    d->raw_len = n;
    ret = parse_raw(d);
    if (ret < 0) {
        goto fail;
    }
    /* the kernel configured it already (usb generic driver): reflect that */
    if (sysfs_uint(h, name, "bConfigurationValue", 10, &cv) == 0 && cv) {
        for (unsigned k = 0; k < d->n_configs; k++) {
            if (d->configs[k].bConfigurationValue == cv) {
                d->cur_config = k;
                d->active_config = cv;
            }
        }
    }
    if (d->active_config) {
        const DextUsbConfigDesc *c = dext_usb_device_config(d);

        for (unsigned k = 0; k < c->n_alts; k++) {
            g_autofree char *ifn = g_strdup_printf("%s:%u.%u", name, cv,
                                              c->alts[k].bInterfaceNumber);
            unsigned alt = 0;

            if (sysfs_uint(h, ifn, "bAlternateSetting", 10, &alt) == 0) {
                alts[c->alts[k].bInterfaceNumber] = alt;
            }
        }
        make_ifaces(d, alts);
    }
    d->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (d->wake_fd < 0) {
        ret = neg_errno();
        goto fail;
    }
    d->attached = true;
    d->reaper = g_thread_new("dext-usbfs-reap", reaper_thread, d);
    *out = d;
    return 0;

fail:
    dext_usb_device_unref(d);
    return ret;
}

/* Device gone (or host going): complete its IO (-ECANCELED), tell the
 * device_fn, stop the reaper, close the fd. */
static void detach(DextUsbHost *h, DextUsbDevice *d)
{
    gint64 deadline;

    /* d->lock: a control request in progress ends first (bounded) */
    g_mutex_lock(&d->lock);
    g_mutex_lock(&d->io_lock);
    d->attached = false;
    for (GList *l = d->xfers; l; l = l->next) {
        Xfer *x = l->data;

        if (!x->detaching) {
            x->detaching = true;
            d->detach_wait++;
        }
        xfer_discard(x, 0);
    }
    g_mutex_unlock(&d->lock);
    /* completions may call into the device: no d->lock from here */
    deadline = g_get_monotonic_time() + h->timeout_ms * 1000ll;
    while (d->detach_wait &&
           g_cond_wait_until(&d->io_cond, &d->io_lock, deadline)) {
    }
    d->quit = true;
    g_mutex_unlock(&d->io_lock);
    wake(d->wake_fd);
    g_thread_join(d->reaper);
    d->reaper = NULL;
    /* what usbfs never gave back: complete it here (closing the fd kills
     * the URBs; usbfs writes user memory only when reaping, so nothing
     * touches the buffers afterwards) */
    g_mutex_lock(&d->io_lock);
    while (d->xfers) {
        Xfer *x = d->xfers->data;

        d->xfers = g_list_remove(d->xfers, x);
        g_mutex_unlock(&d->io_lock);
        xfer_finish(x);
        g_mutex_lock(&d->io_lock);
    }
    g_mutex_unlock(&d->io_lock);
    if (h->cfg.device_fn) {
        h->cfg.device_fn(h->cfg.device_opaque, d, false);
    }
    g_mutex_lock(&d->lock);
    g_mutex_lock(&d->io_lock);
    if (d->fd >= 0) {
        close(d->fd);          /* releases every claimed interface */
        d->fd = -1;
    }
    g_mutex_unlock(&d->io_lock);
    g_mutex_unlock(&d->lock);
    dext_usb_device_unref(d);
}

typedef struct Seen {
    char *name;
    unsigned busnum, devnum;
} Seen;

static int name_cmp(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* sysfs's USB devices now: neither interfaces ("1-1:1.0"), root hubs
 * ("usb1") nor hubs (the kernel's hub driver keeps those) */
static GArray *scan_sysfs(DextUsbHost *h)
{
    GArray *seen = g_array_new(FALSE, TRUE, sizeof(Seen));
    struct dirent **ents = NULL;
    int n = scandir(h->sysroot, &ents, NULL, name_cmp);

    for (int i = 0; i < n; i++) {
        const char *nm = ents[i]->d_name;
        Seen s = { 0 };
        unsigned cls = 0;

        if (nm[0] != '.' && !strchr(nm, ':') && strncmp(nm, "usb", 3) &&
            sysfs_uint(h, nm, "busnum", 10, &s.busnum) == 0 &&
            sysfs_uint(h, nm, "devnum", 10, &s.devnum) == 0 &&
            sysfs_uint(h, nm, "bDeviceClass", 16, &cls) == 0 && cls != 9 &&
            s.busnum < 256 && s.devnum < 256) {
            s.name = g_strdup(nm);
            g_array_append_val(seen, s);
        }
        free(ents[i]);
    }
    free(ents);
    return seen;
}

static void rescan(DextUsbHost *h)
{
    GArray *seen = scan_sysfs(h);
    GPtrArray *gone = g_ptr_array_new();

    /* gone: no longer listed (or listed with another devnum: replugged),
     * or usbfs said so */
    g_mutex_lock(&h->lock);
    for (guint k = 0; k < h->devs->len; k++) {
        DextUsbDevice *d = g_ptr_array_index(h->devs, k);
        bool found = false;

        for (guint j = 0; j < seen->len && !g_atomic_int_get(&d->dead); j++) {
            Seen *s = &g_array_index(seen, Seen, j);

            found |= !strcmp(s->name, d->sysname) &&
                     s->busnum == d->busnum && s->devnum == d->devnum;
        }
        if (!found) {
            g_ptr_array_add(gone, d);
        }
    }
    for (guint k = 0; k < gone->len; k++) {
        g_ptr_array_remove(h->devs, g_ptr_array_index(gone, k));
    }
    g_mutex_unlock(&h->lock);
    for (guint k = 0; k < gone->len; k++) {
        detach(h, g_ptr_array_index(gone, k));
    }
    for (guint j = 0; j < seen->len; j++) {
        Seen *s = &g_array_index(seen, Seen, j);
        g_autofree char *key = g_strdup_printf("%s %u %u", s->name,
                                               s->busnum, s->devnum);
        DextUsbDevice *d = NULL;
        bool known = false;
        int ret;

        g_mutex_lock(&h->lock);
        for (guint k = 0; k < h->devs->len; k++) {
            DextUsbDevice *o = g_ptr_array_index(h->devs, k);

            known |= o->busnum == s->busnum && o->devnum == s->devnum;
        }
        g_mutex_unlock(&h->lock);
        if (known) {
            continue;
        }
        ret = enumerate(h, s->name, s->busnum, s->devnum, &d);
        if (ret < 0) {
            /* ENOENT: the node is not there yet, ENODEV: the device is
             * going or being reset; the uevent follows either way */
            if (ret != -ENOENT && ret != -ENODEV &&
                g_hash_table_add(h->failed, g_strdup(key))) {
                g_warning("usbfs: %s: enumeration failed: %s", s->name,
                          g_strerror(-ret));
            }
            continue;
        }
        g_mutex_lock(&h->lock);
        g_ptr_array_add(h->devs, d);
        g_mutex_unlock(&h->lock);
        if (h->cfg.device_fn) {
            h->cfg.device_fn(h->cfg.device_opaque, d, true);
        }
    }
    for (guint j = 0; j < seen->len; j++) {
        g_free(g_array_index(seen, Seen, j).name);
    }
    g_array_free(seen, TRUE);
    g_ptr_array_free(gone, TRUE);
}

/* any uevent of subsystem usb (bind, add, remove ...) */
static bool drain_uevents(int fd)
{
    char buf[8192];
    bool usb = false;
    ssize_t n;

    while ((n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT)) > 0) {
        buf[n] = 0;
        for (ssize_t o = 0; o < n; o += strlen(buf + o) + 1) {
            usb |= !strcmp(buf + o, "SUBSYSTEM=usb");
        }
    }
    return usb;
}

/*
 * dext_usb_device_reset_port() on the hub thread: detach the device as on
 * an unplug, then USBDEVFS_RESET through a fresh fd (a port reset; the
 * kernel keeps the device number unless the descriptors changed), and the
 * rescan that follows enumerates it as a new DextUsbDevice.
 */
static void reset_devices(DextUsbHost *h, GPtrArray *resets)
{
    for (guint k = 0; k < resets->len; k++) {
        DextUsbDevice *d = g_ptr_array_index(resets, k);
        g_autofree char *path = g_strdup_printf("%s/%03u/%03u", h->devroot,
                                                d->busnum, d->devnum);
        bool ours;
        int fd;

        g_mutex_lock(&h->lock);
        ours = g_ptr_array_remove(h->devs, d);
        g_mutex_unlock(&h->lock);
        if (ours) {
            detach(h, d);      /* drops the host's reference */
            fd = open(path, O_RDWR | O_CLOEXEC);
            if (fd < 0 || ioctl(fd, USBDEVFS_RESET, NULL) < 0) {
                /* gone meanwhile: the rescan sees what is there */
                g_debug("usbfs %s: reset: %s", d->sysname, g_strerror(errno));
            }
            if (fd >= 0) {
                close(fd);
            }
        }
        dext_usb_device_unref(d);
    }
    g_ptr_array_free(resets, TRUE);
}

int dext_usb_device_reset_port(DextUsbDevice *d)
{
    DextUsbHost *h = d->h;
    bool ours = false;

    if (!d->attached) {
        return -ENODEV;        /* also: the host may be gone */
    }
    g_mutex_lock(&h->lock);
    for (guint k = 0; k < h->devs->len && !h->quit; k++) {
        ours |= g_ptr_array_index(h->devs, k) == d;
    }
    if (ours) {
        g_ptr_array_add(h->resets, dext_usb_device_ref(d));
        h->scan_req++;         /* wait_devices waits for it */
    }
    g_mutex_unlock(&h->lock);
    if (!ours) {
        return -ENODEV;
    }
    wake(h->wake_fd);
    return 0;
}

static gpointer hub_thread(gpointer opaque)
{
    DextUsbHost *h = opaque;
    unsigned period = h->nl_fd >= 0 ? RESCAN_MS : RESCAN_POLL_MS;

    for (;;) {
        struct pollfd pfd[2] = {
            { .fd = h->wake_fd, .events = POLLIN },
            { .fd = h->nl_fd, .events = POLLIN },
        };
        GPtrArray *resets;
        unsigned req;

        g_mutex_lock(&h->lock);
        if (h->quit) {
            g_mutex_unlock(&h->lock);
            break;
        }
        req = h->scan_req;
        resets = h->resets;
        h->resets = g_ptr_array_new();
        g_mutex_unlock(&h->lock);
        reset_devices(h, resets);
        rescan(h);
        g_mutex_lock(&h->lock);
        h->scan_done = req;
        g_cond_broadcast(&h->cond);
        if (h->scan_req != req || h->quit) {
            g_mutex_unlock(&h->lock);
            continue;
        }
        g_mutex_unlock(&h->lock);
        if (poll(pfd, h->nl_fd >= 0 ? 2 : 1, period) < 0 && errno != EINTR) {
            g_usleep(period * 1000);
        }
        if (pfd[0].revents & POLLIN) {
            drain(h->wake_fd);
        }
        if (h->nl_fd >= 0 && (pfd[1].revents & POLLIN)) {
            drain_uevents(h->nl_fd);
        }
    }
    return NULL;
}

static int uevent_socket(void)
{
    struct sockaddr_nl sa = {
        .nl_family = AF_NETLINK, .nl_groups = 1,   /* the kernel's group */
    };
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    NETLINK_KOBJECT_UEVENT);

    if (fd < 0) {
        return -1;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* --------------------------------------------------------------- host */

/* a quarter of what usbfs lets all its users have in flight */
static uint32_t default_urb_max(void)
{
    char buf[32] = "";
    unsigned long mb = 16;
    int fd = open("/sys/module/usbcore/parameters/usbfs_memory_mb",
                  O_RDONLY | O_CLOEXEC);

    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof(buf) - 1);

        if (n > 0) {
            buf[n] = 0;
            mb = strtoul(buf, NULL, 10);
        }
        close(fd);
    }
    if (mb == 0 || mb >= 16) {  /* 0: no limit */
        return URB_BULK_MAX;
    }
    return MAX((uint32_t)(mb << 20) / 4, URB_MIN);
}

uint32_t dext_usb_host_usbfs_set_urb_max(DextUsbHost *h, uint32_t bytes)
{
    uint32_t v = bytes ? CLAMP(bytes, 1024u, URB_BULK_MAX)
                       : default_urb_max();

    g_atomic_int_set(&h->urb_max, v);
    return v;
}

int dext_usb_host_create_usbfs(const char *devroot, const char *sysroot,
                               const DextUsbHostConfig *cfg,
                               DextUsbHost **out)
{
    DextUsbHost *h = g_new0(DextUsbHost, 1);
    int ret;

    if (cfg) {
        h->cfg = *cfg;
    }
    h->devroot = g_strdup(devroot ? devroot : "/dev/bus/usb");
    h->sysroot = g_strdup(sysroot ? sysroot : "/sys/bus/usb/devices");
    h->timeout_ms = h->cfg.xhci.timeout_ms ? h->cfg.xhci.timeout_ms
                                           : DEFAULT_TIMEOUT_MS;
    if (access(h->sysroot, R_OK) < 0) {
        ret = neg_errno();
        goto fail;
    }
    h->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (h->wake_fd < 0) {
        ret = neg_errno();
        goto fail;
    }
    g_atomic_int_set(&h->urb_max, default_urb_max());
    /* no uevents (no permission, a container): periodic rescans only */
    h->nl_fd = uevent_socket();
    g_mutex_init(&h->lock);
    g_cond_init(&h->cond);
    h->devs = g_ptr_array_new();
    h->failed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    h->scan_req = 1;           /* the first scan: what is attached now */
    h->resets = g_ptr_array_new();
    h->hub = g_thread_new("dext-usbfs-hub", hub_thread, h);
    *out = h;
    return 0;

fail:
    g_free(h->devroot);
    g_free(h->sysroot);
    g_free(h);
    return ret;
}

int dext_usb_find_xhci(DextPlatform *p, unsigned index, DextPciAddr *out)
{
    return -ENODEV;            /* the guest kernel owns the controllers */
}

int dext_usb_host_create(DextPlatform *p, DextPciAddr addr,
                         const DextUsbHostConfig *cfg, DextUsbHost **out)
{
    return -ENOTSUP;
}

int dext_usb_host_create_hw(const DextXhciHwOps *ops, void *hw,
                            uint64_t bar0_size, const DextUsbHostConfig *cfg,
                            DextUsbHost **out)
{
    if (ops && ops->destroy) {
        ops->destroy(hw);      /* takes @hw also on failure */
    }
    return -ENOTSUP;
}

DextXhci *dext_usb_host_xhci(DextUsbHost *h)
{
    return NULL;
}

void dext_usb_host_destroy(DextUsbHost *h)
{
    if (!h) {
        return;
    }
    g_mutex_lock(&h->lock);
    h->quit = true;
    g_mutex_unlock(&h->lock);
    wake(h->wake_fd);
    g_thread_join(h->hub);
    while (h->devs->len) {
        DextUsbDevice *d = g_ptr_array_steal_index(h->devs, 0);

        detach(h, d);
    }
    if (h->nl_fd >= 0) {
        close(h->nl_fd);
    }
    close(h->wake_fd);
    g_ptr_array_free(h->devs, TRUE);
    g_hash_table_destroy(h->failed);
    for (guint k = 0; k < h->resets->len; k++) {
        dext_usb_device_unref(g_ptr_array_index(h->resets, k));
    }
    g_ptr_array_free(h->resets, TRUE);
    g_mutex_clear(&h->lock);
    g_cond_clear(&h->cond);
    g_free(h->devroot);
    g_free(h->sysroot);
    g_free(h);
}

size_t dext_usb_host_devices(DextUsbHost *h, DextUsbDevice ***out)
{
    GPtrArray *a = g_ptr_array_new();
    size_t n;

    g_mutex_lock(&h->lock);
    for (guint k = 0; k < h->devs->len; k++) {
        g_ptr_array_add(a, dext_usb_device_ref(g_ptr_array_index(h->devs, k)));
    }
    g_mutex_unlock(&h->lock);
    n = a->len;
    *out = (DextUsbDevice **)g_ptr_array_free(a, FALSE);
    return n;
}

int dext_usb_host_wait_devices(DextUsbHost *h, unsigned count,
                               unsigned timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;
    gint64 next_kick = 0;
    int ret = 0;

    g_mutex_lock(&h->lock);
    for (;;) {
        /* idle: a scan asked for after we started has finished */
        unsigned want = ++h->scan_req;
        gint64 now;

        g_mutex_unlock(&h->lock);
        wake(h->wake_fd);
        g_mutex_lock(&h->lock);
        while ((int)(h->scan_done - want) < 0 && !h->quit) {
            if (!g_cond_wait_until(&h->cond, &h->lock, deadline)) {
                break;
            }
        }
        if ((int)(h->scan_done - want) >= 0 && h->devs->len == count) {
            break;
        }
        now = g_get_monotonic_time();
        if (now >= deadline || h->quit) {
            ret = -ETIMEDOUT;
            break;
        }
        /* not there yet: rescan at most every 50 ms until the deadline */
        next_kick = now + 50000;
        g_cond_wait_until(&h->cond, &h->lock, MIN(next_kick, deadline));
    }
    g_mutex_unlock(&h->lock);
    return ret;
}
