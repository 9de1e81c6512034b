package shim

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/eventsapi"
)

// flakyTransport refuses the first failures forwards, then takes everything.
type flakyTransport struct {
	mu       sync.Mutex
	failures int
	got      []*eventsapi.Envelope
	closes   int
}

func (f *flakyTransport) forward(_ context.Context, env *eventsapi.Envelope) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failures > 0 {
		f.failures--
		return errors.New("containerd is away")
	}
	f.got = append(f.got, env)
	return nil
}

func (f *flakyTransport) close() {
	f.mu.Lock()
	f.closes++
	f.mu.Unlock()
}

func TestPublisherDeliversInOrderThroughFailures(t *testing.T) {
	tr := &flakyTransport{failures: 3}
	p := &Publisher{namespace: "ns", transport: tr, log: slog.Default(), idle: make(chan struct{})}
	for i := 0; i < 50; i++ {
		p.publish(topicExit, &events.TaskExit{ContainerId: "c", Pid: uint32(i)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.got) != 50 {
		t.Fatalf("delivered %d events, want 50", len(tr.got))
	}
	for i, env := range tr.got {
		var ev events.TaskExit
		if err := env.GetEvent().UnmarshalTo(&ev); err != nil {
			t.Fatal(err)
		}
		if ev.GetPid() != uint32(i) || env.GetNamespace() != "ns" || env.GetTopic() != topicExit {
			t.Fatalf("event %d: %v %s %s", i, ev.GetPid(), env.GetNamespace(), env.GetTopic())
		}
		if env.GetEvent().GetTypeUrl() != "containerd.events.TaskExit" {
			t.Fatalf("type url %q", env.GetEvent().GetTypeUrl())
		}
	}
	if p.sending {
		t.Fatal("sender goroutine still marked running after the queue emptied")
	}
}

func TestExitOrderHoldsInitUntilExecsEnd(t *testing.T) {
	var o exitOrder
	for i := 0; i < 2; i++ {
		if !o.execStarting() {
			t.Fatal("exec refused while the init runs")
		}
	}
	var stopped bool
	o.initExited(func() { stopped = true })
	if stopped {
		t.Fatal("init stopped while execs live")
	}
	if o.execStarting() {
		t.Fatal("exec allowed after the init exited")
	}
	o.execEnded()
	if stopped {
		t.Fatal("init stopped with one exec left")
	}
	o.execEnded()
	if !stopped {
		t.Fatal("init not stopped after the last exec")
	}
}

// countingSink is containerd's events service, counting what it gets.
type countingSink struct {
	mu sync.Mutex
	n  int
}

func (s *countingSink) Forward(context.Context, *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	s.n++
	s.mu.Unlock()
	return &emptypb.Empty{}, nil
}

// TestPublisherBurstsKeepOneSender: events published just as the sender
// finds the queue empty must not start a second sender on the same
// transport (a data race that could crash the shim), and all are delivered.
func TestPublisherBurstsKeepOneSender(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "events.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	sink := &countingSink{}
	eventsapi.RegisterEventsService(srv, sink)
	go srv.Serve(context.Background(), l)
	defer srv.Close()

	p := NewPublisher("ns", "unix://"+sock, "", "", nil, slog.Default())
	const n = 300
	for i := 0; i < n; i++ {
		p.publish(topicOOM, &events.TaskOOM{ContainerId: "x"})
		// Publish the next one right around the moment the queue empties.
		for j := 0; j < 200; j++ {
			p.mu.Lock()
			empty := len(p.queue) == 0
			p.mu.Unlock()
			if empty {
				break
			}
			time.Sleep(10 * time.Microsecond)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.n != n {
		t.Fatalf("containerd got %d events, want %d", sink.n, n)
	}
}

// TestPublisherFallsBackToThePublishBinary: without a ttrpc address, events
// go through containerd's publish binary, as containerd 1.x shims do it:
// flags for address, topic and namespace, the event (an Any) on stdin.
func TestPublisherFallsBackToThePublishBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "containerd")
	record := filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$@\" >> " + record + "\ncat > " + record + ".event\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := NewPublisher("ns1", "", bin, "/run/containerd/containerd.sock", testReaper, slog.Default())
	p.publish(topicExit, &events.TaskExit{ContainerId: "c1", ExitStatus: 7})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	args, _ := os.ReadFile(record)
	if got := strings.TrimSpace(string(args)); got != "--address /run/containerd/containerd.sock publish --topic /tasks/exit --namespace ns1" {
		t.Fatalf("publish binary called with %q", got)
	}
	data, _ := os.ReadFile(record + ".event")
	var a anypb.Any
	var ev events.TaskExit
	if err := proto.Unmarshal(data, &a); err != nil || a.GetTypeUrl() != "containerd.events.TaskExit" || a.UnmarshalTo(&ev) != nil || ev.GetExitStatus() != 7 {
		t.Fatalf("event on stdin: %v %v %v", a.GetTypeUrl(), &ev, err)
	}
}
