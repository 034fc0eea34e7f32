package dm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/chardev"
	"github.com/xen-dm-go/xen-dm-go/dm/config"
	"github.com/xen-dm-go/xen-dm-go/dm/qmp"
	"github.com/xen-dm-go/xen-dm-go/dm/xen"
)

// StatePath is where libxl waits for "running"
// (/local/domain/0/device-model/<domid>/state, §3.1).
func StatePath(dom xen.Domid) string {
	return fmt.Sprintf("/local/domain/0/device-model/%d/state", dom)
}

// Options configure a Core beyond the command line.
type Options struct {
	// Platform opens the Xen handles (default: XenPlatform{}).
	Platform Platform
	// Log is where everything is logged (default: slog.Default()).
	Log *slog.Logger
	// DeviceState saves and loads device state (&DevState{} in the
	// binary); nil means save/restore are refused (see DeviceState).
	DeviceState DeviceState
	// OpenTAP creates and holds a TAP interface (default: openTAP).
	OpenTAP func(name string) (io.Closer, error)
	// ChardevOptions are passed to chardev.Open for each -serial.
	ChardevOptions chardev.Options
	// IncomingFile overrides os.NewFile for -incoming fd:N (tests).
	IncomingFile func(fd int) *os.File
	// QMPHook, if set, is called with each QMP server after the standard
	// commands are registered, to add commands (later issues).
	QMPHook func(chardevID string, s *qmp.Server)
	// TrackerDir is where the page↔sector tracker is served to the
	// migration transport (blk.TrackerSocketPath); "" serves nothing.
	// The binary uses /var/run/xen, libxl's run directory.
	TrackerDir string
}

// Core is one running device model.
type Core struct {
	cfg   *config.Config
	opts  Options
	log   *slog.Logger
	dom   xen.Domid
	steps *steps

	hv      Hypervisor
	dm      DeviceModel
	ev      EventChannel
	xs      Xenstore
	mem     GuestMemory // tracked: writes are dirty-logged
	vcpus   int
	ioserv  xen.IoservID
	pages   *xen.IoreqPages
	bufPort xen.Port // remote (guest-side) buffered port
	io      *ioSpace
	dirty   *dirtyLog
	tracker *blk.Tracker // which guest pages equal which disk blocks
	machine *Machine
	loop    *ioreqLoop
	emu     *emulator
	servers []*qmp.Server
	monInfo []qmp.ChardevInfo

	// runMu serialises the run-state changes (stop, cont, save).
	runMu sync.Mutex

	mu              sync.Mutex
	status          string
	disksHandedOver bool // a live save left the disks to the destination
	wroteRunning    bool
	xsClosed        bool
	shutdownOnce    sync.Once

	fatalOnce sync.Once
	fatalCh   chan error
}

// New prepares a Core for cfg; Start brings it up.
func New(cfg *config.Config, opts Options) *Core {
	if opts.Platform == nil {
		opts.Platform = XenPlatform{}
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.OpenTAP == nil {
		opts.OpenTAP = openTAP
	}
	if opts.IncomingFile == nil {
		opts.IncomingFile = func(fd int) *os.File { return os.NewFile(uintptr(fd), fmt.Sprintf("incoming-fd-%d", fd)) }
	}
	log := opts.Log.With("domid", cfg.DomID)
	c := &Core{
		cfg:     cfg,
		opts:    opts,
		log:     log,
		dom:     xen.Domid(cfg.DomID),
		steps:   &steps{log: log},
		fatalCh: make(chan error, 1),
	}
	switch {
	case cfg.Incoming != nil:
		c.status = qmp.StatusInmigrate
	case cfg.StartPaused:
		c.status = qmp.StatusPrelaunch
	default:
		c.status = qmp.StatusRunning
	}
	return c
}

// Run starts the device model, serves until ctx is done (a signal) or a
// fatal error, and tears down. It returns the start-up or fatal error.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	c := New(cfg, opts)
	start := time.Now()
	if err := c.Start(ctx); err != nil {
		c.Teardown()
		return err
	}
	c.log.Info("device model ready", "took", time.Since(start), "status", c.RunState().Status)
	var err error
	select {
	case <-ctx.Done():
		c.log.Info("exiting on request", "cause", context.Cause(ctx))
	case err = <-c.fatalCh:
		c.log.Error("fatal error; tearing down", "err", err)
	}
	c.Teardown()
	return err
}

// Fatal returns a channel that receives the first fatal runtime error.
func (c *Core) Fatal() <-chan error { return c.fatalCh }

func (c *Core) fatal(err error) {
	c.fatalOnce.Do(func() { c.fatalCh <- err })
}

// Teardown undoes every completed start-up step in reverse order.
func (c *Core) Teardown() {
	c.log.Info("teardown")
	c.steps.unwind()
}

// Steps lists the start-up steps that completed and will be undone.
func (c *Core) Steps() []string { return c.steps.names() }

// Machine is the assembled machine (nil before the "build machine" step).
func (c *Core) Machine() *Machine { return c.machine }

// Start runs the start-up steps. On error the caller runs Teardown.
func (c *Core) Start(ctx context.Context) error {
	cfg := c.cfg
	for _, n := range cfg.UniqueNotes() {
		c.log.Info("option " + n.String())
	}
	s := c.steps
	if err := s.run(ctx, "open privcmd", func() (func() error, error) {
		hv, err := c.opts.Platform.OpenHypervisor(c.dom)
		if err != nil {
			return nil, err
		}
		c.hv, c.dm = hv, hv.DeviceModel()
		return hv.Close, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "open evtchn", func() (func() error, error) {
		ev, err := c.opts.Platform.OpenEventChannel()
		if err != nil {
			return nil, err
		}
		c.ev = ev
		return ev.Close, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "open xenstore", func() (func() error, error) {
		xs, err := c.opts.Platform.OpenXenstore()
		if err != nil {
			return nil, err
		}
		c.xs = xs
		return c.closeXenstore, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "nr_vcpus", func() (func() error, error) {
		n, err := c.dm.NrVCPUs()
		if err != nil {
			return nil, err
		}
		if n < 1 || n > 128 {
			return nil, fmt.Errorf("XEN_DMOP_nr_vcpus says %d; the ioreq page serves 1–128", n)
		}
		c.vcpus = n
		c.log.Info("guest vCPUs", "nr_vcpus", n, "smp", cfg.SMP.MaxCPUs)
		return nil, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "create ioreq server", func() (func() error, error) {
		id, err := c.dm.CreateIoreqServer(xen.BufIoreqAtomic)
		if err != nil {
			return nil, err
		}
		c.ioserv = id
		c.log.Info("ioreq server created", "ioservid", id)
		return func() error { return c.dm.DestroyIoreqServer(id) }, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "map ioreq pages", func() (func() error, error) {
		p, err := c.dm.MapIoreqPages(c.ioserv, true)
		if err != nil {
			return nil, err
		}
		if p.Ioreq.Slots() < c.vcpus {
			p.Unmap()
			return nil, fmt.Errorf("ioreq page has %d slots for %d vCPUs", p.Ioreq.Slots(), c.vcpus)
		}
		c.pages = p
		return p.Unmap, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "get bufioreq port", func() (func() error, error) {
		p, err := c.dm.BufioreqPort(c.ioserv)
		c.bufPort = p
		return nil, err
	}); err != nil {
		return err
	}
	c.dirty = newDirtyLog(c.dm, c.log)
	if err := s.run(ctx, "open guest memory", func() (func() error, error) {
		m, err := c.hv.GuestMemory(c.dirty)
		if err != nil {
			return nil, err
		}
		// Entries are claims the guest's CPU may have made stale since the
		// transfer; the tracker service checks each one it answers against
		// the page (docs/tracker.md).
		c.tracker = blk.NewTracker(blk.TrackerConfig{Dirty: c.dirty, PageHash: guestPageHash(m, cfg.DomID)})
		c.mem = trackedMemory{GuestMemory: m, dirty: c.dirty, tracker: c.tracker}
		return func() error { c.dirty.stop(); return nil }, nil
	}); err != nil {
		return err
	}
	c.io = newIOSpace(serverRanges{c.dm, c.ioserv}, c.log)
	if err := s.run(ctx, "build machine", func() (func() error, error) {
		m, err := buildMachine(machineEnv{
			cfg: cfg, io: c.io, irq: c.dm, sd: guestShutdown{c}, mem: c.mem, dirty: c.dirty, tracker: c.tracker,
			vcpus: c.vcpus, log: c.log, openTAP: c.opts.OpenTAP, chardevOpts: c.opts.ChardevOptions,
		})
		if err != nil {
			return nil, err
		}
		c.machine = m
		return m.Close, nil
	}); err != nil {
		return err
	}
	if c.opts.TrackerDir != "" {
		if err := s.run(ctx, "serve page tracker", func() (func() error, error) {
			srv, err := blk.ServeTracker(blk.TrackerSocketPath(c.opts.TrackerDir, cfg.DomID), c.tracker)
			if err != nil {
				return nil, err
			}
			c.log.Info("page tracker served", "socket", srv.Path())
			return srv.Close, nil
		}); err != nil {
			return err
		}
	}
	if err := s.run(ctx, "register PCI devices", func() (func() error, error) {
		for _, devfn := range c.machine.Bus.DevFns() {
			r := xen.PCIDevice(0, 0, devfn>>3, devfn&7)
			if err := c.dm.MapIORange(c.ioserv, r); err != nil {
				return nil, err
			}
		}
		return nil, nil
	}); err != nil {
		return err
	}
	if cfg.Incoming != nil {
		if err := s.run(ctx, "load incoming device state", func() (func() error, error) { return c.loadIncoming(ctx) }); err != nil {
			return err
		}
	}
	if err := s.run(ctx, "enable ioreq server", func() (func() error, error) {
		if err := c.dm.SetIoreqServerState(c.ioserv, true); err != nil {
			return nil, err
		}
		return func() error { return c.dm.SetIoreqServerState(c.ioserv, false) }, nil
	}); err != nil {
		return err
	}
	vcpuOf := map[xen.Port]int{}
	var localBuf xen.Port
	if err := s.run(ctx, "bind event channels", func() (func() error, error) {
		var bound []xen.Port
		undo := func() error {
			var errs []error
			for _, p := range bound {
				if err := c.ev.Unbind(p); err != nil {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		}
		for v := 0; v < c.vcpus; v++ {
			remote, err := c.pages.Ioreq.VPEport(v)
			if err != nil {
				undo()
				return nil, err
			}
			local, err := c.ev.BindInterdomain(c.dom, remote)
			if err != nil {
				undo()
				return nil, fmt.Errorf("vcpu %d (vp_eport %d): %w", v, remote, err)
			}
			bound = append(bound, local)
			vcpuOf[local] = v
		}
		if c.bufPort != 0 {
			local, err := c.ev.BindInterdomain(c.dom, c.bufPort)
			if err != nil {
				undo()
				return nil, fmt.Errorf("buffered ring (port %d): %w", c.bufPort, err)
			}
			bound = append(bound, local)
			localBuf = local
		}
		return undo, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "start ioreq loop", func() (func() error, error) {
		c.emu = &emulator{io: c.io, pci: c.machine.Bus, mem: c.mem, log: c.log, lim: newRateLimiter(),
			onInvalidate: c.machine.drainQuick}
		c.loop = &ioreqLoop{ev: c.ev, pages: c.pages, emu: c.emu, log: c.log, lim: c.emu.lim,
			vcpuOf: vcpuOf, bufPort: localBuf, afterRound: c.dirty.flush, fatal: c.fatal}
		c.loop.start()
		return c.loop.stop, nil
	}); err != nil {
		return err
	}
	if err := s.run(ctx, "start QMP", c.startQMP); err != nil {
		return err
	}
	if cfg.DomidRestrict || cfg.Chroot != "" || cfg.RunAs != "" {
		if err := s.run(ctx, "drop privileges", func() (func() error, error) { return nil, c.dropPrivileges() }); err != nil {
			return err
		}
	}
	if !cfg.StartPaused {
		if err := s.run(ctx, "write xenstore state", func() (func() error, error) {
			if err := c.announceRunning(ctx); err != nil {
				return nil, err
			}
			return nil, nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// loadIncoming loads -incoming fd:N before the guest can run (the ioreq
// server is not enabled yet, and guest RAM came with the libxc stream: it is
// not populated again; the pages the transport elided are filled by
// DevState.PageRefs). A state that cannot be loaded fails start-up, so the
// device model exits before it signals readiness and libxl fails the
// restore. ctx (the signals) interrupts a long fill.
func (c *Core) loadIncoming(ctx context.Context) (func() error, error) {
	f := c.opts.IncomingFile(c.cfg.Incoming.FD)
	if f == nil {
		return nil, fmt.Errorf("-incoming fd:%d is not an open file descriptor", c.cfg.Incoming.FD)
	}
	defer f.Close()
	if c.opts.DeviceState == nil {
		return nil, fmt.Errorf("restoring device state (-incoming fd:%d) is not supported yet by this build of xen-dm-go", c.cfg.Incoming.FD)
	}
	if err := c.opts.DeviceState.Load(ctx, f, c.machine); err != nil {
		return nil, fmt.Errorf("-incoming fd:%d: %w", c.cfg.Incoming.FD, err)
	}
	c.mu.Lock()
	if c.cfg.StartPaused {
		c.status = qmp.StatusPaused
	} else {
		c.status = qmp.StatusRunning
	}
	c.mu.Unlock()
	return nil, nil
}

// announceRunning writes "running" to the state node libxl watches, once.
func (c *Core) announceRunning(ctx context.Context) error {
	c.mu.Lock()
	if c.wroteRunning {
		c.mu.Unlock()
		return nil
	}
	if c.xsClosed {
		c.mu.Unlock()
		// -xen-domid-restrict closed xenstore, as QEMU does; libxl
		// learns about us through QMP in that mode.
		c.log.Info("xenstore closed by -xen-domid-restrict; not writing the state node")
		return nil
	}
	c.wroteRunning = true
	c.mu.Unlock()
	// Not cancelled by a signal: the write is short, and half-announcing
	// is worse than finishing it.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	path := StatePath(c.dom)
	if err := c.xs.Write(ctx, path, "running"); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	c.log.Info("announced to libxl", "path", path, "value", "running")
	return nil
}

func (c *Core) closeXenstore() error {
	c.mu.Lock()
	if c.xsClosed {
		c.mu.Unlock()
		return nil
	}
	c.xsClosed = true
	c.mu.Unlock()
	return c.xs.Close()
}

// dropPrivileges applies -xen-domid-restrict, -chroot and -runas, after
// every handle and socket is open (QEMU os_setup_post, xen_restrict).
func (c *Core) dropPrivileges() error {
	cfg := c.cfg
	if cfg.DomidRestrict {
		if err := c.hv.Restrict(); err != nil {
			return fmt.Errorf("restrict privcmd to dom %d: %w", c.dom, err)
		}
		if r, ok := c.ev.(evtchnRestricter); ok {
			if err := r.RestrictDomid(c.dom); err != nil {
				return fmt.Errorf("restrict evtchn to dom %d: %w", c.dom, err)
			}
		} else {
			c.log.Warn("event channel cannot be restricted to the domain")
		}
		if err := c.closeXenstore(); err != nil {
			c.log.Warn("closing xenstore for -xen-domid-restrict", "err", err)
		}
		c.log.Info("Xen handles restricted to the guest domain")
	}
	uid, gid := -1, -1
	if cfg.RunAs != "" {
		var err error
		if uid, gid, err = lookupRunAs(cfg.RunAs); err != nil {
			return err
		}
	}
	if cfg.Chroot != "" {
		if err := syscall.Chroot(cfg.Chroot); err != nil {
			return fmt.Errorf("chroot %s: %w", cfg.Chroot, err)
		}
		if err := os.Chdir("/"); err != nil {
			return fmt.Errorf("chdir / in chroot: %w", err)
		}
		c.log.Info("chrooted", "dir", cfg.Chroot)
	}
	if uid >= 0 {
		// syscall's Set* apply to every thread of the process (Go ≥ 1.16).
		if err := syscall.Setgroups([]int{gid}); err != nil {
			return fmt.Errorf("setgroups(%d): %w", gid, err)
		}
		if err := syscall.Setgid(gid); err != nil {
			return fmt.Errorf("setgid(%d): %w", gid, err)
		}
		if err := syscall.Setuid(uid); err != nil {
			return fmt.Errorf("setuid(%d): %w", uid, err)
		}
		c.log.Info("running as", "uid", uid, "gid", gid)
	}
	return nil
}

// lookupRunAs resolves -runas USER or UID:GID.
func lookupRunAs(s string) (uid, gid int, err error) {
	if u, g, ok := strings.Cut(s, ":"); ok {
		uid, err1 := strconv.Atoi(u)
		gid, err2 := strconv.Atoi(g)
		if err1 != nil || err2 != nil {
			return 0, 0, fmt.Errorf("-runas %s: not UID:GID", s)
		}
		return uid, gid, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, 0, fmt.Errorf("-runas %s: %w", s, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("-runas %s: non-numeric uid/gid", s)
	}
	return uid, gid, nil
}

// startQMP serves every -mon chardev: libxl's (full command set) and any
// other, such as libxenstat's (queries only).
func (c *Core) startQMP() (func() error, error) {
	fds := qmp.NewFDSets()
	var closers []func()
	undo := func() error {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		fds.CloseAll()
		return nil
	}
	mons := c.cfg.ControlMonitors()
	if len(mons) == 0 {
		c.log.Warn("no QMP monitor configured (-chardev … -mon chardev=…,mode=control): libxl cannot talk to us")
	}
	type monitor struct {
		s  *qmp.Server
		l  net.Listener
		id string
	}
	var started []monitor
	var infos []qmp.ChardevInfo
	for i, m := range mons {
		cd := m.Chardev
		ln, info, err := listenChardev(cd)
		if err != nil {
			for _, st := range started {
				st.l.Close()
			}
			undo()
			return nil, err
		}
		s := qmp.NewServer(qmp.Options{
			Name: cd.ID, Package: "xen-dm-go " + config.Version,
			Major: config.QEMUMajor, Minor: config.QEMUMinor, Micro: config.QEMUMicro,
			FDSets: fds, Log: c.log,
		})
		if i == 0 || cd.ID == "libxl-cmd" {
			qmp.RegisterStandard(s, c)
		} else {
			qmp.RegisterBasic(s, c)
		}
		if c.opts.QMPHook != nil {
			c.opts.QMPHook(cd.ID, s)
		}
		started = append(started, monitor{s, ln, info.Filename})
		infos = append(infos, info)
	}
	// Serve only once every monitor is set up: a client may already be
	// waiting (dm_restrict) and query-chardev lists all of them.
	c.mu.Lock()
	c.monInfo = infos
	for _, st := range started {
		c.servers = append(c.servers, st.s)
	}
	c.mu.Unlock()
	for _, st := range started {
		go st.s.Serve(st.l)
		s := st.s
		closers = append(closers, func() { s.Close() })
		c.log.Info("QMP monitor listening", "socket", st.id)
	}
	return undo, nil
}

// event sends a QMP event to every monitor.
func (c *Core) event(name string, data any) {
	c.mu.Lock()
	servers := c.servers
	c.mu.Unlock()
	for _, s := range servers {
		s.Event(name, data)
	}
}

// RunState implements qmp.Backend.
func (c *Core) RunState() qmp.RunState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return qmp.RunState{Status: c.status, Running: c.status == qmp.StatusRunning}
}

// drainTimeout bounds how long stop waits for in-flight device I/O; libxl
// gives a QMP command 10 s.
const drainTimeout = 5 * time.Second

// Stop implements qmp.Backend (QMP stop): disable the ioreq server so Xen
// stops forwarding accesses, then drain in-flight device I/O and flush the
// dirty log, so nothing touches guest memory after the reply.
func (c *Core) Stop(ctx context.Context) error {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	return c.stop(ctx)
}

func (c *Core) stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.status != qmp.StatusRunning {
		return nil
	}
	start := time.Now()
	if err := c.dm.SetIoreqServerState(c.ioserv, false); err != nil {
		return fmt.Errorf("disable ioreq server: %w", err)
	}
	dctx, cancel := context.WithTimeout(ctx, drainTimeout)
	defer cancel()
	if err := c.machine.Drain(dctx); err != nil {
		c.log.Warn("stop: draining device I/O", "err", err)
	}
	c.dirty.flush()
	c.status = qmp.StatusPaused
	c.log.Info("stopped", "took", time.Since(start))
	return nil
}

// Cont implements qmp.Backend (QMP cont): enable the ioreq server; the first
// cont after -S also announces "running" in xenstore. It succeeds when
// already running. After a live save (a migration that failed on the way)
// it takes the disks back: the guest runs on here again.
func (c *Core) Cont(ctx context.Context) error {
	c.runMu.Lock()
	defer c.runMu.Unlock()
	return c.cont(ctx)
}

func (c *Core) cont(ctx context.Context) error {
	c.mu.Lock()
	switch c.status {
	case qmp.StatusRunning:
		c.mu.Unlock()
		return nil
	case qmp.StatusShutdown:
		c.mu.Unlock()
		return qmp.Errorf("Resetting the Virtual Machine is required")
	case qmp.StatusInmigrate:
		c.mu.Unlock()
		return qmp.Errorf("the incoming device state has not been loaded")
	}
	if err := c.dm.SetIoreqServerState(c.ioserv, true); err != nil {
		c.mu.Unlock()
		return fmt.Errorf("enable ioreq server: %w", err)
	}
	c.status = qmp.StatusRunning
	c.tracker.Thaw()
	handedOver := c.disksHandedOver
	c.disksHandedOver = false
	c.mu.Unlock()
	if handedOver {
		c.log.Warn("resuming after a live device-state save (the migration did not complete): the guest and its disks are ours again")
	}
	c.log.Info("running")
	if err := c.announceRunning(ctx); err != nil {
		c.log.Warn("cont: could not announce running in xenstore", "err", err)
	}
	return nil
}

// Chardevs implements qmp.Backend.
func (c *Core) Chardevs() []qmp.ChardevInfo {
	c.mu.Lock()
	out := append([]qmp.ChardevInfo(nil), c.monInfo...)
	c.mu.Unlock()
	if c.machine != nil {
		for _, sp := range c.machine.Serials {
			out = append(out, qmp.ChardevInfo{Label: sp.Label, Filename: sp.Backend.Filename(), FrontendOpen: true})
		}
	}
	return out
}

// VCPUs implements qmp.Backend.
func (c *Core) VCPUs() int { return c.vcpus }

// SaveDevicesState implements qmp.Backend (xen-save-devices-state). libxl
// has stopped the VM; a running VM is stopped around the save (as QEMU
// does). In-flight disk I/O is drained and the images are flushed before
// the state is taken, so the state describes no transfer in flight and, with
// live (a migration), the destination that opens the images next sees
// every write; the guest stays stopped, so nothing is written to them until
// a cont. f is truncated first: libxl opens qemu-save.<domid> without
// O_TRUNC and copies the whole file into the stream.
func (c *Core) SaveDevicesState(ctx context.Context, f *os.File, live bool) error {
	if c.opts.DeviceState == nil {
		return qmp.Errorf("xen-save-devices-state: saving device state is not supported yet by this build of xen-dm-go")
	}
	c.runMu.Lock()
	defer c.runMu.Unlock()
	c.mu.Lock()
	running := c.status == qmp.StatusRunning
	c.mu.Unlock()
	if running {
		if err := c.stop(ctx); err != nil {
			return err
		}
		defer c.cont(ctx)
	}
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, drainTimeout)
	err := c.machine.Drain(dctx)
	cancel()
	if err != nil {
		return fmt.Errorf("xen-save-devices-state: draining and flushing the disks: %w", err)
	}
	c.dirty.flush()
	// The guest is stopped and no transfer is in flight: the tracker's
	// table stops changing; the transport judges the final round by it.
	c.tracker.Freeze()
	var buf bytes.Buffer
	if err := c.opts.DeviceState.Save(ctx, &buf, c.machine, live); err != nil {
		return fmt.Errorf("xen-save-devices-state: %w", err)
	}
	if err := writeStateFile(f, buf.Bytes()); err != nil {
		return fmt.Errorf("xen-save-devices-state: %w", err)
	}
	if live && !running {
		c.mu.Lock()
		c.disksHandedOver = true
		c.mu.Unlock()
	}
	c.log.Info("device state saved", "live", live, "bytes", buf.Len(), "file", f.Name(), "took", time.Since(start))
	if live {
		c.log.Info("disk images flushed and left to the destination: no further writes until cont")
	}
	return nil
}

// writeStateFile replaces the contents of f with b: truncate (libxl opened
// it without O_TRUNC, and a longer earlier state would leave garbage after
// ours), write from offset 0, fsync. A pipe or socket is just written.
func writeStateFile(f *os.File, b []byte) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	regular := fi.Mode().IsRegular()
	if regular {
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("truncate %s: %w", f.Name(), err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return fmt.Errorf("seek %s: %w", f.Name(), err)
		}
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write %d bytes to %s: %w", len(b), f.Name(), err)
	}
	if regular {
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %s: %w", f.Name(), err)
		}
	}
	return nil
}

// SetGlobalDirtyLog implements qmp.Backend (xen-set-global-dirty-log).
func (c *Core) SetGlobalDirtyLog(_ context.Context, enable bool) error {
	c.dirty.setEnabled(enable)
	c.log.Info("global dirty log", "enabled", enable)
	return nil
}

// guestShutdown implements hw.Shutdown: XEN_DMOP_remote_shutdown, issued
// from the device's handler, so before the ioreq that asked completes.
// With -no-shutdown (always, under libxl) the process keeps running until
// libxl destroys the domain and sends SIGHUP.
type guestShutdown struct{ c *Core }

func (g guestShutdown) PowerOff() error {
	c := g.c
	c.log.Info("guest powered off: XEN_DMOP_remote_shutdown(poweroff); waiting for libxl to destroy the domain")
	err := c.dm.RemoteShutdown(xen.ShutdownPoweroff)
	c.mu.Lock()
	c.status = qmp.StatusShutdown
	c.mu.Unlock()
	c.shutdownOnce.Do(func() {
		go c.event("SHUTDOWN", map[string]any{"guest": true, "reason": "guest-shutdown"})
	})
	return err
}

func (g guestShutdown) Reboot() error {
	c := g.c
	c.log.Info("guest reset: XEN_DMOP_remote_shutdown(reboot)")
	err := c.dm.RemoteShutdown(xen.ShutdownReboot)
	go c.event("RESET", map[string]any{"guest": true, "reason": "guest-reset"})
	return err
}
