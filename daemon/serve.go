package daemon

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path"
	"time"

	"github.com/containerd/fifo"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/handover"
	"github.com/tether-shim/tether/internal/carry"
	"github.com/tether-shim/tether/manager"
	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	"github.com/tether-shim/tether/proto/task"
	taskv3 "github.com/tether-shim/tether/proto/task/v3"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/upgrade"
)

// listen sets up the ttrpc server on raw, with the connections restored
// from a previous process first. A connection that could not be restored
// is named in the error; the server is set up all the same.
func (d *daemon) listen(raw *net.UnixListener, restored []handover.State) error {
	d.set = handover.NewSet(upgrade.Carried)
	var lerr error
	d.listener, lerr = d.set.Listen(raw, restored)
	var quiet func()
	if d.startOver = startOverWatch(); d.startOver != nil {
		quiet = d.quiet
	}
	d.idle = newIdleMemory(idleDelay, os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "", quiet, d.log)
	d.conns = &openConns{}
	server, err := ttrpc.NewServer(
		ttrpc.WithServerHandshaker(d.conns.handshaker(d.set.Handshaker())),
		ttrpc.WithUnaryServerInterceptor(requestInterceptor(d.set, d.idle, d.fail, d.log)),
	)
	if err != nil {
		return err
	}
	// containerd 1.x speaks task v2; 2.x task v3, the same API renamed.
	task.RegisterTaskService(server, d.svc)
	taskv3.RegisterTaskService(server, d.svc)
	// containerd 2.x's sandbox API, for handlers with sandboxer = "shim".
	sandboxapi.RegisterSandboxService(server, d.pod)
	d.ttrpc = server
	return lerr
}

// serveAdmin registers the admin service (upgrade, info), once the shim
// knows what it is and what answer it owes.
func (d *daemon) serveAdmin() {
	d.admin = upgrade.NewAdmin(d.parts(), d.identity(), d.log, d.completed, d.completedFor)
	upgradepb.RegisterAdminService(d.ttrpc, d.admin)
}

// requestInterceptor gives a request the point where a live upgrade may
// carry it over while it waits (carry.Wait), wakes the collector for it
// (before its work; the quiet period starts once no request runs) and logs
// it. A passive request does not wake it.
func requestInterceptor(set *handover.Set, idle *idleMemory, fail failpoints, log *slog.Logger) ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
		if err := fail.evaluate(path.Base(info.FullMethod)); err != nil {
			return nil, err
		}
		ctx = carry.With(ctx, set.Point(ctx))
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
func (d *daemon) stop() {
	d.stopOnce.Do(func() {
		// The answer to the request that asked the shim to exit is
		// owed now: it is kept until its client hangs up (conns.go).
		if d.conns != nil {
			d.conns.windDown()
		}
		// shutdown first: the server's end that closing the listener
		// brings is then never taken for a failure.
		close(d.shutdown)
		d.listener.Close()
		d.socket.remove()
	})
}

// run serves until the shim is asked to exit, then winds down.
func (d *daemon) run() error {
	served := make(chan error, 1)
	go func() { served <- d.ttrpc.Serve(context.Background(), d.listener) }()
	d.reaper.Reap() // what exited before the loop listens for SIGCHLD
	d.log.Info("serving", "socket", d.socket.path, "binary", d.binary, "version", d.opts.Version)

	reason := signalLoop{sigs: d.sigs, reaper: d.reaper, containers: d.held, log: d.log}.run(d.shutdown, served)
	d.log.Info("winding down", "reason", reason)
	d.stop()
	// Children may still come and go while the shim winds down (a publish
	// binary delivering the last events): keep reaping them.
	go func() {
		for sig := range d.sigs {
			if sig == unix.SIGCHLD {
				d.reaper.Reap()
			}
		}
	}()
	// Let every request read have its answer written (the Shutdown itself
	// among them) and picked up by its client, then close what is left,
	// idle connections too.
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	if err := d.conns.wait(sctx); err != nil {
		d.log.Warn("closing connections with answers still owed or not yet picked up", "error", err)
	}
	d.ttrpc.Close()
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	if err := d.publisher.Flush(fctx); err != nil {
		d.log.Warn("exiting with undelivered events", "error", err)
	}
	d.log.Info("shim exited")
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
	alias    string // its link at containerd's path (manager.SocketAliasOf), if known
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
		if sf.alias != "" {
			manager.UnlinkSocketAlias(sf.alias, sf.path)
		}
	}
}
