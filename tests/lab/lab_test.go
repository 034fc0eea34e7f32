package lab

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseEnv(t *testing.T) {
	m := parseEnv("# comment\nA=1\nB='two words'\nC=\"x=y\"\nA=3\n\nnot a pair\n")
	if m["A"] != "3" || m["B"] != "two words" || m["C"] != "x=y" || len(m) != 3 {
		t.Fatalf("parseEnv: %v", m)
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote(`it's`); got != `'it'\''s'` {
		t.Fatalf("shellQuote: %s", got)
	}
}

func TestDiagnose(t *testing.T) {
	dir := t.TempDir()
	res := filepath.Join(dir, "results")
	write := func(name, s string) {
		p := filepath.Join(res, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("status.env", "rc=1\ntimed_out=0\nscenario_seconds=42\n")
	write("failures.txt", "'return 1' failed (status 1) at scenario.sh:4: timeout: g1 did not reach round 9\n")
	write("run.log", "[xenlab +1s] hello\n[xenlab +2s] ERROR: timeout: g1 did not reach round 9\n")
	write("guest-g1.log", "10.0 XENLAB-GUEST round=3 ok=1 errors=0\n")
	write("xl/01-create.log", "libxl: error: libxl_dm.c:1: something broke\nlibxl: debug: fine\n")
	write("var-log-xen/qemu-dm-g1.log", "char device redirected to /dev/pts/1 (label serial0)\n")
	if err := os.WriteFile(filepath.Join(dir, "serial.log"), []byte("(XEN) ok\n(XEN) Panic on CPU 0:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := loadResult(dir)
	if r.Passed() {
		t.Fatal("Passed() with rc=1")
	}
	d := r.Diagnose(errors.New("exit status 1"))
	for _, want := range []string{"SCENARIO FAILED with status 1", "did not reach round 9", "Panic on CPU 0",
		"libxl: error", "XENLAB-GUEST round=3", "qemu-dm-g1.log", "run directory: " + dir} {
		if !strings.Contains(d, want) {
			t.Errorf("diagnosis lacks %q:\n%s", want, d)
		}
	}
	if strings.Contains(d, "libxl: debug: fine") {
		t.Errorf("diagnosis has xl debug noise:\n%s", d)
	}

	// No status at all: the lab (Xen/dom0) failed.
	os.Remove(filepath.Join(res, "status.env"))
	if err := os.WriteFile(filepath.Join(dir, "host-status.env"), []byte("qemu_rc=0\nqemu_seconds=20\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if d := loadResult(dir).Diagnose(nil); !strings.Contains(d, "LAB FAILED: no scenario status came back") {
		t.Errorf("diagnosis without status:\n%s", d)
	}
}
