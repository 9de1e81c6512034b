// Package pump moves bytes from one descriptor to another, a process's
// output to its client or a client's input to its process: splice(2)
// between two pipes, read and write through a small buffer otherwise,
// waiting in Go's poller while a side would block. It says when what the
// process wrote before it exited has moved (drained), and can be parked
// between two system calls and taken up again, in this process or the next
// (a live upgrade), without losing or doubling a byte.
package pump

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Pump moves bytes from src to dst until src reaches EOF: a process's output
// from the read end of its stdout or stderr pipe (or its console master) to
// what the client reads, or the client's stdin into the process. Between two pipes it uses splice(2): pages move in the kernel
// and the pump holds no buffer.
//
// When the process exits, Exited is called: the pump then moves whatever is
// already buffered in src and closes drained, so the exit can be reported
// knowing that every byte the process wrote has been passed on. It keeps
// running afterwards for writers that outlive the process (its children).
type Pump struct {
	src, dst *os.File // owned (only the pump closes them, when it ends) but a kept one
	// keepSrc and keepDst say src or dst is not the pump's to close
	// (Options).
	keepSrc, keepDst bool
	srcRaw, dstRaw   syscall.RawConn
	// sfd and dfd are the raw descriptors of src and dst. They stay valid
	// while the pump runs because nothing else closes src or dst.
	sfd, dfd int
	splice   bool
	// tty is set for a console source: the kernel hands a terminal's output
	// to its master asynchronously, so "nothing to read" right after the
	// exit does not yet mean "nothing more will come".
	tty     bool
	buf     []byte // buffered mode only
	pending []byte // buffered mode: read from src, not yet written to dst
	err     error  // the failure behind a stepFailed
	// dstFull, if set, is called each time the pump starts waiting for dst
	// to take more (tests synchronise on it).
	dstFull func()

	exitOnce    sync.Once
	processGone atomic.Bool   // Exited has been called
	stopping    atomic.Bool   // Stop (or park) has been called
	parking     atomic.Bool   // park has been called: src and dst stay open
	finished    bool          // Run ended on its own (EOF or an error); written by Run before done
	drained     chan struct{} // closed once the output written before the exit has moved
	drainOnce   sync.Once
	done        chan struct{} // closed when the pump has ended and closed src and dst
	onEnd       func()        // Options.OnEnd
}

// Options are what a pump is told besides its two ends.
type Options struct {
	// KeepSrc and KeepDst say src or dst is not the pump's to close (a
	// terminal's master, which its owner shares between two pumps).
	KeepSrc, KeepDst bool
	// OnEnd, if set, is called once the pump has ended on its own (the
	// output is over) and closed dst.
	OnEnd func()
}

// New prepares a pump that owns src and dst (but what opts keeps); start
// it with go p.Run().
func New(src, dst *os.File, opts Options) (*Pump, error) {
	p := &Pump{src: src, dst: dst, keepSrc: opts.KeepSrc, keepDst: opts.KeepDst, onEnd: opts.OnEnd,
		drained: make(chan struct{}), done: make(chan struct{})}
	var err error
	if p.srcRaw, err = src.SyscallConn(); err != nil {
		return nil, fmt.Errorf("pump source: %w", err)
	}
	if p.dstRaw, err = dst.SyscallConn(); err != nil {
		return nil, fmt.Errorf("pump destination: %w", err)
	}
	p.srcRaw.Control(func(fd uintptr) { p.sfd = int(fd) })
	p.dstRaw.Control(func(fd uintptr) { p.dfd = int(fd) })
	p.splice = isPipe(p.sfd) && isPipe(p.dfd)
	_, ttyErr := unix.IoctlGetTermios(p.sfd, unix.TCGETS)
	p.tty = ttyErr == nil
	if !p.splice {
		size := 32 << 10
		if !isPipe(p.sfd) {
			size = 4 << 10 // a console delivers at most a line discipline buffer at a time
		}
		p.buf = make([]byte, size)
	}
	return p, nil
}

func isPipe(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO
}

// ttySettle is how long a console is read after the exit before its output
// counts as drained (unless the terminal closes first).
const ttySettle = 100 * time.Millisecond

type step int

const (
	stepMoved    step = iota // some bytes moved; go on
	stepAgain                // interrupted (EINTR) before anything moved; go on
	stepSrcEmpty             // nothing to read right now
	stepDstFull              // the destination takes no more right now
	stepEOF                  // src is done and nothing is pending
	stepFailed               // p.err says why
)

// step moves at most one chunk without blocking.
func (p *Pump) step() step {
	if p.splice {
		n, err := unix.Splice(p.sfd, nil, p.dfd, nil, 1<<20, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
		switch {
		case n > 0:
			return stepMoved
		case err == nil:
			return stepEOF
		case errors.Is(err, unix.EINTR):
			return stepAgain
		case errors.Is(err, unix.EAGAIN):
			return p.blockedSide()
		}
		p.err = fmt.Errorf("splice: %w", err)
		return stepFailed
	}
	if len(p.pending) > 0 {
		n, err := unix.Write(p.dfd, p.pending)
		switch {
		case n > 0:
			p.pending = p.pending[n:]
			return stepMoved
		case errors.Is(err, unix.EAGAIN):
			return stepDstFull
		case errors.Is(err, unix.EINTR):
			return stepAgain
		}
		p.err = fmt.Errorf("write: %w", err)
		return stepFailed
	}
	n, err := unix.Read(p.sfd, p.buf)
	switch {
	case n > 0:
		p.pending = p.buf[:n]
		return stepMoved
	case err == nil, errors.Is(err, unix.EIO):
		return stepEOF // EIO: the console's other side is closed
	case errors.Is(err, unix.EAGAIN):
		return stepSrcEmpty
	case errors.Is(err, unix.EINTR):
		return stepAgain
	}
	p.err = fmt.Errorf("read: %w", err)
	return stepFailed
}

// blockedSide says which side a splice that answered EAGAIN waits for. The
// kernel answers EAGAIN whenever dst is full, also when src is at its end
// (no writer left, nothing buffered): a splice says 0 for that only once dst
// has room again. Waiting for src then would wait forever (its hang-up was
// signalled once, long ago), so src at its end is the end of the pump: a
// splice leaves nothing in flight between the two pipes. Bytes waiting in
// src mean dst is the one that blocks; an empty src with a writer left is
// worth waiting for, as anything it does next wakes the poller.
func (p *Pump) blockedSide() step {
	fds := []unix.PollFd{{Fd: int32(p.sfd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, 0)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			p.err = fmt.Errorf("poll: %w", err)
			return stepFailed
		}
	}
	switch ev := fds[0].Revents; {
	case ev&unix.POLLIN != 0:
		return stepDstFull
	case ev&(unix.POLLHUP|unix.POLLERR) != 0:
		return stepEOF
	}
	return stepSrcEmpty
}

// move runs steps, waiting in the poller while a side would block. With
// untilEmpty it returns as soon as src has nothing buffered.
func (p *Pump) move(untilEmpty bool) (eof bool, err error) {
	for {
		var s step
		err := p.srcRaw.Read(func(uintptr) bool {
			s = p.step()
			return s != stepSrcEmpty || untilEmpty
		})
		if err != nil {
			return false, err
		}
		if s == stepDstFull {
			if p.dstFull != nil {
				p.dstFull()
			}
			err = p.dstRaw.Write(func(uintptr) bool {
				s = p.step()
				return s != stepDstFull
			})
			if err != nil {
				return false, err
			}
		}
		switch s {
		case stepEOF:
			return true, nil
		case stepFailed:
			return false, p.err
		case stepSrcEmpty:
			if untilEmpty {
				return false, nil
			}
		}
	}
}

// Run moves bytes until src ends, dst fails, or Stop is called.
func (p *Pump) Run() (err error) {
	defer close(p.done)
	// Drained only once dst is closed (and onEnd called) when the pump
	// ends: what follows the exit sees the output's end.
	defer p.drainOnce.Do(func() { close(p.drained) })
	defer func() {
		if p.parking.Load() && !p.finished {
			return // parked: src and dst go on, in this process or the next
		}
		if !p.keepDst {
			p.dst.Close()
		}
		if !p.keepSrc {
			p.src.Close()
		}
		if p.finished && p.onEnd != nil {
			p.onEnd() // before drained: the exit is reported after it
		}
	}()
	defer func() { p.finished = !p.stopping.Load() }()
	for {
		eof, err := p.move(false)
		switch {
		case eof:
			return nil
		case p.stopping.Load():
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded) && p.processGone.Load():
			// Woken by Exited: move what is buffered, then report drained.
			_ = p.src.SetReadDeadline(time.Time{})
			eof, err = p.move(true)
			if p.tty && !eof && err == nil {
				// Give output still on its way through the terminal a moment.
				_ = p.src.SetReadDeadline(time.Now().Add(ttySettle))
				eof, err = p.move(false)
				if errors.Is(err, os.ErrDeadlineExceeded) && !p.stopping.Load() {
					err = nil
				}
				_ = p.src.SetReadDeadline(time.Time{})
			}
			if eof || p.stopping.Load() {
				return nil
			}
			if err != nil {
				return err
			}
			// A writer lingers (a child of the process): drained, going on.
			p.drainOnce.Do(func() { close(p.drained) })
		default:
			return err
		}
	}
}

// Exited tells the pump that the process has exited.
func (p *Pump) Exited() {
	p.exitOnce.Do(func() {
		p.processGone.Store(true)
		// Wake the pump if it is waiting for input.
		// (src closed: the pump is ending, and reports drained itself.)
		if err := p.src.SetReadDeadline(time.Now()); err != nil && !errors.Is(err, os.ErrClosed) {
			p.drainOnce.Do(func() { close(p.drained) })
		}
	})
}

// WaitDrained waits until the output written before the exit has moved, the
// pump has ended, or timeout passes (a client that does not read must not
// hold back the exit forever; the pump goes on moving output afterwards).
func (p *Pump) WaitDrained(timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.drained:
	case <-p.done:
	case <-t.C:
	}
}

// Finish stops the pump once what the process wrote before it exited has
// moved, without waiting for that: at once if it has moved (what comes
// after, from a child still holding the output, is cut, as containerd's
// runc shim cuts it) or if the process has not exited, else in the
// background once it has, or after within for a client that does not read.
func (p *Pump) Finish(within time.Duration) {
	select {
	case <-p.drained:
		p.Stop()
		return
	case <-p.done:
		return
	default:
	}
	if !p.processGone.Load() {
		p.Stop()
		return
	}
	go func() {
		t := time.NewTimer(within)
		defer t.Stop()
		select {
		case <-p.drained:
		case <-p.done:
		case <-t.C:
		}
		p.Stop()
	}()
}

// Stop ends the pump even if src or dst would block, and waits for it.
func (p *Pump) Stop() {
	p.stopping.Store(true)
	past := time.Unix(1, 0)
	_ = p.src.SetReadDeadline(past)
	_ = p.dst.SetWriteDeadline(past)
	<-p.done
}

// Done is closed once the pump has ended and closed what it owns.
func (p *Pump) Done() <-chan struct{} { return p.done }
