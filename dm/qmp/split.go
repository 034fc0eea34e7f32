package qmp

import "errors"

// errTooLong is returned by splitter.feed when one message (or a run of
// garbage) exceeds the size cap.
var errTooLong = errors.New("QMP input too long")

// splitter cuts a byte stream into top-level JSON values the way QEMU's
// json-streamer does: by counting braces and brackets outside strings. It
// does not validate JSON (encoding/json does that afterwards), so framing
// does not depend on "\r\n" and a pretty-printed request works too. Bytes
// outside any value that are not whitespace are garbage: a run of them up to
// the end of the line is reported once (as QEMU replies one parse error).
type splitter struct {
	max     int
	buf     []byte
	depth   int
	inStr   bool
	esc     bool
	garbage bool
}

type piece struct {
	data    []byte
	garbage bool
}

// inProgress reports whether a value (or garbage run) has started but not
// ended.
func (s *splitter) inProgress() bool { return len(s.buf) > 0 }

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// feed consumes p and returns the pieces it completed.
func (s *splitter) feed(p []byte) ([]piece, error) {
	var out []piece
	for _, c := range p {
		switch {
		case s.garbage:
			if c == '\n' {
				out = append(out, piece{data: s.buf, garbage: true})
				s.buf, s.garbage = nil, false
				continue
			}
			s.buf = append(s.buf, c)
		case s.depth == 0:
			if isSpace(c) {
				continue
			}
			s.buf = append(s.buf, c)
			if c == '{' || c == '[' {
				s.depth = 1
			} else {
				s.garbage = true
			}
		default:
			s.buf = append(s.buf, c)
			switch {
			case s.inStr:
				switch {
				case s.esc:
					s.esc = false
				case c == '\\':
					s.esc = true
				case c == '"':
					s.inStr = false
				}
			case c == '"':
				s.inStr = true
			case c == '{' || c == '[':
				s.depth++
			case c == '}' || c == ']':
				s.depth--
				if s.depth == 0 {
					out = append(out, piece{data: s.buf})
					s.buf = nil
				}
			}
		}
		if len(s.buf) > s.max {
			return out, errTooLong
		}
	}
	return out, nil
}
