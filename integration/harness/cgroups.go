package harness

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// CgroupDriverEnv selects how the suite's containers get their cgroups:
// "cgroupfs" (runc writes cgroupfs itself; the default) or "systemd"
// (SystemdCgroup = true: runc asks systemd for a scope, as on a Kubernetes
// node configured by kubeadm). The systemd driver needs systemd as PID 1:
// the VM lane (make vm-check) runs the suites with both.
const CgroupDriverEnv = "TETHER_CGROUP_DRIVER"

// CgroupDriver is a cgroup driver: Cgroupfs or Systemd.
type CgroupDriver string

const (
	Cgroupfs CgroupDriver = "cgroupfs"
	Systemd  CgroupDriver = "systemd"
)

// CgroupDriverFromEnv reads CgroupDriverEnv ("" is Cgroupfs).
func CgroupDriverFromEnv() (CgroupDriver, error) {
	switch d := CgroupDriver(os.Getenv(CgroupDriverEnv)); d {
	case "", Cgroupfs:
		return Cgroupfs, nil
	case Systemd:
		return Systemd, nil
	default:
		return "", fmt.Errorf("%s=%q: want %q or %q", CgroupDriverEnv, d, Cgroupfs, Systemd)
	}
}

// SystemdCgroup is the value of the SystemdCgroup runtime option for d.
func (d CgroupDriver) SystemdCgroup() bool { return d == Systemd }

// OptionLine is d as a line of a runtime options file (TOML).
func (d CgroupDriver) OptionLine() string {
	return fmt.Sprintf("SystemdCgroup = %t\n", d.SystemdCgroup())
}

// PodCgroupParent is the cgroup parent the kubelet gives a BestEffort pod
// with uid: with the systemd driver a slice named after its place in the
// slice tree (dashes in the uid become underscores, as the kubelet escapes
// them); with cgroupfs the path of the same place.
func (d CgroupDriver) PodCgroupParent(uid string) string {
	if d == Systemd {
		return "kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice"
	}
	return "/kubepods/besteffort/pod" + uid
}

// containerSlice is where ctr-run containers go with the systemd driver
// (ctr's --cgroup slice:prefix:name), as containerd.service's own do.
const containerSlice = "system.slice"

// CtrScope is the systemd scope a container run by ctr with the systemd
// driver lands in (runc names it PREFIX-NAME.scope).
func CtrScope(namespace, id string) string {
	return containerSlice + "/" + namespace + "-" + id + ".scope"
}

// systemdRunArgs places a `ctr run` of this containerd's namespace with the
// systemd driver: it adds --cgroup slice:prefix:id, and SystemdCgroup =
// true to the runtime options (a --runtime-config-path file without a
// SystemdCgroup line is copied with one added; none means one with only
// that line). The container's id is the argument after the image, which
// every run of the suite names from the images the harness builds.
func (c *Containerd) systemdRunArgs(args []string) ([]string, error) {
	at := slices.IndexFunc(args, func(a string) bool { return strings.HasPrefix(a, imagePrefix) })
	if at < 0 || at+1 >= len(args) {
		return nil, fmt.Errorf("ctr %v: no image of the harness and id to place in a systemd scope", args)
	}
	id := args[at+1]
	var flags []string
	if !slices.Contains(args[:at], "--cgroup") { // a test's own placement stays
		flags = []string{"--cgroup", containerSlice + ":" + c.Namespace + ":" + id}
	}
	if i := slices.Index(args, "--runtime-config-path"); i >= 0 && i+1 < at {
		path, err := c.withSystemdCgroup(args[i+1])
		if err != nil {
			return nil, err
		}
		args = slices.Clone(args)
		args[i+1] = path
	} else {
		flags = append(flags, "--runtime-config-path", filepath.Join(c.Dir, "systemd-cgroup.toml"))
	}
	return slices.Concat(args[:at], flags, args[at:]), nil
}

// withSystemdCgroup returns an options file like path that sets
// SystemdCgroup: path itself if it sets it (to anything), else a copy
// with SystemdCgroup = true added.
func (c *Containerd) withSystemdCgroup(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("runtime options: %w", err)
	}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		if key, _, ok := strings.Cut(sc.Text(), "="); ok && strings.TrimSpace(key) == "SystemdCgroup" {
			return path, nil
		}
	}
	out := path + ".systemd.toml"
	return out, os.WriteFile(out, append(data, []byte("\n"+Systemd.OptionLine())...), 0o644)
}

// StopUnit stops a systemd unit (a pod's slice the kubelet would remove),
// ignoring one that is not loaded.
func StopUnit(unit string) error {
	out, err := exec.Command("systemctl", "stop", unit).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "not loaded") {
		return fmt.Errorf("systemctl stop %s: %v: %s", unit, err, out)
	}
	return nil
}
