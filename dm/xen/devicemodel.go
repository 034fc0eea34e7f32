package xen

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
)

// DeviceModel is what the DM core uses of Xen's device-model interface for
// one HVM domain: the ioreq server lifecycle, interrupt lines, dirty
// reporting and shutdown. *DevModel implements it over privcmd DM_OPs;
// xentest.DeviceModel is an in-memory fake that records calls.
//
// Errors wrap the errno Xen returned (ESRCH: no such domain, ENOENT: no such
// server, EEXIST: overlapping range, ENOSPC: 8 servers already, EPERM: not
// the server's creator or a restricted handle) and name the domid and, where
// there is one, the ioservid and range.
type DeviceModel interface {
	// Interrupts drives ISA IRQs, PCI INTx and the PIIX3 link routes
	// (XEN_DMOP_set_isa_irq_level, set_pci_intx_level, set_pci_link_route).
	hw.Interrupts

	// Domid is the domain this DeviceModel serves.
	Domid() Domid
	// NrVCPUs is the domain's max_vcpus (XEN_DMOP_nr_vcpus): the number of
	// slots of the ioreq page the DM must serve.
	NrVCPUs() (int, error)

	// CreateIoreqServer creates a server (XEN_DMOP_create_ioreq_server).
	CreateIoreqServer(mode BufIoreqMode) (IoservID, error)
	// BufioreqPort is the guest-side port of the buffered ring
	// (XEN_DMOP_get_ioreq_server_info with XEN_DMOP_no_gfns), 0 if the
	// server has none.
	BufioreqPort(id IoservID) (Port, error)
	// MapIoreqPages maps the server's pages (IOCTL_PRIVCMD_MMAP_RESOURCE,
	// XENMEM_resource_ioreq_server): the buffered ring if buffered, and the
	// synchronous page.
	MapIoreqPages(id IoservID, buffered bool) (*IoreqPages, error)
	// SetIoreqServerState enables or disables the server. Xen writes each
	// vCPU's vp_eport into the ioreq page when it is enabled.
	SetIoreqServerState(id IoservID, enabled bool) error
	// MapIORange and UnmapIORange claim and release an inclusive range.
	MapIORange(id IoservID, r IORange) error
	UnmapIORange(id IoservID, r IORange) error
	// DestroyIoreqServer destroys the server (its ranges and ports go with it).
	DestroyIoreqServer(id IoservID) error

	// ModifiedMemory reports guest frames the DM wrote
	// (XEN_DMOP_modified_memory). Ranges are coalesced and sent in batches of
	// at most 256 extents per call. Xen ignores it unless log-dirty is on.
	ModifiedMemory(ranges []PFNRange) error
	// RemoteShutdown shuts the domain down (XEN_DMOP_remote_shutdown).
	RemoteShutdown(reason ShutdownReason) error
}

// privcmdOps is what DevModel needs of *Privcmd; tests substitute a recorder.
type privcmdOps interface {
	DMOp(dom Domid, bufs ...[]byte) error
	MapResource(dom Domid, typ, id, idx uint32, num int) ([]byte, error)
	Unmap(mem []byte) error
}

// DevModel is the real DeviceModel over privcmd.
type DevModel struct {
	ops privcmdOps
	dom Domid
}

var _ DeviceModel = (*DevModel)(nil)

// NewDeviceModel returns the DeviceModel of domain dom over p.
func NewDeviceModel(p *Privcmd, dom Domid) *DevModel { return &DevModel{ops: p, dom: dom} }

func (d *DevModel) Domid() Domid { return d.dom }

// call issues op with arg as the xen_dm_op member (copied back for output)
// and optional extra buffers.
func dmopCall[T any](d *DevModel, op uint32, arg *T, extra ...[]byte) error {
	var hdr [dmopHeaderSize + 24]byte // struct xen_dm_op
	binary.LittleEndian.PutUint32(hdr[0:], op)
	copy(hdr[dmopHeaderSize:], bytesOf(arg))
	bufs := append([][]byte{hdr[:]}, extra...)
	err := d.ops.DMOp(d.dom, bufs...)
	copy(bytesOf(arg), hdr[dmopHeaderSize:])
	return err
}

func (d *DevModel) NrVCPUs() (int, error) {
	var a dmopNrVCPUsArg
	if err := dmopCall(d, dmopNrVCPUs, &a); err != nil {
		return 0, err
	}
	return int(a.VCPUs), nil
}

func (d *DevModel) CreateIoreqServer(mode BufIoreqMode) (IoservID, error) {
	a := dmopCreateIoreqServerArg{HandleBufioreq: uint8(mode)}
	if err := dmopCall(d, dmopCreateIoreqServer, &a); err != nil {
		return 0, fmt.Errorf("%w (bufioreq mode %d)", err, mode)
	}
	return IoservID(a.ID), nil
}

func (d *DevModel) BufioreqPort(id IoservID) (Port, error) {
	a := dmopGetIoreqServerInfoArg{ID: uint16(id), Flags: dmopNoGFNs}
	if err := dmopCall(d, dmopGetIoreqServerInfo, &a); err != nil {
		return 0, fmt.Errorf("%w (ioservid %d)", err, id)
	}
	return Port(a.BufioreqPort), nil
}

func (d *DevModel) MapIoreqPages(id IoservID, buffered bool) (*IoreqPages, error) {
	idx, num := uint32(xenmemResourceIoreqServerFrameIoreq), 1
	if buffered {
		idx, num = xenmemResourceIoreqServerFrameBuf, 2
	}
	mem, err := d.ops.MapResource(d.dom, xenmemResourceIoreqServer, uint32(id), idx, num)
	if err != nil {
		return nil, fmt.Errorf("%w (ioreq server pages of ioservid %d)", err, id)
	}
	var syncPg, bufPg []byte
	if buffered {
		bufPg, syncPg = mem[:PageSize], mem[PageSize:2*PageSize]
	} else {
		syncPg = mem[:PageSize]
	}
	pages, err := NewIoreqPages(syncPg, bufPg, func() error { return d.ops.Unmap(mem) })
	if err != nil {
		d.ops.Unmap(mem)
		return nil, err
	}
	return pages, nil
}

func (d *DevModel) SetIoreqServerState(id IoservID, enabled bool) error {
	a := dmopSetIoreqServerStateArg{ID: uint16(id)}
	if enabled {
		a.Enabled = 1
	}
	if err := dmopCall(d, dmopSetIoreqServerState, &a); err != nil {
		return fmt.Errorf("%w (ioservid %d enabled=%v)", err, id, enabled)
	}
	return nil
}

func checkRange(dom Domid, id IoservID, r IORange) error {
	if r.Type > IORangePCI || r.Start > r.End || (r.Type == IORangePort && r.End > 0xffff) {
		return fmt.Errorf("xen: dom %d ioservid %d: bad range %s: %w", dom, id, r, unix.EINVAL)
	}
	return nil
}

func (d *DevModel) rangeOp(op uint32, id IoservID, r IORange) error {
	if err := checkRange(d.dom, id, r); err != nil {
		return err
	}
	a := dmopIoreqServerRangeArg{ID: uint16(id), Type: uint32(r.Type), Start: r.Start, End: r.End}
	if err := dmopCall(d, op, &a); err != nil {
		return fmt.Errorf("%w (ioservid %d %s)", err, id, r)
	}
	return nil
}

func (d *DevModel) MapIORange(id IoservID, r IORange) error {
	return d.rangeOp(dmopMapIORangeToIoreqServer, id, r)
}

func (d *DevModel) UnmapIORange(id IoservID, r IORange) error {
	return d.rangeOp(dmopUnmapIORangeFromServer, id, r)
}

func (d *DevModel) DestroyIoreqServer(id IoservID) error {
	a := dmopDestroyIoreqServerArg{ID: uint16(id)}
	if err := dmopCall(d, dmopDestroyIoreqServer, &a); err != nil {
		return fmt.Errorf("%w (ioservid %d)", err, id)
	}
	return nil
}

func b2u(v bool) uint8 {
	if v {
		return 1
	}
	return 0
}

// SetISAIRQ implements hw.Interrupts (XEN_DMOP_set_isa_irq_level).
func (d *DevModel) SetISAIRQ(irq uint8, level bool) error {
	if irq > 15 {
		return fmt.Errorf("xen: dom %d: ISA IRQ %d out of range 0-15: %w", d.dom, irq, unix.EINVAL)
	}
	a := dmopSetISAIRQLevelArg{ISAIRQ: irq, Level: b2u(level)}
	if err := dmopCall(d, dmopSetISAIRQLevel, &a); err != nil {
		return fmt.Errorf("%w (isa irq %d level %d)", err, irq, a.Level)
	}
	return nil
}

// SetPCIINTx implements hw.Interrupts (XEN_DMOP_set_pci_intx_level, bus 0).
func (d *DevModel) SetPCIINTx(dev, pin uint8, level bool) error {
	if dev > 31 || pin > 3 {
		return fmt.Errorf("xen: dom %d: PCI INTx device %d pin %d out of range (device 0-31, pin 0-3): %w", d.dom, dev, pin, unix.EINVAL)
	}
	a := dmopSetPCIIntxLevelArg{Device: dev, Intx: pin, Level: b2u(level)}
	if err := dmopCall(d, dmopSetPCIIntxLevel, &a); err != nil {
		return fmt.Errorf("%w (pci 00:%02x INT%c level %d)", err, dev, 'A'+pin, a.Level)
	}
	return nil
}

// SetPCILinkRoute implements hw.Interrupts (XEN_DMOP_set_pci_link_route).
func (d *DevModel) SetPCILinkRoute(link, irq uint8) error {
	if link > 3 || irq > 15 {
		return fmt.Errorf("xen: dom %d: PCI link %d to IRQ %d out of range (link 0-3, irq 0-15): %w", d.dom, link, irq, unix.EINVAL)
	}
	a := dmopSetPCILinkRouteArg{Link: link, ISAIRQ: irq}
	if err := dmopCall(d, dmopSetPCILinkRoute, &a); err != nil {
		return fmt.Errorf("%w (link %d irq %d)", err, link, irq)
	}
	return nil
}

// CoalescePFNRanges sorts ranges, merges overlapping and adjacent ones, drops
// empty ones and splits any longer than a uint32 count (the extent's nr), as
// ModifiedMemory sends them.
func CoalescePFNRanges(ranges []PFNRange) []PFNRange {
	rs := make([]PFNRange, 0, len(ranges))
	for _, r := range ranges {
		if r.Count == 0 {
			continue
		}
		if r.First+r.Count < r.First { // clamp a wrapping range
			r.Count = math.MaxUint64 - r.First
		}
		rs = append(rs, r)
	}
	slices.SortFunc(rs, func(a, b PFNRange) int {
		switch {
		case a.First < b.First:
			return -1
		case a.First > b.First:
			return 1
		}
		return 0
	})
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if end := last.First + last.Count; r.First <= end {
				if e := r.First + r.Count; e > end {
					last.Count = e - last.First
				}
				continue
			}
		}
		out = append(out, r)
	}
	var split []PFNRange
	for _, r := range out {
		for r.Count > math.MaxUint32 {
			split = append(split, PFNRange{First: r.First, Count: math.MaxUint32})
			r.First += math.MaxUint32
			r.Count -= math.MaxUint32
		}
		split = append(split, r)
	}
	return split
}

// ModifiedMemory implements DeviceModel: coalesce, then one DM_OP per ≤256
// extents (a 4096-byte buffer 1).
func (d *DevModel) ModifiedMemory(ranges []PFNRange) error {
	rs := CoalescePFNRanges(ranges)
	for len(rs) > 0 {
		n := min(len(rs), dmopMaxModifiedExtents)
		batch := rs[:n]
		rs = rs[n:]
		ext := make([]byte, 16*n)
		for i, r := range batch {
			e := dmopModifiedMemoryExtent{Nr: uint32(r.Count), FirstPFN: r.First}
			copy(ext[16*i:], bytesOf(&e))
		}
		a := dmopModifiedMemoryArg{NrExtents: uint32(n)}
		if err := dmopCall(d, dmopModifiedMemory, &a, ext); err != nil {
			last := batch[n-1]
			return fmt.Errorf("%w (%d extents, pfn %#x-%#x)", err, n, batch[0].First, last.First+last.Count-1)
		}
	}
	return nil
}

func (d *DevModel) RemoteShutdown(reason ShutdownReason) error {
	a := dmopRemoteShutdownArg{Reason: uint32(reason)}
	if err := dmopCall(d, dmopRemoteShutdown, &a); err != nil {
		return fmt.Errorf("%w (reason %s)", err, reason)
	}
	return nil
}
