package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// stress reports whether the full-size stress runs were asked for
// (make stress); CI runs shortened ones.
func stress() bool { return os.Getenv("TETHER_STRESS") == "1" }

// size picks the full or the shortened size of a stress run.
func size(full, short int) int {
	if stress() {
		return full
	}
	return short
}

// TestExecStorm: execs into one container, 50 at a time, each exiting at
// once with its own code (most exit before the shim has read runc's pid
// file). Every code must come back to its own exec, none lost.
func TestExecStorm(t *testing.T) {
	e := setup(t)
	id := e.id("storm")
	e.runDetached(id, "sleep", "100000")
	n, parallel := size(1000, 300), 50
	start := time.Now()
	var mu sync.Mutex
	wrong := map[string]string{}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			want := i % 256
			execID := fmt.Sprintf("x%d", i)
			res, err := e.ctrErr(nil, "task", "exec", "--exec-id", execID, id, "sh", "-c", fmt.Sprintf("exit %d", want))
			if res.ExitCode != want || (want == 0 && err != nil) {
				mu.Lock()
				wrong[execID] = fmt.Sprintf("exit %d, want %d (%v)", res.ExitCode, want, err)
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	t.Logf("exec storm: %d execs, %d at a time, in %v: %d wrong or lost", n, parallel, time.Since(start).Round(time.Millisecond), len(wrong))
	for execID, msg := range wrong {
		t.Errorf("exec %s: %s\nwhat the log says of it:\n%s", execID, msg, e.logLinesOf(execID))
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("container %q after the storm", st)
	}
}

// logLinesOf is every line of containerd's log (which holds the shims') that
// names the word id.
func (e *env) logLinesOf(id string) string {
	word := regexp.MustCompile(`\b` + regexp.QuoteMeta(id) + `\b`)
	var out []string
	for _, line := range strings.Split(e.ctd.FullLog(), "\n") {
		if word.MatchString(line) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// logLinesMatching returns the lines of containerd's log (the shims' among
// them) that match the regular expression re.
func (e *env) logLinesMatching(re string) string {
	m := regexp.MustCompile(re)
	var out []string
	for _, line := range strings.Split(e.ctd.FullLog(), "\n") {
		if m.MatchString(line) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// shimGoroutines asks the shim for a goroutine dump (SIGUSR1) and reads the
// count from its log, which containerd copies into its own.
func (e *env) shimGoroutines(pid int) int {
	e.t.Helper()
	re := regexp.MustCompile(`msg="goroutine dump".*pid=` + strconv.Itoa(pid) + ` .*goroutines=(\d+)`)
	before := len(re.FindAllStringSubmatch(e.ctd.FullLog(), -1))
	if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
		e.t.Fatal(err)
	}
	var n int
	e.waitFor("goroutine dump in the log", 10*time.Second, func() bool {
		m := re.FindAllStringSubmatch(e.ctd.FullLog(), -1)
		if len(m) <= before {
			return false
		}
		n, _ = strconv.Atoi(m[len(m)-1][1])
		return true
	})
	return n
}

func fdCount(t *testing.T, pid int) int {
	entries, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// TestChurnLeavesNothing: create/start/exit/delete cycles in the shim of a
// long-lived container (one pod group): afterwards no zombie, no extra shim,
// the shim's fds and goroutines back where they were, no mount, no bundle.
func TestChurnLeavesNothing(t *testing.T) {
	e := setup(t)
	group := e.id("churn")
	keeper := group + "-keeper"
	e.ctr("run", "-d", "--annotation", "io.containerd.tether.v2.group="+group, "--runtime", harness.Runtime,
		harness.BusyboxImageName, keeper, "sleep", "100000")
	t.Cleanup(func() { e.remove(keeper) })
	shims := shimsFor(keeper)
	if len(shims) != 1 {
		t.Fatalf("shims: %v", shims)
	}
	shim := shims[0].pid
	zombiesBefore := zombies()
	// Let the shim settle (the first exec and event connection) before measuring.
	e.ctr("task", "exec", "--exec-id", "warm", keeper, "true")
	time.Sleep(500 * time.Millisecond)
	fdsBefore, goroutinesBefore := fdCount(t, shim), e.shimGoroutines(shim)

	n := size(500, 100)
	start := time.Now()
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("%s-%d", group, i)
		res, err := e.ctrErr(nil, "run", "--rm", "--annotation", "io.containerd.tether.v2.group="+group, "--runtime", harness.Runtime,
			harness.BusyboxImageName, id, "sh", "-c", "echo cycle "+strconv.Itoa(i))
		if err != nil || res.Stdout != fmt.Sprintf("cycle %d\n", i) {
			t.Fatalf("cycle %d: %q %v", i, res.Stdout, err)
		}
	}
	t.Logf("churn: %d cycles in %v", n, time.Since(start).Round(time.Millisecond))
	if other := shimsFor(group + "-0"); len(other) != 0 {
		t.Errorf("cycles started shims of their own: %v", other)
	}
	// Closing connections and event senders wind down asynchronously.
	var fdsAfter, goroutinesAfter int
	deadline := time.Now().Add(10 * time.Second)
	for {
		fdsAfter, goroutinesAfter = fdCount(t, shim), e.shimGoroutines(shim)
		if (fdsAfter <= fdsBefore && goroutinesAfter <= goroutinesBefore) || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("shim fds before %d after %d; goroutines before %d after %d", fdsBefore, fdsAfter, goroutinesBefore, goroutinesAfter)
	if fdsAfter > fdsBefore {
		t.Errorf("shim fds grew from %d to %d", fdsBefore, fdsAfter)
	}
	if goroutinesAfter > goroutinesBefore {
		t.Errorf("shim goroutines grew from %d to %d", goroutinesBefore, goroutinesAfter)
	}
	var newZombies []process
	deadline = time.Now().Add(10 * time.Second)
	for {
		newZombies = nil
		for pid, z := range zombies() {
			if _, old := zombiesBefore[pid]; !old {
				newZombies = append(newZombies, z)
			}
		}
		if len(newZombies) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("zombies left: %d", len(newZombies))
	for _, z := range newZombies {
		t.Errorf("zombie: pid %d (%s) parent %d", z.pid, z.comm, z.ppid)
	}
	if m := mountsMatching(group + "-"); len(m) > 1 { // the keeper's own rootfs
		t.Errorf("mounts left: %v", m)
	}
	bundles, _ := filepath.Glob(filepath.Join(e.ctd.Dir, "state", "io.containerd.runtime.v2.task", e.ctd.Namespace, group+"-[0-9]*"))
	if len(bundles) != 0 {
		t.Errorf("bundles left: %v", bundles)
	}
	if st := e.taskStatus(keeper); st != "RUNNING" {
		t.Errorf("keeper is %q", st)
	}
	if strings.Contains(e.ctd.FullLog(), "panic:") {
		t.Error("a panic in containerd's log")
	}
}
