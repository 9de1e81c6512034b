package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/tether-shim/tether/events"
	"github.com/tether-shim/tether/handover"
	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox"
	"github.com/tether-shim/tether/shim"
	"github.com/tether-shim/tether/taskapi"
	"github.com/tether-shim/tether/upgrade"
)

// Test knobs, set at link time (-X) by the upgrade tests to build binaries
// that fail in chosen ways; empty in every real build.
var (
	// testCrashOnRestore makes the binary crash after reading the state.
	testCrashOnRestore string
	// testRefuseState makes the binary refuse every state version.
	testRefuseState string
)

// restore carries on from the process that wrote its state into stateFD
// and re-executed this binary (a live upgrade), or that rolled back to it
// (rollback says why). Until the state is read and checked, a failure rolls
// back to the old binary; from then on the shim takes back what it can and
// serves.
func restore(o options, level slog.Level) error {
	sigs := notifySignals()       // fd 2 is the log fifo already: it survived the exec
	baseline := carriedBaseline() // before anything is started that would inherit it
	s := &server{opts: o, log: newLogger(o, level), sigs: sigs, shutdown: make(chan struct{})}
	stateFD, rollback := o.restoreFD, o.rollback
	st, err := s.readState(stateFD)
	if err != nil {
		s.rollBack(stateFD, err)
		return err // only if the rollback could not run
	}
	s.startReaper()
	sh, ho := st.GetShim(), st.GetHandover()
	s.binary = sh.GetBinary()
	s.socket = socketFile{path: sh.GetSocketPath(), dev: sh.GetSocketDev(), ino: sh.GetSocketIno()}
	s.publisher = events.New(s.eventsConfig(sh.GetTtrpcAddress()))
	// The undelivered events go first, in order; the sender (which may
	// start a publish binary) waits until the descriptors taken back below
	// are close-on-exec again.
	s.publisher.Pause(context.Background()) // no sender yet: returns at once
	if err := s.publisher.Requeue(st.GetEvents()); err != nil {
		s.log.Error("take back undelivered events", "error", err)
	}
	// The pod's holder and the containers' processes are owned again
	// before the kept exits are delivered and before anything is reaped.
	s.pod = s.podService(st.GetSandbox())
	s.containers = shim.RestoreTable(s.taskEnv(), st.GetContainers(), sh.GetClosing())
	s.publisher.Resume()
	s.svc = taskapi.New(s.taskAPIConfig())
	var held []reaper.Exit
	for _, e := range st.GetExits() {
		held = append(held, reaper.Exit{Pid: int(e.GetPid()), Status: int(e.GetStatus()), Time: time.Unix(0, e.GetTimeNs())})
	}
	s.reaper.Deliver(held) // after every process has its owner again
	var conns []handover.State
	for _, c := range st.GetConns() {
		conns = append(conns, handover.State{FD: int(c.GetFd()), Carried: c.GetCarried(), Pending: c.GetPending()})
	}
	lf := os.NewFile(uintptr(sh.GetListenerFd()), "socket")
	l, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return fmt.Errorf("take back the listening socket: %w", err)
	}
	if err := s.listen(l.(*net.UnixListener), conns); err != nil {
		return err
	}
	s.startOver.Carried(time.Now(), baseline)
	s.idle.quietSoon()
	resp := &upgradepb.UpgradeResponse{
		Pid: uint32(os.Getpid()), OldVersion: ho.GetOldVersion(), NewVersion: version, Binary: s.binary,
		PauseNs: upgrade.Monotonic() - ho.GetFrozenAtNs(), Error: rollback,
	}
	if rollback != "" {
		resp.NewVersion, resp.Binary, s.binary = ho.GetOldVersion(), ho.GetOldBinary(), ho.GetOldBinary()
	}
	if ho.GetToken() != "" { // a start over (startover.go) has no request to answer
		s.completed, s.completedFor = resp, ho.GetToken()
	}
	fdpass.Close(stateFD, s.opts.oldBinaryFD)
	s.log.Info("carrying on after a live upgrade", "from", ho.GetOldVersion(), "pause", time.Duration(resp.PauseNs), "rolled_back", rollback != "")
	return s.run()
}

// readState reads and checks the state: its version, what the containers'
// state says, and that every descriptor it names survived the exec. A
// crash here (a new binary's bug) is turned into an error, for a rollback.
func (s *server) readState(fd int) (st *upgradepb.ShimState, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("crashed reading the state: %v", r)
		}
	}()
	st, err = upgrade.ReadState(fd)
	if err == nil && testRefuseState != "" {
		err = fmt.Errorf("state version %d refused (test build)", st.GetVersion())
	}
	if err != nil {
		return st, err
	}
	if testCrashOnRestore != "" {
		panic("crash while restoring (test build)")
	}
	fds := []int{int(st.GetShim().GetListenerFd())}
	for _, c := range st.GetConns() {
		fds = append(fds, int(c.GetFd()))
	}
	for _, c := range st.GetContainers() {
		fds = append(fds, shim.StateFds(c)...)
	}
	fds = append(fds, sandbox.StateFds(st.GetSandbox())...)
	if err := shim.CheckState(st.GetContainers()); err != nil {
		return st, err
	}
	if err := sandbox.CheckState(st.GetSandbox()); err != nil {
		return st, err
	}
	return st, upgrade.CheckFds(fds)
}

// rollBack re-executes the old binary with the same state, after this one
// could not take it back (unless this already is the rollback).
func (s *server) rollBack(stateFD int, cause error) {
	s.log.Error("cannot take the shim over", "error", cause)
	if s.opts.rollback != "" || s.opts.oldBinaryFD < 0 {
		s.log.Error("no binary can take the shim back", "rollback", s.opts.rollback)
		return
	}
	reason := "the new binary could not take over: " + cause.Error()
	args := s.restoreArgs(stateFD, reason)
	err := upgrade.Rollback(s.opts.oldBinaryFD, args)
	s.log.Error("rollback failed", "error", err)
}
