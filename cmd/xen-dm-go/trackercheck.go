package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/blk/coverage"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
)

func init() {
	subcommands["tracker-check"] = subcommand{"check a paused guest's page tracker against its memory and disk (dom0, root)", runTrackerCheck}
}

const trackerCheckUsage = `usage: xen-dm-go tracker-check --domid D --disk [INDEX=]PATH [flags]

Maps every page of domain D read-only, hashes it, and compares it with the
4 KiB blocks of the guest's disk images (INDEX: the tracker's disk number,
the IDE index, hda = 0; default 0) and with the entries of the device model's
page tracker. Pause the guest first (xl pause) and give the device model a
moment to finish in-flight I/O. The tracker is asked twice for every pfn:
raw (its table as it is) and validated (what the migration transport is
answered: the device model checks each entry against the guest page and
drops the stale ones, so this check changes the table). Prints one line

  tracker-check pages=… mapped=… zero_pages=… equal_pages=… tracked=… covered=… false_entries=… coverage=… … secs=…

with, among others:

  pages, mapped, unmapped  guest pages examined; of which mappable; holes
  zero_pages               mapped all-zero pages (excluded everywhere)
  equal_pages              non-zero pages whose bytes equal some 4 KiB disk block
  tracked                  validated entries answered for the pages examined
  covered                  non-zero pages with a correct validated entry (page =
                           block at its sector, hash = hash of the page)
  coverage                 covered / equal_pages
  false_entries            validated entries that are not correct: stale + bad +
                           unverifiable (the issue's goal: 0)
  stale                    validated entries whose page the guest's CPU changed
                           (0 unless the guest ran during the check)
  bad                      validated entries that misdescribe the disk (e.g. a
                           block changed without invalidation)
  unverifiable             validated entries on unmapped pages, on a disk whose
                           image was not given, or beyond the pfns looked up
  tracked_raw, false_raw, stale_raw, bad_raw, unverifiable_raw
                           the same of the raw entries: the claims the table held
                           before validation (stale_raw: pages the guest's CPU
                           rewrote after the DMA the tracker recorded)
  stale_drops, hash_errors entries the device model dropped as stale / could not
                           validate (answered not tracked, kept) during the check
  tracker_total            entries the tracker holds after the check
  tracker_changed          tracker events by transfers or writes during the check
                           (not the check's own drops): non-zero = guest not quiet
  missed_untracked, missed_stale, missed_bad, missed_unverifiable
                           equal non-zero pages without a correct validated entry,
                           by why (no validated entry, or the entry's kind)

then the diagnosis (unmapped pages, where the missed pages are, false
entries, raw false entries the validated lookup did not answer). Exit
status: 0 when the check ran, 1 when it could not (a device model without
the raw lookup fails it), 2 for usage errors.
`

// diskFlags collects repeated --disk [INDEX=]PATH.
type diskFlags []struct {
	index uint8
	path  string
}

func (d *diskFlags) String() string { return fmt.Sprint(*d) }

func (d *diskFlags) Set(v string) error {
	idx, path := 0, v
	if i := strings.IndexByte(v, '='); i > 0 {
		n, err := strconv.Atoi(v[:i])
		if err != nil || n < 0 || n > 127 {
			return fmt.Errorf("disk index %q: want 0–127", v[:i])
		}
		idx, path = n, v[i+1:]
	}
	if path == "" {
		return errors.New("empty disk path")
	}
	*d = append(*d, struct {
		index uint8
		path  string
	}{uint8(idx), path})
	return nil
}

// runTrackerCheck is `xen-dm-go tracker-check`.
func runTrackerCheck(args []string, _ io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tracker-check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, trackerCheckUsage, "\nflags:\n"); fs.PrintDefaults() }
	domid := fs.Int("domid", -1, "domain `D` to check")
	var disks diskFlags
	fs.Var(&disks, "disk", "guest disk image `[INDEX=]PATH` (repeatable; INDEX defaults to 0)")
	runDir := fs.String("run-dir", migstream.DefaultRunDir, "directory of the device model's tracker socket")
	trackerPath := fs.String("tracker", "", "tracker socket `path` (overrides --run-dir)")
	pages := fs.Uint64("pages", 0, "guest pages to examine, pfns [0, `N`) (0: xenstore memory/static-max)")
	batch := fs.Int("batch", 1024, "pages per foreign mapping")
	samples := fs.Int("samples", 10, "false entries to print")
	regionMiB := fs.Uint("region-mib", 16, "granularity of the guest-address histogram, `MiB` (a power of two)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *domid < 1 || *domid >= int(xen.DomidSelf) || len(disks) == 0 || fs.NArg() != 0 ||
		*regionMiB == 0 || *regionMiB&(*regionMiB-1) != 0 {
		fs.Usage()
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "xen-dm-go tracker-check: "+format+"\n", a...)
		return 1
	}
	dom := xen.Domid(*domid)

	if *pages == 0 {
		n, err := guestPages(dom)
		if err != nil {
			return fail("%v (pass --pages)", err)
		}
		*pages = n
	}
	var cdisks []coverage.Disk
	for _, d := range disks {
		f, err := os.Open(d.path)
		if err != nil {
			return fail("dom %d disk %d: %v", dom, d.index, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return fail("dom %d disk %d: %v", dom, d.index, err)
		}
		cdisks = append(cdisks, coverage.Disk{Index: d.index, Image: f, Size: st.Size(), Name: d.path})
	}
	path := *trackerPath
	if path == "" {
		path = blk.TrackerSocketPath(*runDir, uint32(dom))
	}
	tc, err := blk.DialTracker(path)
	if err != nil {
		return fail("dom %d: %v", dom, err)
	}
	defer tc.Close()
	pc, err := xen.OpenPrivcmd()
	if err != nil {
		return fail("dom %d: %v", dom, err)
	}
	defer pc.Close()

	var shift uint
	for 1<<shift < *regionMiB {
		shift++
	}
	rep, err := coverage.Check(coverage.Config{
		Dom: dom, Mapper: pc, Pages: *pages, Batch: *batch, Disks: cdisks, Tracker: tc,
		Samples: max(*samples, -1), RegionShift: 20 + shift,
	})
	if err != nil {
		return fail("%v", err)
	}
	fmt.Fprintf(stdout, "tracker-check %s\n", rep.Summary())
	rep.WriteDetails(stdout)
	if rep.TrackerChanged != 0 {
		fmt.Fprintf(stderr, "xen-dm-go tracker-check: warning: the tracker changed %d times during the check: is dom %d paused?\n",
			rep.TrackerChanged, dom)
	}
	return 0
}

// guestPages reads the guest's maximum memory from xenstore
// (memory/static-max, KiB) as a page count.
func guestPages(dom xen.Domid) (uint64, error) {
	c, err := xenstore.Open()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p := fmt.Sprintf("/local/domain/%d/memory/static-max", dom)
	v, err := c.Read(ctx, p)
	if err != nil {
		return 0, fmt.Errorf("dom %d: %w", dom, err)
	}
	kib, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil || kib == 0 {
		return 0, fmt.Errorf("dom %d: %s = %q: not a size in KiB", dom, p, v)
	}
	return (kib*1024 + xen.PageSize - 1) / xen.PageSize, nil
}
