// Package ps2 is a minimal i8042 keyboard controller (ports 0x60/0x64) with
// a keyboard and a mouse that answer their probes but never type or move,
// plus the port 0x92 "fast A20 and reset" register. It follows QEMU's
// hw/input/pckbd.c, hw/input/ps2.c and port92 (hw/i386/pc.c), so that
// firmware and guests probing PS/2 finish quickly, and so the keyboard
// controller reset (0x64 ← 0xfe, Linux's reboot=k fallback) and port 0x92
// bit 0 reboot the domain.
package ps2

import (
	"fmt"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// Ports and IRQs.
const (
	PortData    = 0x60
	PortCommand = 0x64 // status on read
	PortA20     = 0x92
	IRQKeyboard = 1
	IRQMouse    = 12

	queueSize = 256 // QEMU's PS2_QUEUE_SIZE
)

// Status register bits.
const (
	statOBF      = 0x01
	statSelfTest = 0x04
	statCmd      = 0x08
	statUnlocked = 0x10
	statMouseOBF = 0x20
)

// Command byte ("mode") bits.
const (
	modeKbdInt       = 0x01
	modeMouseInt     = 0x02
	modeDisableKbd   = 0x10
	modeDisableMouse = 0x20
	modeKCC          = 0x40 // scancode translation
)

// Controller commands written to PortCommand.
const (
	ccmdReadMode     = 0x20
	ccmdWriteMode    = 0x60
	ccmdMouseDisable = 0xa7
	ccmdMouseEnable  = 0xa8
	ccmdTestMouse    = 0xa9
	ccmdSelfTest     = 0xaa
	ccmdKbdTest      = 0xab
	ccmdKbdDisable   = 0xad
	ccmdKbdEnable    = 0xae
	ccmdReadInport   = 0xc0
	ccmdReadOutport  = 0xd0
	ccmdWriteOutport = 0xd1
	ccmdWriteObuf    = 0xd2
	ccmdWriteAuxObuf = 0xd3
	ccmdWriteMouse   = 0xd4
	ccmdDisableA20   = 0xdd
	ccmdEnableA20    = 0xdf

	outReset = 0x01
	outA20   = 0x02
	outOnes  = 0xcc // KBD_OUT_ONES

	replyACK    = 0xfa
	replyResend = 0xfe
	replyPOR    = 0xaa
	replyID     = 0xab
)

type outByte struct {
	b   byte
	aux bool
}

// Controller is the i8042 and port 0x92. It implements hw.PortIO for
// PortData, PortCommand and PortA20, and is safe for concurrent use.
type Controller struct {
	ints hw.Interrupts
	sd   hw.Shutdown
	warn hw.Warner

	mu       sync.Mutex
	status   uint8
	mode     uint8
	outport  uint8
	writeCmd uint8 // controller command awaiting its data byte (0 = none)
	kbdCmd   int   // keyboard command awaiting its argument (-1 = none)
	mouseCmd int
	scanSet  uint8
	mouse    struct{ rate, res, status uint8 }
	obData   uint8
	obAux    bool
	queue    []outByte
	port92   uint8
	kbdIRQ   bool
	mouseIRQ bool
}

// State is the guest-visible state of the controller.
type State struct {
	Status, Mode, Outport, WriteCmd uint8
	KbdCmd, MouseCmd                int
	ScanSet                         uint8
	MouseRate, MouseRes, MouseStat  uint8
	OBData                          uint8
	OBAux                           bool
	Queue                           []byte // pending output bytes…
	QueueAux                        []bool // …and whether each is from the mouse
	Port92                          uint8
}

// New returns the controller after reset (QEMU kbd_reset, ps2 resets).
func New(ints hw.Interrupts, sd hw.Shutdown) *Controller {
	c := &Controller{ints: ints, sd: sd}
	c.status = statCmd | statUnlocked
	c.mode = modeKbdInt | modeMouseInt
	c.outport = outReset | outA20 | outOnes
	c.kbdCmd, c.mouseCmd = -1, -1
	c.scanSet = 2
	c.mouse.rate, c.mouse.res = 100, 2
	return c
}

// ClaimPorts claims 0x60, 0x64 and 0x92 in io.
func (c *Controller) ClaimPorts(io hw.IOSpace) error {
	for i, p := range []uint16{PortData, PortCommand, PortA20} {
		if err := io.ClaimPorts(p, 1, c); err != nil {
			for _, q := range []uint16{PortData, PortCommand, PortA20}[:i] {
				io.ReleasePorts(q, 1)
			}
			return fmt.Errorf("i8042: claim port %#x: %w", p, err)
		}
	}
	return nil
}

// ReadPort implements hw.PortIO.
func (c *Controller) ReadPort(port uint16, size int) uint32 {
	if size != 1 {
		c.warn.Warn("i8042: bad read size", "port", fmt.Sprintf("%#x", port), "size", size)
		return ones(size)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch port {
	case PortData:
		v := c.obData
		if c.status&statOBF != 0 {
			c.status &^= statOBF | statMouseOBF
			c.load()
		}
		c.updateIRQ()
		return uint32(v)
	case PortCommand:
		return uint32(c.status)
	case PortA20:
		return uint32(c.port92)
	}
	c.warn.Warn("i8042: read of a port it does not decode", "port", fmt.Sprintf("%#x", port))
	return 0xff
}

// WritePort implements hw.PortIO.
func (c *Controller) WritePort(port uint16, size int, v uint32) {
	if size != 1 {
		c.warn.Warn("i8042: bad write size", "port", fmt.Sprintf("%#x", port), "size", size)
		return
	}
	b := uint8(v)
	c.mu.Lock()
	reboot := false
	switch port {
	case PortData:
		reboot = c.writeData(b)
	case PortCommand:
		reboot = c.writeCommand(b)
	case PortA20:
		old := c.port92
		c.port92 = b
		reboot = b&1 != 0 && old&1 == 0
	default:
		c.warn.Warn("i8042: write to a port it does not decode", "port", fmt.Sprintf("%#x", port))
	}
	c.updateIRQ()
	c.mu.Unlock()
	if reboot {
		if err := c.sd.Reboot(); err != nil {
			c.warn.Warn("i8042: reboot failed", "err", err)
		}
	}
}

// writeCommand is kbd_write_command; it reports whether to reset.
func (c *Controller) writeCommand(b uint8) bool {
	c.status |= statCmd
	if b >= 0xf0 { // pulse output bits 3:0; bit 0 low pulses reset
		return b&1 == 0
	}
	switch b {
	case ccmdReadMode:
		c.queueByte(c.mode, false)
	case ccmdWriteMode, ccmdWriteOutport, ccmdWriteObuf, ccmdWriteAuxObuf, ccmdWriteMouse:
		c.writeCmd = b
	case ccmdMouseDisable:
		c.mode |= modeDisableMouse
	case ccmdMouseEnable:
		c.mode &^= modeDisableMouse
	case ccmdTestMouse, ccmdKbdTest:
		c.queueByte(0x00, false)
	case ccmdSelfTest:
		c.status |= statSelfTest
		c.queueByte(0x55, false)
	case ccmdKbdDisable:
		c.mode |= modeDisableKbd
	case ccmdKbdEnable:
		c.mode &^= modeDisableKbd
	case ccmdReadInport:
		c.queueByte(0x80, false)
	case ccmdReadOutport:
		c.queueByte(c.outport, false)
	case ccmdDisableA20:
		c.outport &^= outA20
	case ccmdEnableA20:
		c.outport |= outA20
	default:
		c.warn.Warn("i8042: unsupported controller command ignored", "cmd", fmt.Sprintf("%#x", b))
	}
	return false
}

// writeData is kbd_write_data; it reports whether to reset.
func (c *Controller) writeData(b uint8) bool {
	c.status &^= statCmd
	cmd := c.writeCmd
	c.writeCmd = 0
	switch cmd {
	case ccmdWriteMode:
		c.mode = b
	case ccmdWriteOutport:
		c.outport = b
		return b&outReset == 0
	case ccmdWriteObuf:
		c.queueByte(b, false)
	case ccmdWriteAuxObuf:
		c.queueByte(b, true)
	case ccmdWriteMouse:
		c.writeMouse(b)
	default:
		c.writeKeyboard(b)
	}
	return false
}

// writeKeyboard is ps2_write_keyboard, for an MF2 keyboard that never types.
func (c *Controller) writeKeyboard(b uint8) {
	if cmd := c.kbdCmd; cmd >= 0 {
		c.kbdCmd = -1
		switch cmd {
		case 0xf0: // scancode set
			switch {
			case b == 0:
				set := c.scanSet
				if c.mode&modeKCC != 0 {
					set = [4]uint8{0, 0x43, 0x41, 0x3f}[set]
				}
				c.queueByte(replyACK, false)
				c.queueByte(set, false)
			case b <= 3:
				c.scanSet = b
				c.queueByte(replyACK, false)
			default:
				c.queueByte(replyResend, false)
			}
		default: // LEDs, rate, make/break: argument accepted
			c.queueByte(replyACK, false)
		}
		return
	}
	switch b {
	case 0x00:
		c.queueByte(replyACK, false)
	case 0x05:
		c.queueByte(replyResend, false)
	case 0xf2: // get ID
		id := uint8(0x83)
		if c.mode&modeKCC != 0 {
			id = 0x41
		}
		c.queueByte(replyACK, false)
		c.queueByte(replyID, false)
		c.queueByte(id, false)
	case 0xee: // echo
		c.queueByte(0xee, false)
	case 0xf0, 0xed, 0xf3, 0xfc:
		c.kbdCmd = int(b)
		c.queueByte(replyACK, false)
	case 0xf4, 0xf5, 0xf6, 0xfa:
		if b != 0xf4 && b != 0xfa {
			c.scanSet = 2
		}
		c.queueByte(replyACK, false)
	case 0xff: // reset
		c.scanSet = 2
		c.queueByte(replyACK, false)
		c.queueByte(replyPOR, false)
	default:
		c.queueByte(replyResend, false)
	}
}

// writeMouse is ps2_write_mouse, for a standard mouse that never moves.
func (c *Controller) writeMouse(b uint8) {
	if cmd := c.mouseCmd; cmd >= 0 {
		c.mouseCmd = -1
		if cmd == 0xf3 {
			c.mouse.rate = b
		} else {
			c.mouse.res = b
		}
		c.queueByte(replyACK, true)
		return
	}
	switch b {
	case 0xe6, 0xe7, 0xea, 0xee, 0xf0, 0xf4, 0xf5, 0xf6, 0xec:
		c.queueByte(replyACK, true)
	case 0xe8, 0xf3: // set resolution, sample rate: argument follows
		c.mouseCmd = int(b)
		c.queueByte(replyACK, true)
	case 0xf2: // get type: standard PS/2 mouse
		c.queueByte(replyACK, true)
		c.queueByte(0x00, true)
	case 0xe9: // status request
		for _, r := range []uint8{replyACK, c.mouse.status, c.mouse.res, c.mouse.rate} {
			c.queueByte(r, true)
		}
	case 0xeb: // read data: no movement
		for _, r := range []uint8{replyACK, 0x08, 0, 0} {
			c.queueByte(r, true)
		}
	case 0xff: // reset
		c.mouse.rate, c.mouse.res, c.mouse.status = 100, 2, 0
		for _, r := range []uint8{replyACK, replyPOR, 0x00} {
			c.queueByte(r, true)
		}
	default:
		c.warn.Warn("i8042: unsupported mouse command ignored", "cmd", fmt.Sprintf("%#x", b))
	}
}

// queueByte appends to the output queue and fills the output buffer if it
// is empty. Bytes beyond the queue size are dropped, as QEMU's ps2_queue.
func (c *Controller) queueByte(b uint8, aux bool) {
	if len(c.queue) >= queueSize {
		c.warn.Warn("i8042: output queue full; byte dropped")
		return
	}
	c.queue = append(c.queue, outByte{b, aux})
	if c.status&statOBF == 0 {
		c.load()
	}
}

// load moves the next queued byte into the output buffer.
func (c *Controller) load() {
	if len(c.queue) == 0 {
		return
	}
	o := c.queue[0]
	c.queue = append(c.queue[:0], c.queue[1:]...)
	c.obData, c.obAux = o.b, o.aux
	c.status |= statOBF
	if o.aux {
		c.status |= statMouseOBF
	}
}

// updateIRQ is kbd_update_irq with level semantics; called with c.mu held.
func (c *Controller) updateIRQ() {
	full := c.status&statOBF != 0
	kbd := full && !c.obAux && c.mode&modeKbdInt != 0
	mouse := full && c.obAux && c.mode&modeMouseInt != 0
	if kbd != c.kbdIRQ {
		c.kbdIRQ = kbd
		c.setIRQ(IRQKeyboard, kbd)
	}
	if mouse != c.mouseIRQ {
		c.mouseIRQ = mouse
		c.setIRQ(IRQMouse, mouse)
	}
}

func (c *Controller) setIRQ(irq uint8, level bool) {
	if err := c.ints.SetISAIRQ(irq, level); err != nil {
		c.warn.Warn("i8042: set_isa_irq_level failed", "irq", irq, "err", err)
	}
}

// State returns the controller's state.
func (c *Controller) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := State{
		Status: c.status, Mode: c.mode, Outport: c.outport, WriteCmd: c.writeCmd,
		KbdCmd: c.kbdCmd, MouseCmd: c.mouseCmd, ScanSet: c.scanSet,
		MouseRate: c.mouse.rate, MouseRes: c.mouse.res, MouseStat: c.mouse.status,
		OBData: c.obData, OBAux: c.obAux, Port92: c.port92,
	}
	for _, o := range c.queue {
		st.Queue = append(st.Queue, o.b)
		st.QueueAux = append(st.QueueAux, o.aux)
	}
	return st
}

// SetState restores a state returned by State and drives both IRQ lines.
func (c *Controller) SetState(st State) error {
	if len(st.Queue) != len(st.QueueAux) || len(st.Queue) > queueSize {
		return fmt.Errorf("i8042: saved output queue is malformed (%d bytes, %d flags)", len(st.Queue), len(st.QueueAux))
	}
	if st.ScanSet < 1 || st.ScanSet > 3 || st.KbdCmd < -1 || st.KbdCmd > 0xff || st.MouseCmd < -1 || st.MouseCmd > 0xff {
		return fmt.Errorf("i8042: saved keyboard/mouse state is out of range")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.status, c.mode, c.outport, c.writeCmd = st.Status, st.Mode, st.Outport, st.WriteCmd
	c.kbdCmd, c.mouseCmd, c.scanSet = st.KbdCmd, st.MouseCmd, st.ScanSet
	c.mouse.rate, c.mouse.res, c.mouse.status = st.MouseRate, st.MouseRes, st.MouseStat
	c.obData, c.obAux, c.port92 = st.OBData, st.OBAux, st.Port92
	c.queue = c.queue[:0]
	for i, b := range st.Queue {
		c.queue = append(c.queue, outByte{b, st.QueueAux[i]})
	}
	full := c.status&statOBF != 0
	kbd := full && !c.obAux && c.mode&modeKbdInt != 0
	mouse := full && c.obAux && c.mode&modeMouseInt != 0
	c.kbdIRQ, c.mouseIRQ = kbd, mouse
	c.setIRQ(IRQKeyboard, kbd)
	c.setIRQ(IRQMouse, mouse)
	return nil
}

func ones(size int) uint32 {
	switch size {
	case 1:
		return 0xff
	case 2:
		return 0xffff
	}
	return 0xffffffff
}
