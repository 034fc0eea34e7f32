package ide

import (
	"encoding/binary"
)

// Which devices accept a command, and whether completion sets DSC
// (QEMU's ide_cmd_table flags).
const (
	okHD   = 1 << 0
	okCD   = 1 << 1
	okAll  = okHD | okCD
	setDSC = 1 << 2
)

type ataCmd struct {
	// fn runs the command; it returns true when the command is complete and
	// the generic completion (clear BSY, maybe DSC, raise the IRQ) applies.
	fn    func(u *unit, cmd uint8) bool
	flags uint8
}

// ataCommands is ide_cmd_table without the CFA and SMART entries. Anything
// not here is aborted.
var ataCommands = [256]ataCmd{
	cmdDeviceReset:         {(*unit).cmdDeviceReset, okCD},
	cmdRecalibrate:         {(*unit).cmdNop, okHD | setDSC},
	cmdReadSectors:         {(*unit).cmdReadPIO, okAll},
	cmdReadSectorsNoRetry:  {(*unit).cmdReadPIO, okHD},
	cmdReadSectorsExt:      {(*unit).cmdReadPIO, okHD},
	cmdReadDMAExt:          {(*unit).cmdReadDMA, okHD},
	cmdReadNativeMaxExt:    {(*unit).cmdReadNativeMax, okHD | setDSC},
	cmdReadMultipleExt:     {(*unit).cmdReadMultiple, okHD},
	cmdWriteSectors:        {(*unit).cmdWritePIO, okHD},
	cmdWriteSectorsNoRetry: {(*unit).cmdWritePIO, okHD},
	cmdWriteSectorsExt:     {(*unit).cmdWritePIO, okHD},
	cmdWriteDMAExt:         {(*unit).cmdWriteDMA, okHD},
	cmdWriteMultipleExt:    {(*unit).cmdWriteMultiple, okHD},
	cmdWriteVerify:         {(*unit).cmdWritePIO, okHD},
	cmdReadVerify:          {(*unit).cmdVerify, okHD | setDSC},
	cmdReadVerifyNoRetry:   {(*unit).cmdVerify, okHD | setDSC},
	cmdReadVerifyExt:       {(*unit).cmdVerify, okHD | setDSC},
	cmdSeek:                {(*unit).cmdNop, okHD | setDSC},
	cmdDiagnose:            {(*unit).cmdDiagnose, okAll},
	cmdInitDevParams:       {(*unit).cmdInitDevParams, okHD | setDSC},
	cmdStandbyNow2:         {(*unit).cmdNop, okHD},
	cmdIdleImmediate2:      {(*unit).cmdNop, okHD},
	cmdStandby2:            {(*unit).cmdNop, okHD},
	cmdSetIdle2:            {(*unit).cmdNop, okHD},
	cmdCheckPowerMode2:     {(*unit).cmdCheckPowerMode, okHD | setDSC},
	cmdSleepNow2:           {(*unit).cmdNop, okHD},
	cmdPacket:              {(*unit).cmdPacket, okCD},
	cmdIdentifyPacket:      {(*unit).cmdIdentifyPacket, okCD},
	cmdReadMultiple:        {(*unit).cmdReadMultiple, okHD},
	cmdWriteMultiple:       {(*unit).cmdWriteMultiple, okHD},
	cmdSetMultiple:         {(*unit).cmdSetMultiple, okHD | setDSC},
	cmdReadDMA:             {(*unit).cmdReadDMA, okHD},
	cmdReadDMANoRetry:      {(*unit).cmdReadDMA, okHD},
	cmdWriteDMA:            {(*unit).cmdWriteDMA, okHD},
	cmdWriteDMANoRetry:     {(*unit).cmdWriteDMA, okHD},
	cmdStandbyNow1:         {(*unit).cmdNop, okHD},
	cmdIdleImmediate:       {(*unit).cmdNop, okHD},
	cmdStandby:             {(*unit).cmdNop, okHD},
	cmdSetIdle1:            {(*unit).cmdNop, okHD},
	cmdCheckPowerMode1:     {(*unit).cmdCheckPowerMode, okHD | setDSC},
	cmdSleepNow1:           {(*unit).cmdNop, okHD},
	cmdFlushCache:          {(*unit).cmdFlushCache, okAll},
	cmdFlushCacheExt:       {(*unit).cmdFlushCache, okHD},
	cmdIdentify:            {(*unit).cmdIdentify, okAll},
	cmdSetFeatures:         {(*unit).cmdSetFeatures, okAll | setDSC},
	cmdSecurityFreezeLock:  {(*unit).cmdFreezeLock, okHD | setDSC},
	cmdReadNativeMax:       {(*unit).cmdReadNativeMax, okHD | setDSC},
}

// execCmd is ide_exec_cmd.
func (ch *channel) execCmd(cmd uint8) {
	u := ch.selected()
	if !ch.anyPresent() || ch.cur == 1 && !u.present {
		// Nobody answers on an empty bus or for an absent device 1. Normal
		// during probing, so not a warning.
		ch.c.log.Debug("ide: command to an absent device", "channel", ch.idx, "unit", ch.cur, "cmd", cmd)
		return
	}
	// Only DEVICE RESET is accepted while BSY or DRQ, and only by ATAPI.
	if u.status&(statBSY|statDRQ) != 0 && !(cmd == cmdDeviceReset && u.cd) {
		ch.c.warn.warn("ide: command while busy ignored", "unit", u.index, "cmd", cmd, "status", u.status)
		return
	}
	e := &ataCommands[cmd]
	kind := uint8(okHD)
	if u.cd {
		kind = okCD
	}
	if !u.present || e.fn == nil || e.flags&kind == 0 {
		if e.fn == nil {
			ch.c.warn.warn("ide: unsupported ATA command aborted", "unit", u.index, "cmd", cmd)
		}
		u.abort()
		ch.setIRQ()
		return
	}
	u.status = statDRDY | statBSY
	u.err = 0
	if e.fn(u, cmd) {
		u.status &^= statBSY
		if e.flags&setDSC != 0 && u.err == 0 {
			u.status |= statDSC
		}
		ch.setIRQ()
	}
}

func (u *unit) cmdNop(uint8) bool { return true }

func (u *unit) cmdFreezeLock(uint8) bool {
	u.nsector = 0
	return true
}

func (u *unit) cmdCheckPowerMode(uint8) bool {
	u.nsector = 0xff // active or idle
	return true
}

func (u *unit) cmdDiagnose(uint8) bool {
	u.diagnostic()
	return false
}

// cmdDeviceReset is DEVICE RESET for ATAPI (cmd_device_reset): no interrupt.
func (u *unit) cmdDeviceReset(uint8) bool {
	u.transferStop()
	u.ch.waitIdle()
	u.reset()
	u.status = 0
	return false
}

// cmdInitDevParams is INITIALIZE DEVICE PARAMETERS: the logical geometry
// used for CHS addressing (QEMU ignores it; the ATA spec defines it).
func (u *unit) cmdInitDevParams(uint8) bool {
	secs := uint32(u.nsector & 0xff)
	if secs == 0 {
		u.abort()
		return true
	}
	u.lheads = uint32(u.sel&selHS) + 1
	u.lsecs = secs
	return true
}

func (u *unit) cmdIdentify(uint8) bool {
	if u.cd {
		u.setSignature()
		u.abort()
		return true
	}
	u.identify()
	u.status = statDRDY | statDSC
	u.transferStart(sectorSize, xferStop)
	u.ch.setIRQ()
	return false
}

func (u *unit) cmdIdentifyPacket(uint8) bool {
	u.identifyPacket()
	u.status = statDRDY | statDSC
	u.transferStart(sectorSize, xferStop)
	u.ch.setIRQ()
	return false
}

func (u *unit) cmdSetMultiple(uint8) bool {
	n := u.nsector & 0xff
	if n != 0 && (n > maxMultSectors || n&(n-1) != 0) {
		u.abort()
		return true
	}
	u.multSectors = n
	return true
}

func (u *unit) cmdSetFeatures(uint8) bool {
	switch u.feature {
	case 0x02: // enable write cache
		u.wce = true
		return true
	case 0x82: // disable write cache: flush what it holds
		u.wce = false
		return u.flushCache()
	case 0xcc, 0x66, 0xaa, 0x55, 0x05, 0x85, 0x69, 0x67, 0x96, 0x9a, 0x42, 0xc2:
		// power-on defaults, look-ahead, APM, acoustic management, NOPs
		return true
	case 0x03: // set transfer mode
		val := uint16(u.nsector & 0x07)
		switch (u.nsector & 0xff) >> 3 {
		case 0x00, 0x01: // PIO default, PIO mode
			u.id62, u.id63, u.id88 = 0x07, 0x07, 0x3f
		case 0x02: // single-word DMA
			u.id62, u.id63, u.id88 = 0x07|1<<(val+8), 0x07, 0x3f
		case 0x04: // multiword DMA
			u.id62, u.id63, u.id88 = 0x07, 0x07|1<<(val+8), 0x3f
		case 0x08: // Ultra DMA
			u.id62, u.id63, u.id88 = 0x07, 0x07, 0x3f|1<<(val+8)
		default:
			u.abort()
		}
		return true
	}
	u.ch.c.warn.warn("ide: unsupported SET FEATURES subcommand aborted", "unit", u.index, "feature", u.feature)
	u.abort()
	return true
}

func (u *unit) cmdFlushCache(uint8) bool { return u.flushCache() }

// flushCache starts a backend flush on the channel's goroutine (BSY until it
// completes) unless there is nothing to flush.
func (u *unit) flushCache() bool {
	if u.be == nil || u.be.ReadOnly() {
		u.status = statDRDY | statDSC
		return true
	}
	u.status |= statBSY
	u.flushAsync = true
	u.ch.startJob(u)
	return false
}

// lba48Transform is ide_cmd_lba48_transform: nsector becomes the full count.
func (u *unit) lba48Transform(ext bool) {
	u.lba48 = ext
	if !ext {
		if u.nsector == 0 {
			u.nsector = 256
		}
		return
	}
	if u.nsector == 0 && u.hobNsector == 0 {
		u.nsector = 65536
	} else {
		u.nsector = uint32(u.hobNsector)<<8 | u.nsector&0xff
	}
}

// getSector is ide_get_sector; -1 for a CHS address outside the geometry.
func (u *unit) getSector() int64 {
	if u.sel&selLBA != 0 {
		if u.lba48 {
			return int64(u.hobHcyl)<<40 | int64(u.hobLcyl)<<32 | int64(u.hobSector)<<24 |
				int64(u.hcyl)<<16 | int64(u.lcyl)<<8 | int64(u.sector)
		}
		return int64(u.sel&selHS)<<24 | int64(u.hcyl)<<16 | int64(u.lcyl)<<8 | int64(u.sector)
	}
	head, sec := uint32(u.sel&selHS), uint32(u.sector)
	if u.lheads == 0 || u.lsecs == 0 || sec == 0 || sec > u.lsecs || head >= u.lheads {
		return -1
	}
	cyl := uint32(u.hcyl)<<8 | uint32(u.lcyl)
	return int64(cyl)*int64(u.lheads)*int64(u.lsecs) + int64(head)*int64(u.lsecs) + int64(sec-1)
}

// setSector is ide_set_sector.
func (u *unit) setSector(s int64) {
	if u.sel&selLBA != 0 {
		if u.lba48 {
			u.sector, u.lcyl, u.hcyl = uint8(s), uint8(s>>8), uint8(s>>16)
			u.hobSector, u.hobLcyl, u.hobHcyl = uint8(s>>24), uint8(s>>32), uint8(s>>40)
			return
		}
		u.sel = u.sel&^selHS | uint8(s>>24)&selHS
		u.hcyl, u.lcyl, u.sector = uint8(s>>16), uint8(s>>8), uint8(s)
		return
	}
	if u.lheads == 0 || u.lsecs == 0 {
		return
	}
	hs := int64(u.lheads) * int64(u.lsecs)
	cyl, r := s/hs, s%hs
	u.hcyl, u.lcyl = uint8(cyl>>8), uint8(cyl)
	u.sel = u.sel&^selHS | uint8(r/int64(u.lsecs))&selHS
	u.sector = uint8(r%int64(u.lsecs) + 1)
}

// rangeOK reports whether n sectors at s lie on the medium.
func (u *unit) rangeOK(s int64, n uint32) bool {
	return s >= 0 && uint64(n) <= u.nb && uint64(s) <= u.nb-uint64(n)
}

// checkRange validates the whole command up front; out of range is IDNF.
func (u *unit) checkRange() bool {
	if s := u.getSector(); !u.rangeOK(s, u.nsector) {
		u.ch.c.warn.warn("ide: access beyond the end of the disk", "unit", u.index,
			"sector", s, "count", u.nsector, "sectors", u.nb)
		u.fail(errIDNF)
		return false
	}
	return true
}

func (u *unit) cmdReadPIO(cmd uint8) bool {
	if u.cd {
		u.setSignature() // ATA-4 8.27.5.2
		u.abort()
		return true
	}
	u.lba48Transform(cmd == cmdReadSectorsExt)
	if !u.checkRange() {
		return true
	}
	u.reqNb = 1
	u.sectorRead()
	return false
}

func (u *unit) cmdReadMultiple(cmd uint8) bool {
	if u.multSectors == 0 {
		u.abort()
		return true
	}
	u.lba48Transform(cmd == cmdReadMultipleExt)
	if !u.checkRange() {
		return true
	}
	u.reqNb = u.multSectors
	u.sectorRead()
	return false
}

func (u *unit) cmdWritePIO(cmd uint8) bool {
	u.lba48Transform(cmd == cmdWriteSectorsExt)
	if !u.checkRange() {
		return true
	}
	u.reqNb = 1
	u.status = statDRDY | statDSC
	u.transferStart(sectorSize, xferSectorWrite)
	return false
}

func (u *unit) cmdWriteMultiple(cmd uint8) bool {
	if u.multSectors == 0 {
		u.abort()
		return true
	}
	u.lba48Transform(cmd == cmdWriteMultipleExt)
	if !u.checkRange() {
		return true
	}
	u.reqNb = u.multSectors
	u.status = statDRDY | statDSC
	u.transferStart(int(min(u.nsector, u.reqNb))*sectorSize, xferSectorWrite)
	return false
}

func (u *unit) cmdVerify(cmd uint8) bool {
	u.lba48Transform(cmd == cmdReadVerifyExt)
	u.checkRange()
	return true
}

func (u *unit) cmdReadNativeMax(cmd uint8) bool {
	if u.nb == 0 {
		u.abort()
		return true
	}
	u.lba48Transform(cmd == cmdReadNativeMaxExt)
	u.setSector(int64(u.nb - 1))
	return true
}

func (u *unit) cmdReadDMA(cmd uint8) bool {
	u.lba48Transform(cmd == cmdReadDMAExt)
	u.sectorStartDMA(dmaRead)
	return false
}

func (u *unit) cmdWriteDMA(cmd uint8) bool {
	u.lba48Transform(cmd == cmdWriteDMAExt)
	u.sectorStartDMA(dmaWrite)
	return false
}

// sectorStartDMA is ide_sector_start_dma: the drive asserts DRQ and the
// transfer starts as soon as the bus master is started too. The range is
// checked then, as QEMU's ide_dma_cb does.
func (u *unit) sectorStartDMA(k dmaKind) {
	u.status = statDRDY | statDSC | statDRQ
	u.dmaCmd = k
	u.ch.maybeStartDMA()
}

// sectorRead is ide_sector_read: the next PIO block is read from the
// backend (synchronously) and offered on the data port.
func (u *unit) sectorRead() {
	u.status = statDRDY | statDSC
	u.err = 0
	n := min(u.nsector, u.reqNb)
	if n == 0 {
		u.transferStop()
		return
	}
	s := u.getSector()
	if !u.rangeOK(s, n) {
		u.fail(errIDNF)
		u.ch.setIRQ()
		return
	}
	data := u.buf[:int(n)*sectorSize]
	if _, err := u.be.ReadAt(data, s*sectorSize); err != nil {
		u.ch.c.warn.warn("ide: disk read failed", "unit", u.index, "sector", s, "count", n, "err", err)
		u.fail(errUNC)
		u.ch.setIRQ()
		return
	}
	u.setSector(s + int64(n))
	u.nsector -= n
	u.transferStart(len(data), xferSectorRead)
	u.ch.setIRQ()
}

// sectorWrite is ide_sector_write: the block the guest wrote goes to the
// backend (synchronously), then the next block is requested.
func (u *unit) sectorWrite() {
	u.status = statDRDY | statDSC | statBSY
	s := u.getSector()
	n := min(u.nsector, u.reqNb)
	if !u.rangeOK(s, n) {
		u.fail(errIDNF)
		u.ch.setIRQ()
		return
	}
	data := u.buf[:int(n)*sectorSize]
	off := s * sectorSize
	obs := u.ch.c.observer()
	var tok any
	if obs != nil {
		tok = obs.WriteBegin(u.index, off, int64(len(data)))
	}
	_, err := u.be.WriteAt(data, off)
	if err == nil && !u.wce {
		err = u.be.Flush()
	}
	if obs != nil {
		obs.WriteDone(tok, nil, data, err == nil)
	}
	if err != nil {
		u.ch.c.warn.warn("ide: disk write failed", "unit", u.index, "sector", s, "count", n, "err", err)
		u.fail(errABRT)
		u.ch.setIRQ()
		return
	}
	u.status &^= statBSY
	u.nsector -= n
	u.setSector(s + int64(n))
	if u.nsector == 0 {
		u.transferStop()
	} else {
		u.transferStart(int(min(u.nsector, u.reqNb))*sectorSize, xferSectorWrite)
	}
	u.ch.setIRQ()
}

// QEMU's firmware revision string (qemu_hw_version) and model names.
const (
	firmwareRev = "2.5+"
	modelDisk   = "QEMU HARDDISK"
	modelCD     = "QEMU DVD-ROM"
)

// padATA stores s in ATA string format: space padded, bytes swapped in
// each 16-bit word (QEMU padstr).
func padATA(dst []byte, s string) {
	for i := range dst {
		c := byte(' ')
		if i < len(s) {
			c = s[i]
		}
		dst[i^1] = c
	}
}

// identify fills u.buf with IDENTIFY DEVICE data (ide_identify; SMART is
// not offered).
func (u *unit) identify() {
	b := u.buf[:sectorSize]
	clear(b)
	put := func(w int, v uint32) { binary.LittleEndian.PutUint16(b[2*w:], uint16(v)) }
	put(0, 0x0040)
	put(1, u.cyls)
	put(3, u.heads)
	put(4, 512*u.secs)
	put(5, 512)
	put(6, u.secs)
	padATA(b[20:40], u.serial)
	put(20, 3)
	put(21, 512) // cache size in sectors
	put(22, 4)
	padATA(b[46:54], firmwareRev)
	padATA(b[54:94], modelDisk)
	put(47, 0x8000|maxMultSectors)
	put(48, 1)               // dword I/O
	put(49, 1<<11|1<<9|1<<8) // IORDY, LBA, DMA
	put(51, 0x200)           // PIO cycle timing
	put(52, 0x200)           // DMA cycle timing
	put(53, 1|1<<1|1<<2)     // words 54–58, 64–70 and 88 valid
	lcyls := uint32(min(u.nb/uint64(max(u.lheads*u.lsecs, 1)), 65535))
	put(54, lcyls)
	put(55, u.lheads)
	put(56, u.lsecs)
	chs := lcyls * u.lheads * u.lsecs
	put(57, chs)
	put(58, chs>>16)
	if u.multSectors != 0 {
		put(59, 0x100|u.multSectors)
	}
	lba28 := uint32(min(u.nb, 1<<28-1))
	put(60, lba28)
	put(61, lba28>>16)
	put(62, uint32(u.id62))
	put(63, uint32(u.id63))
	put(64, 0x03) // PIO 3–4
	put(65, 120)
	put(66, 120)
	put(67, 120)
	put(68, 120)
	put(80, 0xf0)                    // ATA-4 … ATA-7
	put(81, 0x16)                    // minor version
	put(82, 1<<14|1<<5)              // NOP, write cache
	put(83, 1<<14|1<<13|1<<12|1<<10) // FLUSH CACHE EXT, FLUSH CACHE, LBA48
	put(84, 1<<14)
	wce := uint32(0)
	if u.wce {
		wce = 1 << 5
	}
	put(85, 1<<14|wce)
	put(86, 1<<13|1<<12|1<<10)
	put(87, 1<<14)
	put(88, uint32(u.id88))
	put(93, 1|1<<14|0x2000) // hardware reset result
	put(100, uint32(u.nb))
	put(101, uint32(u.nb>>16))
	put(102, uint32(u.nb>>32))
	put(103, uint32(u.nb>>48))
}

// identifyPacket fills u.buf with IDENTIFY PACKET DEVICE data
// (ide_atapi_identify with USE_DMA_CDROM).
func (u *unit) identifyPacket() {
	b := u.buf[:sectorSize]
	clear(b)
	put := func(w int, v uint32) { binary.LittleEndian.PutUint16(b[2*w:], uint16(v)) }
	// Removable CD-ROM, 50 µs DRQ, 12-byte packets.
	put(0, 2<<14|5<<8|1<<7|2<<5)
	padATA(b[20:40], u.serial)
	put(20, 3)
	put(21, 512)
	put(22, 4)
	padATA(b[46:54], firmwareRev)
	padATA(b[54:94], modelCD)
	put(48, 1)
	put(49, 1<<9|1<<8) // LBA, DMA
	put(53, 7)
	put(62, uint32(u.id62))
	put(63, uint32(u.id63))
	put(64, 3)
	put(65, 0xb4)
	put(66, 0xb4)
	put(67, 0x12c)
	put(68, 0xb4)
	put(71, 30)
	put(72, 30)
	put(80, 0x1e) // ATA/ATAPI-4
	put(88, uint32(u.id88))
}
