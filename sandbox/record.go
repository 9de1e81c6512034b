package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/internal/atomicfile"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox/internal/podfiles"
	"github.com/tether-shim/tether/sandbox/internal/podns"
)

// RecordFile is the sandbox's record in its bundle: what the delete action
// needs after a lost shim (the holder to end, the pod files to remove) and
// the holder's exit.
const RecordFile = "tether-sandbox.json"

type record struct {
	HolderPid int `json:"holder_pid,omitempty"`
	// HolderStart is the holder's start time (/proc/PID/stat), so that a
	// pid reused by another process is never signalled.
	HolderStart uint64 `json:"holder_start,omitempty"`
	// HolderCgroups are the cgroup directories made for the holder (a
	// cgroupfs cgroup parent: placeHolder), removed once it has exited.
	HolderCgroups []string        `json:"holder_cgroups,omitempty"`
	Files         *podfiles.Files `json:"files,omitempty"`
	Exit          *reaper.Exit    `json:"exit,omitempty"`
}

// recorder keeps a sandbox's record up to date; a failed write is logged
// (the record only helps a delete after a lost shim).
type recorder struct {
	path string
	log  *slog.Logger

	mu  sync.Mutex
	rec record // guarded by mu
}

func newRecorder(bundle string, log *slog.Logger) *recorder {
	return &recorder{path: filepath.Join(bundle, RecordFile), log: log}
}

func (r *recorder) update(change func(*record)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(&r.rec)
	data, err := json.Marshal(r.rec)
	if err == nil {
		err = atomicfile.Write(r.path, data)
	}
	if err != nil {
		r.log.Warn("sandbox record not written", "path", r.path, "error", err)
	}
}

// holderCgroups are the cgroup directories made for the holder.
func (r *recorder) holderCgroups() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rec.HolderCgroups
}

// snapshot is the record as it is now, as JSON (the next process of the
// shim takes it back after a live upgrade).
func (r *recorder) snapshot() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	data, err := json.Marshal(r.rec)
	if err != nil {
		return nil, fmt.Errorf("sandbox record: %w", err)
	}
	return data, nil
}

// startTime is a process's start time in clock ticks since boot (field 22
// of /proc/PID/stat); 0 if it cannot be read.
func startTime(pid int) uint64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// comm, in parentheses, may hold anything: count from its end.
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 20 {
		return 0
	}
	t, _ := strconv.ParseUint(fields[19], 10, 64)
	return t
}

// Cleanup removes what the sandbox of a lost shim left, for the delete
// action: it kills the holder if it still runs (and waits for it to be
// gone), removes its cgroup, unbinds the pod's namespaces, removes the
// pod's files and the record. It returns the holder's
// exit when the shim recorded one; ok is false for a bundle with no record.
func Cleanup(ctx context.Context, bundle string) (exit *reaper.Exit, ok bool, err error) {
	path := filepath.Join(bundle, RecordFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read sandbox record: %w", err)
	}
	var rec record
	if err := json.Unmarshal(data, &rec); err != nil {
		return nil, true, fmt.Errorf("sandbox record %s: %w", path, err)
	}
	if rec.Exit == nil && rec.HolderPid > 0 {
		if err := killHolder(ctx, rec.HolderPid, rec.HolderStart); err != nil {
			return nil, true, err
		}
	}
	if err := cgroup.RemoveDirs(rec.HolderCgroups); err != nil {
		return nil, true, err
	}
	// Where a pod without a holder binds them, in the bundle: whatever
	// the shim got to before it was lost.
	if err := podns.For(bundle, true, true).Unmount(); err != nil {
		return nil, true, err
	}
	if err := rec.Files.Remove(); err != nil {
		return nil, true, err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, true, fmt.Errorf("remove sandbox record: %w", err)
	}
	return rec.Exit, true, nil
}

// killHolder kills the process pid if it is still the holder that started
// at start, through a pidfd, and waits until it has exited.
func killHolder(ctx context.Context, pid int, start uint64) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil // gone
	}
	if err != nil {
		return fmt.Errorf("open holder %d: %w", pid, err)
	}
	defer unix.Close(fd)
	// Checked after the pidfd is open: the pidfd cannot come to name another
	// process, the pid could.
	if start == 0 || startTime(pid) != start {
		return nil
	}
	if err := unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill holder %d: %w", pid, err)
	}
	// A pidfd polls readable once the process has exited.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(10 * time.Second)
	}
	for {
		timeout := int(time.Until(deadline).Milliseconds())
		if timeout <= 0 {
			return fmt.Errorf("holder %d did not exit", pid)
		}
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for holder %d: %w", pid, err)
		}
		if n > 0 {
			return nil
		}
	}
}
