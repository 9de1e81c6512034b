package podns

import (
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("namespaces and mounts: root only")
	}
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

// nodeNS is the calling process's namespace of kind (as its threads that
// never moved are in).
func nodeNS(kind string) string {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	link, _ := os.Readlink("/proc/thread-self/ns/" + kind)
	return link
}

// in runs fn on a thread that has joined the namespace of kind at path;
// the thread is thrown away afterwards.
func in(t *testing.T, path string, kind int, fn func()) {
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

func read(path string) string {
	data, _ := os.ReadFile(path)
	return strings.TrimSpace(string(data))
}

// TestBoundNamespacesOutliveTheirThread: the pod's UTS and IPC namespaces
// are made on a thread that joined its network namespace, with the pod's
// hostname and sysctls (network and IPC) set there, and bound to files:
// no process or thread is left in them, yet they live on, as set up,
// until they are unbound.
func TestBoundNamespacesOutliveTheirThread(t *testing.T) {
	needRoot(t)
	netns := newNetNS(t)
	bundle := t.TempDir()
	m := For(bundle, true, true)
	s := Setup{NetNS: netns, UTS: true, IPC: true, Hostname: "pod-host",
		Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shmmni": "1234"}}
	thread := -1
	err := Enter(s, func() (err error) {
		// Polls readable once the thread has exited.
		if thread, err = unix.PidfdOpen(unix.Gettid(), unix.PIDFD_THREAD); err != nil {
			return err
		}
		return m.Bind()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(thread)
	n, err := unix.Poll([]unix.PollFd{{Fd: int32(thread), Events: unix.POLLIN}}, 20000)
	for err == unix.EINTR {
		n, err = unix.Poll([]unix.PollFd{{Fd: int32(thread), Events: unix.POLLIN}}, 20000)
	}
	if n != 1 {
		t.Fatalf("the thread that made the namespaces did not end: %v", err)
	}
	for _, path := range []string{m.UTS, m.IPC} {
		if filepath.Dir(path) != Dir(bundle) {
			t.Errorf("bound at %s, not in %s", path, Dir(bundle))
		}
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil || st.Type != unix.NSFS_MAGIC {
			t.Errorf("%s is not a namespace (%x, %v)", path, st.Type, err)
		}
	}
	self := nodeNS("uts")
	in(t, m.UTS, unix.CLONE_NEWUTS, func() {
		if now, _ := os.Readlink("/proc/thread-self/ns/uts"); now == self {
			t.Error("the pod's UTS namespace is the node's")
		}
		var u unix.Utsname
		unix.Uname(&u)
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "pod-host" {
			t.Errorf("pod hostname %q", got)
		}
	})
	in(t, m.IPC, unix.CLONE_NEWIPC, func() {
		if got := read("/proc/sys/kernel/shmmni"); got != "1234" {
			t.Errorf("pod IPC sysctl %q", got)
		}
	})
	in(t, netns, unix.CLONE_NEWNET, func() {
		if got := read("/proc/sys/net/ipv4/ip_unprivileged_port_start"); got != "80" {
			t.Errorf("pod network sysctl %q", got)
		}
	})
	if read("/proc/sys/kernel/shmmni") == "1234" && read("/proc/sys/net/ipv4/ip_unprivileged_port_start") == "80" {
		t.Error("the pod's sysctls reached the node")
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(Dir(bundle)); !os.IsNotExist(err) {
		t.Fatalf("%s left after unbinding: %v", Dir(bundle), err)
	}
	if err := m.Unmount(); err != nil {
		t.Fatalf("unbinding twice: %v", err)
	}
}

// TestOnlyWhatThePodHasOfItsOwn: a pod on the node's network with the
// node's IPC gets a UTS namespace only; the thread joins no network
// namespace, and nothing is bound for IPC.
func TestOnlyWhatThePodHasOfItsOwn(t *testing.T) {
	needRoot(t)
	bundle := t.TempDir()
	m := For(bundle, true, false)
	if m.IPC != "" {
		t.Fatalf("IPC bound at %q for a pod with the node's", m.IPC)
	}
	var net, ipc string
	err := Enter(Setup{UTS: true}, func() error {
		net, _ = os.Readlink("/proc/thread-self/ns/net")
		ipc, _ = os.Readlink("/proc/thread-self/ns/ipc")
		return m.Bind()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmount()
	if self := nodeNS("net"); net != self {
		t.Errorf("network namespace %s, the node's %s", net, self)
	}
	if self := nodeNS("ipc"); ipc != self {
		t.Errorf("IPC namespace %s, the node's %s", ipc, self)
	}
	if entries, _ := os.ReadDir(Dir(bundle)); len(entries) != 1 || entries[0].Name() != "uts" {
		t.Fatalf("bound: %v", entries)
	}
}

// TestSetupFailures: a sysctl that cannot be set, or a network namespace
// that is not there, is the setup's error, and then never runs; what a
// failed Bind made is gone.
func TestSetupFailures(t *testing.T) {
	needRoot(t)
	ran := false
	then := func() error { ran = true; return nil }
	err := Enter(Setup{IPC: true, Sysctls: map[string]string{"kernel.tether-nonexistent": "1"}}, then)
	if err == nil || !strings.Contains(err.Error(), "set pod sysctl kernel.tether-nonexistent") {
		t.Errorf("a sysctl that is not there: %v", err)
	}
	err = Enter(Setup{NetNS: filepath.Join(t.TempDir(), "gone")}, then)
	if err == nil || !strings.Contains(err.Error(), "pod network namespace") {
		t.Errorf("a network namespace that is not there: %v", err)
	}
	if ran {
		t.Error("then ran after a failed setup")
	}
	bundle := t.TempDir()
	m := For(bundle, true, true)
	m.IPC = filepath.Join(t.TempDir(), "missing", "dir", "ipc") // its directory cannot be bound into
	os.WriteFile(filepath.Dir(filepath.Dir(m.IPC)), nil, 0o600)
	if err := Enter(Setup{UTS: true, IPC: true}, m.Bind); err == nil {
		t.Fatal("bind into a file's path")
	}
	if _, err := os.Stat(m.UTS); !os.IsNotExist(err) {
		t.Fatalf("the UTS namespace bound by a failed Bind stays: %v", err)
	}
}
