/*
 * dext-nubtest: the runtime's test drivers for driver-published nubs
 * (docs/runtime/nubs.md), one source built as three bundles:
 *
 *   dext-nubtest     NubTestPublisher, matched to each dextlab-dma device.
 *                    The first instance ("A") publishes a fake USB device
 *                    nub usb@1 (IOUSBHostDevice, 0xdec5:0x7e57) and its
 *                    interface nub if0 (IOUSBHostInterface, vendor class),
 *                    serves each client's provider channel by answering
 *                    USB_INFO with fixed descriptors, and on NUB_RESET
 *                    terminates and re-publishes both (new ids).  Its user
 *                    client terminates / re-publishes / reports state.  The
 *                    second instance ("B") sends bad NUB_PUBLISH requests in
 *                    its Start (wrong service, unknown class, too many or
 *                    oversized properties, a parent that is A's nub, 257
 *                    nubs) and NUB_TERMINATEs of ids that are no nubs, and
 *                    logs each answer.  (A and B share a process, which may
 *                    terminate any nub it published: dextd checks the
 *                    process, so B does not try A's.)
 *   dext-nubclient   NubTestClient (IOUSBHostInterface 0xdec5:0x7e57 if 0,
 *                    transport.usb=0xdec5): opens the provider channel in
 *                    Start and checks USB_INFO against its provider's
 *                    properties; holds the channel until Stop.
 *   dext-nubintruder the same client personality without the entitlement
 *                    (must never be matched), and NubTestIntruder on the
 *                    dextlab-dma device, which asks for provider channels
 *                    it may not have and logs the answers.
 *
 * It uses two libdext-internal calls (harness/lib/internal.h) on purpose:
 * dext__provider_open is the plumbing under the USB client library that
 * this driver tests directly, and dext__rpc forges a NUB_PUBLISH for a
 * service that is not the caller's, which the public API cannot express.
 */
#include <dext/dext.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include "ipc.h"

#include <glib.h>

int dext__provider_open(DextService *svc, int *fd);
int dext__rpc(uint16_t type, GVariant *body, bool posted, DextMsg *reply);

#define NT_VENDOR   0xdec5
#define NT_PRODUCT  0x7e57
#define NT_SPEED    3       /* high speed (DEXT_USBHOST_SPEED_HIGH) */

/* USB_INFO's answer: device descriptor and configuration descriptor set. */
static const uint8_t dev_desc[18] = {
    18, 1, 0x00, 0x02, 0, 0, 0, 64, NT_VENDOR & 0xff, NT_VENDOR >> 8,
    NT_PRODUCT & 0xff, NT_PRODUCT >> 8, 0x00, 0x01, 0, 0, 0, 1,
};
static const uint8_t cfg_desc[41] = {
    9, 2, 41, 0, 2, 1, 0, 0x80, 50,     /* configuration 1, two interfaces */
    9, 4, 0, 0, 2, 0xff, 0x01, 0x02, 0, /* interface 0: vendor 0xff/0x01/0x02 */
    7, 5, 0x81, 2, 0x00, 0x02, 0,       /* bulk IN 512 */
    7, 5, 0x02, 2, 0x00, 0x02, 0,       /* bulk OUT 512 */
    9, 4, 1, 0, 0, 0xff, 0x01, 0x03, 0, /* interface 1: no endpoints */
};

/* ---- publisher ---------------------------------------------------------- */

typedef struct {
    int fd;
    GThread *thread;
    uint64_t nub;
} Chan;

static struct {
    GMutex lock;
    DextService *a;          /* the instance that publishes the device */
    uint64_t dev_nub, if_nub;
    unsigned resets, clients, infos;
    GPtrArray *chans;        /* Chan* of A */
} pub;

static int publish_a_locked(void)
{
    uint64_t dev, ifc;
    int rc = dext_service_publish_nub(pub.a, 0, "usb@1", "IOUSBHostDevice",
        "{'idVendor': <uint16 0xdec5>, 'idProduct': <uint16 0x7e57>, 'bcdDevice': <uint16 0x100>,"
        " 'bDeviceClass': <byte 0>, 'bDeviceSubClass': <byte 0>, 'bDeviceProtocol': <byte 0>,"
        " 'bConfigurationValue': <byte 1>, 'port': <uint32 1>, 'speed': <uint32 3>,"
        " 'USB Product Name': <'nubtest device'>}", &dev);
    if (rc < 0) {
        DEXT_ERROR("nubtest: publishing usb@1 failed: %s", g_strerror(-rc));
        return rc;
    }
    rc = dext_service_publish_nub(pub.a, dev, "if0", "IOUSBHostInterface",
        "{'idVendor': <uint16 0xdec5>, 'idProduct': <uint16 0x7e57>, 'bcdDevice': <uint16 0x100>,"
        " 'bConfigurationValue': <byte 1>, 'bInterfaceNumber': <byte 0>,"
        " 'bInterfaceClass': <byte 0xff>, 'bInterfaceSubClass': <byte 1>,"
        " 'bInterfaceProtocol': <byte 2>}", &ifc);
    if (rc < 0) {
        DEXT_ERROR("nubtest: publishing if0 failed: %s", g_strerror(-rc));
        dext_service_terminate_nub(pub.a, dev);
        return rc;
    }
    pub.dev_nub = dev;
    pub.if_nub = ifc;
    DEXT_INFO("nubtest: published usb@1 (nub %" G_GUINT64_FORMAT ") and if0 (nub %"
              G_GUINT64_FORMAT ")", dev, ifc);
    return 0;
}

static int terminate_a_locked(void)
{
    if (!pub.dev_nub) {
        return -ENOENT;
    }
    int rc = dext_service_terminate_nub(pub.a, pub.dev_nub); /* if0 goes with it */
    DEXT_INFO("nubtest: terminated nub %" G_GUINT64_FORMAT ": %d", pub.dev_nub, rc);
    pub.dev_nub = pub.if_nub = 0;
    return rc;
}

static int reply_info(int fd, const DextMsg *m)
{
    DextMsg r;
    dext_msg_init_reply(&r, m, g_variant_new("(uy@ay@ay)", (guint32)NT_SPEED, (guchar)1,
        g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, dev_desc, sizeof(dev_desc), 1),
        g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, cfg_desc, sizeof(cfg_desc), 1)));
    int rc = dext_ipc_send(fd, &r);
    dext_msg_clear(&r);
    return rc;
}

/* One provider channel: USB_INFO only; everything else is refused. */
static gpointer chan_thread(gpointer data)
{
    Chan *c = data;
    for (;;) {
        DextMsg m;
        char *why = NULL;
        int rc = dext_ipc_recv(c->fd, DEXT_CH_PROV, &m, 1000, &why);
        if (rc == -ETIMEDOUT) {
            continue;
        }
        if (rc < 0) {
            g_free(why);
            break; /* closed (client gone or our Stop) or framing broken */
        }
        if (m.type == DEXT_MSG_USB_INFO) {
            reply_info(c->fd, &m);
            g_mutex_lock(&pub.lock);
            pub.infos++;
            g_mutex_unlock(&pub.lock);
        } else {
            DextMsg e;
            dext_msg_init_error(&e, &m, -EOPNOTSUPP, "nubtest serves USB_INFO only");
            dext_ipc_send(c->fd, &e);
            dext_msg_clear(&e);
        }
        dext_msg_clear(&m);
    }
    DEXT_INFO("nubtest: provider channel of nub %" G_GUINT64_FORMAT " closed", c->nub);
    return NULL;
}

static int publisher_nub_client(DextService *svc, uint64_t nub, uint64_t client, int fd)
{
    Chan *c = g_new0(Chan, 1);
    c->fd = fd;
    c->nub = nub;
    c->thread = g_thread_try_new("nubtest-chan", chan_thread, c, NULL);
    if (!c->thread) {
        close(fd);
        g_free(c);
        return -EAGAIN;
    }
    g_mutex_lock(&pub.lock);
    g_ptr_array_add(pub.chans, c);
    pub.clients++;
    g_mutex_unlock(&pub.lock);
    DEXT_INFO("nubtest: NUB_CLIENT for nub %" G_GUINT64_FORMAT " from service %" G_GUINT64_FORMAT,
              nub, client);
    return 0;
}

static int publisher_nub_reset(DextService *svc, uint64_t nub)
{
    g_mutex_lock(&pub.lock);
    pub.resets++;
    DEXT_INFO("nubtest: NUB_RESET of nub %" G_GUINT64_FORMAT " (reset #%u): re-publishing", nub,
              pub.resets);
    /* as a USB port reset does: the device (and its interfaces) come back
     * as new nubs */
    terminate_a_locked();
    int rc = publish_a_locked();
    g_mutex_unlock(&pub.lock);
    return rc;
}

/* Forged NUB_PUBLISH for another service id (the API only takes our own). */
static int forged_publish(uint64_t svc_id)
{
    return dext__rpc(DEXT_MSG_NUB_PUBLISH,
                     g_variant_new("(ttss@a{sv})", (guint64)svc_id, (guint64)0, "x",
                                   "IOUSBHostDevice",
                                   g_variant_parse(G_VARIANT_TYPE("a{sv}"),
                                                   "{'idVendor': <uint16 1>, 'idProduct': <uint16 1>}",
                                                   NULL, NULL, NULL)),
                     false, NULL);
}

/* B: bad inputs; each answer is logged as "nubtest: bad <case> -> <rc>". */
static void bad_inputs(DextService *svc)
{
    uint64_t id = 0;
    const char *ok = "{'idVendor': <uint16 0xdec5>, 'idProduct': <uint16 0x7e58>}";
    int rc;
    rc = forged_publish(dext_service_provider_id(svc));
    DEXT_INFO("nubtest: bad wrong-service -> %d", rc);
    rc = forged_publish(0xffffffffull);
    DEXT_INFO("nubtest: bad unknown-service -> %d", rc);
    rc = dext_service_publish_nub(svc, 0, "x", "IOPCIDevice", ok, &id);
    DEXT_INFO("nubtest: bad unknown-class -> %d", rc);
    rc = dext_service_publish_nub(svc, 0, "x", "IOService", ok, &id);
    DEXT_INFO("nubtest: bad unknown-class-2 -> %d", rc);
    GString *many = g_string_new("{'idVendor': <uint16 0xdec5>, 'idProduct': <uint16 0x7e58>");
    for (int i = 0; i < 63; i++) {
        g_string_append_printf(many, ", 'k%d': <%d>", i, i);
    }
    g_string_append(many, "}");
    rc = dext_service_publish_nub(svc, 0, "x", "IOUSBHostDevice", many->str, &id);
    DEXT_INFO("nubtest: bad too-many-properties -> %d", rc);
    g_string_free(many, TRUE);
    char *longkey = g_strdup_printf("{'idVendor': <uint16 1>, 'idProduct': <uint16 1>, "
                                    "'%065d': <1>}", 0);
    rc = dext_service_publish_nub(svc, 0, "x", "IOUSBHostDevice", longkey, &id);
    DEXT_INFO("nubtest: bad long-key -> %d", rc);
    g_free(longkey);
    GString *big = g_string_new("{'idVendor': <uint16 1>, 'idProduct': <uint16 1>, 'blob': <b'");
    for (int i = 0; i < 4097; i++) {
        g_string_append_c(big, 'x');
    }
    g_string_append(big, "'>}");
    rc = dext_service_publish_nub(svc, 0, "x", "IOUSBHostDevice", big->str, &id);
    DEXT_INFO("nubtest: bad big-value -> %d", rc);
    g_string_free(big, TRUE);
    rc = dext_service_publish_nub(svc, 0, "x", "IOUSBHostDevice",
                                  "{'idVendor': <uint16 1>, 'idProduct': <uint16 1>, "
                                  "'nested': <{'a': <1>}>}", &id);
    DEXT_INFO("nubtest: bad nested-value -> %d", rc);
    rc = dext_service_publish_nub(svc, 0, "x", "IOUSBHostDevice",
                                  "{'idVendor': <uint16 1>, 'IOClass': <'IOPCIDevice'>, "
                                  "'idProduct': <uint16 1>}", &id);
    DEXT_INFO("nubtest: bad reserved-key -> %d", rc);
    rc = dext_service_publish_nub(svc, 0, "x", "IOUSBHostDevice", "{'idVendor': <uint16 1>}", &id);
    DEXT_INFO("nubtest: bad no-idProduct -> %d", rc);
    rc = dext_service_publish_nub(svc, 0, "a b", "IOUSBHostDevice", ok, &id);
    DEXT_INFO("nubtest: bad name -> %d", rc);
    rc = dext_service_publish_nub(svc, 0, "x", "IOUSBHostDevice", "{'idVendor': <uint16 1>", &id);
    DEXT_INFO("nubtest: bad text -> %d", rc);
    g_mutex_lock(&pub.lock);
    uint64_t a_nub = pub.dev_nub;
    g_mutex_unlock(&pub.lock);
    rc = dext_service_publish_nub(svc, a_nub, "x", "IOUSBHostInterface", ok, &id);
    DEXT_INFO("nubtest: bad parent-of-another-service -> %d", rc);
    rc = dext_service_publish_nub(svc, dext_service_provider_id(svc), "x", "IOUSBHostInterface",
                                  ok, &id);
    DEXT_INFO("nubtest: bad parent-not-a-nub -> %d", rc);
    rc = dext_service_terminate_nub(svc, dext_service_provider_id(svc));
    DEXT_INFO("nubtest: bad terminate-not-a-nub -> %d", rc);
    rc = dext_service_terminate_nub(svc, 0xfffffffffull);
    DEXT_INFO("nubtest: bad terminate-unknown -> %d", rc);
    /* 256 live nubs per service, then -ENOSPC; all terminated again */
    GArray *ids = g_array_new(FALSE, FALSE, sizeof(uint64_t));
    int last = 0;
    for (int i = 0; i < 257; i++) {
        char name[16];
        snprintf(name, sizeof(name), "n%d", i);
        last = dext_service_publish_nub(svc, 0, name, "IOUSBHostDevice", ok, &id);
        if (last < 0) {
            break;
        }
        g_array_append_val(ids, id);
    }
    DEXT_INFO("nubtest: bad too-many-nubs -> %d after %u", last, ids->len);
    for (guint i = 0; i < ids->len; i++) {
        dext_service_terminate_nub(svc, g_array_index(ids, uint64_t, i));
    }
    g_array_free(ids, TRUE);
    DEXT_INFO("nubtest: bad inputs done");
}

static void bad_inputs_block(void *ctx)
{
    bad_inputs(ctx);
}

static int publisher_start(DextService *svc)
{
    g_mutex_lock(&pub.lock);
    bool first = !pub.a;
    if (first) {
        pub.a = svc;
        pub.chans = g_ptr_array_new();
        int rc = publish_a_locked();
        g_mutex_unlock(&pub.lock);
        return rc;
    }
    g_mutex_unlock(&pub.lock);
    /* After Start returns: the process's control thread, which serves
     * NUB_CLIENT for A's nubs, is busy for as long as a Start runs. */
    return dext_queue_dispatch_async(dext_service_queue(svc), bad_inputs_block, svc);
}

static void publisher_stop(DextService *svc)
{
    g_mutex_lock(&pub.lock);
    if (pub.a != svc) {
        g_mutex_unlock(&pub.lock);
        return;
    }
    GPtrArray *chans = pub.chans;
    pub.chans = NULL;
    pub.a = NULL;
    pub.dev_nub = pub.if_nub = 0; /* dextd terminates them with this service */
    g_mutex_unlock(&pub.lock);
    for (guint i = 0; i < chans->len; i++) {
        Chan *c = chans->pdata[i];
        shutdown(c->fd, SHUT_RDWR);
        g_thread_join(c->thread);
        close(c->fd);
        g_free(c);
    }
    g_ptr_array_free(chans, TRUE);
}

/* User client: 0 state -> (device nub, interface nub, resets, NUB_CLIENTs,
 * USB_INFOs answered), 1 terminate the device nub, 2 publish again,
 * 3 publish if1 (its client hangs in Stop) -> nub, 4 terminate nub in[0]. */
static int uc_state(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    g_mutex_lock(&pub.lock);
    a->scalar_out[0] = pub.dev_nub;
    a->scalar_out[1] = pub.if_nub;
    a->scalar_out[2] = pub.resets;
    a->scalar_out[3] = pub.clients;
    a->scalar_out[4] = pub.infos;
    g_mutex_unlock(&pub.lock);
    return 0;
}

static int uc_terminate(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    g_mutex_lock(&pub.lock);
    int rc = pub.a ? terminate_a_locked() : -ENODEV;
    g_mutex_unlock(&pub.lock);
    return rc;
}

static int uc_republish(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    g_mutex_lock(&pub.lock);
    int rc = !pub.a ? -ENODEV : pub.dev_nub ? -EEXIST : publish_a_locked();
    a->scalar_out[0] = pub.dev_nub;
    a->scalar_out[1] = pub.if_nub;
    g_mutex_unlock(&pub.lock);
    return rc;
}

static int uc_publish_if1(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    uint64_t id = 0;
    g_mutex_lock(&pub.lock);
    int rc = !pub.a || !pub.dev_nub ? -ENODEV
           : dext_service_publish_nub(pub.a, pub.dev_nub, "if1", "IOUSBHostInterface",
                 "{'idVendor': <uint16 0xdec5>, 'idProduct': <uint16 0x7e57>,"
                 " 'bConfigurationValue': <byte 1>, 'bInterfaceNumber': <byte 1>,"
                 " 'bInterfaceClass': <byte 0xff>, 'bInterfaceSubClass': <byte 1>,"
                 " 'bInterfaceProtocol': <byte 3>, 'nubtest-hang-stop': <true>}", &id);
    g_mutex_unlock(&pub.lock);
    a->scalar_out[0] = id;
    return rc;
}

static int uc_terminate_id(DextUserClient *uc, void *ctx, DextMethodArgs *a)
{
    g_mutex_lock(&pub.lock);
    int rc = pub.a ? dext_service_terminate_nub(pub.a, a->scalar_in[0]) : -ENODEV;
    g_mutex_unlock(&pub.lock);
    return rc;
}

static const DextMethod uc_methods[] = {
    { uc_state, 0, 0, 5, 0, false },
    { uc_terminate, 0, 0, 0, 0, false },
    { uc_republish, 0, 0, 2, 0, false },
    { uc_publish_if1, 0, 0, 1, 0, false },
    { uc_terminate_id, 1, 0, 0, 0, false },
};

static int publisher_new_uc(DextService *svc, DextUserClient *uc)
{
    dext_user_client_set_dispatch(uc, uc_methods, G_N_ELEMENTS(uc_methods), NULL, NULL);
    return 0;
}

/* ---- clients ------------------------------------------------------------ */

typedef struct {
    int fd;
} Client;

static int client_check(DextService *svc, int fd)
{
    DextMsg req, rep;
    uint32_t serial = 0;
    char *why = NULL;
    dext_msg_init(&req, DEXT_MSG_USB_INFO, NULL);
    int rc = dext_ipc_call(fd, DEXT_CH_PROV | DEXT_CH_PROVEV, &serial, &req, &rep, 5000, &why);
    dext_msg_clear(&req);
    if (rc < 0) {
        DEXT_ERROR("nubclient: USB_INFO failed: %s", why ? why : g_strerror(-rc));
        g_free(why);
        return rc;
    }
    guint32 speed;
    guchar cfg;
    GVariant *dv, *cv;
    g_variant_get(rep.body, "(uy@ay@ay)", &speed, &cfg, &dv, &cv);
    gsize dn, cn;
    const uint8_t *d = g_variant_get_fixed_array(dv, &dn, 1);
    const uint8_t *c = g_variant_get_fixed_array(cv, &cn, 1);
    uint64_t vid = 0, pid = 0, ifn = 99;
    dext_service_provider_u64(svc, "idVendor", &vid);
    dext_service_provider_u64(svc, "idProduct", &pid);
    dext_service_provider_u64(svc, "bInterfaceNumber", &ifn);
    /* the provider's interface is in the configuration, of vendor class */
    bool iface = false;
    for (gsize off = 0; off + 2 <= cn && c[off] >= 2; off += c[off]) {
        iface |= c[off + 1] == 4 && off + 9 <= cn && c[off + 2] == ifn && c[off + 5] == 0xff;
    }
    bool good = speed == NT_SPEED && cfg == 1 && dn == 18 && d[1] == 1 &&
                (uint64_t)(d[8] | d[9] << 8) == vid && (uint64_t)(d[10] | d[11] << 8) == pid &&
                cn >= 9 && c[1] == 2 && iface;
    DEXT_INFO("nubclient: USB_INFO %s (speed %u, configuration %u, %04x:%04x, %zu bytes of "
              "configuration)", good ? "ok" : "WRONG", speed, cfg, dn == 18 ? d[8] | d[9] << 8 : 0,
              dn == 18 ? d[10] | d[11] << 8 : 0, (size_t)cn);
    g_variant_unref(dv);
    g_variant_unref(cv);
    dext_msg_clear(&rep);
    return good ? 0 : -EPROTO;
}

static int client_start(DextService *svc)
{
    int fd, rc = dext__provider_open(svc, &fd);
    if (rc < 0) {
        DEXT_ERROR("nubclient: PROVIDER_OPEN failed: %s", g_strerror(-rc));
        return rc;
    }
    if ((rc = client_check(svc, fd)) < 0) {
        close(fd);
        return rc;
    }
    Client *cl = g_new0(Client, 1);
    cl->fd = fd;
    dext_service_set_priv(svc, cl);
    DEXT_INFO("nubclient: started on nub %" G_GUINT64_FORMAT, dext_service_provider_id(svc));
    return 0;
}

static void client_stop(DextService *svc)
{
    Client *cl = dext_service_get_priv(svc);
    DEXT_INFO("nubclient: Stop on nub %" G_GUINT64_FORMAT, dext_service_provider_id(svc));
    char *hang = dext_service_provider_property(svc, "nubtest-hang-stop");
    if (hang) {
        DEXT_INFO("nubclient: hanging in Stop on purpose");
        g_free(hang);
        g_usleep(120 * G_USEC_PER_SEC); /* dextd kills the process after 5 s */
    }
    close(cl->fd);
    g_free(cl);
}

/* Matched to a PCI device: asks for provider channels it may not have. */
static int intruder_start(DextService *svc)
{
    int fd = -1;
    int rc = dext__provider_open(svc, &fd);
    DEXT_INFO("nubintruder: PROVIDER_OPEN own PCI service -> %d", rc);
    if (rc == 0) {
        close(fd);
    }
    DextMsg r;
    rc = dext__rpc(DEXT_MSG_PROVIDER_OPEN,
                   g_variant_new("(t)", (guint64)dext_service_provider_id(svc)), false, &r);
    DEXT_INFO("nubintruder: PROVIDER_OPEN foreign id -> %d", rc);
    if (rc == 0) {
        dext_msg_clear(&r);
    }
    return 0;
}

static void nop_stop(DextService *svc)
{
}

static const DextClassOps publisher = {
    .name = "NubTestPublisher", .start = publisher_start, .stop = publisher_stop,
    .new_user_client = publisher_new_uc, .nub_client = publisher_nub_client,
    .nub_reset = publisher_nub_reset,
};
static const DextClassOps client = {
    .name = "NubTestClient", .start = client_start, .stop = client_stop,
};
static const DextClassOps intruder = {
    .name = "NubTestIntruder", .start = intruder_start, .stop = nop_stop,
};

int main(int argc, char **argv)
{
    static const DextClassOps *const classes[] = { &publisher, &client, &intruder, NULL };
    return dext_server_main(argc, argv, classes);
}
