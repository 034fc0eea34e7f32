package xen

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// EvtchnPath is the event-channel device of a Linux dom0.
const EvtchnPath = "/dev/xen/evtchn"

// EventChannel is an event-channel handle (what libxenevtchn offers). *Evtchn
// implements it over /dev/xen/evtchn; xentest.Evtchn is an in-memory fake
// whose other end a test can fire.
//
// A port that fired is delivered once by Wait and then stays masked until
// Unmask; an event that arrives meanwhile is latched and delivered after the
// unmask. Wait blocks until an event or Close; Close never hangs.
type EventChannel interface {
	// BindInterdomain connects a new local port to remotePort of domain
	// remote (an unbound port that allows this domain) and returns the
	// local port.
	BindInterdomain(remote Domid, remotePort Port) (Port, error)
	// Unbind closes a local port bound by this handle.
	Unbind(local Port) error
	// Notify signals the remote end of a local port.
	Notify(local Port) error
	// Unmask re-enables delivery of a local port after Wait returned it.
	Unmask(local Port) error
	// Wait blocks until at least one port fired and stores the fired local
	// ports into ports, returning how many (≥ 1). After Close it returns an
	// error wrapping ErrClosed.
	Wait(ports []Port) (int, error)
	// Close unbinds every port of the handle and wakes a blocked Wait.
	Close() error
}

// Evtchn is an open /dev/xen/evtchn. The fd is non-blocking and registered
// with Go's netpoller, so Wait parks its goroutine rather than a thread, and
// Close wakes it.
type Evtchn struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool
}

var _ EventChannel = (*Evtchn)(nil)

// OpenEvtchn opens /dev/xen/evtchn.
func OpenEvtchn() (*Evtchn, error) {
	fd, err := unix.Open(EvtchnPath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("xen: open %s (needs a Xen dom0 with the xen-evtchn driver): %w", EvtchnPath, err)
	}
	return newEvtchnFD(fd, EvtchnPath)
}

// newEvtchnFD wraps a non-blocking fd (tests use a pipe).
func newEvtchnFD(fd int, name string) (*Evtchn, error) {
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("xen: %s: %w", name, err)
	}
	return &Evtchn{f: f, rc: rc}, nil
}

// control runs an ioctl on the fd; it fails with ErrClosed after Close.
func (e *Evtchn) control(fn func(fd int) error) error {
	var ioErr error
	if err := e.rc.Control(func(fd uintptr) { ioErr = fn(int(fd)) }); err != nil {
		if e.closed.Load() || errors.Is(err, os.ErrClosed) {
			return ErrClosed // RawConn reports poll's "use of closed file"
		}
		return err
	}
	return ioErr
}

func (e *Evtchn) BindInterdomain(remote Domid, remotePort Port) (Port, error) {
	var local uintptr
	err := e.control(func(fd int) error {
		var err error
		local, err = ioctlEvtchnBindInterdomainCall(fd, &ioctlEvtchnBindInterdomainArg{RemoteDomain: uint32(remote), RemotePort: uint32(remotePort)})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("xen: evtchn bind interdomain to dom %d port %d: %w", remote, remotePort, err)
	}
	return Port(local), nil
}

// BindUnboundPort allocates a local port that domain remote may bind to.
func (e *Evtchn) BindUnboundPort(remote Domid) (Port, error) {
	var local uintptr
	err := e.control(func(fd int) error {
		var err error
		local, err = ioctlEvtchnBindUnboundPortCall(fd, &ioctlEvtchnBindUnboundPortArg{RemoteDomain: uint32(remote)})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("xen: evtchn bind unbound port for dom %d: %w", remote, err)
	}
	return Port(local), nil
}

// BindVirq binds a virtual IRQ of this domain (VIRQ_*).
func (e *Evtchn) BindVirq(virq uint32) (Port, error) {
	var local uintptr
	err := e.control(func(fd int) error {
		var err error
		local, err = ioctlEvtchnBindVirqCall(fd, &ioctlEvtchnBindVirqArg{Virq: virq})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("xen: evtchn bind virq %d: %w", virq, err)
	}
	return Port(local), nil
}

func (e *Evtchn) Unbind(local Port) error {
	err := e.control(func(fd int) error {
		return ioctlEvtchnUnbindCall(fd, &ioctlEvtchnUnbindArg{Port: uint32(local)})
	})
	if err != nil {
		return fmt.Errorf("xen: evtchn unbind port %d: %w", local, err)
	}
	return nil
}

func (e *Evtchn) Notify(local Port) error {
	err := e.control(func(fd int) error {
		return ioctlEvtchnNotifyCall(fd, &ioctlEvtchnNotifyArg{Port: uint32(local)})
	})
	if err != nil {
		return fmt.Errorf("xen: evtchn notify port %d: %w", local, err)
	}
	return nil
}

// Reset clears the device's ring of pending ports and its overflow error
// (IOCTL_EVTCHN_RESET), after Wait reported EFBIG.
func (e *Evtchn) Reset() error {
	if err := e.control(ioctlEvtchnResetCall); err != nil {
		return fmt.Errorf("xen: evtchn reset: %w", err)
	}
	return nil
}

// RestrictDomid limits the handle to binding ports of domain dom
// (IOCTL_EVTCHN_RESTRICT_DOMID).
func (e *Evtchn) RestrictDomid(dom Domid) error {
	err := e.control(func(fd int) error {
		return ioctlEvtchnRestrictDomidCall(fd, &ioctlEvtchnRestrictDomidArg{Domid: uint16(dom)})
	})
	if err != nil {
		return fmt.Errorf("xen: evtchn restrict to dom %d: %w", dom, err)
	}
	return nil
}

// Unmask writes the port back to the device, which re-enables it.
func (e *Evtchn) Unmask(local Port) error {
	var b [4]byte
	le.PutUint32(b[:], uint32(local))
	if _, err := e.f.Write(b[:]); err != nil {
		if errors.Is(err, os.ErrClosed) {
			err = ErrClosed
		}
		return fmt.Errorf("xen: evtchn unmask port %d: %w", local, err)
	}
	return nil
}

// Wait reads fired ports. The device returns whole u32 port numbers; a ring
// overflow is reported as EFBIG (then call Reset and rescan every port).
func (e *Evtchn) Wait(ports []Port) (int, error) {
	if len(ports) == 0 {
		return 0, fmt.Errorf("xen: evtchn wait with no room for ports: %w", unix.EINVAL)
	}
	buf := make([]byte, 4*min(len(ports), PageSize/4))
	for {
		n, err := e.f.Read(buf)
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				err = ErrClosed
			}
			return 0, fmt.Errorf("xen: evtchn wait: %w", err)
		}
		k := n / 4
		if k == 0 {
			continue
		}
		for i := 0; i < k; i++ {
			ports[i] = Port(le.Uint32(buf[4*i:]))
		}
		return k, nil
	}
}

// Close closes the device: the kernel unbinds every port of the handle, and a
// Wait in progress returns ErrClosed.
func (e *Evtchn) Close() error {
	e.closed.Store(true)
	if err := e.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("xen: close %s: %w", EvtchnPath, err)
	}
	return nil
}
