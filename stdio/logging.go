package stdio

import (
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"
)

// Besides fifo paths, containerd passes logging URIs for a process's output
// (ctr --log-uri, nerdctl, Docker): file:///path appends stdout and stderr
// to a file; binary:///path?key=value hands them to a logging binary, and
// so does binary-v2:// (containerd 2.3), whose binary must say it is ready
// by writing a byte on its CONTAINER_WAIT pipe before closing it: a binary
// that closes the pipe without one (it crashed, or exited early) is refused,
// where binary:// takes the close alone as ready.

// outputTarget is where a process's output goes.
type outputTarget struct {
	scheme string // "fifo", "file", "binary" or "binary-v2"
	uri    *url.URL
	path   string
}

func parseOutput(s string) (outputTarget, error) {
	if !strings.Contains(s, "://") {
		return outputTarget{scheme: "fifo", path: s}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return outputTarget{}, fmt.Errorf("output URI %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "fifo", "file", "binary", "binary-v2":
	default:
		return outputTarget{}, fmt.Errorf("output URI %q: scheme %q is not fifo, file, binary or binary-v2: %w", s, u.Scheme, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(u.Path) {
		return outputTarget{}, fmt.Errorf("output URI %q: path must be absolute: %w", s, errdefs.ErrInvalidArgument)
	}
	return outputTarget{scheme: u.Scheme, uri: u, path: u.Path}, nil
}

// openLogFile opens the file of a file:// URI for appending.
func openLogFile(path string) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("log file directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|unix.O_CLOEXEC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	return f, nil
}

// loggerReadyTimeout bounds the wait for a logging binary to be ready.
const loggerReadyTimeout = 30 * time.Second

// binaryLogger is a logging binary reading a process's output: stdout on
// its fd 3, stderr on fd 4; it closes fd 5 (CONTAINER_WAIT) once it is
// ready, after writing a byte there for binary-v2. The process writes
// straight into its pipes; nothing is copied by the shim.
type binaryLogger struct {
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
	// stderr pipes, held until stop, as containerd's runc shim holds them:
	// the binary reads no EOF when the process exits, it learns of the exit
	// from containerd (nerdctl's waits for the task) and is told to finish
	// when the process's IO is closed. Reading EOF first, nerdctl's logger
	// exited with its Wait for the task still open, and containerd logged
	// the answer as "received message on inactive stream".
	writers []*os.File
}

// startLogger starts the binary of u and returns the process's ends of its
// stdout and stderr pipes, once the binary said it is ready.
func startLogger(u *url.URL, cfg Config) (_ *binaryLogger, stdout, stderr *os.File, err error) {
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
	cmd.Env = []string{"CONTAINER_ID=" + cfg.ID, "CONTAINER_NAMESPACE=" + cfg.Namespace}
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	ec, err := cfg.Monitor.Start(cmd)
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
	l := &binaryLogger{pid: cmd.Process.Pid, pidfd: openPidfd(cmd.Process.Pid), exit: ec, writers: []*os.File{outW, errW}, release: func(e runc.Exit) {
		// Wait needs the exit back to return.
		ch := make(chan runc.Exit, 1)
		ch <- e
		close(ch)
		cfg.Monitor.Wait(cmd, ch)
	}}
	if stdout == nil || stderr == nil {
		closeAll(stdout, stderr)
		l.stop()
		return nil, nil, nil, fmt.Errorf("logging binary %s: duplicate its pipes: out of descriptors", u.Path)
	}
	// As containerd's runc shim reads it: one byte, or EOF.
	readyR.SetReadDeadline(time.Now().Add(loggerReadyTimeout))
	n, err := readyR.Read(make([]byte, 1))
	if err != nil && !errors.Is(err, io.EOF) {
		closeAll(stdout, stderr)
		l.stop()
		return nil, nil, nil, fmt.Errorf("logging binary %s did not get ready: %w", u.Path, err)
	}
	if u.Scheme == "binary-v2" && n == 0 {
		closeAll(stdout, stderr)
		l.stop()
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

// stop asks the binary to finish (SIGTERM, so it can flush), kills it if it
// does not, and waits for the reaper to have reaped it. The pid cannot be
// another process's meanwhile: only its exit's delivery frees it.
func (l *binaryLogger) stop() {
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

func (l *binaryLogger) signal(sig unix.Signal) {
	if l.pidfd >= 0 {
		unix.PidfdSendSignal(l.pidfd, sig, nil, 0)
		return
	}
	unix.Kill(l.pid, sig)
}

func (l *binaryLogger) released(e runc.Exit) {
	if l.pidfd >= 0 {
		unix.Close(l.pidfd)
		l.pidfd = -1
	}
	if l.release != nil {
		l.release(e)
	}
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
