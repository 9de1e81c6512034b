package sandbox

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
)

// fakeHolder is a holder without a process: the test says when it exits.
type fakeHolder struct {
	pidv   int
	onExit func(reaper.Exit)
	// hang keeps it from exiting when told to; only SIGKILL (after the
	// grace) ends it, with 137.
	hang bool

	mu     sync.Mutex
	exited bool // guarded by mu
	stops  int  // guarded by mu
}

func (f *fakeHolder) Pid() int { return f.pidv }

// exit delivers the holder's exit as the reaper would: once.
func (f *fakeHolder) exit(status int) {
	f.mu.Lock()
	done := f.exited
	f.exited = true
	f.mu.Unlock()
	if !done {
		f.onExit(reaper.Exit{Pid: f.pidv, Status: status, Time: time.Now()})
	}
}

func (f *fakeHolder) Stop(ctx context.Context, grace time.Duration, exited <-chan struct{}) error {
	f.mu.Lock()
	f.stops++
	f.mu.Unlock()
	if !f.hang {
		f.exit(0)
	} else {
		time.AfterFunc(grace, func() { f.exit(137) })
	}
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Handover writes the fake down: it has no descriptors.
func (f *fakeHolder) Handover() (*upgradepb.Holder, error) {
	return &upgradepb.Holder{Pid: int32(f.pidv), Pidfd: -1, LifelineFd: -1}, nil
}

// fakeEnv launches fake holders with pids from 100 on; launchErr, if set,
// fails the next launch.
type fakeEnv struct {
	mu        sync.Mutex
	holders   []*fakeHolder
	launchErr error
	hang      bool
	// noHolder launches keepers without a process (pid 0), as a pod whose
	// containers do not share a pid namespace has.
	noHolder bool
	// beforeReady runs after the holder is started and before the launch
	// returns (a holder that dies as it starts).
	beforeReady func(*fakeHolder)
}

func (e *fakeEnv) env() *Env {
	return &Env{Log: slog.New(slog.DiscardHandler), launch: func(p Pod, onExit func(reaper.Exit)) (keeper, error) {
		e.mu.Lock()
		h := &fakeHolder{pidv: 100 + len(e.holders), onExit: onExit, hang: e.hang}
		if e.noHolder {
			h.pidv = 0
		}
		e.holders = append(e.holders, h)
		err, before := e.launchErr, e.beforeReady
		e.launchErr = nil
		e.mu.Unlock()
		if before != nil {
			before(h)
		}
		h.mu.Lock()
		died := h.exited
		h.mu.Unlock()
		if err == nil && died {
			// The real holder's ready pipe then reads EOF.
			err = errors.New("holder exited before it was ready")
		}
		if err != nil {
			h.exit(137) // killed by the failed start
			return nil, err
		}
		return h, nil
	}}
}

func (e *fakeEnv) holder(i int) *fakeHolder {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.holders[i]
}

func newTestSandbox(t *testing.T, e *fakeEnv) *Sandbox {
	return newSandbox(Pod{ID: "pod1", Bundle: t.TempDir()}, e.env())
}

// waitStopped waits for the sandbox's Wait to return, as WaitSandbox does.
func waitStopped(t *testing.T, s *Sandbox) reaper.Exit {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e, err := s.Wait(ctx)
	if err != nil {
		t.Fatalf("wait: %v", err)
	}
	return e
}

// TestSandboxLifecycle: created, started (the holder's pid), waited on
// while ready, stopped (the holder's exit ends the wait), stopped again
// (nothing), shut down (twice).
func TestSandboxLifecycle(t *testing.T) {
	e := &fakeEnv{}
	s := newTestSandbox(t, e)
	if st := s.Status(); st.Phase != created || st.Pid != 0 || st.Exit != nil {
		t.Fatalf("new sandbox %+v", st)
	}
	ctx := context.Background()
	pid, at, err := s.Start(ctx)
	if err != nil || pid != 100 || at.IsZero() {
		t.Fatalf("start: %d %v %v", pid, at, err)
	}
	if again, _, err := s.Start(ctx); err != nil || again != pid {
		t.Fatalf("second start: %d %v, want the same holder", again, err)
	}
	if st := s.Status(); st.Phase != ready || st.Pid != 100 || !st.StartedAt.Equal(at) {
		t.Fatalf("ready sandbox %+v", st)
	}
	waited := make(chan reaper.Exit, 1)
	go func() { waited <- waitStopped(t, s) }()
	select {
	case e := <-waited:
		t.Fatalf("wait returned while ready: %+v", e)
	case <-time.After(20 * time.Millisecond):
	}
	if err := s.Stop(ctx, 0); err != nil {
		t.Fatal(err)
	}
	// Stop returns once the exit is in: the status says so at once.
	if st := s.Status(); st.Phase != stopped || st.Pid != 0 || st.Exit == nil || st.Exit.Status != 0 {
		t.Fatalf("stopped sandbox %+v", st)
	}
	if e := <-waited; e.Pid != 100 || e.Status != 0 {
		t.Fatalf("wait: %+v", e)
	}
	if err := s.Stop(ctx, 0); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if e.holder(0).stops != 1 {
		t.Fatalf("holder told to stop %d times", e.holder(0).stops)
	}
	if _, _, err := s.Start(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("start after stop: %v", err)
	}
	for range 2 {
		if err := s.Shutdown(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Status(); st.Phase != shutDown {
		t.Fatalf("after shutdown %+v", st)
	}
}

// TestHolderDyingEndsTheSandbox: a holder that exits on its own stops the
// sandbox with its status; WaitSandbox returns it.
func TestHolderDyingEndsTheSandbox(t *testing.T) {
	e := &fakeEnv{}
	s := newTestSandbox(t, e)
	if _, _, err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.holder(0).exit(137)
	if ex := waitStopped(t, s); ex.Status != 137 {
		t.Fatalf("exit %+v", ex)
	}
	if st := s.Status(); st.Phase != stopped || st.Exit.Status != 137 {
		t.Fatalf("status %+v", st)
	}
	if err := s.Stop(context.Background(), 0); err != nil {
		t.Fatalf("stop of a stopped sandbox: %v", err)
	}
}

// TestFailedStartLeavesTheSandboxCreated: a holder that cannot start, or
// dies as it starts, leaves the sandbox as it was (its late exit counts
// for nothing); the next start works.
func TestFailedStartLeavesTheSandboxCreated(t *testing.T) {
	e := &fakeEnv{launchErr: errors.New("no namespace")}
	s := newTestSandbox(t, e)
	ctx := context.Background()
	if _, _, err := s.Start(ctx); err == nil {
		t.Fatal("a failed launch started")
	}
	e.beforeReady = func(h *fakeHolder) { h.exit(1) }
	if _, _, err := s.Start(ctx); err == nil {
		t.Fatal("a holder that died as it started made the sandbox ready")
	}
	e.beforeReady = nil
	if st := s.Status(); st.Phase != created || st.Exit != nil {
		t.Fatalf("after failed starts %+v", st)
	}
	pid, _, err := s.Start(ctx)
	if err != nil || pid != 102 {
		t.Fatalf("third start: %d %v", pid, err)
	}
	// The first holders' exits came long ago; they changed nothing.
	if st := s.Status(); st.Phase != ready {
		t.Fatalf("status %+v", st)
	}
}

// TestStopKillsAHolderThatStays: a holder that does not exit when told is
// killed after the grace; a context that ends first ends the wait.
func TestStopKillsAHolderThatStays(t *testing.T) {
	e := &fakeEnv{hang: true}
	s := newTestSandbox(t, e)
	if _, _, err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.Stop(ctx, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("stop past its context: %v", err)
	}
	if err := s.Stop(context.Background(), 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if st := s.Status(); st.Phase != stopped || st.Exit.Status != 137 {
		t.Fatalf("status %+v", st)
	}
}

// TestStopOrShutdownWithoutAHolder: a sandbox never started stops (and
// its waiters return) and shuts down without a holder.
func TestStopOrShutdownWithoutAHolder(t *testing.T) {
	s := newTestSandbox(t, &fakeEnv{})
	waited := make(chan reaper.Exit, 1)
	go func() { waited <- waitStopped(t, s) }()
	if err := s.Stop(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if ex := <-waited; ex.Status != 0 || ex.Time.IsZero() {
		t.Fatalf("wait %+v", ex)
	}
	s = newTestSandbox(t, &fakeEnv{})
	go func() { waited <- waitStopped(t, s) }()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-waited
	if _, _, err := s.Start(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("start after shutdown: %v", err)
	}
}

// TestShutdownEndsARunningHolder: ShutdownSandbox without a StopSandbox
// first still ends the holder.
func TestShutdownEndsARunningHolder(t *testing.T) {
	e := &fakeEnv{}
	s := newTestSandbox(t, e)
	if _, _, err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if e.holder(0).stops != 1 || !e.holder(0).exited {
		t.Fatal("holder left running by shutdown")
	}
	if st := s.Status(); st.Phase != shutDown || st.Exit == nil {
		t.Fatalf("status %+v", st)
	}
}

// TestWaitHonoursItsContext: a WaitSandbox whose caller gives up returns.
func TestWaitHonoursItsContext(t *testing.T) {
	s := newTestSandbox(t, &fakeEnv{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait: %v", err)
	}
}
