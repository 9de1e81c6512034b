package shim_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/events"
	eventtypes "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/runctypes"
	"github.com/tether-shim/tether/proto/task"
)

// TestRuntimeFailureGivesItsMessageAndLeavesNothing: a failing runtime's own
// logged error reaches the caller; no fd, fifo reader, state or event remains.
func TestRuntimeFailureGivesItsMessageAndLeavesNothing(t *testing.T) {
	f := newFixture(t)
	bundle := f.bundle("fails", true, "sleep", "100")
	os.WriteFile(filepath.Join(bundle, "fail-create"), []byte("container_linux.go:42: boom: the config is cursed"), 0o600)
	out := f.output("fails-out")
	// The client's own fifo reader settles once the shim opens the fifo.
	before := openFds(t, out.path)
	_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "fails", Bundle: bundle, Stdout: out.path, Options: f.options()})
	if err == nil || !strings.Contains(err.Error(), "boom: the config is cursed") {
		t.Fatalf("create error %v, want the runtime's message", err)
	}
	if added := newFds(before, openFds(t, out.path)); len(added) > 0 {
		t.Errorf("descriptors left open: %v", added)
	}
	if got := out.text(t); got != "" {
		t.Errorf("output %q", got)
	}
	if n := f.containers.Len(); n != 0 {
		t.Errorf("%d containers registered after failed create", n)
	}
	if ev := f.events.all(); len(ev) != 0 {
		t.Errorf("events after failed create: %v", ev)
	}
	logs, _ := filepath.Glob(filepath.Join(bundle, ".runtime-*"))
	if len(logs) != 0 {
		t.Errorf("runtime logs left: %v", logs)
	}
	// The id is free again.
	os.Remove(filepath.Join(bundle, "fail-create"))
	f.create("fails", true, "true")
	f.teardown("fails")
}

func TestRequestErrorsHaveTheirCodes(t *testing.T) {
	f := newFixture(t)
	f.create("ok", true, "sleep", "100")
	f.start("ok", "")
	defer f.teardown("ok")
	f.create("done", true, "true")
	f.start("done", "")
	f.wait("done", "")
	defer f.teardown("done")
	if err := f.exec("ok", "dup", "sleep", "100"); err != nil {
		t.Fatal(err)
	}
	notJSON := f.bundle("notjson", true, "true")
	os.WriteFile(filepath.Join(notJSON, "config.json"), []byte("{not json"), 0o600)
	badOpts, _ := anypb.New(&task.StateRequest{})
	missingRuntime, _ := anypb.New(&runcopts.Options{BinaryName: "/nonexistent/runc"})

	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"create empty id", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Bundle: f.bundle("x", true, "true")})
			return err
		}, codes.InvalidArgument},
		{"create id with slash", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "a/b", Bundle: f.bundle("x", true, "true")})
			return err
		}, codes.InvalidArgument},
		{"create id with dotdot", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "..", Bundle: f.bundle("x", true, "true")})
			return err
		}, codes.InvalidArgument},
		{"create over-long id", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: strings.Repeat("a", 77), Bundle: f.bundle("x", true, "true")})
			return err
		}, codes.InvalidArgument},
		{"create duplicate", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "ok", Bundle: f.bundle("ok2", true, "true"), Options: f.options()})
			return err
		}, codes.AlreadyExists},
		{"create missing bundle", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "nob", Bundle: "/nonexistent/bundle", Options: f.options()})
			return err
		}, codes.InvalidArgument},
		{"create relative bundle", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "rel", Bundle: "bundles/x", Options: f.options()})
			return err
		}, codes.InvalidArgument},
		{"create config not JSON", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "notjson", Bundle: notJSON, Options: f.options()})
			return err
		}, codes.InvalidArgument},
		{"create unknown options type", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "opts", Bundle: f.bundle("opts", true, "true"), Options: badOpts})
			return err
		}, codes.InvalidArgument},
		{"create missing runtime binary", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "nort", Bundle: f.bundle("nort", true, "true"), Options: missingRuntime})
			return err
		}, codes.FailedPrecondition},
		{"create missing stdout fifo", func() error {
			_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "nofifo", Bundle: f.bundle("nofifo", true, "true"), Stdout: "/nonexistent/fifo", Options: f.options()})
			return err
		}, codes.InvalidArgument},
		{"state unknown container", func() error {
			_, err := f.svc.State(f.ctx, &task.StateRequest{Id: "nope"})
			return err
		}, codes.NotFound},
		{"state bad id", func() error {
			_, err := f.svc.State(f.ctx, &task.StateRequest{Id: "../etc"})
			return err
		}, codes.InvalidArgument},
		{"state unknown exec", func() error {
			_, err := f.svc.State(f.ctx, &task.StateRequest{Id: "ok", ExecId: "nope"})
			return err
		}, codes.NotFound},
		{"exec duplicate id", func() error { return f.exec("ok", "dup", "true") }, codes.AlreadyExists},
		{"exec bad id", func() error { return f.exec("ok", "a b", "true") }, codes.InvalidArgument},
		{"exec into unknown container", func() error { return f.exec("nope", "e", "true") }, codes.NotFound},
		{"exec into stopped container", func() error { return f.exec("done", "e", "true") }, codes.FailedPrecondition},
		{"exec without spec", func() error {
			_, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{Id: "ok", ExecId: "nospec"})
			return err
		}, codes.InvalidArgument},
		{"exec spec not JSON", func() error {
			_, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{Id: "ok", ExecId: "badspec", Spec: &anypb.Any{TypeUrl: processSpecURL, Value: []byte("{")}})
			return err
		}, codes.InvalidArgument},
		{"start unknown exec", func() error {
			_, err := f.svc.Start(f.ctx, &task.StartRequest{Id: "ok", ExecId: "nope"})
			return err
		}, codes.NotFound},
		{"start running init", func() error {
			_, err := f.svc.Start(f.ctx, &task.StartRequest{Id: "ok"})
			return err
		}, codes.FailedPrecondition},
		{"kill signal 0", func() error {
			_, err := f.svc.Kill(f.ctx, &task.KillRequest{Id: "ok", Signal: 0})
			return err
		}, codes.InvalidArgument},
		{"kill huge signal", func() error {
			_, err := f.svc.Kill(f.ctx, &task.KillRequest{Id: "ok", Signal: 1 << 31})
			return err
		}, codes.InvalidArgument},
		{"kill stopped init", func() error {
			_, err := f.svc.Kill(f.ctx, &task.KillRequest{Id: "done", Signal: 9})
			return err
		}, codes.NotFound},
		{"kill unknown container", func() error {
			_, err := f.svc.Kill(f.ctx, &task.KillRequest{Id: "nope", Signal: 9})
			return err
		}, codes.NotFound},
		{"delete running init", func() error {
			_, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "ok"})
			return err
		}, codes.FailedPrecondition},
		{"delete unknown exec", func() error {
			_, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "ok", ExecId: "nope"})
			return err
		}, codes.NotFound},
		{"wait unknown container", func() error {
			_, err := f.svc.Wait(f.ctx, &task.WaitRequest{Id: "nope"})
			return err
		}, codes.NotFound},
		{"resize non-terminal (ignored, as containerd's runc shim does)", func() error {
			_, err := f.svc.ResizePty(f.ctx, &task.ResizePtyRequest{Id: "ok", Width: 80, Height: 24})
			return err
		}, codes.OK},
		{"resize stopped init", func() error {
			_, err := f.svc.ResizePty(f.ctx, &task.ResizePtyRequest{Id: "done", Width: 80, Height: 24})
			return err
		}, codes.FailedPrecondition},
		{"pause stopped container", func() error {
			_, err := f.svc.Pause(f.ctx, &task.PauseRequest{Id: "done"})
			return err
		}, codes.FailedPrecondition},
		{"resume running container", func() error {
			_, err := f.svc.Resume(f.ctx, &task.ResumeRequest{Id: "ok"})
			return err
		}, codes.FailedPrecondition},
		{"update without resources", func() error {
			_, err := f.svc.Update(f.ctx, &task.UpdateTaskRequest{Id: "ok"})
			return err
		}, codes.InvalidArgument},
		{"update with resources of another type", func() error {
			_, err := f.svc.Update(f.ctx, &task.UpdateTaskRequest{Id: "ok", Resources: &anypb.Any{TypeUrl: processSpecURL, Value: []byte("{}")}})
			return err
		}, codes.InvalidArgument},
	}
	for _, c := range cases {
		if got := status.Code(c.call()); got != c.want {
			t.Errorf("%s: code %v, want %v", c.name, got, c.want)
		}
	}
	// None of it touched the running container.
	st, err := f.svc.State(f.ctx, &task.StateRequest{Id: "ok"})
	if err != nil || st.GetStatus().String() != "RUNNING" {
		t.Fatalf("running container after bad requests: %v %v", st.GetStatus(), err)
	}
}

func TestWaitHonoursCancellation(t *testing.T) {
	f := newFixture(t)
	f.create("w", true, "sleep", "100")
	f.start("w", "")
	defer f.teardown("w")
	ctx, cancel := context.WithTimeout(f.ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := f.svc.Wait(ctx, &task.WaitRequest{Id: "w"}); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("wait: %v, want DeadlineExceeded", err)
	}
}

// TestRuntimeOptionsReachTheRuntime: the runc options become the runtime's
// command-line flags.
func TestRuntimeOptionsReachTheRuntime(t *testing.T) {
	f := newFixture(t)
	opts, _ := anypb.New(&runcopts.Options{BinaryName: fakeRuntime, Root: f.root, NoPivotRoot: true, NoNewKeyring: true, SystemdCgroup: true})
	if _, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "flags", Bundle: f.bundle("flags", true, "true"), Options: opts}); err != nil {
		t.Fatal(err)
	}
	defer f.teardown("flags")
	calls, err := os.ReadFile(filepath.Join(f.root, "test", "calls.log"))
	if err != nil {
		t.Fatal(err)
	}
	create := ""
	for _, line := range strings.Split(string(calls), "\n") {
		if strings.Contains(line, " create ") {
			create = line
		}
	}
	for _, flag := range []string{"--root " + filepath.Join(f.root, "test"), "--systemd-cgroup", "--log-format json", "--no-pivot", "--no-new-keyring"} {
		if !strings.Contains(create, flag) {
			t.Errorf("create call %q lacks %q", create, flag)
		}
	}
}

// TestCheckpointOptionsReachTheRuntime: containerd's CheckpointOptions become
// the runtime's checkpoint flags, and Exit decides --leave-running.
func TestCheckpointOptionsReachTheRuntime(t *testing.T) {
	f := newFixture(t)
	f.create("ck", true, "sleep", "100")
	f.start("ck", "")
	defer f.teardown("ck")
	images, work := filepath.Join(f.dir, "images"), filepath.Join(f.dir, "work")
	opts, _ := anypb.New(&runcopts.CheckpointOptions{OpenTcp: true, ExternalUnixSockets: true, Terminal: true, FileLocks: true,
		EmptyNamespaces: []string{"network"}, CgroupsMode: "soft", WorkPath: work})
	if _, err := f.svc.Checkpoint(f.ctx, &task.CheckpointTaskRequest{Id: "ck", Path: images, Options: opts}); err != nil {
		t.Fatal(err)
	}
	calls, _ := os.ReadFile(filepath.Join(f.root, "test", "calls.log"))
	var line string
	for _, l := range strings.Split(string(calls), "\n") {
		if strings.Contains(l, " checkpoint ") {
			line = l
		}
	}
	for _, flag := range []string{"--image-path " + images, "--work-path " + work, "--tcp-established", "--ext-unix-sk",
		"--shell-job", "--file-locks", "--empty-ns network", "--manage-cgroups-mode soft", "--leave-running"} {
		if !strings.Contains(line, flag) {
			t.Errorf("checkpoint call %q lacks %q", line, flag)
		}
	}
	var checkpointed bool
	for _, ev := range f.events.all() {
		if m, ok := ev.msg.(*eventtypes.TaskCheckpointed); ok && m.GetContainerId() == "ck" && m.GetCheckpoint() == images {
			checkpointed = true
		}
	}
	if !checkpointed {
		t.Error("no TaskCheckpointed event")
	}
	// Exit: no --leave-running, and the container stops.
	exit, _ := anypb.New(&runcopts.CheckpointOptions{Exit: true})
	if _, err := f.svc.Checkpoint(f.ctx, &task.CheckpointTaskRequest{Id: "ck", Path: images, Options: exit}); err != nil {
		t.Fatal(err)
	}
	if code := f.wait("ck", ""); code != 137 {
		t.Fatalf("exit after checkpoint with exit: %d", code)
	}
	// containerd 1.x's client sends the v1 linux runtime's options to
	// runtimes not named io.containerd.runc*: the same flags reach the runtime.
	f.create("ck1", true, "sleep", "100")
	f.start("ck1", "")
	defer f.teardown("ck1")
	legacy, _ := anypb.New(&runctypes.CheckpointOptions{OpenTcp: true, FileLocks: true, WorkPath: work, ImagePath: images + "-legacy"})
	if _, err := f.svc.Checkpoint(f.ctx, &task.CheckpointTaskRequest{Id: "ck1", Options: legacy}); err != nil {
		t.Fatal(err)
	}
	calls, _ = os.ReadFile(filepath.Join(f.root, "test", "calls.log"))
	if !strings.Contains(string(calls), "--image-path "+images+"-legacy --work-path "+work) {
		t.Errorf("legacy checkpoint options did not reach the runtime:\n%s", calls)
	}
	bad, _ := anypb.New(&runcopts.Options{})
	if _, err := f.svc.Checkpoint(f.ctx, &task.CheckpointTaskRequest{Id: "ck", Path: images, Options: bad}); status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("checkpoint with wrong options type: %v", err)
	}
}

func TestPauseResumeEvents(t *testing.T) {
	f := newFixture(t)
	f.create("pr", true, "sleep", "100")
	f.start("pr", "")
	defer f.teardown("pr")
	if _, err := f.svc.Pause(f.ctx, &task.PauseRequest{Id: "pr"}); err != nil {
		t.Fatal(err)
	}
	st, _ := f.svc.State(f.ctx, &task.StateRequest{Id: "pr"})
	if st.GetStatus().String() != "PAUSED" {
		t.Fatalf("state %v", st.GetStatus())
	}
	if err := f.exec("pr", "x", "true"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("exec into paused container: %v", err)
	}
	if _, err := f.svc.Resume(f.ctx, &task.ResumeRequest{Id: "pr"}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(f.events.topics("pr"), " ")
	if got != strings.Join([]string{events.TopicCreate, events.TopicStart, events.TopicPaused, events.TopicResumed}, " ") {
		t.Fatalf("events %s", got)
	}
}

// stdinWriter opens a client writer on a new stdin fifo.
