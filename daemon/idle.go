package daemon

import (
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// idleDelay is how long the shim must be quiet before it hands its unused
// memory back and puts the garbage collector to sleep.
const idleDelay = 2 * time.Second

// idleGarbage is how much the shim must have allocated since its last trim
// for the next one to collect: a collection of a heap that holds little
// garbage costs more (mark bits, work buffers) than it frees.
const idleGarbage = 1 << 20

// idleLimit is the memory limit of a quiet shim that holds live bytes of
// heap objects and held bytes besides its heap (heldBesidesHeap): room for
// idleHeadroom of garbage (output pumping, exits, OOM events, and above all
// the state and statistics containerd 2's CRI polls every second) before a
// collection runs. The runtime keeps its heap goal a margin below the limit
// (mgcpacer.go: 3 % of the goal, at least memoryLimitMinHeapGoalHeadroom,
// 1 MiB); the limit counts it in, or a headroom below it would collect at
// every allocation.
func idleLimit(held, live int64) int64 {
	goal := live + idleHeadroom(live)
	return held + goal + max(goal/32, 1<<20)
}

// idleHeadroom bounds what a polled shim grows by, as the runtime keeps
// the pages it freed up to the limit: half the live heap (the pace of
// GOGC=50), at least idleHeadroomMin. The runtime's own minimum heap goal
// (4 MiB, as the limit was) let a pod's shim grow from 3.2 to 6 MiB of PSS
// in two and a half minutes of containerd 2's polls.
func idleHeadroom(live int64) int64 { return max(live/2, idleHeadroomMin) }

// idleHeadroomMin is the idle headroom of a small heap. Less collects far
// more often than the garbage asks: the pacer counts a span's free slots
// as allocated when a P takes it, and the heap's partly used spans as not
// heap. Measured on a pod's shim (1 MiB live, its polls allocating about
// 28 KiB a second): 2 MiB collects every 17 s or so; 1 MiB twice a second,
// for 0.5 MiB less PSS.
const idleHeadroomMin = 2 << 20

// idleMemory keeps a quiet shim small. Go collects at least every two
// minutes even when nothing is allocated, and every cycle leaves mark bits,
// work buffers and unreturned free pages behind: measured here, an idle shim
// grows by about 500 KiB over its first minutes that way. So while requests
// come the collector runs as usual; once no request has run for idleDelay,
// one collection hands free memory back to the kernel, and then the
// percentage-based collector (and with it the timed one) is switched off in
// favour of a memory limit (idleLimit) of what is left plus idleHeadroom:
// garbage made while idle still triggers a collection, time alone does not.
//
// A limit alone would thrash when live memory grows past it while no
// request comes (containerd away, its event queue filling): every
// allocation would collect. So each collection while asleep re-arms the
// limit at what the runtime then holds besides the heap, plus the live heap
// and half as much again (at least 1 MiB), the pace GOGC=50 keeps; the
// runtime hands back the heap pages above it. Passive requests (statistics
// polled every second or two) make garbage while the shim is asleep: it is
// collected every MiB or so, and each such collection also tells quiet
// again. The next request restores the
// usual regime. No goroutine waits in between: the timer fires once, the
// re-arming runs in the runtime's finalizer goroutine after a collection.
type idleMemory struct {
	timer *time.Timer
	// tune is false when the operator set GOGC or GOMEMLIMIT: their choice
	// stands, the shim only trims.
	tune bool
	// quiet, if set, runs once the shim has become quiet and trimmed.
	quiet func()
	log   *slog.Logger // the collector's decisions, at debug level

	mu       sync.Mutex
	inFlight int    // guarded by mu: requests running; the shim is not quiet
	asleep   bool   // guarded by mu: the collector runs under the idle limit
	limit    int64  // guarded by mu: the idle limit while asleep
	trimAt   uint64 // guarded by mu: bytes allocated in all at the last trim
	rearms   int    // guarded by mu: times a collection raised the idle limit
	// returnedAt is the collection cycle of returnFreed's last
	// collection, whose callback only re-arms. Guarded by mu.
	returnedAt uint64
}

func newIdleMemory(delay time.Duration, tune bool, quiet func(), log *slog.Logger) *idleMemory {
	m := &idleMemory{tune: tune, quiet: quiet, log: log}
	m.timer = time.AfterFunc(delay, m.sleep)
	m.timer.Stop()
	return m
}

// begin wakes the collector up for a request; end starts the quiet period
// once the last request in flight has finished.
func (m *idleMemory) begin() {
	m.mu.Lock()
	m.inFlight++
	m.wakeLocked()
	m.mu.Unlock()
	m.timer.Stop()
}

func (m *idleMemory) end() {
	m.mu.Lock()
	m.inFlight--
	quiet := m.inFlight == 0
	m.mu.Unlock()
	if quiet {
		m.timer.Reset(idleDelay)
	}
}

func (m *idleMemory) wakeLocked() {
	if m.asleep {
		debug.SetGCPercent(100)
		debug.SetMemoryLimit(math.MaxInt64)
		m.asleep = false
	}
}

// sleep trims the heap and, unless the operator tuned the collector, hands
// it over to the idle limit; then it tells quiet. A request still running
// (a long checkpoint) keeps the shim awake.
func (m *idleMemory) sleep() {
	quiet, live, limit := m.sleepLocked()
	if limit > 0 {
		m.log.Debug("collector asleep", "live_heap", live, "limit", limit)
	}
	if quiet && m.quiet != nil {
		m.quiet()
	}
}

// sleepLocked says whether the shim became quiet, and with what live heap
// and limit (0 if none) the collector went to sleep. Logging waits until
// the lock is let go: a log that blocks must not hold up requests.
func (m *idleMemory) sleepLocked() (quiet bool, live, limit int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.inFlight > 0 || m.asleep {
		return false, 0, 0
	}
	if allocated := readMetric("/gc/heap/allocs:bytes"); allocated-m.trimAt >= idleGarbage {
		debug.FreeOSMemory()
		m.trimAt = allocated
	}
	if !m.tune {
		return true, 0, 0
	}
	// The heap's objects: live after the trim; if there was none, live
	// and less than idleGarbage since the last collection (none yet in a
	// shim that has allocated little, whose live heap reads 0).
	live = int64(readMetric("/memory/classes/heap/objects:bytes"))
	m.limit = idleLimit(heldBesidesHeap(), live)
	debug.SetMemoryLimit(m.limit)
	debug.SetGCPercent(-1)
	m.asleep = true
	m.watchCollections()
	return true, live, m.limit
}

// watchCollections calls afterCollection after the next collection: an
// unreachable object's finalizer runs once a cycle has found it garbage.
func (m *idleMemory) watchCollections() {
	runtime.SetFinalizer(&gcMarker{m}, func(g *gcMarker) { g.m.afterCollection() })
}

type gcMarker struct{ m *idleMemory }

// afterCollection re-arms the idle limit above the live heap while asleep,
// and keeps watching; awake, it lets go. A collection while asleep came
// from passive requests (statistics polled every second or two): its freed
// pages go back (returnFreed), and quiet is told again, as the shim may
// have grown.
func (m *idleMemory) afterCollection() {
	asleep, fresh, live, limit := m.afterCollectionLocked()
	if !asleep || !fresh {
		return
	}
	m.log.Debug("collected while asleep", "live_heap", live, "limit", limit, "allocated", readMetric("/gc/heap/allocs:bytes"))
	m.returnFreed()
	if m.quiet != nil {
		m.quiet()
	}
}

// returnFreed hands the heap pages a collection while asleep freed back
// to the kernel. The runtime keeps freed pages for reuse up to its heap
// goal, so a polled shim held the garbage of its last polls resident all
// the time; given back, it climbs from its live heap between collections.
// Measured on pods polled by containerd 2's CRI (make bench -only pods, 20
// pods, PSS per pod after 2m30s, two runs each): 4.61, 4.63 -> 4.13, 4.16
// MiB. Such a pod collects every 7 to 17 s (200-400 KiB of garbage: the
// pacer counts partly used spans as used); the cost is one more collection
// of a heap of about 1 MiB each time, and refaulting the pages the next
// polls take.
func (m *idleMemory) returnFreed() {
	debug.FreeOSMemory()
	cycles := readMetric("/gc/cycles/total:gc-cycles")
	m.mu.Lock()
	m.returnedAt = cycles
	m.mu.Unlock()
}

// afterCollectionLocked says whether the shim is still asleep, whether
// the collection is fresh (not returnFreed's own), and the live heap and
// the limit it re-armed.
func (m *idleMemory) afterCollectionLocked() (asleep, fresh bool, live, limit int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.asleep {
		return false, false, 0, 0
	}
	// From what the runtime holds besides the heap and the live heap. Not
	// what it maps: right after a collection the garbage is not swept yet,
	// and a limit above it went up by the headroom at every collection
	// (measured: a pod's shim polled for statistics grew 2.3 -> 9 MiB in
	// two minutes).
	live = int64(readMetric("/gc/heap/live:bytes"))
	if want := idleLimit(heldBesidesHeap(), live); want != m.limit {
		m.limit = want
		m.rearms++
		debug.SetMemoryLimit(m.limit)
	}
	m.watchCollections()
	// Not fresh: returnFreed's own collection, the last one; it freed
	// nothing the one before did not.
	fresh = readMetric("/gc/cycles/total:gc-cycles") != m.returnedAt
	return true, fresh, live, m.limit
}

// quietNow says whether no request is running.
func (m *idleMemory) quietNow() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.inFlight == 0
}

// quietSoon starts the quiet period of a process that serves no request
// yet: one that carries a shim on after a start over or an upgrade.
func (m *idleMemory) quietSoon() { m.timer.Reset(idleDelay) }

// heldBesidesHeap is what the runtime holds but the heap's objects and
// pages (stacks, metadata, the runtime's own).
func heldBesidesHeap() int64 {
	held := readMetric("/memory/classes/total:bytes") - readMetric("/memory/classes/heap/released:bytes")
	heap := readMetric("/memory/classes/heap/objects:bytes") + readMetric("/memory/classes/heap/unused:bytes") + readMetric("/memory/classes/heap/free:bytes")
	return int64(held - heap)
}

// readMetric reads one of the runtime's uint64 metrics.
func readMetric(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
