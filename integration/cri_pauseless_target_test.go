package integration

import (
	"context"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
)

// TestCRIPauselessPodDebugTarget: in a pod without a process of its own,
// a debugging container that targets another container's pid namespace
// (pid mode TARGET: kubectl debug --target) joins that container's pid
// namespace and the pod's network, IPC and UTS namespaces.
func TestCRIPauselessPodDebugTarget(t *testing.T) {
	if suite.ctd != nil && suite.ctd.Major < 2 {
		t.Skip("the sandbox API is containerd 2.x's")
	}
	c := startCRIWith(t, criSetup{pauseless: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := c.sandboxConfig("target", t.TempDir())
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_NODE, Ipc: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER,
	}
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: harness.PauselessHandler})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	t.Cleanup(func() {
		c.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
		c.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
	})
	app := c.createContainer(ctx, sandbox, cfg, "app", "sleep", "100000")
	resp, err := c.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  sandbox,
		SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "debugger"},
			Image:    &runtimeapi.ImageSpec{Image: harness.BusyboxImageName},
			Command:  []string{"sleep", "100000"},
			LogPath:  "debugger.log",
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE, Ipc: runtimeapi.NamespaceMode_POD,
					Pid: runtimeapi.NamespaceMode_TARGET, TargetId: app},
			}},
		},
	})
	if err != nil {
		t.Fatalf("create the debugging container: %v", err)
	}
	debugger := resp.GetContainerId()
	if _, err := c.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: debugger}); err != nil {
		t.Fatalf("start the debugging container: %v", err)
	}
	appPid, dbgPid := c.containerPid(ctx, app), c.containerPid(ctx, debugger)
	for _, kind := range []string{"pid", "ipc", "uts", "net"} {
		if a, d := nsLink(appPid, kind), nsLink(dbgPid, kind); a == "" || a != d {
			t.Errorf("%s namespace: the app's %s, the debugger's %s", kind, a, d)
		}
	}
	c.execSays(ctx, debugger, "sleep", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1")
}
