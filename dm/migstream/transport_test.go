package migstream_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream/streamtest"
)

// The test binary doubles as a fake `xl migrate-receive` (XL_HELPER=receive):
// it writes the banner, reads a stream up to the libxl END, writes "ready",
// reads GO, writes the report, and saves what it read and its arguments.
func TestMain(m *testing.M) {
	switch os.Getenv("XL_HELPER") {
	case "receive":
		os.Exit(fakeXLReceive())
	case "fail":
		fmt.Fprintln(os.Stderr, "fake xl: failing on purpose")
		os.Exit(3)
	}
	// Helpers built with -race would otherwise sleep 1 s at exit.
	os.Setenv("GORACE", "atexit_sleep_ms=0")
	os.Exit(m.Run())
}

func fakeXLReceive() int {
	out := os.Getenv("XL_HELPER_OUT")
	os.WriteFile(out+".args", []byte(strings.Join(os.Args[1:], " ")), 0o644)
	os.Stdout.WriteString(ms.MsgBanner)
	var got bytes.Buffer
	d := ms.NewDecoder(io.TeeReader(os.Stdin, &got))
	for {
		it, err := d.Next()
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake xl: stream:", err)
			return 1
		}
		if it.IsLibxl(ms.LibxlEnd) {
			break
		}
	}
	os.WriteFile(out, got.Bytes(), 0o644)
	os.Stdout.WriteString(ms.MsgReady)
	goMsg := make([]byte, len(ms.MsgGo))
	if _, err := io.ReadFull(os.Stdin, goMsg); err != nil || string(goMsg) != ms.MsgGo {
		fmt.Fprintln(os.Stderr, "fake xl: no GO:", err)
		return 1
	}
	os.Stdout.WriteString(ms.MsgReport + "\x00")
	return 0
}

// fakeXLSend plays `xl migrate` on the sending side of a transport: it
// waits for the banner, writes the stream, waits for "ready", says GO and
// reads the report.
func fakeXLSend(stream []byte, toTransport io.WriteCloser, fromTransport io.Reader) error {
	defer toTransport.Close()
	expect := func(msg string) error {
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(fromTransport, b); err != nil {
			return fmt.Errorf("waiting for %q: %w", msg, err)
		}
		if string(b) != msg {
			return fmt.Errorf("got %q, want %q", b, msg)
		}
		return nil
	}
	if err := expect(ms.MsgBanner); err != nil {
		return err
	}
	if _, err := toTransport.Write(stream); err != nil {
		return err
	}
	if err := expect(ms.MsgReady); err != nil {
		return err
	}
	if _, err := io.WriteString(toTransport, ms.MsgGo); err != nil {
		return err
	}
	return expect(ms.MsgReport + "\x00")
}

// trackerSocket serves a blk.Tracker holding the references of s.
func trackerSocket(t testing.TB, s *streamtest.Stream) string {
	bt := blk.NewTracker(blk.TrackerConfig{})
	for pfn, r := range s.Tracker.Refs {
		bt.DiskToGuest(bt.Begin(), r.Disk, int64(r.Sector)*512, []blk.Segment{{GPA: pfn << 12, Len: ms.PageSize}},
			streamtest.Block(r.Disk, r.Sector/8))
	}
	path := filepath.Join(t.TempDir(), "tracker.sock")
	srv, err := blk.ServeTracker(path, bt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return path
}

// fakeReceiver makes the test binary, run as a command, the fake `xl
// migrate-receive`; it returns where that saves the stream, and the binary.
func fakeReceiver(t *testing.T) (out, self string) {
	out = filepath.Join(t.TempDir(), "received")
	t.Setenv("XL_HELPER", "receive")
	t.Setenv("XL_HELPER_OUT", out)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return out, self
}

// syncBuffer is a goroutine-safe stderr.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func statsOf(t *testing.T, stderr string) ms.StatsLine {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	var sl ms.StatsLine
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &sl); err != nil {
		t.Fatalf("last stderr line is not the JSON stats: %v\n%s", err, stderr)
	}
	return sl
}

// runSend runs SendMain between a fake xl sender and whatever args name.
func runSend(t *testing.T, stream []byte, args []string) (code int, stderr string, sendErr error) {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	var se syncBuffer
	done := make(chan int)
	go func() {
		done <- ms.SendMain(args, inR, outW, &se)
	}()
	sendDone := make(chan error, 1)
	go func() { sendDone <- fakeXLSend(stream, inW, outR) }()
	select {
	case code = <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("migrate-send did not finish\n%s", se.String())
	}
	// What the exit of the migrate-send process does to xl's pipes.
	inR.CloseWithError(io.ErrClosedPipe)
	outW.Close()
	sendErr = <-sendDone
	return code, se.String(), sendErr
}

func expectedCompact(t *testing.T, s *streamtest.Stream) []byte {
	want, _ := filter(t, s.Bytes, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: s.Tracker, Zero: true}})
	return want[:len(want)-len(ms.MsgGo)]
}

func TestSendExec(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 31, Pages: 64, Migrate: true, Zero: 0.2})
	sock := trackerSocket(t, s)
	out, self := fakeReceiver(t)
	for _, mode := range []struct {
		name string
		args []string
	}{
		{"exec", []string{"--tracker", sock, "--", self, "migrate-receive"}},
		{"local", []string{"--tracker", sock, "--local", "--", "localhost", self, "-t", "migrate-receive", "-e"}},
		{"ssh", []string{"--tracker", sock, "--ssh", self + " -ssh-host", "--", "host2", "xl", "migrate-receive"}},
		{"rate", []string{"--tracker", sock, "--rate", "200MiB", "--progress", "5ms", "--", self}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			os.Remove(out)
			code, stderr, err := runSend(t, s.Bytes[:len(s.Bytes)-len(ms.MsgGo)], mode.args)
			if err != nil || code != 0 {
				t.Fatalf("code %d, sender: %v\n%s", code, err, stderr)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, expectedCompact(t, s)) {
				t.Fatalf("receiver got %d bytes, not the compacted stream", len(got))
			}
			sl := statsOf(t, stderr)
			if !sl.OK || sl.Elided == 0 || sl.ElidedFinal == 0 || sl.BytesOut >= sl.BytesIn || sl.Tracker != sock ||
				sl.ElidedDisk == 0 || sl.ElidedZero == 0 || sl.Elided != sl.ElidedDisk+sl.ElidedZero ||
				sl.ElidedFinalDisk == 0 || sl.ElidedFinalZero == 0 || sl.ElidedFinal != sl.ElidedFinalDisk+sl.ElidedFinalZero {
				t.Fatalf("stats %+v", sl)
			}
			// The keys as the lab scenario reads them (grep -o '"KEY":[0-9.]*').
			for _, k := range []string{"bytes_in", "bytes_out", "pages_elided", "elided_final", "pages_elided_disk", "pages_elided_zero",
				"elided_final_disk", "elided_final_zero"} {
				if !regexp.MustCompile(`"` + k + `":[0-9.]+`).MatchString(stderr) {
					t.Errorf("stats line lacks %q", k)
				}
			}
			for _, want := range []string{"receiver: banner", "receiver: domain received", "sender: domain is yours", "receiver: unpause report", "receiver: status 0"} {
				if !strings.Contains(stderr, want) {
					t.Errorf("stderr lacks %q:\n%s", want, stderr)
				}
			}
			if mode.name == "local" {
				args, _ := os.ReadFile(out + ".args")
				if string(args) != "-t migrate-receive -e" {
					t.Errorf("local command args %q", args)
				}
			}
			if mode.name == "ssh" {
				args, _ := os.ReadFile(out + ".args")
				if string(args) != "-ssh-host host2 xl migrate-receive" {
					t.Errorf("ssh command args %q", args)
				}
			}
		})
	}
}

// --debug is implied by migrate-receive -d in xl's rune.
func TestSendDebugFromRune(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 32, Pages: 64, Migrate: true, Verify: true, Zero: 0.2})
	sock := trackerSocket(t, s)
	out, self := fakeReceiver(t)
	code, stderr, err := runSend(t, s.Bytes[:len(s.Bytes)-len(ms.MsgGo)],
		[]string{"--tracker", sock, "--local", "--", "localhost", self, "migrate-receive", "-d"})
	if err != nil || code != 0 || !strings.Contains(stderr, "debug mode") {
		t.Fatalf("code %d %v\n%s", code, err, stderr)
	}
	got, _ := os.ReadFile(out)
	want, _ := filter(t, s.Bytes, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: s.Tracker, Zero: true, Debug: true}})
	if !bytes.Equal(got, want[:len(want)-len(ms.MsgGo)]) {
		t.Fatal("not the debug-mode compaction")
	}
}

func TestSendReceiveTCP(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 33, Pages: 64, Migrate: true})
	sock := trackerSocket(t, s)
	out, self := fakeReceiver(t)

	rxErrR, rxErrW := io.Pipe()
	rxDone := make(chan int)
	go func() {
		rxDone <- ms.ReceiveMain([]string{"--listen", "127.0.0.1:0", "--xl", self, "--check", "--accept-timeout", "20s"}, nil, nil, rxErrW)
		rxErrW.Close()
	}()
	var rxLog syncBuffer
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(rxErrR)
		for sc.Scan() {
			rxLog.Write([]byte(sc.Text() + "\n"))
			if a, ok := strings.CutPrefix(sc.Text(), "xen-dm-go migrate-receive: listening on "); ok {
				addr <- a
			}
		}
	}()
	var a string
	select {
	case a = <-addr:
	case <-time.After(10 * time.Second):
		t.Fatal("receiver did not listen")
	}
	host, port, _ := strings.Cut(a, ":")
	// As xl runs it: exec <-s> <host> xl -t migrate-receive -p
	code, stderr, err := runSend(t, s.Bytes[:len(s.Bytes)-len(ms.MsgGo)],
		[]string{"--tracker", sock, "--connect", port, "--", host, "xl", "-t", "migrate-receive", "-p"})
	if err != nil || code != 0 {
		t.Fatalf("code %d %v\n%s\nreceiver:\n%s", code, err, stderr, rxLog.String())
	}
	if rc := <-rxDone; rc != 0 {
		t.Fatalf("receiver exit %d\n%s", rc, rxLog.String())
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, expectedCompact(t, s)) {
		t.Fatal("receiver got a different stream")
	}
	if args, _ := os.ReadFile(out + ".args"); string(args) != "-t migrate-receive -p" {
		t.Fatalf("xl args %q", args)
	}
	rsl := statsOf(t, rxLog.String())
	if !rsl.OK || rsl.BytesIn != int64(len(got))+int64(len(ms.MsgGo)) {
		t.Fatalf("receiver stats %+v", rsl)
	}
	for _, want := range []string{"xl: banner", "sender: domain is yours", "xl: status 0"} {
		if !strings.Contains(rxLog.String(), want) {
			t.Errorf("receiver log lacks %q", want)
		}
	}
}

// A receiver that dies before its banner: the sender's xl sees the back
// channel close, and migrate-send fails.
func TestSendReceiverFails(t *testing.T) {
	t.Setenv("XL_HELPER", "fail")
	self, _ := os.Executable()
	code, stderr, err := runSend(t, []byte("unused"), []string{"--no-elide", "--", self})
	if code != 3 || err == nil || !strings.Contains(err.Error(), "waiting for") {
		t.Fatalf("code %d, sender %v\n%s", code, err, stderr)
	}
	if sl := statsOf(t, stderr); sl.OK || sl.ExitCode != 3 {
		t.Fatalf("stats %+v", sl)
	}
}

// A corrupt stream aborts the transport; the receiver sees it truncated.
func TestSendCorruptStream(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 34})
	bad := bytes.Clone(s.Bytes)
	hdr := bytes.Index(bad, []byte{0x10, 0, 0, 0, 0, 0, 0, 0}) // STATIC_DATA_END record
	bad[hdr] = 0x7f
	out, self := fakeReceiver(t)
	code, stderr, err := runSend(t, bad, []string{"--no-elide", "--", self})
	if code == 0 || err == nil {
		t.Fatalf("code %d err %v", code, err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("the receiver got a complete stream")
	}
	if sl := statsOf(t, stderr); sl.OK || !strings.Contains(sl.Error, "unknown mandatory record type 0x0000007f") {
		t.Fatalf("stats %+v\n%s", sl, stderr)
	}
}

// Without a reachable tracker migrate-send passes the stream unchanged (an
// error with --require-tracker); --no-elide always does.
func TestSendNoTracker(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 35, Pages: 64, Migrate: true, Zero: 0.2})
	in := s.Bytes[:len(s.Bytes)-len(ms.MsgGo)]
	out, self := fakeReceiver(t)
	missing := filepath.Join(t.TempDir(), "nope.sock")
	code, stderr, err := runSend(t, in, []string{"--tracker", missing, "--", self})
	if code != 0 || err != nil {
		t.Fatalf("code %d %v\n%s", code, err, stderr)
	}
	// No tracker: the domain's device model may not be xen-dm-go, which alone can fill
	// elided pages, so nothing is elided, not even all-zero pages.
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, in) || !strings.Contains(stderr, "sending pages unchanged") {
		t.Fatalf("without a tracker: stream changed %v\n%s", !bytes.Equal(got, in), stderr)
	}
	if sl := statsOf(t, stderr); sl.TrackerError == "" || sl.Elided != 0 || sl.ElidedFinal != 0 {
		t.Fatalf("stats %+v", sl)
	}
	os.Remove(out)
	code, stderr, err = runSend(t, in, []string{"--no-elide", "--", self})
	if got, _ := os.ReadFile(out); code != 0 || err != nil || !bytes.Equal(got, in) {
		t.Fatalf("--no-elide: code %d %v, stream changed %v\n%s", code, err, !bytes.Equal(got, in), stderr)
	}
	if sl := statsOf(t, stderr); sl.Elided != 0 {
		t.Fatalf("--no-elide stats %+v", sl)
	}
	var se bytes.Buffer
	if code := ms.SendMain([]string{"--tracker", missing, "--require-tracker", "--", self}, bytes.NewReader(nil), io.Discard, &se); code != 1 {
		t.Fatalf("--require-tracker: code %d\n%s", code, se.String())
	}
}

// `stream compact`, `inspect`, `verify` on files.
func TestStreamCommands(t *testing.T) {
	s := streamtest.Generate(streamtest.Config{Seed: 36, Verify: true, Zero: 0.1})
	sock := trackerSocket(t, s)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.xl"), filepath.Join(dir, "out.xl")
	os.WriteFile(in, s.Bytes, 0o644)
	var so, se bytes.Buffer
	if code := ms.StreamMain([]string{"compact", in, out, "--tracker", sock, "--check"}, nil, &so, &se); code != 0 {
		t.Fatalf("compact: %d\n%s", code, se.String())
	}
	got, _ := os.ReadFile(out)
	want, _ := filter(t, s.Bytes, ms.FilterOptions{ElideOptions: ms.ElideOptions{Tracker: s.Tracker, Zero: true}})
	if !bytes.Equal(got, want) {
		t.Fatal("compact output differs")
	}
	if sl := statsOf(t, se.String()); !sl.OK || sl.ElidedDisk == 0 || sl.ElidedZero == 0 {
		t.Fatalf("stats %+v", sl)
	}
	so.Reset()
	if code := ms.StreamMain([]string{"inspect", out}, nil, &so, &se); code != 0 {
		t.Fatalf("inspect: %d\n%s", code, se.String())
	}
	for _, want := range []string{"xl header", `name "streamtest"`, "libxc header: version 3, x86 HVM", "libxc PAGE_DATA ×", "XALLOC",
		"libxc VERIFY record", "STORE_PFN=0xfeffc", "PAGEREFS v2:", "page references (", " zero)", "verify-stream-v2 rules: ok"} {
		if !strings.Contains(so.String(), want) {
			t.Errorf("inspect output lacks %q:\n%s", want, so.String())
		}
	}
	so.Reset()
	if code := ms.StreamMain([]string{"inspect", "-v", "-"}, bytes.NewReader(s.Bytes), &so, &se); code != 0 || strings.Count(so.String(), "PAGE_DATA ×1:") != len(s.Records) {
		t.Fatalf("inspect -v: %d\n%s", code, so.String())
	}
	so.Reset()
	if code := ms.StreamMain([]string{"verify", out}, nil, &so, &se); code != 0 || !strings.HasPrefix(so.String(), "ok:") {
		t.Fatalf("verify: %d %s", code, so.String())
	}
	if code := ms.StreamMain([]string{"verify", "-"}, bytes.NewReader(s.Bytes[:1000]), &so, &se); code != 1 {
		t.Fatalf("verify truncated: %d", code)
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]float64{
		"": 0, "125M": 125e6, "1Gbit": 125e6, "10MiB/s": 10 << 20, "800kb": 100e3, "42": 42, "1.5GB/s": 1.5e9,
	} {
		got, err := ms.ParseRate(in)
		if err != nil || got != want {
			t.Errorf("ParseRate(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"fast", "-1M", "1X"} {
		if _, err := ms.ParseRate(bad); err == nil {
			t.Errorf("ParseRate(%q) accepted", bad)
		}
	}
}

func TestRateWriter(t *testing.T) {
	var buf bytes.Buffer
	rw := &ms.RateWriter{W: &buf, BPS: 10 << 20}
	start := time.Now()
	for range 8 {
		rw.Write(make([]byte, 256<<10))
	}
	// 2 MiB at 10 MiB/s: 0.2 s.
	if el := time.Since(start); el < 150*time.Millisecond || el > 2*time.Second || buf.Len() != 2<<20 {
		t.Fatalf("2 MiB at 10 MiB/s took %v (%d bytes)", el, buf.Len())
	}
}
