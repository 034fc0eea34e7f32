package hwtest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Log records what devices log through log/slog's default logger.
type Log struct {
	mu   sync.Mutex
	recs []string
}

// CaptureLog makes slog's default logger record into the returned Log until
// the test ends, then restores the previous default. Each record is kept as
// "LEVEL msg key=value …". Because it replaces a process-wide default, do not
// use it from tests that run in parallel (t.Parallel).
func CaptureLog(t testing.TB) *Log {
	l := &Log{}
	prev := slog.Default()
	slog.SetDefault(slog.New(&logHandler{l: l}))
	t.Cleanup(func() { slog.SetDefault(prev) })
	return l
}

// Records returns the records so far.
func (l *Log) Records() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.recs...)
}

// Count returns how many records contain substr.
func (l *Log) Count(substr string) int {
	n := 0
	for _, r := range l.Records() {
		if strings.Contains(r, substr) {
			n++
		}
	}
	return n
}

// Reset forgets the records so far.
func (l *Log) Reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recs = nil
}

type logHandler struct {
	l     *Log
	attrs []slog.Attr
}

func (h *logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	for _, a := range h.attrs {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
	}
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.l.mu.Lock()
	h.l.recs = append(h.l.recs, b.String())
	h.l.mu.Unlock()
	return nil
}

func (h *logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &logHandler{l: h.l, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *logHandler) WithGroup(string) slog.Handler { return h }
