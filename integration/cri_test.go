package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// criEnv is a private containerd with its CRI plugin on and a runtime
// handler "tether", driven through the CRI's own gRPC API.
type criEnv struct {
	*env
	ctd     *harness.Containerd
	runtime runtimeapi.RuntimeServiceClient
	images  runtimeapi.ImageServiceClient
	runcLog string // every call of the runc wrapper the options name
	root    string // the runtime root the options name
}

// startCRI starts containerd with the CRI plugin, its handler "tether"
// configured with options (BinaryName, Root, SystemdCgroup) the way a
// Kubernetes node sets them, and the extra handlers extra returns (given
// the test's directory), and imports the busybox and pause images.
func startCRI(t *testing.T, extra ...func(dir string) harness.Handler) *criEnv {
	return startCRIWith(t, criSetup{pauseImage: true, extra: extra})
}

// criSetup is what a CRI test's containerd has besides the handler "tether".
type criSetup struct {
	pauseImage bool // import the pause image
	pauseless  bool // the handler harness.PauselessHandler
	network    bool // a pod network: CNI bridge and host-local, on this machine only
	// extra are more handlers, given the test's directory.
	extra []func(dir string) harness.Handler
}

// startCRIWith is startCRI with set's choices.
func startCRIWith(t *testing.T, set criSetup) *criEnv {
	e := setup(t)
	dir, err := os.MkdirTemp("", "tether-cri-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// containerd's state (the bundles) lies below: runc in a user
	// namespace must be able to pass through (runc 1.5.2 fails with
	// "remount-propagation ... permission denied" otherwise), as it can
	// through /run/containerd, which containerd makes 0711.
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	var handlers []harness.Handler
	for _, h := range set.extra {
		handlers = append(handlers, h(dir))
	}
	c := &criEnv{env: e, runcLog: filepath.Join(dir, "runc-calls.log"), root: filepath.Join(dir, "runc-root")}
	// A runc that records its calls, to show BinaryName is what runs.
	wrapper := filepath.Join(dir, "runc-wrapper")
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\necho \"$@\" >> "+c.runcLog+"\nexec "+runc+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	options := harness.NodeOptions(wrapper, c.root, suite.driver)
	optionsFile := filepath.Join(dir, "tether-options.toml")
	if err := os.WriteFile(optionsFile, []byte(options), 0o644); err != nil {
		t.Fatal(err)
	}
	opts := harness.Options{ShimDir: suite.shimDir, Dir: dir, Namespace: "k8s.io", EnableCRI: true,
		ContainerdBinary: suite.ctd.ContainerdBinary, CtrBinary: suite.ctd.CtrBinary}
	settings := harness.CRISettings{Options: options, OptionsFile: optionsFile, Pauseless: set.pauseless,
		Handlers: handlers}
	if set.network {
		settings.CNIBinDir, settings.CNIConfDir = podNetwork(t, dir)
	}
	opts.ExtraConfig = harness.CRIConfig(suite.ctd.Major, settings)
	ctd, err := harness.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("containerd (CRI) log:\n%s", ctd.Log())
		}
		ctd.Stop()
	})
	c.ctd = ctd
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ctd.ImportBusybox(ctx, suite.busybox); err != nil {
		t.Fatal(err)
	}
	if set.pauseImage {
		if err := importPause(ctx, ctd, dir); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := grpc.NewClient("unix://"+ctd.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c.runtime = runtimeapi.NewRuntimeServiceClient(conn)
	c.images = runtimeapi.NewImageServiceClient(conn)
	return c
}

// importPause builds a static pause binary and imports it as the sandbox image.
func importPause(ctx context.Context, ctd *harness.Containerd, dir string) error {
	bin := filepath.Join(dir, "pause")
	root, _ := filepath.Abs("..")
	if err := harness.BuildProgram(root, "pause", bin); err != nil {
		return err
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	layer, err := harness.FileLayer("pause", data)
	if err != nil {
		return err
	}
	tarPath := filepath.Join(dir, "pause-oci.tar")
	if err := harness.WriteImage(tarPath, harness.PauseImageName, layer, []string{"/pause"}); err != nil {
		return err
	}
	_, err = ctd.Ctr(ctx, nil, "images", "import", tarPath)
	return err
}

// sandboxConfig is a pod's configuration as the kubelet writes it: a
// BestEffort pod's cgroup parent for the suite's driver (a slice with
// systemd), which goes once the test is over (the kubelet removes it).
func (c *criEnv) sandboxConfig(name, logDir string) *runtimeapi.PodSandboxConfig {
	uid := c.id("uid")
	parent := suite.driver.PodCgroupParent(uid)
	c.t.Cleanup(func() { c.removePodCgroup(parent) })
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: uid, Namespace: "default"},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: parent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				// No CNI on this host: the pod uses the node's network.
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE},
			}},
	}
}

// removePodCgroup removes a pod's cgroup parent as the kubelet does once
// the pod is gone: its slice stopped (systemd), or its cgroup removed in
// every hierarchy (cgroupfs; runc made it for the pod's first container
// and removed only the containers' own). The kubepods parents stay, as on
// a node (other runs on this machine may be using them).
func (c *criEnv) removePodCgroup(parent string) {
	report := c.t.Errorf
	if c.t.Failed() { // what the failed test left may still run there
		report = c.t.Logf
	}
	if suite.driver == harness.Systemd {
		if err := harness.StopUnit(parent); err != nil {
			report("remove the pod's slice: %v", err)
		}
		return
	}
	dirs, _ := filepath.Glob("/sys/fs/cgroup/*" + parent)
	dirs = append(dirs, "/sys/fs/cgroup"+parent)
	for _, dir := range dirs {
		if err := os.Remove(dir); err != nil && !os.IsNotExist(err) {
			report("remove the pod's cgroup: %v", err)
		}
	}
}

// createContainer creates and starts a container in the pod, with the
// pod's namespace modes, as the kubelet gives them to each container.
func (c *criEnv) createContainer(ctx context.Context, sandbox string, cfg *runtimeapi.PodSandboxConfig, name string, cmd ...string) string {
	c.t.Helper()
	var linux *runtimeapi.LinuxContainerConfig
	if ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(); ns != nil {
		linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: ns.GetNetwork(), Ipc: ns.GetIpc(), Pid: ns.GetPid()},
		}}
	}
	resp, err := c.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  sandbox,
		SandboxConfig: cfg,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: name},
			Image:    &runtimeapi.ImageSpec{Image: harness.BusyboxImageName},
			Command:  cmd,
			LogPath:  name + ".log",
			Linux:    linux,
		},
	})
	if err != nil {
		c.t.Fatalf("create container %s: %v", name, err)
	}
	if _, err := c.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: resp.GetContainerId()}); err != nil {
		c.t.Fatalf("start container %s: %v", name, err)
	}
	return resp.GetContainerId()
}

// criLogLine is the CRI container log format: time, stream, tag, text.
var criLogLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) (stdout|stderr) (F|P) (.*)$`)

// TestCRIPodThroughTether runs a Kubernetes-style pod through the CRI with
// the runtime handler "tether": sandbox, a container whose output lands in
// its CRI log, an exec, then a second container that joins the pod's shim;
// everything stopped and removed in the end.
func TestCRIPodThroughTether(t *testing.T) {
	c := startCRI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	logDir := t.TempDir()
	cfg := c.sandboxConfig("tether-pod", logDir)
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: "tether"})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	if len(shimsFor(sandbox)) != 1 {
		t.Fatalf("pod sandbox is not served by tether: shims %v", shimsFor(sandbox))
	}

	first := c.createContainer(ctx, sandbox, cfg, "first", "sh", "-c", "echo hello from the first container; echo to stderr >&2; sleep 100000")
	ex, err := c.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: first, Cmd: []string{"sh", "-c", "echo exec out; echo exec err >&2; exit 3"}, Timeout: 30})
	if err != nil {
		t.Fatalf("exec sync: %v", err)
	}
	if string(ex.GetStdout()) != "exec out\n" || string(ex.GetStderr()) != "exec err\n" || ex.GetExitCode() != 3 {
		t.Fatalf("exec: stdout %q stderr %q exit %d", ex.GetStdout(), ex.GetStderr(), ex.GetExitCode())
	}
	var lines []string
	c.waitFor("the container's CRI log", 20*time.Second, func() bool {
		data, _ := os.ReadFile(filepath.Join(logDir, "first.log"))
		lines = strings.Split(strings.TrimSpace(string(data)), "\n")
		return len(lines) >= 2
	})
	want := map[string]string{"stdout": "hello from the first container", "stderr": "to stderr"}
	for _, l := range lines {
		m := criLogLine.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("log line not in CRI format: %q", l)
		}
		if want[m[2]] == m[4] {
			delete(want, m[2])
		}
	}
	if len(want) != 0 {
		t.Fatalf("CRI log %q lacks %v", lines, want)
	}

	second := c.createContainer(ctx, sandbox, cfg, "second", "sleep", "100000")
	ex, err = c.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: second, Cmd: []string{"echo", "second says hi"}, Timeout: 30})
	if err != nil || string(ex.GetStdout()) != "second says hi\n" {
		t.Fatalf("exec in the second container: %q %v", ex.GetStdout(), err)
	}
	// One shim for the whole pod: started for the sandbox, joined by both.
	if len(shimsFor(sandbox)) != 1 || len(shimsFor(first)) != 0 || len(shimsFor(second)) != 0 {
		t.Fatalf("shims: sandbox %v, first %v, second %v; want one, the sandbox's", shimsFor(sandbox), shimsFor(first), shimsFor(second))
	}
	// The sandbox's shim serves both containers (containerd 2.x does not
	// even run start for them: it reuses the sandbox's shim connection).
	address, err := c.ctd.ShimAddress(sandbox)
	if err != nil {
		t.Fatal(err)
	}
	client, err := harness.DialShimAddress(address)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{first, second} {
		st, err := client.State(ctx, &task.StateRequest{Id: id})
		if err != nil || st.GetStatus().String() != "RUNNING" {
			client.Close()
			t.Fatalf("the pod's shim on %s: %v %v", id, st.GetStatus(), err)
		}
	}
	// A client left connected holds an exiting shim back (up to 2 s).
	client.Close()
	status, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: first})
	if err != nil || status.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Fatalf("first container status %v %v", status.GetStatus().GetState(), err)
	}

	// The options from containerd's CRI configuration reached tether.
	calls, _ := os.ReadFile(c.runcLog)
	if !strings.Contains(string(calls), "--root "+filepath.Join(c.root, "k8s.io")) || !strings.Contains(string(calls), " create ") {
		t.Fatalf("the runc of BinaryName ran with the Root of the options? calls:\n%s", calls)
	}
	for _, id := range []string{sandbox, first, second} {
		if _, err := os.Stat(filepath.Join(c.root, "k8s.io", id)); err != nil {
			t.Fatalf("no runtime state for %s under the configured root: %v", id, err)
		}
	}

	for _, id := range []string{first, second} {
		if _, err := c.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 5}); err != nil {
			t.Fatalf("stop %s: %v", id, err)
		}
		st, _ := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if st.GetStatus().GetState() != runtimeapi.ContainerState_CONTAINER_EXITED {
			t.Fatalf("%s after stop: %v", id, st.GetStatus().GetState())
		}
		if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("remove %s: %v", id, err)
		}
	}
	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("stop pod: %v", err)
	}
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		t.Fatalf("remove pod: %v", err)
	}
	c.waitFor("the pod's shim to exit", 20*time.Second, func() bool { return len(shimsFor(sandbox)) == 0 })
	if m := mountsMatching(sandbox); len(m) > 0 {
		t.Fatalf("mounts left: %v", m)
	}
}
