package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/tether-shim/tether/integration/harness"
)

// The user namespace every pod of these tests gets: container ids 0-65535
// are host ids 1048576-1114111.
const (
	usernsHostID = 1 << 20
	usernsSize   = 1 << 16
)

// usernsRunc is the runc the user-namespaced handler runs: runc v1.5.2,
// which `make runc` builds (TETHER_RUNC). Debian 12's runc 1.1.5 reports no
// mountExtensions.idmap, so containerd would not offer user namespaces.
func usernsRunc(t *testing.T) string {
	t.Helper()
	p := os.Getenv("TETHER_RUNC")
	if _, err := os.Stat(p); p == "" || err != nil {
		msg := fmt.Sprintf("no runc v1.5.2 at TETHER_RUNC=%q (make runc builds it)", p)
		if os.Getenv("TETHER_INTEGRATION") == "require" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED: " + msg)
	}
	return p
}

// usernsHandler is the CRI handler "tether-userns" exactly as the README
// gives it: tether as the shim of a runc-type handler (runtime_type
// io.containerd.runc.v2, runtime_path tether's binary) with runc's options,
// so that containerd hands BinaryName to -info, to start and to every
// Create, including the ones of user-namespaced pods, where its CRI adds
// the pipes' owner to the handler's options; BinaryName is a wrapper that
// records its calls and runs runcPath.
func usernsHandler(runcPath string) func(dir string) harness.Handler {
	return func(dir string) harness.Handler {
		wrapper := filepath.Join(dir, "runc-userns")
		script := "#!/bin/sh\necho \"$@\" >> " + filepath.Join(dir, "runc-userns-calls.log") + "\nexec " + runcPath + " \"$@\"\n"
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			panic(err)
		}
		return harness.Handler{
			Name: "tether-userns",
			Type: "io.containerd.runc.v2",
			Path: filepath.Join(suite.shimDir, "containerd-shim-tether-v2"),
			Options: fmt.Sprintf("BinaryName = %q\nRoot = %q\n%s",
				wrapper, filepath.Join(dir, "runc-userns-root"), suite.driver.OptionLine()),
		}
	}
}

// usernsOptions is a pod-level user namespace with the tests' mapping.
func usernsOptions() *runtimeapi.NamespaceOption {
	ids := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: usernsHostID, Length: usernsSize}}
	return &runtimeapi.NamespaceOption{
		Network:       runtimeapi.NamespaceMode_NODE,
		UsernsOptions: &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD, Uids: ids, Gids: ids},
	}
}

// handlerFeatures returns the features the CRI Status reports for a handler.
func (c *criEnv) handlerFeatures(ctx context.Context, name string) (*runtimeapi.RuntimeHandlerFeatures, bool) {
	c.t.Helper()
	st, err := c.runtime.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		c.t.Fatalf("CRI status: %v", err)
	}
	for _, h := range st.GetRuntimeHandlers() {
		if h.GetName() == name {
			return h.GetFeatures(), true
		}
	}
	return nil, false
}

// start creates and starts a container from cfg (its image, log path and
// user namespace filled in) in the pod.
func (c *criEnv) start(ctx context.Context, sandbox string, pod *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	c.t.Helper()
	cfg.Image = &runtimeapi.ImageSpec{Image: harness.BusyboxImageName}
	cfg.LogPath = cfg.GetMetadata().GetName() + ".log"
	if cfg.Linux == nil {
		cfg.Linux = &runtimeapi.LinuxContainerConfig{}
	}
	if cfg.Linux.SecurityContext == nil {
		cfg.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{}
	}
	cfg.Linux.SecurityContext.NamespaceOptions = pod.GetLinux().GetSecurityContext().GetNamespaceOptions()
	resp, err := c.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandbox, SandboxConfig: pod, Config: cfg})
	if err != nil {
		c.t.Fatalf("create container %s: %v", cfg.GetMetadata().GetName(), err)
	}
	if _, err := c.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: resp.GetContainerId()}); err != nil {
		c.t.Fatalf("start container %s: %v", cfg.GetMetadata().GetName(), err)
	}
	return resp.GetContainerId()
}

// pidOf is the host pid of a container's init, from its verbose CRI status.
func (c *criEnv) pidOf(ctx context.Context, id string) int {
	c.t.Helper()
	st, err := c.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		c.t.Fatalf("status of %s: %v", id, err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(st.GetInfo()["info"]), &info); err != nil || info.Pid <= 0 {
		c.t.Fatalf("no pid in the status of %s: %v %q", id, err, st.GetInfo()["info"])
	}
	return info.Pid
}

// sh runs a shell command in a container and returns its output and exit code.
func (c *criEnv) sh(ctx context.Context, id, script string) (stdout, stderr string, code int32) {
	c.t.Helper()
	r, err := c.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", script}, Timeout: 30})
	if err != nil {
		c.t.Fatalf("exec %q in %s: %v", script, id, err)
	}
	return string(r.GetStdout()), string(r.GetStderr()), r.GetExitCode()
}

// mustSh is sh for commands that must succeed.
func (c *criEnv) mustSh(ctx context.Context, id, script string) string {
	c.t.Helper()
	out, errOut, code := c.sh(ctx, id, script)
	if code != 0 {
		c.t.Fatalf("%q in %s: exit %d, stdout %q, stderr %q", script, id, code, out, errOut)
	}
	return out
}

// hostOwner is the uid:gid of path as the host sees it.
func hostOwner(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Uid, st.Gid)
}

// idMap is the first line of /proc/PID/{uid,gid}_map, spaces squeezed.
func idMap(t *testing.T, pid int, which string) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s_map", pid, which))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Join(strings.Fields(strings.SplitN(string(data), "\n", 2)[0]), " ")
}

// processesOfUID lists the host processes whose real uid is uid.
func processesOfUID(uid int) []int {
	var out []int
	for _, p := range processes() {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "Uid:" && f[1] == fmt.Sprint(uid) {
				out = append(out, p.pid)
			}
		}
	}
	return out
}

// cleanupPod removes the pod, should the test fail before its teardown,
// while containerd still runs: no shim, container or mount is left.
func (c *criEnv) cleanupPod(sandbox string) {
	c.t.Cleanup(func() {
		if !c.t.Failed() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox})
		c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox})
	})
}

// teardown stops and removes the containers and the pod, and waits for the
// pod's shim to exit.
func (c *criEnv) teardown(ctx context.Context, sandbox string, ids ...string) {
	c.t.Helper()
	c.teardownWith(ctx, shimsFor, sandbox, ids...)
}

// teardownWith is teardown where shims lists the pod's shims.
func (c *criEnv) teardownWith(ctx context.Context, shims func(string) []process, sandbox string, ids ...string) {
	c.t.Helper()
	for _, id := range ids {
		if _, err := c.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 5}); err != nil {
			c.t.Fatalf("stop %s: %v", id, err)
		}
		if _, err := c.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			c.t.Fatalf("remove %s: %v", id, err)
		}
	}
	if _, err := c.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		c.t.Fatalf("stop pod: %v", err)
	}
	if _, err := c.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sandbox}); err != nil {
		c.t.Fatalf("remove pod: %v", err)
	}
	c.waitFor("the pod's shim to exit", 20*time.Second, func() bool { return len(shims(sandbox)) == 0 })
}

// waitForLog waits until a container's CRI log holds every one of want.
func (c *criEnv) waitForLog(path string, want ...string) {
	c.t.Helper()
	c.waitFor("the CRI log "+path, 20*time.Second, func() bool {
		data, _ := os.ReadFile(path)
		for _, w := range want {
			if !strings.Contains(string(data), w) {
				return false
			}
		}
		for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			if !criLogLine.MatchString(l) {
				c.t.Fatalf("log line not in CRI format: %q", l)
			}
		}
		return true
	})
}
