package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/tether-shim/tether/integration/bench/results"
	"github.com/tether-shim/tether/integration/harness"
)

// pauseRe finds the pause in the upgrade command's line for a shim.
var pauseRe = regexp.MustCompile(`pause=(\S+) .*result=ok`)

// upgrade measures tether's live upgrade (runc-v2 has none): one shim with
// a busy container is moved onto the same binary again and again, and each
// pause (no request answered) is the shim's own measurement; then the same
// while an exec storm runs into the container, its clients reading slowly
// (exec Deletes wait for them, runtime calls are in flight).
func (b *bench) upgrade(s *results.Samples) error {
	id := b.id("upgrade")
	if _, err := b.ctr("run", "-d", "--runtime", runtimes[0].Runtime, harness.BusyboxImageName, id,
		"sh", "-c", "while true; do echo busy; usleep 1000; done"); err != nil {
		return err
	}
	defer func() {
		b.ctr("task", "rm", "-f", id)
		b.ctr("container", "rm", id)
	}()
	for range b.c.upgrades {
		d, err := b.upgradeOnce(id)
		if err != nil {
			return err
		}
		s.UpgradePauseMs = append(s.UpgradePauseMs, ms(d))
	}
	return b.upgradeDuringStorm(s, id)
}

// upgradeOnce moves the shim of id onto the same binary and returns the
// pause it reports.
func (b *bench) upgradeOnce(id string) (time.Duration, error) {
	binary := filepath.Join(b.bins.shims, runtimes[0].Binary)
	// The command runs under another name: the CPU watch reaps whatever
	// is called containerd-shim*, and the command must be waited for here.
	command := filepath.Join(b.c.tmp, "tether-upgrade")
	if err := os.Symlink(binary, command); err != nil && !os.IsExist(err) {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	out, err := exec.CommandContext(ctx, command, "upgrade", "-namespace", b.ctd.Namespace, "-id", id, "-binary", binary).CombinedOutput()
	cancel()
	m := pauseRe.FindStringSubmatch(string(out))
	if err != nil || m == nil {
		return 0, fmt.Errorf("upgrade: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return time.ParseDuration(m[1])
}

// upgradeDuringStorm upgrades the shim of id again and again while
// b.c.stormExecs clients at a time run `ctr task exec` into it, each
// reading the exec's output slowly (about 4 MiB/s): runtime calls (exec
// starts) are in flight, and exec Deletes wait for their clients.
func (b *bench) upgradeDuringStorm(s *results.Samples, id string) error {
	s.StormConcurrency = b.c.stormExecs
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var execs, failed int
	var firstErr error
	for w := range b.c.stormExecs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				err := b.slowExec(id, fmt.Sprintf("storm-%d-%d", w, i))
				mu.Lock()
				execs++
				if err != nil {
					failed++
					if firstErr == nil {
						firstErr = err
					}
				}
				mu.Unlock()
			}
		}()
	}
	logStart := len(b.ctd.FullLog())
	var err error
	for range b.c.stormUpgrades {
		var d time.Duration
		if d, err = b.upgradeOnce(id); err != nil {
			break
		}
		s.StormUpgradePauseMs = append(s.StormUpgradePauseMs, ms(d))
	}
	close(stop)
	wg.Wait()
	s.StormExecs, s.StormExecsFailed = execs, failed
	s.StormGivenUp = triesGivenUp(b.ctd.FullLog()[logStart:])
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d execs of the storm failed, the first: %w", failed, execs, firstErr)
	}
	return nil
}

// givenUpRe finds why a try of an upgrade was given up, in the shim's log.
var givenUpRe = regexp.MustCompile(`msg="upgrade: requests in flight, trying again[^"]*".* error="([^"(:]*)`)

// triesGivenUp counts the tries of upgrades given up, by why, in log.
func triesGivenUp(log string) map[string]int {
	out := map[string]int{}
	for _, m := range givenUpRe.FindAllStringSubmatch(log, -1) {
		out[strings.TrimSpace(m[1])]++
	}
	return out
}

// slowExec runs one exec of the storm and reads its output slowly.
func (b *bench) slowExec(id, execID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := b.ctd.CtrCommand(ctx, "task", "exec", "--exec-id", execID, id, "head", "-c", fmt.Sprint(results.StormOutput), "/dev/zero")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	n, _ := slowCopy(out)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("exec %s: %v: %s", execID, err, strings.TrimSpace(stderr.String()))
	}
	// ctr 1.x gives its reader up once the exec is deleted: what it had
	// not read by then is not counted as lost.
	if n == 0 {
		return fmt.Errorf("exec %s: no output", execID)
	}
	return nil
}

// slowCopy reads r to its end, 16 KiB every 4 ms.
func slowCopy(r io.Reader) (int64, error) {
	buf := make([]byte, 16<<10)
	tick := time.NewTicker(4 * time.Millisecond)
	defer tick.Stop()
	var n int64
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if err != nil {
			return n, err
		}
		<-tick.C
	}
}
