package blk

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
)

// fakeRAM is guest memory for the validator: pages written by "DMA" and by
// the "CPU", read like the device model's map cache (a copy, under a lock).
type fakeRAM struct {
	mu    sync.Mutex
	b     []byte
	holes map[uint64]bool
}

func newFakeRAM(pages int) *fakeRAM {
	return &fakeRAM{b: make([]byte, pages*BlockSize), holes: map[uint64]bool{}}
}

func (m *fakeRAM) ReadGPA(gpa uint64, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.holes[gpa/BlockSize] || gpa+uint64(len(p)) > uint64(len(m.b)) {
		return fmt.Errorf("pfn %#x: %w", gpa/BlockSize, hw.ErrBadGPA)
	}
	copy(p, m.b[gpa:])
	return nil
}

func (m *fakeRAM) WriteGPA(gpa uint64, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	copy(m.b[gpa:], p)
	return nil
}

// pageHash is the validator the device model installs, over m.
func (m *fakeRAM) pageHash(pfn uint64) (uint64, error) {
	var buf [BlockSize]byte
	if err := m.ReadGPA(pfn*BlockSize, buf[:]); err != nil {
		return 0, err
	}
	return HashPage(buf[:]), nil
}

// dma writes data into the guest at pfn and records it as read from block.
func dma(tr *Tracker, m *fakeRAM, disk uint8, block, pfn uint64, data []byte) {
	tok := tr.Begin()
	m.WriteGPA(pfn*BlockSize, data)
	tr.DiskToGuest(tok, disk, int64(block*BlockSize), []Segment{{GPA: pfn * BlockSize, Len: uint32(len(data))}}, data)
}

func pageOf(b byte) []byte {
	p := make([]byte, BlockSize)
	for i := range p {
		p[i] = b + byte(i)
	}
	return p
}

// A page the guest's CPU rewrote after its transfer is answered not tracked
// by the validated lookup, its entry is dropped and reported dirty; the plain
// lookup still answers it until then, and never changes anything.
func TestTrackerLookupValidDropsStale(t *testing.T) {
	m := newFakeRAM(64)
	d := &hwtest.Dirty{}
	tr := NewTracker(TrackerConfig{Dirty: d, PageHash: m.pageHash})
	dma(tr, m, 0, 10, 4, slices.Concat(pageOf(1), pageOf(2), pageOf(3)))
	m.WriteGPA(5*BlockSize+100, []byte("cpu")) // pfn 5 is now stale

	pfns := []uint64{3, 4, 5, 6}
	out, ok := make([]Ref, 4), make([]bool, 4)
	if n := tr.Lookup(pfns, out, ok); n != 3 || !ok[2] {
		t.Fatalf("raw lookup: %d hits, ok %v", n, ok)
	}
	if len(d.Calls()) != 0 {
		t.Fatalf("raw lookup reported %v dirty", d.Calls())
	}
	if n := tr.LookupValid(pfns, out, ok); n != 2 || ok[0] || !ok[1] || ok[2] || !ok[3] {
		t.Fatalf("validated lookup: %d hits, ok %v", n, ok)
	}
	if out[1].Sector != 80 || out[3].Sector != 96 {
		t.Fatalf("refs %+v", out)
	}
	if got := d.Pages(); !slices.Equal(got, []uint64{5}) {
		t.Fatalf("dirty %v, want [5]", got)
	}
	if n := tr.Lookup(pfns, out, ok); n != 2 || ok[2] {
		t.Fatalf("stale entry still in the table: ok %v", ok)
	}
	st := tr.Stats()
	if st.Tracked != 2 || st.Stale != 1 || st.StaleDrops != 1 || st.HashErrors != 0 || st.Lookups != 12 || st.Hits != 3+2+2 {
		t.Fatalf("stats %+v", st)
	}
	// The pfn is free for the next transfer.
	dma(tr, m, 0, 30, 5, pageOf(9))
	if n := tr.LookupValid([]uint64{5}, out, ok); n != 1 || out[0].Sector != 240 {
		t.Fatalf("re-recorded pfn 5: %d %+v", n, out[0])
	}
}

// A transfer that replaces the entry while its page is being hashed wins:
// the old claim is answered not tracked, the new entry stays.
func TestTrackerLookupValidKeepsReplaced(t *testing.T) {
	m := newFakeRAM(64)
	d := &hwtest.Dirty{}
	var tr *Tracker
	replaced := false
	hash := func(pfn uint64) (uint64, error) {
		if !replaced { // the page is rewritten by the CPU, then by a new DMA, mid-lookup
			replaced = true
			m.WriteGPA(pfn*BlockSize, []byte("cpu"))
			h, _ := m.pageHash(pfn)
			dma(tr, m, 0, 20, pfn, pageOf(7))
			return h, nil
		}
		return m.pageHash(pfn)
	}
	tr = NewTracker(TrackerConfig{Dirty: d, PageHash: hash})
	dma(tr, m, 0, 10, 4, pageOf(1))
	out, ok := make([]Ref, 1), make([]bool, 1)
	if n := tr.LookupValid([]uint64{4}, out, ok); n != 0 || ok[0] {
		t.Fatalf("validated lookup answered the old claim: %+v", out[0])
	}
	if n := tr.Lookup([]uint64{4}, out, ok); n != 1 || out[0].Sector != 160 || out[0].Hash != HashPage(pageOf(7)) {
		t.Fatalf("new entry lost: %d %+v", n, out[0])
	}
	if st := tr.Stats(); st.Stale != 1 || st.StaleDrops != 0 || st.Replacements != 1 || st.Tracked != 1 {
		t.Fatalf("stats %+v", st)
	}
	if n := tr.LookupValid([]uint64{4}, out, ok); n != 1 {
		t.Fatal("new entry not answered")
	}
}

// A page the validator cannot read is answered not tracked and kept; a
// frozen tracker answers stale pages not tracked but keeps them.
func TestTrackerLookupValidErrorsAndFrozen(t *testing.T) {
	m := newFakeRAM(64)
	d := &hwtest.Dirty{}
	tr := NewTracker(TrackerConfig{Dirty: d, PageHash: m.pageHash})
	dma(tr, m, 0, 10, 4, slices.Concat(pageOf(1), pageOf(2)))
	m.holes[4] = true
	m.WriteGPA(5*BlockSize, []byte("cpu"))
	tr.Freeze()
	out, ok := make([]Ref, 2), make([]bool, 2)
	if n := tr.LookupValid([]uint64{4, 5}, out, ok); n != 0 || ok[0] || ok[1] {
		t.Fatalf("frozen validated lookup: ok %v", ok)
	}
	if st := tr.Stats(); st.Tracked != 2 || st.HashErrors != 1 || st.Stale != 1 || st.StaleDrops != 0 || len(d.Calls()) != 0 {
		t.Fatalf("frozen: stats %+v dirty %v", st, d.Calls())
	}
	tr.Thaw()
	tr.LookupValid([]uint64{4, 5}, out, ok)
	if st := tr.Stats(); st.Tracked != 1 || st.HashErrors != 2 || st.StaleDrops != 1 || !slices.Equal(d.Pages(), []uint64{5}) {
		t.Fatalf("thawed: stats %+v dirty %v", st, d.Pages())
	}
	// Without a validator, LookupValid is Lookup.
	plain := NewTracker(TrackerConfig{})
	dma(plain, m, 0, 10, 5, pageOf(1))
	m.WriteGPA(5*BlockSize, []byte("cpu"))
	if n := plain.LookupValid([]uint64{5}, out, ok); n != 1 {
		t.Fatal("LookupValid without a validator dropped an entry")
	}
}

// Validated lookups concurrent with transfers, writes and CPU scribbles (run
// with -race): once everything stops, a validated sweep leaves only entries
// whose page hashes to them, and the drops were reported dirty.
func TestTrackerLookupValidConcurrent(t *testing.T) {
	const pages = 256
	m := newFakeRAM(pages)
	d := &hwtest.Dirty{}
	tr := NewTracker(TrackerConfig{Dirty: d, PageHash: m.pageHash})
	var wg, bg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 2; g++ { // DMA reads and guest writes
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := 0; i < 400; i++ {
				pfn, block, n := uint64(r.IntN(pages-4)), uint64(r.IntN(64)), 1+r.IntN(4)
				data := make([]byte, n*BlockSize)
				for k := range data {
					data[k] = byte(r.IntN(3))
				}
				if r.IntN(4) == 0 {
					w := tr.BeginWrite(0, int64(block*BlockSize), int64(len(data)))
					m.WriteGPA(pfn*BlockSize, data)
					tr.EndWrite(w, []Segment{{GPA: pfn * BlockSize, Len: uint32(len(data))}}, data)
				} else {
					dma(tr, m, 0, block, pfn, data)
				}
			}
		}()
	}
	cpu := rand.New(rand.NewPCG(9, 9))
	scribble := func() { m.WriteGPA(uint64(cpu.IntN(pages*BlockSize-8)), []byte{0xff}) }
	bg.Add(1)
	go func() { // the guest's CPU
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				scribble()
			}
		}
	}()
	for g := 0; g < 3; g++ { // the service's connections
		bg.Add(1)
		go func() {
			defer bg.Done()
			pfns := make([]uint64, pages)
			for i := range pfns {
				pfns[i] = uint64(i)
			}
			out, ok := make([]Ref, pages), make([]bool, pages)
			for {
				select {
				case <-stop:
					return
				default:
					tr.LookupValid(pfns, out, ok)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	for i := 0; i < 200; i++ {
		scribble()
	}

	pfns := make([]uint64, pages)
	for i := range pfns {
		pfns[i] = uint64(i)
	}
	out, ok := make([]Ref, pages), make([]bool, pages)
	valid := tr.LookupValid(pfns, out, ok)
	if n := tr.Lookup(pfns, out, ok); n != valid {
		t.Fatalf("after the sweep the table holds %d entries, the validated lookup answered %d", n, valid)
	}
	for i, p := range pfns {
		if h, _ := m.pageHash(p); ok[i] && h != out[i].Hash {
			t.Fatalf("pfn %#x: entry %+v, page hash %#x", p, out[i], h)
		}
	}
	st := tr.Stats()
	if st.StaleDrops == 0 || st.StaleDrops > st.Stale {
		t.Fatalf("stats %+v", st)
	}
	if len(d.Pages()) == 0 {
		t.Fatal("no drop reported dirty")
	}
}

// The service answers LOOKUP validated and LOOKUP_RAW as the table is.
func TestTrackerServiceRawAndValidated(t *testing.T) {
	m := newFakeRAM(64)
	d := &hwtest.Dirty{}
	tr := NewTracker(TrackerConfig{Dirty: d, PageHash: m.pageHash})
	dma(tr, m, 0, 10, 4, slices.Concat(pageOf(1), pageOf(2)))
	m.WriteGPA(5*BlockSize, []byte("cpu"))
	srv, err := ServeTracker(TrackerSocketPath(t.TempDir(), 3), tr)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	c, err := DialTracker(srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pfns := []uint64{4, 5}
	out, ok := make([]Ref, 2), make([]bool, 2)
	for i := 0; i < 2; i++ {
		if n, err := c.LookupRaw(pfns, out, ok); err != nil || n != 2 {
			t.Fatalf("raw lookup %d: %d hits, %v", i, n, err)
		}
	}
	if n, err := c.Lookup(pfns, out, ok); err != nil || n != 1 || !ok[0] || ok[1] {
		t.Fatalf("validated lookup: %d hits %v, %v", n, ok, err)
	}
	if n, err := c.LookupRaw(pfns, out, ok); err != nil || n != 1 {
		t.Fatalf("raw lookup after validation: %d hits, %v", n, err)
	}
	st, err := c.Stats()
	if err != nil || st.StaleDrops != 1 || st.Tracked != 1 || !slices.Equal(d.Pages(), []uint64{5}) {
		t.Fatalf("stats %+v dirty %v err %v", st, d.Pages(), err)
	}
}
