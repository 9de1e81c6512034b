package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// The Debian package (make deb, packaging/deb) upgrades a live node: its
// postinst moves the running shims onto the binary it installed. Installing
// a package is machine-wide: the test refuses to run where a tether package
// or a /usr/bin/containerd-shim-tether-v2 is there already, points the
// postinst at its own containerd only, and purges the package at the end.

const (
	debPackage = "tether"
	debBinary  = "/usr/bin/containerd-shim-tether-v2"
)

// debInstalled is the package's dpkg status ("" if dpkg knows none).
func debInstalled() string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", debPackage).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// aptGet runs apt-get as a user would, waiting for another dpkg user of
// the machine rather than failing, with env added to its environment (the
// maintainer scripts see it).
func aptGet(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	full := append([]string{"-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600"}, args...)
	cmd := exec.CommandContext(ctx, "apt-get", full...)
	cmd.Env = append(append(os.Environ(), "DEBIAN_FRONTEND=noninteractive"), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// buildDeb builds tether at version into a package of debVersion.
func buildDeb(t *testing.T, dir, version, debVersion string, x ...string) string {
	t.Helper()
	binDir := filepath.Join(dir, version)
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := buildTether(t, binDir, "containerd-shim-tether-v2", version, x...)
	root, _ := filepath.Abs("..")
	cmd := exec.Command("go", "run", "./packaging/deb", "-binary", bin, "-version", debVersion, "-root", root, "-out", binDir)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build the package: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// TestDebianPackageUpgradesALiveNode: version N of the package is
// installed, containers run on its shims, N+1 is installed over it: the
// postinst moves the shims onto N+1 (same shim and container pids, an
// attached container's output without a gap). Then N+2, whose binary cannot
// take a shim back, is installed: the install succeeds, the postinst says
// the move was rolled back, and the shims carry on, on N+1. Removing the
// package leaves only its conffile; purging leaves nothing.
func TestDebianPackageUpgradesALiveNode(t *testing.T) {
	e := setup(t)
	if status := debInstalled(); status != "" {
		t.Skipf("SKIPPED: dpkg knows a %s package here (%s); the test installs and purges its own and leaves this one alone", debPackage, status)
	}
	if _, err := os.Stat(debBinary); err == nil {
		t.Skipf("SKIPPED: %s exists outside the package; the test would replace it", debBinary)
	}
	dir := t.TempDir()
	debs := []string{
		buildDeb(t, dir, "deb-1", "1.0~test1"),
		buildDeb(t, dir, "deb-2", "1.0~test2"),
		buildDeb(t, dir, "deb-3", "1.0~test3", "testCrashOnRestore=yes"),
	}
	t.Cleanup(func() {
		if debInstalled() != "" {
			out, err := aptGet(t, nil, "purge", debPackage)
			t.Logf("purge at the end: %v\n%s", err, out)
		}
	})

	// A containerd of the test's own whose shims are the package's binary.
	ctdDir := filepath.Join(dir, "containerd")
	if err := os.MkdirAll(ctdDir, 0o711); err != nil {
		t.Fatal(err)
	}
	ns := fmt.Sprintf("tether-deb-%d", os.Getpid())
	ctd, err := harness.Start(harness.Options{ContainerdBinary: e.ctd.ContainerdBinary, CtrBinary: e.ctd.CtrBinary,
		ShimDir: filepath.Dir(debBinary), Dir: ctdDir, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	c := &env{t: t, ctd: ctd}
	ids := []string{"counter", "sleeper"}
	t.Cleanup(func() {
		for _, id := range ids {
			c.remove(id)
		}
		if t.Failed() {
			t.Logf("containerd log:\n%s", ctd.Log())
		}
		ctd.Stop()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := ctd.ImportBusybox(ctx, suite.busybox); err != nil {
		t.Fatal(err)
	}

	install := func(deb string) string {
		t.Helper()
		// The postinst moves the shims of this containerd only: by its
		// address where the binary can scope an upgrade so, by the
		// namespace of the test's own otherwise.
		scope := "-namespace " + ns
		if help, _ := exec.Command(debBinary, "upgrade", "-h").CombinedOutput(); strings.Contains(string(help), "-address") {
			scope = "-address " + ctd.Address
		}
		out, err := aptGet(t, []string{"TETHER_UPGRADE_SCOPE=" + scope}, "install", deb)
		if err != nil {
			t.Fatalf("apt-get install %s: %v\n%s", deb, err, out)
		}
		return out
	}
	install(debs[0])
	if status := debInstalled(); status != "ii" {
		t.Fatalf("after installing %s: dpkg status %q", debs[0], status)
	}

	// An attached container printing a numbered line every 10 ms until
	// told to stop, and a sleeping one.
	counter := ctd.CtrCommand(ctx, "run", "--rm", "--runtime", harness.Runtime, harness.BusyboxImageName, "counter",
		"sh", "-c", "i=0; while [ ! -e /stop ]; do echo n$i; i=$((i+1)); usleep 10000; done; exit 3")
	out, _ := counter.StdoutPipe()
	if err := counter.Start(); err != nil {
		t.Fatal(err)
	}
	numbered := collect(out)
	c.ctr("run", "-d", "--runtime", harness.Runtime, harness.BusyboxImageName, "sleeper", "sleep", "100000")
	numbered.waitFor(t, "n20")
	shims, pids := map[string]int{}, map[string]int{}
	for _, id := range ids {
		p := shimsFor(id)
		if len(p) != 1 || p[0].cmdline[0] != debBinary {
			t.Fatalf("shim of %s: %v, want one started from %s", id, p, debBinary)
		}
		shims[id], pids[id] = p[0].pid, c.initPid(id)
	}
	checkShims := func(version string) {
		t.Helper()
		for _, id := range ids {
			if p := shimsFor(id); len(p) != 1 || p[0].pid != shims[id] {
				t.Fatalf("shim of %s: %v, want pid %d still", id, p, shims[id])
			}
			if pid := c.initPid(id); pid != pids[id] {
				t.Fatalf("%s's pid is %d, was %d", id, pid, pids[id])
			}
			if v := shimVersion(t, ctd, id); v != version {
				t.Fatalf("shim of %s serves as %s, want %s", id, v, version)
			}
		}
	}
	checkShims("deb-1")

	// N+1: the postinst moves both shims.
	log := install(debs[1])
	t.Logf("installing %s:\n%s", filepath.Base(debs[1]), log)
	if strings.Count(log, "result=ok") != len(ids) || !strings.Contains(log, "tether: running shims moved") {
		t.Fatalf("the postinst did not move the %d shims:\n%s", len(ids), log)
	}
	checkShims("deb-2")
	for id, pid := range shims {
		if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe")); exe != debBinary {
			t.Fatalf("shim of %s runs %q, want the installed %s", id, exe, debBinary)
		}
	}

	// N+2 cannot take a shim back: rolled back, said, installed anyway.
	log = install(debs[2])
	t.Logf("installing %s:\n%s", filepath.Base(debs[2]), log)
	if !strings.Contains(log, "result=failed") || !strings.Contains(log, "were rolled back") {
		t.Fatalf("the postinst did not report the failed move:\n%s", log)
	}
	if status := debInstalled(); status != "ii" {
		t.Fatalf("after a failed move: dpkg status %q, want installed", status)
	}
	checkShims("deb-2")
	if res := c.ctr("task", "exec", "--exec-id", "after", "sleeper", "echo", "served"); res.Stdout != "served\n" {
		t.Fatalf("exec after the upgrades: %q", res.Stdout)
	}

	// The attached container's output went on, whole, across both.
	seen := len(numbered.sofar())
	numbered.waitFor(t, "n"+strconv.Itoa(seen+20))
	touchStop(t, c.ctr("task", "ls").Stdout, "counter")
	err = counter.Wait()
	if code := counter.ProcessState.ExitCode(); code != 3 {
		t.Fatalf("the attached container: %v, exit %d, want 3", err, code)
	}
	got := numbered.all()
	for i, line := range got {
		if line != "n"+strconv.Itoa(i) {
			t.Fatalf("attached output: line %d is %q (of %d), want n%d", i, line, len(got), i)
		}
	}
	t.Logf("the attached container printed %d lines, none lost or doubled", len(got))

	// Remove: only the conffile stays. Purge: nothing.
	c.remove("sleeper")
	if out, err := aptGet(t, nil, "remove", debPackage); err != nil {
		t.Fatalf("apt-get remove: %v\n%s", err, out)
	}
	leftovers := debLeftovers()
	t.Logf("after remove: dpkg status %q, left: %v", debInstalled(), leftovers)
	if debInstalled() != "rc" || strings.Join(leftovers, " ") != "/etc/default/tether" {
		t.Fatalf("after remove: status %q, left %v; want the conffile alone", debInstalled(), leftovers)
	}
	if out, err := aptGet(t, nil, "purge", debPackage); err != nil {
		t.Fatalf("apt-get purge: %v\n%s", err, out)
	}
	leftovers = debLeftovers()
	t.Logf("after purge: dpkg status %q, left: %v", debInstalled(), leftovers)
	if debInstalled() != "" || len(leftovers) != 0 {
		t.Fatalf("after purge: status %q, left %v; want nothing", debInstalled(), leftovers)
	}
}

// debPaths is every path the test's packages install.
var debPaths = []string{debBinary, "/etc/default/tether", "/usr/share/doc/tether"}

// debLeftovers are the package's paths that exist.
func debLeftovers() []string {
	var left []string
	for _, p := range debPaths {
		if _, err := os.Lstat(p); err == nil {
			left = append(left, p)
		}
	}
	return left
}

// shimVersion is the version the shim serving id reports.
func shimVersion(t *testing.T, ctd *harness.Containerd, id string) string {
	t.Helper()
	client, err := ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	resp, err := client.Connect(context.Background(), &task.ConnectRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetVersion()
}

// sofar is every line printed until now.
func (l *lines) sofar() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.got...)
}
