/*
 * Machine descriptions: a glib key file naming the QEMU machine and the
 * devices to plug, e.g.
 *
 *   [Machine]
 *   Type=q35                 q35 (default) or pc
 *   Memory=256M              guest RAM (multiple of 2M, <= 2G)
 *   DmaMemory=64M            part of RAM reserved for driver DMA buffers
 *   Timeout=10000            ms bound on every platform wait
 *   QemuLog=/tmp/qemu.log    optional: QEMU's stderr
 *   Qemu=/path/to/qemu       optional: QEMU binary
 *   ExtraArgs=-d guest_errors   optional, split on spaces
 *   EmulatorCpus=1           optional: CPU list ("1", "0-3", "2,5-7") QEMU's
 *                            threads are bound to (libvirt's emulatorpin);
 *                            dextd and its drivers are placed with taskset.
 *                            qtest platform only (no QEMU under vfio).
 *
 *   [Device rp0]             one group per -device, in file order
 *   Args=pcie-root-port,id=rp0,chassis=1
 *   [Device dma0]
 *   Args=dextlab-dma,bus=rp0
 */
#include "daemon.h"
#include "cpu-list.h"

#include <errno.h>
#include <string.h>

struct DextdMachine {
    DextMachineDesc desc;
    GPtrArray *devices;   /* char*, NULL-terminated */
    char **extra;
    char *type;
    char *qemu;
    char *log;
    char *cpus;
};

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    guint64 v = g_ascii_strtoull(s, &end, 0);
    if (errno || end == s) {
        return false;
    }
    uint64_t mul = 1;
    switch (g_ascii_toupper(*end)) {
    case 'K': mul = 1ull << 10; end++; break;
    case 'M': mul = 1ull << 20; end++; break;
    case 'G': mul = 1ull << 30; end++; break;
    case '\0': break;
    default: return false;
    }
    if (*end || v > UINT64_MAX / mul) {
        return false;
    }
    *out = v * mul;
    return true;
}

void dextd_machine_free(DextdMachine *m)
{
    if (!m) {
        return;
    }
    g_ptr_array_free(m->devices, TRUE);
    g_strfreev(m->extra);
    g_free(m->type);
    g_free(m->qemu);
    g_free(m->log);
    g_free(m->cpus);
    g_free(m);
}

DextdMachine *dextd_machine_parse(const char *file, const char *data, gsize len, GError **err)
{
    GKeyFile *kf = g_key_file_new();
    DextdMachine *m = g_new0(DextdMachine, 1);
    GError *e = NULL;
    char **groups = NULL;

    m->devices = g_ptr_array_new_with_free_func(g_free);
    if (!g_key_file_load_from_data(kf, data, len, G_KEY_FILE_NONE, &e)) {
        g_set_error(err, G_KEY_FILE_ERROR, e->code, "%s: %s", file, e->message);
        g_error_free(e);
        goto fail;
    }
    groups = g_key_file_get_groups(kf, NULL);
    for (char **g = groups; *g; g++) {
        if (!strcmp(*g, "Machine")) {
            char **keys = g_key_file_get_keys(kf, *g, NULL, NULL);
            for (char **k = keys; *k; k++) {
                char *v = g_key_file_get_string(kf, *g, *k, NULL);
                g_strstrip(v);
                bool ok = true;
                char *why = NULL;
                if (!strcmp(*k, "Type")) {
                    g_free(m->type);
                    m->type = g_strdup(v);
                    ok = !strcmp(v, "q35") || !strcmp(v, "pc");
                } else if (!strcmp(*k, "Memory")) {
                    ok = parse_size(v, &m->desc.ram_size);
                } else if (!strcmp(*k, "DmaMemory")) {
                    ok = parse_size(v, &m->desc.dma_size);
                } else if (!strcmp(*k, "Timeout")) {
                    uint64_t t;
                    ok = parse_size(v, &t) && t > 0 && t < 600000;
                    m->desc.timeout_ms = (unsigned)t;
                } else if (!strcmp(*k, "QemuLog")) {
                    g_free(m->log);
                    m->log = g_strdup(v);
                } else if (!strcmp(*k, "Qemu")) {
                    g_free(m->qemu);
                    m->qemu = g_strdup(v);
                } else if (!strcmp(*k, "ExtraArgs")) {
                    g_strfreev(m->extra);
                    m->extra = g_strsplit_set(v, " ", -1);
                } else if (!strcmp(*k, "EmulatorCpus")) {
                    /* checked now so a typo stops dextd before QEMU runs;
                     * the platform parses the same text again */
                    cpu_set_t set;
                    g_free(m->cpus);
                    m->cpus = g_strdup(v);
                    ok = dext_cpu_list_parse(v, &set, &why) == 0;
                } else {
                    g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_KEY_NOT_FOUND,
                                "%s: unknown key %s in [Machine]", file, *k);
                    g_free(v);
                    g_strfreev(keys);
                    goto fail;
                }
                if (!ok) {
                    g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                                "%s: [Machine] %s: bad value \"%s\"%s%s", file, *k, v,
                                why ? ": " : "", why ? why : "");
                    g_free(why);
                    g_free(v);
                    g_strfreev(keys);
                    goto fail;
                }
                g_free(v);
            }
            g_strfreev(keys);
        } else if (g_str_has_prefix(*g, "Device ")) {
            char *v = g_key_file_get_string(kf, *g, "Args", NULL);
            gsize nk;
            char **keys = g_key_file_get_keys(kf, *g, &nk, NULL);
            g_strfreev(keys);
            if (!v || !*g_strstrip(v) || nk != 1) {
                g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_INVALID_VALUE,
                            "%s: [%s] needs exactly one key, Args=<-device argument>", file, *g);
                g_free(v);
                goto fail;
            }
            g_ptr_array_add(m->devices, v);
        } else {
            g_set_error(err, G_KEY_FILE_ERROR, G_KEY_FILE_ERROR_GROUP_NOT_FOUND,
                        "%s: unknown group [%s] (Machine, Device NAME)", file, *g);
            goto fail;
        }
    }
    g_ptr_array_add(m->devices, NULL);
    m->desc.machine = m->type;
    m->desc.qemu_binary = m->qemu;
    m->desc.qemu_log_path = m->log;
    m->desc.emulator_cpus = m->cpus;
    m->desc.devices = (const char *const *)m->devices->pdata;
    m->desc.extra_args = (const char *const *)m->extra;
    g_strfreev(groups);
    g_key_file_free(kf);
    return m;
fail:
    g_strfreev(groups);
    g_key_file_free(kf);
    dextd_machine_free(m);
    return NULL;
}

DextdMachine *dextd_machine_load(const char *path, GError **err)
{
    char *data;
    gsize len;
    if (!g_file_get_contents(path, &data, &len, err)) {
        return NULL;
    }
    DextdMachine *m = dextd_machine_parse(path, data, len, err);
    g_free(data);
    return m;
}

const DextMachineDesc *dextd_machine_desc(DextdMachine *m)
{
    return &m->desc;
}
