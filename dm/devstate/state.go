package devstate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/cmos"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/ide"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/piix"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/ps2"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/uart"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/xenplatform"
)

// FormatVersion is the version of the device state as a whole (the set of
// sections and what they mean), carried in the HEAD section. A reader
// accepts MinFormatVersion…FormatVersion and refuses the rest.
const (
	FormatVersion    = 1
	MinFormatVersion = 1
)

// Section ids (at most 8 ASCII characters).
const (
	IDHeader   = "HEAD"     // Header, JSON; always first
	IDHost     = "I440FX"   // piix.HostState, JSON
	IDPIIX3    = "PIIX3"    // piix.PIIX3State, JSON
	IDPM       = "PIIX4PM"  // piix.PMState, JSON; iff Header.ACPI
	IDPlatform = "XENPLAT"  // xenplatform.State, JSON; iff Header.XenPlatform
	IDIDE      = "IDE"      // ide.State, JSON
	IDCMOS     = "CMOS"     // cmos.State, JSON
	IDPS2      = "I8042"    // ps2.State, JSON
	IDSerial   = "SERIAL"   // SERIAL0…SERIAL3: uart.State, JSON; iff listed in Header.Serials
	IDPageRefs = "PAGEREFS" // the elided-page references, binary (pagerefs.go)
	// IDDMBlob is reserved by the migration transport for a blob that was
	// not a container (another device model's); xen-dm-go refuses it.
	IDDMBlob = "DMBLOB"
	IDEnd    = "END"
)

// sectionVersion is the version of each known section this build writes
// and reads. PAGEREFS is the exception: it is written in the oldest version
// that carries its references (blk.PageRefsVersionFor) and read in every
// version from blk.PageRefsMinVersion to this one.
var sectionVersion = map[string]uint32{
	IDHeader: 1, IDHost: 1, IDPIIX3: 1, IDPM: 1, IDPlatform: 1, IDIDE: 1, IDCMOS: 1, IDPS2: 1,
	IDSerial: 1, IDPageRefs: blk.PageRefsVersion,
}

// readsVersion reports whether this build reads version v of section base.
func readsVersion(base string, v uint32) bool {
	if base == IDPageRefs {
		return v >= blk.PageRefsMinVersion && v <= blk.PageRefsVersion
	}
	return v == sectionVersion[base]
}

// MaxSize bounds a device state (the page references are 8 bytes a page
// plus 24 an extent; the devices take a few KiB).
const MaxSize = 1 << 30

// MaxSerials is the number of ISA serial ports a machine can have.
const MaxSerials = 4

// Media kinds in Drive.Media.
const (
	MediaDisk  = "disk"
	MediaCDROM = "cdrom"
)

// Drive is one configured IDE position (-drive / -device ide-cd), as the
// device model was started with it, whatever the guest did since (an
// unplugged disk is still listed; ide.State says it is absent).
type Drive struct {
	Index int    `json:"index"` // 2·channel + unit
	Media string `json:"media"` // MediaDisk or MediaCDROM
	Size  int64  `json:"size"`  // medium size in bytes; 0: no medium (empty tray)
}

// Header describes the state and the machine it was taken from. Load
// compares it with the machine it restores into (Fits).
type Header struct {
	Format   uint32    `json:"format"`   // FormatVersion of the writer
	Producer string    `json:"producer"` // "xen-dm-go <version>"
	SavedAt  time.Time `json:"saved_at"` // UTC
	DomID    uint32    `json:"domid"`    // the domain at save time (informational)
	Live     bool      `json:"live"`     // xen-save-devices-state's live flag

	Machine       string  `json:"machine"`      // -machine type: "xenfv" or "pc"
	XenPlatform   bool    `json:"xen_platform"` // 00:02.0 xen-platform present
	ACPI          bool    `json:"acpi"`         // 00:01.3 PIIX4 PM present (no -no-acpi)
	VCPUs         int     `json:"vcpus"`        // XEN_DMOP_nr_vcpus
	RAMBytes      uint64  `json:"ram_bytes"`    // -m
	MaxRAMBelow4G uint64  `json:"max_ram_below_4g"`
	Drives        []Drive `json:"drives"`  // sorted by index
	Serials       []int   `json:"serials"` // serial port indexes with a UART, sorted
}

// State is a whole device state.
type State struct {
	Header   Header
	Host     piix.HostState
	PIIX3    piix.PIIX3State
	PM       *piix.PMState      // nil without ACPI
	Platform *xenplatform.State // nil without the platform device
	IDE      ide.State
	CMOS     cmos.State
	PS2      ps2.State
	Serials  [MaxSerials]*uart.State // by serial index; nil where there is no UART
	// PageRefs are the pages the destination must fill from the disks
	// before the guest runs, sorted by pfn (empty unless the migration
	// transport elided pages).
	PageRefs []blk.Entry
	// Skipped lists the optional sections Decode did not understand and
	// skipped (ID, Version, Flags, Offset; Payload aliases the input).
	Skipped []Section
}

func serialID(i int) string { return IDSerial + strconv.Itoa(i) }

// Encode writes st in the current format. Header.Format is set to
// FormatVersion; the optional devices must agree with the header.
func Encode(st *State) ([]byte, error) {
	h := st.Header
	h.Format = FormatVersion
	if err := h.validate(); err != nil {
		return nil, fmt.Errorf("device state: cannot encode: %w", err)
	}
	if (st.PM != nil) != h.ACPI {
		return nil, fmt.Errorf("device state: cannot encode: PM state present=%v, header ACPI=%v", st.PM != nil, h.ACPI)
	}
	if (st.Platform != nil) != h.XenPlatform {
		return nil, fmt.Errorf("device state: cannot encode: platform state present=%v, header xen_platform=%v", st.Platform != nil, h.XenPlatform)
	}
	for i, s := range st.Serials {
		if (s != nil) != slices.Contains(h.Serials, i) {
			return nil, fmt.Errorf("device state: cannot encode: serial %d state present=%v, header serials %v", i, s != nil, h.Serials)
		}
	}
	var secs []Section
	add := func(id string, v any) error {
		p, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("device state: encode %s: %w", id, err)
		}
		base, _, _ := knownSection(id)
		ver := sectionVersion[base]
		secs = append(secs, Section{ID: id, Version: ver, Flags: FlagCRC32C, Payload: p})
		return nil
	}
	type item struct {
		id string
		v  any
	}
	items := []item{{IDHeader, h}, {IDHost, st.Host}, {IDPIIX3, st.PIIX3}}
	if st.PM != nil {
		items = append(items, item{IDPM, st.PM})
	}
	if st.Platform != nil {
		items = append(items, item{IDPlatform, st.Platform})
	}
	items = append(items, item{IDIDE, st.IDE}, item{IDCMOS, st.CMOS}, item{IDPS2, st.PS2})
	for i, s := range st.Serials {
		if s != nil {
			items = append(items, item{serialID(i), s})
		}
	}
	for _, it := range items {
		if err := add(it.id, it.v); err != nil {
			return nil, err
		}
	}
	refs, err := blk.EncodePageRefs(st.PageRefs)
	if err != nil {
		return nil, fmt.Errorf("device state: %w", err)
	}
	// The migration transport replaces this section (with the same
	// container code, dm/migstream AttachPageRefs) and checksums it too.
	secs = append(secs, Section{ID: IDPageRefs, Version: blk.PageRefsVersionFor(st.PageRefs), Flags: FlagCRC32C, Payload: refs})
	b, err := Marshal(secs)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("device state: %d bytes, over the %d-byte limit", len(b), MaxSize)
	}
	return b, nil
}

// Decode reads a device state: it checks the framing, every checksum, the
// format and section versions, that every section is known (or optional,
// then skipped), none is repeated, the devices the header lists are all
// there and nothing else, and decodes every payload strictly. It changes
// nothing anywhere; the device packages' SetState check the register
// values themselves.
func Decode(b []byte) (*State, error) {
	if len(b) > MaxSize {
		return nil, errf(ErrCorrupt, "device state: %d bytes, over the %d-byte limit", len(b), MaxSize)
	}
	secs, err := Parse(b)
	if err != nil {
		return nil, err
	}
	for _, s := range secs {
		if s.ID == IDDMBlob {
			return nil, errf(ErrNotState, "device state: section %s at offset %d holds another device model's state (the transport wrapped a blob xen-dm-go did not write); it cannot be loaded here", s.ID, s.Offset)
		}
	}
	if len(secs) == 0 || secs[0].ID != IDHeader {
		return nil, errf(ErrCorrupt, "device state: the first section is not %s", IDHeader)
	}
	st := &State{}
	seen := map[string]bool{}
	for i := range secs {
		s := &secs[i]
		base, idx, known := knownSection(s.ID)
		if !known {
			if s.Optional() {
				st.Skipped = append(st.Skipped, Section{ID: s.ID, Version: s.Version, Flags: s.Flags, Offset: s.Offset, Payload: s.Payload})
				continue
			}
			return nil, errf(ErrUnknownSection, "device state: unknown mandatory section %q (version %d) at offset %d: written by a newer xen-dm-go?", s.ID, s.Version, s.Offset)
		}
		if (s.ID == IDPageRefs || s.ID == IDHeader) && s.Optional() {
			// Skipping the header, or the pages to fill, is never safe.
			return nil, errf(ErrCorrupt, "device state: section %s at offset %d is marked optional; it must never be skipped", s.ID, s.Offset)
		}
		if want := sectionVersion[base]; !readsVersion(base, s.Version) {
			if s.Optional() {
				st.Skipped = append(st.Skipped, Section{ID: s.ID, Version: s.Version, Flags: s.Flags, Offset: s.Offset, Payload: s.Payload})
				continue
			}
			reads := fmt.Sprintf("version %d", want)
			if base == IDPageRefs {
				reads = fmt.Sprintf("versions %d–%d", blk.PageRefsMinVersion, blk.PageRefsVersion)
			}
			return nil, errf(ErrVersion, "device state: section %s at offset %d has version %d; this build reads %s", s.ID, s.Offset, s.Version, reads)
		}
		if s.Flags&^knownFlags != 0 {
			return nil, errf(ErrCorrupt, "device state: section %s at offset %d has undefined flags %#x", s.ID, s.Offset, s.Flags&^knownFlags)
		}
		if s.Flags&FlagCRC32C == 0 {
			return nil, errf(ErrCorrupt, "device state: section %s at offset %d has no checksum", s.ID, s.Offset)
		}
		if seen[s.ID] {
			return nil, errf(ErrCorrupt, "device state: section %s appears twice (again at offset %d)", s.ID, s.Offset)
		}
		seen[s.ID] = true
		switch base {
		case IDHeader:
			if i != 0 {
				return nil, errf(ErrCorrupt, "device state: a second %s at offset %d", IDHeader, s.Offset)
			}
			err = decodeHeader(s, &st.Header)
		case IDHost:
			err = decodeJSON(s, &st.Host)
		case IDPIIX3:
			err = decodeJSON(s, &st.PIIX3)
		case IDPM:
			st.PM = new(piix.PMState)
			err = decodeJSON(s, st.PM)
		case IDPlatform:
			st.Platform = new(xenplatform.State)
			err = decodeJSON(s, st.Platform)
		case IDIDE:
			err = decodeJSON(s, &st.IDE)
		case IDCMOS:
			err = decodeJSON(s, &st.CMOS)
		case IDPS2:
			err = decodeJSON(s, &st.PS2)
		case IDSerial:
			st.Serials[idx] = new(uart.State)
			err = decodeJSON(s, st.Serials[idx])
		case IDPageRefs:
			st.PageRefs, err = blk.DecodePageRefsVersion(s.Version, s.Payload)
			if err != nil {
				err = errf(ErrCorrupt, "device state: section %s at offset %d: %v", s.ID, s.Offset, err)
			}
		}
		if err != nil {
			return nil, err
		}
	}
	h := &st.Header
	need := []string{IDHost, IDPIIX3, IDIDE, IDCMOS, IDPS2}
	want := map[string]bool{IDPM: h.ACPI, IDPlatform: h.XenPlatform}
	for i := 0; i < MaxSerials; i++ {
		want[serialID(i)] = slices.Contains(h.Serials, i)
	}
	for _, id := range slices.Sorted(maps.Keys(want)) {
		if want[id] {
			need = append(need, id)
		} else if seen[id] {
			return nil, errf(ErrCorrupt, "device state: section %s present, but the header says the machine had no such device", id)
		}
	}
	slices.Sort(need)
	for _, id := range need {
		if !seen[id] {
			return nil, errf(ErrCorrupt, "device state: section %s is missing", id)
		}
	}
	return st, nil
}

// knownSection maps an id to its base id (SERIAL for SERIAL0…3) and serial
// index.
func knownSection(id string) (base string, idx int, ok bool) {
	if rest, found := strings.CutPrefix(id, IDSerial); found {
		if len(rest) == 1 && rest[0] >= '0' && rest[0] < '0'+MaxSerials {
			return IDSerial, int(rest[0] - '0'), true
		}
		return "", 0, false
	}
	if id == IDSerial {
		return "", 0, false
	}
	_, ok = sectionVersion[id]
	return id, 0, ok
}

// decodeJSON decodes a payload into v strictly: one JSON object, no unknown
// fields, nothing after it.
func decodeJSON(s *Section, v any) error {
	p := bytes.TrimLeft(s.Payload, " \t\r\n")
	if len(p) == 0 || p[0] != '{' {
		return errf(ErrCorrupt, "device state: section %s at offset %d: payload is not a JSON object", s.ID, s.Offset)
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errf(ErrCorrupt, "device state: section %s at offset %d: %v", s.ID, s.Offset, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return errf(ErrCorrupt, "device state: section %s at offset %d: data after the JSON object", s.ID, s.Offset)
	}
	return nil
}

func decodeHeader(s *Section, h *Header) error {
	// The format version first, so a newer writer's header (which may
	// have fields this build does not know) is reported as such.
	var fv struct {
		Format   *uint32 `json:"format"`
		Producer string  `json:"producer"`
	}
	if err := json.Unmarshal(s.Payload, &fv); err != nil || fv.Format == nil {
		return errf(ErrCorrupt, "device state: %s at offset %d: no format version (%v)", IDHeader, s.Offset, err)
	}
	switch f := *fv.Format; {
	case f > FormatVersion:
		return errf(ErrVersion, "device state: format version %d (written by %q) is newer than this build reads (%d–%d)",
			f, fv.Producer, MinFormatVersion, FormatVersion)
	case f < MinFormatVersion:
		return errf(ErrVersion, "device state: format version %d (written by %q) is older than this build reads (%d–%d)",
			f, fv.Producer, MinFormatVersion, FormatVersion)
	}
	if err := decodeJSON(s, h); err != nil {
		return err
	}
	if err := h.validate(); err != nil {
		return errf(ErrCorrupt, "device state: %s: %v", IDHeader, err)
	}
	return nil
}

func (h *Header) validate() error {
	switch {
	case h.Producer == "" || len(h.Producer) > 256:
		return fmt.Errorf("producer %q", h.Producer)
	case h.Machine == "" || len(h.Machine) > 64:
		return fmt.Errorf("machine type %q", h.Machine)
	case h.VCPUs < 1 || h.VCPUs > 128:
		return fmt.Errorf("%d vCPUs", h.VCPUs)
	case h.RAMBytes == 0:
		return fmt.Errorf("RAM size 0")
	}
	for i, d := range h.Drives {
		switch {
		case d.Index < 0 || d.Index > 3:
			return fmt.Errorf("drive index %d", d.Index)
		case i > 0 && d.Index <= h.Drives[i-1].Index:
			return fmt.Errorf("drives not sorted by index or repeated (%d after %d)", d.Index, h.Drives[i-1].Index)
		case d.Media != MediaDisk && d.Media != MediaCDROM:
			return fmt.Errorf("drive %d: media %q", d.Index, d.Media)
		case d.Size < 0:
			return fmt.Errorf("drive %d: size %d", d.Index, d.Size)
		}
	}
	for i, s := range h.Serials {
		if s < 0 || s >= MaxSerials || (i > 0 && s <= h.Serials[i-1]) {
			return fmt.Errorf("serial ports %v", h.Serials)
		}
	}
	return nil
}

// Fits checks that a state with header h (saved) can be loaded into the
// machine described by cur: same machine type, platform device, ACPI, vCPU
// count, RAM layout, serial ports, IDE positions with the same media, and
// hard disks of the same size. Every difference is named. A CD-ROM whose
// medium differs is not an error (libxl tracks medium changes in the
// domain configuration); it is returned as a warning.
func (h *Header) Fits(cur *Header) (warnings []string, err error) {
	var diffs []string
	diff := func(what string, saved, here any) {
		diffs = append(diffs, fmt.Sprintf("%s %v when saved, %v here", what, saved, here))
	}
	if h.Machine != cur.Machine {
		diff("machine type", h.Machine, cur.Machine)
	}
	if h.XenPlatform != cur.XenPlatform {
		diff("xen-platform device", h.XenPlatform, cur.XenPlatform)
	}
	if h.ACPI != cur.ACPI {
		diff("ACPI (PIIX4 PM)", h.ACPI, cur.ACPI)
	}
	if h.VCPUs != cur.VCPUs {
		diff("vCPUs", h.VCPUs, cur.VCPUs)
	}
	if h.RAMBytes != cur.RAMBytes {
		diff("RAM bytes", h.RAMBytes, cur.RAMBytes)
	}
	if h.MaxRAMBelow4G != cur.MaxRAMBelow4G {
		diff("max-ram-below-4g", h.MaxRAMBelow4G, cur.MaxRAMBelow4G)
	}
	if !slices.Equal(h.Serials, cur.Serials) {
		diff("serial ports", h.Serials, cur.Serials)
	}
	var here [4]*Drive
	for i := range cur.Drives {
		d := &cur.Drives[i]
		if d.Index >= 0 && d.Index < 4 {
			here[d.Index] = d
		}
	}
	var saved [4]*Drive
	for i := range h.Drives {
		saved[h.Drives[i].Index] = &h.Drives[i]
	}
	for i := 0; i < 4; i++ {
		s, c := saved[i], here[i]
		switch {
		case s == nil && c == nil:
		case s == nil:
			diffs = append(diffs, fmt.Sprintf("IDE position %d: empty when saved, a %s here", i, c.Media))
		case c == nil:
			diffs = append(diffs, fmt.Sprintf("IDE position %d: a %s when saved, empty here", i, s.Media))
		case s.Media != c.Media:
			diffs = append(diffs, fmt.Sprintf("IDE position %d: a %s when saved, a %s here", i, s.Media, c.Media))
		case s.Size != c.Size && s.Media == MediaDisk:
			diffs = append(diffs, fmt.Sprintf("IDE position %d: a disk of %d bytes when saved, %d bytes here", i, s.Size, c.Size))
		case s.Size != c.Size:
			warnings = append(warnings, fmt.Sprintf("IDE position %d: CD-ROM medium of %d bytes when saved, %d bytes here", i, s.Size, c.Size))
		}
	}
	if len(diffs) > 0 {
		return warnings, errf(ErrMismatch, "device state saved by %s does not fit this machine: %s", h.Producer, strings.Join(diffs, "; "))
	}
	return warnings, nil
}
