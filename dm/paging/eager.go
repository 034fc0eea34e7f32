package paging

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// Defaults of EagerConfig.
const (
	DefaultMaxRead = 1 << 20 // 256 blocks a read
	DefaultReaders = 4
)

// sectorsPerBlock is how many 512-byte sectors (blk.Ref.Sector units) one
// 4 KiB block spans.
const sectorsPerBlock = blk.BlockSize / blk.SectorSize

// EagerConfig configures an Eager filler.
type EagerConfig struct {
	// DomID names the domain in errors and in the log.
	DomID uint32
	// Mem is guest RAM: in the device model, what its devices write through
	// (Machine.Mem, the foreign-memory map cache).
	Mem hw.GuestMemory
	// Disks maps a reference's disk (the IDE index, blk.Ref.Disk) to its
	// backend. A missing or nil backend is a drive without a medium.
	Disks map[uint8]blk.Backend
	// MaxRead bounds one coalesced disk read in bytes; 0 means
	// DefaultMaxRead. It is rounded down to whole blocks, at least one.
	MaxRead int
	// Readers is how many reads run at once; 0 means DefaultReaders.
	Readers int
	// Log receives the summary of Prepare (nil: slog.Default()).
	Log *slog.Logger
}

// EagerStats describe one Fill.
type EagerStats struct {
	Pages     int   // pages written into guest memory (= references): DiskPages + ZeroPages
	DiskPages int   // of which filled from a disk block
	ZeroPages int   // of which zero references, written with zeros (no disk read)
	Reads     int   // disk reads issued
	BytesRead int64 // bytes read from the disks (distinct blocks × 4 KiB)
	Duration  time.Duration
}

// MBps is the fill rate in guest-page megabytes (10⁶ bytes) per second.
func (s EagerStats) MBps() float64 {
	if s.Duration <= 0 {
		return 0
	}
	return float64(s.Pages) * blk.BlockSize / s.Duration.Seconds() / 1e6
}

// Eager fills every referenced page before the guest runs: the Pager for a
// hypervisor without mem_paging.
type Eager struct {
	cfg       EagerConfig
	maxBlocks int
	readers   int
}

var _ Pager = (*Eager)(nil)

// NewEager returns an Eager filler for cfg.
func NewEager(cfg EagerConfig) *Eager {
	e := &Eager{cfg: cfg, maxBlocks: DefaultMaxRead / blk.BlockSize, readers: DefaultReaders}
	if cfg.MaxRead > 0 {
		e.maxBlocks = max(cfg.MaxRead/blk.BlockSize, 1)
	}
	if cfg.Readers > 0 {
		e.readers = cfg.Readers
	}
	if e.cfg.Log == nil {
		e.cfg.Log = slog.Default()
	}
	return e
}

// Prepare implements Pager: Fill, and the summary in the log.
func (e *Eager) Prepare(ctx context.Context, refs []blk.Entry) error {
	if len(refs) == 0 {
		return nil
	}
	e.cfg.Log.Info("filling elided guest pages from the disks and zero pages before the guest runs (eager: no mem_paging)",
		"domid", e.cfg.DomID, "pages", len(refs))
	st, err := e.Fill(ctx, refs)
	if err != nil {
		return err
	}
	e.cfg.Log.Info("elided guest pages filled", "domid", e.cfg.DomID, "pages", st.Pages,
		"from-disk", st.DiskPages, "zeroed", st.ZeroPages,
		"reads", st.Reads, "bytes-read", st.BytesRead, "seconds", st.Duration.Seconds(), "MBps", st.MBps())
	return nil
}

// extent is one coalesced read, blocks [sector, sector+8·blocks) of disk,
// with the references it serves sorted by (sector, pfn). Several
// references may name the same block. An extent of zero references (zero
// set, dev nil) is instead a run of consecutive pfns to write zeros into.
type extent struct {
	disk   uint8
	dev    blk.Backend
	sector uint64
	blocks int
	refs   []blk.Entry
	zero   bool
}

// Fill reads the block of every disk reference, checks its hash and writes
// it into guest memory at the reference's pfn, and writes zeros into the pfn
// of every zero reference (blk.Ref.IsZeroPage; XALLOC pages are not
// necessarily zero on arrival). It checks every reference before any I/O;
// after that the first failure stops it, and pages already written stay
// written (the guest must not run then). refs is not changed.
func (e *Eager) Fill(ctx context.Context, refs []blk.Entry) (EagerStats, error) {
	start := time.Now()
	exts, maxBlocks, err := e.plan(refs)
	if err != nil {
		return EagerStats{}, err
	}
	st := EagerStats{Pages: len(refs)}
	var zeros []byte // shared, only read
	for _, x := range exts {
		if x.zero {
			st.ZeroPages += len(x.refs)
			if zeros == nil {
				zeros = make([]byte, e.maxBlocks*blk.BlockSize)
			}
			continue
		}
		st.DiskPages += len(x.refs)
		st.Reads++
		st.BytesRead += int64(x.blocks) * blk.BlockSize
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		failOnce sync.Once
		failErr  error
		wg       sync.WaitGroup
	)
	work := make(chan *extent)
	for range min(e.readers, len(exts)) {
		wg.Go(func() {
			buf := make([]byte, maxBlocks*blk.BlockSize)
			for x := range work {
				if ctx.Err() != nil {
					continue
				}
				var err error
				if x.zero {
					err = e.zeroExtent(x, zeros)
				} else {
					err = e.fillExtent(x, buf)
				}
				if err != nil {
					failOnce.Do(func() { failErr = err; cancel() })
				}
			}
		})
	}
feed:
	for i := range exts {
		select {
		case work <- &exts[i]:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if failErr != nil {
		return EagerStats{}, failErr
	}
	if err := ctx.Err(); err != nil {
		return EagerStats{}, fmt.Errorf("paging: domid %d: filling %d elided pages interrupted: %w", e.cfg.DomID, len(refs), err)
	}
	st.Duration = time.Since(start)
	return st, nil
}

// plan checks every reference and groups them into extents of adjacent
// blocks. It returns the extents and the largest one's block count.
func (e *Eager) plan(refs []blk.Entry) ([]extent, int, error) {
	domid := e.cfg.DomID
	sorted := true // by pfn, strictly (as devstate decodes them): no pfn twice
	nzero := 0
	for i, r := range refs {
		if i > 0 && r.PFN <= refs[i-1].PFN {
			sorted = false
		}
		if r.IsZeroPage() {
			if r.PFN > blk.MaxPFN {
				return nil, 0, refErr(domid, r, fmt.Errorf("pfn beyond libxc's 52 bits: %w", ErrBadRef))
			}
			if r.Sector != 0 || r.Hash != blk.ZeroPageHash {
				return nil, 0, refErr(domid, r, fmt.Errorf("zero reference with sector %d and hash %#016x (want 0 and %#016x): %w",
					r.Sector, r.Hash, uint64(blk.ZeroPageHash), ErrBadRef))
			}
			nzero++
			continue
		}
		dev := e.cfg.Disks[r.Disk]
		if dev == nil {
			return nil, 0, refErr(domid, r, fmt.Errorf("IDE drive %d has no medium on this machine: %w", r.Disk, ErrUnknownDisk))
		}
		if r.PFN > blk.MaxPFN {
			return nil, 0, refErr(domid, r, fmt.Errorf("pfn beyond libxc's 52 bits: %w", ErrBadRef))
		}
		if r.Sector%sectorsPerBlock != 0 {
			return nil, 0, refErr(domid, r, fmt.Errorf("sector is not a multiple of %d (4 KiB blocks): %w", sectorsPerBlock, ErrBadRef))
		}
		if size := dev.Size(); size < blk.BlockSize || r.Sector > uint64(size-blk.BlockSize)/blk.SectorSize {
			return nil, 0, refErr(domid, r, fmt.Errorf("block beyond the end of %s (%d bytes): %w", dev.Name(), size, ErrBadRef))
		}
	}
	if !sorted {
		if err := checkDuplicates(domid, refs); err != nil {
			return nil, 0, err
		}
	}
	// By block: the disk references, then the zero references by pfn
	// (ZeroDisk is the largest disk number, their sector 0).
	bySector := slices.Clone(refs)
	slices.SortFunc(bySector, func(a, b blk.Entry) int {
		return cmp.Or(cmp.Compare(a.Disk, b.Disk), cmp.Compare(a.Sector, b.Sector), cmp.Compare(a.PFN, b.PFN))
	})
	var exts []extent
	// Runs of consecutive zero pfns, each at most maxBlocks pages: one
	// write of zeros each.
	zero := bySector[len(bySector)-nzero:]
	for i := 0; i < len(zero); {
		j := i + 1
		for j < len(zero) && j-i < e.maxBlocks && zero[j].PFN == zero[j-1].PFN+1 {
			j++
		}
		exts = append(exts, extent{disk: blk.ZeroDisk, blocks: j - i, refs: zero[i:j], zero: true})
		i = j
	}
	bySector = bySector[:len(bySector)-nzero]
	maxBlocks := 0
	for i := 0; i < len(bySector); {
		r := bySector[i]
		x := extent{disk: r.Disk, dev: e.cfg.Disks[r.Disk], sector: r.Sector, blocks: 1}
		j := i + 1
		for ; j < len(bySector); j++ {
			n := bySector[j]
			if n.Disk != x.disk || n.Sector > bySector[j-1].Sector+sectorsPerBlock {
				break
			}
			blocks := int((n.Sector-x.sector)/sectorsPerBlock) + 1
			if blocks > e.maxBlocks {
				break
			}
			x.blocks = blocks
		}
		x.refs = bySector[i:j]
		exts = append(exts, x)
		maxBlocks = max(maxBlocks, x.blocks)
		i = j
	}
	return exts, maxBlocks, nil
}

func checkDuplicates(domid uint32, refs []blk.Entry) error {
	byPFN := slices.Clone(refs)
	slices.SortFunc(byPFN, func(a, b blk.Entry) int { return cmp.Compare(a.PFN, b.PFN) })
	for i := 1; i < len(byPFN); i++ {
		if byPFN[i].PFN == byPFN[i-1].PFN {
			p := byPFN[i-1]
			return refErr(domid, byPFN[i], fmt.Errorf("pfn also referenced to disk %d sector %d: %w", p.Disk, p.Sector, ErrBadRef))
		}
	}
	return nil
}

// zeroExtent writes zeros into the run of consecutive pfns x (at most
// len(zeros) bytes).
func (e *Eager) zeroExtent(x *extent, zeros []byte) error {
	first := x.refs[0]
	if err := e.cfg.Mem.WriteGPA(first.PFN<<hw.PageShift, zeros[:len(x.refs)*blk.BlockSize]); err != nil {
		// Find the page guest memory refuses, to name it.
		bad := first
		for _, r := range x.refs {
			if err1 := e.cfg.Mem.WriteGPA(r.PFN<<hw.PageShift, zeros[:blk.BlockSize]); err1 != nil {
				bad, err = r, err1
				break
			}
		}
		return refErr(e.cfg.DomID, bad, fmt.Errorf("%w: %w", ErrBadPFN, err))
	}
	return nil
}

// fillExtent reads x into buf, then checks and writes its pages, a run of
// consecutive pfns on consecutive blocks at a time.
func (e *Eager) fillExtent(x *extent, buf []byte) error {
	domid := e.cfg.DomID
	n := x.blocks * blk.BlockSize
	b := buf[:n]
	got, err := x.dev.ReadAt(b, int64(x.sector*blk.SectorSize))
	if got < n || (err != nil && !errors.Is(err, io.EOF)) {
		if got < n && (err == nil || errors.Is(err, io.EOF)) {
			// Name the first reference whose block is incomplete.
			r := x.refs[0]
			for _, c := range x.refs {
				if int((c.Sector-x.sector)*blk.SectorSize)+blk.BlockSize > got {
					r = c
					break
				}
			}
			return refErr(domid, r, fmt.Errorf("%s returned %d of the %d bytes at sector %d: %w", x.dev.Name(), got, n, x.sector, ErrShortRead))
		}
		return refErr(domid, x.refs[0], fmt.Errorf("reading %d blocks at sector %d of %s: %w: %w", x.blocks, x.sector, x.dev.Name(), ErrRead, err))
	}
	page := func(r blk.Entry) []byte {
		off := (r.Sector - x.sector) * blk.SectorSize
		return b[off : off+blk.BlockSize]
	}
	for i := 0; i < len(x.refs); {
		j := i + 1
		for j < len(x.refs) && x.refs[j].PFN == x.refs[j-1].PFN+1 && x.refs[j].Sector == x.refs[j-1].Sector+sectorsPerBlock {
			j++
		}
		run := x.refs[i:j]
		for _, r := range run {
			if h := blk.HashPage(page(r)); h != r.Hash {
				return refErr(domid, r, fmt.Errorf("block hashes to %#016x, the reference says %#016x: %w", h, r.Hash, ErrHashMismatch))
			}
		}
		off := (run[0].Sector - x.sector) * blk.SectorSize
		if err := e.cfg.Mem.WriteGPA(run[0].PFN<<hw.PageShift, b[off:off+uint64(len(run))*blk.BlockSize]); err != nil {
			// Find the page guest memory refuses, to name it.
			bad := run[0]
			for _, r := range run {
				if err1 := e.cfg.Mem.WriteGPA(r.PFN<<hw.PageShift, page(r)); err1 != nil {
					bad, err = r, err1
					break
				}
			}
			return refErr(domid, bad, fmt.Errorf("%w: %w", ErrBadPFN, err))
		}
		i = j
	}
	return nil
}
