package lifecycle

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/containerd/errdefs"
	runc "github.com/containerd/go-runc"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/bundle"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/shim/internal/process"
	"github.com/tether-shim/tether/stdio"
)

// criuWorkDir is where CRIU keeps its logs unless the options say otherwise.
const criuWorkDir = "criu-work"

// Checkpoint dumps the running (or paused) container of init p with CRIU
// into path, leaving it running unless the options ask it to exit. With
// exit, the init's TaskExit follows TaskCheckpointed: its stop waits for
// this transition.
func (l Init) Checkpoint(ctx context.Context, p *process.Process, path string, opts *anypb.Any) error {
	c := l.c
	o, err := oci.ParseCheckpointOptions(opts)
	if err != nil {
		return err
	}
	image := firstSet(o.GetImagePath(), path, c.Config.CriuImagePath)
	if image == "" {
		return fmt.Errorf("checkpoint has no image path: %w", errdefs.ErrInvalidArgument)
	}
	work := firstSet(o.GetWorkPath(), c.Config.CriuWorkPath, filepath.Join(c.Bundle, criuWorkDir))
	var actions []runc.CheckpointAction
	if !o.GetExit() {
		actions = append(actions, runc.LeaveRunning)
	}
	return p.Transact(ctx, process.OpDump, func() (string, error) {
		return image, c.Runtime.Checkpoint(ctx, c.ID, &runc.CheckpointOpts{
			ImagePath:                image,
			WorkDir:                  work,
			AllowOpenTCP:             o.GetOpenTcp(),
			AllowExternalUnixSockets: o.GetExternalUnixSockets(),
			AllowTerminal:            o.GetTerminal(),
			FileLocks:                o.GetFileLocks(),
			EmptyNamespaces:          o.GetEmptyNamespaces(),
			Cgroups:                  runc.CgroupMode(o.GetCgroupsMode()),
		}, actions...)
	})
}

// restore has the runtime restore the init from the checkpoint the
// container was created from, and adopts it. A failed runtime call uses up
// the process's stdio: it hands fresh stdio back for a retried Start.
func (l Init) restore(ctx context.Context, p *process.Process) (process.Started, error) {
	c := l.c
	pio := p.IO()
	if pio == nil {
		return process.Started{}, fmt.Errorf("restore of %q: its stdio could not be reopened after a failed attempt: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	work := firstSet(c.Config.CriuWorkPath, filepath.Join(c.Bundle, criuWorkDir))
	pidFile := filepath.Join(c.Bundle, bundle.InitPidFile)
	watch := c.Reaper.Watch()
	defer watch.Close()
	err := c.Runtime.Restore(ctx, c.ID, &runc.RestoreOpts{
		CheckpointOpts: runc.CheckpointOpts{
			ImagePath:  c.Checkpoint,
			WorkDir:    work,
			ParentPath: c.ParentCheckpoint,
			// A restored process keeps the kinds of resources it had.
			AllowOpenTCP:             true,
			AllowExternalUnixSockets: true,
			AllowTerminal:            p.Paths().Terminal,
			FileLocks:                true,
		},
		IO:            pio.RuntimeIO(),
		ConsoleSocket: pio.ConsoleSocket(),
		Detach:        true,
		PidFile:       pidFile,
		NoPivot:       c.Config.NoPivotRoot,
	})
	if err != nil {
		pio.Close()
		fresh, ioErr := stdio.Open(p.Paths(), c.Stdio)
		if ioErr != nil {
			c.Log.Warn("reopen stdio after a failed restore", "container", c.ID, "error", ioErr)
		}
		return process.Started{IO: fresh, IOReplaced: true}, err
	}
	s, err := l.adopt(p, watch, pidFile, pio)
	if err != nil {
		c.Runtime.Delete(context.WithoutCancel(ctx), c.ID, true)
		return process.Started{}, err
	}
	return s, nil
}
