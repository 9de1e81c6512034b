package shim

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os/exec"
	"strings"
	"sync"
	"time"

	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/proto/eventsapi"
)

// Event topics, as containerd names them.
const (
	topicCreate       = "/tasks/create"
	topicStart        = "/tasks/start"
	topicExit         = "/tasks/exit"
	topicDelete       = "/tasks/delete"
	topicExecAdded    = "/tasks/exec-added"
	topicExecStarted  = "/tasks/exec-started"
	topicPaused       = "/tasks/paused"
	topicResumed      = "/tasks/resumed"
	topicOOM          = "/tasks/oom"
	topicCheckpointed = "/tasks/checkpointed"
)

// publisher queues an event for containerd; it never blocks.
type publisher interface {
	publish(topic string, ev proto.Message)
}

// maxQueuedEvents bounds the queue while containerd is away; beyond it the
// oldest events are dropped (and logged), the shim's memory is not.
const maxQueuedEvents = 16384

// Publisher delivers events to containerd one at a time, in the order they
// were queued, retrying each until containerd takes it. Its sender goroutine
// runs only while events are waiting; at most one runs at a time, and only
// it uses the transport.
type Publisher struct {
	namespace string
	transport transport
	log       *slog.Logger

	mu sync.Mutex
	// queue holds events not yet accepted by containerd. Guarded by mu.
	queue []*eventsapi.Envelope
	// sending is set while the sender goroutine runs. Guarded by mu.
	sending bool
	// idle is closed (and replaced) whenever the queue empties. Guarded by mu.
	idle chan struct{}
}

// transport carries one event to containerd.
type transport interface {
	forward(ctx context.Context, env *eventsapi.Envelope) error
	close()
}

// NewPublisher publishes over containerd's ttrpc socket when ttrpcAddress is
// set, else by running containerd's publish binary.
func NewPublisher(namespace, ttrpcAddress, binary, address string, monitor runc.ProcessMonitor, log *slog.Logger) *Publisher {
	var t transport
	if ttrpcAddress != "" {
		t = &ttrpcTransport{address: strings.TrimPrefix(ttrpcAddress, "unix://")}
	} else {
		t = &binaryTransport{binary: binary, address: address, monitor: monitor}
	}
	return &Publisher{namespace: namespace, transport: t, log: log, idle: make(chan struct{})}
}

func (p *Publisher) publish(topic string, ev proto.Message) {
	data, err := proto.Marshal(ev)
	if err != nil {
		p.log.Error("marshal event", "topic", topic, "error", err)
		return
	}
	env := &eventsapi.Envelope{
		Timestamp: timestamppb.Now(),
		Namespace: p.namespace,
		Topic:     topic,
		// containerd's typeurl names protobuf messages by their full name.
		Event: &anypb.Any{TypeUrl: string(proto.MessageName(ev)), Value: data},
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.queue) >= maxQueuedEvents {
		p.log.Error("event queue full, dropping the oldest event", "topic", p.queue[0].Topic)
		p.queue = p.queue[1:]
	}
	p.queue = append(p.queue, env)
	if !p.sending {
		p.sending = true
		go p.send()
	}
}

// send delivers queued events until the queue is empty.
func (p *Publisher) send() {
	backoff := 50 * time.Millisecond
	for {
		p.mu.Lock()
		if len(p.queue) == 0 {
			// Closed before sending is cleared: a publish that starts the
			// next sender must find this one done with the transport.
			p.transport.close()
			p.sending = false
			close(p.idle)
			p.idle = make(chan struct{})
			p.mu.Unlock()
			return
		}
		env := p.queue[0]
		p.mu.Unlock()

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.transport.forward(ctx, env)
		cancel()
		if err != nil {
			p.log.Warn("forward event, will retry", "topic", env.Topic, "retry_in", backoff, "error", err)
			p.transport.close()
			time.Sleep(backoff)
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		p.mu.Lock()
		if len(p.queue) > 0 && p.queue[0] == env {
			p.queue[0] = nil
			p.queue = p.queue[1:]
		}
		p.mu.Unlock()
	}
}

// Flush waits until every queued event was delivered, or ctx ends.
func (p *Publisher) Flush(ctx context.Context) error {
	p.mu.Lock()
	if len(p.queue) == 0 {
		p.mu.Unlock()
		return nil
	}
	idle := p.idle
	p.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("events not delivered: %w", ctx.Err())
	}
}

// ttrpcTransport forwards events to containerd's ttrpc events service.
type ttrpcTransport struct {
	address string
	client  *ttrpc.Client // connected lazily; nil when closed
}

func (t *ttrpcTransport) forward(ctx context.Context, env *eventsapi.Envelope) error {
	if t.client == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", t.address)
		if err != nil {
			return fmt.Errorf("dial containerd: %w", err)
		}
		t.client = ttrpc.NewClient(conn)
	}
	_, err := eventsapi.NewEventsClient(t.client).Forward(ctx, &eventsapi.ForwardRequest{Envelope: env})
	return err
}

func (t *ttrpcTransport) close() {
	if t.client != nil {
		t.client.Close()
		t.client = nil
	}
}

// binaryTransport runs `containerd publish` (the -publish-binary) per event,
// as containerd 1.x shims without a ttrpc address do.
type binaryTransport struct {
	binary, address string
	monitor         runc.ProcessMonitor
}

func (t *binaryTransport) forward(ctx context.Context, env *eventsapi.Envelope) error {
	data, err := proto.Marshal(env.GetEvent())
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, t.binary, "--address", t.address,
		"publish", "--topic", env.GetTopic(), "--namespace", env.GetNamespace())
	cmd.Stdin = bytes.NewReader(data)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := t.monitor.Start(cmd)
	if err != nil {
		return fmt.Errorf("run publish binary: %w", err)
	}
	status, err := t.monitor.Wait(cmd, ec)
	if err == nil && status != 0 {
		err = fmt.Errorf("publish binary exited with %d: %s", status, bytes.TrimSpace(out.Bytes()))
	}
	return err
}

func (t *binaryTransport) close() {}
