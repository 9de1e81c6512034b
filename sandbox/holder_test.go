package sandbox

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/reaper"
)

// TestMain runs the holder when the test binary is started as one
// (startHolder runs /proc/self/exe).
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == HolderName {
		os.Exit(HolderMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// startReaper runs a reaper for the test: the holders are its children.
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

// startTestHolder starts a real holder for p; its exit arrives on the
// returned channel. A test runs one reaper: two would take each other's
// children's exits.
func startTestHolder(t *testing.T, r *reaper.Reaper, p Pod) (*holder, chan reaper.Exit) {
	t.Helper()
	exits := make(chan reaper.Exit, 1)
	h, err := startHolder(r, p, func(e reaper.Exit) { exits <- e }, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.kill)
	return h, exits
}

func procFile(pid int, name string) string {
	data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), name))
	return string(data)
}

func nsOf(pid int, ns string) string {
	link, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", ns))
	return link
}

func awaitExit(t *testing.T, exits chan reaper.Exit) reaper.Exit {
	t.Helper()
	select {
	case e := <-exits:
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("the holder did not exit")
		return reaper.Exit{}
	}
}

// TestHolderLivesUntilItsLifelineCloses: a holder on the node's namespaces
// (as a host-network pod with the node's IPC has) reports ready, names
// itself, drops its privileges, and exits 0 once the shim closes its
// lifeline, its exit delivered by the reaper.
func TestHolderLivesUntilItsLifelineCloses(t *testing.T) {
	h, exits := startTestHolder(t, startReaper(t), Pod{ID: "pod1"})
	pid := h.pid()
	if got := strings.TrimSpace(procFile(pid, "comm")); got != HolderName {
		t.Errorf("comm %q", got)
	}
	if cmdline := procFile(pid, "cmdline"); !strings.HasPrefix(cmdline, HolderName+"\x00-id\x00pod1") {
		t.Errorf("cmdline %q", cmdline)
	}
	if status := procFile(pid, "status"); !strings.Contains(status, "NoNewPrivs:\t1") {
		t.Errorf("no_new_privs not set:\n%s", status)
	}
	for _, ns := range []string{"net", "uts", "ipc", "pid"} {
		if nsOf(pid, ns) != nsOf(os.Getpid(), ns) {
			t.Errorf("holder in a %s namespace of its own", ns)
		}
	}
	select {
	case e := <-exits:
		t.Fatalf("holder exited while its lifeline is open: %+v", e)
	case <-time.After(50 * time.Millisecond):
	}
	h.release()
	if e := awaitExit(t, exits); e.Pid != pid || e.Status != 0 {
		t.Fatalf("exit %+v", e)
	}
	h.kill() // after its exit: nothing, and nobody else
}

// TestHolderStopKillsAfterItsGrace: stop closes the lifeline and returns
// with the exit; a killed holder's status is 137.
func TestHolderStopKillsAfterItsGrace(t *testing.T) {
	r := startReaper(t)
	h, exits := startTestHolder(t, r, Pod{ID: "pod1"})
	h.kill()
	if e := awaitExit(t, exits); e.Status != 137 {
		t.Fatalf("killed holder's exit %+v", e)
	}
	h, exits = startTestHolder(t, r, Pod{ID: "pod1"})
	exited := make(chan struct{})
	go func() {
		<-exits
		close(exited)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.stop(ctx, time.Minute, exited); err != nil {
		t.Fatal(err)
	}
}

// TestHolderThatCannotSetUpThePodFails: a setup error is the start's
// error, with the holder's reason, and no holder is left.
func TestHolderThatCannotSetUpThePodFails(t *testing.T) {
	exits := make(chan reaper.Exit, 1)
	p := Pod{ID: "pod1", Sysctls: map[string]string{"net.tether.nonexistent": "1"}}
	_, err := startHolder(startReaper(t), p, func(e reaper.Exit) { exits <- e }, nil)
	if err == nil || !strings.Contains(err.Error(), "set pod sysctl net.tether.nonexistent") {
		t.Fatalf("start: %v", err)
	}
	if e := awaitExit(t, exits); e.Status == 0 {
		t.Fatalf("failed holder's exit %+v", e)
	}
}

// TestHolderInThePodsNamespaces: a holder for a pod with a network
// namespace (made here as CRI would) joins it from its first instruction,
// owns new UTS, IPC and pid namespaces (as their pid 1), with the pod's
// hostname and sysctls set in them.
func TestHolderInThePodsNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for namespaces")
	}
	netns := newNetNS(t)
	p := Pod{ID: "pod1", NetNS: netns, OwnUTS: true, OwnIPC: true, OwnPID: true, Hostname: "pod-host",
		Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shmmni": "1234"}}
	h, exits := startTestHolder(t, startReaper(t), p)
	pid := h.pid()
	want, _ := os.Readlink(netns)
	if got := nsOf(pid, "net"); got != want {
		t.Fatalf("holder's network namespace %q, the pod's %q", got, want)
	}
	for _, ns := range []string{"uts", "ipc", "pid"} {
		if nsOf(pid, ns) == nsOf(os.Getpid(), ns) {
			t.Errorf("holder shares the node's %s namespace", ns)
		}
	}
	if status := procFile(pid, "status"); !strings.Contains(status, "NSpid:\t"+strconv.Itoa(pid)+"\t1\n") {
		t.Errorf("holder is not pid 1 of its pid namespace:\n%s", status)
	}
	inNS(t, pid, unix.CLONE_NEWUTS, func() {
		var u unix.Utsname
		unix.Uname(&u)
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "pod-host" {
			t.Errorf("pod hostname %q", got)
		}
	})
	inNS(t, pid, unix.CLONE_NEWNET, func() {
		if got := strings.TrimSpace(readFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")); got != "80" {
			t.Errorf("pod net sysctl %q", got)
		}
	})
	inNS(t, pid, unix.CLONE_NEWIPC, func() {
		if got := strings.TrimSpace(readFile("/proc/sys/kernel/shmmni")); got != "1234" {
			t.Errorf("pod ipc sysctl %q", got)
		}
	})
	h.release()
	if e := awaitExit(t, exits); e.Status != 0 {
		t.Fatalf("exit %+v", e)
	}
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

// newNetNS makes a network namespace for the test, held by a thread of
// its own until the test ends, and returns its path.
func newNetNS(t *testing.T) string {
	t.Helper()
	path := make(chan string)
	end := make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with it
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Error(err)
			close(path)
			return
		}
		path <- filepath.Join("/proc", strconv.Itoa(os.Getpid()), "task", strconv.Itoa(unix.Gettid()), "ns", "net")
		<-end
	}()
	p, ok := <-path
	if !ok {
		t.FailNow()
	}
	t.Cleanup(func() { close(end) })
	return p
}

// inNS runs fn on a thread that has joined pid's namespace of kind ns; the
// thread is discarded afterwards.
func inNS(t *testing.T, pid, kind int, fn func()) {
	t.Helper()
	name := map[int]string{unix.CLONE_NEWUTS: "uts", unix.CLONE_NEWNET: "net", unix.CLONE_NEWIPC: "ipc"}[kind]
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		fd, err := unix.Open(filepath.Join("/proc", strconv.Itoa(pid), "ns", name), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Error(err)
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, kind); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// exeRSS is how much of this process's binary is resident in its mappings.
func exeRSS(t *testing.T) int {
	t.Helper()
	exe, _ := os.Readlink("/proc/self/exe")
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	total, ours := 0, false
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 6 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			ours = f[5] == exe
		case ours && len(f) >= 2 && f[0] == "Rss:":
			kib, _ := strconv.Atoi(f[1])
			total += kib
		}
	}
	return total
}

// TestReleaseCodePages: the binary's read-only pages a process no longer
// runs leave its resident set (what it runs comes back by itself), and it
// runs on.
func TestReleaseCodePages(t *testing.T) {
	before := exeRSS(t)
	if err := releaseCodePages(); err != nil {
		t.Fatal(err)
	}
	after := exeRSS(t)
	if after >= before {
		t.Fatalf("binary resident: %d KiB before, %d KiB after", before, after)
	}
	t.Logf("binary resident: %d KiB before, %d KiB after", before, after)
}
