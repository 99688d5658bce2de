/*
 * dxl-app: app-side helpers for the dextlab-dma user client, shared by
 * dextlab-dma-tool, the e2e tests and the benchmark.  A thin layer over
 * libdextclient and drivers/dextlab-dma/dextlab-dma-uc.h: it owns the
 * connection and the mapped data window.
 * Errors: negative errno, as libdextclient.  One thread per DxlApp.
 */
#ifndef DXL_APP_H
#define DXL_APP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dext/client.h"
#include "dextlab-dma-uc.h"

typedef struct {
    DextConnection *c;
    uint8_t *win;               /* mapped window (read/write) */
    uint64_t wsize;
    uint64_t info[8];           /* DXL_UC_SEL_INFO */
    struct dxl_uc_ring *ring;   /* mapped submission ring, or NULL */
    uint64_t ring_size;
    uint64_t ring_ref;
    uint32_t ring_tail;         /* ours; the shared tail is only written */
    uint64_t ring_kicks;        /* kicks this app posted */
} DxlApp;

/* Open (by "class" DXL_UC_CLASS, "name" or "id"), size and map a window. */
int dxl_app_open(DxlApp *a, const char *sock, const char *by, const char *value,
                 uint64_t window);
void dxl_app_close(DxlApp *a);
unsigned dxl_app_queues(const DxlApp *a);

/* Async submit; the completion comes from dxl_app_wait with @ref. */
int dxl_app_submit(DxlApp *a, unsigned q, unsigned op, uint64_t src, uint64_t dst,
                   uint64_t len, uint64_t arg, uint64_t tag, uint64_t ref);
/* Async batch (DXL_UC_SEL_SUBMIT_BATCH): n <= DXL_UC_BATCH_MAX requests,
 * each completing with @ref and its own tag. */
int dxl_app_submit_batch(DxlApp *a, const struct dxl_uc_req *reqs, unsigned n, uint64_t ref);
/* The same, posted (dext_client_call_posted): returns once sent; a batch the
 * driver refuses makes dxl_app_wait return its -errno. */
int dxl_app_submit_batch_posted(DxlApp *a, const struct dxl_uc_req *reqs, unsigned n,
                                uint64_t ref);
/* Attach and map the connection's submission ring; its requests complete
 * with @ref.  dxl_app_job then submits through it. */
int dxl_app_ring_attach(DxlApp *a, uint64_t ref);
/* Publish up to @n requests in the ring (kicking the driver when it asks);
 * returns how many fit (0 when it is full), or -EPROTO once the driver
 * found the ring broken. */
int dxl_app_ring_submit(DxlApp *a, const struct dxl_uc_req *reqs, unsigned n);
/* Next completion: *status 0 or -errno; data[DXL_UC_CPL_COUNT]. */
int dxl_app_wait(DxlApp *a, int timeout_ms, uint64_t *ref, int *status, uint64_t *data);
/* Synchronous request (DXL_UC_SEL_SUBMIT_WAIT). */
int dxl_app_run(DxlApp *a, unsigned q, unsigned op, uint64_t src, uint64_t dst,
                uint64_t len, uint64_t arg, unsigned timeout_ms, int *status, uint64_t *data);
int dxl_app_stats(DxlApp *a, struct dxl_uc_stats *s);
int dxl_app_errlog(DxlApp *a, struct dxl_uc_errlog *l);
int dxl_app_reset(DxlApp *a, uint64_t *resets);

/* Make the window at least @bytes (re-sized and re-mapped when smaller;
 * no request may be in flight). */
int dxl_app_ensure_window(DxlApp *a, uint64_t bytes);

/*
 * A job: @count requests of @size bytes of @op, @depth in flight per queue,
 * spread round robin over queues qs[0..nq).  With @verify every request's
 * data is checked (COPY: dst == src, FILL: the pattern, CRC: against
 * dxl_crc32c); without it buffers are reused when they do not all fit.
 * @min_ns > 0: keep going past @count until that much time has passed.
 * @progress: print a progress line on stderr four times a second.
 */
typedef struct {
    unsigned op;
    unsigned nq;
    unsigned qs[DXL_UC_NUM_QUEUES];
    uint64_t size;
    uint64_t count;
    unsigned depth;
    bool verify;
    bool progress;
    bool keep_going;            /* do not stop at the first failed request */
    uint64_t min_ns;
    uint64_t pattern;
} DxlJob;

typedef struct {
    uint64_t ok, failed, bytes, verify_failed;
    uint64_t ns;                /* wall time of the job */
    int first_status;           /* first failure: -errno */
    unsigned first_dev;         /* its device status (DXL_ERR_*) */
    unsigned first_queue;
    /* interrupt seen by the driver -> completion received here, ns */
    uint64_t *lat;
    uint64_t nlat;
} DxlResult;

/* Run a job; returns 0 when it ran (check res for failures), -errno when it
 * could not run.  res->lat is g_malloc'ed (free with dxl_result_clear). */
int dxl_app_job(DxlApp *a, const DxlJob *job, DxlResult *res);
void dxl_result_clear(DxlResult *res);
uint64_t dxl_now_ns(void);
/* p in [0,100] of res->lat (sorts it). */
uint64_t dxl_result_lat_pct(DxlResult *res, double p);

/* Software CRC32C (Castagnoli, reflected, iSCSI): crc = 0 to start. */
uint32_t dxl_crc32c(uint32_t crc, const void *buf, size_t len);
const char *dxl_err_name(unsigned code);
/* Deterministic test bytes. */
void dxl_pattern(uint8_t *p, size_t n, uint64_t seed);

#endif
