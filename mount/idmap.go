package mount

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// idmapDirPattern names the directories idmapped lower layers are attached
// in, in the bundle (os.MkdirTemp and filepath.Glob read it alike).
const idmapDirPattern = "idmapped-lower-*"

// idMappings are the uid and gid mappings of a mount's uidmap= and gidmap=
// options: "container-id:host-id:size", comma-separated.
type idMappings struct {
	uid, gid []syscall.SysProcIDMap
}

// parseIDMappings reads the two options; a mount must give both.
func parseIDMappings(uidmap, gidmap *string) (idMappings, error) {
	if uidmap == nil || gidmap == nil {
		return idMappings{}, fmt.Errorf("an idmapped mount needs both uidmap= and gidmap=: %w", errdefs.ErrInvalidArgument)
	}
	uid, err := parseIDMapList("uidmap", *uidmap)
	if err != nil {
		return idMappings{}, err
	}
	gid, err := parseIDMapList("gidmap", *gidmap)
	if err != nil {
		return idMappings{}, err
	}
	return idMappings{uid: uid, gid: gid}, nil
}

func parseIDMapList(option, list string) ([]syscall.SysProcIDMap, error) {
	var out []syscall.SysProcIDMap
	for _, m := range strings.Split(list, ",") {
		f := strings.Split(m, ":")
		if len(f) != 3 {
			return nil, fmt.Errorf("%s=%s: mapping %q is not container-id:host-id:size: %w", option, list, m, errdefs.ErrInvalidArgument)
		}
		var n [3]int
		for i, s := range f {
			v, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("%s=%s: mapping %q: %q is not an id: %w", option, list, m, s, errdefs.ErrInvalidArgument)
			}
			n[i] = int(v)
		}
		if n[2] == 0 {
			return nil, fmt.Errorf("%s=%s: mapping %q maps nothing: %w", option, list, m, errdefs.ErrInvalidArgument)
		}
		out = append(out, syscall.SysProcIDMap{ContainerID: n[0], HostID: n[1], Size: n[2]})
	}
	return out, nil
}

// userns returns a descriptor of a new user namespace with these mappings.
// A user namespace needs a process: a helper is forked into one (with the
// mappings written by the fork) and traced, so it stops at its execve and
// never runs; the namespace is taken from it and the helper killed. monitor
// starts and reaps it (the shim's reaper), on a locked thread: the helper's
// parent-death signal and its tracer are that thread.
func (ids idMappings) userns(monitor runc.ProcessMonitor) (_ *os.File, err error) {
	if monitor == nil {
		return nil, errors.New("no process monitor to start a user namespace's helper")
	}
	cmd := &exec.Cmd{
		Path: "/proc/self/exe",
		Args: []string{"tether-userns-helper"},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags:  unix.CLONE_NEWUSER,
			UidMappings: ids.uid,
			GidMappings: ids.gid,
			Ptrace:      true,
			Pdeathsig:   unix.SIGKILL,
		},
	}
	ec, err := monitor.StartLocked(cmd)
	if err != nil {
		return nil, fmt.Errorf("start a helper in a user namespace: %w", err)
	}
	defer func() {
		// Through the process's pidfd: never another process's pid.
		_ = cmd.Process.Kill()
		_, _ = monitor.Wait(cmd, ec)
	}()
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/user", cmd.Process.Pid))
	if err != nil {
		return nil, fmt.Errorf("open the helper's user namespace: %w", err)
	}
	// The helper, still there after the open, is the process that was
	// opened: a pid is not reused before its process is reaped.
	if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
		f.Close()
		return nil, fmt.Errorf("the user namespace's helper ended early: %w", err)
	}
	return f, nil
}

// idmapMount attaches, on target, a copy of the mount tree at source seen
// through the mappings of the user namespace usernsFd, with attrs (such as
// MOUNT_ATTR_RDONLY) set as well. On a mount point, the copy is stacked
// on top.
func idmapMount(source, target string, usernsFd int, attrs uint64) error {
	tree, err := unix.OpenTree(unix.AT_FDCWD, source, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("clone the mount tree at %s: %w", source, err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_IDMAP | attrs, Userns_fd: uint64(usernsFd), Propagation: unix.MS_PRIVATE}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("idmap the mount tree of %s: %w", source, err)
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("attach the idmapped tree of %s on %s: %w", source, target, err)
	}
	return nil
}

// idmapLowerdirs makes an overlay's lower layers idmapped: overlayfs takes
// no uidmap= of its own, so the directory holding every lower layer is
// attached, idmapped and read-only, in a new directory under tmp, and the
// lowerdir option is rewritten to go through it. The upper layer is left as
// it is (the snapshotter gave it to the mapped root). The returned cleanup
// detaches and removes that directory; the overlay keeps its own references
// to the layers, so it is called as soon as the overlay is mounted.
func (pm *parsedMount) idmapLowerdirs(tmp string, usernsFd int) (cleanup func(), err error) {
	idx := -1
	for i, o := range pm.options {
		if strings.HasPrefix(o, "lowerdir=") {
			idx = i
		}
	}
	if idx < 0 {
		return nil, fmt.Errorf("idmapped overlay %q has no lowerdir: %w", pm.source, errdefs.ErrInvalidArgument)
	}
	layers := strings.Split(strings.TrimPrefix(pm.options[idx], "lowerdir="), ":")
	common := commonDir(layers)
	if common == "" {
		return nil, fmt.Errorf("idmapped overlay %q: its lower layers share no directory below /: %w", pm.source, errdefs.ErrInvalidArgument)
	}
	dir, err := os.MkdirTemp(tmp, idmapDirPattern)
	if err != nil {
		return nil, fmt.Errorf("create a directory for idmapped lower layers: %w", err)
	}
	if err := idmapMount(common, dir, usernsFd, unix.MOUNT_ATTR_RDONLY); err != nil {
		os.Remove(dir)
		return nil, err
	}
	cleanup = func() {
		_ = unix.Unmount(dir, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW)
		_ = os.Remove(dir)
	}
	for i, l := range layers {
		layers[i] = filepath.Join(dir, strings.TrimPrefix(filepath.Clean(l), common))
	}
	options := append([]string(nil), pm.options...)
	options[idx] = "lowerdir=" + strings.Join(layers, ":")
	pm.options = options
	if err := pm.fit(); err != nil {
		cleanup()
		return nil, err
	}
	return cleanup, nil
}

// commonDir is the deepest directory holding every path, or "" if that is
// "/" or the paths are not absolute.
func commonDir(paths []string) string {
	for _, p := range paths {
		if !filepath.IsAbs(p) {
			return ""
		}
	}
	common := filepath.Dir(filepath.Clean(paths[0]))
	for _, p := range paths[1:] {
		p = filepath.Clean(p)
		for !strings.HasPrefix(p, common+"/") && common != "/" {
			common = filepath.Dir(common)
		}
	}
	if common == "/" {
		return ""
	}
	return common
}

// RemoveIdmapDirs detaches and removes what a shim that died while
// mounting an idmapped overlay left in bundle: the directories of
// idmapped lower layers (normally gone as soon as the overlay is mounted).
func RemoveIdmapDirs(bundle string) error {
	dirs, err := filepath.Glob(filepath.Join(bundle, idmapDirPattern))
	if err != nil {
		return fmt.Errorf("find idmapped lower layers: %w", err)
	}
	for _, d := range dirs {
		if err := UnmountAll(d); err != nil {
			return err
		}
		if err := os.Remove(d); err != nil {
			return fmt.Errorf("remove idmapped lower layers: %w", err)
		}
	}
	return nil
}
