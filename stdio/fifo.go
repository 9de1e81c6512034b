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
	w      *os.File
	reader *os.File // nil for a log file
}

func (o *outputFifo) close() {
	o.w.Close()
	if o.reader != nil {
		o.reader.Close()
	}
}

// openOutputFifo opens a reader of the shim's own on the client's fifo
// first, so the writer opens at once whether or not a client is attached,
// and so writes block rather than fail while none is. Both ends are plain
// pollable files: the pump splices into the writer and needs its deadlines.
func openOutputFifo(path string) (*outputFifo, error) {
	reader, err := openFifo(path, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("open output fifo: %w", err)
	}
	w, err := os.OpenFile(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		reader.Close()
		return nil, fmt.Errorf("open output fifo: %w", err)
	}
	return &outputFifo{w: w, reader: reader}, nil
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
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		return nil, err
	}
	if st, err := f.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		f.Close()
		return nil, fmt.Errorf("%s is not a fifo: %w", path, errdefs.ErrInvalidArgument)
	}
	return f, nil
}
