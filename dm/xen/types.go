package xen

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// le is the byte order of every Xen structure on the supported (x86, Arm)
// hosts.
var le = binary.LittleEndian

// Domid is a Xen domain id (domid_t, xen/xen.h).
type Domid uint16

// Special domain ids (xen/xen.h).
const (
	DomidSelf    Domid = 0x7ff0 // DOMID_SELF
	DomidInvalid Domid = 0x7ff4 // DOMID_INVALID
)

// Port is an event-channel port number (evtchn_port_t, xen/event_channel.h).
// Ports are per domain: a local port (in dom0, returned by a bind) and the
// remote port it is connected to are different numbers.
type Port uint32

// IoservID is an ioreq server id (ioservid_t, xen/hvm/dm_op.h).
type IoservID uint16

// PageSize is the size of a guest frame and of every page shared with Xen.
const PageSize = hw.PageSize

// PageShift is log2(PageSize).
const PageShift = hw.PageShift

// Errors that callers can test with errors.Is. Every error returned by this
// package wraps one of these or a unix.Errno (the errno of the failing ioctl
// or hypercall), and names the domid, port, pfn or ioservid involved.
var (
	// ErrClosed is returned by a handle after Close.
	ErrClosed = errors.New("xen: handle is closed")
	// ErrDMOpBuffer reports DM_OP buffers that Xen or the kernel would refuse:
	// no buffer, more than 2, more than 4096 bytes, or a first buffer shorter
	// than the op's struct.
	ErrDMOpBuffer = errors.New("xen: bad DM_OP buffer")
	// ErrPagedOut reports a guest frame that is paged out (the per-page
	// MMAPBATCH_V2 error was -ENOENT) and stayed so after the bounded retries.
	ErrPagedOut = errors.New("xen: guest frame is paged out")
	// ErrBadState reports an ioreq slot that is not in the state the
	// operation needs (for example Respond on a slot that is not in process).
	ErrBadState = errors.New("xen: ioreq slot in unexpected state")
	// ErrRingFull reports a vm_event ring operation that would overrun the ring.
	ErrRingFull = errors.New("xen: vm_event ring full")
)

// PageError says that guest frame PFN of domain Dom could not be accessed.
// It wraps hw.ErrBadGPA, ErrPagedOut when the frame is paged out, and the
// underlying cause (usually a unix.Errno from MMAPBATCH_V2's err[] array).
type PageError struct {
	Dom Domid
	PFN uint64
	Err error // cause: unix.Errno, or the error of the mapping call
}

func (e *PageError) Error() string {
	if e.pagedOut() {
		return fmt.Sprintf("xen: dom %d pfn %#x: paged out: %v", e.Dom, e.PFN, hw.ErrBadGPA)
	}
	return fmt.Sprintf("xen: dom %d pfn %#x: %v: %v", e.Dom, e.PFN, hw.ErrBadGPA, e.Err)
}

func (e *PageError) pagedOut() bool { return errors.Is(e.Err, unix.ENOENT) }

// Unwrap returns hw.ErrBadGPA, the cause, and ErrPagedOut for paged-out frames.
func (e *PageError) Unwrap() []error {
	errs := []error{hw.ErrBadGPA}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	if e.pagedOut() {
		errs = append(errs, ErrPagedOut)
	}
	return errs
}

// ShutdownReason is a SHUTDOWN_* reason (xen/sched.h) for
// XEN_DMOP_remote_shutdown.
type ShutdownReason uint32

const (
	ShutdownPoweroff  ShutdownReason = 0 // SHUTDOWN_poweroff
	ShutdownReboot    ShutdownReason = 1 // SHUTDOWN_reboot
	ShutdownSuspend   ShutdownReason = 2 // SHUTDOWN_suspend
	ShutdownCrash     ShutdownReason = 3 // SHUTDOWN_crash
	ShutdownWatchdog  ShutdownReason = 4 // SHUTDOWN_watchdog
	ShutdownSoftReset ShutdownReason = 5 // SHUTDOWN_soft_reset
)

func (r ShutdownReason) String() string {
	switch r {
	case ShutdownPoweroff:
		return "poweroff"
	case ShutdownReboot:
		return "reboot"
	case ShutdownSuspend:
		return "suspend"
	case ShutdownCrash:
		return "crash"
	case ShutdownWatchdog:
		return "watchdog"
	case ShutdownSoftReset:
		return "soft_reset"
	}
	return fmt.Sprintf("shutdown(%d)", uint32(r))
}

// BufIoreqMode is how an ioreq server handles buffered ioreqs
// (HVM_IOREQSRV_BUFIOREQ_*, xen/hvm/hvm_op.h).
type BufIoreqMode uint8

const (
	BufIoreqOff    BufIoreqMode = 0 // HVM_IOREQSRV_BUFIOREQ_OFF: no buffered ring
	BufIoreqLegacy BufIoreqMode = 1 // HVM_IOREQSRV_BUFIOREQ_LEGACY
	BufIoreqAtomic BufIoreqMode = 2 // HVM_IOREQSRV_BUFIOREQ_ATOMIC: what QEMU uses
)

// IORangeType is the kind of range an ioreq server claims
// (XEN_DMOP_IO_RANGE_*, xen/hvm/dm_op.h).
type IORangeType uint32

const (
	IORangePort   IORangeType = 0 // XEN_DMOP_IO_RANGE_PORT
	IORangeMemory IORangeType = 1 // XEN_DMOP_IO_RANGE_MEMORY (MMIO)
	IORangePCI    IORangeType = 2 // XEN_DMOP_IO_RANGE_PCI (SBDF)
)

func (t IORangeType) String() string {
	switch t {
	case IORangePort:
		return "port"
	case IORangeMemory:
		return "mmio"
	case IORangePCI:
		return "pci"
	}
	return fmt.Sprintf("range-type(%d)", uint32(t))
}

// IORange is an inclusive range [Start, End] of one type, as
// XEN_DMOP_map_io_range_to_ioreq_server takes it.
type IORange struct {
	Type       IORangeType
	Start, End uint64
}

func (r IORange) String() string {
	if r.Type == IORangePCI && r.Start == r.End {
		return fmt.Sprintf("pci %04x:%02x:%02x.%x", r.Start>>16, (r.Start>>8)&0xff, (r.Start>>3)&0x1f, r.Start&7)
	}
	return fmt.Sprintf("%s %#x-%#x", r.Type, r.Start, r.End)
}

// PortRange is the port range [base, base+n) (n ≥ 1).
func PortRange(base, n uint16) IORange {
	return IORange{Type: IORangePort, Start: uint64(base), End: uint64(base) + uint64(n) - 1}
}

// MMIORange is the MMIO range [base, base+n) (n ≥ 1).
func MMIORange(base, n uint64) IORange {
	return IORange{Type: IORangeMemory, Start: base, End: base + n - 1}
}

// PCISBDF is XEN_DMOP_PCI_SBDF(s,b,d,f) (xen/hvm/dm_op.h).
func PCISBDF(seg uint16, bus, dev, fn uint8) uint64 {
	return uint64(seg)<<16 | uint64(bus)<<8 | uint64(dev&0x1f)<<3 | uint64(fn&7)
}

// PCIDevice is the single-function PCI range for segment:bus:dev.fn.
func PCIDevice(seg uint16, bus, dev, fn uint8) IORange {
	s := PCISBDF(seg, bus, dev, fn)
	return IORange{Type: IORangePCI, Start: s, End: s}
}

// PFNRange is Count guest frames starting at First.
type PFNRange struct {
	First, Count uint64
}
