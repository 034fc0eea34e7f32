package tests

import (
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/tests/lab"
)

// TestLabPagingHypervisor checks the lab's self-built "paging" hypervisor: it boots, reports
// shadow paging, and runs the test guest shadow-paged (hap=0) through its workload and an
// xl save/restore (scripts/lab/scenarios/paging-smoke.sh).
func TestLabPagingHypervisor(t *testing.T) {
	l := lab.Ensure(t)
	res := l.Run(t, lab.Scenario{
		Name:       "paging-smoke",
		Hypervisor: lab.Paging,
		Script:     lab.ScenarioScript(t, "paging-smoke"),
		Timeout:    25 * time.Minute,
	})
	if res.Values["shadow_ok"] != "1" {
		t.Fatalf("shadow_ok=%q", res.Values["shadow_ok"])
	}
	t.Logf("paging hypervisor: xen %s, virt_caps %s, shadow guest boot %ss, save %ss, restore %ss",
		res.Values["xen_version"], res.Values["virt_caps"], res.Values["boot_s"], res.Values["save_s"], res.Values["restore_s"])
}
