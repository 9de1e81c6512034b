package shim

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/shim/internal/lifecycle"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// AddExec registers a new exec process, which runs on Start, and announces
// it. Lock order: the container's lock, then the init's.
func (c *Container) AddExec(req *task.ExecProcessRequest) error {
	if err := ValidateID("exec", req.GetExecId()); err != nil {
		return err
	}
	spec, err := lifecycle.ParseProcessSpec(req.GetSpec())
	if err != nil {
		return err
	}
	spec.Terminal = req.GetTerminal()
	paths := stdio.Paths{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()}
	p := process.New(c.ID, req.GetExecId(), paths, lifecycle.NewExec(c.life, *spec), c.announcerFor(req.GetExecId()), c.env.Log)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.deleted {
		return fmt.Errorf("container %q is deleted: %w", c.ID, errdefs.ErrNotFound)
	}
	if err := c.init.Allows(process.OpExec); err != nil {
		return err
	}
	if _, ok := c.execs[req.GetExecId()]; ok {
		return fmt.Errorf("exec %q of container %q: %w", req.GetExecId(), c.ID, errdefs.ErrAlreadyExists)
	}
	c.execs[req.GetExecId()] = p
	p.Created(process.Started{Pidfd: -1})
	return nil
}

// DeleteExec deletes a created or stopped exec and forgets it. It first
// waits for the exec's clients to read what is left of its output, having
// done nothing yet: a live upgrade may carry the request over meanwhile.
func (c *Container) DeleteExec(ctx context.Context, execID string) (ProcessState, error) {
	p, err := c.lookup(execID)
	if err != nil {
		return ProcessState{}, err
	}
	c.awaitClients(ctx, []*process.Process{p})
	st, err := p.Delete(ctx)
	if err != nil {
		return ProcessState{}, err
	}
	c.mu.Lock()
	delete(c.execs, execID)
	c.mu.Unlock()
	return st, nil
}
