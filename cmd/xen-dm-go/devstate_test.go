package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
)

func TestDevstateSubcommand(t *testing.T) {
	b, err := devstate.Encode(&devstate.State{Header: devstate.Header{
		Producer: "xen-dm-go test", SavedAt: time.Unix(1700000000, 0).UTC(), DomID: 3, Machine: "pc", VCPUs: 1, RAMBytes: 1 << 27,
	}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	good := filepath.Join(dir, "qemu-save.3")
	os.WriteFile(good, b, 0o600)
	var out, errb bytes.Buffer
	if rc := run([]string{"xen-dm-go", "devstate", good}, nil, &out, &errb); rc != 0 ||
		!strings.Contains(out.String(), "HEAD") || !strings.Contains(out.String(), `"machine": "pc"`) {
		t.Fatalf("rc %d out %s err %s", rc, out.String(), errb.String())
	}
	bad := filepath.Join(dir, "qemu-save.4")
	os.WriteFile(bad, b[:len(b)-1], 0o600)
	out.Reset()
	errb.Reset()
	if rc := run([]string{"xen-dm-go", "devstate", bad}, nil, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "truncated") {
		t.Fatalf("truncated: rc %d err %s", rc, errb.String())
	}
	if rc := run([]string{"xen-dm-go", "devstate"}, nil, &out, &errb); rc != 2 {
		t.Fatalf("usage: rc %d", rc)
	}
}
