package harness

import (
	"fmt"
	"strings"
)

// PauseImageName is the pod sandbox image the CRI configuration names.
const PauseImageName = "docker.io/tether/pause:latest"

// CRIConfig is the containerd configuration that enables the CRI plugin
// with a runtime handler "tether" of type io.containerd.tether.v2, for
// containerd 1.x (config version 2) or 2.x (version 3). options are the
// handler's runtime options as TOML key = value lines. containerd 1.x's CRI
// hands a runtime of another type than runc only a path to a file with its
// options (ConfigPath); 2.x hands it the options themselves.
func CRIConfig(major int, options, optionsFile string) string {
	var b strings.Builder
	if major >= 2 {
		b.WriteString("[plugins.'io.containerd.cri.v1.images'.pinned_images]\n")
		fmt.Fprintf(&b, "  sandbox = '%s'\n", PauseImageName)
		b.WriteString("[plugins.'io.containerd.cri.v1.runtime']\n")
		b.WriteString("  restrict_oom_score_adj = true\n")
		b.WriteString("  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.tether]\n")
		b.WriteString("    runtime_type = 'io.containerd.tether.v2'\n")
		b.WriteString("    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.tether.options]\n")
		for _, line := range strings.Split(strings.TrimSpace(options), "\n") {
			if line != "" {
				b.WriteString("      " + line + "\n")
			}
		}
		return b.String()
	}
	b.WriteString("[plugins.\"io.containerd.grpc.v1.cri\"]\n")
	fmt.Fprintf(&b, "  sandbox_image = %q\n", PauseImageName)
	b.WriteString("  restrict_oom_score_adj = true\n")
	// 1.x drops its default runc handler once runtimes are configured.
	b.WriteString("  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n")
	b.WriteString("    runtime_type = \"io.containerd.runc.v2\"\n")
	b.WriteString("  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.tether]\n")
	b.WriteString("    runtime_type = \"io.containerd.tether.v2\"\n")
	b.WriteString("    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.tether.options]\n")
	fmt.Fprintf(&b, "      ConfigPath = %q\n", optionsFile)
	return b.String()
}
