// Package qmp is the QMP (QEMU Machine Protocol) server libxl talks to
// (shared/reference/xen-dm-interface.md §2; QEMU monitor/qmp.c,
// qapi/qmp-dispatch.c).
//
// A Server serves one monitor chardev: it accepts one client at a time on
// its listener (later clients wait in the backlog, as with QEMU), sends the
// greeting, requires qmp_capabilities, then runs commands from its table.
// Every message is one JSON object on one line ending in "\r\n"; ids are
// echoed verbatim, whatever JSON value they are. File descriptors arriving
// with SCM_RIGHTS (libxl sends the add-fd fd with the first byte of the
// command) are attached to the command being received.
//
// The command table is a map from name to Handler; Handle adds or replaces
// one. RegisterStandard installs the commands libxl 4.17 sends.
package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// MaxMessage caps one incoming message, as libxl caps its receive buffer.
const MaxMessage = 1 << 20

// maxFDsPerRead bounds the SCM_RIGHTS fds accepted in one recvmsg.
const maxFDsPerRead = 16

// writeTimeout bounds a reply or event write to a stuck client.
const writeTimeout = 10 * time.Second

// Request is one command as a handler sees it.
type Request struct {
	Command string
	// Args is the raw "arguments" object, nil when absent. Use Decode.
	Args json.RawMessage
	// FDs are the file descriptors received with this command. Handlers
	// that keep one call TakeFDs; the rest are closed after the handler.
	FDs []*os.File
	// Server is the server running the command.
	Server *Server

	conn *conn
}

// TakeFDs hands the received fds to the caller, who must close them.
func (r *Request) TakeFDs() []*os.File {
	fds := r.FDs
	r.FDs = nil
	return fds
}

// Handler runs a command and returns its "return" value (nil means {}).
// A returned error becomes the "error" reply: an *Error keeps its class,
// anything else is a GenericError. Handlers run on the connection's
// goroutine, one at a time per server; they must not block on guest I/O.
type Handler func(ctx context.Context, r *Request) (any, error)

// Options configure a Server.
type Options struct {
	// Name identifies the monitor in logs (the chardev id).
	Name string
	// Package is the greeting's version.package string.
	Package string
	// Major, Minor, Micro are the QEMU version in the greeting.
	Major, Minor, Micro int
	// FDSets is shared by the monitors of a process (nil: a private one).
	FDSets *FDSets
	// Log receives connection and command logs (nil: slog.Default()).
	Log *slog.Logger
	// MaxMessage overrides the 1 MiB message cap (tests).
	MaxMessage int
}

// Server is a QMP monitor.
type Server struct {
	opts   Options
	log    *slog.Logger
	fdsets *FDSets

	mu        sync.Mutex
	handlers  map[string]Handler
	listeners []net.Listener
	cur       *conn
	closed    bool
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// NewServer returns a server with only qmp_capabilities (built in).
func NewServer(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.FDSets == nil {
		opts.FDSets = NewFDSets()
	}
	if opts.MaxMessage <= 0 {
		opts.MaxMessage = MaxMessage
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		opts:     opts,
		log:      opts.Log.With("monitor", opts.Name),
		fdsets:   opts.FDSets,
		handlers: map[string]Handler{},
		ctx:      ctx,
		cancel:   cancel,
	}
}

// FDSets returns the fd-set table (for resolving /dev/fdset/N).
func (s *Server) FDSets() *FDSets { return s.fdsets }

// Handle registers (or replaces) the handler for a command.
func (s *Server) Handle(name string, h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[name] = h
}

// Commands lists the registered command names, sorted.
func (s *Server) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := []string{"qmp_capabilities"}
	for n := range s.handlers {
		if n != "qmp_capabilities" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

func (s *Server) handler(name string) Handler {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handlers[name]
}

// Serve accepts clients on l one at a time until l is closed or the server
// is closed, and returns nil then. Serve may be called for several
// listeners of the same monitor.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners = append(s.listeners, l)
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	backoff := 5 * time.Millisecond
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosed() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			s.log.Warn("qmp: accept failed", "err", err)
			time.Sleep(backoff)
			backoff = min(backoff*2, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s.serveConn(c)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting, disconnects the current client and waits for the
// serving goroutines. It does not close the shared FDSets.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.cancel()
	ls := s.listeners
	cur := s.cur
	s.mu.Unlock()
	for _, l := range ls {
		l.Close()
	}
	if cur != nil {
		cur.c.Close()
	}
	s.wg.Wait()
	return nil
}

// Event sends an asynchronous event to the connected client, if it has
// completed capabilities negotiation. data may be nil.
func (s *Server) Event(name string, data any) {
	s.mu.Lock()
	c := s.cur
	s.mu.Unlock()
	if c == nil || !c.negotiated() {
		return
	}
	now := time.Now()
	ev := struct {
		Timestamp struct {
			Seconds      int64 `json:"seconds"`
			Microseconds int64 `json:"microseconds"`
		} `json:"timestamp"`
		Event string `json:"event"`
		Data  any    `json:"data,omitempty"`
	}{Event: name, Data: data}
	ev.Timestamp.Seconds = now.Unix()
	ev.Timestamp.Microseconds = int64(now.Nanosecond() / 1000)
	c.send(ev)
}

// conn is one client connection.
type conn struct {
	s   *Server
	c   net.Conn
	log *slog.Logger

	wmu  sync.Mutex
	werr error

	nmu  sync.Mutex
	caps bool
}

func (c *conn) negotiated() bool {
	c.nmu.Lock()
	defer c.nmu.Unlock()
	return c.caps
}

func (c *conn) setNegotiated() {
	c.nmu.Lock()
	c.caps = true
	c.nmu.Unlock()
}

// send writes one message as a single line ending in "\r\n".
func (c *conn) send(v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		c.log.Error("qmp: cannot encode reply", "err", err)
		return
	}
	b := bytes.TrimRight(buf.Bytes(), "\n")
	b = append(b, '\r', '\n')
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return
	}
	c.c.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.c.Write(b); err != nil {
		c.werr = err
		c.log.Warn("qmp: write failed; dropping the connection", "err", err)
		c.c.Close()
	}
}

type reply struct {
	Return any             `json:"return"`
	ID     json.RawMessage `json:"id,omitempty"`
}

type errReply struct {
	Error *Error          `json:"error"`
	ID    json.RawMessage `json:"id,omitempty"`
}

type message struct {
	data    []byte
	garbage bool
	fds     []*os.File
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		if f != nil {
			f.Close()
		}
	}
}

func (s *Server) serveConn(nc net.Conn) {
	c := &conn{s: s, c: nc, log: s.log}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.cur = c
	s.mu.Unlock()
	c.log.Info("qmp: client connected")
	defer func() {
		s.mu.Lock()
		s.cur = nil
		s.mu.Unlock()
		nc.Close()
		s.fdsets.releaseOwner(c)
		c.log.Info("qmp: client disconnected")
	}()

	type qemuVersion struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	}
	type version struct {
		QEMU    qemuVersion `json:"qemu"`
		Package string      `json:"package"`
	}
	type qmpInfo struct {
		Version      version  `json:"version"`
		Capabilities []string `json:"capabilities"`
	}
	greeting := struct {
		QMP qmpInfo `json:"QMP"`
	}{qmpInfo{
		Version:      version{qemuVersion{s.opts.Major, s.opts.Minor, s.opts.Micro}, s.opts.Package},
		Capabilities: []string{},
	}}
	c.send(greeting)

	sp := &splitter{max: s.opts.MaxMessage}
	var pending []*os.File // fds for the message being received
	defer func() { closeFiles(pending) }()
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(maxFDsPerRead*4))
	uc, _ := nc.(*net.UnixConn)
	for {
		var n int
		var fds []*os.File
		var err error
		if uc != nil {
			var oobn, flags int
			n, oobn, flags, _, err = uc.ReadMsgUnix(buf, oob)
			if oobn > 0 {
				fds = parseRights(oob[:oobn], c.log)
			}
			if flags&unix.MSG_CTRUNC != 0 {
				c.log.Warn("qmp: control message truncated; some passed fds were lost")
			}
		} else {
			n, err = nc.Read(buf)
		}
		if n > 0 {
			pieces, serr := sp.feed(buf[:n])
			msgs := make([]message, len(pieces))
			for i, p := range pieces {
				msgs[i] = message{data: p.data, garbage: p.garbage}
			}
			// Fds arriving before or with a message's bytes belong to it:
			// everything pending goes to the first message completed here;
			// fds of this read go to the message holding its last byte
			// (the kernel ends a read at the skb carrying the fds).
			if len(msgs) > 0 {
				msgs[0].fds = pending
				pending = nil
			}
			if len(fds) > 0 {
				if sp.inProgress() || len(msgs) == 0 {
					pending = append(pending, fds...)
				} else {
					msgs[len(msgs)-1].fds = append(msgs[len(msgs)-1].fds, fds...)
				}
			}
			for i := range msgs {
				if s.ctx.Err() != nil {
					closeFiles(msgs[i].fds)
					continue
				}
				c.handle(&msgs[i])
			}
			if serr != nil {
				c.log.Warn("qmp: message over the size limit; closing the connection", "limit", s.opts.MaxMessage)
				c.send(errReply{Error: Errorf("JSON parse error, message too long (over %d bytes)", s.opts.MaxMessage)})
				return
			}
		} else {
			closeFiles(fds)
		}
		if err != nil {
			return
		}
	}
}

func parseRights(oob []byte, log *slog.Logger) []*os.File {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		log.Warn("qmp: bad control message", "err", err)
		return nil
	}
	var out []*os.File
	for _, m := range msgs {
		fds, err := unix.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			// Go's ReadMsgUnix sets MSG_CMSG_CLOEXEC on Linux.
			out = append(out, os.NewFile(uintptr(fd), fmt.Sprintf("qmp-fd-%d", fd)))
		}
	}
	return out
}

// handle parses and runs one message and sends its reply.
func (c *conn) handle(m *message) {
	defer func() { closeFiles(m.fds) }()
	if m.garbage {
		c.send(errReply{Error: Errorf("JSON parse error, invalid keyword '%s'", truncate(string(bytes.TrimSpace(m.data)), 64))})
		return
	}
	dec := json.NewDecoder(bytes.NewReader(m.data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		c.send(errReply{Error: Errorf("JSON parse error, %v", err)})
		return
	}
	obj, ok := v.(map[string]any)
	if !ok {
		c.send(errReply{Error: Errorf("QMP input must be a JSON object")})
		return
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(m.data, &raw); err != nil {
		c.send(errReply{Error: Errorf("JSON parse error, %v", err)})
		return
	}
	id := raw["id"]
	fail := func(e *Error) { c.send(errReply{Error: e, ID: id}) }

	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch k {
		case "execute", "arguments", "id":
		case "exec-oob":
			fail(Errorf("QMP input member 'exec-oob' is unexpected: out-of-band execution is not supported"))
			return
		default:
			fail(Errorf("QMP input member '%s' is unexpected", k))
			return
		}
	}
	execV, ok := obj["execute"]
	if !ok {
		fail(Errorf("QMP input lacks member 'execute'"))
		return
	}
	name, ok := execV.(string)
	if !ok {
		fail(Errorf("QMP input member 'execute' must be a string"))
		return
	}
	if a, ok := obj["arguments"]; ok {
		if _, isObj := a.(map[string]any); !isObj {
			fail(Errorf("QMP input member 'arguments' must be an object"))
			return
		}
	}
	req := &Request{Command: name, Args: raw["arguments"], FDs: m.fds, Server: c.s, conn: c}
	m.fds = nil
	defer func() { closeFiles(req.FDs) }()

	if name == "qmp_capabilities" {
		if c.negotiated() {
			fail(&Error{Class: ClassCommandNotFound, Desc: "Capabilities negotiation is already complete, command ignored"})
			return
		}
		var args struct {
			Enable []string `qmp:"enable,optional"`
		}
		if err := req.Decode(&args); err != nil {
			fail(asError(err))
			return
		}
		if len(args.Enable) > 0 {
			fail(Errorf("Capability '%s' not available", args.Enable[0]))
			return
		}
		c.setNegotiated()
		c.send(reply{Return: struct{}{}, ID: id})
		return
	}
	if !c.negotiated() {
		fail(&Error{Class: ClassCommandNotFound, Desc: "Expecting capabilities negotiation with 'qmp_capabilities'"})
		return
	}
	h := c.s.handler(name)
	if h == nil {
		c.log.Info("qmp: unknown command", "command", name)
		fail(CommandNotFound(name))
		return
	}
	start := time.Now()
	ret, err := runHandler(c.s.ctx, h, req)
	if err != nil {
		e := asError(err)
		c.log.Info("qmp: command failed", "command", name, "id", string(id), "class", e.Class, "desc", e.Desc, "took", time.Since(start))
		fail(e)
		return
	}
	c.log.Info("qmp: command done", "command", name, "id", string(id), "took", time.Since(start))
	if ret == nil {
		ret = struct{}{}
	}
	c.send(reply{Return: ret, ID: id})
}

// runHandler runs h, turning a panic into a GenericError so a bad command
// never takes the device model down.
func runHandler(ctx context.Context, h Handler, r *Request) (ret any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = Errorf("internal error in %s: %v", r.Command, p)
		}
	}()
	return h(ctx, r)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
