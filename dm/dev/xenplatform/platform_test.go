package xenplatform

import (
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

type recUnplug struct{ calls []string }

func (r *recUnplug) UnplugDisks(aux bool) {
	if aux {
		r.calls = append(r.calls, "aux")
	} else {
		r.calls = append(r.calls, "disks")
	}
}
func (r *recUnplug) UnplugNICs() { r.calls = append(r.calls, "nics") }

func newPlatform(t *testing.T) (*Platform, *hwtest.IOSpace, *recUnplug) {
	t.Helper()
	io := hwtest.NewIOSpace()
	u := &recUnplug{}
	p, err := New(io, u)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.ClaimPorts(io); err != nil {
		t.Fatal(err)
	}
	return p, io, u
}

func TestConfigSpace(t *testing.T) {
	p, io, _ := newPlatform(t)
	for _, tc := range []struct {
		reg  uint16
		size int
		want uint32
	}{
		{0, 4, 0x00015853},
		{8, 4, 0xff800001},
		{0x2c, 4, 0x00015853},
		{pci.RegCommand, 2, 3},
		{pci.RegInterruptPin, 1, 1},
		{pci.RegBAR0, 4, 1},
		{pci.RegBAR0 + 4, 4, 8},
	} {
		if got := p.ConfigRead(tc.reg, tc.size); got != tc.want {
			t.Errorf("config %#x/%d = %#x, want %#x", tc.reg, tc.size, got, tc.want)
		}
	}
	// Sizing.
	p.ConfigWrite(pci.RegBAR0, 4, 0xffffffff)
	p.ConfigWrite(pci.RegBAR0+4, 4, 0xffffffff)
	if p.ConfigRead(pci.RegBAR0, 4) != 0xffffff01 || p.ConfigRead(pci.RegBAR0+4, 4) != 0xff000008 {
		t.Fatalf("BAR sizes %#x %#x", p.ConfigRead(pci.RegBAR0, 4), p.ConfigRead(pci.RegBAR0+4, 4))
	}
	// hvmloader places them; decode is already on (QEMU sets IO|MEM).
	p.ConfigWrite(pci.RegBAR0, 4, 0xc000)
	p.ConfigWrite(pci.RegBAR0+4, 4, 0xf1000000)
	if !io.HasPorts(0xc000, 256) || !io.HasMMIO(0xf1000000, 16<<20) || !io.HasPorts(0x10, 16) {
		t.Fatalf("claims %v", io.Claimed())
	}
	if io.ReadMMIO(0xf1000000+0x1000, 4) != 0 {
		t.Fatal("BAR1 read")
	}
	io.WriteMMIO(0xf1000000, 8, 0xdead)
	if _, err := New(io, nil); err == nil {
		t.Fatal("nil unplugger accepted")
	}
}

func TestFixedPorts(t *testing.T) {
	p, io, u := newPlatform(t)
	if io.In(0x10, 2) != Magic || io.In(0x12, 1) != 1 || io.In(0x10, 1) != 0 {
		t.Fatalf("magic %#x version %#x flags %#x", io.In(0x10, 2), io.In(0x12, 1), io.In(0x10, 1))
	}
	if io.In(0x12, 2) != 0xffff || io.In(0x10, 4) != 0xffffffff || io.In(0x14, 1) != 0xff {
		t.Fatal("other reads")
	}
	// Linux xen_unplug_emulated_devices: product, build, then the mask.
	io.Out(0x12, 2, 3)
	io.Out(0x10, 4, 0x1234)
	if len(u.calls) != 0 {
		t.Fatal("product/build unplugged something")
	}
	io.Out(0x10, 2, UnplugIDESCSIDisks|UnplugAllNICs)
	if len(u.calls) != 2 || u.calls[0] != "disks" || u.calls[1] != "nics" {
		t.Fatalf("calls %v", u.calls)
	}
	st := p.State()
	if st.Product != 3 || st.Build != 0x1234 || st.Unplugged != (Unplugged{Disks: true, NICs: true}) {
		t.Fatalf("state %+v", st)
	}
	for _, tc := range []struct {
		mask uint16
		want []string
	}{
		{UnplugAuxIDEDisks, []string{"aux"}},
		{UnplugAuxIDEDisks | UnplugIDESCSIDisks, []string{"disks"}},
		{UnplugNVMeDisks, []string{"disks"}}, // as QEMU: any disk bit reaches the IDE unplug
		{UnplugAllNICs, []string{"nics"}},
		{0, nil},
	} {
		u.calls = nil
		io.Out(0x10, 2, uint32(tc.mask))
		if len(u.calls) != len(tc.want) || (len(tc.want) > 0 && u.calls[0] != tc.want[0]) {
			t.Errorf("mask %#x: calls %v, want %v", tc.mask, u.calls, tc.want)
		}
	}
}

func TestLogChars(t *testing.T) {
	log := hwtest.CaptureLog(t)
	_, io, _ := newPlatform(t)
	for _, c := range []byte("hello from PV\nsecond") {
		io.Out(0x12, 1, uint32(c))
	}
	if log.Count("line=hello from PV") != 1 || log.Count("second") != 0 {
		t.Fatalf("log %q", log.Records())
	}
	io.Out(0x12, 1, '\n')
	if log.Count("line=second") != 1 {
		t.Fatalf("log %q", log.Records())
	}
	// A full buffer flushes without a newline.
	log.Reset()
	for i := 0; i < logBufSize+10; i++ {
		io.Out(0x12, 1, 'x')
	}
	if n := log.Count("guest driver log"); n != 1 {
		t.Fatalf("%d flushes", n)
	}
}

func TestBAR0LegacyProtocols(t *testing.T) {
	p, io, u := newPlatform(t)
	p.ConfigWrite(pci.RegBAR0, 4, 0xc001)
	io.Out(0xc004, 4, 1) // SUSE: outl(1, ioaddr+4)
	if len(u.calls) != 2 || u.calls[0] != "disks" || u.calls[1] != "nics" {
		t.Fatalf("calls %v", u.calls)
	}
	u.calls = nil
	io.Out(0xc008, 1, 2)
	io.Out(0xc008, 1, 1)
	if len(u.calls) != 2 || u.calls[0] != "nics" || u.calls[1] != "disks" {
		t.Fatalf("calls %v", u.calls)
	}
	if io.In(0xc000, 1) != 0 || io.In(0xc001, 1) != 0xff || io.In(0xc000, 2) != 0xff00 {
		t.Fatal("BAR0 reads")
	}
}

func TestMalformed(t *testing.T) {
	log := hwtest.CaptureLog(t)
	p, io, u := newPlatform(t)
	if p.ReadPort(0x10, 3) != 0xffffffff || p.ReadPort(0x20, 2) != 0xffff || p.ReadPort(0x0f, 1) != 0xff {
		t.Error("bad reads")
	}
	p.WritePort(0x10, 3, 1)
	p.WritePort(0x10, 8, 1)
	p.WritePort(0x20, 2, 1)
	p.WritePort(0x14, 2, 1)
	io.Out(0x10, 1, PFFlagROMLock)
	io.Out(0x10, 1, PFFlagROMLock)
	io.Out(0x10, 2, 0x30|UnplugAllNICs)
	if len(u.calls) != 1 || u.calls[0] != "nics" {
		t.Fatalf("calls %v", u.calls)
	}
	if io.In(0x10, 1) != 0 {
		t.Fatal("ROM lock flag stored without the memory type change")
	}
	// BAR0 accesses while it does not decode, or outside it.
	b := bar0{p}
	if b.ReadPort(0xc000, 1) != 0xff {
		t.Error("BAR0 read while unmapped")
	}
	b.WritePort(0xc004, 1, 1)
	if len(u.calls) != 1 {
		t.Fatal("unmapped BAR0 write unplugged")
	}
	for _, want := range []string{"bad read size", "read outside", "bad write size", "write outside", "unused fixed port", "lock the ROM", "unknown unplug bits", "bad BAR0 read", "bad BAR0 write"} {
		if n := log.Count(want); n < 1 {
			t.Errorf("no log for %q: %q", want, log.Records())
		}
	}
	if log.Count("lock the ROM") != 1 {
		t.Error("ROM lock logged twice")
	}
	if io.In(0x10, 2) != Magic {
		t.Fatal("broken after malformed accesses")
	}
}

func TestState(t *testing.T) {
	p, io, _ := newPlatform(t)
	p.ConfigWrite(pci.RegBAR0, 4, 0xc001)
	io.Out(0x12, 2, 1)
	io.Out(0x10, 2, UnplugAuxIDEDisks)
	st := p.State()

	p2, io2, u2 := newPlatform(t)
	if err := p2.SetState(st); err != nil {
		t.Fatal(err)
	}
	if p2.State() != st || !io2.HasPorts(0xc000, 256) {
		t.Fatalf("restored %+v", p2.State())
	}
	if len(u2.calls) != 1 || u2.calls[0] != "aux" {
		t.Fatalf("restore did not re-apply the unplug: %v", u2.calls)
	}
	if p2.SetState(State{Config: st.Config, Flags: 0x80}) == nil {
		t.Fatal("bad flags accepted")
	}
}

func TestUnplugFuncs(t *testing.T) {
	var got []bool
	f := UnplugFuncs{Disks: func(aux bool) { got = append(got, aux) }}
	f.UnplugDisks(true)
	f.UnplugNICs() // nil: no-op
	if len(got) != 1 || !got[0] {
		t.Fatal(got)
	}
}
