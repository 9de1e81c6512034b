package events

import (
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/proto/eventsapi"
)

// entryOverhead is what one queued event costs beyond its marshalled size:
// the entry, the envelope, its timestamp and Any, and the queue slot. It is
// charged so that the byte bound bounds memory, not just payload: a TaskOOM
// marshals to some 60 bytes but occupies several hundred.
const entryOverhead = 320

// entry is one event waiting for containerd.
type entry struct {
	env *eventsapi.Envelope
	// size is the bytes charged for the entry against the queue's bound.
	size int
	// notice is set for events that may be coalesced or dropped.
	notice bool
	// key groups notices that coalesce; zero for events that never do.
	key coalesceKey
	// inFlight is set while the sender is handing the entry to the
	// transport: it is then neither coalesced into nor dropped.
	inFlight bool
	// rejections counts the times containerd refused the entry.
	rejections int
}

// coalesceKey names the notices of one container that are alike: OOMs are
// one kind, pause and resume another (see queue.push for why).
type coalesceKey struct {
	kind      string
	container string
}

// newEntry wraps env for the queue, classifying it by topic. Topics this
// package does not know are lifecycle events: never dropped is the safe side.
func newEntry(env *eventsapi.Envelope, ev proto.Message) *entry {
	e := &entry{env: env, size: proto.Size(env) + entryOverhead}
	var kind string
	switch env.GetTopic() {
	case TopicOOM:
		kind = "oom"
	case TopicPaused, TopicResumed:
		kind = "pause"
	default:
		return e
	}
	e.notice = true
	if c, ok := ev.(interface{ GetContainerId() string }); ok {
		e.key = coalesceKey{kind: kind, container: c.GetContainerId()}
	}
	return e
}

// queue holds events in the order they were published, bounded in bytes by
// dropping notices, never lifecycle events. It is not safe for concurrent
// use; the Publisher guards it with its mutex.
type queue struct {
	maxBytes int
	// entries are waiting events, oldest first; entries[0] is the one the
	// sender works on. A slot an entry leaves is set to nil so the backing
	// array does not keep the event alive.
	entries []*entry
	// bytes is the sum of the sizes of entries.
	bytes int
	// latest maps a coalesce key to the newest queued notice with that key.
	// Allocated on first use, released when the queue empties.
	latest map[coalesceKey]*entry
	// coalesced and dropped count notices since takeCounts last ran.
	coalesced, dropped int
}

// push queues e, unless it coalesces into a queued notice, then drops the
// oldest notices while the queue is over its bound. It reports how many
// notices it dropped.
func (q *queue) push(e *entry) (dropped int) {
	if e.key != (coalesceKey{}) {
		// An OOM adds nothing to an OOM of the same container that is still
		// waiting: containerd will hear that the container hit its limit.
		// Pause and resume share a key and coalesce only into a notice of
		// the same topic, so that "paused, resumed, paused" keeps all three
		// and containerd ends with the right state. One in flight may
		// already be delivered, so nothing coalesces into it.
		if prev := q.latest[e.key]; prev != nil && !prev.inFlight && prev.env.GetTopic() == e.env.GetTopic() {
			q.coalesced++
			return 0
		}
		if q.latest == nil {
			q.latest = make(map[coalesceKey]*entry)
		}
		q.latest[e.key] = e
	}
	q.entries = append(q.entries, e)
	q.bytes += e.size
	if q.bytes > q.maxBytes {
		return q.dropOldestNotices()
	}
	return 0
}

// dropOldestNotices drops notices, oldest first, until the queue is within
// its bound or only lifecycle events (and the one in flight) are left.
func (q *queue) dropOldestNotices() (dropped int) {
	kept := 0
	for _, e := range q.entries {
		if q.bytes > q.maxBytes && e.notice && !e.inFlight {
			q.bytes -= e.size
			q.forget(e)
			dropped++
			continue
		}
		q.entries[kept] = e
		kept++
	}
	clear(q.entries[kept:])
	q.entries = q.entries[:kept]
	q.dropped += dropped
	return dropped
}

// head returns the oldest entry, or nil when the queue is empty.
func (q *queue) head() *entry {
	if len(q.entries) == 0 {
		return nil
	}
	return q.entries[0]
}

// popHead removes the oldest entry. When the queue empties its backing
// array and map are released: an idle shim keeps no queue memory.
func (q *queue) popHead() {
	e := q.entries[0]
	q.entries[0] = nil
	q.entries = q.entries[1:]
	q.bytes -= e.size
	q.forget(e)
	if len(q.entries) == 0 {
		q.entries = nil
		q.latest = nil
	}
}

// forget removes e from latest if it is there.
func (q *queue) forget(e *entry) {
	if e.key != (coalesceKey{}) && q.latest[e.key] == e {
		delete(q.latest, e.key)
	}
}

// len returns the number of queued entries.
func (q *queue) len() int { return len(q.entries) }

// takeCounts returns and resets the coalesced and dropped counts.
func (q *queue) takeCounts() (coalesced, dropped int) {
	coalesced, dropped = q.coalesced, q.dropped
	q.coalesced, q.dropped = 0, 0
	return coalesced, dropped
}
