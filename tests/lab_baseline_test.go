package tests

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/tests/lab"
)

// TestLabBaseline runs the baseline scenarios with the stock device model (qemu-xen) in the lab:
// boot the test guest and its disk workload, xl save + restore, xl migrate to localhost, and
// the guest's and dom0's checksum verification; it also captures a small guest's `xl save`
// stream (tests/testdata/captured/, $XENLAB_CACHE/captured/). It prints one line
//
//	RESULT baseline boot_s=… save_s=… restore_s=… migrate_s=… checksums_ok=1
//
// with the measured phase timings (full set in the run's results.json).
func TestLabBaseline(t *testing.T) {
	l := lab.Ensure(t)
	res := l.Run(t, lab.Scenario{
		Name:       "baseline",
		Hypervisor: lab.Stock,
		Script:     lab.ScenarioScript(t, "baseline"),
		Timeout:    30 * time.Minute,
	})
	v := res.Values
	for _, k := range []string{"boot_s", "save_s", "restore_s", "migrate_s"} {
		f, err := strconv.ParseFloat(v[k], 64)
		if err != nil || f <= 0 {
			t.Errorf("phase timing %s=%q missing or not positive", k, v[k])
		}
	}
	if v["checksums_ok"] != "1" {
		t.Errorf("checksums_ok=%q, want 1", v["checksums_ok"])
	}
	if v["verify_ok"] != "1" {
		t.Errorf("verify-stream-v2 on the captured stream: verify_ok=%q, want 1 (see %s)", v["verify_ok"], res.Path("verify-stream-"+v["capture_file"]+".txt"))
	}
	if v["capture_file"] != "" {
		for _, p := range l.PublishCaptured(t, res) {
			t.Logf("captured: %s", p)
		}
	} else {
		t.Errorf("no xl save stream was captured")
	}
	t.Logf("values: %v", v)
	t.Logf("results: %s/results.json", res.RunDir)
	if t.Failed() {
		return
	}
	fmt.Printf("RESULT baseline boot_s=%s save_s=%s restore_s=%s migrate_s=%s checksums_ok=%s\n",
		v["boot_s"], v["save_s"], v["restore_s"], v["migrate_s"], v["checksums_ok"])
}
