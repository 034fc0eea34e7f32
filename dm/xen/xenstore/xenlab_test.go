//go:build xenlab

// Tests against the real xenstored of the lab's dom0. Built on the host with
//
//	go test -c -tags xenlab ./dm/xen/xenstore
//
// and run inside dom0 by the lab harness, where xenstored listens on
// /var/run/xenstored/socket (or wherever $XENSTORED_PATH/$XENSTORED_RUNDIR
// say). Everything is done below /local/domain/0/xen-dm-go-test, which is
// removed before and after.

package xenstore_test

import (
	"log/slog"
	"os"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/xen/xenstore"
)

func labOpen(t *testing.T) *xenstore.Client {
	t.Helper()
	c, err := xenstore.Open(xenstore.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	if err != nil {
		t.Fatalf("no xenstored in the lab: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRealXenstore runs the conformance checks against the lab's xenstored,
// over the unix socket (Open) and, where dom0 has it, the xenbus device.
func TestRealXenstore(t *testing.T) {
	runConformance(t, labOpen, true)
}
