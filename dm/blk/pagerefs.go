package blk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The PAGEREFS section: the guest pages whose last copy in the libxc stream
// was elided (sent as XALLOC, no data), each with the 4 KiB disk block that
// holds its contents, or, from version 2, marked as an all-zero page (a zero
// reference: no disk). The destination must fill them before the guest
// runs. The migration transport writes this section (dm/migstream
// AttachPageRefs) and the device state (dm/devstate) carries it; the device
// model writes it empty. Both use this one codec. Layout (little-endian):
//
//	npages u64 | nextents u64 |
//	extent[nextents] = pfn u64 | sector u64 | count u32 | disk u8 | 0[3]
//	hash[npages] u64    XXH3-64 of each page (HashPage), in extent order
//
// Extent k covers pfns pfn…pfn+count−1 on sectors sector, sector+8, … of
// disk (the IDE index); extents are sorted by pfn and do not overlap;
// sectors are 512-byte units and multiples of 8. The Gen of an Entry is
// not carried (decodes as 0).
//
// Version 2 adds zero references: an extent whose disk is ZeroDisk (0xff)
// covers pfns pfn…pfn+count−1 that are all-zero pages; its sector is 0 and
// every one of its hashes is ZeroPageHash (anything else is refused). The
// layout is otherwise version 1's, and a writer uses version 1 for a set
// without zero references (PageRefsVersionFor), so older readers keep
// reading what they could read before; a set with zero references is
// version 2, which a version-1 reader refuses as a section version it does
// not know instead of taking disk 0xff for a drive.

// PAGEREFS section versions this build reads (PageRefsMinVersion …
// PageRefsVersion) and writes (PageRefsVersionFor).
const (
	PageRefsVersion    = 2 // zero references (ZeroDisk)
	PageRefsMinVersion = 1 // disk references only
)

// ZeroDisk is the Disk of a zero reference: the page is all zeros and comes
// from no disk. It is the largest disk number the codec can carry (a u8);
// the tracker's disks have 7 bits and IDE indices are 0–3, so no disk has
// it. A zero reference has Sector 0 and Hash ZeroPageHash (ZeroRef).
const ZeroDisk = math.MaxUint8

// ZeroPageHash is HashPage of a 4 KiB all-zero page.
const ZeroPageHash = 0x93d76fe148c689ba

// ZeroRef is the reference of an all-zero page.
func ZeroRef() Ref { return Ref{Disk: ZeroDisk, Hash: ZeroPageHash} }

// IsZeroPage reports whether r is a zero reference (no disk block: the page
// is all zeros).
func (r Ref) IsZeroPage() bool { return r.Disk == ZeroDisk }

// PageRefsVersionFor is the section version to write refs in: the oldest
// that can carry them (1 without zero references, 2 with).
func PageRefsVersionFor(refs []Entry) uint32 {
	for _, r := range refs {
		if r.IsZeroPage() {
			return PageRefsVersion
		}
	}
	return PageRefsMinVersion
}

// MaxPFN is the largest pfn a reference may name (libxc's 52-bit pfn field).
const MaxPFN = uint64(1)<<52 - 1

const extentSize = 24

// EncodePageRefs encodes a PAGEREFS body (of the version
// PageRefsVersionFor(refs)). refs must be sorted by pfn without duplicates;
// a zero reference must be exactly ZeroRef (Gen aside). Runs of consecutive
// pfns on consecutive blocks of one disk, and runs of consecutive zero
// pfns, become one extent.
func EncodePageRefs(refs []Entry) ([]byte, error) {
	type extent struct {
		pfn, sector uint64
		count       uint32
		disk        uint8
	}
	var ext []extent
	for i, r := range refs {
		if i > 0 && r.PFN <= refs[i-1].PFN {
			return nil, fmt.Errorf("page references: pfn %#x after %#x (must be strictly increasing)", r.PFN, refs[i-1].PFN)
		}
		if r.PFN > MaxPFN || r.Sector%8 != 0 || r.Sector > math.MaxUint64-8 {
			return nil, fmt.Errorf("page references: bad entry pfn %#x disk %d sector %d", r.PFN, r.Disk, r.Sector)
		}
		zero := r.IsZeroPage()
		if zero && (r.Sector != 0 || r.Hash != ZeroPageHash) {
			return nil, fmt.Errorf("page references: zero reference pfn %#x with sector %d and hash %#016x (want 0 and %#016x)",
				r.PFN, r.Sector, r.Hash, uint64(ZeroPageHash))
		}
		if k := len(ext) - 1; k >= 0 {
			e := &ext[k]
			next := e.sector + 8*uint64(e.count)
			if zero {
				next = 0
			}
			if e.disk == r.Disk && e.pfn+uint64(e.count) == r.PFN && next == r.Sector && e.count < math.MaxUint32 {
				e.count++
				continue
			}
		}
		ext = append(ext, extent{pfn: r.PFN, sector: r.Sector, count: 1, disk: r.Disk})
	}
	le := binary.LittleEndian
	b := make([]byte, 0, 16+extentSize*len(ext)+8*len(refs))
	b = le.AppendUint64(b, uint64(len(refs)))
	b = le.AppendUint64(b, uint64(len(ext)))
	for _, e := range ext {
		b = le.AppendUint64(b, e.pfn)
		b = le.AppendUint64(b, e.sector)
		b = le.AppendUint32(b, e.count)
		b = append(b, e.disk, 0, 0, 0)
	}
	for _, r := range refs {
		b = le.AppendUint64(b, r.Hash)
	}
	return b, nil
}

// DecodePageRefsVersion decodes a PAGEREFS body of the given section
// version: PageRefsMinVersion … PageRefsVersion; a version-1 body may not
// carry zero references.
func DecodePageRefsVersion(version uint32, body []byte) ([]Entry, error) {
	if version < PageRefsMinVersion || version > PageRefsVersion {
		return nil, fmt.Errorf("page references: section version %d not supported (this build reads %d–%d)",
			version, PageRefsMinVersion, PageRefsVersion)
	}
	refs, err := DecodePageRefs(body)
	if err != nil {
		return nil, err
	}
	if version < PageRefsVersion {
		for _, r := range refs {
			if r.IsZeroPage() {
				return nil, fmt.Errorf("page references: pfn %#x names disk %d, reserved for zero references, in a version %d section (zero references need version %d)",
					r.PFN, r.Disk, version, PageRefsVersion)
			}
		}
	}
	return refs, nil
}

// DecodePageRefs decodes a PAGEREFS body of the newest version
// (PageRefsVersion: zero references allowed).
func DecodePageRefs(body []byte) ([]Entry, error) {
	le := binary.LittleEndian
	if len(body) < 16 {
		return nil, errors.New("page references: truncated header")
	}
	npages, next := le.Uint64(body), le.Uint64(body[8:])
	rest := uint64(len(body) - 16)
	if next > rest/extentSize || npages > rest/8 || next*extentSize+npages*8 != rest {
		return nil, fmt.Errorf("page references: %d pages in %d extents do not fill the %d bytes of the body (need %d×%d + %d×8 bytes)",
			npages, next, rest, next, extentSize, npages)
	}
	refs := make([]Entry, 0, npages)
	var end uint64 // first pfn after the previous extent
	p := body[16:]
	for i := uint64(0); i < next; i++ {
		e := p[i*extentSize:]
		pfn, sector, count, disk := le.Uint64(e), le.Uint64(e[8:]), le.Uint32(e[16:]), e[20]
		switch {
		case e[21] != 0 || e[22] != 0 || e[23] != 0:
			return nil, fmt.Errorf("page references: extent %d: reserved bytes set", i)
		case count == 0:
			return nil, fmt.Errorf("page references: extent %d: count 0", i)
		case i > 0 && pfn < end:
			return nil, fmt.Errorf("page references: extent %d: pfn %#x overlaps or precedes the previous extent", i, pfn)
		case pfn > MaxPFN || uint64(count) > MaxPFN+1-pfn:
			return nil, fmt.Errorf("page references: extent %d: pfn %#x+%d out of range", i, pfn, count)
		case disk == ZeroDisk && sector != 0:
			return nil, fmt.Errorf("page references: extent %d: zero extent (disk %d) at pfn %#x with sector %d, want 0", i, disk, pfn, sector)
		case sector%8 != 0 || sector > math.MaxUint64-8*uint64(count):
			return nil, fmt.Errorf("page references: extent %d: bad sector %d", i, sector)
		case uint64(len(refs))+uint64(count) > npages:
			return nil, fmt.Errorf("page references: extents hold more than %d pages", npages)
		}
		step := uint64(8)
		if disk == ZeroDisk {
			step = 0
		}
		for k := uint64(0); k < uint64(count); k++ {
			refs = append(refs, Entry{PFN: pfn + k, Ref: Ref{Disk: disk, Sector: sector + step*k}})
		}
		end = pfn + uint64(count)
	}
	if uint64(len(refs)) != npages {
		return nil, fmt.Errorf("page references: extents hold %d pages, header says %d", len(refs), npages)
	}
	h := p[next*extentSize:]
	for i := range refs {
		r := &refs[i]
		r.Hash = le.Uint64(h[8*i:])
		if r.IsZeroPage() && r.Hash != ZeroPageHash {
			return nil, fmt.Errorf("page references: pfn %#x: zero reference with hash %#016x (a zero page hashes to %#016x)",
				r.PFN, r.Hash, uint64(ZeroPageHash))
		}
	}
	return refs, nil
}
