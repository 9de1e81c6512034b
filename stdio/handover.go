package stdio

import (
	"errors"
	"fmt"
	"os"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/failpoint"
	"github.com/tether-shim/tether/internal/fdpass"
	"github.com/tether-shim/tether/stdio/logbinary"
	"github.com/tether-shim/tether/stdio/pump"
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
	// Console is a terminal's master (-1: none). Its output pump's Src and
	// its input pump's Dst are the master too: the same descriptor since
	// state version 5, duplicates of it before (Restore takes the master
	// for them either way).
	Console   int
	LoggerPid int // 0: none
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
type PumpState = pump.State

// ErrNotMovable says an IO cannot be written down: its process has not
// started yet (a restore from a checkpoint waiting for Start): its ends of
// the pipes, or its terminal, are still the shim's.
var ErrNotMovable = errors.New("stdio of a process whose terminal is not set up yet cannot move")

// Handover parks the IO for the next process and writes it down. The IO
// must not be used afterwards, but Resume (if the handover is abandoned:
// then close the State's descriptors).
func (pio *IO) Handover() (State, error) {
	st, err := pio.park()
	if err != nil {
		return State{}, err
	}
	var dupErr error
	dups := map[int]int{} // one duplicate of a descriptor however often named: a terminal's master
	dup := func(fd *int) {
		if *fd < 0 || dupErr != nil {
			return
		}
		if d, ok := dups[*fd]; ok {
			*fd = d
			return
		}
		d, err := fdpass.Dup(*fd)
		if err != nil {
			dupErr = err
			return
		}
		dups[*fd], *fd = d, d
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
		fdpass.Close(mapValues(dups)...)
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
	var live []*pump.Pump
	for _, p := range pio.outputs {
		if ps, ok := p.Park(); ok {
			st.Outputs = append(st.Outputs, ps)
			live = append(live, p)
		}
	}
	pio.outputs = live
	if pio.input != nil {
		if ps, ok := pio.input.Park(); ok {
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
	if pio.master != nil {
		st.Console = fdOf(pio.master)
	}
	if pio.logger != nil {
		if pid, writers, ok := pio.logger.Handover(); ok {
			st.LoggerPid = pid
			for _, w := range writers {
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
	restart := func(p *pump.Pump) *pump.Pump {
		np, err := p.Resumed()
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
		// Nonblocking before it becomes a file, for the poller to take it
		// (a version before 5 may have left it blocking).
		if err := unix.SetNonblock(st.Console, true); err != nil {
			return nil, fmt.Errorf("restore console: %w", err)
		}
		f, err := file(st.Console, "console-master")
		if err != nil {
			return nil, fmt.Errorf("restore console: %w", err)
		}
		pio.master = f
	}
	// A terminal's pumps go through its master: the descriptor a state of
	// version 5 names for them, a duplicate of it one before named, which
	// is not taken (the take-back closes it with the other received ones).
	end := func(fd int, name string) (f *os.File, kept bool, err error) {
		if pio.master != nil {
			return pio.master, true, nil
		}
		f, err = file(fd, name)
		return f, false, err
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
		src, keepSrc, err := end(ps.Src, "output-src")
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
		p, err := pump.Parked(src, dst, ps, pump.Options{KeepSrc: keepSrc, OnEnd: onEnd})
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
		dst, keepDst, err := end(ps.Dst, "stdin-dst")
		if err != nil {
			return nil, fmt.Errorf("restore stdin pump: %w", err)
		}
		p, err := pump.Parked(src, dst, *ps, pump.Options{KeepDst: keepDst})
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
		var writers []*os.File
		for _, fd := range st.LoggerWriters {
			w, err := file(fd, "logger-writer")
			if err != nil {
				return nil, fmt.Errorf("restore logging binary %d: %w", st.LoggerPid, err)
			}
			writers = append(writers, w)
		}
		pio.logger = logbinary.Adopt(st.LoggerPid, exit, writers)
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

// Fds lists every descriptor a State holds, each once (a terminal's master
// is named up to three times), for the caller to keep open across exec.
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
	fds = append(fds, st.LoggerWriters...)
	seen := map[int]bool{}
	once := fds[:0]
	for _, fd := range fds {
		if !seen[fd] {
			seen[fd] = true
			once = append(once, fd)
		}
	}
	return once
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
