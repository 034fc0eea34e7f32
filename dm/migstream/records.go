package migstream

import (
	"encoding/binary"
	"fmt"

	"github.com/u-root/uio/uio"
)

// Record is one record of either layer: type u32, body_length u32, body,
// padding to a multiple of 8 (not counted in body_length).
type Record struct {
	Type uint32
	Body []byte
	// Pad is the padding as found in the stream (zero in a valid stream); the
	// encoder writes zeros when it is not of the right length.
	Pad []byte
}

// padLen is the padding after a body of n bytes.
func padLen(n int) int { return (recAlign - n%recAlign) % recAlign }

// EncodedLen is the record's size in the stream.
func (r *Record) EncodedLen() int { return recHeaderSize + len(r.Body) + padLen(len(r.Body)) }

// Marshal implements uio.Marshaler.
func (r *Record) Marshal(l *uio.Lexer) {
	l.Write32(r.Type)
	l.Write32(uint32(len(r.Body)))
	l.WriteBytes(r.Body)
	if n := padLen(len(r.Body)); len(r.Pad) == n {
		l.WriteBytes(r.Pad)
	} else {
		l.Append(n)
	}
}

// PageData is a decoded PAGE_DATA body (struct xc_sr_rec_page_data_header,
// pfn[count], then 4096 bytes for each entry whose type has data, in entry
// order). Entries and Data alias the buffers they were parsed from.
type PageData struct {
	Count     uint32
	Res       uint32
	Entries   []PFNEntry
	Data      []byte
	DataPages int
}

// Page returns the data of the k-th data-bearing entry.
func (p *PageData) Page(k int) []byte { return p.Data[k*PageSize : (k+1)*PageSize] }

// ParsePageData decodes a PAGE_DATA body with the checks of libxc's
// handle_page_data() and the verifier's: count ≥ 1, no reserved bits 52–59,
// no type 5–8, and body length exactly 8 + 8·count + 4096·(entries with
// data). Entries are appended to entries[:0] (pass a buffer to reuse). Res is
// returned, not checked (the restorer ignores it; Verify rejects it).
func ParsePageData(body []byte, entries []PFNEntry) (PageData, error) {
	var pd PageData
	l := uio.NewLittleEndianBuffer(body)
	pd.Count = l.Read32()
	pd.Res = l.Read32()
	if l.Error() != nil {
		return pd, fmt.Errorf("body of %d bytes is shorter than its %d-byte header", len(body), pageDataHdrSize)
	}
	if pd.Count == 0 {
		return pd, fmt.Errorf("count 0 (the restorer needs at least 1 pfn)")
	}
	if need := uint64(pageDataHdrSize) + 8*uint64(pd.Count); need > uint64(len(body)) {
		return pd, fmt.Errorf("count %d needs %d bytes of header and pfns, body has %d", pd.Count, need, len(body))
	}
	entries = entries[:0]
	for i := 0; i < int(pd.Count); i++ {
		e := PFNEntry(l.Read64())
		if e.Reserved() != 0 {
			return pd, fmt.Errorf("pfn[%d] = %#016x has reserved bits 52-59 set", i, uint64(e))
		}
		if !e.Type().Valid() {
			return pd, fmt.Errorf("pfn[%d] = %#016x has invalid page type %d", i, uint64(e), e.Type())
		}
		if e.Type().HasData() {
			pd.DataPages++
		}
		entries = append(entries, e)
	}
	pd.Entries = entries
	want := uint64(pageDataHdrSize) + 8*uint64(pd.Count) + PageSize*uint64(pd.DataPages)
	if uint64(len(body)) != want {
		return pd, fmt.Errorf("count %d with %d data pages needs body length %d, got %d",
			pd.Count, pd.DataPages, want, len(body))
	}
	pd.Data = l.Data()
	return pd, nil
}

// AppendPageData appends a PAGE_DATA body: entries, then the pages of the
// data-bearing entries (pages[k] for the k-th such entry).
func AppendPageData(b []byte, entries []PFNEntry, pages [][]byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	b = binary.LittleEndian.AppendUint32(b, 0)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint64(b, uint64(e))
	}
	for _, p := range pages {
		b = append(b, p...)
	}
	return b
}

// TSCInfo is X86_TSC_INFO (struct xc_sr_rec_x86_tsc_info).
type TSCInfo struct {
	Mode        uint32
	KHz         uint32
	Nsec        uint64
	Incarnation uint32
	Res         uint32
}

// Marshal implements uio.Marshaler.
func (t *TSCInfo) Marshal(l *uio.Lexer) {
	l.Write32(t.Mode)
	l.Write32(t.KHz)
	l.Write64(t.Nsec)
	l.Write32(t.Incarnation)
	l.Write32(t.Res)
}

// Unmarshal implements uio.Unmarshaler.
func (t *TSCInfo) Unmarshal(l *uio.Lexer) error {
	t.Mode = l.Read32()
	t.KHz = l.Read32()
	t.Nsec = l.Read64()
	t.Incarnation = l.Read32()
	t.Res = l.Read32()
	return l.FinError()
}

// HVMParam is one entry of HVM_PARAMS.
type HVMParam struct{ Index, Value uint64 }

// HVMParams is HVM_PARAMS (struct xc_sr_rec_hvm_params).
type HVMParams struct {
	Res    uint32
	Params []HVMParam
}

// Marshal implements uio.Marshaler.
func (p *HVMParams) Marshal(l *uio.Lexer) {
	l.Write32(uint32(len(p.Params)))
	l.Write32(p.Res)
	for _, e := range p.Params {
		l.Write64(e.Index)
		l.Write64(e.Value)
	}
}

// Unmarshal implements uio.Unmarshaler; the count must match the length.
func (p *HVMParams) Unmarshal(l *uio.Lexer) error {
	n := l.Read32()
	p.Res = l.Read32()
	if l.Error() != nil {
		return l.Error()
	}
	if uint64(n)*16 != uint64(l.Len()) {
		return fmt.Errorf("count %d needs %d bytes of entries, have %d", n, uint64(n)*16, l.Len())
	}
	p.Params = make([]HVMParam, n)
	for i := range p.Params {
		p.Params[i] = HVMParam{l.Read64(), l.Read64()}
	}
	return l.FinError()
}

// EmulatorHeader starts the libxl EMULATOR_XENSTORE_DATA and
// EMULATOR_CONTEXT bodies (libxl__sr_emulator_hdr).
type EmulatorHeader struct {
	ID    uint32 // EmulatorQemuUpstream for qemu-xen (and this device model)
	Index uint32
}

const emulatorHdrSize = 8

// ParseEmulatorBody splits an EMULATOR_* body into its header and payload.
func ParseEmulatorBody(body []byte) (EmulatorHeader, []byte, error) {
	l := uio.NewLittleEndianBuffer(body)
	h := EmulatorHeader{ID: l.Read32(), Index: l.Read32()}
	if l.Error() != nil {
		return h, nil, fmt.Errorf("body of %d bytes is shorter than the %d-byte emulator header", len(body), emulatorHdrSize)
	}
	return h, l.Data(), nil
}

// AppendEmulatorBody appends an EMULATOR_* body.
func AppendEmulatorBody(b []byte, h EmulatorHeader, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, h.ID)
	b = binary.LittleEndian.AppendUint32(b, h.Index)
	return append(b, payload...)
}
