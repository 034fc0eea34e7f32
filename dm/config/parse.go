package config

import (
	"fmt"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"

	"regexp"
	"sort"
	"strconv"
	"strings"
)

// option is one entry of the option table.
type option struct {
	arg bool // takes a value (the next argv word)
	// handle applies the option; nil means "accept and note" with why.
	handle func(c *Config, val string) error
	why    string
	help   string
}

// options is every flag we accept: exactly the ones libxl 4.17 emits for a
// qemu-xen HVM device model (libxl__build_device_model_args_new), plus
// -global and -trace. Keys are without the leading dash.
var options = map[string]option{
	"xen-domid": {arg: true, handle: parseDomid, help: "domain id of the HVM guest to serve (required)"},
	"no-shutdown": {handle: func(c *Config, _ string) error { c.NoShutdown = true; return nil },
		help: "keep running after guest poweroff (always the case)"},
	"S":       {handle: func(c *Config, _ string) error { c.StartPaused = true; return nil }, help: "start in prelaunch; run state and xenstore 'running' only after QMP cont"},
	"chardev": {arg: true, handle: parseChardev, help: "socket,id=ID,path=P|fd=N,server=on,wait=off | pty,id=ID"},
	"mon":     {arg: true, handle: parseMon, help: "chardev=ID,mode=control: serve QMP on that chardev"},
	"nodefaults": {handle: func(*Config, string) error { return nil },
		help: "no default devices (always the case)"},
	"no-user-config": {handle: func(*Config, string) error { return nil },
		help: "no user config files (always the case)"},
	"xen-attach": {handle: func(*Config, string) error {
		return fmt.Errorf("-xen-attach: libxl passes it for PV/PVH guests (qdisk backends); xen-dm-go only serves HVM guests")
	}},
	"name": {arg: true, handle: parseName, help: "guest name (used in logs)"},
	"vnc": {arg: true, handle: func(c *Config, v string) error {
		c.VNC = v
		if v != "none" {
			c.note("vnc", v, "VNC is not implemented; query-vnc reports it disabled")
		}
		return nil
	}, help: "accepted; no VNC server (query-vnc reports enabled=false)"},
	"display": {arg: true, handle: func(c *Config, v string) error {
		c.Displays = append(c.Displays, v)
		if v != "none" {
			c.note("display", v, "no display backends; the guest runs headless")
		}
		return nil
	}, help: "accepted; the guest runs headless"},
	"sdl":                {why: "no display backends; the guest runs headless"},
	"k":                  {arg: true, handle: func(c *Config, v string) error { c.Keymap = v; c.note("k", v, "no keyboard emulation"); return nil }},
	"kernel":             {arg: true, handle: directBoot("kernel")},
	"initrd":             {arg: true, handle: directBoot("initrd")},
	"append":             {arg: true, handle: directBoot("append")},
	"serial":             {arg: true, handle: func(c *Config, v string) error { c.Serials = append(c.Serials, v); return nil }, help: "pty | none | null | stdio | file:PATH | /dev/TTY | chardev:ID"},
	"nographic":          {why: "no display backends (always the case)"},
	"spice":              {arg: true, why: "SPICE is not implemented"},
	"device":             {arg: true, handle: parseDevice, help: "ide-cd,…; display adapters and other devices are recorded, not emulated"},
	"boot":               {arg: true, handle: parseBoot, help: "order=LETTERS (CMOS boot order)"},
	"usb":                {why: "no USB controller is emulated"},
	"usbdevice":          {arg: true, why: "no USB controller is emulated"},
	"soundhw":            {arg: true, why: "no sound hardware is emulated"},
	"no-acpi":            {handle: func(c *Config, _ string) error { c.NoACPI = true; return nil }, help: "omit the PIIX4 PM function 00:01.3"},
	"smp":                {arg: true, handle: parseSMP, help: "informational; the vCPU count comes from XEN_DMOP_nr_vcpus"},
	"netdev":             {arg: true, handle: parseNetdev, help: "type=tap,id=ID,ifname=NAME,…"},
	"net":                {arg: true, handle: parseNet, help: "none"},
	"object":             {arg: true, handle: func(_ *Config, v string) error { return fmt.Errorf("-object %s: COLO objects are not supported", v) }},
	"xen-domid-restrict": {handle: func(c *Config, _ string) error { c.DomidRestrict = true; return nil }, help: "restrict Xen handles to the guest after start-up"},
	"chroot":             {arg: true, handle: func(c *Config, v string) error { c.Chroot = v; return nil }, help: "chroot into DIR after start-up"},
	"runas":              {arg: true, handle: parseRunAs, help: "drop privileges to USER or UID:GID after start-up"},
	"incoming":           {arg: true, handle: parseIncoming, help: "fd:N: load device state from fd N before running"},
	"machine":            {arg: true, handle: parseMachine, help: "xenfv|pc,accel=xen[,max-ram-below-4g=BYTES][,suppress-vmdesc=on]"},
	"m":                  {arg: true, handle: parseMem, help: "RAM size in MiB"},
	"drive":              {arg: true, handle: parseDrive, help: "file=PATH,if=ide,index=N,media=disk|cdrom,format=raw,…"},
	"global": {arg: true, handle: func(c *Config, v string) error {
		c.Globals = append(c.Globals, v)
		c.note("global", v, "device properties are fixed in xen-dm-go")
		return nil
	}},
	"trace": {arg: true, handle: func(c *Config, v string) error {
		c.Traces = append(c.Traces, v)
		c.note("trace", v, "QEMU trace events do not exist in xen-dm-go")
		return nil
	}},
}

func directBoot(flag string) func(*Config, string) error {
	return func(_ *Config, v string) error {
		return fmt.Errorf("-%s %s: direct kernel boot is unsupported (it needs fw_cfg and a linuxboot option ROM); boot the guest from a disk", flag, v)
	}
}

// Parse parses argv (without the program name).
func Parse(args []string) (*Config, error) {
	c := &Config{Boot: Boot{Order: "cad"}, RAMSize: DefaultRAMMiB << 20}
	sawDomid, sawMachine := false, false
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch a {
		case "-h", "-help", "--help":
			return nil, ErrHelp
		case "-version", "--version":
			return nil, ErrVersion
		}
		if len(a) < 2 || a[0] != '-' {
			return nil, fmt.Errorf("%q: not an option (xen-dm-go takes no positional arguments; disks come from -drive)", a)
		}
		name := strings.TrimPrefix(a[1:], "-")
		opt, ok := options[name]
		if !ok {
			return nil, fmt.Errorf("-%s: unknown option (xen-dm-go accepts the options libxl passes to qemu-xen; see --help)", name)
		}
		val := ""
		if opt.arg {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("-%s: requires an argument", name)
			}
			i++
			val = args[i]
		}
		if opt.handle == nil {
			c.note(name, val, opt.why)
			continue
		}
		if err := opt.handle(c, val); err != nil {
			if !strings.HasPrefix(err.Error(), "-") {
				err = fmt.Errorf("-%s %s: %w", name, val, err)
			}
			return nil, err
		}
		switch name {
		case "xen-domid":
			sawDomid = true
		case "machine":
			sawMachine = true
		}
	}
	if !sawDomid {
		return nil, fmt.Errorf("-xen-domid is required")
	}
	if !sawMachine {
		return nil, fmt.Errorf("-machine is required (xenfv, or pc,accel=xen)")
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func parseDomid(c *Config, v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	// DOMID_FIRST_RESERVED is 0x7ff0; dom0 is never an HVM guest.
	if err != nil || n == 0 || n >= 0x7ff0 {
		return fmt.Errorf("-xen-domid %s: not a guest domain id (1–32751)", v)
	}
	c.DomID = uint32(n)
	return nil
}

func parseChardev(c *Config, v string) error {
	o, err := ParseOpts(v, "backend")
	if err != nil {
		return err
	}
	cd := Chardev{Backend: o.String("backend"), ID: o.String("id"), Path: o.String("path"), FD: -1,
		Host: o.String("host"), Port: o.String("port"), Opts: o}
	if cd.ID == "" {
		return fmt.Errorf("chardev needs an id")
	}
	for _, old := range c.Chardevs {
		if old.ID == cd.ID {
			return fmt.Errorf("duplicate chardev id %q", cd.ID)
		}
	}
	if cd.Server, err = o.Bool("server", false); err != nil {
		return err
	}
	if cd.Wait, err = o.Bool("wait", true); err != nil {
		return err
	}
	switch cd.Backend {
	case "socket":
		if s, ok := o.Get("fd"); ok {
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return fmt.Errorf("fd=%q is not a file descriptor number", s)
			}
			cd.FD = n
		}
		if cd.FD < 0 && cd.Path == "" && cd.Host == "" {
			return fmt.Errorf("socket chardev %q needs path=, fd= or host=", cd.ID)
		}
	case "pty", "null", "stdio", "file", "spicevmc", "serial", "tty", "pipe":
	default:
		return fmt.Errorf("chardev backend %q is not supported", cd.Backend)
	}
	c.Chardevs = append(c.Chardevs, cd)
	return nil
}

func parseMon(c *Config, v string) error {
	o, err := ParseOpts(v, "chardev")
	if err != nil {
		return err
	}
	m := Monitor{Chardev: o.String("chardev"), Mode: o.String("mode")}
	if m.Mode == "" {
		m.Mode = "readline"
	}
	if m.Pretty, err = o.Bool("pretty", false); err != nil {
		return err
	}
	if m.Mode != "control" {
		return fmt.Errorf("mode=%s: only QMP monitors (mode=control) are supported", m.Mode)
	}
	found := false
	for _, cd := range c.Chardevs {
		if cd.ID == m.Chardev {
			found = true
			if cd.Backend != "socket" || !cd.Server || (cd.FD < 0 && cd.Path == "") {
				return fmt.Errorf("chardev %q: a QMP monitor needs a listening unix socket (socket,path=…|fd=…,server=on)", cd.ID)
			}
		}
	}
	if !found {
		return fmt.Errorf("chardev %q not found (give -chardev before -mon)", m.Chardev)
	}
	c.Monitors = append(c.Monitors, m)
	return nil
}

func parseName(c *Config, v string) error {
	o, err := ParseOpts(v, "guest")
	if err != nil {
		return err
	}
	c.Name = o.String("guest")
	return nil
}

var ideBusRE = regexp.MustCompile(`^ide\.([01])$`)

func parseDevice(c *Config, v string) error {
	o, err := ParseOpts(v, "driver")
	if err != nil {
		return err
	}
	d := Device{Driver: o.String("driver"), ID: o.String("id"), Opts: o, Bus: -1, Unit: -1}
	if d.Driver == "" {
		return fmt.Errorf("device needs a driver")
	}
	switch {
	case vgaDrivers[d.Driver]:
		d.Kind = DeviceVGA
	case nicDrivers[d.Driver]:
		d.Kind = DeviceNIC
		d.Netdev, d.MAC = o.String("netdev"), o.String("mac")
	case d.Driver == "ide-cd":
		d.Kind = DeviceIDECD
		d.Drive = o.String("drive")
		bus := o.String("bus")
		m := ideBusRE.FindStringSubmatch(bus)
		if m == nil {
			return fmt.Errorf("ide-cd: bus=%q: only the PIIX3 channels ide.0 and ide.1 exist", bus)
		}
		d.Bus = int(m[1][0] - '0')
		d.Unit = 0
		if u, ok := o.Get("unit"); ok {
			if d.Unit, err = atoiRange("device", "ide-cd unit", u, 0, 1); err != nil {
				return err
			}
		}
	default:
		d.Kind = DeviceOther
	}
	c.Devices = append(c.Devices, d)
	return nil
}

func parseBoot(c *Config, v string) error {
	o, err := ParseOpts(v, "order")
	if err != nil {
		return err
	}
	if ord, ok := o.Get("order"); ok {
		if ord == "" || !validBootOrder(ord) {
			return fmt.Errorf("invalid boot order %q (letters a–d, n–p)", ord)
		}
		c.Boot.Order = ord
	}
	if once, ok := o.Get("once"); ok && !validBootOrder(once) {
		return fmt.Errorf("invalid boot once %q", once)
	}
	c.Boot.Opts = o
	return nil
}

func parseSMP(c *Config, v string) error {
	o, err := ParseOpts(v, "cpus")
	if err != nil {
		return err
	}
	if s, ok := o.Get("cpus"); ok {
		if c.SMP.CPUs, err = atoiRange("smp", "cpus", s, 1, 4096); err != nil {
			return err
		}
	}
	if s, ok := o.Get("maxcpus"); ok {
		if c.SMP.MaxCPUs, err = atoiRange("smp", "maxcpus", s, 1, 4096); err != nil {
			return err
		}
	}
	if c.SMP.MaxCPUs == 0 {
		c.SMP.MaxCPUs = c.SMP.CPUs
	}
	c.note("smp", v, "the vCPU count comes from XEN_DMOP_nr_vcpus")
	return nil
}

func parseNetdev(c *Config, v string) error {
	o, err := ParseOpts(v, "type")
	if err != nil {
		return err
	}
	n := Netdev{Type: o.String("type"), ID: o.String("id"), IfName: o.String("ifname"), Bridge: o.String("br"),
		Script: o.String("script"), DownScript: o.String("downscript"), Opts: o}
	if n.ID == "" {
		return fmt.Errorf("netdev needs an id")
	}
	c.Netdevs = append(c.Netdevs, n)
	return nil
}

func parseNet(c *Config, v string) error {
	c.Nets = append(c.Nets, v)
	if v != "none" {
		c.note("net", v, "legacy -net is not implemented (libxl only passes -net none)")
	}
	return nil
}

var uidGidRE = regexp.MustCompile(`^[0-9]+:[0-9]+$`)

func parseRunAs(c *Config, v string) error {
	if v == "" {
		return fmt.Errorf("empty user")
	}
	if strings.Contains(v, ":") && !uidGidRE.MatchString(v) {
		return fmt.Errorf("%q is neither a user name nor UID:GID", v)
	}
	c.RunAs = v
	return nil
}

func parseIncoming(c *Config, v string) error {
	s, ok := strings.CutPrefix(v, "fd:")
	if !ok {
		return fmt.Errorf("only -incoming fd:N is supported (libxl restores through an fd)")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("fd:%q is not a file descriptor number", s)
	}
	c.Incoming = &Incoming{FD: n}
	return nil
}

func parseMachine(c *Config, v string) error {
	o, err := ParseOpts(v, "type")
	if err != nil {
		return err
	}
	// -machine may be repeated; later items override earlier ones.
	o = append(c.Machine.Opts, o...)
	m := Machine{Type: o.String("type"), Opts: o}
	switch {
	case m.Type == "xenfv" || strings.HasPrefix(m.Type, "xenfv-"):
		m.Type, m.XenPlatform = "xenfv", true
		if a, ok := o.Get("accel"); ok && a != "xen" {
			return fmt.Errorf("accel=%s: only accel=xen is supported", a)
		}
	case m.Type == "pc" || strings.HasPrefix(m.Type, "pc-i440fx-"):
		m.Type = "pc"
		if a := o.String("accel"); a != "xen" {
			return fmt.Errorf("machine pc needs accel=xen (xen-dm-go only runs under Xen)")
		}
	default:
		return fmt.Errorf("machine type %q is not supported (xenfv, or pc,accel=xen)", m.Type)
	}
	if s, ok := o.Get("max-ram-below-4g"); ok {
		if m.MaxRAMBelow4G, err = ParseSize(s, 1); err != nil {
			return fmt.Errorf("max-ram-below-4g: %w", err)
		}
		if m.MaxRAMBelow4G > 1<<32 {
			return fmt.Errorf("max-ram-below-4g=%s is above 4 GiB", s)
		}
	}
	if m.SuppressVMDesc, err = o.Bool("suppress-vmdesc", false); err != nil {
		return err
	}
	if on, err := o.Bool("igd-passthru", false); err != nil {
		return err
	} else if on {
		return fmt.Errorf("igd-passthru=on: PCI/IGD pass-through is not supported")
	}
	c.Machine = m
	return nil
}

func parseMem(c *Config, v string) error {
	o, err := ParseOpts(v, "size")
	if err != nil {
		return err
	}
	sz, err := ParseSize(o.String("size"), 1<<20)
	if err != nil {
		return err
	}
	if sz < 1<<20 || sz%(1<<12) != 0 {
		return fmt.Errorf("RAM size %q is too small or not page-aligned", v)
	}
	c.RAMSize = sz
	return nil
}

func parseDrive(c *Config, v string) error {
	spec, err := blk.ParseDrive(v)
	if err != nil {
		return err
	}
	o, err := ParseOpts(v, "")
	if err != nil {
		return err
	}
	d := Drive{Raw: v, Opts: o, Spec: spec, File: spec.File, If: spec.If, Index: spec.Index, Media: string(spec.Media),
		Format: spec.Format, Cache: o.String("cache"), ID: spec.ID, ReadOnly: spec.ReadOnly}
	if d.If == "none" && d.ID == "" {
		return fmt.Errorf("if=none needs id=")
	}
	c.Drives = append(c.Drives, d)
	return nil
}

// validate checks cross-option consistency once everything is parsed.
func (c *Config) validate() error {
	// IDE positions: give index-less if=ide drives the next free index, as
	// QEMU's drive_new does, and refuse two users of one position.
	var used [4]string
	claim := func(idx int, who string) error {
		if used[idx] != "" {
			return fmt.Errorf("IDE position ide.%d unit %d is given twice (%s and %s)", idx/2, idx%2, used[idx], who)
		}
		used[idx] = who
		return nil
	}
	for i := range c.Drives {
		d := &c.Drives[i]
		if d.If == "ide" && d.Index >= 0 {
			if err := claim(d.Index, "-drive "+d.Raw); err != nil {
				return err
			}
		}
	}
	for i := range c.Drives {
		d := &c.Drives[i]
		if d.If != "ide" || d.Index >= 0 {
			continue
		}
		for idx := 0; idx < 4; idx++ {
			if used[idx] == "" {
				d.Index = idx
				break
			}
		}
		if d.Index < 0 {
			return fmt.Errorf("-drive %s: all four IDE positions are taken", d.Raw)
		}
		used[d.Index] = "-drive " + d.Raw
	}
	drives := map[string]bool{}
	for _, d := range c.Drives {
		if d.ID != "" {
			drives[d.ID] = true
		}
	}
	for _, dev := range c.Devices {
		if dev.Kind != DeviceIDECD {
			continue
		}
		if dev.Drive != "" && !drives[dev.Drive] {
			return fmt.Errorf("-device ide-cd,id=%s: drive %q not found", dev.ID, dev.Drive)
		}
		if err := claim(dev.Bus*2+dev.Unit, "-device ide-cd,id="+dev.ID); err != nil {
			return err
		}
	}
	for _, dev := range c.Devices {
		if dev.Kind == DeviceNIC && dev.Netdev != "" {
			if _, ok := c.Netdev(dev.Netdev); !ok {
				return fmt.Errorf("-device %s,id=%s: netdev %q not found", dev.Driver, dev.ID, dev.Netdev)
			}
		}
	}
	seen := map[string]bool{}
	for _, m := range c.Monitors {
		if seen[m.Chardev] {
			return fmt.Errorf("-mon chardev=%s: chardev used by two monitors", m.Chardev)
		}
		seen[m.Chardev] = true
	}
	for _, s := range c.Serials {
		if id, ok := strings.CutPrefix(s, "chardev:"); ok {
			found := false
			for _, cd := range c.Chardevs {
				found = found || cd.ID == id
			}
			if !found || seen[id] {
				return fmt.Errorf("-serial %s: chardev %q not found or already in use", s, id)
			}
			seen[id] = true
		}
	}
	if c.Machine.MaxRAMBelow4G != 0 && c.Machine.MaxRAMBelow4G > HVMBelow4GRAMEnd {
		c.note("machine", "max-ram-below-4g", "values above 0xF0000000 are clamped to HVM_BELOW_4G_RAM_END")
	}
	for _, cd := range c.Chardevs {
		if !seen[cd.ID] && strings.HasPrefix(cd.ID, "libxl-channel") {
			c.note("chardev", cd.ID, "PV channels need the Xen console backend, which xen-dm-go does not serve")
		}
	}
	return nil
}

// Usage is the --help text.
func Usage(prog string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: %s [options]\n", prog)
	fmt.Fprintf(&b, "       %s migrate-send|migrate-receive|stream ...   (subcommands)\n\n", prog)
	b.WriteString("xen-dm-go is a device model for Xen HVM guests. libxl starts it with qemu-xen's\n")
	b.WriteString("command line (device_model_override=, device_model_version=\"qemu-xen\").\n\nOptions:\n")
	names := make([]string, 0, len(options))
	for n := range options {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		o := options[n]
		flag := "-" + n
		if o.arg {
			flag += " ARG"
		}
		desc := o.help
		if desc == "" && o.why != "" {
			desc = "accepted and ignored: " + o.why
		}
		if desc == "" {
			desc = "see the documentation"
		}
		fmt.Fprintf(&b, "  %-24s %s\n", flag, desc)
	}
	b.WriteString("  -h, --help               this text\n  --version                version information\n")
	return b.String()
}

// VersionText is the --version text: QEMU's first line (some tools parse
// it), then ours.
func VersionText() string {
	return fmt.Sprintf("QEMU emulator version %s (xen-dm-go %s)\n"+
		"xen-dm-go %s: a pure-Go device model for Xen 4.17 HVM guests, compatible with qemu-xen's command line and QMP.\n"+
		"It is not QEMU.\n", QEMUVersion, Version, Version)
}
