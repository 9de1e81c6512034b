// Package handover keeps a shim's ttrpc connections and its listening
// socket movable to another process — the same shim re-executed in place.
// The ttrpc server only ever receives whole request frames; each
// connection knows which requests are still owed an answer; gated, it
// stops at a frame boundary, and once short requests are answered it can be
// written down: the socket, the long-lived requests still owed (Wait) and
// the bytes read but not handed. The next process hands those again to its
// own server, which answers them on the same streams. Nothing is lost or
// duplicated, and no lock is held while reading or writing a socket.
package handover

import (
	"context"
	"fmt"
	"net"
	"sync"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/fdpass"
)

// Set is a shim's listener and the connections it accepted.
type Set struct {
	carry func(service, method string) bool

	mu sync.Mutex
	// conns are the live connections. Guarded by mu.
	conns map[*Conn]struct{}
	// gated is set between Gate and Ungate: a connection added meanwhile
	// (accepted while Gate ran) is gated too. Guarded by mu.
	gated bool
	// notify is signalled (without blocking) whenever a conn's state
	// changes, for settle.
	notify chan struct{}
}

// NewSet returns a set whose connections may carry the requests carry
// accepts (by ttrpc service and method) over to the next process.
func NewSet(carry func(service, method string) bool) *Set {
	return &Set{carry: carry, conns: make(map[*Conn]struct{}), notify: make(chan struct{}, 1)}
}

func (s *Set) changed() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

func (s *Set) add(c *Conn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	gated := s.gated
	s.mu.Unlock()
	if gated {
		c.gate()
	}
}

func (s *Set) remove(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.changed()
}

func (s *Set) all() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Conn, 0, len(s.conns))
	for c := range s.conns {
		out = append(out, c)
	}
	return out
}

// Gate stops every connection at its next frame boundary (and the
// listener, if given, from accepting: new connections wait in the
// socket's backlog).
func (s *Set) Gate(l *Listener) {
	s.mu.Lock()
	s.gated = true
	s.mu.Unlock()
	if l != nil {
		l.gate()
	}
	for _, c := range s.all() {
		c.gate()
	}
}

// Ungate resumes everything Gate stopped (and States sealed).
func (s *Set) Ungate(l *Listener) {
	s.mu.Lock()
	s.gated = false
	s.mu.Unlock()
	for _, c := range s.all() {
		c.ungate()
	}
	if l != nil {
		l.ungate()
	}
}

// Settle waits until every connection is settled: gated at a boundary,
// nothing being written, only long-lived requests owed. It gives up when
// ctx ends, saying what it waited for.
func (s *Set) Settle(ctx context.Context) error {
	for {
		var why string
		for _, c := range s.all() {
			if ok, reason := c.settled(); !ok {
				why = reason
				break
			}
		}
		if why == "" {
			return nil
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return fmt.Errorf("connections did not settle (%s): %w", why, ctx.Err())
		}
	}
}

// States writes every settled connection down and seals it: nothing more
// is written to it by this process (an answer the server produces now
// waits; the next process gives it, or Ungate lets it go). On error,
// nothing is left open.
func (s *Set) States() ([]State, error) {
	var out []State
	for _, c := range s.all() {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		if closed {
			continue
		}
		st, err := c.state()
		if err != nil {
			for _, o := range out {
				fdpass.Close(o.FD)
			}
			return nil, err
		}
		out = append(out, st)
	}
	return out, nil
}

// Handshaker is the ttrpc server's handshake for connections of a Set: the
// peer must run as the shim's own user (root), as ttrpc's
// UnixSocketRequireSameUser checks, read from the socket under the Conn.
func (s *Set) Handshaker() ttrpc.Handshaker { return handshaker{} }

type handshaker struct{}

func (handshaker) Handshake(_ context.Context, conn net.Conn) (net.Conn, any, error) {
	c, ok := conn.(*Conn)
	if !ok {
		return nil, nil, fmt.Errorf("handover: a connection of another listener")
	}
	fd, err := rawFD(c.raw)
	if err != nil {
		return nil, nil, err
	}
	cred, err := unix.GetsockoptUcred(fd, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return nil, nil, fmt.Errorf("handover: peer credentials: %w", err)
	}
	if int(cred.Uid) != unix.Geteuid() || int(cred.Gid) != unix.Getegid() {
		return nil, nil, fmt.Errorf("handover: peer uid %d gid %d is not the shim's user", cred.Uid, cred.Gid)
	}
	return c, nil, nil
}
