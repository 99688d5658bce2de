/* USB match keys -> DextDeviceInfo; see usb-match.h. */
#include <string.h>

#include "usb-match.h"

static void put(DextDeviceInfo *o, unsigned key, uint32_t v)
{
    o->usb[key] = v;
    o->usb_has[key] = true;
}

void dext_usb_match_info(const DextUsbMatchKeys *k, DextDeviceInfo *out)
{
    memset(out, 0, sizeof(*out));
    out->kind = k->is_interface ? DEXT_PROVIDER_USB_INTERFACE
                                : DEXT_PROVIDER_USB_DEVICE;
    put(out, DEXT_USB_ID_VENDOR, k->idVendor);
    put(out, DEXT_USB_ID_PRODUCT, k->idProduct);
    put(out, DEXT_USB_BCD_DEVICE, k->bcdDevice);
    if (k->bConfigurationValue) {
        put(out, DEXT_USB_CONFIG_VALUE, k->bConfigurationValue);
    }
    if (k->is_interface) {
        put(out, DEXT_USB_IF_NUMBER, k->bInterfaceNumber);
        put(out, DEXT_USB_IF_CLASS, k->bInterfaceClass);
        put(out, DEXT_USB_IF_SUBCLASS, k->bInterfaceSubClass);
        put(out, DEXT_USB_IF_PROTOCOL, k->bInterfaceProtocol);
    }
}
