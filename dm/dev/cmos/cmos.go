// Package cmos is the part of the MC146818 CMOS NVRAM that Xen leaves to the
// device model: indexes 0x0e–0x7f behind ports 0x70/0x71 (Xen's hvm/rtc.c
// emulates the clock registers below 0x0e and forwards an index write of
// 0x0e or more, and data accesses while the index is 0x0e or more; it masks
// bit 7, the NMI disable, off the index). The contents at start-up are those
// of QEMU's pc_cmos_init/pc_cmos_init_late (hw/i386/pc.c) for the xenfv
// machine: memory sizes, boot order, equipment, IDE geometry and BIOS
// translation, boot CPU count, century.
package cmos

import (
	"fmt"
	"sync"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// Ports of the RTC/CMOS (ISA).
const (
	PortIndex = 0x70
	PortData  = 0x71

	// FirstIndex is the first index the device model owns (Xen's
	// RTC_CMOS_SIZE); Size is the NVRAM size QEMU's mc146818rtc has.
	FirstIndex = 0x0e
	Size       = 128
)

// NVRAM locations (QEMU pc_cmos_init, SeaBIOS src/hw/rtc.h).
const (
	regFloppy        = 0x10
	regHDTypes       = 0x12
	regEquipment     = 0x14 // REG_EQUIPMENT_BYTE
	regBaseMemLo     = 0x15
	regExtMemLo      = 0x17
	regHD0Type       = 0x19
	regHD1Type       = 0x1a
	regHD0Info       = 0x1b
	regHD1Info       = 0x24
	regExtMem2Lo     = 0x30
	regCentury       = 0x32 // RTC_IBM_CENTURY_BYTE; Xen's FADT names it
	regMem16MLo      = 0x34
	regBootFlags     = 0x38 // boot[2]<<4 | fd boot-signature check off
	regTranslation   = 0x39
	regBootOrder     = 0x3d // boot[1]<<4 | boot[0]
	regHighMem       = 0x5b // 3 bytes, 64 KiB units above 4 GiB
	regBootCPUs      = 0x5f
	equipFPU         = 0x02
	equipPS2Mouse    = 0x04
	hdTypeUserDef    = 47
	xenBelow4GRAMEnd = 0xF0000000 // HVM_BELOW_4G_RAM_END (QEMU xen_ram_init)
)

// Translation is a BIOS CHS translation mode, numbered like QEMU's
// BIOS_ATA_TRANSLATION_*; CMOS 0x39 holds it minus one, 2 bits per drive.
type Translation int

const (
	TransAuto  Translation = iota // choose as QEMU's hd_bios_chs_auto_trans
	TransNone                     // CMOS 0
	TransLBA                      // CMOS 1
	TransLarge                    // CMOS 2
	TransRECHS                    // CMOS 3
)

// Disk is the physical geometry of an IDE hard disk as its IDENTIFY data
// reports it (1–16383 cylinders, 1–16 heads, 1–63 sectors).
type Disk struct {
	Cylinders   int
	Heads       int
	Sectors     int
	Translation Translation
}

// GeometryForSize returns the geometry QEMU gives a disk of the given number
// of 512-byte sectors when the disk has no partition table hinting at one
// (hw/block/hd-geometry.c guess_chs_for_size, hd_bios_chs_auto_trans): 16
// heads, 63 sectors, cylinders clamped to 2–16383, LBA translation unless
// the geometry fits in 1024 cylinders.
func GeometryForSize(sectors uint64) Disk {
	c := sectors / (16 * 63)
	c = min(max(c, 2), 16383)
	d := Disk{Cylinders: int(c), Heads: 16, Sectors: 63}
	d.Translation = autoTrans(d)
	return d
}

func autoTrans(d Disk) Translation {
	if d.Cylinders <= 1024 && d.Heads <= 16 && d.Sectors <= 63 {
		return TransNone
	}
	return TransLBA
}

// Config is what the NVRAM contents are computed from.
type Config struct {
	// RAMBytes is the guest RAM size QEMU is given with -m.
	RAMBytes uint64
	// MaxRAMBelow4G is the machine's max-ram-below-4g (libxl sets it when
	// mmio_hole is configured); 0 or more than 0xF0000000 means 0xF0000000.
	MaxRAMBelow4G uint64
	// BootOrder is -boot order=…: up to three distinct letters of a, b
	// (floppy), c (disk), d (CD-ROM), n (network). Empty means QEMU's
	// default for PCs, "cad".
	BootOrder string
	// NoFDBootChk is -no-fd-bootchk.
	NoFDBootChk bool
	// VCPUs is the number of boot CPUs (-smp).
	VCPUs int
	// Disks are the IDE hard disks by unit: 0 primary master, 1 primary
	// slave, 2 secondary master, 3 secondary slave. nil is no hard disk
	// (absent, or a CD-ROM).
	Disks [4]*Disk
	// Now, if set, gives the time the century byte is taken from
	// (default time.Now).
	Now func() time.Time
}

// CMOS is the NVRAM. It implements hw.PortIO for PortIndex and PortData and
// is safe for concurrent use.
type CMOS struct {
	warn hw.Warner

	mu    sync.Mutex
	index uint8
	data  [Size]byte
}

// State is the guest-visible state: the index latch and the NVRAM.
type State struct {
	Index uint8
	Data  [Size]byte
}

func bootNibble(c byte) byte {
	switch c {
	case 'a', 'b':
		return 1
	case 'c':
		return 2
	case 'd':
		return 3
	case 'n':
		return 4
	}
	return 0
}

// New returns the NVRAM initialised from cfg, or an error naming what in
// cfg is invalid.
func New(cfg Config) (*CMOS, error) {
	if cfg.RAMBytes == 0 {
		return nil, fmt.Errorf("cmos: RAM size is 0")
	}
	if cfg.VCPUs < 1 {
		return nil, fmt.Errorf("cmos: %d boot vCPUs", cfg.VCPUs)
	}
	order := cfg.BootOrder
	if order == "" {
		order = "cad"
	}
	if len(order) > 3 {
		return nil, fmt.Errorf("cmos: boot order %q: at most 3 boot devices on a PC", order)
	}
	var bds [3]byte
	for i := 0; i < len(order); i++ {
		if bds[i] = bootNibble(order[i]); bds[i] == 0 {
			return nil, fmt.Errorf("cmos: boot order %q: invalid boot device %q", order, order[i])
		}
		for j := 0; j < i; j++ {
			if order[j] == order[i] {
				return nil, fmt.Errorf("cmos: boot order %q: boot device %q given twice", order, order[i])
			}
		}
	}
	for u, d := range cfg.Disks {
		if d == nil {
			continue
		}
		if d.Cylinders < 1 || d.Cylinders > 16383 || d.Heads < 1 || d.Heads > 16 || d.Sectors < 1 || d.Sectors > 63 {
			return nil, fmt.Errorf("cmos: IDE unit %d: geometry %d/%d/%d out of range", u, d.Cylinders, d.Heads, d.Sectors)
		}
		if d.Translation < TransAuto || d.Translation > TransRECHS {
			return nil, fmt.Errorf("cmos: IDE unit %d: unknown translation %d", u, d.Translation)
		}
	}

	c := &CMOS{index: FirstIndex}
	set := func(reg int, v uint64) { c.data[reg] = byte(v) }
	set16 := func(reg int, v uint64) { set(reg, v); set(reg+1, v>>8) }

	// xen_ram_init: the RAM below 4 GiB ends at max-ram-below-4g.
	lowLimit := uint64(xenBelow4GRAMEnd)
	if cfg.MaxRAMBelow4G != 0 && cfg.MaxRAMBelow4G < lowLimit {
		lowLimit = cfg.MaxRAMBelow4G
	}
	below, above := cfg.RAMBytes, uint64(0)
	if cfg.RAMBytes >= lowLimit {
		below, above = lowLimit, cfg.RAMBytes-lowLimit
	}
	const kib, mib = 1 << 10, 1 << 20
	set16(regBaseMemLo, min(below/kib, 640))
	ext := uint64(0)
	if below > mib {
		ext = min((below-mib)/kib, 65535)
	}
	set16(regExtMemLo, ext)
	set16(regExtMem2Lo, ext)
	m16 := uint64(0)
	if below > 16*mib {
		m16 = min((below-16*mib)/(64*kib), 65535)
	}
	set16(regMem16MLo, m16)
	high := above / 65536
	set(regHighMem, high)
	set(regHighMem+1, high>>8)
	set(regHighMem+2, high>>16)

	// set_boot_dev.
	set(regBootOrder, uint64(bds[1]<<4|bds[0]))
	fdchk := byte(0)
	if cfg.NoFDBootChk {
		fdchk = 1
	}
	set(regBootFlags, uint64(bds[2]<<4|fdchk))

	// No floppy drives: 0x10 = 0 and no drive bits in the equipment byte
	// (pc_cmos_init_floppy).
	set(regFloppy, 0)
	set(regEquipment, equipFPU|equipPS2Mouse)

	// pc_cmos_init_late: primary-channel drive types and parameters, and
	// the translation of all four units.
	hdTypes := byte(0)
	if d := cfg.Disks[0]; d != nil {
		c.initHD(regHD0Type, regHD0Info, d)
		hdTypes |= 0xf0
	}
	if d := cfg.Disks[1]; d != nil {
		c.initHD(regHD1Type, regHD1Info, d)
		hdTypes |= 0x0f
	}
	set(regHDTypes, uint64(hdTypes))
	trans := byte(0)
	for u, d := range cfg.Disks {
		if d == nil {
			continue
		}
		t := d.Translation
		if t == TransAuto {
			t = autoTrans(*d)
		}
		trans |= byte(t-1) << (2 * u)
	}
	set(regTranslation, uint64(trans))

	// x86_rtc_set_cpus_count.
	if cfg.VCPUs > 0xff {
		set(regBootCPUs, 0)
	} else {
		set(regBootCPUs, uint64(cfg.VCPUs-1))
	}

	// mc146818rtc's rtc_set_cmos: the century in BCD (Xen's RTC runs in
	// BCD mode unless the guest changes register B).
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	cent := now().UTC().Year() / 100
	set(regCentury, uint64(cent/10%10<<4|cent%10))
	return c, nil
}

// cmos_init_hd: type 47 (user defined) and the parameter table.
func (c *CMOS) initHD(typeReg, info int, d *Disk) {
	c.data[typeReg] = hdTypeUserDef
	c.data[info+0] = byte(d.Cylinders)
	c.data[info+1] = byte(d.Cylinders >> 8)
	c.data[info+2] = byte(d.Heads)
	c.data[info+3] = 0xff // write precompensation: none
	c.data[info+4] = 0xff
	ctl := byte(0xc0)
	if d.Heads > 8 {
		ctl |= 0x08
	}
	c.data[info+5] = ctl
	c.data[info+6] = byte(d.Cylinders) // landing zone
	c.data[info+7] = byte(d.Cylinders >> 8)
	c.data[info+8] = byte(d.Sectors)
}

// ClaimPorts claims 0x70–0x71 in io. (Xen emulates the RTC on these ports
// and forwards only what is described in the package comment.)
func (c *CMOS) ClaimPorts(io hw.IOSpace) error {
	if err := io.ClaimPorts(PortIndex, 2, c); err != nil {
		return fmt.Errorf("cmos: claim ports %#x–%#x: %w", PortIndex, PortData, err)
	}
	return nil
}

// ReadPort implements hw.PortIO. The index port reads 0xff, as in QEMU's
// cmos_ioport_read; the data port reads the NVRAM byte at the index.
func (c *CMOS) ReadPort(port uint16, size int) uint32 {
	if size != 1 || (port != PortIndex && port != PortData) {
		c.warn.Warn("cmos: bad read", "port", fmt.Sprintf("%#x", port), "size", size)
		return ones(size)
	}
	if port == PortIndex {
		return 0xff
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.index < FirstIndex {
		c.warn.Warn("cmos: data read with a clock index (Xen's)", "index", fmt.Sprintf("%#x", c.index))
		return 0xff
	}
	return uint32(c.data[c.index])
}

// WritePort implements hw.PortIO: 0x70 latches the index (bit 7, NMI
// disable, masked off), 0x71 writes the NVRAM byte at the index.
func (c *CMOS) WritePort(port uint16, size int, v uint32) {
	if size != 1 || (port != PortIndex && port != PortData) {
		c.warn.Warn("cmos: bad write", "port", fmt.Sprintf("%#x", port), "size", size)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if port == PortIndex {
		c.index = uint8(v) & 0x7f
		return
	}
	if c.index < FirstIndex {
		c.warn.Warn("cmos: data write with a clock index (Xen's)", "index", fmt.Sprintf("%#x", c.index))
		return
	}
	c.data[c.index] = byte(v)
}

// Byte returns NVRAM byte i (for tests and diagnostics); indexes below
// FirstIndex or beyond Size read 0xff.
func (c *CMOS) Byte(i int) byte {
	if i < FirstIndex || i >= Size {
		return 0xff
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.data[i]
}

// State returns the NVRAM's state.
func (c *CMOS) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return State{Index: c.index, Data: c.data}
}

// SetState restores a state returned by State.
func (c *CMOS) SetState(st State) error {
	if st.Index >= Size {
		return fmt.Errorf("cmos: saved index %#x beyond the NVRAM", st.Index)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index, c.data = st.Index, st.Data
	for i := 0; i < FirstIndex; i++ {
		c.data[i] = 0
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
