/*
 * dextlab DMA engine: register map, descriptor and completion formats.
 *
 * This header is the single source of truth shared by the QEMU device model
 * (hw/dextlab/dextlab-dma.c), its qtests and the user-space drivers.  It
 * depends on <stdint.h> only.  All multi-byte fields are little-endian.
 * The full datasheet is docs/devices/dextlab-dma.md.
 *
 * Compatibility rule: once published, offsets, bit positions and codes are
 * only ever added to, never moved or renumbered.
 *
 * Copyright (c) 2026 dextlab contributors
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef HW_DEXTLAB_DEXTLAB_DMA_REGS_H
#define HW_DEXTLAB_DEXTLAB_DMA_REGS_H

#include <stdint.h>

/*
 * PCI identity.
 *
 * 0x1b36 (Red Hat) is QEMU's own vendor ID; its device IDs are handed out by
 * upstream QEMU (docs/specs/pci-ids.rst) and must not be taken by an
 * out-of-tree device.  0xdec5 ("DExtlab Sim") is not assigned in the PCI ID
 * repository (pci.ids lists ...dcba, dd01, dead, deaf, deda, e000...), so the
 * pair cannot collide with a real device or a Linux in-tree driver, which
 * matters when the guest binds the function to vfio-pci by ID.
 */
#define DXL_PCI_VENDOR_ID           0xdec5
#define DXL_DMA_PCI_DEVICE_ID       0x0001  /* this device */
#define DXL_USB_PCI_DEVICE_ID       0x0002  /* reserved for dextlab-usb */
#define DXL_DMA_PCI_REVISION        0x01
#define DXL_DMA_PCI_CLASS           0x088000 /* system peripheral, other */
#define DXL_DMA_PCI_SUBVENDOR_ID    DXL_PCI_VENDOR_ID
#define DXL_DMA_PCI_SUBSYSTEM_ID    0x0001

/*
 * BARs (all 32-bit memory BARs).
 *   BAR0  registers, non-prefetchable, DXL_DMA_BAR0_SIZE bytes
 *   BAR1  MSI-X table at offset 0, PBA at DXL_DMA_MSIX_PBA_OFFSET
 *   BAR2  device-local memory, prefetchable, DXL_DMA_DEVMEM_SIZE bytes,
 *         plain RAM semantics (any access size), also reachable by the DMA
 *         engine with the *_DEV opcodes (addresses are offsets into it).
 */
#define DXL_DMA_BAR_REGS            0
#define DXL_DMA_BAR_MSIX            1
#define DXL_DMA_BAR_DEVMEM          2
#define DXL_DMA_BAR0_SIZE           0x4000u
#define DXL_DMA_MSIX_TABLE_OFFSET   0x0000u
#define DXL_DMA_MSIX_PBA_OFFSET     0x0800u
#define DXL_DMA_DEVMEM_SIZE         (1u << 20)

/* Capability list offsets in configuration space (informative). */
#define DXL_DMA_CAP_PM_OFFSET       0x40
#define DXL_DMA_CAP_MSI_OFFSET      0x50
#define DXL_DMA_CAP_MSIX_OFFSET     0x70
#define DXL_DMA_CAP_EXP_OFFSET      0x80    /* only on a PCI Express bus */

/* Engine limits. */
#define DXL_DMA_NUM_QUEUES          8
#define DXL_DMA_QUEUE_MIN_ENTRIES   2
#define DXL_DMA_QUEUE_MAX_ENTRIES   4096    /* power of two in [MIN, MAX] */
#define DXL_DMA_MAX_XFER            (16u << 20) /* bytes per descriptor */
#define DXL_DMA_ERRLOG_DEPTH        16

/*
 * Interrupt vectors.  MSI-X: vector 0 = admin/error, vector 1 + q = queue q.
 * MSI: a single vector (0) for every cause.  INTx: pin A, level, asserted
 * while (INT_STATUS & ~INT_MASK) != 0.
 */
#define DXL_DMA_MSIX_VECTORS        (1 + DXL_DMA_NUM_QUEUES)
#define DXL_DMA_VEC_ADMIN           0
#define DXL_DMA_VEC_QUEUE(q)        (1 + (q))

/* ------------------------------------------------------------------------ */
/*
 * BAR0 global registers.  All registers are 32 bits wide; 64-bit counters
 * are LO/HI pairs (read HI, LO, HI and retry if HI changed).  Accesses must
 * be 4 bytes (8-byte accesses are split into LO then HI).
 */

#define DXL_REG_ID                  0x000   /* RO  DXL_DMA_ID_MAGIC */
#define DXL_REG_VERSION             0x004   /* RO  major << 16 | minor */
#define DXL_REG_CAP                 0x008   /* RO  DXL_CAP_* */
#define DXL_REG_DEVMEM_SIZE         0x00c   /* RO  bytes of BAR2 memory */
#define DXL_REG_MAX_XFER            0x010   /* RO  DXL_DMA_MAX_XFER */
#define DXL_REG_QUEUE_MAX           0x014   /* RO  DXL_DMA_QUEUE_MAX_ENTRIES */
#define DXL_REG_LINK                0x018   /* RO  DXL_LINK_* (timing model) */
#define DXL_REG_SCRATCH             0x01c   /* RW  no side effects */
#define DXL_REG_CTRL                0x020   /* RW  DXL_CTRL_* */
#define DXL_REG_STATUS              0x024   /* RO  DXL_STATUS_* */
#define DXL_REG_INT_STATUS          0x028   /* RW1C DXL_INT_* causes */
#define DXL_REG_INT_MASK            0x02c   /* RW  1 = cause masked */
#define DXL_REG_INT_SET             0x030   /* WO  write 1 sets a cause */

#define DXL_DMA_ID_MAGIC            0x4d445844u /* "DXDM" in memory order */
#define DXL_DMA_VERSION_MAJOR       1
#define DXL_DMA_VERSION_MINOR       0
#define DXL_DMA_VERSION \
    ((DXL_DMA_VERSION_MAJOR << 16) | DXL_DMA_VERSION_MINOR)

/* DXL_REG_CAP */
#define DXL_CAP_NUM_QUEUES_MASK     0x000000ffu /* number of queues */
#define DXL_CAP_NUM_VECTORS_SHIFT   8
#define DXL_CAP_NUM_VECTORS_MASK    0x0000ff00u /* MSI-X vectors */
#define DXL_CAP_OP_COPY             (1u << 16)
#define DXL_CAP_OP_DEV              (1u << 17)  /* WRITE_DEV / READ_DEV */
#define DXL_CAP_OP_FILL             (1u << 18)
#define DXL_CAP_OP_CRC32C           (1u << 19)
#define DXL_CAP_FENCE               (1u << 20)
#define DXL_CAP_COALESCE            (1u << 21)
#define DXL_CAP_ERRLOG              (1u << 22)
#define DXL_CAP_PACING              (1u << 23)  /* timing model present */

/* DXL_REG_LINK: the timing model's link; 0 in both fields = unpaced */
#define DXL_LINK_GEN_MASK           0x0000000fu /* 1..5, 0 = unpaced */
#define DXL_LINK_WIDTH_SHIFT        4
#define DXL_LINK_WIDTH_MASK         0x000003f0u /* lanes: 1,2,4,8,16 */

/* DXL_REG_CTRL */
#define DXL_CTRL_ENABLE             (1u << 0)   /* engine runs queues */
/* WO, self-clearing: full register reset */
#define DXL_CTRL_RESET              (1u << 1)

/* DXL_REG_STATUS */
#define DXL_STATUS_READY            (1u << 0)   /* CTRL.ENABLE latched */
#define DXL_STATUS_BUSY             (1u << 1)   /* some queue has work */
#define DXL_STATUS_ERRLOG           (1u << 2)   /* error log not empty */
/* PCI_COMMAND.MASTER clear: engine stalled */
#define DXL_STATUS_NO_BUSMASTER     (1u << 3)
#define DXL_STATUS_LOW_POWER        (1u << 4)   /* not in D0: stalled */

/* DXL_REG_INT_STATUS / INT_MASK / INT_SET */
#define DXL_INT_QUEUE(q)            (1u << (q)) /* queue q interrupt event */
#define DXL_INT_QUEUE_ALL           ((1u << DXL_DMA_NUM_QUEUES) - 1)
#define DXL_INT_ERROR               (1u << 16)  /* error log entry added */
#define DXL_INT_ALL                 (DXL_INT_QUEUE_ALL | DXL_INT_ERROR)

/* Error log: a FIFO of the oldest unread errors. */
#define DXL_REG_ERR_COUNT           0x100   /* RO  entries in the FIFO */
#define DXL_REG_ERR_OVERFLOW        0x104   /* RO  entries lost (FIFO full) */
#define DXL_REG_ERR_TOTAL           0x108   /* RO  errors since reset */
#define DXL_REG_ERR_HEAD            0x10c   /* RO  oldest entry: DXL_ERRH_* */
#define DXL_REG_ERR_ADDR_LO         0x110   /* RO  offending address/value */
#define DXL_REG_ERR_ADDR_HI         0x114
#define DXL_REG_ERR_POP             0x118   /* WO  write 1: drop oldest */

#define DXL_ERRH_CODE_MASK          0x000000ffu /* DXL_ERR_* */
#define DXL_ERRH_QUEUE_SHIFT        8
#define DXL_ERRH_QUEUE_MASK         0x0000ff00u /* 0xff = not a queue */
#define DXL_ERRH_INDEX_SHIFT        16
#define DXL_ERRH_INDEX_MASK         0xffff0000u /* SQ slot, if any */
#define DXL_ERR_QUEUE_NONE          0xff

/* Global statistics (also QOM properties stat-*, see datasheet). */
#define DXL_REG_STAT_DESC_LO        0x200   /* descriptors completed */
#define DXL_REG_STAT_DESC_HI        0x204
#define DXL_REG_STAT_BYTES_LO       0x208   /* payload bytes moved */
#define DXL_REG_STAT_BYTES_HI       0x20c
#define DXL_REG_STAT_ERRORS_LO      0x210   /* error completions + log */
#define DXL_REG_STAT_ERRORS_HI      0x214
#define DXL_REG_STAT_IRQS_LO        0x218   /* interrupt messages/assertions */
#define DXL_REG_STAT_IRQS_HI        0x21c
#define DXL_REG_STAT_DOORBELLS_LO   0x220   /* SQ tail doorbell writes */
#define DXL_REG_STAT_DOORBELLS_HI   0x224

/* ------------------------------------------------------------------------ */
/* Per-queue register blocks: queue q at DXL_REG_Q_BASE + q * STRIDE */

#define DXL_REG_Q_BASE              0x1000
#define DXL_REG_Q_STRIDE            0x100
#define DXL_REG_Q(q, reg)           (DXL_REG_Q_BASE + (q) * DXL_REG_Q_STRIDE + \
                                     (reg))

#define DXL_Q_SQ_BASE_LO            0x00    /* RW  SQ ring, 32-byte aligned */
#define DXL_Q_SQ_BASE_HI            0x04
#define DXL_Q_SQ_SIZE               0x08    /* RW  entries, power of two */
#define DXL_Q_SQ_TAIL               0x0c    /* RW  doorbell: producer index */
#define DXL_Q_SQ_HEAD               0x10    /* RO  device consumer index */
#define DXL_Q_CQ_BASE_LO            0x14    /* RW  CQ ring, 16-byte aligned */
#define DXL_Q_CQ_BASE_HI            0x18
#define DXL_Q_CQ_SIZE               0x1c    /* RW  entries, power of two */
#define DXL_Q_CQ_HEAD               0x20    /* RW  driver consumer index */
#define DXL_Q_CQ_TAIL               0x24    /* RO  device producer index */
#define DXL_Q_CTRL                  0x28    /* RW  DXL_QCTRL_* */
#define DXL_Q_STATUS                0x2c    /* RO  DXL_QSTS_* */
/* RW  interrupt after N requests (0 and 1: after each) */
#define DXL_Q_COAL_COUNT            0x30
/* RW  interrupt at most N us after the first pending request (0 = off) */
#define DXL_Q_COAL_USEC             0x34
#define DXL_Q_STAT_DESC_LO          0x40    /* RO  descriptors completed */
#define DXL_Q_STAT_DESC_HI          0x44
#define DXL_Q_STAT_BYTES_LO         0x48    /* RO  payload bytes */
#define DXL_Q_STAT_BYTES_HI         0x4c
#define DXL_Q_STAT_ERRORS           0x50    /* RO  error completions */

/* DXL_Q_CTRL */
#define DXL_QCTRL_ENABLE            (1u << 0)   /* validate rings and run */
/* WO, self-clearing: stop, zero the queue's registers and errors */
#define DXL_QCTRL_RESET             (1u << 1)

/* DXL_Q_STATUS */
#define DXL_QSTS_ENABLED            (1u << 0)
#define DXL_QSTS_BUSY               (1u << 1)   /* SQ head != tail */
/* fatal queue error; needs QCTRL.RESET */
#define DXL_QSTS_HALTED             (1u << 2)
#define DXL_QSTS_CQ_FULL            (1u << 3)   /* stalled on a full CQ */
#define DXL_QSTS_FENCE_WAIT         (1u << 4)   /* fenced descriptor waiting */
#define DXL_QSTS_ERR_SHIFT          8
#define DXL_QSTS_ERR_MASK           0x0000ff00u /* last queue-level DXL_ERR_* */

/* ------------------------------------------------------------------------ */
/* Descriptor (submission queue entry), 32 bytes, little-endian. */

struct dxl_dma_desc {
    uint8_t  opcode;    /* DXL_OP_* */
    uint8_t  flags;     /* DXL_DESC_F_* */
    uint16_t rsvd0;     /* must be 0 */
    uint32_t length;    /* bytes, 1 .. DXL_DMA_MAX_XFER (NOP: 0) */
    uint64_t src;       /* see opcode table */
    uint64_t dst;       /* see opcode table */
    uint64_t cookie;    /* returned verbatim in the completion */
} __attribute__((packed));

_Static_assert(sizeof(struct dxl_dma_desc) == 32, "dxl_dma_desc size");

/*
 * Opcodes.  "host" = bus address in the function's DMA address space,
 * "dev" = byte offset into BAR2 device memory.
 *   NOP        no data; length, src, dst must be 0
 *   COPY       host src -> host dst (ranges must not overlap)
 *   WRITE_DEV  host src -> dev dst
 *   READ_DEV   dev src -> host dst
 *   FILL       64-bit pattern in src, repeated little-endian -> host dst
 *              (byte i of dst gets byte (i % 8) of the pattern)
 *   CRC32C     CRC32C (Castagnoli, reflected, as iSCSI) of host src;
 *              dst[31:0] is the CRC of previous data to continue from
 *              (0 to start), dst[63:32] must be 0; result in cpl.result
 */
#define DXL_OP_NOP                  0x00
#define DXL_OP_COPY                 0x01
#define DXL_OP_WRITE_DEV            0x02
#define DXL_OP_READ_DEV             0x03
#define DXL_OP_FILL                 0x04
#define DXL_OP_CRC32C               0x05
#define DXL_OP_MAX                  DXL_OP_CRC32C

#define DXL_DESC_F_IRQ              (1u << 0)   /* completion requests irq */
/* start only when no other queue has a descriptor in progress */
#define DXL_DESC_F_FENCE            (1u << 1)
#define DXL_DESC_F_VALID_MASK       (DXL_DESC_F_IRQ | DXL_DESC_F_FENCE)

/* ------------------------------------------------------------------------ */
/* Completion (completion queue entry), 16 bytes, little-endian. */

struct dxl_dma_cpl {
    uint64_t cookie;    /* from the descriptor (0 if it could not be read) */
    uint32_t result;    /* CRC32C: the CRC; else bytes actually moved */
    uint16_t sq_head;   /* SQ consumer index after this descriptor */
    uint8_t  status;    /* DXL_ERR_*, 0 = success */
    uint8_t  flags;     /* DXL_CPL_F_* */
} __attribute__((packed));

_Static_assert(sizeof(struct dxl_dma_cpl) == 16, "dxl_dma_cpl size");

/*
 * Phase tag: the device writes PHASE = 1 on its first pass through the CQ
 * and inverts it on each wrap, so a driver finds new entries by polling
 * memory, without register reads.
 */
#define DXL_CPL_F_PHASE             (1u << 0)

/* ------------------------------------------------------------------------ */
/* Status / error codes: completion status and error log DXL_ERRH_CODE. */

#define DXL_ERR_OK                  0x00
/* Descriptor errors: an error completion, the queue carries on. */
#define DXL_ERR_BAD_OPCODE          0x01
#define DXL_ERR_BAD_LENGTH          0x02    /* 0 or > MAX_XFER (or NOP != 0) */
#define DXL_ERR_BAD_FLAGS           0x03    /* reserved flag bits set */
#define DXL_ERR_RSVD_FIELD          0x04    /* reserved field not 0 */
#define DXL_ERR_ADDR_WRAP           0x05    /* addr + length wraps 2^64 */
#define DXL_ERR_DMA_UNMAPPED        0x06    /* nothing decodes the address */
#define DXL_ERR_DMA_MMIO            0x07    /* address decodes to MMIO/ROM */
#define DXL_ERR_DMA_SELF            0x08    /* address in this device's BARs */
#define DXL_ERR_DEVMEM_RANGE        0x09    /* dev offset+length > DEVMEM */
#define DXL_ERR_OVERLAP             0x0a    /* COPY src/dst overlap */
#define DXL_ERR_DMA_READ            0x0b    /* bus error reading */
#define DXL_ERR_DMA_WRITE           0x0c    /* bus error writing */
/* Queue / register errors: error log only. */
#define DXL_ERR_BAD_SQ_BASE         0x20    /* misaligned or not RAM */
#define DXL_ERR_BAD_SQ_SIZE         0x21
#define DXL_ERR_BAD_CQ_BASE         0x22
#define DXL_ERR_BAD_CQ_SIZE         0x23
#define DXL_ERR_BAD_SQ_TAIL         0x24    /* doorbell >= SQ size: ignored */
#define DXL_ERR_BAD_CQ_HEAD         0x25    /* >= CQ size: ignored */
#define DXL_ERR_SQ_FETCH            0x26    /* descriptor read failed: halt */
#define DXL_ERR_CQ_WRITE            0x27    /* completion write failed: halt */
#define DXL_ERR_QUEUE_DISABLED      0x28    /* doorbell on a disabled queue */
/* write to a read-only/unknown register, or ring setup while enabled */
#define DXL_ERR_REG_ACCESS          0x30

#endif /* HW_DEXTLAB_DEXTLAB_DMA_REGS_H */
