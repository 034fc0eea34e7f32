package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// alarming matches console lines worth showing from a failed run: Xen panics and crashes, dom0
// kernel trouble, the dom0 watchdog, and the ERROR/FAIL lines of lib.sh.
var alarming = regexp.MustCompile(`Panic on CPU|PANIC|\bFATAL\b|[Cc]rash|Kernel panic|not syncing|BUG:|Oops|` +
	`Unhandled|Assertion|Xen BUG|Xen WARN|general protection|segfault|call trace|Call Trace|` +
	`WATCHDOG|\] ERROR: |\bFAIL: |libxl: error|XENLAB-GUEST (fatal|mismatch)|errors=[1-9]|` +
	`ALERT!|Gave up waiting|doesn't have requested|No working init|Rebooting automatically|Hardware Dom0|` +
	`Triple fault|domain_crash|Domain [0-9]+ \(vcpu#[0-9]+\) crashed`)

// Diagnose explains a failed run: the reason, the failure messages, and the log lines that
// matter (Xen/dom0 console, the scenario's log, xl errors, guest consoles, device model logs).
// runErr is the error of the host-side run, if any.
func (r *Result) Diagnose(runErr error) string {
	var b strings.Builder
	rc, hasRC := r.Status["rc"]
	switch {
	case !hasRC && r.Status["qemu_timed_out"] == "1":
		fmt.Fprintf(&b, "LAB FAILED: QEMU was killed at its timeout (after %ss) and no scenario status came back: Xen or dom0 hung, or dom0 never booted\n", r.Status["qemu_seconds"])
	case !hasRC && r.Status["qemu_rc"] == "":
		fmt.Fprintf(&b, "LAB FAILED: the lab did not run (see %s)\n", filepath.Join(r.RunDir, "lab-run.log"))
	case !hasRC:
		fmt.Fprintf(&b, "LAB FAILED: no scenario status came back (QEMU exit %s after %ss): Xen panicked, dom0 crashed or never reached its init\n", r.Status["qemu_rc"], r.Status["qemu_seconds"])
	case r.Status["timed_out"] == "1":
		fmt.Fprintf(&b, "SCENARIO TIMED OUT: the dom0 watchdog killed the scenario after %ss\n", r.Status["timeout"])
	case rc != "0":
		fmt.Fprintf(&b, "SCENARIO FAILED with status %s after %ss\n", rc, r.Status["scenario_seconds"])
	default:
		fmt.Fprintf(&b, "LAB FAILED: scenario passed but the host side failed: %v\n", runErr)
	}
	for _, f := range r.Failures {
		fmt.Fprintf(&b, "  failure: %s\n", f)
	}
	if r.Status["hard_watchdog"] == "1" {
		b.WriteString("  note: dom0's hard watchdog had to force the power-off\n")
	}
	if runErr != nil && hasRC && rc == "0" {
		fmt.Fprintf(&b, "  host: %v\n", runErr)
	}

	section := func(title, body string) {
		body = strings.TrimRight(body, "\n")
		if body == "" {
			return
		}
		fmt.Fprintf(&b, "\n=== %s\n%s\n", title, body)
	}
	section("Xen serial console: alarming lines (serial.log)", grepLines(r.Serial, alarming, 40))
	if hasRC {
		// The scenario's own output follows below (run.log): show Xen's and the kernels' lines here.
		section("Xen serial console: last 25 lines from Xen and the dom0 kernel", tailLines(dropLines(r.Serial, scenarioLine), 25))
	} else {
		section("Xen serial console: last 80 lines", tailLines(r.Serial, 80))
	}
	section("scenario log: last 60 lines (results/run.log)", tailLines(r.Log("run.log"), 60))
	section("xl errors (results/xl/*.log)", dropLines(grepFiles(r.Dir, "xl/*.log", xlError, 60), xlNoise))
	section("hypervisor: alarming lines (results/xl-dmesg.txt)", grepLines(r.Log("xl-dmesg.txt"), alarming, 20))
	for _, g := range globSorted(r.Dir, "guest-*.log") {
		section("guest console: last 15 lines ("+rel(r.Dir, g)+")", tailLines(readFile(g), 15))
	}
	for _, g := range globSorted(r.Dir, "var-log-xen/qemu-dm-*.log") {
		section("device model log: last 10 lines ("+rel(r.Dir, g)+")", tailLines(readFile(g), 10))
	}
	fmt.Fprintf(&b, "\nrun directory: %s (serial.log, results/, lab-run.log)\n", r.RunDir)
	return b.String()
}

var (
	// scenarioLine: lines of the scenario's output mirrored onto the console (shown from run.log).
	scenarioLine = regexp.MustCompile(`^\[xenlab |^\[guest |^    [|-] |^[0-9]+\.[0-9]+ |^== `)
	xlError      = regexp.MustCompile(`error|ERROR|[Ff]ail|timed out|[Tt]imeout`)
	xlNoise      = regexp.MustCompile(`: (debug|detail|verbose|info): |loader probe failed`)
)

// dropLines removes the lines matching re.
func dropLines(text string, re *regexp.Regexp) string {
	var out []string
	for _, ln := range strings.Split(text, "\n") {
		if !re.MatchString(ln) {
			out = append(out, ln)
		}
	}
	return strings.Join(out, "\n")
}

func grepLines(text string, re *regexp.Regexp, max int) string {
	var out []string
	seen := map[string]bool{}
	for _, ln := range strings.Split(text, "\n") {
		ln = strings.TrimRight(ln, "\r")
		if re.MatchString(ln) && !seen[ln] {
			seen[ln] = true
			out = append(out, ln)
		}
	}
	if len(out) > max {
		out = append([]string{fmt.Sprintf("... (%d earlier lines)", len(out)-max)}, out[len(out)-max:]...)
	}
	return strings.Join(out, "\n")
}

func grepFiles(dir, pattern string, re *regexp.Regexp, max int) string {
	var out []string
	for _, f := range globSorted(dir, pattern) {
		for _, ln := range strings.Split(grepLines(readFile(f), re, max), "\n") {
			if ln != "" {
				out = append(out, rel(dir, f)+": "+ln)
			}
		}
	}
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return strings.Join(out, "\n")
}

func tailLines(text string, n int) string {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return ""
	}
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], "\r")
	}
	return strings.Join(lines, "\n")
}

func globSorted(dir, pattern string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, pattern))
	sort.Strings(m)
	return m
}

func rel(dir, path string) string {
	if r, err := filepath.Rel(dir, path); err == nil {
		return r
	}
	return path
}

func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}

func tailFile(path string, n int) string {
	return tailLines(readFile(path), n)
}
