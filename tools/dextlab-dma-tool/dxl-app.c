/* dxl-app: see dxl-app.h. */
#include "dxl-app.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "hw/dextlab/dextlab-dma-regs.h"

int dxl_app_open(DxlApp *a, const char *sock, const char *by, const char *value,
                 uint64_t window)
{
    uint64_t out[1];
    uint32_t nout = 8;
    void *p = NULL;
    uint64_t sz = 0;
    memset(a, 0, sizeof(*a));
    int rc = dext_client_open(sock, by, value, &a->c);
    if (rc < 0) {
        return rc;
    }
    if ((rc = dext_client_call(a->c, DXL_UC_SEL_INFO, NULL, 0, NULL, 0, a->info, &nout,
                               NULL, NULL)) < 0) {
        goto fail;
    }
    if (a->info[0] != DXL_UC_VERSION) {
        rc = -EPROTO;
        goto fail;
    }
    nout = 1;
    if ((rc = dext_client_call(a->c, DXL_UC_SEL_SET_WINDOW, &window, 1, NULL, 0, out, &nout,
                               NULL, NULL)) < 0) {
        goto fail;
    }
    if ((rc = dext_client_map_memory(a->c, DXL_UC_MEM_WINDOW, 0, &p, &sz)) < 0) {
        goto fail;
    }
    a->win = p;
    a->wsize = sz;
    a->info[2] = sz;
    return 0;
fail:
    dext_client_close(a->c);
    a->c = NULL;
    return rc;
}

void dxl_app_close(DxlApp *a)
{
    if (a->ring) {
        munmap(a->ring, a->ring_size);
    }
    if (a->win) {
        munmap(a->win, a->wsize);
    }
    if (a->c) {
        dext_client_close(a->c);
    }
    memset(a, 0, sizeof(*a));
}

unsigned dxl_app_queues(const DxlApp *a)
{
    return (unsigned)a->info[1];
}

int dxl_app_submit(DxlApp *a, unsigned q, unsigned op, uint64_t src, uint64_t dst,
                   uint64_t len, uint64_t arg, uint64_t tag, uint64_t ref)
{
    uint64_t in[7] = { q, op, src, dst, len, arg, tag }, id;
    uint32_t nout = 1;
    return dext_client_call_async(a->c, DXL_UC_SEL_SUBMIT, ref, in, 7, NULL, 0, &id, &nout,
                                  NULL, NULL);
}

int dxl_app_submit_batch(DxlApp *a, const struct dxl_uc_req *reqs, unsigned n, uint64_t ref)
{
    uint64_t count;
    uint32_t nout = 1;
    return dext_client_call_async(a->c, DXL_UC_SEL_SUBMIT_BATCH, ref, NULL, 0, reqs,
                                  n * sizeof(*reqs), &count, &nout, NULL, NULL);
}

int dxl_app_submit_batch_posted(DxlApp *a, const struct dxl_uc_req *reqs, unsigned n,
                                uint64_t ref)
{
    return dext_client_call_posted(a->c, DXL_UC_SEL_SUBMIT_BATCH, ref, NULL, 0, reqs,
                                   n * sizeof(*reqs));
}

int dxl_app_ring_attach(DxlApp *a, uint64_t ref)
{
    uint64_t entries;
    uint32_t nout = 1;
    void *p = NULL;
    uint64_t sz = 0;
    int rc = dext_client_call_async(a->c, DXL_UC_SEL_RING_ATTACH, ref, NULL, 0, NULL, 0,
                                    &entries, &nout, NULL, NULL);
    if (rc < 0) {
        return rc;
    }
    if (entries != DXL_UC_RING_ENTRIES) {
        return -EPROTO;
    }
    if ((rc = dext_client_map_memory(a->c, DXL_UC_MEM_RING, 0, &p, &sz)) < 0) {
        return rc;
    }
    if (sz < sizeof(struct dxl_uc_ring)) {
        munmap(p, sz);
        return -EPROTO;
    }
    a->ring = p;
    a->ring_size = sz;
    a->ring_ref = ref;
    a->ring_tail = __atomic_load_n(&a->ring->tail, __ATOMIC_RELAXED);
    return 0;
}

int dxl_app_ring_submit(DxlApp *a, const struct dxl_uc_req *reqs, unsigned n)
{
    struct dxl_uc_ring *rg = a->ring;
    if (__atomic_load_n(&rg->status, __ATOMIC_ACQUIRE)) {
        return -EPROTO;
    }
    uint32_t used = a->ring_tail - __atomic_load_n(&rg->head, __ATOMIC_ACQUIRE);
    unsigned room = used >= DXL_UC_RING_ENTRIES ? 0 : DXL_UC_RING_ENTRIES - used;
    unsigned fit = n < room ? n : room;
    for (unsigned i = 0; i < fit; i++) {
        rg->e[(a->ring_tail + i) % DXL_UC_RING_ENTRIES] = reqs[i];
    }
    if (!fit) {
        return 0;
    }
    a->ring_tail += fit;
    __atomic_store_n(&rg->tail, a->ring_tail, __ATOMIC_RELEASE);
    /* pairs with the driver's need_kick store, fence, tail load */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&rg->need_kick, __ATOMIC_RELAXED)) {
        a->ring_kicks++;
        int rc = dext_client_call_posted(a->c, DXL_UC_SEL_RING_KICK, a->ring_ref, NULL, 0,
                                         NULL, 0);
        if (rc < 0) {
            return rc;
        }
    }
    return (int)fit;
}

int dxl_app_wait(DxlApp *a, int timeout_ms, uint64_t *ref, int *status, uint64_t *data)
{
    uint32_t n = DXL_UC_CPL_COUNT;
    memset(data, 0, DXL_UC_CPL_COUNT * sizeof(uint64_t));
    int rc = dext_client_wait_async(a->c, timeout_ms, ref, status, data, &n);
    if (rc == 0 && n == 0 && *status < 0) {
        return *status; /* a posted batch the driver refused */
    }
    if (rc == 0 && n != DXL_UC_CPL_COUNT) {
        return -EPROTO;
    }
    return rc;
}

int dxl_app_run(DxlApp *a, unsigned q, unsigned op, uint64_t src, uint64_t dst,
                uint64_t len, uint64_t arg, unsigned timeout_ms, int *status, uint64_t *data)
{
    uint64_t in[8] = { q, op, src, dst, len, arg, 0, timeout_ms };
    uint64_t out[DXL_UC_CPL_COUNT + 1];
    uint32_t nout = DXL_UC_CPL_COUNT + 1;
    int rc = dext_client_call(a->c, DXL_UC_SEL_SUBMIT_WAIT, in, 8, NULL, 0, out, &nout,
                              NULL, NULL);
    if (rc == 0) {
        *status = (int)(int64_t)out[0];
        memcpy(data, &out[1], DXL_UC_CPL_COUNT * sizeof(uint64_t));
    }
    return rc;
}

int dxl_app_stats(DxlApp *a, struct dxl_uc_stats *s)
{
    size_t len = sizeof(*s);
    uint32_t nout = 0;
    int rc = dext_client_call(a->c, DXL_UC_SEL_STATS, NULL, 0, NULL, 0, NULL, &nout, s, &len);
    return rc == 0 && len != sizeof(*s) ? -EPROTO : rc;
}

int dxl_app_errlog(DxlApp *a, struct dxl_uc_errlog *l)
{
    size_t len = sizeof(*l);
    uint32_t nout = 0;
    int rc = dext_client_call(a->c, DXL_UC_SEL_ERRLOG, NULL, 0, NULL, 0, NULL, &nout, l, &len);
    return rc == 0 && len != sizeof(*l) ? -EPROTO : rc;
}

int dxl_app_reset(DxlApp *a, uint64_t *resets)
{
    uint64_t out[1] = { 0 };
    uint32_t nout = 1;
    int rc = dext_client_call(a->c, DXL_UC_SEL_RESET, NULL, 0, NULL, 0, out, &nout, NULL, NULL);
    if (rc == 0 && resets) {
        *resets = out[0];
    }
    return rc;
}

static uint32_t crc_table[8][256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c >> 1) ^ (0x82f63b78u & -(c & 1));
        }
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++) {
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
        }
    }
}

uint32_t dxl_crc32c(uint32_t crc, const void *buf, size_t len)
{
    static int init;
    const uint8_t *p = buf;
    if (!__atomic_load_n(&init, __ATOMIC_ACQUIRE)) {
        crc_init();
        __atomic_store_n(&init, 1, __ATOMIC_RELEASE);
    }
    crc = ~crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc;
        crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^
              crc_table[5][(v >> 16) & 0xff] ^ crc_table[4][(v >> 24) & 0xff] ^
              crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
              crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) {
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    }
    return ~crc;
}

const char *dxl_err_name(unsigned code)
{
    static const char *const names[] = {
        [DXL_ERR_OK] = "OK", [DXL_ERR_BAD_OPCODE] = "BAD_OPCODE",
        [DXL_ERR_BAD_LENGTH] = "BAD_LENGTH", [DXL_ERR_BAD_FLAGS] = "BAD_FLAGS",
        [DXL_ERR_RSVD_FIELD] = "RSVD_FIELD", [DXL_ERR_ADDR_WRAP] = "ADDR_WRAP",
        [DXL_ERR_DMA_UNMAPPED] = "DMA_UNMAPPED", [DXL_ERR_DMA_MMIO] = "DMA_MMIO",
        [DXL_ERR_DMA_SELF] = "DMA_SELF", [DXL_ERR_DEVMEM_RANGE] = "DEVMEM_RANGE",
        [DXL_ERR_OVERLAP] = "OVERLAP", [DXL_ERR_DMA_READ] = "DMA_READ",
        [DXL_ERR_DMA_WRITE] = "DMA_WRITE", [DXL_ERR_BAD_SQ_BASE] = "BAD_SQ_BASE",
        [DXL_ERR_BAD_SQ_SIZE] = "BAD_SQ_SIZE", [DXL_ERR_BAD_CQ_BASE] = "BAD_CQ_BASE",
        [DXL_ERR_BAD_CQ_SIZE] = "BAD_CQ_SIZE", [DXL_ERR_BAD_SQ_TAIL] = "BAD_SQ_TAIL",
        [DXL_ERR_BAD_CQ_HEAD] = "BAD_CQ_HEAD", [DXL_ERR_SQ_FETCH] = "SQ_FETCH",
        [DXL_ERR_CQ_WRITE] = "CQ_WRITE", [DXL_ERR_QUEUE_DISABLED] = "QUEUE_DISABLED",
        [DXL_ERR_REG_ACCESS] = "REG_ACCESS",
    };
    return code < sizeof(names) / sizeof(names[0]) && names[code] ? names[code] : "?";
}

void dxl_pattern(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(p + i, &x, 8);
    }
    for (; i < n; i++) {
        p[i] = (uint8_t)(x >> (8 * (i & 7)));
    }
}

/* ---- jobs ------------------------------------------------------------------ */

#include <glib.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

uint64_t dxl_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int dxl_app_ensure_window(DxlApp *a, uint64_t bytes)
{
    if (bytes <= a->wsize) {
        return 0;
    }
    uint64_t out[1];
    uint32_t nout = 1;
    void *p = NULL;
    uint64_t sz = 0;
    int rc = dext_client_call(a->c, DXL_UC_SEL_SET_WINDOW, &bytes, 1, NULL, 0, out, &nout,
                              NULL, NULL);
    if (rc < 0) {
        return rc;
    }
    if ((rc = dext_client_map_memory(a->c, DXL_UC_MEM_WINDOW, 0, &p, &sz)) < 0) {
        return rc;
    }
    munmap(a->win, a->wsize);
    a->win = p;
    a->wsize = sz;
    a->info[2] = sz;
    return 0;
}

void dxl_result_clear(DxlResult *res)
{
    g_free(res->lat);
    memset(res, 0, sizeof(*res));
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

uint64_t dxl_result_lat_pct(DxlResult *res, double p)
{
    if (!res->nlat) {
        return 0;
    }
    qsort(res->lat, res->nlat, sizeof(uint64_t), cmp_u64);
    uint64_t i = (uint64_t)(p / 100.0 * (double)(res->nlat - 1) + 0.5);
    return res->lat[MIN(i, res->nlat - 1)];
}

typedef struct {
    uint64_t src, dst;          /* window offsets */
    uint64_t region;
    uint64_t pattern;
    bool busy;
} JobSlot;

static bool verify_one(DxlApp *a, const DxlJob *j, const JobSlot *s, const uint32_t *crcs,
                       const uint64_t *data)
{
    switch (j->op) {
    case DXL_UC_OP_COPY:
        return !memcmp(a->win + s->dst, a->win + s->src, j->size);
    case DXL_UC_OP_FILL:
        for (uint64_t i = 0; i < j->size; i++) {
            if (a->win[s->dst + i] != (uint8_t)(s->pattern >> (8 * (i & 7)))) {
                return false;
            }
        }
        return true;
    case DXL_UC_OP_CRC32C:
        return data[DXL_UC_CPL_RESULT] == crcs[s->region];
    }
    return true;
}

static bool flush_batch(DxlApp *a, const struct dxl_uc_req *batch, unsigned nb, JobSlot *slots,
                        unsigned *busy, uint64_t *submitted, DxlResult *res)
{
    /* the ring when attached for the job's reference (no message while
     * the driver is busy with ours), what does not fit as a posted batch:
     * no reply to wait for either way; a refusal comes back through
     * dxl_app_wait as an error, which ends the job */
    int rc = 0;
    if (a->ring && a->ring_ref == 1) {
        rc = dxl_app_ring_submit(a, batch, nb);
        if (rc >= 0) {
            batch += rc;
            nb -= (unsigned)rc;
            rc = 0;
        }
    }
    if (rc == 0 && nb) {
        rc = dxl_app_submit_batch_posted(a, batch, nb, 1);
    }
    if (rc < 0) {
        if (!res->first_status) {
            res->first_status = rc;
        }
        for (unsigned k = 0; k < nb; k++) {
            slots[batch[k].tag - 1].busy = false;
        }
        *busy -= nb;
        *submitted -= nb;
        return false;
    }
    return true;
}

int dxl_app_job(DxlApp *a, const DxlJob *j, DxlResult *res)
{
    memset(res, 0, sizeof(*res));
    if (!j->nq || j->nq > DXL_UC_NUM_QUEUES || !j->depth || !j->size || !j->count) {
        return -EINVAL;
    }
    unsigned nslots = j->depth * j->nq;
    uint64_t per = (j->op == DXL_UC_OP_COPY ? 2 : 1) * j->size;
    uint64_t regions = MIN((uint64_t)nslots, DXL_UC_WINDOW_MAX / per);
    if (regions == 0 || (j->verify && regions < nslots)) {
        return -E2BIG; /* verified jobs need one buffer per request in flight */
    }
    int rc = dxl_app_ensure_window(a, MAX(regions * per, (uint64_t)DXL_UC_WINDOW_MIN));
    if (rc < 0) {
        return rc;
    }
    JobSlot *slots = g_new0(JobSlot, nslots);
    uint32_t *crcs = g_new0(uint32_t, regions);
    for (uint64_t r = 0; r < regions; r++) {
        uint64_t base = r * per;
        if (j->op != DXL_UC_OP_FILL) {
            dxl_pattern(a->win + base, j->size, r + 1);
            if (j->op == DXL_UC_OP_CRC32C) {
                crcs[r] = dxl_crc32c(0, a->win + base, j->size);
            }
        }
    }
    for (unsigned i = 0; i < nslots; i++) {
        uint64_t base = (i % regions) * per;
        slots[i].region = i % regions;
        slots[i].src = base;
        slots[i].dst = j->op == DXL_UC_OP_COPY ? base + j->size : base;
    }
    uint64_t cap = MIN(j->count, (uint64_t)1000000);
    res->lat = g_new(uint64_t, cap);
    uint64_t submitted = 0, completed = 0, t0 = dxl_now_ns(), last_print = t0;
    bool stop = false;
    unsigned busy = 0;
    for (;;) {
        uint64_t now = dxl_now_ns();
        bool more = !stop && (submitted < j->count || (j->min_ns && now - t0 < j->min_ns));
        /* every idle slot, in batches of up to DXL_UC_BATCH_MAX: one call
         * (and one doorbell per queue) for many requests */
        struct dxl_uc_req batch[DXL_UC_BATCH_MAX];
        unsigned nb = 0;
        for (unsigned i = 0; more && i < nslots; i++) {
            JobSlot *s = &slots[i];
            if (s->busy) {
                continue;
            }
            if (j->verify && j->op != DXL_UC_OP_CRC32C) {
                memset(a->win + s->dst, 0, j->size);
            }
            s->pattern = j->pattern ^ (submitted * 0x0101010101010101ull);
            batch[nb++] = (struct dxl_uc_req){
                .queue = j->qs[i % j->nq], .op = j->op, .src = s->src, .dst = s->dst,
                .len = j->size, .arg = j->op == DXL_UC_OP_FILL ? s->pattern : 0, .tag = i + 1,
            };
            s->busy = true;
            busy++;
            submitted++;
            more = submitted < j->count || (j->min_ns && dxl_now_ns() - t0 < j->min_ns);
            if (nb == DXL_UC_BATCH_MAX || !more || i == nslots - 1) {
                if (!flush_batch(a, batch, nb, slots, &busy, &submitted, res)) {
                    stop = true;
                    nb = 0;
                    break;
                }
                nb = 0;
            }
        }
        if (nb && !flush_batch(a, batch, nb, slots, &busy, &submitted, res)) {
            stop = true;
        }
        if (!busy) {
            break;
        }
        /* one blocking wait, then whatever else has arrived, before the
         * idle slots are refilled in one batch */
        bool fatal = false;
        for (int first = 1; busy; first = 0) {
            uint64_t ref = 0, data[DXL_UC_CPL_COUNT];
            int status = 0;
            rc = dxl_app_wait(a, first ? 30000 : 0, &ref, &status, data);
            uint64_t t_rx = dxl_now_ns();
            if (!first && rc == -ETIMEDOUT) {
                break;
            }
            if (rc < 0) {
                res->first_status = res->first_status ? res->first_status : rc;
                fatal = true; /* lost completions: the job cannot go on */
                break;
            }
            uint64_t tag = data[DXL_UC_CPL_TAG];
            if (ref != 1 || tag < 1 || tag > nslots || !slots[tag - 1].busy) {
                res->first_status = res->first_status ? res->first_status : -EPROTO;
                fatal = true;
                break;
            }
            JobSlot *s = &slots[tag - 1];
            s->busy = false;
            busy--;
            completed++;
            if (status == 0) {
                res->ok++;
                res->bytes += data[DXL_UC_CPL_BYTES];
                if (j->verify && !verify_one(a, j, s, crcs, data)) {
                    res->verify_failed++;
                    stop = stop || !j->keep_going;
                }
            } else {
                res->failed++;
                if (!res->first_status) {
                    res->first_status = status;
                    res->first_dev = (unsigned)data[DXL_UC_CPL_DEV_STATUS];
                    res->first_queue = j->qs[(tag - 1) % j->nq];
                }
                stop = stop || !j->keep_going;
            }
            if (data[DXL_UC_CPL_T_IRQ] && res->nlat < cap && t_rx > data[DXL_UC_CPL_T_IRQ]) {
                res->lat[res->nlat++] = t_rx - data[DXL_UC_CPL_T_IRQ];
            }
            if (j->progress && t_rx - last_print > 250000000ull) {
                double sec = (double)(t_rx - t0) / 1e9;
                double frac = j->min_ns ? MIN(1.0, (double)(t_rx - t0) / (double)j->min_ns)
                                        : (double)completed / (double)j->count;
                int bar = (int)(frac * 30);
                fprintf(stderr, "\r[%.*s%*s] %5.1f%% %10.1f MiB/s %8" G_GUINT64_FORMAT
                        " requests", bar, "##############################", 30 - bar, "",
                        frac * 100, (double)res->bytes / (1 << 20) / sec, completed);
                last_print = t_rx;
            }
        }
        if (fatal) {
            break;
        }
    }
    res->ns = dxl_now_ns() - t0;
    if (j->progress) {
        fprintf(stderr, "\r%*s\r", 70, "");
    }
    g_free(slots);
    g_free(crcs);
    return 0;
}
