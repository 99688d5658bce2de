/*
 * USB descriptor walking for the client library: pure functions over bytes
 * the provider (and the device) sent, so every length is checked.
 */
#include "usb-client.h"

#include <errno.h>
#include <string.h>

long dext__usb_config_check(const uint8_t *cfg, size_t len)
{
    if (!cfg || len < 9 || cfg[0] < 9 || cfg[1] != DEXT__USB_DT_CONFIG) {
        return -EINVAL;
    }
    size_t total = cfg[2] | (size_t)cfg[3] << 8;
    if (total < 9) {
        return -EINVAL;
    }
    return (long)(total < len ? total : len);
}

int dext__usb_desc_next(const uint8_t *cfg, size_t total, size_t *off)
{
    size_t o = *off;
    if (o >= total || cfg[o] < 2 || cfg[o] > total - o) {
        return -EINVAL; /* the current one must itself be sound */
    }
    o += cfg[o];
    if (o == total) {
        *off = o;
        return 0;
    }
    if (total - o < 2 || cfg[o] < 2 || cfg[o] > total - o) {
        return -EINVAL;
    }
    *off = o;
    return cfg[o + 1];
}

long dext__usb_find_interface(const uint8_t *cfg, size_t total, uint8_t ifnum, uint8_t alt)
{
    size_t off = 0;
    int t;
    while ((t = dext__usb_desc_next(cfg, total, &off)) > 0) {
        if (t == DEXT__USB_DT_INTERFACE && cfg[off] >= 9 && cfg[off + 2] == ifnum &&
            cfg[off + 3] == alt) {
            return (long)off;
        }
    }
    return t < 0 ? t : -ENOENT;
}

long dext__usb_find_endpoint(const uint8_t *cfg, size_t total, uint8_t ifnum, uint8_t alt,
                             uint8_t address)
{
    long at = dext__usb_find_interface(cfg, total, ifnum, alt);
    if (at < 0) {
        return at;
    }
    size_t off = (size_t)at;
    unsigned left = cfg[off + 4]; /* bNumEndpoints */
    int t = 0;
    while (left && (t = dext__usb_desc_next(cfg, total, &off)) > 0) {
        if (t == DEXT__USB_DT_INTERFACE) {
            break;
        }
        if (t == DEXT__USB_DT_ENDPOINT && cfg[off] >= 7) {
            if (cfg[off + 2] == address) {
                return (long)off;
            }
            left--;
        }
    }
    return t < 0 && left ? t : -ENOENT;
}

int dext__usb_string_decode(const uint8_t *d, size_t len, char *buf, size_t size)
{
    if (!size) {
        return -ENOSPC;
    }
    buf[0] = 0;
    if (!d || len < 2 || d[1] != DEXT__USB_DT_STRING || d[0] < 2) {
        return -EINVAL;
    }
    size_t n = d[0] < len ? d[0] : len;   /* bLength, bounded by what came */
    size_t w = 0;
    for (size_t i = 2; i + 1 < n && w + 1 < size; i += 2) {
        uint16_t cu = d[i] | (uint16_t)d[i + 1] << 8;
        buf[w++] = cu >= 0x20 && cu < 0x7f ? (char)cu : '?';
    }
    buf[w] = 0;
    return (int)w;
}
