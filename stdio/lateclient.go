package stdio

import (
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A client that comes late. containerd's clients (cio, CRI's exec IO) open
// their reader on an output fifo with containerd/fifo: a blocking
// open(O_RDONLY) in a goroutine of their own, which returns only while a
// writer is open. containerd's runc shim cannot lose output to a late
// goroutine: it blocks, without a bound, opening its writer until a reader
// comes. tether never waits for a client to open (its own reader lets the
// writer open at once), so when the process exits before the client's
// goroutine has even called open(), and the pump then closes its writer,
// the client's open would block until it gives up: ctr 1.x's exec only
// after deleting it, ctr 2.x's exec and CRI's ExecSync never (they read to
// EOF before they delete). The output would be lost, or the client hang.
//
// So once the process has exited and its pump has closed its writer, a
// fifo whose client was never seen at open is held for the client, until
// DrainTimeout at the latest:
//   - with output left in it, a writer of the shim's own lets the client's
//     open return, and is closed (for the client to read EOF) once the
//     client has read everything, or a reader has closed;
//   - empty, the shim lets go of its reader and opens a writer, blocking:
//     the open returns as soon as a client's reader is open or being
//     opened (at once for a client attached already), and closing it then
//     gives the client its EOF.

// clientHold is the holding of one fifo open for its late client.
type clientHold struct {
	// output says there was output to hold: a Delete waits for that.
	output bool
	// With output: the shim's extra writer, and inotify watching reads and
	// closes of the fifo.
	keep, events *os.File
	// Empty: a handle on the fifo (no reader, no writer), whose opening
	// for reading wakes the writer's blocking open.
	handle *os.File
	wake   chan struct{}
	done   chan struct{}
	err    error // set before done is closed
}

// holdForClient starts holding f open for its late client, until deadline
// at the latest; nil if there is no reason to. pumpEnded says the pump has
// closed its writer. f.reader may be closed (and nil) afterwards.
func (f *clientFifo) holdForClient(deadline time.Time, pumpEnded bool) *clientHold {
	if f.clientSeen || !pumpEnded || f.reader == nil {
		return nil
	}
	h := &clientHold{output: unread(f.reader) > 0, wake: make(chan struct{}), done: make(chan struct{})}
	if !h.output {
		// A handle on the fifo that is no reader: the shim's own must go
		// for a writer's open to wait for another.
		handle, err := os.OpenFile(procFd(f.reader), unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			h.fail(fmt.Errorf("hold output fifo open for its client: %w", err))
			return h
		}
		f.reader.Close()
		f.reader = nil
		h.handle = handle
		go h.runEmpty(deadline)
		return h
	}
	if err := h.openWithOutput(f.reader, deadline); err != nil {
		h.fail(err)
		return h
	}
	go h.runWithOutput(f.reader)
	return h
}

func (h *clientHold) fail(err error) {
	h.err = err
	close(h.done)
}

// openWithOutput opens the extra writer and the watch, both through the
// reader's own descriptor: the fifo the shim holds, whatever has become of
// its path.
func (h *clientHold) openWithOutput(reader *os.File, deadline time.Time) error {
	self := procFd(reader)
	w, err := os.OpenFile(self, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("hold output fifo open for its client: %w", err)
	}
	// The shim never reads its own reader: a read is the client's.
	if err := h.watch(self, unix.IN_ACCESS|unix.IN_CLOSE_NOWRITE, deadline); err != nil {
		w.Close()
		return err
	}
	h.keep = w
	return nil
}

// watch starts h.events on the fifo at self for mask, until deadline.
func (h *clientHold) watch(self string, mask uint32, deadline time.Time) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	events := os.NewFile(uintptr(fd), "inotify")
	if _, err := unix.InotifyAddWatch(fd, self, mask); err != nil {
		events.Close()
		return fmt.Errorf("watch output fifo: %w", err)
	}
	if err := events.SetReadDeadline(deadline); err != nil {
		events.Close()
		return fmt.Errorf("watch output fifo: %w", err)
	}
	h.events = events
	return nil
}

// runWithOutput waits until nothing is left for the client to read, or a
// reader closes (a client came and took what it wanted), or the deadline or
// stop.
func (h *clientHold) runWithOutput(reader *os.File) {
	defer close(h.done)
	defer h.keep.Close()
	defer h.events.Close()
	buf := make([]byte, 4096)
	for unread(reader) > 0 {
		n, err := h.events.Read(buf)
		if err != nil {
			h.err = fmt.Errorf("%d bytes of output no client read: %w", unread(reader), err)
			return
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&unix.IN_CLOSE_NOWRITE != 0 {
				return
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// runEmpty opens a writer, blocking, until a client's reader is there (then
// closes it: the client reads EOF), or the deadline or stop, when a reader
// of the shim's own wakes the open.
func (h *clientHold) runEmpty(deadline time.Time) {
	defer close(h.done)
	defer h.handle.Close()
	self := procFd(h.handle)
	opened := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(self, unix.O_WRONLY|unix.O_CLOEXEC, 0) // blocks
		if err == nil {
			w.Close()
		}
		opened <- err
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case err := <-opened:
		if err != nil {
			h.err = fmt.Errorf("hold output fifo open for its client: %w", err)
		}
		return
	case <-timer.C:
		h.err = errors.New("no client opened its output fifo")
	case <-h.wake:
	}
	r, err := os.OpenFile(self, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	<-opened
	if err == nil {
		r.Close()
	}
}

// wait returns once the hold has ended; its error says the client did not
// take everything.
func (h *clientHold) wait() error {
	<-h.done
	return h.err
}

// stop ends the hold now.
func (h *clientHold) stop() {
	select {
	case <-h.done:
		return
	default:
	}
	if h.output {
		// A past deadline wakes the read; a deadline set is never lost.
		h.events.SetReadDeadline(time.Unix(1, 0))
	} else {
		close(h.wake)
	}
	<-h.done
}

// procFd names f's open file, for opening it again or watching it.
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
