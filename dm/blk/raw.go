package blk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

// RawOptions says how OpenRaw opens an image.
type RawOptions struct {
	Cache    CacheMode
	ReadOnly bool
}

// directAlign is the offset, length and memory alignment used for O_DIRECT
// I/O. 4 KiB satisfies devices and filesystems with 512-byte and 4 KiB
// logical blocks alike; guest requests that are not 4 KiB-aligned go through
// a read-modify-write of the covering blocks.
const directAlign = 4096

// bounceSize is the size of one O_DIRECT bounce buffer; longer requests are
// split into pieces of this size.
const bounceSize = 1 << 20

// Raw is a raw disk image (a regular file or a block device) opened with one
// of QEMU's cache modes. With cache=none/directsync all I/O goes through
// page-aligned bounce buffers so that O_DIRECT's alignment rules hold for any
// request. An image whose size is not a multiple of 4 KiB has its last
// partial block served through a second descriptor without O_DIRECT, so a
// read-modify-write never has to extend the image.
type Raw struct {
	name   string
	f      *os.File // O_DIRECT in direct modes
	tail   *os.File // direct modes with an unaligned size: the last partial block
	size   int64
	limit  int64 // direct modes: end of the 4 KiB-aligned part served by f
	ro     bool
	cache  CacheMode
	closed atomic.Bool

	// rmw orders O_DIRECT writes: unaligned writes (read-modify-write of
	// whole blocks) exclude each other and aligned writes.
	rmw  sync.RWMutex
	pool bouncePool
}

var _ Backend = (*Raw)(nil)

// Open opens the image a parsed -drive names: a raw image with the drive's
// cache mode, read-only for CD-ROMs. A drive without file= returns
// ErrNoMedium (an empty CD-ROM drive).
func Open(d DriveSpec) (*Raw, error) {
	if d.Format != "raw" && d.Format != "" {
		return nil, fmt.Errorf("blk %s: format=%s: %w (only raw)", d.File, d.Format, ErrUnsupportedFormat)
	}
	if d.File == "" {
		return nil, ErrNoMedium
	}
	return OpenRaw(d.File, RawOptions{Cache: d.Cache, ReadOnly: d.ReadOnly || d.Media == MediaCDROM})
}

// OpenRaw opens the file or block device at path.
func OpenRaw(path string, o RawOptions) (*Raw, error) {
	if int(o.Cache) >= len(cacheNames) {
		return nil, fmt.Errorf("blk %s: invalid cache mode %d", path, o.Cache)
	}
	base := os.O_RDWR
	if o.ReadOnly {
		base = os.O_RDONLY
	}
	if o.Cache.Sync() {
		base |= syscall.O_DSYNC
	}
	flags := base
	if o.Cache.Direct() {
		flags |= syscall.O_DIRECT
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		if o.Cache.Direct() && errors.Is(err, syscall.EINVAL) {
			return nil, fmt.Errorf("blk %s: cache=%s needs O_DIRECT, which the filesystem holding the image does not support (use cache=writeback): %w",
				path, o.Cache, ErrDirectIOUnsupported)
		}
		return nil, fmt.Errorf("blk: open %s: %w", path, err)
	}
	r := &Raw{name: path, f: f, ro: o.ReadOnly, cache: o.Cache}
	if err := r.init(base); err != nil {
		r.closeFiles()
		r.pool.free()
		return nil, err
	}
	return r, nil
}

func (r *Raw) init(base int) error {
	st, err := r.f.Stat()
	if err != nil {
		return fmt.Errorf("blk: stat %s: %w", r.name, err)
	}
	if m := st.Mode(); !m.IsRegular() && m&os.ModeDevice == 0 {
		return fmt.Errorf("blk %s: not a regular file or block device (%v)", r.name, m.Type())
	}
	// Seek works for block devices too, whose Stat size is 0.
	size, err := r.f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("blk: size of %s: %w", r.name, err)
	}
	r.size, r.limit = size, size
	if !r.cache.Direct() {
		return nil
	}
	r.limit = size &^ (directAlign - 1)
	if r.limit != size {
		t, err := os.OpenFile(r.name, base, 0)
		if err != nil {
			return fmt.Errorf("blk: open %s for its unaligned tail: %w", r.name, err)
		}
		r.tail = t
	}
	// Some filesystems accept O_DIRECT at open and refuse the I/O (EINVAL):
	// probe with one aligned read.
	if r.limit > 0 {
		b, err := r.pool.get()
		if err != nil {
			return err
		}
		_, err = r.f.ReadAt(b[:directAlign], 0)
		r.pool.put(b)
		if errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("blk %s: cache=%s needs O_DIRECT, which the filesystem holding the image refuses (use cache=writeback): %w",
				r.name, r.cache, ErrDirectIOUnsupported)
		}
		if err != nil {
			return fmt.Errorf("blk: probe read of %s: %w", r.name, err)
		}
	}
	return nil
}

func (r *Raw) Name() string     { return r.name }
func (r *Raw) Size() int64      { return r.size }
func (r *Raw) ReadOnly() bool   { return r.ro }
func (r *Raw) Cache() CacheMode { return r.cache }
func (r *Raw) String() string   { return fmt.Sprintf("raw:%s(cache=%s)", r.name, r.cache) }
func (r *Raw) isClosed() bool   { return r.closed.Load() }
func (r *Raw) errf(op string, off int64, n int, err error) error {
	return fmt.Errorf("blk %s: %s %d bytes at %d: %w", r.name, op, n, off, err)
}

// ReadAt implements Backend.
func (r *Raw) ReadAt(p []byte, off int64) (int, error) {
	if r.isClosed() {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, r.errf("read", off, len(p), ErrOutOfRange)
	}
	if off >= r.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > r.size-off {
		p, eof = p[:r.size-off], io.EOF
	}
	var n int
	var err error
	if r.cache.Direct() {
		n, err = r.directRead(p, off)
	} else {
		n, err = r.f.ReadAt(p, off)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			// The image shrank underneath us: report it as an I/O error.
			err = io.ErrUnexpectedEOF
		}
		return n, r.errf("read", off, len(p), err)
	}
	return n, eof
}

// WriteAt implements Backend.
func (r *Raw) WriteAt(p []byte, off int64) (int, error) {
	if r.isClosed() {
		return 0, ErrClosed
	}
	if r.ro {
		return 0, fmt.Errorf("blk %s: %w", r.name, ErrReadOnly)
	}
	if err := checkRange(r.name, off, len(p), r.size); err != nil {
		return 0, err
	}
	var n int
	var err error
	if r.cache.Direct() {
		n, err = r.directWrite(p, off)
	} else {
		n, err = r.f.WriteAt(p, off)
	}
	if err != nil {
		return n, r.errf("write", off, len(p), err)
	}
	return n, nil
}

// Flush implements Backend: fdatasync, except with cache=unsafe.
func (r *Raw) Flush() error {
	if r.isClosed() {
		return ErrClosed
	}
	if r.ro || r.cache == CacheUnsafe {
		return nil
	}
	// fdatasync is per inode, so this also covers writes made through r.tail.
	if err := fdatasync(r.f); err != nil {
		return fmt.Errorf("blk %s: fdatasync: %w", r.name, err)
	}
	return nil
}

func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// Close implements Backend. It does not flush: callers flush first when they
// want durability (QEMU's blk_unref does not either).
func (r *Raw) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	err := r.closeFiles()
	r.pool.free()
	return err
}

func (r *Raw) closeFiles() error {
	err := r.f.Close()
	if r.tail != nil {
		err = errors.Join(err, r.tail.Close())
	}
	return err
}

// directRead reads p at off (within the image) through bounce buffers.
func (r *Raw) directRead(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	done := 0
	if off < r.limit {
		b, err := r.pool.get()
		if err != nil {
			return 0, err
		}
		defer r.pool.put(b)
		for pos := off; pos < min(end, r.limit); {
			cs := pos &^ (directAlign - 1)
			ce := min(alignUp(min(end, r.limit)), cs+bounceSize)
			if _, err := r.f.ReadAt(b[:ce-cs], cs); err != nil {
				return done, err
			}
			n := copy(p[pos-off:], b[pos-cs:ce-cs])
			pos += int64(n)
			done += n
		}
	}
	if end > r.limit {
		start := max(off, r.limit)
		n, err := r.tail.ReadAt(p[start-off:], start)
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// directWrite writes p at off (within the image) through bounce buffers,
// reading the first and last block back first when p does not cover them.
func (r *Raw) directWrite(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	done := 0
	if off < r.limit {
		dend := min(end, r.limit)
		aligned := off%directAlign == 0 && dend%directAlign == 0
		if aligned {
			r.rmw.RLock()
			defer r.rmw.RUnlock()
		} else {
			r.rmw.Lock()
			defer r.rmw.Unlock()
		}
		b, err := r.pool.get()
		if err != nil {
			return 0, err
		}
		defer r.pool.put(b)
		for pos := off; pos < dend; {
			cs := pos &^ (directAlign - 1)
			ce := min(alignUp(dend), cs+bounceSize)
			// Partial first or last block: fetch the bytes we keep.
			head, tail := pos > cs, min(dend, ce) < ce
			if head {
				if _, err := r.f.ReadAt(b[:directAlign], cs); err != nil {
					return done, err
				}
			}
			if tail && !(head && ce-cs == directAlign) {
				if _, err := r.f.ReadAt(b[ce-cs-directAlign:ce-cs], ce-directAlign); err != nil {
					return done, err
				}
			}
			n := copy(b[pos-cs:ce-cs], p[pos-off:dend-off])
			if _, err := r.f.WriteAt(b[:ce-cs], cs); err != nil {
				return done, err
			}
			pos += int64(n)
			done += n
		}
	}
	if end > r.limit {
		start := max(off, r.limit)
		n, err := r.tail.WriteAt(p[start-off:], start)
		done += n
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

func alignUp(x int64) int64 { return (x + directAlign - 1) &^ (directAlign - 1) }

// bouncePool hands out page-aligned bounceSize buffers from anonymous
// mappings (the Go heap gives no alignment guarantee). Buffers are reused;
// free unmaps the idle ones when the backend closes.
type bouncePool struct {
	mu   sync.Mutex
	idle [][]byte
}

func (bp *bouncePool) get() ([]byte, error) {
	bp.mu.Lock()
	if n := len(bp.idle); n > 0 {
		b := bp.idle[n-1]
		bp.idle = bp.idle[:n-1]
		bp.mu.Unlock()
		return b, nil
	}
	bp.mu.Unlock()
	b, err := syscall.Mmap(-1, 0, bounceSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, fmt.Errorf("blk: mmap bounce buffer: %w", err)
	}
	return b, nil
}

func (bp *bouncePool) put(b []byte) {
	bp.mu.Lock()
	bp.idle = append(bp.idle, b)
	bp.mu.Unlock()
}

func (bp *bouncePool) free() {
	bp.mu.Lock()
	defer bp.mu.Unlock()
	for _, b := range bp.idle {
		_ = syscall.Munmap(b)
	}
	bp.idle = nil
}
