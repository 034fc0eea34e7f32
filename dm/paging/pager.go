package paging

import (
	"context"
	"errors"
	"fmt"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// Pager makes the guest pages named by page references hold their disk
// blocks for the guest. Eager is the implementation without mem_paging.
type Pager interface {
	// Prepare is called once with the references of the incoming device
	// state (sorted by pfn, as devstate decodes them), while the domain is
	// paused and before the ioreq server is enabled. When it returns nil
	// the guest may run: every referenced pfn holds its block (eager) or
	// will fault to the pager on first access (lazy). An error means the
	// guest must not run.
	Prepare(ctx context.Context, refs []blk.Entry) error
}

// Classes of failure; every error a Pager returns for a reference wraps
// exactly one of them (test with errors.Is), together with the cause from
// the disk or guest memory, if any.
var (
	// ErrUnknownDisk: the reference names a disk this machine has no
	// medium for.
	ErrUnknownDisk = errors.New("no such disk")
	// ErrBadRef: the reference itself cannot be right: a sector that is not
	// 4 KiB-aligned, a block beyond the end of the disk, a pfn beyond 52
	// bits, a pfn named twice, or a zero reference that is not blk.ZeroRef.
	ErrBadRef = errors.New("malformed page reference")
	// ErrRead: the disk read failed (the backend's error is wrapped too).
	ErrRead = errors.New("disk read failed")
	// ErrShortRead: the disk returned fewer bytes than the block.
	ErrShortRead = errors.New("short disk read")
	// ErrHashMismatch: the block read from the disk does not hash to the
	// reference's XXH3-64: the disk changed since the source's tracker
	// saw it, or the reference is wrong.
	ErrHashMismatch = errors.New("block does not match the page's hash")
	// ErrBadPFN: guest memory refused the write (hw.ErrBadGPA is wrapped
	// too): the pfn is not populated or outside guest RAM.
	ErrBadPFN = errors.New("pfn not writable in guest memory")
)

// refErr wraps err with what names one reference.
func refErr(domid uint32, r blk.Entry, err error) error {
	if r.IsZeroPage() {
		return fmt.Errorf("paging: domid %d pfn %#x zero page (disk %d sector %d): %w", domid, r.PFN, r.Disk, r.Sector, err)
	}
	return fmt.Errorf("paging: domid %d pfn %#x disk %d sector %d: %w", domid, r.PFN, r.Disk, r.Sector, err)
}
