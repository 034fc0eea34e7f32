package xen

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ProbeReport is what Probe found on this host. A nil error field means that
// check passed.
type ProbeReport struct {
	// Privcmd: /dev/xen/privcmd could be opened.
	Privcmd error
	// DMOp: IOCTL_PRIVCMD_DM_OP with dom=DOMID_INVALID and no buffers
	// succeeded, as libxendevicemodel probes it (ENOTTY: kernel too old).
	DMOp error
	// MmapBatchV2 and MmapResource: the kernel knows the ioctl (an empty
	// call fails with EINVAL, not ENOTTY).
	MmapBatchV2  error
	MmapResource error
	// Unimplemented is the errno the driver gives for an unknown ioctl
	// (IOCTL_PRIVCMD_UNIMPLEMENTED), as libxenforeignmemory records it.
	Unimplemented error
	// Hypercall: hypercall buffers could be set up; HypercallBuffers says
	// from where (HypercallPath when /dev/xen/hypercall works).
	Hypercall        error
	HypercallBuffers string
	// XenVersion is "major.minor" from XENVER_version.
	XenVersion    string
	XenVersionErr error
	// Evtchn: /dev/xen/evtchn could be opened.
	Evtchn error
	// Dom0: /proc/xen/capabilities says control_d.
	Dom0    bool
	Dom0Err error
}

// Probe opens the Xen handles a device model needs and reports what works.
// It never panics and always returns a report; Err summarises it.
func Probe() *ProbeReport {
	r := &ProbeReport{}
	if caps, err := os.ReadFile("/proc/xen/capabilities"); err != nil {
		r.Dom0Err = fmt.Errorf("xen: read /proc/xen/capabilities (is xenfs mounted on /proc/xen?): %w", err)
	} else {
		r.Dom0 = strings.Contains(string(caps), "control_d")
	}

	if ev, err := OpenEvtchn(); err != nil {
		r.Evtchn = err
	} else {
		ev.Close()
	}

	p, err := OpenPrivcmd()
	if err != nil {
		r.Privcmd = err
		skipped := errors.New("xen: not probed (no privcmd)")
		r.DMOp, r.MmapBatchV2, r.MmapResource, r.Unimplemented, r.Hypercall, r.XenVersionErr = skipped, skipped, skipped, skipped, skipped, skipped
		return r
	}
	defer p.Close()

	if err := p.probeDMOp(); err != nil {
		r.DMOp = fmt.Errorf("xen: IOCTL_PRIVCMD_DM_OP probe (dom DOMID_INVALID, no buffers): %w", err)
	}
	r.MmapBatchV2 = p.probeIoctl("IOCTL_PRIVCMD_MMAPBATCH_V2", func(fd int) error {
		return ioctlMmapBatchV2(fd, &privcmdMmapBatchV2{Dom: uint16(DomidSelf)})
	})
	r.MmapResource = p.probeIoctl("IOCTL_PRIVCMD_MMAP_RESOURCE", func(fd int) error {
		// addr set, num 0: refused with EINVAL before any work.
		return ioctlMmapResource(fd, &privcmdMmapResource{Dom: uint16(DomidSelf), Addr: PageSize})
	})
	if fd, err := p.acquire(); err == nil {
		r.Unimplemented = ioctlUnimplemented(fd)
		p.mu.RUnlock()
	}
	if kind, err := p.HypercallBufferKind(); err != nil {
		r.Hypercall = err
	} else {
		r.HypercallBuffers = kind
	}
	if maj, min, err := p.XenVersion(); err != nil {
		r.XenVersionErr = err
	} else {
		r.XenVersion = fmt.Sprintf("%d.%d", maj, min)
	}
	return r
}

// probeIoctl runs an ioctl that must fail with something other than ENOTTY.
func (p *Privcmd) probeIoctl(name string, call func(fd int) error) error {
	fd, err := p.acquire()
	if err != nil {
		return err
	}
	defer p.mu.RUnlock()
	err = call(fd)
	if errors.Is(err, unix.ENOTTY) {
		return fmt.Errorf("xen: %s not supported by this kernel: %w", name, err)
	}
	return nil
}

// Err is nil if everything a device model needs works: privcmd with DM_OP,
// MMAPBATCH_V2 and MMAP_RESOURCE, and evtchn. Otherwise it joins the failures.
func (r *ProbeReport) Err() error {
	var errs []error
	for _, e := range []error{r.Privcmd, r.Evtchn} {
		if e != nil {
			errs = append(errs, e)
		}
	}
	if r.Privcmd == nil {
		for _, e := range []error{r.DMOp, r.MmapBatchV2, r.MmapResource} {
			if e != nil {
				errs = append(errs, e)
			}
		}
	}
	return errors.Join(errs...)
}

func (r *ProbeReport) String() string {
	var b strings.Builder
	line := func(what string, err error, ok string) {
		if err != nil {
			fmt.Fprintf(&b, "%-14s FAIL %v\n", what, err)
		} else {
			fmt.Fprintf(&b, "%-14s ok %s\n", what, ok)
		}
	}
	line("dom0", r.Dom0Err, fmt.Sprint(r.Dom0))
	line("privcmd", r.Privcmd, PrivcmdPath)
	line("dm_op", r.DMOp, "")
	line("mmapbatch_v2", r.MmapBatchV2, "")
	line("mmap_resource", r.MmapResource, "")
	line("hypercall", r.Hypercall, r.HypercallBuffers)
	line("xen_version", r.XenVersionErr, r.XenVersion)
	line("evtchn", r.Evtchn, EvtchnPath)
	return b.String()
}
