package xenstore

import (
	"encoding/binary"
	"fmt"
	"io"
	"strconv"
)

// Limits from xen/include/public/io/xs_wire.h.
const (
	// PayloadMax is XENSTORE_PAYLOAD_MAX: the largest payload allowed in
	// either direction. xenstored kills a connection that sends more, so the
	// client refuses such a request before sending it (ErrPayloadTooBig).
	PayloadMax = 4096
	// AbsPathMax is XENSTORE_ABS_PATH_MAX, the longest absolute path.
	AbsPathMax = 3072
	// RelPathMax is XENSTORE_REL_PATH_MAX, the longest relative path.
	RelPathMax = 2048
)

// HeaderSize is sizeof(struct xsd_sockmsg).
const HeaderSize = 16

// MsgType is enum xsd_sockmsg_type (xen/include/public/io/xs_wire.h), the
// type field of struct xsd_sockmsg. The values are Xen 4.17's.
type MsgType uint32

// Message types, enum xsd_sockmsg_type. Each constant names its C
// enumerator.
const (
	TypeControl            MsgType = 0      // XS_CONTROL (formerly XS_DEBUG)
	TypeDirectory          MsgType = 1      // XS_DIRECTORY
	TypeRead               MsgType = 2      // XS_READ
	TypeGetPerms           MsgType = 3      // XS_GET_PERMS
	TypeWatch              MsgType = 4      // XS_WATCH
	TypeUnwatch            MsgType = 5      // XS_UNWATCH
	TypeTransactionStart   MsgType = 6      // XS_TRANSACTION_START
	TypeTransactionEnd     MsgType = 7      // XS_TRANSACTION_END
	TypeIntroduce          MsgType = 8      // XS_INTRODUCE
	TypeRelease            MsgType = 9      // XS_RELEASE
	TypeGetDomainPath      MsgType = 10     // XS_GET_DOMAIN_PATH
	TypeWrite              MsgType = 11     // XS_WRITE
	TypeMkdir              MsgType = 12     // XS_MKDIR
	TypeRm                 MsgType = 13     // XS_RM
	TypeSetPerms           MsgType = 14     // XS_SET_PERMS
	TypeWatchEvent         MsgType = 15     // XS_WATCH_EVENT (daemon → client only)
	TypeError              MsgType = 16     // XS_ERROR (daemon → client only)
	TypeIsDomainIntroduced MsgType = 17     // XS_IS_DOMAIN_INTRODUCED
	TypeResume             MsgType = 18     // XS_RESUME
	TypeSetTarget          MsgType = 19     // XS_SET_TARGET
	typeRestrictRemoved    MsgType = 20     // was XS_RESTRICT, removed from the enum
	TypeResetWatches       MsgType = 21     // XS_RESET_WATCHES (= XS_SET_TARGET + 2)
	TypeDirectoryPart      MsgType = 22     // XS_DIRECTORY_PART
	TypeCount              MsgType = 23     // XS_TYPE_COUNT: number of type values
	TypeInvalid            MsgType = 0xffff // XS_INVALID: guaranteed never to be a valid type
)

var typeNames = [...]string{
	TypeControl:            "XS_CONTROL",
	TypeDirectory:          "XS_DIRECTORY",
	TypeRead:               "XS_READ",
	TypeGetPerms:           "XS_GET_PERMS",
	TypeWatch:              "XS_WATCH",
	TypeUnwatch:            "XS_UNWATCH",
	TypeTransactionStart:   "XS_TRANSACTION_START",
	TypeTransactionEnd:     "XS_TRANSACTION_END",
	TypeIntroduce:          "XS_INTRODUCE",
	TypeRelease:            "XS_RELEASE",
	TypeGetDomainPath:      "XS_GET_DOMAIN_PATH",
	TypeWrite:              "XS_WRITE",
	TypeMkdir:              "XS_MKDIR",
	TypeRm:                 "XS_RM",
	TypeSetPerms:           "XS_SET_PERMS",
	TypeWatchEvent:         "XS_WATCH_EVENT",
	TypeError:              "XS_ERROR",
	TypeIsDomainIntroduced: "XS_IS_DOMAIN_INTRODUCED",
	TypeResume:             "XS_RESUME",
	TypeSetTarget:          "XS_SET_TARGET",
	typeRestrictRemoved:    "XS_RESTRICT(removed)",
	TypeResetWatches:       "XS_RESET_WATCHES",
	TypeDirectoryPart:      "XS_DIRECTORY_PART",
}

// String returns the C enumerator name, e.g. "XS_READ".
func (t MsgType) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	if t == TypeInvalid {
		return "XS_INVALID"
	}
	return "XS_TYPE(" + strconv.FormatUint(uint64(t), 10) + ")"
}

// Header mirrors struct xsd_sockmsg from xen/include/public/io/xs_wire.h:
// four uint32 fields in host byte order (little-endian on x86), 16 bytes,
// followed on the wire by Len bytes of payload.
type Header struct {
	Type  MsgType // type: XS_???
	ReqID uint32  // req_id: request identifier, echoed in the daemon's reply
	TxID  uint32  // tx_id: transaction id, 0 outside a transaction
	Len   uint32  // len: length of the payload that follows
}

// Byte offsets of the fields of struct xsd_sockmsg.
const (
	offType  = 0
	offReqID = 4
	offTxID  = 8
	offLen   = 12
)

// PutHeader encodes h into the first HeaderSize bytes of b.
func PutHeader(b []byte, h Header) {
	_ = b[HeaderSize-1]
	binary.LittleEndian.PutUint32(b[offType:], uint32(h.Type))
	binary.LittleEndian.PutUint32(b[offReqID:], h.ReqID)
	binary.LittleEndian.PutUint32(b[offTxID:], h.TxID)
	binary.LittleEndian.PutUint32(b[offLen:], h.Len)
}

// ParseHeader decodes the first HeaderSize bytes of b. It fails only if b is
// shorter than that; it does not check Len (see ReadMessage).
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderSize {
		return Header{}, fmt.Errorf("%w: short header (%d of %d bytes)", ErrProtocol, len(b), HeaderSize)
	}
	return Header{
		Type:  MsgType(binary.LittleEndian.Uint32(b[offType:])),
		ReqID: binary.LittleEndian.Uint32(b[offReqID:]),
		TxID:  binary.LittleEndian.Uint32(b[offTxID:]),
		Len:   binary.LittleEndian.Uint32(b[offLen:]),
	}, nil
}

// AppendMessage appends one framed message, header then payload, to dst.
// The header's Len is set from len(payload). It does not enforce
// PayloadMax; the client checks that before calling it.
func AppendMessage(dst []byte, h Header, payload []byte) []byte {
	h.Len = uint32(len(payload))
	var hb [HeaderSize]byte
	PutHeader(hb[:], h)
	dst = append(dst, hb[:]...)
	return append(dst, payload...)
}

// ReadMessage reads one message from r. At a clean message boundary it
// returns io.EOF if r is exhausted; a message cut short is
// io.ErrUnexpectedEOF. A header announcing more than PayloadMax bytes is an
// error wrapping ErrProtocol, returned after reading only the header: the
// stream can no longer be trusted and the caller should drop the connection,
// as xenstored does.
func ReadMessage(r io.Reader) (Header, []byte, error) {
	var hb [HeaderSize]byte
	if _, err := io.ReadFull(r, hb[:]); err != nil {
		return Header{}, nil, err
	}
	h, _ := ParseHeader(hb[:])
	if h.Len > PayloadMax {
		return h, nil, fmt.Errorf("%w: %v message announces %d payload bytes, more than XENSTORE_PAYLOAD_MAX (%d)",
			ErrProtocol, h.Type, h.Len, PayloadMax)
	}
	p := make([]byte, h.Len)
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return h, nil, err
	}
	return h, p, nil
}
