package cgroup

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// OOMWatcher waits on the OOM notifiers of all the shim's containers with
// one epoll set, read by one goroutine that runs only while something is
// watched (memory is paid per container; an idle shim keeps none).
//
// Each watch is a handle that owns its descriptor. The epoll set carries
// the handle's id, never the descriptor number: once a watch ended and its
// descriptor was closed, the number may be reused by a new watch, and a
// late event or Close for the old watch must not reach the new one.
type OOMWatcher struct {
	log *slog.Logger

	mu sync.Mutex
	// ep is the epoll set as a pollable file, nil until the first watch.
	ep *os.File
	// watches are the live watches by id.
	watches map[uint64]*OOMWatch
	// lastID is the id of the latest watch; ids are never reused.
	lastID uint64
	// stopped is closed when the reading goroutine ends; nil while none
	// was started.
	stopped chan struct{}
	running bool
}

// OOMWatch is one cgroup's watch. It owns its notifier descriptor.
type OOMWatch struct {
	w     *OOMWatcher
	id    uint64
	cg    string // the cgroup, for logs
	onOOM func()
	// mu is held while the watch's notifier is checked and onOOM runs, and
	// while the watch ends: after Close returns, onOOM neither runs nor
	// will.
	mu sync.Mutex
	// n is the notifier, nil once the watch has ended. Guarded by mu.
	n notifier
	// ended is closed when the watch ends, whoever ends it.
	ended chan struct{}
}

// NewOOMWatcher returns a watcher with nothing to watch yet.
func NewOOMWatcher(log *slog.Logger) *OOMWatcher {
	return &OOMWatcher{log: log, watches: map[uint64]*OOMWatch{}}
}

// Watch watches cg for OOM kills. onOOM runs in the watcher's goroutine on
// each kill, one at a time; it must not wait for the watch's own Close or
// Handover (they wait for it). The watch ends by itself, closing its
// descriptor, when the cgroup is removed.
func (w *OOMWatcher) Watch(cg Cgroup, onOOM func()) (*OOMWatch, error) {
	n, err := cg.openNotifier()
	if err != nil {
		return nil, fmt.Errorf("watch %s for oom kills: %w", cg.Path(), err)
	}
	h, err := w.add(cg, n, onOOM)
	if err != nil {
		unix.Close(n.fd())
		return nil, fmt.Errorf("watch %s for oom kills: %w", cg.Path(), err)
	}
	return h, nil
}

// Adopt goes on watching cg with the notifier of a watch handed over by
// Handover, usually in a previous shim process. A kill since the handover
// is reported (once) as soon as the watcher runs. On success the watch owns
// st.FD, and makes it close-on-exec again; on failure the caller still
// does, unless st.FD is not a notifier at all.
func (w *OOMWatcher) Adopt(cg Cgroup, st OOMWatchState, onOOM func()) (*OOMWatch, error) {
	n, err := cg.adoptNotifier(st)
	if err != nil {
		return nil, fmt.Errorf("adopt oom watch of %s: %w", cg.Path(), err)
	}
	h, err := w.add(cg, n, onOOM)
	if err != nil {
		return nil, fmt.Errorf("adopt oom watch of %s: %w", cg.Path(), err)
	}
	return h, nil
}

func (w *OOMWatcher) add(cg Cgroup, n notifier, onOOM func()) (*OOMWatch, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ep == nil {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return nil, fmt.Errorf("epoll: %w", err)
		}
		// Non-blocking, the epoll set is polled by the runtime: the
		// goroutine waiting on it holds no thread.
		unix.SetNonblock(epfd, true)
		w.ep = os.NewFile(uintptr(epfd), "oom-epoll")
	}
	w.lastID++
	h := &OOMWatch{w: w, id: w.lastID, cg: cg.Path().String(), onOOM: onOOM, n: n, ended: make(chan struct{})}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEpollID(&ev, h.id)
	if err := w.epollCtl(unix.EPOLL_CTL_ADD, n.fd(), &ev); err != nil {
		return nil, fmt.Errorf("epoll add: %w", err)
	}
	w.watches[h.id] = h
	if !w.running {
		w.running = true
		w.stopped = make(chan struct{})
		w.ep.SetReadDeadline(time.Time{})
		go w.run(w.ep, w.stopped)
	}
	return h, nil
}

// Close stops the watch and closes its descriptor, unless the watch has
// already ended (its cgroup went, or Close or Handover ran): then it does
// nothing. It waits for an onOOM of the watch that is running.
func (h *OOMWatch) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.end(false)
}

// Handover stops the watch without closing its descriptor, and says how a
// new shim process goes on watching it with Adopt. The descriptor is then
// the caller's: it clears close-on-exec before exec'ing the new shim and,
// if that fails, Adopts it again or closes it. ok is false when the watch
// had already ended: there is nothing to hand over.
func (h *OOMWatch) Handover() (st OOMWatchState, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		return OOMWatchState{}, false
	}
	st = h.n.state()
	h.end(true)
	return st, true
}

// end ends the watch once: it leaves the epoll set and the watcher, and
// its descriptor is closed unless handed over. h.mu is held.
func (h *OOMWatch) end(handover bool) {
	if h.n == nil {
		return
	}
	fd := h.n.fd()
	h.n = nil
	h.w.forget(h.id, fd)
	if !handover {
		unix.Close(fd)
	}
	close(h.ended)
}

// forget removes the watch id, whose descriptor fd is still open.
func (w *OOMWatcher) forget(id uint64, fd int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.watches, id)
	if err := w.epollCtl(unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		w.log.Warn("oom watch: leave epoll set", "fd", fd, "error", err)
	}
	if len(w.watches) == 0 {
		w.ep.SetReadDeadline(time.Now()) // wake the reader so it ends
	}
}

func (w *OOMWatcher) epollCtl(op, fd int, ev *unix.EpollEvent) error {
	raw, err := w.ep.SyscallConn()
	if err != nil {
		return err
	}
	if cerr := raw.Control(func(epfd uintptr) { err = unix.EpollCtl(int(epfd), op, fd, ev) }); cerr != nil {
		return cerr
	}
	return err
}

// run reads the epoll set until nothing is watched any more.
func (w *OOMWatcher) run(ep *os.File, stopped chan struct{}) {
	defer close(stopped)
	events := make([]unix.EpollEvent, 16)
	for {
		var werr error
		err := rawRead(ep, func(epfd int) bool {
			for {
				n, err := unix.EpollWait(epfd, events, 0)
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if err != nil {
					werr = err
					return true
				}
				for _, ev := range events[:n] {
					w.fire(epollID(ev))
				}
				// The runtime polls the set edge-triggered: read it to the
				// end before waiting for it again.
				if n < len(events) {
					return false
				}
			}
		})
		err = errors.Join(err, werr)
		w.mu.Lock()
		if errors.Is(err, os.ErrDeadlineExceeded) && len(w.watches) > 0 {
			// Woken with watches added since: go on.
			ep.SetReadDeadline(time.Time{})
			w.mu.Unlock()
			continue
		}
		w.running = false
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			w.log.Error("oom watcher stopped: oom kills of watched containers go unreported", "watches", len(w.watches), "error", err)
		}
		w.mu.Unlock()
		return
	}
}

func rawRead(f *os.File, read func(fd int) bool) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	return raw.Read(func(fd uintptr) bool { return read(int(fd)) })
}

// fire checks the watch id, which epoll found readable. An id no longer
// watched (its watch ended meanwhile) is ignored.
func (w *OOMWatcher) fire(id uint64) {
	w.mu.Lock()
	h := w.watches[id]
	w.mu.Unlock()
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == nil {
		return
	}
	oom, gone := h.n.check()
	if oom {
		h.onOOM()
	}
	if gone {
		w.log.Debug("oom watch ended: cgroup gone", "cgroup", h.cg)
		h.end(false)
	}
}

// setEpollID stores id as the event's 64-bit user data, which x/sys/unix
// splits into Fd (low half) and Pad (high half).
func setEpollID(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func epollID(ev unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
