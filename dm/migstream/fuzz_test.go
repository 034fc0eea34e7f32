package migstream_test

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream/streamtest"
)

// Seeds: small generated streams of every shape, and tiny data-less ones.
func seedStreams() [][]byte {
	var seeds [][]byte
	for i, c := range []streamtest.Config{
		{Pages: 3, Batch: 2, Rounds: 1},
		{Pages: 4, Batch: 3, Rounds: 1, Migrate: true, Verify: true, Xenstore: true},
		{Pages: 3, Batch: 2, Rounds: -1, NoXL: true, Version: 2},
		{Pages: 6, Batch: 6, Rounds: 1, Holes: 0.5, Broken: 0.2, XAlloc: 0.2, Tracked: 1},
	} {
		c.Seed = uint64(100 + i)
		c.Blob = []byte("dm state")
		seeds = append(seeds, streamtest.Generate(c).Bytes)
	}
	E := ms.MakePFNEntry
	seeds = append(seeds, streamtest.NewBuilder().XLHeader(`{}`).LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).
		LibxcHeader(3).LibxcRecord(ms.LibxcStaticDataEnd, nil).
		PageData([]ms.PFNEntry{E(1, ms.PageXTAB), E(2, ms.PageXALLOC), E(3, ms.PageBROKEN)}, nil).
		LibxcRecord(ms.LibxcCheckpoint, nil).EmulatorContext([]byte("cp")).LibxlRecord(ms.LibxlCheckpointEnd, nil).
		LibxcRecord(ms.LibxcHVMParams, le32(1, 0, 1, 0, 5, 0)).LibxcRecord(ms.LibxcEnd, nil).
		EmulatorContext(nil).LibxlRecord(ms.LibxlEnd, nil).Message(ms.MsgGo).Bytes())
	return seeds
}

// checkErr fails unless err is a clear stream error: a FormatError or an
// error naming the offset.
func checkErr(t *testing.T, err error) {
	var fe *ms.FormatError
	if !errors.As(err, &fe) && !strings.Contains(err.Error(), "offset") {
		t.Fatalf("unclear error: %v", err)
	}
}

// fuzzTracker tracks every pfn p with the hash of a page full of byte(p), so
// seeds made of such pages get elided and mutations exercise both paths.
type fuzzTracker struct{}

func (fuzzTracker) Lookup(pfns []uint64, out []blk.Ref, ok []bool) (int, error) {
	for i, p := range pfns {
		out[i] = blk.Ref{Disk: uint8(p % 3), Sector: 8 * p, Hash: pageHash[byte(p)]}
		ok[i] = true
	}
	return len(pfns), nil
}

var pageHash = func() (h [256]uint64) {
	for i := range h {
		h[i] = blk.HashPage(page(byte(i)))
	}
	return
}()

func elidableSeed() []byte {
	E := ms.MakePFNEntry
	return streamtest.NewBuilder().XLHeader(`{}`).LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).
		LibxcHeader(3).LibxcRecord(ms.LibxcStaticDataEnd, nil).
		PageData([]ms.PFNEntry{E(1, ms.PageNOTAB), E(2, ms.PageNOTAB), E(1, ms.PageNOTAB), E(3, ms.PageNOTAB)}, [][]byte{page(1), page(9), page(1), page(0)}).
		LibxcRecord(ms.LibxcVerify, nil).
		PageData([]ms.PFNEntry{E(2, ms.PageNOTAB)}, [][]byte{page(2)}).
		LibxcRecord(ms.LibxcEnd, nil).EmulatorContext([]byte("x")).LibxlRecord(ms.LibxlEnd, nil).Bytes()
}

// decodeItems decodes what it can from a stream starting at layer; it
// returns the bytes consumed by complete items and the error.
func decodeItems(t *testing.T, data []byte, layer ms.Layer) (int64, error) {
	d := ms.NewDecoderAt(bytes.NewReader(data), layer)
	var out bytes.Buffer
	enc := ms.NewEncoder(&out)
	for {
		it, err := d.Next()
		if err == io.EOF {
			err = nil
		}
		if err != nil || it == nil {
			if !bytes.Equal(out.Bytes(), data[:out.Len()]) {
				t.Fatalf("re-encoding differs from the input")
			}
			return int64(out.Len()), err
		}
		if err := enc.Encode(it); err != nil {
			t.Fatal(err)
		}
	}
}

func FuzzXLHeader(f *testing.F) {
	for _, s := range seedStreams() {
		if bytes.HasPrefix(s, []byte(ms.XLMagic)) {
			f.Add(s[:min(len(s), 200)])
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		d := ms.NewDecoderAt(bytes.NewReader(data), ms.LayerXL)
		it, err := d.Next()
		if err != nil {
			checkErr(t, err)
			return
		}
		var out bytes.Buffer
		ms.NewEncoder(&out).Encode(it)
		if !bytes.Equal(out.Bytes(), data[:out.Len()]) || int64(out.Len()) != d.Offset() {
			t.Fatal("xl header re-encoding differs")
		}
		_ = it.XL.Config()
	})
}

// fuzzRecords decodes, re-encodes and checks records after a valid header.
func fuzzRecords(t *testing.T, hdr, data []byte, layer ms.Layer) {
	in := append(bytes.Clone(hdr), data...)
	if _, err := decodeItems(t, in, layer); err != nil {
		checkErr(t, err)
	}
	var c ms.Checker
	d := ms.NewDecoderAt(bytes.NewReader(in), layer)
	for {
		it, err := d.Next()
		if err != nil {
			return
		}
		c.Check(it)
	}
}

// libxl records after a valid header.
func FuzzLibxlRecord(f *testing.F) {
	hdr := streamtest.NewBuilder().LibxlHeader().Bytes()
	f.Add(streamtest.NewBuilder().LibxlRecord(ms.LibxlEmulatorContext, le32(2, 0, 7)).LibxlRecord(ms.LibxlEnd, nil).Bytes())
	f.Add(streamtest.NewBuilder().LibxlRecord(ms.LibxlEmulatorXenstoreData, append(le32(2, 0), "a\x00b\x00"...)).Bytes())
	f.Add(streamtest.NewBuilder().LibxlRecord(ms.LibxlCheckpointState, le32(1, 0)).LibxlRecord(ms.LibxlCheckpointEnd, nil).Bytes())
	f.Add(streamtest.NewBuilder().LibxlRecord(ms.LibxlLibxcContext, nil).Bytes())
	f.Fuzz(func(t *testing.T, data []byte) { fuzzRecords(t, hdr, data, ms.LayerLibxl) })
}

// libxc records after valid headers.
func FuzzLibxcRecord(f *testing.F) {
	hdr := streamtest.NewBuilder().LibxcHeader(3).Bytes()
	E := ms.MakePFNEntry
	f.Add(streamtest.NewBuilder().PageData([]ms.PFNEntry{E(1, ms.PageXTAB), E(2, ms.PageXALLOC)}, nil).LibxcRecord(ms.LibxcEnd, nil).Bytes())
	f.Add(streamtest.NewBuilder().LibxcRecord(ms.LibxcHVMParams, le32(1, 0, 1, 0, 2, 0)).Bytes())
	f.Add(streamtest.NewBuilder().LibxcRecord(ms.LibxcX86TSCInfo, make([]byte, 24)).LibxcRecord(ms.LibxcHVMContext, []byte("abc")).Bytes())
	f.Add(streamtest.NewBuilder().LibxcRecord(ms.LibxcX86CPUIDPolicy, make([]byte, 48)).LibxcRecord(ms.LibxcX86MSRPolicy, make([]byte, 16)).Bytes())
	f.Add(streamtest.NewBuilder().LibxcRecord(0x80000001, []byte("opt")).LibxcRecord(ms.LibxcCheckpoint, nil).Bytes())
	f.Fuzz(func(t *testing.T, data []byte) { fuzzRecords(t, hdr, data, ms.LayerLibxc) })
}

// PAGE_DATA bodies: parse, and compact with every NOTAB page tracked.
func FuzzPageData(f *testing.F) {
	E := ms.MakePFNEntry
	f.Add(ms.AppendPageData(nil, []ms.PFNEntry{E(1, ms.PageXTAB), E(2, ms.PageXALLOC), E(3, ms.PageBROKEN)}, nil))
	f.Add(ms.AppendPageData(nil, []ms.PFNEntry{E(1, ms.PageNOTAB), E(2, ms.PageXTAB), E(1, ms.PageNOTAB)}, [][]byte{page(1), page(3)}))
	f.Add(ms.AppendPageData(nil, []ms.PFNEntry{E(1, ms.PageL1TAB|ms.PageLPIN), E(4, ms.PageNOTAB)}, [][]byte{page(0), page(4)}))
	f.Add(ms.AppendPageData(nil, []ms.PFNEntry{E(5, ms.PageNOTAB), E(4, ms.PageNOTAB)}, [][]byte{page(0), page(4)}))
	f.Fuzz(func(t *testing.T, body []byte) {
		pd, err := ms.ParsePageData(body, nil)
		if err != nil {
			return
		}
		if int(pd.Count) != len(pd.Entries) || len(pd.Data) != pd.DataPages*ms.PageSize {
			t.Fatalf("inconsistent parse: count %d entries %d data %d pages %d", pd.Count, len(pd.Entries), len(pd.Data), pd.DataPages)
		}
		in := streamtest.NewBuilder().LibxcHeader(3).LibxcRecord(ms.LibxcPageData, body).LibxcRecord(ms.LibxcEnd, nil).Bytes()
		var out bytes.Buffer
		el, err := ms.Filter(&out, bytes.NewReader(in), ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: fuzzTracker{}, Zero: true}})
		if err != nil {
			t.Fatalf("valid body rejected: %v", err)
		}
		items := decodeAll(t, out.Bytes())
		got := items[1].Pages
		if len(got.Entries) != len(pd.Entries) || got.DataPages != pd.DataPages-int(el.Stats().Elided.Load()) {
			t.Fatalf("compacted record: %d entries, %d data pages", len(got.Entries), got.DataPages)
		}
		for i, e := range got.Entries {
			if e.PFN() != pd.Entries[i].PFN() || (e.Type() != pd.Entries[i].Type() && e.Type() != ms.PageXALLOC) {
				t.Fatalf("entry %d: %v from %v", i, e, pd.Entries[i])
			}
		}
	})
}

// Whole streams through the elider and the checker.
func FuzzStream(f *testing.F) {
	for _, s := range seedStreams() {
		f.Add(s)
	}
	f.Add(elidableSeed())
	f.Fuzz(func(t *testing.T, data []byte) {
		var out bytes.Buffer
		_, err := ms.Filter(&out, bytes.NewReader(data), ms.FilterOptions{Check: true, ElideOptions: ms.ElideOptions{Tracker: fuzzTracker{}, Zero: true}})
		if err != nil {
			checkErr(t, err)
			if _, err := decodeItems(t, data, ms.LayerDetect); err != nil {
				checkErr(t, err)
			}
			return
		}
		// The output re-parses, passes the checker, and is a fixed point.
		if _, err := ms.Verify(bytes.NewReader(out.Bytes())); err != nil {
			t.Fatalf("compacted stream: %v", err)
		}
		var again bytes.Buffer
		if _, err := ms.Filter(&again, bytes.NewReader(out.Bytes()), ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: fuzzTracker{}, Zero: true}}); err != nil {
			t.Fatalf("compacting the compacted stream: %v", err)
		}
		if !bytes.Equal(again.Bytes(), out.Bytes()) {
			t.Fatal("compaction is not idempotent")
		}
	})
}

func FuzzContainer(f *testing.F) {
	refs := []ms.Elided{{PFN: 1, Ref: blk.Ref{Sector: 8, Hash: 1}}, {PFN: 2, Ref: blk.Ref{Sector: 16, Hash: 2}}, {PFN: 9, Ref: blk.Ref{Disk: 1}}}
	w, _ := ms.AttachPageRefs([]byte("blob"), refs)
	f.Add(w)
	body, _ := ms.EncodePageRefs(refs)
	f.Add(body)
	// With zero references (PAGEREFS v2).
	zrefs := []ms.Elided{{PFN: 0, Ref: blk.ZeroRef()}, {PFN: 1, Ref: blk.Ref{Sector: 8, Hash: 1}}, {PFN: 2, Ref: blk.ZeroRef()},
		{PFN: 3, Ref: blk.ZeroRef()}, {PFN: 9, Ref: blk.Ref{Disk: 1}}}
	w, _ = ms.AttachPageRefs([]byte("blob"), zrefs)
	f.Add(w)
	body, _ = ms.EncodePageRefs(zrefs)
	f.Add(body)
	f.Fuzz(func(t *testing.T, data []byte) {
		// The container parser the transport uses keeps every section
		// byte for byte.
		if secs, err := devstate.Parse(data); err == nil {
			if b, err := devstate.Marshal(secs); err != nil || !bytes.Equal(b, data) {
				t.Fatalf("container re-encoding differs (%v)", err)
			}
		}
		ms.PageRefs(data)
		ms.AttachPageRefs(data, refs)
		r1, err := ms.DecodePageRefs(data)
		if err != nil {
			return
		}
		b, err := ms.EncodePageRefs(r1)
		if err != nil {
			t.Fatalf("decoded references do not encode: %v", err)
		}
		r2, err := ms.DecodePageRefs(b)
		if err != nil || len(r2) != len(r1) {
			t.Fatalf("round trip: %v", err)
		}
		for i := range r1 {
			if r1[i] != r2[i] {
				t.Fatalf("ref %d differs", i)
			}
		}
	})
}
