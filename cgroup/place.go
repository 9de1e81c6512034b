package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PlaceInParent moves pid, a process of the shim's own (a pod's holder),
// into the cgroup name below a cgroupfs cgroup parent (a path from the
// hierarchies' root, as runc's cgroupfs driver takes it): made in the v2
// hierarchy, or in every v1 hierarchy, as runc makes a container's. It
// returns the directories it made (some, on an error), for RemoveDirs once
// pid has exited. (A systemd slice parent takes a scope instead: package
// systemd.)
func (h *Host) PlaceInParent(parent, name string, pid int) ([]string, error) {
	path, err := parentPath(parent)
	if err != nil {
		return nil, err
	}
	path = filepath.Join(path, filepath.Clean("/"+name))
	var dirs []string
	switch h.mode() {
	case unified:
		dirs = []string{filepath.Join(h.root, path)}
	case legacy, hybrid:
		mounts, err := h.mounts()
		if err != nil {
			return nil, fmt.Errorf("place pid %d in %s: %w", pid, path, err)
		}
		seen := map[string]bool{}
		for c, m := range mounts {
			dir := m.dir(path)
			if dir == "" || seen[dir] {
				continue
			}
			seen[dir] = true
			dirs = append(dirs, dir)
			if c == "cpuset" {
				// A new v1 cpuset group has no CPUs and memory nodes: no
				// process may join it until they are copied from its parent
				// (runc does the same).
				if err := makeCpuset(m.point, dir); err != nil {
					return nil, fmt.Errorf("place pid %d: %w", pid, err)
				}
			}
		}
	default:
		return nil, fmt.Errorf("place pid %d in %s: no cgroup filesystem at %s", pid, path, h.root)
	}
	for i, dir := range dirs {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return dirs[:i], fmt.Errorf("place pid %d: %w", pid, err)
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return dirs[:i+1], fmt.Errorf("place pid %d in %s: %w", pid, dir, err)
		}
	}
	return dirs, nil
}

// makeCpuset makes the v1 cpuset group dir (below the hierarchy's mount
// point) and every missing group on the way, each with its parent's CPUs
// and memory nodes.
func makeCpuset(point, dir string) error {
	rel, err := filepath.Rel(point, dir)
	if err != nil {
		return err
	}
	parent := point
	for _, elem := range strings.Split(rel, string(filepath.Separator)) {
		d := filepath.Join(parent, elem)
		if err := os.Mkdir(d, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if cur, _ := os.ReadFile(filepath.Join(d, f)); len(strings.TrimSpace(string(cur))) > 0 {
				continue
			}
			value, err := os.ReadFile(filepath.Join(parent, f))
			if err != nil {
				return fmt.Errorf("cpuset of %s: %w", parent, err)
			}
			if err := os.WriteFile(filepath.Join(d, f), value, 0); err != nil {
				return fmt.Errorf("cpuset of %s: %w", d, err)
			}
		}
		parent = d
	}
	return nil
}

// RemoveDirs removes cgroup directories PlaceInParent made, whose
// processes have exited; one already gone is no error.
func RemoveDirs(dirs []string) error {
	var errs []error
	for _, dir := range dirs {
		if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}
