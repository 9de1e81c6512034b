package sandbox

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox/internal/holder"
	"github.com/tether-shim/tether/sandbox/internal/podns"
)

// A ready pod's namespaces are kept alive by one of two keepers. A pod
// whose containers share a pid namespace has a holder process, that
// namespace's init (package holder), which holds the pod's other
// namespaces as well; the containers join the holder's /proc/PID/ns, the
// paths containerd's CRI writes for them. Any other pod has no process at
// all: its UTS and IPC namespaces are bound to files in its bundle
// (podns.Mounts), its network namespace is the one containerd bound for
// it, and StartSandbox answers pid 0: the CRI then names /proc/0/ns/* in
// the containers' specs, which the shim points at the pod's namespaces
// before it creates them (PrepareContainer).

// keeper keeps a ready pod's namespaces alive: a *holder.Holder, started
// or taken back; a *boundNamespaces; a test's fake.
type keeper interface {
	// Pid is the holder's pid; 0 for a pod without one.
	Pid() int
	// Stop lets the namespaces go (a holder gently, then SIGKILL after
	// grace) and returns once exited is closed or ctx is done.
	Stop(ctx context.Context, grace time.Duration, exited <-chan struct{}) error
	// Handover writes the holder down for the next process of the shim,
	// with duplicates of its descriptors that survive execve; nil for a
	// pod without one.
	Handover() (*upgradepb.Holder, error)
}

// start makes p's namespaces and starts what keeps them, whose end goes
// to onExit (through the reaper, for a holder); place (if not nil) puts a
// holder in its cgroup before the start returns, and fails it if it cannot.
func (e *Env) start(p Pod, onExit func(reaper.Exit), place func(pid int) error) (keeper, error) {
	if e.launch != nil {
		return e.launch(p, onExit)
	}
	setup := podns.Setup{NetNS: p.NetNS, UTS: p.OwnUTS, IPC: p.OwnIPC, Hostname: p.Hostname, Sysctls: p.Sysctls}
	if p.PID == pidShared {
		var h *holder.Holder
		err := podns.Enter(setup, func() (err error) {
			h, err = holder.Start(e.Reaper, p.ID, p.Bundle, onExit)
			return err
		})
		if err != nil {
			return nil, err
		}
		if place != nil {
			if err := place(h.Pid()); err != nil {
				h.Kill()
				return nil, fmt.Errorf("place the holder in the pod's cgroup: %w", err)
			}
		}
		return h, nil
	}
	b := &boundNamespaces{mounts: p.mounts(), onExit: onExit}
	if err := podns.Enter(setup, b.mounts.Bind); err != nil {
		return nil, err
	}
	return b, nil
}

// mounts are where a pod without a holder has its namespaces bound.
func (p Pod) mounts() podns.Mounts { return podns.For(p.Bundle, p.OwnUTS, p.OwnIPC) }

// boundNamespaces keep a pod's namespaces without any process: its UTS
// and IPC namespaces bound to files, until it stops. They go across a live
// upgrade as they are (mounts outlive the exec).
type boundNamespaces struct {
	mounts podns.Mounts
	// onExit is told once the mounts are gone: the sandbox's "exit".
	onExit func(reaper.Exit)
	once   sync.Once
}

func (b *boundNamespaces) Pid() int { return 0 }

func (b *boundNamespaces) Stop(ctx context.Context, _ time.Duration, exited <-chan struct{}) error {
	if err := b.mounts.Unmount(); err != nil {
		return err
	}
	b.once.Do(func() { b.onExit(reaper.Exit{Time: time.Now()}) })
	select {
	case <-exited:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *boundNamespaces) Handover() (*upgradepb.Holder, error) { return nil, nil }

// namespaces are the pod's namespaces by OCI type, as its containers join
// them, while pid (0: none) keeps them: a path, or "" for one the pod
// shares with the node. A type it has none of (pid, for a pod whose
// containers have one each) is missing.
func (p Pod) namespaces(pid int) map[specs.LinuxNamespaceType]string {
	ns := map[specs.LinuxNamespaceType]string{specs.NetworkNamespace: p.NetNS, specs.UTSNamespace: "", specs.IPCNamespace: ""}
	if pid > 0 {
		proc := func(name string) string { return filepath.Join("/proc", strconv.Itoa(pid), "ns", name) }
		if p.NetNS != "" {
			ns[specs.NetworkNamespace] = proc("net")
		}
		if p.OwnUTS {
			ns[specs.UTSNamespace] = proc("uts")
		}
		if p.OwnIPC {
			ns[specs.IPCNamespace] = proc("ipc")
		}
		ns[specs.PIDNamespace] = proc("pid")
		return ns
	}
	m := p.mounts()
	ns[specs.UTSNamespace], ns[specs.IPCNamespace] = m.UTS, m.IPC
	if p.PID == pidNode {
		ns[specs.PIDNamespace] = ""
	}
	return ns
}
