package daemon

import (
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// signalLoop is the serving shim's main loop and its reaper's: it waits on
// nothing but signals and wait4. Whatever a signal asks that needs the
// service (does the shim hold a container?) or I/O (a goroutine dump) runs in a
// goroutine of its own, so that a request holding a lock across a runtime
// call can never keep that runtime call's exit from being reaped.
type signalLoop struct {
	sigs       <-chan os.Signal
	reaper     interface{ Reap() }
	containers func() int // how many containers the shim holds; may wait for locks
	log        *slog.Logger
}

// run loops until containerd shuts the shim down, the server stops, or a
// SIGTERM or SIGINT comes while the shim holds no container, and says which.
// A container that has stopped but is not deleted still counts: containerd
// has yet to collect its exit.
func (l signalLoop) run(shutdown <-chan struct{}, served <-chan error) string {
	// A SIGTERM or SIGINT asks "may the shim exit?" in a goroutine of its
	// own, at most one at a time; the answer comes back on mayExit.
	mayExit := make(chan os.Signal, 1)
	var asking atomic.Bool
	for {
		select {
		case <-shutdown:
			return "shutdown"
		case s := <-mayExit:
			return "signal " + s.String()
		case err := <-served:
			select {
			case <-shutdown: // the listener was closed on purpose
				return "shutdown"
			default:
				l.log.Error("ttrpc server stopped", "error", err)
				return "server stopped"
			}
		case s := <-l.sigs:
			switch s {
			case unix.SIGCHLD:
				l.reaper.Reap()
			case unix.SIGPIPE, unix.SIGHUP:
				// A write to a closed log fifo, or a hangup of a terminal
				// the shim has none of (it runs in a session of its own):
				// nothing to do, but left to their default they would kill
				// the shim.
			case unix.SIGUSR1:
				go dumpStacks(l.log)
			default:
				if asking.CompareAndSwap(false, true) {
					go l.askExit(s, &asking, mayExit)
				}
			}
		}
	}
}

// askExit answers a SIGTERM or SIGINT: the shim may exit if it holds no
// container; otherwise the signal is ignored (containerd shuts the shim
// down once it has deleted them).
func (l signalLoop) askExit(s os.Signal, asking *atomic.Bool, mayExit chan<- os.Signal) {
	defer asking.Store(false)
	if n := l.containers(); n > 0 {
		l.log.Warn("ignoring signal while the shim holds containers", "signal", s, "containers", n)
		return
	}
	select {
	case mayExit <- s:
	default:
	}
}

// dumpStacks logs every goroutine's stack (SIGUSR1), for a look inside a
// running shim.
func dumpStacks(log *slog.Logger) {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	log.Info("goroutine dump", "goroutines", runtime.NumGoroutine(),
		"heap_inuse", m.HeapInuse, "heap_idle", m.HeapIdle, "heap_released", m.HeapReleased,
		"stack_sys", m.StackSys, "gc_sys", m.GCSys, "other_sys", m.OtherSys, "sys", m.Sys, "num_gc", m.NumGC,
		"stacks", string(buf))
}
