package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"strconv"
	"time"

	"github.com/tether-shim/tether/integration/bench/results"
	"github.com/tether-shim/tether/integration/harness"
)

type speedConfig struct {
	lifecycle, execs, stdoutMiB int
}

// lifecycle times `ctr run --rm` of /bin/true, runtimes alternating, and
// adds up the CPU time of the shims that served those runs.
func (b *bench) lifecycle(s *results.Samples) error {
	s.Lifecycle, s.CPU = map[string][]float64{}, map[string]float64{}
	b.cpu.reset()
	for i := 0; i < b.c.speed.lifecycle; i++ {
		for _, rt := range runtimes {
			t := time.Now()
			if _, err := b.ctr("run", "--rm", "--runtime", rt.Runtime, harness.BusyboxImageName, b.id("life-"+rt.Name), "true"); err != nil {
				return err
			}
			s.Lifecycle[rt.Name] = append(s.Lifecycle[rt.Name], ms(time.Since(t)))
		}
	}
	// The last shims may still be on their way out.
	time.Sleep(2 * time.Second)
	for _, rt := range runtimes {
		cpu, n := b.cpu.total(rt.Binary)
		if n != b.c.speed.lifecycle {
			log.Printf("lifecycle: CPU of %d %s shims seen, %d runs", n, rt.Name, b.c.speed.lifecycle)
		}
		s.CPU[rt.Name] = cpu
	}
	return nil
}

// exec times `ctr task exec` of /bin/true into a running container.
func (b *bench) exec(s *results.Samples) error {
	s.Exec = map[string][]float64{}
	ids := map[string]string{}
	var all []string
	defer func() { b.remove(all) }()
	for _, rt := range runtimes {
		id, err := b.runIdle(rt, "exec")
		if err != nil {
			return err
		}
		ids[rt.Name] = id
		all = append(all, id)
	}
	for i := 0; i < b.c.speed.execs; i++ {
		for _, rt := range runtimes {
			t := time.Now()
			if _, err := b.ctr("task", "exec", "--exec-id", fmt.Sprintf("x%d", i), ids[rt.Name], "true"); err != nil {
				return err
			}
			s.Exec[rt.Name] = append(s.Exec[rt.Name], ms(time.Since(t)))
		}
	}
	return nil
}

// stdout times a container writing the throughput size to stdout, read by
// ctr (and counted here), twice per runtime, alternating; the better run counts.
func (b *bench) stdout(s *results.Samples) error {
	s.Stdout = map[string]float64{}
	mib := b.c.speed.stdoutMiB
	for round := 0; round < 2; round++ {
		for _, rt := range runtimes {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			cmd := b.ctd.CtrCommand(ctx, "run", "--rm", "--runtime", rt.Runtime, harness.BusyboxImageName, b.id("out-"+rt.Name),
				"dd", "if=/dev/zero", "bs=1M", "count="+strconv.Itoa(mib))
			var n counter
			cmd.Stdout = &n
			cmd.Stderr = io.Discard
			t := time.Now()
			err := cmd.Run()
			d := time.Since(t)
			cancel()
			if err != nil {
				return err
			}
			if int(n) != mib<<20 {
				return fmt.Errorf("%s: %d bytes arrived, want %d", rt.Name, n, mib<<20)
			}
			mbps := float64(n) / 1e6 / d.Seconds()
			if mbps > s.Stdout[rt.Name] {
				s.Stdout[rt.Name] = mbps
			}
			log.Printf("stdout: %s %.0f MB/s", rt.Name, mbps)
		}
	}
	return nil
}
