package shim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultRuntimeRoot is where runc keeps container state unless the runtime
// options name another root; the namespace is appended, as containerd's
// runc shim does, so tools that look there find tether's containers too.
const defaultRuntimeRoot = "/run/containerd/runc"

// RuntimeError is a failed runtime CLI call, carrying the runtime's own
// message from its JSON log.
type RuntimeError struct {
	Op      string // the runtime subcommand, e.g. "create"
	Message string // last error the runtime logged, if any
	Err     error  // the exit error
}

func (e *RuntimeError) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("runtime %s: %v", e.Op, e.Err)
	}
	return fmt.Sprintf("runtime %s: %s: %v", e.Op, e.Message, e.Err)
}

func (e *RuntimeError) Unwrap() error { return e.Err }

// Runtime runs the OCI runtime CLI (runc, crun, ...) for one container.
type Runtime struct {
	base   runc.Runc // copied per call, each copy with a log file of its own
	bundle string
	// criuPath is the CRIU binary to use; runtimes look criu up in PATH
	// (runc's own --criu flag is gone in newer releases), so its directory
	// goes first in the runtime's PATH.
	criuPath string
}

// newRuntime configures the runtime binary and state root from the
// container's runtime settings; ns is the containerd namespace. The binary is
// looked up now, so a missing runtime is reported before anything is set up.
func newRuntime(bundle, ns string, cfg RuntimeConfig) (*Runtime, error) {
	root := cfg.Root
	if root == "" {
		root = defaultRuntimeRoot
	}
	binary := cfg.Binary
	if binary == "" {
		binary = "runc"
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return nil, fmt.Errorf("runtime binary %q: %w: %w", binary, err, ErrFailedPrecondition)
	}
	return &Runtime{
		bundle: bundle,
		base: runc.Runc{
			Command:       path,
			Root:          filepath.Join(root, ns),
			LogFormat:     runc.JSON,
			SystemdCgroup: cfg.SystemdCgroup,
		},
		criuPath: cfg.CriuPath,
	}, nil
}

// call runs fn against a runtime whose --log is a fresh file in the bundle,
// so a failure is reported with the runtime's own message and never with a
// message from a concurrent call. Runtime calls are not cancelled with the
// request: a runtime killed halfway leaves state nobody cleans up.
func (r *Runtime) call(ctx context.Context, op string, fn func(context.Context, *runc.Runc) error) error {
	logf, err := os.CreateTemp(r.bundle, ".runtime-"+op+"-*.log")
	if err != nil {
		return fmt.Errorf("runtime %s: create log file: %w", op, err)
	}
	logPath := logf.Name()
	logf.Close()
	defer os.Remove(logPath)

	rc := r.base
	rc.Log = logPath
	ctx = context.WithoutCancel(ctx)
	if r.criuPath != "" {
		ctx = runc.WithExtraEnv(ctx, "PATH="+filepath.Dir(r.criuPath)+":"+os.Getenv("PATH"))
	}
	err = fn(ctx, &rc)
	if err == nil {
		return nil
	}
	return &RuntimeError{Op: op, Message: lastLoggedError(logPath), Err: err}
}

// lastLoggedError returns the last error-level message of a runtime JSON log
// (one {"level":..,"msg":..} object per line), or its last message of any level.
func lastLoggedError(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lastErr, last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) != nil || entry.Msg == "" {
			continue
		}
		last = entry.Msg
		if entry.Level == "error" || entry.Level == "fatal" {
			lastErr = entry.Msg
		}
	}
	if lastErr != "" {
		return lastErr
	}
	return last
}

func (r *Runtime) Create(ctx context.Context, id string, opts *runc.CreateOpts) error {
	return r.call(ctx, "create", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Create(ctx, id, r.bundle, opts)
	})
}

func (r *Runtime) Start(ctx context.Context, id string) error {
	return r.call(ctx, "start", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Start(ctx, id)
	})
}

func (r *Runtime) Exec(ctx context.Context, id string, spec specs.Process, opts *runc.ExecOpts) error {
	return r.call(ctx, "exec", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Exec(ctx, id, spec, opts)
	})
}

func (r *Runtime) Kill(ctx context.Context, id string, sig int, all bool) error {
	return r.call(ctx, "kill", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Kill(ctx, id, sig, &runc.KillOpts{All: all})
	})
}

func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	return r.call(ctx, "delete", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Delete(ctx, id, &runc.DeleteOpts{Force: force})
	})
}

func (r *Runtime) Ps(ctx context.Context, id string) ([]int, error) {
	var pids []int
	err := r.call(ctx, "ps", func(ctx context.Context, rc *runc.Runc) (err error) {
		pids, err = rc.Ps(ctx, id)
		return err
	})
	return pids, err
}

func (r *Runtime) Pause(ctx context.Context, id string) error {
	return r.call(ctx, "pause", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Pause(ctx, id)
	})
}

func (r *Runtime) Resume(ctx context.Context, id string) error {
	return r.call(ctx, "resume", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Resume(ctx, id)
	})
}

func (r *Runtime) Update(ctx context.Context, id string, resources *specs.LinuxResources) error {
	return r.call(ctx, "update", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Update(ctx, id, resources)
	})
}

func (r *Runtime) Checkpoint(ctx context.Context, id string, opts *runc.CheckpointOpts, actions ...runc.CheckpointAction) error {
	return r.call(ctx, "checkpoint", func(ctx context.Context, rc *runc.Runc) error {
		return rc.Checkpoint(ctx, id, opts, actions...)
	})
}

func (r *Runtime) Restore(ctx context.Context, id string, opts *runc.RestoreOpts) error {
	return r.call(ctx, "restore", func(ctx context.Context, rc *runc.Runc) error {
		_, err := rc.Restore(ctx, id, r.bundle, opts)
		return err
	})
}

// featuresTimeout bounds `<runtime> features`, which only prints what the
// binary supports.
const featuresTimeout = 10 * time.Second

// Features returns what `<runtime> features` prints: the OCI runtime
// features document (runtime-spec features.md), as JSON. A runtime without
// the command (older crun, youki) gets an error saying so.
func Features(ctx context.Context, cfg RuntimeConfig) (binary string, doc []byte, err error) {
	binary = cfg.Binary
	if binary == "" {
		binary = "runc"
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return binary, nil, fmt.Errorf("runtime binary %q: %w", binary, err)
	}
	ctx, cancel := context.WithTimeout(ctx, featuresTimeout)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, "features")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return path, nil, fmt.Errorf("%s features: %w (%s)", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	if !json.Valid(out) {
		return path, nil, fmt.Errorf("%s features: output is not JSON", path)
	}
	return path, out, nil
}
