package shim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/reaper"
)

// lifecycle is what differs between a container's init and its execs.
type lifecycle interface {
	// start has the runtime run the process and returns its pid; the exit
	// must be routed to p.onExit.
	start(ctx context.Context, p *Process) (int, error)
	// startedEvent is the event that announces a successful start.
	startedEvent(p *Process) (topic string, ev proto.Message)
	// kill signals the process, or with all every process of the container.
	kill(ctx context.Context, p *Process, sig syscall.Signal, all bool) error
	// exited runs once the process has exited and its output has drained;
	// it must end in p.stop.
	exited(p *Process, e reaper.Exit)
	// delete releases what the runtime holds for the process.
	delete(ctx context.Context, p *Process) error
}

// Process is a container's init or one of its execs.
type Process struct {
	id          string // exec id; empty for the init
	containerID string
	stdio       Stdio
	exitFile    string // where the exit status is written, for the delete action
	life        lifecycle
	events      publisher
	log         *slog.Logger

	// stopped is closed once the process is Stopped or Deleted.
	stopped chan struct{}
	// reaped is set, in the reaper's goroutine, as soon as the exit is
	// known; without a pidfd it keeps signals from a pid that may be reused.
	reaped atomic.Bool

	mu sync.Mutex
	// state moves only along transitions. Guarded by mu.
	state State
	// pid is 0 until the runtime reported it. Guarded by mu.
	pid int
	// pidfd refers to the process itself, so a signal never reaches a
	// recycled pid; -1 when closed. Guarded by mu.
	pidfd int
	// exitStatus and exitedAt are set when the process stops. Guarded by mu.
	exitStatus int
	exitedAt   time.Time
	// io is the process's stdio; nil until opened and after deletion. Guarded by mu.
	io *processIO
	// stdinClosed records a CloseIO that came before the stdio was opened
	// (an exec not started yet), to be applied once it is. Guarded by mu.
	stdinClosed bool
}

func newProcess(containerID, execID string, stdio Stdio, exitFile string, life lifecycle, ev publisher, log *slog.Logger) *Process {
	return &Process{
		log:         log,
		id:          execID,
		containerID: containerID,
		stdio:       stdio,
		exitFile:    exitFile,
		life:        life,
		events:      ev,
		stopped:     make(chan struct{}),
		state:       Created,
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

// Start runs a created process and publishes its start event. The event is
// queued before the lock is released, so the exit event cannot overtake it.
func (p *Process) Start(ctx context.Context) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next, err := p.state.next(opStart)
	if err != nil {
		return 0, err
	}
	pid, err := p.life.start(ctx, p)
	if err != nil {
		return 0, err
	}
	p.pid = pid
	p.state = next
	if p.stdinClosed && p.io != nil {
		p.io.closeStdin()
	}
	p.events.publish(p.life.startedEvent(p))
	return pid, nil
}

// setPid records the pid the runtime reported and opens a pidfd for it.
// Called with mu held, before the exit is claimed.
func (p *Process) setPid(pid int) {
	p.pid = pid
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil && !errors.Is(err, unix.ESRCH) {
		// Old kernel or a seccomp filter: signals go by pid (see signal).
		p.log.Debug("no pidfd for process", "pid", pid, "error", err)
		return
	}
	if err == nil {
		p.pidfd = fd
	}
}

// onExit is the reaper's callback: it must not block.
func (p *Process) onExit(e reaper.Exit) {
	p.reaped.Store(true)
	go p.handleExit(e)
}

func (p *Process) handleExit(e reaper.Exit) {
	p.mu.Lock()
	pio := p.io
	p.mu.Unlock()
	if pio != nil {
		pio.exited()
	}
	p.life.exited(p, e)
}

// stop records the exit and publishes it. A process deleted before it could
// run ignores its late exit.
func (p *Process) stop(e reaper.Exit) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next, err := p.state.next(opExit)
	if err != nil {
		return
	}
	p.state = next
	p.exitStatus = e.Status
	p.exitedAt = e.Time
	p.closePidfd()
	if err := writeExitFile(p.exitFile, e); err != nil {
		// The delete action then reports a killed process instead.
		p.log.Warn("write exit status file", "file", p.exitFile, "error", err)
	}
	p.events.publish(topicExit, &events.TaskExit{
		ContainerId: p.containerID,
		Id:          p.ID(),
		Pid:         uint32(e.Pid),
		ExitStatus:  uint32(e.Status),
		ExitedAt:    timestamppb.New(e.Time),
	})
	close(p.stopped)
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
	var err error
	switch {
	case p.pidfd >= 0:
		err = unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	case p.pid > 0 && !p.reaped.Load():
		err = unix.Kill(p.pid, sig)
	default:
		return fmt.Errorf("process already finished: %w", ErrNotFound)
	}
	if errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("process already finished: %w", ErrNotFound)
	}
	return err
}

// apply runs do under the process lock if the state allows o, and moves to
// the state o leads to once do succeeded.
func (p *Process) apply(o op, do func() error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	next, err := p.state.next(o)
	if err != nil {
		return err
	}
	if err := do(); err != nil {
		return err
	}
	p.state = next
	return nil
}

// allows reports whether the process's state allows o.
func (p *Process) allows(o op) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := p.state.next(o)
	return err
}

// Kill sends sig to the process (with all, to every process of the container).
func (p *Process) Kill(ctx context.Context, sig uint32, all bool) error {
	if sig == 0 || sig > 64 {
		return fmt.Errorf("signal %d is not a valid signal number: %w", sig, ErrInvalidArgument)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.state.next(opKill); err != nil {
		return err
	}
	return p.life.kill(ctx, p, syscall.Signal(sig), all)
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

// ProcessState is a snapshot of a process for State and Delete.
type ProcessState struct {
	ID         string
	Pid        int
	State      State
	Stdio      Stdio
	ExitStatus int
	ExitedAt   time.Time
}

func (p *Process) State() ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snapshot()
}

func (p *Process) snapshot() ProcessState {
	return ProcessState{
		ID: p.id, Pid: p.pid, State: p.state, Stdio: p.stdio,
		ExitStatus: p.exitStatus, ExitedAt: p.exitedAt,
	}
}

// Delete removes a created or stopped process and everything it holds. A
// created process is killed by its removal and reported as such.
func (p *Process) Delete(ctx context.Context) (ProcessState, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	next, err := p.state.next(opDelete)
	if err != nil {
		return ProcessState{}, err
	}
	if err := p.life.delete(ctx, p); err != nil {
		return ProcessState{}, err
	}
	if p.state == Created {
		// A created init is a process the runtime's delete just killed; a
		// created exec never had a process: it reports 0, as containerd's
		// runc shim does.
		if p.id == "" {
			p.exitStatus = 128 + int(unix.SIGKILL)
		}
		p.exitedAt = time.Now()
		close(p.stopped)
	}
	p.state = next
	p.closePidfd()
	if p.io != nil {
		p.io.close()
		p.io = nil
	}
	if p.id != "" {
		os.Remove(p.exitFile)
	}
	return p.snapshot(), nil
}

// CloseIO closes the process's stdin once the client's writer is gone.
func (p *Process) CloseIO() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == Deleted {
		return fmt.Errorf("process is deleted: %w", ErrNotFound)
	}
	p.stdinClosed = true
	if p.io != nil {
		p.io.closeStdin()
	}
	return nil
}

// Resize sets the size of the process's terminal.
func (p *Process) Resize(width, height uint32) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := p.state.next(opResize); err != nil {
		return err
	}
	if !p.stdio.Terminal || p.io == nil {
		// containerd's runc shim ignores a resize of a process without a
		// terminal (ctr and CRI send one for every attach); so does tether.
		return nil
	}
	return p.io.resize(width, height)
}

// alive reports whether the process has not exited yet (checked through its
// pidfd, which keeps working until the process is reaped).
func (p *Process) alive() bool {
	return p.signal(0) == nil
}

// writeExitFile records an exit as "<status> <unix nanoseconds>".
func writeExitFile(path string, e reaper.Exit) error {
	if path == "" {
		return nil
	}
	return writeFileAtomic(path, []byte(fmt.Sprintf("%d %d\n", e.Status, e.Time.UnixNano())))
}

// ReadExitFile reads an exit written by writeExitFile.
func ReadExitFile(path string) (status int, at time.Time, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, time.Time{}, err
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return 0, time.Time{}, fmt.Errorf("exit file %s: malformed", path)
	}
	status, err = strconv.Atoi(fields[0])
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("exit file %s: %w", path, err)
	}
	ns, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("exit file %s: %w", path, err)
	}
	return status, time.Unix(0, ns), nil
}
