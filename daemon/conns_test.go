package daemon

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"
)

// frame is a ttrpc frame: a 10-byte header and the payload.
func frame(stream uint32, typ byte, payload string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	b = binary.BigEndian.AppendUint32(b, stream)
	return append(append(b, typ, 0), payload...)
}

// TestOpenConnsWaitsForAnswersNotHangUps: wait returns at once with no
// connection open and with connections open that owe nothing (an idle
// client's: containerd's CRI suite dials the shim and expects it gone right
// after the pod is removed; waiting for it to hang up kept the shim
// answering); it waits while a request read (whatever the reads' split)
// has no answer written, returns once it has, ignores an answer to a
// request read before a live upgrade, and a close settles what its
// connection owed. Fails on the code before, which waited for hang-ups.
func TestOpenConnsWaitsForAnswersNotHangUps(t *testing.T) {
	o := &openConns{}
	if err := o.wait(context.Background()); err != nil {
		t.Fatalf("wait with nothing open: %v", err)
	}
	accept := o.handshaker(handshakerFunc(func(_ context.Context, c net.Conn) (net.Conn, any, error) { return c, nil, nil }))
	type pair struct{ server, client net.Conn }
	var conns []pair
	for range 2 {
		server, client := net.Pipe()
		defer client.Close()
		c, _, err := accept.Handshake(context.Background(), server)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, pair{c, client})
	}
	idle, cancelIdle := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelIdle()
	if err := o.wait(idle); err != nil {
		t.Fatalf("wait with idle connections open: %v", err)
	}
	// A request on connection 0, read in pieces.
	req := frame(3, ttrpcRequest, "shutdown")
	go conns[0].client.Write(req)
	buf := make([]byte, 4)
	for got := 0; got < len(req); {
		n, err := conns[0].server.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := o.wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with an answer owed: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- o.wait(context.Background()) }()
	// Connection 1 answers a stream it never read (carried across an
	// upgrade): connection 0 still owes.
	go io.Copy(io.Discard, conns[1].client)
	if _, err := conns[1].server.Write(frame(7, ttrpcResponse, "carried")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("wait returned with an answer owed: %v", err)
	default:
	}
	go io.Copy(io.Discard, conns[0].client)
	answer := frame(3, ttrpcResponse, "ok")
	if _, err := conns[0].server.Write(answer[:5]); err != nil {
		t.Fatal(err)
	}
	if _, err := conns[0].server.Write(answer[5:]); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A request owed on a connection that closes: nothing is owed.
	go conns[1].client.Write(frame(9, ttrpcRequest, "wait"))
	if _, err := io.ReadFull(conns[1].server, make([]byte, len(frame(9, ttrpcRequest, "wait")))); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	if err := o.wait(ctx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait with an answer owed: %v", err)
	}
	conns[1].server.Close()
	conns[1].server.Close()
	if err := o.wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	refuse := o.handshaker(handshakerFunc(func(context.Context, net.Conn) (net.Conn, any, error) { return nil, nil, errors.New("no") }))
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()
	if _, _, err := refuse.Handshake(context.Background(), server); err == nil {
		t.Fatal("a refused connection was approved")
	}
}
