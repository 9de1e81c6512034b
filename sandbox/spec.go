package sandbox

import (
	"encoding/json"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/anypb"
)

// specTypeURL is the type URL containerd registers the OCI spec under
// (core/runtime/typeurl.go); the value is the spec's JSON.
const specTypeURL = "types.containerd.io/opencontainers/runtime-spec/" + "1/Spec"

// podSpec describes the running pod as an OCI spec, the way a pause
// container's spec would: its hostname, sysctls and the namespaces it has
// of its own, by path (the holder's /proc/PID/ns, or where they are bound
// and where containerd bound its network namespace). containerd keeps it
// as the sandbox's spec and shows it to NRI plugins.
func podSpec(p Pod, pid int) (*anypb.Any, error) {
	linux := &specs.Linux{Sysctl: p.Sysctls}
	ns := p.namespaces(pid)
	for _, t := range []specs.LinuxNamespaceType{specs.NetworkNamespace, specs.UTSNamespace, specs.IPCNamespace, specs.PIDNamespace} {
		if path := ns[t]; path != "" {
			linux.Namespaces = append(linux.Namespaces, specs.LinuxNamespace{Type: t, Path: path})
		}
	}
	data, err := json.Marshal(&specs.Spec{Version: specs.Version, Hostname: p.Hostname, Linux: linux})
	if err != nil {
		return nil, fmt.Errorf("sandbox spec: %w", err)
	}
	return &anypb.Any{TypeUrl: specTypeURL, Value: data}, nil
}
