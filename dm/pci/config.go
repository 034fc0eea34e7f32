// Package pci is the guest's PCI bus 0: type-0 configuration headers with
// BAR decoding (config.go) and the bus that routes configuration accesses,
// both the PCI_CONFIG ioreqs Xen sends per SBDF and the legacy 0xcf8/0xcfc
// mechanism (bus.go). Devices live in their own packages and embed a *Config.
package pci

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// Standard configuration-space registers (PCI Local Bus Spec 3.0 §6.1).
const (
	RegVendorID      = 0x00
	RegDeviceID      = 0x02
	RegCommand       = 0x04
	RegStatus        = 0x06
	RegRevisionID    = 0x08
	RegClassProg     = 0x09
	RegHeaderType    = 0x0e
	RegBAR0          = 0x10
	RegSubsysVendor  = 0x2c
	RegSubsysID      = 0x2e
	RegROMAddress    = 0x30
	RegInterruptLine = 0x3c
	RegInterruptPin  = 0x3d

	CommandIO      = 1 << 0
	CommandMemory  = 1 << 1
	CommandMaster  = 1 << 2
	CommandIntxOff = 1 << 10

	HeaderMultiFunction = 0x80
	ConfigSize          = 256
	NumBARs             = 6
)

// ID is what a function reports about itself in its header.
type ID struct {
	Vendor, Device       uint16
	Class                uint32 // base class<<16 | subclass<<8 | prog-if
	Revision             uint8
	SubVendor, SubDevice uint16
	HeaderType           uint8 // 0, or HeaderMultiFunction on function 0 of a multi-function device
	InterruptPin         uint8 // 0 none, 1 INTA … 4 INTD
}

// BARKind says what a base address register decodes.
type BARKind uint8

const (
	BARNone BARKind = iota
	BARIO
	BARMem32
	BARMem32Prefetch
)

// BAR describes one base address register. Size must be a power of two
// (at least 4 for I/O, 16 for memory). Exactly one of Port/MMIO is set,
// matching Kind.
type BAR struct {
	Kind BARKind
	Size uint64
	Port hw.PortIO
	MMIO hw.MMIO
}

type mapping struct {
	base   uint64
	mapped bool
}

// Config is a type-0 configuration header with BAR decoding. When the guest
// enables decode (COMMAND.IO/MEM) or moves an enabled BAR, Config claims the
// new range in the IOSpace and releases the old one, as QEMU's
// pci_update_mappings does. It is safe for concurrent use.
//
// Device-specific registers (0x40–0xff, or bits of the header) are handled by
// the device: it makes them writable with SetWritable and observes writes
// through OnWrite.
type Config struct {
	mu    sync.Mutex
	io    hw.IOSpace
	name  string
	b     [ConfigSize]byte
	wmask [ConfigSize]byte // bits the guest may change
	w1c   [ConfigSize]byte // write-1-to-clear bits (status)
	bars  [NumBARs]BAR
	maps  [NumBARs]mapping
	// warned holds the malformed accesses already logged (bounded), so a
	// looping guest cannot flood the log.
	warned map[[2]int]bool

	// OnWrite, if set, is called (without the lock held) after every guest
	// write, with the register offset, the access size and the value.
	OnWrite func(reg uint16, size int, v uint32)
}

// NewConfig returns a header for a function named name (used in logs and
// errors) that claims its BARs in io.
func NewConfig(name string, io hw.IOSpace, id ID) *Config {
	c := &Config{io: io, name: name}
	le := binary.LittleEndian
	le.PutUint16(c.b[RegVendorID:], id.Vendor)
	le.PutUint16(c.b[RegDeviceID:], id.Device)
	c.b[RegRevisionID] = id.Revision
	c.b[RegClassProg] = byte(id.Class)
	c.b[RegClassProg+1] = byte(id.Class >> 8)
	c.b[RegClassProg+2] = byte(id.Class >> 16)
	c.b[RegHeaderType] = id.HeaderType
	le.PutUint16(c.b[RegSubsysVendor:], id.SubVendor)
	le.PutUint16(c.b[RegSubsysID:], id.SubDevice)
	c.b[RegInterruptPin] = id.InterruptPin
	// COMMAND: I/O, memory, bus master, INTx disable are writable.
	le.PutUint16(c.wmask[RegCommand:], CommandIO|CommandMemory|CommandMaster|CommandIntxOff)
	// STATUS: error bits are write-1-to-clear.
	le.PutUint16(c.w1c[RegStatus:], 0xf900)
	c.wmask[0x0c] = 0xff // cache line size
	c.wmask[0x0d] = 0xff // latency timer
	c.wmask[RegInterruptLine] = 0xff
	return c
}

// Name is the function's name as given to NewConfig.
func (c *Config) Name() string { return c.name }

// SetBAR declares BAR i. It must be called before the guest runs.
func (c *Config) SetBAR(i int, bar BAR) error {
	if i < 0 || i >= NumBARs {
		return fmt.Errorf("pci %s: BAR index %d out of range", c.name, i)
	}
	if bar.Kind != BARNone && (bar.Size == 0 || bar.Size&(bar.Size-1) != 0) {
		return fmt.Errorf("pci %s: BAR%d size %#x is not a power of two", c.name, i, bar.Size)
	}
	if bar.Kind == BARIO && (bar.Size < 4 || bar.Size > 256 || bar.Port == nil) {
		return fmt.Errorf("pci %s: I/O BAR%d needs a port handler and a size of 4–256", c.name, i)
	}
	if (bar.Kind == BARMem32 || bar.Kind == BARMem32Prefetch) && (bar.Size < 16 || bar.MMIO == nil) {
		return fmt.Errorf("pci %s: memory BAR%d needs an MMIO handler and a size of at least 16", c.name, i)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bars[i] = bar
	reg := RegBAR0 + 4*i
	var low uint32
	switch bar.Kind {
	case BARIO:
		low = 1
	case BARMem32Prefetch:
		low = 1 << 3
	}
	binary.LittleEndian.PutUint32(c.b[reg:], low)
	mask := uint32(0)
	if bar.Kind != BARNone {
		mask = ^uint32(bar.Size - 1)
	}
	binary.LittleEndian.PutUint32(c.wmask[reg:], mask)
	return nil
}

// SetWritable makes the bits in mask of the n-byte register at reg
// guest-writable (device-specific registers).
func (c *Config) SetWritable(reg uint16, n int, mask uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := 0; k < n && int(reg)+k < ConfigSize; k++ {
		c.wmask[int(reg)+k] = byte(mask >> (8 * k))
	}
}

// Set stores an n-byte value at reg regardless of write masks (device side).
func (c *Config) Set(reg uint16, n int, v uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := 0; k < n && int(reg)+k < ConfigSize; k++ {
		c.b[int(reg)+k] = byte(v >> (8 * k))
	}
}

// Get returns the n-byte value at reg (device side).
func (c *Config) Get(reg uint16, n int) uint32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.get(reg, n)
}

func (c *Config) get(reg uint16, n int) uint32 {
	var v uint32
	for k := 0; k < n && int(reg)+k < ConfigSize; k++ {
		v |= uint32(c.b[int(reg)+k]) << (8 * k)
	}
	return v
}

// validAccess accepts what a configuration cycle can carry: 1, 2 or 4
// bytes inside one dword (byte enables), inside the 256-byte space. Xen
// forwards a 0xcfc–0xcff access as a PCI_CONFIG ioreq at register
// (cf8 & 0xfc) | (port & 3), so hvmloader's outw(0xcfd) (its pci_writew of
// INTERRUPT_PIN at 0x3d) arrives as a 2-byte access at 0x3d; QEMU accepts it.
func validAccess(reg uint16, size int) bool {
	return (size == 1 || size == 2 || size == 4) && int(reg)+size <= ConfigSize && int(reg)&3+size <= 4
}

// ConfigRead is a guest read. Accesses that cross a dword or leave the
// configuration space read as all-ones, as on real hardware with no function
// decoding them.
func (c *Config) ConfigRead(reg uint16, size int) uint32 {
	if !validAccess(reg, size) {
		c.warnBad("read", reg, size)
		return ^uint32(0) >> (32 - 8*uint(min(max(size, 1), 4)))
	}
	return c.Get(reg, size)
}

// warnBad logs a malformed (misaligned, out-of-range or odd-sized) guest
// access once per register and size.
func (c *Config) warnBad(op string, reg uint16, size int) {
	key := [2]int{int(reg), size}
	if op == "write" {
		key[1] = -size - 1
	}
	c.mu.Lock()
	if c.warned == nil {
		c.warned = map[[2]int]bool{}
	}
	seen := c.warned[key] || len(c.warned) >= 64
	if !seen {
		c.warned[key] = true
	}
	c.mu.Unlock()
	if !seen {
		logf("pci %s: ignoring malformed config %s at %#x size %d", c.name, op, reg, size)
	}
}

// ConfigWrite is a guest write: only writable bits change, status bits are
// write-1-to-clear, and BAR mappings follow the new COMMAND and BAR values.
func (c *Config) ConfigWrite(reg uint16, size int, v uint32) {
	if !validAccess(reg, size) {
		c.warnBad("write", reg, size)
		return
	}
	c.mu.Lock()
	for k := 0; k < size; k++ {
		i := int(reg) + k
		nb := byte(v >> (8 * k))
		c.b[i] = c.b[i]&^c.wmask[i] | nb&c.wmask[i]
		c.b[i] &^= nb & c.w1c[i]
	}
	touched := reg < RegBAR0+4*NumBARs && int(reg)+size > RegCommand
	var ops []func()
	if touched {
		ops = c.updateMappings()
	}
	hook := c.OnWrite
	c.mu.Unlock()
	for _, op := range ops {
		op()
	}
	if hook != nil {
		hook(reg, size, v)
	}
}

// barAddress returns where BAR i decodes now, or ok=false when it does not
// decode (decode disabled, unset, or an address QEMU would also ignore such as
// the all-ones pattern written while sizing).
func (c *Config) barAddress(i int) (uint64, bool) {
	bar := c.bars[i]
	cmd := c.get(RegCommand, 2)
	raw := uint64(c.get(uint16(RegBAR0+4*i), 4))
	switch bar.Kind {
	case BARIO:
		if cmd&CommandIO == 0 {
			return 0, false
		}
		addr := raw &^ (bar.Size - 1) &^ 3
		if addr == 0 || addr+bar.Size > 0x10000 {
			return 0, false
		}
		return addr, true
	case BARMem32, BARMem32Prefetch:
		if cmd&CommandMemory == 0 {
			return 0, false
		}
		addr := raw &^ (bar.Size - 1) &^ 0xf
		if addr == 0 || addr+bar.Size > 1<<32 || addr == (^uint64(bar.Size-1))&0xffffffff {
			return 0, false
		}
		return addr, true
	}
	return 0, false
}

// updateMappings computes claim/release operations for every BAR whose
// decoded address changed. Called with c.mu held; the returned operations run
// after it is released (IOSpace may call back into devices).
func (c *Config) updateMappings() []func() {
	var ops []func()
	for i := range c.bars {
		bar := c.bars[i]
		if bar.Kind == BARNone {
			continue
		}
		addr, ok := c.barAddress(i)
		m := c.maps[i]
		if m.mapped == ok && (!ok || m.base == addr) {
			continue
		}
		if m.mapped {
			old := m.base
			switch bar.Kind {
			case BARIO:
				ops = append(ops, func() { c.io.ReleasePorts(uint16(old), uint16(bar.Size)) })
			default:
				ops = append(ops, func() { c.io.ReleaseMMIO(old, bar.Size) })
			}
		}
		c.maps[i] = mapping{base: addr, mapped: ok}
		if ok {
			name, idx := c.name, i
			switch bar.Kind {
			case BARIO:
				ops = append(ops, func() {
					if err := c.io.ClaimPorts(uint16(addr), uint16(bar.Size), bar.Port); err != nil {
						logf("pci %s: BAR%d ports %#x+%#x: %v", name, idx, addr, bar.Size, err)
					}
				})
			default:
				ops = append(ops, func() {
					if err := c.io.ClaimMMIO(addr, bar.Size, bar.MMIO); err != nil {
						logf("pci %s: BAR%d MMIO %#x+%#x: %v", name, idx, addr, bar.Size, err)
					}
				})
			}
		}
	}
	return ops
}

// BARBase reports where BAR i currently decodes.
func (c *Config) BARBase(i int) (uint64, bool) {
	if i < 0 || i >= NumBARs {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m := c.maps[i]
	return m.base, m.mapped
}

// Snapshot returns a copy of the 256-byte configuration space (device state).
func (c *Config) Snapshot() [ConfigSize]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.b
}

// Restore loads a configuration space saved by Snapshot and re-establishes
// the BAR mappings it implies. Read-only identity bytes (IDs, class) are kept
// from this Config, so a state from a different device cannot change them;
// guest-writable and write-1-to-clear bits come from b.
func (c *Config) Restore(b [ConfigSize]byte) error {
	c.mu.Lock()
	for _, r := range []uint16{RegVendorID, RegDeviceID} {
		if c.get(r, 2) != uint32(binary.LittleEndian.Uint16(b[r:])) {
			c.mu.Unlock()
			return fmt.Errorf("pci %s: saved config space is for %04x:%04x", c.name,
				binary.LittleEndian.Uint16(b[RegVendorID:]), binary.LittleEndian.Uint16(b[RegDeviceID:]))
		}
	}
	for i := range b {
		// Guest-writable bits and the write-1-to-clear status bits (which
		// the device set) are state; everything else is identity.
		m := c.wmask[i] | c.w1c[i]
		c.b[i] = c.b[i]&^m | b[i]&m
	}
	ops := c.updateMappings()
	c.mu.Unlock()
	for _, op := range ops {
		op()
	}
	return nil
}
