package xenstore_test

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
)

// hangUp, returned by a responder, makes the scripted peer close the
// connection.
var hangUp = []byte("hang up")

// scripted runs a Client against a hand-written peer on net.Pipe: for each
// request, respond returns the raw bytes to send back (nil: nothing), so
// tests can send what no well-behaved xenstored would.
func scripted(t *testing.T, respond func(h xenstore.Header, p []byte) []byte) (*xenstore.Client, *logBuf) {
	t.Helper()
	cs, ss := net.Pipe()
	lb := &logBuf{}
	c := xenstore.New(cs, "pipe:scripted", xenstore.WithLogger(slog.New(slog.NewTextHandler(lb, nil))))
	go func() {
		defer ss.Close()
		for {
			h, p, err := xenstore.ReadMessage(ss)
			if err != nil {
				return
			}
			out := respond(h, p)
			if string(out) == string(hangUp) {
				return
			}
			if out != nil {
				if _, err := ss.Write(out); err != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() { c.Close() })
	return c, lb
}

func msg(typ xenstore.MsgType, req uint32, payload string) []byte {
	return xenstore.AppendMessage(nil, xenstore.Header{Type: typ, ReqID: req}, []byte(payload))
}

func TestMalformedReplies(t *testing.T) {
	ctx := ctxT(t)
	reply := map[xenstore.MsgType]func(h xenstore.Header) []byte{}
	c, _ := scripted(t, func(h xenstore.Header, p []byte) []byte {
		if f := reply[h.Type]; f != nil {
			return f(h)
		}
		return msg(xenstore.TypeError, h.ReqID, "ENOSYS\x00")
	})

	// A reply of the wrong type: an error for that call only.
	reply[xenstore.TypeRead] = func(h xenstore.Header) []byte { return msg(xenstore.TypeWrite, h.ReqID, "OK\x00") }
	if _, err := c.Read(ctx, "/a"); !errors.Is(err, xenstore.ErrProtocol) || !strings.Contains(err.Error(), "/a") {
		t.Fatalf("wrong type: %v", err)
	}
	reply[xenstore.TypeDirectory] = func(h xenstore.Header) []byte { return msg(h.Type, h.ReqID, "ok\x00../../etc\x00") }
	if _, err := c.Directory(ctx, "/d"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("directory entry with '/': %v", err)
	}
	reply[xenstore.TypeGetPerms] = func(h xenstore.Header) []byte { return msg(h.Type, h.ReqID, "z9\x00") }
	if _, err := c.GetPermissions(ctx, "/p"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("bad perms: %v", err)
	}
	reply[xenstore.TypeGetPerms] = func(h xenstore.Header) []byte { return msg(h.Type, h.ReqID, "") }
	if _, err := c.GetPermissions(ctx, "/p"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("empty perms: %v", err)
	}
	for _, bad := range []string{"abc\x00", "0\x00", "1\x002\x00", "99999999999\x00", ""} {
		reply[xenstore.TypeTransactionStart] = func(h xenstore.Header) []byte { return msg(h.Type, h.ReqID, bad) }
		if _, err := c.Start(ctx); !errors.Is(err, xenstore.ErrProtocol) {
			t.Fatalf("tx id %q: %v", bad, err)
		}
	}
	reply[xenstore.TypeGetDomainPath] = func(h xenstore.Header) []byte { return msg(h.Type, h.ReqID, "") }
	if _, err := c.GetDomainPath(ctx, 1); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("empty domain path: %v", err)
	}
	reply[xenstore.TypeWrite] = func(h xenstore.Header) []byte { return msg(xenstore.TypeError, h.ReqID, "EWHATEVER\x00") }
	if err := c.Write(ctx, "/w", "v"); !errors.Is(err, xenstore.Errno("EWHATEVER")) {
		t.Fatalf("unknown errno: %v", err)
	}
	reply[xenstore.TypeWrite] = func(h xenstore.Header) []byte { return msg(xenstore.TypeError, h.ReqID, "") }
	if err := c.Write(ctx, "/w", "v"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("empty XS_ERROR: %v", err)
	}
	// None of that was fatal.
	if c.Err() != nil {
		t.Fatalf("connection ended: %v", c.Err())
	}
}

func TestDirectoryPartMisbehaviour(t *testing.T) {
	ctx := ctxT(t)
	var part func(h xenstore.Header, p []byte) []byte
	c, _ := scripted(t, func(h xenstore.Header, p []byte) []byte {
		switch h.Type {
		case xenstore.TypeDirectory:
			return msg(xenstore.TypeError, h.ReqID, "E2BIG\x00")
		case xenstore.TypeDirectoryPart:
			return part(h, p)
		}
		return msg(xenstore.TypeError, h.ReqID, "ENOSYS\x00")
	})

	// A listing that never ends is cut off.
	part = func(h xenstore.Header, p []byte) []byte {
		return msg(h.Type, h.ReqID, "7\x00"+strings.Repeat("n\x00", 2000))
	}
	if _, err := c.Directory(ctx, "/big"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("endless listing: %v", err)
	}
	// A generation that keeps changing gives up with EAGAIN.
	gen := 0
	part = func(h xenstore.Header, p []byte) []byte {
		gen++
		return msg(h.Type, h.ReqID, string(rune('a'+gen%26))+"\x00x\x00")
	}
	if _, err := c.Directory(ctx, "/big"); !errors.Is(err, xenstore.ErrAgain) {
		t.Fatalf("changing generation: %v", err)
	}
	// An empty chunk that does not end the listing.
	calls := 0
	part = func(h xenstore.Header, p []byte) []byte {
		calls++
		if calls == 1 {
			return msg(h.Type, h.ReqID, "1\x00a\x00")
		}
		return msg(h.Type, h.ReqID, "1\x00")
	}
	if _, err := c.Directory(ctx, "/big"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("empty chunk: %v", err)
	}
	// No generation count at all.
	part = func(h xenstore.Header, p []byte) []byte { return msg(h.Type, h.ReqID, "abc") }
	if _, err := c.Directory(ctx, "/big"); !errors.Is(err, xenstore.ErrProtocol) {
		t.Fatalf("no generation: %v", err)
	}
	// ENOSYS (an old xenstored) surfaces as such.
	part = func(h xenstore.Header, p []byte) []byte { return msg(xenstore.TypeError, h.ReqID, "ENOSYS\x00") }
	if _, err := c.Directory(ctx, "/big"); !errors.Is(err, xenstore.ErrNoSys) {
		t.Fatalf("ENOSYS: %v", err)
	}
}

func TestOversizedMessageEndsConnection(t *testing.T) {
	c, _ := scripted(t, func(h xenstore.Header, p []byte) []byte {
		b := msg(h.Type, h.ReqID, "")
		b[12], b[13] = 0x01, 0x20 // len = 8193
		return b
	})
	w, err := c.Watch(ctxT(t), "/x") // the reply itself is oversized
	if w != nil || !errors.Is(err, xenstore.ErrProtocol) || !errors.Is(err, xenstore.ErrConnClosed) {
		t.Fatalf("Watch: %v", err)
	}
	if _, err := c.Read(ctxT(t), "/y"); !errors.Is(err, xenstore.ErrConnClosed) || !strings.Contains(err.Error(), "pipe:scripted") {
		t.Fatalf("later call: %v", err)
	}
}

func TestPeerHangsUp(t *testing.T) {
	c, _ := scripted(t, func(h xenstore.Header, p []byte) []byte { return hangUp })
	_, err := c.Read(ctxT(t), "/gone")
	if !errors.Is(err, io.EOF) || !errors.Is(err, xenstore.ErrConnClosed) || !strings.Contains(err.Error(), "/gone") {
		t.Fatalf("hang-up: %v", err)
	}
}

func TestTruncatedReplyIsUnexpectedEOF(t *testing.T) {
	cs, ss := net.Pipe()
	c := xenstore.New(cs, "pipe:trunc", xenstore.WithLogger(slog.New(slog.DiscardHandler)))
	defer c.Close()
	go func() {
		h, _, err := xenstore.ReadMessage(ss)
		if err != nil {
			return
		}
		ss.Write(msg(h.Type, h.ReqID, "truncated")[:20])
		ss.Close()
	}()
	_, err := c.Read(ctxT(t), "/t")
	if !errors.Is(err, io.ErrUnexpectedEOF) || !errors.Is(err, xenstore.ErrConnClosed) {
		t.Fatalf("Read: %v", err)
	}
}
