package sandbox

import "context"

// placeHolder returns what puts a just started holder (pid) where the pod's
// pause container would be, in a cgroup of its own below the pod's cgroup
// parent (cgroup.Host.Place: a scope in a slice parent, with its name's
// ".scope"; PARENT/NAME with cgroupfs, recorded for removal): the pod's
// statistics, read from the parent, include it, and with systemd no
// process of the slice is in a cgroup systemd does not know. A pod without
// a cgroup parent leaves the holder in the shim's cgroup: nil.
func (s *Sandbox) placeHolder(ctx context.Context) func(pid int) error {
	if s.pod.CgroupParent == "" {
		return nil
	}
	return func(pid int) error {
		dirs, err := s.env.Cgroups.Place(ctx, s.pod.CgroupParent, "tether-holder-"+s.pod.ID, pid)
		s.rec.update(func(rec *record) { rec.HolderCgroups = dirs })
		return err
	}
}
