package upgrade

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tether-shim/tether/events"
	"github.com/tether-shim/tether/handover"
	upgradepb "github.com/tether-shim/tether/proto/upgrade"
	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox"
	"github.com/tether-shim/tether/shim"
)

// Parts are the serving shim's parts that a live upgrade writes down and
// the next process takes back.
type Parts struct {
	Reaper     *reaper.Reaper
	Events     *events.Publisher
	Containers *shim.Table
	Pod        *sandbox.Service
	Conns      *handover.Set
	Listener   *handover.Listener
}

// Identity is what the shim is beyond its parts: the command line
// containerd started it with, its socket, the binary it runs from and its
// version.
type Identity struct {
	Namespace, ID, Address, PublishBinary string
	Debug                                 bool
	TTRPCAddress                          string // containerd's, for events
	// Binary is the path the shim runs from, recorded when it started:
	// once the file is replaced, /proc/self/exe names the old inode.
	Binary, Version string
	// The socket file as it was when the shim started.
	SocketPath           string
	SocketDev, SocketIno uint64
}

// Carried says which requests' answers may come from the next process
// after a live upgrade: the long-lived ones.
func Carried(service, method string) bool {
	switch service + "/" + method {
	case "containerd.task.v2.Task/Wait", "containerd.task.v3.Task/Wait", "tether.upgrade.v1.Admin/Upgrade",
		"containerd.runtime.sandbox.v1.Sandbox/WaitSandbox":
		return true
	}
	return false
}

// Admin is the shim's admin service: Info says what it is and serves,
// Upgrade moves it onto a new binary in place.
type Admin struct {
	parts Parts
	id    Identity
	log   *slog.Logger

	upgrading   sync.Mutex // one upgrade at a time
	completedMu sync.Mutex
	// completed is the answer owed to the upgrade this process carries on
	// from (nil: none, or given), completedFor that upgrade's token.
	// Guarded by completedMu.
	completed    *upgradepb.UpgradeResponse
	completedFor string
}

// NewAdmin returns the admin service of a shim made of p; completed is the
// answer owed to the upgrade with token completedFor, if this process
// carries on from one.
func NewAdmin(p Parts, id Identity, log *slog.Logger, completed *upgradepb.UpgradeResponse, completedFor string) *Admin {
	return &Admin{parts: p, id: id, log: log, completed: completed, completedFor: completedFor}
}

// Info says what the shim is and serves.
func (a *Admin) Info(ctx context.Context, _ *upgradepb.InfoRequest) (*upgradepb.InfoResponse, error) {
	return &upgradepb.InfoResponse{
		Pid: uint32(os.Getpid()), Version: a.id.Version, Binary: a.id.Binary,
		Namespace: a.id.Namespace, Containers: a.parts.Containers.IDs(), Sandbox: a.parts.Pod.HeldID(),
	}, nil
}

// Upgrade re-executes the shim from a new binary in place. It answers only
// when it failed and the shim carries on where it was; on success the
// process that carries on answers, on this same stream.
func (a *Admin) Upgrade(ctx context.Context, r *upgradepb.UpgradeRequest) (*upgradepb.UpgradeResponse, error) {
	if resp := a.takeCompleted(r.GetToken()); resp != nil {
		return resp, nil
	}
	if r.GetToken() == "" {
		return nil, status.Error(codes.InvalidArgument, "an upgrade needs a token")
	}
	if !a.upgrading.TryLock() {
		return nil, status.Error(codes.FailedPrecondition, "an upgrade of this shim is in progress")
	}
	defer a.upgrading.Unlock()
	resp := &upgradepb.UpgradeResponse{Pid: uint32(os.Getpid()), OldVersion: a.id.Version, NewVersion: a.id.Version, Binary: a.id.Binary}
	binary := r.GetBinary()
	if binary == "" {
		binary = a.id.Binary
	}
	binary, err := filepath.Abs(binary)
	if err == nil && a.parts.Containers.Closing() {
		err = fmt.Errorf("the shim is shutting down: %w", errdefs.ErrFailedPrecondition)
	}
	var b *Binary
	if err == nil {
		b, err = OpenBinary(binary)
	}
	if err == nil {
		defer b.Close()
		// Before anything is frozen: a binary that cannot take over is
		// refused while the shim serves on. One that reads the newest
		// state takes over exec starts in flight; an older one is asked
		// for the version the state needs (a binary that cannot read a
		// pod's is refused for a shim that has one), and starts in flight
		// are waited for.
		probed := uint32(StateVersion)
		if _, perr := b.Probe(probed, a.parts.Reaper); perr != nil {
			probed = VersionFor(a.parts.Pod.Outline(), false, false)
			_, err = b.Probe(probed, a.parts.Reaper)
		}
		if err == nil {
			testAfterProbe(binary)
			err = handOver(a.parts, a.id, a.log, b, r.GetToken(), probed) // returns only if it failed
		}
	}
	resp.Error = err.Error()
	a.log.Warn("upgrade failed, carrying on", "binary", binary, "error", err)
	return resp, nil
}

// takeCompleted returns, once, the answer owed to the upgrade this process
// carries on from (the request came along with the connection).
func (a *Admin) takeCompleted(token string) *upgradepb.UpgradeResponse {
	a.completedMu.Lock()
	defer a.completedMu.Unlock()
	if a.completed == nil || token != a.completedFor {
		return nil
	}
	resp := a.completed
	a.completed = nil
	return resp
}

// StartOver re-executes the shim from the binary it runs from, as Upgrade
// does, with no request to answer: a quiet shim that has grown leaves
// behind what the Go runtime never hands back (internal/startover). It
// returns only if that did not happen; the shim then carries on. An
// upgrade under way, a shim shutting down or a binary replaced on disk
// (moving onto it would be an upgrade, the operator's call) is no start
// over. begin runs once it is decided, right before the handover.
func (a *Admin) StartOver(begin func()) error {
	if !a.upgrading.TryLock() {
		return fmt.Errorf("an upgrade of this shim is in progress: %w", errdefs.ErrFailedPrecondition)
	}
	defer a.upgrading.Unlock()
	if a.parts.Containers.Closing() {
		return fmt.Errorf("the shim is shutting down: %w", errdefs.ErrFailedPrecondition)
	}
	b, err := OpenBinary(a.id.Binary)
	if err != nil {
		return err
	}
	defer b.Close()
	if !b.isRunning() {
		return fmt.Errorf("the binary was replaced on disk (%s; moving onto it is an upgrade, the operator's call): %w", a.id.Binary, errdefs.ErrFailedPrecondition)
	}
	begin()
	return handOver(a.parts, a.id, a.log, b, "", StateVersion)
}
