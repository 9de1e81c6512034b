package events

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	taskevents "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/eventsapi"
)

// TestQueueMovesToTheNextProcess: paused while an event is being forwarded,
// the publisher lets that one finish (it is not sent twice); the events
// left are written down in order, and a publisher of the next process
// delivers them before anything published after it took them back.
func TestQueueMovesToTheNextProcess(t *testing.T) {
	inFlight, release := make(chan struct{}), make(chan struct{})
	old := &fakeTransport{answer: func(env *eventsapi.Envelope) error {
		if eventName(env) == "exit c/a" {
			close(inFlight)
			<-release
		}
		return nil
	}}
	p, _, _ := testPublisher(t, Config{}, old, nil)
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "a"})
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "b"})
	p.Publish(TopicOOM, &taskevents.TaskOOM{ContainerId: "c"})
	<-inFlight
	paused := make(chan error, 1)
	go func() { paused <- p.Pause(context.Background()) }()
	for !p.isPaused() {
		time.Sleep(time.Millisecond) // until the pause is asked for
	}
	close(release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	p.Publish(TopicDelete, &taskevents.TaskDelete{ContainerId: "c"}) // queued while paused
	queued, err := p.Queued()
	if err != nil {
		t.Fatal(err)
	}
	if got := old.names(t); !slices.Equal(got, []string{"exit c/a"}) {
		t.Fatalf("old process delivered %v", got)
	}

	next := &fakeTransport{}
	np, _, _ := testPublisher(t, Config{}, next, nil)
	if err := np.Requeue(queued); err != nil {
		t.Fatal(err)
	}
	np.Publish(TopicCreate, &taskevents.TaskCreate{ContainerId: "d"})
	flush(t, np)
	want := []string{"exit c/b", "oom c", TopicDelete, "create d"}
	if got := next.names(t); !slices.Equal(got, want) {
		t.Fatalf("next process delivered %v, want %v", got, want)
	}
}

// TestPauseWakesABackoff: a sender waiting between attempts (containerd
// away) pauses at once, and resumes where it was.
func TestPauseWakesABackoff(t *testing.T) {
	var away = true
	tr := &fakeTransport{answer: func(*eventsapi.Envelope) error {
		if away {
			return errors.New("dial: connection refused")
		}
		return nil
	}}
	p := newPublisher(Config{Namespace: "ns"}, tr)
	waiting := make(chan struct{}, 1)
	p.wait = func(d time.Duration, stop <-chan struct{}) {
		select {
		case waiting <- struct{}{}:
		default:
		}
		<-stop // an hour-long backoff, but for the pause
	}
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "c"})
	<-waiting
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	away = false // read by the sender only after Resume starts it
	p.wait = func(time.Duration, <-chan struct{}) {}
	p.Resume()
	flush(t, p)
	if got := tr.names(t); !slices.Equal(got, []string{"exit c/c"}) {
		t.Fatalf("delivered %v", got)
	}
}

func (p *Publisher) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused
}

// TestAPauseThatTimesOutLeavesThePublisherSending: an upgrade abandoned
// while an event to a slow containerd is in flight (its Pause ran out of
// time) must not leave the publisher paused: every later exit, delete and
// OOM would stay queued for good, and pods Running in Kubernetes.
func TestAPauseThatTimesOutLeavesThePublisherSending(t *testing.T) {
	inFlight, release := make(chan struct{}), make(chan struct{})
	tr := &fakeTransport{answer: func(env *eventsapi.Envelope) error {
		if eventName(env) == "exit c/a" {
			close(inFlight)
			<-release // containerd is slow to take it
		}
		return nil
	}}
	p, _, _ := testPublisher(t, Config{}, tr, nil)
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "a"})
	<-inFlight
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // the handover's budget is used up
	if err := p.Pause(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Pause = %v, want its context's error", err)
	}
	if p.isPaused() {
		t.Fatal("a failed Pause left the publisher paused")
	}
	close(release)
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "b"})
	p.Publish(TopicDelete, &taskevents.TaskDelete{ContainerId: "c"})
	flush(t, p)
	want := []string{"exit c/a", "exit c/b", TopicDelete}
	if got := tr.names(t); !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
}

// TestFlushReportsEventsHeldByAPause: a shim that exits while sending is
// paused must not be told its events were delivered.
func TestFlushReportsEventsHeldByAPause(t *testing.T) {
	tr := &fakeTransport{}
	p, _, _ := testPublisher(t, Config{}, tr, nil)
	if err := p.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "c"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush while paused with an event queued = %v, want it to say so at once", err)
	}
	p.Resume()
	flush(t, p)
	if got := tr.names(t); !slices.Equal(got, []string{"exit c/c"}) {
		t.Fatalf("delivered %v", got)
	}
}

// TestFlushWaitingWhenAPauseComesSaysSo: a Flush already waiting on the
// sender when a handover pauses it is woken, and reports what is held.
func TestFlushWaitingWhenAPauseComesSaysSo(t *testing.T) {
	inFlight, release := make(chan struct{}), make(chan struct{})
	tr := &fakeTransport{answer: func(env *eventsapi.Envelope) error {
		if eventName(env) == "exit c/a" {
			close(inFlight)
			<-release
		}
		return nil
	}}
	p, _, _ := testPublisher(t, Config{}, tr, nil)
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "a"})
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c", Id: "b"})
	<-inFlight
	flushed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		flushed <- p.Flush(ctx)
	}()
	paused := make(chan error, 1)
	go func() { paused <- p.Pause(context.Background()) }()
	for !p.isPaused() {
		time.Sleep(time.Millisecond) // until the pause is asked for
	}
	close(release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if err := <-flushed; err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush = %v, want it to report the event held by the pause", err)
	}
	p.Resume()
	flush(t, p)
}
