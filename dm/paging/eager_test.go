package paging_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
	"github.com/xen-dm-go/xen-dm-go/dm/paging"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

const (
	testDom  = 7
	pageSize = blk.BlockSize
)

// image is a disk of random blocks.
func image(name string, blocks int, seed uint64) *blk.Mem {
	data := make([]byte, blocks*pageSize)
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	d := blk.NewMemFrom(name, data, true)
	contents.Store(d, data)
	return d
}

// contents holds each image's data (Mem.Bytes copies the whole image).
var contents sync.Map // *blk.Mem → []byte

func block(d *blk.Mem, b uint64) []byte {
	data, _ := contents.Load(d)
	return data.([]byte)[b*pageSize : (b+1)*pageSize]
}

// ref is a correct reference: pfn holds block b of disk.
func ref(disks map[uint8]blk.Backend, pfn uint64, disk uint8, b uint64) blk.Entry {
	return blk.Entry{PFN: pfn, Ref: blk.Ref{Disk: disk, Sector: 8 * b, Hash: blk.HashPage(block(disks[disk].(*blk.Mem), b))}}
}

func page(t testing.TB, mem hw.GuestMemory, pfn uint64) []byte {
	t.Helper()
	p := make([]byte, pageSize)
	if err := mem.ReadGPA(pfn*pageSize, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkFilled fails unless every reference's pfn holds its block.
func checkFilled(t testing.TB, mem hw.GuestMemory, disks map[uint8]blk.Backend, refs []blk.Entry) {
	t.Helper()
	for _, r := range refs {
		if r.IsZeroPage() {
			if !bytes.Equal(page(t, mem, r.PFN), make([]byte, pageSize)) {
				t.Fatalf("pfn %#x (zero reference) is not zero", r.PFN)
			}
			continue
		}
		if !bytes.Equal(page(t, mem, r.PFN), block(disks[r.Disk].(*blk.Mem), r.Sector/8)) {
			t.Fatalf("pfn %#x does not hold disk %d sector %d", r.PFN, r.Disk, r.Sector)
		}
	}
}

func twoDisks() map[uint8]blk.Backend {
	return map[uint8]blk.Backend{0: image("hda", 512, 1), 1: image("hdb", 64, 2)}
}

func TestEagerFill(t *testing.T) {
	disks := twoDisks()
	var refs []blk.Entry
	// pfns 0x10–0x2f on blocks 100–131 (one pfn-and-block run, split into
	// reads of 8 blocks), a pfn whose block another pfn also holds, blocks
	// out of pfn order, the second disk, and the last block of a disk.
	for i := uint64(0); i < 32; i++ {
		refs = append(refs, ref(disks, 0x10+i, 0, 100+i))
	}
	refs = append(refs,
		ref(disks, 0x40, 0, 100), ref(disks, 0x41, 0, 7), ref(disks, 0x42, 0, 6), ref(disks, 0x43, 1, 3),
		ref(disks, 0x44, 1, 4), ref(disks, 0x45, 1, 63), ref(disks, 0x50, 0, 511))
	mem := hwtest.NewMemory(1 << 20)
	e := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mem, Disks: disks, MaxRead: 8 * pageSize, Readers: 3})
	st, err := e.Fill(context.Background(), refs)
	if err != nil {
		t.Fatal(err)
	}
	checkFilled(t, mem, disks, refs)
	// Reads: blocks 100–131 in 4, 6–7, 511; disk 1: 3–4, 63.
	if st.Pages != len(refs) || st.Reads != 8 || st.BytesRead != (32+2+1+2+1)*pageSize || st.Duration <= 0 {
		t.Fatalf("stats %+v", st)
	}
	if r0, r1 := disks[0].(*blk.Mem).Stats().Reads, disks[1].(*blk.Mem).Stats().Reads; r0+r1 != int64(st.Reads) {
		t.Fatalf("%d+%d reads, stats say %d", r0, r1, st.Reads)
	}
	// Nothing else was written.
	if !bytes.Equal(page(t, mem, 0x30), make([]byte, pageSize)) {
		t.Fatal("pfn 0x30 written")
	}
	// Nothing to do: no reads.
	if st, err := e.Fill(context.Background(), nil); err != nil || st.Pages != 0 || st.Reads != 0 {
		t.Fatalf("empty fill: %+v %v", st, err)
	}
}

// The real map cache over fake Xen RAM: pages land in the domain's frames;
// a frame Xen has not populated is refused.
func TestEagerFillMapCache(t *testing.T) {
	ram, err := xentest.NewGuestRAM(testDom, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	mc := xen.NewMapCache(ram, testDom, xen.MapCacheOptions{PagedOutRetries: -1})
	defer mc.Close()
	disks := twoDisks()
	var refs []blk.Entry
	for i := uint64(0); i < 300; i++ { // crosses a 1 MiB map-cache bucket
		refs = append(refs, ref(disks, 0xf0+i, 0, 200+i))
	}
	if _, err := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mc, Disks: disks}).Fill(context.Background(), refs); err != nil {
		t.Fatal(err)
	}
	for _, r := range refs {
		if !bytes.Equal(ram.Bytes()[r.PFN*pageSize:(r.PFN+1)*pageSize], block(disks[0].(*blk.Mem), r.Sector/8)) {
			t.Fatalf("frame %#x", r.PFN)
		}
	}
	ram.AddHole(0x300, 1)
	_, err = paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mc, Disks: disks}).Fill(context.Background(),
		[]blk.Entry{ref(disks, 0x2ff, 0, 1), ref(disks, 0x300, 0, 2), ref(disks, 0x301, 0, 3)})
	if !errors.Is(err, paging.ErrBadPFN) || !errors.Is(err, hw.ErrBadGPA) || !strings.Contains(err.Error(), "pfn 0x300 ") {
		t.Fatalf("unpopulated frame: %v", err)
	}
}

// wantRefused checks that err names the reference and wraps class.
func wantRefused(t *testing.T, err error, class error, r blk.Entry) {
	t.Helper()
	want := fmt.Sprintf("domid %d pfn %#x disk %d sector %d:", testDom, r.PFN, r.Disk, r.Sector)
	if !errors.Is(err, class) || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v, want %v naming %q", err, class, want)
	}
}

func fill(disks map[uint8]blk.Backend, mem hw.GuestMemory, refs []blk.Entry) error {
	_, err := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mem, Disks: disks, MaxRead: 4 * pageSize}).Fill(context.Background(), refs)
	return err
}

func TestEagerHashMismatch(t *testing.T) {
	disks := twoDisks()
	refs := []blk.Entry{ref(disks, 1, 0, 1), ref(disks, 2, 0, 2), ref(disks, 3, 0, 3)}
	refs[1].Hash ^= 1
	err := fill(disks, hwtest.NewMemory(1<<20), refs)
	wantRefused(t, err, paging.ErrHashMismatch, refs[1])
	// The disk changed under a reference (another writer, a stale image).
	d := disks[1].(*blk.Mem)
	r := ref(disks, 9, 1, 5)
	changed := d.Bytes() // a copy
	changed[5*pageSize] ^= 0xff
	disks[1] = blk.NewMemFrom("hdb", changed, true)
	contents.Store(disks[1], changed)
	wantRefused(t, fill(disks, hwtest.NewMemory(1<<20), []blk.Entry{r}), paging.ErrHashMismatch, r)
}

func TestEagerPFNOutsideMemory(t *testing.T) {
	disks := twoDisks()
	mem := hwtest.NewMemory(256*pageSize, hwtest.Range{Base: 0x80 * pageSize, N: pageSize})
	for _, c := range []struct {
		refs []blk.Entry
		bad  int
	}{
		{[]blk.Entry{ref(disks, 0x1000, 0, 1)}, 0},
		// A run of pfns on a run of blocks crossing the end of RAM: the
		// first pfn beyond it is named.
		{[]blk.Entry{ref(disks, 0xfe, 0, 10), ref(disks, 0xff, 0, 11), ref(disks, 0x100, 0, 12), ref(disks, 0x101, 0, 13)}, 2},
		{[]blk.Entry{ref(disks, 0x7f, 0, 20), ref(disks, 0x80, 0, 21)}, 1}, // a hole
	} {
		err := fill(disks, mem, c.refs)
		wantRefused(t, err, paging.ErrBadPFN, c.refs[c.bad])
		if !errors.Is(err, hw.ErrBadGPA) {
			t.Fatalf("cause lost: %v", err)
		}
	}
	// Beyond libxc's 52-bit pfns: refused before any I/O.
	r := ref(disks, blk.MaxPFN+1, 0, 1)
	wantRefused(t, fill(disks, mem, []blk.Entry{r}), paging.ErrBadRef, r)
}

func TestEagerUnknownDisk(t *testing.T) {
	disks := twoDisks()
	disks[2] = nil // an empty CD-ROM tray
	mem := hwtest.NewMemory(1 << 20)
	good := ref(disks, 1, 0, 1)
	for _, d := range []uint8{2, 3, 200} {
		bad := blk.Entry{PFN: 2, Ref: blk.Ref{Disk: d, Sector: 8}}
		wantRefused(t, fill(disks, mem, []blk.Entry{good, bad}), paging.ErrUnknownDisk, bad)
	}
	// Checked before any I/O: nothing was read or written.
	if n := disks[0].(*blk.Mem).Stats().Reads; n != 0 {
		t.Fatalf("%d reads before refusing", n)
	}
	if !bytes.Equal(page(t, mem, 1), make([]byte, pageSize)) {
		t.Fatal("pfn 1 written before refusing")
	}
}

func TestEagerBadRefs(t *testing.T) {
	disks := twoDisks()
	mem := hwtest.NewMemory(1 << 20)
	a, b := ref(disks, 5, 0, 1), ref(disks, 3, 0, 2)
	misaligned := blk.Entry{PFN: 1, Ref: blk.Ref{Disk: 0, Sector: 12}}
	beyond := blk.Entry{PFN: 1, Ref: blk.Ref{Disk: 1, Sector: 64 * 8}}
	huge := blk.Entry{PFN: 1, Ref: blk.Ref{Disk: 1, Sector: 1 << 62}}
	dup := ref(disks, 5, 0, 3)
	for _, c := range []struct {
		refs []blk.Entry
		bad  blk.Entry
	}{
		{[]blk.Entry{misaligned}, misaligned},
		{[]blk.Entry{beyond}, beyond},
		{[]blk.Entry{huge}, huge},
		{[]blk.Entry{a, b, dup}, dup}, // unsorted input with pfn 5 twice
	} {
		wantRefused(t, fill(disks, mem, c.refs), paging.ErrBadRef, c.bad)
	}
	if n := disks[0].(*blk.Mem).Stats().Reads + disks[1].(*blk.Mem).Stats().Reads; n != 0 {
		t.Fatalf("%d reads before refusing", n)
	}
	// Unsorted without duplicates is fine.
	if err := fill(disks, mem, []blk.Entry{a, b}); err != nil {
		t.Fatal(err)
	}
	checkFilled(t, mem, disks, []blk.Entry{a, b})
}

// shortDisk returns fewer bytes than asked for past a limit, as a file
// truncated under us would.
type shortDisk struct {
	*blk.Mem
	limit int64
	err   error // returned with the short count
}

func (d shortDisk) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= d.limit {
		return d.Mem.ReadAt(p, off)
	}
	n := max(int(d.limit-off), 0)
	d.Mem.ReadAt(p[:n], off)
	return n, d.err
}

func TestEagerReadErrors(t *testing.T) {
	disks := twoDisks()
	mem := hwtest.NewMemory(1 << 20)
	refs := []blk.Entry{ref(disks, 1, 0, 40), ref(disks, 2, 0, 41), ref(disks, 3, 0, 42)}
	// An I/O error.
	d := disks[0].(*blk.Mem)
	d.Inject(blk.Fault{Op: blk.OpRead, Off: 41 * pageSize, Len: 1})
	err := fill(disks, mem, refs)
	wantRefused(t, err, paging.ErrRead, refs[0])
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("cause lost: %v", err)
	}
	d.ClearFaults()
	// Short reads, with io.EOF or without an error: the first incomplete
	// block is named.
	for _, e := range []error{io.EOF, nil} {
		disks[0] = shortDisk{Mem: d, limit: 41*pageSize + 100, err: e}
		wantRefused(t, fill(disks, mem, refs), paging.ErrShortRead, refs[1])
	}
	// A read that returns everything with io.EOF (allowed at the end of an
	// io.ReaderAt) is fine.
	disks[0] = d
	last := ref(disks, 9, 0, 511)
	disks[0] = eofDisk{d}
	if err := fill(disks, mem, []blk.Entry{last}); err != nil {
		t.Fatal(err)
	}
	checkFilled(t, mem, map[uint8]blk.Backend{0: d}, []blk.Entry{last})
}

// eofDisk returns io.EOF with every complete read.
type eofDisk struct{ *blk.Mem }

func (d eofDisk) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Mem.ReadAt(p, off)
	if err == nil {
		err = io.EOF
	}
	return n, err
}

func TestEagerCancelled(t *testing.T) {
	disks := twoDisks()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: hwtest.NewMemory(1 << 20), Disks: disks}).
		Fill(ctx, []blk.Entry{ref(disks, 1, 0, 1)})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "domid 7") {
		t.Fatalf("cancelled: %v", err)
	}
}

// Prepare fills and logs the pages, bytes read and time.
func TestEagerPrepareLogs(t *testing.T) {
	disks := twoDisks()
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	mem := hwtest.NewMemory(1 << 20)
	refs := []blk.Entry{ref(disks, 1, 0, 1), ref(disks, 2, 0, 2)}
	var p paging.Pager = paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mem, Disks: disks, Log: log})
	if err := p.Prepare(context.Background(), refs); err != nil {
		t.Fatal(err)
	}
	checkFilled(t, mem, disks, refs)
	for _, w := range []string{"domid=7", "pages=2", "from-disk=2", "zeroed=0", "reads=1", "bytes-read=8192", "seconds=", "MBps="} {
		if !strings.Contains(buf.String(), w) {
			t.Fatalf("log lacks %q:\n%s", w, buf.String())
		}
	}
	if err := p.Prepare(context.Background(), []blk.Entry{{PFN: 1, Ref: blk.Ref{Disk: 3}}}); !errors.Is(err, paging.ErrUnknownDisk) {
		t.Fatal(err)
	}
}

// randomRefs makes references from r: half the time all right (pfns in
// the 256 pages of fillChecked's memory), otherwise with mistakes of every
// kind a stream could carry.
func randomRefs(r *rand.Rand, disks map[uint8]blk.Backend) []blk.Entry {
	clean := r.IntN(2) == 0
	n := r.IntN(64)
	refs := make([]blk.Entry, 0, n)
	pfn := uint64(r.IntN(64))
	for range n {
		disk := uint8(r.IntN(2))
		size := uint64(disks[disk].Size() / pageSize)
		b := uint64(r.IntN(int(size)))
		if r.IntN(4) == 0 && len(refs) > 0 && refs[len(refs)-1].Disk == disk {
			b = min(refs[len(refs)-1].Sector/8+1, size-1) // runs of blocks
		}
		e := ref(disks, pfn, disk, b)
		if r.IntN(6) == 0 {
			e.Ref = blk.ZeroRef()
		}
		if !clean {
			switch r.IntN(12) {
			case 0:
				e.Sector += uint64(r.IntN(8))
			case 1:
				e.PFN = r.Uint64()
			case 2:
				e.Sector = r.Uint64()
			case 3:
				e.Sector = 8 * (size + uint64(r.IntN(4)))
			case 4:
				e.Hash ^= 1 << r.IntN(64)
			case 5:
				e.Disk = uint8(r.Uint32())
			case 6:
				e.PFN += 1000
			}
		}
		refs = append(refs, e)
		pfn += 1 + uint64(r.IntN(2))
		if !clean && r.IntN(20) == 0 {
			pfn = uint64(r.IntN(int(pfn))) // a pfn again, or out of order
		}
	}
	return refs
}

// fillChecked fills refs and, when that succeeds, checks every page.
func fillChecked(t testing.TB, disks map[uint8]blk.Backend, refs []blk.Entry, maxRead, readers int) bool {
	mem := hwtest.NewMemory(256 * pageSize)
	_, err := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mem, Disks: disks, MaxRead: maxRead, Readers: readers}).
		Fill(context.Background(), refs)
	if err != nil {
		if !strings.Contains(err.Error(), "domid 7 pfn") {
			t.Fatalf("error does not name the reference: %v", err)
		}
		return false
	}
	checkFilled(t, mem, disks, refs)
	return true
}

// Random references never panic; what is accepted is filled right.
func TestEagerRandomRefs(t *testing.T) {
	disks := twoDisks()
	r := rand.New(rand.NewPCG(3, 4))
	ok := 0
	for range 400 {
		if fillChecked(t, disks, randomRefs(r, disks), (1+r.IntN(20))*pageSize, 1+r.IntN(4)) {
			ok++
		}
	}
	if ok < 150 || ok > 300 {
		t.Fatalf("%d of 400 random fills succeeded: the generator is off", ok)
	}
}

func FuzzEagerFill(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint8(4), uint8(2))
	f.Add(uint64(99), uint64(0), uint8(1), uint8(1))
	disks := twoDisks()
	f.Fuzz(func(t *testing.T, s1, s2 uint64, maxRead, readers uint8) {
		r := rand.New(rand.NewPCG(s1, s2))
		fillChecked(t, disks, randomRefs(r, disks), int(maxRead)*pageSize, int(readers%8))
	})
}

// BenchmarkEagerFill fills 64 MiB of guest pages: contiguous runs with a
// break every 64 pages, as page-cache pages read by readahead lie. The MB/s
// is guest pages filled per second. mem/hwtest: in-memory disk and memory
// (the filler's own cost: reads, XXH3, copies); raw/mapcache: a raw image in
// the host page cache (blk.Raw, cache=writeback) into fake Xen RAM through
// the real map cache, the device model's path without the hypercalls.
func BenchmarkEagerFill(b *testing.B) {
	const pages = 16384
	img := image("hda", pages+pages/64+1, 5)
	refs := make([]blk.Entry, 0, pages)
	disks := map[uint8]blk.Backend{0: img}
	blockNo := uint64(0)
	for pfn := uint64(0); pfn < pages; pfn++ {
		if pfn%64 == 0 {
			blockNo++
		}
		refs = append(refs, ref(disks, pfn, 0, blockNo))
		blockNo++
	}
	run := func(b *testing.B, mem hw.GuestMemory, disk blk.Backend) {
		e := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mem, Disks: map[uint8]blk.Backend{0: disk}})
		b.SetBytes(pages * pageSize)
		for b.Loop() {
			if _, err := e.Fill(context.Background(), refs); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("mem/hwtest", func(b *testing.B) { run(b, hwtest.NewMemory(pages*pageSize), img) })
	b.Run("raw/mapcache", func(b *testing.B) {
		path := filepath.Join(b.TempDir(), "hda.img")
		if err := os.WriteFile(path, img.Bytes(), 0o600); err != nil {
			b.Fatal(err)
		}
		raw, err := blk.OpenRaw(path, blk.RawOptions{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
		defer raw.Close()
		ram, err := xentest.NewGuestRAM(testDom, pages*pageSize)
		if err != nil {
			b.Fatal(err)
		}
		defer ram.Close()
		mc := xen.NewMapCache(ram, testDom, xen.MapCacheOptions{PagedOutRetries: -1})
		defer mc.Close()
		run(b, mc, raw)
	})
}

// writeCounter counts the writes into guest memory (the readers write
// concurrently).
type writeCounter struct {
	hw.GuestMemory
	mu            sync.Mutex
	writes, bytes int
}

func (w *writeCounter) WriteGPA(gpa uint64, p []byte) error {
	w.mu.Lock()
	w.writes++
	w.bytes += len(p)
	w.mu.Unlock()
	return w.GuestMemory.WriteGPA(gpa, p)
}

// Zero references: written with zeros over whatever the page held (XALLOC
// pages are not necessarily scrubbed), consecutive pfns in one write, no
// disk read; mixed with disk references.
func TestEagerFillZero(t *testing.T) {
	disks := twoDisks()
	garbage := bytes.Repeat([]byte{0xa5}, 256*pageSize)
	hm := hwtest.NewMemory(256 * pageSize)
	if err := hm.WriteGPA(0, garbage); err != nil {
		t.Fatal(err)
	}
	mem := &writeCounter{GuestMemory: hm}
	z := func(pfn uint64) blk.Entry { return blk.Entry{PFN: pfn, Ref: blk.ZeroRef()} }
	var refs []blk.Entry
	for pfn := uint64(0x10); pfn < 0x30; pfn++ { // 32 zero pages: 4 writes of 8
		refs = append(refs, z(pfn))
	}
	refs = append(refs, ref(disks, 0x30, 0, 5), z(0x31), ref(disks, 0x32, 0, 6), z(0x40), z(0x41), z(0xff))
	e := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: mem, Disks: disks, MaxRead: 8 * pageSize})
	st, err := e.Fill(context.Background(), refs)
	if err != nil {
		t.Fatal(err)
	}
	checkFilled(t, hm, disks, refs)
	if st.Pages != 38 || st.ZeroPages != 36 || st.DiskPages != 2 || st.Reads != 1 || st.BytesRead != 2*pageSize {
		t.Fatalf("stats %+v", st)
	}
	// Zero runs 0x10–0x2f (4 writes), 0x31, 0x40–0x41, 0xff; the disk run
	// 0x30 and 0x32 (two writes: not consecutive pfns).
	if mem.writes != 4+1+1+1+2 || mem.bytes != 38*pageSize {
		t.Fatalf("%d writes of %d bytes", mem.writes, mem.bytes)
	}
	// Nothing else was written.
	for _, pfn := range []uint64{0x0f, 0x33, 0x42, 0xfe} {
		if !bytes.Equal(page(t, hm, pfn), garbage[:pageSize]) {
			t.Fatalf("pfn %#x written", pfn)
		}
	}
	// Zero references only: no disks needed.
	hm2 := hwtest.NewMemory(16 * pageSize)
	hm2.WriteGPA(0, garbage[:16*pageSize])
	if st, err := paging.NewEager(paging.EagerConfig{DomID: testDom, Mem: hm2}).Fill(context.Background(),
		[]blk.Entry{z(3), z(4), z(9)}); err != nil || st.ZeroPages != 3 || st.Reads != 0 {
		t.Fatalf("zero references only: %+v %v", st, err)
	}
	checkFilled(t, hm2, nil, []blk.Entry{z(3), z(4), z(9)})
}

func TestEagerZeroRefused(t *testing.T) {
	disks := twoDisks()
	mem := hwtest.NewMemory(256*pageSize, hwtest.Range{Base: 0x80 * pageSize, N: pageSize})
	named := func(err error, class error, pfn uint64) {
		t.Helper()
		want := fmt.Sprintf("domid %d pfn %#x zero page", testDom, pfn)
		if !errors.Is(err, class) || !strings.Contains(err.Error(), want) {
			t.Fatalf("got %v, want %v naming %q", err, class, want)
		}
	}
	sector := blk.Entry{PFN: 5, Ref: blk.Ref{Disk: blk.ZeroDisk, Sector: 8, Hash: blk.ZeroPageHash}}
	hash := blk.Entry{PFN: 6, Ref: blk.Ref{Disk: blk.ZeroDisk, Hash: 1}}
	huge := blk.Entry{PFN: blk.MaxPFN + 1, Ref: blk.ZeroRef()}
	for _, bad := range []blk.Entry{sector, hash, huge} {
		named(fill(disks, mem, []blk.Entry{ref(disks, 1, 0, 1), bad}), paging.ErrBadRef, bad.PFN)
	}
	// The same pfn as a disk and a zero reference.
	err := fill(disks, mem, []blk.Entry{{PFN: 7, Ref: blk.ZeroRef()}, ref(disks, 7, 0, 1)})
	if !errors.Is(err, paging.ErrBadRef) || !strings.Contains(err.Error(), "pfn 0x7 ") {
		t.Fatalf("pfn twice: %v", err)
	}
	if n := disks[0].(*blk.Mem).Stats().Reads; n != 0 {
		t.Fatalf("%d reads before refusing", n)
	}
	// A run of zero pfns over a hole: the pfn in the hole is named.
	named(fill(disks, mem, []blk.Entry{{PFN: 0x7f, Ref: blk.ZeroRef()}, {PFN: 0x80, Ref: blk.ZeroRef()}}), paging.ErrBadPFN, 0x80)
	// Unknown disks are still refused beside zero references.
	bad := blk.Entry{PFN: 9, Ref: blk.Ref{Disk: 3, Sector: 8}}
	wantRefused(t, fill(disks, mem, []blk.Entry{{PFN: 8, Ref: blk.ZeroRef()}, bad}), paging.ErrUnknownDisk, bad)
}
