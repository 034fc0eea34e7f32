// Package hwtest provides in-memory fakes of the dm/hw interfaces for device
// unit tests: an IOSpace that records claims and dispatches port and MMIO
// accesses to the claimed handlers, recording Interrupts, Shutdown and
// DirtyReporter, and a sparse byte-addressed GuestMemory with holes.
//
// Every fake is safe for concurrent use (devices may be driven from several
// goroutines, e.g. a UART's Input from a pty reader) and has a usable zero
// value except where a constructor is documented.
package hwtest

import (
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// ErrOverlap is returned by IOSpace.ClaimPorts/ClaimMMIO when the range
// overlaps one already claimed (Xen's rangeset refuses with -EEXIST).
var ErrOverlap = errors.New("hwtest: range overlaps a claimed range")

// ErrInvalid is returned for arguments Xen would refuse with -EINVAL
// (empty or wrapping ranges, IRQ numbers out of range).
var ErrInvalid = errors.New("hwtest: invalid argument")

// Space says which address space a Range lives in.
type Space uint8

const (
	Port Space = iota
	MMIO
)

func (s Space) String() string {
	if s == Port {
		return "port"
	}
	return "mmio"
}

// Range is a claimed range [Base, Base+N) of one space.
type Range struct {
	Space   Space
	Base, N uint64
}

func (r Range) String() string { return fmt.Sprintf("%s %#x+%#x", r.Space, r.Base, r.N) }

func (r Range) contains(addr uint64) bool { return addr >= r.Base && addr-r.Base < r.N }

// Op is what an Event records.
type Op string

const (
	OpClaim            Op = "claim"
	OpRelease          Op = "release"
	OpReleaseUnclaimed Op = "release-unclaimed" // release of a range that was not claimed exactly
	OpClaimFailed      Op = "claim-failed"
)

// Event is one claim or release seen by the IOSpace, in call order.
type Event struct {
	Op    Op
	Range Range
}

type portClaim struct {
	r Range
	h hw.PortIO
}

type mmioClaim struct {
	r Range
	h hw.MMIO
}

// IOSpace is a fake hw.IOSpace. Claims of overlapping ranges fail with
// ErrOverlap; accesses to unclaimed addresses read all-ones and drop writes
// (counted in Unclaimed). In/Out/ReadMMIO/WriteMMIO play the guest: they
// dispatch to the claimed handler with the absolute address, as the core does.
type IOSpace struct {
	mu        sync.Mutex
	ports     []portClaim
	mmio      []mmioClaim
	events    []Event
	unclaimed int
}

// NewIOSpace returns an empty IOSpace.
func NewIOSpace() *IOSpace { return &IOSpace{} }

var _ hw.IOSpace = (*IOSpace)(nil)

func (s *IOSpace) overlaps(r Range) bool {
	for _, c := range s.ports {
		if r.Space == Port && c.r.Base < r.Base+r.N && r.Base < c.r.Base+c.r.N {
			return true
		}
	}
	for _, c := range s.mmio {
		if r.Space == MMIO && c.r.Base < r.Base+r.N && r.Base < c.r.Base+c.r.N {
			return true
		}
	}
	return false
}

// ClaimPorts implements hw.IOSpace.
func (s *IOSpace) ClaimPorts(base uint16, n uint16, h hw.PortIO) error {
	r := Range{Port, uint64(base), uint64(n)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n == 0 || r.Base+r.N > 0x10000 || h == nil {
		s.events = append(s.events, Event{OpClaimFailed, r})
		return fmt.Errorf("claim %v: %w", r, ErrInvalid)
	}
	if s.overlaps(r) {
		s.events = append(s.events, Event{OpClaimFailed, r})
		return fmt.Errorf("claim %v: %w", r, ErrOverlap)
	}
	s.ports = append(s.ports, portClaim{r, h})
	s.events = append(s.events, Event{OpClaim, r})
	return nil
}

// ReleasePorts implements hw.IOSpace. Only an exact previous claim is
// released; anything else is recorded as OpReleaseUnclaimed.
func (s *IOSpace) ReleasePorts(base uint16, n uint16) {
	r := Range{Port, uint64(base), uint64(n)}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range s.ports {
		if c.r == r {
			s.ports = append(s.ports[:i], s.ports[i+1:]...)
			s.events = append(s.events, Event{OpRelease, r})
			return
		}
	}
	s.events = append(s.events, Event{OpReleaseUnclaimed, r})
}

// ClaimMMIO implements hw.IOSpace.
func (s *IOSpace) ClaimMMIO(base uint64, n uint64, h hw.MMIO) error {
	r := Range{MMIO, base, n}
	s.mu.Lock()
	defer s.mu.Unlock()
	if n == 0 || base+n < base || h == nil {
		s.events = append(s.events, Event{OpClaimFailed, r})
		return fmt.Errorf("claim %v: %w", r, ErrInvalid)
	}
	if s.overlaps(r) {
		s.events = append(s.events, Event{OpClaimFailed, r})
		return fmt.Errorf("claim %v: %w", r, ErrOverlap)
	}
	s.mmio = append(s.mmio, mmioClaim{r, h})
	s.events = append(s.events, Event{OpClaim, r})
	return nil
}

// ReleaseMMIO implements hw.IOSpace (exact ranges only, like ReleasePorts).
func (s *IOSpace) ReleaseMMIO(base uint64, n uint64) {
	r := Range{MMIO, base, n}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, c := range s.mmio {
		if c.r == r {
			s.mmio = append(s.mmio[:i], s.mmio[i+1:]...)
			s.events = append(s.events, Event{OpRelease, r})
			return
		}
	}
	s.events = append(s.events, Event{OpReleaseUnclaimed, r})
}

// Claimed returns the ranges claimed now, ports first, each sorted by base.
func (s *IOSpace) Claimed() []Range {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Range
	for _, c := range s.ports {
		out = append(out, c.r)
	}
	for _, c := range s.mmio {
		out = append(out, c.r)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Space != out[j].Space {
			return out[i].Space < out[j].Space
		}
		return out[i].Base < out[j].Base
	})
	return out
}

// HasPorts reports whether exactly [base, base+n) is claimed as one range.
func (s *IOSpace) HasPorts(base, n uint16) bool {
	return s.has(Range{Port, uint64(base), uint64(n)})
}

// HasMMIO reports whether exactly [base, base+n) is claimed as one range.
func (s *IOSpace) HasMMIO(base, n uint64) bool {
	return s.has(Range{MMIO, base, n})
}

func (s *IOSpace) has(r Range) bool {
	for _, c := range s.Claimed() {
		if c == r {
			return true
		}
	}
	return false
}

// Events returns every claim and release so far, in order.
func (s *IOSpace) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// ResetEvents forgets the recorded events (claims stay).
func (s *IOSpace) ResetEvents() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = nil
}

// Unclaimed counts accesses that hit no claimed range.
func (s *IOSpace) Unclaimed() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unclaimed
}

// PortHandler returns the handler claiming port, or nil.
func (s *IOSpace) PortHandler(port uint16) hw.PortIO {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.ports {
		if c.r.contains(uint64(port)) {
			return c.h
		}
	}
	return nil
}

// MMIOHandler returns the handler claiming addr, or nil.
func (s *IOSpace) MMIOHandler(addr uint64) hw.MMIO {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.mmio {
		if c.r.contains(addr) {
			return c.h
		}
	}
	return nil
}

func (s *IOSpace) miss() {
	s.mu.Lock()
	s.unclaimed++
	s.mu.Unlock()
}

// Ones returns the all-ones value of an access of size bytes (1–8).
func Ones(size int) uint64 {
	if size <= 0 || size >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*uint(size)) - 1
}

// In is a guest port read. The handler is called without any IOSpace lock
// held, so it may claim or release ranges.
func (s *IOSpace) In(port uint16, size int) uint32 {
	h := s.PortHandler(port)
	if h == nil {
		s.miss()
		return uint32(Ones(min(size, 4)))
	}
	return h.ReadPort(port, size)
}

// Out is a guest port write.
func (s *IOSpace) Out(port uint16, size int, v uint32) {
	h := s.PortHandler(port)
	if h == nil {
		s.miss()
		return
	}
	h.WritePort(port, size, v)
}

// ReadMMIO is a guest MMIO read.
func (s *IOSpace) ReadMMIO(addr uint64, size int) uint64 {
	h := s.MMIOHandler(addr)
	if h == nil {
		s.miss()
		return Ones(size)
	}
	return h.ReadMMIO(addr, size)
}

// WriteMMIO is a guest MMIO write.
func (s *IOSpace) WriteMMIO(addr uint64, size int, v uint64) {
	h := s.MMIOHandler(addr)
	if h == nil {
		s.miss()
		return
	}
	h.WriteMMIO(addr, size, v)
}

// IRQKind says which Interrupts method an IRQEvent records.
type IRQKind uint8

const (
	ISA IRQKind = iota
	INTx
	LinkRoute
)

// IRQEvent is one call to Interrupts, in order. For ISA: Line=irq; for INTx:
// Dev, Line=pin; for LinkRoute: Line=link, Value=irq.
type IRQEvent struct {
	Kind  IRQKind
	Dev   uint8
	Line  uint8
	Level bool
	Value uint8
}

// Interrupts is a recording hw.Interrupts. Arguments Xen would refuse
// (ISA irq > 15, dev > 31, pin > 3, link > 3, route irq > 15) return an error
// wrapping ErrInvalid and change nothing. Err, if set, is returned by every
// call after recording it.
type Interrupts struct {
	mu     sync.Mutex
	isa    [16]bool
	intx   [32][4]bool
	routes [4]uint8
	events []IRQEvent
	Err    error
}

var _ hw.Interrupts = (*Interrupts)(nil)

// SetISAIRQ implements hw.Interrupts.
func (in *Interrupts) SetISAIRQ(irq uint8, level bool) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if irq > 15 {
		return fmt.Errorf("ISA IRQ %d: %w", irq, ErrInvalid)
	}
	in.isa[irq] = level
	in.events = append(in.events, IRQEvent{Kind: ISA, Line: irq, Level: level})
	return in.Err
}

// SetPCIINTx implements hw.Interrupts.
func (in *Interrupts) SetPCIINTx(dev, pin uint8, level bool) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if dev > 31 || pin > 3 {
		return fmt.Errorf("INTx dev %d pin %d: %w", dev, pin, ErrInvalid)
	}
	in.intx[dev][pin] = level
	in.events = append(in.events, IRQEvent{Kind: INTx, Dev: dev, Line: pin, Level: level})
	return in.Err
}

// SetPCILinkRoute implements hw.Interrupts.
func (in *Interrupts) SetPCILinkRoute(link, irq uint8) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if link > 3 || irq > 15 {
		return fmt.Errorf("link %d route to IRQ %d: %w", link, irq, ErrInvalid)
	}
	in.routes[link] = irq
	in.events = append(in.events, IRQEvent{Kind: LinkRoute, Line: link, Value: irq})
	return in.Err
}

// ISALevel reports the current level of ISA IRQ irq (false if out of range).
func (in *Interrupts) ISALevel(irq uint8) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return irq < 16 && in.isa[irq]
}

// INTxLevel reports the current level of INTx pin of device dev.
func (in *Interrupts) INTxLevel(dev, pin uint8) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return dev < 32 && pin < 4 && in.intx[dev][pin]
}

// Route reports the ISA IRQ PCI link is routed to (0 = disabled / never set).
func (in *Interrupts) Route(link uint8) uint8 {
	in.mu.Lock()
	defer in.mu.Unlock()
	if link > 3 {
		return 0
	}
	return in.routes[link]
}

// Events returns every successful call so far, in order.
func (in *Interrupts) Events() []IRQEvent {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]IRQEvent(nil), in.events...)
}

// ResetEvents forgets recorded events (levels and routes stay).
func (in *Interrupts) ResetEvents() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.events = nil
}

// Raises counts ISA IRQ irq low→high transitions among the recorded events.
func (in *Interrupts) Raises(irq uint8) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n, lvl := 0, false
	for _, e := range in.events {
		if e.Kind == ISA && e.Line == irq {
			if e.Level && !lvl {
				n++
			}
			lvl = e.Level
		}
	}
	return n
}

// Shutdown is a recording hw.Shutdown. Err, if set, is returned after recording.
type Shutdown struct {
	mu       sync.Mutex
	poweroff int
	reboot   int
	order    []string
	Err      error
}

var _ hw.Shutdown = (*Shutdown)(nil)

// PowerOff implements hw.Shutdown.
func (s *Shutdown) PowerOff() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.poweroff++
	s.order = append(s.order, "poweroff")
	return s.Err
}

// Reboot implements hw.Shutdown.
func (s *Shutdown) Reboot() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reboot++
	s.order = append(s.order, "reboot")
	return s.Err
}

// PowerOffs counts PowerOff calls.
func (s *Shutdown) PowerOffs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.poweroff
}

// Reboots counts Reboot calls.
func (s *Shutdown) Reboots() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reboot
}

// Calls lists "poweroff"/"reboot" in call order.
func (s *Shutdown) Calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.order...)
}

// DirtyCall is one MarkDirty call.
type DirtyCall struct{ PFN, N uint64 }

// Dirty is a recording hw.DirtyReporter.
type Dirty struct {
	mu    sync.Mutex
	calls []DirtyCall
}

var _ hw.DirtyReporter = (*Dirty)(nil)

// MarkDirty implements hw.DirtyReporter.
func (d *Dirty) MarkDirty(pfn, n uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, DirtyCall{pfn, n})
}

// Calls returns every MarkDirty call in order.
func (d *Dirty) Calls() []DirtyCall {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]DirtyCall(nil), d.calls...)
}

// Pages returns the distinct dirtied pfns in ascending order.
func (d *Dirty) Pages() []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	set := map[uint64]bool{}
	for _, c := range d.calls {
		for i := uint64(0); i < c.N; i++ {
			set[c.PFN+i] = true
		}
	}
	out := make([]uint64, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// IsDirty reports whether pfn was marked dirty.
func (d *Dirty) IsDirty(pfn uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.calls {
		if pfn >= c.PFN && pfn-c.PFN < c.N {
			return true
		}
	}
	return false
}

// Memory is a sparse hw.GuestMemory of Size bytes. Pages inside a hole, at
// or beyond Size, make the whole access fail (nothing is transferred) with an
// error wrapping hw.ErrBadGPA that names the first bad pfn. Unwritten pages
// read as zero. Pages are allocated on first write, so a large Size is cheap.
type Memory struct {
	mu    sync.Mutex
	size  uint64
	holes []Range
	pages map[uint64]*[hw.PageSize]byte
}

var _ hw.GuestMemory = (*Memory)(nil)

// NewMemory returns size bytes of guest memory with the given holes
// ([Base, Base+N) guest-physical ranges; Space is ignored).
func NewMemory(size uint64, holes ...Range) *Memory {
	return &Memory{size: size, holes: holes, pages: map[uint64]*[hw.PageSize]byte{}}
}

// AddHole makes [gpa, gpa+n) inaccessible from now on.
func (m *Memory) AddHole(gpa, n uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.holes = append(m.holes, Range{MMIO, gpa, n})
}

// Size is the memory size given to NewMemory.
func (m *Memory) Size() uint64 { return m.size }

func (m *Memory) check(gpa uint64, n int) error {
	if n == 0 {
		return nil
	}
	end := gpa + uint64(n) - 1
	if end < gpa {
		return fmt.Errorf("hwtest: gpa %#x+%#x wraps: %w", gpa, n, hw.ErrBadGPA)
	}
	for pfn := gpa >> hw.PageShift; pfn <= end>>hw.PageShift; pfn++ {
		pa := pfn << hw.PageShift
		if pa >= m.size {
			return fmt.Errorf("hwtest: pfn %#x beyond memory size %#x: %w", pfn, m.size, hw.ErrBadGPA)
		}
		for _, h := range m.holes {
			// Any overlap of the accessed bytes of this page with a hole.
			lo, hi := max(pa, gpa), min(pa+hw.PageSize-1, end)
			if h.N > 0 && h.Base <= hi && lo <= h.Base+h.N-1 {
				return fmt.Errorf("hwtest: pfn %#x in hole %v: %w", pfn, h, hw.ErrBadGPA)
			}
		}
	}
	return nil
}

// ReadGPA implements hw.GuestMemory.
func (m *Memory) ReadGPA(gpa uint64, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(gpa, len(p)); err != nil {
		return err
	}
	for i := 0; i < len(p); {
		a := gpa + uint64(i)
		off := a & (hw.PageSize - 1)
		n := min(len(p)-i, int(hw.PageSize-off))
		if pg := m.pages[a>>hw.PageShift]; pg != nil {
			copy(p[i:i+n], pg[off:])
		} else {
			clear(p[i : i+n])
		}
		i += n
	}
	return nil
}

// WriteGPA implements hw.GuestMemory.
func (m *Memory) WriteGPA(gpa uint64, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(gpa, len(p)); err != nil {
		return err
	}
	for i := 0; i < len(p); {
		a := gpa + uint64(i)
		off := a & (hw.PageSize - 1)
		n := min(len(p)-i, int(hw.PageSize-off))
		pg := m.pages[a>>hw.PageShift]
		if pg == nil {
			pg = new([hw.PageSize]byte)
			m.pages[a>>hw.PageShift] = pg
		}
		copy(pg[off:], p[i:i+n])
		i += n
	}
	return nil
}
