// Package chardev implements the host side of the guest's serial ports: the
// -serial backends QEMU offers that make sense for a Xen device model
// (pty, none, null, stdio, file:PATH, a host tty /dev/…).
//
// A Backend is the UART's io.Writer and feeds received bytes to the UART
// through the callback given to Start. Writes never block the caller (the
// ioreq loop): bytes are queued in a bounded buffer drained by a writer
// goroutine, and dropped (and counted) when it is full, as QEMU drops
// output to a pty nobody reads.
package chardev

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Backend is a host character device behind a serial port.
type Backend interface {
	// Write queues guest output; it never blocks and always reports
	// len(p) (bytes that do not fit are dropped).
	io.Writer
	// Start begins delivering host input to input (from a reader
	// goroutine). Backends without input ignore it. Call at most once.
	Start(input func([]byte))
	// Filename is what QMP query-chardev reports, e.g. "pty:/dev/pts/3".
	// libxl writes the part after "pty:" to xenstore serial/<n>/tty.
	Filename() string
	// Close stops the goroutines and closes the host file.
	Close() error
}

// Options tune a backend.
type Options struct {
	// Log receives backend diagnostics (nil: slog.Default()).
	Log *slog.Logger
	// Label names the port in logs ("serial0").
	Label string
	// OutputLimit caps the bytes written to file and stdio backends in
	// total (XSA-180: libxl sets XEN_QEMU_CONSOLE_LIMIT so a guest cannot
	// fill dom0's disk through the DM log). 0 means no limit.
	OutputLimit int64
	// BufferSize is the output queue size (default 64 KiB).
	BufferSize int
	// Stdin, Stdout override os.Stdin/os.Stdout for the stdio backend.
	Stdin  *os.File
	Stdout *os.File
}

// ConsoleLimitFromEnv returns XEN_QEMU_CONSOLE_LIMIT, or 0.
func ConsoleLimitFromEnv() int64 {
	n, err := strconv.ParseInt(os.Getenv("XEN_QEMU_CONSOLE_LIMIT"), 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// IsNone reports whether spec means "no serial port at this index".
func IsNone(spec string) bool { return spec == "none" }

// Open creates the backend for a -serial spec. "none" has no backend (the
// port does not exist): callers check IsNone first.
func Open(spec string, o Options) (Backend, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.BufferSize <= 0 {
		o.BufferSize = 64 << 10
	}
	o.Log = o.Log.With("chardev", o.Label)
	switch {
	case spec == "none":
		return nil, errors.New("chardev: -serial none has no backend")
	case spec == "null":
		return Null(), nil
	case spec == "pty":
		return openPTY(o)
	case spec == "stdio":
		in, out := o.Stdin, o.Stdout
		if in == nil {
			in = os.Stdin
		}
		if out == nil {
			out = os.Stdout
		}
		if !isTTY(in) {
			// Under libxl stdin is /dev/null and stdout the DM log:
			// guest output would fill the log, so behave as null.
			o.Log.Info("chardev: stdio is not a terminal; serial output is discarded")
			return &nullBackend{name: "stdio"}, nil
		}
		return newStream(o, "stdio", out, in, nil, o.OutputLimit), nil
	case strings.HasPrefix(spec, "file:"):
		path := strings.TrimPrefix(spec, "file:")
		if path == "" {
			return nil, errors.New("chardev: file: needs a path")
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
		if err != nil {
			return nil, fmt.Errorf("chardev: %w", err)
		}
		return newStream(o, "file:"+path, f, nil, f, o.OutputLimit), nil
	case strings.HasPrefix(spec, "/dev/"):
		return openTTY(spec, o)
	}
	kind, _, _ := strings.Cut(spec, ":")
	return nil, fmt.Errorf("chardev: serial backend %q is not supported (use pty, null, none, stdio, file:PATH or /dev/TTY)", kind)
}

// Null returns a backend that discards output and never has input.
func Null() Backend { return &nullBackend{name: "null"} }

type nullBackend struct{ name string }

func (n *nullBackend) Write(p []byte) (int, error) { return len(p), nil }
func (n *nullBackend) Start(func([]byte))          {}
func (n *nullBackend) Filename() string            { return n.name }
func (n *nullBackend) Close() error                { return nil }

// stream is a backend over a host file: a bounded output queue drained by
// a writer goroutine and, when in != nil, a reader goroutine.
type stream struct {
	log  *slog.Logger
	name string
	out  io.Writer
	in   *os.File
	file *os.File // closed on Close (nil for stdio)

	mu      sync.Mutex
	cond    *sync.Cond
	buf     []byte
	max     int
	limit   int64 // remaining output allowance; <0 unlimited
	dropped uint64
	closed  bool
	started bool

	wdone chan struct{}
	rdone chan struct{}
	// eio is how long the reader waits after EIO (pty without a slave).
	eio time.Duration
}

func newStream(o Options, name string, out io.Writer, in *os.File, file *os.File, limit int64) *stream {
	s := &stream{log: o.Log, name: name, out: out, in: in, file: file, max: o.BufferSize,
		limit: -1, wdone: make(chan struct{}), eio: 250 * time.Millisecond}
	if limit > 0 {
		s.limit = limit
	}
	s.cond = sync.NewCond(&s.mu)
	go s.writer()
	return s
}

func (s *stream) Filename() string { return s.name }

func (s *stream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return len(p), nil
	}
	q := p
	if s.limit >= 0 {
		if int64(len(q)) > s.limit {
			if s.limit > 0 || s.dropped == 0 {
				s.log.Warn("chardev: console output limit reached; further guest output is dropped")
			}
			q = q[:s.limit]
		}
		s.limit -= int64(len(q))
	}
	room := s.max - len(s.buf)
	if len(q) > room {
		if s.dropped == 0 {
			s.log.Info("chardev: output queue full (nobody reading?); dropping guest output")
		}
		s.dropped += uint64(len(q) - room)
		q = q[:room]
	}
	if len(q) > 0 {
		s.buf = append(s.buf, q...)
		s.cond.Signal()
	}
	return len(p), nil
}

// Dropped reports how many output bytes were dropped because the queue was
// full.
func (s *stream) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

func (s *stream) writer() {
	defer close(s.wdone)
	var chunk []byte
	for {
		s.mu.Lock()
		for len(s.buf) == 0 && !s.closed {
			s.cond.Wait()
		}
		if len(s.buf) == 0 && s.closed {
			s.mu.Unlock()
			return
		}
		chunk = append(chunk[:0], s.buf...)
		s.buf = s.buf[:0]
		s.mu.Unlock()
		if _, err := s.out.Write(chunk); err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return
			}
			// A pty master whose slave is closed can fail writes with
			// EIO; keep going (output is dropped until someone
			// reconnects), but don't spin.
			time.Sleep(s.eio)
		}
	}
}

func (s *stream) Start(input func([]byte)) {
	s.mu.Lock()
	if s.started || s.in == nil || s.closed {
		s.mu.Unlock()
		return
	}
	s.started = true
	s.rdone = make(chan struct{})
	s.mu.Unlock()
	go s.reader(input)
}

func (s *stream) reader(input func([]byte)) {
	defer close(s.rdone)
	buf := make([]byte, 4096)
	for {
		n, err := s.in.Read(buf)
		if n > 0 {
			p := make([]byte, n)
			copy(p, buf[:n])
			input(p)
		}
		if err == nil {
			continue
		}
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed || errors.Is(err, os.ErrClosed) {
			return
		}
		if errors.Is(err, io.EOF) && !s.reconnects() {
			return
		}
		// pty: EIO while no slave is open (xl console not attached).
		time.Sleep(s.eio)
	}
}

// reconnects says whether EOF/EIO is transient (ptys and ttys).
func (s *stream) reconnects() bool {
	return strings.HasPrefix(s.name, "pty:") || strings.HasPrefix(s.name, "/dev/")
}

func (s *stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cond.Broadcast()
	rdone := s.rdone
	s.mu.Unlock()
	// Let the writer flush what is queued, but never wait forever: a pty
	// nobody reads blocks it until the fd is closed.
	select {
	case <-s.wdone:
	case <-time.After(500 * time.Millisecond):
	}
	var err error
	if s.file != nil {
		err = s.file.Close()
	}
	select {
	case <-s.wdone:
	case <-time.After(time.Second):
	}
	if rdone != nil {
		select {
		case <-rdone:
		case <-time.After(time.Second):
		}
	}
	return err
}
