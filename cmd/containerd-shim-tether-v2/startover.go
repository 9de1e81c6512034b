package main

import (
	"time"

	"github.com/tether-shim/tether/internal/startover"
	"github.com/tether-shim/tether/upgrade"
)

// testStartOver, set at link time (-X) by the start-over test, makes the
// shim start over at every quiet moment after its first, at once.
var testStartOver string

func startOverLimits() startover.Limits {
	if testStartOver != "" {
		return startover.Limits{}
	}
	return startover.Defaults()
}

// quiet runs once the shim is quiet and trimmed (idleMemory): a shim that
// has grown much since it was first quiet starts over in a fresh process of
// its own binary, leaving behind what the Go runtime never hands back
// (internal/startover: measured 4.4 MiB of anonymous memory back to 1.8).
func (s *server) quiet() {
	anon, err := startover.AnonKiB()
	if err != nil {
		return
	}
	due := s.startOver.Quiet(time.Now(), anon)
	s.log.Debug("quiet", "anon_kib", anon, "baseline_kib", s.startOver.Baseline(), "start_over", due)
	if due {
		go s.startOverNow(anon)
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
	err := s.handOver(s.binary, "", upgrade.VersionFor(s.pod.HasSandbox()))
	s.log.Warn("could not start over, carrying on", "error", err)
}
