package dm

import (
	"errors"
	"fmt"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/ide"
)

// attachIDE opens the images of the IDE positions and plugs the PIIX3 IDE
// controller (00:01.1) with them: legacy ports 0x1f0/0x3f6 (IRQ 14) and
// 0x170/0x376 (IRQ 15), bus-master DMA at BAR4 into env.mem (dirty-logged).
// The controller exists even without drives, as on QEMU's pc machines.
func attachIDE(m *Machine, env machineEnv) (err error) {
	var drives [4]*ide.Drive
	var opened []blk.Backend
	defer func() {
		if err != nil {
			for _, b := range opened {
				b.Close()
			}
		}
	}()
	for _, slot := range env.cfg.IDESlots() {
		d := Disk{Index: slot.Index, CDROM: slot.CDROM, ID: slot.ID}
		if slot.Drive != nil {
			d.Serial = slot.Drive.Spec.Serial
			b, err := blk.Open(slot.Drive.Spec)
			switch {
			case errors.Is(err, blk.ErrNoMedium):
			case err != nil:
				return err
			default:
				d.Backend = b
				opened = append(opened, b)
			}
		}
		media := ide.Disk
		if d.CDROM {
			media = ide.CDROM
		}
		drives[d.Index] = &ide.Drive{Media: media, Backend: d.Backend, Serial: d.Serial}
		m.Disks = append(m.Disks, d)
		name := "(empty)"
		if d.Backend != nil {
			name = fmt.Sprintf("%s (%d bytes)", d.Backend.Name(), d.Backend.Size())
		}
		env.log.Info("IDE drive", "channel", d.Index/2, "unit", d.Index%2, "media", media.String(), "image", name)
	}
	var obs ide.Observer
	if env.tracker != nil {
		obs = ide.TrackerObserver(env.tracker)
		m.Tracker = env.tracker
	}
	ctl, err := ide.New(ide.Config{IO: env.io, Mem: env.mem, IRQ: env.irq, Dirty: env.dirty, Drives: drives, Observer: obs, Logger: env.log})
	if err != nil {
		return err
	}
	// From here the controller owns the backends.
	opened = nil
	m.onClose(ctl.Close)
	if err := m.Bus.Add(ide.DevFn, "piix3-ide", ctl); err != nil {
		return err
	}
	env.log.Info("PCI device", "addr", "00:01.1", "name", "piix3-ide")
	if err := ctl.ClaimLegacyPorts(); err != nil {
		return err
	}
	m.IDE = ctl
	return nil
}
