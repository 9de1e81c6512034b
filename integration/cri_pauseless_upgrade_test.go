package integration

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// TestCRIPauselessPodUpgrade: the shim of a pod held through containerd
// 2.x's sandbox API moves onto another binary in place. First onto one that
// crashes while taking the shim back: the old binary takes the pod back
// from the same state (a rollback), same holder, and serves on. Then onto
// a good one: its pid stays, its binary is the new one, the holder is the
// same process and the pod's
// container runs on in the holder's namespaces, printing without a gap or
// a doubled line; an exec in it works and the sandbox API answers from the
// new binary (ready, the same holder). The pod then stops (the holder
// ends) and is removed: the shim exits and leaves nothing behind.
func TestCRIPauselessPodUpgrade(t *testing.T) {
	if suite.ctd != nil && suite.ctd.Major < 2 {
		t.Skip("the sandbox API is containerd 2.x's (TestCRIShimSandboxerOnTheNodesNetwork covers 1.x)")
	}
	c := startCRIWith(t, criSetup{pauseless: true, network: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logDir := t.TempDir()
	cfg := c.sandboxConfig("upgraded", logDir)
	cfg.Hostname = "tether-upgraded"
	cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{
		Network: runtimeapi.NamespaceMode_POD, Ipc: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_POD,
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
	shim := shimsFor(sandbox)[0]
	holder := c.holderOf(shim.pid)
	netns, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(holder), "ns", "net"))
	socket := c.sandboxSocket(sandbox)
	ctr := c.createContainer(ctx, sandbox, cfg, "ticker", "sh", "-c",
		"i=0; while true; do echo tick$i; i=$((i+1)); usleep 20000; done")
	ctrPid := c.containerPid(ctx, ctr)
	c.sharesPodNamespaces(ctx, ctr, holder)
	ticks := filepath.Join(logDir, "ticker.log")
	c.waitForLog(ticks, "tick10\n")

	exe := func() string { p, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(shim.pid), "exe")); return p }
	before := exe()
	dir := t.TempDir()
	crashes := buildTether(t, dir, "crashes", "v-crash", "testCrashOnRestore=yes")
	next := buildTether(t, dir, "containerd-shim-tether-v2", "v-pod-next")

	out, err := upgradeShims(t, next, "-namespace", "k8s.io", "-id", ctr, "-binary", crashes)
	t.Logf("upgrade to a binary that crashes: %s", strings.TrimSpace(out))
	if err == nil || !strings.Contains(out, "result=failed") {
		t.Fatalf("upgrade to a binary that crashes: %v; want it reported as failed", err)
	}
	if got := shimsFor(sandbox); len(got) != 1 || got[0].pid != shim.pid || exe() != before || c.holderOf(shim.pid) != holder {
		t.Fatalf("after the rollback: shims %v running %s (want %s), holder %d", got, exe(), before, holder)
	}
	c.execSays(ctx, ctr, "tether-upgraded", "hostname")

	// The pod's shim is found by the pod's own id as well as by a container's.
	out, err = upgradeShims(t, next, "-namespace", "k8s.io", "-id", sandbox, "-binary", next)
	t.Logf("upgrade: %s", strings.TrimSpace(out))
	if err != nil || !strings.Contains(out, "result=ok") {
		t.Fatalf("upgrade of the pod's shim: %v", err)
	}
	if got := shimsFor(sandbox); len(got) != 1 || got[0].pid != shim.pid {
		t.Fatalf("shims after the upgrade: %v, want pid %d", got, shim.pid)
	}
	if got := exe(); got != next {
		t.Fatalf("shim runs %s, want %s", got, next)
	}
	if got := c.holderOf(shim.pid); got != holder {
		t.Fatalf("holder after the upgrade %d, was %d", got, holder)
	}
	if got := c.containerPid(ctx, ctr); got != ctrPid {
		t.Fatalf("container pid after the upgrade %d, was %d", got, ctrPid)
	}
	for _, ns := range []string{"net", "uts", "ipc", "pid"} {
		h, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(holder), "ns", ns))
		p, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(ctrPid), "ns", ns))
		t.Logf("after the upgrade: %s namespace of the holder %s, of the container %s", ns, h, p)
		if h == "" || h != p {
			t.Errorf("the container's %s namespace %q is not the holder's %q", ns, p, h)
		}
	}
	c.execSays(ctx, ctr, "tether-upgraded", "hostname")
	c.execSays(ctx, ctr, "tether-holder", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline | cut -d' ' -f1")
	c.checkUpgradedSandbox(ctx, sandbox, ctr, holder)
	status, err := c.runtime.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandbox})
	if err != nil || status.GetStatus().GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Fatalf("pod status after the upgrade %v %v", status.GetStatus().GetState(), err)
	}
	// The output goes on: a line well after the upgrade, and every line
	// before it once, in order.
	last := lastTick(t, ticks)
	c.waitForLog(ticks, "tick"+strconv.Itoa(last+25)+"\n")
	checkTicks(t, ticks)

	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("stop pod: %v", err)
	}
	if alive(holder) || alive(ctrPid) {
		t.Fatalf("holder %d (alive %v) or container %d (alive %v) outlived the pod's stop", holder, alive(holder), ctrPid, alive(ctrPid))
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
	if !strings.Contains(c.ctd.FullLog(), "sandbox taken back") {
		t.Error("the shim's log does not say it took the sandbox back")
	}
}

// containerPid is the pid of container id's process, as the CRI knows it.
func (c *criEnv) containerPid(ctx context.Context, id string) int {
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
	return info.Pid
}

// checkUpgradedSandbox asks the upgraded shim directly: it is the new
// binary, and its sandbox API answers as before the upgrade (the pod
// ready on the same holder, ping, platform, the pod cgroup's metrics).
func (c *criEnv) checkUpgradedSandbox(ctx context.Context, sandbox, ctr string, holder int) {
	c.t.Helper()
	client, err := harness.DialShimAddress(c.sandboxSocket(sandbox))
	if err != nil {
		c.t.Fatal(err)
	}
	resp, err := client.Connect(ctx, &task.ConnectRequest{Id: ctr})
	// Closed before the pod goes: a client left connected holds an exiting
	// shim back.
	client.Close()
	if err != nil || resp.GetVersion() != "v-pod-next" {
		c.t.Fatalf("connect after the upgrade: %v %v", resp, err)
	}
	c.checkSandboxAPI(ctx, sandbox, holder)
}

// tickLines are the numbers of the "tickN" lines of a CRI log, in order.
func tickLines(t *testing.T, path string) []int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line not in CRI format: %q", l)
		}
		n, err := strconv.Atoi(strings.TrimPrefix(m[4], "tick"))
		if m[2] != "stdout" || err != nil {
			t.Fatalf("unexpected log line %q", l)
		}
		out = append(out, n)
	}
	return out
}

func lastTick(t *testing.T, path string) int {
	ticks := tickLines(t, path)
	return ticks[len(ticks)-1]
}

// checkTicks fails unless the log holds tick0, tick1, ... in order, each
// once.
func checkTicks(t *testing.T, path string) {
	t.Helper()
	ticks := tickLines(t, path)
	for i, n := range ticks {
		if n != i {
			t.Fatalf("line %d of the log is tick%d (of %d lines): a line lost or doubled", i, n, len(ticks))
		}
	}
	t.Logf("the container printed %d lines, none lost or doubled", len(ticks))
}
