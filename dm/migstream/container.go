package migstream

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/u-root/uio/uio"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// The device-state container carried in EMULATOR_CONTEXT, and its "page
// references" section. Layout in doc.go ("Device-state container").

// Container constants.
const (
	ContainerMagic   = "XDMGSTAT"
	ContainerVersion = 1

	// SectionPageRefs is written by the transport only: the pages whose last
	// entry in the libxc stream was elided, with their disk blocks.
	SectionPageRefs = "PAGEREFS"
	PageRefsVersion = blk.PageRefsVersion
	// SectionDMBlob wraps a device-model blob that was not a container.
	SectionDMBlob = "DMBLOB"
	// SectionEnd ends the container.
	SectionEnd = "END"

	containerHdrSize = 16
	sectionHdrSize   = 24
)

// Elided is a page whose last entry in the stream was elided, with the disk
// block it equals (blk.Entry: pfn, disk, sector, hash, generation).
type Elided = blk.Entry

// Section is one section of a Container.
type Section struct {
	ID      string // ASCII, at most 8 bytes
	Version uint32
	Flags   uint32
	Body    []byte
}

// Container is the device-state container.
type Container struct {
	Version  uint32
	Flags    uint32
	Sections []Section // without the END section
}

// IsContainer reports whether blob starts with the container magic.
func IsContainer(blob []byte) bool { return bytes.HasPrefix(blob, []byte(ContainerMagic)) }

// ParseContainer decodes a container; bodies alias blob.
func ParseContainer(blob []byte) (*Container, error) {
	if !IsContainer(blob) {
		return nil, errors.New("device-state container: bad magic")
	}
	l := uio.NewLittleEndianBuffer(blob)
	l.Consume(len(ContainerMagic))
	c := &Container{Version: l.Read32(), Flags: l.Read32()}
	if l.Error() != nil {
		return nil, errors.New("device-state container: truncated header")
	}
	if c.Version != ContainerVersion {
		return nil, fmt.Errorf("device-state container: version %d not supported (want %d)", c.Version, ContainerVersion)
	}
	for {
		off := len(blob) - l.Len()
		idb := l.Consume(8)
		ver, flags, n := l.Read32(), l.Read32(), l.Read64()
		if l.Error() != nil {
			return nil, fmt.Errorf("device-state container: truncated section header at offset %d", off)
		}
		id := string(bytes.TrimRight(idb, "\x00"))
		if n > uint64(l.Len()) {
			return nil, fmt.Errorf("device-state container: section %q at offset %d: length %d exceeds the %d bytes left", id, off, n, l.Len())
		}
		body := l.Consume(int(n))
		pad := l.Consume(min(padLen(int(n)), l.Len()))
		if len(pad) != padLen(int(n)) || !allZero(pad) {
			return nil, fmt.Errorf("device-state container: section %q at offset %d: bad padding", id, off)
		}
		if id == SectionEnd {
			if n != 0 || ver != 0 || flags != 0 {
				return nil, fmt.Errorf("device-state container: END section with version %d, flags %#x, length %d (want zeros)", ver, flags, n)
			}
			if l.Len() != 0 {
				return nil, fmt.Errorf("device-state container: %d bytes after the END section", l.Len())
			}
			return c, nil
		}
		c.Sections = append(c.Sections, Section{ID: id, Version: ver, Flags: flags, Body: body})
	}
}

// Marshal encodes the container, END section included.
func (c *Container) Marshal() []byte {
	n := containerHdrSize + sectionHdrSize
	for _, s := range c.Sections {
		n += sectionHdrSize + len(s.Body) + padLen(len(s.Body))
	}
	l := uio.NewLittleEndianBuffer(make([]byte, 0, n))
	l.WriteBytes([]byte(ContainerMagic))
	l.Write32(c.Version)
	l.Write32(c.Flags)
	for _, s := range append(c.Sections, Section{ID: SectionEnd}) {
		var id [8]byte
		copy(id[:], s.ID)
		l.WriteBytes(id[:])
		l.Write32(s.Version)
		l.Write32(s.Flags)
		l.Write64(uint64(len(s.Body)))
		l.WriteBytes(s.Body)
		l.Append(padLen(len(s.Body)))
	}
	return l.Data()
}

// Section returns the first section with id, or nil.
func (c *Container) Section(id string) *Section {
	for i := range c.Sections {
		if c.Sections[i].ID == id {
			return &c.Sections[i]
		}
	}
	return nil
}

// EncodePageRefs encodes a PAGEREFS v1 body with the codec the device state
// shares (blk.EncodePageRefs): refs sorted by pfn, no duplicates.
func EncodePageRefs(refs []Elided) ([]byte, error) { return blk.EncodePageRefs(refs) }

// DecodePageRefs decodes a PAGEREFS v1 body (blk.DecodePageRefs; Gen is not
// carried: zero).
func DecodePageRefs(body []byte) ([]Elided, error) { return blk.DecodePageRefs(body) }

// AttachPageRefs is the default RewriteEmulatorContext. If blob is a
// container, its PAGEREFS section is replaced (or added before END), every
// other section kept byte for byte. Otherwise, with no elided pages the blob
// is returned unchanged; with some, it is wrapped: container{DMBLOB v1 =
// blob, PAGEREFS v1}.
func AttachPageRefs(blob []byte, elided []Elided) ([]byte, error) {
	var c *Container
	if IsContainer(blob) {
		var err error
		if c, err = ParseContainer(blob); err != nil {
			return nil, err
		}
	} else {
		if len(elided) == 0 {
			return blob, nil
		}
		c = &Container{Version: ContainerVersion, Sections: []Section{{ID: SectionDMBlob, Version: 1, Body: blob}}}
	}
	body, err := EncodePageRefs(elided)
	if err != nil {
		return nil, err
	}
	if s := c.Section(SectionPageRefs); s != nil {
		*s = Section{ID: SectionPageRefs, Version: PageRefsVersion, Body: body}
	} else {
		c.Sections = append(c.Sections, Section{ID: SectionPageRefs, Version: PageRefsVersion, Body: body})
	}
	return c.Marshal(), nil
}

// PageRefs is the receiving side of AttachPageRefs: it returns the device
// model's own blob (the DMBLOB section of a wrapped blob, the container
// itself otherwise, blob itself if it is no container) and the page
// references (nil if there is no PAGEREFS section).
func PageRefs(blob []byte) (dm []byte, refs []Elided, err error) {
	if !IsContainer(blob) {
		return blob, nil, nil
	}
	c, err := ParseContainer(blob)
	if err != nil {
		return nil, nil, err
	}
	dm = blob
	if s := c.Section(SectionDMBlob); s != nil {
		dm = s.Body
	}
	if s := c.Section(SectionPageRefs); s != nil {
		if s.Version != PageRefsVersion {
			return nil, nil, fmt.Errorf("page references: section version %d not supported (want %d)", s.Version, PageRefsVersion)
		}
		if refs, err = DecodePageRefs(s.Body); err != nil {
			return nil, nil, err
		}
	}
	return dm, refs, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
