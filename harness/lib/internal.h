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
    GArray *stop_hooks;         /* DextStopHook, run in order of addition */
    void *usb;                  /* USB client state (usb.c), freed by its stop hook */
};

/* A function run around a service's stop (see dext__service_add_stop_hook). */
typedef void (*DextStopHookFn)(DextService *svc, int phase, void *ctx);
typedef struct {
    DextStopHookFn fn;
    void *ctx;
} DextStopHook;

/* Add a hook run when @svc ends: phase 0 before the class's stop is
 * dispatched, phase 1 after it returned.  Hooks run on the control thread,
 * NOT on the service queue (so phase 0 may wait for completions that are
 * dispatched on that queue), in order of addition.  They also run (0 then
 * 1, with no stop between) when Start fails, so state made during Start is
 * freed.  Call from Start or later (any thread, before stop). */
void dext__service_add_stop_hook(DextService *svc, DextStopHookFn fn, void *ctx);

/* PROVIDER_OPEN for @svc: a connected provider-protocol channel to the
 * publisher of @svc's provider nub (SOCK_SEQPACKET, CLOEXEC; caller owns
 * *fd).  -EPERM not entitled (transport.usb), -ENODEV the provider is not
 * a live nub, the publisher's error otherwise.  Any thread; bounded by the
 * IPC timeout. */
int dext__provider_open(DextService *svc, int *fd);

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
