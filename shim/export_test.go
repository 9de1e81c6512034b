package shim

import "context"

// What the core's tests (package shim_test, which drive it through the task
// API) look at inside it.

// InitReaped reports whether the reaper has seen the init's exit.
func (c *Container) InitReaped() bool { return c.init.Reaped() }

// WaitExits waits until no exit is being handled, or ctx ends.
func (t *Table) WaitExits(ctx context.Context) error { return t.env.exits.Wait(ctx) }
