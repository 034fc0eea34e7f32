package ide

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

func ataString(b []byte) string {
	s := make([]byte, len(b))
	for i := range b {
		s[i^1] = b[i]
	}
	return strings.TrimRight(string(s), " ")
}

func word(id []byte, w int) uint16 { return binary.LittleEndian.Uint16(id[2*w:]) }

func TestPCIConfig(t *testing.T) {
	r, _ := diskRig(t, 1<<20)
	c := r.c
	if v := c.ConfigRead(0, 4); v != 0x70108086 {
		t.Fatalf("IDs %#x", v)
	}
	if v := c.ConfigRead(0x08, 4) >> 8; v != 0x010180 {
		t.Fatalf("class %#x", v)
	}
	if v := c.ConfigRead(0x2c, 4); v != 0x11001af4 {
		t.Fatalf("subsystem %#x", v)
	}
	// hvmloader's IDE decode enable is kept.
	if c.ConfigRead(0x40, 2) != 0x8000 || c.ConfigRead(0x42, 2) != 0x8000 {
		t.Fatal("0x40/0x42 not writable")
	}
	if base, ok := c.BARBase(BMDMABAR); !ok || base != bmBase {
		t.Fatalf("BAR4 at %#x (%v)", base, ok)
	}
	if !r.io.HasPorts(bmBase, 16) || !r.io.HasPorts(0x1f0, 8) || !r.io.HasPorts(0x3f6, 1) ||
		!r.io.HasPorts(0x170, 8) || !r.io.HasPorts(0x376, 1) {
		t.Fatalf("claims: %v", r.io.Claimed())
	}
	// BAR sizing: 16 bytes of I/O.
	c.ConfigWrite(0x20, 4, 0xffffffff)
	if v := c.ConfigRead(0x20, 4); v != 0xfffffff1 {
		t.Fatalf("BAR4 size mask %#x", v)
	}
	c.ConfigWrite(0x20, 4, bmBase|1)
	var _ pci.Function = c
}

func TestIdentifySeaBIOS(t *testing.T) {
	r, _ := diskRig(t, 100<<20+512)
	// ata_detect: register check on device 0.
	r.outb(0x1f6, 0xa0)
	r.outb(0x1f2, 0x55)
	r.outb(0x1f3, 0xaa)
	if r.inb(0x1f2) != 0x55 || r.inb(0x1f3) != 0xaa || r.inb(0x1f6) != 0xa0 {
		t.Fatal("task file registers do not read back")
	}
	// ata_reset: pulse SRST with interrupts off.
	r.outb(0x3f6, 0x08|ctlNIEN|ctlSRST)
	r.outb(0x3f6, 0x08|ctlNIEN)
	r.expectStatus(0, statDRDY|statDSC, "after reset")
	if r.inb(0x1f2) != 1 || r.inb(0x1f3) != 1 || r.inb(0x1f4) != 0 || r.inb(0x1f5) != 0 {
		t.Fatal("ATA signature after reset")
	}
	// IDENTIFY PACKET DEVICE first (SeaBIOS probes ATAPI first): aborted.
	r.command(0, cmdIdentifyPacket)
	r.expectStatus(0, statDRDY|statERR, "IDENTIFY PACKET on a disk")
	if r.errReg(0) != errABRT {
		t.Fatal("no ABRT")
	}
	r.command(0, cmdIdentify)
	r.expectStatus(0, statDRDY|statDSC|statDRQ, "IDENTIFY")
	if r.irqLevel(0) {
		t.Fatal("IRQ raised with nIEN set")
	}
	id := r.readBlock(0, 512)
	r.expectStatus(0, statDRDY|statDSC, "after the data")
	if m := ataString(id[54:94]); m != "QEMU HARDDISK" {
		t.Fatalf("model %q", m)
	}
	if s := ataString(id[20:40]); s != "QM00001" {
		t.Fatalf("serial %q", s)
	}
	if f := ataString(id[46:54]); f != "2.5+" {
		t.Fatalf("firmware %q", f)
	}
	nb := uint64(100<<20+512) / 512
	if got := uint64(word(id, 60)) | uint64(word(id, 61))<<16; got != nb {
		t.Fatalf("LBA28 capacity %d, want %d", got, nb)
	}
	if got := uint64(word(id, 100)) | uint64(word(id, 101))<<16 | uint64(word(id, 102))<<32; got != nb {
		t.Fatalf("LBA48 capacity %d", got)
	}
	if word(id, 83)&(1<<10) == 0 || word(id, 86)&(1<<10) == 0 {
		t.Fatal("LBA48 not advertised")
	}
	if word(id, 49)&(1<<8|1<<9) != 1<<8|1<<9 {
		t.Fatal("DMA/LBA not advertised")
	}
	if word(id, 88) != 0x203f || word(id, 63) != 0x07 {
		t.Fatalf("DMA modes %#x %#x", word(id, 63), word(id, 88))
	}
	if word(id, 1) != uint16(nb/(16*63)) || word(id, 3) != 16 || word(id, 6) != 63 {
		t.Fatalf("CHS %d/%d/%d", word(id, 1), word(id, 3), word(id, 6))
	}
	if word(id, 47) != 0x8010 || word(id, 59) != 0x110 {
		t.Fatalf("multiple %#x %#x", word(id, 47), word(id, 59))
	}
	if word(id, 85)&(1<<5) == 0 {
		t.Fatal("write cache not enabled")
	}
	if word(id, 93)&0xdf61 == 0x4041 {
		t.Fatal("word 93 would make SeaBIOS skip the slave probe incorrectly")
	}
	// SET FEATURES: UDMA mode 2, then write cache off, reflected in IDENTIFY.
	r.outb(0x1f1, 0x03)
	r.outb(0x1f2, 0x40|2)
	r.command(0, cmdSetFeatures)
	r.expectStatus(0, statDRDY|statDSC, "SET FEATURES")
	r.outb(0x1f1, 0x82)
	r.command(0, cmdSetFeatures)
	r.c.Drain()
	r.expectStatus(0, statDRDY|statDSC, "write cache off")
	r.command(0, cmdIdentify)
	id = r.readBlock(0, 512)
	if word(id, 88) != 0x3f|1<<10 || word(id, 85)&(1<<5) != 0 {
		t.Fatalf("after SET FEATURES: word 88 %#x, 85 %#x", word(id, 88), word(id, 85))
	}
	r.outb(0x1f1, 0x99)
	r.command(0, cmdSetFeatures)
	r.expectStatus(0, statDRDY|statERR, "unknown SET FEATURES")
}

func TestIRQLevel(t *testing.T) {
	r, _ := diskRig(t, 1<<20)
	r.outb(0x3f6, 0x08) // interrupts on
	r.command(0, cmdIdentify)
	if !r.irqLevel(0) || r.bmStatus(0)&bmStIRQ == 0 {
		t.Fatal("IDENTIFY did not raise IRQ 14 / BMDMA IRQ bit")
	}
	r.altStatus(0)
	if !r.irqLevel(0) {
		t.Fatal("alternate status lowered the IRQ")
	}
	r.status(0)
	if r.irqLevel(0) {
		t.Fatal("status read did not lower the IRQ")
	}
	r.readBlock(0, 512)
	// A non-data command raises it again; writing a command lowers it.
	r.command(0, cmdIdleImmediate)
	if !r.irqLevel(0) {
		t.Fatal("IDLE IMMEDIATE did not raise the IRQ")
	}
	r.command(0, cmdCheckPowerMode1)
	if r.inb(0x1f2) != 0xff {
		t.Fatal("CHECK POWER MODE")
	}
	if n := r.irq.Raises(14); n != 3 {
		t.Fatalf("%d raises, want 3", n)
	}
	if r.irq.Raises(15) != 0 {
		t.Fatal("IRQ 15 raised for an empty secondary channel")
	}
}

func TestPIOLBA28(t *testing.T) {
	r, d := diskRig(t, 4<<20)
	want := make([]byte, 3*512)
	for i := range want {
		want[i] = byte(i*13 + 1)
	}
	r.outb(0x3f6, 0x08)
	r.lba28(0, 0, 100, 3)
	r.command(0, cmdWriteSectors)
	for s := 0; s < 3; s++ {
		r.expectStatus(0, statDRDY|statDSC|statDRQ, "write DRQ")
		r.writeBlock(0, want[s*512:(s+1)*512])
		if !r.irqLevel(0) {
			t.Fatalf("no IRQ after sector %d", s)
		}
		r.status(0)
	}
	r.expectStatus(0, statDRDY|statDSC, "write done")
	mustEqual(t, "disk", d.Bytes()[100*512:103*512], want)
	// The task file now points after the last sector.
	if r.inb(0x1f3) != 103 {
		t.Fatalf("sector register %d", r.inb(0x1f3))
	}
	r.lba28(0, 0, 99, 5)
	r.command(0, cmdReadSectors)
	var got []byte
	for s := 0; s < 5; s++ {
		r.expectStatus(0, statDRDY|statDSC|statDRQ, "read DRQ")
		got = append(got, r.readBlock(0, 512)...)
	}
	r.expectStatus(0, statDRDY|statDSC, "read done")
	mustEqual(t, "read back", got, d.Bytes()[99*512:104*512])
	// Sector count 0 means 256; 32-bit reads work too.
	r.lba28(0, 0, 0, 0)
	r.command(0, cmdReadSectors)
	img := d.Bytes()
	for s := 0; s < 256; s++ {
		for i := 0; i < 128; i++ {
			v := r.inl(0x1f0)
			if v != binary.LittleEndian.Uint32(img[s*512+4*i:]) {
				t.Fatalf("sector %d dword %d", s, i)
			}
		}
	}
	r.expectStatus(0, statDRDY|statDSC, "256 sectors")
}

func TestPIOLBA48(t *testing.T) {
	sd := &sparseDisk{size: 4 << 40, sec: map[int64][]byte{}}
	r := newRig(t, [4]*Drive{nil, nil, {Media: Disk, Backend: sd}})
	lba := uint64(0x1_2345_6789) // needs the high-order registers
	data := bytes.Repeat([]byte("lba48-pio-data.."), 300*512/16)
	r.lba48(1, 0, lba, 300)
	r.command(1, cmdWriteSectorsExt)
	for s := 0; s < 300; s++ {
		if r.altStatus(1)&statDRQ == 0 {
			t.Fatalf("no DRQ for sector %d", s)
		}
		r.writeBlock(1, data[s*512:(s+1)*512])
	}
	r.expectStatus(1, statDRDY|statDSC, "LBA48 write")
	if sd.sec[int64(lba)] == nil || sd.sec[int64(lba)+299] == nil || sd.sec[int64(lba)+300] != nil {
		t.Fatal("LBA48 write went elsewhere")
	}
	// The high-order registers read back with HOB after completion.
	end := lba + 300
	r.outb(0x376, ctlHOB)
	if r.inb(0x173) != uint8(end>>24) || r.inb(0x174) != uint8(end>>32) {
		t.Fatal("HOB registers")
	}
	r.outb(0x376, 0)
	r.lba48(1, 0, lba+1, 2)
	r.command(1, cmdReadSectorsExt)
	got := append(r.readBlock(1, 512), r.readBlock(1, 512)...)
	mustEqual(t, "LBA48 read", got, data[512:1536])
	// The IDENTIFY capacity reports 2^33 sectors in LBA48 and the LBA28 cap.
	r.command(1, cmdIdentify)
	id := r.readBlock(1, 512)
	if word(id, 102) != 2 || word(id, 60) != 0xffff || word(id, 61) != 0x0fff {
		t.Fatalf("capacity words %#x %#x %#x", word(id, 102), word(id, 60), word(id, 61))
	}
}

func TestReadWriteMultiple(t *testing.T) {
	r, d := diskRig(t, 1<<20)
	r.outb(0x1f2, 3)
	r.command(0, cmdSetMultiple)
	r.expectStatus(0, statDRDY|statERR, "SET MULTIPLE 3")
	r.outb(0x1f2, 4)
	r.command(0, cmdSetMultiple)
	r.expectStatus(0, statDRDY|statDSC, "SET MULTIPLE 4")
	data := bytes.Repeat([]byte{0xc3, 0x3c}, 10*256)
	r.lba28(0, 0, 8, 10)
	r.command(0, cmdWriteMultiple)
	for _, n := range []int{4, 4, 2} {
		if r.altStatus(0)&statDRQ == 0 {
			t.Fatal("no DRQ")
		}
		r.writeBlock(0, data[:n*512])
		data = data[n*512:]
	}
	r.expectStatus(0, statDRDY|statDSC, "WRITE MULTIPLE")
	mustEqual(t, "disk", d.Bytes()[8*512:18*512], bytes.Repeat([]byte{0xc3, 0x3c}, 10*256))
	r.lba28(0, 0, 8, 10)
	r.command(0, cmdReadMultiple)
	var got []byte
	for _, n := range []int{4, 4, 2} {
		r.expectStatus(0, statDRDY|statDSC|statDRQ, "READ MULTIPLE block")
		got = append(got, r.readBlock(0, n*512)...)
	}
	mustEqual(t, "READ MULTIPLE", got, d.Bytes()[8*512:18*512])
}

func TestVerifySeekPowerNops(t *testing.T) {
	r, _ := diskRig(t, 1<<20)
	for _, cmd := range []uint8{cmdReadVerify, cmdSeek, cmdRecalibrate, cmdStandbyNow1, cmdIdleImmediate,
		cmdStandby, cmdSetIdle1, cmdSleepNow1, cmdStandbyNow2, cmdFlushCache, cmdFlushCacheExt, cmdSecurityFreezeLock} {
		r.lba28(0, 0, 10, 4)
		r.command(0, cmd)
		r.c.Drain()
		if st := r.altStatus(0); st&(statERR|statBSY|statDRQ) != 0 || st&statDRDY == 0 {
			t.Fatalf("command %#x: status %#x", cmd, st)
		}
	}
	// READ NATIVE MAX ADDRESS: last sector in the task file.
	r.outb(0x1f6, 0xe0)
	r.command(0, cmdReadNativeMax)
	if r.inb(0x1f3) != 0xff || r.inb(0x1f4) != 0x07 {
		t.Fatalf("native max %#x %#x", r.inb(0x1f4), r.inb(0x1f3))
	}
	// INITIALIZE DEVICE PARAMETERS + a CHS read.
	r.outb(0x1f6, 0xa0|3) // 4 heads
	r.outb(0x1f2, 8)      // 8 sectors per track
	r.command(0, cmdInitDevParams)
	r.expectStatus(0, statDRDY|statDSC, "INITIALIZE DEVICE PARAMETERS")
	// C/H/S 2/1/3 = (2*4+1)*8 + 2 = 74.
	r.outb(0x1f6, 0xa0|1)
	r.outb(0x1f2, 1)
	r.outb(0x1f3, 3)
	r.outb(0x1f4, 2)
	r.outb(0x1f5, 0)
	r.command(0, cmdReadSectors)
	r.expectStatus(0, statDRDY|statDSC|statDRQ, "CHS read")
	got := r.readBlock(0, 512)
	d := r.c.ch[0].units[0].be.(*blk.Mem).Bytes()
	mustEqual(t, "CHS sector 74", got, d[74*512:75*512])
	// CHS with sector 0 is not an address.
	r.outb(0x1f3, 0)
	r.command(0, cmdReadSectors)
	if r.altStatus(0)&statERR == 0 || r.errReg(0) != errIDNF {
		t.Fatal("CHS sector 0 accepted")
	}
}

func TestExecuteDiagnosticAndSignatures(t *testing.T) {
	cd := blk.NewMemFrom("cd", make([]byte, 1<<20), true)
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: memDisk(1<<20, 1)}, {Media: CDROM, Backend: cd}})
	r.command(0, cmdDiagnose)
	if r.errReg(0) != 1 || r.altStatus(0) != statDRDY|statDSC {
		t.Fatalf("diagnostic: error %#x status %#x", r.errReg(0), r.altStatus(0))
	}
	r.outb(0x1f6, 0xb0)
	r.outb(0x3f6, ctlSRST)
	r.outb(0x3f6, 0)
	if r.inb(0x1f4) != 0x14 || r.inb(0x1f5) != 0xeb {
		t.Fatal("ATAPI signature")
	}
	// As QEMU: SRST does not change which device is selected.
	r.command(0, cmdIdentify) // CD: aborted with the signature
	if r.altStatus(0)&statERR == 0 || r.inb(0x1f4) != 0x14 {
		t.Fatal("IDENTIFY on ATAPI")
	}
	r.command(0, cmdReadSectors)
	if r.altStatus(0)&statERR == 0 {
		t.Fatal("READ SECTORS on ATAPI not aborted")
	}
}

func TestUnknownAndAbsent(t *testing.T) {
	r, _ := diskRig(t, 1<<20)
	for _, cmd := range []uint8{cmdNOP, 0x01, cmdDSM, 0xb0, 0xff, cmdPacket, cmdDeviceReset} {
		r.command(0, cmd)
		if r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errABRT {
			t.Fatalf("command %#x: status %#x error %#x", cmd, r.altStatus(0), r.errReg(0))
		}
	}
	if r.c.warn.count("ide: unsupported ATA command aborted") == 0 {
		t.Fatal("unknown commands not logged")
	}
	// Device 1 is absent: registers read 0, commands are ignored.
	r.outb(0x1f6, 0xb0)
	if r.status(0) != 0 || r.errReg(0) != 0 {
		t.Fatal("absent slave status")
	}
	raises := r.irq.Raises(14)
	r.command(0, cmdIdentify)
	if r.status(0) != 0 || r.irq.Raises(14) != raises {
		t.Fatal("absent slave answered")
	}
	// Secondary channel has nothing: everything reads 0, no IRQ.
	r.outb(0x176, 0xa0)
	r.command(1, cmdIdentify)
	if r.status(1) != 0 || r.inb(0x172) != 0 || r.irq.Raises(15) != 0 {
		t.Fatal("empty channel answered")
	}
	// Absent master with a present slave: commands to it are aborted.
	r2 := newRig(t, [4]*Drive{nil, {Media: Disk, Backend: memDisk(1<<20, 2)}})
	r2.outb(0x1f6, 0xa0)
	r2.command(0, cmdIdentify)
	if r2.altStatus(0)&statERR == 0 {
		t.Fatal("absent master did not abort")
	}
	r2.outb(0x1f6, 0xb0)
	r2.command(0, cmdIdentify)
	if r2.altStatus(0) != statDRDY|statDSC|statDRQ {
		t.Fatalf("slave IDENTIFY: %#x", r2.altStatus(0))
	}
}

func TestBadPortAccesses(t *testing.T) {
	r, d := diskRig(t, 1<<20)
	r.lba28(0, 0, 0, 1)
	r.command(0, cmdReadSectors)
	if v := r.inb(0x1f0); v != 0xff {
		t.Fatalf("byte read of data port %#x", v)
	}
	r.outb(0x1f0, 1) // ignored
	if r.c.warn.count("ide: byte access to the data register") != 2 {
		t.Fatal("byte data accesses not logged")
	}
	h := r.io.PortHandler(0x1f0)
	if v := h.ReadPort(0x1f0, 3); v != 0xffffffff {
		t.Fatal("size 3 accepted")
	}
	h.WritePort(0x1f0, 8, 0)
	if v := h.ReadPort(0x1f8, 1); v != 0xff {
		t.Fatal("out-of-range port read")
	}
	h.WritePort(0x100, 2, 0)
	if r.c.warn.count("ide: read of a port outside the channel") != 1 ||
		r.c.warn.count("ide: write to a port outside the channel") != 1 ||
		r.c.warn.count("ide: port read of invalid size") != 1 {
		t.Fatal("bad accesses not logged")
	}
	// The transfer still works after all that.
	got := r.readBlock(0, 512)
	mustEqual(t, "sector 0", got, d.Bytes()[:512])
	// Data reads with no data phase return 0 and change nothing.
	if r.inw(0x1f0) != 0 || r.inl(0x1f0) != 0 {
		t.Fatal("data without DRQ")
	}
	// A word access to the byte registers is two byte accesses.
	r.outw(0x1f2, 0x3412)
	if r.inb(0x1f2) != 0x12 || r.inb(0x1f3) != 0x34 || r.inw(0x1f2) != 0x3412 {
		t.Fatal("word access to nsector/sector")
	}
	// Task-file writes are ignored while DRQ is set.
	r.lba28(0, 0, 0, 1)
	r.command(0, cmdReadSectors)
	r.outb(0x1f3, 0x77)
	if r.inb(0x1f3) == 0x77 {
		t.Fatal("task file written during DRQ")
	}
	r.command(0, cmdIdentify) // ignored while DRQ
	mustEqual(t, "sector 0 again", r.readBlock(0, 512), d.Bytes()[:512])
}

func TestOutOfRange(t *testing.T) {
	r, _ := diskRig(t, 1<<20) // 2048 sectors
	for _, c := range []struct {
		lba   uint32
		count uint8
		cmd   uint8
	}{{2048, 1, cmdReadSectors}, {2047, 2, cmdReadSectors}, {2040, 0, cmdWriteSectors}, {0x0fffffff, 1, cmdReadVerify}, {4000, 8, cmdReadMultiple}} {
		r.lba28(0, 0, c.lba, c.count)
		r.command(0, c.cmd)
		if r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errIDNF {
			t.Fatalf("%+v: status %#x error %#x", c, r.altStatus(0), r.errReg(0))
		}
	}
	// The last sector is fine.
	r.lba28(0, 0, 2047, 1)
	r.command(0, cmdReadSectors)
	r.expectStatus(0, statDRDY|statDSC|statDRQ, "last sector")
	r.readBlock(0, 512)
	// DMA beyond the end: IDNF and an interrupt once the engine starts.
	r.writePRDs(prdGPA, []prd{{0x10000, 1024, true}})
	st := r.dmaLinux(0, true, cmdReadDMA, func() { r.lba28(0, 0, 2047, 2) })
	if st&(bmStIRQ|bmStActive) != bmStIRQ || r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errIDNF {
		t.Fatalf("DMA beyond the end: bm %#x status %#x error %#x", st, r.altStatus(0), r.errReg(0))
	}
}

func TestBackendErrors(t *testing.T) {
	r, d := diskRig(t, 1<<20)
	d.FailReads(10*512, 512)
	d.FailWrites(20*512, 1)
	r.lba28(0, 0, 8, 4)
	r.command(0, cmdReadSectors)
	r.readBlock(0, 512)
	r.readBlock(0, 512)
	if r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errUNC {
		t.Fatalf("PIO read EIO: status %#x error %#x", r.altStatus(0), r.errReg(0))
	}
	if r.inb(0x1f3) != 10 {
		t.Fatalf("error LBA %d, want 10", r.inb(0x1f3))
	}
	r.lba28(0, 0, 20, 1)
	r.command(0, cmdWriteSectors)
	r.writeBlock(0, make([]byte, 512))
	if r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errABRT {
		t.Fatalf("PIO write EIO: status %#x error %#x", r.altStatus(0), r.errReg(0))
	}
	// DMA read and write.
	r.writePRDs(prdGPA, []prd{{0x20000, 4096, true}})
	st := r.dmaLinux(0, true, cmdReadDMA, func() { r.lba28(0, 0, 8, 8) })
	if st&(bmStIRQ|bmStActive|bmStError) != bmStIRQ || r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errUNC {
		t.Fatalf("DMA read EIO: bm %#x status %#x error %#x", st, r.altStatus(0), r.errReg(0))
	}
	st = r.dmaLinux(0, false, cmdWriteDMA, func() { r.lba28(0, 0, 16, 8) })
	if st&(bmStIRQ|bmStActive) != bmStIRQ || r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errABRT {
		t.Fatalf("DMA write EIO: bm %#x status %#x error %#x", st, r.altStatus(0), r.errReg(0))
	}
	// FLUSH CACHE failing.
	d.FailFlush()
	r.command(0, cmdFlushCache)
	r.c.Drain()
	if r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errABRT {
		t.Fatalf("flush EIO: status %#x", r.altStatus(0))
	}
	if err := r.c.Flush(); err == nil {
		t.Fatal("Controller.Flush hid the error")
	}
	d.ClearFaults()
	// And the drive works afterwards.
	r.lba28(0, 0, 10, 1)
	r.command(0, cmdReadSectors)
	mustEqual(t, "after errors", r.readBlock(0, 512), d.Bytes()[10*512:11*512])
}

func TestFlushAsync(t *testing.T) {
	g := &gateDisk{Backend: memDisk(1<<20, 1), gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	fd := &flushGate{gateDisk: g}
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: fd}})
	r.outb(0x3f6, 0x08)
	r.command(0, cmdFlushCacheExt)
	<-g.entered
	if st := r.altStatus(0); st&statBSY == 0 {
		t.Fatalf("status during flush %#x", st)
	}
	if r.irqLevel(0) {
		t.Fatal("IRQ before the flush completed")
	}
	r.command(0, cmdIdentify) // ignored: busy
	close(g.gate)
	r.c.Drain()
	if r.altStatus(0) != statDRDY|statDSC || !r.irqLevel(0) {
		t.Fatalf("after flush: %#x irq %v", r.altStatus(0), r.irqLevel(0))
	}
}

type flushGate struct{ *gateDisk }

func (f *flushGate) Flush() error {
	f.entered <- struct{}{}
	<-f.gate
	return f.Backend.Flush()
}

func TestNewValidation(t *testing.T) {
	io := hwtest.NewIOSpace()
	mem := hwtest.NewMemory(1 << 20)
	irq := &hwtest.Interrupts{}
	if _, err := New(Config{IO: io, Mem: mem}); err == nil {
		t.Fatal("missing IRQ accepted")
	}
	ro := blk.NewMemFrom("ro", make([]byte, 4096), true)
	if _, err := New(Config{IO: io, Mem: mem, IRQ: irq, Drives: [4]*Drive{{Media: Disk, Backend: ro}}}); err == nil {
		t.Fatal("read-only disk accepted")
	}
	if _, err := New(Config{IO: io, Mem: mem, IRQ: irq, Drives: [4]*Drive{{Media: Disk}}}); err == nil {
		t.Fatal("disk without backend accepted")
	}
	c, err := New(Config{IO: io, Mem: mem, IRQ: irq, Drives: [4]*Drive{nil, nil, {Media: CDROM}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ClaimLegacyPorts(); err != nil {
		t.Fatal(err)
	}
	c2, _ := New(Config{IO: io, Mem: mem, IRQ: irq})
	if err := c2.ClaimLegacyPorts(); err == nil {
		t.Fatal("double claim succeeded")
	}
	if m, ok := c.Present(2); !ok || m != CDROM {
		t.Fatal("Present")
	}
}

func TestCloseAndFlush(t *testing.T) {
	d := memDisk(1<<20, 1)
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: d}, nil, {Media: CDROM, Backend: cdImage(4)}})
	r.lba28(0, 0, 0, 1)
	r.command(0, cmdWriteSectors)
	r.writeBlock(0, make([]byte, 512))
	if err := r.c.Flush(); err != nil || d.Stats().Flushes != 1 {
		t.Fatalf("Flush: %v, %d flushes", err, d.Stats().Flushes)
	}
	// A DMA command left pending at Close must not reach the closed backend.
	r.writePRDs(prdGPA, []prd{{0x10000, 512, true}})
	r.outl(bmBase+bmAddr, prdGPA)
	r.lba28(0, 0, 0, 1)
	r.command(0, cmdReadDMA)
	if err := r.c.Close(); err != nil {
		t.Fatal(err)
	}
	r.outb(bmBase+bmCmd, bmCmdWrite|bmCmdStart)
	r.c.Drain()
	if r.status(0) != 0 {
		t.Fatal("units still present after Close")
	}
	if _, err := d.ReadAt(make([]byte, 1), 0); err == nil {
		t.Fatal("backend not closed")
	}
}
