package blk

import (
	"errors"
	"strings"
	"testing"
)

func TestParseDriveLibxlDisk(t *testing.T) {
	d, err := ParseDrive("file=/srv/g1.img,if=ide,index=0,media=disk,format=raw,cache=writeback")
	if err != nil {
		t.Fatal(err)
	}
	want := DriveSpec{File: "/srv/g1.img", If: "ide", Index: 0, Media: MediaDisk, Format: "raw", Cache: CacheWriteback}
	if d != want {
		t.Fatalf("got %+v, want %+v", d, want)
	}
}

func TestParseDriveLibxlCDROM(t *testing.T) {
	d, err := ParseDrive("if=none,readonly=on,id=ide-5632,file=/srv/boot.iso,format=raw")
	if err != nil {
		t.Fatal(err)
	}
	if d.If != "none" || !d.ReadOnly || d.ID != "ide-5632" || d.File != "/srv/boot.iso" || d.Index != -1 {
		t.Fatalf("got %+v", d)
	}
	// Empty CD-ROM drive: no file.
	d, err = ParseDrive("if=none,readonly=on,id=ide-5696")
	if err != nil || d.File != "" {
		t.Fatalf("got %+v, %v", d, err)
	}
	if _, err := Open(d); !errors.Is(err, ErrNoMedium) {
		t.Fatalf("Open of an empty drive: %v, want ErrNoMedium", err)
	}
	// media=cdrom implies read-only.
	d, err = ParseDrive("file=x.iso,if=ide,index=2,media=cdrom")
	if err != nil || !d.ReadOnly || d.Media != MediaCDROM || d.Index != 2 {
		t.Fatalf("got %+v, %v", d, err)
	}
}

func TestParseDriveEscapes(t *testing.T) {
	d, err := ParseDrive("file=/srv/a,,b,,,,c.img,index=1,cache=none")
	if err != nil {
		t.Fatal(err)
	}
	if d.File != "/srv/a,b,,c.img" || d.Index != 1 || d.Cache != CacheNone {
		t.Fatalf("got %+v", d)
	}
	// Round trip through String.
	d2, err := ParseDrive(d.String())
	if err != nil || d2 != d {
		t.Fatalf("round trip: %+v, %v (from %q)", d2, err, d.String())
	}
	// A trailing escaped comma stays in the value.
	d, err = ParseDrive("index=0,file=x,,")
	if err != nil || d.File != "x," {
		t.Fatalf("got %+v, %v", d, err)
	}
}

func TestParseDriveCacheModes(t *testing.T) {
	for _, c := range []struct {
		s    string
		m    CacheMode
		dir  bool
		sync bool
	}{
		{"writeback", CacheWriteback, false, false},
		{"none", CacheNone, true, false},
		{"off", CacheNone, true, false},
		{"writethrough", CacheWritethrough, false, true},
		{"directsync", CacheDirectSync, true, true},
		{"unsafe", CacheUnsafe, false, false},
	} {
		d, err := ParseDrive("file=f,index=0,cache=" + c.s)
		if err != nil {
			t.Fatalf("%s: %v", c.s, err)
		}
		if d.Cache != c.m || d.Cache.Direct() != c.dir || d.Cache.Sync() != c.sync {
			t.Errorf("%s: got %v direct=%v sync=%v", c.s, d.Cache, d.Cache.Direct(), d.Cache.Sync())
		}
	}
}

func TestParseDriveBusUnit(t *testing.T) {
	d, err := ParseDrive("file=f,bus=1,unit=1")
	if err != nil || d.Index != 3 {
		t.Fatalf("got %+v, %v", d, err)
	}
	d, err = ParseDrive("file=f")
	if err != nil || d.Index != -1 || d.If != "ide" || d.Format != "raw" {
		t.Fatalf("defaults: %+v, %v", d, err)
	}
}

func TestParseDriveErrors(t *testing.T) {
	for _, c := range []struct{ arg, want string }{
		{"file=f,format=qcow2", "format=qcow2"},
		{"file=f,format=vpc", "unsupported image format"},
		{"file=f,aio=native,discard=unmap", "unknown option(s) aio, discard"},
		{"file=f,cache=bogus", "invalid cache="},
		{"file=f,index=4", "out of range"},
		{"file=f,index=x", "invalid index="},
		{"file=f,media=floppy", "invalid media="},
		{"file=f,if=virtio", "if=virtio is not supported"},
		{"file=f,readonly=maybe", "invalid readonly="},
		{"file=f,index=0,bus=1", "cannot be combined"},
		{"file=f,bus=2", "not an IDE unit"},
		{"index=0,media=disk", "needs file="},
		{"", "empty option string"},
		{",file=f", "empty option name"},
		{"file=f,", "trailing comma"},
		{"file=f,=x", "empty option name"},
	} {
		_, err := ParseDrive(c.arg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseDrive(%q) = %v, want an error containing %q", c.arg, err, c.want)
		}
	}
	_, err := ParseDrive("file=f,format=qcow2")
	if !errors.Is(err, ErrUnsupportedFormat) {
		t.Errorf("format error does not wrap ErrUnsupportedFormat: %v", err)
	}
}

func TestSplitOptionsBareKey(t *testing.T) {
	opts, err := SplitOptions("file=a,readonly,id=x")
	if err != nil {
		t.Fatal(err)
	}
	want := []Option{{"file", "a"}, {"readonly", "on"}, {"id", "x"}}
	if len(opts) != len(want) {
		t.Fatalf("got %v", opts)
	}
	for i := range want {
		if opts[i] != want[i] {
			t.Fatalf("got %v, want %v", opts, want)
		}
	}
}

func FuzzParseDrive(f *testing.F) {
	f.Add("file=/srv/g1.img,if=ide,index=0,media=disk,format=raw,cache=writeback")
	f.Add("if=none,readonly=on,id=ide-5632,file=a,,b")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDrive(s)
		if err != nil {
			return
		}
		d2, err := ParseDrive(d.String())
		if err != nil || d2 != d {
			t.Fatalf("round trip of %q: %+v vs %+v (%v)", s, d, d2, err)
		}
	})
}
