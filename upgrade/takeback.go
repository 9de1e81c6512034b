package upgrade

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tether-shim/tether/internal/failpoint"
	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox"
	"github.com/tether-shim/tether/shim"
)

// TakeBack is a live upgrade's other end: the process that carries on
// takes the shim back, step by step, from the state the previous one wrote
// down, until Commit. Until then nothing it does shows outside the
// process: each step works on close-on-exec duplicates of the descriptors
// the state names (fdpass.Take), which stay as they were; nothing is
// reaped, no event sent, no byte of output moved, no request served, no
// child started. So a step that fails, with an error or a panic, rolls the
// upgrade back: the old binary is executed again with the same state and
// takes everything back as it was, the same containers and connections.
// Commit closes the descriptors received: from then on this process is the
// shim, and may start children (a publish binary, a runtime call) that
// inherit none of them. Where no rollback is possible (this is the
// rollback, or the old binary cannot be run), a step that fails is logged
// and the shim goes on with what the others took back, and says so in the
// upgrade's answer.
type TakeBack struct {
	// State is what the previous process wrote down.
	State *upgradepb.ShimState

	id                   Identity
	log                  *slog.Logger
	stateFD, oldBinaryFD int
	// rollback says why this process runs again after a failed upgrade;
	// empty for an upgrade.
	rollback string
	// received are the descriptors the state names, as received.
	received []int
	// cannotRollBack says why a failed step cannot roll back; lost are
	// the steps that failed then.
	cannotRollBack string
	lost           []string
}

// BeginTakeBack reads and checks the state the previous process left in
// stateFD. If it cannot be taken back, it rolls back at once (and returns
// an error only if that could not run either: then nothing was taken).
// id is the shim's command line, for a rollback.
func BeginTakeBack(id Identity, stateFD, oldBinaryFD int, rollback string, log *slog.Logger) (*TakeBack, error) {
	nameAfterExec()
	t := &TakeBack{id: id, log: log, stateFD: stateFD, oldBinaryFD: oldBinaryFD, rollback: rollback}
	if rollback != "" {
		t.cannotRollBack = "this is the rollback"
	} else if oldBinaryFD < 0 {
		t.cannotRollBack = "no old binary was passed on"
	}
	st, fds, err := loadState(stateFD)
	if err != nil {
		t.fail("state", err)
		return nil, fmt.Errorf("no binary can take the shim back: %w", err)
	}
	t.State, t.received = st, fds
	return t, nil
}

// Step runs one step of the take-back. If it fails (an error, a panic, or
// the test build's failpoint "takeback.<name>"), the upgrade rolls back;
// Step returns false only where that is not possible, and the caller goes
// on without what the step would have taken back.
func (t *TakeBack) Step(name string, fn func() error) (ok bool) {
	err := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("crashed: %v", r)
			}
		}()
		if err := failpoint.Hit("takeback." + name); err != nil {
			return err
		}
		return fn()
	}()
	if err == nil {
		return true
	}
	t.fail(name, err)
	return false
}

// fail rolls back after a failed step, or notes what is lost where that is
// not possible.
func (t *TakeBack) fail(step string, cause error) {
	t.log.Error("cannot take the shim over", "step", step, "error", cause)
	if t.cannotRollBack == "" {
		reason := fmt.Sprintf("the new binary could not take over (%s): %v", step, cause)
		err := Rollback(t.oldBinaryFD, restoreArgs(t.id, t.stateFD, t.oldBinaryFD, reason))
		t.cannotRollBack = err.Error()
	}
	t.log.Error("no binary can take this part of the shim back: going on without it", "step", step,
		"why_no_rollback", t.cannotRollBack)
	t.lost = append(t.lost, fmt.Sprintf("%s: %v", step, cause))
}

// Commit ends the take-back: the descriptors received are closed (the
// steps' own duplicates stay), so no child started from now on inherits
// any of them, and no rollback is possible any more.
func (t *TakeBack) Commit() {
	fdpass.Close(t.received...)
	fdpass.Close(t.stateFD, t.oldBinaryFD)
	testAfterTakeBack()
}

// Exits are the exits the previous process kept, for reaper.Deliver once
// every process has its owner again.
func (t *TakeBack) Exits() []reaper.Exit {
	var held []reaper.Exit
	for _, e := range t.State.GetExits() {
		held = append(held, reaper.Exit{Pid: int(e.GetPid()), Status: int(e.GetStatus()), Time: time.Unix(0, e.GetTimeNs())})
	}
	return held
}

// Lost says what the shim goes on without (nil: nothing).
func (t *TakeBack) Lost() error {
	if len(t.lost) == 0 {
		return nil
	}
	return fmt.Errorf("taken back without %s (%s)", strings.Join(t.lost, "; "), t.cannotRollBack)
}

// Answer is the answer owed to the upgrade this process carries on from,
// and that upgrade's token: the version and binary that run now, the
// pause (the longest requests were held: by this try, from the gate until
// now, or by one given up before), and what failed, if anything.
func (t *TakeBack) Answer(version string) (*upgradepb.UpgradeResponse, string) {
	ho := t.State.GetHandover()
	resp := &upgradepb.UpgradeResponse{
		Pid: uint32(os.Getpid()), OldVersion: ho.GetOldVersion(), NewVersion: version,
		Binary: t.State.GetShim().GetBinary(), PauseNs: max(Monotonic()-ho.GetFrozenAtNs(), ho.GetEarlierPauseNs()),
	}
	var errs []string
	if t.rollback != "" {
		resp.NewVersion, resp.Binary = ho.GetOldVersion(), ho.GetOldBinary()
		errs = append(errs, t.rollback)
	}
	if err := t.Lost(); err != nil {
		errs = append(errs, err.Error())
	}
	resp.Error = strings.Join(errs, "; then ")
	return resp, ho.GetToken()
}

// loadState reads and checks the state a previous process left in fd: its
// version, what the containers' state says, and that every descriptor it
// names survived the exec; fds are those descriptors. A crash here (a new
// binary's bug) is turned into an error, for a rollback.
func loadState(fd int) (st *upgradepb.ShimState, fds []int, err error) {
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
		return nil, nil, err
	}
	if testCrashOnRestore != "" {
		panic("crash while restoring (test build)")
	}
	fds = []int{int(st.GetShim().GetListenerFd())}
	for _, c := range st.GetConns() {
		fds = append(fds, int(c.GetFd()))
	}
	for _, c := range st.GetContainers() {
		fds = append(fds, shim.StateFds(c)...)
	}
	fds = append(fds, sandbox.StateFds(st.GetSandbox())...)
	err = errors.Join(shim.CheckState(st.GetContainers()), sandbox.CheckState(st.GetSandbox()), CheckFds(fds))
	if err != nil {
		return nil, nil, err
	}
	return st, fds, nil
}

// nameAfterExec gives the process its name back: executed through
// /proc/self/fd/N (the new binary opened once, or the old one for a
// rollback), it is named "N" (/proc/PID/comm, what ps and top show, what
// tools that look for shims by name see). Its name is its argv[0]'s, as
// when containerd started it.
func nameAfterExec() {
	name := filepath.Base(os.Args[0])
	if len(name) > 15 { // TASK_COMM_LEN less its NUL
		name = name[:15]
	}
	os.WriteFile("/proc/self/comm", []byte(name), 0)
}
