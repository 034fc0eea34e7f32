package xen_test

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xen-dm-go/xen-dm-go/dm/xen"
	"github.com/xen-dm-go/xen-dm-go/dm/xen/xentest"
)

func waitPorts(t *testing.T, ev xen.EventChannel) []xen.Port {
	t.Helper()
	ch := make(chan []xen.Port, 1)
	go func() {
		ports := make([]xen.Port, 8)
		n, err := ev.Wait(ports)
		if err != nil {
			ch <- nil
			return
		}
		ch <- ports[:n]
	}()
	select {
	case p := <-ch:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
		return nil
	}
}

func TestFakeEvtchnPair(t *testing.T) {
	pair, err := xentest.NewEvtchnPair(7)
	if err != nil {
		t.Fatal(err)
	}
	ev := pair.DM
	if err := pair.Fire(); err != nil {
		t.Fatal(err)
	}
	if got := waitPorts(t, ev); len(got) != 1 || got[0] != pair.LocalPort {
		t.Fatalf("fired ports %v, want [%d]", got, pair.LocalPort)
	}
	// Masked until unmask: a second event is latched, then delivered.
	pair.Fire()
	ev.Unmask(pair.LocalPort)
	if got := waitPorts(t, ev); len(got) != 1 || got[0] != pair.LocalPort {
		t.Fatalf("latched event: %v", got)
	}
	ev.Unmask(pair.LocalPort)
	// DM → remote.
	if err := ev.Notify(pair.LocalPort); err != nil {
		t.Fatal(err)
	}
	if err := pair.WaitNotified(time.Second); err != nil {
		t.Fatal(err)
	}
	if err := pair.WaitNotified(10 * time.Millisecond); err == nil {
		t.Fatal("second notification out of nowhere")
	}
	// Bad ports.
	if err := ev.Notify(999); !errors.Is(err, unix.ENOTCONN) || !errorsContain(err, "port 999") {
		t.Fatalf("notify unknown port: %v", err)
	}
	if _, err := ev.BindInterdomain(7, 999); !errors.Is(err, unix.EINVAL) || !errorsContain(err, "dom 7 port 999") {
		t.Fatalf("bind unknown port: %v", err)
	}
	if _, err := ev.BindInterdomain(7, pair.RemotePort); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("double bind: %v", err)
	}
	// Unbind: the port is gone, the remote becomes unbound and can be bound again.
	if err := ev.Unbind(pair.LocalPort); err != nil {
		t.Fatal(err)
	}
	if err := ev.Notify(pair.LocalPort); !errors.Is(err, unix.ENOTCONN) {
		t.Fatalf("notify after unbind: %v", err)
	}
	if pair.Hub.Bound(7, pair.RemotePort) {
		t.Fatal("remote still bound after unbind")
	}
	if _, err := ev.BindInterdomain(7, pair.RemotePort); err != nil {
		t.Fatalf("rebind: %v", err)
	}
	// Close wakes a waiter and unbinds everything.
	done := make(chan error, 1)
	go func() { _, err := ev.Wait(make([]xen.Port, 1)); done <- err }()
	time.Sleep(10 * time.Millisecond)
	ev.Close()
	select {
	case err := <-done:
		if !errors.Is(err, xen.ErrClosed) {
			t.Fatalf("wait after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Wait")
	}
	if pair.Hub.Bound(7, pair.RemotePort) {
		t.Fatal("Close left the port bound")
	}
}

func errorsContain(err error, s string) bool {
	return err != nil && contains(err.Error(), s)
}

func contains(a, b string) bool {
	for i := 0; i+len(b) <= len(a); i++ {
		if a[i:i+len(b)] == b {
			return true
		}
	}
	return false
}
