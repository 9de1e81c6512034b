package shim

import (
	"sync"

	"github.com/tether-shim/tether/reaper"
)

// exitOrder holds back the init's exit until every exec has exited, so the
// init's TaskExit is always the container's last. It only counts and holds
// data: the container acts on what it answers.
type exitOrder struct {
	mu sync.Mutex
	// live counts execs being started or running. Guarded by mu.
	live int
	// initGone is set when the init has exited: no exec may start. Guarded by mu.
	initGone bool
	// postponed is the init's exit, waiting for live to reach zero. Guarded by mu.
	postponed *reaper.Exit
}

// execStarting reserves a place for an exec about to start; false if the
// init has already exited.
func (o *exitOrder) execStarting() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.initGone {
		return false
	}
	o.live++
	return true
}

// execEnded releases an exec's place (its exit was published, or it failed
// to start). If it was the last and the init's exit was postponed, that
// exit is returned: the init may stop now.
func (o *exitOrder) execEnded() (initExit reaper.Exit, stopInit bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.live--
	if o.live == 0 && o.postponed != nil {
		initExit, o.postponed = *o.postponed, nil
		return initExit, true
	}
	return reaper.Exit{}, false
}

// execsLive counts execs being started or running.
func (o *exitOrder) execsLive() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.live
}

// initExited records the init's exit: true if it may stop now, false if it
// is postponed until the last live exec has ended.
func (o *exitOrder) initExited(e reaper.Exit) (stopNow bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.initGone = true
	if o.live > 0 {
		o.postponed = &e
		return false
	}
	return true
}
