package reaper

import (
	"errors"
	"os/exec"
	"runtime"

	runc "github.com/containerd/go-runc"
)

// The Reaper is go-runc's ProcessMonitor: every runtime CLI call is started
// through it, so the SIGCHLD loop never takes a runtime call's exit status
// away from the call that waits for it.
var _ runc.ProcessMonitor = (*Reaper)(nil)

// Start starts c and returns a channel that receives its exit.
func (r *Reaper) Start(c *exec.Cmd) (chan runc.Exit, error) {
	ec := make(chan runc.Exit, 1)
	err := r.start(c, func() int { return c.Process.Pid }, func(e Exit) {
		ec <- runc.Exit{Pid: e.Pid, Status: e.Status, Timestamp: e.Time}
		close(ec)
	}, true)
	if err != nil {
		return nil, err
	}
	return ec, nil
}

// StartFunc starts c and makes fn the owner of its exit before the reaper
// can see it, for a long-lived child nobody waits on in a call (a pod's
// holder process): fn runs in the reaping goroutine and must not block.
// Its exit is a claimed process's: kept while the reaper is frozen, for
// the process that carries on (which owns it again with Own). c.Wait is
// never called; call c.Process.Release once c.Process is no longer used.
func (r *Reaper) StartFunc(c *exec.Cmd, fn func(Exit)) error {
	return r.start(c, func() int { return c.Process.Pid }, fn, false)
}

// StartLocked is Start with the starting goroutine locked to its OS thread
// until the child exits, as a parent-death signal is tied to that thread.
func (r *Reaper) StartLocked(c *exec.Cmd) (chan runc.Exit, error) {
	started := make(chan error, 1)
	out := make(chan runc.Exit, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		ec, err := r.Start(c)
		started <- err
		if err != nil {
			return
		}
		e := <-ec
		out <- e
		close(out)
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return out, nil
}

// Wait waits for the exit delivered on ec and for c's I/O copying to finish.
func (r *Reaper) Wait(c *exec.Cmd, ec chan runc.Exit) (int, error) {
	e, ok := <-ec
	if !ok {
		return -1, errors.New("reaper: exit channel closed without an exit")
	}
	// The reaper already collected the child, so Wait's own wait fails with
	// ECHILD; it is still needed to flush the command's output pipes. That
	// failed wait keeps the process's pidfd open; Release closes it now
	// rather than whenever the garbage collector gets to it.
	_ = c.Wait()
	_ = c.Process.Release()
	return e.Status, nil
}
