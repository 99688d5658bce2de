/*
 * libdext USB client API (USBDriverKit): IOUSBHostDevice,
 * IOUSBHostInterface and IOUSBHostPipe for drivers whose personality
 * matches a USB device or interface (IOProviderClass=IOUSBHostDevice or
 * IOUSBHostInterface).
 *
 * The provider is a nub published by another driver process, the USB
 * host controller driver (on the qtest platform the user-space xHCI dext,
 * harness/usb/dextlab-xhci; in a Linux guest the usbfs provider).  The
 * first dext_service_usb_*() call asks dextd for a channel to it (dextd
 * checks the bundle's transport.usb entitlement against the nub's
 * idVendor, -EPERM if absent); every call below is a message on that
 * channel (docs/runtime/nubs.md).  Data never crosses the channel: IO
 * buffers come from the provider (dext_usbhost_interface_create_io_buffer)
 * and are mapped in both processes, so the controller moves the bytes
 * straight from/into the driver's mapping.
 *
 * Statuses (return values and async completions), negative errno:
 *   0 ok (a short transfer is ok: see actual), -EPIPE stall (the pipe stays
 *   halted until dext_usbhost_pipe_clear_stall), -ECANCELED aborted
 *   (abort, alternate-setting change, device unplugged, provider reset),
 *   -ETIMEDOUT a sync call's timeout expired (the IO was aborted),
 *   -ENODEV the device is gone, -EBADF a pipe closed by an
 *   alternate-setting or configuration change, -EBUSY not opened by this
 *   service (or opened by another), -EPERM not entitled / a request the
 *   object may not send, -EINVAL/-ERANGE bad argument or buffer range,
 *   -ESHUTDOWN the provider channel is gone.
 *
 * Threading: every function may be called from any thread.  Sync calls
 * block the calling thread (bounded by their timeout or the IPC default);
 * async completions run on the queue given at submission (the service's
 * default queue when NULL), exactly once per accepted IO, in the order the
 * controller completed them for one pipe.  When the service stops, every
 * pending IO has completed (-ECANCELED at worst) before stop runs.
 *
 * Ownership: the device/interface objects belong to the library and stay
 * valid until the service's stop returns; pipes belong to their interface
 * and stay valid until the next select_alt / configuration change
 * (afterwards their calls return -EBADF).  Descriptor pointers stay valid
 * as long as their object (configuration bytes until the next
 * configuration change).  IO buffers are DextBuffers owned by the caller:
 * dext_buffer_release() returns them to the provider; they must not be
 * released while IO on them is pending.
 */
#ifndef DEXT_USB_CLIENT_H
#define DEXT_USB_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "dext/memory.h"
#include "dext/queue.h"
#include "dext/service.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Standard descriptors in wire layout (USB 2.0 ch. 9; multi-byte fields
 * little-endian, as DriverKit's IOUSB*Descriptor). */
typedef struct __attribute__((packed)) DextUsbDeviceDescriptor {
    uint8_t bLength, bDescriptorType;
    uint16_t bcdUSB;
    uint8_t bDeviceClass, bDeviceSubClass, bDeviceProtocol, bMaxPacketSize0;
    uint16_t idVendor, idProduct, bcdDevice;
    uint8_t iManufacturer, iProduct, iSerialNumber, bNumConfigurations;
} DextUsbDeviceDescriptor;

typedef struct __attribute__((packed)) DextUsbConfigurationDescriptor {
    uint8_t bLength, bDescriptorType;
    uint16_t wTotalLength;
    uint8_t bNumInterfaces, bConfigurationValue, iConfiguration;
    uint8_t bmAttributes, bMaxPower;
} DextUsbConfigurationDescriptor;

typedef struct __attribute__((packed)) DextUsbInterfaceDescriptor {
    uint8_t bLength, bDescriptorType;
    uint8_t bInterfaceNumber, bAlternateSetting, bNumEndpoints;
    uint8_t bInterfaceClass, bInterfaceSubClass, bInterfaceProtocol;
    uint8_t iInterface;
} DextUsbInterfaceDescriptor;

typedef struct __attribute__((packed)) DextUsbEndpointDescriptor {
    uint8_t bLength, bDescriptorType;
    uint8_t bEndpointAddress, bmAttributes;
    uint16_t wMaxPacketSize;
    uint8_t bInterval;
} DextUsbEndpointDescriptor;

/* Device speeds (the xHCI port speed IDs). */
enum {
    DEXT_USBHOST_SPEED_UNKNOWN = 0,
    DEXT_USBHOST_SPEED_FULL = 1,     /* 12 Mb/s */
    DEXT_USBHOST_SPEED_LOW = 2,      /* 1.5 Mb/s */
    DEXT_USBHOST_SPEED_HIGH = 3,     /* 480 Mb/s */
    DEXT_USBHOST_SPEED_SUPER = 4,    /* 5 Gb/s */
};

typedef struct DextUsbHostDevice DextUsbHostDevice;
typedef struct DextUsbHostInterface DextUsbHostInterface;
typedef struct DextUsbHostPipe DextUsbHostPipe;

/* ------------------------------------------------------------ service */

/* The service's provider as a USB device (IOUSBHostDevice) or interface
 * (IOUSBHostInterface).  -ENODEV if the provider is not of that kind,
 * -EPERM without the transport.usb entitlement for its idVendor.
 * Borrowed: valid until stop returns. */
int dext_service_usb_device(DextService *svc, DextUsbHostDevice **out);
int dext_service_usb_interface(DextService *svc, DextUsbHostInterface **out);

/* ------------------------------------------------------------- device */

/* Exclusive open (Open(forClient)); -EBUSY if open elsewhere. */
int dext_usbhost_device_open(DextUsbHostDevice *d);
int dext_usbhost_device_close(DextUsbHostDevice *d);
const DextUsbDeviceDescriptor *dext_usbhost_device_descriptor(DextUsbHostDevice *d);
unsigned dext_usbhost_device_speed(DextUsbHostDevice *d);   /* DEXT_USBHOST_SPEED_* */
/* The active configuration's descriptor set (or the first one while
 * unconfigured), @len set to its wTotalLength as read. */
const DextUsbConfigurationDescriptor *
dext_usbhost_device_configuration(DextUsbHostDevice *d, size_t *len);
/* SET_CONFIGURATION (open required).  The provider terminates the
 * interface nubs of the old configuration and publishes the new ones. */
int dext_usbhost_device_set_configuration(DextUsbHostDevice *d, uint8_t value);
/* Control request on the default pipe (DeviceRequest).  @data holds
 * @wLength bytes (<= 4096); *actual the data stage's length.  A STALL
 * returns -EPIPE (the default pipe is recovered).  timeout 0: 5 s. */
int dext_usbhost_device_request(DextUsbHostDevice *d, uint8_t bmRequestType,
                                uint8_t bRequest, uint16_t wValue,
                                uint16_t wIndex, void *data, uint16_t wLength,
                                uint32_t *actual, unsigned timeout_ms);
/* String descriptor @index (language 0x0409) as UTF-8 ('?' for non-ASCII);
 * -ENOENT for index 0 or a STALL. */
int dext_usbhost_device_string(DextUsbHostDevice *d, uint8_t index,
                               char *buf, size_t size);

/* ---------------------------------------------------------- interface */

int dext_usbhost_interface_open(DextUsbHostInterface *i);
int dext_usbhost_interface_close(DextUsbHostInterface *i);
/* Current alternate setting's descriptor; the device's descriptor; the
 * active configuration's descriptor set. */
const DextUsbInterfaceDescriptor *
dext_usbhost_interface_descriptor(DextUsbHostInterface *i);
const DextUsbDeviceDescriptor *
dext_usbhost_interface_device_descriptor(DextUsbHostInterface *i);
const DextUsbConfigurationDescriptor *
dext_usbhost_interface_configuration(DextUsbHostInterface *i, size_t *len);
unsigned dext_usbhost_interface_speed(DextUsbHostInterface *i);
/* Control request on the device's default pipe from an interface: only
 * class/vendor requests and standard requests addressed to this interface
 * or its endpoints (SET_CONFIGURATION/SET_INTERFACE/SET_ADDRESS: -EPERM;
 * use the calls for them).  Same conventions as the device's. */
int dext_usbhost_interface_request(DextUsbHostInterface *i,
                                   uint8_t bmRequestType, uint8_t bRequest,
                                   uint16_t wValue, uint16_t wIndex,
                                   void *data, uint16_t wLength,
                                   uint32_t *actual, unsigned timeout_ms);
int dext_usbhost_interface_string(DextUsbHostInterface *i, uint8_t index,
                                  char *buf, size_t size);
/* SET_INTERFACE (open required): every pending IO of the interface's
 * pipes completes -ECANCELED, the pipes close (-EBADF), the new
 * alternate setting's endpoints are configured. */
int dext_usbhost_interface_select_alt(DextUsbHostInterface *i, uint8_t alt);
/* The pipe of endpoint @address (e.g. 0x81) in the current alternate
 * setting (open required); owned by the interface. */
int dext_usbhost_interface_copy_pipe(DextUsbHostInterface *i, uint8_t address,
                                     DextUsbHostPipe **out);
/* IO buffer (CreateIOBuffer): @capacity bytes of the controller's DMA
 * memory, mapped in this process; direction DEXT_DMA_IN/OUT/INOUT.
 * Release with dext_buffer_release(). */
int dext_usbhost_interface_create_io_buffer(DextUsbHostInterface *i,
                                            uint32_t direction,
                                            uint64_t capacity,
                                            DextBuffer **out);

/* --------------------------------------------------------------- pipe */

typedef void (*DextUsbCompletion)(void *ctx, int status, uint32_t actual,
                                  uint64_t timestamp_ns);

const DextUsbEndpointDescriptor *dext_usbhost_pipe_descriptor(DextUsbHostPipe *p);
/* Sync IO of @length bytes at @offset of @buf (direction from the
 * endpoint); timeout 0: the provider's default bound (5 s).  On expiry the
 * IO is aborted and -ETIMEDOUT returned. */
int dext_usbhost_pipe_io(DextUsbHostPipe *p, DextBuffer *buf, uint64_t offset,
                         uint32_t length, uint32_t *actual, unsigned timeout_ms);
/* Async IO: @done(ctx, status, actual, timestamp) runs on @q (NULL: the
 * service's default queue) exactly once, unless this returns an error.
 * Queueing costs no round trip to the publisher: this returns errors found
 * here (bad buffer or range, closed pipe, stopping, channel gone); what
 * the publisher refuses (halted endpoint -EPIPE, device gone -ENODEV, too
 * many pending -EAGAIN, ...) is the completion's status. */
int dext_usbhost_pipe_async_io(DextUsbHostPipe *p, DextBuffer *buf,
                               uint64_t offset, uint32_t length, DextQueue *q,
                               DextUsbCompletion done, void *ctx);
/* Complete every pending IO of the pipe with -ECANCELED; their
 * completions have been queued when this returns. */
int dext_usbhost_pipe_abort(DextUsbHostPipe *p);
/* After -EPIPE: reset the endpoint, CLEAR_FEATURE(ENDPOINT_HALT). */
int dext_usbhost_pipe_clear_stall(DextUsbHostPipe *p);

#ifdef __cplusplus
}
#endif

#endif /* DEXT_USB_CLIENT_H */
