package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// idmapSource is a host directory with a file owned by 0:0 and one owned
// by 1000:1000.
func idmapSource(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "idmapped")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, id := range map[string]int{"root-file": 0, "user-file": 1000} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, id, id); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// rroSource is a host directory, writable by anyone, with a tmpfs
// (writable by anyone) mounted at sub.
func rroSource(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rro")
	sub := filepath.Join(dir, "sub")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", sub, "tmpfs", 0, "mode=1777,size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
	return dir
}

// TestCRIUserNamespacedPod runs a Kubernetes pod with a pod-level user
// namespace (UsernsOptions mode POD, container ids 0-65535 = host ids from
// 1048576) through tether on containerd 2.x, as the kubelet would once the
// CRI says the handler supports user namespaces: its processes run with
// the mapping (read from the host), the image's files are the container
// root's (idmapped lower layers), exec works, the CRI log is written; a
// container with an idmapped bind mount sees the host's owners through the
// mapping; one with a recursive read-only mount cannot write below it; and
// nothing is left afterwards.
func TestCRIUserNamespacedPod(t *testing.T) {
	e := setup(t)
	if e.ctd.Major < 2 {
		testCRIUserNamespacesOnContainerd1(t)
		return
	}
	c := startCRI(t, usernsHandler(usernsRunc(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// What a kubelet reads before it asks for a user namespace.
	f, ok := c.handlerFeatures(ctx, "tether-userns")
	if !ok || !f.GetUserNamespaces() || !f.GetRecursiveReadOnlyMounts() {
		t.Fatalf("handler tether-userns: present %v, features %v; want user namespaces and recursive read-only mounts", ok, f)
	}
	// Debian's runc 1.1.5 cannot: the same shim, another runc.
	if f, ok := c.handlerFeatures(ctx, "tether"); !ok || f.GetUserNamespaces() {
		t.Fatalf("handler tether (runc 1.1.5): present %v, features %v; want no user namespaces", ok, f)
	}

	logDir := t.TempDir()
	pod := c.sandboxConfig("userns-pod", logDir)
	pod.Linux.SecurityContext.NamespaceOptions = usernsOptions()
	sb, err := c.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: "tether-userns"})
	if err != nil {
		t.Fatalf("run pod sandbox: %v", err)
	}
	sandbox := sb.GetPodSandboxId()
	c.cleanupPod(sandbox)
	if len(shimsFor(sandbox)) != 1 {
		t.Fatalf("pod sandbox is not served by tether: shims %v", shimsFor(sandbox))
	}
	mapping := fmt.Sprintf("0 %d %d", usernsHostID, usernsSize)

	// The main container: its processes run in the pod's user namespace,
	// under containerd's default seccomp profile (a runc built without
	// seccomp would refuse it).
	main := c.start(ctx, sandbox, pod, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "main"},
		Command:  []string{"sh", "-c", "echo hello from a user namespace; echo uid $(id -u); sleep 100000"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Seccomp: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}}},
	})
	pid := c.pidOf(ctx, main)
	if status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); !strings.Contains(string(status), "\nSeccomp:\t2\n") {
		t.Errorf("the container's process has no seccomp filter:\n%s", status)
	}
	if got := idMap(t, pid, "uid"); got != mapping {
		t.Errorf("uid_map of the container's process %d: %q, want %q", pid, got, mapping)
	}
	if got := idMap(t, pid, "gid"); got != mapping {
		t.Errorf("gid_map of the container's process %d: %q, want %q", pid, got, mapping)
	}
	if got := hostOwner(t, fmt.Sprintf("/proc/%d", pid)); got != fmt.Sprintf("%d:%d", usernsHostID, usernsHostID) {
		t.Errorf("the container's root runs as %s on the host, want %d", got, usernsHostID)
	}
	c.waitForLog(filepath.Join(logDir, "main.log"), " stdout F hello from a user namespace", " stdout F uid 0")
	if out := c.mustSh(ctx, main, "id -u; id -g; cat /proc/self/uid_map"); strings.Join(strings.Fields(out), " ") != "0 0 "+mapping {
		t.Errorf("exec sees %q, want root with the mapping %q", out, mapping)
	}
	// The image's files are root's inside (idmapped lower layers; without
	// them they would be nobody's, 65534) and the mapped root's outside;
	// what the container writes is the mapped root's.
	if out := c.mustSh(ctx, main, "stat -c %u:%g /bin/busybox /bin; touch /written-in-userns"); out != "0:0\n0:0\n" {
		t.Errorf("the image's files inside the container: %q, want root's", out)
	}
	hostRoot := fmt.Sprintf("%d:%d", usernsHostID, usernsHostID)
	for _, p := range []string{"bin/busybox", "written-in-userns"} {
		if got := hostOwner(t, fmt.Sprintf("/proc/%d/root/%s", pid, p)); got != hostRoot {
			t.Errorf("/%s in the rootfs is %s's on the host, want %s", p, got, hostRoot)
		}
	}

	// An idmapped bind mount: the host's owners, through the pod's mapping.
	src := idmapSource(t)
	ids := []*runtimeapi.IDMapping{{ContainerId: 0, HostId: usernsHostID, Length: usernsSize}}
	idmapped := c.start(ctx, sandbox, pod, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "idmapped"},
		Command:  []string{"sleep", "100000"},
		Mounts:   []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: src, UidMappings: ids, GidMappings: ids}},
	})
	if out := c.mustSh(ctx, idmapped, "stat -c %u:%g /data/root-file /data/user-file; touch /data/from-container"); out != "0:0\n1000:1000\n" {
		t.Errorf("owners in the idmapped mount: %q, want 0:0 and 1000:1000", out)
	}
	if got := hostOwner(t, filepath.Join(src, "from-container")); got != "0:0" {
		t.Errorf("a file the container's root made in the idmapped mount is %s's on the host, want 0:0", got)
	}

	// A recursive read-only mount: read-only below its submounts too, where
	// a plain read-only one is not.
	rro := rroSource(t)
	rroID := c.start(ctx, sandbox, pod, &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "rro"},
		Command:  []string{"sleep", "100000"},
		Mounts: []*runtimeapi.Mount{
			{ContainerPath: "/rro", HostPath: rro, Readonly: true, RecursiveReadOnly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_PRIVATE},
			{ContainerPath: "/ro", HostPath: rro, Readonly: true},
		},
	})
	if _, errOut, code := c.sh(ctx, rroID, "touch /rro/sub/x"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
		t.Errorf("a write below the recursive read-only mount's submount: exit %d, %q; want EROFS", code, errOut)
	}
	if _, errOut, code := c.sh(ctx, rroID, "touch /rro/top"); code == 0 || !strings.Contains(errOut, "Read-only file system") {
		t.Errorf("a write to the recursive read-only mount: exit %d, %q; want EROFS", code, errOut)
	}
	c.mustSh(ctx, rroID, "touch /ro/sub/through-plain-ro")
	if _, err := os.Stat(filepath.Join(rro, "sub", "through-plain-ro")); err != nil {
		t.Errorf("the plain read-only mount's submount was not writable (the contrast the test needs): %v", err)
	}
	if _, err := os.Stat(filepath.Join(rro, "sub", "x")); err == nil {
		t.Errorf("the write through the recursive read-only mount reached the host")
	}

	// BinaryName and Root of the handler's options reached tether.
	calls, _ := os.ReadFile(filepath.Join(c.ctd.Dir, "runc-userns-calls.log"))
	if !strings.Contains(string(calls), "--root "+filepath.Join(c.ctd.Dir, "runc-userns-root", "k8s.io")) || !strings.Contains(string(calls), "features") {
		t.Errorf("runc v1.5.2 of BinaryName ran with the Root of the options? calls:\n%s", calls)
	}
	if len(shimsFor(sandbox)) != 1 || len(shimsFor(main)) != 0 {
		t.Errorf("shims: pod %v, main %v; want the pod's one", shimsFor(sandbox), shimsFor(main))
	}

	c.teardown(ctx, sandbox, main, idmapped, rroID)
	for _, id := range []string{sandbox, main, idmapped, rroID} {
		if m := mountsMatching(id); len(m) > 0 {
			t.Errorf("mounts of %s left: %v", id, m)
		}
	}
	if m := mountsMatching("idmapped-lower-"); len(m) > 0 {
		t.Errorf("idmapped lower layers left mounted: %v", m)
	}
	if p := processesOfUID(usernsHostID); len(p) > 0 {
		t.Errorf("processes of the pod's user namespace left: %v", p)
	}
}
