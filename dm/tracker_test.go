package dm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

// The tracker service checks every entry it answers against guest memory
// (through the core's map cache): a page the guest's CPU rewrote after its
// DMA is answered not tracked, dropped and, with the dirty log on, reported
// with modified_memory; the raw lookup still shows it until then.
func TestTrackerServiceValidatesAgainstGuestMemory(t *testing.T) {
	img, data := diskImage(t)
	dir, err := os.MkdirTemp("", "trk") // short: a unix socket path
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := newEnv(t, envOpt{extra: stateArgv(img), opts: func(o *Options) {
		withDevState(o)
		o.TrackerDir = dir
	}})
	e.cfgWrite(0x09, 0x20, 4, bmBase|1)
	e.cfgWrite(0x09, 0x04, 2, 0x0005)
	ram := e.p.ram.Bytes()
	// One PRD: 8 KiB from the start of the disk into pfns 0x40–0x41.
	binary.LittleEndian.PutUint32(ram[0x20000:], 0x40000)
	binary.LittleEndian.PutUint32(ram[0x20004:], 8192|1<<31)
	e.out(0x1f6, 1, 0xe0)
	e.out(0x1f2, 1, 16)
	e.out(0x1f3, 1, 0)
	e.out(0x1f4, 1, 0)
	e.out(0x1f5, 1, 0)
	e.out(0x1f7, 1, 0xc8) // READ DMA
	e.out(bmBase+4, 4, 0x20000)
	e.out(bmBase, 1, 0x09)
	waitUntil(t, "DMA done", func() bool { return e.in(bmBase+2, 1)&1 == 0 })
	e.out(bmBase, 1, 0x00)
	e.in(0x1f7, 1)
	if !bytes.Equal(ram[0x40000:0x42000], data[:8192]) {
		t.Fatal("DMA data differs from the image")
	}
	q := dialQMP(t, e.qmp)
	q.caps()
	q.ok(`{"execute":"xen-set-global-dirty-log","id":1,"arguments":{"enable":true}}`)
	time.Sleep(3 * dirtyFlushDelay)
	before := len(e.p.dm.Modified())

	ram[0x41000+7] ^= 0xff // the guest's CPU: Xen logs it, the device model never sees it
	tc, err := blk.DialTracker(blk.TrackerSocketPath(dir, testDom))
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	pfns := []uint64{0x40, 0x41}
	out, ok := make([]blk.Ref, 2), make([]bool, 2)
	if n, err := tc.LookupRaw(pfns, out, ok); err != nil || n != 2 {
		t.Fatalf("raw lookup: %d hits, %v", n, err)
	}
	if n, err := tc.Lookup(pfns, out, ok); err != nil || n != 1 || !ok[0] || ok[1] {
		t.Fatalf("validated lookup: %d hits %v, %v", n, ok, err)
	}
	if out[0].Sector != 0 || out[0].Hash != blk.HashPage(data[:4096]) {
		t.Fatalf("entry of pfn 0x40: %+v", out[0])
	}
	waitUntil(t, "stale page reported", func() bool { return covered(e.p.dm.Modified()[before:], 0x41) })
	if covered(e.p.dm.Modified()[before:], 0x40) {
		t.Fatalf("valid page reported: %v", e.p.dm.Modified()[before:])
	}
	if n, err := tc.LookupRaw(pfns, out, ok); err != nil || n != 1 || ok[1] {
		t.Fatalf("stale entry kept: %d hits %v, %v", n, ok, err)
	}
	st, err := tc.Stats()
	if err != nil || st.StaleDrops != 1 || st.HashErrors != 0 {
		t.Fatalf("stats %+v, %v", st, err)
	}
	q.ok(`{"execute":"xen-set-global-dirty-log","id":2,"arguments":{"enable":false}}`)
}

// The validator reads through the map cache: a page that does not map is an
// error naming the domain and pfn, wrapping hw.ErrBadGPA.
func TestGuestPageHash(t *testing.T) {
	ram, err := xentest.NewGuestRAM(testDom, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	copy(ram.Bytes()[0x3000:], "page three")
	ram.AddHole(5, 1)
	mc := xen.NewMapCache(ram, testDom, xen.MapCacheOptions{PagedOutRetries: -1})
	defer mc.Close()
	h := guestPageHash(mc, uint32(testDom))
	if got, err := h(3); err != nil || got != blk.HashPage(ram.Bytes()[0x3000:0x4000]) {
		t.Fatalf("pfn 3: %#x, %v", got, err)
	}
	for _, pfn := range []uint64{5, 1 << 60} {
		if _, err := h(pfn); !errors.Is(err, hw.ErrBadGPA) {
			t.Fatalf("pfn %#x: %v, want ErrBadGPA", pfn, err)
		}
	}
}

// BenchmarkGuestPageHash is the device model's validator per tracked pfn a
// lookup answers: a 4 KiB read through the map cache and its XXH3-64.
func BenchmarkGuestPageHash(b *testing.B) {
	ram, err := xentest.NewGuestRAM(testDom, 64<<20)
	if err != nil {
		b.Fatal(err)
	}
	defer ram.Close()
	for i := range ram.Bytes() {
		ram.Bytes()[i] = byte(i * 7)
	}
	mc := xen.NewMapCache(ram, testDom, xen.MapCacheOptions{PagedOutRetries: -1})
	defer mc.Close()
	h := guestPageHash(mc, uint32(testDom))
	b.SetBytes(hw.PageSize)
	for i := 0; i < b.N; i++ {
		if _, err := h(uint64(i) % (64 << 20 >> hw.PageShift)); err != nil {
			b.Fatal(err)
		}
	}
}
