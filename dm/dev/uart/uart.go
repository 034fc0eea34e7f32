// Package uart emulates a 16550A UART as QEMU's hw/char/serial.c does
// (register semantics, FIFO handling, interrupt priorities), wired to an
// io.Writer for output and fed by Input for input. Xen routes the ISA IRQ
// line through its emulated PIC/IOAPIC; the line is driven with level
// semantics through hw.Interrupts.SetISAIRQ.
//
// Differences from QEMU, all invisible to a driver that follows the
// datasheet:
//   - Transmission completes at once (THRE/TEMT set on the THR write); the
//     bytes go to a bounded queue drained by a goroutine, so a slow or
//     unread writer never blocks the guest. When the queue is full, bytes
//     are dropped and counted (Stats.TxDropped).
//   - Input is buffered in a bounded host-side queue in front of the 16-byte
//     receive FIFO, which refills as the guest reads (as QEMU pulls from its
//     chardev only when serial_can_receive allows). Overflowing that queue
//     drops bytes and sets LSR.OE.
//   - The character-timeout interrupt is pending as soon as the FIFO holds
//     data below the trigger level and no more input is queued, instead of
//     four character times later.
package uart

import (
	"fmt"
	"io"
	"sync"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// Standard PC serial ports.
const (
	COM1Base = 0x3f8
	COM1IRQ  = 4
	COM2Base = 0x2f8
	COM2IRQ  = 3

	// NumPorts is how many ports the UART decodes from its base.
	NumPorts = 8
	// FIFOSize is the 16550A's receive and transmit FIFO depth.
	FIFOSize = 16
	// RxQueueSize bounds the input waiting for room in the receive FIFO.
	RxQueueSize = 4096
	// TxQueueSize bounds the output waiting for the writer.
	TxQueueSize = 64 << 10
)

// Register offsets.
const (
	regRBR = 0 // RBR (read), THR (write); DLL when LCR.DLAB
	regIER = 1 // DLM when LCR.DLAB
	regIIR = 2 // IIR (read), FCR (write)
	regLCR = 3
	regMCR = 4
	regLSR = 5
	regMSR = 6
	regSCR = 7
)

// Register bits (QEMU serial.c, linux/serial_reg.h).
const (
	IERRDI  = 0x01 // received data available
	IERTHRI = 0x02 // THR empty
	IERRLSI = 0x04 // receiver line status
	IERMSI  = 0x08 // modem status

	IIRNoInt = 0x01
	IIRID    = 0x0e
	IIRMSI   = 0x00
	IIRTHRI  = 0x02
	IIRRDI   = 0x04
	IIRRLSI  = 0x06
	IIRCTI   = 0x0c
	IIRFE    = 0xc0 // FIFOs enabled

	FCRFE  = 0x01 // FIFO enable
	FCRRFR = 0x02 // receive FIFO reset
	FCRXFR = 0x04 // transmit FIFO reset

	LCRDLAB = 0x80

	MCRDTR  = 0x01
	MCRRTS  = 0x02
	MCROUT1 = 0x04
	MCROUT2 = 0x08
	MCRLoop = 0x10

	LSRDR     = 0x01
	LSROE     = 0x02
	LSRPE     = 0x04
	LSRFE     = 0x08
	LSRBI     = 0x10
	LSRTHRE   = 0x20
	LSRTEMT   = 0x40
	lsrIntAny = LSROE | LSRPE | LSRFE | LSRBI

	MSRCTS      = 0x10
	MSRDSR      = 0x20
	MSRDCD      = 0x80
	msrAnyDelta = 0x0f
)

// UART is one 16550A. It implements hw.PortIO for its eight ports and is
// safe for concurrent use: Input may be called from any goroutine.
type UART struct {
	name string
	base uint16
	irq  uint8
	ints hw.Interrupts
	warn hw.Warner

	tx     chan byte
	stop   chan struct{}
	closer sync.Once

	mu       sync.Mutex
	r        regs
	rxFIFO   []byte // FIFO mode receive FIFO (≤ FIFOSize)
	rxQueue  []byte // host input not yet in the FIFO/RBR (≤ RxQueueSize)
	irqLevel bool
	closed   bool
	stats    Stats
}

// regs are the guest-visible registers.
type regs struct {
	rbr, ier, iir, lcr, mcr, lsr, msr, scr, fcr uint8
	divider                                     uint16
	thrIPending                                 bool
}

// Stats counts what was lost.
type Stats struct {
	TxBytes   uint64 // bytes handed to the writer queue
	TxDropped uint64 // output dropped because the writer queue was full
	RxDropped uint64 // input dropped because the receive queue was full
}

// New returns a UART at ports [base, base+8) raising ISA IRQ irq, writing
// its output to out (nil discards it). Close stops the output goroutine.
func New(name string, base uint16, irq uint8, ints hw.Interrupts, out io.Writer) (*UART, error) {
	if irq > 15 {
		return nil, fmt.Errorf("uart %s: ISA IRQ %d out of range", name, irq)
	}
	if int(base)+NumPorts > 0x10000 || base == 0 {
		return nil, fmt.Errorf("uart %s: base port %#x out of range", name, base)
	}
	if ints == nil {
		return nil, fmt.Errorf("uart %s: no interrupt sink", name)
	}
	u := &UART{name: name, base: base, irq: irq, ints: ints, stop: make(chan struct{})}
	u.reset()
	if out != nil {
		u.tx = make(chan byte, TxQueueSize)
		go u.writer(out)
	}
	return u, nil
}

// reset is serial_reset.
func (u *UART) reset() {
	u.r = regs{
		iir:     IIRNoInt,
		lsr:     LSRTEMT | LSRTHRE,
		msr:     MSRDCD | MSRDSR | MSRCTS,
		divider: 0x0c, // 9600 baud
		mcr:     MCROUT2,
	}
	u.rxFIFO = u.rxFIFO[:0]
}

// writer copies queued output to out until Close.
func (u *UART) writer(out io.Writer) {
	buf := make([]byte, 0, 4096)
	for {
		select {
		case <-u.stop:
			return
		case b := <-u.tx:
			buf = append(buf[:0], b)
		more:
			for len(buf) < cap(buf) {
				select {
				case b := <-u.tx:
					buf = append(buf, b)
				default:
					break more
				}
			}
			if _, err := out.Write(buf); err != nil {
				u.warn.Warn("uart: output write failed; output is dropped", "uart", u.name, "err", err)
			}
		}
	}
}

// Close stops the output goroutine without waiting for it: it exits once
// its current Write returns (closing the writer cuts a blocked Write short).
// Output queued but not yet written, and output written after Close, is
// dropped. Close is idempotent.
func (u *UART) Close() {
	u.closer.Do(func() {
		u.mu.Lock()
		u.closed = true
		u.mu.Unlock()
		close(u.stop)
	})
}

// Stats returns the byte counters.
func (u *UART) Stats() Stats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.stats
}

// ClaimPorts claims [base, base+8) in io.
func (u *UART) ClaimPorts(io hw.IOSpace) error {
	if err := io.ClaimPorts(u.base, NumPorts, u); err != nil {
		return fmt.Errorf("uart %s: claim ports %#x+%d: %w", u.name, u.base, NumPorts, err)
	}
	return nil
}

// ReadPort implements hw.PortIO. Wider accesses are split into byte
// accesses at consecutive registers, as QEMU's serial_io_ops
// (impl.max_access_size 1) does; bytes beyond the UART read 0xff.
func (u *UART) ReadPort(port uint16, size int) uint32 {
	if size != 1 && size != 2 && size != 4 {
		u.warn.Warn("uart: bad read size", "uart", u.name, "port", fmt.Sprintf("%#x", port), "size", size)
		return 0xffffffff
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	var v uint32
	for i := 0; i < size; i++ {
		off := int(port) + i - int(u.base)
		b := uint8(0xff)
		if off >= 0 && off < NumPorts {
			b = u.read(off)
			u.updateIRQ()
		} else {
			u.warn.Warn("uart: read outside its ports", "uart", u.name, "port", fmt.Sprintf("%#x", port), "size", size)
		}
		v |= uint32(b) << (8 * i)
	}
	return v
}

// WritePort implements hw.PortIO (split like ReadPort).
func (u *UART) WritePort(port uint16, size int, v uint32) {
	if size != 1 && size != 2 && size != 4 {
		u.warn.Warn("uart: bad write size", "uart", u.name, "port", fmt.Sprintf("%#x", port), "size", size)
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := 0; i < size; i++ {
		off := int(port) + i - int(u.base)
		if off >= 0 && off < NumPorts {
			u.write(off, uint8(v>>(8*i)))
			u.updateIRQ()
		} else {
			u.warn.Warn("uart: write outside its ports", "uart", u.name, "port", fmt.Sprintf("%#x", port), "size", size)
		}
	}
}

func (u *UART) fifoOn() bool { return u.r.fcr&FCRFE != 0 }

// triggerLevel is recv_fifo_itl.
func (u *UART) triggerLevel() int {
	return [4]int{1, 4, 8, 14}[u.r.fcr>>6]
}

// read is serial_ioport_read for one register; called with u.mu held.
func (u *UART) read(off int) uint8 {
	r := &u.r
	switch off {
	case regRBR:
		if r.lcr&LCRDLAB != 0 {
			return uint8(r.divider)
		}
		var b uint8
		if u.fifoOn() {
			if len(u.rxFIFO) > 0 {
				b = u.rxFIFO[0]
				u.rxFIFO = append(u.rxFIFO[:0], u.rxFIFO[1:]...)
			}
		} else {
			b = r.rbr
			r.lsr &^= LSRDR | LSRBI
		}
		u.refill()
		return b
	case regIER:
		if r.lcr&LCRDLAB != 0 {
			return uint8(r.divider >> 8)
		}
		return r.ier
	case regIIR:
		v := r.iir
		if v&IIRID == IIRTHRI {
			r.thrIPending = false
		}
		return v
	case regLCR:
		return r.lcr
	case regMCR:
		return r.mcr
	case regLSR:
		v := r.lsr
		r.lsr &^= LSRBI | LSROE
		return v
	case regMSR:
		if r.mcr&MCRLoop != 0 {
			// Modem outputs looped back to the inputs.
			return (r.mcr&0x0c)<<4 | (r.mcr&0x02)<<3 | (r.mcr&0x01)<<5
		}
		v := r.msr
		r.msr &= 0xf0
		return v
	case regSCR:
		return r.scr
	}
	return 0xff
}

// write is serial_ioport_write for one register; called with u.mu held.
func (u *UART) write(off int, v uint8) {
	r := &u.r
	switch off {
	case regRBR:
		if r.lcr&LCRDLAB != 0 {
			r.divider = r.divider&0xff00 | uint16(v)
			return
		}
		u.transmit(v)
	case regIER:
		if r.lcr&LCRDLAB != 0 {
			r.divider = r.divider&0x00ff | uint16(v)<<8
			return
		}
		changed := (r.ier ^ v) & 0x0f
		r.ier = v & 0x0f
		// Enabling THRI while THR is empty raises it again, even if an
		// IIR read had acknowledged it (QEMU, Bochs; Windows relies on it).
		if changed&IERTHRI != 0 {
			r.thrIPending = r.ier&IERTHRI != 0 && r.lsr&LSRTHRE != 0
		}
	case regIIR: // FCR
		if (v^r.fcr)&FCRFE != 0 {
			v |= FCRXFR | FCRRFR
		}
		if v&FCRRFR != 0 {
			r.lsr &^= LSRDR | LSRBI
			u.rxFIFO = u.rxFIFO[:0]
		}
		if v&FCRXFR != 0 {
			r.lsr |= LSRTHRE
			r.thrIPending = true
		}
		r.fcr = v & 0xc9
		if r.fcr&FCRFE != 0 {
			r.iir |= IIRFE
		} else {
			r.iir &^= IIRFE
		}
		u.refill()
	case regLCR:
		r.lcr = v
	case regMCR:
		was := r.mcr
		r.mcr = v & 0x1f
		if was&MCRLoop != 0 && r.mcr&MCRLoop == 0 {
			u.refill()
		}
	case regLSR:
		u.warn.Warn("uart: write to read-only LSR ignored", "uart", u.name, "value", v)
	case regMSR:
		u.warn.Warn("uart: write to read-only MSR ignored", "uart", u.name, "value", v)
	case regSCR:
		r.scr = v
	}
}

// transmit sends one byte (serial_xmit): to the receiver in loopback mode,
// else to the output queue. The THR is empty again at once.
func (u *UART) transmit(b uint8) {
	r := &u.r
	if r.mcr&MCRLoop != 0 {
		u.receive(b)
	} else if !u.closed && u.tx != nil {
		select {
		case u.tx <- b:
			u.stats.TxBytes++
		default:
			u.stats.TxDropped++
			u.warn.Warn("uart: output queue full (nobody reading the console?); dropping output", "uart", u.name)
		}
	}
	r.lsr |= LSRTHRE | LSRTEMT
	r.thrIPending = true
}

// receive puts one byte into the receiver (serial_receive1): overruns keep
// the FIFO contents and set LSR.OE. Called with u.mu held.
func (u *UART) receive(b uint8) {
	r := &u.r
	if u.fifoOn() {
		if len(u.rxFIFO) < FIFOSize {
			u.rxFIFO = append(u.rxFIFO, b)
		} else {
			r.lsr |= LSROE
		}
		r.lsr |= LSRDR
		return
	}
	if r.lsr&LSRDR != 0 {
		r.lsr |= LSROE
	}
	r.rbr = b
	r.lsr |= LSRDR
}

// refill moves queued input into the receiver while it has room (and the
// receiver is not in loopback), and keeps LSR.DR in step with the FIFO.
// Called with u.mu held.
func (u *UART) refill() {
	r := &u.r
	if r.mcr&MCRLoop == 0 {
		if u.fifoOn() {
			n := min(FIFOSize-len(u.rxFIFO), len(u.rxQueue))
			u.rxFIFO = append(u.rxFIFO, u.rxQueue[:n]...)
			u.rxQueue = append(u.rxQueue[:0], u.rxQueue[n:]...)
		} else if r.lsr&LSRDR == 0 && len(u.rxQueue) > 0 {
			u.receive(u.rxQueue[0])
			u.rxQueue = append(u.rxQueue[:0], u.rxQueue[1:]...)
		}
	}
	if u.fifoOn() {
		if len(u.rxFIFO) > 0 {
			r.lsr |= LSRDR
		} else {
			r.lsr &^= LSRDR | LSRBI
		}
	}
}

// Input queues bytes received from the outside (the pty). Bytes that do
// not fit in the bounded queue are dropped, counted, and flagged as an
// overrun in LSR.
func (u *UART) Input(p []byte) {
	if len(p) == 0 {
		return
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	// Queue, let the receiver take what it can, queue the rest.
	for pass := 0; pass < 2 && len(p) > 0; pass++ {
		n := min(len(p), RxQueueSize-len(u.rxQueue))
		u.rxQueue = append(u.rxQueue, p[:n]...)
		p = p[n:]
		u.refill()
	}
	if len(p) > 0 {
		u.stats.RxDropped += uint64(len(p))
		u.r.lsr |= LSROE
		u.warn.Warn("uart: input queue full (guest not reading); dropping input", "uart", u.name)
	}
	u.updateIRQ()
}

// interrupt computes IIR's identification as serial_update_irq does, in
// priority order: line status, character timeout, received data, THR
// empty, modem status.
func (u *UART) interrupt() uint8 {
	r := &u.r
	switch {
	case r.ier&IERRLSI != 0 && r.lsr&lsrIntAny != 0:
		return IIRRLSI
	case r.ier&IERRDI != 0 && u.fifoOn() && len(u.rxFIFO) > 0 && len(u.rxFIFO) < u.triggerLevel() && len(u.rxQueue) == 0:
		return IIRCTI
	case r.ier&IERRDI != 0 && r.lsr&LSRDR != 0 && (!u.fifoOn() || len(u.rxFIFO) >= u.triggerLevel()):
		return IIRRDI
	case r.ier&IERTHRI != 0 && r.thrIPending:
		return IIRTHRI
	case r.ier&IERMSI != 0 && r.msr&msrAnyDelta != 0:
		return IIRMSI
	}
	return IIRNoInt
}

// updateIRQ recomputes IIR and drives the IRQ line on a change. Called
// with u.mu held, so level changes reach the sink in order.
func (u *UART) updateIRQ() {
	id := u.interrupt()
	u.r.iir = id | u.r.iir&0xf0
	u.setLine(id != IIRNoInt)
}

func (u *UART) setLine(level bool) {
	if level == u.irqLevel {
		return
	}
	u.irqLevel = level
	if err := u.ints.SetISAIRQ(u.irq, level); err != nil {
		u.warn.Warn("uart: set_isa_irq_level failed", "uart", u.name, "irq", u.irq, "level", level, "err", err)
	}
}

// State is the guest-visible state of the UART.
type State struct {
	RBR, IER, IIR, LCR, MCR, LSR, MSR, SCR, FCR uint8
	Divider                                     uint16
	THRIPending                                 bool
	RxFIFO                                      []byte // FIFO contents, oldest first
	RxQueue                                     []byte // input not yet in the FIFO
}

// State returns the UART's state.
func (u *UART) State() State {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.r
	return State{
		RBR: r.rbr, IER: r.ier, IIR: r.iir, LCR: r.lcr, MCR: r.mcr, LSR: r.lsr, MSR: r.msr, SCR: r.scr, FCR: r.fcr,
		Divider: r.divider, THRIPending: r.thrIPending,
		RxFIFO:  append([]byte(nil), u.rxFIFO...),
		RxQueue: append([]byte(nil), u.rxQueue...),
	}
}

// SetState restores a state returned by State and drives the IRQ line to
// match it.
func (u *UART) SetState(st State) error {
	switch {
	case len(st.RxFIFO) > FIFOSize:
		return fmt.Errorf("uart %s: saved receive FIFO holds %d bytes", u.name, len(st.RxFIFO))
	case len(st.RxQueue) > RxQueueSize:
		return fmt.Errorf("uart %s: saved receive queue holds %d bytes", u.name, len(st.RxQueue))
	case st.IER&0xf0 != 0 || st.MCR&0xe0 != 0 || st.FCR&^0xc9 != 0:
		return fmt.Errorf("uart %s: saved IER %#x / MCR %#x / FCR %#x have undefined bits", u.name, st.IER, st.MCR, st.FCR)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.r = regs{
		rbr: st.RBR, ier: st.IER, iir: st.IIR, lcr: st.LCR, mcr: st.MCR, lsr: st.LSR, msr: st.MSR, scr: st.SCR, fcr: st.FCR,
		divider: st.Divider, thrIPending: st.THRIPending,
	}
	u.rxFIFO = append(u.rxFIFO[:0], st.RxFIFO...)
	u.rxQueue = append(u.rxQueue[:0], st.RxQueue...)
	if u.fifoOn() {
		u.r.iir |= IIRFE
	} else {
		u.r.iir &^= IIRFE
	}
	u.refill()
	id := u.interrupt()
	u.r.iir = id | u.r.iir&0xf0
	// Drive the line unconditionally: the sink's level is unknown.
	u.irqLevel = id != IIRNoInt
	if err := u.ints.SetISAIRQ(u.irq, u.irqLevel); err != nil {
		u.warn.Warn("uart: set_isa_irq_level failed", "uart", u.name, "irq", u.irq, "err", err)
	}
	return nil
}
