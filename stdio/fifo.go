package stdio

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

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
	// clientSeen says a client's reader was open (or being opened) when the
	// shim opened the fifo; if not, the fifo is held for a client that
	// comes late once the output ends (lateclient.go).
	clientSeen bool
	// ended is closed once the pump into the fifo has ended (or none runs
	// in this process): a hold, if any, has started by then.
	ended    chan struct{}
	endedNow sync.Once

	mu sync.Mutex
	// reader is nil while a hold has let go of it, and once closed.
	reader *os.File
	// hold is the holding for a late client, once started.
	hold *clientHold
	// closed is set when the IO is closed or handed over: no hold starts.
	closed bool
	// resumeHold says a hold ran when the IO was handed over.
	resumeHold bool

	// awaiting, if set, is called as awaitTaken begins and ends (tests
	// observe the waits).
	awaiting func(begins bool)
}

// outputEnded is called when the pump into the fifo has ended on its own:
// a client not seen yet gets its hold.
func (f *clientFifo) outputEnded() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.clientSeen && !f.closed && f.hold == nil && f.reader != nil {
		f.hold = f.startHold(time.Now().Add(DrainTimeout))
	}
	f.markEnded()
}

// markEnded says no pump writes into the fifo any more.
func (f *clientFifo) markEnded() {
	f.endedNow.Do(func() { close(f.ended) })
}

// newClientFifo is the shim's reader on a client's fifo.
func newClientFifo(reader *os.File, clientSeen bool) *clientFifo {
	return &clientFifo{reader: reader, clientSeen: clientSeen, ended: make(chan struct{})}
}

// release stops any hold and takes the reader out, for closing or handing
// over; held says a hold was still running.
func (f *clientFifo) release() (reader *os.File, held bool) {
	f.mu.Lock()
	h := f.hold
	f.hold, f.closed = nil, true
	f.mu.Unlock()
	if h != nil {
		select {
		case <-h.done:
		default:
			held = true
		}
		h.stop() // gives the reader back
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	reader, f.reader = f.reader, nil
	return reader, held
}

// park stops any hold for a handover and says whether one ran; the fifo
// keeps its reader, and starts no hold until unpark.
func (f *clientFifo) park() (reader *os.File, held bool) {
	reader, held = f.release()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reader, f.resumeHold = reader, held
	return reader, held
}

// unpark goes on after an abandoned handover: a hold that ran starts again.
func (f *clientFifo) unpark() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = false
	if f.resumeHold && f.reader != nil {
		f.hold = f.startHold(time.Now().Add(DrainTimeout))
	}
	f.resumeHold = false
}

// awaitTaken waits, until deadline, for the output to end and for the
// client to have read it from the fifo: ctr 1.x gives up on its reader
// once an exec's Delete has returned, and until its goroutine has seen its
// open return (on a loaded node that can be after the exit was reported)
// it drops what the fifo holds; the Delete closes the pump. The output may
// have drained, and the exit been reported, while another process still
// held the process's stdout or terminal (a child the shim forked, before
// its exec closes the shim's descriptors; output still coming through a
// terminal to a slow client), so awaitTaken first waits for the pump into
// the fifo to end, which also starts the hold for a late client. A running
// hold (lateclient.go) says when a late client has taken the output;
// without one it looks until deadline for the fifo to be empty.
func (f *clientFifo) awaitTaken(deadline time.Time) error {
	if f.awaiting != nil {
		f.awaiting(true)
		defer f.awaiting(false)
	}
	if err := f.awaitEnded(deadline); err != nil {
		return err
	}
	f.mu.Lock()
	h := f.hold
	f.mu.Unlock()
	if h == nil {
		return f.awaitEmpty(deadline)
	}
	<-h.taken
	if h.outputTaken.Load() {
		return nil
	}
	return h.err // the hold ended with output left: err is set
}

// awaitEnded waits until the pump into the fifo has ended, or deadline.
func (f *clientFifo) awaitEnded(deadline time.Time) error {
	select {
	case <-f.ended:
		return nil
	default:
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-f.ended:
		return nil
	case <-t.C:
	}
	select {
	case <-f.ended:
		return nil
	default:
		return errors.New("the output has not ended: another process still holds the process's stdout")
	}
}

// awaitEmpty waits until no output is left in the fifo, or deadline.
func (f *clientFifo) awaitEmpty(deadline time.Time) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		f.mu.Lock()
		n := 0
		if f.reader != nil {
			n = unread(f.reader)
		}
		f.mu.Unlock()
		if n == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("the client has not read the last %d bytes of output", n)
		}
		<-tick.C
	}
}

// openOutputFifo opens the client's fifo for writing and a reader of the
// shim's own on it, so the writer opens at once whether or not a client is
// attached, and so writes block rather than fail while none is. Both ends
// are plain pollable files: the pump splices into the writer and needs its
// deadlines.
func openOutputFifo(path string) (*outputFifo, error) {
	if st, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("open output fifo: %w", classifyOpenError(err))
	} else if st.Mode()&os.ModeNamedPipe == 0 {
		return nil, fmt.Errorf("%s is not a fifo: %w", path, errdefs.ErrInvalidArgument)
	}
	// A writer opens without blocking only if a reader is open, or being
	// opened (the kernel counts a blocked open(O_RDONLY) as a reader):
	// before the shim's own reader exists, that is the client's.
	flag := unix.O_WRONLY | unix.O_NONBLOCK | unix.O_NOCTTY | unix.O_CLOEXEC
	w, err := os.OpenFile(path, flag, 0)
	clientSeen := err == nil
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return nil, fmt.Errorf("open output fifo: %w", classifyOpenError(err))
	}
	reader, err := openFifo(path, unix.O_RDONLY)
	if err != nil {
		if w != nil {
			w.Close()
		}
		return nil, fmt.Errorf("open output fifo: %w", err)
	}
	if w == nil {
		if w, err = os.OpenFile(path, flag, 0); err != nil {
			reader.Close()
			return nil, fmt.Errorf("open output fifo: %w", err)
		}
	}
	return &outputFifo{w: w, fifo: newClientFifo(reader, clientSeen)}, nil
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
