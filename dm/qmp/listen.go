package qmp

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// ListenPath listens on a unix socket at path (QEMU's -chardev
// socket,path=…,server=on). A stale socket left by an earlier device model
// is unlinked first; a non-socket file at path is an error. Closing the
// listener removes the socket file.
func ListenPath(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("qmp: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("qmp: remove stale socket: %w", err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("qmp: listen on %s: %w", path, err)
	}
	l.SetUnlinkOnClose(true)
	return l, nil
}

// ListenFD takes over an inherited listening unix socket (QEMU's -chardev
// socket,fd=N,server=on; libxl's dm_restrict mode, where libxl bound and
// listened before exec and may already have a client in the backlog).
// The socket path stays libxl's: closing the listener does not unlink it.
func ListenFD(fd int) (*net.UnixListener, error) {
	if fd < 0 {
		return nil, fmt.Errorf("qmp: bad fd %d", fd)
	}
	acc, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return nil, fmt.Errorf("qmp: fd %d is not a socket: %w", fd, err)
	}
	if acc == 0 {
		return nil, fmt.Errorf("qmp: fd %d is not a listening socket", fd)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("qmp-listen-fd-%d", fd))
	l, err := net.FileListener(f) // dups the fd (close-on-exec)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("qmp: fd %d: %w", fd, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, errors.New("qmp: fd is not a unix-domain socket")
	}
	ul.SetUnlinkOnClose(false)
	return ul, nil
}
