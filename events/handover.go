package events

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/proto/eventsapi"
)

// The queue can be written down and taken back by the next process when
// the shim re-executes itself in place: sending pauses between two events
// (an event being forwarded is finished first, so none is sent twice), and
// the next process delivers what is left, in order.

// Pause stops sending after the event in flight, if any, and waits until
// the sender has stopped or ctx ends. Publish still queues.
func (p *Publisher) Pause(ctx context.Context) error {
	p.mu.Lock()
	if p.paused {
		p.mu.Unlock()
		return nil
	}
	p.paused = true
	close(p.pausing) // wakes a sender waiting between attempts
	if !p.sending {
		p.mu.Unlock()
		return nil
	}
	gone := make(chan struct{})
	p.senderGone = gone
	p.mu.Unlock()
	select {
	case <-gone:
		return nil
	case <-ctx.Done():
		// A pause that fails leaves the publisher as it was: sending.
		p.Resume()
		return fmt.Errorf("event sender did not pause: %w", ctx.Err())
	}
}

// Resume sends again after a Pause (a handover that was abandoned).
func (p *Publisher) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused {
		p.paused, p.pausing, p.senderGone = false, make(chan struct{}), nil
	}
	p.startSenderLocked()
}

// Queued writes down the events not delivered yet, in order (marshalled
// eventsapi.Envelope). Call it paused.
func (p *Publisher) Queued() ([][]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([][]byte, 0, p.queue.len())
	for _, e := range p.queue.entries {
		b, err := proto.Marshal(e.env)
		if err != nil {
			return nil, fmt.Errorf("write down queued event %s: %w", e.env.GetTopic(), err)
		}
		out = append(out, b)
	}
	return out, nil
}

// Requeue takes back events written down by Queued in a previous process
// and starts delivering them, before anything published later.
func (p *Publisher) Requeue(envs [][]byte) error {
	entries := make([]*entry, 0, len(envs))
	for _, b := range envs {
		var env eventsapi.Envelope
		if err := proto.Unmarshal(b, &env); err != nil {
			return fmt.Errorf("take back a queued event: %w", err)
		}
		entries = append(entries, newEntry(&env, nil))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range entries {
		p.queue.push(e)
	}
	p.startSenderLocked()
	return nil
}
