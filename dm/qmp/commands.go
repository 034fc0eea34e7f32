package qmp

import (
	"context"
	"os"

	"golang.org/x/sys/unix"
)

// RunState is what query-status reports.
type RunState struct {
	// Status is a QAPI RunState: "running", "paused", "prelaunch",
	// "inmigrate", "shutdown", "finish-migrate", "postmigrate", …
	Status  string
	Running bool
}

// Common run states (QAPI RunState).
const (
	StatusRunning   = "running"
	StatusPaused    = "paused"
	StatusPrelaunch = "prelaunch"
	StatusInmigrate = "inmigrate"
	StatusShutdown  = "shutdown"
)

// ChardevInfo is one entry of query-chardev.
type ChardevInfo struct {
	Label        string `json:"label"`
	Filename     string `json:"filename"`
	FrontendOpen bool   `json:"frontend-open"`
}

// Backend is what the standard commands need from the device model.
// Implementations must answer quickly: Stop and Cont change the ioreq
// server state and drain in-flight device I/O, nothing that waits on the
// guest.
type Backend interface {
	RunState() RunState
	// Stop pauses emulation (QMP stop). Stopping a stopped VM succeeds.
	Stop(ctx context.Context) error
	// Cont resumes emulation (QMP cont). It must succeed when already
	// running.
	Cont(ctx context.Context) error
	// Chardevs lists the character devices (monitors and serial ports).
	Chardevs() []ChardevInfo
	// VCPUs is the number of vCPUs (XEN_DMOP_nr_vcpus).
	VCPUs() int
	// SaveDevicesState writes the device state to f (xen-save-devices-
	// state). f is closed by the caller afterwards.
	SaveDevicesState(ctx context.Context, f *os.File, live bool) error
	// SetGlobalDirtyLog turns reporting of DM-written guest pages to Xen
	// (XEN_DMOP_modified_memory) on or off (xen-set-global-dirty-log).
	SetGlobalDirtyLog(ctx context.Context, enable bool) error
}

// Version is query-version's reply.
type Version struct {
	QEMU struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	} `json:"qemu"`
	Package string `json:"package"`
}

// CPUInfoFast is one entry of query-cpus-fast.
type CPUInfoFast struct {
	CPUIndex int    `json:"cpu-index"`
	QOMPath  string `json:"qom-path"`
	ThreadID int    `json:"thread-id"`
	Target   string `json:"target"`
	Props    struct {
		SocketID int `json:"socket-id"`
		CoreID   int `json:"core-id"`
		ThreadID int `json:"thread-id"`
	} `json:"props"`
}

// RegisterBasic installs the read-only queries: query-status,
// query-version, query-commands, query-chardev, query-vnc,
// query-cpus-fast. This is all the libxenstat monitor gets.
func RegisterBasic(s *Server, b Backend) {
	s.Handle("query-status", func(context.Context, *Request) (any, error) {
		st := b.RunState()
		return map[string]any{"status": st.Status, "running": st.Running, "singlestep": false}, nil
	})
	s.Handle("query-version", func(_ context.Context, r *Request) (any, error) {
		var v Version
		v.QEMU.Major, v.QEMU.Minor, v.QEMU.Micro = s.opts.Major, s.opts.Minor, s.opts.Micro
		v.Package = s.opts.Package
		return v, nil
	})
	s.Handle("query-commands", func(context.Context, *Request) (any, error) {
		var out []map[string]string
		for _, n := range s.Commands() {
			out = append(out, map[string]string{"name": n})
		}
		return out, nil
	})
	s.Handle("query-chardev", func(context.Context, *Request) (any, error) {
		l := b.Chardevs()
		if l == nil {
			l = []ChardevInfo{}
		}
		return l, nil
	})
	s.Handle("query-vnc", func(context.Context, *Request) (any, error) {
		return map[string]any{"enabled": false}, nil
	})
	s.Handle("query-cpus-fast", func(context.Context, *Request) (any, error) {
		n := b.VCPUs()
		out := make([]CPUInfoFast, n)
		pid := os.Getpid()
		for i := range out {
			out[i].CPUIndex = i
			out[i].QOMPath = "/machine/unattached/device[" + itoa(i) + "]"
			out[i].ThreadID = pid
			out[i].Target = "x86_64"
			out[i].Props.SocketID = i
		}
		return out, nil
	})
}

// RegisterStandard installs RegisterBasic's queries and the commands libxl
// 4.17 sends on its own monitor: stop, cont, add-fd, remove-fd,
// query-fdsets, xen-save-devices-state, xen-set-global-dirty-log.
// Everything else answers CommandNotFound until registered with Handle.
func RegisterStandard(s *Server, b Backend) {
	RegisterBasic(s, b)
	s.Handle("stop", func(ctx context.Context, r *Request) (any, error) {
		if err := r.Decode(&struct{}{}); err != nil {
			return nil, err
		}
		was := b.RunState().Running
		if err := b.Stop(ctx); err != nil {
			return nil, err
		}
		if was && !b.RunState().Running {
			s.Event("STOP", nil)
		}
		return nil, nil
	})
	s.Handle("cont", func(ctx context.Context, r *Request) (any, error) {
		if err := r.Decode(&struct{}{}); err != nil {
			return nil, err
		}
		was := b.RunState().Running
		if err := b.Cont(ctx); err != nil {
			return nil, err
		}
		if !was && b.RunState().Running {
			s.Event("RESUME", nil)
		}
		return nil, nil
	})
	s.Handle("add-fd", func(_ context.Context, r *Request) (any, error) {
		var args struct {
			FDSetID *int64  `qmp:"fdset-id,optional"`
			Opaque  *string `qmp:"opaque,optional"`
		}
		if err := r.Decode(&args); err != nil {
			return nil, err
		}
		if len(r.FDs) == 0 {
			return nil, Errorf("No file descriptor supplied via SCM_RIGHTS")
		}
		id := int64(-1)
		if args.FDSetID != nil {
			if *args.FDSetID < 0 {
				return nil, Errorf("Parameter 'fdset-id' expects a non-negative value")
			}
			id = *args.FDSetID
		}
		opaque := ""
		if args.Opaque != nil {
			opaque = *args.Opaque
		}
		fds := r.TakeFDs()
		// One fd per add-fd, as QEMU; extra ones are closed.
		closeFiles(fds[1:])
		set, fd := s.fdsets.Add(id, fds[0], opaque, r.conn)
		return map[string]any{"fdset-id": set, "fd": fd}, nil
	})
	s.Handle("remove-fd", func(_ context.Context, r *Request) (any, error) {
		var args struct {
			FDSetID int64 `qmp:"fdset-id"`
			FD      *int  `qmp:"fd,optional"`
		}
		if err := r.Decode(&args); err != nil {
			return nil, err
		}
		fd := -1
		if args.FD != nil {
			fd = *args.FD
		}
		if err := s.fdsets.Remove(args.FDSetID, fd); err != nil {
			return nil, Errorf("%v", err)
		}
		return nil, nil
	})
	s.Handle("query-fdsets", func(context.Context, *Request) (any, error) {
		return s.fdsets.Query(), nil
	})
	s.Handle("xen-save-devices-state", func(ctx context.Context, r *Request) (any, error) {
		var args struct {
			Filename string `qmp:"filename"`
			Live     *bool  `qmp:"live,optional"`
		}
		if err := r.Decode(&args); err != nil {
			return nil, err
		}
		// QEMU defaults live to true (qapi/migration.json).
		live := args.Live == nil || *args.Live
		f, err := s.fdsets.OpenFile(args.Filename, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC, 0o660)
		if err != nil {
			return nil, Errorf("%v", err)
		}
		defer f.Close()
		if err := b.SaveDevicesState(ctx, f, live); err != nil {
			return nil, err
		}
		return nil, nil
	})
	s.Handle("xen-set-global-dirty-log", func(ctx context.Context, r *Request) (any, error) {
		var args struct {
			Enable bool `qmp:"enable"`
		}
		if err := r.Decode(&args); err != nil {
			return nil, err
		}
		return nil, b.SetGlobalDirtyLog(ctx, args.Enable)
	})
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b [20]byte
	n := len(b)
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	return string(b[n:])
}
