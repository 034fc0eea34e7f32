package dm

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/config"
	"github.com/xen-dm-go/xen-dm-go/dm/qmp"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

var wantSteps = []string{
	"open privcmd", "open evtchn", "open xenstore", "create ioreq server", "map ioreq pages",
	"open guest memory", "build machine", "enable ioreq server", "bind event channels", "start ioreq loop", "start QMP",
}

func TestStartupAndTeardown(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOpt{vcpus: 3, extra: "-serial null -drive file=" + img + ",if=ide,index=0,media=disk,format=raw,cache=writeback"})
	c := e.c
	if got := c.Steps(); !reflect.DeepEqual(got, wantSteps) {
		t.Fatalf("steps with undo:\n got %q\nwant %q", got, wantSteps)
	}
	// xenstore: libxl's start-up handshake.
	if v, ok := e.p.xs.Read(StatePath(testDom)); !ok || v != "running" {
		t.Fatalf("state node %q %v", v, ok)
	}
	s := e.server()
	if !s.Enabled() || s.Mode != xen.BufIoreqAtomic || s.Mapped() != 1 {
		t.Fatalf("server enabled %v mode %v mapped %d", s.Enabled(), s.Mode, s.Mapped())
	}
	// Ranges: ports of the chipset, PM, CMOS, xen-platform, UART; PCI functions.
	for _, p := range []struct{ base, n uint64 }{{0xcf8, 8}, {0x70, 2}, {0xb004, 2}, {0xb2, 2}, {0xafe0, 4}, {0x10, 16}, {0x3f8, 8}, {0x1f0, 8}, {0x3f6, 1}, {0x170, 8}, {0x376, 1}, {0x60, 1}, {0x64, 1}, {0x92, 1}} {
		if !s.Claims(xen.IORangePort, p.base, p.n) {
			t.Errorf("port range %#x+%d not registered: %v", p.base, p.n, s.Ranges(xen.IORangePort))
		}
	}
	var sbdfs []string
	for _, r := range s.Ranges(xen.IORangePCI) {
		sbdfs = append(sbdfs, r.String())
	}
	if want := []string{"pci 0000:00:00.0", "pci 0000:00:01.0", "pci 0000:00:01.1", "pci 0000:00:01.3", "pci 0000:00:02.0"}; !reflect.DeepEqual(sbdfs, want) {
		t.Errorf("PCI ranges %q, want %q", sbdfs, want)
	}
	if n := e.p.evs[0].BoundPorts(); n != 4 {
		t.Errorf("bound ports %d, want 3 vCPUs + buffered", n)
	}
	if c.Machine().VGA != "cirrus-vga" || len(c.Machine().Disks) != 1 || c.Machine().Disks[0].Backend == nil {
		t.Errorf("machine %+v", c.Machine())
	}
	if st := c.RunState(); st.Status != "running" || !st.Running {
		t.Errorf("run state %+v", st)
	}

	c.Teardown()
	if e.p.dm.Servers() != 0 {
		t.Error("ioreq server not destroyed")
	}
	if s.Mapped() != 0 {
		t.Error("ioreq pages not unmapped")
	}
	if e.p.evs[0].BoundPorts() != 0 {
		t.Error("event channels not unbound")
	}
	if e.p.hypervisorOpen() {
		t.Error("privcmd not closed")
	}
	if _, err := os.Stat(e.qmp); !os.IsNotExist(err) {
		t.Error("QMP socket left behind")
	}
	if _, err := os.Stat(e.stat); !os.IsNotExist(err) {
		t.Error("libxenstat socket left behind")
	}
	waitUntil(t, "xenstore connection closed", func() bool { return e.p.xs.Conns() == 0 })
	c.Teardown() // idempotent
	// The destroy came last among the DM_OPs, after the ports were unbound.
	calls := e.p.dm.Calls()
	if last := calls[len(calls)-1]; last.Op != xentest.OpDestroyIoreqServer {
		t.Errorf("last DM_OP %v", last)
	}
}

func TestStartupFailureUnwinds(t *testing.T) {
	e := newEnv(t, envOpt{noRun: true})
	e.p.dm.Fail(xentest.OpSetIoreqServerState, unix.ESRCH)
	err := e.c.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "enable ioreq server") || !errors.Is(err, unix.ESRCH) {
		t.Fatalf("Start: %v", err)
	}
	e.c.Teardown()
	if e.p.dm.Servers() != 0 || e.p.hypervisorOpen() {
		t.Fatal("server or privcmd left after a failed start")
	}
	if _, err := os.Stat(e.qmp); !os.IsNotExist(err) {
		t.Fatal("QMP socket created although start failed earlier")
	}

	e = newEnv(t, envOpt{noRun: true})
	e.p.failOpen = "evtchn"
	if err := e.c.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "open evtchn") {
		t.Fatalf("Start: %v", err)
	}
	e.c.Teardown()
	if e.p.hypervisorOpen() {
		t.Fatal("privcmd left open")
	}
}

func TestStartInterrupted(t *testing.T) {
	e := newEnv(t, envOpt{noRun: true})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.c.Start(ctx); err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Start: %v", err)
	}
	e.c.Teardown()
}

// Run: start, serve, and tear down when the signal context ends.
func TestRunUntilSignal(t *testing.T) {
	e := newEnv(t, envOpt{noRun: true})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- Run(ctx, e.c.cfg, e.c.opts) }()
	waitUntil(t, "running", func() bool { v, _ := e.p.xs.Read(StatePath(testDom)); return v == "running" })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
	if e.p.dm.Servers() != 0 {
		t.Fatal("server not destroyed")
	}
}

func TestStopCont(t *testing.T) {
	e := newEnv(t, envOpt{})
	ctx := context.Background()
	if err := e.c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if e.server().Enabled() || e.c.RunState().Status != "paused" {
		t.Fatal("stop did not disable the server")
	}
	if err := e.c.Stop(ctx); err != nil {
		t.Fatal("second stop", err)
	}
	if err := e.c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if !e.server().Enabled() || !e.c.RunState().Running {
		t.Fatal("cont did not enable the server")
	}
	if err := e.c.Cont(ctx); err != nil {
		t.Fatal("cont while running", err)
	}
	// Requests still flow after stop/cont.
	e.out(0x70, 1, 0x3d)
	if v := e.in(0x71, 1); v != 0x02 {
		t.Fatalf("CMOS boot order byte %#x, want 0x02 (c)", v)
	}
}

// -S (dm_restrict): prelaunch, nothing in xenstore until cont.
func TestStartPausedWritesStateOnlyOnCont(t *testing.T) {
	e := newEnv(t, envOpt{extra: "-S"})
	if _, ok := e.p.xs.Read(StatePath(testDom)); ok {
		t.Fatal("state written before cont under -S")
	}
	q := dialQMP(t, e.qmp)
	q.caps()
	if r := string(q.ok(`{"execute":"query-status","id":2}`)); !strings.Contains(r, `"status":"prelaunch"`) || !strings.Contains(r, `"running":false`) {
		t.Fatalf("query-status %s", r)
	}
	time.Sleep(20 * time.Millisecond)
	if _, ok := e.p.xs.Read(StatePath(testDom)); ok {
		t.Fatal("state written before cont under -S")
	}
	q.ok(`{"execute":"cont","id":3}`)
	if v, ok := e.p.xs.Read(StatePath(testDom)); !ok || v != "running" {
		t.Fatalf("state after cont: %q %v", v, ok)
	}
	if r := string(q.ok(`{"execute":"query-status","id":4}`)); !strings.Contains(r, `"status":"running"`) {
		t.Fatalf("query-status %s", r)
	}
}

// The dm_restrict command line: libxl pre-opens the QMP socket, queues
// query-status before exec, and passes fd=N with -S and
// -xen-domid-restrict.
func TestDMRestrictFD(t *testing.T) {
	dir, _ := os.MkdirTemp("", "dmr")
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "qmp-libxl-7")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(fd, 1)
	// libxl connects before the device model runs.
	pre := make(chan *qmpClient, 1)
	go func() { pre <- dialQMP(t, path) }()
	time.Sleep(20 * time.Millisecond)

	var e *env
	argv := strings.Fields("-xen-domid 7 -no-shutdown -chardev socket,id=libxl-cmd,fd=" + strconv.Itoa(fd) +
		",server=on,wait=off -S -mon chardev=libxl-cmd,mode=control -nodefaults -no-user-config -name g1 " +
		"-vnc none -display none -serial null -boot order=cda -smp 2,maxcpus=2 " +
		"-device rtl8139,id=nic0,netdev=net0,mac=00:16:3e:00:00:01 " +
		"-netdev type=tap,id=net0,ifname=vif7.0-emu,br=xenbr0,script=no,downscript=no " +
		"-xen-domid-restrict -machine pc,accel=xen,suppress-vmdesc=on -m 1024")
	var taps []string
	e = newEnv(t, envOpt{argv: argv, opts: func(o *Options) {
		o.OpenTAP = func(name string) (io.Closer, error) { taps = append(taps, name); return io.NopCloser(nil), nil }
	}})
	q := <-pre
	q.caps()
	if r := string(q.ok(`{"execute":"query-status","id":2}`)); !strings.Contains(r, `"prelaunch"`) {
		t.Fatalf("query-status %s", r)
	}
	if !e.p.restricted.Load() {
		t.Error("privcmd not restricted")
	}
	if !reflect.DeepEqual(taps, []string{"vif7.0-emu"}) {
		t.Errorf("taps %q", taps)
	}
	if e.c.Machine().Platform != nil {
		t.Error("xen-platform present on pc,accel=xen")
	}
	if len(e.server().Ranges(xen.IORangePCI)) != 4 {
		t.Errorf("PCI ranges %v", e.server().Ranges(xen.IORangePCI))
	}
	q.ok(`{"execute":"cont","id":3}`)
	// Under -xen-domid-restrict xenstore was closed (as QEMU does).
	if _, ok := e.p.xs.Read(StatePath(testDom)); ok {
		t.Error("state written although xenstore was closed by -xen-domid-restrict")
	}
	e.c.Teardown()
	if _, err := os.Stat(path); err != nil {
		t.Error("libxl's socket path removed by the device model")
	}
}

// -incoming without a DeviceState implementation fails clearly, before the
// guest could run with lost state.
func TestIncomingUnsupported(t *testing.T) {
	r, w, _ := os.Pipe()
	defer w.Close()
	e := newEnv(t, envOpt{extra: "-incoming fd:15", noRun: true, opts: func(o *Options) {
		o.IncomingFile = func(fd int) *os.File {
			if fd != 15 {
				t.Errorf("fd %d", fd)
			}
			return r
		}
	}})
	err := e.c.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "not supported yet") {
		t.Fatalf("Start: %v", err)
	}
	e.c.Teardown()
	if e.p.dm.Servers() != 0 {
		t.Fatal("server left")
	}
}

// stateStub is a DeviceState that writes/reads a marker.
type stateStub struct{ loaded, saved chan string }

func (s stateStub) Save(_ context.Context, w io.Writer, m *Machine, live bool) error {
	_, err := io.WriteString(w, "XDMSTATE")
	s.saved <- map[bool]string{true: "live", false: "nonlive"}[live]
	return err
}

func (s stateStub) Load(_ context.Context, r io.Reader, m *Machine) error {
	b, err := io.ReadAll(r)
	s.loaded <- string(b)
	return err
}

func TestIncomingWithDeviceState(t *testing.T) {
	r, w, _ := os.Pipe()
	w.WriteString("blob")
	w.Close()
	st := stateStub{loaded: make(chan string, 1), saved: make(chan string, 1)}
	for _, paused := range []bool{false, true} {
		extra := "-incoming fd:15"
		if paused {
			extra += " -S"
			r, w, _ = os.Pipe()
			w.Close()
		}
		e := newEnv(t, envOpt{extra: extra, opts: func(o *Options) {
			o.DeviceState = st
			o.IncomingFile = func(int) *os.File { return r }
		}})
		<-st.loaded
		want := "running"
		if paused {
			want = "paused"
		}
		if s := e.c.RunState().Status; s != want {
			t.Fatalf("-S=%v: status %s want %s", paused, s, want)
		}
		_, wrote := e.p.xs.Read(StatePath(testDom))
		if wrote == paused {
			t.Fatalf("-S=%v: xenstore written=%v", paused, wrote)
		}
	}
}

func TestLookupRunAs(t *testing.T) {
	if u, g, err := lookupRunAs("65536:65537"); err != nil || u != 65536 || g != 65537 {
		t.Fatal(u, g, err)
	}
	if u, _, err := lookupRunAs("root"); err != nil || u != 0 {
		t.Skip("no passwd entry for root here")
	}
	if _, _, err := lookupRunAs("no-such-user-xdm"); err == nil {
		t.Fatal("unknown user accepted")
	}
}

// A guest poweroff through PM1a_CNT calls remote_shutdown before the ioreq
// completes, and the device model keeps running (-no-shutdown).
func TestGuestPowerOffAndReset(t *testing.T) {
	e := newEnv(t, envOpt{})
	e.out(0xb004, 2, 0x2000) // SLP_EN, SLP_TYP=0 (S5)
	if got := e.p.dm.Shutdowns(); len(got) != 1 || got[0] != xen.ShutdownPoweroff {
		t.Fatalf("shutdowns after the ioreq completed: %v", got)
	}
	if st := e.c.RunState(); st.Status != qmp.StatusShutdown || st.Running {
		t.Fatalf("status %+v", st)
	}
	// Still serving.
	e.out(0xcf9, 1, 0x06)
	if got := e.p.dm.Shutdowns(); len(got) != 2 || got[1] != xen.ShutdownReboot {
		t.Fatalf("shutdowns %v", got)
	}
	e.out(0x64, 1, 0xfe) // i8042 pulse reset line
	if got := e.p.dm.Shutdowns(); len(got) != 3 || got[2] != xen.ShutdownReboot {
		t.Fatalf("shutdowns after 0x64 <- 0xfe: %v", got)
	}
	// cont after poweroff is refused like QEMU.
	if err := e.c.Cont(context.Background()); err == nil {
		t.Fatal("cont after guest poweroff")
	}
}

func TestConfigLabArgvStartsEverything(t *testing.T) {
	// The lab argv, with its paths replaced: serial pty and the libxenstat
	// monitor included.
	e := newEnv(t, envOpt{noRun: true})
	cfg, err := config.Parse(e.argv("-serial pty"))
	if err != nil {
		t.Fatal(err)
	}
	e.c = New(cfg, e.c.opts)
	if err := e.c.Start(context.Background()); err != nil {
		t.Skipf("start with a pty: %v", err)
	}
	defer e.c.Teardown()
	cds := e.c.Chardevs()
	if len(cds) != 3 || cds[2].Label != "serial0" || !strings.HasPrefix(cds[2].Filename, "pty:/dev/pts/") {
		t.Fatalf("chardevs %+v", cds)
	}
}
