package main

import (
	"testing"

	"golang.org/x/sys/unix"
)

// An inherited descriptor without close-on-exec (a pipe, as a job runner
// leaves one) reaches no child once closeInheritedOnExec ran.
func TestCloseInheritedOnExec(t *testing.T) {
	var p [2]int
	if err := unix.Pipe2(p[:], 0); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(p[0]); unix.Close(p[1]) })
	for _, fd := range p {
		if flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil || flags&unix.FD_CLOEXEC != 0 {
			t.Fatalf("fd %d: flags %#x, %v: want an inheritable pipe to start with", fd, flags, err)
		}
	}
	if err := closeInheritedOnExec(); err != nil {
		t.Fatal(err)
	}
	for _, fd := range p {
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil {
			t.Fatalf("fd %d: %v (it must stay open for this process)", fd, err)
		}
		if flags&unix.FD_CLOEXEC == 0 {
			t.Errorf("fd %d is still inherited by children", fd)
		}
	}
}
