/*
 * dext-hostile-dma: the reliability tests' driver for the dextlab-dma
 * device.  It does real DMA copies for an app that shares the source and
 * destination buffers (so the app verifies every copy it was told
 * succeeded), and misbehaves on request so the tests can check dextd's
 * crash and hang handling:
 *   - files in $DEXT_HOSTILE_FLAGS (a folder the test owns) make the next
 *     launch hang: "hang-hello" (never says HELLO), "hang-start" (Start
 *     never returns), "hang-stop" (Stop never returns);
 *   - selector SEL_SLEEP blocks a call for a while (killed or closed
 *     mid-call by the tests).
 * The tests kill -9 it from outside; nothing here crashes on its own.
 */
#include <dext/dext.h>
#include <errno.h>
#include <glib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hw/dextlab/dextlab-dma-regs.h"

#define RING 32
#define DATA_MAX (256 * 1024)

enum { SEL_COPY, SEL_SLEEP, SEL_INFO, SEL_ECHO, SEL_COUNT };
enum { MEM_SRC, MEM_DST };

typedef struct {
    DextPciDevice *pci;
    DextQueue *irq_q;
    DextInterruptSource *irq;
    DextBuffer *sq, *cq, *src, *dst;
    DextDmaCommand *cmd[4];
    uint64_t sq_iova, cq_iova, src_iova, dst_iova;
    uint32_t sq_tail, cq_head;
    uint8_t phase;
    GMutex lock;
    GCond cond;
    uint64_t irqs;
    uint64_t copies;
} Drv;

static bool flag_set(const char *name)
{
    const char *dir = g_getenv("DEXT_HOSTILE_FLAGS");
    if (!dir) {
        return false;
    }
    char *p = g_build_filename(dir, name, NULL);
    bool r = g_file_test(p, G_FILE_TEST_EXISTS);
    g_free(p);
    return r;
}

static void hang_forever(const char *where)
{
    DEXT_WARN("hanging in %s on purpose", where);
    for (;;) {
        pause();
    }
}

static void on_irq_q0(void *ctx, uint64_t count, uint64_t time)
{
    Drv *d = ctx;
    dext_pci_memory_write32(d->pci, DXL_DMA_BAR_REGS, DXL_REG_INT_STATUS, DXL_INT_QUEUE(0));
    g_mutex_lock(&d->lock);
    d->irqs += count;
    g_cond_broadcast(&d->cond);
    g_mutex_unlock(&d->lock);
}

static bool wait_irq(Drv *d, uint64_t before, unsigned ms)
{
    gint64 end = g_get_monotonic_time() + ms * 1000;
    g_mutex_lock(&d->lock);
    while (d->irqs <= before && g_cond_wait_until(&d->cond, &d->lock, end)) {
    }
    bool ok = d->irqs > before;
    g_mutex_unlock(&d->lock);
    return ok;
}

static int prepare1(DextDmaCommand *c, DextBuffer *b, uint64_t *iova)
{
    DextDmaSegment seg;
    uint32_t n = 1;
    int rc = dext_dma_command_prepare(c, b, 0, dext_buffer_length(b), &seg, &n);
    if (rc == 0) {
        *iova = seg.address;
    }
    return rc;
}

/* COPY of len bytes src -> dst through queue 0, completion by MSI-X.  The
 * bytes are the app's: it wrote src and checks dst. */
static int dma_copy(Drv *d, uint32_t len)
{
    if (len == 0 || len > DATA_MAX) {
        return -EINVAL;
    }
    struct dxl_dma_desc *sq = dext_buffer_map(d->sq);
    struct dxl_dma_desc *desc = &sq[d->sq_tail % RING];
    memset(desc, 0, sizeof(*desc));
    desc->opcode = DXL_OP_COPY;
    desc->flags = DXL_DESC_F_IRQ;
    desc->length = len;
    desc->src = d->src_iova;
    desc->dst = d->dst_iova;
    desc->cookie = 0x40571e00u + d->sq_tail;
    __atomic_thread_fence(__ATOMIC_RELEASE);
    d->sq_tail = (d->sq_tail + 1) % RING;
    g_mutex_lock(&d->lock);
    uint64_t before = d->irqs;
    g_mutex_unlock(&d->lock);
    dext_pci_memory_write32(d->pci, 0, DXL_REG_Q(0, DXL_Q_SQ_TAIL), d->sq_tail);
    if (!wait_irq(d, before, 5000)) {
        return -ETIMEDOUT;
    }
    struct dxl_dma_cpl *cq = dext_buffer_map(d->cq);
    struct dxl_dma_cpl *c = &cq[d->cq_head];
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if ((c->flags & DXL_CPL_F_PHASE) != d->phase) {
        return -EIO;
    }
    int rc = (c->status != DXL_ERR_OK || c->result != len || c->cookie != desc->cookie) ? -EIO : 0;
    d->cq_head = (d->cq_head + 1) % RING;
    if (d->cq_head == 0) {
        d->phase ^= 1;
    }
    dext_pci_memory_write32(d->pci, 0, DXL_REG_Q(0, DXL_Q_CQ_HEAD), d->cq_head);
    if (rc == 0) {
        d->copies++;
    }
    return rc;
}

static int setup(Drv *d)
{
    DextPciDevice *p = d->pci;
    int rc = dext_pci_set_memory_enable(p, true) | dext_pci_set_bus_master_enable(p, true);
    if (rc) {
        return -EIO;
    }
    dext_pci_memory_write32(p, 0, DXL_REG_CTRL, DXL_CTRL_RESET);
    rc = dext_queue_create("hostile.irq", &d->irq_q);
    if (rc < 0) {
        return rc;
    }
    rc = dext_interrupt_source_create(p, DXL_DMA_VEC_QUEUE(0), d->irq_q, on_irq_q0, d, &d->irq);
    if (rc < 0) {
        return rc;
    }
    rc = dext_buffer_create(DEXT_DMA_OUT, RING * sizeof(struct dxl_dma_desc), 4096, &d->sq) |
         dext_buffer_create(DEXT_DMA_IN, RING * sizeof(struct dxl_dma_cpl), 4096, &d->cq) |
         dext_buffer_create(DEXT_DMA_OUT, DATA_MAX, 4096, &d->src) |
         dext_buffer_create(DEXT_DMA_IN, DATA_MAX, 4096, &d->dst);
    if (rc) {
        return -ENOMEM;
    }
    for (int i = 0; i < 4; i++) {
        if ((rc = dext_dma_command_create(p, 64, 0, &d->cmd[i])) < 0) {
            return rc;
        }
    }
    rc = prepare1(d->cmd[0], d->sq, &d->sq_iova) | prepare1(d->cmd[1], d->cq, &d->cq_iova) |
         prepare1(d->cmd[2], d->src, &d->src_iova) | prepare1(d->cmd[3], d->dst, &d->dst_iova);
    if (rc) {
        return -EIO;
    }
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_SQ_BASE_LO), (uint32_t)d->sq_iova);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_SQ_BASE_HI), d->sq_iova >> 32);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_SQ_SIZE), RING);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CQ_BASE_LO), (uint32_t)d->cq_iova);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CQ_BASE_HI), d->cq_iova >> 32);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CQ_SIZE), RING);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_Q(0, DXL_Q_CTRL), DXL_QCTRL_ENABLE);
    rc |= dext_pci_memory_write32(p, 0, DXL_REG_CTRL, DXL_CTRL_ENABLE);
    d->sq_tail = d->cq_head = 0;
    d->phase = 1;
    memset(dext_buffer_map(d->cq), 0, dext_buffer_capacity(d->cq));
    return rc ? -EIO : dext_pci_flush(p);
}

static void teardown(Drv *d)
{
    if (d->irq) {
        dext_interrupt_source_destroy(d->irq);
    }
    for (int i = 0; i < 4; i++) {
        if (d->cmd[i]) {
            dext_dma_command_complete(d->cmd[i]);
            dext_dma_command_release(d->cmd[i]);
        }
    }
    dext_buffer_release(d->sq);
    dext_buffer_release(d->cq);
    dext_buffer_release(d->src);
    dext_buffer_release(d->dst);
    if (d->irq_q) {
        dext_queue_destroy(d->irq_q);
    }
}

static int drv_start(DextService *svc)
{
    if (flag_set("hang-start")) {
        hang_forever("Start");
    }
    Drv *d = g_new0(Drv, 1);
    g_mutex_init(&d->lock);
    g_cond_init(&d->cond);
    d->pci = dext_service_pci(svc);
    int rc = d->pci ? dext_pci_open(d->pci) : -ENODEV;
    if (rc < 0) {
        goto fail;
    }
    if ((rc = setup(d)) < 0) {
        goto fail_close;
    }
    dext_service_set_priv(svc, d);
    DEXT_INFO("ready on %s", dext_pci_address(d->pci));
    return 0;

fail_close:
    teardown(d);
    dext_pci_close(d->pci);
fail:
    g_free(d);
    return rc;
}

static void drv_stop(DextService *svc)
{
    Drv *d = dext_service_get_priv(svc);
    if (flag_set("hang-stop")) {
        hang_forever("Stop");
    }
    dext_pci_memory_write32(d->pci, 0, DXL_REG_CTRL, DXL_CTRL_RESET);
    dext_pci_set_bus_master_enable(d->pci, false);
    dext_pci_flush(d->pci);
    teardown(d);
    dext_pci_close(d->pci);
    g_mutex_clear(&d->lock);
    g_cond_clear(&d->cond);
    g_free(d);
}

/* in: length -> out: copies done so far */
static int m_copy(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    int rc = dma_copy(d, (uint32_t)MIN(a->scalar_in[0], (uint64_t)UINT32_MAX));
    a->scalar_out[0] = d->copies;
    return rc;
}

/* in: milliseconds (capped at 2 s: fuzzers reach it with random values) */
static int m_sleep(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    g_usleep(MIN(a->scalar_in[0], 2000) * 1000);
    return 0;
}

/* out: pid, copies, DATA_MAX */
static int m_info(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    Drv *d = ctx;
    a->scalar_out[0] = (uint64_t)getpid();
    a->scalar_out[1] = d->copies;
    a->scalar_out[2] = DATA_MAX;
    return 0;
}

/* struct in -> the same bytes out, plus the scalar sum */
static int m_echo(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    if (a->struct_in_size > a->struct_out_size) {
        return -EOVERFLOW;
    }
    if (a->struct_in_size) {
        memcpy(a->struct_out, a->struct_in, a->struct_in_size);
    }
    a->struct_out_size = a->struct_in_size;
    a->scalar_out[0] = a->scalar_in[0] + a->scalar_in[1] + a->scalar_in[2];
    return 0;
}

static const DextMethod methods[SEL_COUNT] = {
    [SEL_COPY] = { m_copy, 1, 0, 1, 0, false },
    [SEL_SLEEP] = { m_sleep, 1, 0, 0, 0, false },
    [SEL_INFO] = { m_info, 0, 0, 3, 0, false },
    [SEL_ECHO] = { m_echo, 3, DEXT_UC_VARIABLE, 1, DEXT_UC_VARIABLE, false },
};

static int uc_memory(DextUserClient *uc, void *ctx, uint32_t type, DextBuffer **out, bool *ro)
{
    Drv *d = ctx;
    if (type == MEM_SRC) {
        *out = d->src;
        *ro = false;
        return 0;
    }
    if (type == MEM_DST) {
        *out = d->dst;
        *ro = true;
        return 0;
    }
    return -EINVAL;
}

static void uc_closed(DextUserClient *uc, void *ctx)
{
}

static const DextUserClientOps uc_ops = { uc_memory, uc_closed };

static int drv_new_uc(DextService *svc, DextUserClient *uc)
{
    dext_user_client_set_dispatch(uc, methods, SEL_COUNT, &uc_ops, dext_service_get_priv(svc));
    return 0;
}

static const DextClassOps hostile_class = {
    .name = "HostileDmaDriver",
    .start = drv_start,
    .stop = drv_stop,
    .new_user_client = drv_new_uc,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &hostile_class, NULL };
    if (flag_set("hang-hello")) {
        hang_forever("launch (before HELLO)");
    }
    return dext_server_main(argc, argv, classes);
}
