/*
 * libdext service lifecycle: a driver process ("dext") registers its
 * classes and hands control to dext_server_main().  dextd starts the
 * process once per IOUserServerName and then, for every device matched to
 * one of its personalities, creates a service: an instance of the class
 * named by IOUserClass, bound to its provider (the device nub).
 *
 *   static int my_start(DextService *svc) { ... return 0 or -errno; }
 *   static void my_stop(DextService *svc) { ... }
 *   static const DextClassOps my_class = {
 *       .name = "MyDriver", .start = my_start, .stop = my_stop,
 *   };
 *   int main(int argc, char **argv) {
 *       static const DextClassOps *const classes[] = { &my_class, NULL };
 *       return dext_server_main(argc, argv, classes);
 *   }
 *
 * Threading: start, stop, new_user_client, nub_client and nub_reset run
 * on the service's default queue (dext_service_queue()), one at a time.  Start runs before anything
 * else for the service; stop runs after every user client is closed.  A
 * Start that returns a negative errno fails cleanly: dextd logs it, the
 * device is released and stop is NOT called.  Callbacks are bounded: one
 * that takes longer than 60 s is treated as a hang and the process killed.
 * Ownership: DextService objects belong to the library; drivers keep their
 * state in dext_service_set_priv() and free it in stop (or in start's error
 * path).
 */
#ifndef DEXT_SERVICE_H
#define DEXT_SERVICE_H

#include <stdint.h>
#include "dext/queue.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct DextService DextService;
typedef struct DextPciDevice DextPciDevice;
typedef struct DextUserClient DextUserClient;

typedef struct DextClassOps {
    const char *name;                          /* matches IOUserClass */
    int (*start)(DextService *svc);            /* required */
    void (*stop)(DextService *svc);            /* required */
    /* An app opened a connection: set its dispatch table (see
     * userclient.h) and return 0, or refuse with -errno.  NULL: the class
     * offers no user clients (-EOPNOTSUPP to the app). */
    int (*new_user_client)(DextService *svc, DextUserClient *uc);
    /* Publishers only (docs/runtime/nubs.md).  A client driver of @nub
     * (a nub this service published) connected: serve the provider
     * protocol on @fd, which the callee now owns (also on error: close
     * it).  Return 0, or -errno to refuse (the client's PROVIDER_OPEN gets
     * it).  NULL: refused with -EOPNOTSUPP.  Runs on the service queue. */
    int (*nub_client)(DextService *svc, uint64_t nub, uint64_t client_service, int fd);
    /* The client driver of @nub crashed (or hung and was killed): reset
     * the device; it may terminate @nub and publish new nubs.  Runs on the
     * service queue.  NULL: nothing is reset (dextd logs it). */
    int (*nub_reset)(DextService *svc, uint64_t nub);
} DextClassOps;

/* Run the server: connect to dextd over the inherited control channel,
 * serve START/STOP/NEW_CLIENT until dextd closes the channel or stops every
 * service.  Returns the process exit status (0 on orderly shutdown). */
int dext_server_main(int argc, char **argv, const DextClassOps *const *classes);

/* The server name (IOUserServerName) of this process. */
const char *dext_server_name(void);

uint64_t dext_service_id(const DextService *svc);
const char *dext_service_class(const DextService *svc);
DextQueue *dext_service_queue(DextService *svc);
void dext_service_set_priv(DextService *svc, void *priv);
void *dext_service_get_priv(const DextService *svc);
/* Provider (nub) registry id and a property of it as a GVariant text
 * (g_free), e.g. "vendor-id" -> "0x1af4"; NULL if absent. */
uint64_t dext_service_provider_id(const DextService *svc);
char *dext_service_provider_property(const DextService *svc, const char *key);
/* Integer property (any integer GVariant type); -ENOENT / -EINVAL. */
int dext_service_provider_u64(const DextService *svc, const char *key, uint64_t *out);
/* The provider as a PCI device, or NULL if the provider is not PCI.
 * Borrowed: valid until stop returns. */
DextPciDevice *dext_service_pci(DextService *svc);

/* Publish a nub (a provider object other drivers match against, e.g.
 * IOUSBHostDevice) into dextd's registry under this service
 * (@parent_nub 0) or under a live nub this service published.
 * @props_text: GVariant text of type a{sv} (NULL: none), e.g.
 *   "{'idVendor': <uint16 0x1234>, 'idProduct': <uint16 0x46f4>}".
 * dextd matches personalities against the nub and starts what wins; their
 * Start may run before this call returns.  The bundle needs the
 * entitlement publishes=<IOClass> (-EPERM).  Errors: -EINVAL (bad text,
 * class, name or properties), -ENOENT (parent), -ENOSPC (256 live nubs),
 * -ESHUTDOWN (dextd gone).  Any thread.  A service's nubs are terminated
 * when it stops. */
int dext_service_publish_nub(DextService *svc, uint64_t parent_nub, const char *name,
                             const char *io_class, const char *props_text,
                             uint64_t *nub_id);
/* Terminate a nub this service published: its children first, each
 * client driver on it gets Stop, the entry leaves the registry.
 * Asynchronous: returns once dextd has accepted it.  Any thread. */
int dext_service_terminate_nub(DextService *svc, uint64_t nub_id);

#ifdef __cplusplus
}
#endif
#endif
