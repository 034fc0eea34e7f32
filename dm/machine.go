package dm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/chardev"
	"github.com/xen-dm-go/xen-dm-go/dm/config"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/cmos"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/ide"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/piix"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/ps2"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/uart"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/xenplatform"
	"github.com/xen-dm-go/xen-dm-go/dm/hw"
	"github.com/xen-dm-go/xen-dm-go/dm/pci"
)

// PCI addresses of the xenfv machine (QEMU pc_init1 + xen-platform,
// shared/reference/xen-dm-interface.md §6.3).
var (
	DevFnHost     = pci.DevFn(0, 0) // i440FX
	DevFnPIIX3    = pci.DevFn(1, 0) // ISA bridge
	DevFnIDE      = pci.DevFn(1, 1) // PIIX3 IDE
	DevFnPM       = pci.DevFn(1, 3) // PIIX4 PM (ACPI)
	DevFnPlatform = xenplatform.DefaultDevFn
)

// ISA serial ports (QEMU's isa-serial defaults for -serial 0–3).
var serialPorts = [...]struct {
	base uint16
	irq  uint8
}{{uart.COM1Base, uart.COM1IRQ}, {uart.COM2Base, uart.COM2IRQ}, {0x3e8, 4}, {0x2e8, 3}}

// SerialPort is one -serial: the UART and its host backend.
type SerialPort struct {
	Label   string // serial<i>, the query-chardev label
	Index   int
	UART    *uart.UART
	Backend chardev.Backend
}

// Disk is one IDE position with its backend (nil: empty CD-ROM tray).
type Disk struct {
	Index  int // 2·channel + unit
	CDROM  bool
	ID     string // QMP id of a CD-ROM (ide-<devno>)
	Serial string // -drive serial=
	// Backend is the image as opened at start-up. The IDE controller owns
	// it (an unplug or a medium change closes or replaces it).
	Backend blk.Backend
}

// Machine is the emulated PC: the devices of the xenfv (or pc,accel=xen)
// machine that a Xen HVM guest needs from its device model. Xen emulates
// the rest (LAPIC, IOAPIC, PIC, PIT, RTC below index 0x0e, HPET, PM timer).
type Machine struct {
	Bus     *pci.Bus
	Host    *piix.Host
	PIIX3   *piix.PIIX3
	PM      *piix.PM // nil with -no-acpi
	CMOS    *cmos.CMOS
	PS2     *ps2.Controller
	IDE     *ide.Controller
	Tracker *blk.Tracker // the IDE's page↔sector table (nil if untracked)
	// Mem is guest RAM as the devices see it: the map cache, whose writes
	// are reported to the dirty log and drop the pages from Tracker.
	Mem      hw.GuestMemory
	Platform *xenplatform.Platform // nil for pc,accel=xen
	Serials  []SerialPort
	Disks    []Disk
	// VGA names the display adapter -device asked for (not emulated).
	VGA string
	// Info describes the machine as it was built (the device-state header).
	Info MachineInfo

	log     *slog.Logger
	closers []func() error // in creation order
}

// MachineInfo is what the command line and Xen made of the machine: what a
// saved device state must agree with to be loaded into it.
type MachineInfo struct {
	DomID         uint32
	Type          string // -machine type: "xenfv" or "pc"
	XenPlatform   bool   // 00:02.0 xen-platform present
	ACPI          bool   // 00:01.3 PIIX4 PM present
	VCPUs         int    // XEN_DMOP_nr_vcpus
	RAMBytes      uint64 // -m
	MaxRAMBelow4G uint64
}

// machineEnv is what buildMachine wires devices to.
type machineEnv struct {
	tracker     *blk.Tracker // nil: transfers are not tracked
	cfg         *config.Config
	io          hw.IOSpace
	irq         hw.Interrupts
	sd          hw.Shutdown
	mem         hw.GuestMemory
	dirty       hw.DirtyReporter
	vcpus       int
	log         *slog.Logger
	openTAP     func(name string) (io.Closer, error)
	chardevOpts chardev.Options
}

func (m *Machine) onClose(f func() error) { m.closers = append(m.closers, f) }

// Close releases the machine's host resources in reverse creation order:
// serial backends and UARTs, TAPs, block backends (flushed first).
func (m *Machine) Close() error {
	var errs []error
	for i := len(m.closers) - 1; i >= 0; i-- {
		if err := m.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	m.closers = nil
	return errors.Join(errs...)
}

// Drain waits for in-flight device I/O (DMA, FLUSH CACHE) and flushes the
// disks, as QEMU's vm_stop does (bdrv_drain_all, bdrv_flush_all). It gives
// up waiting when ctx ends (the drain goes on in the background).
func (m *Machine) Drain(ctx context.Context) error {
	if m.IDE == nil {
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- m.IDE.Flush() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("IDE drain and flush: %w", ctx.Err())
	}
}

// drainQuick waits for in-flight DMA before the map cache is invalidated
// (QEMU's xen_invalidate_map_cache drains block I/O first).
func (m *Machine) drainQuick() {
	if m.IDE == nil {
		return
	}
	done := make(chan struct{})
	go func() { m.IDE.Drain(); close(done) }()
	select {
	case <-done:
	case <-time.After(drainTimeout):
		m.log.Warn("IDE still busy before the map-cache invalidate; invalidating anyway (busy buckets stay mapped)")
	}
}

// buildMachine creates the devices, plugs them into PCI bus 0 and claims
// their fixed ports. On error everything created so far is closed.
func buildMachine(env machineEnv) (m *Machine, err error) {
	cfg := env.cfg
	m = &Machine{Bus: pci.NewBus(), Mem: env.mem, log: env.log, Info: MachineInfo{
		DomID: cfg.DomID, Type: cfg.Machine.Type, XenPlatform: cfg.Machine.XenPlatform, ACPI: !cfg.NoACPI,
		VCPUs: env.vcpus, RAMBytes: cfg.RAMSize, MaxRAMBelow4G: cfg.Machine.MaxRAMBelow4G,
	}}
	defer func() {
		if err != nil {
			m.Close()
			m = nil
		}
	}()
	add := func(devfn uint8, name string, f pci.Function) error {
		if err := m.Bus.Add(devfn, name, f); err != nil {
			return err
		}
		env.log.Info("PCI device", "addr", fmt.Sprintf("00:%02x.%d", devfn>>3, devfn&7), "name", name)
		return nil
	}

	// 00:00.0 i440FX, 00:01.0 PIIX3 and the configuration ports. 0xcf9
	// (PIIX3 reset control) sits inside the bus's 0xcf8–0xcff.
	m.Host = piix.NewHost(env.io)
	if err := add(DevFnHost, "i440fx", m.Host); err != nil {
		return m, err
	}
	m.PIIX3 = piix.NewPIIX3(env.io, env.irq, env.sd)
	if err := add(DevFnPIIX3, "piix3", m.PIIX3); err != nil {
		return m, err
	}
	if err := env.io.ClaimPorts(pci.PortConfigAddress, 8, configPorts{bus: m.Bus, rcr: m.PIIX3}); err != nil {
		return m, fmt.Errorf("PCI configuration ports: %w", err)
	}

	// 00:01.1 PIIX3 IDE with the -drive images (index → channel index/2,
	// unit index%2). The controller owns the backends from then on.
	if err := attachIDE(m, env); err != nil {
		return m, err
	}
	var cmosDisks [4]*cmos.Disk
	for _, d := range m.Disks {
		if cyl, heads, secs, ok := m.IDE.Geometry(d.Index); ok {
			cmosDisks[d.Index] = &cmos.Disk{Cylinders: cyl, Heads: heads, Sectors: secs, Translation: cmos.TransAuto}
		}
	}

	// 00:01.3 PIIX4 PM (ACPI) unless -no-acpi.
	if !cfg.NoACPI {
		pm, err := piix.NewPM(env.io, env.sd, min(env.vcpus, piix.MaxVCPUs))
		if err != nil {
			return m, err
		}
		if err := add(DevFnPM, "piix4-pm", pm); err != nil {
			return m, err
		}
		if err := pm.ClaimPorts(env.io); err != nil {
			return m, err
		}
		m.PM = pm
	}

	// 00:02.0 xen-platform for xenfv. Its unplug must really detach the
	// emulated disks and NICs (see attachIDE).
	if cfg.Machine.XenPlatform {
		p, err := xenplatform.New(env.io, xenplatform.UnplugFuncs{Disks: m.unplugDisks, NICs: m.unplugNICs})
		if err != nil {
			return m, err
		}
		if err := add(DevFnPlatform, "xen-platform", p); err != nil {
			return m, err
		}
		if err := p.ClaimPorts(env.io); err != nil {
			return m, err
		}
		m.Platform = p
	}

	// CMOS NVRAM (indexes ≥ 0x0e; Xen emulates the RTC below).
	c, err := cmos.New(cmos.Config{
		RAMBytes: cfg.RAMSize, MaxRAMBelow4G: cfg.Machine.MaxRAMBelow4G, BootOrder: bootOrderForCMOS(cfg.Boot.Order),
		VCPUs: env.vcpus, Disks: cmosDisks,
	})
	if err != nil {
		return m, err
	}
	if err := c.ClaimPorts(env.io); err != nil {
		return m, err
	}
	m.CMOS = c

	// i8042 keyboard controller and port 0x92 (present on QEMU's pc
	// machines; firmware probes them, and 0x64 ← 0xfe / 0x92 bit 0 reboot).
	k := ps2.New(env.irq, env.sd)
	if err := k.ClaimPorts(env.io); err != nil {
		return m, err
	}
	m.PS2 = k

	// Serial ports.
	if len(cfg.Serials) > len(serialPorts) {
		return m, fmt.Errorf("%d -serial options; at most %d serial ports", len(cfg.Serials), len(serialPorts))
	}
	for i, spec := range cfg.Serials {
		label := fmt.Sprintf("serial%d", i)
		spec = resolveSerialSpec(cfg, spec)
		if chardev.IsNone(spec) {
			continue
		}
		o := env.chardevOpts
		o.Log, o.Label = env.log, label
		if o.OutputLimit == 0 {
			o.OutputLimit = chardev.ConsoleLimitFromEnv()
		}
		b, err := chardev.Open(spec, o)
		if err != nil {
			return m, fmt.Errorf("-serial %s: %w", spec, err)
		}
		m.onClose(b.Close)
		u, err := uart.New(label, serialPorts[i].base, serialPorts[i].irq, env.irq, b)
		if err != nil {
			return m, err
		}
		m.onClose(func() error { u.Close(); return nil })
		if err := u.ClaimPorts(env.io); err != nil {
			return m, err
		}
		b.Start(u.Input)
		m.Serials = append(m.Serials, SerialPort{Label: label, Index: i, UART: u, Backend: b})
		env.log.Info("serial port", "label", label, "port", hex(uint64(serialPorts[i].base)), "irq", serialPorts[i].irq,
			"backend", b.Filename())
	}

	// Requested devices we do not emulate: say so once each.
	for _, d := range cfg.Devices {
		switch d.Kind {
		case config.DeviceVGA:
			m.VGA = d.Driver
			env.log.Warn("display adapter not emulated; the guest runs headless (use vga=\"none\" to silence this)",
				"device", d.Driver)
		case config.DeviceNIC:
			env.log.Warn("emulated NIC not available; the guest gets its network through PV netfront only",
				"device", d.Driver, "id", d.ID, "mac", d.MAC)
		case config.DeviceOther:
			env.log.Warn("device not emulated", "device", d.Driver, "id", d.ID)
		}
	}
	// Hold the TAP of every -netdev tap so libxl's vif hotplug script
	// (which configures vif<domid>.<devid>-emu) succeeds (§6.9).
	for _, nd := range cfg.Netdevs {
		if nd.Type != "tap" || nd.IfName == "" {
			continue
		}
		t, err := env.openTAP(nd.IfName)
		if err != nil {
			return m, fmt.Errorf("-netdev %s: create TAP %s: %w", nd.ID, nd.IfName, err)
		}
		m.onClose(t.Close)
		env.log.Info("TAP created and held (no emulated NIC behind it)", "ifname", nd.IfName, "netdev", nd.ID)
	}
	return m, nil
}

// bootOrderForCMOS keeps the first three distinct boot letters CMOS can
// express.
func bootOrderForCMOS(order string) string {
	var b strings.Builder
	seen := map[rune]bool{}
	for _, r := range order {
		if !seen[r] && b.Len() < 3 {
			seen[r] = true
			b.WriteRune(r)
		}
	}
	return b.String()
}

// resolveSerialSpec turns -serial chardev:ID into that chardev's backend.
func resolveSerialSpec(cfg *config.Config, spec string) string {
	id, ok := strings.CutPrefix(spec, "chardev:")
	if !ok {
		return spec
	}
	for _, cd := range cfg.Chardevs {
		if cd.ID != id {
			continue
		}
		switch cd.Backend {
		case "file":
			return "file:" + cd.Opts.String("path")
		case "serial", "tty":
			return cd.Opts.String("path")
		default:
			return cd.Backend
		}
	}
	return spec
}

// unplugDisks and unplugNICs are the xen-platform unplug actions.
func (m *Machine) unplugDisks(auxOnly bool) {
	if m.IDE == nil {
		return
	}
	if err := m.IDE.UnplugDisks(auxOnly); err != nil {
		m.log.Warn("unplugging emulated disks", "err", err)
	}
}

func (m *Machine) unplugNICs() {
	// No emulated NIC is ever plugged, so there is nothing to remove.
}

// configPorts serves 0xcf8–0xcff: the PCI configuration address and data
// registers (pci.Bus) with the PIIX3 reset control register at 0xcf9. Xen
// latches 0xcf8 itself and also forwards it; only a 32-bit access at 0xcf8
// is the address register, a byte access at 0xcf9 is the RCR.
type configPorts struct {
	bus *pci.Bus
	rcr hw.PortIO
}

func (p configPorts) ReadPort(port uint16, size int) uint32 {
	if port == piix.PortRCR && size == 1 {
		return p.rcr.ReadPort(port, size)
	}
	return p.bus.ReadPort(port, size)
}

func (p configPorts) WritePort(port uint16, size int, v uint32) {
	if port == piix.PortRCR && size == 1 {
		p.rcr.WritePort(port, size, v)
		return
	}
	p.bus.WritePort(port, size, v)
}
