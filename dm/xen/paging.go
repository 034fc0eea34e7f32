package xen

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// MemPaging is the hypervisor side of Xen mem_paging for one domain: the
// XENMEM_paging_op sub-ops and the XEN_DOMCTL_vm_event_op calls that set up
// the paging ring. It is ABI only; the pager (what to evict, where pages go)
// lives elsewhere. The ring itself is a page of the guest (RingPFN) that the
// pager maps with a ForeignMapper and drives with VMEventBackRing; Xen signals
// it on the event channel whose guest-side port EnableRing returns.
//
// Requirements (migration-paging.md §6): a hypervisor built with
// CONFIG_MEM_PAGING (else every call fails with ENOSYS), HAP, no IOMMU, no PoD.
type MemPaging interface {
	Domid() Domid
	// RingPFN reads HVM_PARAM_PAGING_RING_PFN.
	RingPFN() (uint64, error)
	// EnableRing is XEN_DOMCTL_vm_event_op(ENABLE, PAGING). It returns the
	// port in the guest to bind with EventChannel.BindInterdomain.
	EnableRing() (Port, error)
	// DisableRing is XEN_DOMCTL_vm_event_op(DISABLE, PAGING).
	DisableRing() error
	// ResumeRing is XEN_DOMCTL_vm_event_op(RESUME, PAGING): like a kick on
	// the event channel, it makes Xen consume the responses.
	ResumeRing() error
	// Nominate is XENMEM_paging_op_nominate.
	Nominate(gfn uint64) error
	// Evict is XENMEM_paging_op_evict.
	Evict(gfn uint64) error
	// Prep is XENMEM_paging_op_prep. page is nil or exactly PageSize bytes
	// that become the frame's contents ("load").
	Prep(gfn uint64, page []byte) error
}

// PagingOps is the real MemPaging over privcmd hypercalls.
type PagingOps struct {
	p   *Privcmd
	dom Domid
}

var _ MemPaging = (*PagingOps)(nil)

// NewMemPaging returns the MemPaging of domain dom.
func NewMemPaging(p *Privcmd, dom Domid) *PagingOps { return &PagingOps{p: p, dom: dom} }

func (o *PagingOps) Domid() Domid { return o.dom }

func (o *PagingOps) RingPFN() (uint64, error) { return o.p.HVMParam(o.dom, HVMParamPagingRingPFN) }

func (o *PagingOps) EnableRing() (Port, error) {
	port, err := o.p.VMEventOp(o.dom, VMEventOpEnable, VMEventModePaging)
	return Port(port), err
}

func (o *PagingOps) DisableRing() error {
	_, err := o.p.VMEventOp(o.dom, VMEventOpDisable, VMEventModePaging)
	return err
}

func (o *PagingOps) ResumeRing() error {
	_, err := o.p.VMEventOp(o.dom, VMEventOpResume, VMEventModePaging)
	return err
}

func (o *PagingOps) Nominate(gfn uint64) error {
	return o.p.PagingOp(o.dom, PagingOpNominate, gfn, nil)
}

func (o *PagingOps) Evict(gfn uint64) error {
	return o.p.PagingOp(o.dom, PagingOpEvict, gfn, nil)
}

func (o *PagingOps) Prep(gfn uint64, page []byte) error {
	return o.p.PagingOp(o.dom, PagingOpPrep, gfn, page)
}

var pagingOpNames = [...]string{"nominate", "evict", "prep"}

// PagingOp issues memory_op(XENMEM_paging_op) with struct xen_mem_paging_op
// {op, domain, buffer, gfn}. page (prep only) is nil or one PageSize page,
// copied into the hypercall buffer.
func (p *Privcmd) PagingOp(dom Domid, op uint8, gfn uint64, page []byte) error {
	name := fmt.Sprintf("op %d", op)
	if int(op) < len(pagingOpNames) {
		name = pagingOpNames[op]
	}
	if page != nil && (len(page) != PageSize || op != PagingOpPrep) {
		return fmt.Errorf("xen: XENMEM_paging_op %s dom %d gfn %#x: buffer of %d bytes (only prep takes one, of exactly %d): %w",
			name, dom, gfn, len(page), PageSize, unix.EINVAL)
	}
	err := p.withHypercallBuf(func(fd int, buf []byte) error {
		arg := at[xenMemPagingOp](buf, 0)
		*arg = xenMemPagingOp{Op: op, Domain: uint16(dom), GFN: gfn}
		if page != nil {
			copy(buf[PageSize:], page)
			arg.Buffer = addrOf(buf[PageSize:])
		}
		_, err := hypercall(fd, hypercallMemoryOp, xenmemPagingOp, addrOf(buf))
		return err
	})
	if err != nil {
		return fmt.Errorf("xen: XENMEM_paging_op %s dom %d gfn %#x: %w", name, dom, gfn, err)
	}
	return nil
}

var vmEventOpNames = [...]string{"enable", "disable", "resume", "get_version"}

// domctlUOffset is offsetof(struct xen_domctl, u).
const domctlUOffset = 16

// VMEventOp issues XEN_DOMCTL_vm_event_op (domctl 56, interface version
// 0x15) with struct xen_domctl_vm_event_op {op, mode}. It returns u.enable.port
// for ENABLE and u.version for GET_VERSION.
func (p *Privcmd) VMEventOp(dom Domid, op, mode uint32) (uint32, error) {
	name := fmt.Sprintf("op %d", op)
	if int(op) < len(vmEventOpNames) {
		name = vmEventOpNames[op]
	}
	var out uint32
	err := p.withHypercallBuf(func(fd int, buf []byte) error {
		d := at[xenDomctl](buf, 0)
		d.Cmd = domctlVMEventOp
		d.InterfaceVersion = domctlInterfaceVersion
		d.Domain = uint16(dom)
		ve := at[xenDomctlVMEventOp](buf, domctlUOffset)
		ve.Op, ve.Mode = op, mode
		if _, err := hypercall(fd, hypercallDomctl, addrOf(buf)); err != nil {
			return err
		}
		out = ve.Port
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("xen: XEN_DOMCTL_vm_event_op %s mode %d dom %d: %w", name, mode, dom, err)
	}
	return out, nil
}
