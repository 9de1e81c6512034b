package integration

import (
	"context"
	"encoding/json"
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

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// runtimeWrapper writes a runtime that runs script (sh, with $1 the runc
// subcommand... after the global flags) before it execs runc, and returns
// an options file naming it.
func (e *env) runtimeWrapper(script string, extraOptions string) (options string) {
	e.t.Helper()
	runc, err := exec.LookPath("runc")
	if err != nil {
		e.t.Fatal(err)
	}
	path := filepath.Join(e.t.TempDir(), "wrapped-runc")
	body := "#!/bin/sh\n# the runc subcommand: the first argument that is not a flag or a flag's value\n" +
		"sub=''; skip=0; for a in \"$@\"; do if [ $skip = 1 ]; then skip=0; continue; fi; case \"$a\" in --root|--log|--log-format|--criu) skip=1 ;; -*) ;; *) sub=$a; break ;; esac; done\n" +
		script + "\nexec " + runc + " \"$@\"\n"
	if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
		e.t.Fatal(err)
	}
	return e.runtimeConfig(fmt.Sprintf("BinaryName = %q\n%s", path, extraOptions))
}

// TestSignalStormWithASlowRuntime: SIGTERM, SIGINT, SIGUSR1, SIGHUP and
// SIGPIPE sent to a shim again and again while execs, kills, pauses and
// deletes run against a runtime made slow: no request hangs, no exit is
// lost, and the shim exits only when asked with no container left. Before
// signals were answered off the reaping loop, a SIGTERM during a slow
// runtime call froze the shim for good.
func TestSignalStormWithASlowRuntime(t *testing.T) {
	e := setup(t)
	opts := e.runtimeWrapper(`case "$sub" in kill|pause|resume|exec|delete|start) sleep 0.3 ;; esac`, "")
	id := e.id("storm-sig")
	e.ctr("run", "-d", "--runtime", harness.Runtime, "--runtime-config-path", opts, harness.BusyboxImageName, id, "sleep", "1000")
	t.Cleanup(func() { e.remove(id) })
	shims := shimsFor(id)
	if len(shims) != 1 {
		t.Fatalf("shims for %s: %v", id, shims)
	}
	shim := shims[0].pid

	stop := make(chan struct{})
	var sent sync.WaitGroup
	sent.Add(1)
	signalsSent := 0
	go func() {
		defer sent.Done()
		sigs := []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGHUP, syscall.SIGPIPE}
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if syscall.Kill(shim, sigs[i%len(sigs)]) == nil {
				signalsSent++
			}
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			execID := fmt.Sprintf("x%d", i)
			res, err := e.ctrErr(nil, "task", "exec", "--exec-id", execID, id, "sh", "-c", fmt.Sprintf("echo out-%d; exit %d", i, i+3))
			if res.ExitCode != i+3 || res.Stdout != fmt.Sprintf("out-%d\n", i) {
				errs <- fmt.Errorf("exec %s: exit %d, stdout %q (%v)", execID, res.ExitCode, res.Stdout, err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		// An exec killed and deleted in the storm.
		cmd := e.ctd.CtrCommand(context.Background(), "task", "exec", "--exec-id", "victim", id, "sleep", "1000")
		if err := cmd.Start(); err != nil {
			errs <- err
			return
		}
		var ok bool
		for range 100 {
			if _, err := e.ctrErr(nil, "task", "kill", "--exec-id", "victim", "-s", "SIGKILL", id); err == nil {
				ok = true
				break
			}
			time.Sleep(50 * time.Millisecond) // until the exec exists
		}
		if err := cmd.Wait(); !ok || cmd.ProcessState.ExitCode() != 137 {
			errs <- fmt.Errorf("killed exec: kill ok %v, exit %d (%v)", ok, cmd.ProcessState.ExitCode(), err)
		}
	}()
	wg.Wait()
	// Pause and resume (an exec into a paused container is refused, so
	// not at the same time as the execs), still under the storm.
	for range 3 {
		if _, err := e.ctrErr(nil, "task", "pause", id); err != nil {
			errs <- err
		}
		if _, err := e.ctrErr(nil, "task", "resume", id); err != nil {
			errs <- err
		}
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
		t.Fatalf("the shim did not survive the storm: %v", p)
	}

	// The container goes; the shim, still under signals, exits once asked.
	e.ctr("task", "kill", "-s", "SIGKILL", id)
	e.waitFor(id+" to stop", 30*time.Second, func() bool { return e.taskStatus(id) == "STOPPED" })
	e.ctr("task", "rm", id)
	e.waitFor("the shim to exit with no container left", 30*time.Second, func() bool { return len(shimsFor(id)) == 0 })
	close(stop)
	sent.Wait()
	t.Logf("%d signals sent to shim %d during the storm", signalsSent, shim)
	if signalsSent < 20 {
		t.Fatalf("only %d signals sent: the storm did not happen", signalsSent)
	}
}

// TestHungRuntimeCallHasADeadline: a runtime whose kill never returns holds
// nothing else: State, Pids and Wait answer within a second meanwhile, the
// kill fails at its deadline naming the runtime, and the hung runtime
// process is gone.
func TestHungRuntimeCallHasADeadline(t *testing.T) {
	e := setup(t)
	hang := filepath.Join(e.t.TempDir(), "hang")
	// The hung runtime is a sleep no other test (or container) runs.
	opts := e.runtimeWrapper(`if [ "$sub" = kill ] && [ -e `+hang+` ]; then exec sleep 100003; fi`, "RuntimeCallTimeout = \"3s\"\n")
	id := e.id("hung")
	e.ctr("run", "-d", "--runtime", harness.Runtime, "--runtime-config-path", opts, harness.BusyboxImageName, id, "sleep", "1000")
	t.Cleanup(func() {
		os.Remove(hang)
		e.remove(id)
	})
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	// An exec that has finished (kept, undeleted, for Wait below).
	spec, _ := json.Marshal(map[string]any{"args": []string{"true"}, "cwd": "/", "env": []string{"PATH=/bin"}})
	if _, err := client.Exec(context.Background(), &task.ExecProcessRequest{Id: id, ExecId: "done",
		Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Start(context.Background(), &task.StartRequest{Id: id, ExecId: "done"}); err != nil {
		t.Fatal(err)
	}
	if w, err := client.Wait(context.Background(), &task.WaitRequest{Id: id, ExecId: "done"}); err != nil || w.GetExitStatus() != 0 {
		t.Fatalf("exec: %v %v", w, err)
	}
	os.WriteFile(hang, nil, 0o600)

	killed := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := client.Kill(context.Background(), &task.KillRequest{Id: id, Signal: 15})
		killed <- err
	}()
	e.waitFor("the runtime's kill to hang", 10*time.Second, func() bool { return len(processesNamed("sleep", "100003")) == 1 })
	quick := func(what string, call func(ctx context.Context) error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := call(ctx); err != nil {
			t.Errorf("%s while the runtime hangs: %v", what, err)
		}
	}
	quick("State", func(ctx context.Context) error {
		st, err := client.State(ctx, &task.StateRequest{Id: id})
		if err == nil && st.GetStatus().String() != "RUNNING" {
			err = fmt.Errorf("status %v", st.GetStatus())
		}
		return err
	})
	quick("Pids", func(ctx context.Context) error {
		_, err := client.Pids(ctx, &task.PidsRequest{Id: id})
		return err
	})
	quick("Wait of a finished exec", func(ctx context.Context) error {
		_, err := client.Wait(ctx, &task.WaitRequest{Id: id, ExecId: "done"})
		return err
	})
	err = <-killed
	if err == nil || !strings.Contains(err.Error(), "wrapped-runc kill") || !strings.Contains(err.Error(), "did not finish within 3s") {
		t.Fatalf("hung kill after %v: %v", time.Since(start), err)
	}
	t.Logf("hung kill failed after %v: %v", time.Since(start).Round(100*time.Millisecond), err)
	if left := processesNamed("sleep", "100003"); len(left) != 0 {
		t.Fatalf("the hung runtime process is still there: %v", left)
	}
	os.Remove(hang)
	if st, err := client.State(context.Background(), &task.StateRequest{Id: id}); err != nil || st.GetStatus().String() != "RUNNING" {
		t.Fatalf("container after the failed kill: %v %v", st.GetStatus(), err)
	}
}

// processesNamed lists processes whose command line is exactly args.
func processesNamed(args ...string) []process {
	var out []process
	for _, p := range processes() {
		if strings.Join(p.cmdline, " ") == strings.Join(args, " ") {
			out = append(out, p)
		}
	}
	return out
}

// TestGroupsNeverCrossNamespaces: the same group value in two namespaces
// gets two shims; hostile group values (paths, "..", NUL, very long) are
// refused through either annotation with a clear error.
func TestGroupsNeverCrossNamespaces(t *testing.T) {
	e := setup(t)
	other := *e.ctd
	other.Namespace = e.ctd.Namespace + "-b"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := other.ImportBusybox(ctx, suite.busybox); err != nil {
		t.Fatal(err)
	}
	group := e.id("shared-group")
	var addresses []string
	for _, c := range []*harness.Containerd{e.ctd, &other} {
		id := e.id("ns")
		if _, err := c.Ctr(ctx, nil, "run", "-d", "--annotation", "io.kubernetes.cri.sandbox-id="+group, "--runtime", harness.Runtime,
			harness.BusyboxImageName, id, "sleep", "1000"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			c.Ctr(context.Background(), nil, "task", "kill", "-s", "SIGKILL", id)
			c.Ctr(context.Background(), nil, "task", "rm", "-f", id)
			c.Ctr(context.Background(), nil, "container", "rm", id)
		})
		addr, err := c.ShimAddress(id)
		if err != nil {
			t.Fatal(err)
		}
		addresses = append(addresses, addr)
	}
	if addresses[0] == addresses[1] {
		t.Fatalf("namespaces %s and %s share the shim %s", e.ctd.Namespace, other.Namespace, addresses[0])
	}
	for _, label := range []string{"io.kubernetes.cri.sandbox-id", "io.containerd.tether.v2.group"} {
		for _, g := range []string{"../" + e.ctd.Namespace + "/" + group, "/run/tether/x", "..", strings.Repeat("g", 300)} {
			id := e.id("hostile")
			res, err := other.Ctr(ctx, nil, "run", "--rm", "--annotation", label+"="+g, "--runtime", harness.Runtime,
				harness.BusyboxImageName, id, "true")
			other.Ctr(context.Background(), nil, "container", "rm", id)
			if err == nil || !strings.Contains(res.Stderr, "shim group") || !strings.Contains(res.Stderr, label) {
				t.Errorf("%s=%q: %v, stderr %q; want a clear refusal", label, g, err, res.Stderr)
			}
		}
	}
}

// TestOOMAfterASiblingWasReplaced: in a pod's shim, a container is deleted
// and another created in its place (reusing its descriptors' numbers); an
// OOM kill of the new one is still reported. Removing watches by
// descriptor number lost exactly these.
func TestOOMAfterASiblingWasReplaced(t *testing.T) {
	e := setup(t)
	group := e.id("oompod")
	events, err := e.ctd.SubscribeEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	keeper := group + "-keeper"
	e.ctr("run", "-d", "--annotation", "io.containerd.tether.v2.group="+group, "--runtime", harness.Runtime,
		harness.BusyboxImageName, keeper, "sleep", "1000")
	t.Cleanup(func() { e.remove(keeper) })
	for i := range 3 {
		sibling := group + "-s" + strconv.Itoa(i)
		e.ctr("run", "-d", "--annotation", "io.containerd.tether.v2.group="+group, "--runtime", harness.Runtime,
			harness.BusyboxImageName, sibling, "sleep", "1000")
		e.remove(sibling)
	}
	victim := group + "-victim"
	res, _ := e.ctrErr(nil, "run", "--rm", "--annotation", "io.containerd.tether.v2.group="+group, "--memory-limit", strconv.Itoa(32<<20),
		"--runtime", harness.Runtime, harness.BusyboxImageName, victim, "sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived")
	if res.ExitCode != 137 {
		t.Fatalf("victim exit %d, want 137 (stderr %q)", res.ExitCode, res.Stderr)
	}
	if err := events.WaitFor("/tasks/oom", 10*time.Second, victim); err != nil {
		t.Fatalf("no OOM event for a container whose siblings were replaced: %v", err)
	}
}
