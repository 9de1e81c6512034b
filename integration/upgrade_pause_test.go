package integration

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// deleted is the outcome of a Delete sent in the background.
type deleted struct {
	resp *task.DeleteResponse
	err  error
}

// TestUpgradeCarriesDeletesWaitingForClients: an exec's Delete, and a
// container's Delete that takes a stopped exec along, wait for the exec's
// client to read what is left of its output (here a client that comes
// late: up to 10 s). An upgrade does not wait for them: once it is done
// they are still waiting, now in the next process, and they end when the
// client has read the output, which it gets whole.
func TestUpgradeCarriesDeletesWaitingForClients(t *testing.T) {
	e := setup(t)
	id := e.id("carried")
	e.runDetached(id, "sleep", "100000")
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	dir := t.TempDir()
	next := buildTether(t, dir, "next", "v-next")
	// exited starts an exec printing out into a fifo no client has opened
	// yet, and waits for its exit.
	exited := func(execID, out string) string {
		t.Helper()
		fifo := filepath.Join(dir, execID)
		if err := unix.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		spec, _ := json.Marshal(map[string]any{"args": []string{"echo", out}, "cwd": "/", "env": []string{"PATH=/bin"}})
		if _, err := client.Exec(ctx, &task.ExecProcessRequest{Id: id, ExecId: execID, Stdout: fifo,
			Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Start(ctx, &task.StartRequest{Id: id, ExecId: execID}); err != nil {
			t.Fatal(err)
		}
		if w, err := client.Wait(ctx, &task.WaitRequest{Id: id, ExecId: execID}); err != nil || w.GetExitStatus() != 0 {
			t.Fatalf("exec %s: %v %v", execID, w, err)
		}
		return fifo
	}
	// deleteDuringUpgrade sends del, makes sure the shim has it (a request
	// sent after it on the same connection is answered), upgrades the
	// shim, and checks the Delete is still waiting for the client; the
	// client then reads the fifo, and the Delete ends.
	deleteDuringUpgrade := func(what, fifo, out string, del func() (*task.DeleteResponse, error)) *task.DeleteResponse {
		t.Helper()
		done := make(chan deleted, 1)
		go func() {
			resp, err := del()
			done <- deleted{resp, err}
		}()
		if _, err := client.State(ctx, &task.StateRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
		if out, err := upgradeShims(t, next, "-namespace", e.ctd.Namespace, "-id", id, "-binary", next); err != nil {
			t.Fatalf("upgrade during the %s: %v\n%s", what, err, out)
		}
		select {
		case d := <-done:
			t.Fatalf("the %s ended (%v, %v) before its client read the output: the upgrade waited for it", what, d.resp, d.err)
		default:
		}
		f, err := os.Open(fifo) // the late client
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(f)
		f.Close()
		if err != nil || string(got) != out+"\n" {
			t.Fatalf("the %s's client read %q, %v; want %q", what, got, err, out)
		}
		d := <-done
		if d.err != nil {
			t.Fatalf("the %s: %v", what, d.err)
		}
		return d.resp
	}

	fifo := exited("alone", "deleted alone")
	resp := deleteDuringUpgrade("exec's Delete", fifo, "deleted alone", func() (*task.DeleteResponse, error) {
		return client.Delete(ctx, &task.DeleteRequest{Id: id, ExecId: "alone"})
	})
	if resp.GetExitStatus() != 0 || resp.GetPid() == 0 {
		t.Fatalf("the exec's Delete answered %v", resp)
	}

	fifo = exited("leftover", "deleted with its container")
	if _, err := client.Kill(ctx, &task.KillRequest{Id: id, Signal: uint32(unix.SIGKILL)}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Wait(ctx, &task.WaitRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	resp = deleteDuringUpgrade("container's Delete", fifo, "deleted with its container", func() (*task.DeleteResponse, error) {
		return client.Delete(ctx, &task.DeleteRequest{Id: id})
	})
	if resp.GetExitStatus() != 137 {
		t.Fatalf("the container's Delete answered %v", resp)
	}
	// containerd shuts a shim down once its last task is deleted; the
	// task went through the shim's own API here, so the test does (a
	// shim left running outlived every run of this test).
	if _, err := client.Shutdown(ctx, &task.ShutdownRequest{Id: id}); err != nil && !errors.Is(err, ttrpc.ErrClosed) {
		t.Fatalf("shutdown: %v", err)
	}
	e.waitFor("the shim to exit after its shutdown", 30*time.Second, func() bool { return len(shimsFor(id)) == 0 })
}

// TestUpgradeCarriesAnExecStartInFlight: an exec's Start whose runtime
// call does not end (a runtime held up here until the test lets it go) is
// carried over: the upgrade ends while the call still runs, and the new
// binary finishes the start once the runtime is done. The exec then runs,
// and its client gets its output and its exit code.
func TestUpgradeCarriesAnExecStartInFlight(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	gate, entered := filepath.Join(dir, "gate"), filepath.Join(dir, "entered")
	for _, f := range []string{gate, entered} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The runtime's exec says it has begun, then waits to be let go.
	opts := e.runtimeWrapper(`if [ "$sub" = exec ] && [ -p `+gate+` ]; then echo in > `+entered+`; read x < `+gate+`; fi`, "")
	id := e.id("startcarried")
	e.ctr("run", "-d", "--runtime", harness.Runtime, "--runtime-config-path", opts, harness.BusyboxImageName, id, "sleep", "100000")
	t.Cleanup(func() { e.remove(id) })
	shim := shimsFor(id)[0].pid
	next := buildTether(t, dir, "next", "v-next")

	exec := e.ctd.CtrCommand(context.Background(), "task", "exec", "--exec-id", "slow", id, "sh", "-c", "echo ran; exit 7")
	out, _ := exec.StdoutPipe()
	if err := exec.Start(); err != nil {
		t.Fatal(err)
	}
	printed := collect(out)
	// The runtime call is in flight.
	f, err := os.Open(entered)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(f)
	f.Close()
	os.Remove(entered) // later runtime calls (the next exec) are not held

	report, err := upgradeShims(t, next, "-namespace", e.ctd.Namespace, "-id", id, "-binary", next)
	t.Logf("upgrade: %s", report)
	if err != nil {
		t.Fatalf("upgrade with an exec's start in flight: %v", err)
	}
	if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
		t.Fatalf("shims %v, want pid %d", p, shim)
	}
	// Let the runtime go: the new binary finishes the start.
	g, err := os.OpenFile(gate, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.WriteString("go\n")
	g.Close()
	os.Remove(gate)
	lines := printed.all()
	if err := exec.Wait(); exec.ProcessState.ExitCode() != 7 || strings.Join(lines, "|") != "ran" {
		t.Fatalf("the exec whose start was carried over: exit %d, output %q (%v)", exec.ProcessState.ExitCode(), lines, err)
	}
	if res := e.ctr("task", "exec", "--exec-id", "after", id, "echo", "served"); res.Stdout != "served\n" {
		t.Fatalf("exec after the upgrade: %q", res.Stdout)
	}
}
