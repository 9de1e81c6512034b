package integration

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"

	"github.com/tether-shim/tether/integration/harness"
)

// nerdctlTerminal is nerdctl run in a pseudo-terminal, as from a user's
// shell: the test types on the master side and reads what comes back.
type nerdctlTerminal struct {
	t      *testing.T
	master console.Console
	cmd    *exec.Cmd
	out    lockedBuffer
	done   chan error
}

// startTerminal starts nerdctl with args on a new terminal of 24x80.
func (n *nerdctlEnv) startTerminal(args ...string) *nerdctlTerminal {
	n.t.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := master.Resize(console.WinSize{Height: 24, Width: 80}); err != nil {
		n.t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		n.t.Fatal(err)
	}
	defer slave.Close()
	ctx, cancel := context.WithTimeout(context.Background(), nerdctlTimeout)
	term := &nerdctlTerminal{t: n.t, master: master, cmd: n.command(ctx, args...), done: make(chan error, 1)}
	term.cmd.Stdin, term.cmd.Stdout, term.cmd.Stderr = slave, slave, slave
	term.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := term.cmd.Start(); err != nil {
		cancel()
		n.t.Fatal(err)
	}
	go io.Copy(&term.out, master)
	go func() { term.done <- term.cmd.Wait(); cancel() }()
	n.t.Cleanup(func() {
		cancel()
		master.Close()
	})
	return term
}

// typeUntil types line (again, while nothing came back) until the output
// holds want.
func (term *nerdctlTerminal) typeUntil(line, want string) {
	term.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(term.out.String(), want) {
		if time.Now().After(deadline) {
			term.t.Fatalf("typed %q for a minute, no %q came back; the terminal shows %q", line, want, term.out.String())
		}
		if _, err := term.master.Write([]byte(line + "\n")); err != nil {
			term.t.Fatal(err)
		}
		select {
		case err := <-term.done:
			term.t.Fatalf("nerdctl ended (%v) before %q came back; the terminal shows %q", err, want, term.out.String())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// exit types exit CODE and returns how nerdctl ended.
func (term *nerdctlTerminal) exit(code string) int {
	term.t.Helper()
	if _, err := term.master.Write([]byte("exit " + code + "\n")); err != nil {
		term.t.Fatal(err)
	}
	select {
	case err := <-term.done:
		var exit *exec.ExitError
		if err != nil && !errors.As(err, &exit) {
			term.t.Fatalf("nerdctl: %v; the terminal shows %q", err, term.out.String())
		}
		return term.cmd.ProcessState.ExitCode()
	case <-time.After(nerdctlTimeout):
		term.t.Fatalf("nerdctl did not end after exit; the terminal shows %q", term.out.String())
	}
	return -1
}

// TestNerdctlTerminal: `nerdctl run -it` and `nerdctl exec -it` from a
// terminal: the container's shell gets a terminal of the client's size,
// follows it when the client's terminal is resized, and its exit code is
// nerdctl's.
func TestNerdctlTerminal(t *testing.T) {
	forEachRuntime(t, func(t *testing.T, n *nerdctlEnv) {
		for _, args := range [][]string{
			n.runArgs("-it", "--rm", "--name", "tty", harness.BusyboxImageName, "sh"),
			{"exec", "-it", "tty-exec", "sh"},
		} {
			if args[0] == "exec" {
				n.must(nil, n.runArgs("-d", "--name", "tty-exec", harness.BusyboxImageName, "sleep", "100000")...)
			}
			term := n.startTerminal(args...)
			term.typeUntil("stty size", "24 80")
			if err := term.master.Resize(console.WinSize{Height: 40, Width: 132}); err != nil {
				t.Fatal(err)
			}
			// nerdctl forwards SIGWINCH as a resize: the shell sees it soon.
			term.typeUntil("stty size", "40 132")
			code := term.exit("7")
			switch {
			case args[0] == "run" && code != 7:
				t.Errorf("nerdctl run: exit %d, want 7; the terminal shows %q", code, term.out.String())
			case args[0] == "exec":
				// nerdctl exec says so and exits 1 (for any shim).
				if code != 1 {
					t.Errorf("nerdctl exec: exit %d, want 1; the terminal shows %q", code, term.out.String())
				}
				n.waitFor("nerdctl to report the exit code", time.Minute, func() bool {
					return strings.Contains(term.out.String(), "exec failed with exit code 7")
				})
			}
		}
	})
}
