// Package reaper waits on every child of the shim and hands each exit to
// exactly one owner.
//
// Reaping never waits on anything but wait4: no lock a request or a runtime
// call can hold, no I/O, no logging. Owners' functions run in the reaping
// goroutine and must not block either (hand the exit to a goroutine).
// Otherwise a runtime call that holds what reaping waits for would wait for
// its own exit forever.
//
// The shim is a child subreaper, so besides the processes it starts itself
// (runtime CLI calls) it inherits every container process once the runtime
// that forked it exits. A process started by the runtime becomes known by pid
// only after the runtime writes its pid file, and it may have exited (and been
// reaped) by then. A Watch covers that gap: exits that nobody owns yet are held
// by every open Watch, and the caller claims its pid from the Watch once it
// knows it.
package reaper

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Exit is the end of one child process.
type Exit struct {
	Pid int
	// Status is the exit code, or 128+signal for a process killed by a signal.
	Status int
	Time   time.Time
}

// Reaper reaps children and routes their exits. It is safe for concurrent
// use. Its lock is only ever held for map operations and across a fork.
type Reaper struct {
	mu sync.Mutex
	// owners maps the pid of a live child to the one that receives its
	// exit; an entry is removed when its exit is delivered. Guarded by mu.
	owners map[int]owner
	// watches are the open windows holding exits that had no owner when they
	// were reaped. Guarded by mu.
	watches map[*Watch]struct{}
	// frozen keeps the exits of claimed processes in held instead of
	// delivering them; commands started through the reaper still get
	// theirs. Guarded by mu.
	frozen bool
	held   []Exit
	// kept counts the pids whose exits are kept (Keep): while any is,
	// exits nobody owns are kept in held too (a process the kept call
	// started may exit after it and is to be claimed by whoever takes the
	// kept exit). Guarded by mu.
	kept int
	// sealed stops reaping altogether: exits wait as zombies. Guarded by mu.
	sealed bool
	// delivering counts Reap calls handing exits to owners outside the
	// lock; delivered is signalled when one is done. Guarded by mu.
	delivering int
	delivered  *sync.Cond
}

// owner is who receives a child's exit. transient owners are commands the
// reaper started (runtime calls, publish and logging binaries); the others
// are claimed processes (containers' inits and execs) and long-lived
// children started with StartFunc (a pod's holder).
type owner struct {
	fn        func(Exit)
	transient bool
	kept      bool // Keep: the exit goes to held, whatever transient says
}

// New returns a Reaper. Call Run (or Reap on every SIGCHLD) for it to reap.
func New() *Reaper {
	r := &Reaper{
		owners:  make(map[int]owner),
		watches: make(map[*Watch]struct{}),
	}
	r.delivered = sync.NewCond(&r.mu)
	return r
}

// SetSubreaper makes the calling process the reaper of its orphaned descendants.
func SetSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set child subreaper: %w", err)
	}
	return nil
}

// Run reaps children on every SIGCHLD until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	// A child may have exited before Notify was installed.
	r.Reap()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
			r.Reap()
		}
	}
}

// Reap collects every child that has exited so far and delivers its exit.
// SIGCHLDs coalesce, so one call drains all pending children. The lock is
// held from wait4 to the owner lookup: start registers an owner under the
// same lock right after its fork, so an exit can never be matched with a
// process that was forked after it was reaped (and reused its pid).
func (r *Reaper) Reap() {
	var deliveries []func()
	r.mu.Lock()
	if r.sealed {
		// Exits stay zombies for the process that carries on (see Seal).
		r.mu.Unlock()
		return
	}
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			// ECHILD: no children left; 0: none exited yet.
			break
		}
		if !ws.Exited() && !ws.Signaled() {
			continue // stopped or continued: not an exit
		}
		if d := r.routeLocked(Exit{Pid: pid, Status: exitStatus(ws), Time: time.Now()}); d != nil {
			deliveries = append(deliveries, d)
		}
	}
	r.delivering++
	r.mu.Unlock()
	for _, d := range deliveries {
		d()
	}
	r.mu.Lock()
	r.delivering--
	r.delivered.Broadcast()
	r.mu.Unlock()
}

func exitStatus(ws unix.WaitStatus) int {
	if ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ws.ExitStatus()
}

// deliver routes one exit (for tests; Reap does this for real children).
func (r *Reaper) deliver(e Exit) {
	r.mu.Lock()
	d := r.routeLocked(e)
	r.mu.Unlock()
	if d != nil {
		d()
	}
}

// routeLocked finds the owner of e, or holds e in the open watches. It
// returns the owner's call, to be made without the lock.
func (r *Reaper) routeLocked(e Exit) func() {
	if o, owned := r.owners[e.Pid]; owned {
		if o.kept || (r.frozen && !o.transient) {
			// Kept for the process that carries on (see Freeze, Keep).
			r.held = append(r.held, e)
			return nil
		}
		delete(r.owners, e.Pid)
		return func() { o.fn(e) }
	}
	if r.kept > 0 {
		r.held = append(r.held, e)
	}
	// Without an open watch this is an orphan re-parented to the shim that
	// nobody asked about: it is dropped, silently (reaping does no I/O).
	for w := range r.watches {
		w.held[e.Pid] = e
	}
	return nil
}

// Watch opens a window in which exits without an owner are held until
// claimed. Open it before starting anything whose pid is learned later, and
// Close it once the pid has been claimed (or the start failed).
func (r *Reaper) Watch() *Watch {
	w := &Watch{r: r, held: make(map[int]Exit)}
	r.mu.Lock()
	r.watches[w] = struct{}{}
	r.mu.Unlock()
	return w
}

// Watch holds unowned exits from the moment it is opened until it is closed.
type Watch struct {
	r *Reaper
	// held are exits reaped while the watch was open that had no owner.
	// Guarded by r.mu.
	held map[int]Exit
}

// Claim makes fn the owner of pid's exit. If the process has already been
// reaped while the watch was open, fn runs at once, in the caller's
// goroutine. fn must not block: it runs in the reaper's goroutine otherwise.
//
// pidfd, if not -1, is a pidfd the caller opened for pid: when it shows the
// process still running, an exit held for pid belongs to an earlier process
// that had the same pid, and is discarded rather than given to this one.
// (Whether the pidfd merely opened says nothing: it opens on a zombie too,
// which may be reaped before the claim.)
func (w *Watch) Claim(pid, pidfd int, fn func(Exit)) error {
	if pid <= 0 {
		return fmt.Errorf("claim exit of pid %d: invalid pid", pid)
	}
	r := w.r
	r.mu.Lock()
	e, held := w.held[pid]
	delete(w.held, pid)
	if held && (pidfd < 0 || hasExited(pidfd)) {
		r.mu.Unlock()
		fn(e)
		return nil
	}
	if _, taken := r.owners[pid]; taken {
		r.mu.Unlock()
		return fmt.Errorf("claim exit of pid %d: already owned", pid)
	}
	r.owners[pid] = owner{fn: fn}
	r.mu.Unlock()
	return nil
}

// hasExited reports whether the process behind pidfd has exited (a pidfd
// polls readable then), without waiting.
func hasExited(pidfd int) bool {
	fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		// An error here would be a pidfd that is not one: trust the held exit.
		return err != nil || n > 0
	}
}

// Close ends the window; exits it still holds belonged to nobody it knew of.
func (w *Watch) Close() {
	w.r.mu.Lock()
	delete(w.r.watches, w)
	w.held = nil
	w.r.mu.Unlock()
}

// start starts c and makes fn the owner of its exit before the reaper can
// see it: the reaper needs mu to deliver, and mu is held across the fork.
func (r *Reaper) start(c interface{ Start() error }, pid func() int, fn func(Exit), transient bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := c.Start(); err != nil {
		return err
	}
	r.owners[pid()] = owner{fn: fn, transient: transient}
	return nil
}

// Freeze keeps the exits of claimed processes (and of children started
// with StartFunc) from now on instead of delivering them, for the shim to
// hand them to the process that carries on after it re-executes itself
// (Held). Commands the reaper started still get their exits, so runtime
// calls in flight can finish. Reaping itself goes on: a frozen shim leaves
// no zombie, and still waits on nothing but wait4.
//
// It returns once exits routed before it have reached their owners, so a
// caller that then waits for the exits being handled sees all of them.
func (r *Reaper) Freeze() {
	r.mu.Lock()
	r.frozen = true
	for r.delivering > 0 {
		r.delivered.Wait()
	}
	r.mu.Unlock()
}

// Seal stops reaping altogether, for the last moments before the shim
// re-executes itself: an exit after Seal stays a zombie, which the process
// that carries on reaps once it owns every process again. It returns the
// exits kept since Freeze: with Seal, none can be kept after them.
func (r *Reaper) Seal() []Exit {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sealed = true
	return append([]Exit(nil), r.held...)
}

// Held returns the exits kept since Freeze.
func (r *Reaper) Held() []Exit {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Exit(nil), r.held...)
}

// Thaw undoes Freeze and Seal: it delivers the exits kept since Freeze,
// reaps again, and delivers again as exits come (the re-execution was
// abandoned). Exits of pids still kept (Keep) stay kept.
func (r *Reaper) Thaw() {
	r.mu.Lock()
	r.frozen, r.sealed = false, false
	held := r.takeHeldLocked()
	r.mu.Unlock()
	r.Deliver(held)
	r.Reap() // what exited while sealed
}

// takeHeldLocked takes the held exits that are not kept any more: all,
// unless a pid is still kept. Called with mu held.
func (r *Reaper) takeHeldLocked() []Exit {
	var out, stay []Exit
	for _, e := range r.held {
		if o, ok := r.owners[e.Pid]; (ok && o.kept) || (!ok && r.kept > 0) {
			stay = append(stay, e)
		} else {
			out = append(out, e)
		}
	}
	r.held = stay
	return out
}

// Keep keeps the exit of pid, a command the reaper started (a runtime call
// in flight), for the process the shim carries on in after it re-executes
// itself, instead of delivering it: from now until release, whether or not
// the reaper is frozen. While a pid is kept, exits nobody owns are kept
// too (the call may start a process that exits after it). ok is false if
// pid has no owner any more: its exit went already. release (once the
// re-execution was abandoned) delivers what it kept.
func (r *Reaper) Keep(pid int) (release func(), ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, owned := r.owners[pid]
	if !owned || o.kept {
		return nil, false
	}
	o.kept = true
	r.owners[pid] = o
	r.kept++
	var once sync.Once
	return func() { once.Do(func() { r.unkeep(pid) }) }, true
}

// unkeep ends a Keep and delivers the exits no longer kept, unless the
// reaper is frozen (Thaw delivers them then).
func (r *Reaper) unkeep(pid int) {
	r.mu.Lock()
	if o, ok := r.owners[pid]; ok && o.kept {
		o.kept = false
		r.owners[pid] = o
	}
	r.kept--
	var held []Exit
	if !r.frozen {
		held = r.takeHeldLocked()
	}
	r.mu.Unlock()
	r.Deliver(held)
}

// Deliver routes exits reaped elsewhere (by the process this one carries on
// from) to their owners.
func (r *Reaper) Deliver(exits []Exit) {
	for _, e := range exits {
		r.deliver(e)
	}
}

// Own makes fn the owner of the exit of pid, a child this process inherited
// from the one it carries on from.
func (r *Reaper) Own(pid int, fn func(Exit)) error {
	if pid <= 0 {
		return fmt.Errorf("own exit of pid %d: invalid pid", pid)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, taken := r.owners[pid]; taken {
		return fmt.Errorf("own exit of pid %d: already owned", pid)
	}
	r.owners[pid] = owner{fn: fn}
	return nil
}
