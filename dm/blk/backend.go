// Package blk holds the block backends behind the emulated disks: the Backend
// interface the IDE controller (dm/dev/ide) performs its transfers on, the
// raw-image backend opened from a QEMU-style -drive specification (raw.go,
// drive.go), and an in-memory backend with fault injection for tests (mem.go).
//
// The page↔sector tracker lives here too (tracker.go, trackersvc.go); the IDE
// controller feeds it through ide.Observer (ide.TrackerObserver).
package blk

import (
	"errors"
	"fmt"
)

// Backend is a fixed-size disk image. It mirrors the parts of QEMU's
// BlockBackend the IDE emulation uses (blk_pread/blk_pwrite/blk_flush/
// blk_getlength/blk_is_read_only).
//
// ReadAt and WriteAt follow io.ReaderAt / io.WriterAt: they transfer all of p
// or return an error. A read reaching past Size returns the bytes before the
// end and io.EOF; a write reaching past Size fails with ErrOutOfRange (images
// never grow). Implementations are safe for concurrent use: the IDE runs the
// I/O of each channel on its own goroutine, and the tracker may read sectors
// while the guest runs.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Flush makes completed writes durable (FLUSH CACHE). Its cost depends on
	// the cache mode; with cache=unsafe it does nothing.
	Flush() error
	// Size is the image size in bytes, fixed when the backend was opened.
	Size() int64
	// ReadOnly reports whether WriteAt always fails with ErrReadOnly.
	ReadOnly() bool
	Close() error
	// Name identifies the backend in logs (the file path for raw images).
	Name() string
}

var (
	// ErrReadOnly is returned by WriteAt on a read-only backend.
	ErrReadOnly = errors.New("blk: backend is read-only")
	// ErrOutOfRange is returned by an access outside [0, Size).
	ErrOutOfRange = errors.New("blk: access beyond the end of the image")
	// ErrClosed is returned by every operation after Close.
	ErrClosed = errors.New("blk: backend is closed")
	// ErrNoMedium is returned by Open for a drive without file= (an empty
	// CD-ROM tray): there is nothing to open, and that is not a failure of the
	// caller's configuration.
	ErrNoMedium = errors.New("blk: drive has no medium")
	// ErrUnsupportedFormat is wrapped by ParseDrive and Open for any image
	// format other than raw.
	ErrUnsupportedFormat = errors.New("unsupported image format")
	// ErrDirectIOUnsupported is wrapped by OpenRaw when cache=none or
	// cache=directsync is asked for on a filesystem without O_DIRECT (tmpfs).
	ErrDirectIOUnsupported = errors.New("O_DIRECT is not supported here")
)

// checkRange validates an access of n bytes at off against size.
func checkRange(name string, off int64, n int, size int64) error {
	if off < 0 || int64(n) > size || off > size-int64(n) {
		return fmt.Errorf("blk %s: %d bytes at offset %d (size %d): %w", name, n, off, size, ErrOutOfRange)
	}
	return nil
}
