package daemon

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// TestLastAnswerReachesItsCaller: the request that ends the shim gets its
// answer, as the daemon winds down (serve.go's run: wait for the answers
// owed, then close the server). ttrpc's client (1.2.9, containerd 2.4.2's)
// drops an answer it has read when the connection's end comes before its
// caller picks the answer up (its dispatch's select takes the client's
// end, "ttrpc: closed"), so the shim closing the connection right after
// writing the answer loses it now and then: containerd's RemovePodSandbox
// failed with "failed to shutdown sandbox: ttrpc: closed". The connection
// is closed once its client hangs up, as containerd does once it has the
// answer. Fails on the code before, which closed as soon as the answer was
// written (round 97 of 200 in the run that found it).
func TestLastAnswerReachesItsCaller(t *testing.T) {
	for i := range 200 {
		if err := shutdownRound(t); err != nil {
			t.Fatalf("round %d: the shutting-down request failed: %v", i, err)
		}
	}
}

// shutdownRound serves one connection whose one request asks the server
// to exit, winds down as run does, and returns the request's error.
func shutdownRound(t *testing.T) error {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	conns := &openConns{}
	passthrough := handshakerFunc(func(_ context.Context, c net.Conn) (net.Conn, any, error) { return c, nil, nil })
	server, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(conns.handshaker(passthrough)))
	if err != nil {
		t.Fatal(err)
	}
	shutdown := make(chan struct{})
	server.RegisterService("test.Shim", &ttrpc.ServiceDesc{Methods: map[string]ttrpc.Method{
		"Shutdown": func(_ context.Context, unmarshal func(any) error) (any, error) {
			var req emptypb.Empty
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			conns.windDown() // as the daemon's stop does
			close(shutdown)
			return &emptypb.Empty{}, nil
		},
	}})
	go server.Serve(context.Background(), l)
	wound := make(chan error, 1)
	go func() {
		<-shutdown
		l.Close()
		// A generous bound: the client's hang-up, not the bound, must
		// end the wait.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err := conns.wait(ctx)
		server.Close()
		wound <- err
	}()

	c, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(c)
	callErr := client.Call(context.Background(), "test.Shim", "Shutdown", &emptypb.Empty{}, &emptypb.Empty{})
	// containerd hangs up once it has the answer (its shim manager's
	// Delete closes the client).
	client.Close()
	if err := <-wound; err != nil {
		t.Fatalf("wait: %v", err)
	}
	if errors.Is(callErr, ttrpc.ErrClosed) {
		return callErr
	}
	if callErr != nil {
		t.Fatalf("call: %v", callErr)
	}
	return nil
}
