/*
 * boot-test: dextlab's guest image booted in the fork (q35, intel-iommu with
 * interrupt remapping, dextlab-dma behind a pcie-root-port, qemu-xhci), with
 * the guest's own checks and self-test asserted here.
 *
 * One boot serves every /boot/dextlab-dma/... path (booting costs ~15 s under
 * TCG); it happens on first use.  Two short runs guard the harness itself: a
 * boot that panics and a boot that "hangs" (a timeout shorter than the boot)
 * must both be reported as failures, quickly.
 *
 * Expected values for lspci come from the register-map header at build time,
 * never from copies: a change to the device's identity, BARs or capabilities
 * in hw/include/hw/dextlab/dextlab-dma-regs.h flows into this test.
 *
 *   boot-test [glib test options]   the tests (suite 'boot')
 *   boot-test --bench               the benchmarks: bare boot vs boot to
 *                                   drivers-ready, and the guest self-test's
 *                                   DMA throughput and MSI-X latency against
 *                                   memcpy and eventfd ping-pong, same run
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#include <glib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hw/dextlab/dextlab-dma-regs.h"
#include "hw/dextlab/dextlab-usb-regs.h"
#include "boot-lib.h"

static DxlBoot *main_boot;

/*
 * A failed g_assert aborts: say which console log belongs to the failure
 * (prepared beforehand, as only write() is safe in the handler).
 */
static char abort_note[1024];

static void on_abort(int sig)
{
    if (abort_note[0]) {
        ssize_t n = write(STDERR_FILENO, abort_note, strlen(abort_note));
        (void)n;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

static void note_log(const DxlBoot *b)
{
    snprintf(abort_note, sizeof(abort_note),
             "boot-test: console log of the boot under test: %s\n",
             b->log_path);
}

/* The shared test-mode boot, run once; every check starts from it. */
static const DxlBoot *boot(void)
{
    if (main_boot) {
        note_log(main_boot);
    } else {
        DxlBootOpts o = {
            .mode = DXL_BOOT_TEST, .name = "test", .accel = dxl_boot_accel(),
            /* 240 s unless DEXTLAB_BOOT_TIMEOUT says otherwise: with the
             * USB runtime checks this boot took 130 s at load 17 */
            .timeout_s = g_getenv("DEXTLAB_BOOT_TIMEOUT") ?
                         dxl_boot_timeout() : 240,
            .devices = TRUE,
        };

        g_autofree char *why = NULL;

        main_boot = dxl_boot_run(&o);
        note_log(main_boot);
        why = dxl_boot_describe(main_boot);
        g_test_message("boot (%s): %s", o.accel, why);
    }
    return main_boot;
}

/* Fail with the console log's path, and how the run ended. */
#define boot_assert(b, cond, ...) do {                                      \
        if (!(cond)) {                                                      \
            g_autofree char *why_ = dxl_boot_describe(b);                   \
            g_autofree char *msg_ = g_strdup_printf(__VA_ARGS__);           \
            g_test_message("%s -- boot %s", msg_, why_);                    \
            g_assert_true(cond);                                            \
        }                                                                   \
    } while (0)

static void assert_result(const DxlBoot *b, const char *name)
{
    const DxlResult *r = dxl_boot_result(b, name);

    boot_assert(b, r != NULL, "guest printed no result '%s'", name);
    if (!r->pass) {
        GHashTableIter it;
        gpointer k, v;
        g_autoptr(GString) s = g_string_new(NULL);

        g_hash_table_iter_init(&it, r->kv);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            g_string_append_printf(s, " %s=%s", (char *)k, (char *)v);
        }
        boot_assert(b, r->pass, "guest check '%s' failed:%s", name, s->str);
    }
}

/* --- the boot itself ------------------------------------------------------- */

static void test_boot_completes(void)
{
    const DxlBoot *b = boot();

    boot_assert(b, !b->timed_out, "boot hung");
    boot_assert(b, !b->panic, "kernel panic");
    boot_assert(b, b->exited && b->exit_status == 0, "QEMU failed");
    boot_assert(b, b->done, "no DEXTLAB-DONE line");
    boot_assert(b, b->t_ready >= 0, "no DEXTLAB-READY line");
    boot_assert(b, b->unparsed->len == 0, "%u malformed DEXTLAB- lines, "
                "first: %s", b->unparsed->len, b->unparsed->len ?
                (char *)g_ptr_array_index(b->unparsed, 0) : "");
    /* Every result line the guest counted reached us intact */
    boot_assert(b, b->done_results == (int)b->results->len,
                "guest reported %d results, %u parsed", b->done_results,
                b->results->len);
    boot_assert(b, b->done_failed == 0, "guest counted %d failed checks",
                b->done_failed);
}

static void test_modules(void)
{
    const DxlBoot *b = boot();
    const char *loaded;
    static const char *const want[] = {
        "vfio", "vfio_iommu_type1", "vfio-pci", "usbcore", "xhci-hcd",
        "xhci-pci",
    };
    g_auto(GStrv) l = NULL;
    unsigned i;

    assert_result(b, "modules");
    loaded = dxl_result_get(dxl_boot_result(b, "modules"), "loaded");
    boot_assert(b, loaded != NULL, "no loaded= list");
    l = g_strsplit(loaded, ",", -1);
    for (i = 0; i < G_N_ELEMENTS(want); i++) {
        boot_assert(b, g_strv_contains((const char * const *)l, want[i]),
                    "module %s not loaded (%s)", want[i], loaded);
    }
}

static void test_iommu(void)
{
    const DxlBoot *b = boot();
    guint i;
    gboolean enabled = FALSE;

    assert_result(b, "iommu");
    for (i = 0; i < b->dmesg->len; i++) {
        enabled |= !!strstr(g_ptr_array_index(b->dmesg, i),
                            "DMAR: IOMMU enabled");
    }
    boot_assert(b, enabled, "guest kernel did not log 'DMAR: IOMMU enabled'");
}

static void test_vfio_bind(void)
{
    const DxlBoot *b = boot();
    const DxlResult *r;

    assert_result(b, "vfio-bind");
    r = dxl_boot_result(b, "vfio-bind");
    g_assert_cmpstr(dxl_result_get(r, "driver"), ==, "vfio-pci");
    /* Behind its own root port the function is alone in its group */
    g_assert_cmpstr(dxl_result_get(r, "group_devices"), ==, "1");
}

/* --- lspci against the register map ---------------------------------------- */

/* The first lspci line (leading tabs dropped) starting with @prefix. */
static const char *lspci_line(const DxlBoot *b, const char *prefix)
{
    guint i;

    for (i = 0; i < b->lspci->len; i++) {
        const char *l = g_ptr_array_index(b->lspci, i);

        while (*l == '\t' || *l == ' ') {
            l++;
        }
        if (g_str_has_prefix(l, prefix)) {
            return l;
        }
    }
    return NULL;
}

/* The line following the first line starting with @prefix (continuations). */
static const char *lspci_after(const DxlBoot *b, const char *prefix)
{
    const char *l = lspci_line(b, prefix);
    guint i;

    for (i = 0; l && i + 1 < b->lspci->len; i++) {
        if (strstr(g_ptr_array_index(b->lspci, i), l)) {
            return g_ptr_array_index(b->lspci, i + 1);
        }
    }
    return NULL;
}

static guint64 lspci_size(const char *s)
{
    char unit = 0;
    guint64 n = 0;

    if (!s || sscanf(s, "[size=%" G_GUINT64_FORMAT "%c", &n, &unit) < 1) {
        return 0;
    }
    switch (unit) {
    case 'K': return n << 10;
    case 'M': return n << 20;
    case 'G': return n << 30;
    default: return n;
    }
}

static void check_region(const DxlBoot *b, unsigned bar, guint64 want_size,
                         gboolean prefetch)
{
    g_autofree char *prefix = g_strdup_printf("Region %u: Memory at ", bar);
    const char *l = lspci_line(b, prefix);
    guint64 size;

    boot_assert(b, l != NULL, "lspci shows no memory BAR%u", bar);
    size = lspci_size(strstr(l, "[size="));
    g_assert_nonnull(strstr(l, "(32-bit, "));
    g_assert_nonnull(strstr(l, prefetch ? ", prefetchable)" :
                            ", non-prefetchable)"));
    if (want_size) {
        g_assert_cmphex(size, ==, want_size);
    } else {
        /* the MSI-X BAR: table at 0, PBA at its offset, power of two */
        g_assert_cmphex(size, >=, DXL_DMA_MSIX_PBA_OFFSET +
                        ((DXL_DMA_MSIX_VECTORS + 63) / 64) * 8);
        g_assert_cmphex(size & (size - 1), ==, 0);
    }
}

static void test_lspci_dma(void)
{
    const DxlBoot *b = boot();
    g_autofree char *hdr = NULL, *sub = NULL, *pm = NULL, *msi = NULL;
    g_autofree char *msix = NULL, *exp = NULL, *tbl = NULL, *pba = NULL;
    const char *l;
    unsigned i;

    assert_result(b, "lspci");
    boot_assert(b, b->lspci->len > 0, "no lspci dump of the function");
    for (i = 0; i < b->lspci->len; i++) {
        const char *s = g_ptr_array_index(b->lspci, i);

        /* lspci's marks for what it could not read or decode */
        g_assert_null(strstr(s, "<?>"));
        g_assert_null(strstr(s, "<access denied>"));
        g_assert_null(strstr(s, "Unknown"));
    }

    /* "01:00.0 System peripheral [0880]: Device [dec5:0001] (rev 01)" */
    hdr = g_strdup_printf("[%04x]: ", DXL_DMA_PCI_CLASS >> 8);
    l = g_ptr_array_index(b->lspci, 0);
    g_assert_nonnull(strstr(l, hdr));
    g_free(hdr);
    hdr = g_strdup_printf("[%04x:%04x] (rev %02x)", DXL_PCI_VENDOR_ID,
                          DXL_DMA_PCI_DEVICE_ID, DXL_DMA_PCI_REVISION);
    g_assert_nonnull(strstr(l, hdr));
    if (DXL_DMA_PCI_CLASS & 0xff) {
        g_autofree char *pi = g_strdup_printf("(prog-if %02x",
                                              DXL_DMA_PCI_CLASS & 0xff);
        g_assert_nonnull(strstr(l, pi));
    } else {
        g_assert_null(strstr(l, "prog-if"));
    }
    sub = g_strdup_printf("[%04x:%04x]", DXL_DMA_PCI_SUBVENDOR_ID,
                          DXL_DMA_PCI_SUBSYSTEM_ID);
    l = lspci_line(b, "Subsystem: ");
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, sub));

    /* BARs: sizes and types from the header */
    check_region(b, DXL_DMA_BAR_REGS, DXL_DMA_BAR0_SIZE, FALSE);
    check_region(b, DXL_DMA_BAR_MSIX, 0, FALSE);
    check_region(b, DXL_DMA_BAR_DEVMEM, DXL_DMA_DEVMEM_SIZE, TRUE);
    g_assert_null(lspci_line(b, "Region 3:"));
    g_assert_null(lspci_line(b, "Region 4:"));
    g_assert_null(lspci_line(b, "Region 5:"));
    g_assert_null(lspci_line(b, "I/O ports at"));

    /* Capabilities at the header's offsets */
    pm = g_strdup_printf("Capabilities: [%02x] Power Management version 3",
                         DXL_DMA_CAP_PM_OFFSET);
    g_assert_nonnull(lspci_line(b, pm));
    l = lspci_line(b, "Status: D");
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, "NoSoftRst+"));  /* D3hot->D0 keeps state */

    /* The header: "MSI: a single vector (0) for every cause" */
    msi = g_strdup_printf("Capabilities: [%02x] MSI: ", DXL_DMA_CAP_MSI_OFFSET);
    l = lspci_line(b, msi);
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, "Count=1/1 "));
    g_assert_nonnull(strstr(l, "Maskable+ 64bit+"));

    msix = g_strdup_printf("Capabilities: [%02x] MSI-X: ",
                           DXL_DMA_CAP_MSIX_OFFSET);
    l = lspci_line(b, msix);
    g_assert_nonnull(l);
    g_free(msix);
    msix = g_strdup_printf("Count=%u ", DXL_DMA_MSIX_VECTORS);
    g_assert_nonnull(strstr(l, msix));
    tbl = g_strdup_printf("Vector table: BAR=%u offset=%08x", DXL_DMA_BAR_MSIX,
                          DXL_DMA_MSIX_TABLE_OFFSET);
    g_assert_nonnull(lspci_line(b, tbl));
    pba = g_strdup_printf("PBA: BAR=%u offset=%08x", DXL_DMA_BAR_MSIX,
                          DXL_DMA_MSIX_PBA_OFFSET);
    g_assert_nonnull(lspci_line(b, pba));

    /* PCI Express endpoint (on q35's root port) with function-level reset */
    exp = g_strdup_printf("Capabilities: [%02x] Express (v2) Endpoint",
                          DXL_DMA_CAP_EXP_OFFSET);
    g_assert_nonnull(lspci_line(b, exp));
    l = lspci_after(b, "DevCap:");
    g_assert_nonnull(l);
    g_assert_nonnull(strstr(l, "FLReset+"));

    l = lspci_line(b, "Interrupt: pin A");
    g_assert_nonnull(l);
    l = lspci_line(b, "Kernel driver in use: ");
    g_assert_nonnull(l);
    g_assert_cmpstr(l, ==, "Kernel driver in use: vfio-pci");
    l = lspci_line(b, "IOMMU group: ");
    g_assert_nonnull(l);
    g_assert_cmpstr(l + strlen("IOMMU group: "), ==,
                    dxl_result_get(dxl_boot_result(b, "vfio-bind"), "group"));
}

/*
 * lsusb -v over the xHCI: Linux's two root hubs (USB 2.0 and 3.0 halves of
 * qemu-xhci) and the two dextlab-usb functions, each with its whole
 * descriptor tree decoded and nothing lsusb could not read.
 */
static void test_lsusb(void)
{
    const DxlBoot *b = boot();
    unsigned i, hubs2 = 0, hubs3 = 0, devices = 0, cfg = 0, intf = 0, ep = 0;

    assert_result(b, "lsusb");
    for (i = 0; i < b->lsusb->len; i++) {
        const char *l = g_ptr_array_index(b->lsusb, i);

        if (g_str_has_prefix(l, "Bus ")) {
            devices++;
            hubs2 += !!strstr(l, "ID 1d6b:0002");
            hubs3 += !!strstr(l, "ID 1d6b:0003");
        }
        cfg += !!strstr(l, "Configuration Descriptor:");
        intf += !!strstr(l, "Interface Descriptor:");
        ep += !!strstr(l, "Endpoint Descriptor:");
        g_assert_null(strstr(l, "Couldn't open"));
        g_assert_null(strstr(l, "UNAVAILABLE"));
        g_assert_null(strstr(l, "cannot"));
        g_assert_null(strstr(l, "invalid"));
    }
    g_assert_cmpuint(devices, ==,
                     g_ascii_strtoull(dxl_result_get(dxl_boot_result(b,
                                      "lsusb"), "devices"), NULL, 10));
    g_assert_cmpuint(hubs2, ==, 1);
    g_assert_cmpuint(hubs3, ==, 1);
    g_assert_cmpuint(devices, ==, 4);
    /* every device shows a configuration, interface and endpoint */
    g_assert_cmpuint(cfg, >=, devices);
    g_assert_cmpuint(intf, >=, devices);
    g_assert_cmpuint(ep, >=, devices);
}

/* --- dextlab-usb as lsusb decodes it, against its register map ------------- */

typedef struct UsbEp {
    unsigned addr, type, mps, interval, burst;
} UsbEp;

typedef struct UsbAlt {
    unsigned alt, cls, sub, proto, nep;
    char name[64];
    UsbEp ep[4];
} UsbAlt;

typedef struct UsbView {
    char bcd_usb[8], bcd_dev[8], mfr[64], prod[64], cfg_name[64];
    unsigned mps0, vid, pid, nconf, cfg_attr, max_ma, nalt;
    UsbAlt alt[4];
    unsigned bos_caps, ss_speeds, ss_func, u1, u2;
    gboolean ss_cap;
} UsbView;

/* "  key   value..." -> value, or NULL if the line is not @key's */
static const char *field(const char *l, const char *key)
{
    size_t n = strlen(key);

    while (*l == ' ') {
        l++;
    }
    if (strncmp(l, key, n) || (l[n] != ' ' && l[n] != '\0')) {
        return NULL;
    }
    l += n;
    while (*l == ' ') {
        l++;
    }
    return l;
}

/* "N text" (a string descriptor index and its text) -> text */
static void str_field(const char *v, char *out, size_t len)
{
    while (g_ascii_isdigit(*v)) {
        v++;
    }
    while (*v == ' ') {
        v++;
    }
    g_strlcpy(out, v, len);
    g_strchomp(out);
}

/* Decode the lsusb -v block of bus @bus device @dev. */
static gboolean usb_view(const DxlBoot *b, unsigned bus, unsigned dev,
                         UsbView *u)
{
    g_autofree char *head = g_strdup_printf("Bus %03u Device %03u: ", bus,
                                            dev);
    UsbAlt *a = NULL;
    UsbEp *e = NULL;
    gboolean in = FALSE, found = FALSE;
    guint i;

    memset(u, 0, sizeof(*u));
    for (i = 0; i < b->lsusb->len; i++) {
        const char *l = g_ptr_array_index(b->lsusb, i), *v;

        if (g_str_has_prefix(l, "Bus ")) {
            in = g_str_has_prefix(l, head);
            found |= in;
            continue;
        }
        if (!in) {
            continue;
        }
        if ((v = field(l, "bcdUSB"))) {
            g_strlcpy(u->bcd_usb, v, sizeof(u->bcd_usb));
        } else if ((v = field(l, "bcdDevice"))) {
            g_strlcpy(u->bcd_dev, v, sizeof(u->bcd_dev));
        } else if ((v = field(l, "bMaxPacketSize0"))) {
            u->mps0 = strtoul(v, NULL, 0);
        } else if ((v = field(l, "idVendor"))) {
            u->vid = strtoul(v, NULL, 16);
        } else if ((v = field(l, "idProduct"))) {
            u->pid = strtoul(v, NULL, 16);
        } else if ((v = field(l, "iManufacturer"))) {
            str_field(v, u->mfr, sizeof(u->mfr));
        } else if ((v = field(l, "iProduct"))) {
            str_field(v, u->prod, sizeof(u->prod));
        } else if ((v = field(l, "bNumConfigurations"))) {
            u->nconf = strtoul(v, NULL, 0);
        } else if ((v = field(l, "iConfiguration"))) {
            str_field(v, u->cfg_name, sizeof(u->cfg_name));
        } else if ((v = field(l, "MaxPower"))) {
            u->max_ma = strtoul(v, NULL, 10);
        } else if ((v = field(l, "Interface Descriptor:"))) {
            a = u->nalt < G_N_ELEMENTS(u->alt) ? &u->alt[u->nalt++] : NULL;
            e = NULL;
        } else if ((v = field(l, "Endpoint Descriptor:"))) {
            e = a && a->nep < G_N_ELEMENTS(a->ep) ? &a->ep[a->nep++] : NULL;
        } else if ((v = field(l, "Binary Object Store Descriptor:"))) {
            a = NULL;
            e = NULL;
        } else if (e && (v = field(l, "bEndpointAddress"))) {
            e->addr = strtoul(v, NULL, 16);
        } else if (e && (v = field(l, "bmAttributes"))) {
            e->type = strtoul(v, NULL, 0) & 3;
        } else if (e && (v = field(l, "wMaxPacketSize"))) {
            e->mps = strtoul(v, NULL, 16);
        } else if (e && (v = field(l, "bInterval"))) {
            e->interval = strtoul(v, NULL, 0);
        } else if (e && (v = field(l, "bMaxBurst"))) {
            e->burst = strtoul(v, NULL, 0);
        } else if (a && !e && (v = field(l, "bAlternateSetting"))) {
            a->alt = strtoul(v, NULL, 0);
        } else if (a && !e && (v = field(l, "bInterfaceClass"))) {
            a->cls = strtoul(v, NULL, 0);
        } else if (a && !e && (v = field(l, "bInterfaceSubClass"))) {
            a->sub = strtoul(v, NULL, 0);
        } else if (a && !e && (v = field(l, "bInterfaceProtocol"))) {
            a->proto = strtoul(v, NULL, 0);
        } else if (a && !e && (v = field(l, "iInterface"))) {
            str_field(v, a->name, sizeof(a->name));
        } else if (!a && (v = field(l, "bmAttributes")) && !u->cfg_attr) {
            u->cfg_attr = strtoul(v, NULL, 0);
        } else if ((v = field(l, "bNumDeviceCaps"))) {
            u->bos_caps = strtoul(v, NULL, 0);
        } else if ((v = field(l, "SuperSpeed USB Device Capability:"))) {
            u->ss_cap = TRUE;
        } else if ((v = field(l, "wSpeedsSupported"))) {
            u->ss_speeds = strtoul(v, NULL, 16);
        } else if ((v = field(l, "bFunctionalitySupport"))) {
            u->ss_func = strtoul(v, NULL, 0);
        } else if ((v = field(l, "bU1DevExitLat"))) {
            u->u1 = strtoul(v, NULL, 0);
        } else if ((v = field(l, "bU2DevExitLat"))) {
            u->u2 = strtoul(v, NULL, 0);
        }
    }
    return found;
}

static char *bcd_str(unsigned bcd)
{
    return g_strdup_printf("%x.%02x", bcd >> 8, bcd & 0xff);
}

/* The usbdev-* result of the dextlab-usb function at @speed Mb/s. */
static const DxlResult *usb_dev_at(const DxlBoot *b, const char *speed)
{
    g_autofree char *vid = g_strdup_printf("%04x", DEXTLAB_USB_VID);
    g_autofree char *pid = g_strdup_printf("%04x", DEXTLAB_USB_PID);
    guint i;

    for (i = 0; i < b->results->len; i++) {
        const DxlResult *r = g_ptr_array_index(b->results, i);

        if (g_str_has_prefix(r->name, "usbdev-") &&
            !g_strcmp0(dxl_result_get(r, "vid"), vid) &&
            !g_strcmp0(dxl_result_get(r, "pid"), pid) &&
            !g_strcmp0(dxl_result_get(r, "speed"), speed)) {
            return r;
        }
    }
    return NULL;
}

/*
 * dextlab-usb at @speed ("480" = superspeed=off on a USB 2 port, "5000" =
 * the SuperSpeed one): lsusb -v must show exactly the register map's
 * descriptors for that speed.
 */
static void test_usb_descriptors(gconstpointer data)
{
    const char *speed = data;
    gboolean ss = !strcmp(speed, "5000");
    const DxlBoot *b = boot();
    const DxlResult *r = usb_dev_at(b, speed);
    g_autofree char *bcd_usb = NULL, *bcd_dev = NULL;
    UsbView u;
    unsigned i, j;

    boot_assert(b, r != NULL, "no dextlab-usb function enumerated at %s Mb/s",
                speed);
    boot_assert(b, usb_view(b, atoi(dxl_result_get(r, "busnum")),
                            atoi(dxl_result_get(r, "devnum")), &u),
                "lsusb shows no block for %s", r->name);
    bcd_usb = bcd_str(ss ? DEXTLAB_USB_BCD_USB_SS : DEXTLAB_USB_BCD_USB_HS);
    bcd_dev = bcd_str(DEXTLAB_USB_BCD_DEVICE);
    g_assert_cmphex(u.vid, ==, DEXTLAB_USB_VID);
    g_assert_cmphex(u.pid, ==, DEXTLAB_USB_PID);
    g_assert_cmpstr(u.bcd_usb, ==, bcd_usb);
    g_assert_cmpstr(u.bcd_dev, ==, bcd_dev);
    g_assert_cmpstr(dxl_result_get(r, "bcd_usb"), ==, bcd_usb);
    g_assert_cmpuint(u.mps0, ==, ss ? DEXTLAB_USB_EP0_MPS_SS_EXP :
                     DEXTLAB_USB_EP0_MPS_HS);
    g_assert_cmpstr(u.mfr, ==, DEXTLAB_USB_MANUFACTURER);
    g_assert_cmpstr(u.prod, ==, DEXTLAB_USB_PRODUCT);
    g_assert_cmpuint(u.nconf, ==, 1);
    g_assert_cmpstr(u.cfg_name, ==, DEXTLAB_USB_CONFIG_NAME);
    g_assert_cmphex(u.cfg_attr, ==, DEXTLAB_USB_CONFIG_ATTR);
    g_assert_cmpuint(u.max_ma, ==, DEXTLAB_USB_CONFIG_MAXPOWER * (ss ? 8 : 2));

    g_assert_cmpuint(u.nalt, ==, DEXTLAB_USB_NUM_ALTS);
    for (i = 0; i < u.nalt; i++) {
        const UsbAlt *a = &u.alt[i];

        g_assert_cmpuint(a->alt, ==, i);
        g_assert_cmphex(a->cls, ==, DEXTLAB_USB_IFACE_CLASS);
        g_assert_cmphex(a->sub, ==, DEXTLAB_USB_IFACE_SUBCLASS);
        g_assert_cmphex(a->proto, ==, DEXTLAB_USB_IFACE_PROTOCOL);
        g_assert_cmpstr(a->name, ==, i ? DEXTLAB_USB_IFACE_ALT1_NAME :
                        DEXTLAB_USB_IFACE_ALT0_NAME);
        g_assert_cmpuint(a->nep, ==, DEXTLAB_USB_NUM_EPS);
        for (j = 0; j < a->nep; j++) {
            const UsbEp *e = &a->ep[j];

            if (e->addr == DEXTLAB_USB_EP_INTR_IN) {
                g_assert_cmpuint(e->type, ==, 3);
                g_assert_cmpuint(e->mps, ==, DEXTLAB_USB_INTR_MPS(i));
                g_assert_cmpuint(e->interval, ==, ss ?
                                 DEXTLAB_USB_INTR_INTERVAL_SS :
                                 DEXTLAB_USB_INTR_INTERVAL_HS);
                continue;
            }
            g_assert_true(e->addr == DEXTLAB_USB_EP_BULK_OUT ||
                          e->addr == DEXTLAB_USB_EP_BULK_IN);
            g_assert_cmpuint(e->type, ==, 2);
            g_assert_cmpuint(e->mps, ==, ss ? DEXTLAB_USB_BULK_MPS_SS(i) :
                             DEXTLAB_USB_BULK_MPS_HS(i));
            if (ss) {
                g_assert_cmpuint(e->burst, ==, DEXTLAB_USB_BULK_BURST_SS(i));
            }
        }
    }
    if (ss) {
        g_assert_cmpuint(u.bos_caps, ==, DEXTLAB_USB_BOS_NUM_CAPS);
        g_assert_true(u.ss_cap);
        g_assert_cmphex(u.ss_speeds, ==, DEXTLAB_USB_SS_SPEEDS);
        g_assert_cmpuint(u.ss_func, ==, DEXTLAB_USB_SS_FUNC_SUPPORT);
        g_assert_cmpuint(u.u1, ==, DEXTLAB_USB_SS_U1_EXIT_LAT);
        g_assert_cmpuint(u.u2, ==, DEXTLAB_USB_SS_U2_EXIT_LAT);
    } else {
        /* bcdUSB 2.10 promises a BOS: at least the USB 2.0 extension */
        g_assert_cmpuint(u.bos_caps, >=, 1);
    }
}

/*
 * The guest kernel accepts dextlab-usb's descriptors as they are: no
 * complaint ("invalid maxpacket", "Invalid ep0 maxpacket", config errors)
 * about any of its functions.
 */
static void test_usb_kernel_accepts(void)
{
    const DxlBoot *b = boot();
    const char *speeds[] = { "480", "5000" };
    unsigned i, k;

    for (k = 0; k < G_N_ELEMENTS(speeds); k++) {
        const DxlResult *r = usb_dev_at(b, speeds[k]);
        g_autofree char *who = NULL;

        boot_assert(b, r != NULL, "no dextlab-usb function at %s Mb/s",
                    speeds[k]);
        who = g_strdup_printf("usb %s: ", r->name + strlen("usbdev-"));
        for (i = 0; i < b->dmesg->len; i++) {
            const char *l = g_ptr_array_index(b->dmesg, i);

            boot_assert(b, !(strstr(l, who) &&
                             (strstr(l, "invalid") || strstr(l, "Invalid") ||
                              strstr(l, "error") || strstr(l, "config "))),
                        "guest kernel: %s", l);
        }
    }
}

/* --- the in-guest self-test (images/selftest) -------------------------------- */

static void test_selftest(gconstpointer data)
{
    assert_result(boot(), data);
}

/* The guest kernel saw the IOMMU fault for the address the device tried. */
static void test_iommu_fault_logged(void)
{
    const DxlBoot *b = boot();
    const char *iova;
    g_autofree char *want = NULL;
    guint i;
    gboolean seen = FALSE;

    assert_result(b, "iommu-unmapped-write");
    iova = dxl_result_get(dxl_boot_result(b, "iommu-unmapped-write"), "iova");
    g_assert_nonnull(iova);
    want = g_strdup_printf("fault addr %s ", iova);
    for (i = 0; i < b->dmesg->len; i++) {
        const char *l = g_ptr_array_index(b->dmesg, i);

        seen |= strstr(l, "DMA Write") && strstr(l, want);
    }
    boot_assert(b, seen, "no DMAR write fault at %s in the guest's log", iova);
}

/* --- the harness's own failure detection ------------------------------------- */

/*
 * Regression guard for the harness: with no /init the kernel panics; the run
 * must end by itself (panic=-1, -no-reboot) well before the timeout and be
 * reported as a panic, not a pass.
 */
static void test_detects_panic(void)
{
    DxlBootOpts o = {
        .mode = DXL_BOOT_BARE, .name = "panic", .accel = dxl_boot_accel(),
        .extra_append = "rdinit=/no-such-init", .timeout_s = 60,
        .devices = FALSE,
    };
    g_autoptr(DxlBoot) b = dxl_boot_run(&o);
    g_autofree char *why = dxl_boot_describe(b);

    note_log(b);
    g_test_message("panic run: %s", why);
    g_assert_true(b->panic);
    g_assert_false(b->timed_out);
    g_assert_false(b->done);
    g_assert_cmpfloat(b->t_exit, <, o.timeout_s);
}

/* Regression guard for the harness: a run past its time limit is killed. */
static void test_detects_hang(void)
{
    DxlBootOpts o = {
        .mode = DXL_BOOT_TEST, .name = "hang", .accel = dxl_boot_accel(),
        .timeout_s = 2, .devices = TRUE,
    };
    g_autoptr(DxlBoot) b = dxl_boot_run(&o);
    g_autofree char *why = dxl_boot_describe(b);

    note_log(b);
    g_test_message("hang run: %s", why);
    g_assert_true(b->timed_out);
    g_assert_false(b->exited);
    g_assert_false(b->done);
    g_assert_cmpfloat(b->t_exit, <, o.timeout_s + 5);
}

/* --- benchmarks ------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
    qsort(v, n, sizeof(*v), cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static double bench_num(const DxlBoot *b, const char *name, const char *key)
{
    const char *v = dxl_result_get(dxl_boot_bench(b, name), key);

    return v ? g_ascii_strtod(v, NULL) : -1;
}

/* a figure carried by a result line (dxl-usbfs-test's throughput) */
static double result_num(const DxlBoot *b, const char *name, const char *key)
{
    const DxlResult *r = dxl_boot_result(b, name);
    const char *v = r ? dxl_result_get(r, key) : NULL;

    return v ? g_ascii_strtod(v, NULL) : -1;
}

/*
 * Alternate bare and full boots (DEXTLAB_BENCH_ROUNDS, default 3) of the
 * same machine and kernel, only /init differing, and report medians: single
 * TCG boots vary by a second with the host's load.
 */
static int bench(void)
{
    enum { MAX_ROUNDS = 9 };
    const char *accel = dxl_boot_accel();
    const char *env = g_getenv("DEXTLAB_BENCH_ROUNDS");
    unsigned rounds = env ? CLAMP(atoi(env), 1, MAX_ROUNDS) : 3, i, n = 0;
    double w0[MAX_ROUNDS], w1[MAX_ROUNDS], g0[MAX_ROUNDS], g1[MAX_ROUNDS];
    double dma[MAX_ROUNDS], cpy[MAX_ROUNDS], irq[MAX_ROUNDS], efd[MAX_ROUNDS];
    /* the same through the runtime (dextd --platform vfio + driver + app) */
    double rdma[MAX_ROUNDS], rcpy[MAX_ROUNDS], rirq[MAX_ROUNDS];
    double refd[MAX_ROUNDS], rrtt[MAX_ROUNDS], refr[MAX_ROUNDS];
    double pirq[MAX_ROUNDS], pefd[MAX_ROUNDS];   /* platform layer alone */
    double rup[MAX_ROUNDS];   /* guest uptime when dextd's driver answered */
    /* USB family API on usbfs: bulk loopback and memcpy, hs then ss */
    double ub[2][MAX_ROUNDS], uc[2][MAX_ROUNDS];
    unsigned nu = 0;
    int failed = 0;

    printf("boot (%s, q35 + intel-iommu + dextlab-dma + qemu-xhci with 2 "
           "dextlab-usb), %u rounds:\n", accel, rounds);
    for (i = 0; i < rounds; i++) {
        DxlBootOpts bare = {
            .mode = DXL_BOOT_BARE, .name = "bench-bare", .accel = accel,
            .timeout_s = dxl_boot_timeout(), .devices = TRUE,
        };
        DxlBootOpts full = bare;
        g_autoptr(DxlBoot) b0 = NULL;
        g_autoptr(DxlBoot) b1 = NULL;

        full.mode = DXL_BOOT_BENCH;
        full.name = "bench";
        b0 = dxl_boot_run(&bare);
        b1 = dxl_boot_run(&full);
        if (b0->t_ready < 0 || b1->t_ready < 0 || !b1->done ||
            b1->done_failed || bench_num(b1, "dma-throughput", "ratio") < 0 ||
            bench_num(b1, "msix-latency", "ratio") < 0 ||
            bench_num(b1, "runtime-dma-throughput", "ratio") < 0 ||
            bench_num(b1, "runtime-msix-latency", "ratio") < 0 ||
            bench_num(b1, "platform-msix-latency", "ratio") < 0) {
            g_autofree char *d0 = dxl_boot_describe(b0);
            g_autofree char *d1 = dxl_boot_describe(b1);

            fprintf(stderr, "boot-bench: round %u failed:\n  bare: %s\n"
                    "  full: %s (%d failed checks)\n", i + 1, d0, d1,
                    b1->done_failed);
            failed = 1;
            continue;
        }
        w0[n] = b0->t_ready;
        w1[n] = b1->t_ready;
        g0[n] = b0->guest_uptime_ready;
        g1[n] = b1->guest_uptime_ready;
        dma[n] = bench_num(b1, "dma-throughput", "dma_mib_s");
        cpy[n] = bench_num(b1, "dma-throughput", "memcpy_mib_s");
        irq[n] = bench_num(b1, "msix-latency", "msix_p50_us");
        efd[n] = bench_num(b1, "msix-latency", "eventfd_pingpong_p50_us");
        rdma[n] = bench_num(b1, "runtime-dma-throughput", "dma_mib_s");
        rcpy[n] = bench_num(b1, "runtime-dma-throughput", "memcpy_mib_s");
        rirq[n] = bench_num(b1, "runtime-msix-latency", "msix_p50_us");
        refd[n] = bench_num(b1, "runtime-msix-latency",
                            "eventfd_oneway_p50_us");
        rrtt[n] = bench_num(b1, "runtime-msix-latency", "request_rtt_mean_us");
        refr[n] = bench_num(b1, "runtime-msix-latency", "eventfd_rtt_p50_us");
        rup[n] = g_ascii_strtod(dxl_result_get(dxl_boot_result(b1,
                                "runtime-driver-ready"), "uptime") ?: "-1",
                                NULL);
        pirq[n] = bench_num(b1, "platform-msix-latency", "msix_p50_us");
        pefd[n] = bench_num(b1, "platform-msix-latency",
                            "eventfd_oneway_p50_us");
        printf("  round %u: bare %.2f s (guest %.2f s), drivers-ready %.2f s "
               "(guest %.2f s); DMA %.0f vs memcpy %.0f MiB/s; MSI-X p50 "
               "%.1f vs eventfd %.1f us\n", i + 1, w0[n], g0[n], w1[n],
               g1[n], dma[n], cpy[n], irq[n], efd[n]);
        printf("           runtime: DMA %.0f vs memcpy %.0f MiB/s; MSI-X -> "
               "app p50 %.1f vs eventfd one-way %.1f us; request round trip "
               "%.1f vs eventfd round trip %.1f us\n", rdma[n], rcpy[n],
               rirq[n], refd[n], rrtt[n], refr[n]);
        printf("           platform (VFIO backend): MSI-X -> eventfd p50 %.1f "
               "vs eventfd one-way %.1f us\n", pirq[n], pefd[n]);
        ub[0][nu] = result_num(b1, "usbfs-hs-bulk-throughput", "usb_mib_s");
        uc[0][nu] = result_num(b1, "usbfs-hs-bulk-throughput",
                               "memcpy_mib_s");
        ub[1][nu] = result_num(b1, "usbfs-ss-bulk-throughput", "usb_mib_s");
        uc[1][nu] = result_num(b1, "usbfs-ss-bulk-throughput",
                               "memcpy_mib_s");
        if (ub[0][nu] > 0 && uc[0][nu] > 0 && ub[1][nu] > 0 &&
            uc[1][nu] > 0) {
            printf("           USB family API on usbfs: bulk loopback %.1f "
                   "(high speed) / %.1f (SuperSpeed) vs memcpy %.0f / %.0f "
                   "MiB/s\n", ub[0][nu], ub[1][nu], uc[0][nu], uc[1][nu]);
            nu++;
        }
        n++;
    }
    if (!n) {
        return 1;
    }
    {
        double mw0 = median(w0, n), mw1 = median(w1, n);
        double mg0 = median(g0, n), mg1 = median(g1, n);
        double md = median(dma, n), mc = median(cpy, n);
        double mi = median(irq, n), me = median(efd, n);

        printf("medians of %u:\n", n);
        printf("  boot to drivers-ready %.2f s vs bare boot to /init %.2f s: "
               "%.2fx wall (guest uptime %.2f vs %.2f s: %.2fx), target <= "
               "1.5x\n", mw1, mw0, mw1 / mw0, mg1, mg0, mg1 / mg0);
        printf("  in-guest DMA copy %.0f MiB/s vs guest memcpy %.0f MiB/s: "
               "%.2fx\n", md, mc, md / mc);
        printf("  in-guest MSI-X round trip p50 %.1f us vs eventfd ping-pong "
               "p50 %.1f us (both on CPU 0): %.2fx\n", mi, me, mi / me);
        md = median(rdma, n);
        mc = median(rcpy, n);
        mi = median(rirq, n);
        me = median(refd, n);
        printf("  through the runtime (dextd --platform vfio, dextlab-dma "
               "driver, app): DMA copy %.0f MiB/s vs guest memcpy %.0f MiB/s: "
               "%.2fx\n", md, mc, md / mc);
        printf("  through the runtime: MSI-X -> driver -> app p50 %.1f us vs "
               "eventfd one-way p50 %.1f us: %.2fx; 4 KiB request round trip "
               "%.1f us vs eventfd round trip %.1f us: %.2fx\n", mi, me,
               mi / me, median(rrtt, n), median(refr, n),
               median(rrtt, n) / median(refr, n));
        /* In bench mode /init starts the runtime right after binding the
         * device to vfio-pci, so this is boot to drivers-ready through
         * dextd: kernel, modules, bind, dextd, match, driver Start. */
        printf("  boot to dextd's dextlab-dma driver started (guest uptime) "
               "%.2f s vs bare boot to /init %.2f s: %.2fx, target <= 1.5x\n",
               median(rup, n), mg0, median(rup, n) / mg0);
        mi = median(pirq, n);
        me = median(pefd, n);
        printf("  platform layer (dext_platform_irq_bind on VFIO): device "
               "MSI-X -> eventfd p50 %.1f us vs eventfd one-way p50 %.1f us: "
               "%.2fx\n", mi, me, mi / me);
        for (unsigned k = 0; k < 2 && nu; k++) {
            double mb = median(ub[k], nu), mc2 = median(uc[k], nu);

            /* 64 KiB transfers (the FIFO), 4 in flight each way */
            printf("  USB family API on usbfs (dxl-usbfs-test), %s bulk "
                   "loopback %.1f MiB/s vs guest memcpy %.0f MiB/s: %.3fx\n",
                   k ? "SuperSpeed" : "high-speed", mb, mc2, mb / mc2);
        }
    }
    return failed;
}

int main(int argc, char **argv)
{
    static const char *const selftests[] = {
        "vfio-open", "dma-map", "config-ids", "config-caps", "bars",
        "identity", "msix-enable", "queues", "dma-copy-4096",
        "dma-copy-1048576", "dma-fill", "dma-crc32c", "dma-devmem",
        "msix-vectors", "iommu-unmapped-write", "iommu-gpa-read",
        "iommu-recover", "flr",
    };
    /* dxl-runtime-test: the VFIO platform backend alone, then dextd
     * --platform vfio + dextlab-dma driver + apps; every DMA check verifies
     * each byte */
    static const char *const runtime[] = {
        "platform-create", "platform-enumerate", "platform-config",
        "platform-bar", "platform-dma-alloc", "platform-irq-msix",
        "platform-irq-msi", "platform-irq-intx", "platform-reset",
        "runtime-registry", "runtime-dextd", "runtime-driver-ready", "runtime-dma-copy",
        "runtime-dma-copy-1m", "runtime-dma-fill", "runtime-dma-crc32c",
        "runtime-dma-ring-copy", "runtime-dma-ring", "runtime-msix", "runtime-iommu-unmapped", "runtime-iommu-recover",
        "runtime-reset", "runtime-after-reset", "runtime-driver-isolation",
        "runtime-driver-relaunch", "runtime-after-relaunch", "runtime-tool-copy",
        "runtime-tool-fill", "runtime-tool-crc", "runtime-dextd-exit",
    };
    /* usbfs self-test, per speed (hs: superspeed=off, ss: superspeed=on) */
    static const char *const usbtests[] = {
        "usb-hs-claim", "usb-hs-regs", "usb-hs-echo", "usb-hs-bulk",
        "usb-hs-events", "usb-hs-altsetting", "usb-hs-bulk-alt1",
        "usb-ss-claim", "usb-ss-regs", "usb-ss-echo", "usb-ss-bulk",
        "usb-ss-events", "usb-ss-altsetting", "usb-ss-bulk-alt1",
        "usb-all-devices",
    };
    /* the USB family API on usbfs (images/selftest/dxl-usbfs-test.c):
     * usbfs-<hs|ss>-<check> for each, then the host-wide ones */
    static const char *const usbfs_checks[] = {
        "open", "descriptors", "match-keys", "control", "control-stall",
        "bulk", "bulk-split-short", "bulk-1m", "events", "edeadlk", "stall",
        "abort", "buffer-fd", "altsetting", "bulk-throughput", "hotplug",
        "reset-port",
    };
    /* USB through the runtime in the guest (images/guest-runtime/
     * dxl-usb-runtime-test.c): dextd lists the kernel-owned xHCI, the
     * usbfs provider (harness/usb/dextlab-usbfs) publishes the USB nubs,
     * the dextlab-usb driver and dextlab-usb-tool -- the same binaries as
     * on the qtest platform -- serve both devices; kill -9 of the driver
     * mid-transfer: NUB_RESET (port reset through usbfs) and relaunch */
    static const char *const usb_runtime[] = {
        "usbrt-dextd", "usbrt-matched", "usbrt-registry",
        "usbrt-hs-loopback", "usbrt-hs-events", "usbrt-ss-loopback",
        "usbrt-ss-events", "usbrt-tool-loopback", "usbrt-crash-app-error",
        "usbrt-crash-relaunch", "usbrt-crash-nub-reset",
        "usbrt-hs-after-relaunch", "usbrt-ss-after-relaunch",
        "usbrt-dextd-exit",
    };
    unsigned i;
    int ret;

    for (i = 1; i < (unsigned)argc; i++) {
        if (!strcmp(argv[i], "--bench")) {
            return bench();
        }
    }
    g_test_init(&argc, &argv, NULL);
    signal(SIGABRT, on_abort);
    g_test_add_func("/boot/dextlab-dma/boot-completes", test_boot_completes);
    g_test_add_func("/boot/dextlab-dma/modules", test_modules);
    g_test_add_func("/boot/dextlab-dma/iommu", test_iommu);
    g_test_add_func("/boot/dextlab-dma/vfio-bind", test_vfio_bind);
    g_test_add_func("/boot/dextlab-dma/lspci", test_lspci_dma);
    g_test_add_func("/boot/xhci/lsusb", test_lsusb);
    g_test_add_data_func("/boot/dextlab-usb/lsusb/high-speed", "480",
                         test_usb_descriptors);
    g_test_add_data_func("/boot/dextlab-usb/lsusb/superspeed", "5000",
                         test_usb_descriptors);
    for (i = 0; i < G_N_ELEMENTS(usbtests); i++) {
        g_autofree char *path = g_strdup_printf("/boot/dextlab-usb/selftest/%s",
                                                usbtests[i]);
        g_test_add_data_func(path, usbtests[i], test_selftest);
    }
    g_test_add_data_func("/boot/dextlab-usb/usbfs/usbfs-all-enumerate",
                         "usbfs-all-enumerate", test_selftest);
    for (i = 0; i < 2 * G_N_ELEMENTS(usbfs_checks); i++) {
        g_autofree char *name = g_strdup_printf("usbfs-%s-%s",
            i < G_N_ELEMENTS(usbfs_checks) ? "hs" : "ss",
            usbfs_checks[i % G_N_ELEMENTS(usbfs_checks)]);
        g_autofree char *path = g_strdup_printf("/boot/dextlab-usb/usbfs/%s",
                                                name);

        /* the name outlives this loop: glib keeps the pointer */
        g_test_add_data_func(path, g_intern_string(name), test_selftest);
    }
    g_test_add_data_func("/boot/dextlab-usb/usbfs/usbfs-all-destroy",
                         "usbfs-all-destroy", test_selftest);
    for (i = 0; i < G_N_ELEMENTS(usb_runtime); i++) {
        g_autofree char *path = g_strdup_printf("/boot/dextlab-usb/runtime/%s",
                                                usb_runtime[i]);

        g_test_add_data_func(path, usb_runtime[i], test_selftest);
    }
    for (i = 0; i < G_N_ELEMENTS(selftests); i++) {
        g_autofree char *path = g_strdup_printf("/boot/dextlab-dma/selftest/%s",
                                                selftests[i]);
        g_test_add_data_func(path, selftests[i], test_selftest);
    }
    g_test_add_func("/boot/dextlab-dma/iommu-fault-logged",
                    test_iommu_fault_logged);
    /* The runtime in the guest (images/guest-runtime): dextd on the VFIO
     * platform, the dextlab-dma driver, its apps. */
    for (i = 0; i < G_N_ELEMENTS(runtime); i++) {
        /* platform-X: the VFIO backend alone; runtime-X: dextd on it */
        g_autofree char *path = g_strdup_printf("/boot/dextlab-dma/%s",
                                                runtime[i]);
        g_test_add_data_func(path, runtime[i], test_selftest);
    }
    g_test_add_func("/boot/harness/detects-panic", test_detects_panic);
    g_test_add_func("/boot/harness/detects-hang", test_detects_hang);
    /*
     * Last (its own suite, created last), as glib stops at the first failed
     * assertion and every other check should report first.  Regression
     * guard: it caught alternate setting 1's high-speed bulk wMaxPacketSize
     * of 64 (USB 2.0 5.8.3 allows only 512), which Debian's kernel rejects
     * with "invalid maxpacket".
     */
    g_test_add_func("/boot/usb-compliance/dextlab-usb-descriptors",
                    test_usb_kernel_accepts);
    ret = g_test_run();
    dxl_boot_free(main_boot);
    return ret;
}
