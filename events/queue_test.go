package events

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	taskevents "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/eventsapi"
)

// testEntry builds a queue entry as Publish does.
func testEntry(t *testing.T, topic string, ev proto.Message) *entry {
	t.Helper()
	a, err := anypb.New(ev)
	if err != nil {
		t.Fatal(err)
	}
	// anypb.New prefixes type.googleapis.com/; Publish does not, but the
	// queue does not care.
	return newEntry(&eventsapi.Envelope{Namespace: "ns", Topic: topic, Event: a}, ev)
}

func oom(t *testing.T, c string) *entry {
	return testEntry(t, TopicOOM, &taskevents.TaskOOM{ContainerId: c})
}

func paused(t *testing.T, c string) *entry {
	return testEntry(t, TopicPaused, &taskevents.TaskPaused{ContainerId: c})
}

func resumed(t *testing.T, c string) *entry {
	return testEntry(t, TopicResumed, &taskevents.TaskResumed{ContainerId: c})
}

func lifecycle(t *testing.T, c, id string) *entry {
	return testEntry(t, TopicExit, exit(c, id))
}

// names lists the queue's entries as eventName does.
func (q *queue) names() []string {
	var names []string
	for _, e := range q.entries {
		names = append(names, eventName(e.env))
	}
	return names
}

func TestQueueCoalescesRepeatedNotices(t *testing.T) {
	q := queue{maxBytes: 1 << 20}
	for _, e := range []*entry{
		oom(t, "a"), oom(t, "b"), oom(t, "a"), // the second OOM of a adds nothing
		paused(t, "a"), paused(t, "a"), // nor a second pause
		resumed(t, "a"), paused(t, "a"), // a change of state does: all kept
		lifecycle(t, "a", "x"),
		oom(t, "a"), // coalesces across lifecycle events: a's OOM is still waiting
	} {
		q.push(e)
	}
	want := []string{"oom a", "oom b", "paused a", "resumed a", "paused a", "exit a/x"}
	if got := q.names(); !slices.Equal(got, want) {
		t.Fatalf("queued %v, want %v", got, want)
	}
	if q.coalesced != 3 {
		t.Fatalf("coalesced %d, want 3", q.coalesced)
	}

	// Nothing coalesces into the entry being sent: it may already be delivered.
	q.head().inFlight = true
	q.push(oom(t, "a"))
	if got := q.names(); got[0] != "oom a" || got[len(got)-1] != "oom a" {
		t.Fatalf("queued %v, want a second OOM of a behind the one in flight", got)
	}
	q.head().inFlight = false
	q.popHead()
	q.push(oom(t, "a")) // coalesces into the new one
	want = []string{"oom b", "paused a", "resumed a", "paused a", "exit a/x", "oom a"}
	if got := q.names(); !slices.Equal(got, want) {
		t.Fatalf("queued %v, want %v", got, want)
	}
}

func TestQueueDropsTheOldestNoticesNeverLifecycle(t *testing.T) {
	first := []*entry{lifecycle(t, "a", "1"), oom(t, "a"), oom(t, "b"), lifecycle(t, "a", "2")}
	q := queue{}
	for _, e := range first {
		q.maxBytes += e.size // exactly full
	}
	for _, e := range first {
		q.push(e)
	}
	if q.dropped != 0 || q.bytes != q.maxBytes {
		t.Fatalf("dropped %d, %d bytes, before reaching the bound of %d", q.dropped, q.bytes, q.maxBytes)
	}
	q.push(oom(t, "c")) // over: oom a goes
	q.push(oom(t, "d")) // over: oom b goes
	want := []string{"exit a/1", "exit a/2", "oom c", "oom d"}
	if got := q.names(); !slices.Equal(got, want) {
		t.Fatalf("queued %v, want %v", got, want)
	}
	if q.dropped != 2 || q.bytes > q.maxBytes {
		t.Fatalf("dropped %d, %d bytes for a bound of %d", q.dropped, q.bytes, q.maxBytes)
	}

	// Lifecycle events alone may exceed the bound; then every notice goes,
	// the one just pushed included, and no lifecycle event.
	for i := range 6 {
		q.push(lifecycle(t, "b", string(rune('0'+i))))
	}
	q.push(oom(t, "e"))
	for _, name := range q.names() {
		if name[:4] == "oom " {
			t.Fatalf("queued %v: notices kept over the bound", q.names())
		}
	}
	if q.len() != 8 || q.dropped != 5 {
		t.Fatalf("%d queued (want the 8 lifecycle events), %d dropped (want 5)", q.len(), q.dropped)
	}
	if _, ok := q.latest[coalesceKey{"oom", "e"}]; ok || len(q.latest) != 0 {
		t.Fatalf("dropped notices still indexed for coalescing: %v", q.latest)
	}
}

func TestQueueDoesNotDropTheEntryInFlight(t *testing.T) {
	e := oom(t, "a")
	q := queue{maxBytes: e.size}
	q.push(e)
	e.inFlight = true
	q.push(oom(t, "b"))
	if got := q.names(); !slices.Equal(got, []string{"oom a"}) {
		t.Fatalf("queued %v, want the entry in flight kept", got)
	}
}

// TestQueueClearsTheSlotsItLeaves: the backing array must not keep a
// delivered or dropped event alive.
func TestQueueClearsTheSlotsItLeaves(t *testing.T) {
	q := queue{maxBytes: 1 << 20}
	for i := range 8 {
		q.push(lifecycle(t, "a", string(rune('0'+i))))
	}
	backing := q.entries[:cap(q.entries)]
	q.popHead()
	q.popHead()
	if backing[0] != nil || backing[1] != nil {
		t.Fatal("popped slots still point at their events")
	}

	q = queue{maxBytes: 1 << 20}
	for _, c := range []string{"a", "b", "c", "d"} {
		q.push(oom(t, c))
	}
	q.push(lifecycle(t, "a", "1"))
	backing = q.entries[:cap(q.entries)]
	q.maxBytes = q.bytes - 1 // the next push drops two notices
	q.push(lifecycle(t, "a", "2"))
	if got := q.names(); !slices.Equal(got, []string{"oom c", "oom d", "exit a/1", "exit a/2"}) {
		t.Fatalf("queued %v", got)
	}
	for i := q.len(); i < len(backing); i++ {
		if backing[i] != nil {
			t.Fatalf("slot %d left by a dropped notice still points at an event", i)
		}
	}

	for q.len() > 0 {
		q.popHead()
	}
	if q.entries != nil || q.latest != nil || q.bytes != 0 {
		t.Fatal("an empty queue still holds memory")
	}
}
