/* Personality parsing (every malformed input names file:line) and the
 * matching rules (scores, masks, class, secondary, lists, categories,
 * entitlements, USB). */
#include "cunit-main.h"
#include "personality.h"

#include <string.h>

static DextBundle *parse(const char *text, GError **err)
{
    DextBundle *b = dext_bundle_parse("t.personality", text, strlen(text), err);
    if (b) {
        b->name = g_strdup("t");
    }
    return b;
}

#define ENT_ALL "[PCIEntitlement all]\nIOPCIClassMatch=0x000000&0x800000 0x800000&0x800000\n"

static const char *good =
    "# a comment\n"
    "[Bundle]\n"
    "Executable=drv\n"
    "\n"
    "[Personality A]\n"
    "IOProviderClass=IOPCIDevice\n"
    "IOUserClass=ADriver\n"
    "IOUserServerName=org.test.a\n"
    "IOProbeScore=100\n"
    "IOPCIPrimaryMatch=0x00011af4&0xffffffff 0x11e81234\n"
    "[Personality B]\n"
    "IOProviderClass=IOUSBHostInterface\n"
    "IOUserClass=BDriver\n"
    "IOUserServerName=org.test.b\n"
    "idVendor=0x46f4\n"
    "bInterfaceClass=3\n"
    "IOMatchCategory=hid\n"
    "[Entitlements]\n"
    "transport.usb=0x46f4\n"
    "userclient-access=org.test.app other.app\n"
    "[PCIEntitlement virtio]\n"
    "IOPCIPrimaryMatch=0x00001af4&0x0000ffff\n";

static void test_parse_good(void)
{
    GError *err = NULL;
    DextBundle *b = parse(good, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(b->personalities->len, 2);
    DextPersonality *a = b->personalities->pdata[0];
    CU_ASSERT_STRING_EQUAL(a->name, "A");
    CU_ASSERT_EQUAL(a->line, 5);
    CU_ASSERT_EQUAL(a->probe_score, 100);
    CU_ASSERT_STRING_EQUAL(a->match_category, "IODefaultMatchCategory");
    CU_ASSERT_EQUAL(a->pci.primary.n, 2);
    CU_ASSERT_EQUAL(a->pci.primary.v[0].value, 0x00011af4);
    CU_ASSERT_EQUAL(a->pci.primary.v[1].mask, 0xffffffff);
    DextPersonality *p = b->personalities->pdata[1];
    CU_ASSERT_EQUAL(p->provider, DEXT_PROVIDER_USB_INTERFACE);
    CU_ASSERT_STRING_EQUAL(p->match_category, "hid");
    CU_ASSERT_EQUAL(b->usb_vendors->len, 1);
    CU_ASSERT_EQUAL(b->pci_entitlements->len, 1);
    CU_ASSERT_STRING_EQUAL(b->executable, "drv");
    CU_ASSERT(dext_bundle_allows_app(b, "other.app"));
    CU_ASSERT(!dext_bundle_allows_app(b, "evil.app"));
    dext_bundle_free(b);
}

/* Each malformed file must fail with "t.personality:<line>:" and a hint. */
static const struct {
    const char *text;
    int line;
    const char *hint;
} bad[] = {
    { "[Personality A\nIOProviderClass=IOPCIDevice\n", 1, "malformed group" },
    { "IOProviderClass=IOPCIDevice\n", 1, "outside of any" },
    { "[Personality A]\njunk line\n", 2, "expected key=value" },
    { "[Personality A]\n=x\n", 2, "empty key" },
    { "[Personality A]\nIO Class=x\n", 2, "invalid character" },
    { "[Personality A]\nIOUserClass=x\nIOUserClass=y\n", 3, "duplicate key" },
    { "[Personality A]\nIOUserClass=x\n[Personality A]\n", 3, "duplicate group" },
    { "[Personality A]\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=0x1\n", 1, "lacks required key IOProviderClass" },
    { "\n[Personality A]\nIOProviderClass=IOFoo\nIOUserClass=x\nIOUserServerName=s\n", 3, "unknown IOProviderClass" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOProbeScore=high\nIOPCIMatch=1\n", 5, "IOProbeScore" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOProbeScore=99999999999\nIOPCIMatch=1\n", 5, "32-bit" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=0xzz\n", 5, "bad match value" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=0x1&\n", 5, "bad match value" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=0x100000000\n", 5, "bad match value" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=0x1&0x0\n", 5, "mask" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=0x3&0x1\n", 5, "outside its mask" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=  \n", 5, "empty value" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIClassMatch=0x1000000\n", 5, "24-bit" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\n", 1, "no PCI match key" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nidVendor=1\n", 5, "does not apply" },
    { "[Personality A]\nIOProviderClass=IOUSBHostDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n", 5, "PCI key" },
    { "[Personality A]\nIOProviderClass=IOUSBHostDevice\nIOUserClass=x\nIOUserServerName=s\nbInterfaceClass=3\n", 5, "does not apply" },
    { "[Personality A]\nIOProviderClass=IOUSBHostDevice\nIOUserClass=x\nIOUserServerName=s\nidVendor=0x10000\n", 5, "exceeds" },
    { "[Personality A]\nIOProviderClass=IOUSBHostDevice\nIOUserClass=x\nIOUserServerName=s\n", 1, "no USB match key" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\nFoo=1\n", 6, "unknown key Foo" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x y\nIOUserServerName=s\nIOPCIMatch=1\n", 3, "spaces" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=\nIOUserServerName=s\nIOPCIMatch=1\n", 3, "empty value" },
    { "[Personality]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n", 1, "needs a name" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Whatever]\n", 6, "unknown group" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\ntransport.pci=1\n", 7, "unknown entitlement" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\ntransport.usb=0x1 zz\n", 7, "bad idVendor" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[PCIEntitlement e]\n", 6, "is empty" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[PCIEntitlement e]\nidVendor=1\n", 7, "PCI match keys only" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\npublishes=IOUSBHostDevice IOPCIDevice\n", 7, "IOPCIDevice\" is not a class drivers may publish" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\npublishes=iousbhostdevice\n", 7, "not a class" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\n\npublishes=IOUSBHostInterface  IOUSBHostInterface\n", 8, "listed twice" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\npublishes=\n", 7, "empty value" },
    { "[Personality A]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\npublishes=IOUSBHostDevice\npublishes=IOUSBHostInterface\n", 8, "duplicate key publishes" },
    { "[Bundle]\nExecutable=../evil\n", 2, "inside the bundle" },
    { "[Bundle]\nExecutable=x\n", 1, "no [Personality" },
    { "# only comments\n", 1, "no [Personality" },
    { "[Personality A]\nIOUserClass=\xff\xfe\n", 2, "UTF-8" },
    { "[Personality A]\nIOUserClass=a\n[Personality  A ]\nIOProviderClass=IOPCIDevice\nIOUserClass=x\nIOUserServerName=s\nIOPCIMatch=1\n", 1, "lacks required" },
};

static void test_parse_bad(void)
{
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        GError *err = NULL;
        DextBundle *b = parse(bad[i].text, &err);
        CU_ASSERT_PTR_NULL(b);
        if (b) {
            printf("\ncase %zu unexpectedly parsed\n", i);
            dext_bundle_free(b);
            continue;
        }
        CU_ASSERT_PTR_NOT_NULL_FATAL(err);
        char *want = g_strdup_printf("t.personality:%d: ", bad[i].line);
        bool ok = g_str_has_prefix(err->message, want) && strstr(err->message, bad[i].hint);
        if (!ok) {
            printf("\ncase %zu: got \"%s\", want prefix \"%s\" and \"%s\"\n", i, err->message,
                   want, bad[i].hint);
        }
        CU_ASSERT(ok);
        g_free(want);
        g_error_free(err);
    }
}

static void test_parse_nul(void)
{
    GError *err = NULL;
    const char text[] = "[Personality A]\nIOUserClass=a\0b\n";
    DextBundle *b = dext_bundle_parse("t.personality", text, sizeof(text) - 1, &err);
    CU_ASSERT_PTR_NULL(b);
    CU_ASSERT(err && g_str_has_prefix(err->message, "t.personality:2: "));
    g_clear_error(&err);
}

static DextDeviceInfo pci(uint16_t v, uint16_t d, uint16_t sv, uint16_t sd, uint32_t cls)
{
    DextDeviceInfo i = { .kind = DEXT_PROVIDER_PCI, .vendor = v, .device = d,
                         .subvendor = sv, .subdevice = sd, .class_code = cls };
    return i;
}

static DextPersonality *pers(DextBundle *b, const char *name)
{
    for (guint i = 0; i < b->personalities->len; i++) {
        DextPersonality *p = b->personalities->pdata[i];
        if (!strcmp(p->name, name)) {
            return p;
        }
    }
    return NULL;
}

static void test_pci_keys(void)
{
    GError *err = NULL;
    DextBundle *b = parse(
        "[Personality prim]\nIOProviderClass=IOPCIDevice\nIOUserClass=c\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x00011af4\n"
        "[Personality masked]\nIOProviderClass=IOPCIDevice\nIOUserClass=c\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x00001af4&0x0000ffff\n"
        "[Personality list]\nIOProviderClass=IOPCIDevice\nIOUserClass=c\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x12345678 0x000d1b36 0x99998086\n"
        "[Personality sec]\nIOProviderClass=IOPCIDevice\nIOUserClass=c\nIOUserServerName=s\n"
        "IOPCISecondaryMatch=0x11001af4\n"
        "[Personality any]\nIOProviderClass=IOPCIDevice\nIOUserClass=c\nIOUserServerName=s\n"
        "IOPCIMatch=0x11001af4\n"
        "[Personality cls]\nIOProviderClass=IOPCIDevice\nIOUserClass=c\nIOUserServerName=s\n"
        "IOPCIClassMatch=0x020000&0xffff00\n"
        "[Personality both]\nIOProviderClass=IOPCIDevice\nIOUserClass=c\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x00011af4\nIOPCIClassMatch=0x030000&0xff0000\n"
        ENT_ALL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    unsigned spec;
    DextDeviceInfo net = pci(0x1af4, 0x0001, 0x1af4, 0x1100, 0x020000);
    DextDeviceInfo xhci = pci(0x1b36, 0x000d, 0x1af4, 0x1100, 0x0c0330);
    DextDeviceInfo other = pci(0x8086, 0x1234, 0x8086, 0x0000, 0x020001);

    CU_ASSERT(dext_personality_matches(pers(b, "prim"), &net, &spec));
    CU_ASSERT_EQUAL(spec, 32);
    CU_ASSERT(!dext_personality_matches(pers(b, "prim"), &xhci, NULL));
    CU_ASSERT(dext_personality_matches(pers(b, "masked"), &net, &spec));
    CU_ASSERT_EQUAL(spec, 16);
    CU_ASSERT(!dext_personality_matches(pers(b, "masked"), &xhci, NULL));
    CU_ASSERT(dext_personality_matches(pers(b, "list"), &xhci, NULL));
    CU_ASSERT(!dext_personality_matches(pers(b, "list"), &net, NULL));
    CU_ASSERT(dext_personality_matches(pers(b, "sec"), &net, NULL));
    CU_ASSERT(dext_personality_matches(pers(b, "sec"), &xhci, NULL));
    CU_ASSERT(!dext_personality_matches(pers(b, "sec"), &other, NULL));
    /* IOPCIMatch: primary or subsystem */
    CU_ASSERT(dext_personality_matches(pers(b, "any"), &net, NULL));
    DextDeviceInfo prim_only = pci(0x1af4, 0x1100, 0, 0, 0);
    CU_ASSERT(dext_personality_matches(pers(b, "any"), &prim_only, NULL));
    CU_ASSERT(!dext_personality_matches(pers(b, "any"), &other, NULL));
    /* class with mask ignores prog-if */
    CU_ASSERT(dext_personality_matches(pers(b, "cls"), &net, &spec));
    CU_ASSERT_EQUAL(spec, 16);
    CU_ASSERT(dext_personality_matches(pers(b, "cls"), &other, NULL));
    CU_ASSERT(!dext_personality_matches(pers(b, "cls"), &xhci, NULL));
    /* all keys must match (AND) */
    CU_ASSERT(!dext_personality_matches(pers(b, "both"), &net, NULL));
    DextDeviceInfo vga = pci(0x1af4, 0x0001, 0, 0, 0x030000);
    CU_ASSERT(dext_personality_matches(pers(b, "both"), &vga, &spec));
    CU_ASSERT_EQUAL(spec, 40);
    /* a USB device never matches a PCI personality */
    DextDeviceInfo usb = { .kind = DEXT_PROVIDER_USB_DEVICE };
    CU_ASSERT(!dext_personality_matches(pers(b, "cls"), &usb, NULL));
    dext_bundle_free(b);
}

static void test_select_score_and_specificity(void)
{
    GError *err = NULL;
    DextBundle *b = parse(
        "[Personality generic]\nIOProviderClass=IOPCIDevice\nIOUserClass=Gen\nIOUserServerName=s\n"
        "IOPCIClassMatch=0x020000&0xff0000\nIOProbeScore=10\n"
        "[Personality exact]\nIOProviderClass=IOPCIDevice\nIOUserClass=Exact\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x00011af4\nIOProbeScore=10\n"
        "[Personality high]\nIOProviderClass=IOPCIDevice\nIOUserClass=High\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x00001af4&0x0000ffff\nIOProbeScore=50\n"
        "[Personality other-cat]\nIOProviderClass=IOPCIDevice\nIOUserClass=Mon\nIOUserServerName=m\n"
        "IOPCIClassMatch=0x020000&0xff0000\nIOMatchCategory=monitor\nIOProbeScore=-5\n"
        ENT_ALL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    DextDeviceInfo net = pci(0x1af4, 0x0001, 0x1af4, 0x1100, 0x020000);
    GString *log = g_string_new(NULL);
    GArray *w = dext_match_select(b->personalities, &net, log);
    /* two categories: default (High wins on score) and monitor */
    CU_ASSERT_EQUAL_FATAL(w->len, 2);
    DextMatchResult *r0 = &g_array_index(w, DextMatchResult, 0);
    DextMatchResult *r1 = &g_array_index(w, DextMatchResult, 1);
    CU_ASSERT_STRING_EQUAL(r0->p->name, "high");
    CU_ASSERT_STRING_EQUAL(r1->p->name, "other-cat");
    CU_ASSERT(strstr(log->str, "loses") != NULL);
    g_array_free(w, TRUE);

    /* Equal score: the more specific personality wins. */
    pers(b, "high")->probe_score = 10;
    w = dext_match_select(b->personalities, &net, NULL);
    CU_ASSERT_STRING_EQUAL(g_array_index(w, DextMatchResult, 0).p->name, "exact");
    g_array_free(w, TRUE);

    /* No match at all */
    DextDeviceInfo gpu = pci(0x1234, 0x1111, 0, 0, 0x030000);
    w = dext_match_select(b->personalities, &gpu, NULL);
    CU_ASSERT_EQUAL(w->len, 0);
    g_array_free(w, TRUE);
    g_string_free(log, TRUE);
    dext_bundle_free(b);
}

static void test_entitlements(void)
{
    GError *err = NULL;
    /* Bundle entitled only to virtio (0x1af4); its best personality claims
     * the device by class but must be refused for an Intel NIC; no other
     * candidate, so nothing matches, and the log says why. */
    DextBundle *b = parse(
        "[Personality nic]\nIOProviderClass=IOPCIDevice\nIOUserClass=Nic\nIOUserServerName=s\n"
        "IOPCIClassMatch=0x020000&0xff0000\nIOProbeScore=10\n"
        "[PCIEntitlement virtio]\nIOPCIPrimaryMatch=0x00001af4&0x0000ffff\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    DextDeviceInfo intel = pci(0x8086, 0x10d3, 0x8086, 0, 0x020000);
    DextDeviceInfo virtio = pci(0x1af4, 0x1041, 0x1af4, 1, 0x020000);
    char *why = NULL;
    CU_ASSERT(!dext_bundle_entitled(b, &intel, &why));
    CU_ASSERT(why && strstr(why, "8086:10d3"));
    g_free(why);
    CU_ASSERT(dext_bundle_entitled(b, &virtio, NULL));
    GString *log = g_string_new(NULL);
    GArray *w = dext_match_select(b->personalities, &intel, log);
    CU_ASSERT_EQUAL(w->len, 0);
    CU_ASSERT(strstr(log->str, "refused") != NULL);
    CU_ASSERT(strstr(log->str, "transport.pci") != NULL);
    g_array_free(w, TRUE);
    w = dext_match_select(b->personalities, &virtio, NULL);
    CU_ASSERT_EQUAL(w->len, 1);
    g_array_free(w, TRUE);

    /* A refused best candidate lets the next entitled one win. */
    DextBundle *b2 = parse(
        "[Personality fallback]\nIOProviderClass=IOPCIDevice\nIOUserClass=Fb\nIOUserServerName=f\n"
        "IOPCIClassMatch=0x020000&0xff0000\nIOProbeScore=1\n" ENT_ALL, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b2);
    GPtrArray *all = g_ptr_array_new();
    g_ptr_array_add(all, b->personalities->pdata[0]);
    g_ptr_array_add(all, b2->personalities->pdata[0]);
    g_string_truncate(log, 0);
    w = dext_match_select(all, &intel, log);
    CU_ASSERT_EQUAL_FATAL(w->len, 1);
    CU_ASSERT_STRING_EQUAL(g_array_index(w, DextMatchResult, 0).p->name, "fallback");
    CU_ASSERT(strstr(log->str, "refused") != NULL);
    g_array_free(w, TRUE);
    g_ptr_array_free(all, TRUE);
    g_string_free(log, TRUE);
    dext_bundle_free(b2);

    /* No entitlement group at all: nothing may be claimed. */
    DextBundle *b3 = parse(
        "[Personality x]\nIOProviderClass=IOPCIDevice\nIOUserClass=X\nIOUserServerName=x\n"
        "IOPCIPrimaryMatch=0x10d38086\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b3);
    CU_ASSERT(!dext_bundle_entitled(b3, &intel, NULL));
    CU_ASSERT(!dext_bundle_allows_app(b3, "any"));
    dext_bundle_free(b3);
    dext_bundle_free(b);
}

static void test_usb(void)
{
    GError *err = NULL;
    DextBundle *b = parse(
        "[Personality vid]\nIOProviderClass=IOUSBHostDevice\nIOUserClass=V\nIOUserServerName=s\n"
        "idVendor=0x46f4\n"
        "[Personality vidpid]\nIOProviderClass=IOUSBHostDevice\nIOUserClass=VP\nIOUserServerName=s\n"
        "idVendor=0x46f4\nidProduct=0x0001 0x0002\n"
        "[Personality ifc]\nIOProviderClass=IOUSBHostInterface\nIOUserClass=I\nIOUserServerName=s\n"
        "bInterfaceClass=3\nbInterfaceSubClass=1\nbInterfaceProtocol=1\n"
        "[Entitlements]\ntransport.usb=0x46f4\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    DextDeviceInfo dev = { .kind = DEXT_PROVIDER_USB_DEVICE };
    dev.usb[DEXT_USB_ID_VENDOR] = 0x46f4;
    dev.usb_has[DEXT_USB_ID_VENDOR] = true;
    dev.usb[DEXT_USB_ID_PRODUCT] = 0x0002;
    dev.usb_has[DEXT_USB_ID_PRODUCT] = true;
    GArray *w = dext_match_select(b->personalities, &dev, NULL);
    CU_ASSERT_EQUAL_FATAL(w->len, 1);
    CU_ASSERT_STRING_EQUAL(g_array_index(w, DextMatchResult, 0).p->name, "vidpid");
    g_array_free(w, TRUE);
    dev.usb[DEXT_USB_ID_PRODUCT] = 0x0003;
    w = dext_match_select(b->personalities, &dev, NULL);
    CU_ASSERT_EQUAL_FATAL(w->len, 1);
    CU_ASSERT_STRING_EQUAL(g_array_index(w, DextMatchResult, 0).p->name, "vid");
    g_array_free(w, TRUE);

    DextDeviceInfo ifc = { .kind = DEXT_PROVIDER_USB_INTERFACE };
    ifc.usb[DEXT_USB_ID_VENDOR] = 0x46f4;
    ifc.usb_has[DEXT_USB_ID_VENDOR] = true;
    ifc.usb[DEXT_USB_IF_CLASS] = 3;
    ifc.usb[DEXT_USB_IF_SUBCLASS] = 1;
    ifc.usb[DEXT_USB_IF_PROTOCOL] = 2;
    ifc.usb_has[DEXT_USB_IF_CLASS] = ifc.usb_has[DEXT_USB_IF_SUBCLASS] =
        ifc.usb_has[DEXT_USB_IF_PROTOCOL] = true;
    CU_ASSERT(!dext_personality_matches(pers(b, "ifc"), &ifc, NULL));
    ifc.usb[DEXT_USB_IF_PROTOCOL] = 1;
    CU_ASSERT(dext_personality_matches(pers(b, "ifc"), &ifc, NULL));
    /* vendor not in transport.usb */
    ifc.usb[DEXT_USB_ID_VENDOR] = 0x1234;
    char *why = NULL;
    CU_ASSERT(!dext_bundle_entitled(b, &ifc, &why));
    CU_ASSERT(why && strstr(why, "0x1234"));
    g_free(why);
    dext_bundle_free(b);
}

static void test_app_entitlements(void)
{
    GError *err = NULL;
    const char *t = "[App]\nId=org.test.app\nuserclient-access=org.test.a org.test.b\n";
    DextAppEntitlements *a = dext_app_entitlements_parse("app.entitlements", t, strlen(t), &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_STRING_EQUAL(a->id, "org.test.app");
    CU_ASSERT(dext_app_may_open(a, "org.test.b"));
    CU_ASSERT(!dext_app_may_open(a, "org.test.c"));
    dext_app_entitlements_free(a);
    const char *bad1 = "[App]\nuserclient-access=x\n";
    a = dext_app_entitlements_parse("app.entitlements", bad1, strlen(bad1), &err);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT(err && g_str_has_prefix(err->message, "app.entitlements:1: "));
    g_clear_error(&err);
    const char *bad2 = "[App]\nId=x\nFoo=1\n";
    a = dext_app_entitlements_parse("app.entitlements", bad2, strlen(bad2), &err);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT(err && g_str_has_prefix(err->message, "app.entitlements:3: "));
    g_clear_error(&err);
}

/* match --explain: the first failed check, in order provider, class,
 * IDs, subsystem, entitlement; a match says its score. */
static void test_explain(void)
{
    GError *err = NULL;
    DextBundle *b = parse(
        "[Personality p]\nIOProviderClass=IOPCIDevice\nIOUserClass=P\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x10411af4&0xffffffff\nIOPCIClassMatch=0x020000&0xff0000\n"
        "IOProbeScore=7\n"
        "[PCIEntitlement virtio]\nIOPCIPrimaryMatch=0x00001af4&0x0000ffff\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    const DextPersonality *p = b->personalities->pdata[0];
    char *why = NULL;
    DextDeviceInfo ok = pci(0x1af4, 0x1041, 0x1af4, 1, 0x020000);
    CU_ASSERT(dext_match_explain(p, &ok, &why));
    CU_ASSERT(why && strstr(why, "score 7"));
    g_free(why);
    DextDeviceInfo cls = pci(0x1af4, 0x1041, 0x1af4, 1, 0x010000);
    CU_ASSERT(!dext_match_explain(p, &cls, &why));
    CU_ASSERT(why && g_str_has_prefix(why, "class: device 0x00010000"));
    CU_ASSERT(why && strstr(why, "0x00020000&0x00ff0000"));
    g_free(why);
    DextDeviceInfo ids = pci(0x1af4, 0x1042, 0x1af4, 1, 0x020000);
    CU_ASSERT(!dext_match_explain(p, &ids, &why));
    CU_ASSERT(why && g_str_has_prefix(why, "IDs: device 0x10421af4"));
    g_free(why);
    DextDeviceInfo usb = { .kind = DEXT_PROVIDER_USB_DEVICE };
    CU_ASSERT(!dext_match_explain(p, &usb, &why));
    CU_ASSERT(why && g_str_has_prefix(why, "provider: personality wants IOPCIDevice"));
    g_free(why);
    dext_bundle_free(b);
    /* matches by IDs, but the bundle may not claim it */
    b = parse(
        "[Personality p]\nIOProviderClass=IOPCIDevice\nIOUserClass=P\nIOUserServerName=s\n"
        "IOPCIPrimaryMatch=0x10d38086&0xffffffff\n"
        "[PCIEntitlement virtio]\nIOPCIPrimaryMatch=0x00001af4&0x0000ffff\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    DextDeviceInfo intel = pci(0x8086, 0x10d3, 0x8086, 0, 0x020000);
    CU_ASSERT(!dext_match_explain(b->personalities->pdata[0], &intel, &why));
    CU_ASSERT(why && g_str_has_prefix(why, "entitlement: bundle t lacks a transport.pci"));
    g_free(why);
    dext_bundle_free(b);
}

/* publishes= and the matching facts of a published USB nub */
static void test_nubs(void)
{
    GError *err = NULL;
    DextBundle *b = parse(
        "[Personality p]\nIOProviderClass=IOPCIDevice\nIOUserClass=P\nIOUserServerName=s\n"
        "IOPCIMatch=1\n[Entitlements]\npublishes=IOUSBHostDevice\tIOUSBHostInterface\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT(dext_bundle_may_publish(b, "IOUSBHostDevice"));
    CU_ASSERT(dext_bundle_may_publish(b, "IOUSBHostInterface"));
    CU_ASSERT(!dext_bundle_may_publish(b, "IOPCIDevice"));
    CU_ASSERT(!dext_bundle_may_publish(b, NULL));
    dext_bundle_free(b);
    b = parse("[Personality p]\nIOProviderClass=IOPCIDevice\nIOUserClass=P\n"
              "IOUserServerName=s\nIOPCIMatch=1\n[Entitlements]\npublishes=IOUSBHostDevice\n",
              &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT(dext_bundle_may_publish(b, "IOUSBHostDevice"));
    CU_ASSERT(!dext_bundle_may_publish(b, "IOUSBHostInterface"));
    dext_bundle_free(b);
    b = parse("[Personality p]\nIOProviderClass=IOPCIDevice\nIOUserClass=P\n"
              "IOUserServerName=s\nIOPCIMatch=1\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT(!dext_bundle_may_publish(b, "IOUSBHostDevice"));
    dext_bundle_free(b);
    CU_ASSERT(dext_nub_class_known("IOUSBHostInterface"));
    CU_ASSERT(!dext_nub_class_known("IOService"));

    /* an interface nub: every key, of assorted integer types */
    DextDeviceInfo info;
    char *why = NULL;
    GVariant *props = g_variant_ref_sink(g_variant_parse(G_VARIANT_TYPE("a{sv}"),
        "{'idVendor': <uint16 0x1234>, 'idProduct': <uint32 0x46f4>, 'bcdDevice': <int64 0x100>,"
        " 'bConfigurationValue': <byte 1>, 'bInterfaceNumber': <byte 2>,"
        " 'bInterfaceClass': <0xff>, 'bInterfaceSubClass': <uint64 0>,"
        " 'bInterfaceProtocol': <int16 3>, 'USB Product Name': <'x'>}", NULL, NULL, NULL));
    CU_ASSERT_PTR_NOT_NULL_FATAL(props);
    CU_ASSERT_EQUAL(dext_nub_device_info("IOUSBHostInterface", props, &info, &why), 0);
    CU_ASSERT_EQUAL(info.kind, DEXT_PROVIDER_USB_INTERFACE);
    CU_ASSERT_EQUAL(info.usb[DEXT_USB_ID_VENDOR], 0x1234);
    CU_ASSERT_EQUAL(info.usb[DEXT_USB_ID_PRODUCT], 0x46f4);
    CU_ASSERT_EQUAL(info.usb[DEXT_USB_BCD_DEVICE], 0x100);
    CU_ASSERT_EQUAL(info.usb[DEXT_USB_IF_NUMBER], 2);
    CU_ASSERT_EQUAL(info.usb[DEXT_USB_IF_CLASS], 0xff);
    CU_ASSERT(info.usb_has[DEXT_USB_IF_SUBCLASS] && info.usb[DEXT_USB_IF_SUBCLASS] == 0);
    CU_ASSERT_EQUAL(info.usb[DEXT_USB_IF_PROTOCOL], 3);
    CU_ASSERT_EQUAL(info.vendor, 0x1234);
    CU_ASSERT_EQUAL(info.device, 0x46f4);
    /* the same properties on a device nub: interface keys do not apply */
    CU_ASSERT_EQUAL(dext_nub_device_info("IOUSBHostDevice", props, &info, &why), 0);
    CU_ASSERT_EQUAL(info.kind, DEXT_PROVIDER_USB_DEVICE);
    CU_ASSERT(!info.usb_has[DEXT_USB_IF_CLASS] && !info.usb_has[DEXT_USB_IF_NUMBER]);
    CU_ASSERT(info.usb_has[DEXT_USB_CONFIG_VALUE]);
    /* a personality matches it, and the bundle's entitlement decides */
    b = parse("[Personality c]\nIOProviderClass=IOUSBHostInterface\nIOUserClass=C\n"
              "IOUserServerName=s\nidVendor=0x1234\nidProduct=0x46f4\nbInterfaceNumber=2\n"
              "[Entitlements]\ntransport.usb=0x1234\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(dext_nub_device_info("IOUSBHostInterface", props, &info, &why), 0);
    CU_ASSERT(dext_match_explain(b->personalities->pdata[0], &info, &why));
    g_free(why);
    why = NULL;
    dext_bundle_free(b);
    g_variant_unref(props);

    static const char *const bad[] = {
        "{'idVendor': <uint16 1>}",                                   /* no idProduct */
        "{'idProduct': <uint16 1>}",                                  /* no idVendor */
        "{'idVendor': <0x10000>, 'idProduct': <1>}",                  /* range */
        "{'idVendor': <-1>, 'idProduct': <1>}",                       /* negative */
        "{'idVendor': <'x'>, 'idProduct': <1>}",                      /* type */
        "{'idVendor': <1>, 'idProduct': <1>, 'bInterfaceClass': <uint64 0x100000000>}",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        props = g_variant_ref_sink(g_variant_parse(G_VARIANT_TYPE("a{sv}"), bad[i], NULL, NULL,
                                                   NULL));
        CU_ASSERT_PTR_NOT_NULL_FATAL(props);
        CU_ASSERT_EQUAL(dext_nub_device_info("IOUSBHostInterface", props, &info, &why), -EINVAL);
        CU_ASSERT_PTR_NOT_NULL(why);
        g_free(why);
        why = NULL;
        g_variant_unref(props);
    }
    props = g_variant_ref_sink(g_variant_parse(G_VARIANT_TYPE("a{sv}"),
                                               "{'idVendor': <1>, 'idProduct': <1>}", NULL, NULL,
                                               NULL));
    CU_ASSERT_EQUAL(dext_nub_device_info("IOPCIDevice", props, &info, &why), -EINVAL);
    g_free(why);
    g_variant_unref(props);
}

int main(void)
{
    static const DextTest tests[] = {
        { "parse-good", test_parse_good },
        { "parse-bad-file-line", test_parse_bad },
        { "parse-nul", test_parse_nul },
        { "pci-keys-masks-class-secondary-lists", test_pci_keys },
        { "select-score-specificity-category", test_select_score_and_specificity },
        { "entitlements", test_entitlements },
        { "usb", test_usb },
        { "app-entitlements", test_app_entitlements },
        { "match-explain", test_explain },
        { "nubs-publishes-and-properties", test_nubs },
        { NULL, NULL },
    };
    return dext_cunit_run("personality", tests);
}
