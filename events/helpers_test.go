package events

import (
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	runc "github.com/containerd/go-runc"

	taskevents "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/eventsapi"
)

// execMonitor is a minimal runc.ProcessMonitor over os/exec: it starts the
// publish binary and waits for it, as the shim's reaper does for real. Kept
// here so the tests depend on go-runc's interface, not on the reaper.
type execMonitor struct{}

func (execMonitor) Start(c *exec.Cmd) (chan runc.Exit, error) {
	if err := c.Start(); err != nil {
		return nil, err
	}
	ec := make(chan runc.Exit, 1)
	go func() {
		_ = c.Wait()
		ec <- runc.Exit{Pid: c.Process.Pid, Status: c.ProcessState.ExitCode(), Timestamp: time.Now()}
		close(ec)
	}()
	return ec, nil
}

func (m execMonitor) StartLocked(c *exec.Cmd) (chan runc.Exit, error) { return m.Start(c) }

func (execMonitor) Wait(_ *exec.Cmd, ec chan runc.Exit) (int, error) {
	e, ok := <-ec
	if !ok {
		return -1, errors.New("exit channel closed without an exit")
	}
	return e.Status, nil
}

// fakeTransport is containerd as a test scripts it. Its fields other than
// inUse are deliberately unsynchronised: only the sender may use the
// transport, so the race detector reports a second one. Tests read them
// after Flush, which orders them after the sender's last use.
type fakeTransport struct {
	// answer returns forward's result for env; nil takes every event.
	answer func(env *eventsapi.Envelope) error
	// onClose, if set, runs inside close.
	onClose func()

	got      []*eventsapi.Envelope // events taken, in order
	attempts map[string]int        // forward calls per event (see eventName)
	ops      []string              // "forward" and "close", in order
	inUse    atomic.Int32
	overlap  atomic.Bool // set if two calls ever ran at once
}

func (f *fakeTransport) enter() func() {
	if f.inUse.Add(1) != 1 {
		f.overlap.Store(true)
	}
	return func() { f.inUse.Add(-1) }
}

func (f *fakeTransport) forward(_ context.Context, env *eventsapi.Envelope) error {
	defer f.enter()()
	f.ops = append(f.ops, "forward")
	if f.attempts == nil {
		f.attempts = make(map[string]int)
	}
	f.attempts[eventName(env)]++
	if f.answer != nil {
		if err := f.answer(env); err != nil {
			return err
		}
	}
	f.got = append(f.got, env)
	return nil
}

func (f *fakeTransport) close() {
	defer f.enter()()
	f.ops = append(f.ops, "close")
	if f.onClose != nil {
		f.onClose()
	}
}

// names returns the names of the events taken, in order.
func (f *fakeTransport) names(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, env := range f.got {
		names = append(names, eventName(env))
	}
	return names
}

// eventName identifies a test event: its topic and what tells it apart.
func eventName(env *eventsapi.Envelope) string {
	msg, err := env.GetEvent().UnmarshalNew()
	if err != nil {
		return env.GetTopic() + " (unreadable)"
	}
	switch ev := msg.(type) {
	case *taskevents.TaskExit:
		return "exit " + ev.GetContainerId() + "/" + ev.GetId()
	case *taskevents.TaskOOM:
		return "oom " + ev.GetContainerId()
	case *taskevents.TaskPaused:
		return "paused " + ev.GetContainerId()
	case *taskevents.TaskResumed:
		return "resumed " + ev.GetContainerId()
	case *taskevents.TaskCreate:
		return "create " + ev.GetContainerId()
	case *taskevents.TaskExecAdded:
		return "exec-added " + ev.GetContainerId() + "/" + ev.GetExecId()
	}
	return env.GetTopic()
}

// testPublisher returns a Publisher over tr whose backoff waits are recorded
// (and, if gate is set, run it) instead of sleeping.
func testPublisher(t *testing.T, cfg Config, tr transport, gate func(time.Duration)) (*Publisher, *logRecorder, *[]time.Duration) {
	t.Helper()
	logs := &logRecorder{}
	if cfg.Log == nil {
		cfg.Log = slog.New(logs)
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "ns"
	}
	p := newPublisher(cfg, tr)
	waits := new([]time.Duration)
	p.wait = func(d time.Duration, _ <-chan struct{}) {
		*waits = append(*waits, d)
		if gate != nil {
			gate(d)
		}
	}
	return p, logs, waits
}

// publishTogether queues what publish publishes before the sender sees any
// of it: a sender that drained the queue between two Publishes would close
// its (idle) connection in between.
func publishTogether(t *testing.T, p *Publisher, publish func()) {
	t.Helper()
	if err := p.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	publish()
	p.Resume()
}

// flush waits for the publisher to drain, failing the test after a while
// rather than hanging it.
func flush(t *testing.T, p *Publisher) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// queuedBytes is the queue's size as charged against its bound.
func (p *Publisher) queuedBytes() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.queue.bytes
}

// logRecorder is a slog handler keeping every record.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }

func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r.Clone())
	l.mu.Unlock()
	return nil
}

// find returns the attributes of the records at level, as strings.
func (l *logRecorder) find(level slog.Level) []map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var found []map[string]string
	for _, r := range l.records {
		if r.Level != level {
			continue
		}
		attrs := map[string]string{"msg": r.Message}
		r.Attrs(func(a slog.Attr) bool {
			attrs[a.Key] = a.Value.String()
			return true
		})
		found = append(found, attrs)
	}
	return found
}
