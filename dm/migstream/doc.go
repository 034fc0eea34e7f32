// Package migstream is the xl / libxl / libxc migration stream codec and the
// compact migration transport of xen-dm-go.
//
// The device model performs every emulated disk transfer, so it knows which
// guest pages are exact copies of 4 KiB disk blocks (dm/blk's tracker).
// libxc, inside xl, sends guest memory; this package sits in xl's transport
// (`xl migrate -s`) and rewrites every page whose bytes hash to the tracked
// block of its pfn into a PAGE_DATA entry of type XALLOC without data: 8
// bytes instead of 4,104. The result is still a valid stream for stock
// `xl migrate-receive` and Xen's verify-stream-v2; the receiving device model
// fills the XALLOC pages from the shared disk. Reference: the shared
// migration-paging.md §1–§5, §8.
//
// # Stream layers
//
// A migration or `xl save` stream is, in order (Decoder, Encoder):
//
//	xl header (48 bytes, native endian) + optional data (u32 len + JSON config)
//	libxl header (16 bytes, big-endian)
//	libxl records: type u32, body_length u32, body, zero padding to 8
//	  LIBXC_CONTEXT (1)             → the libxc stream follows inline:
//	    libxc image header (24, big-endian) + domain header (16)
//	    libxc records (same framing): X86_CPUID_POLICY, X86_MSR_POLICY,
//	      STATIC_DATA_END, PAGE_DATA…, [VERIFY, PAGE_DATA…], X86_TSC_INFO,
//	      HVM_CONTEXT, HVM_PARAMS, END
//	    (checkpointed streams: after each libxc CHECKPOINT, libxl records up
//	    to CHECKPOINT_END, then libxc again)
//	  [EMULATOR_XENSTORE_DATA (2)], EMULATOR_CONTEXT (3), END (0)
//	migrate only: "domain is yours, you are cleared to unpause\0" (GO)
//
// The back channel (receiver → sender) carries the banner, "domain received,
// ready to unpause\0", "my copy unpause results are as follows\0" + one status
// byte, and on failure the receiver's GO. The transport passes it through
// unchanged and logs what it recognises.
//
// The Decoder checks what libxc, libxl and xl check and what the codec needs:
// magic numbers and versions, big-endian streams (refused), unknown mandatory
// record types, body_length ≤ 128 MiB (REC_LENGTH_MAX, applied to both layers
// and the xl optional data), PAGE_DATA count ≥ 1, pfn entries without reserved
// bits 52–59 or types 5–8, and the exact PAGE_DATA length. Errors are
// *FormatError naming the offset and the record. Reserved fields and padding
// are passed through as they are; Checker adds verify-stream-v2's remaining
// rules (zero padding and reserved fields, per-record sizes, no optional
// records). Re-encoding a decoded stream is byte-for-byte identical.
//
// # Elision
//
// Elider (used by Filter) handles each PAGE_DATA record as follows. With
// ElideOptions.Zero (migrate-send without --no-elide, stream compact), a NOTAB
// entry whose page is all zeros becomes XALLOC (0xE) as a zero reference
// (blk.ZeroRef: the destination writes zeros, reads no disk), tracker or not,
// as QEMU's migration sends zero pages without data. The pfns of the other
// NOTAB entries go to the tracker in one Lookup; the page of each tracked pfn
// is hashed (blk.HashPage, XXH3-64) and compared with the tracked hash; on a
// match the entry becomes XALLOC and its 4096 bytes leave the record
// (rewritten in place, body_length fixed). Everything else passes byte for
// byte, and records without elisions are written from the read buffer as
// they are.
//
// The elided set is exact: it holds the pfns whose last entry in the stream
// was elided, with their (disk, sector, hash) or zero reference. Any later
// entry of the pfn that is not elided, whatever its type, removes it. After a VERIFY record
// the restorer compares pages instead of writing them, so the set no longer
// changes; with Debug (implied by migrate-receive -d in xl's rune) pages after
// VERIFY pass unchanged so every non-elided page is compared byte-exact (the
// restorer then logs mismatches for the elided pfns, which it holds as
// unfilled XALLOC pages); zero pages follow the same rules. Only x86 HVM
// domains are elided. If the tracker fails, disk elision stops (zero pages
// are still elided) and the stream goes on (the set stays exact). If pages were elided and no EMULATOR_CONTEXT follows the last change
// of the set, the transport fails rather than send pages nobody can fill.
//
// # EMULATOR_CONTEXT and the device-state container
//
// The EMULATOR_CONTEXT body is the emulator header (id u32, index u32) and the
// device model's blob, which libxl writes to qemu-resume.<domid> on the
// receiver and hands to the device model (-incoming fd:N). The transport calls
// a RewriteEmulatorContext with the blob and the elided set (sorted by pfn);
// the default is AttachPageRefs, which uses the device state's container
// (dm/devstate: devstate.Parse and devstate.Marshal are the only parser and
// encoder of it; docs/device-state.md). All integers little-endian:
//
//	container = header section* end
//	header    = magic "XDMGSTAT" (8) | version u32 = 1 | flags u32 = 0
//	section   = id [8]byte (ASCII, NUL-padded) | version u32 | flags u32 |
//	            length u64 | body[length] | zero padding to a multiple of 8
//	            flags: bit 0 optional, bit 1 CRC32C (the body ends with the
//	            CRC32C of id, version, flags and payload)
//	end       = a section with id "END", version, flags and length 0; nothing
//	            may follow
//
//	"DMBLOB"   v1: a device-model blob that was not itself a container
//	"PAGEREFS" v1, v2: the page references (the device model writes it empty):
//	   npages u64 | nextents u64 |
//	   extent[nextents] = pfn u64 | sector u64 | count u32 | disk u8 | 0[3]
//	   hash[npages] u64 (XXH3-64 of each page, in extent order)
//	   Extent k covers pfns pfn..pfn+count-1 on sectors sector, sector+8, …
//	   of disk; extents are sorted, non-overlapping; sectors are 512-byte
//	   units, multiples of 8. 8 bytes a page plus 24 an extent.
//	   v2 only: disk 0xff (blk.ZeroDisk) is a zero extent: all-zero pages,
//	   sector 0, every hash blk.ZeroPageHash. A set without zero references
//	   is written as v1 (blk.PageRefsVersionFor).
//
// If the blob is a container, AttachPageRefs checks it (framing, every CRC),
// replaces its PAGEREFS section (or adds one before END) by one with the
// CRC32C flag, and keeps every other section byte for byte. If it is not,
// and pages were elided, the blob becomes container{DMBLOB = blob,
// PAGEREFS}, both without CRC (no device model loads that wrapper; its
// bytes are pinned by tests/testdata/streams); with nothing elided a foreign
// blob (QEMU's) is left alone. PageRefs is the receiving side; it verifies
// the CRCs too.
// References an earlier pass left in PAGEREFS are carried for pfns whose last
// entry arrived as XALLOC (CarriedRefs), so compacting twice is a no-op.
//
// # Commands
//
// SendMain (`xen-dm-go migrate-send`) is what xl runs as its -s transport.
// xl runs "exec <-s value> <host> xl [-t] [-T] [-v…] migrate-receive [-e] [-d]
// [-p]" through sh, or just "<host>" with -s "", with stdin = the stream and
// stdout = the back channel. Usage:
//
//	xl migrate -s "xen-dm-go migrate-send --domid D --ssh ssh --" dom host
//	    runs: ssh host xl … migrate-receive …  (stock receiver)
//	xl migrate -s "xen-dm-go migrate-send --domid D --connect 7000 --" dom host
//	    TCP to host:7000, where "xen-dm-go migrate-receive --listen :7000" runs
//	    xl migrate-receive with the flags of xl's rune (whitelisted)
//	xl migrate -s "xen-dm-go migrate-send --domid D --local --" dom localhost
//	    runs xl … migrate-receive … locally (drops the host)
//	xl migrate -s "" dom "xen-dm-go migrate-send --domid D -- ssh host xl migrate-receive"
//	xl migrate -s "" dom "xen-dm-go migrate-send --domid D --connect host:7000"
//	xl migrate -s "" dom "xen-dm-go migrate-send --domid D -- xl migrate-receive"
//
// Flags: --domid D (tracker socket blk.TrackerSocketPath(--run-dir, D),
// --run-dir default /var/run/xen) or --tracker PATH; without a reachable
// tracker nothing is elided, not even all-zero pages (the tracker is what
// says the destination's device model is xen-dm-go, the only one that fills
// elided pages), and --require-tracker makes that an error; --no-elide
// (nothing elided: the stream stock xl sends, counted);
// --raw (byte copy, no parsing: the baseline); --debug; --rate RATE (link
// emulation: 125M, 1Gbit, 10MiB/s); --progress 1s (0: off).
//
// ReceiveMain (`xen-dm-go migrate-receive`):
//
//	xen-dm-go migrate-receive --listen [HOST]:PORT [--xl xl] [--check] [--accept-timeout D]
//	xen-dm-go migrate-receive [--check] [-- COMMAND ARGS…]   (link on stdin/stdout)
//
// It runs xl migrate-receive with the stream on its stdin and its stdout as
// the back channel, and exits with its status. --check applies the
// verifier's rules to the incoming stream and aborts on a violation. The TCP
// link is not authenticated (trusted migration network; otherwise --ssh).
//
// StreamMain (`xen-dm-go stream …`) works on files ("-" for stdio):
//
//	xen-dm-go stream compact [--tracker SOCK | --domid D] [--debug] [--check] IN OUT
//	xen-dm-go stream inspect [-v] FILE
//	xen-dm-go stream verify FILE
//
// All commands print progress lines on stderr (migrate-send: every second)
// and end with one JSON line on stderr (StatsLine): bytes in/out, records,
// pages, pages elided (pages_elided = pages_elided_disk + pages_elided_zero),
// the final elided set (elided_final = elided_final_disk +
// elided_final_zero), tracker hits and hash mismatches, rates, the child's
// exit code and the error.
//
// # Testing
//
// streamtest generates synthetic HVM streams and a fake tracker. Fuzz
// targets: FuzzXLHeader, FuzzLibxlRecord, FuzzLibxcRecord, FuzzPageData,
// FuzzStream, FuzzContainer; run them with a short minimisation time, as the
// inputs carry 4 KiB pages:
//
//	go test ./dm/migstream -run '^$' -fuzz FuzzStream -fuzztime 30s -fuzzminimizetime 2s
//
// Captured `xl save` files in tests/testdata/captured are round-tripped when
// present. BenchmarkFilter measures the codec on one core in memory.
package migstream
