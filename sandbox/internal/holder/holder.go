// Package holder runs a pod's holder: the process that is init of a pod's
// pid namespace, for a pod whose containers share one (a pod without a
// pause container, held by the shim through containerd's sandbox API).
// The holder is a tiny program of its own (program.go), forked from a
// thread of the shim that is in the pod's other namespaces already; it
// holds them as well, reaps the pod's orphans, ignores signals from the
// pod, and lives until its lifeline (a pipe whose write end only the shim
// holds) closes, or until the shim kills it. A Holder is the shim's handle
// on one: its pid, a pidfd and its lifeline, the same whether this
// process started it or took it back after a live upgrade. Its exit is
// the reaper's, handed to a function that must not block.
package holder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
)

// Name is a holder process's argv[0] and comm.
const Name = "tether-holder"

// readyTimeout bounds how long a holder may take to set itself up.
const readyTimeout = 10 * time.Second

// oomScoreAdj is the pause container's score (containerd's CRI gives
// sandboxes -998): the OOM killer should take a pod's workload first.
const oomScoreAdj = "-998"

// Holder is a pod's running holder process as the shim holds it: its pid,
// a pidfd (a signal through it never reaches a process that reused the
// pid) and the write end of its lifeline. Nothing of os/exec is kept.
type Holder struct {
	pid int

	mu sync.Mutex
	// pidfd names the holder until its exit is in; -1 after that (or when
	// the kernel gave none: then only the lifeline ends it). Guarded by mu.
	pidfd int
	// lifeline is the write end of the pipe the holder reads until EOF:
	// closing it (or the shim dying) ends the holder. nil once closed.
	// Guarded by mu.
	lifeline *os.File
	// gone is set once the exit is in. Guarded by mu.
	gone bool
}

// Start starts a holder for pod id and returns once it has set itself up;
// onExit receives its exit from the reaper (and must not block), after
// what the shim held of the holder is freed. The caller's goroutine must
// be locked to a thread that is in the pod's network, IPC and UTS
// namespaces: the holder is forked from it, into a new pid namespace
// whose init it is. dir is a directory of the pod's (its bundle), where
// the holder's root is made and removed again.
func Start(r *reaper.Reaper, id, dir string, onExit func(reaper.Exit)) (*Holder, error) {
	prog, err := programFile()
	if err != nil {
		return nil, err
	}
	defer prog.Close()
	// The holder's root and working directory: an empty directory, which
	// it makes its root before it drops its capabilities, removed once it
	// is set up (nothing can be made in a removed directory). The pod's
	// processes see the holder as their pid 1: with CAP_SYS_PTRACE they
	// reach its root through /proc/1/root, which must not be the node's.
	root, err := os.MkdirTemp(dir, ".holder-root-")
	if err != nil {
		return nil, fmt.Errorf("holder root: %w", err)
	}
	defer os.Remove(root)
	lifeR, lifeW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("holder lifeline: %w", err)
	}
	defer lifeR.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		lifeW.Close()
		return nil, fmt.Errorf("holder ready pipe: %w", err)
	}
	defer readyR.Close()
	// The pidfd comes from the clone itself (CLONE_PIDFD, close-on-exec):
	// it names this holder even if it is gone and its pid reused before
	// the start returns.
	pidfd := -1
	cmd := &exec.Cmd{
		// Through this process's descriptor table: the child's fds 3 and 4
		// are set up before its exec, whatever number prog has here.
		Path:        "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(prog.Fd())),
		Args:        []string{Name, "-id", id},
		Env:         []string{},
		Dir:         root,
		ExtraFiles:  []*os.File{lifeR, readyW}, // fds 3 and 4
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWPID, PidFD: &pidfd},
	}
	h := &Holder{pidfd: -1, lifeline: lifeW}
	err = r.StartFunc(cmd, func(e reaper.Exit) {
		h.exited()
		onExit(e)
	})
	readyW.Close()
	if err != nil {
		lifeW.Close()
		return nil, fmt.Errorf("start holder: %w", err)
	}
	h.started(cmd.Process.Pid, pidfd)
	// Known by its own pidfd from here on; the reaper owns its exit.
	cmd.Process.Release()
	if err := awaitReady(readyR); err != nil {
		h.Kill()
		h.release()
		return nil, err
	}
	// Lowering it needs a privilege some hosts withhold: best effort.
	_ = os.WriteFile("/proc/"+strconv.Itoa(h.pid)+"/oom_score_adj", []byte(oomScoreAdj), 0)
	return h, nil
}

// Adopt takes back a holder that a previous process of this shim started
// and wrote down (Handover) before re-executing itself: its pidfd and
// lifeline are close-on-exec duplicates of the descriptors st names, which
// survived the exec (and stay as they were, for a rollback, until the
// take-back closes them); its exit, from now on, goes to onExit through r
// (which must not have reaped since the exec: Own before the first Reap or
// Deliver). An error says the holder cannot be taken back whole; it is
// still returned, to be ended. A holder of an older binary (the shim's own
// binary re-executed) is taken back the same way: it keeps the same
// contract.
func Adopt(r *reaper.Reaper, st *upgradepb.Holder, onExit func(reaper.Exit)) (*Holder, error) {
	h := &Holder{pid: int(st.GetPid()), pidfd: -1}
	var errs []error
	if fd := int(st.GetPidfd()); fd >= 0 {
		pidfd, err := fdpass.Take(fd)
		errs = append(errs, err)
		h.pidfd = pidfd
	}
	if fd := int(st.GetLifelineFd()); fd >= 0 {
		lifeline, err := fdpass.Take(fd)
		errs = append(errs, err)
		if err == nil {
			h.lifeline = os.NewFile(uintptr(lifeline), "lifeline")
		}
	}
	if err := errors.Join(errs...); err != nil {
		return h, fmt.Errorf("take back holder %d: %w", h.pid, err)
	}
	err := r.Own(h.pid, func(e reaper.Exit) {
		h.exited()
		onExit(e)
	})
	if err != nil {
		return h, fmt.Errorf("take back holder %d: %w", h.pid, err)
	}
	return h, nil
}

// awaitReady reads the holder's report: "ok", or the step that failed.
func awaitReady(r *os.File) error {
	r.SetReadDeadline(time.Now().Add(readyTimeout))
	msg, err := io.ReadAll(io.LimitReader(r, 64))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("holder did not set itself up within %v", readyTimeout)
	case err != nil:
		return fmt.Errorf("read holder report: %w", err)
	case string(msg) == "ok":
		return nil
	case len(msg) == 0:
		return errors.New("holder exited before setting itself up")
	case len(msg) == 3 && msg[0] == 'E' && int(msg[1]) < len(programSteps) && programSteps[msg[1]] != "":
		return fmt.Errorf("holder could not %s: %w", programSteps[msg[1]], syscall.Errno(msg[2]))
	}
	// A holder of an older binary reports its error in words.
	return fmt.Errorf("holder: %s", strings.TrimSpace(string(msg)))
}

// started records the holder's pid and pidfd. Its exit may be in before
// the starter gets here: a pidfd that came after it is closed at once.
func (h *Holder) started(pid, pidfd int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pid = pid
	switch {
	case pidfd < 0:
	case h.gone:
		unix.Close(pidfd)
	default:
		h.pidfd = pidfd
	}
}

// Pid is the holder's pid (set before Start or Adopt returns, never after).
func (h *Holder) Pid() int { return h.pid }

// release closes the lifeline: the holder exits.
func (h *Holder) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releaseLocked()
}

func (h *Holder) releaseLocked() {
	if h.lifeline != nil {
		h.lifeline.Close()
		h.lifeline = nil
	}
}

// Kill sends SIGKILL through the holder's pidfd: never to another process
// that has reused the pid.
func (h *Holder) Kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pidfd >= 0 {
		// ESRCH: it has exited, its exit not in yet.
		_ = unix.PidfdSendSignal(h.pidfd, unix.SIGKILL, nil, 0)
	}
}

// Forget closes this process's own descriptors of the holder, as its
// execve does in a live upgrade: the duplicates Handover made keep the
// holder alive. The Holder is not used again (tests of a handover call it
// in place of the exec).
func (h *Holder) Forget() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releaseLocked()
	if h.pidfd >= 0 {
		unix.Close(h.pidfd)
		h.pidfd = -1
	}
}

// exited frees what the shim holds of the holder once the reaper has its
// exit (in the reaper's goroutine: nothing here waits).
func (h *Holder) exited() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = true
	h.releaseLocked()
	if h.pidfd >= 0 {
		unix.Close(h.pidfd)
		h.pidfd = -1
	}
}

// Handover writes the holder down for the next process of the shim (a
// live upgrade): duplicates of its pidfd and lifeline that survive execve.
// The originals are close-on-exec and go with the exec; the duplicate of
// the lifeline is what keeps the holder, and the pod, alive across it. An
// abandoned handover closes the duplicates (fdpass.Close).
func (h *Holder) Handover() (*upgradepb.Holder, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := &upgradepb.Holder{Pid: int32(h.pid), Pidfd: -1, LifelineFd: -1}
	if h.pidfd >= 0 {
		fd, err := fdpass.Dup(h.pidfd)
		if err != nil {
			return nil, fmt.Errorf("holder %d pidfd: %w", h.pid, err)
		}
		st.Pidfd = int32(fd)
	}
	if h.lifeline != nil {
		fd, err := dupFile(h.lifeline)
		if err != nil {
			fdpass.Close(int(st.Pidfd))
			return nil, fmt.Errorf("holder %d lifeline: %w", h.pid, err)
		}
		st.LifelineFd = int32(fd)
	}
	return st, nil
}

// dupFile duplicates f's descriptor with fdpass.Dup, leaving f as it is
// (File.Fd would make it blocking).
func dupFile(f *os.File) (int, error) {
	raw, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	var fd int
	var dupErr error
	if err := raw.Control(func(orig uintptr) { fd, dupErr = fdpass.Dup(int(orig)) }); err != nil {
		return -1, err
	}
	return fd, dupErr
}

// Stop ends the holder: the lifeline first, SIGKILL after grace; it returns
// once exited (closed when the reaper delivered the exit) is closed, or ctx
// is done.
func (h *Holder) Stop(ctx context.Context, grace time.Duration, exited <-chan struct{}) error {
	h.release()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exited:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	h.Kill()
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("holder %d did not exit: %w", h.Pid(), ctx.Err())
	}
}
