package xen

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// vm_event constants (xen/vm_event.h).
const (
	VMEventInterfaceVersion = 7 // VM_EVENT_INTERFACE_VERSION

	VMEventFlagVCPUPaused = 1 << 0 // VM_EVENT_FLAG_VCPU_PAUSED
	VMEventFlagForeign    = 1 << 1 // VM_EVENT_FLAG_FOREIGN

	VMEventReasonMemPaging = 3 // VM_EVENT_REASON_MEM_PAGING

	MemPagingDropPage  = 1 << 0 // MEM_PAGING_DROP_PAGE
	MemPagingEvictFail = 1 << 1 // MEM_PAGING_EVICT_FAIL
)

// VMEvent is vm_event_request_t and vm_event_response_t (struct vm_event_st,
// xen/vm_event.h), 400 bytes.
type VMEvent struct {
	Version   uint32 // VM_EVENT_INTERFACE_VERSION
	Flags     uint32 // VM_EVENT_FLAG_*
	Reason    uint32 // VM_EVENT_REASON_*
	VCPUID    uint32
	Altp2mIdx uint16
	Pad       [3]uint16
	U         [32]byte  // union u; for paging, struct vm_event_paging (Paging)
	Data      [344]byte // union data (registers, emulation data); unused by paging
}

// VMEventPaging is struct vm_event_paging (xen/vm_event.h), the u.mem_paging
// member of a VMEvent.
type VMEventPaging struct {
	GFN   uint64
	P2MT  uint32
	Flags uint32 // MEM_PAGING_*
}

// Paging decodes u.mem_paging.
func (e *VMEvent) Paging() VMEventPaging {
	return VMEventPaging{
		GFN:   binary.LittleEndian.Uint64(e.U[0:]),
		P2MT:  binary.LittleEndian.Uint32(e.U[8:]),
		Flags: binary.LittleEndian.Uint32(e.U[12:]),
	}
}

// SetPaging encodes u.mem_paging.
func (e *VMEvent) SetPaging(p VMEventPaging) {
	binary.LittleEndian.PutUint64(e.U[0:], p.GFN)
	binary.LittleEndian.PutUint32(e.U[8:], p.P2MT)
	binary.LittleEndian.PutUint32(e.U[12:], p.Flags)
}

// PagingResponse is the response Xen 4.17 accepts for a paging request (see
// vm_event_resume): version = VM_EVENT_INTERFACE_VERSION (else it is dropped
// as a version mismatch), reason = MEM_PAGING, the request's vcpu_id, flags =
// the request's VCPU_PAUSED bit (which unpauses the vCPU; FOREIGN requests
// carry a dom0 vcpu_id and must not unpause a guest vCPU), and the gfn and
// paging flags of the request.
func PagingResponse(req *VMEvent) VMEvent {
	rsp := VMEvent{
		Version: VMEventInterfaceVersion,
		Reason:  VMEventReasonMemPaging,
		VCPUID:  req.VCPUID,
		Flags:   req.Flags & VMEventFlagVCPUPaused,
	}
	p := req.Paging()
	rsp.SetPaging(VMEventPaging{GFN: p.GFN, Flags: p.Flags})
	return rsp
}

// Shared-ring layout of DEFINE_RING_TYPES(vm_event, …) (xen/io/ring.h) in one
// page: struct vm_event_sring {req_prod@0, req_event@4, rsp_prod@8,
// rsp_event@12, pad, ring[]@64}; entries are 400 bytes, and the ring size is
// the largest power of two that fits (8).
const (
	vmEventSringReqProd  = 0
	vmEventSringReqEvent = 4
	vmEventSringRspProd  = 8
	vmEventSringRspEvent = 12
	vmEventSringRing     = 64
	vmEventEntrySize     = 400

	// VMEventRingSize is __RING_SIZE for the vm_event ring in one page.
	VMEventRingSize = 8
)

// ringSize is __RING_SIZE: the largest power of two ≤ (page - ring offset) / entry.
func ringSize(page, off, entry int) int {
	n := (page - off) / entry
	s := 1
	for s*2 <= n {
		s *= 2
	}
	return s
}

// VMEventBackRing is the back (consumer of requests, producer of responses)
// end of the vm_event ring: BACK_RING_INIT, RING_COPY_REQUEST,
// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY and RING_FINAL_CHECK_FOR_REQUESTS of
// xen/io/ring.h over a []byte page (the mapped ring gfn, or a fake page).
// Xen is the front end. The shared indices are accessed atomically; the
// private indices belong to the single goroutine that drives the ring.
type VMEventBackRing struct {
	page       []byte
	reqCons    uint32 // req_cons
	rspProdPvt uint32 // rsp_prod_pvt
}

func checkRingPage(page []byte) error {
	if len(page) < PageSize {
		return fmt.Errorf("xen: vm_event ring page is %d bytes, need %d: %w", len(page), PageSize, unix.EINVAL)
	}
	if !aligned(page, 0, 8) {
		return fmt.Errorf("xen: vm_event ring page is not 8-byte aligned: %w", unix.EINVAL)
	}
	return nil
}

// NewVMEventBackRing is BACK_RING_INIT over page: private indices start at 0.
func NewVMEventBackRing(page []byte) (*VMEventBackRing, error) {
	if err := checkRingPage(page); err != nil {
		return nil, err
	}
	return &VMEventBackRing{page: page[:PageSize]}, nil
}

// AttachVMEventBackRing is BACK_RING_ATTACH: continue a ring another back
// end left (private indices from the shared rsp_prod).
func AttachVMEventBackRing(page []byte) (*VMEventBackRing, error) {
	r, err := NewVMEventBackRing(page)
	if err != nil {
		return nil, err
	}
	p := r.load(vmEventSringRspProd)
	r.reqCons, r.rspProdPvt = p, p
	return r, nil
}

func (r *VMEventBackRing) idx(off int) *uint32     { return at[uint32](r.page, off) }
func (r *VMEventBackRing) load(off int) uint32     { return atomic.LoadUint32(r.idx(off)) }
func (r *VMEventBackRing) store(off int, v uint32) { atomic.StoreUint32(r.idx(off), v) }
func (r *VMEventBackRing) entry(i uint32) []byte {
	off := vmEventSringRing + int(i&(VMEventRingSize-1))*vmEventEntrySize
	return r.page[off : off+vmEventEntrySize]
}

// InitShared is SHARED_RING_INIT: req_prod = rsp_prod = 0, req_event =
// rsp_event = 1, padding cleared. xenpaging does it after enabling.
func (r *VMEventBackRing) InitShared() {
	clear(r.page[16:vmEventSringRing])
	r.store(vmEventSringReqProd, 0)
	r.store(vmEventSringRspProd, 0)
	r.store(vmEventSringReqEvent, 1)
	r.store(vmEventSringRspEvent, 1)
}

// UnconsumedRequests is RING_HAS_UNCONSUMED_REQUESTS.
func (r *VMEventBackRing) UnconsumedRequests() int {
	req := r.load(vmEventSringReqProd) - r.reqCons
	rsp := VMEventRingSize - (r.reqCons - r.rspProdPvt)
	if req < rsp {
		return int(req)
	}
	return int(rsp)
}

// TakeRequest copies the next request out of the ring (RING_COPY_REQUEST),
// advances req_cons and sets req_event = req_cons + 1 as xenpaging does. It
// returns false when there is none.
func (r *VMEventBackRing) TakeRequest() (VMEvent, bool) {
	var ev VMEvent
	if r.UnconsumedRequests() == 0 {
		return ev, false
	}
	copy(bytesOf(&ev), r.entry(r.reqCons))
	r.reqCons++
	r.store(vmEventSringReqEvent, r.reqCons+1)
	return ev, true
}

// PutResponse writes rsp at rsp_prod_pvt and advances it. It does not
// publish: call PushResponses. Each response answers a consumed request, so
// there can be no more responses than requests taken.
func (r *VMEventBackRing) PutResponse(rsp *VMEvent) error {
	if r.rspProdPvt == r.reqCons {
		return fmt.Errorf("xen: vm_event response without a pending request (rsp_prod_pvt %d = req_cons): %w", r.rspProdPvt, ErrRingFull)
	}
	copy(r.entry(r.rspProdPvt), bytesOf(rsp))
	r.rspProdPvt++
	return nil
}

// PushResponses is RING_PUSH_RESPONSES_AND_CHECK_NOTIFY: publish the
// responses and report whether the front end asked to be notified. Xen's
// paging ring is normally notified unconditionally.
func (r *VMEventBackRing) PushResponses() (notify bool) {
	old := r.load(vmEventSringRspProd)
	nw := r.rspProdPvt
	r.store(vmEventSringRspProd, nw)
	return nw-r.load(vmEventSringRspEvent) < nw-old
}

// FinalCheckForRequests is RING_FINAL_CHECK_FOR_REQUESTS: before sleeping,
// ask to be notified of the next request and check again for a race.
func (r *VMEventBackRing) FinalCheckForRequests() bool {
	if r.UnconsumedRequests() > 0 {
		return true
	}
	r.store(vmEventSringReqEvent, r.reqCons+1)
	return r.UnconsumedRequests() > 0
}
