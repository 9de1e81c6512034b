// Package startover decides when a quiet shim should start over in a fresh
// process of its own binary, to hand back memory the Go runtime keeps.
//
// Every collection leaves memory behind that no later collection or
// scavenge returns to the kernel: span set blocks and their spines for each
// size class and sweep state, mark bit arenas and work buffers, all
// allocated off the heap for good; and the live heap ends up spread over
// more spans than a process that never collected. Measured with make
// bench's growth step (1000 execs, 100 lifecycles and a 1 GiB stdout
// stream in one shim), an idle shim's anonymous memory went from 1.9 to
// 4.4 MiB and stayed there. A process that starts over has none of it, and
// a shim can start over in place: a live upgrade onto its own binary
// brought the same shim back to 1.8 MiB.
package startover

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits say when a shim starts over.
type Limits struct {
	// AtFirstQuiet: a shim starts over at its first quiet moment too,
	// leaving behind what starting its container left: the garbage of
	// Create and Start (never collected: a collection would cost more
	// than it frees, cmd's idle.go) and the threads that served them.
	// Measured: 0.25 MiB less anonymous memory for 4 ms of CPU, once.
	AtFirstQuiet bool
	// MinGrowthKiB and MinGrowthRatio: the anonymous memory at a quiet
	// moment must exceed the first quiet moment's by both.
	MinGrowthKiB   int
	MinGrowthRatio float64
	// Always: every quiet moment after the baseline is due, grown or not
	// (a trim can leave a shim below its baseline). The start-over test's
	// build, which must not depend on how much the shim grew.
	Always bool
	// Interval is the least time between two attempts, counted across
	// the processes that carry a shim on (Carried): a shim polled for
	// statistics every second (containerd 2's CRI polls each pod so)
	// collects every minute or two and grows again after each start over.
	Interval time.Duration
}

// Defaults are the limits a shim runs with: a shim grows by a MiB only
// after many collections, so it starts over rarely, while a shim that grew
// as in the growth step above starts over as soon as it is quiet again.
func Defaults() Limits {
	return Limits{AtFirstQuiet: true, MinGrowthKiB: 512, MinGrowthRatio: 0.25, Interval: time.Minute}
}

// Watch follows a shim's anonymous memory at its quiet moments.
type Watch struct {
	limits Limits

	mu       sync.Mutex
	baseline int       // guarded by mu: KiB at the first quiet moment; 0 before
	last     time.Time // guarded by mu: the last attempt, or when this process carried on
	busy     bool      // guarded by mu: an attempt is under way
	carried  bool      // guarded by mu: this process carries a shim on
	retrying bool      // guarded by mu: a retry is due at last+Interval
}

// New watches a process's memory.
func New(limits Limits) *Watch {
	return &Watch{limits: limits}
}

// Quiet is told the shim's anonymous memory (KiB) at a quiet moment, and
// says whether it should start over now; the first quiet moment gives the
// baseline, which holds what serving each kind of request once costs. If it
// says so, Done must follow unless the process is replaced. If the shim has
// grown but the last attempt was too recent, retry says when to ask again
// (once: it is 0 while a retry is pending).
func (w *Watch) Quiet(now time.Time, anonKiB int) (due bool, retry time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.baseline == 0 {
		w.baseline = anonKiB
		if !w.limits.AtFirstQuiet || w.carried {
			return false, 0
		}
		w.busy, w.last = true, now
		return true, 0
	}
	if w.busy || !w.grownLocked(anonKiB) {
		return false, 0
	}
	if wait := w.last.Add(w.limits.Interval).Sub(now); !w.last.IsZero() && wait > 0 {
		if w.retrying {
			return false, 0
		}
		w.retrying = true
		return false, wait
	}
	w.busy, w.last, w.retrying = true, now, false
	return true, 0
}

// grownLocked says whether anonKiB is enough over the baseline.
func (w *Watch) grownLocked(anonKiB int) bool {
	if w.limits.Always {
		return true
	}
	grown := anonKiB - w.baseline
	return grown >= w.limits.MinGrowthKiB && float64(grown) >= w.limits.MinGrowthRatio*float64(w.baseline)
}

// Retry is told that the retry Quiet asked for is due: the shim may not
// be quiet any more, and the next quiet moment asks again.
func (w *Watch) Retry() {
	w.mu.Lock()
	w.retrying = false
	w.mu.Unlock()
}

// Carried says this process carries a shim on (after a start over or a
// live upgrade), since now: it does not start over at its first quiet
// moment, nor within Interval of now. Its baseline is the one the process
// before it handed over (Handed), or else its first quiet moment's: one
// taken before its first requests would not hold what serving them costs
// once, and such a shim would start over again and again.
func (w *Watch) Carried(now time.Time, baselineKiB int) {
	w.mu.Lock()
	w.carried, w.last, w.baseline = true, now, baselineKiB
	w.mu.Unlock()
}

// Handed is the baseline to hand to the process that carries on: a
// baseline taken after a start over, which a quiet moment during work (an
// output stream, a pause between requests) would not give the next one.
func (w *Watch) Handed() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.carried {
		return 0
	}
	return w.baseline
}

// Done ends an attempt that did not replace the process.
func (w *Watch) Done() {
	w.mu.Lock()
	w.busy = false
	w.mu.Unlock()
}

// Baseline is the anonymous memory (KiB) at the first quiet moment, 0
// before it.
func (w *Watch) Baseline() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.baseline
}

// AnonKiB reads this process's anonymous memory, in KiB: what the kernel
// counts as the process's own, as make bench measures it.
func AnonKiB() (int, error) {
	data, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "Anonymous:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		}
	}
	return 0, fmt.Errorf("no Anonymous line in smaps_rollup")
}
