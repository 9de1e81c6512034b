package daemon

import (
	"context"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/tether-shim/tether/handover"
)

var discardLog = slog.New(slog.DiscardHandler)

// gcSettings reads the collector's percentage and memory limit without
// changing them.
func gcSettings() (percent int, limit int64) {
	percent = debug.SetGCPercent(-1)
	debug.SetGCPercent(percent)
	return percent, debug.SetMemoryLimit(-1)
}

// collectorSettings sets the collector's percentage and memory limit for
// a test, and puts back what they were when it ends.
func collectorSettings(t *testing.T, percent int, limit int64) {
	was, wasLimit := gcSettings()
	t.Cleanup(func() {
		debug.SetGCPercent(was)
		debug.SetMemoryLimit(wasLimit)
	})
	debug.SetGCPercent(percent)
	debug.SetMemoryLimit(limit)
}

func TestIdleMemorySleepsAndWakes(t *testing.T) {
	collectorSettings(t, 100, math.MaxInt64)

	m := newIdleMemory(time.Hour, true, nil, discardLog)
	m.sleep()
	if p, l := gcSettings(); p != -1 || l == math.MaxInt64 || l < idleHeadroomMin {
		t.Fatalf("asleep: GC percent %d, limit %d; want -1 and a finite limit above %d", p, l, idleHeadroomMin)
	}
	m.begin()
	if p, l := gcSettings(); p != 100 || l != math.MaxInt64 {
		t.Fatalf("awake: GC percent %d, limit %d; want 100 and no limit", p, l)
	}
	m.end()
	m.timer.Stop()
}

// TestIdleMemoryNeverSleepsDuringARequest: a request still running (a long
// checkpoint) keeps the usual collector, whenever the quiet timer fires.
func TestIdleMemoryNeverSleepsDuringARequest(t *testing.T) {
	collectorSettings(t, 100, math.MaxInt64)
	m := newIdleMemory(time.Hour, true, nil, discardLog)
	defer m.timer.Stop()
	m.begin()
	m.begin()
	m.end() // one of two requests done: still not quiet
	m.sleep()
	if p, _ := gcSettings(); p != 100 {
		t.Fatalf("slept with a request in flight: GC percent %d", p)
	}
	m.end()
	m.sleep()
	if p, _ := gcSettings(); p != -1 {
		t.Fatalf("did not sleep once quiet: GC percent %d", p)
	}
	m.begin()
	m.end()
}

// sleepingIdleMemory is an idle collector put to sleep, woken for good
// when the test ends: asleep, it would go on setting the collector's limit
// (and returning freed pages) after every collection of the tests that
// follow, also after a test that failed halfway.
func sleepingIdleMemory(t *testing.T) *idleMemory {
	m := newIdleMemory(time.Hour, true, nil, discardLog)
	t.Cleanup(func() {
		m.begin()
		m.timer.Stop()
	})
	m.sleep()
	return m
}

// liveSink keeps memory live for TestIdleLimitFollowsAGrowingHeap.
var liveSink [][]byte

// TestIdleLimitFollowsAGrowingHeap: live memory that grows past the idle
// limit while no request comes must not make every allocation collect; the
// limit follows the heap as GOGC=100 would. Counted in collections, not time.
func TestIdleLimitFollowsAGrowingHeap(t *testing.T) {
	collectorSettings(t, 100, math.MaxInt64)
	t.Cleanup(func() { liveSink = nil })
	m := sleepingIdleMemory(t)
	// 32 MiB stays live (far past the limit of what was held + 4 MiB), then
	// 64 MiB of garbage is made in 64 KiB pieces.
	for range 512 {
		liveSink = append(liveSink, make([]byte, 64<<10))
	}
	// The limit is re-armed in the finalizer goroutine after a collection,
	// which a loaded machine can run late: let it catch up with the grown
	// heap before counting (it must, within the deadline).
	runtime.GC()
	rearmedAbove(t, m, 32<<20)
	before := readMetric("/gc/cycles/total:gc-cycles")
	var garbage []byte
	for range 1024 {
		garbage = make([]byte, 64<<10)
	}
	_ = garbage
	cycles := readMetric("/gc/cycles/total:gc-cycles") - before
	m.mu.Lock()
	rearms := m.rearms
	m.mu.Unlock()
	m.begin()
	m.end()
	// GOGC=100 with 32 MiB live collects about twice for 64 MiB of
	// garbage; a limit below the live heap would collect on nearly every
	// one of the 1024 allocations.
	if cycles > 10 || rearms == 0 {
		t.Fatalf("%d collections for 64 MiB of garbage over 32 MiB live (limit raised %d times); want a handful", cycles, rearms)
	}
	t.Logf("%d collections, limit raised %d times", cycles, rearms)
}

// rearmedAbove waits until m's idle limit is above live bytes.
func rearmedAbove(t *testing.T, m *idleMemory, live int64) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		m.mu.Lock()
		limit := m.limit
		m.mu.Unlock()
		if limit > live {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle limit %d never re-armed above %d live bytes", limit, live)
		}
		runtime.Gosched()
	}
}

// runtimeHeapGoal is the heap goal Go's pacer derives from a memory limit
// when held bytes are mapped besides the heap (runtime/mgcpacer.go,
// memoryLimitHeapGoal, go1.26: 3 % of the goal, at least 1 MiB, below
// what the limit leaves).
func runtimeHeapGoal(limit, held int64) int64 {
	goal := limit - held
	return goal - max(goal/100*3, 1<<20)
}

// TestIdleLimitRoomForGarbage: the idle limit lets the heap grow by the
// idle headroom past the live heap, no more and no less, for small and
// large heaps. More is what a polled shim grows by (the runtime keeps the
// pages it frees up to the limit: a pod's shim went from 3 to 6 MiB under
// containerd 2's polls with 4 MiB); less, under the margin the runtime
// keeps below the limit, makes every allocation collect.
func TestIdleLimitRoomForGarbage(t *testing.T) {
	for _, held := range []int64{2 << 20, 6 << 20, 64 << 20} {
		for _, live := range []int64{0, 300 << 10, 1 << 20, 3 << 20, 32 << 20, 1 << 30} {
			room := runtimeHeapGoal(idleLimit(held, live), held) - live
			if want := idleHeadroom(live); room < want || room > want+want/16 {
				t.Errorf("held %d KiB, live %d KiB: room for %d KiB of garbage; want %d KiB (1/16 more at most)", held>>10, live>>10, room>>10, want>>10)
			}
		}
	}
	// A pod's shim holds about 1 MiB live: it grows by 2 MiB at most.
	if room := idleHeadroom(1 << 20); room > 2<<20 {
		t.Errorf("a 1 MiB live heap may grow by %d KiB while asleep", room>>10)
	}
}

func TestIdleMemoryLeavesOperatorSettings(t *testing.T) {
	collectorSettings(t, 50, 64<<20)

	m := newIdleMemory(time.Hour, false, nil, discardLog)
	m.sleep()
	m.begin()
	m.end()
	m.timer.Stop()
	if p, l := gcSettings(); p != 50 || l != 64<<20 {
		t.Fatalf("GC percent %d, limit %d; want the operator's 50 and %d", p, l, 64<<20)
	}
}

func TestIdleMemoryTrimsOnlyAfterGarbage(t *testing.T) {
	m := newIdleMemory(time.Hour, false, nil, discardLog)
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

// TestPassiveRequestsDoNotKeepTheShimAwake: containerd keeps a Wait in
// flight for every task and a WaitSandbox for the pod as long as they live,
// and containerd 2's CRI reads each pod's and container's state and
// statistics every second or two; those do not count as requests, or a
// pod's shim would never get quiet. Everything else does.
func TestPassiveRequestsDoNotKeepTheShimAwake(t *testing.T) {
	for method, waits := range map[string]bool{
		"/containerd.task.v2.Task/Wait":                         true,
		"/containerd.task.v3.Task/Wait":                         true,
		"/containerd.runtime.sandbox.v1.Sandbox/WaitSandbox":    true,
		"/containerd.task.v3.Task/State":                        true,
		"/containerd.task.v2.Task/Stats":                        true,
		"/containerd.runtime.sandbox.v1.Sandbox/SandboxStatus":  true,
		"/containerd.runtime.sandbox.v1.Sandbox/SandboxMetrics": true,
		"/containerd.runtime.sandbox.v1.Sandbox/StopSandbox":    false,
		"/containerd.task.v3.Task/Exec":                         false,
		"/containerd.task.v2.Task/Create":                       false,
		"/tether.upgrade.v1.Admin/Upgrade":                      false,
	} {
		m := newIdleMemory(time.Hour, false, nil, discardLog)
		var during int
		intercept := requestInterceptor(handover.NewSet(nil), m, failpoints{}, slog.New(slog.DiscardHandler))
		_, err := intercept(context.Background(), func(any) error { return nil }, &ttrpc.UnaryServerInfo{FullMethod: method},
			func(context.Context, func(any) error) (any, error) {
				m.mu.Lock()
				during = m.inFlight
				m.mu.Unlock()
				return nil, nil
			})
		if err != nil {
			t.Fatal(err)
		}
		if (during == 0) != waits {
			t.Errorf("%s: %d requests in flight while it ran", method, during)
		}
	}
}

// TestQuietAgainAfterACollectionWhileAsleep: garbage made while the shim is
// quiet (passive requests) is collected under the idle limit; each such
// collection tells quiet again, as the shim may have grown since.
func TestQuietAgainAfterACollectionWhileAsleep(t *testing.T) {
	collectorSettings(t, 100, math.MaxInt64)
	told := make(chan struct{}, 16)
	m := newIdleMemory(time.Hour, true, func() { told <- struct{}{} }, discardLog)
	// Awake for good when done: asleep, it would go on setting the
	// collector's limit after every collection of the tests that follow.
	t.Cleanup(func() {
		m.begin()
		m.timer.Stop()
	})
	m.sleep()
	select {
	case <-told:
	default:
		t.Fatal("quiet not told when the shim became quiet")
	}
	runtime.GC()
	select {
	case <-told:
	case <-time.After(time.Minute): // a hang guard: the finalizer runs right after the collection
		t.Fatal("quiet not told after a collection while asleep")
	}
}

// TestIdleCollectionReturnsWhatItFreed: a collection while asleep (garbage
// made by polls) is followed by debug.FreeOSMemory, which hands the pages
// it freed back to the kernel (what it returns is the runtime's business:
// another goroutine's allocations blur any count here), and the collection
// that does it is not taken for one more; the shim stays asleep.
func TestIdleCollectionReturnsWhatItFreed(t *testing.T) {
	collectorSettings(t, 100, math.MaxInt64)
	sleepingIdleMemory(t)
	// 1 MiB of garbage, within the idle headroom; then a collection, as
	// the next poll's garbage would bring.
	var garbage []byte
	for range 16 {
		garbage = make([]byte, 64<<10)
	}
	_ = garbage
	forced := readMetric("/gc/cycles/forced:gc-cycles")
	runtime.GC()
	deadline := time.Now().Add(time.Minute)
	for readMetric("/gc/cycles/forced:gc-cycles") < forced+2 {
		if time.Now().After(deadline) {
			t.Fatalf("no collection returned the freed pages (forced cycles %d → %d)", forced, readMetric("/gc/cycles/forced:gc-cycles"))
		}
		runtime.Gosched()
	}
	if p, _ := gcSettings(); p != -1 {
		t.Fatalf("GC percent %d after a collection while asleep: the shim woke up", p)
	}
}
