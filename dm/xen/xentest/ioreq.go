package xentest

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// IoreqPage is the Xen side of an ioreq server's two shared pages, in Go
// memory: Sync is the synchronous page (shared_iopage_t) and Buf the buffered
// ring (buffered_iopage_t). The DM side wraps them with xen.NewIoreqPages; a
// test drives them like Xen does (xen/common/ioreq.c): Post a request for a
// vCPU, WaitResponse for the answer, PostBuffered a buffered write.
type IoreqPage struct {
	Sync []byte
	Buf  []byte

	mu         sync.Mutex // buffered producer
	atomicMode bool
}

// NewIoreqPage returns zeroed pages (all slots NONE, empty ring) with Xen's
// HVM_IOREQSRV_BUFIOREQ_ATOMIC pointer canonicalization.
func NewIoreqPage() *IoreqPage {
	return &IoreqPage{Sync: make([]byte, xen.PageSize), Buf: make([]byte, xen.PageSize), atomicMode: true}
}

// Slots is the number of vCPU slots.
func (p *IoreqPage) Slots() int { return len(p.Sync) / 32 }

func (p *IoreqPage) stateWord(vcpu int) *uint32 { return word32(p.Sync, 32*vcpu+28) }

// State is vcpu's slot state.
func (p *IoreqPage) State(vcpu int) uint8 {
	return uint8(atomic.LoadUint32(p.stateWord(vcpu))>>16) & 0xf
}

// SetVPEport writes vcpu's vp_eport, as Xen does when the server is enabled.
func (p *IoreqPage) SetVPEport(vcpu int, port xen.Port) {
	atomic.StoreUint32(word32(p.Sync, 32*vcpu+24), uint32(port))
}

// Post is Xen sending a synchronous request to vcpu: the slot must be NONE
// (else Xen logs "device model set bad IO state" and does not send); the
// request is written, then its state set to READY. It does not signal the
// event channel (see IoreqServer.Post).
func (p *IoreqPage) Post(vcpu int, req xen.Ioreq) error {
	if vcpu < 0 || vcpu >= p.Slots() {
		return fmt.Errorf("xentest: no slot for vcpu %d", vcpu)
	}
	if st := p.State(vcpu); st != xen.StateIoreqNone {
		return fmt.Errorf("xentest: vcpu %d: device model set bad IO state %d", vcpu, st)
	}
	s := p.Sync[32*vcpu:]
	binary.LittleEndian.PutUint64(s[0:], req.Addr)
	binary.LittleEndian.PutUint64(s[8:], req.Data)
	binary.LittleEndian.PutUint32(s[16:], req.Count)
	binary.LittleEndian.PutUint32(s[20:], req.Size)
	req.SetState(xen.StateIoreqReady)
	atomic.StoreUint32(p.stateWord(vcpu), uint32(req.Pad0)|uint32(req.Bits)<<16|uint32(req.Type)<<24)
	return nil
}

// WaitResponse is Xen waiting for vcpu's answer (hvm_wait_for_io): once the
// state is IORESP_READY it reads data, sets the slot back to NONE and returns
// the request with the response data. A state that goes backwards, or NONE
// written by the DM, is an error, as is the timeout.
func (p *IoreqPage) WaitResponse(vcpu int, timeout time.Duration) (xen.Ioreq, error) {
	deadline := time.Now().Add(timeout)
	prev := p.State(vcpu)
	if prev == xen.StateIoreqNone {
		return xen.Ioreq{}, fmt.Errorf("xentest: vcpu %d: no request outstanding", vcpu)
	}
	sleep := time.Microsecond
	for {
		w := atomic.LoadUint32(p.stateWord(vcpu))
		st := uint8(w>>16) & 0xf
		if st < prev {
			return xen.Ioreq{}, fmt.Errorf("xentest: vcpu %d: weird ioreq state transition %d -> %d", vcpu, prev, st)
		}
		prev = st
		if st == xen.StateIorespReady {
			s := p.Sync[32*vcpu:]
			r := xen.Ioreq{
				Addr:    binary.LittleEndian.Uint64(s[0:]),
				Data:    binary.LittleEndian.Uint64(s[8:]),
				Count:   binary.LittleEndian.Uint32(s[16:]),
				Size:    binary.LittleEndian.Uint32(s[20:]),
				VPEport: atomic.LoadUint32(word32(p.Sync, 32*vcpu+24)),
				Pad0:    uint16(w),
				Bits:    uint8(w >> 16),
				Type:    uint8(w >> 24),
			}
			atomic.StoreUint32(p.stateWord(vcpu), w&^(0xf<<16)) // IORESP_READY -> NONE
			return r, nil
		}
		if st > xen.StateIorespReady {
			return xen.Ioreq{}, fmt.Errorf("xentest: vcpu %d: weird ioreq state %d", vcpu, st)
		}
		if time.Now().After(deadline) {
			return xen.Ioreq{}, fmt.Errorf("xentest: vcpu %d: no response within %v (state %d)", vcpu, timeout, st)
		}
		time.Sleep(sleep)
		sleep = min(2*sleep, time.Millisecond)
	}
}

// BufPointers returns read_pointer and write_pointer of the buffered ring.
func (p *IoreqPage) BufPointers() (rd, wr uint32) {
	return atomic.LoadUint32(word32(p.Buf, 0)), atomic.LoadUint32(word32(p.Buf, 4))
}

// SetBufPointers sets both pointers (to start a test near a wrap).
func (p *IoreqPage) SetBufPointers(rd, wr uint32) {
	atomic.StoreUint64(word64(p.Buf, 0), uint64(rd)|uint64(wr)<<32)
}

// ErrRingFull is returned by PostBuffered when Xen would fall back to the
// synchronous path.
var ErrRingFull = fmt.Errorf("xentest: buffered ioreq ring full")

// PostBuffered is Xen's hvm_send_buffered_ioreq: only single writes without
// a pointer below 1 MiB; an 8-byte item takes two slots. After publishing it
// canonicalizes the pointers like Xen in ATOMIC mode (subtracting n·511 from
// both with a 64-bit cmpxchg). It does not signal the event channel.
func (p *IoreqPage) PostBuffered(req xen.Ioreq) error {
	if req.Addr > 0xfffff || req.DataIsPtr() || req.Count != 1 || req.IsRead() {
		return fmt.Errorf("xentest: request not bufferable: %v", req)
	}
	var code uint8
	switch req.Size {
	case 1:
		code = 0
	case 2:
		code = 1
	case 4:
		code = 2
	case 8:
		code = 3
	default:
		return fmt.Errorf("xentest: unexpected buffered ioreq size %d", req.Size)
	}
	qw := uint32(0)
	if code == 3 {
		qw = 1
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	rd, wr := p.BufPointers()
	if wr-rd >= xen.IoreqBufferSlotNum-qw {
		return ErrRingFull
	}
	put := func(i uint32, data uint32) {
		b := xen.MakeBufIoreq(req.Type, req.Dir(), code, uint32(req.Addr), data)
		off := 8 + int(i%xen.IoreqBufferSlotNum)*8
		binary.LittleEndian.PutUint32(p.Buf[off:], b.Word0)
		binary.LittleEndian.PutUint32(p.Buf[off+4:], b.Data)
	}
	put(wr, uint32(req.Data))
	if qw == 1 {
		put(wr+1, uint32(req.Data>>32))
	}
	atomic.AddUint32(word32(p.Buf, 4), 1+qw)
	for n := qw; p.atomicMode && n < xen.IoreqBufferSlotNum; n++ {
		full := word64(p.Buf, 0)
		old := atomic.LoadUint64(full)
		ord, owr := uint32(old), uint32(old>>32)
		if ord < xen.IoreqBufferSlotNum {
			break
		}
		k := ord / xen.IoreqBufferSlotNum * xen.IoreqBufferSlotNum
		atomic.CompareAndSwapUint64(full, old, uint64(ord-k)|uint64(owr-k)<<32)
	}
	return nil
}
