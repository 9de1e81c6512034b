// Package sandbox is tether's side of containerd's sandbox API
// (containerd.runtime.sandbox.v1.Sandbox, used by a CRI runtime handler with
// sandboxer = "shim"): it holds one pod without a pause container. Its one
// job is the pod itself: the pod's namespaces (made by the shim, the
// pod's hostname and sysctls set in them) and what keeps them alive (their
// bind mounts, or for a pod whose containers share a pid namespace a tiny
// holder process, that namespace's init: keep.go), the sandbox's one
// state machine (created, starting, ready, stopped, shut down), its status
// and metrics, the pod files containerd's CRI mounts into containers,
// pointing each container's spec at the pod's namespaces, and removing all
// of that again, also for the delete action after a lost shim. A live
// upgrade writes the sandbox down and the next process of the shim takes
// it back (handover.go): the mounts stay, a holder goes on, the same
// process, its lifeline held across the exec, its exit owned again by the
// new reaper.
//
// It never runs or touches a container: the task core (shim/) does, and
// knows nothing of pods; the sandbox only rewrites the namespaces of a new
// container's spec. It never waits on a pid: the reaper owns every exit,
// and hands the holder's over to a function that does not block. It never
// holds its lock while waiting for the holder. Once shut down it leaves
// no process, mount or file behind.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/internal/inflight"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox/internal/podfiles"
)

// stopGrace is how long a holder told to exit (its lifeline closed) has
// before it is killed, when containerd names no timeout.
const stopGrace = 2 * time.Second

// phase is where a sandbox is in its life. Its values are written down for
// a live upgrade (upgradepb.Sandbox.phase): never renumber them.
type phase int

const (
	created  phase = iota // CreateSandbox done
	starting              // the holder is being started
	ready                 // the pod's namespaces are kept (bound, or by the holder)
	stopped               // they are let go: the holder has exited (or never ran)
	shutDown              // everything the sandbox held is released
)

func (p phase) String() string {
	return [...]string{"created", "starting", "ready", "stopped", "shut down"}[p]
}

// Env is what a sandbox uses of its shim.
type Env struct {
	Reaper  *reaper.Reaper
	Cgroups *cgroup.Host
	Log     *slog.Logger
	// launch makes the pod's namespaces and what keeps them, whose end
	// goes to onExit; nil means the real ones (start).
	launch func(p Pod, onExit func(reaper.Exit)) (keeper, error)
}

// Sandbox is one pod held by the shim. Its methods never hold mu while
// they wait: for the holder to start, to exit, or for a file system.
type Sandbox struct {
	pod   Pod
	env   *Env
	files *podfiles.Files // nil when the CRI's directories are not known
	rec   *recorder
	// exits counts holder exits the reaper handed over and holderExited
	// has not taken yet, for a handover to wait on. It has a lock of its
	// own: the reaper's goroutine counts there and takes nothing else.
	exits inflight.Counter

	mu sync.Mutex
	// phase is the sandbox's place in its life. Guarded by mu.
	phase phase
	// run identifies the holder being started or running, so that an exit
	// is matched with its own holder. Guarded by mu.
	run *run
	// startedAt is when the holder became ready. Guarded by mu.
	startedAt time.Time
	// ending is set once the holder was told to exit: its exit is expected.
	// Guarded by mu.
	ending bool
	// exit is the holder's exit, valid once stopped is closed. Guarded by mu.
	exit reaper.Exit
	// stopped is closed on entering the stopped phase (or shut down without
	// having stopped); isStopped says it is. Guarded by mu.
	stopped   chan struct{}
	isStopped bool
}

// run is one start of the holder.
type run struct {
	proc keeper // set once started; guarded by Sandbox.mu
	// early is an exit that came while the holder was starting. Guarded by
	// Sandbox.mu.
	early *reaper.Exit
}

// Status is a sandbox's state as SandboxStatus reports it.
type Status struct {
	Phase     phase
	Pid       int // the holder's; 0 without one
	StartedAt time.Time
	Exit      *reaper.Exit // once stopped
}

// newSandbox returns a created sandbox for p.
func newSandbox(p Pod, env *Env) *Sandbox {
	s := &Sandbox{pod: p, env: env, stopped: make(chan struct{}), rec: newRecorder(p.Bundle, env.Log)}
	if files, err := podfiles.Find(p.Bundle, p.ID); err != nil {
		env.Log.Info("pod files are not written: containers get the image's /etc/hosts, /etc/resolv.conf and /dev/shm", "sandbox", p.ID, "reason", err)
	} else {
		s.files = files
	}
	return s
}

// Start makes the pod's namespaces and starts what keeps them, and
// returns the holder's pid (0 without one) and when it became ready. A
// ready sandbox answers as it did.
func (s *Sandbox) Start(ctx context.Context) (int, time.Time, error) {
	s.mu.Lock()
	switch s.phase {
	case ready:
		pid, at := s.run.proc.Pid(), s.startedAt
		s.mu.Unlock()
		return pid, at, nil
	case created:
	default:
		ph := s.phase
		s.mu.Unlock()
		return 0, time.Time{}, fmt.Errorf("sandbox %s is %v: %w", s.pod.ID, ph, errdefs.ErrFailedPrecondition)
	}
	s.phase = starting
	r := &run{}
	s.run = r
	s.mu.Unlock()

	proc, err := s.launch(ctx, r)
	s.mu.Lock()
	if err == nil && r.early != nil {
		err = fmt.Errorf("holder exited with status %d as it started", r.early.Status)
	}
	if err != nil {
		s.phase, s.run = created, nil
		s.mu.Unlock()
		if rerr := s.files.Remove(); rerr != nil {
			s.env.Log.Warn("remove pod files after a failed start", "sandbox", s.pod.ID, "error", rerr)
		}
		return 0, time.Time{}, fmt.Errorf("start sandbox %s: %w", s.pod.ID, err)
	}
	r.proc = proc
	s.phase, s.startedAt = ready, time.Now()
	at := s.startedAt
	s.mu.Unlock()
	return proc.Pid(), at, nil
}

// launch writes the pod's files, makes its namespaces and starts what
// keeps them.
func (s *Sandbox) launch(ctx context.Context, r *run) (keeper, error) {
	// Recorded before it is made, so the delete action finds all of it.
	s.rec.update(func(rec *record) { rec.Files = s.files })
	if err := s.files.SetUp(podfiles.Config{Hostname: s.pod.Hostname, DNS: s.pod.DNS, Shm: s.pod.OwnIPC}); err != nil {
		return nil, err
	}
	proc, err := s.env.start(s.pod, s.onHolderExit(r), s.placeHolder(ctx))
	if err != nil {
		return nil, err
	}
	if pid := proc.Pid(); pid > 0 {
		s.rec.update(func(rec *record) { rec.HolderPid, rec.HolderStart = pid, startTime(pid) })
	}
	return proc, nil
}

// onHolderExit is what the reaper hands the exit of run r's holder to, in
// its goroutine: it hands the exit on to holderExited, never blocking.
func (s *Sandbox) onHolderExit(r *run) func(reaper.Exit) {
	return func(e reaper.Exit) {
		s.exits.Add() // first: a handover that begins now waits for it
		go func() {
			defer s.exits.Done()
			s.holderExited(r, e)
		}()
	}
}

// holderExited takes the exit of run r's holder.
func (s *Sandbox) holderExited(r *run, e reaper.Exit) {
	s.mu.Lock()
	current, early := s.run == r, s.phase == starting
	if current && early {
		r.early = &e
	}
	s.mu.Unlock()
	if !current || early {
		return // a start that failed (or fails now), cleaned up there
	}
	// In the record before the sandbox says it stopped: a delete action
	// after that never signals the holder's pid.
	s.rec.update(func(rec *record) { rec.Exit = &e })
	s.mu.Lock()
	expected := s.ending
	s.stopLocked(e)
	s.mu.Unlock()
	if !expected {
		s.env.Log.Warn("pod holder exited on its own", "sandbox", s.pod.ID, "pid", e.Pid, "status", e.Status)
	}
}

// stopLocked enters the stopped phase with exit e, once.
func (s *Sandbox) stopLocked(e reaper.Exit) {
	if s.phase < stopped {
		s.phase = stopped
	}
	if !s.isStopped {
		s.exit, s.isStopped = e, true
		close(s.stopped)
	}
}

// Stop lets the pod's namespaces go: it unbinds them, or ends the holder
// (giving it timeout, or stopGrace, before SIGKILL) and returns once its
// exit is in; the pod's shared memory is unmounted. Stopping a stopped
// sandbox does nothing.
func (s *Sandbox) Stop(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = stopGrace
	}
	s.mu.Lock()
	switch s.phase {
	case created:
		s.stopLocked(reaper.Exit{Time: time.Now()})
		s.mu.Unlock()
	case starting:
		s.mu.Unlock()
		return fmt.Errorf("sandbox %s is starting: %w", s.pod.ID, errdefs.ErrFailedPrecondition)
	case ready:
		proc, stopped := s.run.proc, s.stopped
		s.ending = true
		s.mu.Unlock()
		if err := proc.Stop(ctx, timeout, stopped); err != nil {
			return fmt.Errorf("stop sandbox %s: %w", s.pod.ID, err)
		}
	default:
		s.mu.Unlock()
	}
	return s.files.UnmountShm()
}

// Wait returns the holder's exit once the sandbox has stopped (status 0,
// no pid, for a pod without a holder).
func (s *Sandbox) Wait(ctx context.Context) (reaper.Exit, error) {
	s.mu.Lock()
	stopped := s.stopped
	s.mu.Unlock()
	select {
	case <-stopped:
	case <-ctx.Done():
		return reaper.Exit{}, ctx.Err()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exit, nil
}

// Status is the sandbox's state now.
func (s *Sandbox) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{Phase: s.phase, StartedAt: s.startedAt}
	if s.phase == ready {
		st.Pid = s.run.proc.Pid()
	}
	if s.isStopped {
		e := s.exit
		st.Exit = &e
	}
	return st
}

// Shutdown releases everything the sandbox holds: its namespaces (let go
// if still kept), the pod's files and shared memory. Shutting down twice does
// nothing.
func (s *Sandbox) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	switch s.phase {
	case shutDown:
		s.mu.Unlock()
		return nil
	case starting:
		s.mu.Unlock()
		return fmt.Errorf("sandbox %s is starting: %w", s.pod.ID, errdefs.ErrFailedPrecondition)
	case ready:
		proc, stopped := s.run.proc, s.stopped
		s.ending = true
		s.mu.Unlock()
		if err := proc.Stop(ctx, stopGrace, stopped); err != nil {
			return fmt.Errorf("shut down sandbox %s: %w", s.pod.ID, err)
		}
		s.mu.Lock()
	}
	// Never started, or stopped: nothing runs any more.
	s.stopLocked(reaper.Exit{Time: time.Now()})
	s.phase = shutDown
	s.mu.Unlock()
	return errors.Join(cgroup.RemoveDirs(s.rec.holderCgroups()), s.files.Remove())
}

// podCgroup is the pod's cgroup parent, which holds all
// its containers: its statistics are the pod's, as containerd's own pod
// sandbox controller reports them.
func (s *Sandbox) podCgroup() (cgroup.Cgroup, error) {
	if s.pod.CgroupParent == "" {
		return nil, fmt.Errorf("sandbox %s has no cgroup parent: %w", s.pod.ID, errdefs.ErrFailedPrecondition)
	}
	return s.env.Cgroups.LoadParent(s.pod.CgroupParent)
}
