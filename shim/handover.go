package shim

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/stdio"
)

// The task core can be written down and taken back by the next process
// when the shim re-executes itself in place. By the time Handover runs no
// request is served but long-lived ones (Wait) and the reaper keeps the
// exits of containers' processes (reaper.Freeze): Handover waits for the
// exits being handled, then parks every process's stdio and hands over its
// OOM watches. Every descriptor in the state is a duplicate that survives
// execve; TakeBack undoes it all if the handover is abandoned.

// Handover writes the containers down for the next process.
func (t *Table) Handover(ctx context.Context) ([]*upgradepb.Container, error) {
	if err := t.env.exits.wait(ctx); err != nil {
		return nil, fmt.Errorf("exits being handled: %w", err)
	}
	t.mu.Lock()
	containers := make([]*Container, 0, len(t.containers))
	for id, c := range t.containers {
		if c == nil {
			t.mu.Unlock()
			return nil, fmt.Errorf("container %q is being created", id)
		}
		containers = append(containers, c)
	}
	t.mu.Unlock()
	var out []*upgradepb.Container
	for _, c := range containers {
		st, err := c.handover()
		if err != nil {
			// The duplicates go first: a resumed hold for a late client
			// must not take them for the client's reader.
			closeStateFds(out)
			for _, done := range containers[:len(out)] {
				done.resume()
			}
			return nil, fmt.Errorf("container %q: %w", c.ID, err)
		}
		out = append(out, st)
	}
	return out, nil
}

// TakeBack undoes Handover: the processes' stdio and OOM watches go on here.
func (t *Table) TakeBack() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, c := range t.containers {
		if c != nil {
			c.resume()
		}
	}
}

func (c *Container) handover() (*upgradepb.Container, error) {
	cfg, err := json.Marshal(c.config)
	if err != nil {
		return nil, err
	}
	c.exits.mu.Lock()
	st := &upgradepb.Container{
		Id: c.ID, Bundle: c.Bundle, RuntimeConfig: cfg, OwnPidNs: c.ownPidNS, Rootfs: c.rootfs,
		Checkpoint: c.checkpoint, ParentCheckpoint: c.parentCheckpoint,
		LiveExecs: int32(c.exits.live), InitGone: c.exits.initGone,
	}
	if e := c.exits.postponed; e != nil {
		st.PostponedInitExit = &upgradepb.Exit{Pid: int32(e.Pid), Status: int32(e.Status), TimeNs: e.Time.UnixNano()}
	}
	c.exits.mu.Unlock()

	c.mu.Lock()
	defer c.mu.Unlock()
	st.Deleted = c.deleted
	if c.cg != nil {
		if st.Cgroup, err = json.Marshal(c.cg.Path()); err != nil {
			return nil, err
		}
	}
	undo := func() {
		c.resumeLocked()
		closeStateFds([]*upgradepb.Container{st})
	}
	if c.oom != nil {
		if ws, ok := c.oom.Handover(); ok {
			c.oom, c.oomHandedOver = nil, &ws
			fd, err := fdpass.Dup(ws.FD)
			if err != nil {
				undo()
				return nil, err
			}
			st.Oom = &upgradepb.OOMWatch{Fd: int32(fd), OomKills: ws.OOMKills}
		}
	}
	if st.Init, err = c.init.handover(); err != nil {
		undo()
		return nil, err
	}
	for _, p := range c.execs {
		ps, err := p.handover()
		if err != nil {
			undo()
			return nil, err
		}
		st.Execs = append(st.Execs, ps)
	}
	return st, nil
}

func (c *Container) resume() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resumeLocked()
}

// resumeLocked takes the OOM watch back and restarts the processes' stdio.
// Called with c.mu held.
func (c *Container) resumeLocked() {
	if ws := c.oomHandedOver; ws != nil {
		c.oomHandedOver = nil
		onOOM := c.oomNotice()
		if w, err := c.env.OOM.Adopt(c.cg, *ws, onOOM); err == nil {
			c.oom = w
		} else {
			c.env.Log.Warn("take the OOM watch back", "container", c.ID, "error", err)
		}
	}
	for _, p := range append([]*Process{c.init}, mapValues(c.execs)...) {
		p.resume()
	}
}

func (p *Process) handover() (*upgradepb.Process, error) {
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
	if l, ok := p.lifecycle.(*execLife); ok {
		spec, err := json.Marshal(l.spec)
		if err != nil {
			return nil, err
		}
		st.Spec = spec
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

func (p *Process) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ioHandedOver {
		p.ioHandedOver = false
		if err := p.io.Resume(); err != nil {
			p.log.Error("restart stdio after an abandoned handover", "process", p.ID(), "error", err)
		}
	}
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
	seen, held := st.GetReadersClientSeen(), st.GetReadersHeld()
	for i, fd := range st.GetReaders() {
		// An older binary did not say: its clients are taken as seen.
		r := stdio.ReaderState{Fd: int(fd), ClientSeen: len(seen) != len(st.GetReaders()) || seen[i]}
		r.Held = len(held) == len(st.GetReaders()) && held[i]
		out.Readers = append(out.Readers, r)
	}
	return out
}

// closeStateFds closes the duplicates a written-down state holds.
func closeStateFds(containers []*upgradepb.Container) {
	for _, c := range containers {
		fdpass.Close(StateFds(c)...)
	}
}

// StateFds lists every descriptor a written-down container holds.
func StateFds(c *upgradepb.Container) []int {
	var fds []int
	if c.GetOom() != nil {
		fds = append(fds, int(c.GetOom().GetFd()))
	}
	for _, p := range append([]*upgradepb.Process{c.GetInit()}, c.GetExecs()...) {
		if p == nil {
			continue
		}
		if p.GetPidfd() >= 0 {
			fds = append(fds, int(p.GetPidfd()))
		}
		if p.GetIo() != nil {
			fds = append(fds, ioFromProto(p.GetIo()).Fds()...)
		}
	}
	return fds
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
