package xen

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// recorder is a privcmdOps that checks buffers like the real DMOp and records
// every call, so the real DevModel encoding is tested without Xen.
type recorder struct {
	calls [][][]byte
	fail  error
	reply func(bufs [][]byte) // fill output fields
	maps  int
}

func (r *recorder) DMOp(dom Domid, bufs ...[]byte) error {
	if _, err := checkDMOpBufs(dom, bufs); err != nil {
		return err
	}
	cp := make([][]byte, len(bufs))
	for i, b := range bufs {
		cp[i] = append([]byte(nil), b...)
	}
	r.calls = append(r.calls, cp)
	if r.reply != nil {
		r.reply(bufs)
	}
	if r.fail != nil {
		return errorfDMOp(dom, bufs, r.fail)
	}
	return nil
}

func errorfDMOp(dom Domid, bufs [][]byte, err error) error {
	return &dmopTestErr{name: DMOpName(binary.LittleEndian.Uint32(bufs[0])), dom: dom, err: err}
}

type dmopTestErr struct {
	name string
	dom  Domid
	err  error
}

func (e *dmopTestErr) Error() string {
	return "xen: DM_OP " + e.name + " dom " + itoa(uint64(e.dom)) + ": " + e.err.Error()
}
func (e *dmopTestErr) Unwrap() error { return e.err }

func (r *recorder) MapResource(dom Domid, typ, id, idx uint32, num int) ([]byte, error) {
	r.maps++
	return make([]byte, num*PageSize), nil
}

func (r *recorder) Unmap([]byte) error { r.maps--; return nil }

func op(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

func TestDMOpBufferChecks(t *testing.T) {
	hdr := func(op uint32, n int) []byte {
		b := make([]byte, n)
		binary.LittleEndian.PutUint32(b, op)
		return b
	}
	cases := []struct {
		name string
		bufs [][]byte
		want string
	}{
		{"none", nil, "no buffers"},
		{"three", [][]byte{hdr(dmopNrVCPUs, 32), {1}, {2}}, "3 buffers"},
		{"huge", [][]byte{hdr(dmopNrVCPUs, 32), make([]byte, 4097)}, "buffer 1 is 4097 bytes"},
		{"tiny", [][]byte{{1, 0}}, "shorter than the xen_dm_op header"},
		{"short create", [][]byte{hdr(dmopCreateIoreqServer, 13)}, "need at least 14 for xen_dm_op_create_ioreq_server"},
		{"short range", [][]byte{hdr(dmopMapIORangeToIoreqServer, 31)}, "need at least 32"},
		{"pad", [][]byte{append(hdr(dmopNrVCPUs, 4), 1, 0, 0, 0, 0, 0, 0, 0)}, "pad is 0x1"},
		{"modified one buffer", [][]byte{hdr(dmopModifiedMemory, 32)}, "exactly 2 buffers"},
		{"modified short extents", func() [][]byte {
			h := hdr(dmopModifiedMemory, 32)
			binary.LittleEndian.PutUint32(h[8:], 3)
			return [][]byte{h, make([]byte, 47)}
		}(), "3 extents need 48"},
		{"vram bitmap", func() [][]byte {
			h := hdr(dmopTrackDirtyVRAM, 32)
			binary.LittleEndian.PutUint32(h[8:], 9)
			return [][]byte{h, make([]byte, 1)}
		}(), "needs 2"},
	}
	for _, c := range cases {
		_, err := checkDMOpBufs(7, c.bufs)
		if !errors.Is(err, ErrDMOpBuffer) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "dom 7") {
			t.Errorf("%s: got %v, want ErrDMOpBuffer naming dom 7 and %q", c.name, err, c.want)
		}
	}
	if _, err := checkDMOpBufs(7, [][]byte{hdr(dmopNrVCPUs, 12)}); err != nil {
		t.Errorf("exact-size nr_vcpus buffer refused: %v", err)
	}
	// Unknown ops are passed through (Xen answers EOPNOTSUPP).
	if _, err := checkDMOpBufs(7, [][]byte{hdr(99, 8)}); err != nil {
		t.Errorf("unknown op refused locally: %v", err)
	}
}

func TestDMOpOnClosedPrivcmd(t *testing.T) {
	p := &Privcmd{fd: -1}
	b := make([]byte, 32)
	binary.LittleEndian.PutUint32(b, dmopNrVCPUs)
	err := p.DMOp(5, b)
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "nr_vcpus dom 5") {
		t.Fatalf("DMOp on a closed handle: %v", err)
	}
	if _, err := p.MapForeign(5, []uint64{0x200}, true); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "dom 5 gfn 0x200") {
		t.Fatalf("MapForeign on a closed handle: %v", err)
	}
	if _, err := p.HVMParam(5, HVMParamPagingRingPFN); !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "dom 5") {
		t.Fatalf("HVMParam on a closed handle: %v", err)
	}
	if err := p.PagingOp(5, PagingOpPrep, 0x42, make([]byte, 10)); !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "gfn 0x42") {
		t.Fatalf("prep with a short buffer: %v", err)
	}
}

func TestDevModelEncoding(t *testing.T) {
	r := &recorder{}
	d := &DevModel{ops: r, dom: 9}

	r.reply = func(bufs [][]byte) {
		switch op(bufs[0]) {
		case dmopCreateIoreqServer:
			binary.LittleEndian.PutUint16(bufs[0][8+4:], 3) // id
		case dmopGetIoreqServerInfo:
			binary.LittleEndian.PutUint32(bufs[0][8+4:], 55) // bufioreq_port
		case dmopNrVCPUs:
			binary.LittleEndian.PutUint32(bufs[0][8:], 4)
		}
	}
	id, err := d.CreateIoreqServer(BufIoreqAtomic)
	if err != nil || id != 3 {
		t.Fatalf("create: %d %v", id, err)
	}
	if c := r.calls[0][0]; op(c) != dmopCreateIoreqServer || c[8] != 2 || len(c) != 32 {
		t.Errorf("create buffer %x", c)
	}
	if p, err := d.BufioreqPort(3); err != nil || p != 55 {
		t.Fatalf("info: %d %v", p, err)
	}
	if c := r.calls[1][0]; binary.LittleEndian.Uint16(c[8:]) != 3 || binary.LittleEndian.Uint16(c[10:]) != dmopNoGFNs {
		t.Errorf("info buffer %x", c)
	}
	if n, err := d.NrVCPUs(); err != nil || n != 4 {
		t.Fatalf("nr_vcpus: %d %v", n, err)
	}
	if err := d.MapIORange(3, PortRange(0x1f0, 8)); err != nil {
		t.Fatal(err)
	}
	c := r.calls[3][0]
	if op(c) != dmopMapIORangeToIoreqServer || binary.LittleEndian.Uint16(c[8:]) != 3 || binary.LittleEndian.Uint32(c[12:]) != 0 ||
		binary.LittleEndian.Uint64(c[16:]) != 0x1f0 || binary.LittleEndian.Uint64(c[24:]) != 0x1f7 {
		t.Errorf("map range buffer %x", c)
	}
	if err := d.MapIORange(3, PCIDevice(0, 0, 1, 1)); err != nil {
		t.Fatal(err)
	}
	if c := r.calls[4][0]; binary.LittleEndian.Uint32(c[12:]) != 2 || binary.LittleEndian.Uint64(c[16:]) != 0x9 {
		t.Errorf("pci range buffer %x", c)
	}
	if err := d.SetIoreqServerState(3, true); err != nil {
		t.Fatal(err)
	}
	if c := r.calls[5][0]; c[10] != 1 {
		t.Errorf("state buffer %x", c)
	}
	if err := d.SetISAIRQ(14, true); err != nil {
		t.Fatal(err)
	}
	if c := r.calls[6][0]; op(c) != dmopSetISAIRQLevel || c[8] != 14 || c[9] != 1 {
		t.Errorf("isa irq buffer %x", c)
	}
	if err := d.SetPCIINTx(3, 1, true); err != nil {
		t.Fatal(err)
	}
	if c := r.calls[7][0]; op(c) != dmopSetPCIIntxLevel || c[8] != 0 || c[10] != 0 || c[11] != 3 || c[12] != 1 || c[13] != 1 {
		t.Errorf("intx buffer %x", c)
	}
	if err := d.SetPCILinkRoute(2, 11); err != nil {
		t.Fatal(err)
	}
	if c := r.calls[8][0]; op(c) != dmopSetPCILinkRoute || c[8] != 2 || c[9] != 11 {
		t.Errorf("link buffer %x", c)
	}
	if err := d.RemoteShutdown(ShutdownReboot); err != nil {
		t.Fatal(err)
	}
	if c := r.calls[9][0]; op(c) != dmopRemoteShutdown || binary.LittleEndian.Uint32(c[8:]) != 1 {
		t.Errorf("shutdown buffer %x", c)
	}
	if err := d.DestroyIoreqServer(3); err != nil {
		t.Fatal(err)
	}
	pages, err := d.MapIoreqPages(3, true)
	if err != nil || pages.Buffered == nil || pages.Ioreq.Slots() != 128 || r.maps != 1 {
		t.Fatalf("map pages: %v %v", pages, err)
	}
	pages.Unmap()
	pages.Unmap()
	if r.maps != 0 {
		t.Errorf("unmap count %d", r.maps)
	}
}

func TestDevModelBadInput(t *testing.T) {
	r := &recorder{}
	d := &DevModel{ops: r, dom: 9}
	for _, err := range []error{
		d.SetISAIRQ(16, true),
		d.SetPCIINTx(32, 0, true),
		d.SetPCIINTx(1, 4, true),
		d.SetPCILinkRoute(4, 5),
		d.MapIORange(1, IORange{Type: IORangePort, Start: 10, End: 9}),
		d.MapIORange(1, IORange{Type: 7, Start: 1, End: 2}),
		d.UnmapIORange(1, IORange{Type: IORangePort, Start: 0, End: 0x10000}),
	} {
		if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "dom 9") {
			t.Errorf("want EINVAL naming dom 9, got %v", err)
		}
	}
	if len(r.calls) != 0 {
		t.Errorf("bad input reached Xen: %d calls", len(r.calls))
	}
	// An errno from Xen is wrapped with the op, domid and ioservid.
	r.fail = unix.ENOENT
	err := d.DestroyIoreqServer(6)
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "destroy_ioreq_server dom 9") || !strings.Contains(err.Error(), "ioservid 6") {
		t.Errorf("destroy error: %v", err)
	}
	r.fail = unix.ESRCH
	if _, err := d.NrVCPUs(); !errors.Is(err, unix.ESRCH) || !strings.Contains(err.Error(), "dom 9") {
		t.Errorf("nr_vcpus error: %v", err)
	}
	err = d.MapIORange(2, MMIORange(0xfebf0000, 0x1000))
	if !strings.Contains(err.Error(), "ioservid 2 mmio 0xfebf0000-0xfebf0fff") {
		t.Errorf("range error: %v", err)
	}
}

func TestCoalescePFNRanges(t *testing.T) {
	got := CoalescePFNRanges([]PFNRange{{10, 2}, {0, 0}, {5, 3}, {12, 1}, {6, 1}, {20, 5}, {22, 10}, {100, 1}})
	want := []PFNRange{{5, 3}, {10, 3}, {20, 12}, {100, 1}}
	if len(got) != len(want) {
		t.Fatalf("got %v want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v want %v", got, want)
		}
	}
	big := CoalescePFNRanges([]PFNRange{{0, 1<<32 + 5}})
	if len(big) != 2 || big[0].Count != 1<<32-1 || big[1].First != 1<<32-1 || big[1].Count != 6 {
		t.Fatalf("split of a >u32 range: %v", big)
	}
}

func TestModifiedMemoryBatching(t *testing.T) {
	r := &recorder{}
	d := &DevModel{ops: r, dom: 3}
	// 600 separate pages (every other pfn) plus duplicates and adjacent ones
	// that coalesce away.
	var rs []PFNRange
	for i := uint64(0); i < 600; i++ {
		rs = append(rs, PFNRange{First: 1000 + 2*i, Count: 1})
	}
	rs = append(rs, PFNRange{1000, 1}, PFNRange{5000, 4}, PFNRange{5004, 4}, PFNRange{0, 0})
	if err := d.ModifiedMemory(rs); err != nil {
		t.Fatal(err)
	}
	if len(r.calls) != 3 {
		t.Fatalf("%d DM_OPs for 601 extents, want 3 (256+256+89)", len(r.calls))
	}
	total := 0
	var seen []PFNRange
	for i, c := range r.calls {
		if op(c[0]) != dmopModifiedMemory || len(c) != 2 {
			t.Fatalf("call %d: op %d with %d buffers", i, op(c[0]), len(c))
		}
		nr := int(binary.LittleEndian.Uint32(c[0][8:]))
		if nr > 256 || len(c[1]) != 16*nr || binary.LittleEndian.Uint32(c[0][12:]) != 0 {
			t.Fatalf("call %d: nr_extents %d, extents buffer %d bytes", i, nr, len(c[1]))
		}
		for j := 0; j < nr; j++ {
			e := c[1][16*j:]
			seen = append(seen, PFNRange{First: binary.LittleEndian.Uint64(e[8:]), Count: uint64(binary.LittleEndian.Uint32(e))})
			if binary.LittleEndian.Uint32(e[4:]) != 0 {
				t.Fatal("extent pad not zero")
			}
		}
		total += nr
	}
	if total != 601 || seen[0] != (PFNRange{1000, 1}) || seen[600] != (PFNRange{5000, 8}) {
		t.Fatalf("extents: %d, first %v, last %v", total, seen[0], seen[len(seen)-1])
	}
	// An error names the batch.
	r.fail = unix.EINVAL
	err := d.ModifiedMemory([]PFNRange{{0x10, 2}})
	if !errors.Is(err, unix.EINVAL) || !strings.Contains(err.Error(), "pfn 0x10-0x11") || !strings.Contains(err.Error(), "dom 3") {
		t.Fatalf("error: %v", err)
	}
	// Nothing to report: no call.
	r.fail, r.calls = nil, nil
	if err := d.ModifiedMemory([]PFNRange{{7, 0}}); err != nil || len(r.calls) != 0 {
		t.Fatalf("empty report: %v, %d calls", err, len(r.calls))
	}
}
