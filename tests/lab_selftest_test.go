package tests

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/tests/lab"
)

// TestLabSelfTest checks that the lab fails loudly, with the log lines that matter: a scenario
// waiting for a workload round that never comes, and a dom0 that cannot boot. It costs two lab
// boots, so it only runs with XENLAB_SELFTEST=1. With XENLAB_DEMO_FAILURE=1 the failures are
// reported the way a real failing lab test reports them (the test then fails on purpose).
func TestLabSelfTest(t *testing.T) {
	if os.Getenv("XENLAB_SELFTEST") != "1" && os.Getenv("XENLAB_DEMO_FAILURE") != "1" {
		t.Skip("harness self-test: set XENLAB_SELFTEST=1 (or XENLAB_DEMO_FAILURE=1 to see a failing lab test's output)")
	}
	l := lab.Ensure(t)
	demo := os.Getenv("XENLAB_DEMO_FAILURE") == "1"
	cases := []struct {
		name string
		sc   lab.Scenario
		want []string
	}{
		{
			name: "round-never-comes",
			sc: lab.Scenario{
				Name:    "expect-round-timeout",
				Script:  "start_daemons\nmkcfg g1 >/dev/null\nguest_create g1\nwait_guest_round g1 1000000 180\n",
				Timeout: 15 * time.Minute,
			},
			want: []string{"SCENARIO FAILED", "did not reach round 1000000", "guest console", "xl create"},
		},
		{
			name: "dom0-cannot-boot",
			sc: lab.Scenario{
				Name:     "expect-dom0-panic",
				Script:   "true\n",
				Dom0Args: "root=/dev/nonexistent rootdelay=3",
				Timeout:  5 * time.Minute,
			},
			want: []string{"LAB FAILED", "no scenario status came back", "ALERT!"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if demo {
				l.Run(t, c.sc) // fails this test with the diagnosis
				return
			}
			_, err := l.TryRun(t, c.sc)
			if err == nil {
				t.Fatalf("scenario %q passed; it must fail", c.sc.Name)
			}
			msg := err.Error()
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("diagnosis lacks %q", w)
				}
			}
			t.Logf("diagnosis (what a failing lab test prints):\n%s", msg)
		})
	}
}
