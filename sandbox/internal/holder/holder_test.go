package holder

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

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

// startHolder starts a real holder (from a thread of its own, in this
// process's namespaces but for its new pid namespace); its exit arrives
// on the returned channel.
func startHolder(t *testing.T, r *reaper.Reaper, id string) (*Holder, chan reaper.Exit) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a holder is init of a pid namespace of its own: root only")
	}
	exits := make(chan reaper.Exit, 1)
	dir := t.TempDir()
	type started struct {
		h   *Holder
		err error
	}
	done := make(chan started, 1)
	go func() {
		runtime.LockOSThread() // never unlocked, as the shim's: the thread ends with it
		h, err := Start(r, id, dir, func(e reaper.Exit) { exits <- e })
		done <- started{h, err}
	}()
	s := <-done
	if s.err != nil {
		t.Fatal(s.err)
	}
	t.Cleanup(s.h.Kill)
	return s.h, exits
}

// run runs a command through the test's reaper (which reaps every child
// of the process: os/exec alone would lose the exit to it) and returns
// its output, or why it failed.
func run(t *testing.T, r *reaper.Reaper, args ...string) string {
	t.Helper()
	var out strings.Builder
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := r.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	if status, err := r.Wait(cmd, ec); err != nil || status != 0 {
		t.Fatalf("%v: exit %d, %v: %s", args, status, err, out.String())
	}
	return out.String()
}

func procFile(pid int, name string) string {
	data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), name))
	return string(data)
}

// procStatus is /proc/PID/status as key: value.
func procStatus(pid int) map[string]string {
	st := map[string]string{}
	for _, line := range strings.Split(procFile(pid, "status"), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st
}

// sigmask reports whether signal sig is in a /proc status mask.
func sigmask(mask string, sig unix.Signal) bool {
	bits, err := strconv.ParseUint(mask, 16, 64)
	return err == nil && bits&(1<<(uint(sig)-1)) != 0
}

func awaitExit(t *testing.T, exits chan reaper.Exit) reaper.Exit {
	t.Helper()
	select {
	case e := <-exits:
		return e
	case <-time.After(20 * time.Second):
		t.Fatal("the holder did not exit")
		return reaper.Exit{}
	}
}

// TestHolderIsATinyInit: a holder is pid 1 of a pid namespace of its own,
// named tether-holder, with no capability, no_new_privs, the pause
// container's OOM score where the host allows it, and it costs a few
// pages: well under a static pause's 0.7 MB resident (the shim's binary
// re-executed took 2.9 MB).
func TestHolderIsATinyInit(t *testing.T) {
	h, exits := startHolder(t, startReaper(t), "pod1")
	pid := h.Pid()
	if got := strings.TrimSpace(procFile(pid, "comm")); got != Name {
		t.Errorf("comm %q", got)
	}
	if got := procFile(pid, "cmdline"); got != Name+"\x00-id\x00pod1\x00" {
		t.Errorf("cmdline %q", got)
	}
	st := procStatus(pid)
	for _, key := range []string{"CapInh", "CapPrm", "CapEff", "CapAmb"} {
		if st[key] != "0000000000000000" {
			t.Errorf("%s %s", key, st[key])
		}
	}
	if st["NoNewPrivs"] != "1" {
		t.Errorf("NoNewPrivs %q", st["NoNewPrivs"])
	}
	if st["NSpid"] != strconv.Itoa(pid)+"\t1" {
		t.Errorf("NSpid %q: not init of a pid namespace of its own", st["NSpid"])
	}
	self, _ := os.Readlink("/proc/self/ns/net")
	if got, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", "net")); got != self {
		t.Errorf("network namespace %s, its starter's %s", got, self)
	}
	var rss int
	for _, line := range strings.Split(procFile(pid, "smaps_rollup"), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Rss:" {
			rss, _ = strconv.Atoi(f[1])
		}
	}
	t.Logf("holder resident: %d KiB", rss)
	if rss == 0 || rss > 64 {
		t.Errorf("holder resident: %d KiB, want a few pages", rss)
	}
	h.release()
	if e := awaitExit(t, exits); e.Pid != pid || e.Status != 0 {
		t.Fatalf("exit %+v", e)
	}
	h.Kill() // after its exit: nothing, and nobody else
}

// TestHolderIgnoresSignalsFromThePod: a process in the pod's pid
// namespace (nsenter, as root in a container would) sends SIGTERM and
// SIGINT to its pid 1, the holder; so does the node. The signals are
// ignored (the kernel drops an ignored signal as it is sent: none is left
// pending to act on later) and the holder lives on until its lifeline
// closes: that is the one way it ends, besides SIGKILL.
func TestHolderIgnoresSignalsFromThePod(t *testing.T) {
	r := startReaper(t)
	h, exits := startHolder(t, r, "pod1")
	pid := h.Pid()
	for _, sig := range []string{"-TERM", "-INT"} {
		run(t, r, "nsenter", "-t", strconv.Itoa(pid), "-p", "--", "sh", "-c", "kill "+sig+" 1")
	}
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT} {
		if err := unix.Kill(pid, sig); err != nil {
			t.Fatal(err)
		}
	}
	st := procStatus(pid)
	for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGCHLD} {
		if !sigmask(st["SigIgn"], sig) || sigmask(st["SigCgt"], sig) {
			t.Errorf("%v is not ignored: SigIgn %s, SigCgt %s", sig, st["SigIgn"], st["SigCgt"])
		}
		if sigmask(st["SigPnd"], sig) || sigmask(st["ShdPnd"], sig) {
			t.Errorf("%v is pending for the holder", sig)
		}
	}
	if st["State"] == "" || st["State"][0] == 'Z' {
		t.Fatalf("holder state %q after the signals", st["State"])
	}
	select {
	case e := <-exits:
		t.Fatalf("the holder exited on a signal: %+v", e)
	default:
	}
	h.release()
	if e := awaitExit(t, exits); e.Status != 0 {
		t.Fatalf("exit %+v", e)
	}
}

// TestHolderReapsThePodsOrphans: a process of the pod whose parent is
// gone is the holder's child; once it exits, it is gone at once: no
// zombie waits for the holder to reap it.
func TestHolderReapsThePodsOrphans(t *testing.T) {
	r := startReaper(t)
	h, _ := startHolder(t, r, "pod1")
	pid := h.Pid()
	// nsenter waits for sh, which starts a child that outlives it: by the
	// time sh's exit is in, the child is the holder's.
	out := run(t, r, "nsenter", "-t", strconv.Itoa(pid), "-p", "--", "sh", "-c",
		"sleep 100000 </dev/null >/dev/null 2>&1 & echo $!")
	kids := strings.Fields(procFile(pid, "task/"+strconv.Itoa(pid)+"/children"))
	if len(kids) != 1 {
		t.Fatalf("holder's children %v (the orphan is %s in the pod)", kids, strings.TrimSpace(out))
	}
	child, _ := strconv.Atoi(kids[0])
	fd, err := unix.PidfdOpen(child, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil {
		t.Fatal(err)
	}
	// A pidfd polls readable once the process has exited; the kernel
	// decides then whether it waits as a zombie for its parent.
	for {
		if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, -1); err != unix.EINTR {
			break
		}
	}
	if stat := procFile(child, "stat"); stat != "" {
		i := strings.LastIndexByte(stat, ')')
		if state := stat[i+2]; state != 'X' {
			t.Fatalf("the orphan %d is %c after its exit, not released", child, state)
		}
	}
}

// TestHolderStopKillsAfterItsGrace: Stop closes the lifeline and returns
// with the exit; a killed holder's status is 137.
func TestHolderStopKillsAfterItsGrace(t *testing.T) {
	r := startReaper(t)
	h, exits := startHolder(t, r, "pod1")
	h.Kill()
	if e := awaitExit(t, exits); e.Status != 137 {
		t.Fatalf("killed holder's exit %+v", e)
	}
	h, exits = startHolder(t, r, "pod1")
	exited := make(chan struct{})
	go func() {
		<-exits
		close(exited)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.Stop(ctx, time.Hour, exited); err != nil {
		t.Fatal(err)
	}
}

// TestHolderReport: the holder's report read as the shim reads it: ready,
// a failed step with its errno, nothing at all.
func TestHolderReport(t *testing.T) {
	for msg, want := range map[string]string{
		"ok":         "",
		"E\x08\x01":  "holder could not drop its capabilities: operation not permitted",
		"":           "holder exited before setting itself up",
		"E\x63\x01":  "holder: E",
		"bad sysctl": "holder: bad sysctl",
	} {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		w.WriteString(msg)
		w.Close()
		err = awaitReady(r)
		r.Close()
		if got := ""; err != nil {
			got = err.Error()
			if !strings.HasPrefix(got, want) || want == "" {
				t.Errorf("report %q: %v, want %q", msg, err, want)
			}
		} else if want != "" {
			t.Errorf("report %q: ready, want %q", msg, want)
		}
	}
}

// TestHolderRootIsEmpty: the holder is pid 1 of the pod, so a container
// with CAP_SYS_PTRACE (kubectl debug's general profile adds it) reaches
// its /proc/1/root and /proc/1/cwd despite non-dumpable. Those must not be
// the node's file system, as they are not with a pause container (its
// image's root): the holder's root and working directory are an empty
// directory, gone once the holder is set up, where nothing can be made.
func TestHolderRootIsEmpty(t *testing.T) {
	h, _ := startHolder(t, startReaper(t), "pod1")
	for _, link := range []string{"root", "cwd"} {
		path := filepath.Join("/proc", strconv.Itoa(h.Pid()), link)
		target, _ := os.Readlink(path)
		// A removed directory reads as gone (ENOENT), not as empty.
		entries, err := os.ReadDir(path + "/")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("read the holder's %s: %v", link, err)
		}
		if len(entries) > 0 {
			t.Errorf("the holder's %s (%s) holds %d entries: the node's file system is open to the pod through /proc/1/%s", link, target, len(entries), link)
		}
		if !strings.HasSuffix(target, " (deleted)") {
			t.Errorf("the holder's %s is %q, not a removed directory", link, target)
		}
		// Named for this test, and removed from wherever it was made.
		planted := filepath.Join(path, "tether-holder-test-"+strconv.Itoa(os.Getpid()))
		if err := os.WriteFile(planted, nil, 0o600); err == nil {
			os.Remove(planted)
			t.Errorf("a file was made in the holder's %s", link)
		}
	}
}
