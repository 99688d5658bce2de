/* Registry: tree links, ids, properties, removal, text and JSON dumps. */
#include "cunit-main.h"
#include "registry.h"

#include <json-glib/json-glib.h>
#include <string.h>

static void test_tree(void)
{
    DextRegistry *r = dext_registry_new();
    DextRegEntry *root = dext_registry_root(r);
    DextRegEntry *host = dext_registry_add(r, NULL, "pci0000:00", "IOPCIHostBridge");
    DextRegEntry *rp = dext_registry_add(r, host, "0000:00:02.0", "IOPCIDevice");
    DextRegEntry *ep = dext_registry_add(r, rp, "0000:01:00.0", "IOPCIDevice");
    DextRegEntry *drv = dext_registry_add(r, ep, "DextTestDriver", "DextTestDriver");
    CU_ASSERT_PTR_EQUAL(dext_reg_entry_provider(host), root);
    CU_ASSERT_PTR_EQUAL(dext_reg_entry_provider(drv), ep);
    CU_ASSERT_EQUAL(dext_reg_entry_clients(rp)->len, 1);
    CU_ASSERT_PTR_EQUAL(dext_registry_lookup(r, dext_reg_entry_id(ep)), ep);
    CU_ASSERT_NOT_EQUAL(dext_reg_entry_id(ep), dext_reg_entry_id(drv));
    char *path = dext_reg_entry_path(drv);
    CU_ASSERT_STRING_EQUAL(path, "Root/pci0000:00/0000:00:02.0/0000:01:00.0/DextTestDriver");
    g_free(path);

    uint64_t ep_id = dext_reg_entry_id(ep), drv_id = dext_reg_entry_id(drv);
    CU_ASSERT_EQUAL(dext_registry_remove(r, ep), 0);
    CU_ASSERT_PTR_NULL(dext_registry_lookup(r, ep_id));
    CU_ASSERT_PTR_NULL(dext_registry_lookup(r, drv_id));
    CU_ASSERT_EQUAL(dext_reg_entry_clients(rp)->len, 0);
    CU_ASSERT_EQUAL(dext_registry_remove(r, root), -22);
    /* ids are never reused */
    DextRegEntry *n = dext_registry_add(r, rp, "again", "X");
    CU_ASSERT(dext_reg_entry_id(n) > drv_id);
    dext_registry_free(r);
}

static void test_props_and_dumps(void)
{
    DextRegistry *r = dext_registry_new();
    DextRegEntry *ep = dext_registry_add(r, NULL, "0000:00:03.0", "IOPCIDevice");
    dext_reg_entry_set(ep, "vendor-id", g_variant_new_uint16(0x1af4));
    dext_reg_entry_set(ep, "device-id", g_variant_new_uint16(0x1000));
    dext_reg_entry_set(ep, "name", g_variant_new_string("net"));
    dext_reg_entry_set(ep, "tmp", g_variant_new_boolean(TRUE));
    dext_reg_entry_set(ep, "tmp", NULL);
    CU_ASSERT_PTR_NULL(dext_reg_entry_get(ep, "tmp"));
    CU_ASSERT_EQUAL(g_variant_get_uint16(dext_reg_entry_get(ep, "vendor-id")), 0x1af4);
    dext_registry_add(r, ep, "Drv", "NetDriver");

    GVariant *all = dext_reg_entry_properties(ep);
    CU_ASSERT_EQUAL(g_variant_n_children(all), 3);
    const char *k0;
    g_variant_get_child(all, 0, "{&sv}", &k0, NULL);
    CU_ASSERT_STRING_EQUAL(k0, "device-id"); /* sorted */
    g_variant_unref(g_variant_ref_sink(all));

    char *t = dext_registry_dump_text(r, NULL);
    CU_ASSERT(strstr(t, "+-o Root  <class IORegistryEntry, id 0x1>") == t);
    CU_ASSERT(strstr(t, "+-o 0000:00:03.0  <class IOPCIDevice") != NULL);
    CU_ASSERT(strstr(t, "\"vendor-id\" = 0x1af4") != NULL);
    CU_ASSERT(strstr(t, "+-o Drv  <class NetDriver") != NULL);
    /* The device's properties come before its client */
    CU_ASSERT(strstr(t, "vendor-id") < strstr(t, "+-o Drv"));
    g_free(t);

    char *j = dext_registry_dump_json(r, NULL, FALSE);
    JsonParser *p = json_parser_new();
    CU_ASSERT_FATAL(json_parser_load_from_data(p, j, -1, NULL));
    JsonObject *root = json_node_get_object(json_parser_get_root(p));
    CU_ASSERT_STRING_EQUAL(json_object_get_string_member(root, "class"), "IORegistryEntry");
    JsonArray *cl = json_object_get_array_member(root, "clients");
    CU_ASSERT_EQUAL_FATAL(json_array_get_length(cl), 1);
    JsonObject *dev = json_array_get_object_element(cl, 0);
    JsonObject *props = json_object_get_object_member(dev, "properties");
    CU_ASSERT_EQUAL(json_object_get_int_member(props, "vendor-id"), 0x1af4);
    CU_ASSERT_STRING_EQUAL(json_object_get_string_member(props, "name"), "net");
    CU_ASSERT_EQUAL(json_array_get_length(json_object_get_array_member(dev, "clients")), 1);
    g_object_unref(p);
    g_free(j);
    dext_registry_free(r);
}

static gboolean count_visit(DextRegEntry *e, unsigned depth, void *opaque)
{
    unsigned *n = opaque;
    (*n)++;
    return *n < 3;
}

static void test_walk(void)
{
    DextRegistry *r = dext_registry_new();
    DextRegEntry *a = dext_registry_add(r, NULL, "a", "A");
    dext_registry_add(r, a, "b", "B");
    dext_registry_add(r, a, "c", "C");
    dext_registry_add(r, NULL, "d", "D");
    unsigned n = 0;
    dext_registry_walk(r, NULL, count_visit, &n);
    CU_ASSERT_EQUAL(n, 3); /* stopped early */
    dext_registry_free(r);
}

int main(void)
{
    static const DextTest tests[] = {
        { "tree", test_tree },
        { "props-and-dumps", test_props_and_dumps },
        { "walk", test_walk },
        { NULL, NULL },
    };
    return dext_cunit_run("registry", tests);
}
