package stdio

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/failpoint"
	"github.com/tether-shim/tether/internal/fdpass"
)

// The stdio of a process can be written down and taken back by the next
// process when the shim re-executes itself in place: every pump is parked
// between two system calls (what it read and has not written yet is kept),
// its descriptors stay open, and the next process starts pumping again
// from where this one stopped. No byte is lost or moved twice.

// State is an IO written down: descriptors that survive execve (duplicates:
// the IO keeps its own) and the bytes in flight.
type State struct {
	Outputs       []PumpState
	Input         *PumpState
	Readers       []ReaderState // the shim's own readers on the output fifos
	StdinKeepOpen int           // -1: none
	Console       int           // -1: none
	LoggerPid     int           // 0: none
	// LoggerWriters are the shim's write ends of the logging binary's
	// pipes (none if written by a binary that did not hold them).
	LoggerWriters []int
}

// ReaderState is the shim's own reader on a client's output fifo.
type ReaderState struct {
	Fd         int
	ClientSeen bool
	Held       bool // held for a late client: to be held again
}

// PumpState is a parked pump.
type PumpState struct {
	Src, Dst    int
	Pending     []byte
	ProcessGone bool // the process has exited: the pump serves lingering writers
}

// ErrNotMovable says an IO cannot be written down: its process has not
// started yet (a restore from a checkpoint waiting for Start): its ends of
// the pipes, or its terminal, are still the shim's.
var ErrNotMovable = errors.New("stdio of a process whose terminal is not set up yet cannot move")

// park stops the pump between two system calls, leaving src and dst open,
// and says what it held; ok is false if the pump had already ended (its
// descriptors are closed).
func (p *pump) park() (st PumpState, ok bool) {
	p.parking.Store(true)
	p.stopping.Store(true)
	past := time.Unix(1, 0)
	_ = p.src.SetReadDeadline(past)
	_ = p.dst.SetWriteDeadline(past)
	<-p.done
	if p.finished {
		return PumpState{}, false
	}
	_ = p.src.SetReadDeadline(time.Time{})
	_ = p.dst.SetWriteDeadline(time.Time{})
	return PumpState{
		Src: p.sfd, Dst: p.dfd,
		Pending:     append([]byte(nil), p.pending...),
		ProcessGone: p.processGone.Load(),
	}, true
}

// resume starts a pump again on src and dst from a parked state.
func resume(src, dst *os.File, st PumpState, onEnd func()) (*pump, error) {
	p, err := parkedPump(src, dst, st, onEnd)
	if err != nil {
		return nil, err
	}
	go p.run()
	return p, nil
}

// parkedPump is a pump on src and dst in a parked state, not running.
func parkedPump(src, dst *os.File, st PumpState, onEnd func()) (*pump, error) {
	p, err := newPump(src, dst)
	if err != nil {
		return nil, err
	}
	p.onEnd = onEnd
	if len(st.Pending) > 0 {
		if p.splice {
			// A splice pump holds nothing; this one did (it was not one).
			p.splice = false
			p.buf = make([]byte, 32<<10)
		}
		p.pending = append(p.buf[:0], st.Pending...)
	}
	if st.ProcessGone {
		p.processGone.Store(true)
		p.drainOnce.Do(func() { close(p.drained) })
	}
	return p, nil
}

// Handover parks the IO for the next process and writes it down. The IO
// must not be used afterwards, but Resume (if the handover is abandoned:
// then close the State's descriptors).
func (pio *IO) Handover() (State, error) {
	st, err := pio.park()
	if err != nil {
		return State{}, err
	}
	var dupErr error
	dup := func(fd *int) {
		if *fd < 0 || dupErr != nil {
			return
		}
		*fd, dupErr = fdpass.Dup(*fd)
	}
	for i := range st.Outputs {
		dup(&st.Outputs[i].Src)
		dup(&st.Outputs[i].Dst)
	}
	if st.Input != nil {
		dup(&st.Input.Src)
		dup(&st.Input.Dst)
	}
	for i := range st.Readers {
		dup(&st.Readers[i].Fd)
	}
	dup(&st.StdinKeepOpen)
	dup(&st.Console)
	for i := range st.LoggerWriters {
		dup(&st.LoggerWriters[i])
	}
	if dupErr != nil {
		return State{}, errors.Join(dupErr, pio.Resume())
	}
	return st, nil
}

// park stops the pumps and says what the IO holds, by its own descriptors.
func (pio *IO) park() (State, error) {
	if pio.socket != nil || pio.consoleOut != nil || pio.stdin != nil || pio.child != [3]*os.File{} {
		return State{}, ErrNotMovable
	}
	pio.mu.Lock()
	defer pio.mu.Unlock()
	st := State{StdinKeepOpen: -1, Console: -1}
	var live []*pump
	for _, p := range pio.outputs {
		if ps, ok := p.park(); ok {
			st.Outputs = append(st.Outputs, ps)
			live = append(live, p)
		}
	}
	pio.outputs = live
	if pio.input != nil {
		if ps, ok := pio.input.park(); ok {
			st.Input = &ps
		} else {
			pio.input = nil
		}
	}
	// Descriptor numbers, without Fd(), which would make them blocking. A
	// hold for a late client stops, to start again where the IO goes on.
	for _, f := range pio.fifos {
		if r, held := f.park(); r != nil {
			st.Readers = append(st.Readers, ReaderState{Fd: fdOf(r), ClientSeen: f.clientSeen, Held: held})
		}
	}
	if pio.stdinKeepOpen != nil {
		st.StdinKeepOpen = fdOf(pio.stdinKeepOpen)
	}
	if pio.console != nil {
		st.Console = pio.consoleFD
	}
	if pio.logger != nil {
		select {
		case <-pio.logger.exit: // gone already: nothing to take back
		default:
			st.LoggerPid = pio.logger.pid
			for _, w := range pio.logger.writers {
				st.LoggerWriters = append(st.LoggerWriters, fdOf(w))
			}
		}
	}
	return st, nil
}

// Resume restarts the pumps of an IO whose handover was abandoned, or
// starts those of an IO taken back by Restore.
func (pio *IO) Resume() error {
	pio.mu.Lock()
	defer pio.mu.Unlock()
	var errs []error
	for _, f := range pio.fifos {
		f.unpark()
	}
	restart := func(p *pump) *pump {
		ps := PumpState{Pending: p.pending, ProcessGone: p.processGone.Load()}
		np, err := resume(p.src, p.dst, ps, p.onEnd)
		errs = append(errs, err)
		return np
	}
	for i, p := range pio.outputs {
		pio.outputs[i] = restart(p)
	}
	if pio.input != nil {
		pio.input = restart(pio.input)
	}
	return errors.Join(errs...)
}

// Restore takes back an IO written down by a previous process, as an IO
// just handed over: Resume sets it going. Until then nothing moves and no
// hold runs, and the descriptors st names stay as they were (the IO owns
// close-on-exec duplicates of them): a take-back that fails later can
// still roll back to the previous process, which finds every byte where it
// left it. adopt makes the caller's reaper the owner of a logging binary's
// exit. On error nothing is left open.
func Restore(paths Paths, st State, adopt func(pid int) (<-chan runc.Exit, error)) (*IO, error) {
	if err := failpoint.Hit("stdio.Restore"); err != nil {
		return nil, err
	}
	var taken []*os.File
	file := func(fd int, name string) (*os.File, error) {
		d, err := fdpass.Take(fd)
		if err != nil {
			return nil, err
		}
		f := os.NewFile(uintptr(d), name)
		taken = append(taken, f)
		return f, nil
	}
	pio, err := restoreIO(paths, st, adopt, file)
	if err != nil {
		for _, f := range taken {
			f.Close()
		}
		return nil, err
	}
	return pio, nil
}

func restoreIO(paths Paths, st State, adopt func(pid int) (<-chan runc.Exit, error), file func(fd int, name string) (*os.File, error)) (*IO, error) {
	pio := &IO{paths: paths}
	if st.Console >= 0 {
		f, err := file(st.Console, "console")
		if err != nil {
			return nil, fmt.Errorf("restore console: %w", err)
		}
		// First: taking the console makes its descriptor blocking, and the
		// pumps' duplicates share that; they must be pollable again.
		con, err := console.ConsoleFromFile(f)
		if err != nil {
			return nil, fmt.Errorf("restore console: %w", err)
		}
		fd := fdOf(f)
		if err := unix.SetNonblock(fd, true); err != nil {
			return nil, fmt.Errorf("restore console: %w", err)
		}
		pio.console, pio.consoleFD = con, fd
	}
	for _, r := range st.Readers {
		reader, err := file(r.Fd, "output-reader")
		if err != nil {
			return nil, fmt.Errorf("restore output fifo: %w", err)
		}
		f := newClientFifo(reader, r.ClientSeen)
		// As parked: a hold that ran starts again with Resume.
		f.closed, f.resumeHold = true, r.Held
		pio.fifos = append(pio.fifos, f)
	}
	// Pumps are matched to their fifos by the fifos' readers, before any
	// hold starts: a hold lets go of its fifo's reader.
	pumped := map[*clientFifo]bool{}
	for _, ps := range st.Outputs {
		src, err := file(ps.Src, "output-src")
		if err != nil {
			return nil, fmt.Errorf("restore output pump: %w", err)
		}
		dst, err := file(ps.Dst, "output-dst")
		if err != nil {
			return nil, fmt.Errorf("restore output pump: %w", err)
		}
		f := pio.fifoWrittenBy(dst)
		var onEnd func()
		if f != nil {
			onEnd, pumped[f] = f.outputEnded, true
		}
		p, err := parkedPump(src, dst, ps, onEnd)
		if err != nil {
			return nil, fmt.Errorf("restore output pump: %w", err)
		}
		pio.outputs = append(pio.outputs, p)
	}
	for _, f := range pio.fifos {
		if !pumped[f] {
			f.markEnded() // its pump ended in the previous process
		}
	}
	if ps := st.Input; ps != nil {
		src, err := file(ps.Src, "stdin-src")
		if err != nil {
			return nil, fmt.Errorf("restore stdin pump: %w", err)
		}
		dst, err := file(ps.Dst, "stdin-dst")
		if err != nil {
			return nil, fmt.Errorf("restore stdin pump: %w", err)
		}
		p, err := parkedPump(src, dst, *ps, nil)
		if err != nil {
			return nil, fmt.Errorf("restore stdin pump: %w", err)
		}
		pio.input = p
	}
	if st.StdinKeepOpen >= 0 {
		f, err := file(st.StdinKeepOpen, "stdin-keep-open")
		if err != nil {
			return nil, fmt.Errorf("restore stdin: %w", err)
		}
		pio.stdinKeepOpen = f
	}
	if st.LoggerPid > 0 {
		exit, err := adopt(st.LoggerPid)
		if err != nil {
			return nil, fmt.Errorf("restore logging binary %d: %w", st.LoggerPid, err)
		}
		pidfd := openPidfd(st.LoggerPid)
		if pidfd < 0 {
			// It exited (and was reaped) before this process took over.
			gone := make(chan runc.Exit, 1)
			gone <- runc.Exit{Pid: st.LoggerPid}
			exit = gone
		}
		pio.logger = &binaryLogger{pid: st.LoggerPid, pidfd: pidfd, exit: exit}
		for _, fd := range st.LoggerWriters {
			w, err := file(fd, "logger-writer")
			if err != nil {
				if pidfd >= 0 {
					unix.Close(pidfd)
				}
				return nil, fmt.Errorf("restore logging binary %d: %w", st.LoggerPid, err)
			}
			pio.logger.writers = append(pio.logger.writers, w)
		}
	}
	return pio, nil
}

// fifoWrittenBy is the client fifo dst is a writer of (the same file as one
// of the shim's readers), if any: a pump into dst ends its output.
func (pio *IO) fifoWrittenBy(dst *os.File) *clientFifo {
	dstStat, err := dst.Stat()
	if err != nil {
		return nil
	}
	for _, f := range pio.fifos {
		if st, err := f.reader.Stat(); err == nil && os.SameFile(st, dstStat) {
			return f
		}
	}
	return nil
}

// fdOf is f's descriptor number, read without changing its mode.
func fdOf(f *os.File) int {
	fd := -1
	if raw, err := f.SyscallConn(); err == nil {
		raw.Control(func(v uintptr) { fd = int(v) })
	}
	return fd
}

// Fds lists every descriptor a State holds, for the caller to keep open
// across exec.
func (st State) Fds() []int {
	var fds []int
	for _, ps := range st.Outputs {
		fds = append(fds, ps.Src, ps.Dst)
	}
	if st.Input != nil {
		fds = append(fds, st.Input.Src, st.Input.Dst)
	}
	for _, r := range st.Readers {
		fds = append(fds, r.Fd)
	}
	for _, fd := range []int{st.StdinKeepOpen, st.Console} {
		if fd >= 0 {
			fds = append(fds, fd)
		}
	}
	return append(fds, st.LoggerWriters...)
}
