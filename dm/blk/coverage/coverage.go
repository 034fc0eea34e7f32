// Package coverage checks the device model's page↔sector tracker (dm/blk,
// docs/tracker.md) against the truth, independently of the tracker's own
// bookkeeping: it reads every page of a paused guest through foreign
// mappings, hashes the bytes itself, and compares them with the 4 KiB blocks
// of the guest's disk images read from the host.
//
//   - A guest page "equals a disk block" when its bytes equal the bytes of
//     some 4 KiB-aligned block of a disk (found through an index of the disk
//     keyed by XXH3-128, confirmed by comparing the bytes).
//   - All-zero pages are counted apart and excluded everywhere (a zero page
//     equals every sparse block of a disk).
//   - An entry of the tracker (pfn → disk, sector, hash) is correct when the
//     guest's page equals the disk's block at (disk, sector) and the recorded
//     hash is the hash of those bytes.
//   - Coverage is |non-zero pages with a correct entry| ÷ |non-zero pages
//     equal to a disk block|.
//
// Entries that are not correct are split by what they would do to a
// migration: stale (the guest's CPU changed the page after the transfer: its
// bytes no longer hash to the recorded hash while the disk still does, so the
// transport's hash check refuses to elide it), bad (anything else: the entry
// does not describe the disk, e.g. a block changed without invalidation) and
// unverifiable (the page could not be mapped, or the entry names a disk or
// sector that is not there). False entries are all three together.
//
// The tracker is asked twice for every pfn. First raw (Tracker.LookupRaw:
// the table as it is, unchanged): the *_raw counts say how many of its
// claims were false, stale ones included. Then validated (Tracker.Lookup,
// what the migration transport is answered: the device model checks each
// entry against the guest page and drops the stale ones): tracked, covered,
// coverage, false_entries, stale, bad, unverifiable and missed_* are of
// these answers.
//
// The guest must be paused and the device model's I/O drained while Check
// runs; the tracker's counters are compared before and after to catch a
// guest that was not quiet (Report.TrackerChanged).
package coverage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// PageSize is the unit of guest pages and disk blocks.
const PageSize = blk.BlockSize

const (
	defaultBatch       = 1024
	defaultLookupPages = 1 << 20 // 4 GiB of guest-physical space
	defaultSamples     = 10
	defaultRegionShift = 24 // 16 MiB
	defaultRuns        = 12
	readChunk          = 1 << 20
)

// Tracker is what the check asks of the device model's tracker service;
// *blk.TrackerClient implements it.
type Tracker interface {
	Lookup(pfns []uint64, out []blk.Ref, ok []bool) (int, error)    // validated by the device model
	LookupRaw(pfns []uint64, out []blk.Ref, ok []bool) (int, error) // the table as it is
	Stats() (blk.TrackerStats, error)
}

// Disk is one disk image of the guest, read-only.
type Disk struct {
	Index uint8 // the tracker's disk number: the IDE index (hda = 0)
	Image io.ReaderAt
	Size  int64
	Name  string // for messages
}

// Config says what to check.
type Config struct {
	Dom    xen.Domid
	Mapper xen.ForeignMapper // *xen.Privcmd in dom0; pages are mapped read-only
	// Pages is the number of guest pages examined: pfns [0, Pages). Tracked
	// pfns at or above it are examined too.
	Pages uint64
	// LookupPages bounds the pfns asked of the tracker: [0, Pages), then,
	// if the tracker holds more entries than that, up to LookupPages.
	// Entries above are counted from the tracker's stats as unverifiable.
	// 0 means 1<<20 (4 GiB).
	LookupPages uint64
	Batch       int // pages per foreign mapping; 0 means 1024
	Disks       []Disk
	Tracker     Tracker
	Samples     int  // false entries kept for diagnosis; 0 means 10, negative none
	RegionShift uint // guest-address histogram granularity (log2 bytes); 0 means 24 (16 MiB)
	Runs        int  // longest runs of missed pages kept; 0 means 12, negative none
}

// Kinds of false entries.
const (
	KindStale        = "stale"
	KindBad          = "bad"
	KindUnverifiable = "unverifiable"
)

// Sample is one false entry, for diagnosis.
type Sample struct {
	PFN       uint64
	Ref       blk.Ref
	Raw       bool // found by the raw lookup only: the validated lookup did not answer it
	Kind      string
	Why       string
	GuestHash uint64 // blk.HashPage of the guest page (0 when unmapped)
	DiskHash  uint64 // blk.HashPage of the disk block (0 when unreadable)
}

// Run is a run of consecutive missed pfns (equal to a disk block, no correct
// entry).
type Run struct {
	PFN    uint64
	Pages  int
	Region string // disk region of the first page's block ("d0p2")
	Sector uint64 // first page's block (512-byte sectors)
	OnDisk bool   // the blocks are consecutive on one disk too
	Reason string // reason of the first page: untracked, stale, bad, unverifiable
}

// Report is the outcome of Check.
type Report struct {
	Pages        int            // pages examined
	Mapped       int            // of which mapped
	Unmapped     int            // of which not mappable (holes), skipped
	UnmappedErrs map[string]int // errno → pages
	ZeroPages    int            // mapped pages that are all zero (excluded)
	EqualPages   int            // non-zero pages equal to some disk block
	Tracked      int            // validated entries answered for the pages examined
	TrackedZero  int            // of which on zero pages (excluded from coverage)
	Covered      int            // non-zero pages with a correct validated entry
	Stale        int
	Bad          int
	Unverifiable int // includes entries the lookup range did not reach
	FalseEntries int // Stale + Bad + Unverifiable, of the validated entries
	Coverage     float64
	Collisions   int // XXH3-128 index hits whose bytes differed (expected 0)

	// The same of the raw entries (the table before validation).
	TrackedRaw      int
	StaleRaw        int
	BadRaw          int
	UnverifiableRaw int
	FalseRaw        int

	StaleDrops uint64 // entries the device model dropped as stale during the check (its stats)
	HashErrors uint64 // entries it could not validate during the check (answered not tracked)

	DiskBlocks     int // full 4 KiB blocks indexed over all disks
	DiskZeroBlocks int
	DiskDistinct   int // distinct non-zero blocks

	TrackerTotal   int    // entries the tracker holds (its stats)
	TrackerChanged uint64 // tracker events during the check (0 when the guest was quiet)
	Secs           float64
	IndexSecs      float64 // reading and indexing the disks
	ScanSecs       float64 // asking the tracker, mapping and examining the guest

	Samples        []Sample
	EqualByRegion  map[string]int // disk region of the matching block → non-zero equal pages
	MissedByRegion map[string]int
	MissedByReason map[string]int // untracked, stale, bad, unverifiable
	MissedByGPA    map[uint64]int // gpa >> RegionShift → missed pages
	EqualByGPA     map[uint64]int // gpa >> RegionShift → equal pages
	RegionShift    uint
	Runs           []Run
}

type loc struct {
	disk  int // index into Config.Disks
	block uint64
}

type region struct {
	name       string
	start, end uint64 // bytes
}

type checker struct {
	cfg     Config
	rep     *Report
	index   map[xxh3.Uint128]loc
	regions [][]region // per Config.Disks entry
	byIndex map[uint8]int
	entries map[uint64]blk.Ref // validated
	raw     map[uint64]blk.Ref
	zero    []byte
	blkBuf  []byte
	run     *Run
	runLast uint64
	runLoc  loc
}

// Check runs the check. The error is for what stops it (the tracker service
// or a disk image failing, no usable input); pages that do not map are
// counted, not errors.
func Check(cfg Config) (*Report, error) {
	start := time.Now()
	if cfg.Mapper == nil || cfg.Tracker == nil {
		return nil, errors.New("coverage: need a foreign mapper and a tracker")
	}
	if len(cfg.Disks) == 0 {
		return nil, fmt.Errorf("coverage: dom %d: no disk images", cfg.Dom)
	}
	if cfg.Batch <= 0 {
		cfg.Batch = defaultBatch
	}
	if cfg.LookupPages == 0 {
		cfg.LookupPages = defaultLookupPages
	}
	if cfg.Samples == 0 {
		cfg.Samples = defaultSamples
	}
	if cfg.RegionShift == 0 {
		cfg.RegionShift = defaultRegionShift
	}
	if cfg.Runs == 0 {
		cfg.Runs = defaultRuns
	}
	c := &checker{
		cfg: cfg,
		rep: &Report{
			UnmappedErrs:   map[string]int{},
			EqualByRegion:  map[string]int{},
			MissedByRegion: map[string]int{},
			MissedByReason: map[string]int{},
			MissedByGPA:    map[uint64]int{},
			EqualByGPA:     map[uint64]int{},
			RegionShift:    cfg.RegionShift,
		},
		index:   map[xxh3.Uint128]loc{},
		byIndex: map[uint8]int{},
		zero:    make([]byte, PageSize),
		blkBuf:  make([]byte, PageSize),
	}
	for i, d := range cfg.Disks {
		if _, dup := c.byIndex[d.Index]; dup {
			return nil, fmt.Errorf("coverage: dom %d: disk %d given twice", cfg.Dom, d.Index)
		}
		c.byIndex[d.Index] = i
	}
	st0, err := cfg.Tracker.Stats()
	if err != nil {
		return nil, fmt.Errorf("coverage: dom %d: tracker stats: %w", cfg.Dom, err)
	}
	for i := range cfg.Disks {
		if err := c.indexDisk(i); err != nil {
			return nil, err
		}
	}
	t1 := time.Now()
	c.rep.IndexSecs = t1.Sub(start).Seconds()
	if err := c.lookup(st0.Tracked); err != nil {
		return nil, err
	}
	if err := c.scan(); err != nil {
		return nil, err
	}
	c.endRun()
	c.rep.ScanSecs = time.Since(t1).Seconds()
	st1, err := cfg.Tracker.Stats()
	if err != nil {
		return nil, fmt.Errorf("coverage: dom %d: tracker stats: %w", cfg.Dom, err)
	}
	r := c.rep
	r.TrackerTotal = st1.Tracked
	r.TrackerChanged = events(st1) - events(st0)
	r.StaleDrops = st1.StaleDrops - st0.StaleDrops
	r.HashErrors = st1.HashErrors - st0.HashErrors
	if st0.Tracked > r.TrackedRaw { // entries above the lookup range: never seen, never verified
		r.UnverifiableRaw += st0.Tracked - r.TrackedRaw
		r.Unverifiable += st0.Tracked - r.TrackedRaw
	}
	r.FalseEntries = r.Stale + r.Bad + r.Unverifiable
	r.FalseRaw = r.StaleRaw + r.BadRaw + r.UnverifiableRaw
	if r.EqualPages > 0 {
		r.Coverage = float64(r.Covered) / float64(r.EqualPages)
	}
	sort.Slice(r.Runs, func(i, j int) bool { return r.Runs[i].Pages > r.Runs[j].Pages })
	r.Secs = time.Since(start).Seconds()
	return r, nil
}

// events are the tracker's changes by transfers and writes; the check's own
// validated lookups (StaleDrops) are not among them.
func events(s blk.TrackerStats) uint64 {
	return s.Recorded + s.Replacements + s.Invalidations + s.Dropped + s.RaceDrops
}

// indexDisk indexes every non-zero full 4 KiB block of disk i by XXH3-128.
// The first block with given bytes is kept; later duplicates are the same
// bytes for the check.
func (c *checker) indexDisk(i int) error {
	d := c.cfg.Disks[i]
	c.regions = append(c.regions, partitions(d))
	buf := make([]byte, readChunk)
	blocks := uint64(d.Size) / PageSize
	for b := uint64(0); b < blocks; {
		n := min(uint64(len(buf))/PageSize, blocks-b)
		chunk := buf[:n*PageSize]
		if n, err := d.Image.ReadAt(chunk, int64(b*PageSize)); n < len(chunk) {
			return fmt.Errorf("coverage: disk %d (%s): read sector %d: %w", d.Index, d.Name, b*PageSize/blk.SectorSize, err)
		}
		for k := uint64(0); k < n; k++ {
			p := chunk[k*PageSize : (k+1)*PageSize]
			c.rep.DiskBlocks++
			if bytes.Equal(p, c.zero) {
				c.rep.DiskZeroBlocks++
				continue
			}
			h := xxh3.Hash128(p)
			if _, ok := c.index[h]; !ok {
				c.index[h] = loc{disk: i, block: b + k}
				c.rep.DiskDistinct++
			}
		}
		b += n
	}
	return nil
}

// lookup asks the tracker for pfns [0, Pages), and, when the tracker holds
// more entries than that range has (total, from its stats), for the pfns up
// to LookupPages as well.
func (c *checker) lookup(total int) error {
	c.entries, c.raw = map[uint64]blk.Ref{}, map[uint64]blk.Ref{}
	if err := c.lookupRange(0, c.cfg.Pages); err != nil {
		return err
	}
	if len(c.raw) < total && c.cfg.LookupPages > c.cfg.Pages {
		return c.lookupRange(c.cfg.Pages, c.cfg.LookupPages)
	}
	return nil
}

func (c *checker) lookupRange(start, end uint64) error {
	pfns := make([]uint64, 0, blk.MaxLookup)
	out, ok := make([]blk.Ref, blk.MaxLookup), make([]bool, blk.MaxLookup)
	for base := start; base < end; base += blk.MaxLookup {
		pfns = pfns[:0]
		for p := base; p < end && p < base+blk.MaxLookup; p++ {
			pfns = append(pfns, p)
		}
		// Raw first: the validated lookup drops the stale entries.
		if _, err := c.cfg.Tracker.LookupRaw(pfns, out, ok); err != nil {
			return fmt.Errorf("coverage: dom %d: tracker raw lookup of pfns %#x+%d: %w", c.cfg.Dom, base, len(pfns), err)
		}
		for i, p := range pfns {
			if ok[i] {
				c.raw[p] = out[i]
			}
		}
		if _, err := c.cfg.Tracker.Lookup(pfns, out, ok); err != nil {
			return fmt.Errorf("coverage: dom %d: tracker lookup of pfns %#x+%d: %w", c.cfg.Dom, base, len(pfns), err)
		}
		for i, p := range pfns {
			if ok[i] {
				c.entries[p] = out[i]
			}
		}
	}
	return nil
}

// scan examines pfns [0, Pages) and every tracked pfn above, in batches.
func (c *checker) scan() error {
	var extra []uint64
	for p := range c.raw {
		if p >= c.cfg.Pages {
			extra = append(extra, p)
		}
	}
	for p := range c.entries {
		if _, dup := c.raw[p]; !dup && p >= c.cfg.Pages {
			extra = append(extra, p)
		}
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
	gfns := make([]uint64, 0, c.cfg.Batch)
	flush := func() error {
		if len(gfns) == 0 {
			return nil
		}
		err := c.batch(gfns)
		gfns = gfns[:0]
		return err
	}
	for p := uint64(0); p < c.cfg.Pages; p++ {
		gfns = append(gfns, p)
		if len(gfns) == c.cfg.Batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	for _, p := range extra {
		gfns = append(gfns, p)
		if len(gfns) == c.cfg.Batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// batch maps gfns read-only and examines each page. A batch the mapper
// refuses as a whole is mapped again page by page.
func (c *checker) batch(gfns []uint64) error {
	m, err := c.cfg.Mapper.MapForeign(c.cfg.Dom, gfns, false)
	if err != nil {
		if len(gfns) == 1 {
			return c.page(gfns[0], nil, err)
		}
		for _, g := range gfns {
			if err := c.batch([]uint64{g}); err != nil {
				return err
			}
		}
		return nil
	}
	defer c.cfg.Mapper.UnmapForeign(m)
	for i, g := range gfns {
		p, perr := m.Page(i)
		if err := c.page(g, p, perr); err != nil {
			return err
		}
	}
	return nil
}

// page examines one guest page: p is its bytes, or nil with mapErr.
func (c *checker) page(pfn uint64, p []byte, mapErr error) error {
	r := c.rep
	r.Pages++
	ref, tracked := c.entries[pfn]
	if tracked {
		r.Tracked++
	}
	raw, trackedRaw := c.raw[pfn]
	if trackedRaw {
		r.TrackedRaw++
	}
	// A raw entry is sampled only if the validated lookup did not answer it.
	rawOnly := trackedRaw && (!tracked || raw != ref)
	if p == nil {
		r.Unmapped++
		r.UnmappedErrs[errName(mapErr)]++
		why := fmt.Sprintf("page not mappable: %v", mapErr)
		if tracked {
			r.Unverifiable++
			c.sample(pfn, ref, false, KindUnverifiable, why, 0, 0)
		}
		if trackedRaw {
			r.UnverifiableRaw++
			if rawOnly {
				c.sample(pfn, raw, true, KindUnverifiable, why, 0, 0)
			}
		}
		c.endRun()
		return nil
	}
	r.Mapped++
	zero := bytes.Equal(p, c.zero)
	if trackedRaw {
		v, err := c.verify(p, raw)
		if err != nil {
			return err
		}
		switch v.kind {
		case KindStale:
			r.StaleRaw++
		case KindBad:
			r.BadRaw++
		case KindUnverifiable:
			r.UnverifiableRaw++
		}
		if v.kind != "" && rawOnly {
			c.sample(pfn, raw, true, v.kind, v.why, v.gh, v.dh)
		}
	}
	kind := ""
	if tracked {
		v, err := c.verify(p, ref)
		if err != nil {
			return err
		}
		kind = v.kind
		switch kind {
		case KindStale:
			r.Stale++
		case KindBad:
			r.Bad++
		case KindUnverifiable:
			r.Unverifiable++
		}
		if kind != "" {
			c.sample(pfn, ref, false, kind, v.why, v.gh, v.dh)
		}
		if zero {
			r.TrackedZero++
		}
	}
	if zero {
		r.ZeroPages++
		c.endRun()
		return nil
	}
	equal := kind == "" && tracked
	var at loc
	if tracked && equal {
		at = loc{disk: c.byIndex[ref.Disk], block: ref.Sector * blk.SectorSize / PageSize}
	} else if l, ok := c.index[xxh3.Hash128(p)]; ok {
		blkBytes, err := c.readBlock(l.disk, l.block)
		if err != nil {
			return err
		}
		if bytes.Equal(p, blkBytes) {
			equal, at = true, l
		} else {
			r.Collisions++
		}
	}
	if !equal {
		c.endRun()
		return nil
	}
	r.EqualPages++
	rg := c.regionName(at)
	r.EqualByRegion[rg]++
	r.EqualByGPA[pfn*PageSize>>c.cfg.RegionShift]++
	if tracked && kind == "" {
		r.Covered++
		c.endRun()
		return nil
	}
	reason := "untracked"
	if tracked {
		reason = kind
	}
	r.MissedByRegion[rg]++
	r.MissedByReason[reason]++
	r.MissedByGPA[pfn*PageSize>>c.cfg.RegionShift]++
	c.extendRun(pfn, at, rg, reason)
	return nil
}

// verdict is what verify found of an entry: kind "" (correct) or a Kind,
// why, and the hashes of the guest page and of the disk block (0 if none).
type verdict struct {
	kind, why string
	gh, dh    uint64
}

// verify classifies an entry against the guest page p; it counts nothing.
func (c *checker) verify(p []byte, ref blk.Ref) (verdict, error) {
	gh := blk.HashPage(p)
	di, ok := c.byIndex[ref.Disk]
	if !ok {
		return verdict{KindUnverifiable, fmt.Sprintf("no image of disk %d given", ref.Disk), gh, 0}, nil
	}
	d := c.cfg.Disks[di]
	if ref.Sector%(PageSize/blk.SectorSize) != 0 || ref.Sector > uint64(d.Size)/blk.SectorSize ||
		uint64(d.Size)-ref.Sector*blk.SectorSize < PageSize {
		return verdict{KindBad, fmt.Sprintf("sector %d is not a 4 KiB block of disk %d (%d bytes)", ref.Sector, ref.Disk, d.Size), gh, 0}, nil
	}
	db, err := c.readBlock(di, ref.Sector*blk.SectorSize/PageSize)
	if err != nil {
		return verdict{}, err
	}
	dh := blk.HashPage(db)
	same := bytes.Equal(p, db)
	switch {
	case same && gh == ref.Hash:
		return verdict{}, nil
	case !same && gh != ref.Hash && dh == ref.Hash:
		return verdict{KindStale, "the guest changed the page since the transfer (the disk still matches the recorded hash)", gh, dh}, nil
	case same:
		return verdict{KindBad, "page equals the disk block but the recorded hash is of other bytes", gh, dh}, nil
	case gh == ref.Hash:
		return verdict{KindBad, "page matches the recorded hash but the disk block holds other bytes (disk changed without invalidation?)", gh, dh}, nil
	default:
		return verdict{KindBad, "neither the page nor the disk block matches the recorded hash", gh, dh}, nil
	}
}

func (c *checker) readBlock(disk int, block uint64) ([]byte, error) {
	d := c.cfg.Disks[disk]
	if _, err := d.Image.ReadAt(c.blkBuf, int64(block*PageSize)); err != nil {
		return nil, fmt.Errorf("coverage: disk %d (%s): read sector %d: %w", d.Index, d.Name, block*PageSize/blk.SectorSize, err)
	}
	return c.blkBuf, nil
}

// sample keeps up to Samples false entries of the validated answers and as
// many of the raw ones.
func (c *checker) sample(pfn uint64, ref blk.Ref, raw bool, kind, why string, gh, dh uint64) {
	n := 0
	for _, s := range c.rep.Samples {
		if s.Raw == raw {
			n++
		}
	}
	if n < c.cfg.Samples {
		c.rep.Samples = append(c.rep.Samples, Sample{PFN: pfn, Ref: ref, Raw: raw, Kind: kind, Why: why, GuestHash: gh, DiskHash: dh})
	}
}

func (c *checker) extendRun(pfn uint64, at loc, rg, reason string) {
	if c.cfg.Runs < 0 {
		return
	}
	if c.run != nil && pfn == c.runLast+1 {
		if c.run.OnDisk && !(at.disk == c.runLoc.disk && at.block == c.runLoc.block+1) {
			c.run.OnDisk = false
		}
		c.run.Pages++
		c.runLast, c.runLoc = pfn, at
		return
	}
	c.endRun()
	c.run = &Run{PFN: pfn, Pages: 1, Region: rg, Sector: at.block * PageSize / blk.SectorSize, OnDisk: true, Reason: reason}
	c.runLast, c.runLoc = pfn, at
}

// endRun keeps the current run if it is among the longest.
func (c *checker) endRun() {
	if c.run == nil {
		return
	}
	r := c.rep
	run := *c.run
	c.run = nil
	if len(r.Runs) < c.cfg.Runs {
		r.Runs = append(r.Runs, run)
		return
	}
	min := 0
	for i := range r.Runs {
		if r.Runs[i].Pages < r.Runs[min].Pages {
			min = i
		}
	}
	if run.Pages > r.Runs[min].Pages {
		r.Runs[min] = run
	}
}

func (c *checker) regionName(l loc) string {
	d := c.cfg.Disks[l.disk]
	off := l.block * PageSize
	for _, rg := range c.regions[l.disk] {
		if off >= rg.start && off < rg.end {
			return fmt.Sprintf("d%d%s", d.Index, rg.name)
		}
	}
	return fmt.Sprintf("d%d-other", d.Index)
}

// partitions reads an MBR partition table (primary entries only); a disk
// without one is one region "" (the whole disk).
func partitions(d Disk) []region {
	var mbr [512]byte
	if d.Size < 512 {
		return []region{{name: "", start: 0, end: uint64(d.Size)}}
	}
	if _, err := d.Image.ReadAt(mbr[:], 0); err != nil || mbr[510] != 0x55 || mbr[511] != 0xaa {
		return []region{{name: "", start: 0, end: uint64(d.Size)}}
	}
	var out []region
	for i := 0; i < 4; i++ {
		e := mbr[446+16*i:]
		typ := e[4]
		lba, n := binary.LittleEndian.Uint32(e[8:]), binary.LittleEndian.Uint32(e[12:])
		if typ == 0 || n == 0 {
			continue
		}
		out = append(out, region{name: fmt.Sprintf("p%d", i+1), start: uint64(lba) * 512, end: (uint64(lba) + uint64(n)) * 512})
	}
	if len(out) == 0 {
		return []region{{name: "", start: 0, end: uint64(d.Size)}}
	}
	return out
}

// errName names why a page did not map: its errno (EFAULT, EINVAL, …), or
// "mapping-failed" when the whole mapping call failed for another reason.
func errName(err error) string {
	var en unix.Errno
	if errors.As(err, &en) {
		if n := unix.ErrnoName(en); n != "" {
			return n
		}
		return fmt.Sprintf("errno-%d", int(en))
	}
	return "mapping-failed"
}

// Summary is the one-line result: key=value pairs, fixed order.
func (r *Report) Summary() string {
	kv := []string{
		fmt.Sprintf("pages=%d", r.Pages),
		fmt.Sprintf("mapped=%d", r.Mapped),
		fmt.Sprintf("unmapped=%d", r.Unmapped),
		fmt.Sprintf("zero_pages=%d", r.ZeroPages),
		fmt.Sprintf("equal_pages=%d", r.EqualPages),
		fmt.Sprintf("tracked=%d", r.Tracked),
		fmt.Sprintf("tracked_zero=%d", r.TrackedZero),
		fmt.Sprintf("covered=%d", r.Covered),
		fmt.Sprintf("false_entries=%d", r.FalseEntries),
		fmt.Sprintf("stale=%d", r.Stale),
		fmt.Sprintf("bad=%d", r.Bad),
		fmt.Sprintf("unverifiable=%d", r.Unverifiable),
		fmt.Sprintf("tracked_raw=%d", r.TrackedRaw),
		fmt.Sprintf("false_raw=%d", r.FalseRaw),
		fmt.Sprintf("stale_raw=%d", r.StaleRaw),
		fmt.Sprintf("bad_raw=%d", r.BadRaw),
		fmt.Sprintf("unverifiable_raw=%d", r.UnverifiableRaw),
		fmt.Sprintf("stale_drops=%d", r.StaleDrops),
		fmt.Sprintf("hash_errors=%d", r.HashErrors),
		fmt.Sprintf("coverage=%.4f", r.Coverage),
		fmt.Sprintf("tracker_total=%d", r.TrackerTotal),
		fmt.Sprintf("tracker_changed=%d", r.TrackerChanged),
		fmt.Sprintf("collisions=%d", r.Collisions),
		fmt.Sprintf("disk_blocks=%d", r.DiskBlocks),
		fmt.Sprintf("disk_zero_blocks=%d", r.DiskZeroBlocks),
	}
	for _, reason := range []string{"untracked", KindStale, KindBad, KindUnverifiable} {
		kv = append(kv, fmt.Sprintf("missed_%s=%d", reason, r.MissedByReason[reason]))
	}
	for _, k := range sortedKeys(r.EqualByRegion) {
		kv = append(kv, fmt.Sprintf("equal_%s=%d missed_%s=%d", k, r.EqualByRegion[k], k, r.MissedByRegion[k]))
	}
	kv = append(kv, fmt.Sprintf("index_secs=%.1f scan_secs=%.1f secs=%.1f", r.IndexSecs, r.ScanSecs, r.Secs))
	return strings.Join(kv, " ")
}

// WriteDetails writes the diagnosis: unmapped pages by error, where the
// missed pages are (guest address, disk region), the longest runs of missed
// pages and the sampled false entries.
func (r *Report) WriteDetails(w io.Writer) {
	for _, k := range sortedKeys(r.UnmappedErrs) {
		fmt.Fprintf(w, "unmapped %s: %d pages\n", k, r.UnmappedErrs[k])
	}
	var regs []uint64
	for k := range r.EqualByGPA {
		regs = append(regs, k)
	}
	sort.Slice(regs, func(i, j int) bool { return regs[i] < regs[j] })
	for _, k := range regs {
		lo := k << r.RegionShift
		hi := lo + 1<<r.RegionShift - 1
		fmt.Fprintf(w, "gpa 0x%08x-0x%08x: equal %6d missed %6d\n", lo, hi, r.EqualByGPA[k], r.MissedByGPA[k])
	}
	for _, k := range sortedKeys(r.EqualByRegion) {
		fmt.Fprintf(w, "disk region %s: equal %d missed %d\n", k, r.EqualByRegion[k], r.MissedByRegion[k])
	}
	for _, run := range r.Runs {
		contig := "scattered on disk"
		if run.OnDisk {
			contig = "contiguous on disk"
		}
		fmt.Fprintf(w, "missed run pfn %#x+%d (gpa %#x): %s sector %d, %s, %s\n",
			run.PFN, run.Pages, run.PFN*PageSize, run.Region, run.Sector, contig, run.Reason)
	}
	for _, s := range r.Samples {
		what := "false entry"
		if s.Raw {
			what = "raw false entry (not answered validated)"
		}
		fmt.Fprintf(w, "%s pfn %#x -> disk %d sector %d hash %#016x gen %d: %s: %s (guest hash %#016x, disk hash %#016x)\n",
			what, s.PFN, s.Ref.Disk, s.Ref.Sector, s.Ref.Hash, s.Ref.Gen, s.Kind, s.Why, s.GuestHash, s.DiskHash)
	}
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
