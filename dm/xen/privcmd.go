package xen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// PrivcmdPath is the privcmd device of a Linux dom0.
const PrivcmdPath = "/dev/xen/privcmd"

// HypercallPath is the device libxencall maps hypercall buffers from.
const HypercallPath = "/dev/xen/hypercall"

// Privcmd is an open /dev/xen/privcmd: DM_OP, foreign mapping
// (MMAPBATCH_V2), resource mapping (MMAP_RESOURCE), raw hypercalls and
// RESTRICT. It is safe for concurrent use.
//
// Nested pointers inside ioctl arguments (privcmd_dm_op.ubufs, the DM_OP
// buffers, mmapbatch arr/err) always point into anonymous mmap'd arenas owned
// by the Privcmd, never into Go memory, so neither the GC nor stack growth can
// move or free them during the call. Hypercall buffers come from
// /dev/xen/hypercall (or locked anonymous memory when that device is absent).
type Privcmd struct {
	mu sync.RWMutex // guards fd against Close; ioctls hold it for reading
	fd int

	dmMu    sync.Mutex
	dmArena []byte // page 0: privcmd_dm_op + 2 privcmd_dm_op_buf; pages 1, 2: buffers

	batchMu    sync.Mutex
	batchArena []byte // gfn array then err array for MMAPBATCH_V2

	hcMu   sync.Mutex
	hcBuf  []byte // 2 pages of hypercall-safe memory, mapped on first use
	hcFd   int    // /dev/xen/hypercall, or -1
	hcKind string // HypercallPath, "anonymous (locked)" or "anonymous"
}

// OpenPrivcmd opens /dev/xen/privcmd.
func OpenPrivcmd() (*Privcmd, error) {
	fd, err := unix.Open(PrivcmdPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("xen: open %s (needs a Xen dom0 with the xen-privcmd driver): %w", PrivcmdPath, err)
	}
	arena, err := mmapArena(3 * PageSize)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Privcmd{fd: fd, dmArena: arena, hcFd: -1}, nil
}

// Close closes the device and frees the arenas. Mappings made through it stay
// valid until unmapped.
func (p *Privcmd) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fd < 0 {
		return nil
	}
	err := unix.Close(p.fd)
	p.fd = -1
	p.dmMu.Lock()
	freeArena(&p.dmArena)
	p.dmMu.Unlock()
	p.batchMu.Lock()
	freeArena(&p.batchArena)
	p.batchMu.Unlock()
	p.hcMu.Lock()
	freeArena(&p.hcBuf)
	if p.hcFd >= 0 {
		unix.Close(p.hcFd)
		p.hcFd = -1
	}
	p.hcMu.Unlock()
	if err != nil {
		return fmt.Errorf("xen: close %s: %w", PrivcmdPath, err)
	}
	return nil
}

// acquire locks the fd for an ioctl; release with p.mu.RUnlock.
func (p *Privcmd) acquire() (int, error) {
	p.mu.RLock()
	if p.fd < 0 {
		p.mu.RUnlock()
		return -1, ErrClosed
	}
	return p.fd, nil
}

func mmapArena(size int) ([]byte, error) {
	b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("xen: mmap %d-byte argument arena: %w", size, err)
	}
	return b, nil
}

func freeArena(b *[]byte) {
	if *b != nil {
		unix.Munmap(*b)
		*b = nil
	}
}

// Restrict limits this handle to domain dom (IOCTL_PRIVCMD_RESTRICT): after
// it, DM_OP and mappings work only for dom and hypercalls fail with EPERM.
func (p *Privcmd) Restrict(dom Domid) error {
	fd, err := p.acquire()
	if err != nil {
		return fmt.Errorf("xen: privcmd restrict to dom %d: %w", dom, err)
	}
	defer p.mu.RUnlock()
	d := uint16(dom)
	if err := ioctlRestrict(fd, &d); err != nil {
		return fmt.Errorf("xen: privcmd restrict to dom %d: %w", dom, err)
	}
	return nil
}

// ---- DM_OP ----

// checkDMOpBufs refuses what Xen or the kernel would refuse, with an error
// that says why, before any ioctl.
func checkDMOpBufs(dom Domid, bufs [][]byte) (name string, err error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("xen: DM_OP %s dom %d: %s: %w", name, dom, fmt.Sprintf(format, args...), ErrDMOpBuffer)
	}
	name = "?"
	if len(bufs) == 0 {
		return name, bad("no buffers (Xen needs struct xen_dm_op in buffer 0)")
	}
	if len(bufs[0]) >= 4 {
		name = DMOpName(binary.LittleEndian.Uint32(bufs[0]))
	}
	if len(bufs) > dmopMaxBufs {
		return name, bad("%d buffers, Xen accepts at most %d", len(bufs), dmopMaxBufs)
	}
	for i, b := range bufs {
		if len(b) > dmopMaxBufSize {
			return name, bad("buffer %d is %d bytes, privcmd accepts at most %d", i, len(b), dmopMaxBufSize)
		}
	}
	if len(bufs[0]) < dmopHeaderSize {
		return name, bad("buffer 0 is %d bytes, shorter than the xen_dm_op header (%d)", len(bufs[0]), dmopHeaderSize)
	}
	op := binary.LittleEndian.Uint32(bufs[0])
	if pad := binary.LittleEndian.Uint32(bufs[0][4:]); pad != 0 {
		return name, bad("xen_dm_op.pad is %#x, must be 0", pad)
	}
	info, known := dmopInfo[op]
	if known && len(bufs[0]) < dmopHeaderSize+info.size {
		return name, bad("buffer 0 is %d bytes, need at least %d for xen_dm_op_%s", len(bufs[0]), dmopHeaderSize+info.size, info.name)
	}
	switch op {
	case dmopModifiedMemory:
		if len(bufs) != 2 {
			return name, bad("needs exactly 2 buffers (header, extents), got %d", len(bufs))
		}
		nr := binary.LittleEndian.Uint32(bufs[0][dmopHeaderSize:])
		if need := uint64(nr) * 16; uint64(len(bufs[1])) < need {
			return name, bad("buffer 1 is %d bytes, %d extents need %d", len(bufs[1]), nr, need)
		}
	case dmopTrackDirtyVRAM:
		if len(bufs) != 2 {
			return name, bad("needs exactly 2 buffers (header, bitmap), got %d", len(bufs))
		}
		nr := binary.LittleEndian.Uint32(bufs[0][dmopHeaderSize:])
		if need := (uint64(nr) + 7) / 8; uint64(len(bufs[1])) < need {
			return name, bad("buffer 1 is %d bytes, a bitmap of %d pages needs %d", len(bufs[1]), nr, need)
		}
	}
	return name, nil
}

// DMOp issues IOCTL_PRIVCMD_DM_OP for domain dom with one or two buffers;
// buffer 0 starts with struct xen_dm_op. The buffers are copied into the
// handle's arena for the call and copied back afterwards, so output fields
// (server id, ports, nr_vcpus, dirty bitmaps) appear in the caller's slices.
// Bad buffers give an error wrapping ErrDMOpBuffer without a call; a failing
// op gives the errno (e.g. ESRCH for a domid that does not exist) wrapped with
// the op name and domid.
func (p *Privcmd) DMOp(dom Domid, bufs ...[]byte) error {
	name, err := checkDMOpBufs(dom, bufs)
	if err != nil {
		return err
	}
	fd, err := p.acquire()
	if err != nil {
		return fmt.Errorf("xen: DM_OP %s dom %d: %w", name, dom, err)
	}
	defer p.mu.RUnlock()
	p.dmMu.Lock()
	defer p.dmMu.Unlock()

	a := p.dmArena
	regions := make([][]byte, len(bufs))
	for i, b := range bufs {
		r := a[PageSize*(i+1) : PageSize*(i+1)+len(b)]
		copy(r, b)
		regions[i] = r
		d := at[privcmdDMOpBuf](a, 16+16*i)
		d.Uptr = addrOf(a[PageSize*(i+1):])
		d.Size = uint64(len(b))
	}
	hdr := at[privcmdDMOp](a, 0)
	*hdr = privcmdDMOp{Dom: uint16(dom), Num: uint16(len(bufs)), Ubufs: addrOf(a[16:])}
	err = ioctlDMOp(fd, hdr)
	for i, b := range bufs {
		copy(b, regions[i])
	}
	if err != nil {
		return fmt.Errorf("xen: DM_OP %s dom %d: %w", name, dom, err)
	}
	return nil
}

// probeDMOp is libxendevicemodel's open-time probe: DM_OP with
// dom=DOMID_INVALID and no buffers, which the kernel answers with 0.
func (p *Privcmd) probeDMOp() error {
	fd, err := p.acquire()
	if err != nil {
		return err
	}
	defer p.mu.RUnlock()
	p.dmMu.Lock()
	defer p.dmMu.Unlock()
	hdr := at[privcmdDMOp](p.dmArena, 0)
	*hdr = privcmdDMOp{Dom: uint16(DomidInvalid), Num: 0, Ubufs: 0}
	return ioctlDMOp(fd, hdr)
}

// ---- MMAP_RESOURCE ----

// MapResource maps num frames of a Xen resource (IOCTL_PRIVCMD_MMAP_RESOURCE
// into a fresh mmap of the privcmd fd): typ is XENMEM_resource_*, id the
// resource id (for ioreq servers: the ioservid), idx the first frame.
// Unmap the result with Unmap.
func (p *Privcmd) MapResource(dom Domid, typ, id, idx uint32, num int) ([]byte, error) {
	what := fmt.Sprintf("dom %d resource type %d id %d frames %d+%d", dom, typ, id, idx, num)
	if num <= 0 {
		return nil, fmt.Errorf("xen: MMAP_RESOURCE %s: no frames: %w", what, unix.EINVAL)
	}
	fd, err := p.acquire()
	if err != nil {
		return nil, fmt.Errorf("xen: MMAP_RESOURCE %s: %w", what, err)
	}
	defer p.mu.RUnlock()
	mem, err := unix.Mmap(fd, 0, num*PageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("xen: MMAP_RESOURCE %s: mmap privcmd: %w", what, err)
	}
	arg := privcmdMmapResource{Dom: uint16(dom), Type: typ, ID: id, Idx: idx, Num: uint64(num), Addr: addrOf(mem)}
	if err := ioctlMmapResource(fd, &arg); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("xen: MMAP_RESOURCE %s: %w", what, err)
	}
	return mem, nil
}

// Unmap unmaps memory returned by MapResource.
func (p *Privcmd) Unmap(mem []byte) error {
	if mem == nil {
		return nil
	}
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("xen: munmap privcmd mapping: %w", err)
	}
	return nil
}

// ---- MMAPBATCH_V2 ----

// ForeignMapping is guest frames of another domain mapped into this process
// with IOCTL_PRIVCMD_MMAPBATCH_V2 (or a fake's equivalent). Page i of Mem
// holds GFNs[i] if Errs[i] is 0. A page whose Errs[i] is not 0 is not mapped:
// touching it raises SIGBUS, so go through Page, which checks.
type ForeignMapping struct {
	Dom      Domid
	GFNs     []uint64
	Writable bool
	// Mem is len(GFNs) pages. Do not reslice the field itself: the mapper
	// unmaps exactly this slice.
	Mem []byte
	// Errs is the per-page result: 0, or the errno of that page
	// (ENOENT: paged out; anything else: not mappable).
	Errs []unix.Errno
}

// Page returns page i, or a *PageError when page i is not mapped.
func (m *ForeignMapping) Page(i int) ([]byte, error) {
	if i < 0 || i >= len(m.GFNs) {
		return nil, fmt.Errorf("xen: dom %d foreign mapping has %d pages, no page %d: %w", m.Dom, len(m.GFNs), i, unix.EINVAL)
	}
	if m.Mem == nil {
		return nil, &PageError{Dom: m.Dom, PFN: m.GFNs[i], Err: ErrClosed}
	}
	if e := m.Errs[i]; e != 0 {
		return nil, &PageError{Dom: m.Dom, PFN: m.GFNs[i], Err: e}
	}
	return m.Mem[i*PageSize : (i+1)*PageSize : (i+1)*PageSize], nil
}

// Valid reports whether page i is mapped.
func (m *ForeignMapping) Valid(i int) bool {
	return m.Mem != nil && i >= 0 && i < len(m.Errs) && m.Errs[i] == 0
}

// ForeignMapper maps guest frames of another domain. *Privcmd implements it
// over IOCTL_PRIVCMD_MMAPBATCH_V2; xentest.GuestRAM implements it over a
// memfd with PROT_NONE holes.
type ForeignMapper interface {
	// MapForeign maps gfns of dom. Per-page failures are not an error: they
	// are reported in ForeignMapping.Errs. An error means nothing was mapped.
	MapForeign(dom Domid, gfns []uint64, writable bool) (*ForeignMapping, error)
	// RetryForeign maps again the failed pages among pages [first, first+n)
	// of m (for example after a paged-out frame was paged in), updating
	// m.Errs. It makes one attempt; it never loops.
	RetryForeign(m *ForeignMapping, first, n int) error
	// UnmapForeign unmaps m. It is idempotent.
	UnmapForeign(m *ForeignMapping) error
}

var _ ForeignMapper = (*Privcmd)(nil)

// MapForeign implements ForeignMapper with IOCTL_PRIVCMD_MMAPBATCH_V2 on a
// fresh, exactly sized mmap of the privcmd fd. An ENOENT result (some pages
// paged out) is not an error: those pages have Errs[i] == ENOENT and can be
// retried with RetryForeign. Nothing here retries or sleeps.
func (p *Privcmd) MapForeign(dom Domid, gfns []uint64, writable bool) (*ForeignMapping, error) {
	n := len(gfns)
	if n == 0 {
		return nil, fmt.Errorf("xen: MMAPBATCH_V2 dom %d: no frames: %w", dom, unix.EINVAL)
	}
	what := fmt.Sprintf("dom %d gfn %#x (%d pages)", dom, gfns[0], n)
	fd, err := p.acquire()
	if err != nil {
		return nil, fmt.Errorf("xen: MMAPBATCH_V2 %s: %w", what, err)
	}
	defer p.mu.RUnlock()
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(fd, 0, n*PageSize, prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("xen: MMAPBATCH_V2 %s: mmap privcmd: %w", what, err)
	}
	m := &ForeignMapping{Dom: dom, GFNs: append([]uint64(nil), gfns...), Writable: writable, Mem: mem, Errs: make([]unix.Errno, n)}
	if err := p.mmapBatch(fd, dom, mem, m.GFNs, m.Errs); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("xen: MMAPBATCH_V2 %s: %w", what, err)
	}
	return m, nil
}

// RetryForeign implements ForeignMapper: one MMAPBATCH_V2 call per run of
// failed pages within [first, first+n), filling the holes of the existing
// mapping (the kernel allows that for pages that are not mapped yet).
func (p *Privcmd) RetryForeign(m *ForeignMapping, first, n int) error {
	if m.Mem == nil {
		return fmt.Errorf("xen: MMAPBATCH_V2 retry dom %d: mapping is unmapped: %w", m.Dom, ErrClosed)
	}
	if first < 0 || n < 0 || first+n > len(m.GFNs) {
		return fmt.Errorf("xen: MMAPBATCH_V2 retry dom %d: pages %d+%d outside a %d-page mapping: %w", m.Dom, first, n, len(m.GFNs), unix.EINVAL)
	}
	fd, err := p.acquire()
	if err != nil {
		return fmt.Errorf("xen: MMAPBATCH_V2 retry dom %d: %w", m.Dom, err)
	}
	defer p.mu.RUnlock()
	for i := first; i < first+n; {
		if m.Errs[i] == 0 {
			i++
			continue
		}
		j := i
		for j < first+n && m.Errs[j] != 0 {
			j++
		}
		if err := p.mmapBatch(fd, m.Dom, m.Mem[i*PageSize:j*PageSize], m.GFNs[i:j], m.Errs[i:j]); err != nil {
			return fmt.Errorf("xen: MMAPBATCH_V2 retry dom %d gfn %#x (%d pages): %w", m.Dom, m.GFNs[i], j-i, err)
		}
		i = j
	}
	return nil
}

// UnmapForeign implements ForeignMapper.
func (p *Privcmd) UnmapForeign(m *ForeignMapping) error {
	if m == nil || m.Mem == nil {
		return nil
	}
	err := unix.Munmap(m.Mem)
	m.Mem = nil
	if err != nil {
		return fmt.Errorf("xen: munmap foreign mapping dom %d gfn %#x: %w", m.Dom, m.GFNs[0], err)
	}
	return nil
}

// mmapBatch issues one MMAPBATCH_V2 for len(gfns) pages at addr(mem) and
// fills errs. It returns nil when the call succeeded or failed only with
// ENOENT (paged-out pages, reported in errs).
func (p *Privcmd) mmapBatch(fd int, dom Domid, mem []byte, gfns []uint64, errs []unix.Errno) error {
	n := len(gfns)
	p.batchMu.Lock()
	defer p.batchMu.Unlock()
	need := (n*12 + PageSize - 1) &^ (PageSize - 1)
	if len(p.batchArena) < need {
		freeArena(&p.batchArena)
		a, err := mmapArena(need)
		if err != nil {
			return err
		}
		p.batchArena = a
	}
	a := p.batchArena
	arr, errOff := a[:8*n], 8*n
	for i, g := range gfns {
		binary.LittleEndian.PutUint64(arr[8*i:], g)
	}
	errArr := a[errOff : errOff+4*n]
	for i := range errArr {
		errArr[i] = 0
	}
	arg := privcmdMmapBatchV2{Num: uint32(n), Dom: uint16(dom), Addr: addrOf(mem), Arr: addrOf(arr), Err: addrOf(errArr)}
	err := ioctlMmapBatchV2(fd, &arg)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		en := unix.EIO
		errors.As(err, &en)
		for i := range errs {
			errs[i] = en
		}
		return err
	}
	for i := range errs {
		v := int32(binary.LittleEndian.Uint32(errArr[4*i:]))
		if v < 0 {
			errs[i] = unix.Errno(-v)
		} else {
			errs[i] = 0
		}
	}
	return nil
}
