package shim_test

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
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/kmsg"
	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim"
	"github.com/tether-shim/tether/taskapi"
)

// The core's tests drive it as containerd does, through the task API's
// edge (package taskapi), against a fake OCI runtime.

// processSpecURL is the type URL containerd gives an OCI process spec (JSON).
const processSpecURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

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
func testEnv(ns string, ev shim.Publisher) shim.Env {
	log := slog.Default()
	return shim.Env{Namespace: ns, Reaper: testReaper, Events: ev, Cgroups: cgroup.NewHost(), OOM: cgroup.NewOOMWatcher(log, kmsg.New()), Log: log}
}

type fixture struct {
	t          *testing.T
	containers *shim.Table
	svc        *taskapi.Service
	events     *recorder
	dir        string
	root       string // the fake runtime's state root
	ctx        context.Context
}

func newFixture(t *testing.T) *fixture { return newFixtureWith(t, nil) }

// newFixtureWith is a fixture whose shim's environment adjust changes.
func newFixtureWith(t *testing.T, adjust func(*shim.Env)) *fixture {
	dir := t.TempDir()
	ev := &recorder{}
	f := &fixture{
		t:      t,
		events: ev,
		dir:    dir,
		root:   filepath.Join(dir, "runtime"),
		ctx:    context.Background(),
	}
	env := testEnv("test", ev)
	if adjust != nil {
		adjust(&env)
	}
	f.containers = shim.NewTable(env)
	f.svc = taskapi.New(taskapi.Config{Containers: f.containers, Version: "test", Shutdown: func() {}})
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

// newFds lists the descriptors of after that were not in before: what a
// call left open. (Descriptors of earlier tests may close meanwhile.)
func newFds(before, after []string) []string {
	was := map[string]bool{}
	for _, fd := range before {
		was[fd] = true
	}
	var added []string
	for _, fd := range after {
		if !was[fd] {
			added = append(added, fd)
		}
	}
	return added
}
