package cgroup

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/kmsg"
)

// notifier is a descriptor that becomes readable when something happens to
// a cgroup's memory, and the means to tell what happened.
type notifier interface {
	fd() int
	// check drains the descriptor without blocking and reads the cgroup.
	check() checked
	// state is what a new shim process needs to go on watching.
	state() OOMWatchState
}

// checked is what a notifier's check found: kills not reported yet; the
// cgroup gone; or the count read from a cgroup with no process left (v2's
// cgroup.events said so first), after which no kill can come.
type checked struct {
	kills       uint64
	gone, empty bool
}

// OOMWatchState is a watch written down for a new shim process (the shim
// re-executed in place): the notifier descriptor it inherits and where the
// watch had got to.
type OOMWatchState struct {
	// FD is the notifier descriptor: an inotify instance (v2) or an
	// eventfd registered with the cgroup (v1).
	FD int `json:"fd"`
	// OOMKills is, for v2, the oom_kill count already reported.
	OOMKills uint64 `json:"oom_kills,omitempty"`
	// LogMark is where the kernel's log stood when the watch began (nil
	// if unknown); Reported counts the kills reported since.
	LogMark  *kmsg.Mark `json:"log_mark,omitempty"`
	Reported uint64     `json:"reported,omitempty"`
}

// takeInherited checks that fd is the kind of descriptor a handed-over
// watch holds (a wrong number is refused rather than watched and later
// closed as if it were ours), and makes it non-blocking and close-on-exec
// again, so that runc and the processes it starts do not inherit it.
func takeInherited(fd int, kind string) error {
	link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("inherited oom notifier %d: %w", fd, err)
	}
	if link != kind {
		return fmt.Errorf("inherited oom notifier %d is %s, not %s", fd, link, kind)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fmt.Errorf("inherited oom notifier %d: %w", fd, err)
	}
	unix.CloseOnExec(fd)
	return nil
}
