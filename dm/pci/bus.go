package pci

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
)

func logf(format string, args ...any) { slog.Warn(fmt.Sprintf(format, args...)) }

// Function is one PCI function as the bus sees it: its configuration space.
// Devices usually implement it by embedding *Config.
type Function interface {
	ConfigRead(reg uint16, size int) uint32
	ConfigWrite(reg uint16, size int, v uint32)
}

// DevFn packs a device (0–31) and function (0–7) number as in PCI_DEVFN.
func DevFn(dev, fn uint8) uint8 { return dev<<3 | fn&7 }

// SBDF packs segment 0, bus 0 and devfn as XEN_DMOP_PCI_SBDF does.
func SBDF(devfn uint8) uint32 { return uint32(devfn) }

// Bus is PCI bus 0 of segment 0. Xen latches 0xcf8 itself and turns enabled
// 0xcfc–0xcff accesses into PCI_CONFIG ioreqs routed by SBDF (handled by
// ConfigRead/ConfigWrite); it also forwards the 0xcf8 access to the server
// owning the port, so the bus keeps its own copy of the address register for
// read-back (Linux's pci_check_type1 needs it).
type Bus struct {
	mu    sync.Mutex
	fns   map[uint8]Function
	names map[uint8]string
	cf8   uint32
}

// NewBus returns an empty bus 0.
func NewBus() *Bus {
	return &Bus{fns: map[uint8]Function{}, names: map[uint8]string{}}
}

// Add plugs f in at devfn. It fails if the slot is taken.
func (b *Bus) Add(devfn uint8, name string, f Function) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.fns[devfn]; ok {
		return fmt.Errorf("pci: %02x.%x already holds %s, cannot add %s", devfn>>3, devfn&7, b.names[devfn], name)
	}
	b.fns[devfn] = f
	b.names[devfn] = name
	return nil
}

// Remove unplugs the function at devfn (xen-platform unplug of NICs).
func (b *Bus) Remove(devfn uint8) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.fns, devfn)
	delete(b.names, devfn)
}

// DevFns lists the occupied slots in ascending order; the device model
// registers each with Xen as a PCI SBDF range of the ioreq server.
func (b *Bus) DevFns() []uint8 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]uint8, 0, len(b.fns))
	for d := range b.fns {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func (b *Bus) fn(devfn uint8) Function {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fns[devfn]
}

// ConfigRead serves a PCI_CONFIG read for sbdf (segment and bus must be 0).
// An empty slot reads as all-ones.
func (b *Bus) ConfigRead(sbdf uint32, reg uint16, size int) uint32 {
	if sbdf>>8 != 0 {
		return allOnes(size)
	}
	f := b.fn(uint8(sbdf))
	if f == nil {
		return allOnes(size)
	}
	return f.ConfigRead(reg, size)
}

// ConfigWrite serves a PCI_CONFIG write for sbdf; writes to empty slots are dropped.
func (b *Bus) ConfigWrite(sbdf uint32, reg uint16, size int, v uint32) {
	if sbdf>>8 != 0 {
		return
	}
	if f := b.fn(uint8(sbdf)); f != nil {
		f.ConfigWrite(reg, size, v)
	}
}

func allOnes(size int) uint32 {
	switch size {
	case 1:
		return 0xff
	case 2:
		return 0xffff
	}
	return 0xffffffff
}

// Ports the bus claims: the configuration address and data registers.
// (0xcf9, the reset control register, belongs to the PIIX3.)
const (
	PortConfigAddress = 0xcf8
	PortConfigData    = 0xcfc
)

// ReadPort implements hw.PortIO for 0xcf8–0xcfb and 0xcfc–0xcff.
func (b *Bus) ReadPort(port uint16, size int) uint32 {
	switch {
	case port == PortConfigAddress && size == 4:
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.cf8
	case port >= PortConfigData && port < PortConfigData+4:
		addr, ok := b.latched()
		if !ok {
			return allOnes(size)
		}
		return b.ConfigRead(addr>>8&0xff, uint16(addr&0xfc)+port-PortConfigData, size)
	}
	return allOnes(size)
}

// WritePort implements hw.PortIO. Only 32-bit writes to 0xcf8 latch an
// address, as in QEMU's pci_host_config_write, which keeps the whole value
// for read-back (reserved bits included) and decodes only the address bits.
func (b *Bus) WritePort(port uint16, size int, v uint32) {
	switch {
	case port == PortConfigAddress && size == 4:
		b.mu.Lock()
		b.cf8 = v
		b.mu.Unlock()
	case port >= PortConfigData && port < PortConfigData+4:
		addr, ok := b.latched()
		if !ok {
			return
		}
		b.ConfigWrite(addr>>8&0xff, uint16(addr&0xfc)+port-PortConfigData, size, v)
	}
}

// latched returns the enabled CF8 address for bus 0 as bus<<16|devfn<<8|reg.
func (b *Bus) latched() (uint32, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cf8&0x80000000 == 0 || b.cf8>>16&0xff != 0 {
		return 0, false
	}
	return b.cf8 & 0xfffc, true // devfn<<8 | register (bits 1:0 ignored)
}
