package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/atomicfile"
	"github.com/tether-shim/tether/reaper"
)

// processExited finishes a process of c that has exited, in its own
// goroutine: once a transition in flight (its start, say) has been
// committed, its output drains, its exit is recorded for the delete action,
// and the process stops when the container's order allows: an exec at
// once, the init after the last of its execs. Data flows one way: reaper ->
// container -> process -> event.
func (c *Container) processExited(p *Process, e reaper.Exit) {
	p.settle()
	p.drainOutput()
	if err := writeExitFile(c.exitFile(p.id), e); err != nil {
		// The delete action then reports a killed process instead.
		c.env.Log.Warn("write exit status file", "container", c.ID, "exec", p.id, "error", err)
	}
	if p != c.init {
		p.stop(e)
		c.execGone()
		return
	}
	if !c.ownPidNS {
		// Without a pid namespace of its own the container's other
		// processes survive the init; they go with it, as they would in one.
		if err := c.runtime.Kill(context.Background(), c.ID, int(unix.SIGKILL), true); err != nil {
			c.env.Log.Warn("kill the processes left after the init exited", "container", c.ID, "error", err)
		}
	}
	if c.exits.initExited(e) {
		p.stop(e)
	}
}

// execGone releases an exec's place in the exit order (it stopped, or failed
// to start) and stops the init if its exit waited for this exec.
func (c *Container) execGone() {
	if e, stop := c.exits.execEnded(); stop {
		c.init.stop(e)
	}
}

// settle waits until no transition of p is in flight.
func (p *Process) settle() {
	p.transition <- struct{}{}
	p.endTransition()
}

// exitFile is where the exit status of the init (empty execID) or an exec
// is written.
func (c *Container) exitFile(execID string) string {
	if execID == "" {
		return filepath.Join(c.Bundle, initExitFile)
	}
	return filepath.Join(c.Bundle, "exec-"+execID+".exit")
}

// writeExitFile records an exit as "<status> <unix nanoseconds>".
func writeExitFile(path string, e reaper.Exit) error {
	return atomicfile.Write(path, []byte(fmt.Sprintf("%d %d\n", e.Status, e.Time.UnixNano())))
}

// ReadExitFile reads an exit written by writeExitFile.
func ReadExitFile(path string) (status int, at time.Time, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, time.Time{}, err
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return 0, time.Time{}, fmt.Errorf("exit file %s: malformed", path)
	}
	status, err = strconv.Atoi(fields[0])
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("exit file %s: %w", path, err)
	}
	ns, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("exit file %s: %w", path, err)
	}
	return status, time.Unix(0, ns), nil
}
