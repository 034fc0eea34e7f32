package ide

import "github.com/xen-dm-go/xen-dm-go/dm/blk"

// TrackerObserver connects the page↔sector tracker (blk.Tracker,
// docs/tracker.md) to the controller: the drive index becomes the tracker's
// disk number.
//
//	ctrl.SetObserver(ide.TrackerObserver(tracker))
func TrackerObserver(t *blk.Tracker) Observer { return trackerObserver{t} }

type trackerObserver struct{ t *blk.Tracker }

var _ DetachObserver = trackerObserver{}

func (o trackerObserver) ReadBegin(drive int, off, n int64) any { return o.t.Begin() }

func (o trackerObserver) ReadDone(tok any, drive int, off int64, segs []Segment, data []byte) {
	o.t.DiskToGuest(tok.(blk.Token), uint8(drive), off, segs, data)
}

func (o trackerObserver) WriteBegin(drive int, off, n int64) any {
	return o.t.BeginWrite(uint8(drive), off, n)
}

func (o trackerObserver) WriteDone(tok any, segs []Segment, data []byte, ok bool) {
	if !ok {
		segs, data = nil, nil
	}
	o.t.EndWrite(tok.(blk.WriteToken), segs, data)
}

func (o trackerObserver) GuestWritten(gpa, n uint64) { o.t.DropGPA(gpa, n) }

// DriveDetached forgets every page that references the drive: after a
// platform unplug the guest writes that disk through PV drivers, which the
// tracker never sees, and a changed CD-ROM medium holds other data.
func (o trackerObserver) DriveDetached(drive int) { o.t.DropDisk(uint8(drive)) }
