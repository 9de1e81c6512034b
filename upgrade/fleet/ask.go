package fleet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/containerd/ttrpc"

	upgradepb "github.com/tether-shim/tether/proto/upgrade"
)

// Scope picks the shims an upgrade moves; an empty field picks every one.
type Scope struct {
	// Address is a containerd's socket: only the shims it started (their
	// -address names the same socket).
	Address string
	// Namespace is a containerd namespace: only the shims serving it.
	Namespace string
	// ID is a container or a pod sandbox (with Namespace): only the shim
	// serving it.
	ID string
}

// Bounds are how long one shim may take; one that stalls delays no other.
type Bounds struct {
	Info    time.Duration // connecting and asking what it serves
	Upgrade time.Duration // the upgrade, to the answer of the process that carries on
	// Parallel is how many shims upgrade at once: each pauses its
	// containers' requests while it moves, and a busy node's CPUs are
	// better spent on a few short pauses than on many long ones.
	Parallel int
}

// DefaultBounds are the upgrade command's.
func DefaultBounds() Bounds {
	return Bounds{Info: 5 * time.Second, Upgrade: time.Minute, Parallel: 4}
}

// Result is what became of one shim in scope.
type Result struct {
	Shim Shim
	// Response is the upgrade's answer (nil if it could not be asked);
	// its Error is set when the shim carries on on its old binary.
	Response *upgradepb.UpgradeResponse
	// Err says why the shim is not upgraded; ErrUnreachable when it could
	// not be asked anything.
	Err error
}

// ErrUnreachable is a shim that could not be asked anything.
var ErrUnreachable = errors.New("cannot ask the shim")

// Upgrade asks every shim in scope, all at once, to re-execute binary
// (empty: the path each was started from), and calls report (one call at a
// time) with each result as it comes. A shim out of scope is not asked to
// do anything, nor reported: those that scope by their command line (the
// namespace, the address) are not even connected to.
func Upgrade(shims []Shim, scope Scope, binary string, bounds Bounds, report func(Result)) {
	var reportMu sync.Mutex
	upgrading := make(chan struct{}, max(bounds.Parallel, 1))
	var wg sync.WaitGroup
	for _, s := range shims {
		if (scope.Namespace != "" && s.Namespace != scope.Namespace) || (scope.Address != "" && !s.servesAddress(scope.Address)) {
			continue
		}
		wg.Go(func() {
			r, asked := upgradeOne(s, scope, binary, bounds, upgrading)
			if !asked && r.Err == nil {
				return // out of scope
			}
			reportMu.Lock()
			defer reportMu.Unlock()
			report(r)
		})
	}
	wg.Wait()
}

// upgradeOne asks s what it serves and, if it is in scope, to upgrade;
// asked says it was in scope.
func upgradeOne(s Shim, scope Scope, binary string, bounds Bounds, upgrading chan struct{}) (r Result, asked bool) {
	r.Shim = s
	conn, err := s.dial(bounds.Info)
	if err != nil {
		r.Err = fmt.Errorf("%w: %w", ErrUnreachable, err)
		return r, false
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	admin := upgradepb.NewAdminClient(client)
	ictx, icancel := context.WithTimeout(context.Background(), bounds.Info)
	info, err := admin.Info(ictx, &upgradepb.InfoRequest{})
	icancel()
	if err != nil {
		r.Err = fmt.Errorf("%w: %w", ErrUnreachable, err)
		return r, false
	}
	if (scope.Namespace != "" && info.GetNamespace() != scope.Namespace) ||
		(scope.ID != "" && !slices.Contains(info.GetContainers(), scope.ID) && info.GetSandbox() != scope.ID) {
		return r, false
	}
	upgrading <- struct{}{}
	defer func() { <-upgrading }()
	ctx, cancel := context.WithTimeout(context.Background(), bounds.Upgrade)
	defer cancel()
	r.Response, r.Err = admin.Upgrade(ctx, &upgradepb.UpgradeRequest{Binary: binary, Token: newToken()})
	if r.Err == nil && r.Response.GetError() != "" {
		r.Err = errors.New(r.Response.GetError())
	}
	return r, true
}

// newToken names one upgrade (unique, not secret: no crypto in the shim).
func newToken() string {
	return fmt.Sprintf("%d-%016x", os.Getpid(), rand.Uint64())
}
