package reaper

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startReaper runs a Reaper for the length of the test.
func startReaper(t *testing.T) *Reaper {
	t.Helper()
	r := New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r
}

// forkSh starts /bin/sh -c script without os/exec, so nothing but the reaper waits for it.
func forkSh(t *testing.T, script string) int {
	t.Helper()
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", script}, &syscall.ProcAttr{
		Env:   []string{"PATH=/usr/bin:/bin"},
		Files: []uintptr{0, 1, 2},
	})
	if err != nil {
		t.Errorf("fork: %v", err)
		return -1
	}
	return pid
}

// TestWatchDeliversEveryExitOnceToItsOwner starts 1000 children 50 at a time,
// each claiming its pid only after it was started (and often after it exited,
// as with a pid read from a runtime's pid file), and checks that each exit
// reaches its own claimant exactly once with its own status.
func TestWatchDeliversEveryExitOnceToItsOwner(t *testing.T) {
	r := startReaper(t)
	const children, parallel = 1000, 50

	var mu sync.Mutex
	got := make(map[int][]Exit) // pid -> exits delivered to that pid's claimant
	want := make(map[int]int)   // pid -> expected status

	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := 0; i < children; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			status := i % 200
			w := r.Watch()
			defer w.Close()
			pid := forkSh(t, "exit "+strconv.Itoa(status))
			if pid < 0 {
				return
			}
			if i%3 == 0 {
				time.Sleep(2 * time.Millisecond) // let it exit before the claim
			}
			exited := make(chan struct{})
			err := w.Claim(pid, -1, func(e Exit) {
				mu.Lock()
				got[pid] = append(got[pid], e)
				mu.Unlock()
				close(exited)
			})
			if err != nil {
				t.Errorf("claim %d: %v", pid, err)
				return
			}
			mu.Lock()
			want[pid] = status
			mu.Unlock()
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				t.Errorf("exit of pid %d never delivered", pid)
			}
		}(i)
	}
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	if len(want) != children {
		t.Fatalf("started %d children, want %d", len(want), children)
	}
	for pid, status := range want {
		exits := got[pid]
		if len(exits) != 1 {
			t.Errorf("pid %d: %d exits delivered, want exactly 1", pid, len(exits))
			continue
		}
		if exits[0].Pid != pid || exits[0].Status != status {
			t.Errorf("pid %d: got exit %+v, want status %d", pid, exits[0], status)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.owners) != 0 || len(r.watches) != 0 {
		t.Errorf("reaper keeps %d owners and %d watches after all exits", len(r.owners), len(r.watches))
	}
}

// TestMonitorKeepsRuntimeCallStatus runs CLI-style commands through the
// ProcessMonitor side by side with a storm of unrelated exits: each call must
// get its own status and its full output.
func TestMonitorKeepsRuntimeCallStatus(t *testing.T) {
	r := startReaper(t)
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		wg.Add(2)
		go func() {
			defer wg.Done()
			w := r.Watch() // an unrelated watcher holding unowned exits
			defer w.Close()
			forkSh(t, "exit 0")
		}()
		go func(i int) {
			defer wg.Done()
			var out bytes.Buffer
			c := exec.Command("/bin/sh", "-c", fmt.Sprintf("echo out-%d; exit %d", i, i%7))
			c.Stdout = &out
			ec, err := r.Start(c)
			if err != nil {
				t.Errorf("start: %v", err)
				return
			}
			status, err := r.Wait(c, ec)
			if err != nil {
				t.Errorf("wait: %v", err)
				return
			}
			if status != i%7 {
				t.Errorf("call %d: status %d, want %d", i, status, i%7)
			}
			if got := strings.TrimSpace(out.String()); got != fmt.Sprintf("out-%d", i) {
				t.Errorf("call %d: output %q", i, got)
			}
		}(i)
	}
	wg.Wait()
}

func TestStartLocked(t *testing.T) {
	r := startReaper(t)
	c := exec.Command("/bin/sh", "-c", "exit 9")
	ec, err := r.StartLocked(c)
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := r.Wait(c, ec); status != 9 {
		t.Fatalf("status %d, want 9", status)
	}
	if _, err := r.StartLocked(exec.Command("/nonexistent/binary")); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
}

// TestStartFuncOwnsTheExit: a child started with StartFunc gets its exit
// through its function, once, even one that exits at once; a start that
// fails registers nobody.
func TestStartFuncOwnsTheExit(t *testing.T) {
	r := startReaper(t)
	got := make(chan Exit, 2)
	c := exec.Command("/bin/sh", "-c", "exit 7")
	if err := r.StartFunc(c, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if e.Status != 7 || e.Pid != c.Process.Pid {
			t.Fatalf("exit %+v, want status 7 of pid %d", e, c.Process.Pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit")
	}
	c.Process.Release()
	if err := r.StartFunc(exec.Command("/nonexistent/binary"), func(Exit) { t.Error("exit of a child never started") }); err == nil {
		t.Fatal("starting a missing binary succeeded")
	}
	r.mu.Lock()
	owners := len(r.owners)
	r.mu.Unlock()
	if owners != 0 || len(got) != 0 {
		t.Fatalf("owners left %d, extra exits %d", owners, len(got))
	}
}

func TestSignaledExitIs128PlusSignal(t *testing.T) {
	r := startReaper(t)
	w := r.Watch()
	defer w.Close()
	pid := forkSh(t, "kill -9 $$")
	got := make(chan Exit, 1)
	if err := w.Claim(pid, -1, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if e.Status != 137 {
			t.Fatalf("status %d, want 137", e.Status)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no exit")
	}
}

func TestClaimRejectsBadAndDuplicatePids(t *testing.T) {
	r := New()
	w := r.Watch()
	defer w.Close()
	if err := w.Claim(0, -1, func(Exit) {}); err == nil {
		t.Error("claim of pid 0 succeeded")
	}
	if err := w.Claim(12345678, -1, func(Exit) {}); err != nil {
		t.Fatal(err)
	}
	if err := w.Claim(12345678, -1, func(Exit) {}); err == nil {
		t.Error("second claim of the same pid succeeded")
	}
}

// TestClaimOfALiveProcessDiscardsAStaleHeldExit: an exit held for a pid
// whose process the caller's pidfd shows still running belongs to an
// earlier process with that pid; the live one keeps its own, later exit.
// A pidfd of a process that has exited does not make its held exit stale.
func TestClaimOfALiveProcessDiscardsAStaleHeldExit(t *testing.T) {
	r := New()
	w := r.Watch()
	defer w.Close()
	live := exec.Command("sleep", "100")
	if err := live.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { live.Process.Kill(); live.Wait() }()
	pidfd, err := unix.PidfdOpen(live.Process.Pid, 0)
	if err != nil {
		t.Fatalf("pidfd_open: %v", err)
	}
	defer unix.Close(pidfd)
	pid := live.Process.Pid
	r.deliver(Exit{Pid: pid, Status: 9}) // as if an earlier process with this pid was reaped
	got := make(chan Exit, 2)
	if err := w.Claim(pid, pidfd, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		t.Fatalf("the stale exit %+v was given to the live process", e)
	default:
	}
	r.deliver(Exit{Pid: pid, Status: 3}) // the live process's own exit
	if e := <-got; e.Status != 3 {
		t.Fatalf("got exit %+v, want status 3", e)
	}

	// The claimed process has exited (a zombie, reaped just before the
	// claim): its held exit is its own, pidfd or not.
	dead := exec.Command("true")
	if err := dead.Start(); err != nil {
		t.Fatal(err)
	}
	deadfd, err := unix.PidfdOpen(dead.Process.Pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(deadfd)
	var ws unix.WaitStatus
	unix.Wait4(dead.Process.Pid, &ws, 0, nil) // reaped: the pidfd now polls readable
	w2 := r.Watch()
	defer w2.Close()
	r.deliver(Exit{Pid: dead.Process.Pid, Status: 5})
	if err := w2.Claim(dead.Process.Pid, deadfd, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	if e := <-got; e.Status != 5 {
		t.Fatalf("held exit not delivered: %+v", e)
	}
}

// TestClosedWatchDropsHeldExits: exits nobody claimed are not kept once no
// watch is open, so orphans cannot grow the shim's memory.
func TestClosedWatchDropsHeldExits(t *testing.T) {
	r := New()
	w := r.Watch()
	r.deliver(Exit{Pid: 4242, Status: 1})
	r.mu.Lock()
	if len(w.held) != 1 {
		t.Errorf("open watch holds %d exits, want 1", len(w.held))
	}
	r.mu.Unlock()
	w.Close()
	r.deliver(Exit{Pid: 4243, Status: 1})
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.watches) != 0 || len(r.owners) != 0 {
		t.Errorf("reaper keeps state: %d watches, %d owners", len(r.watches), len(r.owners))
	}
}

// TestSubreaperReapsOrphans: a grandchild orphaned by its parent is
// re-parented to the subreaper and reaped, leaving no zombie.
func TestSubreaperReapsOrphans(t *testing.T) {
	if err := SetSubreaper(); err != nil {
		t.Fatal(err)
	}
	r := startReaper(t)
	c := exec.Command("/bin/sh", "-c", "sleep 0.2 & echo $!")
	var out bytes.Buffer
	c.Stdout = &out
	ec, err := r.Start(c)
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := r.Wait(c, ec); status != 0 {
		t.Fatalf("status %d", status)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(orphan)))
		if os.IsNotExist(err) {
			return // reaped: not even a zombie is left
		}
		if time.Now().After(deadline) {
			stat, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(orphan), "stat"))
			t.Fatalf("orphan %d still present: %s", orphan, stat)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStartFuncExitIsKeptWhileFrozen: a long-lived child started with
// StartFunc (a pod's holder) is the next process's to own: frozen, the
// reaper keeps its exit instead of delivering it; thawed, it delivers it.
func TestStartFuncExitIsKeptWhileFrozen(t *testing.T) {
	r := New()
	got := make(chan Exit, 2)
	c := exec.Command("/bin/sh", "-c", "exit 5")
	r.Freeze()
	if err := r.StartFunc(c, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	defer c.Process.Release()
	var info unix.Siginfo
	unix.Waitid(unix.P_PID, c.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
	r.Reap()
	if held := r.Held(); len(held) != 1 || held[0].Pid != c.Process.Pid || held[0].Status != 5 {
		t.Fatalf("held %+v", held)
	}
	if len(got) != 0 {
		t.Fatal("exit delivered while frozen")
	}
	r.Thaw()
	if e := <-got; e.Pid != c.Process.Pid || e.Status != 5 {
		t.Fatalf("thawed %+v", e)
	}
}

// TestFreezeKeepsProcessExitsForTheNextProcess: frozen, the reaper keeps
// the exits of claimed processes (for the process that carries on) but
// still gives commands it started theirs; thawed, it delivers what it kept.
// Own and Deliver let the next process take them back.
func TestFreezeKeepsProcessExitsForTheNextProcess(t *testing.T) {
	r := startReaper(t)
	w := r.Watch()
	defer w.Close()
	proc := exec.Command("sh", "-c", "read x")
	stdin, _ := proc.StdinPipe()
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	got := make(chan Exit, 4)
	if err := w.Claim(proc.Process.Pid, -1, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	r.Freeze()
	// A command started through the reaper (a runtime call) still ends.
	cmd := exec.Command("sh", "-c", "exit 3")
	ec, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if status, _ := r.Wait(cmd, ec); status != 3 {
		t.Fatalf("command status %d", status)
	}
	stdin.Close() // now it exits, frozen
	var info unix.Siginfo
	unix.Waitid(unix.P_PID, proc.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
	r.Reap()
	held := r.Held()
	if len(held) != 1 || held[0].Pid != proc.Process.Pid {
		t.Fatalf("held %+v", held)
	}
	select {
	case e := <-got:
		t.Fatalf("exit %+v delivered while frozen", e)
	default:
	}
	// The next process: owns the pid, is handed the kept exit.
	next := New()
	if err := next.Own(proc.Process.Pid, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	next.Deliver(held)
	if e := <-got; e.Pid != proc.Process.Pid {
		t.Fatalf("delivered %+v", e)
	}
	// Or this one, thawed.
	r.Thaw()
	if e := <-got; e.Pid != proc.Process.Pid {
		t.Fatalf("thawed %+v", e)
	}
}

// TestSealLeavesExitsAsZombies: sealed, the reaper reaps nothing: an exit
// waits, a zombie, for the process that carries on; thawed, it is reaped.
func TestSealLeavesExitsAsZombies(t *testing.T) {
	r := New()
	w := r.Watch()
	defer w.Close()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := make(chan Exit, 1)
	if err := w.Claim(cmd.Process.Pid, -1, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	r.Freeze()
	r.Seal()
	var info unix.Siginfo
	unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
	r.Reap()
	if held := r.Held(); len(held) != 0 {
		t.Fatalf("sealed, the reaper reaped %+v", held)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", cmd.Process.Pid)); err != nil {
		t.Fatal("the zombie is gone: it was reaped while sealed")
	}
	r.Thaw()
	if e := <-got; e.Pid != cmd.Process.Pid {
		t.Fatalf("after thaw: %+v", e)
	}
}

// TestFreezeWaitsForDeliveriesInFlight: an exit routed before Freeze but
// still being handed to its owner is handed over before Freeze returns, so
// a caller that next waits for exits being handled sees it.
func TestFreezeWaitsForDeliveriesInFlight(t *testing.T) {
	r := New()
	w := r.Watch()
	defer w.Close()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inOwner, release := make(chan struct{}), make(chan struct{})
	w.Claim(cmd.Process.Pid, -1, func(Exit) { close(inOwner); <-release })
	var info unix.Siginfo
	unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
	go r.Reap()
	<-inOwner
	frozen := make(chan struct{})
	go func() { r.Freeze(); close(frozen) }()
	select {
	case <-frozen:
		t.Fatal("Freeze returned while an exit was still being handed to its owner")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	<-frozen
}

// TestKeepHoldsARuntimeCallsExitForTheNextProcess: the exit of a command
// the reaper started (a runtime call in flight, carried over by a live
// upgrade) is kept instead of delivered once kept, frozen or not, and so
// is an exit nobody owns (a process the call started); the kept call
// cannot be kept twice, and one whose exit went cannot be kept at all.
// Released (the upgrade abandoned), the kept exit reaches its owner.
func TestKeepHoldsARuntimeCallsExitForTheNextProcess(t *testing.T) {
	r := New()
	cmd := exec.Command("sh", "-c", "exit 4")
	ec, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	release, ok := r.Keep(cmd.Process.Pid)
	if !ok {
		t.Fatal("a command in flight cannot be kept")
	}
	if _, again := r.Keep(cmd.Process.Pid); again {
		t.Fatal("a command was kept twice")
	}
	orphan := exec.Command("true")
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	var info unix.Siginfo
	for _, pid := range []int{cmd.Process.Pid, orphan.Process.Pid} {
		unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
	}
	r.Reap()
	held := r.Held()
	if len(held) != 2 {
		t.Fatalf("held %+v, want the call's exit and the orphan's", held)
	}
	select {
	case e := <-ec:
		t.Fatalf("a kept exit was delivered: %+v", e)
	default:
	}
	// The next process owns the call and is handed its exit.
	next := New()
	got := make(chan Exit, 1)
	if err := next.Own(cmd.Process.Pid, func(e Exit) { got <- e }); err != nil {
		t.Fatal(err)
	}
	next.Deliver(held)
	if e := <-got; e.Pid != cmd.Process.Pid || e.Status != 4 {
		t.Fatalf("the next process got %+v", e)
	}
	// Or this one gets it, released.
	release()
	if status, _ := r.Wait(cmd, ec); status != 4 {
		t.Fatalf("released: status %d", status)
	}
	if held := r.Held(); len(held) != 0 {
		t.Fatalf("still held after the release: %+v", held)
	}
	if _, ok := r.Keep(cmd.Process.Pid); ok {
		t.Fatal("a call whose exit went was kept")
	}
}
