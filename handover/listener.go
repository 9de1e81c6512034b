package handover

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/tether-shim/tether/internal/fdpass"
)

// Listener accepts a Set's connections. Connections restored from a
// previous process come out of Accept first.
type Listener struct {
	raw *net.UnixListener
	set *Set

	mu sync.Mutex
	// restored are connections taken back from a previous process, not yet
	// accepted. Guarded by mu.
	restored []*Conn
	// gated stops accepting; closed is set by Close. Guarded by mu.
	gated, closed bool
	wake          *sync.Cond // on mu: the gate lifted, or the listener closed
}

// Listen wraps the shim's listening socket for s (nil: the shim could not
// take its socket back, and serves only the connections restored);
// restored are the connections taken back from a previous process, each
// through a close-on-exec duplicate (the descriptor received stays as it
// was). A connection that cannot be taken back is left out and named in
// the error, with the listener.
func (s *Set) Listen(raw *net.UnixListener, restored []State) (*Listener, error) {
	l := &Listener{raw: raw, set: s}
	l.wake = sync.NewCond(&l.mu)
	var errs []error
	for _, st := range restored {
		c, err := s.restore(st)
		if err != nil {
			errs = append(errs, fmt.Errorf("connection on descriptor %d: %w", st.FD, err))
			continue
		}
		l.restored = append(l.restored, c)
	}
	return l, errors.Join(errs...)
}

// restore takes back a connection written down by another process: its
// socket, and the frames to hand its server first.
func (s *Set) restore(st State) (*Conn, error) {
	fd, err := fdpass.Take(st.FD)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(fd), "ttrpc-conn")
	fc, err := net.FileConn(f)
	f.Close() // FileConn holds a duplicate
	if err != nil {
		return nil, err
	}
	raw, ok := fc.(*net.UnixConn)
	if !ok {
		fc.Close()
		return nil, errors.New("handover: restored connection is not a unix socket")
	}
	var pending []byte
	for _, frame := range st.Carried {
		pending = append(pending, frame...)
	}
	pending = append(pending, st.Pending...)
	c := newConn(raw, s, s.carry, pending)
	s.add(c)
	return c, nil
}

// Accept returns the next connection: a restored one, or a new one. While
// gated it waits (new connections queue in the socket's backlog for the
// next process).
func (l *Listener) Accept() (net.Conn, error) {
	for {
		l.mu.Lock()
		for !l.closed && len(l.restored) == 0 && l.gated {
			l.wake.Wait()
		}
		if l.closed {
			l.mu.Unlock()
			return nil, net.ErrClosed
		}
		if len(l.restored) > 0 {
			c := l.restored[0]
			l.restored = l.restored[1:]
			l.mu.Unlock()
			return c, nil
		}
		if l.raw == nil {
			// No socket to accept on: wait to be closed.
			for !l.closed {
				l.wake.Wait()
			}
			l.mu.Unlock()
			continue
		}
		l.mu.Unlock()
		raw, err := l.raw.AcceptUnix()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue // woken by gate
		}
		if err != nil {
			return nil, err
		}
		c := newConn(raw, l.set, l.set.carry, nil)
		l.set.add(c)
		return c, nil
	}
}

func (l *Listener) gate() {
	l.mu.Lock()
	l.gated = true
	l.mu.Unlock()
	if l.raw != nil {
		_ = l.raw.SetDeadline(time.Unix(1, 0))
	}
}

func (l *Listener) ungate() {
	if l.raw != nil {
		_ = l.raw.SetDeadline(time.Time{})
	}
	l.mu.Lock()
	l.gated = false
	l.wake.Broadcast()
	l.mu.Unlock()
}

// Close closes the listening socket.
func (l *Listener) Close() error {
	l.mu.Lock()
	l.closed = true
	l.wake.Broadcast()
	l.mu.Unlock()
	if l.raw == nil {
		return nil
	}
	return l.raw.Close()
}

func (l *Listener) Addr() net.Addr {
	if l.raw == nil {
		return &net.UnixAddr{Net: "unix"}
	}
	return l.raw.Addr()
}

// FD is a duplicate of the listening socket that survives execve.
func (l *Listener) FD() (int, error) {
	if l.raw == nil {
		return -1, errors.New("handover: the shim has no listening socket")
	}
	fd, err := rawFD(l.raw)
	if err != nil {
		return -1, err
	}
	return fdpass.Dup(fd)
}
