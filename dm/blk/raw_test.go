package blk

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

func makeImage(t *testing.T, dir string, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	r := rand.New(rand.NewPCG(1, uint64(size)))
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	p := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p, data
}

// directDir returns a directory on a filesystem with O_DIRECT, or skips.
func directDir(t *testing.T) string {
	t.Helper()
	for _, base := range []string{"/var/tmp", os.TempDir()} {
		d, err := os.MkdirTemp(base, "blk-direct-")
		if err != nil {
			continue
		}
		t.Cleanup(func() { os.RemoveAll(d) })
		p := filepath.Join(d, "probe")
		if err := os.WriteFile(p, make([]byte, 8192), 0o600); err != nil {
			continue
		}
		r, err := OpenRaw(p, RawOptions{Cache: CacheNone})
		if err == nil {
			r.Close()
			return d
		}
		if !errors.Is(err, ErrDirectIOUnsupported) {
			t.Fatalf("probe O_DIRECT in %s: %v", base, err)
		}
	}
	t.Skip("no filesystem with O_DIRECT support among /var/tmp and $TMPDIR: skipping the cache=none test")
	return ""
}

// exercise does a mix of aligned, unaligned and tail accesses against both
// the backend and a shadow copy.
func exercise(t *testing.T, b Backend, shadow []byte) {
	t.Helper()
	size := int64(len(shadow))
	if b.Size() != size {
		t.Fatalf("Size = %d, want %d", b.Size(), size)
	}
	check := func(off int64, n int) {
		t.Helper()
		got := make([]byte, n)
		m, err := b.ReadAt(got, off)
		want := shadow[min(off, size):min(off+int64(n), size)]
		if off+int64(n) > size {
			if err != io.EOF {
				t.Fatalf("read %d@%d past the end: err %v, want io.EOF", n, off, err)
			}
		} else if err != nil {
			t.Fatalf("read %d@%d: %v", n, off, err)
		}
		if m != len(want) || !bytes.Equal(got[:m], want) {
			t.Fatalf("read %d@%d: data mismatch (n=%d)", n, off, m)
		}
	}
	write := func(off int64, n int, seed byte) {
		t.Helper()
		p := bytes.Repeat([]byte{seed}, n)
		for i := range p {
			p[i] ^= byte(i * 7)
		}
		if _, err := b.WriteAt(p, off); err != nil {
			t.Fatalf("write %d@%d: %v", n, off, err)
		}
		copy(shadow[off:], p)
	}
	check(0, 512)
	check(512, 4096)
	check(4096, 3*4096)
	check(size-700, 700)
	check(size-512, 2048) // past the end: io.EOF with the bytes before it
	write(0, 4096, 1)
	write(512, 512, 2)
	write(4000, 200, 3)
	write(8192, 64<<10, 4)
	write(size-1000, 1000, 5) // crosses into the unaligned tail
	write(size-300, 300, 6)
	write(12345, 2*bounceSize+777, 7) // longer than a bounce buffer
	for _, c := range [][2]int64{{0, 8192}, {500, 600}, {size - 5000, 5000}, {0, size}, {12000, 2*bounceSize + 2000}} {
		check(c[0], int(c[1]))
	}
	if _, err := b.WriteAt(make([]byte, 10), size-5); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the end: %v, want ErrOutOfRange", err)
	}
	if err := b.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	// Concurrent unaligned writes to distinct sectors of the same 4 KiB
	// blocks must not lose each other (read-modify-write ordering).
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			p := bytes.Repeat([]byte{byte(0xa0 + i)}, 512)
			if _, err := b.WriteAt(p, int64(i)*512+65536); err != nil {
				t.Errorf("concurrent write: %v", err)
			}
		}(i)
	}
	wg.Wait()
	for i := 0; i < 8; i++ {
		copy(shadow[65536+i*512:], bytes.Repeat([]byte{byte(0xa0 + i)}, 512))
	}
	check(65536, 4096)
}

func TestRawWriteback(t *testing.T) {
	dir := t.TempDir()
	size := 3<<20 + 3*512 // not a multiple of 4 KiB
	p, data := makeImage(t, dir, size)
	r, err := OpenRaw(p, RawOptions{Cache: CacheWriteback})
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, r, data)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	onDisk, _ := os.ReadFile(p)
	if !bytes.Equal(onDisk, data) {
		t.Fatal("file contents differ from the shadow copy")
	}
	if _, err := r.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

func TestRawCacheNone(t *testing.T) {
	for _, mode := range []CacheMode{CacheNone, CacheDirectSync} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := directDir(t)
			size := 3<<20 + 3*512
			p, data := makeImage(t, dir, size)
			r, err := OpenRaw(p, RawOptions{Cache: mode})
			if err != nil {
				t.Fatal(err)
			}
			if r.tail == nil || r.limit != int64(size)&^4095 {
				t.Fatalf("tail handling not set up: limit %d", r.limit)
			}
			exercise(t, r, data)
			r.Close()
			onDisk, _ := os.ReadFile(p)
			if !bytes.Equal(onDisk, data) {
				t.Fatal("file contents differ from the shadow copy")
			}
			if fi, _ := os.Stat(p); fi.Size() != int64(size) {
				t.Fatalf("image size changed to %d", fi.Size())
			}
		})
	}
}

func TestRawCacheNoneOnTmpfs(t *testing.T) {
	// /dev/shm is tmpfs on Linux: O_DIRECT must be refused with a clear error.
	d, err := os.MkdirTemp("/dev/shm", "blk-")
	if err != nil {
		t.Skip("no /dev/shm")
	}
	defer os.RemoveAll(d)
	p, _ := makeImage(t, d, 8192)
	r, err := OpenRaw(p, RawOptions{Cache: CacheNone})
	if err == nil {
		r.Close()
		t.Skip("this kernel's tmpfs supports O_DIRECT")
	}
	if !errors.Is(err, ErrDirectIOUnsupported) {
		t.Fatalf("got %v, want ErrDirectIOUnsupported", err)
	}
	t.Logf("clear error: %v", err)
}

func TestRawOtherModesAndReadOnly(t *testing.T) {
	dir := t.TempDir()
	for _, mode := range []CacheMode{CacheWritethrough, CacheUnsafe} {
		p, data := makeImage(t, dir, 3<<20+512)
		r, err := OpenRaw(p, RawOptions{Cache: mode})
		if err != nil {
			t.Fatal(err)
		}
		exercise(t, r, data)
		r.Close()
	}
	p, data := makeImage(t, dir, 64<<10)
	d, err := ParseDrive("file=" + p + ",index=2,media=cdrom")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Open(d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.ReadOnly() {
		t.Fatal("CD-ROM not read-only")
	}
	if _, err := r.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to a CD-ROM: %v", err)
	}
	got := make([]byte, 2048)
	if _, err := r.ReadAt(got, 2048); err != nil || !bytes.Equal(got, data[2048:4096]) {
		t.Fatalf("read: %v", err)
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestRawOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenRaw(filepath.Join(dir, "missing"), RawOptions{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := OpenRaw(dir, RawOptions{ReadOnly: true}); err == nil {
		t.Fatal("opened a directory")
	}
	if _, err := Open(DriveSpec{File: "x", Format: "qcow2"}); !errors.Is(err, ErrUnsupportedFormat) {
		t.Fatalf("qcow2: %v", err)
	}
}

func TestMemFaults(t *testing.T) {
	m := NewMem("m", 1<<20)
	p := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := m.WriteAt(p, 8192); err != nil {
		t.Fatal(err)
	}
	m.FailReads(10000, 1)
	if _, err := m.ReadAt(make([]byte, 4096), 8192); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read over the fault: %v, want EIO", err)
	}
	if _, err := m.ReadAt(make([]byte, 512), 8192); err != nil {
		t.Fatalf("read beside the fault: %v", err)
	}
	m.FailWrites(0, 512)
	if _, err := m.WriteAt(p, 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write over the fault: %v", err)
	}
	if got := m.Bytes()[:4096]; !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatal("a failed write changed data")
	}
	m.ClearFaults()
	m.Inject(Fault{Op: OpRead | OpWrite, Off: 0, Len: 1 << 20, Times: 2, Err: syscall.ENOSPC})
	_, err1 := m.WriteAt(p, 0)
	_, err2 := m.ReadAt(p, 0)
	_, err3 := m.ReadAt(p, 0)
	if !errors.Is(err1, syscall.ENOSPC) || !errors.Is(err2, syscall.ENOSPC) || err3 != nil {
		t.Fatalf("Times=2 fault: %v %v %v", err1, err2, err3)
	}
	m.FailFlush()
	if err := m.Flush(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("flush: %v", err)
	}
	if s := m.Stats(); s.Failed != 5 || s.Flushes != 1 {
		t.Fatalf("stats %+v", s)
	}
	ro := NewMemFrom("ro", make([]byte, 4096), true)
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("read-only write: %v", err)
	}
	if _, err := m.ReadAt(make([]byte, 10), 1<<20-5); err != io.EOF {
		t.Fatalf("read past the end: %v", err)
	}
}
