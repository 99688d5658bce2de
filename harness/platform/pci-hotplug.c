/*
 * PCIe hot-unplug for the platform cache.  QEMU's native PCIe hotplug
 * only completes a device_del once the OS powers the slot off (pciehp's
 * job); under qtest there is no OS, so the platform does that part.
 */
#include <errno.h>
#include <string.h>

#include <json-glib/json-glib.h>

#include "platform-backend.h"

#define PCI_EXP_SLTCAP      0x14
#define PCI_EXP_SLTCAP_HPC  0x0040
#define PCI_EXP_SLTCTL      0x18
#define PCI_EXP_SLTCTL_PIC  0x0300
#define PCI_EXP_SLTCTL_PIC_ON   0x0100
#define PCI_EXP_SLTCTL_PIC_OFF  0x0300
#define PCI_EXP_SLTCTL_PCC  0x0400

/* Depth-first search of query-pci devices for bus/slot/function: a
 * bridge's devices are in its "pci_bridge" member. */
static const char *find_in_devices(JsonArray *devs, DextPciAddr a)
{
    for (guint j = 0; devs && j < json_array_get_length(devs); j++) {
        JsonObject *d = json_array_get_object_element(devs, j);
        JsonObject *br;

        if (!d) {
            continue;
        }
        if (json_object_get_int_member_with_default(d, "bus", -1) == a.bus &&
            json_object_get_int_member_with_default(d, "slot", -1) == a.dev &&
            json_object_get_int_member_with_default(d, "function", -1) ==
                a.fn) {
            return json_object_get_string_member_with_default(d, "qdev_id",
                                                              "");
        }
        br = json_object_has_member(d, "pci_bridge")
             ? json_object_get_object_member(d, "pci_bridge") : NULL;
        if (br && json_object_has_member(br, "devices")) {
            const char *r = find_in_devices(
                json_object_get_array_member(br, "devices"), a);

            if (r) {
                return r;
            }
        }
    }
    return NULL;
}

static const char *find_qdev_id(JsonArray *buses, DextPciAddr a)
{
    for (guint i = 0; buses && i < json_array_get_length(buses); i++) {
        JsonObject *bus = json_array_get_object_element(buses, i);
        const char *r;

        if (bus && json_object_has_member(bus, "devices") &&
            (r = find_in_devices(json_object_get_array_member(bus, "devices"),
                                 a))) {
            return r;
        }
    }
    return NULL;
}

int dext_platform_pci_unplug(DextPlatform *p, DextPciAddr addr)
{
    DextPciFunction f, port;
    JsonParser *jp = NULL;
    char *ret = NULL, *args = NULL, *ev = NULL, *id = NULL;
    const char *qid;
    uint32_t cap = 0, ctl = 0;
    gint64 end;
    int r, idx;
    char b[13];

    r = dext_platform_pci_get(p, addr, &f);
    if (r < 0) {
        return r;
    }
    if (!f.has_parent || dext_platform_pci_get(p, f.parent, &port) < 0 ||
        !port.pcie_cap) {
        return dext_platform_set_error(p, -ENOTSUP, "%s is not behind a PCIe "
                                       "port", dext_pci_addr_format(addr, b));
    }
    r = p->ops->cfg_read(p, port.addr, port.pcie_cap + PCI_EXP_SLTCAP, 4,
                         &cap);
    if (r < 0) {
        return r;
    }
    if (!(cap & PCI_EXP_SLTCAP_HPC)) {
        return dext_platform_set_error(p, -ENOTSUP, "port of %s is not hot-"
                                       "plug capable",
                                       dext_pci_addr_format(addr, b));
    }
    r = dext_platform_qmp(p, "query-pci", NULL, &ret);
    if (r < 0) {
        return r;
    }
    jp = json_parser_new();
    if (!json_parser_load_from_data(jp, ret, -1, NULL) ||
        !JSON_NODE_HOLDS_ARRAY(json_parser_get_root(jp))) {
        r = dext_platform_set_error(p, -EPROTO, "query-pci: unexpected reply");
        goto out;
    }
    /* function 0 carries the device's identity for device_del */
    addr.fn = 0;
    qid = find_qdev_id(json_node_get_array(json_parser_get_root(jp)), addr);
    if (!qid || !*qid) {
        r = dext_platform_set_error(p, -ENOTSUP, "%s has no qdev id; "
                                    "create it with id=...",
                                    dext_pci_addr_format(addr, b));
        goto out;
    }
    id = g_strdup(qid);
    {
        JsonBuilder *jb = json_builder_new();
        JsonGenerator *gen = json_generator_new();
        JsonNode *root;

        json_builder_begin_object(jb);
        json_builder_set_member_name(jb, "id");
        json_builder_add_string_value(jb, id);
        json_builder_end_object(jb);
        root = json_builder_get_root(jb);
        json_generator_set_root(gen, root);
        args = json_generator_to_data(gen, NULL);
        json_node_unref(root);
        g_object_unref(gen);
        g_object_unref(jb);
    }
    r = dext_platform_qmp(p, "device_del", args, NULL);
    if (r < 0) {
        goto out;
    }
    /* the OS's part: indicator off, power off */
    g_mutex_lock(&p->cfg_lock);
    r = p->ops->cfg_read(p, port.addr, port.pcie_cap + PCI_EXP_SLTCTL, 2,
                         &ctl);
    if (r == 0) {
        r = p->ops->cfg_write(p, port.addr, port.pcie_cap + PCI_EXP_SLTCTL, 2,
                              (ctl & ~PCI_EXP_SLTCTL_PIC) |
                              PCI_EXP_SLTCTL_PIC_OFF | PCI_EXP_SLTCTL_PCC);
    }
    g_mutex_unlock(&p->cfg_lock);
    if (r < 0) {
        goto out;
    }
    end = g_get_monotonic_time() + (gint64)p->timeout_ms * 1000;
    for (;;) {
        gint64 left = (end - g_get_monotonic_time()) / 1000;

        if (left <= 0) {
            r = dext_platform_set_error(p, -ETIMEDOUT, "%s: no DEVICE_DELETED "
                                        "for '%s'", dext_pci_addr_format(addr,
                                        b), id);
            goto out;
        }
        r = dext_platform_qmp_wait_event(p, "DEVICE_DELETED", left, &ev);
        if (r < 0) {
            goto out;
        }
        if (strstr(ev, id)) {
            break;        /* events for other devices are dropped */
        }
        g_clear_pointer(&ev, g_free);
    }
    /* power back on so the slot takes a later device_add */
    g_mutex_lock(&p->cfg_lock);
    r = p->ops->cfg_write(p, port.addr, port.pcie_cap + PCI_EXP_SLTCTL, 2,
                          (ctl & ~(PCI_EXP_SLTCTL_PIC | PCI_EXP_SLTCTL_PCC)) |
                          PCI_EXP_SLTCTL_PIC_ON);
    g_mutex_unlock(&p->cfg_lock);

    /* drop every function on the device's bus slot (and below it) */
    g_mutex_lock(&p->lock);
    for (idx = p->n_fns; idx-- > 0;) {
        DextPciFunction *x = &p->fns[idx];
        bool below = x->addr.bus > port.secondary_bus &&
                     x->addr.bus <= port.subordinate_bus;

        if ((x->addr.bus == addr.bus && x->addr.dev == addr.dev) || below) {
            memmove(x, x + 1, (p->n_fns - idx - 1) * sizeof(*x));
            p->n_fns--;
            g_mutex_unlock(&p->lock);
            if (p->ops->irq_fn_removed) {
                p->ops->irq_fn_removed(p, idx);
            }
            g_mutex_lock(&p->lock);
        }
    }
    g_mutex_unlock(&p->lock);
out:
    if (jp) {
        g_object_unref(jp);
    }
    g_free(ret);
    g_free(args);
    g_free(ev);
    g_free(id);
    return r;
}
