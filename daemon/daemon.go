// Package daemon is the serving shim: the long-lived process containerd
// talks to. It wires the shim's parts once (reaper, event publisher, task
// core, task and sandbox APIs, the ttrpc server on the inherited socket),
// runs the loop that reaps and answers signals, keeps an idle shim small,
// and winds down when containerd shuts it down. It starts fresh (Serve) or
// from what the process it carries on from wrote down in a live upgrade
// (Restore); the upgrade itself is package upgrade's. It never decides
// anything about a container: that is the task core's.
package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"

	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/events"
	"github.com/tether-shim/tether/handover"
	"github.com/tether-shim/tether/internal/startover"
	"github.com/tether-shim/tether/kmsg"
	"github.com/tether-shim/tether/manager"
	"github.com/tether-shim/tether/proto/task"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox"
	"github.com/tether-shim/tether/shim"
	"github.com/tether-shim/tether/taskapi"
	"github.com/tether-shim/tether/upgrade"
)

// Options are how the shim was started: containerd's command line, and
// what a live upgrade passes to the process that carries on.
type Options struct {
	Namespace     string
	ID            string
	Address       string // containerd's GRPC address
	PublishBinary string // containerd binary, to publish events without ttrpc
	Debug         bool
	Version       string // this binary's version
	// Log is the logger to derive the shim's from.
	Log *slog.Logger
	// RestoreFD is the state a live upgrade left (-1: none). OldBinaryFD
	// is the binary to roll back to, Rollback why this binary carries on
	// again after a failed one.
	RestoreFD, OldBinaryFD int
	Rollback               string
}

// daemon is a serving shim: its parts, wired once, and the loop that runs
// them.
type daemon struct {
	opts      Options
	log       *slog.Logger
	sigs      chan os.Signal
	reaper    *reaper.Reaper
	publisher *events.Publisher
	// containers is the task core's table: what a live upgrade writes down.
	containers *shim.Table
	// svc is the task API, the ttrpc edge in front of containers.
	svc *taskapi.Service
	// pod is the sandbox API: the pod a shim sandboxer's shim holds.
	pod      *sandbox.Service
	cgroups  *cgroup.Host
	set      *handover.Set
	conns    *openConns
	listener *handover.Listener
	ttrpc    *ttrpc.Server
	idle     *idleMemory
	// startOver decides when the quiet shim starts over (startover.go);
	// nil when starting over is off.
	startOver *startover.Watch
	admin     *upgrade.Admin
	// fail injects failures into requests: only in a build for
	// containerd's failpoint tests (tag failpoint).
	fail   failpoints
	socket socketFile
	// binary is the path the shim runs from, recorded when it started:
	// once the file is replaced, /proc/self/exe names the old inode.
	binary string
	// ttrpcAddress is containerd's ttrpc address, for events.
	ttrpcAddress string
	// completed is the answer owed to the upgrade this process carries on
	// from, and that upgrade's token.
	completed    *upgradepb.UpgradeResponse
	completedFor string

	shutdown chan struct{}
	stopOnce sync.Once
}

func newDaemon(o Options) *daemon {
	return &daemon{
		opts:     o,
		log:      o.Log.With("namespace", o.Namespace, "pid", os.Getpid()),
		sigs:     notifySignals(),
		shutdown: make(chan struct{}),
	}
}

// notifySignals starts catching the signals the shim handles. SIGPIPE must
// be caught before anything writes to the log fifo: a write to fd 2
// without a reader would otherwise kill the shim.
func notifySignals() chan os.Signal {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPIPE, unix.SIGUSR1, unix.SIGCHLD)
	return sigs
}

// Serve is the long-lived shim: it reaps, serves the task API on fd 3 and
// exits when containerd shuts it down with no container left, or on SIGTERM
// or SIGINT while it holds no container. Its signal loop (signals.go) is
// also the reaper's.
func Serve(o Options) error {
	d := newDaemon(o)
	openLogFifo(context.Background())
	if err := reaper.SetSubreaper(); err != nil {
		return err
	}
	d.startReaper()
	var err error
	if d.binary, err = os.Executable(); err != nil {
		return err
	}
	// FileListener dups the socket close-on-exec; fd 3 itself would be
	// inherited by every runtime call and hook, keeping a dead shim's
	// socket answering.
	inherited := os.NewFile(3, "socket")
	l, err := net.FileListener(inherited)
	inherited.Close()
	if err != nil {
		return fmt.Errorf("socket from fd 3: %w", err)
	}
	raw := l.(*net.UnixListener)
	d.socket = statSocket(raw.Addr().String())
	// The link start made at containerd's path for this socket goes with it.
	d.socket.alias = manager.SocketAliasOf(o.Address, o.Namespace, o.ID)
	if d.fail, err = loadFailpoints(); err != nil {
		return err
	}
	d.ttrpcAddress = os.Getenv("TTRPC_ADDRESS")
	d.publisher = events.New(d.eventsConfig())
	d.pod, _ = d.podService(nil) // nothing to take back: no error
	d.containers = shim.NewTable(d.taskEnv())
	d.svc = taskapi.New(d.taskAPIConfig())
	if err := d.listen(raw, nil); err != nil {
		return err
	}
	d.serveAdmin()
	return d.run()
}

// startReaper makes this process's reaper the one go-runc starts every
// runtime command through (its package-level monitor: this is the one
// place that sets it). SIGCHLD is handled by the signal loop: one
// goroutine less per shim than a loop of its own.
func (d *daemon) startReaper() {
	d.reaper = reaper.New()
	runc.Monitor = d.reaper
}

func (d *daemon) eventsConfig() events.Config {
	return events.Config{
		Namespace:     d.opts.Namespace,
		TTRPCAddress:  d.ttrpcAddress,
		PublishBinary: d.opts.PublishBinary,
		Address:       d.opts.Address,
		Monitor:       d.reaper,
		Log:           d.log,
	}
}

// taskEnv is what the task core's containers share.
func (d *daemon) taskEnv() shim.Env {
	return shim.Env{
		Namespace: d.opts.Namespace,
		Reaper:    d.reaper,
		Events:    d.publisher,
		Cgroups:   d.cgroupHost(),
		OOM:       cgroup.NewOOMWatcher(d.log, kmsg.New()),
		Log:       d.log,
	}
}

// The task service and the sandbox service each keep the shim up while
// they hold something: containers, a pod. Each asks the other only through
// Keep and Released.
func (d *daemon) taskAPIConfig() taskapi.Config {
	return taskapi.Config{
		Containers: d.containers,
		Version:    d.opts.Version,
		Shutdown:   d.stop,
		Keep:       d.pod.Holds,
		Prepare:    d.pod.PrepareContainer,
	}
}

// podService is the sandbox API of the shim (containerd 2.x, a handler
// with sandboxer = "shim"): it holds no pod until CreateSandbox, or the pod
// a previous process wrote down (st, after a live upgrade).
func (d *daemon) podService(st *upgradepb.Sandbox) (*sandbox.Service, error) {
	return sandbox.RestoreService(sandbox.Config{
		Namespace: d.opts.Namespace,
		Env:       sandbox.Env{Reaper: d.reaper, Cgroups: d.cgroupHost(), Log: d.log},
		Released:  func() { d.svc.Shutdown(context.Background(), &task.ShutdownRequest{}) },
	}, st)
}

func (d *daemon) cgroupHost() *cgroup.Host {
	if d.cgroups == nil {
		d.cgroups = cgroup.NewHost()
	}
	return d.cgroups
}

// held counts what keeps the shim from exiting on SIGTERM or SIGINT: its
// containers and the pod it holds.
func (d *daemon) held() int {
	n := d.containers.Len()
	if d.pod.Holds() {
		n++
	}
	return n
}

// parts are what a live upgrade writes down and takes back.
func (d *daemon) parts() upgrade.Parts {
	return upgrade.Parts{
		Reaper: d.reaper, Events: d.publisher, Containers: d.containers, Pod: d.pod,
		Conns: d.set, Listener: d.listener,
	}
}

// identity is what the shim is, for a live upgrade.
func (d *daemon) identity() upgrade.Identity {
	return upgrade.Identity{
		Namespace: d.opts.Namespace, ID: d.opts.ID, Address: d.opts.Address, PublishBinary: d.opts.PublishBinary,
		Debug: d.opts.Debug, TTRPCAddress: d.ttrpcAddress, Binary: d.binary, Version: d.opts.Version,
		SocketPath: d.socket.path, SocketDev: d.socket.dev, SocketIno: d.socket.ino,
	}
}
