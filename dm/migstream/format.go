package migstream

import "fmt"

// Numbers of the three nested formats. Sources (Xen 4.17): tools/xl/xl.h,
// tools/libs/light/libxl_sr_stream_format.h, tools/libs/guest/
// xg_sr_stream_format.h, xg_sr_common.h, xen/include/public/domctl.h.

// Sizes and limits.
const (
	PageShift = 12
	PageSize  = 1 << PageShift

	// RecLengthMax is libxc's REC_LENGTH_MAX (read_record() in
	// xg_sr_common.c). The codec applies it to both record layers and to the
	// xl optional data.
	RecLengthMax = 128 << 20
	// MaxBatchSize is libxc's MAX_BATCH_SIZE: the most pfns the saver puts in
	// one PAGE_DATA record. Larger records are valid and accepted.
	MaxBatchSize = 1024

	recHeaderSize   = 8  // type u32, body_length u32
	recAlign        = 8  // records are padded to a multiple of 8
	xlHeaderSize    = 48 // struct save_file_header
	libxlHeaderSize = 16 // struct libxl__sr_hdr
	libxcIHdrSize   = 24 // struct xc_sr_ihdr
	libxcDHdrSize   = 16 // struct xc_sr_dhdr
	pageDataHdrSize = 8  // struct xc_sr_rec_page_data_header (count, _res1)
)

// xl save-file header (struct save_file_header in tools/xl/xl.h).
const (
	// XLMagic is savefileheader_magic, 32 bytes.
	XLMagic = "Xen saved domain, xl format\n \x00 \r"
	// XLByteOrder is SAVEFILE_BYTEORDER_VALUE, written in the saver's native
	// byte order (little-endian on x86).
	XLByteOrder = 0x01020304

	XLMandatoryJSON     = 1 << 0 // XL_MANDATORY_FLAG_JSON
	XLMandatoryStreamV2 = 1 << 1 // XL_MANDATORY_FLAG_STREAMv2
	XLMandatoryAll      = XLMandatoryJSON | XLMandatoryStreamV2
)

// The migrate handshake (tools/xl/xl.h, xl_migrate.c). The banner is sent
// without its NUL; the other three with it. The report is followed by one
// status byte (0 = success).
const (
	MsgBanner = "xl migration receiver ready, send binary domain data.\n"
	MsgReady  = "domain received, ready to unpause\x00"
	MsgGo     = "domain is yours, you are cleared to unpause\x00"
	MsgReport = "my copy unpause results are as follows\x00"
)

// libxl stream v2 (libxl_sr_stream_format.h). The header is big-endian.
const (
	LibxlIdent   = 0x4c6962786c466d74 // "LibxlFmt"
	LibxlVersion = 2

	LibxlOptBigEndian = 1 << 0
	LibxlOptLegacy    = 1 << 1

	EmulatorUnknown      = 0
	EmulatorQemuTrad     = 1
	EmulatorQemuUpstream = 2
)

// libxl record types (REC_TYPE_* in libxl_sr_stream_format.h).
const (
	LibxlEnd                  uint32 = 0x00
	LibxlLibxcContext         uint32 = 0x01
	LibxlEmulatorXenstoreData uint32 = 0x02
	LibxlEmulatorContext      uint32 = 0x03
	LibxlCheckpointEnd        uint32 = 0x04
	LibxlCheckpointState      uint32 = 0x05
)

// libxc stream v2/v3 (xg_sr_stream_format.h). The image header is
// big-endian; everything after it is in the stream's (little) endianness.
const (
	LibxcMarker     = 0xFFFFFFFFFFFFFFFF
	LibxcID         = 0x58454E46 // "XENF"
	LibxcVersionMin = 2
	LibxcVersionMax = 3

	LibxcOptBigEndian = 1 << 0

	DomainX86PV  = 1
	DomainX86HVM = 2
	DomainX86PVH = 3
	DomainARM    = 4
)

// libxc record types (REC_TYPE_* in xg_sr_stream_format.h).
const (
	LibxcEnd                    uint32 = 0x00
	LibxcPageData               uint32 = 0x01
	LibxcX86PVInfo              uint32 = 0x02
	LibxcX86PVP2MFrames         uint32 = 0x03
	LibxcX86PVVCPUBasic         uint32 = 0x04
	LibxcX86PVVCPUExtended      uint32 = 0x05
	LibxcX86PVVCPUXSave         uint32 = 0x06
	LibxcSharedInfo             uint32 = 0x07
	LibxcX86TSCInfo             uint32 = 0x08
	LibxcHVMContext             uint32 = 0x09
	LibxcHVMParams              uint32 = 0x0A
	LibxcToolstack              uint32 = 0x0B
	LibxcX86PVVCPUMSRs          uint32 = 0x0C
	LibxcVerify                 uint32 = 0x0D
	LibxcCheckpoint             uint32 = 0x0E
	LibxcCheckpointDirtyPFNList uint32 = 0x0F
	LibxcStaticDataEnd          uint32 = 0x10
	LibxcX86CPUIDPolicy         uint32 = 0x11
	LibxcX86MSRPolicy           uint32 = 0x12

	// RecTypeOptional marks a libxc record the restorer may skip
	// (REC_TYPE_OPTIONAL).
	RecTypeOptional uint32 = 0x80000000
)

var libxlNames = [...]string{
	"END", "LIBXC_CONTEXT", "EMULATOR_XENSTORE_DATA", "EMULATOR_CONTEXT",
	"CHECKPOINT_END", "CHECKPOINT_STATE",
}

var libxcNames = [...]string{
	"END", "PAGE_DATA", "X86_PV_INFO", "X86_PV_P2M_FRAMES", "X86_PV_VCPU_BASIC",
	"X86_PV_VCPU_EXTENDED", "X86_PV_VCPU_XSAVE", "SHARED_INFO", "X86_TSC_INFO",
	"HVM_CONTEXT", "HVM_PARAMS", "TOOLSTACK", "X86_PV_VCPU_MSRS", "VERIFY",
	"CHECKPOINT", "CHECKPOINT_DIRTY_PFN_LIST", "STATIC_DATA_END",
	"X86_CPUID_POLICY", "X86_MSR_POLICY",
}

// LibxlRecordName is the REC_TYPE_ name of a libxl record type.
func LibxlRecordName(t uint32) string {
	if int(t) < len(libxlNames) {
		return libxlNames[t]
	}
	return fmt.Sprintf("unknown 0x%08x", t)
}

// LibxcRecordName is the REC_TYPE_ name of a libxc record type.
func LibxcRecordName(t uint32) string {
	if int(t) < len(libxcNames) {
		return libxcNames[t]
	}
	if t&RecTypeOptional != 0 {
		return fmt.Sprintf("optional 0x%08x", t)
	}
	return fmt.Sprintf("unknown 0x%08x", t)
}

// libxcKnown reports whether t is a libxc record type of the 4.17 table.
func libxcKnown(t uint32) bool { return int(t) < len(libxcNames) }

// PageType is the XEN_DOMCTL_PFINFO_* type of a PAGE_DATA entry, as stored
// in bits 63–60 of the entry (the domctl value shifted right by 28).
type PageType uint8

// Page types (public/domctl.h; xg_sr_common.h is_known_page_type()).
const (
	PageNOTAB  PageType = 0x0 // normal page, data in the stream
	PageL1TAB  PageType = 0x1 // PV page tables, data in the stream
	PageL2TAB  PageType = 0x2
	PageL3TAB  PageType = 0x3
	PageL4TAB  PageType = 0x4
	PageLPIN   PageType = 0x8 // LPINTAB: pinned, ORed into L1–L4
	PageBROKEN PageType = 0xD // no data, not populated
	PageXALLOC PageType = 0xE // no data, populated ("allocate only")
	PageXTAB   PageType = 0xF // no data, not populated (hole)
)

// Valid reports whether t is a type the restorer and the verifier know:
// everything but 5–8.
func (t PageType) Valid() bool { return t < 5 || t > 8 }

// HasData reports whether an entry of type t carries 4096 bytes of data
// (page_type_has_stream_data(): NOTAB and L1–L4, pinned or not).
func (t PageType) HasData() bool { return t.Valid() && t&7 <= 4 }

func (t PageType) String() string {
	switch t {
	case PageNOTAB:
		return "NOTAB"
	case PageBROKEN:
		return "BROKEN"
	case PageXALLOC:
		return "XALLOC"
	case PageXTAB:
		return "XTAB"
	}
	if t.Valid() {
		if t&PageLPIN != 0 {
			return fmt.Sprintf("L%dTAB|LPINTAB", t&7)
		}
		return fmt.Sprintf("L%dTAB", t)
	}
	return fmt.Sprintf("invalid(%d)", uint8(t))
}

// PFN entry layout (PAGE_DATA_PFN_MASK, PAGE_DATA_TYPE_MASK).
const (
	PFNMask          uint64 = 1<<52 - 1
	pfnReservedMask  uint64 = 0xFF << 52
	pfnTypeShift            = 60
	pageDataTypeMask uint64 = 0xF << pfnTypeShift
)

// PFNEntry is one pfn[] entry of a PAGE_DATA record: type in bits 63–60,
// reserved bits 59–52 (zero), pfn in bits 51–0.
type PFNEntry uint64

// MakePFNEntry builds an entry.
func MakePFNEntry(pfn uint64, t PageType) PFNEntry {
	return PFNEntry(uint64(t)<<pfnTypeShift | pfn&PFNMask)
}

// PFN is the frame number.
func (e PFNEntry) PFN() uint64 { return uint64(e) & PFNMask }

// Type is the page type.
func (e PFNEntry) Type() PageType { return PageType(uint64(e) >> pfnTypeShift) }

// Reserved returns bits 59–52, which must be zero.
func (e PFNEntry) Reserved() uint64 { return uint64(e) & pfnReservedMask }

func (e PFNEntry) String() string { return fmt.Sprintf("%s:%#x", e.Type(), e.PFN()) }

// HVM params (public/hvm/params.h) named by `stream inspect`.
var hvmParamNames = map[uint64]string{
	0: "CALLBACK_IRQ", 1: "STORE_PFN", 2: "STORE_EVTCHN", 4: "PAE_ENABLED",
	5: "IOREQ_PFN", 6: "BUFIOREQ_PFN", 9: "VIRIDIAN", 10: "TIMER_MODE",
	11: "HPET_ENABLED", 12: "IDENT_PT", 13: "DM_DOMAIN", 14: "ACPI_S_STATE",
	15: "VM86_TSS", 16: "VPT_ALIGN", 17: "CONSOLE_PFN", 18: "CONSOLE_EVTCHN",
	19: "ACPI_IOPORTS_LOCATION", 24: "NESTEDHVM", 26: "BUFIOREQ_EVTCHN",
	27: "PAGING_RING_PFN", 28: "MONITOR_RING_PFN", 29: "SHARING_RING_PFN",
	31: "TRIPLE_FAULT_REASON", 32: "IOREQ_SERVER_PFN",
	33: "NR_IOREQ_SERVER_PAGES", 34: "VM_GENERATION_ID_ADDR", 35: "ALTP2M",
	36: "X87_FIP_WIDTH", 37: "VM86_TSS_SIZED", 38: "MCA_CAP",
}

// HVMParamName names an HVM_PARAM_* index.
func HVMParamName(i uint64) string {
	if n, ok := hvmParamNames[i]; ok {
		return n
	}
	return fmt.Sprintf("param%d", i)
}
