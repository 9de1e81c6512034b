package shim

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/shim/internal/process"
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
			st.Oom = &upgradepb.OOMWatch{Fd: int32(fd), OomKills: ws.OOMKills, Reported: ws.Reported}
			if m := ws.LogMark; m != nil {
				st.Oom.LogMarked, st.Oom.LogMarkUsec, st.Oom.LogMarkEmpty = true, m.Usec, m.Empty
			}
		}
	}
	if st.Init, err = handoverProcess(c.init); err != nil {
		undo()
		return nil, err
	}
	for _, p := range c.execs {
		ps, err := handoverProcess(p)
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
		}
	}
	for _, p := range append([]*process.Process{c.init}, mapValues(c.execs)...) {
		p.TakeBack()
	}
}

// handoverProcess writes p down with what its lifecycle holds: an exec's
// spec.
func handoverProcess(p *process.Process) (*upgradepb.Process, error) {
	var spec []byte
	if l, ok := p.Lifecycle().(*execLife); ok {
		var err error
		if spec, err = json.Marshal(l.spec); err != nil {
			return nil, err
		}
	}
	st, err := p.Handover()
	if err != nil {
		return nil, err
	}
	st.Spec = spec
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
