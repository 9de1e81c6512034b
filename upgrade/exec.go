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

// Binary is a new binary, opened once: what is probed is what runs. A
// file replaced at its path in between (a package upgrade, make install)
// is neither probed nor run; the binary opened is, whatever its name says
// by then.
type Binary struct {
	Path string
	file *os.File // close-on-exec: nothing inherits it
}

// OpenBinary opens the binary at path, for Probe and Exec.
func OpenBinary(path string) (*Binary, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("new binary: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("new binary %s is not a regular file", path)
	}
	return &Binary{Path: path, file: f}, nil
}

// Close lets the binary go (an upgrade that did not exec it).
func (b *Binary) Close() error { return b.file.Close() }

// fdPath names the opened file through this process's descriptor table:
// exec'ing it runs that very file, whatever is at Path now.
func (b *Binary) fdPath() string { return fmt.Sprintf("/proc/self/fd/%d", b.file.Fd()) }

// Probe runs the binary with ProbeFlag before anything is frozen: it must
// say it reads state version v, and which version it is. A binary that does
// not start (wrong architecture, exits at once) or refuses the version is
// refused here, while the shim goes on serving. monitor starts and reaps
// it (the shim's reaper: nothing else may wait for its children). The
// child runs the opened file as its fd 3 (an interpreter of a script reads
// it there too).
func (b *Binary) Probe(v uint32, monitor runc.ProcessMonitor) (version string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), ProbeTimeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "/proc/self/fd/3", ProbeFlag, fmt.Sprint(v))
	cmd.ExtraFiles = []*os.File{b.file}
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
		return "", fmt.Errorf("new binary %s cannot take this shim over: %v: %s", b.Path, err, strings.TrimSpace(out.String()))
	}
	answer := strings.TrimSpace(out.String())
	rest, ok := strings.CutPrefix(answer, probeAnswer+" ")
	if !ok {
		return "", fmt.Errorf("new binary %s does not answer the upgrade probe: %q", b.Path, answer)
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

// Exec re-executes this process as the binary opened, with args,
// keeping every descriptor without close-on-exec, and its argv[0] (ps
// shows the shim as containerd started it). It returns only if the exec
// failed.
func (b *Binary) Exec(args []string) error {
	argv := append([]string{os.Args[0]}, args...)
	if err := unix.Exec(b.fdPath(), argv, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", b.Path, err)
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

// isRunning says whether the opened file is the one this process runs.
func (b *Binary) isRunning() bool {
	var opened, self unix.Stat_t
	return unix.Fstat(int(b.file.Fd()), &opened) == nil && unix.Stat("/proc/self/exe", &self) == nil &&
		opened.Dev == self.Dev && opened.Ino == self.Ino
}
