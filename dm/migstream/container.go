package migstream

import (
	"fmt"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
)

// The device-state container carried in EMULATOR_CONTEXT, and its "page
// references" section. The container is dm/devstate's (devstate.Parse,
// devstate.Marshal, docs/device-state.md): one parser for the device model
// and the transport. Layout summary in doc.go ("Device-state container").

// Section ids the transport writes.
const (
	// SectionPageRefs is filled by the transport: the pages whose last
	// entry in the libxc stream was elided, with their disk blocks.
	SectionPageRefs = devstate.IDPageRefs
	// PageRefsVersion is the newest PAGEREFS version (zero references);
	// the transport writes the oldest that carries its set
	// (blk.PageRefsVersionFor) and reads blk.PageRefsMinVersion onwards.
	PageRefsVersion = blk.PageRefsVersion
	// SectionDMBlob wraps a device-model blob that was not a container.
	SectionDMBlob = devstate.IDDMBlob
)

// Elided is a page whose last entry in the stream was elided, with the disk
// block it equals (blk.Entry: pfn, disk, sector, hash, generation), or a
// zero reference (blk.ZeroRef: an all-zero page, no disk).
type Elided = blk.Entry

// IsContainer reports whether blob starts with the container magic.
func IsContainer(blob []byte) bool { return devstate.IsState(blob) }

// EncodePageRefs encodes a PAGEREFS body with the codec the device state
// shares (blk.EncodePageRefs): refs sorted by pfn, no duplicates; its
// version is blk.PageRefsVersionFor(refs).
func EncodePageRefs(refs []Elided) ([]byte, error) { return blk.EncodePageRefs(refs) }

// DecodePageRefs decodes a PAGEREFS body of the newest version
// (blk.DecodePageRefs; Gen is not carried: zero).
func DecodePageRefs(body []byte) ([]Elided, error) { return blk.DecodePageRefs(body) }

// AttachPageRefs is the default RewriteEmulatorContext.
//
// If blob is a container (the device model's state), it is parsed and
// checked (devstate.Parse: framing, and the CRC32C of every section that
// has one), its PAGEREFS section is replaced (or added before END) by one
// with FlagCRC32C, and it is framed again: every other section comes out
// byte for byte. A container the transport wrapped earlier (it has a
// DMBLOB section) keeps that wrapper's layout, PAGEREFS without a CRC, so
// compacting twice changes nothing.
//
// Otherwise, with no elided pages the blob is returned unchanged; with
// some, it is wrapped: container{DMBLOB v1 = blob, PAGEREFS}, without
// CRCs. No device model loads such a wrapper (xen-dm-go refuses DMBLOB);
// it keeps the elided set of a foreign blob for `stream compact` and
// `stream inspect`, and its bytes are pinned by tests/testdata/streams.
func AttachPageRefs(blob []byte, elided []Elided) ([]byte, error) {
	var secs []devstate.Section
	wrapper := false
	if IsContainer(blob) {
		var err error
		if secs, err = devstate.Parse(blob); err != nil {
			return nil, fmt.Errorf("EMULATOR_CONTEXT: %w", err)
		}
		for _, s := range secs {
			wrapper = wrapper || s.ID == SectionDMBlob
		}
	} else {
		if len(elided) == 0 {
			return blob, nil
		}
		secs = []devstate.Section{{ID: SectionDMBlob, Version: 1, Payload: blob}}
		wrapper = true
	}
	body, err := EncodePageRefs(elided)
	if err != nil {
		return nil, err
	}
	refs := devstate.Section{ID: SectionPageRefs, Version: blk.PageRefsVersionFor(elided), Flags: devstate.FlagCRC32C, Payload: body}
	if wrapper {
		refs.Flags = 0
	}
	i, err := sectionIndex(secs, SectionPageRefs)
	if err != nil {
		return nil, err
	}
	if i >= 0 {
		secs[i] = refs
	} else {
		secs = append(secs, refs)
	}
	return devstate.Marshal(secs)
}

// sectionIndex returns the index of the section id in secs, -1 if there is
// none, and an error if there are several (the device state refuses that).
func sectionIndex(secs []devstate.Section, id string) (int, error) {
	at := -1
	for i, s := range secs {
		if s.ID != id {
			continue
		}
		if at >= 0 {
			return -1, fmt.Errorf("EMULATOR_CONTEXT: section %s twice (at offsets %d and %d)", id, secs[at].Offset, s.Offset)
		}
		at = i
	}
	return at, nil
}

// PageRefs is the receiving side of AttachPageRefs: it returns the device
// model's own blob (the DMBLOB section of a wrapped blob, the container
// itself otherwise, blob itself if it is no container) and the page
// references (nil if there is no PAGEREFS section). A container is checked
// as AttachPageRefs checks it, so a PAGEREFS whose CRC does not match is
// refused.
func PageRefs(blob []byte) (dm []byte, refs []Elided, err error) {
	if !IsContainer(blob) {
		return blob, nil, nil
	}
	secs, err := devstate.Parse(blob)
	if err != nil {
		return nil, nil, fmt.Errorf("EMULATOR_CONTEXT: %w", err)
	}
	dm = blob
	wrapped, err := sectionIndex(secs, SectionDMBlob)
	if err != nil {
		return nil, nil, err
	}
	if wrapped >= 0 {
		dm = secs[wrapped].Payload
	}
	i, err := sectionIndex(secs, SectionPageRefs)
	if err != nil || i < 0 {
		return dm, nil, err
	}
	if refs, err = blk.DecodePageRefsVersion(secs[i].Version, secs[i].Payload); err != nil {
		return nil, nil, err
	}
	return dm, refs, nil
}
