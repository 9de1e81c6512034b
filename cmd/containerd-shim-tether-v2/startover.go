package main

import (
	"os"
	"strconv"
	"time"

	"github.com/tether-shim/tether/internal/startover"
	"github.com/tether-shim/tether/upgrade"
)

// testStartOver, set at link time (-X) by the start-over test, makes the
// shim start over at every quiet moment after its baseline, at once.
var testStartOver string

// baselineEnv hands the start-over baseline to the process that carries a
// shim on (internal/startover's Handed). The environment, not a flag: a
// binary that does not know it (an older one, rolled back to) ignores it.
const baselineEnv = "TETHER_STARTOVER_BASELINE_KIB"

func startOverLimits() startover.Limits {
	if testStartOver != "" {
		return startover.Limits{}
	}
	return startover.Defaults()
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
func (s *server) quiet() {
	anon, err := startover.AnonKiB()
	if err != nil {
		return
	}
	due, retry := s.startOver.Quiet(time.Now(), anon)
	s.log.Debug("quiet", "anon_kib", anon, "baseline_kib", s.startOver.Baseline(), "start_over", due, "retry_in", retry)
	switch {
	case due:
		go s.startOverNow(anon)
	case retry > 0:
		time.AfterFunc(retry, func() {
			s.startOver.Retry()
			if s.idle.quietNow() {
				s.quiet()
			}
		})
	}
}

// startOverNow hands the shim over to its own binary, as a live upgrade
// does (the same freeze, state and re-execution, a pause of milliseconds
// for requests that come meanwhile). It returns only if that did not
// happen; the shim then carries on as it was.
func (s *server) startOverNow(anon int) {
	defer s.startOver.Done()
	if !s.upgrading.TryLock() {
		return // an upgrade is under way: it starts the shim over anyway
	}
	defer s.upgrading.Unlock()
	if s.containers.Closing() {
		return
	}
	if !startover.Running(s.binary) {
		s.log.Info("not starting over: the binary was replaced on disk (an upgrade is the operator's call)", "binary", s.binary)
		return
	}
	s.log.Info("starting over to hand back memory", "anon_kib", anon, "baseline_kib", s.startOver.Baseline())
	if kib := s.startOver.Handed(); kib > 0 {
		os.Setenv(baselineEnv, strconv.Itoa(kib))
		defer os.Unsetenv(baselineEnv)
	}
	err := s.handOver(s.binary, "", upgrade.VersionFor(s.pod.HasSandbox()))
	s.log.Warn("could not start over, carrying on", "error", err)
}
