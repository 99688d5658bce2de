/*
 * dextlab IPC: the message protocol spoken between dextd, driver processes
 * and apps.
 *
 * Transport: AF_UNIX SOCK_SEQPACKET, one message per datagram, up to
 * DEXT_IPC_MAX_FDS file descriptors per message over SCM_RIGHTS.
 *
 * Wire format: a fixed 24-byte little-endian header (DextMsgHeader) followed by
 * body_size bytes holding a serialised GVariant whose type is fixed by the
 * message type (see the catalogue in ipc.c).  GVariant's deserialiser is
 * built for untrusted input (it is what D-Bus uses); we additionally demand
 * normal form, so every accepted body has exactly one encoding.
 * On a decode failure m->serial holds the header's serial when the header
 * could be read (so an ERROR reply can name it), else 0.
 *
 * Validation on receive (dext_msg_decode): datagram size >= header, magic,
 * version, body_size == bytes received - header, known type, type allowed on
 * this channel, REPLY/POSTED flags consistent, fd count equals the catalogue's
 * count, body in normal form of the expected type.  Any failure returns a
 * negative errno plus a reason; all received fds are closed.  The caller
 * decides whether to send an error reply (well-framed message it cannot
 * honour) or drop that one connection (framing broken).
 *
 * Error convention: negative errno everywhere.
 * Threading: the codec is pure; a socket must be used by one sender and one
 * receiver at a time (callers serialise, see dext_ipc_call()).
 */
#ifndef DEXT_IPC_H
#define DEXT_IPC_H

#include <glib.h>
#include <stdint.h>
#include <stdbool.h>

#define DEXT_IPC_MAGIC      0x31545844u /* "DXT1" little-endian */
#define DEXT_IPC_VERSION    1
#define DEXT_IPC_HDR_SIZE   24
#define DEXT_IPC_MAX_MSG    (64 * 1024)
#define DEXT_IPC_MAX_BODY   (DEXT_IPC_MAX_MSG - DEXT_IPC_HDR_SIZE)
#define DEXT_IPC_MAX_FDS    4

/* Default bound on any blocking wait for a reply. */
#define DEXT_IPC_TIMEOUT_MS 10000

/* Header flags */
#define DEXT_MSG_F_REPLY    0x0001 /* this is a reply to reply_to */
#define DEXT_MSG_F_POSTED   0x0002 /* request wants no reply (posted write) */

/* Channels: which side may send which request. */
typedef enum {
    DEXT_CH_CTRL = 1u << 0, /* dextd -> driver (control socketpair) */
    DEXT_CH_RPC  = 1u << 1, /* driver -> dextd (device access socketpair) */
    DEXT_CH_APP  = 1u << 2, /* app -> dextd (listening socket) */
    DEXT_CH_UC   = 1u << 3, /* app -> driver (user-client socketpair) */
    DEXT_CH_UCEV = 1u << 4, /* driver -> app (async events on the same pair) */
    DEXT_CH_PROV = 1u << 5, /* client driver -> nub publisher (provider socketpair) */
    DEXT_CH_PROVEV = 1u << 6, /* publisher -> client driver (events on the same pair) */
} DextChannel;

/* Every channel (codec tests, fuzzers, ERROR replies). */
#define DEXT_CH_ALL (DEXT_CH_CTRL | DEXT_CH_RPC | DEXT_CH_APP | DEXT_CH_UC | DEXT_CH_UCEV | \
                     DEXT_CH_PROV | DEXT_CH_PROVEV)
#define DEXT_CH_COUNT 7

typedef enum {
    DEXT_MSG_ERROR = 1,     /* reply only: (is) -errno, reason */
    /* CTRL: dextd -> driver */
    DEXT_MSG_START = 16,    /* (tsta{sv}) service, class, provider, props -> (i) */
    DEXT_MSG_STOP,          /* (t) service -> (i) */
    DEXT_MSG_NEW_CLIENT,    /* (tts) service, client, app-id + fd -> (i) */
    DEXT_MSG_PING,          /* () -> () */
    /* Nubs published by a driver (docs/runtime/nubs.md) */
    DEXT_MSG_NUB_CLIENT,    /* (tt) nub, client service + fd -> (i): serve the
                             * provider protocol for that client on fd */
    DEXT_MSG_NUB_RESET,     /* (t) nub -> (i): the nub's client crashed: reset
                             * the device (USB: port reset, nub re-published) */
    /* RPC: driver -> dextd */
    DEXT_MSG_HELLO = 32,    /* (sx) server-name, pid -> (u) version */
    DEXT_MSG_PCI_OPEN,      /* (t) device -> () */
    DEXT_MSG_PCI_CLOSE,     /* (t) -> () */
    DEXT_MSG_CFG_READ,      /* (tqy) device, offset, width -> (u) */
    DEXT_MSG_CFG_WRITE,     /* (tqyu) -> () */
    DEXT_MSG_MMIO_READ,     /* (tyty) device, bar, offset, width -> (t) */
    DEXT_MSG_MMIO_WRITE,    /* (tytyt) ..., value -> () or POSTED */
    DEXT_MSG_DMA_RAM,       /* () -> (t) size + fd (shared guest RAM) */
    DEXT_MSG_DMA_ALLOC,     /* (tt) size, align -> (ttt) iova, size, ram-offset */
    DEXT_MSG_DMA_FREE,      /* (t) iova -> () */
    DEXT_MSG_IRQ_BIND,      /* (tu) device, vector -> (u) nvectors + eventfd */
    DEXT_MSG_IRQ_UNBIND,    /* (tu) -> () */
    DEXT_MSG_RESET,         /* (tu) device, flags -> () */
    DEXT_MSG_SYNC,          /* () -> ()   flushes posted writes */
    DEXT_MSG_IRQ_INFO,      /* (t) device -> (u) number of MSI-X vectors */
    DEXT_MSG_IRQ_STATS,     /* () -> (tt) MSIs received, ns when the last was parsed */
    DEXT_MSG_NUB_PUBLISH,   /* (ttssa{sv}) publishing service, parent nub (0: the
                             * service), name, IOClass, properties -> (t) nub id */
    DEXT_MSG_NUB_TERMINATE, /* (t) nub -> (): its clients are stopped, its
                             * children terminated, its entry removed */
    DEXT_MSG_PROVIDER_OPEN, /* (t) own service whose provider is a published nub
                             * -> () + fd: a provider-protocol channel to it */
    DEXT_MSG_MMIO_CHANNEL,  /* (t) open device -> (uat) channel id, bytes granted
                             * from the start of BAR 0..5 + fd: a direct MMIO
                             * channel to the device (harness/common/mmio-channel.h;
                             * replaces the caller's previous one); -ENOTSUP
                             * where the platform has none */
    /* APP: app -> dextd */
    DEXT_MSG_OPEN = 64,     /* (ss) by ("class"|"name"|"id"), value -> (tt) service, client + fd */
    DEXT_MSG_REGISTRY,      /* (b) json -> (s) dump */
    DEXT_MSG_SERVICES,      /* () -> (a(tsssxuu)) id class server state pid launches starts */
    DEXT_MSG_SERVICE_CTL,   /* (ts) service, "stop"|"start" -> () (needs dextd-control) */
    /* Added for dextctl (same protocol version: an older dextd answers an
     * unknown type with an ERROR reply, which dextctl reports). */
    DEXT_MSG_LIST,          /* () -> (a(tsqqutsssxuu)) device id, name, vendor, device,
                             * class, service id (0: none), user class, server, state,
                             * pid, launches, starts; one row per service or bare device */
    DEXT_MSG_LOG,           /* (tu) first seq, max lines -> (ta(txss)) next seq,
                             * (seq, pid, server, line) from dextd's driver log ring */
    DEXT_MSG_MATCH_EXPLAIN, /* () -> (a(ssssbs)) device, bundle/personality, user class,
                             * server, won, verdict ("matched ..." or the first reason not) */
    DEXT_MSG_BUNDLE_CTL,    /* (ss) "load"|"unload"|"restart", bundle dir | bundle name |
                             * server name -> (s) what was done (needs dextd-control) */
    /* UC: app -> driver */
    DEXT_MSG_UC_METHODS = 80, /* () -> (a(uuuuu)) sel, nscalar-in, struct-in, nscalar-out, struct-out */
    DEXT_MSG_UC_CALL,       /* (uatayuut) selector, scalars, struct, scalar-out count,
                             * struct-out capacity, async-ref (0 = sync) -> (atay) */
    DEXT_MSG_UC_MEMORY,     /* (uu) type, flags -> (tt) size, offset + fd */
    /* UCEV: driver -> app */
    DEXT_MSG_UC_ASYNC = 96, /* (tiat) async-ref, status, data; always POSTED */
    /* PROV: client driver -> USB nub publisher (docs/runtime/nubs.md) */
    DEXT_MSG_USB_INFO = 112,/* () -> (uyayay) speed, current configuration value
                             * (0 unconfigured), device descriptor, active (or
                             * first) configuration descriptor set */
    DEXT_MSG_USB_OPEN,      /* () -> () exclusive open of the nub's device or
                             * interface */
    DEXT_MSG_USB_CLOSE,     /* () -> () */
    DEXT_MSG_USB_CONTROL,   /* (yyqqquay) bmRequestType, bRequest, wValue, wIndex,
                             * wLength, timeout ms, OUT data -> (uay) actual, IN data */
    DEXT_MSG_USB_SET_CONFIG,/* (y) value -> () (device nubs) */
    DEXT_MSG_USB_SELECT_ALT,/* (y) alternate setting -> () (interface nubs) */
    DEXT_MSG_USB_BUFFER_ALLOC, /* (tu) capacity, direction -> (ttt) handle,
                             * capacity, mmap offset + fd */
    DEXT_MSG_USB_BUFFER_FREE,  /* (t) handle -> () */
    DEXT_MSG_USB_IO,        /* (yttuut) endpoint address, buffer, offset, length,
                             * timeout ms, async-ref (0: sync) -> (iut) status,
                             * actual, timestamp ns (async: (0,0,0) = queued);
                             * an async one may be POSTED: no reply, a refusal
                             * is its USB_IO_DONE */
    DEXT_MSG_USB_ABORT,     /* (y) endpoint -> () */
    DEXT_MSG_USB_CLEAR_STALL, /* (y) endpoint -> () */
    /* PROVEV: publisher -> client driver */
    DEXT_MSG_USB_IO_DONE = 128, /* (tiut) async-ref, status, actual, timestamp;
                             * always POSTED */
} DextMsgType;

typedef struct {
    uint16_t type;
    const char *name;
    const char *req_sig;
    const char *reply_sig;
    uint8_t req_fds;
    uint8_t reply_fds;
    uint32_t channels;      /* DextChannel mask the request may travel on */
    bool may_post;          /* request may carry DEXT_MSG_F_POSTED */
} DextMsgSpec;

typedef struct {
    uint16_t type;
    uint16_t flags;
    uint32_t serial;
    uint32_t reply_to;
    GVariant *body;         /* owned, non-floating; NULL only after clear */
    int fds[DEXT_IPC_MAX_FDS];
    unsigned nfds;          /* fds owned by the message until taken */
} DextMsg;

const DextMsgSpec *dext_msg_spec(uint16_t type);
const char *dext_msg_name(uint16_t type);

/* Build messages.  Body may be floating; it is sunk.  fds are borrowed by
 * send (the caller still owns them); after decode they belong to the msg. */
void dext_msg_init(DextMsg *m, uint16_t type, GVariant *body);
void dext_msg_init_reply(DextMsg *m, const DextMsg *req, GVariant *body);
void dext_msg_init_error(DextMsg *m, const DextMsg *req, int neg_errno,
                         const char *fmt, ...) G_GNUC_PRINTF(4, 5);
/* Release body and close any fds still owned. */
void dext_msg_clear(DextMsg *m);
/* Take ownership of fd i (returns -1 if absent). */
int dext_msg_take_fd(DextMsg *m, unsigned i);

/* Encode into buf (cap bytes); returns length or negative errno. */
ssize_t dext_msg_encode(const DextMsg *m, uint8_t *buf, size_t cap);
/* Decode and validate; on success m owns fds.  On failure every fd in fds is
 * closed and *reason (if non-NULL) gets a static or g_strdup'ed-free string
 * describing why (callers g_free it). */
int dext_msg_decode(const uint8_t *buf, size_t len, const int *fds,
                    unsigned nfds, uint32_t channels, DextMsg *m,
                    char **reason);

/* Socket helpers.  send: borrowed fds.  recv: bounded by timeout_ms (<0 means
 * wait forever is NOT offered: negative values are treated as the default
 * bound).  Return 0 or negative errno; -EPIPE/-ECONNRESET means peer gone. */
int dext_ipc_send(int sock, DextMsg *m);
/* The same towards a peer that may stop reading: never blocks, waits at most
 * @timeout_ms for room in the peer's queue, then -ETIMEDOUT. */
int dext_ipc_send_timeout(int sock, DextMsg *m, int timeout_ms);
int dext_ipc_recv(int sock, uint32_t channels, DextMsg *m, int timeout_ms,
                  char **reason);
/* Send request (serial assigned from *serial_ctr) and wait for its reply.
 * An ERROR reply is turned into its -errno (message in *reason). */
int dext_ipc_call(int sock, uint32_t channels, uint32_t *serial_ctr,
                  DextMsg *req, DextMsg *reply, int timeout_ms, char **reason);

/* Create a CLOEXEC SOCK_SEQPACKET socketpair. */
int dext_ipc_socketpair(int sv[2]);

#endif
