package cgroup

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/kmsg"
)

// OOMWatcher waits on the OOM notifiers of all the shim's containers with
// one epoll set, read by one goroutine that runs only while something is
// watched (memory is paid per container; an idle shim keeps none).
//
// Each watch is a handle that owns its descriptor. The epoll set carries
// the handle's id, never the descriptor number: once a watch ended and its
// descriptor was closed, the number may be reused by a new watch, and a
// late event or Close for the old watch must not reach the new one.
//
// A notifier can miss a kill (the kernel drops a rate-limited notice with
// its cgroup): Flush makes up for it before the init's exit is published.
type OOMWatcher struct {
	log *slog.Logger
	// klog is the kernel's log of OOM kills.
	klog KillLog
	// logUnreadable says once that klog cannot be read.
	logUnreadable sync.Once

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

// KillLog is the kernel's log of OOM kills (kmsg.Log), whose report of a
// kill cannot go missing: Mark marks where it is now, KillsOf counts the
// kills after m of the container whose init is pid, in cgroup memcg.
type KillLog interface {
	Mark() (kmsg.Mark, error)
	KillsOf(m kmsg.Mark, pid int, memcg string) (uint64, error)
}

// OOMWatch is one cgroup's watch. It owns its notifier descriptor.
type OOMWatch struct {
	w     *OOMWatcher
	id    uint64
	cg    string // the cgroup, for logs
	onOOM func()
	// pid and memcg are the container's init and cgroup as the kernel's
	// log names them; mark is where that log stood when the watch began
	// (nil if it could not be read). They do not change.
	pid   int
	memcg string
	mark  *kmsg.Mark

	// mu is held while the watch's notifier is checked and onOOM runs, and
	// while the watch ends: after Close returns, onOOM neither runs nor
	// will.
	mu sync.Mutex
	// n is the notifier, nil once the watch has ended. Guarded by mu.
	n notifier
	// reported counts the kills reported since mark; settled is set when
	// none can have been missed (the last count was read from an empty
	// cgroup, or Flush has read the kernel's log); gone when the watch
	// ended because its cgroup was removed. Guarded by mu.
	reported      uint64
	settled, gone bool
	// ended is closed when the watch ends, whoever ends it.
	ended chan struct{}
}

// NewOOMWatcher returns a watcher with nothing to watch yet, which reads
// klog for the kills its notifiers missed.
func NewOOMWatcher(log *slog.Logger, klog KillLog) *OOMWatcher {
	return &OOMWatcher{log: log, klog: klog, watches: map[uint64]*OOMWatch{}}
}

// Watch watches cg, the cgroup of the container whose init is pid, for
// OOM kills. onOOM runs on each kill, one at a time: in the watcher's
// goroutine, or in Flush's caller; it must not wait for the watch's own
// Close, Handover or Flush (they wait for it). The watch ends by itself,
// closing its descriptor, when the cgroup is removed.
func (w *OOMWatcher) Watch(cg Cgroup, pid int, onOOM func()) (*OOMWatch, error) {
	// The mark first: a kill after it is the container's, whatever pid
	// the kernel's log named before.
	mark := w.markLog()
	n, err := cg.openNotifier()
	if err != nil {
		return nil, fmt.Errorf("watch %s for oom kills: %w", cg.Path(), err)
	}
	h := w.newWatch(cg, pid, n, onOOM, mark, 0)
	if err := w.add(h); err != nil {
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
func (w *OOMWatcher) Adopt(cg Cgroup, pid int, st OOMWatchState, onOOM func()) (*OOMWatch, error) {
	mark, reported := st.LogMark, st.Reported
	if mark == nil { // handed over by a shim that did not mark: from now on
		mark, reported = w.markLog(), 0
	}
	n, err := cg.adoptNotifier(st)
	if err != nil {
		return nil, fmt.Errorf("adopt oom watch of %s: %w", cg.Path(), err)
	}
	h := w.newWatch(cg, pid, n, onOOM, mark, reported)
	if err := w.add(h); err != nil {
		return nil, fmt.Errorf("adopt oom watch of %s: %w", cg.Path(), err)
	}
	return h, nil
}

func (w *OOMWatcher) newWatch(cg Cgroup, pid int, n notifier, onOOM func(), mark *kmsg.Mark, reported uint64) *OOMWatch {
	return &OOMWatch{w: w, cg: cg.Path().String(), onOOM: onOOM, n: n, ended: make(chan struct{}),
		pid: pid, memcg: cg.memcgPath(), mark: mark, reported: reported}
}

// markLog marks where the kernel's log is now, for a watch that begins;
// nil when the log cannot be read (no CAP_SYSLOG), which leaves the
// watch's Flush with the cgroup's own count (said once).
func (w *OOMWatcher) markLog() *kmsg.Mark {
	m, err := w.klog.Mark()
	if err != nil {
		w.logUnreadable.Do(func() {
			w.log.Warn("oom watcher: the kernel's log cannot be read: an OOM kill in a cgroup removed before its count is read goes unreported", "error", err)
		})
		return nil
	}
	return &m
}

// add gives h, a new watch, its id and its place in the epoll set.
func (w *OOMWatcher) add(h *OOMWatch) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ep == nil {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return fmt.Errorf("epoll: %w", err)
		}
		// Non-blocking, the epoll set is polled by the runtime: the
		// goroutine waiting on it holds no thread.
		unix.SetNonblock(epfd, true)
		w.ep = os.NewFile(uintptr(epfd), "oom-epoll")
	}
	w.lastID++
	h.id = w.lastID
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	setEpollID(&ev, h.id)
	if err := w.epollCtl(unix.EPOLL_CTL_ADD, h.n.fd(), &ev); err != nil {
		return fmt.Errorf("epoll add: %w", err)
	}
	w.watches[h.id] = h
	if !w.running {
		w.running = true
		w.stopped = make(chan struct{})
		w.ep.SetReadDeadline(time.Time{})
		go w.run(w.ep, w.stopped)
	}
	return nil
}

// Flush reports, before it returns, every OOM kill in the cgroup not
// reported yet: the caller is about to publish the exit of the
// container's init, which must come after its OOM (containerd's CRI calls
// an exit OOMKilled only if the OOM came first). It reads the count once
// more; when the cgroup is gone and no count was read from it empty, the
// kernel's log's kills of the container since the watch began, beyond
// those reported, are reported once. It waits for nothing else.
func (h *OOMWatch) Flush() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n != nil {
		h.check()
	}
	if !h.gone || h.settled {
		return
	}
	h.settled = true // nothing more to learn: the cgroup is gone
	if h.mark == nil {
		return // the log cannot be read (said once)
	}
	kills, err := h.w.klog.KillsOf(*h.mark, h.pid, h.memcg)
	if err != nil {
		h.w.log.Warn("oom watch: read the kernel's log for the kills of a removed cgroup", "cgroup", h.cg, "error", err)
		return
	}
	if kills > h.reported {
		h.w.log.Debug("oom kill found in the kernel's log: the cgroup went before its count was read", "cgroup", h.cg, "kills", kills, "reported", h.reported)
		h.reported = kills
		h.onOOM()
	}
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
	st.LogMark, st.Reported = h.mark, h.reported
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
	if h.n != nil {
		h.check()
	}
}

// check reads the notifier, reports the kills it counts, and ends the
// watch if the cgroup is gone. h.mu is held and the watch live.
func (h *OOMWatch) check() {
	c := h.n.check()
	if c.kills > 0 {
		h.reported += c.kills
		h.onOOM()
	}
	if c.gone {
		h.w.log.Debug("oom watch ended: cgroup gone", "cgroup", h.cg)
		h.gone = true
		h.end(false)
		return
	}
	h.settled = c.empty
}

// setEpollID stores id as the event's 64-bit user data, which x/sys/unix
// splits into Fd (low half) and Pad (high half).
func setEpollID(ev *unix.EpollEvent, id uint64) {
	ev.Fd, ev.Pad = int32(uint32(id)), int32(uint32(id>>32))
}

func epollID(ev unix.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
