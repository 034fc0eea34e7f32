package tests

import (
	"os"
	"testing"
)

// pending skips a lab scenario whose feature does not pass reliably in the lab yet, unless
// XENLAB_PENDING=1. The skip says why and names the issue: a pending scenario is never
// reported as passing, and `XENLAB_PENDING=1 go test -run TestLab… ./tests/` runs it.
func pending(t *testing.T, issue int, why string) {
	t.Helper()
	if os.Getenv("XENLAB_PENDING") != "1" {
		t.Skipf("PENDING (issue %d): %s; run with XENLAB_PENDING=1", issue, why)
	}
}
