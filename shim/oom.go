package shim

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// oomWatcher waits on the OOM notifiers of all the shim's containers with
// one epoll set, read by one goroutine that runs only while something is
// watched.
type oomWatcher struct {
	log *slog.Logger

	mu sync.Mutex
	// ep is the epoll set as a pollable file; nil until the first watch.
	// Guarded by mu.
	ep *os.File
	// watches are the watched notifiers by descriptor. Guarded by mu.
	watches map[int]*oomWatch
	// running is set while the reading goroutine runs. Guarded by mu.
	running bool
}

type oomWatch struct {
	fd    int
	check func() (oom, gone bool)
	onOOM func()
}

func newOOMWatcher(log *slog.Logger) *oomWatcher {
	return &oomWatcher{log: log, watches: make(map[int]*oomWatch)}
}

// add watches fd; onOOM runs (in the watcher's goroutine) on each OOM kill.
// The watcher owns fd from now on.
func (w *oomWatcher) add(fd int, check func() (bool, bool), onOOM func()) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ep == nil {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("epoll for oom events: %w", err)
		}
		unix.SetNonblock(epfd, true)
		w.ep = os.NewFile(uintptr(epfd), "oom-epoll")
	}
	var epfd int
	raw, _ := w.ep.SyscallConn()
	raw.Control(func(f uintptr) { epfd = int(f) })
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		unix.Close(fd)
		return fmt.Errorf("watch oom events: %w", err)
	}
	w.watches[fd] = &oomWatch{fd: fd, check: check, onOOM: onOOM}
	if !w.running {
		w.running = true
		w.ep.SetReadDeadline(time.Time{})
		go w.run()
	}
	return nil
}

// remove stops watching fd and closes it.
func (w *oomWatcher) remove(fd int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removeLocked(fd)
}

func (w *oomWatcher) removeLocked(fd int) {
	if _, ok := w.watches[fd]; !ok {
		return
	}
	delete(w.watches, fd)
	raw, _ := w.ep.SyscallConn()
	raw.Control(func(epfd uintptr) { unix.EpollCtl(int(epfd), unix.EPOLL_CTL_DEL, fd, nil) })
	unix.Close(fd)
	if len(w.watches) == 0 {
		// Wake the reader so it can end.
		w.ep.SetReadDeadline(time.Now())
	}
}

// run reads the epoll set until nothing is watched any more.
func (w *oomWatcher) run() {
	raw, _ := w.ep.SyscallConn()
	events := make([]unix.EpollEvent, 16)
	for {
		err := raw.Read(func(epfd uintptr) bool {
			n, err := unix.EpollWait(int(epfd), events, 0)
			if err != nil || n == 0 {
				return false // nothing pending: wait for the set to be readable
			}
			for _, ev := range events[:n] {
				w.fire(int(ev.Fd))
			}
			return false
		})
		w.mu.Lock()
		if len(w.watches) == 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				w.log.Error("oom watcher stopped", "error", err)
			}
			w.running = false
			w.mu.Unlock()
			return
		}
		w.ep.SetReadDeadline(time.Time{})
		w.mu.Unlock()
	}
}

func (w *oomWatcher) fire(fd int) {
	w.mu.Lock()
	watch := w.watches[fd]
	w.mu.Unlock()
	if watch == nil {
		return
	}
	oom, gone := watch.check()
	if oom {
		watch.onOOM()
	}
	if gone {
		w.remove(fd)
	}
}
