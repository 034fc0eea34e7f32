package hwtest

import (
	"errors"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

type regs struct{ last uint32 }

func (r *regs) ReadPort(port uint16, size int) uint32     { return uint32(port) }
func (r *regs) WritePort(port uint16, size int, v uint32) { r.last = v }
func (r *regs) ReadMMIO(addr uint64, size int) uint64     { return addr }
func (r *regs) WriteMMIO(addr uint64, size int, v uint64) { r.last = uint32(v) }

func TestIOSpace(t *testing.T) {
	s := NewIOSpace()
	r := &regs{}
	if err := s.ClaimPorts(0x10, 0x10, r); err != nil {
		t.Fatal(err)
	}
	if err := s.ClaimPorts(0x18, 2, r); !errors.Is(err, ErrOverlap) {
		t.Fatalf("overlap: %v", err)
	}
	if err := s.ClaimPorts(0xffff, 2, r); !errors.Is(err, ErrInvalid) {
		t.Fatalf("wrap: %v", err)
	}
	if got := s.In(0x12, 1); got != 0x12 {
		t.Fatalf("In = %#x", got)
	}
	if got := s.In(0x20, 2); got != 0xffff || s.Unclaimed() != 1 {
		t.Fatalf("unclaimed In = %#x, %d", got, s.Unclaimed())
	}
	s.Out(0x1f, 1, 7)
	if r.last != 7 {
		t.Fatal("Out not dispatched")
	}
	if err := s.ClaimMMIO(0xf0000000, 0x1000, r); err != nil {
		t.Fatal(err)
	}
	if s.ReadMMIO(0xf0000010, 4) != 0xf0000010 || s.ReadMMIO(0xf0001000, 4) != 0xffffffff {
		t.Fatal("MMIO dispatch")
	}
	if !s.HasPorts(0x10, 0x10) || !s.HasMMIO(0xf0000000, 0x1000) || len(s.Claimed()) != 2 {
		t.Fatalf("claimed %v", s.Claimed())
	}
	s.ReleasePorts(0x10, 8)
	s.ReleasePorts(0x10, 0x10)
	ev := s.Events()
	if ev[len(ev)-2].Op != OpReleaseUnclaimed || ev[len(ev)-1].Op != OpRelease || s.HasPorts(0x10, 0x10) {
		t.Fatalf("events %v", ev)
	}
}

func TestInterrupts(t *testing.T) {
	var in Interrupts
	in.SetISAIRQ(4, true)
	in.SetISAIRQ(4, false)
	in.SetISAIRQ(4, true)
	if !in.ISALevel(4) || in.Raises(4) != 2 {
		t.Fatal("ISA")
	}
	if err := in.SetISAIRQ(16, true); !errors.Is(err, ErrInvalid) {
		t.Fatal("ISA 16 accepted")
	}
	in.SetPCILinkRoute(2, 11)
	in.SetPCIINTx(3, 0, true)
	if in.Route(2) != 11 || !in.INTxLevel(3, 0) || len(in.Events()) != 5 {
		t.Fatalf("events %v", in.Events())
	}
}

func TestMemory(t *testing.T) {
	m := NewMemory(64<<20, Range{Base: 0x10000, N: 0x1000})
	p := []byte{1, 2, 3, 4}
	if err := m.WriteGPA(0xffe, p); err != nil {
		t.Fatal(err)
	}
	q := make([]byte, 4)
	if err := m.ReadGPA(0xffe, q); err != nil || string(q) != string(p) {
		t.Fatalf("%v %v", err, q)
	}
	if err := m.ReadGPA(0xfffe, q); !errors.Is(err, hw.ErrBadGPA) {
		t.Fatalf("hole: %v", err)
	}
	if err := m.WriteGPA(64<<20-2, q); !errors.Is(err, hw.ErrBadGPA) {
		t.Fatalf("end: %v", err)
	}
	if err := m.ReadGPA(^uint64(0), q); !errors.Is(err, hw.ErrBadGPA) {
		t.Fatalf("wrap: %v", err)
	}
}

func TestShutdownDirty(t *testing.T) {
	var s Shutdown
	s.Reboot()
	s.PowerOff()
	if s.Reboots() != 1 || s.PowerOffs() != 1 || s.Calls()[0] != "reboot" {
		t.Fatal("shutdown")
	}
	var d Dirty
	d.MarkDirty(10, 3)
	d.MarkDirty(11, 1)
	if len(d.Pages()) != 3 || !d.IsDirty(12) || d.IsDirty(13) {
		t.Fatal("dirty")
	}
}
