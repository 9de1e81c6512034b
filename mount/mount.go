// Package mount mounts a container's rootfs from containerd's mount list and
// unmounts it again. It parses fstab-style options into mount(2) flags and
// data, fits overlays of many layers into the one page of data the kernel
// takes, and turns the uidmap=/gidmap= options of user-namespaced
// containers into idmapped mounts (idmapped lower layers for an overlay).
// It never leaves a partial mount behind on error.
package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/proto/types"
)

// mountFlags are the fstab-style options that are mount flags; every other
// option is passed to the filesystem as data. clear marks options that
// remove a flag rather than set it.
var mountFlags = map[string]struct {
	clear bool
	flag  uintptr
}{
	"async":         {true, unix.MS_SYNCHRONOUS},
	"atime":         {true, unix.MS_NOATIME},
	"bind":          {false, unix.MS_BIND},
	"defaults":      {false, 0},
	"dev":           {true, unix.MS_NODEV},
	"diratime":      {true, unix.MS_NODIRATIME},
	"dirsync":       {false, unix.MS_DIRSYNC},
	"exec":          {true, unix.MS_NOEXEC},
	"mand":          {false, unix.MS_MANDLOCK},
	"noatime":       {false, unix.MS_NOATIME},
	"nodev":         {false, unix.MS_NODEV},
	"nodiratime":    {false, unix.MS_NODIRATIME},
	"noexec":        {false, unix.MS_NOEXEC},
	"nomand":        {true, unix.MS_MANDLOCK},
	"norelatime":    {true, unix.MS_RELATIME},
	"nostrictatime": {true, unix.MS_STRICTATIME},
	"nosuid":        {false, unix.MS_NOSUID},
	"rbind":         {false, unix.MS_BIND | unix.MS_REC},
	"relatime":      {false, unix.MS_RELATIME},
	"remount":       {false, unix.MS_REMOUNT},
	"ro":            {false, unix.MS_RDONLY},
	"rw":            {true, unix.MS_RDONLY},
	"strictatime":   {false, unix.MS_STRICTATIME},
	"suid":          {true, unix.MS_NOSUID},
	"sync":          {false, unix.MS_SYNCHRONOUS},
}

// propagationFlags change a mount's propagation and need a call of their own.
var propagationFlags = map[string]uintptr{
	"private":     unix.MS_PRIVATE,
	"rprivate":    unix.MS_PRIVATE | unix.MS_REC,
	"shared":      unix.MS_SHARED,
	"rshared":     unix.MS_SHARED | unix.MS_REC,
	"slave":       unix.MS_SLAVE,
	"rslave":      unix.MS_SLAVE | unix.MS_REC,
	"unbindable":  unix.MS_UNBINDABLE,
	"runbindable": unix.MS_UNBINDABLE | unix.MS_REC,
}

// parsedMount is one containerd mount turned into mount(2) arguments.
type parsedMount struct {
	fstype, source string
	flags          uintptr
	propagation    uintptr
	// options are the filesystem's own options, data joins them.
	options []string
	data    string
	// dir, if set, is where relative paths in data start: the mount is
	// made from there (overlay layers shortened to fit a page of data).
	dir string
	// ids, if set, are the uid and gid mappings the mount is to be seen
	// through (uidmap= and gidmap=, as containerd's snapshotters give them
	// for user-namespaced containers): an idmapped mount, or for an overlay,
	// idmapped lower layers.
	ids *idMappings
}

func parse(m *types.Mount) (parsedMount, error) {
	pm := parsedMount{fstype: m.GetType(), source: m.GetSource()}
	if pm.fstype == "" {
		return pm, fmt.Errorf("mount of %q has no type: %w", pm.source, errdefs.ErrInvalidArgument)
	}
	var data []string
	var uidmap, gidmap *string
	for _, o := range m.GetOptions() {
		if v, ok := strings.CutPrefix(o, "uidmap="); ok {
			uidmap = &v
			continue
		}
		if v, ok := strings.CutPrefix(o, "gidmap="); ok {
			gidmap = &v
			continue
		}
		if f, ok := mountFlags[o]; ok {
			if f.clear {
				pm.flags &^= f.flag
			} else {
				pm.flags |= f.flag
			}
			continue
		}
		if f, ok := propagationFlags[o]; ok {
			pm.propagation |= f
			continue
		}
		if o == "loop" {
			return pm, fmt.Errorf("loop mounts are not supported: %w", errdefs.ErrInvalidArgument)
		}
		data = append(data, o)
	}
	if pm.fstype == "bind" || pm.fstype == "rbind" {
		pm.flags |= unix.MS_BIND
		if pm.fstype == "rbind" {
			pm.flags |= unix.MS_REC
		}
	}
	if uidmap != nil || gidmap != nil {
		ids, err := parseIDMappings(uidmap, gidmap)
		if err != nil {
			return pm, fmt.Errorf("mount of %q: %w", pm.source, err)
		}
		pm.ids = &ids
	}
	pm.options = data
	return pm, pm.fit()
}

// fit joins the options into data. The kernel takes one page of mount
// data. An overlay of many layers says more than that; its layer paths
// share a long prefix, which a mount made from that directory can leave out.
func (pm *parsedMount) fit() error {
	pm.dir, pm.data = "", strings.Join(pm.options, ",")
	if len(pm.data) >= os.Getpagesize() && pm.fstype == "overlay" {
		pm.dir, pm.data = shortenLowerdirs(pm.options)
	}
	if len(pm.data) >= os.Getpagesize() {
		return fmt.Errorf("mount options of %q are %d bytes, more than a page: %w", pm.source, len(pm.data), errdefs.ErrInvalidArgument)
	}
	return nil
}

// shortenLowerdirs makes the overlay's lower layers relative to their
// longest common directory, and returns that directory and the options.
func shortenLowerdirs(options []string) (dir, data string) {
	out := append([]string(nil), options...)
	for i, o := range out {
		layers, ok := strings.CutPrefix(o, "lowerdir=")
		if !ok {
			continue
		}
		dirs := strings.Split(layers, ":")
		common := filepath.Dir(dirs[0])
		for _, d := range dirs[1:] {
			for !strings.HasPrefix(d, common+"/") && common != "/" {
				common = filepath.Dir(common)
			}
		}
		if common == "/" || !filepath.IsAbs(common) {
			return "", strings.Join(options, ",")
		}
		for j, d := range dirs {
			dirs[j] = strings.TrimPrefix(d, common+"/")
		}
		out[i] = "lowerdir=" + strings.Join(dirs, ":")
		dir = common
	}
	return dir, strings.Join(out, ",")
}

// mountFrom mounts with dir as the working directory. The working directory
// belongs to the whole process, so the mount runs on an OS thread that stops
// sharing it (unshare CLONE_FS) and is thrown away afterwards.
func mountFrom(dir, source, target, fstype string, flags uintptr, data string) error {
	if dir == "" {
		return unix.Mount(source, target, fstype, flags, data)
	}
	result := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			result <- fmt.Errorf("unshare working directory: %w", err)
			return
		}
		if err := unix.Chdir(dir); err != nil {
			result <- fmt.Errorf("chdir %s: %w", dir, err)
			return
		}
		result <- unix.Mount(source, target, fstype, flags, data)
	}()
	return <-result
}

// All mounts containerd's rootfs mounts on target, in order. On error
// whatever was mounted is unmounted again. monitor starts and reaps the
// helper process a mount with uid and gid mappings needs (the shim's
// reaper); mounts without them never use it.
func All(target string, mounts []*types.Mount, monitor runc.ProcessMonitor) (err error) {
	parsed := make([]parsedMount, 0, len(mounts))
	for _, m := range mounts {
		pm, err := parse(m)
		if err != nil {
			return err
		}
		parsed = append(parsed, pm)
	}
	if err := os.MkdirAll(target, 0o711); err != nil {
		return fmt.Errorf("create rootfs directory: %w", err)
	}
	mounted := 0
	defer func() {
		if err != nil && mounted > 0 {
			UnmountAll(target)
		}
	}()
	for i := range parsed {
		if err := parsed[i].mount(target, monitor); err != nil {
			return err
		}
		mounted++
	}
	return nil
}

func (pm *parsedMount) mount(target string, monitor runc.ProcessMonitor) error {
	var userns *os.File
	if pm.ids != nil {
		var err error
		if userns, err = pm.ids.userns(monitor); err != nil {
			return fmt.Errorf("mount %s (%s) on %s: %w", pm.source, pm.fstype, target, err)
		}
		defer userns.Close()
		if pm.fstype == "overlay" {
			cleanup, err := pm.idmapLowerdirs(filepath.Dir(target), int(userns.Fd()))
			if err != nil {
				return fmt.Errorf("mount %s (%s) on %s: %w", pm.source, pm.fstype, target, err)
			}
			defer cleanup()
		}
	}
	if err := mountFrom(pm.dir, pm.source, target, pm.fstype, pm.flags, pm.data); err != nil {
		return fmt.Errorf("mount %s (%s) on %s: %w", pm.source, pm.fstype, target, err)
	}
	// A bind mount ignores most flags on creation; read-only and the like
	// take a remount.
	const remountable = unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if pm.flags&unix.MS_BIND != 0 && pm.flags&remountable != 0 {
		flags := unix.MS_REMOUNT | unix.MS_BIND | pm.flags&remountable
		if err := unix.Mount("", target, "", flags, ""); err != nil {
			UnmountAll(target)
			return fmt.Errorf("remount %s with %#x: %w", target, flags, err)
		}
	}
	if pm.propagation != 0 {
		if err := unix.Mount("", target, "", pm.propagation, ""); err != nil {
			UnmountAll(target)
			return fmt.Errorf("set propagation of %s: %w", target, err)
		}
	}
	// Any other mount with mappings is seen through them: an idmapped copy
	// is stacked on it.
	if userns != nil && pm.fstype != "overlay" {
		if err := idmapMount(target, target, int(userns.Fd()), 0); err != nil {
			UnmountAll(target)
			return fmt.Errorf("mount %s (%s) on %s: %w", pm.source, pm.fstype, target, err)
		}
	}
	return nil
}

// UnmountAll removes every mount stacked on target. A busy mount is retried
// for a moment and then detached, so nothing stays mounted.
func UnmountAll(target string) error {
	for i := 0; ; i++ {
		err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil // not (or no longer) a mount point
		case errors.Is(err, unix.EBUSY) && i < 50:
			time.Sleep(10 * time.Millisecond)
		case errors.Is(err, unix.EBUSY):
			if err := unix.Unmount(target, unix.MNT_DETACH|unix.UMOUNT_NOFOLLOW); err != nil {
				return fmt.Errorf("detach %s: %w", target, err)
			}
		default:
			return fmt.Errorf("unmount %s: %w", target, err)
		}
	}
}
