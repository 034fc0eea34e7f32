package xenstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
)

// Store is the set of node operations that behave the same on a Client
// (each its own implicit transaction) and on a Tx (bound to its
// transaction). Code that only reads and writes nodes can take a Store.
//
// Paths are absolute ("/local/domain/0/…") or relative; xenstored resolves
// a relative path against /local/domain/<caller's domid>, which for the
// device model in dom0 is /local/domain/0.
type Store interface {
	// Read returns the value of path (XS_READ). A missing node is ErrNotFound.
	Read(ctx context.Context, path string) (string, error)
	// Write sets the value of path, creating missing parents (XS_WRITE).
	Write(ctx context.Context, path, value string) error
	// Mkdir makes sure path exists, creating it and missing parents with
	// empty values; an existing node is left alone (XS_MKDIR).
	Mkdir(ctx context.Context, path string) error
	// Rm removes path and everything below it (XS_RM). A missing node is
	// not an error, but a missing parent is ErrNotFound.
	Rm(ctx context.Context, path string) error
	// Directory returns the names (last path elements) of path's children
	// (XS_DIRECTORY, or XS_DIRECTORY_PART when the list is longer than a
	// payload).
	Directory(ctx context.Context, path string) ([]string, error)
	// GetPermissions returns path's permission list (XS_GET_PERMS).
	GetPermissions(ctx context.Context, path string) ([]Perm, error)
	// SetPermissions replaces path's permission list (XS_SET_PERMS). The
	// first entry names the owner and the default access.
	SetPermissions(ctx context.Context, path string, perms []Perm) error
}

var (
	_ Store = (*Client)(nil)
	_ Store = (*Tx)(nil)
)

// checkPath refuses paths that cannot be sent: empty, containing NUL (which
// would change the payload's framing) or longer than the xs_wire limits.
// Everything else, including the character set, is left to xenstored.
func checkPath(p string) error {
	if p == "" {
		return fmt.Errorf("%w: empty path", ErrInvalid)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return fmt.Errorf("%w: path contains a NUL byte", ErrInvalid)
	}
	limit, kind := RelPathMax, "XENSTORE_REL_PATH_MAX"
	if p[0] == '/' {
		limit, kind = AbsPathMax, "XENSTORE_ABS_PATH_MAX"
	}
	if len(p) > limit {
		return fmt.Errorf("%w: path of %d bytes exceeds %s (%d)", ErrInvalid, len(p), kind, limit)
	}
	return nil
}

// nulJoin builds a payload of NUL-terminated strings.
func nulJoin(parts ...string) []byte {
	n := 0
	for _, s := range parts {
		n += len(s) + 1
	}
	b := make([]byte, 0, n)
	for _, s := range parts {
		b = append(b, s...)
		b = append(b, 0)
	}
	return b
}

// pathOp runs a one-path request: it checks path, sends payload, and wraps
// any error with op, path and tx.
func (c *Client) pathOp(ctx context.Context, op string, typ MsgType, tx uint32, path string, payload []byte) ([]byte, error) {
	if err := checkPath(path); err != nil {
		return nil, &Error{Op: op, Path: path, Tx: tx, Err: err}
	}
	r, err := c.roundTrip(ctx, typ, tx, payload)
	if err != nil {
		return nil, &Error{Op: op, Path: path, Tx: tx, Err: err}
	}
	return r, nil
}

func (c *Client) read(ctx context.Context, tx uint32, path string) (string, error) {
	r, err := c.pathOp(ctx, "read", TypeRead, tx, path, nulJoin(path))
	if err != nil {
		return "", err
	}
	return string(r), nil
}

func (c *Client) write(ctx context.Context, tx uint32, path, value string) error {
	p := make([]byte, 0, len(path)+1+len(value))
	p = append(p, path...)
	p = append(p, 0)
	p = append(p, value...)
	_, err := c.pathOp(ctx, "write", TypeWrite, tx, path, p)
	return err
}

func (c *Client) mkdir(ctx context.Context, tx uint32, path string) error {
	_, err := c.pathOp(ctx, "mkdir", TypeMkdir, tx, path, nulJoin(path))
	return err
}

func (c *Client) rm(ctx context.Context, tx uint32, path string) error {
	_, err := c.pathOp(ctx, "rm", TypeRm, tx, path, nulJoin(path))
	return err
}

func (c *Client) getPerms(ctx context.Context, tx uint32, path string) ([]Perm, error) {
	r, err := c.pathOp(ctx, "get_perms", TypeGetPerms, tx, path, nulJoin(path))
	if err != nil {
		return nil, err
	}
	perms, err := parsePerms(r)
	if err != nil {
		return nil, &Error{Op: "get_perms", Path: path, Tx: tx, Err: err}
	}
	return perms, nil
}

func (c *Client) setPerms(ctx context.Context, tx uint32, path string, perms []Perm) error {
	p, err := appendPerms(nulJoin(path), perms)
	if err != nil {
		return &Error{Op: "set_perms", Path: path, Tx: tx, Err: err}
	}
	_, err = c.pathOp(ctx, "set_perms", TypeSetPerms, tx, path, p)
	return err
}

func (c *Client) directory(ctx context.Context, tx uint32, path string) ([]string, error) {
	r, err := c.pathOp(ctx, "directory", TypeDirectory, tx, path, nulJoin(path))
	if errors.Is(err, ErrTooBig) {
		return c.directoryPart(ctx, tx, path)
	}
	if err != nil {
		return nil, err
	}
	names, err := parseDirectory(r)
	if err != nil {
		return nil, &Error{Op: "directory", Path: path, Tx: tx, Err: err}
	}
	return names, nil
}

// Bounds on the XS_DIRECTORY_PART loop, so that a misbehaving daemon cannot
// keep it going for ever.
const (
	dirPartMaxRestarts = 8
	dirPartMaxBytes    = 1 << 20
)

// directoryPart lists a directory too long for one XS_DIRECTORY reply, as
// libxenstore's xs_directory_part does: request "<path>|<offset>|" until the
// accumulated list ends in an empty string, restarting if the node's
// generation count changes in between.
func (c *Client) directoryPart(ctx context.Context, tx uint32, path string) ([]string, error) {
	wrap := func(err error) error { return &Error{Op: "directory_part", Path: path, Tx: tx, Err: err} }
	for restart := 0; restart <= dirPartMaxRestarts; restart++ {
		var gen string
		var list []byte
		for {
			r, err := c.pathOp(ctx, "directory_part", TypeDirectoryPart, tx, path,
				nulJoin(path, strconv.Itoa(len(list))))
			if err != nil {
				return nil, err
			}
			i := bytes.IndexByte(r, 0)
			if i < 0 {
				return nil, wrap(fmt.Errorf("%w: XS_DIRECTORY_PART reply without generation count", ErrProtocol))
			}
			g, chunk := string(r[:i]), r[i+1:]
			if len(list) == 0 && gen == "" {
				gen = g
			} else if g != gen {
				break // the directory changed: start again
			}
			list = append(list, chunk...)
			// The last chunk ends with an extra empty string.
			if len(list) <= 1 || (len(list) >= 2 && list[len(list)-1] == 0 && list[len(list)-2] == 0) {
				names, err := parseDirectory(list)
				if err != nil {
					return nil, wrap(err)
				}
				return names, nil
			}
			if len(chunk) == 0 {
				return nil, wrap(fmt.Errorf("%w: empty XS_DIRECTORY_PART chunk at offset %d", ErrProtocol, len(list)))
			}
			if len(list) > dirPartMaxBytes {
				return nil, wrap(fmt.Errorf("%w: XS_DIRECTORY_PART listing exceeds %d bytes", ErrProtocol, dirPartMaxBytes))
			}
		}
	}
	return nil, wrap(fmt.Errorf("%w: directory kept changing during XS_DIRECTORY_PART", ErrAgain))
}

// parseDirectory parses "<child-leaf-name>|*". Empty strings (the listing
// terminator of DIRECTORY_PART, a lone NUL some daemons send for no
// children) are skipped; a name containing '/' is a protocol error, since
// callers join names onto the parent path.
func parseDirectory(p []byte) ([]string, error) {
	names := splitNul(p)
	for _, n := range names {
		if strings.IndexByte(n, '/') >= 0 {
			return nil, fmt.Errorf("%w: directory entry %q contains '/'", ErrProtocol, n)
		}
	}
	if names == nil {
		names = []string{}
	}
	return names, nil
}

// Read implements Store.
func (c *Client) Read(ctx context.Context, path string) (string, error) { return c.read(ctx, 0, path) }

// Write implements Store.
func (c *Client) Write(ctx context.Context, path, value string) error {
	return c.write(ctx, 0, path, value)
}

// Mkdir implements Store.
func (c *Client) Mkdir(ctx context.Context, path string) error { return c.mkdir(ctx, 0, path) }

// Rm implements Store.
func (c *Client) Rm(ctx context.Context, path string) error { return c.rm(ctx, 0, path) }

// Directory implements Store.
func (c *Client) Directory(ctx context.Context, path string) ([]string, error) {
	return c.directory(ctx, 0, path)
}

// GetPermissions implements Store.
func (c *Client) GetPermissions(ctx context.Context, path string) ([]Perm, error) {
	return c.getPerms(ctx, 0, path)
}

// SetPermissions implements Store.
func (c *Client) SetPermissions(ctx context.Context, path string, perms []Perm) error {
	return c.setPerms(ctx, 0, path, perms)
}

// GetDomainPath returns the home path of domain domid, normally
// "/local/domain/<domid>" (XS_GET_DOMAIN_PATH).
func (c *Client) GetDomainPath(ctx context.Context, domid uint16) (string, error) {
	d := strconv.FormatUint(uint64(domid), 10)
	r, err := c.roundTrip(ctx, TypeGetDomainPath, 0, nulJoin(d))
	if err != nil {
		return "", &Error{Op: "get_domain_path", Path: d, Err: err}
	}
	f := splitNul(r)
	if len(f) != 1 {
		return "", &Error{Op: "get_domain_path", Path: d, Err: fmt.Errorf("%w: malformed reply %q", ErrProtocol, r)}
	}
	return f[0], nil
}

// Tx is a xenstore transaction: the Store operations on it see and change
// xenstored's copy of the store taken at Start, and become visible to others
// (and fire watches) only at Commit. A Tx may be used from several
// goroutines, but Commit or Abort ends it: later calls fail with ErrTxDone.
type Tx struct {
	c    *Client
	id   uint32
	done atomic.Bool
}

// Start begins a transaction (XS_TRANSACTION_START).
func (c *Client) Start(ctx context.Context) (*Tx, error) {
	r, err := c.roundTrip(ctx, TypeTransactionStart, 0, nulJoin(""))
	if err != nil {
		return nil, &Error{Op: "transaction_start", Err: err}
	}
	f := splitNul(r)
	var id uint64
	if len(f) == 1 {
		id, err = strconv.ParseUint(f[0], 10, 32)
	}
	if len(f) != 1 || err != nil || id == 0 {
		return nil, &Error{Op: "transaction_start", Err: fmt.Errorf("%w: bad transaction id %q", ErrProtocol, r)}
	}
	return &Tx{c: c, id: uint32(id)}, nil
}

// ID returns the transaction id xenstored assigned (the tx_id of its
// requests).
func (t *Tx) ID() uint32 { return t.id }

// Commit ends the transaction and applies its changes
// (XS_TRANSACTION_END "T"). If another change got in between, the error
// wraps ErrAgain and nothing was applied: start a new transaction and redo
// the reads and writes. Either way the Tx is finished.
func (t *Tx) Commit(ctx context.Context) error { return t.end(ctx, "commit", "T") }

// Abort ends the transaction and discards its changes
// (XS_TRANSACTION_END "F").
func (t *Tx) Abort(ctx context.Context) error { return t.end(ctx, "abort", "F") }

func (t *Tx) end(ctx context.Context, op, arg string) error {
	if t.done.Swap(true) {
		return &Error{Op: op, Tx: t.id, Err: ErrTxDone}
	}
	if _, err := t.c.roundTrip(ctx, TypeTransactionEnd, t.id, nulJoin(arg)); err != nil {
		return &Error{Op: op, Tx: t.id, Err: err}
	}
	return nil
}

func (t *Tx) check(op, path string) error {
	if t.done.Load() {
		return &Error{Op: op, Path: path, Tx: t.id, Err: ErrTxDone}
	}
	return nil
}

// Read implements Store within the transaction.
func (t *Tx) Read(ctx context.Context, path string) (string, error) {
	if err := t.check("read", path); err != nil {
		return "", err
	}
	return t.c.read(ctx, t.id, path)
}

// Write implements Store within the transaction.
func (t *Tx) Write(ctx context.Context, path, value string) error {
	if err := t.check("write", path); err != nil {
		return err
	}
	return t.c.write(ctx, t.id, path, value)
}

// Mkdir implements Store within the transaction.
func (t *Tx) Mkdir(ctx context.Context, path string) error {
	if err := t.check("mkdir", path); err != nil {
		return err
	}
	return t.c.mkdir(ctx, t.id, path)
}

// Rm implements Store within the transaction.
func (t *Tx) Rm(ctx context.Context, path string) error {
	if err := t.check("rm", path); err != nil {
		return err
	}
	return t.c.rm(ctx, t.id, path)
}

// Directory implements Store within the transaction.
func (t *Tx) Directory(ctx context.Context, path string) ([]string, error) {
	if err := t.check("directory", path); err != nil {
		return nil, err
	}
	return t.c.directory(ctx, t.id, path)
}

// GetPermissions implements Store within the transaction.
func (t *Tx) GetPermissions(ctx context.Context, path string) ([]Perm, error) {
	if err := t.check("get_perms", path); err != nil {
		return nil, err
	}
	return t.c.getPerms(ctx, t.id, path)
}

// SetPermissions implements Store within the transaction.
func (t *Tx) SetPermissions(ctx context.Context, path string, perms []Perm) error {
	if err := t.check("set_perms", path); err != nil {
		return err
	}
	return t.c.setPerms(ctx, t.id, path, perms)
}

// MaxTransactAttempts bounds how often Transact runs its function.
const MaxTransactAttempts = 64

// Transact runs fn in a transaction and commits it, starting over while the
// commit (or an operation inside fn) fails with ErrAgain, at most
// MaxTransactAttempts times and while ctx is live. If fn returns any other
// error the transaction is aborted and that error returned. fn may run more
// than once, so it must not have effects outside the transaction.
func (c *Client) Transact(ctx context.Context, fn func(tx *Tx) error) error {
	var err error
	for attempt := 0; attempt < MaxTransactAttempts; attempt++ {
		var tx *Tx
		tx, err = c.Start(ctx)
		if err != nil {
			return err
		}
		if err = fn(tx); err != nil {
			if !tx.done.Load() {
				tx.Abort(ctx) // best effort; fn's error is the one that matters
			}
			if !errors.Is(err, ErrAgain) {
				return err
			}
		} else if err = tx.Commit(ctx); !errors.Is(err, ErrAgain) {
			return err
		}
		if ctx.Err() != nil {
			return err
		}
	}
	return fmt.Errorf("xenstore transaction gave up after %d attempts: %w", MaxTransactAttempts, err)
}
