package upgrade

import (
	"fmt"
	"log/slog"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/sandbox"
	"github.com/tether-shim/tether/shim"
)

// Test knobs, set at link time (-X) by the upgrade tests to build binaries
// that fail in chosen ways; empty in every real build.
var (
	// testCrashOnRestore makes the binary crash after reading the state.
	testCrashOnRestore string
	// testRefuseState makes the binary refuse every state version.
	testRefuseState string
)

// LoadState reads and checks the state a previous process left in fd: its
// version, what the containers' state says, and that every descriptor it
// names survived the exec. A crash here (a new binary's bug) is turned into
// an error, for a rollback.
func LoadState(fd int) (st *upgradepb.ShimState, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("crashed reading the state: %v", r)
		}
	}()
	st, err = ReadState(fd)
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
	return st, CheckFds(fds)
}

// RollBack re-executes the old binary (kept open as oldBinaryFD) with the
// same state, after this one could not take it back (unless this already
// is the rollback: rollback says why it ran). It returns only if no binary
// could be run.
func RollBack(id Identity, oldBinaryFD, stateFD int, rollback string, cause error, log *slog.Logger) {
	if rollback != "" || oldBinaryFD < 0 {
		log.Error("no binary can take the shim back", "rollback", rollback)
		return
	}
	reason := "the new binary could not take over: " + cause.Error()
	err := Rollback(oldBinaryFD, restoreArgs(id, stateFD, oldBinaryFD, reason))
	log.Error("rollback failed", "error", err)
}

// answerProbeRefused is AnswerProbe's test knob: a binary built to refuse
// every state version says so.
func answerProbeRefused(v string) error {
	if testRefuseState != "" {
		return fmt.Errorf("state version %s refused (test build)", v)
	}
	return nil
}
