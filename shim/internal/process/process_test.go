package process

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/stdio"
)

// fakeLife is a lifecycle whose runtime calls only record themselves; a
// start can be held until the test releases it.
type fakeLife struct {
	startGate chan struct{} // nil: starts at once
	starting  chan struct{} // closed when a start has begun
	kills     []syscall.Signal
}

func (l *fakeLife) Start(ctx context.Context, p *Process) (Started, error) {
	if l.starting != nil {
		close(l.starting)
	}
	if l.startGate != nil {
		<-l.startGate
	}
	return Started{Pid: 4242, Pidfd: -1}, nil
}

func (l *fakeLife) Kill(_ context.Context, _ *Process, sig syscall.Signal, _ bool) error {
	l.kills = append(l.kills, sig)
	return nil
}

func (l *fakeLife) Delete(context.Context, *Process, bool) error { return nil }
func (l *fakeLife) KilledStatus() int                            { return 137 }

// announced records the ops a process announced, in order.
type announced struct{ ops []Op }

func (a *announced) announce(_ Snapshot, o Op, _ string) { a.ops = append(a.ops, o) }

func (a *announced) String() string {
	var s []string
	for _, o := range a.ops {
		s = append(s, string(o))
	}
	return strings.Join(s, ",")
}

// newTestProcess returns a created process driven by life.
func newTestProcess(life Lifecycle) (*Process, *announced) {
	a := &announced{}
	p := New("c", "", stdio.Paths{}, life, a.announce, slog.Default())
	p.transition <- struct{}{}
	p.commit(OpCreate, "", nil)
	p.endTransition()
	return p, a
}

// TestALifeAnnouncesEachStepOnceInOrder: create, start, pause, resume, exit,
// delete each announce themselves once, and the process ends deleted.
func TestALifeAnnouncesEachStepOnceInOrder(t *testing.T) {
	p, a := newTestProcess(&fakeLife{})
	ctx := context.Background()
	if _, err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	noop := func() (string, error) { return "", nil }
	if err := p.Transact(ctx, OpPause, noop); err != nil {
		t.Fatal(err)
	}
	if err := p.Transact(ctx, OpResume, noop); err != nil {
		t.Fatal(err)
	}
	p.Stop(reaper.Exit{Pid: 4242, Status: 3, Time: time.Now()})
	if code, _, _ := p.Wait(ctx); code != 3 {
		t.Fatalf("wait: %d", code)
	}
	if _, err := p.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	if got := a.String(); got != "create,start,pause,resume,exit,delete" {
		t.Fatalf("announced %s", got)
	}
	if st := p.State(); st.State != Deleted || st.ExitStatus != 3 {
		t.Fatalf("ended %v with %d", st.State, st.ExitStatus)
	}
}

// TestWhatAStateRefuses: what each stage of a life refuses, and with which
// kind of error (containerd reads NotFound from a kill as "already gone").
func TestWhatAStateRefuses(t *testing.T) {
	ctx := context.Background()
	noop := func() (string, error) { return "", nil }
	p, _ := newTestProcess(&fakeLife{})
	if err := p.Transact(ctx, OpPause, noop); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("pause of a created process: %v", err)
	}
	p.Start(ctx)
	if _, err := p.Start(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("second start: %v", err)
	}
	if _, err := p.Delete(ctx); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("delete of a running process: %v", err)
	}
	p.Transact(ctx, OpPause, noop)
	if err := p.Allows(OpExec); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("exec into a paused process: %v", err)
	}
	if err := p.Kill(ctx, 9, false); err != nil {
		t.Errorf("kill of a paused process: %v", err)
	}
	p.Stop(reaper.Exit{Status: 137, Time: time.Now()})
	if err := p.Kill(ctx, 9, false); !errdefs.IsNotFound(err) {
		t.Errorf("kill of a stopped process: %v", err)
	}
	if err := p.Transact(ctx, OpResume, noop); !errdefs.IsFailedPrecondition(err) {
		t.Errorf("resume of a stopped process: %v", err)
	}
	p.Delete(ctx)
	for name, err := range map[string]error{
		"kill":   p.Kill(ctx, 9, false),
		"resize": p.Resize(80, 24),
		"close":  p.CloseIO(),
	} {
		if !errdefs.IsNotFound(err) {
			t.Errorf("%s of a deleted process: %v", name, err)
		}
	}
	if _, err := p.Delete(ctx); !errdefs.IsNotFound(err) {
		t.Errorf("second delete: %v", err)
	}
}

// TestLookingNeverWaitsForARuntimeCall: while a start's runtime call hangs,
// State, Kill and Wait answer at once from what the process knows.
func TestLookingNeverWaitsForARuntimeCall(t *testing.T) {
	life := &fakeLife{startGate: make(chan struct{}), starting: make(chan struct{})}
	p, _ := newTestProcess(life)
	done := make(chan error, 1)
	go func() { _, err := p.Start(context.Background()); done <- err }()
	<-life.starting
	if st := p.State(); st.State != Created {
		t.Errorf("state during start: %v", st.State)
	}
	if err := p.Kill(context.Background(), 15, false); err != nil {
		t.Errorf("kill during start: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, _, err := p.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("wait during start: %v", err)
	}
	// A second transition waits, but only as long as its request does.
	if _, err := p.Delete(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("delete during start: %v", err)
	}
	close(life.startGate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestAnExitDuringStartIsAnnouncedAfterTheStart: a process that exits while
// its start's runtime call is still running announces its start first.
func TestAnExitDuringStartIsAnnouncedAfterTheStart(t *testing.T) {
	life := &fakeLife{startGate: make(chan struct{}), starting: make(chan struct{})}
	p, a := newTestProcess(life)
	done := make(chan error, 1)
	go func() { _, err := p.Start(context.Background()); done <- err }()
	<-life.starting
	stopped := make(chan struct{})
	go func() { p.Stop(reaper.Exit{Status: 0, Time: time.Now()}); close(stopped) }()
	close(life.startGate)
	<-done
	<-stopped
	if got := a.String(); got != "create,start,exit" {
		t.Fatalf("announced %s", got)
	}
}
