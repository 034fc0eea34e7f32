package ps2

import (
	"fmt"
	"log/slog"
	"sync"
)

// warnLimit bounds how many distinct problems one device logs, so a guest
// hammering a bad register cannot flood the log.
const warnLimit = 64

// warner logs each distinct problem (message and attributes) once.
type warner struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (w *warner) warn(msg string, args ...any) {
	key := fmt.Sprint(msg, args)
	w.mu.Lock()
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	log := !w.seen[key] && len(w.seen) < warnLimit
	if log {
		w.seen[key] = true
	}
	w.mu.Unlock()
	if log {
		slog.Warn(msg, args...)
	}
}
