// Package streamtest builds synthetic xl/libxl/libxc migration streams for
// tests, fuzz seeds and benchmarks, and provides a fake tracker.
package streamtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"

	"github.com/u-root/uio/uio"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
)

// FakeTracker is an in-memory migstream.Tracker.
type FakeTracker struct {
	mu   sync.Mutex
	Refs map[uint64]blk.Ref
	// Calls counts Lookup calls; MaxBatch is the largest batch seen.
	Calls, MaxBatch int
	// FailAfter > 0 makes the call with that number (1-based) and all later
	// ones fail.
	FailAfter int
}

// NewFakeTracker returns an empty fake.
func NewFakeTracker() *FakeTracker { return &FakeTracker{Refs: map[uint64]blk.Ref{}} }

// ErrFake is the error of a failing FakeTracker.
var ErrFake = errors.New("fake tracker failure")

// Lookup implements migstream.Tracker.
func (f *FakeTracker) Lookup(pfns []uint64, out []blk.Ref, ok []bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	f.MaxBatch = max(f.MaxBatch, len(pfns))
	if f.FailAfter > 0 && f.Calls >= f.FailAfter {
		return 0, ErrFake
	}
	hits := 0
	for i, p := range pfns {
		r, found := f.Refs[p]
		ok[i] = found
		if found {
			out[i] = r
			hits++
		}
	}
	return hits, nil
}

// Builder writes a stream item by item.
type Builder struct {
	buf bytes.Buffer
	enc *ms.Encoder
}

// NewBuilder returns an empty builder.
func NewBuilder() *Builder {
	b := &Builder{}
	b.enc = ms.NewEncoder(&b.buf)
	return b
}

// Bytes returns the stream so far.
func (b *Builder) Bytes() []byte { return b.buf.Bytes() }

// XLHeader writes xl's header with a JSON config.
func (b *Builder) XLHeader(config string) *Builder {
	h := ms.NewXLHeader([]byte(config))
	b.enc.XLHeader(&h)
	return b
}

// LibxlHeader writes the libxl header.
func (b *Builder) LibxlHeader() *Builder { b.enc.LibxlHeader(ms.NewLibxlHeader()); return b }

// LibxlRecord writes a libxl record.
func (b *Builder) LibxlRecord(t uint32, body []byte) *Builder {
	b.enc.Record(ms.Record{Type: t, Body: body})
	return b
}

// LibxcHeader writes libxc headers for an HVM guest of the given version.
func (b *Builder) LibxcHeader(version uint32) *Builder {
	h := ms.NewLibxcHeader()
	h.Version = version
	b.enc.LibxcHeader(h)
	return b
}

// LibxcRecord writes a libxc record.
func (b *Builder) LibxcRecord(t uint32, body []byte) *Builder {
	b.enc.Record(ms.Record{Type: t, Body: body})
	return b
}

// PageData writes a PAGE_DATA record; pages[k] belongs to the k-th entry
// with data.
func (b *Builder) PageData(entries []ms.PFNEntry, pages [][]byte) *Builder {
	return b.LibxcRecord(ms.LibxcPageData, ms.AppendPageData(nil, entries, pages))
}

// EmulatorContext writes EMULATOR_CONTEXT (qemu-upstream, index 0).
func (b *Builder) EmulatorContext(blob []byte) *Builder {
	return b.LibxlRecord(ms.LibxlEmulatorContext,
		ms.AppendEmulatorBody(nil, ms.EmulatorHeader{ID: ms.EmulatorQemuUpstream}, blob))
}

// Message writes a handshake message.
func (b *Builder) Message(m string) *Builder { b.enc.Message(m); return b }

// Config describes a generated HVM stream. Zero fields take defaults;
// negative ones mean none.
type Config struct {
	Seed     uint64
	Pages    int     // guest pfns 0..Pages-1 (default 256)
	Rounds   int     // live rounds after the first full pass (default 2; -1 = none)
	Batch    int     // pfns per PAGE_DATA record (default 64)
	Tracked  float64 // fraction of normal pages the tracker knows (default 0.5)
	Stale    float64 // fraction of tracked pages sent with other data (default 0.1)
	Dirty    float64 // fraction of pages resent in each later round (default 0.25)
	Holes    float64 // XTAB pages (default 0.05)
	Broken   float64 // BROKEN pages (default 0.01)
	XAlloc   float64 // XALLOC pages (default 0.02)
	PVTab    float64 // L1TAB|LPINTAB pages with data, codec coverage (default 0.01)
	Dup      float64 // chance a batch repeats a pfn (default 0.05)
	Zero     float64 // fraction of pages with data sent all-zero (default and 0: none)
	Verify   bool    // VERIFY, then every page again
	Migrate  bool    // the GO message after libxl END
	NoXL     bool    // start at the libxl header
	Xenstore bool    // an EMULATOR_XENSTORE_DATA record
	Version  uint32  // libxc version (default 3)
	Blob     []byte  // EMULATOR_CONTEXT payload (default 256 random bytes)
}

// Entry is one pfn entry of a generated stream, in stream order.
type Entry struct {
	PFN         uint64
	Type        ms.PageType
	Data        []byte // nil for types without data
	AfterVerify bool
}

// Stream is a generated stream with what tests need to predict the result.
type Stream struct {
	Bytes   []byte
	Tracker *FakeTracker
	Entries []Entry
	Blob    []byte
	Config  Config
	// Records holds, per PAGE_DATA record, the index range into Entries.
	Records [][2]int
}

// Block is the content of 4 KiB block blockNo of disk.
func Block(disk uint8, blockNo uint64) []byte {
	p := make([]byte, ms.PageSize)
	r := rand.NewPCG(uint64(disk)<<56|blockNo, 0x5eed)
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	return p
}

func randPage(r *rand.Rand) []byte {
	p := make([]byte, ms.PageSize)
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.Uint64())
	}
	if r.IntN(8) == 0 {
		clear(p[r.IntN(len(p)):]) // partly zero pages, like real memory
	}
	return p
}

func def[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// Generate builds a stream in the order a 4.17 HVM save writes it (§1.6 of
// the reference): headers, CPUID/MSR policy, STATIC_DATA_END, PAGE_DATA
// rounds, [VERIFY + all pages], TSC_INFO, HVM_CONTEXT, HVM_PARAMS, END, then
// libxl [EMULATOR_XENSTORE_DATA], EMULATOR_CONTEXT, END [, GO].
func Generate(c Config) *Stream {
	def(&c.Pages, 256)
	def(&c.Rounds, 2)
	def(&c.Batch, 64)
	def(&c.Tracked, 0.5)
	def(&c.Stale, 0.1)
	def(&c.Dirty, 0.25)
	def(&c.Holes, 0.05)
	def(&c.Broken, 0.01)
	def(&c.XAlloc, 0.02)
	def(&c.PVTab, 0.01)
	def(&c.Dup, 0.05)
	def(&c.Version, 3)
	for _, f := range []*float64{&c.Tracked, &c.Stale, &c.Dirty, &c.Holes, &c.Broken, &c.XAlloc, &c.PVTab, &c.Dup} {
		*f = max(*f, 0)
	}
	r := rand.New(rand.NewPCG(c.Seed, 0x6d6967))
	if c.Blob == nil {
		c.Blob = make([]byte, 256)
		for i := range c.Blob {
			c.Blob[i] = byte(r.Uint32())
		}
	}
	s := &Stream{Tracker: NewFakeTracker(), Blob: c.Blob, Config: c}

	types := make([]ms.PageType, c.Pages)
	for pfn := range types {
		x := r.Float64()
		switch {
		case x < c.Holes:
			types[pfn] = ms.PageXTAB
		case x < c.Holes+c.Broken:
			types[pfn] = ms.PageBROKEN
		case x < c.Holes+c.Broken+c.XAlloc:
			types[pfn] = ms.PageXALLOC
		case x < c.Holes+c.Broken+c.XAlloc+c.PVTab:
			types[pfn] = ms.PageL1TAB | ms.PageLPIN
		default:
			types[pfn] = ms.PageNOTAB
			if r.Float64() < c.Tracked {
				disk := uint8(r.IntN(2))
				blockNo := uint64(pfn)*3 + uint64(disk)*1000003
				s.Tracker.Refs[uint64(pfn)] = blk.Ref{Disk: disk, Sector: blockNo * 8,
					Hash: blk.HashPage(Block(disk, blockNo)), Gen: uint16(r.IntN(100))}
			}
		}
	}
	content := func(pfn int) []byte {
		if !types[pfn].HasData() {
			return nil
		}
		if c.Zero > 0 && r.Float64() < c.Zero {
			return make([]byte, ms.PageSize)
		}
		if ref, ok := s.Tracker.Refs[uint64(pfn)]; ok && r.Float64() >= c.Stale {
			return Block(ref.Disk, ref.Sector/8)
		}
		return randPage(r)
	}

	b := NewBuilder()
	if !c.NoXL {
		b.XLHeader(`{"c_info":{"type":"hvm","name":"streamtest"},"b_info":{"max_memkb":1024}}`)
	}
	b.LibxlHeader()
	b.LibxlRecord(ms.LibxlLibxcContext, nil)
	b.LibxcHeader(c.Version)
	if c.Version >= 3 {
		var cpuid []byte
		for leaf := uint32(0); leaf < 4; leaf++ {
			for _, v := range []uint32{leaf, 0xffffffff, r.Uint32(), r.Uint32(), r.Uint32(), r.Uint32()} {
				cpuid = binary.LittleEndian.AppendUint32(cpuid, v)
			}
		}
		b.LibxcRecord(ms.LibxcX86CPUIDPolicy, cpuid)
		var msr []byte
		msr = binary.LittleEndian.AppendUint32(msr, 0xce)
		msr = binary.LittleEndian.AppendUint32(msr, 0)
		msr = binary.LittleEndian.AppendUint64(msr, r.Uint64())
		b.LibxcRecord(ms.LibxcX86MSRPolicy, msr)
		b.LibxcRecord(ms.LibxcStaticDataEnd, nil)
	}

	send := func(pfns []int, afterVerify bool) {
		for lo := 0; lo < len(pfns); lo += c.Batch {
			batch := append([]int(nil), pfns[lo:min(lo+c.Batch, len(pfns))]...)
			if len(batch) > 1 && r.Float64() < c.Dup {
				batch = append(batch, batch[r.IntN(len(batch))])
			}
			var entries []ms.PFNEntry
			var pages [][]byte
			first := len(s.Entries)
			for _, pfn := range batch {
				t := types[pfn]
				d := content(pfn)
				entries = append(entries, ms.MakePFNEntry(uint64(pfn), t))
				if d != nil {
					pages = append(pages, d)
				}
				s.Entries = append(s.Entries, Entry{PFN: uint64(pfn), Type: t, Data: d, AfterVerify: afterVerify})
			}
			s.Records = append(s.Records, [2]int{first, len(s.Entries)})
			b.PageData(entries, pages)
		}
	}
	all := make([]int, c.Pages)
	for i := range all {
		all[i] = i
	}
	send(all, false)
	for round := 0; round < c.Rounds; round++ {
		var dirty []int
		for pfn := range c.Pages {
			if r.Float64() < c.Dirty {
				dirty = append(dirty, pfn)
			}
		}
		send(dirty, false)
	}
	if c.Verify {
		b.LibxcRecord(ms.LibxcVerify, nil)
		send(all, true)
	}
	tsc := ms.TSCInfo{Mode: 0, KHz: 2_000_000, Nsec: r.Uint64() >> 8, Incarnation: 1}
	b.LibxcRecord(ms.LibxcX86TSCInfo, uio.ToLittleEndian(&tsc))
	ctx := make([]byte, 1000+r.IntN(100)) // not a multiple of 8: padded
	for i := range ctx {
		ctx[i] = byte(r.Uint32())
	}
	b.LibxcRecord(ms.LibxcHVMContext, ctx)
	var params ms.HVMParams
	for _, p := range [][2]uint64{{1, 0xfeffc}, {5, 0xfeff0}, {6, 0xfeff1}, {17, 0xfeffb}, {19, 1}, {38, 1}} {
		params.Params = append(params.Params, ms.HVMParam{Index: p[0], Value: p[1]})
	}
	b.LibxcRecord(ms.LibxcHVMParams, uio.ToLittleEndian(&params))
	b.LibxcRecord(ms.LibxcEnd, nil)
	if c.Xenstore {
		kv := []byte("physmap/0/start_addr\x00f0000000\x00physmap/0/size\x00800000\x00")
		b.LibxlRecord(ms.LibxlEmulatorXenstoreData,
			ms.AppendEmulatorBody(nil, ms.EmulatorHeader{ID: ms.EmulatorQemuUpstream}, kv))
	}
	b.EmulatorContext(c.Blob)
	b.LibxlRecord(ms.LibxlEnd, nil)
	if c.Migrate && !c.NoXL {
		b.Message(ms.MsgGo)
	}
	s.Bytes = b.Bytes()
	return s
}

// ExpectedElided is the oracle for elision with s.Tracker: walking the
// entries in order, a NOTAB entry whose data hashes to its pfn's tracked
// block is elided and enters the set; any other entry removes its pfn; after
// VERIFY the set no longer changes (and nothing is elided if debug).
func (s *Stream) ExpectedElided(debug bool) (set map[uint64]blk.Ref, elided []bool) {
	return s.ExpectedElidedZero(debug, false)
}

// ExpectedElidedZero is ExpectedElided with zero-page elision
// (ElideOptions.Zero) if zero: an all-zero NOTAB page is elided as a zero
// reference (blk.ZeroRef), whatever the tracker says.
func (s *Stream) ExpectedElidedZero(debug, zero bool) (set map[uint64]blk.Ref, elided []bool) {
	set = map[uint64]blk.Ref{}
	elided = make([]bool, len(s.Entries))
	for i, e := range s.Entries {
		ref, ok := s.Tracker.Refs[e.PFN]
		may := e.Type == ms.PageNOTAB && !(debug && e.AfterVerify)
		if zero && may && bytes.Equal(e.Data, make([]byte, ms.PageSize)) {
			ref, ok = blk.ZeroRef(), true
		} else if ok {
			ok = blk.HashPage(e.Data) == ref.Hash
		}
		el := may && ok
		elided[i] = el
		if e.AfterVerify {
			continue
		}
		if el {
			set[e.PFN] = ref
		} else {
			delete(set, e.PFN)
		}
	}
	return set, elided
}

// Rebuild re-emits the stream with the entries marked in elide rewritten to
// XALLOC without data and the EMULATOR_CONTEXT payload replaced by blob: the
// stream the transport must produce.
func (s *Stream) Rebuild(elide []bool, blob []byte) []byte {
	d := ms.NewDecoder(bytes.NewReader(s.Bytes))
	var out bytes.Buffer
	enc := ms.NewEncoder(&out)
	rec := 0
	for {
		it, err := d.Next()
		if err != nil {
			break
		}
		switch {
		case it.IsLibxc(ms.LibxcPageData):
			lo, hi := s.Records[rec][0], s.Records[rec][1]
			rec++
			var entries []ms.PFNEntry
			var pages [][]byte
			for i := lo; i < hi; i++ {
				e := s.Entries[i]
				if elide[i] {
					entries = append(entries, ms.MakePFNEntry(e.PFN, ms.PageXALLOC))
					continue
				}
				entries = append(entries, ms.MakePFNEntry(e.PFN, e.Type))
				if e.Data != nil {
					pages = append(pages, e.Data)
				}
			}
			enc.Record(ms.Record{Type: ms.LibxcPageData, Body: ms.AppendPageData(nil, entries, pages)})
		case it.IsLibxl(ms.LibxlEmulatorContext):
			h, _, _ := ms.ParseEmulatorBody(it.Rec.Body)
			enc.Record(ms.Record{Type: ms.LibxlEmulatorContext, Body: ms.AppendEmulatorBody(nil, h, blob)})
		default:
			enc.Encode(it)
		}
	}
	return out.Bytes()
}

// OnePassTracked is the transport benchmarks' stream: 32 MiB in one pass of
// MaxBatchSize-page records (what libxc writes), every page tracked and equal
// to its block.
func OnePassTracked() *Stream {
	return Generate(Config{Seed: 42, Pages: 8192, Batch: ms.MaxBatchSize, Rounds: -1,
		Tracked: 1, Stale: -1, Holes: -1, Broken: -1, XAlloc: -1, PVTab: -1, Dup: -1})
}

// BlkTracker returns a real blk.Tracker holding s's references, each recorded
// as the disk read of its block into its pfn (what the device model does),
// so it can be served on a socket like the device model's.
func (s *Stream) BlkTracker() *blk.Tracker {
	bt := blk.NewTracker(blk.TrackerConfig{})
	for pfn, r := range s.Tracker.Refs {
		data := Block(r.Disk, r.Sector/8)
		bt.DiskToGuest(bt.Begin(), r.Disk, int64(r.Sector)*512, []blk.Segment{{GPA: pfn << 12, Len: ms.PageSize}}, data)
	}
	return bt
}

// Sink copies what is written into a ring buffer, as write(2) to a pipe or
// socket copies it, so a benchmark pays for the output it produces.
type Sink struct {
	buf []byte
	off int
}

// NewSink returns a Sink with a ring of size bytes.
func NewSink(size int) *Sink { return &Sink{buf: make([]byte, size)} }

func (m *Sink) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if m.off == len(m.buf) {
			m.off = 0
		}
		c := copy(m.buf[m.off:], p)
		m.off += c
		p = p[c:]
	}
	return n, nil
}
