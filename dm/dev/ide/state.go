package ide

import (
	"errors"
	"fmt"

	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// State is every guest-visible register of the controller and the command in
// progress, for save/restore. The versioned device-state format wraps it.
//
// Save after Drain (the core pauses the guest first): then no transfer is in
// flight. A State taken while a DMA transfer or a FLUSH CACHE was running
// records the command as pending (InFlight is set for information); SetState
// restarts it from the beginning, as QEMU's retry mechanism does after a
// migration. Restarting is safe: the task file is only advanced when a
// transfer completes, and the guest is paused while it is redone.
type State struct {
	Config   [pci.ConfigSize]byte
	Channels [2]ChannelState
}

// ChannelState is one bus and its bus-master registers.
type ChannelState struct {
	Selected uint8 // unit selected by device/head bit 4
	DevCtl   uint8 // device control register
	IRQ      bool  // level of the ISA IRQ line
	BMCmd    uint8
	BMStatus uint8
	BMAddr   uint32 // PRD table address
	InFlight bool   // a transfer or flush was running when the state was taken
	Units    [2]UnitState
}

// UnitState is one device (QEMU IDEState).
type UnitState struct {
	Present bool  // false for an absent or unplugged unit
	Media   Media // checked against the configured drive

	// Task file.
	Feature, HobFeature uint8
	NSector             uint32 // full count after the LBA48 transform (≤ 65536)
	HobNSector          uint8
	Sector, HobSector   uint8
	LCyl, HobLCyl       uint8
	HCyl, HobHCyl       uint8
	Select              uint8
	Status, Error       uint8
	LBA48               bool

	MultSectors uint32
	ReqNb       uint32
	LHeads      uint32 // geometry from INITIALIZE DEVICE PARAMETERS
	LSecs       uint32
	WriteCache  bool
	ID62, ID63  uint16
	ID88        uint16

	// PIO data phase: the block and the position in it.
	EndXfer uint8
	DataPtr int
	Data    []byte // the block, DataEnd = len(Data)

	// ATAPI.
	SenseKey, ASC uint8
	ATAPIDMA      bool
	ReplyCD       bool
	ReplyBase     int64
	ReplyLen      int64
	ReplyPos      int64
	Reply         []byte
	TrayOpen      bool
	TrayLocked    bool
	CDChanged     uint8
	NewMedia      bool

	// DMA command pending on (or running on) the bus master: 0 none, 1 ATA
	// read, 2 ATA write, 3 ATAPI data.
	DMACmd   uint8
	Flushing bool // FLUSH CACHE in progress
}

// State returns the current state. Call Drain first for a state without
// transfers in flight.
func (c *Controller) State() State {
	st := State{Config: c.Config.Snapshot()}
	for i, ch := range c.ch {
		ch.mu.Lock()
		cs := ChannelState{
			Selected: uint8(ch.cur), DevCtl: ch.devctl, IRQ: ch.level,
			BMCmd: ch.bm.cmd, BMStatus: ch.bm.status, BMAddr: ch.bm.addr,
			InFlight: ch.job != nil,
		}
		for k := range ch.units {
			cs.Units[k] = ch.units[k].state()
		}
		ch.mu.Unlock()
		st.Channels[i] = cs
	}
	return st
}

func (u *unit) state() UnitState {
	m := Disk
	if u.cd {
		m = CDROM
	}
	return UnitState{
		Present: u.present, Media: m,
		Feature: u.feature, HobFeature: u.hobFeature, NSector: u.nsector, HobNSector: u.hobNsector,
		Sector: u.sector, HobSector: u.hobSector, LCyl: u.lcyl, HobLCyl: u.hobLcyl,
		HCyl: u.hcyl, HobHCyl: u.hobHcyl, Select: u.sel, Status: u.status, Error: u.err,
		LBA48: u.lba48, MultSectors: u.multSectors, ReqNb: u.reqNb, LHeads: u.lheads, LSecs: u.lsecs,
		WriteCache: u.wce, ID62: u.id62, ID63: u.id63, ID88: u.id88,
		EndXfer: uint8(u.endXfer), DataPtr: u.dataPtr, Data: append([]byte(nil), u.buf[:u.dataEnd]...),
		SenseKey: u.senseKey, ASC: u.asc, ATAPIDMA: u.atapiDMA,
		ReplyCD: u.replyCD, ReplyBase: u.replyBase, ReplyLen: u.replyLen, ReplyPos: u.replyPos,
		Reply:    append([]byte(nil), u.reply...),
		TrayOpen: u.trayOpen, TrayLocked: u.trayLocked, CDChanged: u.cdChanged, NewMedia: u.newMedia,
		DMACmd: uint8(u.dmaCmd), Flushing: u.flushAsync,
	}
}

// SetState loads a state saved by State, on a controller configured with the
// same drives. A unit saved as absent whose disk is configured here is
// detached, as after UnplugDisks. The state is validated completely before
// anything changes; a pending DMA or flush restarts.
func (c *Controller) SetState(st State) error {
	c.Drain()
	for i, ch := range c.ch {
		cs := &st.Channels[i]
		if cs.Selected > 1 {
			return fmt.Errorf("ide%d: state: selected unit %d", i, cs.Selected)
		}
		ch.mu.Lock()
		for k := range ch.units {
			if err := ch.units[k].checkState(&cs.Units[k]); err != nil {
				ch.mu.Unlock()
				return fmt.Errorf("ide: state of unit %d: %w", i*2+k, err)
			}
		}
		ch.mu.Unlock()
	}
	if err := c.Config.Restore(st.Config); err != nil {
		return err
	}
	var detached []int
	for i, ch := range c.ch {
		cs := &st.Channels[i]
		ch.mu.Lock()
		ch.cur = int(cs.Selected)
		ch.devctl = cs.DevCtl
		ch.bm = bmRegs{cmd: cs.BMCmd & (bmCmdStart | bmCmdWrite), status: cs.BMStatus & 0x67, addr: cs.BMAddr &^ 3}
		for k := range ch.units {
			u := &ch.units[k]
			if u.present && !cs.Units[k].Present {
				if u.be != nil {
					_ = u.be.Close()
				}
				u.detach()
				detached = append(detached, u.index)
			}
			u.setState(&cs.Units[k])
		}
		// Xen restores the line itself (its ISA IRQ state is part of the HVM
		// context); asserting the same level again is idempotent.
		ch.level = cs.IRQ
		ch.c.setISA(ch.irq, cs.IRQ)
		for k := range ch.units {
			if u := &ch.units[k]; u.flushAsync && ch.job == nil {
				ch.launch(&job{done: make(chan struct{}), u: u, flush: true, be: u.be, drive: u.index})
			}
		}
		ch.maybeStartDMA()
		ch.mu.Unlock()
	}
	if d, ok := c.observer().(DetachObserver); ok {
		for _, i := range detached {
			d.DriveDetached(i)
		}
	}
	return nil
}

var errState = errors.New("invalid saved state")

func (u *unit) checkState(s *UnitState) error {
	if s.Present && !u.present {
		return fmt.Errorf("%w: saved with a drive, none configured", errState)
	}
	if s.Present && (s.Media == CDROM) != u.cd {
		return fmt.Errorf("%w: saved as %v, configured otherwise", errState, s.Media)
	}
	switch {
	case s.NSector > 65536:
		return fmt.Errorf("%w: sector count %d", errState, s.NSector)
	case s.MultSectors > maxMultSectors || s.MultSectors&(s.MultSectors-1) != 0:
		return fmt.Errorf("%w: multiple count %d", errState, s.MultSectors)
	case s.ReqNb > maxMultSectors:
		return fmt.Errorf("%w: block size %d", errState, s.ReqNb)
	case s.LHeads > 16 || s.LSecs > 255:
		return fmt.Errorf("%w: geometry %d/%d", errState, s.LHeads, s.LSecs)
	case s.EndXfer >= uint8(numXferFn):
		return fmt.Errorf("%w: transfer phase %d", errState, s.EndXfer)
	case len(s.Data) > pioBufSize || s.DataPtr < 0 || s.DataPtr > len(s.Data):
		return fmt.Errorf("%w: PIO position %d of %d", errState, s.DataPtr, len(s.Data))
	case s.DMACmd >= uint8(numDMAKind):
		return fmt.Errorf("%w: DMA command %d", errState, s.DMACmd)
	case s.ReplyLen < 0 || s.ReplyPos < 0 || s.ReplyPos > s.ReplyLen || s.ReplyBase < 0:
		return fmt.Errorf("%w: ATAPI reply %d of %d", errState, s.ReplyPos, s.ReplyLen)
	case !s.ReplyCD && int64(len(s.Reply)) != s.ReplyLen:
		return fmt.Errorf("%w: ATAPI reply of %d bytes, %d saved", errState, s.ReplyLen, len(s.Reply))
	}
	if !s.Present {
		if s.DMACmd != 0 || s.Flushing || len(s.Data) != 0 {
			return fmt.Errorf("%w: absent unit with a command in progress", errState)
		}
		return nil
	}
	if s.ReplyCD && (u.be == nil || s.ReplyBase+s.ReplyLen > int64(u.nb)*sectorSize) {
		return fmt.Errorf("%w: ATAPI reply beyond the medium", errState)
	}
	if k := dmaKind(s.DMACmd); (k == dmaATAPI) != (u.cd && k != dmaNone) {
		return fmt.Errorf("%w: DMA command %d for a %v", errState, s.DMACmd, s.Media)
	}
	if s.Flushing && (u.be == nil || u.be.ReadOnly()) {
		return fmt.Errorf("%w: flush without a writable medium", errState)
	}
	return nil
}

func (u *unit) setState(s *UnitState) {
	u.feature, u.hobFeature, u.nsector, u.hobNsector = s.Feature, s.HobFeature, s.NSector, s.HobNSector
	u.sector, u.hobSector, u.lcyl, u.hobLcyl, u.hcyl, u.hobHcyl = s.Sector, s.HobSector, s.LCyl, s.HobLCyl, s.HCyl, s.HobHCyl
	u.sel, u.status, u.err, u.lba48 = s.Select, s.Status, s.Error, s.LBA48
	u.multSectors, u.reqNb = s.MultSectors, s.ReqNb
	if s.Present && !u.cd {
		u.lheads, u.lsecs = s.LHeads, s.LSecs
	}
	u.wce, u.id62, u.id63, u.id88 = s.WriteCache, s.ID62, s.ID63, s.ID88
	u.endXfer = xferFn(s.EndXfer)
	u.dataEnd = copy(u.buf, s.Data)
	u.dataPtr = s.DataPtr
	u.senseKey, u.asc, u.atapiDMA = s.SenseKey, s.ASC, s.ATAPIDMA
	u.replyCD, u.replyBase, u.replyLen, u.replyPos = s.ReplyCD, s.ReplyBase, s.ReplyLen, s.ReplyPos
	u.reply = nil
	if !s.ReplyCD {
		u.reply = append([]byte(nil), s.Reply...)
	}
	u.trayOpen, u.trayLocked, u.cdChanged, u.newMedia = s.TrayOpen, s.TrayLocked, s.CDChanged, s.NewMedia
	u.dmaCmd = dmaKind(s.DMACmd)
	u.flushAsync = s.Flushing
}
