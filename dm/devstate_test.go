package dm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

// A machine with everything the state covers: a disk (primary master), an
// empty CD-ROM tray (secondary master, as libxl passes it), two serial
// ports, ACPI and the platform device (xenfv).
func stateArgv(img string) string {
	return "-serial null -serial null -drive file=" + img + ",if=ide,index=0,media=disk,format=raw,cache=writeback " +
		"-drive if=none,readonly=on,id=ide-5632 -device ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0"
}

// diskImage writes a 1 MiB image of random bytes.
func diskImage(t *testing.T) (string, []byte) {
	t.Helper()
	data := make([]byte, 1<<20)
	rand.New(rand.NewSource(42)).Read(data)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return img, data
}

func (e *env) cfgWrite(devfn uint8, reg uint64, size uint32, v uint64) {
	e.t.Helper()
	e.do(0, xen.Ioreq{Addr: uint64(devfn)<<32 | reg, Data: v, Count: 1, Size: size, Type: xen.IoreqTypePCIConfig})
}

const bmBase = 0xc000 // where the tests put the IDE bus-master BAR

// driveDevices puts every device into a non-reset state through the guest's
// ports, as firmware and a running guest would, and leaves commands half
// done: a PIO data phase in the middle of a block, bytes waiting in the
// UART FIFO and in the i8042 output queue.
func driveDevices(t *testing.T, e *env) {
	t.Helper()
	m := e.c.Machine()
	// PCI: i440FX PAM, PIIX3 PIRQ routes, IDE bus master and BAR4, PM
	// scratch register, platform command and BAR0.
	e.cfgWrite(0x00, 0x5c, 4, 0x33331133)
	e.cfgWrite(0x08, 0x60, 4, 0x050b0a05)
	e.cfgWrite(0x09, 0x20, 4, bmBase|1)
	e.cfgWrite(0x09, 0x04, 2, 0x0005)
	e.cfgWrite(0x0b, 0x90, 4, 0xdead0001)
	e.cfgWrite(0x10, 0x10, 4, 0xc101)
	e.cfgWrite(0x10, 0x04, 2, 0x0003)
	// PM1a_CNT SCI_EN, GPE0 enables, APM status.
	e.out(0xb004, 2, 0x0001)
	e.out(0xafe2, 2, 0x0102)
	e.out(0xb3, 1, 0x5a)
	// CMOS NVRAM bytes, index left pointing somewhere.
	for i, v := range []byte{0x11, 0x22, 0x33, 0x44} {
		e.out(0x70, 1, uint64(0x50+i))
		e.out(0x71, 1, uint64(v))
	}
	e.out(0x70, 1, 0x45)
	// COM1: 9600 8N1, FIFO on (trigger 14), RX interrupt, scratch; five
	// bytes arrive, the guest reads one. COM2: different settings.
	e.out(0x3fb, 1, 0x83)
	e.out(0x3f8, 1, 0x0c)
	e.out(0x3f9, 1, 0x00)
	e.out(0x3fb, 1, 0x03)
	e.out(0x3fa, 1, 0xc1)
	e.out(0x3f9, 1, 0x01)
	e.out(0x3fc, 1, 0x0b)
	e.out(0x3ff, 1, 0x42)
	m.Serials[0].UART.Input([]byte("hello"))
	if b := e.in(0x3f8, 1); b != 'h' {
		t.Fatalf("COM1 RBR %#x", b)
	}
	e.out(0x2fb, 1, 0x1b)
	e.out(0x2ff, 1, 0x99)
	// i8042: command byte, keyboard identify (ACK + 2 ID bytes queued),
	// the guest reads the ACK; port 0x92 A20.
	e.out(0x64, 1, 0x60)
	e.out(0x60, 1, 0x47)
	e.out(0x60, 1, 0xf2)
	if b := e.in(0x60, 1); b != 0xfa {
		t.Fatalf("i8042 ACK %#x", b)
	}
	e.out(0x92, 1, 0x02)
	// xen-platform: driver product and build numbers.
	e.out(0x12, 2, 3)
	e.out(0x10, 4, 0x1234)
	// IDE primary: SET MULTIPLE 16, then IDENTIFY with 100 of its 256 words
	// read. Secondary: nIEN, the bus-master PRD pointer.
	e.out(0x1f6, 1, 0xa0)
	e.out(0x1f2, 1, 16)
	e.out(0x1f7, 1, 0xc6)
	e.out(0x1f7, 1, 0xec)
	waitUntil(t, "IDENTIFY data", func() bool { return e.in(0x1f7, 1)&0x88 == 0x08 })
	for i := 0; i < 100; i++ {
		e.in(0x1f0, 2)
	}
	e.out(0x376, 1, 0x02)
	e.out(bmBase+0x0c, 4, 0x00123400)
	e.out(bmBase+0x0a, 1, 0x60)
}

// capture takes the whole state with a fixed time, for comparisons.
func capture(m *Machine) *devstate.State {
	return CaptureState(m, false, time.Unix(1700000000, 0))
}

func diffStates(t *testing.T, what string, got, want *devstate.State) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	gv, wv := reflect.ValueOf(got).Elem(), reflect.ValueOf(want).Elem()
	for i := 0; i < gv.NumField(); i++ {
		if !reflect.DeepEqual(gv.Field(i).Interface(), wv.Field(i).Interface()) {
			g, _ := json.Marshal(gv.Field(i).Interface())
			w, _ := json.Marshal(wv.Field(i).Interface())
			t.Errorf("%s: %s differs:\n got %s\nwant %s", what, gv.Type().Field(i).Name, g, w)
		}
	}
}

// stateFile is a saved state on disk, opened read-only as libxl hands
// qemu-resume.<domid> to the device model.
func incomingFrom(t *testing.T, path string) func(int) *os.File {
	return func(fd int) *os.File {
		if fd != 15 {
			t.Errorf("-incoming fd:%d", fd)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return nil
		}
		return f
	}
}

func withDevState(o *Options) { o.DeviceState = &DevState{Log: o.Log} }

// saveTo saves e's device state into a new file through the core, as QMP
// does, after stopping the guest.
func saveTo(t *testing.T, e *env, live bool) string {
	t.Helper()
	ctx := context.Background()
	if err := e.c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "qemu-save.7")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := e.c.SaveDevicesState(ctx, f, live); err != nil {
		t.Fatal(err)
	}
	return path
}

// Save a machine whose devices the guest has driven, restore into a fresh
// machine built from the same command line: every device's state, the
// interrupt lines and the PCI routes are the same, and the guest carries on
// where it was (the rest of the IDENTIFY block, the UART FIFO, the i8042
// queue).
func TestDeviceStateRoundTrip(t *testing.T) {
	img, _ := diskImage(t)
	a := newEnv(t, envOpt{vcpus: 2, extra: stateArgv(img), opts: withDevState})
	driveDevices(t, a)
	path := saveTo(t, a, true)
	want := capture(a.c.Machine())
	// The state is not a reset state.
	u := want.IDE.Channels[0].Units[0]
	if u.DataPtr != 200 || len(u.Data) != 512 || u.MultSectors != 16 || want.IDE.Channels[1].BMAddr != 0x123400 ||
		string(want.Serials[0].RxFIFO) != "ello" || want.Serials[1].SCR != 0x99 || len(want.PS2.Queue) != 1 || want.PS2.OBData != 0xab ||
		want.CMOS.Data[0x50] != 0x11 || want.CMOS.Index != 0x45 || want.PIIX3.Config[0x60] != 0x05 ||
		want.PM.PM1aCnt != 1 || want.Platform.Build != 0x1234 || want.Host.Config[0x5c] != 0x33 {
		j, _ := json.Marshal(want)
		t.Fatalf("driveDevices left too little state: %s", j)
	}

	b := newEnv(t, envOpt{vcpus: 2, extra: stateArgv(img) + " -incoming fd:15", opts: func(o *Options) {
		withDevState(o)
		o.IncomingFile = incomingFrom(t, path)
	}})
	got := capture(b.c.Machine())
	diffStates(t, "restored", got, want)
	if st := b.c.RunState(); st.Status != "running" {
		t.Fatalf("restored status %+v", st)
	}
	for _, irq := range []uint8{1, 3, 4, 12, 14, 15} {
		if a.p.dm.ISAIRQ(irq) != b.p.dm.ISAIRQ(irq) {
			t.Errorf("ISA IRQ %d: %v saved, %v restored", irq, a.p.dm.ISAIRQ(irq), b.p.dm.ISAIRQ(irq))
		}
	}
	for link := uint8(0); link < 4; link++ {
		if a.p.dm.LinkRoute(link) != b.p.dm.LinkRoute(link) || b.p.dm.LinkRoute(link) == 0 {
			t.Errorf("link %d routed to %d, saved %d", link, b.p.dm.LinkRoute(link), a.p.dm.LinkRoute(link))
		}
	}
	if !b.server().Claims(xen.IORangePort, bmBase, 16) || !b.server().Claims(xen.IORangePort, 0xc100, 256) {
		t.Error("restored BARs not mapped")
	}
	// The guest continues: A resumes too (failed migration) and both give
	// the same next bytes.
	if err := a.c.Cont(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i := 100; i < 256; i++ {
		if x, y := a.in(0x1f0, 2), b.in(0x1f0, 2); x != y {
			t.Fatalf("IDENTIFY word %d: %#x before, %#x after restore", i, x, y)
		}
	}
	for _, p := range []uint16{0x3f8, 0x3f8, 0x3f8, 0x3f8, 0x3fd, 0x60, 0x64, 0x60, 0x71, 0x2ff, 0xb004, 0xafe2, 0xb3, 0x10} {
		if x, y := a.in(p, 1), b.in(p, 1); x != y {
			t.Fatalf("port %#x: %#x before, %#x after restore", p, x, y)
		}
	}
}

// libxl's save sequence on the QMP socket (libxl_dom_save.c,
// libxl_qmp.c: libxl__qmp_suspend_save), into a qemu-save file that held a
// longer earlier state; then restore with -incoming fd:N, with and without
// -S, and libxl's cont.
func TestQMPLibxlSaveAndRestore(t *testing.T) {
	img, _ := diskImage(t)
	a := newEnv(t, envOpt{vcpus: 2, extra: stateArgv(img), opts: withDevState})
	driveDevices(t, a)

	// libxl_retrieve_domain_configuration (xl save/migrate).
	q := dialQMP(t, a.qmp)
	q.caps()
	var cpus []map[string]any
	json.Unmarshal(q.ok(`{"execute":"query-cpus-fast","id":2020372736}`), &cpus)
	if len(cpus) != 2 {
		t.Fatalf("query-cpus-fast %v", cpus)
	}
	q.c.Close()
	// libxc setup: switch_qemu_logdirty.
	q = dialQMP(t, a.qmp)
	q.caps()
	q.ok(`{"execute":"xen-set-global-dirty-log","id":2020372737,"arguments":{"enable":true}}`)
	q.c.Close()
	// Guest suspended: stop, add-fd, xen-save-devices-state, one connection.
	path := filepath.Join(t.TempDir(), "qemu-save.7")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xaa}, 256<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	q = dialQMP(t, a.qmp)
	q.caps()
	q.ok(`{"execute":"stop","id":2020372738}`)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o600) // no O_TRUNC, as dm_stopped()
	if err != nil {
		t.Fatal(err)
	}
	r := q.sendWithFD(`{"execute":"add-fd","id":2020372739}`, f)
	f.Close()
	if !strings.Contains(string(r["return"]), `"fdset-id":0`) {
		t.Fatalf("add-fd %v", r)
	}
	start := time.Now()
	q.ok(`{"execute":"xen-save-devices-state","id":2020372740,"arguments":{"filename":"/dev/fdset/0","live":true}}`)
	took := time.Since(start)
	q.c.Close()
	q = dialQMP(t, a.qmp)
	q.caps()
	q.ok(`{"execute":"xen-set-global-dirty-log","id":2020372741,"arguments":{"enable":false}}`)
	q.c.Close()

	saved, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := devstate.Decode(saved) // refuses trailing bytes: the file was truncated
	if err != nil {
		t.Fatalf("saved file (%d bytes) does not decode: %v", len(saved), err)
	}
	if !st.Header.Live || st.Header.DomID != testDom || st.Header.VCPUs != 2 || st.Header.Machine != "xenfv" {
		t.Fatalf("header %+v", st.Header)
	}
	t.Logf("state: %d bytes, xen-save-devices-state took %v", len(saved), took)
	if len(saved) > 64<<10 {
		t.Errorf("state of %d bytes; it should stay small", len(saved))
	}
	want := capture(a.c.Machine())

	for _, paused := range []bool{false, true} {
		t.Run(fmt.Sprintf("-S=%v", paused), func(t *testing.T) {
			extra := stateArgv(img) + " -incoming fd:15"
			if paused {
				extra += " -S"
			}
			b := newEnv(t, envOpt{vcpus: 2, extra: extra, opts: func(o *Options) {
				withDevState(o)
				o.IncomingFile = incomingFrom(t, path)
			}})
			diffStates(t, "restored", capture(b.c.Machine()), want)
			v, wrote := b.p.xs.Read(StatePath(testDom))
			if wrote == paused || (wrote && v != "running") {
				t.Fatalf("xenstore state %q written=%v under -S=%v", v, wrote, paused)
			}
			q := dialQMP(t, b.qmp)
			q.caps()
			status := map[bool]string{false: "running", true: "paused"}[paused]
			if r := string(q.ok(`{"execute":"query-status","id":1}`)); !strings.Contains(r, `"status":"`+status+`"`) {
				t.Fatalf("query-status %s, want %s", r, status)
			}
			q.c.Close()
			// xl migrate-receive / restore: libxl_domain_unpause → cont.
			q = dialQMP(t, b.qmp)
			q.caps()
			q.ok(`{"execute":"cont","id":2}`)
			if v, ok := b.p.xs.Read(StatePath(testDom)); !ok || v != "running" {
				t.Fatalf("xenstore after cont %q %v", v, ok)
			}
			if r := string(q.ok(`{"execute":"query-status","id":3}`)); !strings.Contains(r, `"status":"running"`) {
				t.Fatalf("query-status after cont %s", r)
			}
			if !b.server().Enabled() {
				t.Fatal("ioreq server disabled after cont")
			}
			// The guest's disk works on the destination.
			if v := b.in(0x1f7, 1); v&0x80 != 0 {
				t.Fatalf("IDE busy after restore: %#x", v)
			}
		})
	}

	// The migration failed: libxl_domain_resume sends cont to the source,
	// which runs again, disks included.
	q = dialQMP(t, a.qmp)
	q.caps()
	q.ok(`{"execute":"cont","id":9}`)
	if !a.server().Enabled() || !a.c.RunState().Running {
		t.Fatal("source not resumed")
	}
	for i := 100; i < 256; i++ { // the rest of the IDENTIFY block
		a.in(0x1f0, 2)
	}
	readSector(t, a, 3)
}

// readSector reads sector lba of the primary master by PIO and compares it
// with the image.
func readSector(t *testing.T, e *env, lba int) {
	t.Helper()
	img, err := os.ReadFile(e.c.Machine().Disks[0].Backend.Name())
	if err != nil {
		t.Fatal(err)
	}
	e.out(0x1f6, 1, 0xe0)
	e.out(0x1f2, 1, 1)
	e.out(0x1f3, 1, uint64(lba))
	e.out(0x1f4, 1, 0)
	e.out(0x1f5, 1, 0)
	e.out(0x1f7, 1, 0x20)
	waitUntil(t, "DRQ", func() bool { return e.in(0x1f7, 1)&0x88 == 0x08 })
	got := make([]byte, 512)
	for i := 0; i < 256; i++ {
		binary.LittleEndian.PutUint16(got[2*i:], uint16(e.in(0x1f0, 2)))
	}
	if !bytes.Equal(got, img[lba*512:lba*512+512]) {
		t.Fatalf("sector read after resume differs from the image: %x… want %x…", got[:16], img[lba*512:lba*512+16])
	}
}

// What the guest unplugged stays unplugged on the destination.
func TestDeviceStateUnplugCarried(t *testing.T) {
	img, _ := diskImage(t)
	a := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	a.out(0x10, 2, 1) // unplug IDE disks
	if _, present := a.c.Machine().IDE.Present(0); present {
		t.Fatal("disk present after unplug")
	}
	path := saveTo(t, a, true)
	b := newEnv(t, envOpt{extra: stateArgv(img) + " -incoming fd:15", opts: func(o *Options) {
		withDevState(o)
		o.IncomingFile = incomingFrom(t, path)
	}})
	m := b.c.Machine()
	if _, present := m.IDE.Present(0); present || !m.Platform.Unplugged().Disks {
		t.Fatal("unplug not carried over")
	}
	if _, present := m.IDE.Present(2); !present {
		t.Fatal("the CD-ROM was unplugged too")
	}
	diffStates(t, "restored", capture(m), capture(a.c.Machine()))
}

// A state that cannot be loaded makes start-up fail before the ioreq
// server is enabled or anything is announced: the device model exits and
// libxl fails the restore.
func TestIncomingRefused(t *testing.T) {
	img, _ := diskImage(t)
	a := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	driveDevices(t, a)
	path := saveTo(t, a, false)
	good, _ := os.ReadFile(path)
	secs, _ := devstate.Parse(good)

	write := func(b []byte) string {
		p := filepath.Join(t.TempDir(), "qemu-resume.7")
		os.WriteFile(p, b, 0o600)
		return p
	}
	flip := bytes.Clone(good)
	flip[secs[3].Offset+30] ^= 1
	img2, _ := diskImage(t)
	os.Truncate(img2, 2<<20)
	for _, c := range []struct {
		name  string
		state []byte
		extra string
		vcpus int
		kind  error
		msg   string
	}{
		{"checksum", flip, stateArgv(img), 2, devstate.ErrChecksum, "CRC32C"},
		{"truncated", good[:len(good)-30], stateArgv(img), 2, devstate.ErrTruncated, "truncated"},
		{"empty", nil, stateArgv(img), 2, devstate.ErrTruncated, ""},
		{"garbage", []byte("QEVM\x00\x00\x00\x03garbage"), stateArgv(img), 2, devstate.ErrNotState, "not a xen-dm-go device state"},
		{"vcpus", good, stateArgv(img), 3, devstate.ErrMismatch, "vCPUs 2 when saved, 3 here"},
		{"no disk", good, "-serial null -serial null -drive if=none,readonly=on,id=ide-5632 -device ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0",
			2, devstate.ErrMismatch, "IDE position 0: a disk when saved, empty here"},
		{"disk size", good, stateArgv(img2), 2, devstate.ErrMismatch, "a disk of 1048576 bytes when saved, 2097152 bytes here"},
		{"serials", good, strings.Replace(stateArgv(img), "-serial null -serial null", "-serial null", 1), 2, devstate.ErrMismatch, "serial ports"},
		{"machine", good, stateArgv(img) + " -machine pc,accel=xen", 2, devstate.ErrMismatch, "machine type xenfv when saved, pc here"},
		{"acpi", good, stateArgv(img) + " -no-acpi", 2, devstate.ErrMismatch, "ACPI"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := write(c.state)
			e := newEnv(t, envOpt{vcpus: c.vcpus, noRun: true, extra: c.extra + " -incoming fd:15", opts: func(o *Options) {
				withDevState(o)
				o.IncomingFile = incomingFrom(t, p)
			}})
			err := e.c.Start(context.Background())
			e.c.Teardown()
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.msg) || !strings.Contains(err.Error(), "-incoming fd:15") {
				t.Fatalf("Start: %v", err)
			}
			for _, call := range e.p.dm.CallsOf(xentest.OpSetIoreqServerState) {
				if call.Args[1] == 1 {
					t.Fatal("ioreq server enabled although the state was refused")
				}
			}
			if _, ok := e.p.xs.Read(StatePath(testDom)); ok {
				t.Fatal("xenstore state written although the state was refused")
			}
		})
	}
}

// Page references (pages the transport elided) are handed to the pager
// before any device state is applied; without a pager they are refused.
func TestIncomingPageRefs(t *testing.T) {
	img, _ := diskImage(t)
	a := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	driveDevices(t, a)
	path := saveTo(t, a, true)
	b, _ := os.ReadFile(path)
	st, err := devstate.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	refs := []blk.Entry{{PFN: 0x100, Ref: blk.Ref{Disk: 0, Sector: 8, Hash: 1}}, {PFN: 0x101, Ref: blk.Ref{Disk: 0, Sector: 16, Hash: 2}}}
	withRefs := func(refs []blk.Entry) string {
		st.PageRefs = refs
		enc, err := devstate.Encode(st)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "qemu-resume.7")
		os.WriteFile(p, enc, 0o600)
		return p
	}

	p := withRefs(refs)
	e := newEnv(t, envOpt{noRun: true, extra: stateArgv(img) + " -incoming fd:15", opts: func(o *Options) {
		withDevState(o)
		o.IncomingFile = incomingFrom(t, p)
	}})
	err = e.c.Start(context.Background())
	e.c.Teardown()
	if err == nil || !strings.Contains(err.Error(), "no pager") {
		t.Fatalf("page references without a pager: %v", err)
	}

	var got []blk.Entry
	var cmosAtHook byte
	e = newEnv(t, envOpt{extra: stateArgv(img) + " -incoming fd:15", opts: func(o *Options) {
		o.DeviceState = &DevState{Log: o.Log, PageRefs: func(_ context.Context, m *Machine, r []blk.Entry) error {
			got = r
			cmosAtHook = m.CMOS.Byte(0x50)
			return nil
		}}
		o.IncomingFile = incomingFrom(t, p)
	}})
	if !reflect.DeepEqual(got, refs) {
		t.Fatalf("pager got %+v", got)
	}
	if cmosAtHook == 0x11 || e.c.Machine().CMOS.Byte(0x50) != 0x11 {
		t.Fatalf("CMOS byte %#x at the pager, %#x after: devices were applied first", cmosAtHook, e.c.Machine().CMOS.Byte(0x50))
	}

	// A reference beyond the disk, or to a drive without a medium.
	for _, bad := range [][]blk.Entry{{{PFN: 1, Ref: blk.Ref{Disk: 0, Sector: 2048}}}, {{PFN: 1, Ref: blk.Ref{Disk: 2}}}, {{PFN: 1, Ref: blk.Ref{Disk: 9}}}} {
		p := withRefs(bad)
		e := newEnv(t, envOpt{noRun: true, extra: stateArgv(img) + " -incoming fd:15", opts: func(o *Options) {
			o.DeviceState = &DevState{Log: o.Log, PageRefs: func(context.Context, *Machine, []blk.Entry) error { return nil }}
			o.IncomingFile = incomingFrom(t, p)
		}})
		err := e.c.Start(context.Background())
		e.c.Teardown()
		if !errors.Is(err, devstate.ErrMismatch) {
			t.Fatalf("reference %+v: %v", bad, err)
		}
	}
}

// While the global dirty log is on, bus-master DMA into guest memory is
// reported with modified_memory, and everything the device model wrote has
// been reported when stop returns (libxc's last pass comes after).
func TestDirtyLogDMAAndStop(t *testing.T) {
	img, data := diskImage(t)
	e := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	e.cfgWrite(0x09, 0x20, 4, bmBase|1)
	e.cfgWrite(0x09, 0x04, 2, 0x0005)
	ram := e.p.ram.Bytes()
	dma := func(gpa uint32, lba, sectors int) {
		// One PRD: gpa, sectors·512 bytes, end of table.
		binary.LittleEndian.PutUint32(ram[0x20000:], gpa)
		binary.LittleEndian.PutUint32(ram[0x20004:], uint32(sectors*512)|1<<31)
		e.out(0x1f6, 1, 0xe0)
		e.out(0x1f2, 1, uint64(sectors))
		e.out(0x1f3, 1, uint64(lba))
		e.out(0x1f4, 1, 0)
		e.out(0x1f5, 1, 0)
		e.out(0x1f7, 1, 0xc8) // READ DMA
		e.out(bmBase+4, 4, 0x20000)
		e.out(bmBase, 1, 0x09) // start, write to memory
		waitUntil(t, "DMA done", func() bool { return e.in(bmBase+2, 1)&1 == 0 })
		e.out(bmBase, 1, 0x00)
		e.in(0x1f7, 1)
		if !bytes.Equal(ram[gpa:gpa+uint32(sectors*512)], data[lba*512:(lba+sectors)*512]) {
			t.Fatal("DMA data differs from the image")
		}
	}
	dma(0x30000, 0, 16) // dirty log off: not reported
	time.Sleep(3 * dirtyFlushDelay)
	if m := e.p.dm.Modified(); len(m) != 0 {
		t.Fatalf("modified_memory while the dirty log is off: %v", m)
	}
	q := dialQMP(t, e.qmp)
	q.caps()
	q.ok(`{"execute":"xen-set-global-dirty-log","id":1,"arguments":{"enable":true}}`)
	dma(0x40800, 8, 16) // 8 KiB from 0x40800: pfns 0x40–0x42
	waitUntil(t, "DMA pages reported", func() bool { return covered(e.p.dm.Modified(), 0x40, 0x41, 0x42) })
	if covered(e.p.dm.Modified(), 0x30) || covered(e.p.dm.Modified(), 0x43) {
		t.Fatalf("pages reported that DMA did not write: %v", e.p.dm.Modified())
	}
	// A device write still batched when stop arrives is reported by then.
	if err := e.c.mem.WriteGPA(0x77000, []byte{1}); err != nil {
		t.Fatal(err)
	}
	q.ok(`{"execute":"stop","id":2}`)
	if !covered(e.p.dm.Modified(), 0x77) {
		t.Fatalf("page written before stop not reported when stop returned: %v", e.p.dm.Modified())
	}
	q.ok(`{"execute":"xen-set-global-dirty-log","id":3,"arguments":{"enable":false}}`)
	q.ok(`{"execute":"cont","id":4}`)
	n := len(e.p.dm.Modified())
	dma(0x50000, 0, 8)
	time.Sleep(3 * dirtyFlushDelay)
	if len(e.p.dm.Modified()) != n {
		t.Fatal("modified_memory after the dirty log was turned off")
	}
}

// A save that finds a running VM stops it around the save and resumes it
// (QEMU does too); a pipe (not truncatable, not fsync-able) is just written.
func TestSaveWhileRunningAndToPipe(t *testing.T) {
	img, _ := diskImage(t)
	e := newEnv(t, envOpt{extra: stateArgv(img), opts: withDevState})
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte)
	go func() {
		var buf bytes.Buffer
		buf.ReadFrom(r)
		done <- buf.Bytes()
	}()
	if err := e.c.SaveDevicesState(context.Background(), w, false); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := devstate.Decode(<-done); err != nil {
		t.Fatalf("state through a pipe: %v", err)
	}
	if !e.c.RunState().Running || !e.server().Enabled() {
		t.Fatal("VM not running again after a save it stopped for")
	}
}
