package migstream

import (
	"encoding/binary"
	"testing"
)

func TestIsZeroPage(t *testing.T) {
	p := make([]byte, PageSize)
	if !isZeroPage(p) {
		t.Fatal("zero page not zero")
	}
	for _, i := range []int{0, 1, 7, 8, 63, 64, 2048, PageSize - 1} {
		p[i] = 0x80
		if isZeroPage(p) || wordsZero(p) {
			t.Fatalf("page with byte %d set: zero", i)
		}
		p[i] = 0
	}
}

// wordsZero is the plain alternative to isZeroPage: eight words ORed at a
// time (for BenchmarkZeroPage).
func wordsZero(b []byte) bool {
	le := binary.LittleEndian
	for ; len(b) >= 64; b = b[64:] {
		if le.Uint64(b)|le.Uint64(b[8:])|le.Uint64(b[16:])|le.Uint64(b[24:])|
			le.Uint64(b[32:])|le.Uint64(b[40:])|le.Uint64(b[48:])|le.Uint64(b[56:]) != 0 {
			return false
		}
	}
	return allZero(b)
}

// BenchmarkZeroPage compares the zero-page checks on an all-zero page (the
// worst case: every byte read) and on a page whose first word is set.
func BenchmarkZeroPage(b *testing.B) {
	zero := make([]byte, PageSize)
	data := make([]byte, PageSize)
	data[3] = 1
	for _, c := range []struct {
		name string
		p    []byte
		f    func([]byte) bool
	}{
		{"memequal/zero", zero, isZeroPage},
		{"memequal/data", data, isZeroPage},
		{"words/zero", zero, wordsZero},
		{"words/data", data, wordsZero},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(PageSize)
			for b.Loop() {
				if c.f(c.p) != (&c.p[0] == &zero[0]) {
					b.Fatal("wrong answer")
				}
			}
		})
	}
}
