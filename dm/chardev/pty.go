package chardev

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openPTY allocates a pseudo-terminal like QEMU's char-pty
// (qemu_openpty_raw): the master stays with us, the slave /dev/pts/N is
// what `xl console` opens (libxl learns N from query-chardev). The line
// discipline is put in raw mode so the guest's bytes pass unchanged and
// nothing is echoed back to the guest while no one is attached.
func openPTY(o Options) (Backend, error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("chardev: open /dev/ptmx: %w", err)
	}
	fail := func(what string, err error) (Backend, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("chardev: pty %s: %w", what, err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil { // unlockpt
		return fail("unlock (TIOCSPTLCK)", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN) // ptsname
	if err != nil {
		return fail("name (TIOCGPTN)", err)
	}
	// Termios set on the master apply to the slave side's tty.
	if err := makeRaw(fd); err != nil {
		return fail("raw mode", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	// Non-blocking fd: os.NewFile uses the runtime poller, so Close
	// unblocks the reader and writer goroutines.
	f := os.NewFile(uintptr(fd), "ptmx:"+name)
	o.Log.Info("chardev: char device redirected to " + name)
	return newStream(o, "pty:"+name, f, f, f, 0), nil
}

// openTTY uses a host terminal device (-serial /dev/ttyS0).
func openTTY(path string, o Options) (Backend, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("chardev: open %s: %w", path, err)
	}
	if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("chardev: %s is not a terminal: %w", path, err)
	}
	if err := makeRaw(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("chardev: %s raw mode: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	return newStream(o, path, f, f, f, 0), nil
}

// makeRaw is cfmakeraw(3).
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

func isTTY(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
