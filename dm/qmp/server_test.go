package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var quiet = slog.New(slog.DiscardHandler)

// fakeBackend records what the standard commands asked for.
type fakeBackend struct {
	mu       sync.Mutex
	state    RunState
	dirty    []bool
	saved    []bool
	saveErr  error
	stops    int
	conts    int
	vcpus    int
	chardevs []ChardevInfo
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{state: RunState{StatusRunning, true}, vcpus: 2, chardevs: []ChardevInfo{
		{Label: "libxl-cmd", Filename: "unix:/var/run/xen/qmp-libxl-1,server=on", FrontendOpen: true},
		{Label: "serial0", Filename: "pty:/dev/pts/7", FrontendOpen: true},
	}}
}

func (b *fakeBackend) RunState() RunState { b.mu.Lock(); defer b.mu.Unlock(); return b.state }
func (b *fakeBackend) Stop(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stops++
	b.state = RunState{StatusPaused, false}
	return nil
}
func (b *fakeBackend) Cont(context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.conts++
	b.state = RunState{StatusRunning, true}
	return nil
}
func (b *fakeBackend) Chardevs() []ChardevInfo { return b.chardevs }
func (b *fakeBackend) VCPUs() int              { return b.vcpus }
func (b *fakeBackend) SaveDevicesState(_ context.Context, f *os.File, live bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.saveErr != nil {
		return b.saveErr
	}
	b.saved = append(b.saved, live)
	_, err := f.WriteString("device-state")
	return err
}
func (b *fakeBackend) SetGlobalDirtyLog(_ context.Context, on bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dirty = append(b.dirty, on)
	return nil
}

type testServer struct {
	s    *Server
	b    *fakeBackend
	path string
}

func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := ListenPath(path)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Package == "" {
		opts.Package = "xen-dm-go test"
	}
	opts.Name, opts.Major, opts.Minor, opts.Micro = "libxl-cmd", 7, 2, 0
	opts.Log = quiet
	s := NewServer(opts)
	b := newFakeBackend()
	RegisterStandard(s, b)
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	return &testServer{s: s, b: b, path: path}
}

// client speaks QMP like libxl: one command per write, "\r\n" framing.
type client struct {
	t  *testing.T
	c  *net.UnixConn
	br *bufio.Reader
}

func dial(t *testing.T, path string) *client {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

// line reads one server message and checks its framing.
func (c *client) line() map[string]json.RawMessage {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	s, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, s)
	}
	if !strings.HasSuffix(s, "\r\n") || strings.Count(s, "\n") != 1 || strings.Contains(s[:len(s)-2], "\r") {
		c.t.Fatalf("bad framing: %q", s)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		c.t.Fatalf("reply %q: %v", s, err)
	}
	return m
}

func (c *client) greeting() {
	c.t.Helper()
	m := c.line()
	var g struct {
		QMP struct {
			Version struct {
				QEMU    struct{ Major, Minor, Micro int } `json:"qemu"`
				Package string                            `json:"package"`
			} `json:"version"`
			Capabilities []string `json:"capabilities"`
		} `json:"QMP"`
	}
	raw, _ := json.Marshal(m)
	if err := json.Unmarshal(raw, &g); err != nil || g.QMP.Version.QEMU.Major != 7 || g.QMP.Version.QEMU.Minor != 2 ||
		g.QMP.Capabilities == nil || !strings.HasPrefix(g.QMP.Version.Package, "xen-dm-go") {
		c.t.Fatalf("greeting %s", raw)
	}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := c.c.Write([]byte(s + "\r\n")); err != nil {
		c.t.Fatal(err)
	}
}

// sendFD sends the first byte with SCM_RIGHTS and the rest with write(),
// as libxl__sendmsg_fds does.
func (c *client) sendFD(s string, f *os.File) {
	c.t.Helper()
	msg := []byte(s + "\r\n")
	if _, _, err := c.c.WriteMsgUnix(msg[:1], unix.UnixRights(int(f.Fd())), nil); err != nil {
		c.t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // let the server read the byte alone
	if _, err := c.c.Write(msg[1:]); err != nil {
		c.t.Fatal(err)
	}
}

// cmd sends a command and returns the reply, skipping events.
func (c *client) cmd(s string) map[string]json.RawMessage {
	c.t.Helper()
	c.send(s)
	return c.reply()
}

func (c *client) reply() map[string]json.RawMessage {
	c.t.Helper()
	for {
		m := c.line()
		if _, ev := m["event"]; !ev {
			return m
		}
	}
}

func (c *client) caps() {
	c.t.Helper()
	c.greeting()
	r := c.cmd(`{"execute":"qmp_capabilities","id":2020372737}`)
	expectReturn(c.t, r, `2020372737`)
}

func expectReturn(t *testing.T, r map[string]json.RawMessage, id string) json.RawMessage {
	t.Helper()
	if _, bad := r["error"]; bad {
		t.Fatalf("error reply: %s", mustJSON(r))
	}
	if string(r["id"]) != id {
		t.Fatalf("id %s, want %s (%s)", r["id"], id, mustJSON(r))
	}
	ret, ok := r["return"]
	if !ok {
		t.Fatalf("no return: %s", mustJSON(r))
	}
	return ret
}

func expectError(t *testing.T, r map[string]json.RawMessage, class, descPart, id string) {
	t.Helper()
	var e Error
	if err := json.Unmarshal(r["error"], &e); err != nil || e.Class != class || !strings.Contains(e.Desc, descPart) || e.Desc == "" {
		t.Fatalf("want %s %q, got %s", class, descPart, mustJSON(r))
	}
	if string(r["id"]) != id {
		t.Fatalf("error id %s, want %q", r["id"], id)
	}
}

func mustJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

// The create sequence of §2.3 and dm-argv.txt: post-start queries on one
// connection, cont on another.
func TestLibxlCreateSequence(t *testing.T) {
	ts := startServer(t, Options{})
	c := dial(t, ts.path)
	c.caps()
	ret := expectReturn(t, c.cmd(`{"execute":"query-chardev","id":2020372736}`), "2020372736")
	var cds []ChardevInfo
	json.Unmarshal(ret, &cds)
	if len(cds) != 2 || cds[1].Label != "serial0" || cds[1].Filename != "pty:/dev/pts/7" {
		t.Fatalf("query-chardev %s", ret)
	}
	ret = expectReturn(t, c.cmd(`{"execute":"query-vnc","id":2020372738}`), "2020372738")
	if string(ret) != `{"enabled":false}` {
		t.Fatalf("query-vnc %s", ret)
	}
	c.c.Close()

	c = dial(t, ts.path)
	c.caps()
	ret = expectReturn(t, c.cmd(`{"execute":"cont","id":2020372736}`), "2020372736")
	ts.b.mu.Lock()
	conts := ts.b.conts
	ts.b.mu.Unlock()
	if string(ret) != "{}" || conts != 1 {
		t.Fatalf("cont %s", ret)
	}
	// cont while running succeeds again.
	expectReturn(t, c.cmd(`{"execute":"cont","id":5}`), "5")
}

// The save sequence: query-cpus-fast, dirty log on, stop, add-fd with the
// fd on the first byte, xen-save-devices-state to /dev/fdset/0, dirty log
// off; each operation on a new connection as libxl does.
func TestLibxlSaveSequence(t *testing.T) {
	ts := startServer(t, Options{})
	c := dial(t, ts.path)
	c.caps()
	ret := expectReturn(t, c.cmd(`{"execute":"query-cpus-fast","id":2020372736}`), "2020372736")
	var cpus []CPUInfoFast
	json.Unmarshal(ret, &cpus)
	if len(cpus) != 2 || cpus[1].CPUIndex != 1 {
		t.Fatalf("cpus %s", ret)
	}
	c.c.Close()

	c = dial(t, ts.path)
	c.caps()
	expectReturn(t, c.cmd(`{"execute":"xen-set-global-dirty-log","id":2020372736,"arguments":{"enable":true}}`), "2020372736")
	c.c.Close()

	c = dial(t, ts.path)
	c.caps()
	c.send(`{"execute":"stop","id":2020372736}`)
	ev := c.line()
	if string(ev["event"]) != `"STOP"` || ev["timestamp"] == nil {
		t.Fatalf("want STOP event first, got %s", mustJSON(ev))
	}
	expectReturn(t, c.reply(), "2020372736")

	path := filepath.Join(t.TempDir(), "qemu-save.1")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	c.sendFD(`{"execute":"add-fd","id":2020372738}`, f)
	f.Close()
	ret = expectReturn(t, c.reply(), "2020372738")
	var added struct {
		FDSet *int64 `json:"fdset-id"`
		FD    *int   `json:"fd"`
	}
	json.Unmarshal(ret, &added)
	if added.FDSet == nil || *added.FDSet != 0 || added.FD == nil || *added.FD < 3 {
		t.Fatalf("add-fd %s", ret)
	}
	expectReturn(t, c.cmd(`{"execute":"xen-save-devices-state","id":2020372739,"arguments":{"live":false,"filename":"/dev/fdset/0"}}`), "2020372739")
	c.c.Close()
	if b, _ := os.ReadFile(path); string(b) != "device-state" {
		t.Fatalf("save file %q", b)
	}

	c = dial(t, ts.path)
	c.caps()
	expectReturn(t, c.cmd(`{"execute":"xen-set-global-dirty-log","id":2020372736,"arguments":{"enable":false}}`), "2020372736")
	// The fdset was closed with the connection that added it.
	expectError(t, c.cmd(`{"execute":"xen-save-devices-state","id":1,"arguments":{"live":false,"filename":"/dev/fdset/0"}}`),
		ClassGeneric, "does not exist", "1")
	ts.b.mu.Lock()
	defer ts.b.mu.Unlock()
	if fmt.Sprint(ts.b.dirty) != "[true false]" || fmt.Sprint(ts.b.saved) != "[false]" || ts.b.stops != 1 {
		t.Fatalf("backend saw dirty %v saved %v stops %d", ts.b.dirty, ts.b.saved, ts.b.stops)
	}
}

func TestSaveErrorIsGeneric(t *testing.T) {
	ts := startServer(t, Options{})
	ts.b.mu.Lock()
	ts.b.saveErr = errors.New("device state save is not supported yet")
	ts.b.mu.Unlock()
	c := dial(t, ts.path)
	c.caps()
	p := filepath.Join(t.TempDir(), "x")
	expectError(t, c.cmd(`{"execute":"xen-save-devices-state","id":"s","arguments":{"filename":"`+p+`"}}`),
		ClassGeneric, "not supported yet", `"s"`)
}

func TestMalformedInput(t *testing.T) {
	ts := startServer(t, Options{})
	c := dial(t, ts.path)
	c.greeting()
	// Before negotiation everything but qmp_capabilities is refused.
	expectError(t, c.cmd(`{"execute":"query-status","id":1}`), ClassCommandNotFound, "Expecting capabilities negotiation", "1")
	expectReturn(t, c.cmd(`{"execute":"qmp_capabilities","id":{"a":[1,"}"]}}`), `{"a":[1,"}"]}`)
	expectError(t, c.cmd(`{"execute":"qmp_capabilities","id":3}`), ClassCommandNotFound, "already complete", "3")

	expectError(t, c.cmd(`{"execute": }`), ClassGeneric, "JSON parse error", "")
	expectError(t, c.cmd(`hello world`), ClassGeneric, "JSON parse error", "")
	expectError(t, c.cmd(`["execute"]`), ClassGeneric, "must be a JSON object", "")
	expectError(t, c.cmd(`{"id":7}`), ClassGeneric, "lacks member 'execute'", "7")
	expectError(t, c.cmd(`{"execute":42,"id":8}`), ClassGeneric, "'execute' must be a string", "8")
	expectError(t, c.cmd(`{"execute":"stop","arguments":[],"id":9}`), ClassGeneric, "'arguments' must be an object", "9")
	expectError(t, c.cmd(`{"execute":"stop","bogus":1,"id":10}`), ClassGeneric, "'bogus' is unexpected", "10")
	expectError(t, c.cmd(`{"execute":"frob","id":"abc"}`), ClassCommandNotFound, "The command frob has not been found", `"abc"`)
	expectError(t, c.cmd(`{"execute":"query-cpus","id":11}`), ClassCommandNotFound, "query-cpus", "11")
	expectError(t, c.cmd(`{"execute":"xen-set-global-dirty-log","id":12}`), ClassGeneric, "Parameter 'enable' is missing", "12")
	expectError(t, c.cmd(`{"execute":"xen-set-global-dirty-log","id":13,"arguments":{"enable":"yes"}}`), ClassGeneric, "expected: boolean", "13")
	expectError(t, c.cmd(`{"execute":"xen-set-global-dirty-log","id":14,"arguments":{"enable":null}}`), ClassGeneric, "expected: boolean", "14")
	expectError(t, c.cmd(`{"execute":"xen-set-global-dirty-log","id":15,"arguments":{"enable":true,"x":1}}`), ClassGeneric, "'x' is unexpected", "15")
	expectError(t, c.cmd(`{"execute":"add-fd","id":16}`), ClassGeneric, "No file descriptor", "16")
	// ids of every JSON kind are echoed verbatim.
	for _, id := range []string{`"str"`, `-1.5e3`, `null`, `[1,2]`, `true`, `18446744073709551615`} {
		expectReturn(t, c.cmd(`{"execute":"query-status","id":`+id+`}`), id)
	}
	// Pretty-printed, multi-line input works; two commands in one write too.
	c.send("{\n  \"execute\": \"query-status\",\n  \"id\": 20\n}")
	ret := expectReturn(t, c.reply(), "20")
	if string(ret) != `{"running":true,"singlestep":false,"status":"running"}` {
		t.Fatalf("query-status %s", ret)
	}
	c.send(`{"execute":"query-version","id":21}{"execute":"query-vnc","id":22}`)
	ret = expectReturn(t, c.reply(), "21")
	if !strings.Contains(string(ret), `"major":7`) {
		t.Fatalf("query-version %s", ret)
	}
	expectReturn(t, c.reply(), "22")
	// Strings with braces and escaped quotes don't confuse framing.
	expectError(t, c.cmd(`{"execute":"x\"}{","id":"}\\"}`), ClassCommandNotFound, `x"}{`, `"}\\"`)
}

func TestHugeLineClosesConnection(t *testing.T) {
	ts := startServer(t, Options{MaxMessage: 4096})
	c := dial(t, ts.path)
	c.caps()
	c.send(`{"execute":"query-status","id":"` + strings.Repeat("x", 10000) + `"}`)
	expectError(t, c.reply(), ClassGeneric, "too long", "")
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.br.ReadByte(); err == nil {
		t.Fatal("connection still open after an over-long message")
	}
	// The server survives and serves the next client.
	c2 := dial(t, ts.path)
	c2.caps()
	expectReturn(t, c2.cmd(`{"execute":"query-status","id":1}`), "1")
}

func TestDefaultMaxIsOneMiB(t *testing.T) {
	ts := startServer(t, Options{})
	c := dial(t, ts.path)
	c.caps()
	big := strings.Repeat("y", MaxMessage+10)
	go c.c.Write([]byte(`{"execute":"query-status","id":"` + big + "\"}\r\n"))
	expectError(t, c.reply(), ClassGeneric, "too long", "")
}

func TestOneClientAtATime(t *testing.T) {
	ts := startServer(t, Options{})
	c1 := dial(t, ts.path)
	c1.caps()
	c2 := dial(t, ts.path) // waits in the backlog
	got := make(chan struct{})
	go func() {
		c2.br.Peek(1)
		close(got)
	}()
	select {
	case <-got:
		t.Fatal("second client served while the first is connected")
	case <-time.After(100 * time.Millisecond):
	}
	c1.c.Close()
	<-got
	c2.caps()
	expectReturn(t, c2.cmd(`{"execute":"query-status","id":1}`), "1")
}

// dm_restrict: libxl listens, connects and queues query-status before the
// device model even runs, then hands the listening fd over with fd=N.
func TestListenFDWithQueuedClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qmp-libxl-7")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	c := dial(t, path)
	c.send(`{"execute":"qmp_capabilities","id":1}`)
	c.send(`{"execute":"query-status","id":2}`)

	l, err := ListenFD(fd)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(fd) // ListenFD dup'ed it
	s := NewServer(Options{Name: "libxl-cmd", Package: "xen-dm-go t", Major: 7, Minor: 2, Log: quiet})
	b := newFakeBackend()
	b.state = RunState{StatusPrelaunch, false}
	RegisterStandard(s, b)
	go s.Serve(l)
	defer s.Close()
	c.greeting()
	expectReturn(t, c.reply(), "1")
	ret := expectReturn(t, c.reply(), "2")
	if !strings.Contains(string(ret), `"status":"prelaunch"`) || !strings.Contains(string(ret), `"running":false`) {
		t.Fatalf("query-status %s", ret)
	}
	s.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("closing an fd listener removed libxl's socket path: %v", err)
	}
	if _, err := ListenFD(0x7fff); err == nil {
		t.Fatal("ListenFD on a bad fd")
	}
	f, _ := os.CreateTemp(t.TempDir(), "x")
	if _, err := ListenFD(int(f.Fd())); err == nil {
		t.Fatal("ListenFD on a regular file")
	}
}

func TestStaleSocketAndNonSocket(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s")
	l, err := ListenPath(path)
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close() // leaves a stale socket behind
	l, err = ListenPath(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("socket not removed on close")
	}
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := ListenPath(path); err == nil {
		t.Fatal("regular file replaced")
	}
}

// An fd sent together with the whole command (not just its first byte)
// also attaches to it; unused fds are closed, and fds never leak into the
// next command.
func TestFDWithWholeMessageAndStrayFD(t *testing.T) {
	ts := startServer(t, Options{})
	c := dial(t, ts.path)
	c.caps()
	r, w, _ := os.Pipe()
	defer r.Close()
	msg := []byte(`{"execute":"add-fd","arguments":{"fdset-id":5,"opaque":"rdonly:/x"},"id":1}` + "\r\n")
	if _, _, err := c.c.WriteMsgUnix(msg, unix.UnixRights(int(w.Fd())), nil); err != nil {
		t.Fatal(err)
	}
	ret := expectReturn(t, c.reply(), "1")
	if !strings.Contains(string(ret), `"fdset-id":5`) {
		t.Fatalf("add-fd %s", ret)
	}
	ret = expectReturn(t, c.cmd(`{"execute":"query-fdsets","id":2}`), "2")
	if !strings.Contains(string(ret), `"opaque":"rdonly:/x"`) {
		t.Fatalf("query-fdsets %s", ret)
	}
	// An fd sent with a command that doesn't use it is closed.
	r2, w2, _ := os.Pipe()
	c.sendFD(`{"execute":"query-status","id":3}`, w2)
	w2.Close()
	expectReturn(t, c.reply(), "3")
	r2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r2.Read(make([]byte, 1)); err == nil {
		t.Fatal("stray fd kept open")
	}
	expectError(t, c.cmd(`{"execute":"add-fd","id":4}`), ClassGeneric, "No file descriptor", "4")
	expectReturn(t, c.cmd(`{"execute":"remove-fd","id":5,"arguments":{"fdset-id":5}}`), "5")
	w.Close()
	r.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Fatal("removed fd kept open")
	}
}

func TestBasicTableAndExtension(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stat.sock")
	l, _ := ListenPath(path)
	s := NewServer(Options{Name: "libxenstat-cmd", Package: "xen-dm-go", Major: 7, Minor: 2, Log: quiet})
	RegisterBasic(s, newFakeBackend())
	s.Handle("x-echo", func(_ context.Context, r *Request) (any, error) {
		var a struct {
			V json.RawMessage `qmp:"v"`
		}
		if err := r.Decode(&a); err != nil {
			return nil, err
		}
		return a.V, nil
	})
	s.Handle("x-panic", func(context.Context, *Request) (any, error) { panic("boom") })
	go s.Serve(l)
	defer s.Close()
	c := dial(t, path)
	c.caps()
	expectError(t, c.cmd(`{"execute":"stop","id":1}`), ClassCommandNotFound, "stop", "1")
	expectError(t, c.cmd(`{"execute":"query-blockstats","id":2}`), ClassCommandNotFound, "query-blockstats", "2")
	ret := expectReturn(t, c.cmd(`{"execute":"x-echo","id":3,"arguments":{"v":[1,{"a":2}]}}`), "3")
	if string(ret) != `[1,{"a":2}]` {
		t.Fatalf("echo %s", ret)
	}
	expectError(t, c.cmd(`{"execute":"x-panic","id":4}`), ClassGeneric, "boom", "4")
	expectReturn(t, c.cmd(`{"execute":"query-commands","id":5}`), "5")
}

func TestEventsAndClose(t *testing.T) {
	ts := startServer(t, Options{})
	ts.s.Event("EARLY", nil) // no client: dropped
	c := dial(t, ts.path)
	c.greeting()
	ts.s.Event("BEFORE_CAPS", nil) // not negotiated: dropped
	expectReturn(t, c.cmd(`{"execute":"qmp_capabilities","id":1}`), "1")
	ts.s.Event("SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"})
	m := c.line()
	if string(m["event"]) != `"SHUTDOWN"` || !strings.Contains(string(m["data"]), `"guest":true`) {
		t.Fatalf("event %s", mustJSON(m))
	}
	done := make(chan struct{})
	go func() { ts.s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hangs with a client connected")
	}
	if _, err := os.Stat(ts.path); !os.IsNotExist(err) {
		t.Fatal("socket path left behind")
	}
}

func TestGreetingBytes(t *testing.T) {
	ts := startServer(t, Options{Package: "xen-dm-go 1.2"})
	c := dial(t, ts.path)
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := c.br.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	want := `{"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0},"package":"xen-dm-go 1.2"},"capabilities":[]}}` + "\r\n"
	if line != want {
		t.Fatalf("greeting\n got %q\nwant %q", line, want)
	}
	c.send(`{"execute":"qmp_capabilities","id":2020372737}`)
	line, _ = c.br.ReadString('\n')
	if line != `{"return":{},"id":2020372737}`+"\r\n" {
		t.Fatalf("caps reply %q", line)
	}
}
