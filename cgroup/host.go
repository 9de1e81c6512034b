package cgroup

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/containerd/cgroups/v3"
)

// mode is how the host runs cgroups, as cgroups.Mode() of
// github.com/containerd/cgroups/v3 (its light root package) tells it for
// /sys/fs/cgroup; tests give their own.
type mode = cgroups.CGMode

const (
	unavailable = cgroups.Unavailable // no cgroupfs mounted
	legacy      = cgroups.Legacy      // cgroup v1 only
	hybrid      = cgroups.Hybrid      // cgroup v1, with v2 mounted aside at unified/: containers run in v1
	unified     = cgroups.Unified     // cgroup v2 only
)

// Host knows how the host's cgroups are mounted. It reads that once per
// shim, when first needed: the mounts do not move, and mountinfo is long on
// a busy host.
type Host struct {
	root string // where cgroupfs is mounted
	proc string // where procfs is mounted
	mode func() mode
	// mounts maps each v1 controller to its hierarchy's mount.
	mounts func() (map[string]mount, error)
}

// mount is a v1 hierarchy's mount: its mount point, and which directory
// of the hierarchy is mounted there ("/" unless bind-mounted).
type mount struct {
	point, root string
}

// NewHost returns the host's cgroups, mounted at /sys/fs/cgroup.
func NewHost() *Host { return newHost("/sys/fs/cgroup", "/proc") }

// NewHostAt returns the cgroups of a host (another one, or one a test makes
// of files) whose cgroupfs is at root and procfs at proc: cgroup v2 when
// root holds cgroup.controllers, else v1 as proc/self/mountinfo says.
func NewHostAt(root, proc string) *Host {
	h := newHost(root, proc)
	h.mode = func() mode {
		if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
			return unified
		}
		return legacy
	}
	return h
}

func newHost(root, proc string) *Host {
	return &Host{
		root: root,
		proc: proc,
		mode: cgroups.Mode,
		mounts: sync.OnceValues(func() (map[string]mount, error) {
			return v1Mounts(filepath.Join(proc, "self", "mountinfo"))
		}),
	}
}

// Load finds the cgroup of the container whose init is pid.
func (h *Host) Load(pid int) (Cgroup, error) {
	v1paths, v2path, err := procCgroups(filepath.Join(h.proc, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return nil, notFoundIfGone(fmt.Sprintf("cgroup of pid %d", pid), err)
	}
	switch h.mode() {
	case unified:
		if v2path == "" {
			return nil, fmt.Errorf("pid %d has no cgroup v2 path", pid)
		}
		return h.LoadPath(Path{V2: filepath.Join(h.root, filepath.Clean("/"+v2path))})
	case legacy, hybrid:
		mounts, err := h.mounts()
		if err != nil {
			return nil, err
		}
		dirs := map[string]string{}
		for controller, p := range v1paths {
			if m, ok := mounts[controller]; ok {
				if dir := m.dir(p); dir != "" {
					dirs[controller] = dir
				}
			}
		}
		return h.LoadPath(Path{V1: dirs})
	}
	return nil, fmt.Errorf("cgroup of pid %d: no cgroup filesystem at %s", pid, h.root)
}

// LoadPath loads the cgroup at p (from Cgroup.Path). The error wraps
// errdefs.ErrNotFound when it no longer exists.
func (h *Host) LoadPath(p Path) (Cgroup, error) {
	switch {
	case p.V2 != "" && p.V1 != nil:
		return nil, fmt.Errorf("cgroup path %+v is both v1 and v2", p)
	case p.V2 != "":
		if _, err := os.Stat(filepath.Join(p.V2, "cgroup.controllers")); err != nil {
			return nil, notFoundIfGone("load cgroup "+p.V2, err)
		}
		return &v2{dir: p.V2, root: h.root}, nil
	case p.V1["memory"] == "":
		return nil, fmt.Errorf("cgroup path %+v has no memory cgroup", p)
	}
	if _, err := os.Stat(filepath.Join(p.V1["memory"], "memory.oom_control")); err != nil {
		return nil, notFoundIfGone("load cgroup "+p.V1["memory"], err)
	}
	c := &v1{dirs: p.clone().V1}
	if mounts, err := h.mounts(); err == nil {
		if m, ok := mounts["memory"]; ok {
			if below := cgroupPathBelow(m.point, p.V1["memory"]); below != "" {
				c.memcg = filepath.Join(m.root, below)
			}
		}
	}
	return c, nil
}

// cgroupPathBelow is dir's path below mount, where a cgroup hierarchy is
// mounted ("/a/b"); "" when dir is not below it.
func cgroupPathBelow(mount, dir string) string {
	rel, err := filepath.Rel(mount, dir)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return ""
	}
	return "/" + rel
}

// Join moves pid into the cgroup at path (the ShimCgroup option): the v2
// group, or the group of that path in every v1 hierarchy that has it.
func Join(path string, pid int) error { return NewHost().join(path, pid) }

func (h *Host) join(path string, pid int) error {
	procs := []byte(strconv.Itoa(pid))
	switch h.mode() {
	case unified:
		if err := os.WriteFile(filepath.Join(h.root, filepath.Clean("/"+path), "cgroup.procs"), procs, 0); err != nil {
			return fmt.Errorf("join shim cgroup %s: %w", path, err)
		}
		return nil
	case unavailable:
		return fmt.Errorf("join shim cgroup %s: no cgroup filesystem at %s", path, h.root)
	}
	mounts, err := h.mounts()
	if err != nil {
		return fmt.Errorf("join shim cgroup %s: %w", path, err)
	}
	joined := map[string]bool{}
	for _, m := range mounts {
		dir := m.dir(path)
		if dir == "" || joined[dir] {
			continue
		}
		if _, err := os.Stat(dir); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), procs, 0); err != nil {
			return fmt.Errorf("join shim cgroup %s: %w", dir, err)
		}
		joined[dir] = true
	}
	if len(joined) == 0 {
		return fmt.Errorf("shim cgroup %s exists in no cgroup hierarchy", path)
	}
	return nil
}

// dir is where the cgroup at path (as /proc/PID/cgroup names it, from the
// hierarchy's root) is below the mount; "" when the mount does not show it.
func (m mount) dir(path string) string {
	path = filepath.Clean("/" + path)
	if m.root != "/" {
		rel, ok := strings.CutPrefix(path, m.root)
		if !ok || (rel != "" && rel[0] != '/') {
			return ""
		}
		path = rel
	}
	return filepath.Join(m.point, path)
}

// procCgroups parses /proc/PID/cgroup: v1 controller -> path (named
// hierarchies keep their "name=" prefix, as in mountinfo), and the v2 path
// ("" if none).
func procCgroups(path string) (v1 map[string]string, v2 string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, "", err
	}
	v1 = map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[1] == "" {
			v2 = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			v1[c] = parts[2]
		}
	}
	return v1, v2, nil
}

// v1Mounts maps each cgroup v1 controller to its hierarchy's mount,
// preferring a mount of the whole hierarchy over a bind mount of part of it.
func v1Mounts(mountinfo string) (map[string]mount, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("cgroup mounts: %w", err)
	}
	defer f.Close()
	mounts := map[string]mount{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint options ... - fstype source superoptions
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 || tail[0] != "cgroup" {
			continue
		}
		m := mount{point: fields[4], root: fields[3]}
		for _, opt := range strings.Split(tail[2], ",") {
			if opt == "rw" || opt == "ro" || (strings.Contains(opt, "=") && !strings.HasPrefix(opt, "name=")) {
				continue
			}
			if old, ok := mounts[opt]; !ok || (old.root != "/" && m.root == "/") {
				mounts[opt] = m
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cgroup mounts: read %s: %w", mountinfo, err)
	}
	return mounts, nil
}
