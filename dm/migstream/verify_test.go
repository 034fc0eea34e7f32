package migstream_test

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	ms "github.com/xen-dm-go/xen-dm-go/dm/migstream"
	"github.com/xen-dm-go/xen-dm-go/dm/migstream/streamtest"
)

// libxcStream wraps libxc records of a v<version> HVM stream in libxl.
func libxcStream(version uint32, recs ...ms.Record) []byte {
	b := streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlLibxcContext, nil).LibxcHeader(version)
	for _, r := range recs {
		b.LibxcRecord(r.Type, r.Body)
	}
	return b.LibxcRecord(ms.LibxcEnd, nil).LibxlRecord(ms.LibxlEnd, nil).Bytes()
}

func le32(v ...uint32) []byte {
	var b []byte
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

// The checker's rules beyond the decoder, each with a stream the decoder
// accepts and the verifier rejects.
func TestCheckerRules(t *testing.T) {
	pd := ms.AppendPageData(nil, []ms.PFNEntry{ms.MakePFNEntry(1, ms.PageXTAB)}, nil)
	binary.LittleEndian.PutUint32(pd[4:], 1)
	cases := []struct {
		name string
		b    []byte
		want string
	}{
		{"page data res", libxcStream(3, ms.Record{Type: ms.LibxcPageData, Body: pd}), "reserved bits set: 0x1"},
		{"end body", libxcStream(3, ms.Record{Type: ms.LibxcVerify, Body: []byte{1}}), "non-zero length"},
		{"static data end v2", libxcStream(2, ms.Record{Type: ms.LibxcStaticDataEnd}), "v2 stream"},
		{"cpuid v2", libxcStream(2, ms.Record{Type: ms.LibxcX86CPUIDPolicy, Body: make([]byte, 24)}), "v2 stream"},
		{"cpuid size", libxcStream(3, ms.Record{Type: ms.LibxcX86CPUIDPolicy, Body: make([]byte, 20)}), "multiple of 24"},
		{"msr size", libxcStream(3, ms.Record{Type: ms.LibxcX86MSRPolicy, Body: make([]byte, 24)}), "multiple of 16"},
		{"tsc size", libxcStream(3, ms.Record{Type: ms.LibxcX86TSCInfo, Body: make([]byte, 16)}), "want 24"},
		{"tsc res", libxcStream(3, ms.Record{Type: ms.LibxcX86TSCInfo, Body: append(make([]byte, 20), 1, 0, 0, 0)}), "reserved"},
		{"hvm context empty", libxcStream(3, ms.Record{Type: ms.LibxcHVMContext}), "zero length"},
		{"hvm params count", libxcStream(3, ms.Record{Type: ms.LibxcHVMParams, Body: le32(2, 0, 1, 0, 2, 0)}), "count 2 needs 32"},
		{"hvm params res", libxcStream(3, ms.Record{Type: ms.LibxcHVMParams, Body: le32(0, 1)}), "reserved field"},
		{"toolstack", libxcStream(3, ms.Record{Type: ms.LibxcToolstack, Body: []byte{1}}), "deprecated"},
		{"dirty pfn list", libxcStream(3, ms.Record{Type: ms.LibxcCheckpointDirtyPFNList}), "CHECKPOINT_DIRTY_PFN_LIST"},
		{"pv info", libxcStream(3, ms.Record{Type: ms.LibxcX86PVInfo, Body: []byte{8, 2, 0, 0, 0, 0, 0, 0}}), "levels 2"},
		{"shared info", libxcStream(3, ms.Record{Type: ms.LibxcSharedInfo, Body: make([]byte, 8)}), "want 4096"},
		{"emulator id", streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlEmulatorContext, le32(3, 0)).LibxlRecord(ms.LibxlEnd, nil).Bytes(), "emulator id 0x3"},
		{"xenstore nul", streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlEmulatorXenstoreData, append(le32(2, 0), "k\x00v"...)).LibxlRecord(ms.LibxlEnd, nil).Bytes(), "NUL"},
		{"xenstore odd", streamtest.NewBuilder().LibxlHeader().LibxlRecord(ms.LibxlEmulatorXenstoreData, append(le32(2, 0), "k\x00"...)).LibxlRecord(ms.LibxlEnd, nil).Bytes(), "even number"},
		{"libxl options", func() []byte {
			b := bytes.Clone(libxcStream(3))
			b[15] = 4
			return b
		}(), "reserved bits set in options"},
		{"image res", func() []byte {
			b := bytes.Clone(libxcStream(3))
			b[16+8+19] = 1
			return b
		}(), "image header"},
		{"domain type", func() []byte {
			b := bytes.Clone(libxcStream(3))
			b[16+8+24] = 9
			return b
		}(), "domain type 0x9"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := ms.Copy(new(bytes.Buffer), bytes.NewReader(c.b)); err != nil {
				t.Fatalf("decoder rejects it: %v", err)
			}
			_, err := ms.Verify(bytes.NewReader(c.b))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("verify: %v, want %q", err, c.want)
			}
		})
	}
	// Well-formed variants pass.
	ok := libxcStream(3, ms.Record{Type: ms.LibxcHVMParams, Body: le32(1, 0, 1, 0, 2, 0)},
		ms.Record{Type: ms.LibxcX86PVInfo, Body: []byte{8, 4, 0, 0, 0, 0, 0, 0}})
	if _, err := ms.Verify(bytes.NewReader(ok)); err != nil {
		t.Fatal(err)
	}
}
