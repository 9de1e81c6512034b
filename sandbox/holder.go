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

	"github.com/tether-shim/tether/reaper"
)

// HolderName is a holder process's argv[0]; main runs HolderMain when it
// is started under that name.
const HolderName = "tether-holder"

// holderReadyTimeout bounds how long a holder may take to set itself up.
const holderReadyTimeout = 10 * time.Second

// holder is the running holder process of a pod, seen from the shim.
type holder struct {
	cmd     *exec.Cmd
	holdPid int
	// lifeline is the write end of the pipe the holder reads until EOF:
	// closing it (or the shim dying) ends the holder.
	lifeline  *os.File
	closeLife sync.Once

	mu sync.Mutex
	// reaped is set once the exit is in and cmd.Process released: no signal
	// may go through it any more. Guarded by mu.
	reaped bool
}

// startHolder starts the pod's holder and returns once it has set the pod's
// namespaces up; onExit receives its exit from the reaper (and must not
// block), after what the shim held of the holder is freed. The holder is forked from a thread that has joined the pod's
// network namespace, into new UTS, IPC and pid namespaces as the pod asks:
// every thread of it is in the pod's namespaces from its first instruction.
// That thread is not used again (its goroutine ends locked to it, so the
// runtime ends the thread).
func startHolder(r *reaper.Reaper, p Pod, onExit func(reaper.Exit)) (*holder, error) {
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
	h := &holder{
		cmd: &exec.Cmd{
			// The running binary, whatever has replaced it on disk since.
			Path:        "/proc/self/exe",
			Args:        p.holderArgs(),
			Env:         []string{"GOMAXPROCS=1"},
			Dir:         "/",
			ExtraFiles:  []*os.File{lifeR, readyW}, // fds 3 and 4
			SysProcAttr: &syscall.SysProcAttr{Cloneflags: flags},
		},
		lifeline: lifeW,
	}
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
		started <- r.StartFunc(h.cmd, func(e reaper.Exit) {
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
	h.notePid()
	if err := awaitReady(readyR); err != nil {
		h.kill()
		h.release()
		return nil, err
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

// notePid records the holder's pid. The exit may be in (and Release has
// set cmd.Process.Pid to -1) before the starter gets here: whichever of the
// two runs first records it, under mu.
func (h *holder) notePid() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notePidLocked()
}

func (h *holder) notePidLocked() {
	if h.holdPid == 0 {
		h.holdPid = h.cmd.Process.Pid
	}
}

// pid is the holder's pid (set before startHolder returns, never after).
func (h *holder) pid() int { return h.holdPid }

// release closes the lifeline: the holder exits.
func (h *holder) release() {
	h.closeLife.Do(func() { h.lifeline.Close() })
}

// kill sends SIGKILL through the process's pidfd: never to another process
// that has reused the pid.
func (h *holder) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.reaped {
		h.cmd.Process.Signal(unix.SIGKILL)
	}
}

// exited frees what the shim holds of the holder once the reaper has its
// exit (in the reaper's goroutine: nothing here waits).
func (h *holder) exited() {
	h.release()
	h.mu.Lock()
	h.notePidLocked()
	h.reaped = true
	h.cmd.Process.Release()
	h.mu.Unlock()
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
