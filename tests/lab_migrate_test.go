package tests

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/tests/lab"
)

// TestLabSaveRestoreMigrate drives xl save + restore and live migration to localhost of a guest
// whose device model is xen-dm-go, with its disk workload running, and the same for the stock
// qemu-xen in the same lab boot for the ratios: a refused migration must leave the guest running
// on the source; MIGRATIONS (default 20; XENLAB_MIGRATIONS) migrations in a row must all pass;
// the guest's checksums must match at the end. It prints
//
//	RESULT saverestore dm=xen-dm-go checksums_ok=1 save_ratio=<ours ÷ qemu-xen> restore_ratio=<…>
//	RESULT migrate dm=xen-dm-go ok_count=<n> migrate_ratio=<ours ÷ qemu-xen>
func TestLabSaveRestoreMigrate(t *testing.T) {
	l := lab.Ensure(t)
	dm := l.BuildGo(t, "./cmd/xen-dm-go")
	n := 20
	if s := os.Getenv("XENLAB_MIGRATIONS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("XENLAB_MIGRATIONS=%q", s)
		}
		n = v
	}
	res := l.Run(t, lab.Scenario{
		Name:       "migrate",
		Hypervisor: lab.Stock,
		Script:     lab.ScenarioScript(t, "migrate"),
		Files:      map[string]string{"bin/xen-dm-go": dm},
		Env:        map[string]string{"MIGRATIONS": strconv.Itoa(n)},
		Timeout:    60 * time.Minute,
	})
	v := res.Values
	num := func(k string) float64 {
		f, err := strconv.ParseFloat(v[k], 64)
		if err != nil || f <= 0 {
			t.Errorf("%s=%q: missing or not positive", k, v[k])
			return 0
		}
		return f
	}
	ratio := func(k string) string {
		a, b := num("ours_"+k), num("stock_"+k)
		if a == 0 || b == 0 {
			return "NaN"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	for _, k := range []string{"ours_checksums_ok", "stock_checksums_ok", "ours_refused_ok", "stock_refused_ok",
		"ours_verify_ok", "ours_debug_ok"} {
		if v[k] != "1" {
			t.Errorf("%s=%q, want 1", k, v[k])
		}
	}
	if v["ours_ok_count"] != strconv.Itoa(n) {
		t.Errorf("ours_ok_count=%q, want %d", v["ours_ok_count"], n)
	}
	save, restore, migrate := ratio("save_s"), ratio("restore_s"), ratio("migrate_s")
	t.Logf("values: %v", v)
	if t.Failed() {
		t.Logf("device model log (source of the last migration):\n%s", tail(res.Log("var-log-xen/qemu-dm-mg-ours.log"), 60))
		return
	}
	fmt.Printf("RESULT saverestore dm=xen-dm-go checksums_ok=%s save_ratio=%s restore_ratio=%s\n", v["ours_checksums_ok"], save, restore)
	fmt.Printf("RESULT migrate dm=xen-dm-go ok_count=%s migrate_ratio=%s\n", v["ours_ok_count"], migrate)
}
