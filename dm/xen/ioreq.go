package xen

import (
	"fmt"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// ioreq constants (xen/hvm/ioreq.h).
const (
	IoreqWrite = 0 // IOREQ_WRITE
	IoreqRead  = 1 // IOREQ_READ

	StateIoreqNone      = 0 // STATE_IOREQ_NONE: slot free (only Xen writes it)
	StateIoreqReady     = 1 // STATE_IOREQ_READY: Xen posted a request
	StateIoreqInprocess = 2 // STATE_IOREQ_INPROCESS: the DM took it
	StateIorespReady    = 3 // STATE_IORESP_READY: the DM answered

	IoreqTypePIO        = 0 // IOREQ_TYPE_PIO: port I/O
	IoreqTypeCopy       = 1 // IOREQ_TYPE_COPY: MMIO
	IoreqTypePCIConfig  = 2 // IOREQ_TYPE_PCI_CONFIG: addr = SBDF<<32 | reg
	IoreqTypeTimeOffset = 7 // IOREQ_TYPE_TIMEOFFSET: buffered, 64-bit data
	IoreqTypeInvalidate = 8 // IOREQ_TYPE_INVALIDATE: flush the map cache

	// IoreqBufferSlotNum is IOREQ_BUFFER_SLOT_NUM, the slots of the buffered ring.
	IoreqBufferSlotNum = 511

	ioreqSize = 32 // sizeof(ioreq_t)
)

// Bits of the byte at offset 30 of ioreq_t (C bitfields state:4,
// data_is_ptr:1, dir:1, df:1, _pad1:1).
const (
	ioreqStateMask = 0x0f
	ioreqDataIsPtr = 1 << 4
	ioreqDir       = 1 << 5
	ioreqDF        = 1 << 6
)

// Ioreq is ioreq_t (struct ioreq, xen/hvm/ioreq.h), 32 bytes: one slot of the
// shared ioreq page. Handlers work on a copy (Accept returns one); only Data
// and the state go back to the page, through Respond.
type Ioreq struct {
	Addr    uint64 // port, guest-physical MMIO address, or SBDF<<32|reg
	Data    uint64 // value, or guest-physical address of the buffer if DataIsPtr
	Count   uint32 // repetitions (rep ins/outs/movs/stos)
	Size    uint32 // bytes per item: 1, 2, 4 or 8
	VPEport uint32 // guest-side event channel of this vCPU (read-only for the DM)
	Pad0    uint16
	Bits    uint8 // state:4, data_is_ptr:1, dir:1, df:1, pad:1
	Type    uint8 // IOREQ_TYPE_*
}

// State is the state bitfield (STATE_*).
func (r *Ioreq) State() uint8 { return r.Bits & ioreqStateMask }

// DataIsPtr reports whether Data is the guest-physical address of the data.
func (r *Ioreq) DataIsPtr() bool { return r.Bits&ioreqDataIsPtr != 0 }

// Dir is IoreqRead (1) or IoreqWrite (0).
func (r *Ioreq) Dir() uint8 {
	if r.Bits&ioreqDir != 0 {
		return IoreqRead
	}
	return IoreqWrite
}

// IsRead reports Dir() == IoreqRead.
func (r *Ioreq) IsRead() bool { return r.Bits&ioreqDir != 0 }

// DF reports the direction flag: addresses of rep items decrease.
func (r *Ioreq) DF() bool { return r.Bits&ioreqDF != 0 }

// SetState sets the state bitfield.
func (r *Ioreq) SetState(s uint8) { r.Bits = r.Bits&^ioreqStateMask | s&ioreqStateMask }

// SetDataIsPtr sets the data_is_ptr bit.
func (r *Ioreq) SetDataIsPtr(v bool) { r.Bits = setBit(r.Bits, ioreqDataIsPtr, v) }

// SetDir sets dir (IoreqRead or IoreqWrite).
func (r *Ioreq) SetDir(d uint8) { r.Bits = setBit(r.Bits, ioreqDir, d == IoreqRead) }

// SetDF sets the direction flag.
func (r *Ioreq) SetDF(v bool) { r.Bits = setBit(r.Bits, ioreqDF, v) }

func setBit(b, bit uint8, v bool) uint8 {
	if v {
		return b | bit
	}
	return b &^ bit
}

func (r Ioreq) String() string {
	dir := "write"
	if r.IsRead() {
		dir = "read"
	}
	ptr := ""
	if r.DataIsPtr() {
		ptr = " ptr"
	}
	if r.DF() {
		ptr += " df"
	}
	return fmt.Sprintf("ioreq{type %d %s addr %#x data %#x size %d count %d%s state %d port %d}",
		r.Type, dir, r.Addr, r.Data, r.Size, r.Count, ptr, r.State(), r.VPEport)
}

// stateWord is the aligned u32 at offset 28 of a slot: _pad0 (bytes 28-29),
// the bitfield byte (30: state in bits 16-19 of the word) and type (31).
const (
	ioreqStateWordOff = 28
	ioreqStateShift   = 16
	ioreqVPEportOff   = 24
	ioreqDataOff      = 8
)

// IoreqPage is the synchronous ioreq page (shared_iopage_t, xen/hvm/ioreq.h):
// ioreq_t vcpu_ioreq[vcpu] at offset 32·vcpu. It works on any []byte, so the
// mmap'd page of a real server and a fake's page share this code.
//
// The protocol (xen/common/ioreq.c): Xen writes a request into a NONE slot and
// sets READY; Accept moves READY → INPROCESS and returns a copy; Respond
// stores data, then IORESP_READY; Xen reads data and sets NONE. The DM never
// writes NONE and never moves a state backwards (Xen crashes the domain).
type IoreqPage struct {
	b []byte
}

// NewIoreqPage wraps page (at least 32 bytes, a multiple of 32, 8-byte aligned).
func NewIoreqPage(page []byte) (*IoreqPage, error) {
	if len(page) < ioreqSize || len(page)%ioreqSize != 0 {
		return nil, fmt.Errorf("xen: ioreq page of %d bytes is not a whole number of %d-byte slots: %w", len(page), ioreqSize, unix.EINVAL)
	}
	if !aligned(page, 0, 8) {
		return nil, fmt.Errorf("xen: ioreq page is not 8-byte aligned: %w", unix.EINVAL)
	}
	return &IoreqPage{b: page}, nil
}

// Slots is the number of vCPU slots (128 for one 4 KiB page).
func (p *IoreqPage) Slots() int { return len(p.b) / ioreqSize }

func (p *IoreqPage) slot(vcpu int) (*Ioreq, error) {
	if vcpu < 0 || vcpu >= p.Slots() {
		return nil, fmt.Errorf("xen: vcpu %d has no slot in a %d-slot ioreq page: %w", vcpu, p.Slots(), unix.EINVAL)
	}
	return at[Ioreq](p.b, vcpu*ioreqSize), nil
}

func (p *IoreqPage) stateWord(vcpu int) *uint32 {
	return at[uint32](p.b, vcpu*ioreqSize+ioreqStateWordOff)
}

// VPEport is the guest-side event channel of vcpu's slot. Xen writes it when
// the server is enabled; read it only after SetIoreqServerState(true).
func (p *IoreqPage) VPEport(vcpu int) (Port, error) {
	if _, err := p.slot(vcpu); err != nil {
		return 0, err
	}
	return Port(atomic.LoadUint32(at[uint32](p.b, vcpu*ioreqSize+ioreqVPEportOff))), nil
}

// State is the current state of vcpu's slot (an atomic load).
func (p *IoreqPage) State(vcpu int) (uint8, error) {
	if _, err := p.slot(vcpu); err != nil {
		return 0, err
	}
	return uint8(atomic.LoadUint32(p.stateWord(vcpu))>>ioreqStateShift) & ioreqStateMask, nil
}

// Accept takes the request of vcpu: if the slot is READY it moves it to
// INPROCESS and returns a copy and true. In any other state (a spurious or
// repeated event) it changes nothing and returns false.
func (p *IoreqPage) Accept(vcpu int) (Ioreq, bool, error) {
	s, err := p.slot(vcpu)
	if err != nil {
		return Ioreq{}, false, err
	}
	w := p.stateWord(vcpu)
	for {
		old := atomic.LoadUint32(w) // acquire: the request is visible after READY
		if (old>>ioreqStateShift)&ioreqStateMask != StateIoreqReady {
			return Ioreq{}, false, nil
		}
		req := *s
		nw := old&^(ioreqStateMask<<ioreqStateShift) | StateIoreqInprocess<<ioreqStateShift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			req.SetState(StateIoreqInprocess)
			return req, true, nil
		}
	}
}

// Respond completes vcpu's request: it stores data (the read result; ignored
// by Xen for writes), then sets IORESP_READY. The slot must be INPROCESS or
// READY, else it changes nothing and returns an error wrapping ErrBadState.
// After Respond, notify the vCPU's local port.
func (p *IoreqPage) Respond(vcpu int, data uint64) error {
	if _, err := p.slot(vcpu); err != nil {
		return err
	}
	w := p.stateWord(vcpu)
	d := at[uint64](p.b, vcpu*ioreqSize+ioreqDataOff)
	for {
		old := atomic.LoadUint32(w)
		st := (old >> ioreqStateShift) & ioreqStateMask
		if st != StateIoreqInprocess && st != StateIoreqReady {
			return fmt.Errorf("xen: respond to vcpu %d ioreq in state %d: %w", vcpu, st, ErrBadState)
		}
		*d = data // published by the release of the CAS below
		nw := old&^(ioreqStateMask<<ioreqStateShift) | StateIorespReady<<ioreqStateShift
		if atomic.CompareAndSwapUint32(w, old, nw) {
			return nil
		}
	}
}

// Load returns a snapshot of vcpu's slot (for diagnostics and fakes).
func (p *IoreqPage) Load(vcpu int) (Ioreq, error) {
	s, err := p.slot(vcpu)
	if err != nil {
		return Ioreq{}, err
	}
	w := atomic.LoadUint32(p.stateWord(vcpu))
	r := Ioreq{Addr: s.Addr, Data: s.Data, Count: s.Count, Size: s.Size}
	r.VPEport = atomic.LoadUint32(at[uint32](p.b, vcpu*ioreqSize+ioreqVPEportOff))
	r.Pad0, r.Bits, r.Type = uint16(w), uint8(w>>16), uint8(w>>24)
	return r, nil
}

// BufIoreq is buf_ioreq_t (struct buf_ioreq, xen/hvm/ioreq.h), 8 bytes:
// word 0 holds type (bits 0-7), pad (8), dir (9), size code (10-11: 1, 2, 4,
// 8 bytes) and addr (12-31, so below 1 MiB); word 1 is data. An 8-byte item
// takes two slots; the second slot's data is the upper half.
type BufIoreq struct {
	Word0 uint32
	Data  uint32
}

func (b BufIoreq) Type() uint8     { return uint8(b.Word0) }
func (b BufIoreq) Dir() uint8      { return uint8(b.Word0>>9) & 1 }
func (b BufIoreq) SizeCode() uint8 { return uint8(b.Word0>>10) & 3 }
func (b BufIoreq) Addr() uint32    { return b.Word0 >> 12 }

// MakeBufIoreq encodes a buf_ioreq_t (sizeCode 0..3 for 1, 2, 4, 8 bytes).
func MakeBufIoreq(typ, dir, sizeCode uint8, addr uint32, data uint32) BufIoreq {
	return BufIoreq{
		Word0: uint32(typ) | uint32(dir&1)<<9 | uint32(sizeCode&3)<<10 | (addr&0xfffff)<<12,
		Data:  data,
	}
}

// Buffered page layout (buffered_iopage_t): read_pointer@0, write_pointer@4,
// buf_ioreq[511]@8.
const (
	bufReadPointer  = 0
	bufWritePointer = 4
	bufSlots        = 8
)

// BufIoreqPage is the buffered ioreq ring (buffered_iopage_t,
// xen/hvm/ioreq.h) over a []byte page. Xen produces (write_pointer), the DM
// consumes (read_pointer). In HVM_IOREQSRV_BUFIOREQ_ATOMIC mode Xen may
// subtract n·511 from both pointers at once with a 64-bit cmpxchg, so the DM
// advances read_pointer only with an atomic add and re-reads it to detect
// that (QEMU handle_buffered_iopage).
type BufIoreqPage struct {
	b  []byte
	mu sync.Mutex // one consumer at a time
}

// NewBufIoreqPage wraps a page of at least 4096 bytes, 8-byte aligned.
func NewBufIoreqPage(page []byte) (*BufIoreqPage, error) {
	if len(page) < bufSlots+IoreqBufferSlotNum*8 {
		return nil, fmt.Errorf("xen: buffered ioreq page is %d bytes, need %d: %w", len(page), bufSlots+IoreqBufferSlotNum*8, unix.EINVAL)
	}
	if !aligned(page, 0, 8) {
		return nil, fmt.Errorf("xen: buffered ioreq page is not 8-byte aligned: %w", unix.EINVAL)
	}
	return &BufIoreqPage{b: page}, nil
}

func (p *BufIoreqPage) ptr(off int) *uint32 { return at[uint32](p.b, off) }

func (p *BufIoreqPage) slot(i uint32) BufIoreq {
	off := bufSlots + int(i%IoreqBufferSlotNum)*8
	return BufIoreq{Word0: le.Uint32(p.b[off:]), Data: le.Uint32(p.b[off+4:])}
}

// Pending is the number of slots Xen wrote that were not consumed yet.
func (p *BufIoreqPage) Pending() int {
	for {
		rd := atomic.LoadUint32(p.ptr(bufReadPointer))
		wr := atomic.LoadUint32(p.ptr(bufWritePointer))
		if rd != atomic.LoadUint32(p.ptr(bufReadPointer)) {
			continue
		}
		return int(wr - rd)
	}
}

// Pop consumes the next buffered request and returns it as an ioreq_t (a
// write with count 1, state READY, data_is_ptr 0; an 8-byte item gets its
// upper half from the second slot). It returns false when the ring is empty.
func (p *BufIoreqPage) Pop() (Ioreq, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		rd := atomic.LoadUint32(p.ptr(bufReadPointer))
		wr := atomic.LoadUint32(p.ptr(bufWritePointer))
		if rd != atomic.LoadUint32(p.ptr(bufReadPointer)) {
			continue // Xen canonicalized the pointers between the loads
		}
		if rd == wr {
			return Ioreq{}, false
		}
		b := p.slot(rd)
		req := Ioreq{
			Addr:  uint64(b.Addr()),
			Data:  uint64(b.Data),
			Count: 1,
			Size:  1 << b.SizeCode(),
			Type:  b.Type(),
		}
		req.SetDir(b.Dir())
		req.SetState(StateIoreqReady)
		n := uint32(1)
		if b.SizeCode() == 3 {
			if wr-rd < 2 {
				return Ioreq{}, false // Xen publishes both halves at once; not there yet
			}
			req.Data |= uint64(p.slot(rd+1).Data) << 32
			n = 2
		}
		atomic.AddUint32(p.ptr(bufReadPointer), n)
		return req, true
	}
}

// Drain pops every pending request and calls fn on each, returning how many.
func (p *BufIoreqPage) Drain(fn func(Ioreq)) int {
	n := 0
	for {
		r, ok := p.Pop()
		if !ok {
			return n
		}
		fn(r)
		n++
	}
}

// IoreqPages are the pages of one ioreq server: the synchronous page and,
// when the server has one, the buffered ring.
type IoreqPages struct {
	Ioreq    *IoreqPage
	Buffered *BufIoreqPage // nil without a buffered ring

	mu      sync.Mutex
	release func() error
}

// NewIoreqPages wraps the pages of an ioreq server; buf may be nil. release,
// if not nil, is called once by Unmap (the real implementation munmaps the
// MMAP_RESOURCE mapping; fakes record it).
func NewIoreqPages(sync, buf []byte, release func() error) (*IoreqPages, error) {
	ip, err := NewIoreqPage(sync)
	if err != nil {
		return nil, err
	}
	pg := &IoreqPages{Ioreq: ip, release: release}
	if buf != nil {
		if pg.Buffered, err = NewBufIoreqPage(buf); err != nil {
			return nil, err
		}
	}
	return pg, nil
}

// Unmap releases the pages. It is idempotent. Do not touch the pages after it.
func (p *IoreqPages) Unmap() error {
	p.mu.Lock()
	rel := p.release
	p.release = nil
	p.mu.Unlock()
	if rel != nil {
		return rel()
	}
	return nil
}
