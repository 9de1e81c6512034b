package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tether-shim/tether/integration/harness"
)

// runtimeConfig writes a runtime options file in the form containerd's CRI
// plugin and `ctr --runtime-config-path` hand to a non-runc runtime.
func (e *env) runtimeConfig(toml string) string {
	e.t.Helper()
	path := filepath.Join(e.t.TempDir(), "tether.toml")
	if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return path
}

// makeCrunRunnable: crun refuses a cgroup-v1 host whose unified hierarchy
// still offers controllers (this VM's hybrid mode offers hugetlb). Binding
// those controllers to v1 hierarchies of their own lets crun run; the host
// uses none of them in v2.
func makeCrunRunnable(t *testing.T) {
	t.Helper()
	data, err := os.ReadFile("/sys/fs/cgroup/unified/cgroup.controllers")
	if err != nil {
		return // not hybrid
	}
	for _, c := range strings.Fields(string(data)) {
		dir := filepath.Join("/sys/fs/cgroup", c)
		t.Logf("binding cgroup controller %s to a v1 hierarchy at %s so that crun accepts the hybrid host", c, dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("mount", "-t", "cgroup", "-o", c, "cgroup", dir).CombinedOutput(); err != nil {
			t.Fatalf("mount %s cgroup: %v: %s", c, err, out)
		}
	}
}

// TestCrunThroughRuntimeOptions: BinaryName and Root from the options file
// run the container with crun, with its state under that root.
func TestCrunThroughRuntimeOptions(t *testing.T) {
	e := setup(t)
	if _, err := exec.LookPath("crun"); err != nil {
		t.Fatalf("crun is not installed (make deps installs it): %v", err)
	}
	makeCrunRunnable(t)
	root := t.TempDir()
	cfg := e.runtimeConfig("BinaryName = \"crun\"\nRoot = \"" + root + "\"\n")
	id := e.id("crun")
	t.Cleanup(func() { e.remove(id) })
	res, err := e.ctrErr(nil, "run", "-d", "--runtime", harness.Runtime, "--runtime-config-path", cfg, harness.BusyboxImageName, id, "sleep", "1000")
	if e.ctd.Major >= 2 {
		// Debian 12's crun (1.8.1) predates the OCI spec version containerd
		// 2.x writes and refuses it; containerd's own runc shim gets the
		// same. What tether can show is that the options took crun there
		// and that crun's own words come back.
		if err == nil || !strings.Contains(res.Stderr, "unknown version specified") || !strings.Contains(res.Stderr, "crun") {
			t.Fatalf("crun with containerd 2.x: %v, stderr %q; want crun's own refusal", err, res.Stderr)
		}
		t.Logf("NOTE: crun 1.8.1 cannot run containerd %d.x's spec; the options reached it: %s", e.ctd.Major, strings.TrimSpace(res.Stderr))
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, e.ctd.Namespace, id)); err != nil {
		t.Fatalf("no crun state under the configured root: %v", err)
	}
	res = e.ctr("task", "exec", "--exec-id", "x", id, "sh", "-c", "echo exec via crun")
	if res.Stdout != "exec via crun\n" {
		t.Fatalf("exec stdout %q", res.Stdout)
	}
	out, err := exec.Command("crun", "--root", filepath.Join(root, e.ctd.Namespace), "list").CombinedOutput()
	if err != nil || !strings.Contains(string(out), id) {
		t.Fatalf("crun list does not show %s: %v\n%s", id, err, out)
	}
	e.ctr("task", "kill", "-s", "SIGKILL", id)
	e.waitFor("crun task to stop", 20e9, func() bool { return e.taskStatus(id) == "STOPPED" })
	e.ctr("task", "rm", id)
	if _, err := os.Stat(filepath.Join(root, e.ctd.Namespace, id)); !os.IsNotExist(err) {
		t.Fatalf("crun state left after delete: %v", err)
	}
}

// TestIoOwnerAndShimCgroupOptions: IoUid/IoGid own the process's pipes
// (runc then hands the owner uid to the container's user, so the group is
// what shows); ShimCgroup (read by start from its stdin) places the shim.
func TestIoOwnerAndShimCgroupOptions(t *testing.T) {
	e := setup(t)
	shimCgroup := "/tether-it-shim-" + strconv.Itoa(os.Getpid())
	dirs := []string{filepath.Join("/sys/fs/cgroup", shimCgroup)}
	if !unifiedCgroups() {
		dirs = nil
		for _, c := range []string{"memory", "pids", "cpu"} {
			dirs = append(dirs, filepath.Join("/sys/fs/cgroup", c, shimCgroup))
		}
	}
	for _, dir := range dirs {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(dir) })
	}
	cfg := e.runtimeConfig("IoUid = 1234\nIoGid = 4321\nShimCgroup = \"" + shimCgroup + "\"\n")
	id := e.id("ioowner")
	e.ctr("run", "-d", "--runtime", harness.Runtime, "--runtime-config-path", cfg, harness.BusyboxImageName, id, "sleep", "1000")
	t.Cleanup(func() { e.remove(id) })
	res := e.ctr("task", "exec", "--exec-id", "stat", id, "sh", "-c", "stat -L -c '%g' /proc/1/fd/1 /proc/1/fd/2")
	if got := strings.Fields(res.Stdout); len(got) != 2 || got[0] != "4321" || got[1] != "4321" {
		t.Errorf("init stdout and stderr pipes have group %q, want 4321", got)
	}
	shims := shimsFor(id)
	if len(shims) != 1 {
		t.Fatalf("shims for %s: %v", id, shims)
	}
	if got := cgroupDir(t, shims[0].pid, "memory"); got != dirs[0] {
		t.Errorf("shim cgroup %s, want %s", got, dirs[0])
	}
	e.remove(id)
}

// TestSystemdCgroupOptionReachesRuntime: SystemdCgroup = true reaches runc.
// On a host without systemd runc must fail, and say so; with systemd as
// init (the VM lane) the container runs in the scope runc asked systemd
// for, which goes with it.
func TestSystemdCgroupOptionReachesRuntime(t *testing.T) {
	e := setup(t)
	cfg := e.runtimeConfig("SystemdCgroup = true\n")
	id := e.id("systemd")
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		e.ctr("run", "-d", "--runtime", harness.Runtime, "--runtime-config-path", cfg,
			"--cgroup", "system.slice:"+e.ctd.Namespace+":"+id, harness.BusyboxImageName, id, "sleep", "1000")
		t.Cleanup(func() { e.remove(id) })
		pid := e.initPid(id)
		scope := harness.CtrScope(e.ctd.Namespace, id)
		if got := cgroupDir(t, pid, "memory"); got != filepath.Join(cgroupRoot(), scope) {
			t.Fatalf("container in %s, want the scope %s", got, scope)
		}
		if out, err := exec.Command("systemctl", "is-active", filepath.Base(scope)).Output(); err != nil || strings.TrimSpace(string(out)) != "active" {
			t.Fatalf("systemctl is-active %s: %q %v", filepath.Base(scope), out, err)
		}
		e.remove(id)
		if _, err := os.Stat(filepath.Join(cgroupRoot(), scope)); !os.IsNotExist(err) {
			t.Fatalf("the scope's cgroup is left after delete: %v", err)
		}
		return
	}
	res, err := e.ctrErr(nil, "run", "--rm", "--runtime", harness.Runtime, "--runtime-config-path", cfg, harness.BusyboxImageName, id, "true")
	defer e.remove(id)
	if err == nil || !strings.Contains(strings.ToLower(res.Stderr), "systemd") && !strings.Contains(strings.ToLower(res.Stderr), "dbus") {
		t.Fatalf("run with SystemdCgroup on a host without systemd: %v, stderr %q; want runc's systemd error", err, res.Stderr)
	}
}

// TestUnknownOptionsAreRefused: a typo in the options is an error, not ignored.
func TestUnknownOptionsAreRefused(t *testing.T) {
	e := setup(t)
	cfg := e.runtimeConfig("BinaryNmae = \"crun\"\n")
	id := e.id("badopts")
	res, err := e.ctrErr(nil, "run", "--rm", "--runtime", harness.Runtime, "--runtime-config-path", cfg, harness.BusyboxImageName, id, "true")
	defer e.remove(id)
	if err == nil || !strings.Contains(res.Stderr, "BinaryNmae") {
		t.Fatalf("run with an unknown option: %v, stderr %q", err, res.Stderr)
	}
}
