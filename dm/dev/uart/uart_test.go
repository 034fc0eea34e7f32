package uart

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond for up to 2 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

type rig struct {
	u   *UART
	io  *hwtest.IOSpace
	irq *hwtest.Interrupts
	out *syncBuf
}

func newRig(t *testing.T) *rig {
	t.Helper()
	r := &rig{io: hwtest.NewIOSpace(), irq: &hwtest.Interrupts{}, out: &syncBuf{}}
	var err error
	r.u, err = New("com1", COM1Base, COM1IRQ, r.irq, r.out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.u.Close)
	if err := r.u.ClaimPorts(r.io); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) in(off uint16) uint8      { return uint8(r.io.In(COM1Base+off, 1)) }
func (r *rig) out1(off uint16, v uint8) { r.io.Out(COM1Base+off, 1, uint32(v)) }

func TestUARTExists(t *testing.T) {
	r := newRig(t)
	if !r.io.HasPorts(0x3f8, 8) {
		t.Fatal("ports not claimed")
	}
	// hvmloader uart_exists(0x3f8).
	a := r.in(1)
	r.out1(1, 0)
	b := r.in(1)
	r.out1(1, 0xf)
	c := r.in(1)
	r.out1(1, a)
	if b != 0 || c != 0xf {
		t.Fatalf("uart_exists: b=%#x c=%#x", b, c)
	}
	// The probe raised THRI transiently and left the line low.
	if r.irq.ISALevel(COM1IRQ) || r.irq.Raises(COM1IRQ) != 1 {
		t.Fatalf("IRQ after probe: level %v raises %d", r.irq.ISALevel(COM1IRQ), r.irq.Raises(COM1IRQ))
	}
	// Scratch register probe (Linux autoconfig) and reset values.
	r.out1(7, 0xa5)
	if r.in(7) != 0xa5 {
		t.Fatal("SCR")
	}
	if r.in(5) != LSRTHRE|LSRTEMT || r.in(2) != IIRNoInt || r.in(4) != MCROUT2 || r.in(6) != 0xb0 {
		t.Fatalf("reset LSR %#x IIR %#x MCR %#x MSR %#x", r.in(5), r.in(2), r.in(4), r.in(6))
	}
	// 16550A detection: FIFO enabled → IIR bits 7:6 set.
	r.out1(2, FCRFE)
	if r.in(2)&IIRFE != IIRFE {
		t.Fatal("FIFO bits in IIR")
	}
}

func TestTransmit(t *testing.T) {
	r := newRig(t)
	for _, c := range []byte("hello\n") {
		r.out1(0, c)
		if r.in(5)&(LSRTHRE|LSRTEMT) != LSRTHRE|LSRTEMT {
			t.Fatal("THR not empty after write")
		}
	}
	waitFor(t, "output", func() bool { return r.out.String() == "hello\n" })
	// DLAB: divisor latch, not THR.
	r.out1(3, LCRDLAB|0x03)
	r.out1(0, 0x01)
	r.out1(1, 0x00)
	if r.in(0) != 1 || r.in(1) != 0 || r.in(3) != LCRDLAB|3 {
		t.Fatal("divisor latch")
	}
	r.out1(3, 0x03)
	if r.u.State().Divider != 1 || r.u.Stats().TxBytes != 6 {
		t.Fatalf("state %+v stats %+v", r.u.State(), r.u.Stats())
	}
	// A 16-bit write splits into THR then IER, as in QEMU.
	r.io.Out(COM1Base, 2, 0x0221)
	if r.in(1) != 2 {
		t.Fatal("split write IER")
	}
	waitFor(t, "split write output", func() bool { return r.out.String() == "hello\n!" })
}

func TestTHRInterrupt(t *testing.T) {
	r := newRig(t)
	r.out1(1, IERTHRI)
	if !r.irq.ISALevel(COM1IRQ) || r.in(2) != IIRTHRI {
		t.Fatal("THRI not raised on enable")
	}
	// Reading IIR acknowledged it.
	if r.irq.ISALevel(COM1IRQ) || r.in(2) != IIRNoInt {
		t.Fatal("THRI not cleared by IIR read")
	}
	r.out1(0, 'x')
	if !r.irq.ISALevel(COM1IRQ) {
		t.Fatal("THRI not raised after transmit")
	}
	r.out1(1, 0)
	if r.irq.ISALevel(COM1IRQ) {
		t.Fatal("IRQ not lowered when IER cleared")
	}
}

func TestReceive(t *testing.T) {
	r := newRig(t)
	r.out1(1, IERRDI)
	r.u.Input([]byte("ab"))
	if !r.irq.ISALevel(COM1IRQ) || r.in(2) != IIRRDI || r.in(5)&LSRDR == 0 {
		t.Fatal("RDI not raised on input")
	}
	if r.in(0) != 'a' {
		t.Fatal("first byte")
	}
	// Non-FIFO mode: the next byte moves into RBR.
	if !r.irq.ISALevel(COM1IRQ) || r.in(0) != 'b' {
		t.Fatal("second byte")
	}
	if r.irq.ISALevel(COM1IRQ) || r.in(5)&LSRDR != 0 || r.in(2) != IIRNoInt {
		t.Fatal("still pending after draining")
	}
	// FIFO mode, trigger level 14.
	r.out1(2, 0xc7)
	r.u.Input([]byte("0123"))
	if r.in(2) != IIRFE|IIRCTI || !r.irq.ISALevel(COM1IRQ) {
		t.Fatalf("IIR %#x, want character timeout", r.in(2))
	}
	r.u.Input([]byte("456789abcdefghij")) // 20 in all: 16 in the FIFO, 4 queued
	if r.in(2) != IIRFE|IIRRDI {
		t.Fatalf("IIR %#x, want RDI", r.in(2))
	}
	var got []byte
	for r.in(5)&LSRDR != 0 {
		got = append(got, r.in(0))
	}
	if string(got) != "0123456789abcdefghij" || r.in(5)&LSROE != 0 {
		t.Fatalf("read %q", got)
	}
	if r.irq.ISALevel(COM1IRQ) {
		t.Fatal("IRQ still high")
	}
	// Receive FIFO reset.
	r.u.Input([]byte("zz"))
	r.out1(2, 0xc1|FCRRFR)
	if r.in(5)&LSRDR != 0 || r.irq.ISALevel(COM1IRQ) {
		t.Fatal("FIFO reset")
	}
}

func TestInputOverrun(t *testing.T) {
	r := newRig(t)
	r.u.Input(make([]byte, RxQueueSize+100))
	st := r.u.Stats()
	if st.RxDropped != 99 { // one byte is in RBR, RxQueueSize queued
		t.Fatalf("dropped %d", st.RxDropped)
	}
	r.out1(1, IERRLSI|IERRDI)
	if r.in(2) != IIRRLSI {
		t.Fatal("RLSI")
	}
	if r.in(5)&LSROE == 0 || r.in(5)&LSROE != 0 {
		t.Fatal("OE not reported once")
	}
	if r.in(2) != IIRRDI {
		t.Fatal("RDI after LSR read")
	}
}

func TestInterruptPriorities(t *testing.T) {
	r := newRig(t)
	r.out1(4, MCROUT2|MCRLoop)
	// Loopback, non-FIFO: two bytes overrun RBR.
	r.out1(0, 'p')
	r.out1(0, 'q')
	st := r.u.State()
	st.MSR |= 0x01 // delta CTS
	st.MCR = MCROUT2
	if err := r.u.SetState(st); err != nil {
		t.Fatal(err)
	}
	r.out1(1, 0x0f)
	want := []struct {
		iir   uint8
		clear func()
	}{
		{IIRRLSI, func() { r.in(5) }},
		{IIRRDI, func() { r.in(0) }},
		{IIRTHRI, func() {}}, // reading IIR acknowledges THRI
		{IIRMSI, func() { r.in(6) }},
		{IIRNoInt, nil},
	}
	for i, w := range want {
		if got := r.in(2); got != w.iir {
			t.Fatalf("step %d: IIR %#x, want %#x", i, got, w.iir)
		}
		if r.irq.ISALevel(COM1IRQ) != (w.iir != IIRNoInt) {
			t.Fatalf("step %d: IRQ level", i)
		}
		if w.clear != nil {
			w.clear()
		}
	}
	if r.u.State().RBR != 'q' {
		t.Fatal("overrun kept the newest byte in RBR (QEMU behaviour)")
	}
}

func TestLoopback(t *testing.T) {
	r := newRig(t)
	r.out1(2, FCRFE)
	r.out1(4, MCRLoop|MCROUT2|MCRRTS|MCRDTR)
	if r.in(6) != MSRCTS|MSRDSR|MSRDCD {
		t.Fatalf("loopback MSR %#x", r.in(6))
	}
	r.u.Input([]byte("ext")) // held back while in loopback
	r.out1(0, 'L')
	if r.in(5)&LSRDR == 0 || r.in(0) != 'L' || r.in(5)&LSRDR != 0 {
		t.Fatal("loopback byte")
	}
	r.out1(4, MCROUT2)
	if r.in(0) != 'e' {
		t.Fatal("external input after loopback")
	}
	time.Sleep(5 * time.Millisecond)
	if r.out.String() != "" {
		t.Fatalf("loopback byte reached the writer: %q", r.out.String())
	}
}

type blockingWriter struct{ release chan struct{} }

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	return len(p), nil
}

func TestSlowWriterNeverBlocks(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	irq := &hwtest.Interrupts{}
	u, err := New("com1", COM1Base, COM1IRQ, irq, w)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		for i := 0; i < TxQueueSize+5000; i++ {
			u.WritePort(COM1Base, 1, 'x')
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("guest writes blocked")
	}
	st := u.Stats()
	// The writer goroutine holds up to 4 KiB on top of the queue.
	if st.TxDropped < 5000-4096 || st.TxBytes+st.TxDropped != TxQueueSize+5000 {
		t.Fatalf("stats %+v", st)
	}
	u.Close()
	close(w.release)
	u.WritePort(COM1Base, 1, 'y') // after Close: dropped silently, no panic
}

func TestConcurrentInput(t *testing.T) {
	r := newRig(t)
	r.out1(2, 0x07)
	r.out1(1, IERRDI|IERTHRI)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			r.u.Input([]byte("0123456789"))
		}
	}()
	n := 0
	for deadline := time.Now().Add(5 * time.Second); n < 2000 && time.Now().Before(deadline); {
		r.in(2)
		if r.in(5)&LSRDR != 0 {
			if want := byte('0' + n%10); r.in(0) != want {
				t.Fatalf("byte %d out of order", n)
			}
			n++
		}
		r.out1(0, '.')
	}
	wg.Wait()
	if n != 2000 || r.u.Stats().RxDropped != 0 {
		t.Fatalf("received %d, dropped %d", n, r.u.Stats().RxDropped)
	}
}

func TestMalformed(t *testing.T) {
	log := hwtest.CaptureLog(t)
	r := newRig(t)
	r.out1(7, 0x11)
	before := r.u.State()
	if r.u.ReadPort(COM1Base, 3) != 0xffffffff || r.u.ReadPort(COM1Base, 0) != 0xffffffff {
		t.Error("bad-size read")
	}
	if got := r.u.ReadPort(COM1Base+6, 4); got&0xffff0000 != 0xffff0000 {
		t.Errorf("read past the end %#x", got)
	}
	if r.u.ReadPort(0x100, 1) != 0xff {
		t.Error("foreign port read")
	}
	r.u.WritePort(COM1Base, 8, 0x41)
	r.u.WritePort(0x100, 1, 0x41)
	r.out1(5, 0)    // LSR is read-only
	r.out1(6, 0xff) // MSR is read-only
	r.out1(5, 0)
	st := r.u.State()
	st.MSR = before.MSR // the 4-byte read at +6 read MSR (clearing nothing) and SCR
	if st.LSR != before.LSR || st.SCR != 0x11 {
		t.Fatalf("state changed: %+v", st)
	}
	if n := len(log.Records()); n != 8 {
		t.Errorf("%d logs, want 8: %q", n, log.Records())
	}
	time.Sleep(2 * time.Millisecond)
	if r.out.String() != "" {
		t.Fatal("malformed write transmitted")
	}
	r.out1(0, 'k')
	waitFor(t, "output after malformed accesses", func() bool { return r.out.String() == "k" })
	for _, bad := range []struct {
		base uint16
		irq  uint8
	}{{0xfffc, 4}, {0, 4}, {0x3f8, 16}} {
		if _, err := New("x", bad.base, bad.irq, r.irq, nil); err == nil {
			t.Errorf("New(%#x, %d) accepted", bad.base, bad.irq)
		}
	}
}

func TestState(t *testing.T) {
	r := newRig(t)
	r.out1(2, 0x81)
	r.out1(3, 0x83)
	r.out1(0, 0x01)
	r.out1(3, 0x03)
	r.out1(7, 0x5a)
	r.out1(1, IERRDI)
	r.u.Input([]byte("hi"))
	st := r.u.State()

	r2 := newRig(t)
	if err := r2.u.SetState(st); err != nil {
		t.Fatal(err)
	}
	got := r2.u.State()
	if string(got.RxFIFO) != "hi" || got.SCR != 0x5a || got.Divider != 1 || got.IIR != st.IIR {
		t.Fatalf("restored %+v, want %+v", got, st)
	}
	if !r2.irq.ISALevel(COM1IRQ) || r2.in(2) != IIRFE|IIRCTI {
		t.Fatal("restored IRQ")
	}
	if r2.in(0) != 'h' || r2.in(0) != 'i' {
		t.Fatal("restored FIFO")
	}
	if r2.u.SetState(State{RxFIFO: make([]byte, 17)}) == nil || r2.u.SetState(State{IER: 0x10}) == nil {
		t.Fatal("bad state accepted")
	}
}
