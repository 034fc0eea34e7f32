package tests

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// TestLabTracker checks the page↔sector tracker of xen-dm-go against the truth on real Xen
// (issue 6). It reads the dom0 memory check of the compact scenario's run (shared with
// TestLabCompact, scripts/lab/scenarios/compact.sh step 1): after the guest has read its 64 MiB
// of shipped files and run its workload rounds, it is paused and `xen-dm-go tracker-check` in
// dom0 maps every guest page, hashes it and compares it with the disk's 4 KiB blocks and with
// the tracker's answers. At least 95 % of the non-zero guest pages that equal a disk block must
// have a correct entry, and no entry may be false. It prints
//
//	RESULT tracker coverage=<covered ÷ non-zero pages equal to a disk block> false_entries=<n> ns_per_page=<…>
//
// where ns_per_page is the tracker's cost per recorded page (BenchmarkTrackerRecord's
// measurement, run here in-process).
func TestLabTracker(t *testing.T) {
	res, err := compactScenario(t)
	if res == nil {
		t.Fatalf("lab scenario compact failed: %v", err)
	}
	if err != nil && res.Values["coverage"] == "" {
		t.Errorf("lab scenario compact failed before the tracker check:\n%v", err)
	}
	v := res.Values
	t.Logf("values: %v", v)
	t.Logf("tracker-check (%s):\n%s", res.Path("tracker-check.txt"), res.Log("tracker-check.txt"))
	if v["coverage"] == "" {
		t.Fatalf("the check gave no result (see %s)", res.Path("tracker-check.err"))
	}
	nsPerPage := trackerRecordNsPerPage()
	fmt.Printf("RESULT tracker coverage=%s false_entries=%s ns_per_page=%.0f\n", v["coverage"], v["false_entries"], nsPerPage)

	cov, err := strconv.ParseFloat(v["coverage"], 64)
	if err != nil {
		t.Fatalf("coverage=%q: %v", v["coverage"], err)
	}
	if cov < 0.95 {
		t.Errorf("coverage %.4f < 0.95: %s of %s non-zero guest pages equal to a disk block have a correct entry "+
			"(missed: %s untracked, %s stale, %s bad; by disk region: %s)", cov, v["covered"], v["equal_pages"],
			v["missed_untracked"], v["missed_stale"], v["missed_bad"], trackerRegions(v))
	}
	if v["false_entries"] != "0" {
		t.Errorf("false_entries=%s (stale %s: the guest changed the page after the transfer; bad %s; unverifiable %s)",
			v["false_entries"], v["stale"], v["bad"], v["unverifiable"])
	}
	if v["tracker_changed"] != "0" {
		t.Errorf("tracker_changed=%s: the tracker changed during the check (the guest was not quiet)", v["tracker_changed"])
	}
	if eq, _ := strconv.Atoi(v["equal_pages"]); eq < 64<<20/blk.BlockSize {
		t.Errorf("equal_pages=%s: fewer than the 64 MiB the guest read", v["equal_pages"])
	}
	if t.Failed() {
		t.Logf("device model log:\n%s", tail(res.Log("var-log-xen/qemu-dm-cp.log"), 40))
	}
}

func trackerRegions(v map[string]string) string {
	s := ""
	for _, p := range []string{"d0p1", "d0p2", "d0-other"} {
		if v["equal_"+p] != "" {
			s += fmt.Sprintf(" %s %s/%s", p, v["missed_"+p], v["equal_"+p])
		}
	}
	return s
}

// trackerRecordNsPerPage measures what dm/blk's BenchmarkTrackerRecord measures, through the
// public Tracker API: 64 KiB disk reads recorded into a 1 GiB guest (hash each 4 KiB page,
// update both indexes), in ns per page.
func trackerRecordNsPerPage() float64 {
	const guestPages = 1 << 18
	const pagesPerIO = 16
	r := testing.Benchmark(func(b *testing.B) {
		tr := blk.NewTracker(blk.TrackerConfig{})
		data := make([]byte, pagesPerIO*blk.BlockSize)
		rnd := rand.New(rand.NewPCG(1, 2))
		for i := range data {
			data[i] = byte(rnd.Uint32())
		}
		segs := make([]blk.Segment, 1)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			pfn := uint64(rnd.IntN(guestPages/pagesPerIO)) * pagesPerIO
			segs[0] = blk.Segment{GPA: pfn * blk.BlockSize, Len: uint32(len(data))}
			off := int64(rnd.IntN(1<<20)) * blk.BlockSize
			data[0] = byte(i)
			tr.DiskToGuest(tr.Begin(), 0, off, segs, data)
		}
	})
	if r.N == 0 {
		return 0
	}
	return float64(r.T.Nanoseconds()) / float64(r.N*pagesPerIO)
}
