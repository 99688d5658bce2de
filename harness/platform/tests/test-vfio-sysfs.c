/*
 * Unit tests of the VFIO backend's host-independent parts, on a fake sysfs
 * tree (DextVfioDesc.sysfs): backend selection by name, argument checks,
 * which functions it takes, the vfio-pci binding protocol (driver_override,
 * unbind, drivers_probe, each written with the right value) and its
 * failure report, and what a platform without VFIO functions answers.
 * The real thing (IOMMU, VFIO regions, interrupts) runs in the boot tests'
 * guest: /boot/dextlab-dma/platform-*.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <CUnit/Basic.h>
#include <glib.h>
#include <glib/gstdio.h>

#include "platform.h"

/* A sysfs tree with one function 0000:01:00.0 (dec5:0001) bound to
 * driver "foo" and the pieces binding touches. */
static char *fake_sysfs(void)
{
    char *root = g_dir_make_tmp("vfio-sysfs-XXXXXX", NULL);
    g_autofree char *dev = g_build_filename(root, "devices", "pci0000:00",
                                            "0000:00:1c.0", "0000:01:00.0",
                                            NULL);
    g_autofree char *drv = g_build_filename(root, "bus", "pci", "drivers",
                                            "foo", NULL);
    g_autofree char *devs = g_build_filename(root, "bus", "pci", "devices",
                                             NULL);
    g_autofree char *f = NULL;

    g_assert(root);
    g_mkdir_with_parents(dev, 0755);
    g_mkdir_with_parents(drv, 0755);
    g_mkdir_with_parents(devs, 0755);
#define PUT(dir, name, val) do {                                    \
        g_free(f);                                                  \
        f = g_build_filename(dir, name, NULL);                      \
        g_file_set_contents(f, val, -1, NULL);                      \
    } while (0)
    PUT(dev, "vendor", "0xdec5\n");
    PUT(dev, "device", "0x0001\n");
    PUT(dev, "driver_override", "(null)\n");
    PUT(drv, "unbind", "");
    g_free(f);
    f = g_build_filename(root, "bus", "pci", "drivers_probe", NULL);
    g_file_set_contents(f, "", -1, NULL);
    g_free(f);
    f = g_build_filename(dev, "driver", NULL);
    g_assert_cmpint(symlink(drv, f), ==, 0);
    g_free(f);
    f = g_build_filename(devs, "0000:01:00.0", NULL);
    g_assert_cmpint(symlink(dev, f), ==, 0);
    /* something that is not a PCI address is ignored */
    g_free(f);
    f = g_build_filename(devs, "not-a-bdf", NULL);
    g_file_set_contents(f, "", -1, NULL);
#undef PUT
    return root;
}

static void rm_tree(const char *root)
{
    g_autofree char *cmd = g_strdup_printf("rm -rf '%s'", root);

    g_assert_cmpint(system(cmd), ==, 0);
}

static char *slurp(const char *root, const char *rel)
{
    g_autofree char *p = g_build_filename(root, rel, NULL);
    char *s = NULL;

    g_file_get_contents(p, &s, NULL, NULL);
    return s;
}

static void test_factory(void)
{
    DextPlatform *p = NULL;
    int r = dext_platform_create("nonesuch", NULL, &p);

    CU_ASSERT_EQUAL(r, -EINVAL);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_PTR_NOT_NULL(strstr(dext_platform_last_error(NULL), "vfio"));
}

static void test_bad_args(void)
{
    DextVfioDesc d = { .dma_size = 3 << 20 };   /* not 2 MiB granular */
    DextPlatform *p = NULL;

    CU_ASSERT_EQUAL(dext_platform_vfio_create(&d, &p), -EINVAL);
    d.dma_size = 2ull << 30;                     /* above 1 GiB */
    CU_ASSERT_EQUAL(dext_platform_vfio_create(&d, &p), -EINVAL);
    CU_ASSERT_EQUAL(dext_platform_vfio_create(NULL, &p), -EINVAL);
    d.dma_size = 0;
    d.sysfs = "/nonexistent-sysfs";
    CU_ASSERT_EQUAL(dext_platform_vfio_create(&d, &p), -ENOENT);
    CU_ASSERT_PTR_NULL(p);
}

/* No function bound to vfio-pci: an empty machine that says so clearly. */
static void test_no_functions(void)
{
    g_autofree char *root = fake_sysfs();
    DextVfioDesc d = { .sysfs = root, .dma_size = 2 << 20 };
    DextPlatform *p = NULL;
    DextPciFunction *fns = NULL;
    DextDmaRange dr;
    DextPciAddr a = { 0, 1, 0, 0 };
    size_t n = 99;
    uint32_t v;
    uint64_t v64, sz = 0;
    int fd = -1;

    CU_ASSERT_EQUAL_FATAL(dext_platform_vfio_create(&d, &p), 0);
    CU_ASSERT_STRING_EQUAL(dext_platform_backend_name(p), "vfio");
    CU_ASSERT_TRUE(dext_platform_alive(p));
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(p, false, &fns, &n), 0);
    CU_ASSERT_EQUAL(n, 0);
    g_free(fns);
    /* the kernel's device is not ours to touch */
    CU_ASSERT_EQUAL(dext_platform_cfg_read(p, a, 0, 4, &v), -ENODEV);
    CU_ASSERT_EQUAL(dext_platform_bar_read(p, a, 0, 0, 4, &v64), -ENODEV);
    CU_ASSERT_EQUAL(dext_platform_port_read(p, 0x80, 1, &v), -ENOTSUP);
    /* a memory fd exists, but nothing is mapped for DMA: no allocator */
    CU_ASSERT_EQUAL(dext_platform_memory_fd(p, &fd, &sz), 0);
    CU_ASSERT_TRUE(fd >= 0);
    CU_ASSERT_EQUAL(sz, 2 << 20);
    CU_ASSERT_EQUAL(dext_platform_dma_alloc(p, 4096, 0, &dr), -ENOTSUP);
    /* binding was not asked for: nothing written */
    {
        g_autofree char *ov = slurp(root, "devices/pci0000:00/0000:00:1c.0/"
                                    "0000:01:00.0/driver_override");
        g_autofree char *un = slurp(root, "bus/pci/drivers/foo/unbind");

        CU_ASSERT_STRING_EQUAL(ov, "(null)\n");
        CU_ASSERT_STRING_EQUAL(un, "");
    }
    dext_platform_destroy(p);
    rm_tree(root);
}

/*
 * Binding by vendor:device follows the kernel's protocol in order:
 * driver_override = vfio-pci, unbind from the current driver, probe.  The
 * fake kernel binds nothing, so create must fail naming the function and
 * the driver it is still on.
 */
static void test_bind_protocol(void)
{
    g_autofree char *root = fake_sysfs();
    const char *bind[] = { "dec5:0001", NULL };
    DextVfioDesc d = { .sysfs = root, .bind = bind };
    DextPlatform *p = NULL;
    int r = dext_platform_vfio_create(&d, &p);
    g_autofree char *ov = slurp(root, "devices/pci0000:00/0000:00:1c.0/"
                                "0000:01:00.0/driver_override");
    g_autofree char *un = slurp(root, "bus/pci/drivers/foo/unbind");
    g_autofree char *pr = slurp(root, "bus/pci/drivers_probe");

    CU_ASSERT_EQUAL(r, -ENODEV);
    CU_ASSERT_PTR_NULL(p);
    CU_ASSERT_STRING_EQUAL(ov, "vfio-pci");
    CU_ASSERT_STRING_EQUAL(un, "0000:01:00.0");
    CU_ASSERT_STRING_EQUAL(pr, "0000:01:00.0");
    CU_ASSERT_PTR_NOT_NULL(strstr(dext_platform_last_error(NULL),
                                  "0000:01:00.0"));
    CU_ASSERT_PTR_NOT_NULL(strstr(dext_platform_last_error(NULL), "foo"));
    rm_tree(root);
}

/* Patterns that match nothing (other ids, malformed) bind nothing. */
static void test_bind_nomatch(void)
{
    g_autofree char *root = fake_sysfs();
    const char *bind[] = { "dec5:0002", "0000:02:00.0", "dec5", "zz:zz",
                           "dec5:00011", NULL };
    DextVfioDesc d = { .sysfs = root, .bind = bind, .dma_size = 2 << 20 };
    DextPlatform *p = NULL;
    g_autofree char *ov = NULL;

    CU_ASSERT_EQUAL_FATAL(dext_platform_vfio_create(&d, &p), 0);
    ov = slurp(root, "devices/pci0000:00/0000:00:1c.0/0000:01:00.0/"
               "driver_override");
    CU_ASSERT_STRING_EQUAL(ov, "(null)\n");
    dext_platform_destroy(p);
    rm_tree(root);
}

/*
 * A function a kernel driver keeps (the guest's xHCI under xhci_hcd) is
 * listed when asked for by class, with its IDs, class and BARs from sysfs,
 * but never bound or touched: every access is -ENODEV (the USB provider
 * in the guest matches it and reaches its devices through usbfs).
 */
static void test_kernel_owned(void)
{
    g_autofree char *root = fake_sysfs();
    const char *kern[] = { "0c0330", NULL };
    const char *other[] = { "0c0320", "0c03", NULL };
    DextVfioDesc d = { .sysfs = root, .kernel_owned = kern,
                       .dma_size = 2 << 20 };
    DextPlatform *p = NULL;
    DextPciFunction *fns = NULL;
    DextPciAddr a = { 0, 1, 0, 0 };
    uint8_t cfg[256] = { 0 };
    g_autofree char *dev = g_build_filename(root, "devices", "pci0000:00",
                                            "0000:00:1c.0", "0000:01:00.0",
                                            NULL);
    g_autofree char *f = NULL;
    size_t n = 0;
    uint32_t v;
    uint64_t v64;

    cfg[0] = 0xc5; cfg[1] = 0xde; cfg[2] = 0x01; cfg[3] = 0x00;
    cfg[8] = 0x01; cfg[9] = 0x30; cfg[10] = 0x03; cfg[11] = 0x0c;
    cfg[0x2c] = 0xf4; cfg[0x2d] = 0x1a; cfg[0x2e] = 0x00; cfg[0x2f] = 0x11;
    f = g_build_filename(dev, "config", NULL);
    g_assert_true(g_file_set_contents(f, (char *)cfg, sizeof(cfg), NULL));
    g_free(f);
    f = g_build_filename(dev, "class", NULL);
    g_assert_true(g_file_set_contents(f, "0x0c0330\n", -1, NULL));
    g_free(f);
    f = g_build_filename(dev, "resource", NULL);
    g_assert_true(g_file_set_contents(f,
        "0x00000000fe800000 0x00000000fe803fff 0x0000000000140204\n"
        "0x0000000000000000 0x0000000000000000 0x0000000000000000\n", -1,
        NULL));

    CU_ASSERT_EQUAL_FATAL(dext_platform_vfio_create(&d, &p), 0);
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(p, false, &fns, &n), 0);
    CU_ASSERT_EQUAL_FATAL(n, 1);
    CU_ASSERT_EQUAL(fns[0].vendor_id, 0xdec5);
    CU_ASSERT_EQUAL(fns[0].device_id, 0x0001);
    CU_ASSERT_EQUAL(fns[0].class_base, 0x0c);
    CU_ASSERT_EQUAL(fns[0].class_sub, 0x03);
    CU_ASSERT_EQUAL(fns[0].class_prog_if, 0x30);
    CU_ASSERT_EQUAL(fns[0].subsys_vendor_id, 0x1af4);
    CU_ASSERT_EQUAL(fns[0].bars[0].kind, DEXT_BAR_MEM64);
    CU_ASSERT_EQUAL(fns[0].bars[0].size, 0x4000);
    CU_ASSERT_EQUAL(fns[0].bars[0].addr, 0xfe800000);
    CU_ASSERT_EQUAL(fns[0].bars[1].size, 0);
    CU_ASSERT_TRUE(fns[0].has_parent);
    g_free(fns);
    /* listed, not ours: nothing reaches it */
    CU_ASSERT_EQUAL(dext_platform_cfg_read(p, a, 0, 4, &v), -ENODEV);
    CU_ASSERT_EQUAL(dext_platform_cfg_write(p, a, 4, 2, 6), -ENODEV);
    CU_ASSERT_EQUAL(dext_platform_bar_read(p, a, 0, 0, 4, &v64), -ENODEV);
    CU_ASSERT_TRUE(dext_platform_reset_function(p, a, false) < 0);
    dext_platform_destroy(p);
    {
        g_autofree char *ov = slurp(root, "devices/pci0000:00/0000:00:1c.0/"
                                    "0000:01:00.0/driver_override");
        g_autofree char *un = slurp(root, "bus/pci/drivers/foo/unbind");

        CU_ASSERT_STRING_EQUAL(ov, "(null)\n");
        CU_ASSERT_STRING_EQUAL(un, "");
    }
    /* another class (or a malformed one) lists nothing */
    d.kernel_owned = other;
    p = NULL;
    CU_ASSERT_EQUAL_FATAL(dext_platform_vfio_create(&d, &p), 0);
    CU_ASSERT_EQUAL(dext_platform_pci_enumerate(p, false, &fns, &n), 0);
    CU_ASSERT_EQUAL(n, 0);
    g_free(fns);
    dext_platform_destroy(p);
    rm_tree(root);
}

int main(void)
{
    CU_pSuite s;
    unsigned fails;

    if (CU_initialize_registry() != CUE_SUCCESS) {
        return 1;
    }
    s = CU_add_suite("vfio-sysfs", NULL, NULL);
    CU_add_test(s, "factory", test_factory);
    CU_add_test(s, "bad-args", test_bad_args);
    CU_add_test(s, "no-functions", test_no_functions);
    CU_add_test(s, "bind-protocol", test_bind_protocol);
    CU_add_test(s, "bind-nomatch", test_bind_nomatch);
    CU_add_test(s, "kernel-owned", test_kernel_owned);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    fails = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    CU_cleanup_registry();
    return fails ? 1 : 0;
}
