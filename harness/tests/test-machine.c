/* Machine descriptions: sizes, device order, every malformed input refused
 * with the file name in the message. */
#include "cunit-main.h"
#include "daemon.h"
#include "cpu-list.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

static DextdMachine *parse(const char *t, GError **err)
{
    return dextd_machine_parse("m.machine", t, strlen(t), err);
}

static void test_good(void)
{
    GError *err = NULL;
    DextdMachine *m = parse("[Machine]\nType=pc\nMemory=512M\nDmaMemory=0x4000000\nTimeout=5000\n"
                            "QemuLog=/tmp/q.log\nExtraArgs=-d guest_errors\n"
                            "[Device rp0]\nArgs=pcie-root-port,id=rp0\n"
                            "[Device dma0]\nArgs= dextlab-dma,bus=rp0 \n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    const DextMachineDesc *d = dextd_machine_desc(m);
    CU_ASSERT_STRING_EQUAL(d->machine, "pc");
    CU_ASSERT_EQUAL(d->ram_size, 512ull << 20);
    CU_ASSERT_EQUAL(d->dma_size, 64ull << 20);
    CU_ASSERT_EQUAL(d->timeout_ms, 5000);
    CU_ASSERT_STRING_EQUAL(d->qemu_log_path, "/tmp/q.log");
    CU_ASSERT_STRING_EQUAL(d->devices[0], "pcie-root-port,id=rp0");
    CU_ASSERT_STRING_EQUAL(d->devices[1], "dextlab-dma,bus=rp0");
    CU_ASSERT_PTR_NULL(d->devices[2]);
    CU_ASSERT_STRING_EQUAL(d->extra_args[0], "-d");
    dextd_machine_free(m);

    m = parse("[Machine]\n", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_PTR_NULL(dextd_machine_desc(m)->devices[0]);
    CU_ASSERT_PTR_NULL(dextd_machine_desc(m)->machine); /* platform default */
    dextd_machine_free(m);
}

static void test_bad(void)
{
    static const char *const bad[] = {
        "[Machine]\nType=arm\n",
        "[Machine]\nMemory=lots\n",
        "[Machine]\nMemory=1T\n",
        "[Machine]\nMemory=99999999999999999999\n",
        "[Machine]\nTimeout=0\n",
        "[Machine]\nColour=blue\n",
        "[Device x]\n",
        "[Device x]\nArgs=\n",
        "[Device x]\nArgs=e1000\nBus=pci.0\n",
        "[Devices]\nArgs=e1000\n",
        "no group\n",
    };
    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        GError *err = NULL;
        DextdMachine *m = parse(bad[i], &err);
        CU_ASSERT_PTR_NULL(m);
        CU_ASSERT(err && g_str_has_prefix(err->message, "m.machine"));
        if (m) {
            printf("\ncase %zu parsed\n", i);
            dextd_machine_free(m);
        }
        g_clear_error(&err);
    }
}

/* EmulatorCpus=: the text reaches the descriptor as written (stripped) and
 * names the CPUs the platform will bind QEMU to. */
static void test_emulator_cpus_good(void)
{
    long conf = sysconf(_SC_NPROCESSORS_CONF);
    char *all = g_strdup_printf("0-%ld", conf - 1);
    char *last = g_strdup_printf(" 0 , %ld ", conf - 1);
    char *dup = g_strdup_printf("0-%ld,0", conf - 1);
    const struct {
        const char *value;          /* as written after EmulatorCpus= */
        const char *desc;           /* expected in the descriptor */
        int count;                  /* CPUs in the set */
    } good[] = {
        { "0", "0", 1 },
        { "0-0", "0-0", 1 },
        { all, all, (int)conf },
        { last, g_strstrip(g_strdup(last)), conf > 1 ? 2 : 1 },
        { dup, dup, (int)conf },
    };

    CU_ASSERT_FATAL(conf >= 1 && conf < CPU_SETSIZE);
    for (size_t i = 0; i < G_N_ELEMENTS(good); i++) {
        char *t = g_strdup_printf("[Machine]\nEmulatorCpus=%s\n", good[i].value);
        GError *err = NULL;
        DextdMachine *m = parse(t, &err);
        cpu_set_t set;

        CU_ASSERT_PTR_NOT_NULL(m);
        if (!m) {
            printf("\n\"%s\" refused: %s\n", good[i].value, err ? err->message : "?");
            g_clear_error(&err);
            g_free(t);
            continue;
        }
        const DextMachineDesc *d = dextd_machine_desc(m);
        CU_ASSERT_STRING_EQUAL(d->emulator_cpus, good[i].desc);
        CU_ASSERT_EQUAL(dext_cpu_list_parse(d->emulator_cpus, &set, NULL), 0);
        CU_ASSERT_EQUAL(CPU_COUNT(&set), good[i].count);
        CU_ASSERT(CPU_ISSET(0, &set));
        CU_ASSERT_EQUAL(CPU_ISSET(conf - 1, &set), i >= 2 || conf == 1);
        dextd_machine_free(m);
        g_free(t);
    }
    g_free((char *)good[3].desc);

    /* a set with holes: exactly the CPUs named */
    if (conf >= 4) {
        cpu_set_t set;
        CU_ASSERT_EQUAL(dext_cpu_list_parse("1,3", &set, NULL), 0);
        CU_ASSERT_EQUAL(CPU_COUNT(&set), 2);
        CU_ASSERT(!CPU_ISSET(0, &set) && CPU_ISSET(1, &set) &&
                  !CPU_ISSET(2, &set) && CPU_ISSET(3, &set));
    }

    /* no key: no pinning */
    DextdMachine *m = parse("[Machine]\nType=q35\n", NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    CU_ASSERT_PTR_NULL(dextd_machine_desc(m)->emulator_cpus);
    dextd_machine_free(m);
    g_free(all);
    g_free(last);
    g_free(dup);
}

static void test_emulator_cpus_bad(void)
{
    long conf = sysconf(_SC_NPROCESSORS_CONF);
    char *absent = g_strdup_printf("%ld", conf);            /* not on this host */
    char *absent_range = g_strdup_printf("0-%ld", conf);
    char *setsize = g_strdup_printf("%d", CPU_SETSIZE);
    const char *const bad[] = {
        "",                     /* empty */
        "   ",
        ",",
        "0,",
        ",0",
        "0,,0",
        "x",                    /* syntax */
        "0x1",
        "-1",
        "+1",
        "1-",
        "-",
        "0-1-2",
        "0 - 0",
        "0:1",
        "0;1",
        "1-0",                  /* reversed */
        "3-2",
        setsize,                /* >= CPU_SETSIZE */
        "99999999999999999999",
        "0-99999999999999999999",
        absent,                 /* not configured here */
        absent_range,
    };

    for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
        char *t = g_strdup_printf("[Machine]\nEmulatorCpus=%s\n", bad[i]);
        GError *err = NULL;
        DextdMachine *m = parse(t, &err);
        cpu_set_t set;

        CU_ASSERT_PTR_NULL(m);
        CU_ASSERT(err && g_str_has_prefix(err->message, "m.machine") &&
                  strstr(err->message, "EmulatorCpus"));
        if (m) {
            printf("\ncase \"%s\" parsed\n", bad[i]);
            dextd_machine_free(m);
        }
        g_clear_error(&err);
        /* the platform's check is the same parser: refused there too */
        CU_ASSERT_EQUAL(dext_cpu_list_parse(bad[i], &set, NULL), -EINVAL);
        g_free(t);
    }

    /* the reason is in the message */
    GError *err = NULL;
    char *t = g_strdup_printf("[Machine]\nEmulatorCpus=%s\n", absent);
    CU_ASSERT_PTR_NULL(parse(t, &err));
    CU_ASSERT(err && strstr(err->message, "not configured"));
    g_clear_error(&err);
    g_free(t);
    CU_ASSERT_PTR_NULL(parse("[Machine]\nEmulatorCpus=1-0\n", &err));
    CU_ASSERT(err && strstr(err->message, "reversed"));
    g_clear_error(&err);
    g_free(absent);
    g_free(absent_range);
    g_free(setsize);
}

static void test_policy(void)
{
    DextdEndInfo i = { .server_name = "s", .reason = DEXTD_END_CRASHED, .recent_crashes = 1 };
    DextdRelaunch r = dextd_default_relaunch_policy(&i, NULL);
    CU_ASSERT(r.relaunch);
    CU_ASSERT_EQUAL(r.delay_ms, 100);
    i.recent_crashes = 4;
    r = dextd_default_relaunch_policy(&i, NULL);
    CU_ASSERT(r.relaunch);
    CU_ASSERT_EQUAL(r.delay_ms, 800);
    i.recent_crashes = 5;
    CU_ASSERT(!dextd_default_relaunch_policy(&i, NULL).relaunch);
    i.recent_crashes = 1;
    i.reason = DEXTD_END_EXITED;
    CU_ASSERT(!dextd_default_relaunch_policy(&i, NULL).relaunch);
    i.reason = DEXTD_END_HUNG;
    CU_ASSERT(dextd_default_relaunch_policy(&i, NULL).relaunch);
    i.shutting_down = true;
    CU_ASSERT(!dextd_default_relaunch_policy(&i, NULL).relaunch);
}

int main(void)
{
    static const DextTest tests[] = {
        { "good", test_good },
        { "bad", test_bad },
        { "emulator-cpus-good", test_emulator_cpus_good },
        { "emulator-cpus-bad", test_emulator_cpus_bad },
        { "relaunch-policy", test_policy },
        { NULL, NULL },
    };
    return dext_cunit_run("machine", tests);
}
