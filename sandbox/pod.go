package sandbox

import (
	"fmt"
	"maps"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"

	cri "github.com/tether-shim/tether/proto/cri"
	sandboxapi "github.com/tether-shim/tether/proto/sandbox"
	"github.com/tether-shim/tether/shim"
)

// Pod is what the sandbox needs to know of a pod, read from CreateSandbox.
type Pod struct {
	ID     string
	Bundle string
	// NetNS is the network namespace containerd made for the pod, which the
	// holder joins; empty for a pod on the node's network.
	NetNS string
	// OwnUTS and OwnIPC say which namespaces the shim makes for the pod,
	// as a pause container has them: UTS unless the pod is on the node's
	// network, IPC unless it uses the node's.
	OwnUTS, OwnIPC bool
	// PID is how the pod's containers have their pid namespaces: only a
	// pod whose containers share one needs a process (its holder, the
	// namespace's init).
	PID pidMode
	// Hostname is set in the pod's UTS namespace (when it has one).
	Hostname string
	// Sysctls are set in the pod's namespaces (keys as "net.ipv4.x").
	Sysctls map[string]string
	// CgroupParent is the cgroup the pod's containers go under; their
	// statistics are the pod's.
	CgroupParent string
	// DNS is the pod's resolver configuration; nil for the node's.
	DNS *cri.DNSConfig
}

// pidMode is how a pod's containers have their pid namespaces. Its values
// are written down for a live upgrade (upgradepb.Sandbox.pid_mode, plus
// one): never renumber them.
type pidMode int

const (
	pidPerContainer pidMode = iota // each container its own (CRI CONTAINER, TARGET)
	pidShared                      // one for the pod, the holder its init (CRI POD)
	pidNode                        // the node's (CRI NODE)
)

func (m pidMode) String() string {
	return [...]string{"per container", "shared", "node"}[m]
}

// criPodConfig is the type of CreateSandbox's options, as containerd's CRI
// sends them (typeurl's name for k8s.io/cri-api's message).
const criPodConfig = "runtime.v1.PodSandboxConfig"

// unprivilegedSysctls are what containerd's CRI sets on a pause container
// with a network of its own by default (enable_unprivileged_ports and
// enable_unprivileged_icmp, both on by default in containerd 2.x): a shim
// sandboxer never sees that setting, so the holder applies the defaults,
// unless the pod sets these keys itself.
var unprivilegedSysctls = map[string]string{
	"net.ipv4.ip_unprivileged_port_start": "0",
	"net.ipv4.ping_group_range":           "0 2147483647",
}

// podFromRequest reads and checks a CreateSandbox request.
func podFromRequest(r *sandboxapi.CreateSandboxRequest) (Pod, error) {
	p := Pod{ID: r.GetSandboxId(), Bundle: r.GetBundlePath(), NetNS: r.GetNetnsPath()}
	if err := shim.ValidateID("sandbox", p.ID); err != nil {
		return p, err
	}
	if !filepath.IsAbs(p.Bundle) {
		return p, fmt.Errorf("sandbox bundle %q is not an absolute path: %w", p.Bundle, errdefs.ErrInvalidArgument)
	}
	if p.NetNS != "" && !filepath.IsAbs(p.NetNS) {
		return p, fmt.Errorf("network namespace %q is not an absolute path: %w", p.NetNS, errdefs.ErrInvalidArgument)
	}
	var cfg cri.PodSandboxConfig
	if opts := r.GetOptions(); opts != nil {
		if name := strings.TrimPrefix(opts.GetTypeUrl(), "type.googleapis.com/"); name != criPodConfig {
			return p, fmt.Errorf("sandbox options of type %q, want %s: %w", opts.GetTypeUrl(), criPodConfig, errdefs.ErrInvalidArgument)
		}
		if err := proto.Unmarshal(opts.GetValue(), &cfg); err != nil {
			return p, fmt.Errorf("decode pod sandbox config: %w: %w", err, errdefs.ErrInvalidArgument)
		}
	}
	ns := cfg.GetLinux().GetSecurityContext().GetNamespaceOptions()
	// No userns_options is the node's user namespace (mode's zero is POD).
	if ns.GetUsernsOptions() != nil && ns.GetUsernsOptions().GetMode() == cri.NamespaceMode_POD {
		return p, fmt.Errorf("pod user namespaces: %w (use a handler without sandboxer = \"shim\")", errdefs.ErrNotImplemented)
	}
	// containerd names a network namespace exactly when the pod has one
	// (without options, a pod is on the node's network but for that).
	nodeNetwork := p.NetNS == ""
	if ns.GetNetwork() == cri.NamespaceMode_NODE && !nodeNetwork {
		return p, fmt.Errorf("a pod on the node's network with network namespace %q: %w", p.NetNS, errdefs.ErrInvalidArgument)
	}
	p.OwnUTS = !nodeNetwork
	p.OwnIPC = ns.GetIpc() != cri.NamespaceMode_NODE
	switch ns.GetPid() {
	case cri.NamespaceMode_POD:
		p.PID = pidShared
	case cri.NamespaceMode_NODE:
		p.PID = pidNode
	}
	if p.OwnUTS {
		p.Hostname = cfg.GetHostname()
	}
	p.CgroupParent = cfg.GetLinux().GetCgroupParent()
	p.DNS = cfg.GetDnsConfig()
	p.Sysctls = maps.Clone(cfg.GetLinux().GetSysctls())
	if !nodeNetwork {
		for k, v := range unprivilegedSysctls {
			if _, set := p.Sysctls[k]; !set {
				if p.Sysctls == nil {
					p.Sysctls = map[string]string{}
				}
				p.Sysctls[k] = v
			}
		}
	}
	for k := range p.Sysctls {
		if err := p.checkSysctl(k); err != nil {
			return p, err
		}
	}
	return p, nil
}

// ipcSysctls are the sysctls of an IPC namespace, as runc allows them.
var ipcSysctls = map[string]bool{
	"kernel.msgmax": true, "kernel.msgmnb": true, "kernel.msgmni": true, "kernel.sem": true,
	"kernel.shmall": true, "kernel.shmmax": true, "kernel.shmmni": true, "kernel.shm_rmid_forced": true,
}

// checkSysctl allows only a sysctl of a namespace the pod has of its own,
// as runc does for a container: the holder writes them from the host's
// /proc, and anything else would change the node.
func (p Pod) checkSysctl(key string) error {
	if strings.Contains(key, "..") || strings.Contains(key, "/") || strings.HasPrefix(key, ".") || key == "" {
		return fmt.Errorf("sysctl %q: malformed: %w", key, errdefs.ErrInvalidArgument)
	}
	switch {
	case ipcSysctls[key] || strings.HasPrefix(key, "fs.mqueue."):
		if p.OwnIPC {
			return nil
		}
	case strings.HasPrefix(key, "net."):
		if p.NetNS != "" {
			return nil
		}
	case key == "kernel.hostname" || key == "kernel.domainname":
		if p.OwnUTS {
			return nil
		}
	default:
		return fmt.Errorf("sysctl %q is not in a namespace of the pod's: %w", key, errdefs.ErrInvalidArgument)
	}
	return fmt.Errorf("sysctl %q: the pod shares that namespace with the node: %w", key, errdefs.ErrInvalidArgument)
}
