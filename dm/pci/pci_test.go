package pci

import (
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
)

type dummyIO struct{}

func (dummyIO) ReadPort(port uint16, size int) uint32     { return 0x5a }
func (dummyIO) WritePort(port uint16, size int, v uint32) {}

type dummyMMIO struct{}

func (dummyMMIO) ReadMMIO(addr uint64, size int) uint64     { return 0xa5 }
func (dummyMMIO) WriteMMIO(addr uint64, size int, v uint64) {}

func newTestConfig(t *testing.T, io *hwtest.IOSpace) *Config {
	t.Helper()
	c := NewConfig("test", io, ID{Vendor: 0x1234, Device: 0x5678, Class: 0x010180, Revision: 2,
		SubVendor: 0x1af4, SubDevice: 0x1100, InterruptPin: 1})
	if err := c.SetBAR(0, BAR{Kind: BARIO, Size: 16, Port: dummyIO{}}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetBAR(1, BAR{Kind: BARMem32Prefetch, Size: 16 << 20, MMIO: dummyMMIO{}}); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestHeaderIdentity(t *testing.T) {
	c := newTestConfig(t, hwtest.NewIOSpace())
	for _, tc := range []struct {
		reg  uint16
		size int
		want uint32
	}{
		{RegVendorID, 4, 0x56781234},
		{RegRevisionID, 4, 0x01018002},
		{RegClassProg, 1, 0x80},
		{RegSubsysVendor, 4, 0x11001af4},
		{RegInterruptPin, 1, 1},
		{RegBAR0, 4, 1},
		{RegBAR0 + 4, 4, 8},
		{RegBAR0 + 8, 4, 0},
		{RegROMAddress, 4, 0},
	} {
		if got := c.ConfigRead(tc.reg, tc.size); got != tc.want {
			t.Errorf("read %#x/%d = %#x, want %#x", tc.reg, tc.size, got, tc.want)
		}
	}
	// Read-only registers ignore writes.
	c.ConfigWrite(RegVendorID, 4, 0)
	c.ConfigWrite(RegClassProg, 1, 0)
	c.ConfigWrite(RegInterruptPin, 1, 3)
	if c.ConfigRead(RegVendorID, 4) != 0x56781234 || c.ConfigRead(RegClassProg, 1) != 0x80 || c.ConfigRead(RegInterruptPin, 1) != 1 {
		t.Fatal("read-only register changed")
	}
	// Interrupt line is writable.
	c.ConfigWrite(RegInterruptLine, 1, 11)
	if c.ConfigRead(RegInterruptLine, 1) != 11 {
		t.Fatal("interrupt line not writable")
	}
}

func TestMalformedConfigAccess(t *testing.T) {
	log := hwtest.CaptureLog(t)
	io := hwtest.NewIOSpace()
	c := newTestConfig(t, io)
	for _, tc := range []struct {
		reg  uint16
		size int
		want uint32
	}{
		{0x03, 2, 0xffff},     // crosses a dword
		{0x02, 4, 0xffffffff}, // crosses a dword
		{0xfe, 4, 0xffffffff}, // past the end
		{0x100, 1, 0xff},      // out of range
		{0x00, 3, 0xffffff},   // odd size
		{0x00, 0, 0xff},
		{0x00, 8, 0xffffffff},
		{0x00, -1, 0xff},
	} {
		if got := c.ConfigRead(tc.reg, tc.size); got != tc.want {
			t.Errorf("read %#x/%d = %#x, want %#x", tc.reg, tc.size, got, tc.want)
		}
	}
	c.ConfigWrite(RegCommand+3, 2, 0xffff)
	c.ConfigWrite(0x100, 4, 0xffffffff)
	c.ConfigWrite(RegCommand, 3, 0xffffff)
	c.ConfigWrite(RegCommand, 3, 0xffffff) // same again: logged once
	if c.Get(RegCommand, 2) != 0 || len(io.Claimed()) != 0 {
		t.Fatal("malformed write had an effect")
	}
	if n := log.Count("malformed config"); n != 11 {
		t.Errorf("%d malformed-access logs, want 11: %q", n, log.Records())
	}
	// Still works.
	c.ConfigWrite(RegCommand, 2, CommandIO)
	if c.ConfigRead(RegCommand, 2) != CommandIO {
		t.Fatal("command write after malformed accesses")
	}
}

func TestBARSizing(t *testing.T) {
	io := hwtest.NewIOSpace()
	c := newTestConfig(t, io)
	// Decode on while sizing: the sizing pattern must not be claimed.
	c.ConfigWrite(RegCommand, 2, CommandIO|CommandMemory)
	c.ConfigWrite(RegBAR0, 4, 0xffffffff)
	c.ConfigWrite(RegBAR0+4, 4, 0xffffffff)
	c.ConfigWrite(RegBAR0+8, 4, 0xffffffff)
	if got := c.ConfigRead(RegBAR0, 4); got != 0xfffffff1 {
		t.Errorf("I/O BAR size read-back %#x, want 0xfffffff1", got)
	}
	if got := c.ConfigRead(RegBAR0+4, 4); got != 0xff000008 {
		t.Errorf("memory BAR size read-back %#x, want 0xff000008", got)
	}
	if got := c.ConfigRead(RegBAR0+8, 4); got != 0 {
		t.Errorf("unimplemented BAR read-back %#x, want 0", got)
	}
	if len(io.Claimed()) != 0 {
		t.Errorf("sizing pattern claimed %v", io.Claimed())
	}
	// hvmloader's size computation.
	sz := c.ConfigRead(RegBAR0, 4) & 0xfffc
	if sz&^(sz-1) != 16 {
		t.Errorf("I/O size %#x", sz&^(sz-1))
	}
}

func TestBARMapping(t *testing.T) {
	io := hwtest.NewIOSpace()
	c := newTestConfig(t, io)
	c.ConfigWrite(RegBAR0, 4, 0xc001)
	c.ConfigWrite(RegBAR0+4, 4, 0xf1000000)
	if len(io.Claimed()) != 0 {
		t.Fatalf("claimed with decode off: %v", io.Claimed())
	}
	if c.ConfigRead(RegBAR0, 4) != 0xc001 || c.ConfigRead(RegBAR0+4, 4) != 0xf1000008 {
		t.Fatalf("BAR read-back %#x %#x", c.ConfigRead(RegBAR0, 4), c.ConfigRead(RegBAR0+4, 4))
	}
	c.ConfigWrite(RegCommand, 2, CommandIO)
	if !io.HasPorts(0xc000, 16) || len(io.Claimed()) != 1 {
		t.Fatalf("after IO enable: %v", io.Claimed())
	}
	if io.In(0xc004, 1) != 0x5a {
		t.Fatal("BAR ports not dispatched to the handler")
	}
	if b, ok := c.BARBase(0); !ok || b != 0xc000 {
		t.Fatalf("BARBase = %#x %v", b, ok)
	}
	c.ConfigWrite(RegCommand, 2, CommandIO|CommandMemory)
	if !io.HasMMIO(0xf1000000, 16<<20) {
		t.Fatalf("after MEM enable: %v", io.Claimed())
	}
	if io.ReadMMIO(0xf1000000+0x123, 4) != 0xa5 {
		t.Fatal("BAR MMIO not dispatched")
	}
	// Moving an enabled BAR releases the old range and claims the new one.
	io.ResetEvents()
	c.ConfigWrite(RegBAR0, 4, 0xc101)
	ev := io.Events()
	if len(ev) != 2 || ev[0].Op != hwtest.OpRelease || ev[0].Range.Base != 0xc000 ||
		ev[1].Op != hwtest.OpClaim || ev[1].Range.Base != 0xc100 {
		t.Fatalf("move events %v", ev)
	}
	// Byte write to the upper half of the BAR moves it too.
	c.ConfigWrite(RegBAR0+1, 1, 0xd0)
	if !io.HasPorts(0xd000, 16) || io.HasPorts(0xc100, 16) {
		t.Fatalf("after byte move: %v", io.Claimed())
	}
	// Disabling decode releases everything.
	c.ConfigWrite(RegCommand, 2, 0)
	if len(io.Claimed()) != 0 {
		t.Fatalf("after disable: %v", io.Claimed())
	}
	for _, e := range io.Events() {
		if e.Op == hwtest.OpReleaseUnclaimed || e.Op == hwtest.OpClaimFailed {
			t.Fatalf("bad event %v", e)
		}
	}
	// BAR at 0 does not decode.
	c.ConfigWrite(RegBAR0, 4, 1)
	c.ConfigWrite(RegCommand, 2, CommandIO)
	if len(io.Claimed()) != 0 {
		t.Fatalf("BAR at 0 claimed: %v", io.Claimed())
	}
}

func TestStatusW1C(t *testing.T) {
	c := newTestConfig(t, hwtest.NewIOSpace())
	c.Set(RegStatus, 2, 0x2000|0x0010) // master abort (w1c) + capabilities (ro)
	c.ConfigWrite(RegStatus, 2, 0x0000)
	if c.Get(RegStatus, 2) != 0x2010 {
		t.Fatal("writing 0 cleared a status bit")
	}
	c.ConfigWrite(RegStatus, 2, 0xffff)
	if c.Get(RegStatus, 2) != 0x0010 {
		t.Fatalf("status after w1c = %#x", c.Get(RegStatus, 2))
	}
}

func TestSnapshotRestore(t *testing.T) {
	io := hwtest.NewIOSpace()
	c := newTestConfig(t, io)
	c.ConfigWrite(RegBAR0, 4, 0xc001)
	c.ConfigWrite(RegCommand, 2, CommandIO)
	c.ConfigWrite(RegInterruptLine, 1, 10)
	c.Set(RegStatus, 2, 0x2000)
	snap := c.Snapshot()

	io2 := hwtest.NewIOSpace()
	c2 := newTestConfig(t, io2)
	if err := c2.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if c2.Snapshot() != snap {
		t.Fatal("restored config space differs")
	}
	if !io2.HasPorts(0xc000, 16) {
		t.Fatalf("restore did not claim: %v", io2.Claimed())
	}
	other := NewConfig("other", io2, ID{Vendor: 0x8086, Device: 0x1237})
	if err := other.Restore(snap); err == nil {
		t.Fatal("restore of another device's state succeeded")
	}
}

func TestSetBARErrors(t *testing.T) {
	c := NewConfig("x", hwtest.NewIOSpace(), ID{})
	for i, b := range []BAR{
		{Kind: BARIO, Size: 12, Port: dummyIO{}},
		{Kind: BARIO, Size: 512, Port: dummyIO{}},
		{Kind: BARIO, Size: 16},
		{Kind: BARMem32, Size: 8, MMIO: dummyMMIO{}},
		{Kind: BARMem32, Size: 4096},
	} {
		if err := c.SetBAR(0, b); err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
	if err := c.SetBAR(6, BAR{}); err == nil {
		t.Error("BAR 6 accepted")
	}
}

func TestBusCF8(t *testing.T) {
	b := NewBus()
	io := hwtest.NewIOSpace()
	if err := io.ClaimPorts(PortConfigAddress, 1, b); err != nil {
		t.Fatal(err)
	}
	if err := io.ClaimPorts(PortConfigData, 4, b); err != nil {
		t.Fatal(err)
	}
	// Linux pci_check_type1.
	io.Out(0xcf8, 4, 0x80000000)
	if got := io.In(0xcf8, 4); got != 0x80000000 {
		t.Fatalf("cf8 read-back %#x", got)
	}
	// Non-32-bit accesses to 0xcf8 neither latch nor read it.
	io.Out(0xcf8, 2, 0x1234)
	if io.In(0xcf8, 4) != 0x80000000 || io.In(0xcf8, 2) != 0xffff {
		t.Fatal("16-bit access to 0xcf8")
	}
	// QEMU keeps the whole value for read-back.
	io.Out(0xcf8, 4, 0x80000003)
	if io.In(0xcf8, 4) != 0x80000003 {
		t.Fatal("cf8 reserved bits not kept")
	}
}

func TestBusRouting(t *testing.T) {
	b := NewBus()
	io := hwtest.NewIOSpace()
	c0 := NewConfig("host", io, ID{Vendor: 0x8086, Device: 0x1237, Class: 0x060000})
	c1 := NewConfig("isa", io, ID{Vendor: 0x8086, Device: 0x7000, Class: 0x060100, HeaderType: HeaderMultiFunction})
	c3 := newTestConfig(t, io)
	for _, x := range []struct {
		devfn uint8
		c     *Config
	}{{DevFn(0, 0), c0}, {DevFn(1, 0), c1}, {DevFn(1, 3), c3}} {
		if err := b.Add(x.devfn, x.c.Name(), x.c); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Add(DevFn(1, 0), "dup", c0); err == nil {
		t.Fatal("duplicate slot accepted")
	}
	if got := b.DevFns(); len(got) != 3 || got[0] != 0 || got[1] != 8 || got[2] != 11 {
		t.Fatalf("DevFns %v", got)
	}
	if SBDF(DevFn(1, 3)) != 0x0b {
		t.Fatal("SBDF")
	}
	if b.ConfigRead(SBDF(DevFn(1, 0)), 0, 4) != 0x70008086 || b.ConfigRead(SBDF(DevFn(0, 0)), 2, 2) != 0x1237 {
		t.Fatal("SBDF routing")
	}
	if b.ConfigRead(SBDF(DevFn(1, 3)), RegHeaderType, 1) != 0 || b.ConfigRead(SBDF(DevFn(1, 0)), RegHeaderType, 1) != 0x80 {
		t.Fatal("header type")
	}
	// Empty slots and other buses read all-ones, writes are dropped.
	if b.ConfigRead(SBDF(DevFn(5, 0)), 0, 4) != 0xffffffff || b.ConfigRead(SBDF(DevFn(5, 0)), 0, 2) != 0xffff ||
		b.ConfigRead(1<<8, 0, 4) != 0xffffffff || b.ConfigRead(1<<16, 0, 1) != 0xff {
		t.Fatal("empty slot")
	}
	b.ConfigWrite(SBDF(DevFn(5, 0)), RegCommand, 2, 3)
	b.ConfigWrite(1<<8|SBDF(DevFn(1, 3)), RegInterruptLine, 1, 9)
	if c3.Get(RegInterruptLine, 1) != 0 {
		t.Fatal("write to bus 1 reached bus 0")
	}
	b.ConfigWrite(SBDF(DevFn(1, 3)), RegInterruptLine, 1, 9)
	if c3.Get(RegInterruptLine, 1) != 9 {
		t.Fatal("write not routed")
	}

	// The same through 0xcf8/0xcfc (mechanism #1, as Xen forwards it
	// when the address is not enabled or for PIO servers).
	io.ClaimPorts(PortConfigAddress, 1, b)
	io.ClaimPorts(PortConfigData, 4, b)
	io.Out(0xcf8, 4, 0x80000000|uint32(DevFn(1, 3))<<8|0x3c)
	if got := io.In(0xcfc, 1); got != 9 {
		t.Fatalf("cfc byte = %#x", got)
	}
	if got := io.In(0xcfd, 1); got != 1 {
		t.Fatalf("cfd (pin) = %#x", got)
	}
	io.Out(0xcfc, 1, 5)
	if c3.Get(RegInterruptLine, 1) != 5 {
		t.Fatal("cfc write")
	}
	io.Out(0xcf8, 4, 0x80000000|uint32(DevFn(1, 0))<<8|0x00)
	if io.In(0xcfe, 2) != 0x7000 || io.In(0xcfc, 4) != 0x70008086 {
		t.Fatal("cfc/cfe reads")
	}
	io.Out(0xcf8, 4, 0x80000000|uint32(DevFn(7, 0))<<8)
	if io.In(0xcfc, 4) != 0xffffffff {
		t.Fatal("empty slot through cfc")
	}
	io.Out(0xcf8, 4, 0x80010000) // bus 1
	if io.In(0xcfc, 4) != 0xffffffff {
		t.Fatal("bus 1 through cfc")
	}
	io.Out(0xcf8, 4, 0x00000000|uint32(DevFn(1, 0))<<8) // not enabled
	if io.In(0xcfc, 4) != 0xffffffff {
		t.Fatal("disabled cf8")
	}
	b.Remove(DevFn(1, 3))
	if b.ConfigRead(SBDF(DevFn(1, 3)), 0, 4) != 0xffffffff || len(b.DevFns()) != 2 {
		t.Fatal("Remove")
	}
}

func TestUnalignedWithinDword(t *testing.T) {
	c := newTestConfig(t, hwtest.NewIOSpace())
	// hvmloader: pci_writew(devfn, 0x3d, 1) arrives as reg 0x3d size 2.
	c.ConfigWrite(RegInterruptLine, 1, 9)
	c.ConfigWrite(RegInterruptPin, 2, 0x0001)
	if c.ConfigRead(RegInterruptLine, 2) != 0x0109 {
		t.Fatalf("0x3c = %#x", c.ConfigRead(RegInterruptLine, 2))
	}
	if got := c.ConfigRead(RegVendorID+1, 2); got != 0x7812 {
		t.Fatalf("read 0x01/2 = %#x", got)
	}
}
