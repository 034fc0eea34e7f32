package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// The argv libxl 4.17.7 gave qemu-xen in the lab
// (shared/reference/xenlab/dm-argv.txt), without argv[0].
const (
	labCreate  = `-xen-domid 1 -no-shutdown -chardev socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-1,server=on,wait=off -mon chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-1,server=on,wait=off -mon chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config -name hvm1 -vnc none -display none -serial pty -nographic -device cirrus-vga,vgamem_mb=8 -boot order=c -net none -machine xenfv,suppress-vmdesc=on -m 120 -drive file=/xenlab-guest-disk.img,if=ide,index=0,media=disk,format=raw,cache=writeback`
	labRestore = `-xen-domid 2 -no-shutdown -chardev socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-2,server=on,wait=off -mon chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-2,server=on,wait=off -mon chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config -name hvm1 -vnc none -display none -serial pty -nographic -device cirrus-vga,vgamem_mb=8 -boot order=c -net none -incoming fd:15 -machine xenfv,suppress-vmdesc=on -m 120 -drive file=/xenlab-guest-disk.img,if=ide,index=0,media=disk,format=raw,cache=writeback`
	labMigrate = `-xen-domid 3 -no-shutdown -chardev socket,id=libxl-cmd,path=/var/run/xen/qmp-libxl-3,server=on,wait=off -mon chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-3,server=on,wait=off -mon chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config -name hvm1--incoming -vnc none -display none -serial pty -nographic -device cirrus-vga,vgamem_mb=8 -boot order=c -net none -incoming fd:14 -machine xenfv,suppress-vmdesc=on -m 120 -drive file=/xenlab-guest-disk.img,if=ide,index=0,media=disk,format=raw,cache=writeback`
	// dm_restrict=1 (§1.3/§1.4): libxl-cmd is an inherited listening fd, -S,
	// -xen-domid-restrict -chroot, and -runas at the end.
	restrictArgv = `-xen-domid 7 -no-shutdown -chardev socket,id=libxl-cmd,fd=9,server=on,wait=off -S -mon chardev=libxl-cmd,mode=control -chardev socket,id=libxenstat-cmd,path=/var/run/xen/qmp-libxenstat-7,server=on,wait=off -mon chardev=libxenstat-cmd,mode=control -nodefaults -no-user-config -name g1 -vnc 127.0.0.1:0,to=99 -display none -serial pty -device VGA,vgamem_mb=16 -boot order=cda -smp 2,maxcpus=4 -device rtl8139,id=nic0,netdev=net0,mac=00:16:3e:00:00:01 -netdev type=tap,id=net0,ifname=vif7.0-emu,br=xenbr0,script=no,downscript=no -xen-domid-restrict -chroot /var/run/xen/qemu-root-7 -machine pc,accel=xen,suppress-vmdesc=on,max-ram-below-4g=3221225472 -m 1024 -drive file=/srv/g1.img,if=ide,index=0,media=disk,format=raw,cache=writeback -drive if=none,readonly=on,id=ide-5632,file=/srv/cd.iso,format=raw -device ide-cd,id=ide-5632,drive=ide-5632,bus=ide.1,unit=0 -runas 65536:65536`
)

func mustParse(t *testing.T, line string) *Config {
	t.Helper()
	c, err := Parse(strings.Fields(line))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return c
}

func TestLabCreate(t *testing.T) {
	c := mustParse(t, labCreate)
	if c.DomID != 1 || !c.NoShutdown || c.StartPaused || c.Name != "hvm1" || c.Incoming != nil {
		t.Fatalf("basic fields: %+v", c)
	}
	mons := c.ControlMonitors()
	if len(mons) != 2 {
		t.Fatalf("monitors: %+v", mons)
	}
	if m := mons[0].Chardev; m.ID != "libxl-cmd" || m.Path != "/var/run/xen/qmp-libxl-1" || m.FD != -1 || !m.Server || m.Wait {
		t.Errorf("libxl-cmd chardev: %+v", m)
	}
	if m := mons[1].Chardev; m.ID != "libxenstat-cmd" || m.Path != "/var/run/xen/qmp-libxenstat-1" {
		t.Errorf("libxenstat chardev: %+v", m)
	}
	if !reflect.DeepEqual(c.Serials, []string{"pty"}) {
		t.Errorf("serials %q", c.Serials)
	}
	if v := c.VGADevices(); len(v) != 1 || v[0].Driver != "cirrus-vga" || v[0].Opts.String("vgamem_mb") != "8" {
		t.Errorf("vga %+v", v)
	}
	if c.Boot.Order != "c" || c.VNC != "none" || !reflect.DeepEqual(c.Nets, []string{"none"}) {
		t.Errorf("boot %q vnc %q nets %q", c.Boot.Order, c.VNC, c.Nets)
	}
	if c.Machine.Type != "xenfv" || !c.Machine.XenPlatform || !c.Machine.SuppressVMDesc {
		t.Errorf("machine %+v", c.Machine)
	}
	if c.RAMSize != 120<<20 || c.BelowRAM4G() != 120<<20 {
		t.Errorf("ram %d", c.RAMSize)
	}
	slots := c.IDESlots()
	if len(slots) != 1 || slots[0].Index != 0 || slots[0].CDROM || slots[0].Drive.File != "/xenlab-guest-disk.img" ||
		slots[0].Drive.Format != "raw" || slots[0].Drive.Cache != "writeback" {
		t.Errorf("ide %+v", slots)
	}
	if slots[0].Drive.Raw != "file=/xenlab-guest-disk.img,if=ide,index=0,media=disk,format=raw,cache=writeback" {
		t.Errorf("raw drive string %q", slots[0].Drive.Raw)
	}
	// -nographic and -display none are noted (once); -vnc none is exactly
	// what we do and not noted.
	flags := map[string]bool{}
	for _, n := range c.UniqueNotes() {
		if flags[n.Flag] {
			t.Errorf("note %q twice", n.Flag)
		}
		flags[n.Flag] = true
	}
	if !flags["nographic"] || flags["vnc"] {
		t.Errorf("notes %+v", c.Notes)
	}
}

func TestLabRestoreAndMigrate(t *testing.T) {
	c := mustParse(t, labRestore)
	if c.DomID != 2 || c.Incoming == nil || c.Incoming.FD != 15 || c.StartPaused {
		t.Fatalf("restore: %+v", c)
	}
	c = mustParse(t, labMigrate)
	if c.DomID != 3 || c.Incoming == nil || c.Incoming.FD != 14 || c.Name != "hvm1--incoming" {
		t.Fatalf("migrate: %+v", c)
	}
}

func TestRestrict(t *testing.T) {
	c := mustParse(t, restrictArgv)
	if !c.StartPaused || !c.DomidRestrict || c.Chroot != "/var/run/xen/qemu-root-7" || c.RunAs != "65536:65536" {
		t.Fatalf("restrict fields: %+v", c)
	}
	mons := c.ControlMonitors()
	if mons[0].Chardev.FD != 9 || mons[0].Chardev.Path != "" {
		t.Errorf("fd chardev %+v", mons[0].Chardev)
	}
	if c.Machine.Type != "pc" || c.Machine.XenPlatform || c.Machine.MaxRAMBelow4G != 3<<30 {
		t.Errorf("machine %+v", c.Machine)
	}
	if c.RAMSize != 1<<30 || c.BelowRAM4G() != 1<<30 {
		t.Errorf("ram")
	}
	if c.SMP.CPUs != 2 || c.SMP.MaxCPUs != 4 {
		t.Errorf("smp %+v", c.SMP)
	}
	nics := c.NICs()
	if len(nics) != 1 || nics[0].Driver != "rtl8139" || nics[0].MAC != "00:16:3e:00:00:01" || nics[0].Netdev != "net0" {
		t.Errorf("nics %+v", nics)
	}
	nd, ok := c.Netdev("net0")
	if !ok || nd.Type != "tap" || nd.IfName != "vif7.0-emu" || nd.Bridge != "xenbr0" {
		t.Errorf("netdev %+v", nd)
	}
	slots := c.IDESlots()
	if len(slots) != 2 || slots[1].Index != 2 || !slots[1].CDROM || slots[1].ID != "ide-5632" ||
		slots[1].Drive == nil || slots[1].Drive.File != "/srv/cd.iso" || !slots[1].Drive.ReadOnly {
		t.Errorf("ide slots %+v", slots)
	}
	if c.VNC != "127.0.0.1:0,to=99" {
		t.Errorf("vnc %q", c.VNC)
	}
}

func TestDoubleDashAndEmptyCD(t *testing.T) {
	c := mustParse(t, "--xen-domid 5 --machine xenfv -drive if=none,readonly=on,id=ide-768 -device ide-cd,id=ide-768,drive=ide-768,bus=ide.0,unit=0 -no-acpi")
	s := c.IDESlots()
	if len(s) != 1 || !s[0].CDROM || s[0].Drive == nil || s[0].Drive.File != "" || !c.NoACPI {
		t.Fatalf("%+v", s)
	}
}

func TestParseOpts(t *testing.T) {
	o, err := ParseOpts("socket,id=a,,b,path=/x,,y,,,server=on,nowait", "backend")
	if err != nil {
		t.Fatal(err)
	}
	want := Opts{{"backend", "socket"}, {"id", "a,b"}, {"path", "/x,y,"}, {"server", "on"}, {"nowait", "on"}}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("got %q", o)
	}
	o, _ = ParseOpts("xen,,fv,accel=xen", "type")
	if o.String("type") != "xen,fv" {
		t.Fatalf("implied with escape: %q", o)
	}
	if _, err := ParseOpts("=x", ""); err == nil {
		t.Fatal("empty name accepted")
	}
	if o.Encode() != "type=xen,,fv,accel=xen" {
		t.Fatalf("encode %q", o.Encode())
	}
}

func TestErrors(t *testing.T) {
	base := "-xen-domid 1 -machine xenfv "
	cases := map[string]string{
		"-xen-domid 1 -machine xenfv -frobnicate":                          "-frobnicate: unknown option",
		base + "-xen-attach":                                               "-xen-attach",
		base + "-kernel /boot/vmlinuz":                                     "direct kernel boot is unsupported",
		base + "-append console=ttyS0":                                     "direct kernel boot",
		base + "-m":                                                        "-m: requires an argument",
		"-machine xenfv":                                                   "-xen-domid is required",
		"-xen-domid 1":                                                     "-machine is required",
		"-xen-domid 0 -machine xenfv":                                      "not a guest domain id",
		"-xen-domid 1 -machine q35":                                        "q35",
		"-xen-domid 1 -machine pc":                                         "accel=xen",
		base + "-incoming tcp:0:4444":                                      "only -incoming fd:N",
		base + "-boot order=z":                                             "boot order",
		base + "-mon chardev=nope,mode=control":                            "not found",
		base + "-chardev pty,id=p -mon chardev=p,mode=control":             "listening unix socket",
		base + "-chardev socket,id=m,path=/x,server=on -mon chardev=m":     "mode=control",
		base + "-drive file=a,if=ide,index=0 -drive file=b,if=ide,index=0": "given twice",
		base + "-drive file=a,if=virtio":                                   "if=virtio",
		base + "-drive file=a,format=qcow2":                                "raw images only",
		base + "-device ide-cd,drive=x,bus=ide.0":                          "drive \"x\" not found",
		base + "-device ide-cd,bus=ahci0.0":                                "ahci0.0",
		base + "-object colo-compare,id=c1":                                "COLO",
		"stray":                                                            "not an option",
		base + "-runas a:b":                                                "neither",
		base + "-device rtl8139,netdev=n9":                                 "netdev \"n9\" not found",
	}
	for line, want := range cases {
		_, err := Parse(strings.Fields(line))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want error containing %q", line, err, want)
		}
	}
}

func TestHelpVersion(t *testing.T) {
	if _, err := Parse([]string{"--help"}); !errors.Is(err, ErrHelp) {
		t.Fatal(err)
	}
	if _, err := Parse([]string{"-xen-domid", "1", "--version"}); !errors.Is(err, ErrVersion) {
		t.Fatal(err)
	}
	if !strings.HasPrefix(VersionText(), "QEMU emulator version 7.2.0") || !strings.Contains(Usage("x"), "-xen-domid ARG") {
		t.Fatal("texts")
	}
}

func TestAcceptedFlagsNoted(t *testing.T) {
	c := mustParse(t, "-xen-domid 1 -machine xenfv -usb -usbdevice tablet -usbdevice mouse -soundhw hda -sdl -k en-us -spice port=5900 -global x.y=z -trace events=/x -display sdl")
	got := map[string]int{}
	for _, n := range c.UniqueNotes() {
		got[n.Flag]++
	}
	for _, f := range []string{"usb", "usbdevice", "soundhw", "sdl", "k", "spice", "global", "trace", "display"} {
		if got[f] != 1 {
			t.Errorf("flag %s noted %d times", f, got[f])
		}
	}
}

func TestIndexlessDrives(t *testing.T) {
	c := mustParse(t, "-xen-domid 1 -machine xenfv -drive file=a,index=1 -drive file=b -drive file=c")
	var got []int
	for _, s := range c.IDESlots() {
		got = append(got, s.Index)
	}
	if !reflect.DeepEqual(got, []int{0, 1, 2}) {
		t.Fatalf("%v", got)
	}
	if c.IDESlots()[0].Drive.File != "b" {
		t.Fatal("b should take index 0")
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]uint64{"120": 120 << 20, "1G": 1 << 30, "512M": 512 << 20, "0x10": 16 << 20} {
		if got, err := ParseSize(s, 1<<20); err != nil || got != want {
			t.Errorf("%s: %d %v", s, got, err)
		}
	}
	if _, err := ParseSize("12Q", 1); err == nil {
		t.Error("12Q accepted")
	}
}
