// Command xen-dm-go is a device model for Xen 4.17 HVM guests that replaces
// qemu-xen. libxl starts it (device_model_override=, with
// device_model_version="qemu-xen") with qemu-xen's command line and talks to
// it over QMP.
//
// Usage:
//
//	xen-dm-go -xen-domid N … (QEMU argv, as libxl builds it)
//	xen-dm-go SUBCOMMAND …   (migrate-send, migrate-receive, stream)
//
// QEMU's argv always starts with an option ('-…'), so a first argument that
// is a known subcommand word selects the subcommand.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/xen-dm-go/xen-dm-go/dm"
	"github.com/xen-dm-go/xen-dm-go/dm/config"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream"
)

// subcommand is a mode selected by the first argument.
type subcommand struct {
	summary string
	run     func(args []string, stdin io.Reader, stdout, stderr io.Writer) int
}

// subcommands: the migration transport and stream tools (dm/migstream).
var subcommands = map[string]subcommand{
	"migrate-send":    {"send a domain for xl migrate (-s transport), eliding disk-backed pages", migstream.SendMain},
	"migrate-receive": {"receive a domain sent by migrate-send and hand it to xl migrate-receive", migstream.ReceiveMain},
	"stream":          {"compact, inspect or verify a save/migration stream", migstream.StreamMain},
}

func main() {
	// os.Stdout itself (not a wrapper): migrate-send closes it when the
	// receiver goes away, so xl sees EOF instead of hanging.
	os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr))
}

func run(argv []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(argv) > 1 {
		if sc, ok := subcommands[argv[1]]; ok {
			return sc.run(argv[2:], stdin, stdout, stderr)
		}
	}
	return runDeviceModel(argv, stdout, stderr)
}

// runDeviceModel is the default mode: the device model with QEMU's argv.
func runDeviceModel(argv []string, stdout, stderr io.Writer) int {
	prog := filepath.Base(argv[0])
	cfg, err := config.Parse(argv[1:])
	switch {
	case errors.Is(err, config.ErrHelp):
		fmt.Fprint(stdout, config.Usage(prog))
		fmt.Fprintln(stdout, "\nSubcommands:")
		for name, sc := range subcommands {
			fmt.Fprintf(stdout, "  %-16s %s\n", name, sc.summary)
		}
		return 0
	case errors.Is(err, config.ErrVersion):
		fmt.Fprint(stdout, config.VersionText())
		return 0
	case err != nil:
		// QEMU prints "qemu-system-i386: <msg>" and exits 1.
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 1
	}
	log := dm.NewLogger(stderr)
	slog.SetDefault(log)
	log.Info("xen-dm-go starting", "version", config.Version, "pid", os.Getpid(), "argv", strings.Join(argv, " "))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := dm.Run(ctx, cfg, deviceModelOptions(log)); err != nil {
		log.Error("xen-dm-go exiting with an error", "err", err)
		return 1
	}
	log.Info("xen-dm-go exited")
	return 0
}

// deviceModelOptions are the device model's options: device state with the
// eager filler for elided pages (dm.EagerPageRefs: Debian's Xen has no
// mem_paging), and the tracker served in libxl's run directory.
func deviceModelOptions(log *slog.Logger) dm.Options {
	return dm.Options{
		Log:         log,
		DeviceState: &dm.DevState{Log: log, PageRefs: dm.EagerPageRefs(log)},
		TrackerDir:  "/var/run/xen",
	}
}
