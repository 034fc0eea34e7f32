package hw

import (
	"fmt"
	"log/slog"
	"sync"
)

// WarnLimit bounds how many distinct problems one Warner logs, so a guest
// hammering a bad register cannot flood the device model's log.
const WarnLimit = 64

// Warner logs each distinct guest-triggered problem (message and attributes)
// once, up to WarnLimit problems. The zero value is ready to use; devices
// embed one each.
type Warner struct {
	mu   sync.Mutex
	seen map[string]bool
}

// Warn logs msg with args at warning level unless it was logged before.
func (w *Warner) Warn(msg string, args ...any) {
	key := fmt.Sprint(msg, args)
	w.mu.Lock()
	if w.seen == nil {
		w.seen = map[string]bool{}
	}
	log := !w.seen[key] && len(w.seen) < WarnLimit
	if log {
		w.seen[key] = true
	}
	w.mu.Unlock()
	if log {
		slog.Warn(msg, args...)
	}
}
