package shim_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/events"
	eventtypes "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/task"
)

func TestLifecycleOutputExitAndEventOrder(t *testing.T) {
	f := newFixture(t)
	out, errOut := f.output("out"), f.output("err")
	resp, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{
		Id: "c1", Bundle: f.bundle("c1", true, "sh", "-c", "echo to-out; echo to-err >&2; exit 3"),
		Stdout: out.path, Stderr: errOut.path, Options: f.options(),
	})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.svc.State(f.ctx, &task.StateRequest{Id: "c1"})
	if st.GetStatus().String() != "CREATED" || st.GetPid() != resp.GetPid() {
		t.Fatalf("state after create: %v pid %d, want CREATED pid %d", st.GetStatus(), st.GetPid(), resp.GetPid())
	}
	f.start("c1", "")
	if code := f.wait("c1", ""); code != 3 {
		t.Fatalf("exit status %d, want 3", code)
	}
	if got := out.text(t); got != "to-out\n" {
		t.Errorf("stdout %q", got)
	}
	if got := errOut.text(t); got != "to-err\n" {
		t.Errorf("stderr %q", got)
	}
	st, _ = f.svc.State(f.ctx, &task.StateRequest{Id: "c1"})
	if st.GetStatus().String() != "STOPPED" || st.GetExitStatus() != 3 {
		t.Errorf("state after exit: %v %d", st.GetStatus(), st.GetExitStatus())
	}
	del, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "c1"})
	if err != nil || del.GetExitStatus() != 3 || del.GetPid() != resp.GetPid() {
		t.Fatalf("delete: %v %v", del, err)
	}
	want := []string{events.TopicCreate, events.TopicStart, events.TopicExit, events.TopicDelete}
	if got := f.events.topics("c1"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events %v, want %v", got, want)
	}
	if _, err := f.svc.State(f.ctx, &task.StateRequest{Id: "c1"}); status.Code(err) != codes.NotFound {
		t.Fatalf("state after delete: %v", err)
	}
}

// TestExecStormEveryExitToItsExec: many execs, most exiting before the shim
// has read their pid file, each must get its own exit code, and each exec's
// events must come in order.
func TestExecStormEveryExitToItsExec(t *testing.T) {
	f := newFixture(t)
	f.create("storm", true, "sleep", "100")
	f.start("storm", "")
	defer f.teardown("storm")

	const execs, parallel = 300, 30
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := 0; i < execs; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			id := fmt.Sprintf("e%d", i)
			want := uint32(i % 250)
			if err := f.exec("storm", id, "sh", "-c", fmt.Sprintf("exit %d", want)); err != nil {
				t.Errorf("exec %s: %v", id, err)
				return
			}
			if _, err := f.svc.Start(f.ctx, &task.StartRequest{Id: "storm", ExecId: id}); err != nil {
				t.Errorf("start %s: %v", id, err)
				return
			}
			if got := f.wait("storm", id); got != want {
				t.Errorf("exec %s: exit %d, want %d", id, got, want)
			}
			if _, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "storm", ExecId: id}); err != nil {
				t.Errorf("delete %s: %v", id, err)
			}
		}(i)
	}
	wg.Wait()

	// Per exec: added, started, exit — exactly once each, in that order.
	seen := map[string][]string{}
	for _, e := range f.events.all() {
		switch m := e.msg.(type) {
		case *eventtypes.TaskExecAdded:
			seen[m.GetExecId()] = append(seen[m.GetExecId()], "added")
		case *eventtypes.TaskExecStarted:
			seen[m.GetExecId()] = append(seen[m.GetExecId()], "started")
		case *eventtypes.TaskExit:
			if m.GetId() != "storm" {
				seen[m.GetId()] = append(seen[m.GetId()], "exit")
			}
		}
	}
	if len(seen) != execs {
		t.Fatalf("events for %d execs, want %d", len(seen), execs)
	}
	for id, s := range seen {
		if strings.Join(s, ",") != "added,started,exit" {
			t.Errorf("exec %s events %v", id, s)
		}
	}
}

// TestInitExitComesAfterExecExits: the init dies while an exec still runs
// (no shared pid namespace teardown here); its exit must be held back until
// the exec's exit is published.
func TestInitExitComesAfterExecExits(t *testing.T) {
	f := newFixture(t)
	f.create("order", true, "sleep", "100")
	f.start("order", "")
	if err := f.exec("order", "slow", "sleep", "0.5"); err != nil {
		t.Fatal(err)
	}
	f.start("order", "slow")
	if err := f.exec("order", "late", "true"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Kill(f.ctx, &task.KillRequest{Id: "order", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if code := f.wait("order", ""); code != 137 {
		t.Fatalf("init exit %d, want 137", code)
	}
	var exits []string
	for _, e := range f.events.all() {
		if m, ok := e.msg.(*eventtypes.TaskExit); ok && m.GetContainerId() == "order" {
			exits = append(exits, m.GetId())
		}
	}
	if strings.Join(exits, ",") != "slow,order" {
		t.Fatalf("exit events in order %v, want the exec's first", exits)
	}
	// No exec may start once the init has exited, nor be added.
	if err := f.exec("order", "later", "true"); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("exec after init exit: %v, want FailedPrecondition", err)
	}
	if _, err := f.svc.Start(f.ctx, &task.StartRequest{Id: "order", ExecId: "late"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("exec start after init exit: %v, want FailedPrecondition", err)
	}
	f.teardown("order")
}

// TestSharedPidNamespaceKillsLeftoversOnInitExit: without a pid namespace of
// its own, the container's execs are killed when the init exits.
func TestSharedPidNamespaceKillsLeftoversOnInitExit(t *testing.T) {
	f := newFixture(t)
	f.create("shared", false, "sleep", "100")
	f.start("shared", "")
	if err := f.exec("shared", "long", "sleep", "100"); err != nil {
		t.Fatal(err)
	}
	f.start("shared", "long")
	f.svc.Kill(f.ctx, &task.KillRequest{Id: "shared", Signal: 15})
	if code := f.wait("shared", "long"); code != 137 {
		t.Fatalf("exec exit %d, want 137 (killed with the init)", code)
	}
	if code := f.wait("shared", ""); code != 143 {
		t.Fatalf("init exit %d, want 143", code)
	}
	f.teardown("shared")
}

// TestSIGKILLOfSharedPidInitKillsAllAtOnce: a SIGKILL to the init of a
// container without a pid namespace reaches all its processes in the same
// runtime call, so none outlives the request (containerd's
// TestContainerKillInitPidHost looks for them right after).
func TestSIGKILLOfSharedPidInitKillsAllAtOnce(t *testing.T) {
	f := newFixture(t)
	f.create("hostpid", false, "sleep", "100")
	f.start("hostpid", "")
	defer f.teardown("hostpid")
	if _, err := f.svc.Kill(f.ctx, &task.KillRequest{Id: "hostpid", Signal: 9}); err != nil {
		t.Fatal(err)
	}
	calls, _ := os.ReadFile(filepath.Join(f.root, "test", "calls.log"))
	if !strings.Contains(string(calls), "kill --all hostpid 9\n") {
		t.Fatalf("SIGKILL of a shared-pid init was not sent to all:\n%s", calls)
	}
}

func TestDeleteCreatedReportsKilled(t *testing.T) {
	f := newFixture(t)
	f.create("never", true, "sleep", "100")
	c, err := f.containers.Get("never")
	if err != nil {
		t.Fatal(err)
	}
	del, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "never"})
	if err != nil || del.GetExitStatus() != 137 {
		t.Fatalf("delete of created task: %v %v", del, err)
	}
	if topics := f.events.topics("never"); strings.Join(topics, " ") != events.TopicCreate+" "+events.TopicDelete {
		t.Fatalf("events %v", topics)
	}
	// Its exit, reaped after the delete, writes nothing into the bundle
	// containerd is removing.
	for deadline := time.Now().Add(10 * time.Second); !c.InitReaped(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the killed init was never reaped")
		}
	}
	if err := f.containers.WaitExits(f.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bundle.ExitFile(c.Bundle, "")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("exit file written after the delete: %v", err)
	}
}

// TestCreateThatCannotAdoptItsInitLeavesNothing: a runtime that creates the
// container but leaves no readable pid: Create fails, the runtime's
// container is deleted, and no TaskCreate announces what failed; no
// descriptor stays open.
func TestCreateThatCannotAdoptItsInitLeavesNothing(t *testing.T) {
	f := newFixture(t)
	before := openFds(t)
	bundle := f.bundle("nopid", true, "sleep", "100")
	os.WriteFile(filepath.Join(bundle, "garble-pid"), nil, 0o600)
	_, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: "nopid", Bundle: bundle, Options: f.options()})
	if err == nil || !strings.Contains(err.Error(), "read init pid") {
		t.Fatalf("create with an unreadable pid file: %v", err)
	}
	if topics := f.events.topics("nopid"); len(topics) != 0 {
		t.Fatalf("events for a failed create: %v", topics)
	}
	calls, _ := os.ReadFile(filepath.Join(f.root, "test", "calls.log"))
	if !strings.Contains(string(calls), "delete --force nopid") {
		t.Fatalf("the runtime's container was not deleted:\n%s", calls)
	}
	if added := newFds(before, openFds(t)); len(added) > 0 {
		t.Fatalf("descriptors left open: %v", added)
	}
}

// TestExecRacingDeleteIsNeverAnnouncedAfterIt: an Exec that races the
// container's Delete is either registered and announced before TaskDelete,
// or refused; never announced after it.
func TestExecRacingDeleteIsNeverAnnouncedAfterIt(t *testing.T) {
	f := newFixture(t)
	for i := range 20 {
		id := fmt.Sprintf("race%d", i)
		f.create(id, true, "sleep", "100") // created: it takes execs until deleted
		done := make(chan struct{})
		go func() {
			defer close(done)
			f.exec(id, "late", "true")
		}()
		if _, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: id}); err != nil {
			t.Fatal(err)
		}
		<-done
		topics := f.events.topics(id)
		deleted := false
		for _, topic := range topics {
			if topic == events.TopicDelete {
				deleted = true
			} else if deleted {
				t.Fatalf("%s announced after TaskDelete: %v", topic, topics)
			}
		}
	}
}

// TestCreateForAnotherNamespaceIsRefused: a shim serves one namespace; a
// Create that containerd sends for another (a group annotation that led it
// here) is refused before anything is made.
func TestCreateForAnotherNamespaceIsRefused(t *testing.T) {
	f := newFixture(t)
	ctx := ttrpc.WithMetadata(f.ctx, ttrpc.MD{"containerd-namespace-ttrpc": []string{"tenant-b"}})
	_, err := f.svc.Create(ctx, &task.CreateTaskRequest{Id: "intruder", Bundle: f.bundle("intruder", true, "true"), Options: f.options()})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "tenant-b") {
		t.Fatalf("create for another namespace: %v", err)
	}
	if f.containers.Len() != 0 || len(f.events.topics("intruder")) != 0 {
		t.Fatal("something was created")
	}
	own := ttrpc.WithMetadata(f.ctx, ttrpc.MD{"containerd-namespace-ttrpc": []string{"test"}})
	if _, err := f.svc.Create(own, &task.CreateTaskRequest{Id: "own", Bundle: f.bundle("own", true, "true"), Options: f.options()}); err != nil {
		t.Fatalf("create for the shim's own namespace: %v", err)
	}
	f.teardown("own")
}

// TestDeleteUnstartedExecReportsZero: an exec that never started never had a
// process; its delete reports 0, as containerd's runc shim does
// (containerd's TestDeleteContainerExecCreated).
func TestDeleteUnstartedExecReportsZero(t *testing.T) {
	f := newFixture(t)
	f.create("hasexec", true, "sleep", "100")
	f.start("hasexec", "")
	defer f.teardown("hasexec")
	if err := f.exec("hasexec", "idle", "true"); err != nil {
		t.Fatal(err)
	}
	del, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "hasexec", ExecId: "idle"})
	if err != nil || del.GetExitStatus() != 0 {
		t.Fatalf("delete of a created exec: %v %v, want status 0", del, err)
	}
}
