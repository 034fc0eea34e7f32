package blk

import (
	"fmt"
	"io"
	"sync"
	"syscall"
)

// Op selects which accesses a Fault applies to.
type Op uint8

const (
	OpRead Op = 1 << iota
	OpWrite
	OpFlush
)

// Fault makes accesses overlapping [Off, Off+Len) fail with Err (EIO when
// nil). Len 0 means every access. Times > 0 makes the fault disappear after
// failing that many accesses; 0 means forever.
type Fault struct {
	Op    Op
	Off   int64
	Len   int64
	Err   error
	Times int
}

// MemStats counts the accesses a Mem served (failed ones included).
type MemStats struct {
	Reads, Writes, Flushes int64
	Failed                 int64
}

// Mem is an in-memory Backend for tests, with fault injection. A failed read
// or write transfers nothing.
type Mem struct {
	mu     sync.RWMutex
	name   string
	data   []byte
	ro     bool
	closed bool
	faults []Fault
	stats  MemStats
}

var _ Backend = (*Mem)(nil)

// NewMem returns a zero-filled writable image of size bytes.
func NewMem(name string, size int64) *Mem {
	return &Mem{name: name, data: make([]byte, size)}
}

// NewMemFrom returns an image holding data (not copied).
func NewMemFrom(name string, data []byte, readOnly bool) *Mem {
	return &Mem{name: name, data: data, ro: readOnly}
}

// Inject adds a fault.
func (m *Mem) Inject(f Fault) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.faults = append(m.faults, f)
}

// FailReads makes every read overlapping [off, off+n) fail with EIO.
func (m *Mem) FailReads(off, n int64) { m.Inject(Fault{Op: OpRead, Off: off, Len: n}) }

// FailWrites makes every write overlapping [off, off+n) fail with EIO.
func (m *Mem) FailWrites(off, n int64) { m.Inject(Fault{Op: OpWrite, Off: off, Len: n}) }

// FailFlush makes every Flush fail with EIO.
func (m *Mem) FailFlush() { m.Inject(Fault{Op: OpFlush}) }

// ClearFaults removes every fault.
func (m *Mem) ClearFaults() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.faults = nil
}

// Bytes returns a copy of the image.
func (m *Mem) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

// Stats returns the access counters.
func (m *Mem) Stats() MemStats {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.stats
}

// fault returns the injected error for an access, consuming one use. Called
// with m.mu held for writing.
func (m *Mem) fault(op Op, off int64, n int) error {
	for i := range m.faults {
		f := &m.faults[i]
		if f.Op&op == 0 {
			continue
		}
		if f.Len != 0 && op != OpFlush && (off+int64(n) <= f.Off || off >= f.Off+f.Len) {
			continue
		}
		err := f.Err
		if err == nil {
			err = syscall.EIO
		}
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				m.faults = append(m.faults[:i], m.faults[i+1:]...)
			}
		}
		m.stats.Failed++
		return fmt.Errorf("blk %s: injected fault at offset %d (+%d): %w", m.name, off, n, err)
	}
	return nil
}

func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	// A write lock: fault injection and the counters change state.
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Reads++
	if m.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("blk %s: read at %d: %w", m.name, off, ErrOutOfRange)
	}
	if err := m.fault(OpRead, off, len(p)); err != nil {
		return 0, err
	}
	if off >= int64(len(m.data)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Writes++
	if m.closed {
		return 0, ErrClosed
	}
	if m.ro {
		return 0, fmt.Errorf("blk %s: %w", m.name, ErrReadOnly)
	}
	if err := checkRange(m.name, off, len(p), int64(len(m.data))); err != nil {
		return 0, err
	}
	if err := m.fault(OpWrite, off, len(p)); err != nil {
		return 0, err
	}
	return copy(m.data[off:], p), nil
}

func (m *Mem) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stats.Flushes++
	if m.closed {
		return ErrClosed
	}
	return m.fault(OpFlush, 0, 0)
}

func (m *Mem) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data))
}

func (m *Mem) ReadOnly() bool { return m.ro }
func (m *Mem) Name() string   { return m.name }

func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
