package integration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
)

// TestCRIPauselessPodShimKilled: the shim of a pod without a holder is
// killed with SIGKILL. containerd runs tether's delete action for the
// sandbox's bundle: the pod's bound namespaces, its files and its
// /dev/shm go; the pod turns NOTREADY; stopping and removing it then work
// and leave nothing behind.
func TestCRIPauselessPodShimKilled(t *testing.T) {
	if suite.ctd != nil && suite.ctd.Major < 2 {
		t.Skip("the sandbox API is containerd 2.x's")
	}
	c := startCRIWith(t, criSetup{pauseless: true, network: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := c.sandboxConfig("killed", t.TempDir())
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: harness.PauselessHandler})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	t.Cleanup(func() {
		if t.Failed() {
			c.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
			c.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
		}
	})
	shim := shimsFor(sandbox)[0]
	bound := c.boundNamespaces(sandbox)
	socket := c.sandboxSocket(sandbox)
	ctr := c.createContainer(ctx, sandbox, cfg, "worker", "sleep", "100000")
	netns := c.inPodNamespaces([]int{c.containerPid(ctx, ctr)}, bound)
	c.checkPodCgroups(cfg.Linux.CgroupParent)
	podRoot := filepath.Join(c.ctd.Dir, "root", "io.containerd.grpc.v1.cri", "sandboxes", sandbox)
	if _, err := os.Stat(filepath.Join(podRoot, "resolv.conf")); err != nil {
		t.Fatalf("pod files: %v", err)
	}
	nsDir := filepath.Join(c.sandboxBundle(sandbox), "ns")

	syscall.Kill(shim.pid, syscall.SIGKILL)
	c.waitFor("containerd's delete action to remove the pod's files and namespaces", 20*time.Second, func() bool {
		_, err := os.Stat(podRoot)
		return os.IsNotExist(err) && len(mountsMatching(sandbox+"/shm")) == 0 && len(mountsMatching(nsDir)) == 0
	})
	c.waitFor("the pod to turn NOTREADY", 20*time.Second, func() bool {
		st, err := c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox})
		return err == nil && st.GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_NOTREADY
	})
	c.waitFor("the container to be reported exited", 20*time.Second, func() bool {
		st, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: ctr})
		return err == nil && st.GetStatus().GetState() == runtimeapi.ContainerState_CONTAINER_EXITED
	})
	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("stop pod: %v", err)
	}
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("remove pod: %v", err)
	}
	c.nothingLeftOf(sandbox, shim, netns, socket)
	if p := processesNamed("sleep", "100000"); len(p) > 0 {
		for _, proc := range p {
			if proc.ppid == shim.pid {
				t.Errorf("container process left: %v", proc)
			}
		}
	}
}

// TestCRIShimSandboxerOnTheNodesNetwork: a pod on the node's network
// through the shim sandboxer, its containers with a pid namespace each:
// no process of its own; no network or UTS namespace of its own (as a
// pause container would not have), yet its own IPC, bound; the
// containers see the node's network and hostname. On containerd 1.x, which
// has no sandbox API, the same handler (its sandboxer setting unknown
// there) runs the pod the old way: with a pause container, through tether.
func TestCRIShimSandboxerOnTheNodesNetwork(t *testing.T) {
	c := startCRIWith(t, criSetup{pauseless: true, pauseImage: suite.ctd != nil && suite.ctd.Major < 2})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := c.sandboxConfig("node-net", t.TempDir())
	cfg.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_CONTAINER
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: harness.PauselessHandler})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	defer func() {
		c.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
		c.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
	}()
	shims := shimsFor(sandbox)
	if len(shims) != 1 {
		t.Fatalf("shims for the pod: %v", shims)
	}
	ctr := c.createContainer(ctx, sandbox, cfg, "app", "sleep", "100000")
	node, _ := os.Hostname()
	c.execSays(ctx, ctr, node, "hostname")

	if c.ctd.Major < 2 {
		// containerd 1.x ignores sandboxer and disable_pause_image_pull: a
		// pause container, served by tether like any pod of the handler.
		var pause []process
		for _, p := range c.pauseProcesses() {
			if p.ppid == shims[0].pid {
				pause = append(pause, p)
			}
		}
		if len(pause) != 1 {
			t.Fatalf("containerd 1.x: pause processes under the pod's shim: %v", pause)
		}
		if strings.Contains(c.ctd.FullLog(), "sandbox created") {
			t.Fatal("containerd 1.x called the sandbox API")
		}
		return
	}
	pid := c.containerPid(ctx, ctr)
	if kids := childrenOf(shims[0].pid); !slices.Equal(kids, []int{pid}) {
		t.Fatalf("the shim's processes %v, want only its container's %d", kids, pid)
	}
	if p := c.pauseProcesses(); len(p) > 0 {
		t.Fatalf("pause processes: %v", p)
	}
	if m := mountsMatching(filepath.Join(c.sandboxBundle(sandbox), "ns", "uts")); len(m) > 0 {
		t.Fatalf("a UTS namespace bound for a pod on the node's network: %v", m)
	}
	ipc := filepath.Join(c.sandboxBundle(sandbox), "ns", "ipc")
	var bound syscall.Stat_t
	if err := syscall.Stat(ipc, &bound); err != nil {
		t.Fatalf("the pod's IPC namespace: %v", err)
	}
	self := os.Getpid()
	for ns, want := range map[string]string{"net": nsLink(self, "net"), "uts": nsLink(self, "uts"), "ipc": "ipc:[" + strconv.FormatUint(bound.Ino, 10) + "]"} {
		if got := nsLink(pid, ns); got != want {
			t.Errorf("the container's %s namespace %s, want %s", ns, got, want)
		}
	}
}

// TestCRIPauselessPodOutlivesContainerd: containerd restarts under a
// running pauseless pod without a holder; it finds the pod's shim again
// (its sandbox API answers as before: ready, pid 0), the pod's container
// takes exec; a live upgrade of the pod's shim after the restart keeps the
// shim, the pod's bound namespaces and the pod (a new container joins
// them, pointed there by the upgraded process); the pod then stops and
// goes as usual.
func TestCRIPauselessPodOutlivesContainerd(t *testing.T) {
	if suite.ctd != nil && suite.ctd.Major < 2 {
		t.Skip("the sandbox API is containerd 2.x's")
	}
	c := startCRIWith(t, criSetup{pauseless: true, network: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := c.sandboxConfig("outlives", t.TempDir())
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: harness.PauselessHandler})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	t.Cleanup(func() {
		if t.Failed() {
			c.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
			c.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
		}
	})
	shim := shimsFor(sandbox)[0]
	bound := c.boundNamespaces(sandbox)
	socket := c.sandboxSocket(sandbox)
	ctr := c.createContainer(ctx, sandbox, cfg, "app", "sleep", "100000")
	pid := c.containerPid(ctx, ctr)
	netns := c.inPodNamespaces([]int{pid}, bound)

	if err := c.ctd.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.ctd.Restart(); err != nil {
		t.Fatal(err)
	}
	c.waitFor("the pod to be READY again", 30*time.Second, func() bool {
		st, err := c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox})
		return err == nil && st.GetStatus().GetState() == runtimeapi.PodSandboxState_SANDBOX_READY
	})
	if got := shimsFor(sandbox); len(got) != 1 || got[0].pid != shim.pid || !slices.Equal(childrenOf(shim.pid), []int{pid}) {
		t.Fatalf("after the restart: shims %v (processes %v), want the same shim and container", got, childrenOf(shim.pid))
	}
	c.execSays(ctx, ctr, "still here", "echo", "still here")

	// The restarted containerd's connections move with a live upgrade too.
	out, err := upgradeShims(t, filepath.Join(suite.shimDir, "containerd-shim-tether-v2"), "-namespace", "k8s.io", "-id", ctr)
	if err != nil || !strings.Contains(out, "result=ok") {
		t.Fatalf("upgrade of a pod's shim: %v\n%s", err, out)
	}
	if got := shimsFor(sandbox); len(got) != 1 || got[0].pid != shim.pid || !slices.Equal(childrenOf(shim.pid), []int{pid}) {
		t.Fatalf("after the upgrade: shims %v (processes %v)", got, childrenOf(shim.pid))
	}
	if got := c.boundNamespaces(sandbox); got["uts"] != bound["uts"] || got["ipc"] != bound["ipc"] {
		t.Fatalf("the pod's namespaces after the upgrade %v, before %v", got, bound)
	}
	c.execSays(ctx, ctr, "after upgrade", "echo", "after upgrade")
	later := c.createContainer(ctx, sandbox, cfg, "later", "sleep", "100000")
	c.inPodNamespaces([]int{pid, c.containerPid(ctx, later)}, bound)
	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("stop pod: %v", err)
	}
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("remove pod: %v", err)
	}
	c.waitFor("the pod's shim to exit", 20*time.Second, func() bool { return len(shimsFor(sandbox)) == 0 })
	c.nothingLeftOf(sandbox, shim, netns, socket)
}
