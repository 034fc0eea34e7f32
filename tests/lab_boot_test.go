package tests

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/tests/lab"
)

// TestLabBoot boots the lab's test guest with xen-dm-go as its device model under real Xen
// 4.17, driven by stock xl: hvmloader, SeaBIOS and Linux from the emulated IDE disk, the disk
// workload with its checksums, `xl console`, ACPI power-off, `xl destroy`, and nothing left
// behind. The guest's O_DIRECT read benchmark (scripts/lab/guest/diskbench) runs under
// xen-dm-go and, in the same lab boot, under the stock qemu-xen. It prints
//
//	RESULT boot dm=xen-dm-go checksums_ok=1 read_ratio=<ours ÷ qemu-xen, sequential MB/s>
//	       randread_ratio=<ours ÷ qemu-xen, random 4 KiB IOPS> boot_s=… stock_boot_s=…
func TestLabBoot(t *testing.T) {
	l := lab.Ensure(t)
	dm := l.BuildGo(t, "./cmd/xen-dm-go")
	res := l.Run(t, lab.Scenario{
		Name:       "boot",
		Hypervisor: lab.Stock,
		Script:     lab.ScenarioScript(t, "boot"),
		Files:      map[string]string{"bin/xen-dm-go": dm},
		Timeout:    40 * time.Minute,
	})
	v := res.Values
	for _, k := range []string{"checksums_ok", "console_ok", "poweroff_ok", "destroy_ok"} {
		if v[k] != "1" {
			t.Errorf("%s=%q, want 1", k, v[k])
		}
	}
	if v["leftovers"] != "0" {
		t.Errorf("leftovers=%q, want 0", v["leftovers"])
	}
	ratio := func(ours, stock string) string {
		a, errA := strconv.ParseFloat(v[ours], 64)
		b, errB := strconv.ParseFloat(v[stock], 64)
		if errA != nil || errB != nil || a <= 0 || b <= 0 {
			t.Errorf("benchmark values %s=%q %s=%q: missing or not positive", ours, v[ours], stock, v[stock])
			return "NaN"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	read, randread := ratio("ours_seq_mbps", "stock_seq_mbps"), ratio("ours_rand_iops", "stock_rand_iops")
	t.Logf("values: %v", v)
	if t.Failed() {
		t.Logf("device model log:\n%s", tail(res.Log("var-log-xen/qemu-dm-g1.log"), 60))
		return
	}
	fmt.Printf("RESULT boot dm=xen-dm-go checksums_ok=%s read_ratio=%s randread_ratio=%s boot_s=%s stock_boot_s=%s\n",
		v["checksums_ok"], read, randread, v["boot_s"], v["stock_boot_s"])
}
