package ide

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// channel is one IDE bus (QEMU IDEBus) with its bus-master registers
// (BMDMAState). All its state is guarded by mu; the I/O goroutine of a DMA
// transfer works on copies and takes mu only to complete.
type channel struct {
	c       *Controller
	idx     int
	cmdBase uint16
	ctlPort uint16
	irq     uint8

	mu     sync.Mutex
	level  bool // the IRQ line as last driven
	units  [2]unit
	cur    int   // selected unit (device/head bit 4)
	devctl uint8 // device control register
	bm     bmRegs
	job    *job // transfer or flush in flight, nil when idle

	// Used only by the goroutine running job (one at a time).
	bounce []byte
	segs   []Segment
	csegs  []Segment
}

type bmRegs struct {
	cmd    uint8
	status uint8
	addr   uint32
}

// xferFn says what happens when the PIO buffer has been transferred (QEMU's
// end_transfer_func), and so in which direction the data port works.
type xferFn uint8

const (
	xferStop        xferFn = iota // ide_transfer_stop: device→host, then done
	xferSectorRead                // ide_sector_read: next block of a PIO read
	xferSectorWrite               // ide_sector_write: host→device sector data
	xferATAPICmd                  // ide_atapi_cmd: host→device command packet
	xferATAPIReply                // ide_atapi_cmd_reply_end: next ATAPI data block
	numXferFn
)

// hostToDevice reports whether the data port is written in this phase.
func (f xferFn) hostToDevice() bool { return f == xferSectorWrite || f == xferATAPICmd }

// dmaKind is the DMA command waiting for (or running on) the bus master.
type dmaKind uint8

const (
	dmaNone dmaKind = iota
	dmaRead
	dmaWrite
	dmaATAPI
	numDMAKind
)

// pioBufSize holds the largest PIO block: an ATAPI byte count limit of
// 0xfffe (ATA blocks are at most 16 sectors).
const pioBufSize = 64 << 10

// unit is one device on a bus (QEMU IDEState).
type unit struct {
	ch      *channel
	index   int // -drive index 0–3
	present bool
	cd      bool
	be      blk.Backend
	nb      uint64 // medium size in 512-byte sectors, 0 without medium
	serial  string

	cyls, heads, secs uint32 // default geometry
	lheads, lsecs     uint32 // current geometry (INITIALIZE DEVICE PARAMETERS)

	// Task file.
	feature, hobFeature uint8
	nsector             uint32 // up to 65536 after the LBA48 transform
	hobNsector          uint8
	sector, hobSector   uint8
	lcyl, hobLcyl       uint8
	hcyl, hobHcyl       uint8
	sel                 uint8
	status, err         uint8
	lba48               bool

	multSectors uint32
	reqNb       uint32 // sectors per PIO block of the current command
	wce         bool   // volatile write cache enabled (IDENTIFY word 85)
	id62, id63  uint16 // DMA mode words as SET FEATURES left them
	id88        uint16

	// PIO data phase.
	buf              []byte
	dataPtr, dataEnd int
	endXfer          xferFn

	// ATAPI.
	senseKey, asc uint8
	atapiDMA      bool
	replyCD       bool   // the data comes from the medium …
	replyBase     int64  // … starting at this byte offset,
	reply         []byte // or from this buffer
	replyLen      int64  // total bytes of the data phase
	replyPos      int64  // bytes already sent
	trayOpen      bool
	trayLocked    bool
	cdChanged     uint8 // 1: report NOT READY next, 2: then UNIT ATTENTION
	newMedia      bool

	// DMA / asynchronous commands.
	dmaCmd     dmaKind
	flushAsync bool // FLUSH CACHE running on the channel's goroutine
}

func (u *unit) init(ch *channel, index int, d *Drive) {
	*u = unit{ch: ch, index: index, buf: make([]byte, pioBufSize)}
	u.id62, u.id63, u.id88 = 0x07, 0x07, 0x3f|1<<13 // UDMA5 selected (QEMU default)
	if d == nil {
		return
	}
	u.present = true
	u.cd = d.Media == CDROM
	u.serial = d.Serial
	if u.serial == "" {
		u.serial = fmt.Sprintf("QM%05d", index+1)
	}
	if u.cd {
		u.setMedium(d.Backend)
		u.cdChanged, u.newMedia = 0, false
		return
	}
	u.be = d.Backend
	u.nb = uint64(d.Backend.Size()) / sectorSize
	u.wce = true
	if r, ok := d.Backend.(interface{ Cache() blk.CacheMode }); ok {
		u.wce = r.Cache().WriteCache()
	}
	// hd_geometry_guess without a partition table: 16 heads, 63 sectors.
	u.heads, u.secs = 16, 63
	u.cyls = uint32(min(max(u.nb/(16*63), 2), 16383))
	u.lheads, u.lsecs = u.heads, u.secs
}

// setMedium inserts b (nil: ejects) into a CD-ROM unit.
func (u *unit) setMedium(b blk.Backend) {
	u.be = b
	u.nb = 0
	if b != nil {
		u.nb = uint64(b.Size()) / sectorSize
	}
	u.trayOpen = b == nil
	u.cdChanged = 1
	u.newMedia = true
}

// detach makes the unit absent (platform unplug).
func (u *unit) detach() {
	ch, idx, buf := u.ch, u.index, u.buf
	*u = unit{ch: ch, index: idx, buf: buf}
	u.id62, u.id63, u.id88 = 0x07, 0x07, 0x3f|1<<13
}

// mediumPresent: a CD-ROM with a readable medium and the tray closed.
func (u *unit) mediumPresent() bool {
	return u.be != nil && !u.trayOpen && u.nb >= cdSectorSize/sectorSize
}

func (ch *channel) selected() *unit { return &ch.units[ch.cur] }

func (ch *channel) anyPresent() bool { return ch.units[0].present || ch.units[1].present }

// setIRQ is ide_bus_set_irq + bmdma_irq: unless nIEN is set, the bus-master
// status records the interrupt and the line goes high.
func (ch *channel) setIRQ() {
	if !ch.anyPresent() || ch.devctl&ctlNIEN != 0 {
		return
	}
	ch.bm.status |= bmStIRQ
	if !ch.level {
		ch.level = true
		ch.c.setISA(ch.irq, true)
	}
}

func (ch *channel) lowerIRQ() {
	if ch.level {
		ch.level = false
		ch.c.setISA(ch.irq, false)
	}
}

// waitIdle waits for the channel's job, if any, to complete. Called and
// returns with mu held; drops it while waiting.
func (ch *channel) waitIdle() {
	for ch.job != nil {
		j := ch.job
		ch.mu.Unlock()
		<-j.done
		ch.mu.Lock()
	}
}

// ReadPort implements hw.PortIO for the command block and control register.
func (ch *channel) ReadPort(port uint16, size int) uint32 {
	if size != 1 && size != 2 && size != 4 {
		ch.c.warn.warn("ide: port read of invalid size", "port", port, "size", size)
		return 0xffffffff
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	switch {
	case port == ch.cmdBase:
		if size == 1 {
			// Byte reads of the data register: QEMU's ide_ioport_read.
			ch.c.warn.warn("ide: byte access to the data register", "port", port)
			return 0xff
		}
		return ch.readData(size)
	case port > ch.cmdBase && port < ch.cmdBase+8:
		v := uint32(ch.readReg(int(port - ch.cmdBase)))
		if size == 2 && port+1 < ch.cmdBase+8 {
			// A word access to the byte registers is two byte accesses.
			v |= uint32(ch.readReg(int(port+1-ch.cmdBase))) << 8
		} else if size != 1 {
			ch.c.warn.warn("ide: wide read of a byte register", "port", port, "size", size)
			v |= ones(size) &^ 0xff
		}
		return v
	case port == ch.ctlPort:
		v := uint32(ch.altStatus())
		if size != 1 {
			v |= ones(size) &^ 0xff // 0x3f7 is the floppy controller's
		}
		return v
	}
	ch.c.warn.warn("ide: read of a port outside the channel", "port", port, "size", size)
	return ones(size)
}

// WritePort implements hw.PortIO for the command block and control register.
func (ch *channel) WritePort(port uint16, size int, v uint32) {
	if size != 1 && size != 2 && size != 4 {
		ch.c.warn.warn("ide: port write of invalid size", "port", port, "size", size)
		return
	}
	ch.mu.Lock()
	defer ch.mu.Unlock()
	switch {
	case port == ch.cmdBase:
		if size == 1 {
			ch.c.warn.warn("ide: byte access to the data register", "port", port)
			return
		}
		ch.writeData(size, v)
	case port > ch.cmdBase && port < ch.cmdBase+8:
		ch.writeReg(int(port-ch.cmdBase), uint8(v))
		if size == 2 && port+1 < ch.cmdBase+8 {
			ch.writeReg(int(port+1-ch.cmdBase), uint8(v>>8))
		} else if size != 1 {
			ch.c.warn.warn("ide: wide write of a byte register", "port", port, "size", size)
		}
	case port == ch.ctlPort:
		ch.writeCtl(uint8(v))
	default:
		ch.c.warn.warn("ide: write to a port outside the channel", "port", port, "size", size)
	}
}

func ones(size int) uint32 {
	if size >= 4 {
		return 0xffffffff
	}
	return 1<<(8*uint(size)) - 1
}

// readReg is ide_ioport_read for registers 1–7.
func (ch *channel) readReg(reg int) uint8 {
	u := ch.selected()
	none := !ch.anyPresent()
	absent := ch.cur == 1 && !u.present
	hob := ch.devctl&ctlHOB != 0
	switch reg {
	case regError:
		switch {
		case none || absent:
			return 0
		case hob:
			return u.hobFeature
		}
		return u.err
	case regNSector:
		switch {
		case none:
			return 0
		case hob:
			return u.hobNsector
		}
		return uint8(u.nsector)
	case regSector:
		switch {
		case none:
			return 0
		case hob:
			return u.hobSector
		}
		return u.sector
	case regLCyl:
		switch {
		case none:
			return 0
		case hob:
			return u.hobLcyl
		}
		return u.lcyl
	case regHCyl:
		switch {
		case none:
			return 0
		case hob:
			return u.hobHcyl
		}
		return u.hcyl
	case regSelect:
		if none {
			return 0
		}
		return u.sel
	default: // regStatus
		v := u.status
		if none || absent {
			v = 0
		}
		ch.lowerIRQ()
		return v
	}
}

// altStatus is ide_status_read: the status without lowering the IRQ.
func (ch *channel) altStatus() uint8 {
	u := ch.selected()
	if !ch.anyPresent() || ch.cur == 1 && !u.present {
		return 0
	}
	return u.status
}

// writeReg is ide_ioport_write for registers 1–7: both devices receive
// every task-file write.
func (ch *channel) writeReg(reg int, v uint8) {
	if reg != regStatus && ch.selected().status&(statBSY|statDRQ) != 0 {
		// Task-file writes while busy are ignored.
		return
	}
	if reg != regStatus {
		ch.devctl &^= ctlHOB
	}
	for i := range ch.units {
		u := &ch.units[i]
		switch reg {
		case regError:
			u.hobFeature, u.feature = u.feature, v
		case regNSector:
			u.hobNsector, u.nsector = uint8(u.nsector), uint32(v)
		case regSector:
			u.hobSector, u.sector = u.sector, v
		case regLCyl:
			u.hobLcyl, u.lcyl = u.lcyl, v
		case regHCyl:
			u.hobHcyl, u.hcyl = u.hcyl, v
		case regSelect:
			u.sel = v | selAlwaysOn
		}
	}
	switch reg {
	case regSelect:
		if v&selDEV != 0 {
			ch.cur = 1
		} else {
			ch.cur = 0
		}
	case regStatus:
		ch.devctl &^= ctlHOB
		ch.lowerIRQ()
		ch.execCmd(v)
	}
}

// writeCtl is ide_ctrl_write. A rising SRST resets both devices at once
// (QEMU does it from a bottom half right after the write).
func (ch *channel) writeCtl(v uint8) {
	rising := ch.devctl&ctlSRST == 0 && v&ctlSRST != 0
	ch.devctl = v
	if rising {
		ch.softReset()
		ch.devctl &^= ctlSRST
	}
}

// softReset is ide_bus_perform_srst.
func (ch *channel) softReset() {
	ch.waitIdle()
	for i := range ch.units {
		u := &ch.units[i]
		u.transferStop()
		u.reset()
		u.diagnostic()
	}
}

// busReset is ide_bus_reset + bmdma_reset (device reset, unplug).
func (ch *channel) busReset() {
	ch.cur = 0
	ch.devctl = 0
	for i := range ch.units {
		ch.units[i].reset()
	}
	ch.bm = bmRegs{}
	ch.lowerIRQ()
}

// reset is ide_reset.
func (u *unit) reset() {
	u.multSectors = maxMultSectors
	u.feature, u.err, u.nsector, u.sector, u.lcyl, u.hcyl = 0, 0, 0, 0, 0, 0
	u.hobFeature, u.hobSector, u.hobNsector, u.hobLcyl, u.hobHcyl = 0, 0, 0, 0, 0
	u.sel = selAlwaysOn
	u.status = statDRDY | statDSC
	u.lba48 = false
	u.senseKey, u.asc = 0, 0
	u.cdChanged = 0
	u.atapiDMA = false
	u.replyCD, u.replyBase, u.reply, u.replyLen, u.replyPos = false, 0, nil, 0, 0
	u.trayLocked, u.trayOpen = false, false
	u.reqNb = 0
	u.dmaCmd = dmaNone
	u.flushAsync = false
	u.setSignature()
	u.transferStop()
}

// setSignature is ide_set_signature.
func (u *unit) setSignature() {
	u.sel &^= selHS
	u.nsector = 1
	u.sector = 1
	switch {
	case u.cd:
		u.lcyl, u.hcyl = 0x14, 0xeb
	case u.present:
		u.lcyl, u.hcyl = 0, 0
	default:
		u.lcyl, u.hcyl = 0xff, 0xff
	}
}

// diagnostic is cmd_exec_dev_diagnostic.
func (u *unit) diagnostic() {
	u.setSignature()
	u.err = 0x01 // device 0 passed, device 1 passed or not present
	if u.cd {
		// Packet devices return a clear status, DRDY not set (ATAPI-6 §9.10).
		u.status = 0
		return
	}
	u.status = statDRDY | statDSC
	u.ch.setIRQ()
}

// transferStart begins a PIO data phase of size bytes of u.buf.
func (u *unit) transferStart(size int, fn xferFn) {
	u.dataPtr, u.dataEnd, u.endXfer = 0, size, fn
	if u.status&statERR == 0 {
		u.status |= statDRQ
	}
}

// transferStop ends the data phase (ide_transfer_stop).
func (u *unit) transferStop() {
	u.dataPtr, u.dataEnd, u.endXfer = 0, 0, xferStop
	u.status &^= statDRQ
}

// abort is ide_abort_command.
func (u *unit) abort() {
	u.transferStop()
	u.status = statDRDY | statERR
	u.err = errABRT
}

// fail reports an error with the given error bits.
func (u *unit) fail(errBits uint8) {
	u.transferStop()
	u.status = statDRDY | statERR
	u.err = errBits
}

func (ch *channel) readData(size int) uint32 {
	u := ch.selected()
	if u.status&statDRQ == 0 || u.endXfer.hostToDevice() {
		return 0
	}
	if u.dataPtr+size > u.dataEnd {
		return 0
	}
	var v uint32
	if size == 2 {
		v = uint32(binary.LittleEndian.Uint16(u.buf[u.dataPtr:]))
	} else {
		v = binary.LittleEndian.Uint32(u.buf[u.dataPtr:])
	}
	u.dataPtr += size
	if u.dataPtr >= u.dataEnd {
		u.status &^= statDRQ
		u.endTransfer()
	}
	return v
}

func (ch *channel) writeData(size int, v uint32) {
	u := ch.selected()
	if u.status&statDRQ == 0 || !u.endXfer.hostToDevice() {
		return
	}
	if u.dataPtr+size > u.dataEnd {
		return
	}
	if size == 2 {
		binary.LittleEndian.PutUint16(u.buf[u.dataPtr:], uint16(v))
	} else {
		binary.LittleEndian.PutUint32(u.buf[u.dataPtr:], v)
	}
	u.dataPtr += size
	if u.dataPtr >= u.dataEnd {
		u.status &^= statDRQ
		u.endTransfer()
	}
}

// endTransfer runs when the guest has moved the whole PIO block.
func (u *unit) endTransfer() {
	switch u.endXfer {
	case xferSectorRead:
		u.sectorRead()
	case xferSectorWrite:
		u.sectorWrite()
	case xferATAPICmd:
		u.atapiCmd()
	case xferATAPIReply:
		u.atapiReplyNext()
	default:
		u.transferStop()
	}
}
