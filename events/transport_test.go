package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	taskevents "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/eventsapi"
)

// sink is containerd's ttrpc events service as a test scripts it.
type sink struct {
	mu       sync.Mutex
	answer   func(env *eventsapi.Envelope) error
	got      []string
	attempts int
}

func (s *sink) Forward(_ context.Context, r *eventsapi.ForwardRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.attempts++
	if s.answer != nil {
		if err := s.answer(r.GetEnvelope()); err != nil {
			return nil, err
		}
	}
	s.got = append(s.got, eventName(r.GetEnvelope()))
	return &emptypb.Empty{}, nil
}

// serve starts a ttrpc events service for s on sock.
func serve(t *testing.T, sock string, s *sink) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	eventsapi.RegisterEventsService(srv, s)
	go func() { _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { _ = srv.Close() })
}

// TestTTRPCTransportTellsUnreachableFromRejected runs against a real ttrpc
// server, so that the errors are the ones ttrpc really returns: no socket
// yet and an Unavailable answer are retried (MaxRejections is 1, so a single
// one taken for a rejection would lose the event), an InvalidArgument
// answer is a rejection.
func TestTTRPCTransportTellsUnreachableFromRejected(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	s := &sink{}
	unavailable := 1
	s.answer = func(env *eventsapi.Envelope) error {
		switch name := eventName(env); {
		case name == "exit c/bad":
			return status.Error(codes.InvalidArgument, "bad event")
		case name == "exit c/1" && unavailable > 0:
			unavailable--
			return status.Error(codes.Unavailable, "shutting down")
		}
		return nil
	}
	started := false
	gate := func(time.Duration) {
		// The first attempt found no socket: containerd comes up.
		if !started {
			started = true
			serve(t, sock, s)
		}
	}
	tr := newTTRPCTransport("unix://" + sock)
	p, _, waits := testPublisher(t, Config{MaxRejections: 1}, tr, gate)
	for _, id := range []string{"1", "bad", "2"} {
		p.Publish(TopicExit, exit("c", id))
	}
	flush(t, p)

	s.mu.Lock()
	defer s.mu.Unlock()
	if want := []string{"exit c/1", "exit c/2"}; !slices.Equal(s.got, want) {
		t.Fatalf("containerd got %v, want %v", s.got, want)
	}
	// c/1 twice (Unavailable, then taken), bad once, c/2 once.
	if s.attempts != 4 || len(*waits) != 2 {
		t.Fatalf("containerd saw %d attempts and the sender waited %v; want 4 and two waits", s.attempts, *waits)
	}
	if tr.client != nil {
		t.Fatal("the connection is still open after the queue drained")
	}
}

// TestTTRPCTransportDeliversABurst: many events over one real connection.
func TestTTRPCTransportDeliversABurst(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "containerd.sock")
	s := &sink{}
	serve(t, sock, s)
	p := New(Config{Namespace: "ns", TTRPCAddress: "unix://" + sock, Log: slog.New(slog.DiscardHandler)})
	var want []string
	for i := range 300 {
		id := fmt.Sprint(i)
		p.Publish(TopicExit, exit("c", id))
		want = append(want, "exit c/"+id)
	}
	flush(t, p)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Equal(s.got, want) {
		t.Fatalf("containerd got %d events out of order or incomplete", len(s.got))
	}
}

// writeScript writes an executable shell script into dir.
func writeScript(t *testing.T, dir, body string) string {
	t.Helper()
	bin := filepath.Join(dir, "containerd")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestPublisherFallsBackToThePublishBinary: without a ttrpc address, events
// go through containerd's publish binary, as containerd 1.x shims do it:
// flags for address, topic and namespace, the event (an Any) on stdin.
func TestPublisherFallsBackToThePublishBinary(t *testing.T) {
	dir := t.TempDir()
	record := filepath.Join(dir, "calls")
	bin := writeScript(t, dir, "echo \"$@\" >> "+record+"\ncat > "+record+".event\n")
	p := New(Config{Namespace: "ns1", PublishBinary: bin, Address: "/run/containerd/containerd.sock",
		Monitor: execMonitor{}, Log: slog.New(slog.DiscardHandler)})
	p.Publish(TopicExit, &taskevents.TaskExit{ContainerId: "c1", ExitStatus: 7})
	flush(t, p)

	args, _ := os.ReadFile(record)
	if got := strings.TrimSpace(string(args)); got != "--address /run/containerd/containerd.sock publish --topic /tasks/exit --namespace ns1" {
		t.Fatalf("publish binary called with %q", got)
	}
	data, _ := os.ReadFile(record + ".event")
	var a anypb.Any
	var ev taskevents.TaskExit
	if err := proto.Unmarshal(data, &a); err != nil || a.GetTypeUrl() != "containerd.events.TaskExit" || a.UnmarshalTo(&ev) != nil || ev.GetExitStatus() != 7 {
		t.Fatalf("event on stdin: %v %v %v", a.GetTypeUrl(), &ev, err)
	}
}

// TestPublishBinaryFailures: the binary exits 1 both when containerd is down
// and when it refused; only the latter, told by its output, is a rejection.
func TestPublishBinaryFailures(t *testing.T) {
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	// $5 is the topic. The first exit fails to dial; after that containerd
	// is up, and refuses OOMs as containerd 1.6 prints it.
	bin := writeScript(t, dir, `echo "$5" >> `+runs+`
cat > /dev/null
case "$5" in
/tasks/oom) echo 'containerd: unknown topic "/tasks/oom": invalid argument' >&2; exit 1;;
esac
if [ ! -e `+runs+`.up ]; then
	touch `+runs+`.up
	echo 'containerd: failed to dial "/run/c.sock": connection error: desc = "transport: error while dialing: dial unix /run/c.sock: connect: permission denied"' >&2
	exit 1
fi
`)
	tr := &binaryTransport{binary: bin, address: "/run/c.sock", monitor: execMonitor{}}
	p, logs, _ := testPublisher(t, Config{MaxRejections: 2}, tr, nil)
	p.Publish(TopicExit, exit("c", "1"))
	p.Publish(TopicOOM, &taskevents.TaskOOM{ContainerId: "c"})
	p.Publish(TopicExit, exit("c", "2"))
	flush(t, p)

	data, _ := os.ReadFile(runs)
	want := "/tasks/exit\n/tasks/exit\n/tasks/oom\n/tasks/oom\n/tasks/exit\n"
	if string(data) != want {
		t.Fatalf("publish binary runs:\n%s\nwant:\n%s", data, want)
	}
	errs := logs.find(slog.LevelError)
	if len(errs) != 1 || errs[0]["topic"] != TopicOOM || !strings.Contains(errs[0]["error"], "invalid argument") {
		t.Fatalf("error logs %v, want one for the refused OOM", errs)
	}
}

func TestAnswerInPublishBinaryOutput(t *testing.T) {
	for _, tc := range []struct {
		output   string
		rejected bool
	}{
		// containerd 1.6 and 2.x: errdefs classes.
		{`containerd: namespace "": invalid argument`, true},
		{`containerd: namespace is required: failed precondition`, true},
		{`containerd: not implemented`, true},
		{`containerd: failed to dial "/run/containerd/containerd.sock": context deadline exceeded`, false},
		{`containerd: failed to dial "/x": connect: permission denied`, false},
		{`containerd: connection error: desc = "transport: Error while dialing: dial unix /x: connect: no such file or directory": unavailable`, false},
		{`containerd: context deadline exceeded`, false},
		{`containerd: context canceled`, false},
		// A raw gRPC status.
		{`ctr: rpc error: code = InvalidArgument desc = bad topic`, true},
		{`rpc error: code = Unavailable desc = connection refused`, false},
		{`rpc error: code = DeadlineExceeded desc = too slow`, false},
		// Nothing answered.
		{"", false},
		{"sh: containerd: not found\n", false},
		{"sh: 1: containerd: Permission denied", false},
		{"killed", false},
	} {
		var err error = errors.New("publish binary exited with 1: " + tc.output)
		if code, ok := answerInOutput(tc.output); ok {
			err = fmt.Errorf("publish binary exited with 1: %w", status.Error(code, tc.output))
		}
		if got := isRejection(err); got != tc.rejected {
			t.Errorf("output %q: rejection %v, want %v", tc.output, got, tc.rejected)
		}
	}
}
