package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testCRIUserNamespacesOnContainerd1 is what containerd 1.6 makes of the
// same handler (in its configuration version 2) and the same pod: its
// client never passes runtime_path on to the task service (WithRuntimePath
// sets a field NewTask does not read), so the handler runs containerd's own
// runc shim, not tether, with the handler's runc options; its CRI reports
// no handler features, ignores UsernsOptions (the pod runs in the host's
// user namespace) and RecursiveReadOnly (a plain read-only mount, writable
// below its submounts). The README says so.
func testCRIUserNamespacesOnContainerd1(t *testing.T) {
	c := startCRI(t, usernsHandler(usernsRunc(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	st, err := c.runtime.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatalf("CRI status: %v", err)
	}
	if h := st.GetRuntimeHandlers(); len(h) != 0 {
		t.Fatalf("containerd 1.x reports runtime handler features now: %v", h)
	}
	pod := c.sandboxConfig("userns-pod", t.TempDir())
	pod.Linux.SecurityContext.NamespaceOptions = usernsOptions()
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: "tether-userns"})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	c.cleanupPod(sandbox)
	if s := shimsFor(sandbox); len(s) != 0 {
		t.Fatalf("containerd 1.x started tether for a handler with runtime_path: %v", s)
	}
	if s := runcShimsFor(sandbox); len(s) != 1 {
		t.Fatalf("the pod is not served by containerd's runc shim: %v", s)
	}
	rro := rroSource(t)
	main := c.start(ctx, sandbox, pod, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
		Command:  []string{"sleep", "100000"},
		Mounts: []*runtimeapi.Mount{{ContainerPath: "/rro", HostPath: rro, Readonly: true, RecursiveReadOnly: true,
			Propagation: runtimeapi.MountPropagation_PROPAGATION_PRIVATE}},
	})
	if got := idMap(t, c.pidOf(ctx, main), "uid"); got != "0 0 4294967295" {
		t.Errorf("uid_map %q: containerd 1.x made a user namespace", got)
	}
	if _, errOut, code := c.sh(ctx, main, "touch /rro/sub/x"); code != 0 {
		t.Errorf("containerd 1.x made the mount recursively read-only: exit %d %q", code, errOut)
	}
	calls, _ := os.ReadFile(filepath.Join(c.ctd.Dir, "runc-userns-calls.log"))
	if !strings.Contains(string(calls), "create") {
		t.Errorf("the options' BinaryName did not create the containers; calls:\n%s", calls)
	}
	c.teardownWith(ctx, runcShimsFor, sandbox, main)
	if m := mountsMatching(sandbox); len(m) > 0 {
		t.Errorf("mounts left: %v", m)
	}
}

// runcShimsFor lists containerd's runc shims serving id.
func runcShimsFor(id string) []process {
	var out []process
	for _, p := range processes() {
		if len(p.cmdline) == 0 || filepath.Base(p.cmdline[0]) != "containerd-shim-runc-v2" {
			continue
		}
		for i, a := range p.cmdline {
			if a == "-id" && i+1 < len(p.cmdline) && p.cmdline[i+1] == id {
				out = append(out, p)
			}
		}
	}
	return out
}
