package handover

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/internal/fdpass"
)

// Conn is an accepted ttrpc connection whose server only ever receives
// whole request frames. It remembers each request handed to the server
// until the server has written the frame that ends its stream, so it knows
// at any time which requests are still owed an answer. Gated, it stops
// handing frames at a frame boundary; settled, it can be written down.
type Conn struct {
	raw   *net.UnixConn
	set   *Set
	id    uint64 // the set's name for it, in the requests it hands (carryKey)
	carry func(service, method string) bool

	mu sync.Mutex
	// pending are bytes read from the socket not yet handed to the server;
	// the current frame is at the front. Guarded by mu.
	pending []byte
	// handed counts the bytes of the current frame already handed (0 at a
	// frame boundary). Guarded by mu.
	handed int
	// passing is set while a frame too large to hold is passed through
	// as it arrives. Guarded by mu.
	passing int
	// owed are the requests handed to the server whose streams have not
	// ended, by stream id. Guarded by mu.
	owed map[uint32]owed
	// out follows what the server writes. Guarded by mu.
	out outputParser
	// gated stops handing new frames; parked says the reader waits at a
	// boundary for the gate to lift; reading and writing say a goroutine is
	// in the socket. Guarded by mu.
	gated, parked, reading, writing bool
	// frozen is set once the conn has settled for a handover: a request
	// parked in a carryable wait stays parked (carry.Point.Unpark waits)
	// until the gate lifts. epoch counts the gates, for Unpark to tell
	// whether one came while the request waited. Guarded by mu.
	frozen bool
	epoch  uint64
	// releases undo the keeps of the parked requests the conn settled
	// with, when the gate lifts. Guarded by mu.
	releases []func()
	// sealed holds back every write: the conn is written down for the next
	// process, which answers what it owes; heldWrites counts the writes it
	// holds. Guarded by mu.
	sealed     bool
	heldWrites int
	// closed is set by Close; readErr is the socket's read error. Guarded by mu.
	closed  bool
	readErr error
	wake    *sync.Cond // on mu: the gate lifted, the seal broke, or the conn closed
}

// owed is a request handed to the server and not yet answered.
type owed struct {
	frame     []byte
	method    string // for the reason a conn does not settle
	carryable bool   // a long-lived request (Wait): its answer can come from the next process
	// parked says the request waits (carry.Wait, carry.Hold): it is
	// carried like a long-lived one, if keep (when set) says it can be
	// when the conn settles.
	parked bool
	keep   func() (release func(), ok bool)
}

func newConn(raw *net.UnixConn, set *Set, carry func(service, method string) bool, pending []byte) *Conn {
	c := &Conn{raw: raw, set: set, carry: carry, pending: pending, owed: make(map[uint32]owed)}
	c.wake = sync.NewCond(&c.mu)
	return c
}

// Read hands the server at most one frame's bytes at a time, and only
// frames that are whole (except ones too large to hold).
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			return 0, net.ErrClosed
		}
		if c.handed == 0 && c.passing == 0 && c.gated {
			c.parked = true
			c.set.changed()
			c.wake.Wait()
			c.parked = false
			continue
		}
		if n := c.handOut(p); n > 0 {
			return n, nil
		}
		if c.readErr != nil {
			return 0, c.readErr
		}
		c.fill()
	}
}

// handOut copies the next bytes of a whole frame (or of a frame being
// passed through) into p. Called with mu held.
func (c *Conn) handOut(p []byte) int {
	if c.passing > 0 {
		n := copy(p, c.pending[:min(c.passing, len(c.pending))])
		c.pending = c.pending[n:]
		c.passing -= n
		return n
	}
	h := parseHeader(c.pending)
	if !h.complete {
		return 0
	}
	if h.length > maxData {
		// ttrpc refuses it; pass it through rather than hold it whole.
		c.passing = h.frameLen()
		return c.handOut(p)
	}
	if len(c.pending) < h.frameLen() {
		return 0
	}
	if c.handed == 0 && h.kind == typeRequest {
		frame := append([]byte(nil), c.pending[:h.frameLen()]...)
		req, carryable := c.request(frame[headerLen:])
		c.owed[h.stream] = owed{frame: frame, method: req.GetService() + "/" + req.GetMethod(), carryable: carryable}
		// The server gets the request named, for its carry.Point; the
		// frame written down stays as the client sent it.
		if tagged := c.tag(req, h.stream); tagged != nil {
			c.pending = append(tagged, c.pending[h.frameLen():]...)
			h = parseHeader(c.pending)
		}
	}
	n := copy(p, c.pending[c.handed:h.frameLen()])
	c.handed += n
	if c.handed == h.frameLen() {
		c.pending = c.pending[h.frameLen():]
		c.handed = 0
	}
	return n
}

// request decodes a request payload and says whether its answer may come
// from the next process; req is nil if it does not decode (the server
// answers it with an error).
func (c *Conn) request(payload []byte) (req *ttrpc.Request, carryable bool) {
	req = &ttrpc.Request{}
	if proto.Unmarshal(payload, req) != nil {
		return nil, false
	}
	return req, c.carry(req.Service, req.Method)
}

// tag is the frame of req on stream with the conn and stream named in its
// metadata (carryKey), or nil if it cannot be (too large).
func (c *Conn) tag(req *ttrpc.Request, stream uint32) []byte {
	if req == nil {
		return nil
	}
	// Only this conn names the request: a client's own carryKey goes.
	md := req.Metadata[:0]
	for _, kv := range req.Metadata {
		if !strings.EqualFold(kv.Key, carryKey) {
			md = append(md, kv)
		}
	}
	req.Metadata = append(md, &ttrpc.KeyValue{Key: carryKey, Value: fmt.Sprintf("%d/%d", c.id, stream)})
	payload, err := proto.Marshal(req)
	if err != nil || len(payload) > maxData {
		return nil
	}
	return appendFrame(nil, stream, typeRequest, 0, payload)
}

// fill reads more from the socket, without the lock. Called with mu held.
func (c *Conn) fill() {
	c.reading = true
	c.mu.Unlock()
	buf := make([]byte, 4096)
	n, err := c.raw.Read(buf)
	c.mu.Lock()
	c.reading = false
	c.pending = append(c.pending, buf[:n]...)
	// A deadline only ever comes from gate, to wake this read up. A read
	// that must go on (the rest of a frame being passed through) waits
	// without it.
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if c.passing > 0 {
			_ = c.raw.SetReadDeadline(time.Time{})
		}
	} else if err != nil {
		c.readErr = err
	}
	if len(c.pending) == 0 && cap(c.pending) > 64<<10 {
		c.pending = nil // let a large frame's buffer go
	}
	c.set.changed()
}

// Write passes what the server writes to the socket and notes the streams
// that end.
func (c *Conn) Write(b []byte) (int, error) {
	c.mu.Lock()
	for c.sealed && !c.closed {
		c.heldWrites++
		c.set.changed()
		c.wake.Wait()
		c.heldWrites--
	}
	c.writing = true
	c.mu.Unlock()
	n, err := c.raw.Write(b)
	c.mu.Lock()
	c.writing = false
	c.out.feed(b[:n], func(stream uint32) { delete(c.owed, stream) })
	c.mu.Unlock()
	c.set.changed()
	return n, err
}

// Close closes the socket; the server calls it when done with the conn.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.wake.Broadcast()
	c.mu.Unlock()
	c.set.remove(c)
	return c.raw.Close()
}

func (c *Conn) LocalAddr() net.Addr                { return c.raw.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.raw.RemoteAddr() }
func (c *Conn) SetDeadline(t time.Time) error      { return c.raw.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.raw.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// gate stops handing frames; a reader blocked on the socket is woken to
// park at its boundary.
func (c *Conn) gate() {
	c.mu.Lock()
	c.gated = true
	c.epoch++
	c.mu.Unlock()
	_ = c.raw.SetReadDeadline(time.Unix(1, 0))
}

// ungate resumes handing frames and writing.
func (c *Conn) ungate() {
	_ = c.raw.SetReadDeadline(time.Time{})
	c.mu.Lock()
	c.gated, c.sealed, c.frozen = false, false, false
	releases := c.releases
	c.releases = nil
	c.wake.Broadcast()
	c.mu.Unlock()
	for _, release := range releases {
		release()
	}
}

// freezeIfSettled freezes the conn if it can be written down: gated, its
// reader parked (or the conn finished), nothing being written, and every
// request still owed one whose answer may come from the next process or
// one parked in a carryable wait (which stays parked from now on).
func (c *Conn) freezeIfSettled() (bool, string) {
	c.mu.Lock()
	if c.frozen {
		// Settled once: its parked requests are kept already; what is
		// left to see is an answer being written meanwhile.
		defer c.mu.Unlock()
		return c.settledLocked()
	}
	ok, why := c.settledLocked()
	if ok {
		// A parked request whose work in flight cannot be carried now
		// (keep) is waited for like one being served.
		var kept []func()
		for _, o := range c.owed {
			if !o.carryable && o.parked && o.keep != nil {
				release, carried := o.keep()
				if !carried {
					ok, why = false, "a request's work in flight cannot be carried now: "+o.method
					break
				}
				kept = append(kept, release)
			}
		}
		if ok {
			c.frozen, c.releases = true, kept
		} else {
			defer func() {
				for _, release := range kept {
					release()
				}
			}()
		}
	}
	c.mu.Unlock()
	return ok, why
}

// settledLocked says whether the conn can be written down, or why not.
// Called with mu held.
func (c *Conn) settledLocked() (bool, string) {
	switch {
	case c.closed:
		return true, ""
	case !c.parked && c.readErr == nil:
		return false, "a request is being received"
	case c.writing || !c.out.atBoundary():
		return false, "an answer is being written"
	}
	for _, o := range c.owed {
		if !o.carryable && !o.parked {
			return false, "a request is being served: " + o.method
		}
	}
	return true, ""
}

// point is where the request on stream may be carried over (carry.Point).
type point struct {
	c      *Conn
	stream uint32
}

func (p point) Park(keep func() (func(), bool)) uint64 {
	c := p.c
	c.mu.Lock()
	if o, ok := c.owed[p.stream]; ok {
		o.parked, o.keep = true, keep
		c.owed[p.stream] = o
	}
	epoch := c.epoch
	c.mu.Unlock()
	c.set.changed()
	return epoch
}

func (p point) Ready() { p.c.set.changed() }

func (p point) Unpark(epoch uint64) (again bool) {
	c := p.c
	c.mu.Lock()
	for c.frozen && !c.closed {
		c.wake.Wait()
	}
	if o, ok := c.owed[p.stream]; ok {
		o.parked, o.keep = false, nil
		c.owed[p.stream] = o
	}
	again = c.epoch != epoch
	c.mu.Unlock()
	c.set.changed()
	return again
}

// State is a settled conn written down.
type State struct {
	FD      int      // the socket: a duplicate that survives execve
	Carried [][]byte // the frames of the requests still owed, in stream order
	Pending []byte   // bytes read and not handed
}

// state writes a settled conn down and seals it.
func (c *Conn) state() (State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ok, why := c.settledLocked(); !ok {
		return State{}, fmt.Errorf("handover: %s", why)
	}
	fd, err := rawFD(c.raw)
	if err == nil {
		fd, err = fdpass.Dup(fd)
	}
	if err != nil {
		return State{}, err
	}
	streams := make([]uint32, 0, len(c.owed))
	for s := range c.owed {
		streams = append(streams, s)
	}
	sort.Slice(streams, func(i, j int) bool { return streams[i] < streams[j] })
	st := State{FD: fd, Pending: append([]byte(nil), c.pending...)}
	for _, s := range streams {
		st.Carried = append(st.Carried, c.owed[s].frame)
	}
	c.sealed = true
	return st, nil
}

// rawFD is the descriptor behind a socket.
func rawFD(sc syscall.Conn) (int, error) {
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, err
	}
	return fd, nil
}
