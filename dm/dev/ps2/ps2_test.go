package ps2

import (
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
)

func newRig(t *testing.T) (*Controller, *hwtest.IOSpace, *hwtest.Interrupts, *hwtest.Shutdown) {
	t.Helper()
	io, irq, sd := hwtest.NewIOSpace(), &hwtest.Interrupts{}, &hwtest.Shutdown{}
	c := New(irq, sd)
	if err := c.ClaimPorts(io); err != nil {
		t.Fatal(err)
	}
	return c, io, irq, sd
}

// readOut waits for OBF like a driver and returns the byte.
func readOut(t *testing.T, io *hwtest.IOSpace) uint8 {
	t.Helper()
	if io.In(PortCommand, 1)&statOBF == 0 {
		t.Fatal("output buffer empty")
	}
	return uint8(io.In(PortData, 1))
}

func TestSelfTestAndCommandByte(t *testing.T) {
	_, io, irq, _ := newRig(t)
	if io.In(PortCommand, 1) != statCmd|statUnlocked {
		t.Fatalf("status %#x", io.In(PortCommand, 1))
	}
	io.Out(PortCommand, 1, ccmdSelfTest)
	if irq.ISALevel(IRQKeyboard) != true {
		t.Fatal("IRQ1 not raised for the reply")
	}
	if readOut(t, io) != 0x55 || io.In(PortCommand, 1)&statSelfTest == 0 {
		t.Fatal("self-test")
	}
	if irq.ISALevel(IRQKeyboard) || io.In(PortCommand, 1)&statOBF != 0 {
		t.Fatal("IRQ1/OBF not cleared by the read")
	}
	io.Out(PortCommand, 1, ccmdKbdTest)
	io.Out(PortCommand, 1, ccmdTestMouse)
	if readOut(t, io) != 0 || readOut(t, io) != 0 {
		t.Fatal("interface tests")
	}
	// Command byte write/read; interrupts off → no IRQ.
	io.Out(PortCommand, 1, ccmdWriteMode)
	io.Out(PortData, 1, 0x44)
	io.Out(PortCommand, 1, ccmdReadMode)
	if irq.ISALevel(IRQKeyboard) || readOut(t, io) != 0x44 {
		t.Fatal("command byte")
	}
}

func TestKeyboardAndMouse(t *testing.T) {
	_, io, irq, _ := newRig(t)
	expect := func(what string, want ...uint8) {
		t.Helper()
		for i, w := range want {
			if got := readOut(t, io); got != w {
				t.Fatalf("%s: byte %d = %#x, want %#x", what, i, got, w)
			}
		}
		if io.In(PortCommand, 1)&statOBF != 0 {
			t.Fatalf("%s: extra output", what)
		}
	}
	io.Out(PortData, 1, 0xff)
	expect("kbd reset", replyACK, replyPOR)
	io.Out(PortData, 1, 0xf2)
	expect("kbd id", replyACK, replyID, 0x83)
	io.Out(PortData, 1, 0xed)
	io.Out(PortData, 1, 0x07)
	expect("leds", replyACK, replyACK)
	io.Out(PortData, 1, 0xf0)
	io.Out(PortData, 1, 0)
	expect("scancode set", replyACK, replyACK, 2)
	io.Out(PortData, 1, 0x99)
	expect("unknown", replyResend)
	// Mouse through 0xd4.
	io.Out(PortCommand, 1, ccmdWriteMouse)
	io.Out(PortData, 1, 0xff)
	if io.In(PortCommand, 1)&statMouseOBF == 0 || !irq.ISALevel(IRQMouse) || irq.ISALevel(IRQKeyboard) {
		t.Fatal("mouse output not flagged")
	}
	expect("mouse reset", replyACK, replyPOR, 0)
	if irq.ISALevel(IRQMouse) {
		t.Fatal("IRQ12 still high")
	}
	io.Out(PortCommand, 1, ccmdWriteMouse)
	io.Out(PortData, 1, 0xf3)
	io.Out(PortCommand, 1, ccmdWriteMouse)
	io.Out(PortData, 1, 40)
	io.Out(PortCommand, 1, ccmdWriteMouse)
	io.Out(PortData, 1, 0xe9)
	expect("mouse status", replyACK, replyACK, replyACK, 0, 2, 40)
	io.Out(PortCommand, 1, ccmdWriteAuxObuf)
	io.Out(PortData, 1, 0x5a)
	expect("aux loopback", 0x5a)
}

func TestReset(t *testing.T) {
	_, io, _, sd := newRig(t)
	io.Out(PortCommand, 1, 0xff) // pulse nothing
	if sd.Reboots() != 0 {
		t.Fatal("0xff rebooted")
	}
	io.Out(PortCommand, 1, 0xfe)
	if sd.Reboots() != 1 {
		t.Fatal("0xfe did not reboot")
	}
	io.Out(PortCommand, 1, ccmdWriteOutport)
	io.Out(PortData, 1, 0xce) // reset bit low
	if sd.Reboots() != 2 {
		t.Fatal("output port reset")
	}
	io.Out(PortA20, 1, 0x02)
	if sd.Reboots() != 2 || io.In(PortA20, 1) != 0x02 {
		t.Fatal("port 92 A20")
	}
	io.Out(PortA20, 1, 0x03)
	io.Out(PortA20, 1, 0x03) // no edge
	if sd.Reboots() != 3 {
		t.Fatalf("port 92 reset: %d", sd.Reboots())
	}
}

func TestMalformedAndState(t *testing.T) {
	log := hwtest.CaptureLog(t)
	c, io, irq, sd := newRig(t)
	if c.ReadPort(PortData, 2) != 0xffff || c.ReadPort(0x61, 1) != 0xff {
		t.Error("bad reads")
	}
	c.WritePort(PortCommand, 4, 0xfe)
	c.WritePort(0x61, 1, 0)
	io.Out(PortCommand, 1, 0x12)
	if sd.Reboots() != 0 {
		t.Fatal("malformed write rebooted")
	}
	if n := len(log.Records()); n != 5 {
		t.Errorf("%d logs: %q", n, log.Records())
	}
	io.Out(PortData, 1, 0xf2)
	st := c.State()
	c2, io2, irq2, _ := newRig(t)
	if err := c2.SetState(st); err != nil {
		t.Fatal(err)
	}
	if !irq2.ISALevel(IRQKeyboard) || !irq.ISALevel(IRQKeyboard) {
		t.Fatal("IRQ after restore")
	}
	for _, w := range []uint8{replyACK, replyID, 0x83} {
		if got := readOut(t, io2); got != w {
			t.Fatalf("restored queue %#x want %#x", got, w)
		}
	}
	if c2.SetState(State{Queue: []byte{1}, ScanSet: 2}) == nil || c2.SetState(State{ScanSet: 9}) == nil {
		t.Fatal("bad state accepted")
	}
}
