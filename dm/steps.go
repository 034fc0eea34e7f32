package dm

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// steps runs named start-up steps in order and records how to undo each one
// that completed, so teardown unwinds exactly what started, in reverse
// (firecracker-go-sdk's handler lists; demu's init-state enum).
type steps struct {
	log *slog.Logger

	mu   sync.Mutex
	done []doneStep
}

type doneStep struct {
	name string
	undo func() error
}

// run performs one step. fn returns the undo function (nil if there is
// nothing to undo). The step's duration is logged either way.
func (s *steps) run(ctx context.Context, name string, fn func() (func() error, error)) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start-up interrupted before %q: %w", name, err)
	}
	start := time.Now()
	undo, err := fn()
	took := time.Since(start)
	if err != nil {
		s.log.Error("start-up step failed", "step", name, "took", took, "err", err)
		return fmt.Errorf("%s: %w", name, err)
	}
	s.log.Info("start-up step done", "step", name, "took", took)
	if undo != nil {
		s.mu.Lock()
		s.done = append(s.done, doneStep{name, undo})
		s.mu.Unlock()
	}
	return nil
}

// names lists the completed steps that have an undo, in start order.
func (s *steps) names() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, len(s.done))
	for i, d := range s.done {
		out[i] = d.name
	}
	return out
}

// unwind undoes the completed steps in reverse order. It is idempotent; an
// undo error is logged and the unwinding continues.
func (s *steps) unwind() {
	s.mu.Lock()
	done := s.done
	s.done = nil
	s.mu.Unlock()
	for i := len(done) - 1; i >= 0; i-- {
		d := done[i]
		start := time.Now()
		err := d.undo()
		if err != nil {
			s.log.Warn("teardown step failed", "step", d.name, "took", time.Since(start), "err", err)
			continue
		}
		s.log.Info("teardown step done", "step", d.name, "took", time.Since(start))
	}
}
