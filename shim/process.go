package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/stdio"
)

// lifecycle is what differs between a container's init and its execs. Its
// methods run without the process's lock and mutate nothing of the process:
// they return what they made, and the process applies it.
type lifecycle interface {
	// start has the runtime run the process. Its exit must be claimed with
	// the exit handler the container gives (so it reaches the process only
	// once the start is committed).
	start(ctx context.Context, p *Process) (started, error)
	// kill signals the process, or with all every process of the container.
	kill(ctx context.Context, p *Process, sig syscall.Signal, all bool) error
	// delete releases what the runtime holds for the process; wasCreated
	// says whether it had been started.
	delete(ctx context.Context, p *Process, wasCreated bool) error
	// killedStatus is the exit status a created process is deleted with.
	killedStatus() int
}

// started is what a lifecycle's start made.
type started struct {
	pid   int // 0: unchanged
	pidfd int // -1: none
	io    *stdio.IO
	// ioReplaced says a failed start used up the process's stdio and io
	// (possibly nil) replaces it.
	ioReplaced bool
}

// Process is a container's init or one of its execs: one state machine,
// moved by commit only.
type Process struct {
	id          string // exec id; empty for the init
	containerID string
	paths       stdio.Paths
	lifecycle   lifecycle
	announce    announcer
	log         *slog.Logger

	// transition is held by whoever moves the process along its state
	// machine (create, start, pause, resume, update, checkpoint, delete, and
	// the stop on exit), one at a time, for as long as the runtime call
	// behind it takes (bounded by the call's deadline). It is a channel so
	// that a request can stop waiting when its context ends. Nothing that
	// only looks (State, Wait, Kill, CloseIO, Resize) takes it.
	transition chan struct{}
	// stopped is closed once the process is Stopped (or Deleted unstarted).
	stopped chan struct{}
	// reaped is set, in the reaper's goroutine, as soon as the exit is
	// known: without a pidfd it keeps signals from a pid that may have been
	// reused. Atomic, so the reaper never waits for a lock.
	reaped atomic.Bool

	mu sync.Mutex
	// The fields below are guarded by mu, which is never held across a
	// runtime call or I/O that can block.
	state State
	// pid is 0 until the runtime reported it.
	pid int
	// pidfd refers to the process itself, so a signal never reaches a
	// recycled pid; -1 when closed.
	pidfd int
	// exitStatus and exitedAt are set when the process stops.
	exitStatus int
	exitedAt   time.Time
	// io is the process's stdio; nil until opened and after deletion.
	io *stdio.IO
	// stdinClosed records a CloseIO, to be applied to stdio opened later
	// (an exec not started yet).
	stdinClosed bool
	// ioHandedOver is set while io is written down for the next process.
	ioHandedOver bool
}

func newProcess(containerID, execID string, paths stdio.Paths, life lifecycle, announce announcer, log *slog.Logger) *Process {
	return &Process{
		id:          execID,
		containerID: containerID,
		paths:       paths,
		lifecycle:   life,
		announce:    announce,
		log:         log,
		transition:  make(chan struct{}, 1),
		stopped:     make(chan struct{}),
		state:       unborn,
		pidfd:       -1,
	}
}

// ID is the exec id, or the container id for the init.
func (p *Process) ID() string {
	if p.id == "" {
		return p.containerID
	}
	return p.id
}

// beginTransition waits (at most until ctx ends) until no other transition
// runs, and checks that the state allows o.
func (p *Process) beginTransition(ctx context.Context, o op) error {
	select {
	case p.transition <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting for another operation on the process to %s it: %w", o, ctx.Err())
	}
	if err := p.allows(o); err != nil {
		p.endTransition()
		return err
	}
	return nil
}

func (p *Process) endTransition() { <-p.transition }

// commit moves the process by o (checked by the caller's beginTransition)
// after applying change to its fields, and publishes the event that
// announces it, all under the lock: events leave in the order of the
// transitions they announce. image is a checkpoint's, for its event.
func (p *Process) commit(o op, image string, change func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next, err := p.state.next(o)
	if err != nil {
		// The caller holds the transition, so nothing moved the process.
		p.log.Error("transition no longer allowed", "process", p.ID(), "op", o, "error", err)
		return
	}
	if change != nil {
		change()
	}
	p.state = next
	p.announce(p.snapshot(), o, image)
}

// allows reports whether the process's state allows o.
func (p *Process) allows(o op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.state.next(o)
	return err
}

// transact runs do (a runtime call) as transition o: it waits for other
// transitions, checks the state, runs do without the lock and commits. do
// returns the checkpoint image for a checkpoint's event, else "".
func (p *Process) transact(ctx context.Context, o op, do func() (image string, err error)) error {
	if err := p.beginTransition(ctx, o); err != nil {
		return err
	}
	defer p.endTransition()
	image, err := do()
	if err != nil {
		return err
	}
	p.commit(o, image, nil)
	return nil
}

// Start runs a created process. A lifecycle that had to replace the
// process's stdio (a failed restore uses it up) hands the new one back even
// when it fails.
func (p *Process) Start(ctx context.Context) (int, error) {
	if err := p.beginTransition(ctx, opStart); err != nil {
		return 0, err
	}
	defer p.endTransition()
	s, err := p.lifecycle.start(ctx, p)
	if err != nil {
		if s.ioReplaced {
			p.mu.Lock()
			p.io = s.io
			p.mu.Unlock()
		}
		return 0, err
	}
	var pid int
	p.commit(opStart, "", func() {
		if s.pid > 0 {
			p.pid = s.pid
		}
		if s.pidfd >= 0 {
			p.pidfd = s.pidfd
		}
		if s.io != nil {
			p.io = s.io
		}
		if p.stdinClosed && p.io != nil {
			p.io.CloseStdin()
		}
		pid = p.pid
	})
	return pid, nil
}

// stop records the exit and publishes it, once no other transition runs (a
// start or checkpoint in flight announces itself first). A process deleted
// before it could run ignores its late exit.
func (p *Process) stop(e reaper.Exit) {
	p.transition <- struct{}{}
	defer p.endTransition()
	if p.allows(opExit) != nil {
		return
	}
	p.commit(opExit, "", func() {
		p.exitStatus, p.exitedAt = e.Status, e.Time
		p.closePidfd()
		close(p.stopped)
	})
}

func (p *Process) closePidfd() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

// signal sends sig through the pidfd, which never reaches a reused pid.
// Without a pidfd it signals the pid, as long as no exit was reaped for it.
func (p *Process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	switch {
	case p.pidfd >= 0:
		err = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	case p.pid > 0 && !p.reaped.Load():
		err = unix.Kill(p.pid, sig)
	default:
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return err
}

// alive reports whether the process has not exited yet (checked through its
// pidfd, which keeps working until the process is reaped).
func (p *Process) alive() bool {
	return p.signal(0) == nil
}

// Kill sends sig to the process (with all, to every process of the
// container). It waits for no other operation of the process.
func (p *Process) Kill(ctx context.Context, sig uint32, all bool) error {
	if sig == 0 || sig > 64 {
		return fmt.Errorf("signal %d is not a valid signal number: %w", sig, errdefs.ErrInvalidArgument)
	}
	if err := p.allows(opKill); err != nil {
		return err
	}
	return p.lifecycle.kill(ctx, p, syscall.Signal(sig), all)
}

// Wait blocks until the process has stopped and returns its exit.
func (p *Process) Wait(ctx context.Context) (int, time.Time, error) {
	select {
	case <-p.stopped:
	case <-ctx.Done():
		return 0, time.Time{}, ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitStatus, p.exitedAt, nil
}

// ProcessState is a snapshot of a process for State, Delete and events.
type ProcessState struct {
	ID         string // exec id; empty for the init
	Pid        int
	State      State
	Paths      stdio.Paths
	ExitStatus int
	ExitedAt   time.Time
}

// State returns a snapshot; it never waits for an operation in flight.
func (p *Process) State() ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snapshot()
}

func (p *Process) snapshot() ProcessState {
	return ProcessState{
		ID: p.id, Pid: p.pid, State: p.state, Paths: p.paths,
		ExitStatus: p.exitStatus, ExitedAt: p.exitedAt,
	}
}

// Delete removes a created or stopped process and everything it holds.
func (p *Process) Delete(ctx context.Context) (ProcessState, error) {
	if err := p.beginTransition(ctx, opDelete); err != nil {
		return ProcessState{}, err
	}
	defer p.endTransition()
	wasCreated := p.State().State == Created
	if err := p.lifecycle.delete(ctx, p, wasCreated); err != nil {
		return ProcessState{}, err
	}
	var pio *stdio.IO
	var st ProcessState
	p.commit(opDelete, "", func() {
		if wasCreated {
			p.exitStatus, p.exitedAt = p.lifecycle.killedStatus(), time.Now()
			close(p.stopped)
		}
		p.closePidfd()
		pio, p.io = p.io, nil
		st = p.snapshot()
		st.State = Deleted
	})
	// Stopping the pumps and a logging binary can take a moment, a late
	// client too (stdio.IO.AwaitClients): not under the lock.
	if pio != nil {
		if p.id != "" {
			if err := pio.AwaitClients(); err != nil {
				p.log.Warn("exec output not taken by its client", "process", p.ID(), "error", err)
			}
		}
		pio.Close()
	}
	return st, nil
}

// CloseIO closes the process's stdin once the client's writer is gone.
func (p *Process) CloseIO() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == Deleted {
		return fmt.Errorf("process is deleted: %w", errdefs.ErrNotFound)
	}
	p.stdinClosed = true
	if p.io != nil {
		p.io.CloseStdin()
	}
	return nil
}

// Resize sets the size of the process's terminal; a process without one
// ignores it, as containerd's runc shim does (ctr and CRI send one on every
// attach).
func (p *Process) Resize(width, height uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.state.next(opResize); err != nil {
		return err
	}
	if !p.paths.Terminal || p.io == nil {
		return nil
	}
	return p.io.Resize(width, height)
}

// drainOutput waits (within stdio.DrainTimeout) until what the exited
// process wrote has reached the client.
func (p *Process) drainOutput() {
	p.mu.Lock()
	pio := p.io
	p.mu.Unlock()
	if pio != nil {
		pio.Exited()
	}
}
