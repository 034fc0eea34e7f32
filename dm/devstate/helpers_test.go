package devstate

import (
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/piix"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/uart"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/xenplatform"
)

// fill sets every field reachable from v to a deterministic non-zero value
// (slices get 3 elements), so a round trip that compares equal proves every
// field is carried.
func fill(v reflect.Value, n *int) {
	*n++
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			v.Set(reflect.ValueOf(time.Unix(1700000000, int64(*n)).UTC()))
			return
		}
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				fill(v.Field(i), n)
			}
		}
	case reflect.Array:
		for i := 0; i < v.Len(); i++ {
			fill(v.Index(i), n)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 3, 3))
		for i := 0; i < 3; i++ {
			fill(v.Index(i), n)
		}
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		fill(v.Elem(), n)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(*n%100 + 1))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(*n%200 + 1))
	case reflect.String:
		v.SetString("s" + strconv.Itoa(*n))
	default:
		panic("fill: " + v.Kind().String())
	}
}

func validHeader() Header {
	return Header{
		Format: FormatVersion, Producer: "xen-dm-go test", SavedAt: time.Unix(1700000000, 5).UTC(), DomID: 7, Live: true,
		Machine: "xenfv", XenPlatform: true, ACPI: true, VCPUs: 2, RAMBytes: 120 << 20,
		Drives:  []Drive{{Index: 0, Media: MediaDisk, Size: 1 << 20}, {Index: 2, Media: MediaCDROM}},
		Serials: []int{0, 2},
	}
}

// fixture is a state in which every device field is non-zero.
func fixture() *State {
	st := &State{Header: validHeader()}
	n := 0
	fill(reflect.ValueOf(&st.Host).Elem(), &n)
	fill(reflect.ValueOf(&st.PIIX3).Elem(), &n)
	st.PM = new(piix.PMState)
	fill(reflect.ValueOf(st.PM).Elem(), &n)
	st.Platform = new(xenplatform.State)
	fill(reflect.ValueOf(st.Platform).Elem(), &n)
	fill(reflect.ValueOf(&st.IDE).Elem(), &n)
	fill(reflect.ValueOf(&st.CMOS).Elem(), &n)
	fill(reflect.ValueOf(&st.PS2).Elem(), &n)
	for _, i := range st.Header.Serials {
		st.Serials[i] = new(uart.State)
		fill(reflect.ValueOf(st.Serials[i]).Elem(), &n)
	}
	st.PageRefs = []blk.Entry{
		{PFN: 0x100, Ref: blk.Ref{Disk: 0, Sector: 8, Hash: 11}},
		{PFN: 0x101, Ref: blk.Ref{Disk: 0, Sector: 16, Hash: 12}},
		{PFN: 0x200, Ref: blk.Ref{Disk: 1, Sector: 800, Hash: 13}},
	}
	return st
}

func mustEncode(t testing.TB, st *State) []byte {
	t.Helper()
	b, err := Encode(st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustParse(t testing.TB, b []byte) []Section {
	t.Helper()
	s, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// remarshal re-frames sections (recomputing CRCs for the flagged ones):
// how a test builds a well-formed state with one thing changed.
func remarshal(t testing.TB, secs []Section) []byte {
	t.Helper()
	b, err := Marshal(secs)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
