package shim

import (
	"context"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
)

// processExited finishes a process of c that has exited, in its own
// goroutine: once a transition in flight (its start, say) has been
// committed, the container's OOM kills are published (the init's), its
// output drains, its exit is recorded for the delete action, and the
// process stops when the container's order allows: an exec at once, the
// init after the last of its execs. Data flows one way: reaper ->
// container -> process -> event.
func (c *Container) processExited(p *process.Process, e reaper.Exit) {
	p.Settle()
	if p == c.init {
		// As soon as it can: the sooner the cgroup is read, the likelier
		// it is still there.
		c.flushOOM()
	}
	p.DrainOutput()
	// In a transition of its own: a process deleted before its exit came
	// (created, never started) has its bundle going away, which a late
	// exit file must not get into.
	p.Hold()
	deleted := p.State().State == Deleted
	if !deleted {
		if err := bundle.WriteExit(bundle.ExitFile(c.Bundle, p.ExecID()), e.Status, e.Time); err != nil {
			// The delete action then reports a killed process instead.
			c.env.Log.Warn("write exit status file", "container", c.ID, "exec", p.ExecID(), "error", err)
		}
	}
	p.Release()
	if p != c.init {
		p.Stop(e)
		c.execGone()
		return
	}
	if !c.life.OwnPidNS && !deleted {
		// Without a pid namespace of its own the container's other
		// processes survive the init; they go with it, as they would in one.
		if err := c.life.Runtime.Kill(context.Background(), c.ID, int(unix.SIGKILL), true); err != nil {
			c.env.Log.Warn("kill the processes left after the init exited", "container", c.ID, "error", err)
		}
	}
	if c.exits.initExited(e) {
		p.Stop(e)
	}
}

// execGone releases an exec's place in the exit order (it stopped, or failed
// to start) and stops the init if its exit waited for this exec.
func (c *Container) execGone() {
	if e, stop := c.exits.execEnded(); stop {
		c.init.Stop(e)
	}
}
