package ide

import (
	"encoding/binary"
)

// ATAPI: the PACKET command and the SCSI/MMC subset SeaBIOS and Linux's sr
// driver use (QEMU hw/ide/atapi.c).

const (
	checkReady = 1 << 0 // NOT READY without a medium
	allowUA    = 1 << 1 // runs despite a pending UNIT ATTENTION
	nonData    = 1 << 2 // transfers no data: a byte count limit of 0 is fine
)

type atapiCmd struct {
	fn    func(u *unit, p []byte)
	flags uint8
}

var atapiCommands = [256]atapiCmd{
	scsiTestUnitReady:  {(*unit).scsiTestUnitReady, checkReady | nonData},
	scsiRequestSense:   {(*unit).scsiRequestSense, allowUA},
	scsiInquiry:        {(*unit).scsiInquiry, allowUA},
	scsiStartStopUnit:  {(*unit).scsiStartStopUnit, nonData},
	scsiPreventAllow:   {(*unit).scsiPreventAllow, nonData},
	scsiReadCapacity:   {(*unit).scsiReadCapacity, checkReady},
	scsiRead10:         {(*unit).scsiRead, checkReady},
	scsiSeek10:         {(*unit).scsiSeek, checkReady | nonData},
	scsiReadTOC:        {(*unit).scsiReadTOC, checkReady},
	scsiGetConfig:      {(*unit).scsiGetConfig, allowUA},
	scsiGetEventStatus: {(*unit).scsiGetEventStatus, allowUA},
	scsiModeSense10:    {(*unit).scsiModeSense, 0},
	scsiRead12:         {(*unit).scsiRead, checkReady},
	scsiSetSpeed:       {(*unit).scsiOK, nonData},
	scsiMechStatus:     {(*unit).scsiMechStatus, 0},
}

// cmdPacket is the ATA PACKET command: receive a 12-byte command packet.
func (u *unit) cmdPacket(uint8) bool {
	if u.feature&0x02 != 0 { // overlapped commands are not supported
		u.abort()
		return true
	}
	u.status = statDRDY | statDSC
	u.atapiDMA = u.feature&1 != 0
	u.nsector = atapiIntCoD // command packet expected
	u.transferStart(atapiPacketSize, xferATAPICmd)
	return false
}

// atapiCmd is ide_atapi_cmd: the packet has arrived.
func (u *unit) atapiCmd() {
	var pkt [atapiPacketSize]byte
	copy(pkt[:], u.buf)
	e := &atapiCommands[pkt[0]]
	if u.senseKey == senseUnitAttention && e.flags&allowUA == 0 {
		// ide_atapi_cmd_check_status.
		u.err = errMC | senseUnitAttention<<4
		u.status = statERR
		u.nsector = 0
		u.ch.setIRQ()
		return
	}
	// A changed medium is first reported as absent, then as UNIT ATTENTION,
	// so that guests that do not poll for events notice the change.
	if e.flags&allowUA == 0 && !u.trayOpen && u.be != nil && u.cdChanged != 0 {
		if u.cdChanged == 1 {
			u.atapiError(senseNotReady, ascMediumNotPresent)
			u.cdChanged = 2
		} else {
			u.atapiError(senseUnitAttention, ascMediumMayHaveChange)
			u.cdChanged = 0
		}
		return
	}
	if e.flags&checkReady != 0 && !u.mediumPresent() {
		u.atapiError(senseNotReady, ascMediumNotPresent)
		return
	}
	if e.fn == nil {
		u.ch.c.warn.warn("ide: unsupported ATAPI command", "unit", u.index, "opcode", pkt[0])
		u.atapiError(senseIllegalRequest, ascIllegalOpcode)
		return
	}
	// A data command over PIO needs a byte count limit (ATA8-ACS 7.17.6.49).
	if e.flags&nonData == 0 && !u.atapiDMA && u.byteCountLimit() == 0 {
		u.ch.c.warn.warn("ide: ATAPI PIO command with a byte count limit of 0", "unit", u.index, "opcode", pkt[0])
		u.abort()
		u.ch.setIRQ()
		return
	}
	e.fn(u, pkt[:])
}

func (u *unit) byteCountLimit() int {
	bcl := int(u.lcyl) | int(u.hcyl)<<8
	if bcl == 0xffff {
		return 0xfffe
	}
	return bcl
}

// atapiOK is ide_atapi_cmd_ok.
func (u *unit) atapiOK() {
	u.err = 0
	u.status = statDRDY | statDSC
	u.nsector = u.nsector&^7 | atapiIntIO | atapiIntCoD
	u.transferStop()
	u.ch.setIRQ()
}

// atapiError is ide_atapi_cmd_error.
func (u *unit) atapiError(key, asc uint8) {
	u.err = key << 4
	u.status = statDRDY | statERR
	u.nsector = u.nsector&^7 | atapiIntIO | atapiIntCoD
	u.senseKey, u.asc = key, asc
	u.transferStop()
	u.ch.setIRQ()
}

// atapiReply starts the data-in phase of a reply held in memory.
func (u *unit) atapiReply(data []byte, maxLen int) {
	if len(data) > maxLen {
		data = data[:maxLen]
	}
	u.replyCD, u.replyBase, u.reply = false, 0, data
	u.startReply(int64(len(data)))
}

// atapiRead starts the data-in phase of n sectors of the medium from lba.
func (u *unit) atapiRead(lba, n int64) {
	u.replyCD, u.replyBase, u.reply = true, lba*cdSectorSize, nil
	u.startReply(n * cdSectorSize)
}

func (u *unit) startReply(n int64) {
	u.replyLen, u.replyPos = n, 0
	if n == 0 {
		u.atapiOK()
		return
	}
	if u.atapiDMA {
		u.status = statDRDY | statDSC | statDRQ
		u.dmaCmd = dmaATAPI
		u.ch.maybeStartDMA()
		return
	}
	u.status = statDRDY | statDSC
	u.atapiReplyNext()
}

// atapiReplyNext is ide_atapi_cmd_reply_end for PIO: offer the next block
// of at most the byte count limit, or finish.
func (u *unit) atapiReplyNext() {
	left := u.replyLen - u.replyPos
	if left <= 0 {
		u.atapiOK()
		return
	}
	size := left
	if bcl := int64(u.byteCountLimit()); size > bcl {
		size = bcl &^ 1 // must be even when the transfer continues
	}
	if size <= 0 {
		size = min(left, 0xfffe)
	}
	size = min(size, pioBufSize)
	data := u.buf[:size]
	if u.replyCD {
		if !u.mediumPresent() { // ejected during the transfer
			u.atapiError(senseNotReady, ascMediumNotPresent)
			return
		}
		off := u.replyBase + u.replyPos
		if _, err := u.be.ReadAt(data, off); err != nil {
			u.ch.c.warn.warn("ide: CD-ROM read failed", "unit", u.index, "offset", off, "err", err)
			u.atapiError(senseMediumError, ascUnrecoveredRead)
			return
		}
	} else {
		copy(data, u.reply[u.replyPos:])
	}
	u.replyPos += size
	u.lcyl, u.hcyl = uint8(size), uint8(size>>8)
	u.nsector = u.nsector&^7 | atapiIntIO
	u.transferStart(int(size), xferATAPIReply)
	u.ch.setIRQ()
}

func (u *unit) totalCDSectors() uint64 { return u.nb >> 2 }

func (u *unit) scsiOK([]byte)            { u.atapiOK() }
func (u *unit) scsiTestUnitReady([]byte) { u.atapiOK() }

func (u *unit) scsiRequestSense(p []byte) {
	maxLen := int(p[4])
	b := make([]byte, 18)
	b[0] = 0x70 | 0x80 // current error, valid
	b[2] = u.senseKey
	b[7] = 10
	b[12] = u.asc
	if u.senseKey == senseUnitAttention {
		u.senseKey = senseNone
	}
	u.atapiReply(b, maxLen)
}

// scsiInquiry is cmd_inquiry: standard data, or the VPD pages 0x00 and 0x83.
func (u *unit) scsiInquiry(p []byte) {
	maxLen := int(p[4])
	if p[1]&1 != 0 {
		b := []byte{0x05, p[2], 0, 0}
		switch p[2] {
		case 0x00: // supported pages
			b = append(b, 0x00, 0x83)
		case 0x83: // device identification: the serial number
			if maxLen < 4+24 {
				u.atapiError(senseIllegalRequest, 0x4b) // data phase error
				return
			}
			b = append(b, 0x02, 0x00, 0x00, 20)
			b = append(b, padSCSI(u.serial, 20)...)
		default:
			u.atapiError(senseIllegalRequest, ascInvalidField)
			return
		}
		b[3] = byte(len(b) - 4)
		u.atapiReply(b, maxLen)
		return
	}
	b := make([]byte, 36)
	b[0] = 0x05 // CD-ROM
	b[1] = 0x80 // removable
	b[2] = 0x00
	b[3] = 0x21 // ATAPI-2 response format
	b[4] = 36 - 5
	copy(b[8:], padSCSI("QEMU", 8))
	copy(b[16:], padSCSI(modelCD, 16))
	copy(b[32:], padSCSI(firmwareRev, 4))
	u.atapiReply(b, maxLen)
}

func padSCSI(s string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = ' '
		if i < len(s) {
			b[i] = s[i]
		}
	}
	return b
}

func (u *unit) scsiStartStopUnit(p []byte) {
	start, loej, pwr := p[4]&1 != 0, p[4]&2 != 0, p[4]&0xf0
	if pwr != 0 { // power conditions only
		u.atapiOK()
		return
	}
	if loej {
		if !start && !u.trayOpen && u.trayLocked {
			key := uint8(senseIllegalRequest)
			if u.be != nil {
				key = senseNotReady
			}
			u.atapiError(key, ascRemovalPrevented)
			return
		}
		u.trayOpen = !start
	}
	u.atapiOK()
}

func (u *unit) scsiPreventAllow(p []byte) {
	u.trayLocked = p[4]&1 != 0
	u.atapiOK()
}

func (u *unit) scsiReadCapacity([]byte) {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, uint32(u.totalCDSectors()-1)) // last LBA
	binary.BigEndian.PutUint32(b[4:], cdSectorSize)
	u.atapiReply(b, 8)
}

func (u *unit) scsiRead(p []byte) {
	var n uint64
	if p[0] == scsiRead10 {
		n = uint64(binary.BigEndian.Uint16(p[7:]))
	} else {
		n = uint64(binary.BigEndian.Uint32(p[6:]))
	}
	if n == 0 {
		u.atapiOK()
		return
	}
	lba := uint64(binary.BigEndian.Uint32(p[2:]))
	total := u.totalCDSectors()
	if lba >= total || n > total-lba {
		u.ch.c.warn.warn("ide: CD-ROM read beyond the end of the medium", "unit", u.index,
			"lba", lba, "count", n, "sectors", total)
		u.atapiError(senseIllegalRequest, ascLBAOutOfRange)
		return
	}
	u.atapiRead(int64(lba), int64(n))
}

func (u *unit) scsiSeek(p []byte) {
	if uint64(binary.BigEndian.Uint32(p[2:])) >= u.totalCDSectors() {
		u.atapiError(senseIllegalRequest, ascLBAOutOfRange)
		return
	}
	u.atapiOK()
}

// scsiReadTOC is cmd_read_toc_pma_atip for formats 0 (TOC) and 1 (session
// info) of a single-track data disc.
func (u *unit) scsiReadTOC(p []byte) {
	maxLen := int(binary.BigEndian.Uint16(p[7:]))
	format := p[9] >> 6
	msf := p[1]&2 != 0
	track := p[6]
	total := u.totalCDSectors()
	switch format {
	case 0:
		if track > 1 && track != 0xaa {
			u.atapiError(senseIllegalRequest, ascInvalidField)
			return
		}
		b := []byte{0, 0, 1, 1} // length, first track, last track
		addr := func(lba uint64) {
			if msf {
				lba += 150
				b = append(b, 0, byte(lba/75/60), byte(lba/75%60), byte(lba%75))
			} else {
				b = binary.BigEndian.AppendUint32(b, uint32(lba))
			}
		}
		if track <= 1 {
			b = append(b, 0, 0x14, 1, 0) // data track 1
			addr(0)
		}
		b = append(b, 0, 0x16, 0xaa, 0) // lead-out
		addr(total)
		binary.BigEndian.PutUint16(b, uint16(len(b)-2))
		u.atapiReply(b, maxLen)
	case 1:
		b := make([]byte, 12)
		b[1], b[2], b[3] = 0x0a, 1, 1
		u.atapiReply(b, maxLen)
	default:
		u.atapiError(senseIllegalRequest, ascInvalidField)
	}
}

// scsiGetConfig is cmd_get_configuration: the feature header and the
// profile list, nothing more.
func (u *unit) scsiGetConfig(p []byte) {
	if p[2] != 0 || p[3] != 0 { // only "all features" from feature 0
		u.atapiError(senseIllegalRequest, ascInvalidField)
		return
	}
	maxLen := int(binary.BigEndian.Uint16(p[7:]))
	const profDVD, profCD = 0x10, 0x08
	b := make([]byte, 20)
	cur := uint16(0)
	if u.mediumPresent() {
		cur = profCD
		if u.nb > cdMaxSectors512 {
			cur = profDVD
		}
	}
	binary.BigEndian.PutUint16(b[6:], cur)
	b[10] = 0x03 // feature 0: persistent, current
	b[11] = 8    // two profile descriptors
	for i, prof := range []uint16{profDVD, profCD} {
		binary.BigEndian.PutUint16(b[12+4*i:], prof)
		if prof == cur {
			b[14+4*i] = 1
		}
	}
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	u.atapiReply(b, maxLen)
}

// scsiGetEventStatus is cmd_get_event_status_notification, polled media
// events only.
func (u *unit) scsiGetEventStatus(p []byte) {
	maxLen := int(binary.BigEndian.Uint16(p[7:]))
	if p[1]&1 == 0 { // asynchronous mode is not supported
		u.atapiError(senseIllegalRequest, ascInvalidField)
		return
	}
	const gesnMedia = 4
	b := []byte{0, 0, 0, 1 << gesnMedia}
	if p[4]&(1<<gesnMedia) == 0 {
		b[2] = 0x80 // no event available
		u.atapiReply(b, maxLen)
		return
	}
	b[2] = gesnMedia
	status := uint8(0)
	switch {
	case u.trayOpen:
		status = 1 // tray open
	case u.be != nil:
		status = 2 // medium present
	}
	event := uint8(0)
	if !u.trayOpen && u.newMedia {
		event = 2 // new medium
		u.newMedia = false
	}
	b = append(b, event, status, 0, 0)
	binary.BigEndian.PutUint16(b, uint16(len(b)-4))
	u.atapiReply(b, maxLen)
}

// scsiModeSense is cmd_mode_sense (10): current values of the error
// recovery, CD audio control and capabilities pages.
func (u *unit) scsiModeSense(p []byte) {
	maxLen := int(binary.BigEndian.Uint16(p[7:]))
	action, code := p[2]>>6, p[2]&0x3f
	switch action {
	case 0:
	case 3:
		u.atapiError(senseIllegalRequest, ascSavingParamsNotSupp)
		return
	default:
		u.atapiError(senseIllegalRequest, ascInvalidField)
		return
	}
	var b []byte
	header := func(n int) {
		b = make([]byte, n)
		binary.BigEndian.PutUint16(b, uint16(n-2))
		b[2] = 0x70
		b[8] = code
		b[9] = byte(n - 10)
	}
	switch code {
	case 0x01: // read/write error recovery
		header(16)
		b[11] = 0x05
	case 0x0e: // CD audio control
		header(24)
	case 0x2a: // capabilities and mechanical status
		header(30)
		b[10] = 0x3b // reads CD-R/RW, DVD-ROM/R/RAM
		b[12] = 0x71 // audio play, …
		b[13] = 3 << 5
		b[14] = 1<<0 | 1<<3 | 1<<5 // lock, eject, tray loader
		if u.trayLocked {
			b[14] |= 1 << 1
		}
		binary.BigEndian.PutUint16(b[16:], 704) // 4x
		b[19] = 2
		binary.BigEndian.PutUint16(b[20:], 512)
		binary.BigEndian.PutUint16(b[22:], 704)
	default:
		u.atapiError(senseIllegalRequest, ascInvalidField)
		return
	}
	u.atapiReply(b, maxLen)
}

func (u *unit) scsiMechStatus(p []byte) {
	maxLen := int(binary.BigEndian.Uint16(p[8:]))
	b := make([]byte, 8)
	b[5] = 1 // one slot
	u.atapiReply(b, maxLen)
}
