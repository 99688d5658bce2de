/*
 * dextlab's devices are part of the fork: their QOM types are registered,
 * they implement the bus interface they are plugged into, and they realize on
 * the machines dextlab supports.
 *
 * Guards the build pipeline itself (tools/setup, hw/patches, the device
 * list in hw/configs/dextlab.mak): a graft that silently dropped a device, or
 * a Kconfig symbol that no longer selects it, fails here first.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "qapi/qmp/qdict.h"
#include "qapi/qmp/qlist.h"

typedef struct DextlabType {
    const char *name;
    const char *parent_interface;   /* what qom-list-types must say it implements */
} DextlabType;

typedef struct DextlabPlacement {
    const char *name;
    const char *machine;
    const char *args;               /* a command line that plugs one in */
} DextlabPlacement;

static const DextlabType dextlab_types[] = {
    { "dextlab-dma", "pci-device" },
};

static const DextlabPlacement dextlab_placements[] = {
    { "dextlab-dma", "q35",
      "-nodefaults -machine q35 -device pcie-root-port,id=rp0,chassis=1,slot=0 "
      "-device dextlab-dma,bus=rp0" },
    { "dextlab-dma", "pc", "-nodefaults -machine pc -device dextlab-dma" },
};

static bool type_listed(QTestState *qts, const char *implements,
                        const char *name)
{
    QDict *resp;
    QList *list;
    QListEntry *e;
    bool found = false;

    resp = qtest_qmp(qts, "{'execute': 'qom-list-types',"
                     " 'arguments': {'implements': %s, 'abstract': false}}",
                     implements);
    g_assert(qdict_haskey(resp, "return"));
    list = qdict_get_qlist(resp, "return");
    QLIST_FOREACH_ENTRY(list, e) {
        QDict *t = qobject_to(QDict, qlist_entry_obj(e));
        if (g_str_equal(qdict_get_str(t, "name"), name)) {
            found = true;
        }
    }
    qobject_unref(resp);
    return found;
}

/* The type is registered and implements its bus interface. */
static void test_type_registered(const void *data)
{
    const DextlabType *t = data;
    QTestState *qts = qtest_init("-nodefaults -machine none");

    g_assert_true(type_listed(qts, t->parent_interface, t->name));
    qtest_quit(qts);
}

/* The device realizes on the machine, and QOM shows it in the tree. */
static void test_type_realizes(const void *data)
{
    const DextlabPlacement *t = data;
    QTestState *qts = qtest_init(t->args);
    QDict *resp;
    QList *list;
    QListEntry *e;
    bool found = false;

    resp = qtest_qmp(qts, "{'execute': 'qom-list',"
                     " 'arguments': {'path': '/machine/peripheral-anon'}}");
    g_assert(qdict_haskey(resp, "return"));
    list = qdict_get_qlist(resp, "return");
    QLIST_FOREACH_ENTRY(list, e) {
        QDict *p = qobject_to(QDict, qlist_entry_obj(e));
        g_autofree char *want = g_strdup_printf("child<%s>", t->name);
        if (g_str_equal(qdict_get_str(p, "type"), want)) {
            found = true;
        }
    }
    qobject_unref(resp);
    g_assert_true(found);
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);

    for (size_t i = 0; i < G_N_ELEMENTS(dextlab_types); i++) {
        const DextlabType *t = &dextlab_types[i];
        g_autofree char *path = g_strdup_printf("/dextlab-types/%s/registered",
                                                t->name);

        qtest_add_data_func(path, t, test_type_registered);
    }
    for (size_t i = 0; i < G_N_ELEMENTS(dextlab_placements); i++) {
        const DextlabPlacement *t = &dextlab_placements[i];
        g_autofree char *path = g_strdup_printf("/dextlab-types/%s/realizes/%s",
                                                t->name, t->machine);

        qtest_add_data_func(path, t, test_type_realizes);
    }
    return g_test_run();
}
