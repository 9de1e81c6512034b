package events

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"

	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/proto/eventsapi"
)

// transport carries one event to containerd. Only the Publisher's sender
// uses it, one call at a time.
type transport interface {
	// forward delivers env. An error carrying a gRPC status means
	// containerd answered (see isRejection); any other, that it could not
	// be reached.
	forward(ctx context.Context, env *eventsapi.Envelope) error
	// close lets go of any connection; the next forward reconnects.
	close()
}

// isRejection tells an error containerd answered with, which retrying will
// not change, from containerd being unreachable, which time may fix. Only a
// gRPC status counts: ttrpc returns one for the server's answer, and its own
// connection errors (ttrpc.ErrClosed, dial and socket errors, the context's
// deadline) carry none. Unavailable, DeadlineExceeded and Canceled say that
// containerd is going away or too slow, not that it refused.
func isRejection(err error) bool {
	if err == nil {
		return false
	}
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case codes.OK, codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return false
	}
	return true
}

// ttrpcTransport forwards events to containerd's ttrpc events service.
type ttrpcTransport struct {
	address string
	// client and events are connected lazily; nil when closed.
	client *ttrpc.Client
	events eventsapi.EventsService
}

func newTTRPCTransport(address string) *ttrpcTransport {
	return &ttrpcTransport{address: strings.TrimPrefix(address, "unix://")}
}

func (t *ttrpcTransport) forward(ctx context.Context, env *eventsapi.Envelope) error {
	if t.client == nil {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "unix", t.address)
		if err != nil {
			return fmt.Errorf("dial containerd: %w", err)
		}
		t.client = ttrpc.NewClient(conn)
		t.events = eventsapi.NewEventsClient(t.client)
	}
	if _, err := t.events.Forward(ctx, &eventsapi.ForwardRequest{Envelope: env}); err != nil {
		return fmt.Errorf("forward event to containerd: %w", err)
	}
	return nil
}

func (t *ttrpcTransport) close() {
	if t.client != nil {
		_ = t.client.Close()
		t.client, t.events = nil, nil
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
		return fmt.Errorf("marshal event for the publish binary: %w", err)
	}
	cmd := exec.CommandContext(ctx, t.binary, "--address", t.address,
		"publish", "--topic", env.GetTopic(), "--namespace", env.GetNamespace())
	cmd.Stdin = bytes.NewReader(data)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := t.monitor.Start(cmd)
	if err != nil {
		return fmt.Errorf("run publish binary %s: %w", t.binary, err)
	}
	exitStatus, err := t.monitor.Wait(cmd, ec)
	if err != nil {
		return fmt.Errorf("wait for publish binary %s: %w", t.binary, err)
	}
	if exitStatus == 0 {
		return nil
	}
	output := string(bytes.TrimSpace(out.Bytes()))
	if code, ok := answerInOutput(output); ok {
		// Carried as a status so that isRejection judges it as it judges
		// the ttrpc transport's errors.
		return fmt.Errorf("publish binary exited with %d: %w", exitStatus, status.Error(code, output))
	}
	return fmt.Errorf("publish binary exited with %d: %s", exitStatus, output)
}

func (t *binaryTransport) close() {}

// answerInOutput reads the publish binary's output for the code containerd
// answered with. The binary exits 1 whether containerd is down or refused,
// so its words are all there is to tell them apart.
//
// containerd 1.6 and 2.x do not print the gRPC status: they turn it into an
// errdefs error and print "containerd: <message>: <class>", the class being
// e.g. "invalid argument" or "unavailable". A raw status, "rpc error: code =
// InvalidArgument desc = ...", is read too (other builds and wrappers print
// it). A failure to connect is wrapped in "failed to dial" by both versions;
// it is never an answer, whatever socket error it ends with. Output this
// does not recognise is taken for containerd being unreachable: retrying an
// event that could be delivered later is better than skipping it.
func answerInOutput(output string) (codes.Code, bool) {
	const rpcPrefix = "rpc error: code = "
	if i := strings.LastIndex(output, rpcPrefix); i >= 0 {
		name, _, _ := strings.Cut(output[i+len(rpcPrefix):], " ")
		for c := codes.OK; c <= codes.Unauthenticated; c++ {
			if c.String() == name {
				return c, true
			}
		}
		return codes.Unknown, true
	}
	if strings.Contains(output, "failed to dial") {
		return 0, false
	}
	lines := strings.Split(output, "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	// containerd's main prints its error so, whatever the binary is called;
	// a shell's "sh: containerd: not found" is not containerd speaking.
	if !strings.HasPrefix(last, "containerd: ") {
		return 0, false
	}
	return codeOfErrdefsClass(last[strings.LastIndex(last, ": ")+2:])
}

// codeOfErrdefsClass maps containerd's errdefs error classes, as the publish
// binary prints them, back to the gRPC codes they came from.
func codeOfErrdefsClass(class string) (codes.Code, bool) {
	switch class {
	case "invalid argument":
		return codes.InvalidArgument, true
	case "not found":
		return codes.NotFound, true
	case "already exists":
		return codes.AlreadyExists, true
	case "failed precondition", "conflict", "not modified":
		return codes.FailedPrecondition, true
	case "not implemented":
		return codes.Unimplemented, true
	case "permission denied":
		return codes.PermissionDenied, true
	case "resource exhausted":
		return codes.ResourceExhausted, true
	case "aborted":
		return codes.Aborted, true
	case "out of range":
		return codes.OutOfRange, true
	case "internal":
		return codes.Internal, true
	case "data loss":
		return codes.DataLoss, true
	case "unauthorized", "unauthenticated":
		return codes.Unauthenticated, true
	case "unknown":
		return codes.Unknown, true
	case "unavailable":
		return codes.Unavailable, true
	case "context deadline exceeded":
		return codes.DeadlineExceeded, true
	case "context canceled":
		return codes.Canceled, true
	}
	return 0, false
}
