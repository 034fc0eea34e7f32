package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

func TestTrackerCheckArgs(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, make([]byte, 1<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, err := blk.ServeTracker(blk.TrackerSocketPath(dir, 3), blk.NewTracker(blk.TrackerConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	_, privcmdErr := os.Stat(xen.PrivcmdPath)
	for _, tc := range []struct {
		args []string
		rc   int
		err  string
	}{
		{[]string{"--disk", img}, 2, "usage:"},                                      // no domid
		{[]string{"--domid", "3"}, 2, "usage:"},                                     // no disk
		{[]string{"--domid", "3", "--disk", "200=" + img}, 2, "disk index"},         // bad index
		{[]string{"--domid", "3", "--disk", img, "--region-mib", "3"}, 2, "usage:"}, // not a power of two
		{[]string{"--domid", "3", "--disk", img, "extra"}, 2, "usage:"},             // stray argument
		{[]string{"--domid", "3", "--pages", "16", "--disk", "/nonexistent"}, 1, "dom 3 disk 0: open /nonexistent"},
		{[]string{"--domid", "4", "--pages", "16", "--disk", img, "--run-dir", dir}, 1, "xen-dm-go-tracker-4.sock"},
	} {
		var out, errb bytes.Buffer
		rc := run(append([]string{"xen-dm-go", "tracker-check"}, tc.args...), strings.NewReader(""), &out, &errb)
		if rc != tc.rc || !strings.Contains(errb.String(), tc.err) {
			t.Errorf("%q: rc %d (want %d), stderr %q (want %q)", tc.args, rc, tc.rc, errb.String(), tc.err)
		}
	}
	if privcmdErr == nil {
		t.Skip("a Xen dom0: the check itself is exercised by the lab (TestLabTracker)")
	}
	var out, errb bytes.Buffer
	rc := run([]string{"xen-dm-go", "tracker-check", "--domid", "3", "--pages", "16", "--disk", "0=" + img, "--run-dir", dir},
		strings.NewReader(""), &out, &errb)
	if rc != 1 || !strings.Contains(errb.String(), "dom 3: xen: open /dev/xen/privcmd") {
		t.Errorf("without privcmd: rc %d stderr %q", rc, errb.String())
	}
}

func TestDiskFlags(t *testing.T) {
	var d diskFlags
	for _, v := range []string{"/a.img", "2=/b=c.img"} {
		if err := d.Set(v); err != nil {
			t.Fatal(err)
		}
	}
	if len(d) != 2 || d[0].index != 0 || d[0].path != "/a.img" || d[1].index != 2 || d[1].path != "/b=c.img" {
		t.Fatalf("%+v", d)
	}
	for _, v := range []string{"", "1=", "x=/a", "-1=/a", "128=/a"} {
		if err := d.Set(v); err == nil {
			t.Errorf("%q accepted", v)
		}
	}
}
