package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var pauseRe = regexp.MustCompile(`pause=(\S+)`)

// upgradeOnce upgrades the shim of id to binary and returns the pause.
func (e *env) upgradeOnce(id, binary string) time.Duration {
	e.t.Helper()
	out, err := upgradeShims(e.t, binary, "-namespace", e.ctd.Namespace, "-id", id, "-binary", binary)
	if err != nil || !strings.Contains(out, "result=ok") {
		e.t.Fatalf("upgrade: %v\n%s", err, out)
	}
	m := pauseRe.FindStringSubmatch(out)
	if m == nil {
		e.t.Fatalf("no pause in %q", out)
	}
	d, err := time.ParseDuration(m[1])
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// TestUpgradeDuringExecStorm: execs started 50 at a time while the shim is
// upgraded again and again: none lost, none given another's exit code.
func TestUpgradeDuringExecStorm(t *testing.T) {
	e := setup(t)
	id := e.id("upstorm")
	e.runDetached(id, "sleep", "100000")
	dir := t.TempDir()
	binaries := []string{buildTether(t, dir, "a", "v-a"), buildTether(t, dir, "b", "v-b")}
	n := size(500, 200)
	var mu sync.Mutex
	wrong := map[string]string{}
	sem := make(chan struct{}, 50)
	var wg sync.WaitGroup
	started := make(chan struct{})
	go func() {
		for i := 0; i < n; i++ {
			if i == 20 {
				close(started)
			}
			wg.Add(1)
			sem <- struct{}{}
			go func(i int) {
				defer wg.Done()
				defer func() { <-sem }()
				want := i % 256
				execID := fmt.Sprintf("u%d", i)
				res, err := e.ctrErr(nil, "task", "exec", "--exec-id", execID, id, "sh", "-c", fmt.Sprintf("echo %s; exit %d", execID, want))
				if res.ExitCode != want || res.Stdout != execID+"\n" {
					mu.Lock()
					wrong[execID] = fmt.Sprintf("exit %d, stdout %q, want %d (%v)", res.ExitCode, res.Stdout, want, err)
					mu.Unlock()
				}
			}(i)
		}
	}()
	<-started
	var pauses []time.Duration
	for i := range 5 {
		pauses = append(pauses, e.upgradeOnce(id, binaries[i%2]))
	}
	wg.Wait()
	t.Logf("upgrade during an exec storm: %d execs, 5 upgrades (pauses %v): %d wrong or lost", n, pauses, len(wrong))
	for execID, msg := range wrong {
		t.Errorf("exec %s: %s\nwhat the log says of it:\n%s", execID, msg, e.logLinesOf(execID))
	}
	if len(wrong) > 0 {
		t.Logf("the upgrades, as the shim logged them:\n%s", e.logLinesMatching("live upgrade|trying again|take the shim over"))
	}
}

// TestHundredUpgrades: one shim with a busy container upgraded 100 times:
// no descriptor, goroutine or memory growth; the pause is reported.
func TestHundredUpgrades(t *testing.T) {
	e := setup(t)
	id := e.id("hundred")
	// Busy: it writes all the time (ctr run -d gives it no reader but the
	// shim's own: the pump keeps moving).
	e.runDetached(id, "sh", "-c", "while true; do echo busy; usleep 1000; done")
	shim := shimsFor(id)[0].pid
	dir := t.TempDir()
	binaries := []string{buildTether(t, dir, "a", "v-a"), buildTether(t, dir, "b", "v-b")}
	e.upgradeOnce(id, binaries[0]) // warm up: the first pause includes page cache misses
	fdsBefore, rssBefore, goroutinesBefore := countFds(shim), rss(shim), e.shimGoroutines(shim)
	n := 100
	pauses := make([]time.Duration, 0, n)
	for i := range n {
		pauses = append(pauses, e.upgradeOnce(id, binaries[(i+1)%2]))
	}
	// The last upgrade's client connection closes on the shim's side a
	// moment after the command exits.
	fdsAfter := countFds(shim)
	deadline := time.Now().Add(10 * time.Second)
	for fdsAfter > fdsBefore && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		fdsAfter = countFds(shim)
	}
	rssAfter, goroutinesAfter := rss(shim), e.shimGoroutines(shim)
	sort.Slice(pauses, func(i, j int) bool { return pauses[i] < pauses[j] })
	p50, p99 := pauses[n/2], pauses[n*99/100]
	t.Logf("%d upgrades: pause p50 %v, p99 %v, max %v; fds %d -> %d; goroutines %d -> %d; RSS %d -> %d KiB",
		n, p50, p99, pauses[n-1], fdsBefore, fdsAfter, goroutinesBefore, goroutinesAfter, rssBefore, rssAfter)
	if fdsAfter > fdsBefore {
		t.Errorf("descriptors grew from %d to %d", fdsBefore, fdsAfter)
	}
	if goroutinesAfter > goroutinesBefore {
		t.Errorf("goroutines grew from %d to %d", goroutinesBefore, goroutinesAfter)
	}
	if rssAfter > rssBefore+2048 {
		t.Errorf("RSS grew from %d to %d KiB", rssBefore, rssAfter)
	}
	if res := e.ctr("task", "exec", "--exec-id", "after", id, "echo", "ok"); res.Stdout != "ok\n" {
		t.Fatalf("exec after %d upgrades: %q", n, res.Stdout)
	}
}

func countFds(pid int) int {
	entries, _ := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "fd"))
	return len(entries)
}

// rss is a process's resident memory in KiB.
func rss(pid int) int {
	data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}
