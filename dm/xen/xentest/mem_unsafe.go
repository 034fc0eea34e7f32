package xentest

// Every use of package unsafe in xentest lives in files named *_unsafe.go.

import (
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// word32 views b[off:off+4] as a *uint32 for sync/atomic (off 4-aligned).
func word32(b []byte, off int) *uint32 {
	b = b[off : off+4]
	return (*uint32)(unsafe.Pointer(&b[0]))
}

// word64 views b[off:off+8] as a *uint64 for sync/atomic (off 8-aligned).
func word64(b []byte, off int) *uint64 {
	b = b[off : off+8]
	return (*uint64)(unsafe.Pointer(&b[0]))
}

// mapFixedShared maps length bytes of fd at offset over dst[0:] (which must
// be inside a mapping this package made), MAP_SHARED|MAP_FIXED.
func mapFixedShared(fd int, offset int64, dst []byte, length int, prot int) error {
	_, err := unix.MmapPtr(fd, offset, unsafe.Pointer(&dst[0]), uintptr(length), prot, unix.MAP_SHARED|unix.MAP_FIXED)
	return err
}

// eventBytes views a VMEvent as its 400 bytes.
func eventBytes(e *xen.VMEvent) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(e)), unsafe.Sizeof(*e))
}
