package dm

import (
	"log/slog"
	"sync"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// dirtyFlushDelay bounds how long a reported page waits before it is sent
// to Xen when nothing else flushes the batch.
const dirtyFlushDelay = 5 * time.Millisecond

// maxPendingExtents triggers an immediate flush (XEN_DMOP_modified_memory
// takes at most 256 extents per call).
const maxPendingExtents = 256

// dirtyLog implements hw.DirtyReporter: while the global dirty log is on
// (QMP xen-set-global-dirty-log, i.e. during live migration) pages the DM
// wrote are batched and reported with XEN_DMOP_modified_memory, so libxc
// sends them again (QEMU xen_hvm_modified_memory, only "while
// xen_in_migration"). When it is off, MarkDirty does nothing.
//
// Batches are flushed when they reach 256 extents, after each round of
// ioreqs, dirtyFlushDelay after the first pending page (DMA from device
// goroutines), and before the log is turned off or the VM stops.
type dirtyLog struct {
	dm  interface{ ModifiedMemory([]xen.PFNRange) error }
	log *slog.Logger

	mu      sync.Mutex
	on      bool
	pending []xen.PFNRange
	timer   *time.Timer
	flushMu sync.Mutex // orders flushes
}

var _ hw.DirtyReporter = (*dirtyLog)(nil)

func newDirtyLog(dm interface{ ModifiedMemory([]xen.PFNRange) error }, log *slog.Logger) *dirtyLog {
	return &dirtyLog{dm: dm, log: log}
}

func (d *dirtyLog) enabled() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.on
}

// MarkDirty records pfn..pfn+n-1.
func (d *dirtyLog) MarkDirty(pfn, n uint64) {
	if n == 0 {
		return
	}
	d.mu.Lock()
	if !d.on {
		d.mu.Unlock()
		return
	}
	merged := false
	if k := len(d.pending); k > 0 {
		last := &d.pending[k-1]
		// Merge overlapping or adjacent ranges with the last one (the
		// common case: sequential DMA, and the same write reported twice).
		if pfn <= last.First+last.Count && last.First <= pfn+n {
			lo := min(last.First, pfn)
			hi := max(last.First+last.Count, pfn+n)
			last.First, last.Count = lo, hi-lo
			merged = true
		}
	}
	if !merged {
		d.pending = append(d.pending, xen.PFNRange{First: pfn, Count: n})
	}
	full := len(d.pending) >= maxPendingExtents
	if !full && d.timer == nil {
		d.timer = time.AfterFunc(dirtyFlushDelay, d.flush)
	}
	d.mu.Unlock()
	if full {
		d.flush()
	}
}

// flush sends what is pending.
func (d *dirtyLog) flush() {
	d.flushMu.Lock()
	defer d.flushMu.Unlock()
	d.mu.Lock()
	batch := d.pending
	d.pending = nil
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	if err := d.dm.ModifiedMemory(batch); err != nil {
		// Nothing sensible to retry with; the migration will be
		// inconsistent for these pages, so say so loudly.
		d.log.Error("XEN_DMOP_modified_memory failed: pages written by the device model may be missed by live migration",
			"extents", len(batch), "first-pfn", hex(batch[0].First), "err", err)
	}
}

// setEnabled turns the log on or off; turning it off flushes first.
func (d *dirtyLog) setEnabled(on bool) {
	if !on {
		d.flush()
	}
	d.mu.Lock()
	d.on = on
	d.mu.Unlock()
}

// stop flushes and stops the timer for good (teardown).
func (d *dirtyLog) stop() {
	d.flush()
	d.mu.Lock()
	d.on = false
	d.mu.Unlock()
}
