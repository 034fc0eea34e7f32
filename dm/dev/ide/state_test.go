package ide

import (
	"errors"
	"reflect"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

func TestUnplugDisks(t *testing.T) {
	for _, aux := range []bool{false, true} {
		disks := [3]*blk.Mem{memDisk(1<<20, 1), memDisk(1<<20, 2), memDisk(1<<20, 4)}
		cd := cdImage(8)
		r := newRig(t, [4]*Drive{{Media: Disk, Backend: disks[0]}, {Media: Disk, Backend: disks[1]},
			{Media: CDROM, Backend: cd}, {Media: Disk, Backend: disks[2]}})
		det := &detachRec{}
		r.c.SetObserver(det)
		// Leave some state behind that the reset must clear.
		r.outb(0x1f6, 0xb0)
		r.lba28(0, 1, 0, 1)
		r.command(0, cmdReadSectors)
		r.outl(bmBase+bmAddr, prdGPA)
		if err := r.c.UnplugDisks(aux); err != nil {
			t.Fatal(err)
		}
		for i, want := range []bool{aux, false, true, false} {
			if _, ok := r.c.Present(i); ok != want {
				t.Fatalf("aux=%v: unit %d present=%v", aux, i, ok)
			}
		}
		if r.inl(bmBase+bmAddr) != 0 {
			t.Fatal("bus-master registers not reset")
		}
		// Detached backends are closed; the kept ones are not.
		for i, d := range disks {
			_, err := d.ReadAt(make([]byte, 1), 0)
			kept := aux && i == 0
			if kept != (err == nil) || !kept && !errors.Is(err, blk.ErrClosed) {
				t.Fatalf("aux=%v: disk %d read after unplug: %v", aux, i, err)
			}
		}
		// The guest can no longer reach them.
		r.outb(0x1f6, 0xb0)
		r.command(0, cmdIdentify)
		if r.status(0) != 0 {
			t.Fatal("unplugged slave still answers")
		}
		r.outb(0x1f6, 0xa0)
		r.command(0, cmdIdentify)
		if aux {
			if r.altStatus(0) != statDRDY|statDSC|statDRQ {
				t.Fatal("primary master gone with auxOnly")
			}
			r.readBlock(0, 512)
		} else if r.status(0) != 0 {
			t.Fatal("unplugged master still answers")
		}
		r.outb(0x176, 0xb0)
		r.command(1, cmdIdentify)
		if r.status(1) != 0 {
			t.Fatal("unplugged secondary slave still answers")
		}
		// The CD-ROM stays.
		r.packet([]byte{scsiTestUnitReady}, 0, false)
		r.atapiDone("CD-ROM after unplug")
		want := []int{0, 1, 3}
		if aux {
			want = []int{1, 3}
		}
		if len(det.detached) != len(want) || det.detached[0] != want[0] {
			t.Fatalf("detached %v, want %v", det.detached, want)
		}
	}
}

type detachRec struct {
	recObserver
	detached []int
}

func (d *detachRec) DriveDetached(i int) { d.detached = append(d.detached, i) }

func TestUnplugWaitsForDMA(t *testing.T) {
	g := &gateDisk{Backend: memDisk(1<<20, 5), gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: g}})
	r.writePRDs(prdGPA, []prd{{0x10000, 4096, true}})
	r.outl(bmBase+bmAddr, prdGPA)
	r.outb(bmBase+bmCmd, bmCmdWrite)
	r.lba28(0, 0, 0, 8)
	r.command(0, cmdReadDMA)
	r.outb(bmBase+bmCmd, bmCmdWrite|bmCmdStart)
	<-g.entered
	done := make(chan error)
	go func() { done <- r.c.UnplugDisks(false) }()
	select {
	case <-done:
		t.Fatal("unplug did not wait for the transfer")
	default:
	}
	close(g.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mustEqual(t, "data", r.readMem(0x10000, 4096), g.Backend.(*blk.Mem).Bytes()[:4096])
	if _, ok := r.c.Present(0); ok {
		t.Fatal("still present")
	}
}

func TestStatePIORoundTrip(t *testing.T) {
	d := memDisk(1<<20, 3)
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: d}})
	r.outb(0x3f6, 0x08)
	r.outb(0x1f1, 0x03)
	r.outb(0x1f2, 0x42) // UDMA2
	r.command(0, cmdSetFeatures)
	r.lba28(0, 0, 40, 3)
	r.command(0, cmdReadSectors)
	first := r.readBlock(0, 512)
	part := r.readBlock(0, 100) // stop in the middle of the second sector
	st := r.c.State()
	if st.Channels[0].InFlight || st.Channels[0].Units[0].DataPtr != 100 {
		t.Fatalf("state %+v", st.Channels[0])
	}
	// A fresh controller with the same drive continues where it stopped.
	r2 := newRig(t, [4]*Drive{{Media: Disk, Backend: d}})
	if err := r2.c.SetState(st); err != nil {
		t.Fatal(err)
	}
	if !r2.irqLevel(0) {
		t.Fatal("IRQ level not restored")
	}
	rest := r2.readBlock(0, 412)
	third := r2.readBlock(0, 512)
	r2.expectStatus(0, statDRDY|statDSC, "after the restored transfer")
	img := d.Bytes()
	mustEqual(t, "sectors", append(append(append(first, part...), rest...), third...), img[40*512:43*512])
	r2.command(0, cmdIdentify)
	if id := r2.readBlock(0, 512); word(id, 88) != 0x3f|1<<10 {
		t.Fatal("SET FEATURES state lost")
	}
	// State is stable through a second round trip.
	st2 := r2.c.State()
	r3 := newRig(t, [4]*Drive{{Media: Disk, Backend: d}})
	if err := r3.c.SetState(st2); err != nil {
		t.Fatal(err)
	}
	if s3 := r3.c.State(); !statesEqual(s3, st2) {
		t.Fatal("state changed through SetState/State")
	}
}

func statesEqual(a, b State) bool {
	norm := func(s *State) {
		for i := range s.Channels {
			for k := range s.Channels[i].Units {
				u := &s.Channels[i].Units[k]
				if len(u.Data) == 0 {
					u.Data = nil
				}
				if len(u.Reply) == 0 {
					u.Reply = nil
				}
			}
		}
	}
	norm(&a)
	norm(&b)
	return reflect.DeepEqual(a, b)
}

func TestStateInFlightDMARestarts(t *testing.T) {
	src := memDisk(1<<20, 6)
	g := &gateDisk{Backend: src, gate: make(chan struct{}), entered: make(chan struct{}, 1)}
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: g}})
	r.outb(0x3f6, 0x08)
	r.writePRDs(prdGPA, []prd{{0x10000, 8192, true}})
	r.outl(bmBase+bmAddr, prdGPA)
	r.outb(bmBase+bmCmd, bmCmdWrite)
	r.lba28(0, 0, 100, 16)
	r.command(0, cmdReadDMA)
	r.outb(bmBase+bmCmd, bmCmdWrite|bmCmdStart)
	<-g.entered
	st := r.c.State()
	if !st.Channels[0].InFlight || st.Channels[0].Units[0].DMACmd != uint8(dmaRead) || st.Channels[0].BMStatus&bmStActive == 0 {
		t.Fatalf("in-flight state %+v", st.Channels[0])
	}
	close(g.gate)
	r.c.Drain()
	// The destination has the same disk and memory contents except the
	// transfer's target, which it redoes.
	r2 := newRig(t, [4]*Drive{{Media: Disk, Backend: src}})
	r2.writePRDs(prdGPA, []prd{{0x10000, 8192, true}})
	if err := r2.c.SetState(st); err != nil {
		t.Fatal(err)
	}
	r2.c.Drain()
	if st := r2.bmStatus(0); st&(bmStIRQ|bmStActive) != bmStIRQ || r2.altStatus(0) != statDRDY|statDSC || !r2.irqLevel(0) {
		t.Fatalf("restarted transfer: bm %#x status %#x", st, r2.altStatus(0))
	}
	mustEqual(t, "restarted data", r2.readMem(0x10000, 8192), src.Bytes()[100*512:116*512])
	if r2.inb(0x1f3) != 116 {
		t.Fatal("task file after the restarted transfer")
	}
}

func TestStatePendingFlushRestarts(t *testing.T) {
	d := memDisk(1<<20, 7)
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: d}})
	r.outb(0x3f6, 0x08)
	st := r.c.State()
	st.Channels[0].Units[0].Flushing = true
	st.Channels[0].Units[0].Status = statDRDY | statBSY
	r2 := newRig(t, [4]*Drive{{Media: Disk, Backend: d}})
	if err := r2.c.SetState(st); err != nil {
		t.Fatal(err)
	}
	r2.c.Drain()
	if r2.altStatus(0) != statDRDY|statDSC || d.Stats().Flushes != 1 {
		t.Fatalf("flush not redone: %#x, %d flushes", r2.altStatus(0), d.Stats().Flushes)
	}
}

func TestStateValidation(t *testing.T) {
	d := memDisk(1<<20, 8)
	cd := cdImage(4)
	r := newRig(t, [4]*Drive{{Media: Disk, Backend: d}, nil, {Media: CDROM, Backend: cd}})
	good := r.c.State()
	for name, mut := range map[string]func(*State){
		"selected":       func(s *State) { s.Channels[0].Selected = 2 },
		"absent drive":   func(s *State) { s.Channels[0].Units[1].Present = true },
		"media mismatch": func(s *State) { s.Channels[1].Units[0].Media = Disk },
		"nsector":        func(s *State) { s.Channels[0].Units[0].NSector = 70000 },
		"mult":           func(s *State) { s.Channels[0].Units[0].MultSectors = 3 },
		"phase":          func(s *State) { s.Channels[0].Units[0].EndXfer = 99 },
		"pio pos":        func(s *State) { s.Channels[0].Units[0].DataPtr = 10 },
		"pio size":       func(s *State) { s.Channels[0].Units[0].Data = make([]byte, pioBufSize+1) },
		"dma kind":       func(s *State) { s.Channels[0].Units[0].DMACmd = 3 },
		"cd dma kind":    func(s *State) { s.Channels[1].Units[0].DMACmd = 1 },
		"reply":          func(s *State) { s.Channels[1].Units[0].ReplyLen = 5 },
		"reply beyond": func(s *State) {
			u := &s.Channels[1].Units[0]
			u.ReplyCD, u.ReplyBase, u.ReplyLen = true, 4*2048, 2048
		},
		"absent busy": func(s *State) { s.Channels[0].Units[1].Flushing = true },
		"geometry":    func(s *State) { s.Channels[0].Units[0].LSecs = 300 },
		"config ids":  func(s *State) { s.Config[0] = 0x99 },
	} {
		bad := good
		bad.Channels = good.Channels
		for i := range bad.Channels {
			for k := range bad.Channels[i].Units {
				u := &bad.Channels[i].Units[k]
				u.Data = append([]byte(nil), u.Data...)
			}
		}
		mut(&bad)
		if err := r.c.SetState(bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Nothing was applied: the controller still works and equals the old state.
	if !statesEqual(r.c.State(), good) {
		t.Fatal("a rejected state changed the controller")
	}
	// A unit saved as unplugged is detached on restore.
	if err := r.c.UnplugDisks(false); err != nil {
		t.Fatal(err)
	}
	st := r.c.State()
	d2 := memDisk(1<<20, 8)
	r2 := newRig(t, [4]*Drive{{Media: Disk, Backend: d2}, nil, {Media: CDROM, Backend: cdImage(4)}})
	if err := r2.c.SetState(st); err != nil {
		t.Fatal(err)
	}
	if _, ok := r2.c.Present(0); ok {
		t.Fatal("unplugged disk reattached by restore")
	}
	if _, err := d2.ReadAt(make([]byte, 1), 0); !errors.Is(err, blk.ErrClosed) {
		t.Fatal("detached backend not closed")
	}
}
