package blk

// The tracker service: the device model serves its Tracker to the migration
// transport (another process, `xen-dm-go migrate-send`) on a unix socket named
// after the domain. The protocol is a request/response exchange of
// little-endian binary frames (docs/tracker.md):
//
//	request:  op u32 | count u32 | count × pfn u64          (op 1, LOOKUP; op 3, LOOKUP_RAW)
//	          op u32 | 0 u32                                (op 2, STATS)
//	response: status u32 | count u32 | count × entry        (LOOKUP*, status 0)
//	          entry = found u8 | disk u8 | gen u16 | 0 u32 | sector u64 | hash u64
//	          status u32 | len u32 | len bytes of JSON      (STATS, or an error
//	                                                        with status 1 and a message)
//
// LOOKUP answers through Tracker.LookupValid: every entry it returns was
// checked against the guest page (entries the guest's CPU made stale are
// dropped and answered not found). LOOKUP_RAW answers the table as it is,
// without that check or any change (Tracker.Lookup), for the independent
// check (`xen-dm-go tracker-check`) to measure how many claims were stale.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/u-root/uio/uio"
)

const (
	opLookup    = 1
	opStats     = 2
	opLookupRaw = 3

	statusOK    = 0
	statusError = 1

	// MaxLookup is the most pfns one LOOKUP may carry.
	MaxLookup = 1 << 16

	entryWire = 24
)

// TrackerSocketPath is where the device model of domid serves its tracker.
func TrackerSocketPath(runDir string, domid uint32) string {
	return filepath.Join(runDir, fmt.Sprintf("xen-dm-go-tracker-%d.sock", domid))
}

// TrackerServer serves a Tracker on a unix socket.
type TrackerServer struct {
	t     *Tracker
	ln    net.Listener
	path  string
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// ServeTracker listens on path (a stale socket there is removed) and serves
// t until Close.
func ServeTracker(path string, t *Tracker) (*TrackerServer, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("tracker service: remove stale %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("tracker service: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("tracker service: chmod %s: %w", path, err)
	}
	s := &TrackerServer{t: t, ln: ln, path: path, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// Path is the socket path.
func (s *TrackerServer) Path() string { return s.path }

// Close stops serving, closes every connection and removes the socket.
func (s *TrackerServer) Close() error {
	err := s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	os.Remove(s.path)
	return err
}

func (s *TrackerServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.serve(c); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				slog.Warn("tracker service: client dropped", "err", err)
			}
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

func (s *TrackerServer) serve(c net.Conn) error {
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriterSize(c, 64<<10)
	var hdr [8]byte
	var pfns []uint64
	var refs []Ref
	var found []bool
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		l := uio.NewLittleEndianBuffer(hdr[:])
		op, n := l.Read32(), l.Read32()
		switch {
		case (op == opLookup || op == opLookupRaw) && n <= MaxLookup:
			body := make([]byte, 8*int(n))
			if _, err := io.ReadFull(r, body); err != nil {
				return fmt.Errorf("lookup of %d pfns: %w", n, err)
			}
			pfns = pfns[:0]
			bl := uio.NewLittleEndianBuffer(body)
			for i := uint32(0); i < n; i++ {
				pfns = append(pfns, bl.Read64())
			}
			if len(refs) < len(pfns) {
				refs, found = make([]Ref, len(pfns)), make([]bool, len(pfns))
			}
			if op == opLookupRaw {
				s.t.Lookup(pfns, refs, found)
			} else {
				s.t.LookupValid(pfns, refs, found)
			}
			out := make([]byte, 8+entryWire*len(pfns))
			binary.LittleEndian.PutUint32(out[0:], statusOK)
			binary.LittleEndian.PutUint32(out[4:], n)
			for i := range pfns {
				e := out[8+entryWire*i:]
				if !found[i] {
					continue
				}
				e[0] = 1
				e[1] = refs[i].Disk
				binary.LittleEndian.PutUint16(e[2:], refs[i].Gen)
				binary.LittleEndian.PutUint64(e[8:], refs[i].Sector)
				binary.LittleEndian.PutUint64(e[16:], refs[i].Hash)
			}
			w.Write(out)
		case op == opStats && n == 0:
			js, _ := json.Marshal(s.t.Stats())
			writeFrame(w, statusOK, js)
		default:
			writeFrame(w, statusError, []byte(fmt.Sprintf("bad request: op %d count %d", op, n)))
			w.Flush()
			return fmt.Errorf("bad request op %d count %d", op, n)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
}

func writeFrame(w io.Writer, status uint32, body []byte) {
	var h [8]byte
	binary.LittleEndian.PutUint32(h[0:], status)
	binary.LittleEndian.PutUint32(h[4:], uint32(len(body)))
	w.Write(h[:])
	w.Write(body)
}

// TrackerClient asks a device model's tracker service. It is not safe for
// concurrent use; open one per goroutine.
type TrackerClient struct {
	c    net.Conn
	r    *bufio.Reader
	path string
	buf  []byte
	// Timeout bounds each call (request and whole reply): a device model
	// that stops answering fails the caller's call instead of hanging it.
	// DialTracker sets DefaultTrackerTimeout; zero means no deadline.
	Timeout time.Duration
}

// DefaultTrackerTimeout is a TrackerClient's per-call deadline. A lookup of
// MaxLookup pfns takes well under a millisecond; the margin is for a device
// model busy under a software-emulated CPU.
const DefaultTrackerTimeout = 30 * time.Second

// arm sets the connection's deadline for one call.
func (tc *TrackerClient) arm() error {
	var d time.Time
	if tc.Timeout > 0 {
		d = time.Now().Add(tc.Timeout)
	}
	if err := tc.c.SetDeadline(d); err != nil {
		return fmt.Errorf("tracker client %s: %w", tc.path, err)
	}
	return nil
}

// DialTracker connects to the tracker service at path.
func DialTracker(path string) (*TrackerClient, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("tracker client: %w", err)
	}
	return &TrackerClient{c: c, r: bufio.NewReaderSize(c, 64<<10), path: path, Timeout: DefaultTrackerTimeout}, nil
}

// Close closes the connection.
func (tc *TrackerClient) Close() error { return tc.c.Close() }

// Lookup asks for pfns (at most MaxLookup) and fills out/ok as
// Tracker.LookupValid: every entry answered was checked against the guest
// page by the device model.
func (tc *TrackerClient) Lookup(pfns []uint64, out []Ref, ok []bool) (int, error) {
	return tc.lookup(opLookup, pfns, out, ok)
}

// LookupRaw is Lookup without the check (Tracker.Lookup): the table as it is,
// stale claims included. It changes nothing in the tracker.
func (tc *TrackerClient) LookupRaw(pfns []uint64, out []Ref, ok []bool) (int, error) {
	return tc.lookup(opLookupRaw, pfns, out, ok)
}

func (tc *TrackerClient) lookup(op uint32, pfns []uint64, out []Ref, ok []bool) (int, error) {
	if len(pfns) > MaxLookup {
		return 0, fmt.Errorf("tracker client %s: %d pfns in one lookup (max %d)", tc.path, len(pfns), MaxLookup)
	}
	if len(out) < len(pfns) || len(ok) < len(pfns) {
		return 0, fmt.Errorf("tracker client %s: result slices shorter than %d pfns", tc.path, len(pfns))
	}
	need := 8 + 8*len(pfns)
	if cap(tc.buf) < need {
		tc.buf = make([]byte, need)
	}
	if err := tc.arm(); err != nil {
		return 0, err
	}
	req := tc.buf[:need]
	binary.LittleEndian.PutUint32(req[0:], op)
	binary.LittleEndian.PutUint32(req[4:], uint32(len(pfns)))
	for i, p := range pfns {
		binary.LittleEndian.PutUint64(req[8+8*i:], p)
	}
	if _, err := tc.c.Write(req); err != nil {
		return 0, fmt.Errorf("tracker client %s: %w", tc.path, err)
	}
	var hdr [8]byte
	if _, err := io.ReadFull(tc.r, hdr[:]); err != nil {
		return 0, fmt.Errorf("tracker client %s: %w", tc.path, err)
	}
	status, n := binary.LittleEndian.Uint32(hdr[0:]), binary.LittleEndian.Uint32(hdr[4:])
	if status != statusOK {
		msg := make([]byte, min(n, 4096))
		io.ReadFull(tc.r, msg)
		return 0, fmt.Errorf("tracker client %s: service error: %s", tc.path, msg)
	}
	if int(n) != len(pfns) {
		return 0, fmt.Errorf("tracker client %s: asked %d pfns, got %d", tc.path, len(pfns), n)
	}
	hits := 0
	var e [entryWire]byte
	for i := range pfns {
		if _, err := io.ReadFull(tc.r, e[:]); err != nil {
			return 0, fmt.Errorf("tracker client %s: %w", tc.path, err)
		}
		ok[i] = e[0] == 1
		if ok[i] {
			hits++
			out[i] = Ref{
				Disk:   e[1],
				Gen:    binary.LittleEndian.Uint16(e[2:]),
				Sector: binary.LittleEndian.Uint64(e[8:]),
				Hash:   binary.LittleEndian.Uint64(e[16:]),
			}
		}
	}
	return hits, nil
}

// Stats asks for the tracker's counters.
func (tc *TrackerClient) Stats() (TrackerStats, error) {
	var st TrackerStats
	if err := tc.arm(); err != nil {
		return st, err
	}
	var req [8]byte
	binary.LittleEndian.PutUint32(req[0:], opStats)
	if _, err := tc.c.Write(req[:]); err != nil {
		return st, fmt.Errorf("tracker client %s: %w", tc.path, err)
	}
	var hdr [8]byte
	if _, err := io.ReadFull(tc.r, hdr[:]); err != nil {
		return st, fmt.Errorf("tracker client %s: %w", tc.path, err)
	}
	n := binary.LittleEndian.Uint32(hdr[4:])
	if n > 1<<20 {
		return st, fmt.Errorf("tracker client %s: stats reply of %d bytes", tc.path, n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(tc.r, body); err != nil {
		return st, fmt.Errorf("tracker client %s: %w", tc.path, err)
	}
	if binary.LittleEndian.Uint32(hdr[0:]) != statusOK {
		return st, fmt.Errorf("tracker client %s: service error: %s", tc.path, body)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("tracker client %s: stats: %w", tc.path, err)
	}
	return st, nil
}
