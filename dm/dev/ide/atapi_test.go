package ide

import (
	"encoding/binary"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// cdImage returns a read-only medium of n 2048-byte sectors whose bytes
// encode their position.
func cdImage(n int) *blk.Mem {
	b := make([]byte, n*cdSectorSize)
	for i := 0; i < len(b); i += 4 {
		binary.BigEndian.PutUint32(b[i:], uint32(i))
	}
	return blk.NewMemFrom("cd.iso", b, true)
}

// cdRig: a disk on the primary master, a CD-ROM on the secondary master.
func cdRig(t testing.TB, medium blk.Backend) *rig {
	return newRig(t, [4]*Drive{{Media: Disk, Backend: memDisk(1<<20, 1)}, nil, {Media: CDROM, Backend: medium}})
}

// packet sends an ATAPI command on the secondary master as SeaBIOS's
// ata_atapi_process_op / Linux's atapi_send_cdb do.
func (r *rig) packet(cdb []byte, bcl uint16, dma bool) {
	r.t.Helper()
	r.outb(0x176, 0xa0)
	feat := uint8(0)
	if dma {
		feat = 1
	}
	r.outb(0x171, feat)
	r.outb(0x174, uint8(bcl))
	r.outb(0x175, uint8(bcl>>8))
	r.command(1, cmdPacket)
	if st := r.altStatus(1); st != statDRDY|statDSC|statDRQ || r.inb(0x172)&3 != atapiIntCoD {
		r.t.Fatalf("PACKET: status %#x reason %#x", st, r.inb(0x172))
	}
	p := make([]byte, atapiPacketSize)
	copy(p, cdb)
	for i := 0; i < len(p); i += 2 {
		r.outw(0x170, binary.LittleEndian.Uint16(p[i:]))
	}
}

// pioData collects the data-in phase, block by block, and returns the data
// and the block sizes.
func (r *rig) pioData() ([]byte, []int) {
	r.t.Helper()
	var out []byte
	var blocks []int
	for r.altStatus(1)&statDRQ != 0 {
		if r.inb(0x172)&3 != atapiIntIO {
			r.t.Fatalf("data phase with reason %#x", r.inb(0x172))
		}
		n := int(r.inb(0x174)) | int(r.inb(0x175))<<8
		blocks = append(blocks, n)
		r.status(1)
		out = append(out, r.readBlock(1, n)...)
	}
	return out, blocks
}

// atapiDone checks the status phase of a successful command.
func (r *rig) atapiDone(what string) {
	r.t.Helper()
	if st := r.altStatus(1); st != statDRDY|statDSC || r.inb(0x172)&3 != atapiIntIO|atapiIntCoD {
		r.t.Fatalf("%s: status %#x reason %#x error %#x", what, st, r.inb(0x172), r.errReg(1))
	}
}

func (r *rig) atapiFailed(what string, key uint8) {
	r.t.Helper()
	if st := r.altStatus(1); st&statERR == 0 || r.errReg(1)>>4 != key {
		r.t.Fatalf("%s: status %#x error %#x, want sense key %#x", what, st, r.errReg(1), key)
	}
}

func TestATAPIIdentifyAndInquiry(t *testing.T) {
	r := cdRig(t, cdImage(64))
	r.outb(0x176, 0xa0)
	r.command(1, cmdIdentifyPacket)
	id := r.readBlock(1, 512)
	if word(id, 0) != 0x85c0 || ataString(id[54:94]) != "QEMU DVD-ROM" || ataString(id[20:40]) != "QM00003" {
		t.Fatalf("IDENTIFY PACKET: word 0 %#x model %q serial %q", word(id, 0), ataString(id[54:94]), ataString(id[20:40]))
	}
	if word(id, 49)&(1<<8) == 0 {
		t.Fatal("ATAPI DMA not advertised")
	}
	r.packet([]byte{scsiInquiry, 0, 0, 0, 36}, 36, false)
	data, blocks := r.pioData()
	r.atapiDone("INQUIRY")
	if len(data) != 36 || len(blocks) != 1 || data[0] != 5 || data[1] != 0x80 ||
		string(data[8:16]) != "QEMU    " || string(data[16:32]) != "QEMU DVD-ROM    " {
		t.Fatalf("INQUIRY %q", data)
	}
	// Allocation length shorter than the data.
	r.packet([]byte{scsiInquiry, 0, 0, 0, 8}, 0xfffe, false)
	if data, _ := r.pioData(); len(data) != 8 {
		t.Fatalf("INQUIRY with 8 bytes: %d", len(data))
	}
	// VPD page 0x83 carries the serial number.
	r.packet([]byte{scsiInquiry, 1, 0x83, 0, 64}, 64, false)
	data, _ = r.pioData()
	if len(data) != 28 || string(data[8:28]) != "QM00003             " {
		t.Fatalf("VPD 0x83 %q", data)
	}
	// A PIO data command with byte count limit 0 is aborted at the ATA level.
	r.packet([]byte{scsiInquiry, 0, 0, 0, 36}, 0, false)
	if r.altStatus(1) != statDRDY|statERR || r.errReg(1) != errABRT {
		t.Fatalf("BCL 0: %#x %#x", r.altStatus(1), r.errReg(1))
	}
}

func TestATAPIReadPIO(t *testing.T) {
	cd := cdImage(64)
	r := cdRig(t, cd)
	img := cd.Bytes()
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiDone("TEST UNIT READY")
	r.packet([]byte{scsiReadCapacity}, 8, false)
	data, _ := r.pioData()
	if binary.BigEndian.Uint32(data) != 63 || binary.BigEndian.Uint32(data[4:]) != 2048 {
		t.Fatalf("READ CAPACITY %x", data)
	}
	// SeaBIOS reads with a byte count limit of one sector: one DRQ per sector.
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 5, 0, 0, 3}, 2048, false)
	data, blocks := r.pioData()
	r.atapiDone("READ(10)")
	mustEqual(t, "READ(10)", data, img[5*2048:8*2048])
	if len(blocks) != 3 || blocks[0] != 2048 {
		t.Fatalf("blocks %v", blocks)
	}
	// Linux uses a large limit: blocks of up to 0xfffe bytes, even.
	r.packet([]byte{scsiRead12, 0, 0, 0, 0, 1, 0, 0, 0, 40}, 0xffff, false)
	data, blocks = r.pioData()
	r.atapiDone("READ(12)")
	mustEqual(t, "READ(12)", data, img[1*2048:41*2048])
	if len(blocks) != 2 || blocks[0] != 0xfffe || blocks[1] != 40*2048-0xfffe {
		t.Fatalf("blocks %v", blocks)
	}
	// Beyond the end of the medium.
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 62, 0, 0, 3}, 2048, false)
	r.atapiFailed("READ beyond the end", senseIllegalRequest)
	r.packet([]byte{scsiRequestSense, 0, 0, 0, 18}, 18, false)
	data, _ = r.pioData()
	if data[2] != senseIllegalRequest || data[12] != ascLBAOutOfRange {
		t.Fatalf("sense %x", data)
	}
	// An unknown opcode.
	r.packet([]byte{0xff}, 2048, false)
	r.atapiFailed("opcode 0xff", senseIllegalRequest)
	// Medium errors surface as MEDIUM ERROR sense.
	cd.FailReads(10*2048, 1)
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 9, 0, 0, 2}, 2048, false)
	r.status(1)
	r.readBlock(1, 2048)
	r.atapiFailed("medium error", senseMediumError)
}

func TestATAPIReadDMA(t *testing.T) {
	cd := cdImage(64)
	r := cdRig(t, cd)
	obs := &recObserver{r: r}
	r.c.SetObserver(obs)
	r.outb(0x376, 0x08)
	r.writePRDs(prdGPA, []prd{{0x100000, 0x10000, false}, {0x120000, 0x2000, true}})
	bm := uint16(bmBase + 8)
	r.outl(bm+bmAddr, prdGPA)
	r.outb(bm+bmCmd, bmCmdWrite)
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 20, 0, 0, 36}, 0, true)
	if r.altStatus(1) != statDRDY|statDSC|statDRQ {
		t.Fatalf("waiting for the bus master: %#x", r.altStatus(1))
	}
	r.outb(bm+bmCmd, bmCmdWrite|bmCmdStart)
	r.c.Drain()
	if st := r.inb(bm + bmStatus); st&(bmStIRQ|bmStActive|bmStError) != bmStIRQ || !r.irqLevel(1) {
		t.Fatalf("bm %#x irq %v", st, r.irqLevel(1))
	}
	r.atapiDone("READ(10) DMA")
	img := cd.Bytes()
	mustEqual(t, "first PRD", r.readMem(0x100000, 0x10000), img[20*2048:20*2048+0x10000])
	mustEqual(t, "second PRD", r.readMem(0x120000, 0x2000), img[20*2048+0x10000:56*2048])
	if len(obs.reads) != 1 || obs.reads[0].drive != 2 || obs.reads[0].off != 20*2048 || !obs.reads[0].landed || obs.reads[0].irqAtDone {
		t.Fatalf("observer %+v", obs.reads)
	}
	if !r.dirty.IsDirty(0x100) || !r.dirty.IsDirty(0x121) {
		t.Fatal("CD DMA not reported dirty")
	}
	// A reply that is not medium data (INQUIRY) over DMA: reported as
	// written guest memory, not as disk data.
	r.outb(bm+bmCmd, bmCmdWrite)
	r.writePRDs(prdGPA, []prd{{0x130000, 36, true}})
	r.packet([]byte{scsiInquiry, 0, 0, 0, 36}, 0, true)
	r.outb(bm+bmCmd, bmCmdWrite|bmCmdStart)
	r.c.Drain()
	r.atapiDone("INQUIRY DMA")
	if got := r.readMem(0x130000, 36); string(got[8:12]) != "QEMU" {
		t.Fatalf("INQUIRY DMA %q", got)
	}
	if len(obs.written) != 1 || obs.written[0] != (Segment{GPA: 0x130000, Len: 36}) || len(obs.reads) != 1 {
		t.Fatalf("observer written %+v reads %d", obs.written, len(obs.reads))
	}
	// A PRD table pointing outside memory aborts the command.
	r.outb(bm+bmCmd, bmCmdWrite)
	r.outb(bm+bmStatus, bmStIRQ|bmStError)
	r.writePRDs(prdGPA, []prd{{holeGPA, 2048, true}})
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 1, 0, 0, 1}, 0, true)
	r.outb(bm+bmCmd, bmCmdWrite|bmCmdStart)
	r.c.Drain()
	if st := r.inb(bm + bmStatus); st&(bmStError|bmStActive) != bmStError {
		t.Fatalf("bm %#x", st)
	}
	r.atapiFailed("DMA fault", senseAbortedCommand)
}

func TestATAPIEmptyAndMediumChange(t *testing.T) {
	r := cdRig(t, nil)
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiFailed("TUR without medium", senseNotReady)
	r.packet([]byte{scsiRequestSense, 0, 0, 0, 18}, 18, false)
	data, _ := r.pioData()
	if data[0] != 0xf0 || data[2] != senseNotReady || data[12] != ascMediumNotPresent {
		t.Fatalf("sense %x", data)
	}
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 0, 0, 0, 1}, 2048, false)
	r.atapiFailed("READ without medium", senseNotReady)
	// INQUIRY works without a medium.
	r.packet([]byte{scsiInquiry, 0, 0, 0, 36}, 36, false)
	r.pioData()
	r.atapiDone("INQUIRY")
	gesn := []byte{scsiGetEventStatus, 1, 0, 0, 1 << 4, 0, 0, 0, 8}
	r.packet(gesn, 8, false)
	data, _ = r.pioData()
	if data[2] != 4 || data[5] != 0 {
		t.Fatalf("GESN empty %x", data)
	}
	// Insert a medium: NOT READY once, then UNIT ATTENTION, then ready; the
	// event is reported once.
	if old, err := r.c.ChangeMedium(2, cdImage(16)); err != nil || old != nil {
		t.Fatal(err)
	}
	if !r.irqLevel(1) {
		t.Fatal("no interrupt for the medium change")
	}
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiFailed("first TUR", senseNotReady)
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiFailed("second TUR", senseUnitAttention)
	// The UNIT ATTENTION stays pending until REQUEST SENSE reports it.
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	if r.altStatus(1) != statERR || r.errReg(1) != errMC|senseUnitAttention<<4 {
		t.Fatalf("TUR with a pending UNIT ATTENTION: %#x %#x", r.altStatus(1), r.errReg(1))
	}
	r.packet([]byte{scsiRequestSense, 0, 0, 0, 18}, 18, false)
	if data, _ = r.pioData(); data[2] != senseUnitAttention || data[12] != ascMediumMayHaveChange {
		t.Fatalf("sense %x", data)
	}
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiDone("third TUR")
	r.packet(gesn, 8, false)
	data, _ = r.pioData()
	if data[4] != 2 || data[5] != 2 {
		t.Fatalf("GESN new medium %x", data)
	}
	r.packet(gesn, 8, false)
	if data, _ = r.pioData(); data[4] != 0 {
		t.Fatalf("event reported twice %x", data)
	}
	if _, err := r.c.ChangeMedium(0, nil); err == nil {
		t.Fatal("changed the medium of a disk")
	}
	// Locked tray refuses eject; unlocked ejects.
	r.packet([]byte{scsiPreventAllow, 0, 0, 0, 1}, 0, false)
	r.atapiDone("PREVENT")
	r.packet([]byte{scsiStartStopUnit, 0, 0, 0, 2}, 0, false)
	r.atapiFailed("eject locked", senseNotReady)
	r.packet([]byte{scsiPreventAllow, 0, 0, 0, 0}, 0, false)
	r.packet([]byte{scsiStartStopUnit, 0, 0, 0, 2}, 0, false)
	r.atapiDone("eject")
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiFailed("TUR tray open", senseNotReady)
	r.packet([]byte{scsiStartStopUnit, 0, 0, 0, 3}, 0, false)
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiDone("TUR tray closed")
}

func TestATAPIModeSenseTOCConfig(t *testing.T) {
	r := cdRig(t, cdImage(1000))
	r.packet([]byte{scsiModeSense10, 0, 0x2a, 0, 0, 0, 0, 0, 30}, 0xfffe, false)
	data, _ := r.pioData()
	r.atapiDone("MODE SENSE")
	if len(data) != 30 || data[8] != 0x2a || binary.BigEndian.Uint16(data) != 28 {
		t.Fatalf("MODE SENSE 2a %x", data)
	}
	r.packet([]byte{scsiModeSense10, 0, 0x3f, 0, 0, 0, 0, 0, 30}, 0xfffe, false)
	r.atapiFailed("MODE SENSE 3f", senseIllegalRequest)
	r.packet([]byte{scsiModeSense10, 0, 0xc1, 0, 0, 0, 0, 0, 30}, 0xfffe, false)
	r.atapiFailed("MODE SENSE saved", senseIllegalRequest)
	// READ TOC, LBA form: track 1 at 0, lead-out at 1000.
	r.packet([]byte{scsiReadTOC, 0, 0, 0, 0, 0, 0, 0, 100, 0}, 0xfffe, false)
	data, _ = r.pioData()
	if len(data) != 20 || data[2] != 1 || data[6] != 1 || data[14] != 0xaa || binary.BigEndian.Uint32(data[16:]) != 1000 {
		t.Fatalf("TOC %x", data)
	}
	// MSF form: lead-out at 1000+150 frames = 00:15:25.
	r.packet([]byte{scsiReadTOC, 2, 0, 0, 0, 0, 0, 0, 100, 0}, 0xfffe, false)
	data, _ = r.pioData()
	if data[17] != 0 || data[18] != 15 || data[19] != 25 {
		t.Fatalf("TOC MSF %x", data)
	}
	r.packet([]byte{scsiReadTOC, 0, 0, 0, 0, 0, 0, 0, 100, 0x40}, 0xfffe, false)
	data, _ = r.pioData()
	if len(data) != 12 || data[1] != 0x0a {
		t.Fatalf("session info %x", data)
	}
	r.packet([]byte{scsiGetConfig, 0, 0, 0, 0, 0, 0, 0, 32}, 0xfffe, false)
	data, _ = r.pioData()
	if len(data) != 20 || binary.BigEndian.Uint16(data[6:]) != 0x08 || data[18] != 1 {
		t.Fatalf("GET CONFIGURATION %x", data)
	}
	r.packet([]byte{scsiSeek10, 0, 0, 0, 0x10, 0}, 0, false)
	r.atapiFailed("SEEK beyond the end", senseIllegalRequest)
	r.packet([]byte{scsiMechStatus, 0, 0, 0, 0, 0, 0, 0, 0, 8}, 8, false)
	if data, _ = r.pioData(); len(data) != 8 {
		t.Fatal("MECHANISM STATUS")
	}
	r.packet([]byte{scsiSetSpeed}, 0, false)
	r.atapiDone("SET SPEED")
}

func TestATAPIDeviceReset(t *testing.T) {
	r := cdRig(t, cdImage(8))
	r.outb(0x176, 0xa0)
	r.outb(0x174, 0)
	r.outb(0x175, 8)
	r.command(1, cmdPacket) // DRQ for the packet…
	r.command(1, cmdIdentifyPacket)
	if r.altStatus(1)&statDRQ == 0 {
		t.Fatal("a command was accepted during DRQ")
	}
	r.command(1, cmdDeviceReset) // …but DEVICE RESET is accepted
	if r.altStatus(1) != 0 || r.inb(0x174) != 0x14 || r.inb(0x175) != 0xeb {
		t.Fatalf("after DEVICE RESET: status %#x", r.altStatus(1))
	}
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.atapiDone("TUR after reset")
	// Overlapped PACKET is refused.
	r.outb(0x171, 2)
	r.command(1, cmdPacket)
	if r.altStatus(1)&statERR == 0 {
		t.Fatal("overlapped PACKET accepted")
	}
}

func TestATAPIEjectDuringTransfer(t *testing.T) {
	r := cdRig(t, cdImage(16))
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 0, 0, 0, 2}, 2048, false)
	if _, err := r.c.ChangeMedium(2, nil); err != nil {
		t.Fatal(err)
	}
	r.status(1)
	r.readBlock(1, 2048) // the block read before the eject
	r.atapiFailed("PIO read after eject", senseNotReady)

	if _, err := r.c.ChangeMedium(2, cdImage(16)); err != nil {
		t.Fatal(err)
	}
	r.packet([]byte{scsiTestUnitReady}, 0, false) // NOT READY, then UNIT ATTENTION …
	r.packet([]byte{scsiTestUnitReady}, 0, false)
	r.packet([]byte{scsiRequestSense, 0, 0, 0, 18}, 18, false) // … cleared
	r.pioData()
	bm := uint16(bmBase + 8)
	r.writePRDs(prdGPA, []prd{{0x10000, 4096, true}})
	r.outl(bm+bmAddr, prdGPA)
	r.outb(bm+bmCmd, bmCmdWrite)
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 0, 0, 0, 2}, 0, true)
	if _, err := r.c.ChangeMedium(2, nil); err != nil {
		t.Fatal(err)
	}
	r.outb(bm+bmCmd, bmCmdWrite|bmCmdStart)
	r.c.Drain()
	r.atapiFailed("DMA read after eject", senseNotReady)
	if r.inb(bm+bmStatus)&bmStActive != 0 {
		t.Fatal("bus master still active")
	}
}
