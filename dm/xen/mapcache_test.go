package xen_test

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

const MiB = 1 << 20

func newRAM(t *testing.T, size uint64) *xentest.GuestRAM {
	t.Helper()
	ram, err := xentest.NewGuestRAM(5, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ram.Close() })
	return ram
}

type dirtyLog struct {
	mu sync.Mutex
	rs []xen.PFNRange
}

func (d *dirtyLog) MarkDirty(pfn, n uint64) {
	d.mu.Lock()
	d.rs = append(d.rs, xen.PFNRange{First: pfn, Count: n})
	d.mu.Unlock()
}

func TestMapCacheCrossBucket(t *testing.T) {
	ram := newRAM(t, 8*MiB)
	dirty := &dirtyLog{}
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{Dirty: dirty})
	defer c.Close()
	var _ hw.GuestMemory = c

	// A write straddling the 1 MiB boundary and several pages.
	gpa := uint64(MiB - 5000)
	data := make([]byte, 3*xen.PageSize+123)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := c.WriteGPA(gpa, data); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ram.Bytes()[gpa:gpa+uint64(len(data))], data) {
		t.Fatal("write through the map cache did not reach guest RAM")
	}
	if c.Buckets() != 2 {
		t.Fatalf("%d buckets mapped, want 2", c.Buckets())
	}
	got := make([]byte, len(data))
	if err := c.ReadGPA(gpa, got); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	// Guest-side changes are visible (shared mapping, no copy).
	ram.Bytes()[2*MiB+1] = 0xee
	one := make([]byte, 1)
	if err := c.ReadGPA(2*MiB+1, one); err != nil || one[0] != 0xee {
		t.Fatalf("read of guest change: %v %x", err, one)
	}
	first, last := gpa>>12, (gpa+uint64(len(data))-1)>>12
	if len(dirty.rs) != 1 || dirty.rs[0] != (xen.PFNRange{First: first, Count: last - first + 1}) {
		t.Fatalf("dirty report %v", dirty.rs)
	}
	if err := c.ReadGPA(0, nil); err != nil {
		t.Fatal(err)
	}
}

func TestMapCacheHoles(t *testing.T) {
	ram := newRAM(t, 4*MiB)
	ram.AddHole(0x150, 2)
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{})
	defer c.Close()

	// A page next to the hole works: the hole's PROT_NONE pages are never touched.
	buf := make([]byte, xen.PageSize)
	if err := c.ReadGPA(0x14f000, buf); err != nil {
		t.Fatal(err)
	}
	// A write that runs into the hole fails as a whole, names the pfn, and
	// writes nothing.
	ram.Bytes()[0x14f000] = 0x33
	err := c.WriteGPA(0x14f800, make([]byte, 0x1000))
	var pe *xen.PageError
	if !errors.Is(err, hw.ErrBadGPA) || !errors.As(err, &pe) || pe.PFN != 0x150 || pe.Dom != 5 || !errors.Is(err, unix.EFAULT) {
		t.Fatalf("write into a hole: %v", err)
	}
	if !strings.Contains(err.Error(), "pfn 0x150") || !strings.Contains(err.Error(), "dom 5") {
		t.Fatalf("error does not name the pfn and domain: %v", err)
	}
	if ram.Bytes()[0x14f800] != 0 || ram.Bytes()[0x14f000] != 0x33 {
		t.Fatal("partial write before the hole")
	}
	// Past the end of RAM.
	if err := c.ReadGPA(4*MiB-1, make([]byte, 2)); !errors.As(err, &pe) || pe.PFN != 0x400 {
		t.Fatalf("read past RAM: %v", err)
	}
	// Wrapping address.
	if err := c.ReadGPA(^uint64(0), make([]byte, 2)); !errors.Is(err, hw.ErrBadGPA) {
		t.Fatalf("wrapping read: %v", err)
	}
	// Once the hole is populated, the same bucket maps the page (one retry).
	ram.RemoveHole(0x150, 2)
	if err := c.WriteGPA(0x150000, []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if ram.Bytes()[0x150002] != 3 {
		t.Fatal("write after populate lost")
	}
}

func TestMapCachePagedOut(t *testing.T) {
	ram := newRAM(t, 2*MiB)
	ram.PageOut(0x10, 2) // paged in after two failed attempts
	ram.PageOut(0x20, -1)
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{PagedOutRetries: 3})
	defer c.Close()
	if err := c.ReadGPA(0x10000, make([]byte, 8)); err != nil {
		t.Fatalf("paged-out frame not retried: %v", err)
	}
	err := c.ReadGPA(0x20000, make([]byte, 8))
	if !errors.Is(err, xen.ErrPagedOut) || !errors.Is(err, hw.ErrBadGPA) || !strings.Contains(err.Error(), "pfn 0x20") {
		t.Fatalf("frame paged out for ever: %v", err)
	}
	// No retries: fails at once.
	ram.PageOut(0x30, 1)
	c2 := xen.NewMapCache(ram, 5, xen.MapCacheOptions{PagedOutRetries: -1})
	defer c2.Close()
	if err := c2.ReadGPA(0x30000, make([]byte, 8)); !errors.Is(err, xen.ErrPagedOut) {
		t.Fatalf("no-retry cache: %v", err)
	}
}

func TestMapCacheInvalidateKeepsPinned(t *testing.T) {
	ram := newRAM(t, 8*MiB)
	dirty := &dirtyLog{}
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{Dirty: dirty})
	for _, gpa := range []uint64{0, 2 * MiB, 5 * MiB} {
		if err := c.ReadGPA(gpa, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	pin, err := c.Pin(3*MiB-100, 200) // buckets 2 and 3
	if err != nil {
		t.Fatal(err)
	}
	segs := pin.Segments()
	if len(segs) != 2 || len(segs[0]) != 100 || len(segs[1]) != 100 {
		t.Fatalf("segments %d", len(segs))
	}
	if ram.Mappings() != 4 {
		t.Fatalf("%d mappings before invalidate", ram.Mappings())
	}
	if kept := c.Invalidate(); kept != 2 {
		t.Fatalf("invalidate kept %d buckets, want the 2 pinned", kept)
	}
	if ram.Mappings() != 2 || c.Buckets() != 2 {
		t.Fatalf("after invalidate: %d mappings, %d buckets", ram.Mappings(), c.Buckets())
	}
	// The pinned mapping still works after invalidate.
	copy(segs[0], "dma!")
	if string(ram.Bytes()[3*MiB-100:3*MiB-96]) != "dma!" {
		t.Fatal("pinned segment no longer maps guest RAM")
	}
	pin.Release(4)
	pin.Release(4) // idempotent
	if len(dirty.rs) != 1 || dirty.rs[0] != (xen.PFNRange{First: (3*MiB - 100) >> 12, Count: 1}) {
		t.Fatalf("dirty %v", dirty.rs)
	}
	if kept := c.Invalidate(); kept != 0 || ram.Mappings() != 0 {
		t.Fatalf("after release: kept %d, %d mappings", kept, ram.Mappings())
	}
	// Close with an outstanding pin: refused accesses, mapping freed on release.
	pin2, err := c.Pin(0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err == nil {
		t.Fatal("Close with a pin outstanding reported no error")
	}
	if err := c.ReadGPA(0, make([]byte, 1)); !errors.Is(err, xen.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	pin2.Release(0)
	if ram.Mappings() != 0 {
		t.Fatalf("%d mappings leaked", ram.Mappings())
	}
}

func TestMapCacheEvictsLRU(t *testing.T) {
	ram := newRAM(t, 8*MiB)
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{MaxBuckets: 2})
	defer c.Close()
	for i := uint64(0); i < 8; i++ {
		if err := c.WriteGPA(i*MiB, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if c.Buckets() > 2 || ram.Mappings() > 2 {
		t.Fatalf("%d buckets, %d mappings with MaxBuckets 2", c.Buckets(), ram.Mappings())
	}
	for i := uint64(0); i < 8; i++ {
		if ram.Bytes()[i*MiB] != byte(i) {
			t.Fatalf("byte at %d MiB lost", i)
		}
	}
}

func TestMapCacheConcurrent(t *testing.T) {
	ram := newRAM(t, 16*MiB)
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{MaxBuckets: 4})
	defer c.Close()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			buf := make([]byte, 3000)
			for i := 0; i < 300; i++ {
				gpa := uint64((g*4+i%4)*MiB) + uint64(i*4096%MiB)
				for j := range buf {
					buf[j] = byte(g + i)
				}
				if err := c.WriteGPA(gpa, buf); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, len(buf))
				if err := c.ReadGPA(gpa, got); err != nil || !bytes.Equal(got, buf) {
					t.Errorf("goroutine %d: %v", g, err)
					return
				}
				if i%50 == 0 {
					c.Invalidate()
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestMapCacheHugeAccessRefused(t *testing.T) {
	ram := newRAM(t, 2*MiB)
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{MaxBuckets: 4})
	defer c.Close()
	if _, err := c.Pin(0, 5*MiB); !errors.Is(err, unix.E2BIG) || !errors.Is(err, hw.ErrBadGPA) {
		t.Fatalf("pin of 5 MiB with 4 buckets: %v", err)
	}
	if ram.Mappings() != 0 {
		t.Fatal("refused access mapped something")
	}
}
