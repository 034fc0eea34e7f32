package dm

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// ioreqLoop is the event loop of one ioreq server (QEMU cpu_handle_ioreq):
// it waits on the event channel, maps each fired local port to its vCPU
// slot, drains the buffered ring first, takes READY requests, performs them
// and answers IORESP_READY + notify.
type ioreqLoop struct {
	ev    EventChannel
	pages *xen.IoreqPages
	emu   *emulator
	log   *slog.Logger
	lim   *rateLimiter

	vcpuOf  map[xen.Port]int // local port → vCPU
	bufPort xen.Port         // local port of the buffered ring (0: none)

	// afterRound runs after every batch of events (dirty-log flush).
	afterRound func()
	// fatal is called once if the event channel fails for good.
	fatal func(error)

	// mu is held while the loop touches the ioreq pages; stop takes it, so
	// after stop returns the pages may be unmapped.
	mu      sync.Mutex
	stopped bool
	done    chan struct{}
}

// maxWaitErrors is how many consecutive Wait failures end the loop.
const maxWaitErrors = 100

func (l *ioreqLoop) start() {
	l.done = make(chan struct{})
	go l.run()
}

func (l *ioreqLoop) run() {
	defer close(l.done)
	ports := make([]xen.Port, 1024)
	errs := 0
	for {
		n, err := l.ev.Wait(ports)
		if l.isStopped() {
			return
		}
		if err != nil {
			if errors.Is(err, xen.ErrClosed) {
				return
			}
			errs++
			if errs >= maxWaitErrors {
				l.fatal(err)
				return
			}
			l.lim.warn(l.log, "evtchn-wait", "event channel wait failed; rescanning every slot", "err", err)
			time.Sleep(time.Millisecond)
			// Events may have been lost (EFBIG: ring overflow): look at
			// every slot and the buffered ring.
			l.rescan()
			continue
		}
		errs = 0
		l.round(ports[:n])
	}
}

func (l *ioreqLoop) isStopped() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

// round handles one batch of fired ports.
func (l *ioreqLoop) round(ports []xen.Port) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	// Unmask before processing (as QEMU): an event that arrives while we
	// work is delivered again rather than lost.
	for _, p := range ports {
		if err := l.ev.Unmask(p); err != nil {
			l.lim.warn(l.log, "unmask", "event channel unmask failed", "port", p, "err", err)
		}
	}
	// Buffered writes were issued before the synchronous request that is
	// now waiting: handle them first to keep the guest's order.
	l.drainBuffered()
	for _, p := range ports {
		vcpu, ok := l.vcpuOf[p]
		if !ok {
			if p != l.bufPort || l.bufPort == 0 {
				l.lim.warn(l.log, "port", "event on a port that is not ours", "port", p)
			}
			continue
		}
		l.service(vcpu, p)
	}
	if l.afterRound != nil {
		l.afterRound()
	}
}

func (l *ioreqLoop) drainBuffered() {
	if l.pages.Buffered == nil {
		return
	}
	l.pages.Buffered.Drain(func(req xen.Ioreq) {
		if req.Type != xen.IoreqTypePIO && req.Type != xen.IoreqTypeCopy && req.Type != xen.IoreqTypeTimeOffset {
			l.lim.warn(l.log, "buf-type", "buffered ioreq of unexpected type ignored", "req", req.String())
			return
		}
		l.emu.handle(req)
	})
}

// service handles the request in vcpu's slot, if there is one.
func (l *ioreqLoop) service(vcpu int, port xen.Port) {
	req, ok, err := l.pages.Ioreq.Accept(vcpu)
	if err != nil {
		l.lim.warn(l.log, "accept", "ioreq slot unreadable", "vcpu", vcpu, "err", err)
		return
	}
	if !ok {
		// Spurious or repeated event: the slot is not READY. Never touch it.
		st, _ := l.pages.Ioreq.State(vcpu)
		l.log.Debug("event without a READY ioreq (ignored)", "vcpu", vcpu, "state", st)
		return
	}
	data := l.emu.handle(req)
	if err := l.pages.Ioreq.Respond(vcpu, data); err != nil {
		l.lim.warn(l.log, "respond", "cannot complete ioreq", "vcpu", vcpu, "err", err)
		return
	}
	if err := l.ev.Notify(port); err != nil {
		l.lim.warn(l.log, "notify", "event channel notify failed", "vcpu", vcpu, "port", port, "err", err)
	}
}

// rescan services every vCPU slot that is READY and drains the ring.
func (l *ioreqLoop) rescan() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return
	}
	l.drainBuffered()
	for p, v := range l.vcpuOf {
		l.service(v, p)
	}
	if l.afterRound != nil {
		l.afterRound()
	}
}

// stopTimeout bounds how long stop waits for a round in progress (a device
// handler that hangs must not keep the process from exiting on SIGHUP).
const stopTimeout = 5 * time.Second

// stop makes the loop stop touching the pages: it waits for a round in
// progress. The goroutine itself exits when Wait returns (at the latest
// when the event channel is closed).
func (l *ioreqLoop) stop() error {
	locked := make(chan struct{})
	go func() {
		l.mu.Lock()
		l.stopped = true
		l.mu.Unlock()
		close(locked)
	}()
	select {
	case <-locked:
		return nil
	case <-time.After(stopTimeout):
		return errors.New("an ioreq is still being handled after 5 s; tearing down anyway")
	}
}

// waitDone waits up to d for the goroutine to exit.
func (l *ioreqLoop) waitDone(d time.Duration) bool {
	if l.done == nil {
		return true
	}
	select {
	case <-l.done:
		return true
	case <-time.After(d):
		return false
	}
}
