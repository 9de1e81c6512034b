// Package shim is tether's task core: the ttrpc task service (the edge,
// where errors become codes), containers and their processes, one state
// machine per process with the init and exec lifecycles as strategies, and
// the order in which exits and events leave. Requests flow one way: service
// -> container -> process -> runtime; exits flow reaper -> container ->
// process -> event. It never holds a lock across a runtime call: State,
// Wait, Kill, Pids and Stats answer from what the shim knows while another
// request's runtime call runs.
package shim

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/tether-shim/tether/cgroup"
	"github.com/tether-shim/tether/reaper"
)

// Publisher queues an event for containerd; it never blocks.
type Publisher interface {
	Publish(topic string, ev proto.Message)
}

// Env is what all containers of a shim share.
type Env struct {
	Namespace string // containerd namespace of the shim's containers
	Reaper    *reaper.Reaper
	Events    Publisher
	Cgroups   *cgroup.Host
	OOM       *cgroup.OOMWatcher
	Log       *slog.Logger

	// exits counts exits being handled, so that a handover to the next
	// process waits for them; set by NewService.
	exits *inFlight
}

// Service is the task API of one shim. It finds the container and process a
// request is about, hands the request over and maps errors to ttrpc status
// codes; lifecycle logic lives in Container and Process.
type Service struct {
	env     *Env
	version string
	// shutdown is called when the last container is gone and containerd
	// asks the shim to exit.
	shutdown func()
	// keep, if set, says whether something besides containers still needs
	// the shim (a pod sandbox it holds).
	keep func() bool

	mu sync.Mutex
	// containers are the shim's containers by id, from Create until Delete.
	// A nil entry reserves an id while its Create runs. Guarded by mu.
	containers map[string]*Container
	// closing is set once Shutdown has begun: no container may be created.
	// Guarded by mu.
	closing bool
}

// Config is what a Service is built from.
type Config struct {
	Env     Env
	Version string // reported by Connect
	// Shutdown is called when containerd asks a shim without containers to
	// exit; it must stop accepting connections before it returns.
	Shutdown func()
	// Keep, if set, reports whether something besides the containers (a pod
	// sandbox the shim holds) still needs the shim: a Shutdown then leaves
	// it running, as it does while containers remain. It must not call the
	// Service.
	Keep func() bool
}

// NewService returns the task service of a shim.
func NewService(cfg Config) *Service {
	env := cfg.Env
	env.exits = &inFlight{}
	return &Service{
		env:        &env,
		version:    cfg.Version,
		shutdown:   cfg.Shutdown,
		keep:       cfg.Keep,
		containers: make(map[string]*Container),
	}
}

func (s *Service) container(id string) (*Container, error) {
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c == nil {
		if err := ValidateID("container", id); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) process(id, execID string) (*Container, *Process, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.Process(execID)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

// Containers counts the shim's containers.
func (s *Service) Containers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.containers)
}

// namespaceHeader is the ttrpc metadata containerd's client names the
// namespace of a request with.
const namespaceHeader = "containerd-namespace-ttrpc"

// checkNamespace refuses a request about another namespace than the
// shim's: a shim serves one namespace, whatever a group annotation says.
func (s *Service) checkNamespace(ctx context.Context) error {
	if ns, ok := ttrpc.GetMetadataValue(ctx, namespaceHeader); ok && ns != s.env.Namespace {
		return fmt.Errorf("request for namespace %q reached the shim of namespace %q: %w", ns, s.env.Namespace, errdefs.ErrPermissionDenied)
	}
	return nil
}
