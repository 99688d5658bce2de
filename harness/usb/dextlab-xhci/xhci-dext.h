/*
 * xHCI hardware backend for a dext driver process (libdext PCI API): BAR0
 * through dext_pci_memory_read32/write32, DMA memory as libdext buffers
 * prepared with a DMA command (device addresses are what the command
 * returns), interrupter 0 on an MSI-X interrupt dispatch source whose
 * handler processes the event ring itself (irq_bind_direct).
 */
#ifndef DEXT_USB_XHCI_DEXT_H
#define DEXT_USB_XHCI_DEXT_H

#include "xhci.h"
#include "dext/pci.h"
#include "dext/queue.h"

extern const DextXhciHwOps dext_xhci_dext_ops;

/* Backend state for @dev (opened by the caller, memory decode and bus
 * mastering enabled); interrupts are dispatched on @q, which must be the
 * backend's alone (completions run there, so a busy queue would delay
 * them; the handler runs inline on the source's thread).  Freed by the
 * ops' destroy (dext_xhci_create_hw takes it). */
void *dext_xhci_dext_new(DextPciDevice *dev, DextQueue *q);

#endif
