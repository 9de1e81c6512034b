package sandbox

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
)

func newTestService(t *testing.T, e *fakeEnv, released *atomic.Int32) *Service {
	env := e.env()
	return NewService(Config{Namespace: "k8s.io", Env: *env, Released: func() { released.Add(1) }})
}

func code(err error) codes.Code { return status.Code(err) }

// TestServiceLifecycle drives the API as containerd 2.x does for a pod:
// create, start (pid and a spec naming the holder's namespaces), platform,
// status, ping, wait, stop, shutdown; the shim is held from create to
// shutdown and released once.
func TestServiceLifecycle(t *testing.T) {
	var released atomic.Int32
	svc := newTestService(t, &fakeEnv{}, &released)
	ctx := ttrpc.WithMetadata(context.Background(), ttrpc.MD{namespaceHeader: []string{"k8s.io"}})
	if svc.Holds() {
		t.Fatal("a shim without a sandbox holds one")
	}
	cfg := podConfig(runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD)
	if _, err := svc.CreateSandbox(ctx, request(t, cfg, "/var/run/netns/cni-1")); err != nil {
		t.Fatal(err)
	}
	if !svc.Holds() {
		t.Fatal("a created sandbox does not hold the shim")
	}
	if _, err := svc.CreateSandbox(ctx, request(t, cfg, "/var/run/netns/cni-1")); code(err) != codes.AlreadyExists {
		t.Fatalf("second create: %v", err)
	}
	st, err := svc.SandboxStatus(ctx, &sandboxapi.SandboxStatusRequest{SandboxId: "pod1"})
	if err != nil || st.GetState() != "SANDBOX_NOTREADY" || st.GetPid() != 0 {
		t.Fatalf("status before start: %v %v", st, err)
	}
	started, err := svc.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxId: "pod1"})
	if err != nil || started.GetPid() != 100 || started.GetCreatedAt() == nil {
		t.Fatalf("start: %v %v", started, err)
	}
	if started.GetSpec().GetTypeUrl() != "types.containerd.io/opencontainers/runtime-spec/1/Spec" {
		t.Fatalf("spec type %q", started.GetSpec().GetTypeUrl())
	}
	var spec specs.Spec
	if err := json.Unmarshal(started.GetSpec().GetValue(), &spec); err != nil || spec.Hostname != "pod-host" || len(spec.Linux.Namespaces) != 4 {
		t.Fatalf("spec %+v %v", spec, err)
	}
	for _, ns := range spec.Linux.Namespaces {
		if !strings.HasPrefix(ns.Path, "/proc/100/ns/") {
			t.Fatalf("namespace %+v is not the holder's", ns)
		}
	}
	pl, err := svc.Platform(ctx, &sandboxapi.PlatformRequest{SandboxId: "pod1"})
	if err != nil || pl.GetPlatform().GetOs() != "linux" {
		t.Fatalf("platform %v %v", pl, err)
	}
	st, err = svc.SandboxStatus(ctx, &sandboxapi.SandboxStatusRequest{SandboxId: "pod1", Verbose: true})
	if err != nil || st.GetState() != "SANDBOX_READY" || st.GetPid() != 100 || st.GetCreatedAt() == nil || st.GetExitedAt() != nil {
		t.Fatalf("status: %v %v", st, err)
	}
	var info map[string]any
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info["pid"] != float64(100) {
		t.Fatalf("verbose info %q %v", st.GetInfo()["info"], err)
	}
	if _, err := svc.PingSandbox(ctx, &sandboxapi.PingRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	waited := make(chan *sandboxapi.WaitSandboxResponse, 1)
	go func() {
		w, _ := svc.WaitSandbox(ctx, &sandboxapi.WaitSandboxRequest{SandboxId: "pod1"})
		waited <- w
	}()
	if _, err := svc.StopSandbox(ctx, &sandboxapi.StopSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	if w := <-waited; w == nil || w.GetExitStatus() != 0 || w.GetExitedAt() == nil {
		t.Fatalf("wait: %v", w)
	}
	st, _ = svc.SandboxStatus(ctx, &sandboxapi.SandboxStatusRequest{SandboxId: "pod1"})
	if st.GetState() != "SANDBOX_NOTREADY" || st.GetExitedAt() == nil {
		t.Fatalf("status after stop: %v", st)
	}
	if !svc.Holds() || released.Load() != 0 {
		t.Fatal("a stopped sandbox let go of the shim")
	}
	if _, err := svc.ShutdownSandbox(ctx, &sandboxapi.ShutdownSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	if svc.Holds() || released.Load() != 1 {
		t.Fatalf("after shutdown: holds %v, released %d times", svc.Holds(), released.Load())
	}
}

// TestServiceStartsAPodWithoutAHolder: a pod whose containers have a pid
// namespace each starts with pid 0 (containerd then names /proc/0/ns/* in
// its containers' specs) and a spec naming where its namespaces are: the
// network namespace containerd made, the bound UTS and IPC ones; no pid
// namespace. Its status says pid 0 as well, ready.
func TestServiceStartsAPodWithoutAHolder(t *testing.T) {
	var released atomic.Int32
	svc := newTestService(t, &fakeEnv{noHolder: true}, &released)
	ctx := ttrpc.WithMetadata(context.Background(), ttrpc.MD{namespaceHeader: []string{"k8s.io"}})
	req := request(t, podConfig(runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_CONTAINER), "/var/run/netns/cni-1")
	if _, err := svc.CreateSandbox(ctx, req); err != nil {
		t.Fatal(err)
	}
	started, err := svc.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxId: "pod1"})
	if err != nil || started.GetPid() != 0 || started.GetCreatedAt() == nil {
		t.Fatalf("start: %v %v", started, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(started.GetSpec().GetValue(), &spec); err != nil || spec.Hostname != "pod-host" {
		t.Fatalf("spec %+v %v", spec, err)
	}
	want := []specs.LinuxNamespace{
		{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"},
		{Type: specs.UTSNamespace, Path: req.GetBundlePath() + "/ns/uts"},
		{Type: specs.IPCNamespace, Path: req.GetBundlePath() + "/ns/ipc"},
	}
	if !reflect.DeepEqual(spec.Linux.Namespaces, want) {
		t.Fatalf("spec namespaces %+v, want %+v", spec.Linux.Namespaces, want)
	}
	st, err := svc.SandboxStatus(ctx, &sandboxapi.SandboxStatusRequest{SandboxId: "pod1", Verbose: true})
	if err != nil || st.GetState() != "SANDBOX_READY" || st.GetPid() != 0 {
		t.Fatalf("status: %v %v", st, err)
	}
	var info map[string]any
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info["pid"] != float64(0) || info["processStatus"] != "ready" {
		t.Fatalf("verbose info %q %v", st.GetInfo()["info"], err)
	}
}

// TestServiceRefusals: other pods, other namespaces, what tether does not
// implement, and metrics of a pod without a cgroup parent, each with its code.
func TestServiceRefusals(t *testing.T) {
	var released atomic.Int32
	svc := newTestService(t, &fakeEnv{}, &released)
	ctx := context.Background()
	other := ttrpc.WithMetadata(ctx, ttrpc.MD{namespaceHeader: []string{"tenant-b"}})
	cfg := podConfig(runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD)
	if _, err := svc.PingSandbox(ctx, &sandboxapi.PingRequest{SandboxId: "pod1"}); code(err) != codes.NotFound {
		t.Fatalf("ping before create: %v", err)
	}
	if _, err := svc.CreateSandbox(other, request(t, cfg, "/n")); code(err) != codes.PermissionDenied {
		t.Fatalf("create for another namespace: %v", err)
	}
	if _, err := svc.CreateSandbox(ctx, request(t, cfg, "/n")); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.SandboxStatus(other, &sandboxapi.SandboxStatusRequest{SandboxId: "pod1"}); code(err) != codes.PermissionDenied {
		t.Fatalf("status from another namespace: %v", err)
	}
	if _, err := svc.StartSandbox(ctx, &sandboxapi.StartSandboxRequest{SandboxId: "pod2"}); code(err) != codes.NotFound {
		t.Fatalf("start of another pod: %v", err)
	}
	if _, err := svc.ShutdownSandbox(ctx, &sandboxapi.ShutdownSandboxRequest{SandboxId: "pod2"}); code(err) != codes.NotFound || released.Load() != 0 {
		t.Fatalf("shutdown of another pod: %v, released %d", err, released.Load())
	}
	if _, err := svc.UpdateSandbox(ctx, &sandboxapi.UpdateSandboxRequest{SandboxId: "pod1"}); code(err) != codes.Unimplemented {
		t.Fatalf("update: %v", err)
	}
	cfg.Linux.CgroupParent = ""
	svc2 := newTestService(t, &fakeEnv{}, &released)
	if _, err := svc2.CreateSandbox(ctx, request(t, cfg, "/n")); err != nil {
		t.Fatal(err)
	}
	if _, err := svc2.SandboxMetrics(ctx, &sandboxapi.SandboxMetricsRequest{SandboxId: "pod1"}); code(err) != codes.FailedPrecondition {
		t.Fatalf("metrics without a cgroup parent: %v", err)
	}
}

// TestShutdownWithoutASandboxReleasesTheShim: containerd shuts a sandbox
// down after its CreateSandbox failed; the shim must not stay behind.
func TestShutdownWithoutASandboxReleasesTheShim(t *testing.T) {
	var released atomic.Int32
	svc := newTestService(t, &fakeEnv{}, &released)
	bad := request(t, podConfig(runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_POD), "relative")
	if _, err := svc.CreateSandbox(context.Background(), bad); code(err) != codes.InvalidArgument {
		t.Fatalf("create: %v", err)
	}
	if _, err := svc.ShutdownSandbox(context.Background(), &sandboxapi.ShutdownSandboxRequest{SandboxId: "pod1"}); err != nil {
		t.Fatal(err)
	}
	if released.Load() != 1 || svc.Holds() {
		t.Fatalf("released %d times, holds %v", released.Load(), svc.Holds())
	}
}
