/*
 * Driver bundles, personalities, entitlements, and the pure matching logic.
 *
 * A bundle is a folder drivers/<name>/ holding the executable <name> (or the
 * one named by [Bundle] Executable=) and <name>.personality, a glib key file:
 *
 *   [Bundle]                       optional
 *   Executable=dext-test
 *   [Personality DextTest]         one group per personality
 *   IOProviderClass=IOPCIDevice    IOPCIDevice | IOUSBHostDevice | IOUSBHostInterface
 *   IOUserClass=DextTestDriver
 *   IOUserServerName=org.dextlab.dext-test
 *   IOProbeScore=1000              optional, default 0
 *   IOMatchCategory=...            optional, default IODefaultMatchCategory
 *   IOPCIPrimaryMatch=0x11e81234&0xffffffff 0x00011af4
 *   [Entitlements]
 *   transport.usb=0x1234 0x46f4    idVendor values this bundle may claim
 *   userclient-access=org.dextlab.e2e-app ...   app ids (or *) allowed to open
 *   publishes=IOUSBHostDevice IOUSBHostInterface  nub classes this bundle's
 *                                  drivers may publish (docs/runtime/nubs.md)
 *   [PCIEntitlement any-name]      one match dictionary the bundle may claim
 *   IOPCIPrimaryMatch=0x11e81234&0xffffffff
 *
 * Parsing is strict: unknown groups/keys, duplicates, bad numbers, empty
 * lists, keys that do not fit the provider class are errors naming
 * "file:line: ...".  All functions return negative errno, errors as GError
 * in the G_KEY_FILE_ERROR domain with the message carrying file:line.
 *
 * Matching functions are pure (no I/O, no globals) and thread-safe.
 */
#ifndef DEXT_PERSONALITY_H
#define DEXT_PERSONALITY_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
    uint32_t value;
    uint32_t mask;
} DextMaskedValue;

/* OR-list of masked values; n == 0 means "key absent". */
typedef struct {
    DextMaskedValue *v;
    unsigned n;
} DextMatchList;

typedef struct {
    DextMatchList any;        /* IOPCIMatch: primary or secondary id */
    DextMatchList primary;    /* IOPCIPrimaryMatch: device<<16|vendor */
    DextMatchList secondary;  /* IOPCISecondaryMatch: subdevice<<16|subvendor */
    DextMatchList class_code; /* IOPCIClassMatch: class<<16|subclass<<8|progif */
} DextPciMatch;

enum {
    DEXT_USB_ID_VENDOR, DEXT_USB_ID_PRODUCT, DEXT_USB_BCD_DEVICE,
    DEXT_USB_IF_CLASS, DEXT_USB_IF_SUBCLASS, DEXT_USB_IF_PROTOCOL,
    DEXT_USB_CONFIG_VALUE, DEXT_USB_IF_NUMBER, DEXT_USB_NKEYS
};

typedef struct {
    DextMatchList key[DEXT_USB_NKEYS];
} DextUsbMatch;

typedef enum {
    DEXT_PROVIDER_PCI = 1,       /* IOPCIDevice */
    DEXT_PROVIDER_USB_DEVICE,    /* IOUSBHostDevice */
    DEXT_PROVIDER_USB_INTERFACE, /* IOUSBHostInterface */
} DextProviderKind;

typedef struct DextBundle DextBundle;

typedef struct {
    char *name;               /* group suffix */
    char *file;
    int line;                 /* line of the [Personality ...] header */
    DextProviderKind provider;
    char *provider_class;
    char *user_class;
    char *server_name;
    char *match_category;
    int32_t probe_score;
    DextPciMatch pci;
    DextUsbMatch usb;
    DextBundle *bundle;       /* back pointer, not owned */
} DextPersonality;

struct DextBundle {
    char *name;
    char *dir;
    char *executable;         /* absolute path */
    char *personality_path;
    GPtrArray *personalities; /* DextPersonality*, owned */
    GPtrArray *pci_entitlements; /* DextPciMatch*, owned */
    GArray *usb_vendors;      /* uint32 idVendor values */
    char **uc_apps;           /* app ids allowed to open user clients; "*" any */
    char **publishes;         /* nub IOClass names it may publish; NULL: none */
};

/* Device facts matching looks at.  Built by dextd from the registry. */
typedef struct {
    DextProviderKind kind;
    uint16_t vendor, device, subvendor, subdevice;
    uint32_t class_code;      /* 24-bit */
    uint32_t usb[DEXT_USB_NKEYS];
    bool usb_has[DEXT_USB_NKEYS];
} DextDeviceInfo;

/* Parse a personality file (data with a display name for errors). */
DextBundle *dext_bundle_parse(const char *file, const char *data, gsize len,
                              GError **err);
/* Load drivers/<name>/ : finds <name>.personality, checks the executable. */
DextBundle *dext_bundle_load(const char *dir, GError **err);
void dext_bundle_free(DextBundle *b);

/* Parse "0x11e81234&0xffffffff 0x1234" into l (freeing nothing). */
bool dext_parse_match_list(const char *s, DextMatchList *l, char **why);

/* Does p match dev?  *specificity = bits of masks that matched. */
bool dext_personality_matches(const DextPersonality *p, const DextDeviceInfo *dev,
                              unsigned *specificity);
bool dext_pci_match(const DextPciMatch *m, const DextDeviceInfo *dev,
                    unsigned *specificity);
/* Is the bundle entitled to claim dev?  On refusal *why says why. */
bool dext_bundle_entitled(const DextBundle *b, const DextDeviceInfo *dev,
                          char **why);
/* Why does p (not) match dev?  Returns whether it matches, entitlement
 * included, and sets *why (g_free) to the first failed check: provider
 * class, then each match key (class code, IDs, subsystem IDs) with its
 * masked values, then the bundle's entitlement.  Winning among several
 * matches (IOProbeScore, specificity) is decided by dext_match_select(). */
bool dext_match_explain(const DextPersonality *p, const DextDeviceInfo *dev, char **why);
/* Nubs (docs/runtime/nubs.md).  Is io_class one drivers may publish
 * (IOUSBHostDevice, IOUSBHostInterface)?  May b publish it? */
bool dext_nub_class_known(const char *io_class);
bool dext_bundle_may_publish(const DextBundle *b, const char *io_class);
/* Matching facts of a published USB nub from its properties (a{sv}):
 * idVendor, idProduct, bcdDevice, bConfigurationValue and, for
 * IOUSBHostInterface only, bInterfaceNumber/Class/SubClass/Protocol, each
 * of any integer type within the key's range.  vendor/device also get
 * idVendor/idProduct (for listings).  -EINVAL with *why (g_free) for an
 * unknown class, a key out of range or of a non-integer type, or a
 * missing idVendor/idProduct. */
int dext_nub_device_info(const char *io_class, GVariant *props, DextDeviceInfo *out,
                         char **why);
/* Is app_id allowed to open user clients of b? */
bool dext_bundle_allows_app(const DextBundle *b, const char *app_id);

typedef struct {
    const DextPersonality *p;
    unsigned specificity;
} DextMatchResult;

/* Choose winners for dev among personalities (DextPersonality*): per
 * IOMatchCategory the entitled candidate with the highest (IOProbeScore,
 * specificity), ties broken by bundle then personality name.  Returns an
 * array of DextMatchResult (one per category, sorted by category); appends
 * one line per candidate/refusal to log if non-NULL. */
GArray *dext_match_select(GPtrArray *personalities, const DextDeviceInfo *dev,
                          GString *log);

/* App identity: <exe>.entitlements key file:
 *   [App]
 *   Id=org.dextlab.e2e-app
 *   userclient-access=org.dextlab.dext-test ...   server names or *
 *   dextd-control=true                            optional: stop/start services */
typedef struct {
    char *id;
    char **uc_access;
    bool control;           /* dextd-control=true: may stop/start services */
} DextAppEntitlements;

DextAppEntitlements *dext_app_entitlements_parse(const char *file, const char *data,
                                                 gsize len, GError **err);
DextAppEntitlements *dext_app_entitlements_load(const char *path, GError **err);
void dext_app_entitlements_free(DextAppEntitlements *a);
bool dext_app_may_open(const DextAppEntitlements *a, const char *server_name);

#endif
