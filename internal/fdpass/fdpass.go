// Package fdpass hands descriptors to the program a process re-executes:
// duplicates that survive execve while the originals (close-on-exec, as Go
// opens everything) stay with their owners, whose finalizers can then never
// close what the next program uses. The next program takes them back and
// marks them close-on-exec again, so runtime calls do not inherit them.
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

// Take marks a descriptor received from the previous program close-on-exec.
func Take(fd int) {
	if fd >= 0 {
		unix.CloseOnExec(fd)
	}
}
