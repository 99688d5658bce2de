/*
 * Test bed for harness/usb tests and the benchmark: starts the fork with
 * qemu-xhci (and what the caller adds), attaches the platform to it
 * through a qtest interposer, and gives the xHCI driver a clock.
 *
 * Why an interposer: under -accel qtest QEMU's virtual clock moves only on
 * the qtest "clock_step" command, qemu-xhci schedules interrupt endpoints
 * on that clock, and the platform API has no clock call (yet).  The
 * interposer sits on the qtest socket between the platform and QEMU,
 * forwards every line, and injects clock_step commands of its own,
 * swallowing their replies (qtest answers commands in order; asynchronous
 * lines start with "IRQ").
 */
#ifndef DEXT_USB_TESTBED_H
#define DEXT_USB_TESTBED_H

#include "usb.h"

typedef struct UsbTestbed UsbTestbed;

/* @devices: NULL-terminated -device arguments; the first xHCI is the one
 * the host takes.  Returns NULL (with a message on stderr) on failure. */
UsbTestbed *usb_testbed_start(const char *const *devices,
                              const DextUsbHostConfig *hcfg);
/* The same machine started by the platform itself (no interposer): the
 * production path, for throughput figures; no clock, so interrupt
 * endpoints do not complete. */
UsbTestbed *usb_testbed_start_direct(const char *const *devices,
                                     const DextUsbHostConfig *hcfg);
void usb_testbed_stop(UsbTestbed *tb);
DextPlatform *usb_testbed_platform(UsbTestbed *tb);
DextUsbHost *usb_testbed_host(UsbTestbed *tb);
/* qtest clock_step through the interposer (0 or -errno). */
int usb_testbed_clock_step(UsbTestbed *tb, uint64_t ns);
/* DextXhciClockFn adapter (opaque = UsbTestbed *). */
int usb_testbed_clock_fn(void *opaque, uint64_t ns);

#endif
