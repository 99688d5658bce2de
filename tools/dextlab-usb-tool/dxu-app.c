/* dxu-app: see dxu-app.h. */
#include "dxu-app.h"

#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/mman.h>

int dxu_app_call(DxuApp *a, uint32_t sel, const uint64_t *in, uint32_t nin, uint64_t *out,
                 uint32_t nout)
{
    uint32_t n = nout;
    return dext_client_call(a->c, sel, in, nin, NULL, 0, out, &n, NULL, NULL);
}

int dxu_app_info(DxuApp *a)
{
    return dxu_app_call(a, DXU_UC_SEL_INFO, NULL, 0, a->info, 8);
}

int dxu_app_open(DxuApp *a, const char *sock, const char *by, const char *value,
                 uint64_t window)
{
    memset(a, 0, sizeof(*a));
    int rc = dext_client_open(sock, by, value, &a->c);
    if (rc < 0) {
        return rc;
    }
    uint64_t sz;
    void *p;
    if ((rc = dxu_app_call(a, DXU_UC_SEL_SET_WINDOW, &window, 1, &sz, 1)) < 0 ||
        (rc = dext_client_map_memory(a->c, DXU_UC_MEM_WINDOW, 0, &p, &sz)) < 0) {
        goto fail;
    }
    a->win = p;
    a->wsize = sz;
    if ((rc = dxu_app_info(a)) < 0) {
        goto fail;
    }
    return 0;
fail:
    dxu_app_close(a);
    return rc;
}

void dxu_app_close(DxuApp *a)
{
    if (a->win) {
        munmap(a->win, a->wsize);
    }
    if (a->c) {
        dext_client_close(a->c);
    }
    memset(a, 0, sizeof(*a));
}

int dxu_app_reg_read(DxuApp *a, uint32_t reg, uint32_t *v)
{
    uint64_t in = reg, out = 0;
    int rc = dxu_app_call(a, DXU_UC_SEL_REG_READ, &in, 1, &out, 1);
    if (rc == 0) {
        *v = (uint32_t)out;
    }
    return rc;
}

int dxu_app_reg_write(DxuApp *a, uint32_t reg, uint32_t v)
{
    uint64_t in[2] = { reg, v };
    return dxu_app_call(a, DXU_UC_SEL_REG_WRITE, in, 2, NULL, 0);
}

int dxu_app_stats(DxuApp *a, struct dxu_uc_stats *s)
{
    uint32_t n = 0;
    size_t len = sizeof(*s);
    int rc = dext_client_call(a->c, DXU_UC_SEL_STATS, NULL, 0, NULL, 0, NULL, &n, s, &len);
    return rc < 0 ? rc : len == sizeof(*s) ? 0 : -EPROTO;
}

int dxu_app_loopback(DxuApp *a, uint64_t ref, uint64_t out_off, uint64_t in_off, uint64_t len,
                     uint64_t in_len, uint64_t tag)
{
    uint64_t in[5] = { out_off, in_off, len, in_len, tag }, chunks;
    uint32_t n = 1;
    return dext_client_call_async(a->c, DXU_UC_SEL_LOOPBACK, ref, in, 5, NULL, 0, &chunks, &n,
                                  NULL, NULL);
}

int dxu_app_subscribe(DxuApp *a, uint64_t ref, uint64_t *next)
{
    uint64_t out = 0;
    uint32_t n = 1;
    int rc = dext_client_call_async(a->c, DXU_UC_SEL_SUBSCRIBE, ref, NULL, 0, NULL, 0, &out, &n,
                                    NULL, NULL);
    if (rc == 0 && next) {
        *next = out;
    }
    return rc;
}

int dxu_app_wait(DxuApp *a, int timeout_ms, uint64_t *ref, int *status, uint64_t *data,
                 uint32_t *n)
{
    uint32_t cap = 16;
    int rc = dext_client_wait_async(a->c, timeout_ms, ref, status, data, &cap);
    if (n) {
        *n = cap;
    }
    return rc;
}

/* A per-request pattern: word i is a seed-derived base plus i times an odd
 * constant, so every 8-byte word differs from the same word of any other
 * request (a stale, shifted or partial IN fails the memcmp).  One add per
 * word: ~40 us per MiB, where the xorshift chain it replaces cost ~220 us,
 * as much as the transfer, so a throughput run measured the app. */
static void fill(uint8_t *p, uint64_t n, uint32_t seed)
{
    uint64_t base = (seed + 1) * 0x9e3779b97f4a7c15ull, w = base;
    uint64_t i = 0, words = n / 8;
    for (uint64_t k = 0; k < words; k++) {
        memcpy(p + 8 * k, &w, 8);
        w += 0xd6e8feb86659fd93ull;
    }
    for (i = 8 * words; i < n; i++) {
        p[i] = (uint8_t)(base >> (8 * (i & 7))) ^ (uint8_t)i;
    }
}

/* Bench mode: one 8-byte stamp (request seed, page) per 4 KiB page and in
 * the last word.  An IN that moved nothing, the wrong request or a shifted
 * page still fails; the app's cost is a few hundred stores, not a pass over
 * the data. */
#define STAMP_STEP 4096u

static uint64_t stamp(uint32_t seed, uint64_t at)
{
    return ((uint64_t)seed << 32 | (uint32_t)(at / 8)) * 0x9e3779b97f4a7c15ull + 1;
}

static void stamp_fill(uint8_t *p, uint64_t n, uint32_t seed)
{
    for (uint64_t at = 0; at + 8 <= n; at += STAMP_STEP) {
        uint64_t w = stamp(seed, at);
        memcpy(p + at, &w, 8);
    }
    if (n >= 8) {
        uint64_t w = stamp(seed, n - 8);
        memcpy(p + n - 8, &w, 8);
    } else {
        fill(p, n, seed);
    }
}

static bool stamp_check(const uint8_t *in, uint64_t n, uint32_t seed)
{
    for (uint64_t at = 0; at + 8 <= n; at += STAMP_STEP) {
        uint64_t w = stamp(seed, at);
        if (memcmp(in + at, &w, 8)) {
            return false;
        }
    }
    if (n >= 8) {
        uint64_t w = stamp(seed, n - 8);
        return memcmp(in + n - 8, &w, 8) == 0;
    }
    uint8_t t[8];
    fill(t, n, seed);
    return memcmp(in, t, n) == 0;
}

static int loopback_run(DxuApp *a, uint64_t size, uint64_t in_extra, unsigned count,
                        unsigned depth, uint32_t seed, int timeout_ms, bool stamped,
                        DxuRun *res)
{
    uint64_t slot = size + in_extra;
    slot = (slot + 63) & ~63ull;
    memset(res, 0, sizeof(*res));
    if (!depth || 2 * depth * (slot ? slot : 64) > a->wsize) {
        return -EINVAL;
    }
    unsigned issued = 0, done = 0, busy = 0;
    uint32_t *seeds = g_new0(uint32_t, depth);
    bool *used = g_new0(bool, depth);
    int rc = 0;
    for (unsigned k = 0; k < depth; k++) {
        /* no byte of an earlier run (maybe with the same seeds) may pass */
        memset(a->win + 2 * k * slot + slot, 0xa5, slot);
    }
    gint64 t0 = g_get_monotonic_time();
    while (done < count) {
        while (issued < count && busy < depth) {
            unsigned s = 0;
            while (used[s]) {
                s++;
            }
            uint64_t out = 2 * s * slot, in = out + slot;
            seeds[s] = seed + issued;
            if (stamped) {
                stamp_fill(a->win + out, size, seeds[s]);
            } else {
                fill(a->win + out, size, seeds[s]);
            }
            /* the IN half keeps the previous request's bytes (another seed),
             * so an IN that writes nothing cannot pass; only the tail past
             * @size needs a marker */
            memset(a->win + in + size, 0xa5, slot - size);
            rc = dxu_app_loopback(a, DXU_APP_LB_REF | s, out, in, size, size + in_extra, issued);
            if (rc == -EAGAIN && busy) {
                break;
            }
            if (rc < 0) {
                goto out;
            }
            used[s] = true;
            busy++;
            issued++;
        }
        uint64_t ref, data[16];
        int status;
        uint32_t n;
        rc = dxu_app_wait(a, timeout_ms, &ref, &status, data, &n);
        if (rc < 0) {
            goto out;
        }
        if (!(ref & DXU_APP_LB_REF) || (ref & ~DXU_APP_LB_REF) >= depth ||
            !used[ref & ~DXU_APP_LB_REF]) {
            continue; /* someone else's completion */
        }
        unsigned s = (unsigned)(ref & ~DXU_APP_LB_REF);
        used[s] = false;
        busy--;
        done++;
        if (status || n < DXU_LB_COUNT) {
            if (!res->failed) {
                res->first_status = status;
                res->first_out_status = n > DXU_LB_OUT_STATUS ? data[DXU_LB_OUT_STATUS] : 0;
                res->first_in_status = n > DXU_LB_IN_STATUS ? data[DXU_LB_IN_STATUS] : 0;
            }
            res->failed++;
            continue;
        }
        uint64_t out = 2 * s * slot, in = out + slot;
        /* the device only read the OUT half: it still holds the pattern */
        if (data[DXU_LB_OUT_ACTUAL] != size || data[DXU_LB_IN_ACTUAL] != size ||
            (stamped ? !stamp_check(a->win + in, size, seeds[s])
                     : memcmp(a->win + in, a->win + out, size) != 0) ||
            (in_extra && a->win[in + size] != 0xa5)) {
            res->bad_data++;
        } else {
            res->ok++;
            res->bytes += size;
        }
    }
out:
    res->ns = (uint64_t)(g_get_monotonic_time() - t0) * 1000;
    g_free(seeds);
    g_free(used);
    return rc;
}

int dxu_app_loopback_run(DxuApp *a, uint64_t size, uint64_t in_extra, unsigned count,
                         unsigned depth, uint32_t seed, int timeout_ms, DxuRun *res)
{
    return loopback_run(a, size, in_extra, count, depth, seed, timeout_ms, false, res);
}

int dxu_app_loopback_bench(DxuApp *a, uint64_t size, unsigned count, unsigned depth,
                           uint32_t seed, int timeout_ms, DxuRun *res)
{
    return loopback_run(a, size, 0, count, depth, seed, timeout_ms, true, res);
}
