package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/proto/task"
)

// TestContainerdRestartMidExecStorm: containerd dies (SIGKILL) while execs
// are being started and are exiting, and comes back. Every task is still
// there and manageable, every exec the shim knows kept its exit code, and
// the exits that happened while containerd was away reach it afterwards.
func TestContainerdRestartMidExecStorm(t *testing.T) {
	e := setup(t)
	id := e.id("restart")
	e.runDetached(id, "sleep", "100000")
	other := e.id("restart-other")
	e.runDetached(other, "sleep", "100000")

	n := size(400, 150)
	code := func(i int) int { return 1 + i%200 }
	var wg sync.WaitGroup
	sem := make(chan struct{}, 50)
	stop := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-stop:
				return
			}
			defer func() { <-sem }()
			// Each exec lives for a while, so many exit while containerd is down.
			e.ctrErr(nil, "task", "exec", "--exec-id", fmt.Sprintf("r%d", i), id, "sh", "-c", fmt.Sprintf("sleep 0.7; exit %d", code(i)))
		}(i)
	}
	procs := filepath.Join(cgroupDir(t, e.initPid(id), "pids"), "cgroup.procs")
	inContainer := func() int { return strings.Count(readTrim(t, procs), "\n") + 1 }
	e.waitFor("execs to run", time.Minute, func() bool { return inContainer() > 20 })
	e.ctd.Kill()
	killedAt := time.Now()
	close(stop)
	wg.Wait() // the ctr clients lose containerd and give up
	// Every exec exits while containerd is down: only the init is left.
	e.waitFor("the execs to exit", time.Minute, func() bool { return inContainer() == 1 })
	logOffset := len(e.ctd.FullLog())
	if err := e.ctd.Restart(); err != nil {
		t.Fatal(err)
	}
	restartedAt := time.Now()

	for _, c := range []string{id, other} {
		if st := e.taskStatus(c); st != "RUNNING" {
			t.Fatalf("after restart %s is %q, want RUNNING", c, st)
		}
	}
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	var known, exitedWhileDown, lost int
	for i := 0; i < n; i++ {
		execID := fmt.Sprintf("r%d", i)
		st, err := client.State(ctx, &task.StateRequest{Id: id, ExecId: execID})
		if err != nil {
			continue // never reached the shim
		}
		known++
		if st.GetStatus().String() == "CREATED" {
			client.Delete(ctx, &task.DeleteRequest{Id: id, ExecId: execID})
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		w, err := client.Wait(wctx, &task.WaitRequest{Id: id, ExecId: execID})
		cancel()
		if err != nil || int(w.GetExitStatus()) != code(i) {
			lost++
			t.Errorf("exec %s: exit %d (%v), want %d", execID, w.GetExitStatus(), err, code(i))
			continue
		}
		if at := w.GetExitedAt().AsTime(); at.After(killedAt) && at.Before(restartedAt) {
			exitedWhileDown++
		}
		client.Delete(ctx, &task.DeleteRequest{Id: id, ExecId: execID})
	}
	// The shim retries events until containerd takes them.
	var delivered int
	e.waitFor("exits during the outage to reach containerd", 30*time.Second, func() bool {
		delivered = strings.Count(e.ctd.FullLog()[logOffset:], "topic=/tasks/exit")
		return delivered >= exitedWhileDown
	})
	t.Logf("restart: tasks before 2, after 2; execs known to the shim %d, exited while containerd was down %d, exit events delivered after restart %d, exit codes lost %d",
		known, exitedWhileDown, delivered, lost)
	if exitedWhileDown == 0 {
		t.Fatal("no exec exited while containerd was down: the test proved nothing")
	}

	// Still manageable through containerd.
	if res := e.ctr("task", "exec", "--exec-id", "after", id, "echo", "alive"); res.Stdout != "alive\n" {
		t.Fatalf("exec after restart: %q", res.Stdout)
	}
	e.ctr("task", "kill", "-s", "SIGKILL", id)
	e.waitFor("task to stop", 20*time.Second, func() bool { return e.taskStatus(id) == "STOPPED" })
	e.ctr("task", "rm", id)
}

// TestShimLossRunningContainer: a shim killed with SIGKILL is cleaned up by
// containerd through the delete action: no container process, no runtime
// state, no mount remain.
func TestShimLossRunningContainer(t *testing.T) {
	e := setup(t)
	id := e.id("lost")
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	e.runDetached(id, "sleep", "100000")
	initPid := e.initPid(id)
	bundle := e.bundle(id)
	shims := shimsFor(id)
	if len(shims) != 1 {
		t.Fatalf("shims %v", shims)
	}
	syscall.Kill(shims[0].pid, syscall.SIGKILL)

	if err := events.WaitFor("/tasks/delete", 20*time.Second, `"container_id":"`+id+`"`); err != nil {
		t.Fatal(err)
	}
	e.waitFor("container process to go", 10*time.Second, func() bool {
		return syscall.Kill(initPid, 0) != nil
	})
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", e.ctd.Namespace, id)); !os.IsNotExist(err) {
		t.Errorf("runtime state left: %v", err)
	}
	if m := mountsMatching(bundle); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
	if st := e.taskStatus(id); st != "" {
		t.Errorf("task still listed as %q", st)
	}
	if exits := events.Matching(`"container_id":"`+id+`"`, `"exit_status":137`); len(exits) == 0 {
		t.Errorf("no exit with status 137 for the lost shim's task")
	}
	e.ctr("container", "rm", id)
}

// TestShimLossReportsRecordedExit: the init had exited with 5 before its
// shim was lost; the delete action reports 5 from the exit file, not 137.
func TestShimLossReportsRecordedExit(t *testing.T) {
	e := setup(t)
	id := e.id("lostexit")
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	e.runDetached(id, "sh", "-c", "exit 5")
	e.waitFor("task to stop", 20*time.Second, func() bool { return e.taskStatus(id) == "STOPPED" })
	data, err := os.ReadFile(filepath.Join(e.bundle(id), "init.exit"))
	if err != nil || !strings.HasPrefix(string(data), "5 ") {
		t.Fatalf("exit file: %q %v", data, err)
	}
	shims := shimsFor(id)
	if len(shims) != 1 {
		t.Fatalf("shims %v", shims)
	}
	syscall.Kill(shims[0].pid, syscall.SIGKILL)
	if err := events.WaitFor("/tasks/delete", 20*time.Second, `"container_id":"`+id+`"`, `"exit_status":5`); err != nil {
		t.Fatal(err)
	}
}

// TestShimSignals: SIGTERM is ignored while a container runs and SIGPIPE
// never kills the shim, not even with containerd (the log fifo's reader)
// gone; with no container running SIGTERM makes it exit cleanly.
func TestShimSignals(t *testing.T) {
	e := setup(t)
	id := e.id("signals")
	e.runDetached(id, "sleep", "100000")
	pid := shimsFor(id)[0].pid
	for _, sig := range []syscall.Signal{syscall.SIGPIPE, syscall.SIGHUP, syscall.SIGTERM} {
		syscall.Kill(pid, sig)
	}
	// The shim says when it has considered (and ignored) the SIGTERM.
	e.waitFor("the shim to answer SIGTERM", 10*time.Second, func() bool {
		return strings.Contains(e.ctd.FullLog(), "ignoring signal while the shim holds containers")
	})
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("shim died of SIGTERM/SIGPIPE/SIGINT while its container runs")
	}
	// Without containerd the shim's log fifo has no reader: logging (here
	// from a refused request) must not kill it.
	e.ctd.Kill()
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		client.Create(context.Background(), &task.CreateTaskRequest{Id: "x" + strconv.Itoa(i), Bundle: "/nonexistent"})
	}
	syscall.Kill(pid, syscall.SIGPIPE)
	client.Close()
	if err := e.ctd.Restart(); err != nil {
		t.Fatal(err)
	}
	if syscall.Kill(pid, 0) != nil {
		t.Fatal("shim died while containerd was away")
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("task %q after containerd came back", st)
	}
	// Stopped, not deleted: the shim still holds the exit containerd has
	// to collect, so SIGTERM leaves it; deleted, the shim goes.
	e.ctr("task", "kill", "-s", "SIGKILL", id)
	e.waitFor("task to stop", 20*time.Second, func() bool { return e.taskStatus(id) == "STOPPED" })
	before := strings.Count(e.ctd.FullLog(), "ignoring signal while the shim holds containers")
	syscall.Kill(pid, syscall.SIGTERM)
	e.waitFor("the shim to answer SIGTERM", 10*time.Second, func() bool {
		return strings.Count(e.ctd.FullLog(), "ignoring signal while the shim holds containers") > before
	})
	e.ctr("task", "rm", id)
	e.waitFor("shim to exit with its container deleted", 10*time.Second, func() bool { return len(shimsFor(id)) == 0 })
}
