/*
 * libdextclient: the app side of user clients, and daemon queries.
 *
 * An app opens a connection to a service through dextd's socket.  dextd
 * identifies the app by its executable (/proc/<pid>/exe of the peer) and
 * reads "<exe>.entitlements" next to it:
 *     [App]
 *     Id=org.example.app
 *     userclient-access=org.dextlab.dext-test     (server names, or *)
 * It opens only if that list names the driver's server AND the driver's
 * [Entitlements] userclient-access names the app id.  Then the app talks to
 * the driver directly over a private socket; dextd is out of the data path.
 *
 * Calls are validated here against the driver's dispatch table (fetched at
 * open) and again by the driver.  Async completions that arrive while a call
 * waits are queued for dext_client_wait_async().
 * Threading: a connection is used by one thread at a time.
 * Errors: negative errno; -EACCES entitlement refused, -ENOENT no such
 * service, -ECONNRESET the driver exited (the connection is then dead).
 */
#ifndef DEXT_CLIENT_H
#define DEXT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct DextConnection DextConnection;

/* by: "class" (IOUserClass), "name" (IOUserServerName) or "id" (service
 * registry id in decimal).  socket_path NULL: $DEXTD_SOCKET. */
int dext_client_open(const char *socket_path, const char *by, const char *value,
                     DextConnection **out);
void dext_client_close(DextConnection *c);
uint64_t dext_client_service_id(const DextConnection *c);
/* Number of selectors in the driver's table. */
uint32_t dext_client_method_count(const DextConnection *c);

/* Synchronous call.  *nout in: capacity, must equal the table's count;
 * *sout_len in: capacity, out: bytes produced. */
int dext_client_call(DextConnection *c, uint32_t selector,
                     const uint64_t *in, uint32_t nin,
                     const void *sin, size_t sin_len,
                     uint64_t *out, uint32_t *nout,
                     void *sout, size_t *sout_len);
/* Same with an async reference (non-zero); the method's immediate reply is
 * returned as for a sync call, the completion later. */
int dext_client_call_async(DextConnection *c, uint32_t selector, uint64_t ref,
                           const uint64_t *in, uint32_t nin,
                           const void *sin, size_t sin_len,
                           uint64_t *out, uint32_t *nout,
                           void *sout, size_t *sout_len);
/* Posted async call: sent without waiting for the driver's reply (one
 * message and one wake-up less per call; the method's outputs are dropped).
 * Returns once sent.  Calls on a connection run in order.  A call the driver
 * refuses (validation or the method's error) completes @ref (non-zero) with
 * that -errno and no data (*n = 0 from dext_client_wait_async). */
int dext_client_call_posted(DextConnection *c, uint32_t selector, uint64_t ref,
                            const uint64_t *in, uint32_t nin,
                            const void *sin, size_t sin_len);
/* Wait (bounded) for the next async completion. *n in: capacity. */
int dext_client_wait_async(DextConnection *c, int timeout_ms, uint64_t *ref,
                           int *status, uint64_t *data, uint32_t *n);
/* Pollable fd (readable when an async completion may be pending). */
int dext_client_fd(const DextConnection *c);

#define DEXT_CLIENT_MAP_READONLY 1u
/* Map the driver's memory of @type.  munmap(*addr, *size) when done. */
int dext_client_map_memory(DextConnection *c, uint32_t type, uint32_t flags,
                           void **addr, uint64_t *size);

/* Daemon queries (any local user): registry dump (text or JSON) and the
 * service table as text lines "id class server state pid launches starts". */
int dext_daemon_registry(const char *socket_path, int json, char **out);
int dext_daemon_services(const char *socket_path, char **out);
/* Stop or start a service ("stop" | "start"); needs dextd-control=true in
 * the app's entitlements.  Returns once dextd has begun the operation. */
int dext_daemon_service_ctl(const char *socket_path, uint64_t service, const char *op);

/* dextctl's queries (text for people; see dextctl.c for the columns).
 * list: one line per device and service
 *   "<dev-id> <device> <vendor>:<device-id> <class> <svc-id|-> <user-class|-> <server|->
 *    <state> <pid> <launches> <starts>" */
int dext_daemon_list(const char *socket_path, char **out);
/* Driver log lines with seq >= since, as "<server>[<pid>]: <line>\n";
 * *next: the seq to pass next time (poll with it to follow). */
int dext_daemon_log(const char *socket_path, uint64_t since, uint64_t *next, char **out);
/* One line per device x personality, tab-separated:
 *   "<device>\t<bundle>/<personality>\t<server>\t<matched|no>\t<verdict>" */
int dext_daemon_match_explain(const char *socket_path, char **out);
/* op "load" (arg: bundle folder), "unload" (arg: bundle name), "restart"
 * (arg: server or bundle name); needs dextd-control.  *out: what dextd did,
 * or on failure (negative errno) its reason. */
int dext_daemon_bundle_ctl(const char *socket_path, const char *op, const char *arg,
                           char **out);

#ifdef __cplusplus
}
#endif
#endif
