/*
 * The fork's qtest MSI interception (hw/patches/0002-qtest-report-MSI-messages).
 *
 * Guards the patch itself, independent of any device: an MSI write that
 * reaches the x86 interrupt controller is reported to the qtest client with
 * its full address and data, in order, only once interception is on, and a
 * plain APIC register access is not mistaken for one.  Device tests (and the
 * runtime's qtest platform) build their interrupt checks on this.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"

#define MSI_WINDOW 0xfee00000ULL

/* Before msi_intercept, MSI writes are delivered as usual: nothing reported. */
static void test_off_by_default(void)
{
    QTestState *qts = qtest_init("-nodefaults -machine q35");

    qtest_writel(qts, MSI_WINDOW, 0x4021);
    g_assert_cmpuint(qtest_msi_pending(qts), ==, 0);
    qtest_quit(qts);
}

/* Every message comes back once, in order, with address and data intact. */
static void test_order_and_payload(void)
{
    QTestState *qts = qtest_init("-nodefaults -machine q35");
    uint64_t addr;
    uint32_t data;

    qtest_msi_intercept(qts);
    for (uint32_t i = 0; i < 64; i++) {
        /* destination ID in address bits 19:12, vector in data bits 7:0 */
        qtest_writel(qts, MSI_WINDOW | ((i & 0xff) << 12), 0x4000 | (0x20 + i));
    }
    g_assert_cmpuint(qtest_msi_pending(qts), ==, 64);
    for (uint32_t i = 0; i < 64; i++) {
        g_assert_true(qtest_msi_pop(qts, &addr, &data));
        g_assert_cmphex(addr, ==, MSI_WINDOW | ((i & 0xff) << 12));
        g_assert_cmphex(data, ==, 0x4000 | (0x20 + i));
    }
    g_assert_false(qtest_msi_pop(qts, &addr, &data));
    qtest_quit(qts);
}

/*
 * The APIC's own registers share the window's first page: a write to one
 * (here the task priority register at 0x80) is not an MSI.
 */
static void test_apic_register_is_not_msi(void)
{
    QTestState *qts = qtest_init("-nodefaults -machine q35");

    qtest_msi_intercept(qts);
    qtest_writel(qts, MSI_WINDOW + 0x80, 0x10);
    g_assert_cmpuint(qtest_msi_pending(qts), ==, 0);
    qtest_writel(qts, MSI_WINDOW, 0x30);
    g_assert_cmpuint(qtest_msi_pending(qts), ==, 1);
    qtest_quit(qts);
}

/* On pc as well as q35: the hook is in the APIC, not in a chipset. */
static void test_pc_machine(void)
{
    QTestState *qts = qtest_init("-nodefaults -machine pc");
    uint64_t addr;
    uint32_t data;

    qtest_msi_intercept(qts);
    qtest_writel(qts, MSI_WINDOW | 0x1000, 0x41);
    g_assert_true(qtest_msi_pop(qts, &addr, &data));
    g_assert_cmphex(addr, ==, MSI_WINDOW | 0x1000);
    g_assert_cmphex(data, ==, 0x41);
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/msi-intercept/off-by-default", test_off_by_default);
    qtest_add_func("/msi-intercept/order-and-payload", test_order_and_payload);
    qtest_add_func("/msi-intercept/apic-register-is-not-msi",
                   test_apic_register_is_not_msi);
    qtest_add_func("/msi-intercept/pc", test_pc_machine);
    return g_test_run();
}
