package xen_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

// TestIoreqServerWithFakes runs the start-up sequence of
// xen-dm-interface.md §4.1 and a small event loop against the fakes, the way
// the DM core uses this package: create, map pages, get the buffered port,
// enable, bind each vCPU's vp_eport, claim ranges, serve a port read, a
// "rep outs" that reads guest memory through the map cache, a buffered
// write, then tear down.
func TestIoreqServerWithFakes(t *testing.T) {
	const dom, vcpus = 5, 2
	hub := xentest.NewEvtchnHub()
	var dm xen.DeviceModel = xentest.NewDeviceModel(dom, vcpus, hub)
	var ev xen.EventChannel = hub.Open(0)
	ram := newRAM(t, 4*xen.PageSize*256)
	mem := xen.NewMapCache(ram, dom, xen.MapCacheOptions{})

	n, err := dm.NrVCPUs()
	if err != nil || n != vcpus {
		t.Fatal(n, err)
	}
	id, err := dm.CreateIoreqServer(xen.BufIoreqAtomic)
	if err != nil {
		t.Fatal(err)
	}
	pages, err := dm.MapIoreqPages(id, true)
	if err != nil {
		t.Fatal(err)
	}
	bufPort, err := dm.BufioreqPort(id)
	if err != nil {
		t.Fatal(err)
	}
	if err := dm.SetIoreqServerState(id, true); err != nil {
		t.Fatal(err)
	}
	portToVCPU := map[xen.Port]int{}
	for v := 0; v < n; v++ {
		remote, err := pages.Ioreq.VPEport(v)
		if err != nil {
			t.Fatal(err)
		}
		local, err := ev.BindInterdomain(dom, remote)
		if err != nil {
			t.Fatal(err)
		}
		portToVCPU[local] = v
	}
	bufLocal, err := ev.BindInterdomain(dom, bufPort)
	if err != nil {
		t.Fatal(err)
	}
	if err := dm.MapIORange(id, xen.PortRange(0x3f8, 8)); err != nil {
		t.Fatal(err)
	}
	if err := dm.MapIORange(id, xen.PortRange(0x3fc, 1)); err == nil {
		t.Fatal("overlapping range accepted")
	}

	// The event loop.
	var outs []byte
	var buffered []xen.Ioreq
	loop := make(chan error, 1)
	go func() {
		ports := make([]xen.Port, 16)
		for {
			k, err := ev.Wait(ports)
			if err != nil {
				loop <- err
				return
			}
			for _, p := range ports[:k] {
				ev.Unmask(p)
				pages.Buffered.Drain(func(r xen.Ioreq) { buffered = append(buffered, r) })
				if p == bufLocal {
					continue
				}
				v := portToVCPU[p]
				req, ok, _ := pages.Ioreq.Accept(v)
				if !ok {
					continue
				}
				var data uint64
				switch {
				case req.IsRead():
					data = 0x60 // LSR: transmitter empty
				case req.DataIsPtr():
					b := make([]byte, req.Count*req.Size)
					if err := mem.ReadGPA(req.Data, b); err != nil {
						loop <- err
						return
					}
					outs = append(outs, b...)
				}
				pages.Ioreq.Respond(v, data)
				ev.Notify(p)
			}
		}
	}()

	srv := dm.(*xentest.DeviceModel).Server(id)
	rd := xen.Ioreq{Addr: 0x3fd, Size: 1, Count: 1, Type: xen.IoreqTypePIO}
	rd.SetDir(xen.IoreqRead)
	if err := srv.Post(1, rd); err != nil {
		t.Fatal(err)
	}
	rsp, err := srv.WaitResponse(1, 5*time.Second)
	if err != nil || rsp.Data != 0x60 {
		t.Fatalf("port read: %v %v", rsp, err)
	}
	copy(ram.Bytes()[0x100ff8:], "hello, world!\n")
	wr := xen.Ioreq{Addr: 0x3f8, Size: 1, Count: 14, Data: 0x100ff8, Type: xen.IoreqTypePIO}
	wr.SetDataIsPtr(true)
	if err := srv.PostBuffered(xen.Ioreq{Addr: 0xa0000, Size: 4, Count: 1, Data: 9, Type: xen.IoreqTypeCopy}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Post(0, wr); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.WaitResponse(0, 5*time.Second); err != nil {
		t.Fatal(err)
	}

	// Tear down.
	ev.Close()
	if err := <-loop; err == nil {
		t.Fatal("loop ended without error")
	}
	if !bytes.Equal(outs, []byte("hello, world!\n")) {
		t.Fatalf("rep outs wrote %q", outs)
	}
	if len(buffered) != 1 || buffered[0].Data != 9 {
		t.Fatalf("buffered %v", buffered)
	}
	if err := dm.UnmapIORange(id, xen.PortRange(0x3f8, 8)); err != nil {
		t.Fatal(err)
	}
	if err := dm.SetIoreqServerState(id, false); err != nil {
		t.Fatal(err)
	}
	pages.Unmap()
	if err := dm.DestroyIoreqServer(id); err != nil {
		t.Fatal(err)
	}
	if err := dm.DestroyIoreqServer(id); err == nil || !errorsContain(err, "ioservid") {
		t.Fatalf("second destroy: %v", err)
	}
	if err := mem.Close(); err != nil {
		t.Fatal(err)
	}
	if ram.Mappings() != 0 || srv.Mapped() != 0 {
		t.Fatalf("leaks: %d foreign mappings, %d page mappings", ram.Mappings(), srv.Mapped())
	}
}
