package daemon

import (
	"os"
	"strconv"
	"time"

	"github.com/tether-shim/tether/internal/startover"
)

// StartOverEnv turns starting over on: "1" in the shim's environment
// (containerd's, which its shims inherit). Off by default: a start over is
// a live upgrade the shim triggers itself, and an operator's upgrade that
// comes while one holds the shim is refused (FailedPrecondition), not
// queued; docs/benchmarks.md says what it saves.
const StartOverEnv = "TETHER_START_OVER"

// testStartOver, set at link time (-X) by the start-over test, turns
// starting over on and makes it happen at every quiet moment after the
// baseline, at once.
var testStartOver string

// baselineEnv hands the start-over baseline to the process that carries a
// shim on (internal/startover's Handed). The environment, not a flag: a
// binary that does not know it (an older one, rolled back to) ignores it.
const baselineEnv = "TETHER_STARTOVER_BASELINE_KIB"

// startOverWatch is the shim's start-over watch, nil when it is off.
func startOverWatch() *startover.Watch {
	switch {
	case testStartOver != "":
		return startover.New(startover.Limits{Always: true})
	case os.Getenv(StartOverEnv) == "1":
		return startover.New(startover.Defaults())
	}
	return nil
}

// carriedBaseline reads (and clears, for the shim's children) the baseline
// the process before this one handed over; 0 if none.
func carriedBaseline() int {
	kib, _ := strconv.Atoi(os.Getenv(baselineEnv))
	os.Unsetenv(baselineEnv)
	return kib
}

// quiet runs once the shim is quiet and trimmed, and after a collection
// while it is (idleMemory): a shim that has grown much since it was first
// quiet starts over in a fresh process of its own binary, leaving behind
// what the Go runtime never hands back (internal/startover).
func (d *daemon) quiet() {
	anon, err := startover.AnonKiB()
	if err != nil {
		return
	}
	due, retry := d.startOver.Quiet(time.Now(), anon)
	d.log.Debug("quiet", "anon_kib", anon, "baseline_kib", d.startOver.Baseline(), "start_over", due, "retry_in", retry)
	switch {
	case due:
		go d.startOverNow(anon)
	case retry > 0:
		time.AfterFunc(retry, func() {
			d.startOver.Retry()
			if d.idle.quietNow() {
				d.quiet()
			}
		})
	}
}

// startOverNow hands the shim over to its own binary, as a live upgrade
// does (the same freeze, state and re-execution, a pause of milliseconds
// for requests that come meanwhile). It returns only if that did not
// happen; the shim then carries on as it was.
func (d *daemon) startOverNow(anon int) {
	defer d.startOver.Done()
	if kib := d.startOver.Handed(); kib > 0 {
		os.Setenv(baselineEnv, strconv.Itoa(kib))
		defer os.Unsetenv(baselineEnv)
	}
	err := d.admin.StartOver(func() {
		d.log.Info("starting over to hand back memory", "anon_kib", anon, "baseline_kib", d.startOver.Baseline())
	})
	d.log.Info("not starting over, carrying on", "error", err)
}
