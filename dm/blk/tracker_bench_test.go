package blk

import (
	"math/rand/v2"
	"testing"
)

// BenchmarkTrackerRecord measures the cost the tracker adds to a disk read:
// hashing each 4 KiB page and updating both indexes, for 64 KiB transfers
// into a 1 GiB guest. Reports ns per page and the table's bytes per tracked
// page (goals on the reference machine: ≤ 500 ns, ≤ 24 B).
func BenchmarkTrackerRecord(b *testing.B) {
	const guestPages = 1 << 18 // 1 GiB
	const pagesPerIO = 16
	tr := NewTracker(TrackerConfig{})
	data := make([]byte, pagesPerIO*4096)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	segs := make([]Segment, 1)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pfn := uint64(r.IntN(guestPages/pagesPerIO)) * pagesPerIO
		segs[0] = Segment{GPA: pfn << 12, Len: uint32(len(data))}
		off := int64(r.IntN(1<<20)) * 4096
		data[0] = byte(i) // distinct content per transfer
		tr.DiskToGuest(tr.Begin(), 0, off, segs, data)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*pagesPerIO), "ns/page")
	if s := tr.Stats(); s.Tracked > 0 {
		b.ReportMetric(float64(s.Bytes)/float64(s.Tracked), "B/tracked-page")
	}
}

// BenchmarkTrackerFill measures bytes per tracked page when a guest's page
// cache covers all of its memory (the dense case, 1 GiB guest).
func BenchmarkTrackerFill(b *testing.B) {
	const guestPages = 1 << 18
	data := make([]byte, 64*4096)
	for n := 0; n < b.N; n++ {
		tr := NewTracker(TrackerConfig{})
		for pfn := uint64(0); pfn < guestPages; pfn += 64 {
			tr.DiskToGuest(tr.Begin(), 0, int64(pfn)*4096, []Segment{{GPA: pfn << 12, Len: uint32(len(data))}}, data)
		}
		s := tr.Stats()
		b.ReportMetric(float64(s.Bytes)/float64(s.Tracked), "B/tracked-page")
	}
}

// BenchmarkTrackerLookup measures the migration transport's batched lookup.
func BenchmarkTrackerLookup(b *testing.B) {
	tr := NewTracker(TrackerConfig{})
	data := make([]byte, 64*4096)
	for pfn := uint64(0); pfn < 1<<16; pfn += 64 {
		tr.DiskToGuest(tr.Begin(), 0, int64(pfn)*4096, []Segment{{GPA: pfn << 12, Len: uint32(len(data))}}, data)
	}
	pfns := make([]uint64, 512)
	out, ok := make([]Ref, 512), make([]bool, 512)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		base := uint64(i*512) % (1 << 16)
		for k := range pfns {
			pfns[k] = base + uint64(k)
		}
		tr.Lookup(pfns, out, ok)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*512), "ns/pfn")
}

// BenchmarkTrackerLookupValid measures the tracker service's validated
// lookup: every entry found costs a 4 KiB read (copy, as the device model's
// validator does through the map cache) and an XXH3-64 of the page. Reports
// ns per validated entry (all 512 pfns of each batch are tracked and valid).
func BenchmarkTrackerLookupValid(b *testing.B) {
	const pages = 1 << 16
	m := newFakeRAM(pages)
	r := rand.New(rand.NewPCG(3, 4))
	for i := range m.b {
		m.b[i] = byte(r.Uint32())
	}
	tr := NewTracker(TrackerConfig{PageHash: m.pageHash})
	for pfn := uint64(0); pfn < pages; pfn += 64 {
		data := m.b[pfn*BlockSize : (pfn+64)*BlockSize]
		tr.DiskToGuest(tr.Begin(), 0, int64(pfn)*4096, []Segment{{GPA: pfn << 12, Len: uint32(len(data))}}, data)
	}
	pfns := make([]uint64, 512)
	out, ok := make([]Ref, 512), make([]bool, 512)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		base := uint64(i*512) % pages
		for k := range pfns {
			pfns[k] = base + uint64(k)
		}
		if n := tr.LookupValid(pfns, out, ok); n != 512 {
			b.Fatalf("%d of 512 valid", n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*512), "ns/entry")
}
