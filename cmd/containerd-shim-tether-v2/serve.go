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
	"github.com/tether-shim/tether/proto/task"
	taskv3 "github.com/tether-shim/tether/proto/task/v3"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/shim"
)

// serve is the long-lived shim: it reaps, serves the task API on fd 3 and
// exits when containerd shuts it down with no container left, or on SIGTERM
// or SIGINT while it holds no container.
// Its signal loop (signals.go) is also the reaper's.
func serve(o options, level slog.Level) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// SIGPIPE must be caught before anything writes to the log fifo: a write
	// to fd 2 without a reader would otherwise kill the shim.
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGPIPE, unix.SIGUSR1, unix.SIGCHLD)

	openLogFifo(ctx)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).
		With("runtime", "io.containerd.tether.v2", "namespace", o.namespace, "pid", os.Getpid())

	if err := reaper.SetSubreaper(); err != nil {
		return err
	}
	r := reaper.New()
	// go-runc starts every runtime command through its package-level
	// monitor; pointing it at the reaper is the one place that is set.
	runc.Monitor = r
	// SIGCHLD is handled by the loop below, with the other signals: one
	// goroutine less per shim than a loop of the reaper's own.
	r.Reap()

	// FileListener dups the socket close-on-exec; fd 3 itself would be
	// inherited by every runtime call and hook, keeping a dead shim's
	// socket answering.
	inherited := os.NewFile(3, "socket")
	l, err := net.FileListener(inherited)
	inherited.Close()
	if err != nil {
		return fmt.Errorf("socket from fd 3: %w", err)
	}
	socket := statSocket(l.Addr().String())

	publisher := events.New(events.Config{
		Namespace:     o.namespace,
		TTRPCAddress:  os.Getenv("TTRPC_ADDRESS"),
		PublishBinary: o.publishBinary,
		Address:       o.address,
		Monitor:       r,
		Log:           log,
	})
	shutdown := make(chan struct{})
	var stopListening sync.Once
	stop := func() {
		stopListening.Do(func() {
			l.Close()
			socket.remove()
			close(shutdown)
		})
	}
	svc := shim.NewService(shim.Config{
		Env: shim.Env{
			Namespace: o.namespace,
			Reaper:    r,
			Events:    publisher,
			Cgroups:   cgroup.NewHost(),
			OOM:       cgroup.NewOOMWatcher(log),
			Log:       log,
		},
		Version:  version,
		Shutdown: stop,
	})
	idle := newIdleMemory(idleDelay, os.Getenv("GOGC") == "" && os.Getenv("GOMEMLIMIT") == "")
	server, err := ttrpc.NewServer(
		ttrpc.WithServerHandshaker(ttrpc.UnixSocketRequireSameUser()),
		ttrpc.WithUnaryServerInterceptor(func(ctx context.Context, u ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, m ttrpc.Method) (any, error) {
			// Wake the collector before the work, start the quiet period
			// once no request runs.
			idle.begin()
			defer idle.end()
			start := time.Now()
			resp, err := m(ctx, u)
			log.Debug("request", "method", info.FullMethod, "took", time.Since(start), "error", err)
			return resp, err
		}),
	)
	if err != nil {
		return err
	}
	// containerd 1.x speaks task v2; 2.x task v3, the same API renamed.
	task.RegisterTaskService(server, svc)
	taskv3.RegisterTaskService(server, svc)
	served := make(chan error, 1)
	go func() { served <- server.Serve(ctx, l) }()
	log.Info("serving", "socket", socket.path)

	reason := signalLoop{sigs: sigs, reaper: r, containers: svc.Containers, log: log}.run(shutdown, served)
	log.Info("winding down", "reason", reason)
	stop()
	// Children may still come and go while the shim winds down (a publish
	// binary delivering the last events): keep reaping them.
	go func() {
		for s := range sigs {
			if s == unix.SIGCHLD {
				r.Reap()
			}
		}
	}()

	// Let requests in flight (the Shutdown itself among them) answer.
	sctx, scancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer scancel()
	if err := server.Shutdown(sctx); err != nil {
		server.Close()
	}
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer fcancel()
	if err := publisher.Flush(fctx); err != nil {
		log.Warn("exiting with undelivered events", "error", err)
	}
	log.Info("shim exited")
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
