/*
 * usbfs.c: usbfs client for one USB device (see usbfs.h).
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include "usbfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/usbdevice_fs.h>

#define DXL_USB_MAX_IFACES  32

struct dxl_usb {
    int fd;
    int speed;
    uint32_t claimed;   /* bit per interface number */
};

static int neg_errno(void)
{
    return errno ? -errno : -EIO;
}

/* Read a sysfs attribute of a USB device as an unsigned (base 10 or 16). */
static int sysfs_uint(const char *dev, const char *attr, int base,
                      unsigned long *val)
{
    char path[256], buf[32];
    FILE *f;
    int ok;

    snprintf(path, sizeof(path), "/sys/bus/usb/devices/%s/%s", dev, attr);
    f = fopen(path, "re");
    if (!f) {
        return neg_errno();
    }
    ok = fgets(buf, sizeof(buf), f) != NULL;
    fclose(f);
    if (!ok) {
        return -EIO;
    }
    *val = strtoul(buf, NULL, base);
    return 0;
}

static int name_cmp(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int dxl_usb_find(uint16_t vid, uint16_t pid, unsigned index, char *name,
                 size_t len)
{
    struct dirent **ents;
    unsigned long v, p;
    int n, i, ret = -ENOENT;

    n = scandir("/sys/bus/usb/devices", &ents, NULL, name_cmp);
    if (n < 0) {
        return neg_errno();
    }
    for (i = 0; i < n; i++) {
        const char *d = ents[i]->d_name;

        /* interfaces ("1-1:1.0") and dot entries have no idVendor */
        if (ret == -ENOENT && d[0] != '.' && !strchr(d, ':') &&
            sysfs_uint(d, "idVendor", 16, &v) == 0 &&
            sysfs_uint(d, "idProduct", 16, &p) == 0 && v == vid && p == pid) {
            if (index-- == 0) {
                snprintf(name, len, "%s", d);
                ret = 0;
            }
        }
        free(ents[i]);
    }
    free(ents);
    return ret;
}

int dxl_usb_open(const char *sysname, struct dxl_usb **out)
{
    unsigned long bus, dev, speed;
    struct dxl_usb *u;
    char path[64];
    int ret;

    if ((ret = sysfs_uint(sysname, "busnum", 10, &bus)) < 0 ||
        (ret = sysfs_uint(sysname, "devnum", 10, &dev)) < 0 ||
        (ret = sysfs_uint(sysname, "speed", 10, &speed)) < 0) {
        return ret;
    }
    u = calloc(1, sizeof(*u));
    if (!u) {
        return -ENOMEM;
    }
    snprintf(path, sizeof(path), "/dev/bus/usb/%03lu/%03lu", bus, dev);
    u->fd = open(path, O_RDWR | O_CLOEXEC);
    if (u->fd < 0) {
        ret = neg_errno();
        free(u);
        return ret;
    }
    u->speed = speed;
    *out = u;
    return 0;
}

void dxl_usb_close(struct dxl_usb *u)
{
    unsigned i;

    if (!u) {
        return;
    }
    for (i = 0; i < DXL_USB_MAX_IFACES; i++) {
        if (u->claimed & (1u << i)) {
            ioctl(u->fd, USBDEVFS_RELEASEINTERFACE, &i);
        }
    }
    close(u->fd);
    free(u);
}

int dxl_usb_speed(const struct dxl_usb *u)
{
    return u->speed;
}

int dxl_usb_claim(struct dxl_usb *u, unsigned iface)
{
    struct usbdevfs_ioctl disc = {
        .ifno = iface, .ioctl_code = USBDEVFS_DISCONNECT,
    };

    if (iface >= DXL_USB_MAX_IFACES) {
        return -EINVAL;
    }
    /* Detach a kernel driver if one took the interface (ENODATA: none) */
    ioctl(u->fd, USBDEVFS_IOCTL, &disc);
    if (ioctl(u->fd, USBDEVFS_CLAIMINTERFACE, &iface) < 0) {
        return neg_errno();
    }
    u->claimed |= 1u << iface;
    return 0;
}

int dxl_usb_set_alt(struct dxl_usb *u, unsigned iface, unsigned alt)
{
    struct usbdevfs_setinterface si = { .interface = iface, .altsetting = alt };

    return ioctl(u->fd, USBDEVFS_SETINTERFACE, &si) < 0 ? neg_errno() : 0;
}

int dxl_usb_clear_halt(struct dxl_usb *u, unsigned ep)
{
    return ioctl(u->fd, USBDEVFS_CLEAR_HALT, &ep) < 0 ? neg_errno() : 0;
}

int dxl_usb_control(struct dxl_usb *u, uint8_t type, uint8_t req,
                    uint16_t value, uint16_t index, void *data, uint16_t len,
                    unsigned timeout_ms)
{
    struct usbdevfs_ctrltransfer ct = {
        .bRequestType = type, .bRequest = req, .wValue = value,
        .wIndex = index, .wLength = len, .timeout = timeout_ms, .data = data,
    };
    int n = ioctl(u->fd, USBDEVFS_CONTROL, &ct);

    return n < 0 ? neg_errno() : n;
}

static double now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Submit one URB and reap it, bounded; discard it on timeout. */
static int urb_xfer(struct dxl_usb *u, unsigned char type, uint8_t ep,
                    void *data, unsigned len, unsigned timeout_ms)
{
    struct usbdevfs_urb urb = {
        .type = type, .endpoint = ep, .buffer = data, .buffer_length = len,
    };
    struct usbdevfs_urb *done = NULL;
    double deadline = now_ms() + timeout_ms;
    struct pollfd pfd = { .fd = u->fd, .events = POLLOUT };

    if (ioctl(u->fd, USBDEVFS_SUBMITURB, &urb) < 0) {
        return neg_errno();
    }
    for (;;) {
        int left = (int)(deadline - now_ms());

        if (ioctl(u->fd, USBDEVFS_REAPURBNDELAY, &done) == 0) {
            if (done != &urb) {
                continue;   /* not ours: cannot happen with one in flight */
            }
            return urb.status < 0 ? urb.status : urb.actual_length;
        }
        if (errno != EAGAIN) {
            return neg_errno();
        }
        if (left <= 0) {
            break;
        }
        /* usbfs signals POLLOUT when a completed URB can be reaped */
        poll(&pfd, 1, left);
    }
    /* Timed out: take it back, then reap the cancelled URB (bounded) */
    ioctl(u->fd, USBDEVFS_DISCARDURB, &urb);
    pfd.revents = 0;
    if (poll(&pfd, 1, 1000) > 0) {
        ioctl(u->fd, USBDEVFS_REAPURBNDELAY, &done);
    }
    return -ETIMEDOUT;
}

int dxl_usb_bulk(struct dxl_usb *u, uint8_t ep, void *data, unsigned len,
                 unsigned timeout_ms)
{
    return urb_xfer(u, USBDEVFS_URB_TYPE_BULK, ep, data, len, timeout_ms);
}

int dxl_usb_interrupt(struct dxl_usb *u, uint8_t ep, void *data, unsigned len,
                      unsigned timeout_ms)
{
    return urb_xfer(u, USBDEVFS_URB_TYPE_INTERRUPT, ep, data, len, timeout_ms);
}
