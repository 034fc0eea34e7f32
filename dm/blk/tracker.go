package blk

// The page↔sector tracker: which guest pages hold exact copies of which 4 KiB
// disk blocks. Design and correctness rules: docs/tracker.md and
// migration-paging.md §8.2 in the shared reference.
//
// Layout (≈ 21 bytes per tracked page):
//   - forward: pfn → slot{key, hash} in lazily allocated chunks of 256 slots,
//     so a pfn's entry is found by indexing, with no per-entry allocation;
//   - reverse: an open-addressing table of pfn+1 (uint32) hashed by
//     (disk, block), linear probing with backward-shift deletion; every pfn
//     that references a block sits in that block's probe run.
//
// Concurrency: one mutex; lookups take it per batch, I/O per transfer.
// Race rule: a transfer is recorded only if no guest write overlapping its
// disk range was in flight at any moment between the transfer's Begin and its
// record; otherwise its pages are dropped (never recorded with data that may
// not match the disk).

import (
	"fmt"
	"log/slog"
	"math/bits"
	"sort"
	"sync"

	"github.com/zeebo/xxh3"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

const (
	// BlockSize is the tracking granularity on disk: one guest page.
	BlockSize  = hw.PageSize
	blockShift = hw.PageShift
	// SectorSize is the unit of Ref.Sector.
	SectorSize = 512

	chunkShift = 8
	chunkSize  = 1 << chunkShift

	keyValid      = uint64(1) << 63
	diskShift     = 56
	diskMask      = 0x7f
	genShift      = 40
	genMask       = 0xffff
	blockBits     = 40
	blockMask     = uint64(1)<<blockBits - 1
	writeRing     = 256 // recent guest writes remembered for the race rule
	maxTrackedPFN = 1<<32 - 2
)

// Ref says that a guest page equals a 4 KiB block of a disk.
type Ref struct {
	Disk   uint8  // disk index (IDE index 0–3 today)
	Sector uint64 // first 512-byte sector; always a multiple of 8
	Hash   uint64 // XXH3-64 of the 4096 bytes
	Gen    uint16 // changes whenever the pfn's entry is replaced
}

// Entry is a Ref with its pfn, as exported into the device state.
type Entry struct {
	PFN uint64
	Ref
}

// Segment is one contiguous piece of guest-physical memory in a transfer, in
// transfer order (a PRD entry for IDE).
type Segment struct {
	GPA uint64
	Len uint32
}

// TrackerStats are cumulative counters.
type TrackerStats struct {
	Tracked       int    // pages tracked now
	Recorded      uint64 // entries created
	Replacements  uint64 // entries replaced by a new transfer into the page
	Invalidations uint64 // entries dropped because their block was written or discarded
	Dropped       uint64 // entries dropped by partial/unaligned transfers or other writes to the page
	RaceDrops     uint64 // pages not recorded because a guest write raced the transfer
	Lookups       uint64 // pfns looked up
	Hits          uint64 // lookups that found an entry (after validation, for LookupValid)
	Stale         uint64 // validated lookups whose page no longer hashed to its entry: answered not tracked
	StaleDrops    uint64 // of those, entries dropped (not when frozen or replaced meanwhile)
	HashErrors    uint64 // validated lookups whose page could not be hashed: answered not tracked, kept
	Bytes         int    // memory held by the tables
}

type slot struct {
	key  uint64 // keyValid | disk<<56 | gen<<40 | block
	hash uint64
}

type writeEvent struct {
	disk       uint8
	start, end uint64 // blocks, [start, end)
	begin, fin uint64 // sequence numbers; fin == 0 while in flight
}

// Tracker is the table. The zero value is not usable; call NewTracker.
type Tracker struct {
	mu     sync.Mutex
	dirty  hw.DirtyReporter
	max    int
	chunks []*[chunkSize]slot
	rev    []uint32 // pfn+1, 0 = empty
	n      int
	frozen bool
	seq    uint64
	gen    uint16
	writes [writeRing]writeEvent
	wnext  int // next ring index
	stats  TrackerStats
	drops  []uint64 // scratch: pfns removed in the current operation
	hash   func(pfn uint64) (uint64, error)
}

// TrackerConfig configures a Tracker.
type TrackerConfig struct {
	// Dirty is told about every pfn whose entry is removed or replaced, before
	// the operation that removed it completes. The device model forwards these
	// to XEN_DMOP_modified_memory while migration is on, so a page already sent
	// as a reference is sent again.
	Dirty hw.DirtyReporter
	// MaxEntries caps the table (0 = unlimited). At the cap, new pages are not
	// recorded; existing entries are never evicted for capacity.
	MaxEntries int
	// PageHash, if set, returns HashPage of guest page pfn as it is now. The
	// tracker never sees the guest's CPU write a page, so an entry is only a
	// claim; LookupValid checks each claim it answers with PageHash. It is
	// called without the tracker's lock held, concurrently with transfers
	// and with other lookups.
	PageHash func(pfn uint64) (uint64, error)
}

// NewTracker returns an empty tracker.
func NewTracker(cfg TrackerConfig) *Tracker {
	return &Tracker{dirty: cfg.Dirty, max: cfg.MaxEntries, rev: make([]uint32, 64), hash: cfg.PageHash}
}

// Token marks the start of a transfer for the race rule.
type Token struct{ seq uint64 }

// Begin is called before a disk read is issued to the backend.
func (t *Tracker) Begin() Token {
	t.mu.Lock()
	defer t.mu.Unlock()
	return Token{t.seq}
}

// WriteToken identifies a guest write in flight.
type WriteToken struct {
	Token
	idx  int
	disk uint8
	off  int64
	n    int64
}

// BeginWrite is called before a guest write or discard of n bytes at byte
// offset off of disk reaches the backend. It drops every entry that
// references the written blocks and reports those pages dirty before
// returning, so the guest's I/O cannot complete before they are marked.
func (t *Tracker) BeginWrite(disk uint8, off, n int64) WriteToken {
	t.mu.Lock()
	t.seq++
	tok := WriteToken{Token: Token{t.seq}, disk: disk, off: off, n: n}
	start, end := blockRange(off, n)
	// An event we overwrite in the ring may still be in flight; keep such
	// events by searching for a finished slot (bounded by the ring size).
	idx := -1
	for k := 0; k < writeRing; k++ {
		i := (t.wnext + k) % writeRing
		if e := t.writes[i]; e.begin == 0 || e.fin != 0 {
			idx = i
			break
		}
	}
	if idx < 0 { // 256 writes in flight: impossible with IDE; refuse to track
		idx = t.wnext
	}
	t.writes[idx] = writeEvent{disk: disk, start: start, end: end, begin: t.seq}
	t.wnext = (idx + 1) % writeRing
	tok.idx = idx
	if !t.frozen {
		for b := start; b < end; b++ {
			t.dropBlockLocked(disk, b)
		}
	}
	drops := t.takeDrops()
	t.mu.Unlock()
	t.report(drops)
	return tok
}

// EndWrite is called when the write finished. On success, segs and data
// describe the guest memory it came from (data is what reached the disk);
// those pages now equal the written blocks and are recorded. On failure pass
// nil: the blocks' content is unknown and nothing is recorded.
func (t *Tracker) EndWrite(w WriteToken, segs []Segment, data []byte) {
	t.mu.Lock()
	t.seq++
	if e := &t.writes[w.idx]; e.begin == w.seq {
		e.fin = t.seq
	}
	if segs != nil {
		t.recordLocked(w.Token, w.disk, w.off, segs, data, w.idx)
	}
	drops := t.takeDrops()
	t.mu.Unlock()
	t.report(drops)
}

// DiskToGuest records a completed disk read: data (read from byte offset off
// of disk) has landed in guest memory along segs. tok came from Begin before
// the backend read.
func (t *Tracker) DiskToGuest(tok Token, disk uint8, off int64, segs []Segment, data []byte) {
	t.mu.Lock()
	t.recordLocked(tok, disk, off, segs, data, -1)
	drops := t.takeDrops()
	t.mu.Unlock()
	t.report(drops)
}

// Seed records entries whose pages are known to equal their blocks without a
// transfer the tracker saw: the destination of a migration filled them from
// the disks and checked each page against its hash (dm/paging), so a later
// migration may elide them again. Each entry is recorded as a transfer would
// record it (a new Gen; the given Gen is ignored; a different entry for the
// pfn is replaced and reported dirty). Zero references (Ref.IsZeroPage: an
// all-zero page, no disk block) are skipped: they are not disk copies.
// Entries the tracker cannot hold (sector not a multiple of 8, disk or pfn
// out of range), entries whose block a guest write in flight overlaps (the
// race rule), and entries past MaxEntries are skipped; nothing is recorded
// while frozen. It returns how many of the entries the table holds
// afterwards.
func (t *Tracker) Seed(entries []Entry) int {
	t.mu.Lock()
	n := 0
	now := Token{t.seq} // only writes still in flight count as races
	for _, e := range entries {
		if t.frozen {
			break
		}
		if e.IsZeroPage() || e.Sector%(BlockSize/SectorSize) != 0 || e.Disk > diskMask {
			continue
		}
		block := e.Sector / (BlockSize / SectorSize)
		if block > blockMask || e.PFN > maxTrackedPFN || t.raced(now, e.Disk, block, block+1, -1) {
			continue
		}
		t.insertLocked(e.PFN, e.Disk, block, e.Hash)
		if s := t.slotLocked(e.PFN, false); s != nil && s.key&keyValid != 0 && s.key&blockMask == block &&
			uint8(s.key>>diskShift&diskMask) == e.Disk && s.hash == e.Hash {
			n++
		}
	}
	drops := t.takeDrops()
	t.mu.Unlock()
	t.report(drops)
	return n
}

// DropPages forgets pfn … pfn+n-1: something other than a tracked transfer
// wrote them (PIO string input, a partial DMA, a failed transfer).
func (t *Tracker) DropPages(pfn, n uint64) {
	t.mu.Lock()
	if !t.frozen {
		for p := pfn; p < pfn+n; p++ {
			if t.removeLocked(p) {
				t.stats.Dropped++
			}
		}
	}
	drops := t.takeDrops()
	t.mu.Unlock()
	t.report(drops)
}

// DropDisk forgets every page that references disk: it was detached (platform
// unplug: the guest now writes it through PV drivers the tracker never sees)
// or its medium changed.
func (t *Tracker) DropDisk(disk uint8) {
	t.mu.Lock()
	if !t.frozen {
		for ci, c := range t.chunks {
			if c == nil {
				continue
			}
			for k := range c {
				if c[k].key&keyValid != 0 && uint8(c[k].key>>diskShift&diskMask) == disk {
					t.removeLocked(uint64(ci)<<chunkShift | uint64(k))
					t.stats.Invalidations++
				}
			}
		}
	}
	drops := t.takeDrops()
	t.mu.Unlock()
	t.report(drops)
}

// DropGPA forgets every page that [gpa, gpa+n) touches.
func (t *Tracker) DropGPA(gpa, n uint64) {
	if n == 0 {
		return
	}
	first := gpa >> blockShift
	last := (gpa + n - 1) >> blockShift
	t.DropPages(first, last-first+1)
}

// Lookup fills out[i] for pfns[i] and reports which were found in ok[i].
// It returns the number of hits. out and ok must be at least len(pfns).
// The entries are not checked against guest memory (see LookupValid).
func (t *Tracker) Lookup(pfns []uint64, out []Ref, ok []bool) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	hits := t.lookupLocked(pfns, out, ok)
	t.stats.Lookups += uint64(len(pfns))
	t.stats.Hits += uint64(hits)
	return hits
}

func (t *Tracker) lookupLocked(pfns []uint64, out []Ref, ok []bool) int {
	hits := 0
	for i, p := range pfns {
		s := t.slotLocked(p, false)
		if s == nil || s.key&keyValid == 0 {
			ok[i] = false
			continue
		}
		out[i] = refOf(*s)
		ok[i] = true
		hits++
	}
	return hits
}

// LookupValid is Lookup with every entry found checked against the guest
// page through TrackerConfig.PageHash (without one it is Lookup). The
// pages are hashed outside the tracker's lock. A page that no longer hashes
// to its entry (the guest's CPU rewrote it) is answered not tracked, and its
// entry is dropped — and reported dirty like every drop — if it is still the
// same entry (a transfer may have replaced it meanwhile) and the tracker is
// not frozen. A page PageHash fails on is answered not tracked and kept.
// It returns the number of entries answered.
func (t *Tracker) LookupValid(pfns []uint64, out []Ref, ok []bool) int {
	if t.hash == nil {
		return t.Lookup(pfns, out, ok)
	}
	t.mu.Lock()
	hits := t.lookupLocked(pfns, out, ok)
	t.mu.Unlock()
	var stale []int // indexes into pfns
	var errs uint64
	for i, p := range pfns {
		if !ok[i] {
			continue
		}
		h, err := t.hash(p)
		switch {
		case err != nil:
			errs++
		case h != out[i].Hash:
			stale = append(stale, i)
		default:
			continue
		}
		ok[i] = false
		hits--
	}
	t.mu.Lock()
	for _, i := range stale {
		if t.frozen {
			break
		}
		// Gen changes whenever the entry is replaced, so an equal Ref is the
		// entry that was hashed (a transfer that recorded the very same
		// block and hash again leaves the entry as it was; dropping it then
		// costs a page of elision, never correctness).
		if s := t.slotLocked(pfns[i], false); s != nil && s.key&keyValid != 0 && refOf(*s) == out[i] {
			t.removeLocked(pfns[i])
			t.stats.StaleDrops++
		}
	}
	t.stats.Lookups += uint64(len(pfns))
	t.stats.Hits += uint64(hits)
	t.stats.Stale += uint64(len(stale))
	t.stats.HashErrors += errs
	drops := t.takeDrops()
	t.mu.Unlock()
	t.report(drops)
	return hits
}

// Freeze stops all changes (at save time, with the guest paused and I/O
// drained): lookups go on answering from the frozen table. Thaw undoes it
// (a failed migration resumes the guest).
func (t *Tracker) Freeze() { t.mu.Lock(); t.frozen = true; t.mu.Unlock() }

// Thaw re-enables changes after Freeze.
func (t *Tracker) Thaw() { t.mu.Lock(); t.frozen = false; t.mu.Unlock() }

// Export returns every entry, sorted by pfn.
func (t *Tracker) Export() []Entry {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Entry, 0, t.n)
	for ci, c := range t.chunks {
		if c == nil {
			continue
		}
		for i := range c {
			if c[i].key&keyValid != 0 {
				out = append(out, Entry{PFN: uint64(ci)<<chunkShift | uint64(i), Ref: refOf(c[i])})
			}
		}
	}
	return out
}

// Stats returns the counters.
func (t *Tracker) Stats() TrackerStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.stats
	s.Tracked = t.n
	s.Bytes = len(t.rev) * 4
	for _, c := range t.chunks {
		if c != nil {
			s.Bytes += chunkSize * 16
		}
	}
	s.Bytes += len(t.chunks) * 8
	return s
}

// HashPage is the page hash the tracker and the migration transport agree on.
func HashPage(p []byte) uint64 { return xxh3.Hash(p) }

func refOf(s slot) Ref {
	return Ref{
		Disk:   uint8(s.key >> diskShift & diskMask),
		Sector: (s.key & blockMask) << (blockShift - 9),
		Hash:   s.hash,
		Gen:    uint16(s.key >> genShift & genMask),
	}
}

func blockRange(off, n int64) (uint64, uint64) {
	if n <= 0 || off < 0 {
		return 0, 0
	}
	return uint64(off) >> blockShift, (uint64(off+n) + BlockSize - 1) >> blockShift
}

// raced reports whether a guest write overlapping blocks [start, end) of disk
// was in flight at any time after tok (other than the write self, if ≥ 0).
func (t *Tracker) raced(tok Token, disk uint8, start, end uint64, self int) bool {
	oldestKnown := ^uint64(0)
	for i := range t.writes {
		e := &t.writes[i]
		if e.begin == 0 {
			continue
		}
		if e.begin < oldestKnown {
			oldestKnown = e.begin
		}
		if i == self || e.disk != disk || e.end <= start || e.start >= end {
			continue
		}
		if e.fin == 0 || e.fin > tok.seq {
			return true
		}
	}
	// Writes older than the ring are unknown: if the ring has wrapped past
	// the token, be conservative.
	return t.writes[t.wnext].begin != 0 && oldestKnown > tok.seq
}

func (t *Tracker) recordLocked(tok Token, disk uint8, off int64, segs []Segment, data []byte, self int) {
	if disk > diskMask || off < 0 {
		return
	}
	total := uint64(0)
	for _, s := range segs {
		total += uint64(s.Len)
	}
	if total > uint64(len(data)) {
		total = uint64(len(data))
	}
	start, end := blockRange(off, int64(total))
	raced := t.raced(tok, disk, start, end, self)
	pos := uint64(0) // byte position within data
	for _, s := range segs {
		if pos >= total {
			break
		}
		ln := min(uint64(s.Len), total-pos)
		if ln == 0 {
			continue
		}
		// Every page the segment touches: full pages with a 4 KiB-aligned
		// disk offset are recorded; the rest are dropped.
		for gpa := s.GPA &^ (BlockSize - 1); gpa < s.GPA+ln; gpa += BlockSize {
			pfn := gpa >> blockShift
			if t.frozen {
				continue
			}
			dpos := pos + (gpa - s.GPA) // meaningful only when gpa >= s.GPA
			full := gpa >= s.GPA && gpa+BlockSize <= s.GPA+ln
			diskOff := uint64(off) + dpos
			if !full || diskOff%BlockSize != 0 || raced {
				if t.removeLocked(pfn) {
					t.stats.Dropped++
				}
				if full && diskOff%BlockSize == 0 && raced {
					t.stats.RaceDrops++
				}
				continue
			}
			t.insertLocked(pfn, disk, diskOff>>blockShift, HashPage(data[dpos:dpos+BlockSize]))
		}
		pos += ln
	}
}

func (t *Tracker) slotLocked(pfn uint64, alloc bool) *slot {
	ci := pfn >> chunkShift
	if ci >= uint64(len(t.chunks)) {
		if !alloc {
			return nil
		}
		if pfn > maxTrackedPFN {
			return nil
		}
		n := max(int(ci)+1, 2*len(t.chunks))
		nc := make([]*[chunkSize]slot, n)
		copy(nc, t.chunks)
		t.chunks = nc
	}
	c := t.chunks[ci]
	if c == nil {
		if !alloc {
			return nil
		}
		c = new([chunkSize]slot)
		t.chunks[ci] = c
	}
	return &c[pfn&(chunkSize-1)]
}

func (t *Tracker) insertLocked(pfn uint64, disk uint8, block uint64, h uint64) {
	if block > blockMask || pfn > maxTrackedPFN {
		if t.removeLocked(pfn) {
			t.stats.Dropped++
		}
		return
	}
	s := t.slotLocked(pfn, true)
	if s == nil {
		return
	}
	if s.key&keyValid != 0 {
		if s.key&blockMask == block && uint8(s.key>>diskShift&diskMask) == disk && s.hash == h {
			return // same content again: nothing changes
		}
		t.removeLocked(pfn)
		t.stats.Replacements++
	} else if t.max > 0 && t.n >= t.max {
		return
	}
	t.gen++
	s.key = keyValid | uint64(disk)<<diskShift | uint64(t.gen)<<genShift | block
	s.hash = h
	t.n++
	t.stats.Recorded++
	t.revInsert(uint32(pfn), disk, block)
}

// removeLocked drops pfn's entry; it records the pfn for dirty reporting.
func (t *Tracker) removeLocked(pfn uint64) bool {
	s := t.slotLocked(pfn, false)
	if s == nil || s.key&keyValid == 0 {
		return false
	}
	disk, block := uint8(s.key>>diskShift&diskMask), s.key&blockMask
	s.key, s.hash = 0, 0
	t.revDelete(uint32(pfn), disk, block)
	t.n--
	t.drops = append(t.drops, pfn)
	return true
}

func (t *Tracker) dropBlockLocked(disk uint8, block uint64) {
	for {
		found := false
		for i := t.home(disk, block); t.rev[i] != 0; i = t.next(i) {
			pfn := uint64(t.rev[i] - 1)
			s := t.slotLocked(pfn, false)
			if s != nil && s.key&blockMask == block && uint8(s.key>>diskShift&diskMask) == disk {
				t.removeLocked(pfn) // shifts the run: restart the probe
				t.stats.Invalidations++
				found = true
				break
			}
		}
		if !found {
			return
		}
	}
}

// home is the first probe position of (disk, block): a multiplicative hash
// reduced to [0, len(rev)) without division (Lemire's fastrange), so the table
// can grow by 1.5× instead of doubling and stay densely loaded.
func (t *Tracker) home(disk uint8, block uint64) uint64 {
	x := (block ^ uint64(disk)<<56) * 0x9e3779b97f4a7c15
	x ^= x >> 29
	hi, _ := bits.Mul64(x, uint64(len(t.rev)))
	return hi
}

func (t *Tracker) next(i uint64) uint64 {
	if i++; i == uint64(len(t.rev)) {
		return 0
	}
	return i
}

func (t *Tracker) homeOf(pfn uint64) uint64 {
	s := t.slotLocked(pfn, false)
	return t.home(uint8(s.key>>diskShift&diskMask), s.key&blockMask)
}

// revInsert indexes pfn, whose forward entry is already valid and counted.
func (t *Tracker) revInsert(pfn uint32, disk uint8, block uint64) {
	if t.n*8 > len(t.rev)*7 { // load factor 7/8: grow, which indexes pfn too
		t.revGrow()
		return
	}
	i := t.home(disk, block)
	for t.rev[i] != 0 {
		i = t.next(i)
	}
	t.rev[i] = pfn + 1
}

func (t *Tracker) revGrow() {
	t.rev = make([]uint32, len(t.rev)+len(t.rev)/2)
	t.revFill()
}

func (t *Tracker) revRebuild() {
	clear(t.rev)
	t.revFill()
}

// revFill indexes every valid forward entry into an empty t.rev.
func (t *Tracker) revFill() {
	for ci, c := range t.chunks {
		if c == nil {
			continue
		}
		for k := range c {
			s := &c[k]
			if s.key&keyValid == 0 {
				continue
			}
			i := t.home(uint8(s.key>>diskShift&diskMask), s.key&blockMask)
			for t.rev[i] != 0 {
				i = t.next(i)
			}
			t.rev[i] = uint32(ci<<chunkShift|k) + 1
		}
	}
}

// revDelete removes pfn from its block's probe run (backward-shift deletion).
func (t *Tracker) revDelete(pfn uint32, disk uint8, block uint64) {
	i := t.home(disk, block)
	for t.rev[i] != pfn+1 {
		if t.rev[i] == 0 {
			// Internal invariant broken (a bug, not guest input): rebuild
			// the reverse index from the forward table instead of crashing.
			slog.Error(fmt.Sprintf("blk: tracker reverse index lost pfn %#x; rebuilding", pfn))
			t.revRebuild()
			return
		}
		i = t.next(i)
	}
	for {
		t.rev[i] = 0
		j := i
		for {
			j = t.next(j)
			if t.rev[j] == 0 {
				return
			}
			home := t.homeOf(uint64(t.rev[j] - 1))
			// Move rev[j] into the hole at i unless its home lies cyclically in (i, j].
			if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
				t.rev[i] = t.rev[j]
				i = j
				break
			}
		}
	}
}

func (t *Tracker) takeDrops() []uint64 {
	if len(t.drops) == 0 {
		return nil
	}
	d := t.drops
	t.drops = nil
	return d
}

// report tells the DirtyReporter about dropped pages as contiguous runs.
func (t *Tracker) report(pfns []uint64) {
	if t.dirty == nil || len(pfns) == 0 {
		return
	}
	sort.Slice(pfns, func(i, j int) bool { return pfns[i] < pfns[j] })
	start, n := pfns[0], uint64(1)
	for _, p := range pfns[1:] {
		switch {
		case p == start+n-1:
		case p == start+n:
			n++
		default:
			t.dirty.MarkDirty(start, n)
			start, n = p, 1
		}
	}
	t.dirty.MarkDirty(start, n)
}
