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

	v1stats "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2stats "github.com/containerd/cgroups/v3/cgroup2/stats"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	"github.com/tether-shim/tether/proto/task"
)

// TestCRIPauselessPod runs a pod through the handler with sandboxer =
// "shim" on containerd 2.x: no pause container and no pause image (none is
// imported; a pull would fail offline). The pod has a network of its own
// (CNI bridge), and shares IPC, UTS and pid namespaces, all held by
// tether's holder process (the pid namespace's init: a pod that shares one
// needs a process); two containers join them, take exec, and one is
// restarted; the pod's hostname, DNS settings, sysctls and /dev/shm reach
// the containers; the holder is pid 1 of the pod, out of their reach, and
// deaf to their SIGTERM and SIGINT. Stopping the pod ends the holder;
// removing it ends the shim and leaves nothing behind: no process, mount,
// netns bind, socket or file.
func TestCRIPauselessPod(t *testing.T) {
	if suite.ctd != nil && suite.ctd.Major < 2 {
		t.Skip("the sandbox API is containerd 2.x's (TestCRIShimSandboxerOnTheNodesNetwork covers 1.x)")
	}
	c := startCRIWith(t, criSetup{pauseless: true, network: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := c.sandboxConfig("pauseless", t.TempDir())
	cfg.Hostname = "tether-pod-host"
	cfg.DnsConfig = &runtimeapi.DNSConfig{Servers: []string{"192.0.2.53"}, Searches: []string{"tether.test"}, Options: []string{"ndots:2"}}
	cfg.Linux.Sysctls = map[string]string{"kernel.shmmni": "2048", "net.ipv4.tcp_syncookies": "0"}
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_POD,
	}
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: harness.PauselessHandler})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	t.Cleanup(func() {
		// After a failure: what runs in the pod cgroup goes before it.
		if t.Failed() {
			c.runtime.StopPodSandbox(context.Background(), &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
			c.runtime.RemovePodSandbox(context.Background(), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
		}
	})
	shims := shimsFor(sandbox)
	if len(shims) != 1 {
		t.Fatalf("shims for the pod: %v, want one", shims)
	}
	holder := c.holderOf(shims[0].pid)
	if p := c.pauseProcesses(); len(p) > 0 {
		t.Fatalf("pause processes: %v", p)
	}
	if _, err := os.Stat(filepath.Join(c.root, "k8s.io", sandbox)); err == nil {
		t.Fatal("the runtime has a container for the sandbox")
	}
	status, err := c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox, Verbose: true})
	if err != nil || status.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY || status.GetStatus().GetNetwork().GetIp() == "" {
		t.Fatalf("pod status %v (ip %q) %v", status.GetStatus().GetState(), status.GetStatus().GetNetwork().GetIp(), err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(status.GetInfo()["info"]), &info); err != nil || info.Pid != holder {
		t.Fatalf("verbose info %q (%v): want the holder %d", status.GetInfo()["info"], err, holder)
	}
	// The pod's network namespace, as containerd bound it for CNI.
	netns, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(holder), "ns", "net"))
	if binds := mountsMatching(" " + netns + " "); len(binds) != 1 {
		t.Fatalf("binds of the holder's network namespace %s: %v, want containerd's one", netns, binds)
	}
	socket := c.sandboxSocket(sandbox)

	first := c.createContainer(ctx, sandbox, cfg, "first", "sleep", "100000")
	second := c.createContainer(ctx, sandbox, cfg, "second", "sleep", "100000")
	if len(shimsFor(sandbox)) != 1 || len(shimsFor(first)) != 0 || len(shimsFor(second)) != 0 {
		t.Fatal("the pod's containers are not all served by the pod's one shim")
	}
	for _, id := range []string{first, second} {
		c.sharesPodNamespaces(ctx, id, holder)
	}
	c.checkHolderPlacement(holder, sandbox, cfg.Linux.CgroupParent)
	if self, _ := os.Readlink("/proc/self/ns/net"); self == netns {
		t.Fatal("the pod is on the node's network")
	}
	// The holder keeps no privilege a container in its pid namespace could
	// borrow.
	if st := procStatus(holder); st["CapEff"] != "0000000000000000" || st["CapPrm"] != "0000000000000000" || st["NoNewPrivs"] != "1" {
		t.Fatalf("holder's privileges: %v", st)
	}
	c.execSays(ctx, first, "tether-pod-host", "hostname")
	c.execSays(ctx, second, "tether-pod-host", "cat", "/etc/hostname")
	c.execSays(ctx, first, "search tether.test\nnameserver 192.0.2.53\noptions ndots:2", "cat", "/etc/resolv.conf")
	c.execSays(ctx, first, "2048", "cat", "/proc/sys/kernel/shmmni")
	c.execSays(ctx, second, "0", "cat", "/proc/sys/net/ipv4/tcp_syncookies")
	c.execSays(ctx, second, "0", "cat", "/proc/sys/net/ipv4/ip_unprivileged_port_start")
	c.execSays(ctx, first, status.GetStatus().GetNetwork().GetIp(), "sh", "-c", "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1")
	// One /dev/shm for the pod.
	c.execSays(ctx, first, "", "sh", "-c", "echo shared > /dev/shm/from-first")
	c.execSays(ctx, second, "shared", "cat", "/dev/shm/from-first")
	// The holder is the pod's pid 1, and its /proc entries are closed to
	// the containers without CAP_SYS_PTRACE (TestCRIPauselessHolderRootWithPtrace
	// gives one that capability).
	c.execSays(ctx, second, "tether-holder", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1")
	c.execSays(ctx, second, "denied", "sh", "-c", "ls /proc/1/root/ >/dev/null 2>&1 && echo open || echo denied")

	// An orphan of the pod goes to its pid namespace's init, the holder,
	// which reaps it as a pause process would.
	c.execSays(ctx, first, "", "sh", "-c", "(sleep 2 </dev/null >/dev/null 2>&1 &) ; exit 0")
	holderChildren := func() (n int) {
		for _, p := range processes() {
			if p.ppid == holder {
				n++
			}
		}
		return n
	}
	c.waitFor("the pod's orphan to be the holder's", 20*time.Second, func() bool { return holderChildren() == 1 })
	c.waitFor("the holder to reap the pod's orphan", 20*time.Second, func() bool { return holderChildren() == 0 })

	// Root in the pod signals its pid 1: the holder ignores it (the
	// kernel drops an ignored signal as it is sent), and lives on.
	c.execSays(ctx, second, "", "sh", "-c", "kill -TERM 1 && kill -INT 1")
	st := procStatus(holder)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		if !inSigmask(st["SigIgn"], sig) || inSigmask(st["SigPnd"], sig) || inSigmask(st["ShdPnd"], sig) {
			t.Fatalf("holder and %v: ignored %s, pending %s/%s", sig, st["SigIgn"], st["SigPnd"], st["ShdPnd"])
		}
	}
	if !alive(holder) || st["State"][0] == 'Z' {
		t.Fatalf("holder %d ended by the pod's signals", holder)
	}
	t.Logf("holder: %s resident", st["VmRSS"])

	c.checkSandboxAPI(ctx, sandbox, holder)
	// The CRI's pod stats come from SandboxMetrics: the pod's cgroup parent.
	stats, err := c.runtime.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: sandbox})
	if err != nil || stats.GetStats().GetLinux().GetMemory().GetWorkingSetBytes().GetValue() == 0 ||
		stats.GetStats().GetLinux().GetCpu().GetUsageCoreNanoSeconds().GetValue() == 0 {
		t.Fatalf("pod stats %v %v", stats.GetStats().GetLinux(), err)
	}

	// A container of the pod restarted: it joins the same namespaces.
	if _, err := c.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: first, Timeout: 5}); err != nil {
		t.Fatalf("stop first: %v", err)
	}
	if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: first}); err != nil {
		t.Fatalf("remove first: %v", err)
	}
	if len(shimsFor(sandbox)) != 1 || c.holderOf(shims[0].pid) != holder {
		t.Fatal("the pod's shim or holder went with its first container")
	}
	again := c.createContainer(ctx, sandbox, cfg, "first-again", "sleep", "100000")
	c.sharesPodNamespaces(ctx, again, holder)
	c.execSays(ctx, again, "shared", "cat", "/dev/shm/from-first")

	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("stop pod: %v", err)
	}
	if alive(holder) {
		t.Fatalf("holder %d outlived the pod's stop", holder)
	}
	status, err = c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox})
	if err != nil || status.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Fatalf("stopped pod status %v %v", status.GetStatus().GetState(), err)
	}
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("remove pod: %v", err)
	}
	c.waitFor("the pod's shim to exit", 20*time.Second, func() bool { return len(shimsFor(sandbox)) == 0 })
	c.nothingLeftOf(sandbox, shims[0], netns, socket)
	c.checkHolderCgroupGone(sandbox, cfg.Linux.CgroupParent)
}

// inSigmask reports whether sig is in a /proc/PID/status signal mask.
func inSigmask(mask string, sig syscall.Signal) bool {
	bits, err := strconv.ParseUint(mask, 16, 64)
	return err == nil && bits&(1<<(uint(sig)-1)) != 0
}

// holderOf is the pid of the holder process the shim shimPid started.
func (c *criEnv) holderOf(shimPid int) int {
	c.t.Helper()
	var found []int
	for _, p := range processes() {
		if p.ppid == shimPid && len(p.cmdline) > 0 && p.cmdline[0] == "tether-holder" {
			found = append(found, p.pid)
		}
	}
	if len(found) != 1 {
		c.t.Fatalf("holders of shim %d: %v, want one", shimPid, found)
	}
	return found[0]
}

// pauseProcesses lists the pause containers' processes of this test's
// containerd (a shim of its own is their parent): other tests on the
// machine run theirs.
func (c *criEnv) pauseProcesses() []process {
	shims := map[int]bool{}
	all := processes()
	for _, p := range all {
		for i, a := range p.cmdline {
			if a == "-address" && i+1 < len(p.cmdline) && p.cmdline[i+1] == c.ctd.Address {
				shims[p.pid] = true
			}
		}
	}
	var out []process
	for _, p := range all {
		if len(p.cmdline) > 0 && p.cmdline[0] == "/pause" && shims[p.ppid] {
			out = append(out, p)
		}
	}
	return out
}

// procStatus reads /proc/PID/status as key: value.
func procStatus(pid int) map[string]string {
	data, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	st := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			st[k] = strings.TrimSpace(v)
		}
	}
	return st
}

func alive(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}

// sharesPodNamespaces checks that container id's process is in the pod's
// network, IPC, UTS and pid namespaces: the holder's.
func (c *criEnv) sharesPodNamespaces(ctx context.Context, id string, holder int) {
	c.t.Helper()
	st, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		c.t.Fatal(err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid == 0 {
		c.t.Fatalf("container %s: no pid in its info: %v", id, err)
	}
	for _, ns := range []string{"net", "ipc", "uts", "pid"} {
		want, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(holder), "ns", ns))
		got, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(info.Pid), "ns", ns))
		if got == "" || got != want {
			c.t.Errorf("container %s (pid %d) in %s namespace %q, the holder %d in %q", id, info.Pid, ns, got, holder, want)
		}
	}
}

// execSays runs cmd in container id and wants its trimmed stdout.
func (c *criEnv) execSays(ctx context.Context, id, want string, cmd ...string) {
	c.t.Helper()
	ex, err := c.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 30})
	if err != nil || ex.GetExitCode() != 0 {
		c.t.Fatalf("exec %v in %s: %v, exit %d, stderr %q", cmd, id, err, ex.GetExitCode(), ex.GetStderr())
	}
	if got := strings.TrimSpace(string(ex.GetStdout())); got != want {
		c.t.Fatalf("exec %v in %s: %q, want %q", cmd, id, got, want)
	}
}

// sandboxBundle is where containerd 2.x keeps a shim sandbox's bundle.
func (c *criEnv) sandboxBundle(id string) string {
	return filepath.Join(c.ctd.Dir, "state", "io.containerd.sandbox.controller.v1.shim", "k8s.io", id)
}

// sandboxSocket is the socket of the pod's shim, as its bundle names it.
func (c *criEnv) sandboxSocket(id string) string {
	c.t.Helper()
	data, err := os.ReadFile(filepath.Join(c.sandboxBundle(id), "address"))
	if err != nil {
		c.t.Fatal(err)
	}
	return strings.TrimPrefix(strings.TrimSpace(string(data)), "unix://")
}

// checkSandboxAPI asks the pod's shim directly what CRI does not show:
// status, platform, ping, and metrics of the pod's cgroup parent.
func (c *criEnv) checkSandboxAPI(ctx context.Context, sandbox string, holder int) {
	c.t.Helper()
	client, err := harness.DialShimAddress(c.sandboxSocket(sandbox))
	if err != nil {
		c.t.Fatal(err)
	}
	// Closed before the pod goes: a client left connected holds an exiting
	// shim back (up to 2 s).
	defer client.Close()
	api := client.Sandbox()
	st, err := api.SandboxStatus(ctx, &sandboxapi.SandboxStatusRequest{SandboxId: sandbox})
	if err != nil || st.GetState() != "SANDBOX_READY" || int(st.GetPid()) != holder || st.GetCreatedAt() == nil {
		c.t.Fatalf("sandbox status %v %v", st, err)
	}
	if _, err := api.PingSandbox(ctx, &sandboxapi.PingRequest{SandboxId: sandbox}); err != nil {
		c.t.Fatalf("ping: %v", err)
	}
	pl, err := api.Platform(ctx, &sandboxapi.PlatformRequest{SandboxId: sandbox})
	if err != nil || pl.GetPlatform().GetOs() != "linux" || pl.GetPlatform().GetArchitecture() == "" {
		c.t.Fatalf("platform %v %v", pl, err)
	}
	m, err := api.SandboxMetrics(ctx, &sandboxapi.SandboxMetricsRequest{SandboxId: sandbox})
	if err != nil || m.GetMetrics().GetId() != sandbox {
		c.t.Fatalf("metrics %v %v", m, err)
	}
	if url := m.GetMetrics().GetData().GetTypeUrl(); url != "io.containerd.cgroups.v1.Metrics" && url != "io.containerd.cgroups.v2.Metrics" {
		c.t.Fatalf("metrics of type %q", url)
	}
	if mem := cgroupMemory(m.GetMetrics().GetData()); mem == 0 {
		c.t.Fatal("the pod's cgroup uses no memory")
	}
	if _, err := api.PingSandbox(ctx, &sandboxapi.PingRequest{SandboxId: "another-pod"}); err == nil {
		c.t.Fatal("the pod's shim answers for another pod")
	}
	if _, err := client.State(ctx, &task.StateRequest{Id: sandbox}); err == nil {
		c.t.Fatal("the sandbox is a task of the shim")
	}
}

// nothingLeftOf checks that a removed pod left nothing: no holder, shim or
// socket, no mount naming it, no bind of its network namespace netns
// ("net:[inode]"), no files of it, no bundle.
func (c *criEnv) nothingLeftOf(sandbox string, shim process, netns, socket string) {
	c.t.Helper()
	for _, p := range processes() {
		if p.ppid == shim.pid || (len(p.cmdline) > 0 && p.cmdline[0] == "tether-holder" && slices.Contains(p.cmdline, sandbox)) {
			c.t.Errorf("process left: %d %v", p.pid, p.cmdline)
		}
	}
	if m := mountsMatching(sandbox); len(m) > 0 {
		c.t.Errorf("mounts left: %v", m)
	}
	if m := mountsMatching(" " + netns + " "); len(m) > 0 {
		c.t.Errorf("network namespace bind left: %v", m)
	}
	for _, path := range []string{
		c.sandboxBundle(sandbox),
		filepath.Join(c.ctd.Dir, "root", "io.containerd.grpc.v1.cri", "sandboxes", sandbox),
		filepath.Join(c.ctd.Dir, "state", "io.containerd.grpc.v1.cri", "sandboxes", sandbox),
	} {
		if _, err := os.Stat(path); err == nil {
			c.t.Errorf("%s left behind", path)
		}
	}
	if _, err := os.Stat(socket); err == nil {
		c.t.Errorf("shim socket %s left behind", socket)
	}
}

// cgroupMemory is the memory usage in cgroup statistics (v1 or v2).
func cgroupMemory(a *anypb.Any) uint64 {
	if a.GetTypeUrl() == "io.containerd.cgroups.v1.Metrics" {
		var m v1stats.Metrics
		if proto.Unmarshal(a.GetValue(), &m) != nil {
			return 0
		}
		return m.GetMemory().GetUsage().GetUsage()
	}
	var m v2stats.Metrics
	if proto.Unmarshal(a.GetValue(), &m) != nil {
		return 0
	}
	return m.GetMemory().GetUsage()
}
