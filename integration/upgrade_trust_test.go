package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// buildImpostor builds testdata/impostor, a process that looks like a shim
// from its command line and sockets, into dir.
func buildImpostor(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "impostor")
	cmd := exec.Command("go", "build", "-o", out, "./testdata/impostor")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the impostor: %v\n%s", err, b)
	}
	return out
}

// impostor is a running testdata/impostor.
type impostor struct {
	root, socket, mode string // its IMPOSTOR_ variables
}

// start runs the impostor with the command line of a shim serving
// namespace ns of the containerd at address, until the test ends.
func (im impostor) start(t *testing.T, binary, ns, address string) int {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	cmd := exec.Command(binary, "-namespace", ns, "-id", "impostor", "-address", address, "-publish-binary", "/usr/bin/containerd")
	cmd.Args[0] = "containerd-shim-tether-v2"
	cmd.Env = append(os.Environ(), "IMPOSTOR_ROOT="+im.root, "IMPOSTOR_SOCKET="+im.socket, "IMPOSTOR_MODE="+im.mode)
	cmd.ExtraFiles = []*os.File{w}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	w.Close()
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		ready <- strings.TrimSpace(line)
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			t.Fatalf("impostor: %q", line)
		}
	case <-time.After(time.Minute):
		t.Fatal("the impostor never got ready")
	}
	return cmd.Process.Pid
}

// TestUpgradeTrustsOnlyRealShims: processes that pass for shims to whoever
// believes command lines and sockets (a shim's flags, a listening socket in
// a directory named "tether", root's) are neither asked nor waited for,
// and the upgrade command dials no other socket for them:
//   - a process in a container (here chrooted) whose socket path does not
//     exist on the host, so that /proc/PID/root/... reaches it;
//   - a process of another program that accepts and never answers;
//   - a container's process whose "tether" directory is an absolute
//     symlink to a host directory holding another socket (resolved through
//     /proc/PID/root with the host's root, the path led to that socket).
//
// Each made the upgrade of a namespace fail (after 5 s for the stalling
// one) on the code before; now the real shim moves and nothing else is
// touched.
func TestUpgradeTrustsOnlyRealShims(t *testing.T) {
	e := setup(t)
	c := e.otherNamespace("trust")
	ctx := context.Background()
	id := e.id("trust")
	if _, err := c.Ctr(ctx, nil, "run", "-d", "--runtime", harness.Runtime, harness.BusyboxImageName, id, "sleep", "100000"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Ctr(ctx, nil, "task", "kill", "-a", "-s", "SIGKILL", id)
		c.Ctr(ctx, nil, "task", "rm", "-f", id)
		c.Ctr(ctx, nil, "container", "rm", id)
	})
	shim := shimsFor(id)[0].pid
	dir := t.TempDir()
	binary := buildImpostor(t, dir)
	next := buildTether(t, dir, "containerd-shim-tether-v2", "v-next")

	// The host's socket the symlink escape leads to: nobody may dial it.
	victimDir := t.TempDir()
	victim, err := net.Listen("unix", filepath.Join(victimDir, "v.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer victim.Close()

	escapeRoot := t.TempDir()
	if err := os.MkdirAll(filepath.Join(escapeRoot, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victimDir, filepath.Join(escapeRoot, "run", "tether")); err != nil {
		t.Fatal(err)
	}
	// Inside its root, the symlink leads here: the impostor listens there.
	if err := os.MkdirAll(filepath.Join(escapeRoot, victimDir), 0o755); err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("impostor-%d.sock", os.Getpid()) // no such socket on the host
	for _, tc := range []struct {
		name string
		im   impostor
	}{
		{"in a container", impostor{root: t.TempDir(), socket: "/run/tether/" + name}},
		{"stalling", impostor{socket: filepath.Join(t.TempDir(), "tether", name), mode: "stall"}},
		{"symlink escape", impostor{root: escapeRoot, socket: "/run/tether/v.sock"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pid := tc.im.start(t, binary, c.Namespace, c.Address)
			out, err := upgradeShims(t, next, "-namespace", c.Namespace, "-binary", next)
			t.Logf("upgrade:\n%s", out)
			if err != nil {
				t.Fatalf("upgrade of the namespace: %v", err)
			}
			if strings.Contains(out, fmt.Sprintf("pid=%d ", pid)) {
				t.Errorf("the impostor (pid %d) was asked", pid)
			}
			if !strings.Contains(out, fmt.Sprintf("pid=%d old=", shim)) || strings.Count(out, "result=ok") != 1 {
				t.Errorf("the shim (pid %d) did not move alone", shim)
			}
			// A connection would be waiting to be accepted by now.
			victim.(*net.UnixListener).SetDeadline(time.Now())
			if conn, err := victim.Accept(); err == nil {
				conn.Close()
				t.Error("the host's socket behind the symlink was dialed")
			}
		})
	}
	if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(shim), "exe")); exe != next {
		t.Fatalf("the shim runs %s, want %s", exe, next)
	}
}

// privateContainerd starts a containerd of the suite's kind, with tether,
// of its own; it is stopped when the test ends.
func privateContainerd(t *testing.T, namespace string) *harness.Containerd {
	t.Helper()
	dir, err := os.MkdirTemp("", "tether-ctd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctd, err := harness.Start(harness.Options{ShimDir: suite.shimDir, Dir: dir, Namespace: namespace,
		ContainerdBinary: suite.ctd.ContainerdBinary, CtrBinary: suite.ctd.CtrBinary})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd log (%s):\n%s", dir, ctd.Log())
		}
		ctd.Stop()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := ctd.ImportBusybox(ctx, suite.busybox); err != nil {
		t.Fatal(err)
	}
	return ctd
}

// TestUpgradeByContainerdAddress: two containerds on one host, a container
// of the same namespace in each; `upgrade -address` moves the shims of the
// containerd listening there (named by its path, or another path to the
// same socket) and leaves the other's alone.
func TestUpgradeByContainerdAddress(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	// The same namespace in both: only the address tells them apart.
	ns := fmt.Sprintf("addr-%d", os.Getpid())
	ours, other := privateContainerd(t, ns), privateContainerd(t, ns)
	shims := map[*harness.Containerd]int{}
	for _, ctd := range []*harness.Containerd{ours, other} {
		id := e.id("addr")
		if _, err := ctd.Ctr(ctx, nil, "run", "-d", "--runtime", harness.Runtime, harness.BusyboxImageName, id, "sleep", "100000"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctd.Ctr(ctx, nil, "task", "kill", "-a", "-s", "SIGKILL", id)
			ctd.Ctr(ctx, nil, "task", "rm", "-f", id)
			ctd.Ctr(ctx, nil, "container", "rm", id)
		})
		shims[ctd] = shimsFor(id)[0].pid
	}
	exe := func(pid int) string {
		p, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
		return p
	}
	before := exe(shims[other])
	bin := t.TempDir()
	link := filepath.Join(bin, "containerd.sock")
	if err := os.Symlink(ours.Address, link); err != nil {
		t.Fatal(err)
	}
	for i, address := range []string{ours.Address, link} {
		next := buildTether(t, bin, fmt.Sprintf("containerd-shim-tether-v2-%d", i), fmt.Sprintf("v-addr-%d", i))
		out, err := upgradeShims(t, next, "-address", address, "-binary", next)
		t.Logf("upgrade -address %s:\n%s", address, out)
		if err != nil {
			t.Fatal(err)
		}
		if got := exe(shims[ours]); got != next {
			t.Errorf("-address %s: the shim of that containerd runs %s, want %s", address, got, next)
		}
		if got := exe(shims[other]); got != before {
			t.Errorf("-address %s: the other containerd's shim moved to %s", address, got)
		}
		if strings.Count(out, "result=ok") != 1 {
			t.Errorf("-address %s: not one shim moved", address)
		}
	}
	// A containerd without tether shims (a package's upgrade on a node
	// that runs none): nothing to do, no failure.
	if out, err := upgradeShims(t, buildTether(t, bin, "containerd-shim-tether-v2-none", "v-none"), "-address", filepath.Join(bin, "no-containerd.sock")); err != nil || !strings.Contains(out, "no tether shim to upgrade") {
		t.Errorf("upgrade -address of a containerd without shims: %v\n%s", err, out)
	}
}
