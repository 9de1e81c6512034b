package nsinit

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// A Daemon is a daemon that a suite expects running (containerd with its
// CRI): the namespace's init starts it, waits until its socket answers, and
// starts it again whenever it exits, as containerd's CI keeps its test daemon
// alive (script/test/utils.sh's keepalive) for the tests that kill it.
type Daemon struct {
	Argv   []string
	Socket string // it answers here when ready
	Log    string // its output, appended
}

// restartDelay is how long a dead daemon stays dead: containerd's
// keepalive waits RESTART_WAIT_PERIOD (10 s) before it starts it again,
// and the tests that kill containerd first wait, polling each second, until
// no process has its name.
const restartDelay = 10 * time.Second

// readyTimeout bounds the wait for the daemon's first answer.
const readyTimeout = 3 * time.Minute

// keptDaemon is the running daemon, restarted by the init after each exit.
type keptDaemon struct {
	spec Daemon
	mu   sync.Mutex
	pid  int
}

// startDaemon starts the daemon spec (JSON daemonSpec; "" for none) and
// waits until its socket answers.
func startDaemon(spec string) (*keptDaemon, error) {
	d := &keptDaemon{}
	if spec == "" {
		return d, nil
	}
	if err := json.Unmarshal([]byte(spec), &d.spec); err != nil {
		return nil, fmt.Errorf("%s: %w", envDaemon, err)
	}
	if err := d.start(); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(readyTimeout)
	for {
		c, err := net.Dial("unix", d.spec.Socket)
		if err == nil {
			c.Close()
			return d, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s did not answer on %s within %s (log: %s): %w", d.spec.Argv[0], d.spec.Socket, readyTimeout, d.spec.Log, err)
		}
		time.Sleep(100 * time.Millisecond) // polling a socket that has no other readiness signal
	}
}

func (d *keptDaemon) start() error {
	log, err := os.OpenFile(d.spec.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	pid, err := syscall.ForkExec(d.spec.Argv[0], d.spec.Argv, &syscall.ProcAttr{
		Env: os.Environ(), Files: []uintptr{0, log.Fd(), log.Fd()},
		Sys: &syscall.SysProcAttr{Setpgid: true},
	})
	if err != nil {
		return fmt.Errorf("start %s: %w", d.spec.Argv[0], err)
	}
	d.mu.Lock()
	d.pid = pid
	d.mu.Unlock()
	return nil
}

// exited is told of every reaped pid: the daemon's is started again after
// restartDelay.
func (d *keptDaemon) exited(pid int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.pid == 0 || pid != d.pid {
		return
	}
	d.pid = -1
	time.AfterFunc(restartDelay, func() {
		if err := d.start(); err != nil {
			slog.Error("restart the daemon", "err", err)
		}
	})
}
