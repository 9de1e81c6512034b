package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// parent is the ppid of pid, or -1.
func parent(pid int) int {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	s := string(stat)
	end := strings.LastIndexByte(s, ')')
	if end < 0 || end+2 > len(s) {
		return -1
	}
	f := strings.Fields(s[end+2:])
	if len(f) < 2 {
		return -1
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

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
		entries, _ := os.ReadDir("/proc")
		for _, e := range entries {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if err != nil {
				continue
			}
			s := string(stat)
			end := strings.LastIndexByte(s, ')')
			if end < 0 || end+2 > len(s) {
				continue
			}
			// state ppid ... utime (14th field of stat) stime (15th)
			f := strings.Fields(s[end+2:])
			if len(f) < 13 {
				continue
			}
			comm := s[strings.IndexByte(s, '(')+1 : end]
			if f[0] != "Z" {
				// Noted while alive, whoever the parent is yet: a shim is
				// re-parented here only once its start process is gone.
				if _, known := w.binary[pid]; !known && strings.HasPrefix(comm, "containerd-shim") {
					cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
					arg0, _, _ := strings.Cut(string(cmd), "\x00")
					w.binary[pid] = filepath.Base(arg0)
				}
				continue
			}
			if ppid, _ := strconv.Atoi(f[1]); ppid != self {
				continue
			}
			// Only shims are reaped here: other children (the ctr runs)
			// are waited for by the code that started them.
			binary := w.binary[pid]
			if !strings.HasPrefix(binary, "containerd-shim") {
				continue
			}
			utime, _ := strconv.ParseFloat(f[11], 64)
			stime, _ := strconv.ParseFloat(f[12], 64)
			var ws unix.WaitStatus
			if p, _ := unix.Wait4(pid, &ws, unix.WNOHANG, nil); p != pid {
				continue
			}
			delete(w.binary, pid)
			w.mu.Lock()
			w.spent[binary] += (utime + stime) * 1000 / userHZ
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
