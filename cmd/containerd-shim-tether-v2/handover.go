package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/shim"
	"github.com/tether-shim/tether/upgrade"
)

// handoverTimeout bounds how long a live upgrade waits for short requests
// and exits being handled before it gives up (the shim then carries on).
const handoverTimeout = 15 * time.Second

// Info says what the shim is and serves (the admin service).
func (s *server) Info(ctx context.Context, _ *upgradepb.InfoRequest) (*upgradepb.InfoResponse, error) {
	return &upgradepb.InfoResponse{
		Pid: uint32(os.Getpid()), Version: version, Binary: s.binary,
		Namespace: s.opts.namespace, Containers: s.containers.IDs(), Sandbox: s.pod.HeldID(),
	}, nil
}

// Upgrade re-executes the shim from a new binary in place (the admin
// service). It answers only when it failed and the shim carries on where it
// was; on success the process that carries on answers, on this same stream.
func (s *server) Upgrade(ctx context.Context, r *upgradepb.UpgradeRequest) (*upgradepb.UpgradeResponse, error) {
	if resp := s.takeCompleted(r.GetToken()); resp != nil {
		return resp, nil
	}
	if r.GetToken() == "" {
		return nil, status.Error(codes.InvalidArgument, "an upgrade needs a token")
	}
	if !s.upgrading.TryLock() {
		return nil, status.Error(codes.FailedPrecondition, "an upgrade of this shim is in progress")
	}
	defer s.upgrading.Unlock()
	resp := &upgradepb.UpgradeResponse{Pid: uint32(os.Getpid()), OldVersion: version, NewVersion: version, Binary: s.binary}
	binary := r.GetBinary()
	if binary == "" {
		binary = s.binary
	}
	binary, err := filepath.Abs(binary)
	if err == nil && s.containers.Closing() {
		err = fmt.Errorf("the shim is shutting down: %w", errdefs.ErrFailedPrecondition)
	}
	// The state's version: a binary that cannot read a pod's is refused
	// for a shim that has one.
	stateVersion := upgrade.VersionFor(s.pod.Outline())
	if err == nil {
		// Before anything is frozen: a binary that cannot take over is
		// refused while the shim serves on.
		_, err = upgrade.Probe(binary, stateVersion, s.reaper)
	}
	if err == nil {
		err = s.handOver(binary, r.GetToken(), stateVersion) // returns only if it failed
	}
	resp.Error = err.Error()
	s.log.Warn("upgrade failed, carrying on", "binary", binary, "error", err)
	return resp, nil
}

// takeCompleted returns, once, the answer owed to the upgrade this process
// carries on from (the request came along with the connection).
func (s *server) takeCompleted(token string) *upgradepb.UpgradeResponse {
	s.completedMu.Lock()
	defer s.completedMu.Unlock()
	if s.completed == nil || token != s.completedFor {
		return nil
	}
	resp := s.completed
	s.completed = nil
	return resp
}

// handOver freezes the shim, writes it down and re-executes binary, which
// takes it back (probed: it reads states up to version probed). It returns
// only if that failed, having undone the freeze.
func (s *server) handOver(binary, token string, probed uint32) (err error) {
	frozenAt := upgrade.Monotonic()
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

	s.set.Gate(s.listener)
	undo = append(undo, func() { s.set.Ungate(s.listener) })
	if err := s.set.Settle(ctx); err != nil {
		return err
	}
	s.reaper.Freeze()
	undo = append(undo, s.reaper.Thaw)
	// Before any descriptor is duplicated for the next process: a publish
	// binary started after that would inherit the duplicates (a pod's
	// lifeline among them). Events published meanwhile are queued. Resume
	// is undone whatever Pause did: it may have paused and then failed.
	undo = append(undo, s.publisher.Resume)
	if err := s.publisher.Pause(ctx); err != nil {
		return err
	}
	containers, err := s.containers.Handover(ctx)
	if err != nil {
		return err
	}
	undo = append(undo, func() {
		for _, c := range containers {
			fdpass.Close(shim.StateFds(c)...)
		}
		s.containers.TakeBack()
	})
	pod, err := s.pod.Handover(ctx)
	if err != nil {
		return err
	}
	undo = append(undo, func() { s.pod.TakeBack(pod) })
	// A sandbox created since the probe needs a version the binary may not read.
	if v := upgrade.VersionFor(pod); v > probed {
		return fmt.Errorf("a pod sandbox was created after the new binary was probed for state version %d: %w", probed, errdefs.ErrFailedPrecondition)
	}
	// Exits handled meanwhile may have answered Waits: settle again.
	if err := s.set.Settle(ctx); err != nil {
		return err
	}
	// A Shutdown served before the gate closed has stopped the listener the
	// next process would take over: the shim is going, not upgrading.
	if s.containers.Closing() {
		return fmt.Errorf("the shim is shutting down: %w", errdefs.ErrFailedPrecondition)
	}
	queued, err := s.publisher.Queued()
	if err != nil {
		return err
	}
	st := &upgradepb.ShimState{
		Version:    upgrade.VersionFor(pod),
		Containers: containers,
		Sandbox:    pod,
		Events:     queued,
		Shim: &upgradepb.Shim{
			Namespace: s.opts.namespace, Id: s.opts.id, Address: s.opts.address,
			PublishBinary: s.opts.publishBinary, Debug: s.opts.debug, TtrpcAddress: os.Getenv("TTRPC_ADDRESS"),
			Binary: binary, Version: version, Closing: s.containers.Closing(),
			SocketPath: s.socket.path, SocketDev: s.socket.dev, SocketIno: s.socket.ino,
		},
		Handover: &upgradepb.Handover{Token: token, OldVersion: version, FrozenAtNs: frozenAt, OldBinary: s.binary, NewBinary: binary},
	}
	conns, err := s.set.States()
	if err != nil {
		return err
	}
	for _, c := range conns {
		st.Conns = append(st.Conns, &upgradepb.Conn{Fd: int32(c.FD), Carried: c.Carried, Pending: c.Pending})
		undo = append(undo, func() { fdpass.Close(c.FD) })
	}
	lfd, err := s.listener.FD()
	if err != nil {
		return err
	}
	undo = append(undo, func() { fdpass.Close(lfd) })
	st.Shim.ListenerFd = int32(lfd)
	oldBinary, err := upgrade.OpenOldBinary()
	if err != nil {
		return err
	}
	undo = append(undo, func() { fdpass.Close(oldBinary) })
	st.Handover.OldBinaryFd = int32(oldBinary)
	// From here on nothing is reaped: what exits now stays a zombie for
	// the process that carries on, so no exit can fall between the exits
	// written down and the exec. (Thaw, on the way back, reaps again.)
	for _, e := range s.reaper.Seal() {
		st.Exits = append(st.Exits, &upgradepb.Exit{Pid: int32(e.Pid), Status: int32(e.Status), TimeNs: e.Time.UnixNano()})
	}
	stateFD, err := upgrade.WriteState(st)
	if err != nil {
		return err
	}
	undo = append(undo, func() { fdpass.Close(stateFD) })
	s.log.Info("re-executing for a live upgrade", "binary", binary, "containers", len(containers), "sandbox", pod != nil, "connections", len(conns),
		"frozen_for", time.Duration(upgrade.Monotonic()-frozenAt))
	s.opts.oldBinaryFD = oldBinary
	return upgrade.Exec(binary, s.restoreArgs(stateFD, ""))
}

// restoreArgs is the command line of the process that carries on: the
// shim's own flags, the state to take back and the old binary to roll back
// to.
func (s *server) restoreArgs(stateFD int, rollback string) []string {
	args := []string{"-namespace", s.opts.namespace, "-id", s.opts.id, "-address", s.opts.address,
		"-publish-binary", s.opts.publishBinary, "-restore-fd", upgrade.FdArg(stateFD),
		"-old-binary-fd", upgrade.FdArg(s.opts.oldBinaryFD)}
	if s.opts.debug {
		args = append(args, "-debug")
	}
	if rollback != "" {
		args = append(args, "-rollback", rollback)
	}
	return args
}
