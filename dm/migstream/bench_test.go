package migstream_test

import (
	"bytes"
	"io"
	"path/filepath"
	"sync"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream/streamtest"
)

// benchStream is streamtest.OnePassTracked: 32 MiB, every page tracked.
var benchStream = sync.OnceValue(streamtest.OnePassTracked)

// benchZeroStream is benchStream's shape with every page all-zero (what
// libxc sends for a guest's untouched memory).
var benchZeroStream = sync.OnceValue(func() *streamtest.Stream {
	return streamtest.Generate(streamtest.Config{Seed: 42, Pages: 8192, Batch: ms.MaxBatchSize, Rounds: -1,
		Tracked: -1, Stale: -1, Holes: -1, Broken: -1, XAlloc: -1, PVTab: -1, Dup: -1, Zero: 1})
})

// staleTracker knows every pfn but with a hash no page has: lookup and hash
// every page, elide none.
type staleTracker struct{ *streamtest.FakeTracker }

func (s staleTracker) Lookup(pfns []uint64, out []blk.Ref, ok []bool) (int, error) {
	n, err := s.FakeTracker.Lookup(pfns, out, ok)
	for i := range pfns {
		out[i].Hash ^= 1
	}
	return n, err
}

// BenchmarkFilter measures the transport's codec on one core, in memory:
// bytes of input stream per second.
func BenchmarkFilter(b *testing.B) {
	s := benchStream()
	z := benchZeroStream()
	type benchCase struct {
		name string
		tr   ms.Tracker
		zero bool               // ElideOptions.Zero
		s    *streamtest.Stream // nil: benchStream
	}
	cases := []benchCase{
		{name: "passthrough"},
		{name: "lookup-miss", tr: streamtest.NewFakeTracker()},
		{name: "hash-mismatch", tr: staleTracker{s.Tracker}},
		{name: "elide-all", tr: s.Tracker},
		// Every page checked for zeros (none is), then looked up and elided.
		{name: "elide-all-zero-check", tr: s.Tracker, zero: true},
		// Every page all-zero: checked in full and elided, no tracker.
		{name: "zero-all", zero: true, s: z},
		// The same without zero elision: every page passes with its data.
		{name: "zero-passthrough", s: z},
	}
	sink := streamtest.NewSink(8 << 20)
	b.Run("raw-copy", func(b *testing.B) {
		b.SetBytes(int64(len(s.Bytes)))
		buf := make([]byte, 1<<20)
		for b.Loop() {
			io.CopyBuffer(onlyWriter{sink}, onlyReader{bytes.NewReader(s.Bytes)}, buf)
		}
	})
	cases = append(cases, benchCase{name: "elide-all-socket", tr: socketTracker(b, s)},
		benchCase{name: "elide-all-socket-zero-check", tr: socketTracker(b, s), zero: true})
	for _, c := range cases {
		s := s
		if c.s != nil {
			s = c.s
		}
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(s.Bytes)))
			var out int64
			for b.Loop() {
				el, err := ms.Filter(sink, bytes.NewReader(s.Bytes), ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: c.tr, Zero: c.zero}})
				if err != nil {
					b.Fatal(err)
				}
				out = el.Stats().Elided.Load()
			}
			b.ReportMetric(float64(out), "elided/op")
		})
	}
}

// socketTracker serves a real blk.Tracker holding the stream's references
// on a unix socket, as the device model does.
func socketTracker(b *testing.B, s *streamtest.Stream) ms.Tracker {
	bt := s.BlkTracker()
	path := filepath.Join(b.TempDir(), "t.sock")
	srv, err := blk.ServeTracker(path, bt)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	c, err := blk.DialTracker(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }
