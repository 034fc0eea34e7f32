package xentest_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

func xsCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func xsServer(t *testing.T) *xentest.XenstoreServer {
	t.Helper()
	s, err := xentest.NewXenstoreServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func xsDial(t *testing.T, s *xentest.XenstoreServer) *xenstore.Client {
	t.Helper()
	c, err := xenstore.Dial(s.SocketPath(), xenstore.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The use the DM core's tests make of it: the code under test writes the
// start-up handshake, the test waits for it.
func TestXenstoreServerWait(t *testing.T) {
	s := xsServer(t)
	c := xsDial(t, s)
	go func() {
		time.Sleep(10 * time.Millisecond)
		c.Write(context.Background(), "device-model/4/state", "running")
	}()
	if err := s.Wait(xsCtx(t), "/local/domain/0/device-model/4/state", "running"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	err := s.Wait(ctx, "device-model/4/state", "paused")
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `now "running"`) {
		t.Fatalf("Wait: %v", err)
	}
}

func TestXenstoreServerSeedAndInspect(t *testing.T) {
	s := xsServer(t)
	c := xsDial(t, s)
	ctx := xsCtx(t)
	s.Write("backend/vkbd/1/0/state", "1")
	if v, err := c.Read(ctx, "/local/domain/0/backend/vkbd/1/0/state"); err != nil || v != "1" {
		t.Fatalf("Read = %q, %v", v, err)
	}
	if d := s.Directory("/local/domain/0/backend"); len(d) != 1 || d[0] != "vkbd" {
		t.Fatalf("Directory = %q", d)
	}
	if d := s.Directory("/"); len(d) != 1 || d[0] != "local" {
		t.Fatalf("root Directory = %q", d)
	}
	if s.Directory("/nope") != nil || s.Perms("/nope") != nil {
		t.Fatal("missing node listed")
	}
	s.Rm("backend")
	if _, ok := s.Read("/local/domain/0/backend/vkbd"); ok {
		t.Fatal("Rm left children")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Write of an invalid path did not panic")
		}
	}()
	s.Write("/bad//path", "x")
}

func TestXenstoreServerDropConnections(t *testing.T) {
	s := xsServer(t)
	c := xsDial(t, s)
	ctx := xsCtx(t)
	if err := c.Write(ctx, "/local/domain/0/k", "v"); err != nil {
		t.Fatal(err)
	}
	s.DropConnections()
	<-c.Done()
	if !errors.Is(c.Err(), io.EOF) {
		t.Fatalf("Err = %v", c.Err())
	}
	// Still listening, and the store survived.
	c2 := xsDial(t, s)
	if v, err := c2.Read(ctx, "/local/domain/0/k"); err != nil || v != "v" {
		t.Fatalf("after reconnect: %q %v", v, err)
	}
	s.Close()
	s.Close()
	<-c2.Done()
	if _, err := xenstore.Dial(s.SocketPath()); err == nil {
		t.Fatal("Dial after Close succeeded")
	}
}

// xsRawConn talks to the fake without the client, to check the server's
// answers to requests the client never sends.
type xsRawConn struct {
	t *testing.T
	c net.Conn
}

func (r xsRawConn) do(typ xenstore.MsgType, tx uint32, payload string) (xenstore.MsgType, string) {
	r.t.Helper()
	if _, err := r.c.Write(xenstore.AppendMessage(nil, xenstore.Header{Type: typ, ReqID: 77, TxID: tx}, []byte(payload))); err != nil {
		r.t.Fatal(err)
	}
	for {
		h, p, err := xenstore.ReadMessage(r.c)
		if err != nil {
			r.t.Fatal(err)
		}
		if h.Type == xenstore.TypeWatchEvent {
			continue
		}
		if h.ReqID != 77 || h.TxID != tx {
			r.t.Fatalf("reply header %+v", h)
		}
		return h.Type, string(p)
	}
}

func TestXenstoreServerProtocolEdges(t *testing.T) {
	s := xsServer(t)
	nc, err := net.Dial("unix", s.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	r := xsRawConn{t, nc}
	E := func(name string) string { return name + "\x00" }
	cases := []struct {
		typ     xenstore.MsgType
		tx      uint32
		payload string
		want    xenstore.MsgType
		reply   string
	}{
		{xenstore.TypeRead, 0, "/local/domain/0", xenstore.TypeError, E("EINVAL")}, // no NUL
		{xenstore.TypeRead, 0, "/nope\x00", xenstore.TypeError, E("ENOENT")},
		{xenstore.TypeRead, 0, "/a/\x00", xenstore.TypeError, E("EINVAL")},
		{xenstore.TypeRead, 0, strings.Repeat("a", xenstore.RelPathMax+1) + "\x00", xenstore.TypeError, E("EINVAL")},
		{xenstore.TypeRead, 99, "/\x00", xenstore.TypeError, E("ENOENT")},          // unknown transaction
		{xenstore.TypeTransactionEnd, 0, "T\x00", xenstore.TypeError, E("ENOENT")}, // no transaction
		{xenstore.TypeTransactionStart, 5, "\x00", xenstore.TypeError, E("EBUSY")},
		{xenstore.TypeWrite, 0, "/local/domain/0/w\x00v", xenstore.TypeWrite, "OK\x00"},
		{xenstore.TypeRm, 0, "/\x00", xenstore.TypeError, E("EINVAL")},
		{xenstore.TypeWatch, 0, "/w\x00tok\x00", xenstore.TypeWatch, "OK\x00"},
		{xenstore.TypeWatch, 0, "/w\x00tok\x00", xenstore.TypeError, E("EEXIST")},
		{xenstore.TypeUnwatch, 0, "/w\x00tok\x00", xenstore.TypeUnwatch, "OK\x00"},
		{xenstore.TypeUnwatch, 0, "/w\x00tok\x00", xenstore.TypeError, E("ENOENT")},
		{xenstore.TypeSetPerms, 0, "/local\x00x1\x00", xenstore.TypeError, E("EINVAL")},
		{xenstore.TypeGetDomainPath, 0, "x\x00", xenstore.TypeError, E("EINVAL")},
		{xenstore.TypeDirectoryPart, 0, "/local\x000\x00", xenstore.TypeDirectoryPart, "" /* checked below */},
		{xenstore.TypeDirectoryPart, 0, "/local\x00999\x00", xenstore.TypeError, E("EINVAL")},
		{xenstore.TypeIntroduce, 0, "1\x002\x003\x00", xenstore.TypeError, E("ENOSYS")},
	}
	for _, c := range cases {
		typ, reply := r.do(c.typ, c.tx, c.payload)
		if c.typ == xenstore.TypeDirectoryPart && typ == xenstore.TypeDirectoryPart {
			// "<gen>|domain|" plus the terminating empty string.
			if f := strings.Split(reply, "\x00"); len(f) != 4 || f[1] != "domain" || f[2] != "" || f[3] != "" {
				t.Errorf("DIRECTORY_PART reply %q", reply)
			}
			continue
		}
		if typ != c.want || reply != c.reply {
			t.Errorf("%v tx %d %q: got %v %q, want %v %q", c.typ, c.tx, c.payload, typ, reply, c.want, c.reply)
		}
	}
	// More than XENSTORE_PAYLOAD_MAX kills the connection, as in xenstored.
	big := xenstore.AppendMessage(nil, xenstore.Header{Type: xenstore.TypeWrite, ReqID: 1}, make([]byte, xenstore.PayloadMax+1))
	nc.Write(big)
	if _, _, err := xenstore.ReadMessage(nc); err == nil {
		t.Fatal("connection survived an oversized request")
	}
}
