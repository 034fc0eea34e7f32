package xen_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

func pioRead(port uint16, size uint32) xen.Ioreq {
	r := xen.Ioreq{Addr: uint64(port), Size: size, Count: 1, Type: xen.IoreqTypePIO}
	r.SetDir(xen.IoreqRead)
	return r
}

func TestIoreqStateMachine(t *testing.T) {
	x := xentest.NewIoreqPage()
	pg, err := xen.NewIoreqPage(x.Sync)
	if err != nil {
		t.Fatal(err)
	}
	if pg.Slots() != 128 {
		t.Fatalf("slots %d", pg.Slots())
	}
	x.SetVPEport(2, 41)
	if p, _ := pg.VPEport(2); p != 41 {
		t.Fatalf("vp_eport %d", p)
	}

	// Nothing posted: Accept changes nothing, Respond refuses (never NONE→RESP).
	if _, ok, err := pg.Accept(2); ok || err != nil {
		t.Fatalf("accept on NONE: %v %v", ok, err)
	}
	if err := pg.Respond(2, 1); !errors.Is(err, xen.ErrBadState) {
		t.Fatalf("respond on NONE: %v", err)
	}

	req := pioRead(0x3f8, 1)
	req.SetDF(true)
	if err := x.Post(2, req); err != nil {
		t.Fatal(err)
	}
	got, ok, err := pg.Accept(2)
	if !ok || err != nil {
		t.Fatalf("accept: %v %v", ok, err)
	}
	if got.Addr != 0x3f8 || !got.IsRead() || !got.DF() || got.DataIsPtr() || got.Size != 1 || got.State() != xen.StateIoreqInprocess || got.VPEport != 41 {
		t.Fatalf("accepted %v", got)
	}
	if s, _ := pg.State(2); s != xen.StateIoreqInprocess {
		t.Fatalf("state after accept %d", s)
	}
	// A repeated event for the same slot is ignored.
	if _, ok, _ := pg.Accept(2); ok {
		t.Fatal("accepted an INPROCESS slot twice")
	}
	if err := pg.Respond(2, 0x5a); err != nil {
		t.Fatal(err)
	}
	// Responding twice would move the state sideways: refused.
	if err := pg.Respond(2, 0x5b); !errors.Is(err, xen.ErrBadState) {
		t.Fatalf("second respond: %v", err)
	}
	rsp, err := x.WaitResponse(2, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if rsp.Data != 0x5a || rsp.Addr != 0x3f8 || !rsp.DF() || rsp.Type != xen.IoreqTypePIO {
		t.Fatalf("response %v", rsp)
	}
	if s := x.State(2); s != xen.StateIoreqNone {
		t.Fatalf("Xen left state %d", s)
	}
	// READY → IORESP_READY directly is allowed too.
	if err := x.Post(2, pioRead(0x60, 1)); err != nil {
		t.Fatal(err)
	}
	if err := pg.Respond(2, 7); err != nil {
		t.Fatal(err)
	}
	if rsp, err := x.WaitResponse(2, time.Second); err != nil || rsp.Data != 7 {
		t.Fatalf("%v %v", rsp, err)
	}
	// Bad vcpu index.
	if _, _, err := pg.Accept(128); err == nil {
		t.Fatal("accept on vcpu 128 of a 128-slot page")
	}
	if _, err := xen.NewIoreqPage(make([]byte, 33)); err == nil {
		t.Fatal("33-byte page accepted")
	}
}

func TestIoreqConcurrentVCPUs(t *testing.T) {
	x := xentest.NewIoreqPage()
	pg, _ := xen.NewIoreqPage(x.Sync)
	const vcpus, rounds = 4, 200
	stop := make(chan struct{})
	var dm sync.WaitGroup
	dm.Add(1)
	go func() { // the DM: poll every slot, answer data = addr*2
		defer dm.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for v := 0; v < vcpus; v++ {
				if r, ok, _ := pg.Accept(v); ok {
					pg.Respond(v, r.Addr*2)
				}
			}
		}
	}()
	var guests sync.WaitGroup
	for v := 0; v < vcpus; v++ {
		guests.Add(1)
		go func(v int) {
			defer guests.Done()
			for i := 0; i < rounds; i++ {
				addr := uint64(v*1000 + i)
				r := pioRead(uint16(addr), 4)
				if err := x.Post(v, r); err != nil {
					t.Error(err)
					return
				}
				rsp, err := x.WaitResponse(v, 5*time.Second)
				if err != nil || rsp.Data != addr*2 {
					t.Errorf("vcpu %d: %v %v", v, rsp, err)
					return
				}
			}
		}(v)
	}
	guests.Wait()
	close(stop)
	dm.Wait()
}

func TestBufferedRing(t *testing.T) {
	x := xentest.NewIoreqPage()
	bp, err := xen.NewBufIoreqPage(x.Buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := bp.Pop(); ok {
		t.Fatal("pop from an empty ring")
	}
	write := func(addr uint64, size uint32, data uint64, typ uint8) xen.Ioreq {
		return xen.Ioreq{Addr: addr, Size: size, Count: 1, Data: data, Type: typ}
	}
	// Start just before the wrap so 1- and 8-byte items straddle slot 510→0,
	// and let the fake canonicalize the pointers as Xen does.
	x.SetBufPointers(508, 508)
	reqs := []xen.Ioreq{
		write(0xa0000, 1, 0x11, xen.IoreqTypeCopy),
		write(0xa0002, 2, 0x2233, xen.IoreqTypeCopy),
		write(0, 8, 0x1122334455667788, xen.IoreqTypeTimeOffset), // slots 510 and 0
		write(0xbfffc, 4, 0xdeadbeef, xen.IoreqTypeCopy),
	}
	for _, r := range reqs {
		if err := x.PostBuffered(r); err != nil {
			t.Fatal(err)
		}
	}
	if n := bp.Pending(); n != 5 {
		t.Fatalf("pending %d slots, want 5", n)
	}
	var got []xen.Ioreq
	bp.Drain(func(r xen.Ioreq) { got = append(got, r) })
	if len(got) != len(reqs) {
		t.Fatalf("drained %d", len(got))
	}
	for i, r := range reqs {
		g := got[i]
		if g.Addr != r.Addr || g.Size != r.Size || g.Data != r.Data || g.Type != r.Type || g.IsRead() || g.Count != 1 || g.State() != xen.StateIoreqReady {
			t.Errorf("item %d: got %v want %v", i, g, r)
		}
	}
	rd, wr := x.BufPointers()
	if rd != wr {
		t.Fatalf("pointers %d/%d after drain", rd, wr)
	}
	// After the next post Xen canonicalizes (read_pointer ≥ 511 → minus 511).
	x.PostBuffered(write(0xa0000, 1, 1, xen.IoreqTypeCopy))
	if rd, wr := x.BufPointers(); rd >= xen.IoreqBufferSlotNum || wr-rd != 1 {
		t.Fatalf("pointers not canonicalized: %d/%d", rd, wr)
	}
	bp.Drain(func(xen.Ioreq) {})

	// Full ring: Xen refuses (falls back to sync) once 511 slots are used.
	for i := 0; i < xen.IoreqBufferSlotNum; i++ {
		if err := x.PostBuffered(write(0xa0000, 1, uint64(i), xen.IoreqTypeCopy)); err != nil {
			t.Fatalf("post %d: %v", i, err)
		}
	}
	if err := x.PostBuffered(write(0xa0000, 1, 0, xen.IoreqTypeCopy)); !errors.Is(err, xentest.ErrRingFull) {
		t.Fatalf("post into a full ring: %v", err)
	}
	n := 0
	bp.Drain(func(r xen.Ioreq) {
		if r.Data != uint64(n&0xff) && r.Data != uint64(n) {
			t.Errorf("item %d data %d", n, r.Data)
		}
		n++
	})
	if n != xen.IoreqBufferSlotNum {
		t.Fatalf("drained %d of a full ring", n)
	}
}

func TestBufferedRingConcurrent(t *testing.T) {
	x := xentest.NewIoreqPage()
	bp, _ := xen.NewBufIoreqPage(x.Buf)
	const total = 20000
	done := make(chan struct{})
	go func() { // Xen: posts, retrying while full; canonicalizes concurrently with the DM's adds
		defer close(done)
		for i := 0; i < total; {
			size := uint32(4)
			if i%7 == 0 {
				size = 8
			}
			r := xen.Ioreq{Addr: 0xa0000, Size: size, Count: 1, Data: uint64(i) | uint64(i)<<32, Type: xen.IoreqTypeCopy}
			if size == 4 {
				r.Data = uint64(i)
			}
			if err := x.PostBuffered(r); err == nil {
				i++
			}
		}
	}()
	next := 0
	deadline := time.Now().Add(10 * time.Second)
	for next < total && time.Now().Before(deadline) {
		bp.Drain(func(r xen.Ioreq) {
			want := uint64(next)
			if r.Size == 8 {
				want |= uint64(next) << 32
			}
			if r.Data != want {
				t.Fatalf("item %d: data %#x want %#x", next, r.Data, want)
			}
			next++
		})
	}
	<-done
	if next != total {
		t.Fatalf("consumed %d of %d", next, total)
	}
}
