package xenstore

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
)

// Event is one XS_WATCH_EVENT: something at or below the watched path
// changed (was created, written, removed or had its permissions changed).
type Event struct {
	// Path is the node that changed (the event's epath). It is at or below
	// the watch's path, except that removing an ancestor of the watched
	// path reports the watched path itself. It is relative when the watch
	// path was.
	Path string
	// Token is the token of the watch that matched.
	Token string
}

// Watch is a registered xenstore watch (XS_WATCH). Its events arrive on
// Events(), starting with the one xenstored sends right after registration
// (Path equal to the watched path).
//
// Overflow: Events() is buffered (WithEventBuffer, default
// DefaultEventBuffer). When it is full, the oldest unread event is discarded
// to make room, so the newest one is always delivered and the connection's
// reader never waits for the consumer; Dropped counts the discarded events.
//
// Events() is closed after Unwatch, Client.Close, or when the connection to
// xenstored is lost.
type Watch struct {
	c     *Client
	path  string
	token string

	ch      chan Event
	mu      sync.Mutex // orders deliveries against close
	closed  bool
	dropped atomic.Uint64
}

// Path returns the watched path as given to Client.Watch.
func (w *Watch) Path() string { return w.path }

// Token returns the token the client chose for the watch.
func (w *Watch) Token() string { return w.token }

// Events returns the watch's event channel.
func (w *Watch) Events() <-chan Event { return w.ch }

// Dropped returns how many events were discarded because Events() was full.
func (w *Watch) Dropped() uint64 { return w.dropped.Load() }

// deliver queues ev without ever blocking: if the channel is full, the
// oldest queued event gives way. Only the connection's reader delivers, and
// it does so under w.mu, so after one receive there is room.
func (w *Watch) deliver(ev Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	for {
		select {
		case w.ch <- ev:
			return
		default:
		}
		select {
		case <-w.ch:
			w.dropped.Add(1)
		default:
		}
	}
}

// close closes the event channel once.
func (w *Watch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.ch)
	}
}

// Watch registers a watch on path (XS_WATCH) under a token unique to this
// client. path may also be a special path such as "@releaseDomain". The
// watch is in place, and its first event queued or on its way, when Watch
// returns.
func (c *Client) Watch(ctx context.Context, path string) (*Watch, error) {
	if err := checkPath(path); err != nil {
		return nil, &Error{Op: "watch", Path: path, Err: err}
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, &Error{Op: "watch", Path: path, Err: err}
	}
	c.nextTok++
	token := "xen-dm-go/" + strconv.FormatUint(c.nextTok, 10)
	w := &Watch{c: c, path: path, token: token, ch: make(chan Event, c.evbuf)}
	// Registered before the request goes out: the first event can follow
	// the reply immediately and must find the watch.
	c.watches[token] = w
	c.mu.Unlock()

	if _, err := c.roundTrip(ctx, TypeWatch, 0, nulJoin(path, token)); err != nil {
		c.forget(w)
		return nil, &Error{Op: "watch", Path: path, Token: token, Err: err}
	}
	return w, nil
}

// Unwatch removes the watch (XS_UNWATCH) and closes its event channel. The
// channel is closed even if the request fails (the error is returned); a
// second Unwatch of the same watch returns nil.
func (c *Client) Unwatch(ctx context.Context, w *Watch) error {
	if w == nil || w.c != c {
		return &Error{Op: "unwatch", Err: fmt.Errorf("%w: watch does not belong to this client", ErrInvalid)}
	}
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed {
		c.forget(w)
		return nil
	}
	_, err := c.roundTrip(ctx, TypeUnwatch, 0, nulJoin(w.path, w.token))
	c.forget(w)
	if err != nil {
		return &Error{Op: "unwatch", Path: w.path, Token: w.token, Err: err}
	}
	return nil
}

// forget removes w from the token table and closes its channel.
func (c *Client) forget(w *Watch) {
	c.mu.Lock()
	if c.watches != nil && c.watches[w.token] == w {
		delete(c.watches, w.token)
	}
	c.mu.Unlock()
	w.close()
}

// dispatchEvent routes an XS_WATCH_EVENT payload, "<epath>|<token>|", to its
// watch. Malformed events and unknown tokens (for example an event that
// crossed an Unwatch) are logged and dropped.
func (c *Client) dispatchEvent(p []byte) {
	i := bytes.IndexByte(p, 0)
	if i <= 0 {
		c.log.Warn("xenstore: dropping malformed watch event", "path", c.name, "payload", strconv.Quote(string(p)))
		return
	}
	epath, rest := string(p[:i]), p[i+1:]
	if j := bytes.IndexByte(rest, 0); j >= 0 {
		rest = rest[:j]
	}
	token := string(rest)
	c.mu.Lock()
	w := c.watches[token] // nil map (connection gone) reads as absent
	c.mu.Unlock()
	if w == nil {
		c.log.Warn("xenstore: dropping watch event for unknown token",
			"path", c.name, "event_path", epath, "token", strconv.Quote(token))
		return
	}
	w.deliver(Event{Path: epath, Token: token})
}
