/* libdext internals shared by server.c, pci.c, memory.c. */
#ifndef DEXT_LIB_INTERNAL_H
#define DEXT_LIB_INTERNAL_H

#include <glib.h>
#include "dext/dext.h"
#include "ipc.h"

struct DextService {
    uint64_t id;
    uint64_t provider_id;
    char *class_name;
    const DextClassOps *ops;
    DextQueue *queue;
    void *priv;
    GVariant *props;            /* a{sv} of the provider */
    DextPciDevice *pci;
    GMutex uc_lock;
    GPtrArray *ucs;             /* DextUserClient* */
};

/* RPC to dextd on the device-access channel.  body may be floating.
 * posted: no reply is awaited.  reply may be NULL (then cleared). */
int dext__rpc(uint16_t type, GVariant *body, bool posted, DextMsg *reply);
/* Shared guest-RAM fd (fetched once), or negative errno. */
int dext__ram_fd(uint64_t *size);

/* fd and offset under which a buffer can be mapped by another process
 * (memfd for shared buffers, the guest-RAM fd for DMA buffers).  The fd is
 * borrowed. */
int dext__buffer_share(const DextBuffer *b, int *fd, uint64_t *offset);

DextPciDevice *dext__pci_new(DextService *svc);
void dext__pci_free(DextPciDevice *dev);
bool dext__pci_is_open(const DextPciDevice *dev);

#endif
