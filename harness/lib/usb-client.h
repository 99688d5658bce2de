/*
 * libdext-internal pieces of the USB client (harness/lib/usb.c) that need
 * no provider: descriptor walking and string decoding (usb-desc.c, pure,
 * unit-tested by harness/tests/test-usb-client.c), and the provider-owned
 * buffer kind of memory.c.
 *
 * Every descriptor byte comes from the provider and, before it, from the
 * device: nothing here trusts a length.  A descriptor is accepted only if
 * bLength >= 2 and it lies wholly inside the set; a set is walked only up to
 * min(wTotalLength, bytes held).
 */
#ifndef DEXT_LIB_USB_CLIENT_H
#define DEXT_LIB_USB_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "dext/memory.h"

#define DEXT__USB_DT_DEVICE     1
#define DEXT__USB_DT_CONFIG     2
#define DEXT__USB_DT_STRING     3
#define DEXT__USB_DT_INTERFACE  4
#define DEXT__USB_DT_ENDPOINT   5

/* Validate a configuration descriptor set of @len bytes: a configuration
 * descriptor (bLength >= 9) first, wTotalLength >= 9.  Returns the number of
 * bytes to walk (min(wTotalLength, len)) or -EINVAL. */
long dext__usb_config_check(const uint8_t *cfg, size_t len);

/* The descriptor after the one at *@off (start with *off = 0: the
 * configuration descriptor itself is skipped).  Returns its bDescriptorType
 * and sets *off, 0 at the end, -EINVAL if a descriptor is malformed
 * (bLength < 2 or past the end): the walk stops there. */
int dext__usb_desc_next(const uint8_t *cfg, size_t total, size_t *off);

/* Offset of interface @ifnum alternate setting @alt (bLength >= 9), or
 * -ENOENT / -EINVAL. */
long dext__usb_find_interface(const uint8_t *cfg, size_t total, uint8_t ifnum,
                              uint8_t alt);

/* Offset of the endpoint @address in that alternate setting (only the
 * endpoint descriptors between its interface descriptor and the next
 * interface descriptor count, bLength >= 7; at most bNumEndpoints of them),
 * or -ENOENT / -EINVAL. */
long dext__usb_find_endpoint(const uint8_t *cfg, size_t total, uint8_t ifnum,
                             uint8_t alt, uint8_t address);

/* Decode a string descriptor (@len bytes as received) into @buf (NUL
 * terminated, at most @size - 1 bytes): UTF-16LE code units below 0x80 as
 * is, others '?'.  Returns the length written or -EINVAL (not a string
 * descriptor) / -ENOSPC (size 0). */
int dext__usb_string_decode(const uint8_t *d, size_t len, char *buf, size_t size);

/* ---- provider-owned buffers (memory.c) ---- */

/* Called once from dext_buffer_release() of a provider buffer, after the
 * mapping is gone: return it to the provider (USB_BUFFER_FREE). */
typedef void (*DextBufferReleaseFn)(void *ctx, uint64_t handle);

/* Wrap a mapping of a provider's buffer: @addr/@map_size as mmap'ed,
 * @capacity usable bytes, @fd (taken: closed on release) and @fd_offset the
 * range another process maps to share it (dext__buffer_share). */
DextBuffer *dext__buffer_new_provider(void *addr, uint64_t map_size, uint64_t capacity,
                                      uint32_t direction, int fd, uint64_t fd_offset,
                                      uint64_t handle, DextBufferReleaseFn release,
                                      void *ctx);
/* The provider's handle and owner context of a provider buffer; false for
 * any other kind. */
bool dext__buffer_provider(const DextBuffer *b, uint64_t *handle, void **ctx);

#endif
