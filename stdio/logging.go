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
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
)

// Besides fifo paths, containerd passes logging URIs for a process's output
// (ctr --log-uri, nerdctl, Docker): file:///path appends stdout and stderr
// to a file; binary:///path?key=value hands them to a logging binary.

// outputTarget is where a process's output goes.
type outputTarget struct {
	scheme string // "fifo", "file" or "binary"
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
	case "fifo", "file", "binary":
	default:
		return outputTarget{}, fmt.Errorf("output URI %q: scheme %q is not fifo, file or binary: %w", s, u.Scheme, errdefs.ErrInvalidArgument)
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
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_CLOEXEC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log file: %w", err)
	}
	return f, nil
}

// loggerReadyTimeout bounds the wait for a logging binary to be ready.
const loggerReadyTimeout = 30 * time.Second

// binaryLogger is a logging binary reading a process's output: stdout on
// its fd 3, stderr on fd 4; it closes fd 5 once it is ready. The process
// writes straight into its pipes; nothing is copied by the shim.
type binaryLogger struct {
	cmd     *exec.Cmd
	exit    chan runc.Exit
	monitor runc.ProcessMonitor
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
	l := &binaryLogger{cmd: cmd, exit: ec, monitor: cfg.Monitor}
	readyR.SetReadDeadline(time.Now().Add(loggerReadyTimeout))
	if _, err := readyR.Read(make([]byte, 1)); err != nil && !errors.Is(err, io.EOF) {
		outW.Close()
		errW.Close()
		l.stop()
		return nil, nil, nil, fmt.Errorf("logging binary %s did not get ready: %w", u.Path, err)
	}
	return l, outW, errW, nil
}

// stop asks the binary to finish (SIGTERM, so it can flush), kills it if it
// does not, and reaps it.
func (l *binaryLogger) stop() {
	l.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case e, ok := <-l.exit:
		// Wait needs the exit back to return.
		ch := make(chan runc.Exit, 1)
		if ok {
			ch <- e
		}
		close(ch)
		l.monitor.Wait(l.cmd, ch)
		return
	case <-t.C:
		l.cmd.Process.Kill()
	}
	l.monitor.Wait(l.cmd, l.exit)
}
