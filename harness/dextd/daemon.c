/*
 * dextd: enumeration -> registry -> matching -> one process per
 * IOUserServerName -> Start/Stop, device access for drivers, user-client
 * brokering for apps, crash detection and release.  See daemon.h.
 */
#include "daemon.h"
#include "ipc.h"
#include "personality.h"
#include "registry.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <glib-unix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define HELLO_TIMEOUT_MS   10000
#define START_TIMEOUT_MS   65000  /* the library's own bound is 60 s */
#define STOP_TIMEOUT_MS    5000
#define POLICY_WINDOW_US   (60 * G_USEC_PER_SEC)
#define MAX_RPC_BATCH      256
#define MAX_APP_CONNS      128    /* bounds what local clients can pin */
#define MAX_DMA_ALLOCS     4096   /* per server: one driver cannot exhaust
                                   * the DMA pool entry table for others */
#define LOG_RING_LINES     2000   /* driver log lines kept for dextctl log */
#define LOG_LINE_MAX       1024   /* longer lines are cut (and say so) */
#define LOG_REPLY_BYTES    (32 * 1024) /* text per LOG reply, under one message */
#define UNLOAD_TIMEOUT_MS  5000   /* a server being unloaded gets this to exit */
/* Nubs (docs/runtime/nubs.md) */
#define NUB_MAX_PER_SERVICE 256
#define NUB_MAX_PROPS      64
#define NUB_MAX_KEY        64
#define NUB_MAX_VALUE      4096
#define NUB_MAX_NAME       64
/* The publisher's answer to NUB_CLIENT must reach the client before its own
 * RPC bound (DEXT_IPC_TIMEOUT_MS) runs out. */
#define PROVIDER_OPEN_TIMEOUT_MS (DEXT_IPC_TIMEOUT_MS - 2000)

typedef struct Server Server;
typedef struct Service Service;

/* A provider: a PCI function, or a nub a driver published (nub == true:
 * no PCI fields, never opened with PCI_OPEN). */
typedef struct Device Device;
struct Device {
    DextRegEntry *entry;
    uint64_t id;
    DextPciFunction fn;
    DextDeviceInfo info;
    Server *opened_by;
    GArray *irqs;            /* unsigned vectors bound on behalf of opened_by */
    unsigned mmio_chan;      /* opened_by's direct MMIO channel (0: none) */
    uint32_t cmd_at_enum;    /* PCI_COMMAND as enumeration left it */
    bool nub;
    char *label;             /* nubs: "IOClass:name" for lists and explain */
    Service *publisher;      /* nubs: the publishing service */
    Device *parent_nub;      /* nubs: NULL when published under the service */
    bool terminating;        /* nubs: clients stopping; reaped when done */
};

typedef enum {
    SVC_MATCHED, SVC_LAUNCHING, SVC_STARTING, SVC_RUNNING, SVC_STOPPING,
    SVC_STOPPED, SVC_FAILED, SVC_CRASHED, SVC_GAVE_UP,
} SvcState;

static const char *const svc_state_names[] = {
    "matched", "launching", "starting", "running", "stopping", "stopped",
    "start-failed", "crashed", "gave-up",
};

struct Service {
    uint64_t id;             /* registry id of the driver instance entry */
    DextRegEntry *entry;
    Device *dev;
    const DextPersonality *p;
    Server *srv;
    SvcState state;
    unsigned starts;
    unsigned specificity;
    unsigned nubs;           /* live nubs it published */
    bool stop_after_nubs;    /* STOP is sent once its nubs are gone */
};

struct Server {
    Dextd *d;
    char *name;
    DextBundle *bundle;
    GPtrArray *services;     /* Service* (not owned) */
    GPid pid;
    int ctrl_fd, rpc_fd;
    guint ctrl_watch, rpc_watch, child_watch, timer;
    uint32_t ctrl_serial;
    GHashTable *pending;     /* serial -> Pending* */
    GArray *dma;             /* uint64 iova */
    bool hello;
    bool killed_by_us;
    bool gave_up;
    unsigned launches;
    GArray *ends;            /* gint64 monotonic times of abnormal ends */
    int log_fd;              /* read end of the process's stdout+stderr pipe */
    guint log_watch;
    GString *log_partial;    /* an unterminated line so far */
    bool restarting;         /* killed for dextctl restart: relaunch at once */
    bool unloading;          /* bundle being unloaded: free on exit */
    bool unload_after_nubs;  /* unloaded once its services' nubs are gone */
    unsigned resets_pending; /* NUB_RESETs sent for its crash, not answered */
    bool relaunch_waiting;   /* relaunch due once they are answered */
};

/* One line a driver process wrote to stdout or stderr. */
typedef struct {
    uint64_t seq;
    gint64 pid;
    char *server;
    char *line;
} LogLine;

typedef enum { P_START, P_STOP, P_OPEN, P_NUB_CLIENT, P_NUB_RESET } PendingKind;

typedef struct {
    PendingKind kind;
    Service *svc;            /* P_START, P_STOP, P_OPEN */
    uint64_t app_id;         /* AppConn id for P_OPEN */
    uint32_t app_serial;     /* P_OPEN: the app's request; P_NUB_CLIENT: the
                              * client driver's PROVIDER_OPEN */
    uint64_t client_id;
    int app_fd;              /* our end to give the app (or client driver) */
    guint timer;
    Server *srv;
    uint32_t serial;
    bool counted;            /* P_STOP: counted in stops_pending */
    uint64_t nub;            /* P_NUB_CLIENT, P_NUB_RESET */
    char *client_srv;        /* P_NUB_CLIENT: client server name and pid (the
                              * P_NUB_RESET: the crashed client's server */
    GPid client_pid;         /* Server may be gone or relaunched by the reply) */
    bool timed_out;          /* P_NUB_CLIENT: client already told -ETIMEDOUT */
} Pending;

typedef struct {
    uint64_t id;
    int fd;
    guint watch;
    pid_t pid;
} AppConn;

struct Dextd {
    DextdConfig cfg;
    DextdMachine *machine;
    DextPlatform *plat;
    DextRegistry *reg;
    GPtrArray *devices;      /* Device* owned */
    GPtrArray *bundles;      /* DextBundle* owned */
    GPtrArray *personalities;/* borrowed from bundles */
    GPtrArray *services;     /* Service* owned */
    GHashTable *servers;     /* name -> Server* owned */
    GHashTable *apps;        /* id -> AppConn* owned */
    uint64_t next_app_id;
    uint64_t next_client_id;
    int listen_fd;
    guint listen_watch;
    char *socket_path;
    GMainLoop *loop;
    bool shutting_down;
    unsigned stops_pending;
    guint quit_timer;
    int exit_status;
    GQueue log_ring;         /* LogLine*, oldest first, at most LOG_RING_LINES */
    uint64_t log_seq;        /* seq of the next line */
    guint reap_idle;         /* terminated nubs and idle servers are reaped here */
};

static bool verbose;

void dextd_log(GLogLevelFlags level, const char *fmt, ...)
{
    if ((level & G_LOG_LEVEL_DEBUG) && !verbose) {
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    char *msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    const char *lv = (level & G_LOG_LEVEL_ERROR) || (level & G_LOG_LEVEL_CRITICAL) ? "error"
                     : (level & G_LOG_LEVEL_WARNING) ? "warning"
                     : (level & G_LOG_LEVEL_DEBUG) ? "debug" : "info";
    gint64 t = g_get_monotonic_time();
    char *line = g_strdup_printf("[dextd %" G_GINT64_FORMAT ".%03d] %s: %s\n",
                                 t / G_USEC_PER_SEC, (int)(t / 1000 % 1000), lv, msg);
    if (write(STDERR_FILENO, line, strlen(line)) < 0) {
        /* stderr gone: nothing to do */
    }
    g_free(line);
    g_free(msg);
}

#define LOGI(...) dextd_log(G_LOG_LEVEL_INFO, __VA_ARGS__)
#define LOGW(...) dextd_log(G_LOG_LEVEL_WARNING, __VA_ARGS__)
#define LOGE(...) dextd_log(G_LOG_LEVEL_CRITICAL, __VA_ARGS__)
#define LOGD(...) dextd_log(G_LOG_LEVEL_DEBUG, __VA_ARGS__)

static void platform_log(void *opaque, GLogLevelFlags level, const char *msg)
{
    dextd_log(level, "platform: %s", msg);
}

/* ---- registry ------------------------------------------------------------ */

static void svc_set_state(Service *s, SvcState st)
{
    s->state = st;
    dext_reg_entry_set(s->entry, "state", g_variant_new_string(svc_state_names[st]));
    dext_reg_entry_set(s->entry, "starts", g_variant_new_uint32(s->starts));
}

static Device *device_by_id(Dextd *d, uint64_t id)
{
    for (guint i = 0; i < d->devices->len; i++) {
        Device *dev = d->devices->pdata[i];
        if (dev->id == id) {
            return dev;
        }
    }
    return NULL;
}

/* A device's name in lists: a nub's is its IOClass and name. */
static const char *dev_label(const Device *dev)
{
    return dev->nub ? dev->label : dext_reg_entry_name(dev->entry);
}

static const char *bar_kind(DextBarKind k)
{
    switch (k) {
    case DEXT_BAR_MEM32: return "mem32";
    case DEXT_BAR_MEM64: return "mem64";
    case DEXT_BAR_IO: return "io";
    default: return "none";
    }
}

static int publish_pci(Dextd *d, char **err)
{
    DextPciFunction *fns = NULL;
    size_t n = 0;
    int rc = dext_platform_pci_enumerate(d->plat, false, &fns, &n);
    if (rc < 0) {
        *err = g_strdup_printf("PCI enumeration failed: %s", dext_platform_last_error(d->plat));
        return rc;
    }
    DextRegEntry *host = dext_registry_add(d->reg, NULL, "pci0000:00", "IOPCIHostBridge");
    dext_reg_entry_set(host, "platform", g_variant_new_string(dext_platform_backend_name(d->plat)));
    for (size_t i = 0; i < n; i++) {
        DextPciFunction *f = &fns[i];
        char addr[13];
        dext_pci_addr_format(f->addr, addr);
        DextRegEntry *parent = host;
        if (f->has_parent) {
            for (guint k = 0; k < d->devices->len; k++) {
                Device *pd = d->devices->pdata[k];
                if (dext_pci_addr_equal(pd->fn.addr, f->parent)) {
                    parent = pd->entry;
                }
            }
        }
        Device *dev = g_new0(Device, 1);
        dev->fn = *f;
        dev->irqs = g_array_new(FALSE, FALSE, sizeof(unsigned));
        if (dext_platform_cfg_read(d->plat, f->addr, 0x04, 2, &dev->cmd_at_enum) < 0) {
            dev->cmd_at_enum = 0;
        }
        dev->entry = dext_registry_add(d->reg, parent, addr, "IOPCIDevice");
        dev->id = dext_reg_entry_id(dev->entry);
        uint32_t cls = (uint32_t)f->class_base << 16 | f->class_sub << 8 | f->class_prog_if;
        dev->info = (DextDeviceInfo){
            .kind = DEXT_PROVIDER_PCI, .vendor = f->vendor_id, .device = f->device_id,
            .subvendor = f->subsys_vendor_id, .subdevice = f->subsys_id, .class_code = cls,
        };
        DextRegEntry *e = dev->entry;
        dext_reg_entry_set(e, "IOClass", g_variant_new_string("IOPCIDevice"));
        dext_reg_entry_set(e, "pci-address", g_variant_new_string(addr));
        dext_reg_entry_set(e, "vendor-id", g_variant_new_uint16(f->vendor_id));
        dext_reg_entry_set(e, "device-id", g_variant_new_uint16(f->device_id));
        dext_reg_entry_set(e, "subsystem-vendor-id", g_variant_new_uint16(f->subsys_vendor_id));
        dext_reg_entry_set(e, "subsystem-id", g_variant_new_uint16(f->subsys_id));
        dext_reg_entry_set(e, "class-code", g_variant_new_uint32(cls));
        dext_reg_entry_set(e, "revision-id", g_variant_new_byte(f->revision));
        dext_reg_entry_set(e, "msix-vectors", g_variant_new_uint16(f->msix_table_size));
        dext_reg_entry_set(e, "msi-vectors", g_variant_new_byte(f->msi_vectors));
        dext_reg_entry_set(e, "has-flr", g_variant_new_boolean(f->has_flr));
        if (f->is_bridge) {
            dext_reg_entry_set(e, "secondary-bus", g_variant_new_byte(f->secondary_bus));
        }
        GVariantBuilder b;
        g_variant_builder_init(&b, G_VARIANT_TYPE("a(ystt)"));
        for (unsigned k = 0; k < DEXT_PCI_NUM_BARS; k++) {
            if (f->bars[k].kind != DEXT_BAR_NONE && f->bars[k].size) {
                g_variant_builder_add(&b, "(ystt)", k, bar_kind(f->bars[k].kind),
                                      (guint64)f->bars[k].addr, (guint64)f->bars[k].size);
            }
        }
        dext_reg_entry_set(e, "bars", g_variant_builder_end(&b));
        g_ptr_array_add(d->devices, dev);
        LOGD("published %s %04x:%04x class %06x", addr, f->vendor_id, f->device_id, cls);
    }
    g_free(fns);
    return 0;
}

/* ---- bundles and matching ---------------------------------------------- */

static void load_bundles(Dextd *d)
{
    for (const char *const *dir = d->cfg.driver_dirs; dir && *dir; dir++) {
        /* A bundle folder itself (DIR/<basename>.personality) loads alone. */
        char *base = g_path_get_basename(*dir);
        char *self = g_strdup_printf("%s/%s.personality", *dir, base);
        bool is_bundle = g_file_test(self, G_FILE_TEST_IS_REGULAR);
        g_free(self);
        g_free(base);
        if (is_bundle) {
            GError *e = NULL;
            DextBundle *b = dext_bundle_load(*dir, &e);
            if (!b) {
                LOGE("bundle %s rejected: %s", *dir, e->message);
                g_error_free(e);
            } else {
                LOGI("loaded bundle %s (%u personalities)", b->name, b->personalities->len);
                g_ptr_array_add(d->bundles, b);
                for (guint k = 0; k < b->personalities->len; k++) {
                    g_ptr_array_add(d->personalities, b->personalities->pdata[k]);
                }
            }
            continue;
        }
        GDir *gd = g_dir_open(*dir, 0, NULL);
        if (!gd) {
            LOGW("cannot open drivers folder %s", *dir);
            continue;
        }
        GPtrArray *names = g_ptr_array_new_with_free_func(g_free);
        const char *name;
        while ((name = g_dir_read_name(gd))) {
            g_ptr_array_add(names, g_strdup(name));
        }
        g_dir_close(gd);
        g_ptr_array_sort(names, (GCompareFunc)g_ascii_strcasecmp);
        for (guint i = 0; i < names->len; i++) {
            char *bdir = g_build_filename(*dir, names->pdata[i], NULL);
            char *pf = g_strdup_printf("%s/%s.personality", bdir, (char *)names->pdata[i]);
            if (g_file_test(pf, G_FILE_TEST_IS_REGULAR)) {
                GError *e = NULL;
                DextBundle *b = dext_bundle_load(bdir, &e);
                if (!b) {
                    /* A broken bundle is skipped; the rest still load. */
                    LOGE("bundle %s rejected: %s", bdir, e->message);
                    g_error_free(e);
                } else {
                    LOGI("loaded bundle %s (%u personalities)", b->name, b->personalities->len);
                    g_ptr_array_add(d->bundles, b);
                    for (guint k = 0; k < b->personalities->len; k++) {
                        g_ptr_array_add(d->personalities, b->personalities->pdata[k]);
                    }
                }
            }
            g_free(pf);
            g_free(bdir);
        }
        g_ptr_array_free(names, TRUE);
    }
}

/* ---- driver logs ----------------------------------------------------------
 * Each driver process's stdout and stderr go to one pipe that dextd reads:
 * every complete line is copied unchanged to dextd's stderr (where it went
 * before) and kept, tagged with server name and pid, in a bounded ring that
 * dextctl log reads.  The pipe is drained before dextd handles anything else
 * from that process, so a line written before a reply is in the ring (and
 * the log) by the time the reply has been acted on. */

static void log_line_free(gpointer data)
{
    LogLine *l = data;
    g_free(l->server);
    g_free(l->line);
    g_free(l);
}

static void log_add(Dextd *d, Server *srv, const char *text, size_t len)
{
    LogLine *l = g_new0(LogLine, 1);
    l->seq = d->log_seq++;
    l->pid = srv->pid;
    l->server = g_strdup(srv->name);
    if (len > LOG_LINE_MAX) {
        l->line = g_strdup_printf("%.*s... (%zu bytes cut)", LOG_LINE_MAX, text,
                                  len - LOG_LINE_MAX);
    } else {
        l->line = g_strndup(text, len);
    }
    /* Keep the text printable on a terminal: no escape sequences from drivers. */
    for (char *c = l->line; *c; c++) {
        if ((unsigned char)*c < 0x20 && *c != '\t') {
            *c = '?';
        }
    }
    g_queue_push_tail(&d->log_ring, l);
    while (g_queue_get_length(&d->log_ring) > LOG_RING_LINES) {
        log_line_free(g_queue_pop_head(&d->log_ring));
    }
    /* what dextd's own stderr always showed */
    char *out = g_strdup_printf("%.*s\n", (int)len, text);
    if (write(STDERR_FILENO, out, strlen(out)) < 0) {
        /* nowhere to report it */
    }
    g_free(out);
}

/* Read what is there (never blocks); returns false at EOF or error. */
static bool log_drain(Server *srv)
{
    char buf[4096];
    if (srv->log_fd < 0) {
        return false;
    }
    for (;;) {
        ssize_t n = read(srv->log_fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return true;
        }
        if (n <= 0) {
            if (srv->log_partial->len) {
                log_add(srv->d, srv, srv->log_partial->str, srv->log_partial->len);
                g_string_truncate(srv->log_partial, 0);
            }
            return false;
        }
        const char *p = buf, *end = buf + n;
        while (p < end) {
            const char *nl = memchr(p, '\n', end - p);
            if (!nl) {
                g_string_append_len(srv->log_partial, p, end - p);
                if (srv->log_partial->len > 4 * LOG_LINE_MAX) {
                    log_add(srv->d, srv, srv->log_partial->str, srv->log_partial->len);
                    g_string_truncate(srv->log_partial, 0);
                }
                break;
            }
            if (srv->log_partial->len) {
                g_string_append_len(srv->log_partial, p, nl - p);
                log_add(srv->d, srv, srv->log_partial->str, srv->log_partial->len);
                g_string_truncate(srv->log_partial, 0);
            } else {
                log_add(srv->d, srv, p, nl - p);
            }
            p = nl + 1;
        }
    }
}

static void log_close(Server *srv)
{
    if (srv->log_fd < 0) {
        return;
    }
    log_drain(srv);
    if (srv->log_watch) {
        g_source_remove(srv->log_watch);
        srv->log_watch = 0;
    }
    close(srv->log_fd);
    srv->log_fd = -1;
}

static gboolean on_log(gint fd, GIOCondition cond, gpointer data)
{
    Server *srv = data;
    if (!log_drain(srv)) {
        srv->log_watch = 0;
        close(srv->log_fd);
        srv->log_fd = -1;
        return G_SOURCE_REMOVE;
    }
    return G_SOURCE_CONTINUE;
}

static void server_free(gpointer data)
{
    Server *s = data;
    log_close(s);
    g_string_free(s->log_partial, TRUE);
    g_ptr_array_free(s->services, TRUE);
    g_hash_table_destroy(s->pending);
    g_array_free(s->dma, TRUE);
    g_array_free(s->ends, TRUE);
    g_free(s->name);
    g_free(s);
}

/* Create the service for match r on dev (and its server if new). */
static Service *add_service(Dextd *d, Device *dev, const DextMatchResult *r)
{
    Server *srv = g_hash_table_lookup(d->servers, r->p->server_name);
    if (srv && srv->bundle != r->p->bundle) {
        LOGE("server name %s is used by bundles %s and %s: %s/%s not started",
             r->p->server_name, srv->bundle->name, r->p->bundle->name,
             r->p->bundle->name, r->p->name);
        return NULL;
    }
    if (!srv) {
        srv = g_new0(Server, 1);
        srv->d = d;
        srv->name = g_strdup(r->p->server_name);
        srv->bundle = r->p->bundle;
        srv->services = g_ptr_array_new();
        srv->pending = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, NULL);
        srv->dma = g_array_new(FALSE, FALSE, sizeof(uint64_t));
        srv->ends = g_array_new(FALSE, FALSE, sizeof(gint64));
        srv->ctrl_fd = srv->rpc_fd = srv->log_fd = -1;
        srv->log_partial = g_string_new(NULL);
        g_hash_table_insert(d->servers, srv->name, srv);
    }
    Service *s = g_new0(Service, 1);
    s->dev = dev;
    s->p = r->p;
    s->srv = srv;
    s->specificity = r->specificity;
    s->entry = dext_registry_add(d->reg, dev->entry, r->p->user_class, r->p->user_class);
    s->id = dext_reg_entry_id(s->entry);
    dext_reg_entry_set(s->entry, "IOUserServerName", g_variant_new_string(srv->name));
    dext_reg_entry_set(s->entry, "IOPersonality",
                       g_variant_new_take_string(g_strdup_printf("%s/%s", r->p->bundle->name,
                                                                 r->p->name)));
    dext_reg_entry_set(s->entry, "IOProbeScore", g_variant_new_int32(r->p->probe_score));
    dext_reg_entry_set(s->entry, "IOMatchCategory", g_variant_new_string(r->p->match_category));
    dext_reg_entry_set(s->entry, "match-specificity", g_variant_new_uint32(r->specificity));
    svc_set_state(s, SVC_MATCHED);
    g_ptr_array_add(srv->services, s);
    g_ptr_array_add(d->services, s);
    return s;
}

static void match_all(Dextd *d)
{
    for (guint i = 0; i < d->devices->len; i++) {
        Device *dev = d->devices->pdata[i];
        GString *log = g_string_new(NULL);
        GArray *w = dext_match_select(d->personalities, &dev->info, log);
        if (w->len || log->len) {
            LOGI("matching %s (%04x:%04x sub %04x:%04x class %06x):\n%s",
                 dext_reg_entry_name(dev->entry), dev->info.vendor, dev->info.device,
                 dev->info.subvendor, dev->info.subdevice, dev->info.class_code,
                 log->len ? log->str : "  no personality matches\n");
        }
        for (guint k = 0; k < w->len; k++) {
            add_service(d, dev, &g_array_index(w, DextMatchResult, k));
        }
        g_array_free(w, TRUE);
        g_string_free(log, TRUE);
    }
}

/* ---- device release ------------------------------------------------------ */

/* Revoke the direct MMIO channel of the device's opener: from here on the
 * driver reaches the device through dextd only (or not at all).  The
 * platform revokes channels itself on resets, unplug and rescans; such a
 * channel is already gone (-ENOENT). */
static void revoke_channel(Dextd *d, Device *dev)
{
    if (!dev->mmio_chan) {
        return;
    }
    int rc = dext_platform_mmio_channel_close(d->plat, dev->mmio_chan);
    if (rc < 0 && rc != -ENOENT && dext_platform_alive(d->plat)) {
        LOGW("%s: cannot revoke MMIO channel %u: %s", dext_reg_entry_name(dev->entry),
             dev->mmio_chan, dext_platform_last_error(d->plat));
    }
    dev->mmio_chan = 0;
    dext_reg_entry_set(dev->entry, "mmio-channel", NULL);
}

static void release_device(Dextd *d, Device *dev, bool reset)
{
    if (dev->nub) {
        return; /* nothing mapped or bound: its publisher resets it (NUB_RESET) */
    }
    char addr[13];
    dext_pci_addr_format(dev->fn.addr, addr);
    revoke_channel(d, dev);   /* before anything else changes under it */
    for (guint i = 0; i < dev->irqs->len; i++) {
        dext_platform_irq_unbind(d->plat, dev->fn.addr, g_array_index(dev->irqs, unsigned, i));
    }
    g_array_set_size(dev->irqs, 0);
    if (dext_platform_alive(d->plat) && dev->fn.is_bridge) {
        /* A bridge's decode and bus mastering carry everything behind it:
         * put back what enumeration set, never switch them off. */
        int rc = dext_platform_cfg_write(d->plat, dev->fn.addr, 0x04, 2, dev->cmd_at_enum);
        if (rc < 0) {
            LOGW("%s: cannot restore the bridge's command register: %s", addr,
                 dext_platform_last_error(d->plat));
        }
    } else if (dext_platform_alive(d->plat)) {
        /* Stop DMA first, then decode: the device must not touch memory
         * that is about to be freed. */
        int rc = dext_platform_pci_set_enables(d->plat, dev->fn.addr,
                                               DEXT_PCI_ENABLE_BUSMASTER | DEXT_PCI_ENABLE_MEM |
                                               DEXT_PCI_ENABLE_IO, false);
        if (rc < 0) {
            LOGW("%s: cannot disable bus mastering: %s", addr, dext_platform_last_error(d->plat));
        }
        if (reset && dev->fn.has_flr) {
            rc = dext_platform_reset_function(d->plat, dev->fn.addr, false);
            LOGI("%s: function level reset after driver end: %s", addr,
                 rc < 0 ? dext_platform_last_error(d->plat) : "done");
        }
    }
    dev->opened_by = NULL;
    dext_reg_entry_set(dev->entry, "opened-by", NULL);
    /* Publish what the release left behind, for tools and tests. */
    uint32_t cmd;
    if (dext_platform_cfg_read(d->plat, dev->fn.addr, 0x04, 2, &cmd) == 0) {
        dext_reg_entry_set(dev->entry, "pci-command", g_variant_new_uint16(cmd));
    }
}

/* DMA memory a server holds, on each of its services' registry entries. */
static void server_publish_dma(Server *srv)
{
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        dext_reg_entry_set(s->entry, "server-dma-allocations", g_variant_new_uint32(srv->dma->len));
    }
}

static void release_server(Server *srv, bool reset)
{
    Dextd *d = srv->d;
    for (guint i = 0; i < d->devices->len; i++) {
        Device *dev = d->devices->pdata[i];
        if (dev->opened_by == srv) {
            release_device(d, dev, reset);
        }
    }
    for (guint i = 0; i < srv->dma->len; i++) {
        dext_platform_dma_free(d->plat, g_array_index(srv->dma, uint64_t, i));
    }
    if (srv->dma->len) {
        LOGI("%s: freed %u DMA allocations", srv->name, srv->dma->len);
    }
    g_array_set_size(srv->dma, 0);
    server_publish_dma(srv);
}

/* ---- server processes ------------------------------------------------------ */

static void pending_free(Pending *p)
{
    if (p->timer) {
        g_source_remove(p->timer);
    }
    if (p->app_fd >= 0) {
        close(p->app_fd);
    }
    g_free(p->client_srv);
    g_free(p);
}

static void nub_client_answer(Dextd *d, Pending *p, int rc, const char *why);
static void nub_terminate(Dextd *d, Device *nub, const char *why);
static void service_nubs_terminate(Service *s, const char *why);
static void nub_reset_send(Dextd *d, Device *nub, Server *client);
static void nub_reset_done(Dextd *d, Pending *p);
static void schedule_reap(Dextd *d);
static int service_stop(Service *s);
static int send_stop_now(Service *s);

static void close_channels(Server *srv)
{
    if (srv->ctrl_watch) {
        g_source_remove(srv->ctrl_watch);
        srv->ctrl_watch = 0;
    }
    if (srv->rpc_watch) {
        g_source_remove(srv->rpc_watch);
        srv->rpc_watch = 0;
    }
    if (srv->ctrl_fd >= 0) {
        close(srv->ctrl_fd);
        srv->ctrl_fd = -1;
    }
    if (srv->rpc_fd >= 0) {
        close(srv->rpc_fd);
        srv->rpc_fd = -1;
    }
    GList *ps = g_hash_table_get_values(srv->pending);
    g_hash_table_remove_all(srv->pending);
    for (GList *l = ps; l; l = l->next) {
        Pending *p = l->data;
        if (p->kind == P_OPEN) {
            AppConn *a = g_hash_table_lookup(srv->d->apps, &p->app_id);
            if (a) {
                DextMsg req = { .serial = p->app_serial }, e;
                dext_msg_init_error(&e, &req, -ECONNRESET, "driver %s ended", srv->name);
                dext_ipc_send(a->fd, &e);
                dext_msg_clear(&e);
            }
        }
        if (p->kind == P_NUB_CLIENT && !p->timed_out) {
            nub_client_answer(srv->d, p, -ECONNRESET, "the publisher ended");
        }
        if (p->kind == P_NUB_RESET) {
            nub_reset_done(srv->d, p);
        }
        if (p->kind == P_STOP && p->counted && srv->d->stops_pending) {
            srv->d->stops_pending--;
        }
        pending_free(p);
    }
    g_list_free(ps);
}

static void kill_server(Server *srv, const char *why)
{
    if (srv->pid > 0 && !srv->killed_by_us) {
        LOGW("%s (pid %d): killing: %s", srv->name, (int)srv->pid, why);
        srv->killed_by_us = true;
        kill(srv->pid, SIGKILL);
    }
}

static void launch_server(Server *srv);

static gboolean relaunch_cb(gpointer data)
{
    Server *srv = data;
    srv->timer = 0;
    if (srv->resets_pending) {
        /* Its crash's NUB_RESETs first: a process launched now could get a
         * Start on a nub its publisher is about to replace. */
        LOGI("%s: relaunch waits for %u NUB_RESET answer(s)", srv->name, srv->resets_pending);
        srv->relaunch_waiting = true;
        return G_SOURCE_REMOVE;
    }
    bool want = false;
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        want |= s->state == SVC_MATCHED || s->state == SVC_CRASHED;
    }
    if (!want) {
        /* e.g. its services' nubs were terminated meanwhile */
        LOGI("%s: nothing left to relaunch", srv->name);
        return G_SOURCE_REMOVE;
    }
    launch_server(srv);
    return G_SOURCE_REMOVE;
}

static bool server_has_live_services(Server *srv)
{
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        if (s->state == SVC_STARTING || s->state == SVC_RUNNING || s->state == SVC_STOPPING ||
            s->state == SVC_LAUNCHING) {
            return true;
        }
    }
    return false;
}

/* Shutting down and no process left: leave the main loop. */
static void maybe_quit(Dextd *d)
{
    if (d->shutting_down) {
        bool any = false;
        GHashTableIter it;
        gpointer v;
        g_hash_table_iter_init(&it, d->servers);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            any |= ((Server *)v)->pid > 0;
        }
        if (!any) {
            g_main_loop_quit(d->loop);
        }
    }
}

/* The last step of dextctl unload, once the server has no process: its
 * services leave the registry, then the server, then (if no other server
 * uses it) the bundle and its personalities. */
static void finish_unload(Server *srv)
{
    Dextd *d = srv->d;
    DextBundle *b = srv->bundle;
    /* Its services' nubs go first (their clients get Stop); the reaper
     * comes back here once they are gone. */
    bool nubs = false;
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        if (s->nubs) {
            nubs = true;
            service_nubs_terminate(s, "its publisher is unloaded");
        }
    }
    if (nubs) {
        LOGI("unloading %s: waiting for its nubs to be terminated", srv->name);
        srv->unload_after_nubs = true;
        schedule_reap(d);
        return;
    }
    srv->unload_after_nubs = false;
    if (srv->timer) {
        g_source_remove(srv->timer);
        srv->timer = 0;
    }
    release_server(srv, false);
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        if (s->dev->opened_by == srv) {
            release_device(d, s->dev, false);
        }
        dext_registry_remove(d->reg, s->entry);
        g_ptr_array_remove(d->services, s);   /* frees s */
    }
    g_ptr_array_set_size(srv->services, 0);
    LOGI("unloaded server %s", srv->name);
    g_hash_table_remove(d->servers, srv->name);   /* frees srv */
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        if (((Server *)v)->bundle == b) {
            return;
        }
    }
    for (guint i = d->personalities->len; i-- > 0;) {
        if (((DextPersonality *)d->personalities->pdata[i])->bundle == b) {
            g_ptr_array_remove_index(d->personalities, i);
        }
    }
    LOGI("unloaded bundle %s", b->name);
    g_ptr_array_remove(d->bundles, b);   /* frees b */
}

static gboolean unload_timeout(gpointer data)
{
    Server *srv = data;
    srv->timer = 0;
    kill_server(srv, "did not exit within 5 s of unload");
    return G_SOURCE_REMOVE;
}

static void on_child_exit(GPid pid, gint status, gpointer data)
{
    Server *srv = data;
    Dextd *d = srv->d;
    log_close(srv);         /* its last words, tagged with its pid */
    srv->child_watch = 0;
    g_spawn_close_pid(pid);
    srv->pid = 0;
    if (srv->timer) {
        g_source_remove(srv->timer);
        srv->timer = 0;
    }
    close_channels(srv);

    DextdEndInfo info = { .server_name = srv->name, .launches = srv->launches,
                          .shutting_down = d->shutting_down };
    if (WIFSIGNALED(status)) {
        info.reason = srv->killed_by_us ? DEXTD_END_HUNG : DEXTD_END_CRASHED;
        info.status = WTERMSIG(status);
        LOGW("%s (pid %d) %s by signal %d (%s)", srv->name, (int)pid,
             srv->killed_by_us ? "killed" : "crashed", info.status, g_strsignal(info.status));
    } else {
        info.status = WEXITSTATUS(status);
        bool expected = !server_has_live_services(srv);
        info.reason = info.status == 0 && expected ? DEXTD_END_EXITED : DEXTD_END_FAILED;
        LOGI("%s (pid %d) exited with status %d%s", srv->name, (int)pid, info.status,
             expected ? "" : " while its services were live");
    }
    bool abnormal = info.reason != DEXTD_END_EXITED;
    GPtrArray *resets = g_ptr_array_new();
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        if (s->state == SVC_RUNNING || s->state == SVC_STARTING || s->state == SVC_LAUNCHING ||
            s->state == SVC_STOPPING) {
            /* A nub's client that crashed (or hung and was killed): its
             * publisher resets the device, as FLR does for PCI. */
            if (abnormal && !srv->restarting && s->dev->nub && !s->dev->terminating &&
                s->state != SVC_LAUNCHING && !g_ptr_array_find(resets, s->dev, NULL)) {
                g_ptr_array_add(resets, s->dev);
            }
            /* A Stop that was asked for (dextctl stop or unload, a nub
             * terminated, shutdown) ends "stopped" even when the process
             * had to be killed because it hung in Stop: not a crash that
             * the policy relaunches. */
            if (abnormal && s->state == SVC_STOPPING) {
                LOGI("%s: %s ends stopped (its Stop was requested)", srv->name, s->p->user_class);
            }
            svc_set_state(s, abnormal && s->state != SVC_STOPPING ? SVC_CRASHED : SVC_STOPPED);
            s->stop_after_nubs = false;
        }
        dext_reg_entry_set(s->entry, "pid", NULL);
    }
    release_server(srv, abnormal);
    if (!d->shutting_down) {
        /* A publisher's nubs die with its process (clients get Stop). */
        for (guint i = 0; i < srv->services->len; i++) {
            Service *s = srv->services->pdata[i];
            if (s->nubs) {
                service_nubs_terminate(s, "its publisher's process ended");
            }
        }
        for (guint i = 0; i < resets->len; i++) {
            nub_reset_send(d, resets->pdata[i], srv);
        }
        schedule_reap(d);
    }
    g_ptr_array_free(resets, TRUE);
    if (srv->unloading) {
        finish_unload(srv);  /* frees srv */
        maybe_quit(d);
        return;
    }
    if (srv->restarting) {
        /* dextctl restart: not a crash for the policy; start again now */
        srv->restarting = false;
        abnormal = false;
        for (guint i = 0; i < srv->services->len; i++) {
            Service *s = srv->services->pdata[i];
            if (s->state == SVC_CRASHED) {
                svc_set_state(s, SVC_MATCHED);
            }
        }
    }
    if (abnormal) {
        gint64 now = g_get_monotonic_time();
        g_array_append_val(srv->ends, now);
        while (srv->ends->len && g_array_index(srv->ends, gint64, 0) < now - POLICY_WINDOW_US) {
            g_array_remove_index(srv->ends, 0);
        }
        info.recent_crashes = srv->ends->len;
    }
    srv->killed_by_us = false;

    bool wanted = false;
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        wanted |= s->state == SVC_CRASHED;
    }
    if (wanted) {
        DextdRelaunch r = d->cfg.policy ? d->cfg.policy(&info, d->cfg.policy_opaque)
                                        : dextd_default_relaunch_policy(&info, NULL);
        LOGI("relaunch policy for %s: %s in %u ms (%s)", srv->name,
             r.relaunch ? "relaunch" : "no relaunch", r.relaunch ? r.delay_ms : 0,
             r.why ? r.why : "");
        if (r.relaunch) {
            srv->timer = g_timeout_add(r.delay_ms, relaunch_cb, srv);
        } else if (!d->shutting_down) {
            srv->gave_up = true;
            for (guint i = 0; i < srv->services->len; i++) {
                Service *s = srv->services->pdata[i];
                if (s->state == SVC_CRASHED) {
                    svc_set_state(s, SVC_GAVE_UP);
                }
            }
        }
    }
    /* A service started again while its old process was exiting. */
    bool restart = false;
    for (guint i = 0; i < srv->services->len && !d->shutting_down; i++) {
        restart |= ((Service *)srv->services->pdata[i])->state == SVC_MATCHED;
    }
    if (restart && !srv->timer) {
        if (srv->resets_pending) {
            srv->relaunch_waiting = true;
        } else {
            launch_server(srv);
        }
    }
    maybe_quit(d);
}

static uint32_t ctrl_send(Server *srv, uint16_t type, GVariant *body, int fd, Pending *p,
                          unsigned timeout_ms);

static gboolean pending_timeout(gpointer data)
{
    Pending *p = data;
    p->timer = 0;
    if (p->kind == P_NUB_CLIENT) {
        /* The client's PROVIDER_OPEN is answered within its own RPC bound;
         * a publisher that is merely slow is not killed for it (its
         * library bounds the callback itself).  A late answer is dropped. */
        LOGW("%s: no answer to NUB_CLIENT for nub %" G_GUINT64_FORMAT " within %d ms", p->srv->name,
             p->nub, PROVIDER_OPEN_TIMEOUT_MS);
        nub_client_answer(p->srv->d, p, -ETIMEDOUT, "the publisher did not answer in time");
        p->timed_out = true;
        if (p->app_fd >= 0) {
            close(p->app_fd);
            p->app_fd = -1;
        }
        return G_SOURCE_REMOVE;
    }
    static const char *const what[] = {
        [P_START] = "Start", [P_STOP] = "Stop", [P_OPEN] = "NewUserClient",
        [P_NUB_CLIENT] = "NUB_CLIENT", [P_NUB_RESET] = "NUB_RESET",
    };
    LOGE("%s: no reply to %s within bound", p->srv->name, what[p->kind]);
    kill_server(p->srv, "callback timeout");
    return G_SOURCE_REMOVE;
}

static uint32_t ctrl_send(Server *srv, uint16_t type, GVariant *body, int fd, Pending *p,
                          unsigned timeout_ms)
{
    DextMsg m;
    dext_msg_init(&m, type, body);
    m.serial = ++srv->ctrl_serial;
    if (fd >= 0) {
        m.fds[0] = fd;
        m.nfds = 1;
    }
    int rc = srv->ctrl_fd >= 0 ? dext_ipc_send(srv->ctrl_fd, &m) : -ENOTCONN;
    m.nfds = 0;
    uint32_t serial = m.serial;
    dext_msg_clear(&m);
    if (rc < 0) {
        LOGW("%s: cannot send %s: %s", srv->name, dext_msg_name(type), g_strerror(-rc));
        return 0;
    }
    p->srv = srv;
    p->serial = serial;
    p->timer = g_timeout_add(timeout_ms, pending_timeout, p);
    g_hash_table_insert(srv->pending, GUINT_TO_POINTER(serial), p);
    return serial;
}

static void send_start(Service *s)
{
    Pending *p = g_new0(Pending, 1);
    p->kind = P_START;
    p->svc = s;
    p->app_fd = -1;
    svc_set_state(s, SVC_STARTING);
    GVariant *props = dext_reg_entry_properties(s->dev->entry);
    if (!ctrl_send(s->srv, DEXT_MSG_START,
                   g_variant_new("(tst@a{sv})", (guint64)s->id, s->p->user_class,
                                 (guint64)s->dev->id, props), -1, p, START_TIMEOUT_MS)) {
        pending_free(p);
        svc_set_state(s, SVC_FAILED);
    }
}

static void maybe_retire_server(Server *srv)
{
    /* No service left to run: close the channels; the process stops its
     * remaining state and exits (seen by the child watch). */
    if (!server_has_live_services(srv) && srv->pid > 0) {
        LOGI("%s has no live service left: closing its channels", srv->name);
        close_channels(srv);
    }
}

static void on_start_reply(Pending *p, int rc)
{
    Service *s = p->svc;
    if (rc == 0) {
        s->starts++;
        svc_set_state(s, SVC_RUNNING);
        LOGI("%s started %s on %s (service %" G_GUINT64_FORMAT ")", s->srv->name, s->p->user_class,
             dev_label(s->dev), s->id);
        if (s->dev->nub && s->dev->terminating) {
            service_stop(s); /* its nub was terminated during Start */
        }
    } else {
        svc_set_state(s, SVC_FAILED);
        LOGW("%s: %s Start on %s failed: %s (device released, not relaunched)", s->srv->name,
             s->p->user_class, dext_reg_entry_name(s->dev->entry), g_strerror(-rc));
        /* Release whether or not the driver closed the device itself: it
         * may have left bus mastering or decode enabled. */
        if (!s->dev->opened_by || s->dev->opened_by == s->srv) {
            release_device(s->srv->d, s->dev, false);
        }
        if (!s->srv->d->shutting_down) {
            service_nubs_terminate(s, "its Start failed"); /* published during Start */
            schedule_reap(s->srv->d);
        }
        maybe_retire_server(s->srv);
    }
}

static void on_open_reply(Server *srv, Pending *p, int rc);

static gboolean on_ctrl(gint fd, GIOCondition cond, gpointer data)
{
    Server *srv = data;
    log_drain(srv);
    for (;;) {
        DextMsg m;
        char *why = NULL;
        int rc = dext_ipc_recv(fd, DEXT_CH_CTRL, &m, 0, &why);
        if (rc == -ETIMEDOUT) {
            return G_SOURCE_CONTINUE;
        }
        if (rc < 0) {
            if (rc != -ECONNRESET) {
                LOGW("%s: control channel: %s", srv->name, why ? why : g_strerror(-rc));
            }
            g_free(why);
            srv->ctrl_watch = 0;
            close_channels(srv);
            return G_SOURCE_REMOVE;
        }
        Pending *p = (m.flags & DEXT_MSG_F_REPLY)
                         ? g_hash_table_lookup(srv->pending, GUINT_TO_POINTER(m.reply_to)) : NULL;
        if (!p) {
            LOGW("%s: unexpected %s on control channel", srv->name, dext_msg_name(m.type));
            dext_msg_clear(&m);
            continue;
        }
        g_hash_table_remove(srv->pending, GUINT_TO_POINTER(m.reply_to));
        static const uint16_t wants[] = {
            [P_START] = DEXT_MSG_START, [P_STOP] = DEXT_MSG_STOP, [P_OPEN] = DEXT_MSG_NEW_CLIENT,
            [P_NUB_CLIENT] = DEXT_MSG_NUB_CLIENT, [P_NUB_RESET] = DEXT_MSG_NUB_RESET,
        };
        uint16_t want = wants[p->kind];
        gint32 res = -EPROTO;
        if (m.type == DEXT_MSG_ERROR) {
            const char *txt;
            g_variant_get(m.body, "(i&s)", &res, &txt);
            LOGW("%s: error reply: %s", srv->name, txt);
        } else if (m.type == want) {
            g_variant_get(m.body, "(i)", &res);
        } else {
            /* Matched by serial only: a reply of another type is the driver
             * breaking the protocol, not a result to read out of its body. */
            LOGW("%s: %s reply to a pending %s: treated as failed", srv->name,
                 dext_msg_name(m.type), dext_msg_name(want));
        }
        switch (p->kind) {
        case P_START:
            on_start_reply(p, res);
            break;
        case P_STOP:
            svc_set_state(p->svc, SVC_STOPPED);
            LOGI("%s: %s stopped", srv->name, p->svc->p->user_class);
            if (!p->svc->dev->opened_by || p->svc->dev->opened_by == srv) {
                release_device(srv->d, p->svc->dev, false);
            }
            if (!srv->d->shutting_down) {
                /* nubs it still had (published after the stop began) */
                service_nubs_terminate(p->svc, "its publisher stopped");
                schedule_reap(srv->d);
            }
            if (p->counted && srv->d->stops_pending && --srv->d->stops_pending == 0 &&
                srv->d->shutting_down) {
                /* every Stop answered: close channels so servers exit */
                GHashTableIter it;
                gpointer v;
                g_hash_table_iter_init(&it, srv->d->servers);
                while (g_hash_table_iter_next(&it, NULL, &v)) {
                    close_channels(v);
                }
                dext_msg_clear(&m);
                pending_free(p);
                return G_SOURCE_REMOVE;
            }
            maybe_retire_server(srv);
            break;
        case P_OPEN:
            on_open_reply(srv, p, res);
            break;
        case P_NUB_CLIENT:
            if (!p->timed_out) {
                nub_client_answer(srv->d, p, res, NULL);
            }
            break;
        case P_NUB_RESET:
            LOGI("%s: NUB_RESET of nub %" G_GUINT64_FORMAT ": %s", srv->name, p->nub,
                 res == 0 ? "done" : g_strerror(res < 0 ? -res : EPROTO));
            nub_reset_done(srv->d, p);
            break;
        }
        dext_msg_clear(&m);
        pending_free(p);
        if (srv->ctrl_fd < 0) {
            return G_SOURCE_REMOVE;
        }
    }
}

/* ---- nubs (docs/runtime/nubs.md) ---------------------------------------
 * A driver publishes nubs (NUB_PUBLISH) under one of its services or under
 * a nub of that service; each is a Device (nub == true) that personalities
 * are matched against like a PCI function.  Termination is asynchronous:
 * children first, then every service on the nub gets Stop; the reaper
 * (an idle callback, so nothing is freed under a caller) removes a
 * terminated nub once no child and no live service is left on it. */

static void schedule_reap(Dextd *d);

static int send_stop_now(Service *s)
{
    Dextd *d = s->srv->d;
    Pending *p = g_new0(Pending, 1);
    p->kind = P_STOP;
    p->svc = s;
    p->app_fd = -1;
    if (!ctrl_send(s->srv, DEXT_MSG_STOP, g_variant_new("(t)", (guint64)s->id), -1, p,
                   STOP_TIMEOUT_MS)) {
        pending_free(p);
        return -ECONNRESET; /* the process is going: its exit ends the service */
    }
    if (d->shutting_down) {
        p->counted = true;
        d->stops_pending++;
    }
    return 0;
}

/* Stop a running service; a publisher's nubs (and so their clients) go
 * first, then it gets its own Stop. */
static int service_stop(Service *s)
{
    Dextd *d = s->srv->d;
    svc_set_state(s, SVC_STOPPING);
    if (s->nubs && !d->shutting_down) {
        s->stop_after_nubs = true;
        LOGI("%s: %s stops once its %u nub(s) are gone", s->srv->name, s->p->user_class, s->nubs);
        service_nubs_terminate(s, "its publisher is stopping");
        return 0;
    }
    return send_stop_now(s);
}

static bool nub_has_children(Dextd *d, Device *nub)
{
    for (guint i = 0; i < d->devices->len; i++) {
        Device *c = d->devices->pdata[i];
        if (c->nub && c->parent_nub == nub) {
            return true;
        }
    }
    return false;
}

/* Stop what runs on a terminating nub once its children are gone. */
static void nub_stop_clients(Dextd *d, Device *nub)
{
    for (guint i = 0; i < d->services->len; i++) {
        Service *s = d->services->pdata[i];
        if (s->dev != nub) {
            continue;
        }
        switch (s->state) {
        case SVC_RUNNING:
            service_stop(s);
            break;
        case SVC_MATCHED: case SVC_LAUNCHING: case SVC_CRASHED:
            svc_set_state(s, SVC_STOPPED); /* not started: nothing to stop */
            break;
        default:
            break; /* STARTING: stopped when Start answers; STOPPING: waits */
        }
    }
}

static void nub_terminate(Dextd *d, Device *nub, const char *why)
{
    if (nub->terminating || d->shutting_down) {
        return;
    }
    nub->terminating = true;
    dext_reg_entry_set(nub->entry, "terminating", g_variant_new_boolean(TRUE));
    LOGI("terminating nub %s (%" G_GUINT64_FORMAT "): %s", nub->label, nub->id, why);
    for (guint i = 0; i < d->devices->len; i++) {
        Device *c = d->devices->pdata[i];
        if (c->nub && c->parent_nub == nub) {
            nub_terminate(d, c, "its parent is terminated");
        }
    }
    if (!nub_has_children(d, nub)) {
        nub_stop_clients(d, nub);
    }
    schedule_reap(d);
}

static void service_nubs_terminate(Service *s, const char *why)
{
    Dextd *d = s->srv->d;
    for (guint i = 0; i < d->devices->len; i++) {
        Device *n = d->devices->pdata[i];
        if (n->nub && n->publisher == s) {
            nub_terminate(d, n, why);
        }
    }
}

static bool nub_reapable(Dextd *d, Device *nub)
{
    if (nub_has_children(d, nub)) {
        return false;
    }
    for (guint i = 0; i < d->services->len; i++) {
        Service *s = d->services->pdata[i];
        if (s->dev == nub && (s->nubs || s->state == SVC_LAUNCHING || s->state == SVC_STARTING ||
                              s->state == SVC_RUNNING || s->state == SVC_STOPPING)) {
            return false;
        }
    }
    return true;
}

static void nub_remove(Dextd *d, Device *nub)
{
    LOGI("nub %s (%" G_GUINT64_FORMAT ") removed", nub->label, nub->id);
    for (guint i = d->services->len; i-- > 0;) {
        Service *s = d->services->pdata[i];
        if (s->dev == nub) {
            g_ptr_array_remove(s->srv->services, s);
            g_ptr_array_remove_index(d->services, i); /* frees s */
        }
    }
    if (nub->publisher) {
        nub->publisher->nubs--;
    }
    dext_registry_remove(d->reg, nub->entry); /* with its services' entries */
    g_ptr_array_remove(d->devices, nub);      /* frees nub */
}

static unsigned server_nubs(Server *srv)
{
    unsigned n = 0;
    for (guint i = 0; i < srv->services->len; i++) {
        n += ((Service *)srv->services->pdata[i])->nubs;
    }
    return n;
}

static gboolean reap_cb(gpointer data)
{
    Dextd *d = data;
    d->reap_idle = 0;
    for (bool progress = true; progress;) {
        progress = false;
        for (guint i = 0; i < d->devices->len; i++) {
            Device *nub = d->devices->pdata[i];
            if (!nub->nub || !nub->terminating) {
                continue;
            }
            if (nub_reapable(d, nub)) {
                nub_remove(d, nub);
                progress = true;
                break;
            }
            if (!nub_has_children(d, nub)) {
                nub_stop_clients(d, nub); /* its children just went */
            }
        }
    }
    /* Publishers whose nubs are all gone get their own Stop now. */
    for (guint i = 0; i < d->services->len; i++) {
        Service *s = d->services->pdata[i];
        if (s->stop_after_nubs && !s->nubs) {
            s->stop_after_nubs = false;
            if (s->state == SVC_STOPPING) {
                send_stop_now(s);
            }
        }
    }
    GPtrArray *unload = g_ptr_array_new();
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Server *srv = v;
        if (srv->unload_after_nubs && srv->pid <= 0 && !server_nubs(srv)) {
            g_ptr_array_add(unload, srv);
        } else if (srv->pid > 0 && srv->hello && srv->ctrl_fd >= 0) {
            maybe_retire_server(srv); /* e.g. its only service was on a nub now gone */
        }
    }
    for (guint i = 0; i < unload->len; i++) {
        finish_unload(unload->pdata[i]);
    }
    g_ptr_array_free(unload, TRUE);
    maybe_quit(d);
    return G_SOURCE_REMOVE;
}

static void schedule_reap(Dextd *d)
{
    if (!d->reap_idle) {
        d->reap_idle = g_idle_add(reap_cb, d);
    }
}

/* A NUB_RESET was answered (or its publisher ended): the crashed client's
 * relaunch, held back until all of its resets are answered, may go. */
static void nub_reset_done(Dextd *d, Pending *p)
{
    Server *c = p->client_srv ? g_hash_table_lookup(d->servers, p->client_srv) : NULL;
    g_free(p->client_srv);
    p->client_srv = NULL;
    if (!c || !c->resets_pending || --c->resets_pending || !c->relaunch_waiting) {
        return;
    }
    c->relaunch_waiting = false;
    if (c->pid <= 0 && !c->timer && !d->shutting_down) {
        c->timer = g_timeout_add(0, relaunch_cb, c);
    }
}

/* The client driver of nub crashed: its publisher resets the device. */
static void nub_reset_send(Dextd *d, Device *nub, Server *client)
{
    Service *pub = nub->publisher;
    if (!pub || pub->state != SVC_RUNNING || pub->srv->pid <= 0 || !pub->srv->hello) {
        LOGW("nub %s (%" G_GUINT64_FORMAT "): its client ended abnormally; no publisher to reset it",
             nub->label, nub->id);
        return;
    }
    Pending *p = g_new0(Pending, 1);
    p->kind = P_NUB_RESET;
    p->nub = nub->id;
    p->app_fd = -1;
    p->client_srv = g_strdup(client->name);
    if (!ctrl_send(pub->srv, DEXT_MSG_NUB_RESET, g_variant_new("(t)", (guint64)nub->id), -1, p,
                   START_TIMEOUT_MS)) {
        pending_free(p);
        return;
    }
    client->resets_pending++;
    LOGI("nub %s (%" G_GUINT64_FORMAT "): its client ended abnormally: NUB_RESET to %s",
         nub->label, nub->id, pub->srv->name);
}

/* The deferred answer to a client's PROVIDER_OPEN (P_NUB_CLIENT). */
static void nub_client_answer(Dextd *d, Pending *p, int rc, const char *why)
{
    Server *c = g_hash_table_lookup(d->servers, p->client_srv);
    if (!c || c->pid != p->client_pid || c->rpc_fd < 0) {
        return; /* that client process is gone; its end closes with p */
    }
    DextMsg req = { .type = DEXT_MSG_PROVIDER_OPEN, .serial = p->app_serial }, r;
    if (rc == 0 && p->app_fd >= 0) {
        dext_msg_init_reply(&r, &req, NULL);
        r.fds[0] = p->app_fd;
        r.nfds = 1;
        LOGI("%s: provider channel to nub %" G_GUINT64_FORMAT " open", c->name, p->nub);
    } else {
        rc = rc < 0 ? rc : -EPROTO;
        dext_msg_init_error(&r, &req, rc, "%s%s", why ? why : "the publisher refused: ",
                            why ? "" : g_strerror(-rc));
        LOGI("%s: provider channel to nub %" G_GUINT64_FORMAT " refused: %s%s", c->name, p->nub,
             why ? why : "the publisher refused: ", why ? "" : g_strerror(-rc));
    }
    dext_ipc_send(c->rpc_fd, &r);
    r.nfds = 0;
    dext_msg_clear(&r);
}

/* Integer of any integer type (GVariant), for the class triple. */
static bool variant_uint(GVariant *v, uint64_t *out)
{
    if (g_variant_is_of_type(v, G_VARIANT_TYPE_BYTE)) {
        *out = g_variant_get_byte(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT16)) {
        *out = g_variant_get_uint16(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT16)) {
        *out = (uint64_t)g_variant_get_int16(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32)) {
        *out = g_variant_get_uint32(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT32)) {
        *out = (uint64_t)g_variant_get_int32(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT64)) {
        *out = g_variant_get_uint64(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT64)) {
        *out = (uint64_t)g_variant_get_int64(v);
    } else {
        return false;
    }
    return true;
}

/* class<<16 | subclass<<8 | protocol (interface or device triple), for
 * listings in the PCI class-code column. */
static uint32_t nub_class_code(bool iface, GVariant *props)
{
    static const char *const ik[] = { "bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol" };
    static const char *const dk[] = { "bDeviceClass", "bDeviceSubClass", "bDeviceProtocol" };
    uint32_t code = 0;
    for (int i = 0; i < 3; i++) {
        GVariant *v = g_variant_lookup_value(props, iface ? ik[i] : dk[i], NULL);
        uint64_t x;
        if (v && variant_uint(v, &x)) {
            code |= (uint32_t)(x & 0xff) << (16 - 8 * i);
        }
        if (v) {
            g_variant_unref(v);
        }
    }
    return code;
}

static bool nub_name_ok(const char *name)
{
    size_t n = strlen(name);
    if (!n || n > NUB_MAX_NAME) {
        return false;
    }
    for (const char *c = name; *c; c++) {
        if (!g_ascii_isalnum(*c) && !strchr("@._-:,+", *c)) {
            return false;
        }
    }
    return true;
}

static int nub_props_check(GVariant *props, char **why)
{
    static const char *const reserved[] = { "IOClass", "published-by", "publisher",
                                            "terminating", NULL };
    gsize n = g_variant_n_children(props);
    int rc = 0;
    if (n > NUB_MAX_PROPS) {
        *why = g_strdup_printf("%zu properties (at most %d)", (size_t)n, NUB_MAX_PROPS);
        return -EINVAL;
    }
    GHashTable *seen = g_hash_table_new(g_str_hash, g_str_equal);
    for (gsize i = 0; i < n && !rc; i++) {
        const char *k;
        GVariant *v;
        g_variant_get_child(props, i, "{&sv}", &k, &v);
        size_t kl = strlen(k);
        const GVariantType *t = g_variant_get_type(v);
        bool printable = true;
        for (const char *c = k; *c; c++) {
            printable &= *c >= 0x20 && *c < 0x7f;
        }
        if (!kl || kl > NUB_MAX_KEY || !printable) {
            *why = g_strdup_printf("property key of %zu bytes (1..%d printable ASCII)", kl,
                                   NUB_MAX_KEY);
            rc = -EINVAL;
        } else if (g_strv_contains(reserved, k)) {
            *why = g_strdup_printf("property %s is set by dextd", k);
            rc = -EINVAL;
        } else if (g_hash_table_contains(seen, k)) {
            *why = g_strdup_printf("property %s given twice", k);
            rc = -EINVAL;
        } else if (!(g_variant_type_is_basic(t) && !g_variant_type_equal(t, G_VARIANT_TYPE_HANDLE)) &&
                   !g_variant_type_equal(t, G_VARIANT_TYPE_BYTESTRING)) {
            *why = g_strdup_printf("property %s is of type %.*s: basic types and ay only", k,
                                   (int)g_variant_type_get_string_length(t),
                                   g_variant_type_peek_string(t));
            rc = -EINVAL;
        } else if (g_variant_get_size(v) > NUB_MAX_VALUE) {
            *why = g_strdup_printf("property %s has %zu bytes (at most %d)", k,
                                   (size_t)g_variant_get_size(v), NUB_MAX_VALUE);
            rc = -EINVAL;
        }
        g_hash_table_add(seen, (gpointer)k);
        g_variant_unref(v);
    }
    g_hash_table_destroy(seen);
    return rc;
}

/* A new service on a nub: start it where its server runs, else launch it
 * (a server launching or waiting to relaunch starts it when it comes up). */
static void start_new_service(Service *s)
{
    Server *srv = s->srv;
    if (srv->gave_up) {
        svc_set_state(s, SVC_GAVE_UP); /* dextctl start/restart forgives */
    } else if (srv->pid > 0 && srv->hello && srv->ctrl_fd >= 0) {
        send_start(s);
    } else if (srv->pid <= 0 && !srv->timer) {
        if (srv->resets_pending) {
            srv->relaunch_waiting = true; /* launched once they are answered */
        } else {
            launch_server(srv);
        }
    }
}

static void match_nub(Dextd *d, Device *nub)
{
    GString *log = g_string_new(NULL);
    GArray *w = dext_match_select(d->personalities, &nub->info, log);
    LOGI("matching nub %s (%" G_GUINT64_FORMAT ", %04x:%04x):\n%s", nub->label, nub->id,
         nub->info.vendor, nub->info.device, log->len ? log->str : "  no personality matches\n");
    for (guint k = 0; k < w->len; k++) {
        const DextMatchResult *r = &g_array_index(w, DextMatchResult, k);
        Server *srv = g_hash_table_lookup(d->servers, r->p->server_name);
        if (srv && (srv->unloading || srv->unload_after_nubs)) {
            continue;
        }
        Service *s = add_service(d, nub, r);
        if (s) {
            start_new_service(s);
        }
    }
    g_array_free(w, TRUE);
    g_string_free(log, TRUE);
}

static Service *server_service(Server *srv, uint64_t id)
{
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        if (s->id == id) {
            return s;
        }
    }
    return NULL;
}

static int nub_publish(Server *srv, DextMsg *m, DextMsg *rep, char **why)
{
    Dextd *d = srv->d;
    guint64 sid, parent_id;
    const char *name, *cls;
    GVariant *props;
    Device *par = NULL;
    DextDeviceInfo info;
    int rc;
    g_variant_get(m->body, "(tt&s&s@a{sv})", &sid, &parent_id, &name, &cls, &props);
    Service *pub = server_service(srv, sid);
    if (d->shutting_down || srv->unloading || srv->unload_after_nubs) {
        *why = g_strdup("dextd is stopping this driver");
        rc = -ESHUTDOWN;
        goto out;
    }
    if (!pub) {
        *why = g_strdup_printf("service %" G_GUINT64_FORMAT " is not one of %s's", sid, srv->name);
        rc = -EPERM;
        goto out;
    }
    if ((pub->state != SVC_STARTING && pub->state != SVC_RUNNING) || pub->stop_after_nubs) {
        *why = g_strdup_printf("service %" G_GUINT64_FORMAT " is %s", sid,
                               svc_state_names[pub->state]);
        rc = -EINVAL;
        goto out;
    }
    if (!dext_nub_class_known(cls)) {
        *why = g_strdup_printf("unknown nub class \"%s\" (IOUSBHostDevice, IOUSBHostInterface)",
                               cls);
        rc = -EINVAL;
        goto out;
    }
    if (!dext_bundle_may_publish(srv->bundle, cls)) {
        *why = g_strdup_printf("bundle %s lacks the entitlement publishes=%s", srv->bundle->name,
                               cls);
        rc = -EPERM;
        goto out;
    }
    if (!nub_name_ok(name)) {
        *why = g_strdup_printf("bad nub name (1..%d of A-Z a-z 0-9 @ . _ - : , +)", NUB_MAX_NAME);
        rc = -EINVAL;
        goto out;
    }
    if (parent_id) {
        par = device_by_id(d, parent_id);
        if (!par || !par->nub || par->terminating) {
            *why = g_strdup_printf("no live nub %" G_GUINT64_FORMAT " to publish under", parent_id);
            rc = -ENOENT;
            goto out;
        }
        if (par->publisher != pub) {
            *why = g_strdup_printf("nub %" G_GUINT64_FORMAT " was published by another service",
                                   parent_id);
            rc = -EPERM;
            goto out;
        }
    }
    if ((rc = nub_props_check(props, why)) < 0 ||
        (rc = dext_nub_device_info(cls, props, &info, why)) < 0) {
        goto out;
    }
    if (pub->nubs >= NUB_MAX_PER_SERVICE) {
        *why = g_strdup_printf("service %" G_GUINT64_FORMAT " has %d live nubs", sid,
                               NUB_MAX_PER_SERVICE);
        rc = -ENOSPC;
        goto out;
    }
    Device *nub = g_new0(Device, 1);
    nub->nub = true;
    nub->irqs = g_array_new(FALSE, FALSE, sizeof(unsigned));
    nub->publisher = pub;
    nub->parent_nub = par;
    nub->info = info;
    nub->info.class_code = nub_class_code(info.kind == DEXT_PROVIDER_USB_INTERFACE, props);
    nub->entry = dext_registry_add(d->reg, par ? par->entry : pub->entry, name, cls);
    nub->id = dext_reg_entry_id(nub->entry);
    nub->label = g_strdup_printf("%s:%s", cls, name);
    GVariantIter it;
    const char *k;
    GVariant *v;
    g_variant_iter_init(&it, props);
    while (g_variant_iter_next(&it, "{&sv}", &k, &v)) {
        dext_reg_entry_set(nub->entry, k, v);
        g_variant_unref(v);
    }
    dext_reg_entry_set(nub->entry, "IOClass", g_variant_new_string(cls));
    dext_reg_entry_set(nub->entry, "published-by", g_variant_new_string(srv->name));
    dext_reg_entry_set(nub->entry, "publisher", g_variant_new_uint64(pub->id));
    pub->nubs++;
    g_ptr_array_add(d->devices, nub);
    LOGI("%s published nub %s (%" G_GUINT64_FORMAT ") under %s", srv->name, nub->label, nub->id,
         par ? par->label : pub->p->user_class);
    dext_msg_init_reply(rep, m, g_variant_new("(t)", (guint64)nub->id));
    match_nub(d, nub);
    rc = 0;
out:
    g_variant_unref(props);
    return rc;
}

static int nub_terminate_rpc(Server *srv, DextMsg *m, DextMsg *rep, char **why)
{
    guint64 id;
    g_variant_get(m->body, "(t)", &id);
    Device *nub = device_by_id(srv->d, id);
    if (!nub || !nub->nub) {
        *why = g_strdup_printf("no nub %" G_GUINT64_FORMAT, id);
        return -ENOENT;
    }
    if (!nub->publisher || nub->publisher->srv != srv) {
        *why = g_strdup_printf("nub %" G_GUINT64_FORMAT " was not published by %s", id, srv->name);
        return -EPERM;
    }
    nub_terminate(srv->d, nub, "its publisher terminated it");
    dext_msg_init_reply(rep, m, NULL);
    return 0;
}

/* PROVIDER_OPEN: answered later (returns 2) once the publisher took the
 * channel, or at once with an error. */
static int provider_open(Server *srv, DextMsg *m, char **why)
{
    guint64 sid;
    g_variant_get(m->body, "(t)", &sid);
    Service *s = server_service(srv, sid);
    if (!s) {
        *why = g_strdup_printf("service %" G_GUINT64_FORMAT " is not one of %s's", sid, srv->name);
        return -EPERM;
    }
    if (s->state != SVC_STARTING && s->state != SVC_RUNNING) {
        *why = g_strdup_printf("service %" G_GUINT64_FORMAT " is %s", sid,
                               svc_state_names[s->state]);
        return -EINVAL;
    }
    Device *nub = s->dev;
    if (!nub->nub || nub->terminating) {
        *why = g_strdup_printf("the provider of service %" G_GUINT64_FORMAT " is %s", sid,
                               nub->nub ? "terminated" : "not a published nub");
        return -ENODEV;
    }
    char *ent = NULL;
    if (!dext_bundle_entitled(srv->bundle, &nub->info, &ent)) {
        *why = ent;
        return -EPERM;
    }
    g_free(ent);
    Service *pub = nub->publisher;
    Server *ps = pub ? pub->srv : NULL;
    if (!pub || (pub->state != SVC_RUNNING && pub->state != SVC_STARTING) ||
        pub->stop_after_nubs || ps->pid <= 0 || !ps->hello || ps->ctrl_fd < 0) {
        *why = g_strdup_printf("the publisher of nub %" G_GUINT64_FORMAT " is not running", nub->id);
        return -ENODEV;
    }
    if (ps == srv) {
        /* Its control thread would have to answer NUB_CLIENT while it waits
         * in this client's Start. */
        *why = g_strdup("publisher and client in one process (use another IOUserServerName)");
        return -EDEADLK;
    }
    int sv[2];
    if (dext_ipc_socketpair(sv) < 0) {
        *why = g_strdup("socketpair failed");
        return -EMFILE;
    }
    Pending *p = g_new0(Pending, 1);
    p->kind = P_NUB_CLIENT;
    p->nub = nub->id;
    p->app_fd = sv[0];
    p->app_serial = m->serial;
    p->client_srv = g_strdup(srv->name);
    p->client_pid = srv->pid;
    if (!ctrl_send(ps, DEXT_MSG_NUB_CLIENT, g_variant_new("(tt)", (guint64)nub->id, (guint64)s->id),
                   sv[1], p, PROVIDER_OPEN_TIMEOUT_MS)) {
        close(sv[1]);
        pending_free(p);
        *why = g_strdup_printf("the publisher %s is not reachable", ps->name);
        return -ENODEV;
    }
    close(sv[1]);
    LOGI("%s (%s) opens a provider channel to nub %s (%" G_GUINT64_FORMAT ") of %s", srv->name,
         s->p->user_class, nub->label, nub->id, ps->name);
    return 2;
}

/* ---- RPC from drivers ---------------------------------------------------- */

static bool server_owns(Server *srv, Device *dev)
{
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        if (s->dev == dev && (s->state == SVC_STARTING || s->state == SVC_RUNNING ||
                              s->state == SVC_STOPPING)) {
            return true;
        }
    }
    return false;
}

/* Config registers the runtime owns: BARs, expansion ROM, MSI/MSI-X
 * control (interrupt routing goes through IRQ_BIND), and on bridges the
 * command register, bus numbers and windows. */
static bool cfg_protected(const Device *dev, unsigned off, unsigned w)
{
    unsigned end = off + w;
    bool overlap_bars = off < 0x28 && end > 0x10;
    bool overlap_rom = dev->fn.is_bridge ? (off < 0x3c && end > 0x38) : (off < 0x34 && end > 0x30);
    bool msix = dev->fn.msix_cap && off < dev->fn.msix_cap + 12u && end > dev->fn.msix_cap + 2u;
    bool msi = dev->fn.msi_cap && off < dev->fn.msi_cap + 24u && end > dev->fn.msi_cap + 2u;
    if (dev->fn.is_bridge && ((off < 0x30 && end > 0x18) || (off < 0x06 && end > 0x04))) {
        return true; /* bus numbers, windows, and the decode that carries
                      * every device behind the bridge */
    }
    return overlap_bars || overlap_rom || msix || msi;
}

static bool mmio_protected(const Device *dev, unsigned bar, uint64_t off, unsigned w)
{
    const DextPciFunction *f = &dev->fn;
    if (!f->msix_cap || !f->msix_table_size) {
        return false;
    }
    uint64_t t0 = f->msix_table_offset, t1 = t0 + 16ull * f->msix_table_size;
    uint64_t p0 = f->msix_pba_offset, p1 = p0 + ((f->msix_table_size + 63) / 64) * 8ull;
    return (bar == f->msix_table_bar && off < t1 && off + w > t0) ||
           (bar == f->msix_pba_bar && off < p1 && off + w > p0);
}

static int handle_rpc(Server *srv, DextMsg *m, DextMsg *rep, char **why)
{
    Dextd *d = srv->d;
    DextPlatform *pl = d->plat;
    guint64 id = 0;
    Device *dev = NULL;
    int rc;

    if (m->type != DEXT_MSG_HELLO && !srv->hello) {
        *why = g_strdup("HELLO first");
        return -EPROTO;
    }
    /* Every device-addressed request names a device as its first field. */
    switch (m->type) {
    case DEXT_MSG_PCI_OPEN: case DEXT_MSG_PCI_CLOSE: case DEXT_MSG_CFG_READ:
    case DEXT_MSG_CFG_WRITE: case DEXT_MSG_MMIO_READ: case DEXT_MSG_MMIO_WRITE:
    case DEXT_MSG_IRQ_BIND: case DEXT_MSG_IRQ_UNBIND: case DEXT_MSG_RESET:
    case DEXT_MSG_IRQ_INFO: case DEXT_MSG_MMIO_CHANNEL:
        g_variant_get_child(m->body, 0, "t", &id);
        dev = device_by_id(d, id);
        if (dev && dev->nub) {
            *why = g_strdup_printf("device %" G_GUINT64_FORMAT " is a nub, not a PCI function", id);
            return -ENODEV;
        }
        if (!dev || !server_owns(srv, dev)) {
            *why = g_strdup_printf("device %" G_GUINT64_FORMAT " is not provided to %s", id,
                                   srv->name);
            return -ENODEV;
        }
        if (m->type != DEXT_MSG_PCI_OPEN && m->type != DEXT_MSG_IRQ_INFO &&
            dev->opened_by != srv) {
            *why = g_strdup_printf("device %s is not open", dext_reg_entry_name(dev->entry));
            return -ENOTCONN;
        }
        break;
    default:
        break;
    }
#define PLAT_FAIL(rc_) do { *why = g_strdup(dext_platform_last_error(pl)); return (rc_); } while (0)
    switch (m->type) {
    case DEXT_MSG_HELLO: {
        const char *name;
        gint64 pid;
        g_variant_get(m->body, "(&sx)", &name, &pid);
        if (strcmp(name, srv->name) || pid != srv->pid) {
            *why = g_strdup_printf("HELLO from \"%s\" pid %" G_GINT64_FORMAT ", expected %s pid %d",
                                   name, pid, srv->name, (int)srv->pid);
            return -EPERM;
        }
        srv->hello = true;
        if (srv->timer) {
            g_source_remove(srv->timer);
            srv->timer = 0;
        }
        dext_msg_init_reply(rep, m, g_variant_new("(u)", DEXT_IPC_VERSION));
        /* Start every service this server hosts. */
        for (guint i = 0; i < srv->services->len; i++) {
            Service *s = srv->services->pdata[i];
            /* MATCHED: a start requested while this process was launching */
            if (s->state == SVC_LAUNCHING || s->state == SVC_MATCHED) {
                send_start(s);
            }
        }
        return 0;
    }
    case DEXT_MSG_PCI_OPEN:
        if (dev->opened_by && dev->opened_by != srv) {
            *why = g_strdup_printf("opened by %s", dev->opened_by->name);
            return -EBUSY;
        }
        if (dev->opened_by == srv) {
            *why = g_strdup("already open");
            return -EBUSY;
        }
        dev->opened_by = srv;
        dext_reg_entry_set(dev->entry, "opened-by", g_variant_new_string(srv->name));
        dext_msg_init_reply(rep, m, NULL);
        return 0;
    case DEXT_MSG_PCI_CLOSE:
        revoke_channel(d, dev);
        for (guint i = 0; i < dev->irqs->len; i++) {
            dext_platform_irq_unbind(pl, dev->fn.addr, g_array_index(dev->irqs, unsigned, i));
        }
        g_array_set_size(dev->irqs, 0);
        dev->opened_by = NULL;
        dext_reg_entry_set(dev->entry, "opened-by", NULL);
        dext_msg_init_reply(rep, m, NULL);
        return 0;
    case DEXT_MSG_CFG_READ: {
        guint16 off;
        guchar w;
        guint32 v;
        g_variant_get(m->body, "(tqy)", NULL, &off, &w);
        if ((rc = dext_platform_cfg_read(pl, dev->fn.addr, off, w, &v)) < 0) {
            PLAT_FAIL(rc);
        }
        dext_msg_init_reply(rep, m, g_variant_new("(u)", v));
        return 0;
    }
    case DEXT_MSG_CFG_WRITE: {
        guint16 off;
        guchar w;
        guint32 v;
        g_variant_get(m->body, "(tqyu)", NULL, &off, &w, &v);
        if ((w == 1 || w == 2 || w == 4) && cfg_protected(dev, off, w)) {
            *why = g_strdup_printf("config offset 0x%x is owned by the runtime", off);
            return -EPERM;
        }
        if ((rc = dext_platform_cfg_write(pl, dev->fn.addr, off, w, v)) < 0) {
            PLAT_FAIL(rc);
        }
        dext_msg_init_reply(rep, m, NULL);
        return 0;
    }
    case DEXT_MSG_MMIO_READ: {
        guchar bar, w;
        guint64 off, v;
        g_variant_get(m->body, "(tyty)", NULL, &bar, &off, &w);
        if ((rc = dext_platform_bar_read(pl, dev->fn.addr, bar, off, w, &v)) < 0) {
            PLAT_FAIL(rc);
        }
        dext_msg_init_reply(rep, m, g_variant_new("(t)", v));
        return 0;
    }
    case DEXT_MSG_MMIO_WRITE: {
        guchar bar, w;
        guint64 off, v;
        g_variant_get(m->body, "(tytyt)", NULL, &bar, &off, &w, &v);
        if (mmio_protected(dev, bar, off, w)) {
            *why = g_strdup_printf("BAR%u+0x%" G_GINT64_MODIFIER "x is the MSI-X table/PBA, "
                                   "owned by the runtime", bar, off);
            return -EPERM;
        }
        if ((rc = dext_platform_bar_write(pl, dev->fn.addr, bar, off, w, v)) < 0) {
            PLAT_FAIL(rc);
        }
        dext_msg_init_reply(rep, m, NULL);
        return 0;
    }
    case DEXT_MSG_SYNC:
        if ((rc = dext_platform_flush(pl)) < 0) {
            PLAT_FAIL(rc);
        }
        dext_msg_init_reply(rep, m, NULL);
        return 0;
    case DEXT_MSG_DMA_RAM: {
        int fd;
        uint64_t size;
        if ((rc = dext_platform_memory_fd(pl, &fd, &size)) < 0) {
            PLAT_FAIL(rc);
        }
        dext_msg_init_reply(rep, m, g_variant_new("(t)", (guint64)size));
        rep->fds[0] = fd;   /* borrowed: the platform owns it */
        rep->nfds = 1;
        return 1;           /* 1: reply fds are borrowed */
    }
    case DEXT_MSG_DMA_ALLOC: {
        guint64 size, align;
        DextDmaRange r;
        g_variant_get(m->body, "(tt)", &size, &align);
        if (srv->dma->len >= MAX_DMA_ALLOCS) {
            *why = g_strdup_printf("%s holds %u DMA allocations already", srv->name,
                                   srv->dma->len);
            return -ENOMEM;
        }
        if ((rc = dext_platform_dma_alloc(pl, size, align, &r)) < 0) {
            PLAT_FAIL(rc);
        }
        g_array_append_val(srv->dma, r.iova);
        server_publish_dma(srv);
        dext_msg_init_reply(rep, m, g_variant_new("(ttt)", (guint64)r.iova, (guint64)r.size,
                                                  (guint64)r.fd_offset));
        return 0;
    }
    case DEXT_MSG_DMA_FREE: {
        guint64 iova;
        g_variant_get(m->body, "(t)", &iova);
        for (guint i = 0; i < srv->dma->len; i++) {
            if (g_array_index(srv->dma, uint64_t, i) == iova) {
                g_array_remove_index_fast(srv->dma, i);
                server_publish_dma(srv);
                if ((rc = dext_platform_dma_free(pl, iova)) < 0) {
                    PLAT_FAIL(rc);
                }
                dext_msg_init_reply(rep, m, NULL);
                return 0;
            }
        }
        *why = g_strdup_printf("0x%" G_GINT64_MODIFIER "x is not a DMA allocation of %s", iova,
                               srv->name);
        return -EINVAL;
    }
    case DEXT_MSG_IRQ_BIND: {
        guint32 vec;
        g_variant_get(m->body, "(tu)", NULL, &vec);
        int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (efd < 0) {
            return -errno;
        }
        DextIrqKind used;
        rc = dext_platform_irq_bind(pl, dev->fn.addr,
                                    dev->fn.msix_table_size ? DEXT_IRQ_MSIX : DEXT_IRQ_AUTO,
                                    vec, efd, &used);
        if (rc < 0) {
            close(efd);
            PLAT_FAIL(rc);
        }
        bool known = false;
        for (guint i = 0; i < dev->irqs->len; i++) {
            known |= g_array_index(dev->irqs, unsigned, i) == vec;
        }
        if (!known) {
            g_array_append_val(dev->irqs, vec);
        }
        dext_msg_init_reply(rep, m, g_variant_new("(u)", (guint32)dev->fn.msix_table_size));
        rep->fds[0] = efd;  /* owned: closed after sending */
        rep->nfds = 1;
        return 0;
    }
    case DEXT_MSG_IRQ_UNBIND: {
        guint32 vec;
        g_variant_get(m->body, "(tu)", NULL, &vec);
        for (guint i = 0; i < dev->irqs->len; i++) {
            if (g_array_index(dev->irqs, unsigned, i) == vec) {
                g_array_remove_index_fast(dev->irqs, i);
                if ((rc = dext_platform_irq_unbind(pl, dev->fn.addr, vec)) < 0) {
                    PLAT_FAIL(rc);
                }
                dext_msg_init_reply(rep, m, NULL);
                return 0;
            }
        }
        *why = g_strdup_printf("vector %u is not bound", vec);
        return -ENOENT;
    }
    case DEXT_MSG_RESET:
        revoke_channel(d, dev);   /* the driver asks for a new one after */
        rc = dext_platform_reset_function(pl, dev->fn.addr, false);
        if (rc < 0) {
            PLAT_FAIL(rc);
        }
        g_array_set_size(dev->irqs, 0); /* the platform dropped them */
        dext_msg_init_reply(rep, m, NULL);
        return 0;
    case DEXT_MSG_IRQ_INFO:
        dext_msg_init_reply(rep, m, g_variant_new("(u)", (guint32)dev->fn.msix_table_size));
        return 0;
    case DEXT_MSG_MMIO_CHANNEL: {
        /* The memory BARs, but never the MSI-X table or PBA (the runtime
         * owns them, see mmio_protected): a BAR holding them is granted up
         * to the first of them; accesses beyond go through MMIO_READ/WRITE. */
        const DextPciFunction *f = &dev->fn;
        uint64_t win[DEXT_PCI_NUM_BARS];
        GVariantBuilder b;
        unsigned cid;
        int fd;
        for (unsigned i = 0; i < DEXT_PCI_NUM_BARS; i++) {
            bool mem = f->bars[i].kind == DEXT_BAR_MEM32 || f->bars[i].kind == DEXT_BAR_MEM64;
            win[i] = mem ? f->bars[i].size : 0;
            if (f->msix_cap && f->msix_table_size && i == f->msix_table_bar) {
                win[i] = MIN(win[i], f->msix_table_offset);
            }
            if (f->msix_cap && f->msix_table_size && i == f->msix_pba_bar) {
                win[i] = MIN(win[i], f->msix_pba_offset);
            }
        }
        revoke_channel(d, dev);   /* one per device: a new one replaces it */
        if ((rc = dext_platform_mmio_channel_open(pl, f->addr, win, &fd, &cid)) < 0) {
            PLAT_FAIL(rc);
        }
        dev->mmio_chan = cid;
        dext_reg_entry_set(dev->entry, "mmio-channel", g_variant_new_uint32(cid));
        g_variant_builder_init(&b, G_VARIANT_TYPE("at"));
        for (unsigned i = 0; i < DEXT_PCI_NUM_BARS; i++) {
            g_variant_builder_add(&b, "t", (guint64)win[i]);
        }
        dext_msg_init_reply(rep, m, g_variant_new("(uat)", (guint32)cid, &b));
        rep->fds[0] = fd;   /* owned: closed after sending */
        rep->nfds = 1;
        return 0;
    }
    case DEXT_MSG_IRQ_STATS: {
        DextIrqStats st;
        dext_platform_irq_stats(pl, &st);
        dext_msg_init_reply(rep, m, g_variant_new("(tt)", (guint64)st.msi_received,
                                                  (guint64)st.last_msi_ns));
        return 0;
    }
    case DEXT_MSG_NUB_PUBLISH:
        return nub_publish(srv, m, rep, why);
    case DEXT_MSG_NUB_TERMINATE:
        return nub_terminate_rpc(srv, m, rep, why);
    case DEXT_MSG_PROVIDER_OPEN:
        return provider_open(srv, m, why);
    default:
        *why = g_strdup_printf("%s is not a driver request", dext_msg_name(m->type));
        return -EOPNOTSUPP;
    }
#undef PLAT_FAIL
}

static gboolean on_rpc(gint fd, GIOCondition cond, gpointer data)
{
    Server *srv = data;
    for (int i = 0; i < MAX_RPC_BATCH; i++) {
        DextMsg m, rep = { 0 };
        char *why = NULL;
        int rc = dext_ipc_recv(fd, DEXT_CH_RPC, &m, 0, &why);
        if (rc == -ETIMEDOUT) {
            return G_SOURCE_CONTINUE;
        }
        if (rc < 0 && (rc == -ECONNRESET || rc == -EPIPE)) {
            g_free(why);
            srv->rpc_watch = 0;
            return G_SOURCE_REMOVE; /* process ending; the child watch cleans up */
        }
        if (rc < 0) {
            LOGW("%s: malformed request: %s", srv->name, why ? why : g_strerror(-rc));
            if (m.serial && rc != -EMSGSIZE) {
                DextMsg e;
                dext_msg_init_error(&e, &m, rc, "%s", why ? why : "malformed");
                dext_ipc_send(fd, &e);
                dext_msg_clear(&e);
                g_free(why);
                continue;
            }
            g_free(why);
            /* Cannot even frame it: drop this connection (the driver ends). */
            srv->rpc_watch = 0;
            close(srv->rpc_fd);
            srv->rpc_fd = -1;
            return G_SOURCE_REMOVE;
        }
        if (m.flags & DEXT_MSG_F_REPLY) {
            dext_msg_clear(&m);
            continue;
        }
        rc = handle_rpc(srv, &m, &rep, &why);
        if (m.flags & DEXT_MSG_F_POSTED) {
            if (rc < 0) {
                LOGW("%s: posted %s dropped: %s", srv->name, dext_msg_name(m.type),
                     why ? why : g_strerror(-rc));
            }
            if (rc >= 0) {
                if (rc == 1) {
                    rep.nfds = 0;
                }
                dext_msg_clear(&rep);
            }
        } else if (rc < 0) {
            LOGD("%s: %s refused: %s", srv->name, dext_msg_name(m.type), why ? why : "");
            DextMsg e;
            dext_msg_init_error(&e, &m, rc, "%s", why ? why : g_strerror(-rc));
            dext_ipc_send(fd, &e);
            dext_msg_clear(&e);
        } else if (rc == 2) {
            /* answered later (PROVIDER_OPEN) */
        } else {
            dext_ipc_send(fd, &rep);
            if (rc == 1) {
                rep.nfds = 0; /* borrowed fd */
            }
            dext_msg_clear(&rep);
        }
        g_free(why);
        dext_msg_clear(&m);
        if (m.type == DEXT_MSG_HELLO && rc < 0) {
            kill_server(srv, "bad HELLO");
        }
    }
    return G_SOURCE_CONTINUE;
}

static gboolean hello_timeout(gpointer data)
{
    Server *srv = data;
    srv->timer = 0;
    kill_server(srv, "no HELLO within 10 s");
    return G_SOURCE_REMOVE;
}

static void child_setup(gpointer data)
{
    int *fds = data;
    /* Die with dextd: drivers never outlive their daemon. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    /* Own process group: a terminal's Ctrl-C reaches dextd, which stops
     * drivers in order, instead of killing them under it. */
    setpgid(0, 0);
    int c = fcntl(fds[0], F_DUPFD_CLOEXEC, 10), r = fcntl(fds[1], F_DUPFD_CLOEXEC, 10);
    dup2(c, 3);
    dup2(r, 4);
}

static void launch_server(Server *srv)
{
    Dextd *d = srv->d;
    int ctrl[2], rpc[2];
    if (d->shutting_down) {
        return;
    }
    if (dext_ipc_socketpair(ctrl) < 0 || dext_ipc_socketpair(rpc) < 0) {
        LOGE("%s: socketpair: %s", srv->name, g_strerror(errno));
        return;
    }
    char *argv[] = { srv->bundle->executable, NULL };
    char **envp = g_get_environ();
    envp = g_environ_setenv(envp, "DEXT_CONTROL_FD", "3", TRUE);
    envp = g_environ_setenv(envp, "DEXT_RPC_FD", "4", TRUE);
    envp = g_environ_setenv(envp, "DEXT_SERVER_NAME", srv->name, TRUE);
    int child_fds[2] = { ctrl[1], rpc[1] };
    GError *err = NULL;
    GPid pid;
    /* stdout and stderr into one pipe read by dextd (see log_add); without
     * a pipe they stay dextd's own. */
    int logp[2] = { -1, -1 };
    if (g_unix_open_pipe(logp, FD_CLOEXEC, NULL)) {
        g_unix_set_fd_nonblocking(logp[0], TRUE, NULL);
    } else {
        LOGW("%s: no log pipe (%s): its output is not kept", srv->name, g_strerror(errno));
        logp[0] = logp[1] = -1;
    }
    /* g_spawn closes every other fd in the child (no leaked platform or
     * app sockets) and dup2 in child_setup clears CLOEXEC on 3 and 4. */
    gboolean ok = g_spawn_async_with_fds(srv->bundle->dir, argv, envp,
                                         G_SPAWN_DO_NOT_REAP_CHILD,
                                         child_setup, child_fds, &pid,
                                         -1, logp[1], logp[1], &err);
    g_strfreev(envp);
    close(ctrl[1]);
    close(rpc[1]);
    if (logp[1] >= 0) {
        close(logp[1]);
    }
    if (!ok) {
        LOGE("%s: cannot launch %s: %s", srv->name, srv->bundle->executable, err->message);
        g_error_free(err);
        close(ctrl[0]);
        close(rpc[0]);
        if (logp[0] >= 0) {
            close(logp[0]);
        }
        for (guint i = 0; i < srv->services->len; i++) {
            svc_set_state(srv->services->pdata[i], SVC_GAVE_UP);
        }
        return;
    }
    srv->pid = pid;
    srv->launches++;
    srv->hello = false;
    srv->ctrl_fd = ctrl[0];
    srv->rpc_fd = rpc[0];
    srv->ctrl_watch = g_unix_fd_add(srv->ctrl_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_ctrl, srv);
    srv->rpc_watch = g_unix_fd_add(srv->rpc_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_rpc, srv);
    srv->child_watch = g_child_watch_add(pid, on_child_exit, srv);
    srv->timer = g_timeout_add(HELLO_TIMEOUT_MS, hello_timeout, srv);
    log_close(srv);         /* a previous process's pipe, if still open */
    g_string_truncate(srv->log_partial, 0);
    srv->log_fd = logp[0];
    if (srv->log_fd >= 0) {
        srv->log_watch = g_unix_fd_add(srv->log_fd, G_IO_IN | G_IO_HUP | G_IO_ERR, on_log, srv);
    }
    for (guint i = 0; i < srv->services->len; i++) {
        Service *s = srv->services->pdata[i];
        if (s->state == SVC_MATCHED || s->state == SVC_CRASHED) {
            svc_set_state(s, SVC_LAUNCHING);
            dext_reg_entry_set(s->entry, "pid", g_variant_new_int32(pid));
            dext_reg_entry_set(s->entry, "launches", g_variant_new_uint32(srv->launches));
        }
    }
    LOGI("launched %s (%s) pid %d, launch #%u", srv->name, srv->bundle->executable, (int)pid,
         srv->launches);
}

/* ---- apps ------------------------------------------------------------------ */

static void app_close(Dextd *d, AppConn *a)
{
    if (a->watch) {
        g_source_remove(a->watch);
    }
    close(a->fd);
    g_hash_table_remove(d->apps, &a->id);
}

static void app_error(AppConn *a, const DextMsg *req, int err, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
static void app_error(AppConn *a, const DextMsg *req, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    DextMsg e;
    dext_msg_init_error(&e, req, err, "%s", s);
    dext_ipc_send(a->fd, &e);
    dext_msg_clear(&e);
    g_free(s);
}

static void on_open_reply(Server *srv, Pending *p, int rc)
{
    AppConn *a = g_hash_table_lookup(srv->d->apps, &p->app_id);
    DextMsg req = { .serial = p->app_serial };
    if (!a) {
        return; /* the app went away meanwhile; its end closes with p */
    }
    if (rc < 0) {
        LOGI("%s refused user client for app pid %d: %s", srv->name, (int)a->pid,
             g_strerror(-rc));
        app_error(a, &req, rc, "driver refused the connection: %s", g_strerror(-rc));
        return;
    }
    DextMsg r;
    req.type = DEXT_MSG_OPEN;
    dext_msg_init_reply(&r, &req, g_variant_new("(tt)", (guint64)p->svc->id, (guint64)p->client_id));
    r.fds[0] = p->app_fd;
    r.nfds = 1;
    dext_ipc_send(a->fd, &r);
    r.nfds = 0;
    dext_msg_clear(&r);
}

static char *app_identity(pid_t pid, DextAppEntitlements **ents, char **why)
{
    char *link = g_strdup_printf("/proc/%d/exe", (int)pid);
    char *exe = g_file_read_link(link, NULL);
    g_free(link);
    if (!exe) {
        *why = g_strdup("cannot identify the app's executable");
        return NULL;
    }
    char *ef = g_strdup_printf("%s.entitlements", exe);
    GError *e = NULL;
    *ents = dext_app_entitlements_load(ef, &e);
    if (!*ents) {
        *why = g_strdup_printf("no valid entitlements for %s: %s", exe, e->message);
        g_error_free(e);
    }
    g_free(ef);
    return exe;
}

static void app_open(Dextd *d, AppConn *a, DextMsg *m)
{
    const char *by, *value;
    g_variant_get(m->body, "(&s&s)", &by, &value);
    char *why = NULL;
    DextAppEntitlements *ents = NULL;
    char *exe = app_identity(a->pid, &ents, &why);
    if (!ents) {
        LOGW("user client refused for pid %d (%s): %s", (int)a->pid, exe ? exe : "?", why);
        app_error(a, m, -EACCES, "%s", why);
        goto out;
    }
    Service *found = NULL;
    bool any = false;
    for (guint i = 0; i < d->services->len && !found; i++) {
        Service *s = d->services->pdata[i];
        bool hit = !strcmp(by, "class") ? !strcmp(s->p->user_class, value)
                 : !strcmp(by, "name") ? !strcmp(s->srv->name, value)
                 : !strcmp(by, "id") ? g_ascii_strtoull(value, NULL, 10) == s->id : false;
        if (hit) {
            any = true;
            if (s->state == SVC_RUNNING) {
                found = s;
            }
        }
    }
    if (!found) {
        app_error(a, m, any ? -EAGAIN : -ENOENT, "%s service matching %s=%s",
                  any ? "no running" : "no", by, value);
        goto out;
    }
    if (!dext_app_may_open(ents, found->srv->name)) {
        LOGW("user client refused: app %s (%s) lacks userclient-access to %s", ents->id, exe,
             found->srv->name);
        app_error(a, m, -EACCES, "app %s is not entitled to open %s", ents->id, found->srv->name);
        goto out;
    }
    if (!dext_bundle_allows_app(found->srv->bundle, ents->id)) {
        LOGW("user client refused: bundle %s does not list app %s in userclient-access",
             found->srv->bundle->name, ents->id);
        app_error(a, m, -EACCES, "driver %s does not allow app %s", found->srv->name, ents->id);
        goto out;
    }
    int sv[2];
    if (dext_ipc_socketpair(sv) < 0) {
        app_error(a, m, -EMFILE, "socketpair failed");
        goto out;
    }
    Pending *p = g_new0(Pending, 1);
    p->kind = P_OPEN;
    p->svc = found;
    p->app_id = a->id;
    p->app_serial = m->serial;
    p->client_id = ++d->next_client_id;
    p->app_fd = sv[0];
    if (!ctrl_send(found->srv, DEXT_MSG_NEW_CLIENT,
                   g_variant_new("(tts)", (guint64)found->id, (guint64)p->client_id, ents->id),
                   sv[1], p, START_TIMEOUT_MS)) {
        app_error(a, m, -ECONNRESET, "driver not reachable");
        pending_free(p);
    } else {
        LOGI("app %s (pid %d) opens a user client of %s (%s)", ents->id, (int)a->pid,
             found->p->user_class, found->srv->name);
    }
    close(sv[1]);
out:
    g_free(exe);
    g_free(why);
    dext_app_entitlements_free(ents);
}


/* Stop or start one service on request of an app entitled dextd-control. */
static void app_service_ctl(Dextd *d, AppConn *a, DextMsg *m)
{
    guint64 id;
    const char *op;
    char *why = NULL;
    DextAppEntitlements *ents = NULL;
    g_variant_get(m->body, "(t&s)", &id, &op);
    char *exe = app_identity(a->pid, &ents, &why);
    if (!ents || !ents->control) {
        LOGW("service control refused for pid %d (%s): %s", (int)a->pid, exe ? exe : "?",
             ents ? "no dextd-control entitlement" : why);
        app_error(a, m, -EACCES, "not entitled to control services");
        goto out;
    }
    Service *s = NULL;
    for (guint i = 0; i < d->services->len; i++) {
        Service *x = d->services->pdata[i];
        if (x->id == id) {
            s = x;
        }
    }
    if (!s || d->shutting_down) {
        app_error(a, m, -ENOENT, "no service %" G_GUINT64_FORMAT, id);
        goto out;
    }
    DextMsg r;
    if (!strcmp(op, "stop")) {
        if (s->state != SVC_RUNNING) {
            app_error(a, m, -EINVAL, "service is %s", svc_state_names[s->state]);
            goto out;
        }
        if (service_stop(s) < 0) {
            app_error(a, m, -ECONNRESET, "driver not reachable");
            goto out;
        }
        LOGI("app %s stops service %" G_GUINT64_FORMAT " (%s)", ents->id, id, s->p->user_class);
    } else if (!strcmp(op, "start")) {
        if (s->state != SVC_STOPPED && s->state != SVC_FAILED && s->state != SVC_GAVE_UP) {
            app_error(a, m, -EINVAL, "service is %s", svc_state_names[s->state]);
            goto out;
        }
        if (s->dev->nub && s->dev->terminating) {
            app_error(a, m, -ENODEV, "its provider nub is terminated");
            goto out;
        }
        LOGI("app %s starts service %" G_GUINT64_FORMAT " (%s)", ents->id, id, s->p->user_class);
        s->srv->ends->len = 0;
        s->srv->gave_up = false;
        if (s->srv->pid > 0 && s->srv->hello && s->srv->ctrl_fd >= 0) {
            send_start(s);
        } else {
            svc_set_state(s, SVC_MATCHED);
            if (s->srv->pid <= 0 && !s->srv->timer) {
                launch_server(s->srv);
            }
        }
    } else {
        app_error(a, m, -EINVAL, "unknown operation %s (stop, start)", op);
        goto out;
    }
    dext_msg_init_reply(&r, m, NULL);
    dext_ipc_send(a->fd, &r);
    dext_msg_clear(&r);
out:
    g_free(exe);
    g_free(why);
    dext_app_entitlements_free(ents);
}

/* ---- dextctl queries ------------------------------------------------------ */

static void app_reply(AppConn *a, const DextMsg *req, GVariant *body)
{
    DextMsg r;
    dext_msg_init_reply(&r, req, body);
    int rc = dext_ipc_send(a->fd, &r);
    if (rc == -EMSGSIZE) {
        app_error(a, req, -EMSGSIZE, "reply too large for one message");
    }
    dext_msg_clear(&r);
}

/* Devices with their services (one row per service; a device without one
 * gets a row with service id 0).  Sized for the fixed device count. */
static void app_list(Dextd *d, AppConn *a, DextMsg *m)
{
    GVariantBuilder b;
    g_variant_builder_init(&b, G_VARIANT_TYPE("a(tsqqutsssxuu)"));
    for (guint i = 0; i < d->devices->len; i++) {
        Device *dev = d->devices->pdata[i];
        bool any = false;
        for (guint k = 0; k < d->services->len; k++) {
            Service *s = d->services->pdata[k];
            if (s->dev != dev) {
                continue;
            }
            any = true;
            g_variant_builder_add(&b, "(tsqqutsssxuu)", (guint64)dev->id,
                                  dev_label(dev), dev->info.vendor,
                                  dev->info.device, dev->info.class_code, (guint64)s->id,
                                  s->p->user_class, s->srv->name, svc_state_names[s->state],
                                  (gint64)s->srv->pid, s->srv->launches, s->starts);
        }
        if (!any) {
            g_variant_builder_add(&b, "(tsqqutsssxuu)", (guint64)dev->id,
                                  dev_label(dev), dev->info.vendor,
                                  dev->info.device, dev->info.class_code, (guint64)0, "", "",
                                  "unmatched", (gint64)0, 0u, 0u);
        }
    }
    app_reply(a, m, g_variant_new("(a(tsqqutsssxuu))", &b));
}

/* Lines from seq `since` on, at most `max` and LOG_REPLY_BYTES of text;
 * the reply's first field is the seq to ask for next. */
static void app_log(Dextd *d, AppConn *a, DextMsg *m)
{
    guint64 since;
    guint32 max;
    g_variant_get(m->body, "(tu)", &since, &max);
    if (!max || max > 1000) {
        max = 1000;
    }
    GVariantBuilder b;
    g_variant_builder_init(&b, G_VARIANT_TYPE("a(txss)"));
    guint64 next = d->log_seq;
    size_t bytes = 0;
    unsigned n = 0;
    for (GList *l = d->log_ring.head; l; l = l->next) {
        LogLine *ll = l->data;
        if (ll->seq < since) {
            continue;
        }
        size_t sz = strlen(ll->line) + strlen(ll->server) + 32;
        if (n == max || bytes + sz > LOG_REPLY_BYTES) {
            next = ll->seq;
            break;
        }
        g_variant_builder_add(&b, "(txss)", (guint64)ll->seq, ll->pid, ll->server, ll->line);
        bytes += sz;
        n++;
    }
    app_reply(a, m, g_variant_new("(ta(txss))", next, &b));
}

/* Every device x every loaded personality: matched and won, or the first
 * reason it did not. */
static void app_match_explain(Dextd *d, AppConn *a, DextMsg *m)
{
    GVariantBuilder b;
    g_variant_builder_init(&b, G_VARIANT_TYPE("a(ssssbs)"));
    for (guint i = 0; i < d->devices->len; i++) {
        Device *dev = d->devices->pdata[i];
        GArray *w = dext_match_select(d->personalities, &dev->info, NULL);
        for (guint k = 0; k < d->personalities->len; k++) {
            const DextPersonality *p = d->personalities->pdata[k];
            char *why = NULL;
            bool won = false;
            if (dext_match_explain(p, &dev->info, &why)) {
                const DextMatchResult *win = NULL;
                for (guint j = 0; j < w->len; j++) {
                    const DextMatchResult *r = &g_array_index(w, DextMatchResult, j);
                    if (!strcmp(r->p->match_category, p->match_category)) {
                        win = r;
                    }
                }
                won = win && win->p == p;
                if (!won && win) {
                    char *lost = g_strdup_printf("score: %s; loses to %s/%s (score %d, "
                                                 "specificity %u) in category %s", why,
                                                 win->p->bundle ? win->p->bundle->name : "",
                                                 win->p->name, win->p->probe_score,
                                                 win->specificity, p->match_category);
                    g_free(why);
                    why = lost;
                }
            }
            char *pname = g_strdup_printf("%s/%s", p->bundle ? p->bundle->name : "", p->name);
            g_variant_builder_add(&b, "(ssssbs)", dev_label(dev), pname,
                                  p->user_class, p->server_name, won, why ? why : "");
            g_free(pname);
            g_free(why);
        }
        g_array_free(w, TRUE);
    }
    app_reply(a, m, g_variant_new("(a(ssssbs))", &b));
}

/* NULL (and an error sent) unless the app holds dextd-control. */
static DextAppEntitlements *app_control(AppConn *a, DextMsg *m, const char *what)
{
    char *why = NULL;
    DextAppEntitlements *ents = NULL;
    char *exe = app_identity(a->pid, &ents, &why);
    if (!ents || !ents->control) {
        LOGW("%s refused for pid %d (%s): %s", what, (int)a->pid, exe ? exe : "?",
             ents ? "no dextd-control entitlement" : why);
        app_error(a, m, -EACCES, "not entitled to %s (dextd-control)", what);
        dext_app_entitlements_free(ents);
        ents = NULL;
    }
    g_free(exe);
    g_free(why);
    return ents;
}

static DextBundle *bundle_by_name(Dextd *d, const char *name)
{
    for (guint i = 0; i < d->bundles->len; i++) {
        DextBundle *b = d->bundles->pdata[i];
        if (!strcmp(b->name, name)) {
            return b;
        }
    }
    return NULL;
}

/* load: a bundle folder; its winners are added where their category is
 * still free on a device (running services are never preempted). */
static char *bundle_load(Dextd *d, const char *dir, int *rc)
{
    GError *e = NULL;
    DextBundle *b = dext_bundle_load(dir, &e);
    if (!b) {
        *rc = -EINVAL;
        char *r = g_strdup_printf("bundle %s rejected: %s", dir, e->message);
        g_error_free(e);
        return r;
    }
    if (bundle_by_name(d, b->name)) {
        char *r = g_strdup_printf("a bundle named %s is already loaded", b->name);
        dext_bundle_free(b);
        *rc = -EEXIST;
        return r;
    }
    g_ptr_array_add(d->bundles, b);
    for (guint k = 0; k < b->personalities->len; k++) {
        g_ptr_array_add(d->personalities, b->personalities->pdata[k]);
    }
    unsigned added = 0;
    for (guint i = 0; i < d->devices->len; i++) {
        Device *dev = d->devices->pdata[i];
        if (dev->nub && dev->terminating) {
            continue;
        }
        GString *log = g_string_new(NULL);
        GArray *w = dext_match_select(d->personalities, &dev->info, log);
        for (guint k = 0; k < w->len; k++) {
            DextMatchResult *r = &g_array_index(w, DextMatchResult, k);
            bool taken = false;
            for (guint j = 0; j < d->services->len; j++) {
                Service *s = d->services->pdata[j];
                taken |= s->dev == dev && !strcmp(s->p->match_category, r->p->match_category);
            }
            if (r->p->bundle == b && !taken && add_service(d, dev, r)) {
                LOGI("matching %s after loading %s:\n%s", dev_label(dev),
                     b->name, log->str);
                added++;
            }
        }
        g_array_free(w, TRUE);
        g_string_free(log, TRUE);
    }
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Server *srv = v;
        if (srv->bundle == b && srv->pid <= 0 && !srv->timer) {
            launch_server(srv);
        }
    }
    LOGI("loaded bundle %s from %s: %u personalities, %u services", b->name, dir,
         b->personalities->len, added);
    *rc = 0;
    return g_strdup_printf("loaded %s: %u personalities, %u services", b->name,
                           b->personalities->len, added);
}

/* unload: each server of the bundle loses its channels (the process stops
 * its services and exits, as on any retire) and is killed if it has not
 * gone within 5 s; then its services, the server and the bundle go. */
static char *bundle_unload(Dextd *d, const char *name, int *rc)
{
    DextBundle *b = bundle_by_name(d, name);
    if (!b) {
        *rc = -ENOENT;
        return g_strdup_printf("no bundle %s", name);
    }
    GPtrArray *srvs = g_ptr_array_new();
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        if (((Server *)v)->bundle == b) {
            g_ptr_array_add(srvs, v);
        }
    }
    for (guint i = 0; i < srvs->len; i++) {
        if (((Server *)srvs->pdata[i])->unloading) {
            g_ptr_array_free(srvs, TRUE);
            *rc = -EBUSY;
            return g_strdup_printf("bundle %s is already being unloaded", name);
        }
    }
    unsigned exiting = 0;
    for (guint i = 0; i < srvs->len; i++) {
        Server *srv = srvs->pdata[i];
        srv->unloading = true;
        if (srv->timer) {
            g_source_remove(srv->timer);
            srv->timer = 0;
        }
        if (srv->pid > 0) {
            LOGI("unloading %s: closing the channels of %s (pid %d)", name, srv->name,
                 (int)srv->pid);
            for (guint k = 0; k < srv->services->len; k++) {
                Service *s = srv->services->pdata[k];
                if (s->state == SVC_RUNNING || s->state == SVC_STARTING ||
                    s->state == SVC_LAUNCHING) {
                    svc_set_state(s, SVC_STOPPING);
                }
            }
            for (guint k = 0; k < srv->services->len; k++) {
                Service *s = srv->services->pdata[k];
                if (s->nubs) {
                    service_nubs_terminate(s, "its publisher is unloaded"); /* clients' Stop first */
                }
            }
            close_channels(srv);
            srv->timer = g_timeout_add(UNLOAD_TIMEOUT_MS, unload_timeout, srv);
            exiting++;
        } else {
            bool later = server_nubs(srv) > 0;
            finish_unload(srv); /* with nubs: once they are gone */
            exiting += later;
        }
    }
    g_ptr_array_free(srvs, TRUE);
    if (!exiting && bundle_by_name(d, name) == b) {
        /* nothing ever matched it: no server to wait for */
        for (guint i = d->personalities->len; i-- > 0;) {
            if (((DextPersonality *)d->personalities->pdata[i])->bundle == b) {
                g_ptr_array_remove_index(d->personalities, i);
            }
        }
        LOGI("unloaded bundle %s", name);
        g_ptr_array_remove(d->bundles, b);
    }
    *rc = 0;
    return exiting ? g_strdup_printf("unloading %s: %u server(s) stopping", name, exiting)
                   : g_strdup_printf("unloaded %s", name);
}

/* restart: a server by name (or every server of a bundle by name). */
static char *server_restart(Dextd *d, const char *name, int *rc)
{
    GPtrArray *srvs = g_ptr_array_new();
    Server *one = g_hash_table_lookup(d->servers, name);
    if (one) {
        g_ptr_array_add(srvs, one);
    } else {
        GHashTableIter it;
        gpointer v;
        g_hash_table_iter_init(&it, d->servers);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            if (!strcmp(((Server *)v)->bundle->name, name)) {
                g_ptr_array_add(srvs, v);
            }
        }
    }
    if (!srvs->len) {
        g_ptr_array_free(srvs, TRUE);
        *rc = -ENOENT;
        return g_strdup_printf("no server or bundle %s with matched services", name);
    }
    GString *out = g_string_new(NULL);
    for (guint i = 0; i < srvs->len; i++) {
        Server *srv = srvs->pdata[i];
        if (srv->unloading) {
            continue;
        }
        /* an explicit restart forgives earlier crashes */
        srv->ends->len = 0;
        srv->gave_up = false;
        if (srv->pid > 0) {
            g_string_append_printf(out, "%srestarting %s (pid %d)", out->len ? "; " : "",
                                   srv->name, (int)srv->pid);
            srv->restarting = true;
            kill_server(srv, "restart requested (dextctl)");
        } else {
            for (guint k = 0; k < srv->services->len; k++) {
                Service *s = srv->services->pdata[k];
                if (s->state != SVC_MATCHED) {
                    svc_set_state(s, SVC_MATCHED);
                }
            }
            if (srv->timer) {
                g_source_remove(srv->timer);
                srv->timer = 0;
            }
            launch_server(srv);
            g_string_append_printf(out, "%slaunching %s", out->len ? "; " : "", srv->name);
        }
    }
    g_ptr_array_free(srvs, TRUE);
    *rc = 0;
    return g_string_free(out, FALSE);
}

static void app_bundle_ctl(Dextd *d, AppConn *a, DextMsg *m)
{
    const char *op, *arg;
    g_variant_get(m->body, "(&s&s)", &op, &arg);
    if (d->shutting_down) {
        app_error(a, m, -ESHUTDOWN, "dextd is shutting down");
        return;
    }
    DextAppEntitlements *ents = app_control(a, m, "load, unload or restart drivers");
    if (!ents) {
        return;
    }
    int rc = -EINVAL;
    char *res;
    if (!strcmp(op, "load")) {
        res = bundle_load(d, arg, &rc);
    } else if (!strcmp(op, "unload")) {
        res = bundle_unload(d, arg, &rc);
    } else if (!strcmp(op, "restart")) {
        res = server_restart(d, arg, &rc);
    } else {
        res = g_strdup_printf("unknown operation %s (load, unload, restart)", op);
    }
    LOGI("app %s: %s %s: %s", ents->id, op, arg, res);
    if (rc < 0) {
        app_error(a, m, rc, "%s", res);
    } else {
        app_reply(a, m, g_variant_new("(s)", res));
    }
    g_free(res);
    dext_app_entitlements_free(ents);
}

static gboolean on_app_msg(Dextd *d, AppConn *a)
{
    DextMsg m;
    char *why = NULL;
    int rc = dext_ipc_recv(a->fd, DEXT_CH_APP, &m, 0, &why);
    if (rc == -ETIMEDOUT) {
        return TRUE;
    }
    if (rc < 0) {
        if (rc != -ECONNRESET && rc != -EPIPE) {
            LOGW("app pid %d: %s", (int)a->pid, why ? why : g_strerror(-rc));
        }
        if (rc != -ECONNRESET && rc != -EPIPE && m.serial && rc != -EMSGSIZE) {
            app_error(a, &m, rc, "%s", why ? why : "malformed");
            g_free(why);
            return TRUE;
        }
        g_free(why);
        return FALSE;
    }
    if (m.flags & DEXT_MSG_F_REPLY) {
        dext_msg_clear(&m);
        return TRUE;
    }
    switch (m.type) {
    case DEXT_MSG_OPEN:
        app_open(d, a, &m);
        break;
    case DEXT_MSG_REGISTRY: {
        gboolean json;
        g_variant_get(m.body, "(b)", &json);
        char *s = dextd_registry_dump(d, json);
        DextMsg r;
        if (strlen(s) > DEXT_IPC_MAX_BODY - 64) {
            app_error(a, &m, -EMSGSIZE, "registry too large for one message");
        } else {
            dext_msg_init_reply(&r, &m, g_variant_new("(s)", s));
            dext_ipc_send(a->fd, &r);
            dext_msg_clear(&r);
        }
        g_free(s);
        break;
    }
    case DEXT_MSG_SERVICES: {
        GVariantBuilder b;
        g_variant_builder_init(&b, G_VARIANT_TYPE("a(tsssxuu)"));
        for (guint i = 0; i < d->services->len; i++) {
            Service *s = d->services->pdata[i];
            g_variant_builder_add(&b, "(tsssxuu)", (guint64)s->id, s->p->user_class, s->srv->name,
                                  svc_state_names[s->state], (gint64)s->srv->pid,
                                  s->srv->launches, s->starts);
        }
        DextMsg r;
        dext_msg_init_reply(&r, &m, g_variant_new("(a(tsssxuu))", &b));
        dext_ipc_send(a->fd, &r);
        dext_msg_clear(&r);
        break;
    }
    case DEXT_MSG_SERVICE_CTL:
        app_service_ctl(d, a, &m);
        break;
    case DEXT_MSG_LIST:
        app_list(d, a, &m);
        break;
    case DEXT_MSG_LOG:
        app_log(d, a, &m);
        break;
    case DEXT_MSG_MATCH_EXPLAIN:
        app_match_explain(d, a, &m);
        break;
    case DEXT_MSG_BUNDLE_CTL:
        app_bundle_ctl(d, a, &m);
        break;
    default:
        app_error(a, &m, -EOPNOTSUPP, "%s is not an app request", dext_msg_name(m.type));
    }
    dext_msg_clear(&m);
    return TRUE;
}

typedef struct {
    Dextd *d;
    uint64_t id;
} AppRef;

static gboolean on_app_ref(gint fd, GIOCondition cond, gpointer data)
{
    AppRef *r = data;
    AppConn *a = g_hash_table_lookup(r->d->apps, &r->id);
    if (!a) {
        return G_SOURCE_REMOVE;
    }
    for (int i = 0; i < 16; i++) {
        if (!on_app_msg(r->d, a)) {
            a->watch = 0;
            app_close(r->d, a);
            return G_SOURCE_REMOVE;
        }
        if (!(cond & G_IO_IN)) {
            break;
        }
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        if (poll(&pf, 1, 0) <= 0) {
            break;
        }
    }
    return G_SOURCE_CONTINUE;
}

static gboolean on_listen(gint fd, GIOCondition cond, gpointer data)
{
    Dextd *d = data;
    int c = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) {
        return G_SOURCE_CONTINUE;
    }
    if (g_hash_table_size(d->apps) >= MAX_APP_CONNS) {
        LOGW("too many app connections (%d): refusing one", MAX_APP_CONNS);
        close(c);
        return G_SOURCE_CONTINUE;
    }
    struct ucred cr;
    socklen_t len = sizeof(cr);
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) {
        close(c);
        return G_SOURCE_CONTINUE;
    }
    AppConn *a = g_new0(AppConn, 1);
    a->id = ++d->next_app_id;
    a->fd = c;
    a->pid = cr.pid;
    g_hash_table_insert(d->apps, &a->id, a);
    AppRef *r = g_new(AppRef, 1);
    r->d = d;
    r->id = a->id;
    a->watch = g_unix_fd_add_full(G_PRIORITY_DEFAULT, c, G_IO_IN | G_IO_HUP | G_IO_ERR,
                                  on_app_ref, r, g_free);
    LOGD("app connection %" G_GUINT64_FORMAT " from pid %d", a->id, (int)a->pid);
    return G_SOURCE_CONTINUE;
}

static void app_free(gpointer data)
{
    g_free(data);
}

static int listen_socket(Dextd *d, char **err)
{
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (strlen(d->socket_path) >= sizeof(sa.sun_path)) {
        *err = g_strdup_printf("socket path too long: %s", d->socket_path);
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, d->socket_path);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        *err = g_strdup_printf("socket: %s", g_strerror(errno));
        return -errno;
    }
    unlink(d->socket_path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
        int e = errno;
        *err = g_strdup_printf("cannot listen on %s: %s", d->socket_path, g_strerror(e));
        close(fd);
        return -e;
    }
    d->listen_fd = fd;
    d->listen_watch = g_unix_fd_add(fd, G_IO_IN, on_listen, d);
    return 0;
}

/* ---- lifecycle ------------------------------------------------------------ */

static void device_free(gpointer data)
{
    Device *dev = data;
    g_array_free(dev->irqs, TRUE);
    g_free(dev->label);
    g_free(dev);
}

int dextd_create(const DextdConfig *cfg, Dextd **out, char **err)
{
    int rc;
    GError *e = NULL;
    verbose = cfg->verbose;
    bool vfio = cfg->platform && !strcmp(cfg->platform, "vfio");
    if (!cfg->platform || (strcmp(cfg->platform, "qtest") && !vfio)) {
        *err = g_strdup_printf("unknown platform \"%s\" (qtest, vfio)", cfg->platform ? cfg->platform : "");
        return -EINVAL;
    }
    if (!cfg->machine_file && !vfio) {
        *err = g_strdup("--machine is required with the qtest platform");
        return -EINVAL;
    }
    Dextd *d = g_new0(Dextd, 1);
    d->cfg = *cfg;
    d->listen_fd = -1;
    d->reg = dext_registry_new();
    d->devices = g_ptr_array_new_with_free_func(device_free);
    d->bundles = g_ptr_array_new_with_free_func((GDestroyNotify)dext_bundle_free);
    d->personalities = g_ptr_array_new();
    d->services = g_ptr_array_new_with_free_func(g_free);
    d->servers = g_hash_table_new_full(g_str_hash, g_str_equal, NULL, server_free);
    d->apps = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, app_free);
    d->socket_path = g_strdup(cfg->socket_path);
    d->loop = g_main_loop_new(NULL, FALSE);
    d->log_seq = 1;
    g_queue_init(&d->log_ring);

    DextMachineDesc desc = { 0 };
    if (cfg->machine_file) {
        /* vfio: optional (its dma_size sizes the DMA pool) */
        d->machine = dextd_machine_load(cfg->machine_file, &e);
        if (!d->machine) {
            *err = g_strdup(e->message);
            g_error_free(e);
            rc = -EINVAL;
            goto fail;
        }
        desc = *dextd_machine_desc(d->machine);
    }
    desc.log_fn = platform_log;
    desc.log_opaque = d;
    LOGI("starting machine %s (%s platform)", cfg->machine_file ? cfg->machine_file : "(this system)",
         cfg->platform);
    rc = dext_platform_create(cfg->platform, &desc, &d->plat);
    if (rc < 0) {
        *err = g_strdup_printf("cannot start the machine: %s", g_strerror(-rc));
        goto fail;
    }
    if (!dext_platform_has_msi(d->plat)) {
        LOGW("this QEMU does not report MSI messages (no msi_intercept): interrupts unavailable");
    }
    /* Under qtest the machine's virtual clock stands still unless moved:
     * make it follow host time so device timers (interrupt coalescing, USB
     * interrupt endpoints) fire as on hardware, at most 1 ms late.  Where
     * virtual time is real time (a real guest) there is nothing to do. */
    rc = dext_platform_clock_follow(d->plat, 1000);
    if (rc < 0 && rc != -ENOTSUP) {
        *err = g_strdup_printf("cannot drive the machine's clock: %s", g_strerror(-rc));
        goto fail;
    }
    if ((rc = publish_pci(d, err)) < 0) {
        goto fail;
    }
    LOGI("published %u PCI functions", d->devices->len);
    load_bundles(d);
    match_all(d);
    if (d->socket_path && (rc = listen_socket(d, err)) < 0) {
        goto fail;
    }
    *out = d;
    return 0;
fail:
    dextd_destroy(d);
    return rc;
}

char *dextd_registry_dump(Dextd *d, bool json)
{
    return json ? dext_registry_dump_json(d->reg, NULL, TRUE) : dext_registry_dump_text(d->reg, NULL);
}

static gboolean on_signal(gpointer data)
{
    dextd_quit(data);
    return G_SOURCE_CONTINUE;
}

static gboolean quit_timeout(gpointer data)
{
    Dextd *d = data;
    d->quit_timer = 0;
    LOGW("servers did not stop in time: killing them");
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Server *srv = v;
        close_channels(srv);
        kill_server(srv, "shutdown timeout");
    }
    g_main_loop_quit(d->loop);
    return G_SOURCE_REMOVE;
}

static gboolean idle_quit(gpointer data)
{
    dextd_quit(data);
    return G_SOURCE_REMOVE;
}

static void on_platform_event(void *opaque, DextPlatformEvent ev, uint64_t a, uint64_t b,
                              const char *json)
{
    /* Reader thread: only hand over to the main loop. */
    if (ev == DEXT_EVENT_DIED) {
        g_idle_add(idle_quit, opaque);
    }
}

int dextd_run(Dextd *d)
{
    guint s1 = g_unix_signal_add(SIGTERM, on_signal, d);
    guint s2 = g_unix_signal_add(SIGINT, on_signal, d);
    dext_platform_set_event_cb(d->plat, on_platform_event, d);
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        launch_server(v);
    }
    if (!g_hash_table_size(d->servers)) {
        LOGI("no driver matched any device");
    }
    LOGI("ready%s%s", d->socket_path ? ": apps connect to " : "",
         d->socket_path ? d->socket_path : "");
    g_main_loop_run(d->loop);
    g_source_remove(s1);
    g_source_remove(s2);
    dext_platform_set_event_cb(d->plat, NULL, NULL);
    return d->exit_status;
}

void dextd_quit(Dextd *d)
{
    if (d->shutting_down) {
        return;
    }
    d->shutting_down = true;
    if (!dext_platform_alive(d->plat)) {
        LOGE("the machine died");
        d->exit_status = 1;
    }
    LOGI("shutting down: stopping services");
    GHashTableIter it;
    gpointer v;
    bool any = false;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Server *srv = v;
        if (srv->timer) {
            g_source_remove(srv->timer);
            srv->timer = 0;
        }
        if (srv->pid <= 0) {
            continue;
        }
        any = true;
        for (guint i = 0; i < srv->services->len; i++) {
            Service *s = srv->services->pdata[i];
            if (s->state == SVC_RUNNING) {
                svc_set_state(s, SVC_STOPPING);
                send_stop_now(s); /* counted in stops_pending */
            }
        }
    }
    if (!d->stops_pending) {
        g_hash_table_iter_init(&it, d->servers);
        while (g_hash_table_iter_next(&it, NULL, &v)) {
            close_channels(v);
        }
    }
    if (!any) {
        g_main_loop_quit(d->loop);
        return;
    }
    d->quit_timer = g_timeout_add(STOP_TIMEOUT_MS + 3000, quit_timeout, d);
}

void dextd_destroy(Dextd *d)
{
    if (!d) {
        return;
    }
    if (d->quit_timer) {
        g_source_remove(d->quit_timer);
    }
    if (d->reap_idle) {
        g_source_remove(d->reap_idle);
    }
    /* Reap whatever is left (bounded), then release devices. */
    GHashTableIter it;
    gpointer v;
    g_hash_table_iter_init(&it, d->servers);
    while (g_hash_table_iter_next(&it, NULL, &v)) {
        Server *srv = v;
        close_channels(srv);
        if (srv->timer) {
            g_source_remove(srv->timer);
        }
        if (srv->child_watch) {
            g_source_remove(srv->child_watch);
        }
        if (srv->pid > 0) {
            gint64 end = g_get_monotonic_time() + 2 * G_USEC_PER_SEC;
            while (waitpid(srv->pid, NULL, WNOHANG) == 0) {
                if (g_get_monotonic_time() > end) {
                    kill(srv->pid, SIGKILL);
                    waitpid(srv->pid, NULL, 0);
                    break;
                }
                g_usleep(10000);
            }
            srv->pid = 0;
        }
        if (d->plat) {
            release_server(srv, false);
        }
    }
    GList *apps = g_hash_table_get_values(d->apps);
    for (GList *l = apps; l; l = l->next) {
        AppConn *a = l->data;
        if (a->watch) {
            g_source_remove(a->watch);
        }
        close(a->fd);
    }
    g_list_free(apps);
    g_hash_table_destroy(d->apps);
    if (d->listen_watch) {
        g_source_remove(d->listen_watch);
    }
    if (d->listen_fd >= 0) {
        close(d->listen_fd);
        unlink(d->socket_path);
    }
    g_hash_table_destroy(d->servers);
    g_queue_clear_full(&d->log_ring, log_line_free);
    g_ptr_array_free(d->services, TRUE);
    g_ptr_array_free(d->personalities, TRUE);
    g_ptr_array_free(d->bundles, TRUE);
    g_ptr_array_free(d->devices, TRUE);
    dext_platform_destroy(d->plat);
    dextd_machine_free(d->machine);
    dext_registry_free(d->reg);
    g_main_loop_unref(d->loop);
    g_free(d->socket_path);
    g_free(d);
}
