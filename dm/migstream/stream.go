package migstream

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/u-root/uio/uio"
)

// Kind says what an Item is.
type Kind uint8

// Item kinds, in stream order.
const (
	KindXLHeader    Kind = iota + 1 // xl save header + optional data
	KindLibxlHeader                 // libxl stream header
	KindLibxlRecord                 // a libxl record
	KindLibxcHeader                 // libxc image + domain header
	KindLibxcRecord                 // a libxc record
	KindMessage                     // a migrate handshake message in the forward direction (GO)
)

func (k Kind) String() string {
	switch k {
	case KindXLHeader:
		return "xl header"
	case KindLibxlHeader:
		return "libxl header"
	case KindLibxlRecord:
		return "libxl record"
	case KindLibxcHeader:
		return "libxc header"
	case KindLibxcRecord:
		return "libxc record"
	case KindMessage:
		return "message"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Layer is where a stream starts.
type Layer uint8

// Layers.
const (
	LayerDetect Layer = iota // from the first 8 bytes
	LayerXL                  // xl save file / migrate stream
	LayerLibxl               // bare libxl stream
	LayerLibxc               // bare libxc stream
)

// Item is one syntactic unit of the stream. The Decoder reuses the Item and
// its buffers: everything in it is valid until the next call to Next.
type Item struct {
	Kind   Kind
	Offset int64  // stream offset of the first byte
	Raw    []byte // the exact bytes of the item in the stream

	XL    XLHeader    // KindXLHeader
	Libxl LibxlHeader // KindLibxlHeader
	Libxc LibxcHeader // KindLibxcHeader
	Rec   Record      // KindLibxlRecord, KindLibxcRecord
	Pages PageData    // KindLibxcRecord with Rec.Type == LibxcPageData
	Msg   string      // KindMessage
}

// Name describes the item for logs and errors ("libxc PAGE_DATA record").
func (it *Item) Name() string {
	switch it.Kind {
	case KindLibxlRecord:
		return "libxl " + LibxlRecordName(it.Rec.Type) + " record"
	case KindLibxcRecord:
		return "libxc " + LibxcRecordName(it.Rec.Type) + " record"
	}
	return it.Kind.String()
}

// IsLibxc reports whether the item is a libxc record of type t.
func (it *Item) IsLibxc(t uint32) bool { return it.Kind == KindLibxcRecord && it.Rec.Type == t }

// IsLibxl reports whether the item is a libxl record of type t.
func (it *Item) IsLibxl(t uint32) bool { return it.Kind == KindLibxlRecord && it.Rec.Type == t }

type decState uint8

const (
	stDetect decState = iota
	stXLHeader
	stLibxlHeader
	stLibxlRecord
	stLibxcHeader
	stLibxcRecord
	stTrailer // after the libxl END of an xl stream: EOF or the GO message
	stDone
)

// Decoder reads a stream item by item: xl header → libxl header → libxl
// records, with the libxc stream inline after LIBXC_CONTEXT (and, in
// checkpointed streams, libxl records inline after each libxc CHECKPOINT up
// to CHECKPOINT_END). It validates framing and everything the codec relies
// on; Checker adds the verifier's remaining rules.
type Decoder struct {
	br  *bufio.Reader
	ar  uio.AlignReader // counts bytes since the libxl/libxc stream start, for padding
	off int64

	st           decState
	hasXL        bool
	hasLibxl     bool
	inCheckpoint bool
	libxcVersion uint32

	buf     []byte
	entries []PFNEntry
	it      Item
	err     error
}

// decoderBufSize is the read buffer; larger reads bypass it.
const decoderBufSize = 256 << 10

// NewDecoder returns a decoder that detects the start layer.
func NewDecoder(r io.Reader) *Decoder { return NewDecoderAt(r, LayerDetect) }

// NewDecoderAt returns a decoder for a stream that starts at layer.
func NewDecoderAt(r io.Reader, layer Layer) *Decoder {
	d := &Decoder{br: bufio.NewReaderSize(r, decoderBufSize)}
	d.ar.R = d.br
	switch layer {
	case LayerXL:
		d.st = stXLHeader
	case LayerLibxl:
		d.st = stLibxlHeader
	case LayerLibxc:
		d.st = stLibxcHeader
	}
	return d
}

// Offset is the number of bytes consumed so far.
func (d *Decoder) Offset() int64 { return d.off }

// LibxcVersion is the libxc stream version once its header was read.
func (d *Decoder) LibxcVersion() uint32 { return d.libxcVersion }

// Next returns the next item, or io.EOF after a complete stream. Any other
// error is a *FormatError (or an I/O error of the reader) and is sticky.
func (d *Decoder) Next() (*Item, error) {
	if d.err != nil {
		return nil, d.err
	}
	it, err := d.next()
	if err != nil {
		d.err = err
		return nil, err
	}
	return it, nil
}

// readFull reads exactly len(p) bytes; io.EOF only if none were available.
func (d *Decoder) readFull(p []byte) error {
	n, err := io.ReadFull(&d.ar, p)
	d.off += int64(n)
	if err == io.ErrUnexpectedEOF {
		return errTruncated
	}
	return err
}

// atEOF reports whether the input is exhausted.
func (d *Decoder) atEOF() (bool, error) {
	_, err := d.br.Peek(1)
	if err == io.EOF {
		return true, nil
	}
	return false, err
}

// grow makes d.buf hold at least n bytes, keeping the first keep.
func (d *Decoder) grow(n, keep int) {
	if cap(d.buf) >= n {
		d.buf = d.buf[:n]
		return
	}
	nb := make([]byte, n, max(n, 2*cap(d.buf)))
	copy(nb, d.buf[:keep])
	d.buf = nb
}

func (d *Decoder) fail(off int64, where string, err error) error {
	if errors.Is(err, io.EOF) {
		err = errTruncated
	}
	var fe *FormatError
	if errors.As(err, &fe) {
		return err
	}
	if !errors.Is(err, io.ErrUnexpectedEOF) && !isFormatCause(err) {
		return fmt.Errorf("migstream: reading %s at offset %d: %w", where, off, err) // the reader's I/O error
	}
	return &FormatError{Offset: off, Where: where, Err: err}
}

// formatCause marks errors found in the stream's content (as opposed to the
// reader's I/O errors).
type formatCause struct{ error }

func isFormatCause(err error) bool {
	var fc formatCause
	return errors.As(err, &fc)
}

func bad(format string, args ...any) error { return formatCause{fmt.Errorf(format, args...)} }

func (d *Decoder) next() (*Item, error) {
	it := &d.it
	*it = Item{Offset: d.off}
	switch d.st {
	case stDetect:
		p, err := d.br.Peek(8)
		if len(p) < 8 {
			if err == nil || err == io.EOF {
				err = errTruncated
			}
			return nil, d.fail(0, "stream start", err)
		}
		switch {
		case string(p) == XLMagic[:8]:
			d.st = stXLHeader
		case binary.BigEndian.Uint64(p) == LibxlIdent:
			d.st = stLibxlHeader
		case binary.BigEndian.Uint64(p) == LibxcMarker:
			d.st = stLibxcHeader
		default:
			return nil, d.fail(0, "stream start", bad("unknown format: first bytes % x are not an xl, libxl or libxc header", p))
		}
		return d.next()

	case stXLHeader:
		d.hasXL = true
		if err := d.readHeader(it.Offset, "xl header", xlHeaderSize, binary.LittleEndian, it.XL.unmarshalFixed, it.XL.check); err != nil {
			return nil, err
		}
		if err := d.readBody(xlHeaderSize, int(it.XL.OptLen)); err != nil {
			return nil, d.fail(it.Offset, "xl header optional data", err)
		}
		it.XL.OptData = d.buf[xlHeaderSize:]
		if err := it.XL.checkOptData(); err != nil {
			return nil, d.fail(it.Offset, "xl header optional data", bad("%v", err))
		}
		it.Kind, it.Raw = KindXLHeader, d.buf
		d.st = stLibxlHeader
		return it, nil

	case stLibxlHeader:
		d.hasLibxl = true
		d.ar.N = 0
		if err := d.readHeader(it.Offset, "libxl header", libxlHeaderSize, binary.BigEndian, it.Libxl.Unmarshal, it.Libxl.check); err != nil {
			return nil, err
		}
		it.Kind, it.Raw = KindLibxlHeader, d.buf
		d.st = stLibxlRecord
		return it, nil

	case stLibxcHeader:
		if !d.hasLibxl {
			d.ar.N = 0
		}
		if err := d.readHeader(it.Offset, "libxc header", libxcIHdrSize+libxcDHdrSize, binary.BigEndian, it.Libxc.Unmarshal, it.Libxc.check); err != nil {
			return nil, err
		}
		d.libxcVersion = it.Libxc.Version
		it.Kind, it.Raw = KindLibxcHeader, d.buf
		d.st = stLibxcRecord
		return it, nil

	case stLibxlRecord:
		it.Kind = KindLibxlRecord
		if err := d.readRecord(it, "libxl record"); err != nil {
			return nil, err
		}
		where := it.Name()
		switch it.Rec.Type {
		case LibxlEnd:
			if d.inCheckpoint {
				return nil, d.fail(it.Offset, where, bad("END inside a checkpoint (before CHECKPOINT_END)"))
			}
			d.st = stDone
			if d.hasXL {
				d.st = stTrailer
			}
		case LibxlLibxcContext:
			if d.inCheckpoint {
				return nil, d.fail(it.Offset, where, bad("LIBXC_CONTEXT inside a checkpoint"))
			}
			d.st = stLibxcHeader
		case LibxlEmulatorXenstoreData, LibxlEmulatorContext:
			if len(it.Rec.Body) < emulatorHdrSize {
				return nil, d.fail(it.Offset, where, bad("body of %d bytes is shorter than the %d-byte emulator header", len(it.Rec.Body), emulatorHdrSize))
			}
		case LibxlCheckpointEnd:
			if !d.inCheckpoint {
				return nil, d.fail(it.Offset, where, bad("CHECKPOINT_END outside a checkpoint (libxl rejects it)"))
			}
			d.inCheckpoint = false
			d.st = stLibxcRecord
		case LibxlCheckpointState:
		default:
			return nil, d.fail(it.Offset, where, bad("unrecognised libxl record type %#08x (libxl rejects it)", it.Rec.Type))
		}
		return it, nil

	case stLibxcRecord:
		it.Kind = KindLibxcRecord
		if err := d.readRecord(it, "libxc record"); err != nil {
			return nil, err
		}
		where := it.Name()
		t := it.Rec.Type
		switch {
		case t == LibxcPageData:
			pd, err := ParsePageData(it.Rec.Body, d.entries)
			if err != nil {
				return nil, d.fail(it.Offset, where, bad("%v", err))
			}
			d.entries = pd.Entries
			it.Pages = pd
		case t == LibxcEnd:
			d.st = stDone
			if d.hasLibxl {
				d.st = stLibxlRecord
			}
		case t == LibxcCheckpoint:
			if d.hasLibxl {
				d.inCheckpoint = true
				d.st = stLibxlRecord
			}
		case !libxcKnown(t) && t&RecTypeOptional == 0:
			return nil, d.fail(it.Offset, where, bad("unknown mandatory record type %#08x (the restorer aborts on it)", t))
		}
		return it, nil

	case stTrailer:
		eof, err := d.atEOF()
		if err != nil {
			return nil, d.fail(it.Offset, "after libxl END", err)
		}
		if eof {
			d.st = stDone
			return nil, io.EOF
		}
		p, _ := d.br.Peek(len(MsgGo))
		if !strings.HasPrefix(MsgGo, string(p)) {
			return nil, d.fail(it.Offset, "after libxl END", bad("unexpected data %q (not the migrate GO message)", p))
		}
		d.grow(len(MsgGo), 0)
		if err := d.readFull(d.buf); err != nil {
			return nil, d.fail(it.Offset, "migrate GO message", err)
		}
		it.Kind, it.Raw, it.Msg = KindMessage, d.buf, MsgGo
		d.st = stDone
		return it, nil

	case stDone:
		eof, err := d.atEOF()
		if err != nil {
			return nil, d.fail(it.Offset, "end of stream", err)
		}
		if !eof {
			return nil, d.fail(it.Offset, "end of stream", bad("unexpected data after the end of the stream"))
		}
		return nil, io.EOF
	}
	return nil, fmt.Errorf("migstream: decoder in bad state %d", d.st)
}

// readHeader reads a fixed-size header into d.buf, decodes it in order and
// validates it.
func (d *Decoder) readHeader(off int64, where string, size int, order binary.ByteOrder, parse func(*uio.Lexer) error, check func() error) error {
	d.grow(size, 0)
	if err := d.readFull(d.buf); err != nil {
		return d.fail(off, where, err)
	}
	if err := parse(uio.NewLexer(uio.NewBuffer(d.buf), order)); err != nil {
		return d.fail(off, where, bad("%v", err))
	}
	if err := check(); err != nil {
		return d.fail(off, where, bad("%v", err))
	}
	return nil
}

// readRecord reads header, body and padding into d.buf.
func (d *Decoder) readRecord(it *Item, where string) error {
	d.grow(recHeaderSize, 0)
	if err := d.readFull(d.buf); err != nil {
		return d.fail(it.Offset, where+" header", err)
	}
	it.Rec.Type = binary.LittleEndian.Uint32(d.buf[0:])
	n := binary.LittleEndian.Uint32(d.buf[4:])
	switch it.Kind {
	case KindLibxlRecord:
		where = "libxl " + LibxlRecordName(it.Rec.Type) + " record"
	case KindLibxcRecord:
		where = "libxc " + LibxcRecordName(it.Rec.Type) + " record"
	}
	if n > RecLengthMax {
		return d.fail(it.Offset, where, bad("body_length %d exceeds REC_LENGTH_MAX (%d)", n, RecLengthMax))
	}
	if err := d.readBody(recHeaderSize, int(n)); err != nil {
		return d.fail(it.Offset, where, err)
	}
	pad, err := d.ar.Align(recAlign)
	d.off += int64(len(pad))
	if err != nil {
		return d.fail(it.Offset, where+" padding", err)
	}
	body := recHeaderSize + int(n)
	d.grow(body+len(pad), body)
	copy(d.buf[body:], pad)
	it.Raw = d.buf
	it.Rec.Body = d.buf[recHeaderSize:body:body]
	it.Rec.Pad = d.buf[body:]
	return nil
}

// readBody reads n bytes into d.buf[at:at+n], growing the buffer only as data
// arrives, so a huge length in a short input allocates little.
func (d *Decoder) readBody(at, n int) error {
	if cap(d.buf) >= at+n+recAlign {
		d.buf = d.buf[:at+n]
		return d.readFull(d.buf[at:])
	}
	const step = 1 << 20
	have := 0
	for have < n {
		chunk := min(n-have, max(step, have))
		d.grow(at+have+chunk, at+have)
		if err := d.readFull(d.buf[at+have : at+have+chunk]); err != nil {
			return err
		}
		have += chunk
	}
	d.buf = d.buf[:at+n]
	return nil
}

// Encoder writes items. WriteItem copies an item's raw bytes; Encode and the
// typed methods marshal from fields.
type Encoder struct {
	aw  uio.AlignWriter
	off int64
}

// NewEncoder returns an encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{aw: uio.AlignWriter{W: w}} }

// Offset is the number of bytes written.
func (e *Encoder) Offset() int64 { return e.off }

func (e *Encoder) write(p []byte) error {
	n, err := e.aw.Write(p)
	e.off += int64(n)
	return err
}

// Write writes raw bytes (a rewritten item, say).
func (e *Encoder) Write(p []byte) (int, error) {
	err := e.write(p)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteItem writes it.Raw.
func (e *Encoder) WriteItem(it *Item) error {
	if it.Kind == KindLibxlHeader {
		e.aw.N = 0 // padding is counted from the libxl header on
	}
	return e.write(it.Raw)
}

// Encode marshals it from its fields (not Raw).
func (e *Encoder) Encode(it *Item) error {
	switch it.Kind {
	case KindXLHeader:
		return e.XLHeader(&it.XL)
	case KindLibxlHeader:
		return e.LibxlHeader(it.Libxl)
	case KindLibxcHeader:
		return e.LibxcHeader(it.Libxc)
	case KindLibxlRecord, KindLibxcRecord:
		return e.Record(it.Rec)
	case KindMessage:
		return e.write([]byte(it.Msg))
	}
	return fmt.Errorf("migstream: cannot encode item kind %d", it.Kind)
}

// XLHeader writes an xl header and its optional data.
func (e *Encoder) XLHeader(h *XLHeader) error {
	return e.write(uio.ToLittleEndian(h))
}

// LibxlHeader writes a libxl header; padding is counted from here.
func (e *Encoder) LibxlHeader(h LibxlHeader) error {
	e.aw.N = 0
	return e.write(uio.ToBigEndian(&h))
}

// LibxcHeader writes libxc image and domain headers.
func (e *Encoder) LibxcHeader(h LibxcHeader) error {
	return e.write(uio.ToBigEndian(&h))
}

// Record writes a record: header, body, then r.Pad if it is of the right
// length, or zero padding (AlignWriter).
func (e *Encoder) Record(r Record) error {
	var hdr [recHeaderSize]byte
	binary.LittleEndian.PutUint32(hdr[0:], r.Type)
	binary.LittleEndian.PutUint32(hdr[4:], uint32(len(r.Body)))
	if err := e.write(hdr[:]); err != nil {
		return err
	}
	if err := e.write(r.Body); err != nil {
		return err
	}
	if len(r.Pad) == padLen(len(r.Body)) {
		return e.write(r.Pad)
	}
	before := e.aw.N
	err := e.aw.Align(recAlign, 0)
	e.off += int64(e.aw.N - before)
	return err
}

// Message writes a handshake message.
func (e *Encoder) Message(msg string) error { return e.write([]byte(msg)) }

// appendRecord appends an encoded record (zero padding) to b.
func appendRecord(b []byte, typ uint32, body ...[]byte) []byte {
	n := 0
	for _, p := range body {
		n += len(p)
	}
	b = binary.LittleEndian.AppendUint32(b, typ)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	for _, p := range body {
		b = append(b, p...)
	}
	return append(b, make([]byte, padLen(n))...)
}

// Copy decodes src and writes every item unchanged to dst; it returns the
// number of items. It is the identity on valid streams.
func Copy(dst io.Writer, src io.Reader) (int, error) {
	d := NewDecoder(src)
	e := NewEncoder(dst)
	n := 0
	for {
		it, err := d.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if err := e.WriteItem(it); err != nil {
			return n, err
		}
		n++
	}
}
