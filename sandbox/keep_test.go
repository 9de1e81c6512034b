package sandbox

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/tether-shim/tether/reaper"
	"github.com/tether-shim/tether/sandbox/internal/holder"
	"github.com/tether-shim/tether/sandbox/internal/podns"
)

// realSandbox is a sandbox for p whose namespaces and holder are real.
func realSandbox(t *testing.T, r *reaper.Reaper, p Pod) *Sandbox {
	t.Helper()
	needRoot(t)
	sb := newSandbox(p, &Env{Reaper: r, Log: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { sb.Shutdown(context.Background()) })
	return sb
}

// specNamespaces are the namespaces of the spec StartSandbox answers.
func specNamespaces(t *testing.T, p Pod, pid int) map[specs.LinuxNamespaceType]string {
	t.Helper()
	a, err := podSpec(p, pid)
	if err != nil {
		t.Fatal(err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(a.GetValue(), &spec); err != nil {
		t.Fatal(err)
	}
	out := map[specs.LinuxNamespaceType]string{}
	for _, ns := range spec.Linux.Namespaces {
		out[ns.Type] = ns.Path
	}
	return out
}

// TestPodHeldWithoutAProcess: a pod whose containers have a pid namespace
// each starts no process at all: StartSandbox answers pid 0; its own UTS
// and IPC namespaces are bound to files in its bundle, made on a thread
// that joined the pod's network namespace, with the pod's hostname and
// sysctls (network and IPC) set; the spec NRI sees names them and
// containerd's network namespace. Stopping it unbinds them (the sandbox's
// exit: 0, no pid); shutting it down leaves nothing.
func TestPodHeldWithoutAProcess(t *testing.T) {
	netns := newNetNS(t)
	bundle := containerdLayout(t, t.TempDir(), t.TempDir(), "pod1")
	p := Pod{ID: "pod1", Bundle: bundle, NetNS: netns, OwnUTS: true, OwnIPC: true, PID: pidPerContainer, Hostname: "pod-host",
		Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shmmni": "1234"}}
	sb := realSandbox(t, startReaper(t), p)
	// Earlier tests' holders may still be there, ended but not reaped.
	before := childrenNamed(holder.Name)
	pid, _, err := sb.Start(context.Background())
	if err != nil || pid != 0 {
		t.Fatalf("start: pid %d, %v", pid, err)
	}
	for _, h := range childrenNamed(holder.Name) {
		if !slices.Contains(before, h) {
			t.Fatalf("a holder for a pod whose containers have a pid namespace each: %d", h)
		}
	}
	m := p.mounts()
	if m.UTS != filepath.Join(bundle, "ns", "uts") || m.IPC != filepath.Join(bundle, "ns", "ipc") {
		t.Fatalf("bound at %+v", m)
	}
	inNS(t, m.UTS, unix.CLONE_NEWUTS, func() {
		var u unix.Utsname
		unix.Uname(&u)
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "pod-host" {
			t.Errorf("pod hostname %q", got)
		}
	})
	inNS(t, m.IPC, unix.CLONE_NEWIPC, func() {
		if got := strings.TrimSpace(readFile("/proc/sys/kernel/shmmni")); got != "1234" {
			t.Errorf("pod IPC sysctl %q", got)
		}
	})
	inNS(t, netns, unix.CLONE_NEWNET, func() {
		if got := strings.TrimSpace(readFile("/proc/sys/net/ipv4/ip_unprivileged_port_start")); got != "80" {
			t.Errorf("pod network sysctl %q", got)
		}
	})
	want := map[specs.LinuxNamespaceType]string{specs.NetworkNamespace: netns, specs.UTSNamespace: m.UTS, specs.IPCNamespace: m.IPC}
	if got := specNamespaces(t, p, pid); !mapsEqual(got, want) {
		t.Fatalf("spec namespaces %v, want %v", got, want)
	}
	if rec := readRecord(t, bundle); rec.HolderPid != 0 || rec.Files == nil {
		t.Fatalf("record %+v", rec)
	}
	if st := sb.Status(); st.Phase != ready || st.Pid != 0 {
		t.Fatalf("status %+v", st)
	}
	stopWithin(t, sb, stopGrace)
	if e := waitStopped(t, sb); e.Pid != 0 || e.Status != 0 {
		t.Fatalf("exit %+v", e)
	}
	if _, err := os.Stat(podns.Dir(bundle)); !os.IsNotExist(err) {
		t.Fatalf("namespaces still bound after the stop: %v", err)
	}
	if err := sb.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m := mountsMatching(bundle); len(m) > 0 {
		t.Fatalf("mounts left: %v", m)
	}
}

// TestPodWithAHolder: a pod whose containers share a pid namespace has a
// holder, that namespace's init, in the pod's network namespace and its
// new UTS and IPC namespaces (hostname and sysctls set) from its first
// instruction; the spec names the holder's namespaces; stopping the pod
// ends it (its lifeline closed: exit 0).
func TestPodWithAHolder(t *testing.T) {
	netns := newNetNS(t)
	p := Pod{ID: "pod1", Bundle: t.TempDir(), NetNS: netns, OwnUTS: true, OwnIPC: true, PID: pidShared, Hostname: "pod-host",
		Sysctls: map[string]string{"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shmmni": "1234"}}
	sb := realSandbox(t, startReaper(t), p)
	pid, _, err := sb.Start(context.Background())
	if err != nil || pid <= 0 {
		t.Fatalf("start: pid %d, %v", pid, err)
	}
	if !slices.Contains(childrenNamed(holder.Name), pid) {
		t.Fatalf("holder %d is not the shim's child: %v", pid, childrenNamed(holder.Name))
	}
	want, _ := os.Readlink(netns)
	if got := nsOf(pid, "net"); got != want {
		t.Fatalf("holder's network namespace %q, the pod's %q", got, want)
	}
	for _, ns := range []string{"uts", "ipc", "pid"} {
		if nsOf(pid, ns) == nodeNS(ns) {
			t.Errorf("holder shares the node's %s namespace", ns)
		}
	}
	if status := procFile(pid, "status"); !strings.Contains(status, "NSpid:\t"+strconv.Itoa(pid)+"\t1\n") {
		t.Errorf("holder is not pid 1 of its pid namespace:\n%s", status)
	}
	proc := func(ns string) string { return filepath.Join("/proc", strconv.Itoa(pid), "ns", ns) }
	inNS(t, proc("uts"), unix.CLONE_NEWUTS, func() {
		var u unix.Utsname
		unix.Uname(&u)
		if got := unix.ByteSliceToString(u.Nodename[:]); got != "pod-host" {
			t.Errorf("pod hostname %q", got)
		}
	})
	inNS(t, proc("ipc"), unix.CLONE_NEWIPC, func() {
		if got := strings.TrimSpace(readFile("/proc/sys/kernel/shmmni")); got != "1234" {
			t.Errorf("pod IPC sysctl %q", got)
		}
	})
	got := specNamespaces(t, p, pid)
	wantSpec := map[specs.LinuxNamespaceType]string{specs.NetworkNamespace: proc("net"), specs.UTSNamespace: proc("uts"),
		specs.IPCNamespace: proc("ipc"), specs.PIDNamespace: proc("pid")}
	if !mapsEqual(got, wantSpec) {
		t.Fatalf("spec namespaces %v, want %v", got, wantSpec)
	}
	if _, err := os.Stat(podns.Dir(p.Bundle)); !os.IsNotExist(err) {
		t.Fatalf("a pod with a holder has its namespaces bound too: %v", err)
	}
	stopWithin(t, sb, stopGrace)
	if e := waitStopped(t, sb); e.Pid != pid || e.Status != 0 {
		t.Fatalf("exit %+v", e)
	}
}

func mapsEqual(a, b map[specs.LinuxNamespaceType]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// mountsMatching lists this mount namespace's mounts whose line names s.
func mountsMatching(s string) []string {
	var out []string
	for _, line := range strings.Split(readFile("/proc/self/mountinfo"), "\n") {
		if strings.Contains(line, s) {
			out = append(out, line)
		}
	}
	return out
}
