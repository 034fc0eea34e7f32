package migstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/u-root/uio/uio"
)

// FormatError reports a malformed or unsupported stream. Offset is the
// stream offset of the header or record the error is about; Where names it
// ("libxc PAGE_DATA record", "xl header", …). Truncated input wraps
// io.ErrUnexpectedEOF.
type FormatError struct {
	Offset int64
	Where  string
	Err    error
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("migstream: %s at offset %d (%#x): %v", e.Where, e.Offset, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

func formatErr(off int64, where, format string, args ...any) *FormatError {
	return &FormatError{Offset: off, Where: where, Err: fmt.Errorf(format, args...)}
}

// errTruncated is the error of an item cut short by the end of the input.
var errTruncated = fmt.Errorf("truncated: %w", io.ErrUnexpectedEOF)

// XLHeader is xl's struct save_file_header (tools/xl/xl.h) with the optional
// data that follows it. Integers are in the saver's native order
// (little-endian on x86).
type XLHeader struct {
	Magic     [32]byte
	ByteOrder uint32
	Mandatory uint32 // mandatory_flags
	Optional  uint32 // optional_flags
	OptLen    uint32 // optional_data_len
	OptData   []byte // u32 config_len, config (JSON incl. its NUL) when Mandatory has JSON
}

// Marshal implements uio.Marshaler (the 48-byte header followed by OptData).
func (h *XLHeader) Marshal(l *uio.Lexer) {
	l.WriteBytes(h.Magic[:])
	l.Write32(h.ByteOrder)
	l.Write32(h.Mandatory)
	l.Write32(h.Optional)
	l.Write32(h.OptLen)
	l.WriteBytes(h.OptData)
}

// unmarshalFixed reads the 48-byte fixed part.
func (h *XLHeader) unmarshalFixed(l *uio.Lexer) error {
	l.ReadBytes(h.Magic[:])
	h.ByteOrder = l.Read32()
	h.Mandatory = l.Read32()
	h.Optional = l.Read32()
	h.OptLen = l.Read32()
	return l.Error()
}

// Config returns the domain configuration carried in the optional data (the
// JSON text without its trailing NUL), or nil.
func (h *XLHeader) Config() []byte {
	if len(h.OptData) < 4 {
		return nil
	}
	n := binary.LittleEndian.Uint32(h.OptData)
	if uint64(n) > uint64(len(h.OptData)-4) {
		return nil
	}
	return bytes.TrimRight(h.OptData[4:4+n], "\x00")
}

// NewXLHeader returns the header xl writes for a v2 stream with config (the
// JSON text; a NUL is appended as libxl_domain_config_to_json's string has).
func NewXLHeader(config []byte) XLHeader {
	h := XLHeader{ByteOrder: XLByteOrder, Mandatory: XLMandatoryStreamV2}
	copy(h.Magic[:], XLMagic)
	if len(config) > 0 {
		h.Mandatory |= XLMandatoryJSON
		cfg := append(append([]byte(nil), config...), 0)
		h.OptData = binary.LittleEndian.AppendUint32(nil, uint32(len(cfg)))
		h.OptData = append(h.OptData, cfg...)
	} else {
		h.OptData = binary.LittleEndian.AppendUint32(nil, 0)
	}
	h.OptLen = uint32(len(h.OptData))
	return h
}

// check validates what xl's create_domain() and the codec require.
func (h *XLHeader) check() error {
	if string(h.Magic[:]) != XLMagic {
		return fmt.Errorf("bad magic %q (want %q)", h.Magic[:], XLMagic)
	}
	if h.ByteOrder != XLByteOrder {
		if h.ByteOrder == 0x04030201 {
			return errors.New("big-endian xl header (byteorder 0x04030201) is not supported")
		}
		return fmt.Errorf("bad byteorder %#08x (want %#08x)", h.ByteOrder, XLByteOrder)
	}
	if bad := h.Mandatory &^ XLMandatoryAll; bad != 0 {
		return fmt.Errorf("unknown mandatory flags %#x (xl rejects them)", bad)
	}
	if h.Mandatory&XLMandatoryStreamV2 == 0 {
		return fmt.Errorf("mandatory flags %#x lack STREAMv2: a legacy (pre-4.6) stream, not supported", h.Mandatory)
	}
	if h.OptLen > RecLengthMax {
		return fmt.Errorf("optional_data_len %d exceeds %d", h.OptLen, RecLengthMax)
	}
	return nil
}

// checkOptData validates the optional data as create_domain() reads it.
func (h *XLHeader) checkOptData() error {
	if len(h.OptData) == 0 {
		return nil
	}
	if len(h.OptData) < 4 {
		return fmt.Errorf("optional data of %d bytes cannot hold the config length", len(h.OptData))
	}
	if n := binary.LittleEndian.Uint32(h.OptData); uint64(n) > uint64(len(h.OptData)-4) {
		return fmt.Errorf("config length %d exceeds the %d bytes of optional data after it", n, len(h.OptData)-4)
	}
	return nil
}

// LibxlHeader is libxl's struct libxl__sr_hdr (big-endian).
type LibxlHeader struct {
	Ident   uint64
	Version uint32
	Options uint32
}

// NewLibxlHeader is the header libxl writes.
func NewLibxlHeader() LibxlHeader { return LibxlHeader{Ident: LibxlIdent, Version: LibxlVersion} }

// Marshal implements uio.Marshaler.
func (h *LibxlHeader) Marshal(l *uio.Lexer) {
	l.Write64(h.Ident)
	l.Write32(h.Version)
	l.Write32(h.Options)
}

// Unmarshal implements uio.Unmarshaler.
func (h *LibxlHeader) Unmarshal(l *uio.Lexer) error {
	h.Ident = l.Read64()
	h.Version = l.Read32()
	h.Options = l.Read32()
	return l.Error()
}

func (h *LibxlHeader) check() error {
	if h.Ident != LibxlIdent {
		return fmt.Errorf("bad ident %#016x (want %#016x, \"LibxlFmt\")", h.Ident, uint64(LibxlIdent))
	}
	if h.Version != LibxlVersion {
		return fmt.Errorf("version %d not supported (libxl reads only %d)", h.Version, LibxlVersion)
	}
	if h.Options&LibxlOptBigEndian != 0 {
		return errors.New("big-endian libxl stream is not supported")
	}
	return nil
}

// LibxcHeader is libxc's image header (struct xc_sr_ihdr, big-endian) and
// domain header (struct xc_sr_dhdr, stream endianness), 40 bytes together.
type LibxcHeader struct {
	Marker  uint64
	ID      uint32
	Version uint32
	Options uint16
	Res1    uint16
	Res2    uint32

	DomainType uint32
	PageShift  uint16
	DRes       uint16
	XenMajor   uint32
	XenMinor   uint32
}

// NewLibxcHeader is the header a Xen 4.17 HVM save writes.
func NewLibxcHeader() LibxcHeader {
	return LibxcHeader{Marker: LibxcMarker, ID: LibxcID, Version: 3,
		DomainType: DomainX86HVM, PageShift: PageShift, XenMajor: 4, XenMinor: 17}
}

// Marshal implements uio.Marshaler; the image header is big-endian whatever
// the lexer's order, the domain header little-endian.
func (h *LibxcHeader) Marshal(l *uio.Lexer) {
	var be [libxcIHdrSize]byte
	binary.BigEndian.PutUint64(be[0:], h.Marker)
	binary.BigEndian.PutUint32(be[8:], h.ID)
	binary.BigEndian.PutUint32(be[12:], h.Version)
	binary.BigEndian.PutUint16(be[16:], h.Options)
	binary.BigEndian.PutUint16(be[18:], h.Res1)
	binary.BigEndian.PutUint32(be[20:], h.Res2)
	l.WriteBytes(be[:])
	dl := uio.NewLittleEndianBuffer(nil)
	dl.Write32(h.DomainType)
	dl.Write16(h.PageShift)
	dl.Write16(h.DRes)
	dl.Write32(h.XenMajor)
	dl.Write32(h.XenMinor)
	l.WriteBytes(dl.Data())
}

// Unmarshal implements uio.Unmarshaler for the 40 bytes.
func (h *LibxcHeader) Unmarshal(l *uio.Lexer) error {
	ih := uio.NewBigEndianBuffer(l.Consume(libxcIHdrSize))
	h.Marker = ih.Read64()
	h.ID = ih.Read32()
	h.Version = ih.Read32()
	h.Options = ih.Read16()
	h.Res1 = ih.Read16()
	h.Res2 = ih.Read32()
	dh := uio.NewLittleEndianBuffer(l.Consume(libxcDHdrSize))
	h.DomainType = dh.Read32()
	h.PageShift = dh.Read16()
	h.DRes = dh.Read16()
	h.XenMajor = dh.Read32()
	h.XenMinor = dh.Read32()
	if err := l.Error(); err != nil {
		return err
	}
	if err := ih.Error(); err != nil {
		return err
	}
	return dh.Error()
}

// check applies the restorer's checks (read_headers(), x86_hvm_setup()).
func (h *LibxcHeader) check() error {
	if h.Marker != LibxcMarker {
		return fmt.Errorf("bad marker %#016x (a legacy pre-4.5 image?)", h.Marker)
	}
	if h.ID != LibxcID {
		return fmt.Errorf("bad id %#08x (want %#08x, \"XENF\")", h.ID, LibxcID)
	}
	if h.Version < LibxcVersionMin || h.Version > LibxcVersionMax {
		return fmt.Errorf("version %d not supported (want %d..%d)", h.Version, LibxcVersionMin, LibxcVersionMax)
	}
	if h.Options&LibxcOptBigEndian != 0 {
		return errors.New("big-endian libxc stream is not supported")
	}
	if h.PageShift != PageShift {
		return fmt.Errorf("page_shift %d not supported (want %d)", h.PageShift, PageShift)
	}
	return nil
}

// DomainTypeName names a libxc domain header type.
func DomainTypeName(t uint32) string {
	switch t {
	case DomainX86PV:
		return "x86 PV"
	case DomainX86HVM:
		return "x86 HVM"
	case DomainX86PVH:
		return "x86 PVH"
	case DomainARM:
		return "ARM"
	}
	return fmt.Sprintf("unknown %#x", t)
}
