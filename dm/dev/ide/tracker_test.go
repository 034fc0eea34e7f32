package ide

import (
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
)

// The controller driving the real page↔sector tracker.
func TestTrackerObserver(t *testing.T) {
	d := memDisk(4<<20, 11)
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: d}, nil, {Media: CDROM, Backend: cdImage(32)}})
	tdirty := &hwtest.Dirty{}
	tr := blk.NewTracker(blk.TrackerConfig{Dirty: tdirty})
	r.c.SetObserver(TrackerObserver(tr))
	lookup := func(pfn uint64) (blk.Ref, bool) {
		refs, ok := make([]blk.Ref, 1), make([]bool, 1)
		tr.Lookup([]uint64{pfn}, refs, ok)
		return refs[0], ok[0]
	}

	// Read 16 KiB from sector 64 (4 KiB-aligned) into pages 0x100–0x103.
	r.writePRDs(prdGPA, []prd{{0x100000, 0x4000, true}})
	r.dmaLinux(0, true, cmdReadDMA, func() { r.lba28(0, 0, 64, 32) })
	img := d.Bytes()
	for i := uint64(0); i < 4; i++ {
		ref, ok := lookup(0x100 + i)
		want := blk.HashPage(img[(64+8*i)*512 : (72+8*i)*512])
		if !ok || ref.Disk != 0 || ref.Sector != 64+8*i || ref.Hash != want {
			t.Fatalf("pfn %#x: %+v %v", 0x100+i, ref, ok)
		}
	}
	// A PIO write to sector 72 invalidates page 0x101 before it lands and
	// reports it dirty.
	r.lba28(0, 0, 72, 1)
	r.command(0, cmdWriteSectors)
	r.writeBlock(0, make([]byte, 512))
	if _, ok := lookup(0x101); ok {
		t.Fatal("entry survived a write to its block")
	}
	if !tdirty.IsDirty(0x101) {
		t.Fatal("invalidated page not reported dirty")
	}
	if _, ok := lookup(0x100); !ok {
		t.Fatal("unrelated entry dropped")
	}
	// A DMA write records the source pages as copies of the written blocks.
	src := r.fillMem(0x200000, 8192, 12)
	r.writePRDs(prdGPA, []prd{{0x200000, 8192, true}})
	r.dmaLinux(0, false, cmdWriteDMA, func() { r.lba28(0, 0, 128, 16) })
	if ref, ok := lookup(0x201); !ok || ref.Sector != 136 || ref.Hash != blk.HashPage(src[4096:]) {
		t.Fatalf("written page: %+v %v", ref, ok)
	}
	// ATAPI DMA reads of the CD are tracked as disk 2.
	r.writePRDs(prdGPA, []prd{{0x300000, 4096, true}})
	bm := uint16(bmBase + 8)
	r.outl(bm+bmAddr, prdGPA)
	r.outb(bm+bmCmd, bmCmdWrite)
	r.packet([]byte{scsiRead10, 0, 0, 0, 0, 4, 0, 0, 2}, 0, true)
	r.outb(bm+bmCmd, bmCmdWrite|bmCmdStart)
	r.c.Drain()
	if ref, ok := lookup(0x300); !ok || ref.Disk != 2 || ref.Sector != 4*4 {
		t.Fatalf("CD page: %+v %v", ref, ok)
	}
	// An INQUIRY reply over DMA overwrites a tracked page: dropped.
	r.outb(bm+bmCmd, bmCmdWrite)
	r.writePRDs(prdGPA, []prd{{0x300000, 36, true}})
	r.packet([]byte{scsiInquiry, 0, 0, 0, 36}, 0, true)
	r.outb(bm+bmCmd, bmCmdWrite|bmCmdStart)
	r.c.Drain()
	if _, ok := lookup(0x300); ok {
		t.Fatal("page overwritten by an ATAPI reply still tracked")
	}
	// Unplugging the disk forgets every page that references it.
	if err := r.c.UnplugDisks(false); err != nil {
		t.Fatal(err)
	}
	for _, pfn := range []uint64{0x100, 0x102, 0x200, 0x201} {
		if _, ok := lookup(pfn); ok {
			t.Fatalf("pfn %#x still tracked after unplug", pfn)
		}
	}
}
