/*
 * dextlab-dma x-vendor-id / x-device-id: the generic DMA engine under any
 * PCI identity, so tools/new-driver's generated tests have a device with
 * the VID:DID their personality names.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "libqtest.h"
#include "libqos/pci.h"
#include "libqos/pci-pc.h"
#include "hw/pci/pci_regs.h"
#include "hw/dextlab/dextlab-dma-regs.h"

static QPCIDevice *find_dev(QTestState *qts, QPCIBus **bus)
{
    *bus = qpci_new_pc(qts, NULL);
    return qpci_device_find(*bus, QPCI_DEVFN(4, 0));
}

/* Guards the defaults: without the properties the function keeps the
 * register map's identity (drivers in the tree match on it). */
static void test_default_ids(void)
{
    QTestState *qts = qtest_init("-nodefaults -machine pc "
                                 "-device dextlab-dma,addr=04.0");
    QPCIBus *bus;
    QPCIDevice *dev = find_dev(qts, &bus);
    g_assert_nonnull(dev);
    g_assert_cmphex(qpci_config_readw(dev, PCI_VENDOR_ID), ==, DXL_PCI_VENDOR_ID);
    g_assert_cmphex(qpci_config_readw(dev, PCI_DEVICE_ID), ==, DXL_DMA_PCI_DEVICE_ID);
    g_free(dev);
    qpci_free_pc(bus);
    qtest_quit(qts);
}

/* The properties change config space only: the device still is the
 * dextlab-dma engine (BAR0 ID register), and keeps its identity across
 * a system reset. */
static void test_custom_ids(void)
{
    QTestState *qts = qtest_init("-nodefaults -machine pc "
                                 "-device dextlab-dma,addr=04.0,"
                                 "x-vendor-id=0x1234,x-device-id=0xabcd");
    QPCIBus *bus;
    QPCIDevice *dev = find_dev(qts, &bus);
    g_assert_nonnull(dev);
    g_assert_cmphex(qpci_config_readw(dev, PCI_VENDOR_ID), ==, 0x1234);
    g_assert_cmphex(qpci_config_readw(dev, PCI_DEVICE_ID), ==, 0xabcd);
    g_assert_cmphex(qpci_config_readw(dev, PCI_SUBSYSTEM_VENDOR_ID), ==,
                    DXL_DMA_PCI_SUBVENDOR_ID);
    qpci_device_enable(dev);
    QPCIBar bar0 = qpci_iomap(dev, DXL_DMA_BAR_REGS, NULL);
    g_assert_cmphex(qpci_io_readl(dev, bar0, DXL_REG_ID), ==, DXL_DMA_ID_MAGIC);
    qobject_unref(qtest_qmp(qts, "{'execute': 'system_reset'}"));
    qtest_qmp_eventwait(qts, "RESET");
    g_assert_cmphex(qpci_config_readw(dev, PCI_VENDOR_ID), ==, 0x1234);
    g_assert_cmphex(qpci_config_readw(dev, PCI_DEVICE_ID), ==, 0xabcd);
    g_free(dev);
    qpci_free_pc(bus);
    qtest_quit(qts);
}

/* 0xffff reads as "no device": refused at realize with a message. */
static void test_invalid_vendor(void)
{
    QTestState *qts = qtest_init("-nodefaults -machine pc");
    QDict *r = qtest_qmp(qts, "{'execute': 'device_add', 'arguments': "
                         "{'driver': 'dextlab-dma', 'x-vendor-id': 65535}}");
    g_assert_true(qdict_haskey(r, "error"));
    QDict *e = qdict_get_qdict(r, "error");
    g_assert_nonnull(strstr(qdict_get_str(e, "desc"), "x-vendor-id 0xffff"));
    qobject_unref(r);
    qtest_quit(qts);
}

int main(int argc, char **argv)
{
    g_test_init(&argc, &argv, NULL);
    qtest_add_func("/dextlab-dma/ids/default", test_default_ids);
    qtest_add_func("/dextlab-dma/ids/custom", test_custom_ids);
    qtest_add_func("/dextlab-dma/ids/invalid-vendor", test_invalid_vendor);
    return g_test_run();
}
