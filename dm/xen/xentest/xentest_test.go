package xentest

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

func TestDeviceModelFake(t *testing.T) {
	d := NewDeviceModel(3, 2, nil)
	var ids []xen.IoservID
	for i := 0; i < maxServers; i++ {
		id, err := d.CreateIoreqServer(xen.BufIoreqAtomic)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, err := d.CreateIoreqServer(xen.BufIoreqAtomic); !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("ninth server: %v", err)
	}
	for _, id := range ids[1:] {
		if err := d.DestroyIoreqServer(id); err != nil {
			t.Fatal(err)
		}
	}
	id := ids[0]
	if err := d.MapIORange(id, xen.MMIORange(0xf0000000, 0x1000)); err != nil {
		t.Fatal(err)
	}
	if err := d.MapIORange(id, xen.MMIORange(0xf0000800, 0x1000)); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("overlap: %v", err)
	}
	if err := d.UnmapIORange(id, xen.MMIORange(0xf0000000, 0x10)); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("unmap of a sub-range: %v", err)
	}
	if !d.Server(id).Claims(xen.IORangeMemory, 0xf0000ffc, 4) || d.Server(id).Claims(xen.IORangeMemory, 0xf0000ffe, 4) {
		t.Fatal("Claims")
	}
	if err := d.SetIoreqServerState(9, true); !errors.Is(err, unix.ENOENT) || !contains(err.Error(), "ioservid 9") {
		t.Fatalf("unknown server: %v", err)
	}
	if _, err := d.MapIoreqPages(id, true); err != nil {
		t.Fatal(err)
	}
	noBuf, _ := d.CreateIoreqServer(xen.BufIoreqOff)
	if _, err := d.MapIoreqPages(noBuf, true); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("buffered pages of a server without a ring: %v", err)
	}

	var irq hw.Interrupts = d
	irq.SetISAIRQ(14, true)
	irq.SetPCIINTx(3, 0, true)
	irq.SetPCILinkRoute(1, 10)
	if !d.ISAIRQ(14) || !d.PCIINTx(3, 0) || d.LinkRoute(1) != 10 {
		t.Fatal("levels not recorded")
	}
	irq.SetISAIRQ(14, false)
	if d.ISAIRQ(14) || len(d.CallsOf(OpSetISAIRQLevel)) != 2 {
		t.Fatal("lowering not recorded")
	}
	if err := irq.SetISAIRQ(16, true); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("irq 16: %v", err)
	}
	d.Fail(OpSetISAIRQLevel, unix.ESRCH)
	if err := irq.SetISAIRQ(1, true); !errors.Is(err, unix.ESRCH) || !contains(err.Error(), "dom 3") {
		t.Fatalf("injected failure: %v", err)
	}
	d.Fail(OpSetISAIRQLevel, nil)
	if err := irq.SetISAIRQ(1, true); err != nil {
		t.Fatal(err)
	}

	d.ModifiedMemory([]xen.PFNRange{{First: 5, Count: 2}, {First: 7, Count: 1}})
	d.ModifiedMemory([]xen.PFNRange{{First: 1, Count: 1}})
	if m := d.Modified(); len(m) != 2 || m[0] != (xen.PFNRange{First: 1, Count: 1}) || m[1] != (xen.PFNRange{First: 5, Count: 3}) {
		t.Fatalf("modified %v", m)
	}
	if len(d.ModifiedCalls()) != 2 {
		t.Fatal("calls")
	}
	d.RemoteShutdown(xen.ShutdownPoweroff)
	if s := d.Shutdowns(); len(s) != 1 || s[0] != xen.ShutdownPoweroff {
		t.Fatalf("shutdowns %v", s)
	}
}

func TestGuestRAMDirect(t *testing.T) {
	g, err := NewGuestRAM(2, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	var m hw.GuestMemory = g
	if err := m.WriteGPA(0xffe, []byte{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if err := m.ReadGPA(0xffe, b); err != nil || b[3] != 4 {
		t.Fatal(b, err)
	}
	g.AddHole(0x10, 1)
	err = m.ReadGPA(0xfff0, make([]byte, 0x20))
	var pe *xen.PageError
	if !errors.Is(err, hw.ErrBadGPA) || !errors.As(err, &pe) || pe.PFN != 0x10 {
		t.Fatalf("hole: %v", err)
	}
	if err := m.ReadGPA(1<<20, b); !errors.Is(err, hw.ErrBadGPA) {
		t.Fatalf("past the end: %v", err)
	}
	// Foreign mappings of another domain fail with ESRCH naming it.
	if _, err := g.MapForeign(9, []uint64{0}, true); !errors.Is(err, unix.ESRCH) || !contains(err.Error(), "dom 9") {
		t.Fatalf("map of another domain: %v", err)
	}
	fm, err := g.MapForeign(2, []uint64{0x0f, 0x10, 0x11}, false)
	if err != nil {
		t.Fatal(err)
	}
	if fm.Errs[0] != 0 || fm.Errs[1] != unix.EFAULT || fm.Errs[2] != 0 {
		t.Fatalf("errs %v", fm.Errs)
	}
	if _, err := fm.Page(1); !errors.Is(err, hw.ErrBadGPA) || !contains(err.Error(), "pfn 0x10") {
		t.Fatalf("page 1: %v", err)
	}
	if p, err := fm.Page(0); err != nil || len(p) != xen.PageSize {
		t.Fatal(err)
	}
	g.UnmapForeign(fm)
	g.UnmapForeign(fm)
	if g.Mappings() != 0 {
		t.Fatal("mapping leaked")
	}
}

func contains(a, b string) bool {
	for i := 0; i+len(b) <= len(a); i++ {
		if a[i:i+len(b)] == b {
			return true
		}
	}
	return false
}
