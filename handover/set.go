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

	"github.com/tether-shim/tether/internal/carry"
	"github.com/tether-shim/tether/internal/fdpass"
)

// Set is a shim's listener and the connections it accepted.
type Set struct {
	carry func(service, method string) bool

	mu sync.Mutex
	// conns are the live connections, by their id. Guarded by mu.
	conns  map[uint64]*Conn
	lastID uint64 // guarded by mu
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
	return &Set{carry: carry, conns: make(map[uint64]*Conn), notify: make(chan struct{}, 1)}
}

func (s *Set) changed() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// add makes c one of the set's connections, named by a new id: the set
// must not know it yet (newConn's is 0).
func (s *Set) add(c *Conn) {
	s.mu.Lock()
	s.lastID++
	c.id = s.lastID
	s.conns[c.id] = c
	gated := s.gated
	s.mu.Unlock()
	if gated {
		c.gate()
	}
}

func (s *Set) remove(c *Conn) {
	s.mu.Lock()
	delete(s.conns, c.id)
	s.mu.Unlock()
	s.changed()
}

func (s *Set) all() []*Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Conn, 0, len(s.conns))
	for _, c := range s.conns {
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
// nothing being written, only long-lived requests owed and requests parked
// in a carryable wait, which stay parked from then on until Ungate. It
// gives up when ctx ends, saying what it waited for.
func (s *Set) Settle(ctx context.Context) error {
	for {
		var why string
		for _, c := range s.all() {
			if ok, reason := c.freezeIfSettled(); !ok {
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

// AwaitServed waits until the requests being served now (all but the
// long-lived ones and those parked in a carryable wait) have been
// answered, or their connections closed, or ctx ends: an upgrade that
// could not settle within its bound tries again after them, with the
// gate lifted.
func (s *Set) AwaitServed(ctx context.Context) error {
	type request struct {
		c      *Conn
		stream uint32
	}
	var busy []request
	for _, c := range s.all() {
		c.mu.Lock()
		for stream, o := range c.owed {
			if !o.carryable && !o.parked {
				busy = append(busy, request{c, stream})
			}
		}
		c.mu.Unlock()
	}
	for {
		left := busy[:0]
		for _, r := range busy {
			r.c.mu.Lock()
			_, owed := r.c.owed[r.stream]
			if owed && !r.c.closed {
				left = append(left, r)
			}
			r.c.mu.Unlock()
		}
		if busy = left; len(busy) == 0 {
			return nil
		}
		select {
		case <-s.notify:
		case <-ctx.Done():
			return fmt.Errorf("%d requests still being served: %w", len(busy), ctx.Err())
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

// carryKey is the ttrpc metadata that names a request's conn and stream
// ("conn/stream"), which the set's Conns add to every request they hand
// their server.
const carryKey = "tether-handover-request"

// Point is where the request ctx belongs to may be carried over to the
// next process while it waits (carry.Wait); nil for a request that did not
// come through one of the set's connections.
func (s *Set) Point(ctx context.Context) carry.Point {
	v, ok := ttrpc.GetMetadataValue(ctx, carryKey)
	if !ok {
		return nil
	}
	var id uint64
	var stream uint32
	if _, err := fmt.Sscanf(v, "%d/%d", &id, &stream); err != nil {
		return nil
	}
	s.mu.Lock()
	c := s.conns[id]
	s.mu.Unlock()
	if c == nil {
		return nil
	}
	return point{c: c, stream: stream}
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
