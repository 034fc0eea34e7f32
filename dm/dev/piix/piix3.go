package piix

import (
	"fmt"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// PIIX3 registers (Intel 82371SB datasheet §2.2; QEMU hw/isa/piix3.c).
const (
	RegPIRQA = 0x60 // PIRQRC[A:D]: bit 7 disables routing, bits 3:0 the ISA IRQ
	RegPIRQD = 0x63

	// PortRCR is the reset control register (datasheet §4.1.5; QEMU
	// rcr_write). The FADT names it as the reset register, value 6.
	PortRCR = 0xcf9

	rcrSystemReset = 1 << 1 // SRST type: stored only
	rcrResetCPU    = 1 << 2 // RCPU: reset now
)

// PIIX3 is function 0 of the PIIX3: the PCI-to-ISA bridge at 00:01.0
// (QEMU TYPE_PIIX3_XEN_DEVICE). Writes to the PIRQ route registers are passed
// to Xen as PCI link routes, as QEMU's xen_piix_pci_write_config_client does;
// Xen's emulated PIC/IOAPIC do the actual routing. It also implements
// hw.PortIO for the reset control register at PortRCR.
type PIIX3 struct {
	*pci.Config
	irq  hw.Interrupts
	sd   hw.Shutdown
	warn hw.Warner

	mu  sync.Mutex
	rcr uint8
}

// PIIX3State is the guest-visible state of the ISA bridge.
type PIIX3State struct {
	Config [pci.ConfigSize]byte
	RCR    uint8
}

// NewPIIX3 returns the ISA bridge. irq receives the PCI link routes and sd
// the reboot requested through PortRCR.
func NewPIIX3(io hw.IOSpace, irq hw.Interrupts, sd hw.Shutdown) *PIIX3 {
	c := pci.NewConfig("piix3", io, pci.ID{
		Vendor: 0x8086, Device: 0x7000,
		Class:      0x060100, // PCI_CLASS_BRIDGE_ISA
		HeaderType: pci.HeaderMultiFunction,
		SubVendor:  subVendorQumranet, SubDevice: subDeviceQEMU,
	})
	for r := uint16(0x40); r < pci.ConfigSize; r += 4 {
		c.SetWritable(r, 4, 0xffffffff)
	}
	// piix3_reset.
	for _, rv := range [][2]uint32{
		{0x04, 0x07}, {0x07, 0x02}, {0x4c, 0x4d}, {0x4e, 0x03},
		{0x60, 0x80}, {0x61, 0x80}, {0x62, 0x80}, {0x63, 0x80},
		{0x69, 0x02}, {0x70, 0x80}, {0x76, 0x0c}, {0x77, 0x0c}, {0x78, 0x02},
		{0xa0, 0x08}, {0xa8, 0x0f},
	} {
		c.Set(uint16(rv[0]), 1, rv[1])
	}
	p := &PIIX3{Config: c, irq: irq, sd: sd}
	c.OnWrite = p.configWritten
	return p
}

// configWritten scans a guest configuration write for PIRQ route updates.
// Like QEMU, it uses the written bytes: bit 7 set → route 0 (disabled),
// otherwise the low four bits name the ISA IRQ.
func (p *PIIX3) configWritten(reg uint16, size int, v uint32) {
	for i := 0; i < size; i++ {
		r := int(reg) + i
		if r < RegPIRQA || r > RegPIRQD {
			continue
		}
		p.setRoute(uint8(r-RegPIRQA), byte(v>>(8*i)))
	}
}

func (p *PIIX3) setRoute(link uint8, b byte) {
	irq := b & 0xf
	if b&0x80 != 0 {
		irq = 0
	}
	if err := p.irq.SetPCILinkRoute(link, irq); err != nil {
		p.warn.Warn("piix3: set_pci_link_route failed", "link", link, "irq", irq, "err", err)
	}
}

// Route returns what PIRQ register of link (0–3) holds.
func (p *PIIX3) Route(link uint8) uint8 {
	if link > 3 {
		return 0x80
	}
	return uint8(p.Get(uint16(RegPIRQA)+uint16(link), 1))
}

// ClaimPorts claims the reset control register in io.
func (p *PIIX3) ClaimPorts(io hw.IOSpace) error {
	if err := io.ClaimPorts(PortRCR, 1, p); err != nil {
		return fmt.Errorf("piix3: claim reset control register %#x: %w", PortRCR, err)
	}
	return nil
}

// ReadPort implements hw.PortIO for PortRCR. QEMU's RCR is byte-wide
// (impl.max_access_size 1); a wider read returns the RCR in its low byte and
// all-ones above, as the neighbouring bytes read with no decoder.
func (p *PIIX3) ReadPort(port uint16, size int) uint32 {
	if port != PortRCR || (size != 1 && size != 2 && size != 4) {
		p.warn.Warn("piix3: bad reset control register read", "port", fmt.Sprintf("%#x", port), "size", size)
		return ones(size)
	}
	if size != 1 {
		p.warn.Warn("piix3: wide reset control register read", "size", size)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return ones(size)&^0xff | uint32(p.rcr)
}

// WritePort implements hw.PortIO for PortRCR: bit 2 (RCPU) reboots the
// domain, bit 1 (SRST) is kept; only the low byte counts.
func (p *PIIX3) WritePort(port uint16, size int, v uint32) {
	if port != PortRCR || (size != 1 && size != 2 && size != 4) {
		p.warn.Warn("piix3: bad reset control register write", "port", fmt.Sprintf("%#x", port), "size", size, "value", v)
		return
	}
	if size != 1 {
		p.warn.Warn("piix3: wide reset control register write", "size", size)
	}
	if v&rcrResetCPU != 0 {
		if err := p.sd.Reboot(); err != nil {
			p.warn.Warn("piix3: reboot through reset control register failed", "err", err)
		}
		return
	}
	p.mu.Lock()
	p.rcr = uint8(v) & rcrSystemReset
	p.mu.Unlock()
}

// State returns the ISA bridge's state.
func (p *PIIX3) State() PIIX3State {
	p.mu.Lock()
	rcr := p.rcr
	p.mu.Unlock()
	return PIIX3State{Config: p.Snapshot(), RCR: rcr}
}

// SetState restores a state returned by State and re-issues the four PCI
// link routes it implies (idempotent in Xen, and right even if Xen's own
// saved routes were not restored).
func (p *PIIX3) SetState(st PIIX3State) error {
	if st.RCR&^rcrSystemReset != 0 {
		return fmt.Errorf("piix3: saved reset control register %#x has undefined bits", st.RCR)
	}
	if err := p.Restore(st.Config); err != nil {
		return fmt.Errorf("piix3: %w", err)
	}
	p.mu.Lock()
	p.rcr = st.RCR
	p.mu.Unlock()
	for link := uint8(0); link < 4; link++ {
		p.setRoute(link, p.Route(link))
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
