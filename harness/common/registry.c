/*
 * Registry tree and its ioreg-style / JSON dumps.
 */
#include "registry.h"

#include <errno.h>
#include <json-glib/json-glib.h>
#include <string.h>

struct DextRegEntry {
    uint64_t id;
    char *name;
    char *class_name;
    DextRegEntry *provider;
    GPtrArray *clients;      /* DextRegEntry*, not owning (registry owns) */
    GHashTable *props;       /* char* -> GVariant* */
};

struct DextRegistry {
    DextRegEntry *root;
    GHashTable *by_id;       /* uint64 id -> entry (owning) */
    uint64_t next_id;
};

static void entry_free(gpointer data)
{
    DextRegEntry *e = data;
    g_free(e->name);
    g_free(e->class_name);
    g_ptr_array_free(e->clients, TRUE);
    g_hash_table_destroy(e->props);
    g_free(e);
}

static DextRegEntry *entry_new(DextRegistry *r, const char *name, const char *cls)
{
    DextRegEntry *e = g_new0(DextRegEntry, 1);
    e->id = r->next_id++;
    e->name = g_strdup(name);
    e->class_name = g_strdup(cls);
    e->clients = g_ptr_array_new();
    e->props = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                     (GDestroyNotify)g_variant_unref);
    g_hash_table_insert(r->by_id, &e->id, e);
    return e;
}

DextRegistry *dext_registry_new(void)
{
    DextRegistry *r = g_new0(DextRegistry, 1);
    r->by_id = g_hash_table_new_full(g_int64_hash, g_int64_equal, NULL, entry_free);
    r->next_id = 1;
    r->root = entry_new(r, "Root", "IORegistryEntry");
    return r;
}

void dext_registry_free(DextRegistry *r)
{
    if (r) {
        g_hash_table_destroy(r->by_id);
        g_free(r);
    }
}

DextRegEntry *dext_registry_root(DextRegistry *r) { return r->root; }

DextRegEntry *dext_registry_add(DextRegistry *r, DextRegEntry *provider,
                                const char *name, const char *class_name)
{
    g_return_val_if_fail(name && class_name, NULL);
    DextRegEntry *e = entry_new(r, name, class_name);
    e->provider = provider ? provider : r->root;
    g_ptr_array_add(e->provider->clients, e);
    return e;
}

static void remove_rec(DextRegistry *r, DextRegEntry *e)
{
    while (e->clients->len) {
        DextRegEntry *c = e->clients->pdata[e->clients->len - 1];
        g_ptr_array_remove_index(e->clients, e->clients->len - 1);
        remove_rec(r, c);
    }
    g_hash_table_remove(r->by_id, &e->id);
}

int dext_registry_remove(DextRegistry *r, DextRegEntry *e)
{
    if (!e || e == r->root) {
        return -EINVAL;
    }
    g_ptr_array_remove(e->provider->clients, e);
    remove_rec(r, e);
    return 0;
}

DextRegEntry *dext_registry_lookup(DextRegistry *r, uint64_t id)
{
    return g_hash_table_lookup(r->by_id, &id);
}

uint64_t dext_reg_entry_id(const DextRegEntry *e) { return e->id; }
const char *dext_reg_entry_name(const DextRegEntry *e) { return e->name; }
const char *dext_reg_entry_class(const DextRegEntry *e) { return e->class_name; }
DextRegEntry *dext_reg_entry_provider(const DextRegEntry *e) { return e->provider; }
GPtrArray *dext_reg_entry_clients(const DextRegEntry *e) { return e->clients; }

char *dext_reg_entry_path(const DextRegEntry *e)
{
    GPtrArray *parts = g_ptr_array_new();
    for (const DextRegEntry *x = e; x; x = x->provider) {
        g_ptr_array_insert(parts, 0, x->name);
    }
    g_ptr_array_add(parts, NULL);
    char *s = g_strjoinv("/", (char **)parts->pdata);
    g_ptr_array_free(parts, TRUE);
    return s;
}

void dext_reg_entry_set(DextRegEntry *e, const char *key, GVariant *value)
{
    if (!value) {
        g_hash_table_remove(e->props, key);
        return;
    }
    g_hash_table_insert(e->props, g_strdup(key), g_variant_ref_sink(value));
}

GVariant *dext_reg_entry_get(const DextRegEntry *e, const char *key)
{
    return g_hash_table_lookup(e->props, key);
}

static GList *sorted_keys(const DextRegEntry *e)
{
    return g_list_sort(g_hash_table_get_keys(e->props), (GCompareFunc)strcmp);
}

GVariant *dext_reg_entry_properties(const DextRegEntry *e)
{
    GVariantBuilder b;
    g_variant_builder_init(&b, G_VARIANT_TYPE("a{sv}"));
    GList *keys = sorted_keys(e);
    for (GList *l = keys; l; l = l->next) {
        g_variant_builder_add(&b, "{sv}", l->data, g_hash_table_lookup(e->props, l->data));
    }
    g_list_free(keys);
    return g_variant_builder_end(&b);
}

static gboolean walk_rec(DextRegEntry *e, unsigned depth, DextRegVisitFn fn, void *opaque)
{
    if (!fn(e, depth, opaque)) {
        return FALSE;
    }
    for (guint i = 0; i < e->clients->len; i++) {
        if (!walk_rec(e->clients->pdata[i], depth + 1, fn, opaque)) {
            return FALSE;
        }
    }
    return TRUE;
}

void dext_registry_walk(DextRegistry *r, DextRegEntry *from, DextRegVisitFn fn, void *opaque)
{
    walk_rec(from ? from : r->root, 0, fn, opaque);
}

/* Unsigned integers print in hex (ids, addresses), the rest as GVariant text. */
static char *format_value(GVariant *v)
{
    if (g_variant_is_of_type(v, G_VARIANT_TYPE_BYTE)) {
        return g_strdup_printf("0x%x", g_variant_get_byte(v));
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT16)) {
        return g_strdup_printf("0x%x", g_variant_get_uint16(v));
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT32)) {
        return g_strdup_printf("0x%x", g_variant_get_uint32(v));
    } else if (g_variant_is_of_type(v, G_VARIANT_TYPE_UINT64)) {
        return g_strdup_printf("0x%" G_GINT64_MODIFIER "x", g_variant_get_uint64(v));
    }
    return g_variant_print(v, FALSE);
}

/* ioreg style: "+-o name  <class X, id 0x..>" then properties indented by
 * "| " guides for siblings still to come. */
static void text_rec(GString *s, DextRegEntry *e, GString *prefix, gboolean last)
{
    g_string_append_printf(s, "%s+-o %s  <class %s, id 0x%" G_GINT64_MODIFIER "x>\n",
                           prefix->str, e->name, e->class_name, e->id);
    gsize plen = prefix->len;
    g_string_append(prefix, last ? "  " : "| ");
    const char *guide = e->clients->len ? "| " : "  ";
    if (g_hash_table_size(e->props)) {
        g_string_append_printf(s, "%s%s{\n", prefix->str, guide);
        GList *keys = sorted_keys(e);
        for (GList *l = keys; l; l = l->next) {
            char *v = format_value(g_hash_table_lookup(e->props, l->data));
            g_string_append_printf(s, "%s%s  \"%s\" = %s\n", prefix->str, guide,
                                   (char *)l->data, v);
            g_free(v);
        }
        g_list_free(keys);
        g_string_append_printf(s, "%s%s}\n", prefix->str, guide);
    }
    for (guint i = 0; i < e->clients->len; i++) {
        text_rec(s, e->clients->pdata[i], prefix, i + 1 == e->clients->len);
    }
    g_string_truncate(prefix, plen);
}

char *dext_registry_dump_text(DextRegistry *r, DextRegEntry *from)
{
    GString *s = g_string_new(NULL);
    GString *prefix = g_string_new(NULL);
    text_rec(s, from ? from : r->root, prefix, TRUE);
    g_string_free(prefix, TRUE);
    return g_string_free(s, FALSE);
}

static JsonNode *json_rec(DextRegEntry *e)
{
    JsonObject *o = json_object_new();
    json_object_set_int_member(o, "id", (gint64)e->id);
    json_object_set_string_member(o, "name", e->name);
    json_object_set_string_member(o, "class", e->class_name);
    JsonObject *props = json_object_new();
    GList *keys = sorted_keys(e);
    for (GList *l = keys; l; l = l->next) {
        json_object_set_member(props, l->data,
                               json_gvariant_serialize(g_hash_table_lookup(e->props, l->data)));
    }
    g_list_free(keys);
    json_object_set_object_member(o, "properties", props);
    JsonArray *a = json_array_new();
    for (guint i = 0; i < e->clients->len; i++) {
        json_array_add_element(a, json_rec(e->clients->pdata[i]));
    }
    json_object_set_array_member(o, "clients", a);
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    json_node_take_object(n, o);
    return n;
}

char *dext_registry_dump_json(DextRegistry *r, DextRegEntry *from, gboolean pretty)
{
    JsonNode *n = json_rec(from ? from : r->root);
    JsonGenerator *g = json_generator_new();
    json_generator_set_pretty(g, pretty);
    json_generator_set_root(g, n);
    char *s = json_generator_to_data(g, NULL);
    g_object_unref(g);
    json_node_unref(n);
    return s;
}
