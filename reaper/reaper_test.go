package reaper

import (
	"bytes"
	"context"
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
