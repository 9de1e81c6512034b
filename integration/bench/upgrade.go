package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/tether-shim/tether/integration/bench/results"
	"github.com/tether-shim/tether/integration/harness"
)

// pauseRe finds the pause in the upgrade command's line for a shim.
var pauseRe = regexp.MustCompile(`pause=(\S+) .*result=ok`)

// upgrade measures tether's live upgrade (runc-v2 has none): one shim with
// a busy container is moved onto the same binary again and again, and each
// pause (no request answered) is the shim's own measurement.
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
	binary := filepath.Join(b.bins.shims, runtimes[0].Binary)
	// The command runs under another name: the CPU watch reaps whatever
	// is called containerd-shim*, and the command must be waited for here.
	command := filepath.Join(b.c.tmp, "tether-upgrade")
	if err := os.Symlink(binary, command); err != nil && !os.IsExist(err) {
		return err
	}
	for range b.c.upgrades {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, command, "upgrade", "-namespace", b.ctd.Namespace, "-id", id, "-binary", binary).CombinedOutput()
		cancel()
		m := pauseRe.FindStringSubmatch(string(out))
		if err != nil || m == nil {
			return fmt.Errorf("upgrade: %v: %s", err, strings.TrimSpace(string(out)))
		}
		d, err := time.ParseDuration(m[1])
		if err != nil {
			return err
		}
		s.UpgradePauseMs = append(s.UpgradePauseMs, ms(d))
	}
	return nil
}
