package events

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/proto/eventsapi"
)

// Event topics, as containerd names them.
const (
	TopicCreate       = "/tasks/create"
	TopicStart        = "/tasks/start"
	TopicExit         = "/tasks/exit"
	TopicDelete       = "/tasks/delete"
	TopicExecAdded    = "/tasks/exec-added"
	TopicExecStarted  = "/tasks/exec-started"
	TopicPaused       = "/tasks/paused"
	TopicResumed      = "/tasks/resumed"
	TopicOOM          = "/tasks/oom"
	TopicCheckpointed = "/tasks/checkpointed"
)

const (
	defaultMaxBytes      = 4 << 20
	defaultMaxRejections = 5
	firstBackoff         = 50 * time.Millisecond
	maxBackoff           = 5 * time.Second
	// forwardTimeout bounds one delivery attempt, so that a containerd that
	// accepted the connection but hangs counts as unreachable.
	forwardTimeout = 5 * time.Second
)

// Config says where events go and how much may wait for containerd.
type Config struct {
	Namespace string
	// TTRPCAddress is containerd's ttrpc socket (TTRPC_ADDRESS); if empty
	// the publish binary is used.
	TTRPCAddress string
	// PublishBinary is the containerd binary, run as
	// `<bin> --address A publish --topic T --namespace N` with the event on stdin.
	PublishBinary string
	// Address is containerd's GRPC address for the publish binary.
	Address string
	// Monitor starts and reaps the publish binary; nil means go-runc's
	// runc.Monitor, which the shim sets to its reaper.
	Monitor runc.ProcessMonitor
	Log     *slog.Logger
	// MaxBytes bounds the queue in bytes; 0 means 4 MiB.
	MaxBytes int
	// MaxRejections is how many times containerd may refuse one event
	// before it is skipped; 0 means 5.
	MaxRejections int
}

// Publisher delivers events to containerd one at a time, in the order they
// were published, retrying each until containerd takes it or has refused it
// Config.MaxRejections times. Its sender goroutine runs only while events
// are waiting; at most one runs at a time, and only it uses the transport.
// It is safe for concurrent use.
type Publisher struct {
	namespace     string
	transport     transport
	log           *slog.Logger
	maxRejections int
	// wait pauses the sender between attempts, or until stop is closed;
	// tests replace it so they need not sleep.
	wait func(d time.Duration, stop <-chan struct{})

	mu sync.Mutex
	// queue holds the events containerd has not taken yet. Guarded by mu.
	queue queue
	// sending is set while the sender goroutine runs; it is set whenever
	// the queue is not empty. Guarded by mu.
	sending bool
	// warnedDrop is set once a drop was logged, until the counts are
	// reported, so that a flood logs once. Guarded by mu.
	warnedDrop bool
	// idle, made by a waiting Flush, is closed once the sender stopped.
	// Guarded by mu.
	idle chan struct{}
	// paused stops sending (for a handover to the next process); pausing
	// is closed when a pause begins (and replaced when sending resumes),
	// senderGone once the sender has stopped. Guarded by mu.
	paused     bool
	pausing    chan struct{}
	senderGone chan struct{}
}

// New returns a Publisher that sends over containerd's ttrpc socket when
// cfg.TTRPCAddress is set, else by running cfg.PublishBinary.
func New(cfg Config) *Publisher {
	var t transport
	if cfg.TTRPCAddress != "" {
		t = newTTRPCTransport(cfg.TTRPCAddress)
	} else {
		monitor := cfg.Monitor
		if monitor == nil {
			monitor = runc.Monitor
		}
		t = &binaryTransport{binary: cfg.PublishBinary, address: cfg.Address, monitor: monitor}
	}
	return newPublisher(cfg, t)
}

// newPublisher returns a Publisher sending over t.
func newPublisher(cfg Config, t transport) *Publisher {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = defaultMaxBytes
	}
	if cfg.MaxRejections <= 0 {
		cfg.MaxRejections = defaultMaxRejections
	}
	return &Publisher{
		namespace:     cfg.Namespace,
		transport:     t,
		log:           cfg.Log,
		maxRejections: cfg.MaxRejections,
		wait:          sleep,
		queue:         queue{maxBytes: cfg.MaxBytes},
		pausing:       make(chan struct{}),
	}
}

// Publish queues ev for containerd under topic. It never blocks and never
// fails: an event that cannot be marshalled is logged and left out.
func (p *Publisher) Publish(topic string, ev proto.Message) {
	data, err := proto.Marshal(ev)
	if err != nil {
		p.log.Error("marshal event", "topic", topic, "error", err)
		return
	}
	env := &eventsapi.Envelope{
		// Stamped now, when it happened, not when containerd gets it.
		Timestamp: timestamppb.Now(),
		Namespace: p.namespace,
		Topic:     topic,
		// containerd's typeurl names protobuf messages by their full name.
		Event: &anypb.Any{TypeUrl: string(proto.MessageName(ev)), Value: data},
	}
	e := newEntry(env, ev)

	p.mu.Lock()
	dropped := p.queue.push(e)
	warn := dropped > 0 && !p.warnedDrop
	p.warnedDrop = p.warnedDrop || warn
	queued := p.queue.bytes
	p.startSenderLocked()
	p.mu.Unlock()

	// Logged outside the lock: a slow log must not hold up the sender.
	if warn {
		p.log.Warn("event queue over its bound while containerd is away, dropping the oldest notices (OOM, paused, resumed)",
			"max_bytes", p.queue.maxBytes, "queued_bytes", queued, "dropped", dropped)
	}
}

// Flush waits until every queued event was delivered or skipped and the
// sender has let go of the transport, or until ctx ends.
func (p *Publisher) Flush(ctx context.Context) error {
	for {
		p.mu.Lock()
		if p.paused && p.queue.len() > 0 {
			n := p.queue.len()
			p.mu.Unlock()
			return fmt.Errorf("%d events not delivered to containerd: sending is paused", n)
		}
		if !p.sending {
			p.mu.Unlock()
			return nil
		}
		if p.idle == nil {
			p.idle = make(chan struct{})
		}
		idle := p.idle
		p.mu.Unlock()
		select {
		case <-idle: // the sender stopped: drained, or paused
		case <-ctx.Done():
			return fmt.Errorf("events not delivered to containerd: %w", ctx.Err())
		}
	}
}

// send delivers queued events until the queue is empty. Only one runs at a
// time (p.sending), and only it touches the transport.
func (p *Publisher) send() {
	backoff := firstBackoff
	for {
		p.mu.Lock()
		if p.paused {
			p.senderExitLocked()
			p.mu.Unlock()
			return
		}
		e := p.queue.head()
		if e == nil {
			p.mu.Unlock()
			// An idle shim holds no connection. Closed outside the lock so
			// Publish never waits on it; sending stays set meanwhile, so an
			// event published now is left to this sender, not a second one.
			p.transport.close()
			if p.stopIfEmpty() {
				return
			}
			continue
		}
		e.inFlight = true
		p.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
		err := p.transport.forward(ctx, e.env)
		cancel()

		p.mu.Lock()
		e.inFlight = false
		rejected := err != nil && isRejection(err)
		if rejected {
			e.rejections++
		}
		skip := rejected && e.rejections >= p.maxRejections
		if err == nil || skip {
			// An entry in flight is neither dropped nor coalesced, so it
			// is still the head.
			p.queue.popHead()
		}
		p.mu.Unlock()

		switch {
		case err == nil:
			backoff = firstBackoff
			continue
		case skip:
			p.log.Error("containerd refused the event, skipping it",
				"topic", e.env.GetTopic(), "rejections", e.rejections, "error", err)
			backoff = firstBackoff
			continue
		case rejected:
			p.log.Warn("containerd refused the event, will retry",
				"topic", e.env.GetTopic(), "rejections", e.rejections, "retry_in", backoff, "error", err)
		default:
			// Reconnect on the next attempt: the connection may be dead.
			p.transport.close()
			p.log.Warn("containerd unreachable, will retry",
				"topic", e.env.GetTopic(), "retry_in", backoff, "error", err)
		}
		p.mu.Lock()
		pausing := p.pausing
		p.mu.Unlock()
		p.wait(backoff, pausing)
		backoff = min(backoff*2, maxBackoff)
	}
}

// stopIfEmpty ends the sender's turn if no event arrived while it closed the
// transport, waking Flush and reporting what was coalesced or dropped.
func (p *Publisher) stopIfEmpty() bool {
	p.mu.Lock()
	if p.queue.len() > 0 {
		p.mu.Unlock()
		return false
	}
	idle := p.idle // woken below, after the counts are logged
	p.idle = nil
	p.senderExitLocked()
	coalesced, dropped := p.queue.takeCounts()
	p.warnedDrop = false
	p.mu.Unlock()

	if dropped > 0 {
		p.log.Warn("events queue drained; notices were dropped while it was over its bound",
			"dropped", dropped, "coalesced", coalesced)
	} else if coalesced > 0 {
		p.log.Info("events queue drained; repeated notices were coalesced", "coalesced", coalesced)
	}
	// Woken last, so a shim that flushes and exits has logged the counts.
	if idle != nil {
		close(idle)
	}
	return true
}

// startSenderLocked starts the sender if events wait and none runs. Called
// with mu held.
func (p *Publisher) startSenderLocked() {
	if !p.sending && !p.paused && p.queue.len() > 0 {
		p.sending = true
		go p.send()
	}
}

// senderExitLocked marks the sender gone and wakes whoever waits for that.
// Called with mu held.
func (p *Publisher) senderExitLocked() {
	p.sending = false
	if p.senderGone != nil {
		close(p.senderGone)
		p.senderGone = nil
	}
	if p.idle != nil {
		close(p.idle)
		p.idle = nil
	}
}

// sleep waits d, or until stop is closed.
func sleep(d time.Duration, stop <-chan struct{}) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-stop:
	}
}
