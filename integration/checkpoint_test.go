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

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/proto/types"
)

// counter is a process whose state lives in its memory: a shell variable it
// increments and writes to /tmp/count twenty times a second.
const counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done"

// criuPath is the CRIU that can checkpoint on this kernel (see the Makefile).
func criuPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv("TETHER_CRIU")
	if path == "" {
		path = "/var/cache/tether/criu-4.1.1/criu"
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("CRIU not found at %s (make criu builds it): %v", path, err)
	}
	return path
}

// readCount reads the counter through an exec, or -1.
func (e *env) readCount(id string) int {
	// The counter rewrites the file every 50 ms: a read between the
	// truncation and the write sees it empty, so try again.
	for try := 0; try < 10; try++ {
		res, err := e.ctrErr(nil, "task", "exec", "--exec-id", "count-"+strconv.FormatInt(time.Now().UnixNano(), 36), id, "cat", "/tmp/count")
		if err != nil {
			return -1
		}
		if n, err := strconv.Atoi(strings.TrimSpace(res.Stdout)); err == nil {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
	return -1
}

// TestCheckpointLeaveRunningAndRestore: ctr checkpoints a counting container
// (with its rw layer) and it keeps running; the copy restored from the
// checkpoint goes on counting from where the checkpoint was taken.
func TestCheckpointLeaveRunningAndRestore(t *testing.T) {
	e := setup(t)
	cfg := e.runtimeConfig("CriuPath = \"" + criuPath(t) + "\"\n")
	id := e.id("ckpt")
	ref := "tether-it/checkpoint-" + id
	e.ctr("run", "-d", "--runtime", harness.Runtime, "--runtime-config-path", cfg, harness.BusyboxImageName, id, "sh", "-c", counter)
	t.Cleanup(func() { e.remove(id); e.ctrErr(nil, "images", "rm", ref) })
	e.waitFor("counter to pass 20", 20*time.Second, func() bool { return e.readCount(id) > 20 })

	// The count only goes up: one read before the checkpoint is a floor
	// for what the checkpoint holds (one read after it is not: a slow
	// machine counts on for seconds before the read).
	beforeCheckpoint := e.readCount(id)
	e.ctr("container", "checkpoint", "--task", "--rw", id, ref)
	atCheckpoint := e.readCount(id)
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("status after checkpoint %q, want RUNNING", st)
	}
	e.waitFor("original to keep counting", 10*time.Second, func() bool { return e.readCount(id) > atCheckpoint+5 })

	e.remove(id)
	e.ctr("container", "restore", "--live", "--rw", id, ref)
	first := e.readCount(id)
	if first < beforeCheckpoint {
		t.Fatalf("restored counter at %d, below the %d it had before the checkpoint: not restored", first, beforeCheckpoint)
	}
	e.waitFor("restored counter to go on", 10*time.Second, func() bool { return e.readCount(id) > first+5 })
}

// TestCheckpointExitAndRestore: with Exit the checkpoint stops the container
// (ctr cannot ask for that with a non-runc runtime, so the ttrpc client does);
// a container created from the images resumes the count. The container is a
// hand-made bundle on a running shim, its rootfs a bind mount.
func TestCheckpointExitAndRestore(t *testing.T) {
	e := setup(t)
	anchor := e.id("anchor")
	e.runDetached(anchor, "sleep", "1000")
	client, err := e.ctd.DialShim(anchor)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	id := e.id("ckexit")
	bundle, layer := e.handBundle(anchor, id, "sh", "-c", counter)
	opts, _ := anypb.New(&runcopts.Options{CriuPath: criuPath(t), SystemdCgroup: suite.driver.SystemdCgroup()})
	create := &task.CreateTaskRequest{
		Id: id, Bundle: bundle, Options: opts,
		Rootfs: []*types.Mount{{Type: "bind", Source: layer, Options: []string{"rbind", "rw"}}},
	}
	if _, err := client.Create(ctx, create); err != nil {
		t.Fatal(err)
	}
	defer func() {
		// A container left in the shim would keep it alive after the
		// anchor is gone: kill, wait for the exit, then delete.
		client.Kill(ctx, &task.KillRequest{Id: id, Signal: 9, All: true})
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		client.Wait(wctx, &task.WaitRequest{Id: id})
		cancel()
		if _, err := client.Delete(ctx, &task.DeleteRequest{Id: id}); err != nil && status.Code(err) != codes.NotFound {
			t.Errorf("cleanup: delete %s: %v", id, err)
		}
	}()
	started, err := client.Start(ctx, &task.StartRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	count := func() int {
		for try := 0; try < 10; try++ { // see readCount
			b, _ := os.ReadFile(filepath.Join(layer, "tmp", "count"))
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return n
			}
			time.Sleep(10 * time.Millisecond)
		}
		return -1
	}
	e.waitFor("counter to pass 20", 20*time.Second, func() bool { return count() > 20 })

	images := t.TempDir()
	ckOpts, _ := anypb.New(&runcopts.CheckpointOptions{Exit: true})
	if _, err := client.Checkpoint(ctx, &task.CheckpointTaskRequest{Id: id, Path: images, Options: ckOpts}); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := client.Wait(wctx, &task.WaitRequest{Id: id}); err != nil {
		t.Fatalf("container still running after checkpoint with exit: %v", err)
	}
	// The counter is the container's init: its exit is in, and the shim
	// (its reaper) has reaped it.
	if err := unix.Kill(int(started.GetPid()), 0); err != unix.ESRCH {
		t.Fatalf("counter %d after checkpoint with exit: kill 0: %v", started.GetPid(), err)
	}
	atCheckpoint := count()
	if _, err := client.Delete(ctx, &task.DeleteRequest{Id: id}); err != nil {
		t.Fatal(err)
	}

	create.Checkpoint = images
	if _, err := client.Create(ctx, create); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Start(ctx, &task.StartRequest{Id: id}); err != nil {
		t.Fatalf("restore: %v", err)
	}
	e.waitFor("restored counter to go on", 10*time.Second, func() bool { return count() > atCheckpoint+5 })
	st, err := client.State(ctx, &task.StateRequest{Id: id})
	if err != nil || st.GetStatus().String() != "RUNNING" {
		t.Fatalf("restored state %v %v", st.GetStatus(), err)
	}
}

// handBundle makes a bundle for a container the ttrpc client creates itself:
// the spec of a containerd-made container (anchor) with its own process,
// cgroup (in the form of the suite's cgroup driver) and an empty rootfs
// directory, and the busybox tree to mount there.
func (e *env) handBundle(anchor, id string, args ...string) (bundle, layer string) {
	e.t.Helper()
	data, err := os.ReadFile(filepath.Join(e.ctd.Bundle(anchor), "config.json"))
	if err != nil {
		e.t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		e.t.Fatal(err)
	}
	spec["process"].(map[string]any)["args"] = args
	cgroupsPath := "/" + e.ctd.Namespace + "/" + id
	if suite.driver == harness.Systemd {
		cgroupsPath = "system.slice:" + e.ctd.Namespace + ":" + id
	}
	spec["linux"].(map[string]any)["cgroupsPath"] = cgroupsPath
	spec["root"] = map[string]any{"path": "rootfs"}
	dir := e.t.TempDir()
	bundle = filepath.Join(dir, "bundle")
	layer = filepath.Join(dir, "layer")
	for _, d := range []string{bundle, layer} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			e.t.Fatal(err)
		}
	}
	if err := harness.ExtractBusybox(layer, suite.busybox); err != nil {
		e.t.Fatal(err)
	}
	out, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), out, 0o644); err != nil {
		e.t.Fatal(err)
	}
	return bundle, layer
}
