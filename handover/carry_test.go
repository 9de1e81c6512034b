package handover

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
)

// handRequest sends a request frame on stream to c from the client end a,
// reads it as the server does and returns the context its handler would
// get (the metadata the conn added).
func handRequest(t *testing.T, c *Conn, client interface{ Write([]byte) (int, error) }, stream uint32, md []*ttrpc.KeyValue) (context.Context, []byte) {
	t.Helper()
	payload, _ := proto.Marshal(&ttrpc.Request{Service: "s", Method: "delete", Metadata: md})
	sent := frame(stream, typeRequest, payload)
	client.Write(sent)
	var handed []byte
	buf := make([]byte, 64)
	for h := parseHeader(handed); !h.complete || len(handed) < h.frameLen(); h = parseHeader(handed) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		handed = append(handed, buf[:n]...)
	}
	var r ttrpc.Request
	if err := proto.Unmarshal(handed[headerLen:], &r); err != nil {
		t.Fatal(err)
	}
	got := ttrpc.MD{}
	for _, kv := range r.Metadata {
		got.Append(kv.Key, kv.Value)
	}
	return ttrpc.WithMetadata(context.Background(), got), sent
}

// TestParkedRequestIsCarried: a short request (not carryable by its
// method) parked in a carryable wait lets the set settle; once settled it
// stays parked (Unpark waits) and its frame, as the client sent it, is
// carried. An abandoned handover lets it go on, told to wait again.
func TestParkedRequestIsCarried(t *testing.T) {
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	set := NewSet(func(string, string) bool { return false })
	c := newConn(b, set, set.carry, nil)
	set.add(c)
	// A client's own name for the request is not taken.
	forged := []*ttrpc.KeyValue{{Key: carryKey, Value: "99/1"}}
	ctx, sent := handRequest(t, c, a, 1, forged)
	p := set.Point(ctx)
	if p == nil || p.(point).c != c || p.(point).stream != 1 {
		t.Fatalf("point %+v, want stream 1 of the conn", p)
	}
	token := p.Park(nil)

	go c.Read(make([]byte, 64)) // the server's reader, parked at the gate
	set.Gate(nil)
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := set.Settle(sctx); err != nil {
		t.Fatalf("a parked request kept the set from settling: %v", err)
	}
	unparked := make(chan bool)
	go func() { unparked <- p.Unpark(token) }()
	states, err := set.States()
	if err != nil || len(states) != 1 || len(states[0].Carried) != 1 || !bytes.Equal(states[0].Carried[0], sent) {
		t.Fatalf("states %+v %v; want the parked request's frame as sent", states, err)
	}
	select {
	case <-unparked:
		t.Fatal("a request written down for the next process went on")
	default:
	}
	set.Ungate(nil)
	if again := <-unparked; !again {
		t.Fatal("a wait a handover cut short is not waited again")
	}
}

// TestRequestUnparkedBeforeTheFreezeIsWaitedFor: a request that leaves its
// wait before the set settles goes on, and the set settles only once it
// has been answered.
func TestRequestUnparkedBeforeTheFreezeIsWaitedFor(t *testing.T) {
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := a.Read(buf); err != nil {
				return
			}
		}
	}()
	set := NewSet(func(string, string) bool { return false })
	c := newConn(b, set, set.carry, nil)
	set.add(c)
	ctx, _ := handRequest(t, c, a, 1, nil)
	p := set.Point(ctx)
	token := p.Park(nil)
	go c.Read(make([]byte, 64))
	set.Gate(nil)
	if again := p.Unpark(token); !again {
		t.Fatal("a gate came while the request waited: it must wait again")
	}
	settled := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		settled <- set.Settle(sctx)
	}()
	// Settle cannot be done: the request is served, not parked.
	if ok, _ := c.freezeIfSettled(); ok {
		t.Fatal("a request being served let the conn settle")
	}
	c.Write(frame(1, typeResponse, []byte("answer")))
	if err := <-settled; err != nil {
		t.Fatal(err)
	}
	set.Ungate(nil)
}

// TestParkedWorkIsCarriedOnlyWhenKept: a request parked on work in flight
// (carry.Hold) settles the conn only if its keep says the work can be
// carried now; the set waits otherwise. Once kept, the gate's lifting
// releases it.
func TestParkedWorkIsCarriedOnlyWhenKept(t *testing.T) {
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	set := NewSet(func(string, string) bool { return false })
	c := newConn(b, set, set.carry, nil)
	set.add(c)
	ctx, _ := handRequest(t, c, a, 1, nil)
	p := set.Point(ctx)
	carriable := false
	released := 0
	p.Park(func() (func(), bool) {
		if !carriable {
			return nil, false
		}
		return func() { released++ }, true
	})
	go c.Read(make([]byte, 64))
	set.Gate(nil)
	for !readerParked(c) {
		<-set.notify
	}
	if ok, why := c.freezeIfSettled(); ok || !strings.Contains(why, "cannot be carried") {
		t.Fatalf("work that cannot be carried now: settled %v (%s)", ok, why)
	}
	carriable = true
	sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := set.Settle(sctx); err != nil {
		t.Fatal(err)
	}
	if released != 0 {
		t.Fatal("kept work released while the conn is frozen")
	}
	set.Ungate(nil)
	if released != 1 {
		t.Fatalf("the gate lifted: released %d times, want once", released)
	}
}

// readerParked says whether the server's reader of c waits at the gate.
func readerParked(c *Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.parked
}
