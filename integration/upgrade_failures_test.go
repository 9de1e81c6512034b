package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/task"
)

// TestUpgradeRollsBack: an upgrade to a binary that exits at once, to one
// that crashes while taking the shim back, and to one that refuses the
// state's version is reported as failed; the shim still serves on its old
// binary, the container untouched.
func TestUpgradeRollsBack(t *testing.T) {
	e := setup(t)
	id := e.id("rollback")
	e.runDetached(id, "sleep", "100000")
	shim := shimsFor(id)[0].pid
	exe := func() string { p, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(shim), "exe")); return p }
	before := exe()
	dir := t.TempDir()
	exits := filepath.Join(dir, "exits-at-once")
	os.WriteFile(exits, []byte("#!/bin/sh\nexit 1\n"), 0o755)
	bad := map[string]string{
		"exits at once":           exits,
		"crashes while restoring": buildTether(t, dir, "crashes", "v-crash", "testCrashOnRestore=yes"),
		"refuses the state":       buildTether(t, dir, "refuses", "v-refuse", "testRefuseState=yes"),
	}
	good := buildTether(t, dir, "good", "v-good")
	for name, binary := range bad {
		out, err := upgradeShims(t, good, "-namespace", e.ctd.Namespace, "-id", id, "-binary", binary)
		t.Logf("%s: %s", name, strings.TrimSpace(out))
		if err == nil || !strings.Contains(out, "result=failed") {
			t.Fatalf("upgrade to a binary that %s: %v; want it reported as failed", name, err)
		}
		if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
			t.Fatalf("%s: shim %v, want pid %d still there", name, p, shim)
		}
		if got := exe(); got != before {
			t.Fatalf("%s: the shim runs %s, want its old binary %s", name, got, before)
		}
		if res := e.ctr("task", "exec", "--exec-id", "x", id, "echo", "still here"); res.Stdout != "still here\n" {
			t.Fatalf("%s: exec after the failed upgrade: %q", name, res.Stdout)
		}
		if st := e.taskStatus(id); st != "RUNNING" {
			t.Fatalf("%s: container %s", name, st)
		}
	}
	// A good binary still takes it over afterwards.
	if out, err := upgradeShims(t, good, "-namespace", e.ctd.Namespace, "-id", id, "-binary", good); err != nil {
		t.Fatalf("upgrade after the failures: %v\n%s", err, out)
	}
	if got := exe(); got != good {
		t.Fatalf("the shim runs %s, want %s", got, good)
	}
}

// TestUpgradeWhileContainerdIsDown: events that happen while containerd is
// away, before and after an upgrade of the shim, all reach containerd once
// it is back, in order.
func TestUpgradeWhileContainerdIsDown(t *testing.T) {
	e := setup(t)
	id := e.id("down")
	e.runDetached(id, "sleep", "100000")
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()
	execExit := func(execID string, code int) {
		t.Helper()
		spec, _ := json.Marshal(map[string]any{"args": []string{"sh", "-c", "exit " + strconv.Itoa(code)}, "cwd": "/", "env": []string{"PATH=/bin"}})
		if _, err := client.Exec(ctx, &task.ExecProcessRequest{Id: id, ExecId: execID,
			Spec: &anypb.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: spec}}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.Start(ctx, &task.StartRequest{Id: id, ExecId: execID}); err != nil {
			t.Fatal(err)
		}
		if w, err := client.Wait(ctx, &task.WaitRequest{Id: id, ExecId: execID}); err != nil || int(w.GetExitStatus()) != code {
			t.Fatalf("exec %s: %v %v", execID, w, err)
		}
	}
	e.ctd.Kill()
	logOffset := len(e.ctd.FullLog())
	execExit("before", 11)
	if _, err := client.Pause(ctx, &task.PauseRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	next := buildTether(t, t.TempDir(), "next", "v-next")
	if out, err := upgradeShims(t, next, "-namespace", e.ctd.Namespace, "-id", id, "-binary", next); err != nil {
		t.Fatalf("upgrade while containerd is down: %v\n%s", err, out)
	}
	client.Close()
	if client, err = e.ctd.DialShim(id); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Resume(ctx, &task.ResumeRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	execExit("after", 12)
	if err := e.ctd.Restart(); err != nil {
		t.Fatal(err)
	}
	want := []string{"/tasks/exec-added", "/tasks/exec-started", "/tasks/exit", "/tasks/paused",
		"/tasks/resumed", "/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"}
	var got []string
	e.waitFor("the events to reach containerd", 60*time.Second, func() bool {
		got = nil
		for _, line := range strings.Split(e.ctd.FullLog()[logOffset:], "\n") {
			if !strings.Contains(line, "ns="+e.ctd.Namespace) {
				continue
			}
			if i := strings.Index(line, "topic="); i >= 0 {
				topic := strings.Fields(line[i+len("topic="):])[0]
				got = append(got, strings.Trim(topic, `"`))
			}
		}
		return len(got) >= len(want)
	})
	if strings.Join(got[:len(want)], " ") != strings.Join(want, " ") {
		t.Fatalf("containerd got %v, want %v", got, want)
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("container %s after containerd came back", st)
	}
}

// TestUpgradeRunsTheProbedBinary: the file at the new binary's path is
// replaced right after the probe (a test hook in the old binary, as a
// concurrent package upgrade would): the binary that was probed runs, not
// the one that took its name.
func TestUpgradeRunsTheProbedBinary(t *testing.T) {
	e := setup(t)
	id := e.id("probed")
	e.runDetached(id, "sleep", "100000")
	shim := shimsFor(id)[0].pid
	dir := t.TempDir()
	target := buildTether(t, dir, "target", "v-probed")
	unprobed := buildTether(t, dir, "target.replacement", "v-unprobed")
	// First onto a binary that, as the old one, replaces the new binary
	// (with the file beside it named so) after probing it.
	hooked := buildTether(t, dir, "hooked", "v-hooked", "testReplaceAfterProbe=yes")
	if out, err := upgradeShims(t, hooked, "-namespace", e.ctd.Namespace, "-id", id, "-binary", hooked); err != nil {
		t.Fatalf("upgrade onto the hooked binary: %v\n%s", err, out)
	}
	out, err := upgradeShims(t, hooked, "-namespace", e.ctd.Namespace, "-id", id, "-binary", target)
	t.Logf("upgrade: %s", strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("upgrade onto the probed binary: %v", err)
	}
	if _, err := os.Stat(unprobed); !os.IsNotExist(err) {
		t.Fatalf("the hook did not replace the new binary (%v)", err)
	}
	if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
		t.Fatalf("shims after the upgrade: %v, want pid %d", p, shim)
	}
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	resp, err := client.Connect(context.Background(), &task.ConnectRequest{Id: id})
	if err != nil || resp.GetVersion() != "v-probed" {
		t.Fatalf("the shim runs version %q (%v), want the probed v-probed", resp.GetVersion(), err)
	}
	if res := e.ctr("task", "exec", "--exec-id", "after", id, "echo", "served"); res.Stdout != "served\n" {
		t.Fatalf("exec after the upgrade: %q", res.Stdout)
	}
}
