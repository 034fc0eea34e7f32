package xen

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Hypercalls that are not DM_OPs go through IOCTL_PRIVCMD_HYPERCALL. Xen
// reads and writes their argument structs by virtual address from inside the
// hypercall, so the structs must be in memory that is present and cannot
// move: like libxencall, use pages mapped from /dev/xen/hypercall, falling
// back to locked (or, under RLIMIT_MEMLOCK=0, merely pre-faulted) anonymous
// memory marked MADV_DONTFORK. Hypercalls fail with EPERM after Restrict.

const hypercallBufSize = 2 * PageSize // page 0: argument struct; page 1: a data page (paging prep)

// hypercallBufLocked maps the hypercall buffer on first use. p.hcMu is held.
func (p *Privcmd) hypercallBufLocked() ([]byte, error) {
	if p.hcBuf != nil {
		return p.hcBuf, nil
	}
	rw := unix.PROT_READ | unix.PROT_WRITE
	if fd, err := unix.Open(HypercallPath, unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		if b, err := unix.Mmap(fd, 0, hypercallBufSize, rw, unix.MAP_SHARED); err == nil {
			p.hcFd, p.hcBuf, p.hcKind = fd, b, HypercallPath
			return b, nil
		}
		unix.Close(fd)
	}
	kind := "anonymous (locked)"
	b, err := unix.Mmap(-1, 0, hypercallBufSize, rw, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_LOCKED)
	if err != nil {
		kind = "anonymous"
		b, err = unix.Mmap(-1, 0, hypercallBufSize, rw, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	}
	if err != nil {
		return nil, fmt.Errorf("xen: hypercall buffer: %s unusable and anonymous mmap failed: %w", HypercallPath, err)
	}
	unix.Madvise(b, unix.MADV_DONTFORK)
	for i := range b { // fault the pages in
		b[i] = 0
	}
	p.hcBuf, p.hcKind = b, kind
	return b, nil
}

// withHypercallBuf runs fn with the fd and the (zeroed) hypercall buffer
// held exclusively.
func (p *Privcmd) withHypercallBuf(fn func(fd int, buf []byte) error) error {
	fd, err := p.acquire()
	if err != nil {
		return err
	}
	defer p.mu.RUnlock()
	p.hcMu.Lock()
	defer p.hcMu.Unlock()
	buf, err := p.hypercallBufLocked()
	if err != nil {
		return err
	}
	clear(buf)
	return fn(fd, buf)
}

// hypercall issues IOCTL_PRIVCMD_HYPERCALL. Pointer arguments must point
// into the hypercall buffer. A negative hypercall result is returned by the
// kernel as an errno.
func hypercall(fd int, op uint64, args ...uint64) (uintptr, error) {
	h := privcmdHypercall{Op: op}
	copy(h.Arg[:], args)
	return ioctlHypercall(fd, &h)
}

// HypercallBufferKind says where hypercall buffers come from
// (HypercallPath, "anonymous (locked)" or "anonymous"), mapping them if needed.
func (p *Privcmd) HypercallBufferKind() (string, error) {
	var kind string
	err := p.withHypercallBuf(func(int, []byte) error { kind = p.hcKind; return nil })
	return kind, err
}

// XenVersion returns the hypervisor version (XENVER_version).
func (p *Privcmd) XenVersion() (major, minor int, err error) {
	fd, err := p.acquire()
	if err != nil {
		return 0, 0, fmt.Errorf("xen: xen_version: %w", err)
	}
	defer p.mu.RUnlock()
	r, err := hypercall(fd, hypercallXenVersion, xenverVersion, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("xen: xen_version: %w", err)
	}
	return int(r >> 16), int(r & 0xffff), nil
}

// HVMParam reads HVM parameter index of dom (HVMOP_get_param).
func (p *Privcmd) HVMParam(dom Domid, index uint32) (uint64, error) {
	var v uint64
	err := p.withHypercallBuf(func(fd int, buf []byte) error {
		arg := at[xenHVMParam](buf, 0)
		*arg = xenHVMParam{Domid: uint16(dom), Index: index}
		if _, err := hypercall(fd, hypercallHVMOp, hvmopGetParam, addrOf(buf)); err != nil {
			return err
		}
		v = arg.Value
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("xen: HVMOP_get_param dom %d param %d: %w", dom, index, err)
	}
	return v, nil
}

// SetHVMParam sets HVM parameter index of dom (HVMOP_set_param), for example
// HVMParamACPISState for ACPI S3.
func (p *Privcmd) SetHVMParam(dom Domid, index uint32, value uint64) error {
	err := p.withHypercallBuf(func(fd int, buf []byte) error {
		*at[xenHVMParam](buf, 0) = xenHVMParam{Domid: uint16(dom), Index: index, Value: value}
		_, err := hypercall(fd, hypercallHVMOp, hvmopSetParam, addrOf(buf))
		return err
	})
	if err != nil {
		return fmt.Errorf("xen: HVMOP_set_param dom %d param %d = %#x: %w", dom, index, value, err)
	}
	return nil
}
