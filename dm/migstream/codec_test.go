package migstream_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"slices"
	"strings"
	"testing"

	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream/streamtest"
)

func TestMessageLengths(t *testing.T) {
	for _, c := range []struct {
		msg  string
		want int
	}{{ms.MsgBanner, 54}, {ms.MsgReady, 34}, {ms.MsgGo, 44}, {ms.MsgReport, 39}, {ms.XLMagic, 32}} {
		if len(c.msg) != c.want {
			t.Errorf("%q: %d bytes, want %d", c.msg, len(c.msg), c.want)
		}
	}
}

func TestPageTypes(t *testing.T) {
	data := map[ms.PageType]bool{0: true, 1: true, 2: true, 3: true, 4: true, 9: true, 10: true, 11: true, 12: true}
	for ty := ms.PageType(0); ty < 16; ty++ {
		if got := ty.HasData(); got != data[ty] {
			t.Errorf("type %d HasData %v", ty, got)
		}
		if got, want := ty.Valid(), ty < 5 || ty > 8; got != want {
			t.Errorf("type %d Valid %v", ty, got)
		}
	}
	e := ms.MakePFNEntry(0x12345, ms.PageXALLOC)
	if uint64(e) != 0xE000000000012345 || e.PFN() != 0x12345 || e.Type() != ms.PageXALLOC {
		t.Errorf("entry %#x", uint64(e))
	}
}

// configs covers the stream shapes the codec must handle.
var configs = []streamtest.Config{
	{Seed: 1},
	{Seed: 2, Migrate: true, Verify: true, Xenstore: true},
	{Seed: 3, NoXL: true, Version: 2},
	{Seed: 4, Pages: 300, Batch: 1024, Rounds: 4},
	{Seed: 5, Rounds: -1, Pages: 17, Batch: 5, Tracked: 1, Stale: 0.0001, Dup: 0.9},
}

func decodeAll(t testing.TB, b []byte) []ms.Item {
	t.Helper()
	d := ms.NewDecoder(bytes.NewReader(b))
	var items []ms.Item
	for {
		it, err := d.Next()
		if err == io.EOF {
			return items
		}
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		c := *it // deep: the decoder reuses its buffers
		c.Raw = bytes.Clone(it.Raw)
		c.XL.OptData = bytes.Clone(it.XL.OptData)
		c.Rec.Body = bytes.Clone(it.Rec.Body)
		c.Rec.Pad = bytes.Clone(it.Rec.Pad)
		c.Pages.Entries = slices.Clone(it.Pages.Entries)
		c.Pages.Data = bytes.Clone(it.Pages.Data)
		items = append(items, c)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, c := range configs {
		s := streamtest.Generate(c)
		// Raw copy.
		var out bytes.Buffer
		if _, err := ms.Copy(&out, bytes.NewReader(s.Bytes)); err != nil {
			t.Fatalf("seed %d: copy: %v", c.Seed, err)
		}
		if !bytes.Equal(out.Bytes(), s.Bytes) {
			t.Fatalf("seed %d: copy differs", c.Seed)
		}
		// Re-encoding from the decoded fields.
		out.Reset()
		enc := ms.NewEncoder(&out)
		d := ms.NewDecoder(bytes.NewReader(s.Bytes))
		for {
			it, err := d.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := enc.Encode(it); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(out.Bytes(), s.Bytes) {
			t.Fatalf("seed %d: re-encoding differs", c.Seed)
		}
		// Filter without a tracker is the identity too.
		out.Reset()
		if _, err := ms.Filter(&out, bytes.NewReader(s.Bytes), ms.FilterOptions{Check: true}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), s.Bytes) {
			t.Fatalf("seed %d: filter without tracker differs", c.Seed)
		}
		if _, err := ms.Verify(bytes.NewReader(s.Bytes)); err != nil {
			t.Fatalf("seed %d: verify: %v", c.Seed, err)
		}
	}
}

// Items come in the documented order with the expected parsed fields.
func TestDecodeStructure(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 9, Migrate: true, Verify: true})
	items := decodeAll(t, s.Bytes)
	var seq []string
	for i := range items {
		it := &items[i]
		name := it.Name()
		if len(seq) > 0 && seq[len(seq)-1] == name && it.IsLibxc(ms.LibxcPageData) {
			continue
		}
		seq = append(seq, name)
	}
	want := []string{"xl header", "libxl header", "libxl LIBXC_CONTEXT record", "libxc header",
		"libxc X86_CPUID_POLICY record", "libxc X86_MSR_POLICY record", "libxc STATIC_DATA_END record",
		"libxc PAGE_DATA record", "libxc VERIFY record", "libxc PAGE_DATA record",
		"libxc X86_TSC_INFO record", "libxc HVM_CONTEXT record", "libxc HVM_PARAMS record", "libxc END record",
		"libxl EMULATOR_CONTEXT record", "libxl END record", "message"}
	if strings.Join(seq, "|") != strings.Join(want, "|") {
		t.Fatalf("sequence\n got %q\nwant %q", seq, want)
	}
	if cfg := string(items[0].XL.Config()); !strings.Contains(cfg, `"name":"streamtest"`) {
		t.Errorf("config %q", cfg)
	}
	if items[3].Libxc.Version != 3 || items[3].Libxc.DomainType != ms.DomainX86HVM {
		t.Errorf("libxc header %+v", items[3].Libxc)
	}
	// Offsets are contiguous.
	var off int64
	for i := range items {
		if items[i].Offset != off {
			t.Fatalf("item %d (%s) at %d, want %d", i, items[i].Name(), items[i].Offset, off)
		}
		off += int64(len(items[i].Raw))
	}
	if off != int64(len(s.Bytes)) {
		t.Fatalf("items cover %d of %d bytes", off, len(s.Bytes))
	}
}

// put patches a little-endian u32/u64 at off.
func put32(b []byte, off int, v uint32) []byte {
	c := bytes.Clone(b)
	binary.LittleEndian.PutUint32(c[off:], v)
	return c
}

// small builds a minimal valid xl stream with one PAGE_DATA record and
// returns it with the offsets of interesting fields.
type smallStream struct {
	b                     []byte
	libxl, libxc, pd, emu int // offsets of libxl header, libxc header, PAGE_DATA record, EMULATOR_CONTEXT record
}

func small(entries []ms.PFNEntry, pages [][]byte) smallStream {
	var s smallStream
	b := streamtest.NewBuilder().XLHeader(`{"c_info":{"name":"x"}}`)
	s.libxl = len(b.Bytes())
	b.LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil)
	s.libxc = len(b.Bytes())
	b.LibxcHeader(3).LibxcRecord(ms.LibxcStaticDataEnd, nil)
	s.pd = len(b.Bytes())
	b.PageData(entries, pages)
	b.LibxcRecord(ms.LibxcHVMContext, []byte("ctx")).LibxcRecord(ms.LibxcEnd, nil)
	s.emu = len(b.Bytes())
	b.EmulatorContext([]byte("blob")).LibxlRecord(ms.LibxlEnd, nil)
	s.b = b.Bytes()
	return s
}

func page(v byte) []byte { return bytes.Repeat([]byte{v}, ms.PageSize) }

func TestDecodeErrors(t *testing.T) {
	s := small([]ms.PFNEntry{ms.MakePFNEntry(1, ms.PageNOTAB), ms.MakePFNEntry(2, ms.PageXTAB)}, [][]byte{page(1)})
	if _, err := ms.Verify(bytes.NewReader(s.b)); err != nil {
		t.Fatal(err)
	}
	pdBody := s.pd + 8
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"empty", nil, "truncated"},
		{"unknown format", []byte("garbage!garbage!"), "unknown format"},
		{"xl magic", func() []byte { c := bytes.Clone(s.b); c[20] = 'X'; return c }(), "xl header at offset 0"},
		{"xl big-endian", func() []byte { c := bytes.Clone(s.b); binary.BigEndian.PutUint32(c[32:], ms.XLByteOrder); return c }(), "big-endian xl header"},
		{"xl mandatory", put32(s.b, 36, 7), "unknown mandatory flags 0x4"},
		{"xl legacy", put32(s.b, 36, 1), "legacy"},
		{"xl optdata", put32(s.b, 48, 1000), "config length 1000"},
		{"libxl ident", func() []byte { c := bytes.Clone(s.b); c[s.libxl] = 'X'; return c }(), "libxl header"},
		{"libxl version", func() []byte { c := bytes.Clone(s.b); binary.BigEndian.PutUint32(c[s.libxl+8:], 3); return c }(), "version 3 not supported"},
		{"libxl BE", func() []byte { c := bytes.Clone(s.b); binary.BigEndian.PutUint32(c[s.libxl+12:], 1); return c }(), "big-endian libxl"},
		{"libxc marker", func() []byte { c := bytes.Clone(s.b); c[s.libxc] = 0; return c }(), "bad marker"},
		{"libxc id", func() []byte { c := bytes.Clone(s.b); c[s.libxc+8] = 0; return c }(), "bad id"},
		{"libxc version", func() []byte { c := bytes.Clone(s.b); binary.BigEndian.PutUint32(c[s.libxc+12:], 4); return c }(), "version 4 not supported"},
		{"libxc BE", func() []byte { c := bytes.Clone(s.b); binary.BigEndian.PutUint16(c[s.libxc+16:], 1); return c }(), "big-endian libxc"},
		{"page shift", func() []byte { c := bytes.Clone(s.b); binary.LittleEndian.PutUint16(c[s.libxc+28:], 13); return c }(), "page_shift 13"},
		{"rec too long", put32(s.b, s.pd+4, ms.RecLengthMax+1), "libxc PAGE_DATA record at offset"},
		{"count 0", put32(s.b, pdBody, 0), "count 0"},
		{"count large", put32(s.b, pdBody, 1000), "count 1000 needs 8008 bytes"},
		{"count small", put32(s.b, pdBody, 1), "count 1 with 1 data pages needs body length 4112, got 4120"},
		{"reserved bits", func() []byte {
			c := bytes.Clone(s.b)
			binary.LittleEndian.PutUint64(c[pdBody+8:], 1|1<<55)
			return c
		}(), "pfn[0] = 0x0080000000000001 has reserved bits"},
		{"type 5", func() []byte {
			c := bytes.Clone(s.b)
			binary.LittleEndian.PutUint64(c[pdBody+16:], 2|5<<60)
			return c
		}(), "invalid page type 5"},
		{"type with data", func() []byte {
			c := bytes.Clone(s.b)
			binary.LittleEndian.PutUint64(c[pdBody+16:], 2|1<<60) // XTAB → L1TAB needs data
			return c
		}(), "count 2 with 2 data pages"},
		{"unknown libxc", put32(s.b, s.pd, 0x13), "unknown mandatory record type 0x00000013"},
		{"unknown libxl", put32(s.b, s.emu, 0x80000001), "unrecognised libxl record type 0x80000001"},
		{"short emulator", func() []byte {
			b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlEmulatorContext, []byte{1, 2, 3})
			return b.Bytes()
		}(), "shorter than the 8-byte emulator header"},
		{"checkpoint end", func() []byte {
			return streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlCheckpointEnd, nil).Bytes()
		}(), "CHECKPOINT_END outside a checkpoint"},
		{"trailing", append(bytes.Clone(s.b), "junk"...), "unexpected data"},
		{"trailing GO", append(append(bytes.Clone(s.b), ms.MsgGo...), 0), "unexpected data after the end"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ms.Copy(io.Discard, bytes.NewReader(c.b))
			if err == nil {
				t.Fatalf("no error")
			}
			var fe *ms.FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("not a FormatError: %v", err)
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "offset") {
				t.Fatalf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
}

// Every truncation of a valid stream is a FormatError wrapping
// io.ErrUnexpectedEOF (the GO message is optional, so a cut right after the
// libxl END is a complete stream).
func TestTruncation(t *testing.T) {
	s := small([]ms.PFNEntry{ms.MakePFNEntry(1, ms.PageNOTAB), ms.MakePFNEntry(2, ms.PageXTAB)}, [][]byte{page(1)})
	full := append(bytes.Clone(s.b), ms.MsgGo...)
	for n := 0; n < len(full); n++ {
		if n > 200 && n < len(full)-300 && n%97 != 0 {
			continue
		}
		_, err := ms.Copy(io.Discard, bytes.NewReader(full[:n]))
		if n == len(s.b) {
			if err != nil {
				t.Fatalf("cut at the libxl END: %v", err)
			}
			continue
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
}

// Non-zero padding is preserved (the restorer ignores it), and the checker
// rejects it (the verifier does).
func TestPaddingPreserved(t *testing.T) {
	b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).
		LibxcRecord(ms.LibxcHVMContext, []byte("abc")).LibxcRecord(ms.LibxcEnd, nil).LibxlRecord(ms.LibxlEnd, nil).Bytes()
	b = bytes.Clone(b)
	// HVM_CONTEXT at 16+8+40; body at +8, padding after 3 bytes.
	padAt := 16 + 8 + 40 + 8 + 3
	b[padAt+2] = 0x5a
	var out bytes.Buffer
	if _, err := ms.Copy(&out, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), b) {
		t.Fatal("padding not preserved")
	}
	if _, err := ms.Verify(bytes.NewReader(b)); err == nil || !strings.Contains(err.Error(), "padding") {
		t.Fatalf("verify: %v", err)
	}
}

// A checkpointed (Remus) stream: libxl records inline after each libxc
// CHECKPOINT, up to CHECKPOINT_END.
func TestCheckpointNesting(t *testing.T) {
	b := streamtest.NewBuilder().XLHeader("").LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).
		LibxcRecord(ms.LibxcStaticDataEnd, nil).
		PageData([]ms.PFNEntry{ms.MakePFNEntry(1, ms.PageNOTAB)}, [][]byte{page(1)}).
		LibxcRecord(ms.LibxcCheckpoint, nil).
		EmulatorContext([]byte("cp1")).LibxlRecord(ms.LibxlCheckpointEnd, nil).
		PageData([]ms.PFNEntry{ms.MakePFNEntry(1, ms.PageNOTAB)}, [][]byte{page(2)}).
		LibxcRecord(ms.LibxcCheckpoint, nil).
		EmulatorContext([]byte("cp2")).LibxlRecord(ms.LibxlCheckpointEnd, nil).
		LibxcRecord(ms.LibxcEnd, nil).LibxlRecord(ms.LibxlEnd, nil).Bytes()
	items := decodeAll(t, b)
	var kinds []string
	for i := range items {
		kinds = append(kinds, items[i].Name())
	}
	if got := strings.Join(kinds, ","); strings.Count(got, "libxl EMULATOR_CONTEXT") != 2 || !strings.HasSuffix(got, "libxc END record,libxl END record") {
		t.Fatalf("items %s", got)
	}
	if _, err := ms.Verify(bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
}

// Optional libxc records pass; the checker (like the verifier) rejects them.
func TestOptionalRecord(t *testing.T) {
	b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(3).
		LibxcRecord(0x80000123, []byte("future")).LibxcRecord(ms.LibxcEnd, nil).LibxlRecord(ms.LibxlEnd, nil).Bytes()
	var out bytes.Buffer
	if _, err := ms.Copy(&out, bytes.NewReader(b)); err != nil || !bytes.Equal(out.Bytes(), b) {
		t.Fatalf("copy: %v", err)
	}
	if _, err := ms.Verify(bytes.NewReader(b)); err == nil || !strings.Contains(err.Error(), "unrecognised record type 0x80000123") {
		t.Fatalf("verify: %v", err)
	}
}

// A bare libxc stream (verify-stream-v2 -f libxc).
func TestBareLibxc(t *testing.T) {
	b := streamtest.NewBuilder().LibxcHeader(3).LibxcRecord(ms.LibxcStaticDataEnd, nil).
		PageData([]ms.PFNEntry{ms.MakePFNEntry(7, ms.PageXTAB)}, nil).LibxcRecord(ms.LibxcEnd, nil).Bytes()
	var out bytes.Buffer
	if _, err := ms.Copy(&out, bytes.NewReader(b)); err != nil || !bytes.Equal(out.Bytes(), b) {
		t.Fatalf("copy: %v", err)
	}
	sum, err := ms.Verify(bytes.NewReader(b))
	if err != nil || sum.Pages != 1 || sum.PagesByType[ms.PageXTAB] != 1 {
		t.Fatalf("verify: %+v %v", sum, err)
	}
}

// A huge announced length with little data allocates little and fails.
func TestHugeLengthShortInput(t *testing.T) {
	b := streamtest.NewBuilder().LibxlHeader().Bytes()
	b = binary.LittleEndian.AppendUint32(b, ms.LibxlEmulatorContext)
	b = binary.LittleEndian.AppendUint32(b, ms.RecLengthMax)
	b = append(b, make([]byte, 100)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ms.Copy(io.Discard, bytes.NewReader(b))
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatal(err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 8<<20 {
		t.Fatalf("a 128 MiB length with 100 bytes of data allocated %d bytes", n)
	}
}
