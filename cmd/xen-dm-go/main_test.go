package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm"
)

func TestDispatch(t *testing.T) {
	var out, errb bytes.Buffer
	if rc := runT([]string{"xen-dm-go", "--version"}, &out, &errb); rc != 0 || !strings.HasPrefix(out.String(), "QEMU emulator version 7.2.0 (xen-dm-go") {
		t.Fatalf("--version: rc %d out %q", rc, out.String())
	}
	out.Reset()
	if rc := runT([]string{"/usr/local/bin/xen-dm-go", "--help"}, &out, &errb); rc != 0 || !strings.Contains(out.String(), "-xen-domid ARG") ||
		!strings.Contains(out.String(), "migrate-send") {
		t.Fatalf("--help: rc %d out %q", rc, out.String())
	}
	errb.Reset()
	if rc := runT([]string{"xen-dm-go", "-xen-domid", "3", "-machine", "xenfv", "-hda", "x"}, &out, &errb); rc != 1 ||
		!strings.Contains(errb.String(), "-hda: unknown option") {
		t.Fatalf("unknown option: rc %d err %q", rc, errb.String())
	}
	errb.Reset()
	if rc := runT([]string{"xen-dm-go", "stream", "inspect", "/nonexistent"}, &out, &errb); rc == 0 || errb.Len() == 0 {
		t.Fatalf("stream subcommand: rc %d err %q", rc, errb.String())
	}
}

func runT(argv []string, stdout, stderr *bytes.Buffer) int {
	return run(argv, strings.NewReader(""), stdout, stderr)
}

// The device model loads incoming states with the eager filler for elided
// pages: a state carrying page references is filled, not refused.
func TestDeviceModelOptions(t *testing.T) {
	o := deviceModelOptions(slog.New(slog.DiscardHandler))
	ds, ok := o.DeviceState.(*dm.DevState)
	if !ok || ds.PageRefs == nil || o.TrackerDir != "/var/run/xen" {
		t.Fatalf("options %+v", o)
	}
}
