package shim

import (
	"context"
	"time"

	"github.com/tether-shim/tether/shim/internal/process"
)

// What a request asks of one process of a container, its init (empty
// execID) or an exec: the container finds it and hands the request over.
// Processes themselves never leave the core.

// ProcessState is a snapshot of a process, as State and Delete report it.
type ProcessState = process.Snapshot

// State is where a process is in its life.
type State = process.State

// The states a process reports.
const (
	Created = process.Created
	Running = process.Running
	Paused  = process.Paused
	Stopped = process.Stopped
	Deleted = process.Deleted
)

// Start runs a created process and returns its pid.
func (c *Container) Start(ctx context.Context, execID string) (int, error) {
	p, err := c.lookup(execID)
	if err != nil {
		return 0, err
	}
	return p.Start(ctx)
}

// State returns a snapshot of a process; it never waits for an operation
// in flight.
func (c *Container) State(execID string) (ProcessState, error) {
	p, err := c.lookup(execID)
	if err != nil {
		return ProcessState{}, err
	}
	return p.State(), nil
}

// Kill sends sig to a process (with all, to every process of the
// container). It waits for no other operation of the process.
func (c *Container) Kill(ctx context.Context, execID string, sig uint32, all bool) error {
	p, err := c.lookup(execID)
	if err != nil {
		return err
	}
	return p.Kill(ctx, sig, all)
}

// Wait blocks until a process has stopped and returns its exit.
func (c *Container) Wait(ctx context.Context, execID string) (int, time.Time, error) {
	p, err := c.lookup(execID)
	if err != nil {
		return 0, time.Time{}, err
	}
	return p.Wait(ctx)
}

// CloseIO closes a process's stdin, if stdin, once the client's writer is
// gone; a process that is not there is an error either way.
func (c *Container) CloseIO(execID string, stdin bool) error {
	p, err := c.lookup(execID)
	if err != nil || !stdin {
		return err
	}
	return p.CloseIO()
}

// Resize sets the size of a process's terminal.
func (c *Container) Resize(execID string, width, height uint32) error {
	p, err := c.lookup(execID)
	if err != nil {
		return err
	}
	return p.Resize(width, height)
}
