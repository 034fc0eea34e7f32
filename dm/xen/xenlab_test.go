//go:build xenlab

// Tests against a real Xen 4.17. Build on the host with
//
//	go test -c -tags xenlab ./dm/xen
//
// and run the binary inside the lab's dom0 with XEN_DM_GO_DOMID set to a
// paused HVM guest. Nothing here can run without Xen.
package xen_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

func labDomid(t *testing.T) xen.Domid {
	t.Helper()
	s := os.Getenv("XEN_DM_GO_DOMID")
	if s == "" {
		t.Fatal("XEN_DM_GO_DOMID is not set: run this test binary in the lab dom0 with the domid of a paused HVM guest")
	}
	v, err := strconv.ParseUint(s, 0, 16)
	if err != nil || v == 0 || v >= uint64(xen.DomidSelf) {
		t.Fatalf("XEN_DM_GO_DOMID=%q is not a guest domid", s)
	}
	return xen.Domid(v)
}

// privcmdMaps counts this process's mappings of /dev/xen/privcmd.
func privcmdMaps(t *testing.T) int {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "privcmd") {
			n++
		}
	}
	return n
}

func openHandles(t *testing.T) (*xen.Privcmd, *xen.Evtchn) {
	t.Helper()
	p, err := xen.OpenPrivcmd()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	ev, err := xen.OpenEvtchn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.Close() })
	return p, ev
}

func TestRealProbe(t *testing.T) {
	r := xen.Probe()
	t.Logf("\n%s", r)
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if !r.Dom0 {
		t.Error("/proc/xen/capabilities does not say control_d")
	}
	if !strings.HasPrefix(r.XenVersion, "4.17") {
		t.Errorf("Xen %s, these tests were written for 4.17", r.XenVersion)
	}
}

func TestRealIoreqServerLifecycle(t *testing.T) {
	dom := labDomid(t)
	mapsBefore := privcmdMaps(t)
	p, ev := openHandles(t)
	dm := xen.NewDeviceModel(p, dom)

	nr, err := dm.NrVCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if nr < 1 || nr > 128 {
		t.Fatalf("nr_vcpus %d", nr)
	}
	id, err := dm.CreateIoreqServer(xen.BufIoreqAtomic)
	if err != nil {
		t.Fatal(err)
	}
	pages, err := dm.MapIoreqPages(id, true)
	if err != nil {
		t.Fatal(err)
	}
	if privcmdMaps(t) <= mapsBefore {
		t.Errorf("MMAP_RESOURCE mapping not visible in /proc/self/maps")
	}
	bufPort, err := dm.BufioreqPort(id)
	if err != nil || bufPort == 0 {
		t.Fatalf("bufioreq port %d: %v", bufPort, err)
	}
	if err := dm.SetIoreqServerState(id, true); err != nil {
		t.Fatal(err)
	}
	var locals []xen.Port
	for v := 0; v < nr; v++ {
		remote, err := pages.Ioreq.VPEport(v)
		if err != nil || remote == 0 {
			t.Fatalf("vcpu %d vp_eport %d: %v", v, remote, err)
		}
		if st, _ := pages.Ioreq.State(v); st != xen.StateIoreqNone {
			t.Errorf("vcpu %d slot in state %d on a paused guest", v, st)
		}
		local, err := ev.BindInterdomain(dom, remote)
		if err != nil {
			t.Fatal(err)
		}
		locals = append(locals, local)
	}
	bufLocal, err := ev.BindInterdomain(dom, bufPort)
	if err != nil {
		t.Fatal(err)
	}
	locals = append(locals, bufLocal)
	if n := pages.Buffered.Pending(); n != 0 {
		t.Errorf("%d buffered slots pending on a fresh server", n)
	}
	t.Logf("dom %d: ioservid %d, %d vCPUs, local ports %v", dom, id, nr, locals)

	// Ranges: map, overlap refused with EEXIST naming the server, unmap.
	for _, r := range []xen.IORange{xen.MMIORange(0xfebf0000, 0x1000), xen.PortRange(0x2000, 8), xen.PCIDevice(0, 0, 31, 7)} {
		if err := dm.MapIORange(id, r); err != nil {
			t.Fatal(err)
		}
		err := dm.MapIORange(id, r)
		if !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), fmt.Sprintf("ioservid %d", id)) {
			t.Errorf("overlapping %s: %v", r, err)
		}
		if err := dm.UnmapIORange(id, r); err != nil {
			t.Fatal(err)
		}
	}

	// Guest memory: a pattern across a page boundary at pfn 0x200, read back
	// through a fresh mapping, then the original restored.
	const gpa = 0x200ff0
	mc := xen.NewMapCache(p, dom, xen.MapCacheOptions{})
	orig := make([]byte, 64)
	if err := mc.ReadGPA(gpa, orig); err != nil {
		t.Fatal(err)
	}
	pattern := bytes.Repeat([]byte{'#'}, 48)
	copy(pattern, fmt.Sprintf("xen-dm-go %d %d", os.Getpid(), time.Now().UnixNano()))
	if err := mc.WriteGPA(gpa, pattern); err != nil {
		t.Fatal(err)
	}
	if kept := mc.Invalidate(); kept != 0 || mc.Buckets() != 0 {
		t.Fatalf("invalidate kept %d buckets", kept)
	}
	mc2 := xen.NewMapCache(p, dom, xen.MapCacheOptions{})
	got := make([]byte, len(pattern))
	if err := mc2.ReadGPA(gpa, got); err != nil || !bytes.Equal(got, pattern) {
		t.Fatalf("read back %q (%v), wrote %q", got, err, pattern)
	}
	pin, err := mc2.Pin(0x2ffff0, 32) // crosses a bucket boundary
	if err != nil {
		t.Fatal(err)
	}
	if segs := pin.Segments(); len(segs) != 2 || len(segs[0]) != 16 {
		t.Errorf("pin segments %d", len(segs))
	}
	pin.Release(0)
	if err := mc2.WriteGPA(gpa, orig); err != nil {
		t.Fatal(err)
	}
	// Far outside guest RAM: a clear error naming the pfn, no SIGBUS.
	err = mc2.ReadGPA(1<<40, make([]byte, 8))
	var pe *xen.PageError
	if !errors.Is(err, hw.ErrBadGPA) || !errors.As(err, &pe) || pe.PFN != 1<<28 {
		t.Errorf("read at 1 TiB: %v", err)
	} else {
		t.Logf("read at 1 TiB: %v", err)
	}
	if err := mc.Close(); err != nil {
		t.Error(err)
	}
	if err := mc2.Close(); err != nil {
		t.Error(err)
	}

	// Tear down and check that nothing is left.
	for _, l := range locals {
		if err := ev.Unbind(l); err != nil {
			t.Error(err)
		}
		if err := ev.Notify(l); !errors.Is(err, unix.ENOTCONN) {
			t.Errorf("notify on unbound port %d: %v", l, err)
		}
	}
	if err := dm.SetIoreqServerState(id, false); err != nil {
		t.Error(err)
	}
	if err := pages.Unmap(); err != nil {
		t.Error(err)
	}
	if err := dm.DestroyIoreqServer(id); err != nil {
		t.Fatal(err)
	}
	err = dm.DestroyIoreqServer(id)
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), fmt.Sprintf("ioservid %d", id)) {
		t.Errorf("second destroy: %v", err)
	}
	// Xen allows 8 servers per domain: 9 create/map/destroy rounds in a row
	// fail if anything leaks.
	for i := 0; i < 9; i++ {
		sid, err := dm.CreateIoreqServer(xen.BufIoreqAtomic)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		pg, err := dm.MapIoreqPages(sid, true)
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if err := pg.Unmap(); err != nil {
			t.Fatal(err)
		}
		if err := dm.DestroyIoreqServer(sid); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
	}
	if after := privcmdMaps(t); after != mapsBefore {
		t.Errorf("%d privcmd mappings left in /proc/self/maps (before: %d)", after, mapsBefore)
	}
}

func TestRealBadDomid(t *testing.T) {
	const bad = xen.Domid(31999)
	p, ev := openHandles(t)
	dm := xen.NewDeviceModel(p, bad)
	name := "dom 31999"
	if _, err := dm.NrVCPUs(); !errors.Is(err, unix.ESRCH) || !strings.Contains(err.Error(), name) {
		t.Errorf("nr_vcpus of a missing domain: %v", err)
	} else {
		t.Logf("nr_vcpus: %v", err)
	}
	if _, err := dm.CreateIoreqServer(xen.BufIoreqAtomic); !errors.Is(err, unix.ESRCH) || !strings.Contains(err.Error(), name) {
		t.Errorf("create: %v", err)
	}
	if err := dm.SetISAIRQ(4, true); !errors.Is(err, unix.ESRCH) || !strings.Contains(err.Error(), name) {
		t.Errorf("set_isa_irq_level: %v", err)
	}
	if _, err := ev.BindInterdomain(bad, 1); err == nil || !strings.Contains(err.Error(), name) {
		t.Errorf("evtchn bind: %v", err)
	} else {
		t.Logf("evtchn bind: %v", err)
	}
	if _, err := p.HVMParam(bad, xen.HVMParamPagingRingPFN); !errors.Is(err, unix.ESRCH) || !strings.Contains(err.Error(), name) {
		t.Errorf("get_param: %v", err)
	}
	// Foreign mapping: the kernel may fail the call or each page; either way
	// the map cache reports a PageError naming the domain and the pfn.
	mc := xen.NewMapCache(p, bad, xen.MapCacheOptions{})
	defer mc.Close()
	err := mc.ReadGPA(0x1000, make([]byte, 4))
	if !errors.Is(err, hw.ErrBadGPA) || !strings.Contains(err.Error(), name) {
		t.Errorf("map cache read: %v", err)
	} else {
		t.Logf("map cache read: %v", err)
	}
	// A server id that does not exist on a real domain: ENOENT naming it.
	dom := labDomid(t)
	err = xen.NewDeviceModel(p, dom).DestroyIoreqServer(7)
	if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "ioservid 7") {
		t.Errorf("destroy of ioservid 7: %v", err)
	}
}

// Hypercalls through the hypercall buffer: version, HVM param, the domctl
// layout (GET_VERSION works even without CONFIG_MEM_PAGING) and a paging op.
func TestRealHypercalls(t *testing.T) {
	dom := labDomid(t)
	p, _ := openHandles(t)
	maj, min, err := p.XenVersion()
	if err != nil {
		t.Fatal(err)
	}
	kind, _ := p.HypercallBufferKind()
	t.Logf("Xen %d.%d, hypercall buffers from %s", maj, min, kind)
	ring, err := p.HVMParam(dom, xen.HVMParamPagingRingPFN)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("dom %d HVM_PARAM_PAGING_RING_PFN = %#x", dom, ring)
	v, err := p.VMEventOp(dom, xen.VMEventOpGetVersion, xen.VMEventModePaging)
	if err != nil || v != xen.VMEventInterfaceVersion {
		t.Fatalf("vm_event GET_VERSION = %d, %v", v, err)
	}
	// Without an enabled ring Xen refuses with ENODEV; a hypervisor without
	// CONFIG_MEM_PAGING with ENOSYS.
	err = xen.NewMemPaging(p, dom).Nominate(0x200)
	if !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOSYS) {
		t.Errorf("nominate without a ring: %v", err)
	}
	t.Logf("nominate without a ring: %v", err)
}

// RESTRICT: DM_OPs for the domain still work, hypercalls and other domains
// are refused.
func TestRealRestrict(t *testing.T) {
	dom := labDomid(t)
	p, _ := openHandles(t)
	if err := p.Restrict(dom); err != nil {
		t.Fatal(err)
	}
	if _, err := xen.NewDeviceModel(p, dom).NrVCPUs(); err != nil {
		t.Errorf("nr_vcpus after restrict: %v", err)
	}
	if _, err := xen.NewDeviceModel(p, 0).NrVCPUs(); !errors.Is(err, unix.EPERM) {
		t.Errorf("DM_OP for dom 0 after restrict: %v", err)
	}
	if _, _, err := p.XenVersion(); !errors.Is(err, unix.EPERM) {
		t.Errorf("hypercall after restrict: %v", err)
	}
}
