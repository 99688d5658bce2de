/*
 * libdext user clients, driver side (IOUserClient).
 *
 * When an app opens a connection (see client.h) and dextd has checked both
 * entitlements, the service's new_user_client op gets a DextUserClient and
 * sets its dispatch table.  Each call names a selector; the library checks
 * the scalar and structure counts/sizes against the table entry BEFORE the
 * method runs, then runs the method on the method's queue (the service
 * queue by default) and checks the outputs it produced.
 *
 * Threading: methods run on their queue; dext_user_client_complete_async()
 * may be called from any thread.  Ownership: the library owns the
 * DextUserClient; it stays valid until the closed callback has returned.
 */
#ifndef DEXT_USERCLIENT_H
#define DEXT_USERCLIENT_H

#include <stddef.h>
#include <stdint.h>
#include "dext/memory.h"
#include "dext/service.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DEXT_UC_MAX_SCALARS 16
#define DEXT_UC_MAX_STRUCT  4096      /* larger data: shared memory */
#define DEXT_UC_VARIABLE    UINT32_MAX /* struct size checked only <= MAX */
#define DEXT_UC_MAX_ASYNC_DATA 16

typedef struct {
    const uint64_t *scalar_in;
    uint32_t scalar_in_count;
    const void *struct_in;
    size_t struct_in_size;
    uint64_t *scalar_out;       /* capacity scalar_out_count (from table) */
    uint32_t scalar_out_count;
    void *struct_out;           /* capacity struct_out_size */
    size_t struct_out_size;     /* in: capacity; method sets actual size */
    uint64_t async_ref;         /* non-zero: app wants a completion */
} DextMethodArgs;

typedef int (*DextMethodFn)(DextUserClient *uc, void *ctx, DextMethodArgs *args);

typedef struct {
    DextMethodFn fn;
    uint32_t scalar_in;         /* exact count */
    uint32_t struct_in;         /* exact size, or DEXT_UC_VARIABLE */
    uint32_t scalar_out;        /* exact count */
    uint32_t struct_out;        /* max size the method may produce, or VARIABLE */
    bool async;                 /* the method accepts an async_ref */
} DextMethod;

typedef struct {
    /* Memory of @type for the app (CopyClientMemoryForType).  Return a
     * buffer the driver keeps owning, and set *read_only to deny writes.
     * Shared (memfd) buffers pass only their own memory.  DMA buffers pass
     * the guest-RAM fd with the buffer's offset, so the app, the driver and
     * the device share the bytes with no copy: on the qtest platform that
     * fd covers all of guest RAM, so only entitled apps must get them. */
    int (*client_memory)(DextUserClient *uc, void *ctx, uint32_t type,
                         DextBuffer **out, bool *read_only);
    /* The app closed the connection or exited; runs on the service queue. */
    void (*closed)(DextUserClient *uc, void *ctx);
} DextUserClientOps;

/* Set in new_user_client.  table[selector]; NULL fn = invalid selector.
 * table must stay valid for the client's lifetime (normally static). */
void dext_user_client_set_dispatch(DextUserClient *uc, const DextMethod *table,
                                   uint32_t count, const DextUserClientOps *ops,
                                   void *ctx);
DextService *dext_user_client_service(DextUserClient *uc);
const char *dext_user_client_app_id(const DextUserClient *uc);
uint64_t dext_user_client_id(const DextUserClient *uc);
/* Send an async completion for a call that carried async_ref.  Never blocks
 * for long: an app that has not read for 1 s loses its connection
 * (-ETIMEDOUT here, -ENOTCONN afterwards; its closed op runs). */
int dext_user_client_complete_async(DextUserClient *uc, uint64_t async_ref,
                                    int status, const uint64_t *data, uint32_t n);

#ifdef __cplusplus
}
#endif
#endif
