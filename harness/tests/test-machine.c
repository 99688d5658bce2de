/* Machine descriptions: sizes, device order, every malformed input refused
 * with the file name in the message. */
#include "cunit-main.h"
#include "daemon.h"

#include <string.h>

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
        { "relaunch-policy", test_policy },
        { NULL, NULL },
    };
    return dext_cunit_run("machine", tests);
}
