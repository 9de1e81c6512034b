package upgrade

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// ProbeTimeout bounds the probe of a new binary.
const ProbeTimeout = 10 * time.Second

// ProbeFlag asks a binary whether it can take back a state of a version.
const ProbeFlag = "-upgrade-probe"

// probeAnswer starts a binary's answer to the probe: "<answer> <version>".
const probeAnswer = "tether-upgrade-probe ok"

// Probe runs binary with ProbeFlag before anything is frozen: it must say
// it reads state version v, and which version it is. A binary that does not
// start (wrong architecture, exits at once) or refuses the version is
// refused here, while the shim goes on serving. monitor starts and reaps
// it (the shim's reaper: nothing else may wait for its children).
func Probe(binary string, v uint32, monitor runc.ProcessMonitor) (version string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), ProbeTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, ProbeFlag, fmt.Sprint(v))
	cmd.Stdout, cmd.Stderr = &out, &out
	// A child the binary leaves behind must not keep the output open, and
	// with it the upgrade.
	cmd.WaitDelay = time.Second
	err = func() error {
		ec, err := monitor.Start(cmd)
		if err != nil {
			return err
		}
		status, err := monitor.Wait(cmd, ec)
		if err == nil && status != 0 {
			err = fmt.Errorf("exit status %d", status)
		}
		return err
	}()
	if err != nil {
		return "", fmt.Errorf("new binary %s cannot take this shim over: %v: %s", binary, err, strings.TrimSpace(out.String()))
	}
	answer := strings.TrimSpace(out.String())
	rest, ok := strings.CutPrefix(answer, probeAnswer+" ")
	if !ok {
		return "", fmt.Errorf("new binary %s does not answer the upgrade probe: %q", binary, answer)
	}
	return rest, nil
}

// AnswerProbe is the probed binary's side: nil if it reads version v.
func AnswerProbe(v string, version string) error {
	if err := answerProbeRefused(v); err != nil {
		return err
	}
	var n uint32
	if _, err := fmt.Sscan(v, &n); err != nil {
		return fmt.Errorf("state version %q: %w", v, err)
	}
	if err := CheckVersion(n); err != nil {
		return err
	}
	fmt.Printf("%s %s\n", probeAnswer, version)
	return nil
}

// Exec re-executes this process as binary with args, keeping every
// descriptor without close-on-exec, and its argv[0] (ps shows the shim as
// containerd started it). It returns only if the exec failed.
func Exec(binary string, args []string) error {
	argv := append([]string{os.Args[0]}, args...)
	if err := unix.Exec(binary, argv, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", binary, err)
	}
	return nil
}

// Rollback re-executes the old binary, kept open as oldBinaryFD since
// before the upgrade, with args: the state it wrote is taken back by the
// binary that wrote it. It returns only if that failed.
func Rollback(oldBinaryFD int, args []string) error {
	path := fmt.Sprintf("/proc/self/fd/%d", oldBinaryFD)
	argv := append([]string{os.Args[0]}, args...)
	if err := unix.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("roll back to the old binary: %w", err)
	}
	return nil
}

// OpenOldBinary opens the running binary so that it survives execve, for a
// rollback (its file may already be replaced on disk: /proc/self/exe still
// names this one).
func OpenOldBinary() (int, error) {
	fd, err := unix.Open("/proc/self/exe", unix.O_RDONLY, 0)
	if err != nil {
		return -1, fmt.Errorf("keep the old binary for a rollback: %w", err)
	}
	return fd, nil
}

// Monotonic is CLOCK_MONOTONIC in nanoseconds: it goes on across execve, so
// the pause can be measured from the old binary's freeze to the new one's
// first answer.
func Monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}
