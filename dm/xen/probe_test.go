package xen_test

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// On a host without Xen every handle fails with an error that says what is
// missing; Probe reports it without panicking.
func TestProbeWithoutXen(t *testing.T) {
	if _, err := os.Stat(xen.PrivcmdPath); err == nil {
		t.Skip("this host has /dev/xen/privcmd; the xenlab tests cover it")
	}
	_, err := xen.OpenPrivcmd()
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), xen.PrivcmdPath) {
		t.Fatalf("OpenPrivcmd: %v", err)
	}
	_, err = xen.OpenEvtchn()
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), xen.EvtchnPath) {
		t.Fatalf("OpenEvtchn: %v", err)
	}
	r := xen.Probe()
	if r.Privcmd == nil || r.Evtchn == nil || r.Err() == nil || r.DMOp == nil {
		t.Fatalf("probe found Xen on a host without it:\n%s", r)
	}
	s := r.String()
	if !strings.Contains(s, "privcmd") || !strings.Contains(s, "FAIL") {
		t.Fatalf("report:\n%s", s)
	}
	t.Logf("probe report:\n%s", s)
}
