package xenstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

func fuzzSeeds(f *testing.F) {
	f.Add([]byte{})
	f.Add(AppendMessage(nil, Header{Type: TypeRead, ReqID: 1}, []byte("value")))
	f.Add(AppendMessage(nil, Header{Type: TypeError, ReqID: 1}, []byte("ENOENT\x00")))
	f.Add(AppendMessage(nil, Header{Type: TypeWatchEvent}, []byte("/a\x00xen-dm-go/1\x00")))
	f.Add(AppendMessage(nil, Header{Type: TypeWatchEvent}, []byte("/a\x00unknown\x00")))
	f.Add(AppendMessage(nil, Header{Type: TypeDirectory, ReqID: 2}, []byte("a\x00b\x00")))
	f.Add(AppendMessage(nil, Header{Type: TypeGetPerms, ReqID: 3}, []byte("n0\x00r5\x00")))
	f.Add(append(AppendMessage(nil, Header{Type: TypeWatch, ReqID: 1}, []byte("OK\x00")),
		AppendMessage(nil, Header{Type: TypeRead, ReqID: 2}, []byte("v"))...))
	over := make([]byte, HeaderSize)
	PutHeader(over, Header{Type: TypeRead, ReqID: 1, Len: PayloadMax + 1})
	f.Add(over)
	f.Add([]byte("\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xff\x00\x00\x00short"))
}

// FuzzReadMessage: whatever bytes arrive, the decoder returns messages or an
// error, never panics, and what it accepts re-encodes to the same bytes.
func FuzzReadMessage(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		consumed := 0
		for {
			h, p, err := ReadMessage(r)
			if err != nil {
				if err == io.EOF && consumed != len(data) {
					t.Fatalf("EOF after %d of %d bytes", consumed, len(data))
				}
				if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.Is(err, ErrProtocol) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if h.Len != uint32(len(p)) || len(p) > PayloadMax {
				t.Fatalf("header %+v with %d payload bytes", h, len(p))
			}
			n := HeaderSize + len(p)
			if got := AppendMessage(nil, h, p); !bytes.Equal(got, data[consumed:consumed+n]) {
				t.Fatalf("re-encoding differs")
			}
			consumed += n
			// The payload parsers must cope with anything, too.
			splitNul(p)
			parseDirectory(p)
			parsePerms(p)
			parseErrno(p)
		}
	})
}

// FuzzClientStream: a Client whose xenstored sends arbitrary bytes (in
// reply to a watch, a read, a directory and a transaction start) never
// panics, and every call returns.
func FuzzClientStream(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		cs, ss := net.Pipe()
		c := New(cs, "fuzz", WithLogger(slog.New(slog.DiscardHandler)), WithEventBuffer(1))
		go func() {
			// Consume requests, answer with the fuzz bytes, hang up.
			go io.Copy(io.Discard, ss)
			ss.Write(data)
			ss.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		done := make(chan struct{})
		go func() {
			defer close(done)
			if w, err := c.Watch(ctx, "/a"); err == nil {
				for range w.Events() {
				}
			}
		}()
		c.Read(ctx, "/a")
		c.Directory(ctx, "/a")
		c.GetPermissions(ctx, "/a")
		if tx, err := c.Start(ctx); err == nil {
			tx.Commit(ctx)
		}
		<-c.Done() // the peer hung up
		<-done
		c.Close()
	})
}
