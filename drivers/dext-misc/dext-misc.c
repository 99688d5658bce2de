/*
 * dext-misc: small drivers for the runtime's failure paths, one source
 * built as three bundles:
 *   dext-failstart  FailStartDriver: opens its device, takes resources
 *                   (bus mastering, a DMA buffer, an MSI-X vector), then
 *                   fails Start with -ENODEV; dextd must release everything.
 *   dext-crash      CrashDriver: starts, takes the same resources, then
 *                   crashes (SIGSEGV) from a timer 200 ms later; dextd must
 *                   release, relaunch with backoff, and finally give up.
 *   dext-unentitled UnentitledDriver: claims the dextlab-dma device with a
 *                   high score but has no entitlement for it; dextd must
 *                   refuse it (it must never start).
 */
#include <dext/dext.h>
#include <errno.h>
#include <signal.h>
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

static void nop_stop(DextService *svc)
{
}

static const DextClassOps failstart = { "FailStartDriver", failstart_start, nop_stop, NULL };
static const DextClassOps crash = { "CrashDriver", crash_start, nop_stop, NULL };
static const DextClassOps unentitled = { "UnentitledDriver", unentitled_start, nop_stop, NULL };

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &failstart, &crash, &unentitled, NULL };
    return dext_server_main(argc, argv, classes);
}
