package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/mount"
	"github.com/tether-shim/tether/shim/internal/process"
)

// initLife is the lifecycle of a container's init: the runtime created it
// with the container, starts it, signals it and deletes the container.
type initLife struct{ c *Container }

func (l initLife) Start(ctx context.Context, p *process.Process) (process.Started, error) {
	if l.c.checkpoint != "" {
		return l.c.restore(ctx, p)
	}
	if err := l.c.runtime.Start(ctx, l.c.ID); err != nil {
		return process.Started{}, err
	}
	return process.Started{Pidfd: -1}, nil
}

func (l initLife) Kill(ctx context.Context, p *process.Process, sig syscall.Signal, all bool) error {
	if sig == unix.SIGKILL && !l.c.ownPidNS {
		// The init's death takes the container's other processes with it
		// (processExited kills them when they share a pid namespace):
		// killing them all now means none of them outlives this request.
		all = true
	}
	err := l.c.runtime.Kill(ctx, l.c.ID, int(sig), all)
	if err != nil && !p.Alive() {
		// The runtime refused because the init is already gone.
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

func (l initLife) Delete(ctx context.Context, p *process.Process, wasCreated bool) error {
	c := l.c
	if n := c.exits.execsLive(); wasCreated && n > 0 {
		// Deleting would kill them behind their own state machines' backs.
		return fmt.Errorf("container %q has %d running execs: kill them first: %w", c.ID, n, errdefs.ErrFailedPrecondition)
	}
	// A container still waiting for its restore has nothing in the runtime.
	neverRestored := wasCreated && c.checkpoint != ""
	if err := c.runtime.Delete(ctx, c.ID, true); err != nil && !neverRestored {
		if wasCreated {
			return err // its init may still be there, waiting to start
		}
		// The init is gone; whatever the runtime kept, the delete action
		// can still remove. The shim's own resources go now.
		c.env.Log.Warn("runtime delete of a stopped container", "container", c.ID, "error", err)
	}
	if c.rootfs != "" {
		if err := mount.UnmountAll(c.rootfs); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(c.Bundle, bundle.InitPidFile))
	return nil
}

// KilledStatus: a created init is a process the runtime's delete killed.
func (l initLife) KilledStatus() int { return 128 + int(unix.SIGKILL) }
