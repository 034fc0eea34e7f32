// Package lab runs scenarios in the xen-dm-go lab: real Xen 4.17 with a Debian dom0, booted
// inside qemu-system-x86_64 (TCG) from artifacts built out of Debian packages only
// (scripts/lab.sh, docs/lab.md).
//
// A test gets the lab with Ensure, which builds or reuses the cached artifacts, then runs a
// Scenario: a bash script executed in the dom0 after /xfer/lib.sh is sourced, with the files
// it needs copied onto the "xfer" disk. Everything the dom0 writes below /xfer/results comes
// back as the Result. A failed or hung scenario, a Xen or dom0 crash, or a missing result fails
// the test with the log lines that matter.
//
//	l := lab.Ensure(t)
//	dm := l.BuildGo(t, "./cmd/xen-dm-go")
//	res := l.Run(t, lab.Scenario{
//		Name:   "boot",
//		Script: `start_daemons; mkcfg g1 /xfer/bin/xen-dm-go; guest_create g1; wait_guest_round g1 2 600`,
//		Files:  map[string]string{"bin/xen-dm-go": dm},
//	})
//	t.Log(res.Values["xen_version"], res.Log("guest-g1.log"))
//
// Lab runs are serialized machine-wide by a flock in the cache directory (taken by
// scripts/lab.sh). Setting XENLAB_SKIP=1 skips lab tests; without it a lab that cannot run
// fails the test.
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Hypervisors a Scenario can boot.
const (
	Stock  = "stock"  // Debian's xen-hypervisor-4.17-amd64 (HAP only)
	Paging = "paging" // rebuilt from Debian's source with SHADOW_PAGING and MEM_PAGING
)

// Lab is a built lab: the repository it belongs to and its artifact cache.
type Lab struct {
	Root  string            // repository root (holds scripts/lab.sh)
	Cache string            // artifact cache, $XENLAB_CACHE (default /var/cache/xen-dm-go/lab)
	Paths map[string]string // artifact directories: ROOTFS, XEN_STOCK, XEN_PAGING, GUEST
}

// Scenario is one boot of the lab.
type Scenario struct {
	// Name identifies the run (in its directory name and in logs).
	Name string
	// Hypervisor is Stock (default) or Paging.
	Hypervisor string
	// Script is bash run in dom0 by /xfer/run.sh under `set -eEuo pipefail`, after /xfer/lib.sh
	// (start_daemons, mkcfg, guest_create, capture_serial, wait_guest_round, timed, result, ...)
	// has been sourced. The working directory is /xfer.
	Script string
	// Files maps paths on the xfer disk (relative to /xfer) to files on the host.
	// Executable host files stay executable.
	Files map[string]string
	// Env is exported to Script (written to /xfer/env).
	Env map[string]string
	// Timeout bounds Script in dom0 (a watchdog kills it). The boot, log collection and power-off
	// come on top. Default 20 minutes.
	Timeout time.Duration
	// XenArgs and Dom0Args are appended to the Xen and dom0 kernel command lines
	// (Dom0Args must not contain commas).
	XenArgs, Dom0Args string
}

// Result is what came back from a run.
type Result struct {
	RunDir   string            // the run directory on the host (xfer/, serial.log, results/, ...)
	Dir      string            // results: the dom0's /xfer/results, copied back
	Serial   string            // the Xen serial console (Xen, dom0 console, "[guest NAME]" lines)
	Values   map[string]string // from `result KEY VALUE` in the scenario (results/values.env)
	Status   map[string]string // results/status.env and host-status.env (rc, timed_out, qemu_rc, ...)
	Failures []string          // results/failures.txt: why the scenario failed
}

// Log returns the content of a file below the results directory ("run.log",
// "guest-g1.log", "xl-dmesg.txt", "var-log-xen/qemu-dm-g1.log", ...), or "" if it does not exist.
func (r *Result) Log(name string) string {
	b, err := os.ReadFile(r.Path(name))
	if err != nil {
		return ""
	}
	return string(b)
}

// Path returns the host path of a file below the results directory.
func (r *Result) Path(name string) string { return filepath.Join(r.Dir, filepath.FromSlash(name)) }

// Passed reports whether the scenario ran to its end with status 0.
func (r *Result) Passed() bool { return r.Status["rc"] == "0" }

var (
	ensureMu  sync.Mutex
	ensured   *Lab
	ensureErr error
)

// Ensure builds the lab's artifacts, or reuses them from the cache, and returns the Lab.
// It fails the test (with the build log's tail) if the lab cannot be built, and skips it only
// when XENLAB_SKIP=1. The build runs once per test binary.
func Ensure(t testing.TB) *Lab {
	t.Helper()
	if os.Getenv("XENLAB_SKIP") == "1" {
		t.Skip("XENLAB_SKIP=1: lab tests skipped on request")
	}
	ensureMu.Lock()
	defer ensureMu.Unlock()
	if ensured != nil {
		return ensured
	}
	if ensureErr != nil {
		t.Fatalf("lab unavailable (an earlier Ensure in this process failed): %v", ensureErr)
	}
	l, err := ensure(t)
	if err != nil {
		ensureErr = err
		t.Fatalf("lab unavailable: %v", err)
	}
	ensured = l
	return l
}

func ensure(t testing.TB) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab needs root (debootstrap, mount namespaces, loop-free image building); run the tests as root or set XENLAB_SKIP=1")
	}
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	l := &Lab{Root: root, Cache: CacheDir()}
	if err := os.MkdirAll(filepath.Join(l.Cache, "logs"), 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(l.Cache, "logs", "ensure-"+time.Now().Format("20060102-150405")+".log")
	timeout := envDuration("XENLAB_BUILD_TIMEOUT", 50*time.Minute)
	t.Logf("lab: building/reusing artifacts in %s (log %s)", l.Cache, logPath)
	start := time.Now()
	if err := l.script(t, timeout, logPath, "build"); err != nil {
		return nil, fmt.Errorf("scripts/lab.sh build: %v\n%s", err, tailFile(logPath, 60))
	}
	t.Logf("lab: artifacts ready after %s", time.Since(start).Round(time.Second))
	out, err := exec.Command("bash", filepath.Join(root, "scripts", "lab.sh"), "paths").Output()
	if err != nil {
		return nil, fmt.Errorf("scripts/lab.sh paths: %v", err)
	}
	l.Paths = parseEnv(string(out))
	return l, nil
}

// script runs scripts/lab.sh with args; its output goes to logPath and, line by line, to t.Logf.
func (l *Lab) script(t testing.TB, timeout time.Duration, logPath string, args ...string) error {
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(l.Root, "scripts", "lab.sh")}, args...)...)
	cmd.Dir = l.Root
	cmd.Env = append(os.Environ(), "XENLAB_CACHE="+l.Cache)
	if args[0] == "run" {
		cmd.Env = append(cmd.Env, "XENLAB_LOCK_HELD=1")
	}
	// SIGTERM first: lab.sh's children (QEMU, builders) have a parent-death signal and follow it.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 30 * time.Second
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if strings.HasPrefix(line, "[lab ") {
				t.Logf("%s", line)
			}
		}
		io.Copy(io.Discard, pr)
	}()
	err = cmd.Run()
	pw.Close()
	<-done
	if ctx.Err() == context.DeadlineExceeded {
		return fmt.Errorf("timed out after %s", timeout)
	}
	return err
}

// Run boots the lab for the scenario and returns its result. If the scenario fails or times
// out, or the lab itself breaks (Xen panic, dom0 crash, no results), Run fails the test with
// the relevant log lines.
func (l *Lab) Run(t testing.TB, sc Scenario) *Result {
	t.Helper()
	res, err := l.TryRun(t, sc)
	if err != nil {
		t.Fatalf("lab scenario %q failed:\n%v", sc.Name, err)
	}
	return res
}

// TryRun is Run without failing the test: a failed scenario is returned as an error that holds
// the diagnosis (the same text Run reports). The Result is non-nil whenever the lab booted.
func (l *Lab) TryRun(t testing.TB, sc Scenario) (*Result, error) {
	t.Helper()
	if sc.Name == "" {
		sc.Name = "scenario"
	}
	if sc.Hypervisor == "" {
		sc.Hypervisor = Stock
	}
	if sc.Hypervisor != Stock && sc.Hypervisor != Paging {
		return nil, fmt.Errorf("unknown hypervisor %q (want %q or %q)", sc.Hypervisor, Stock, Paging)
	}
	if sc.Timeout <= 0 {
		sc.Timeout = 20 * time.Minute
	}
	if strings.Contains(sc.Dom0Args, ",") {
		return nil, errors.New("Dom0Args must not contain commas")
	}
	margin := 15 * time.Minute // boot + log collection + power-off + mkfs/rdump, generously
	dir, err := l.prepare(t, sc)
	if err != nil {
		return nil, err
	}
	// Serialize lab runs machine-wide; scripts/lab.sh sees XENLAB_LOCK_HELD=1 and does not lock again.
	unlock, err := l.lock(t, "run "+dir, sc.Timeout+margin/3)
	if err != nil {
		return nil, err
	}
	defer unlock()
	t.Logf("lab: run %q on the %s hypervisor in %s (follow with: tail -f %s/serial.log)", sc.Name, sc.Hypervisor, dir, dir)
	start := time.Now()
	stop := l.follow(t, filepath.Join(dir, "serial.log"))
	runErr := l.script(t, sc.Timeout+margin, filepath.Join(dir, "lab-run.log"), "run", dir)
	stop()
	res := loadResult(dir)
	t.Logf("lab: run %q finished after %s (scenario rc=%s, qemu rc=%s)", sc.Name, time.Since(start).Round(time.Second), res.Status["rc"], res.Status["qemu_rc"])
	writeJSON(filepath.Join(dir, "results.json"), res.Values)
	if res.Passed() && runErr == nil {
		return res, nil
	}
	return res, errors.New(res.Diagnose(runErr))
}

// prepare creates the run directory: xfer/ with the scenario and its files, and run.env.
func (l *Lab) prepare(t testing.TB, sc Scenario) (string, error) {
	runs := filepath.Join(l.Cache, "runs")
	if err := os.MkdirAll(runs, 0o755); err != nil {
		return "", err
	}
	pruneRuns(runs, envInt("XENLAB_KEEP_RUNS", 10))
	name := sanitize(t.Name() + "-" + sc.Name)
	if len(name) > 60 {
		name = name[:60]
	}
	name += "-" + time.Now().Format("20060102-150405")
	dir, err := os.MkdirTemp(runs, name+"-")
	if err != nil {
		return "", err
	}
	x := filepath.Join(dir, "xfer")
	if err := os.MkdirAll(x, 0o755); err != nil {
		return "", err
	}
	files := map[string][]byte{
		"scenario.sh":   []byte(sc.Script + "\n"),
		"scenario.name": []byte(sc.Name + "\n"),
	}
	var env strings.Builder
	keys := make([]string, 0, len(sc.Env))
	for k := range sc.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&env, "%s=%s\n", k, shellQuote(sc.Env[k]))
	}
	files["env"] = []byte(env.String())
	for rel, b := range files {
		if err := os.WriteFile(filepath.Join(x, rel), b, 0o644); err != nil {
			return "", err
		}
	}
	for rel, src := range sc.Files {
		clean := filepath.Clean(filepath.FromSlash(rel))
		if filepath.IsAbs(clean) || strings.HasPrefix(clean, "..") {
			return "", fmt.Errorf("Files: %q is not a path below /xfer", rel)
		}
		if err := copyFile(src, filepath.Join(x, clean)); err != nil {
			return "", fmt.Errorf("Files[%q]: %v", rel, err)
		}
	}
	runEnv := fmt.Sprintf("HYPERVISOR=%s\nTIMEOUT=%d\nXEN_ARGS_EXTRA=%s\nDOM0_ARGS_EXTRA=%s\n",
		sc.Hypervisor, int(sc.Timeout.Seconds()), shellQuote(sc.XenArgs), shellQuote(sc.Dom0Args))
	return dir, os.WriteFile(filepath.Join(dir, "run.env"), []byte(runEnv), 0o644)
}

// follow streams the progress lines of the serial console to t.Logf while the lab runs.
func (l *Lab) follow(t testing.TB, path string) (stop func()) {
	quit := make(chan struct{})
	done := make(chan struct{})
	interesting := regexp.MustCompile(`\[xenlab |\[guest |Panic on CPU|Kernel panic|crashed|WATCHDOG`)
	go func() {
		defer close(done)
		var off int64
		var partial string
		flush := func() {
			f, err := os.Open(path)
			if err != nil {
				return
			}
			defer f.Close()
			if _, err := f.Seek(off, io.SeekStart); err != nil {
				return
			}
			b, _ := io.ReadAll(f)
			off += int64(len(b))
			lines := strings.Split(partial+string(b), "\n")
			partial = lines[len(lines)-1]
			for _, ln := range lines[:len(lines)-1] {
				ln = strings.TrimRight(ln, "\r")
				if interesting.MatchString(ln) {
					t.Logf("| %s", ln)
				}
			}
		}
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-quit:
				flush()
				return
			case <-tick.C:
				flush()
			}
		}
	}()
	return func() { close(quit); <-done }
}

func loadResult(dir string) *Result {
	res := &Result{
		RunDir: dir,
		Dir:    filepath.Join(dir, "results"),
		Values: map[string]string{},
		Status: map[string]string{},
	}
	if b, err := os.ReadFile(filepath.Join(dir, "serial.log")); err == nil {
		res.Serial = string(b)
	}
	res.Values = parseEnv(res.Log("values.env"))
	for k, v := range parseEnv(readFile(filepath.Join(dir, "host-status.env"))) {
		res.Status[k] = v
	}
	for k, v := range parseEnv(res.Log("status.env")) {
		res.Status[k] = v
	}
	for _, ln := range strings.Split(res.Log("failures.txt"), "\n") {
		if ln = strings.TrimSpace(ln); ln != "" {
			res.Failures = append(res.Failures, ln)
		}
	}
	return res
}

// ScenarioScript returns the text of scripts/lab/scenarios/NAME.sh (the scenarios shared
// with `scripts/lab.sh scenario NAME`).
func ScenarioScript(t testing.TB, name string) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "scripts", "lab", "scenarios", name+".sh"))
	if err != nil {
		t.Fatalf("scenario %s: %v", name, err)
	}
	return string(b)
}

// RepoRoot finds the repository root (the directory holding go.mod and scripts/lab.sh)
// from the working directory upwards.
func RepoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fileExists(filepath.Join(d, "go.mod")) && fileExists(filepath.Join(d, "scripts", "lab.sh")) {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("repository root (go.mod + scripts/lab.sh) not found above the working directory")
		}
		d = p
	}
}

// CacheDir is $XENLAB_CACHE or /var/cache/xen-dm-go/lab.
func CacheDir() string {
	if c := os.Getenv("XENLAB_CACHE"); c != "" {
		return c
	}
	return "/var/cache/xen-dm-go/lab"
}
