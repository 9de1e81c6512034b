package process

import (
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
		st.Io = ioToProto(ios)
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
// reaper the owner of a logging binary's exit. Stdio that cannot be taken
// back is logged and done without. Owning the process's own exit again is
// the caller's.
func Restore(st *upgradepb.Process, containerID string, life Lifecycle, announce Announcer, log *slog.Logger, adopt func(pid int) (<-chan runc.Exit, error)) *Process {
	paths := stdio.Paths{Stdin: st.GetStdin(), Stdout: st.GetStdout(), Stderr: st.GetStderr(), Terminal: st.GetTerminal()}
	p := New(containerID, st.GetExecId(), paths, life, announce, log)
	p.state, p.pid, p.pidfd = State(st.GetState()), int(st.GetPid()), int(st.GetPidfd())
	fdpass.Take(p.pidfd)
	p.exitStatus, p.stdinClosed = int(st.GetExitStatus()), st.GetStdinClosed()
	if st.GetExitedAtNs() != 0 {
		p.exitedAt = time.Unix(0, st.GetExitedAtNs())
	}
	p.reaped.Store(st.GetReaped())
	if p.state == Stopped || p.state == Deleted {
		close(p.stopped)
	}
	if st.GetIo() != nil {
		pio, err := stdio.Restore(paths, ioFromProto(st.GetIo()), adopt)
		if err != nil {
			log.Error("take back a process's stdio", "container", containerID, "exec", p.id, "error", err)
		}
		p.io = pio
	}
	return p
}

// Fds lists every descriptor a written-down process holds.
func Fds(st *upgradepb.Process) []int {
	var fds []int
	if st.GetPidfd() >= 0 {
		fds = append(fds, int(st.GetPidfd()))
	}
	if st.GetIo() != nil {
		fds = append(fds, ioFromProto(st.GetIo()).Fds()...)
	}
	return fds
}

func ioToProto(st stdio.State) *upgradepb.IO {
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

func ioFromProto(st *upgradepb.IO) stdio.State {
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
