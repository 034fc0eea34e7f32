package xentest

import (
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// GuestRAM is fake guest memory: a byte slice (a memfd mapped MAP_SHARED)
// with optional holes and paged-out frames. It is both an hw.GuestMemory for
// device tests and an xen.ForeignMapper, so a real xen.MapCache can run over
// it: MapForeign maps the memfd's pages into a fresh region and leaves the
// pages that fail PROT_NONE, so code that touches a page whose Errs[i] is not
// 0 crashes the test as it would SIGBUS on Xen.
//
// Unpopulated frames (holes, and frames past the end) fail with EFAULT;
// paged-out frames fail with ENOENT for a configurable number of mapping
// attempts, as if a pager paged them in after that many tries.
type GuestRAM struct {
	dom   xen.Domid
	pages uint64
	fd    int
	mem   []byte

	mu       sync.Mutex
	holes    map[uint64]bool
	pagedOut map[uint64]int // pfn → failing attempts left (<0: forever)
	live     map[*xen.ForeignMapping]bool
	mapCalls int
}

var (
	_ hw.GuestMemory    = (*GuestRAM)(nil)
	_ xen.ForeignMapper = (*GuestRAM)(nil)
)

// NewGuestRAM makes size bytes (rounded up to pages) of zeroed guest RAM for
// domain dom. Close it when done.
func NewGuestRAM(dom xen.Domid, size uint64) (*GuestRAM, error) {
	pages := (size + xen.PageSize - 1) / xen.PageSize
	if pages == 0 {
		return nil, fmt.Errorf("xentest: guest RAM of 0 bytes: %w", unix.EINVAL)
	}
	fd, err := unix.MemfdCreate(fmt.Sprintf("xentest-dom%d-ram", dom), unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("xentest: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(pages*xen.PageSize)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("xentest: ftruncate guest RAM: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, int(pages*xen.PageSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("xentest: mmap guest RAM: %w", err)
	}
	return &GuestRAM{dom: dom, pages: pages, fd: fd, mem: mem,
		holes: map[uint64]bool{}, pagedOut: map[uint64]int{}, live: map[*xen.ForeignMapping]bool{}}, nil
}

// Close unmaps the RAM. Foreign mappings still open keep the memfd alive.
func (g *GuestRAM) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mem == nil {
		return nil
	}
	unix.Munmap(g.mem)
	g.mem = nil
	return unix.Close(g.fd)
}

// Bytes is the whole RAM, holes included, for setting up and checking tests.
func (g *GuestRAM) Bytes() []byte { return g.mem }

// Pages is the number of frames.
func (g *GuestRAM) Pages() uint64 { return g.pages }

// AddHole makes frames [pfn, pfn+n) unpopulated (EFAULT).
func (g *GuestRAM) AddHole(pfn, n uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := pfn; i < pfn+n; i++ {
		g.holes[i] = true
	}
}

// RemoveHole populates frames [pfn, pfn+n) again.
func (g *GuestRAM) RemoveHole(pfn, n uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i := pfn; i < pfn+n; i++ {
		delete(g.holes, i)
	}
}

// PageOut marks frame pfn paged out: the next attempts mapping attempts of
// it fail with ENOENT, then it is paged in (attempts < 0: it stays out until
// PageIn).
func (g *GuestRAM) PageOut(pfn uint64, attempts int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if attempts == 0 {
		delete(g.pagedOut, pfn)
		return
	}
	g.pagedOut[pfn] = attempts
}

// PageIn makes a paged-out frame present again.
func (g *GuestRAM) PageIn(pfn uint64) { g.PageOut(pfn, 0) }

// Mappings is the number of foreign mappings not yet unmapped.
func (g *GuestRAM) Mappings() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.live)
}

// MapCalls is how many MapForeign calls were made.
func (g *GuestRAM) MapCalls() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.mapCalls
}

// errnoLocked is the per-page result of mapping pfn now; a paged-out frame
// uses up one attempt.
func (g *GuestRAM) errnoLocked(pfn uint64) unix.Errno {
	if pfn >= g.pages || g.holes[pfn] {
		return unix.EFAULT
	}
	if left, ok := g.pagedOut[pfn]; ok {
		if left > 0 {
			if left == 1 {
				delete(g.pagedOut, pfn)
			} else {
				g.pagedOut[pfn] = left - 1
			}
		}
		return unix.ENOENT
	}
	return 0
}

// accessLocked is the error for touching pfn directly (no attempt used up).
func (g *GuestRAM) accessLocked(pfn uint64) error {
	if g.mem == nil {
		return &xen.PageError{Dom: g.dom, PFN: pfn, Err: xen.ErrClosed}
	}
	if pfn >= g.pages || g.holes[pfn] {
		return &xen.PageError{Dom: g.dom, PFN: pfn, Err: unix.EFAULT}
	}
	if _, ok := g.pagedOut[pfn]; ok {
		return &xen.PageError{Dom: g.dom, PFN: pfn, Err: unix.ENOENT}
	}
	return nil
}

func (g *GuestRAM) check(gpa uint64, n int) error {
	if n == 0 {
		return nil
	}
	if gpa+uint64(n) < gpa {
		return &xen.PageError{Dom: g.dom, PFN: gpa >> xen.PageShift, Err: unix.EFAULT}
	}
	for pfn := gpa >> xen.PageShift; pfn <= (gpa+uint64(n)-1)>>xen.PageShift; pfn++ {
		if err := g.accessLocked(pfn); err != nil {
			return err
		}
	}
	return nil
}

// ReadGPA implements hw.GuestMemory: all or nothing, a *xen.PageError naming
// the first inaccessible pfn.
func (g *GuestRAM) ReadGPA(gpa uint64, p []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(gpa, len(p)); err != nil {
		return err
	}
	copy(p, g.mem[gpa:])
	return nil
}

// WriteGPA implements hw.GuestMemory.
func (g *GuestRAM) WriteGPA(gpa uint64, p []byte) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.check(gpa, len(p)); err != nil {
		return err
	}
	copy(g.mem[gpa:], p)
	return nil
}

func protOf(writable bool) int {
	if writable {
		return unix.PROT_READ | unix.PROT_WRITE
	}
	return unix.PROT_READ
}

// MapForeign implements xen.ForeignMapper.
func (g *GuestRAM) MapForeign(dom xen.Domid, gfns []uint64, writable bool) (*xen.ForeignMapping, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mapCalls++
	if len(gfns) == 0 {
		return nil, fmt.Errorf("xen: MMAPBATCH_V2 dom %d: no frames: %w", dom, unix.EINVAL)
	}
	if dom != g.dom {
		return nil, fmt.Errorf("xen: MMAPBATCH_V2 dom %d gfn %#x (%d pages): %w", dom, gfns[0], len(gfns), unix.ESRCH)
	}
	if g.mem == nil {
		return nil, fmt.Errorf("xen: MMAPBATCH_V2 dom %d: %w", dom, xen.ErrClosed)
	}
	region, err := unix.Mmap(-1, 0, len(gfns)*xen.PageSize, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("xentest: reserve mapping: %w", err)
	}
	m := &xen.ForeignMapping{Dom: dom, GFNs: append([]uint64(nil), gfns...), Writable: writable, Mem: region, Errs: make([]unix.Errno, len(gfns))}
	for i := range gfns {
		g.mapPageLocked(m, i)
	}
	g.live[m] = true
	return m, nil
}

func (g *GuestRAM) mapPageLocked(m *xen.ForeignMapping, i int) {
	e := g.errnoLocked(m.GFNs[i])
	if e == 0 {
		if err := mapFixedShared(g.fd, int64(m.GFNs[i])*xen.PageSize, m.Mem[i*xen.PageSize:], xen.PageSize, protOf(m.Writable)); err != nil {
			e = unix.EIO
			errors.As(err, &e)
		}
	}
	m.Errs[i] = e
}

// RetryForeign implements xen.ForeignMapper.
func (g *GuestRAM) RetryForeign(m *xen.ForeignMapping, first, n int) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.live[m] {
		return fmt.Errorf("xen: MMAPBATCH_V2 retry dom %d: mapping is unmapped: %w", m.Dom, xen.ErrClosed)
	}
	if first < 0 || n < 0 || first+n > len(m.GFNs) {
		return fmt.Errorf("xen: MMAPBATCH_V2 retry dom %d: pages %d+%d outside a %d-page mapping: %w", m.Dom, first, n, len(m.GFNs), unix.EINVAL)
	}
	for i := first; i < first+n; i++ {
		if m.Errs[i] != 0 {
			g.mapPageLocked(m, i)
		}
	}
	return nil
}

// UnmapForeign implements xen.ForeignMapper.
func (g *GuestRAM) UnmapForeign(m *xen.ForeignMapping) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if m == nil || m.Mem == nil {
		return nil
	}
	delete(g.live, m)
	err := unix.Munmap(m.Mem)
	m.Mem = nil
	return err
}
