package cgroup

import (
	"fmt"
	"path/filepath"
	"strings"
)

// LoadParent loads the cgroup a pod's containers are created under, as the
// CRI's linux.cgroup_parent names it: a path from the hierarchies' root
// (runc's cgroupfs driver), or a systemd slice name, which stands for its
// place in the slice tree ("kubepods-besteffort-pod1.slice" is
// /kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice).
// The error wraps errdefs.ErrNotFound while the cgroup does not exist.
func (h *Host) LoadParent(parent string) (Cgroup, error) {
	path, err := parentPath(parent)
	if err != nil {
		return nil, err
	}
	switch h.mode() {
	case unified:
		return h.LoadPath(Path{V2: filepath.Join(h.root, path)})
	case legacy, hybrid:
		mounts, err := h.mounts()
		if err != nil {
			return nil, fmt.Errorf("cgroup parent %s: %w", parent, err)
		}
		dirs := map[string]string{}
		for controller, m := range mounts {
			if dir := m.dir(path); dir != "" {
				dirs[controller] = dir
			}
		}
		return h.LoadPath(Path{V1: dirs})
	}
	return nil, fmt.Errorf("cgroup parent %s: no cgroup filesystem at %s", parent, h.root)
}

// parentPath is the path from the hierarchies' root that a cgroup parent
// names.
func parentPath(parent string) (string, error) {
	if parent == "" {
		return "", fmt.Errorf("empty cgroup parent")
	}
	if strings.Contains(parent, "/") || !strings.HasSuffix(parent, ".slice") {
		return filepath.Clean("/" + parent), nil
	}
	return expandSlice(parent)
}

// expandSlice turns a systemd slice name into its path, as systemd (and
// runc's systemd driver) lay slices out: each dash-separated prefix is a
// parent slice; "-.slice" is the root.
func expandSlice(slice string) (string, error) {
	name := strings.TrimSuffix(slice, ".slice")
	if name == "-" {
		return "/", nil
	}
	var path, prefix string
	for _, part := range strings.Split(name, "-") {
		if part == "" {
			return "", fmt.Errorf("invalid slice name %q", slice)
		}
		path += "/" + prefix + part + ".slice"
		prefix += part + "-"
	}
	return path, nil
}
