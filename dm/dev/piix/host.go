// Package piix emulates the PCI functions of QEMU's xenfv machine chipset:
// the i440FX host bridge (00:00.0), the PIIX3 PCI-to-ISA bridge (00:01.0)
// with its reset control register at port 0xcf9, and the PIIX4 ACPI power
// management function (00:01.3) with the fixed ACPI ports hvmloader's tables
// describe. See xen-dm-interface.md §6.2–6.5 and §6.8.
//
// Every function embeds a *pci.Config, so it can be added to a pci.Bus as is.
// Functions are safe for concurrent use.
package piix

import (
	"fmt"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// Where the xenfv machine puts the chipset functions (QEMU hw/i386/pc_piix.c).
var (
	DevFnHost = pci.DevFn(0, 0)
	DevFnISA  = pci.DevFn(1, 0)
	DevFnPM   = pci.DevFn(1, 3)
)

// QEMU's default PCI subsystem (pci_set_default_subsystem_id), given to every
// non-bridge function that does not set its own.
const (
	subVendorQumranet = 0x1af4
	subDeviceQEMU     = 0x1100
)

// Host is the i440FX PCI host bridge (QEMU hw/pci-host/i440fx.c,
// i440fx_realize/i440fx_class_init). It is configuration space only: under
// Xen the PAM and SMRAM registers change nothing (guest memory is Xen's), so
// they are plain storage, as is the rest of 0x40–0xff (QEMU's default wmask).
type Host struct {
	*pci.Config
}

// HostState is the guest-visible state of the host bridge.
type HostState struct {
	Config [pci.ConfigSize]byte
}

// i440FX device-specific registers.
const (
	i440fxSMRAM = 0x72
)

// NewHost returns the host bridge. io is where its (absent) BARs would be
// claimed.
func NewHost(io hw.IOSpace) *Host {
	c := pci.NewConfig("i440fx", io, pci.ID{
		Vendor: 0x8086, Device: 0x1237, Revision: 0x02,
		Class:     0x060000, // PCI_CLASS_BRIDGE_HOST
		SubVendor: subVendorQumranet, SubDevice: subDeviceQEMU,
	})
	for r := uint16(0x40); r < pci.ConfigSize; r += 4 {
		c.SetWritable(r, 4, 0xffffffff)
	}
	c.Set(i440fxSMRAM, 1, 0x02)
	return &Host{Config: c}
}

// State returns the host bridge's state.
func (h *Host) State() HostState { return HostState{Config: h.Snapshot()} }

// SetState restores a state returned by State.
func (h *Host) SetState(st HostState) error {
	if err := h.Restore(st.Config); err != nil {
		return fmt.Errorf("i440fx: %w", err)
	}
	return nil
}
