// Package process is the task core's state machine of one process, a
// container's init or one of its execs: its states and the one table of
// what each allows, transitions one at a time, each committed with the
// event that announces it, and what a process holds (pid, pidfd, stdio,
// exit). What differs between an init and an exec (the runtime calls) is a
// Lifecycle the container gives it. Only the task core (package shim)
// drives it: the edge never gets a process. It never holds its lock across
// a runtime call or I/O that can block: State, Wait, Kill, CloseIO and
// Resize answer while a transition's runtime call runs.
package process

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

// Lifecycle is what differs between a container's init and its execs. Its
// methods run without the process's lock and mutate nothing of the process:
// they return what they made, and the process applies it.
type Lifecycle interface {
	// Start has the runtime run the process. Its exit must be claimed with
	// the exit handler the container gives (so it reaches the process only
	// once the start is committed).
	Start(ctx context.Context, p *Process) (Started, error)
	// Kill signals the process, or with all every process of the container.
	Kill(ctx context.Context, p *Process, sig syscall.Signal, all bool) error
	// Delete releases what the runtime holds for the process; wasCreated
	// says whether it had been started.
	Delete(ctx context.Context, p *Process, wasCreated bool) error
	// KilledStatus is the exit status a created process is deleted with.
	KilledStatus() int
}

// Started is what a lifecycle's start (or a process's creation) made.
type Started struct {
	Pid   int // 0: unchanged
	Pidfd int // -1: none
	IO    *stdio.IO
	// IOReplaced says a failed start used up the process's stdio and IO
	// (possibly nil) replaces it.
	IOReplaced bool
}

// Announcer publishes the event that announces a process's transition by o
// (image is where a checkpoint went). A process calls it from commit, under
// its lock, so events leave in the order of the transitions.
type Announcer func(st Snapshot, o Op, image string)

// Process is a container's init or one of its execs: one state machine,
// moved by commit only.
type Process struct {
	id          string // exec id; empty for the init
	containerID string
	paths       stdio.Paths
	lifecycle   Lifecycle
	announce    Announcer
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
	// carriedStart is the start a previous process of the shim left in
	// flight, which this one finishes (ResumeStart); nil otherwise.
	carriedStart *carriedStart
}

// New returns a process of container containerID (execID is empty for its
// init) that is still to be created: Created moves it on.
func New(containerID, execID string, paths stdio.Paths, life Lifecycle, announce Announcer, log *slog.Logger) *Process {
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

// ExecID is the exec id; empty for the init.
func (p *Process) ExecID() string { return p.id }

// Paths are the client's ends of the process's stdio.
func (p *Process) Paths() stdio.Paths { return p.paths }

// Lifecycle is what drives the process: an init's or an exec's.
func (p *Process) Lifecycle() Lifecycle { return p.lifecycle }

// IO is the process's stdio; nil until opened and after deletion.
func (p *Process) IO() *stdio.IO {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.io
}

// Hold waits until no other transition runs and keeps any from starting
// until Release: while the container creates the process, or writes down
// its exit.
func (p *Process) Hold() { p.transition <- struct{}{} }

// Release lets the next transition run after Hold.
func (p *Process) Release() { p.endTransition() }

// Settle waits until no transition of p is in flight.
func (p *Process) Settle() {
	p.Hold()
	p.Release()
}

// SettleWithin is Settle within ctx.
func (p *Process) SettleWithin(ctx context.Context) error {
	select {
	case p.transition <- struct{}{}:
		p.Release()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Created commits the creation of a new process with what it was created
// with (s's zero pid, negative pidfd and nil IO leave those unset), and
// announces it.
func (p *Process) Created(s Started) {
	p.commit(OpCreate, "", func() {
		if s.Pid > 0 {
			p.pid = s.Pid
		}
		if s.Pidfd >= 0 {
			p.pidfd = s.Pidfd
		}
		if s.IO != nil {
			p.io = s.IO
		}
	})
}

// MarkReaped records that the process's exit is known. It never waits for
// a lock: the reaper's goroutine calls it.
func (p *Process) MarkReaped() { p.reaped.Store(true) }

// Reaped reports whether the process's exit is known.
func (p *Process) Reaped() bool { return p.reaped.Load() }

// beginTransition waits (at most until ctx ends) until no other transition
// runs, and checks that the state allows o.
func (p *Process) beginTransition(ctx context.Context, o Op) error {
	select {
	case p.transition <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("waiting for another operation on the process to %s it: %w", o, ctx.Err())
	}
	if err := p.Allows(o); err != nil {
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
func (p *Process) commit(o Op, image string, change func()) {
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

// Allows reports whether the process's state allows o.
func (p *Process) Allows(o Op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.state.next(o)
	return err
}

// Transact runs do (a runtime call) as transition o: it waits for other
// transitions, checks the state, runs do without the lock and commits. do
// returns the checkpoint image for a checkpoint's event, else "".
func (p *Process) Transact(ctx context.Context, o Op, do func() (image string, err error)) error {
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
// when it fails. A start carried over from a previous process of the shim
// (ResumeStart) is not run again: Start answers its result.
func (p *Process) Start(ctx context.Context) (int, error) {
	p.mu.Lock()
	carried := p.carriedStart
	p.mu.Unlock()
	if carried != nil {
		select {
		case <-carried.done:
			return carried.pid, carried.err
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	if err := p.beginTransition(ctx, OpStart); err != nil {
		return 0, err
	}
	defer p.endTransition()
	s, err := p.lifecycle.Start(ctx, p)
	if err != nil {
		if s.IOReplaced {
			p.mu.Lock()
			p.io = s.IO
			p.mu.Unlock()
		}
		return 0, err
	}
	return p.commitStart(s), nil
}

// commitStart commits a start with what it made, and returns the pid.
func (p *Process) commitStart(s Started) int {
	var pid int
	p.commit(OpStart, "", func() {
		if s.Pid > 0 {
			p.pid = s.Pid
		}
		if s.Pidfd >= 0 {
			p.pidfd = s.Pidfd
		}
		if s.IO != nil {
			p.io = s.IO
		}
		if p.stdinClosed && p.io != nil {
			p.io.CloseStdin()
		}
		pid = p.pid
	})
	return pid
}

// Stop records the exit and publishes it, once no other transition runs (a
// start or checkpoint in flight announces itself first). A process deleted
// before it could run ignores its late exit.
func (p *Process) Stop(e reaper.Exit) {
	p.transition <- struct{}{}
	defer p.endTransition()
	if p.Allows(OpExit) != nil {
		return
	}
	p.commit(OpExit, "", func() {
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

// Signal sends sig through the pidfd, which never reaches a reused pid.
// Without a pidfd it signals the pid, as long as no exit was reaped for it.
func (p *Process) Signal(sig syscall.Signal) error {
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

// Alive reports whether the process has not exited yet (checked through its
// pidfd, which keeps working until the process is reaped).
func (p *Process) Alive() bool {
	return p.Signal(0) == nil
}

// Kill sends sig to the process (with all, to every process of the
// container). It waits for no other operation of the process.
func (p *Process) Kill(ctx context.Context, sig uint32, all bool) error {
	if sig == 0 || sig > 64 {
		return fmt.Errorf("signal %d is not a valid signal number: %w", sig, errdefs.ErrInvalidArgument)
	}
	if err := p.Allows(OpKill); err != nil {
		return err
	}
	return p.lifecycle.Kill(ctx, p, syscall.Signal(sig), all)
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

// Snapshot is what a process is at one moment, for State, Delete and events.
type Snapshot struct {
	ID         string // exec id; empty for the init
	Pid        int
	State      State
	Paths      stdio.Paths
	ExitStatus int
	ExitedAt   time.Time
}

// State returns a snapshot; it never waits for an operation in flight.
func (p *Process) State() Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snapshot()
}

func (p *Process) snapshot() Snapshot {
	return Snapshot{
		ID: p.id, Pid: p.pid, State: p.state, Paths: p.paths,
		ExitStatus: p.exitStatus, ExitedAt: p.exitedAt,
	}
}

// Delete removes a created or stopped process and everything it holds.
func (p *Process) Delete(ctx context.Context) (Snapshot, error) {
	if err := p.beginTransition(ctx, OpDelete); err != nil {
		return Snapshot{}, err
	}
	defer p.endTransition()
	wasCreated := p.State().State == Created
	if err := p.lifecycle.Delete(ctx, p, wasCreated); err != nil {
		return Snapshot{}, err
	}
	var pio *stdio.IO
	var st Snapshot
	p.commit(OpDelete, "", func() {
		if wasCreated {
			p.exitStatus, p.exitedAt = p.lifecycle.KilledStatus(), time.Now()
			close(p.stopped)
		}
		p.closePidfd()
		pio, p.io = p.io, nil
		st = p.snapshot()
		st.State = Deleted
	})
	// Stopping the pumps and a logging binary can take a moment: not
	// under the lock. (An exec's clients were awaited before: ClientsIO.)
	if pio != nil {
		pio.Close()
	}
	return st, nil
}

// ClientsIO is the stdio whose clients a Delete of the process must await
// first: an exec's, once it has stopped (ctr 1.x drops what its output
// fifo holds once the Delete has returned); nil for an init (its client
// has given up before its Delete) or an exec that cannot be deleted.
func (p *Process) ClientsIO() *stdio.IO {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.id == "" || p.state != Stopped {
		return nil
	}
	return p.io
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
	if _, err := p.state.next(OpResize); err != nil {
		return err
	}
	if !p.paths.Terminal || p.io == nil {
		return nil
	}
	return p.io.Resize(width, height)
}

// DrainOutput waits (within stdio.DrainTimeout) until what the exited
// process wrote has reached the client.
func (p *Process) DrainOutput() {
	p.mu.Lock()
	pio := p.io
	p.mu.Unlock()
	if pio != nil {
		pio.Exited()
	}
}
