package xen

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// The ABI test compiles a C program against Debian's libxen-dev headers
// (/usr/include/xen, 4.17) and compares every Go mirror and constant with
// what gcc says. Adding a struct or a constant is one line in a table below.

// abiStructs: C type, Go mirror, and "cfield=GoField" pairs (a C field may
// be a path into a union). Size, offset and field size are all compared.
var abiStructs = []struct {
	c      string
	goType any
	fields string
}{
	{"ioreq_t", Ioreq{}, "addr=Addr data=Data count=Count size=Size vp_eport=VPEport _pad0=Pad0 type=Type"},
	{"buf_ioreq_t", BufIoreq{}, "data=Data"},
	{"struct xen_dm_op", xenDMOp{}, "op=Op pad=Pad u=U"},
	{"struct xen_dm_op_buf", xenDMOpBuf{}, "h=H size=Size"},
	{"struct xen_dm_op_create_ioreq_server", dmopCreateIoreqServerArg{}, "handle_bufioreq=HandleBufioreq pad=Pad id=ID"},
	{"struct xen_dm_op_get_ioreq_server_info", dmopGetIoreqServerInfoArg{}, "id=ID flags=Flags bufioreq_port=BufioreqPort ioreq_gfn=IoreqGFN bufioreq_gfn=BufioreqGFN"},
	{"struct xen_dm_op_ioreq_server_range", dmopIoreqServerRangeArg{}, "id=ID pad=Pad type=Type start=Start end=End"},
	{"struct xen_dm_op_set_ioreq_server_state", dmopSetIoreqServerStateArg{}, "id=ID enabled=Enabled pad=Pad"},
	{"struct xen_dm_op_destroy_ioreq_server", dmopDestroyIoreqServerArg{}, "id=ID pad=Pad"},
	{"struct xen_dm_op_set_pci_intx_level", dmopSetPCIIntxLevelArg{}, "domain=Domain bus=Bus device=Device intx=Intx level=Level"},
	{"struct xen_dm_op_set_isa_irq_level", dmopSetISAIRQLevelArg{}, "isa_irq=ISAIRQ level=Level"},
	{"struct xen_dm_op_set_pci_link_route", dmopSetPCILinkRouteArg{}, "link=Link isa_irq=ISAIRQ"},
	{"struct xen_dm_op_modified_memory", dmopModifiedMemoryArg{}, "nr_extents=NrExtents opaque=Opaque"},
	{"struct xen_dm_op_modified_memory_extent", dmopModifiedMemoryExtent{}, "nr=Nr pad=Pad first_pfn=FirstPFN"},
	{"struct xen_dm_op_remote_shutdown", dmopRemoteShutdownArg{}, "reason=Reason"},
	{"struct xen_dm_op_nr_vcpus", dmopNrVCPUsArg{}, "vcpus=VCPUs"},
	{"privcmd_hypercall_t", privcmdHypercall{}, "op=Op arg=Arg"},
	{"privcmd_mmapbatch_v2_t", privcmdMmapBatchV2{}, "num=Num dom=Dom addr=Addr arr=Arr err=Err"},
	{"privcmd_dm_op_buf_t", privcmdDMOpBuf{}, "uptr=Uptr size=Size"},
	{"privcmd_dm_op_t", privcmdDMOp{}, "dom=Dom num=Num ubufs=Ubufs"},
	{"privcmd_mmap_resource_t", privcmdMmapResource{}, "dom=Dom type=Type id=ID idx=Idx num=Num addr=Addr"},
	{"struct ioctl_evtchn_bind_virq", ioctlEvtchnBindVirqArg{}, "virq=Virq"},
	{"struct ioctl_evtchn_bind_interdomain", ioctlEvtchnBindInterdomainArg{}, "remote_domain=RemoteDomain remote_port=RemotePort"},
	{"struct ioctl_evtchn_bind_unbound_port", ioctlEvtchnBindUnboundPortArg{}, "remote_domain=RemoteDomain"},
	{"struct ioctl_evtchn_unbind", ioctlEvtchnUnbindArg{}, "port=Port"},
	{"struct ioctl_evtchn_notify", ioctlEvtchnNotifyArg{}, "port=Port"},
	{"struct ioctl_evtchn_restrict_domid", ioctlEvtchnRestrictDomidArg{}, "domid=Domid"},
	{"struct xen_hvm_param", xenHVMParam{}, "domid=Domid pad=Pad index=Index value=Value"},
	{"struct xen_mem_paging_op", xenMemPagingOp{}, "op=Op domain=Domain buffer=Buffer gfn=GFN"},
	{"struct xen_domctl", xenDomctl{}, "cmd=Cmd interface_version=InterfaceVersion domain=Domain _pad=Pad u=U"},
	{"struct xen_domctl_vm_event_op", xenDomctlVMEventOp{}, "op=Op mode=Mode u.enable.port=Port u.version=Port"},
	{"vm_event_request_t", VMEvent{}, "version=Version flags=Flags reason=Reason vcpu_id=VCPUID altp2m_idx=Altp2mIdx _pad=Pad u=U data=Data"},
	{"vm_event_response_t", VMEvent{}, "version=Version flags=Flags reason=Reason vcpu_id=VCPUID u=U data=Data"},
	{"struct vm_event_paging", VMEventPaging{}, "gfn=GFN p2mt=P2MT flags=Flags"},
}

// abiConsts: a C expression and the Go value it must equal.
var abiConsts = []struct {
	c   string
	go_ uint64
}{
	// ioctl numbers
	{"IOCTL_PRIVCMD_HYPERCALL", uint64(ioctlPrivcmdHypercall)},
	{"IOCTL_PRIVCMD_MMAPBATCH_V2", uint64(ioctlPrivcmdMmapBatchV2)},
	{"IOCTL_PRIVCMD_DM_OP", uint64(ioctlPrivcmdDMOp)},
	{"IOCTL_PRIVCMD_RESTRICT", uint64(ioctlPrivcmdRestrict)},
	{"IOCTL_PRIVCMD_MMAP_RESOURCE", uint64(ioctlPrivcmdMmapResource)},
	{"IOCTL_PRIVCMD_UNIMPLEMENTED", uint64(ioctlPrivcmdUnimplemented)},
	{"IOCTL_EVTCHN_BIND_VIRQ", uint64(ioctlEvtchnBindVirq)},
	{"IOCTL_EVTCHN_BIND_INTERDOMAIN", uint64(ioctlEvtchnBindInterdomain)},
	{"IOCTL_EVTCHN_BIND_UNBOUND_PORT", uint64(ioctlEvtchnBindUnboundPort)},
	{"IOCTL_EVTCHN_UNBIND", uint64(ioctlEvtchnUnbind)},
	{"IOCTL_EVTCHN_NOTIFY", uint64(ioctlEvtchnNotify)},
	{"IOCTL_EVTCHN_RESET", uint64(ioctlEvtchnReset)},
	{"IOCTL_EVTCHN_RESTRICT_DOMID", uint64(ioctlEvtchnRestrictDomid)},
	// domids, shutdown reasons, server modes, range types
	{"DOMID_SELF", uint64(DomidSelf)},
	{"DOMID_INVALID", uint64(DomidInvalid)},
	{"SHUTDOWN_poweroff", uint64(ShutdownPoweroff)},
	{"SHUTDOWN_reboot", uint64(ShutdownReboot)},
	{"SHUTDOWN_suspend", uint64(ShutdownSuspend)},
	{"SHUTDOWN_crash", uint64(ShutdownCrash)},
	{"SHUTDOWN_watchdog", uint64(ShutdownWatchdog)},
	{"SHUTDOWN_soft_reset", uint64(ShutdownSoftReset)},
	{"HVM_IOREQSRV_BUFIOREQ_OFF", uint64(BufIoreqOff)},
	{"HVM_IOREQSRV_BUFIOREQ_LEGACY", uint64(BufIoreqLegacy)},
	{"HVM_IOREQSRV_BUFIOREQ_ATOMIC", uint64(BufIoreqAtomic)},
	{"XEN_DMOP_IO_RANGE_PORT", uint64(IORangePort)},
	{"XEN_DMOP_IO_RANGE_MEMORY", uint64(IORangeMemory)},
	{"XEN_DMOP_IO_RANGE_PCI", uint64(IORangePCI)},
	{"XEN_DMOP_PCI_SBDF(0x1234, 0xab, 0x1f, 7)", PCISBDF(0x1234, 0xab, 0x1f, 7)},
	{"XEN_DMOP_PCI_SBDF(0, 0, 1, 3)", PCISBDF(0, 0, 1, 3)},
	{"XEN_DMOP_no_gfns", dmopNoGFNs},
	{"offsetof(struct xen_dm_op, u)", dmopHeaderSize},
	{"4096 / sizeof(struct xen_dm_op_modified_memory_extent)", dmopMaxModifiedExtents},
	// ioreq
	{"IOREQ_READ", IoreqRead},
	{"IOREQ_WRITE", IoreqWrite},
	{"STATE_IOREQ_NONE", StateIoreqNone},
	{"STATE_IOREQ_READY", StateIoreqReady},
	{"STATE_IOREQ_INPROCESS", StateIoreqInprocess},
	{"STATE_IORESP_READY", StateIorespReady},
	{"IOREQ_TYPE_PIO", IoreqTypePIO},
	{"IOREQ_TYPE_COPY", IoreqTypeCopy},
	{"IOREQ_TYPE_PCI_CONFIG", IoreqTypePCIConfig},
	{"IOREQ_TYPE_TIMEOFFSET", IoreqTypeTimeOffset},
	{"IOREQ_TYPE_INVALIDATE", IoreqTypeInvalidate},
	{"IOREQ_BUFFER_SLOT_NUM", IoreqBufferSlotNum},
	{"sizeof(ioreq_t)", ioreqSize},
	{"offsetof(ioreq_t, vp_eport)", ioreqVPEportOff},
	{"offsetof(ioreq_t, data)", ioreqDataOff},
	{"offsetof(ioreq_t, _pad0)", ioreqStateWordOff},
	{"(offsetof(ioreq_t, type) - 1 - offsetof(ioreq_t, _pad0)) * 8", ioreqStateShift},
	{"XEN_PAGE_SHIFT", PageShift},
	{"1 << XEN_PAGE_SHIFT", PageSize},
	{"offsetof(shared_iopage_t, vcpu_ioreq[1])", ioreqSize},
	{"offsetof(buffered_iopage_t, read_pointer)", bufReadPointer},
	{"offsetof(buffered_iopage_t, write_pointer)", bufWritePointer},
	{"offsetof(buffered_iopage_t, buf_ioreq)", bufSlots},
	{"sizeof(buffered_iopage_t)", bufSlots + IoreqBufferSlotNum*8},
	{"sizeof(buffered_iopage_t) <= 4096", 1},
	// resources, hypercalls, params
	{"XENMEM_resource_ioreq_server", xenmemResourceIoreqServer},
	{"XENMEM_resource_ioreq_server_frame_bufioreq", xenmemResourceIoreqServerFrameBuf},
	{"XENMEM_resource_ioreq_server_frame_ioreq(0)", xenmemResourceIoreqServerFrameIoreq},
	{"__HYPERVISOR_memory_op", hypercallMemoryOp},
	{"__HYPERVISOR_xen_version", hypercallXenVersion},
	{"__HYPERVISOR_hvm_op", hypercallHVMOp},
	{"__HYPERVISOR_domctl", hypercallDomctl},
	{"XENVER_version", xenverVersion},
	{"HVMOP_set_param", hvmopSetParam},
	{"HVMOP_get_param", hvmopGetParam},
	{"HVM_PARAM_ACPI_S_STATE", HVMParamACPISState},
	{"HVM_PARAM_PAGING_RING_PFN", HVMParamPagingRingPFN},
	// mem_paging and vm_event
	{"XENMEM_paging_op", xenmemPagingOp},
	{"XENMEM_paging_op_nominate", PagingOpNominate},
	{"XENMEM_paging_op_evict", PagingOpEvict},
	{"XENMEM_paging_op_prep", PagingOpPrep},
	{"XEN_DOMCTL_vm_event_op", domctlVMEventOp},
	{"XEN_DOMCTL_INTERFACE_VERSION", domctlInterfaceVersion},
	{"XEN_VM_EVENT_ENABLE", VMEventOpEnable},
	{"XEN_VM_EVENT_DISABLE", VMEventOpDisable},
	{"XEN_VM_EVENT_RESUME", VMEventOpResume},
	{"XEN_VM_EVENT_GET_VERSION", VMEventOpGetVersion},
	{"XEN_DOMCTL_VM_EVENT_OP_PAGING", VMEventModePaging},
	{"offsetof(struct xen_domctl, u)", domctlUOffset},
	{"offsetof(struct xen_domctl, u.vm_event_op)", domctlUOffset},
	{"VM_EVENT_INTERFACE_VERSION", VMEventInterfaceVersion},
	{"VM_EVENT_FLAG_VCPU_PAUSED", VMEventFlagVCPUPaused},
	{"VM_EVENT_FLAG_FOREIGN", VMEventFlagForeign},
	{"VM_EVENT_REASON_MEM_PAGING", VMEventReasonMemPaging},
	{"MEM_PAGING_DROP_PAGE", MemPagingDropPage},
	{"MEM_PAGING_EVICT_FAIL", MemPagingEvictFail},
	{"offsetof(vm_event_request_t, u.mem_paging)", 24},
	{"offsetof(struct vm_event_sring, req_prod)", vmEventSringReqProd},
	{"offsetof(struct vm_event_sring, req_event)", vmEventSringReqEvent},
	{"offsetof(struct vm_event_sring, rsp_prod)", vmEventSringRspProd},
	{"offsetof(struct vm_event_sring, rsp_event)", vmEventSringRspEvent},
	{"offsetof(struct vm_event_sring, ring)", vmEventSringRing},
	{"sizeof(union vm_event_sring_entry)", vmEventEntrySize},
	{"__RING_SIZE((struct vm_event_sring *)0, 4096)", VMEventRingSize},
	{"__RING_SIZE((struct vm_event_sring *)0, 4096)", uint64(ringSize(PageSize, vmEventSringRing, vmEventEntrySize))},
}

// dmopCStruct maps a DM op to the C struct of its union member.
var dmopCStruct = map[uint32]string{
	dmopMapIORangeToIoreqServer: "xen_dm_op_ioreq_server_range",
	dmopUnmapIORangeFromServer:  "xen_dm_op_ioreq_server_range",
}

func init() {
	// Every DM op: its number and the size of its union member (what
	// checkDMOpBufs requires of buffer 0).
	for op, info := range dmopInfo {
		st := dmopCStruct[op]
		if st == "" {
			st = "xen_dm_op_" + info.name
		}
		abiConsts = append(abiConsts,
			struct {
				c   string
				go_ uint64
			}{"XEN_DMOP_" + info.name, uint64(op)},
			struct {
				c   string
				go_ uint64
			}{"sizeof(struct " + st + ")", uint64(info.size)})
	}
}

// abiBits: bitfields cannot be offsetof'd, so both sides encode a value and
// the bytes are compared. The C snippet fills a variable v.
var abiBits = []struct {
	name string
	c    string
	go_  func() []byte
}{
	{"ioreq.state", "ioreq_t v; memset(&v, 0, sizeof v); v.state = 0xf;", func() []byte { r := Ioreq{}; r.SetState(0xf); return bytesOf(&r) }},
	{"ioreq.state3", "ioreq_t v; memset(&v, 0, sizeof v); v.state = STATE_IORESP_READY; v.type = 2;", func() []byte {
		r := Ioreq{Type: 2}
		r.SetState(StateIorespReady)
		return bytesOf(&r)
	}},
	{"ioreq.data_is_ptr", "ioreq_t v; memset(&v, 0, sizeof v); v.data_is_ptr = 1;", func() []byte { r := Ioreq{}; r.SetDataIsPtr(true); return bytesOf(&r) }},
	{"ioreq.dir", "ioreq_t v; memset(&v, 0, sizeof v); v.dir = IOREQ_READ;", func() []byte { r := Ioreq{}; r.SetDir(IoreqRead); return bytesOf(&r) }},
	{"ioreq.df", "ioreq_t v; memset(&v, 0, sizeof v); v.df = 1;", func() []byte { r := Ioreq{}; r.SetDF(true); return bytesOf(&r) }},
	{"ioreq.all", "ioreq_t v; memset(&v, 0, sizeof v); v.addr = 0x1122334455667788ULL; v.data = 0x99aabbccddeeff00ULL; v.count = 3; v.size = 4; v.vp_eport = 77; v.state = 2; v.data_is_ptr = 1; v.dir = 1; v.df = 1; v.type = 1;", func() []byte {
		r := Ioreq{Addr: 0x1122334455667788, Data: 0x99aabbccddeeff00, Count: 3, Size: 4, VPEport: 77, Type: 1}
		r.SetState(2)
		r.SetDataIsPtr(true)
		r.SetDir(IoreqRead)
		r.SetDF(true)
		return bytesOf(&r)
	}},
	{"buf_ioreq.all", "buf_ioreq_t v; memset(&v, 0, sizeof v); v.type = 0xab; v.dir = 1; v.size = 3; v.addr = 0xfedcb; v.data = 0x12345678;", func() []byte {
		b := MakeBufIoreq(0xab, 1, 3, 0xfedcb, 0x12345678)
		return bytesOf(&b)
	}},
	{"buf_ioreq.size", "buf_ioreq_t v; memset(&v, 0, sizeof v); v.size = 2; v.addr = 1;", func() []byte { b := MakeBufIoreq(0, 0, 2, 1, 0); return bytesOf(&b) }},
	{"vm_event.paging", "vm_event_request_t v; memset(&v, 0, sizeof v); v.version = 7; v.reason = 3; v.vcpu_id = 5; v.flags = 1; v.u.mem_paging.gfn = 0x123456789aULL; v.u.mem_paging.p2mt = 10; v.u.mem_paging.flags = 2;", func() []byte {
		e := VMEvent{Version: 7, Reason: 3, VCPUID: 5, Flags: 1}
		e.SetPaging(VMEventPaging{GFN: 0x123456789a, P2MT: 10, Flags: 2})
		return bytesOf(&e)
	}},
}

var abiHeaders = []string{
	"xen/xen.h", "xen/io/ring.h", "xen/memory.h", "xen/domctl.h", "xen/vm_event.h", "xen/sched.h", "xen/version.h",
	"xen/hvm/ioreq.h", "xen/hvm/dm_op.h", "xen/hvm/hvm_op.h", "xen/hvm/params.h",
	"xen/sys/privcmd.h", "xen/sys/evtchn.h",
}

func cString(s string) string { return strconv.Quote(s) }

func TestABIAgainstXenHeaders(t *testing.T) {
	for _, h := range abiHeaders {
		if _, err := os.Stat(filepath.Join("/usr/include", h)); err != nil {
			t.Fatalf("Xen headers are missing (%v): run `apt-get install libxen-dev` (Debian's 4.17 headers) — this test needs them and does not skip", err)
		}
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		t.Fatalf("gcc not found (%v): run `apt-get install gcc libxen-dev`", err)
	}

	var src bytes.Buffer
	src.WriteString("#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <string.h>\n#include <sys/ioctl.h>\n")
	for _, h := range abiHeaders {
		fmt.Fprintf(&src, "#include <%s>\n", h)
	}
	src.WriteString(`
static void dump(const char *name, const void *p, size_t n) {
	const unsigned char *b = p; printf("bits %s ", name);
	for (size_t i = 0; i < n; i++) printf("%02x", b[i]);
	printf("\n");
}
int main(void) {
`)
	for _, s := range abiStructs {
		fmt.Fprintf(&src, "\tprintf(\"size %%s %%zu\\n\", %s, sizeof(%s));\n", cString(s.c), s.c)
		for _, f := range strings.Fields(s.fields) {
			cf, _, _ := strings.Cut(f, "=")
			fmt.Fprintf(&src, "\tprintf(\"field %%s %%s %%zu %%zu\\n\", %s, %s, offsetof(%s, %s), sizeof(((%s *)0)->%s));\n",
				cString(s.c), cString(cf), s.c, cf, s.c, cf)
		}
	}
	for i, c := range abiConsts {
		fmt.Fprintf(&src, "\tprintf(\"const %d %%llu\\n\", (unsigned long long)(%s));\n", i, c.c)
	}
	for _, b := range abiBits {
		fmt.Fprintf(&src, "\t{ %s dump(%s, &v, sizeof v); }\n", b.c, cString(b.name))
	}
	src.WriteString("\treturn 0;\n}\n")

	dir := t.TempDir()
	cfile, bin := filepath.Join(dir, "abi.c"), filepath.Join(dir, "abi")
	if err := os.WriteFile(cfile, src.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gcc, "-D__XEN_TOOLS__", "-Wall", "-Wno-unused-variable", "-o", bin, cfile)
	if out, err := cmd.CombinedOutput(); err != nil {
		msg := string(out)
		if strings.Contains(msg, "No such file") {
			msg += "\n(run `apt-get install libxen-dev`)"
		}
		t.Fatalf("gcc failed: %v\n%s\nprogram:\n%s", err, msg, src.String())
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatalf("running the header probe: %v", err)
	}

	sizes := map[string]uint64{}
	type fieldInfo struct{ off, size uint64 }
	fields := map[string]fieldInfo{}
	consts := map[int]uint64{}
	bits := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch f[0] {
		case "size":
			n, _ := strconv.ParseUint(f[len(f)-1], 10, 64)
			sizes[strings.Join(f[1:len(f)-1], " ")] = n
		case "field":
			off, _ := strconv.ParseUint(f[len(f)-2], 10, 64)
			sz, _ := strconv.ParseUint(f[len(f)-1], 10, 64)
			fields[strings.Join(f[1:len(f)-2], " ")] = fieldInfo{off, sz}
		case "const":
			i, _ := strconv.Atoi(f[1])
			v, _ := strconv.ParseUint(f[2], 10, 64)
			consts[i] = v
		case "bits":
			bits[f[1]] = f[2]
		}
	}

	for _, s := range abiStructs {
		gt := reflect.TypeOf(s.goType)
		if want, got := sizes[s.c], uint64(gt.Size()); want != got {
			t.Errorf("sizeof(%s) = %d, Go %s is %d bytes", s.c, want, gt.Name(), got)
		}
		for _, f := range strings.Fields(s.fields) {
			cf, gf, _ := strings.Cut(f, "=")
			sf, ok := gt.FieldByName(gf)
			if !ok {
				t.Errorf("%s: Go type %s has no field %s", s.c, gt.Name(), gf)
				continue
			}
			c := fields[s.c+" "+cf]
			if c.off != uint64(sf.Offset) {
				t.Errorf("offsetof(%s, %s) = %d, Go %s.%s at %d", s.c, cf, c.off, gt.Name(), gf, sf.Offset)
			}
			if c.size != uint64(sf.Type.Size()) {
				t.Errorf("sizeof(%s.%s) = %d, Go %s.%s is %d bytes", s.c, cf, c.size, gt.Name(), gf, sf.Type.Size())
			}
		}
	}
	for i, c := range abiConsts {
		got, ok := consts[i]
		if !ok {
			t.Errorf("%s: no value from C", c.c)
		} else if got != c.go_ {
			t.Errorf("%s = %#x in C, %#x in Go", c.c, got, c.go_)
		}
	}
	for _, b := range abiBits {
		if want, got := bits[b.name], hex.EncodeToString(b.go_()); want != got {
			t.Errorf("%s: C bytes %s, Go bytes %s", b.name, want, got)
		}
	}
	t.Logf("checked %d structs, %d constants, %d bitfield encodings against /usr/include/xen", len(abiStructs), len(abiConsts), len(abiBits))
}
