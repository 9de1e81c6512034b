package shim

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/proto/events"
	"github.com/tether-shim/tether/proto/runcopts"
	"github.com/tether-shim/tether/proto/runctypes"
)

// criuWorkDir is where CRIU keeps its logs unless the options say otherwise.
const criuWorkDir = "criu-work"

// checkpointOptions decodes containerd's CheckpointOptions (none: defaults),
// or the v1 linux runtime's, which containerd 1.x's client sends to runtimes
// not named io.containerd.runc* (the same fields, numbered differently).
func checkpointOptions(a *anypb.Any) (*runcopts.CheckpointOptions, error) {
	var o runcopts.CheckpointOptions
	var legacy runctypes.CheckpointOptions
	switch {
	case a == nil || (a.GetTypeUrl() == "" && len(a.GetValue()) == 0):
		return &o, nil
	case a.MessageIs(&o):
		if err := unmarshalOptions(a, &o); err != nil {
			return nil, err
		}
		return &o, nil
	case a.MessageIs(&legacy):
		if err := unmarshalOptions(a, &legacy); err != nil {
			return nil, err
		}
		return &runcopts.CheckpointOptions{
			Exit: legacy.GetExit(), OpenTcp: legacy.GetOpenTcp(), ExternalUnixSockets: legacy.GetExternalUnixSockets(),
			Terminal: legacy.GetTerminal(), FileLocks: legacy.GetFileLocks(), EmptyNamespaces: legacy.GetEmptyNamespaces(),
			CgroupsMode: legacy.GetCgroupsMode(), ImagePath: legacy.GetImagePath(), WorkPath: legacy.GetWorkPath(),
		}, nil
	}
	return nil, fmt.Errorf("unknown checkpoint options type %q (want %q or %q): %w",
		a.GetTypeUrl(), proto.MessageName(&o), proto.MessageName(&legacy), ErrInvalidArgument)
}

// Checkpoint dumps the running (or paused) container with CRIU into path,
// leaving it running unless the options ask it to exit.
func (c *Container) Checkpoint(ctx context.Context, path string, opts *anypb.Any) error {
	o, err := checkpointOptions(opts)
	if err != nil {
		return err
	}
	image := firstSet(o.GetImagePath(), path, c.config.CriuImagePath)
	if image == "" {
		return fmt.Errorf("checkpoint has no image path: %w", ErrInvalidArgument)
	}
	work := firstSet(o.GetWorkPath(), c.config.CriuWorkPath, filepath.Join(c.Bundle, criuWorkDir))
	var actions []runc.CheckpointAction
	if !o.GetExit() {
		actions = append(actions, runc.LeaveRunning)
	}
	return c.init.apply(opDump, func() error {
		err := c.runtime.Checkpoint(ctx, c.ID, &runc.CheckpointOpts{
			ImagePath:                image,
			WorkDir:                  work,
			AllowOpenTCP:             o.GetOpenTcp(),
			AllowExternalUnixSockets: o.GetExternalUnixSockets(),
			AllowTerminal:            o.GetTerminal(),
			FileLocks:                o.GetFileLocks(),
			EmptyNamespaces:          o.GetEmptyNamespaces(),
			Cgroups:                  runc.CgroupMode(o.GetCgroupsMode()),
		}, actions...)
		if err != nil {
			return withCriuLog(err, filepath.Join(work, "dump.log"))
		}
		c.events.publish(topicCheckpointed, &events.TaskCheckpointed{ContainerId: c.ID, Checkpoint: image})
		return nil
	})
}

// restore has the runtime restore the init from the checkpoint the
// container was created from, and adopts it. Called with p.mu held.
func (c *Container) restore(ctx context.Context, p *Process) (int, error) {
	if p.io == nil {
		return 0, fmt.Errorf("restore of %q: its stdio could not be reopened after a failed attempt: %w", c.ID, ErrFailedPrecondition)
	}
	work := firstSet(c.config.CriuWorkPath, filepath.Join(c.Bundle, criuWorkDir))
	pidFile := filepath.Join(c.Bundle, initPidFile)
	watch := c.reaper.Watch()
	defer watch.Close()
	err := c.runtime.Restore(ctx, c.ID, &runc.RestoreOpts{
		CheckpointOpts: runc.CheckpointOpts{
			ImagePath:  c.checkpoint,
			WorkDir:    work,
			ParentPath: c.parentCheckpoint,
			// A restored process keeps the kinds of resources it had.
			AllowOpenTCP:             true,
			AllowExternalUnixSockets: true,
			AllowTerminal:            p.stdio.Terminal,
			FileLocks:                true,
		},
		IO:            p.io.runtimeIO(),
		ConsoleSocket: p.io.consoleSocket(),
		Detach:        true,
		PidFile:       pidFile,
		NoPivot:       c.config.NoPivotRoot,
	})
	if err != nil {
		// The failed runtime call used up the process's ends of its stdio;
		// a retried Start gets fresh ones.
		p.io.close()
		pio, ioErr := openIO(p.stdio, c.ioConfig())
		if ioErr != nil {
			c.log.Warn("reopen stdio after a failed restore", "container", c.ID, "error", ioErr)
		}
		p.io = pio
		return 0, withCriuLog(err, filepath.Join(work, "restore.log"))
	}
	pid, err := c.adoptInit(p, watch, pidFile, nil)
	if err != nil {
		c.runtime.Delete(context.WithoutCancel(ctx), c.ID, true)
		return 0, err
	}
	return pid, nil
}

// withCriuLog adds CRIU's own errors (from its log) to a failed call.
func withCriuLog(err error, log string) error {
	f, ferr := os.Open(log)
	if ferr != nil {
		return err
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "Error") {
			lines = append(lines, strings.TrimSpace(sc.Text()))
		}
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	if len(lines) == 0 {
		return err
	}
	return fmt.Errorf("%w; criu (%s): %s", err, log, strings.Join(lines, "; "))
}

func firstSet(values ...string) string {
	for _, v := range values {
		if v != "" {
			return v
		}
	}
	return ""
}
