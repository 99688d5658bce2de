/*
 * dextlab-dma user-client protocol: shared by the driver
 * (drivers/dextlab-dma/dextlab-dma.c) and its apps (dextlab-dma-tool, the
 * e2e tests, the benchmark).  <stdint.h> only; little-endian host assumed.
 *
 * An app opens the service by class DXL_UC_CLASS (or by registry id when
 * several devices exist), sizes its data window with DXL_UC_SEL_SET_WINDOW,
 * maps it with dext_client_map_memory(DXL_UC_MEM_WINDOW) and then names
 * byte ranges of that window in requests.  The window is a DMA buffer the
 * driver prepared for the device: the app, the driver and the device share
 * its bytes, nothing is copied.  The driver never takes an address from the
 * app: a request is (queue, op, window offsets, length), validated against
 * the window and the device's limits before a descriptor is written.
 *
 * Completion of an async submit (dext_client_wait_async):
 *   status  0, or a negative errno: -EIO the device completed a descriptor
 *           with an error (data[DXL_UC_CPL_DEV_STATUS] = its DXL_ERR_*, also
 *           for a queue that halted), -ECANCELED aborted by a reset or stop.
 *   data[]  DXL_UC_CPL_* below (DXL_UC_CPL_COUNT values).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DEXTLAB_DMA_UC_H
#define DEXTLAB_DMA_UC_H

#include <stdint.h>

#define DXL_UC_CLASS        "DextlabDmaDriver"
#define DXL_UC_SERVER       "org.dextlab.dextlab-dma"
#define DXL_UC_VERSION      2   /* 2: the submission ring */

/* Client memory types for dext_client_map_memory(). */
#define DXL_UC_MEM_WINDOW   0       /* the client's current data window, read/write */
#define DXL_UC_MEM_RING     1       /* the submission ring (DXL_UC_SEL_RING_ATTACH) */

/* Limits the driver enforces (also reported by DXL_UC_SEL_INFO). */
#define DXL_UC_WINDOW_MIN   4096u
#define DXL_UC_WINDOW_MAX   (256ull << 20)
#define DXL_UC_REQ_MAX      (256ull << 20)  /* bytes per request */
#define DXL_UC_MAX_INFLIGHT 1024            /* requests per client */

/* Request opcodes. */
enum {
    DXL_UC_OP_COPY = 1,     /* window[src..+len) -> window[dst..+len), no overlap */
    DXL_UC_OP_FILL = 2,     /* 64-bit pattern (arg) -> window[dst..+len) */
    DXL_UC_OP_CRC32C = 3,   /* CRC32C of window[src..+len), continuing from arg (u32) */
    /*
     * Diagnostics: make the device fail one descriptor on purpose, to test
     * an app's and the driver's error path.  src/dst/len/arg ignored.
     */
    DXL_UC_OP_DIAG_BAD_OPCODE = 0x80,   /* device answers DXL_ERR_BAD_OPCODE */
    DXL_UC_OP_DIAG_UNMAPPED = 0x81,     /* DMA from an address nothing decodes */
};

/*
 * Selectors.  Scalars are uint64_t; the counts are exact (the dispatch
 * table enforces them).
 */
enum {
    /* out[8]: interface version, queues, window bytes, max request bytes,
     * max in-flight requests per client, bytes per descriptor, ring entries,
     * device VERSION register. */
    DXL_UC_SEL_INFO = 0,
    /* in[1]: window bytes (DXL_UC_WINDOW_MIN..MAX, rounded up to 4 KiB);
     * out[1]: the size.  -EBUSY while requests are in flight.  A previous
     * window stays allocated (and mapped in the app) until the connection
     * closes, but requests use the new one. */
    DXL_UC_SEL_SET_WINDOW = 1,
    /* async.  in[7]: queue, op, src, dst, len, arg, tag.  out[1]: request id. */
    DXL_UC_SEL_SUBMIT = 2,
    /* sync.  in[8]: queue, op, src, dst, len, arg, tag, timeout ms (1..30000).
     * out[1 + DXL_UC_CPL_COUNT]: [0] = status (0 or -errno as int64), then
     * the completion data.  The call fails only for invalid arguments; a
     * device error is reported in out[0]. */
    DXL_UC_SEL_SUBMIT_WAIT = 3,
    /* out: struct dxl_uc_stats (exact size). */
    DXL_UC_SEL_STATS = 4,
    /* Reset the device: requests in flight (every client's) complete with
     * -ECANCELED, engine and queues are set up again.  out[1]: resets so far. */
    DXL_UC_SEL_RESET = 5,
    /* out: struct dxl_uc_errlog, the latest device error-log entries. */
    DXL_UC_SEL_ERRLOG = 6,
    /* async.  struct in: 1..DXL_UC_BATCH_MAX struct dxl_uc_req; out[1]: the
     * count.  All or nothing: one invalid entry fails the call and submits
     * none.  Each request completes on its own, with the call's async
     * reference and its tag (data[DXL_UC_CPL_TAG]).  One call and one
     * doorbell per queue for many requests: the fast path for small ones. */
    DXL_UC_SEL_SUBMIT_BATCH = 7,
    /* async.  Attach the connection's submission ring (struct dxl_uc_ring,
     * below; map it with DXL_UC_MEM_RING): every request the app publishes
     * there completes with this call's async reference and its tag.
     * out[1]: entries.  -EBUSY if attached already.  Once per connection. */
    DXL_UC_SEL_RING_ATTACH = 8,
    /* async, no in/out.  Take what the ring holds now; call it (posted,
     * with the ring's reference) after publishing when need_kick is set.
     * -ENXIO without a ring, -EPROTO for a ring the app broke. */
    DXL_UC_SEL_RING_KICK = 9,
    DXL_UC_SEL_COUNT
};

struct dxl_uc_req {
    uint64_t queue, op, src, dst, len, arg, tag;
};

#define DXL_UC_BATCH_MAX 64     /* 64 * 56 bytes fits one structure input */

/*
 * Submission ring: requests without a message per request (DriverKit's
 * shared-memory data queues; the notification suppression of virtio and
 * io_uring's SQ polling).  Memory shared by the app and the driver:
 *
 *   app:    e[tail % DXL_UC_RING_ENTRIES] = req; store-release tail + 1;
 *           full fence; if (need_kick) post DXL_UC_SEL_RING_KICK.
 *   driver: takes entries from its own head (it never reads head back),
 *           copying each out before validating it, and publishes head.
 *           While the app has requests in flight, the driver looks at the
 *           ring again after each of them completes, and need_kick is 0;
 *           when nothing is in flight it sets need_kick, fences and looks
 *           once more.  The two fences make sure that either the app sees
 *           need_kick or the driver sees the new tail: no entry waits.
 *
 * The app may publish at most DXL_UC_RING_ENTRIES - (tail - head) more
 * entries.  An entry the driver refuses (the rules of DXL_UC_SEL_SUBMIT)
 * completes at once with -EINVAL and its tag; the next ones go on.  A tail
 * more than DXL_UC_RING_ENTRIES ahead of head breaks the ring: status is
 * set to EPROTO and nothing more is taken (requests in flight complete).
 * Entries are checked against the window current when the driver takes
 * them.  Every field the app writes is untrusted.
 */
#define DXL_UC_RING_ENTRIES 256

struct dxl_uc_ring {
    uint32_t tail;              /* app: entries published (free running) */
    uint32_t rsvd0[15];
    uint32_t head;              /* driver: entries taken (free running) */
    uint32_t need_kick;         /* driver: 1 = kick after publishing */
    uint32_t status;            /* driver: 0, or EPROTO once broken */
    uint32_t rsvd1[13];
    struct dxl_uc_req e[DXL_UC_RING_ENTRIES];
};

/* Completion data indices. */
enum {
    DXL_UC_CPL_TAG = 0,         /* the app's tag */
    DXL_UC_CPL_RESULT,          /* CRC32C: the CRC; else bytes moved */
    DXL_UC_CPL_DEV_STATUS,      /* first DXL_ERR_* the device reported, or 0 */
    DXL_UC_CPL_BYTES,           /* bytes completed successfully */
    DXL_UC_CPL_T_SUBMIT,        /* CLOCK_MONOTONIC ns: driver accepted it */
    DXL_UC_CPL_T_IRQ,           /* ns: the interrupt that completed it was seen */
    DXL_UC_CPL_T_DONE,          /* ns: the driver finished it */
    DXL_UC_CPL_DESCS,           /* descriptors it took */
    DXL_UC_CPL_COUNT
};

#define DXL_UC_NUM_QUEUES 8

struct dxl_uc_queue_stats {
    uint64_t requests;          /* accepted */
    uint64_t req_ok;
    uint64_t req_failed;        /* device error or cancelled */
    uint64_t bytes;             /* payload bytes of successful descriptors */
    uint64_t descs;             /* descriptors submitted */
    uint64_t completions;       /* completions reaped from the CQ */
    uint64_t cpl_errors;        /* completions with a device error status */
    uint64_t irqs;              /* interrupts handled (sum of counts) */
    uint64_t irq_calls;         /* handler invocations */
    uint64_t doorbells;         /* SQ tail writes */
    uint64_t halts;             /* queue halted and recovered */
};

struct dxl_uc_stats {
    uint32_t version;           /* DXL_UC_VERSION */
    uint32_t num_queues;
    /* the device's own counters (DXL_REG_STAT_*), read at the call */
    uint64_t dev_desc, dev_bytes, dev_errors, dev_irqs, dev_doorbells;
    /* driver-wide */
    uint64_t irqs_admin;        /* admin/error vector interrupts handled */
    uint64_t errlog_entries;    /* error-log entries drained */
    uint64_t errlog_overflow;   /* entries the device dropped (FIFO full) */
    uint64_t resets;            /* device resets (start + DXL_UC_SEL_RESET) */
    /* submission rings, all clients */
    uint64_t ring_taken;        /* entries taken (valid or not) */
    uint64_t ring_refused;      /* entries completed -EINVAL */
    uint64_t ring_kicks;        /* DXL_UC_SEL_RING_KICK calls */
    uint64_t ring_drains;       /* looks at a ring after a completion */
    struct dxl_uc_queue_stats q[DXL_UC_NUM_QUEUES];
};

#define DXL_UC_ERRLOG_MAX 16

struct dxl_uc_errlog_entry {
    uint64_t seq;               /* 1, 2, ... since the driver started */
    uint64_t addr;              /* ERR_ADDR: offending address or value */
    uint32_t code;              /* DXL_ERR_* */
    uint32_t queue;             /* 0..7, or 0xff */
    uint32_t index;             /* SQ slot or register offset */
    uint32_t rsvd;
};

struct dxl_uc_errlog {
    uint32_t count;             /* valid entries, oldest first */
    uint32_t rsvd;
    uint64_t total;             /* entries drained since start */
    struct dxl_uc_errlog_entry e[DXL_UC_ERRLOG_MAX];
};

#endif /* DEXTLAB_DMA_UC_H */
