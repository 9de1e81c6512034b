package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/tether-shim/tether/integration/harness"
)

func TestEchoExitsZero(t *testing.T) {
	e := setup(t)
	res, err := e.run(e.id("echo"), "echo", "hello", "from", "tether")
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "hello from tether\n" {
		t.Fatalf("stdout %q", res.Stdout)
	}
}

func TestExitCode42(t *testing.T) {
	e := setup(t)
	res, err := e.run(e.id("exit42"), "sh", "-c", "exit 42")
	if err == nil || res.ExitCode != 42 {
		t.Fatalf("exit code %d (err %v), want 42", res.ExitCode, err)
	}
}

func TestStdinPiped(t *testing.T) {
	e := setup(t)
	id := e.id("stdin")
	res, err := e.ctrErr(strings.NewReader("ping\n"), "run", "--rm", "--runtime", harness.Runtime,
		harness.BusyboxImageName, id, "sh", "-c", "read x; echo got:$x")
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "got:ping\n" {
		t.Fatalf("stdout %q", res.Stdout)
	}
}

func TestStderrSeparateFromStdout(t *testing.T) {
	e := setup(t)
	res, err := e.run(e.id("stderr"), "sh", "-c", "echo to-out; echo to-err >&2")
	if err != nil {
		t.Fatal(err)
	}
	if res.Stdout != "to-out\n" || res.Stderr != "to-err\n" {
		t.Fatalf("stdout %q, stderr %q", res.Stdout, res.Stderr)
	}
}

// TestStdout64MiBIntact: 64 MiB of random bytes reach ctr whole; the
// container prints its own checksum to stderr after the data.
func TestStdout64MiBIntact(t *testing.T) {
	e := setup(t)
	const size = 64 << 20
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := e.ctd.CtrCommand(ctx, "run", "--rm", "--runtime", harness.Runtime, harness.BusyboxImageName, e.id("big"),
		"sh", "-c", "head -c "+strconv.Itoa(size)+" /dev/urandom > /tmp/data && cat /tmp/data && sha256sum /tmp/data >&2")
	h := sha256.New()
	var n countWriter
	var stderr bytes.Buffer
	cmd.Stdout = io.MultiWriter(h, &n)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	if n != size {
		t.Fatalf("received %d bytes, want %d", n, size)
	}
	want := strings.Fields(harness.StripCtrWarnings(stderr.String()))
	if len(want) == 0 || want[0] != hex.EncodeToString(h.Sum(nil)) {
		t.Fatalf("checksum of received data %x, container says %q", h.Sum(nil), stderr.String())
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

func TestExecIntoDetachedContainer(t *testing.T) {
	e := setup(t)
	id := e.id("exec")
	e.runDetached(id, "sleep", "1000")

	res, err := e.ctrErr(nil, "task", "exec", "--exec-id", "out", id, "sh", "-c", "echo exec-output; exit 7")
	if res.ExitCode != 7 || res.Stdout != "exec-output\n" {
		t.Fatalf("exec: exit %d stdout %q (%v), want 7 and exec-output", res.ExitCode, res.Stdout, err)
	}
	res, err = e.ctrErr(strings.NewReader("data via stdin\n"), "task", "exec", "--exec-id", "in", id, "cat")
	if err != nil || res.Stdout != "data via stdin\n" {
		t.Fatalf("exec with stdin: stdout %q, err %v", res.Stdout, err)
	}
	// The container is still running after its execs.
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("task status %q after execs, want RUNNING", st)
	}
}

func TestTaskPsListsInitPid(t *testing.T) {
	e := setup(t)
	id := e.id("ps")
	e.runDetached(id, "sleep", "1000")
	ls := e.ctr("task", "ls")
	var pid string
	for _, line := range strings.Split(ls.Stdout, "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == id {
			pid = f[1]
		}
	}
	if pid == "" || pid == "0" {
		t.Fatalf("no pid for %s in task ls:\n%s", id, ls.Stdout)
	}
	ps := e.ctr("task", "ps", id)
	found := false
	for _, line := range strings.Split(ps.Stdout, "\n")[1:] {
		if f := strings.Fields(line); len(f) > 0 && f[0] == pid {
			found = true
		}
	}
	if !found {
		t.Fatalf("task ps does not list init pid %s:\n%s", pid, ps.Stdout)
	}
}

func TestKillSIGTERMStops(t *testing.T) {
	e := setup(t)
	id := e.id("term")
	// A pid 1 ignores signals it has no handler for, so it traps TERM.
	e.runDetached(id, "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
	e.ctr("task", "kill", "-s", "SIGTERM", id)
	e.waitFor("task to stop", 20*time.Second, func() bool { return e.taskStatus(id) == "STOPPED" })
}

// TestKillAllReachesExecs: SIGTERM with --all ends an exec'd sleep, while the
// init (pid 1 without a TERM handler) ignores it and keeps running.
func TestKillAllReachesExecs(t *testing.T) {
	e := setup(t)
	id := e.id("killall")
	e.runDetached(id, "sleep", "1000")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	execCmd := e.ctd.CtrCommand(ctx, "task", "exec", "--exec-id", "sleeper", id, "sleep", "1000")
	if err := execCmd.Start(); err != nil {
		t.Fatal(err)
	}
	execDone := make(chan error, 1)
	go func() { execDone <- execCmd.Wait() }()
	e.waitFor("exec to run", 20*time.Second, func() bool {
		res, err := e.ctrErr(nil, "task", "ps", id)
		return err == nil && strings.Contains(res.Stdout, "sleeper")
	})
	e.ctr("task", "kill", "--all", "-s", "SIGTERM", id)
	select {
	case err := <-execDone:
		if code := execCmd.ProcessState.ExitCode(); code != 143 {
			t.Fatalf("exec exit code %d (%v), want 143 (SIGTERM)", code, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("exec still running after kill --all")
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("init status %q, want RUNNING (pid 1 ignores TERM)", st)
	}
}

// runOnTerminal runs ctr with a pseudo-terminal as its stdio and returns
// everything printed on it.
func (e *env) runOnTerminal(args ...string) string {
	e.t.Helper()
	pty, slavePath, err := console.NewPty()
	if err != nil {
		e.t.Fatal(err)
	}
	defer pty.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer slave.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := e.ctd.CtrCommand(ctx, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	slave.Close()
	out := make(chan string, 1)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, pty) // ends with EIO once ctr has exited
		out <- b.String()
	}()
	if err := cmd.Wait(); err != nil {
		e.t.Fatalf("ctr %v: %v", args, err)
	}
	select {
	case got := <-out:
		return got
	case <-time.After(10 * time.Second):
		e.t.Fatal("no terminal output")
		return ""
	}
}

func TestTerminal(t *testing.T) {
	e := setup(t)
	got := e.runOnTerminal("run", "--rm", "-t", "--runtime", harness.Runtime, harness.BusyboxImageName, e.id("tty"),
		"sh", "-c", "test -t 0 && test -t 1 && echo TTY-YES || echo TTY-NO; stty size")
	if !strings.Contains(got, "TTY-YES") {
		t.Fatalf("terminal output %q, want TTY-YES", got)
	}
}

// TestExecTerminalAndKill: an exec on a terminal of its own; an exec killed
// by its exec id alone.
func TestExecTerminalAndKill(t *testing.T) {
	e := setup(t)
	id := e.id("exectty")
	e.runDetached(id, "sleep", "100000")
	got := e.runOnTerminal("task", "exec", "-t", "--exec-id", "tty", id, "sh", "-c", "test -t 0 && echo EXEC-TTY-YES || echo EXEC-TTY-NO")
	if !strings.Contains(got, "EXEC-TTY-YES") {
		t.Fatalf("exec terminal output %q", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := e.ctd.CtrCommand(ctx, "task", "exec", "--exec-id", "victim", id, "sleep", "100000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitFor("exec to run", 20*time.Second, func() bool {
		res, err := e.ctrErr(nil, "task", "ps", id)
		return err == nil && strings.Contains(res.Stdout, "victim")
	})
	e.ctr("task", "kill", "--exec-id", "victim", "-s", "SIGKILL", id)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 137 {
		t.Fatalf("killed exec exit %d, want 137", code)
	}
	if st := e.taskStatus(id); st != "RUNNING" {
		t.Fatalf("container %q after its exec was killed", st)
	}
}

// TestRemoveLeavesNothingBehind: after task rm and container rm no shim
// process, no mount, no zombie, no socket, no runtime state and no cgroup
// (with the systemd driver: no scope) remain.
func TestRemoveLeavesNothingBehind(t *testing.T) {
	e := setup(t)
	id := e.id("clean")
	zombiesBefore := zombies()

	e.ctr("run", "-d", "--runtime", harness.Runtime, harness.BusyboxImageName, id, "sleep", "1000")
	bundle := e.bundle(id)
	address, err := e.ctd.ShimAddress(id)
	if err != nil {
		t.Fatal(err)
	}
	socket := strings.TrimPrefix(address, "unix://")
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("the shim's socket: %v", err)
	}
	if len(shimsFor(id)) != 1 {
		t.Fatalf("want one shim for %s, found %v", id, shimsFor(id))
	}
	if len(mountsMatching(bundle)) == 0 {
		t.Fatalf("rootfs of %s is not mounted under %s", id, bundle)
	}
	pid := e.initPid(id)
	e.checkPlacement(id, pid)
	cgroup := cgroupDir(t, pid, "memory")
	e.ctr("task", "exec", "--exec-id", "e1", id, "true")
	e.ctr("task", "kill", "-s", "SIGKILL", id)
	e.waitFor("task to stop", 20*time.Second, func() bool { return e.taskStatus(id) == "STOPPED" })
	e.ctr("task", "rm", id)
	e.ctr("container", "rm", id)

	e.waitFor("shim to exit", 10*time.Second, func() bool { return len(shimsFor(id)) == 0 })
	if m := mountsMatching(bundle); len(m) > 0 {
		t.Errorf("mounts left behind: %v", m)
	}
	if _, err := os.Stat(bundle); !os.IsNotExist(err) {
		t.Errorf("bundle %s still exists (%v)", bundle, err)
	}
	if _, err := os.Stat(filepath.Join("/run/containerd/runc", e.ctd.Namespace, id)); !os.IsNotExist(err) {
		t.Errorf("runtime state of %s left behind", id)
	}
	if _, err := os.Stat(cgroup); !os.IsNotExist(err) {
		t.Errorf("cgroup %s left behind (%v)", cgroup, err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("the shim's socket %s left behind (%v)", socket, err)
	}
	// An exited shim is reaped by pid 1, which may take a moment.
	newZombies := func() []process {
		var out []process
		for pid, z := range zombies() {
			if _, old := zombiesBefore[pid]; !old {
				out = append(out, z)
			}
		}
		return out
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(newZombies()) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for _, z := range newZombies() {
		t.Errorf("zombie left behind: pid %d (%s), parent %d", z.pid, z.comm, z.ppid)
	}
}
