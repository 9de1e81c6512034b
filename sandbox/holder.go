package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/internal/fdpass"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
)

// HolderName is a holder process's argv[0]; main runs HolderMain when it
// is started under that name.
const HolderName = "tether-holder"

// holderReadyTimeout bounds how long a holder may take to set itself up.
const holderReadyTimeout = 10 * time.Second

// holder is a pod's running holder process as the shim holds it: its pid,
// a pidfd (a signal through it never reaches a process that reused the
// pid) and the write end of its lifeline. A holder this process started
// (startHolder) and one it took back after a live upgrade (adoptHolder)
// are held the same way: nothing of os/exec is kept.
type holder struct {
	holdPid int

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

// startHolder starts the pod's holder and returns once it has set the pod's
// namespaces up; onExit receives its exit from the reaper (and must not
// block), after what the shim held of the holder is freed. The holder is
// forked from a thread that has joined the pod's network namespace, into
// new UTS, IPC and pid namespaces as the pod asks: every thread of it is in
// the pod's namespaces from its first instruction. That thread is not used
// again (its goroutine ends locked to it, so the runtime ends the thread).
//
// place, if not nil, puts the holder in its cgroup before it reports ready
// (before any container of the pod exists); if it fails, so does the start.
func startHolder(r *reaper.Reaper, p Pod, onExit func(reaper.Exit), place func(pid int) error) (*holder, error) {
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
	var flags uintptr
	if p.OwnUTS {
		flags |= unix.CLONE_NEWUTS
	}
	if p.OwnIPC {
		flags |= unix.CLONE_NEWIPC
	}
	if p.OwnPID {
		flags |= unix.CLONE_NEWPID
	}
	// The pidfd comes from the clone itself (CLONE_PIDFD, close-on-exec):
	// it names this holder even if it is gone and its pid reused before
	// the start returns.
	pidfd := -1
	cmd := &exec.Cmd{
		// The running binary, whatever has replaced it on disk since.
		Path:        "/proc/self/exe",
		Args:        p.holderArgs(),
		Env:         []string{"GOMAXPROCS=1"},
		Dir:         "/",
		ExtraFiles:  []*os.File{lifeR, readyW}, // fds 3 and 4
		SysProcAttr: &syscall.SysProcAttr{Cloneflags: flags, PidFD: &pidfd},
	}
	h := &holder{pidfd: -1, lifeline: lifeW}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately never unlocked: a thread moved into the pod's network
		// namespace must not run anything else.
		if p.NetNS != "" {
			if err := joinNetNS(p.NetNS); err != nil {
				started <- err
				return
			}
		}
		started <- r.StartFunc(cmd, func(e reaper.Exit) {
			h.exited()
			onExit(e)
		})
	}()
	err = <-started
	readyW.Close()
	if err != nil {
		lifeW.Close()
		return nil, fmt.Errorf("start holder: %w", err)
	}
	h.started(cmd.Process.Pid, pidfd)
	// Known by its own pidfd from here on; the reaper owns its exit.
	cmd.Process.Release()
	if place != nil {
		if err := place(h.holdPid); err != nil {
			h.kill()
			h.release()
			return nil, fmt.Errorf("place holder in the pod's cgroup: %w", err)
		}
	}
	if err := awaitReady(readyR); err != nil {
		h.kill()
		h.release()
		return nil, err
	}
	return h, nil
}

// adoptHolder takes back a holder that a previous process of this shim
// started and wrote down (handover) before re-executing itself: its pidfd
// and lifeline are the descriptors st names, which survived the exec; its
// exit, from now on, goes to onExit through r (which must not have reaped
// since the exec: Own before the first Reap or Deliver). An error says the
// exit cannot be owned; the holder is still returned, to be ended.
func adoptHolder(r *reaper.Reaper, st *upgradepb.Holder, onExit func(reaper.Exit)) (*holder, error) {
	h := &holder{holdPid: int(st.GetPid()), pidfd: int(st.GetPidfd())}
	fdpass.Take(h.pidfd)
	if fd := int(st.GetLifelineFd()); fd >= 0 {
		fdpass.Take(fd)
		h.lifeline = os.NewFile(uintptr(fd), "lifeline")
	}
	err := r.Own(h.holdPid, func(e reaper.Exit) {
		h.exited()
		onExit(e)
	})
	if err != nil {
		return h, fmt.Errorf("take back holder %d: %w", h.holdPid, err)
	}
	return h, nil
}

// joinNetNS moves the calling thread into the network namespace at path.
func joinNetNS(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open pod network namespace: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("join pod network namespace %s: %w", path, err)
	}
	return nil
}

// awaitReady reads the holder's report: "ok", or why it failed.
func awaitReady(r *os.File) error {
	r.SetReadDeadline(time.Now().Add(holderReadyTimeout))
	msg, err := io.ReadAll(io.LimitReader(r, 4096))
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("holder did not set up the pod within %v", holderReadyTimeout)
	case err != nil:
		return fmt.Errorf("read holder report: %w", err)
	case string(msg) == readyMessage:
		return nil
	case len(msg) == 0:
		return errors.New("holder exited before setting up the pod")
	}
	return fmt.Errorf("holder: %s", strings.TrimSpace(string(msg)))
}

// started records the holder's pid and pidfd. Its exit may be in before
// the starter gets here: a pidfd that came after it is closed at once.
func (h *holder) started(pid, pidfd int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.holdPid = pid
	switch {
	case pidfd < 0:
	case h.gone:
		unix.Close(pidfd)
	default:
		h.pidfd = pidfd
	}
}

// pid is the holder's pid (set before startHolder or adoptHolder returns,
// never after).
func (h *holder) pid() int { return h.holdPid }

// release closes the lifeline: the holder exits.
func (h *holder) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.releaseLocked()
}

func (h *holder) releaseLocked() {
	if h.lifeline != nil {
		h.lifeline.Close()
		h.lifeline = nil
	}
}

// kill sends SIGKILL through the holder's pidfd: never to another process
// that has reused the pid.
func (h *holder) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pidfd >= 0 {
		// ESRCH: it has exited, its exit not in yet.
		_ = unix.PidfdSendSignal(h.pidfd, unix.SIGKILL, nil, 0)
	}
}

// exited frees what the shim holds of the holder once the reaper has its
// exit (in the reaper's goroutine: nothing here waits).
func (h *holder) exited() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.gone = true
	h.releaseLocked()
	if h.pidfd >= 0 {
		unix.Close(h.pidfd)
		h.pidfd = -1
	}
}

// handover writes the holder down for the next process of the shim (a
// live upgrade): duplicates of its pidfd and lifeline that survive execve.
// The originals are close-on-exec and go with the exec; the duplicate of
// the lifeline is what keeps the holder, and the pod, alive across it. An
// abandoned handover closes the duplicates (fdpass.Close).
func (h *holder) handover() (*upgradepb.Holder, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := &upgradepb.Holder{Pid: int32(h.holdPid), Pidfd: -1, LifelineFd: -1}
	if h.pidfd >= 0 {
		fd, err := fdpass.Dup(h.pidfd)
		if err != nil {
			return nil, fmt.Errorf("holder %d pidfd: %w", h.holdPid, err)
		}
		st.Pidfd = int32(fd)
	}
	if h.lifeline != nil {
		fd, err := dupFile(h.lifeline)
		if err != nil {
			fdpass.Close(int(st.Pidfd))
			return nil, fmt.Errorf("holder %d lifeline: %w", h.holdPid, err)
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

// stop ends the holder: the lifeline first, SIGKILL after grace; it returns
// once exited (closed when the reaper delivered the exit) is closed, or ctx
// is done.
func (h *holder) stop(ctx context.Context, grace time.Duration, exited <-chan struct{}) error {
	h.release()
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exited:
		return nil
	case <-t.C:
	case <-ctx.Done():
	}
	h.kill()
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("holder %d did not exit: %w", h.pid(), ctx.Err())
	}
}
