package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// otherNamespace is the suite's containerd seen from a namespace of the
// test's own, with the busybox image imported there: what the test does
// (an upgrade of "every shim of the namespace") touches no other test.
func (e *env) otherNamespace(name string) *harness.Containerd {
	e.t.Helper()
	c := *e.ctd
	c.Namespace = fmt.Sprintf("%s-%d", name, os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.ImportBusybox(ctx, suite.busybox); err != nil {
		e.t.Fatal(err)
	}
	return &c
}

// counting is a shell loop printing prefix0..prefix(n-1), one every 10 ms.
func counting(prefix string) string {
	return fmt.Sprintf("i=0; until [ -e /stop ]; do echo %s$i; i=$((i+1)); usleep 10000; done", prefix)
}

// lines collects what r prints, line by line, and says when one appears.
type lines struct {
	mu    sync.Mutex
	got   []string
	seen  map[string]chan struct{}
	ended chan struct{}
}

func collect(r io.Reader) *lines {
	l := &lines{seen: map[string]chan struct{}{}, ended: make(chan struct{})}
	go func() {
		defer close(l.ended)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			l.mu.Lock()
			l.got = append(l.got, line)
			if ch, ok := l.seen[line]; ok {
				close(ch)
				delete(l.seen, line)
			}
			l.mu.Unlock()
		}
	}()
	return l
}

// waitFor waits until line has been printed.
func (l *lines) waitFor(t *testing.T, line string) {
	t.Helper()
	l.mu.Lock()
	for _, g := range l.got {
		if g == line {
			l.mu.Unlock()
			return
		}
	}
	ch := make(chan struct{})
	l.seen[line] = ch
	l.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(time.Minute):
		t.Fatalf("%q never printed", line)
	}
}

// all is every line, once the output has ended.
func (l *lines) all() []string {
	<-l.ended
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}

// checkSequence fails unless the collected lines are prefix0..prefixN for
// some N of at least least-1: no gap, no duplicate, nothing else.
func (l *lines) checkSequence(t *testing.T, what, prefix string, least int) {
	t.Helper()
	<-l.ended
	l.mu.Lock()
	defer l.mu.Unlock()
	var seq []string
	for _, g := range l.got {
		if strings.HasPrefix(g, prefix) {
			seq = append(seq, g)
		}
	}
	for i := range seq {
		if seq[i] != prefix+strconv.Itoa(i) {
			t.Fatalf("%s: line %d is %q (of %d), want %s%d", what, i, seq[i], len(seq), prefix, i)
		}
	}
	if len(seq) < least {
		t.Fatalf("%s: %d lines, want at least %d", what, len(seq), least)
	}
}

// startOnTerminal starts ctr on a pseudo-terminal of its own and collects
// what it prints there.
func startOnTerminal(t *testing.T, c *harness.Containerd, args ...string) (*exec.Cmd, *lines) {
	t.Helper()
	pty, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pty.Close() })
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer slave.Close()
	cmd := c.CtrCommand(context.Background(), args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, collect(pty)
}

// TestLiveUpgradeKeepsEverything: containers in every state and their
// clients go on across a live upgrade onto a binary installed in place of
// the shims' own: an attached `ctr run` printing a numbered line every
// 10 ms (containerd holds a Wait and an output stream), an exec in flight,
// a terminal, a paused container and a two-container pod. Same pids, the new
// binary and version; no output line lost or doubled; the exec and the run
// end with their own exit codes; new execs, kill, pause and resume, metrics,
// OOM events and delete work afterwards; containerd never saw a dead shim.
func TestLiveUpgradeKeepsEverything(t *testing.T) {
	e := setup(t)
	c := e.otherNamespace("upgrade")
	ctx := context.Background()
	ctr := func(args ...string) harness.Result {
		t.Helper()
		res, err := c.Ctr(ctx, nil, args...)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	ids := map[string]string{}
	for _, n := range []string{"attached", "busy", "tty", "paused", "pod-a", "pod-b"} {
		ids[n] = e.id("up-" + n)
	}
	t.Cleanup(func() {
		for _, id := range ids {
			c.Ctr(ctx, nil, "task", "kill", "-a", "-s", "SIGKILL", id)
			c.Ctr(ctx, nil, "task", "rm", "-f", id)
			c.Ctr(ctx, nil, "container", "rm", id)
		}
	})
	events, err := c.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()

	// The attached run: containerd waits on it and streams its output.
	attached := c.CtrCommand(ctx, "run", "--rm", "--runtime", harness.Runtime, harness.BusyboxImageName, ids["attached"],
		"sh", "-c", counting("n")+"; exit 3")
	out, _ := attached.StdoutPipe()
	if err := attached.Start(); err != nil {
		t.Fatal(err)
	}
	numbered := collect(out)
	// A terminal, counting too.
	ttyCmd, ttyLines := startOnTerminal(t, c, "run", "--rm", "-t", "--runtime", harness.Runtime, harness.BusyboxImageName, ids["tty"],
		"sh", "-c", counting("t"))
	// An exec in flight.
	ctr("run", "-d", "--runtime", harness.Runtime, harness.BusyboxImageName, ids["busy"], "sleep", "100000")
	inFlight := c.CtrCommand(ctx, "task", "exec", "--exec-id", "slow", ids["busy"], "sh", "-c", "echo started; sleep 2; echo done; exit 4")
	execPipe, _ := inFlight.StdoutPipe()
	if err := inFlight.Start(); err != nil {
		t.Fatal(err)
	}
	execOut := collect(execPipe)
	// A paused container, and a pod of two (one memory-limited, for OOM).
	ctr("run", "-d", "--runtime", harness.Runtime, harness.BusyboxImageName, ids["paused"], "sleep", "100000")
	ctr("task", "pause", ids["paused"])
	group := "io.containerd.tether.v2.group=" + ids["pod-a"]
	ctr("run", "-d", "--annotation", group, "--runtime", harness.Runtime, harness.BusyboxImageName, ids["pod-a"], "sleep", "100000")
	ctr("run", "-d", "--annotation", group, "--memory-limit", strconv.Itoa(32<<20), "--runtime", harness.Runtime,
		harness.BusyboxImageName, ids["pod-b"], "sleep", "100000")
	numbered.waitFor(t, "n50")
	ttyLines.waitFor(t, "t50")
	execOut.waitFor(t, "started") // the exec runs

	shims := map[string]int{}
	for _, n := range []string{"attached", "busy", "tty", "paused", "pod-a"} {
		p := shimsFor(ids[n])
		if len(p) != 1 {
			t.Fatalf("shim of %s: %v", n, p)
		}
		shims[n] = p[0].pid
	}

	// Install the new binary where the shims were started from; upgrade.
	installed := filepath.Join(suite.shimDir, "containerd-shim-tether-v2")
	original := filepath.Join(t.TempDir(), "original")
	if err := os.Link(installed, original); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Rename(original, installed) })
	next := buildTether(t, suite.shimDir, ".next", "v-next")
	if err := os.Rename(next, installed); err != nil {
		t.Fatal(err)
	}
	report, err := upgradeShims(t, installed, "-namespace", c.Namespace)
	t.Logf("upgrade:\n%s", report)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(report, "result=ok"); n != len(shims) {
		t.Fatalf("%d shims upgraded, want %d", n, len(shims))
	}
	for n, pid := range shims {
		if p := shimsFor(ids[n]); len(p) != 1 || p[0].pid != pid {
			t.Fatalf("shim of %s after the upgrade: %v, want pid %d", n, p, pid)
		}
		if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe")); exe != installed {
			t.Fatalf("shim of %s runs %q, want %s", n, exe, installed)
		}
		client, err := c.DialShim(ids[n])
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Connect(ctx, &task.ConnectRequest{Id: ids[n]})
		client.Close()
		if err != nil || resp.GetVersion() != "v-next" {
			t.Fatalf("connect to %s's shim: %v %v", n, resp, err)
		}
	}

	// What was running when the shims moved ends as it should: the
	// counters, told to stop only now, ran across the upgrade.
	// (Each output is read to its end before Wait, which closes the pipe.)
	for _, n := range []string{"attached", "tty"} {
		touchStop(t, ctr("task", "ls").Stdout, ids[n])
	}
	numbered.checkSequence(t, "attached run", "n", 51)
	if err := attached.Wait(); attached.ProcessState.ExitCode() != 3 {
		t.Fatalf("attached run: exit %d (%v), want 3", attached.ProcessState.ExitCode(), err)
	}
	execLines := execOut.all()
	if err := inFlight.Wait(); inFlight.ProcessState.ExitCode() != 4 || strings.Join(execLines, "|") != "started|done" {
		t.Fatalf("exec in flight: exit %d, output %q (%v)", inFlight.ProcessState.ExitCode(), execLines, err)
	}
	ttyCmd.Wait()
	ttyLines.checkSequence(t, "terminal", "t", 51)

	// containerd never took a shim for dead: none of the containers still
	// running (the attached and terminal runs ended and were removed)
	// disconnected.
	for _, n := range []string{"busy", "paused", "pod-a", "pod-b"} {
		for _, line := range strings.Split(c.FullLog(), "\n") {
			if strings.Contains(line, "shim disconnected") && strings.Contains(line, ids[n]) {
				t.Fatalf("containerd saw the shim of %s disconnect: %s", n, line)
			}
		}
	}
	// Nor reported one of their inits dead (what it does after losing a
	// shim); the attached run's exit shows such a report would be seen.
	initExit := func(n string) string { return `"container_id":"` + ids[n] + `","id":"` + ids[n] + `"` }
	if err := events.WaitFor("/tasks/exit", 10*time.Second, initExit("attached")); err != nil {
		t.Fatalf("the attached run's exit event: %v", err)
	}
	for _, n := range []string{"busy", "paused", "pod-a", "pod-b"} {
		if exits := events.Matching("/tasks/exit", initExit(n)); len(exits) != 0 {
			t.Fatalf("an exit was reported for the running %s", n)
		}
	}
	// Everything works afterwards.
	if res := ctr("task", "exec", "--exec-id", "after", ids["busy"], "echo", "new exec"); res.Stdout != "new exec\n" {
		t.Fatalf("new exec: %q", res.Stdout)
	}
	ctr("task", "resume", ids["paused"])
	ctr("task", "pause", ids["paused"])
	ctr("task", "resume", ids["paused"])
	if res := ctr("task", "metrics", ids["busy"]); !strings.Contains(res.Stdout, "memory") {
		t.Fatalf("metrics: %q", res.Stdout)
	}
	for _, n := range []string{"pod-a", "pod-b"} {
		if res := ctr("task", "exec", "--exec-id", "x", ids[n], "echo", n); res.Stdout != n+"\n" {
			t.Fatalf("exec in %s: %q", n, res.Stdout)
		}
	}
	c.Ctr(ctx, nil, "task", "exec", "--exec-id", "hog", ids["pod-b"], "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a)")
	if err := events.WaitFor("/tasks/oom", 20*time.Second, ids["pod-b"]); err != nil {
		t.Fatalf("no OOM event after the upgrade: %v", err)
	}
	for _, n := range []string{"busy", "paused", "pod-a", "pod-b"} {
		ctr("task", "kill", "-s", "SIGKILL", ids[n])
	}
	for _, n := range []string{"busy", "paused", "pod-a", "pod-b"} {
		id := ids[n]
		e.waitFor(n+" to stop", 30*time.Second, func() bool {
			res, _ := c.Ctr(ctx, nil, "task", "ls")
			return strings.Contains(res.Stdout, id) && strings.Contains(lineOf(res.Stdout, id), "STOPPED")
		})
		ctr("task", "rm", id)
		ctr("container", "rm", id)
	}
	e.waitFor("the upgraded shims to exit", 30*time.Second, func() bool {
		for _, pid := range shims {
			if syscall.Kill(pid, 0) == nil {
				return false
			}
		}
		return true
	})
}

// lineOf is the line of s that contains sub.
func lineOf(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}
