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
// extra are more handlers, in the same configuration version.
func CRIConfig(major int, options, optionsFile string, extra ...Handler) string {
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
		return b.String() + extraConfig(major, extra)
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
	return b.String() + extraConfig(major, extra)
}

// Handler is a CRI runtime handler: its name, runtime_type, runtime_path
// (the shim binary, if not found by the type's name) and its options
// table (TOML key = value lines; no table if empty).
type Handler struct {
	Name, Type, Path string
	Options          string
}

func extraConfig(major int, handlers []Handler) string {
	var b strings.Builder
	for _, h := range handlers {
		b.WriteString(h.config(major))
	}
	return b.String()
}

// config is the handler's table, for containerd 1.x (version 2) or 2.x
// (version 3).
func (h Handler) config(major int) string {
	table := fmt.Sprintf("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.'%s']", h.Name)
	if major < 2 {
		table = fmt.Sprintf("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.%q]", h.Name)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n  runtime_type = %q\n", table, h.Type)
	if h.Path != "" {
		fmt.Fprintf(&b, "  runtime_path = %q\n", h.Path)
	}
	if opts := strings.TrimSpace(h.Options); opts != "" {
		fmt.Fprintf(&b, "%s.options]\n", strings.TrimSuffix(table, "]"))
		for _, line := range strings.Split(opts, "\n") {
			b.WriteString("  " + line + "\n")
		}
	}
	return b.String()
}
