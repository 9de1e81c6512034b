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
