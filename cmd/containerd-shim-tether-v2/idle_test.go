package main

import (
	"math"
	"runtime/debug"
	"testing"
	"time"
)

// gcSettings reads the collector's percentage and memory limit without
// changing them.
func gcSettings() (percent int, limit int64) {
	percent = debug.SetGCPercent(-1)
	debug.SetGCPercent(percent)
	return percent, debug.SetMemoryLimit(-1)
}

func TestIdleMemorySleepsAndWakes(t *testing.T) {
	percent, limit := gcSettings()
	t.Cleanup(func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	})
	debug.SetGCPercent(100)
	debug.SetMemoryLimit(math.MaxInt64)

	m := newIdleMemory(time.Hour, true)
	m.sleep()
	if p, l := gcSettings(); p != -1 || l == math.MaxInt64 || l < idleHeadroom {
		t.Fatalf("asleep: GC percent %d, limit %d; want -1 and a finite limit above %d", p, l, idleHeadroom)
	}
	m.touch()
	if p, l := gcSettings(); p != 100 || l != math.MaxInt64 {
		t.Fatalf("awake: GC percent %d, limit %d; want 100 and no limit", p, l)
	}
	m.timer.Stop()
}

func TestIdleMemoryLeavesOperatorSettings(t *testing.T) {
	percent, limit := gcSettings()
	t.Cleanup(func() {
		debug.SetGCPercent(percent)
		debug.SetMemoryLimit(limit)
	})
	debug.SetGCPercent(50)
	debug.SetMemoryLimit(64 << 20)

	m := newIdleMemory(time.Hour, false)
	m.sleep()
	m.touch()
	m.timer.Stop()
	if p, l := gcSettings(); p != 50 || l != 64<<20 {
		t.Fatalf("GC percent %d, limit %d; want the operator's 50 and %d", p, l, 64<<20)
	}
}

func TestIdleMemoryTrimsOnlyAfterGarbage(t *testing.T) {
	m := newIdleMemory(time.Hour, false)
	defer m.timer.Stop()
	m.sleep()
	cycles := readMetric("/gc/cycles/forced:gc-cycles")
	m.sleep()
	if got := readMetric("/gc/cycles/forced:gc-cycles"); got != cycles {
		t.Fatalf("a trim with no garbage since the last one collected (%d → %d forced cycles)", cycles, got)
	}
	sink := make([][]byte, 0, 64)
	for range 64 {
		sink = append(sink, make([]byte, 32<<10))
	}
	_ = sink
	m.sleep()
	if got := readMetric("/gc/cycles/forced:gc-cycles"); got != cycles+1 {
		t.Fatalf("a trim after %d bytes of garbage did not collect (%d → %d forced cycles)", 64*32<<10, cycles, got)
	}
}
