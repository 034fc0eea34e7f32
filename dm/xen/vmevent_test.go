package xen_test

import (
	"bytes"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

// A minimal pager over the fake: evict, take the fault from the ring, load
// the page with prep, answer, and check what Xen would accept.
func TestVMEventPagingRing(t *testing.T) {
	ram := newRAM(t, 4*MiB)
	pair := xentest.NewEvtchnHub()
	pg := xentest.NewPaging(5, ram, pair)
	var mp xen.MemPaging = pg

	if pfn, err := mp.RingPFN(); err != nil || pfn != xentest.PagingRingPFN {
		t.Fatalf("ring pfn %#x %v", pfn, err)
	}
	port, err := mp.EnableRing()
	if err != nil {
		t.Fatal(err)
	}
	ev := pair.Open(0)
	defer ev.Close()
	local, err := ev.BindInterdomain(5, port)
	if err != nil {
		t.Fatal(err)
	}
	ring, err := xen.NewVMEventBackRing(pg.RingPage())
	if err != nil {
		t.Fatal(err)
	}
	ring.InitShared()

	// Evict three pages, keeping their contents.
	saved := map[uint64][]byte{}
	for _, gfn := range []uint64{0x200, 0x201, 0x202} {
		copy(ram.Bytes()[gfn*xen.PageSize:], bytes.Repeat([]byte{byte(gfn)}, xen.PageSize))
		saved[gfn] = append([]byte(nil), ram.Bytes()[gfn*xen.PageSize:(gfn+1)*xen.PageSize]...)
		if err := mp.Nominate(gfn); err != nil {
			t.Fatal(err)
		}
		if err := mp.Evict(gfn); err != nil {
			t.Fatal(err)
		}
	}
	if err := mp.Evict(0x300); err == nil || !errorsContain(err, "gfn 0x300") {
		t.Fatalf("evict without nominate: %v", err)
	}
	// Guest vCPU 1 faults on 0x201, a dom0 mapping on 0x202.
	if err := pg.Fault(1, 0x201, false); err != nil {
		t.Fatal(err)
	}
	if err := pg.Fault(0, 0x202, true); err != nil {
		t.Fatal(err)
	}
	if got := waitPorts(t, ev); len(got) == 0 || got[0] != local {
		t.Fatalf("ring port not fired: %v", got)
	}
	if n := ring.UnconsumedRequests(); n != 2 {
		t.Fatalf("%d requests on the ring", n)
	}
	for {
		req, ok := ring.TakeRequest()
		if !ok {
			break
		}
		p := req.Paging()
		if req.Version != xen.VMEventInterfaceVersion || req.Reason != xen.VMEventReasonMemPaging {
			t.Fatalf("request %+v", req)
		}
		if err := mp.Prep(p.GFN, saved[p.GFN]); err != nil {
			t.Fatal(err)
		}
		rsp := xen.PagingResponse(&req)
		if err := ring.PutResponse(&rsp); err != nil {
			t.Fatal(err)
		}
	}
	var extra xen.VMEvent
	if err := ring.PutResponse(&extra); !errors.Is(err, xen.ErrRingFull) {
		t.Fatalf("response without request: %v", err)
	}
	ring.PushResponses()
	if ring.FinalCheckForRequests() {
		t.Fatal("requests left")
	}
	rsps := pg.Responses()
	if len(rsps) != 2 || pg.Dropped() != 0 {
		t.Fatalf("%d responses, %d dropped", len(rsps), pg.Dropped())
	}
	for _, r := range rsps {
		p := r.Paging()
		switch p.GFN {
		case 0x201:
			if r.VCPUID != 1 || r.Flags != xen.VMEventFlagVCPUPaused {
				t.Errorf("guest response %+v", r)
			}
		case 0x202:
			if r.Flags != 0 { // FOREIGN is not echoed: it must not unpause a guest vCPU
				t.Errorf("foreign response flags %#x", r.Flags)
			}
		default:
			t.Errorf("response for gfn %#x", p.GFN)
		}
		if r.Reason != xen.VMEventReasonMemPaging {
			t.Errorf("reason %d", r.Reason)
		}
	}
	for _, gfn := range []uint64{0x201, 0x202} {
		if pg.State(gfn) != xentest.PageRW || !bytes.Equal(ram.Bytes()[gfn*xen.PageSize:(gfn+1)*xen.PageSize], saved[gfn]) {
			t.Errorf("gfn %#x not restored", gfn)
		}
	}
	if pg.State(0x200) != xentest.PagePaged {
		t.Error("gfn 0x200 should still be paged")
	}
	// The map cache sees a paged-out frame as ErrPagedOut, naming it.
	c := xen.NewMapCache(ram, 5, xen.MapCacheOptions{PagedOutRetries: -1})
	defer c.Close()
	if err := c.ReadGPA(0x200000, make([]byte, 4)); !errors.Is(err, xen.ErrPagedOut) || !errorsContain(err, "pfn 0x200") {
		t.Fatalf("read of a paged-out frame: %v", err)
	}
	if err := mp.DisableRing(); err != nil {
		t.Fatal(err)
	}
}

func TestVMEventRingWrap(t *testing.T) {
	pg := xentest.NewPaging(5, nil, nil)
	pg.EnableRing()
	ring, _ := xen.NewVMEventBackRing(pg.RingPage())
	ring.InitShared()
	for round := uint64(0); round < 5; round++ {
		for i := uint64(0); i < xen.VMEventRingSize; i++ {
			gfn := round*100 + i
			pg.Nominate(gfn)
			pg.Evict(gfn)
			if err := pg.Fault(uint32(i), gfn, false); err != nil {
				t.Fatal(err)
			}
		}
		// A ninth outstanding request does not fit (Xen makes the vCPU wait).
		pg.Nominate(round*100 + 50)
		pg.Evict(round*100 + 50)
		if err := pg.Fault(0, round*100+50, false); !errors.Is(err, unix.EBUSY) {
			t.Fatalf("fault into a full ring: %v", err)
		}
		for n := 0; ; n++ {
			req, ok := ring.TakeRequest()
			if !ok {
				if n != xen.VMEventRingSize {
					t.Fatalf("round %d: %d requests", round, n)
				}
				break
			}
			pg.Prep(req.Paging().GFN, make([]byte, xen.PageSize))
			rsp := xen.PagingResponse(&req)
			ring.PutResponse(&rsp)
		}
		ring.PushResponses()
		if got := pg.Responses(); len(got) != xen.VMEventRingSize {
			t.Fatalf("round %d: %d responses", round, len(got))
		}
	}
	if _, err := xen.NewVMEventBackRing(make([]byte, 100)); err == nil {
		t.Fatal("short ring page accepted")
	}
}
