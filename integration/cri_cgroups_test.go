package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/tether-shim/tether/integration/harness"
)

// podCgroupPath is the pod's cgroup parent as a path from the hierarchy's
// root: the slice's, as systemd says (systemd driver), or the parent itself.
func (c *criEnv) podCgroupPath(parent string) string {
	c.t.Helper()
	if suite.driver != harness.Systemd {
		return parent
	}
	return c.unitCgroup(parent)
}

// unitCgroup is the ControlGroup systemd gives unit ("" if none).
func (c *criEnv) unitCgroup(unit string) string {
	c.t.Helper()
	out, err := exec.Command("systemctl", "show", "-p", "ControlGroup", "--value", unit).Output()
	if err != nil {
		c.t.Fatalf("systemctl show %s: %v", unit, err)
	}
	return strings.TrimSpace(string(out))
}

// checkHolderPlacement checks that a pause-less pod's holder is in a cgroup
// of its own below the pod's cgroup parent, where a pause container would
// be: the scope tether-holder-ID.scope that systemd started in the pod's
// slice (systemd driver), or PARENT/tether-holder-ID (cgroupfs); and the
// pod's cgroups as checkPodCgroups says.
func (c *criEnv) checkHolderPlacement(holder int, sandbox, parent string) {
	c.t.Helper()
	want := filepath.Join(c.podCgroupPath(parent), "tether-holder-"+sandbox)
	if suite.driver == harness.Systemd {
		want += ".scope"
	}
	if got := strings.TrimPrefix(cgroupDir(c.t, holder, "memory"), cgroupRoot()); got != want {
		c.t.Fatalf("holder %d in cgroup %s, want %s", holder, got, want)
	}
	c.checkPodCgroups(parent)
}

// checkPodCgroups checks, with the systemd driver, that every process
// below the pod's slice is in a scope systemd knows (a holder's, the
// containers' own): none in a cgroup systemd did not make.
func (c *criEnv) checkPodCgroups(parent string) {
	c.t.Helper()
	if suite.driver != harness.Systemd {
		return
	}
	pod := c.podCgroupPath(parent)
	filepath.WalkDir(filepath.Join(cgroupRoot(), pod), func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		procs, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if len(strings.TrimSpace(string(procs))) == 0 {
			return nil
		}
		rel := strings.TrimPrefix(path, cgroupRoot())
		if unit := filepath.Base(path); !strings.HasSuffix(unit, ".scope") || c.unitCgroup(unit) != rel {
			c.t.Errorf("processes %q in %s, a cgroup systemd does not know as a unit of its own", strings.Fields(string(procs)), rel)
		}
		return nil
	})
}

// checkHolderCgroupGone checks that the holder's cgroup (or scope) went
// with the pod.
func (c *criEnv) checkHolderCgroupGone(sandbox, parent string) {
	c.t.Helper()
	name := "tether-holder-" + sandbox
	if suite.driver == harness.Systemd {
		name += ".scope"
		if cg := c.unitCgroup(name); cg != "" {
			c.t.Errorf("the holder's scope %s is still there (cgroup %s)", name, cg)
		}
	}
	dir := filepath.Join(cgroupRoot(), c.podCgroupPath(parent), name)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		c.t.Errorf("the holder's cgroup %s is left (%v)", dir, err)
	}
}
