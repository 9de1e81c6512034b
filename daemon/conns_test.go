package daemon

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestOpenConnsWaitsForClientsToHangUp: wait returns at once with no
// connection open, waits while one is, returns when the last one closes
// (closing twice counts once), and gives up with its context.
func TestOpenConnsWaitsForClientsToHangUp(t *testing.T) {
	o := &openConns{}
	if err := o.wait(context.Background()); err != nil {
		t.Fatalf("wait with nothing open: %v", err)
	}
	accept := o.handshaker(handshakerFunc(func(_ context.Context, c net.Conn) (net.Conn, any, error) { return c, nil, nil }))
	var conns []net.Conn
	for range 2 {
		server, client := net.Pipe()
		defer client.Close()
		c, _, err := accept.Handshake(context.Background(), server)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := o.wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with connections open: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- o.wait(context.Background()) }()
	conns[0].Close()
	conns[0].Close()
	select {
	case err := <-done:
		t.Fatalf("wait returned with a connection still open: %v", err)
	default:
	}
	conns[1].Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	refuse := o.handshaker(handshakerFunc(func(context.Context, net.Conn) (net.Conn, any, error) { return nil, nil, errors.New("no") }))
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	if _, _, err := refuse.Handshake(context.Background(), server); err == nil {
		t.Fatal("a refused connection was approved")
	}
	if err := o.wait(context.Background()); err != nil {
		t.Fatalf("a refused connection was counted: %v", err)
	}
}
