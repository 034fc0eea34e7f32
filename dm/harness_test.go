package dm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/config"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

const testDom = 7

var quiet = slog.New(slog.DiscardHandler)

// testLog returns a logger that writes to t.Log when -v, else discards.
func testLog(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		w := &tWriter{t: t}
		t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return quiet
}

// tWriter logs to t until the test ends (goroutines may log later).
type tWriter struct {
	t    *testing.T
	mu   sync.Mutex
	done bool
}

func (w *tWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// testPlatform is a Platform over dm/xen/xentest: a fake DeviceModel with an
// event-channel hub, fake guest RAM behind the real xen.MapCache, and a fake
// xenstored on a unix socket.
type testPlatform struct {
	hub *xentest.EvtchnHub
	dm  *xentest.DeviceModel
	ram *xentest.GuestRAM
	xs  *xentest.XenstoreServer

	mu         sync.Mutex
	hvOpen     bool
	evs        []*xentest.Evtchn
	xsClients  []*xenstore.Client
	restricted atomic.Bool
	failOpen   string // "privcmd", "evtchn", "xenstore"
}

func newTestPlatform(t *testing.T, vcpus int) *testPlatform {
	t.Helper()
	hub := xentest.NewEvtchnHub()
	ram, err := xentest.NewGuestRAM(testDom, 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ram.Close() })
	xs, err := xentest.NewXenstoreServer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xs.Close() })
	return &testPlatform{hub: hub, dm: xentest.NewDeviceModel(testDom, vcpus, hub), ram: ram, xs: xs}
}

func (p *testPlatform) OpenHypervisor(dom xen.Domid) (Hypervisor, error) {
	if p.failOpen == "privcmd" {
		return nil, fmt.Errorf("open /dev/xen/privcmd: no such device")
	}
	if dom != testDom {
		return nil, fmt.Errorf("wrong domain %d", dom)
	}
	p.mu.Lock()
	p.hvOpen = true
	p.mu.Unlock()
	return &testHV{p: p}, nil
}

func (p *testPlatform) OpenEventChannel() (EventChannel, error) {
	if p.failOpen == "evtchn" {
		return nil, fmt.Errorf("open /dev/xen/evtchn: no such device")
	}
	e := p.hub.Open(0)
	p.mu.Lock()
	p.evs = append(p.evs, e)
	p.mu.Unlock()
	return e, nil
}

func (p *testPlatform) OpenXenstore() (Xenstore, error) {
	if p.failOpen == "xenstore" {
		return nil, fmt.Errorf("xenstored not running")
	}
	c, err := xenstore.Dial(p.xs.SocketPath())
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.xsClients = append(p.xsClients, c)
	p.mu.Unlock()
	return c, nil
}

func (p *testPlatform) hypervisorOpen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.hvOpen
}

type testHV struct {
	p  *testPlatform
	mc *xen.MapCache
}

func (h *testHV) DeviceModel() DeviceModel { return h.p.dm }
func (h *testHV) GuestMemory(dirty hw.DirtyReporter) (GuestMemory, error) {
	h.mc = xen.NewMapCache(h.p.ram, testDom, xen.MapCacheOptions{Dirty: dirty, PagedOutRetries: -1})
	return h.mc, nil
}
func (h *testHV) Restrict() error { h.p.restricted.Store(true); return nil }
func (h *testHV) Close() error {
	h.p.mu.Lock()
	h.p.hvOpen = false
	h.p.mu.Unlock()
	if h.mc != nil {
		return h.mc.Close()
	}
	return nil
}

// env is one device model under test.
type env struct {
	t    *testing.T
	p    *testPlatform
	c    *Core
	dir  string
	qmp  string // libxl-cmd socket path
	stat string // libxenstat-cmd socket path
}

// argv builds a libxl-like command line; extra is appended.
func (e *env) argv(extra string) []string {
	s := fmt.Sprintf("-xen-domid %d -no-shutdown -chardev socket,id=libxl-cmd,path=%s,server=on,wait=off "+
		"-mon chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,path=%s,server=on,wait=off "+
		"-mon chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config -name hvm1 -vnc none -display none "+
		"-nographic -device cirrus-vga,vgamem_mb=8 -boot order=c -net none -machine xenfv,suppress-vmdesc=on -m 120 %s",
		testDom, e.qmp, e.stat, extra)
	return strings.Fields(s)
}

type envOpt struct {
	vcpus int
	extra string         // appended to argv
	argv  []string       // replaces argv
	opts  func(*Options) // tweak options
	noRun bool           // do not Start
}

func newEnv(t *testing.T, o envOpt) *env {
	t.Helper()
	if o.vcpus == 0 {
		o.vcpus = 2
	}
	// Unix socket paths must be short: t.TempDir() can exceed 108 bytes.
	dir, err := os.MkdirTemp("", "dm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &env{t: t, p: newTestPlatform(t, o.vcpus), dir: dir,
		qmp: filepath.Join(dir, "qmp-libxl"), stat: filepath.Join(dir, "qmp-stat")}
	argv := o.argv
	if argv == nil {
		argv = e.argv(o.extra)
	}
	cfg, err := config.Parse(argv)
	if err != nil {
		t.Fatalf("parse %q: %v", argv, err)
	}
	opts := Options{Platform: e.p, Log: testLog(t),
		OpenTAP: func(name string) (io.Closer, error) { return io.NopCloser(nil), nil }}
	if o.opts != nil {
		o.opts(&opts)
	}
	e.c = New(cfg, opts)
	if !o.noRun {
		if err := e.c.Start(context.Background()); err != nil {
			e.c.Teardown()
			t.Fatalf("Start: %v", err)
		}
		t.Cleanup(e.c.Teardown)
	}
	return e
}

func (e *env) server() *xentest.IoreqServer {
	s := e.p.dm.Server(e.c.ioserv)
	if s == nil {
		e.t.Fatal("no ioreq server")
	}
	return s
}

// do posts req for vcpu as Xen would and returns the completed request.
func (e *env) do(vcpu int, req xen.Ioreq) xen.Ioreq {
	e.t.Helper()
	s := e.server()
	if err := s.Post(vcpu, req); err != nil {
		e.t.Fatalf("post %v: %v", req, err)
	}
	r, err := s.WaitResponse(vcpu, 5*time.Second)
	if err != nil {
		e.t.Fatalf("response to %v: %v", req, err)
	}
	return r
}

func pio(port uint16, size uint32, read bool, data uint64) xen.Ioreq {
	r := xen.Ioreq{Addr: uint64(port), Data: data, Count: 1, Size: size, Type: xen.IoreqTypePIO}
	if read {
		r.SetDir(xen.IoreqRead)
	}
	return r
}

func (e *env) in(port uint16, size uint32) uint64 {
	e.t.Helper()
	return e.do(0, pio(port, size, true, 0)).Data
}

func (e *env) out(port uint16, size uint32, v uint64) {
	e.t.Helper()
	e.do(0, pio(port, size, false, v))
}

// recDev is a device for dispatch tests: it records accesses and reads
// back a programmable sequence.
type recDev struct {
	mu     sync.Mutex
	log    []string
	next   uint64
	writes []uint64
}

func (d *recDev) ReadPort(port uint16, size int) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.next++
	d.log = append(d.log, fmt.Sprintf("in %#x/%d", port, size))
	return uint32(d.next)
}

func (d *recDev) WritePort(port uint16, size int, v uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, fmt.Sprintf("out %#x/%d=%#x", port, size, v))
	d.writes = append(d.writes, uint64(v))
}

func (d *recDev) ReadMMIO(addr uint64, size int) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.next++
	d.log = append(d.log, fmt.Sprintf("r %#x/%d", addr, size))
	return d.next | 0xaa00000000000000
}

func (d *recDev) WriteMMIO(addr uint64, size int, v uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, fmt.Sprintf("w %#x/%d=%#x", addr, size, v))
	d.writes = append(d.writes, v)
}

func (d *recDev) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.log
	d.log = nil
	d.writes = nil
	return l
}

func (d *recDev) written() []uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]uint64(nil), d.writes...)
}

// qmpClient speaks QMP like libxl.
type qmpClient struct {
	t  *testing.T
	c  *net.UnixConn
	br *bufio.Reader
}

func dialQMP(t *testing.T, path string) *qmpClient {
	t.Helper()
	var c *net.UnixConn
	var err error
	for i := 0; i < 100; i++ { // libxl retries ENOENT/ECONNREFUSED
		if c, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"}); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	q := &qmpClient{t: t, c: c, br: bufio.NewReader(c)}
	g := q.msg()
	if _, ok := g["QMP"]; !ok {
		t.Fatalf("no greeting: %v", g)
	}
	return q
}

func (q *qmpClient) msg() map[string]json.RawMessage {
	q.t.Helper()
	q.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := q.br.ReadString('\n')
	if err != nil || !strings.HasSuffix(line, "\r\n") {
		q.t.Fatalf("read %q: %v", line, err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		q.t.Fatalf("%q: %v", line, err)
	}
	return m
}

// cmd sends a command and returns its reply (events skipped); it fails the
// test on an error reply unless wantErr.
func (q *qmpClient) cmd(s string) map[string]json.RawMessage {
	q.t.Helper()
	if _, err := q.c.Write([]byte(s + "\r\n")); err != nil {
		q.t.Fatal(err)
	}
	return q.reply()
}

func (q *qmpClient) reply() map[string]json.RawMessage {
	q.t.Helper()
	for {
		m := q.msg()
		if _, ev := m["event"]; !ev {
			return m
		}
	}
}

func (q *qmpClient) ok(s string) json.RawMessage {
	q.t.Helper()
	m := q.cmd(s)
	if _, bad := m["error"]; bad {
		q.t.Fatalf("%s: %s", s, m["error"])
	}
	return m["return"]
}

func (q *qmpClient) caps() { q.t.Helper(); q.ok(`{"execute":"qmp_capabilities","id":1}`) }

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
