package shim

import (
	"encoding/json"
	"fmt"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/internal/fdpass"
	"github.com/tether-shim/tether/kmsg"
	"github.com/tether-shim/tether/oci"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
)

// CheckState checks what RestoreTable will read, before anything is
// taken back (a state that fails here can still be rolled back).
func CheckState(containers []*upgradepb.Container) error {
	for _, st := range containers {
		var cfg oci.Config
		if err := json.Unmarshal(st.GetRuntimeConfig(), &cfg); err != nil {
			return fmt.Errorf("container %q: runtime options: %w", st.GetId(), err)
		}
		if st.GetInit() == nil {
			return fmt.Errorf("container %q has no init", st.GetId())
		}
		for _, ps := range st.GetExecs() {
			var spec specs.Process
			if err := json.Unmarshal(ps.GetSpec(), &spec); err != nil {
				return fmt.Errorf("container %q exec %q spec: %w", st.GetId(), ps.GetExecId(), err)
			}
		}
		if len(st.GetCgroup()) > 0 {
			var path cgroup.Path
			if err := json.Unmarshal(st.GetCgroup(), &path); err != nil {
				return fmt.Errorf("container %q cgroup: %w", st.GetId(), err)
			}
		}
	}
	return nil
}

// RestoreTable takes back the containers a previous process wrote down
// with Handover (checked by CheckState): their processes (owned again by
// this process's reaper), stdio and OOM watches. What cannot be taken back
// (a descriptor, a cgroup that went) is logged and done without, as after
// a create that could not get it: the containers go on being served.
// closing is whether the previous process had begun to shut down. The
// caller then delivers the exits the previous process kept (reaper.Deliver).
func RestoreTable(env Env, containers []*upgradepb.Container, closing bool) *Table {
	t := NewTable(env)
	t.closing = closing
	for _, st := range containers {
		c := restoreContainer(st, t.env)
		t.containers[c.ID] = c
	}
	return t
}

func restoreContainer(st *upgradepb.Container, env *Env) *Container {
	var cfg oci.Config
	json.Unmarshal(st.GetRuntimeConfig(), &cfg) // checked by CheckState
	c := &Container{
		ID: st.GetId(), Bundle: st.GetBundle(), env: env, runtime: oci.Restore(st.GetBundle(), env.Namespace, cfg), config: cfg,
		ownPidNS: st.GetOwnPidNs(), rootfs: st.GetRootfs(),
		checkpoint: st.GetCheckpoint(), parentCheckpoint: st.GetParentCheckpoint(),
		execs: make(map[string]*process.Process), deleted: st.GetDeleted(),
	}
	c.exits.live, c.exits.initGone = int(st.GetLiveExecs()), st.GetInitGone()
	if e := st.GetPostponedInitExit(); e != nil {
		c.exits.postponed = &reaper.Exit{Pid: int(e.GetPid()), Status: int(e.GetStatus()), Time: time.Unix(0, e.GetTimeNs())}
	}
	c.restoreCgroup(st)
	c.init = c.restoreProcess(st.GetInit(), initLife{c})
	for _, ps := range st.GetExecs() {
		var spec specs.Process
		json.Unmarshal(ps.GetSpec(), &spec) // checked by CheckState
		c.execs[ps.GetExecId()] = c.restoreProcess(ps, &execLife{c: c, spec: spec})
	}
	return c
}

// restoreCgroup takes back the container's cgroup and its OOM watch; a
// container without them still runs (as after a create that found none).
func (c *Container) restoreCgroup(st *upgradepb.Container) {
	oom := st.GetOom()
	if len(st.GetCgroup()) == 0 {
		if oom != nil {
			fdpass.Close(int(oom.GetFd()))
		}
		return
	}
	var path cgroup.Path
	cg, err := func() (cgroup.Cgroup, error) {
		if err := json.Unmarshal(st.GetCgroup(), &path); err != nil {
			return nil, err
		}
		return c.env.Cgroups.LoadPath(path)
	}()
	if err != nil {
		c.env.Log.Warn("the container's cgroup is gone: no stats, no OOM events", "container", c.ID, "error", err)
		if oom != nil {
			fdpass.Close(int(oom.GetFd()))
		}
		return
	}
	c.cg = cg
	if oom == nil {
		return
	}
	w, err := c.env.OOM.Adopt(cg, int(st.GetInit().GetPid()), oomWatchState(oom), c.oomNotice())
	if err != nil {
		c.env.Log.Warn("no OOM events for the container", "container", c.ID, "error", err)
		fdpass.Close(int(oom.GetFd()))
		return
	}
	c.oom = w
}

// oomWatchState is a written-down OOM watch, for Adopt.
func oomWatchState(w *upgradepb.OOMWatch) cgroup.OOMWatchState {
	st := cgroup.OOMWatchState{FD: int(w.GetFd()), OOMKills: w.GetOomKills(), Reported: w.GetReported()}
	if w.GetLogMarked() {
		st.LogMark = &kmsg.Mark{Usec: w.GetLogMarkUsec(), Empty: w.GetLogMarkEmpty()}
	}
	return st
}

// restoreProcess takes back one process; a live one is owned again by the
// reaper.
func (c *Container) restoreProcess(st *upgradepb.Process, life process.Lifecycle) *process.Process {
	p := process.Restore(st, c.ID, life, c.announcerFor(st.GetExecId()), c.env.Log, c.adoptCommand)
	s := p.State()
	live := s.State == Created || s.State == Running || s.State == Paused
	if live && s.Pid > 0 && !p.Reaped() {
		if err := c.env.Reaper.Own(s.Pid, c.exitHandler(p)); err != nil {
			c.env.Log.Error("own a process's exit", "container", c.ID, "exec", p.ExecID(), "pid", s.Pid, "error", err)
		}
	}
	return p
}

// adoptCommand makes this process's reaper the owner of a command (a
// logging binary) the previous process started.
func (c *Container) adoptCommand(pid int) (<-chan runc.Exit, error) {
	ch := make(chan runc.Exit, 1)
	err := c.env.Reaper.Own(pid, func(e reaper.Exit) {
		ch <- runc.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Time}
		close(ch)
	})
	return ch, err
}
