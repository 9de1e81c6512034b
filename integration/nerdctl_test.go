package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// nerdctl cases: what users do through nerdctl (the Docker-compatible CLI
// for containerd), on containerd 2.x, each against tether and against
// containerd's own runc shim, on a private containerd per shim and test.

// nerdctlRuntimes are the runtimes every nerdctl case runs against.
var nerdctlRuntimes = []string{harness.Runtime, "io.containerd.runc.v2"}

// nerdctlEnv is a private containerd 2.x in network and mount namespaces
// of its own, driven by nerdctl with its own data root, CNI configuration
// and namespace: nothing of it is the host's.
type nerdctlEnv struct {
	t       *testing.T
	ctd     *harness.Containerd
	bin     string
	runtime string
	dir     string
	global  []string // nerdctl's global flags
	env     []string
}

// nerdctlBinary is the nerdctl make nerdctl builds, or TETHER_NERDCTL.
func nerdctlBinary(t *testing.T) string {
	t.Helper()
	setup(t)
	if suite.ctd.Major < 2 {
		t.Skipf("SKIPPED on containerd %d.x: the nerdctl cases run on containerd 2.x (make test-integration-2)", suite.ctd.Major)
	}
	bin := os.Getenv("TETHER_NERDCTL")
	if bin == "" {
		bin = "/var/cache/tether/nerdctl-v2.4.2-moby-v2.0.0-beta.25/nerdctl"
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("TETHER_INTEGRATION") == "require" {
			t.Fatalf("no nerdctl at %s (make nerdctl builds it): %v", bin, err)
		}
		t.Skipf("SKIPPED: no nerdctl at %s (make nerdctl builds it)", bin)
	}
	return bin
}

// forEachRuntime runs f as a subtest per runtime, each with a private
// containerd and nerdctl set up.
func forEachRuntime(t *testing.T, f func(t *testing.T, n *nerdctlEnv)) {
	bin := nerdctlBinary(t)
	for _, runtime := range nerdctlRuntimes {
		name := strings.TrimPrefix(strings.TrimSuffix(runtime, ".v2"), "io.containerd.")
		t.Run(name, func(t *testing.T) { f(t, startNerdctl(t, bin, runtime)) })
	}
}

// startNerdctl starts the private containerd (tether and containerd 2.x's
// runc shim on its PATH; the restart monitor looks every second) and loads
// the busybox image through nerdctl.
func startNerdctl(t *testing.T, bin, runtime string) *nerdctlEnv {
	t.Helper()
	dir, err := os.MkdirTemp("", "tether-nerdctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	shims := filepath.Join(dir, "shims")
	if err := os.MkdirAll(shims, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, shim := range []string{
		filepath.Join(suite.shimDir, "containerd-shim-tether-v2"),
		filepath.Join(filepath.Dir(suite.ctd.ContainerdBinary), "containerd-shim-runc-v2"),
	} {
		if err := os.Symlink(shim, filepath.Join(shims, filepath.Base(shim))); err != nil {
			t.Fatal(err)
		}
	}
	ctdDir := filepath.Join(dir, "containerd")
	if err := os.MkdirAll(ctdDir, 0o711); err != nil {
		t.Fatal(err)
	}
	ctd, err := harness.Start(harness.Options{ContainerdBinary: suite.ctd.ContainerdBinary, CtrBinary: suite.ctd.CtrBinary,
		ShimDir: shims, Dir: ctdDir, Namespace: "nerdctl-it", PrivateNetwork: true,
		ExtraConfig: "[plugins.'io.containerd.monitor.container.v1.restart']\n  interval = '1s'\n"})
	if err != nil {
		t.Fatal(err)
	}
	n := &nerdctlEnv{t: t, ctd: ctd, bin: bin, runtime: runtime, dir: dir}
	t.Cleanup(func() {
		n.removeAll()
		t.Logf("containerd logged %q %d times", inactiveStream, strings.Count(ctd.FullLog(), inactiveStream))
		if t.Failed() {
			t.Logf("containerd log:\n%s", ctd.Log())
		}
		ctd.Stop()
		killLeftoverShims(t, ctd.Address)
	})
	toml := filepath.Join(dir, "nerdctl.toml")
	if err := os.WriteFile(toml, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	n.env = append(os.Environ(), "NERDCTL_TOML="+toml)
	n.global = []string{"--address", ctd.Address, "--namespace", ctd.Namespace,
		"--data-root", filepath.Join(dir, "nerdctl"), "--cni-path", "/usr/lib/cni",
		"--cni-netconfpath", filepath.Join(dir, "cni"), "--cgroup-manager", "cgroupfs"}
	image := filepath.Join(dir, "busybox-oci.tar")
	if err := harness.WriteBusyboxImage(image, suite.busybox); err != nil {
		t.Fatal(err)
	}
	n.must(nil, "load", "-i", image)
	return n
}

// command is an unstarted nerdctl command with the private settings.
func (n *nerdctlEnv) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, n.bin, append(append([]string{}, n.global...), args...)...)
	cmd.Env = n.env
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// inactiveStream is what containerd logs when a ttrpc answer comes for a
// call its caller has given up.
const inactiveStream = "ttrpc: received message on inactive stream"

// nerdctlTimeout bounds one nerdctl command: a hang is a failure.
const nerdctlTimeout = 2 * time.Minute

// exec runs nerdctl with stdin (may be nil) and returns what it printed;
// a non-zero exit is an error carrying the output.
func (n *nerdctlEnv) exec(stdin io.Reader, args ...string) (harness.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), nerdctlTimeout)
	defer cancel()
	cmd := n.command(ctx, args...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := harness.Result{Stdout: stdout.String(), Stderr: stderr.String(), ExitCode: cmd.ProcessState.ExitCode()}
	if ctx.Err() != nil {
		return res, fmt.Errorf("nerdctl %s: hung for %v (stdout %q, stderr %q)", strings.Join(args, " "), nerdctlTimeout, trimOut(res.Stdout), trimOut(res.Stderr))
	}
	if err != nil {
		return res, fmt.Errorf("nerdctl %s: %w (stdout %q, stderr %q)", strings.Join(args, " "), err, trimOut(res.Stdout), trimOut(res.Stderr))
	}
	return res, nil
}

// must is exec that fails the test on error.
func (n *nerdctlEnv) must(stdin io.Reader, args ...string) harness.Result {
	n.t.Helper()
	res, err := n.exec(stdin, args...)
	if err != nil {
		n.t.Fatal(err)
	}
	return res
}

// runArgs are `nerdctl run` arguments for the env's runtime.
func (n *nerdctlEnv) runArgs(args ...string) []string {
	return append([]string{"run", "--runtime", n.runtime}, args...)
}

// removeAll removes every container of the env's namespace.
func (n *nerdctlEnv) removeAll() {
	res, err := n.exec(nil, "ps", "-a", "-q", "--no-trunc")
	if err != nil {
		n.t.Logf("list containers to remove: %v", err)
		return
	}
	if ids := strings.Fields(res.Stdout); len(ids) > 0 {
		if _, err := n.exec(nil, append([]string{"rm", "-f"}, ids...)...); err != nil {
			n.t.Logf("remove containers: %v", err)
		}
	}
}

// waitFor polls cond until it holds or timeout passes.
func (n *nerdctlEnv) waitFor(what string, timeout time.Duration, cond func() bool) {
	n.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			n.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func trimOut(s string) string {
	if len(s) > 2000 {
		return s[:1000] + " ... " + s[len(s)-1000:]
	}
	return s
}

// lockedBuffer collects a command's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// killLeftoverShims kills the shims (and their children) still serving
// the private containerd at address once it has stopped: a restart
// policy's last round can start a task as its container is removed
// (containerd's race, for any shim), and that shim would wait forever for
// a containerd that is gone.
func killLeftoverShims(t *testing.T, address string) {
	for _, p := range processes() {
		for i, a := range p.cmdline {
			if a != "-address" || i+1 >= len(p.cmdline) || p.cmdline[i+1] != address {
				continue
			}
			t.Logf("killing shim %d left serving the stopped containerd: %q", p.pid, p.cmdline)
			for _, child := range processes() {
				if child.ppid == p.pid {
					syscall.Kill(child.pid, syscall.SIGKILL)
				}
			}
			syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
}
