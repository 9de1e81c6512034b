package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tether-shim/tether/internal/errcode"
	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	"github.com/tether-shim/tether/proto/types"
)

var _ sandboxapi.SandboxService = (*Service)(nil)

// Service is containerd's sandbox API on a shim: it finds the sandbox a
// request is about and maps errors to ttrpc codes; the pod's life is the
// Sandbox's. A shim holds at most one sandbox (one shim per pod).
type Service struct {
	namespace string
	env       *Env
	// released is called once the shim no longer holds a sandbox (shut down,
	// or never created), without the lock: the shim may exit when it holds
	// no container either.
	released func()

	mu sync.Mutex
	// sb is the shim's sandbox, from CreateSandbox on. Guarded by mu.
	sb *Sandbox
}

// Config is what a Service is built from.
type Config struct {
	Namespace string // containerd namespace of the shim
	Env       Env
	// Released is called when containerd shuts the sandbox down.
	Released func()
}

// NewService returns the sandbox service of a shim.
func NewService(cfg Config) *Service {
	env := cfg.Env
	return &Service{namespace: cfg.Namespace, env: &env, released: cfg.Released}
}

// Holds reports whether the shim holds a sandbox that is not shut down:
// the shim must not exit while it does.
func (s *Service) Holds() bool {
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	return sb != nil && sb.Status().Phase != shutDown
}

// HeldID is the id of the sandbox the shim holds, "" if none (or shut down).
func (s *Service) HeldID() string {
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil || sb.Status().Phase == shutDown {
		return ""
	}
	return sb.pod.ID
}

// namespaceHeader is the ttrpc metadata containerd names a request's
// namespace with.
const namespaceHeader = "containerd-namespace-ttrpc"

// sandbox finds the sandbox id names.
func (s *Service) sandbox(ctx context.Context, id string) (*Sandbox, error) {
	if ns, ok := ttrpc.GetMetadataValue(ctx, namespaceHeader); ok && ns != s.namespace {
		return nil, fmt.Errorf("request for namespace %q reached the shim of namespace %q: %w", ns, s.namespace, errdefs.ErrPermissionDenied)
	}
	s.mu.Lock()
	sb := s.sb
	s.mu.Unlock()
	if sb == nil || sb.pod.ID != id {
		return nil, fmt.Errorf("sandbox %q: %w", id, errdefs.ErrNotFound)
	}
	return sb, nil
}

func (s *Service) CreateSandbox(ctx context.Context, r *sandboxapi.CreateSandboxRequest) (*sandboxapi.CreateSandboxResponse, error) {
	if ns, ok := ttrpc.GetMetadataValue(ctx, namespaceHeader); ok && ns != s.namespace {
		return nil, errcode.ToStatus(fmt.Errorf("sandbox for namespace %q reached the shim of namespace %q: %w", ns, s.namespace, errdefs.ErrPermissionDenied))
	}
	p, err := podFromRequest(r)
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sb != nil {
		return nil, errcode.ToStatus(fmt.Errorf("this shim holds sandbox %q already: %w", s.sb.pod.ID, errdefs.ErrAlreadyExists))
	}
	s.sb = newSandbox(p, s.env)
	s.env.Log.Info("sandbox created", "sandbox", p.ID, "netns", p.NetNS, "uts", p.OwnUTS, "ipc", p.OwnIPC, "pid", p.PID)
	return &sandboxapi.CreateSandboxResponse{}, nil
}

func (s *Service) StartSandbox(ctx context.Context, r *sandboxapi.StartSandboxRequest) (*sandboxapi.StartSandboxResponse, error) {
	sb, err := s.sandbox(ctx, r.GetSandboxId())
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	pid, at, err := sb.Start(ctx)
	if err != nil {
		s.env.Log.Warn("sandbox start failed", "sandbox", r.GetSandboxId(), "error", err)
		return nil, errcode.ToStatus(err)
	}
	spec, err := podSpec(sb.pod, pid)
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	return &sandboxapi.StartSandboxResponse{Pid: uint32(pid), CreatedAt: timestamppb.New(at), Spec: spec}, nil
}

func (s *Service) Platform(ctx context.Context, r *sandboxapi.PlatformRequest) (*sandboxapi.PlatformResponse, error) {
	if _, err := s.sandbox(ctx, r.GetSandboxId()); err != nil {
		return nil, errcode.ToStatus(err)
	}
	return &sandboxapi.PlatformResponse{Platform: &types.Platform{Os: runtime.GOOS, Architecture: runtime.GOARCH}}, nil
}

func (s *Service) StopSandbox(ctx context.Context, r *sandboxapi.StopSandboxRequest) (*sandboxapi.StopSandboxResponse, error) {
	sb, err := s.sandbox(ctx, r.GetSandboxId())
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	if err := sb.Stop(ctx, time.Duration(r.GetTimeoutSecs())*time.Second); err != nil {
		return nil, errcode.ToStatus(err)
	}
	return &sandboxapi.StopSandboxResponse{}, nil
}

func (s *Service) WaitSandbox(ctx context.Context, r *sandboxapi.WaitSandboxRequest) (*sandboxapi.WaitSandboxResponse, error) {
	sb, err := s.sandbox(ctx, r.GetSandboxId())
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	e, err := sb.Wait(ctx)
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	return &sandboxapi.WaitSandboxResponse{ExitStatus: uint32(e.Status), ExitedAt: timestamppb.New(e.Time)}, nil
}

func (s *Service) SandboxStatus(ctx context.Context, r *sandboxapi.SandboxStatusRequest) (*sandboxapi.SandboxStatusResponse, error) {
	sb, err := s.sandbox(ctx, r.GetSandboxId())
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	st := sb.Status()
	resp := &sandboxapi.SandboxStatusResponse{SandboxId: sb.pod.ID, Pid: uint32(st.Pid), State: "SANDBOX_NOTREADY"}
	if st.Phase == ready {
		resp.State = "SANDBOX_READY"
	}
	if !st.StartedAt.IsZero() {
		resp.CreatedAt = timestamppb.New(st.StartedAt)
	}
	if st.Exit != nil {
		resp.ExitedAt = timestamppb.New(st.Exit.Time)
	}
	if r.GetVerbose() {
		info, err := verboseInfo(sb.pod, st)
		if err != nil {
			return nil, errcode.ToStatus(err)
		}
		resp.Info = map[string]string{"info": info}
	}
	return resp, nil
}

// verboseInfo is the JSON containerd's CRI shows as a pod's "info"; the CRI
// keeps only the keys of its own SandboxInfo.
func verboseInfo(p Pod, st Status) (string, error) {
	info := map[string]any{
		"pid":                st.Pid,
		"processStatus":      st.Phase.String(),
		"netNamespaceClosed": st.Phase != ready && p.NetNS != "",
		"runtimeType":        "io.containerd.tether.v2",
	}
	data, err := json.Marshal(info)
	if err != nil {
		return "", fmt.Errorf("sandbox info: %w", err)
	}
	return string(data), nil
}

func (s *Service) PingSandbox(ctx context.Context, r *sandboxapi.PingRequest) (*sandboxapi.PingResponse, error) {
	if _, err := s.sandbox(ctx, r.GetSandboxId()); err != nil {
		return nil, errcode.ToStatus(err)
	}
	return &sandboxapi.PingResponse{}, nil
}

// ShutdownSandbox releases everything the sandbox holds; the shim then
// exits once it holds no container either. containerd also sends it after
// a failed CreateSandbox: a shim that holds no sandbox is released as well.
func (s *Service) ShutdownSandbox(ctx context.Context, r *sandboxapi.ShutdownSandboxRequest) (*sandboxapi.ShutdownSandboxResponse, error) {
	s.mu.Lock()
	none := s.sb == nil
	s.mu.Unlock()
	if !none {
		sb, err := s.sandbox(ctx, r.GetSandboxId())
		if err != nil {
			return nil, errcode.ToStatus(err)
		}
		if err := sb.Shutdown(ctx); err != nil {
			return nil, errcode.ToStatus(err)
		}
		s.env.Log.Info("sandbox shut down", "sandbox", sb.pod.ID)
	}
	if s.released != nil {
		s.released()
	}
	return &sandboxapi.ShutdownSandboxResponse{}, nil
}

func (s *Service) SandboxMetrics(ctx context.Context, r *sandboxapi.SandboxMetricsRequest) (*sandboxapi.SandboxMetricsResponse, error) {
	sb, err := s.sandbox(ctx, r.GetSandboxId())
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	cg, err := sb.podCgroup()
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	data, err := cg.Metrics()
	if err != nil {
		return nil, errcode.ToStatus(err)
	}
	return &sandboxapi.SandboxMetricsResponse{Metrics: &types.Metric{Timestamp: timestamppb.Now(), Id: sb.pod.ID, Data: data}}, nil
}

// UpdateSandbox is optional in the API: tether answers Unimplemented, which
// containerd tolerates.
func (s *Service) UpdateSandbox(ctx context.Context, r *sandboxapi.UpdateSandboxRequest) (*sandboxapi.UpdateSandboxResponse, error) {
	return nil, errcode.ToStatus(fmt.Errorf("UpdateSandbox: %w", errdefs.ErrNotImplemented))
}
