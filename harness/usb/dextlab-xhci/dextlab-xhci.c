/*
 * dextlab-xhci: the user-space xHCI host controller driver as a dext.
 *
 * Matched to every xHCI PCI function (class 0c0330).  Start opens the
 * function through libdext's PCI API, runs harness/usb's xHCI driver on
 * the libdext backend (BAR0 over IPC, DMA buffers prepared with DMA
 * commands, MSI-X as an interrupt dispatch source) and enumerates the
 * root ports.  It is the USB publisher (docs/runtime/nubs.md): every
 * attached device is configured and published as an IOUSBHostDevice nub
 * with one IOUSBHostInterface nub per interface, client drivers matched
 * to them get provider channels served by harness/usb/usb-provider.c, and
 * a detach terminates the nubs after the pending IO was posted -ECANCELED.
 * A user client lists the devices and, for apps and tests, loops data
 * through a dextlab-usb and reads its registers: as one more client of
 * the provider (a channel of its own, so a client driver's exclusive open
 * is respected: -EBUSY then).
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "dext/dext.h"
#include "dext/service.h"
#include "dext/pci.h"
#include "dext/userclient.h"
#include "dext/log.h"
#include "usb.h"
#include "usb-provider.h"
#include "ipc.h"
#include "xhci-dext.h"
#include "dextlab-xhci-uc.h"
#include "hw/dextlab/dextlab-usb-regs.h"

typedef struct Xhci {
    DextService *svc;
    DextPciDevice *pci;
    DextQueue *irq_q;
    DextUsbHost *host;
    DextUsbProvider *prov;
} Xhci;

static uint64_t bar0_size(DextService *svc)
{
    g_autofree char *txt = dext_service_provider_property(svc, "bars");
    g_autoptr(GVariant) v = txt ? g_variant_parse(G_VARIANT_TYPE("a(ystt)"),
                                                  txt, NULL, NULL, NULL)
                                : NULL;
    GVariantIter it;
    guchar idx;
    const char *kind;
    guint64 addr, size, found = 0;

    if (!v) {
        return 0;
    }
    g_variant_iter_init(&it, v);
    while (g_variant_iter_next(&it, "(y&stt)", &idx, &kind, &addr, &size)) {
        if (idx == 0 && strncmp(kind, "mem", 3) == 0) {
            found = size;
        }
    }
    return found;
}

static void usb_event(void *opaque, DextUsbDevice *d, bool attached)
{
    Xhci *x = opaque;
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);

    DEXT_INFO("usb: port %u %s: %04x:%04x speed %u",
                  dext_usb_device_port(d), attached ? "attached" : "detached",
                  dd->idVendor, dd->idProduct, dext_usb_device_speed(d));
    dext_usb_provider_device_fn(x->prov, d, attached);
}

/* Provider callbacks (hub thread).  Devices found during Start are
 * published while the service is still starting: dextd accepts that. */
static int pub_nub(void *opaque, uint64_t parent, const char *name,
                   const char *io_class, const char *props, uint64_t *nub)
{
    Xhci *x = opaque;
    int ret = dext_service_publish_nub(x->svc, parent, name, io_class, props,
                                       nub);

    if (ret == 0) {
        DEXT_INFO("published %s (%s) as nub %" G_GUINT64_FORMAT, name,
                  io_class, *nub);
    }
    return ret;
}

static int term_nub(void *opaque, uint64_t nub)
{
    return dext_service_terminate_nub(((Xhci *)opaque)->svc, nub);
}

static const DextUsbProviderOps prov_ops = {
    .publish = pub_nub,
    .terminate = term_nub,
};

static int xhci_start(DextService *svc)
{
    Xhci *x = g_new0(Xhci, 1);
    DextUsbHostConfig cfg = { .device_fn = usb_event };
    uint64_t bar0;
    void *hw;
    int ret;

    x->svc = svc;
    x->pci = dext_service_pci(svc);
    bar0 = bar0_size(svc);
    if (!x->pci || !bar0) {
        ret = -ENODEV;
        goto fail;
    }
    if ((ret = dext_pci_open(x->pci)) < 0) {
        goto fail;
    }
    if ((ret = dext_pci_set_memory_enable(x->pci, true)) < 0 ||
        (ret = dext_pci_set_bus_master_enable(x->pci, true)) < 0 ||
        (ret = dext_queue_create("xhci-irq", &x->irq_q)) < 0) {
        goto fail_close;
    }
    if ((ret = dext_usb_provider_create(&prov_ops, x, &x->prov)) < 0) {
        goto fail_close;
    }
    cfg.device_opaque = x;
    /* before the host: nub_client may come as soon as a nub is out */
    dext_service_set_priv(svc, x);
    hw = dext_xhci_dext_new(x->pci, x->irq_q);
    ret = dext_usb_host_create_hw(&dext_xhci_dext_ops, hw, bar0, &cfg,
                                  &x->host);
    if (ret < 0) {
        goto fail_prov;
    }
    dext_usb_provider_set_host(x->prov, x->host);
    DEXT_INFO("xhci on %s: %u root ports, BAR0 %" G_GUINT64_FORMAT
                  " bytes", dext_pci_address(x->pci),
                  dext_xhci_num_ports(dext_usb_host_xhci(x->host)), bar0);
    return 0;

fail_prov:
    dext_service_set_priv(svc, NULL);
    dext_usb_provider_destroy(x->prov);
fail_close:
    if (x->irq_q) {
        dext_queue_destroy(x->irq_q);
    }
    dext_pci_close(x->pci);
fail:
    DEXT_ERROR("start failed: %s", g_strerror(-ret));
    g_free(x);
    return ret;
}

static void xhci_stop(DextService *svc)
{
    Xhci *x = dext_service_get_priv(svc);

    if (!x) {
        return;
    }
    /* channels first (their buffers are the controller's), then the
     * devices (dextd terminated our nubs already), then the provider */
    dext_usb_provider_shutdown(x->prov);
    dext_usb_host_destroy(x->host);
    dext_usb_provider_destroy(x->prov);
    dext_queue_destroy(x->irq_q);
    dext_pci_set_bus_master_enable(x->pci, false);
    dext_pci_close(x->pci);
    g_free(x);
}

/* the device on root @port, referenced, or NULL */
static DextUsbDevice *dev_on_port(Xhci *x, uint64_t port)
{
    DextUsbDevice **v, *d = NULL;
    size_t n = dext_usb_host_devices(x->host, &v);

    for (size_t i = 0; i < n; i++) {
        if (!d && dext_usb_device_port(v[i]) == port) {
            d = dext_usb_device_ref(v[i]);
        }
        dext_usb_device_unref(v[i]);
    }
    g_free(v);
    return d;
}

/* ------------------------------------ the user client's own channel */

typedef struct Chan {
    int fd;
    uint32_t serial;
} Chan;

/* request -> 0 (reply body in *out, fd in *fd) or the ERROR's -errno */
static int chan_call(Chan *c, uint16_t type, GVariant *body, GVariant **out,
                     int *fd)
{
    gint64 deadline = g_get_monotonic_time() + 15 * G_USEC_PER_SEC;
    DextMsg m, r;
    int ret;

    dext_msg_init(&m, type, body);
    m.serial = ++c->serial;
    ret = dext_ipc_send(c->fd, &m);
    dext_msg_clear(&m);
    while (ret == 0) {
        int left = (int)((deadline - g_get_monotonic_time()) / 1000);

        if (left <= 0) {
            return -ETIMEDOUT;
        }
        ret = dext_ipc_recv(c->fd, DEXT_CH_PROV | DEXT_CH_PROVEV, &r, left,
                            NULL);
        if (ret < 0) {
            break;
        }
        if (!(r.flags & DEXT_MSG_F_REPLY) || r.reply_to != c->serial) {
            dext_msg_clear(&r);         /* only sync calls here */
            continue;
        }
        if (r.type == DEXT_MSG_ERROR) {
            g_variant_get(r.body, "(i&s)", &ret, NULL);
        } else {
            if (out) {
                *out = g_variant_ref(r.body);
            }
            if (fd) {
                *fd = dext_msg_take_fd(&r, 0);
            }
        }
        dext_msg_clear(&r);
        return ret;
    }
    return ret;
}

/* a provider channel to the device on @port (@ifnum < 0) or its
 * interface @ifnum, opened */
static int chan_open(Xhci *x, uint64_t port, int ifnum, Chan *c)
{
    int sv[2], ret;

    c->serial = 0;
    c->fd = -1;
    if (port > 255) {
        return -ENODEV;
    }
    if ((ret = dext_ipc_socketpair(sv)) < 0) {
        return ret;
    }
    ret = dext_usb_provider_serve_port(x->prov, (unsigned)port, ifnum, sv[1]);
    if (ret < 0) {
        close(sv[0]);
        return ret == -ENOENT ? -ENODEV : ret;
    }
    c->fd = sv[0];
    ret = chan_call(c, DEXT_MSG_USB_OPEN, g_variant_new("()"), NULL, NULL);
    if (ret < 0) {
        close(c->fd);
        c->fd = -1;
    }
    return ret;
}

/* USB_CLOSE first: the open is released before the next call opens again
 * (the provider tears a closed channel down on its own thread, a little
 * later); closing the channel frees its buffers */
static void chan_close(Chan *c)
{
    if (c->fd >= 0) {
        chan_call(c, DEXT_MSG_USB_CLOSE, g_variant_new("()"), NULL, NULL);
        close(c->fd);
    }
}

/* a buffer of @cap bytes mapped here: 0 (handle and mapping out), or -errno */
static int chan_buffer(Chan *c, uint64_t cap, uint32_t dir, uint64_t *handle,
                       uint8_t **map)
{
    GVariant *r = NULL;
    guint64 h, got, off;
    int fd = -1, ret;

    ret = chan_call(c, DEXT_MSG_USB_BUFFER_ALLOC,
                    g_variant_new("(tu)", (guint64)cap, dir), &r, &fd);
    if (ret < 0) {
        return ret;
    }
    g_variant_get(r, "(ttt)", &h, &got, &off);
    g_variant_unref(r);
    *map = fd >= 0 ? mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                          (off_t)off) : MAP_FAILED;
    if (fd >= 0) {
        close(fd);
    }
    if (*map == MAP_FAILED) {
        return -ENOMEM;
    }
    *handle = h;
    return 0;
}

static int chan_io(Chan *c, uint8_t ep, uint64_t handle, uint32_t len,
                   uint32_t *actual)
{
    GVariant *r = NULL;
    gint32 st;
    guint64 ts;
    int ret = chan_call(c, DEXT_MSG_USB_IO,
                        g_variant_new("(yttuut)", ep, (guint64)handle,
                                      (guint64)0, len, 5000u, (guint64)0),
                        &r, NULL);

    if (ret < 0) {
        return ret;
    }
    g_variant_get(r, "(iut)", &st, actual, &ts);
    g_variant_unref(r);
    return st;
}

/* the device on @port is a dextlab-usb */
static bool is_dextlab_usb(Xhci *x, uint64_t port)
{
    DextUsbDevice *d = dev_on_port(x, port);
    bool ok = false;

    if (d) {
        const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);

        ok = dd->idVendor == DEXTLAB_USB_VID &&
             dd->idProduct == DEXTLAB_USB_PID;
        dext_usb_device_unref(d);
    }
    return ok;
}

/* A STALL is -EPIPE inside the driver; over the user-client channel
 * -EPIPE reads as a broken connection on the app side, so it crosses as
 * -EPROTO (documented in dextlab-xhci-uc.h). */
static int uc_status(int ret)
{
    return ret == -EPIPE ? -EPROTO : ret;
}

static int m_list(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Xhci *x = ctx;
    DextUsbDevice **v;
    size_t n = dext_usb_host_devices(x->host, &v), k = 0;
    DxhciUcDev *out = a->struct_out;

    for (size_t i = 0; i < n; i++) {
        const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(v[i]);

        if (k < DXHCI_UC_MAX_DEVS) {
            out[k].port = dext_usb_device_port(v[i]);
            out[k].speed = dext_usb_device_speed(v[i]);
            out[k].id_vendor = dd->idVendor;
            out[k].id_product = dd->idProduct;
            out[k].bcd_device = dd->bcdDevice;
            k++;
        }
        dext_usb_device_unref(v[i]);
    }
    g_free(v);
    a->scalar_out[0] = k;
    a->struct_out_size = k * sizeof(DxhciUcDev);
    return 0;
}

static int m_loopback(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Xhci *x = ctx;
    uint64_t port = a->scalar_in[0], len = a->scalar_in[1];
    uint32_t seed = a->scalar_in[2], got = 0;
    uint64_t oh = 0, ih = 0;
    uint8_t *o = MAP_FAILED, *i = MAP_FAILED;
    Chan c;
    int ret;

    if (len > DXHCI_UC_LOOP_MAX || len > DEXTLAB_USB_FIFO_DEFAULT) {
        return -EINVAL;        /* one FIFO's worth per call */
    }
    if (!is_dextlab_usb(x, port)) {
        return -ENODEV;
    }
    ret = chan_open(x, port, DEXTLAB_USB_IFACE_NUM, &c);
    if (ret == 0) {
        ret = chan_buffer(&c, MAX(len, 1), DEXT_DMA_OUT, &oh, &o);
    }
    if (ret == 0) {
        ret = chan_buffer(&c, len + 512, DEXT_DMA_IN, &ih, &i);
    }
    if (ret == 0) {
        for (uint64_t k = 0; k < len; k++) {
            o[k] = (uint8_t)((k * 2654435761u + seed) >> 11);
        }
        ret = chan_io(&c, DEXTLAB_USB_EP_BULK_OUT, oh, len, &got);
        if (ret == 0 && got != len) {
            ret = -EIO;
        }
    }
    if (ret == 0) {
        ret = chan_io(&c, DEXTLAB_USB_EP_BULK_IN, ih, len + 512, &got);
    }
    if (ret == 0 && (got != len || memcmp(o, i, len) != 0)) {
        ret = -EIO;
    }
    if (o != MAP_FAILED) {
        munmap(o, MAX(len, 1));
    }
    if (i != MAP_FAILED) {
        munmap(i, len + 512);
    }
    chan_close(&c);
    a->scalar_out[0] = ret == 0 ? len : 0;
    return uc_status(ret);
}

static int m_read_reg(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Xhci *x = ctx;
    GVariant *r = NULL, *data;
    const uint8_t *b;
    gsize n = 0;
    guint32 got = 0;
    Chan c;
    int ret;

    if (!is_dextlab_usb(x, a->scalar_in[0])) {
        return -ENODEV;
    }
    ret = chan_open(x, a->scalar_in[0], -1, &c);
    if (ret == 0) {
        ret = chan_call(&c, DEXT_MSG_USB_CONTROL,
                        g_variant_new("(yyqqqu@ay)", 0xc0,
                                      DEXTLAB_USB_REQ_READ_REG, 0,
                                      (guint16)MIN(a->scalar_in[1], 0xffff),
                                      4, 0u,
                                      g_variant_new_fixed_array(
                                          G_VARIANT_TYPE_BYTE, "", 0, 1)),
                        &r, NULL);
    }
    chan_close(&c);
    a->scalar_out[0] = 0;
    if (ret == 0) {
        g_variant_get(r, "(u@ay)", &got, &data);
        b = g_variant_get_fixed_array(data, &n, 1);
        if (got != 4 || n != 4) {
            ret = -EIO;
        } else {
            a->scalar_out[0] = b[0] | b[1] << 8 | b[2] << 16 |
                               (uint32_t)b[3] << 24;
        }
        g_variant_unref(data);
        g_variant_unref(r);
    }
    return uc_status(ret);
}

static int m_stats(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Xhci *x = ctx;
    DextXhciStats st;

    dext_xhci_stats(dext_usb_host_xhci(x->host), &st);
    a->scalar_out[0] = st.events;
    a->scalar_out[1] = st.irqs;
    a->scalar_out[2] = st.bad_events;
    a->scalar_out[3] = st.msix;
    return 0;
}

static const DextMethod methods[DXHCI_UC_COUNT] = {
    [DXHCI_UC_LIST] = { m_list, 0, 0, 1,
                        DXHCI_UC_MAX_DEVS * sizeof(DxhciUcDev), false },
    [DXHCI_UC_LOOPBACK] = { m_loopback, 3, 0, 1, 0, false },
    [DXHCI_UC_READ_REG] = { m_read_reg, 2, 0, 1, 0, false },
    [DXHCI_UC_STATS] = { m_stats, 0, 0, 4, 0, false },
};

static int xhci_new_user_client(DextService *svc, DextUserClient *uc)
{
    dext_user_client_set_dispatch(uc, methods, DXHCI_UC_COUNT, NULL,
                                  dext_service_get_priv(svc));
    return 0;
}

/* a client driver of one of our nubs connected (service queue) */
static int xhci_nub_client(DextService *svc, uint64_t nub,
                           uint64_t client_service, int fd)
{
    Xhci *x = dext_service_get_priv(svc);

    if (!x) {
        close(fd);
        return -ENODEV;
    }
    return dext_usb_provider_serve(x->prov, nub, fd);
}

/* its client crashed: port reset, the device published again */
static int xhci_nub_reset(DextService *svc, uint64_t nub)
{
    Xhci *x = dext_service_get_priv(svc);

    return x ? dext_usb_provider_reset(x->prov, nub) : -ENODEV;
}

static const DextClassOps xhci_class = {
    .name = "DextlabXhciDriver",
    .start = xhci_start,
    .stop = xhci_stop,
    .new_user_client = xhci_new_user_client,
    .nub_client = xhci_nub_client,
    .nub_reset = xhci_nub_reset,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &xhci_class, NULL };

    return dext_server_main(argc, argv, classes);
}
