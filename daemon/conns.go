package daemon

import (
	"context"
	"net"
	"sync"

	"github.com/containerd/ttrpc"
)

// openConns counts the server's open connections, so that a shim that was
// asked to exit waits for its clients to hang up before it closes what is
// left. ttrpc's own Server.Shutdown may close a connection whose last
// request's answer is still on its way (it takes a connection for idle
// until its loop has run once after the request came in): containerd would
// see a ShutdownSandbox fail with "ttrpc: closed". containerd closes its
// connections to a shim right after asking it to exit.
type openConns struct {
	mu sync.Mutex
	n  int           // guarded by mu: connections accepted and not closed
	no chan struct{} // guarded by mu: closed when n drops to 0; nil while nobody waits
}

// handshaker wraps inner so that every connection it approves is counted.
func (o *openConns) handshaker(inner ttrpc.Handshaker) ttrpc.Handshaker {
	return handshakerFunc(func(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
		approved, info, err := inner.Handshake(ctx, conn)
		if err != nil {
			return nil, nil, err
		}
		o.mu.Lock()
		o.n++
		o.mu.Unlock()
		return &countedConn{Conn: approved, conns: o}, info, nil
	})
}

type handshakerFunc func(ctx context.Context, conn net.Conn) (net.Conn, any, error)

func (fn handshakerFunc) Handshake(ctx context.Context, conn net.Conn) (net.Conn, any, error) {
	return fn(ctx, conn)
}

func (o *openConns) closed() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n--
	if o.n == 0 && o.no != nil {
		close(o.no)
		o.no = nil
	}
}

// wait returns once no connection is open, or ctx is done.
func (o *openConns) wait(ctx context.Context) error {
	o.mu.Lock()
	if o.n == 0 {
		o.mu.Unlock()
		return nil
	}
	if o.no == nil {
		o.no = make(chan struct{})
	}
	no := o.no
	o.mu.Unlock()
	select {
	case <-no:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// countedConn is a connection that leaves the count when first closed.
type countedConn struct {
	net.Conn
	once  sync.Once
	conns *openConns
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.conns.closed)
	return err
}
