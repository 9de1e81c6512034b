package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"

	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/task"
	"github.com/tether-shim/tether/reaper"
)

const (
	initPidFile  = "init.pid"
	initExitFile = "init.exit"
)

// deps are what every container of a shim shares.
type deps struct {
	namespace string
	reaper    *reaper.Reaper
	events    publisher
	oom       *oomWatcher
	cgroups   *hostCgroups
	log       *slog.Logger
}

// Container is one container of the shim: its runtime, its rootfs mount, its
// init and its execs.
type Container struct {
	ID     string
	Bundle string
	deps
	runtime *Runtime
	config  RuntimeConfig
	// ownPidNS is false when the container shares another pid namespace:
	// its processes then outlive the init unless the shim kills them.
	ownPidNS bool
	// rootfs is where containerd's rootfs mounts are mounted; empty if none.
	rootfs string
	// checkpoint (and parentCheckpoint) are the CRIU images the init is
	// restored from on Start; empty for a container created normally.
	checkpoint, parentCheckpoint string
	init                         *Process
	exits                        exitOrder

	mu sync.Mutex
	// execs are the container's exec processes by exec id, from Exec until
	// their Delete. Guarded by mu.
	execs map[string]*Process
	// cg is the container's cgroup, nil if it could not be found. Guarded by mu.
	cg cgroup
	// oomFD is the cgroup's OOM notifier in the shim's oomWatcher, -1 if
	// none. Guarded by mu.
	oomFD int
}

// ociSpec is the part of the bundle's config.json the shim reads.
type ociSpec struct {
	Process *struct {
		Terminal bool `json:"terminal"`
	} `json:"process"`
	Linux *struct {
		Namespaces []struct {
			Type string `json:"type"`
			Path string `json:"path"`
		} `json:"namespaces"`
	} `json:"linux"`
}

// readSpec checks that bundle is a usable OCI bundle and returns its config.
func readSpec(bundle string) (*ociSpec, error) {
	if !filepath.IsAbs(bundle) || filepath.Clean(bundle) != bundle {
		return nil, fmt.Errorf("bundle path %q must be absolute and clean: %w", bundle, ErrInvalidArgument)
	}
	data, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("bundle %s has no config.json: %w", bundle, ErrInvalidArgument)
		}
		return nil, fmt.Errorf("read bundle config: %w", err)
	}
	var spec ociSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("bundle %s: config.json is not valid JSON: %v: %w", bundle, err, ErrInvalidArgument)
	}
	if spec.Process == nil {
		return nil, fmt.Errorf("bundle %s: config.json has no process: %w", bundle, ErrInvalidArgument)
	}
	return &spec, nil
}

func (s *ociSpec) ownPidNamespace() bool {
	if s.Linux == nil {
		return false
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == "pid" {
			return ns.Path == ""
		}
	}
	return false
}

// createContainer runs the runtime's create for req. On error nothing is left
// behind: no runtime state, no mount, no open fifo.
func createContainer(ctx context.Context, req *task.CreateTaskRequest, d deps) (_ *Container, err error) {
	if err := validateID("container", req.GetId()); err != nil {
		return nil, err
	}
	spec, err := readSpec(req.GetBundle())
	if err != nil {
		return nil, err
	}
	if spec.Process.Terminal != req.GetTerminal() {
		return nil, fmt.Errorf("terminal is %v in the request but %v in config.json: %w",
			req.GetTerminal(), spec.Process.Terminal, ErrInvalidArgument)
	}
	cfg, err := ParseOptions(req.GetOptions())
	if err != nil {
		return nil, err
	}
	rt, err := newRuntime(req.GetBundle(), d.namespace, cfg)
	if err != nil {
		return nil, err
	}
	c := &Container{
		ID:               req.GetId(),
		Bundle:           req.GetBundle(),
		deps:             d,
		runtime:          rt,
		config:           cfg,
		ownPidNS:         spec.ownPidNamespace(),
		checkpoint:       req.GetCheckpoint(),
		parentCheckpoint: req.GetParentCheckpoint(),
		execs:            make(map[string]*Process),
		oomFD:            -1,
	}
	if c.checkpoint == "" && c.parentCheckpoint != "" {
		return nil, fmt.Errorf("parent checkpoint without a checkpoint: %w", ErrInvalidArgument)
	}
	stdio := Stdio{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()}
	c.init = newProcess(c.ID, "", stdio, filepath.Join(c.Bundle, initExitFile), initLife{c}, d.events, d.log)

	if err := cfg.save(c.Bundle); err != nil {
		return nil, err
	}
	if len(req.GetRootfs()) > 0 {
		c.rootfs = filepath.Join(c.Bundle, "rootfs")
		if err := mountAll(c.rootfs, req.GetRootfs()); err != nil {
			return nil, err
		}
		defer func() {
			if err != nil {
				unmountAll(c.rootfs)
			}
		}()
	}
	pio, err := openIO(stdio, c.ioConfig())
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			pio.close()
		}
	}()
	p := c.init
	p.mu.Lock()
	p.io = pio
	p.mu.Unlock()
	if c.checkpoint != "" {
		// A restored init comes to life on Start.
		c.events.publish(topicCreate, &events.TaskCreate{
			ContainerId: c.ID,
			Bundle:      c.Bundle,
			Rootfs:      req.GetRootfs(),
			Io:          &events.TaskIO{Stdin: stdio.Stdin, Stdout: stdio.Stdout, Stderr: stdio.Stderr, Terminal: stdio.Terminal},
			Checkpoint:  c.checkpoint,
		})
		return c, nil
	}

	watch := d.reaper.Watch()
	defer watch.Close()
	pidFile := filepath.Join(c.Bundle, initPidFile)
	err = rt.Create(ctx, c.ID, &runc.CreateOpts{
		PidFile:       pidFile,
		IO:            pio.runtimeIO(),
		ConsoleSocket: pio.consoleSocket(),
		NoPivot:       cfg.NoPivotRoot,
		NoNewKeyring:  cfg.NoNewKeyring,
	})
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			c.runtime.Delete(context.WithoutCancel(ctx), c.ID, true)
		}
	}()
	// TaskCreate is queued before the init's exit can be claimed, so an init
	// that dies at once cannot have its TaskExit overtake it.
	announce := func(pid int) {
		c.events.publish(topicCreate, &events.TaskCreate{
			ContainerId: c.ID,
			Bundle:      c.Bundle,
			Rootfs:      req.GetRootfs(),
			Io:          &events.TaskIO{Stdin: stdio.Stdin, Stdout: stdio.Stdout, Stderr: stdio.Stderr, Terminal: stdio.Terminal},
			Pid:         uint32(pid),
		})
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, err := c.adoptInit(p, watch, pidFile, announce); err != nil {
		return nil, err
	}
	return c, nil
}

// ioConfig is how the container's processes get their stdio.
func (c *Container) ioConfig() ioConfig {
	return ioConfig{uid: c.config.IoUID, gid: c.config.IoGID, id: c.ID, namespace: c.namespace, monitor: c.reaper}
}

// adoptInit takes over the init the runtime just made (created or restored):
// it connects its stdio, reads its pid, claims its exit from watch and
// watches its cgroup; announce (if set) runs just before the claim. Called
// with p.mu held.
func (c *Container) adoptInit(p *Process, watch *reaper.Watch, pidFile string, announce func(pid int)) (int, error) {
	if err := p.io.started(); err != nil {
		return 0, err
	}
	pid, err := runc.ReadPidFile(pidFile)
	if err != nil {
		return 0, fmt.Errorf("read init pid: %w", err)
	}
	p.setPid(pid)
	if announce != nil {
		announce(pid)
	}
	if err := watch.Claim(pid, p.onExit); err != nil {
		return 0, err
	}
	c.watchCgroup(pid)
	return pid, nil
}

// Pid is the init's pid.
func (c *Container) Pid() int {
	return c.init.State().Pid
}

// Process returns the init (empty execID) or the exec with that id.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.execs[execID]
	if !ok {
		return nil, fmt.Errorf("exec %q of container %q: %w", execID, c.ID, ErrNotFound)
	}
	return p, nil
}

// AddExec registers a new exec process; it runs on Start.
func (c *Container) AddExec(req *task.ExecProcessRequest) (*Process, error) {
	if err := validateID("exec", req.GetExecId()); err != nil {
		return nil, err
	}
	spec, err := parseProcessSpec(req.GetSpec())
	if err != nil {
		return nil, err
	}
	spec.Terminal = req.GetTerminal()
	if err := c.init.allows(opExec); err != nil {
		return nil, err
	}
	stdio := Stdio{Stdin: req.GetStdin(), Stdout: req.GetStdout(), Stderr: req.GetStderr(), Terminal: req.GetTerminal()}
	exitFile := filepath.Join(c.Bundle, "exec-"+req.GetExecId()+".exit")
	p := newProcess(c.ID, req.GetExecId(), stdio, exitFile, &execLife{c: c, spec: *spec}, c.events, c.log)

	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[req.GetExecId()]; ok {
		return nil, fmt.Errorf("exec %q of container %q: %w", req.GetExecId(), c.ID, ErrAlreadyExists)
	}
	c.execs[req.GetExecId()] = p
	return p, nil
}

// processSpecURL is the type URL containerd gives an OCI process spec (JSON).
const processSpecURL = "types.containerd.io/opencontainers/runtime-spec/1/Process"

func parseProcessSpec(a *anypb.Any) (*specs.Process, error) {
	if a == nil {
		return nil, fmt.Errorf("exec has no process spec: %w", ErrInvalidArgument)
	}
	if a.GetTypeUrl() != processSpecURL {
		return nil, fmt.Errorf("exec spec has type %q, want %q: %w", a.GetTypeUrl(), processSpecURL, ErrInvalidArgument)
	}
	var spec specs.Process
	if err := json.Unmarshal(a.GetValue(), &spec); err != nil {
		return nil, fmt.Errorf("exec spec is not valid JSON: %v: %w", err, ErrInvalidArgument)
	}
	if len(spec.Args) == 0 {
		return nil, fmt.Errorf("exec spec has no args: %w", ErrInvalidArgument)
	}
	return &spec, nil
}

// DeleteExec deletes a created or stopped exec and forgets it.
func (c *Container) DeleteExec(ctx context.Context, execID string) (ProcessState, error) {
	p, err := c.Process(execID)
	if err != nil {
		return ProcessState{}, err
	}
	st, err := p.Delete(ctx)
	if err != nil {
		return ProcessState{}, err
	}
	c.mu.Lock()
	delete(c.execs, execID)
	c.mu.Unlock()
	return st, nil
}

// Delete deletes the container: its init must be created or stopped. Execs
// still listed (all stopped by then) go with it.
func (c *Container) Delete(ctx context.Context) (ProcessState, error) {
	st, err := c.init.Delete(ctx)
	if err != nil {
		return ProcessState{}, err
	}
	c.unwatchCgroup()
	c.mu.Lock()
	execs := c.execs
	c.execs = map[string]*Process{}
	c.mu.Unlock()
	for _, p := range execs {
		if _, err := p.Delete(ctx); err != nil {
			c.log.Warn("delete exec with its container", "container", c.ID, "exec", p.id, "error", err)
		}
	}
	return st, nil
}

// ExecPids maps the pid of each exec that has one to its exec id.
func (c *Container) ExecPids() map[int]string {
	c.mu.Lock()
	execs := make([]*Process, 0, len(c.execs))
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

// Pids lists the container's processes, as the runtime sees them.
func (c *Container) Pids(ctx context.Context) ([]int, error) {
	pids, err := c.runtime.Ps(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	sort.Ints(pids)
	return pids, nil
}
