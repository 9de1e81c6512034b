package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox/internal/holder"
	"github.com/tether-shim/tether/sandbox/internal/podfiles"
	"github.com/tether-shim/tether/shim"
)

// A sandbox is written down for the next process of the shim when it
// re-executes itself in place (a live upgrade), and taken back there. By
// the time Handover runs no request is served but WaitSandbox (which the
// next process answers) and the reaper keeps the holder's exit
// (reaper.Freeze): Handover waits for an exit being taken, then writes the
// sandbox down with duplicates of the holder's pidfd and lifeline that
// survive execve. Nothing changes the sandbox from then until the exec, or
// until TakeBack closes the duplicates and the sandbox goes on as it was.
// The next process takes the holder back (the same *holder.Holder as one
// it started) and owns its exit again before its reaper reaps. A pod
// without a holder has nothing to carry but its state: its namespaces'
// bind mounts outlive the exec.

// HasSandbox reports whether the shim has a sandbox, in any phase: what a
// live upgrade writes down.
func (s *Service) HasSandbox() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sb != nil
}

// Handover writes the shim's sandbox down for the next process; nil when
// it has none. A sandbox whose holder is being started cannot be written
// down (FailedPrecondition).
func (s *Service) Handover(ctx context.Context) (*upgradepb.Sandbox, error) {
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil {
		return nil, nil
	}
	st, err := sb.handover(ctx)
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", sb.pod.ID, err)
	}
	return st, nil
}

// TakeBack undoes Handover: the duplicates st holds are closed, and the
// sandbox goes on as it was.
func (s *Service) TakeBack(st *upgradepb.Sandbox) {
	fdpass.Close(StateFds(st)...)
}

// StateFds lists the descriptors a written-down sandbox holds.
func StateFds(st *upgradepb.Sandbox) []int {
	var fds []int
	if h := st.GetHolder(); h != nil {
		for _, fd := range []int32{h.GetPidfd(), h.GetLifelineFd()} {
			if fd >= 0 {
				fds = append(fds, int(fd))
			}
		}
	}
	return fds
}

// Outline is the sandbox as Handover would write it down, without its
// descriptors and record (nil: none): what the state's version depends on.
func (s *Service) Outline() *upgradepb.Sandbox {
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil {
		return nil
	}
	sb.mu.Lock()
	defer sb.mu.Unlock()
	return sb.stateLocked(nil)
}

func (s *Sandbox) handover(ctx context.Context) (*upgradepb.Sandbox, error) {
	if err := s.exits.Wait(ctx); err != nil {
		return nil, fmt.Errorf("the holder's exit being taken: %w", err)
	}
	// The record first, without mu: its writes are done under its own lock.
	record, err := s.rec.snapshot()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.phase == starting {
		return nil, fmt.Errorf("its holder is being started: %w", errdefs.ErrFailedPrecondition)
	}
	st := s.stateLocked(record)
	if s.phase == ready {
		if st.Holder, err = s.run.proc.Handover(); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// stateLocked is the sandbox written down, but for its holder.
func (s *Sandbox) stateLocked(record []byte) *upgradepb.Sandbox {
	p := s.pod
	st := &upgradepb.Sandbox{
		Id: p.ID, Bundle: p.Bundle, Netns: p.NetNS, OwnUts: p.OwnUTS, OwnIpc: p.OwnIPC,
		OwnPid: p.PID != pidNode, PidMode: int32(p.PID) + 1,
		Hostname: p.Hostname, Sysctls: p.Sysctls, CgroupParent: p.CgroupParent, Dns: p.DNS,
		Phase: int32(s.phase), Ending: s.ending, Record: record,
		NamespacesBound: s.phase == ready && s.run.proc.Pid() == 0,
	}
	if !s.startedAt.IsZero() {
		st.StartedAtNs = s.startedAt.UnixNano()
	}
	if s.isStopped {
		st.Exit = &upgradepb.Exit{Pid: int32(s.exit.Pid), Status: int32(s.exit.Status), TimeNs: s.exit.Time.UnixNano()}
	}
	if s.files != nil {
		st.Files = &upgradepb.PodFiles{RootDir: s.files.RootDir, StateDir: s.files.StateDir}
	}
	return st
}

// CheckState checks what RestoreService will read, before anything is
// taken back (a state that fails here can still be rolled back).
func CheckState(st *upgradepb.Sandbox) error {
	if st == nil {
		return nil
	}
	if err := shim.ValidateID("sandbox", st.GetId()); err != nil {
		return err
	}
	if !filepath.IsAbs(st.GetBundle()) {
		return fmt.Errorf("sandbox %s: bundle %q is not an absolute path", st.GetId(), st.GetBundle())
	}
	switch ph := phase(st.GetPhase()); {
	case ph != created && ph != ready && ph != stopped && ph != shutDown:
		return fmt.Errorf("sandbox %s: phase %d cannot be taken back", st.GetId(), st.GetPhase())
	case st.GetPidMode() < 0 || st.GetPidMode() > int32(pidNode)+1:
		return fmt.Errorf("sandbox %s: pid mode %d", st.GetId(), st.GetPidMode())
	case ph == ready && st.GetHolder() == nil && !st.GetNamespacesBound():
		return fmt.Errorf("sandbox %s is ready without a holder or bound namespaces", st.GetId())
	case ph == ready && st.GetHolder() != nil && st.GetHolder().GetPid() <= 0:
		return fmt.Errorf("sandbox %s: holder pid %d", st.GetId(), st.GetHolder().GetPid())
	case st.GetNamespacesBound() && (ph != ready || st.GetHolder() != nil || st.GetPidMode() == int32(pidShared)+1):
		return fmt.Errorf("sandbox %s: bound namespaces in phase %v, holder %v, pid mode %d", st.GetId(), ph, st.GetHolder(), st.GetPidMode())
	case ph >= stopped && st.GetExit() == nil:
		return fmt.Errorf("sandbox %s is %v without an exit", st.GetId(), ph)
	}
	if f := st.GetFiles(); f != nil {
		if err := (&podfiles.Files{RootDir: f.GetRootDir(), StateDir: f.GetStateDir()}).Check(); err != nil {
			return fmt.Errorf("sandbox %s: %w", st.GetId(), err)
		}
	}
	if len(st.GetRecord()) > 0 {
		var rec record
		if err := json.Unmarshal(st.GetRecord(), &rec); err != nil {
			return fmt.Errorf("sandbox %s: record: %w", st.GetId(), err)
		}
	}
	return nil
}

// RestoreService is NewService with the sandbox a previous process wrote
// down with Handover (checked by CheckState; nil: none) taken back: a ready
// sandbox's holder is owned again by cfg's reaper, which must not have
// reaped since the exec, through close-on-exec duplicates of the holder's
// descriptors (those st names stay as they were, for a rollback). The
// caller then delivers the exits the previous process kept
// (reaper.Deliver): the holder's among them, if it exited while the state
// was written down. What cannot be taken back is returned as an error,
// with the service.
func RestoreService(cfg Config, st *upgradepb.Sandbox) (*Service, error) {
	svc := NewService(cfg)
	if st == nil {
		return svc, nil
	}
	var err error
	svc.sb, err = restoreSandbox(st, svc.env)
	return svc, err
}

func restoreSandbox(st *upgradepb.Sandbox, env *Env) (*Sandbox, error) {
	p := Pod{
		ID: st.GetId(), Bundle: st.GetBundle(), NetNS: st.GetNetns(),
		OwnUTS: st.GetOwnUts(), OwnIPC: st.GetOwnIpc(), PID: pidMode(st.GetPidMode() - 1),
		Hostname: st.GetHostname(), Sysctls: st.GetSysctls(), CgroupParent: st.GetCgroupParent(), DNS: st.GetDns(),
	}
	if st.GetPidMode() == 0 {
		// Written before version 3: a binary that started a holder for
		// every pod (in a pid namespace of its own unless the node's).
		p.PID = pidNode
		if st.GetOwnPid() {
			p.PID = pidShared
		}
	}
	s := &Sandbox{pod: p, env: env, rec: newRecorder(p.Bundle, env.Log), stopped: make(chan struct{})}
	if f := st.GetFiles(); f != nil {
		s.files = &podfiles.Files{RootDir: f.GetRootDir(), StateDir: f.GetStateDir()}
	}
	if len(st.GetRecord()) > 0 {
		json.Unmarshal(st.GetRecord(), &s.rec.rec) // checked by CheckState
	}
	s.phase, s.ending = phase(st.GetPhase()), st.GetEnding()
	if ns := st.GetStartedAtNs(); ns != 0 {
		s.startedAt = time.Unix(0, ns)
	}
	if s.phase >= stopped {
		e := st.GetExit()
		s.exit = reaper.Exit{Pid: int(e.GetPid()), Status: int(e.GetStatus()), Time: time.Unix(0, e.GetTimeNs())}
		s.isStopped = true
		close(s.stopped)
	}
	var err error
	if s.phase == ready {
		r := &run{}
		s.run = r
		if hs := st.GetHolder(); hs != nil {
			var h *holder.Holder
			if h, err = holder.Adopt(env.Reaper, hs, s.onHolderExit(r)); err != nil {
				err = fmt.Errorf("sandbox %s: %w", p.ID, err)
			}
			r.proc = h
		} else {
			r.proc = &boundNamespaces{mounts: p.mounts(), onExit: s.onHolderExit(r)}
		}
	}
	env.Log.Info("sandbox taken back", "sandbox", p.ID, "phase", s.phase, "holder", s.Status().Pid)
	return s, err
}
