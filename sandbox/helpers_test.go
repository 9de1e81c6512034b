package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/reaper"
)

// startReaper runs a reaper for the test: the holders are its children.
// A test runs one reaper: two would take each other's children's exits.
func startReaper(t *testing.T) *reaper.Reaper {
	t.Helper()
	r := reaper.New()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return r
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("namespaces, mounts and holders: root only")
	}
}

func procFile(pid int, name string) string {
	data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), name))
	return string(data)
}

func nsOf(pid int, ns string) string {
	link, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", ns))
	return link
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

// throwaway runs fn on a thread of its own, thrown away afterwards, never
// the main thread (which the Go runtime never ends: a test that moved it
// into a namespace would keep it there).
func throwaway(fn func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			throwaway(fn) // held here, the main thread is not the next one's
			runtime.UnlockOSThread()
			return
		}
		fn()
	}()
	<-done
}

// nodeNS is this process's namespace of kind, as its threads that never
// moved are in it.
func nodeNS(kind string) string {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	link, _ := os.Readlink("/proc/thread-self/ns/" + kind)
	return link
}

// newNetNS makes a network namespace for the test, held by a thread of
// its own until the test ends, and returns its path.
func newNetNS(t *testing.T) string {
	t.Helper()
	path := make(chan string)
	end := make(chan struct{})
	go throwaway(func() {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			close(path)
			return
		}
		path <- filepath.Join("/proc", strconv.Itoa(os.Getpid()), "task", strconv.Itoa(unix.Gettid()), "ns", "net")
		<-end
	})
	p, ok := <-path
	if !ok {
		t.FailNow()
	}
	t.Cleanup(func() { close(end) })
	return p
}

// inNS runs fn on a thread that has joined the namespace of kind at path;
// the thread is thrown away afterwards.
func inNS(t *testing.T, path string, kind int, fn func()) {
	t.Helper()
	throwaway(func() {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, kind); err != nil {
			t.Errorf("join %s: %v", path, err)
			return
		}
		fn()
	})
}

// childrenNamed are this process's children (of any of its threads: the
// parent a process's status names is its parent's thread group) whose
// comm is name, alive or not yet reaped.
func childrenNamed(name string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st := procFile(pid, "stat")
		i := strings.LastIndexByte(st, ')')
		if i < 0 || !strings.HasPrefix(st, e.Name()+" ("+name+")") {
			continue
		}
		if f := strings.Fields(st[i+1:]); len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			out = append(out, pid)
		}
	}
	return out
}

// containerdLayout makes a shim sandbox's bundle where containerd 2.x puts
// one under root and state, and returns it (podfiles finds the pod's
// files from there).
func containerdLayout(t *testing.T, root, state, id string) string {
	t.Helper()
	const controller = "io.containerd.sandbox.controller.v1.shim"
	work := filepath.Join(root, controller, "k8s.io", id)
	bundle := filepath.Join(state, controller, "k8s.io", id)
	for _, d := range []string{work, bundle} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(work, filepath.Join(bundle, "work")); err != nil {
		t.Fatal(err)
	}
	return bundle
}
