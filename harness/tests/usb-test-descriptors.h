/* Descriptor sets the USB client tests feed the library, as a provider
 * would send them for a dextlab-usb at high speed. */
#ifndef DEXTLAB_USB_TEST_DESCRIPTORS_H
#define DEXTLAB_USB_TEST_DESCRIPTORS_H

#include <stdint.h>

/* Config, interface 0 alt 0 (3 EPs), a class-specific descriptor,
 * interface 0 alt 1 (3 EPs). */
static const uint8_t cfg_hs[] = {
    9, 2, 69, 0, 1, 1, 4, 0x80, 50,
    9, 4, 0, 0, 3, 0xff, 0x44, 0x01, 5,
    7, 5, 0x01, 2, 0x00, 0x02, 0,
    7, 5, 0x81, 2, 0x00, 0x02, 0,
    7, 5, 0x82, 3, 16, 0, 4,
    9, 4, 0, 1, 3, 0xff, 0x44, 0x01, 6,
    7, 5, 0x01, 2, 0x00, 0x02, 0,
    7, 5, 0x81, 2, 0x00, 0x02, 0,
    7, 5, 0x82, 3, 64, 0, 4,
};

#endif /* DEXTLAB_USB_TEST_DESCRIPTORS_H */
