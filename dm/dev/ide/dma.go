package ide

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// Bus-master DMA (SFF-8038i; QEMU hw/ide/pci.c and the DMA half of core.c).
//
// A DMA command runs when both the drive has it pending (DRQ, u.dmaCmd) and
// the guest has set START in the bus-master command register, in either
// order. The channel then hands a copy of everything the transfer needs to a
// goroutine, which walks the PRD table, moves the data between the backend
// and guest memory in pieces of at most chunkSize bytes, and finally takes
// the channel lock to update the task file and bus-master status and raise
// the interrupt. The guest sees the bus master active (and the drive with
// DRQ) until then.

// chunkSize bounds the bounce buffer of a channel and the pieces reported
// to the Observer.
const chunkSize = 1 << 20

// bmPorts handles BAR4: 8 registers per channel. Wider accesses are split
// into byte accesses, as the PIIX decodes them.
type bmPorts struct{ c *Controller }

func (b bmPorts) ReadPort(port uint16, size int) uint32 {
	if size != 1 && size != 2 && size != 4 {
		b.c.warn.warn("ide: bus-master read of invalid size", "port", port, "size", size)
		return 0xffffffff
	}
	var v uint32
	for i := 0; i < size; i++ {
		off := (port + uint16(i)) & (bmBARSize - 1)
		v |= uint32(b.c.ch[off>>3].bmRead(int(off&7))) << (8 * i)
	}
	return v
}

func (b bmPorts) WritePort(port uint16, size int, v uint32) {
	if size != 1 && size != 2 && size != 4 {
		b.c.warn.warn("ide: bus-master write of invalid size", "port", port, "size", size)
		return
	}
	for i := 0; i < size; i++ {
		off := (port + uint16(i)) & (bmBARSize - 1)
		b.c.ch[off>>3].bmWrite(int(off&7), uint8(v>>(8*i)))
	}
}

func (ch *channel) bmRead(reg int) uint8 {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	switch reg {
	case bmCmd:
		return ch.bm.cmd
	case bmStatus:
		return ch.bm.status
	case 4, 5, 6, 7:
		return uint8(ch.bm.addr >> (8 * (reg - bmAddr)))
	}
	return 0 // reserved
}

func (ch *channel) bmWrite(reg int, v uint8) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	switch reg {
	case bmCmd:
		ch.bmCmdWrite(v)
	case bmStatus:
		// bmdma_status_writeb: bits 5–6 are plain storage, 1–2 write-1-to-clear,
		// 0 is read-only.
		s := ch.bm.status
		ch.bm.status = v&(bmStDrive0|bmStDrive1) | s&bmStActive | s&^v&(bmStError|bmStIRQ)
	case 4, 5, 6, 7:
		shift := 8 * uint(reg-bmAddr)
		ch.bm.addr = (ch.bm.addr&^(0xff<<shift) | uint32(v)<<shift) &^ 3
	}
}

// bmCmdWrite is bmdma_cmd_writeb.
func (ch *channel) bmCmdWrite(v uint8) {
	v &= bmCmdStart | bmCmdWrite
	if (v^ch.bm.cmd)&bmCmdStart == 0 {
		ch.bm.cmd = v
		return
	}
	if v&bmCmdStart == 0 {
		// Stopping the engine cannot abort a transfer half way (a partial
		// write would reach the disk): let it complete, as QEMU's
		// ide_cancel_dma_sync does.
		ch.waitIdle()
		ch.bm.status &^= bmStActive
		ch.bm.cmd = v
		return
	}
	ch.bm.cmd = v
	ch.bm.status |= bmStActive
	ch.maybeStartDMA()
}

// job is the work in flight on a channel: a DMA transfer or a flush.
type job struct {
	done  chan struct{}
	u     *unit
	flush bool

	// DMA parameters, copied when the transfer starts.
	kind     dmaKind
	drive    int
	be       blk.Backend
	toGuest  bool
	off      int64 // medium byte offset; -1 for reply data
	length   int64
	reply    []byte
	prd      uint32
	wce      bool
	sector   int64  // ATA: first sector
	count    uint32 // ATA: sectors
	memWrite bool   // bus-master direction bit
}

// faultKind classifies how a transfer failed.
type faultKind uint8

const (
	faultNone    faultKind = iota
	faultPRD               // PRD table unreadable, without end, or too short
	faultMemory            // a PRD points outside guest memory
	faultBackend           // the disk image failed
)

type jobResult struct {
	done  int64 // bytes fully transferred
	stay  bool  // the PRD table was longer than the transfer
	fault faultKind
	err   error
}

// maybeStartDMA starts the pending DMA command of the selected unit if the
// bus master is started and the channel idle. Called with mu held.
func (ch *channel) maybeStartDMA() {
	if ch.job != nil || ch.bm.cmd&bmCmdStart == 0 || ch.bm.status&bmStActive == 0 {
		return
	}
	u := ch.selected()
	if u.dmaCmd == dmaNone {
		return
	}
	j := &job{done: make(chan struct{}), u: u, kind: u.dmaCmd, drive: u.index, be: u.be,
		prd: ch.bm.addr, wce: u.wce, memWrite: ch.bm.cmd&bmCmdWrite != 0}
	switch u.dmaCmd {
	case dmaRead, dmaWrite:
		j.sector, j.count = u.getSector(), u.nsector
		if !u.rangeOK(j.sector, j.count) {
			ch.c.warn.warn("ide: DMA beyond the end of the disk", "unit", u.index,
				"sector", j.sector, "count", j.count, "sectors", u.nb)
			ch.dmaFailed(u, errIDNF, false)
			return
		}
		j.toGuest = u.dmaCmd == dmaRead
		j.off, j.length = j.sector*sectorSize, int64(j.count)*sectorSize
	case dmaATAPI:
		j.toGuest = true
		j.off, j.length = -1, u.replyLen
		if u.replyCD {
			if !u.mediumPresent() { // ejected while the command waited
				u.dmaCmd = dmaNone
				u.atapiError(senseNotReady, ascMediumNotPresent)
				ch.bm.status &^= bmStActive
				return
			}
			j.off = u.replyBase
		} else {
			j.reply = u.reply
		}
	}
	if j.toGuest != j.memWrite {
		// QEMU ignores the direction bit too; a guest that gets it wrong is
		// buggy but its data still goes where the command says.
		ch.c.warn.warn("ide: bus-master direction disagrees with the command", "unit", u.index,
			"to_memory", j.memWrite, "cmd_reads_disk", j.toGuest)
	}
	if !ch.c.busMaster() {
		ch.c.warn.warn("ide: DMA with bus mastering disabled in PCI COMMAND", "unit", u.index)
		ch.dmaFailed(u, errABRT, true)
		return
	}
	ch.launch(j)
}

// startJob starts an asynchronous FLUSH CACHE for u. Called with mu held.
func (ch *channel) startJob(u *unit) {
	ch.waitIdle() // one job per channel; DMA cannot be pending (DRQ would block the command)
	ch.launch(&job{done: make(chan struct{}), u: u, flush: true, be: u.be, drive: u.index})
}

func (ch *channel) launch(j *job) {
	ch.job = j
	go ch.run(j)
}

func (ch *channel) run(j *job) {
	var res jobResult
	if j.flush {
		if err := j.be.Flush(); err != nil {
			res = jobResult{fault: faultBackend, err: err}
		}
	} else {
		res = ch.transfer(j)
	}
	ch.mu.Lock()
	if ch.job == j {
		ch.finish(j, res)
		ch.job = nil
	}
	ch.mu.Unlock()
	close(j.done)
}

// finish completes a job under mu: task file, bus-master status, IRQ.
func (ch *channel) finish(j *job, res jobResult) {
	u := j.u
	if j.flush {
		u.flushAsync = false
		if res.err != nil {
			ch.c.warn.warn("ide: flush failed", "unit", u.index, "err", res.err)
			u.fail(errABRT)
		} else {
			u.status = statDRDY | statDSC
		}
		ch.setIRQ()
		return
	}
	u.dmaCmd = dmaNone
	switch res.fault {
	case faultNone:
		ch.c.warnPRDLonger(u, res.stay)
		if j.kind == dmaATAPI {
			u.replyPos = u.replyLen
			u.atapiOK() // also raises the IRQ, before Active is dropped below: same register state
		} else {
			u.setSector(j.sector + int64(j.count))
			u.nsector = 0
			u.err = 0
			u.status = statDRDY | statDSC
			ch.setIRQ()
		}
		if !res.stay {
			ch.bm.status &^= bmStActive
		}
	case faultBackend:
		ch.c.warn.warn("ide: DMA disk I/O failed", "unit", u.index, "err", res.err)
		if j.kind == dmaATAPI {
			u.atapiError(senseMediumError, ascUnrecoveredRead)
			ch.bm.status &^= bmStActive
			return
		}
		u.setSector(j.sector + res.done/sectorSize)
		bits := uint8(errABRT)
		if j.toGuest {
			bits = errUNC
		}
		ch.dmaFailed(u, bits, false)
	default:
		ch.c.warn.warn("ide: DMA aborted", "unit", u.index, "prd_table", fmt.Sprintf("%#x", j.prd), "err", res.err)
		if j.kind == dmaATAPI {
			u.atapiError(senseAbortedCommand, 0)
			u.err |= errABRT
			ch.bm.status = ch.bm.status&^bmStActive | bmStError
			return
		}
		u.setSector(j.sector + res.done/sectorSize)
		ch.dmaFailed(u, errABRT, true)
	}
}

// dmaFailed ends a DMA command with an ATA error (ide_dma_error), and with
// the bus-master error bit for faults of the bus master itself.
func (ch *channel) dmaFailed(u *unit, errBits uint8, busError bool) {
	u.dmaCmd = dmaNone
	if u.cd {
		u.atapiError(senseAbortedCommand, 0)
	} else {
		u.fail(errBits)
		ch.setIRQ()
	}
	ch.bm.status &^= bmStActive
	if busError {
		ch.bm.status |= bmStError
	}
}

func (c *Controller) warnPRDLonger(u *unit, stay bool) {
	if stay {
		// Legal (SFF-8038i: the interrupt comes with Active still set), but
		// no common guest does it.
		c.warn.warn("ide: PRD table longer than the transfer", "unit", u.index)
	}
}

var (
	errPRDNoEnd   = errors.New("PRD table has no end-of-table entry")
	errPRDShort   = errors.New("PRD table describes fewer bytes than the command transfers")
	errPRDUnread  = errors.New("PRD table is not in guest memory")
	errEmptyTable = errors.New("empty PRD table")
)

// walkPRD reads the PRD table at addr (bmdma_prepare_buf) and returns the
// segments covering the first need bytes. The table must end (EOT) within
// MaxPRDEntries entries and describe at least need bytes; stay reports that
// it describes more.
func (c *Controller) walkPRD(addr uint32, need int64, segs []Segment) ([]Segment, bool, error) {
	var tbl [64 * prdSize]byte
	a := uint64(addr &^ 3)
	var total int64
	for i := 0; i < MaxPRDEntries; {
		// Read up to the end of the page (at least one entry).
		n := int(hw.PageSize-a&(hw.PageSize-1)) / prdSize
		n = max(min(n, len(tbl)/prdSize, MaxPRDEntries-i), 1)
		if err := c.mem.ReadGPA(a, tbl[:n*prdSize]); err != nil {
			return segs, false, fmt.Errorf("%w: entry %d at %#x: %w", errPRDUnread, i, a, err)
		}
		for k := 0; k < n; k++ {
			e := tbl[k*prdSize:]
			gpa := uint64(binary.LittleEndian.Uint32(e) &^ 1)
			cnt := binary.LittleEndian.Uint32(e[4:])
			l := int64(cnt & 0xfffe)
			if l == 0 {
				l = 0x10000
			}
			if total < need {
				segs = append(segs, Segment{GPA: gpa, Len: uint32(min(l, need-total))})
			}
			total += l
			i++
			if cnt&prdEOT != 0 {
				if total < need {
					return segs, false, fmt.Errorf("%w: %d bytes in %d entries for %d", errPRDShort, total, i, need)
				}
				return segs, total > need, nil
			}
		}
		a += uint64(n * prdSize)
	}
	return segs, false, fmt.Errorf("%w within %d entries", errPRDNoEnd, MaxPRDEntries)
}

// transfer moves the data of a DMA job. It runs without mu; it uses only the
// job's copies and the channel's scratch buffers.
func (ch *channel) transfer(j *job) jobResult {
	c := ch.c
	if j.length <= 0 {
		return jobResult{fault: faultPRD, err: errEmptyTable}
	}
	segs, stay, err := c.walkPRD(j.prd, j.length, ch.segs[:0])
	ch.segs = segs[:0]
	if err != nil {
		return jobResult{fault: faultPRD, err: err}
	}
	obs := c.observer()
	if n := int(min(j.length, chunkSize)); cap(ch.bounce) < n {
		ch.bounce = make([]byte, n)
	}
	var done int64
	si, sOff := 0, uint32(0) // segment cursor
	for done < j.length {
		n := min(j.length-done, chunkSize)
		buf := ch.bounce[:n]
		// The segments of this piece.
		cs := ch.csegs[:0]
		for rem := n; rem > 0; {
			s := segs[si]
			l := min(int64(s.Len-sOff), rem)
			cs = append(cs, Segment{GPA: s.GPA + uint64(sOff), Len: uint32(l)})
			rem -= l
			sOff += uint32(l)
			if sOff == s.Len {
				si, sOff = si+1, 0
			}
		}
		ch.csegs = cs[:0]
		off := j.off + done
		if j.toGuest {
			var tok any
			if j.reply != nil {
				copy(buf, j.reply[done:])
			} else {
				if obs != nil {
					tok = obs.ReadBegin(j.drive, off, n)
				}
				if _, err := j.be.ReadAt(buf, off); err != nil {
					return jobResult{done: done, fault: faultBackend, err: err}
				}
			}
			p := int64(0)
			for k, s := range cs {
				err := c.mem.WriteGPA(s.GPA, buf[p:p+int64(s.Len)])
				if err != nil {
					c.reportWritten(obs, cs[:k])
					return jobResult{done: done, fault: faultMemory,
						err: fmt.Errorf("PRD segment %#x+%#x: %w", s.GPA, s.Len, err)}
				}
				c.markDirty(s.GPA, int(s.Len))
				p += int64(s.Len)
			}
			if obs != nil {
				if j.reply != nil {
					c.reportWritten(obs, cs)
				} else {
					obs.ReadDone(tok, j.drive, off, cs, buf)
				}
			}
		} else {
			p := int64(0)
			for _, s := range cs {
				if err := c.mem.ReadGPA(s.GPA, buf[p:p+int64(s.Len)]); err != nil {
					return jobResult{done: done, fault: faultMemory,
						err: fmt.Errorf("PRD segment %#x+%#x: %w", s.GPA, s.Len, err)}
				}
				p += int64(s.Len)
			}
			var tok any
			if obs != nil {
				tok = obs.WriteBegin(j.drive, off, n)
			}
			_, err := j.be.WriteAt(buf, off)
			if err == nil && !j.wce {
				err = j.be.Flush()
			}
			if obs != nil {
				obs.WriteDone(tok, cs, buf, err == nil)
			}
			if err != nil {
				return jobResult{done: done, fault: faultBackend, err: err}
			}
		}
		done += n
	}
	return jobResult{done: done, stay: stay}
}

// reportWritten tells the observer about guest memory DMA wrote outside a
// ReadDone.
func (c *Controller) reportWritten(obs Observer, segs []Segment) {
	if obs == nil {
		return
	}
	for _, s := range segs {
		obs.GuestWritten(s.GPA, uint64(s.Len))
	}
}
