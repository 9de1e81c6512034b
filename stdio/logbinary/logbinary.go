// Package logbinary runs a containerd logging binary (binary:// and
// binary-v2:// log URIs) for a process's output: starts it on two pipes,
// waits until it is ready, holds the shim's ends of its pipes, and stops
// it when the process's IO closes.
package logbinary

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// readyTimeout bounds the wait for a logging binary to be ready.
const readyTimeout = 30 * time.Second

// Logger is a logging binary reading a process's output: stdout on
// its fd 3, stderr on fd 4; it closes fd 5 (CONTAINER_WAIT) once it is
// ready, after writing a byte there for binary-v2. The process writes
// straight into its pipes; nothing is copied by the shim.
type Logger struct {
	pid int
	// pidfd signals the binary without ever reaching a reused pid; -1 if
	// none could be opened (signals then go by pid).
	pidfd int
	// exit receives the binary's exit from the reaper.
	exit <-chan runc.Exit
	// release frees what starting the binary holds, once it has exited;
	// nil for a logger taken back from a previous process.
	release func(runc.Exit)
	// writers are the shim's own write ends of the binary's stdout and
	// stderr pipes, held until Stop, as containerd's runc shim holds them:
	// the binary reads no EOF when the process exits, it learns of the exit
	// from containerd (nerdctl's waits for the task) and is told to finish
	// when the process's IO is closed. Reading EOF first, nerdctl's logger
	// exited with its Wait for the task still open, and containerd logged
	// the answer as "received message on inactive stream".
	writers []*os.File
}

// Start starts the binary of u (told the container's id and namespace,
// started and reaped through monitor) and returns the process's ends of
// its stdout and stderr pipes, once the binary said it is ready.
func Start(u *url.URL, id, namespace string, monitor runc.ProcessMonitor) (_ *Logger, stdout, stderr *os.File, err error) {
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 {
			args = append(args, vs[0])
		}
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, nil, nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return nil, nil, nil, err
	}
	defer readyR.Close()
	cmd := exec.Command(u.Path, args...)
	cmd.Env = []string{"CONTAINER_ID=" + id, "CONTAINER_NAMESPACE=" + namespace}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	ec, err := monitor.Start(cmd)
	// The binary has its copies now; these would keep its pipes open.
	outR.Close()
	errR.Close()
	readyW.Close()
	if err != nil {
		outW.Close()
		errW.Close()
		return nil, nil, nil, fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	// The process gets duplicates; the originals stay with the logger.
	stdout, stderr, err = dupFile(outW), dupFile(errW), nil
	l := &Logger{pid: cmd.Process.Pid, pidfd: openPidfd(cmd.Process.Pid), exit: ec, writers: []*os.File{outW, errW}, release: func(e runc.Exit) {
		// Wait needs the exit back to return.
		ch := make(chan runc.Exit, 1)
		ch <- e
		close(ch)
		monitor.Wait(cmd, ch)
	}}
	if stdout == nil || stderr == nil {
		closeAll(stdout, stderr)
		l.Stop()
		return nil, nil, nil, fmt.Errorf("logging binary %s: duplicate its pipes: out of descriptors", u.Path)
	}
	// As containerd's runc shim reads it: one byte, or EOF.
	readyR.SetReadDeadline(time.Now().Add(readyTimeout))
	n, err := readyR.Read(make([]byte, 1))
	if err != nil && !errors.Is(err, io.EOF) {
		closeAll(stdout, stderr)
		l.Stop()
		return nil, nil, nil, fmt.Errorf("logging binary %s did not get ready: %w", u.Path, err)
	}
	if u.Scheme == "binary-v2" && n == 0 {
		closeAll(stdout, stderr)
		l.Stop()
		return nil, nil, nil, fmt.Errorf("logging binary %s did not call ready (it may have crashed or exited prematurely)", u.Path)
	}
	return l, stdout, stderr, nil
}

// dupFile is a close-on-exec duplicate of f, or nil.
func dupFile(f *os.File) *os.File {
	fd, err := unix.FcntlInt(uintptr(fdOf(f)), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	return os.NewFile(uintptr(fd), f.Name())
}

func closeAll(files ...*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// Stop asks the binary to finish (SIGTERM, so it can flush), kills it if it
// does not, and waits for the reaper to have reaped it. The pid cannot be
// another process's meanwhile: only its exit's delivery frees it.
func (l *Logger) Stop() {
	// Its pipes end first (it may finish on EOF alone), as in containerd's
	// runc shim.
	closeAll(l.writers...)
	l.writers = nil
	select {
	case e := <-l.exit:
		l.released(e)
		return
	default:
	}
	l.signal(unix.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	var e runc.Exit
	select {
	case e = <-l.exit:
	case <-t.C:
		l.signal(unix.SIGKILL)
		e = <-l.exit
	}
	l.released(e)
}

func (l *Logger) signal(sig unix.Signal) {
	if l.pidfd >= 0 {
		unix.PidfdSendSignal(l.pidfd, sig, nil, 0)
		return
	}
	unix.Kill(l.pid, sig)
}

func (l *Logger) released(e runc.Exit) {
	if l.pidfd >= 0 {
		unix.Close(l.pidfd)
		l.pidfd = -1
	}
	if l.release != nil {
		l.release(e)
	}
}

// Adopt is a logging binary a previous process started, with the
// exit its reaper now delivers here and the shim's write ends of its pipes.
func Adopt(pid int, exit <-chan runc.Exit, writers []*os.File) *Logger {
	pidfd := openPidfd(pid)
	if pidfd < 0 {
		// It exited (and was reaped) before this process took over.
		gone := make(chan runc.Exit, 1)
		gone <- runc.Exit{Pid: pid}
		exit = gone
	}
	return &Logger{pid: pid, pidfd: pidfd, exit: exit, writers: writers}
}

// Handover says what the next process takes over: the binary's pid and the
// shim's write ends of its pipes; ok is false if it has exited already
// (nothing to take over).
func (l *Logger) Handover() (pid int, writers []*os.File, ok bool) {
	select {
	case <-l.exit:
		return 0, nil, false
	default:
		return l.pid, l.writers, true
	}
}

// fdOf is f's descriptor number, read without changing its mode.
func fdOf(f *os.File) int {
	fd := -1
	if raw, err := f.SyscallConn(); err == nil {
		raw.Control(func(v uintptr) { fd = int(v) })
	}
	return fd
}

// openPidfd opens a pidfd for pid, or returns -1.
func openPidfd(pid int) int {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return -1
	}
	unix.CloseOnExec(fd)
	return fd
}
