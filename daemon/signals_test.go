package daemon

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/reaper"
)

// TestSIGTERMNeverStopsReaping: a SIGTERM whose question ("is a container
// running?") waits for a lock that a request holds across a runtime call
// must not keep the loop from reaping that runtime call's exit. Before the
// loop answered signals in goroutines of their own, this froze the shim.
func TestSIGTERMNeverStopsReaping(t *testing.T) {
	sigs := make(chan os.Signal, 8)
	held := make(chan struct{}) // the lock a request holds until its runtime call returns
	asked := make(chan struct{})
	r := reaper.New()
	loop := signalLoop{sigs: sigs, reaper: r, log: slog.New(slog.DiscardHandler), containers: func() int {
		close(asked)
		<-held
		return 1
	}}
	shutdown, served := make(chan struct{}), make(chan error)
	done := make(chan string, 1)
	go func() { done <- loop.run(shutdown, served) }()

	// The "runtime call": a child whose exit the loop must reap.
	w := r.Watch()
	defer w.Close()
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan reaper.Exit, 1)
	if err := w.Claim(cmd.Process.Pid, -1, func(e reaper.Exit) { exited <- e }); err != nil {
		t.Fatal(err)
	}
	sigs <- unix.SIGTERM
	<-asked // the question now waits for the lock
	sigs <- unix.SIGTERM
	sigs <- unix.SIGUSR1
	sigs <- unix.SIGPIPE
	sigs <- unix.SIGHUP
	// Wait (without reaping) until the child has exited, then tell the loop.
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil); err != nil {
		t.Fatal(err)
	}
	sigs <- unix.SIGCHLD
	if e := <-exited; e.Pid != cmd.Process.Pid {
		t.Fatalf("reaped %+v", e)
	}
	close(held) // the request's runtime call returns; a container runs: no exit
	close(shutdown)
	if reason := <-done; reason != "shutdown" {
		t.Fatalf("loop ended by %q", reason)
	}
}

// TestSIGTERMExitsOnlyWithoutContainers: the loop ignores SIGTERM and
// SIGINT while a container runs, and ends on them once none does.
func TestSIGTERMExitsOnlyWithoutContainers(t *testing.T) {
	sigs := make(chan os.Signal, 8)
	var containers atomic.Int64
	containers.Store(2)
	asked := make(chan struct{}, 1)
	loop := signalLoop{sigs: sigs, reaper: reaper.New(), log: slog.New(slog.DiscardHandler), containers: func() int {
		select {
		case asked <- struct{}{}:
		default:
		}
		return int(containers.Load())
	}}
	done := make(chan string, 1)
	go func() { done <- loop.run(make(chan struct{}), make(chan error)) }()
	sigs <- unix.SIGTERM
	<-asked
	select {
	case reason := <-done:
		t.Fatalf("exited with containers running: %s", reason)
	default:
	}
	containers.Store(0)
	// A signal that comes while the previous one is still being answered
	// is folded into it: send until one is answered with "no container".
	for {
		select {
		case reason := <-done:
			if reason != "signal interrupt" {
				t.Fatalf("ended by %q", reason)
			}
			return
		case sigs <- unix.SIGINT:
		}
	}
}

// TestServerStopEndsTheLoop: a server that stops on its own ends the loop;
// one stopped by a shutdown is not an error.
func TestServerStopEndsTheLoop(t *testing.T) {
	loop := signalLoop{sigs: make(chan os.Signal), reaper: reaper.New(), log: slog.New(slog.DiscardHandler), containers: func() int { return 0 }}
	served := make(chan error, 1)
	served <- errors.New("accept: too many open files")
	if reason := loop.run(make(chan struct{}), served); reason != "server stopped" {
		t.Fatalf("ended by %q", reason)
	}
	shutdown := make(chan struct{})
	close(shutdown)
	served <- errors.New("use of closed network connection")
	if reason := loop.run(shutdown, served); reason != "shutdown" {
		t.Fatalf("ended by %q", reason)
	}
}
