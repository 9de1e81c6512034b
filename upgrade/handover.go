package upgrade

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/shim"
)

// The pause of a live upgrade is the time requests wait at the gate: from
// the gate closing until the next process serves. Requests being served
// when it closes are waited for, within a bound: settleFirst on the first
// try, twice as long on each further one, up to settleCap. If they are not
// answered by then, the gate lifts (what it held is served at once), the
// upgrade waits for them with requests flowing, and tries again, within
// handoverTimeout in all. A request that only waits (a Wait, an exec's
// Delete waiting for its client) is never waited for: the next process
// serves it (carry.Wait).
const (
	settleFirst     = 100 * time.Millisecond
	settleCap       = 1600 * time.Millisecond
	handoverTimeout = 30 * time.Second
)

// busyError is a try given up because requests in flight were not
// answered within its bound; frozenAt is when its gate closed (0: before).
type busyError struct {
	err      error
	frozenAt int64
}

func (e busyError) Error() string { return e.err.Error() }
func (e busyError) Unwrap() error { return e.err }

// handOver freezes the shim, writes it down and re-executes the new
// binary, which takes it back (probed: it reads states up to version
// probed). It returns only if that failed, having undone the freeze.
func handOver(p Parts, id Identity, log *slog.Logger, next *Binary, token string, probed uint32) error {
	ctx, cancel := context.WithTimeout(context.Background(), handoverTimeout)
	defer cancel()
	bound := settleFirst
	var held time.Duration // the longest pause of the tries given up
	for try := 1; ; try++ {
		err := handOverOnce(ctx, p, id, log, next, token, probed, bound, held)
		var busy busyError
		if !errors.As(err, &busy) || ctx.Err() != nil {
			return err
		}
		if busy.frozenAt != 0 {
			held = max(held, time.Duration(Monotonic()-busy.frozenAt))
		}
		log.Info("upgrade: requests in flight, trying again once they are answered", "try", try, "bound", bound, "error", err)
		if err := p.Conns.AwaitServed(ctx); err != nil {
			return err
		}
		bound = min(2*bound, settleCap)
	}
}

// handOverOnce is one try of handOver: requests in flight must be
// answered, and exits being handled taken, within bound.
func handOverOnce(ctx context.Context, p Parts, id Identity, log *slog.Logger, next *Binary, token string, probed uint32, bound, held time.Duration) (err error) {
	binary := next.Path
	var frozenAt int64 // when the gate closes
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	// busy marks an error of a wait within bound (bctx) as the try's being
	// given up, not the upgrade's.
	busy := func(bctx context.Context, err error) error {
		if err != nil && bctx.Err() != nil && ctx.Err() == nil {
			return busyError{err, frozenAt}
		}
		return err
	}

	// The event queue is paused first, while requests are still served:
	// after the event in flight (containerd may be slow to take it), the
	// events published are queued, for the state. Before any descriptor is
	// duplicated for the next process, too: a publish binary started after
	// that would inherit the duplicates (a pod's lifeline among them).
	// Resume is undone whatever Pause did: it may have paused and failed.
	undo = append(undo, p.Events.Resume)
	pctx, pcancel := context.WithTimeout(ctx, bound)
	defer pcancel()
	if err := p.Events.Pause(pctx); err != nil {
		return busy(pctx, err)
	}
	// The pause begins: requests wait at the gate from now on, within
	// bound while requests being served and exits being handled are let
	// finish.
	frozenAt = Monotonic()
	bctx, bcancel := context.WithTimeout(ctx, bound)
	defer bcancel()
	phases := newPhases()
	// A next process that reads version 4 finishes exec starts in flight.
	p.Containers.CarryStarts(probed >= 4)
	defer p.Containers.CarryStarts(false)
	p.Conns.Gate(p.Listener)
	undo = append(undo, func() { p.Conns.Ungate(p.Listener) })
	if err := p.Conns.Settle(bctx); err != nil {
		return busy(bctx, err)
	}
	phases.end("settle")
	p.Reaper.Freeze()
	undo = append(undo, p.Reaper.Thaw)
	containers, err := p.Containers.Handover(bctx)
	if err != nil {
		return busy(bctx, err)
	}
	undo = append(undo, func() {
		for _, c := range containers {
			fdpass.Close(shim.StateFds(c)...)
		}
		p.Containers.TakeBack()
	})
	pod, err := p.Pod.Handover(bctx)
	if err != nil {
		return busy(bctx, err)
	}
	undo = append(undo, func() { p.Pod.TakeBack(pod) })
	phases.end("write_down")
	// A sandbox created since the probe, or a terminal, needs a version
	// the binary may not read.
	version := VersionFor(pod, shim.CarriesStarts(containers), shim.HasTerminals(containers))
	if version > probed {
		return fmt.Errorf("the state needs version %d (a terminal, or a pod sandbox created since the probe), the new binary reads %d: %w", version, probed, errdefs.ErrFailedPrecondition)
	}
	// Exits handled meanwhile may have answered Waits: settle again.
	if err := p.Conns.Settle(bctx); err != nil {
		return busy(bctx, err)
	}
	phases.end("settle_again")
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
		Version:    version,
		Containers: containers,
		Sandbox:    pod,
		Events:     queued,
		Shim: &upgradepb.Shim{
			Namespace: id.Namespace, Id: id.ID, Address: id.Address,
			PublishBinary: id.PublishBinary, Debug: id.Debug, TtrpcAddress: id.TTRPCAddress,
			Binary: binary, Version: id.Version, Closing: p.Containers.Closing(),
			SocketPath: id.SocketPath, SocketDev: id.SocketDev, SocketIno: id.SocketIno,
		},
		Handover: &upgradepb.Handover{Token: token, OldVersion: id.Version, FrozenAtNs: frozenAt, OldBinary: id.Binary, NewBinary: binary,
			EarlierPauseNs: int64(held)},
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
	phases.end("state")
	log.Info("re-executing for a live upgrade", "binary", binary, "containers", len(containers), "sandbox", pod != nil, "connections", len(conns),
		"state_version", version, "frozen_for", time.Duration(Monotonic()-frozenAt), "phases", phases.String())
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

// phases times the steps of a try, for the log.
type phases struct {
	last  int64
	steps []string
}

func newPhases() *phases { return &phases{last: Monotonic()} }

// end ends the step name.
func (p *phases) end(name string) {
	now := Monotonic()
	p.steps = append(p.steps, fmt.Sprintf("%s=%v", name, time.Duration(now-p.last).Round(time.Microsecond)))
	p.last = now
}

func (p *phases) String() string { return strings.Join(p.steps, " ") }
