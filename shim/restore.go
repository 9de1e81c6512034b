package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/internal/failpoint"
	"github.com/tether-shim/tether/internal/fdpass"
	"github.com/tether-shim/tether/kmsg"
	"github.com/tether-shim/tether/oci"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/lifecycle"
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

// RestoreTable returns the table of a shim that takes back what a previous
// process wrote down with Handover: empty until Restore adds each
// container. closing is whether the previous process had begun to shut
// down. Its containers are as if just handed over: TakeBack sets their
// stdio and OOM watches going, once the take-back is complete, and the
// caller then delivers the exits the previous process kept
// (reaper.Deliver).
func RestoreTable(env Env, closing bool) *Table {
	t := NewTable(env)
	t.closing = closing
	return t
}

// Restore takes back a container written down with Handover (checked by
// CheckState): its processes (owned again by this process's reaper), stdio
// and OOM watch, on close-on-exec duplicates of the descriptors st names
// (which stay as they were, for a rollback). What cannot be taken back (a
// descriptor, a cgroup that went) is done without, as after a create that
// could not get it, and returned as an error; the container is added all
// the same, to be served if the take-back goes on.
func (t *Table) Restore(st *upgradepb.Container) error {
	if err := failpoint.Hit("shim.Restore"); err != nil {
		return err
	}
	c, err := restoreContainer(st, t.env)
	t.mu.Lock()
	t.containers[c.ID] = c
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("container %q: %w", c.ID, err)
	}
	return nil
}

func restoreContainer(st *upgradepb.Container, env *Env) (*Container, error) {
	var cfg oci.Config
	json.Unmarshal(st.GetRuntimeConfig(), &cfg) // checked by CheckState
	c := newContainer(lifecycle.Container{
		ID: st.GetId(), Bundle: st.GetBundle(), Runtime: oci.Restore(st.GetBundle(), env.Namespace, cfg), Config: cfg,
		OwnPidNS: st.GetOwnPidNs(), Rootfs: st.GetRootfs(),
		Checkpoint: st.GetCheckpoint(), ParentCheckpoint: st.GetParentCheckpoint(),
	}, env)
	c.deleted = st.GetDeleted()
	c.exits.live, c.exits.initGone = int(st.GetLiveExecs()), st.GetInitGone()
	if e := st.GetPostponedInitExit(); e != nil {
		c.exits.postponed = &reaper.Exit{Pid: int(e.GetPid()), Status: int(e.GetStatus()), Time: time.Unix(0, e.GetTimeNs())}
	}
	var errs []error
	errs = append(errs, c.restoreCgroup(st))
	var err error
	c.init, err = c.restoreProcess(st.GetInit(), lifecycle.NewInit(c.life))
	errs = append(errs, err)
	for _, ps := range st.GetExecs() {
		var spec specs.Process
		json.Unmarshal(ps.GetSpec(), &spec) // checked by CheckState
		l := lifecycle.NewExec(c.life, spec)
		p, err := c.restoreProcess(ps, l)
		c.execs[ps.GetExecId()] = p
		errs = append(errs, err)
		if start := ps.GetStart(); start != nil {
			errs = append(errs, l.ResumeStart(p, start))
		}
	}
	return c, errors.Join(errs...)
}

// restoreCgroup takes back the container's cgroup and its OOM watch, as
// one handed over (resume adopts it); a container without them still runs
// (as after a create that found none).
func (c *Container) restoreCgroup(st *upgradepb.Container) error {
	if len(st.GetCgroup()) == 0 {
		return nil
	}
	var path cgroup.Path
	cg, err := func() (cgroup.Cgroup, error) {
		if err := json.Unmarshal(st.GetCgroup(), &path); err != nil {
			return nil, err
		}
		return c.env.Cgroups.LoadPath(path)
	}()
	if err != nil {
		// Gone with its container's processes: not an error of the take-back.
		c.env.Log.Warn("the container's cgroup is gone: no stats, no OOM events", "container", c.ID, "error", err)
		return nil
	}
	c.cg = cg
	oom := st.GetOom()
	if oom == nil {
		return nil
	}
	fd, err := fdpass.Take(int(oom.GetFd()))
	if err != nil {
		return fmt.Errorf("oom watch: %w", err)
	}
	ws := oomWatchState(oom)
	ws.FD = fd
	c.oomHandedOver = &ws
	return nil
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
func (c *Container) restoreProcess(st *upgradepb.Process, life process.Lifecycle) (*process.Process, error) {
	p, err := process.Restore(st, c.ID, life, c.announcerFor(st.GetExecId()), c.env.Log, c.adoptCommand)
	s := p.State()
	live := s.State == Created || s.State == Running || s.State == Paused
	if live && s.Pid > 0 && !p.Reaped() {
		if oerr := c.env.Reaper.Own(s.Pid, c.exitHandler(p)); oerr != nil {
			err = errors.Join(err, fmt.Errorf("own the exit of process %s (pid %d): %w", p.ID(), s.Pid, oerr))
		}
	}
	return p, err
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
