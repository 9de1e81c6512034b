// Package stdio connects a container process's standard streams to where
// containerd wants them: the client's fifos (through pipes, or the console
// master of a terminal), a log file (file://) or a logging binary
// (binary://, binary-v2://). Output moves in the kernel where it can
// (splice between pipes); an exit is reported only after what the process
// wrote has moved, within DrainTimeout. It never blocks a caller on a client that does not
// read beyond DrainTimeout, and never closes a descriptor it did not open.
package stdio

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/stdio/logbinary"
	"github.com/tether-shim/tether/stdio/pump"
)

// Paths names where a process's standard streams go, as containerd sends
// them: paths of fifos the client has created, or a log URI for the output
// (empty for none).
type Paths struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// Config is how a process's stdio is set up, beyond the client's paths.
type Config struct {
	// UID and GID own the process's pipe ends (IoUid/IoGid), so a process
	// running as another user can reopen them through /proc/self/fd.
	UID, GID uint32
	// ID and Namespace are told to a logging binary.
	ID, Namespace string
	// Monitor starts (and reaps) a logging binary.
	Monitor runc.ProcessMonitor
}

// DrainTimeout bounds how long an exit waits for the process's output to
// reach a client that is not reading; the output still moves afterwards.
const DrainTimeout = 10 * time.Second

// LingerTimeout bounds how long an exec's Delete waits for the output to end
// (another process may still hold the process's stdout) and its client to
// read what is left in its fifo (AwaitClients). containerd's runc shim
// likewise waits up to 2 s for an exec's output to be copied in its Delete.
const LingerTimeout = 2 * time.Second

// IO is one process's stdio. For a plain process the process writes into
// pipes whose other ends the shim pumps to the client; for a terminal the
// shim pumps the console master.
type IO struct {
	paths Paths

	// child are the process's ends of its stdin, stdout and stderr pipes,
	// handed to the runtime and closed once it has started the process.
	child [3]*os.File
	// socket receives the console master from the runtime (terminal only).
	socket *runc.Socket
	// consoleOut is the client's stdout fifo for a terminal, until the
	// console pump takes it.
	consoleOut *outputFifo
	// stdin is the client's stdin fifo until its pump takes it.
	stdin *os.File
	// logger is the logging binary of a binary:// or binary-v2:// URI.
	logger *logbinary.Logger
	// childClosed is set once CloseAfterStart has run (the runtime has
	// the process's pipe ends): from then on a plain process's stdio can
	// be written down (Movable).
	childClosed atomic.Bool

	mu sync.Mutex
	// master is the terminal's master once received, nonblocking, the one
	// descriptor of it the shim holds (console.go). Guarded by mu.
	master *os.File
	// stdinKeepOpen is the shim's own writer on the stdin fifo: the process
	// sees EOF only after CloseStdin drops it, not when a client merely goes
	// away (containerd restarting, say). Guarded by mu.
	stdinKeepOpen *os.File
	// outputs move stdout and stderr (or the console) to the client; input
	// moves the client's stdin to the process. Guarded by mu.
	outputs []*pump.Pump
	input   *pump.Pump
	// fifos are the shim's own readers on the client's output fifos (each
	// guards its own state). The list is guarded by mu.
	fifos []*clientFifo
}

// Open opens the client's fifos and, for a plain process, the pipes the
// process will use. On error nothing is left open.
func Open(paths Paths, cfg Config) (_ *IO, err error) {
	pio := &IO{paths: paths}
	defer func() {
		if err != nil {
			pio.Close()
		}
	}()
	if paths.Stdin != "" {
		if pio.stdin, pio.stdinKeepOpen, err = openStdinFifo(paths.Stdin); err != nil {
			return nil, err
		}
	}
	out, err := parseOutput(paths.Stdout)
	if err != nil {
		return nil, err
	}
	if paths.Terminal {
		return pio, pio.openTerminal(out, cfg)
	}
	if pio.stdin != nil {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, fmt.Errorf("stdin pipe: %w", err)
		}
		pio.child[0] = r
		pio.startInput(w, false)
	}
	switch out.scheme {
	case "binary", "binary-v2":
		if pio.logger, pio.child[1], pio.child[2], err = logbinary.Start(out.uri, cfg.ID, cfg.Namespace, cfg.Monitor); err != nil {
			return nil, err
		}
	case "file":
		// Both streams go to the one file, as containerd's shims do it.
		for i := 1; i <= 2; i++ {
			f, err := openLogFile(out.path)
			if err != nil {
				return nil, err
			}
			if err := pio.pumpTo(i, &outputFifo{w: f}); err != nil {
				return nil, err
			}
		}
	default:
		for i, path := range []string{paths.Stdout, paths.Stderr} {
			if path == "" {
				continue
			}
			dst, err := openOutputFifo(path)
			if err != nil {
				return nil, err
			}
			if err := pio.pumpTo(i+1, dst); err != nil {
				return nil, err
			}
		}
	}
	return pio, pio.finishChildEnds(cfg)
}

// openTerminal prepares a terminal's stdio: the console socket the runtime
// sends the master through, and where its output goes, opened before the
// runtime runs so a bad path fails early: the client's stdout fifo, or a
// logging binary's stdout (as containerd's runc shim copies a terminal into
// one: nerdctl run -dt, docker run -dit). A terminal has one output stream:
// containerd's Go client still sends a stderr fifo with a terminal when it
// was given all three streams (cio.WithTerminal); like containerd's runc
// shim, tether leaves that fifo alone, and a logging binary's stderr stays
// empty.
func (pio *IO) openTerminal(out outputTarget, cfg Config) (err error) {
	switch out.scheme {
	case "fifo":
		if pio.paths.Stdout != "" {
			if pio.consoleOut, err = openOutputFifo(pio.paths.Stdout); err != nil {
				return err
			}
		}
	case "binary", "binary-v2":
		var stdout, stderr *os.File
		if pio.logger, stdout, stderr, err = logbinary.Start(out.uri, cfg.ID, cfg.Namespace, cfg.Monitor); err != nil {
			return err
		}
		stderr.Close()
		pio.consoleOut = &outputFifo{w: stdout}
	default:
		return fmt.Errorf("a terminal's output goes to a fifo or a logging binary, not to a %s URI: %w", out.scheme, errdefs.ErrInvalidArgument)
	}
	if pio.socket, err = runc.NewTempConsoleSocket(); err != nil {
		return fmt.Errorf("create console socket: %w", err)
	}
	return nil
}

// finishChildEnds gives the process's pipe ends their owner and fills the
// streams the client does not want: left unset, the runtime CLI's own output
// pipe would reach the process and hold the CLI call open for as long as the
// process lives.
func (pio *IO) finishChildEnds(cfg Config) error {
	for i, f := range pio.child {
		if f == nil {
			null, err := os.OpenFile(os.DevNull, os.O_RDWR|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			pio.child[i] = null
			continue
		}
		if cfg.UID != 0 || cfg.GID != 0 {
			if err := f.Chown(int(cfg.UID), int(cfg.GID)); err != nil {
				return fmt.Errorf("chown stdio pipe: %w", err)
			}
		}
	}
	return nil
}

// pumpTo gives the process a pipe for stream i (1 stdout, 2 stderr) and
// starts moving its output to dst.
func (pio *IO) pumpTo(i int, dst *outputFifo) error {
	r, w, err := os.Pipe()
	if err != nil {
		dst.close()
		return fmt.Errorf("output pipe: %w", err)
	}
	if err := pio.startOutput(r, dst, false); err != nil {
		r.Close()
		w.Close()
		return err
	}
	pio.child[i] = w
	return nil
}

// startOutput starts moving src to dst; the pump owns both from now on
// (src unless keepSrc: a terminal's master), the shim's reader on a fifo
// stays with the IO.
func (pio *IO) startOutput(src *os.File, dst *outputFifo, keepSrc bool) error {
	opts := pump.Options{KeepSrc: keepSrc}
	if dst.fifo != nil {
		opts.OnEnd = dst.fifo.outputEnded
	}
	p, err := pump.New(src, dst.w, opts)
	if err != nil {
		dst.close()
		return err
	}
	pio.mu.Lock()
	pio.outputs = append(pio.outputs, p)
	if dst.fifo != nil {
		pio.fifos = append(pio.fifos, dst.fifo)
	}
	pio.mu.Unlock()
	go p.Run()
	return nil
}

// startInput starts moving the client's stdin to dst (the process's stdin
// pipe or, keepDst, its terminal's master). The pump closes a pipe when the
// client's stdin ends, so the process sees EOF; the master stays the IO's.
func (pio *IO) startInput(dst *os.File, keepDst bool) {
	src := pio.stdin
	pio.stdin = nil
	p, err := pump.New(src, dst, pump.Options{KeepDst: keepDst})
	if err != nil {
		// Both are files the shim just made pollable: cannot happen.
		src.Close()
		if !keepDst {
			dst.Close()
		}
		return
	}
	pio.mu.Lock()
	pio.input = p
	pio.mu.Unlock()
	go p.Run()
}

// Set hands the process's pipe ends to the runtime command (runc.IO).
func (pio *IO) Set(cmd *exec.Cmd) {
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
func (pio *IO) CloseAfterStart() error {
	for i, f := range pio.child {
		if f != nil {
			f.Close()
			pio.child[i] = nil
		}
	}
	pio.childClosed.Store(true)
	return nil
}

// Movable reports whether the IO can be written down for the next process
// (Handover) while the runtime starts its process: it is not a terminal's
// (the console comes from the runtime once it has started), and the
// runtime has the process's pipe ends already.
func (pio *IO) Movable() bool {
	return !pio.paths.Terminal && pio.childClosed.Load()
}

// The rest of runc.IO is not used: the shim does the copying itself.
func (pio *IO) Stdin() io.WriteCloser { return nil }
func (pio *IO) Stdout() io.ReadCloser { return nil }
func (pio *IO) Stderr() io.ReadCloser { return nil }

// RuntimeIO is what the runtime CLI is given: the pipes of a plain process,
// nothing for a terminal (the runtime sets that up itself).
func (pio *IO) RuntimeIO() runc.IO {
	if pio.paths.Terminal {
		return nil
	}
	return pio
}

// ConsoleSocket is where the runtime sends a terminal's master; nil for a
// plain process.
func (pio *IO) ConsoleSocket() runc.ConsoleSocket {
	if pio.socket == nil {
		return nil
	}
	return pio.socket
}

var (
	_ runc.IO          = (*IO)(nil)
	_ runc.StartCloser = (*IO)(nil)
)

// Started is called once the runtime has started the process: it closes the
// process's pipe ends and, for a terminal, receives the console master and
// starts copying through it.
func (pio *IO) Started() error {
	pio.CloseAfterStart()
	if pio.socket == nil {
		return nil
	}
	return pio.receiveConsole()
}

// Exited tells the output pumps the process is gone and waits, within
// DrainTimeout, until what it wrote has reached the client's fifo.
func (pio *IO) Exited() {
	pio.mu.Lock()
	outputs := pio.outputs
	pio.mu.Unlock()
	for _, p := range outputs {
		p.Exited()
	}
	deadline := time.Now().Add(DrainTimeout)
	for _, p := range outputs {
		p.WaitDrained(time.Until(deadline))
	}
}

// AwaitClients waits until the clients have read the output left in their
// fifos (AwaitAllClients of this IO alone). ctr 1.x gives its reader up
// after DeleteProcess, so an exec's Delete calls this first; an init's
// client has given up before its Delete.
func (pio *IO) AwaitClients() error { return AwaitAllClients(pio) }

// AwaitAllClients waits until the clients of every IO have read the output
// left in their fifos: within LingerTimeout, or DrainTimeout for a late
// client the output is held for (lateclient.go). Every fifo is awaited at
// once, from now: a client that does not read uses up no other client's
// time, and the execs a container's Delete takes along wait one bound
// together, not one after another.
func AwaitAllClients(ios ...*IO) error {
	var fifos []*clientFifo
	for _, pio := range ios {
		pio.mu.Lock()
		fifos = append(fifos, pio.fifos...)
		pio.mu.Unlock()
	}
	deadline := time.Now().Add(LingerTimeout)
	if len(fifos) == 1 {
		return fifos[0].awaitTaken(deadline)
	}
	errs := make([]error, len(fifos))
	var wg sync.WaitGroup
	for i, f := range fifos {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f.awaitTaken(deadline)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// CloseStdin drops the shim's writer on the stdin fifo (CloseIO): the
// process reads EOF once the client has closed its writer too.
func (pio *IO) CloseStdin() {
	pio.mu.Lock()
	f := pio.stdinKeepOpen
	pio.stdinKeepOpen = nil
	pio.mu.Unlock()
	if f != nil {
		f.Close()
	}
}

// Close stops all copying and closes every descriptor the stdio holds. It
// does not wait for a client: output held for a late one is let go
// (AwaitClients waits for it), and a pump stuck on a client that reads
// slowly moves what the process wrote before it exited (never more) on its
// own, within DrainTimeout, then closes its descriptors.
func (pio *IO) Close() error {
	pio.CloseAfterStart()
	if pio.socket != nil {
		pio.socket.Close()
		pio.socket = nil
	}
	if pio.consoleOut != nil {
		pio.consoleOut.close()
		pio.consoleOut = nil
	}
	if pio.stdin != nil {
		pio.stdin.Close()
		pio.stdin = nil
	}
	pio.mu.Lock()
	outputs, input := pio.outputs, pio.input
	fifos, keepOpen, master := pio.fifos, pio.stdinKeepOpen, pio.master
	pio.outputs, pio.input, pio.fifos, pio.stdinKeepOpen, pio.master = nil, nil, nil, nil, nil
	pio.mu.Unlock()
	if input != nil {
		input.Stop()
	}
	for _, p := range outputs {
		p.Finish(DrainTimeout)
	}
	for _, f := range fifos {
		f.markEnded()
		if r, _ := f.release(); r != nil {
			r.Close()
		}
	}
	if keepOpen != nil {
		keepOpen.Close()
	}
	if master != nil {
		closeMaster(master, outputs)
	}
	if pio.logger != nil {
		pio.logger.Stop()
		pio.logger = nil
	}
	return nil
}
