// Command diskbench measures a block device's sequential and random read throughput from inside
// the lab's HVM test guest, bypassing the page cache (O_DIRECT), so the numbers are those of the
// emulated disk path: guest driver → device model → backing file. The lab boot scenario runs it
// under xen-dm-go and under stock qemu-xen in the same lab boot and prints the ratios.
//
// It is built static (CGO_ENABLED=0) by scripts/lab/build-guest.sh onto the guest's data
// partition and started by the guest workload on the console command "bench". One output line:
//
//	XENLAB-GUEST bench seq_mb=… seq_s=… seq_mbps=… rand_n=… rand_bs=… rand_s=… rand_iops=… rand_mbps=…
//
// `diskbench hold` is the adversary of compact migration (hold.go): it keeps in memory a copy of
// a file's blocks read by DMA while it overwrites those very blocks on the disk, again and again,
// and checks that its copy never changes.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"os"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "hold" {
		os.Exit(holdMain(os.Args[2:]))
	}
	dev := flag.String("dev", "/dev/sda2", "block device (or file) to read")
	seqMB := flag.Int("seq-mb", 32, "MiB read sequentially, from offset 0, in -seq-bs requests")
	seqBS := flag.Int("seq-bs", 1<<20, "bytes per sequential request")
	randN := flag.Int("rand-n", 1000, "random requests")
	randBS := flag.Int("rand-bs", 4096, "bytes per random request (a multiple of 4096)")
	seed := flag.Int64("seed", 1, "seed of the random offsets (the same seed reads the same blocks)")
	flag.Parse()
	if err := run(*dev, *seqMB, *seqBS, *randN, *randBS, *seed); err != nil {
		fmt.Printf("XENLAB-GUEST bench-failed %v\n", err)
		os.Exit(1)
	}
}

func run(dev string, seqMB, seqBS, randN, randBS int, seed int64) error {
	if seqBS <= 0 || seqBS%4096 != 0 || randBS <= 0 || randBS%4096 != 0 || seqMB <= 0 || randN <= 0 {
		return errors.New("sizes must be positive and request sizes multiples of 4096")
	}
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return fmt.Errorf("size of %s: %w", dev, err)
	}
	seqBytes := int64(seqMB) << 20
	if size < seqBytes || size < int64(randBS) {
		return fmt.Errorf("%s has %d bytes, fewer than the %d the benchmark reads", dev, size, seqBytes)
	}
	// O_DIRECT needs an aligned buffer: an anonymous mapping is page aligned.
	bufLen := max(seqBS, randBS)
	buf, err := syscall.Mmap(-1, 0, bufLen, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("buffer: %w", err)
	}

	t0 := time.Now()
	for off := int64(0); off < seqBytes; off += int64(seqBS) {
		if err := readFull(f, buf[:seqBS], off); err != nil {
			return err
		}
	}
	seqS := time.Since(t0).Seconds()

	rng := rand.New(rand.NewSource(seed))
	blocks := size / int64(randBS)
	t0 = time.Now()
	for i := 0; i < randN; i++ {
		if err := readFull(f, buf[:randBS], rng.Int63n(blocks)*int64(randBS)); err != nil {
			return err
		}
	}
	randS := time.Since(t0).Seconds()

	fmt.Printf("XENLAB-GUEST bench seq_mb=%d seq_s=%.3f seq_mbps=%.2f rand_n=%d rand_bs=%d rand_s=%.3f rand_iops=%.1f rand_mbps=%.3f\n",
		seqMB, seqS, float64(seqMB)/seqS, randN, randBS, randS, float64(randN)/randS, float64(randN)*float64(randBS)/(1<<20)/randS)
	return nil
}

func readFull(f *os.File, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := f.ReadAt(b, off)
		if n == 0 && err != nil {
			return fmt.Errorf("read %d bytes at offset %d: %w", len(b), off, err)
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}
