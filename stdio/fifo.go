package stdio

import (
	"errors"
	"fmt"
	"os"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// outputFifo is where one output stream goes: w, and for a client's fifo
// the shim's own reader on it.
type outputFifo struct {
	w    *os.File
	fifo *clientFifo // nil for a log file
}

func (o *outputFifo) close() {
	o.w.Close()
	if o.fifo != nil {
		o.fifo.reader.Close()
	}
}

// clientFifo is the shim's own reader on a client's output fifo. It keeps
// the pump's writes from failing with EPIPE while no client is attached.
type clientFifo struct {
	path   string
	reader *os.File
	// clientSeen says a client's reader was open when the shim opened the
	// fifo. Until one has been seen, output left in the fifo is waited for
	// when the process is deleted: containerd's client opens its reader in
	// a goroutine of its own and abandons it once it has deleted the
	// process, so a client whose goroutine starts late would lose all the
	// output. (containerd's runc shim cannot lose it that way: it blocks,
	// without a bound, opening its writer until a reader comes.)
	clientSeen bool
}

// openOutputFifo opens the client's fifo for writing and a reader of the
// shim's own on it, so the writer opens at once whether or not a client is
// attached, and so writes block rather than fail while none is. Both ends
// are plain pollable files: the pump splices into the writer and needs its
// deadlines.
func openOutputFifo(path string) (*outputFifo, error) {
	// Without O_NONBLOCK blocking, a writer opens only while a reader is
	// open: before the shim's own, that is the client's.
	w, err := os.OpenFile(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	clientSeen := err == nil
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return nil, fmt.Errorf("open output fifo: %w", classifyOpenError(err))
	}
	reader, err := openFifo(path, unix.O_RDONLY) // checks that it is a fifo
	if err != nil {
		if w != nil {
			w.Close()
		}
		return nil, fmt.Errorf("open output fifo: %w", err)
	}
	if w == nil {
		if w, err = os.OpenFile(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err != nil {
			reader.Close()
			return nil, fmt.Errorf("open output fifo: %w", err)
		}
	}
	return &outputFifo{w: w, fifo: &clientFifo{path: path, reader: reader, clientSeen: clientSeen}}, nil
}

// awaitClient waits, until deadline, for a client that was never seen to
// read what the process left in the fifo. It returns at once if a client
// was seen or nothing is left; it gives up if a client comes and goes
// without reading it all.
func (f *clientFifo) awaitClient(deadline time.Time) error {
	if f.clientSeen || unread(f.reader) == 0 {
		return nil
	}
	// A client's blocking open for reading (containerd/fifo's) returns only
	// while a writer is open, and the pump may have closed its own.
	w, err := os.OpenFile(f.path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("hold output fifo open for its client: %w", err)
	}
	defer w.Close()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify: %w", err)
	}
	events := os.NewFile(uintptr(fd), "inotify")
	defer events.Close()
	// The shim never reads its own reader: a read is the client's.
	if _, err := unix.InotifyAddWatch(fd, f.path, unix.IN_ACCESS|unix.IN_CLOSE_NOWRITE); err != nil {
		return fmt.Errorf("watch %s: %w", f.path, err)
	}
	if err := events.SetReadDeadline(deadline); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	for unread(f.reader) > 0 {
		n, err := events.Read(buf)
		if err != nil {
			return fmt.Errorf("no client read %s: %w", f.path, err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			if ev.Mask&unix.IN_CLOSE_NOWRITE != 0 {
				return nil // a client came and went: it took what it wanted
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
	return nil
}

// unread is how many bytes wait in the fifo f reads.
func unread(f *os.File) int {
	n := 0
	if raw, err := f.SyscallConn(); err == nil {
		raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ /* FIONREAD */) })
	}
	return n
}

// openStdinFifo opens the client's stdin fifo for reading, and a writer of
// the shim's own that keeps the process from seeing EOF until CloseStdin.
// Neither open waits for the client.
func openStdinFifo(path string) (r, keepOpen *os.File, err error) {
	if r, err = openFifo(path, unix.O_RDONLY); err != nil {
		return nil, nil, fmt.Errorf("open stdin fifo: %w", err)
	}
	keepOpen, err = os.OpenFile(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		r.Close()
		return nil, nil, fmt.Errorf("open stdin fifo: %w", err)
	}
	return r, keepOpen, nil
}

// openFifo opens the fifo at path without blocking and checks it is one.
func openFifo(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, classifyOpenError(err)
	}
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		f.Close()
		return nil, fmt.Errorf("%s is not a fifo: %w", path, errdefs.ErrInvalidArgument)
	}
	return f, nil
}

// classifyOpenError marks a client's fifo that does not exist as bad input.
func classifyOpenError(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	return err
}
