/*
 * USB match keys -> the core matcher's device facts (harness/common
 * personality.h), so dextd (or a test) can run dext_match_select() on a
 * device or interface found by the USB host.  Pure functions.
 */
#ifndef DEXT_USB_MATCH_H
#define DEXT_USB_MATCH_H

#include "usb.h"
#include "personality.h"

/* Fill @out (zeroed first) from @k: kind IOUSBHostDevice or
 * IOUSBHostInterface, every key present that applies to that kind
 * (interface keys only for interfaces, as DriverKit matches them). */
void dext_usb_match_info(const DextUsbMatchKeys *k, DextDeviceInfo *out);

#endif
