package migstream

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"sync/atomic"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// Tracker answers whether pfns hold exact copies of disk blocks. It is what
// the transport needs of the device model's page↔sector table:
// *blk.TrackerClient (the service socket) implements it, LocalTracker wraps
// an in-process *blk.Tracker, and tests use fakes. out and ok have at least
// len(pfns) elements; callers ask at most blk.MaxLookup pfns at once.
type Tracker interface {
	Lookup(pfns []uint64, out []blk.Ref, ok []bool) (hits int, err error)
}

// LocalTracker adapts an in-process *blk.Tracker. It answers as the service
// does (Tracker.LookupValid: entries checked against the guest page when the
// tracker has a validator).
type LocalTracker struct{ T *blk.Tracker }

// Lookup implements Tracker.
func (l LocalTracker) Lookup(pfns []uint64, out []blk.Ref, ok []bool) (int, error) {
	return l.T.LookupValid(pfns, out, ok), nil
}

// RewriteEmulatorContext returns the device-model blob to send in place of
// blob (the EMULATOR_CONTEXT body after its emulator header), given exactly
// the pages whose last entry in the stream so far was elided, sorted by pfn.
// Returning blob itself leaves the record unchanged. AttachPageRefs is the
// default.
type RewriteEmulatorContext func(blob []byte, elided []Elided) ([]byte, error)

// ElideOptions configure an Elider.
type ElideOptions struct {
	// Tracker decides which pages are disk copies; nil: none are.
	Tracker Tracker
	// Zero elides all-zero pages too, as zero references (blk.ZeroRef: the
	// destination writes zeros, no disk read), with or without a tracker
	// and after a tracker failure. Without Tracker and Zero the stream
	// passes unchanged.
	Zero bool
	// Debug passes pages (disk copies and zero pages) unchanged after a
	// VERIFY record, so the restorer compares every page that follows (xl
	// migrate --debug).
	Debug bool
	// Rewrite carries the elided set in EMULATOR_CONTEXT; nil means
	// AttachPageRefs.
	Rewrite RewriteEmulatorContext
	// CarriedRefs returns the references an earlier pass left in a blob
	// (nil means: the PAGEREFS section of a container, with the default
	// Rewrite). Those whose pfn's last entry in this stream is an XALLOC
	// that arrived as such are passed on to Rewrite with the elided set, so
	// compacting a compacted stream changes nothing.
	CarriedRefs func(blob []byte) ([]Elided, error)
	// Logf, if set, is told about notable events (tracker failure).
	Logf func(format string, args ...any)
	// Stats, if set, receives the counters (read concurrently by progress).
	Stats *Stats
}

// Stats are the transport's counters; all fields are safe for concurrent
// reads while a filter runs.
type Stats struct {
	BytesIn         atomic.Int64 // stream bytes read
	BytesOut        atomic.Int64 // stream bytes written
	Records         atomic.Int64 // records of both layers
	PageRecords     atomic.Int64 // PAGE_DATA records
	Pages           atomic.Int64 // pfn entries
	DataPages       atomic.Int64 // entries with data in the input
	Elided          atomic.Int64 // entries rewritten to XALLOC: ElidedDisk + ElidedZero
	ElidedDisk      atomic.Int64 // of which equal to their tracked disk block
	ElidedZero      atomic.Int64 // of which all-zero pages
	Looked          atomic.Int64 // pfns asked of the tracker
	Hits            atomic.Int64 // of which tracked
	HashMismatch    atomic.Int64 // tracked, but the page differs from the block
	ElidedFinal     atomic.Int64 // size of the elided set at the end: ElidedFinalDisk + ElidedFinalZero
	ElidedFinalDisk atomic.Int64 // of which disk references
	ElidedFinalZero atomic.Int64 // of which zero references
}

func (st *Stats) storeFinal(s *elidedSet) {
	st.ElidedFinal.Store(int64(s.n))
	st.ElidedFinalDisk.Store(int64(s.n - s.zero))
	st.ElidedFinalZero.Store(int64(s.zero))
}

// Elider rewrites a decoded stream: NOTAB entries whose page hashes to the
// tracked block of their pfn, or (with Zero) whose page is all zeros, become
// XALLOC entries without data, and the EMULATOR_CONTEXT record is given the
// set of pages whose last entry was elided. Everything else passes through
// byte for byte.
type Elider struct {
	opt   ElideOptions
	stats *Stats

	active      bool // a tracker is set, it has not failed and the domain is HVM
	zero        bool // Zero is set and the domain is HVM
	trackerErr  error
	afterVerify bool
	set         elidedSet
	xalloc      map[uint64]struct{} // pfns whose last entry arrived as XALLOC
	setGen      uint64              // bumped on every change of set
	ctxGen      uint64              // setGen when EMULATOR_CONTEXT last carried the set
	everElided  bool

	pfns  []uint64
	idx   []entryPage // per pfn looked up: its entry and data page in the record
	refs  []blk.Ref
	ok    []bool
	elide []int32 // per entry of the current record: index in refs, keepEntry or zeroEntry
	out   []byte
}

type entryPage struct{ entry, page int }

// Values of Elider.elide besides an index in refs.
const (
	keepEntry = -1 // sent as it came
	zeroEntry = -2 // an all-zero page: elided as a zero reference
)

// NewElider returns an Elider.
func NewElider(opt ElideOptions) *Elider {
	if opt.Rewrite == nil {
		opt.Rewrite = AttachPageRefs
		if opt.CarriedRefs == nil {
			opt.CarriedRefs = func(blob []byte) ([]Elided, error) {
				_, refs, err := PageRefs(blob)
				return refs, err
			}
		}
	}
	st := opt.Stats
	if st == nil {
		st = new(Stats)
	}
	return &Elider{opt: opt, stats: st, active: opt.Tracker != nil, zero: opt.Zero}
}

// Stats returns the counters.
func (e *Elider) Stats() *Stats { return e.stats }

// TrackerErr is the tracker failure that stopped elision, if any.
func (e *Elider) TrackerErr() error { return e.trackerErr }

// Elided returns the pages whose last entry so far was elided (frozen at a
// VERIFY record: later entries are compared by the restorer, not written),
// sorted by pfn.
func (e *Elider) Elided() []Elided { return e.set.list() }

func (e *Elider) logf(format string, args ...any) {
	if e.opt.Logf != nil {
		e.opt.Logf(format, args...)
	}
}

// Process returns the bytes to send for it: it.Raw, or a rewrite (which may
// reuse it.Raw's buffer). It errors only when the stream cannot be sent
// correctly: elided pages whose references the stream cannot carry.
func (e *Elider) Process(it *Item) ([]byte, error) {
	st := e.stats
	switch it.Kind {
	case KindLibxcHeader:
		if it.Libxc.DomainType != DomainX86HVM && (e.active || e.zero) {
			e.active, e.zero = false, false
			e.logf("elision off: domain type %s (only HVM pfns are tracked and filled)", DomainTypeName(it.Libxc.DomainType))
		}
	case KindLibxcRecord:
		st.Records.Add(1)
		switch it.Rec.Type {
		case LibxcPageData:
			return e.pageData(it), nil
		case LibxcVerify:
			e.afterVerify = true
		case LibxcEnd:
			st.storeFinal(&e.set)
		}
	case KindLibxlRecord:
		st.Records.Add(1)
		switch it.Rec.Type {
		case LibxlEmulatorContext:
			return e.emulatorContext(it)
		case LibxlEnd:
			if e.everElided && e.ctxGen != e.setGen {
				return nil, &FormatError{Offset: it.Offset, Where: it.Name(),
					Err: fmt.Errorf("%d elided pages but no EMULATOR_CONTEXT after the last change to carry their references", e.set.n)}
			}
			st.storeFinal(&e.set)
		}
	}
	return it.Raw, nil
}

func (e *Elider) pageData(it *Item) []byte {
	st := e.stats
	pd := &it.Pages
	st.PageRecords.Add(1)
	st.Pages.Add(int64(len(pd.Entries)))
	st.DataPages.Add(int64(pd.DataPages))

	e.elide = slices.Grow(e.elide[:0], len(pd.Entries))[:len(pd.Entries)]
	for i := range e.elide {
		e.elide[i] = keepEntry
	}
	var n, zero int
	if (e.active || e.zero) && !(e.opt.Debug && e.afterVerify) {
		n, zero = e.decide(pd)
	}
	if !e.afterVerify {
		// In stream order, so the last entry of a pfn wins.
		for i, ent := range pd.Entries {
			pfn := ent.PFN()
			switch j := e.elide[i]; {
			case j >= 0:
				e.set.put(pfn, e.refs[j])
				e.setGen++
				e.everElided = true
			case j == zeroEntry:
				e.set.put(pfn, blk.ZeroRef())
				e.setGen++
				e.everElided = true
			default:
				if e.set.remove(pfn) {
					e.setGen++
				}
			}
			if ent.Type() == PageXALLOC && e.elide[i] == keepEntry {
				if e.xalloc == nil {
					e.xalloc = make(map[uint64]struct{})
				}
				e.xalloc[pfn] = struct{}{}
			} else if len(e.xalloc) > 0 {
				delete(e.xalloc, pfn)
			}
		}
	}
	if n == 0 {
		return it.Raw
	}
	st.Elided.Add(int64(n))
	st.ElidedDisk.Add(int64(n - zero))
	st.ElidedZero.Add(int64(zero))
	return e.compact(it)
}

// decide marks the NOTAB entries of the record to elide in e.elide: with
// zero elision on, all-zero pages as zeroEntry; with a tracker, the other
// pages are looked up in one batch (split at blk.MaxLookup), the pages of
// tracked pfns hashed, and an entry equal to its block gets the index of
// its reference in e.refs. It returns how many entries it marked, and how
// many of those are zero pages. A tracker failure stops disk elision (zero
// pages are still marked).
func (e *Elider) decide(pd *PageData) (n, zero int) {
	e.pfns, e.idx = e.pfns[:0], e.idx[:0]
	k := 0 // data page index
	for i, ent := range pd.Entries {
		t := ent.Type()
		if t == PageNOTAB {
			if e.zero && isZeroPage(pd.Page(k)) {
				e.elide[i] = zeroEntry
				zero++
			} else if e.active {
				e.pfns = append(e.pfns, ent.PFN())
				e.idx = append(e.idx, entryPage{i, k})
			}
		}
		if t.HasData() {
			k++
		}
	}
	if len(e.pfns) == 0 {
		return zero, zero
	}
	e.refs = slices.Grow(e.refs[:0], len(e.pfns))[:len(e.pfns)]
	e.ok = slices.Grow(e.ok[:0], len(e.pfns))[:len(e.pfns)]
	hits := 0
	for lo := 0; lo < len(e.pfns); lo += blk.MaxLookup {
		hi := min(lo+blk.MaxLookup, len(e.pfns))
		h, err := e.opt.Tracker.Lookup(e.pfns[lo:hi], e.refs[lo:hi], e.ok[lo:hi])
		if err != nil {
			e.trackerErr = err
			e.active = false
			if e.zero {
				e.logf("disk elision off (all-zero pages are still elided): tracker lookup failed: %v", err)
			} else {
				e.logf("elision off: tracker lookup failed: %v", err)
			}
			return zero, zero
		}
		hits += h
	}
	e.stats.Looked.Add(int64(len(e.pfns)))
	e.stats.Hits.Add(int64(hits))
	if hits == 0 {
		return zero, zero
	}
	n = zero
	for j, x := range e.idx {
		if !e.ok[j] {
			continue
		}
		if blk.HashPage(pd.Page(x.page)) == e.refs[j].Hash {
			e.elide[x.entry] = int32(j)
			n++
		} else {
			e.stats.HashMismatch.Add(1)
		}
	}
	return n, zero
}

// compact rewrites the PAGE_DATA record in place: elided entries become
// XALLOC, their pages are squeezed out, body_length shrinks.
func (e *Elider) compact(it *Item) []byte {
	pd := &it.Pages
	raw := it.Raw
	body := raw[recHeaderSize:]
	dataStart := pageDataHdrSize + 8*len(pd.Entries)
	w, r := dataStart, dataStart
	for i, ent := range pd.Entries {
		if e.elide[i] != keepEntry {
			x := MakePFNEntry(ent.PFN(), PageXALLOC)
			pd.Entries[i] = x
			binary.LittleEndian.PutUint64(body[pageDataHdrSize+8*i:], uint64(x))
			r += PageSize // NOTAB always has data
			continue
		}
		if ent.Type().HasData() {
			if w != r {
				copy(body[w:w+PageSize], body[r:r+PageSize])
			}
			w += PageSize
			r += PageSize
		}
	}
	binary.LittleEndian.PutUint32(raw[4:], uint32(w))
	raw = raw[:recHeaderSize+w] // w is a multiple of 8: no padding
	it.Raw = raw
	it.Rec.Body = raw[recHeaderSize:]
	pd.Data = body[dataStart:w]
	pd.DataPages = (w - dataStart) / PageSize
	return raw
}

func (e *Elider) emulatorContext(it *Item) ([]byte, error) {
	if e.opt.Tracker == nil && !e.opt.Zero && !e.everElided {
		return it.Raw, nil
	}
	hdr, blob, err := ParseEmulatorBody(it.Rec.Body)
	if err != nil {
		return nil, &FormatError{Offset: it.Offset, Where: it.Name(), Err: err}
	}
	list := e.set.list()
	if len(e.xalloc) > 0 && e.opt.CarriedRefs != nil {
		old, err := e.opt.CarriedRefs(blob)
		if err != nil {
			return nil, fmt.Errorf("migstream: EMULATOR_CONTEXT at offset %d: reading carried references: %w", it.Offset, err)
		}
		for _, r := range old {
			if _, ok := e.xalloc[r.PFN]; ok {
				list = append(list, r)
			}
		}
		slices.SortFunc(list, func(a, b Elided) int { return cmp.Compare(a.PFN, b.PFN) })
	}
	nb, err := e.opt.Rewrite(blob, list)
	if err != nil {
		return nil, fmt.Errorf("migstream: EMULATOR_CONTEXT at offset %d: rewriting the device-model blob: %w", it.Offset, err)
	}
	e.ctxGen = e.setGen
	if len(nb) == len(blob) && (len(nb) == 0 || &nb[0] == &blob[0]) {
		return it.Raw, nil
	}
	if emulatorHdrSize+len(nb) > RecLengthMax {
		return nil, fmt.Errorf("migstream: EMULATOR_CONTEXT at offset %d: rewritten body of %d bytes exceeds %d", it.Offset, emulatorHdrSize+len(nb), RecLengthMax)
	}
	var eh [emulatorHdrSize]byte
	AppendEmulatorBody(eh[:0], hdr, nil)
	e.out = appendRecord(e.out[:0], it.Rec.Type, eh[:], nb)
	return e.out, nil
}

// elidedSet maps pfn → block for the pages whose last entry was elided, in
// lazily allocated chunks (24 bytes a page).
type elidedSet struct {
	chunks map[uint64]*setChunk
	n      int
	zero   int // of n, zero references
	last   *setChunk
	lastID uint64
}

const setChunkShift = 9

type setSlot struct {
	sector, hash uint64
	gen          uint16
	disk         uint8
	valid        bool
}

type setChunk struct {
	n int
	s [1 << setChunkShift]setSlot
}

func (s *elidedSet) chunk(pfn uint64, alloc bool) *setChunk {
	id := pfn >> setChunkShift
	if s.last != nil && s.lastID == id {
		return s.last
	}
	c := s.chunks[id]
	if c == nil {
		if !alloc {
			return nil
		}
		if s.chunks == nil {
			s.chunks = make(map[uint64]*setChunk)
		}
		c = new(setChunk)
		s.chunks[id] = c
	}
	s.last, s.lastID = c, id
	return c
}

func (s *elidedSet) put(pfn uint64, r blk.Ref) {
	c := s.chunk(pfn, true)
	sl := &c.s[pfn&(1<<setChunkShift-1)]
	if !sl.valid {
		c.n++
		s.n++
	} else if sl.disk == blk.ZeroDisk {
		s.zero--
	}
	if r.IsZeroPage() {
		s.zero++
	}
	*sl = setSlot{sector: r.Sector, hash: r.Hash, gen: r.Gen, disk: r.Disk, valid: true}
}

// remove deletes pfn and reports whether it was there.
func (s *elidedSet) remove(pfn uint64) bool {
	if s.n == 0 {
		return false
	}
	c := s.chunk(pfn, false)
	if c == nil {
		return false
	}
	sl := &c.s[pfn&(1<<setChunkShift-1)]
	if !sl.valid {
		return false
	}
	sl.valid = false
	if sl.disk == blk.ZeroDisk {
		s.zero--
	}
	c.n--
	s.n--
	if c.n == 0 {
		delete(s.chunks, pfn>>setChunkShift)
		s.last = nil
	}
	return true
}

func (s *elidedSet) list() []Elided {
	out := make([]Elided, 0, s.n)
	for _, id := range slices.Sorted(maps.Keys(s.chunks)) {
		c := s.chunks[id]
		for i := range c.s {
			if sl := &c.s[i]; sl.valid {
				out = append(out, Elided{PFN: id<<setChunkShift | uint64(i),
					Ref: blk.Ref{Disk: sl.disk, Sector: sl.sector, Hash: sl.hash, Gen: sl.gen}})
			}
		}
	}
	return out
}
