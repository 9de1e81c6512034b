// Package inflight counts work in progress (exits being handed on) and lets
// a caller wait until there is none: a live upgrade waits for every exit the
// reaper has delivered to be taken before it writes the state down. Its
// lock is held only to count, never across anything else, so the reaper's
// goroutine may add to it.
package inflight

import (
	"context"
	"sync"
)

// Counter counts work in flight. The zero value is ready to use.
type Counter struct {
	mu   sync.Mutex
	n    int
	idle chan struct{} // closed when n drops to zero; nil while zero
}

// Add counts one more piece of work.
func (f *Counter) Add() {
	f.mu.Lock()
	if f.n == 0 {
		f.idle = make(chan struct{})
	}
	f.n++
	f.mu.Unlock()
}

// Done counts one piece of work finished.
func (f *Counter) Done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 {
		close(f.idle)
		f.idle = nil
	}
	f.mu.Unlock()
}

// Wait returns once nothing is in flight, or ctx ends.
func (f *Counter) Wait(ctx context.Context) error {
	f.mu.Lock()
	idle := f.idle
	f.mu.Unlock()
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
