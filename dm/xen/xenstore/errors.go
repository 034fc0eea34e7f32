package xenstore

import (
	"errors"
	"strconv"
	"syscall"
)

// Errno is the error name xenstored sends in an XS_ERROR reply, e.g.
// "ENOENT" (struct xsd_errors in xs_wire.h: the name is sent, not the
// number). Errno values are comparable, so errors.Is(err, ErrNotFound)
// works; Unwrap yields the matching syscall.Errno (ENOENT → syscall.ENOENT),
// so errors.Is(err, fs.ErrNotExist) works too. A name the client does not
// know is kept as sent.
type Errno string

// The errno names of xs_wire.h's xsd_errors table.
const (
	ErrInvalid  Errno = "EINVAL"    // bad path, payload or argument; also used by the client for requests it refuses
	ErrAccess   Errno = "EACCES"    // permission denied by the node's permissions
	ErrExist    Errno = "EEXIST"    // e.g. the same watch (path and token) registered twice
	ErrIsDir    Errno = "EISDIR"    //
	ErrNotFound Errno = "ENOENT"    // no such node, transaction or watch
	ErrNoMem    Errno = "ENOMEM"    //
	ErrNoSpace  Errno = "ENOSPC"    // quota exceeded
	ErrIO       Errno = "EIO"       //
	ErrNotEmpty Errno = "ENOTEMPTY" //
	ErrNoSys    Errno = "ENOSYS"    // request type not implemented by this xenstored
	ErrReadOnly Errno = "EROFS"     // read-only connection
	ErrBusy     Errno = "EBUSY"     //
	ErrAgain    Errno = "EAGAIN"    // transaction conflict: redo the whole transaction
	ErrIsConn   Errno = "EISCONN"   //
	ErrTooBig   Errno = "E2BIG"     // reply would exceed XENSTORE_PAYLOAD_MAX, or quota
	ErrPerm     Errno = "EPERM"     // operation not permitted to this connection
)

var errnoByName = map[Errno]syscall.Errno{
	ErrInvalid:  syscall.EINVAL,
	ErrAccess:   syscall.EACCES,
	ErrExist:    syscall.EEXIST,
	ErrIsDir:    syscall.EISDIR,
	ErrNotFound: syscall.ENOENT,
	ErrNoMem:    syscall.ENOMEM,
	ErrNoSpace:  syscall.ENOSPC,
	ErrIO:       syscall.EIO,
	ErrNotEmpty: syscall.ENOTEMPTY,
	ErrNoSys:    syscall.ENOSYS,
	ErrReadOnly: syscall.EROFS,
	ErrBusy:     syscall.EBUSY,
	ErrAgain:    syscall.EAGAIN,
	ErrIsConn:   syscall.EISCONN,
	ErrTooBig:   syscall.E2BIG,
	ErrPerm:     syscall.EPERM,
}

// Error returns the name as xenstored sent it.
func (e Errno) Error() string { return string(e) }

// Unwrap returns the matching syscall.Errno, or nil for an unknown name.
func (e Errno) Unwrap() error {
	if n, ok := errnoByName[e]; ok {
		return n
	}
	return nil
}

// Client-side errors.
var (
	// ErrPayloadTooBig: the request would carry more than PayloadMax bytes.
	// It was not sent (xenstored would have killed the connection).
	ErrPayloadTooBig = errors.New("payload exceeds XENSTORE_PAYLOAD_MAX (4096 bytes)")
	// ErrProtocol: xenstored sent something the protocol does not allow
	// (bad framing, a reply of the wrong type, an unparsable payload).
	ErrProtocol = errors.New("xenstore protocol error")
	// ErrConnClosed: the connection to xenstored is gone. The error that
	// wraps it also wraps the cause: io.EOF when xenstored closed the
	// connection, net.ErrClosed after Client.Close, a read/write error, or
	// an ErrProtocol framing error.
	ErrConnClosed = errors.New("connection to xenstored closed")
	// ErrTxDone: the transaction was already committed or aborted.
	ErrTxDone = errors.New("transaction already ended")
)

// Error is the error every Client, Tx and Watch operation returns: it names
// the operation (the lower-case request name, e.g. "read", "watch",
// "commit"), the path and where relevant the watch token or transaction id,
// and wraps the cause (an Errno, ErrAgain, ErrPayloadTooBig, ErrProtocol,
// ErrConnClosed, a context error, …).
type Error struct {
	Op    string
	Path  string // empty for requests without a path (transaction start/end)
	Token string // watch token, for watch and unwatch
	Tx    uint32 // transaction id, 0 outside a transaction
	Err   error
}

func (e *Error) Error() string {
	s := "xenstore " + e.Op
	if e.Path != "" {
		s += " " + printable(e.Path)
	}
	if e.Token != "" {
		s += " (token " + printable(e.Token) + ")"
	}
	if e.Tx != 0 {
		s += " (tx " + strconv.FormatUint(uint64(e.Tx), 10) + ")"
	}
	if e.Err == nil {
		return s + ": <nil>"
	}
	return s + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// printable returns s, or s quoted if it holds bytes that would garble a log
// line.
func printable(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] >= 0x7f {
			return strconv.Quote(s)
		}
	}
	return s
}
