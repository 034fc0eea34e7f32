package migstream_test

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream/streamtest"
)

// sortedSet turns an oracle set into the sorted list the elider reports.
func sortedSet(set map[uint64]blk.Ref) []ms.Elided {
	var out []ms.Elided
	for pfn, r := range set {
		out = append(out, ms.Elided{PFN: pfn, Ref: r})
	}
	slices.SortFunc(out, func(a, b ms.Elided) int { return cmp.Compare(a.PFN, b.PFN) })
	return out
}

func filter(t testing.TB, in []byte, opt ms.FilterOptions) ([]byte, *ms.Elider) {
	t.Helper()
	var out bytes.Buffer
	el, err := ms.Filter(&out, bytes.NewReader(in), opt)
	if err != nil {
		t.Fatalf("filter: %v", err)
	}
	return out.Bytes(), el
}

// emulatorBlob returns the EMULATOR_CONTEXT payload of a stream.
func emulatorBlob(t testing.TB, b []byte) []byte {
	t.Helper()
	for _, it := range decodeAll(t, b) {
		if it.IsLibxl(ms.LibxlEmulatorContext) {
			_, blob, err := ms.ParseEmulatorBody(it.Raw[8 : 8+len(it.Rec.Body)])
			if err != nil {
				t.Fatal(err)
			}
			return blob
		}
	}
	t.Fatal("no EMULATOR_CONTEXT")
	return nil
}

func stripGen(l []ms.Elided) []ms.Elided {
	out := slices.Clone(l)
	for i := range out {
		out[i].Gen = 0
	}
	return out
}

// The compacted stream is exactly the generated stream rebuilt with the
// oracle's elisions and references, it verifies, and the references in it
// are the exact set.
func TestElideRandom(t *testing.T) {
	for _, c := range configs {
		for _, v := range []struct {
			zeroPages float64 // fraction of data pages sent all-zero
			zero      bool    // ElideOptions.Zero
		}{{0, false}, {0.15, false}, {0.15, true}} {
			for _, debug := range []bool{false, true} {
				c := c
				c.Zero = v.zeroPages
				testElideRandom(t, c, debug, v.zero)
			}
		}
	}
}

func testElideRandom(t *testing.T, c streamtest.Config, debug, zero bool) {
	t.Helper()
	s := streamtest.Generate(c)
	set, elided := s.ExpectedElidedZero(debug, zero)
	want := sortedSet(set)
	got, el := filter(t, s.Bytes, ms.FilterOptions{Check: true, ElideOptions: ms.ElideOptions{Tracker: s.Tracker, Zero: zero, Debug: debug}})
	if !slices.Equal(el.Elided(), want) {
		t.Fatalf("seed %d debug %v zero %v: elided set differs: got %d pages, want %d", c.Seed, debug, zero, len(el.Elided()), len(want))
	}
	nElided, nZero, finalZero := 0, 0, 0
	for i, e := range elided {
		if e {
			nElided++
			if s.Entries[i].Data != nil && bytes.Equal(s.Entries[i].Data, make([]byte, ms.PageSize)) && zero {
				nZero++
			}
		}
	}
	for _, r := range want {
		if r.IsZeroPage() {
			finalZero++
		}
	}
	if zero && c.Zero > 0 && (nZero == 0 || finalZero == 0) {
		t.Fatalf("seed %d: no zero page elided", c.Seed)
	}
	st := el.Stats()
	if st.Elided.Load() != int64(nElided) || st.ElidedFinal.Load() != int64(len(want)) ||
		st.ElidedZero.Load() != int64(nZero) || st.ElidedDisk.Load() != int64(nElided-nZero) ||
		st.ElidedFinalZero.Load() != int64(finalZero) || st.ElidedFinalDisk.Load() != int64(len(want)-finalZero) {
		t.Fatalf("seed %d: stats elided %d (disk %d zero %d) final %d (disk %d zero %d), want %d (zero %d) %d (zero %d)", c.Seed,
			st.Elided.Load(), st.ElidedDisk.Load(), st.ElidedZero.Load(), st.ElidedFinal.Load(), st.ElidedFinalDisk.Load(), st.ElidedFinalZero.Load(),
			nElided, nZero, len(want), finalZero)
	}
	blob, err := ms.AttachPageRefs(s.Blob, want)
	if err != nil {
		t.Fatal(err)
	}
	if exp := s.Rebuild(elided, blob); !bytes.Equal(got, exp) {
		t.Fatalf("seed %d debug %v: output differs from the expected stream (%d vs %d bytes)", c.Seed, debug, len(got), len(exp))
	}
	if _, err := ms.Verify(bytes.NewReader(got)); err != nil {
		t.Fatalf("seed %d: compacted stream: %v", c.Seed, err)
	}
	dm, refs, err := ms.PageRefs(emulatorBlob(t, got))
	if err != nil {
		t.Fatal(err)
	}
	if len(want) > 0 && !bytes.Equal(dm, s.Blob) {
		t.Fatalf("seed %d: DM blob not carried", c.Seed)
	}
	if !slices.Equal(refs, stripGen(want)) {
		t.Fatalf("seed %d: references in the stream differ", c.Seed)
	}
	// Compacting a compacted stream changes nothing: the XALLOC
	// entries pass, and their references are carried.
	again, _ := filter(t, got, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: s.Tracker, Zero: zero, Debug: debug}})
	if !bytes.Equal(again, got) {
		t.Fatalf("seed %d debug %v: compacting twice changed the stream", c.Seed, debug)
	}
	if st := el.Stats(); st.Looked.Load() == 0 || st.Hits.Load() == 0 {
		t.Fatalf("seed %d: no lookups", c.Seed)
	}
	if s.Tracker.MaxBatch > ms.MaxBatchSize+1 {
		t.Fatalf("batch of %d pfns", s.Tracker.MaxBatch)
	}
}

// The elided-set rules on a hand-made stream.
func TestElideRules(t *testing.T) {
	tr := streamtest.NewFakeTracker()
	ref := func(pfn uint64, v byte) blk.Ref {
		r := blk.Ref{Disk: 1, Sector: 8 * (100 + pfn), Hash: blk.HashPage(page(v)), Gen: 7}
		tr.Refs[pfn] = r
		return r
	}
	const (
		pfnChanged   = 1 // elided, then other data → out
		pfnTwice     = 2 // elided twice → in
		pfnLate      = 3 // data, then elided → in
		pfnXTAB      = 4 // elided, then XTAB → out
		pfnDupOut    = 5 // same record: elided, then other data → out
		pfnDupIn     = 6 // same record: other data, then elided → in
		pfnStale     = 7 // tracked, never matches → out
		pfnUntracked = 8
		pfnVerify    = 9 // elided before VERIFY, other data after → stays in
	)
	r1, r2, r3 := ref(pfnChanged, 1), ref(pfnTwice, 2), ref(pfnLate, 3)
	ref(pfnXTAB, 4)
	ref(pfnDupOut, 5)
	r6 := ref(pfnDupIn, 6)
	ref(pfnStale, 77)
	r9 := ref(pfnVerify, 9)
	_ = r1
	E := ms.MakePFNEntry
	N, X := ms.PageNOTAB, ms.PageXTAB
	b := streamtest.NewBuilder().XLHeader(`{}`).LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).
		LibxcHeader(3).LibxcRecord(ms.LibxcStaticDataEnd, nil).
		PageData([]ms.PFNEntry{E(pfnChanged, N), E(pfnTwice, N), E(pfnLate, N), E(pfnXTAB, N), E(pfnStale, N), E(pfnUntracked, N), E(pfnVerify, N)},
			[][]byte{page(1), page(2), page(0), page(4), page(7), page(8), page(9)}).
		PageData([]ms.PFNEntry{E(pfnChanged, N), E(pfnTwice, N), E(pfnLate, N), E(pfnXTAB, X),
			E(pfnDupOut, N), E(pfnDupOut, N), E(pfnDupIn, N), E(pfnDupIn, N)},
			[][]byte{page(11), page(2), page(3), page(5), page(55), page(66), page(6)}).
		LibxcRecord(ms.LibxcVerify, nil).
		PageData([]ms.PFNEntry{E(pfnVerify, N), E(pfnTwice, N)}, [][]byte{page(99), page(2)}).
		LibxcRecord(ms.LibxcHVMContext, []byte("ctx")).LibxcRecord(ms.LibxcEnd, nil).
		EmulatorContext([]byte("dm")).LibxlRecord(ms.LibxlEnd, nil)

	want := []ms.Elided{{PFN: pfnTwice, Ref: r2}, {PFN: pfnLate, Ref: r3}, {PFN: pfnDupIn, Ref: r6}, {PFN: pfnVerify, Ref: r9}}
	for _, debug := range []bool{false, true} {
		out, el := filter(t, b.Bytes(), ms.FilterOptions{Check: true, ElideOptions: ms.ElideOptions{Tracker: tr, Debug: debug}})
		if got := el.Elided(); !slices.Equal(got, want) {
			t.Fatalf("debug %v: set %+v\nwant %+v", debug, got, want)
		}
		// Per record: which entries became XALLOC.
		var xalloc [][]uint64
		for _, it := range decodeAll(t, out) {
			if it.IsLibxc(ms.LibxcPageData) {
				var l []uint64
				for _, e := range it.Pages.Entries {
					if e.Type() == ms.PageXALLOC {
						l = append(l, e.PFN())
					}
				}
				xalloc = append(xalloc, l)
			}
		}
		wantX := [][]uint64{{pfnChanged, pfnTwice, pfnXTAB, pfnVerify}, {pfnTwice, pfnLate, pfnDupOut, pfnDupIn}, {pfnTwice}}
		if debug {
			wantX[2] = nil
		}
		if !slices.EqualFunc(xalloc, wantX, func(a, b []uint64) bool { return slices.Equal(a, b) }) {
			t.Fatalf("debug %v: XALLOC entries %v, want %v", debug, xalloc, wantX)
		}
		_, refs, err := ms.PageRefs(emulatorBlob(t, out))
		if err != nil || !slices.Equal(refs, stripGen(want)) {
			t.Fatalf("references %v %v", refs, err)
		}
	}
}

// A tracker that fails stops elision; the output stays valid and the set
// exact.
func TestElideTrackerFailure(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 11, Batch: 32})
	s.Tracker.FailAfter = 4
	var logs []string
	out, el := filter(t, s.Bytes, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: s.Tracker,
		Logf: func(f string, a ...any) { logs = append(logs, f) }}})
	if !errors.Is(el.TrackerErr(), streamtest.ErrFake) || len(logs) != 1 {
		t.Fatalf("tracker error %v, logs %q", el.TrackerErr(), logs)
	}
	// Oracle: only the first three records were decided.
	set := map[uint64]blk.Ref{}
	for r, rng := range s.Records {
		for _, e := range s.Entries[rng[0]:rng[1]] {
			ref, ok := s.Tracker.Refs[e.PFN]
			if r < 3 && e.Type == ms.PageNOTAB && ok && blk.HashPage(e.Data) == ref.Hash {
				set[e.PFN] = ref
			} else {
				delete(set, e.PFN)
			}
		}
	}
	if !slices.Equal(el.Elided(), sortedSet(set)) {
		t.Fatalf("set differs")
	}
	if _, err := ms.Verify(bytes.NewReader(out)); err != nil {
		t.Fatal(err)
	}
}

// Elided pages without an EMULATOR_CONTEXT to carry them: the stream is not
// sent.
func TestElideNeedsEmulatorContext(t *testing.T) {
	tr := streamtest.NewFakeTracker()
	tr.Refs[1] = blk.Ref{Hash: blk.HashPage(page(1))}
	b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).
		PageData([]ms.PFNEntry{ms.MakePFNEntry(1, ms.PageNOTAB)}, [][]byte{page(1)}).
		LibxcRecord(ms.LibxcEnd, nil).LibxlRecord(ms.LibxlEnd, nil).Bytes()
	_, err := ms.Filter(io.Discard, bytes.NewReader(b), ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: tr}})
	if err == nil || !strings.Contains(err.Error(), "no EMULATOR_CONTEXT") {
		t.Fatalf("err %v", err)
	}
}

// Only HVM domains are elided.
func TestElideHVMOnly(t *testing.T) {
	tr := streamtest.NewFakeTracker()
	tr.Refs[1] = blk.Ref{Hash: blk.HashPage(page(1))}
	b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).Bytes()
	b = bytes.Clone(b)
	b[16+8+24+3] = ms.DomainX86PV // domain header type, little-endian u32 at +0 → byte 0
	b[16+8+24] = ms.DomainX86PV
	b[16+8+24+3] = 0
	rest := streamtest.NewBuilder().PageData([]ms.PFNEntry{ms.MakePFNEntry(1, ms.PageNOTAB)}, [][]byte{page(1)}).
		LibxcRecord(ms.LibxcEnd, nil).EmulatorContext(nil).LibxlRecord(ms.LibxlEnd, nil).Bytes()
	in := append(b, rest...)
	out, el := filter(t, in, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: tr}})
	if !bytes.Equal(out, in) || el.Stats().Elided.Load() != 0 {
		t.Fatal("PV stream was changed")
	}
}

// A container blob keeps its other sections; an old PAGEREFS is replaced.
func TestElideContainerBlob(t *testing.T) {
	old, _ := ms.EncodePageRefs([]ms.Elided{{PFN: 500, Ref: blk.Ref{Sector: 8}}})
	container, err := devstate.Marshal([]devstate.Section{
		{ID: "DEVICES", Version: 3, Payload: []byte("device state!")},
		{ID: ms.SectionPageRefs, Version: 1, Payload: old},
		{ID: "OTHER", Version: 1, Payload: []byte("x")},
	})
	if err != nil {
		t.Fatal(err)
	}
	tr := streamtest.NewFakeTracker()
	r := blk.Ref{Disk: 2, Sector: 800, Hash: blk.HashPage(page(1))}
	tr.Refs[1] = r
	b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).
		PageData([]ms.PFNEntry{ms.MakePFNEntry(1, ms.PageNOTAB)}, [][]byte{page(1)}).
		LibxcRecord(ms.LibxcEnd, nil).EmulatorContext(container).LibxlRecord(ms.LibxlEnd, nil).Bytes()
	out, _ := filter(t, b, ms.FilterOptions{Check: true, ElideOptions: ms.ElideOptions{Tracker: tr}})
	got, err := devstate.Parse(emulatorBlob(t, out))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].ID != "DEVICES" || string(got[0].Payload) != "device state!" ||
		got[2].ID != "OTHER" || got[1].ID != ms.SectionPageRefs || got[1].Flags != devstate.FlagCRC32C {
		t.Fatalf("sections %+v", got)
	}
	refs, err := ms.DecodePageRefs(got[1].Payload)
	if err != nil || len(refs) != 1 || refs[0].PFN != 1 || refs[0].Ref != (blk.Ref{Disk: 2, Sector: 800, Hash: r.Hash}) {
		t.Fatalf("refs %+v %v", refs, err)
	}
	// A raw blob with nothing elided is left alone.
	tr2 := streamtest.NewFakeTracker()
	s := streamtest.Generate(streamtest.Config{Seed: 3})
	out2, _ := filter(t, s.Bytes, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: tr2}})
	if !bytes.Equal(out2, s.Bytes) {
		t.Fatal("stream changed with nothing elided")
	}
}

// A custom RewriteEmulatorContext gets the exact set.
func TestElideCustomRewrite(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 21})
	set, _ := s.ExpectedElided(false)
	var seen []ms.Elided
	out, _ := filter(t, s.Bytes, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: s.Tracker,
		Rewrite: func(blob []byte, el []ms.Elided) ([]byte, error) {
			seen = el
			return append([]byte("custom:"), blob...), nil
		}}})
	if !slices.Equal(seen, sortedSet(set)) {
		t.Fatal("rewrite saw a different set")
	}
	if blob := emulatorBlob(t, out); !bytes.HasPrefix(blob, []byte("custom:")) || !bytes.Equal(blob[7:], s.Blob) {
		t.Fatal("custom blob not sent")
	}
	_, err := ms.Filter(io.Discard, bytes.NewReader(s.Bytes), ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: s.Tracker,
		Rewrite: func([]byte, []ms.Elided) ([]byte, error) { return nil, errors.New("nope") }}})
	if err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatal(err)
	}
}

// The in-process tracker works through LocalTracker.
func TestLocalTracker(t *testing.T) {
	bt := blk.NewTracker(blk.TrackerConfig{})
	data := bytes.Repeat([]byte{0xab}, 2*ms.PageSize)
	bt.DiskToGuest(bt.Begin(), 0, 8*4096, []blk.Segment{{GPA: 5 << 12, Len: uint32(len(data))}}, data)
	b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).
		PageData([]ms.PFNEntry{ms.MakePFNEntry(5, ms.PageNOTAB), ms.MakePFNEntry(6, ms.PageNOTAB), ms.MakePFNEntry(7, ms.PageNOTAB)},
			[][]byte{data[:4096], data[4096:], page(0xab)}).
		LibxcRecord(ms.LibxcEnd, nil).EmulatorContext(nil).LibxlRecord(ms.LibxlEnd, nil).Bytes()
	_, el := filter(t, b, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: ms.LocalTracker{T: bt}}})
	got := el.Elided()
	if len(got) != 2 || got[0].PFN != 5 || got[0].Sector != 64 || got[1].PFN != 6 || got[1].Sector != 72 {
		t.Fatalf("elided %+v", got)
	}
}

// All-zero pages: elided as zero references (with Zero), tracker or not;
// a later data entry removes the pfn as for disk references; VERIFY, debug,
// a failing tracker and PV domains as for disk references.
func TestElideZero(t *testing.T) {
	zp := make([]byte, ms.PageSize)
	const (
		pfnZero    = 1 // zero page → zero reference
		pfnResent  = 2 // zero page, then data → out
		pfnTracked = 3 // zero page, tracked on a disk block → zero reference, not looked up
		pfnTab     = 4 // L1TAB zero page → never elided
		pfnDisk    = 5 // tracked data page → disk reference
		pfnDiskTo0 = 6 // disk reference, then zero page → zero reference
		pfnVerify  = 7 // zero page after VERIFY: elided unless debug, the set unchanged
		pfnZeroTo  = 8 // zero page, then disk copy → disk reference
	)
	newTracker := func() *streamtest.FakeTracker {
		tr := streamtest.NewFakeTracker()
		tr.Refs[pfnTracked] = blk.Ref{Disk: 0, Sector: 800, Hash: blk.HashPage(zp)}
		tr.Refs[pfnDisk] = blk.Ref{Disk: 1, Sector: 8, Hash: blk.HashPage(page(5))}
		tr.Refs[pfnDiskTo0] = blk.Ref{Disk: 1, Sector: 16, Hash: blk.HashPage(page(6))}
		tr.Refs[pfnZeroTo] = blk.Ref{Disk: 1, Sector: 24, Hash: blk.HashPage(page(8))}
		return tr
	}
	E := ms.MakePFNEntry
	N := ms.PageNOTAB
	stream := func(pv bool) []byte {
		b := streamtest.NewBuilder().XLHeader(`{}`).LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).Bytes()
		if pv {
			b = bytes.Clone(b)
			b[len(b)-16] = ms.DomainX86PV // the domain header's type (u32 LE)
		}
		rest := streamtest.NewBuilder().LibxcRecord(ms.LibxcStaticDataEnd, nil).
			PageData([]ms.PFNEntry{E(pfnZero, N), E(pfnResent, N), E(pfnTracked, N), E(pfnTab, ms.PageL1TAB), E(pfnDisk, N), E(pfnDiskTo0, N), E(pfnZeroTo, N)},
				[][]byte{zp, zp, zp, zp, page(5), page(6), zp}).
			PageData([]ms.PFNEntry{E(pfnResent, N), E(pfnDiskTo0, N), E(pfnZeroTo, N)}, [][]byte{page(2), zp, page(8)}).
			LibxcRecord(ms.LibxcVerify, nil).
			PageData([]ms.PFNEntry{E(pfnVerify, N), E(pfnZero, N)}, [][]byte{zp, zp}).
			LibxcRecord(ms.LibxcHVMContext, []byte("ctx")).LibxcRecord(ms.LibxcEnd, nil).
			EmulatorContext([]byte("dm")).LibxlRecord(ms.LibxlEnd, nil).Bytes()
		return append(b, rest...)
	}
	in := stream(false)
	zr := blk.ZeroRef()
	wantSet := func(withTracker bool) []ms.Elided {
		set := []ms.Elided{{PFN: pfnZero, Ref: zr}, {PFN: pfnTracked, Ref: zr}, {PFN: pfnDiskTo0, Ref: zr}}
		if withTracker {
			set = append(set, ms.Elided{PFN: pfnZeroTo, Ref: blk.Ref{Disk: 1, Sector: 24, Hash: blk.HashPage(page(8))}},
				ms.Elided{PFN: pfnDisk, Ref: blk.Ref{Disk: 1, Sector: 8, Hash: blk.HashPage(page(5))}})
		}
		slices.SortFunc(set, func(a, b ms.Elided) int { return cmp.Compare(a.PFN, b.PFN) })
		return set
	}
	xallocs := func(out []byte) [][]uint64 {
		var x [][]uint64
		for _, it := range decodeAll(t, out) {
			if it.IsLibxc(ms.LibxcPageData) {
				var l []uint64
				for _, e := range it.Pages.Entries {
					if e.Type() == ms.PageXALLOC {
						l = append(l, e.PFN())
					}
				}
				x = append(x, l)
			}
		}
		return x
	}
	for _, withTracker := range []bool{false, true} {
		for _, debug := range []bool{false, true} {
			opt := ms.ElideOptions{Zero: true, Debug: debug}
			var tr *streamtest.FakeTracker
			if withTracker {
				tr = newTracker()
				opt.Tracker = tr
			}
			out, el := filter(t, in, ms.FilterOptions{Check: true, ElideOptions: opt})
			want := wantSet(withTracker)
			if got := el.Elided(); !slices.Equal(stripGen(got), want) {
				t.Fatalf("tracker %v debug %v: set %+v\nwant %+v", withTracker, debug, got, want)
			}
			wantX := [][]uint64{{pfnZero, pfnResent, pfnTracked, pfnZeroTo}, {pfnDiskTo0}, {pfnVerify, pfnZero}}
			disk := 0
			if withTracker {
				wantX[0] = []uint64{pfnZero, pfnResent, pfnTracked, pfnDisk, pfnDiskTo0, pfnZeroTo}
				wantX[1] = []uint64{pfnDiskTo0, pfnZeroTo}
				disk = 3
			}
			if debug {
				wantX[2] = nil
			}
			if got := xallocs(out); !slices.EqualFunc(got, wantX, func(a, b []uint64) bool { return slices.Equal(a, b) }) {
				t.Fatalf("tracker %v debug %v: XALLOC entries %v, want %v", withTracker, debug, got, wantX)
			}
			zero := 7
			if debug {
				zero = 5
			}
			st := el.Stats()
			if st.ElidedZero.Load() != int64(zero) || st.ElidedDisk.Load() != int64(disk) || st.Elided.Load() != int64(zero+disk) ||
				st.ElidedFinalZero.Load() != 3 || st.ElidedFinalDisk.Load() != int64(len(want)-3) || st.ElidedFinal.Load() != int64(len(want)) {
				t.Fatalf("tracker %v debug %v: stats elided %d/%d/%d final %d/%d/%d", withTracker, debug,
					st.Elided.Load(), st.ElidedDisk.Load(), st.ElidedZero.Load(), st.ElidedFinal.Load(), st.ElidedFinalDisk.Load(), st.ElidedFinalZero.Load())
			}
			if withTracker {
				// Zero pages are not looked up: pfnTracked was never asked.
				if st.Looked.Load() != 4 || tr.Calls != 2 {
					t.Fatalf("looked up %d pfns in %d calls, want 4 in 2", st.Looked.Load(), tr.Calls)
				}
			}
			blob := emulatorBlob(t, out)
			_, refs, err := ms.PageRefs(blob)
			if err != nil || !slices.Equal(refs, want) {
				t.Fatalf("references %+v %v", refs, err)
			}
			secs, err := devstate.Parse(blob)
			if err != nil || secs[len(secs)-1].ID != ms.SectionPageRefs || secs[len(secs)-1].Version != 2 {
				t.Fatalf("PAGEREFS with zero references: %+v %v", secs, err)
			}
			again, _ := filter(t, out, ms.FilterOptions{ElideOptions: opt})
			if !bytes.Equal(again, out) {
				t.Fatalf("tracker %v debug %v: compacting twice changed the stream", withTracker, debug)
			}
		}
	}
	// Without Zero (migrate-send --no-elide; no tracker): unchanged. With a
	// tracker but without Zero: zero pages are looked up like any page.
	if out, el := filter(t, in, ms.FilterOptions{}); !bytes.Equal(out, in) || el.Stats().Elided.Load() != 0 {
		t.Fatal("stream changed without Zero and tracker")
	}
	_, el := filter(t, in, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: newTracker()}})
	if st := el.Stats(); st.ElidedZero.Load() != 0 || st.ElidedDisk.Load() != 4 {
		t.Fatalf("tracker without Zero: zero %d disk %d", st.ElidedZero.Load(), st.ElidedDisk.Load())
	}
	// A failing tracker stops disk elision only.
	tr := newTracker()
	tr.FailAfter = 1
	var logs []string
	out, el := filter(t, in, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: tr, Zero: true,
		Logf: func(f string, a ...any) { logs = append(logs, fmt.Sprintf(f, a...)) }}})
	if !errors.Is(el.TrackerErr(), streamtest.ErrFake) || len(logs) != 1 || !strings.Contains(logs[0], "all-zero pages are still elided") {
		t.Fatalf("tracker error %v, logs %q", el.TrackerErr(), logs)
	}
	if got := el.Elided(); !slices.Equal(got, wantSet(false)) || el.Stats().ElidedZero.Load() != 7 {
		t.Fatalf("after the tracker failed: set %+v, zero %d", got, el.Stats().ElidedZero.Load())
	}
	if _, err := ms.Verify(bytes.NewReader(out)); err != nil {
		t.Fatal(err)
	}
	// PV: nothing.
	pv := stream(true)
	if out, el := filter(t, pv, ms.FilterOptions{ElideOptions: ms.ElideOptions{Zero: true}}); !bytes.Equal(out, pv) || el.Stats().Elided.Load() != 0 {
		t.Fatal("PV stream was changed")
	}
}
