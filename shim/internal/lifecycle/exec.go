package lifecycle

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
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// Exec is the lifecycle of an exec: the runtime runs it on start, the
// shim signals it directly and only forgets it on delete.
type Exec struct {
	c    *Container
	spec specs.Process

	mu sync.Mutex
	// starting is the exec's start while its runtime call is in flight.
	// Guarded by mu.
	starting *execStart
}

// NewExec returns the lifecycle of an exec of c that runs spec.
func NewExec(c *Container, spec specs.Process) *Exec { return &Exec{c: c, spec: spec} }

// Spec is the process the exec runs.
func (l *Exec) Spec() specs.Process { return l.spec }

// processSpecURL is the type URL containerd gives an OCI process spec (JSON).
const processSpecURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

// ParseProcessSpec reads the process spec of an exec request.
func ParseProcessSpec(a *anypb.Any) (*specs.Process, error) {
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

func (l *Exec) Start(ctx context.Context, p *process.Process) (_ process.Started, err error) {
	c := l.c
	if !c.Host.ExecStarting() {
		return process.Started{}, fmt.Errorf("container %q has stopped: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	defer func() {
		if err != nil {
			c.Host.ExecGone()
		}
	}()
	pio, err := stdio.Open(p.Paths(), c.Stdio)
	if err != nil {
		return process.Started{}, err
	}
	defer func() {
		if err != nil {
			pio.Close()
		}
	}()
	// The exec may exit before its pid file is read: the watch holds its exit.
	watch := c.Reaper.Watch()
	defer watch.Close()
	pidFile := bundle.ExecPidFile(c.Bundle, p.ExecID())
	defer os.Remove(pidFile)
	// While the runtime runs, a live upgrade may carry the start over
	// (execstart.go).
	err = carry.Hold(ctx, l.keep, func(ready func()) error {
		defer l.setStarting(nil)
		return c.Runtime.ExecWatched(ctx, c.ID, l.spec, &runc.ExecOpts{
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
func (l *Exec) started(p *process.Process, pio *stdio.IO, watch *reaper.Watch, pidFile string) (process.Started, error) {
	c := l.c
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		// The runtime ran it, but with no pid there is nothing to follow.
		c.Log.Error("exec runs with an unknown pid", "container", c.ID, "exec", p.ExecID(), "error", err)
		return process.Started{}, fmt.Errorf("read exec pid: %w", err)
	}
	pidfd := openPidfd(pid)
	if err = pio.Started(); err == nil {
		err = watch.Claim(pid, pidfd, c.Host.ExitHandler(p))
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

func (l *Exec) Kill(_ context.Context, p *process.Process, sig syscall.Signal, _ bool) error {
	if p.State().State == process.Created {
		return fmt.Errorf("exec %q has not started: %w", p.ExecID(), errdefs.ErrFailedPrecondition)
	}
	return p.Signal(sig)
}

func (l *Exec) Delete(_ context.Context, p *process.Process, _ bool) error {
	os.Remove(bundle.ExitFile(l.c.Bundle, p.ExecID()))
	return nil
}

// KilledStatus: an exec deleted before it started never had a process; it
// reports 0, as containerd's runc shim does.
func (l *Exec) KilledStatus() int { return 0 }
