package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/reaper"
)

// initLife is the lifecycle of a container's init: the runtime created it
// with the container, starts it, signals it and deletes the container.
type initLife struct{ c *Container }

func (l initLife) start(ctx context.Context, p *Process) (int, error) {
	if l.c.checkpoint != "" {
		return l.c.restore(ctx, p)
	}
	if err := l.c.runtime.Start(ctx, l.c.ID); err != nil {
		return 0, err
	}
	return p.pid, nil
}

func (l initLife) startedEvent(p *Process) (string, proto.Message) {
	return topicStart, &events.TaskStart{ContainerId: l.c.ID, Pid: uint32(p.pid)}
}

func (l initLife) kill(ctx context.Context, p *Process, sig syscall.Signal, all bool) error {
	if sig == unix.SIGKILL && !l.c.ownPidNS {
		// The init's death takes the container's other processes with it
		// (exited kills them when they share a pid namespace): killing them
		// all now means none of them outlives this request, rather than
		// the moment the exit has been reaped.
		all = true
	}
	err := l.c.runtime.Kill(ctx, l.c.ID, int(sig), all)
	if err != nil && !p.alive() {
		// The runtime refused because the init is already gone.
		return fmt.Errorf("process already finished: %w", ErrNotFound)
	}
	return err
}

func (l initLife) exited(p *Process, e reaper.Exit) {
	if !l.c.ownPidNS {
		// Without a pid namespace of its own the container's other
		// processes survive the init; they go with it, as they would in one.
		if err := l.c.runtime.Kill(context.Background(), l.c.ID, int(unix.SIGKILL), true); err != nil {
			l.c.log.Warn("kill the processes left after the init exited", "container", l.c.ID, "error", err)
		}
	}
	l.c.exits.initExited(func() { p.stop(e) })
}

func (l initLife) delete(ctx context.Context, p *Process) error {
	if n := l.c.exits.execsLive(); p.state == Created && n > 0 {
		// Deleting would kill them behind their own state machines' backs.
		return fmt.Errorf("container %q has %d running execs: kill them first: %w", l.c.ID, n, ErrFailedPrecondition)
	}
	// A container still waiting for its restore has nothing in the runtime.
	neverRestored := p.state == Created && l.c.checkpoint != ""
	if err := l.c.runtime.Delete(ctx, l.c.ID, true); err != nil && !neverRestored {
		if p.state == Created {
			return err // its init may still be there, waiting to start
		}
		// The init is gone; whatever the runtime kept, the delete action
		// can still remove. The shim's own resources go now.
		l.c.log.Warn("runtime delete of a stopped container", "container", l.c.ID, "error", err)
	}
	if l.c.rootfs != "" {
		if err := unmountAll(l.c.rootfs); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(l.c.Bundle, initPidFile))
	return nil
}

// execLife is the lifecycle of an exec: the runtime runs it on start, the
// shim signals it directly and only forgets it on delete.
type execLife struct {
	c    *Container
	spec specs.Process
}

func (l *execLife) pidFile(p *Process) string {
	return filepath.Join(l.c.Bundle, "exec-"+p.id+".pid")
}

func (l *execLife) start(ctx context.Context, p *Process) (_ int, err error) {
	if !l.c.exits.execStarting() {
		return 0, fmt.Errorf("container %q has stopped: %w", l.c.ID, ErrFailedPrecondition)
	}
	defer func() {
		if err != nil {
			l.c.exits.execEnded()
		}
	}()
	pio, err := openIO(p.stdio, l.c.ioConfig())
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			pio.close()
		}
	}()
	// The exec may exit before its pid file is read: the watch holds its exit.
	watch := l.c.reaper.Watch()
	defer watch.Close()
	pidFile := l.pidFile(p)
	defer os.Remove(pidFile)
	err = l.c.runtime.Exec(ctx, l.c.ID, l.spec, &runc.ExecOpts{
		PidFile:       pidFile,
		IO:            pio.runtimeIO(),
		ConsoleSocket: pio.consoleSocket(),
		Detach:        true,
	})
	if err != nil {
		return 0, err
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		// The runtime ran it, but with no pid there is nothing to follow.
		l.c.log.Error("exec runs with an unknown pid", "container", l.c.ID, "exec", p.id, "error", err)
		return 0, fmt.Errorf("read exec pid: %w", err)
	}
	p.setPid(pid)
	p.io = pio
	if err = pio.started(); err == nil {
		err = watch.Claim(pid, p.onExit)
	}
	if err != nil {
		// It runs but cannot be connected or followed: take it down again.
		p.signal(unix.SIGKILL)
		p.closePidfd()
		p.pid, p.io = 0, nil
		return 0, fmt.Errorf("%w (exec process %d killed)", err, pid)
	}
	return pid, nil
}

func (l *execLife) startedEvent(p *Process) (string, proto.Message) {
	return topicExecStarted, &events.TaskExecStarted{ContainerId: l.c.ID, ExecId: p.id, Pid: uint32(p.pid)}
}

func (l *execLife) kill(_ context.Context, p *Process, sig syscall.Signal, _ bool) error {
	if p.state == Created {
		return fmt.Errorf("exec %q has not started: %w", p.id, ErrFailedPrecondition)
	}
	return p.signal(sig)
}

func (l *execLife) exited(p *Process, e reaper.Exit) {
	p.stop(e)
	l.c.exits.execEnded()
}

func (l *execLife) delete(context.Context, *Process) error { return nil }
