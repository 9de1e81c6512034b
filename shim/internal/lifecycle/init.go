package lifecycle

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/mount"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// Init is the lifecycle of a container's init: the runtime created it
// with the container, starts it, signals it and deletes the container.
type Init struct{ c *Container }

// NewInit returns the lifecycle of c's init.
func NewInit(c *Container) Init { return Init{c} }

// Create has the runtime create the init (with the container) and adopts it.
func (l Init) Create(ctx context.Context, p *process.Process, pio *stdio.IO) (_ process.Started, err error) {
	c := l.c
	watch := c.Reaper.Watch()
	defer watch.Close()
	pidFile := filepath.Join(c.Bundle, bundle.InitPidFile)
	err = c.Runtime.Create(ctx, c.ID, &runc.CreateOpts{
		PidFile:       pidFile,
		IO:            pio.RuntimeIO(),
		ConsoleSocket: pio.ConsoleSocket(),
		NoPivot:       c.Config.NoPivotRoot,
		NoNewKeyring:  c.Config.NoNewKeyring,
	})
	if err != nil {
		return process.Started{}, err
	}
	s, err := l.adopt(p, watch, pidFile, pio)
	if err != nil {
		c.Runtime.Delete(context.WithoutCancel(ctx), c.ID, true)
		return process.Started{}, err
	}
	return s, nil
}

// adopt takes over the init the runtime just made (created or restored):
// it connects its stdio, reads its pid, has its cgroup watched and, last
// (nothing after it may fail), claims its exit from watch. On error it
// leaves nothing open but pio, which stays the caller's.
func (l Init) adopt(p *process.Process, watch *reaper.Watch, pidFile string, pio *stdio.IO) (process.Started, error) {
	if err := pio.Started(); err != nil {
		return process.Started{}, err
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		return process.Started{}, fmt.Errorf("read init pid: %w", err)
	}
	pidfd := openPidfd(pid)
	if err := watch.Claim(pid, pidfd, l.c.Host.ExitHandler(p)); err != nil {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return process.Started{}, err
	}
	l.c.Host.InitAdopted(pid)
	return process.Started{Pid: pid, Pidfd: pidfd, IO: pio}, nil
}

func (l Init) Start(ctx context.Context, p *process.Process) (process.Started, error) {
	if l.c.Checkpoint != "" {
		return l.restore(ctx, p)
	}
	if err := l.c.Runtime.Start(ctx, l.c.ID); err != nil {
		return process.Started{}, err
	}
	return process.Started{Pidfd: -1}, nil
}

func (l Init) Kill(ctx context.Context, p *process.Process, sig syscall.Signal, all bool) error {
	if sig == unix.SIGKILL && !l.c.OwnPidNS {
		// The init's death takes the container's other processes with it
		// (the container kills them when they share a pid namespace):
		// killing them all now means none of them outlives this request.
		all = true
	}
	err := l.c.Runtime.Kill(ctx, l.c.ID, int(sig), all)
	if err != nil && !p.Alive() {
		// The runtime refused because the init is already gone.
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

func (l Init) Delete(ctx context.Context, p *process.Process, wasCreated bool) error {
	c := l.c
	if n := c.Host.ExecsLive(); wasCreated && n > 0 {
		// Deleting would kill them behind their own state machines' backs.
		return fmt.Errorf("container %q has %d running execs: kill them first: %w", c.ID, n, errdefs.ErrFailedPrecondition)
	}
	// A container still waiting for its restore has nothing in the runtime.
	neverRestored := wasCreated && c.Checkpoint != ""
	if err := c.Runtime.Delete(ctx, c.ID, true); err != nil && !neverRestored {
		if wasCreated {
			return err // its init may still be there, waiting to start
		}
		// The init is gone; whatever the runtime kept, the delete action
		// can still remove. The shim's own resources go now.
		c.Log.Warn("runtime delete of a stopped container", "container", c.ID, "error", err)
	}
	if c.Rootfs != "" {
		if err := mount.UnmountAll(c.Rootfs); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(c.Bundle, bundle.InitPidFile))
	return nil
}

// KilledStatus: a created init is a process the runtime's delete killed.
func (l Init) KilledStatus() int { return 128 + int(unix.SIGKILL) }
