package coverage

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

const dom = xen.Domid(5)

// rig is a guest with 1024 pages examined (8 MiB of RAM in all), one 2 MiB
// disk with an MBR (p1: blocks 1–127, p2: blocks 128–511; blocks 100–109
// zero), and a real tracker served on a socket.
type rig struct {
	ram  *xentest.GuestRAM
	disk *blk.Mem
	tr   *blk.Tracker
	tc   *blk.TrackerClient
}

func newRig(t *testing.T) *rig { t.Helper(); return newRigWith(t, false) }

// newRigWith is newRig; with validate, the tracker checks the entries its
// service answers against guest memory, as the device model's does.
func newRigWith(t *testing.T, validate bool) *rig {
	t.Helper()
	ram, err := xentest.NewGuestRAM(dom, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ram.Close() })
	var cfg blk.TrackerConfig
	if validate {
		mc := xen.NewMapCache(ram, dom, xen.MapCacheOptions{PagedOutRetries: -1})
		t.Cleanup(func() { mc.Close() })
		cfg.PageHash = func(pfn uint64) (uint64, error) {
			buf := make([]byte, PageSize)
			if err := mc.ReadGPA(pfn*PageSize, buf); err != nil {
				return 0, err
			}
			return blk.HashPage(buf), nil
		}
	}
	img := make([]byte, 2<<20)
	rnd := rand.New(rand.NewPCG(7, 9))
	for i := PageSize; i < len(img); i++ {
		img[i] = byte(rnd.Uint32())
	}
	clear(img[100*PageSize : 110*PageSize])
	clear(img[:PageSize])
	part := func(i int, lba, n uint32) {
		e := img[446+16*i:]
		e[4] = 0x83
		binary.LittleEndian.PutUint32(e[8:], lba)
		binary.LittleEndian.PutUint32(e[12:], n)
	}
	part(0, 8, 1016)
	part(1, 1024, 3072)
	img[510], img[511] = 0x55, 0xaa
	disk := blk.NewMemFrom("disk0", img, false)
	tr := blk.NewTracker(cfg)
	srv, err := blk.ServeTracker(blk.TrackerSocketPath(t.TempDir(), uint32(dom)), tr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	tc, err := blk.DialTracker(srv.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	return &rig{ram: ram, disk: disk, tr: tr, tc: tc}
}

func (r *rig) block(b uint64, n int) []byte {
	p := make([]byte, n*PageSize)
	if _, err := r.disk.ReadAt(p, int64(b*PageSize)); err != nil {
		panic(err)
	}
	return p
}

// dma copies n disk blocks from block b into pfn (unless the pfn is a hole)
// and records the transfer, as the IDE DMA path does.
func (r *rig) dma(disk uint8, b uint64, pfn uint64, n int, writeRAM bool) {
	data := r.block(b, n)
	if writeRAM {
		copy(r.ram.Bytes()[pfn*PageSize:], data)
	}
	r.tr.DiskToGuest(r.tr.Begin(), disk, int64(b*PageSize), []blk.Segment{{GPA: pfn * PageSize, Len: uint32(len(data))}}, data)
}

func (r *rig) config() Config {
	return Config{
		Dom: dom, Mapper: r.ram, Pages: 1024, Batch: 100, Tracker: r.tc,
		Disks: []Disk{{Index: 0, Image: r.disk, Size: r.disk.Size(), Name: "disk0"}},
	}
}

// setup builds the guest of TestCheck:
//
//	pfns 16–31   blocks 200–215 by tracked DMA          correct, covered (p2)
//	pfns 40–47   blocks 20–27 copied by the "CPU"        equal, untracked (p1)
//	pfn  50      block 300 by DMA, then page rewritten   stale
//	pfn  51      block 301 by DMA, then the disk block rewritten behind the tracker's back: bad
//	pfn  60      zero block 100 by DMA                   zero page with a correct entry
//	pfns 70–73   a hole; pfn 71 has an entry             unmapped, unverifiable
//	pfn  80      an entry on disk 1 (no image given)     unverifiable
//	pfn  1500    block 320 by DMA (above Pages)          correct, covered, examined too
func (r *rig) setup() {
	r.dma(0, 200, 16, 16, true)
	copy(r.ram.Bytes()[40*PageSize:], r.block(20, 8))
	r.dma(0, 300, 50, 1, true)
	r.ram.Bytes()[50*PageSize+17] ^= 0xff
	r.dma(0, 301, 51, 1, true)
	if _, err := r.disk.WriteAt([]byte("new bytes"), 301*PageSize+5); err != nil {
		panic(err)
	}
	r.dma(0, 100, 60, 1, true)
	r.dma(0, 310, 71, 1, false)
	r.ram.AddHole(70, 4)
	copy(r.ram.Bytes()[80*PageSize:], "something else entirely")
	r.tr.DiskToGuest(r.tr.Begin(), 1, 0, []blk.Segment{{GPA: 80 * PageSize, Len: PageSize}}, r.ram.Bytes()[80*PageSize:81*PageSize])
	r.dma(0, 320, 1500, 1, true)
}

func TestCheck(t *testing.T) {
	r := newRig(t)
	r.setup()
	rep, err := Check(r.config())
	if err != nil {
		t.Fatal(err)
	}
	want := Report{
		Pages: 1025, Mapped: 1021, Unmapped: 4, ZeroPages: 1021 - 28, EqualPages: 25,
		Tracked: 22, TrackedZero: 1, Covered: 17, Stale: 1, Bad: 1, Unverifiable: 2, FalseEntries: 4,
		TrackerTotal: 22, DiskBlocks: 512, DiskZeroBlocks: 10, DiskDistinct: 502, // block 0 holds the MBR
	}
	got := *rep
	got.UnmappedErrs, got.Samples, got.EqualByRegion, got.MissedByRegion, got.MissedByReason = nil, nil, nil, nil, nil
	got.MissedByGPA, got.EqualByGPA, got.Runs, got.RegionShift, got.Secs, got.Coverage = nil, nil, nil, 0, 0, 0
	if got.Pages != want.Pages || got.Mapped != want.Mapped || got.Unmapped != want.Unmapped || got.ZeroPages != want.ZeroPages ||
		got.EqualPages != want.EqualPages || got.Tracked != want.Tracked || got.TrackedZero != want.TrackedZero ||
		got.Covered != want.Covered || got.Stale != want.Stale || got.Bad != want.Bad || got.Unverifiable != want.Unverifiable ||
		got.FalseEntries != want.FalseEntries || got.TrackerTotal != want.TrackerTotal || got.TrackerChanged != 0 ||
		got.Collisions != 0 || got.DiskBlocks != want.DiskBlocks || got.DiskZeroBlocks != want.DiskZeroBlocks ||
		got.DiskDistinct != want.DiskDistinct {
		t.Fatalf("report\n got %+v\nwant %+v", got, want)
	}
	if rep.Coverage != 17.0/25 {
		t.Errorf("coverage %v, want %v", rep.Coverage, 17.0/25)
	}
	if rep.UnmappedErrs["EFAULT"] != 4 {
		t.Errorf("unmapped by errno %v", rep.UnmappedErrs)
	}
	if rep.EqualByRegion["d0p2"] != 17 || rep.EqualByRegion["d0p1"] != 8 || rep.MissedByRegion["d0p1"] != 8 || rep.MissedByRegion["d0p2"] != 0 {
		t.Errorf("by region: equal %v missed %v", rep.EqualByRegion, rep.MissedByRegion)
	}
	if rep.MissedByReason["untracked"] != 8 || len(rep.MissedByReason) != 1 {
		t.Errorf("missed by reason %v", rep.MissedByReason)
	}
	if len(rep.Runs) != 1 || rep.Runs[0] != (Run{PFN: 40, Pages: 8, Region: "d0p1", Sector: 160, OnDisk: true, Reason: "untracked"}) {
		t.Errorf("runs %+v", rep.Runs)
	}
	kinds := map[uint64]string{}
	for _, s := range rep.Samples {
		kinds[s.PFN] = s.Kind
	}
	if kinds[50] != KindStale || kinds[51] != KindBad || kinds[71] != KindUnverifiable || kinds[80] != KindUnverifiable || len(kinds) != 4 {
		t.Errorf("false entries %+v", rep.Samples)
	}
	s := rep.Summary()
	for _, kv := range []string{"pages=1025 ", "mapped=1021 ", "zero_pages=993 ", "equal_pages=25 ", "tracked=22 ", "covered=17 ",
		"false_entries=4 ", "stale=1 ", "bad=1 ", "unverifiable=2 ", "coverage=0.6800 ", "equal_d0p1=8 missed_d0p1=8 ", " secs="} {
		if !strings.Contains(s, kv) {
			t.Errorf("summary lacks %q: %s", kv, s)
		}
	}
	var det strings.Builder
	rep.WriteDetails(&det)
	for _, line := range []string{"unmapped EFAULT: 4 pages", "missed run pfn 0x28+8 (gpa 0x28000): d0p1 sector 160, contiguous on disk, untracked",
		"false entry pfn 0x33 -> disk 0 sector 2408", "gpa 0x00000000-0x00ffffff: equal     25 missed      8"} {
		if !strings.Contains(det.String(), line) {
			t.Errorf("details lack %q:\n%s", line, det.String())
		}
	}
}

// With a validating tracker, as the device model's: the raw counts are
// TestCheck's, the answers the service gives hold no stale entry (pfn 50 is
// dropped, the hole's pfn 71 is not answered), only what validation cannot
// see: the disk changed behind the tracker's back (51), no image (80).
func TestCheckValidated(t *testing.T) {
	r := newRigWith(t, true)
	r.setup()
	rep, err := Check(r.config())
	if err != nil {
		t.Fatal(err)
	}
	if rep.TrackedRaw != 22 || rep.StaleRaw != 1 || rep.BadRaw != 1 || rep.UnverifiableRaw != 2 || rep.FalseRaw != 4 ||
		rep.Tracked != 20 || rep.Stale != 0 || rep.Bad != 1 || rep.Unverifiable != 1 || rep.FalseEntries != 2 ||
		rep.Covered != 17 || rep.EqualPages != 25 || rep.StaleDrops != 1 || rep.HashErrors != 1 ||
		rep.TrackerTotal != 21 || rep.TrackerChanged != 0 {
		t.Fatalf("%s", rep.Summary())
	}
	kinds := map[uint64]string{}
	for _, s := range rep.Samples {
		if !s.Raw {
			kinds[s.PFN] = s.Kind
		}
	}
	if kinds[51] != KindBad || kinds[80] != KindUnverifiable || len(kinds) != 2 {
		t.Errorf("false entries %+v", rep.Samples)
	}
	s := rep.Summary()
	for _, kv := range []string{"tracked=20 ", "false_entries=2 ", "stale=0 ", "tracked_raw=22 ", "false_raw=4 ", "stale_raw=1 ",
		"bad_raw=1 ", "unverifiable_raw=2 ", "stale_drops=1 ", "hash_errors=1 ", "coverage=0.6800 "} {
		if !strings.Contains(s, kv) {
			t.Errorf("summary lacks %q: %s", kv, s)
		}
	}
	var det strings.Builder
	rep.WriteDetails(&det)
	if !strings.Contains(det.String(), "raw false entry (not answered validated) pfn 0x32 -> disk 0 sector 2400") {
		t.Errorf("details lack the stale raw entry:\n%s", det.String())
	}
	// Stale entries are gone for good: a second check finds none, raw or not.
	rep, err = Check(r.config())
	if err != nil {
		t.Fatal(err)
	}
	if rep.StaleRaw != 0 || rep.FalseRaw != 3 || rep.FalseEntries != 2 || rep.StaleDrops != 0 || rep.HashErrors != 1 {
		t.Fatalf("second check: %s", rep.Summary())
	}
}

// A correct table over the same guest: coverage 1 once the untracked pages
// are recorded too, and no false entries.
func TestCheckAllCorrect(t *testing.T) {
	r := newRig(t)
	r.dma(0, 200, 16, 16, true)
	r.dma(0, 20, 40, 8, true)
	r.dma(0, 100, 60, 1, true) // a zero page: excluded
	r.ram.AddHole(70, 4)       // a hole without an entry: only counted
	rep, err := Check(r.config())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Coverage != 1 || rep.FalseEntries != 0 || rep.Covered != 24 || rep.EqualPages != 24 || rep.TrackedZero != 1 || rep.Unmapped != 4 {
		t.Fatalf("%s", rep.Summary())
	}
}

// Entries above the pfns asked of the tracker are never verified: they count
// as unverifiable from the tracker's stats.
func TestCheckEntriesBeyondLookup(t *testing.T) {
	r := newRig(t)
	r.dma(0, 200, 16, 4, true)
	r.dma(0, 320, 1500, 1, true)
	cfg := r.config()
	cfg.LookupPages = 1024
	rep, err := Check(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Pages != 1024 || rep.Tracked != 4 || rep.TrackerTotal != 5 || rep.Unverifiable != 1 || rep.FalseEntries != 1 || rep.Covered != 4 {
		t.Fatalf("%s", rep.Summary())
	}
}

// failMapper refuses any mapping that includes pfn bad, as a whole.
type failMapper struct {
	*xentest.GuestRAM
	bad   uint64
	calls int
}

func (f *failMapper) MapForeign(d xen.Domid, gfns []uint64, w bool) (*xen.ForeignMapping, error) {
	f.calls++
	if w {
		return nil, errors.New("mapped writable")
	}
	if slices.Contains(gfns, f.bad) {
		return nil, &xen.PageError{Dom: d, PFN: f.bad, Err: unix.EPERM}
	}
	return f.GuestRAM.MapForeign(d, gfns, w)
}

// A batch the mapper refuses is examined page by page; only the page that
// fails is lost.
func TestCheckBatchFallback(t *testing.T) {
	r := newRig(t)
	r.dma(0, 200, 16, 16, true)
	m := &failMapper{GuestRAM: r.ram, bad: 20}
	cfg := r.config()
	cfg.Mapper = m
	rep, err := Check(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Unmapped != 1 || rep.UnmappedErrs["EPERM"] != 1 || rep.Unverifiable != 1 || rep.Covered != 15 || rep.EqualPages != 15 {
		t.Fatalf("%s %v", rep.Summary(), rep.UnmappedErrs)
	}
	if m.calls != 11+100 { // 11 batches, the first again page by page
		t.Errorf("%d mapping calls", m.calls)
	}
}

// trackerDuringCheck records a transfer between the two stats calls: the
// guest was not quiet.
type trackerDuringCheck struct {
	*blk.TrackerClient
	r     *rig
	calls int
}

func (x *trackerDuringCheck) Stats() (blk.TrackerStats, error) {
	if x.calls++; x.calls == 2 {
		x.r.dma(0, 200, 16, 1, true)
	}
	return x.TrackerClient.Stats()
}

func TestCheckNotQuiet(t *testing.T) {
	r := newRig(t)
	cfg := r.config()
	cfg.Tracker = &trackerDuringCheck{TrackerClient: r.tc, r: r}
	rep, err := Check(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if rep.TrackerChanged != 1 {
		t.Fatalf("tracker_changed %d: %s", rep.TrackerChanged, rep.Summary())
	}
}

func TestCheckErrors(t *testing.T) {
	r := newRig(t)
	cfg := r.config()
	cfg.Disks = nil
	if _, err := Check(cfg); err == nil {
		t.Error("no disks accepted")
	}
	cfg = r.config()
	cfg.Disks = append(cfg.Disks, cfg.Disks[0])
	if _, err := Check(cfg); err == nil {
		t.Error("a disk given twice accepted")
	}
	cfg = r.config()
	r.disk.FailReads(300*PageSize, PageSize)
	if _, err := Check(cfg); err == nil || !strings.Contains(err.Error(), "disk 0 (disk0): read sector") {
		t.Errorf("unreadable disk: %v", err)
	}
	r.disk.ClearFaults()
	cfg = r.config()
	path := filepath.Join(t.TempDir(), "nothing")
	if _, err := blk.DialTracker(path); err == nil {
		t.Fatal("dialled nothing")
	}
	r.tc.Close()
	if _, err := Check(cfg); err == nil || !strings.Contains(err.Error(), "dom 5: tracker stats") {
		t.Errorf("closed tracker: %v", err)
	}
}
