package config

import (
	"fmt"
	"strconv"
	"strings"
)

// Opt is one key=value item of a QEMU option string.
type Opt struct {
	Key, Value string
}

// Opts is a parsed QEMU option string ("xenfv,suppress-vmdesc=on"): the
// items in the order given. It mirrors util/qemu-option.c's
// opts_do_parse: items are separated by ',', a ",," inside a value is a
// literal comma, and the first item may omit its key ("implied" key, e.g.
// the machine type of -machine or the backend of -chardev). A later key
// overrides an earlier one (Get returns the last).
type Opts []Opt

// ParseOpts parses s. implied names the key of a first item written without
// "key=" (empty: no implied key, and a bare "flag" means flag=on, as QEMU
// does for boolean options).
func ParseOpts(s, implied string) (Opts, error) {
	var out Opts
	first := true
	for i := 0; i < len(s); {
		// Name: up to '=' or ','. QEMU does not unescape ",," in names.
		j := i
		for j < len(s) && s[j] != '=' && s[j] != ',' {
			j++
		}
		name := s[i:j]
		if j < len(s) && s[j] == '=' {
			val, next := optValue(s, j+1)
			if name == "" {
				return nil, fmt.Errorf("option string %q: empty parameter name before '='", s)
			}
			out = append(out, Opt{name, val})
			i = next
		} else if first && implied != "" {
			// The implied key's value may contain ",," escapes too.
			val, next := optValue(s, i)
			out = append(out, Opt{implied, val})
			i = next
		} else {
			if name == "" {
				return nil, fmt.Errorf("option string %q: empty parameter", s)
			}
			out = append(out, Opt{name, "on"})
			i = j + 1
		}
		first = false
	}
	return out, nil
}

// optValue reads a value starting at s[i] up to an unescaped ',' and returns
// it with ",," collapsed, and the index after the terminating ','.
func optValue(s string, i int) (string, int) {
	var b strings.Builder
	for i < len(s) {
		c := s[i]
		if c == ',' {
			if i+1 < len(s) && s[i+1] == ',' {
				b.WriteByte(',')
				i += 2
				continue
			}
			return b.String(), i + 1
		}
		b.WriteByte(c)
		i++
	}
	return b.String(), i
}

// Get returns the value of the last item named key.
func (o Opts) Get(key string) (string, bool) {
	for i := len(o) - 1; i >= 0; i-- {
		if o[i].Key == key {
			return o[i].Value, true
		}
	}
	return "", false
}

// String returns the value of key, or "".
func (o Opts) String(key string) string {
	v, _ := o.Get(key)
	return v
}

// Has reports whether key is present.
func (o Opts) Has(key string) bool {
	_, ok := o.Get(key)
	return ok
}

// Bool parses key as a QEMU boolean (on/off, yes/no, true/false); def when
// absent.
func (o Opts) Bool(key string, def bool) (bool, error) {
	v, ok := o.Get(key)
	if !ok {
		return def, nil
	}
	return parseBool(key, v)
}

func parseBool(key, v string) (bool, error) {
	switch v {
	case "on", "yes", "true", "y":
		return true, nil
	case "off", "no", "false", "n":
		return false, nil
	}
	return false, fmt.Errorf("parameter %q expects 'on' or 'off', got %q", key, v)
}

// Keys lists the distinct keys in first-seen order.
func (o Opts) Keys() []string {
	var ks []string
	seen := map[string]bool{}
	for _, it := range o {
		if !seen[it.Key] {
			seen[it.Key] = true
			ks = append(ks, it.Key)
		}
	}
	return ks
}

// Encode formats the options back into QEMU syntax (commas in values doubled).
func (o Opts) Encode() string {
	parts := make([]string, len(o))
	for i, it := range o {
		parts[i] = it.Key + "=" + strings.ReplaceAll(it.Value, ",", ",,")
	}
	return strings.Join(parts, ",")
}

// ParseSize parses a QEMU size ("120", "512M", "4G", "0x1000"); unit is the
// multiplier for a bare number (1 for bytes, 1<<20 for -m).
func ParseSize(s string, unit uint64) (uint64, error) {
	if s == "" {
		return 0, fmt.Errorf("empty size")
	}
	mult := unit
	num := s
	switch last := s[len(s)-1]; last {
	case 'b', 'B':
		mult, num = 1, s[:len(s)-1]
	case 'k', 'K':
		mult, num = 1<<10, s[:len(s)-1]
	case 'm', 'M':
		mult, num = 1<<20, s[:len(s)-1]
	case 'g', 'G':
		mult, num = 1<<30, s[:len(s)-1]
	case 't', 'T':
		mult, num = 1<<40, s[:len(s)-1]
	}
	n, err := strconv.ParseUint(num, 0, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	if n != 0 && n*mult/mult != n {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return n * mult, nil
}
