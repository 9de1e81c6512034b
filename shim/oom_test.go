package shim_test

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/kmsg"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/shim"
)

// oomFixture is a fixture whose containers have cgroup v2 groups made of
// files: the fake runtime says, in a procfs of the test's, that each init
// is in the group "/ID" of a hierarchy at root, whose files the test
// writes as the kernel would; and the kernel's log of OOM kills is the
// test's too.
type oomFixture struct {
	*fixture
	root, proc string
	klog       *killLog
}

func newOOMFixture(t *testing.T) *oomFixture {
	root, proc := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("memory pids\n"), 0o644)
	klog := &killLog{}
	f := newFixtureWith(t, func(env *shim.Env) {
		env.Cgroups = cgroup.NewHostAt(root, proc)
		env.OOM = cgroup.NewOOMWatcher(slog.Default(), klog)
	})
	return &oomFixture{fixture: f, root: root, proc: proc, klog: klog}
}

// killLog is a kernel log of OOM kills the test writes, on a clock of its
// own: a mark is the time of the latest kill.
type killLog struct {
	mu    sync.Mutex
	clock uint64
	kills []loggedKill
}

type loggedKill struct {
	at   uint64
	kill kmsg.Kill
}

// add logs k now; addEarlier logs it before any mark.
func (l *killLog) add(k kmsg.Kill) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.clock++
	l.kills = append(l.kills, loggedKill{l.clock, k})
}

func (l *killLog) addEarlier(k kmsg.Kill) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kills = append(l.kills, loggedKill{0, k})
}

func (l *killLog) Mark() (kmsg.Mark, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return kmsg.Mark{Usec: l.clock}, nil
}

func (l *killLog) KillsOf(m kmsg.Mark, pid int, memcg string) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var kills []kmsg.Kill
	for _, k := range l.kills {
		if k.at > m.Usec {
			kills = append(kills, k.kill)
		}
	}
	return kmsg.CountKills(kills, pid, memcg), nil
}

// group makes id's cgroup. Its memory.events is a link to a file per
// count: the inotify watch is on the file it named when the watch began,
// so a count changed by moving the link is one the kernel never sent a
// notice of.
func (f *oomFixture) group(id string) string {
	dir := filepath.Join(f.root, id)
	os.MkdirAll(dir, 0o755)
	for file, data := range map[string]string{
		"cgroup.controllers": "memory pids\n",
		"cgroup.events":      "populated 1\nfrozen 0\n",
		"cpu.stat":           "usage_usec 1\n",
	} {
		os.WriteFile(filepath.Join(dir, file), []byte(data), 0o644)
	}
	f.count(dir, 0)
	return dir
}

// count has the kernel count n kills in dir's memory.events, without a
// notice.
func (f *oomFixture) count(dir string, n int) {
	name := fmt.Sprintf("events-%d", n)
	data := fmt.Sprintf("low 0\nhigh 0\nmax %d\noom %d\noom_kill %d\n", n, n, n)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
		f.t.Fatal(err)
	}
	link := filepath.Join(dir, "memory.events.new")
	os.Symlink(name, link)
	if err := os.Rename(link, filepath.Join(dir, "memory.events")); err != nil {
		f.t.Fatal(err)
	}
}

// oomAndExit checks that id's events hold exactly one TaskOOM, before its
// init's TaskExit.
func (f *oomFixture) oomAndExit(id string) {
	f.t.Helper()
	topics := f.events.topics(id)
	oom, exit := slices.Index(topics, "/tasks/oom"), slices.Index(topics, "/tasks/exit")
	if oom < 0 || exit < 0 || oom > exit || slices.Index(topics[oom+1:], "/tasks/oom") >= 0 {
		f.t.Fatalf("events %v: want one /tasks/oom before the /tasks/exit", topics)
	}
}

// TestOOMKillComesBeforeTheExit: the kernel counted the OOM kill of the
// init, which died of it, but its notice of memory.events had not come
// when the exit was handled (the kernel holds it back up to 10 ms after
// the notices of the charges that failed before it). The TaskOOM is
// published, once, before the TaskExit: containerd's CRI reports
// OOMKilled only then. (Before the exit path asked the watch, no TaskOOM
// at all.)
func TestOOMKillComesBeforeTheExit(t *testing.T) {
	f := newOOMFixture(t)
	id := "oom-late-notice"
	b := f.bundle(id, true, "sleep", "1000")
	os.WriteFile(filepath.Join(b, "fake-proc"), []byte(f.proc), 0o600)
	dir := f.group(id)
	if _, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: id, Bundle: b, Options: f.options()}); err != nil {
		t.Fatal(err)
	}
	defer f.teardown(id)
	f.start(id, "")
	f.count(dir, 1)
	f.svc.Kill(f.ctx, &task.KillRequest{Id: id, Signal: 9})
	if code := f.wait(id, ""); code != 137 {
		t.Fatalf("exit %d", code)
	}
	f.oomAndExit(id)
}

// TestOOMKillOfAScopeRemovedFirst: the init was OOM-killed and its cgroup
// removed (as systemd removes an emptied scope) before the shim read its
// count or handled its exit: the kernel's log reports the kill, and the
// TaskOOM is published before the TaskExit. (Before, no TaskOOM.)
func TestOOMKillOfAScopeRemovedFirst(t *testing.T) {
	f := newOOMFixture(t)
	id := "oom-scope-gone"
	b := f.bundle(id, true, "sleep", "1000")
	os.WriteFile(filepath.Join(b, "fake-proc"), []byte(f.proc), 0o600)
	dir := f.group(id)
	resp, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: id, Bundle: b, Options: f.options()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.teardown(id)
	f.start(id, "")
	f.klog.add(kmsg.Kill{Pid: int(resp.GetPid())})
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	f.svc.Kill(f.ctx, &task.KillRequest{Id: id, Signal: 9})
	if code := f.wait(id, ""); code != 137 {
		t.Fatalf("exit %d", code)
	}
	f.oomAndExit(id)
}

// TestNoOOMForAPlainKill: a SIGKILL that was no OOM kill, of a container
// whose scope went first, gives no TaskOOM, though the kernel's log holds
// an OOM kill of a process with the init's pid from before.
func TestNoOOMForAPlainKill(t *testing.T) {
	f := newOOMFixture(t)
	id := "plain-kill"
	b := f.bundle(id, true, "sleep", "1000")
	os.WriteFile(filepath.Join(b, "fake-proc"), []byte(f.proc), 0o600)
	dir := f.group(id)
	resp, err := f.svc.Create(f.ctx, &task.CreateTaskRequest{Id: id, Bundle: b, Options: f.options()})
	if err != nil {
		t.Fatal(err)
	}
	defer f.teardown(id)
	f.klog.addEarlier(kmsg.Kill{Pid: int(resp.GetPid())})
	f.start(id, "")
	os.RemoveAll(dir)
	f.svc.Kill(f.ctx, &task.KillRequest{Id: id, Signal: 9})
	f.wait(id, "")
	if topics := f.events.topics(id); slices.Contains(topics, "/tasks/oom") {
		t.Fatalf("events %v: an OOM for a plain kill", topics)
	}
}
