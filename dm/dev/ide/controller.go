// Package ide is the PIIX3 IDE function (00:01.1, 8086:7010) of the xenfv
// machine: two legacy ATA channels (0x1f0/0x3f6 on IRQ 14, 0x170/0x376 on
// IRQ 15) with ATA disks and ATAPI CD-ROMs, and SFF-8038i bus-master DMA at
// BAR4. It follows QEMU's hw/ide/core.c, atapi.c and piix.c register for
// register, because SeaBIOS and Linux's ata_piix were tested against those.
//
// Every byte a guest moves to or from its disks passes through this package:
// PIO through the data port, DMA through the PRD walker in dma.go. DMA runs on
// a goroutine per channel (one command in flight per channel, as on the
// hardware), so a slow backend never stalls the ioreq event loop; PIO data
// phases are served synchronously. An Observer (the page↔sector tracker) sees
// each DMA transfer after its data landed and before its completion
// interrupt, and each guest write before it reaches the disk.
//
// Where this model knowingly differs from QEMU 7.2, it is to refuse bad
// requests sooner and more clearly, never to accept more:
//   - an LBA range beyond the medium fails with IDNF (QEMU: ABRT), for PIO
//     before any data moves;
//   - a PRD table shorter than the transfer, without an end-of-table entry
//     within MaxPRDEntries, or pointing outside guest memory aborts the
//     command with ABRT, the bus-master error bit and an interrupt (QEMU:
//     Active drops without an interrupt, or the table silently ends after
//     4 KiB);
//   - DMA with PCI bus mastering disabled fails the same way (QEMU waits
//     forever);
//   - SMART and DATA SET MANAGEMENT are neither offered nor accepted;
//   - INITIALIZE DEVICE PARAMETERS sets the CHS translation (QEMU ignores it);
//   - a bus without devices raises no interrupts.
package ide

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// DevFn is where the xenfv machine puts the IDE function: 00:01.1.
var DevFn = pci.DevFn(1, 1)

// Legacy (ISA compatibility) resources of the two channels.
const (
	PrimaryCmd    = 0x1f0
	PrimaryCtl    = 0x3f6
	PrimaryIRQ    = 14
	SecondaryCmd  = 0x170
	SecondaryCtl  = 0x376
	SecondaryIRQ  = 15
	BMDMABAR      = 4 // BAR index of the bus-master registers
	pciClassIDE   = 0x010180
	pciVendor     = 0x8086
	pciDevice     = 0x7010
	subVendorQEMU = 0x1af4
	subDeviceQEMU = 0x1100
)

// Media is the kind of a unit.
type Media uint8

const (
	Disk Media = iota
	CDROM
)

func (m Media) String() string {
	if m == CDROM {
		return "cdrom"
	}
	return "disk"
}

// Drive is what sits on one IDE unit.
type Drive struct {
	Media Media
	// Backend holds the data. A disk needs a writable one; a CD-ROM may have
	// none (an empty tray) and is always read through ReadAt only.
	Backend blk.Backend
	// Serial is reported by IDENTIFY; empty means QEMU's "QM0000<n>", n =
	// index+1.
	Serial string
}

// Segment is one contiguous piece of guest-physical memory of a DMA transfer
// (the part of a PRD entry the transfer used), in transfer order.
type Segment = blk.Segment

// Observer sees the data the drives move. It is the hook of the page↔sector
// tracker (see TrackerObserver). drive is the unit index 0–3 (-drive
// index=), off a byte offset on that drive's medium. For a DMA transfer the
// calls come from the channel's I/O goroutine, in order, after the data moved
// and before the completion interrupt is raised; for PIO from the port access
// that finished the data block. Long transfers are reported in pieces of at
// most 1 MiB, each a contiguous range of the medium.
//
// Methods must not call into the Controller and must not keep segs or data
// after they return.
type Observer interface {
	// ReadBegin is called before the backend read of a DMA transfer into
	// guest memory is issued. Its result is passed back to ReadDone.
	ReadBegin(drive int, off, n int64) any
	// ReadDone reports n = len(data) bytes read from off that have landed in
	// guest memory along segs.
	ReadDone(tok any, drive int, off int64, segs []Segment, data []byte)
	// WriteBegin is called before a guest write of n bytes at off (DMA or
	// PIO) reaches the backend. Its result is passed back to WriteDone.
	WriteBegin(drive int, off, n int64) any
	// WriteDone reports the outcome of that write: data is what was written;
	// segs the guest memory it came from (nil for PIO, whose data came
	// through the CPU). ok is false when the backend failed.
	WriteDone(tok any, segs []Segment, data []byte, ok bool)
	// GuestWritten reports guest memory written by DMA with anything other
	// than a completed ReadDone transfer: ATAPI replies (INQUIRY, TOC, …) and
	// transfers that failed part way.
	GuestWritten(gpa, n uint64)
}

// DetachObserver is an optional extension of Observer: DriveDetached is
// called when UnplugDisks detaches a drive or its medium changes, after the
// last transfer on it completed.
type DetachObserver interface {
	DriveDetached(drive int)
}

// Config is what New needs.
type Config struct {
	IO    hw.IOSpace       // legacy ports and BAR4 are claimed here
	Mem   hw.GuestMemory   // DMA target
	IRQ   hw.Interrupts    // ISA IRQ 14/15
	Dirty hw.DirtyReporter // told about every page DMA wrote; may be nil
	// Drives by -drive index: ide0 master, ide0 slave, ide1 master, ide1
	// slave. nil entries are absent units.
	Drives [4]*Drive
	// Observer, optional; see also SetObserver.
	Observer Observer
	// Logger, optional (slog.Default() otherwise).
	Logger *slog.Logger
}

// Controller is the PIIX3 IDE function. It implements pci.Function through
// the embedded *pci.Config; the core must also call ClaimLegacyPorts and
// plug it into the bus at DevFn.
type Controller struct {
	*pci.Config

	io    hw.IOSpace
	mem   hw.GuestMemory
	irq   hw.Interrupts
	dirty hw.DirtyReporter
	log   *slog.Logger
	obs   atomic.Pointer[obsBox]
	warn  warner

	ch [2]*channel
}

type obsBox struct{ o Observer }

// New builds the controller with its drives. It claims nothing yet: BAR4 is
// claimed by the PCI configuration when the guest enables it, and the legacy
// ports by ClaimLegacyPorts.
func New(cfg Config) (*Controller, error) {
	if cfg.IO == nil || cfg.Mem == nil || cfg.IRQ == nil {
		return nil, errors.New("ide: Config needs IO, Mem and IRQ")
	}
	c := &Controller{io: cfg.IO, mem: cfg.Mem, irq: cfg.IRQ, dirty: cfg.Dirty, log: cfg.Logger}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("dev", "piix3-ide")
	c.warn.log = c.log
	c.SetObserver(cfg.Observer)
	for i, d := range cfg.Drives {
		if d == nil {
			continue
		}
		if d.Media == Disk {
			if d.Backend == nil {
				return nil, fmt.Errorf("ide: disk %d has no backend", i)
			}
			if d.Backend.ReadOnly() {
				// As QEMU's ide_init_drive: "Can't use a read-only drive".
				return nil, fmt.Errorf("ide: disk %d (%s) is read-only; IDE disks must be writable", i, d.Backend.Name())
			}
			if d.Backend.Size() < sectorSize {
				return nil, fmt.Errorf("ide: disk %d (%s) is smaller than one sector", i, d.Backend.Name())
			}
		} else if d.Media != CDROM {
			return nil, fmt.Errorf("ide: drive %d: unknown media %d", i, d.Media)
		}
	}
	c.Config = pci.NewConfig("piix3-ide", cfg.IO, pci.ID{
		Vendor: pciVendor, Device: pciDevice, Class: pciClassIDE,
		SubVendor: subVendorQEMU, SubDevice: subDeviceQEMU,
	})
	// PCI_STATUS as piix_ide_reset sets it: DEVSEL medium, fast back-to-back.
	c.Config.Set(pci.RegStatus, 2, 0x0280)
	// Device-specific registers (IDETIM at 0x40/0x42, SIDETIM, UDMA …) are
	// plain storage, writable as in QEMU (hvmloader writes 0x8000 to 0x40 and
	// 0x42; Linux's ata_piix checks their decode-enable bits).
	for r := uint16(0x40); r < pci.ConfigSize; r += 4 {
		c.Config.SetWritable(r, 4, 0xffffffff)
	}
	if err := c.Config.SetBAR(BMDMABAR, pci.BAR{Kind: pci.BARIO, Size: bmBARSize, Port: bmPorts{c}}); err != nil {
		return nil, err
	}
	for i := range c.ch {
		ch := &channel{c: c, idx: i, cmdBase: PrimaryCmd, ctlPort: PrimaryCtl, irq: PrimaryIRQ}
		if i == 1 {
			ch.cmdBase, ch.ctlPort, ch.irq = SecondaryCmd, SecondaryCtl, SecondaryIRQ
		}
		for j := range ch.units {
			ch.units[j].init(ch, i*2+j, cfg.Drives[i*2+j])
		}
		ch.busReset()
		c.ch[i] = ch
	}
	return c, nil
}

// ClaimLegacyPorts claims the fixed command blocks and control registers of
// both channels (0x1f0–0x1f7, 0x3f6, 0x170–0x177, 0x376). 0x3f7/0x377 stay
// unclaimed: they belong to the floppy controller.
func (c *Controller) ClaimLegacyPorts() error {
	for _, ch := range c.ch {
		if err := c.io.ClaimPorts(ch.cmdBase, 8, ch); err != nil {
			return fmt.Errorf("ide%d: command block %#x: %w", ch.idx, ch.cmdBase, err)
		}
		if err := c.io.ClaimPorts(ch.ctlPort, 1, ch); err != nil {
			c.io.ReleasePorts(ch.cmdBase, 8)
			return fmt.Errorf("ide%d: control register %#x: %w", ch.idx, ch.ctlPort, err)
		}
	}
	return nil
}

// ReleaseLegacyPorts undoes ClaimLegacyPorts.
func (c *Controller) ReleaseLegacyPorts() {
	for _, ch := range c.ch {
		c.io.ReleasePorts(ch.cmdBase, 8)
		c.io.ReleasePorts(ch.ctlPort, 1)
	}
}

// SetObserver installs (or, with nil, removes) the transfer observer. It
// takes effect for transfers that start afterwards.
func (c *Controller) SetObserver(o Observer) {
	if o == nil {
		c.obs.Store(nil)
		return
	}
	c.obs.Store(&obsBox{o})
}

func (c *Controller) observer() Observer {
	if b := c.obs.Load(); b != nil {
		return b.o
	}
	return nil
}

// Drain waits until no channel has I/O in flight (a DMA transfer or a FLUSH
// CACHE). With the guest paused it stays so; the core calls it before saving
// state and before Flush.
func (c *Controller) Drain() {
	for _, ch := range c.ch {
		ch.mu.Lock()
		ch.waitIdle()
		ch.mu.Unlock()
	}
}

// Flush drains and then flushes every attached backend.
func (c *Controller) Flush() error {
	c.Drain()
	var errs []error
	for _, b := range c.backends() {
		if b.ReadOnly() {
			continue
		}
		if err := b.Flush(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// backends lists the attached backends.
func (c *Controller) backends() []blk.Backend {
	var out []blk.Backend
	for _, ch := range c.ch {
		ch.mu.Lock()
		for i := range ch.units {
			if b := ch.units[i].be; b != nil {
				out = append(out, b)
			}
		}
		ch.mu.Unlock()
	}
	return out
}

// Close drains, flushes and closes every attached backend. The units are
// absent afterwards.
func (c *Controller) Close() error {
	err := c.Flush()
	for _, ch := range c.ch {
		ch.mu.Lock()
		ch.waitIdle()
		for i := range ch.units {
			u := &ch.units[i]
			if u.be != nil {
				err = errors.Join(err, u.be.Close())
			}
			u.detach()
		}
		ch.busReset()
		ch.mu.Unlock()
	}
	return err
}

// Reset is a device reset (piix_ide_reset): both buses and their bus-master
// registers return to power-on state. Transfers in flight complete first.
// The PCI configuration space is left alone.
func (c *Controller) Reset() {
	for _, ch := range c.ch {
		ch.mu.Lock()
		ch.waitIdle()
		ch.busReset()
		ch.mu.Unlock()
	}
}

// UnplugDisks is the xen-platform unplug of emulated disks
// (pci_xen_ide_unplug): it detaches the backend of every disk unit — all of
// them, or all but the primary master with auxOnly — after its last transfer
// completed and its data was flushed, closes it, and resets the controller.
// CD-ROM units stay. A detached unit is absent from then on: the guest can
// no longer reach that disk through IDE while it uses it through PV drivers.
func (c *Controller) UnplugDisks(auxOnly bool) error {
	var errs []error
	var detached []int
	for _, ch := range c.ch {
		ch.mu.Lock()
		ch.waitIdle()
		for j := range ch.units {
			u := &ch.units[j]
			if !u.present || u.cd || (auxOnly && u.index == 0) {
				continue
			}
			if err := u.be.Flush(); err != nil {
				errs = append(errs, err)
			}
			if err := u.be.Close(); err != nil {
				errs = append(errs, err)
			}
			c.log.Info("unplugged emulated disk", "unit", u.index, "backend", u.be.Name())
			u.detach()
			detached = append(detached, u.index)
		}
		ch.mu.Unlock()
	}
	c.Reset()
	if d, ok := c.observer().(DetachObserver); ok {
		for _, i := range detached {
			d.DriveDetached(i)
		}
	}
	return errors.Join(errs...)
}

// ChangeMedium replaces the medium of CD-ROM unit index (0–3) with b, or
// ejects it when b is nil (QMP eject / blockdev-change-medium). The guest
// sees the change as NOT READY, then UNIT ATTENTION, and a media event. The
// previous backend is returned, not closed.
func (c *Controller) ChangeMedium(index int, b blk.Backend) (blk.Backend, error) {
	if index < 0 || index > 3 {
		return nil, fmt.Errorf("ide: no unit %d", index)
	}
	ch := c.ch[index/2]
	ch.mu.Lock()
	ch.waitIdle()
	u := &ch.units[index%2]
	if !u.present || !u.cd {
		ch.mu.Unlock()
		return nil, fmt.Errorf("ide: unit %d is not a CD-ROM drive", index)
	}
	old := u.be
	u.setMedium(b)
	ch.setIRQ()
	ch.mu.Unlock()
	if d, ok := c.observer().(DetachObserver); ok && old != nil {
		d.DriveDetached(index)
	}
	return old, nil
}

// Geometry reports the default CHS geometry of disk unit index, as the CMOS
// (registers 0x19–0x23) and the BIOS translation need it.
func (c *Controller) Geometry(index int) (cyls, heads, secs int, ok bool) {
	if index < 0 || index > 3 {
		return 0, 0, 0, false
	}
	ch := c.ch[index/2]
	ch.mu.Lock()
	defer ch.mu.Unlock()
	u := &ch.units[index%2]
	if !u.present || u.cd {
		return 0, 0, 0, false
	}
	return int(u.cyls), int(u.heads), int(u.secs), true
}

// Present reports which units exist (for the CMOS equipment bytes and logs).
func (c *Controller) Present(index int) (Media, bool) {
	if index < 0 || index > 3 {
		return 0, false
	}
	ch := c.ch[index/2]
	ch.mu.Lock()
	defer ch.mu.Unlock()
	u := &ch.units[index%2]
	if u.cd {
		return CDROM, u.present
	}
	return Disk, u.present
}

func (c *Controller) setISA(irq uint8, level bool) {
	if err := c.irq.SetISAIRQ(irq, level); err != nil {
		c.warn.warn("ide: setting the IRQ line failed", "irq", irq, "level", level, "err", err)
	}
}

func (c *Controller) busMaster() bool {
	return c.Config.Get(pci.RegCommand, 2)&pci.CommandMaster != 0
}

func (c *Controller) markDirty(gpa uint64, n int) {
	if c.dirty == nil || n <= 0 {
		return
	}
	first := gpa >> hw.PageShift
	last := (gpa + uint64(n) - 1) >> hw.PageShift
	c.dirty.MarkDirty(first, last-first+1)
}

// warner logs guest-triggered problems without letting a guest flood the
// log: each message is logged for its first few occurrences, then at powers
// of two.
type warner struct {
	log  *slog.Logger
	mu   sync.Mutex
	seen map[string]uint64
}

const warnBurst = 4

func (w *warner) warn(msg string, args ...any) {
	w.mu.Lock()
	if w.seen == nil {
		w.seen = map[string]uint64{}
	}
	n := w.seen[msg]
	if n == 0 && len(w.seen) >= 256 {
		w.mu.Unlock()
		return
	}
	n++
	w.seen[msg] = n
	w.mu.Unlock()
	if n <= warnBurst || n&(n-1) == 0 {
		if n > warnBurst {
			args = append(args, "occurrences", n)
		}
		l := w.log
		if l == nil {
			l = slog.Default()
		}
		l.Warn(msg, args...)
	}
}

// count returns how often msg was reported (tests).
func (w *warner) count(msg string) uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seen[msg]
}
