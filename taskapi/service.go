// Package taskapi is the ttrpc edge of tether's task API: containerd's task
// service (v2, and v3 through the same methods). A request becomes a call on
// the task core (package shim: the container table, a container, a
// process), and the core's result becomes a response, its error the ttrpc
// status code containerd decodes; this is the one place that happens. It
// never holds lifecycle logic, state of its own or a lock: what a container
// or process may do, and when, the core decides; it never writes a field of
// the core.
package taskapi

import (
	"context"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/shim"
)

// Service is the task API of one shim. It finds the container a request is
// about in the shim's table, hands the request over (the container finds the
// process) and maps errors to ttrpc status codes.
type Service struct {
	containers *shim.Table
	version    string
	// shutdown is called when the last container is gone and containerd
	// asks the shim to exit.
	shutdown func()
	// keep, if set, says whether something besides containers still needs
	// the shim (a pod sandbox it holds).
	keep func() bool
	// prepare, if set, is given a new container's bundle first.
	prepare func(bundle string) error
}

// Config is what a Service is built from.
type Config struct {
	// Containers is the shim's container table, the core every request
	// goes to.
	Containers *shim.Table
	Version    string // reported by Connect
	// Shutdown is called when containerd asks a shim without containers to
	// exit; it must stop accepting connections before it returns.
	Shutdown func()
	// Keep, if set, reports whether something besides the containers (a pod
	// sandbox the shim holds) still needs the shim: a Shutdown then leaves
	// it running, as it does while containers remain. It must not call the
	// Service.
	Keep func() bool
	// Prepare, if set, is given the bundle of each container to create
	// before the core creates it (a pod the shim holds points the
	// container's spec at the pod's namespaces); its error refuses the
	// container.
	Prepare func(bundle string) error
}

// New returns the task service of a shim.
func New(cfg Config) *Service {
	return &Service{
		containers: cfg.Containers,
		version:    cfg.Version,
		shutdown:   cfg.Shutdown,
		keep:       cfg.Keep,
		prepare:    cfg.Prepare,
	}
}

// namespaceHeader is the ttrpc metadata containerd's client names the
// namespace of a request with.
const namespaceHeader = "containerd-namespace-ttrpc"

// checkNamespace has the core refuse a request about another namespace
// than the shim's; a request that names none is the shim's.
func (s *Service) checkNamespace(ctx context.Context) error {
	if ns, ok := ttrpc.GetMetadataValue(ctx, namespaceHeader); ok {
		return s.containers.CheckNamespace(ns)
	}
	return nil
}

// timestamp leaves a zero time out, as containerd reads a missing time as zero.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
