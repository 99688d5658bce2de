/*
 * dextlab direct MMIO channel: the records a driver process and QEMU (the
 * dextlab fork's qtest "mmio_channel" command, hw/patches/0006) exchange
 * over a SOCK_SEQPACKET socket, one record per message, host byte order.
 *
 * dextd opens the channel for one PCI function (the BAR windows it grants,
 * guest-physical base + length per BAR), hands the driver its end and can
 * revoke it at any time (mmio_channel_close): the driver then sees EOF or
 * EPIPE.  See docs/runtime/platform.md, "The direct path".
 *
 *   DEXT_MMIO_OP_WRITE  posted: no reply; a failed write is dropped and
 *                       counted by QEMU
 *   DEXT_MMIO_OP_READ   reply: status, val
 *   DEXT_MMIO_OP_SYNC   reply (val 0) once every record sent before it has
 *                       been performed
 *
 * status: 0, -EINVAL (bad op/size/bar or a message that is not exactly
 * sizeof(DextMmioReq) bytes), -EFAULT (off + size outside the BAR window),
 * -EIO (the memory transaction failed).  QEMU restates this layout (it
 * cannot include harness headers); its regression qtest checks it.
 */
#ifndef DEXT_MMIO_CHANNEL_H
#define DEXT_MMIO_CHANNEL_H

#include <stdint.h>

#define DEXT_MMIO_OP_WRITE  1
#define DEXT_MMIO_OP_READ   2
#define DEXT_MMIO_OP_SYNC   3

#define DEXT_MMIO_MAX_BARS  6

typedef struct DextMmioReq {
    uint8_t op, size, bar, pad0;
    uint32_t pad1;
    uint64_t off;
    uint64_t val;
} DextMmioReq;                                   /* 24 bytes */

typedef struct DextMmioResp {
    int32_t status;
    uint32_t pad;
    uint64_t val;
} DextMmioResp;                                  /* 16 bytes */

_Static_assert(sizeof(DextMmioReq) == 24, "DextMmioReq is 24 bytes");
_Static_assert(sizeof(DextMmioResp) == 16, "DextMmioResp is 16 bytes");

#endif
