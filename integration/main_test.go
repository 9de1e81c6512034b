// Integration tests: a private containerd (root, state and socket under a
// temporary directory, CRI disabled) runs containers through a freshly built
// tether, driven by ctr and by a ttrpc client straight on the shim's socket.
//
// They need root, containerd, ctr, runc and busybox-static. Without them every
// test skips with the reason; with TETHER_INTEGRATION=require (set by .ci/run)
// a missing prerequisite fails the run instead.
package integration

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

var suite struct {
	skip    string // why the suite cannot run here; empty if it can
	ctd     *harness.Containerd
	shimDir string
	busybox string
	// driver is the containers' cgroup driver (TETHER_CGROUP_DRIVER): the
	// harness places every ctr run with it, the CRI tests configure their
	// handlers and pods with it.
	driver harness.CgroupDriver
	seq    atomic.Int64
}

func TestMain(m *testing.M) {
	os.Exit(runSuite(m))
}

func runSuite(m *testing.M) int {
	if reason := missingPrerequisite(); reason != "" {
		if os.Getenv("TETHER_INTEGRATION") == "require" {
			fmt.Fprintf(os.Stderr, "FATAL: integration prerequisites missing: %s\n", reason)
			return 1
		}
		suite.skip = reason
		fmt.Fprintf(os.Stderr, "\n*** SKIPPING tether integration tests: %s ***\n\n", reason)
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "tether-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	suite.shimDir = filepath.Join(dir, "bin")
	if err := os.MkdirAll(suite.shimDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	root, _ := filepath.Abs("..")
	if suite.driver, err = harness.CgroupDriverFromEnv(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := harness.BuildShim(root, suite.shimDir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctdDir := filepath.Join(dir, "containerd")
	os.MkdirAll(ctdDir, 0o700)
	opts := harness.Options{ShimDir: suite.shimDir, Dir: ctdDir, CgroupDriver: suite.driver}
	// TETHER_CONTAINERD_DIR names a directory with another containerd and
	// ctr (containerd 2.x, built by make containerd2); Debian's otherwise.
	if d := os.Getenv("TETHER_CONTAINERD_DIR"); d != "" {
		opts.ContainerdBinary, opts.CtrBinary = filepath.Join(d, "containerd"), filepath.Join(d, "ctr")
	}
	ctd, err := harness.Start(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	suite.ctd = ctd
	defer ctd.Stop()
	fmt.Fprintf(os.Stderr, "integration suite against containerd %d.x (%s), cgroup driver %s\n", ctd.Major, ctd.ContainerdBinary, suite.driver)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ctd.ImportBusybox(ctx, suite.busybox); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "--- containerd log (tail) ---\n%s\n", ctd.Log())
	}
	return code
}

func missingPrerequisite() string {
	if os.Geteuid() != 0 {
		return "not running as root"
	}
	needs := []string{"containerd", "ctr", "runc"}
	if os.Getenv(harness.PrebuiltEnv) == "" {
		needs = append(needs, "go") // the programs the tests run are built
	}
	for _, bin := range needs {
		if _, err := exec.LookPath(bin); err != nil {
			return bin + " is not installed"
		}
	}
	if d := os.Getenv("TETHER_CONTAINERD_DIR"); d != "" {
		for _, bin := range []string{"containerd", "ctr"} {
			if _, err := os.Stat(filepath.Join(d, bin)); err != nil {
				return "no " + bin + " in TETHER_CONTAINERD_DIR=" + d + " (make containerd2 builds it)"
			}
		}
	}
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if isStatic(p) {
			suite.busybox = p
			return ""
		}
	}
	return "busybox-static is not installed"
}

// isStatic reports whether the ELF binary at path needs no dynamic loader.
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// env is one test's view of the suite.
type env struct {
	t   *testing.T
	ctd *harness.Containerd
}

// setup returns the suite's containerd, or skips the test loudly.
func setup(t *testing.T) *env {
	t.Helper()
	if suite.skip != "" {
		t.Skipf("SKIPPED: integration prerequisites missing: %s", suite.skip)
	}
	return &env{t: t, ctd: suite.ctd}
}

// id returns a container id unique to this run.
func (e *env) id(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), suite.seq.Add(1))
}

// ctr runs ctr and fails the test on error.
func (e *env) ctr(args ...string) harness.Result {
	e.t.Helper()
	res, err := e.ctrErr(nil, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

// ctrErr runs ctr with stdin (may be nil) and a minute's timeout
// (harness.Patience).
func (e *env) ctrErr(stdin *strings.Reader, args ...string) (harness.Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), harness.Patience(time.Minute))
	defer cancel()
	if stdin == nil {
		return e.ctd.Ctr(ctx, nil, args...)
	}
	return e.ctd.Ctr(ctx, stdin, args...)
}

// run is `ctr run --rm` of the busybox image through tether.
func (e *env) run(id string, args ...string) (harness.Result, error) {
	full := append([]string{"run", "--rm", "--runtime", harness.Runtime, harness.BusyboxImageName, id}, args...)
	return e.ctrErr(nil, full...)
}

// runDetached starts a detached container and removes it at the end of the test.
func (e *env) runDetached(id string, args ...string) {
	e.t.Helper()
	full := append([]string{"run", "-d", "--runtime", harness.Runtime, harness.BusyboxImageName, id}, args...)
	e.ctr(full...)
	e.t.Cleanup(func() { e.remove(id) })
}

// remove kills and deletes a container, ignoring what is already gone.
func (e *env) remove(id string) {
	e.ctrErr(nil, "task", "kill", "-a", "-s", "SIGKILL", id)
	e.ctrErr(nil, "task", "rm", "-f", id)
	e.ctrErr(nil, "container", "rm", id)
}

// waitFor polls cond until it holds or timeout (harness.Patience) passes.
func (e *env) waitFor(what string, timeout time.Duration, cond func() bool) {
	e.t.Helper()
	timeout = harness.Patience(timeout)
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// taskStatus is the STATUS column of `ctr task ls` for id, or "" if absent.
func (e *env) taskStatus(id string) string {
	res, err := e.ctrErr(nil, "task", "ls")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(res.Stdout, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			return f[2]
		}
	}
	return ""
}

// bundle is the bundle directory containerd made for id.
func (e *env) bundle(id string) string {
	return filepath.Join(e.ctd.Dir, "state", "io.containerd.runtime.v2.task", e.ctd.Namespace, id)
}
