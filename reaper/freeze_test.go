package reaper

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

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
