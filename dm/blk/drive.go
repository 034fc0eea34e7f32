package blk

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Media is what a drive presents to the guest (-drive media=).
type Media string

const (
	MediaDisk  Media = "disk"
	MediaCDROM Media = "cdrom"
)

// CacheMode is -drive cache=: how a raw image is opened and what Flush costs.
// The names and meanings are QEMU's (qemu-options.hx, "cache="):
//
//	mode          host page cache   O_DSYNC   flush
//	writeback     yes               no        fdatasync   (default)
//	none          no (O_DIRECT)     no        fdatasync
//	writethrough  yes               yes       fdatasync
//	directsync    no (O_DIRECT)     yes       fdatasync
//	unsafe        yes               no        nothing
type CacheMode uint8

const (
	CacheWriteback CacheMode = iota
	CacheNone
	CacheWritethrough
	CacheDirectSync
	CacheUnsafe
)

var cacheNames = [...]string{
	CacheWriteback:    "writeback",
	CacheNone:         "none",
	CacheWritethrough: "writethrough",
	CacheDirectSync:   "directsync",
	CacheUnsafe:       "unsafe",
}

func (m CacheMode) String() string {
	if int(m) < len(cacheNames) {
		return cacheNames[m]
	}
	return fmt.Sprintf("CacheMode(%d)", uint8(m))
}

// Direct reports whether the mode bypasses the host page cache (O_DIRECT).
func (m CacheMode) Direct() bool { return m == CacheNone || m == CacheDirectSync }

// Sync reports whether every write is synchronous (O_DSYNC).
func (m CacheMode) Sync() bool { return m == CacheWritethrough || m == CacheDirectSync }

// WriteCache reports whether the guest sees a volatile write cache (IDENTIFY
// word 85 bit 5), as QEMU's blk_enable_write_cache: on unless every write is
// synchronous anyway.
func (m CacheMode) WriteCache() bool { return !m.Sync() }

// ParseCacheMode parses a cache= value. "off" is QEMU's alias of "none".
func ParseCacheMode(s string) (CacheMode, error) {
	if s == "off" {
		return CacheNone, nil
	}
	for i, n := range cacheNames {
		if n == s {
			return CacheMode(i), nil
		}
	}
	return 0, fmt.Errorf("invalid cache mode %q (want writeback, none, writethrough, directsync or unsafe)", s)
}

// DriveSpec is one parsed -drive option (libxl rows 34/34' of the interface
// reference):
//
//	file=<path>,if=ide,index=<n>,media=disk,format=raw,cache=writeback
//	if=none,readonly=on,id=ide-<devno>[,file=<path>,format=<fmt>]
type DriveSpec struct {
	File     string    // image path; empty for an empty CD-ROM drive
	If       string    // "ide" (QEMU's default) or "none" (attached by -device ide-cd)
	Index    int       // 0–3 for if=ide (ide.(n/2) unit n%2); -1 when not given
	Media    Media     // MediaDisk unless media=cdrom
	Format   string    // always "raw" after a successful parse
	Cache    CacheMode // CacheWriteback unless cache= says otherwise
	ReadOnly bool      // readonly=on, or implied by media=cdrom
	ID       string    // id=, used by -device drive= and the QMP eject commands
	Serial   string    // serial=, reported by IDENTIFY; empty for the default
}

// driveKeys are the -drive sub-options this device model understands.
var driveKeys = []string{"file", "if", "index", "bus", "unit", "media", "format", "cache", "readonly", "id", "serial"}

// MaxIDEIndex is the number of IDE units: two channels of master and slave.
const MaxIDEIndex = 4

// ParseDrive parses the argument of one -drive option.
func ParseDrive(arg string) (DriveSpec, error) {
	opts, err := SplitOptions(arg)
	if err != nil {
		return DriveSpec{}, fmt.Errorf("-drive %q: %w", arg, err)
	}
	d := DriveSpec{If: "ide", Index: -1, Media: MediaDisk, Format: "raw", Cache: CacheWriteback}
	var unknown []string
	bus, unit := -1, -1
	for _, o := range opts {
		var perr error
		switch o.Key {
		case "file":
			d.File = o.Value
		case "if":
			d.If = o.Value
		case "index":
			d.Index, perr = parseSmallInt(o.Value)
		case "bus":
			bus, perr = parseSmallInt(o.Value)
		case "unit":
			unit, perr = parseSmallInt(o.Value)
		case "media":
			switch Media(o.Value) {
			case MediaDisk, MediaCDROM:
				d.Media = Media(o.Value)
			default:
				perr = fmt.Errorf("want disk or cdrom")
			}
		case "format":
			d.Format = o.Value
		case "cache":
			d.Cache, perr = ParseCacheMode(o.Value)
		case "readonly":
			d.ReadOnly, perr = parseBool(o.Value)
		case "id":
			d.ID = o.Value
		case "serial":
			d.Serial = o.Value
		default:
			unknown = append(unknown, o.Key)
		}
		if perr != nil {
			return DriveSpec{}, fmt.Errorf("-drive %q: invalid %s=%q: %w", arg, o.Key, o.Value, perr)
		}
	}
	if len(unknown) > 0 {
		return DriveSpec{}, fmt.Errorf("-drive %q: unknown option(s) %s (known: %s)",
			arg, strings.Join(unknown, ", "), strings.Join(driveKeys, ", "))
	}
	if err := d.validate(bus, unit); err != nil {
		return DriveSpec{}, fmt.Errorf("-drive %q: %w", arg, err)
	}
	return d, nil
}

func (d *DriveSpec) validate(bus, unit int) error {
	switch d.Format {
	case "raw":
	case "":
		d.Format = "raw"
	default:
		return fmt.Errorf("format=%s: %w (this device model reads raw images only; convert with qemu-img convert -O raw)",
			d.Format, ErrUnsupportedFormat)
	}
	switch d.If {
	case "ide", "none":
	default:
		return fmt.Errorf("if=%s is not supported (only if=ide and if=none)", d.If)
	}
	if bus >= 0 || unit >= 0 {
		if d.Index >= 0 {
			return errors.New("index= cannot be combined with bus= or unit=")
		}
		if bus < 0 {
			bus = 0
		}
		if unit < 0 {
			unit = 0
		}
		if bus > 1 || unit > 1 {
			return fmt.Errorf("bus=%d,unit=%d is not an IDE unit (bus 0–1, unit 0–1)", bus, unit)
		}
		d.Index = bus*2 + unit
	}
	if d.If == "ide" && d.Index >= MaxIDEIndex {
		return fmt.Errorf("index=%d is out of range: IDE has units 0–%d", d.Index, MaxIDEIndex-1)
	}
	if d.Media == MediaCDROM {
		d.ReadOnly = true // as QEMU's drive_new: CD-ROMs are read-only
	}
	if d.File == "" && d.Media == MediaDisk && d.If == "ide" {
		return errors.New("a disk needs file=")
	}
	return nil
}

func parseSmallInt(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 1<<16 {
		return 0, fmt.Errorf("want a small non-negative integer")
	}
	return n, nil
}

// parseBool accepts QEMU's spellings (qapi_bool_parse).
func parseBool(s string) (bool, error) {
	switch s {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, fmt.Errorf("want on or off")
}

// Option is one key=value item of a QEMU option string.
type Option struct{ Key, Value string }

// SplitOptions splits a QEMU option string ("a=1,b=x,,y") into its items, in
// order. In values, ",," stands for a literal comma (QEMU's get_opt_value). A
// bare key without "=" means key=on, as QEMU allows for booleans.
func SplitOptions(s string) ([]Option, error) {
	var out []Option
	for i := 0; i < len(s); {
		// Key: up to '=' or ','.
		j := i
		for j < len(s) && s[j] != '=' && s[j] != ',' {
			j++
		}
		key := s[i:j]
		if key == "" {
			return nil, fmt.Errorf("empty option name at byte %d", i)
		}
		if j == len(s) || s[j] == ',' {
			out = append(out, Option{Key: key, Value: "on"})
			i = j + 1
			if j == len(s)-1 {
				return nil, fmt.Errorf("trailing comma")
			}
			continue
		}
		// Value: up to a single ',' (",," is an escaped comma).
		var v strings.Builder
		k := j + 1
		for k < len(s) {
			if s[k] == ',' {
				if k+1 < len(s) && s[k+1] == ',' {
					v.WriteByte(',')
					k += 2
					continue
				}
				break
			}
			v.WriteByte(s[k])
			k++
		}
		out = append(out, Option{Key: key, Value: v.String()})
		if k < len(s) && k == len(s)-1 {
			return nil, fmt.Errorf("trailing comma")
		}
		i = k + 1
	}
	if len(out) == 0 {
		return nil, errors.New("empty option string")
	}
	return out, nil
}

// String renders the spec back as a -drive argument (with ",," escapes), for
// logs and tests.
func (d DriveSpec) String() string {
	esc := func(s string) string { return strings.ReplaceAll(s, ",", ",,") }
	var parts []string
	if d.File != "" {
		parts = append(parts, "file="+esc(d.File))
	}
	parts = append(parts, "if="+d.If)
	if d.Index >= 0 {
		parts = append(parts, "index="+strconv.Itoa(d.Index))
	}
	parts = append(parts, "media="+string(d.Media), "format="+d.Format, "cache="+d.Cache.String())
	if d.ReadOnly {
		parts = append(parts, "readonly=on")
	}
	if d.ID != "" {
		parts = append(parts, "id="+esc(d.ID))
	}
	if d.Serial != "" {
		parts = append(parts, "serial="+esc(d.Serial))
	}
	return strings.Join(parts, ",")
}
