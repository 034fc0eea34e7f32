package migstream_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream/streamtest"
)

var update = flag.Bool("update", false, "rewrite tests/testdata/streams")

var streamsDir = filepath.Join("..", "..", "tests", "testdata", "streams")

// goldenStreams are the synthetic streams kept in tests/testdata/streams for
// other tools (verify-stream-v2 in the lab, the CLI): name → stream, debug.
func goldenStreams() map[string]struct {
	s     *streamtest.Stream
	debug bool
} {
	return map[string]struct {
		s     *streamtest.Stream
		debug bool
	}{
		"hvm-save":          {streamtest.Generate(streamtest.Config{Seed: 7, Pages: 12, Batch: 5, Rounds: 1}), false},
		"hvm-migrate-debug": {streamtest.Generate(streamtest.Config{Seed: 8, Pages: 12, Batch: 5, Rounds: 1, Migrate: true, Verify: true}), true},
	}
}

type trackerRow struct {
	PFN    uint64 `json:"pfn"`
	Disk   uint8  `json:"disk"`
	Sector uint64 `json:"sector"`
	Hash   uint64 `json:"hash"`
}

func TestGoldenStreams(t *testing.T) {
	for name, g := range goldenStreams() {
		// As `xen-dm-go stream compact` does: disk copies and all-zero pages.
		compact, _ := filter(t, g.s.Bytes, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: g.s.Tracker, Zero: true, Debug: g.debug}})
		var rows []trackerRow
		for pfn, r := range g.s.Tracker.Refs {
			rows = append(rows, trackerRow{pfn, r.Disk, r.Sector, r.Hash})
		}
		slices.SortFunc(rows, func(a, b trackerRow) int { return int(a.PFN) - int(b.PFN) })
		table, _ := json.MarshalIndent(rows, "", " ")
		files := map[string][]byte{
			name + ".xl":           g.s.Bytes,
			name + ".compact.xl":   compact,
			name + ".tracker.json": append(table, '\n'),
		}
		for f, want := range files {
			path := filepath.Join(streamsDir, f)
			if *update {
				if err := os.MkdirAll(streamsDir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, want, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./dm/migstream -run Golden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s differs from the generator (run with -update if the change is intended)", f)
			}
			if filepath.Ext(f) == ".xl" {
				roundTrip(t, got)
			}
		}
	}
}

// roundTrip checks that b decodes, re-encodes identically, and verifies.
func roundTrip(t *testing.T, b []byte) {
	t.Helper()
	var out bytes.Buffer
	if _, err := ms.Copy(&out, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), b) {
		t.Fatal("round trip differs")
	}
	if _, err := ms.Verify(bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
}

// Real `xl save` streams captured in the lab, when present: round trip,
// verify, and compact with a tracker that knows every other data page.
func TestCapturedStreams(t *testing.T) {
	// The lab names its captured streams *.xl (the xl save format) and puts
	// .meta and .verify.txt files beside them.
	files, _ := filepath.Glob(filepath.Join("..", "..", "tests", "testdata", "captured", "*.xl"))
	n := 0
	for _, f := range files {
		if st, err := os.Stat(f); err != nil || st.IsDir() {
			continue
		}
		n++
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			roundTrip(t, b)
			tr := streamtest.NewFakeTracker()
			k := 0
			for _, it := range decodeAll(t, b) {
				if !it.IsLibxc(ms.LibxcPageData) {
					continue
				}
				d := 0
				for _, e := range it.Pages.Entries {
					if e.Type() == ms.PageNOTAB {
						if _, seen := tr.Refs[e.PFN()]; !seen && k%2 == 0 {
							tr.Refs[e.PFN()] = blk.Ref{Disk: 0, Sector: 8 * e.PFN(), Hash: blk.HashPage(it.Pages.Page(d))}
						}
						k++
					}
					if e.Type().HasData() {
						d++
					}
				}
			}
			out, el := filter(t, b, ms.FilterOptions{Check: true, ElideOptions: ms.ElideOptions{Tracker: tr, Zero: true}})
			if _, err := ms.Verify(bytes.NewReader(out)); err != nil {
				t.Fatal(err)
			}
			_, refs, err := ms.PageRefs(emulatorBlob(t, out))
			if err != nil || len(refs) != len(el.Elided()) {
				t.Fatalf("references: %d of %d, %v", len(refs), len(el.Elided()), err)
			}
			st := el.Stats()
			t.Logf("%d bytes → %d, %d pages elided (disk %d, zero %d), %d references (zero %d)", len(b), len(out),
				st.Elided.Load(), st.ElidedDisk.Load(), st.ElidedZero.Load(), len(refs), st.ElidedFinalZero.Load())
		})
	}
	if n == 0 {
		t.Skip("no captured streams in tests/testdata/captured")
	}
}
