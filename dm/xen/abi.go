package xen

// This file holds the Go mirrors of the Xen and Linux structs and the
// constants this package passes to the kernel. Every mirror names its C struct
// and header; abi_test.go compiles a C program against the real headers and
// compares sizes, offsets and values with these.

// ---- ioctl numbers (xen/sys/privcmd.h, xen/sys/evtchn.h) ----

// ioc is _IOC(_IOC_NONE, typ, nr, size) from asm-generic/ioctl.h.
func ioc(typ byte, nr uintptr, size uintptr) uintptr {
	const iocNone = 0
	return iocNone<<30 | size<<16 | uintptr(typ)<<8 | nr
}

var (
	ioctlPrivcmdHypercall     = ioc('P', 0, 48) // IOCTL_PRIVCMD_HYPERCALL
	ioctlPrivcmdMmapBatchV2   = ioc('P', 4, 32) // IOCTL_PRIVCMD_MMAPBATCH_V2
	ioctlPrivcmdDMOp          = ioc('P', 5, 16) // IOCTL_PRIVCMD_DM_OP
	ioctlPrivcmdRestrict      = ioc('P', 6, 2)  // IOCTL_PRIVCMD_RESTRICT
	ioctlPrivcmdMmapResource  = ioc('P', 7, 32) // IOCTL_PRIVCMD_MMAP_RESOURCE
	ioctlPrivcmdUnimplemented = ioc('P', 0xff, 0)

	ioctlEvtchnBindVirq        = ioc('E', 0, 4) // IOCTL_EVTCHN_BIND_VIRQ
	ioctlEvtchnBindInterdomain = ioc('E', 1, 8) // IOCTL_EVTCHN_BIND_INTERDOMAIN
	ioctlEvtchnBindUnboundPort = ioc('E', 2, 4) // IOCTL_EVTCHN_BIND_UNBOUND_PORT
	ioctlEvtchnUnbind          = ioc('E', 3, 4) // IOCTL_EVTCHN_UNBIND
	ioctlEvtchnNotify          = ioc('E', 4, 4) // IOCTL_EVTCHN_NOTIFY
	ioctlEvtchnReset           = ioc('E', 5, 0) // IOCTL_EVTCHN_RESET
	ioctlEvtchnRestrictDomid   = ioc('E', 6, 2) // IOCTL_EVTCHN_RESTRICT_DOMID
)

// Limits of the Linux privcmd driver (module parameters dm_op_max_nr_bufs and
// dm_op_buf_max_size) and of Xen's dm_op (struct dmop_args.buf[2]).
const (
	dmopMaxBufs    = 2    // Xen: more than 2 → -E2BIG
	dmopMaxBufSize = 4096 // Linux: any buffer larger → E2BIG
)

// ---- privcmd structs (xen/sys/privcmd.h) ----

// privcmdHypercall is privcmd_hypercall_t, xen/sys/privcmd.h.
type privcmdHypercall struct {
	Op  uint64
	Arg [5]uint64
}

// privcmdMmapBatchV2 is privcmd_mmapbatch_v2_t, xen/sys/privcmd.h.
// Arr points to num xen_pfn_t (uint64) gfns, Err to num int32 errors (OUT).
type privcmdMmapBatchV2 struct {
	Num  uint32
	Dom  uint16
	_    [2]byte
	Addr uint64
	Arr  uint64
	Err  uint64
}

// privcmdDMOpBuf is privcmd_dm_op_buf_t, xen/sys/privcmd.h.
type privcmdDMOpBuf struct {
	Uptr uint64
	Size uint64
}

// privcmdDMOp is privcmd_dm_op_t, xen/sys/privcmd.h.
type privcmdDMOp struct {
	Dom   uint16
	Num   uint16
	_     [4]byte
	Ubufs uint64
}

// privcmdMmapResource is privcmd_mmap_resource_t, xen/sys/privcmd.h.
type privcmdMmapResource struct {
	Dom  uint16
	_    [2]byte
	Type uint32
	ID   uint32
	Idx  uint32
	Num  uint64
	Addr uint64
}

// ---- evtchn ioctl structs (xen/sys/evtchn.h) ----

// ioctlEvtchnBindVirqArg is struct ioctl_evtchn_bind_virq, xen/sys/evtchn.h.
type ioctlEvtchnBindVirqArg struct{ Virq uint32 }

// ioctlEvtchnBindInterdomainArg is struct ioctl_evtchn_bind_interdomain, xen/sys/evtchn.h.
type ioctlEvtchnBindInterdomainArg struct{ RemoteDomain, RemotePort uint32 }

// ioctlEvtchnBindUnboundPortArg is struct ioctl_evtchn_bind_unbound_port, xen/sys/evtchn.h.
type ioctlEvtchnBindUnboundPortArg struct{ RemoteDomain uint32 }

// ioctlEvtchnUnbindArg is struct ioctl_evtchn_unbind, xen/sys/evtchn.h.
type ioctlEvtchnUnbindArg struct{ Port uint32 }

// ioctlEvtchnNotifyArg is struct ioctl_evtchn_notify, xen/sys/evtchn.h.
type ioctlEvtchnNotifyArg struct{ Port uint32 }

// ioctlEvtchnRestrictDomidArg is struct ioctl_evtchn_restrict_domid, xen/sys/evtchn.h.
type ioctlEvtchnRestrictDomidArg struct{ Domid uint16 }

// ---- DM_OP (xen/hvm/dm_op.h) ----

// DM op numbers (XEN_DMOP_*, xen/hvm/dm_op.h).
const (
	dmopCreateIoreqServer       = 1  // XEN_DMOP_create_ioreq_server
	dmopGetIoreqServerInfo      = 2  // XEN_DMOP_get_ioreq_server_info
	dmopMapIORangeToIoreqServer = 3  // XEN_DMOP_map_io_range_to_ioreq_server
	dmopUnmapIORangeFromServer  = 4  // XEN_DMOP_unmap_io_range_from_ioreq_server
	dmopSetIoreqServerState     = 5  // XEN_DMOP_set_ioreq_server_state
	dmopDestroyIoreqServer      = 6  // XEN_DMOP_destroy_ioreq_server
	dmopTrackDirtyVRAM          = 7  // XEN_DMOP_track_dirty_vram
	dmopSetPCIIntxLevel         = 8  // XEN_DMOP_set_pci_intx_level
	dmopSetISAIRQLevel          = 9  // XEN_DMOP_set_isa_irq_level
	dmopSetPCILinkRoute         = 10 // XEN_DMOP_set_pci_link_route
	dmopModifiedMemory          = 11 // XEN_DMOP_modified_memory
	dmopSetMemType              = 12 // XEN_DMOP_set_mem_type
	dmopInjectEvent             = 13 // XEN_DMOP_inject_event
	dmopInjectMSI               = 14 // XEN_DMOP_inject_msi
	dmopMapMemTypeToIoreqServer = 15 // XEN_DMOP_map_mem_type_to_ioreq_server
	dmopRemoteShutdown          = 16 // XEN_DMOP_remote_shutdown
	dmopRelocateMemory          = 17 // XEN_DMOP_relocate_memory
	dmopPinMemoryCacheattr      = 18 // XEN_DMOP_pin_memory_cacheattr
	dmopSetIRQLevel             = 19 // XEN_DMOP_set_irq_level
	dmopNrVCPUs                 = 20 // XEN_DMOP_nr_vcpus

	dmopNoGFNs = 1 // XEN_DMOP_no_gfns

	// dmopHeaderSize is offsetof(struct xen_dm_op, u).
	dmopHeaderSize = 8
	// dmopMaxModifiedExtents is how many xen_dm_op_modified_memory_extent fit
	// in one 4096-byte DM_OP buffer.
	dmopMaxModifiedExtents = dmopMaxBufSize / 16
)

// dmopInfo is the name of each DM op and the size of its member of union u
// (sizeof of the xen_dm_op_* struct): Xen refuses buf[0] shorter than
// offsetof(struct xen_dm_op, u) + that size.
var dmopInfo = map[uint32]struct {
	name string
	size int
}{
	dmopCreateIoreqServer:       {"create_ioreq_server", 6},
	dmopGetIoreqServerInfo:      {"get_ioreq_server_info", 24},
	dmopMapIORangeToIoreqServer: {"map_io_range_to_ioreq_server", 24},
	dmopUnmapIORangeFromServer:  {"unmap_io_range_from_ioreq_server", 24},
	dmopSetIoreqServerState:     {"set_ioreq_server_state", 4},
	dmopDestroyIoreqServer:      {"destroy_ioreq_server", 4},
	dmopTrackDirtyVRAM:          {"track_dirty_vram", 16},
	dmopSetPCIIntxLevel:         {"set_pci_intx_level", 6},
	dmopSetISAIRQLevel:          {"set_isa_irq_level", 2},
	dmopSetPCILinkRoute:         {"set_pci_link_route", 2},
	dmopModifiedMemory:          {"modified_memory", 8},
	dmopSetMemType:              {"set_mem_type", 16},
	dmopInjectEvent:             {"inject_event", 24},
	dmopInjectMSI:               {"inject_msi", 16},
	dmopMapMemTypeToIoreqServer: {"map_mem_type_to_ioreq_server", 16},
	dmopRemoteShutdown:          {"remote_shutdown", 4},
	dmopRelocateMemory:          {"relocate_memory", 24},
	dmopPinMemoryCacheattr:      {"pin_memory_cacheattr", 24},
	dmopSetIRQLevel:             {"set_irq_level", 8},
	dmopNrVCPUs:                 {"nr_vcpus", 4},
}

// DMOpName is the XEN_DMOP_* name of op without the prefix
// ("create_ioreq_server"), or "dmop(N)" for an unknown op.
func DMOpName(op uint32) string {
	if i, ok := dmopInfo[op]; ok {
		return i.name
	}
	return "dmop(" + itoa(uint64(op)) + ")"
}

func itoa(v uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// xenDMOp is struct xen_dm_op, xen/hvm/dm_op.h (32 bytes: op, pad, union u).
type xenDMOp struct {
	Op  uint32
	Pad uint32
	U   [24]byte
}

// xenDMOpBuf is struct xen_dm_op_buf, xen/hvm/dm_op.h (the hypervisor's view
// of privcmd_dm_op_buf_t).
type xenDMOpBuf struct {
	H    uint64
	Size uint64
}

// dmopCreateIoreqServerArg is struct xen_dm_op_create_ioreq_server, xen/hvm/dm_op.h.
type dmopCreateIoreqServerArg struct {
	HandleBufioreq uint8
	Pad            [3]uint8
	ID             uint16
}

// dmopGetIoreqServerInfoArg is struct xen_dm_op_get_ioreq_server_info, xen/hvm/dm_op.h.
type dmopGetIoreqServerInfoArg struct {
	ID           uint16
	Flags        uint16
	BufioreqPort uint32
	IoreqGFN     uint64
	BufioreqGFN  uint64
}

// dmopIoreqServerRangeArg is struct xen_dm_op_ioreq_server_range, xen/hvm/dm_op.h.
type dmopIoreqServerRangeArg struct {
	ID    uint16
	Pad   uint16
	Type  uint32
	Start uint64
	End   uint64
}

// dmopSetIoreqServerStateArg is struct xen_dm_op_set_ioreq_server_state, xen/hvm/dm_op.h.
type dmopSetIoreqServerStateArg struct {
	ID      uint16
	Enabled uint8
	Pad     uint8
}

// dmopDestroyIoreqServerArg is struct xen_dm_op_destroy_ioreq_server, xen/hvm/dm_op.h.
type dmopDestroyIoreqServerArg struct {
	ID  uint16
	Pad uint16
}

// dmopSetPCIIntxLevelArg is struct xen_dm_op_set_pci_intx_level, xen/hvm/dm_op.h.
type dmopSetPCIIntxLevelArg struct {
	Domain uint16
	Bus    uint8
	Device uint8
	Intx   uint8
	Level  uint8
}

// dmopSetISAIRQLevelArg is struct xen_dm_op_set_isa_irq_level, xen/hvm/dm_op.h.
type dmopSetISAIRQLevelArg struct {
	ISAIRQ uint8
	Level  uint8
}

// dmopSetPCILinkRouteArg is struct xen_dm_op_set_pci_link_route, xen/hvm/dm_op.h.
type dmopSetPCILinkRouteArg struct {
	Link   uint8
	ISAIRQ uint8
}

// dmopModifiedMemoryArg is struct xen_dm_op_modified_memory, xen/hvm/dm_op.h.
type dmopModifiedMemoryArg struct {
	NrExtents uint32
	Opaque    uint32
}

// dmopModifiedMemoryExtent is struct xen_dm_op_modified_memory_extent, xen/hvm/dm_op.h.
type dmopModifiedMemoryExtent struct {
	Nr       uint32
	Pad      uint32
	FirstPFN uint64
}

// dmopRemoteShutdownArg is struct xen_dm_op_remote_shutdown, xen/hvm/dm_op.h.
type dmopRemoteShutdownArg struct {
	Reason uint32
}

// dmopNrVCPUsArg is struct xen_dm_op_nr_vcpus, xen/hvm/dm_op.h.
type dmopNrVCPUsArg struct {
	VCPUs uint32
}

// ---- hypercalls (xen/xen.h, xen/memory.h, xen/hvm/hvm_op.h, xen/domctl.h) ----

const (
	hypercallMemoryOp   = 12 // __HYPERVISOR_memory_op
	hypercallXenVersion = 17 // __HYPERVISOR_xen_version
	hypercallHVMOp      = 34 // __HYPERVISOR_hvm_op
	hypercallDomctl     = 36 // __HYPERVISOR_domctl

	xenverVersion = 0 // XENVER_version

	hvmopSetParam = 0 // HVMOP_set_param
	hvmopGetParam = 1 // HVMOP_get_param

	xenmemPagingOp = 20 // XENMEM_paging_op

	xenmemResourceIoreqServer           = 0 // XENMEM_resource_ioreq_server
	xenmemResourceIoreqServerFrameBuf   = 0 // XENMEM_resource_ioreq_server_frame_bufioreq
	xenmemResourceIoreqServerFrameIoreq = 1 // XENMEM_resource_ioreq_server_frame_ioreq(0)

	domctlVMEventOp        = 56   // XEN_DOMCTL_vm_event_op
	domctlInterfaceVersion = 0x15 // XEN_DOMCTL_INTERFACE_VERSION (4.17)
)

// XENMEM_paging_op sub-ops (xen/memory.h), for PagingOp.
const (
	PagingOpNominate = 0 // XENMEM_paging_op_nominate
	PagingOpEvict    = 1 // XENMEM_paging_op_evict
	PagingOpPrep     = 2 // XENMEM_paging_op_prep
)

// XEN_DOMCTL_vm_event_op operations and modes (xen/domctl.h), for VMEventOp.
const (
	VMEventOpEnable     = 0 // XEN_VM_EVENT_ENABLE
	VMEventOpDisable    = 1 // XEN_VM_EVENT_DISABLE
	VMEventOpResume     = 2 // XEN_VM_EVENT_RESUME
	VMEventOpGetVersion = 3 // XEN_VM_EVENT_GET_VERSION
	VMEventModePaging   = 1 // XEN_DOMCTL_VM_EVENT_OP_PAGING
)

// HVM params (HVM_PARAM_*, xen/hvm/params.h).
const (
	HVMParamACPISState    = 14 // HVM_PARAM_ACPI_S_STATE
	HVMParamPagingRingPFN = 27 // HVM_PARAM_PAGING_RING_PFN
)

// xenHVMParam is struct xen_hvm_param, xen/hvm/hvm_op.h.
type xenHVMParam struct {
	Domid uint16
	Pad   uint16
	Index uint32
	Value uint64
}

// xenMemPagingOp is struct xen_mem_paging_op, xen/memory.h (24 bytes).
type xenMemPagingOp struct {
	Op     uint8
	_      uint8
	Domain uint16
	_      [4]byte
	Buffer uint64 // XEN_GUEST_HANDLE_64(const_uint8)
	GFN    uint64
}

// xenDomctl is struct xen_domctl, xen/domctl.h: the header and the 128-byte
// union u (only its vm_event_op member is used here).
type xenDomctl struct {
	Cmd              uint32
	InterfaceVersion uint32
	Domain           uint16
	Pad              [3]uint16
	U                [128]byte
}

// xenDomctlVMEventOp is struct xen_domctl_vm_event_op, xen/domctl.h. Port is
// the union member u.enable.port (also u.version).
type xenDomctlVMEventOp struct {
	Op   uint32
	Mode uint32
	Port uint32
}
