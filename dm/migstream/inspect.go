package migstream

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/u-root/uio/uio"

	"github.com/xen-dm-go/xen-dm-go/dm/blk"
	"github.com/xen-dm-go/xen-dm-go/dm/devstate"
)

// Inspect prints the items of a stream and a summary to w. PAGE_DATA records
// in a row are printed as one line unless verbose.
func Inspect(w io.Writer, r io.Reader, verbose bool) error {
	d := NewDecoder(r)
	var chk Checker
	var run struct {
		n, pages, data int
		off            int64
		bytes          int64
		types          [16]int
	}
	flush := func() {
		if run.n == 0 {
			return
		}
		fmt.Fprintf(w, "%#010x  libxc PAGE_DATA ×%d: %d entries (%s), %d data pages, %s\n",
			run.off, run.n, run.pages, typeCounts(run.types[:]), run.data, human(run.bytes))
		run.n, run.pages, run.data, run.bytes, run.types = 0, 0, 0, 0, [16]int{}
	}
	var verr error
	for {
		it, err := d.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			flush()
			return err
		}
		if verr == nil {
			verr = chk.Check(it)
		}
		if it.IsLibxc(LibxcPageData) {
			if run.n == 0 {
				run.off = it.Offset
			}
			run.n++
			run.pages += len(it.Pages.Entries)
			run.data += it.Pages.DataPages
			run.bytes += int64(len(it.Raw))
			for _, e := range it.Pages.Entries {
				run.types[e.Type()]++
			}
			if verbose {
				flush()
			}
			continue
		}
		flush()
		fmt.Fprintf(w, "%#010x  %s\n", it.Offset, describe(it))
	}
	flush()
	s := chk.Summary
	fmt.Fprintf(w, "summary: %s, libxl records %d, libxc records %d (v%d, %s), PAGE_DATA %d: %d entries (%s), %d data pages, device-model blob %s\n",
		human(s.Bytes), s.LibxlRecords, s.LibxcRecords, s.LibxcVersion, DomainTypeName(s.DomainType),
		s.PageRecords, s.Pages, typeCounts(s.PagesByType[:]), s.DataPages, human(int64(s.EmulatorBytes)))
	if verr != nil {
		fmt.Fprintf(w, "verify-stream-v2 rules: FAIL: %v\n", verr)
		return verr
	}
	fmt.Fprintf(w, "verify-stream-v2 rules: ok\n")
	return nil
}

func typeCounts(c []int) string {
	var parts []string
	for t, n := range c {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", PageType(t), n))
		}
	}
	return strings.Join(parts, ", ")
}

func describe(it *Item) string {
	b := it.Rec.Body
	switch it.Kind {
	case KindXLHeader:
		h := &it.XL
		s := fmt.Sprintf("xl header: mandatory %#x, optional %#x, optional data %d bytes", h.Mandatory, h.Optional, h.OptLen)
		if cfg := h.Config(); cfg != nil {
			var c struct {
				CInfo struct{ Name, Type string } `json:"c_info"`
			}
			if json.Unmarshal(cfg, &c) == nil {
				s += fmt.Sprintf(", config %d bytes (name %q, type %q)", len(cfg), c.CInfo.Name, c.CInfo.Type)
			}
		}
		return s
	case KindLibxlHeader:
		return fmt.Sprintf("libxl header: version %d, options %#x", it.Libxl.Version, it.Libxl.Options)
	case KindLibxcHeader:
		h := &it.Libxc
		return fmt.Sprintf("libxc header: version %d, %s, page shift %d, Xen %d.%d", h.Version, DomainTypeName(h.DomainType), h.PageShift, h.XenMajor, h.XenMinor)
	case KindMessage:
		return "message: " + MessageName(it.Msg)
	}
	s := it.Name()
	l := uio.NewLittleEndianBuffer(b)
	switch {
	case it.IsLibxc(LibxcX86TSCInfo):
		var t TSCInfo
		if t.Unmarshal(l) == nil {
			s += fmt.Sprintf(": mode %d, %d kHz, %d ns, incarnation %d", t.Mode, t.KHz, t.Nsec, t.Incarnation)
		}
	case it.IsLibxc(LibxcHVMParams):
		var p HVMParams
		if p.Unmarshal(l) == nil {
			var kv []string
			for _, e := range p.Params {
				kv = append(kv, fmt.Sprintf("%s=%#x", HVMParamName(e.Index), e.Value))
			}
			s += ": " + strings.Join(kv, " ")
		}
	case it.IsLibxc(LibxcX86CPUIDPolicy):
		s += fmt.Sprintf(": %d leaves", len(b)/24)
	case it.IsLibxc(LibxcX86MSRPolicy):
		s += fmt.Sprintf(": %d MSRs", len(b)/16)
	case it.IsLibxl(LibxlEmulatorContext), it.IsLibxl(LibxlEmulatorXenstoreData):
		h, blob, err := ParseEmulatorBody(b)
		if err == nil {
			s += fmt.Sprintf(": emulator %d, index %d, %d bytes", h.ID, h.Index, len(blob))
			if it.IsLibxl(LibxlEmulatorContext) && IsContainer(blob) {
				s += ", " + describeContainer(blob)
			}
		}
	default:
		if len(b) > 0 {
			s += fmt.Sprintf(": %d bytes", len(b))
		}
	}
	return s
}

func describeContainer(blob []byte) string {
	secs, err := devstate.Parse(blob)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, sec := range secs {
		crc := ""
		if sec.Flags&devstate.FlagCRC32C != 0 {
			crc = " crc32c"
		}
		p := fmt.Sprintf("%s v%d%s %d bytes", sec.ID, sec.Version, crc, len(sec.Payload))
		if sec.ID == SectionPageRefs {
			if refs, err := blk.DecodePageRefsVersion(sec.Version, sec.Payload); err == nil {
				zero := 0
				for _, r := range refs {
					if r.IsZeroPage() {
						zero++
					}
				}
				p = fmt.Sprintf("%s v%d%s: %d page references (%d disk, %d zero)", sec.ID, sec.Version, crc, len(refs), len(refs)-zero, zero)
			} else {
				p += ": " + err.Error()
			}
		}
		parts = append(parts, p)
	}
	return fmt.Sprintf("container v%d [%s]", devstate.ContainerVersion, strings.Join(parts, "; "))
}

const streamUsage = `usage: xen-dm-go stream compact [--tracker SOCK | --domid D] [--debug] [--check] IN OUT
       xen-dm-go stream inspect [-v] FILE
       xen-dm-go stream verify FILE
IN, OUT and FILE may be "-" for stdin/stdout. compact rewrites an xl save file
(or any xl/libxl/libxc stream) as migrate-send does (tracked disk copies and,
with a tracker, all-zero pages become data-less XALLOC entries); verify applies the rules of
Xen's verify-stream-v2 (exit status 1 on a violation).
`

// StreamMain is `xen-dm-go stream …`. It returns the exit status.
func StreamMain(args []string, stdin io.Reader, stdout io.Writer, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, streamUsage)
		return 2
	}
	sub := args[0]
	lg := &logger{w: stderr, prefix: "xen-dm-go stream " + sub + ": "}
	fs := flag.NewFlagSet("stream "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, streamUsage, "\nflags:\n"); fs.PrintDefaults() }
	trackerPath := fs.String("tracker", "", "tracker socket `path` (compact)")
	domid := fs.Int("domid", -1, "domain id of the tracker socket in --run-dir (compact)")
	runDir := fs.String("run-dir", DefaultRunDir, "directory of the tracker socket (compact)")
	debug := fs.Bool("debug", false, "pass pages unchanged after VERIFY (compact)")
	check := fs.Bool("check", false, "apply verify-stream-v2's rules while compacting")
	verbose := fs.Bool("v", false, "one line per PAGE_DATA record (inspect)")
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	open := func(name string) (io.Reader, func(), error) {
		if name == "-" {
			return stdin, func() {}, nil
		}
		f, err := os.Open(name)
		if err != nil {
			return nil, nil, err
		}
		return f, func() { f.Close() }, nil
	}
	switch sub {
	case "inspect", "verify":
		if len(pos) != 1 {
			fs.Usage()
			return 2
		}
		r, done, err := open(pos[0])
		if err != nil {
			lg.Printf("%v", err)
			return 1
		}
		defer done()
		if sub == "inspect" {
			if err := Inspect(stdout, r, *verbose); err != nil {
				lg.Printf("%v", err)
				return 1
			}
			return 0
		}
		s, err := Verify(r)
		if err != nil {
			lg.Printf("%v", err)
			return 1
		}
		fmt.Fprintf(stdout, "ok: %s, %d libxl and %d libxc records, %d pages\n", human(s.Bytes), s.LibxlRecords, s.LibxcRecords, s.Pages)
		return 0
	case "compact":
		if len(pos) != 2 {
			fs.Usage()
			return 2
		}
		path := *trackerPath
		if path == "" && *domid >= 0 {
			path = blk.TrackerSocketPath(*runDir, uint32(*domid))
		}
		if path == "" {
			lg.Printf("need --tracker or --domid")
			return 2
		}
		tc, err := blk.DialTracker(path)
		if err != nil {
			lg.Printf("%v", err)
			return 1
		}
		defer tc.Close()
		r, done, err := open(pos[0])
		if err != nil {
			lg.Printf("%v", err)
			return 1
		}
		defer done()
		var w io.Writer = stdout
		var f *os.File
		if in, ok := r.(*os.File); ok && pos[1] != "-" {
			if a, err1 := in.Stat(); err1 == nil {
				if b, err2 := os.Stat(pos[1]); err2 == nil && os.SameFile(a, b) {
					lg.Printf("IN and OUT are the same file")
					return 2
				}
			}
		}
		if pos[1] != "-" {
			if f, err = os.Create(pos[1]); err != nil {
				lg.Printf("%v", err)
				return 1
			}
			w = f
		}
		st := new(Stats)
		start := time.Now()
		_, err = Filter(w, r, FilterOptions{Check: *check, ElideOptions: ElideOptions{Tracker: tc, Zero: tc != nil, Debug: *debug, Stats: st, Logf: lg.Printf}})
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		sl := statsLine("stream compact", st, time.Since(start))
		sl.Tracker = path
		if err != nil {
			sl.Error = err.Error()
			lg.Printf("%v", err)
		}
		sl.OK = err == nil
		sl.write(stderr)
		if err != nil {
			return 1
		}
		return 0
	}
	fmt.Fprint(stderr, streamUsage)
	return 2
}

// parseInterspersed parses flags that may follow positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
