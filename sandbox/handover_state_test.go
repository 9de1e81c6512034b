package sandbox

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
)

// TestHandoverRefusedWhileStarting: a sandbox whose holder is being
// started is not written down (the upgrade is refused, FailedPrecondition);
// once started it is.
func TestHandoverRefusedWhileStarting(t *testing.T) {
	entered, proceed := make(chan struct{}), make(chan struct{})
	e := &fakeEnv{beforeReady: func(*fakeHolder) {
		close(entered)
		<-proceed
	}}
	var released atomic.Int32
	svc := newTestService(t, e, &released)
	svc.sb = newSandbox(Pod{ID: "pod1", Bundle: t.TempDir()}, svc.env)
	started := make(chan error, 1)
	go func() {
		_, _, err := svc.sb.Start(context.Background())
		started <- err
	}()
	<-entered
	if st, err := svc.Handover(context.Background()); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("handover while starting: %v %v", st, err)
	}
	close(proceed)
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	st, err := svc.Handover(context.Background())
	if err != nil || st.GetPhase() != int32(ready) || st.GetHolder().GetPid() != 100 {
		t.Fatalf("handover once started: %v %v", st, err)
	}
}

// TestTakenBackInEveryPhase: a sandbox written down created, stopped or
// shut down is taken back as it was: a created one starts, a stopped one
// reports its exit at once.
func TestTakenBackInEveryPhase(t *testing.T) {
	ctx := context.Background()
	e := &fakeEnv{}
	s := newTestSandbox(t, e)
	s.pod.DNS, s.pod.Sysctls, s.pod.CgroupParent = nil, map[string]string{"kernel.shmmni": "2048"}, "/kubepods/pod1"
	svc := &Service{namespace: "k8s.io", env: s.env, sb: s}
	st, err := svc.Handover(ctx)
	if err != nil || st.GetPhase() != int32(created) || st.GetHolder() != nil {
		t.Fatalf("created: %v %v", st, err)
	}
	again := restoreService(t, Config{Namespace: "k8s.io", Env: *e.env()}, st)
	if got := again.sb.pod; got.ID != "pod1" || got.Sysctls["kernel.shmmni"] != "2048" || got.CgroupParent != "/kubepods/pod1" {
		t.Fatalf("pod taken back %+v", got)
	}
	if pid, _, err := again.sb.Start(ctx); err != nil || pid != 100 {
		t.Fatalf("start after the take-back: %d %v", pid, err)
	}

	if pid, _, err := s.Start(ctx); err != nil || pid != 101 {
		t.Fatalf("start: %d %v", pid, err)
	}
	e.holder(1).exit(3)
	waitStopped(t, s)
	if st, err = svc.Handover(ctx); err != nil || st.GetPhase() != int32(stopped) || st.GetExit().GetStatus() != 3 || st.GetHolder() != nil {
		t.Fatalf("stopped: %v %v", st, err)
	}
	again = restoreService(t, Config{Namespace: "k8s.io", Env: *e.env()}, st)
	if ex := waitStopped(t, again.sb); ex.Status != 3 || ex.Pid != 101 {
		t.Fatalf("wait after the take-back: %+v", ex)
	}
	if err := again.sb.Shutdown(ctx); err != nil || again.Holds() {
		t.Fatalf("shutdown after the take-back: %v", err)
	}
	if st, err = again.Handover(ctx); err != nil || st.GetPhase() != int32(shutDown) {
		t.Fatalf("shut down: %v %v", st, err)
	}
	if again = restoreService(t, Config{Namespace: "k8s.io", Env: *e.env()}, st); again.Holds() || !again.HasSandbox() {
		t.Fatal("a shut down sandbox taken back holds the shim")
	}
}

// TestCheckStateRefusesWhatCannotBeTakenBack: a state the next process
// cannot take back is refused before anything is (a rollback is still
// possible then).
func TestCheckStateRefusesWhatCannotBeTakenBack(t *testing.T) {
	good := func() *upgradepb.Sandbox {
		return &upgradepb.Sandbox{Id: "pod1", Bundle: "/run/b/pod1", Phase: int32(ready), Holder: &upgradepb.Holder{Pid: 7, Pidfd: -1, LifelineFd: -1}}
	}
	if err := CheckState(good()); err != nil {
		t.Fatal(err)
	}
	if err := CheckState(nil); err != nil {
		t.Fatal(err)
	}
	bound := good()
	bound.Holder, bound.NamespacesBound, bound.PidMode = nil, true, int32(pidPerContainer)+1
	if err := CheckState(bound); err != nil {
		t.Fatalf("a ready pod without a holder: %v", err)
	}
	for name, change := range map[string]func(*upgradepb.Sandbox){
		"starting":           func(s *upgradepb.Sandbox) { s.Phase = int32(starting) },
		"unknown phase":      func(s *upgradepb.Sandbox) { s.Phase = 9 },
		"ready without pid":  func(s *upgradepb.Sandbox) { s.Holder = nil },
		"holder pid 0":       func(s *upgradepb.Sandbox) { s.Holder.Pid = 0 },
		"bound and a holder": func(s *upgradepb.Sandbox) { s.NamespacesBound = true },
		"bound, shared pid": func(s *upgradepb.Sandbox) {
			s.Holder, s.NamespacesBound, s.PidMode = nil, true, int32(pidShared)+1
		},
		"bound, stopped": func(s *upgradepb.Sandbox) {
			s.Holder, s.NamespacesBound, s.Phase, s.Exit = nil, true, int32(stopped), &upgradepb.Exit{}
		},
		"unknown pid mode":    func(s *upgradepb.Sandbox) { s.PidMode = 9 },
		"stopped, no exit":    func(s *upgradepb.Sandbox) { s.Phase = int32(stopped) },
		"bad id":              func(s *upgradepb.Sandbox) { s.Id = "../x" },
		"relative bundle":     func(s *upgradepb.Sandbox) { s.Bundle = "b" },
		"files outside a pod": func(s *upgradepb.Sandbox) { s.Files = &upgradepb.PodFiles{RootDir: "/etc", StateDir: "/run"} },
		"record":              func(s *upgradepb.Sandbox) { s.Record = []byte("{") },
	} {
		st := good()
		change(st)
		if err := CheckState(st); err == nil {
			t.Errorf("%s: taken back", name)
		}
	}
}

// restoreService takes the sandbox back as the next process does: from
// duplicates, the descriptors received closed once it is done.
func restoreService(t *testing.T, cfg Config, st *upgradepb.Sandbox) *Service {
	t.Helper()
	svc, err := RestoreService(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	fdpass.Close(StateFds(st)...)
	return svc
}

// TestStateOfEarlierVersions: a sandbox written down by a binary before
// version 3 (no pid mode: it ran a holder for every pod, in a pid
// namespace of its own unless the pod used the node's) is taken back as
// it ran: a created one with a pid namespace gets a holder when started.
func TestStateOfEarlierVersions(t *testing.T) {
	for ownPid, want := range map[bool]pidMode{true: pidShared, false: pidNode} {
		st := &upgradepb.Sandbox{Id: "pod1", Bundle: t.TempDir(), OwnUts: true, OwnIpc: true, OwnPid: ownPid, Phase: int32(created)}
		if err := CheckState(st); err != nil {
			t.Fatal(err)
		}
		svc := restoreService(t, Config{Namespace: "k8s.io", Env: *(&fakeEnv{}).env()}, st)
		if got := svc.sb.pod.PID; got != want {
			t.Errorf("own_pid %v: pid namespaces %v, want %v", ownPid, got, want)
		}
		// Written down again: what an earlier binary reads is as it was.
		if again := svc.Outline(); again.GetOwnPid() != ownPid || again.GetPidMode() != int32(want)+1 {
			t.Errorf("own_pid %v written down again as %v", ownPid, again)
		}
	}
}
