package dm

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

const testPort = 0x500

func withRecDev(t *testing.T, e *env) *recDev {
	t.Helper()
	d := &recDev{}
	if err := e.c.io.ClaimPorts(testPort, 8, d); err != nil {
		t.Fatal(err)
	}
	if err := e.c.io.ClaimMMIO(0xfe000000, 0x1000, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPIOThroughTheLoop(t *testing.T) {
	e := newEnv(t, envOpt{vcpus: 2})
	d := withRecDev(t, e)
	// The claims reached Xen.
	if !e.server().Claims(xen.IORangePort, testPort, 8) || !e.server().Claims(xen.IORangeMemory, 0xfe000000, 0x1000) {
		t.Fatal("test device ranges not registered with Xen")
	}
	// Reads, on both vCPUs.
	if v := e.do(1, pio(testPort+2, 2, true, 0xdead)).Data; v != 1 {
		t.Fatalf("in = %#x", v)
	}
	// Writes without data_is_ptr are masked to their size.
	e.do(0, pio(testPort, 1, false, 0x12345678))
	e.do(0, pio(testPort, 2, false, 0xffff_ffff_0000_abcd))
	if got := d.take(); !reflect.DeepEqual(got, []string{"in 0x502/2", "out 0x500/1=0x78", "out 0x500/2=0xabcd"}) {
		t.Fatalf("device saw %q", got)
	}
	// A 4-byte read of 0xcf8 goes to the bus (the CF8 read-back Linux
	// probes), a byte at 0xcf9 to the PIIX3 reset register.
	e.out(0xcf8, 4, 0x80000000)
	if v := e.in(0xcf8, 4); v != 0x80000000 {
		t.Fatalf("cf8 read-back %#x", v)
	}
	// Reads of unclaimed ports are all-ones, of any size.
	if v := e.in(0x600, 4); v != 0xffffffff {
		t.Fatalf("unclaimed port read %#x", v)
	}
	// An access straddling a claim edge is split per byte.
	if v := e.in(testPort+7, 2); v != 0xff02 {
		t.Fatalf("straddling read %#x (want 0xff02: byte from the device, 0xff beyond)", v)
	}
	// CMOS via the real device: index ≥ 0x0e is ours.
	e.out(0x70, 1, 0x3d)
	if v := e.in(0x71, 1); v != 0x02 {
		t.Fatalf("CMOS 0x3d = %#x", v)
	}
	// Non-pointer rep: count items to the same port (QEMU loops).
	d.take()
	r := pio(testPort, 1, false, 0x41)
	r.Count = 3
	e.do(0, r)
	if got := d.written(); !reflect.DeepEqual(got, []uint64{0x41, 0x41, 0x41}) {
		t.Fatalf("rep out without pointer: %v", got)
	}
}

func TestRepInsOuts(t *testing.T) {
	e := newEnv(t, envOpt{})
	d := withRecDev(t, e)
	ram := e.p.ram.Bytes()
	le := binary.LittleEndian

	// rep insw, df=0: 5 words into 0x1000 upwards.
	r := pio(testPort, 2, true, 0x1000)
	r.SetDataIsPtr(true)
	r.Count = 5
	if got := e.do(0, r); got.Data != 0x1000 {
		t.Fatalf("pointer request data changed to %#x", got.Data)
	}
	for i := 0; i < 5; i++ {
		if v := le.Uint16(ram[0x1000+2*i:]); v != uint16(i+1) {
			t.Fatalf("insw df=0 item %d = %d", i, v)
		}
	}
	// rep insd, df=1: item i at 0x2000 − 4i.
	r = pio(testPort, 4, true, 0x2000)
	r.SetDataIsPtr(true)
	r.SetDF(true)
	r.Count = 3
	e.do(0, r)
	for i := 0; i < 3; i++ {
		if v := le.Uint32(ram[0x2000-4*i:]); v != uint32(6+i) {
			t.Fatalf("insd df=1 item %d = %d", i, v)
		}
	}
	// rep outsb, across a page boundary, df=0 and df=1.
	copy(ram[0x2ffe:], []byte{1, 2, 3, 4})
	d.take()
	r = pio(testPort, 1, false, 0x2ffe)
	r.SetDataIsPtr(true)
	r.Count = 4
	e.do(0, r)
	r.SetDF(true)
	r.Data = 0x3001
	e.do(0, r)
	if got := d.written(); !reflect.DeepEqual(got, []uint64{1, 2, 3, 4, 4, 3, 2, 1}) {
		t.Fatalf("outsb wrote %v", got)
	}
	// PIO with data_is_ptr and count 0 does nothing.
	d.take()
	r.Count = 0
	e.do(0, r)
	if got := d.take(); len(got) != 0 {
		t.Fatalf("count 0 touched the device: %v", got)
	}
}

func TestMMIOCopy(t *testing.T) {
	e := newEnv(t, envOpt{})
	d := withRecDev(t, e)
	ram := e.p.ram.Bytes()
	le := binary.LittleEndian
	mm := func(addr uint64, size uint32, read bool, data uint64) xen.Ioreq {
		r := xen.Ioreq{Addr: addr, Data: data, Count: 1, Size: size, Type: xen.IoreqTypeCopy}
		if read {
			r.SetDir(xen.IoreqRead)
		}
		return r
	}
	if v := e.do(0, mm(0xfe000010, 8, true, 0)).Data; v != 0xaa00000000000001 {
		t.Fatalf("8-byte MMIO read %#x", v)
	}
	if v := e.do(0, mm(0xfe000010, 4, true, 0)).Data; v != 0x2 {
		t.Fatalf("4-byte MMIO read %#x (must be masked)", v)
	}
	// rep stos to MMIO without a pointer: the address steps, df backwards.
	d.take()
	r := mm(0xfe000100, 4, false, 0x1_0000_0007)
	r.Count = 3
	r.SetDF(true)
	e.do(0, r)
	if got := d.take(); !reflect.DeepEqual(got, []string{"w 0xfe000100/4=0x7", "w 0xfe0000fc/4=0x7", "w 0xfe0000f8/4=0x7"}) {
		t.Fatalf("rep stos: %q", got)
	}
	// movs MMIO → RAM (read) and RAM → MMIO (write), with a pointer.
	r = mm(0xfe000200, 8, true, 0x5000)
	r.SetDataIsPtr(true)
	r.Count = 2
	e.do(0, r)
	if a, b := le.Uint64(ram[0x5000:]), le.Uint64(ram[0x5008:]); a != 0xaa00000000000003 || b != 0xaa00000000000004 {
		t.Fatalf("movs to RAM: %#x %#x", a, b)
	}
	d.take()
	le.PutUint16(ram[0x6000:], 0x1111)
	le.PutUint16(ram[0x6002:], 0x2222)
	r = mm(0xfe000300, 2, false, 0x6002)
	r.SetDataIsPtr(true)
	r.SetDF(true)
	r.Count = 2
	e.do(0, r)
	if got := d.take(); !reflect.DeepEqual(got, []string{"w 0xfe000300/2=0x2222", "w 0xfe0002fe/2=0x1111"}) {
		t.Fatalf("movs to MMIO df=1: %q", got)
	}
	// Unclaimed MMIO reads all-ones.
	if v := e.do(0, mm(0xfd000000, 8, true, 0)).Data; v != ^uint64(0) {
		t.Fatalf("unclaimed MMIO %#x", v)
	}
}

func TestPCIConfig(t *testing.T) {
	e := newEnv(t, envOpt{})
	cfg := func(devfn uint8, reg uint64, size uint32, read bool, data uint64) xen.Ioreq {
		r := xen.Ioreq{Addr: uint64(devfn)<<32 | reg, Data: data, Count: 1, Size: size, Type: xen.IoreqTypePCIConfig}
		if read {
			r.SetDir(xen.IoreqRead)
		}
		return r
	}
	if v := e.do(0, cfg(0x00, 0, 4, true, 0)).Data; v != 0x12378086 {
		t.Fatalf("i440FX id %#x", v)
	}
	if v := e.do(0, cfg(0x08, 2, 2, true, 0)).Data; v != 0x7000 {
		t.Fatalf("PIIX3 device id %#x", v)
	}
	if v := e.do(0, cfg(0x0b, 2, 2, true, 0)).Data; v != 0x7113 {
		t.Fatalf("PIIX4 PM device id %#x", v)
	}
	if v := e.do(0, cfg(0x10, 0, 4, true, 0)).Data; v != 0x00015853 {
		t.Fatalf("xen-platform id %#x", v)
	}
	// PIRQ route write (hvmloader: links 0–3 → 5, 10, 11, 5).
	e.do(0, cfg(0x08, 0x60, 4, false, 0x050b0a05))
	for link, want := range []uint8{5, 10, 11, 5} {
		if got := e.p.dm.LinkRoute(uint8(link)); got != want {
			t.Fatalf("link %d routed to %d, want %d", link, got, want)
		}
	}
	// An empty slot reads all-ones (Xen would not even send it).
	if v := e.do(0, cfg(0x28, 0, 4, true, 0)).Data; v != 0xffffffff {
		t.Fatalf("empty slot %#x", v)
	}
	// Config writes with data_is_ptr (rep outsl to 0xcfc).
	le := binary.LittleEndian
	le.PutUint32(e.p.ram.Bytes()[0x7000:], 0x0b0a0b0a)
	r := cfg(0x08, 0x60, 4, false, 0x7000)
	r.SetDataIsPtr(true)
	e.do(0, r)
	if got := e.p.dm.LinkRoute(0); got != 10 {
		t.Fatalf("link 0 after pointer write: %d", got)
	}
}

func TestMalformedRequests(t *testing.T) {
	e := newEnv(t, envOpt{})
	d := withRecDev(t, e)
	ram := e.p.ram.Bytes()

	// Bad sizes: all-ones for reads, nothing reaches the device.
	for _, size := range []uint32{0, 3, 5, 8, 16, 1 << 31} {
		if v := e.do(0, pio(testPort, size, true, 0x1234)).Data; v != ones(max(min(size, 8), 1)) {
			t.Errorf("PIO read of size %d answered %#x", size, v)
		}
		e.do(0, pio(testPort, size, false, 0x1234))
	}
	c := xen.Ioreq{Addr: 0xfe000000, Count: 1, Size: 16, Type: xen.IoreqTypeCopy}
	c.SetDir(xen.IoreqRead)
	e.do(0, c)
	if got := d.take(); len(got) != 0 {
		t.Fatalf("bad sizes reached the device: %q", got)
	}
	// A huge count is refused, not looped over.
	r := pio(testPort, 1, true, 0x1000)
	r.SetDataIsPtr(true)
	r.Count = 1 << 30
	start := time.Now()
	e.do(0, r)
	if time.Since(start) > time.Second || len(d.take()) != 0 {
		t.Fatal("huge count was executed")
	}
	r.Count = MaxReps + 1
	e.do(0, r)
	if len(d.take()) != 0 {
		t.Fatal("count above MaxReps was executed")
	}
	// Pointer into a hole: ins drops the items that hit the hole, outs
	// feeds all-ones to the device for them.
	e.p.ram.AddHole(0x20, 1) // 0x20000–0x20fff
	r = pio(testPort, 2, true, 0x1fffc)
	r.SetDataIsPtr(true)
	r.Count = 4 // 0x1fffc, 0x1fffe valid; 0x20000, 0x20002 in the hole
	e.do(0, r)
	if v := binary.LittleEndian.Uint16(ram[0x1fffe:]); v == 0 {
		t.Fatal("the valid part of a partly bad buffer was not written")
	}
	d.take()
	r = pio(testPort, 2, false, 0x1fffe)
	r.SetDataIsPtr(true)
	r.Count = 2
	binary.LittleEndian.PutUint16(ram[0x1fffe:], 0x4242)
	e.do(0, r)
	if got := d.written(); !reflect.DeepEqual(got, []uint64{0x4242, 0xffff}) {
		t.Fatalf("outs across a hole wrote %#x", got)
	}
	// Pointer far outside RAM.
	r.Data = 0x7fff_ffff_f000
	e.do(0, r)
	// Unknown type and TIMEOFFSET on the synchronous path are completed.
	e.do(0, xen.Ioreq{Type: 5, Size: 4, Count: 1})
	e.do(0, xen.Ioreq{Type: xen.IoreqTypeTimeOffset, Data: 3600, Size: 8, Count: 1})
	// The loop is still healthy.
	if v := e.in(testPort, 1); v == 0 {
		t.Fatal("device not reached after malformed requests")
	}
}

func TestBufferedFirstAndTimeOffset(t *testing.T) {
	e := newEnv(t, envOpt{})
	d := withRecDev(t, e)
	s := e.server()
	// Buffered writes (what Xen queues for stdvga memory; here to our
	// MMIO-less port device through a buffered PIO write) then a
	// synchronous read: the buffered ones must be handled first.
	if err := s.Page.PostBuffered(pio(testPort, 1, false, 0x11)); err != nil {
		t.Fatal(err)
	}
	if err := s.Page.PostBuffered(pio(testPort+1, 2, false, 0x2222)); err != nil {
		t.Fatal(err)
	}
	to := xen.Ioreq{Type: xen.IoreqTypeTimeOffset, Data: 0x1_0000_0005, Size: 8, Count: 1}
	if err := s.Page.PostBuffered(to); err != nil {
		t.Fatal(err)
	}
	e.in(testPort+3, 1) // fires only the vCPU port
	if got := d.take(); !reflect.DeepEqual(got, []string{"out 0x500/1=0x11", "out 0x501/2=0x2222", "in 0x503/1"}) {
		t.Fatalf("order: %q", got)
	}
	if rd, wr := s.Page.BufPointers(); rd != wr {
		t.Fatalf("ring not drained: rd %d wr %d", rd, wr)
	}
	// The buffered port alone also drains the ring, across a wrap.
	s.Page.SetBufPointers(509, 509)
	for i := 0; i < 4; i++ {
		if err := s.PostBuffered(pio(testPort, 1, false, uint64(i))); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, "buffered writes", func() bool { return len(d.written()) == 4 })
	if got := d.written(); !reflect.DeepEqual(got, []uint64{0, 1, 2, 3}) {
		t.Fatalf("buffered across the wrap: %v", got)
	}
}

func TestInvalidateFlushesMapCache(t *testing.T) {
	e := newEnv(t, envOpt{})
	withRecDev(t, e)
	r := pio(testPort, 4, true, 0x300000) // maps a bucket
	r.SetDataIsPtr(true)
	r.Count = 2
	e.do(0, r)
	if e.p.ram.Mappings() == 0 {
		t.Fatal("no mapping after a pointer request")
	}
	e.do(1, xen.Ioreq{Type: xen.IoreqTypeInvalidate, Data: ^uint64(0), Size: 4, Count: 1})
	if n := e.p.ram.Mappings(); n != 0 {
		t.Fatalf("%d mappings left after INVALIDATE", n)
	}
	// And the next access maps again.
	e.do(0, r)
}

func TestDirtyLogOnlyWhileEnabled(t *testing.T) {
	e := newEnv(t, envOpt{})
	withRecDev(t, e)
	ins := func(gpa uint64, count uint32) {
		r := pio(testPort, 4, true, gpa)
		r.SetDataIsPtr(true)
		r.Count = count
		e.do(0, r)
	}
	ins(0x10000, 4)
	time.Sleep(2 * dirtyFlushDelay)
	if n := len(e.p.dm.Modified()); n != 0 {
		t.Fatalf("modified_memory while the dirty log is off: %v", e.p.dm.Modified())
	}
	ctx := context.Background()
	e.c.SetGlobalDirtyLog(ctx, true)
	ins(0x10ffc, 2) // pfns 0x10 and 0x11
	ins(0x40000, 1) // pfn 0x40
	waitUntil(t, "modified_memory", func() bool { return covered(e.p.dm.Modified(), 0x10, 0x11, 0x40) })
	// Device DMA (through the device-facing memory) is reported too.
	e.c.mem.WriteGPA(0x80000, make([]byte, 8192))
	waitUntil(t, "DMA pages reported", func() bool { return covered(e.p.dm.Modified(), 0x80, 0x81) })
	e.c.SetGlobalDirtyLog(ctx, false)
	n := len(e.p.dm.Modified())
	ins(0x90000, 1)
	time.Sleep(2 * dirtyFlushDelay)
	if len(e.p.dm.Modified()) != n {
		t.Fatal("modified_memory after the dirty log was turned off")
	}
}

func covered(ranges []xen.PFNRange, pfns ...uint64) bool {
	for _, p := range pfns {
		ok := false
		for _, r := range ranges {
			if p >= r.First && p < r.First+r.Count {
				ok = true
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func TestIOSpaceClaims(t *testing.T) {
	e := newEnv(t, envOpt{})
	d := &recDev{}
	io := e.c.io
	if err := io.ClaimPorts(0x600, 4, d); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ base, n uint16 }{{0x600, 1}, {0x5ff, 2}, {0x603, 8}, {0x5f0, 0x20}} {
		if err := io.ClaimPorts(c.base, c.n, d); err == nil {
			t.Errorf("overlapping claim %#x+%d accepted", c.base, c.n)
		}
	}
	if err := io.ClaimPorts(0x604, 4, d); err != nil {
		t.Fatalf("adjacent claim: %v", err)
	}
	if err := io.ClaimPorts(0xfffe, 4, d); err == nil {
		t.Error("claim past 0xffff accepted")
	}
	if err := io.ClaimPorts(0x700, 0, d); err == nil {
		t.Error("empty claim accepted")
	}
	io.ReleasePorts(0x600, 4)
	if e.server().Claims(xen.IORangePort, 0x600, 1) {
		t.Error("released range still registered with Xen")
	}
	if !e.server().Claims(xen.IORangePort, 0x604, 4) {
		t.Error("neighbour unregistered by a release")
	}
	if err := io.ClaimPorts(0x600, 4, d); err != nil {
		t.Fatalf("reclaim after release: %v", err)
	}
	// A claim Xen refuses is not recorded.
	e.p.dm.Fail("map_io_range_to_ioreq_server", fmt.Errorf("ENOSPC"))
	if err := io.ClaimMMIO(0xf0000000, 0x1000, d); err == nil {
		t.Fatal("claim succeeded although Xen refused it")
	}
	e.p.dm.Fail("map_io_range_to_ioreq_server", nil)
	if err := io.ClaimMMIO(0xf0000000, 0x1000, d); err != nil {
		t.Fatalf("claim after Xen recovered: %v", err)
	}
	if err := io.ClaimMMIO(0xf0000800, 0x1000, d); err == nil {
		t.Fatal("overlapping MMIO claim accepted")
	}
	io.ReleaseMMIO(0xf0000000, 0x1000)
	if _, mm := io.claims(); len(mm) != 0 {
		t.Fatalf("MMIO claims left: %v", mm)
	}
}

// The IDE disk end to end through the ioreq loop: IDENTIFY and READ SECTORS
// by PIO with rep insw (data_is_ptr), then the xen-platform unplug.
func TestIDEThroughTheLoop(t *testing.T) {
	img := t.TempDir() + "/disk.img"
	data := make([]byte, 1<<20)
	copy(data[512:], "SECTOR-ONE")
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpt{extra: "-drive file=" + img + ",if=ide,index=0,media=disk,format=raw,cache=writeback"})
	ram := e.p.ram.Bytes()
	insw := func(gpa uint64) {
		r := pio(0x1f0, 2, true, gpa)
		r.SetDataIsPtr(true)
		r.Count = 256
		e.do(0, r)
	}
	e.out(0x1f6, 1, 0xa0) // master
	e.out(0x1f7, 1, 0xec) // IDENTIFY DEVICE
	if st := e.in(0x1f7, 1); st&0x08 == 0 {
		t.Fatalf("no DRQ after IDENTIFY: status %#x", st)
	}
	insw(0x8000)
	model := make([]byte, 40)
	for i := 0; i < 20; i++ { // ATA strings are byte-swapped words
		model[2*i], model[2*i+1] = ram[0x8000+54+2*i+1], ram[0x8000+54+2*i]
	}
	if !strings.HasPrefix(string(model), "QEMU HARDDISK") {
		t.Fatalf("IDENTIFY model %q", model)
	}
	// READ SECTORS, LBA 1, one sector.
	e.out(0x1f2, 1, 1)
	e.out(0x1f3, 1, 1)
	e.out(0x1f4, 1, 0)
	e.out(0x1f5, 1, 0)
	e.out(0x1f6, 1, 0xe0)
	e.out(0x1f7, 1, 0x20)
	waitUntil(t, "DRQ", func() bool { return e.in(0x1f7, 1)&0x88 == 0x08 })
	insw(0x9000)
	if got := string(ram[0x9000 : 0x9000+10]); got != "SECTOR-ONE" {
		t.Fatalf("sector read %q", got)
	}
	if e.p.dm.ISAIRQ(14) == false && len(e.p.dm.CallsOf("set_isa_irq_level")) == 0 {
		t.Fatal("IDE never raised IRQ 14")
	}
	// A PV-aware guest unplugs the emulated disks through the platform
	// device: the disk is gone from IDE afterwards.
	if v := e.in(0x10, 2); v != 0x49d2 {
		t.Fatalf("platform magic %#x", v)
	}
	e.out(0x10, 2, 1)
	if _, present := e.c.Machine().IDE.Present(0); present {
		t.Fatal("disk still present after unplug")
	}
}
