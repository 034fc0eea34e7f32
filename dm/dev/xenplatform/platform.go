// Package xenplatform is the Xen platform PCI device (QEMU
// hw/i386/xen/xen_platform.c; protocol in Xen's
// docs/misc/hvm-emulated-unplug.pandoc). PV-aware guests find it by its IDs,
// check the magic at port 0x10 and then ask the device model to unplug the
// emulated disks and NICs before they drive the same backends through
// blkfront/netfront.
//
// The unplug is real: it calls the Unplugger the device was built with, which
// must detach the drives (the IDE controller) and remove the NICs. A device
// model that advertised the magic without unplugging would let a guest reach
// one disk through two paths at once and corrupt it.
package xenplatform

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// IDs, ports and sizes.
const (
	VendorXen      = 0x5853
	DevicePlatform = 0x0001

	// PortFixed is the base of the fixed I/O ports (XEN_PLATFORM_IOPORT);
	// the device decodes 16 of them.
	PortFixed    = 0x10
	NumPortFixed = 16

	// Magic is what a 16-bit read of PortFixed returns.
	Magic = 0x49d2
	// ProtocolVersion is what an 8-bit read of PortFixed+2 returns.
	ProtocolVersion = 1

	bar0Size = 256
	bar1Size = 16 << 20

	logBufSize  = 4096 // QEMU's log_buffer
	maxLogLines = 10000
)

// DefaultDevFn is where the xenfv machine puts the device: the first free
// slot after the chipset (QEMU creates it before the -device list).
var DefaultDevFn = pci.DevFn(2, 0)

// Unplug mask bits written to PortFixed (16-bit), as QEMU names them.
const (
	UnplugIDESCSIDisks = 1 << 0 // all IDE and SCSI disks (never CD-ROMs)
	UnplugAllNICs      = 1 << 1
	UnplugAuxIDEDisks  = 1 << 2 // IDE disks except the primary master; bit 0 overrides
	UnplugNVMeDisks    = 1 << 3
)

// PFFlagROMLock is the platform-flags bit that asks for the 0xc0000–0xfffff
// ROM area to be made read-only (HVMMEM_ram_ro).
const PFFlagROMLock = 1

// Unplugger removes emulated devices when a PV-aware guest asks. Both
// methods must be idempotent: guests (and SetState) may ask more than once.
type Unplugger interface {
	// UnplugDisks detaches the backing drive of every IDE hard disk (not
	// CD-ROMs) and resets the controller if it detached any (QEMU
	// pci_xen_ide_unplug). With auxOnly, the primary master stays.
	UnplugDisks(auxOnly bool)
	// UnplugNICs removes every emulated NIC from the PCI bus (QEMU
	// pci_unplug_nics).
	UnplugNICs()
}

// UnplugFuncs adapts two functions to Unplugger; a nil function does nothing
// (for example NICs when the machine has none).
type UnplugFuncs struct {
	Disks func(auxOnly bool)
	NICs  func()
}

// UnplugDisks implements Unplugger.
func (f UnplugFuncs) UnplugDisks(auxOnly bool) {
	if f.Disks != nil {
		f.Disks(auxOnly)
	}
}

// UnplugNICs implements Unplugger.
func (f UnplugFuncs) UnplugNICs() {
	if f.NICs != nil {
		f.NICs()
	}
}

// Platform is the device. The PCI function is the embedded *pci.Config; the
// fixed ports are served by Platform itself (hw.PortIO, claimed with
// ClaimPorts); BAR0 and BAR1 are claimed by the Config when the guest
// programs them.
type Platform struct {
	*pci.Config
	unplug Unplugger
	warn   hw.Warner

	mu        sync.Mutex
	flags     uint8
	product   uint16
	build     uint32
	unplugged Unplugged
	logBuf    []byte
	logLines  int
}

// Unplugged records what the guest has unplugged so far.
type Unplugged struct {
	Disks    bool // all IDE/SCSI disks
	AuxDisks bool // IDE disks except the primary master
	NICs     bool
}

// State is the guest-visible state of the device.
type State struct {
	Config    [pci.ConfigSize]byte
	Flags     uint8
	Product   uint16 // driver product number written to 0x12
	Build     uint32 // driver build number written to 0x10
	Unplugged Unplugged
}

// New returns the platform device; io is where its BARs are claimed, u does
// the unplugging and must not be nil.
func New(io hw.IOSpace, u Unplugger) (*Platform, error) {
	if u == nil {
		return nil, fmt.Errorf("xen-platform: no unplugger: refusing to advertise an unplug that does nothing")
	}
	c := pci.NewConfig("xen-platform", io, pci.ID{
		Vendor: VendorXen, Device: DevicePlatform, Revision: 1,
		Class:     0xff8000, // PCI_CLASS_OTHERS<<8 | 0x80, prog-if 0
		SubVendor: VendorXen, SubDevice: DevicePlatform,
		InterruptPin: 1,
	})
	p := &Platform{Config: c, unplug: u}
	if err := c.SetBAR(0, pci.BAR{Kind: pci.BARIO, Size: bar0Size, Port: bar0{p}}); err != nil {
		return nil, err
	}
	if err := c.SetBAR(1, pci.BAR{Kind: pci.BARMem32Prefetch, Size: bar1Size, MMIO: bar1{p}}); err != nil {
		return nil, err
	}
	for r := uint16(0x40); r < pci.ConfigSize; r += 4 {
		c.SetWritable(r, 4, 0xffffffff) // QEMU's default wmask
	}
	c.Set(pci.RegCommand, 2, pci.CommandIO|pci.CommandMemory)
	return p, nil
}

// ClaimPorts claims the fixed ports 0x10–0x1f in io.
func (p *Platform) ClaimPorts(io hw.IOSpace) error {
	if err := io.ClaimPorts(PortFixed, NumPortFixed, p); err != nil {
		return fmt.Errorf("xen-platform: claim ports %#x+%d: %w", PortFixed, NumPortFixed, err)
	}
	return nil
}

// ReadPort implements hw.PortIO for the fixed ports
// (platform_fixed_ioport_read).
func (p *Platform) ReadPort(port uint16, size int) uint32 {
	off := int(port) - PortFixed
	if off < 0 || off >= NumPortFixed {
		p.warn.Warn("xen-platform: read outside the fixed ports", "port", fmt.Sprintf("%#x", port), "size", size)
		return ones(size)
	}
	switch size {
	case 1:
		switch off {
		case 0:
			p.mu.Lock()
			defer p.mu.Unlock()
			return uint32(p.flags)
		case 2:
			return ProtocolVersion
		}
		return 0xff
	case 2:
		if off == 0 {
			return Magic
		}
		return 0xffff
	case 4:
		return 0xffffffff
	}
	p.warn.Warn("xen-platform: bad read size", "port", fmt.Sprintf("%#x", port), "size", size)
	return ones(size)
}

// WritePort implements hw.PortIO for the fixed ports
// (platform_fixed_ioport_write).
func (p *Platform) WritePort(port uint16, size int, v uint32) {
	off := int(port) - PortFixed
	if off < 0 || off >= NumPortFixed {
		p.warn.Warn("xen-platform: write outside the fixed ports", "port", fmt.Sprintf("%#x", port), "size", size)
		return
	}
	switch {
	case size == 1 && off == 0:
		p.setFlags(uint8(v))
	case size == 1 && off == 2:
		p.logByte(uint8(v))
	case size == 2 && off == 0:
		p.doUnplug(uint16(v))
	case size == 2 && off == 2:
		p.mu.Lock()
		p.product = uint16(v)
		p.mu.Unlock()
		slog.Info("xen-platform: guest PV driver product", "product", v, "citrix", v == 1)
	case size == 4 && off == 0:
		p.mu.Lock()
		p.build = v
		p.mu.Unlock()
		slog.Info("xen-platform: guest PV driver build", "build", v)
	case size != 1 && size != 2 && size != 4:
		p.warn.Warn("xen-platform: bad write size", "port", fmt.Sprintf("%#x", port), "size", size)
	default:
		p.warn.Warn("xen-platform: write to an unused fixed port ignored", "port", fmt.Sprintf("%#x", port), "size", size)
	}
}

// setFlags is platform_fixed_ioport_writeb(0): the ROM lock needs
// XEN_DMOP_set_mem_type, which this device model does not issue, so the bit
// is refused (QEMU keeps the flag only if the call succeeded).
func (p *Platform) setFlags(v uint8) {
	if v&PFFlagROMLock != 0 {
		p.warn.Warn("xen-platform: guest asked to lock the ROM area read-only; not supported, left writable")
	}
}

// doUnplug acts on an unplug mask as QEMU's platform_fixed_ioport_writew
// does. Like QEMU, any disk bit (including the NVMe bit alone) unplugs the
// IDE disks; aux (keep the primary master) only when bit 2 comes without
// bit 0.
func (p *Platform) doUnplug(mask uint16) {
	slog.Info("xen-platform: guest requests unplug", "mask", fmt.Sprintf("%#x", mask))
	if mask&(UnplugIDESCSIDisks|UnplugAuxIDEDisks|UnplugNVMeDisks) != 0 {
		p.unplugDisks(mask&UnplugAuxIDEDisks != 0 && mask&UnplugIDESCSIDisks == 0)
	}
	if mask&UnplugAllNICs != 0 {
		p.unplugNICs()
	}
	if mask&^0xf != 0 {
		p.warn.Warn("xen-platform: unknown unplug bits ignored", "mask", fmt.Sprintf("%#x", mask))
	}
}

func (p *Platform) unplugDisks(auxOnly bool) {
	p.mu.Lock()
	if auxOnly {
		p.unplugged.AuxDisks = true
	} else {
		p.unplugged.Disks = true
	}
	p.mu.Unlock()
	p.unplug.UnplugDisks(auxOnly)
}

func (p *Platform) unplugNICs() {
	p.mu.Lock()
	p.unplugged.NICs = true
	p.mu.Unlock()
	p.unplug.UnplugNICs()
}

// logByte is log_writeb: a newline, or a full buffer, flushes a line.
func (p *Platform) logByte(b uint8) {
	p.mu.Lock()
	if b != '\n' && len(p.logBuf) < logBufSize-1 {
		p.logBuf = append(p.logBuf, b)
		p.mu.Unlock()
		return
	}
	line := string(p.logBuf)
	p.logBuf = p.logBuf[:0]
	p.logLines++
	n := p.logLines
	p.mu.Unlock()
	switch {
	case n <= maxLogLines:
		slog.Info("xen-platform: guest driver log", "line", line)
	case n == maxLogLines+1:
		slog.Warn("xen-platform: guest driver log: too many lines, suppressing the rest")
	}
}

// Unplugged reports what the guest has unplugged.
func (p *Platform) Unplugged() Unplugged {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unplugged
}

// bar0 is the 256-byte I/O BAR (xen_pci_io_ops: byte registers).
type bar0 struct{ p *Platform }

func (b bar0) ReadPort(port uint16, size int) uint32 {
	base, ok := b.p.BARBase(0)
	if !ok || uint64(port) < base || uint64(port)-base >= bar0Size || (size != 1 && size != 2 && size != 4) {
		b.p.warn.Warn("xen-platform: bad BAR0 read", "port", fmt.Sprintf("%#x", port), "size", size)
		return ones(size)
	}
	var v uint32
	for i := 0; i < size; i++ {
		by := uint32(0xff)
		if uint64(port)+uint64(i)-base == 0 {
			b.p.mu.Lock()
			by = uint32(b.p.flags)
			b.p.mu.Unlock()
		}
		v |= by << (8 * i)
	}
	return v
}

func (b bar0) WritePort(port uint16, size int, v uint32) {
	base, ok := b.p.BARBase(0)
	if !ok || uint64(port) < base || uint64(port)-base >= bar0Size || (size != 1 && size != 2 && size != 4) {
		b.p.warn.Warn("xen-platform: bad BAR0 write", "port", fmt.Sprintf("%#x", port), "size", size)
		return
	}
	for i := 0; i < size; i++ {
		off := uint64(port) + uint64(i) - base
		by := uint8(v >> (8 * i))
		switch off {
		case 0:
			b.p.setFlags(by)
		case 4: // old SUSE xen-kmp: outl(1, ioaddr+4)
			if by == 1 {
				b.p.unplugDisks(false)
				b.p.unplugNICs()
			}
		case 8: // old VMDP
			switch by {
			case 1:
				b.p.unplugDisks(false)
			case 2:
				b.p.unplugNICs()
			default:
				b.p.logByte(by)
			}
		}
	}
}

// bar1 is the 16 MiB MMIO BAR guests use as free guest-physical space (for
// example for grant-table frames): reads 0, writes ignored, as QEMU's
// platform_mmio_handler.
type bar1 struct{ p *Platform }

func (b bar1) ReadMMIO(addr uint64, size int) uint64 {
	b.p.warn.Warn("xen-platform: read from the platform MMIO BAR")
	return 0
}

func (b bar1) WriteMMIO(addr uint64, size int, v uint64) {
	b.p.warn.Warn("xen-platform: write to the platform MMIO BAR ignored")
}

// State returns the device's state.
func (p *Platform) State() State {
	cfg := p.Snapshot()
	p.mu.Lock()
	defer p.mu.Unlock()
	return State{Config: cfg, Flags: p.flags, Product: p.product, Build: p.build, Unplugged: p.unplugged}
}

// SetState restores a state returned by State. What the guest had
// unplugged is unplugged again here, so a restored guest never sees an
// emulated disk it had handed over to its PV drivers.
func (p *Platform) SetState(st State) error {
	if st.Flags&^PFFlagROMLock != 0 {
		return fmt.Errorf("xen-platform: saved flags %#x have undefined bits", st.Flags)
	}
	if err := p.Restore(st.Config); err != nil {
		return fmt.Errorf("xen-platform: %w", err)
	}
	p.mu.Lock()
	p.flags, p.product, p.build = st.Flags&^PFFlagROMLock, st.Product, st.Build
	p.mu.Unlock()
	if st.Unplugged.Disks {
		p.unplugDisks(false)
	} else if st.Unplugged.AuxDisks {
		p.unplugDisks(true)
	}
	if st.Unplugged.NICs {
		p.unplugNICs()
	}
	return nil
}

func ones(size int) uint32 {
	switch size {
	case 1:
		return 0xff
	case 2:
		return 0xffff
	}
	return 0xffffffff
}
