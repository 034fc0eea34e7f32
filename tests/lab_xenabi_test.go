package tests

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/tests/lab"
)

// TestLabXenABI runs the Xen ABI layer's real-Xen tests (dm/xen and dm/xen/xenstore, build tag
// xenlab) inside the lab's dom0, against real Xen 4.17 and the real xenstored: an ioreq server
// for a paused HVM guest is created, its pages mapped, its ports bound, guest memory read and
// written, and everything torn down with nothing left behind; bad domids give clear errors.
// It prints
//
//	RESULT xenabi xen_tests_ok=1 xenstore_tests_ok=1 passed=<n> failed=<n>
func TestLabXenABI(t *testing.T) {
	l := lab.Ensure(t)
	xenTest := l.BuildGoTest(t, "./dm/xen")
	xsTest := l.BuildGoTest(t, "./dm/xen/xenstore")
	res := l.Run(t, lab.Scenario{
		Name:       "xenabi",
		Hypervisor: lab.Stock,
		Files: map[string]string{
			"bin/xen.test":      xenTest,
			"bin/xenstore.test": xsTest,
		},
		Script: `
start_daemons
# A paused HVM guest (its stock device model holds one ioreq server of the 8 Xen allows; the
# tests create and destroy theirs one after another, so a leak still shows up).
mkcfg abi "$STOCK_DM" 128 >/dev/null
xlc create -p /etc/xen/abi.cfg
id=$(domid abi)
log "paused guest abi is domain $id"
rc=0
XEN_DM_GO_DOMID=$id timeout 300 ./bin/xen.test -test.v -test.count=1 -test.run 'TestReal' >"$R/xen-test.log" 2>&1 || rc=$?
tail -n 40 "$R/xen-test.log"
result xen_tests_rc "$rc"
rc=0
timeout 300 ./bin/xenstore.test -test.v -test.count=1 -test.run 'TestReal' >"$R/xenstore-test.log" 2>&1 || rc=$?
tail -n 40 "$R/xenstore-test.log"
result xenstore_tests_rc "$rc"
result passed "$(cat "$R/xen-test.log" "$R/xenstore-test.log" | grep -c -- '^--- PASS' || true)"
result failed "$(cat "$R/xen-test.log" "$R/xenstore-test.log" | grep -c -- '--- FAIL' || true)"
xlc destroy abi
`,
		Timeout: 15 * time.Minute,
	})
	v := res.Values
	for _, f := range []struct{ key, log string }{{"xen_tests_rc", "xen-test.log"}, {"xenstore_tests_rc", "xenstore-test.log"}} {
		if v[f.key] != "0" {
			t.Errorf("%s=%q; its output:\n%s", f.key, v[f.key], tail(res.Log(f.log), 80))
		}
	}
	if v["passed"] == "" || v["passed"] == "0" {
		t.Errorf("no real-Xen test passed (passed=%q)", v["passed"])
	}
	// Every TestReal… of both packages must have run (none skipped silently).
	for _, name := range []string{"TestRealIoreqServerLifecycle", "TestRealBadDomid", "TestRealXenstore"} {
		if !strings.Contains(res.Log("xen-test.log")+res.Log("xenstore-test.log"), "--- PASS: "+name) {
			t.Errorf("%s did not pass in dom0", name)
		}
	}
	if t.Failed() {
		return
	}
	fmt.Printf("RESULT xenabi xen_tests_ok=1 xenstore_tests_ok=1 passed=%s failed=%s\n", v["passed"], v["failed"])
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
