package devstate

import (
	"bytes"
	"testing"
)

// FuzzDecode: Decode never panics, whatever it is given, and what it
// accepts re-encodes to a state it decodes the same way.
//
//	go test ./dm/devstate -run x -fuzz FuzzDecode -fuzztime 2m -fuzzminimizetime 5s
func FuzzDecode(f *testing.F) {
	st := fixture()
	full, err := Encode(st)
	if err != nil {
		f.Fatal(err)
	}
	st.PageRefs = nil
	st.PM, st.Platform, st.Header.ACPI, st.Header.XenPlatform = nil, nil, false, false
	small, err := Encode(st)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(full)
	f.Add(small)
	f.Add(full[:len(full)/2])
	f.Add([]byte(Magic))
	f.Add([]byte("QEVM\x00\x00\x00\x03"))
	// A container whose sections the fuzzer can recombine: HEAD only, and
	// one unknown optional section.
	secs, _ := Parse(small)
	if b, err := Marshal(secs[:1]); err == nil {
		f.Add(b)
	}
	if b, err := Marshal(append(secs, Section{ID: "X", Flags: FlagOptional, Payload: []byte{1, 2, 3}})); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Decode(b)
		if err != nil {
			if st != nil {
				t.Fatal("state returned with an error")
			}
			return
		}
		st.Skipped = nil
		enc, err := Encode(st)
		if err != nil {
			t.Fatalf("accepted state does not re-encode: %v", err)
		}
		st2, err := Decode(enc)
		if err != nil {
			t.Fatalf("re-encoded state refused: %v", err)
		}
		enc2, err := Encode(st2)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("second re-encoding differs (%v)", err)
		}
	})
}
