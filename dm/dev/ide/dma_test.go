package ide

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// A PRD layout with a 64 KiB entry (count 0), a buffer crossing a page
// boundary and one ending the table: 68 KiB = 136 sectors.
var mixedPRDs = []prd{
	{0x100000, 0x10000, false}, // written as count 0
	{0x220f00, 0x400, false},   // crosses 0x221000
	{0x300000, 0xc00, true},
}

func TestDMAReadLinux(t *testing.T) {
	r, d := diskRig(t, 4<<20)
	obs := &recObserver{r: r}
	r.c.SetObserver(obs)
	r.outb(0x3f6, 0x08)
	r.writePRDs(prdGPA, mixedPRDs)
	st := r.dmaLinux(0, true, cmdReadDMA, func() { r.lba28(0, 0, 1000, 136) })
	if st&bmStActive != 0 || st&bmStError != 0 || st&bmStIRQ == 0 {
		t.Fatalf("bus-master status %#x", st)
	}
	if !r.irqLevel(0) {
		t.Fatal("no IRQ 14")
	}
	r.expectStatus(0, statDRDY|statDSC, "after DMA")
	r.status(0)
	if r.irqLevel(0) {
		t.Fatal("status read did not lower the IRQ")
	}
	img := d.Bytes()[1000*512:]
	off := 0
	for _, p := range mixedPRDs {
		mustEqual(t, "segment", r.readMem(uint64(p.addr), int(p.count)), img[off:off+int(p.count)])
		off += int(p.count)
	}
	// The task file points past the transfer (LBA 1136 = 0x470).
	if r.inb(0x1f3) != 0x70 || r.inb(0x1f4) != 0x04 || r.inb(0x1f2) != 0 {
		t.Fatalf("task file after DMA: %#x %#x count %d", r.inb(0x1f4), r.inb(0x1f3), r.inb(0x1f2))
	}
	// Every page written was reported dirty, nothing else.
	var want []uint64
	for _, p := range mixedPRDs {
		for pfn := uint64(p.addr) >> 12; pfn <= (uint64(p.addr)+uint64(p.count)-1)>>12; pfn++ {
			want = append(want, pfn)
		}
	}
	if got := r.dirty.Pages(); !equalU64(got, want) {
		t.Fatalf("dirty pages %v, want %v", got, want)
	}
	// The observer saw one read, after the data landed and before the IRQ.
	if len(obs.reads) != 1 {
		t.Fatalf("observer reads %+v", obs.reads)
	}
	rd := obs.reads[0]
	if rd.drive != 0 || rd.off != 1000*512 || rd.n != 136*512 || !rd.began || rd.irqAtDone || !rd.landed {
		t.Fatalf("observer read %+v", rd)
	}
	if len(rd.segs) != 3 || rd.segs[0] != (Segment{GPA: 0x100000, Len: 0x10000}) || rd.segs[1] != (Segment{GPA: 0x220f00, Len: 0x400}) {
		t.Fatalf("segments %+v", rd.segs)
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDMAWriteSeaBIOS(t *testing.T) {
	r, d := diskRig(t, 4<<20)
	obs := &recObserver{r: r}
	r.c.SetObserver(obs)
	want := r.fillMem(0x200000, 16*512, 9)
	// ata_try_dma: the PRD table, the direction (0: read memory), clear status.
	r.writePRDs(prdGPA, []prd{{0x200000, 8 * 512, false}, {0x200000 + 8*512, 8 * 512, true}})
	r.outl(bmBase+bmAddr, prdGPA)
	old := r.inb(bmBase+bmCmd) &^ (bmCmdWrite | bmCmdStart)
	r.outb(bmBase+bmCmd, old)
	r.outb(bmBase+bmStatus, bmStError|bmStIRQ)
	// send_cmd, then ata_dma_transfer: start, poll for the IRQ bit, stop.
	r.lba28(0, 0, 64, 16)
	r.command(0, cmdWriteDMA)
	r.outb(bmBase+bmCmd, old|bmCmdStart)
	deadline := time.Now().Add(5 * time.Second)
	var st uint8
	for {
		st = r.bmStatus(0)
		if st&bmStIRQ != 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	r.outb(bmBase+bmCmd, old)
	r.altStatus(0)
	if st&(bmStIRQ|bmStActive) != bmStIRQ || r.status(0) != statDRDY|statDSC {
		t.Fatalf("bm %#x status %#x", st, r.altStatus(0))
	}
	mustEqual(t, "disk", d.Bytes()[64*512:80*512], want)
	if len(r.dirty.Calls()) != 0 {
		t.Fatalf("a write to disk dirtied memory: %v", r.dirty.Calls())
	}
	if len(obs.writes) != 1 || !obs.writes[0].ok || obs.writes[0].diskHadDataAtBegin || obs.writes[0].off != 64*512 ||
		len(obs.writes[0].segs) != 2 || !bytes.Equal(obs.writes[0].data, want) {
		t.Fatalf("observer writes %+v", obs.writes)
	}
}

func TestDMALBA48AndStartFirst(t *testing.T) {
	sd := &sparseDisk{size: 1 << 42, sec: map[int64][]byte{}}
	r := newRig(t, [4]*Drive{nil, nil, nil, {Media: Disk, Backend: sd}})
	n := 300
	want := r.fillMem(0x400000, n*512, 4)
	// 300 sectors in PRDs of 60 KiB.
	var prds []prd
	for off := 0; off < n*512; off += 60 << 10 {
		prds = append(prds, prd{uint32(0x400000 + off), uint32(min(60<<10, n*512-off)), off+60<<10 >= n*512})
	}
	r.writePRDs(prdGPA, prds)
	lba := uint64(0x1_2345_6789)
	st := r.dmaLinux(1, false, cmdWriteDMAExt, func() { r.lba48(1, 1, lba, uint16(n)) })
	if st&(bmStIRQ|bmStActive|bmStError) != bmStIRQ {
		t.Fatalf("write: bm %#x status %#x", st, r.altStatus(1))
	}
	if sd.sec[int64(lba)] == nil || !bytes.Equal(sd.sec[int64(lba)+299], want[299*512:]) {
		t.Fatal("LBA48 DMA write")
	}
	// Read it back with the bus master started before the command.
	r.mem.WriteGPA(0x400000, make([]byte, n*512))
	bm := uint16(bmBase + 8)
	r.outl(bm+bmAddr, prdGPA)
	r.outb(bm+bmCmd, bmCmdWrite|bmCmdStart)
	if r.inb(bm+bmStatus)&bmStActive == 0 {
		t.Fatal("start did not set Active")
	}
	r.lba48(1, 1, lba, uint16(n))
	r.command(1, cmdReadDMAExt)
	r.c.Drain()
	if st := r.inb(bm + bmStatus); st&bmStActive != 0 || st&bmStIRQ == 0 {
		t.Fatalf("read: bm %#x", st)
	}
	got := r.readMem(0x400000, n*512)
	for s := 0; s < n; s++ {
		if !bytes.Equal(got[s*512:(s+1)*512], sd.sec[int64(lba)+int64(s)]) {
			t.Fatalf("sector %d", s)
		}
	}
}

func TestDMAMalformed(t *testing.T) {
	r, d := diskRig(t, 1<<20)
	r.outb(0x3f6, 0x08)
	good := func() {
		t.Helper()
		r.writePRDs(prdGPA, []prd{{0x10000, 1024, true}})
		st := r.dmaLinux(0, true, cmdReadDMA, func() { r.lba28(0, 0, 4, 2) })
		if st&(bmStIRQ|bmStActive|bmStError) != bmStIRQ || r.altStatus(0) != statDRDY|statDSC {
			t.Fatalf("good transfer after a bad one: bm %#x status %#x", st, r.altStatus(0))
		}
		mustEqual(t, "good transfer", r.readMem(0x10000, 1024), d.Bytes()[4*512:6*512])
	}
	bad := func(name string, prdAt uint32, setup func(), cmd uint8, wantBusError bool) {
		t.Helper()
		setup()
		bm := uint16(bmBase)
		dir := uint8(bmCmdWrite)
		if cmd == cmdWriteDMA {
			dir = 0
		}
		r.outl(bm+bmAddr, prdAt)
		r.outb(bm+bmCmd, dir)
		r.lba28(0, 0, 4, 2)
		r.command(0, cmd)
		r.outb(bm+bmCmd, dir|bmCmdStart)
		r.c.Drain()
		st := r.bmStatus(0)
		wantBM := uint8(bmStIRQ)
		if wantBusError {
			wantBM |= bmStError
		}
		if st&(bmStIRQ|bmStActive|bmStError) != wantBM {
			t.Fatalf("%s: bm status %#x, want %#x", name, st, wantBM)
		}
		if r.altStatus(0) != statDRDY|statERR || r.errReg(0) != errABRT {
			t.Fatalf("%s: status %#x error %#x", name, r.altStatus(0), r.errReg(0))
		}
		if !r.irqLevel(0) {
			t.Fatalf("%s: no interrupt", name)
		}
		r.outb(bm+bmCmd, 0)
		r.outb(bm+bmStatus, bmStIRQ|bmStError)
		r.status(0)
		good()
	}
	bad("segment in a hole", prdGPA, func() { r.writePRDs(prdGPA, []prd{{holeGPA + 0x800, 1024, true}}) }, cmdReadDMA, true)
	bad("segment beyond RAM", prdGPA, func() { r.writePRDs(prdGPA, []prd{{0xf0000000, 1024, true}}) }, cmdReadDMA, true)
	bad("segment straddling the end of RAM", prdGPA, func() { r.writePRDs(prdGPA, []prd{{memSize - 512, 1024, true}}) }, cmdWriteDMA, true)
	bad("table in a hole", holeGPA, func() {}, cmdReadDMA, true)
	bad("table beyond RAM", 0xfffffff0, func() {}, cmdReadDMA, true)
	bad("table without end", prdGPA, func() {
		many := make([]prd, MaxPRDEntries+1)
		for i := range many {
			many[i] = prd{0x20000, 2, false}
		}
		r.writePRDs(prdGPA, many)
	}, cmdReadDMA, true)
	bad("table too short", prdGPA, func() { r.writePRDs(prdGPA, []prd{{0x10000, 512, false}, {0x20000, 256, true}}) }, cmdReadDMA, true)
	bad("table too short (write)", prdGPA, func() { r.writePRDs(prdGPA, []prd{{0x10000, 512, true}}) }, cmdWriteDMA, true)
	if r.c.warn.count("ide: DMA aborted") != 8 {
		t.Fatalf("DMA faults logged %d times", r.c.warn.count("ide: DMA aborted"))
	}
	// A partial DMA read into guest memory: the pages written before the
	// fault are dirty and reported to the observer as written.
	obs := &recObserver{r: r}
	r.c.SetObserver(obs)
	bad("second segment in a hole", prdGPA, func() {
		r.writePRDs(prdGPA, []prd{{0x30000, 512, false}, {holeGPA, 512, true}})
	}, cmdReadDMA, true)
	if len(obs.written) < 1 || obs.written[0] != (Segment{GPA: 0x30000, Len: 512}) || !r.dirty.IsDirty(0x30) {
		t.Fatalf("partial transfer not reported: %+v", obs.written)
	}
	r.c.SetObserver(nil)

	// A table longer than the transfer: success, Active stays set.
	r.writePRDs(prdGPA, []prd{{0x10000, 8192, true}})
	st := r.dmaLinux(0, true, cmdReadDMA, func() { r.lba28(0, 0, 4, 2) })
	if st&(bmStIRQ|bmStActive|bmStError) != bmStIRQ|bmStActive || r.altStatus(0) != statDRDY|statDSC {
		t.Fatalf("long table: bm %#x status %#x", st, r.altStatus(0))
	}
	if r.bmStatus(0)&bmStActive != 0 {
		t.Fatal("clearing START did not clear Active")
	}
	// Bus mastering disabled in PCI COMMAND.
	r.c.ConfigWrite(pci.RegCommand, 2, pci.CommandIO)
	r.writePRDs(prdGPA, []prd{{0x10000, 1024, true}})
	st = r.dmaLinux(0, true, cmdReadDMA, func() { r.lba28(0, 0, 4, 2) })
	if st&(bmStIRQ|bmStActive|bmStError) != bmStIRQ|bmStError || r.altStatus(0) != statDRDY|statERR {
		t.Fatalf("no bus master: bm %#x status %#x", st, r.altStatus(0))
	}
	r.c.ConfigWrite(pci.RegCommand, 2, pci.CommandIO|pci.CommandMaster)
	good()
	// A direction bit that disagrees is logged, the command still works.
	r.writePRDs(prdGPA, []prd{{0x10000, 1024, true}})
	r.dmaLinux(0, false, cmdReadDMA, func() { r.lba28(0, 0, 4, 2) })
	if r.c.warn.count("ide: bus-master direction disagrees with the command") != 1 || r.altStatus(0) != statDRDY|statDSC {
		t.Fatal("direction mismatch")
	}
}

func TestBMRegisters(t *testing.T) {
	r, _ := diskRig(t, 1<<20)
	bm := uint16(bmBase + 8)
	r.outl(bm+bmAddr, 0x12345677)
	if r.inl(bm+bmAddr) != 0x12345674 {
		t.Fatalf("PRD address %#x", r.inl(bm+bmAddr))
	}
	r.outb(bm+bmAddr+1, 0xab)
	if r.inl(bm+bmAddr) != 0x1234ab74 {
		t.Fatalf("byte write of the address %#x", r.inl(bm+bmAddr))
	}
	r.outb(bm+bmStatus, 0xff)
	if r.inb(bm+bmStatus) != bmStDrive0|bmStDrive1 {
		t.Fatalf("status %#x", r.inb(bm+bmStatus))
	}
	r.outb(bm+bmCmd, 0xff)
	if r.inb(bm+bmCmd) != bmCmdStart|bmCmdWrite || r.inb(bm+bmStatus)&bmStActive == 0 {
		t.Fatal("command register")
	}
	// A 32-bit read at +0 sees command, reserved, status, reserved.
	if v := r.inl(bm); v != uint32(bmCmdStart|bmCmdWrite)|uint32(r.inb(bm+bmStatus))<<16 {
		t.Fatalf("dword read %#x", v)
	}
	r.outb(bm+bmCmd, 0)
	if r.inb(bm+bmStatus)&bmStActive != 0 {
		t.Fatal("stop did not clear Active")
	}
	// Primary registers are independent.
	if r.inl(bmBase+bmAddr) != 0 {
		t.Fatal("channels share registers")
	}
	h := r.io.PortHandler(bmBase)
	if h.ReadPort(bmBase, 8) != 0xffffffff {
		t.Fatal("invalid size accepted")
	}
}

func TestDMAStopWaitsForTransfer(t *testing.T) {
	g := &gateDisk{Backend: memDisk(1<<20, 5), gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: g}})
	r.outb(0x3f6, 0x08)
	r.writePRDs(prdGPA, []prd{{0x10000, 4096, true}})
	r.outl(bmBase+bmAddr, prdGPA)
	r.outb(bmBase+bmCmd, bmCmdWrite)
	r.lba28(0, 0, 0, 8)
	r.command(0, cmdReadDMA)
	r.outb(bmBase+bmCmd, bmCmdWrite|bmCmdStart)
	<-g.entered
	if r.bmStatus(0)&bmStActive == 0 || r.altStatus(0) != statDRDY|statDSC|statDRQ {
		t.Fatalf("during DMA: bm %#x status %#x", r.bmStatus(0), r.altStatus(0))
	}
	if r.irqLevel(0) {
		t.Fatal("IRQ before completion")
	}
	// The guest stops the engine mid-transfer: the write waits for it.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.outb(bmBase+bmCmd, bmCmdWrite)
	}()
	time.Sleep(10 * time.Millisecond)
	close(g.gate)
	wg.Wait()
	if st := r.bmStatus(0); st&(bmStActive|bmStIRQ) != bmStIRQ || r.altStatus(0) != statDRDY|statDSC {
		t.Fatalf("after stop: bm %#x status %#x", st, r.altStatus(0))
	}
	mustEqual(t, "data", r.readMem(0x10000, 4096), g.Backend.(*blk.Mem).Bytes()[:4096])
}

// recObserver records what an Observer sees, and checks the ordering
// guarantees: reads are reported after the data landed and before the IRQ;
// writes begin before the backend has the data.
type recObserver struct {
	r       *rig
	mu      sync.Mutex
	reads   []obsRead
	writes  []obsWrite
	written []Segment
}

type obsRead struct {
	drive             int
	off, n            int64
	segs              []Segment
	began, irqAtDone  bool
	landed            bool
	dataMatchesMemory bool
}

type obsWrite struct {
	off, n             int64
	segs               []Segment
	data               []byte
	ok                 bool
	diskHadDataAtBegin bool
}

type readTok struct {
	drive  int
	off, n int64
}

func (o *recObserver) ReadBegin(drive int, off, n int64) any { return readTok{drive, off, n} }

func (o *recObserver) ReadDone(tok any, drive int, off int64, segs []Segment, data []byte) {
	t := tok.(readTok)
	rd := obsRead{drive: drive, off: off, n: int64(len(data)), segs: append([]Segment(nil), segs...),
		began: t.drive == drive && t.off == off && t.n == int64(len(data))}
	rd.irqAtDone = o.r.irqLevel(drive / 2)
	landed := true
	p := 0
	for _, s := range segs {
		m := make([]byte, s.Len)
		if err := o.r.mem.ReadGPA(s.GPA, m); err != nil || !bytes.Equal(m, data[p:p+int(s.Len)]) {
			landed = false
		}
		p += int(s.Len)
	}
	rd.landed = landed && p == len(data)
	o.mu.Lock()
	o.reads = append(o.reads, rd)
	o.mu.Unlock()
}

type writeTok struct {
	off, n int64
	had    bool
}

func (o *recObserver) WriteBegin(drive int, off, n int64) any {
	// Did the disk already hold the data? Look at it through the unit.
	u := &o.r.c.ch[drive/2].units[drive%2]
	cur := make([]byte, n)
	u.be.ReadAt(cur, off)
	return writeTok{off, n, bytes.Equal(cur, o.pending(off, n))}
}

// pending reads what the guest is writing, from the PRD segment memory:
// tests that use it write distinct random data, so equality means the write
// already happened.
func (o *recObserver) pending(off, n int64) []byte {
	b := make([]byte, n)
	o.r.mem.ReadGPA(0x200000, b)
	return b
}

func (o *recObserver) WriteDone(tok any, segs []Segment, data []byte, ok bool) {
	t := tok.(writeTok)
	o.mu.Lock()
	o.writes = append(o.writes, obsWrite{off: t.off, n: t.n, segs: append([]Segment(nil), segs...),
		data: append([]byte(nil), data...), ok: ok, diskHadDataAtBegin: t.had})
	o.mu.Unlock()
}

func (o *recObserver) GuestWritten(gpa, n uint64) {
	o.mu.Lock()
	o.written = append(o.written, Segment{GPA: gpa, Len: uint32(n)})
	o.mu.Unlock()
}
