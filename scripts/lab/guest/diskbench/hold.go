package main

import (
	"bytes"
	"crypto/rand"
	"flag"
	"fmt"
	"os"
	"syscall"
	"time"
)

// holdMain is `diskbench hold -file F -secs N`: the adversarial workload of the compact
// migration scenario. Until N seconds have passed, each cycle
//
//  1. reads F by O_DIRECT into "held" (the disk DMA lands in held's pages, which the device
//     model now tracks as exact copies of F's blocks, so a migration may send them as
//     references to those blocks) and keeps a CPU copy of it;
//  2. overwrites F in place with new random data (O_DIRECT again: the very blocks behind held
//     change on the disk), syncs, reads F back into a third buffer and checks it;
//  3. checks that held still equals its copy.
//
// A migration that ends between 2 and 3 with a page of held sent as a reference to its block
// (not as data) after the block changed makes the destination fill that page with the new
// disk bytes, and step 3 fails. One line at the end:
//
//	XENLAB-GUEST hold ok=1 errors=0 cycles=N mb=M secs=S
func holdMain(args []string) int {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	file := fs.String("file", "/mnt/scratch/hold.bin", "file to hold and overwrite (its size a multiple of 4096)")
	secs := fs.Float64("secs", 60, "seconds to keep overwriting")
	pause := fs.Duration("pause", 200*time.Millisecond, "pause between cycles")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cycles, errs, n, err := hold(*file, time.Duration(*secs*float64(time.Second)), *pause)
	if err != nil {
		fmt.Printf("XENLAB-GUEST hold-failed cycles=%d %v\n", cycles, err)
		return 1
	}
	ok := 1
	if errs > 0 {
		ok = 0
	}
	fmt.Printf("XENLAB-GUEST hold ok=%d errors=%d cycles=%d mb=%d secs=%.0f\n", ok, errs, cycles, n>>20, *secs)
	return 0
}

func hold(file string, d time.Duration, pause time.Duration) (cycles, errs int, size int, err error) {
	f, err := os.OpenFile(file, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		return 0, 0, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, 0, 0, err
	}
	size = int(st.Size())
	if size == 0 || size%4096 != 0 {
		return 0, 0, 0, fmt.Errorf("%s: size %d is not a positive multiple of 4096", file, size)
	}
	buf := func() ([]byte, error) { // page aligned, as O_DIRECT wants
		return syscall.Mmap(-1, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	}
	held, err := buf()
	if err != nil {
		return 0, 0, 0, err
	}
	next, err := buf()
	if err != nil {
		return 0, 0, 0, err
	}
	back, err := buf()
	if err != nil {
		return 0, 0, 0, err
	}
	copyOf, err := buf()
	if err != nil {
		return 0, 0, 0, err
	}
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		cycles++
		if err := readFull(f, held, 0); err != nil {
			return cycles, errs, size, err
		}
		copy(copyOf, held)
		if _, err := rand.Read(next); err != nil {
			return cycles, errs, size, err
		}
		if _, err := f.WriteAt(next, 0); err != nil {
			return cycles, errs, size, fmt.Errorf("overwrite: %w", err)
		}
		if err := f.Sync(); err != nil {
			return cycles, errs, size, fmt.Errorf("sync: %w", err)
		}
		if err := readFull(f, back, 0); err != nil {
			return cycles, errs, size, err
		}
		if !bytes.Equal(back, next) {
			errs++
			fmt.Printf("XENLAB-GUEST hold-mismatch cycle=%d what=readback %s\n", cycles, changed(back, next))
		}
		if !bytes.Equal(held, copyOf) {
			errs++
			fmt.Printf("XENLAB-GUEST hold-mismatch cycle=%d what=held %s\n", cycles, changed(held, copyOf))
		}
		time.Sleep(pause)
	}
	return cycles, errs, size, nil
}

// changed names the 4 KiB pages in which a and b differ.
func changed(a, b []byte) string {
	n, first := 0, -1
	for i := 0; i+4096 <= len(a) && i+4096 <= len(b); i += 4096 {
		if !bytes.Equal(a[i:i+4096], b[i:i+4096]) {
			if first < 0 {
				first = i / 4096
			}
			n++
		}
	}
	return fmt.Sprintf("changed_pages=%d first_page=%d of=%d", n, first, len(a)/4096)
}
