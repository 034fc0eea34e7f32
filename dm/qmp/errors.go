package qmp

import (
	"errors"
	"fmt"
)

// Error classes libxl understands (libxl_qmp.c qmp_error_class_table; it
// matches them case-insensitively and ignoring '_').
const (
	ClassGeneric         = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
)

// Error is a QMP error reply: {"error":{"class":…,"desc":…}}.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return e.Class + ": " + e.Desc }

// Errorf returns a GenericError.
func Errorf(format string, args ...any) *Error {
	return &Error{Class: ClassGeneric, Desc: fmt.Sprintf(format, args...)}
}

// CommandNotFound returns QEMU's error for an unknown command.
func CommandNotFound(name string) *Error {
	return &Error{Class: ClassCommandNotFound, Desc: fmt.Sprintf("The command %s has not been found", name)}
}

// asError turns a handler error into a QMP error: an *Error (possibly
// wrapped) keeps its class, anything else is a GenericError with the text.
func asError(err error) *Error {
	var qe *Error
	if errors.As(err, &qe) {
		return qe
	}
	return &Error{Class: ClassGeneric, Desc: err.Error()}
}
