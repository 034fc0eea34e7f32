package dm

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// ErrOverlap reports a claim that overlaps an existing one.
var ErrOverlap = errors.New("I/O range overlaps an existing claim")

// rangeMapper forwards claims to Xen: XEN_DMOP_map_io_range_to_ioreq_server
// and unmap_io_range_from_ioreq_server for one ioreq server.
type rangeMapper interface {
	MapIORange(r xen.IORange) error
	UnmapIORange(r xen.IORange) error
}

// serverRanges binds a DeviceModel to one ioreq server id.
type serverRanges struct {
	dm DeviceModel
	id xen.IoservID
}

func (s serverRanges) MapIORange(r xen.IORange) error   { return s.dm.MapIORange(s.id, r) }
func (s serverRanges) UnmapIORange(r xen.IORange) error { return s.dm.UnmapIORange(s.id, r) }

type portClaim struct {
	base, end uint32 // [base, end)
	h         hw.PortIO
}

type mmioClaim struct {
	base, end uint64 // [base, end)
	h         hw.MMIO
}

// ioSpace implements hw.IOSpace: it keeps the non-overlapping port and MMIO
// claims of the devices, sorted, and forwards each claim and release to Xen
// so that exactly the claimed accesses reach this process. Lookups (the
// ioreq hot path) read an immutable snapshot without locking.
type ioSpace struct {
	xen rangeMapper
	log *slog.Logger

	mu    sync.Mutex // serializes claims and releases
	ports atomic.Pointer[[]portClaim]
	mmio  atomic.Pointer[[]mmioClaim]
}

var _ hw.IOSpace = (*ioSpace)(nil)

func newIOSpace(x rangeMapper, log *slog.Logger) *ioSpace {
	s := &ioSpace{xen: x, log: log}
	s.ports.Store(&[]portClaim{})
	s.mmio.Store(&[]mmioClaim{})
	return s
}

func (s *ioSpace) ClaimPorts(base uint16, n uint16, h hw.PortIO) error {
	if n == 0 || h == nil {
		return fmt.Errorf("claim ports %#x+%d: empty range or nil handler", base, n)
	}
	b, e := uint32(base), uint32(base)+uint32(n)
	if e > 0x10000 {
		return fmt.Errorf("claim ports %#x+%d: beyond port 0xffff", base, n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.ports.Load()
	i := sort.Search(len(cur), func(i int) bool { return cur[i].end > b })
	if i < len(cur) && cur[i].base < e {
		return fmt.Errorf("claim ports %#x-%#x: %w (%#x-%#x)", b, e-1, ErrOverlap, cur[i].base, cur[i].end-1)
	}
	if err := s.xen.MapIORange(xen.PortRange(base, n)); err != nil {
		return fmt.Errorf("claim ports %#x-%#x: %w", b, e-1, err)
	}
	next := make([]portClaim, 0, len(cur)+1)
	next = append(next, cur[:i]...)
	next = append(next, portClaim{b, e, h})
	next = append(next, cur[i:]...)
	s.ports.Store(&next)
	return nil
}

// ReleasePorts drops every claim inside [base, base+n). A claim that only
// partly overlaps the range cannot be split and is kept (logged).
func (s *ioSpace) ReleasePorts(base uint16, n uint16) {
	b, e := uint32(base), uint32(base)+uint32(n)
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.ports.Load()
	next := make([]portClaim, 0, len(cur))
	for _, c := range cur {
		switch {
		case c.base >= b && c.end <= e:
			if err := s.xen.UnmapIORange(xen.PortRange(uint16(c.base), uint16(c.end-c.base))); err != nil {
				s.log.Warn("unmap port range from the ioreq server failed", "base", hex(uint64(c.base)), "n", c.end-c.base, "err", err)
			}
		case c.base < e && b < c.end:
			s.log.Warn("port release only partly covers a claim; claim kept",
				"release", fmt.Sprintf("%#x+%d", base, n), "claim", fmt.Sprintf("%#x-%#x", c.base, c.end-1))
			next = append(next, c)
		default:
			next = append(next, c)
		}
	}
	s.ports.Store(&next)
}

func (s *ioSpace) ClaimMMIO(base uint64, n uint64, h hw.MMIO) error {
	if n == 0 || h == nil {
		return fmt.Errorf("claim MMIO %#x+%#x: empty range or nil handler", base, n)
	}
	e := base + n
	if e < base {
		return fmt.Errorf("claim MMIO %#x+%#x: wraps", base, n)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.mmio.Load()
	i := sort.Search(len(cur), func(i int) bool { return cur[i].end > base })
	if i < len(cur) && cur[i].base < e {
		return fmt.Errorf("claim MMIO %#x-%#x: %w (%#x-%#x)", base, e-1, ErrOverlap, cur[i].base, cur[i].end-1)
	}
	if err := s.xen.MapIORange(xen.MMIORange(base, n)); err != nil {
		return fmt.Errorf("claim MMIO %#x-%#x: %w", base, e-1, err)
	}
	next := make([]mmioClaim, 0, len(cur)+1)
	next = append(next, cur[:i]...)
	next = append(next, mmioClaim{base, e, h})
	next = append(next, cur[i:]...)
	s.mmio.Store(&next)
	return nil
}

// ReleaseMMIO drops every claim inside [base, base+n).
func (s *ioSpace) ReleaseMMIO(base uint64, n uint64) {
	e := base + n
	s.mu.Lock()
	defer s.mu.Unlock()
	cur := *s.mmio.Load()
	next := make([]mmioClaim, 0, len(cur))
	for _, c := range cur {
		switch {
		case c.base >= base && c.end <= e:
			if err := s.xen.UnmapIORange(xen.MMIORange(c.base, c.end-c.base)); err != nil {
				s.log.Warn("unmap MMIO range from the ioreq server failed", "base", hex(c.base), "n", hex(c.end-c.base), "err", err)
			}
		case c.base < e && base < c.end:
			s.log.Warn("MMIO release only partly covers a claim; claim kept",
				"release", fmt.Sprintf("%#x+%#x", base, n), "claim", fmt.Sprintf("%#x-%#x", c.base, c.end-1))
			next = append(next, c)
		default:
			next = append(next, c)
		}
	}
	s.mmio.Store(&next)
}

// portHandler returns the claim containing [port, port+size), if one does.
func (s *ioSpace) portHandler(port uint32, size uint32) (hw.PortIO, bool) {
	cur := *s.ports.Load()
	i := sort.Search(len(cur), func(i int) bool { return cur[i].end > port })
	if i < len(cur) && cur[i].base <= port && port+size <= cur[i].end {
		return cur[i].h, true
	}
	return nil, false
}

func (s *ioSpace) mmioHandler(addr, size uint64) (hw.MMIO, bool) {
	cur := *s.mmio.Load()
	i := sort.Search(len(cur), func(i int) bool { return cur[i].end > addr })
	if i < len(cur) && cur[i].base <= addr && addr+size <= cur[i].end && addr+size > addr {
		return cur[i].h, true
	}
	return nil, false
}

// readPort performs a port read of size bytes. An access that no single
// claim covers is split into bytes (as QEMU's memory core splits accesses
// that straddle regions); bytes nobody claims read as 0xff.
func (s *ioSpace) readPort(port uint32, size int) (uint32, bool) {
	if h, ok := s.portHandler(port, uint32(size)); ok {
		return h.ReadPort(uint16(port), size), true
	}
	var v uint32
	hit := false
	for j := 0; j < size; j++ {
		b := uint32(0xff)
		if p := port + uint32(j); p < 0x10000 {
			if h, ok := s.portHandler(p, 1); ok {
				b = h.ReadPort(uint16(p), 1) & 0xff
				hit = true
			}
		}
		v |= b << (8 * j)
	}
	return v, hit
}

func (s *ioSpace) writePort(port uint32, size int, v uint32) bool {
	if h, ok := s.portHandler(port, uint32(size)); ok {
		h.WritePort(uint16(port), size, v)
		return true
	}
	hit := false
	for j := 0; j < size; j++ {
		if p := port + uint32(j); p < 0x10000 {
			if h, ok := s.portHandler(p, 1); ok {
				h.WritePort(uint16(p), 1, v>>(8*j)&0xff)
				hit = true
			}
		}
	}
	return hit
}

func (s *ioSpace) readMMIO(addr uint64, size int) (uint64, bool) {
	if h, ok := s.mmioHandler(addr, uint64(size)); ok {
		return h.ReadMMIO(addr, size), true
	}
	var v uint64
	hit := false
	for j := 0; j < size; j++ {
		b := uint64(0xff)
		if h, ok := s.mmioHandler(addr+uint64(j), 1); ok {
			b = h.ReadMMIO(addr+uint64(j), 1) & 0xff
			hit = true
		}
		v |= b << (8 * j)
	}
	return v, hit
}

func (s *ioSpace) writeMMIO(addr uint64, size int, v uint64) bool {
	if h, ok := s.mmioHandler(addr, uint64(size)); ok {
		h.WriteMMIO(addr, size, v)
		return true
	}
	hit := false
	for j := 0; j < size; j++ {
		if h, ok := s.mmioHandler(addr+uint64(j), 1); ok {
			h.WriteMMIO(addr+uint64(j), 1, v>>(8*j)&0xff)
			hit = true
		}
	}
	return hit
}

// claims lists the current claims (diagnostics, tests).
func (s *ioSpace) claims() (ports [][2]uint32, mmio [][2]uint64) {
	for _, c := range *s.ports.Load() {
		ports = append(ports, [2]uint32{c.base, c.end})
	}
	for _, c := range *s.mmio.Load() {
		mmio = append(mmio, [2]uint64{c.base, c.end})
	}
	return ports, mmio
}

func hex(v uint64) string { return fmt.Sprintf("%#x", v) }
