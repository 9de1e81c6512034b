// Package oci runs the OCI runtime's command line (runc, crun) for one
// container: every call with a deadline, a log file of its own and the
// runtime's own message in its error. It also reads the runtime options
// containerd sends. It never holds a lock of its callers and never lets a
// runtime call outlive its deadline: a runtime that hangs is killed.
package oci

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// defaultRoot is where runc keeps container state unless the runtime options
// name another root; the namespace is appended, as containerd's runc shim
// does, so tools that look there find tether's containers too.
const defaultRoot = "/run/containerd/runc"

// Error is a failed runtime call, carrying the runtime's own message from
// its log.
type Error struct {
	Runtime string // the runtime binary
	Op      string // the runtime subcommand, e.g. "create"
	Message string // the last error the runtime logged, if any
	Err     error  // the exit error, or context.DeadlineExceeded for a call that ran out of time
}

func (e *Error) Error() string {
	msg := e.Message
	if msg != "" {
		msg += ": "
	}
	return fmt.Sprintf("%s %s: %s%v", e.Runtime, e.Op, msg, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Runtime runs the OCI runtime CLI for one container.
type Runtime struct {
	base   runc.Runc // copied per call, each copy with a log file of its own
	bundle string
	// criuPath is the CRIU binary to use; runtimes look criu up in PATH
	// (runc's own --criu flag is gone in newer releases), so its directory
	// goes first in the runtime's PATH.
	criuPath string
	// callTimeout bounds every call; createTimeout create, checkpoint and restore.
	callTimeout, createTimeout time.Duration
}

// New configures the runtime binary and state root from cfg for the
// container in bundle; ns is the containerd namespace. The binary is looked
// up now, so a missing runtime is reported before anything is set up.
func New(bundle, ns string, cfg Config) (*Runtime, error) {
	path, err := lookPath(cfg.Binary)
	if err != nil {
		return nil, err
	}
	return newWithPath(bundle, ns, cfg, path)
}

func newWithPath(bundle, ns string, cfg Config, path string) (*Runtime, error) {
	root := cfg.Root
	if root == "" {
		root = defaultRoot
	}
	r := &Runtime{
		bundle: bundle,
		base: runc.Runc{
			Command:       path,
			Root:          filepath.Join(root, ns),
			LogFormat:     runc.JSON,
			SystemdCgroup: cfg.SystemdCgroup,
		},
		criuPath:      cfg.CriuPath,
		callTimeout:   cfg.CallTimeout,
		createTimeout: cfg.CreateTimeout,
	}
	if r.callTimeout <= 0 {
		r.callTimeout = DefaultCallTimeout
	}
	if r.createTimeout <= 0 {
		r.createTimeout = DefaultCreateTimeout
	}
	return r, nil
}

// Restore is New for a container taken back from a previous shim process:
// the runtime's path is not looked up again (the container exists; a
// runtime gone since fails its calls, with its name in the error).
func Restore(bundle, ns string, cfg Config) *Runtime {
	r, err := New(bundle, ns, cfg)
	if err == nil {
		return r
	}
	binary := cfg.Binary
	if binary == "" {
		binary = "runc"
	}
	cfg.Binary = binary
	r, _ = newWithPath(bundle, ns, cfg, binary)
	return r
}

// lookPath finds the runtime binary (runc when unnamed).
func lookPath(binary string) (string, error) {
	if binary == "" {
		binary = "runc"
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return "", fmt.Errorf("runtime binary %q: %w", binary, err)
	}
	return path, nil
}

// Binary is the runtime binary's path.
func (r *Runtime) Binary() string { return r.base.Command }

// call runs fn against a runtime whose --log is a fresh file in the bundle,
// so a failure is reported with the runtime's own message and never with a
// message from a concurrent call. The call is not cancelled with the
// request (a runtime stopped halfway leaves state nobody cleans up), but it
// has a deadline of its own: past it the runtime process is killed (through
// its pidfd, by os/exec) and the call fails with context.DeadlineExceeded.
func (r *Runtime) call(ctx context.Context, op string, timeout time.Duration, fn func(context.Context, *runc.Runc) error) error {
	logf, err := os.CreateTemp(r.bundle, ".runtime-"+op+"-*.log")
	if err != nil {
		return fmt.Errorf("%s %s: create log file: %w", r.base.Command, op, err)
	}
	logPath := logf.Name()
	logf.Close()
	defer os.Remove(logPath)

	rc := r.base
	rc.Log = logPath
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if r.criuPath != "" {
		ctx = runc.WithExtraEnv(ctx, "PATH="+filepath.Dir(r.criuPath)+":"+os.Getenv("PATH"))
	}
	err = fn(ctx, &rc)
	if err == nil {
		return nil
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("did not finish within %v and was killed (%v): %w", timeout, err, context.DeadlineExceeded)
	}
	return &Error{Runtime: r.base.Command, Op: op, Message: lastLoggedError(logPath), Err: err}
}

func (r *Runtime) Create(ctx context.Context, id string, opts *runc.CreateOpts) error {
	return r.call(ctx, "create", r.createTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Create(ctx, id, r.bundle, opts)
	})
}

func (r *Runtime) Start(ctx context.Context, id string) error {
	return r.call(ctx, "start", r.callTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Start(ctx, id)
	})
}

func (r *Runtime) Exec(ctx context.Context, id string, spec specs.Process, opts *runc.ExecOpts) error {
	return r.ExecWatched(ctx, id, spec, opts, nil)
}

// Call is a runtime call in flight: the runtime's process, its log and
// the call's deadline (past it the process is killed).
type Call struct {
	Pid      int
	Log      string
	Deadline time.Time
}

// ExecWatched is Exec telling running about the call as soon as the
// runtime runs with the process's stdio in hand (a live upgrade may carry
// an exec's start over, and finish it in the next process: CallResult).
// running is not called for a terminal's exec (no IO).
func (r *Runtime) ExecWatched(ctx context.Context, id string, spec specs.Process, opts *runc.ExecOpts, running func(Call)) error {
	return r.call(ctx, "exec", r.callTimeout, func(ctx context.Context, rc *runc.Runc) error {
		if running != nil && opts.IO != nil {
			started := make(chan int, 1)
			deadline, _ := ctx.Deadline()
			o := *opts
			o.Started = started
			// go-runc sends the runtime's pid, then has the IO close the
			// process's ends (it has them): the call is running.
			o.IO = startedIO{IO: opts.IO, started: func() {
				running(Call{Pid: <-started, Log: rc.Log, Deadline: deadline})
			}}
			opts = &o
		}
		return rc.Exec(ctx, id, spec, opts)
	})
}

// startedIO is a runtime call's IO that says when the runtime has started
// with it.
type startedIO struct {
	runc.IO
	started func()
}

func (s startedIO) CloseAfterStart() error {
	var err error
	if c, ok := s.IO.(runc.StartCloser); ok {
		err = c.CloseAfterStart()
	}
	s.started()
	return err
}

// CallResult is the error of a runtime call of op that ended (in a
// previous process of the shim) with status, as the call would have
// returned it, with the runtime's own message from its log; the log goes.
func (r *Runtime) CallResult(op string, c Call, status int) error {
	defer os.Remove(c.Log)
	if status == 0 {
		return nil
	}
	return &Error{Runtime: r.base.Command, Op: op, Message: lastLoggedError(c.Log),
		Err: fmt.Errorf("%s did not terminate successfully: %w", r.base.Command, &runc.ExitError{Status: status})}
}

func (r *Runtime) Kill(ctx context.Context, id string, sig int, all bool) error {
	return r.call(ctx, "kill", r.callTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Kill(ctx, id, sig, &runc.KillOpts{All: all})
	})
}

func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	return r.call(ctx, "delete", r.callTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Delete(ctx, id, &runc.DeleteOpts{Force: force})
	})
}

func (r *Runtime) Ps(ctx context.Context, id string) ([]int, error) {
	var pids []int
	err := r.call(ctx, "ps", r.callTimeout, func(ctx context.Context, rc *runc.Runc) (err error) {
		pids, err = rc.Ps(ctx, id)
		return err
	})
	return pids, err
}

func (r *Runtime) Pause(ctx context.Context, id string) error {
	return r.call(ctx, "pause", r.callTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Pause(ctx, id)
	})
}

func (r *Runtime) Resume(ctx context.Context, id string) error {
	return r.call(ctx, "resume", r.callTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Resume(ctx, id)
	})
}

func (r *Runtime) Update(ctx context.Context, id string, resources *specs.LinuxResources) error {
	return r.call(ctx, "update", r.callTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Update(ctx, id, resources)
	})
}

// Checkpoint dumps the container with CRIU; a failure carries CRIU's own
// errors from dump.log in the work directory.
func (r *Runtime) Checkpoint(ctx context.Context, id string, opts *runc.CheckpointOpts, actions ...runc.CheckpointAction) error {
	err := r.call(ctx, "checkpoint", r.createTimeout, func(ctx context.Context, rc *runc.Runc) error {
		return rc.Checkpoint(ctx, id, opts, actions...)
	})
	return withCriuLog(err, filepath.Join(opts.WorkDir, "dump.log"))
}

// Restore restores the container from a checkpoint; a failure carries
// CRIU's own errors from restore.log in the work directory.
func (r *Runtime) Restore(ctx context.Context, id string, opts *runc.RestoreOpts) error {
	err := r.call(ctx, "restore", r.createTimeout, func(ctx context.Context, rc *runc.Runc) error {
		_, err := rc.Restore(ctx, id, r.bundle, opts)
		return err
	})
	return withCriuLog(err, filepath.Join(opts.WorkDir, "restore.log"))
}

// IsNotExist tells a runtime's "container does not exist" apart, which is
// what a delete after a completed delete gets.
func IsNotExist(err error) bool {
	var rerr *Error
	return errors.As(err, &rerr) && containsFold(rerr.Message, "does not exist")
}

// ProcessFile is the process spec file of the runtime's exec call running
// as pid (go-runc's temporary `--process` file), read from its command
// line; empty if it cannot be told.
func ProcessFile(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return ""
	}
	args := strings.Split(string(data), "\x00")
	for i, a := range args {
		if a == "--process" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}
