package xentest

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// EvtchnHub is a fake of Xen's event channels: ports live in domains and are
// connected in interdomain pairs. Open gives an endpoint (an xen.EventChannel,
// like an open /dev/xen/evtchn in one domain); AllocUnbound creates ports owned
// by the hub itself, standing for the guest or for Xen (vp_eport, the
// buffered-ring port, the paging ring port), which the test fires with Fire
// and whose notifications it observes with WaitNotified.
type EvtchnHub struct {
	mu    sync.Mutex
	ports map[portKey]*hubPort
	next  map[xen.Domid]xen.Port
}

type portKey struct {
	dom  xen.Domid
	port xen.Port
}

type hubPort struct {
	key       portKey
	remoteDom xen.Domid // for an unbound port: who may bind it
	peer      *hubPort  // interdomain peer, nil while unbound
	owner     *Evtchn   // endpoint owning it; nil: owned by the hub/test

	masked, pending bool // endpoint ports: delivered-and-masked, latched event

	notified uint64     // hub ports: notifications received
	cond     *sync.Cond // hub ports: broadcast on notification
}

// NewEvtchnHub returns an empty hub.
func NewEvtchnHub() *EvtchnHub {
	return &EvtchnHub{ports: map[portKey]*hubPort{}, next: map[xen.Domid]xen.Port{}}
}

func (h *EvtchnHub) allocLocked(dom xen.Domid) *hubPort {
	p := h.next[dom]
	if p == 0 {
		p = 1 // port 0 is never valid
	}
	for h.ports[portKey{dom, p}] != nil {
		p++
	}
	h.next[dom] = p + 1
	hp := &hubPort{key: portKey{dom, p}, cond: sync.NewCond(&h.mu)}
	h.ports[hp.key] = hp
	return hp
}

// AllocUnbound creates a hub-owned unbound port in dom that domain remote
// may bind (EVTCHNOP_alloc_unbound, or Xen's alloc_unbound_xen_event_channel).
func (h *EvtchnHub) AllocUnbound(dom, remote xen.Domid) xen.Port {
	h.mu.Lock()
	defer h.mu.Unlock()
	hp := h.allocLocked(dom)
	hp.remoteDom = remote
	return hp.key.port
}

// Free closes a hub-owned port; its peer, if any, becomes unbound.
func (h *EvtchnHub) Free(dom xen.Domid, port xen.Port) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if hp := h.ports[portKey{dom, port}]; hp != nil && hp.owner == nil {
		h.closeLocked(hp)
	}
}

func (h *EvtchnHub) closeLocked(hp *hubPort) {
	if hp.peer != nil {
		hp.peer.peer = nil
		hp.peer.remoteDom = hp.key.dom
	}
	delete(h.ports, hp.key)
	hp.cond.Broadcast()
}

// deliverLocked is an event arriving at hp.
func (h *EvtchnHub) deliverLocked(hp *hubPort) {
	if hp.owner == nil {
		hp.notified++
		hp.cond.Broadcast()
		return
	}
	if hp.masked {
		hp.pending = true
		return
	}
	hp.masked = true
	hp.owner.queue = append(hp.owner.queue, hp.key.port)
	hp.owner.cond.Broadcast()
}

// Fire sends an event from hub-owned port (dom, port) to its peer. It fails
// with ENOTCONN if the port is not bound to anything.
func (h *EvtchnHub) Fire(dom xen.Domid, port xen.Port) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	hp := h.ports[portKey{dom, port}]
	if hp == nil || hp.owner != nil {
		return fmt.Errorf("xentest: fire dom %d port %d: no such hub port: %w", dom, port, unix.EINVAL)
	}
	if hp.peer == nil {
		return fmt.Errorf("xentest: fire dom %d port %d: not bound: %w", dom, port, unix.ENOTCONN)
	}
	h.deliverLocked(hp.peer)
	return nil
}

// Notified is how many notifications hub-owned port (dom, port) received.
func (h *EvtchnHub) Notified(dom xen.Domid, port xen.Port) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if hp := h.ports[portKey{dom, port}]; hp != nil {
		return hp.notified
	}
	return 0
}

// WaitNotified waits until hub-owned port (dom, port) received more than
// after notifications and returns the new count.
func (h *EvtchnHub) WaitNotified(dom xen.Domid, port xen.Port, after uint64, timeout time.Duration) (uint64, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hp := h.ports[portKey{dom, port}]
	if hp == nil {
		return 0, fmt.Errorf("xentest: wait on dom %d port %d: no such port: %w", dom, port, unix.EINVAL)
	}
	deadline := time.Now().Add(timeout)
	t := time.AfterFunc(timeout, func() { h.mu.Lock(); hp.cond.Broadcast(); h.mu.Unlock() })
	defer t.Stop()
	for hp.notified <= after {
		if time.Now().After(deadline) {
			return hp.notified, fmt.Errorf("xentest: dom %d port %d not notified within %v", dom, port, timeout)
		}
		if h.ports[hp.key] != hp {
			return hp.notified, fmt.Errorf("xentest: dom %d port %d closed while waiting: %w", dom, port, unix.ENOTCONN)
		}
		hp.cond.Wait()
	}
	return hp.notified, nil
}

// Bound reports whether port (dom, port) exists and is connected to a peer.
func (h *EvtchnHub) Bound(dom xen.Domid, port xen.Port) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	hp := h.ports[portKey{dom, port}]
	return hp != nil && hp.peer != nil
}

// Open returns a new endpoint in domain dom (the DM's /dev/xen/evtchn is
// normally Open(0)).
func (h *EvtchnHub) Open(dom xen.Domid) *Evtchn {
	e := &Evtchn{hub: h, dom: dom, ports: map[xen.Port]*hubPort{}}
	e.cond = sync.NewCond(&h.mu)
	return e
}

// Evtchn is a fake xen.EventChannel endpoint of an EvtchnHub, with the Linux
// driver's semantics: a delivered port is masked until Unmask, an event on a
// masked port is latched and delivered on Unmask, Unbind/Notify of a port the
// endpoint does not own fail with ENOTCONN, and Close unbinds everything and
// wakes Wait.
type Evtchn struct {
	hub    *EvtchnHub
	dom    xen.Domid
	cond   *sync.Cond // on hub.mu
	queue  []xen.Port
	ports  map[xen.Port]*hubPort
	closed bool

	notifies, unmasks int
}

var _ xen.EventChannel = (*Evtchn)(nil)

// Domid is the domain the endpoint lives in.
func (e *Evtchn) Domid() xen.Domid { return e.dom }

func (e *Evtchn) BindInterdomain(remote xen.Domid, remotePort xen.Port) (xen.Port, error) {
	h := e.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	fail := func(err error) (xen.Port, error) {
		return 0, fmt.Errorf("xen: evtchn bind interdomain to dom %d port %d: %w", remote, remotePort, err)
	}
	if e.closed {
		return fail(xen.ErrClosed)
	}
	rp := h.ports[portKey{remote, remotePort}]
	switch {
	case rp == nil:
		return fail(unix.EINVAL)
	case rp.peer != nil:
		return fail(unix.EINVAL) // not unbound
	case rp.remoteDom != e.dom:
		return fail(unix.EINVAL) // not offered to us (EVTCHNOP_bind_interdomain)
	}
	lp := h.allocLocked(e.dom)
	lp.owner = e
	lp.peer, rp.peer = rp, lp
	e.ports[lp.key.port] = lp
	return lp.key.port, nil
}

func (e *Evtchn) Unbind(local xen.Port) error {
	h := e.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	lp := e.ports[local]
	if lp == nil || e.closed {
		return fmt.Errorf("xen: evtchn unbind port %d: %w", local, unix.ENOTCONN)
	}
	delete(e.ports, local)
	h.closeLocked(lp)
	return nil
}

func (e *Evtchn) Notify(local xen.Port) error {
	h := e.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	lp := e.ports[local]
	if lp == nil || e.closed {
		return fmt.Errorf("xen: evtchn notify port %d: %w", local, unix.ENOTCONN)
	}
	e.notifies++
	if lp.peer != nil {
		h.deliverLocked(lp.peer)
	}
	return nil
}

func (e *Evtchn) Unmask(local xen.Port) error {
	h := e.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if e.closed {
		return fmt.Errorf("xen: evtchn unmask port %d: %w", local, xen.ErrClosed)
	}
	lp := e.ports[local]
	if lp == nil {
		return nil // the driver ignores ports it does not know
	}
	e.unmasks++
	lp.masked = false
	if lp.pending {
		lp.pending = false
		h.deliverLocked(lp)
	}
	return nil
}

func (e *Evtchn) Wait(ports []xen.Port) (int, error) {
	if len(ports) == 0 {
		return 0, fmt.Errorf("xen: evtchn wait with no room for ports: %w", unix.EINVAL)
	}
	h := e.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	for len(e.queue) == 0 && !e.closed {
		e.cond.Wait()
	}
	if e.closed {
		return 0, fmt.Errorf("xen: evtchn wait: %w", xen.ErrClosed)
	}
	n := copy(ports, e.queue)
	e.queue = e.queue[n:]
	return n, nil
}

func (e *Evtchn) Close() error {
	h := e.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	for p, lp := range e.ports {
		delete(e.ports, p)
		h.closeLocked(lp)
	}
	e.cond.Broadcast()
	return nil
}

// BoundPorts is the number of ports the endpoint has bound.
func (e *Evtchn) BoundPorts() int {
	e.hub.mu.Lock()
	defer e.hub.mu.Unlock()
	return len(e.ports)
}

// Notifies and Unmasks count the endpoint's calls.
func (e *Evtchn) Notifies() int {
	e.hub.mu.Lock()
	defer e.hub.mu.Unlock()
	return e.notifies
}

func (e *Evtchn) Unmasks() int {
	e.hub.mu.Lock()
	defer e.hub.mu.Unlock()
	return e.unmasks
}

// EvtchnPair is one connected pair: a hub-owned port in domain Remote (the
// guest or Xen side, which the test fires) bound from a DM endpoint in dom0.
type EvtchnPair struct {
	Hub        *EvtchnHub
	DM         *Evtchn
	Remote     xen.Domid
	RemotePort xen.Port
	LocalPort  xen.Port

	seen uint64
}

// NewEvtchnPair makes a hub, a DM endpoint in dom0 and one bound pair with
// domain remote.
func NewEvtchnPair(remote xen.Domid) (*EvtchnPair, error) {
	h := NewEvtchnHub()
	dm := h.Open(0)
	rp := h.AllocUnbound(remote, 0)
	lp, err := dm.BindInterdomain(remote, rp)
	if err != nil {
		return nil, err
	}
	return &EvtchnPair{Hub: h, DM: dm, Remote: remote, RemotePort: rp, LocalPort: lp}, nil
}

// Fire signals the DM's local port from the remote side.
func (p *EvtchnPair) Fire() error { return p.Hub.Fire(p.Remote, p.RemotePort) }

// WaitNotified waits for a DM notification not seen by an earlier call.
func (p *EvtchnPair) WaitNotified(timeout time.Duration) error {
	n, err := p.Hub.WaitNotified(p.Remote, p.RemotePort, p.seen, timeout)
	p.seen = n
	return err
}
