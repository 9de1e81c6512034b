package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
)

// seqOutput is what `seq -s " " 1000000` prints, but its newline (which
// the exec's terminal, then ctr's, each turn into CR LF).
func seqOutput() string {
	var b strings.Builder
	for i := 1; i <= 1000000; i++ {
		if i > 1 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(i))
	}
	return b.String()
}

// execOnTerminal runs `ctr task exec -t` on a terminal of its own (ctr
// copies the exec's terminal output to it, in raw mode: byte for byte) and
// returns what reached that terminal by the time ctr has exited.
func (e *env) execOnTerminal(id, execID string, args ...string) (string, error) {
	pty, slavePath, err := console.NewPty()
	if err != nil {
		return "", err
	}
	defer pty.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := e.ctd.CtrCommand(ctx, append([]string{"task", "exec", "-t", "--exec-id", execID, id}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = cmd.Start()
	slave.Close()
	if err != nil {
		return "", err
	}
	out := make(chan string, 1)
	go func() {
		var b bytes.Buffer
		io.Copy(&b, pty) // ends (EIO) once ctr has exited
		out <- b.String()
	}()
	err = cmd.Wait()
	select {
	case got := <-out:
		// ctr 2.x warns on its terminal first (cgroup v1 is deprecated).
		for {
			line, rest, ok := strings.Cut(got, "\n")
			if !ok || !strings.Contains(line, "DEPRECATION") {
				break
			}
			got = rest
		}
		if err != nil {
			return got, fmt.Errorf("ctr exec %s: %w", execID, err)
		}
		return got, nil
	case <-time.After(time.Minute):
		return "", fmt.Errorf("ctr exec %s: its terminal never closed (%v)", execID, err)
	}
}

// TestTerminalExecStorm: terminal execs of `seq -s " " 1000000` (6.9 MB
// each through the terminal), as containerd's
// TestContainerExecLargeOutputWithTTY runs them, a few at a time, each read
// by its own ctr: every one prints all of it. ctr 1.x deletes the exec as
// soon as it has exited and reads the rest of the output after; ctr 2.x
// reads to EOF first. containerd's runc shim loses the tail now and then
// (containerd/containerd#12289). 1000 execs in make stress.
func TestTerminalExecStorm(t *testing.T) {
	e := setup(t)
	id := e.id("ttystorm")
	e.runDetached(id, "sleep", "100000")
	n, parallel := size(1000, 24), 3
	want := seqOutput()
	start := time.Now()
	var mu sync.Mutex
	wrong := map[string]string{}
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			execID := fmt.Sprintf("tty%d", i)
			got, err := e.execOnTerminal(id, execID, "sh", "-c", `seq -s " " 1000000`)
			if err == nil && strings.HasSuffix(got, "\n") && strings.TrimRight(got, "\r\n") == want {
				return
			}
			head, tail := got[:min(len(got), 200)], got[max(0, len(got)-24):]
			mu.Lock()
			wrong[execID] = fmt.Sprintf("%d of %d bytes, starting %q, ending %q (%v)", len(got), len(want), head, tail, err)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Logf("%d terminal execs of %d bytes, %d at a time, in %v: %d lost output", n, len(want), parallel,
		time.Since(start).Round(time.Millisecond), len(wrong))
	for execID, msg := range wrong {
		t.Errorf("exec %s: %s\nwhat the log says of it:\n%s", execID, msg, e.logLinesOf(execID))
	}
}
