package sandbox

import (
	"context"
	"path"
	"strings"

	"github.com/tether-shim/tether/internal/systemd"
)

// holderCgroupName names the holder's own cgroup below the pod's cgroup
// parent, where containerd's CRI would put the pod's pause container
// (PARENT/ID with cgroupfs, cri-containerd-ID.scope in a slice).
func holderCgroupName(id string) string { return "tether-holder-" + id }

// placeHolder returns what puts a just started holder (pid) in a cgroup of
// its own below the pod's cgroup parent, before any of the pod's containers
// is created: with a systemd slice parent (decided by its last element's
// ".slice", as containerd's CRI decides its containers' cgroup paths), a
// scope that systemd starts for it in the slice, so that systemd knows
// every process of the slice; with a cgroupfs parent, a cgroup made below
// it (recorded, and removed when the sandbox shuts down). The pod's
// statistics, read from the parent, include the holder. A pod without a
// cgroup parent leaves the holder in the shim's cgroup: nil.
func (s *Sandbox) placeHolder(ctx context.Context) func(pid int) error {
	parent := s.pod.CgroupParent
	if parent == "" {
		return nil
	}
	name := holderCgroupName(s.pod.ID)
	return func(pid int) error {
		if slice := path.Base(parent); strings.HasSuffix(slice, ".slice") {
			return systemd.StartScope(ctx, name+".scope", slice, pid, "tether: holder of pod "+s.pod.ID)
		}
		dirs, err := s.env.Cgroups.PlaceInParent(parent, name, pid)
		s.rec.update(func(rec *record) { rec.HolderCgroups = dirs })
		return err
	}
}
