package dm

import (
	"context"
	"log/slog"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/paging"
)

// EagerPageRefs is the DevState.PageRefs of the device model on a Xen
// without mem_paging (Debian's 4.17): the pages the migration transport
// elided are read from the disks, checked against their XXH3-64 and written
// into guest memory by paging.Eager while the incoming state loads, so
// before the ioreq server is enabled and before libxl's cont unpauses the
// domain. Any reference it cannot fill exactly fails the load, and the guest
// never runs. log receives the fill's summary (nil: slog.Default()).
//
// The pages filled from the disks are then seeded into the machine's
// tracker: each is an exact copy of its disk block (the hash was checked on
// the bytes written), so the next migration of this domain may elide it
// again. Zero references (all-zero pages) are written with zeros and not
// seeded: the transport elides zero pages without the tracker.
//
// The filler writes through Machine.Mem, like a device's DMA, so each page
// is also handed to the dirty log and dropped from the tracker (then seeded
// afresh). Neither matters here: the dirty log reports to Xen only while
// libxl has switched it on for a save from this device model
// (xen-set-global-dirty-log), which cannot have happened before the state
// is loaded, so nothing is reported; and a reported page would only make
// libxc send it once more, never less. A later migration starts with
// libxc's full pass over every pfn, and the transport elides a page only if
// its bytes hash to the tracked entry, so the seeded entries cannot make
// a page go stale.
func EagerPageRefs(log *slog.Logger) func(ctx context.Context, m *Machine, refs []blk.Entry) error {
	if log == nil {
		log = slog.Default()
	}
	return pagerPageRefs(log, func(m *Machine) paging.Pager {
		disks := map[uint8]blk.Backend{}
		for _, d := range m.Disks {
			if d.Backend != nil {
				disks[uint8(d.Index)] = d.Backend
			}
		}
		return paging.NewEager(paging.EagerConfig{DomID: m.Info.DomID, Mem: m.Mem, Disks: disks, Log: log})
	})
}

// pagerPageRefs is a DevState.PageRefs that hands the references to the
// pager newPager makes for the machine and, once that succeeded, seeds the
// machine's tracker with them.
func pagerPageRefs(log *slog.Logger, newPager func(m *Machine) paging.Pager) func(context.Context, *Machine, []blk.Entry) error {
	return func(ctx context.Context, m *Machine, refs []blk.Entry) error {
		if err := newPager(m).Prepare(ctx, refs); err != nil {
			return err
		}
		if m.Tracker != nil && len(refs) > 0 {
			n := m.Tracker.Seed(refs) // skips the zero references: no disk copies
			disk := 0
			for _, r := range refs {
				if !r.IsZeroPage() {
					disk++
				}
			}
			log.Info("page tracker seeded with the pages filled from the disks", "domid", m.Info.DomID, "seeded", n, "pages", disk)
		}
		return nil
	}
}
