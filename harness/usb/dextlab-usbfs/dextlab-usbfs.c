/*
 * dextlab-usbfs: the USB publisher inside a Linux guest, as a dext.
 *
 * The same job as dextlab-xhci (harness/usb/dextlab-xhci) on the qtest
 * platform, with the same provider code (harness/usb/usb-provider.c), but
 * over the family API's usbfs implementation (usb-usbfs.c): the guest
 * kernel's xhci_hcd owns the controller, so this driver never opens the
 * PCI function.  dextd (--platform vfio) lists the xHCI function although
 * it is not bound to vfio-pci ($DEXT_VFIO_KERNEL_OWNED, harness/platform/
 * platform.h): every access to it is refused, matching works.  Start reads
 * from sysfs which USB buses hang off that function (its usbN children)
 * and publishes the devices on those buses only: a device nub per device
 * and an interface nub per interface (docs/runtime/nubs.md).  Client
 * drivers get provider channels (nub_client), and a crashed client's
 * device gets a port reset through usbfs (nub_reset ->
 * dext_usb_provider_reset -> dext_usb_device_reset_port: detached, reset,
 * enumerated and published again).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dext/dext.h"
#include "dext/service.h"
#include "dext/pci.h"
#include "dext/log.h"
#include "usb.h"
#include "usb-provider.h"

typedef struct Usbfs {
    DextService *svc;
    char *bdf;
    uint64_t buses[4];          /* bit N: USB bus N is below our function */
    DextUsbHost *host;
    DextUsbProvider *prov;
    /* For NUB_RESET's answer: nub -> device port (published here), and a
     * detach generation per port (bumped once the provider terminated the
     * device's nubs); lock + cond. */
    GMutex lock;
    GCond cond;
    GHashTable *nub_port;       /* guint64 nub -> port */
    GHashTable *detached;       /* port -> generation */
} Usbfs;

/* the port a nub belongs to (its device's), 0 if unknown */
static unsigned nub_port(Usbfs *u, uint64_t nub)
{
    unsigned port;

    g_mutex_lock(&u->lock);
    port = GPOINTER_TO_UINT(g_hash_table_lookup(u->nub_port, &nub));
    g_mutex_unlock(&u->lock);
    return port;
}

/* usbfs numbers buses 1..255: port = busnum << 8 | devnum (usb.h) */
static bool ours(const Usbfs *u, DextUsbDevice *d)
{
    unsigned bus = dext_usb_device_port(d) >> 8;

    return bus < 256 && (u->buses[bus / 64] >> (bus % 64) & 1);
}

/* The root hubs below the PCI function: /sys/bus/pci/devices/BDF/usbN.
 * How many were found, or -errno. */
static int find_buses(Usbfs *u, const char *sysfs)
{
    g_autofree char *dir = g_strdup_printf("%s/bus/pci/devices/%s", sysfs,
                                           u->bdf);
    GDir *d = g_dir_open(dir, 0, NULL);
    const char *n;
    int found = 0;

    if (!d) {
        return -ENODEV;
    }
    while ((n = g_dir_read_name(d))) {
        char *end;
        unsigned long bus;

        if (strncmp(n, "usb", 3) || !g_ascii_isdigit(n[3])) {
            continue;
        }
        bus = strtoul(n + 3, &end, 10);
        if (*end || bus == 0 || bus > 255) {
            continue;
        }
        u->buses[bus / 64] |= 1ull << (bus % 64);
        found++;
    }
    g_dir_close(d);
    return found;
}

static void usb_event(void *opaque, DextUsbDevice *d, bool attached)
{
    Usbfs *u = opaque;
    const DextUsbDeviceDesc *dd = dext_usb_device_descriptor(d);

    if (!ours(u, d)) {
        return;        /* another controller's bus: not published by us */
    }
    DEXT_INFO("usb: bus %u dev %u %s: %04x:%04x speed %u",
              dext_usb_device_port(d) >> 8, dext_usb_device_port(d) & 0xff,
              attached ? "attached" : "detached", dd->idVendor,
              dd->idProduct, dext_usb_device_speed(d));
    dext_usb_provider_device_fn(u->prov, d, attached);
    if (!attached) {
        /* the device's nubs are terminated now */
        unsigned port = dext_usb_device_port(d);

        g_mutex_lock(&u->lock);
        g_hash_table_insert(u->detached, GUINT_TO_POINTER(port),
                            GUINT_TO_POINTER(GPOINTER_TO_UINT(
                                g_hash_table_lookup(u->detached,
                                                    GUINT_TO_POINTER(port))) + 1));
        g_cond_broadcast(&u->cond);
        g_mutex_unlock(&u->lock);
    }
}

static int pub_nub(void *opaque, uint64_t parent, const char *name,
                   const char *io_class, const char *props, uint64_t *nub)
{
    Usbfs *u = opaque;
    int ret = dext_service_publish_nub(u->svc, parent, name, io_class, props,
                                       nub);

    if (ret == 0) {
        /* device nubs are "usb@<port>", interface nubs their children */
        unsigned port = parent ? nub_port(u, parent)
                               : (unsigned)strtoul(name + 4, NULL, 10);

        guint64 *key = g_new(guint64, 1);

        *key = *nub;
        g_mutex_lock(&u->lock);
        g_hash_table_insert(u->nub_port, key, GUINT_TO_POINTER(port));
        g_mutex_unlock(&u->lock);
        DEXT_INFO("published %s (%s) as nub %" G_GUINT64_FORMAT, name,
                  io_class, *nub);
    } else {
        DEXT_ERROR("publishing %s (%s): %s", name, io_class, g_strerror(-ret));
    }
    return ret;
}

static int term_nub(void *opaque, uint64_t nub)
{
    return dext_service_terminate_nub(((Usbfs *)opaque)->svc, nub);
}

static const DextUsbProviderOps prov_ops = {
    .publish = pub_nub,
    .terminate = term_nub,
};

static void usbfs_free(Usbfs *u)
{
    g_hash_table_destroy(u->nub_port);
    g_hash_table_destroy(u->detached);
    g_mutex_clear(&u->lock);
    g_cond_clear(&u->cond);
    g_free(u->bdf);
    g_free(u);
}

static int usbfs_start(DextService *svc)
{
    Usbfs *u = g_new0(Usbfs, 1);
    DextUsbHostConfig cfg = { .device_fn = usb_event };
    const char *sysfs = g_getenv("DEXT_USBFS_SYSFS");  /* tests: a fake root */
    DextPciDevice *pci = dext_service_pci(svc);
    int ret;

    u->svc = svc;
    g_mutex_init(&u->lock);
    g_cond_init(&u->cond);
    u->nub_port = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
                                        NULL);
    u->detached = g_hash_table_new(NULL, NULL);
    if (!sysfs) {
        sysfs = "/sys";
    }
    /* the address only: the function is the kernel's, never opened */
    if (!pci || !dext_pci_address(pci)) {
        ret = -ENODEV;
        goto fail;
    }
    u->bdf = g_strdup(dext_pci_address(pci));
    ret = find_buses(u, sysfs);
    if (ret <= 0) {
        DEXT_ERROR("%s: no USB bus below it in %s (is xhci_hcd bound?)",
                   u->bdf, sysfs);
        ret = ret < 0 ? ret : -ENODEV;
        goto fail;
    }
    if ((ret = dext_usb_provider_create(&prov_ops, u, &u->prov)) < 0) {
        goto fail;
    }
    cfg.device_opaque = u;
    cfg.xhci.timeout_ms = 5000;
    /* before the host: nub_client may come as soon as a nub is out */
    dext_service_set_priv(svc, u);
    {
        g_autofree char *dev = g_strdup_printf("%s/bus/usb/devices", sysfs);
        const char *devroot = g_getenv("DEXT_USBFS_DEVROOT");

        ret = dext_usb_host_create_usbfs(devroot, dev, &cfg, &u->host);
    }
    if (ret < 0) {
        goto fail_prov;
    }
    dext_usb_provider_set_host(u->prov, u->host);
    DEXT_INFO("usbfs provider for %s: %d USB bus(es) below it, devices "
              "published from the hub thread", u->bdf, find_buses(u, sysfs));
    return 0;

fail_prov:
    dext_service_set_priv(svc, NULL);
    dext_usb_provider_destroy(u->prov);
fail:
    DEXT_ERROR("start failed: %s", g_strerror(-ret));
    usbfs_free(u);
    return ret;
}

static void usbfs_stop(DextService *svc)
{
    Usbfs *u = dext_service_get_priv(svc);

    if (!u) {
        return;
    }
    /* channels first, then the devices (dextd terminated our nubs
     * already: claims released, fds closed), then the provider */
    dext_usb_provider_shutdown(u->prov);
    dext_usb_host_destroy(u->host);
    dext_usb_provider_destroy(u->prov);
    dext_service_set_priv(svc, NULL);
    usbfs_free(u);
}

/* a client driver of one of our nubs connected (service queue) */
static int usbfs_nub_client(DextService *svc, uint64_t nub,
                            uint64_t client_service, int fd)
{
    Usbfs *u = dext_service_get_priv(svc);

    if (!u) {
        close(fd);
        return -ENODEV;
    }
    return dext_usb_provider_serve(u->prov, nub, fd);
}

/*
 * Its client crashed: port reset through usbfs, the device published
 * again (new nubs).  The reset runs on the usbfs hub thread; the answer
 * waits (bounded) until the detach terminated the old nubs, so dextd,
 * which relaunches the client once NUB_RESET is answered, finds them
 * terminating and matches the client to the new ones only (without the
 * wait a relaunched client could Start on the old nub and fail -ENODEV).
 */
static int usbfs_nub_reset(DextService *svc, uint64_t nub)
{
    Usbfs *u = dext_service_get_priv(svc);
    gint64 end = g_get_monotonic_time() + 5 * G_USEC_PER_SEC;
    unsigned port, gen;
    bool waited = true;
    int ret;

    if (!u) {
        return -ENODEV;
    }
    port = nub_port(u, nub);
    g_mutex_lock(&u->lock);
    gen = GPOINTER_TO_UINT(g_hash_table_lookup(u->detached,
                                               GUINT_TO_POINTER(port)));
    g_mutex_unlock(&u->lock);
    ret = dext_usb_provider_reset(u->prov, nub);
    if (ret == 0 && port) {
        g_mutex_lock(&u->lock);
        while (GPOINTER_TO_UINT(g_hash_table_lookup(u->detached,
                                    GUINT_TO_POINTER(port))) == gen) {
            if (!g_cond_wait_until(&u->cond, &u->lock, end)) {
                waited = false;
                break;
            }
        }
        g_mutex_unlock(&u->lock);
    }
    DEXT_INFO("NUB_RESET of nub %" G_GUINT64_FORMAT ": port reset %s%s", nub,
              ret < 0 ? g_strerror(-ret) : "queued",
              ret == 0 && !waited ? " (old nubs not terminated within 5 s)"
                                  : "");
    return ret;
}

static const DextClassOps usbfs_class = {
    .name = "DextlabUsbfsDriver",
    .start = usbfs_start,
    .stop = usbfs_stop,
    .nub_client = usbfs_nub_client,
    .nub_reset = usbfs_nub_reset,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &usbfs_class, NULL };

    return dext_server_main(argc, argv, classes);
}
