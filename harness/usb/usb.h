/*
 * dextlab USB family API (harness/usb): USBDriverKit-style host objects
 * over the user-space xHCI driver (xhci.h).
 *
 *   DextUsbHost       one xHCI controller: enumerates root ports, follows
 *                     hot-plug, owns the DextUsbDevice objects.
 *   DextUsbDevice     an attached device (IOUSBHostDevice): descriptors,
 *                     strings, control requests, SET_CONFIGURATION.
 *   DextUsbInterface  an interface of the active configuration
 *                     (IOUSBHostInterface): descriptors, alternate
 *                     settings, pipes.
 *   DextUsbPipe       a non-control endpoint (IOUSBHostPipe): sync and
 *                     async IO, abort, clear stall.
 *   DextUsbBuffer     DMA memory for IO (IOBufferMemoryDescriptor):
 *                     zero-copy, the controller reads/writes it directly.
 *
 * Conventions: negative errno.  Statuses of IO: 0 ok (short transfers are
 * ok: see actual), -EPIPE stall, -ECANCELED aborted (pipe abort,
 * alternate-setting change, device unplugged), -ETIMEDOUT (sync IO whose
 * timeout expired: the transfer was aborted), -ENODEV device gone,
 * -EBADF pipe closed by an alternate-setting change, -EBUSY not open /
 * opened by someone else, -EIO controller error.
 *
 * Threading: every function is thread-safe.  Async completions run on the
 * controller's event thread, or on the thread that aborts the IO (abort,
 * select alternate setting, close, unplug): keep them short; they may
 * submit async IO, never call a sync function (-EDEADLK).  The device
 * callback runs on the host's hub thread.
 *
 * Ownership: the host owns devices; a device owns its interfaces; an
 * interface owns its pipes.  dext_usb_device_ref() keeps a device (and its
 * interfaces and pipes) allocated after unplug and after
 * dext_usb_host_destroy(): then every call returns -ENODEV (or -EBADF on
 * a pipe).  Descriptor pointers stay valid while the object is.
 * Buffers belong to whoever allocated them, must outlive their IO and be
 * freed before dext_usb_host_destroy() (they are the controller's DMA
 * memory).
 */
#ifndef DEXT_USB_H
#define DEXT_USB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>
#include "platform.h"
#include "xhci.h"

G_BEGIN_DECLS

typedef struct DextUsbHost DextUsbHost;
typedef struct DextUsbDevice DextUsbDevice;
typedef struct DextUsbInterface DextUsbInterface;
typedef struct DextUsbPipe DextUsbPipe;
typedef struct DextUsbBuffer DextUsbBuffer;

/* ------------------------------------------------------- descriptors */

typedef struct DextUsbDeviceDesc {
    uint16_t bcdUSB;
    uint8_t bDeviceClass, bDeviceSubClass, bDeviceProtocol;
    uint8_t bMaxPacketSize0;
    uint16_t idVendor, idProduct, bcdDevice;
    uint8_t iManufacturer, iProduct, iSerialNumber;
    uint8_t bNumConfigurations;
} DextUsbDeviceDesc;

typedef struct DextUsbEndpointDesc {
    uint8_t bEndpointAddress;
    uint8_t bmAttributes;
    uint16_t wMaxPacketSize;
    uint8_t bInterval;
    bool has_companion;          /* SuperSpeed endpoint companion */
    uint8_t bMaxBurst;
    uint8_t bmAttributesSS;
    uint16_t wBytesPerInterval;
} DextUsbEndpointDesc;

typedef struct DextUsbInterfaceDesc {
    uint8_t bInterfaceNumber, bAlternateSetting, bNumEndpoints;
    uint8_t bInterfaceClass, bInterfaceSubClass, bInterfaceProtocol;
    uint8_t iInterface;
    unsigned n_endpoints;        /* endpoints parsed (<= 30) */
    DextUsbEndpointDesc endpoints[30];
} DextUsbInterfaceDesc;

typedef struct DextUsbConfigDesc {
    uint16_t wTotalLength;
    uint8_t bNumInterfaces, bConfigurationValue, iConfiguration;
    uint8_t bmAttributes, bMaxPower;
    unsigned n_alts;             /* every interface descriptor, all alts */
    DextUsbInterfaceDesc *alts;  /* owned by the parse result */
} DextUsbConfigDesc;

/* Parse a configuration descriptor set (untrusted bytes): every length is
 * checked; -EINVAL names nothing but never reads outside @buf.  Free with
 * dext_usb_config_desc_free(). */
int dext_usb_parse_config(const uint8_t *buf, size_t len,
                          DextUsbConfigDesc *out);
void dext_usb_config_desc_free(DextUsbConfigDesc *c);
int dext_usb_parse_device(const uint8_t *buf, size_t len,
                          DextUsbDeviceDesc *out);

/* ------------------------------------------------------ match keys */

/* What USB personalities match on (DriverKit's USB keys); for a device
 * entry the interface fields are 0xff/unset (is_interface false). */
typedef struct DextUsbMatchKeys {
    uint16_t idVendor, idProduct, bcdDevice;
    uint8_t bDeviceClass, bDeviceSubClass, bDeviceProtocol;
    uint8_t bConfigurationValue;
    bool is_interface;
    uint8_t bInterfaceNumber;
    uint8_t bInterfaceClass, bInterfaceSubClass, bInterfaceProtocol;
} DextUsbMatchKeys;

/* ------------------------------------------------------------- host */

/* Hub thread callback: a device was attached (enumerated: descriptors
 * read, not configured) or detached (all its IO already completed). */
typedef void (*DextUsbDeviceFn)(void *opaque, DextUsbDevice *dev,
                                bool attached);

typedef struct DextUsbHostConfig {
    DextXhciConfig xhci;         /* port_fn is taken by the host */
    DextUsbDeviceFn device_fn;
    void *device_opaque;
} DextUsbHostConfig;

/* Find the @index-th xHCI function (class 0c0330) in the platform's
 * enumeration.  -ENODEV if there is none. */
int dext_usb_find_xhci(DextPlatform *p, unsigned index, DextPciAddr *out);

/* Take the controller, start it, enumerate what is connected (devices
 * are reported through device_fn and dext_usb_host_devices()). */
int dext_usb_host_create(DextPlatform *p, DextPciAddr xhci,
                         const DextUsbHostConfig *cfg, DextUsbHost **out);
/* Detach every device (IO completes -ECANCELED), stop, free. */
/* Same on any xHCI backend (dext_xhci_create_hw(); takes @hw). */
int dext_usb_host_create_hw(const DextXhciHwOps *ops, void *hw,
                            uint64_t bar0_size, const DextUsbHostConfig *cfg,
                            DextUsbHost **out);
void dext_usb_host_destroy(DextUsbHost *h);
DextXhci *dext_usb_host_xhci(DextUsbHost *h);

/* Snapshot of the attached devices, each with a reference the caller
 * drops with dext_usb_device_unref(); free the array with g_free(). */
size_t dext_usb_host_devices(DextUsbHost *h, DextUsbDevice ***out);
/* Wait until exactly @count devices are attached and enumeration is idle
 * (-ETIMEDOUT after @timeout_ms). */
int dext_usb_host_wait_devices(DextUsbHost *h, unsigned count,
                               unsigned timeout_ms);

/* -------------------------------------------------------- buffers */

int dext_usb_buffer_alloc(DextUsbHost *h, size_t size, DextUsbBuffer **out);
void dext_usb_buffer_free(DextUsbBuffer *b);
void *dext_usb_buffer_data(DextUsbBuffer *b);
size_t dext_usb_buffer_size(DextUsbBuffer *b);
uint64_t dext_usb_buffer_iova(DextUsbBuffer *b);
/* The fd whose mapping (MAP_SHARED, at *@offset, dext_usb_buffer_size()
 * bytes) is this buffer's memory: what a provider hands to a client driver
 * process (SCM_RIGHTS dups it).  Owned by the buffer (or its platform): do
 * not close.  xHCI: the platform's guest-RAM fd when the buffer lies in it,
 * else -ENOTSUP; usbfs: the buffer's own memfd, offset 0. */
int dext_usb_buffer_fd(DextUsbBuffer *b, uint64_t *offset);

/* --------------------------------------------------------- device */

DextUsbDevice *dext_usb_device_ref(DextUsbDevice *d);
void dext_usb_device_unref(DextUsbDevice *d);
bool dext_usb_device_attached(DextUsbDevice *d);
unsigned dext_usb_device_port(DextUsbDevice *d);
unsigned dext_usb_device_speed(DextUsbDevice *d);     /* DEXT_USB_SPEED_* */
const DextUsbDeviceDesc *dext_usb_device_descriptor(DextUsbDevice *d);
/* The active (or, before set_configuration, the first) configuration:
 * parsed and raw (untrusted bytes as read from the device). */
const DextUsbConfigDesc *dext_usb_device_config(DextUsbDevice *d);
const uint8_t *dext_usb_device_config_raw(DextUsbDevice *d, size_t *len);
void dext_usb_device_match_keys(DextUsbDevice *d, DextUsbMatchKeys *out);

/* Exclusive open (DriverKit Open(forClient)); -EBUSY if open. */
int dext_usb_device_open(DextUsbDevice *d);
void dext_usb_device_close(DextUsbDevice *d);

/* Reset the device's port and enumerate it again (what a provider does
 * when the device's client driver crashed): on the host's hub thread the
 * device is detached as on an unplug (IO completes -ECANCELED, device_fn
 * reports it detached), the port is reset and whatever is connected is
 * enumerated as a new DextUsbDevice (device_fn attached).  Returns at once
 * (dext_usb_host_wait_devices() waits for the hub); -ENODEV if the device
 * is detached already. */
int dext_usb_device_reset_port(DextUsbDevice *d);

/* Synchronous control request on EP0 (any caller; no open needed for
 * standard IN requests, open needed otherwise).  @data of @wLength bytes
 * (<= 4096); *actual gets the data stage length.  A STALL returns -EPIPE
 * and the default pipe is recovered before returning. */
int dext_usb_device_control(DextUsbDevice *d, uint8_t bmRequestType,
                            uint8_t bRequest, uint16_t wValue,
                            uint16_t wIndex, void *data, uint16_t wLength,
                            uint32_t *actual, unsigned timeout_ms);
/* String descriptor @index in language 0x0409 as UTF-8 (non-ASCII is
 * replaced by '?'); -ENOENT for index 0 or a STALL. */
int dext_usb_device_string(DextUsbDevice *d, uint8_t index, char *buf,
                           size_t size);
/* Raw GET_DESCRIPTOR (BOS, qualifier ...). */
int dext_usb_device_get_descriptor(DextUsbDevice *d, uint8_t type,
                                   uint8_t index, void *buf, uint16_t len,
                                   uint32_t *actual);

/* SET_CONFIGURATION (open required): closes every interface of the old
 * configuration (IO aborted, pipes closed), configures alt 0 of every
 * interface and creates the interface objects.  0 unconfigures. */
int dext_usb_device_set_configuration(DextUsbDevice *d, uint8_t value);
unsigned dext_usb_device_num_interfaces(DextUsbDevice *d);
/* Interface @number of the active configuration, or NULL. */
DextUsbInterface *dext_usb_device_interface(DextUsbDevice *d,
                                            uint8_t number);

/* ------------------------------------------------------- interface */

DextUsbDevice *dext_usb_interface_device(DextUsbInterface *i);
/* Descriptor of the current alternate setting. */
const DextUsbInterfaceDesc *dext_usb_interface_descriptor(DextUsbInterface *i);
void dext_usb_interface_match_keys(DextUsbInterface *i, DextUsbMatchKeys *out);
int dext_usb_interface_open(DextUsbInterface *i);
void dext_usb_interface_close(DextUsbInterface *i);
/* Aborts all IO of the interface's pipes (-ECANCELED), closes them (their
 * handles then return -EBADF), SET_INTERFACE, configures the new
 * endpoints.  Open required. */
int dext_usb_interface_select_alt(DextUsbInterface *i, uint8_t alt);
/* The pipe of endpoint @address in the current alternate setting, owned
 * by the interface (valid until the alternate setting or configuration
 * changes; do not free).  Open required. */
int dext_usb_interface_copy_pipe(DextUsbInterface *i, uint8_t address,
                                 DextUsbPipe **out);

/* ------------------------------------------------------------ pipe */

typedef void (*DextUsbIoFn)(void *opaque, int status, uint32_t actual,
                            uint64_t timestamp_ns);

const DextUsbEndpointDesc *dext_usb_pipe_descriptor(DextUsbPipe *p);
/* Synchronous IO of @len bytes at @offset of @buf (direction from the
 * endpoint); timeout 0 means the controller's default bound.  When it
 * expires the IO is aborted and -ETIMEDOUT returned. */
int dext_usb_pipe_io(DextUsbPipe *p, DextUsbBuffer *buf, size_t offset,
                     uint32_t len, uint32_t *actual, unsigned timeout_ms);
/* Asynchronous IO: @cb gets (status, actual, timestamp) exactly once,
 * unless this returns an error. */
int dext_usb_pipe_async_io(DextUsbPipe *p, DextUsbBuffer *buf, size_t offset,
                           uint32_t len, DextUsbIoFn cb, void *opaque);
/* Complete all pending IO with -ECANCELED (before returning). */
int dext_usb_pipe_abort(DextUsbPipe *p);
/* After a STALL: reset the endpoint on the controller (pending IO
 * -ECANCELED) and CLEAR_FEATURE(ENDPOINT_HALT) on the device. */
int dext_usb_pipe_clear_stall(DextUsbPipe *p);

/* ------------------------------------------ usbfs implementation -----
 *
 * The same family API over Linux usbfs, for code running inside a Linux
 * guest whose kernel (xhci_hcd) owns the controller: harness/usb/
 * usb-usbfs.c, static library dext-usb-usbfs (dext_usb_usbfs_dep).  Link
 * it INSTEAD of dext-usb: the opaque objects differ; descriptor parsers
 * and match keys are shared (usb-desc.c, usb-match.c).  Differences:
 *  - devices are the non-hub devices under @sysroot; dext_usb_device_port()
 *    is busnum << 8 | devnum (unique while attached; a replug gets a new
 *    devnum); speed from sysfs;
 *  - hot-plug: a netlink uevent socket (and a periodic rescan as a
 *    fallback) wakes the hub thread, which diffs sysfs against its list;
 *    the first scan runs on the hub thread after create returns (use
 *    dext_usb_host_wait_devices()); devices the kernel configured already
 *    have their interfaces (current alternate settings) before any
 *    set_configuration; completions run on a per-device reaper thread;
 *  - buffers are memfds (dext_usb_buffer_iova() is 0); a transfer is one
 *    URB unless larger than usbfs takes (see set_urb_max below): then it
 *    is split at whole max packets and a short packet in one part ends
 *    the transfer (the later parts are cancelled, their bytes unused);
 *  - cfg->xhci: only timeout_ms is used; dext_usb_host_xhci() is NULL,
 *    dext_usb_find_xhci() -ENODEV, dext_usb_host_create{,_hw}() -ENOTSUP;
 *  - dext_usb_interface_open() claims the interface (detaching a kernel
 *    driver bound to it), close releases it; set_configuration releases
 *    the old configuration's interfaces as it closes them.
 *
 * @devroot: "/dev/bus/usb" (NULL: that), @sysroot: "/sys/bus/usb/devices"
 * (NULL: that).  -errno if @sysroot cannot be read. */
int dext_usb_host_create_usbfs(const char *devroot, const char *sysroot,
                               const DextUsbHostConfig *cfg,
                               DextUsbHost **out);
/* usbfs only: the largest URB of a bulk transfer (rounded down to whole
 * max packets per pipe; 0: the default, a quarter of usbfs_memory_mb, at
 * most 4 MiB; clamped to 1 KiB .. 4 MiB).  Interrupt transfers split at
 * 64 KiB.  Returns the value in force.  Mostly for tests of the split. */
uint32_t dext_usb_host_usbfs_set_urb_max(DextUsbHost *h, uint32_t bytes);

G_END_DECLS

#endif /* DEXT_USB_H */
