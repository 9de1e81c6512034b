package shim

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/internal/carry"
	"github.com/tether-shim/tether/mount"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/proto/types"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim/internal/lifecycle"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// Container is one container of the shim: its init and its execs, driven
// by their lifecycles (package shim/internal/lifecycle), its rootfs mount
// and its cgroup. It sequences its processes' exits (the init's last).
type Container struct {
	ID     string
	Bundle string
	env    *Env
	// life is what the container was created with, as its processes'
	// lifecycles read it: its runtime, options, rootfs and checkpoint.
	life *lifecycle.Container
	// mounts are containerd's rootfs mounts, as TaskCreate reports them.
	mounts []*types.Mount
	init   *process.Process
	exits  exitOrder

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

// newContainer returns container life.ID, without processes yet; life
// gets what all containers of env share.
func newContainer(life lifecycle.Container, env *Env) *Container {
	c := &Container{ID: life.ID, Bundle: life.Bundle, env: env, execs: make(map[string]*process.Process)}
	life.Reaper, life.Log, life.CarryStarts, life.Host = env.Reaper, env.Log, env.carryStarts, containerHost{c}
	life.Stdio = stdio.Config{UID: life.Config.IoUID, GID: life.Config.IoGID, ID: life.ID, Namespace: env.Namespace, Monitor: env.Reaper}
	c.life = &life
	return c
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
	var rootfs string
	if len(req.GetRootfs()) > 0 {
		rootfs = filepath.Join(req.GetBundle(), "rootfs")
	}
	c := newContainer(lifecycle.Container{
		ID:               req.GetId(),
		Bundle:           req.GetBundle(),
		Runtime:          rt,
		Config:           cfg,
		OwnPidNS:         spec.ownPidNamespace(),
		Rootfs:           rootfs,
		Checkpoint:       checkpoint,
		ParentCheckpoint: req.GetParentCheckpoint(),
	}, env)
	c.mounts = req.GetRootfs()
	paths := stdio.Paths{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()}
	initLife := lifecycle.NewInit(c.life)
	p := process.New(c.ID, "", paths, initLife, c.announcerFor(""), env.Log)
	c.init = p
	// The init is being created: its exit, should it come at once, waits
	// for the transition, so TaskCreate always comes first.
	p.Hold()
	defer p.Release()

	if err := cfg.Save(c.Bundle); err != nil {
		return nil, err
	}
	if rootfs != "" {
		if err := mount.All(rootfs, c.mounts, c.env.Reaper); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				mount.UnmountAll(rootfs)
			}
		}()
	}
	pio, err := stdio.Open(paths, c.life.Stdio)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			pio.Close()
		}
	}()
	if checkpoint != "" {
		// A restored init comes to life on Start.
		p.Created(process.Started{Pidfd: -1, IO: pio})
		return c, nil
	}
	s, err := initLife.Create(ctx, p, pio)
	if err != nil {
		return nil, err
	}
	p.Created(s)
	return c, nil
}

// containerHost is what the lifecycles of c's processes ask of it.
type containerHost struct{ c *Container }

func (h containerHost) ExitHandler(p *process.Process) func(reaper.Exit) { return h.c.exitHandler(p) }
func (h containerHost) InitAdopted(pid int)                              { h.c.watchCgroup(pid) }
func (h containerHost) ExecStarting() bool                               { return h.c.exits.execStarting() }
func (h containerHost) ExecGone()                                        { h.c.execGone() }
func (h containerHost) ExecsLive() int                                   { return h.c.exits.execsLive() }
func (h containerHost) AdoptCommand(pid int) (<-chan runc.Exit, error)   { return h.c.adoptCommand(pid) }

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
