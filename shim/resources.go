package shim

import (
	"context"
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/events"
)

// watchCgroup finds the container's cgroup (for Stats) and watches it for OOM
// kills. A container without one still runs; it only lacks those.
func (c *Container) watchCgroup(pid int) {
	cg, err := c.cgroups.load(pid)
	if err != nil {
		c.log.Warn("no cgroup for the container: no stats, no OOM events", "container", c.ID, "error", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cg = cg
	fd, check, err := cg.oomNotifier()
	if err != nil {
		c.log.Warn("no OOM events for the container", "container", c.ID, "error", err)
		return
	}
	onOOM := func() { c.events.publish(topicOOM, &events.TaskOOM{ContainerId: c.ID}) }
	if err := c.oom.add(fd, check, onOOM); err != nil {
		c.log.Warn("no OOM events for the container", "container", c.ID, "error", err)
		return
	}
	c.oomFD = fd
}

// unwatchCgroup stops watching the cgroup for OOM kills.
func (c *Container) unwatchCgroup() {
	c.mu.Lock()
	fd := c.oomFD
	c.oomFD = -1
	c.mu.Unlock()
	if fd >= 0 {
		c.oom.remove(fd)
	}
}

// Stats returns the container's cgroup metrics.
func (c *Container) Stats() (*anypb.Any, error) {
	c.mu.Lock()
	cg := c.cg
	c.mu.Unlock()
	if cg == nil {
		return nil, fmt.Errorf("container %q has no cgroup: %w", c.ID, ErrNotFound)
	}
	return cg.metrics()
}

// Pause freezes the container's processes.
func (c *Container) Pause(ctx context.Context) error {
	return c.init.apply(opPause, func() error {
		if err := c.runtime.Pause(ctx, c.ID); err != nil {
			return err
		}
		c.events.publish(topicPaused, &events.TaskPaused{ContainerId: c.ID})
		return nil
	})
}

// Resume thaws a paused container.
func (c *Container) Resume(ctx context.Context) error {
	return c.init.apply(opResume, func() error {
		if err := c.runtime.Resume(ctx, c.ID); err != nil {
			return err
		}
		c.events.publish(topicResumed, &events.TaskResumed{ContainerId: c.ID})
		return nil
	})
}

// resourcesURL is the type URL containerd gives OCI Linux resources (JSON).
const resourcesURL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"

// Update applies new resource limits to the container.
func (c *Container) Update(ctx context.Context, resources *anypb.Any) error {
	if resources == nil {
		return fmt.Errorf("update without resources: %w", ErrInvalidArgument)
	}
	if resources.GetTypeUrl() != resourcesURL {
		return fmt.Errorf("resources have type %q, want %q: %w", resources.GetTypeUrl(), resourcesURL, ErrInvalidArgument)
	}
	var r specs.LinuxResources
	if err := json.Unmarshal(resources.GetValue(), &r); err != nil {
		return fmt.Errorf("resources are not valid JSON: %v: %w", err, ErrInvalidArgument)
	}
	return c.init.apply(opUpdate, func() error {
		return c.runtime.Update(ctx, c.ID, &r)
	})
}
