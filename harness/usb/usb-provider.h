/*
 * USB provider: the publisher side of driver-published USB nubs
 * (docs/runtime/nubs.md).  Serves the provider protocol (channel PROV /
 * PROVEV of harness/common/ipc.h) to USB client drivers over the family
 * API of usb.h, whichever implementation is linked (the user-space xHCI
 * driver on the qtest platform, usbfs inside a guest).
 *
 *   attach   the device is opened (family level), configured with its
 *            first configuration, every interface opened; a device nub
 *            ("usb@<port>", IOUSBHostDevice) is published, then one
 *            interface nub ("if<n>", IOUSBHostInterface) per interface as
 *            its child, through DextUsbProviderOps.publish.
 *   detach   every pending IO has completed -ECANCELED (the family does
 *            that before reporting the detach); the provider posts each
 *            as USB_IO_DONE to its client, then terminates the nubs
 *            (children first) through DextUsbProviderOps.terminate.
 *   serve    one client channel per call: requests validated as the
 *            protocol says (ERROR replies with a reason), a framing error
 *            closes the channel, IO completions posted as USB_IO_DONE.
 *   reset    (a client crashed) the nub's device is detached, its port
 *            reset and the device enumerated again: the old nubs are
 *            terminated, new ones published.
 *
 * Use:
 *   dext_usb_provider_create(&ops, opaque, &p);
 *   cfg.device_fn = dext_usb_provider_device_fn; cfg.device_opaque = p;
 *   dext_usb_host_create...(..., &cfg, &h);  dext_usb_provider_set_host(p, h);
 *   ... dext_usb_provider_serve(p, nub, fd) per client ...
 *   dext_usb_provider_shutdown(p); dext_usb_host_destroy(h);
 *   dext_usb_provider_destroy(p);
 *
 * Conventions: negative errno.
 * Threading: every function is thread-safe.  The device callback runs on
 * the host's hub thread (publish/terminate are called from there, and
 * from channel threads on USB_SET_CONFIG); each channel has its own
 * thread; IO completions are handed to that thread (never sent from the
 * controller's event thread, so a client that stops reading stalls only
 * its own channel, whose sends are bounded: it is closed then).
 * Ownership: the provider holds a reference on each device it published;
 * serve() takes the fd (also on error).  Buffers handed out belong to the
 * channel and are freed when it closes.
 *
 * Security note: on the xHCI implementation a buffer's fd is the shared
 * guest-RAM file (the only memory the controller reaches), so a client
 * driver could map more of guest RAM than its buffers.  The usbfs
 * implementation hands out one memfd per buffer.
 */
#ifndef DEXT_USB_PROVIDER_H
#define DEXT_USB_PROVIDER_H

#include <stdint.h>
#include "usb.h"

G_BEGIN_DECLS

typedef struct DextUsbProvider DextUsbProvider;

typedef struct DextUsbProviderOps {
    /* Publish a nub under @parent (0: the publisher itself) with the
     * properties @props_text (GVariant text of type a{sv}); *nub gets its
     * id (non-zero).  libdext: dext_service_publish_nub(). */
    int (*publish)(void *opaque, uint64_t parent, const char *name,
                   const char *io_class, const char *props_text,
                   uint64_t *nub);
    /* Terminate a published nub.  libdext: dext_service_terminate_nub(). */
    int (*terminate)(void *opaque, uint64_t nub);
} DextUsbProviderOps;

/* Limits of the protocol (docs/runtime/nubs.md). */
#define DEXT_USB_PROV_MAX_BUFFER   (16u << 20)
#define DEXT_USB_PROV_MAX_BUFFERS_BYTES (64ull << 20)
#define DEXT_USB_PROV_MAX_IO       (16u << 20)
#define DEXT_USB_PROV_MAX_PENDING  1024u
#define DEXT_USB_PROV_MAX_CONTROL  4096u
#define DEXT_USB_PROV_MAX_CHANNELS 64u     /* a thread each */
/* Sync IO and control requests with timeout 0 */
#define DEXT_USB_PROV_DEFAULT_TIMEOUT_MS 5000u

int dext_usb_provider_create(const DextUsbProviderOps *ops, void *opaque,
                             DextUsbProvider **out);
/* The host whose devices are published (buffers are allocated from it).
 * Device events may arrive before this is called. */
void dext_usb_provider_set_host(DextUsbProvider *p, DextUsbHost *h);
/* DextUsbDeviceFn for DextUsbHostConfig.device_fn (opaque: the provider). */
void dext_usb_provider_device_fn(void *provider, DextUsbDevice *dev,
                                 bool attached);

/* Serve the provider protocol for @nub on @fd (a SOCK_SEQPACKET end; the
 * provider owns it from now on, also on error).  Returns at once: the
 * channel runs on its own thread.  -ENOENT: not a live nub of this
 * provider; -EMFILE: DEXT_USB_PROV_MAX_CHANNELS open; -ESHUTDOWN after
 * shutdown. */
int dext_usb_provider_serve(DextUsbProvider *p, uint64_t nub, int fd);
/* The same for the publisher's own use (e.g. its user client): a channel
 * to the device on root @port, its device nub (@ifnum < 0) or the nub of
 * interface @ifnum, whether publishing it worked or not (a nub that could
 * not be published is kept with id 0: served here only).  -ENOENT. */
int dext_usb_provider_serve_port(DextUsbProvider *p, unsigned port, int ifnum,
                                 int fd);
/* The client of @nub crashed: abort the IO of the nub's device, reset its
 * port and enumerate it again (asynchronous: the old nubs are terminated
 * and new ones published from the hub thread).  -ENOENT unknown nub. */
int dext_usb_provider_reset(DextUsbProvider *p, uint64_t nub);

/* Counters for tests: live channels, buffers and pending IOs, published
 * nubs. */
typedef struct DextUsbProviderStats {
    unsigned channels;
    unsigned buffers;
    unsigned pending_io;
    unsigned nubs;
} DextUsbProviderStats;
void dext_usb_provider_stats(DextUsbProvider *p, DextUsbProviderStats *out);
/* Tests: lower the per-channel pending-IO limit (1 .. 1024) so it can be
 * reached (a transfer ring holds fewer TDs than the protocol's limit). */
void dext_usb_provider_set_max_pending(DextUsbProvider *p, unsigned n);

/* Close every channel (IO aborted, buffers freed), refuse new ones and
 * stop publishing.  Call before dext_usb_host_destroy(). */
void dext_usb_provider_shutdown(DextUsbProvider *p);
/* Free (after the host is destroyed: no more device events). */
void dext_usb_provider_destroy(DextUsbProvider *p);

G_END_DECLS

#endif /* DEXT_USB_PROVIDER_H */
