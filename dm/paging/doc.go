// Package paging is the destination side of a compacted migration: it makes
// the guest pages the migration transport elided (dm/migstream sent them as
// XALLOC entries without data, and listed them in the PAGEREFS section of
// the device state, blk.Entry: pfn, IDE disk, sector, XXH3-64 of the page)
// hold their disk blocks before the guest can read them.
//
// A Pager does that for the device model (package dm installs one as
// dm.DevState.PageRefs). Its Prepare runs while the device model loads
// -incoming fd:N: the domain is paused (libxl unpauses it only after QMP
// cont) and the ioreq server is not enabled yet. When Prepare fails the
// device model exits before it signals readiness, so libxl fails the
// restore and the guest never runs with a page that is not what the source
// had (migration-paging.md §3.4, §8.2 "Receiver side").
//
// # Eager (eager.go)
//
// Eager is the pager for a hypervisor without CONFIG_MEM_PAGING (Debian's
// Xen 4.17; migration-paging.md §8.3 "Eager variant"). Prepare reads every
// referenced block from its disk, adjacent blocks coalesced into reads of up
// to EagerConfig.MaxRead bytes, a few reads in parallel; checks the XXH3-64
// of each 4 KiB (blk.HashPage, the tracker's hash) against the reference;
// and writes the page into guest memory through the foreign-memory map
// cache. Zero references (blk.Ref.IsZeroPage: all-zero pages the transport
// elided) read no disk: runs of consecutive pfns are written with zeros
// (XALLOC pages arrive with whatever Xen's allocator returned, not
// necessarily zeros). The whole cost is downtime, and counts against libxl's 60 s
// device-model start-up timeout. Any reference it cannot satisfy — an
// unknown disk, a block beyond the end of the disk, a failed or short read,
// a hash mismatch, a pfn guest memory refuses (ErrBadGPA: not populated, or
// outside RAM) — fails Prepare with an error naming the domid, pfn, disk and
// sector and wrapping one of the Err* classes.
//
// # Lazy (not implemented)
//
// With CONFIG_MEM_PAGING a Lazy pager would implement the same interface:
// Prepare enables the paging ring (XEN_DOMCTL_VM_EVENT_OP_PAGING) and
// nominates and evicts each referenced pfn; after cont, vCPU faults arrive
// on the vm_event ring and are served by reading the block (XENMEM_paging_op
// prep with a buffer), a prefetcher loads the rest, and guest writes to
// unloaded blocks are fenced (migration-paging.md §6, §8.2). The dm/xen
// primitives exist (paging.go, vmevent.go); the pager does not.
package paging
