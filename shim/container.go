package shim

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/internal/carry"
	"github.com/tether-shim/tether/mount"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/proto/types"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// Container is one container of the shim: its runtime, its rootfs mount, its
// init and its execs. It sequences its processes' exits (the init's last).
type Container struct {
	ID      string
	Bundle  string
	env     *Env
	runtime *oci.Runtime
	config  oci.Config
	// ownPidNS is false when the container shares another pid namespace:
	// its processes then outlive the init unless the shim kills them.
	ownPidNS bool
	// rootfs is where containerd's rootfs mounts are mounted; empty if none.
	rootfs string
	// mounts are containerd's rootfs mounts, as TaskCreate reports them.
	mounts []*types.Mount
	// checkpoint (and parentCheckpoint) are the CRIU images the init is
	// restored from on Start; empty for a container created normally.
	checkpoint, parentCheckpoint string
	init                         *process.Process
	exits                        exitOrder

	mu sync.Mutex
	// execs are the container's exec processes by exec id, from Exec until
	// their Delete. Guarded by mu.
	execs map[string]*process.Process
	// deleted is set once the init is deleted: no exec may be added. Guarded by mu.
	deleted bool
	// cg is the container's cgroup, nil if it could not be found. Guarded by mu.
	cg cgroup.Cgroup
	// oom is the watch on cg's OOM kills, nil if none. Guarded by mu.
	oom *cgroup.OOMWatch
	// oomHandedOver is the watch written down for a handover to the next
	// process, until it is taken back. Guarded by mu.
	oomHandedOver *cgroup.OOMWatchState
}

// createContainer runs the runtime's create for req. On error nothing is left
// behind: no runtime state, no mount, no open fifo, no event.
func createContainer(ctx context.Context, req *task.CreateTaskRequest, env *Env) (_ *Container, err error) {
	if err := ValidateID("container", req.GetId()); err != nil {
		return nil, err
	}
	spec, err := readSpec(req.GetBundle())
	if err != nil {
		return nil, err
	}
	if spec.Process.Terminal != req.GetTerminal() {
		return nil, fmt.Errorf("terminal is %v in the request but %v in config.json: %w",
			req.GetTerminal(), spec.Process.Terminal, errdefs.ErrInvalidArgument)
	}
	checkpoint := req.GetCheckpoint()
	if checkpoint == "" {
		checkpoint = oci.LegacyRestorePath(req.GetOptions())
	}
	if checkpoint == "" && req.GetParentCheckpoint() != "" {
		return nil, fmt.Errorf("parent checkpoint without a checkpoint: %w", errdefs.ErrInvalidArgument)
	}
	cfg, err := oci.ParseOptions(req.GetOptions())
	if err != nil {
		return nil, err
	}
	rt, err := oci.New(req.GetBundle(), env.Namespace, cfg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	}
	c := &Container{
		ID:               req.GetId(),
		Bundle:           req.GetBundle(),
		env:              env,
		runtime:          rt,
		config:           cfg,
		ownPidNS:         spec.ownPidNamespace(),
		mounts:           req.GetRootfs(),
		checkpoint:       checkpoint,
		parentCheckpoint: req.GetParentCheckpoint(),
		execs:            make(map[string]*process.Process),
	}
	paths := stdio.Paths{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()}
	p := process.New(c.ID, "", paths, initLife{c}, c.announcerFor(""), env.Log)
	c.init = p
	// The init is being created: its exit, should it come at once, waits
	// for the transition, so TaskCreate always comes first.
	p.Hold()
	defer p.Release()

	if err := cfg.Save(c.Bundle); err != nil {
		return nil, err
	}
	if len(c.mounts) > 0 {
		c.rootfs = filepath.Join(c.Bundle, "rootfs")
		if err := mount.All(c.rootfs, c.mounts, c.env.Reaper); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				mount.UnmountAll(c.rootfs)
			}
		}()
	}
	pio, err := stdio.Open(paths, c.stdioConfig())
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			pio.Close()
		}
	}()
	if c.checkpoint != "" {
		// A restored init comes to life on Start.
		p.Created(process.Started{Pidfd: -1, IO: pio})
		return c, nil
	}
	s, err := c.createInit(ctx, p, pio)
	if err != nil {
		return nil, err
	}
	p.Created(s)
	return c, nil
}

// createInit has the runtime create the init and adopts it.
func (c *Container) createInit(ctx context.Context, p *process.Process, pio *stdio.IO) (_ process.Started, err error) {
	watch := c.env.Reaper.Watch()
	defer watch.Close()
	pidFile := filepath.Join(c.Bundle, bundle.InitPidFile)
	err = c.runtime.Create(ctx, c.ID, &runc.CreateOpts{
		PidFile:       pidFile,
		IO:            pio.RuntimeIO(),
		ConsoleSocket: pio.ConsoleSocket(),
		NoPivot:       c.config.NoPivotRoot,
		NoNewKeyring:  c.config.NoNewKeyring,
	})
	if err != nil {
		return process.Started{}, err
	}
	s, err := c.adoptInit(p, watch, pidFile, pio)
	if err != nil {
		c.runtime.Delete(context.WithoutCancel(ctx), c.ID, true)
		return process.Started{}, err
	}
	return s, nil
}

// adoptInit takes over the init the runtime just made (created or
// restored): it connects its stdio, reads its pid, watches its cgroup and,
// last (nothing after it may fail), claims its exit from watch. On error it
// leaves nothing open but pio, which stays the caller's.
func (c *Container) adoptInit(p *process.Process, watch *reaper.Watch, pidFile string, pio *stdio.IO) (process.Started, error) {
	if err := pio.Started(); err != nil {
		return process.Started{}, err
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		return process.Started{}, fmt.Errorf("read init pid: %w", err)
	}
	pidfd := openPidfd(pid)
	if err := watch.Claim(pid, pidfd, c.exitHandler(p)); err != nil {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
		return process.Started{}, err
	}
	c.watchCgroup(pid)
	return process.Started{Pid: pid, Pidfd: pidfd, IO: pio}, nil
}

// openPidfd opens a pidfd for pid, or returns -1: the process is gone
// (reaped; its exit may be held in a watch), or pidfds are unavailable (an
// old kernel, a seccomp filter), and signals then go by pid.
func openPidfd(pid int) int {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1
	}
	return fd
}

// stdioConfig is how the container's processes get their stdio.
func (c *Container) stdioConfig() stdio.Config {
	return stdio.Config{UID: c.config.IoUID, GID: c.config.IoGID, ID: c.ID, Namespace: c.env.Namespace, Monitor: c.env.Reaper}
}

// exitHandler is the reaper's owner of p's exit. It must not block: it runs
// in the reaper's goroutine.
func (c *Container) exitHandler(p *process.Process) func(reaper.Exit) {
	return func(e reaper.Exit) {
		c.env.exits.Add() // first: whoever sees reaped sees the exit in flight
		p.MarkReaped()
		go func() {
			defer c.env.exits.Done()
			c.processExited(p, e)
		}()
	}
}

// Pid is the init's pid.
func (c *Container) Pid() int {
	return c.init.State().Pid
}

// lookup returns the init (empty execID) or the exec with that id.
func (c *Container) lookup(execID string) (*process.Process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q of container %q: %w", execID, c.ID, errdefs.ErrNotFound)
	}
	return p, nil
}

// delete deletes the container: its init must be created or stopped. Execs
// still listed (stopped, or never started) go with it, their clients
// awaited first, all together and before anything is done (a live upgrade
// may carry the request over meanwhile). Only the table calls it, which
// then removes the container.
func (c *Container) delete(ctx context.Context) (ProcessState, error) {
	if c.init.Allows(process.OpDelete) == nil {
		c.mu.Lock()
		leftover := mapValues(c.execs)
		c.mu.Unlock()
		c.awaitClients(ctx, leftover)
	}
	st, err := c.init.Delete(ctx)
	if err != nil {
		return ProcessState{}, err
	}
	c.mu.Lock()
	c.deleted = true
	execs, oom := c.execs, c.oom
	c.execs, c.oom = map[string]*process.Process{}, nil
	c.mu.Unlock()
	if oom != nil {
		oom.Close()
	}
	var wg sync.WaitGroup
	for _, p := range execs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := p.Delete(ctx); err != nil {
				c.env.Log.Warn("delete exec with its container", "container", c.ID, "exec", p.ExecID(), "error", err)
			}
		}()
	}
	wg.Wait()
	return st, nil
}

// awaitClients waits, within one bound for all, for the clients of the
// stopped execs among execs to read what is left of their output, before
// they are deleted. Nothing is done meanwhile: a live upgrade may carry the
// request over instead of waiting for it.
func (c *Container) awaitClients(ctx context.Context, execs []*process.Process) {
	var ios []*stdio.IO
	for _, p := range execs {
		if pio := p.ClientsIO(); pio != nil {
			ios = append(ios, pio)
		}
	}
	if len(ios) == 0 {
		return
	}
	err := carry.Wait(ctx, func() error { return stdio.AwaitAllClients(ios...) })
	if err != nil {
		c.env.Log.Warn("exec output not taken by its client", "container", c.ID, "error", err)
	}
}

// ExecPids maps the pid of each running exec to its exec id.
func (c *Container) ExecPids() map[int]string {
	c.mu.Lock()
	execs := make([]*process.Process, 0, len(c.execs))
	for _, p := range c.execs {
		execs = append(execs, p)
	}
	c.mu.Unlock()
	pids := make(map[int]string, len(execs))
	for _, p := range execs {
		if st := p.State(); st.Pid > 0 && st.State != Stopped {
			pids[st.Pid] = st.ID
		}
	}
	return pids
}
