package cgroup

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/tether-shim/tether/internal/systemd"
)

// Place moves pid, a process of the shim's own (a pod's holder), into a
// cgroup of its own, name, below a pod's cgroup parent, before any of the
// pod's containers is there. With a systemd slice parent (decided by its
// last element's ".slice", as containerd's CRI decides its containers'
// cgroup paths) that is the scope NAME.scope, which systemd starts in the
// slice for pid (systemd must know every process of its slices; the scope
// goes when pid exits). With a cgroupfs parent it is PARENT/NAME, made as
// placeInParent says, and Place returns the directories made (some, on an
// error) for RemoveDirs once pid has exited.
func (h *Host) Place(ctx context.Context, parent, name string, pid int) ([]string, error) {
	if slice := path.Base(parent); strings.HasSuffix(slice, ".slice") {
		return nil, systemd.StartScope(ctx, name+".scope", slice, pid, "tether: "+name)
	}
	return h.placeInParent(parent, name, pid)
}

// placeInParent moves pid into the cgroup name below a cgroupfs cgroup
// parent (a path from the hierarchies' root, as runc's cgroupfs driver
// takes it): made in the v2 hierarchy, or in every v1 hierarchy, as runc
// makes a container's.
func (h *Host) placeInParent(parent, name string, pid int) ([]string, error) {
	at, err := parentPath(parent)
	if err != nil {
		return nil, err
	}
	at = filepath.Join(at, filepath.Clean("/"+name))
	var dirs []string
	switch h.mode() {
	case unified:
		dirs = []string{filepath.Join(h.root, at)}
	case legacy, hybrid:
		mounts, err := h.mounts()
		if err != nil {
			return nil, fmt.Errorf("place pid %d in %s: %w", pid, at, err)
		}
		seen := map[string]bool{}
		for c, m := range mounts {
			dir := m.dir(at)
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
		return nil, fmt.Errorf("place pid %d in %s: no cgroup filesystem at %s", pid, at, h.root)
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

// RemoveDirs removes cgroup directories Place made, whose
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
