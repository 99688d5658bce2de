/*
 * dextlab-xhci: the user-space xHCI host controller driver as a dext.
 *
 * Matched to every xHCI PCI function (class 0c0330).  Start opens the
 * function through libdext's PCI API, runs harness/usb's xHCI driver on
 * the libdext backend (BAR0 over IPC, DMA buffers prepared with DMA
 * commands, MSI-X as an interrupt dispatch source) and enumerates the
 * root ports.  A user client lists the devices and drives dextlab-usb
 * devices (loopback, registers) for apps and tests.
 *
 * Publishing one registry entry per USB device and interface for USB
 * client drivers needs runtime support (driver-published nubs, USB
 * objects over IPC) that does not exist yet; see docs/runtime/usb.md.
 */
#include <errno.h>
#include <string.h>

#include "dext/dext.h"
#include "dext/service.h"
#include "dext/pci.h"
#include "dext/userclient.h"
#include "dext/log.h"
#include "usb.h"
#include "xhci-dext.h"
#include "dextlab-xhci-uc.h"
#include "hw/dextlab/dextlab-usb-regs.h"

typedef struct LoopDev {
    DextUsbDevice *dev;
    DextUsbInterface *iface;
    DextUsbPipe *out, *in;
} LoopDev;

typedef struct Xhci {
    DextService *svc;
    DextPciDevice *pci;
    DextQueue *irq_q;
    DextUsbHost *host;
    DextUsbBuffer *ob, *ib;
    GHashTable *opened;        /* DextUsbDevice* -> LoopDev* */
} Xhci;

static void loopdev_free(gpointer p)
{
    LoopDev *l = p;

    if (dext_usb_device_attached(l->dev)) {
        dext_usb_interface_close(l->iface);
        dext_usb_device_close(l->dev);
    }
    dext_usb_device_unref(l->dev);
    g_free(l);
}

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
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);

    DEXT_INFO("usb: port %u %s: %04x:%04x speed %u",
                  dext_usb_device_port(d), attached ? "attached" : "detached",
                  dd->idVendor, dd->idProduct, dext_usb_device_speed(d));
}

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
    cfg.device_opaque = x;
    hw = dext_xhci_dext_new(x->pci, x->irq_q);
    ret = dext_usb_host_create_hw(&dext_xhci_dext_ops, hw, bar0, &cfg,
                                  &x->host);
    if (ret < 0) {
        goto fail_close;
    }
    if ((ret = dext_usb_buffer_alloc(x->host, DXHCI_UC_LOOP_MAX, &x->ob)) < 0 ||
        (ret = dext_usb_buffer_alloc(x->host, DXHCI_UC_LOOP_MAX, &x->ib)) < 0) {
        goto fail_host;
    }
    x->opened = g_hash_table_new_full(NULL, NULL, NULL, loopdev_free);
    dext_service_set_priv(svc, x);
    DEXT_INFO("xhci on %s: %u root ports, BAR0 %" G_GUINT64_FORMAT
                  " bytes", dext_pci_address(x->pci),
                  dext_xhci_num_ports(dext_usb_host_xhci(x->host)), bar0);
    return 0;

fail_host:
    dext_usb_buffer_free(x->ob);
    dext_usb_buffer_free(x->ib);
    dext_usb_host_destroy(x->host);
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
    g_hash_table_destroy(x->opened);
    dext_usb_buffer_free(x->ob);
    dext_usb_buffer_free(x->ib);
    dext_usb_host_destroy(x->host);
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

static int open_loop(Xhci *x, DextUsbDevice *d, LoopDev **out)
{
    LoopDev *l = g_hash_table_lookup(x->opened, d);
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);
    int ret;

    if (l) {
        *out = l;
        return 0;
    }
    if (dd->idVendor != DEXTLAB_USB_VID || dd->idProduct != DEXTLAB_USB_PID) {
        return -ENODEV;
    }
    l = g_new0(LoopDev, 1);
    l->dev = dext_usb_device_ref(d);
    if ((ret = dext_usb_device_open(d)) < 0) {
        dext_usb_device_unref(d);
        g_free(l);
        return ret;
    }
    if ((ret = dext_usb_device_set_configuration(d,
                                                 DEXTLAB_USB_CONFIG_VALUE)) < 0 ||
        !(l->iface = dext_usb_device_interface(d, DEXTLAB_USB_IFACE_NUM)) ||
        (ret = dext_usb_interface_open(l->iface)) < 0 ||
        (ret = dext_usb_interface_copy_pipe(l->iface, DEXTLAB_USB_EP_BULK_OUT,
                                            &l->out)) < 0 ||
        (ret = dext_usb_interface_copy_pipe(l->iface, DEXTLAB_USB_EP_BULK_IN,
                                            &l->in)) < 0) {
        dext_usb_device_close(d);
        dext_usb_device_unref(d);
        g_free(l);
        return ret < 0 ? ret : -ENODEV;
    }
    g_hash_table_insert(x->opened, d, l);
    *out = l;
    return 0;
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
    DextUsbDevice *d;
    LoopDev *l;
    uint8_t *o = dext_usb_buffer_data(x->ob), *i = dext_usb_buffer_data(x->ib);
    int ret;

    if (len > DXHCI_UC_LOOP_MAX || len > DEXTLAB_USB_FIFO_DEFAULT) {
        return -EINVAL;        /* one FIFO's worth per call */
    }
    if (!(d = dev_on_port(x, port))) {
        return -ENODEV;
    }
    ret = open_loop(x, d, &l);
    dext_usb_device_unref(d);
    if (ret < 0) {
        return ret;
    }
    for (uint64_t k = 0; k < len; k++) {
        o[k] = (uint8_t)((k * 2654435761u + seed) >> 11);
    }
    memset(i, 0, len);
    ret = dext_usb_pipe_io(l->out, x->ob, 0, len, &got, 5000);
    if (ret == 0 && got != len) {
        ret = -EIO;
    }
    if (ret == 0) {
        ret = dext_usb_pipe_io(l->in, x->ib, 0, len + 512, &got, 5000);
    }
    if (ret == 0 && (got != len || memcmp(o, i, len) != 0)) {
        ret = -EIO;
    }
    a->scalar_out[0] = ret == 0 ? len : 0;
    return uc_status(ret);
}

static int m_read_reg(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Xhci *x = ctx;
    DextUsbDevice *d = dev_on_port(x, a->scalar_in[0]);
    LoopDev *l;
    uint8_t b[4];
    uint32_t got = 0;
    int ret;

    if (!d) {
        return -ENODEV;
    }
    ret = open_loop(x, d, &l);
    if (ret == 0) {
        ret = dext_usb_device_control(d, 0xc0, DEXTLAB_USB_REQ_READ_REG, 0,
                                      (uint16_t)MIN(a->scalar_in[1], 0xffff),
                                      b, 4, &got, 0);
    }
    dext_usb_device_unref(d);
    if (ret == 0 && got != 4) {
        ret = -EIO;
    }
    a->scalar_out[0] = ret == 0 ? (b[0] | b[1] << 8 | b[2] << 16 |
                                   (uint32_t)b[3] << 24) : 0;
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

static const DextClassOps xhci_class = {
    .name = "DextlabXhciDriver",
    .start = xhci_start,
    .stop = xhci_stop,
    .new_user_client = xhci_new_user_client,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &xhci_class, NULL };

    return dext_server_main(argc, argv, classes);
}
