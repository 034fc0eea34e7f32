package devstate

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// The container: the framing every device-state blob uses. dm/migstream's
// transport uses this same code (Parse, Marshal) to replace the PAGEREFS
// section of the blob in EMULATOR_CONTEXT: Parse then Marshal gives back a
// well-formed container byte for byte, whatever its sections (unknown ids,
// flags or versions are kept; CRC trailers are verified and recomputed).
//
//	container = magic "XDMGSTAT" | version u32 = 1 | flags u32 = 0 | section* | end
//	section   = id [8]byte (ASCII, NUL-padded) | version u32 | flags u32 |
//	            length u64 | body[length] | zero padding to a multiple of 8
//	end       = the section "END": version 0, flags 0, length 0; nothing follows
//
// Integers are little-endian. With FlagCRC32C the body is the payload
// followed by CRC32C (Castagnoli) of id[8] | version | flags | payload.

// Container constants.
const (
	Magic            = "XDMGSTAT"
	ContainerVersion = 1

	headerSize    = 16 // magic, version, flags
	sectionHeader = 24 // id, version, flags, length
	idSize        = 8
	crcSize       = 4
	align         = 8
)

// Section flags.
const (
	// FlagOptional: a reader that does not know the section id, or does not
	// support its version, skips it. Without it such a section makes the
	// whole state unreadable (a mandatory section).
	FlagOptional uint32 = 1 << 0
	// FlagCRC32C: the last 4 bytes of the body are the CRC32C of the
	// section's id, version, flags and payload. Every section xen-dm-go
	// writes has it, the transport's PAGEREFS included (not the sections of
	// its DMBLOB wrapper, which no device model loads).
	FlagCRC32C uint32 = 1 << 1

	knownFlags = FlagOptional | FlagCRC32C
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Section is one section of a container. Payload excludes the CRC trailer.
type Section struct {
	ID      string
	Version uint32
	Flags   uint32
	Payload []byte
	// Offset is where the section header starts in the blob (Parse only).
	Offset int
}

// Optional reports FlagOptional.
func (s *Section) Optional() bool { return s.Flags&FlagOptional != 0 }

func padLen(n int) int { return (align - n%align) % align }

func sectionCRC(id string, version, flags uint32, payload []byte) uint32 {
	var h [idSize + 8]byte
	copy(h[:idSize], id)
	binary.LittleEndian.PutUint32(h[idSize:], version)
	binary.LittleEndian.PutUint32(h[idSize+4:], flags)
	c := crc32.Update(0, castagnoli, h[:])
	return crc32.Update(c, castagnoli, payload)
}

func validID(id string) bool {
	if len(id) == 0 || len(id) > idSize {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] <= ' ' || id[i] > '~' {
			return false
		}
	}
	return true
}

// Marshal frames sections (END is added; Offset is ignored). A section
// with FlagCRC32C gets its CRC trailer here. sections is not changed.
func Marshal(sections []Section) ([]byte, error) {
	n := headerSize + sectionHeader
	for _, s := range sections {
		n += sectionHeader + len(s.Payload) + crcSize + align
	}
	b := make([]byte, 0, n)
	b = append(b, Magic...)
	b = binary.LittleEndian.AppendUint32(b, ContainerVersion)
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, s := range append(sections[:len(sections):len(sections)], Section{ID: IDEnd}) {
		if !validID(s.ID) {
			return nil, fmt.Errorf("device state: invalid section id %q", s.ID)
		}
		if s.ID == IDEnd && (s.Version != 0 || s.Flags != 0 || len(s.Payload) != 0) {
			return nil, fmt.Errorf("device state: END must be empty")
		}
		body := len(s.Payload)
		if s.Flags&FlagCRC32C != 0 {
			body += crcSize
		}
		var id [idSize]byte
		copy(id[:], s.ID)
		b = append(b, id[:]...)
		b = binary.LittleEndian.AppendUint32(b, s.Version)
		b = binary.LittleEndian.AppendUint32(b, s.Flags)
		b = binary.LittleEndian.AppendUint64(b, uint64(body))
		b = append(b, s.Payload...)
		if s.Flags&FlagCRC32C != 0 {
			b = binary.LittleEndian.AppendUint32(b, sectionCRC(s.ID, s.Version, s.Flags, s.Payload))
		}
		b = append(b, make([]byte, padLen(body))...)
	}
	return b, nil
}

// IsState reports whether b starts like a container.
func IsState(b []byte) bool { return bytes.HasPrefix(b, []byte(Magic)) }

// Parse checks the framing of a container and the CRC of every section
// that has one, and returns the sections in order (END excluded). Payloads
// alias b. It does not interpret section ids: see Decode.
func Parse(b []byte) ([]Section, error) {
	if len(b) < len(Magic) || !IsState(b) {
		if len(b) < len(Magic) && bytes.HasPrefix([]byte(Magic), b) {
			return nil, errf(ErrTruncated, "device state truncated: %d bytes, shorter than its header", len(b))
		}
		return nil, errf(ErrNotState, "device state: no %q magic at the start (%d bytes): not a xen-dm-go device state", Magic, len(b))
	}
	if len(b) < headerSize {
		return nil, errf(ErrTruncated, "device state truncated: %d bytes, shorter than its header", len(b))
	}
	le := binary.LittleEndian
	if v := le.Uint32(b[8:]); v != ContainerVersion {
		return nil, errf(ErrVersion, "device state: container version %d, this build reads version %d", v, ContainerVersion)
	}
	if f := le.Uint32(b[12:]); f != 0 {
		return nil, errf(ErrCorrupt, "device state: container flags %#x, none are defined", f)
	}
	var out []Section
	off := headerSize
	for {
		if len(b)-off < sectionHeader {
			return nil, errf(ErrTruncated, "device state truncated at offset %d (no END section; %d bytes left, a section header takes %d)",
				off, len(b)-off, sectionHeader)
		}
		rawID := b[off : off+idSize]
		id := string(bytes.TrimRight(rawID, "\x00"))
		if !validID(id) {
			return nil, errf(ErrCorrupt, "device state: garbage section id %q at offset %d", rawID, off)
		}
		version, flags := le.Uint32(b[off+8:]), le.Uint32(b[off+12:])
		n := le.Uint64(b[off+16:])
		body := off + sectionHeader
		left := uint64(len(b) - body)
		if n > left {
			return nil, errf(ErrTruncated, "device state truncated: section %q at offset %d: length %d exceeds the %d bytes left", id, off, n, left)
		}
		pad := padLen(int(n))
		if uint64(pad) > left-n {
			return nil, errf(ErrTruncated, "device state truncated: section %q at offset %d: padding cut off", id, off)
		}
		payload := b[body : body+int(n)]
		for _, c := range b[body+int(n) : body+int(n)+pad] {
			if c != 0 {
				return nil, errf(ErrCorrupt, "device state: section %q at offset %d: non-zero padding", id, off)
			}
		}
		next := body + int(n) + pad
		if id == IDEnd {
			if n != 0 || version != 0 || flags != 0 {
				return nil, errf(ErrCorrupt, "device state: END section at offset %d is not empty (version %d, flags %#x, length %d)", off, version, flags, n)
			}
			if next != len(b) {
				return nil, errf(ErrCorrupt, "device state: %d bytes of trailing garbage after the END section at offset %d", len(b)-next, off)
			}
			return out, nil
		}
		if flags&FlagCRC32C != 0 {
			if n < crcSize {
				return nil, errf(ErrCorrupt, "device state: section %q at offset %d: %d bytes, too short for its CRC", id, off, n)
			}
			p := payload[:n-crcSize]
			want := le.Uint32(payload[n-crcSize:])
			if got := sectionCRC(id, version, flags, p); got != want {
				return nil, errf(ErrChecksum, "device state: section %q at offset %d: CRC32C %#08x, stored %#08x: the state is corrupt", id, off, got, want)
			}
			payload = p
		}
		out = append(out, Section{ID: id, Version: version, Flags: flags, Payload: payload, Offset: off})
		off = next
	}
}
