package dm

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// MaxReps bounds the repetitions of one ioreq. Xen clamps rep ins/outs/movs
// to 4096 (hvmemul_linear_to_phys); a larger count is a malformed request
// and is refused rather than looped over.
const MaxReps = 4096

// configSpace is what PCI_CONFIG requests go to (a *pci.Bus).
type configSpace interface {
	ConfigRead(sbdf uint32, reg uint16, size int) uint32
	ConfigWrite(sbdf uint32, reg uint16, size int, v uint32)
}

var _ configSpace = (*pci.Bus)(nil)

// emulator performs ioreqs: it is QEMU's handle_ioreq (cpu_ioreq_pio,
// cpu_ioreq_move, cpu_ioreq_config) over our ioSpace, PCI bus and guest
// memory. Everything the guest can send is handled without panicking:
// malformed requests are logged (rate-limited) and completed with all-ones
// reads and dropped writes.
type emulator struct {
	io  *ioSpace
	pci configSpace
	mem GuestMemory
	log *slog.Logger
	lim *rateLimiter

	// onInvalidate runs before the map cache is flushed (drain DMA).
	onInvalidate func()
}

func ones(size uint32) uint64 {
	if size >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*size) - 1
}

// handle performs req (a copy of the slot) and returns the data to respond
// with: the read value for reads without data_is_ptr, else req.Data
// unchanged (Xen ignores it for writes and pointer requests).
func (e *emulator) handle(req xen.Ioreq) uint64 {
	if req.Type != xen.IoreqTypeInvalidate && req.Type != xen.IoreqTypeTimeOffset {
		if !e.validCount(req) {
			return e.refuse(req)
		}
	}
	// QEMU masks the data of pointer-less writes to the access size.
	if !req.DataIsPtr() && !req.IsRead() && req.Size < 8 && req.Type != xen.IoreqTypeTimeOffset &&
		req.Type != xen.IoreqTypeInvalidate {
		req.Data &= ones(req.Size)
	}
	switch req.Type {
	case xen.IoreqTypePIO:
		if !validSize(req.Size, 4) {
			return e.refuse(req)
		}
		return e.items(req, false, e.pioRead, e.pioWrite)
	case xen.IoreqTypeCopy:
		if !validSize(req.Size, 8) {
			return e.refuse(req)
		}
		return e.items(req, true, e.mmioRead, e.mmioWrite)
	case xen.IoreqTypePCIConfig:
		if !validSize(req.Size, 4) {
			return e.refuse(req)
		}
		return e.items(req, false, e.cfgRead, e.cfgWrite)
	case xen.IoreqTypeTimeOffset:
		e.log.Info("ioreq: guest changed the RTC time offset (ignored, as QEMU does)", "offset", int64(req.Data))
		return req.Data
	case xen.IoreqTypeInvalidate:
		if e.onInvalidate != nil {
			e.onInvalidate()
		}
		start := time.Now()
		kept := e.mem.Invalidate()
		e.log.Debug("ioreq: map cache invalidated", "kept-in-use", kept, "took", time.Since(start))
		return req.Data
	}
	e.lim.warn(e.log, "type", "ioreq: unknown type; completing it unhandled", "type", req.Type, "req", req.String())
	return req.Data
}

func validSize(size, max uint32) bool {
	return size == 1 || size == 2 || size == 4 || (size == 8 && max >= 8)
}

func (e *emulator) validCount(req xen.Ioreq) bool {
	return req.Count <= MaxReps
}

// refuse completes a malformed request without side effects.
func (e *emulator) refuse(req xen.Ioreq) uint64 {
	e.lim.warn(e.log, "malformed", "ioreq: malformed request refused", "req", req.String())
	if req.IsRead() && !req.DataIsPtr() {
		return ones(max(min(req.Size, 8), 1))
	}
	return req.Data
}

// Device-side accessors: addr is the port, MMIO address or SBDF<<32|reg.

func (e *emulator) pioRead(addr uint64, size uint32) uint64 {
	v, ok := e.io.readPort(uint32(addr&0xffff), int(size))
	if !ok {
		e.lim.warn(e.log, "pio-miss", "ioreq: read of an unclaimed port", "port", hex(addr), "size", size)
	}
	return uint64(v)
}

func (e *emulator) pioWrite(addr uint64, size uint32, v uint64) {
	if !e.io.writePort(uint32(addr&0xffff), int(size), uint32(v)) {
		e.lim.warn(e.log, "pio-miss", "ioreq: write to an unclaimed port", "port", hex(addr), "size", size, "value", hex(v))
	}
}

func (e *emulator) mmioRead(addr uint64, size uint32) uint64 {
	v, ok := e.io.readMMIO(addr, int(size))
	if !ok {
		e.lim.warn(e.log, "mmio-miss", "ioreq: read of unclaimed MMIO", "addr", hex(addr), "size", size)
	}
	return v
}

func (e *emulator) mmioWrite(addr uint64, size uint32, v uint64) {
	if !e.io.writeMMIO(addr, int(size), v) {
		e.lim.warn(e.log, "mmio-miss", "ioreq: write to unclaimed MMIO", "addr", hex(addr), "size", size, "value", hex(v))
	}
}

func (e *emulator) cfgRead(addr uint64, size uint32) uint64 {
	return uint64(e.pci.ConfigRead(uint32(addr>>32), uint16(addr&0xfff), int(size)))
}

func (e *emulator) cfgWrite(addr uint64, size uint32, v uint64) {
	e.pci.ConfigWrite(uint32(addr>>32), uint16(addr&0xfff), int(size), uint32(v))
}

// items runs the count repetitions of req (QEMU cpu_ioreq_pio / move /
// config): the device address steps by ±size for MMIO (step) and stays
// fixed for ports and config space; with data_is_ptr, item i's guest
// memory address is data ± i·size (df selects the sign).
func (e *emulator) items(req xen.Ioreq, step bool, read func(uint64, uint32) uint64, write func(uint64, uint32, uint64)) uint64 {
	size := req.Size
	mask := ones(size)
	devAddr := func(i uint32) uint64 {
		if !step {
			return req.Addr
		}
		if req.DF() {
			return req.Addr - uint64(i)*uint64(size)
		}
		return req.Addr + uint64(i)*uint64(size)
	}
	if !req.DataIsPtr() {
		data := req.Data
		for i := uint32(0); i < req.Count; i++ {
			if req.IsRead() {
				data = read(devAddr(i), size) & mask
			} else {
				write(devAddr(i), size, data)
			}
		}
		return data
	}
	if req.Count == 0 {
		return req.Data
	}
	// Pointer requests move count items between the device and a guest
	// buffer that Xen guarantees to be physically contiguous: one guest
	// memory access for the whole buffer, item by item only if that fails
	// (so a buffer running into a hole still moves what it can).
	n := uint64(req.Count) * uint64(size)
	lo := req.Data // lowest guest address of the buffer
	if req.DF() {
		lo = req.Data - n + uint64(size)
	}
	off := func(i uint32) uint64 { // offset of item i in the buffer
		if req.DF() {
			return n - uint64(i+1)*uint64(size)
		}
		return uint64(i) * uint64(size)
	}
	buf := make([]byte, n)
	if req.IsRead() {
		// Device → guest memory (ins; movs from MMIO).
		for i := uint32(0); i < req.Count; i++ {
			putLE(buf[off(i):], size, read(devAddr(i), size))
		}
		if err := e.mem.WriteGPA(lo, buf); err != nil {
			for i := uint32(0); i < req.Count; i++ {
				o := off(i)
				if err := e.mem.WriteGPA(lo+o, buf[o:o+uint64(size)]); err != nil {
					e.lim.warn(e.log, "gpa", "ioreq: guest buffer not accessible; item dropped", "gpa", hex(lo+o), "req", req.String(), "err", err)
				}
			}
		}
		return req.Data
	}
	// Guest memory → device (outs; movs to MMIO).
	if err := e.mem.ReadGPA(lo, buf); err != nil {
		for i := uint32(0); i < req.Count; i++ {
			o := off(i)
			if err := e.mem.ReadGPA(lo+o, buf[o:o+uint64(size)]); err != nil {
				e.lim.warn(e.log, "gpa", "ioreq: guest buffer not accessible; item reads as all-ones", "gpa", hex(lo+o), "req", req.String(), "err", err)
				for k := range buf[o : o+uint64(size)] {
					buf[o+uint64(k)] = 0xff
				}
			}
		}
	}
	for i := uint32(0); i < req.Count; i++ {
		write(devAddr(i), size, getLE(buf[off(i):], size))
	}
	return req.Data
}

func putLE(b []byte, size uint32, v uint64) {
	for j := uint32(0); j < size; j++ {
		b[j] = byte(v >> (8 * j))
	}
}

func getLE(b []byte, size uint32) uint64 {
	var v uint64
	for j := uint32(0); j < size; j++ {
		v |= uint64(b[j]) << (8 * j)
	}
	return v
}

// rateLimiter keeps a guest from flooding the log: per key, the first 10
// messages are logged, then one in 1000 with a count.
type rateLimiter struct {
	mu sync.Mutex
	n  map[string]uint64
}

func newRateLimiter() *rateLimiter { return &rateLimiter{n: map[string]uint64{}} }

func (r *rateLimiter) warn(log *slog.Logger, key, msg string, args ...any) {
	r.mu.Lock()
	r.n[key]++
	n := r.n[key]
	r.mu.Unlock()
	switch {
	case n <= 10:
		log.Warn(msg, args...)
	case n%1000 == 0:
		log.Warn(msg, append(args, "occurrences", n)...)
	}
}

// trackedMemory is the guest memory given to devices and used by pointer
// ioreqs: every successful write is reported to the dirty log, and the pages
// it touched stop being known copies of disk blocks (a DMA read records them
// again right after, through the IDE observer).
type trackedMemory struct {
	GuestMemory
	dirty   hw.DirtyReporter
	tracker *blk.Tracker
}

func (m trackedMemory) WriteGPA(gpa uint64, p []byte) error {
	if err := m.GuestMemory.WriteGPA(gpa, p); err != nil {
		return err
	}
	if m.tracker != nil {
		m.tracker.DropGPA(gpa, uint64(len(p)))
	}
	if len(p) > 0 {
		first := gpa >> hw.PageShift
		last := (gpa + uint64(len(p)) - 1) >> hw.PageShift
		m.dirty.MarkDirty(first, last-first+1)
	}
	return nil
}

// pageBufs are the 4 KiB buffers guestPageHash reads pages into.
var pageBufs = sync.Pool{New: func() any { return new([hw.PageSize]byte) }}

// guestPageHash is the tracker's validator (blk.TrackerConfig.PageHash): the
// hash of guest page pfn as it is now, read through the map cache (safe for
// concurrent use with the ioreq loop and DMA; reads report nothing dirty).
// The read is a copy of one page into a pooled buffer, ~0.3 µs per page with
// the hash on the reference machine (BenchmarkGuestPageHash; hashing the
// mapping in place through a MapCache Pin measured slower: it allocates).
func guestPageHash(m hw.GuestMemory, domid uint32) func(pfn uint64) (uint64, error) {
	return func(pfn uint64) (uint64, error) {
		if pfn > ^uint64(0)>>hw.PageShift {
			return 0, fmt.Errorf("domid %d pfn %#x: hash guest page: %w", domid, pfn, hw.ErrBadGPA)
		}
		buf := pageBufs.Get().(*[hw.PageSize]byte)
		defer pageBufs.Put(buf)
		if err := m.ReadGPA(pfn<<hw.PageShift, buf[:]); err != nil {
			return 0, fmt.Errorf("domid %d pfn %#x: hash guest page: %w", domid, pfn, err)
		}
		return blk.HashPage(buf[:]), nil
	}
}
