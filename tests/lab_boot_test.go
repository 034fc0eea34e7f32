package tests

import (
	"fmt"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/tests/lab"
)

// TestLabBoot boots the lab's test guest with xen-dm-go as its device model under real Xen
// 4.17, driven by stock xl: hvmloader, SeaBIOS and Linux from the emulated IDE disk, the disk
// workload with its checksums, `xl console`, ACPI power-off, `xl destroy`, and nothing left
// behind. It prints
//
//	RESULT boot dm=xen-dm-go checksums_ok=1 boot_s=…
func TestLabBoot(t *testing.T) {
	pending(t, 4, "the guest boots and its workload, console, ACPI power-off and checksums pass, but 2 of 8 boots "+
		"powered off during early kernel boot when the lab host was loaded (cause not found yet)")
	l := lab.Ensure(t)
	dm := l.BuildGo(t, "./cmd/xen-dm-go")
	res := l.Run(t, lab.Scenario{
		Name:       "boot",
		Hypervisor: lab.Stock,
		Script:     lab.ScenarioScript(t, "boot"),
		Files:      map[string]string{"bin/xen-dm-go": dm},
		Timeout:    25 * time.Minute,
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
	if t.Failed() {
		t.Logf("device model log:\n%s", tail(res.Log("var-log-xen/qemu-dm-g1.log"), 60))
		return
	}
	fmt.Printf("RESULT boot dm=xen-dm-go checksums_ok=%s boot_s=%s\n", v["checksums_ok"], v["boot_s"])
}
