package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/containerd/console"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Stdio names where a process's standard streams go, as containerd sends them:
// paths of fifos the client has created (empty for none).
type Stdio struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// drainTimeout bounds how long an exit waits for the process's output to
// reach a client that is not reading; the output still moves afterwards.
const drainTimeout = 10 * time.Second

// processIO joins one process's standard streams to the client's fifos. For a
// plain process these are pipes, for a terminal the console master.
type processIO struct {
	stdio Stdio

	// child are the process's ends of its stdin, stdout and stderr pipes,
	// handed to the runtime and closed once it has started the process.
	child [3]*os.File
	// socket receives the console master from the runtime (terminal only).
	socket *runc.Socket
	// consoleOut and consoleHold are the client's stdout fifo for a terminal
	// (writer and the shim's own reader), until the console pump takes them.
	consoleOut, consoleHold *os.File

	mu sync.Mutex
	// console is the terminal master once received. Guarded by mu.
	console console.Console
	// stdin is the client's stdin fifo, read by copyStdin. Guarded by mu.
	stdin io.ReadCloser
	// stdinHold is the shim's own writer on the stdin fifo: the process sees
	// EOF only after CloseIO drops it, not when a client merely goes away
	// (containerd restarting, say). Guarded by mu.
	stdinHold io.Closer
	// pumps move stdout and stderr (or the console) to the client. Guarded by mu.
	pumps []*pump
	// holds are the shim's readers on the output fifos, so the pumps' writes
	// never fail with EPIPE while no client is attached. Guarded by mu.
	holds []*os.File
	// stdinDst is where copyStdin writes: the process's stdin pipe or the
	// console. close sets its write deadline, so a process that stopped
	// reading cannot hold the copy (and a Delete) forever. Guarded by mu.
	stdinDst *os.File
	// stdinDone is closed when copyStdin has ended. nil without stdin.
	stdinDone chan struct{}
	// logger is the logging binary of a binary:// URI, if any.
	logger *binaryLogger
}

// ioConfig is how a process's stdio is set up, beyond the client's paths.
type ioConfig struct {
	// uid and gid own the process's pipe ends (IoUid/IoGid), so a process
	// running as another user can reopen them through /proc/self/fd.
	uid, gid uint32
	// id and namespace are told to a logging binary.
	id, namespace string
	// monitor starts (and reaps) a logging binary.
	monitor runc.ProcessMonitor
}

// openIO opens the client's fifos and, for a plain process, the pipes the
// process will write to. On error nothing is left open.
func openIO(stdio Stdio, cfg ioConfig) (_ *processIO, err error) {
	pio := &processIO{stdio: stdio}
	defer func() {
		if err != nil {
			pio.close()
		}
	}()
	if stdio.Stdin != "" {
		if err := pio.openStdin(); err != nil {
			return nil, err
		}
	}
	out, err := parseOutput(stdio.Stdout)
	if err != nil {
		return nil, err
	}
	if stdio.Terminal {
		if out.scheme != "fifo" {
			return nil, fmt.Errorf("a terminal's output goes to a fifo, not to a %s URI: %w", out.scheme, ErrInvalidArgument)
		}
		// A terminal has one output stream. containerd's Go client still
		// sends a stderr fifo with a terminal when it was given all three
		// streams (cio.WithTerminal); like containerd's runc shim, tether
		// leaves that fifo alone (the client's copy of it sees nothing).
		if stdio.Stdout != "" {
			// Opened before the runtime runs, so a bad path fails early.
			if pio.consoleOut, pio.consoleHold, err = openOutputFifo(stdio.Stdout); err != nil {
				return nil, err
			}
		}
		if pio.socket, err = runc.NewTempConsoleSocket(); err != nil {
			return nil, fmt.Errorf("create console socket: %w", err)
		}
		return pio, nil
	}
	if stdio.Stdin != "" {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		pio.child[0] = r
		pio.startStdinCopy(w)
	}
	switch {
	case out.scheme == "binary":
		if pio.logger, pio.child[1], pio.child[2], err = startLogger(out.uri, cfg); err != nil {
			return nil, err
		}
	case out.scheme == "file":
		// Both streams go to the one file, as containerd's shims do it.
		for i := 1; i <= 2; i++ {
			if err := pio.pumpTo(i, func() (*os.File, *os.File, error) {
				f, err := openLogFile(out.path)
				return f, nil, err
			}); err != nil {
				return nil, err
			}
		}
	default:
		for i, path := range []string{stdio.Stdout, stdio.Stderr} {
			if path == "" {
				continue
			}
			if err := pio.pumpTo(i+1, func() (*os.File, *os.File, error) { return openOutputFifo(path) }); err != nil {
				return nil, err
			}
		}
	}
	for _, f := range pio.child {
		if f != nil && (cfg.uid != 0 || cfg.gid != 0) {
			if err := f.Chown(int(cfg.uid), int(cfg.gid)); err != nil {
				return nil, fmt.Errorf("chown stdio pipe: %w", err)
			}
		}
	}
	// A stream the client does not want still needs a file: left unset, the
	// runtime CLI's own output pipe would reach the process and hold the CLI
	// call open for as long as the process lives.
	for i, f := range pio.child {
		if f == nil {
			null, err := os.OpenFile(os.DevNull, os.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				return nil, err
			}
			pio.child[i] = null
		}
	}
	return pio, nil
}

// openStdin opens the client's stdin fifo for reading, and a writer of the
// shim's own; containerd/fifo opens both without blocking on the client. The
// opens outlive the request, so they do not take its context.
func (pio *processIO) openStdin() error {
	ctx := context.Background()
	r, err := fifo.OpenFifo(ctx, pio.stdio.Stdin, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open stdin fifo %s: %w", pio.stdio.Stdin, fifoErr(err))
	}
	w, err := fifo.OpenFifo(ctx, pio.stdio.Stdin, unix.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		r.Close()
		return fmt.Errorf("open stdin fifo %s: %w", pio.stdio.Stdin, fifoErr(err))
	}
	pio.stdin, pio.stdinHold = r, w
	return nil
}

func fifoErr(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %w", err, ErrInvalidArgument)
	}
	return err
}

// startStdinCopy starts feeding the client's stdin to dst.
func (pio *processIO) startStdinCopy(dst *os.File) {
	pio.mu.Lock()
	pio.stdinDst = dst
	src := pio.stdin
	pio.mu.Unlock()
	pio.stdinDone = make(chan struct{})
	go pio.copyStdin(src, dst)
}

// copyStdin feeds the client's stdin to the process until the fifo has no
// writer left, then closes the process's stdin so it sees EOF.
func (pio *processIO) copyStdin(src io.Reader, dst io.WriteCloser) {
	defer close(pio.stdinDone)
	defer dst.Close()
	buf := make([]byte, 8<<10)
	_, _ = io.CopyBuffer(onlyWriter{dst}, src, buf)
}

// onlyWriter hides ReadFrom so io.CopyBuffer uses the given small buffer.
type onlyWriter struct{ io.Writer }

// pumpTo gives the process a pipe for stream i (1 stdout, 2 stderr) and
// starts moving its output to the destination open returns (with the shim's
// own reader on it, for a fifo).
func (pio *processIO) pumpTo(i int, open func() (dst, hold *os.File, err error)) error {
	dst, hold, err := open()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		dst.Close()
		if hold != nil {
			hold.Close()
		}
		return fmt.Errorf("output pipe: %w", err)
	}
	if err := pio.startPumpTo(r, dst, hold); err != nil {
		r.Close()
		w.Close()
		return err
	}
	pio.child[i] = w
	return nil
}

// startPumpTo starts moving src to dst, an output fifo with the shim's reader hold.
func (pio *processIO) startPumpTo(src, dst, hold *os.File) error {
	p, err := newPump(src, dst)
	if err != nil {
		dst.Close()
		if hold != nil {
			hold.Close()
		}
		return err
	}
	pio.mu.Lock()
	pio.pumps = append(pio.pumps, p)
	if hold != nil {
		pio.holds = append(pio.holds, hold)
	}
	pio.mu.Unlock()
	go p.run()
	return nil
}

// openOutputFifo opens a reader of the shim's own on the fifo first, so the
// writer opens at once whether or not a client is attached, and so writes
// block rather than fail while none is. Both ends are plain pollable files:
// the pump splices into the writer and needs its deadlines.
func openOutputFifo(path string) (w, hold *os.File, err error) {
	hold, err = os.OpenFile(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open output fifo: %w", fifoErr(err))
	}
	if st, err := hold.Stat(); err != nil || st.Mode()&os.ModeNamedPipe == 0 {
		hold.Close()
		return nil, nil, fmt.Errorf("output %s is not a fifo: %w", path, ErrInvalidArgument)
	}
	w, err = os.OpenFile(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		hold.Close()
		return nil, nil, fmt.Errorf("open output fifo: %w", err)
	}
	return w, hold, nil
}

// Set hands the process's pipe ends to the runtime command (runc.IO).
func (pio *processIO) Set(cmd *exec.Cmd) {
	if pio.child[0] != nil {
		cmd.Stdin = pio.child[0]
	}
	if pio.child[1] != nil {
		cmd.Stdout = pio.child[1]
	}
	if pio.child[2] != nil {
		cmd.Stderr = pio.child[2]
	}
}

// CloseAfterStart drops the shim's copies of the process's pipe ends, so the
// pumps see EOF once the process (and its children) close theirs.
func (pio *processIO) CloseAfterStart() error {
	for i, f := range pio.child {
		if f != nil {
			f.Close()
			pio.child[i] = nil
		}
	}
	return nil
}

// The rest of runc.IO is not used: the shim does the copying itself.
func (pio *processIO) Stdin() io.WriteCloser { return nil }
func (pio *processIO) Stdout() io.ReadCloser { return nil }
func (pio *processIO) Stderr() io.ReadCloser { return nil }
func (pio *processIO) Close() error          { pio.close(); return nil }
func (pio *processIO) runtimeIO() runc.IO    { return runtimeIO(pio) }
func (pio *processIO) consoleSocket() runc.ConsoleSocket {
	if pio.socket == nil {
		return nil
	}
	return pio.socket
}

// runtimeIO returns pio as runc.IO for a plain process and nil for a
// terminal, whose stdio the runtime sets up itself.
func runtimeIO(pio *processIO) runc.IO {
	if pio.stdio.Terminal {
		return nil
	}
	return pio
}

// started is called once the runtime has started the process: it closes the
// process's pipe ends and, for a terminal, receives the console master and
// starts copying through it.
func (pio *processIO) started() error {
	pio.CloseAfterStart()
	if pio.socket == nil {
		return nil
	}
	defer func() {
		pio.socket.Close()
		pio.socket = nil
	}()
	con, err := pio.socket.ReceiveMaster()
	if err != nil {
		return fmt.Errorf("receive console master: %w", err)
	}
	pio.mu.Lock()
	pio.console = con
	pio.mu.Unlock()
	if pio.consoleOut != nil {
		src, err := dupNonblock(con, "console-out")
		if err != nil {
			return err
		}
		dst, hold := pio.consoleOut, pio.consoleHold
		pio.consoleOut, pio.consoleHold = nil, nil
		if err := pio.startPumpTo(src, dst, hold); err != nil {
			src.Close()
			return err
		}
	}
	if pio.stdin != nil {
		dst, err := dupNonblock(con, "console-in")
		if err != nil {
			return err
		}
		pio.startStdinCopy(dst)
	}
	return nil
}

// dupNonblock returns a pollable file on its own descriptor for the console
// master, so the pump and the stdin copy each own (and close) theirs.
func dupNonblock(con console.Console, name string) (*os.File, error) {
	fd, err := unix.FcntlInt(con.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup console: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("console nonblock: %w", err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// exited tells the pumps the process is gone and waits, within drainTimeout,
// until what it wrote has reached the client.
func (pio *processIO) exited() {
	pio.mu.Lock()
	pumps := pio.pumps
	pio.mu.Unlock()
	for _, p := range pumps {
		p.exited()
	}
	deadline := time.Now().Add(drainTimeout)
	for _, p := range pumps {
		p.waitDrained(time.Until(deadline))
	}
}

// closeStdin drops the shim's writer on the stdin fifo (CloseIO): the process
// reads EOF once the client has closed its writer too.
func (pio *processIO) closeStdin() {
	pio.mu.Lock()
	hold := pio.stdinHold
	pio.stdinHold = nil
	pio.mu.Unlock()
	if hold != nil {
		hold.Close()
	}
}

// resize sets the terminal size.
func (pio *processIO) resize(width, height uint32) error {
	pio.mu.Lock()
	con := pio.console
	pio.mu.Unlock()
	if con == nil {
		return fmt.Errorf("process has no terminal: %w", ErrFailedPrecondition)
	}
	if width > 0xffff || height > 0xffff {
		return fmt.Errorf("terminal size %dx%d out of range: %w", width, height, ErrInvalidArgument)
	}
	return con.Resize(console.WinSize{Width: uint16(width), Height: uint16(height)})
}

// close stops all copying and closes every descriptor the process's stdio holds.
func (pio *processIO) close() {
	pio.CloseAfterStart()
	if pio.socket != nil {
		pio.socket.Close()
		pio.socket = nil
	}
	for _, f := range []*os.File{pio.consoleOut, pio.consoleHold} {
		if f != nil {
			f.Close()
		}
	}
	pio.consoleOut, pio.consoleHold = nil, nil
	pio.mu.Lock()
	pumps, holds, stdin, hold, con := pio.pumps, pio.holds, pio.stdin, pio.stdinHold, pio.console
	pio.pumps, pio.holds, pio.stdin, pio.stdinHold, pio.console = nil, nil, nil, nil, nil
	if pio.stdinDst != nil {
		// Unblocks a copy stuck writing to a process that no longer reads.
		pio.stdinDst.SetWriteDeadline(time.Unix(1, 0))
		pio.stdinDst = nil
	}
	pio.mu.Unlock()
	for _, p := range pumps {
		p.stop()
	}
	for _, h := range holds {
		h.Close()
	}
	if hold != nil {
		hold.Close()
	}
	if stdin != nil {
		stdin.Close()
	}
	if pio.stdinDone != nil {
		<-pio.stdinDone
	}
	if con != nil {
		con.Close()
	}
	if pio.logger != nil {
		pio.logger.stop()
		pio.logger = nil
	}
}

var _ runc.IO = (*processIO)(nil)
var _ runc.StartCloser = (*processIO)(nil)
