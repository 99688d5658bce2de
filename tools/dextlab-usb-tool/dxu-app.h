/*
 * dxu-app: app-side helpers for the dextlab-usb user client, shared by
 * dextlab-usb-tool and the e2e test.  A thin layer over libdextclient and
 * drivers/dextlab-usb/dextlab-usb-uc.h: it owns the connection and the
 * mapped data window.  Errors: negative errno.  One thread per DxuApp.
 */
#ifndef DXU_APP_H
#define DXU_APP_H

#include <stdbool.h>
#include <stdint.h>

#include "dext/client.h"
#include "dextlab-usb-uc.h"

typedef struct {
    DextConnection *c;
    uint8_t *win;               /* mapped window (read/write) */
    uint64_t wsize;
    uint64_t info[8];           /* DXU_UC_SEL_INFO */
} DxuApp;

/* Loopback references are DXU_APP_LB_REF | n; anything else is the caller's. */
#define DXU_APP_LB_REF (1ull << 62)

/* Open (by "class" DXU_UC_CLASS, "name" or "id"), size and map a window. */
int dxu_app_open(DxuApp *a, const char *sock, const char *by, const char *value,
                 uint64_t window);
void dxu_app_close(DxuApp *a);
int dxu_app_info(DxuApp *a);
/* A call with @nin scalars in and @nout out (no structures). */
int dxu_app_call(DxuApp *a, uint32_t sel, const uint64_t *in, uint32_t nin, uint64_t *out,
                 uint32_t nout);
int dxu_app_reg_read(DxuApp *a, uint32_t reg, uint32_t *v);
int dxu_app_reg_write(DxuApp *a, uint32_t reg, uint32_t v);
int dxu_app_stats(DxuApp *a, struct dxu_uc_stats *s);
/* Async loopback (DXU_UC_SEL_LOOPBACK) completing on @ref. */
int dxu_app_loopback(DxuApp *a, uint64_t ref, uint64_t out_off, uint64_t in_off, uint64_t len,
                     uint64_t in_len, uint64_t tag);
/* Subscribe to events on @ref; *next: the sequence the driver expects next. */
int dxu_app_subscribe(DxuApp *a, uint64_t ref, uint64_t *next);
/* Next completion: *status 0 or -errno; data[16]. */
int dxu_app_wait(DxuApp *a, int timeout_ms, uint64_t *ref, int *status, uint64_t *data,
                 uint32_t *n);

/*
 * @count loopbacks of @size bytes (@in_extra more asked back: a short IN),
 * @depth in flight, data verified (a pattern per request from @seed).
 * The window must hold 2 * depth * (size + in_extra) bytes.
 */
typedef struct {
    uint64_t ok, failed, bad_data, bytes;
    uint64_t ns;
    int first_status;
    uint64_t first_out_status, first_in_status;
} DxuRun;
int dxu_app_loopback_run(DxuApp *a, uint64_t size, uint64_t in_extra, unsigned count,
                         unsigned depth, uint32_t seed, int timeout_ms, DxuRun *res);
/* Throughput: as dxu_app_loopback_run() (no extra), but each request's data
 * is checked through one stamp per 4 KiB page and its last word instead of
 * every byte, so the app costs next to nothing per MiB. */
int dxu_app_loopback_bench(DxuApp *a, uint64_t size, unsigned count, unsigned depth,
                           uint32_t seed, int timeout_ms, DxuRun *res);

#endif
