package ide

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// BenchmarkDMARead measures READ DMA (EXT) through the whole controller:
// task-file and bus-master programming as Linux does it, the PRD walk, the
// backend read (in-memory), the scatter into guest memory, dirty reporting,
// completion on the channel goroutine and the interrupt. MB/s is guest data.
func BenchmarkDMARead(b *testing.B) {
	const diskSize = 64 << 20
	for _, pattern := range []string{"seq", "rand"} {
		for _, size := range []int{4 << 10, 16 << 10, 64 << 10} {
			b.Run(fmt.Sprintf("%s-%dK", pattern, size>>10), func(b *testing.B) {
				r := newRig(b, [4]*Drive{{Media: Disk, Backend: blk.NewMem("bench", diskSize)}})
				r.c.dirty = nopDirty{} // hwtest.Dirty would keep every call
				r.outb(0x3f6, 0x08)
				// One PRD entry for ≤ 64 KiB (count 0 = 64 KiB), page-aligned buffer.
				r.writePRDs(prdGPA, []prd{{0x100000, uint32(size), true}})
				r.mem.WriteGPA(0x100000, make([]byte, size)) // populate the fake's pages
				sectors := size / 512
				nblocks := diskSize / size
				lbas := make([]uint64, 1024)
				rnd := rand.New(rand.NewPCG(1, 2))
				for i := range lbas {
					blkno := i % nblocks
					if pattern == "rand" {
						blkno = rnd.IntN(nblocks)
					}
					lbas[i] = uint64(blkno * sectors)
				}
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					lba := lbas[i%len(lbas)]
					r.outl(bmBase+bmAddr, prdGPA)
					r.outb(bmBase+bmCmd, bmCmdWrite)
					r.lba48(0, 0, lba, uint16(sectors))
					r.command(0, cmdReadDMAExt)
					r.outb(bmBase+bmCmd, bmCmdWrite|bmCmdStart)
					r.c.Drain()
					st := r.bmStatus(0)
					r.outb(bmBase+bmCmd, bmCmdWrite)
					r.outb(bmBase+bmStatus, st)
					if r.status(0) != statDRDY|statDSC {
						b.Fatalf("status %#x bm %#x", r.altStatus(0), st)
					}
				}
			})
		}
	}
}

type nopDirty struct{}

func (nopDirty) MarkDirty(uint64, uint64) {}
