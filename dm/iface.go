package dm

import (
	"context"
	"io"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// The core depends on Xen only through these consumer-side interfaces.
// dm/xen's real types (*xen.DevModel, *xen.Evtchn, *xen.MapCache,
// *xenstore.Client) satisfy them, and so do the dm/xen/xentest fakes, so
// the whole event loop runs in tests without Xen.

// DeviceModel is the part of xen.DeviceModel (XEN_DMOP_*) the core uses.
type DeviceModel interface {
	hw.Interrupts
	NrVCPUs() (int, error)
	CreateIoreqServer(mode xen.BufIoreqMode) (xen.IoservID, error)
	BufioreqPort(id xen.IoservID) (xen.Port, error)
	MapIoreqPages(id xen.IoservID, buffered bool) (*xen.IoreqPages, error)
	SetIoreqServerState(id xen.IoservID, enabled bool) error
	MapIORange(id xen.IoservID, r xen.IORange) error
	UnmapIORange(id xen.IoservID, r xen.IORange) error
	DestroyIoreqServer(id xen.IoservID) error
	ModifiedMemory(ranges []xen.PFNRange) error
	RemoteShutdown(reason xen.ShutdownReason) error
}

// EventChannel is xen.EventChannel (/dev/xen/evtchn).
type EventChannel interface {
	BindInterdomain(remote xen.Domid, remotePort xen.Port) (xen.Port, error)
	Unbind(local xen.Port) error
	Notify(local xen.Port) error
	Unmask(local xen.Port) error
	Wait(ports []xen.Port) (int, error)
	Close() error
}

// GuestMemory is guest RAM as the core maps it: the foreign-memory map
// cache. Invalidate drops every mapping not in use (IOREQ_TYPE_INVALIDATE)
// and returns how many stayed.
type GuestMemory interface {
	hw.GuestMemory
	Invalidate() int
}

// Xenstore is what the core writes to xenstore.
type Xenstore interface {
	Write(ctx context.Context, path, value string) error
	Close() error
}

// Hypervisor is one domain's set of privileged handles, opened by a
// Platform. Close releases everything it opened.
type Hypervisor interface {
	// DeviceModel issues DM_OPs for the domain.
	DeviceModel() DeviceModel
	// GuestMemory returns the domain's map cache (created on first call).
	// Pages written through it, including through long-lived DMA
	// mappings, are reported to dirty.
	GuestMemory(dirty hw.DirtyReporter) (GuestMemory, error)
	// Restrict limits the privcmd handle to the domain (-xen-domid-restrict).
	Restrict() error
	Close() error
}

// Platform opens the Xen handles the core needs. XenPlatform is the real
// one; tests pass one built on dm/xen/xentest.
type Platform interface {
	OpenHypervisor(dom xen.Domid) (Hypervisor, error)
	OpenEventChannel() (EventChannel, error)
	OpenXenstore() (Xenstore, error)
}

// evtchnRestricter is implemented by event channels that can be limited to
// one domain (IOCTL_EVTCHN_RESTRICT_DOMID).
type evtchnRestricter interface {
	RestrictDomid(dom xen.Domid) error
}

// DeviceState saves and loads the device state blob libxl stores as the
// EMULATOR_CONTEXT record (QMP xen-save-devices-state, -incoming fd:N).
// The format is ours (DevState, dm/devstate, docs/device-state.md). Without
// an implementation (Options.DeviceState nil), save answers QMP with a
// GenericError and -incoming fails start-up: restore is not faked.
type DeviceState interface {
	// Save writes the state of m. It runs with the ioreq server disabled
	// and device I/O drained (libxl stops the VM first). live is QMP's
	// flag (true for live migration).
	Save(ctx context.Context, w io.Writer, m *Machine, live bool) error
	// Load restores state written by Save into a freshly built m, before
	// the ioreq server is enabled.
	Load(ctx context.Context, r io.Reader, m *Machine) error
}
