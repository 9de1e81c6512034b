// Package upgrade moves a running shim onto a new binary in place: the
// same process re-executes itself, keeping its pid, its children, its
// descriptors and containerd's connections, and takes back the state the
// old binary wrote down. It holds the orchestration of both ends: the
// admin service that asks for an upgrade, the probe of the new binary
// (opened once: what is probed is what runs), the freeze and the write-down
// of the shim's parts (Parts) into the state (a versioned protobuf in a
// memfd), the exec, and in the next process the take-back, step by step
// (TakeBack), with the rollback to the old binary when a step fails; and
// finding the shims on the host. Each part writes itself down and takes
// itself back; this package says when. It never leaves a shim without a
// binary that serves it: a binary that cannot take the state is refused
// before the exec, or rolled back from.
package upgrade

import (
	"fmt"
	"io"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
)

// StateVersion is the newest version of the state format, which this
// binary reads, as it reads every version since the first. A change that an
// older binary would misread gets a new version. Version 2 adds the pod a
// shim holds through the sandbox API (ShimState.sandbox): a binary that
// reads only version 1 would drop it, and the pod with it. Version 3 adds
// a pod held without any process (Sandbox.namespaces_bound: its namespaces
// bound to files), which a binary of version 2 would take for a pod that
// lost its holder. Version 4 adds an exec's start in flight
// (Process.start): a binary that reads only version 3 would start the exec
// again. Version 5 names a terminal's master once (IO.console_fd, and its
// pumps' ends by the same number): a binary that reads only version 4
// would take it as three and close the one descriptor three times.
const StateVersion = 5

// VersionFor is the version a state with pod (nil: none), with an exec's
// start in flight or not and with a terminal or not, is written with: the
// oldest that holds all of it, so that a shim can still move to a binary
// that reads only an older version when it needs nothing newer.
func VersionFor(pod *upgradepb.Sandbox, carriesStarts, terminals bool) uint32 {
	switch {
	case terminals:
		return 5
	case carriesStarts:
		return 4
	case pod == nil:
		return 1
	case pod.GetNamespacesBound():
		return 3
	}
	return 2
}

// WriteState puts st in a memfd that survives execve and returns it.
func WriteState(st *upgradepb.ShimState) (int, error) {
	data, err := proto.Marshal(st)
	if err != nil {
		return -1, fmt.Errorf("write the shim's state down: %w", err)
	}
	fd, err := unix.MemfdCreate("tether-upgrade-state", 0) // no MFD_CLOEXEC: the next program reads it
	if err != nil {
		return -1, fmt.Errorf("state memfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "tether-upgrade-state")
	if _, err := f.Write(data); err != nil {
		f.Close()
		return -1, fmt.Errorf("write state memfd: %w", err)
	}
	// The *os.File must not close fd when collected: keep the descriptor
	// by duplicating it (the duplicate survives execve), let f go.
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD, 3)
	f.Close()
	if err != nil {
		return -1, fmt.Errorf("state memfd: %w", err)
	}
	return dup, nil
}

// ReadState reads the state a previous process left in fd and checks its
// version; fd stays open (a rollback hands it on again).
func ReadState(fd int) (*upgradepb.ShimState, error) {
	data, err := io.ReadAll(io.NewSectionReader(fdReaderAt(fd), 0, 1<<40))
	if err != nil {
		return nil, fmt.Errorf("read state from descriptor %d: %w", fd, err)
	}
	var st upgradepb.ShimState
	if err := proto.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("decode state: %w", err)
	}
	if err := CheckVersion(st.GetVersion()); err != nil {
		return nil, err
	}
	return &st, nil
}

// CheckVersion refuses a state version this binary cannot read.
func CheckVersion(v uint32) error {
	if v < 1 || v > StateVersion {
		return fmt.Errorf("state version %d: this binary reads versions 1 to %d", v, StateVersion)
	}
	return nil
}

// fdReaderAt reads a descriptor with pread, leaving its offset alone.
type fdReaderAt int

func (fd fdReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := unix.Pread(int(fd), p, off)
	if err == nil && n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, err
}

// CheckFds fails unless every descriptor is open: a state whose
// descriptors did not all survive the exec cannot be taken back.
func CheckFds(fds []int) error {
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return fmt.Errorf("descriptor %d of the state is not open: %w", fd, err)
		}
	}
	return nil
}

// FdArg formats a descriptor for a command line.
func FdArg(fd int) string { return strconv.Itoa(fd) }
