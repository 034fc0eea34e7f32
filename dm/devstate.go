package dm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/config"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/uart"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
)

// DevState is the DeviceState of xen-dm-go: it saves and loads the whole
// machine in the dm/devstate format (docs/device-state.md).
type DevState struct {
	// Log receives what was saved and loaded (nil: slog.Default()).
	Log *slog.Logger
	// PageRefs receives the page references of an incoming state (pages
	// the migration transport elided, to be filled from the disks) before
	// any device state is applied, so no device writes guest memory first.
	// It must make sure they are filled before the guest runs (the
	// binary's is EagerPageRefs). nil: a state that carries page references
	// is refused, because those pages hold no data on this side.
	PageRefs func(ctx context.Context, m *Machine, refs []blk.Entry) error
	// Now is the clock of the saved-at time (nil: time.Now).
	Now func() time.Time
}

var _ DeviceState = (*DevState)(nil)

func (d *DevState) log() *slog.Logger {
	if d.Log != nil {
		return d.Log
	}
	return slog.Default()
}

// MachineHeader describes m as a device-state header (without the save
// time and live flag).
func MachineHeader(m *Machine) devstate.Header {
	i := m.Info
	h := devstate.Header{
		Producer: "xen-dm-go " + config.Version, DomID: i.DomID,
		Machine: i.Type, XenPlatform: i.XenPlatform, ACPI: i.ACPI, VCPUs: i.VCPUs,
		RAMBytes: i.RAMBytes, MaxRAMBelow4G: i.MaxRAMBelow4G,
		Drives: []devstate.Drive{}, Serials: []int{},
	}
	for _, d := range m.Disks {
		dr := devstate.Drive{Index: d.Index, Media: devstate.MediaDisk}
		if d.CDROM {
			dr.Media = devstate.MediaCDROM
		}
		if d.Backend != nil {
			dr.Size = d.Backend.Size()
		}
		h.Drives = append(h.Drives, dr)
	}
	for _, sp := range m.Serials {
		h.Serials = append(h.Serials, sp.Index)
	}
	return h
}

// CaptureState takes the state of every device of m. The caller has
// stopped the guest and drained device I/O.
func CaptureState(m *Machine, live bool, now time.Time) *devstate.State {
	st := &devstate.State{Header: MachineHeader(m)}
	st.Header.SavedAt = now.UTC().Round(0)
	st.Header.Live = live
	st.Host = m.Host.State()
	st.PIIX3 = m.PIIX3.State()
	if m.PM != nil {
		s := m.PM.State()
		st.PM = &s
	}
	if m.Platform != nil {
		s := m.Platform.State()
		st.Platform = &s
	}
	st.IDE = m.IDE.State()
	st.CMOS = m.CMOS.State()
	st.PS2 = m.PS2.State()
	for _, sp := range m.Serials {
		s := sp.UART.State()
		st.Serials[sp.Index] = &s
	}
	st.PageRefs = []blk.Entry{}
	return st
}

// Save implements DeviceState.
func (d *DevState) Save(ctx context.Context, w io.Writer, m *Machine, live bool) error {
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	st := CaptureState(m, live, now())
	for i, ch := range st.IDE.Channels {
		if ch.InFlight {
			// Stop drained; a transfer still running means the disk may
			// change after the state was taken.
			return fmt.Errorf("device state: IDE channel %d still has a transfer in flight", i)
		}
	}
	b, err := devstate.Encode(st)
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("device state: write %d bytes: %w", len(b), err)
	}
	d.log().Info("device state written", "bytes", len(b), "live", live, "format", devstate.FormatVersion)
	return nil
}

// Load implements DeviceState: it reads and checks the whole state, checks
// that it fits m, hands its page references to PageRefs, then applies it
// device by device. Any error leaves the guest unstarted (start-up fails).
func (d *DevState) Load(ctx context.Context, r io.Reader, m *Machine) error {
	b, err := io.ReadAll(io.LimitReader(r, devstate.MaxSize+1))
	if err != nil {
		return fmt.Errorf("reading the device state: %w", err)
	}
	st, err := devstate.Decode(b)
	if err != nil {
		return err
	}
	h := &st.Header
	cur := MachineHeader(m)
	warnings, err := h.Fits(&cur)
	if err != nil {
		return err
	}
	log := d.log()
	log.Info("loading device state", "bytes", len(b), "producer", h.Producer, "saved-at", h.SavedAt,
		"age", time.Since(h.SavedAt).Round(time.Millisecond), "saved-domid", h.DomID, "live", h.Live,
		"format", h.Format, "page-refs", len(st.PageRefs))
	for _, w := range warnings {
		log.Warn("device state: " + w)
	}
	for _, s := range st.Skipped {
		log.Warn("device state: optional section not understood, skipped", "section", s.ID, "version", s.Version, "bytes", len(s.Payload))
	}
	if len(st.PageRefs) > 0 {
		if err := checkPageRefs(m, st.PageRefs); err != nil {
			return err
		}
		if d.PageRefs == nil {
			return fmt.Errorf("device state: %d guest pages were elided by the migration transport and must be filled from the disks, "+
				"but this device model has no pager to fill them: refusing to run the guest with those pages empty", len(st.PageRefs))
		}
		if err := d.PageRefs(ctx, m, st.PageRefs); err != nil {
			return fmt.Errorf("device state: page references: %w", err)
		}
	}
	return ApplyState(m, st)
}

// checkPageRefs checks that every disk reference names a disk block of m
// (zero references name none: the page is filled with zeros).
func checkPageRefs(m *Machine, refs []blk.Entry) error {
	var size [4]int64
	for _, d := range m.Disks {
		if d.Backend != nil {
			size[d.Index] = d.Backend.Size()
		}
	}
	for _, r := range refs {
		if r.IsZeroPage() {
			continue // the codec checked it (blk.ZeroRef); the pager checks it again
		}
		if int(r.Disk) >= len(size) || size[r.Disk] == 0 {
			return fmt.Errorf("%w: page reference pfn %#x names IDE drive %d, which has no medium here", devstate.ErrMismatch, r.PFN, r.Disk)
		}
		if end := r.Sector*512 + blk.BlockSize; r.Sector > uint64(size[r.Disk])/512 || end > uint64(size[r.Disk]) {
			return fmt.Errorf("%w: page reference pfn %#x names sector %d, beyond IDE drive %d (%d bytes)", devstate.ErrMismatch, r.PFN, r.Sector, r.Disk, size[r.Disk])
		}
	}
	return nil
}

// ApplyState loads a decoded state into m (built from the same command
// line), device by device. The order matters: the xen-platform device
// before IDE (a restored unplug detaches disks and resets the controller,
// then IDE gets its registers), and IDE last (see below).
func ApplyState(m *Machine, st *devstate.State) error {
	if (st.PM != nil) != (m.PM != nil) || (st.Platform != nil) != (m.Platform != nil) {
		return fmt.Errorf("%w: PM or xen-platform device saved and configured differently", devstate.ErrMismatch)
	}
	var uarts [devstate.MaxSerials]*uart.UART
	for _, sp := range m.Serials {
		uarts[sp.Index] = sp.UART
	}
	for i := range uarts {
		if (uarts[i] != nil) != (st.Serials[i] != nil) {
			return fmt.Errorf("%w: serial port %d saved and configured differently", devstate.ErrMismatch, i)
		}
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"i440FX", func() error { return m.Host.SetState(st.Host) }},
		{"PIIX3", func() error { return m.PIIX3.SetState(st.PIIX3) }},
		{"PIIX4 PM", func() error {
			if m.PM == nil {
				return nil
			}
			return m.PM.SetState(*st.PM)
		}},
		{"xen-platform", func() error {
			if m.Platform == nil {
				return nil
			}
			return m.Platform.SetState(*st.Platform)
		}},
		{"CMOS", func() error { return m.CMOS.SetState(st.CMOS) }},
		{"i8042", func() error { return m.PS2.SetState(st.PS2) }},
		{"serial ports", func() error {
			var errs []error
			for i, u := range uarts {
				if u != nil {
					errs = append(errs, u.SetState(*st.Serials[i]))
				}
			}
			return errors.Join(errs...)
		}},
		// Last: IDE validates its whole state before changing anything, and
		// may restart a pending transfer; nothing may fail after that.
		{"IDE", func() error { return m.IDE.SetState(st.IDE) }},
	}
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("device state: restoring %s: %w", s.name, err)
		}
	}
	return nil
}
