package main

import (
	"math"
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

// idleHeadroom is how much the shim may grow while idle (output pumping,
// exits, OOM events) before a collection runs: the runtime's own minimum
// heap goal.
const idleHeadroom = 4 << 20

// idleMemory keeps a quiet shim small. Go collects at least every two
// minutes even when nothing is allocated, and every cycle leaves mark bits,
// work buffers and unreturned free pages behind: measured here, an idle shim
// grows by about 500 KiB over its first minutes that way. So while requests
// come the collector runs as usual; once the shim has been quiet for
// idleDelay, one collection hands free memory back to the kernel, and then
// the percentage-based collector (and with it the timed one) is switched off
// in favour of a memory limit of what is left plus idleHeadroom: garbage
// made while idle still triggers a collection, time alone does not. The next
// request restores the usual regime. No goroutine waits in between.
type idleMemory struct {
	timer *time.Timer
	// tune is false when the operator set GOGC or GOMEMLIMIT: their choice
	// stands, the shim only trims.
	tune bool

	mu     sync.Mutex
	asleep bool   // guarded by mu: the collector runs under the idle limit
	trimAt uint64 // guarded by mu: bytes allocated in all at the last trim
}

func newIdleMemory(delay time.Duration, tune bool) *idleMemory {
	m := &idleMemory{tune: tune}
	m.timer = time.AfterFunc(delay, m.sleep)
	m.timer.Stop()
	return m
}

// touch wakes the collector up and restarts the quiet period; every request
// calls it.
func (m *idleMemory) touch() {
	m.mu.Lock()
	if m.asleep {
		debug.SetGCPercent(100)
		debug.SetMemoryLimit(math.MaxInt64)
		m.asleep = false
	}
	m.mu.Unlock()
	m.timer.Reset(idleDelay)
}

// sleep trims the heap and, unless the operator tuned the collector, hands
// it over to the idle limit.
func (m *idleMemory) sleep() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if allocated := readMetric("/gc/heap/allocs:bytes"); allocated-m.trimAt >= idleGarbage {
		debug.FreeOSMemory()
		m.trimAt = allocated
	}
	if !m.tune {
		return
	}
	mapped := readMetric("/memory/classes/total:bytes") - readMetric("/memory/classes/heap/released:bytes")
	debug.SetMemoryLimit(int64(mapped) + idleHeadroom)
	debug.SetGCPercent(-1)
	m.asleep = true
}

// readMetric reads one of the runtime's uint64 metrics.
func readMetric(name string) uint64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
