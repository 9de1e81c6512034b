// Package cgroup reads a container's cgroup for the shim: its statistics,
// the processes in it and its OOM kills; and it places the shim's own
// processes: the shim in the ShimCgroup, a pod's holder below the pod's
// cgroup parent. That is its one job.
//
// An OOM kill is reported once, and before the exit of the container's
// init if the exit path asks (OOMWatch.Flush): from the cgroup's own count
// while the cgroup is there, from the kernel's log (package kmsg) when it
// was removed before the count could be read.
//
// It never changes a container's cgroup (runc owns it). It never blocks a
// caller on a notifier: every notifier descriptor is non-blocking and read
// by one goroutine that runs only while something is watched. It never
// closes a descriptor it does not own: each OOM watch owns its notifier and
// closes it exactly once, and an inherited one becomes its own only when
// Adopt succeeds.
//
// The package reads cgroupfs itself rather than through containerd/cgroups'
// managers: the shim only needs statistics, process lists, OOM notices and
// one write to cgroup.procs, and linking the managers (with their eBPF,
// D-Bus and systemd dependencies) cost every shim about 1.9 MiB of resident
// memory (measured with make bench). The statistics are still containerd's
// cgroups/v3 stats messages (cgroup1/stats, cgroup2/stats), packed as an Any
// whose type URL is the message's bare full name, so containerd decodes them
// as before.
package cgroup

import (
	"maps"

	"google.golang.org/protobuf/types/known/anypb"
)

// Cgroup is a container's cgroup. Only this package implements it.
type Cgroup interface {
	// Metrics returns the cgroup's statistics as containerd decodes them
	// (io.containerd.cgroups.v1.Metrics or io.containerd.cgroups.v2.Metrics).
	// The error wraps errdefs.ErrNotFound when the cgroup no longer exists.
	Metrics() (*anypb.Any, error)
	// Procs returns the host pids of every process in the cgroup and its
	// descendants, sorted: what `runc ps` reports. The error wraps
	// errdefs.ErrNotFound when the cgroup no longer exists.
	Procs() ([]int, error)
	// Path says where the cgroup is, as plain data for Host.LoadPath.
	Path() Path

	// memcgPath is the memory cgroup's path from the root of its
	// hierarchy, as the kernel's log names it; "" if unknown.
	memcgPath() string
	// openNotifier opens a notifier that wakes on the cgroup's OOM kills.
	openNotifier() (notifier, error)
	// adoptNotifier takes over the notifier a handed-over watch left.
	adoptNotifier(st OOMWatchState) (notifier, error)
}

// Path is where a cgroup is: enough to load it again without its init,
// which may have exited by then (a re-executed shim reloads its containers'
// cgroups from it). Exactly one of V2 and V1 is set.
type Path struct {
	// V2 is the cgroup's directory on a cgroup v2 host.
	V2 string `json:"v2,omitempty"`
	// V1 maps each v1 controller ("memory", "name=systemd", ...) to the
	// cgroup's directory in that controller's hierarchy.
	V1 map[string]string `json:"v1,omitempty"`
}

// String describes the path for logs.
func (p Path) String() string {
	if p.V2 != "" {
		return p.V2
	}
	if p.V1["memory"] != "" {
		return p.V1["memory"]
	}
	return "(no cgroup)"
}

func (p Path) clone() Path {
	return Path{V2: p.V2, V1: maps.Clone(p.V1)}
}
