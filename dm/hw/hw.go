// Package hw is what an emulated device sees of the machine: guest memory,
// interrupt lines, and the I/O ranges it claims. Devices depend on these
// interfaces only, never on ioctls; package dm wires them to Xen (dm/xen) and
// tests wire them to in-memory fakes (dm/xen/xentest, dm/hw/hwtest).
//
// Data flows one way: ioreq → dispatch (dm) → device → block backend → tracker.
package hw

import "errors"

// PageSize is the x86 page size, the unit of guest-memory mapping and tracking.
const (
	PageShift = 12
	PageSize  = 1 << PageShift
)

// ErrBadGPA reports a guest-physical access the DM could not perform: the page
// is not populated, not mappable, or outside guest RAM. Callers wrap it with
// the address; devices turn it into a device error (for IDE: an aborted DMA),
// never a crash.
var ErrBadGPA = errors.New("guest-physical address not accessible")

// GuestMemory is guest-physical memory as the device model sees it.
// Accesses may cross page boundaries. A page that cannot be mapped is an
// error wrapping ErrBadGPA that names the pfn; nothing is partially hidden.
type GuestMemory interface {
	ReadGPA(gpa uint64, p []byte) error
	WriteGPA(gpa uint64, p []byte) error
}

// DirtyReporter is told about guest pages the DM wrote by DMA. While the
// global dirty log is on (live migration), the implementation reports them to
// Xen with XEN_DMOP_modified_memory so libxc sends them again.
type DirtyReporter interface {
	MarkDirty(pfn uint64, n uint64)
}

// Interrupts are the interrupt lines an emulated device can drive; Xen's
// emulated PIC/IOAPIC own everything behind them.
type Interrupts interface {
	// SetISAIRQ drives ISA IRQ line irq (0–15): XEN_DMOP_set_isa_irq_level.
	SetISAIRQ(irq uint8, level bool) error
	// SetPCIINTx drives INTx pin (0=INTA … 3=INTD) of bus-0 device dev:
	// XEN_DMOP_set_pci_intx_level.
	SetPCIINTx(dev, pin uint8, level bool) error
	// SetPCILinkRoute routes PCI link (0–3) to ISA IRQ irq (0 disables):
	// XEN_DMOP_set_pci_link_route.
	SetPCILinkRoute(link, irq uint8) error
}

// PortIO is a device that handles x86 port I/O. size is 1, 2 or 4.
// Reads of bits a device does not implement return all-ones.
type PortIO interface {
	ReadPort(port uint16, size int) uint32
	WritePort(port uint16, size int, v uint32)
}

// MMIO is a device that handles memory-mapped I/O. size is 1, 2, 4 or 8.
type MMIO interface {
	ReadMMIO(addr uint64, size int) uint64
	WriteMMIO(addr uint64, size int, v uint64)
}

// IOSpace is where devices claim and release guest I/O ranges (for example
// when the guest programs and enables a PCI BAR). The device model forwards
// each claim to Xen (XEN_DMOP_map_io_range_to_ioreq_server) so the accesses
// reach this process. Ranges are [base, base+n).
type IOSpace interface {
	ClaimPorts(base uint16, n uint16, h PortIO) error
	ReleasePorts(base uint16, n uint16)
	ClaimMMIO(base uint64, n uint64, h MMIO) error
	ReleaseMMIO(base uint64, n uint64)
}

// Shutdown lets a device end the domain the way real hardware would
// (ACPI S5, reset register): XEN_DMOP_remote_shutdown.
type Shutdown interface {
	PowerOff() error
	Reboot() error
}
