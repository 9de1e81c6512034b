package stdio

import (
	"errors"
	"fmt"
	"os"

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
	reader *os.File
	// clientSeen says a client's reader was open (or being opened) when the
	// shim opened the fifo; if not, output left in the fifo when the
	// process exits is held for a client that comes late (lateclient.go).
	clientSeen bool
	// pump writes into the fifo (nil when not known: taken back from the
	// previous process).
	pump *pump
	// hold is the holding of the fifo for a late client, once started.
	// reader is nil once a hold has let go of it. Guarded by the IO's mu.
	hold *clientHold
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
	return &outputFifo{w: w, fifo: &clientFifo{reader: reader, clientSeen: clientSeen}}, nil
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
