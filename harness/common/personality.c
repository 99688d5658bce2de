/*
 * Personality files: strict glib key files with file:line errors, plus the
 * pure matching rules.  See personality.h for the format.
 *
 * GKeyFile does the value unescaping; it does not report line numbers, so a
 * first pass over the text checks the syntax line by line (and rejects what
 * GKeyFile would silently accept: duplicate groups and keys, localised keys)
 * and records the line of every group and key for later semantic errors.
 */
#include "personality.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_CATEGORY "IODefaultMatchCategory"

typedef struct {
    const char *file;
    GHashTable *lines; /* "group\x1fkey" or "group" -> line */
} Src;

static int src_line(const Src *s, const char *group, const char *key)
{
    char *k = key ? g_strdup_printf("%s\x1f%s", group, key) : g_strdup(group);
    int line = GPOINTER_TO_INT(g_hash_table_lookup(s->lines, k));
    g_free(k);
    return line ? line : 1;
}

static void set_err(GError **err, const char *file, int line, const char *fmt, ...)
    G_GNUC_PRINTF(4, 5);
static void set_err(GError **err, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_PARSE, "%s:%d: %s", file, line, m);
    g_free(m);
}

static bool valid_key_char(char c)
{
    return g_ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
}

/* Syntax pass.  Fills s->lines. */
static bool scan_syntax(Src *s, const char *data, gsize len, GError **err)
{
    char *cur_group = NULL;
    int lineno = 0;
    const char *p = data, *end = data + len;
    bool ok = false;

    if (!g_utf8_validate(data, len, NULL)) {
        /* Find the first bad line for the message. */
        const char *bad;
        g_utf8_validate(data, len, &bad);
        int l = 1;
        for (const char *q = data; q < bad; q++) {
            l += *q == '\n';
        }
        set_err(err, s->file, l, "invalid UTF-8");
        return false;
    }
    if (memchr(data, '\0', len)) {
        const char *z = memchr(data, '\0', len);
        int l = 1;
        for (const char *q = data; q < z; q++) {
            l += *q == '\n';
        }
        set_err(err, s->file, l, "NUL byte in file");
        return false;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', end - p);
        const char *le = nl ? nl : end;
        char *line = g_strndup(p, le - p);
        p = nl ? nl + 1 : end;
        lineno++;
        g_strchomp(line);
        char *t = line;
        while (*t == ' ' || *t == '\t') {
            t++;
        }
        if (*t == '\0' || *t == '#') {
            g_free(line);
            continue;
        }
        if (*t == '[') {
            char *close = strchr(t, ']');
            if (!close || close[1] != '\0' || close == t + 1) {
                set_err(err, s->file, lineno, "malformed group header \"%s\"", t);
                g_free(line);
                goto out;
            }
            g_free(cur_group);
            cur_group = g_strndup(t + 1, close - t - 1);
            if (strchr(cur_group, '[') || strchr(cur_group, '\x1f')) {
                set_err(err, s->file, lineno, "malformed group header \"%s\"", t);
                g_free(line);
                goto out;
            }
            if (g_hash_table_contains(s->lines, cur_group)) {
                set_err(err, s->file, lineno, "duplicate group [%s] (first at line %d)",
                        cur_group, GPOINTER_TO_INT(g_hash_table_lookup(s->lines, cur_group)));
                g_free(line);
                goto out;
            }
            g_hash_table_insert(s->lines, g_strdup(cur_group), GINT_TO_POINTER(lineno));
            g_free(line);
            continue;
        }
        char *eq = strchr(t, '=');
        if (!eq) {
            set_err(err, s->file, lineno, "expected key=value, [group] or # comment, got \"%s\"", t);
            g_free(line);
            goto out;
        }
        if (!cur_group) {
            set_err(err, s->file, lineno, "key outside of any [group]");
            g_free(line);
            goto out;
        }
        char *kend = eq;
        while (kend > t && (kend[-1] == ' ' || kend[-1] == '\t')) {
            kend--;
        }
        if (kend == t) {
            set_err(err, s->file, lineno, "empty key name");
            g_free(line);
            goto out;
        }
        for (char *c = t; c < kend; c++) {
            if (!valid_key_char(*c)) {
                set_err(err, s->file, lineno, "invalid character '%c' in key name", *c);
                g_free(line);
                goto out;
            }
        }
        char *key = g_strndup(t, kend - t);
        char *k = g_strdup_printf("%s\x1f%s", cur_group, key);
        if (g_hash_table_contains(s->lines, k)) {
            set_err(err, s->file, lineno, "duplicate key %s in [%s] (first at line %d)",
                    key, cur_group, GPOINTER_TO_INT(g_hash_table_lookup(s->lines, k)));
            g_free(k);
            g_free(key);
            g_free(line);
            goto out;
        }
        g_hash_table_insert(s->lines, k, GINT_TO_POINTER(lineno));
        g_free(key);
        g_free(line);
    }
    ok = true;
out:
    g_free(cur_group);
    return ok;
}

static bool parse_u32(const char *s, const char *end, uint32_t *out)
{
    if (s == end || !g_ascii_isdigit(*s)) {
        return false;
    }
    char buf[32];
    if ((size_t)(end - s) >= sizeof(buf)) {
        return false;
    }
    memcpy(buf, s, end - s);
    buf[end - s] = '\0';
    char *e;
    errno = 0;
    guint64 v = g_ascii_strtoull(buf, &e, 0);
    if (errno || *e || v > 0xffffffffu) {
        return false;
    }
    *out = (uint32_t)v;
    return true;
}

bool dext_parse_match_list(const char *s, DextMatchList *l, char **why)
{
    char **tok = g_strsplit_set(s, " \t", -1);
    GArray *a = g_array_new(FALSE, FALSE, sizeof(DextMaskedValue));
    bool ok = false;

    for (char **t = tok; *t; t++) {
        if (!**t) {
            continue;
        }
        DextMaskedValue mv = { 0, 0xffffffffu };
        char *amp = strchr(*t, '&');
        const char *vend = amp ? amp : *t + strlen(*t);
        if (!parse_u32(*t, vend, &mv.value) ||
            (amp && !parse_u32(amp + 1, amp + 1 + strlen(amp + 1), &mv.mask))) {
            *why = g_strdup_printf("bad match value \"%s\" (want NUMBER or NUMBER&MASK, "
                                   "32-bit, e.g. 0x11e81234&0xffffffff)", *t);
            goto out;
        }
        if (mv.mask == 0) {
            *why = g_strdup_printf("mask of \"%s\" is zero: it would match anything", *t);
            goto out;
        }
        if (mv.value & ~mv.mask) {
            *why = g_strdup_printf("value of \"%s\" has bits outside its mask: it can never match", *t);
            goto out;
        }
        g_array_append_val(a, mv);
    }
    if (a->len == 0) {
        *why = g_strdup("empty value list");
        goto out;
    }
    l->n = a->len;
    l->v = (DextMaskedValue *)g_array_free(a, FALSE);
    a = NULL;
    ok = true;
out:
    if (a) {
        g_array_free(a, TRUE);
    }
    g_strfreev(tok);
    return ok;
}

static void pci_match_clear(DextPciMatch *m)
{
    g_free(m->any.v);
    g_free(m->primary.v);
    g_free(m->secondary.v);
    g_free(m->class_code.v);
}

static void personality_free(gpointer data)
{
    DextPersonality *p = data;
    g_free(p->name);
    g_free(p->file);
    g_free(p->provider_class);
    g_free(p->user_class);
    g_free(p->server_name);
    g_free(p->match_category);
    pci_match_clear(&p->pci);
    for (int i = 0; i < DEXT_USB_NKEYS; i++) {
        g_free(p->usb.key[i].v);
    }
    g_free(p);
}

static void pci_match_free(gpointer data)
{
    pci_match_clear(data);
    g_free(data);
}

void dext_bundle_free(DextBundle *b)
{
    if (!b) {
        return;
    }
    g_free(b->name);
    g_free(b->dir);
    g_free(b->executable);
    g_free(b->personality_path);
    g_ptr_array_free(b->personalities, TRUE);
    g_ptr_array_free(b->pci_entitlements, TRUE);
    g_array_free(b->usb_vendors, TRUE);
    g_strfreev(b->uc_apps);
    g_strfreev(b->publishes);
    g_free(b);
}

static const char *const usb_key_names[DEXT_USB_NKEYS] = {
    "idVendor", "idProduct", "bcdDevice", "bInterfaceClass",
    "bInterfaceSubClass", "bInterfaceProtocol", "bConfigurationValue",
    "bInterfaceNumber",
};
static const char *const nub_classes[] = { "IOUSBHostDevice", "IOUSBHostInterface", NULL };

bool dext_nub_class_known(const char *io_class)
{
    for (const char *const *c = nub_classes; *c; c++) {
        if (io_class && !strcmp(*c, io_class)) {
            return true;
        }
    }
    return false;
}

bool dext_bundle_may_publish(const DextBundle *b, const char *io_class)
{
    if (!b || !b->publishes || !io_class) {
        return false;
    }
    for (char **c = b->publishes; *c; c++) {
        if (!strcmp(*c, io_class)) {
            return true;
        }
    }
    return false;
}

/* Integer value of any integer GVariant type, if it fits 32 bits. */
static bool variant_u32(GVariant *v, uint32_t *out)
{
    int64_t x;
    if (g_variant_is_of_type(v, G_VARIANT_TYPE_BYTE)) {
        x = g_variant_get_byte(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT16)) {
        x = g_variant_get_int16(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT16)) {
        x = g_variant_get_uint16(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT32)) {
        x = g_variant_get_int32(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32)) {
        x = g_variant_get_uint32(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_INT64)) {
        x = g_variant_get_int64(v);
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT64)) {
        uint64_t u = g_variant_get_uint64(v);
        x = u > UINT32_MAX ? -1 : (int64_t)u;
    } else {
        return false;
    }
    if (x < 0 || x > UINT32_MAX) {
        return false;
    }
    *out = (uint32_t)x;
    return true;
}

static const uint32_t usb_key_max[DEXT_USB_NKEYS] = {
    0xffff, 0xffff, 0xffff, 0xff, 0xff, 0xff, 0xff, 0xff,
};

int dext_nub_device_info(const char *io_class, GVariant *props, DextDeviceInfo *out,
                         char **why)
{
    memset(out, 0, sizeof(*out));
    if (!io_class || !strcmp(io_class, "IOUSBHostDevice")) {
        out->kind = DEXT_PROVIDER_USB_DEVICE;
    } else if (!strcmp(io_class, "IOUSBHostInterface")) {
        out->kind = DEXT_PROVIDER_USB_INTERFACE;
    } else {
        *why = g_strdup_printf("unknown nub class %s", io_class);
        return -EINVAL;
    }
    if (!props || !g_variant_is_of_type(props, G_VARIANT_TYPE("a{sv}"))) {
        *why = g_strdup("properties are not an a{sv}");
        return -EINVAL;
    }
    for (unsigned k = 0; k < DEXT_USB_NKEYS; k++) {
        bool iface_key = k == DEXT_USB_IF_CLASS || k == DEXT_USB_IF_SUBCLASS ||
                         k == DEXT_USB_IF_PROTOCOL || k == DEXT_USB_IF_NUMBER;
        GVariant *v = g_variant_lookup_value(props, usb_key_names[k], NULL);
        if (!v) {
            continue;
        }
        uint32_t x;
        bool ok = variant_u32(v, &x);
        g_variant_unref(v);
        if (!ok || x > usb_key_max[k]) {
            *why = g_strdup_printf("property %s is not an integer in 0..0x%x", usb_key_names[k],
                                   usb_key_max[k]);
            return -EINVAL;
        }
        /* interface keys only match interfaces, as in DriverKit */
        if (iface_key && out->kind != DEXT_PROVIDER_USB_INTERFACE) {
            continue;
        }
        out->usb[k] = x;
        out->usb_has[k] = true;
    }
    if (!out->usb_has[DEXT_USB_ID_VENDOR] || !out->usb_has[DEXT_USB_ID_PRODUCT]) {
        *why = g_strdup("a USB nub needs idVendor and idProduct");
        return -EINVAL;
    }
    out->vendor = out->usb[DEXT_USB_ID_VENDOR];
    out->device = out->usb[DEXT_USB_ID_PRODUCT];
    return 0;
}

static char *get_value(GKeyFile *kf, const Src *s, const char *g, const char *k,
                       GError **err)
{
    GError *e = NULL;
    char *v = g_key_file_get_string(kf, g, k, &e);
    if (!v) {
        set_err(err, s->file, src_line(s, g, k), "key %s: %s", k, e->message);
        g_error_free(e);
        return NULL;
    }
    g_strstrip(v);
    if (!*v) {
        set_err(err, s->file, src_line(s, g, k), "key %s has an empty value", k);
        g_free(v);
        return NULL;
    }
    return v;
}

static bool parse_pci_key(GKeyFile *kf, const Src *s, const char *g, const char *k,
                          DextPciMatch *m, bool *handled, GError **err)
{
    DextMatchList *l = NULL;
    if (!strcmp(k, "IOPCIMatch")) {
        l = &m->any;
    } else if (!strcmp(k, "IOPCIPrimaryMatch")) {
        l = &m->primary;
    } else if (!strcmp(k, "IOPCISecondaryMatch")) {
        l = &m->secondary;
    } else if (!strcmp(k, "IOPCIClassMatch")) {
        l = &m->class_code;
    }
    *handled = l != NULL;
    if (!l) {
        return true;
    }
    char *v = get_value(kf, s, g, k, err);
    if (!v) {
        return false;
    }
    char *why = NULL;
    bool ok = dext_parse_match_list(v, l, &why);
    if (ok && l == &m->class_code) {
        for (unsigned i = 0; i < l->n; i++) {
            /* The default mask (no "&MASK") means all 24 class bits. */
            if (l->v[i].mask == 0xffffffffu) {
                l->v[i].mask = 0xffffff;
            }
            if (l->v[i].value > 0xffffff || (l->v[i].mask & ~0xffffffu)) {
                why = g_strdup("class match values are 24-bit (class<<16|subclass<<8|prog-if)");
                ok = false;
                g_free(l->v);
                l->v = NULL;
                l->n = 0;
                break;
            }
        }
    }
    if (!ok) {
        set_err(err, s->file, src_line(s, g, k), "key %s: %s", k, why);
        g_free(why);
    }
    g_free(v);
    return ok;
}

static bool pci_match_empty(const DextPciMatch *m)
{
    return !m->any.n && !m->primary.n && !m->secondary.n && !m->class_code.n;
}

static DextPersonality *parse_personality(GKeyFile *kf, const Src *s, const char *g,
                                          GError **err)
{
    DextPersonality *p = g_new0(DextPersonality, 1);
    p->name = g_strdup(strlen(g) > strlen("Personality ") ? g + strlen("Personality ") : "");
    g_strstrip(p->name);
    p->file = g_strdup(s->file);
    p->line = src_line(s, g, NULL);
    p->match_category = g_strdup(DEFAULT_CATEGORY);

    if (!*p->name) {
        set_err(err, s->file, p->line, "[Personality] needs a name: [Personality NAME]");
        goto fail;
    }
    static const char *const required[] = {
        "IOProviderClass", "IOUserClass", "IOUserServerName",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(required); i++) {
        if (!g_key_file_has_key(kf, g, required[i], NULL)) {
            set_err(err, s->file, p->line, "personality %s lacks required key %s",
                    p->name, required[i]);
            goto fail;
        }
    }
    if (!(p->provider_class = get_value(kf, s, g, "IOProviderClass", err))) {
        goto fail;
    }
    if (!strcmp(p->provider_class, "IOPCIDevice")) {
        p->provider = DEXT_PROVIDER_PCI;
    } else if (!strcmp(p->provider_class, "IOUSBHostDevice")) {
        p->provider = DEXT_PROVIDER_USB_DEVICE;
    } else if (!strcmp(p->provider_class, "IOUSBHostInterface")) {
        p->provider = DEXT_PROVIDER_USB_INTERFACE;
    } else {
        set_err(err, s->file, src_line(s, g, "IOProviderClass"),
                "unknown IOProviderClass \"%s\" (IOPCIDevice, IOUSBHostDevice, "
                "IOUSBHostInterface)", p->provider_class);
        goto fail;
    }

    gsize nkeys;
    char **keys = g_key_file_get_keys(kf, g, &nkeys, NULL);
    bool has_usb = false;
    for (gsize i = 0; i < nkeys; i++) {
        const char *k = keys[i];
        int line = src_line(s, g, k);
        bool handled;
        if (!strcmp(k, "IOProviderClass")) {
            continue;
        } else if (!strcmp(k, "IOUserClass") || !strcmp(k, "IOUserServerName") ||
                   !strcmp(k, "IOMatchCategory")) {
            char *v = get_value(kf, s, g, k, err);
            if (!v) {
                g_strfreev(keys);
                goto fail;
            }
            if (strchr(v, ' ') || strchr(v, '/')) {
                set_err(err, s->file, line, "key %s: \"%s\" must not contain spaces or '/'", k, v);
                g_free(v);
                g_strfreev(keys);
                goto fail;
            }
            char **dst = k[2] == 'U' ? (k[6] == 'C' ? &p->user_class : &p->server_name)
                                     : &p->match_category;
            g_free(*dst);
            *dst = v;
        } else if (!strcmp(k, "IOProbeScore")) {
            char *v = get_value(kf, s, g, k, err);
            if (!v) {
                g_strfreev(keys);
                goto fail;
            }
            char *e;
            errno = 0;
            gint64 n = g_ascii_strtoll(v, &e, 0);
            if (errno || *e || n < INT32_MIN || n > INT32_MAX) {
                set_err(err, s->file, line, "IOProbeScore \"%s\" is not a 32-bit integer", v);
                g_free(v);
                g_strfreev(keys);
                goto fail;
            }
            p->probe_score = (int32_t)n;
            g_free(v);
        } else if (!parse_pci_key(kf, s, g, k, &p->pci, &handled, err)) {
            g_strfreev(keys);
            goto fail;
        } else if (handled) {
            if (p->provider != DEXT_PROVIDER_PCI) {
                set_err(err, s->file, line, "PCI key %s in a personality for %s", k,
                        p->provider_class);
                g_strfreev(keys);
                goto fail;
            }
        } else {
            int u;
            for (u = 0; u < DEXT_USB_NKEYS; u++) {
                if (!strcmp(k, usb_key_names[u])) {
                    break;
                }
            }
            if (u == DEXT_USB_NKEYS) {
                set_err(err, s->file, line, "unknown key %s in [%s]", k, g);
                g_strfreev(keys);
                goto fail;
            }
            if (p->provider == DEXT_PROVIDER_PCI ||
                (p->provider == DEXT_PROVIDER_USB_DEVICE && u >= DEXT_USB_IF_CLASS &&
                 u != DEXT_USB_CONFIG_VALUE)) {
                set_err(err, s->file, line, "USB key %s does not apply to %s", k,
                        p->provider_class);
                g_strfreev(keys);
                goto fail;
            }
            char *v = get_value(kf, s, g, k, err);
            if (!v) {
                g_strfreev(keys);
                goto fail;
            }
            char *why = NULL;
            DextMatchList *l = &p->usb.key[u];
            if (!dext_parse_match_list(v, l, &why)) {
                set_err(err, s->file, line, "key %s: %s", k, why);
                g_free(why);
                g_free(v);
                g_strfreev(keys);
                goto fail;
            }
            g_free(v);
            for (unsigned j = 0; j < l->n; j++) {
                if (l->v[j].value > usb_key_max[u]) {
                    set_err(err, s->file, line, "key %s: value 0x%x exceeds 0x%x", k,
                            l->v[j].value, usb_key_max[u]);
                    g_strfreev(keys);
                    goto fail;
                }
            }
            has_usb = true;
        }
    }
    g_strfreev(keys);
    if (p->provider == DEXT_PROVIDER_PCI && pci_match_empty(&p->pci)) {
        set_err(err, s->file, p->line, "personality %s has no PCI match key "
                "(IOPCIMatch, IOPCIPrimaryMatch, IOPCISecondaryMatch or IOPCIClassMatch)",
                p->name);
        goto fail;
    }
    if (p->provider != DEXT_PROVIDER_PCI && !has_usb) {
        set_err(err, s->file, p->line, "personality %s has no USB match key", p->name);
        goto fail;
    }
    return p;
fail:
    personality_free(p);
    return NULL;
}

static bool parse_entitlements(GKeyFile *kf, const Src *s, const char *g, DextBundle *b,
                               GError **err)
{
    gsize nkeys;
    char **keys = g_key_file_get_keys(kf, g, &nkeys, NULL);
    bool ok = false;
    for (gsize i = 0; i < nkeys; i++) {
        const char *k = keys[i];
        int line = src_line(s, g, k);
        char *v = get_value(kf, s, g, k, err);
        if (!v) {
            goto out;
        }
        if (!strcmp(k, "transport.usb")) {
            char **tok = g_strsplit_set(v, " \t", -1);
            for (char **t = tok; *t; t++) {
                uint32_t id;
                if (!**t) {
                    continue;
                }
                if (!parse_u32(*t, *t + strlen(*t), &id) || id > 0xffff) {
                    set_err(err, s->file, line, "transport.usb: bad idVendor \"%s\"", *t);
                    g_strfreev(tok);
                    g_free(v);
                    goto out;
                }
                g_array_append_val(b->usb_vendors, id);
            }
            g_strfreev(tok);
        } else if (!strcmp(k, "userclient-access")) {
            char **tok = g_strsplit_set(v, " \t", -1);
            GPtrArray *a = g_ptr_array_new();
            for (char **t = tok; *t; t++) {
                if (**t) {
                    g_ptr_array_add(a, g_strdup(*t));
                }
            }
            g_ptr_array_add(a, NULL);
            g_strfreev(tok);
            g_strfreev(b->uc_apps);
            b->uc_apps = (char **)g_ptr_array_free(a, FALSE);
        } else if (!strcmp(k, "publishes")) {
            char **tok = g_strsplit_set(v, " \t", -1);
            GPtrArray *a = g_ptr_array_new_with_free_func(g_free);
            for (char **t = tok; *t; t++) {
                if (!**t) {
                    continue;
                }
                bool dup = false;
                for (guint j = 0; j < a->len; j++) {
                    dup |= !strcmp(a->pdata[j], *t);
                }
                if (!dext_nub_class_known(*t) || dup) {
                    set_err(err, s->file, line, dup ? "publishes: %s listed twice"
                            : "publishes: \"%s\" is not a class drivers may publish "
                              "(IOUSBHostDevice, IOUSBHostInterface)", *t);
                    g_ptr_array_free(a, TRUE);
                    g_strfreev(tok);
                    g_free(v);
                    goto out;
                }
                g_ptr_array_add(a, g_strdup(*t));
            }
            g_strfreev(tok);
            g_ptr_array_set_free_func(a, NULL);
            g_ptr_array_add(a, NULL);
            g_strfreev(b->publishes);
            b->publishes = (char **)g_ptr_array_free(a, FALSE);
        } else {
            set_err(err, s->file, line, "unknown entitlement %s (transport.usb, "
                    "userclient-access, publishes; PCI match dictionaries go in "
                    "[PCIEntitlement NAME])", k);
            g_free(v);
            goto out;
        }
        g_free(v);
    }
    ok = true;
out:
    g_strfreev(keys);
    return ok;
}

static bool parse_pci_entitlement(GKeyFile *kf, const Src *s, const char *g, DextBundle *b,
                                  GError **err)
{
    DextPciMatch *m = g_new0(DextPciMatch, 1);
    gsize nkeys;
    char **keys = g_key_file_get_keys(kf, g, &nkeys, NULL);
    for (gsize i = 0; i < nkeys; i++) {
        bool handled;
        if (!parse_pci_key(kf, s, g, keys[i], m, &handled, err)) {
            goto fail;
        }
        if (!handled) {
            set_err(err, s->file, src_line(s, g, keys[i]),
                    "unknown key %s in [%s] (PCI match keys only)", keys[i], g);
            goto fail;
        }
    }
    if (pci_match_empty(m)) {
        set_err(err, s->file, src_line(s, g, NULL), "[%s] is empty: a PCI entitlement "
                "needs at least one match key", g);
        goto fail;
    }
    g_strfreev(keys);
    g_ptr_array_add(b->pci_entitlements, m);
    return true;
fail:
    g_strfreev(keys);
    pci_match_free(m);
    return false;
}

DextBundle *dext_bundle_parse(const char *file, const char *data, gsize len, GError **err)
{
    Src s = { file, g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL) };
    GKeyFile *kf = g_key_file_new();
    DextBundle *b = g_new0(DextBundle, 1);
    GError *e = NULL;
    char **groups = NULL;

    b->personalities = g_ptr_array_new_with_free_func(personality_free);
    b->pci_entitlements = g_ptr_array_new_with_free_func(pci_match_free);
    b->usb_vendors = g_array_new(FALSE, FALSE, sizeof(uint32_t));
    b->personality_path = g_strdup(file);

    if (!scan_syntax(&s, data, len, err)) {
        goto fail;
    }
    if (!g_key_file_load_from_data(kf, data, len, G_KEY_FILE_NONE, &e)) {
        /* The syntax pass accepts only what GKeyFile accepts; keep a clear
         * message anyway should the two ever disagree. */
        set_err(err, file, 1, "%s", e->message);
        g_error_free(e);
        goto fail;
    }
    groups = g_key_file_get_groups(kf, NULL);
    for (char **g = groups; *g; g++) {
        int line = src_line(&s, *g, NULL);
        if (g_str_has_prefix(*g, "Personality ") || !strcmp(*g, "Personality")) {
            DextPersonality *p = parse_personality(kf, &s, *g, err);
            if (!p) {
                goto fail;
            }
            p->bundle = b;
            for (guint i = 0; i < b->personalities->len; i++) {
                DextPersonality *o = b->personalities->pdata[i];
                if (!strcmp(o->name, p->name)) {
                    set_err(err, file, line, "duplicate personality name %s", p->name);
                    personality_free(p);
                    goto fail;
                }
            }
            g_ptr_array_add(b->personalities, p);
        } else if (!strcmp(*g, "Entitlements")) {
            if (!parse_entitlements(kf, &s, *g, b, err)) {
                goto fail;
            }
        } else if (g_str_has_prefix(*g, "PCIEntitlement")) {
            if (!parse_pci_entitlement(kf, &s, *g, b, err)) {
                goto fail;
            }
        } else if (!strcmp(*g, "Bundle")) {
            gsize n;
            char **keys = g_key_file_get_keys(kf, *g, &n, NULL);
            for (gsize i = 0; i < n; i++) {
                if (strcmp(keys[i], "Executable")) {
                    set_err(err, file, src_line(&s, *g, keys[i]),
                            "unknown key %s in [Bundle] (Executable)", keys[i]);
                    g_strfreev(keys);
                    goto fail;
                }
                char *v = get_value(kf, &s, *g, keys[i], err);
                if (!v) {
                    g_strfreev(keys);
                    goto fail;
                }
                if (strchr(v, '/') || !strcmp(v, "..") || !strcmp(v, ".")) {
                    set_err(err, file, src_line(&s, *g, keys[i]),
                            "Executable must be a file name inside the bundle, not \"%s\"", v);
                    g_free(v);
                    g_strfreev(keys);
                    goto fail;
                }
                g_free(b->executable);
                b->executable = v;
            }
            g_strfreev(keys);
        } else {
            set_err(err, file, line, "unknown group [%s] (Personality NAME, Entitlements, "
                    "PCIEntitlement NAME, Bundle)", *g);
            goto fail;
        }
    }
    if (b->personalities->len == 0) {
        set_err(err, file, 1, "no [Personality NAME] group");
        goto fail;
    }
    g_strfreev(groups);
    g_key_file_free(kf);
    g_hash_table_destroy(s.lines);
    return b;

fail:
    g_strfreev(groups);
    g_key_file_free(kf);
    g_hash_table_destroy(s.lines);
    dext_bundle_free(b);
    return NULL;
}

DextBundle *dext_bundle_load(const char *dir, GError **err)
{
    char *base = g_path_get_basename(dir);
    char *pf = g_strdup_printf("%s/%s.personality", dir, base);
    char *data = NULL;
    gsize len;
    DextBundle *b = NULL;

    if (!g_file_get_contents(pf, &data, &len, err)) {
        goto out;
    }
    b = dext_bundle_parse(pf, data, len, err);
    if (!b) {
        goto out;
    }
    b->name = g_strdup(base);
    b->dir = g_canonicalize_filename(dir, NULL);
    char *exe = g_build_filename(b->dir, b->executable ? b->executable : base, NULL);
    g_free(b->executable);
    b->executable = exe;
    if (access(exe, X_OK) != 0) {
        set_err(err, pf, 1, "bundle executable %s is missing or not executable", exe);
        dext_bundle_free(b);
        b = NULL;
    }
out:
    g_free(data);
    g_free(pf);
    g_free(base);
    return b;
}

/* ---- matching --------------------------------------------------------- */

static bool list_match(const DextMatchList *l, uint32_t v, unsigned *bits)
{
    unsigned best = 0;
    bool hit = false;
    for (unsigned i = 0; i < l->n; i++) {
        if ((v & l->v[i].mask) == l->v[i].value) {
            unsigned b = (unsigned)__builtin_popcount(l->v[i].mask);
            if (!hit || b > best) {
                best = b;
            }
            hit = true;
        }
    }
    *bits = best;
    return hit;
}

bool dext_pci_match(const DextPciMatch *m, const DextDeviceInfo *dev, unsigned *specificity)
{
    uint32_t primary = (uint32_t)dev->device << 16 | dev->vendor;
    uint32_t secondary = (uint32_t)dev->subdevice << 16 | dev->subvendor;
    unsigned total = 0, bits, bits2;

    if (dev->kind != DEXT_PROVIDER_PCI || pci_match_empty(m)) {
        return false;
    }
    if (m->any.n) {
        /* IOPCIMatch: either the primary or the subsystem id. */
        bool a = list_match(&m->any, primary, &bits);
        bool b = list_match(&m->any, secondary, &bits2);
        if (!a && !b) {
            return false;
        }
        total += MAX(a ? bits : 0, b ? bits2 : 0);
    }
    if (m->primary.n) {
        if (!list_match(&m->primary, primary, &bits)) {
            return false;
        }
        total += bits;
    }
    if (m->secondary.n) {
        if (!list_match(&m->secondary, secondary, &bits)) {
            return false;
        }
        total += bits;
    }
    if (m->class_code.n) {
        if (!list_match(&m->class_code, dev->class_code & 0xffffff, &bits)) {
            return false;
        }
        total += bits;
    }
    if (specificity) {
        *specificity = total;
    }
    return true;
}

static bool usb_match(const DextUsbMatch *m, const DextDeviceInfo *dev, unsigned *specificity)
{
    unsigned total = 0, nkeys = 0, bits;
    for (int k = 0; k < DEXT_USB_NKEYS; k++) {
        if (!m->key[k].n) {
            continue;
        }
        nkeys++;
        if (!dev->usb_has[k] || !list_match(&m->key[k], dev->usb[k], &bits)) {
            return false;
        }
        /* Only the bits inside the field's width count. */
        total += MIN(bits, (unsigned)__builtin_popcount(usb_key_max[k]));
    }
    if (!nkeys) {
        return false;
    }
    *specificity = total;
    return true;
}

bool dext_personality_matches(const DextPersonality *p, const DextDeviceInfo *dev,
                              unsigned *specificity)
{
    unsigned spec = 0;
    bool ok;
    if (p->provider != dev->kind) {
        return false;
    }
    ok = p->provider == DEXT_PROVIDER_PCI ? dext_pci_match(&p->pci, dev, &spec)
                                          : usb_match(&p->usb, dev, &spec);
    if (ok && specificity) {
        *specificity = spec;
    }
    return ok;
}

bool dext_bundle_entitled(const DextBundle *b, const DextDeviceInfo *dev, char **why)
{
    if (dev->kind == DEXT_PROVIDER_PCI) {
        for (guint i = 0; i < b->pci_entitlements->len; i++) {
            if (dext_pci_match(b->pci_entitlements->pdata[i], dev, NULL)) {
                return true;
            }
        }
        if (why) {
            *why = g_strdup_printf("bundle %s lacks a transport.pci entitlement "
                                   "([PCIEntitlement]) covering %04x:%04x (sub %04x:%04x, "
                                   "class %06x)", b->name ? b->name : "?", dev->vendor,
                                   dev->device, dev->subvendor, dev->subdevice, dev->class_code);
        }
        return false;
    }
    if (dev->usb_has[DEXT_USB_ID_VENDOR]) {
        for (guint i = 0; i < b->usb_vendors->len; i++) {
            if (g_array_index(b->usb_vendors, uint32_t, i) == dev->usb[DEXT_USB_ID_VENDOR]) {
                return true;
            }
        }
    }
    if (why) {
        *why = g_strdup_printf("bundle %s lacks a transport.usb entitlement for idVendor 0x%04x",
                               b->name ? b->name : "?", dev->usb[DEXT_USB_ID_VENDOR]);
    }
    return false;
}

static void list_fmt(GString *g, const DextMatchList *l)
{
    for (unsigned i = 0; i < l->n; i++) {
        g_string_append_printf(g, "%s0x%08x&0x%08x", i ? " " : "", l->v[i].value, l->v[i].mask);
    }
}

static const char *provider_name(DextProviderKind k)
{
    return k == DEXT_PROVIDER_PCI ? "IOPCIDevice"
         : k == DEXT_PROVIDER_USB_DEVICE ? "IOUSBHostDevice" : "IOUSBHostInterface";
}

/* One key's verdict: FALSE with *why naming the key, value and list. */
static bool explain_key(const char *what, const char *key, const DextMatchList *l, uint32_t v,
                        char **why)
{
    unsigned bits;
    if (!l->n || list_match(l, v, &bits)) {
        return true;
    }
    GString *g = g_string_new(NULL);
    g_string_printf(g, "%s: device 0x%08x matches no %s value&mask (", what, v, key);
    list_fmt(g, l);
    g_string_append_c(g, ')');
    *why = g_string_free(g, FALSE);
    return false;
}

bool dext_match_explain(const DextPersonality *p, const DextDeviceInfo *dev, char **why)
{
    *why = NULL;
    if (p->provider != dev->kind) {
        *why = g_strdup_printf("provider: personality wants %s, device is %s",
                               provider_name(p->provider), provider_name(dev->kind));
        return false;
    }
    if (p->provider == DEXT_PROVIDER_PCI) {
        const DextPciMatch *m = &p->pci;
        uint32_t primary = (uint32_t)dev->device << 16 | dev->vendor;
        uint32_t secondary = (uint32_t)dev->subdevice << 16 | dev->subvendor;
        unsigned b1, b2;
        if (pci_match_empty(m)) {
            *why = g_strdup("IDs: the personality has no PCI match key");
            return false;
        }
        if (!explain_key("class", "IOPCIClassMatch", &m->class_code,
                         dev->class_code & 0xffffff, why) ||
            !explain_key("IDs", "IOPCIPrimaryMatch", &m->primary, primary, why) ||
            !explain_key("subsystem IDs", "IOPCISecondaryMatch", &m->secondary, secondary,
                         why)) {
            return false;
        }
        if (m->any.n && !list_match(&m->any, primary, &b1) &&
            !list_match(&m->any, secondary, &b2)) {
            GString *g = g_string_new(NULL);
            g_string_printf(g, "IDs: neither 0x%08x nor subsystem 0x%08x matches an "
                            "IOPCIMatch value&mask (", primary, secondary);
            list_fmt(g, &m->any);
            g_string_append_c(g, ')');
            *why = g_string_free(g, FALSE);
            return false;
        }
    } else {
        unsigned nkeys = 0;
        for (int k = 0; k < DEXT_USB_NKEYS; k++) {
            if (!p->usb.key[k].n) {
                continue;
            }
            nkeys++;
            if (!dev->usb_has[k]) {
                *why = g_strdup_printf("IDs: the device has no %s", usb_key_names[k]);
                return false;
            }
            if (!explain_key("IDs", usb_key_names[k], &p->usb.key[k], dev->usb[k], why)) {
                return false;
            }
        }
        if (!nkeys) {
            *why = g_strdup("IDs: the personality has no USB match key");
            return false;
        }
    }
    char *ent = NULL;
    if (p->bundle && !dext_bundle_entitled(p->bundle, dev, &ent)) {
        *why = g_strdup_printf("entitlement: %s", ent);
        g_free(ent);
        return false;
    }
    unsigned spec = 0;
    dext_personality_matches(p, dev, &spec);
    *why = g_strdup_printf("matches (score %d, specificity %u, category %s)", p->probe_score,
                           spec, p->match_category);
    return true;
}

bool dext_bundle_allows_app(const DextBundle *b, const char *app_id)
{
    if (!b->uc_apps || !app_id) {
        return false;
    }
    for (char **a = b->uc_apps; *a; a++) {
        if (!strcmp(*a, "*") || !strcmp(*a, app_id)) {
            return true;
        }
    }
    return false;
}

static const char *bundle_name(const DextPersonality *p)
{
    return p->bundle && p->bundle->name ? p->bundle->name : "";
}

static int cmp_result(gconstpointer a, gconstpointer b)
{
    const DextMatchResult *x = a, *y = b;
    int c = strcmp(x->p->match_category, y->p->match_category);
    if (c) {
        return c;
    }
    if (x->p->probe_score != y->p->probe_score) {
        return x->p->probe_score > y->p->probe_score ? -1 : 1;
    }
    if (x->specificity != y->specificity) {
        return x->specificity > y->specificity ? -1 : 1;
    }
    c = strcmp(bundle_name(x->p), bundle_name(y->p));
    return c ? c : strcmp(x->p->name, y->p->name);
}

GArray *dext_match_select(GPtrArray *personalities, const DextDeviceInfo *dev, GString *log)
{
    GArray *cand = g_array_new(FALSE, FALSE, sizeof(DextMatchResult));
    GArray *win = g_array_new(FALSE, FALSE, sizeof(DextMatchResult));

    for (guint i = 0; i < personalities->len; i++) {
        DextMatchResult r = { personalities->pdata[i], 0 };
        if (dext_personality_matches(r.p, dev, &r.specificity)) {
            g_array_append_val(cand, r);
        }
    }
    g_array_sort(cand, cmp_result);
    const char *cat = NULL;
    for (guint i = 0; i < cand->len; i++) {
        DextMatchResult *r = &g_array_index(cand, DextMatchResult, i);
        if (cat && !strcmp(cat, r->p->match_category)) {
            if (log) {
                g_string_append_printf(log, "  candidate %s/%s (score %d, specificity %u) "
                                       "loses to a better match in category %s\n",
                                       bundle_name(r->p), r->p->name, r->p->probe_score,
                                       r->specificity, cat);
            }
            continue;
        }
        char *why = NULL;
        if (r->p->bundle && !dext_bundle_entitled(r->p->bundle, dev, &why)) {
            if (log) {
                g_string_append_printf(log, "  refused %s/%s (score %d): %s\n",
                                       bundle_name(r->p), r->p->name, r->p->probe_score, why);
            }
            g_free(why);
            continue;
        }
        if (log) {
            g_string_append_printf(log, "  matched %s/%s (class %s, server %s, score %d, "
                                   "specificity %u, category %s)\n", bundle_name(r->p),
                                   r->p->name, r->p->user_class, r->p->server_name,
                                   r->p->probe_score, r->specificity, r->p->match_category);
        }
        g_array_append_val(win, *r);
        cat = r->p->match_category;
    }
    g_array_free(cand, TRUE);
    return win;
}

/* ---- app entitlements ------------------------------------------------ */

void dext_app_entitlements_free(DextAppEntitlements *a)
{
    if (a) {
        g_free(a->id);
        g_strfreev(a->uc_access);
        g_free(a);
    }
}

DextAppEntitlements *dext_app_entitlements_parse(const char *file, const char *data,
                                                 gsize len, GError **err)
{
    Src s = { file, g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL) };
    GKeyFile *kf = g_key_file_new();
    DextAppEntitlements *a = g_new0(DextAppEntitlements, 1);
    char **groups = NULL, **keys = NULL;

    if (!scan_syntax(&s, data, len, err)) {
        goto fail;
    }
    if (!g_key_file_load_from_data(kf, data, len, G_KEY_FILE_NONE, NULL)) {
        set_err(err, file, 1, "cannot load key file");
        goto fail;
    }
    groups = g_key_file_get_groups(kf, NULL);
    for (char **g = groups; *g; g++) {
        if (strcmp(*g, "App")) {
            set_err(err, file, src_line(&s, *g, NULL), "unknown group [%s] (App)", *g);
            goto fail;
        }
    }
    if (!g_key_file_has_group(kf, "App")) {
        set_err(err, file, 1, "no [App] group");
        goto fail;
    }
    keys = g_key_file_get_keys(kf, "App", NULL, NULL);
    for (char **k = keys; *k; k++) {
        char *v = get_value(kf, &s, "App", *k, err);
        if (!v) {
            goto fail;
        }
        if (!strcmp(*k, "Id")) {
            a->id = v;
        } else if (!strcmp(*k, "userclient-access")) {
            a->uc_access = g_strsplit_set(v, " \t", -1);
            g_free(v);
        } else if (!strcmp(*k, "dextd-control")) {
            if (strcmp(v, "true") && strcmp(v, "false")) {
                set_err(err, file, src_line(&s, "App", *k), "dextd-control must be true or false");
                g_free(v);
                goto fail;
            }
            a->control = !strcmp(v, "true");
            g_free(v);
        } else {
            set_err(err, file, src_line(&s, "App", *k),
                    "unknown key %s in [App] (Id, userclient-access, dextd-control)", *k);
            g_free(v);
            goto fail;
        }
    }
    if (!a->id) {
        set_err(err, file, src_line(&s, "App", NULL), "[App] lacks Id");
        goto fail;
    }
    g_strfreev(keys);
    g_strfreev(groups);
    g_key_file_free(kf);
    g_hash_table_destroy(s.lines);
    return a;
fail:
    g_strfreev(keys);
    g_strfreev(groups);
    g_key_file_free(kf);
    g_hash_table_destroy(s.lines);
    dext_app_entitlements_free(a);
    return NULL;
}

DextAppEntitlements *dext_app_entitlements_load(const char *path, GError **err)
{
    char *data;
    gsize len;
    if (!g_file_get_contents(path, &data, &len, err)) {
        return NULL;
    }
    DextAppEntitlements *a = dext_app_entitlements_parse(path, data, len, err);
    g_free(data);
    return a;
}

bool dext_app_may_open(const DextAppEntitlements *a, const char *server_name)
{
    if (!a || !a->uc_access) {
        return false;
    }
    for (char **s = a->uc_access; *s; s++) {
        if (**s && (!strcmp(*s, "*") || !strcmp(*s, server_name))) {
            return true;
        }
    }
    return false;
}
