package devstate

import (
	"flag"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/xen-dm-go/xen-dm-go/dm/dev/cmos"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/ide"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/piix"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/ps2"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/uart"
	"github.com/xen-dm-go/xen-dm-go/dm/dev/xenplatform"
)

var update = flag.Bool("update", false, "rewrite testdata/schema.txt")

// The JSON payloads are the devices' State structs. Renaming, retyping,
// adding or removing a field changes what older and newer device models
// read, so it must come with a new section version (sectionVersion) and a
// line in docs/device-state.md. This test lists every field of every
// section and fails when the list changes; after bumping the version, run
//
//	go test ./dm/devstate -run Schema -update
func TestSchemaUnchanged(t *testing.T) {
	var b strings.Builder
	for _, s := range []struct {
		id string
		v  any
	}{
		{IDHeader, Header{}}, {IDHost, piix.HostState{}}, {IDPIIX3, piix.PIIX3State{}}, {IDPM, piix.PMState{}},
		{IDPlatform, xenplatform.State{}}, {IDIDE, ide.State{}}, {IDCMOS, cmos.State{}}, {IDPS2, ps2.State{}},
		{IDSerial + "n", uart.State{}},
	} {
		base := s.id
		if base == IDSerial+"n" {
			base = IDSerial
		}
		fmt.Fprintf(&b, "%s v%d\n", s.id, sectionVersion[base])
		schema(&b, "", reflect.TypeOf(s.v))
	}
	got := b.String()
	const path = "testdata/schema.txt"
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("the device-state schema changed (bump the section version, document it, then -update):\n%s", lineDiff(string(want), got))
	}
}

func schema(b *strings.Builder, path string, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeOf(time.Time{}):
		fmt.Fprintf(b, "  %s string(RFC 3339)\n", path)
	case t.Kind() == reflect.Struct:
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name := f.Name
			if tag, _, _ := strings.Cut(f.Tag.Get("json"), ","); tag == "-" {
				continue
			} else if tag != "" {
				name = tag
			}
			schema(b, strings.TrimPrefix(path+"."+name, "."), f.Type)
		}
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Uint8:
		fmt.Fprintf(b, "  %s base64\n", path)
	case t.Kind() == reflect.Slice:
		schema(b, path+"[]", t.Elem())
	case t.Kind() == reflect.Array:
		schema(b, fmt.Sprintf("%s[%d]", path, t.Len()), t.Elem())
	default:
		fmt.Fprintf(b, "  %s %s\n", path, t.Kind())
	}
}

func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	in := func(l []string, s string) bool {
		for _, x := range l {
			if x == s {
				return true
			}
		}
		return false
	}
	var out strings.Builder
	for _, l := range al {
		if !in(bl, l) {
			out.WriteString("- " + l + "\n")
		}
	}
	for _, l := range bl {
		if !in(al, l) {
			out.WriteString("+ " + l + "\n")
		}
	}
	return out.String()
}
