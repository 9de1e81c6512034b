package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// takeBackSteps are the steps of a take-back a failure is injected at: the
// upgrade package's own and the parts' (stdio.Restore runs inside each
// process's take-back).
var takeBackSteps = []string{
	"takeback.events", "takeback.sandbox", "takeback.container", "stdio.Restore",
	"takeback.listener", "takeback.connections",
}

// TestUpgradeRollsBackFromEveryStep: an upgrade onto a binary that fails
// (an error, then a panic) at each step of taking the shim back rolls back
// every time: the old binary takes the same state back, with the same
// containers and connections. Across all of them an attached run goes on
// printing without a gap or a doubled line, an exec in flight keeps its
// stdin and output and ends with its own exit code, containerd never sees
// the shim go, and no running container is reported dead. A good binary
// then takes the shim over.
func TestUpgradeRollsBackFromEveryStep(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	attached, busy := e.id("rb-attached"), e.id("rb-busy")
	group := "io.containerd.tether.v2.group=" + attached
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	run := e.ctd.CtrCommand(ctx, "run", "--rm", "--annotation", group, "--runtime", harness.Runtime,
		harness.BusyboxImageName, attached, "sh", "-c", counting("n"))
	out, _ := run.StdoutPipe()
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.remove(attached); run.Wait() })
	numbered := collect(out)
	e.ctr("run", "-d", "--annotation", group, "--runtime", harness.Runtime, harness.BusyboxImageName, busy, "sleep", "100000")
	t.Cleanup(func() { e.remove(busy) })
	reader := e.ctd.CtrCommand(ctx, "task", "exec", "--exec-id", "reader", busy, "sh", "-c", "echo started; read x; echo got $x; exit 5")
	stdin, _ := reader.StdinPipe()
	execOut, _ := reader.StdoutPipe()
	if err := reader.Start(); err != nil {
		t.Fatal(err)
	}
	execLines := collect(execOut)
	execLines.waitFor(t, "started")
	numbered.waitFor(t, "n20")
	// The group's shim was started for whichever container came first:
	// its -id.
	groupShim := func() []process { return append(shimsFor(attached), shimsFor(busy)...) }
	shims := groupShim()
	if len(shims) != 1 {
		t.Fatalf("want one shim for both containers: %v", shims)
	}
	shim := shims[0].pid
	exe := func() string { p, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(shim), "exe")); return p }
	before := exe()

	dir := t.TempDir()
	failing := buildTether(t, dir, "failing", "v-failing", harness.FailpointsKnob)
	failpoints := filepath.Join(dir, "failpoints") // beside it: the knob's
	for _, step := range takeBackSteps {
		for _, kind := range []string{"error", "panic"} {
			if err := os.WriteFile(failpoints, []byte(step+"="+kind+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := upgradeShims(t, failing, "-namespace", e.ctd.Namespace, "-id", busy, "-binary", failing)
			t.Logf("%s=%s: %s", step, kind, strings.TrimSpace(out))
			if err == nil || !strings.Contains(out, "result=failed") || !strings.Contains(out, "could not take over") {
				t.Fatalf("%s=%s: upgrade %v; want it rolled back", step, kind, err)
			}
			if p := groupShim(); len(p) != 1 || p[0].pid != shim || exe() != before {
				t.Fatalf("%s=%s: shims %v running %s; want pid %d running %s", step, kind, p, exe(), shim, before)
			}
			for _, id := range []string{attached, busy} {
				if st := e.taskStatus(id); st != "RUNNING" {
					t.Fatalf("%s=%s: %s is %q", step, kind, id, st)
				}
			}
			execID := fmt.Sprintf("x-%s-%s", strings.ReplaceAll(step, ".", "-"), kind)
			if res := e.ctr("task", "exec", "--exec-id", execID, busy, "echo", "served"); res.Stdout != "served\n" {
				t.Fatalf("%s=%s: exec after the rollback: %q", step, kind, res.Stdout)
			}
		}
	}
	os.Remove(failpoints)
	if out, err := upgradeShims(t, failing, "-namespace", e.ctd.Namespace, "-id", busy, "-binary", failing); err != nil {
		t.Fatalf("upgrade onto the binary once it does not fail: %v\n%s", err, out)
	}
	if exe() != failing {
		t.Fatalf("the shim runs %s, want %s", exe(), failing)
	}

	// containerd never took the shim for gone.
	for _, line := range strings.Split(e.ctd.FullLog(), "\n") {
		if strings.Contains(line, "shim disconnected") && (strings.Contains(line, busy) || strings.Contains(line, attached)) {
			t.Fatalf("containerd saw the shim disconnect: %s", line)
		}
	}
	// What ran across the rollbacks ends as it should.
	io.WriteString(stdin, "hello\n")
	stdin.Close()
	got := execLines.all()
	if err := reader.Wait(); reader.ProcessState.ExitCode() != 5 || strings.Join(got, "|") != "started|got hello" {
		t.Fatalf("exec across the rollbacks: exit %d, output %q (%v)", reader.ProcessState.ExitCode(), got, err)
	}
	touchStop(t, e.ctr("task", "ls").Stdout, attached)
	run.Wait()
	numbered.checkSequence(t, "attached run", "n", 21)
	if exits := events.Matching("/tasks/exit", `"container_id":"`+busy+`","id":"`+busy+`"`); len(exits) != 0 {
		t.Fatalf("an exit was reported for the running %s: %v", busy, exits)
	}
}

// TestUpgradeWithoutRollbackServesWhatItTookBack: when the rollback fails
// at a step too (here the old binary is the one that fails), there is no
// binary left to roll back to: the shim goes on serving what it took back
// and says what it lost. Its containers stay served (their processes
// without the stdio that could not be taken back): none is lost.
func TestUpgradeWithoutRollbackServesWhatItTookBack(t *testing.T) {
	e := setup(t)
	id := e.id("norollback")
	e.runDetached(id, "sleep", "100000")
	shim := shimsFor(id)[0].pid
	dir := t.TempDir()
	failing := buildTether(t, dir, "failing", "v-failing", harness.FailpointsKnob)
	failpoints := filepath.Join(dir, "failpoints") // beside it: the knob's
	if out, err := upgradeShims(t, failing, "-namespace", e.ctd.Namespace, "-id", id, "-binary", failing); err != nil {
		t.Fatalf("upgrade onto the binary while it does not fail: %v\n%s", err, out)
	}
	if err := os.WriteFile(failpoints, []byte("stdio.Restore=error\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(failpoints) })
	out, err := upgradeShims(t, failing, "-namespace", e.ctd.Namespace, "-id", id, "-binary", failing)
	t.Logf("upgrade: %s", strings.TrimSpace(out))
	if err == nil || !strings.Contains(out, "taken back without") {
		t.Fatalf("upgrade that could not roll back: %v; want it reported with what was lost", err)
	}
	os.Remove(failpoints)
	if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
		t.Fatalf("shims %v, want pid %d", p, shim)
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("container %s", st)
	}
	if res := e.ctr("task", "exec", "--exec-id", "after", id, "echo", "served"); res.Stdout != "served\n" {
		t.Fatalf("exec after the partial take-back: %q", res.Stdout)
	}
	e.ctr("task", "kill", "-s", "SIGKILL", id)
	e.waitFor("the container to stop", 30*time.Second, func() bool { return e.taskStatus(id) == "STOPPED" })
}

// TestNoDescriptorLeaksIntoChildrenAfterTakeBack: a child the shim starts
// right after taking itself back (where a publish binary or a runtime call
// could be the first) inherits nothing of the take-back: not the state, the
// old binary, the listening socket, containerd's connections or a
// container's stdio. Its /proc/PID/fd has its standard streams only.
func TestNoDescriptorLeaksIntoChildrenAfterTakeBack(t *testing.T) {
	e := setup(t)
	id := e.id("noleak")
	e.runDetached(id, "sleep", "100000")
	shim := shimsFor(id)[0].pid
	dir := t.TempDir()
	// The child: a sleep found by its argument, as the shim's child.
	forks := buildTether(t, dir, "forks", "v-forks", "testForkAfterTakeBack="+harness.ForkedChild)
	child := strings.Split(harness.ForkedChild, ",")
	// Connections to carry: a client of the shim's own besides containerd's.
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if out, err := upgradeShims(t, forks, "-namespace", e.ctd.Namespace, "-id", id, "-binary", forks); err != nil {
		t.Fatalf("upgrade: %v\n%s", err, out)
	}
	var sleeper process
	e.waitFor("the shim's child", 30*time.Second, func() bool {
		for _, p := range processes() {
			if slices.Equal(p.cmdline, child) && p.ppid == shim {
				sleeper = p
				return true
			}
		}
		return false
	})
	defer syscall.Kill(sleeper.pid, syscall.SIGKILL)
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", sleeper.pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", sleeper.pid, fd.Name()))
		t.Logf("the child's descriptor %s: %s", fd.Name(), target)
		ours, _ := os.Readlink("/proc/self/fd/" + fd.Name())
		switch n, _ := strconv.Atoi(fd.Name()); {
		case n <= 2 && target == "/dev/null":
		case n > 2 && ours == target:
			// What this test inherited itself, and passed on to
			// containerd and the shim: not the shim's.
		default:
			t.Errorf("the child inherited descriptor %s: %s", fd.Name(), target)
		}
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("container %s after the upgrade", st)
	}
}
