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
