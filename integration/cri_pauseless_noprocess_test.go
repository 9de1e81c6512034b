package integration

import (
	"context"
	"encoding/json"
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

// TestCRIPauselessPodWithoutAProcess: a pod whose containers have a pid
// namespace each (Kubernetes' default) runs through the handler with
// sandboxer = "shim" on containerd 2.x with no process of its own at
// all: none but its shim and its containers. Its network namespace is
// containerd's, its UTS and IPC namespaces are bound to files in the
// sandbox's bundle; both containers (and a restarted one) are in those,
// each in a pid namespace of its own; the pod's hostname, DNS settings,
// sysctls and /dev/shm reach them. A container that asks for the pod's pid
// namespace, which this pod has not, is refused with the reason. Stopping
// the pod unbinds its namespaces; removing it leaves nothing behind.
func TestCRIPauselessPodWithoutAProcess(t *testing.T) {
	if suite.ctd != nil && suite.ctd.Major < 2 {
		t.Skip("the sandbox API is containerd 2.x's")
	}
	c := startCRIWith(t, criSetup{pauseless: true, network: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := c.sandboxConfig("noprocess", t.TempDir())
	cfg.Hostname = "tether-no-process"
	cfg.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"192.0.2.53"}, Searches: []string{"tether.test"}}
	cfg.Linux.Sysctls = map[string]string{"kernel.shmmni": "2048", "net.ipv4.tcp_syncookies": "0"}
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER,
	}
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
	shims := shimsFor(sandbox)
	if len(shims) != 1 {
		t.Fatalf("shims for the pod: %v, want one", shims)
	}
	shim := shims[0]
	if kids := childrenOf(shim.pid); len(kids) != 0 {
		t.Fatalf("the pod's shim has processes before any container: %v", kids)
	}
	status, err := c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox, Verbose: true})
	if err != nil || status.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || status.GetStatus().GetNetwork().GetIp() == "" {
		t.Fatalf("pod status %v (ip %q) %v", status.GetStatus().GetState(), status.GetStatus().GetNetwork().GetIp(), err)
	}
	var info struct {
		Pid *int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(status.GetInfo()["info"]), &info); err != nil || info.Pid == nil || *info.Pid != 0 {
		t.Fatalf("verbose info %q (%v): want pid 0", status.GetInfo()["info"], err)
	}
	bound := c.boundNamespaces(sandbox)
	socket := c.sandboxSocket(sandbox)

	first := c.createContainer(ctx, sandbox, cfg, "first", "sleep", "100000")
	second := c.createContainer(ctx, sandbox, cfg, "second", "sleep", "100000")
	pids := []int{c.containerPid(ctx, first), c.containerPid(ctx, second)}
	if kids := childrenOf(shim.pid); !slices.Equal(kids, sorted(pids)) {
		t.Fatalf("the shim's processes %v, want only its containers' %v", kids, pids)
	}
	if p := processesNamed("tether-holder", "-id", sandbox); len(p) > 0 || len(c.pauseProcesses()) > 0 {
		t.Fatalf("a process for the pod: %v %v", p, c.pauseProcesses())
	}
	netns := c.inPodNamespaces(pids, bound)
	c.execSays(ctx, first, "tether-no-process", "hostname")
	c.execSays(ctx, second, "tether-no-process", "cat", "/etc/hostname")
	c.execSays(ctx, first, "search tether.test\nnameserver 192.0.2.53", "cat", "/etc/resolv.conf")
	c.execSays(ctx, second, "2048", "cat", "/proc/sys/kernel/shmmni")
	c.execSays(ctx, first, "0", "cat", "/proc/sys/net/ipv4/tcp_syncookies")
	c.execSays(ctx, first, "0", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")
	c.execSays(ctx, second, status.GetStatus().GetNetwork().GetIp(), "sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
	c.execSays(ctx, first, "", "sh", "-c", "echo shared > /dev/shm/from-first")
	c.execSays(ctx, second, "shared", "cat", "/dev/shm/from-first")
	// Each container is pid 1 of its own pid namespace.
	c.execSays(ctx, first, "sleep", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1")
	c.checkSandboxAPI(ctx, sandbox, 0)

	// The pod's pid namespace, which it has not: refused, with why.
	shares := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "shares-pid"}, Image: &runtimeapi.ImageSpec{Image: harness.BusyboxImageName},
		Command: []string{"sleep", "100000"}, LogPath: "shares-pid.log",
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_POD},
		}},
	}
	created, err := c.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandbox, SandboxConfig: cfg, Config: shares})
	if err != nil {
		t.Fatalf("create a container sharing the pod's pid namespace: %v", err)
	}
	_, err = c.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: created.GetContainerId()})
	if err == nil || !strings.Contains(err.Error(), "pid namespace") {
		t.Fatalf("a container in the pod's pid namespace, which it has not: %v", err)
	}
	t.Logf("refused: %v", err)
	if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: created.GetContainerId()}); err != nil {
		t.Fatalf("remove the refused container: %v", err)
	}

	// A container of the pod restarted: the same namespaces.
	if _, err := c.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: first, Timeout: 5}); err != nil {
		t.Fatalf("stop first: %v", err)
	}
	if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: first}); err != nil {
		t.Fatalf("remove first: %v", err)
	}
	again := c.createContainer(ctx, sandbox, cfg, "first-again", "sleep", "100000")
	c.inPodNamespaces([]int{c.containerPid(ctx, again), pids[1]}, bound)
	c.execSays(ctx, again, "shared", "cat", "/dev/shm/from-first")

	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("stop pod: %v", err)
	}
	if m := mountsMatching(filepath.Join(c.sandboxBundle(sandbox), "ns")); len(m) > 0 {
		t.Fatalf("the pod's namespaces still bound after its stop: %v", m)
	}
	status, err = c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox})
	if err != nil || status.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("stopped pod status %v %v", status.GetStatus().GetState(), err)
	}
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("remove pod: %v", err)
	}
	c.waitFor("the pod's shim to exit", 20*time.Second, func() bool { return len(shimsFor(sandbox)) == 0 })
	c.nothingLeftOf(sandbox, shim, netns, socket)
}

// childrenOf lists pid's child processes, sorted.
func childrenOf(pid int) []int {
	var out []int
	for _, p := range processes() {
		if p.ppid == pid {
			out = append(out, p.pid)
		}
	}
	return sorted(out)
}

func sorted(pids []int) []int {
	out := slices.Clone(pids)
	slices.Sort(out)
	return out
}

// nsLink is pid's namespace of kind ("net:[inode]").
func nsLink(pid int, kind string) string {
	link, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", kind))
	return link
}

// boundNamespaces are the namespaces a pod without a holder has bound in
// its sandbox's bundle, by kind ("uts:[inode]"): the two must be there.
func (c *criEnv) boundNamespaces(sandbox string) map[string]string {
	c.t.Helper()
	out := map[string]string{}
	for _, kind := range []string{"uts", "ipc"} {
		path := filepath.Join(c.sandboxBundle(sandbox), "ns", kind)
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			c.t.Fatalf("the pod's %s namespace: %v", kind, err)
		}
		if m := mountsMatching(" " + path + " "); len(m) != 1 {
			c.t.Fatalf("the pod's %s namespace at %s: mounts %v", kind, path, m)
		}
		out[kind] = kind + ":[" + strconv.FormatUint(st.Ino, 10) + "]"
	}
	return out
}

// inPodNamespaces checks that the processes pids are in the pod's bound
// namespaces, in one network namespace that is not the node's (which it
// returns), each in a pid namespace of its own.
func (c *criEnv) inPodNamespaces(pids []int, bound map[string]string) string {
	c.t.Helper()
	netns := nsLink(pids[0], "net")
	if self, _ := os.Readlink("/proc/self/ns/net"); netns == "" || netns == self {
		c.t.Fatalf("the pod's network namespace %q, the node's %q", netns, self)
	}
	pidNS := map[string]bool{nsLink(os.Getpid(), "pid"): true}
	for _, pid := range pids {
		for kind, want := range bound {
			if got := nsLink(pid, kind); got != want {
				c.t.Errorf("process %d in %s namespace %s, the pod's is %s", pid, kind, got, want)
			}
		}
		if got := nsLink(pid, "net"); got != netns {
			c.t.Errorf("process %d in network namespace %s, the pod's is %s", pid, got, netns)
		}
		if p := nsLink(pid, "pid"); pidNS[p] {
			c.t.Errorf("process %d shares pid namespace %s", pid, p)
		} else {
			pidNS[p] = true
		}
	}
	if binds := mountsMatching(" " + netns + " "); len(binds) != 1 {
		c.t.Fatalf("binds of the pod's network namespace %s: %v, want containerd's one", netns, binds)
	}
	return netns
}
