package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	taskevents "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/eventsapi"
)

// errUnreachable is what a transport returns while containerd is down.
var errUnreachable = fmt.Errorf("dial containerd: %w", ttrpc.ErrClosed)

func exit(container, id string) *taskevents.TaskExit {
	return &taskevents.TaskExit{ContainerId: container, Id: id, Pid: 42, ExitStatus: 137}
}

func TestPublisherDeliversInOrderThroughFailures(t *testing.T) {
	failures := 3
	tr := &fakeTransport{answer: func(*eventsapi.Envelope) error {
		if failures > 0 {
			failures--
			return errUnreachable
		}
		return nil
	}}
	p, _, waits := testPublisher(t, Config{Namespace: "ns"}, tr, nil)
	var want []string
	publishTogether(t, p, func() {
		for i := range 50 {
			id := fmt.Sprint(i)
			p.Publish(TopicExit, exit("c", id))
			want = append(want, "exit c/"+id)
		}
	})
	flush(t, p)

	if got := tr.names(t); !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	for _, env := range tr.got {
		if env.GetNamespace() != "ns" || env.GetTopic() != TopicExit || env.GetTimestamp() == nil {
			t.Fatalf("envelope %v", env)
		}
		if env.GetEvent().GetTypeUrl() != "containerd.events.TaskExit" {
			t.Fatalf("type url %q, want containerd's bare message name", env.GetEvent().GetTypeUrl())
		}
	}
	if want := []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}; !slices.Equal(*waits, want) {
		t.Fatalf("waited %v, want %v", *waits, want)
	}
	// Each unreachable attempt drops the connection; so does the drained queue.
	if tr.ops[len(tr.ops)-1] != "close" || slices.Index(tr.ops, "close") != 1 {
		t.Fatalf("transport ops %v: want a close after a failure and at the end", tr.ops)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sending || p.queue.entries != nil || p.queue.latest != nil {
		t.Fatal("an idle publisher still holds a sender or queue memory")
	}
}

func TestPublisherBackoffDoublesToItsCapAndResets(t *testing.T) {
	failures := 10
	tr := &fakeTransport{answer: func(*eventsapi.Envelope) error {
		if failures > 0 {
			failures--
			return errUnreachable
		}
		return nil
	}}
	p, _, waits := testPublisher(t, Config{}, tr, nil)
	p.Publish(TopicExit, exit("c", "a"))
	flush(t, p)
	ms := time.Millisecond
	want := []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5000 * ms, 5000 * ms, 5000 * ms}
	if !slices.Equal(*waits, want) {
		t.Fatalf("waited %v, want %v", *waits, want)
	}
	failures = 1
	p.Publish(TopicExit, exit("c", "b"))
	flush(t, p)
	if got := (*waits)[len(want):]; !slices.Equal(got, []time.Duration{50 * ms}) {
		t.Fatalf("after a delivery waited %v, want the backoff to start over at 50ms", got)
	}
}

// TestPublisherOverflowKeepsEveryLifecycleEvent: while containerd is away a
// flood of OOMs for many containers, with lifecycle events in between, goes
// far past the bound. The queue stays within it, and once containerd is back
// every lifecycle event arrives once, in order; OOMs were coalesced or
// dropped, the newest kept.
func TestPublisherOverflowKeepsEveryLifecycleEvent(t *testing.T) {
	down := true
	tr := &fakeTransport{answer: func(*eventsapi.Envelope) error {
		if down {
			return errUnreachable
		}
		return nil
	}}
	parked, resume := make(chan struct{}), make(chan struct{})
	first := true
	gate := func(time.Duration) {
		if first {
			first = false
			parked <- struct{}{}
			<-resume
		}
	}
	const maxBytes = 32 << 10
	p, logs, _ := testPublisher(t, Config{MaxBytes: maxBytes}, tr, gate)

	p.Publish(TopicCreate, &taskevents.TaskCreate{ContainerId: "c0", Bundle: "/run/bundle"})
	<-parked // the sender failed once and waits: nothing is in flight
	want := []string{"create c0"}
	const containers, ooms = 200, 20000
	var lastOOM string
	for i := range ooms {
		// Half the flood is one container's supervisor restarting its
		// child (coalesced), half is spread over too many to fit (dropped).
		c := "hot"
		if i%2 == 1 {
			c = fmt.Sprintf("c%d", i%containers)
		}
		p.Publish(TopicOOM, &taskevents.TaskOOM{ContainerId: c})
		lastOOM = "oom " + c
		if i%1000 == 0 {
			id := fmt.Sprint(i)
			p.Publish(TopicExecAdded, &taskevents.TaskExecAdded{ContainerId: c, ExecId: id})
			p.Publish(TopicExit, exit(c, id))
			want = append(want, "exec-added "+c+"/"+id, "exit "+c+"/"+id)
		}
		if b := p.queuedBytes(); b > maxBytes {
			t.Fatalf("after %d OOMs the queue holds %d bytes, over its bound of %d", i+1, b, maxBytes)
		}
	}
	p.mu.Lock()
	coalesced, dropped := p.queue.coalesced, p.queue.dropped
	p.mu.Unlock()

	// Set before resume is closed, so the sender sees it.
	down = false
	close(resume)
	flush(t, p)

	var lifecycle []string
	delivered := map[string]int{}
	oomsDelivered := 0
	for _, name := range tr.names(t) {
		delivered[name]++
		if name[:4] == "oom " {
			oomsDelivered++
			continue
		}
		lifecycle = append(lifecycle, name)
	}
	if !slices.Equal(lifecycle, want) {
		t.Fatalf("lifecycle events delivered:\n%v\nwant each once, in order:\n%v", lifecycle, want)
	}
	if coalesced == 0 || dropped == 0 {
		t.Fatalf("coalesced %d, dropped %d: the flood should have needed both", coalesced, dropped)
	}
	if oomsDelivered+coalesced+dropped != ooms {
		t.Fatalf("%d OOMs delivered + %d coalesced + %d dropped != %d published", oomsDelivered, coalesced, dropped, ooms)
	}
	if delivered[lastOOM] == 0 {
		t.Fatalf("the newest OOM (%s) was dropped; the oldest should go first", lastOOM)
	}
	var dropWarnings, summaries int
	for _, rec := range logs.find(slog.LevelWarn) {
		_, hasDropped := rec["dropped"]
		_, hasCoalesced := rec["coalesced"]
		switch {
		case hasDropped && hasCoalesced:
			summaries++
			if rec["dropped"] != fmt.Sprint(dropped) || rec["coalesced"] != fmt.Sprint(coalesced) {
				t.Errorf("summary %v, want dropped=%d coalesced=%d", rec, dropped, coalesced)
			}
		case hasDropped:
			dropWarnings++
		}
	}
	if dropWarnings != 1 || summaries != 1 {
		t.Fatalf("%d drop warnings and %d summaries logged, want one of each (not one per drop)", dropWarnings, summaries)
	}
}

// TestPublisherKeepsOneSender: an event published while the sender closes
// the transport of a drained queue must not start a second sender on the
// same transport; the first one takes it.
func TestPublisherKeepsOneSender(t *testing.T) {
	closing, proceed := make(chan struct{}), make(chan struct{})
	tr := &fakeTransport{}
	tr.onClose = func() {
		if len(tr.got) == 1 {
			closing <- struct{}{}
			<-proceed
		}
	}
	p, _, _ := testPublisher(t, Config{}, tr, nil)
	p.Publish(TopicExit, exit("c", "1"))
	<-closing // the queue is empty and the sender is closing the transport
	p.Publish(TopicExit, exit("c", "2"))
	close(proceed)
	flush(t, p)

	if tr.overlap.Load() {
		t.Fatal("two goroutines used the transport at once")
	}
	if got, want := tr.names(t), []string{"exit c/1", "exit c/2"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	if want := []string{"forward", "close", "forward", "close"}; !slices.Equal(tr.ops, want) {
		t.Fatalf("transport ops %v, want %v", tr.ops, want)
	}
}

func TestFlushEndsWithItsContext(t *testing.T) {
	down := true
	tr := &fakeTransport{answer: func(*eventsapi.Envelope) error {
		if down {
			return errUnreachable
		}
		return nil
	}}
	parked, resume := make(chan struct{}), make(chan struct{})
	p, _, _ := testPublisher(t, Config{}, tr, func(time.Duration) {
		parked <- struct{}{}
		<-resume
	})
	if err := p.Flush(context.Background()); err != nil {
		t.Fatalf("flush of an idle publisher: %v", err)
	}
	p.Publish(TopicExit, exit("c", "1"))
	<-parked
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Flush(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("flush with containerd away returned %v, want context.Canceled", err)
	}
	down = false
	close(resume)
	flush(t, p)
	if got := tr.names(t); !slices.Equal(got, []string{"exit c/1"}) {
		t.Fatalf("delivered %v", got)
	}
}

func TestPublishLeavesOutAnEventThatCannotBeMarshalled(t *testing.T) {
	tr := &fakeTransport{}
	p, logs, _ := testPublisher(t, Config{}, tr, nil)
	// Invalid UTF-8 in a proto3 string does not marshal.
	p.Publish(TopicOOM, &taskevents.TaskOOM{ContainerId: "\xff"})
	flush(t, p)
	if len(tr.got) != 0 || len(logs.find(slog.LevelError)) != 1 {
		t.Fatalf("delivered %d, logged %v", len(tr.got), logs.find(slog.LevelError))
	}
}
