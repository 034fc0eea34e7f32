package migstream_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
)

func TestPageRefsRoundTrip(t *testing.T) {
	var refs []ms.Elided
	// Two extents on disk 0, a gap, one page on disk 1, a run broken by a
	// sector jump.
	add := func(pfn uint64, disk uint8, sector uint64) {
		refs = append(refs, ms.Elided{PFN: pfn, Ref: blk.Ref{Disk: disk, Sector: sector, Hash: pfn*31 + sector}})
	}
	for i := uint64(0); i < 10; i++ {
		add(100+i, 0, 8000+8*i)
	}
	add(200, 1, 16)
	add(201, 0, 16)
	add(202, 0, 24)
	add(203, 0, 800)
	body, err := ms.EncodePageRefs(refs)
	if err != nil {
		t.Fatal(err)
	}
	if next := binary.LittleEndian.Uint64(body[8:]); next != 4 {
		t.Fatalf("%d extents, want 4", next)
	}
	if want := 16 + 4*24 + 8*len(refs); len(body) != want {
		t.Fatalf("body %d bytes, want %d", len(body), want)
	}
	got, err := ms.DecodePageRefs(body)
	if err != nil || !slices.Equal(got, refs) {
		t.Fatalf("decode: %v\n%+v", err, got)
	}
	// Empty.
	body, _ = ms.EncodePageRefs(nil)
	if got, err := ms.DecodePageRefs(body); err != nil || len(got) != 0 {
		t.Fatal(got, err)
	}
	// Unsorted input is refused.
	if _, err := ms.EncodePageRefs([]ms.Elided{{PFN: 2}, {PFN: 1}}); err == nil {
		t.Fatal("unsorted accepted")
	}
}

func TestPageRefsErrors(t *testing.T) {
	good, _ := ms.EncodePageRefs([]ms.Elided{{PFN: 1, Ref: blk.Ref{Sector: 8}}, {PFN: 10, Ref: blk.Ref{Sector: 80}}})
	mod := func(off int, v uint64, size int) []byte {
		b := bytes.Clone(good)
		if size == 8 {
			binary.LittleEndian.PutUint64(b[off:], v)
		} else {
			binary.LittleEndian.PutUint32(b[off:], uint32(v))
		}
		return b
	}
	for _, c := range []struct {
		b    []byte
		want string
	}{
		{good[:10], "truncated"},
		{mod(0, 3, 8), "need"},
		{mod(16+24, 0, 8), "overlaps"}, // second extent pfn 0 < 2
		{mod(16+16, 0, 4), "count 0"},
		{mod(16+8, 3, 8), "bad sector"},
		{mod(16+16, 2, 4), "more than"},
		{func() []byte { b := bytes.Clone(good); b[16+21] = 1; return b }(), "reserved"},
	} {
		if _, err := ms.DecodePageRefs(c.b); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want %q, got %v", c.want, err)
		}
	}
}

func TestContainer(t *testing.T) {
	refs := []ms.Elided{{PFN: 3, Ref: blk.Ref{Disk: 1, Sector: 24, Hash: 9}}}
	// A raw blob is wrapped.
	w, err := ms.AttachPageRefs([]byte("qemu-ish blob"), refs)
	if err != nil {
		t.Fatal(err)
	}
	dm, got, err := ms.PageRefs(w)
	if err != nil || string(dm) != "qemu-ish blob" || !slices.Equal(got, refs) {
		t.Fatalf("%q %v %v", dm, got, err)
	}
	// A raw blob with no references is untouched; a non-container is returned as is.
	if b, _ := ms.AttachPageRefs([]byte("x"), nil); string(b) != "x" {
		t.Fatal("raw blob changed")
	}
	if dm, got, err := ms.PageRefs([]byte("x")); string(dm) != "x" || got != nil || err != nil {
		t.Fatal("raw PageRefs")
	}
	// Replacing is idempotent.
	w2, err := ms.AttachPageRefs(w, refs)
	if err != nil || !bytes.Equal(w2, w) {
		t.Fatal("re-attach changed the container")
	}
	// Layout: header, sections 8-aligned, END last.
	if !bytes.HasPrefix(w, []byte("XDMGSTAT\x01\x00\x00\x00\x00\x00\x00\x00DMBLOB\x00\x00\x01\x00\x00\x00")) || len(w)%8 != 0 ||
		!bytes.HasSuffix(w, []byte("END\x00\x00\x00\x00\x00"+strings.Repeat("\x00", 16))) {
		t.Fatalf("layout % x", w)
	}
	// Corruptions: the transport refuses what the device state's parser
	// refuses.
	for _, b := range [][]byte{w[:len(w)-1], append(bytes.Clone(w), 0), w[:20], func() []byte {
		b := bytes.Clone(w)
		b[8] = 2
		return b
	}()} {
		if _, _, err := ms.PageRefs(b); err == nil {
			t.Errorf("PageRefs accepted % x", b)
		}
		if _, err := ms.AttachPageRefs(b, refs); err == nil {
			t.Errorf("AttachPageRefs accepted % x", b)
		}
	}
}

// In a device-model container (not the transport's DMBLOB wrapper) the
// transport writes PAGEREFS with a CRC32C, keeps every other section byte
// for byte, and refuses a container whose CRC does not match, or with two
// PAGEREFS sections.
func TestContainerPageRefsChecksummed(t *testing.T) {
	secs := []devstate.Section{
		{ID: "HEAD", Version: 1, Flags: devstate.FlagCRC32C, Payload: []byte(`{"x":1}`)},
		{ID: "OTHER", Version: 7, Flags: devstate.FlagOptional, Payload: []byte("unknown, kept")},
		{ID: ms.SectionPageRefs, Version: 1, Payload: mustEncodeRefs(t, nil)},
	}
	blob, err := devstate.Marshal(secs)
	if err != nil {
		t.Fatal(err)
	}
	refs := []ms.Elided{{PFN: 3, Ref: blk.Ref{Disk: 1, Sector: 24, Hash: 9}}, {PFN: 4, Ref: blk.Ref{Disk: 1, Sector: 32, Hash: 10}}}
	out, err := ms.AttachPageRefs(blob, refs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := devstate.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].ID != ms.SectionPageRefs || got[2].Flags != devstate.FlagCRC32C {
		t.Fatalf("sections %+v", got)
	}
	// The sections before PAGEREFS are unchanged bytes.
	if !bytes.Equal(out[:got[2].Offset], blob[:got[2].Offset]) {
		t.Fatal("sections other than PAGEREFS changed")
	}
	if _, back, err := ms.PageRefs(out); err != nil || !slices.Equal(back, refs) {
		t.Fatalf("read back: %v %v", back, err)
	}
	// Attaching again is idempotent.
	if again, err := ms.AttachPageRefs(out, refs); err != nil || !bytes.Equal(again, out) {
		t.Fatalf("re-attach: %v", err)
	}
	// A flipped bit in a page's hash: the CRC catches it on both sides.
	bad := bytes.Clone(out)
	bad[got[2].Offset+24+16+24] ^= 1
	if _, _, err := ms.PageRefs(bad); !errors.Is(err, devstate.ErrChecksum) {
		t.Fatalf("PageRefs on a corrupt PAGEREFS: %v", err)
	}
	if _, err := ms.AttachPageRefs(bad, refs); !errors.Is(err, devstate.ErrChecksum) {
		t.Fatalf("AttachPageRefs on a corrupt PAGEREFS: %v", err)
	}
	// Two PAGEREFS.
	two, _ := devstate.Marshal(append(got, got[2]))
	if _, _, err := ms.PageRefs(two); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("two PAGEREFS: %v", err)
	}
	if _, err := ms.AttachPageRefs(two, refs); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("two PAGEREFS: %v", err)
	}
}

func mustEncodeRefs(t *testing.T, refs []ms.Elided) []byte {
	t.Helper()
	b, err := ms.EncodePageRefs(refs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Zero references make PAGEREFS version 2; a set without them stays version
// 1 (older readers keep reading it); version 1 cannot carry zero references.
func TestContainerZeroRefs(t *testing.T) {
	disk := ms.Elided{PFN: 3, Ref: blk.Ref{Disk: 1, Sector: 24, Hash: 9}}
	refs := []ms.Elided{{PFN: 1, Ref: blk.ZeroRef()}, {PFN: 2, Ref: blk.ZeroRef()}, disk}
	for _, c := range []struct {
		refs    []ms.Elided
		version uint32
	}{{refs, 2}, {refs[2:], 1}, {nil, 1}} {
		for _, blob := range [][]byte{[]byte("qemu-ish blob"), mustMarshal(t, []devstate.Section{{ID: "DEVICES", Version: 1, Flags: devstate.FlagCRC32C, Payload: []byte("d")}})} {
			w, err := ms.AttachPageRefs(blob, c.refs)
			if err != nil {
				t.Fatal(err)
			}
			if !ms.IsContainer(w) {
				continue // a raw blob with nothing elided
			}
			secs, err := devstate.Parse(w)
			if err != nil {
				t.Fatal(err)
			}
			pr := secs[len(secs)-1]
			if pr.ID != ms.SectionPageRefs || pr.Version != c.version {
				t.Fatalf("%d references: %s version %d, want %d", len(c.refs), pr.ID, pr.Version, c.version)
			}
			_, got, err := ms.PageRefs(w)
			if err != nil || !slices.Equal(got, c.refs) {
				t.Fatalf("PageRefs: %+v %v", got, err)
			}
			if c.version == 2 {
				// The same body labelled version 1, or an unknown version: refused.
				for _, v := range []uint32{1, 3} {
					secs[len(secs)-1].Version = v
					if _, _, err := ms.PageRefs(mustMarshal(t, secs)); err == nil {
						t.Fatalf("PAGEREFS version %d with zero references accepted", v)
					}
				}
			}
		}
	}
}

func mustMarshal(t *testing.T, secs []devstate.Section) []byte {
	t.Helper()
	b, err := devstate.Marshal(secs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
