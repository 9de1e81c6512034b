// Package lifecycle is how the OCI runtime runs a container's processes:
// the init, created with its container (or restored from a checkpoint on
// Start), signalled and deleted with it, and the execs, run on Start,
// signalled directly and forgotten on delete, whose start a live upgrade
// may carry over to the next process while the runtime call runs. Init and
// Exec are the process.Lifecycle of each: a process (package
// shim/internal/process) calls them for its transitions, and they make the
// runtime calls and hand each process's exit to the reaper's owner the
// container gives. They keep no state of the container's: they read what
// it was created with (Container) and ask it (Host) for the rest. Only the
// task core (package shim) uses it.
package lifecycle

import (
	"log/slog"
	"sync/atomic"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// Container is what the lifecycles of a container's processes read of it:
// set when the container is created (or taken back), never changed.
type Container struct {
	ID      string
	Bundle  string
	Runtime *oci.Runtime
	Config  oci.Config
	// OwnPidNS is false when the container shares another pid namespace:
	// its processes then outlive the init unless the shim kills them.
	OwnPidNS bool
	// Rootfs is where containerd's rootfs mounts are mounted; empty if none.
	Rootfs string
	// Checkpoint (and ParentCheckpoint) are the CRIU images the init is
	// restored from on Start; empty for a container created normally.
	Checkpoint, ParentCheckpoint string
	Reaper                       *reaper.Reaper
	// Stdio is how the container's processes get their stdio.
	Stdio stdio.Config
	Log   *slog.Logger
	// CarryStarts says a live upgrade may carry an exec's start in flight
	// over to the next process; shared by all containers of the shim.
	CarryStarts *atomic.Bool
	Host        Host
}

// Host is what a lifecycle asks of its container: who owns a process's
// exit, and the container's order of exits, which an exec enters before
// its runtime call and leaves if it never runs.
type Host interface {
	// ExitHandler is the reaper's owner of p's exit (it must not block).
	ExitHandler(p *process.Process) func(reaper.Exit)
	// InitAdopted is told the pid of the init the runtime just made, before
	// it is committed: the container watches its cgroup.
	InitAdopted(pid int)
	// ExecStarting enters an exec's start in the order of exits; false
	// once the init has exited (no exec may start then).
	ExecStarting() bool
	// ExecGone leaves the order of exits for an exec that did not run.
	ExecGone()
	// ExecsLive counts execs being started or running.
	ExecsLive() int
	// AdoptCommand makes this process's reaper the owner of a command (a
	// logging binary) a previous process of the shim started.
	AdoptCommand(pid int) (<-chan runc.Exit, error)
}

// openPidfd opens a pidfd for pid, or returns -1: the process is gone
// (reaped; its exit may be held in a watch), or pidfds are unavailable (an
// old kernel, a seccomp filter), and signals then go by pid.
func openPidfd(pid int) int {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	return fd
}

func firstSet(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}
