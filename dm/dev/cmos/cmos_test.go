package cmos

import (
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/hw/hwtest"
)

func newCMOS(t *testing.T, cfg Config) (*CMOS, *hwtest.IOSpace) {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC) }
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	io := hwtest.NewIOSpace()
	if err := c.ClaimPorts(io); err != nil {
		t.Fatal(err)
	}
	return c, io
}

// read reads NVRAM byte i through the ports, as SeaBIOS does (with NMI
// disable set in the index, which must be ignored).
func read(io *hwtest.IOSpace, i uint8) uint8 {
	io.Out(PortIndex, 1, uint32(i)|0x80)
	return uint8(io.In(PortData, 1))
}

// qemuMemory computes the memory bytes the way QEMU's pc_cmos_init does
// for a Xen guest (xen_ram_init splits the RAM at 0xF0000000).
func qemuMemory(ram uint64) map[uint8]uint8 {
	const KiB, MiB = 1024, 1024 * 1024
	below, above := ram, uint64(0)
	if ram >= 0xF0000000 {
		below, above = 0xF0000000, ram-0xF0000000
	}
	m := map[uint8]uint8{}
	val := min(below/KiB, 640)
	m[0x15], m[0x16] = uint8(val), uint8(val>>8)
	val = 0
	if below > 1*MiB {
		val = (below - 1*MiB) / KiB
	}
	if val > 65535 {
		val = 65535
	}
	m[0x17], m[0x18], m[0x30], m[0x31] = uint8(val), uint8(val>>8), uint8(val), uint8(val>>8)
	val = 0
	if below > 16*MiB {
		val = (below - 16*MiB) / (64 * KiB)
	}
	if val > 65535 {
		val = 65535
	}
	m[0x34], m[0x35] = uint8(val), uint8(val>>8)
	val = above / 65536
	m[0x5b], m[0x5c], m[0x5d] = uint8(val), uint8(val>>8), uint8(val>>16)
	return m
}

func TestMemoryLayout(t *testing.T) {
	for _, tc := range []struct {
		name string
		ram  uint64
		want map[uint8]uint8 // hand-computed
	}{
		{"128MiB", 128 << 20, map[uint8]uint8{
			0x15: 0x80, 0x16: 0x02, // 640 KiB
			0x17: 0xff, 0x18: 0xff, 0x30: 0xff, 0x31: 0xff, // 127 MiB in KiB, clamped
			0x34: 0x00, 0x35: 0x07, // 112 MiB / 64 KiB = 0x700
			0x5b: 0, 0x5c: 0, 0x5d: 0,
		}},
		{"6GiB", 6 << 30, map[uint8]uint8{
			0x15: 0x80, 0x16: 0x02,
			0x17: 0xff, 0x18: 0xff, 0x30: 0xff, 0x31: 0xff,
			0x34: 0x00, 0x35: 0xef, // (3840-16) MiB / 64 KiB = 0xef00
			0x5b: 0x00, 0x5c: 0x90, 0x5d: 0x00, // 2304 MiB / 64 KiB = 0x9000
		}},
		{"8MiB", 8 << 20, map[uint8]uint8{
			0x17: 0x00, 0x18: 0x1c, // 7 MiB = 7168 KiB
			0x34: 0, 0x35: 0,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, io := newCMOS(t, Config{RAMBytes: tc.ram, VCPUs: 1})
			q := qemuMemory(tc.ram)
			for reg, want := range tc.want {
				if q[reg] != want {
					t.Fatalf("test bug: QEMU formula gives %#x at %#x, table %#x", q[reg], reg, want)
				}
			}
			for reg, want := range q {
				if got := read(io, reg); got != want {
					t.Errorf("CMOS[%#x] = %#x, want %#x", reg, got, want)
				}
			}
		})
	}
	// max-ram-below-4g (libxl mmio_hole) moves the split.
	c, _ := newCMOS(t, Config{RAMBytes: 4 << 30, MaxRAMBelow4G: 0xC0000000, VCPUs: 1})
	if c.Byte(0x35) != 0xbf || c.Byte(0x34) != 0x00 || c.Byte(0x5c) != 0x40 {
		t.Errorf("mmio hole: 34/35 %#x %#x, 5c %#x", c.Byte(0x34), c.Byte(0x35), c.Byte(0x5c))
	}
}

func TestBootOrder(t *testing.T) {
	for _, tc := range []struct {
		order    string
		nofdchk  bool
		b3d, b38 uint8
	}{
		{"cda", false, 0x32, 0x10},
		{"c", false, 0x02, 0x00},
		{"dc", false, 0x23, 0x00},
		{"nc", false, 0x24, 0x00},
		{"", false, 0x12, 0x30}, // QEMU's default "cad"
		{"bdn", true, 0x31, 0x41},
	} {
		_, io := newCMOS(t, Config{RAMBytes: 1 << 30, VCPUs: 1, BootOrder: tc.order, NoFDBootChk: tc.nofdchk})
		if got := read(io, 0x3d); got != tc.b3d {
			t.Errorf("%q: 0x3d = %#x, want %#x", tc.order, got, tc.b3d)
		}
		if got := read(io, 0x38); got != tc.b38 {
			t.Errorf("%q: 0x38 = %#x, want %#x", tc.order, got, tc.b38)
		}
	}
	for _, bad := range []string{"x", "cdan", "cc", "C", "c d", "\xff"} {
		if _, err := New(Config{RAMBytes: 1 << 30, VCPUs: 1, BootOrder: bad}); err == nil {
			t.Errorf("boot order %q accepted", bad)
		}
	}
}

func TestDisksAndMisc(t *testing.T) {
	big := GeometryForSize(20 << 21) // 20 GiB
	if big != (Disk{Cylinders: 16383, Heads: 16, Sectors: 63, Translation: TransLBA}) {
		t.Fatalf("20 GiB geometry %+v", big)
	}
	small := GeometryForSize(64 << 11) // 64 MiB: 130 cylinders
	if small != (Disk{Cylinders: 130, Heads: 16, Sectors: 63, Translation: TransNone}) {
		t.Fatalf("64 MiB geometry %+v", small)
	}
	if g := GeometryForSize(100); g.Cylinders != 2 {
		t.Fatalf("tiny disk %+v", g)
	}
	c, io := newCMOS(t, Config{RAMBytes: 1 << 30, VCPUs: 4, Disks: [4]*Disk{&big, &small, nil, {Cylinders: 2000, Heads: 16, Sectors: 63}}})
	want := map[uint8]uint8{
		0x10: 0,
		0x12: 0xff,
		0x14: 0x06,
		0x19: 47, 0x1a: 47,
		// unit 0: 16383 cylinders = 0x3fff, 16 heads, 63 sectors
		0x1b: 0xff, 0x1c: 0x3f, 0x1d: 16, 0x1e: 0xff, 0x1f: 0xff, 0x20: 0xc8, 0x21: 0xff, 0x22: 0x3f, 0x23: 63,
		// unit 1: 130 cylinders
		0x24: 130, 0x25: 0, 0x26: 16, 0x29: 0xc8, 0x2a: 130, 0x2c: 63,
		// translation: unit0 LBA(1), unit1 none(0), unit3 auto→LBA(1)
		0x39: 1 | 0<<2 | 1<<6,
		0x5f: 3,
		0x32: 0x20,
	}
	for reg, w := range want {
		if got := read(io, reg); got != w {
			t.Errorf("CMOS[%#x] = %#x, want %#x", reg, got, w)
		}
	}
	// Only a secondary disk: no primary types.
	c, _ = newCMOS(t, Config{RAMBytes: 1 << 30, VCPUs: 1, Disks: [4]*Disk{2: {Cylinders: 100, Heads: 4, Sectors: 32, Translation: TransLarge}}})
	if c.Byte(0x12) != 0 || c.Byte(0x19) != 0 || c.Byte(0x39) != 2<<4 || c.Byte(0x20) != 0 {
		t.Errorf("secondary only: 12=%#x 39=%#x", c.Byte(0x12), c.Byte(0x39))
	}
	// > 255 vCPUs: 0x5f = 0.
	c, _ = newCMOS(t, Config{RAMBytes: 1 << 30, VCPUs: 300})
	if c.Byte(0x5f) != 0 {
		t.Error("0x5f with 300 vCPUs")
	}
	for i, cfg := range []Config{
		{VCPUs: 1},
		{RAMBytes: 1 << 30},
		{RAMBytes: 1 << 30, VCPUs: 1, Disks: [4]*Disk{{Cylinders: 0, Heads: 16, Sectors: 63}}},
		{RAMBytes: 1 << 30, VCPUs: 1, Disks: [4]*Disk{{Cylinders: 10, Heads: 17, Sectors: 63}}},
		{RAMBytes: 1 << 30, VCPUs: 1, Disks: [4]*Disk{{Cylinders: 10, Heads: 16, Sectors: 64}}},
		{RAMBytes: 1 << 30, VCPUs: 1, Disks: [4]*Disk{{Cylinders: 10, Heads: 16, Sectors: 63, Translation: 5}}},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("config %d accepted", i)
		}
	}
}

func TestPortsAndMalformed(t *testing.T) {
	log := hwtest.CaptureLog(t)
	c, io := newCMOS(t, Config{RAMBytes: 1 << 30, VCPUs: 1})
	if !io.HasPorts(0x70, 2) {
		t.Fatal("ports not claimed")
	}
	// hvmloader's cmos_write_memory_size writes the NVRAM.
	io.Out(0x70, 1, 0x34)
	io.Out(0x71, 1, 0x42)
	if c.Byte(0x34) != 0x42 || read(io, 0x34) != 0x42 {
		t.Fatal("NVRAM write")
	}
	if io.In(0x70, 1) != 0xff {
		t.Fatal("index port read")
	}
	// Last byte of the NVRAM, and an index with bit 7 set aliasing it.
	io.Out(0x70, 1, 0xff)
	io.Out(0x71, 1, 0x99)
	if c.Byte(0x7f) != 0x99 {
		t.Fatal("index 0x7f via 0xff")
	}
	before := c.State()
	// Malformed: wrong sizes, wrong ports, clock indexes (Xen's).
	if io.In(0x71, 2) != 0xffff || c.ReadPort(0x72, 1) != 0xff || c.ReadPort(0x71, 4) != 0xffffffff {
		t.Error("bad reads")
	}
	io.Out(0x71, 2, 0x1234)
	io.Out(0x70, 4, 0x10)
	c.WritePort(0x72, 1, 0)
	if c.State() != before {
		t.Fatal("malformed write changed state")
	}
	io.Out(0x70, 1, 0x05)
	if io.In(0x71, 1) != 0xff {
		t.Error("clock index read")
	}
	io.Out(0x71, 1, 1)
	io.Out(0x71, 1, 1)
	if n := len(log.Records()); n != 8 {
		t.Errorf("%d log records, want 8: %q", n, log.Records())
	}
	// Still works.
	if read(io, 0x7f) != 0x99 {
		t.Fatal("broken after malformed accesses")
	}
}

func TestState(t *testing.T) {
	c, io := newCMOS(t, Config{RAMBytes: 6 << 30, VCPUs: 2, BootOrder: "dc"})
	io.Out(0x70, 1, 0x40)
	io.Out(0x71, 1, 0x77)
	st := c.State()
	d, io2 := newCMOS(t, Config{RAMBytes: 1 << 20, VCPUs: 1})
	if err := d.SetState(st); err != nil {
		t.Fatal(err)
	}
	if d.State() != st {
		t.Fatal("state differs")
	}
	if io2.In(0x71, 1) != 0x77 || read(io2, 0x3d) != 0x23 {
		t.Fatal("restored contents")
	}
	if d.SetState(State{Index: 0x80}) == nil {
		t.Fatal("bad index accepted")
	}
}
