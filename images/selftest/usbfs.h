/*
 * usbfs.h: a small usbfs client for one USB device, the USB half of the
 * runtime's in-guest platform backend (the PCI half is vfio.h).
 *
 * The guest kernel's xhci driver owns the controller; user space reaches a
 * device through /dev/bus/usb/BBB/DDD: claim an interface, pick an alternate
 * setting, submit URBs and reap them (bounded waits, POLLOUT on the fd).
 *
 * Conventions as in vfio.h: 0 / non-negative on success, negative errno on
 * failure, nothing printed; struct dxl_usb is opaque, dxl_usb_close()
 * releases the claimed interfaces and the fd.  One thread per device.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef DXL_USBFS_H
#define DXL_USBFS_H

#include <stddef.h>
#include <stdint.h>

struct dxl_usb;

/*
 * Find the @index-th device (0-based, in sysfs name order) with @vid:@pid;
 * its sysfs name ("1-1", "2-1.3") goes to @name.  -ENOENT if none.
 */
int dxl_usb_find(uint16_t vid, uint16_t pid, unsigned index, char *name,
                 size_t len);

int dxl_usb_open(const char *sysname, struct dxl_usb **out);
void dxl_usb_close(struct dxl_usb *u);

/* Link speed in Mb/s as sysfs reports it (12, 480, 5000, ...). */
int dxl_usb_speed(const struct dxl_usb *u);

int dxl_usb_claim(struct dxl_usb *u, unsigned iface);
int dxl_usb_set_alt(struct dxl_usb *u, unsigned iface, unsigned alt);
int dxl_usb_clear_halt(struct dxl_usb *u, unsigned ep);

/* A control transfer; returns the bytes transferred. */
int dxl_usb_control(struct dxl_usb *u, uint8_t type, uint8_t req,
                    uint16_t value, uint16_t index, void *data, uint16_t len,
                    unsigned timeout_ms);

/*
 * One bulk or interrupt transfer on endpoint @ep (direction from bit 7),
 * submitted as an URB and reaped within @timeout_ms (discarded on timeout:
 * -ETIMEDOUT).  Returns the bytes transferred.
 */
int dxl_usb_bulk(struct dxl_usb *u, uint8_t ep, void *data, unsigned len,
                 unsigned timeout_ms);
int dxl_usb_interrupt(struct dxl_usb *u, uint8_t ep, void *data, unsigned len,
                      unsigned timeout_ms);

#endif /* DXL_USBFS_H */
