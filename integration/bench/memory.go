package main

import (
	"log"
	"time"

	"github.com/tether-shim/tether/integration/bench/procmem"
	"github.com/tether-shim/tether/integration/bench/results"
)

// memory starts idle containers, the runtimes alternating, up to the
// largest scale point, and sums each runtime's shims' memory at each point.
// At the idle point it also samples every shim and as many instances of
// each floor program, and again once they are b.c.steady old.
func (b *bench) memory(s *results.Samples) error {
	floor, err := b.startFloor(b.c.idle)
	if err != nil {
		return err
	}
	defer floor.stop()
	var ids []string
	defer func() { b.remove(ids) }()
	s.Containers = map[string][]results.ScalePoint{}
	n := 0
	var idleSince time.Time
	for _, point := range b.c.scale {
		for ; n < point; n++ {
			for _, rt := range runtimes {
				id, err := b.runIdle(rt, "idle")
				if err != nil {
					return err
				}
				ids = append(ids, id)
			}
		}
		if point == b.c.idle {
			idleSince = time.Now()
		}
		time.Sleep(b.c.settle)
		idle := results.IdleSample{Age: "at start", Processes: map[string][]procmem.Usage{}}
		for _, rt := range runtimes {
			shims := procmem.All(shimsOf(rt.Binary))
			s.Containers[rt.Name] = append(s.Containers[rt.Name], results.ScalePoint{N: point, Processes: len(shims), Total: procmem.Total(shims)})
			idle.Processes[rt.Name] = shims
			log.Printf("memory: %s, %d containers: %d shims, %+v", rt.Name, point, len(shims), procmem.Total(shims))
		}
		if point != b.c.idle {
			continue
		}
		b.sampleFloor(floor, idle)
		s.Idle = append(s.Idle, idle)
		// A shim idles for hours: sample the same shims again once
		// they are old enough for the collector's periodic run.
		time.Sleep(time.Until(idleSince.Add(b.c.steady)))
		steady := results.IdleSample{Age: "after " + b.c.steady.String(), Processes: map[string][]procmem.Usage{}}
		for _, rt := range runtimes {
			steady.Processes[rt.Name] = procmem.All(shimsOf(rt.Binary))
		}
		b.sampleFloor(floor, steady)
		s.Idle = append(s.Idle, steady)
		for _, p := range results.Measured {
			us := steady.Processes[p]
			log.Printf("memory: %s %s: median RSS %.0f KiB, PSS %.0f KiB, anon %.0f KiB", p, steady.Age,
				procmem.Median(us, procmem.RSS), procmem.Median(us, procmem.PSS), procmem.Median(us, procmem.Anon))
		}
	}
	return nil
}

func (b *bench) sampleFloor(floor *floorSet, idle results.IdleSample) {
	for name := range b.bins.floor {
		idle.Processes[name] = procmem.All(floor.pids(name))
	}
}
