// Package config parses the QEMU command line that libxl 4.17 builds for a
// qemu-xen device model (tools/libs/light/libxl_dm.c,
// libxl__build_device_model_args_new; shared/reference/xen-dm-interface.md
// §1.2) into a Config the device model core acts on.
//
// Syntax follows QEMU: "-opt value" or "--opt value", option values are
// comma-separated key=value lists with ",," as an escaped comma (ParseOpts).
// Every option libxl is known to emit is accepted. Those the device model has
// no use for are recorded in Config.Notes, so the core can log each one once;
// options libxl never emits, and the few it emits that we refuse
// (-xen-attach, -kernel/-initrd/-append, COLO's -object), are errors that
// name the flag.
package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
)

// Version of xen-dm-go, and the QEMU version it presents itself as (in the
// QMP greeting and --version). libxl keys features off the QEMU version
// (e.g. "live" for xen-save-devices-state needs ≥ 2.11), so we claim the
// qemu-xen release Debian pairs with Xen 4.17.
const (
	Version     = "0.1.0-dev"
	QEMUMajor   = 7
	QEMUMinor   = 2
	QEMUMicro   = 0
	QEMUVersion = "7.2.0"
)

// Default values QEMU uses when an option is absent.
const (
	DefaultRAMMiB = 128
	// HVMBelow4GRAMEnd is HVM_BELOW_4G_RAM_END: RAM above this is relocated
	// above 4 GiB unless -machine max-ram-below-4g says otherwise.
	HVMBelow4GRAMEnd = 0xF0000000
)

// ErrHelp and ErrVersion are returned by Parse for --help/-h and
// --version/-version: the caller prints Usage() or VersionText() and exits 0.
var (
	ErrHelp    = errors.New("help requested")
	ErrVersion = errors.New("version requested")
)

// Config is the parsed command line.
type Config struct {
	// DomID is -xen-domid: the guest domain this device model serves.
	DomID uint32

	// NoShutdown is -no-shutdown: do not exit when the guest powers off
	// (libxl always passes it; we never exit on our own anyway).
	NoShutdown bool
	// StartPaused is -S: start in "prelaunch" and write nothing to xenstore
	// until the first QMP cont (dm_restrict mode).
	StartPaused bool

	Chardevs []Chardev
	Monitors []Monitor

	Name string // -name (guest=)

	// VNC is the -vnc argument ("none" when off). VNC is not implemented:
	// QMP query-vnc reports {"enabled":false}.
	VNC      string
	Displays []string // -display arguments, in order
	Keymap   string   // -k

	// Serials are the -serial backends in order; serial port i is COM(i+1)
	// and its chardev label is "serial<i>".
	Serials []string

	Devices []Device
	Drives  []Drive
	Netdevs []Netdev
	Nets    []string // -net arguments ("none")

	Boot   Boot
	NoACPI bool // -no-acpi: no PIIX4 PM function (00:01.3)
	SMP    SMP

	Machine Machine
	// RAMSize is -m in bytes ((max_memkb − video_memkb) as libxl computes it).
	RAMSize uint64

	// Incoming is -incoming fd:N (restore / migration receiver), or nil.
	Incoming *Incoming

	DomidRestrict bool   // -xen-domid-restrict
	Chroot        string // -chroot
	RunAs         string // -runas user | uid:gid

	Globals []string // -global driver.prop=value (recorded)
	Traces  []string // -trace (recorded)

	// Notes are options accepted without effect, in argv order; the core
	// logs each flag once (UniqueNotes).
	Notes []Note
}

// Note records an option the device model accepts but does not act on.
type Note struct {
	Flag, Value, Why string
}

func (n Note) String() string {
	if n.Value == "" {
		return fmt.Sprintf("-%s: accepted and ignored: %s", n.Flag, n.Why)
	}
	return fmt.Sprintf("-%s %s: accepted and ignored: %s", n.Flag, n.Value, n.Why)
}

// UniqueNotes returns Notes with one entry per flag (the first).
func (c *Config) UniqueNotes() []Note {
	seen := map[string]bool{}
	var out []Note
	for _, n := range c.Notes {
		if !seen[n.Flag] {
			seen[n.Flag] = true
			out = append(out, n)
		}
	}
	return out
}

func (c *Config) note(flag, value, why string) {
	c.Notes = append(c.Notes, Note{flag, value, why})
}

// Chardev is a -chardev backend.
type Chardev struct {
	ID      string
	Backend string // socket, pty, file, null, stdio, spicevmc, …
	// Socket backends: a unix socket path, or an inherited listening fd
	// (FD ≥ 0; dm_restrict), or TCP host/port (COLO only).
	Path   string
	FD     int
	Host   string
	Port   string
	Server bool
	Wait   bool
	Opts   Opts
}

// Monitor is a -mon: a QMP (mode=control) monitor on a chardev.
type Monitor struct {
	Chardev string
	Mode    string // "control" (QMP); "readline" (HMP) is refused
	Pretty  bool
}

// DeviceKind classifies -device drivers.
type DeviceKind int

const (
	DeviceOther DeviceKind = iota // recorded, not emulated
	DeviceVGA                     // display adapter: recorded, not emulated (headless guest)
	DeviceIDECD                   // ide-cd on the PIIX3 IDE controller
	DeviceNIC                     // emulated NIC model (rtl8139, e1000, …)
)

func (k DeviceKind) String() string {
	switch k {
	case DeviceVGA:
		return "vga"
	case DeviceIDECD:
		return "ide-cd"
	case DeviceNIC:
		return "nic"
	}
	return "other"
}

// Device is a -device.
type Device struct {
	Driver string
	ID     string
	Kind   DeviceKind
	Opts   Opts
	// IDE placement for ide-cd: bus=ide.<Bus>, unit=<Unit>; Drive is the
	// id of an if=none -drive.
	Bus, Unit int
	Drive     string
	// NIC: netdev id and MAC address.
	Netdev, MAC string
}

var vgaDrivers = map[string]bool{
	"VGA": true, "cirrus-vga": true, "qxl-vga": true, "qxl": true, "std-vga": true,
	"secondary-vga": true, "bochs-display": true, "virtio-vga": true, "ati-vga": true,
}

var nicDrivers = map[string]bool{
	"rtl8139": true, "e1000": true, "e1000-82544gc": true, "e1000-82545em": true, "e1000e": true,
	"ne2k_pci": true, "pcnet": true, "virtio-net-pci": true, "vmxnet3": true,
	"i82550": true, "i82551": true, "i82557a": true, "i82557b": true, "i82557c": true,
	"i82558a": true, "i82558b": true, "i82559a": true, "i82559b": true, "i82559c": true,
	"i82559er": true, "i82562": true, "i82801": true,
}

// Drive is a -drive.
type Drive struct {
	File     string
	If       string // ide (default) or none
	Index    int    // -1 when not given
	Media    string // disk (default) or cdrom
	Format   string
	Cache    string
	ID       string
	ReadOnly bool
	// Raw is the -drive argument as given.
	Raw  string
	Opts Opts
	// Spec is the drive as dm/blk parsed it (blk.Open takes it).
	Spec blk.DriveSpec
}

// Netdev is a -netdev.
type Netdev struct {
	Type       string // tap, user, …
	ID         string
	IfName     string
	Bridge     string
	Script     string
	DownScript string
	Opts       Opts
}

// Boot is -boot.
type Boot struct {
	// Order is the boot device letters (a,b floppy; c disk; d CD-ROM;
	// n–p network), QEMU's default "cad" when -boot is absent.
	Order string
	Opts  Opts
}

// SMP is -smp. The device model takes the vCPU count from
// XEN_DMOP_nr_vcpus; this is informational.
type SMP struct {
	CPUs, MaxCPUs int
}

// Machine is -machine.
type Machine struct {
	// Type is "xenfv" (i440FX + the Xen platform device) or "pc" (no
	// platform device; requires accel=xen).
	Type string
	// XenPlatform says whether 00:02.0 xen-platform exists (xenfv).
	XenPlatform bool
	// MaxRAMBelow4G is max-ram-below-4g (bytes), 0 when absent.
	MaxRAMBelow4G  uint64
	SuppressVMDesc bool
	Opts           Opts
}

// Incoming is -incoming fd:N: device state to load before running.
type Incoming struct {
	FD int
}

// IDESlot is one of the four PIIX3 IDE positions (index = 2·channel + unit).
type IDESlot struct {
	Index  int
	CDROM  bool
	Drive  *Drive // nil for an empty CD-ROM tray or an absent slot
	Device *Device
	// ID is the QMP id of a CD-ROM (ide-<devno>), for eject /
	// blockdev-change-medium.
	ID string
}

// ControlMonitor pairs a QMP monitor with its chardev.
type ControlMonitor struct {
	Monitor Monitor
	Chardev Chardev
}

// ControlMonitors lists the QMP monitors in argv order, the first being
// libxl's (libxl-cmd) and a second one libxenstat's when present.
func (c *Config) ControlMonitors() []ControlMonitor {
	var out []ControlMonitor
	for _, m := range c.Monitors {
		for _, cd := range c.Chardevs {
			if cd.ID == m.Chardev {
				out = append(out, ControlMonitor{m, cd})
			}
		}
	}
	return out
}

// VGADevices returns the display adapters requested with -device.
func (c *Config) VGADevices() []Device { return c.devices(DeviceVGA) }

// NICs returns the emulated NICs requested with -device.
func (c *Config) NICs() []Device { return c.devices(DeviceNIC) }

func (c *Config) devices(k DeviceKind) []Device {
	var out []Device
	for _, d := range c.Devices {
		if d.Kind == k {
			out = append(out, d)
		}
	}
	return out
}

// Netdev returns the -netdev with the given id.
func (c *Config) Netdev(id string) (Netdev, bool) {
	for _, n := range c.Netdevs {
		if n.ID == id {
			return n, true
		}
	}
	return Netdev{}, false
}

// IDESlots returns the populated IDE positions (disks from -drive if=ide,
// CD-ROMs from -drive media=cdrom or -device ide-cd), sorted by index.
// Parse has already checked that no two claim the same position.
func (c *Config) IDESlots() []IDESlot {
	var slots [4]*IDESlot
	for i := range c.Drives {
		d := &c.Drives[i]
		if d.If != "ide" || d.Index < 0 || d.Index > 3 {
			continue
		}
		slots[d.Index] = &IDESlot{Index: d.Index, CDROM: d.Media == "cdrom", Drive: d, ID: d.ID}
	}
	for i := range c.Devices {
		dev := &c.Devices[i]
		if dev.Kind != DeviceIDECD {
			continue
		}
		idx := dev.Bus*2 + dev.Unit
		s := &IDESlot{Index: idx, CDROM: true, Device: dev, ID: dev.ID}
		for j := range c.Drives {
			if dev.Drive != "" && c.Drives[j].ID == dev.Drive {
				s.Drive = &c.Drives[j]
			}
		}
		slots[idx] = s
	}
	var out []IDESlot
	for _, s := range slots {
		if s != nil {
			out = append(out, *s)
		}
	}
	return out
}

// BelowRAM4G returns how much of RAM lies below 4 GiB.
func (c *Config) BelowRAM4G() uint64 {
	limit := uint64(HVMBelow4GRAMEnd)
	if c.Machine.MaxRAMBelow4G != 0 && c.Machine.MaxRAMBelow4G < limit {
		limit = c.Machine.MaxRAMBelow4G
	}
	return min(c.RAMSize, limit)
}

func atoiRange(flag, what, s string, lo, hi int) (int, error) {
	n, err := strconv.ParseInt(s, 0, 64)
	if err != nil || n < int64(lo) || n > int64(hi) {
		return 0, fmt.Errorf("-%s: %s %q is not a number in [%d, %d]", flag, what, s, lo, hi)
	}
	return int(n), nil
}

func validBootOrder(s string) bool {
	for _, r := range s {
		if !strings.ContainsRune("abcdnop", r) {
			return false
		}
	}
	return true
}
