package dm

import (
	"io"
	"log/slog"
	"os"
	"strings"
)

// NewLogger returns the device model's logger: text lines with a
// millisecond timestamp on w (stderr, which libxl sends to
// /var/log/xen/qemu-dm-<name>.log). XEN_DM_GO_LOG=debug|info|warn|error
// sets the level (default info).
func NewLogger(w io.Writer) *slog.Logger {
	level := slog.LevelInfo
	switch strings.ToLower(os.Getenv("XEN_DM_GO_LOG")) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{
		Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, a.Value.Time().Format("2006-01-02T15:04:05.000Z07:00"))
			}
			return a
		},
	}))
}
