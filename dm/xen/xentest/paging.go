package xentest

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// PagingRingPFN is the ring gfn the fake reports: special_pfn(SPECIALPAGE_PAGING)
// of the 4.17 domain builder.
const PagingRingPFN = 0xfeff8

// Page states of the fake pager (p2m_ram_rw, p2m_ram_paging_out,
// p2m_ram_paged, p2m_ram_paging_in).
const (
	PageRW        = "rw"
	PagePagingOut = "paging_out"
	PagePaged     = "paged"
	PagePagingIn  = "paging_in"
)

// Paging is a fake xen.MemPaging plus the hypervisor's end of the vm_event
// ring (the front ring, in a Go page the pager wraps with
// xen.NewVMEventBackRing(p.RingPage())). A test evicts pages through the
// MemPaging calls, simulates an access with Fault (which posts a request and
// fires the ring port), and checks what the pager answered with Responses.
// With a GuestRAM, eviction scrubs the frame and marks it paged out there,
// and prep with a buffer writes the frame back.
type Paging struct {
	dom xen.Domid
	ram *GuestRAM
	hub *EvtchnHub

	mu      sync.Mutex
	ring    []byte
	enabled bool
	port    xen.Port
	reqProd uint32 // req_prod_pvt of the front ring
	rspCons uint32
	states  map[uint64]string
	fail    map[string]error
	calls   []Call
	dropped int
}

var _ xen.MemPaging = (*Paging)(nil)

// NewPaging returns a fake for domain dom; ram and hub may be nil.
func NewPaging(dom xen.Domid, ram *GuestRAM, hub *EvtchnHub) *Paging {
	return &Paging{dom: dom, ram: ram, hub: hub, ring: make([]byte, xen.PageSize), states: map[uint64]string{}, fail: map[string]error{}}
}

// Fail makes every later call of op ("ring_pfn", "enable", "disable",
// "resume", "nominate", "evict", "prep") fail with err; nil clears it. For
// example Fail("enable", unix.ENOSYS) is a hypervisor without MEM_PAGING.
func (p *Paging) Fail(op string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err == nil {
		delete(p.fail, op)
	} else {
		p.fail[op] = err
	}
}

func (p *Paging) recordLocked(op string, args ...uint64) error {
	err := p.fail[op]
	p.calls = append(p.calls, Call{Op: op, Args: args, Err: err})
	return err
}

// Calls returns the recorded calls.
func (p *Paging) Calls() []Call {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Call(nil), p.calls...)
}

// RingPage is the vm_event ring page (what the pager maps at RingPFN).
func (p *Paging) RingPage() []byte { return p.ring }

// Port is the guest-side ring port EnableRing returned.
func (p *Paging) Port() xen.Port {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.port
}

// State is the paging state of gfn (PageRW unless nominated or evicted).
func (p *Paging) State(gfn uint64) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.states[gfn]; ok {
		return s
	}
	return PageRW
}

func (p *Paging) Domid() xen.Domid { return p.dom }

func (p *Paging) RingPFN() (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.recordLocked("ring_pfn"); err != nil {
		return 0, fmt.Errorf("xen: HVMOP_get_param dom %d param %d: %w", p.dom, xen.HVMParamPagingRingPFN, err)
	}
	return PagingRingPFN, nil
}

func (p *Paging) EnableRing() (xen.Port, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.recordLocked("enable"); err != nil {
		return 0, fmt.Errorf("xen: XEN_DOMCTL_vm_event_op enable mode 1 dom %d: %w", p.dom, err)
	}
	if p.enabled {
		return 0, fmt.Errorf("xen: XEN_DOMCTL_vm_event_op enable mode 1 dom %d: %w", p.dom, unix.EBUSY)
	}
	// FRONT_RING_INIT on Xen's side; the pager does SHARED_RING_INIT.
	p.enabled, p.reqProd, p.rspCons = true, 0, 0
	if p.hub != nil {
		p.port = p.hub.AllocUnbound(p.dom, 0)
	} else {
		p.port = 1
	}
	return p.port, nil
}

func (p *Paging) DisableRing() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.recordLocked("disable"); err != nil {
		return fmt.Errorf("xen: XEN_DOMCTL_vm_event_op disable mode 1 dom %d: %w", p.dom, err)
	}
	if !p.enabled {
		return fmt.Errorf("xen: XEN_DOMCTL_vm_event_op disable mode 1 dom %d: %w", p.dom, unix.EINVAL)
	}
	p.enabled = false
	if p.hub != nil {
		p.hub.Free(p.dom, p.port)
	}
	return nil
}

func (p *Paging) ResumeRing() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.recordLocked("resume")
}

func (p *Paging) opErr(op string, gfn uint64, err error) error {
	return fmt.Errorf("xen: XENMEM_paging_op %s dom %d gfn %#x: %w", op, p.dom, gfn, err)
}

func (p *Paging) Nominate(gfn uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.recordLocked("nominate", gfn); err != nil {
		return p.opErr("nominate", gfn, err)
	}
	if !p.enabled {
		return p.opErr("nominate", gfn, unix.ENODEV)
	}
	if s, ok := p.states[gfn]; ok && s != PageRW {
		return p.opErr("nominate", gfn, unix.EBUSY)
	}
	if p.ram != nil && gfn >= p.ram.Pages() {
		return p.opErr("nominate", gfn, unix.EINVAL)
	}
	p.states[gfn] = PagePagingOut
	return nil
}

func (p *Paging) Evict(gfn uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.recordLocked("evict", gfn); err != nil {
		return p.opErr("evict", gfn, err)
	}
	if !p.enabled {
		return p.opErr("evict", gfn, unix.ENODEV)
	}
	if p.states[gfn] != PagePagingOut {
		return p.opErr("evict", gfn, unix.EBUSY)
	}
	p.states[gfn] = PagePaged
	if p.ram != nil {
		clear(p.ram.Bytes()[gfn*xen.PageSize : (gfn+1)*xen.PageSize])
		p.ram.PageOut(gfn, -1)
	}
	return nil
}

func (p *Paging) Prep(gfn uint64, page []byte) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.recordLocked("prep", gfn, uint64(len(page))); err != nil {
		return p.opErr("prep", gfn, err)
	}
	if !p.enabled {
		return p.opErr("prep", gfn, unix.ENODEV)
	}
	if page != nil && len(page) != xen.PageSize {
		return p.opErr("prep", gfn, unix.EINVAL)
	}
	switch p.states[gfn] {
	case PagePaged, PagePagingIn:
		if page == nil && p.states[gfn] == PagePaged {
			return p.opErr("prep", gfn, unix.EINVAL) // no mfn and no buffer
		}
	default:
		return p.opErr("prep", gfn, unix.ENOENT)
	}
	if p.ram != nil {
		if page != nil {
			copy(p.ram.Bytes()[gfn*xen.PageSize:], page)
		}
		p.ram.PageIn(gfn)
	}
	delete(p.states, gfn)
	return nil
}

// Fault is an access to gfn (p2m_mem_paging_populate): a paged or nominated
// frame goes to paging_in and a request is put on the ring (VCPU_PAUSED for
// a guest vCPU, FOREIGN for a dom0 mapping; EVICT_FAIL if it was only
// nominated), then the ring port fires. An rw frame needs no request.
func (p *Paging) Fault(vcpu uint32, gfn uint64, foreign bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.enabled {
		return fmt.Errorf("xentest: dom %d paging gfn %#x yet no ring in place (domain_crash)", p.dom, gfn)
	}
	st := p.states[gfn]
	var pflags uint32
	switch st {
	case PagePagingOut:
		pflags = xen.MemPagingEvictFail
	case PagePaged:
	default:
		return nil
	}
	if p.reqProd-atomic.LoadUint32(word32(p.ring, 8)) >= xen.VMEventRingSize {
		return fmt.Errorf("xentest: vm_event ring of dom %d full: %w", p.dom, unix.EBUSY)
	}
	ev := xen.VMEvent{Version: xen.VMEventInterfaceVersion, Reason: xen.VMEventReasonMemPaging, VCPUID: vcpu}
	if foreign {
		ev.Flags = xen.VMEventFlagForeign
	} else {
		ev.Flags = xen.VMEventFlagVCPUPaused
	}
	ev.SetPaging(xen.VMEventPaging{GFN: gfn, P2MT: 10, Flags: pflags})
	off := 64 + int(p.reqProd%xen.VMEventRingSize)*400
	copy(p.ring[off:off+400], eventBytes(&ev))
	p.reqProd++
	atomic.StoreUint32(word32(p.ring, 0), p.reqProd)
	p.states[gfn] = PagePagingIn
	if p.hub != nil {
		return p.hub.Fire(p.dom, p.port)
	}
	return nil
}

// Responses consumes the responses on the ring (vm_event_get_response) and
// returns those Xen would accept. Responses with a wrong version are dropped
// and counted in Dropped, as Xen's vm_event_resume does.
func (p *Paging) Responses() []xen.VMEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []xen.VMEvent
	prod := atomic.LoadUint32(word32(p.ring, 8))
	for p.rspCons != prod {
		off := 64 + int(p.rspCons%xen.VMEventRingSize)*400
		var ev xen.VMEvent
		copy(eventBytes(&ev), p.ring[off:off+400])
		p.rspCons++
		if ev.Version != xen.VMEventInterfaceVersion {
			p.dropped++
			continue
		}
		out = append(out, ev)
	}
	atomic.StoreUint32(word32(p.ring, 12), p.rspCons+1)
	return out
}

// Dropped is how many responses had a bad version.
func (p *Paging) Dropped() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dropped
}
