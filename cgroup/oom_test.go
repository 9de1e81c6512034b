package cgroup

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/kmsg"
)

// fakeV2 makes a cgroup v2 group of plain files in a temporary directory,
// the hierarchy's root (the group's path in it is "/"+name): inotify
// reports changes to them as it does for cgroupfs.
func fakeV2(t *testing.T, name string) (Cgroup, string) {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, name)
	os.MkdirAll(dir, 0o755)
	for file, data := range map[string]string{
		"cgroup.controllers": "memory pids\n",
		"cgroup.events":      "populated 1\nfrozen 0\n",
		"cpu.stat":           "usage_usec 1\n",
		"memory.events":      "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h := NewHost()
	h.root = root
	cg, err := h.LoadPath(Path{V2: dir})
	if err != nil {
		t.Fatal(err)
	}
	return cg, dir
}

// setOOMKills has the kernel count n OOM kills in the fake group dir.
func setOOMKills(t *testing.T, dir string, n int) {
	t.Helper()
	data := fmt.Sprintf("low 0\nhigh 0\nmax %d\noom %d\noom_kill %d\n", n, n, n)
	if err := os.WriteFile(filepath.Join(dir, "memory.events"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// testWatcher is a watcher that logs to the test and reads a kernel log of
// the test's; at the end of the test its watches are closed and its
// goroutine must have ended.
func testWatcher(t *testing.T) *OOMWatcher {
	w, _ := testWatcherWithLog(t)
	return w
}

func testWatcherWithLog(t *testing.T) (*OOMWatcher, *fakeKernelLog) {
	klog := &fakeKernelLog{}
	w := NewOOMWatcher(slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})), klog)
	t.Cleanup(func() {
		w.mu.Lock()
		var left []*OOMWatch
		for _, h := range w.watches {
			left = append(left, h)
		}
		w.mu.Unlock()
		for _, h := range left {
			h.Close()
		}
		w.mu.Lock()
		stopped := w.stopped
		w.mu.Unlock()
		if stopped != nil {
			await(t, stopped, "the watcher's goroutine to end with nothing watched")
		}
	})
	return w, klog
}

// fakeKernelLog is a kernel log of OOM kills that the test writes: a mark
// is the number of kills written so far.
type fakeKernelLog struct {
	mu    sync.Mutex
	kills []kmsg.Kill
	// reads counts the calls of Kills; err fails every call.
	reads int
	err   error
}

func (l *fakeKernelLog) add(k kmsg.Kill) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.kills = append(l.kills, k)
}

func (l *fakeKernelLog) Mark() (kmsg.Mark, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return kmsg.Mark{Usec: uint64(len(l.kills))}, l.err
}

func (l *fakeKernelLog) KillsOf(m kmsg.Mark, pid int, memcg string) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads++
	if l.err != nil {
		return 0, l.err
	}
	return kmsg.CountKills(l.kills[m.Usec:], pid, memcg), nil
}

func (l *fakeKernelLog) readCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.reads
}

// await fails the test when ch is not closed (or sent on) in time: a bound
// on a hang, not a synchronisation.
func await[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func notice(ch chan struct{}) func() {
	return func() { ch <- struct{}{} }
}

func watchFD(h *OOMWatch) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		return -1
	}
	return h.n.fd()
}

func fdLink(fd int) string {
	link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	return link
}

// TestOOMWatchOfReusedFDSurvivesLateClose is the lost-OOM defect: the
// watcher ends a watch whose cgroup went away and closes its descriptor; a
// new container's watch gets the same descriptor number; the first
// container's Delete then closes its handle late. The new watch must stay
// whole and report its OOM kill.
func TestOOMWatchOfReusedFDSurvivesLateClose(t *testing.T) {
	w := testWatcher(t)
	cgA, dirA := fakeV2(t, "a")
	cgB, dirB := fakeV2(t, "b")
	cgC, dirC := fakeV2(t, "c")
	oomA, oomB, oomC := make(chan struct{}, 8), make(chan struct{}, 8), make(chan struct{}, 8)
	a, err := w.Watch(cgA, 0, notice(oomA))
	if err != nil {
		t.Fatal(err)
	}
	b, err := w.Watch(cgB, 0, notice(oomB))
	if err != nil {
		t.Fatal(err)
	}
	fdA := watchFD(a)

	// A's cgroup goes: the watcher ends A's watch and closes its descriptor.
	os.RemoveAll(dirA)
	await(t, a.ended, "the watch of a removed cgroup to end")
	if fdLink(fdA) != "" {
		t.Fatalf("descriptor %d of the ended watch still open (%s)", fdA, fdLink(fdA))
	}

	// Force C's notifier onto A's old number: take every free number
	// below it, so it is the lowest free one.
	var held []int
	for {
		fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fd == fdA {
			unix.Close(fd)
			break
		}
		held = append(held, fd)
		if fd > fdA {
			t.Fatalf("descriptor %d was taken by something else", fdA)
		}
	}
	c, err := w.Watch(cgC, 0, notice(oomC))
	for _, fd := range held {
		unix.Close(fd)
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := watchFD(c); got != fdA {
		t.Fatalf("new watch got descriptor %d, want the reused %d", got, fdA)
	}

	a.Close() // A's container is deleted: its late Close
	a.Close()

	select {
	case <-c.ended:
		t.Fatal("closing the old watch ended the new watch with its descriptor number")
	default:
	}
	if got := fdLink(fdA); got != "anon_inode:inotify" {
		t.Fatalf("new watch's descriptor %d is %q after the old watch's Close", fdA, got)
	}
	setOOMKills(t, dirC, 1)
	await(t, oomC, "the new container's OOM kill")
	setOOMKills(t, dirB, 1)
	await(t, oomB, "the other container's OOM kill")
	if len(oomA) != 0 {
		t.Errorf("%d OOM notices for the removed cgroup", len(oomA))
	}
	c.Close()
	b.Close()
}

// TestV2NotifierCountsOOMKills: an oom_kill counter going up in
// memory.events is as many kills; another change is none; a count read
// once cgroup.events says the cgroup is empty is final; the file going is
// the cgroup gone.
func TestV2NotifierCountsOOMKills(t *testing.T) {
	cg, dir := fakeV2(t, "g")
	n, err := cg.openNotifier()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(n.fd())
	if c := n.check(); c != (checked{}) {
		t.Fatalf("no change: %+v", c)
	}
	setOOMKills(t, dir, 2)
	if c := n.check(); c != (checked{kills: 2}) {
		t.Fatalf("oom_kill 0->2: %+v", c)
	}
	os.WriteFile(filepath.Join(dir, "cgroup.events"), []byte("populated 0\nfrozen 0\n"), 0o644)
	if c := n.check(); c != (checked{empty: true}) {
		t.Fatalf("cgroup emptied: %+v", c)
	}
	if st := n.state(); st.FD != n.fd() || st.OOMKills != 2 {
		t.Fatalf("state %+v", st)
	}
	os.RemoveAll(dir)
	if c := n.check(); !c.gone || c.kills != 0 {
		t.Fatalf("removed cgroup: %+v", c)
	}
}

// TestWatcherGoroutineOnlyWhileWatching: no goroutine while nothing is
// watched; a watch after idling starts one again, which works.
func TestWatcherGoroutineOnlyWhileWatching(t *testing.T) {
	w := testWatcher(t)
	if w.stopped != nil {
		t.Fatal("a goroutine before the first watch")
	}
	for round := range 2 {
		cg, dir := fakeV2(t, fmt.Sprint("g", round))
		oom := make(chan struct{}, 8)
		h, err := w.Watch(cg, 0, notice(oom))
		if err != nil {
			t.Fatal(err)
		}
		setOOMKills(t, dir, 1)
		await(t, oom, "an OOM kill")
		w.mu.Lock()
		stopped := w.stopped
		w.mu.Unlock()
		h.Close()
		await(t, stopped, "the goroutine to end once nothing is watched")
	}
}

func TestEpollIDUsesAll64Bits(t *testing.T) {
	for _, id := range []uint64{1, 1<<32 - 1, 1 << 32, 1<<40 + 5, ^uint64(0)} {
		var ev unix.EpollEvent
		setEpollID(&ev, id)
		if got := epollID(ev); got != id {
			t.Errorf("id %d came back %d", id, got)
		}
	}
}

// TestV1NotifierThroughRemoval: the v1 eventfd counts each OOM of the
// cgroup and then its removal; two or more from a removed cgroup hold an
// OOM, one alone may be either (Flush settles it from the kernel's log).
func TestV1NotifierThroughRemoval(t *testing.T) {
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(efd)
	control := filepath.Join(t.TempDir(), "memory.oom_control")
	os.WriteFile(control, []byte("oom_kill 0\n"), 0o644)
	n := &eventfdNotifier{efd: efd, control: control}
	signal := func(k uint64) {
		var b [8]byte
		b[0] = byte(k)
		if _, err := unix.Write(efd, b[:]); err != nil {
			t.Fatal(err)
		}
	}
	if c := n.check(); c != (checked{}) {
		t.Fatalf("nothing signalled: %+v", c)
	}
	signal(1)
	if c := n.check(); c != (checked{kills: 1}) {
		t.Fatalf("an OOM: %+v", c)
	}
	signal(2)
	os.Remove(control)
	if c := n.check(); c != (checked{kills: 1, gone: true}) {
		t.Fatalf("an OOM and the removal read together: %+v", c)
	}
	signal(1)
	if c := n.check(); c != (checked{gone: true}) {
		t.Fatalf("one signal from a removed cgroup: %+v", c)
	}
}
