package xentest

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// Operation names recorded by DeviceModel (the XEN_DMOP_* names, plus
// "map_resource" for MapIoreqPages), also used with Fail.
const (
	OpNrVCPUs             = "nr_vcpus"
	OpCreateIoreqServer   = "create_ioreq_server"
	OpGetIoreqServerInfo  = "get_ioreq_server_info"
	OpMapResource         = "map_resource"
	OpSetIoreqServerState = "set_ioreq_server_state"
	OpMapIORange          = "map_io_range_to_ioreq_server"
	OpUnmapIORange        = "unmap_io_range_from_ioreq_server"
	OpDestroyIoreqServer  = "destroy_ioreq_server"
	OpSetISAIRQLevel      = "set_isa_irq_level"
	OpSetPCIIntxLevel     = "set_pci_intx_level"
	OpSetPCILinkRoute     = "set_pci_link_route"
	OpModifiedMemory      = "modified_memory"
	OpRemoteShutdown      = "remote_shutdown"
)

// Call is one recorded DeviceModel call. Args by Op:
// create_ioreq_server: mode; get_ioreq_server_info, map_resource,
// destroy_ioreq_server: id (map_resource: id, buffered); set_ioreq_server_state:
// id, enabled; map/unmap range: id, type, start, end; set_isa_irq_level: irq,
// level; set_pci_intx_level: device, pin, level; set_pci_link_route: link,
// irq; modified_memory: number of ranges; remote_shutdown: reason.
type Call struct {
	Op   string
	Args []uint64
	Err  error
}

func (c Call) String() string { return fmt.Sprintf("%s%v", c.Op, c.Args) }

// maxServers and maxRanges are Xen's MAX_NR_IOREQ_SERVERS and MAX_NR_IO_RANGES.
const (
	maxServers = 8
	maxRanges  = 256
)

// DeviceModel is a fake xen.DeviceModel for one domain. It keeps the state
// Xen would (ioreq servers with their pages, ports and ranges; IRQ levels;
// link routes) and refuses what Xen refuses with the same errno (ENOENT for
// an unknown server, EEXIST for an overlapping range, ENOSPC for a ninth
// server, EINVAL for bad arguments). Every call is recorded; Fail makes an
// operation fail. With a hub, each server's vp_eports and buffered port are
// hub-owned ports in the guest domain, so a DM endpoint from hub.Open(0) can
// bind them and IoreqServer.Post fires them.
type DeviceModel struct {
	dom     xen.Domid
	nrVCPUs int
	hub     *EvtchnHub

	mu        sync.Mutex
	servers   map[xen.IoservID]*IoreqServer
	calls     []Call
	fail      map[string]error
	isa       [16]bool
	intx      map[[2]uint8]bool
	links     [4]uint8
	modified  [][]xen.PFNRange
	shutdowns []xen.ShutdownReason
	nextPort  xen.Port
}

var _ xen.DeviceModel = (*DeviceModel)(nil)

// NewDeviceModel returns a fake for domain dom with nrVCPUs vCPUs. hub may be
// nil; then ports are plain numbers nobody can bind.
func NewDeviceModel(dom xen.Domid, nrVCPUs int, hub *EvtchnHub) *DeviceModel {
	return &DeviceModel{dom: dom, nrVCPUs: nrVCPUs, hub: hub,
		servers: map[xen.IoservID]*IoreqServer{}, fail: map[string]error{}, intx: map[[2]uint8]bool{}, nextPort: 1}
}

// Fail makes every later call of op fail with err (an errno such as
// unix.ESRCH, as Xen would return it); nil clears it.
func (d *DeviceModel) Fail(op string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		delete(d.fail, op)
	} else {
		d.fail[op] = err
	}
}

// record logs a call and returns the injected failure, if any, wrapped like
// the real DevModel's errors.
func (d *DeviceModel) recordLocked(op string, args ...uint64) error {
	err := d.fail[op]
	if err != nil {
		err = fmt.Errorf("xen: DM_OP %s dom %d: %w", op, d.dom, err)
	}
	d.calls = append(d.calls, Call{Op: op, Args: args, Err: err})
	return err
}

func (d *DeviceModel) errLocked(op string, err error, detail string) error {
	err = fmt.Errorf("xen: DM_OP %s dom %d: %w (%s)", op, d.dom, err, detail)
	d.calls[len(d.calls)-1].Err = err
	return err
}

// Calls returns the recorded calls, oldest first.
func (d *DeviceModel) Calls() []Call {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.calls)
}

// CallsOf returns the recorded calls of one op.
func (d *DeviceModel) CallsOf(op string) []Call {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []Call
	for _, c := range d.calls {
		if c.Op == op {
			out = append(out, c)
		}
	}
	return out
}

func (d *DeviceModel) Domid() xen.Domid { return d.dom }

func (d *DeviceModel) NrVCPUs() (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpNrVCPUs); err != nil {
		return 0, err
	}
	return d.nrVCPUs, nil
}

func (d *DeviceModel) allocPortLocked() xen.Port {
	if d.hub != nil {
		return d.hub.AllocUnbound(d.dom, 0)
	}
	p := d.nextPort
	d.nextPort++
	return p
}

func (d *DeviceModel) CreateIoreqServer(mode xen.BufIoreqMode) (xen.IoservID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpCreateIoreqServer, uint64(mode)); err != nil {
		return 0, err
	}
	if mode > xen.BufIoreqAtomic {
		return 0, d.errLocked(OpCreateIoreqServer, unix.EINVAL, fmt.Sprintf("bufioreq mode %d", mode))
	}
	id := xen.IoservID(0)
	for d.servers[id] != nil {
		id++
	}
	if id >= maxServers {
		return 0, d.errLocked(OpCreateIoreqServer, unix.ENOSPC, fmt.Sprintf("bufioreq mode %d", mode))
	}
	s := &IoreqServer{ID: id, Mode: mode, Page: NewIoreqPage(), dm: d, ranges: map[xen.IORangeType][]xen.IORange{}}
	for range d.nrVCPUs {
		s.vpPorts = append(s.vpPorts, d.allocPortLocked())
	}
	if mode != xen.BufIoreqOff {
		s.bufPort = d.allocPortLocked()
	}
	d.servers[id] = s
	return id, nil
}

func (d *DeviceModel) serverLocked(op string, id xen.IoservID) (*IoreqServer, error) {
	s := d.servers[id]
	if s == nil {
		return nil, d.errLocked(op, unix.ENOENT, fmt.Sprintf("ioservid %d", id))
	}
	return s, nil
}

func (d *DeviceModel) BufioreqPort(id xen.IoservID) (xen.Port, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpGetIoreqServerInfo, uint64(id)); err != nil {
		return 0, err
	}
	s, err := d.serverLocked(OpGetIoreqServerInfo, id)
	if err != nil {
		return 0, err
	}
	return s.bufPort, nil
}

func (d *DeviceModel) MapIoreqPages(id xen.IoservID, buffered bool) (*xen.IoreqPages, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpMapResource, uint64(id), uint64(b2u(buffered))); err != nil {
		return nil, err
	}
	s, err := d.serverLocked(OpMapResource, id)
	if err != nil {
		return nil, err
	}
	var buf []byte
	if buffered {
		if s.Mode == xen.BufIoreqOff {
			return nil, d.errLocked(OpMapResource, unix.ENOENT, fmt.Sprintf("ioservid %d has no buffered ring", id))
		}
		buf = s.Page.Buf
	}
	s.mapped++
	return xen.NewIoreqPages(s.Page.Sync, buf, func() error {
		d.mu.Lock()
		defer d.mu.Unlock()
		s.mapped--
		return nil
	})
}

func (d *DeviceModel) SetIoreqServerState(id xen.IoservID, enabled bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpSetIoreqServerState, uint64(id), uint64(b2u(enabled))); err != nil {
		return err
	}
	s, err := d.serverLocked(OpSetIoreqServerState, id)
	if err != nil {
		return err
	}
	if enabled && !s.enabled {
		for v, p := range s.vpPorts {
			s.Page.SetVPEport(v, p)
		}
	}
	s.enabled = enabled
	return nil
}

func (d *DeviceModel) rangeCheckLocked(op string, id xen.IoservID, r xen.IORange) (*IoreqServer, error) {
	s, err := d.serverLocked(op, id)
	if err != nil {
		return nil, err
	}
	if r.Type > xen.IORangePCI || r.Start > r.End {
		return nil, d.errLocked(op, unix.EINVAL, fmt.Sprintf("ioservid %d %s", id, r))
	}
	return s, nil
}

func (d *DeviceModel) MapIORange(id xen.IoservID, r xen.IORange) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpMapIORange, uint64(id), uint64(r.Type), r.Start, r.End); err != nil {
		return err
	}
	s, err := d.rangeCheckLocked(OpMapIORange, id, r)
	if err != nil {
		return err
	}
	for _, o := range s.ranges[r.Type] {
		if r.Start <= o.End && o.Start <= r.End {
			return d.errLocked(OpMapIORange, unix.EEXIST, fmt.Sprintf("ioservid %d %s overlaps %s", id, r, o))
		}
	}
	if len(s.ranges[r.Type]) >= maxRanges {
		return d.errLocked(OpMapIORange, unix.ENOSPC, fmt.Sprintf("ioservid %d %s", id, r))
	}
	s.ranges[r.Type] = append(s.ranges[r.Type], r)
	return nil
}

func (d *DeviceModel) UnmapIORange(id xen.IoservID, r xen.IORange) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpUnmapIORange, uint64(id), uint64(r.Type), r.Start, r.End); err != nil {
		return err
	}
	s, err := d.rangeCheckLocked(OpUnmapIORange, id, r)
	if err != nil {
		return err
	}
	rs := s.ranges[r.Type]
	for i, o := range rs {
		if o == r {
			s.ranges[r.Type] = slices.Delete(rs, i, i+1)
			return nil
		}
	}
	return d.errLocked(OpUnmapIORange, unix.ENOENT, fmt.Sprintf("ioservid %d %s not mapped", id, r))
}

func (d *DeviceModel) DestroyIoreqServer(id xen.IoservID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpDestroyIoreqServer, uint64(id)); err != nil {
		return err
	}
	s, err := d.serverLocked(OpDestroyIoreqServer, id)
	if err != nil {
		return err
	}
	if d.hub != nil {
		for _, p := range s.vpPorts {
			d.hub.Free(d.dom, p)
		}
		if s.bufPort != 0 {
			d.hub.Free(d.dom, s.bufPort)
		}
	}
	s.enabled, s.destroyed = false, true
	delete(d.servers, id)
	return nil
}

func b2u(v bool) uint8 {
	if v {
		return 1
	}
	return 0
}

func (d *DeviceModel) SetISAIRQ(irq uint8, level bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpSetISAIRQLevel, uint64(irq), uint64(b2u(level))); err != nil {
		return err
	}
	if irq > 15 {
		return d.errLocked(OpSetISAIRQLevel, unix.EINVAL, fmt.Sprintf("isa irq %d", irq))
	}
	d.isa[irq] = level
	return nil
}

func (d *DeviceModel) SetPCIINTx(dev, pin uint8, level bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpSetPCIIntxLevel, uint64(dev), uint64(pin), uint64(b2u(level))); err != nil {
		return err
	}
	if dev > 31 || pin > 3 {
		return d.errLocked(OpSetPCIIntxLevel, unix.EINVAL, fmt.Sprintf("device %d pin %d", dev, pin))
	}
	d.intx[[2]uint8{dev, pin}] = level
	return nil
}

func (d *DeviceModel) SetPCILinkRoute(link, irq uint8) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpSetPCILinkRoute, uint64(link), uint64(irq)); err != nil {
		return err
	}
	if link > 3 || irq > 15 {
		return d.errLocked(OpSetPCILinkRoute, unix.EINVAL, fmt.Sprintf("link %d irq %d", link, irq))
	}
	d.links[link] = irq
	return nil
}

func (d *DeviceModel) ModifiedMemory(ranges []xen.PFNRange) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpModifiedMemory, uint64(len(ranges))); err != nil {
		return err
	}
	d.modified = append(d.modified, slices.Clone(ranges))
	return nil
}

func (d *DeviceModel) RemoteShutdown(reason xen.ShutdownReason) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.recordLocked(OpRemoteShutdown, uint64(reason)); err != nil {
		return err
	}
	d.shutdowns = append(d.shutdowns, reason)
	return nil
}

// ISAIRQ is the level of ISA IRQ irq.
func (d *DeviceModel) ISAIRQ(irq uint8) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return irq < 16 && d.isa[irq]
}

// PCIINTx is the level of INTx pin of bus-0 device dev.
func (d *DeviceModel) PCIINTx(dev, pin uint8) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.intx[[2]uint8{dev, pin}]
}

// LinkRoute is the ISA IRQ PCI link link is routed to (0: disabled).
func (d *DeviceModel) LinkRoute(link uint8) uint8 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if link > 3 {
		return 0
	}
	return d.links[link]
}

// ModifiedCalls returns the ranges of each ModifiedMemory call, as passed.
func (d *DeviceModel) ModifiedCalls() [][]xen.PFNRange {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.modified)
}

// Modified returns every frame reported so far, coalesced.
func (d *DeviceModel) Modified() []xen.PFNRange {
	d.mu.Lock()
	defer d.mu.Unlock()
	var all []xen.PFNRange
	for _, c := range d.modified {
		all = append(all, c...)
	}
	return xen.CoalescePFNRanges(all)
}

// Shutdowns returns the RemoteShutdown reasons, in order.
func (d *DeviceModel) Shutdowns() []xen.ShutdownReason {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.shutdowns)
}

// Server returns ioreq server id, or nil.
func (d *DeviceModel) Server(id xen.IoservID) *IoreqServer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.servers[id]
}

// Servers is the number of live ioreq servers.
func (d *DeviceModel) Servers() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.servers)
}

// IoreqServer is the Xen side of one fake ioreq server: the test posts
// requests through it as a guest vCPU access would.
type IoreqServer struct {
	ID   xen.IoservID
	Mode xen.BufIoreqMode
	Page *IoreqPage

	dm        *DeviceModel
	enabled   bool // dm.mu
	destroyed bool // dm.mu
	mapped    int  // dm.mu: MapIoreqPages not yet unmapped
	ranges    map[xen.IORangeType][]xen.IORange
	vpPorts   []xen.Port
	bufPort   xen.Port
}

// Enabled reports the server state.
func (s *IoreqServer) Enabled() bool {
	s.dm.mu.Lock()
	defer s.dm.mu.Unlock()
	return s.enabled
}

// Mapped is how many MapIoreqPages results are not yet unmapped.
func (s *IoreqServer) Mapped() int {
	s.dm.mu.Lock()
	defer s.dm.mu.Unlock()
	return s.mapped
}

// Ranges returns the claimed ranges of one type.
func (s *IoreqServer) Ranges(t xen.IORangeType) []xen.IORange {
	s.dm.mu.Lock()
	defer s.dm.mu.Unlock()
	return slices.Clone(s.ranges[t])
}

// Claims reports whether the server would receive an access of size bytes at
// addr (the whole access must lie in one range, as in ioreq_server_select).
func (s *IoreqServer) Claims(t xen.IORangeType, addr, size uint64) bool {
	s.dm.mu.Lock()
	defer s.dm.mu.Unlock()
	for _, r := range s.ranges[t] {
		if addr >= r.Start && addr+size-1 <= r.End {
			return true
		}
	}
	return false
}

// VPPort is vcpu's guest-side port (vp_eport); BufPort the buffered ring's.
func (s *IoreqServer) VPPort(vcpu int) xen.Port { return s.vpPorts[vcpu] }
func (s *IoreqServer) BufPort() xen.Port        { return s.bufPort }

// Post sends a synchronous request for vcpu, as Xen does for a trapped
// access: the server must be enabled, the slot NONE; then the vCPU's port
// fires (with a hub).
func (s *IoreqServer) Post(vcpu int, req xen.Ioreq) error {
	s.dm.mu.Lock()
	ok := s.enabled
	s.dm.mu.Unlock()
	if !ok {
		return fmt.Errorf("xentest: ioservid %d is not enabled", s.ID)
	}
	if vcpu < 0 || vcpu >= len(s.vpPorts) {
		return fmt.Errorf("xentest: ioservid %d has no vcpu %d", s.ID, vcpu)
	}
	req.VPEport = uint32(s.vpPorts[vcpu])
	if err := s.Page.Post(vcpu, req); err != nil {
		return err
	}
	if s.dm.hub != nil {
		return s.dm.hub.Fire(s.dm.dom, s.vpPorts[vcpu])
	}
	return nil
}

// WaitResponse waits for the DM's answer to vcpu's request (see
// IoreqPage.WaitResponse).
func (s *IoreqServer) WaitResponse(vcpu int, timeout time.Duration) (xen.Ioreq, error) {
	return s.Page.WaitResponse(vcpu, timeout)
}

// PostBuffered queues a buffered write and fires the buffered port.
func (s *IoreqServer) PostBuffered(req xen.Ioreq) error {
	if s.Mode == xen.BufIoreqOff {
		return fmt.Errorf("xentest: ioservid %d has no buffered ring", s.ID)
	}
	if err := s.Page.PostBuffered(req); err != nil {
		return err
	}
	if s.dm.hub != nil {
		return s.dm.hub.Fire(s.dm.dom, s.bufPort)
	}
	return nil
}
