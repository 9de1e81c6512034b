package shim

import (
	"context"
	"encoding/json"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/shim/internal/lifecycle"
	"github.com/tether-shim/tether/shim/internal/process"
)

// The task core can be written down and taken back by the next process
// when the shim re-executes itself in place. By the time Handover runs no
// request is served but long-lived ones (Wait) and the reaper keeps the
// exits of containers' processes (reaper.Freeze): Handover waits for the
// exits being handled, then parks every process's stdio and hands over its
// OOM watches. Every descriptor in the state is a duplicate that survives
// execve; TakeBack undoes it all if the handover is abandoned.

// CarryStarts says whether the next process of a live upgrade takes over
// an exec's start whose runtime call is in flight (it reads state version
// 4): then the upgrade need not wait for such a start.
func (t *Table) CarryStarts(ok bool) { t.env.carryStarts.Store(ok) }

// CarriesStarts reports whether a written-down state holds a start in
// flight (state version 4).
func CarriesStarts(containers []*upgradepb.Container) bool {
	for _, c := range containers {
		for _, p := range c.GetExecs() {
			if p.GetStart() != nil {
				return true
			}
		}
	}
	return false
}

// HasTerminals says whether a written-down process has a terminal (its
// master named once: state version 5).
func HasTerminals(containers []*upgradepb.Container) bool {
	for _, c := range containers {
		for _, p := range append([]*upgradepb.Process{c.GetInit()}, c.GetExecs()...) {
			if p.GetIo() != nil && p.GetIo().GetConsoleFd() >= 0 {
				return true
			}
		}
	}
	return false
}

// Handover writes the containers down for the next process.
func (t *Table) Handover(ctx context.Context) ([]*upgradepb.Container, error) {
	if err := t.env.exits.Wait(ctx); err != nil {
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
		st, err := c.handover(ctx)
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

// TakeBack undoes Handover: the processes' stdio and OOM watches go on
// here. On a table just restored (RestoreTable) it sets them going.
func (t *Table) TakeBack() {
	t.mu.Lock()
	containers := make([]*Container, 0, len(t.containers))
	for _, c := range t.containers {
		if c != nil {
			containers = append(containers, c)
		}
	}
	t.mu.Unlock()
	for _, c := range containers {
		c.resume()
	}
}

func (c *Container) handover(ctx context.Context) (*upgradepb.Container, error) {
	cfg, err := json.Marshal(c.life.Config)
	if err != nil {
		return nil, err
	}
	c.exits.mu.Lock()
	st := &upgradepb.Container{
		Id: c.ID, Bundle: c.Bundle, RuntimeConfig: cfg, OwnPidNs: c.life.OwnPidNS, Rootfs: c.life.Rootfs,
		Checkpoint: c.life.Checkpoint, ParentCheckpoint: c.life.ParentCheckpoint,
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
			st.Oom = &upgradepb.OOMWatch{Fd: int32(fd), OomKills: ws.OOMKills, Reported: ws.Reported}
			if m := ws.LogMark; m != nil {
				st.Oom.LogMarked, st.Oom.LogMarkUsec, st.Oom.LogMarkEmpty = true, m.Usec, m.Empty
			}
		}
	}
	if st.Init, err = handoverProcess(ctx, c.init); err != nil {
		undo()
		return nil, err
	}
	for _, p := range c.execs {
		ps, err := handoverProcess(ctx, p)
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
		if w, err := c.env.OOM.Adopt(c.cg, c.init.State().Pid, *ws, onOOM); err == nil {
			c.oom = w
		} else {
			c.env.Log.Warn("take the OOM watch back", "container", c.ID, "error", err)
			unix.Close(ws.FD)
		}
	}
	for _, p := range append([]*process.Process{c.init}, mapValues(c.execs)...) {
		p.TakeBack()
		if l, ok := p.Lifecycle().(*lifecycle.Exec); ok {
			l.TakeBackStart()
		}
	}
}

// handoverProcess writes p down with what its lifecycle holds: an exec's
// spec, and its start if one is in flight.
func handoverProcess(ctx context.Context, p *process.Process) (*upgradepb.Process, error) {
	var spec []byte
	var start *upgradepb.StartInFlight
	if l, ok := p.Lifecycle().(*lifecycle.Exec); ok {
		var err error
		if spec, err = json.Marshal(l.Spec()); err != nil {
			return nil, err
		}
		if start, err = l.HandoverStart(ctx, p); err != nil {
			return nil, err
		}
	}
	st, err := p.Handover()
	if err != nil {
		if start != nil {
			fdpass.Close(process.Fds(&upgradepb.Process{Io: start.GetIo(), Pidfd: -1})...)
		}
		return nil, err
	}
	st.Spec, st.Start = spec, start
	return st, nil
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
		if p != nil {
			fds = append(fds, process.Fds(p)...)
			if s := p.GetStart(); s != nil {
				fds = append(fds, process.Fds(&upgradepb.Process{Io: s.GetIo(), Pidfd: -1})...)
			}
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
