package devstate

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand"
	"reflect"
	"strings"
	"testing"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/uart"
)

func TestRoundTripEveryField(t *testing.T) {
	st := fixture()
	b := mustEncode(t, st)
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(st)
		t.Fatalf("round trip differs:\n got %s\nwant %s", gj, wj)
	}
	// Encoding is deterministic.
	if b2 := mustEncode(t, got); !bytes.Equal(b, b2) {
		t.Fatal("re-encoding a decoded state changed the bytes")
	}
	// The sections, in order, all checksummed and mandatory.
	var ids []string
	for _, s := range mustParse(t, b) {
		ids = append(ids, s.ID)
		if s.Flags != FlagCRC32C || s.Version != 1 {
			t.Errorf("section %s: version %d flags %#x", s.ID, s.Version, s.Flags)
		}
	}
	want := "HEAD I440FX PIIX3 PIIX4PM XENPLAT IDE CMOS I8042 SERIAL0 SERIAL2 PAGEREFS"
	if strings.Join(ids, " ") != want {
		t.Fatalf("sections %q, want %q", ids, want)
	}
	t.Logf("fixture state: %d bytes", len(b))
}

// A pc machine without ACPI and serial ports: the optional devices are
// absent, and no page references.
func TestRoundTripMinimalMachine(t *testing.T) {
	st := fixture()
	st.Header.Machine, st.Header.XenPlatform, st.Header.ACPI = "pc", false, false
	st.Header.Serials, st.Header.Drives = []int{}, []Drive{}
	st.PM, st.Platform, st.Serials = nil, nil, [MaxSerials]*uart.State{}
	st.PageRefs = []blk.Entry{}
	got, err := Decode(mustEncode(t, st))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, st) {
		t.Fatalf("got %+v", got.Header)
	}
}

func TestTruncatedAtEveryByte(t *testing.T) {
	b := mustEncode(t, fixture())
	for i := 0; i < len(b); i++ {
		_, err := Decode(b[:i])
		if !errors.Is(err, ErrTruncated) {
			t.Fatalf("truncated to %d of %d bytes: %v", i, len(b), err)
		}
	}
	// And something after END.
	if _, err := Decode(append(bytes.Clone(b), 0)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "trailing garbage") {
		t.Fatalf("trailing byte: %v", err)
	}
	if _, err := Decode(append(bytes.Clone(b), make([]byte, 4096)...)); err == nil {
		t.Fatal("trailing zeros accepted")
	}
}

// Any single flipped bit or byte anywhere is refused, page references
// included.
func TestEveryByteCorrupted(t *testing.T) {
	b := mustEncode(t, fixture())
	for i := range b {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			c := bytes.Clone(b)
			c[i] ^= x
			if _, err := Decode(c); err == nil {
				t.Fatalf("byte %d ^ %#x accepted", i, x)
			}
		}
	}
}

func TestChecksumMismatchNamed(t *testing.T) {
	b := mustEncode(t, fixture())
	secs := mustParse(t, b)
	var cmos Section
	for _, s := range secs {
		if s.ID == IDCMOS {
			cmos = s
		}
	}
	c := bytes.Clone(b)
	c[cmos.Offset+sectionHeader+5] ^= 0x10
	_, err := Decode(c)
	if !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), `"CMOS"`) {
		t.Fatalf("%v", err)
	}
}

func TestGarbageRefused(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	random := make([]byte, 4096)
	rng.Read(random)
	for name, b := range map[string][]byte{
		"empty":       nil,
		"qemu savevm": []byte("QEVM\x00\x00\x00\x03\x02\x00\x00\x00"),
		"random":      random,
		"json":        []byte(`{"format":1}`),
		"zeros":       make([]byte, 64),
	} {
		if _, err := Decode(b); !errors.Is(err, ErrNotState) && !errors.Is(err, ErrTruncated) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The magic followed by garbage.
	g := append([]byte(Magic), random...)
	if _, err := Decode(g); err == nil {
		t.Fatal("magic + garbage accepted")
	}
	// A section id that is not ASCII.
	b := mustEncode(t, fixture())
	c := bytes.Clone(b)
	copy(c[headerSize:], "\x01\x02")
	if _, err := Decode(c); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "garbage section id") {
		t.Fatalf("bad id: %v", err)
	}
}

func TestContainerVersionAndFlags(t *testing.T) {
	b := mustEncode(t, fixture())
	for _, v := range []uint32{0, 2, 0xffffffff} {
		c := bytes.Clone(b)
		putLE32(c[8:], v)
		if _, err := Decode(c); !errors.Is(err, ErrVersion) {
			t.Fatalf("container version %d: %v", v, err)
		}
	}
	c := bytes.Clone(b)
	putLE32(c[12:], 1)
	if _, err := Decode(c); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("container flags: %v", err)
	}
}

// withHeader re-encodes the fixture with HEAD's JSON edited by f.
func withHeader(t *testing.T, f func(m map[string]any)) []byte {
	secs := mustParse(t, mustEncode(t, fixture()))
	var m map[string]any
	if err := json.Unmarshal(secs[0].Payload, &m); err != nil {
		t.Fatal(err)
	}
	f(m)
	p, _ := json.Marshal(m)
	secs[0].Payload = p
	return remarshal(t, secs)
}

func TestFormatVersionOlderNewer(t *testing.T) {
	for _, c := range []struct {
		v    float64
		word string
	}{{0, "older"}, {2, "newer"}, {1000, "newer"}} {
		_, err := Decode(withHeader(t, func(m map[string]any) { m["format"] = c.v }))
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), c.word) || !strings.Contains(err.Error(), "xen-dm-go test") {
			t.Fatalf("format %v: %v", c.v, err)
		}
	}
	// A newer writer's header may have fields this build does not know:
	// reported as a version problem, not as a bad field.
	_, err := Decode(withHeader(t, func(m map[string]any) { m["format"] = 2.0; m["new_thing"] = true }))
	if !errors.Is(err, ErrVersion) {
		t.Fatalf("newer header with a new field: %v", err)
	}
	_, err = Decode(withHeader(t, func(m map[string]any) { delete(m, "format") }))
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("no format: %v", err)
	}
}

func TestSectionVersions(t *testing.T) {
	secs := mustParse(t, mustEncode(t, fixture()))
	for i := range secs {
		c := append([]Section(nil), secs...)
		next := uint32(2)
		if secs[i].ID == IDPageRefs {
			next = blk.PageRefsVersion + 1 // versions 1 and 2 are read
		}
		c[i].Version = next
		_, err := Decode(remarshal(t, c))
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), secs[i].ID) {
			t.Fatalf("%s version %d: %v", secs[i].ID, next, err)
		}
		c[i].Version = 0
		if _, err := Decode(remarshal(t, c)); !errors.Is(err, ErrVersion) {
			t.Fatalf("%s version 0: %v", secs[i].ID, err)
		}
	}
}

func TestUnknownSections(t *testing.T) {
	st := fixture()
	secs := mustParse(t, mustEncode(t, st))
	extra := Section{ID: "NEWDEV", Version: 3, Flags: FlagCRC32C, Payload: []byte("whatever a newer build writes")}
	ins := func(s Section) []Section {
		c := append([]Section(nil), secs[:3]...)
		c = append(c, s)
		return append(c, secs[3:]...)
	}
	_, err := Decode(remarshal(t, ins(extra)))
	if !errors.Is(err, ErrUnknownSection) || !strings.Contains(err.Error(), "NEWDEV") {
		t.Fatalf("unknown mandatory section: %v", err)
	}
	extra.Flags |= FlagOptional
	got, err := Decode(remarshal(t, ins(extra)))
	if err != nil {
		t.Fatalf("unknown optional section: %v", err)
	}
	if len(got.Skipped) != 1 || got.Skipped[0].ID != "NEWDEV" || got.Skipped[0].Version != 3 {
		t.Fatalf("skipped %+v", got.Skipped)
	}
	got.Skipped = nil
	if !reflect.DeepEqual(got, st) {
		t.Fatal("state differs after skipping an optional section")
	}
	// Optional without a checksum, and with undefined flags: still skipped.
	extra.Flags = FlagOptional | 1<<7
	if _, err := Decode(remarshal(t, ins(extra))); err != nil {
		t.Fatalf("optional section with other flags: %v", err)
	}
	// SERIAL4 does not exist; SERIAL alone neither.
	for _, id := range []string{"SERIAL4", "SERIAL", "SERIAL01"} {
		if _, err := Decode(remarshal(t, ins(Section{ID: id, Version: 1, Flags: FlagCRC32C, Payload: []byte("{}")}))); !errors.Is(err, ErrUnknownSection) {
			t.Fatalf("%s: %v", id, err)
		}
	}
	// The transport's wrapper for foreign blobs.
	dmb := []Section{{ID: IDDMBlob, Version: 1, Payload: []byte("QEVM")}}
	if _, err := Decode(remarshal(t, dmb)); !errors.Is(err, ErrNotState) || !strings.Contains(err.Error(), "another device model") {
		t.Fatalf("DMBLOB: %v", err)
	}
}

func TestSectionSetChecked(t *testing.T) {
	st := fixture()
	secs := mustParse(t, mustEncode(t, st))
	idx := func(id string) int {
		for i, s := range secs {
			if s.ID == id {
				return i
			}
		}
		t.Fatalf("no %s", id)
		return -1
	}
	without := func(id string) []Section {
		i := idx(id)
		return append(append([]Section(nil), secs[:i]...), secs[i+1:]...)
	}
	for _, id := range []string{IDHost, IDPIIX3, IDPM, IDPlatform, IDIDE, IDCMOS, IDPS2, "SERIAL2"} {
		_, err := Decode(remarshal(t, without(id)))
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), id+" is missing") {
			t.Fatalf("without %s: %v", id, err)
		}
	}
	// Without PAGEREFS: fine (no references).
	got, err := Decode(remarshal(t, without(IDPageRefs)))
	if err != nil || len(got.PageRefs) != 0 {
		t.Fatalf("without PAGEREFS: %v %v", err, got)
	}
	// HEAD not first.
	c := append([]Section(nil), secs...)
	c[0], c[1] = c[1], c[0]
	if _, err := Decode(remarshal(t, c)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "first section") {
		t.Fatalf("HEAD second: %v", err)
	}
	// Twice.
	c = append(append([]Section(nil), secs...), secs[idx(IDCMOS)])
	if _, err := Decode(remarshal(t, c)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("CMOS twice: %v", err)
	}
	// A device the header says the machine did not have.
	b := withHeader(t, func(m map[string]any) { m["acpi"] = false })
	if _, err := Decode(b); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "PIIX4PM present") {
		t.Fatalf("PM without ACPI: %v", err)
	}
	b = withHeader(t, func(m map[string]any) { m["serials"] = []int{0} })
	if _, err := Decode(b); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "SERIAL2 present") {
		t.Fatalf("extra serial: %v", err)
	}
}

func TestChecksumRequired(t *testing.T) {
	secs := mustParse(t, mustEncode(t, fixture()))
	for i := range secs {
		c := append([]Section(nil), secs...)
		c[i].Flags &^= FlagCRC32C
		_, err := Decode(remarshal(t, c))
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "no checksum") {
			t.Fatalf("%s without CRC: %v", secs[i].ID, err)
		}
		c[i].Flags = FlagCRC32C | 1<<5
		if _, err := Decode(remarshal(t, c)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "undefined flags") {
			t.Fatalf("%s with undefined flags: %v", secs[i].ID, err)
		}
	}
}

func TestStrictPayloads(t *testing.T) {
	secs := mustParse(t, mustEncode(t, fixture()))
	var ci int
	for i, s := range secs {
		if s.ID == IDCMOS {
			ci = i
		}
	}
	for name, p := range map[string]string{
		"null":          `null`,
		"array":         `[1,2]`,
		"unknown field": `{"Index":1,"Data":[],"Extra":1}`,
		"trailing":      `{"Index":1} {}`,
		"wrong type":    `{"Index":"x"}`,
		"out of range":  `{"Index":300}`,
		"empty":         ``,
	} {
		c := append([]Section(nil), secs...)
		c[ci].Payload = []byte(p)
		if _, err := Decode(remarshal(t, c)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "CMOS") {
			t.Errorf("CMOS payload %s (%q): %v", name, p, err)
		}
	}
	for name, f := range map[string]func(m map[string]any){
		"vcpus 0":     func(m map[string]any) { m["vcpus"] = 0 },
		"vcpus 129":   func(m map[string]any) { m["vcpus"] = 129 },
		"ram 0":       func(m map[string]any) { m["ram_bytes"] = 0 },
		"no producer": func(m map[string]any) { m["producer"] = "" },
		"no machine":  func(m map[string]any) { m["machine"] = "" },
		"drive index": func(m map[string]any) { m["drives"] = []any{map[string]any{"index": 4, "media": "disk", "size": 1}} },
		"drive media": func(m map[string]any) { m["drives"] = []any{map[string]any{"index": 0, "media": "tape", "size": 1}} },
		"drives order": func(m map[string]any) {
			m["drives"] = []any{map[string]any{"index": 1, "media": "disk"}, map[string]any{"index": 0, "media": "disk"}}
		},
		"serial range":  func(m map[string]any) { m["serials"] = []int{0, 2, 4} },
		"unknown field": func(m map[string]any) { m["colour"] = "blue" },
	} {
		if _, err := Decode(withHeader(t, f)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("header %s: %v", name, err)
		}
	}
}

func TestFits(t *testing.T) {
	saved := validHeader()
	cur := validHeader()
	cur.DomID, cur.Live = 12, false // may differ
	if w, err := saved.Fits(&cur); err != nil || len(w) != 0 {
		t.Fatalf("same machine: %v %v", w, err)
	}
	for name, c := range map[string]struct {
		f    func(h *Header)
		want string
	}{
		"machine":  {func(h *Header) { h.Machine, h.XenPlatform = "pc", false }, "machine type xenfv when saved, pc here"},
		"acpi":     {func(h *Header) { h.ACPI = false }, "ACPI"},
		"vcpus":    {func(h *Header) { h.VCPUs = 4 }, "vCPUs 2 when saved, 4 here"},
		"ram":      {func(h *Header) { h.RAMBytes = 1 << 30 }, "RAM bytes"},
		"below 4g": {func(h *Header) { h.MaxRAMBelow4G = 1 << 31 }, "max-ram-below-4g"},
		"serials":  {func(h *Header) { h.Serials = []int{0} }, "serial ports [0 2] when saved, [0] here"},
		"no disk":  {func(h *Header) { h.Drives = h.Drives[1:] }, "IDE position 0: a disk when saved, empty here"},
		"new disk": {func(h *Header) { h.Drives = append(h.Drives, Drive{Index: 3, Media: MediaDisk, Size: 5}) }, "IDE position 3: empty when saved, a disk here"},
		"media":    {func(h *Header) { h.Drives[1].Media = MediaDisk }, "IDE position 2: a cdrom when saved, a disk here"},
		"size":     {func(h *Header) { h.Drives[0].Size = 2 << 20 }, "a disk of 1048576 bytes when saved, 2097152 bytes here"},
	} {
		cur := validHeader()
		cur.Drives = append([]Drive(nil), cur.Drives...)
		c.f(&cur)
		_, err := saved.Fits(&cur)
		if !errors.Is(err, ErrMismatch) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Several differences are all named.
	cur = validHeader()
	cur.VCPUs, cur.RAMBytes = 3, 1
	if _, err := saved.Fits(&cur); err == nil || !strings.Contains(err.Error(), "vCPUs") || !strings.Contains(err.Error(), "RAM") {
		t.Fatalf("two differences: %v", err)
	}
	// A CD-ROM medium that differs is a warning.
	cur = validHeader()
	cur.Drives = append([]Drive(nil), cur.Drives...)
	cur.Drives[1].Size = 650 << 20
	w, err := saved.Fits(&cur)
	if err != nil || len(w) != 1 || !strings.Contains(w[0], "CD-ROM") {
		t.Fatalf("cdrom: %v %v", w, err)
	}
}

func TestEncodeChecksConsistency(t *testing.T) {
	for name, f := range map[string]func(st *State){
		"pm":       func(st *State) { st.PM = nil },
		"platform": func(st *State) { st.Header.XenPlatform = false },
		"serial":   func(st *State) { st.Serials[1] = st.Serials[0] },
		"header":   func(st *State) { st.Header.VCPUs = 0 },
		"refs":     func(st *State) { st.PageRefs[0], st.PageRefs[1] = st.PageRefs[1], st.PageRefs[0] },
	} {
		st := fixture()
		f(st)
		if _, err := Encode(st); err == nil {
			t.Errorf("%s: inconsistent state encoded", name)
		}
	}
}

func TestMarshalRefusesBadIDs(t *testing.T) {
	for _, id := range []string{"", "TOOLONGID", "A B", "END"} {
		s := Section{ID: id, Payload: []byte("x")}
		if _, err := Marshal([]Section{s}); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
}

func putLE32(b []byte, v uint32) {
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}

// PAGEREFS is checksummed like every other section (the transport writes it
// so too): a flipped hash byte is refused, and so is a PAGEREFS without a
// CRC (the pages it names would be filled into the wrong pfns unnoticed).
func TestPageRefsChecksummed(t *testing.T) {
	st := fixture()
	b := mustEncode(t, st)
	secs := mustParse(t, b)
	last := len(secs) - 1
	if secs[last].ID != IDPageRefs || secs[last].Flags != FlagCRC32C || len(st.PageRefs) == 0 {
		t.Fatalf("last section %s flags %#x", secs[last].ID, secs[last].Flags)
	}
	c := bytes.Clone(b)
	c[len(c)-8-sectionHeader-8] ^= 1 // inside the CRC trailer or the last hash
	if _, err := Decode(c); !errors.Is(err, ErrChecksum) || !strings.Contains(err.Error(), `"PAGEREFS"`) {
		t.Fatalf("corrupt PAGEREFS: %v", err)
	}
	secs[last].Flags = 0
	if _, err := Decode(remarshal(t, secs)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "PAGEREFS") ||
		!strings.Contains(err.Error(), "no checksum") {
		t.Fatalf("PAGEREFS without a CRC: %v", err)
	}
}

// Zero references (all-zero pages the transport elided) travel with the disk
// references: PAGEREFS version 2 then, version 1 without them, and a
// version-1 section cannot carry them.
func TestPageRefsZeroRoundTrip(t *testing.T) {
	st := fixture()
	disk := st.PageRefs
	st.PageRefs = []blk.Entry{
		{PFN: 0x10, Ref: blk.ZeroRef()}, {PFN: 0x11, Ref: blk.ZeroRef()},
		disk[0], disk[1],
		{PFN: 0x102, Ref: blk.ZeroRef()},
		disk[2],
		{PFN: 0x300, Ref: blk.ZeroRef()},
	}
	b := mustEncode(t, st)
	secs := mustParse(t, b)
	pr := secs[len(secs)-1]
	if pr.ID != IDPageRefs || pr.Version != 2 {
		t.Fatalf("last section %s version %d, want PAGEREFS 2", pr.ID, pr.Version)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.PageRefs, st.PageRefs) {
		t.Fatalf("references %+v\nwant %+v", got.PageRefs, st.PageRefs)
	}
	// Disk references only: version 1, as older builds write and read it.
	st.PageRefs = disk
	if secs := mustParse(t, mustEncode(t, st)); secs[len(secs)-1].Version != 1 {
		t.Fatalf("PAGEREFS version %d without zero references, want 1", secs[len(secs)-1].Version)
	}
	// Zero references under version 1: refused, never taken for disk 255.
	secs[len(secs)-1].Version = 1
	if _, err := Decode(remarshal(t, secs)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "zero references need version 2") {
		t.Fatalf("zero references in a version-1 section: %v", err)
	}
}
