package stdio

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
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
