package xenstore

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
)

// The values of enum xsd_sockmsg_type as printed from Xen 4.17.7's xs_wire.h
// (shared/reference/xen-dm-interface.md §3.4).
func TestMsgTypeValues(t *testing.T) {
	want := map[MsgType]uint32{
		TypeControl: 0, TypeDirectory: 1, TypeRead: 2, TypeGetPerms: 3, TypeWatch: 4, TypeUnwatch: 5,
		TypeTransactionStart: 6, TypeTransactionEnd: 7, TypeIntroduce: 8, TypeRelease: 9,
		TypeGetDomainPath: 10, TypeWrite: 11, TypeMkdir: 12, TypeRm: 13, TypeSetPerms: 14,
		TypeWatchEvent: 15, TypeError: 16, TypeIsDomainIntroduced: 17, TypeResume: 18,
		TypeSetTarget: 19, TypeResetWatches: 21, TypeDirectoryPart: 22, TypeCount: 23,
		TypeInvalid: 0xffff,
	}
	for typ, v := range want {
		if uint32(typ) != v {
			t.Errorf("%v = %d, want %d", typ, uint32(typ), v)
		}
	}
	if PayloadMax != 4096 || AbsPathMax != 3072 || RelPathMax != 2048 || HeaderSize != 16 {
		t.Error("xs_wire.h limits wrong")
	}
	if TypeRead.String() != "XS_READ" || TypeDirectoryPart.String() != "XS_DIRECTORY_PART" ||
		MsgType(20).String() != "XS_RESTRICT(removed)" || MsgType(99).String() != "XS_TYPE(99)" ||
		TypeInvalid.String() != "XS_INVALID" {
		t.Error("String names wrong")
	}
}

// struct xsd_sockmsg: type@0, req_id@4, tx_id@8, len@12, little-endian.
func TestHeaderLayout(t *testing.T) {
	msg := AppendMessage(nil, Header{Type: TypeWrite, ReqID: 0x01020304, TxID: 0x0a0b0c0d, Len: 999}, []byte("p\x00v"))
	want := []byte{
		11, 0, 0, 0,
		0x04, 0x03, 0x02, 0x01,
		0x0d, 0x0c, 0x0b, 0x0a,
		3, 0, 0, 0,
		'p', 0, 'v',
	}
	if !bytes.Equal(msg, want) {
		t.Fatalf("encoded % x\nwant    % x", msg, want)
	}
	h, p, err := ReadMessage(bytes.NewReader(msg))
	if err != nil || h != (Header{Type: TypeWrite, ReqID: 0x01020304, TxID: 0x0a0b0c0d, Len: 3}) || string(p) != "p\x00v" {
		t.Fatalf("decoded %+v %q %v", h, p, err)
	}
	if _, err := ParseHeader(msg[:15]); !errors.Is(err, ErrProtocol) {
		t.Fatalf("short ParseHeader: %v", err)
	}
}

func TestReadMessageErrors(t *testing.T) {
	full := AppendMessage(nil, Header{Type: TypeRead, ReqID: 1}, []byte("abc\x00"))
	if _, _, err := ReadMessage(bytes.NewReader(nil)); err != io.EOF {
		t.Errorf("empty: %v", err)
	}
	for _, n := range []int{1, 15, 16, 17, len(full) - 1} {
		if _, _, err := ReadMessage(bytes.NewReader(full[:n])); err != io.ErrUnexpectedEOF {
			t.Errorf("cut at %d: %v", n, err)
		}
	}
	big := make([]byte, HeaderSize)
	PutHeader(big, Header{Type: TypeRead, Len: PayloadMax + 1})
	if _, _, err := ReadMessage(bytes.NewReader(big)); !errors.Is(err, ErrProtocol) {
		t.Errorf("oversized: %v", err)
	}
	max := AppendMessage(nil, Header{Type: TypeRead}, make([]byte, PayloadMax))
	if _, p, err := ReadMessage(bytes.NewReader(max)); err != nil || len(p) != PayloadMax {
		t.Errorf("PayloadMax: %d %v", len(p), err)
	}
}

func TestErrno(t *testing.T) {
	err := error(&Error{Op: "read", Path: "/a", Err: parseErrno([]byte("ENOENT\x00"))})
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("%v", err)
	}
	if e := parseErrno([]byte("EWEIRD")); e != Errno("EWEIRD") || errors.Unwrap(e) != nil {
		t.Fatalf("unknown name: %#v", e)
	}
	if e := parseErrno(nil); !errors.Is(e, ErrProtocol) {
		t.Fatalf("empty: %v", e)
	}
	if e := parseErrno([]byte(strings.Repeat("E", 100))); len(e.Error()) != 32 {
		t.Fatalf("long name kept: %d", len(e.Error()))
	}
	for name, n := range errnoByName {
		if !errors.Is(name, n) {
			t.Errorf("%s does not unwrap to %v", name, n)
		}
	}
	e := &Error{Op: "watch", Path: "/a\x01", Token: "t", Tx: 3, Err: ErrAgain}
	if got := e.Error(); got != `xenstore watch "/a\x01" (token t) (tx 3): EAGAIN` {
		t.Fatalf("Error() = %q", got)
	}
}

func TestParseDirectory(t *testing.T) {
	cases := []struct {
		in   string
		want []string
		bad  bool
	}{
		{"", []string{}, false},
		{"\x00", []string{}, false},
		{"a\x00b\x00", []string{"a", "b"}, false},
		{"a\x00b", []string{"a", "b"}, false}, // missing final NUL tolerated
		{"a\x00\x00b\x00\x00", []string{"a", "b"}, false},
		{"a/b\x00", nil, true},
	}
	for _, c := range cases {
		got, err := parseDirectory([]byte(c.in))
		if c.bad {
			if !errors.Is(err, ErrProtocol) {
				t.Errorf("%q: %v", c.in, err)
			}
			continue
		}
		if err != nil || len(got) != len(c.want) || got == nil {
			t.Errorf("%q: %#v %v", c.in, got, err)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%q: %#v", c.in, got)
			}
		}
	}
}

func TestWatchDeliverDropsOldest(t *testing.T) {
	w := &Watch{ch: make(chan Event, 3)}
	for i := range 10 {
		w.deliver(Event{Path: string(rune('a' + i))})
	}
	if w.Dropped() != 7 {
		t.Fatalf("Dropped = %d", w.Dropped())
	}
	var got string
	for range 3 {
		got += (<-w.ch).Path
	}
	if got != "hij" {
		t.Fatalf("kept %q", got)
	}
	w.close()
	w.close()
	w.deliver(Event{Path: "late"}) // after close: no panic, nothing sent
	if _, ok := <-w.ch; ok {
		t.Fatal("event after close")
	}
}
