package handover

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/proto/upgrade"
)

// testAdmin answers Info at once and holds Upgrade until released; it
// stands for the task API's short requests and its Wait.
type testAdmin struct {
	name    string
	release chan struct{}
	started chan string // each Upgrade that reached the service, by token
}

func (a *testAdmin) Info(ctx context.Context, _ *upgrade.InfoRequest) (*upgrade.InfoResponse, error) {
	return &upgrade.InfoResponse{Version: a.name}, nil
}

func (a *testAdmin) Upgrade(ctx context.Context, r *upgrade.UpgradeRequest) (*upgrade.UpgradeResponse, error) {
	a.started <- r.GetToken()
	select {
	case <-a.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &upgrade.UpgradeResponse{NewVersion: a.name, Error: r.GetToken()}, nil
}

// carryUpgrade carries Upgrade, as the shim carries Wait.
func carryUpgrade(service, method string) bool {
	return service == "tether.upgrade.v1.Admin" && method == "Upgrade"
}

// serve starts a ttrpc server named name on a Set listening on raw.
func serve(t *testing.T, name string, raw *net.UnixListener, restored []State) (*Set, *Listener, *testAdmin) {
	t.Helper()
	set := NewSet(carryUpgrade)
	l, err := set.Listen(raw, restored)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ttrpc.NewServer(ttrpc.WithServerHandshaker(set.Handshaker()))
	if err != nil {
		t.Fatal(err)
	}
	admin := &testAdmin{name: name, release: make(chan struct{}), started: make(chan string, 8)}
	upgrade.RegisterAdminService(server, admin)
	go server.Serve(context.Background(), l)
	return set, l, admin
}

// TestConnectionsMoveToAnotherServer: a client's connection, with a
// long-lived request in flight and another sent while the shim is frozen,
// moves to a new server on the same socket; the new server answers both on
// their own streams, and the connection goes on serving. No byte is lost.
func TestConnectionsMoveToAnotherServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	raw, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	set, l, old := serve(t, "old", raw, nil)

	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	client := upgrade.NewAdminClient(ttrpc.NewClient(conn))
	ctx := context.Background()
	if r, err := client.Info(ctx, &upgrade.InfoRequest{}); err != nil || r.GetVersion() != "old" {
		t.Fatalf("info before: %v %v", r, err)
	}
	long := make(chan *upgrade.UpgradeResponse, 1)
	go func() {
		r, err := client.Upgrade(ctx, &upgrade.UpgradeRequest{Token: "carried"})
		if err != nil {
			t.Errorf("carried request: %v", err)
		}
		long <- r
	}()
	<-old.started

	// Freeze: gate, then a request arrives that nobody hands on.
	set.Gate(l)
	late := make(chan *upgrade.InfoResponse, 1)
	go func() {
		r, err := client.Info(ctx, &upgrade.InfoRequest{})
		if err != nil {
			t.Errorf("request sent while frozen: %v", err)
		}
		late <- r
	}()
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := set.Settle(sctx); err != nil {
		t.Fatal(err)
	}
	states, err := set.States()
	if err != nil || len(states) != 1 || len(states[0].Carried) != 1 {
		t.Fatalf("states %+v %v; want one conn carrying one request", states, err)
	}
	t.Logf("carried %d bytes, pending %d bytes", len(states[0].Carried[0]), len(states[0].Pending))

	// The next process: a new server on the same listening socket.
	lfd, _ := l.FD()
	newRaw := listenerFromFD(t, lfd)
	_, _, next := serve(t, "new", newRaw, states)
	if tok := <-next.started; tok != "carried" {
		t.Fatalf("the new server got upgrade %q", tok)
	}
	close(next.release)
	if r := <-long; r.GetNewVersion() != "new" || r.GetError() != "carried" {
		t.Fatalf("carried request answered by %+v", r)
	}
	if r := <-late; r.GetVersion() != "new" {
		t.Fatalf("request sent while frozen answered by %+v", r)
	}
	if r, err := client.Info(ctx, &upgrade.InfoRequest{}); err != nil || r.GetVersion() != "new" {
		t.Fatalf("info after: %v %v", r, err)
	}
	// A new client is accepted by the new server from the same socket.
	conn2, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := upgrade.NewAdminClient(ttrpc.NewClient(conn2)).Info(ctx, &upgrade.InfoRequest{}); err != nil || r.GetVersion() != "new" {
		t.Fatalf("new client: %v %v", r, err)
	}
}

func listenerFromFD(t *testing.T, fd int) *net.UnixListener {
	t.Helper()
	l, err := net.FileListener(newFile(fd))
	if err != nil {
		t.Fatal(err)
	}
	return l.(*net.UnixListener)
}

// TestSettleWaitsForShortRequests: a short request being served keeps the
// set from settling; once answered, it settles.
func TestSettleWaitsForShortRequests(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	raw, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	set := NewSet(func(string, string) bool { return false }) // nothing is carryable
	l, _ := set.Listen(raw, nil)
	server, _ := ttrpc.NewServer(ttrpc.WithServerHandshaker(set.Handshaker()))
	admin := &testAdmin{name: "x", release: make(chan struct{}), started: make(chan string, 1)}
	upgrade.RegisterAdminService(server, admin)
	go server.Serve(context.Background(), l)
	conn, _ := net.Dial("unix", path)
	client := upgrade.NewAdminClient(ttrpc.NewClient(conn))
	var answered atomic.Bool
	go func() {
		client.Upgrade(context.Background(), &upgrade.UpgradeRequest{Token: "short"})
		answered.Store(true)
	}()
	<-admin.started
	set.Gate(l)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := set.Settle(ctx); err == nil {
		t.Fatal("settled while a request was being served")
	}
	close(admin.release)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if err := set.Settle(ctx2); err != nil {
		t.Fatal(err)
	}
	set.Ungate(l)
	if r, err := client.Info(context.Background(), &upgrade.InfoRequest{}); err != nil || r.GetVersion() != "x" {
		t.Fatalf("after ungate: %v %v", r, err)
	}
}

// frame builds a ttrpc frame.
func frame(stream uint32, kind uint8, data []byte) []byte {
	b := make([]byte, headerLen, headerLen+len(data))
	binary.BigEndian.PutUint32(b[0:4], uint32(len(data)))
	binary.BigEndian.PutUint32(b[4:8], stream)
	b[8] = kind
	return append(b, data...)
}

// TestGateStopsAtAFrameBoundaryAndKeepsWhatWasRead: two frames arrive in
// one read; the gate lets the first be handed whole and keeps the second,
// unhanded, as pending bytes; nothing is handed while gated.
func TestGateStopsAtAFrameBoundaryAndKeepsWhatWasRead(t *testing.T) {
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	set := NewSet(func(string, string) bool { return true })
	c := newConn(b, set, set.carry, nil)
	set.add(c)
	req := func(method string) []byte {
		b, _ := proto.Marshal(&ttrpc.Request{Service: "s", Method: method})
		return b
	}
	first, second := frame(1, typeRequest, req("first")), frame(3, typeRequest, req("second"))
	a.Write(append(append([]byte(nil), first...), second...))
	got := make([]byte, 4) // smaller than a frame: handed in pieces
	var handed []byte
	for h := parseHeader(handed); !h.complete || len(handed) < h.frameLen(); h = parseHeader(handed) {
		n, err := c.Read(got)
		if err != nil {
			t.Fatal(err)
		}
		handed = append(handed, got[:n]...)
		if len(handed) == 4 {
			set.Gate(nil) // mid-frame: the rest of this frame still comes
		}
	}
	// The server gets the first request, named for its carry point.
	if h := parseHeader(handed); h.stream != 1 || h.kind != typeRequest || h.frameLen() != len(handed) {
		t.Fatalf("handed %q, want the first frame", handed)
	}
	var r ttrpc.Request
	if err := proto.Unmarshal(handed[headerLen:], &r); err != nil || r.Method != "first" || len(r.Metadata) != 1 ||
		r.Metadata[0].Key != carryKey || r.Metadata[0].Value != fmt.Sprintf("%d/1", c.id) {
		t.Fatalf("handed %+v (%v), want the first request named %d/1", &r, err, c.id)
	}
	read := make(chan struct{})
	go func() { c.Read(got); close(read) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := set.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-read:
		t.Fatal("a frame was handed while gated")
	default:
	}
	st, err := c.state()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Carried) != 1 || !bytes.Equal(st.Carried[0], first) || !bytes.Equal(st.Pending, second) {
		t.Fatalf("state: carried %q, pending %q", st.Carried, st.Pending)
	}
	set.Ungate(nil)
	<-read
}

// TestAnsweredRequestsAreNotCarried: a response written in pieces ends its
// stream only once whole.
func TestAnsweredRequestsAreNotCarried(t *testing.T) {
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
	a.Write(frame(5, typeRequest, []byte("req")))
	c.Read(make([]byte, 64))
	if len(c.owed) != 1 {
		t.Fatalf("owed %d requests, want 1", len(c.owed))
	}
	resp := frame(5, typeResponse, []byte("answer"))
	c.Write(resp[:7])
	if len(c.owed) != 1 {
		t.Fatal("a partly written answer ended the stream")
	}
	c.Write(resp[7:])
	if len(c.owed) != 0 {
		t.Fatal("a written answer did not end the stream")
	}
}

func socketPair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	conv := func(fd int) *net.UnixConn {
		f := newFile(fd)
		defer f.Close()
		c, _ := net.FileConn(f)
		return c.(*net.UnixConn)
	}
	return conv(fds[0]), conv(fds[1]), nil
}

// TestConnAcceptedWhileGatedIsGated: a connection the listener accepted as
// Gate ran is gated too (it joins the set after Gate went through it).
func TestConnAcceptedWhileGatedIsGated(t *testing.T) {
	a, b, err := socketPair()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	set := NewSet(func(string, string) bool { return false })
	set.Gate(nil)
	c := newConn(b, set, set.carry, nil)
	set.add(c)
	c.mu.Lock()
	gated := c.gated
	c.mu.Unlock()
	if !gated {
		t.Fatal("a connection added while gated is not gated")
	}
	set.Ungate(nil)
	if c.gated {
		t.Fatal("still gated after Ungate")
	}
}

// TestAnswerAfterStatesIsGivenOnce: a long-lived request written down (and
// carried) whose answer the old server produces after States is held back:
// only the next process answers it, once.
func TestAnswerAfterStatesIsGivenOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	raw, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	set, l, old := serve(t, "old", raw, nil)
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	client := upgrade.NewAdminClient(ttrpc.NewClient(conn))
	answers := make(chan *upgrade.UpgradeResponse, 2)
	go func() {
		r, _ := client.Upgrade(context.Background(), &upgrade.UpgradeRequest{Token: "w"})
		answers <- r
	}()
	<-old.started
	set.Gate(l)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := set.Settle(ctx); err != nil {
		t.Fatal(err)
	}
	states, err := set.States()
	if err != nil {
		t.Fatal(err)
	}
	// The old server's answer comes now: held back, not written.
	close(old.release)
	oldConn := set.all()[0]
	for {
		oldConn.mu.Lock()
		held := oldConn.heldWrites
		oldConn.mu.Unlock()
		if held > 0 {
			break
		}
		<-set.notify
	}
	lfd, _ := l.FD()
	_, _, next := serve(t, "new", listenerFromFD(t, lfd), states)
	<-next.started
	close(next.release)
	if r := <-answers; r.GetNewVersion() != "new" {
		t.Fatalf("answered by %+v, want the next process", r)
	}
}

// newFile wraps a descriptor number.
func newFile(fd int) *os.File { return os.NewFile(uintptr(fd), "handover") }
