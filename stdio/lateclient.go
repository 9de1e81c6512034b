package stdio

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// A client that comes late. containerd's clients (cio, CRI's exec IO) open
// their reader on an output fifo with containerd/fifo: a blocking
// open(O_RDONLY) in a goroutine of their own, which returns only while a
// writer is open. containerd's runc shim cannot lose output to a late
// goroutine: it blocks, without a bound, opening its writer until a reader
// comes. tether never waits for a client to open (its own reader lets the
// writer open at once), so when the output ends (the process and whatever
// shared its stdout are gone, and the pump has closed its writer) before
// the client's goroutine has even called open(), that open would block
// until the client gives up: ctr 1.x's exec only after deleting it, ctr
// 2.x's exec and CRI's ExecSync never (they read to EOF before they
// delete). The output would be lost, or the client hang.
//
// So when the pump of a fifo whose client was not seen at open ends, the
// fifo is held for the client, until DrainTimeout at the latest. While
// output is left in it, a writer of the shim's own lets the client's open
// return. Once it is empty, the shim lets go of its reader and of that
// writer and looks, every pollInterval, whether a client's reader is open
// or being opened (the kernel counts a blocked open as a reader): a
// writer's open without O_NONBLOCK then succeeds, and closing that writer
// at once gives the client its EOF. Polling needs no inotify instance
// (there are 128 for all of root's daemons) and no thread blocked in
// open().

// pollInterval is how often a hold looks at its fifo.
const pollInterval = 20 * time.Millisecond

// clientHold is the holding of one fifo open for its late client.
type clientHold struct {
	stopOnce sync.Once
	stopping chan struct{}
	// taken is closed once no output is left for the client (or the hold
	// has ended): an exec's Delete waits for it.
	taken       chan struct{}
	takenOnce   sync.Once
	outputTaken atomic.Bool // taken was closed because the output was
	done        chan struct{}
	err         error // set before done is closed
}

// startHold starts holding f for its late client until deadline.
func (f *clientFifo) startHold(deadline time.Time) *clientHold {
	h := &clientHold{stopping: make(chan struct{}), taken: make(chan struct{}), done: make(chan struct{})}
	go h.run(f, deadline)
	return h
}

func (h *clientHold) run(f *clientFifo, deadline time.Time) {
	defer close(h.done)
	defer h.takenOnce.Do(func() { close(h.taken) })
	var keep, handle *os.File // the extra writer; a handle once the reader is let go of
	defer func() {
		if keep != nil {
			keep.Close()
		}
		if handle != nil {
			f.retake(handle)
			handle.Close()
		}
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	ticker := time.NewTicker(pollInterval)
	defer ticker.Stop()
	for {
		ended, err := h.look(f, &keep, &handle)
		if ended || err != nil {
			h.err = err
			return
		}
		select {
		case <-h.stopping:
			return
		case <-timer.C:
			h.err = errors.New("no client came for the output")
			return
		case <-ticker.C:
		}
	}
}

// look does one step of the hold; ended says a client has been given
// everything, EOF included.
func (h *clientHold) look(f *clientFifo, keep, handle **os.File) (ended bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reader != nil && unread(f.reader) > 0 {
		if *keep == nil {
			if *keep, err = os.OpenFile(procFd(f.reader), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err != nil {
				return false, fmt.Errorf("hold output fifo open for its client: %w", err)
			}
		}
		return false, nil
	}
	h.outputTaken.Store(true)
	h.takenOnce.Do(func() { close(h.taken) })
	if *keep != nil {
		(*keep).Close()
		*keep = nil
	}
	if f.reader != nil {
		// A handle that is no reader: the shim's own must go for a
		// writer's open to tell whether another is there.
		if *handle, err = os.OpenFile(procFd(f.reader), unix.O_PATH|unix.O_CLOEXEC, 0); err != nil {
			return false, fmt.Errorf("hold output fifo open for its client: %w", err)
		}
		f.reader.Close()
		f.reader = nil
	}
	w, err := os.OpenFile(procFd(*handle), unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	switch {
	case err == nil:
		w.Close() // a client's reader is there: it reads EOF now
		return true, nil
	case errors.Is(err, unix.ENXIO):
		return false, nil
	}
	return false, fmt.Errorf("look for the output fifo's client: %w", err)
}

// retake gives f a reader again after a hold that let go of it, so a
// stopped hold leaves the fifo as it found it (a handover passes it on).
func (f *clientFifo) retake(handle *os.File) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.reader == nil {
		f.reader, _ = os.OpenFile(procFd(handle), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	}
}

// stop ends the hold and returns once it has; the fifo has its reader.
func (h *clientHold) stop() {
	h.stopOnce.Do(func() { close(h.stopping) })
	<-h.done
}

// procFd names f's open file, for opening it again.
func procFd(f *os.File) string {
	return fmt.Sprintf("/proc/self/fd/%d", fdOf(f))
}

// unread is how many bytes wait in the fifo f reads.
func unread(f *os.File) int {
	n := 0
	if raw, err := f.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ /* FIONREAD */) })
	}
	return n
}
