// Package dm is the device model core of xen-dm-go: what qemu-xen's
// xen-hvm.c, xen-mapcache.c and vl.c do for a Xen 4.17 HVM guest
// (shared/reference/xen-dm-interface.md §1–§5).
//
// # Start-up
//
// Run (or New + Start) performs named, timed steps; each one that
// completes registers its undo, and Teardown runs those in reverse, so
// teardown unwinds exactly what started (on SIGHUP — libxl's destroy —,
// SIGTERM, SIGINT, a start-up error or a fatal runtime error):
//
//	open privcmd           Platform.OpenHypervisor: DM_OPs, MMAP_RESOURCE, foreign maps
//	open evtchn            /dev/xen/evtchn
//	open xenstore          xenstored socket (or /dev/xen/xenbus)
//	nr_vcpus               XEN_DMOP_nr_vcpus (authoritative; -smp is informational)
//	create ioreq server    XEN_DMOP_create_ioreq_server, BUFIOREQ_ATOMIC     [undo: destroy]
//	map ioreq pages        MMAP_RESOURCE frames 0 (buffered) and 1 (ioreq)   [undo: unmap]
//	get bufioreq port      XEN_DMOP_get_ioreq_server_info, XEN_DMOP_no_gfns
//	open guest memory      1 MiB-bucket map cache; its writes feed the dirty log [undo: flush log]
//	build machine          devices, PCI bus 0, fixed ports (→ map_io_range)  [undo: close backends]
//	register PCI devices   one XEN_DMOP_PCI_SBDF range per function on the bus
//	load incoming device state   -incoming fd:N only; needs Options.DeviceState; fills the
//	                       pages the transport elided (DevState.PageRefs: EagerPageRefs)
//	enable ioreq server    set_ioreq_server_state(1): Xen writes vp_eport    [undo: disable]
//	bind event channels    each vCPU's vp_eport, then the buffered port      [undo: unbind]
//	start ioreq loop                                                          [undo: stop]
//	start QMP              every -mon chardev (path, or inherited fd=N)      [undo: close, unlink]
//	drop privileges        -xen-domid-restrict, -chroot, -runas (when given)
//	write xenstore state   "running" at /local/domain/0/device-model/<domid>/state,
//	                       unless -S (then at the first QMP cont)
//
// # Event loop
//
// One goroutine waits on the event channel. For a batch of fired ports it
// unmasks them, drains the buffered ring first (keeping the guest's order),
// then for each vCPU port takes the READY request (ignoring any other state),
// performs it — PIO, COPY (MMIO) and PCI_CONFIG with count, df and
// data_is_ptr; INVALIDATE flushes the map cache; TIMEOFFSET is logged — and
// answers data + IORESP_READY + notify. Malformed requests (bad size, count
// over MaxReps, pointers into holes, unknown types) are logged at a bounded
// rate and completed with all-ones reads and dropped writes. Device handlers
// run on this goroutine; devices that do long work (IDE DMA) run it on their
// own goroutines. A device's hw.Shutdown call issues XEN_DMOP_remote_shutdown
// from inside the handler, so before the ioreq that caused it completes.
//
// # I/O space
//
// The ioSpace is the hw.IOSpace devices claim ports and MMIO in; claims are
// non-overlapping and each is forwarded to Xen as an inclusive range of the
// ioreq server, so exactly the claimed accesses reach us. Accesses that no
// single claim covers are split into bytes.
//
// # Run state
//
// QMP stop disables the ioreq server (Xen's null handler then answers the
// guest), drains and flushes device I/O and flushes the dirty log; cont
// enables it again (and succeeds when already running). QMP
// xen-save-devices-state drains and flushes again, then writes the
// device state (DevState, dm/devstate; docs/device-state.md) into the
// truncated add-fd file and fsyncs it; -incoming fd:N loads one before the
// ioreq server is enabled, and start-up fails on a state it cannot load. While QMP
// xen-set-global-dirty-log is on, every guest page the device model writes
// (DMA, pointer ioreqs) is reported with XEN_DMOP_modified_memory in
// batches.
//
// # Testing
//
// The core reaches Xen only through the interfaces in iface.go, which
// dm/xen's types and the dm/xen/xentest fakes satisfy; the tests run the
// whole start-up, loop, QMP and teardown without Xen.
package dm
