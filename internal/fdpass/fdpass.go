// Package fdpass hands descriptors to the program a process re-executes:
// duplicates that survive execve while the originals (close-on-exec, as Go
// opens everything) stay with their owners, whose finalizers can then never
// close what the next program uses. The next program takes each one back
// as a close-on-exec duplicate of its own, so runtime calls do not inherit
// it, and the descriptor it received stays as it was, for a rollback to the
// program before, until the take-back is complete and closes it.
package fdpass

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Dup returns a duplicate of fd that survives execve.
func Dup(fd int) (int, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD, 3)
	if err != nil {
		return -1, fmt.Errorf("duplicate descriptor %d for the next program: %w", fd, err)
	}
	return d, nil
}

// Close closes duplicates made by Dup (a handover that was abandoned).
func Close(fds ...int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// Take returns a close-on-exec duplicate of a descriptor received from the
// previous program, for this program to own; fd itself is left as it was
// (the take-back closes the received descriptors once it is complete).
func Take(fd int) (int, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return -1, fmt.Errorf("take back descriptor %d: %w", fd, err)
	}
	return d, nil
}
