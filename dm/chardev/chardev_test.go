package chardev

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var quiet = slog.New(slog.DiscardHandler)

type sink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *sink) input(p []byte) { s.mu.Lock(); s.buf.Write(p); s.mu.Unlock() }
func (s *sink) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.buf.String() }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPTY(t *testing.T) {
	b, err := Open("pty", Options{Log: quiet, Label: "serial0"})
	if err != nil {
		t.Skipf("no ptys here: %v", err)
	}
	defer b.Close()
	name, ok := strings.CutPrefix(b.Filename(), "pty:")
	if !ok || !strings.HasPrefix(name, "/dev/pts/") {
		t.Fatalf("filename %q", b.Filename())
	}
	var in sink
	b.Start(in.input)
	// Output before anyone attached must not come back as input (echo).
	b.Write([]byte("early\r\n"))
	time.Sleep(50 * time.Millisecond)
	if in.String() != "" {
		t.Fatalf("echoed input %q", in.String())
	}

	slave, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	b.Write([]byte("hello\n"))
	got := make([]byte, 0, 64)
	slave.SetReadDeadline(time.Now().Add(5 * time.Second))
	for !bytes.Contains(got, []byte("hello\n")) {
		buf := make([]byte, 64)
		n, err := slave.Read(buf)
		if err != nil {
			t.Fatalf("slave read: %v (got %q)", err, got)
		}
		got = append(got, buf[:n]...)
	}
	// Raw mode: "\n" is not turned into "\r\n".
	if bytes.Contains(got, []byte("hello\r\n")) {
		t.Fatalf("output post-processed: %q", got)
	}
	slave.Write([]byte("typed\r"))
	waitFor(t, "input", func() bool { return in.String() == "typed\r" })

	// Detach and reattach (xl console twice): input still flows.
	slave.Close()
	time.Sleep(20 * time.Millisecond)
	slave2, err := os.OpenFile(name, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave2.Close()
	slave2.Write([]byte("again"))
	waitFor(t, "input after reattach", func() bool { return strings.HasSuffix(in.String(), "again") })
}

func TestPTYWritesNeverBlock(t *testing.T) {
	b, err := Open("pty", Options{Log: quiet, BufferSize: 4096})
	if err != nil {
		t.Skipf("no ptys here: %v", err)
	}
	defer b.Close()
	chunk := bytes.Repeat([]byte("x"), 4096)
	start := time.Now()
	for i := 0; i < 256; i++ { // 1 MiB, nobody reading
		if n, err := b.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("write %d %v", n, err)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("writes took %v", d)
	}
	if b.(*stream).Dropped() == 0 {
		t.Fatal("nothing dropped")
	}
	done := make(chan struct{})
	go func() { b.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked")
	}
}

func TestFileAndLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serial.log")
	b, err := Open("file:"+path, Options{Log: quiet, OutputLimit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if b.Filename() != "file:"+path {
		t.Fatalf("filename %q", b.Filename())
	}
	b.Start(func([]byte) { t.Error("file backend produced input") })
	b.Write([]byte("0123456"))
	b.Write([]byte("789abcdef"))
	b.Close()
	got, _ := os.ReadFile(path)
	if string(got) != "0123456789" {
		t.Fatalf("file has %q", got)
	}
	if _, err := Open("file:", Options{Log: quiet}); err == nil {
		t.Fatal("empty path accepted")
	}
}

func TestNullStdioAndErrors(t *testing.T) {
	b, err := Open("null", Options{Log: quiet})
	if err != nil || b.Filename() != "null" {
		t.Fatal(err)
	}
	b.Write([]byte("x"))
	b.Start(nil)
	b.Close()

	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	b, err = Open("stdio", Options{Log: quiet, Stdin: devnull, Stdout: devnull})
	if err != nil || b.Filename() != "stdio" {
		t.Fatalf("stdio: %v %v", b, err)
	}
	if n, _ := b.Write([]byte("abc")); n != 3 {
		t.Fatal("write")
	}
	b.Close()

	for _, spec := range []string{"tcp:127.0.0.1:4555", "unix:/tmp/x", "vc", "mon:stdio", "none"} {
		if _, err := Open(spec, Options{Log: quiet}); err == nil {
			t.Errorf("%s accepted", spec)
		}
	}
	if _, err := Open("/dev/null", Options{Log: quiet}); err == nil || !strings.Contains(err.Error(), "not a terminal") {
		t.Errorf("/dev/null as tty: %v", err)
	}
	if !IsNone("none") || IsNone("pty") {
		t.Error("IsNone")
	}
	t.Setenv("XEN_QEMU_CONSOLE_LIMIT", "1048576")
	if ConsoleLimitFromEnv() != 1<<20 {
		t.Error("console limit env")
	}
}
