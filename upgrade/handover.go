package upgrade

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/shim"
)

// handoverTimeout bounds how long a live upgrade waits for short requests
// and exits being handled before it gives up (the shim then carries on).
const handoverTimeout = 15 * time.Second

// handOver freezes the shim, writes it down and re-executes the new
// binary, which takes it back (probed: it reads states up to version
// probed). It returns only if that failed, having undone the freeze.
func handOver(p Parts, id Identity, log *slog.Logger, next *Binary, token string, probed uint32) (err error) {
	binary := next.Path
	frozenAt := Monotonic()
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), handoverTimeout)
	defer cancel()

	p.Conns.Gate(p.Listener)
	undo = append(undo, func() { p.Conns.Ungate(p.Listener) })
	if err := p.Conns.Settle(ctx); err != nil {
		return err
	}
	p.Reaper.Freeze()
	undo = append(undo, p.Reaper.Thaw)
	// Before any descriptor is duplicated for the next process: a publish
	// binary started after that would inherit the duplicates (a pod's
	// lifeline among them). Events published meanwhile are queued. Resume
	// is undone whatever Pause did: it may have paused and then failed.
	undo = append(undo, p.Events.Resume)
	if err := p.Events.Pause(ctx); err != nil {
		return err
	}
	containers, err := p.Containers.Handover(ctx)
	if err != nil {
		return err
	}
	undo = append(undo, func() {
		for _, c := range containers {
			fdpass.Close(shim.StateFds(c)...)
		}
		p.Containers.TakeBack()
	})
	pod, err := p.Pod.Handover(ctx)
	if err != nil {
		return err
	}
	undo = append(undo, func() { p.Pod.TakeBack(pod) })
	// A sandbox created since the probe needs a version the binary may not read.
	if v := VersionFor(pod != nil); v > probed {
		return fmt.Errorf("a pod sandbox was created after the new binary was probed for state version %d: %w", probed, errdefs.ErrFailedPrecondition)
	}
	// Exits handled meanwhile may have answered Waits: settle again.
	if err := p.Conns.Settle(ctx); err != nil {
		return err
	}
	// A Shutdown served before the gate closed has stopped the listener the
	// next process would take over: the shim is going, not upgrading.
	if p.Containers.Closing() {
		return fmt.Errorf("the shim is shutting down: %w", errdefs.ErrFailedPrecondition)
	}
	queued, err := p.Events.Queued()
	if err != nil {
		return err
	}
	st := &upgradepb.ShimState{
		Version:    VersionFor(pod != nil),
		Containers: containers,
		Sandbox:    pod,
		Events:     queued,
		Shim: &upgradepb.Shim{
			Namespace: id.Namespace, Id: id.ID, Address: id.Address,
			PublishBinary: id.PublishBinary, Debug: id.Debug, TtrpcAddress: id.TTRPCAddress,
			Binary: binary, Version: id.Version, Closing: p.Containers.Closing(),
			SocketPath: id.SocketPath, SocketDev: id.SocketDev, SocketIno: id.SocketIno,
		},
		Handover: &upgradepb.Handover{Token: token, OldVersion: id.Version, FrozenAtNs: frozenAt, OldBinary: id.Binary, NewBinary: binary},
	}
	conns, err := p.Conns.States()
	if err != nil {
		return err
	}
	for _, c := range conns {
		st.Conns = append(st.Conns, &upgradepb.Conn{Fd: int32(c.FD), Carried: c.Carried, Pending: c.Pending})
		undo = append(undo, func() { fdpass.Close(c.FD) })
	}
	lfd, err := p.Listener.FD()
	if err != nil {
		return err
	}
	undo = append(undo, func() { fdpass.Close(lfd) })
	st.Shim.ListenerFd = int32(lfd)
	oldBinary, err := OpenOldBinary()
	if err != nil {
		return err
	}
	undo = append(undo, func() { fdpass.Close(oldBinary) })
	st.Handover.OldBinaryFd = int32(oldBinary)
	// From here on nothing is reaped: what exits now stays a zombie for
	// the process that carries on, so no exit can fall between the exits
	// written down and the exec. (Thaw, on the way back, reaps again.)
	for _, e := range p.Reaper.Seal() {
		st.Exits = append(st.Exits, &upgradepb.Exit{Pid: int32(e.Pid), Status: int32(e.Status), TimeNs: e.Time.UnixNano()})
	}
	stateFD, err := WriteState(st)
	if err != nil {
		return err
	}
	undo = append(undo, func() { fdpass.Close(stateFD) })
	log.Info("re-executing for a live upgrade", "binary", binary, "containers", len(containers), "sandbox", pod != nil, "connections", len(conns),
		"frozen_for", time.Duration(Monotonic()-frozenAt))
	return next.Exec(restoreArgs(id, stateFD, oldBinary, ""))
}

// restoreArgs is the command line of the process that carries on: the
// shim's own flags, the state to take back and the old binary to roll back
// to.
func restoreArgs(id Identity, stateFD, oldBinaryFD int, rollback string) []string {
	args := []string{"-namespace", id.Namespace, "-id", id.ID, "-address", id.Address,
		"-publish-binary", id.PublishBinary, "-restore-fd", FdArg(stateFD),
		"-old-binary-fd", FdArg(oldBinaryFD)}
	if id.Debug {
		args = append(args, "-debug")
	}
	if rollback != "" {
		args = append(args, "-rollback", rollback)
	}
	return args
}
