package dm

import (
	"fmt"
	"net"

	"github.com/xen-dm-go/xen-dm-go/dm/config"
	"github.com/xen-dm-go/xen-dm-go/dm/qmp"
)

// listenChardev opens the listening socket of a QMP monitor chardev: an
// inherited listening fd (dm_restrict: fd=N) or a unix socket path. The
// returned info is the chardev's query-chardev entry.
func listenChardev(cd config.Chardev) (net.Listener, qmp.ChardevInfo, error) {
	info := qmp.ChardevInfo{Label: cd.ID, FrontendOpen: true}
	if cd.FD >= 0 {
		l, err := qmp.ListenFD(cd.FD)
		if err != nil {
			return nil, info, fmt.Errorf("chardev %s: %w", cd.ID, err)
		}
		info.Filename = fmt.Sprintf("unix:%s,server=on", l.Addr().String())
		return l, info, nil
	}
	if cd.Path == "" {
		return nil, info, fmt.Errorf("chardev %s: QMP needs a unix socket path or fd", cd.ID)
	}
	l, err := qmp.ListenPath(cd.Path)
	if err != nil {
		return nil, info, fmt.Errorf("chardev %s: %w", cd.ID, err)
	}
	info.Filename = fmt.Sprintf("unix:%s,server=on", cd.Path)
	return l, info, nil
}
