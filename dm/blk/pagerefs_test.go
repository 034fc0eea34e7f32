package blk

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

func TestPageRefsRoundTripAndExtents(t *testing.T) {
	var refs []Entry
	// A run of 100 consecutive pfns on consecutive blocks of disk 0 (one
	// extent), a gap, a pfn on disk 1, then a run broken by a non-adjacent
	// sector.
	for i := uint64(0); i < 100; i++ {
		refs = append(refs, Entry{PFN: 0x1000 + i, Ref: Ref{Disk: 0, Sector: 800 + 8*i, Hash: i * 7}})
	}
	refs = append(refs,
		Entry{PFN: 0x2000, Ref: Ref{Disk: 1, Sector: 0, Hash: 1}},
		Entry{PFN: 0x2001, Ref: Ref{Disk: 1, Sector: 64, Hash: 2}},
		Entry{PFN: MaxPFN, Ref: Ref{Disk: 3, Sector: 8, Hash: 3}},
	)
	b, err := EncodePageRefs(refs)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint64(b[8:]); n != 4 {
		t.Fatalf("%d extents, want 4", n)
	}
	if len(b) != 16+4*extentSize+8*len(refs) {
		t.Fatalf("%d bytes", len(b))
	}
	got, err := DecodePageRefs(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, refs) {
		t.Fatal("round trip differs")
	}
	empty, _ := EncodePageRefs(nil)
	if got, err := DecodePageRefs(empty); err != nil || len(got) != 0 || len(empty) != 16 {
		t.Fatalf("empty: %v %v", got, err)
	}
}

func TestPageRefsRefused(t *testing.T) {
	for name, refs := range map[string][]Entry{
		"unsorted":   {{PFN: 2}, {PFN: 1}},
		"duplicate":  {{PFN: 2}, {PFN: 2}},
		"pfn range":  {{PFN: MaxPFN + 1}},
		"odd sector": {{PFN: 1, Ref: Ref{Sector: 3}}},
	} {
		if _, err := EncodePageRefs(refs); err == nil {
			t.Errorf("encode %s accepted", name)
		}
	}
	ext := func(pfn, sector uint64, count uint32, disk uint8, res byte) []byte {
		b := binary.LittleEndian.AppendUint64(nil, pfn)
		b = binary.LittleEndian.AppendUint64(b, sector)
		b = binary.LittleEndian.AppendUint32(b, count)
		return append(b, disk, res, 0, 0)
	}
	body := func(npages, next uint64, parts ...[]byte) []byte {
		b := binary.LittleEndian.AppendUint64(nil, npages)
		b = binary.LittleEndian.AppendUint64(b, next)
		for _, p := range parts {
			b = append(b, p...)
		}
		return b
	}
	hashes := func(n int) []byte { return make([]byte, 8*n) }
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"short":      {[]byte{1, 2, 3}, "truncated"},
		"length":     {body(2, 1, ext(1, 0, 2, 0, 0), hashes(1)), "do not fill"},
		"huge":       {body(1<<60, 1<<58, ext(1, 0, 2, 0, 0)), "do not fill"},
		"count 0":    {body(0, 1, ext(1, 0, 0, 0, 0)), "count 0"},
		"reserved":   {body(1, 1, ext(1, 0, 1, 0, 9), hashes(1)), "reserved"},
		"overlap":    {body(3, 2, ext(10, 0, 2, 0, 0), ext(11, 64, 1, 0, 0), hashes(3)), "overlaps"},
		"pfn range":  {body(2, 1, ext(MaxPFN, 0, 2, 0, 0), hashes(2)), "out of range"},
		"sector":     {body(1, 1, ext(1, 5, 1, 0, 0), hashes(1)), "bad sector"},
		"too many":   {body(1, 1, ext(1, 0, 2, 0, 0), hashes(1)), "more than 1 pages"},
		"more pages": {body(2, 2, ext(1, 0, 2, 0, 0), ext(5, 0, 1, 0, 0)), "do not fill"},
		"fewer":      {body(3, 1, ext(1, 0, 2, 0, 0), hashes(3)), "header says 3"},
	} {
		_, err := DecodePageRefs(c.b)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (want %q)", name, err, c.want)
		}
	}
	// Two extents holding 3 pages, the header saying 2, the sizes right.
	b := body(2, 2, ext(1, 0, 2, 0, 0), ext(5, 0, 1, 0, 0), hashes(2))
	if _, err := DecodePageRefs(b); err == nil || !strings.Contains(err.Error(), "more than 2 pages") {
		t.Errorf("extents over npages: %v", err)
	}
}

func TestZeroPageHash(t *testing.T) {
	if h := HashPage(make([]byte, BlockSize)); h != ZeroPageHash {
		t.Fatalf("HashPage(zero page) = %#016x, ZeroPageHash %#016x", h, uint64(ZeroPageHash))
	}
	if !ZeroRef().IsZeroPage() || (Ref{Disk: 3}).IsZeroPage() {
		t.Fatal("IsZeroPage")
	}
}

// Zero references: runs of consecutive zero pfns are one extent (sector 0),
// mixed with disk references; version 2 only when there are some.
func TestPageRefsZero(t *testing.T) {
	z := func(pfn uint64) Entry { return Entry{PFN: pfn, Ref: ZeroRef()} }
	d := func(pfn uint64, disk uint8, sector uint64) Entry {
		return Entry{PFN: pfn, Ref: Ref{Disk: disk, Sector: sector, Hash: pfn * 3}}
	}
	refs := []Entry{
		z(1), z(2), z(3), // one zero extent
		d(4, 0, 8), d(5, 0, 16), // one disk extent, right after
		z(6), // a zero extent between disk references
		d(7, 0, 24), d(8, 1, 32),
		z(10), z(11), // a gap, then a zero extent
		z(MaxPFN),
	}
	if v := PageRefsVersionFor(refs); v != 2 {
		t.Fatalf("version %d, want 2", v)
	}
	if v := PageRefsVersionFor([]Entry{d(4, 0, 8)}); v != 1 {
		t.Fatalf("version %d for disk references only, want 1", v)
	}
	if v := PageRefsVersionFor(nil); v != 1 {
		t.Fatalf("version %d for no references, want 1", v)
	}
	b, err := EncodePageRefs(refs)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint64(b[8:]); n != 7 {
		t.Fatalf("%d extents, want 7", n)
	}
	for _, v := range []uint32{2} {
		got, err := DecodePageRefsVersion(v, b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, refs) {
			t.Fatalf("round trip differs:\n%+v\n%+v", got, refs)
		}
	}
	// An older section version cannot carry them; unknown versions are refused.
	if _, err := DecodePageRefsVersion(1, b); err == nil || !strings.Contains(err.Error(), "need version 2") {
		t.Fatalf("version 1 with zero references: %v", err)
	}
	for _, v := range []uint32{0, 3} {
		if _, err := DecodePageRefsVersion(v, b); err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Fatalf("version %d: %v", v, err)
		}
	}
	// Disk references only: the same bytes under both versions.
	b1, _ := EncodePageRefs(refs[3:5])
	for _, v := range []uint32{1, 2} {
		if got, err := DecodePageRefsVersion(v, b1); err != nil || !reflect.DeepEqual(got, refs[3:5]) {
			t.Fatalf("version %d: %+v %v", v, got, err)
		}
	}
	// Malformed zero references do not encode.
	for name, r := range map[string]Entry{
		"sector": {PFN: 1, Ref: Ref{Disk: ZeroDisk, Sector: 8, Hash: ZeroPageHash}},
		"hash":   {PFN: 1, Ref: Ref{Disk: ZeroDisk, Hash: 1}},
	} {
		if _, err := EncodePageRefs([]Entry{r}); err == nil || !strings.Contains(err.Error(), "zero reference") {
			t.Errorf("encode zero reference with bad %s: %v", name, err)
		}
	}
}

func TestPageRefsZeroRefused(t *testing.T) {
	le := binary.LittleEndian
	body := func(pfn, sector uint64, count uint32, hash uint64) []byte {
		b := le.AppendUint64(nil, uint64(count))
		b = le.AppendUint64(b, 1)
		b = le.AppendUint64(b, pfn)
		b = le.AppendUint64(b, sector)
		b = le.AppendUint32(b, count)
		b = append(b, ZeroDisk, 0, 0, 0)
		for range count {
			b = le.AppendUint64(b, hash)
		}
		return b
	}
	if refs, err := DecodePageRefs(body(5, 0, 2, ZeroPageHash)); err != nil || len(refs) != 2 || refs[1] != (Entry{PFN: 6, Ref: ZeroRef()}) {
		t.Fatalf("well-formed zero extent: %+v %v", refs, err)
	}
	for name, c := range map[string]struct {
		b    []byte
		want string
	}{
		"sector":          {body(5, 8, 1, ZeroPageHash), "zero extent (disk 255) at pfn 0x5 with sector 8"},
		"sector overflow": {body(5, 1<<63, 2, ZeroPageHash), "with sector"},
		"hash":            {body(5, 0, 2, 0x1234), "zero reference with hash 0x0000000000001234"},
	} {
		if _, err := DecodePageRefs(c.b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v (want %q)", name, err, c.want)
		}
	}
}
