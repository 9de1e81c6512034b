package shim

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/events"
	eventtypes "github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/shim/internal/process"
)

// watchCgroup finds the cgroup of the container, whose init is pid, for
// Stats and watches it for OOM kills. A container without one still runs;
// it only lacks those.
func (c *Container) watchCgroup(pid int) {
	cg, err := c.env.Cgroups.Load(pid)
	if err != nil {
		c.env.Log.Warn("no cgroup for the container: no stats, no OOM events", "container", c.ID, "error", err)
		return
	}
	watch, err := c.env.OOM.Watch(cg, pid, c.oomNotice())
	if err != nil {
		c.env.Log.Warn("no OOM events for the container", "container", c.ID, "error", err)
	}
	c.mu.Lock()
	c.cg, c.oom = cg, watch
	c.mu.Unlock()
}

// oomNotice publishes the container's OOM kills.
func (c *Container) oomNotice() func() {
	return func() { c.env.Events.Publish(events.TopicOOM, &eventtypes.TaskOOM{ContainerId: c.ID}) }
}

// flushOOM publishes the container's OOM kills not published yet, before
// its init's exit is: containerd's CRI reports a container OOMKilled only
// if its TaskOOM came first. The cgroup's watch alone can report a kill
// late (the kernel's notice of it is rate-limited), or never (systemd
// removes a scope that empties, and a notice still pending goes with it).
func (c *Container) flushOOM() {
	c.mu.Lock()
	watch := c.oom
	c.mu.Unlock()
	if watch != nil {
		watch.Flush()
	}
}

// Stats returns the container's cgroup metrics.
func (c *Container) Stats() (*anypb.Any, error) {
	c.mu.Lock()
	cg := c.cg
	c.mu.Unlock()
	if cg == nil {
		return nil, fmt.Errorf("container %q has no cgroup: %w", c.ID, errdefs.ErrNotFound)
	}
	return cg.Metrics()
}

// Pids lists the container's processes as the runtime sees them (`runc
// ps`, as containerd's runc shim does; it takes no lock of the shim's), or
// from its cgroup when the runtime cannot say.
func (c *Container) Pids(ctx context.Context) ([]int, error) {
	pids, err := c.life.Runtime.Ps(ctx, c.ID)
	if err != nil {
		c.mu.Lock()
		cg := c.cg
		c.mu.Unlock()
		if cg == nil {
			return nil, err
		}
		c.env.Log.Warn("runtime ps failed, listing the cgroup", "container", c.ID, "error", err)
		return cg.Procs()
	}
	sort.Ints(pids)
	return pids, nil
}

// Pause freezes the container's processes.
func (c *Container) Pause(ctx context.Context) error {
	return c.init.Transact(ctx, process.OpPause, func() (string, error) {
		return "", c.life.Runtime.Pause(ctx, c.ID)
	})
}

// Resume thaws a paused container.
func (c *Container) Resume(ctx context.Context) error {
	return c.init.Transact(ctx, process.OpResume, func() (string, error) {
		return "", c.life.Runtime.Resume(ctx, c.ID)
	})
}

// resourcesURL is the type URL containerd gives OCI Linux resources (JSON).
const resourcesURL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

// Update applies new resource limits to the container.
func (c *Container) Update(ctx context.Context, resources *anypb.Any) error {
	if resources == nil {
		return fmt.Errorf("update without resources: %w", errdefs.ErrInvalidArgument)
	}
	if resources.GetTypeUrl() != resourcesURL {
		return fmt.Errorf("resources have type %q, want %q: %w", resources.GetTypeUrl(), resourcesURL, errdefs.ErrInvalidArgument)
	}
	var r specs.LinuxResources
	if err := json.Unmarshal(resources.GetValue(), &r); err != nil {
		return fmt.Errorf("resources are not valid JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return c.init.Transact(ctx, process.OpUpdate, func() (string, error) {
		return "", c.life.Runtime.Update(ctx, c.ID, &r)
	})
}
