package events

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-shim/tether/proto/eventsapi"
)

// TestPublisherSkipsARejectedEvent: an event containerd refuses is tried
// MaxRejections times, logged and skipped; the ones behind it arrive.
func TestPublisherSkipsARejectedEvent(t *testing.T) {
	tr := &fakeTransport{answer: func(env *eventsapi.Envelope) error {
		if eventName(env) == "exit c/bad" {
			return fmt.Errorf("forward event to containerd: %w", status.Error(codes.InvalidArgument, "namespace: invalid"))
		}
		return nil
	}}
	p, logs, waits := testPublisher(t, Config{MaxRejections: 3}, tr, nil)
	publishTogether(t, p, func() {
		for _, id := range []string{"1", "bad", "2", "3"} {
			p.Publish(TopicExit, exit("c", id))
		}
	})
	flush(t, p)

	if got, want := tr.names(t), []string{"exit c/1", "exit c/2", "exit c/3"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	if n := tr.attempts["exit c/bad"]; n != 3 {
		t.Fatalf("the rejected event was tried %d times, want MaxRejections (3)", n)
	}
	if want := []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}; !slices.Equal(*waits, want) {
		t.Fatalf("waited %v, want %v between rejections and none after the skip", *waits, want)
	}
	if slices.Contains(tr.ops[:len(tr.ops)-1], "close") {
		t.Fatalf("transport ops %v: containerd answered, the connection need not be dropped", tr.ops)
	}
	errs := logs.find(slog.LevelError)
	if len(errs) != 1 || errs[0]["topic"] != TopicExit || errs[0]["error"] == "" {
		t.Fatalf("error logs %v, want one naming the topic and the error", errs)
	}
}

// TestPublisherDoesNotCountUnreachableAsRejection: only containerd's own
// answers count towards MaxRejections; an event is retried through any
// number of connection failures.
func TestPublisherDoesNotCountUnreachableAsRejection(t *testing.T) {
	rejected := status.Error(codes.FailedPrecondition, "namespace is required")
	var unreachable []error
	for range 4 {
		unreachable = append(unreachable,
			errUnreachable,
			fmt.Errorf("forward event to containerd: %w", ttrpc.ErrClosed),
			status.Error(codes.Unavailable, "containerd is shutting down"),
			status.Error(codes.DeadlineExceeded, "too slow"),
			status.Error(codes.Canceled, "canceled"),
			context.DeadlineExceeded,
			&net.OpError{Op: "dial", Net: "unix", Err: syscall.ECONNREFUSED},
			&net.OpError{Op: "read", Net: "unix", Err: syscall.ECONNRESET},
		)
	}
	// Two rejections (one fewer than allowed), with many failures between.
	script := append([]error{rejected}, unreachable...)
	script = append(script, rejected, errUnreachable)
	tr := &fakeTransport{answer: func(env *eventsapi.Envelope) error {
		if eventName(env) != "exit c/a" || len(script) == 0 {
			return nil
		}
		err := script[0]
		script = script[1:]
		return err
	}}
	p, logs, _ := testPublisher(t, Config{MaxRejections: 3}, tr, nil)
	p.Publish(TopicExit, exit("c", "a"))
	p.Publish(TopicExit, exit("c", "b"))
	flush(t, p)

	if got, want := tr.names(t), []string{"exit c/a", "exit c/b"}; !slices.Equal(got, want) {
		t.Fatalf("delivered %v, want %v (errors: %v)", got, want, logs.find(slog.LevelError))
	}
	if n, want := tr.attempts["exit c/a"], len(unreachable)+4; n != want {
		t.Fatalf("tried %d times, want %d", n, want)
	}
}
