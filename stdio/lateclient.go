package stdio

import (
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
// the client's open would block until it gives up: for an exec, ctr gives
// up only after deleting it, CRI's ExecSync only after reading to EOF.
// Either way the output would be lost, or the probe hang.
//
// So once the process has exited, a fifo whose client was never seen and
// that still holds output is held open for the client: a writer of the
// shim's own lets the client's open return, and is closed, for the client
// to read EOF, as soon as the client has read everything, or a reader has
// closed, or DrainTimeout has passed.

// clientHold is the holding of one fifo open for its late client.
type clientHold struct {
	w      *os.File // the shim's extra writer
	events *os.File // inotify: reads and closes of the fifo
	done   chan struct{}
	err    error // set before done is closed
}

// holdForClient starts holding f open for its client, until deadline at the
// latest; nil if there is nothing to hold for. It must not be called again
// while the hold it returned runs.
func (f *clientFifo) holdForClient(deadline time.Time) *clientHold {
	if f.clientSeen || unread(f.reader) == 0 {
		return nil
	}
	h := &clientHold{done: make(chan struct{})}
	if err := h.open(f.reader, deadline); err != nil {
		h.err = err
		close(h.done)
		return h
	}
	go h.run(f.reader)
	return h
}

// open opens the extra writer and the watch, both through the reader's own
// descriptor: the fifo the shim holds, whatever has become of its path.
func (h *clientHold) open(reader *os.File, deadline time.Time) error {
	self := fmt.Sprintf("/proc/self/fd/%d", fdOf(reader))
	w, err := os.OpenFile(self, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("hold output fifo open for its client: %w", err)
	}
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		w.Close()
		return fmt.Errorf("inotify: %w", err)
	}
	events := os.NewFile(uintptr(fd), "inotify")
	// The shim never reads its own reader: a read is the client's.
	if _, err := unix.InotifyAddWatch(fd, self, unix.IN_ACCESS|unix.IN_CLOSE_NOWRITE); err != nil {
		w.Close()
		events.Close()
		return fmt.Errorf("watch output fifo: %w", err)
	}
	if err := events.SetReadDeadline(deadline); err != nil {
		w.Close()
		events.Close()
		return fmt.Errorf("watch output fifo: %w", err)
	}
	h.w, h.events = w, events
	return nil
}

// run waits until nothing is left for the client to read, or a reader
// closes (a client came and took what it wanted), or the deadline or stop.
func (h *clientHold) run(reader *os.File) {
	defer close(h.done)
	defer h.w.Close()
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
	// A past deadline wakes the read; a deadline set is never lost.
	h.events.SetReadDeadline(time.Unix(1, 0))
	<-h.done
}

// unread is how many bytes wait in the fifo f reads.
func unread(f *os.File) int {
	n := 0
	if raw, err := f.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ /* FIONREAD */) })
	}
	return n
}
