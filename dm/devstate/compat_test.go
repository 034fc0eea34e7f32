package devstate_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream"
)

// The migration transport (dm/migstream) replaces the PAGEREFS section of
// the device model's blob in EMULATOR_CONTEXT with this package's container
// code (Parse, Marshal). These tests pin what it does to a real state.

func sampleState(t *testing.T) []byte {
	t.Helper()
	st := devstate.Fixture()
	st.PageRefs = nil // as the device model writes it
	b, err := devstate.Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var refs = []blk.Entry{
	{PFN: 0x10, Ref: blk.Ref{Disk: 0, Sector: 0, Hash: 0xaaaa}},
	{PFN: 0x11, Ref: blk.Ref{Disk: 0, Sector: 8, Hash: 0xbbbb}},
	{PFN: 0x12, Ref: blk.Ref{Disk: 0, Sector: 24, Hash: 0xcccc}},
	{PFN: 0x40000, Ref: blk.Ref{Disk: 1, Sector: 4096, Hash: 0xdddd}},
}

func TestTransportParsesOurState(t *testing.T) {
	b := sampleState(t)
	if !migstream.IsContainer(b) {
		t.Fatal("the transport does not recognise the device state as a container")
	}
	// Its reader finds our (empty) page references.
	dm, got, err := migstream.PageRefs(b)
	if err != nil || len(got) != 0 || !bytes.Equal(dm, b) {
		t.Fatalf("transport PageRefs: %v %v", got, err)
	}
	// Attaching nothing changes no byte: the device model writes PAGEREFS
	// as the transport does (empty, checksummed).
	out, err := migstream.AttachPageRefs(b, nil)
	if err != nil || !bytes.Equal(out, b) {
		t.Fatalf("attaching no references changed the state (%v)", err)
	}
}

func TestTransportAttachesPageRefs(t *testing.T) {
	b := sampleState(t)
	before, err := devstate.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	out, err := migstream.AttachPageRefs(b, refs)
	if err != nil {
		t.Fatal(err)
	}
	st, err := devstate.Decode(out)
	if err != nil {
		t.Fatalf("state with the transport's PAGEREFS refused: %v", err)
	}
	if !reflect.DeepEqual(st.PageRefs, refs) {
		t.Fatalf("page references %+v", st.PageRefs)
	}
	st.PageRefs = before.PageRefs
	if !reflect.DeepEqual(st, before) {
		t.Fatal("devices changed by attaching page references")
	}
	// Every section but PAGEREFS (the last) is byte for byte ours, and
	// PAGEREFS is checksummed: a flipped bit in it is refused.
	secs, err := devstate.Parse(out)
	if err != nil {
		t.Fatal(err)
	}
	pr := secs[len(secs)-1]
	if pr.ID != devstate.IDPageRefs || pr.Flags != devstate.FlagCRC32C || !bytes.Equal(out[:pr.Offset], b[:pr.Offset]) {
		t.Fatalf("PAGEREFS %s flags %#x at %d; other sections changed: %v", pr.ID, pr.Flags, pr.Offset, !bytes.Equal(out[:pr.Offset], b[:pr.Offset]))
	}
	for _, off := range []int{pr.Offset + 24 + 16 + 8, pr.Offset + 24 + len(pr.Payload) - 1} { // an extent's sector, the last hash
		bad := bytes.Clone(out)
		bad[off] ^= 0x04
		if _, err := devstate.Decode(bad); !errors.Is(err, devstate.ErrChecksum) {
			t.Fatalf("bit flipped at %d: %v", off, err)
		}
	}
	// Attaching again (a second compaction) replaces, not appends.
	out2, err := migstream.AttachPageRefs(out, refs[:1])
	if err != nil {
		t.Fatal(err)
	}
	st2, err := devstate.Decode(out2)
	if err != nil || len(st2.PageRefs) != 1 {
		t.Fatalf("re-attached: %v %v", err, st2)
	}
}

func TestPageRefsEncodingsAgree(t *testing.T) {
	ours, err := blk.EncodePageRefs(refs)
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := migstream.EncodePageRefs(refs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ours, theirs) {
		t.Fatalf("PAGEREFS encodings differ:\n ours   %x\n theirs %x", ours, theirs)
	}
	back, err := migstream.DecodePageRefs(ours)
	if err != nil || !reflect.DeepEqual(back, refs) {
		t.Fatalf("transport decode: %v", err)
	}
	if blk.PageRefsVersion != migstream.PageRefsVersion || devstate.IDPageRefs != migstream.SectionPageRefs ||
		devstate.IDDMBlob != migstream.SectionDMBlob {
		t.Fatal("section constants differ between devstate and migstream")
	}
}

// A foreign blob the transport wrapped (DMBLOB) is refused clearly.
func TestWrappedForeignBlobRefused(t *testing.T) {
	out, err := migstream.AttachPageRefs([]byte("QEVM\x00\x00\x00\x03 qemu's own state"), refs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devstate.Decode(out); !errors.Is(err, devstate.ErrNotState) {
		t.Fatalf("wrapped foreign blob: %v", err)
	}
}
