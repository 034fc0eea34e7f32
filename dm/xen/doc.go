// Package xen is the Xen ABI of the device model: the Linux dom0 devices
// (/dev/xen/privcmd, /dev/xen/hypercall, /dev/xen/evtchn), the device-model
// operations (XEN_DMOP_*), the shared ioreq pages, foreign mapping of guest
// RAM, and the mem_paging ABI. It holds no device or policy logic: a device
// model is built on top of it (package dm), and devices never see it (they
// use dm/hw).
//
// It is pure Go over golang.org/x/sys/unix, in the style of x/sys/unix and
// gVisor's KVM platform: every Go type that mirrors a C struct names the
// struct and its header, one small typed helper wraps each ioctl around one
// private raw ioctl call, and every use of package unsafe is in a file named
// *_unsafe.go. abi_test.go compiles a C program against Debian's libxen-dev
// 4.17 headers and checks every mirror, ioctl number and constant.
//
// # Layers
//
// Raw handles (real only):
//
//   - Privcmd (/dev/xen/privcmd): DMOp (IOCTL_PRIVCMD_DM_OP, ≤ 2 buffers of
//     ≤ 4096 bytes, checked before the call), MapResource
//     (IOCTL_PRIVCMD_MMAP_RESOURCE), MapForeign/RetryForeign/UnmapForeign
//     (IOCTL_PRIVCMD_MMAPBATCH_V2 with per-page errors), Restrict, and typed
//     hypercalls (XenVersion, HVMParam, SetHVMParam, PagingOp, VMEventOp)
//     whose arguments live in /dev/xen/hypercall pages. Nested pointers of
//     ioctl arguments always point into mmap'd arenas, never into Go memory.
//   - Probe reports which of these the host has, with errors that say what is
//     missing.
//
// Interfaces with a real implementation here and an in-memory fake in
// dm/xen/xentest (the DM core depends only on the interfaces):
//
//   - DeviceModel (real: *DevModel over DM_OP; fake: xentest.DeviceModel,
//     which records calls, keeps Xen's state and can be told to fail): the
//     ioreq server lifecycle, I/O ranges, ISA/PCI interrupt lines (it is an
//     hw.Interrupts), modified_memory (coalesced, ≤ 256 extents per call),
//     remote_shutdown, nr_vcpus.
//   - EventChannel (real: *Evtchn over /dev/xen/evtchn, on Go's netpoller so
//     Close wakes a blocked Wait; fake: xentest.EvtchnHub endpoints, with
//     ports a test fires and observes).
//   - ForeignMapper (real: *Privcmd; fake: xentest.GuestRAM, a memfd whose
//     unmappable pages are PROT_NONE so touching one crashes the test as it
//     would SIGBUS on Xen). MapCache (the same code over either) maps guest
//     RAM in 1 MiB buckets with a per-page validity bitmap, reference counts
//     for Pins (DMA) and Invalidate; it is an hw.GuestMemory whose errors are
//     *PageError values naming the domid and pfn and wrapping hw.ErrBadGPA.
//   - MemPaging (real: *PagingOps; fake: xentest.Paging, with the hypervisor
//     end of the vm_event ring): XENMEM_paging_op and the paging ring setup.
//
// Shared-page protocol code works on []byte pages, so the mmap'd page of a
// real server and a fake's page run the same code: IoreqPage (the per-vCPU
// ioreq_t slots: Accept READY→INPROCESS, Respond data then IORESP_READY,
// never NONE), BufIoreqPage (the buffered ring, read_pointer advanced by
// atomic add, 8-byte items in two slots), VMEventBackRing (the back end of
// the vm_event ring) and PagingResponse. The fakes xentest.IoreqPage and
// xentest.Paging play Xen's side of the same pages.
//
// # How a device model uses it
//
// The start-up sequence of xen-dm-interface.md §4.1:
//
//	p, _ := xen.OpenPrivcmd()
//	ev, _ := xen.OpenEvtchn()
//	dm := xen.NewDeviceModel(p, dom)
//	n, _ := dm.NrVCPUs()
//	id, _ := dm.CreateIoreqServer(xen.BufIoreqAtomic)
//	pages, _ := dm.MapIoreqPages(id, true)
//	bufPort, _ := dm.BufioreqPort(id)
//	dm.SetIoreqServerState(id, true) // Xen writes vp_eport now
//	for v := 0; v < n; v++ {
//		remote, _ := pages.Ioreq.VPEport(v)
//		local, _ := ev.BindInterdomain(dom, remote) // local port → vCPU v
//	}
//	ev.BindInterdomain(dom, bufPort)
//	dm.MapIORange(id, xen.PortRange(0x1f0, 8))
//	mem := xen.NewMapCache(p, dom, xen.MapCacheOptions{Dirty: dirtyLog})
//
// then an event loop: ev.Wait → ev.Unmask → pages.Buffered.Drain →
// pages.Ioreq.Accept(v) → handle (IOREQ_TYPE_INVALIDATE: mem.Invalidate) →
// pages.Ioreq.Respond(v, data) → ev.Notify(local). Teardown reverses it:
// unbind, disable, pages.Unmap, DestroyIoreqServer, mem.Close, Close.
//
// Errors wrap the errno of the failing ioctl or hypercall (test with
// errors.Is(err, unix.ESRCH) and so on) or one of this package's sentinel
// errors, and name the domid, port, pfn or ioservid involved. Nothing here
// panics on bad input.
package xen
