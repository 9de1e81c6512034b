// Package systemd asks systemd, over its private D-Bus socket, for a
// transient scope holding a process the shim started: what a process of a
// slice systemd manages must be in, for systemd to know it (a pod's holder
// in its pod's slice, as a pause container would be). That is its one job.
// A shim connects only for that and closes the connection again.
package systemd

import (
	"context"
	"fmt"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// StartScope starts the transient scope unit (NAME.scope) in slice with pid
// in it, and returns once systemd has moved pid there. The scope goes once
// its processes have exited (systemd stops an empty scope and forgets a
// stopped transient unit, failed or not).
func StartScope(ctx context.Context, unit, slice string, pid int, description string) error {
	conn, err := sdbus.NewSystemdConnectionContext(ctx)
	if err != nil {
		return fmt.Errorf("connect to systemd: %w", err)
	}
	defer conn.Close()
	props := []sdbus.Property{
		sdbus.PropDescription(description),
		sdbus.PropSlice(slice),
		sdbus.PropPids(uint32(pid)),
		{Name: "CollectMode", Value: godbus.MakeVariant("inactive-or-failed")},
	}
	done := make(chan string, 1)
	if _, err := conn.StartTransientUnitContext(ctx, unit, "fail", props, done); err != nil {
		return fmt.Errorf("start scope %s in %s: %w", unit, slice, err)
	}
	select {
	case result := <-done:
		if result != "done" {
			return fmt.Errorf("start scope %s in %s: systemd's job ended %q", unit, slice, result)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("start scope %s in %s: %w", unit, slice, ctx.Err())
	}
}
