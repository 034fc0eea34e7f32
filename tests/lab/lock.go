package lab

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lock takes the machine-wide lab lock ($XENLAB_LOCK, default $XENLAB_CACHE/lock: the flock
// scripts/lab.sh uses),
// waiting for other lab runs to finish, and returns its release function. It gives up when
// the test's deadline leaves less than need after the wait.
func (l *Lab) lock(t testing.TB, what string, need time.Duration) (func(), error) {
	path := l.lockPath()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	lastLog := time.Time{}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if err != syscall.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("flock %s: %v", path, err)
		}
		if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
			if dl, ok := d.Deadline(); ok && time.Until(dl) < need {
				f.Close()
				return nil, fmt.Errorf("gave up waiting for the lab lock after %s: the test deadline leaves less than %s (held by %s)",
					time.Since(start).Round(time.Second), need, l.lockOwner())
			}
		}
		if time.Since(lastLog) > time.Minute {
			t.Logf("lab: waiting for the lab lock (held by %s)", l.lockOwner())
			lastLog = time.Now()
		}
		time.Sleep(2 * time.Second)
	}
	if w := time.Since(start); w > 2*time.Second {
		t.Logf("lab: got the lab lock after waiting %s", w.Round(time.Second))
	}
	owner := fmt.Sprintf("pid %d (%s %s) since %s\n", os.Getpid(), t.Name(), what, time.Now().Format(time.RFC3339))
	os.WriteFile(path+".owner", []byte(owner), 0o644)
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}

func (l *Lab) lockPath() string {
	if p := os.Getenv("XENLAB_LOCK"); p != "" {
		return p
	}
	return filepath.Join(l.Cache, "lock")
}

func (l *Lab) lockOwner() string {
	b, err := os.ReadFile(l.lockPath() + ".owner")
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}
