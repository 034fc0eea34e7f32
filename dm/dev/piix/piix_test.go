package piix

import (
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

type machine struct {
	io   *hwtest.IOSpace
	irq  *hwtest.Interrupts
	sd   *hwtest.Shutdown
	bus  *pci.Bus
	host *Host
	isa  *PIIX3
	pm   *PM
}

func newMachine(t *testing.T, vcpus int) *machine {
	t.Helper()
	m := &machine{io: hwtest.NewIOSpace(), irq: &hwtest.Interrupts{}, sd: &hwtest.Shutdown{}, bus: pci.NewBus()}
	m.host = NewHost(m.io)
	m.isa = NewPIIX3(m.io, m.irq, m.sd)
	var err error
	if m.pm, err = NewPM(m.io, m.sd, vcpus); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		devfn uint8
		f     pci.Function
	}{{DevFnHost, m.host}, {DevFnISA, m.isa}, {DevFnPM, m.pm}} {
		if err := m.bus.Add(f.devfn, "x", f.f); err != nil {
			t.Fatal(err)
		}
	}
	if err := m.io.ClaimPorts(pci.PortConfigAddress, 1, m.bus); err != nil {
		t.Fatal(err)
	}
	if err := m.io.ClaimPorts(pci.PortConfigData, 4, m.bus); err != nil {
		t.Fatal(err)
	}
	if err := m.isa.ClaimPorts(m.io); err != nil {
		t.Fatal(err)
	}
	if err := m.pm.ClaimPorts(m.io); err != nil {
		t.Fatal(err)
	}
	return m
}

// cfg reads config space through 0xcf8/0xcfc as hvmloader does.
func (m *machine) cfgRead(devfn uint8, reg uint16, size int) uint32 {
	m.io.Out(0xcf8, 4, 0x80000000|uint32(devfn)<<8|uint32(reg&0xfc))
	return m.io.In(0xcfc+reg&3, size)
}

func (m *machine) cfgWrite(devfn uint8, reg uint16, size int, v uint32) {
	m.io.Out(0xcf8, 4, 0x80000000|uint32(devfn)<<8|uint32(reg&0xfc))
	m.io.Out(0xcfc+reg&3, size, v)
}

func TestIdentity(t *testing.T) {
	m := newMachine(t, 2)
	for _, tc := range []struct {
		name                string
		devfn               uint8
		id, class, sub, hdr uint32
	}{
		{"host", DevFnHost, 0x12378086, 0x06000002, 0x11001af4, 0},
		{"isa", DevFnISA, 0x70008086, 0x06010000, 0x11001af4, 0x80},
		{"pm", DevFnPM, 0x71138086, 0x06800003, 0x11001af4, 0},
	} {
		if got := m.cfgRead(tc.devfn, 0, 4); got != tc.id {
			t.Errorf("%s id %#x", tc.name, got)
		}
		if got := m.cfgRead(tc.devfn, 8, 4); got != tc.class {
			t.Errorf("%s class/rev %#x, want %#x", tc.name, got, tc.class)
		}
		if got := m.cfgRead(tc.devfn, 0x2c, 4); got != tc.sub {
			t.Errorf("%s subsystem %#x", tc.name, got)
		}
		if got := m.cfgRead(tc.devfn, 0x0e, 1); got != tc.hdr {
			t.Errorf("%s header type %#x", tc.name, got)
		}
	}
	if m.cfgRead(DevFnHost, i440fxSMRAM, 1) != 0x02 {
		t.Error("SMRAM reset value")
	}
	if m.cfgRead(DevFnPM, pci.RegInterruptPin, 1) != 1 {
		t.Error("PM interrupt pin")
	}
	// Other functions of slot 1 are absent.
	if m.cfgRead(pci.DevFn(1, 2), 0, 4) != 0xffffffff {
		t.Error("00:01.2 present")
	}
}

func TestPIRQRouting(t *testing.T) {
	m := newMachine(t, 1)
	for l := uint8(0); l < 4; l++ {
		if m.isa.Route(l) != 0x80 || m.cfgRead(DevFnISA, RegPIRQA+uint16(l), 1) != 0x80 {
			t.Fatalf("link %d not disabled at reset", l)
		}
	}
	if len(m.irq.Events()) != 0 {
		t.Fatal("routes set before any write")
	}
	// hvmloader: links 0..3 = IRQ 5, 10, 11, 5, one byte at a time.
	for l, irq := range []uint32{5, 10, 11, 5} {
		m.cfgWrite(DevFnISA, RegPIRQA+uint16(l), 1, irq)
	}
	for l, irq := range []uint8{5, 10, 11, 5} {
		if m.irq.Route(uint8(l)) != irq {
			t.Errorf("link %d routed to %d, want %d", l, m.irq.Route(uint8(l)), irq)
		}
	}
	// A dword write updates all four; bit 7 disables (route 0); high bits of
	// the IRQ nibble are dropped as QEMU does.
	m.irq.ResetEvents()
	m.cfgWrite(DevFnISA, RegPIRQA, 4, 0x8b_1e_83_09)
	want := []hwtest.IRQEvent{
		{Kind: hwtest.LinkRoute, Line: 0, Value: 9},
		{Kind: hwtest.LinkRoute, Line: 1, Value: 0},
		{Kind: hwtest.LinkRoute, Line: 2, Value: 0xe},
		{Kind: hwtest.LinkRoute, Line: 3, Value: 0},
	}
	got := m.irq.Events()
	if len(got) != 4 {
		t.Fatalf("events %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if m.cfgRead(DevFnISA, RegPIRQA, 4) != 0x8b1e8309 {
		t.Error("PIRQ read-back")
	}
	// A word write at 0x62 touches links 2 and 3 only; neighbouring
	// registers produce no route calls.
	m.irq.ResetEvents()
	m.cfgWrite(DevFnISA, 0x62, 2, 0x0b0a)
	m.cfgWrite(DevFnISA, 0x5c, 4, 0xffffffff)
	m.cfgWrite(DevFnISA, 0x64, 4, 0)
	if ev := m.irq.Events(); len(ev) != 2 || ev[0].Line != 2 || ev[0].Value != 10 || ev[1].Line != 3 || ev[1].Value != 11 {
		t.Errorf("events %v", ev)
	}
	// SetPCILinkRoute failure is logged, not fatal.
	log := hwtest.CaptureLog(t)
	m.irq.Err = hwtest.ErrInvalid
	m.cfgWrite(DevFnISA, RegPIRQA, 1, 5)
	if log.Count("set_pci_link_route failed") != 1 || m.isa.Route(0) != 5 {
		t.Errorf("route failure: %q", log.Records())
	}
}

func TestRCR(t *testing.T) {
	m := newMachine(t, 1)
	log := hwtest.CaptureLog(t)
	if !m.io.HasPorts(PortRCR, 1) {
		t.Fatal("0xcf9 not claimed")
	}
	if m.io.In(PortRCR, 1) != 0 {
		t.Fatal("RCR reset value")
	}
	m.io.Out(PortRCR, 1, 0x02)
	if m.io.In(PortRCR, 1) != 0x02 || m.sd.Reboots() != 0 {
		t.Fatal("SRST not stored")
	}
	m.io.Out(PortRCR, 1, 0x09) // bits other than 1 are dropped
	if m.io.In(PortRCR, 1) != 0 {
		t.Fatal("undefined bits stored")
	}
	m.io.Out(PortRCR, 1, 0x06) // FADT reset value
	if m.sd.Reboots() != 1 || m.sd.PowerOffs() != 0 {
		t.Fatalf("reboots %d", m.sd.Reboots())
	}
	// Wide and stray accesses: logged, no panic.
	if got := m.isa.ReadPort(PortRCR, 2); got != 0xff00 {
		t.Errorf("wide read %#x", got)
	}
	if got := m.isa.ReadPort(0xcfa, 1); got != 0xff {
		t.Errorf("stray read %#x", got)
	}
	m.isa.WritePort(PortRCR, 3, 4)
	m.isa.WritePort(0xcfa, 1, 4)
	if m.sd.Reboots() != 1 {
		t.Fatal("bad write rebooted")
	}
	if log.Count("piix3:") != 4 {
		t.Errorf("logs %q", log.Records())
	}
	// Reboot failure is logged.
	m.sd.Err = hwtest.ErrInvalid
	m.io.Out(PortRCR, 1, 4)
	if log.Count("reboot through reset control register failed") != 1 {
		t.Errorf("logs %q", log.Records())
	}
}

func TestHvmloaderPMSequence(t *testing.T) {
	m := newMachine(t, 4)
	for _, r := range [][2]uint16{{0xb2, 2}, {0xae00, 16}, {0xaf00, 32}, {0xafe0, 4}, {0xb004, 2}} {
		if !m.io.HasPorts(r[0], r[1]) {
			t.Errorf("%#x+%d not claimed", r[0], r[1])
		}
	}
	for _, p := range []uint16{0xb000, 0xb008, 0xb006} {
		if m.io.PortHandler(p) != nil {
			t.Errorf("%#x claimed (Xen's)", p)
		}
	}
	// tools/firmware/hvmloader/pci.c, class 0x0680.
	m.cfgWrite(DevFnPM, 0x20, 2, 0)
	m.cfgWrite(DevFnPM, 0xd2, 2, 0)
	m.cfgWrite(DevFnPM, 0x22, 2, 0)
	m.cfgWrite(DevFnPM, 0x3c, 2, 9)
	m.cfgWrite(DevFnPM, 0x3d, 2, 1)
	m.cfgWrite(DevFnPM, 0x40, 4, 0xb001)
	m.cfgWrite(DevFnPM, 0x80, 1, 1)
	if m.cfgRead(DevFnPM, 0x40, 4) != 0xb001 || m.cfgRead(DevFnPM, 0x80, 1) != 1 ||
		m.cfgRead(DevFnPM, 0x3c, 2) != 0x0109 {
		t.Fatalf("config after hvmloader: 40=%#x 80=%#x 3c=%#x", m.cfgRead(DevFnPM, 0x40, 4),
			m.cfgRead(DevFnPM, 0x80, 1), m.cfgRead(DevFnPM, 0x3c, 2))
	}
	// acpi_enable_sci.
	if m.io.In(0xb004, 1)&1 != 0 {
		t.Fatal("SCI_EN set at reset")
	}
	m.io.Out(0xb2, 1, 0xf1)
	if m.io.In(0xb004, 1)&1 != 1 || !m.pm.SCIEnabled() || m.io.In(0xb2, 1) != 0xf1 {
		t.Fatal("ACPI_ENABLE did not set SCI_EN")
	}
	m.io.Out(0xb2, 1, 0xf0)
	if m.pm.SCIEnabled() {
		t.Fatal("ACPI_DISABLE did not clear SCI_EN")
	}
	m.io.Out(0xb2, 1, 0xf1)
	m.io.Out(0xb3, 1, 0x5a)
	if m.io.In(0xb3, 1) != 0x5a {
		t.Fatal("APM status")
	}
	// Linux ACPI soft-off: SLP_TYP = _S5 (0) | SLP_EN, 16-bit write.
	m.io.Out(0xb004, 2, PM1CntSCIEn|PM1CntSlpEn)
	if m.sd.PowerOffs() != 1 || m.sd.Reboots() != 0 {
		t.Fatalf("power-offs %d", m.sd.PowerOffs())
	}
	if m.io.In(0xb004, 2) != PM1CntSCIEn {
		t.Fatalf("PM1a_CNT after sleep %#x (SLP_EN must read 0)", m.io.In(0xb004, 2))
	}
	// SLP_EN via a byte write to the high half.
	m.io.Out(0xb005, 1, (PM1CntSlpEn)>>8)
	if m.sd.PowerOffs() != 2 || m.io.In(0xb004, 2) != PM1CntSCIEn {
		t.Fatal("byte write of SLP_EN")
	}
}

func TestPMSleepTypes(t *testing.T) {
	m := newMachine(t, 1)
	log := hwtest.CaptureLog(t)
	m.io.Out(0xb004, 2, 1<<10|PM1CntSlpEn) // S3
	if m.sd.PowerOffs() != 0 || log.Count("S3 suspend requested but not supported") != 1 {
		t.Fatalf("S3: %d %q", m.sd.PowerOffs(), log.Records())
	}
	m.io.Out(0xb004, 2, 5<<10|PM1CntSlpEn)
	if m.sd.PowerOffs() != 0 || log.Count("undefined SLP_TYP") != 1 {
		t.Fatalf("SLP_TYP 5: %q", log.Records())
	}
	m.io.Out(0xb004, 2, 2<<10|PM1CntSlpEn) // QEMU's PIIX4 s4_val
	if m.sd.PowerOffs() != 1 {
		t.Fatal("S4 (2)")
	}
	// SLP_TYP without SLP_EN only stores.
	m.io.Out(0xb004, 2, 0)
	if m.sd.PowerOffs() != 1 || m.io.In(0xb004, 2) != 0 {
		t.Fatal("write without SLP_EN")
	}
	m.sd.Err = hwtest.ErrInvalid
	m.io.Out(0xb004, 2, PM1CntSlpEn)
	if log.Count("power off failed") != 1 {
		t.Fatalf("%q", log.Records())
	}
}

func TestGPE0(t *testing.T) {
	m := newMachine(t, 1)
	if m.io.In(0xafe0, 4) != 0 {
		t.Fatal("GPE0 reset value")
	}
	m.io.Out(0xafe2, 2, 0x0306)
	if m.io.In(0xafe2, 2) != 0x0306 || m.io.In(0xafe3, 1) != 0x03 {
		t.Fatal("GPE0_EN")
	}
	// Status is write-1-to-clear; set some bits through state.
	st := m.pm.State()
	st.GPESts = [2]uint8{0x0f, 0x81}
	if err := m.pm.SetState(st); err != nil {
		t.Fatal(err)
	}
	if m.io.In(0xafe0, 4) != 0x0306810f {
		t.Fatalf("GPE0 %#x", m.io.In(0xafe0, 4))
	}
	m.io.Out(0xafe0, 1, 0x05)
	m.io.Out(0xafe1, 1, 0x00)
	if m.io.In(0xafe0, 2) != 0x810a {
		t.Fatalf("GPE0_STS after w1c %#x", m.io.In(0xafe0, 2))
	}
	m.io.Out(0xafe0, 4, 0x0000ffff) // clears status, zeroes enables
	if m.io.In(0xafe0, 4) != 0 {
		t.Fatalf("GPE0 after dword write %#x", m.io.In(0xafe0, 4))
	}
}

func TestHotplugRegisters(t *testing.T) {
	for _, tc := range []struct {
		vcpus int
		want  []uint32 // dwords at 0xaf00, 0xaf04, ...
	}{
		{1, []uint32{1, 0}},
		{4, []uint32{0xf, 0}},
		{33, []uint32{0xffffffff, 1}},
		{256, []uint32{0xffffffff, 0xffffffff}},
	} {
		m := newMachine(t, tc.vcpus)
		for i, w := range tc.want {
			if got := m.io.In(0xaf00+uint16(4*i), 4); got != w {
				t.Errorf("%d vCPUs: PRST dword %d = %#x, want %#x", tc.vcpus, i, got, w)
			}
		}
		if m.io.In(0xaf00, 1) != tc.want[0]&0xff {
			t.Error("PRST byte read")
		}
		for p := uint16(0xae00); p < 0xae10; p += 4 {
			if m.io.In(p, 4) != 0 {
				t.Errorf("hotplug %#x reads %#x", p, m.io.In(p, 4))
			}
		}
	}
	for _, n := range []int{0, -1, 257} {
		if _, err := NewPM(hwtest.NewIOSpace(), &hwtest.Shutdown{}, n); err == nil {
			t.Errorf("NewPM(%d vCPUs) accepted", n)
		}
	}
}

func TestPMMalformed(t *testing.T) {
	m := newMachine(t, 2)
	log := hwtest.CaptureLog(t)
	m.io.Out(0xb2, 1, 0xf1)
	for _, tc := range []struct {
		port uint16
		size int
		want uint32
	}{
		{0xb004, 4, 0xffffffff}, // PM1a_CNT is 2 bytes
		{0xb005, 2, 0xffff},
		{0xb004, 3, 0xffffffff},
		{0xb2, 2, 0xffff}, // APM is byte-wide
		{0xafe2, 4, 0xffffffff},
		{0xaf1e, 4, 0xffffffff},
		{0xae0e, 4, 0xffffffff},
		{0xb000, 4, 0xffffffff}, // Xen's, not ours
		{0xb004, 0, 0xffffffff},
	} {
		if got := m.pm.ReadPort(tc.port, tc.size); got != tc.want {
			t.Errorf("read %#x/%d = %#x, want %#x", tc.port, tc.size, got, tc.want)
		}
	}
	before := m.pm.State()
	m.pm.WritePort(0xb004, 4, 0xffffffff)
	m.pm.WritePort(0xb005, 2, 0xffff)
	m.pm.WritePort(0xb2, 2, 0xf0f0)
	m.pm.WritePort(0xafe3, 2, 0xffff)
	m.pm.WritePort(0xaf00, 1, 0)
	m.pm.WritePort(0xae08, 4, 1<<3) // B0EJ: eject slot 3
	m.pm.WritePort(0xb008, 4, 0)
	m.pm.WritePort(0xb004, 8, 0)
	if m.pm.State() != before || m.sd.PowerOffs() != 0 || m.io.In(0xaf00, 1) != 3 {
		t.Fatal("malformed writes changed state")
	}
	if n := len(log.Records()); n != 17 {
		t.Errorf("%d log records, want 17: %q", n, log.Records())
	}
	// The same malformed access again is not logged again.
	m.pm.WritePort(0xb004, 4, 0xffffffff)
	if n := len(log.Records()); n != 17 {
		t.Errorf("repeat logged: %d", n)
	}
	if !m.pm.SCIEnabled() {
		t.Fatal("device broken after malformed accesses")
	}
	// Moving PMBA is accepted in config space but logged.
	m.cfgWrite(DevFnPM, 0x40, 4, 0xb001)
	m.cfgWrite(DevFnPM, 0x80, 1, 1)
	m.cfgWrite(DevFnPM, 0x40, 4, 0xc001)
	if log.Count("moved PMBA") != 1 || !m.io.HasPorts(0xb004, 2) {
		t.Errorf("PMBA move: %q", log.Records())
	}
}

func TestStateRoundTrip(t *testing.T) {
	m := newMachine(t, 3)
	m.cfgWrite(DevFnISA, RegPIRQA, 4, 0x050b0a05)
	m.io.Out(PortRCR, 1, 2)
	m.cfgWrite(DevFnPM, 0x40, 4, 0xb001)
	m.io.Out(0xb2, 1, 0xf1)
	m.io.Out(0xafe2, 1, 4)
	m.cfgWrite(DevFnHost, 0x59, 1, 0x30)

	n := newMachine(t, 3)
	if err := n.host.SetState(m.host.State()); err != nil {
		t.Fatal(err)
	}
	if err := n.isa.SetState(m.isa.State()); err != nil {
		t.Fatal(err)
	}
	if err := n.pm.SetState(m.pm.State()); err != nil {
		t.Fatal(err)
	}
	if n.host.State() != m.host.State() || n.isa.State() != m.isa.State() || n.pm.State() != m.pm.State() {
		t.Fatal("state differs after round trip")
	}
	for l, irq := range []uint8{5, 10, 11, 5} {
		if n.irq.Route(uint8(l)) != irq {
			t.Errorf("restored link %d route %d", l, n.irq.Route(uint8(l)))
		}
	}
	if !n.pm.SCIEnabled() || n.io.In(PortRCR, 1) != 2 {
		t.Fatal("restored registers")
	}
	// Invalid states are refused.
	bad := m.pm.State()
	bad.PM1aCnt |= PM1CntSlpEn
	if n.pm.SetState(bad) == nil {
		t.Error("PM state with SLP_EN accepted")
	}
	if n.isa.SetState(PIIX3State{Config: m.isa.Snapshot(), RCR: 4}) == nil {
		t.Error("RCR with RCPU accepted")
	}
	if n.host.SetState(HostState{Config: m.isa.Snapshot()}) == nil {
		t.Error("PIIX3 config accepted by the host bridge")
	}
}
