package xen

// Every use of package unsafe in dm/xen lives in files named *_unsafe.go.
// This one has the single raw ioctl call and one typed helper per ioctl, in
// the style of golang.org/x/sys/unix (ioctlPtr) and gVisor's KVM platform.

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctl is the one raw ioctl call of the package. arg must point to memory
// that stays valid for the call (the unsafe.Pointer parameter keeps a Go
// object alive; arena memory is never moved).
func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if e != 0 {
		return r, e
	}
	return r, nil
}

// ---- privcmd ----

// ioctlHypercall issues IOCTL_PRIVCMD_HYPERCALL. The kernel copies *h; any
// pointer among h.Arg must point into a hypercall buffer.
func ioctlHypercall(fd int, h *privcmdHypercall) (uintptr, error) {
	return ioctl(fd, ioctlPrivcmdHypercall, unsafe.Pointer(h))
}

// ioctlDMOp issues IOCTL_PRIVCMD_DM_OP. arg and the buffers it points to must
// be in arena memory (see arena).
func ioctlDMOp(fd int, arg *privcmdDMOp) error {
	_, err := ioctl(fd, ioctlPrivcmdDMOp, unsafe.Pointer(arg))
	return err
}

// ioctlMmapBatchV2 issues IOCTL_PRIVCMD_MMAPBATCH_V2. arg.Arr and arg.Err must
// point into arena memory.
func ioctlMmapBatchV2(fd int, arg *privcmdMmapBatchV2) error {
	_, err := ioctl(fd, ioctlPrivcmdMmapBatchV2, unsafe.Pointer(arg))
	return err
}

// ioctlMmapResource issues IOCTL_PRIVCMD_MMAP_RESOURCE.
func ioctlMmapResource(fd int, arg *privcmdMmapResource) error {
	_, err := ioctl(fd, ioctlPrivcmdMmapResource, unsafe.Pointer(arg))
	return err
}

// ioctlRestrict issues IOCTL_PRIVCMD_RESTRICT.
func ioctlRestrict(fd int, dom *uint16) error {
	_, err := ioctl(fd, ioctlPrivcmdRestrict, unsafe.Pointer(dom))
	return err
}

// ioctlUnimplemented issues IOCTL_PRIVCMD_UNIMPLEMENTED, which exists only to
// learn which errno the driver returns for an ioctl it does not know.
func ioctlUnimplemented(fd int) error {
	_, err := ioctl(fd, ioctlPrivcmdUnimplemented, nil)
	return err
}

// ---- evtchn ----

func ioctlEvtchnBindVirqCall(fd int, arg *ioctlEvtchnBindVirqArg) (uintptr, error) {
	return ioctl(fd, ioctlEvtchnBindVirq, unsafe.Pointer(arg))
}

func ioctlEvtchnBindInterdomainCall(fd int, arg *ioctlEvtchnBindInterdomainArg) (uintptr, error) {
	return ioctl(fd, ioctlEvtchnBindInterdomain, unsafe.Pointer(arg))
}

func ioctlEvtchnBindUnboundPortCall(fd int, arg *ioctlEvtchnBindUnboundPortArg) (uintptr, error) {
	return ioctl(fd, ioctlEvtchnBindUnboundPort, unsafe.Pointer(arg))
}

func ioctlEvtchnUnbindCall(fd int, arg *ioctlEvtchnUnbindArg) error {
	_, err := ioctl(fd, ioctlEvtchnUnbind, unsafe.Pointer(arg))
	return err
}

func ioctlEvtchnNotifyCall(fd int, arg *ioctlEvtchnNotifyArg) error {
	_, err := ioctl(fd, ioctlEvtchnNotify, unsafe.Pointer(arg))
	return err
}

func ioctlEvtchnResetCall(fd int) error {
	_, err := ioctl(fd, ioctlEvtchnReset, nil)
	return err
}

func ioctlEvtchnRestrictDomidCall(fd int, arg *ioctlEvtchnRestrictDomidArg) error {
	_, err := ioctl(fd, ioctlEvtchnRestrictDomid, unsafe.Pointer(arg))
	return err
}

// ---- memory helpers ----

// bytesOf views a pointer-free struct as its bytes (host = little-endian, as
// on every Xen x86 and Arm host), for copying mirrors in and out of buffers.
func bytesOf[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

// addrOf is the user-space address of b[0], to place in a nested pointer
// field of an ioctl or hypercall argument. b must be arena (mmap'd) memory:
// Go never moves it, and it is not garbage collected.
func addrOf(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// at views the bytes b[off:] as a *T. The caller checks bounds and alignment.
func at[T any](b []byte, off int) *T {
	var z T
	b = b[off : off+int(unsafe.Sizeof(z))] // bounds check without touching memory
	return (*T)(unsafe.Pointer(&b[0]))
}

// aligned reports whether b[off] is aligned to n bytes.
func aligned(b []byte, off int, n uintptr) bool {
	return uintptr(unsafe.Pointer(&b[off]))%n == 0
}
