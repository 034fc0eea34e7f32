package xen

import (
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The real Evtchn over a pipe: the device's read protocol (whole u32 ports)
// and, above all, that Close wakes a blocked Wait instead of hanging.
func TestEvtchnWaitAndClose(t *testing.T) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	e, err := newEvtchnFD(fds[0], "pipe")
	if err != nil {
		t.Fatal(err)
	}
	var b [8]byte
	le.PutUint32(b[0:], 7)
	le.PutUint32(b[4:], 9)
	unix.Write(fds[1], b[:])
	ports := make([]Port, 4)
	n, err := e.Wait(ports)
	if err != nil || n != 2 || ports[0] != 7 || ports[1] != 9 {
		t.Fatalf("wait: %d %v %v", n, ports, err)
	}

	done := make(chan error, 1)
	go func() {
		_, err := e.Wait(ports)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Wait returned without an event: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Wait after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Wait")
	}
	if err := e.Notify(3); !errors.Is(err, ErrClosed) {
		t.Fatalf("Notify after Close: %v", err)
	}
	if err := e.Unmask(3); !errors.Is(err, ErrClosed) || !errorsContains(err, "port 3") {
		t.Fatalf("Unmask after Close: %v", err)
	}
	if _, err := e.BindInterdomain(12, 5); !errors.Is(err, ErrClosed) || !errorsContains(err, "dom 12 port 5") {
		t.Fatalf("bind after close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// On a fd that is not an evtchn device the ioctls fail with ENOTTY, wrapped
// with the port or domain.
func TestEvtchnIoctlErrors(t *testing.T) {
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	e, _ := newEvtchnFD(fds[0], "pipe")
	defer e.Close()
	if _, err := e.BindInterdomain(31999, 4); !errors.Is(err, unix.ENOTTY) || !errorsContains(err, "dom 31999 port 4") {
		t.Fatalf("bind: %v", err)
	}
	if err := e.Unbind(8); !errors.Is(err, unix.ENOTTY) || !errorsContains(err, "port 8") {
		t.Fatalf("unbind: %v", err)
	}
	if _, err := e.Wait(nil); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("wait with no room: %v", err)
	}
}

func errorsContains(err error, s string) bool {
	return err != nil && len(s) > 0 && contains(err.Error(), s)
}

func contains(a, b string) bool {
	for i := 0; i+len(b) <= len(a); i++ {
		if a[i:i+len(b)] == b {
			return true
		}
	}
	return false
}
