package sandbox

import (
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
)

// request is a CreateSandbox request as containerd's CRI makes it: the
// CRI's own PodSandboxConfig (k8s.io/cri-api), so the subset tether decodes
// is checked against the real message.
func request(t *testing.T, cfg *runtimeapi.PodSandboxConfig, netns string) *sandboxapi.CreateSandboxRequest {
	t.Helper()
	data, err := proto.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &sandboxapi.CreateSandboxRequest{
		SandboxId:  "pod1",
		BundlePath: t.TempDir(),
		NetnsPath:  netns,
		Options:    &anypb.Any{TypeUrl: "runtime.v1.PodSandboxConfig", Value: data},
	}
}

func podConfig(network, ipc, pid runtimeapi.NamespaceMode) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:  &runtimeapi.PodSandboxMetadata{Name: "p", Uid: "u", Namespace: "default"},
		Hostname:  "pod-host",
		DnsConfig: &runtimeapi.DNSConfig{Servers: []string{"192.0.2.53"}, Searches: []string{"s.test"}, Options: []string{"ndots:2"}},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/kubepods/pod1",
			Sysctls:      map[string]string{"kernel.shmmni": "2048"},
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: network, Ipc: ipc, Pid: pid},
			},
		},
	}
}

// TestPodFromTheCRIsConfig: the namespaces the shim makes follow the
// pod's namespace modes as a pause container's spec would (only a shared
// pid namespace needs a holder), and the rest of the pod's configuration
// arrives.
func TestPodFromTheCRIsConfig(t *testing.T) {
	const netns = "/var/run/netns/cni-1"
	pod, nodeNet := runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_NODE
	for _, c := range []struct {
		name              string
		network, ipc, pid runtimeapi.NamespaceMode
		netns             string
		ownUTS, ownIPC    bool
		pidMode           pidMode
		hostname          string
	}{
		{"pod network, shared pid", pod, pod, pod, netns, true, true, pidShared, "pod-host"},
		{"pid per container", pod, pod, runtimeapi.NamespaceMode_CONTAINER, netns, true, true, pidPerContainer, "pod-host"},
		{"pid of a target", pod, pod, runtimeapi.NamespaceMode_TARGET, netns, true, true, pidPerContainer, "pod-host"},
		{"node pid and ipc", pod, nodeNet, nodeNet, netns, true, false, pidNode, "pod-host"},
		{"node network", nodeNet, pod, runtimeapi.NamespaceMode_CONTAINER, "", false, true, pidPerContainer, ""},
	} {
		cfg := podConfig(c.network, c.ipc, c.pid)
		if !c.ownIPC {
			delete(cfg.Linux.Sysctls, "kernel.shmmni")
		}
		p, err := podFromRequest(request(t, cfg, c.netns))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if p.NetNS != c.netns || p.OwnUTS != c.ownUTS || p.OwnIPC != c.ownIPC || p.PID != c.pidMode || p.Hostname != c.hostname {
			t.Errorf("%s: pod %+v", c.name, p)
		}
		if p.CgroupParent != "/kubepods/pod1" || p.DNS.GetServers()[0] != "192.0.2.53" || p.DNS.GetOptions()[0] != "ndots:2" {
			t.Errorf("%s: cgroup parent %q, dns %v", c.name, p.CgroupParent, p.DNS)
		}
		// containerd's CRI defaults for a pod network of its own.
		_, ports := p.Sysctls["net.ipv4.ip_unprivileged_port_start"]
		_, ping := p.Sysctls["net.ipv4.ping_group_range"]
		if ports != (c.netns != "") || ping != (c.netns != "") {
			t.Errorf("%s: sysctls %v", c.name, p.Sysctls)
		}
	}
	// The pod's own value wins over the default.
	cfg := podConfig(pod, pod, pod)
	cfg.Linux.Sysctls["net.ipv4.ip_unprivileged_port_start"] = "1024"
	p, err := podFromRequest(request(t, cfg, netns))
	if err != nil || p.Sysctls["net.ipv4.ip_unprivileged_port_start"] != "1024" {
		t.Fatalf("pod's own sysctl: %v %v", p.Sysctls, err)
	}
}

// TestPodRefusals: what a shim sandbox cannot do faithfully, or what would
// reach the node, is refused with its reason.
func TestPodRefusals(t *testing.T) {
	pod, node := runtimeapi.NamespaceMode_POD, runtimeapi.NamespaceMode_NODE
	withSysctl := func(network, ipc runtimeapi.NamespaceMode, k string) *runtimeapi.PodSandboxConfig {
		cfg := podConfig(network, ipc, pod)
		cfg.Linux.Sysctls = map[string]string{k: "1"}
		return cfg
	}
	userns := podConfig(pod, pod, pod)
	userns.Linux.SecurityContext.NamespaceOptions.UsernsOptions = &runtimeapi.UserNamespace{Mode: pod}
	for _, c := range []struct {
		name  string
		req   *sandboxapi.CreateSandboxRequest
		kind  error
		netns string
	}{
		{"user namespace", request(t, userns, "/n"), errdefs.ErrNotImplemented, ""},
		{"node-wide sysctl", request(t, withSysctl(pod, pod, "kernel.panic"), "/n"), errdefs.ErrInvalidArgument, ""},
		{"net sysctl on the node's network", request(t, withSysctl(node, pod, "net.ipv4.ip_forward"), ""), errdefs.ErrInvalidArgument, ""},
		{"ipc sysctl with the node's ipc", request(t, withSysctl(pod, node, "kernel.shmmax"), "/n"), errdefs.ErrInvalidArgument, ""},
		{"sysctl path escape", request(t, withSysctl(pod, pod, "net/../../kernel/panic"), "/n"), errdefs.ErrInvalidArgument, ""},
		{"sysctl dots", request(t, withSysctl(pod, pod, "net..x"), "/n"), errdefs.ErrInvalidArgument, ""},
		{"node network with a netns", request(t, podConfig(node, pod, pod), "/n"), errdefs.ErrInvalidArgument, ""},
		{"relative netns", request(t, podConfig(pod, pod, pod), "n"), errdefs.ErrInvalidArgument, ""},
	} {
		if _, err := podFromRequest(c.req); !errors.Is(err, c.kind) {
			t.Errorf("%s: %v, want %v", c.name, err, c.kind)
		}
	}
	r := request(t, podConfig(pod, pod, pod), "/n")
	r.Options.TypeUrl = "containerd.runc.v1.Options"
	if _, err := podFromRequest(r); !errdefs.IsInvalidArgument(err) {
		t.Errorf("options of another type: %v", err)
	}
	r = request(t, podConfig(pod, pod, pod), "/n")
	r.SandboxId = "../pod"
	if _, err := podFromRequest(r); !errdefs.IsInvalidArgument(err) {
		t.Errorf("bad id: %v", err)
	}
	r = request(t, podConfig(pod, pod, pod), "/n")
	r.BundlePath = "bundle"
	if _, err := podFromRequest(r); !errdefs.IsInvalidArgument(err) {
		t.Errorf("relative bundle: %v", err)
	}
	// No options at all (not from the CRI): a pod on the node's network,
	// with an IPC namespace of its own and one pid namespace for its
	// containers (the modes' zero values).
	r = &sandboxapi.CreateSandboxRequest{SandboxId: "pod1", BundlePath: t.TempDir()}
	if p, err := podFromRequest(r); err != nil || p.OwnUTS || !p.OwnIPC || p.PID != pidShared || len(p.Sysctls) != 0 {
		t.Errorf("no options: %+v %v", p, err)
	}
}
