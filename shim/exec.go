package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/internal/carry"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// execLife is the lifecycle of an exec: the runtime runs it on start, the
// shim signals it directly and only forgets it on delete.
type execLife struct {
	c    *Container
	spec specs.Process

	mu sync.Mutex
	// starting is the exec's start while its runtime call is in flight.
	// Guarded by mu.
	starting *execStart
}

// AddExec registers a new exec process, which runs on Start, and announces
// it. Lock order: the container's lock, then the init's.
func (c *Container) AddExec(req *task.ExecProcessRequest) error {
	if err := ValidateID("exec", req.GetExecId()); err != nil {
		return err
	}
	spec, err := parseProcessSpec(req.GetSpec())
	if err != nil {
		return err
	}
	spec.Terminal = req.GetTerminal()
	paths := stdio.Paths{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()}
	p := process.New(c.ID, req.GetExecId(), paths, &execLife{c: c, spec: *spec}, c.announcerFor(req.GetExecId()), c.env.Log)

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

// processSpecURL is the type URL containerd gives an OCI process spec (JSON).
const processSpecURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

func parseProcessSpec(a *anypb.Any) (*specs.Process, error) {
	if a == nil {
		return nil, fmt.Errorf("exec has no process spec: %w", errdefs.ErrInvalidArgument)
	}
	if a.GetTypeUrl() != processSpecURL {
		return nil, fmt.Errorf("exec spec has type %q, want %q: %w", a.GetTypeUrl(), processSpecURL, errdefs.ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(a.GetValue(), &spec); err != nil {
		return nil, fmt.Errorf("exec spec is not valid JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec spec has no args: %w", errdefs.ErrInvalidArgument)
	}
	return &spec, nil
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

func (l *execLife) Start(ctx context.Context, p *process.Process) (_ process.Started, err error) {
	c := l.c
	if !c.exits.execStarting() {
		return process.Started{}, fmt.Errorf("container %q has stopped: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	defer func() {
		if err != nil {
			c.execGone()
		}
	}()
	pio, err := stdio.Open(p.Paths(), c.stdioConfig())
	if err != nil {
		return process.Started{}, err
	}
	defer func() {
		if err != nil {
			pio.Close()
		}
	}()
	// The exec may exit before its pid file is read: the watch holds its exit.
	watch := c.env.Reaper.Watch()
	defer watch.Close()
	pidFile := bundle.ExecPidFile(c.Bundle, p.ExecID())
	defer os.Remove(pidFile)
	// While the runtime runs, a live upgrade may carry the start over
	// (execstart.go).
	err = carry.Hold(ctx, l.keep, func(ready func()) error {
		defer l.setStarting(nil)
		return c.runtime.ExecWatched(ctx, c.ID, l.spec, &runc.ExecOpts{
			PidFile:       pidFile,
			IO:            pio.RuntimeIO(),
			ConsoleSocket: pio.ConsoleSocket(),
			Detach:        true,
		}, func(call oci.Call) {
			l.setStarting(&execStart{call: call, pio: pio, pidFile: pidFile, watch: watch})
			ready()
		})
	})
	if err != nil {
		return process.Started{}, err
	}
	return l.started(p, pio, watch, pidFile)
}

// started finishes a start once the runtime has run the exec: its pid
// (held in pidFile) is followed through watch and its stdio connected. On
// error nothing of the exec is left running.
func (l *execLife) started(p *process.Process, pio *stdio.IO, watch *reaper.Watch, pidFile string) (process.Started, error) {
	c := l.c
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		// The runtime ran it, but with no pid there is nothing to follow.
		c.env.Log.Error("exec runs with an unknown pid", "container", c.ID, "exec", p.ExecID(), "error", err)
		return process.Started{}, fmt.Errorf("read exec pid: %w", err)
	}
	pidfd := openPidfd(pid)
	if err = pio.Started(); err == nil {
		err = watch.Claim(pid, pidfd, c.exitHandler(p))
	}
	if err != nil {
		// It runs but cannot be connected or followed: take it down again.
		if pidfd >= 0 {
			unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0)
			unix.Close(pidfd)
		} else {
			unix.Kill(pid, unix.SIGKILL)
		}
		return process.Started{}, fmt.Errorf("%w (exec process %d killed)", err, pid)
	}
	return process.Started{Pid: pid, Pidfd: pidfd, IO: pio}, nil
}

func (l *execLife) Kill(_ context.Context, p *process.Process, sig syscall.Signal, _ bool) error {
	if p.State().State == Created {
		return fmt.Errorf("exec %q has not started: %w", p.ExecID(), errdefs.ErrFailedPrecondition)
	}
	return p.Signal(sig)
}

func (l *execLife) Delete(_ context.Context, p *process.Process, _ bool) error {
	os.Remove(bundle.ExitFile(l.c.Bundle, p.ExecID()))
	return nil
}

// KilledStatus: an exec deleted before it started never had a process; it
// reports 0, as containerd's runc shim does.
func (l *execLife) KilledStatus() int { return 0 }
