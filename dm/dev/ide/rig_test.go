package ide

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// The test rig plays firmware and guest through port accesses, as SeaBIOS
// and Linux's ata_piix do, on hwtest fakes.

const (
	bmBase  = 0xc000
	memSize = 16 << 20
	holeGPA = 8 << 20 // [8 MiB, 9 MiB) is not guest memory
	holeLen = 1 << 20
	prdGPA  = 0x1000 // where tests put PRD tables
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type rig struct {
	t     testing.TB
	io    *hwtest.IOSpace
	mem   *hwtest.Memory
	irq   *hwtest.Interrupts
	dirty *hwtest.Dirty
	c     *Controller
}

func newRig(t testing.TB, drives [4]*Drive) *rig {
	t.Helper()
	r := &rig{t: t, io: hwtest.NewIOSpace(), mem: hwtest.NewMemory(memSize, hwtest.Range{Base: holeGPA, N: holeLen}),
		irq: &hwtest.Interrupts{}, dirty: &hwtest.Dirty{}}
	c, err := New(Config{IO: r.io, Mem: r.mem, IRQ: r.irq, Dirty: r.dirty, Drives: drives, Logger: testLogger})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ClaimLegacyPorts(); err != nil {
		t.Fatal(err)
	}
	r.c = c
	// What hvmloader does: BAR4, I/O + bus master, IDE decode enable.
	c.ConfigWrite(0x20, 4, bmBase|1)
	c.ConfigWrite(pci.RegCommand, 2, pci.CommandIO|pci.CommandMaster)
	c.ConfigWrite(0x40, 2, 0x8000)
	c.ConfigWrite(0x42, 2, 0x8000)
	t.Cleanup(c.Drain)
	return r
}

// diskRig: a disk of size bytes at index 0 (random content), nothing else.
func diskRig(t testing.TB, size int64) (*rig, *blk.Mem) {
	d := memDisk(size, 1)
	return newRig(t, [4]*Drive{{Media: Disk, Backend: d}}), d
}

func memDisk(size int64, seed uint64) *blk.Mem {
	data := make([]byte, size)
	rnd := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < len(data); i += 8 {
		binary.LittleEndian.PutUint64(data[i:], rnd.Uint64())
	}
	return blk.NewMemFrom(fmt.Sprintf("mem%d", seed), data, false)
}

func (r *rig) outb(port uint16, v uint8)  { r.io.Out(port, 1, uint32(v)) }
func (r *rig) outw(port uint16, v uint16) { r.io.Out(port, 2, uint32(v)) }
func (r *rig) outl(port uint16, v uint32) { r.io.Out(port, 4, v) }
func (r *rig) inb(port uint16) uint8      { return uint8(r.io.In(port, 1)) }
func (r *rig) inw(port uint16) uint16     { return uint16(r.io.In(port, 2)) }
func (r *rig) inl(port uint16) uint32     { return r.io.In(port, 4) }

func base(ch int) uint16 {
	if ch == 0 {
		return PrimaryCmd
	}
	return SecondaryCmd
}

func ctl(ch int) uint16 {
	if ch == 0 {
		return PrimaryCtl
	}
	return SecondaryCtl
}

func irqOf(ch int) uint8 { return uint8(PrimaryIRQ + ch) }

func (r *rig) status(ch int) uint8    { return r.inb(base(ch) + regStatus) }
func (r *rig) altStatus(ch int) uint8 { return r.inb(ctl(ch)) }
func (r *rig) errReg(ch int) uint8    { return r.inb(base(ch) + regError) }
func (r *rig) irqLevel(ch int) bool   { return r.irq.ISALevel(irqOf(ch)) }
func (r *rig) bmStatus(ch int) uint8  { return r.inb(bmBase + uint16(8*ch) + bmStatus) }

// lba28 loads the task file for an LBA28 command on unit (0/1) of ch.
func (r *rig) lba28(ch, unit int, lba uint32, count uint8) {
	b := base(ch)
	r.outb(b+regSelect, uint8(0xe0|unit<<4|int(lba>>24&0xf)))
	r.outb(b+regError, 0)
	r.outb(b+regNSector, count)
	r.outb(b+regSector, uint8(lba))
	r.outb(b+regLCyl, uint8(lba>>8))
	r.outb(b+regHCyl, uint8(lba>>16))
}

// lba48 loads the task file for an LBA48 command the way SeaBIOS's
// send_cmd does: high-order bytes first.
func (r *rig) lba48(ch, unit int, lba uint64, count uint16) {
	b := base(ch)
	r.outb(b+regSelect, uint8(0x40|unit<<4))
	r.outb(b+regError, 0)
	r.outb(b+regNSector, uint8(count>>8))
	r.outb(b+regSector, uint8(lba>>24))
	r.outb(b+regLCyl, uint8(lba>>32))
	r.outb(b+regHCyl, uint8(lba>>40))
	r.outb(b+regError, 0)
	r.outb(b+regNSector, uint8(count))
	r.outb(b+regSector, uint8(lba))
	r.outb(b+regLCyl, uint8(lba>>8))
	r.outb(b+regHCyl, uint8(lba>>16))
}

func (r *rig) command(ch int, cmd uint8) { r.outb(base(ch)+regStatus, cmd) }

// readBlock reads n bytes from the data port with 16-bit accesses.
func (r *rig) readBlock(ch, n int) []byte {
	out := make([]byte, n)
	for i := 0; i < n; i += 2 {
		binary.LittleEndian.PutUint16(out[i:], r.inw(base(ch)))
	}
	return out
}

// writeBlock writes p to the data port with 32-bit accesses.
func (r *rig) writeBlock(ch int, p []byte) {
	for i := 0; i < len(p); i += 4 {
		r.outl(base(ch), binary.LittleEndian.Uint32(p[i:]))
	}
}

func (r *rig) expectStatus(ch int, want uint8, what string) {
	r.t.Helper()
	if got := r.altStatus(ch); got != want {
		r.t.Fatalf("%s: status %#02x, want %#02x (error %#02x)", what, got, want, r.errReg(ch))
	}
}

type prd struct {
	addr  uint32
	count uint32 // bytes; 0x10000 is written as 0
	last  bool
}

func (r *rig) writePRDs(at uint64, prds []prd) {
	r.t.Helper()
	b := make([]byte, 8*len(prds))
	for i, p := range prds {
		binary.LittleEndian.PutUint32(b[8*i:], p.addr)
		w := p.count & 0xffff
		if p.last {
			w |= prdEOT
		}
		binary.LittleEndian.PutUint32(b[8*i+4:], w)
	}
	if err := r.mem.WriteGPA(at, b); err != nil {
		r.t.Fatal(err)
	}
}

// dmaLinux runs a DMA command in ata_bmdma_setup / exec_command /
// ata_bmdma_start order, waits for completion, and acknowledges it like the
// interrupt handler. It returns the bus-master status seen by the handler.
func (r *rig) dmaLinux(ch int, toMem bool, cmd uint8, setup func()) uint8 {
	r.t.Helper()
	bm := uint16(bmBase + 8*ch)
	r.outl(bm+bmAddr, prdGPA)
	dmactl := r.inb(bm+bmCmd) &^ (bmCmdStart | bmCmdWrite)
	if toMem {
		dmactl |= bmCmdWrite
	}
	r.outb(bm+bmCmd, dmactl)
	setup()
	r.command(ch, cmd)
	r.outb(bm+bmCmd, dmactl|bmCmdStart)
	r.c.Drain()
	st := r.inb(bm + bmStatus)
	r.outb(bm+bmCmd, r.inb(bm+bmCmd)&^bmCmdStart) // ata_bmdma_stop
	r.outb(bm+bmStatus, st)                       // ata_bmdma_irq_clear
	return st
}

func (r *rig) readMem(gpa uint64, n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	if err := r.mem.ReadGPA(gpa, b); err != nil {
		r.t.Fatal(err)
	}
	return b
}

func (r *rig) fillMem(gpa uint64, n int, seed uint64) []byte {
	r.t.Helper()
	b := make([]byte, n)
	rnd := rand.New(rand.NewPCG(seed, 3))
	for i := range b {
		b[i] = byte(rnd.Uint32())
	}
	if err := r.mem.WriteGPA(gpa, b); err != nil {
		r.t.Fatal(err)
	}
	return b
}

func mustEqual(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: data differs at byte %d (len %d vs %d)", what, i, len(got), len(want))
	}
}

// sparseDisk is a huge writable backend storing only written sectors, for
// LBA48 addresses beyond 128 GiB.
type sparseDisk struct {
	mu   sync.Mutex
	size int64
	sec  map[int64][]byte
}

func (s *sparseDisk) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off+int64(len(p)) > s.size {
		return 0, io.EOF
	}
	for i := 0; i < len(p); i += 512 {
		if d := s.sec[(off+int64(i))/512]; d != nil {
			copy(p[i:i+512], d)
		} else {
			clear(p[i : i+512])
		}
	}
	return len(p), nil
}

func (s *sparseDisk) WriteAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if off+int64(len(p)) > s.size {
		return 0, blk.ErrOutOfRange
	}
	for i := 0; i < len(p); i += 512 {
		s.sec[(off+int64(i))/512] = append([]byte(nil), p[i:i+512]...)
	}
	return len(p), nil
}

func (s *sparseDisk) Flush() error   { return nil }
func (s *sparseDisk) Size() int64    { return s.size }
func (s *sparseDisk) ReadOnly() bool { return false }
func (s *sparseDisk) Close() error   { return nil }
func (s *sparseDisk) Name() string   { return "sparse" }

// gateDisk blocks reads and writes until released, to hold a transfer in
// flight.
type gateDisk struct {
	blk.Backend
	gate    chan struct{}
	entered chan struct{}
}

func (g *gateDisk) ReadAt(p []byte, off int64) (int, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.Backend.ReadAt(p, off)
}

func (g *gateDisk) WriteAt(p []byte, off int64) (int, error) {
	g.entered <- struct{}{}
	<-g.gate
	return g.Backend.WriteAt(p, off)
}

var testLogger = quiet
