package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
)

// TestCRIPauselessHolderRootWithPtrace: in a pod whose containers share
// its pid namespace, the holder is their pid 1. A container given
// CAP_SYS_PTRACE (a debugging container: kubectl debug's general profile
// adds it), but nothing else beyond the defaults, reaches /proc/1/root
// and /proc/1/cwd through it. With a pause container those are the pause
// image's; the holder's must not be the node's file system: the container
// neither reads a file of the node there nor writes one.
func TestCRIPauselessHolderRootWithPtrace(t *testing.T) {
	if suite.ctd != nil && suite.ctd.Major < 2 {
		t.Skip("the sandbox API is containerd 2.x's")
	}
	c := startCRIWith(t, criSetup{pauseless: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// On the node: a file the container must not read, a directory it
	// must not write to.
	node := t.TempDir()
	marker := filepath.Join(node, "node-only")
	if err := os.WriteFile(marker, []byte("the node's file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := c.sandboxConfig("ptrace", t.TempDir())
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_NODE, Ipc: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_POD,
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
	resp, err := c.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  sandbox,
		SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "debug"},
			Image:    &runtimeapi.ImageSpec{Image: harness.BusyboxImageName},
			Command:  []string{"sleep", "100000"},
			LogPath:  "debug.log",
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: cfg.Linux.SecurityContext.NamespaceOptions,
				Capabilities:     &runtimeapi.Capability{AddCapabilities: []string{"SYS_PTRACE"}},
			}},
		},
	})
	if err != nil {
		t.Fatalf("create container: %v", err)
	}
	debug := resp.GetContainerId()
	if _, err := c.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: debug}); err != nil {
		t.Fatalf("start container: %v", err)
	}
	c.execSays(ctx, debug, "tether-holder", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1")
	for _, link := range []string{"root", "cwd"} {
		ex, err := c.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: debug, Timeout: 30, Cmd: []string{"sh", "-c",
			"cat /proc/1/" + link + marker + " 2>/dev/null || echo closed; echo planted > /proc/1/" + link + node + "/planted-" + link + " 2>/dev/null"}})
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		if got := strings.TrimSpace(string(ex.GetStdout())); got != "closed" {
			t.Errorf("a container of the pod read the node's %s through /proc/1/%s: %q", marker, link, got)
		}
		if data, err := os.ReadFile(filepath.Join(node, "planted-"+link)); err == nil {
			t.Errorf("a container of the pod wrote %q to the node's %s through /proc/1/%s", data, node, link)
		}
	}
}
