package devstate

import (
	"errors"
	"fmt"
)

// Classes of refusal; every error Parse, Decode and Header.Fits return wraps
// exactly one of them (test with errors.Is). The messages say what is wrong
// and where, for the device model's log.
var (
	// ErrNotState: the blob does not start with the magic (garbage, or
	// another device model's state).
	ErrNotState = errors.New("not a xen-dm-go device state")
	// ErrTruncated: the blob ends before its END section.
	ErrTruncated = errors.New("device state truncated")
	// ErrVersion: a container, format or mandatory-section version this
	// build does not read (older or newer).
	ErrVersion = errors.New("device state version not supported")
	// ErrChecksum: a section's CRC32C does not match.
	ErrChecksum = errors.New("device state checksum mismatch")
	// ErrUnknownSection: a mandatory section this build does not know.
	ErrUnknownSection = errors.New("unknown mandatory device-state section")
	// ErrCorrupt: anything else malformed (framing, payload, duplicate or
	// missing sections, values out of range).
	ErrCorrupt = errors.New("device state corrupt")
	// ErrMismatch: a well-formed state saved on a different machine
	// (machine type, vCPUs, RAM, drives, serial ports).
	ErrMismatch = errors.New("device state does not fit this machine")
)

// Error is a refusal: Kind is one of the Err* classes.
type Error struct {
	Kind error
	Msg  string
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Kind }

func errf(kind error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}
