package process

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	runc "github.com/containerd/go-runc"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/stdio"
)

// A process is written down for the next process of the shim (a live
// upgrade) with its pidfd duplicated and its stdio parked; TakeBack undoes
// that if the handover is abandoned, Restore takes it back in the next
// process. What the lifecycle holds (an exec's spec) the container writes
// down itself.

// Handover writes the process down for the next process.
func (p *Process) Handover() (*upgradepb.Process, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &upgradepb.Process{
		ExecId: p.id, Stdin: p.paths.Stdin, Stdout: p.paths.Stdout, Stderr: p.paths.Stderr, Terminal: p.paths.Terminal,
		State: int32(p.state), Pid: int32(p.pid), Pidfd: -1, ExitStatus: int32(p.exitStatus),
		StdinClosed: p.stdinClosed, Reaped: p.reaped.Load(),
	}
	if !p.exitedAt.IsZero() {
		st.ExitedAtNs = p.exitedAt.UnixNano()
	}
	if p.pidfd >= 0 {
		fd, err := fdpass.Dup(p.pidfd)
		if err != nil {
			return nil, err
		}
		st.Pidfd = int32(fd)
	}
	if p.io != nil {
		ios, err := p.io.Handover()
		if err != nil {
			fdpass.Close(int(st.Pidfd))
			return nil, err
		}
		p.ioHandedOver = true
		st.Io = IOToProto(ios)
	}
	return st, nil
}

// TakeBack undoes Handover: the process's stdio goes on here.
func (p *Process) TakeBack() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ioHandedOver {
		p.ioHandedOver = false
		if err := p.io.Resume(); err != nil {
			p.log.Error("restart stdio after an abandoned handover", "process", p.ID(), "error", err)
		}
	}
}

// Restore takes back a process of container containerID that a previous
// process wrote down, with its pidfd and stdio; adopt makes this process's
// reaper the owner of a logging binary's exit. It owns close-on-exec
// duplicates of the descriptors st names, which stay as they were. Its
// stdio is as one handed over: TakeBack sets it going, once the take-back
// is complete. What cannot be taken back is done without and returned as
// an error, with the process. Owning the process's own exit again is the
// caller's.
func Restore(st *upgradepb.Process, containerID string, life Lifecycle, announce Announcer, log *slog.Logger, adopt func(pid int) (<-chan runc.Exit, error)) (*Process, error) {
	paths := stdio.Paths{Stdin: st.GetStdin(), Stdout: st.GetStdout(), Stderr: st.GetStderr(), Terminal: st.GetTerminal()}
	p := New(containerID, st.GetExecId(), paths, life, announce, log)
	p.state, p.pid = State(st.GetState()), int(st.GetPid())
	p.exitStatus, p.stdinClosed = int(st.GetExitStatus()), st.GetStdinClosed()
	if st.GetExitedAtNs() != 0 {
		p.exitedAt = time.Unix(0, st.GetExitedAtNs())
	}
	p.reaped.Store(st.GetReaped())
	if p.state == Stopped || p.state == Deleted {
		close(p.stopped)
	}
	var errs []error
	if fd := int(st.GetPidfd()); fd >= 0 {
		pidfd, err := fdpass.Take(fd)
		if err != nil {
			errs = append(errs, fmt.Errorf("process %s: pidfd: %w", p.ID(), err))
		}
		p.pidfd = pidfd
	}
	if st.GetIo() != nil {
		pio, err := stdio.Restore(paths, IOFromProto(st.GetIo()), adopt)
		if err != nil {
			errs = append(errs, fmt.Errorf("process %s: stdio: %w", p.ID(), err))
		}
		p.io, p.ioHandedOver = pio, pio != nil
	}
	return p, errors.Join(errs...)
}

// Fds lists every descriptor a written-down process holds.
func Fds(st *upgradepb.Process) []int {
	var fds []int
	if st.GetPidfd() >= 0 {
		fds = append(fds, int(st.GetPidfd()))
	}
	if st.GetIo() != nil {
		fds = append(fds, IOFromProto(st.GetIo()).Fds()...)
	}
	return fds
}

// IOToProto writes a stdio state down.
func IOToProto(st stdio.State) *upgradepb.IO {
	pump := func(ps stdio.PumpState) *upgradepb.Pump {
		return &upgradepb.Pump{SrcFd: int32(ps.Src), DstFd: int32(ps.Dst), Pending: ps.Pending, ProcessGone: ps.ProcessGone}
	}
	out := &upgradepb.IO{StdinKeepOpenFd: int32(st.StdinKeepOpen), ConsoleFd: int32(st.Console), LoggerPid: int32(st.LoggerPid)}
	for _, ps := range st.Outputs {
		out.Outputs = append(out.Outputs, pump(ps))
	}
	if st.Input != nil {
		out.Input = pump(*st.Input)
	}
	for _, fd := range st.LoggerWriters {
		out.LoggerWriterFds = append(out.LoggerWriterFds, int32(fd))
	}
	for _, r := range st.Readers {
		out.Readers = append(out.Readers, int32(r.Fd))
		out.ReadersClientSeen = append(out.ReadersClientSeen, r.ClientSeen)
		out.ReadersHeld = append(out.ReadersHeld, r.Held)
	}
	return out
}

// IOFromProto reads a stdio state written down.
func IOFromProto(st *upgradepb.IO) stdio.State {
	pump := func(ps *upgradepb.Pump) stdio.PumpState {
		return stdio.PumpState{Src: int(ps.GetSrcFd()), Dst: int(ps.GetDstFd()), Pending: ps.GetPending(), ProcessGone: ps.GetProcessGone()}
	}
	out := stdio.State{StdinKeepOpen: int(st.GetStdinKeepOpenFd()), Console: int(st.GetConsoleFd()), LoggerPid: int(st.GetLoggerPid())}
	for _, ps := range st.GetOutputs() {
		out.Outputs = append(out.Outputs, pump(ps))
	}
	if st.GetInput() != nil {
		in := pump(st.GetInput())
		out.Input = &in
	}
	for _, fd := range st.GetLoggerWriterFds() {
		out.LoggerWriters = append(out.LoggerWriters, int(fd))
	}
	seen, held := st.GetReadersClientSeen(), st.GetReadersHeld()
	for i, fd := range st.GetReaders() {
		// An older binary did not say: its clients are taken as seen.
		r := stdio.ReaderState{Fd: int(fd), ClientSeen: len(seen) != len(st.GetReaders()) || seen[i]}
		r.Held = len(held) == len(st.GetReaders()) && held[i]
		out.Readers = append(out.Readers, r)
	}
	return out
}

// carriedStart is a start carried over from a previous process: the Start
// request carried with it waits for its result.
type carriedStart struct {
	done chan struct{} // closed with pid and err set
	pid  int
	err  error
}

// ResumeStart finishes a start that a previous process of the shim left in
// flight (its runtime call had not ended): finish, in a goroutine of its
// own, waits for the call's end and returns what the lifecycle's Start
// would have. Until then the transition is held; the Start request carried
// over with it answers its result.
func (p *Process) ResumeStart(finish func() (Started, error)) {
	c := &carriedStart{done: make(chan struct{})}
	p.mu.Lock()
	p.carriedStart = c
	p.mu.Unlock()
	p.Hold()
	go func() {
		defer p.Release()
		s, err := finish()
		if err == nil {
			c.pid = p.commitStart(s)
		}
		c.err = err
		close(c.done)
	}()
}
