package shim

import "sync"

// exitOrder holds back the init's exit until every exec has exited, so the
// init's TaskExit is always the container's last.
type exitOrder struct {
	mu sync.Mutex
	// live counts execs being started or running. Guarded by mu.
	live int
	// initGone is set when the init has exited: no exec may start. Guarded by mu.
	initGone bool
	// held is the init's stop, waiting for live to reach zero. Guarded by mu.
	held func()
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

// execEnded releases an exec's place (it exited, or failed to start) and
// runs the init's held stop if it was the last.
func (o *exitOrder) execEnded() {
	o.mu.Lock()
	o.live--
	var run func()
	if o.live == 0 && o.held != nil {
		run, o.held = o.held, nil
	}
	o.mu.Unlock()
	if run != nil {
		run()
	}
}

// execsLive counts execs being started or running.
func (o *exitOrder) execsLive() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.live
}

// initExited runs stop now, or once the last live exec has ended.
func (o *exitOrder) initExited(stop func()) {
	o.mu.Lock()
	o.initGone = true
	if o.live > 0 {
		o.held = stop
		o.mu.Unlock()
		return
	}
	o.mu.Unlock()
	stop()
}
