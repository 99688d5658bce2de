/*
 * libdext PCI device object and interrupt dispatch sources: thin RPCs to
 * dextd, which checks ownership and performs the access on its platform.
 *
 * BAR accesses take the direct MMIO channel instead when dextd granted one
 * (qtest platform with the dextlab fork, docs/runtime/platform.md): records
 * go straight to QEMU, dextd only opened the channel and may revoke it.
 * Ordering across the two paths is kept by hand: a SYNC on the channel
 * before any RPC about the device, an RPC SYNC before the first channel
 * access after a posted RPC write.
 */
#include "internal.h"
#include "fdsource.h"
#include "mmio-channel.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

struct DextPciDevice {
    DextService *svc;
    uint64_t id;                /* registry id of the nub */
    char addr[16];
    uint16_t vendor, device, subvendor, subdevice;
    uint32_t class_code;
    unsigned msix;
    gint open;

    GMutex chan_lock;           /* the fields below; one record in flight */
    int chan_fd;                /* direct MMIO channel, -1 none */
    bool chan_dead;             /* revoked or broken: -ENODEV until reopen */
    bool rpc_posted;            /* an RPC write may be outstanding */
    uint64_t chan_win[DEXT_MMIO_MAX_BARS];  /* bytes granted per BAR */
};

DextPciDevice *dext__pci_new(DextService *svc)
{
    uint64_t v;
    char *a = dext_service_provider_property(svc, "pci-address");
    if (!a) {
        return NULL;
    }
    DextPciDevice *d = g_new0(DextPciDevice, 1);
    d->svc = svc;
    d->id = svc->provider_id;
    /* g_variant_print quotes strings: 'xxxx' */
    g_strlcpy(d->addr, a[0] == '\'' ? a + 1 : a, sizeof(d->addr));
    char *q = strchr(d->addr, '\'');
    if (q) {
        *q = '\0';
    }
    g_free(a);
    d->vendor = dext_service_provider_u64(svc, "vendor-id", &v) == 0 ? v : 0xffff;
    d->device = dext_service_provider_u64(svc, "device-id", &v) == 0 ? v : 0xffff;
    d->subvendor = dext_service_provider_u64(svc, "subsystem-vendor-id", &v) == 0 ? v : 0;
    d->subdevice = dext_service_provider_u64(svc, "subsystem-id", &v) == 0 ? v : 0;
    d->class_code = dext_service_provider_u64(svc, "class-code", &v) == 0 ? v : 0;
    d->msix = dext_service_provider_u64(svc, "msix-vectors", &v) == 0 ? v : 0;
    g_mutex_init(&d->chan_lock);
    d->chan_fd = -1;
    return d;
}

/* ------------------------------------------------ direct MMIO channel */

/* Called with chan_lock held. */
static void chan_drop_locked(DextPciDevice *dev)
{
    if (dev->chan_fd >= 0) {
        close(dev->chan_fd);
    }
    dev->chan_fd = -1;
    dev->chan_dead = false;
    memset(dev->chan_win, 0, sizeof(dev->chan_win));
}

/* Ask dextd for a (new) channel; none (-ENOTSUP: another platform, an
 * older QEMU; or DEXT_NO_MMIO_CHANNEL set) leaves the RPC path. */
static void chan_acquire(DextPciDevice *dev)
{
    DextMsg r;
    int rc;

    g_mutex_lock(&dev->chan_lock);
    chan_drop_locked(dev);
    g_mutex_unlock(&dev->chan_lock);
    if (g_getenv("DEXT_NO_MMIO_CHANNEL")) {
        return;
    }
    rc = dext__rpc(DEXT_MSG_MMIO_CHANNEL, g_variant_new("(t)", (guint64)dev->id), false, &r);
    if (rc < 0) {
        DEXT_DEBUG("%s: no direct MMIO channel (%d): RPC path", dev->addr, rc);
        return;
    }
    GVariantIter *it;
    guint32 cid;
    guint64 w;
    unsigned i = 0;
    g_mutex_lock(&dev->chan_lock);
    g_variant_get(r.body, "(uat)", &cid, &it);
    while (g_variant_iter_next(it, "t", &w)) {
        if (i < DEXT_MMIO_MAX_BARS) {
            dev->chan_win[i++] = w;
        }
    }
    g_variant_iter_free(it);
    dev->chan_fd = dext_msg_take_fd(&r, 0);
    if (dev->chan_fd >= 0) {
        /* a WRITE is one send: bounded like an RPC, so a QEMU that stops
         * reading fails the access (-ENODEV) instead of blocking it */
        struct timeval tv = { .tv_sec = DEXT_IPC_TIMEOUT_MS / 1000,
                              .tv_usec = (DEXT_IPC_TIMEOUT_MS % 1000) * 1000 };
        setsockopt(dev->chan_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    g_mutex_unlock(&dev->chan_lock);
    dext_msg_clear(&r);
}

/* One record and, for READ/SYNC, its reply, bounded like a dextd RPC.
 * Called with chan_lock held and a live channel. */
static int chan_xfer_locked(DextPciDevice *dev, const DextMmioReq *q, uint64_t *val)
{
    DextMmioResp resp;
    ssize_t n;

    do {
        n = send(dev->chan_fd, q, sizeof(*q), MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof(*q)) {
        goto dead;                      /* EPIPE: revoked; nothing else fits */
    }
    if (q->op == DEXT_MMIO_OP_WRITE) {
        return 0;
    }
    gint64 end = g_get_monotonic_time() + (gint64)DEXT_IPC_TIMEOUT_MS * 1000;
    for (;;) {
        struct pollfd pfd = { .fd = dev->chan_fd, .events = POLLIN };
        gint64 left = (end - g_get_monotonic_time()) / 1000;
        int pr = left > 0 ? poll(&pfd, 1, (int)left) : 0;
        if (pr < 0 && errno == EINTR) {
            continue;
        }
        if (pr <= 0) {
            goto dead;                  /* a stuck QEMU: fail fast from now */
        }
        n = recv(dev->chan_fd, &resp, sizeof(resp), 0);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        break;
    }
    if (n != (ssize_t)sizeof(resp)) {
        goto dead;                      /* EOF: revoked */
    }
    if (resp.status < 0) {
        return resp.status;             /* -EFAULT/-EINVAL/-EIO: this access */
    }
    if (val) {
        *val = resp.val;
    }
    return 0;

dead:
    DEXT_DEBUG("%s: direct MMIO channel lost", dev->addr);
    dev->chan_dead = true;
    return -ENODEV;
}

/* Everything sent on the channel has been performed (before an RPC about
 * the device that must come after it).  0 without a channel. */
static int chan_sync(DextPciDevice *dev)
{
    DextMmioReq q = { .op = DEXT_MMIO_OP_SYNC };
    int rc = 0;

    g_mutex_lock(&dev->chan_lock);
    if (dev->chan_dead) {
        rc = -ENODEV;
    } else if (dev->chan_fd >= 0) {
        rc = chan_xfer_locked(dev, &q, NULL);
    }
    g_mutex_unlock(&dev->chan_lock);
    return rc;
}

/*
 * BAR access through the channel.  Returns 1 when the access is not the
 * channel's (none, or outside the granted window: the RPC path does it and
 * dextd checks it), else 0 or -errno.
 */
static int chan_access(DextPciDevice *dev, uint8_t op, uint8_t bar, uint64_t off, unsigned w,
                       uint64_t *val)
{
    DextMmioReq q = { .op = op, .size = w, .bar = bar, .off = off, .val = *val };
    int rc;

    g_mutex_lock(&dev->chan_lock);
    if (dev->chan_dead) {
        rc = -ENODEV;
    } else if (dev->chan_fd < 0 || bar >= DEXT_MMIO_MAX_BARS || off >= dev->chan_win[bar] ||
               w > dev->chan_win[bar] - off) {
        rc = 1;
    } else {
        rc = 0;
        if (dev->rpc_posted) {
            /* an earlier posted RPC write must land first */
            rc = dext__rpc(DEXT_MSG_SYNC, NULL, false, NULL);
            dev->rpc_posted = rc < 0;
        }
        if (rc == 0) {
            rc = chan_xfer_locked(dev, &q, val);
        }
    }
    g_mutex_unlock(&dev->chan_lock);
    return rc;
}

void dext__pci_free(DextPciDevice *dev)
{
    g_mutex_lock(&dev->chan_lock);
    chan_drop_locked(dev);
    g_mutex_unlock(&dev->chan_lock);
    g_mutex_clear(&dev->chan_lock);
    g_free(dev);
}

bool dext__pci_is_open(const DextPciDevice *dev)
{
    return g_atomic_int_get((gint *)&dev->open);
}

int dext_pci_open(DextPciDevice *dev)
{
    if (!dev) {
        return -EINVAL;
    }
    int rc = dext__rpc(DEXT_MSG_PCI_OPEN, g_variant_new("(t)", (guint64)dev->id), false, NULL);
    if (rc == 0) {
        chan_acquire(dev);
        g_atomic_int_set(&dev->open, 1);
    }
    return rc;
}

int dext_pci_close(DextPciDevice *dev)
{
    if (!dev) {
        return -EINVAL;
    }
    g_atomic_int_set(&dev->open, 0);
    chan_sync(dev);                     /* what was written lands first */
    g_mutex_lock(&dev->chan_lock);
    chan_drop_locked(dev);
    g_mutex_unlock(&dev->chan_lock);
    return dext__rpc(DEXT_MSG_PCI_CLOSE, g_variant_new("(t)", (guint64)dev->id), false, NULL);
}

static int cfg_read(DextPciDevice *dev, uint16_t off, unsigned w, uint32_t *val)
{
    DextMsg r;
    if (!dev || !val) {
        return -EINVAL;
    }
    int rc = chan_sync(dev);
    if (rc < 0) {
        return rc;
    }
    rc = dext__rpc(DEXT_MSG_CFG_READ, g_variant_new("(tqy)", (guint64)dev->id, off, w),
                       false, &r);
    if (rc == 0) {
        g_variant_get(r.body, "(u)", val);
        dext_msg_clear(&r);
    }
    return rc;
}

static int cfg_write(DextPciDevice *dev, uint16_t off, unsigned w, uint32_t val)
{
    if (!dev) {
        return -EINVAL;
    }
    int rc = chan_sync(dev);
    if (rc < 0) {
        return rc;
    }
    return dext__rpc(DEXT_MSG_CFG_WRITE, g_variant_new("(tqyu)", (guint64)dev->id, off, w, val),
                     false, NULL);
}

int dext_pci_config_read8(DextPciDevice *dev, uint16_t off, uint8_t *val)
{
    uint32_t v = 0;
    int rc = cfg_read(dev, off, 1, &v);
    if (rc == 0) {
        *val = v;
    }
    return rc;
}

int dext_pci_config_read16(DextPciDevice *dev, uint16_t off, uint16_t *val)
{
    uint32_t v = 0;
    int rc = cfg_read(dev, off, 2, &v);
    if (rc == 0) {
        *val = v;
    }
    return rc;
}

int dext_pci_config_read32(DextPciDevice *dev, uint16_t off, uint32_t *val)
{
    return cfg_read(dev, off, 4, val);
}

int dext_pci_config_write8(DextPciDevice *dev, uint16_t off, uint8_t val)
{
    return cfg_write(dev, off, 1, val);
}

int dext_pci_config_write16(DextPciDevice *dev, uint16_t off, uint16_t val)
{
    return cfg_write(dev, off, 2, val);
}

int dext_pci_config_write32(DextPciDevice *dev, uint16_t off, uint32_t val)
{
    return cfg_write(dev, off, 4, val);
}

static int mem_read(DextPciDevice *dev, uint8_t bar, uint64_t off, unsigned w, uint64_t *val)
{
    DextMsg r;
    if (!dev || !val) {
        return -EINVAL;
    }
    uint64_t v0 = 0;
    int rc = chan_access(dev, DEXT_MMIO_OP_READ, bar, off, w, &v0);
    if (rc <= 0) {
        if (rc == 0) {
            *val = v0;
        }
        return rc;
    }
    if ((rc = chan_sync(dev)) < 0) {
        return rc;
    }
    rc = dext__rpc(DEXT_MSG_MMIO_READ,
                       g_variant_new("(tyty)", (guint64)dev->id, bar, (guint64)off, w), false, &r);
    if (rc == 0) {
        guint64 v;
        g_variant_get(r.body, "(t)", &v);
        *val = v;
        dext_msg_clear(&r);
    }
    return rc;
}

static int mem_write(DextPciDevice *dev, uint8_t bar, uint64_t off, unsigned w, uint64_t val)
{
    if (!dev) {
        return -EINVAL;
    }
    if (!dext__pci_is_open(dev)) {
        return -ENOTCONN; /* posted: catch the obvious misuse locally */
    }
    int rc = chan_access(dev, DEXT_MMIO_OP_WRITE, bar, off, w, &val);
    if (rc <= 0) {
        return rc;
    }
    if ((rc = chan_sync(dev)) < 0) {
        return rc;
    }
    /* posted over RPC: a later channel access waits for it (rpc_posted) */
    g_mutex_lock(&dev->chan_lock);
    rc = dext__rpc(DEXT_MSG_MMIO_WRITE,
                   g_variant_new("(tytyt)", (guint64)dev->id, bar, (guint64)off, w,
                                 (guint64)val), true, NULL);
    dev->rpc_posted |= rc == 0 && dev->chan_fd >= 0;
    g_mutex_unlock(&dev->chan_lock);
    return rc;
}

#define READ_FN(bits, type) \
    int dext_pci_memory_read##bits(DextPciDevice *dev, uint8_t bar, uint64_t off, type *val) \
    { \
        uint64_t v = 0; \
        int rc = mem_read(dev, bar, off, bits / 8, &v); \
        if (rc == 0) { \
            *val = (type)v; \
        } \
        return rc; \
    } \
    int dext_pci_memory_write##bits(DextPciDevice *dev, uint8_t bar, uint64_t off, type val) \
    { \
        return mem_write(dev, bar, off, bits / 8, val); \
    }
READ_FN(8, uint8_t)
READ_FN(16, uint16_t)
READ_FN(32, uint32_t)
READ_FN(64, uint64_t)

int dext_pci_flush(DextPciDevice *dev)
{
    int rc = dev ? chan_sync(dev) : 0;
    if (rc < 0) {
        return rc;
    }
    return dext__rpc(DEXT_MSG_SYNC, NULL, false, NULL);
}

int dext_pci_find_capability(DextPciDevice *dev, uint16_t id, bool extended, uint16_t *off)
{
    int rc;
    if (!extended) {
        uint16_t status;
        uint8_t ptr;
        if ((rc = dext_pci_config_read16(dev, 0x06, &status)) < 0) {
            return rc;
        }
        if (!(status & 0x10)) {
            return -ENOENT;
        }
        if ((rc = dext_pci_config_read8(dev, 0x34, &ptr)) < 0) {
            return rc;
        }
        /* At most 48 capabilities fit in 256 bytes: bounds a looped list. */
        for (int i = 0; i < 48 && ptr >= 0x40; i++) {
            uint8_t cid, next;
            ptr &= ~3;
            if ((rc = dext_pci_config_read8(dev, ptr, &cid)) < 0 ||
                (rc = dext_pci_config_read8(dev, ptr + 1, &next)) < 0) {
                return rc;
            }
            if (cid == id) {
                *off = ptr;
                return 0;
            }
            ptr = next;
        }
        return -ENOENT;
    }
    uint16_t pos = 0x100;
    for (int i = 0; i < 960 && pos >= 0x100; i++) {
        uint32_t hdr;
        if ((rc = dext_pci_config_read32(dev, pos, &hdr)) < 0) {
            return rc == -ERANGE ? -ENOENT : rc;
        }
        if (hdr == 0 || hdr == 0xffffffff) {
            return -ENOENT;
        }
        if ((hdr & 0xffff) == id) {
            *off = pos;
            return 0;
        }
        pos = (hdr >> 20) & ~3u;
    }
    return -ENOENT;
}

static int set_cmd_bit(DextPciDevice *dev, uint16_t bit, bool on)
{
    uint16_t cmd;
    int rc = dext_pci_config_read16(dev, 0x04, &cmd);
    if (rc < 0) {
        return rc;
    }
    cmd = on ? (cmd | bit) : (cmd & ~bit);
    return dext_pci_config_write16(dev, 0x04, cmd);
}

int dext_pci_set_memory_enable(DextPciDevice *dev, bool on)
{
    return set_cmd_bit(dev, 0x2, on);
}

int dext_pci_set_bus_master_enable(DextPciDevice *dev, bool on)
{
    return set_cmd_bit(dev, 0x4, on);
}

int dext_pci_reset(DextPciDevice *dev)
{
    if (!dev) {
        return -EINVAL;
    }
    int rc = chan_sync(dev);
    if (rc < 0 && rc != -ENODEV) {
        return rc;
    }
    /* dextd revokes the channel for the reset: a fresh one afterwards */
    rc = dext__rpc(DEXT_MSG_RESET, g_variant_new("(tu)", (guint64)dev->id, 0), false, NULL);
    if (rc == 0 && dext__pci_is_open(dev)) {
        chan_acquire(dev);
    }
    return rc;
}

void dext_pci_get_ids(const DextPciDevice *dev, uint16_t *vendor, uint16_t *device,
                      uint16_t *subvendor, uint16_t *subdevice, uint32_t *class_code)
{
    if (vendor) *vendor = dev->vendor;
    if (device) *device = dev->device;
    if (subvendor) *subvendor = dev->subvendor;
    if (subdevice) *subdevice = dev->subdevice;
    if (class_code) *class_code = dev->class_code;
}

const char *dext_pci_address(const DextPciDevice *dev)
{
    return dev->addr;
}

unsigned dext_pci_msix_count(DextPciDevice *dev)
{
    return dev->msix;
}

int dext_platform_interrupt_stats(uint64_t *received, uint64_t *last_ns)
{
    DextMsg r;
    int rc = dext__rpc(DEXT_MSG_IRQ_STATS, NULL, false, &r);
    if (rc == 0) {
        guint64 a, b;
        g_variant_get(r.body, "(tt)", &a, &b);
        if (received) {
            *received = a;
        }
        if (last_ns) {
            *last_ns = b;
        }
        dext_msg_clear(&r);
    }
    return rc;
}

struct DextInterruptSource {
    DextPciDevice *dev;
    unsigned vector;
    DextFdSource *src;
};

int dext_interrupt_source_create(DextPciDevice *dev, unsigned vector, DextQueue *q,
                                 DextEventHandler handler, void *ctx,
                                 DextInterruptSource **out)
{
    DextMsg r;
    if (!dev || !q || !handler || !out) {
        return -EINVAL;
    }
    int rc = dext__rpc(DEXT_MSG_IRQ_BIND, g_variant_new("(tu)", (guint64)dev->id, vector),
                       false, &r);
    if (rc < 0) {
        return rc;
    }
    int fd = dext_msg_take_fd(&r, 0);
    dext_msg_clear(&r);
    DextInterruptSource *s = g_new0(DextInterruptSource, 1);
    s->dev = dev;
    s->vector = vector;
    char name[16];
    g_snprintf(name, sizeof(name), "dext-irq%u", vector);
    rc = dext_fd_source_create(name, fd, q, handler, ctx, &s->src);
    if (rc < 0) {
        close(fd);
        dext__rpc(DEXT_MSG_IRQ_UNBIND, g_variant_new("(tu)", (guint64)dev->id, vector), false,
                  NULL);
        g_free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void dext_interrupt_source_set_enabled(DextInterruptSource *s, bool on)
{
    dext_fd_source_set_enabled(s->src, on);
}

void dext_interrupt_source_destroy(DextInterruptSource *s)
{
    if (!s) {
        return;
    }
    dext__rpc(DEXT_MSG_IRQ_UNBIND, g_variant_new("(tu)", (guint64)s->dev->id, s->vector), false,
              NULL);
    dext_fd_source_destroy(s->src);
    g_free(s);
}
