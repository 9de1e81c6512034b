package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"strconv"
	"time"

	"github.com/tether-shim/tether/integration/bench/procmem"
	"github.com/tether-shim/tether/integration/bench/results"
	"github.com/tether-shim/tether/integration/harness"
)

type growthConfig struct {
	execs, lifecycles, stdoutMiB int
	settle                       time.Duration
}

// sandboxLabel groups containers into one shim, for both runtimes: the
// annotation containerd's CRI gives a pod's containers.
const sandboxLabel = "io.kubernetes.cri.sandbox-id"

// growth gives one shim per runtime an idle container, samples it idle,
// puts it to work (execs, containers of its group run to completion, a
// large stdout stream), and samples it idle again.
func (b *bench) growth(s *results.Samples) error {
	g := b.c.growth
	ids := map[string]string{}
	pids := map[string]int{}
	var all []string
	defer func() { b.remove(all) }()
	s.Growth = map[string]*results.Growth{}
	for _, rt := range runtimes {
		id, err := b.runIdle(rt, "grow")
		if err != nil {
			return err
		}
		all = append(all, id)
		ids[rt.Name] = id
		if pids[rt.Name], err = shimFor(rt.Binary, id); err != nil {
			return err
		}
	}
	time.Sleep(b.c.settle)
	work := fmt.Sprintf("%d execs, %d lifecycles in its group and a %d MiB stdout stream", g.execs, g.lifecycles, g.stdoutMiB)
	for _, rt := range runtimes {
		before, ok := procmem.Of(pids[rt.Name])
		if !ok {
			return fmt.Errorf("%s: shim %d gone", rt.Name, pids[rt.Name])
		}
		s.Growth[rt.Name] = &results.Growth{Work: work, Before: before}
	}
	for i := 0; i < g.execs; i++ {
		for _, rt := range runtimes {
			if _, err := b.ctr("task", "exec", "--exec-id", fmt.Sprintf("g%d", i), ids[rt.Name], "true"); err != nil {
				return err
			}
		}
	}
	log.Printf("growth: %d execs done", g.execs)
	exited := map[string]int{}
	for _, rt := range runtimes {
		_, exited[rt.Name] = b.cpu.total(rt.Binary)
	}
	for i := 0; i < g.lifecycles; i++ {
		for _, rt := range runtimes {
			if _, err := b.ctr("run", "--rm", "--runtime", rt.Runtime, "--annotation", sandboxLabel+"="+ids[rt.Name],
				harness.BusyboxImageName, b.id("grow-life-"+rt.Name), "true"); err != nil {
				return err
			}
		}
	}
	log.Printf("growth: %d lifecycles done", g.lifecycles)
	for _, rt := range runtimes {
		if err := b.stream(ids[rt.Name], g.stdoutMiB); err != nil {
			return fmt.Errorf("%s: %w", rt.Name, err)
		}
	}
	time.Sleep(g.settle)
	for _, rt := range runtimes {
		// The lifecycles ran in the group's shim only if no shim exited
		// meanwhile: one of their own would have by now.
		if _, n := b.cpu.total(rt.Binary); n != exited[rt.Name] {
			return fmt.Errorf("%s: %d shims exited during the lifecycles: they did not run in the group's shim", rt.Name, n-exited[rt.Name])
		}
		after, ok := procmem.Of(pids[rt.Name])
		if !ok {
			return fmt.Errorf("%s: shim %d gone", rt.Name, pids[rt.Name])
		}
		s.Growth[rt.Name].After = after
		log.Printf("growth: %s before %+v, after %+v", rt.Name, s.Growth[rt.Name].Before, after)
	}
	return nil
}

// stream has an exec in container id write mib MiB to stdout, read by ctr
// through the shim, and checks that all of it arrived.
func (b *bench) stream(id string, mib int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := b.ctd.CtrCommand(ctx, "task", "exec", "--exec-id", b.id("stream"), id, "dd", "if=/dev/zero", "bs=1M", "count="+strconv.Itoa(mib))
	var n counter
	cmd.Stdout = &n
	cmd.Stderr = io.Discard
	if err := cmd.Run(); err != nil {
		return err
	}
	if int(n) != mib<<20 {
		return fmt.Errorf("%d bytes arrived, want %d", n, mib<<20)
	}
	return nil
}

type counter int64

func (c *counter) Write(p []byte) (int, error) { *c += counter(len(p)); return len(p), nil }
