// Package xentest has in-memory fakes of the dm/xen interfaces, so the
// device model and its devices can be tested without Xen:
//
//   - DeviceModel: a fake xen.DeviceModel for one domain. It keeps Xen's
//     state (ioreq servers with their pages and ports, ranges, IRQ levels,
//     link routes, modified_memory reports, shutdowns), refuses what Xen
//     refuses with the same errno, records every call, and can be told to
//     fail (Fail). IoreqServer is the Xen side of one server: Post a request
//     for a vCPU, WaitResponse, PostBuffered.
//   - IoreqPage: the Xen side of an ioreq server's two shared pages, in Go
//     memory, usable on its own with xen.NewIoreqPages.
//   - EvtchnHub and Evtchn: fake event channels with the Linux driver's
//     semantics (masked after delivery, latched while masked); hub-owned ports
//     stand for the guest or Xen and are fired with Fire; EvtchnPair is one
//     ready-made connected pair.
//   - GuestRAM: guest memory as a byte slice (a memfd) with holes and
//     paged-out frames; an hw.GuestMemory and an xen.ForeignMapper, so the
//     real xen.MapCache runs over it. Pages that fail to map are PROT_NONE:
//     touching one crashes the test, as it would SIGBUS on Xen.
//   - Paging: a fake xen.MemPaging with the hypervisor's end of the vm_event
//     ring (Fault posts a request, Responses reads what the pager answered).
//
// The xenstore fake in this package (XenstoreServer, files xenstore*.go)
// goes with dm/xen/xenstore.
package xentest
