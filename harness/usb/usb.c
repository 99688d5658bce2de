/*
 * dextlab USB family: host, devices, interfaces, pipes, buffers.
 * See usb.h for the contract.
 */
#include <errno.h>
#include <string.h>

#include "usb.h"

#define USB_DT_DEVICE       1
#define USB_DT_CONFIG       2
#define USB_DT_INTERFACE    4
#define USB_DT_ENDPOINT     5
#define USB_DT_SS_EP_COMP   0x30

struct DextUsbBuffer {
    DextUsbHost *h;
    DextXhciDma dma;
    size_t size;
};

struct DextUsbPipe {
    DextUsbInterface *iface;
    DextUsbEndpointDesc desc;
    bool closed;
};

struct DextUsbInterface {
    DextUsbDevice *dev;
    uint8_t number;
    const DextUsbInterfaceDesc *cur;    /* into dev->config.alts */
    DextUsbPipe *pipes[30];
    unsigned n_pipes;
    bool open;
};

struct DextUsbDevice {
    gint ref;
    DextUsbHost *h;
    unsigned port;
    unsigned speed;
    DextXhciSlot *slot;
    bool attached;
    bool open;
    GMutex lock;                        /* ep0, configuration changes */
    GRWLock slot_rw;                    /* slot lifetime vs. async IO */
    DextUsbBuffer *ep0buf;
    DextUsbDeviceDesc desc;
    uint8_t *config_raw;
    size_t config_len;
    DextUsbConfigDesc config;
    uint8_t active_config;
    DextUsbInterface *ifaces[32];
    unsigned n_ifaces;
    GPtrArray *old_pipes;               /* closed pipes, freed with dev */
};

#define HUB_QUIT 0x10000u
#define HUB_RESET 0x20000u                /* | port + 1: reset it */

struct DextUsbHost {
    DextPlatform *p;
    DextXhci *x;
    DextUsbHostConfig cfg;
    GMutex lock;                        /* devices[], busy */
    GCond cond;
    DextUsbDevice *devices[256];        /* by root port */
    GAsyncQueue *notes;                 /* port numbers (+1), HUB_QUIT,
                                         * HUB_RESET | port + 1 */
    GThread *hub;
    unsigned busy;
};

/* ------------------------------------------------------------ buffers */

int dext_usb_buffer_alloc(DextUsbHost *h, size_t size, DextUsbBuffer **out)
{
    DextUsbBuffer *b;
    int ret;

    if (!size) {
        return -EINVAL;
    }
    b = g_new0(DextUsbBuffer, 1);
    ret = dext_xhci_dma_alloc(h->x, size, &b->dma);
    if (ret < 0) {
        g_free(b);
        return ret;
    }
    b->h = h;
    b->size = size;
    *out = b;
    return 0;
}

void dext_usb_buffer_free(DextUsbBuffer *b)
{
    if (b) {
        dext_xhci_dma_free(b->h->x, &b->dma);
        g_free(b);
    }
}

void *dext_usb_buffer_data(DextUsbBuffer *b)
{
    return b->dma.ptr;
}

size_t dext_usb_buffer_size(DextUsbBuffer *b)
{
    return b->size;
}

uint64_t dext_usb_buffer_iova(DextUsbBuffer *b)
{
    return b->dma.iova;
}

int dext_usb_buffer_fd(DextUsbBuffer *b, uint64_t *offset)
{
    DextPlatform *p = b->h->p;
    uint64_t map_size = 0, fd_size = 0, at;
    uint8_t *base;
    int fd;

    /* a backend that knows (libdext: the buffer's guest-RAM range) */
    fd = dext_xhci_dma_fd(b->h->x, &b->dma, offset);
    if (fd != -ENOTSUP) {
        return fd;
    }
    /* the platform backend's buffers live in guest RAM, which the
     * platform maps once (ptr = map + fd offset) */
    if (!p || dext_platform_memory_fd(p, &fd, &fd_size) < 0) {
        return -ENOTSUP;
    }
    base = dext_platform_memory_map(p, &map_size);
    if (!base || (uint8_t *)b->dma.ptr < base || map_size > fd_size) {
        return -ENOTSUP;
    }
    at = (uint64_t)((uint8_t *)b->dma.ptr - base);
    if (at > map_size || b->size > map_size - at) {
        return -ENOTSUP;
    }
    *offset = at;
    return fd;
}

/* ------------------------------------------------------- sync helpers */

typedef struct SyncIo {
    GMutex lock;
    GCond cond;
    bool done;
    int status;
    uint32_t actual;
} SyncIo;

static void sync_cb(void *opaque, int status, uint32_t actual, uint64_t ts)
{
    SyncIo *s = opaque;

    g_mutex_lock(&s->lock);
    s->status = status;
    s->actual = actual;
    s->done = true;
    g_cond_signal(&s->cond);
    g_mutex_unlock(&s->lock);
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

/* --------------------------------------------------------------- EP0 */

static int control_locked(DextUsbDevice *d, uint8_t rt, uint8_t req,
                          uint16_t val, uint16_t idx, void *data,
                          uint16_t wlen, uint32_t *actual, unsigned tmo)
{
    DextXhci *x = d->h->x;
    uint8_t setup[8] = { rt, req, val & 0xff, val >> 8, idx & 0xff, idx >> 8,
                         wlen & 0xff, wlen >> 8 };
    SyncIo s = { 0 };
    int ret;

    if (!d->attached) {
        return -ENODEV;
    }
    if (wlen > dext_usb_buffer_size(d->ep0buf)) {
        return -EINVAL;
    }
    if (!(rt & 0x80) && wlen) {
        memcpy(dext_usb_buffer_data(d->ep0buf), data, wlen);
    }
    tmo = tmo ? tmo : dext_xhci_timeout_ms(x);
    g_mutex_init(&s.lock);
    g_cond_init(&s.cond);
    ret = dext_xhci_submit(d->slot, 0, setup, dext_usb_buffer_iova(d->ep0buf),
                           wlen, sync_cb, &s);
    if (ret < 0) {
        goto out;
    }
    if (!sync_wait(&s, tmo)) {
        dext_xhci_abort(d->slot, 0);
        sync_wait(&s, tmo);
        ret = -ETIMEDOUT;
        goto out;
    }
    ret = s.status;
    if (ret == -EPIPE) {
        /* protocol stall: EP0 is halted on the controller, recover it */
        dext_xhci_reset_ep(d->slot, 0);
    }
    if (ret == 0 && (rt & 0x80) && wlen) {
        memcpy(data, dext_usb_buffer_data(d->ep0buf), MIN(s.actual, wlen));
    }
    if (actual) {
        *actual = ret == 0 ? MIN(s.actual, wlen) : 0;
    }
out:
    g_mutex_clear(&s.lock);
    g_cond_clear(&s.cond);
    return ret;
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
        return -ENODEV;        /* also: the host may be gone */
    }
    if (dext_xhci_on_event_thread(d->h->x)) {
        return -EDEADLK;
    }
    g_mutex_lock(&d->lock);
    ret = control_locked(d, rt, req, val, idx, data, wlen, actual, tmo);
    g_mutex_unlock(&d->lock);
    return ret;
}

/* -------------------------------------------------------- device objs */

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
    dext_usb_buffer_free(d->ep0buf);
    dext_usb_config_desc_free(&d->config);
    g_free(d->config_raw);
    g_mutex_clear(&d->lock);
    g_rw_lock_clear(&d->slot_rw);
    g_free(d);
}

bool dext_usb_device_attached(DextUsbDevice *d)
{
    return d->attached;
}

unsigned dext_usb_device_port(DextUsbDevice *d)
{
    return d->port;
}

unsigned dext_usb_device_speed(DextUsbDevice *d)
{
    return d->speed;
}

const DextUsbDeviceDesc *dext_usb_device_descriptor(DextUsbDevice *d)
{
    return &d->desc;
}

const DextUsbConfigDesc *dext_usb_device_config(DextUsbDevice *d)
{
    return &d->config;
}

const uint8_t *dext_usb_device_config_raw(DextUsbDevice *d, size_t *len)
{
    *len = d->config_len;
    return d->config_raw;
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
    k->bConfigurationValue = d->config.bConfigurationValue;
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
    for (unsigned k = 0; k < d->config.n_alts; k++) {
        if (d->config.alts[k].bInterfaceNumber == num &&
            d->config.alts[k].bAlternateSetting == alt) {
            return &d->config.alts[k];
        }
    }
    return NULL;
}

static void ep_to_xhci(const DextUsbEndpointDesc *e, DextXhciEpDesc *o)
{
    memset(o, 0, sizeof(*o));
    o->address = e->bEndpointAddress;
    o->attributes = e->bmAttributes;
    o->max_packet = e->wMaxPacketSize;
    o->interval = e->bInterval;
    o->max_burst = e->bMaxBurst;
    o->bytes_per_interval = e->wBytesPerInterval;
}

/* abort + close the interface's pipes and unconfigure their endpoints;
 * d->lock held */
static void iface_close_pipes(DextUsbInterface *i, bool unconfigure)
{
    DextUsbDevice *d = i->dev;
    uint8_t addrs[30];

    for (unsigned k = 0; k < i->n_pipes; k++) {
        addrs[k] = i->pipes[k]->desc.bEndpointAddress;
        if (d->slot) {
            dext_xhci_abort(d->slot, addrs[k]);
        }
        i->pipes[k]->closed = true;
        g_ptr_array_add(d->old_pipes, i->pipes[k]);
    }
    if (unconfigure && i->n_pipes && d->attached && d->slot) {
        dext_xhci_configure(d->slot, addrs, i->n_pipes, NULL, 0);
    }
    i->n_pipes = 0;
}

/* configure @alt's endpoints and create pipes; d->lock held */
static int iface_open_alt(DextUsbInterface *i, const DextUsbInterfaceDesc *alt)
{
    DextXhciEpDesc eps[30];
    int ret;

    for (unsigned k = 0; k < alt->n_endpoints; k++) {
        ep_to_xhci(&alt->endpoints[k], &eps[k]);
    }
    ret = dext_xhci_configure(i->dev->slot, NULL, 0, eps, alt->n_endpoints);
    if (ret < 0) {
        return ret;
    }
    for (unsigned k = 0; k < alt->n_endpoints; k++) {
        DextUsbPipe *p = g_new0(DextUsbPipe, 1);

        p->iface = i;
        p->desc = alt->endpoints[k];
        i->pipes[i->n_pipes++] = p;
    }
    i->cur = alt;
    return 0;
}

int dext_usb_device_set_configuration(DextUsbDevice *d, uint8_t value)
{
    int ret;

    g_mutex_lock(&d->lock);
    if (!d->attached) {
        ret = -ENODEV;
        goto out;
    }
    if (!d->open) {
        ret = -EBUSY;
        goto out;
    }
    if (value && value != d->config.bConfigurationValue) {
        ret = -EINVAL;         /* one configuration is read at attach */
        goto out;
    }
    for (unsigned k = 0; k < d->n_ifaces; k++) {
        iface_close_pipes(d->ifaces[k], true);
        iface_free(d->ifaces[k]);
        d->ifaces[k] = NULL;
    }
    d->n_ifaces = 0;
    d->active_config = 0;
    ret = control_locked(d, 0x00, 9, value, 0, NULL, 0, NULL, 0);
    if (ret < 0 || value == 0) {
        goto out;
    }
    d->active_config = value;
    for (unsigned k = 0; k < d->config.n_alts && d->n_ifaces < 32; k++) {
        const DextUsbInterfaceDesc *a = &d->config.alts[k];
        DextUsbInterface *i;

        if (a->bAlternateSetting != 0) {
            continue;
        }
        i = g_new0(DextUsbInterface, 1);
        i->dev = d;
        i->number = a->bInterfaceNumber;
        d->ifaces[d->n_ifaces++] = i;
        ret = iface_open_alt(i, a);
        if (ret < 0) {
            goto out;
        }
    }
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

int dext_usb_interface_open(DextUsbInterface *i)
{
    int ret = 0;

    g_mutex_lock(&i->dev->lock);
    if (!i->dev->attached) {
        ret = -ENODEV;
    } else if (i->open) {
        ret = -EBUSY;
    } else {
        i->open = true;
    }
    g_mutex_unlock(&i->dev->lock);
    return ret;
}

void dext_usb_interface_close(DextUsbInterface *i)
{
    g_mutex_lock(&i->dev->lock);
    for (unsigned k = 0; k < i->n_pipes && i->dev->slot; k++) {
        dext_xhci_abort(i->dev->slot, i->pipes[k]->desc.bEndpointAddress);
    }
    i->open = false;
    g_mutex_unlock(&i->dev->lock);
}

int dext_usb_interface_select_alt(DextUsbInterface *i, uint8_t alt)
{
    DextUsbDevice *d = i->dev;
    const DextUsbInterfaceDesc *a;
    int ret;

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
    iface_close_pipes(i, true);
    /* SET_INTERFACE (9.4.10) */
    ret = control_locked(d, 0x01, 11, alt, i->number, NULL, 0, NULL, 0);
    if (ret == 0) {
        ret = iface_open_alt(i, a);
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

int dext_usb_pipe_async_io(DextUsbPipe *p, DextUsbBuffer *buf, size_t offset,
                           uint32_t len, DextUsbIoFn cb, void *opaque)
{
    DextUsbDevice *d;
    int ret;

    if (p->closed) {
        return -EBADF;
    }
    d = p->iface->dev;
    if (!d->attached) {
        return -ENODEV;
    }
    if (!buf || offset > buf->size || len > buf->size - offset) {
        return -EINVAL;
    }
    g_rw_lock_reader_lock(&d->slot_rw);
    ret = d->slot ? dext_xhci_submit(d->slot, p->desc.bEndpointAddress, NULL,
                                     buf->dma.iova + offset, len, cb, opaque)
                  : -ENODEV;
    g_rw_lock_reader_unlock(&d->slot_rw);
    return ret;
}

int dext_usb_pipe_io(DextUsbPipe *p, DextUsbBuffer *buf, size_t offset,
                     uint32_t len, uint32_t *actual, unsigned timeout_ms)
{
    SyncIo s = { 0 };
    int ret;

    if (p->closed) {
        return -EBADF;
    }
    if (!p->iface->dev->attached) {
        return -ENODEV;
    }
    if (dext_xhci_on_event_thread(p->iface->dev->h->x)) {
        return -EDEADLK;       /* would wait for ourselves */
    }
    g_mutex_init(&s.lock);
    g_cond_init(&s.cond);
    ret = dext_usb_pipe_async_io(p, buf, offset, len, sync_cb, &s);
    if (ret == 0) {
        unsigned tmo = timeout_ms ? timeout_ms
                                  : dext_xhci_timeout_ms(p->iface->dev->h->x);

        if (!sync_wait(&s, tmo)) {
            dext_usb_pipe_abort(p);
            sync_wait(&s, tmo);
            ret = -ETIMEDOUT;
        } else {
            ret = s.status;
        }
        if (actual) {
            *actual = s.actual;
        }
    }
    g_mutex_clear(&s.lock);
    g_cond_clear(&s.cond);
    return ret;
}

int dext_usb_pipe_abort(DextUsbPipe *p)
{
    DextUsbDevice *d = p->iface->dev;
    int ret;

    if (p->closed) {
        return -EBADF;
    }
    g_mutex_lock(&d->lock);
    ret = d->slot ? dext_xhci_abort(d->slot, p->desc.bEndpointAddress)
                  : -ENODEV;
    g_mutex_unlock(&d->lock);
    return ret;
}

int dext_usb_pipe_clear_stall(DextUsbPipe *p)
{
    DextUsbDevice *d;
    int ret;

    if (p->closed) {
        return -EBADF;
    }
    d = p->iface->dev;
    g_mutex_lock(&d->lock);
    ret = d->slot ? dext_xhci_reset_ep(d->slot, p->desc.bEndpointAddress)
                  : -ENODEV;
    if (ret < 0) {
        g_mutex_unlock(&d->lock);
        return ret;
    }
    /* CLEAR_FEATURE(ENDPOINT_HALT) resets the device side (9.4.1) */
    ret = control_locked(d, 0x02, 1, 0, p->desc.bEndpointAddress, NULL, 0,
                         NULL, 0);
    g_mutex_unlock(&d->lock);
    return ret;
}

/* --------------------------------------------------------------- host */

int dext_usb_find_xhci(DextPlatform *p, unsigned index, DextPciAddr *out)
{
    DextPciFunction *fns;
    size_t n;
    int ret = dext_platform_pci_enumerate(p, false, &fns, &n);

    if (ret < 0) {
        return ret;
    }
    ret = -ENODEV;
    for (size_t k = 0; k < n; k++) {
        if (fns[k].class_base == 0x0c && fns[k].class_sub == 0x03 &&
            fns[k].class_prog_if == 0x30 && index-- == 0) {
            *out = fns[k].addr;
            ret = 0;
            break;
        }
    }
    g_free(fns);
    return ret;
}

static void port_note(void *opaque, unsigned port, uint32_t portsc)
{
    DextUsbHost *h = opaque;

    g_async_queue_push(h->notes, GUINT_TO_POINTER(port + 1));
}

static int enumerate_port(DextUsbHost *h, unsigned port, DextUsbDevice **out)
{
    DextUsbDevice *d = g_new0(DextUsbDevice, 1);
    uint8_t buf[18], cfg9[9];
    uint32_t got = 0;
    unsigned mps0;
    int ret;

    d->ref = 1;
    d->h = h;
    d->port = port;
    g_mutex_init(&d->lock);
    g_rw_lock_init(&d->slot_rw);
    d->old_pipes = g_ptr_array_new_with_free_func(g_free);
    if ((ret = dext_xhci_port_reset(h->x, port, &d->speed)) < 0 ||
        (ret = dext_usb_buffer_alloc(h, 4096, &d->ep0buf)) < 0 ||
        (ret = dext_xhci_slot_create(h->x, port, d->speed, &d->slot)) < 0) {
        goto fail;
    }
    d->attached = true;
    g_mutex_lock(&d->lock);
    ret = control_locked(d, 0x80, 6, USB_DT_DEVICE << 8, 0, buf, 8, &got, 0);
    if (ret == 0 && got == 8) {
        mps0 = d->speed == DEXT_USB_SPEED_SUPER ? 1u << MIN(buf[7], 10)
                                                : buf[7];
        if (mps0 != (d->speed == DEXT_USB_SPEED_SUPER ? 512u :
                     d->speed == DEXT_USB_SPEED_HIGH ? 64u : 8u)) {
            ret = dext_xhci_slot_set_ep0_mps(d->slot, mps0);
        }
    } else if (ret == 0) {
        ret = -EIO;
    }
    if (ret == 0) {
        ret = control_locked(d, 0x80, 6, USB_DT_DEVICE << 8, 0, buf, 18, &got,
                             0);
    }
    if (ret == 0) {
        ret = dext_usb_parse_device(buf, got, &d->desc);
    }
    if (ret == 0) {
        ret = control_locked(d, 0x80, 6, USB_DT_CONFIG << 8, 0, cfg9, 9, &got,
                             0);
    }
    if (ret == 0) {
        uint16_t total = got == 9 ? (cfg9[2] | cfg9[3] << 8) : 0;

        if (total < 9 || total > 4096) {
            ret = -EIO;
        } else {
            d->config_raw = g_malloc(total);
            ret = control_locked(d, 0x80, 6, USB_DT_CONFIG << 8, 0,
                                 d->config_raw, total, &got, 0);
            d->config_len = got;
            if (ret == 0) {
                ret = dext_usb_parse_config(d->config_raw, got, &d->config);
            }
        }
    }
    g_mutex_unlock(&d->lock);
    if (ret < 0) {
        goto fail;
    }
    *out = d;
    return 0;

fail:
    d->attached = false;
    if (d->slot) {
        dext_xhci_slot_destroy(d->slot, -ECANCELED);
        d->slot = NULL;
    }
    dext_usb_device_unref(d);
    return ret;
}

static void detach_port(DextUsbHost *h, unsigned port)
{
    DextUsbDevice *d;

    g_mutex_lock(&h->lock);
    d = h->devices[port];
    h->devices[port] = NULL;
    g_mutex_unlock(&h->lock);
    if (!d) {
        return;
    }
    /* in-flight IO completes -ECANCELED before anyone hears of it */
    dext_xhci_slot_gone(d->slot);
    g_mutex_lock(&d->lock);
    d->attached = false;
    g_mutex_unlock(&d->lock);
    if (h->cfg.device_fn) {
        h->cfg.device_fn(h->cfg.device_opaque, d, false);
    }
    g_mutex_lock(&d->lock);
    /* async IO may be submitting right now (it does not take d->lock) */
    g_rw_lock_writer_lock(&d->slot_rw);
    dext_xhci_slot_destroy(d->slot, -ECANCELED);
    d->slot = NULL;
    g_rw_lock_writer_unlock(&d->slot_rw);
    /* DMA memory belongs to the controller: give it back now, so a
     * reference held past dext_usb_host_destroy() touches nothing of it */
    dext_usb_buffer_free(d->ep0buf);
    d->ep0buf = NULL;
    g_mutex_unlock(&d->lock);
    dext_usb_device_unref(d);
}

static void handle_port(DextUsbHost *h, unsigned port, bool reset)
{
    uint32_t sc = 0;
    bool present, changed;
    DextUsbDevice *d = NULL;
    int ret;

    if (dext_xhci_portsc(h->x, port, &sc) < 0) {
        return;
    }
    present = sc & 1;
    /* a reset is a detach + enumerate (which resets the port) */
    changed = reset || (sc & (1u << 17));          /* CSC */
    dext_xhci_port_ack(h->x, port);
    g_mutex_lock(&h->lock);
    d = h->devices[port];
    g_mutex_unlock(&h->lock);
    if (d && (!present || changed)) {
        detach_port(h, port);
        d = NULL;
    }
    if (present && !d) {
        ret = enumerate_port(h, port, &d);
        if (ret < 0) {
            g_warning("usb: port %u: enumeration failed: %s", port,
                      g_strerror(-ret));
            return;
        }
        g_mutex_lock(&h->lock);
        h->devices[port] = d;
        g_mutex_unlock(&h->lock);
        if (h->cfg.device_fn) {
            h->cfg.device_fn(h->cfg.device_opaque, d, true);
        }
    }
}

static gpointer hub_thread(gpointer opaque)
{
    DextUsbHost *h = opaque;

    for (;;) {
        unsigned v = GPOINTER_TO_UINT(g_async_queue_pop(h->notes));

        if (v == HUB_QUIT) {
            break;
        }
        handle_port(h, (v & ~HUB_RESET) - 1, v & HUB_RESET);
        g_mutex_lock(&h->lock);
        h->busy--;
        g_cond_broadcast(&h->cond);
        g_mutex_unlock(&h->lock);
    }
    return NULL;
}

/* count every note as work so wait_devices sees enumeration in progress */
static void port_note_counted(void *opaque, unsigned port, uint32_t portsc)
{
    DextUsbHost *h = opaque;

    g_mutex_lock(&h->lock);
    h->busy++;
    g_mutex_unlock(&h->lock);
    port_note(opaque, port, portsc);
}

int dext_usb_device_reset_port(DextUsbDevice *d)
{
    DextUsbHost *h = d->h;
    bool ours;

    if (!d->attached) {
        return -ENODEV;        /* also: the host may be gone */
    }
    g_mutex_lock(&h->lock);
    ours = d->attached && h->devices[d->port] == d;
    if (ours) {
        h->busy++;
    }
    g_mutex_unlock(&h->lock);
    if (!ours) {
        return -ENODEV;
    }
    /* the hub thread owns attach/detach: it detaches this device (IO
     * -ECANCELED, device_fn(false)) and enumerates the port again, whose
     * first step is the port reset */
    g_async_queue_push(h->notes, GUINT_TO_POINTER(HUB_RESET | (d->port + 1)));
    return 0;
}

static int host_create(DextPlatform *p, DextPciAddr addr,
                       const DextXhciHwOps *ops, void *hw, uint64_t bar0_size,
                       const DextUsbHostConfig *cfg, DextUsbHost **out)
{
    DextUsbHost *h = g_new0(DextUsbHost, 1);
    DextXhciConfig xc;
    int ret;

    h->p = p;
    if (cfg) {
        h->cfg = *cfg;
    }
    g_mutex_init(&h->lock);
    g_cond_init(&h->cond);
    h->notes = g_async_queue_new();
    xc = h->cfg.xhci;
    xc.port_fn = port_note_counted;
    xc.port_opaque = h;
    ret = ops ? dext_xhci_create_hw(ops, hw, bar0_size, &xc, &h->x)
              : dext_xhci_create(p, addr, &xc, &h->x);
    if (ret < 0) {
        g_async_queue_unref(h->notes);
        g_mutex_clear(&h->lock);
        g_cond_clear(&h->cond);
        g_free(h);
        return ret;
    }
    h->hub = g_thread_new("dext-usb-hub", hub_thread, h);
    /* devices already connected raise no event: look at every port */
    for (unsigned port = 1; port <= dext_xhci_num_ports(h->x); port++) {
        port_note_counted(h, port, 0);
    }
    *out = h;
    return 0;
}

int dext_usb_host_create(DextPlatform *p, DextPciAddr addr,
                         const DextUsbHostConfig *cfg, DextUsbHost **out)
{
    return host_create(p, addr, NULL, NULL, 0, cfg, out);
}

int dext_usb_host_create_hw(const DextXhciHwOps *ops, void *hw,
                            uint64_t bar0_size, const DextUsbHostConfig *cfg,
                            DextUsbHost **out)
{
    DextPciAddr none = { 0 };

    return host_create(NULL, none, ops, hw, bar0_size, cfg, out);
}

void dext_usb_host_destroy(DextUsbHost *h)
{
    if (!h) {
        return;
    }
    g_async_queue_push(h->notes, GUINT_TO_POINTER(HUB_QUIT));
    g_thread_join(h->hub);
    for (unsigned port = 1; port < G_N_ELEMENTS(h->devices); port++) {
        detach_port(h, port);
    }
    dext_xhci_destroy(h->x);
    g_async_queue_unref(h->notes);
    g_mutex_clear(&h->lock);
    g_cond_clear(&h->cond);
    g_free(h);
}

DextXhci *dext_usb_host_xhci(DextUsbHost *h)
{
    return h->x;
}

size_t dext_usb_host_devices(DextUsbHost *h, DextUsbDevice ***out)
{
    GPtrArray *a = g_ptr_array_new();

    g_mutex_lock(&h->lock);
    for (unsigned port = 1; port < G_N_ELEMENTS(h->devices); port++) {
        if (h->devices[port]) {
            g_ptr_array_add(a, dext_usb_device_ref(h->devices[port]));
        }
    }
    g_mutex_unlock(&h->lock);
    {
        size_t n = a->len;

        *out = (DextUsbDevice **)g_ptr_array_free(a, FALSE);
        return n;
    }
}

int dext_usb_host_wait_devices(DextUsbHost *h, unsigned count,
                               unsigned timeout_ms)
{
    gint64 deadline = g_get_monotonic_time() + timeout_ms * 1000ll;
    int ret = 0;

    g_mutex_lock(&h->lock);
    for (;;) {
        unsigned n = 0;

        for (unsigned port = 1; port < G_N_ELEMENTS(h->devices); port++) {
            n += h->devices[port] != NULL;
        }
        if (n == count && h->busy == 0) {
            break;
        }
        if (!g_cond_wait_until(&h->cond, &h->lock, deadline)) {
            ret = -ETIMEDOUT;
            break;
        }
    }
    g_mutex_unlock(&h->lock);
    return ret;
}
