package sandbox

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// specTypeURL is the type URL containerd registers the OCI spec under
// (core/runtime/typeurl.go); the value is the spec's JSON.
const specTypeURL = "types.containerd.io/opencontainers/runtime-spec/" + "1/Spec"

// podSpec describes the running pod as an OCI spec, the way a pause
// container's spec would: its hostname, sysctls and the holder's
// namespaces, by path. containerd keeps it as the sandbox's spec and shows
// it to NRI plugins.
func podSpec(p Pod, pid int) (*anypb.Any, error) {
	ns := func(t specs.LinuxNamespaceType, name string) specs.LinuxNamespace {
		return specs.LinuxNamespace{Type: t, Path: filepath.Join("/proc", strconv.Itoa(pid), "ns", name)}
	}
	linux := &specs.Linux{Sysctl: p.Sysctls}
	if p.NetNS != "" {
		linux.Namespaces = append(linux.Namespaces, ns(specs.NetworkNamespace, "net"))
	}
	if p.OwnUTS {
		linux.Namespaces = append(linux.Namespaces, ns(specs.UTSNamespace, "uts"))
	}
	if p.OwnIPC {
		linux.Namespaces = append(linux.Namespaces, ns(specs.IPCNamespace, "ipc"))
	}
	if p.OwnPID {
		linux.Namespaces = append(linux.Namespaces, ns(specs.PIDNamespace, "pid"))
	}
	data, err := json.Marshal(&specs.Spec{Version: specs.Version, Hostname: p.Hostname, Linux: linux})
	if err != nil {
		return nil, fmt.Errorf("sandbox spec: %w", err)
	}
	return &anypb.Any{TypeUrl: specTypeURL, Value: data}, nil
}
