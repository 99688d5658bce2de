# Devices of dextlab's QEMU fork (configs/devices/x86_64-softmmu/dextlab.mak).
# tools/setup configures with --without-default-devices --with-devices-x86_64=dextlab,
# so only what is listed here (and what it selects) is built.  The machines'
# default devices (VGA, parallel port, e1000 NIC) are not among them: start
# the fork with -nodefaults, as every dextlab test does.

# Machines: q35 (PCI Express) and pc (conventional PCI)
CONFIG_Q35=y
CONFIG_I440FX=y

# PCI Express root ports, the IOMMU for in-guest VFIO, USB host controller
CONFIG_PCIE_PORT=y
CONFIG_VTD=y
CONFIG_USB_XHCI_PCI=y

# Guest networking
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y

# dextlab's own devices (hw/dextlab/)
CONFIG_DEXTLAB_DMA=y
CONFIG_DEXTLAB_USB=y
