/*
 * User client of the dextlab-xhci driver process (selectors and records),
 * shared by the driver and its apps/tests.  stdint only.
 */
#ifndef DEXTLAB_XHCI_UC_H
#define DEXTLAB_XHCI_UC_H

#include <stdint.h>

#define DXHCI_SERVER_NAME   "org.dextlab.dextlab-xhci"
#define DXHCI_UC_MAX_DEVS   16

enum {
    /* out: scalar[0] = n; struct = n x DxhciUcDev */
    DXHCI_UC_LIST = 0,
    /* in: port, length (<= DXHCI_UC_LOOP_MAX), seed; out: scalar[0] =
     * bytes looped and verified.  The device on @port must be a
     * dextlab-usb: OUT then IN through its FIFO, data compared. */
    DXHCI_UC_LOOPBACK = 1,
    /* in: port, register; out: scalar[0] = value (READ_REG).  A device
     * STALL (unknown register) is -EPROTO. */
    DXHCI_UC_READ_REG = 2,
    /* out: events, interrupts, bad events, msix (0/1) */
    DXHCI_UC_STATS = 3,
    DXHCI_UC_COUNT = 4,
};

#define DXHCI_UC_LOOP_MAX   (1024 * 1024)

typedef struct DxhciUcDev {
    uint8_t port;
    uint8_t speed;          /* DEXT_USB_SPEED_* */
    uint16_t id_vendor;
    uint16_t id_product;
    uint16_t bcd_device;
} DxhciUcDev;

#endif
