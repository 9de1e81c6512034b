package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox/internal/holder"
)

// logBuffer is a log a test can read, safe for the goroutines that write.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// shimProcess is one process of a shim, as far as the sandbox sees it: its
// reaper, its sandbox service and its log.
type shimProcess struct {
	reaper *reaper.Reaper
	svc    *Service
	log    *logBuffer
}

func (p *shimProcess) config() Config {
	return Config{Namespace: "k8s.io", Env: Env{Reaper: p.reaper, Log: slog.New(slog.NewTextHandler(p.log, nil))}}
}

// runningShim is a shim process holding a ready sandbox for a pod with
// pid namespaces mode, on a real holder for a shared one, with the pod's
// files where containerd 2.x's CRI has them.
func runningShim(t *testing.T, mode pidMode) *shimProcess {
	t.Helper()
	needRoot(t)
	p := &shimProcess{reaper: startReaper(t), log: &logBuffer{}}
	p.svc = NewService(p.config())
	bundle := containerdLayout(t, t.TempDir(), t.TempDir(), "pod1")
	p.svc.sb = newSandbox(Pod{ID: "pod1", Bundle: bundle, OwnUTS: true, OwnIPC: true, PID: mode, Hostname: "pod-host"}, p.svc.env)
	if _, _, err := p.svc.sb.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if h, ok := p.svc.sb.run.proc.(*holder.Holder); ok {
			h.Kill()
		}
		p.svc.sb.pod.mounts().Unmount()
		p.svc.sb.files.Remove()
	})
	return p
}

// execCloses does to the old process what its execve does: every
// descriptor it opened itself is close-on-exec and goes (the holder's
// lifeline and pidfd among them); its reaper, sealed, never reaps again.
func (p *shimProcess) execCloses() {
	if h, ok := p.svc.sb.run.proc.(*holder.Holder); ok {
		h.Forget()
	}
}

// carryOn is the process that carries on: a new reaper that owns nothing
// yet, the sandbox taken back from st, then the exits the old process kept,
// then reaping (what exited meanwhile is a zombie until then).
func carryOn(t *testing.T, st *upgradepb.Sandbox, held []reaper.Exit) *shimProcess {
	t.Helper()
	if err := CheckState(st); err != nil {
		t.Fatal(err)
	}
	if err := checkFdsSurviveExec(StateFds(st)); err != nil {
		t.Fatal(err)
	}
	p := &shimProcess{reaper: reaper.New(), log: &logBuffer{}}
	p.svc = restoreService(t, p.config(), st)
	p.reaper.Deliver(held)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.reaper.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return p
}

func checkFdsSurviveExec(fds []int) error {
	for _, fd := range fds {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			return err
		}
		if flags&unix.FD_CLOEXEC != 0 {
			return os.ErrInvalid
		}
	}
	return nil
}

// fdsTo counts this process's descriptors that name target (as
// /proc/self/fd shows it: "pipe:[N]", "anon_inode:[pidfd]").
func fdsTo(t *testing.T, target string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if link, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); link == target {
			n++
		}
	}
	return n
}

// lifelineOfHolder is the pipe the holder reads its lifeline from.
func lifelineOfHolder(t *testing.T, pid int) string {
	t.Helper()
	link, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "fd", "3"))
	if err != nil || !strings.HasPrefix(link, "pipe:") {
		t.Fatalf("holder %d's lifeline: %q %v", pid, link, err)
	}
	return link
}

// holderRuns reports whether pid runs (exited: a zombie or gone).
func holderRuns(pid int) bool {
	stat := procFile(pid, "stat")
	i := strings.LastIndexByte(stat, ')')
	return i > 0 && len(stat) > i+2 && stat[i+2] != 'Z' && stat[i+2] != 'X'
}

// killChild kills pid, a child, and returns once it has exited (reaped
// or a zombie: a pidfd polls readable for both).
func killChild(t *testing.T, pid int) {
	t.Helper()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1)
		if err == nil {
			return
		}
		if err != unix.EINTR {
			t.Fatal(err)
		}
	}
}

func stopWithin(t *testing.T, sb *Sandbox, grace time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sb.Stop(ctx, grace); err != nil {
		t.Fatal(err)
	}
}

func readRecord(t *testing.T, bundle string) record {
	t.Helper()
	var rec record
	data, err := os.ReadFile(filepath.Join(bundle, RecordFile))
	if err == nil {
		err = json.Unmarshal(data, &rec)
	}
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestSandboxTakenBackAfterAnUpgrade: a ready sandbox is written down,
// the old process's descriptors go as with an exec, and a new Sandbox
// takes it back from the state and the descriptors that survived: the
// same holder, alive, its lifeline held once (by the new process); status
// and the API answer as before; stop closes the lifeline (the holder exits
// 0 long before its grace) and the exit is delivered once; the record and
// the pod's files carried over; no descriptor is left.
func TestSandboxTakenBackAfterAnUpgrade(t *testing.T) {
	for _, writer := range []string{"this binary", "a binary of version 2"} {
		t.Run(writer, func(t *testing.T) { takenBackAfterAnUpgrade(t, writer != "this binary") })
	}
}

// takenBackAfterAnUpgrade is TestSandboxTakenBackAfterAnUpgrade, the
// state as a binary of version 2 writes it if v2 (no pid mode).
func takenBackAfterAnUpgrade(t *testing.T, v2 bool) {
	pidfds := fdsTo(t, "anon_inode:[pidfd]")
	old := runningShim(t, pidShared)
	before := old.svc.sb.Status()
	pid := before.Pid
	lifeline := lifelineOfHolder(t, pid)
	if n := fdsTo(t, lifeline); n != 1 {
		t.Fatalf("lifeline held %d times before the upgrade", n)
	}
	files := old.svc.sb.files
	if _, err := os.Stat(filepath.Join(files.RootDir, "hostname")); err != nil {
		t.Fatal(err)
	}

	old.reaper.Freeze()
	st, err := old.svc.Handover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	held := old.reaper.Seal()
	old.execCloses()
	if v2 {
		st.PidMode = 0
	}
	next := carryOn(t, st, held)

	sb := next.svc.sb
	if sb.pod.PID != pidShared {
		t.Fatalf("taken back with pid namespaces %v", sb.pod.PID)
	}
	after := sb.Status()
	if after.Phase != ready || after.Pid != pid || !after.StartedAt.Equal(before.StartedAt) || after.Exit != nil {
		t.Fatalf("taken back %+v, was %+v", after, before)
	}
	if !holderRuns(pid) {
		t.Fatalf("holder %d did not survive the upgrade", pid)
	}
	if n := fdsTo(t, lifeline); n != 1 {
		t.Fatalf("lifeline held %d times after the upgrade, want once", n)
	}
	ctx := ttrpc.WithMetadata(context.Background(), ttrpc.MD{namespaceHeader: []string{"k8s.io"}})
	status, err := next.svc.SandboxStatus(ctx, &sandboxapi.SandboxStatusRequest{SandboxId: "pod1"})
	if err != nil || status.GetState() != "SANDBOX_READY" || int(status.GetPid()) != pid || !status.GetCreatedAt().AsTime().Equal(before.StartedAt) {
		t.Fatalf("status after the upgrade: %v %v", status, err)
	}
	if _, err := next.svc.PingSandbox(ctx, &sandboxapi.PingRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	if pid2, at, err := sb.Start(ctx); err != nil || pid2 != pid || !at.Equal(before.StartedAt) {
		t.Fatalf("start of the taken-back sandbox: %d %v %v", pid2, at, err)
	}

	waited := make(chan *sandboxapi.WaitSandboxResponse, 1)
	go func() {
		w, _ := next.svc.WaitSandbox(ctx, &sandboxapi.WaitSandboxRequest{SandboxId: "pod1"})
		waited <- w
	}()
	// A grace far beyond the test's deadline: only the lifeline can end it.
	stopWithin(t, sb, time.Hour)
	if w := <-waited; w.GetExitStatus() != 0 {
		t.Fatalf("wait after the upgrade: %v", w)
	}
	if st := sb.Status(); st.Phase != stopped || st.Exit == nil || st.Exit.Pid != pid || st.Exit.Status != 0 {
		t.Fatalf("stopped %+v", st)
	}
	next.reaper.Reap()
	if err := sb.exits.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := next.log.count("pod holder exited"); n != 0 {
		t.Fatalf("a stopped holder reported as exiting on its own %d times", n)
	}
	if rec := readRecord(t, sb.pod.Bundle); rec.HolderPid != pid || rec.HolderStart == 0 || rec.Files == nil || rec.Exit == nil || rec.Exit.Pid != pid {
		t.Fatalf("record after the upgrade: %+v", rec)
	}
	if n := fdsTo(t, lifeline); n != 0 {
		t.Fatalf("lifeline still held %d times", n)
	}
	if n := fdsTo(t, "anon_inode:[pidfd]"); n != pidfds {
		t.Fatalf("%d pidfds open, %d before the holder", n, pidfds)
	}
	if _, err := next.svc.ShutdownSandbox(ctx, &sandboxapi.ShutdownSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{files.RootDir, files.StateDir} {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("pod files %s left after shutdown: %v", dir, err)
		}
	}
}

// TestHolderExitWhileWrittenDown: a holder that dies during the upgrade is
// reported once by the process that carries on, whether its exit was kept
// by the frozen reaper (the sandbox written down ready) or left a zombie
// after the seal; the old process never sees it.
func TestHolderExitWhileWrittenDown(t *testing.T) {
	for _, when := range []string{"frozen", "sealed"} {
		t.Run(when, func(t *testing.T) {
			old := runningShim(t, pidShared)
			pid := old.svc.sb.Status().Pid
			old.reaper.Freeze()
			if when == "frozen" {
				killChild(t, pid)
				// Reaped by the frozen reaper now if not already: the exit is kept.
				old.reaper.Reap()
			}
			st, err := old.svc.Handover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			held := old.reaper.Seal()
			if when == "sealed" {
				killChild(t, pid) // a zombie for the process that carries on
			}
			if kept := len(held) == 1 && held[0].Pid == pid; kept != (when == "frozen") {
				t.Fatalf("exits kept by the old process: %+v", held)
			}
			if st.GetPhase() != int32(ready) || st.GetHolder().GetPid() != int32(pid) {
				t.Fatalf("written down %v", st)
			}
			old.execCloses()
			next := carryOn(t, st, held)
			sb := next.svc.sb
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			e, err := sb.Wait(ctx)
			if err != nil || e.Pid != pid || e.Status != 137 {
				t.Fatalf("wait: %+v %v", e, err)
			}
			next.reaper.Reap()
			if err := sb.exits.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			if st := sb.Status(); st.Phase != stopped || st.Exit.Status != 137 {
				t.Fatalf("status %+v", st)
			}
			if n := next.log.count("pod holder exited on its own"); n != 1 {
				t.Fatalf("the holder's exit reported %d times, want once", n)
			}
			if n := old.log.count("pod holder exited"); n != 0 {
				t.Fatalf("the old process took the exit %d times", n)
			}
			if rec := readRecord(t, sb.pod.Bundle); rec.Exit == nil || rec.Exit.Status != 137 || rec.HolderPid != pid {
				t.Fatalf("record %+v", rec)
			}
			stopWithin(t, sb, time.Hour) // stopped already: nothing to do
		})
	}
}

// TestTakeBackAfterAFailedHandover: an upgrade abandoned after the sandbox
// was written down leaves it exactly as it was: the duplicates closed, the
// holder held and ended as before; a holder that died meanwhile (its exit
// kept by the frozen reaper) is reported when the reaper thaws.
func TestTakeBackAfterAFailedHandover(t *testing.T) {
	pidfds := fdsTo(t, "anon_inode:[pidfd]")
	for name, dies := range map[string]bool{"holder runs": false, "holder dies": true} {
		// A subtest each: one reaper at a time (two take each other's exits).
		t.Run(name, func(t *testing.T) {
			p := runningShim(t, pidShared)
			pid := p.svc.sb.Status().Pid
			lifeline := lifelineOfHolder(t, pid)
			p.reaper.Freeze()
			if dies {
				killChild(t, pid)
				p.reaper.Reap()
			}
			st, err := p.svc.Handover(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(StateFds(st)) != 2 || fdsTo(t, lifeline) != 2 {
				t.Fatalf("written down %v: descriptors %v, lifeline held %d times", st, StateFds(st), fdsTo(t, lifeline))
			}
			p.svc.TakeBack(st)
			if n := fdsTo(t, lifeline); n != 1 {
				t.Fatalf("lifeline held %d times after the take-back", n)
			}
			p.reaper.Thaw()
			sb := p.svc.sb
			if dies {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				e, err := sb.Wait(ctx)
				if err != nil || e.Pid != pid || e.Status != 137 {
					t.Fatalf("wait: %+v %v", e, err)
				}
				if err := sb.exits.Wait(ctx); err != nil {
					t.Fatal(err)
				}
				if n := p.log.count("pod holder exited on its own"); n != 1 {
					t.Fatalf("the holder's exit reported %d times", n)
				}
				return
			}
			if st := sb.Status(); st.Phase != ready || st.Pid != pid || !holderRuns(pid) {
				t.Fatalf("after the take-back %+v", st)
			}
			stopWithin(t, sb, time.Hour)
			if st := sb.Status(); st.Phase != stopped || st.Exit.Status != 0 {
				t.Fatalf("stopped %+v", st)
			}
		})
	}
	if n := fdsTo(t, "anon_inode:[pidfd]"); n != pidfds {
		t.Fatalf("%d pidfds open, %d before", n, pidfds)
	}
}

// TestPodWithoutAProcessTakenBack: a ready pod without a holder is written
// down with nothing to carry but its state (its namespaces bound: the
// state needs version 3), taken back ready with pid 0, its namespaces as
// they were (the same hostname, the same namespace), and stopped by the
// process that carries on: unbound, exit 0.
func TestPodWithoutAProcessTakenBack(t *testing.T) {
	old := runningShim(t, pidPerContainer)
	m := old.svc.sb.pod.mounts()
	uts := nsOfFile(t, m.UTS)
	old.reaper.Freeze()
	if outline := old.svc.Outline(); !outline.GetNamespacesBound() || outline.GetHolder() != nil {
		t.Fatalf("outline %v", outline)
	}
	st, err := old.svc.Handover(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !st.GetNamespacesBound() || st.GetHolder() != nil || len(StateFds(st)) != 0 || st.GetPidMode() != int32(pidPerContainer)+1 {
		t.Fatalf("written down %v", st)
	}
	held := old.reaper.Seal()
	old.execCloses()
	next := carryOn(t, st, held)
	sb := next.svc.sb
	if s := sb.Status(); s.Phase != ready || s.Pid != 0 || sb.pod.PID != pidPerContainer {
		t.Fatalf("taken back %+v, pid mode %v", s, sb.pod.PID)
	}
	if got := nsOfFile(t, m.UTS); got != uts {
		t.Fatalf("UTS namespace %s after the upgrade, %s before", got, uts)
	}
	inNS(t, m.UTS, unix.CLONE_NEWUTS, func() {
		var u unix.Utsname
		unix.Uname(&u)
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "pod-host" {
			t.Errorf("pod hostname %q after the upgrade", got)
		}
	})
	stopWithin(t, sb, time.Hour)
	if e := waitStopped(t, sb); e.Pid != 0 || e.Status != 0 {
		t.Fatalf("exit %+v", e)
	}
	if _, err := os.Stat(m.UTS); !os.IsNotExist(err) {
		t.Fatalf("namespaces still bound after the stop: %v", err)
	}
}

// nsOfFile is the namespace a bound namespace file is ("uts:[inode]").
func nsOfFile(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(st.Ino, 10)
}
