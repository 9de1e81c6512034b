package daemon

import (
	"context"
	"encoding/binary"
	"net"
	"sync"

	"github.com/containerd/ttrpc"
)

// openConns follows the server's open connections and the requests each
// has read and not yet answered, so that a shim that was asked to exit
// closes its connections as soon as every answer it owes is written: the
// Shutdown (or ShutdownSandbox) that ended it among them, which containerd
// must get (it does not forgive a ShutdownSandbox that fails with "ttrpc:
// closed"). ttrpc's own Server.Shutdown may close a connection whose last
// answer is still on its way (it takes a connection for idle until its
// loop has run once after the request came in). A connection a client
// keeps open without a request (a tool's, a test's) does not hold the shim
// up: containerd's runc shim's exit closes it at once too, and containerd's
// CRI suite dials the shim to check that it is gone.
//
// Written is not enough for an answer given while the shim winds down:
// ttrpc's client (containerd's, 1.2.9 in containerd 2.4.2) loses an answer
// it has read when the connection ends before its caller picks the answer
// up (its dispatch's select may take the client's end first, "ttrpc:
// closed"). containerd forgives that for the task API's Shutdown, not for
// ShutdownSandbox. So a connection that owed an answer once the shim began
// winding down is left for its client to hang up (containerd closes its
// client right after the answer, in its shim manager's Delete), within the
// wait's bound.
type openConns struct {
	mu          sync.Mutex
	open        map[*countedConn]struct{} // guarded by mu
	change      chan struct{}             // guarded by mu: closed when an answer or a close may end a wait; nil while nobody waits
	windingDown bool                      // guarded by mu: see windDown
}

// handshaker wraps inner so that every connection it approves is followed.
func (o *openConns) handshaker(inner ttrpc.Handshaker) ttrpc.Handshaker {
	return handshakerFunc(func(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
		approved, info, err := inner.Handshake(ctx, conn)
		if err != nil {
			return nil, nil, err
		}
		c := &countedConn{Conn: approved, conns: o, pending: map[uint32]struct{}{}}
		o.mu.Lock()
		if o.open == nil {
			o.open = map[*countedConn]struct{}{}
		}
		o.open[c] = struct{}{}
		o.mu.Unlock()
		return c, info, nil
	})
}

type handshakerFunc func(ctx context.Context, conn net.Conn) (net.Conn, any, error)

func (fn handshakerFunc) Handshake(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
	return fn(ctx, conn)
}

// changedLocked wakes a wait.
func (o *openConns) changedLocked() {
	if o.change != nil {
		close(o.change)
		o.change = nil
	}
}

// windDown says the shim has begun to exit (before the answer to the
// request that asked it to is written): the connections that owe an answer
// now, or answer one from now on, are waited for until their clients hang
// up.
func (o *openConns) windDown() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.windingDown = true
	for c := range o.open {
		if len(c.pending) > 0 {
			c.answered = true
		}
	}
}

// holding says whether an open connection has a request without its
// answer, or an answer given while winding down that its client may not
// have picked up yet.
func (o *openConns) holdingLocked() bool {
	for c := range o.open {
		if len(c.pending) > 0 || c.answered {
			return true
		}
	}
	return false
}

// wait returns once every request read on an open connection has its
// answer written, and every connection answered while winding down is
// closed by its client, or ctx is done.
func (o *openConns) wait(ctx context.Context) error {
	for {
		o.mu.Lock()
		if !o.holdingLocked() {
			o.mu.Unlock()
			return nil
		}
		if o.change == nil {
			o.change = make(chan struct{})
		}
		change := o.change
		o.mu.Unlock()
		select {
		case <-change:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// countedConn is a followed connection: the ttrpc frames it reads and
// writes tell which requests (by stream) await their answer. ttrpc reads
// in one goroutine and writes in another, so each direction's parser has
// one user; pending is guarded by conns.mu.
type countedConn struct {
	net.Conn
	once    sync.Once
	conns   *openConns
	in, out frames
	pending map[uint32]struct{} // streams whose request was read, not answered
	// answered says the connection owed an answer while the shim wound
	// down (openConns.windDown): kept until its client hangs up.
	answered bool
}

// ttrpc's message types (its channel.go): a frame is a 10-byte header
// (length, stream id, type, flags; big endian) and length bytes of payload.
const (
	ttrpcRequest  = 1
	ttrpcResponse = 2
)

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.in.feed(p[:n], func(stream uint32, typ byte) {
		if typ == ttrpcRequest {
			c.conns.mu.Lock()
			c.pending[stream] = struct{}{}
			c.conns.mu.Unlock()
		}
	})
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.out.feed(p[:n], func(stream uint32, typ byte) {
		if typ != ttrpcResponse {
			return
		}
		// A request the previous process read before a live upgrade is
		// answered here without having been read here: nothing to settle.
		c.conns.mu.Lock()
		if _, ok := c.pending[stream]; ok {
			delete(c.pending, stream)
			c.answered = c.answered || c.conns.windingDown
			c.conns.changedLocked()
		}
		c.conns.mu.Unlock()
	})
	return n, err
}

// Close closes the connection; it stops being followed (once).
func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.conns.mu.Lock()
		delete(c.conns.open, c)
		c.conns.changedLocked()
		c.conns.mu.Unlock()
	})
	return err
}

// frames finds the ttrpc frame headers in one direction of a connection's
// bytes, however they are split between reads or writes.
type frames struct {
	header [10]byte
	have   int    // header bytes seen of the frame being read
	skip   uint32 // payload bytes left of the current frame
}

// feed goes through b, calling frame with each complete header's stream
// and type.
func (f *frames) feed(b []byte, frame func(stream uint32, typ byte)) {
	for len(b) > 0 {
		if f.skip > 0 {
			n := min(uint32(len(b)), f.skip)
			f.skip -= n
			b = b[n:]
			continue
		}
		n := copy(f.header[f.have:], b)
		f.have += n
		b = b[n:]
		if f.have < len(f.header) {
			return
		}
		f.have = 0
		f.skip = binary.BigEndian.Uint32(f.header[0:4])
		frame(binary.BigEndian.Uint32(f.header[4:8]), f.header[8])
	}
}
