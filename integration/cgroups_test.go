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

// unifiedCgroups says whether the host runs cgroup v2 only, as a
// Kubernetes node does (the VM lane); else cgroup v1 (this machine's
// hybrid: containers in v1).
func unifiedCgroups() bool {
	_, err := os.Stat("/sys/fs/cgroup/cgroup.controllers")
	return err == nil
}

// cgroupDir is the cgroup directory of pid: on cgroup v2 its one group
// (whatever controller), on v1 its group in controller's hierarchy.
func cgroupDir(t *testing.T, pid int, controller string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cgroup"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if unifiedCgroups() {
			if parts[0] == "0" && parts[1] == "" {
				return filepath.Join("/sys/fs/cgroup", parts[2])
			}
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			if c == controller {
				return filepath.Join("/sys/fs/cgroup", controller, parts[2])
			}
		}
	}
	t.Fatalf("pid %d has no %s cgroup", pid, controller)
	return ""
}

// ctrCgroup is the cgroup (from the hierarchy's root) a container run by
// ctr in namespace ns gets from the suite's driver: ctr's default path, or
// the systemd scope runc asks systemd for.
func ctrCgroup(ns, id string) string {
	if suite.driver == harness.Systemd {
		return "/" + harness.CtrScope(ns, id)
	}
	return "/" + ns + "/" + id
}

// checkPlacement fails unless the container's init pid is in the cgroup
// its driver puts it in, and (systemd) systemd knows that cgroup as the
// container's scope, active, holding the container's processes.
func (e *env) checkPlacement(id string, pid int) {
	e.t.Helper()
	want := ctrCgroup(e.ctd.Namespace, id)
	if got := strings.TrimPrefix(cgroupDir(e.t, pid, "memory"), cgroupRoot()); got != want {
		e.t.Fatalf("container %s (pid %d) is in cgroup %s, want %s (driver %s)", id, pid, got, want, suite.driver)
	}
	if suite.driver != harness.Systemd {
		return
	}
	unit := filepath.Base(want)
	out, err := exec.Command("systemctl", "show", "-p", "ActiveState", "-p", "ControlGroup", unit).Output()
	if err != nil || !strings.Contains(string(out), "ActiveState=active\n") || !strings.Contains(string(out), "ControlGroup="+want+"\n") {
		e.t.Fatalf("systemd's view of %s: %q (%v), want active with cgroup %s", unit, out, err, want)
	}
}

// cgroupRoot is where cgroupDir's paths begin: the v2 mount, or the
// memory hierarchy's (checkPlacement compares the rest).
func cgroupRoot() string {
	if unifiedCgroups() {
		return "/sys/fs/cgroup"
	}
	return "/sys/fs/cgroup/memory"
}
