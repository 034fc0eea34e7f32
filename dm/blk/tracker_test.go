package blk

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// model is the plain reference the property test compares the tracker with.
type model struct {
	m     map[uint64]Ref
	dirty map[uint64]bool // pfns whose entry was removed or replaced
}

func (m *model) remove(pfn uint64) {
	if _, ok := m.m[pfn]; ok {
		delete(m.m, pfn)
		m.dirty[pfn] = true
	}
}

func (m *model) record(disk uint8, off int64, segs []Segment, data []byte) {
	pos := uint64(0)
	for _, s := range segs {
		for gpa := s.GPA &^ 4095; gpa < s.GPA+uint64(s.Len); gpa += 4096 {
			pfn := gpa >> 12
			full := gpa >= s.GPA && gpa+4096 <= s.GPA+uint64(s.Len)
			dpos := pos + gpa - s.GPA
			doff := uint64(off) + dpos
			if !full || doff%4096 != 0 {
				m.remove(pfn)
				continue
			}
			r := Ref{Disk: disk, Sector: doff / 512, Hash: HashPage(data[dpos : dpos+4096])}
			if old, ok := m.m[pfn]; ok && (old.Disk != r.Disk || old.Sector != r.Sector || old.Hash != r.Hash) {
				m.dirty[pfn] = true
			}
			m.m[pfn] = r
		}
		pos += uint64(s.Len)
	}
}

func (m *model) write(disk uint8, off, n int64) {
	start, end := blockRange(off, n)
	for pfn, r := range m.m {
		b := r.Sector / 8
		if r.Disk == disk && b >= start && b < end {
			m.remove(pfn)
		}
	}
}

type dirtySet map[uint64]bool

func (d dirtySet) MarkDirty(pfn, n uint64) {
	for p := pfn; p < pfn+n; p++ {
		d[p] = true
	}
}

// randTransfer makes a transfer of 1–16 pages worth of bytes spread over
// 1–4 segments, mostly page-aligned (the common case), sometimes not.
func randTransfer(r *rand.Rand, maxPFN uint64) (int64, []Segment, []byte) {
	npages := 1 + r.IntN(16)
	total := npages * 4096
	if r.IntN(8) == 0 {
		total -= 512 * (1 + r.IntN(7)) // partial last page
	}
	off := int64(r.IntN(64)) * 4096
	if r.IntN(8) == 0 {
		off += int64(512 * (1 + r.IntN(7))) // unaligned on disk
	}
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(r.IntN(4)) // few distinct values: repeated content is likely
	}
	var segs []Segment
	left := total
	for left > 0 {
		ln := left
		if r.IntN(2) == 0 && left > 4096 {
			ln = 4096 * (1 + r.IntN(left/4096))
			if ln > left {
				ln = left
			}
		}
		gpa := uint64(r.IntN(int(maxPFN))) << 12
		if r.IntN(10) == 0 {
			gpa += uint64(512 * (1 + r.IntN(7))) // page-unaligned guest buffer
		}
		segs = append(segs, Segment{GPA: gpa, Len: uint32(ln)})
		left -= ln
	}
	return off, segs, data
}

func TestTrackerMatchesModel(t *testing.T) {
	for seed := uint64(1); seed <= 10; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 7))
			got := dirtySet{}
			tr := NewTracker(TrackerConfig{Dirty: got})
			m := &model{m: map[uint64]Ref{}, dirty: map[uint64]bool{}}
			const maxPFN = 512
			for step := 0; step < 2000; step++ {
				disk := uint8(r.IntN(2))
				switch op := r.IntN(10); {
				case op < 4: // disk → guest
					off, segs, data := randTransfer(r, maxPFN)
					tok := tr.Begin()
					tr.DiskToGuest(tok, disk, off, segs, data)
					m.record(disk, off, segs, data)
				case op < 6: // guest → disk
					off, segs, data := randTransfer(r, maxPFN)
					w := tr.BeginWrite(disk, off, int64(len(data)))
					m.write(disk, off, int64(len(data)))
					if r.IntN(10) == 0 { // failed write: nothing recorded
						tr.EndWrite(w, nil, nil)
					} else {
						tr.EndWrite(w, segs, data)
						m.record(disk, off, segs, data)
					}
				case op < 7: // discard
					off := int64(r.IntN(64*8)) * 512
					n := int64(1+r.IntN(32)) * 512
					w := tr.BeginWrite(disk, off, n)
					tr.EndWrite(w, nil, nil)
					m.write(disk, off, n)
				case op < 8: // PIO or partial write into pages
					pfn := uint64(r.IntN(maxPFN))
					n := uint64(1 + r.IntN(4))
					tr.DropPages(pfn, n)
					for p := pfn; p < pfn+n; p++ {
						m.remove(p)
					}
				default: // lookup
					pfns := make([]uint64, 32)
					for i := range pfns {
						pfns[i] = uint64(r.IntN(maxPFN + 64))
					}
					out := make([]Ref, len(pfns))
					ok := make([]bool, len(pfns))
					tr.Lookup(pfns, out, ok)
					for i, p := range pfns {
						want, wok := m.m[p]
						out[i].Gen = 0
						if ok[i] != wok || (wok && out[i] != want) {
							t.Fatalf("step %d: lookup pfn %#x = %+v,%v; model %+v,%v", step, p, out[i], ok[i], want, wok)
						}
					}
				}
			}
			exp := tr.Export()
			if len(exp) != len(m.m) || tr.Stats().Tracked != len(m.m) {
				t.Fatalf("export has %d entries, stats %d, model %d", len(exp), tr.Stats().Tracked, len(m.m))
			}
			for _, e := range exp {
				e.Gen = 0
				if m.m[e.PFN] != e.Ref {
					t.Fatalf("export pfn %#x = %+v, model %+v", e.PFN, e.Ref, m.m[e.PFN])
				}
			}
			for p := range m.dirty {
				if !got[p] {
					t.Fatalf("pfn %#x lost its entry but was never reported dirty", p)
				}
			}
		})
	}
}

// TestTrackerRace checks the race rule: a read whose blocks were written
// while it was in flight must not be recorded.
func TestTrackerRace(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	page := make([]byte, 4096)
	page[0] = 1
	seg := []Segment{{GPA: 0x5000, Len: 4096}}

	// Write in flight when the read begins, finishing before the record.
	w := tr.BeginWrite(0, 0, 4096)
	tok := tr.Begin()
	tr.EndWrite(w, nil, nil)
	tr.DiskToGuest(tok, 0, 0, seg, page)
	if tr.Stats().Tracked != 0 || tr.Stats().RaceDrops != 1 {
		t.Fatalf("read raced by an in-flight write was recorded: %+v", tr.Stats())
	}
	// Write that starts after the read began.
	tok = tr.Begin()
	w = tr.BeginWrite(0, 0, 512)
	tr.EndWrite(w, nil, nil)
	tr.DiskToGuest(tok, 0, 0, seg, page)
	if tr.Stats().Tracked != 0 {
		t.Fatal("read raced by a later write was recorded")
	}
	// A write to another block or another disk does not matter.
	tok = tr.Begin()
	w = tr.BeginWrite(0, 8192, 4096)
	tr.EndWrite(w, nil, nil)
	w = tr.BeginWrite(1, 0, 4096)
	tr.EndWrite(w, nil, nil)
	tr.DiskToGuest(tok, 0, 0, seg, page)
	if tr.Stats().Tracked != 1 {
		t.Fatalf("unrelated writes blocked the record: %+v", tr.Stats())
	}
	// Two overlapping writes: the first to finish must not claim the block.
	w1 := tr.BeginWrite(0, 0, 4096)
	w2 := tr.BeginWrite(0, 0, 4096)
	tr.EndWrite(w1, []Segment{{GPA: 0x9000, Len: 4096}}, page)
	tr.EndWrite(w2, []Segment{{GPA: 0xa000, Len: 4096}}, make([]byte, 4096))
	out, ok := make([]Ref, 2), make([]bool, 2)
	tr.Lookup([]uint64{9, 10}, out, ok)
	if ok[0] || ok[1] {
		t.Fatalf("concurrent writes to one block recorded: %v", ok)
	}
}

// TestTrackerFreeze: no change after Freeze, lookups still answer.
func TestTrackerFreeze(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	page := make([]byte, 4096)
	tr.DiskToGuest(tr.Begin(), 0, 4096, []Segment{{GPA: 0x1000, Len: 4096}}, page)
	tr.Freeze()
	w := tr.BeginWrite(0, 4096, 4096)
	tr.EndWrite(w, []Segment{{GPA: 0x2000, Len: 4096}}, page)
	tr.DropPages(1, 1)
	out, ok := make([]Ref, 2), make([]bool, 2)
	tr.Lookup([]uint64{1, 2}, out, ok)
	if !ok[0] || ok[1] || out[0].Sector != 8 {
		t.Fatalf("frozen table changed: %v %+v", ok, out)
	}
	tr.Thaw()
	tr.DropPages(1, 1)
	if tr.Stats().Tracked != 0 {
		t.Fatal("thawed table did not change")
	}
}

func TestTrackerCapacityAndBadInput(t *testing.T) {
	d := dirtySet{}
	tr := NewTracker(TrackerConfig{MaxEntries: 2, Dirty: d})
	data := make([]byte, 3*4096)
	tr.DiskToGuest(tr.Begin(), 0, 0, []Segment{{GPA: 0, Len: 3 * 4096}}, data)
	if tr.Stats().Tracked != 2 {
		t.Fatalf("cap 2: tracked %d", tr.Stats().Tracked)
	}
	// Segments longer than the data, a huge pfn, a bad disk, negative offsets.
	tr.DiskToGuest(tr.Begin(), 0, 0, []Segment{{GPA: 0x10000, Len: 1 << 20}}, data[:4096])
	tr.DiskToGuest(tr.Begin(), 0, 0, []Segment{{GPA: 1 << 60, Len: 4096}}, data[:4096])
	tr.DiskToGuest(tr.Begin(), 200, 0, []Segment{{GPA: 0x20000, Len: 4096}}, data[:4096])
	tr.DiskToGuest(tr.Begin(), 0, -4096, []Segment{{GPA: 0x20000, Len: 4096}}, data[:4096])
	w := tr.BeginWrite(0, -1, -5)
	tr.EndWrite(w, nil, nil)
	if n := tr.Stats().Tracked; n != 2 {
		t.Fatalf("bad input changed the table: %d entries", n)
	}
}

// TestTrackerConcurrent runs lookups against I/O under the race detector.
func TestTrackerConcurrent(t *testing.T) {
	tr := NewTracker(TrackerConfig{Dirty: &syncDirty{}})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; i < 2000; i++ {
				off, segs, data := randTransfer(r, 1024)
				if r.IntN(2) == 0 {
					tr.DiskToGuest(tr.Begin(), 0, off, segs, data)
				} else {
					w := tr.BeginWrite(0, off, int64(len(data)))
					tr.EndWrite(w, segs, data)
				}
			}
		}(g)
	}
	var lg sync.WaitGroup
	lg.Add(1)
	go func() {
		defer lg.Done()
		pfns := make([]uint64, 256)
		for i := range pfns {
			pfns[i] = uint64(i * 4)
		}
		out, ok := make([]Ref, 256), make([]bool, 256)
		for {
			select {
			case <-stop:
				return
			default:
				tr.Lookup(pfns, out, ok)
			}
		}
	}()
	wg.Wait()
	close(stop)
	lg.Wait()
}

type syncDirty struct {
	mu sync.Mutex
	n  uint64
}

func (d *syncDirty) MarkDirty(pfn, n uint64) { d.mu.Lock(); d.n += n; d.mu.Unlock() }

func TestTrackerDropDisk(t *testing.T) {
	d := dirtySet{}
	tr := NewTracker(TrackerConfig{Dirty: d})
	data := make([]byte, 2*4096)
	tr.DiskToGuest(tr.Begin(), 0, 0, []Segment{{GPA: 0, Len: 4096}}, data)
	tr.DiskToGuest(tr.Begin(), 1, 0, []Segment{{GPA: 0x1000, Len: 8192}}, data)
	tr.DropDisk(1)
	out, ok := make([]Ref, 3), make([]bool, 3)
	tr.Lookup([]uint64{0, 1, 2}, out, ok)
	if !ok[0] || ok[1] || ok[2] || !d[1] || !d[2] || d[0] {
		t.Fatalf("DropDisk(1): found %v, dirty %v", ok, d)
	}
}

// Seed records what it is given like a transfer would (fresh Gen, the reverse
// index kept, a replaced entry reported dirty) and skips what the table
// cannot hold, blocks a write in flight overlaps, and everything while frozen.
func TestTrackerSeed(t *testing.T) {
	d := dirtySet{}
	tr := NewTracker(TrackerConfig{Dirty: d})
	page := make([]byte, 4096)
	page[0] = 1
	tr.DiskToGuest(tr.Begin(), 0, 0, []Segment{{GPA: 0x5000, Len: 4096}}, page) // pfn 5 → disk 0 block 0
	entries := []Entry{
		{PFN: 5, Ref: Ref{Disk: 0, Sector: 16, Hash: 0x55, Gen: 999}}, // replaces pfn 5's entry
		{PFN: 6, Ref: Ref{Disk: 1, Sector: 8, Hash: 0x66}},
		{PFN: 7, Ref: Ref{Disk: 1, Sector: 8, Hash: 0x66}}, // two pages, one block
		{PFN: 8, Ref: Ref{Disk: 0, Sector: 3, Hash: 1}},    // not block-aligned
		{PFN: 9, Ref: Ref{Disk: 200, Sector: 0, Hash: 1}},  // disk out of range
		{PFN: 1 << 40, Ref: Ref{Disk: 0, Sector: 0, Hash: 1}},
	}
	if n := tr.Seed(entries); n != 3 {
		t.Fatalf("Seed recorded %d, want 3", n)
	}
	pfns := []uint64{5, 6, 7, 8, 9}
	out, ok := make([]Ref, len(pfns)), make([]bool, len(pfns))
	tr.Lookup(pfns, out, ok)
	if !ok[0] || !ok[1] || !ok[2] || ok[3] || ok[4] {
		t.Fatalf("found %v", ok)
	}
	if out[0].Sector != 16 || out[0].Hash != 0x55 || out[0].Gen == 999 || out[1].Disk != 1 || out[1].Sector != 8 || out[2].Hash != 0x66 {
		t.Fatalf("entries %+v", out)
	}
	if !d[5] || d[6] || d[7] {
		t.Fatalf("dirty %v: only the replaced pfn 5", d)
	}
	// The reverse index knows the seeded blocks: a guest write drops both
	// pages of disk 1 block 1.
	tr.EndWrite(tr.BeginWrite(1, 4096, 4096), nil, nil)
	tr.Lookup(pfns, out, ok)
	if ok[1] || ok[2] || !ok[0] {
		t.Fatalf("after the write of disk 1 block 1: %v", ok)
	}
	// Seeding again the same content changes nothing.
	if n := tr.Seed(entries[:1]); n != 1 || tr.Stats().Tracked != 1 {
		t.Fatalf("reseed: %d, tracked %d", n, tr.Stats().Tracked)
	}
	// A write in flight over the block: skipped.
	w := tr.BeginWrite(2, 0, 4096)
	if n := tr.Seed([]Entry{{PFN: 20, Ref: Ref{Disk: 2, Sector: 0, Hash: 2}}, {PFN: 21, Ref: Ref{Disk: 2, Sector: 8, Hash: 2}}}); n != 1 {
		t.Fatalf("seeded %d beside a write in flight, want 1", n)
	}
	tr.EndWrite(w, nil, nil)
	// Zero references are no disk copies: skipped, pfn 5's entry kept.
	if n := tr.Seed([]Entry{{PFN: 40, Ref: ZeroRef()}, {PFN: 5, Ref: ZeroRef()}}); n != 0 {
		t.Fatalf("seeded %d zero references", n)
	}
	zp := []uint64{40, 5}
	tr.Lookup(zp, out[:2], ok[:2])
	if ok[0] || !ok[1] || out[1].Sector != 16 {
		t.Fatalf("after seeding zero references: %v %+v", ok[:2], out[:2])
	}
	// Frozen: nothing.
	tr.Freeze()
	if n := tr.Seed([]Entry{{PFN: 30, Ref: Ref{Sector: 0, Hash: 3}}}); n != 0 {
		t.Fatalf("frozen tracker seeded %d", n)
	}
	tr.Thaw()
	// MaxEntries.
	capped := NewTracker(TrackerConfig{MaxEntries: 1})
	if n := capped.Seed(entries[1:3]); n != 1 || capped.Stats().Tracked != 1 {
		t.Fatalf("capped: %d", n)
	}
}
