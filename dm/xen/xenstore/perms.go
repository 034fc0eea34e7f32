package xenstore

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Access is the letter of a xenstore permission string
// (docs/misc/xenstore.txt, GET_PERMS/SET_PERMS; libxenstore's
// xs_perm_to_string).
type Access byte

// The four access letters.
const (
	AccessNone  Access = 'n' // XS_PERM_NONE
	AccessRead  Access = 'r' // XS_PERM_READ
	AccessWrite Access = 'w' // XS_PERM_WRITE
	AccessBoth  Access = 'b' // XS_PERM_READ|XS_PERM_WRITE
)

// CanRead reports whether a grants read access.
func (a Access) CanRead() bool { return a == AccessRead || a == AccessBoth }

// CanWrite reports whether a grants write access.
func (a Access) CanWrite() bool { return a == AccessWrite || a == AccessBoth }

func (a Access) valid() bool {
	return a == AccessNone || a == AccessRead || a == AccessWrite || a == AccessBoth
}

// Perm is one entry of a node's permission list, struct xs_permissions in
// libxenstore, written on the wire as "<letter><domid>", e.g. "r5".
//
// In a list, the first entry names the node's owner (who always has full
// access) and its Access is the default for every domain not listed; the
// following entries grant Access to one domain each.
type Perm struct {
	Domid  uint16 // domid_t
	Access Access
}

// String returns the wire form, e.g. "b0".
func (p Perm) String() string {
	return string(rune(p.Access)) + strconv.FormatUint(uint64(p.Domid), 10)
}

// ParsePerm parses the wire form "<n|r|w|b><domid>".
func ParsePerm(s string) (Perm, error) {
	if len(s) < 2 {
		return Perm{}, fmt.Errorf("%w: bad permission %q", ErrInvalid, s)
	}
	a := Access(s[0])
	if !a.valid() {
		return Perm{}, fmt.Errorf("%w: bad permission %q: access letter must be one of n, r, w, b", ErrInvalid, s)
	}
	d, err := strconv.ParseUint(s[1:], 10, 16)
	if err != nil {
		return Perm{}, fmt.Errorf("%w: bad permission %q: domid: %v", ErrInvalid, s, err)
	}
	return Perm{Domid: uint16(d), Access: a}, nil
}

// FormatPerms returns perms in the usual human form, e.g. "n0,r5".
func FormatPerms(perms []Perm) string {
	s := make([]string, len(perms))
	for i, p := range perms {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

// appendPerms appends each permission NUL-terminated, the SET_PERMS payload
// tail.
func appendPerms(dst []byte, perms []Perm) ([]byte, error) {
	if len(perms) == 0 {
		return nil, fmt.Errorf("%w: empty permission list (the first entry names the owner)", ErrInvalid)
	}
	for _, p := range perms {
		if !p.Access.valid() {
			return nil, fmt.Errorf("%w: bad access letter %q for domain %d", ErrInvalid, rune(p.Access), p.Domid)
		}
		dst = append(dst, p.String()...)
		dst = append(dst, 0)
	}
	return dst, nil
}

// parsePerms parses a GET_PERMS reply, "<perm-as-string>|+".
func parsePerms(p []byte) ([]Perm, error) {
	fields := splitNul(p)
	if len(fields) == 0 {
		return nil, fmt.Errorf("%w: empty permission list", ErrProtocol)
	}
	perms := make([]Perm, 0, len(fields))
	for _, f := range fields {
		pm, err := ParsePerm(f)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrProtocol, err)
		}
		perms = append(perms, pm)
	}
	return perms, nil
}

// splitNul splits a "<s>|*" payload into its strings. A missing final NUL
// is tolerated; empty strings are dropped.
func splitNul(p []byte) []string {
	var out []string
	for len(p) > 0 {
		i := bytes.IndexByte(p, 0)
		if i < 0 {
			i = len(p)
		}
		if i > 0 {
			out = append(out, string(p[:i]))
		}
		if i == len(p) {
			break
		}
		p = p[i+1:]
	}
	return out
}
