/*
 * What both implementations of the family API (usb.c over the user-space
 * xHCI driver, usb-usbfs.c over Linux usbfs) share: the descriptor parsers
 * (pure functions over untrusted bytes) and the standard requests built on
 * dext_usb_device_control(); see usb.h.
 */
#include <errno.h>
#include <string.h>

#include "usb.h"

#define USB_DT_DEVICE       1
#define USB_DT_CONFIG       2
#define USB_DT_STRING       3
#define USB_DT_INTERFACE    4
#define USB_DT_ENDPOINT     5
#define USB_DT_SS_EP_COMP   0x30

/* ----------------------------------------------------- descriptor parse */

int dext_usb_parse_device(const uint8_t *b, size_t len, DextUsbDeviceDesc *o)
{
    if (len < 18 || b[0] < 18 || b[1] != USB_DT_DEVICE) {
        return -EINVAL;
    }
    o->bcdUSB = b[2] | b[3] << 8;
    o->bDeviceClass = b[4];
    o->bDeviceSubClass = b[5];
    o->bDeviceProtocol = b[6];
    o->bMaxPacketSize0 = b[7];
    o->idVendor = b[8] | b[9] << 8;
    o->idProduct = b[10] | b[11] << 8;
    o->bcdDevice = b[12] | b[13] << 8;
    o->iManufacturer = b[14];
    o->iProduct = b[15];
    o->iSerialNumber = b[16];
    o->bNumConfigurations = b[17];
    return 0;
}

void dext_usb_config_desc_free(DextUsbConfigDesc *c)
{
    g_free(c->alts);
    memset(c, 0, sizeof(*c));
}

int dext_usb_parse_config(const uint8_t *b, size_t len, DextUsbConfigDesc *o)
{
    GArray *alts;
    DextUsbInterfaceDesc *cur = NULL;
    DextUsbEndpointDesc *last_ep = NULL;
    size_t off;

    memset(o, 0, sizeof(*o));
    if (len < 9 || b[0] < 9 || b[1] != USB_DT_CONFIG) {
        return -EINVAL;
    }
    o->wTotalLength = b[2] | b[3] << 8;
    o->bNumInterfaces = b[4];
    o->bConfigurationValue = b[5];
    o->iConfiguration = b[6];
    o->bmAttributes = b[7];
    o->bMaxPower = b[8];
    if (o->wTotalLength < 9 || o->wTotalLength > len) {
        return -EINVAL;
    }
    len = o->wTotalLength;
    alts = g_array_new(FALSE, TRUE, sizeof(DextUsbInterfaceDesc));
    for (off = b[0]; off < len;) {
        const uint8_t *d = b + off;

        /* a descriptor must fit and make progress */
        if (len - off < 2 || d[0] < 2 || d[0] > len - off) {
            g_array_free(alts, TRUE);
            return -EINVAL;
        }
        switch (d[1]) {
        case USB_DT_INTERFACE:
            if (d[0] < 9) {
                goto bad;
            }
            g_array_set_size(alts, alts->len + 1);
            cur = &g_array_index(alts, DextUsbInterfaceDesc, alts->len - 1);
            cur->bInterfaceNumber = d[2];
            cur->bAlternateSetting = d[3];
            cur->bNumEndpoints = d[4];
            cur->bInterfaceClass = d[5];
            cur->bInterfaceSubClass = d[6];
            cur->bInterfaceProtocol = d[7];
            cur->iInterface = d[8];
            last_ep = NULL;
            break;
        case USB_DT_ENDPOINT:
            if (d[0] < 7 || !cur || cur->n_endpoints >= 30 ||
                (d[2] & 0x0f) == 0) {
                goto bad;
            }
            last_ep = &cur->endpoints[cur->n_endpoints++];
            last_ep->bEndpointAddress = d[2];
            last_ep->bmAttributes = d[3];
            last_ep->wMaxPacketSize = d[4] | d[5] << 8;
            last_ep->bInterval = d[6];
            break;
        case USB_DT_SS_EP_COMP:
            if (d[0] < 6 || !last_ep) {
                goto bad;
            }
            last_ep->has_companion = true;
            last_ep->bMaxBurst = d[2];
            last_ep->bmAttributesSS = d[3];
            last_ep->wBytesPerInterval = d[4] | d[5] << 8;
            break;
        default:
            break;             /* class specific: skipped */
        }
        off += d[0];
    }
    o->n_alts = alts->len;
    o->alts = (DextUsbInterfaceDesc *)g_array_free(alts, FALSE);
    return 0;

bad:
    g_array_free(alts, TRUE);
    return -EINVAL;
}

/* ------------------------------------------------ standard requests */

int dext_usb_device_get_descriptor(DextUsbDevice *d, uint8_t type,
                                   uint8_t index, void *buf, uint16_t len,
                                   uint32_t *actual)
{
    return dext_usb_device_control(d, 0x80, 6, type << 8 | index,
                                   type == USB_DT_STRING ? 0x0409 : 0, buf,
                                   len, actual, 0);
}

int dext_usb_device_string(DextUsbDevice *d, uint8_t index, char *buf,
                           size_t size)
{
    uint8_t raw[255];
    uint32_t got = 0;
    size_t n = 0;
    int ret;

    if (index == 0 || size == 0) {
        return -ENOENT;
    }
    ret = dext_usb_device_get_descriptor(d, USB_DT_STRING, index, raw,
                                         sizeof(raw), &got);
    if (ret == -EPIPE) {
        return -ENOENT;
    }
    if (ret < 0) {
        return ret;
    }
    if (got < 2 || raw[1] != USB_DT_STRING) {
        return -EIO;
    }
    got = MIN(got, raw[0]);
    for (uint32_t i = 2; i + 1 < got && n + 1 < size; i += 2) {
        uint16_t c = raw[i] | raw[i + 1] << 8;

        buf[n++] = c < 0x80 && c >= 0x20 ? (char)c : '?';
    }
    buf[n] = 0;
    return (int)n;
}
