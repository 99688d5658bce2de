/*
 * dext-misc: small drivers for the runtime's failure paths, one source
 * built as four bundles:
 *   dext-failstart  FailStartDriver: opens its device, takes resources
 *                   (bus mastering, a DMA buffer, an MSI-X vector), then
 *                   fails Start with -ENODEV; dextd must release everything.
 *   dext-crash      CrashDriver: starts, takes the same resources, then
 *                   crashes (SIGSEGV) from a timer 200 ms later; dextd must
 *                   release, relaunch with backoff, and finally give up.
 *   dext-unentitled UnentitledDriver: claims the dextlab-dma device with a
 *                   high score but has no entitlement for it; dextd must
 *                   refuse it (it must never start).
 *   dext-rawrpc     RawRpcDriver: bound to a PCIe root port, writes raw
 *                   bytes on its device-access channel (unknown and
 *                   malformed messages, a foreign device, a protected
 *                   register) and checks dextd answers each with an error
 *                   and keeps serving; then sends unframeable bytes, after
 *                   which dextd must drop that channel and nothing else.
 */
#include <dext/dext.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ipc.h"
#include <glib.h>
#include <stdlib.h>

typedef struct {
    DextBuffer *buf;
    DextInterruptSource *irq;
    DextTimerSource *timer;
    DextQueue *q;
} Res;

static void nop_irq(void *ctx, uint64_t count, uint64_t time)
{
}

static int take_resources(DextService *svc, Res *r)
{
    DextPciDevice *p = dext_service_pci(svc);
    int rc;
    if (!p) {
        return -ENODEV;
    }
    if ((rc = dext_pci_open(p)) < 0) {
        return rc;
    }
    if ((rc = dext_pci_set_memory_enable(p, true)) < 0 ||
        (rc = dext_pci_set_bus_master_enable(p, true)) < 0 ||
        (rc = dext_buffer_create(DEXT_DMA_INOUT, 65536, 0, &r->buf)) < 0 ||
        (rc = dext_queue_create("misc.irq", &r->q)) < 0) {
        return rc;
    }
    if (dext_pci_msix_count(p) > 0 &&
        (rc = dext_interrupt_source_create(p, 0, r->q, nop_irq, NULL, &r->irq)) < 0) {
        return rc;
    }
    return 0;
}

static int failstart_start(DextService *svc)
{
    static Res r;
    int rc = take_resources(svc, &r);
    DEXT_INFO("took resources (rc %d); now refusing the device", rc);
    /* Deliberately leave them for dextd to reclaim: that is what is tested. */
    return -ENODEV;
}

static void crash_now(void *ctx, uint64_t count, uint64_t time)
{
    DEXT_WARN("crashing on purpose");
    raise(SIGSEGV);
}

static int crash_start(DextService *svc)
{
    Res *r = g_new0(Res, 1);
    int rc = take_resources(svc, r);
    if (rc < 0) {
        return rc;
    }
    if ((rc = dext_timer_source_create(r->q, crash_now, NULL, &r->timer)) < 0) {
        return rc;
    }
    dext_service_set_priv(svc, r);
    return dext_timer_source_arm(r->timer, 200 * 1000000ull, 0);
}

static int unentitled_start(DextService *svc)
{
    DEXT_ERROR("an unentitled driver was started: the runtime let it through");
    abort();
}

/* Raw request on the RPC channel (fd 4); returns the ERROR reply's errno,
 * 0 for a normal reply, or a transport error. */
static int raw_rpc(const void *buf, size_t len)
{
    DextMsg r;
    if (send(4, buf, len, MSG_NOSIGNAL) != (ssize_t)len) {
        return -EPIPE;
    }
    int rc = dext_ipc_recv(4, DEXT_CH_RPC, &r, 5000, NULL);
    if (rc < 0) {
        return rc;
    }
    int err = 0;
    if (r.type == DEXT_MSG_ERROR) {
        gint32 e;
        g_variant_get(r.body, "(i&s)", &e, NULL);
        err = e;
    }
    dext_msg_clear(&r);
    return err;
}

static int encode(uint16_t type, GVariant *body, uint8_t *buf)
{
    DextMsg m;
    dext_msg_init(&m, type, body);
    m.serial = 0x4000;
    int n = (int)dext_msg_encode(&m, buf, DEXT_IPC_MAX_MSG);
    dext_msg_clear(&m);
    return n;
}

static int rawrpc_start(DextService *svc)
{
    static uint8_t buf[DEXT_IPC_MAX_MSG];
    DextPciDevice *p = dext_service_pci(svc);
    int fails = 0, rc;
    uint16_t vid;

    /* Only the first root port: the last step below costs this process its
     * device-access channel, so other ports are refused up front. */
    if (!p || strcmp(dext_pci_address(p), "0000:00:01.0")) {
        return -ENODEV;
    }
    if (dext_pci_open(p) < 0) {
        return -ENODEV;
    }
    /* 1: a well-framed message of unknown type */
    int n = encode(DEXT_MSG_SYNC, NULL, buf);
    buf[6] = 0xee;      /* type 0x7eee: far from the catalogue (0x77 became */
    buf[7] = 0x7e;      /* USB_BUFFER_FREE, refused for its channel instead) */
    rc = raw_rpc(buf, n);
    fails += rc != -EOPNOTSUPP;
    DEXT_INFO("rawrpc: unknown type -> %d", rc);
    /* 2: a body that is not its type's */
    n = encode(DEXT_MSG_SYNC, NULL, buf);
    buf[6] = DEXT_MSG_CFG_READ;
    rc = raw_rpc(buf, n);
    fails += rc != -EBADMSG;
    DEXT_INFO("rawrpc: wrong body -> %d", rc);
    /* 3: someone else's device (id 1 is the registry root) */
    n = encode(DEXT_MSG_CFG_READ, g_variant_new("(tqy)", (guint64)1, 0, 4), buf);
    rc = raw_rpc(buf, n);
    fails += rc != -ENODEV;
    DEXT_INFO("rawrpc: foreign device -> %d", rc);
    /* 4: the runtime's registers */
    rc = dext_pci_config_write32(p, 0x10, 0xffffffff);
    fails += rc != -EPERM;
    DEXT_INFO("rawrpc: BAR write -> %d", rc);
    /* switching the bridge's decode off would cut off the devices behind it */
    rc = dext_pci_set_memory_enable(p, false);
    fails += rc != -EPERM;
    DEXT_INFO("rawrpc: bridge decode off -> %d", rc);
    /* 5: after all that, normal service */
    rc = dext_pci_config_read16(p, 0, &vid);
    fails += rc != 0 || vid != 0x1b36;
    DEXT_INFO("rawrpc: config read -> %d (vendor 0x%x)", rc, vid);
    if (fails) {
        DEXT_ERROR("rawrpc: %d checks failed", fails);
        return -EPROTO;
    }
    /* 6: unframeable bytes: dextd must drop this channel */
    rc = raw_rpc("junk", 4);
    DEXT_INFO("rawrpc: unframeable -> %d", rc);
    DEXT_INFO("rawrpc checks passed");
    return 0;
}

static void nop_stop(DextService *svc)
{
}

static const DextClassOps failstart = { "FailStartDriver", failstart_start, nop_stop, NULL };
static const DextClassOps crash = { "CrashDriver", crash_start, nop_stop, NULL };
static const DextClassOps unentitled = { "UnentitledDriver", unentitled_start, nop_stop, NULL };
static const DextClassOps rawrpc = { "RawRpcDriver", rawrpc_start, nop_stop, NULL };

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &failstart, &crash, &unentitled, &rawrpc,
                                                   NULL };
    return dext_server_main(argc, argv, classes);
}
