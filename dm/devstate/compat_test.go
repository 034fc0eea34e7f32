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

// The migration transport (dm/migstream) parses the device model's blob in
// EMULATOR_CONTEXT and replaces its PAGEREFS section, keeping every other
// section byte for byte. These tests pin the two implementations of the
// container and of PAGEREFS to each other.

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
	c, err := migstream.ParseContainer(b)
	if err != nil {
		t.Fatalf("transport: %v", err)
	}
	ours, err := devstate.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Sections) != len(ours) {
		t.Fatalf("transport sees %d sections, we wrote %d", len(c.Sections), len(ours))
	}
	for i, s := range c.Sections {
		if s.ID != ours[i].ID || s.Version != ours[i].Version || s.Flags != ours[i].Flags {
			t.Fatalf("section %d: transport %s v%d %#x, ours %s v%d %#x", i, s.ID, s.Version, s.Flags, ours[i].ID, ours[i].Version, ours[i].Flags)
		}
	}
	// Re-marshalling unchanged is byte-identical.
	if !bytes.Equal(c.Marshal(), b) {
		t.Fatal("the transport's re-marshalled container differs")
	}
	// Its reader finds our (empty) page references.
	dm, got, err := migstream.PageRefs(b)
	if err != nil || len(got) != 0 || !bytes.Equal(dm, b) {
		t.Fatalf("transport PageRefs: %v %v", got, err)
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
		devstate.Magic != migstream.ContainerMagic || devstate.ContainerVersion != migstream.ContainerVersion ||
		devstate.IDDMBlob != migstream.SectionDMBlob || devstate.IDEnd != migstream.SectionEnd {
		t.Fatal("container constants differ between devstate and migstream")
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
