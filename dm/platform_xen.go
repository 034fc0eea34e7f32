package dm

import (
	"errors"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
)

// XenPlatform opens the real handles: /dev/xen/privcmd (DM_OPs, resource
// and foreign mappings), /dev/xen/evtchn and xenstored.
type XenPlatform struct{}

var _ Platform = XenPlatform{}

func (XenPlatform) OpenHypervisor(dom xen.Domid) (Hypervisor, error) {
	p, err := xen.OpenPrivcmd()
	if err != nil {
		return nil, err
	}
	return &xenHypervisor{p: p, dm: xen.NewDeviceModel(p, dom), dom: dom}, nil
}

func (XenPlatform) OpenEventChannel() (EventChannel, error) {
	e, err := xen.OpenEvtchn()
	if err != nil {
		return nil, err
	}
	return e, nil
}

func (XenPlatform) OpenXenstore() (Xenstore, error) {
	c, err := xenstore.Open()
	if err != nil {
		return nil, err
	}
	return c, nil
}

type xenHypervisor struct {
	p   *xen.Privcmd
	dm  *xen.DevModel
	mc  *xen.MapCache
	dom xen.Domid
}

func (h *xenHypervisor) DeviceModel() DeviceModel { return h.dm }

func (h *xenHypervisor) GuestMemory(dirty hw.DirtyReporter) (GuestMemory, error) {
	if h.mc == nil {
		h.mc = xen.NewMapCache(h.p, h.dom, xen.MapCacheOptions{Dirty: dirty})
	}
	return h.mc, nil
}

func (h *xenHypervisor) Restrict() error { return h.p.Restrict(h.dom) }

func (h *xenHypervisor) Close() error {
	var errs []error
	if h.mc != nil {
		errs = append(errs, h.mc.Close())
	}
	errs = append(errs, h.p.Close())
	return errors.Join(errs...)
}
