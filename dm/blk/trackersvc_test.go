package blk

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestTrackerServiceLookup(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	page := make([]byte, 2*4096)
	page[4096] = 9
	tr.DiskToGuest(tr.Begin(), 1, 8192, []Segment{{GPA: 0x3000, Len: 8192}}, page)

	path := TrackerSocketPath(t.TempDir(), 7)
	srv, err := ServeTracker(path, tr)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	var wg sync.WaitGroup
	for g := 0; g < 4; g++ { // concurrent clients, concurrent with I/O
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := DialTracker(path)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			pfns := []uint64{2, 3, 4, 5}
			out, ok := make([]Ref, 4), make([]bool, 4)
			for i := 0; i < 200; i++ {
				hits, err := c.Lookup(pfns, out, ok)
				if err != nil {
					t.Error(err)
					return
				}
				if hits != 2 || ok[0] || !ok[1] || !ok[2] || ok[3] {
					t.Errorf("hits %d ok %v", hits, ok)
					return
				}
				if out[1].Disk != 1 || out[1].Sector != 16 || out[2].Sector != 24 || out[2].Hash != HashPage(page[4096:]) {
					t.Errorf("refs %+v", out[1:3])
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			w := tr.BeginWrite(0, 0, 4096)
			tr.EndWrite(w, []Segment{{GPA: 0x10000, Len: 4096}}, page[:4096])
		}
	}()
	wg.Wait()

	c, err := DialTracker(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Stats()
	if err != nil || st.Tracked != 3 || st.Lookups < 800 {
		t.Fatalf("stats %+v err %v", st, err)
	}
	c.Close()
}

func TestTrackerServiceBadRequests(t *testing.T) {
	tr := NewTracker(TrackerConfig{})
	path := filepath.Join(t.TempDir(), "s")
	srv, err := ServeTracker(path, tr)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for _, req := range [][]byte{
		{9, 0, 0, 0, 0, 0, 0, 0},          // unknown op
		{1, 0, 0, 0, 0xff, 0xff, 0xff, 0}, // too many pfns
		{2, 0, 0, 0, 1, 0, 0, 0},          // stats with a count
	} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(req)
		var hdr [8]byte
		if _, err := c.Read(hdr[:]); err != nil {
			t.Fatalf("no error reply to %x: %v", req, err)
		}
		if binary.LittleEndian.Uint32(hdr[:]) != statusError {
			t.Fatalf("request %x accepted", req)
		}
		c.Close()
	}
	// A truncated lookup: the server drops the client and keeps serving.
	c, _ := net.Dial("unix", path)
	c.Write([]byte{1, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3})
	c.Close()
	tc, err := DialTracker(path)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if _, err := tc.Lookup([]uint64{1}, make([]Ref, 1), make([]bool, 1)); err != nil {
		t.Fatalf("service died after a bad client: %v", err)
	}
	if _, err := tc.Lookup(make([]uint64, MaxLookup+1), nil, nil); err == nil {
		t.Fatal("client accepted an oversized lookup")
	}
}

// A device model that accepts but never answers fails the call after the
// client's Timeout instead of hanging the migration transport.
func TestTrackerClientTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "silent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(io.Discard, c) // reads requests, answers nothing
	}()
	tc, err := DialTracker(path)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	tc.Timeout = 50 * time.Millisecond
	_, err = tc.Lookup([]uint64{1, 2, 3}, make([]Ref, 3), make([]bool, 3))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Lookup on a silent service: err = %v, want a deadline error", err)
	}
	if _, err := tc.Stats(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Stats on a silent service: err = %v, want a deadline error", err)
	}
}
