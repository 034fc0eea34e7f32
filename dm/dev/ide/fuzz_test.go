package ide

import (
	"encoding/binary"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// The ports a guest can reach, for the fuzzer to pick from.
var fuzzPorts = []uint16{
	0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6,
	0x170, 0x171, 0x172, 0x173, 0x174, 0x175, 0x176, 0x177, 0x376,
	bmBase, bmBase + 1, bmBase + 2, bmBase + 3, bmBase + 4, bmBase + 5, bmBase + 6, bmBase + 7,
	bmBase + 8, bmBase + 10, bmBase + 12, bmBase + 13, bmBase + 15,
}

const fuzzMem = 2 << 20

// fuzzOp encodes one step for the seed corpus.
func fuzzOp(kind, a, b byte, v uint32) []byte {
	out := []byte{kind, a, b, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(out[3:], v)
	return out
}

func out(port uint16, size int, v uint32) []byte {
	for i, p := range fuzzPorts {
		if p == port {
			return fuzzOp(byte(size-1)*3, byte(i), 0, v)
		}
	}
	panic("port")
}

func FuzzPorts(f *testing.F) {
	// Seeds: IDENTIFY, a PIO read, a DMA read with a PRD table, an ATAPI
	// INQUIRY, a DMA write.
	var seed []byte
	seed = append(seed, out(0x1f6, 1, 0xe0)...)
	seed = append(seed, out(0x1f7, 1, cmdIdentify)...)
	for i := 0; i < 4; i++ {
		seed = append(seed, fuzzOp(4, byte(i), 1, 0)...) // data reads
	}
	f.Add(seed)
	var dma []byte
	dma = append(dma, fuzzOp(7, 0, 0, 0x1000)...)     // PRD entry 0 address
	dma = append(dma, fuzzOp(7, 1, 0, 0x80000400)...) // 1 KiB, EOT
	dma = append(dma, out(bmBase+4, 4, 0x800)...)
	dma = append(dma, out(bmBase, 1, bmCmdWrite)...)
	dma = append(dma, out(0x1f2, 1, 2)...)
	dma = append(dma, out(0x1f6, 1, 0xe0)...)
	dma = append(dma, out(0x1f7, 1, cmdReadDMA)...)
	dma = append(dma, out(bmBase, 1, bmCmdWrite|bmCmdStart)...)
	dma = append(dma, fuzzOp(8, 0, 0, 0)...) // drain
	dma = append(dma, fuzzOp(9, 0, 0, 0)...) // state round trip
	f.Add(dma)
	var atapi []byte
	atapi = append(atapi, out(0x176, 1, 0xa0)...)
	atapi = append(atapi, out(0x174, 1, 36)...)
	atapi = append(atapi, out(0x177, 1, cmdPacket)...)
	atapi = append(atapi, out(0x170, 2, scsiInquiry)...)
	atapi = append(atapi, out(0x170, 2, 36<<8)...)
	for i := 0; i < 4; i++ {
		atapi = append(atapi, out(0x170, 2, 0)...)
	}
	atapi = append(atapi, fuzzOp(4, 9, 1, 0)...)
	f.Add(atapi)
	var wr []byte
	wr = append(wr, fuzzOp(7, 0, 0, 0x3000)...)
	wr = append(wr, fuzzOp(7, 1, 0, 0x8000)...) // 32 KiB without EOT
	wr = append(wr, out(bmBase+4, 4, 0x800)...)
	wr = append(wr, out(0x1f2, 1, 64)...)
	wr = append(wr, out(0x1f7, 1, cmdWriteDMA)...)
	wr = append(wr, out(bmBase, 1, bmCmdStart)...)
	wr = append(wr, fuzzOp(10, 0, 0, 0)...) // unplug
	f.Add(wr)

	f.Fuzz(func(t *testing.T, in []byte) {
		io := hwtest.NewIOSpace()
		mem := hwtest.NewMemory(fuzzMem, hwtest.Range{Base: 0x100000, N: 0x10000})
		disk := blk.NewMem("d0", 256<<10)
		flaky := blk.NewMem("d1", 64<<10)
		flaky.FailReads(8<<10, 4096)
		flaky.FailWrites(0, 512)
		c, err := New(Config{IO: io, Mem: mem, IRQ: &hwtest.Interrupts{}, Dirty: &hwtest.Dirty{}, Logger: quiet,
			Observer: &nopObserver{},
			Drives: [4]*Drive{{Media: Disk, Backend: disk}, {Media: Disk, Backend: flaky},
				{Media: CDROM, Backend: cdImage(16)}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.ClaimLegacyPorts(); err != nil {
			t.Fatal(err)
		}
		c.ConfigWrite(0x20, 4, bmBase|1)
		c.ConfigWrite(pci.RegCommand, 2, pci.CommandIO|pci.CommandMaster)
		defer c.Drain()
		for steps := 0; len(in) >= 7 && steps < 400; steps++ {
			kind, a, b := in[0], in[1], in[2]
			v := binary.LittleEndian.Uint32(in[3:])
			in = in[7:]
			port := fuzzPorts[int(a)%len(fuzzPorts)]
			switch kind % 16 {
			case 0, 1, 2:
				io.Out(port, 1, v)
			case 3:
				io.Out(port, 2, v)
			case 4:
				io.In(port, int(b%3)+1+int(b%3/2)) // sizes 1, 2, 4
			case 5, 6:
				io.Out(port, 4, v)
			case 7: // guest memory: PRD tables at 0x800, data anywhere
				gpa := uint64(0x800) + uint64(a)*4
				if b != 0 {
					gpa = uint64(v) % fuzzMem
				}
				var w [4]byte
				binary.LittleEndian.PutUint32(w[:], v)
				_ = mem.WriteGPA(gpa, w[:])
			case 8:
				c.Drain()
			case 9:
				if err := c.SetState(c.State()); err != nil {
					t.Fatalf("SetState(State()): %v", err)
				}
			case 10:
				_ = c.UnplugDisks(a&1 != 0)
			case 11:
				var m blk.Backend
				if a&1 != 0 {
					m = cdImage(int(b%8) + 1)
				}
				_, _ = c.ChangeMedium(2, m)
			case 12:
				c.ConfigWrite(uint16(a)&0xfc, 4, v)
				c.ConfigWrite(0x20, 4, bmBase|1)
			case 13:
				c.Reset()
			case 14:
				io.In(port, 3) // invalid size
				io.Out(uint16(v), int(b%5), v)
			default:
				io.In(port, 1)
			}
		}
		c.Drain()
		// Whatever happened, the state round-trips and the registers read.
		if err := c.SetState(c.State()); err != nil {
			t.Fatalf("final SetState(State()): %v", err)
		}
		for _, p := range fuzzPorts {
			io.In(p, 1)
		}
	})
}

type nopObserver struct{}

func (nopObserver) ReadBegin(int, int64, int64) any             { return nil }
func (nopObserver) ReadDone(any, int, int64, []Segment, []byte) {}
func (nopObserver) WriteBegin(int, int64, int64) any            { return nil }
func (nopObserver) WriteDone(any, []Segment, []byte, bool)      {}
func (nopObserver) GuestWritten(uint64, uint64)                 {}
