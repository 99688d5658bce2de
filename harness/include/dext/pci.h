/*
 * libdext PCI device object (like PCIDriverKit's IOPCIDevice) and interrupt
 * dispatch sources.
 *
 * Every access goes to dextd, which performs it through its platform and
 * checks that this process opened the device.  BAR writes are POSTED: they
 * return once queued, in order with later accesses from the same process;
 * a posted write dextd cannot perform is logged by dextd and dropped (as a
 * PCIe posted write with no completer).  Reads and config writes wait for
 * completion.  dext_pci_flush() waits for every posted write.
 *
 * On the qtest platform (dextlab fork) BAR accesses may go straight to the
 * device emulator over a direct channel dextd grants and may revoke
 * (docs/runtime/platform.md, "The direct path"); the API and its ordering
 * are the same either way.
 *
 * Threading: all functions are thread-safe.  Accesses to one device
 * (BAR, config, reset, flush, close) are ordered per device: those from
 * one thread in program order, those from several threads by arrival;
 * accesses to different devices are not ordered against each other.
 * Errors: negative errno: -ENOTCONN not open, -EBUSY opened by another
 * service, -ERANGE/-EINVAL bad offset/width, -EPERM a protected register
 * (BARs, MSI-X table: the runtime owns them), -ESHUTDOWN dextd gone,
 * -ENODEV the device's direct channel was revoked (driver stopped, device
 * reset or unplugged behind the driver's back).
 */
#ifndef DEXT_PCI_H
#define DEXT_PCI_H

#include <stdbool.h>
#include <stdint.h>
#include "dext/queue.h"
#include "dext/service.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Exclusive open for @svc (the device's own service). */
int dext_pci_open(DextPciDevice *dev);
int dext_pci_close(DextPciDevice *dev);

int dext_pci_config_read8(DextPciDevice *dev, uint16_t off, uint8_t *val);
int dext_pci_config_read16(DextPciDevice *dev, uint16_t off, uint16_t *val);
int dext_pci_config_read32(DextPciDevice *dev, uint16_t off, uint32_t *val);
int dext_pci_config_write8(DextPciDevice *dev, uint16_t off, uint8_t val);
int dext_pci_config_write16(DextPciDevice *dev, uint16_t off, uint16_t val);
int dext_pci_config_write32(DextPciDevice *dev, uint16_t off, uint32_t val);

int dext_pci_memory_read8(DextPciDevice *dev, uint8_t bar, uint64_t off, uint8_t *val);
int dext_pci_memory_read16(DextPciDevice *dev, uint8_t bar, uint64_t off, uint16_t *val);
int dext_pci_memory_read32(DextPciDevice *dev, uint8_t bar, uint64_t off, uint32_t *val);
int dext_pci_memory_read64(DextPciDevice *dev, uint8_t bar, uint64_t off, uint64_t *val);
int dext_pci_memory_write8(DextPciDevice *dev, uint8_t bar, uint64_t off, uint8_t val);
int dext_pci_memory_write16(DextPciDevice *dev, uint8_t bar, uint64_t off, uint16_t val);
int dext_pci_memory_write32(DextPciDevice *dev, uint8_t bar, uint64_t off, uint32_t val);
int dext_pci_memory_write64(DextPciDevice *dev, uint8_t bar, uint64_t off, uint64_t val);
/* Wait until all posted writes of this process reached the device. */
int dext_pci_flush(DextPciDevice *dev);

/* Find capability @id: standard list, or PCIe extended capabilities when
 * @extended.  *off = config offset; -ENOENT if absent. */
int dext_pci_find_capability(DextPciDevice *dev, uint16_t id, bool extended,
                             uint16_t *off);
/* Set/clear PCI_COMMAND memory space and bus master enables. */
int dext_pci_set_memory_enable(DextPciDevice *dev, bool on);
int dext_pci_set_bus_master_enable(DextPciDevice *dev, bool on);
/* Function-level reset (or bus reset when FLR is absent); afterwards memory
 * and bus mastering are disabled and interrupt sources must be re-armed. */
int dext_pci_reset(DextPciDevice *dev);
void dext_pci_get_ids(const DextPciDevice *dev, uint16_t *vendor, uint16_t *device,
                      uint16_t *subvendor, uint16_t *subdevice, uint32_t *class_code);
/* "0000:01:00.0" */
const char *dext_pci_address(const DextPciDevice *dev);
/* Number of MSI-X vectors the device offers (0 if none). */
unsigned dext_pci_msix_count(DextPciDevice *dev);
/* Platform-wide interrupt counters, for latency measurements: MSI messages
 * the platform received and the CLOCK_MONOTONIC ns (microsecond resolution)
 * when it parsed the latest one, i.e. when the device's interrupt reached
 * the host side. */
int dext_platform_interrupt_stats(uint64_t *received, uint64_t *last_ns);

/*
 * Interrupt dispatch source (IOInterruptDispatchSource): binds MSI-X
 * @vector of @dev; each time the device raises it, handler(ctx, count,
 * time_ns) runs on @q (count = interrupts since the previous call, never
 * lost; time = CLOCK_MONOTONIC ns when the process saw it).  When @q is idle
 * the handler runs directly on the source's thread, holding the queue (no
 * extra wake-up, still serial with the queue's other work).
 * Created enabled.  destroy unbinds the vector and waits for a running
 * handler (unless called from @q itself).
 */
typedef struct DextInterruptSource DextInterruptSource;
int dext_interrupt_source_create(DextPciDevice *dev, unsigned vector, DextQueue *q,
                                 DextEventHandler handler, void *ctx,
                                 DextInterruptSource **out);
void dext_interrupt_source_set_enabled(DextInterruptSource *s, bool on);
void dext_interrupt_source_destroy(DextInterruptSource *s);

#ifdef __cplusplus
}
#endif
#endif
