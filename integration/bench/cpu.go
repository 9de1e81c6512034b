package main

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tether-shim/tether/integration/harness"
	"golang.org/x/sys/unix"
)

// cpuWatch reaps the shims that exit (they are re-parented to this process)
// after reading their CPU time (utime+stime) from /proc while they are
// zombies. A zombie has no cmdline left and both shims' comm is cut to
// "containerd-shim", so each child's binary is noted while it lives.
type cpuWatch struct {
	mu     sync.Mutex
	binary map[int]string     // live children by pid; only the watcher uses it
	spent  map[string]float64 // ms by shim binary; guarded by mu
	count  map[string]int     // guarded by mu
	done   chan struct{}
}

func newCPUWatch() *cpuWatch {
	w := &cpuWatch{binary: map[int]string{}, spent: map[string]float64{}, count: map[string]int{}, done: make(chan struct{})}
	go w.run()
	return w
}

func (w *cpuWatch) run() {
	ticker := time.NewTicker(10 * time.Millisecond)
	defer ticker.Stop()
	self := os.Getpid()
	const userHZ = 100
	for {
		select {
		case <-w.done:
			return
		case <-ticker.C:
		}
		for _, pid := range harness.Pids() {
			st, ok := harness.ReadStat(pid)
			if !ok {
				continue
			}
			if st.State != 'Z' {
				// Noted while alive, whoever the parent is yet: a shim is
				// re-parented here only once its start process is gone.
				if _, known := w.binary[pid]; !known && strings.HasPrefix(st.Comm, "containerd-shim") {
					w.binary[pid] = filepath.Base(harness.Cmdline(pid)[0])
				}
				continue
			}
			if st.PPid != self {
				continue
			}
			// Only shims are reaped here: other children (the ctr runs)
			// are waited for by the code that started them.
			binary := w.binary[pid]
			if !strings.HasPrefix(binary, "containerd-shim") {
				continue
			}
			var ws unix.WaitStatus
			if p, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); p != pid {
				continue
			}
			delete(w.binary, pid)
			w.mu.Lock()
			w.spent[binary] += float64(st.UTime+st.STime) * 1000 / userHZ
			w.count[binary]++
			w.mu.Unlock()
		}
	}
}

func (w *cpuWatch) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.spent, w.count = map[string]float64{}, map[string]int{}
}

func (w *cpuWatch) total(binary string) (float64, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.spent[binary], w.count[binary]
}

func (w *cpuWatch) stop() { close(w.done) }
