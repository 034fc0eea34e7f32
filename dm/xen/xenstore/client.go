package xenstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
)

// Default transport paths (libxenstore: XEN_RUN_STORED, xs_domain_dev).
const (
	DefaultSocketPath = "/var/run/xenstored/socket"
	XenbusDevicePath  = "/dev/xen/xenbus"
	XenbusProcPath    = "/proc/xen/xenbus"
)

// DefaultEventBuffer is the default capacity of a watch's event channel.
const DefaultEventBuffer = 64

// SocketPath returns the xenstored unix socket libxenstore's
// xs_daemon_socket() would use: $XENSTORED_PATH if set, else
// $XENSTORED_RUNDIR/socket if that is set, else DefaultSocketPath.
func SocketPath() string {
	if p := os.Getenv("XENSTORED_PATH"); p != "" {
		return p
	}
	if d := os.Getenv("XENSTORED_RUNDIR"); d != "" {
		return d + "/socket"
	}
	return DefaultSocketPath
}

// DevicePaths returns the xenbus device paths libxenstore's xs_domain_dev()
// would try, in order: $XENSTORED_PATH if set, else /dev/xen/xenbus and
// /proc/xen/xenbus.
func DevicePaths() []string {
	if p := os.Getenv("XENSTORED_PATH"); p != "" {
		return []string{p}
	}
	return []string{XenbusDevicePath, XenbusProcPath}
}

// Option configures a Client.
type Option func(*config)

type config struct {
	log   *slog.Logger
	evbuf int
}

// WithLogger sets where the client reports what it drops (replies with an
// unknown req_id, events for unknown watch tokens, malformed events) and
// why the connection ended. The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.log = l
		}
	}
}

// WithEventBuffer sets the capacity of each watch's event channel (default
// DefaultEventBuffer; values below 1 mean 1). See Watch for what happens
// when it is full.
func WithEventBuffer(n int) Option {
	return func(c *config) {
		c.evbuf = max(n, 1)
	}
}

// Client is a connection to xenstored. It is safe for concurrent use; see
// the package documentation for how requests, replies and watch events share
// the connection.
type Client struct {
	name  string // transport path, named in connection errors
	conn  io.ReadWriteCloser
	log   *slog.Logger
	evbuf int

	wmu sync.Mutex // held while one whole message is written

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]chan reply // by req_id; nil once the connection is gone
	watches map[string]*Watch     // by token; nil once the connection is gone
	nextTok uint64
	err     error         // why the connection is gone; set once, under mu
	done    chan struct{} // closed when err is set
}

type reply struct {
	h       Header
	payload []byte
	err     error
}

// Open connects to xenstored the way libxenstore's xs_open(0) does: the unix
// socket at SocketPath() first, then the xenbus device (DevicePaths()).
func Open(opts ...Option) (*Client, error) {
	paths := append([]string{SocketPath()}, DevicePaths()...)
	var errs []error
	seen := map[string]bool{}
	for _, p := range paths {
		if seen[p] {
			continue
		}
		seen[p] = true
		c, err := Dial(p, opts...)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("xenstore: cannot reach xenstored: %w", errors.Join(errs...))
}

// Dial connects to xenstored at path: a unix socket is dialled, anything
// else (the xenbus device) is opened read-write, as libxenstore's
// get_handle does.
func Dial(path string, opts ...Option) (*Client, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("xenstore: %w", err)
	}
	if fi.Mode()&os.ModeSocket != 0 {
		conn, err := net.Dial("unix", path)
		if err != nil {
			return nil, fmt.Errorf("xenstore: %w", err)
		}
		return New(conn, path, opts...), nil
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("xenstore: %w", err)
	}
	return New(f, path, opts...), nil
}

// New runs the xs_wire protocol over an established connection, which the
// Client owns from now on. name (usually the socket or device path) is named
// in connection errors. Each message is passed to conn.Write in one call.
func New(conn io.ReadWriteCloser, name string, opts ...Option) *Client {
	cfg := config{log: slog.Default(), evbuf: DefaultEventBuffer}
	for _, o := range opts {
		o(&cfg)
	}
	c := &Client{
		name:    name,
		conn:    conn,
		log:     cfg.log,
		evbuf:   cfg.evbuf,
		pending: make(map[uint32]chan reply),
		watches: make(map[string]*Watch),
		done:    make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// Name returns the transport path (or the name given to New).
func (c *Client) Name() string { return c.name }

// Close closes the connection. Every pending and later call fails with an
// error wrapping ErrConnClosed and net.ErrClosed, and every watch channel is
// closed. Close is idempotent and always returns nil.
func (c *Client) Close() error {
	c.fail(net.ErrClosed)
	return nil
}

// Done is closed when the connection is gone, whether by Close or because
// xenstored went away; Err then says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is up, and afterwards an error
// wrapping ErrConnClosed and the cause.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// fail ends the connection with cause; only the first call has an effect.
func (c *Client) fail(cause error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	err := fmt.Errorf("%w: %s: %w", ErrConnClosed, c.name, cause)
	c.err = err
	pending, watches := c.pending, c.watches
	c.pending, c.watches = nil, nil
	close(c.done)
	c.mu.Unlock()

	if !errors.Is(cause, net.ErrClosed) {
		c.log.Warn("xenstore: connection lost", "path", c.name, "err", cause)
	}
	c.conn.Close()
	for _, ch := range pending {
		ch <- reply{err: err} // buffered; each channel gets exactly one reply
	}
	for _, w := range watches {
		w.close()
	}
}

// readLoop is the only reader of the connection. It never blocks on a
// caller: reply channels are buffered and watch delivery drops instead of
// waiting.
func (c *Client) readLoop() {
	br := bufio.NewReaderSize(c.conn, HeaderSize+PayloadMax)
	for {
		h, p, err := ReadMessage(br)
		if err != nil {
			c.fail(err)
			return
		}
		select {
		case <-c.done: // closed: drop whatever was still buffered
			return
		default:
		}
		if h.Type == TypeWatchEvent {
			c.dispatchEvent(p)
			continue
		}
		c.mu.Lock()
		ch, ok := c.pending[h.ReqID]
		if ok {
			delete(c.pending, h.ReqID)
		}
		c.mu.Unlock()
		if !ok {
			c.log.Warn("xenstore: dropping reply with unknown req_id",
				"path", c.name, "type", h.Type.String(), "req_id", h.ReqID, "tx_id", h.TxID, "len", h.Len)
			continue
		}
		ch <- reply{h: h, payload: p}
	}
}

// roundTrip sends one request and waits for its reply. An XS_ERROR reply
// becomes an Errno; a reply of another type than the request is
// ErrProtocol. ctx bounds only the wait for the reply: a request already
// written stays sent, and its late reply is dropped.
func (c *Client) roundTrip(ctx context.Context, typ MsgType, tx uint32, payload []byte) ([]byte, error) {
	if len(payload) > PayloadMax {
		return nil, fmt.Errorf("%w: %v request of %d bytes", ErrPayloadTooBig, typ, len(payload))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ch := make(chan reply, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	id := c.allocIDLocked()
	c.pending[id] = ch
	c.mu.Unlock()

	msg := AppendMessage(make([]byte, 0, HeaderSize+len(payload)), Header{Type: typ, ReqID: id, TxID: tx}, payload)
	c.wmu.Lock()
	_, err := c.conn.Write(msg)
	c.wmu.Unlock()
	if err != nil {
		// A partial write leaves the stream unframed: the connection
		// cannot be used any more. fail answers our pending entry.
		c.fail(fmt.Errorf("write: %w", err))
	}

	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		switch r.h.Type {
		case typ:
			return r.payload, nil
		case TypeError:
			return nil, parseErrno(r.payload)
		default:
			return nil, fmt.Errorf("%w: %v reply to a %v request", ErrProtocol, r.h.Type, typ)
		}
	case <-ctx.Done():
		c.mu.Lock()
		if c.pending != nil {
			delete(c.pending, id)
		}
		c.mu.Unlock()
		return nil, ctx.Err()
	}
}

// allocIDLocked returns a req_id that is not 0 (the id of watch events) and
// not in use.
func (c *Client) allocIDLocked() uint32 {
	for {
		c.nextID++
		if c.nextID == 0 {
			continue
		}
		if _, busy := c.pending[c.nextID]; !busy {
			return c.nextID
		}
	}
}

// parseErrno decodes an XS_ERROR payload, "E<NAME>|".
func parseErrno(p []byte) error {
	f := splitNul(p)
	if len(f) == 0 {
		return fmt.Errorf("%w: empty XS_ERROR reply", ErrProtocol)
	}
	name := f[0]
	if len(name) > 32 {
		name = name[:32]
	}
	return Errno(name)
}
