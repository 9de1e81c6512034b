package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/events"
	"github.com/tether-shim/tether/handover"
	"github.com/tether-shim/tether/internal/startover"
	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	"github.com/tether-shim/tether/proto/task"
	taskv3 "github.com/tether-shim/tether/proto/task/v3"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox"
	"github.com/tether-shim/tether/shim"
	"github.com/tether-shim/tether/taskapi"
)

// server is a serving shim: its parts, wired once, and the loop that runs
// them. It starts fresh (serve) or takes back what the process it carries
// on from wrote down (restore, after a live upgrade).
type server struct {
	opts      options
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
	// startOver decides when the quiet shim starts over (startover.go).
	startOver *startover.Watch
	socket    socketFile
	// binary is the path the shim runs from, recorded when it started:
	// once the file is replaced, /proc/self/exe names the old inode.
	binary string

	shutdown     chan struct{}
	stopOnce     sync.Once
	upgrading    sync.Mutex // one upgrade at a time
	completedMu  sync.Mutex
	completed    *upgradepb.UpgradeResponse // the answer owed to the upgrade this process carries on from
	completedFor string                     // that upgrade's token
}

// carried are the requests whose answers may come from the next process
// after a live upgrade: the long-lived ones.
func carried(service, method string) bool {
	switch service + "/" + method {
	case "containerd.task.v2.Task/Wait", "containerd.task.v3.Task/Wait", "tether.upgrade.v1.Admin/Upgrade",
		"containerd.runtime.sandbox.v1.Sandbox/WaitSandbox":
		return true
	}
	return false
}

// notifySignals starts catching the signals the shim handles. SIGPIPE must
// be caught before anything writes to the log fifo: a write to fd 2
// without a reader would otherwise kill the shim.
func notifySignals() chan os.Signal {
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPIPE, unix.SIGUSR1, unix.SIGCHLD)
	return sigs
}

func newLogger(o options, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).
		With("runtime", runtimeName, "namespace", o.namespace, "pid", os.Getpid())
}

// serve is the long-lived shim: it reaps, serves the task API on fd 3 and
// exits when containerd shuts it down with no container left, or on SIGTERM
// or SIGINT while it holds no container. Its signal loop (signals.go) is
// also the reaper's.
func serve(o options, level slog.Level) error {
	sigs := notifySignals()
	openLogFifo(context.Background())
	s := &server{opts: o, log: newLogger(o, level), sigs: sigs, shutdown: make(chan struct{})}
	if err := reaper.SetSubreaper(); err != nil {
		return err
	}
	s.startReaper()
	var err error
	if s.binary, err = os.Executable(); err != nil {
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
	s.socket = statSocket(raw.Addr().String())
	s.publisher = events.New(s.eventsConfig(os.Getenv("TTRPC_ADDRESS")))
	s.pod = s.podService(nil)
	s.containers = shim.NewTable(s.taskEnv())
	s.svc = taskapi.New(s.taskAPIConfig())
	if err := s.listen(raw, nil); err != nil {
		return err
	}
	return s.run()
}

// startReaper makes this process's reaper the one go-runc starts every
// runtime command through (its package-level monitor: this is the one
// place that sets it) and reaps what already exited. SIGCHLD is handled by
// the signal loop: one goroutine less per shim than a loop of its own.
func (s *server) startReaper() {
	s.reaper = reaper.New()
	runc.Monitor = s.reaper
}

func (s *server) eventsConfig(ttrpcAddress string) events.Config {
	return events.Config{
		Namespace:     s.opts.namespace,
		TTRPCAddress:  ttrpcAddress,
		PublishBinary: s.opts.publishBinary,
		Address:       s.opts.address,
		Monitor:       s.reaper,
		Log:           s.log,
	}
}

// taskEnv is what the task core's containers share.
func (s *server) taskEnv() shim.Env {
	return shim.Env{
		Namespace: s.opts.namespace,
		Reaper:    s.reaper,
		Events:    s.publisher,
		Cgroups:   s.cgroupHost(),
		OOM:       cgroup.NewOOMWatcher(s.log),
		Log:       s.log,
	}
}

// The task service and the sandbox service each keep the shim up while
// they hold something: containers, a pod. Each asks the other only through
// Keep and Released.
func (s *server) taskAPIConfig() taskapi.Config {
	return taskapi.Config{
		Containers: s.containers,
		Version:    version,
		Shutdown:   s.stop,
		Keep:       s.pod.Holds,
	}
}

// podService is the sandbox API of the shim (containerd 2.x, a handler
// with sandboxer = "shim"): it holds no pod until CreateSandbox, or the pod
// a previous process wrote down (st, after a live upgrade).
func (s *server) podService(st *upgradepb.Sandbox) *sandbox.Service {
	return sandbox.RestoreService(sandbox.Config{
		Namespace: s.opts.namespace,
		Env:       sandbox.Env{Reaper: s.reaper, Cgroups: s.cgroupHost(), Log: s.log},
		Released:  func() { s.svc.Shutdown(context.Background(), &task.ShutdownRequest{}) },
	}, st)
}

func (s *server) cgroupHost() *cgroup.Host {
	if s.cgroups == nil {
		s.cgroups = cgroup.NewHost()
	}
	return s.cgroups
}

// held counts what keeps the shim from exiting on SIGTERM or SIGINT: its
// containers and the pod it holds.
func (s *server) held() int {
	n := s.containers.Len()
	if s.pod.Holds() {
		n++
	}
	return n
}

// listen sets up the ttrpc server on raw, with the connections restored
// from a previous process first.
func (s *server) listen(raw *net.UnixListener, restored []handover.State) error {
	s.set = handover.NewSet(carried)
	var err error
	if s.listener, err = s.set.Listen(raw, restored); err != nil {
		return err
	}
	s.startOver = startover.New(startOverLimits())
	s.idle = newIdleMemory(idleDelay, os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "", s.quiet)
	s.conns = &openConns{}
	s.ttrpc, err = ttrpc.NewServer(
		ttrpc.WithServerHandshaker(s.conns.handshaker(s.set.Handshaker())),
		ttrpc.WithUnaryServerInterceptor(requestInterceptor(s.idle, s.log)),
	)
	if err != nil {
		return err
	}
	// containerd 1.x speaks task v2; 2.x task v3, the same API renamed.
	task.RegisterTaskService(s.ttrpc, s.svc)
	taskv3.RegisterTaskService(s.ttrpc, s.svc)
	// containerd 2.x's sandbox API, for handlers with sandboxer = "shim".
	sandboxapi.RegisterSandboxService(s.ttrpc, s.pod)
	upgradepb.RegisterAdminService(s.ttrpc, s)
	return nil
}

// requestInterceptor wakes the collector for a request (before its work;
// the quiet period starts once no request runs) and logs it. A passive
// request does not wake it.
func requestInterceptor(idle *idleMemory, log *slog.Logger) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
		if !passive(info.FullMethod) {
			idle.begin()
			defer idle.end()
		}
		start := time.Now()
		var req any
		resp, err := m(ctx, func(v any) error { req = v; return u(v) })
		log.Debug("request", append(requestIDs(req), "method", info.FullMethod, "took", time.Since(start), "error", err)...)
		return resp, err
	}
}

// requestIDs names the container and exec a request is about, for the log.
func requestIDs(req any) []any {
	var ids []any
	if r, ok := req.(interface{ GetId() string }); ok && r.GetId() != "" {
		ids = append(ids, "id", r.GetId())
	}
	if r, ok := req.(interface{ GetExecId() string }); ok && r.GetExecId() != "" {
		ids = append(ids, "exec", r.GetExecId())
	}
	return ids
}

// passive says whether a ttrpc method does no work the shim must be awake
// for: waiting for an exit (containerd keeps one in flight per task and per
// pod for as long as they live), and reading state and statistics, which
// containerd 2's CRI asks of every pod and container each second or two.
// Counted as work, either would keep such a shim from ever getting quiet:
// its collector never idle, and the shim never starting over.
func passive(method string) bool {
	switch method {
	case "/containerd.task.v2.Task/Wait", "/containerd.task.v3.Task/Wait", "/containerd.runtime.sandbox.v1.Sandbox/WaitSandbox",
		"/containerd.task.v2.Task/Stats", "/containerd.task.v3.Task/Stats", "/containerd.task.v2.Task/State", "/containerd.task.v3.Task/State",
		"/containerd.runtime.sandbox.v1.Sandbox/SandboxMetrics", "/containerd.runtime.sandbox.v1.Sandbox/SandboxStatus",
		"/containerd.runtime.sandbox.v1.Sandbox/PingSandbox", "/containerd.runtime.sandbox.v1.Sandbox/Platform":
		return true
	}
	return false
}

// stop stops listening, once: containerd asked the shim to exit.
func (s *server) stop() {
	s.stopOnce.Do(func() {
		// shutdown first: the server's end that closing the listener
		// brings is then never taken for a failure.
		close(s.shutdown)
		s.listener.Close()
		s.socket.remove()
	})
}

// run serves until the shim is asked to exit, then winds down.
func (s *server) run() error {
	served := make(chan error, 1)
	go func() { served <- s.ttrpc.Serve(context.Background(), s.listener) }()
	s.reaper.Reap() // what exited before the loop listens for SIGCHLD
	s.log.Info("serving", "socket", s.socket.path, "binary", s.binary, "version", version)

	reason := signalLoop{sigs: s.sigs, reaper: s.reaper, containers: s.held, log: s.log}.run(s.shutdown, served)
	s.log.Info("winding down", "reason", reason)
	s.stop()
	// Children may still come and go while the shim winds down (a publish
	// binary delivering the last events): keep reaping them.
	go func() {
		for sig := range s.sigs {
			if sig == unix.SIGCHLD {
				s.reaper.Reap()
			}
		}
	}()
	// Let requests in flight (the Shutdown itself among them) answer:
	// containerd hangs up once it has its answers.
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	if err := s.conns.wait(sctx); err != nil {
		s.log.Warn("closing connections containerd left open", "error", err)
	}
	s.ttrpc.Close()
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	if err := s.publisher.Flush(fctx); err != nil {
		s.log.Warn("exiting with undelivered events", "error", err)
	}
	s.log.Info("shim exited")
	return nil
}

// openLogFifo points fd 2 at the bundle's log fifo, which containerd copies
// into its own log. Without one (a shim started by hand) logs stay on stderr.
func openLogFifo(ctx context.Context) {
	if _, err := os.Stat("log"); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	// The returned fifo is not needed: fd 2 holds its own reference.
	if f, err := fifo.OpenFifoDup2(ctx, "log", unix.O_WRONLY, 0o700, int(os.Stderr.Fd())); err == nil {
		f.Close()
	}
}

// socketFile identifies the socket file as it was when the shim started.
type socketFile struct {
	path     string
	dev, ino uint64
}

func statSocket(path string) socketFile {
	sf := socketFile{path: path}
	var st unix.Stat_t
	if unix.Stat(path, &st) == nil {
		sf.dev, sf.ino = st.Dev, st.Ino
	}
	return sf
}

// remove unlinks the socket file unless it is no longer the one the shim
// started with: a new shim for the same group may have bound that path.
func (sf socketFile) remove() {
	var st unix.Stat_t
	if unix.Stat(sf.path, &st) == nil && st.Dev == sf.dev && st.Ino == sf.ino {
		os.Remove(sf.path)
	}
}
