package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/events"
	eventtypes "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/runctypes"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/reaper"
)

// testReaper reaps for the whole test binary, which is a subreaper so the
// fake runtime's container processes become its children.
var testReaper *reaper.Reaper

// fakeRuntime is the path of the fake OCI runtime built from testdata.
var fakeRuntime string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tether-shim-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fakeRuntime = filepath.Join(dir, "fakeruntime")
	if out, err := exec.Command("go", "build", "-o", fakeRuntime, "./testdata/fakeruntime").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build fake runtime: %v\n%s", err, out)
		os.Exit(1)
	}
	if err := reaper.SetSubreaper(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	testReaper = reaper.New()
	runc.Monitor = testReaper
	ctx, cancel := context.WithCancel(context.Background())
	go testReaper.Run(ctx)
	code := m.Run()
	cancel()
	os.RemoveAll(dir)
	os.Exit(code)
}

// recorder is a publisher that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []recorded
}

type recorded struct {
	topic string
	msg   proto.Message
}

func (r *recorder) Publish(topic string, ev proto.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, recorded{topic, ev})
}

func (r *recorder) all() []recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]recorded(nil), r.events...)
}

// topics lists the topics of events about container id (and exec, if set).
func (r *recorder) topics(id string) []string {
	var out []string
	for _, e := range r.all() {
		if eventContainer(e.msg) == id {
			out = append(out, e.topic)
		}
	}
	return out
}

func eventContainer(m proto.Message) string {
	type withContainer interface{ GetContainerId() string }
	if c, ok := m.(withContainer); ok {
		return c.GetContainerId()
	}
	return ""
}

// testEnv is the shared part of a test shim, publishing to ev.
func testEnv(ns string, ev Publisher) Env {
	log := slog.Default()
	return Env{Namespace: ns, Reaper: testReaper, Events: ev, Cgroups: cgroup.NewHost(), OOM: cgroup.NewOOMWatcher(log), Log: log}
}

type fixture struct {
	t      *testing.T
	svc    *Service
	events *recorder
	dir    string
	root   string // the fake runtime's state root
	ctx    context.Context
}

func newFixture(t *testing.T) *fixture {
	dir := t.TempDir()
	ev := &recorder{}
	f := &fixture{
		t:      t,
		events: ev,
		dir:    dir,
		root:   filepath.Join(dir, "runtime"),
		ctx:    context.Background(),
	}
	f.svc = NewService(Config{Env: testEnv("test", ev), Version: "test", Shutdown: func() {}})
	return f
}

// options points the shim at the fake runtime.
func (f *fixture) options() *anypb.Any {
	a, err := anypb.New(&runcopts.Options{BinaryName: fakeRuntime, Root: f.root})
	if err != nil {
		f.t.Fatal(err)
	}
	return a
}

// bundle writes a bundle whose process runs args; ownPidNS adds a pid namespace.
func (f *fixture) bundle(id string, ownPidNS bool, args ...string) string {
	b := filepath.Join(f.dir, "bundles", id)
	if err := os.MkdirAll(b, 0o700); err != nil {
		f.t.Fatal(err)
	}
	spec := map[string]any{"process": map[string]any{"args": args, "terminal": false}}
	if ownPidNS {
		spec["linux"] = map[string]any{"namespaces": []map[string]string{{"type": "pid"}}}
	}
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(b, "config.json"), data, 0o600); err != nil {
		f.t.Fatal(err)
	}
	return b
}

// output is a client-side reader of a stdio fifo, as ctr would hold.
type output struct {
	path string
	done chan string
}

func (f *fixture) output(name string) *output {
	path := filepath.Join(f.dir, name)
	o := &output{path: path, done: make(chan string, 1)}
	r, err := fifo.OpenFifo(f.ctx, path, unix.O_RDONLY|unix.O_CREAT|unix.O_NONBLOCK, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		o.done <- string(b)
	}()
	f.t.Cleanup(func() { r.Close() })
	return o
}

func (o *output) text(t *testing.T) string {
	t.Helper()
	select {
	case s := <-o.done:
		return s
	case <-time.After(20 * time.Second):
		t.Fatalf("no EOF on %s", o.path)
		return ""
	}
}

func (f *fixture) create(id string, ownPidNS bool, args ...string) *task.CreateTaskResponse {
	f.t.Helper()
	resp, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: id, Bundle: f.bundle(id, ownPidNS, args...), Options: f.options()})
	if err != nil {
		f.t.Fatalf("create %s: %v", id, err)
	}
	return resp
}

func (f *fixture) start(id, execID string) {
	f.t.Helper()
	if _, err := f.svc.Start(f.ctx, &task.StartRequest{Id: id, ExecId: execID}); err != nil {
		f.t.Fatalf("start %s/%s: %v", id, execID, err)
	}
}

func (f *fixture) wait(id, execID string) uint32 {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(f.ctx, 30*time.Second)
	defer cancel()
	resp, err := f.svc.Wait(ctx, &task.WaitRequest{Id: id, ExecId: execID})
	if err != nil {
		f.t.Fatalf("wait %s/%s: %v", id, execID, err)
	}
	return resp.GetExitStatus()
}

func (f *fixture) exec(id, execID string, args ...string) error {
	spec, _ := json.Marshal(map[string]any{"args": args, "cwd": "/"})
	_, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{
		Id: id, ExecId: execID,
		Spec: &anypb.Any{TypeUrl: processSpecURL, Value: spec},
	})
	return err
}

// teardown kills and deletes id, whatever state it is in.
func (f *fixture) teardown(id string) {
	f.svc.Kill(f.ctx, &task.KillRequest{Id: id, Signal: 9, All: true})
	ctx, cancel := context.WithTimeout(f.ctx, 10*time.Second)
	defer cancel()
	if _, err := f.svc.Wait(ctx, &task.WaitRequest{Id: id}); status.Code(err) == codes.NotFound {
		return
	}
	if _, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: id}); err != nil && status.Code(err) != codes.NotFound {
		f.t.Errorf("could not delete %s: %v", id, err)
	}
}

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
	del, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "never"})
	if err != nil || del.GetExitStatus() != 137 {
		t.Fatalf("delete of created task: %v %v", del, err)
	}
	if topics := f.events.topics("never"); strings.Join(topics, " ") != events.TopicCreate+" "+events.TopicDelete {
		t.Fatalf("events %v", topics)
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
	if after := openFds(t); strings.Join(after, " ") != strings.Join(before, " ") {
		t.Fatalf("descriptors before %v, after %v", before, after)
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
	if f.svc.Containers() != 0 || len(f.events.topics("intruder")) != 0 {
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

// openFds lists this process's descriptors as "fd=target", leaving out the
// listing's own descriptor and those whose target contains one of skip.
func openFds(t *testing.T, skip ...string) []string {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
next:
	for _, e := range entries {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // the directory read above, closed by now
		}
		for _, s := range skip {
			if strings.Contains(target, s) {
				continue next
			}
		}
		out = append(out, e.Name()+"="+target)
	}
	sort.Strings(out)
	return out
}

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
	if after := openFds(t, out.path); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("fds before %v\nafter %v", before, after)
	}
	if got := out.text(t); got != "" {
		t.Errorf("output %q", got)
	}
	if n := f.svc.Containers(); n != 0 {
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
func (f *fixture) stdinWriter(name string) (string, io.WriteCloser) {
	path := filepath.Join(f.dir, name)
	w, err := fifo.OpenFifo(f.ctx, path, unix.O_WRONLY|unix.O_CREAT|unix.O_NONBLOCK, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { w.Close() })
	return path, w
}

// TestDeleteExecWithStuckStdinDoesNotHang: the exec leaves a child that
// holds its stdin and never reads, and the client has written more than the
// pipe takes: Delete must still return (found by review: it hung).
func TestDeleteExecWithStuckStdinDoesNotHang(t *testing.T) {
	f := newFixture(t)
	f.create("stuck", true, "sleep", "100")
	f.start("stuck", "")
	defer f.teardown("stuck")
	in, w := f.stdinWriter("stuck-in")
	spec, _ := json.Marshal(map[string]any{"args": []string{"sh", "-c", "exec 3<&0; sleep 30 <&3 & exit 0"}, "cwd": "/"})
	if _, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{Id: "stuck", ExecId: "e", Stdin: in, Spec: &anypb.Any{TypeUrl: processSpecURL, Value: spec}}); err != nil {
		t.Fatal(err)
	}
	f.start("stuck", "e")
	// The client writes 16 KiB at a time; once the fifo and the stdin pipe
	// behind it (64 KiB each) are full, the copy between them is stuck.
	written := make(chan int, 64)
	go func() {
		for n := 0; n < 1<<20; n += 16 << 10 {
			if _, err := w.Write(make([]byte, 16<<10)); err != nil {
				return
			}
			written <- n + 16<<10
		}
	}()
	for n := 0; n < 128<<10; n = <-written {
	}
	if code := f.wait("stuck", "e"); code != 0 {
		t.Fatalf("exit %d", code)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.svc.Delete(f.ctx, &task.DeleteRequest{Id: "stuck", ExecId: "e"})
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Delete of the exec hung behind its stdin copy")
	}
}

// TestCloseIOBeforeExecStart: a CloseIO that comes before the exec starts
// still gives the exec EOF once the client is gone.
func TestCloseIOBeforeExecStart(t *testing.T) {
	f := newFixture(t)
	f.create("cio", true, "sleep", "100")
	f.start("cio", "")
	defer f.teardown("cio")
	in, w := f.stdinWriter("cio-in")
	spec, _ := json.Marshal(map[string]any{"args": []string{"cat"}, "cwd": "/"})
	if _, err := f.svc.Exec(f.ctx, &task.ExecProcessRequest{Id: "cio", ExecId: "cat", Stdin: in, Spec: &anypb.Any{TypeUrl: processSpecURL, Value: spec}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.CloseIO(f.ctx, &task.CloseIORequest{Id: "cio", ExecId: "cat", Stdin: true}); err != nil {
		t.Fatal(err)
	}
	f.start("cio", "cat")
	w.Close()
	if code := f.wait("cio", "cat"); code != 0 {
		t.Fatalf("cat exit %d", code)
	}
}
