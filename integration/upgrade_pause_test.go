package integration

import (
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/anypb"

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
}
