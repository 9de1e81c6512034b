package harness

import (
	"fmt"
	"strings"
)

// PauseImageName is the pod sandbox image the CRI configuration names.
const PauseImageName = imagePrefix + "pause:latest"

// PauselessHandler is the CRI runtime handler whose pods tether holds
// through containerd 2.x's sandbox API (sandboxer = "shim"): no pause
// container, no pause image.
const PauselessHandler = "tether-pauseless"

// CRISettings are the variable parts of a CRI configuration.
type CRISettings struct {
	// Options are the tether handlers' runtime options as TOML key = value
	// lines; OptionsFile holds the same, for containerd 1.x's ConfigPath.
	Options, OptionsFile string
	// Pauseless adds the handler PauselessHandler.
	Pauseless bool
	// CNIBinDir and CNIConfDir give pods a network of their own; without
	// them pods must use the node's.
	CNIBinDir, CNIConfDir string
	// RuncShim, if set, is the path of the containerd-shim-runc-v2 the
	// handler "runc" runs (containerd 2.x).
	RuncShim string
	// Handlers are more handlers, in the same configuration version.
	Handlers []Handler
	// ForNode leaves out what only the tests need (their pause image,
	// restrict_oom_score_adj for the test machines): the configuration a
	// node's documentation gives (docs/kubernetes-systemd.md).
	ForNode bool
}

// NodeOptions are tether's runtime options as a Kubernetes node sets them,
// with cgroup driver d; the CRI tests run with the same lines, naming
// their own runc (a wrapper recording its calls) and root.
func NodeOptions(binary, root string, d CgroupDriver) string {
	return fmt.Sprintf("BinaryName = %q\nRoot = %q\n%s", binary, root, d.OptionLine())
}

// CRIConfig is the containerd configuration that enables the CRI plugin
// with a runtime handler "tether" of type io.containerd.tether.v2 (and
// PauselessHandler if asked), for containerd 1.x (config version 2) or 2.x
// (version 3). containerd 1.x's CRI hands a runtime of another type than
// runc only a path to a file with its options (ConfigPath); 2.x hands it the
// options themselves.
func CRIConfig(major int, s CRISettings) string {
	if major < 2 {
		return criConfig1(s)
	}
	var b strings.Builder
	if !s.ForNode {
		b.WriteString("[plugins.'io.containerd.cri.v1.images'.pinned_images]\n")
		fmt.Fprintf(&b, "  sandbox = '%s'\n", PauseImageName)
	}
	b.WriteString("[plugins.'io.containerd.cri.v1.runtime']\n")
	if !s.ForNode {
		b.WriteString("  restrict_oom_score_adj = true\n")
	}
	if s.CNIConfDir != "" {
		b.WriteString("  [plugins.'io.containerd.cri.v1.runtime'.cni]\n")
		fmt.Fprintf(&b, "    bin_dirs = ['%s']\n", s.CNIBinDir)
		fmt.Fprintf(&b, "    conf_dir = '%s'\n", s.CNIConfDir)
	}
	if s.RuncShim != "" {
		b.WriteString("  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n")
		b.WriteString("    runtime_type = 'io.containerd.runc.v2'\n")
		fmt.Fprintf(&b, "    runtime_path = '%s'\n", s.RuncShim)
	}
	handler := func(name string, extra ...string) {
		fmt.Fprintf(&b, "  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.%s]\n", name)
		b.WriteString("    runtime_type = 'io.containerd.tether.v2'\n")
		for _, line := range extra {
			b.WriteString("    " + line + "\n")
		}
		fmt.Fprintf(&b, "    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.%s.options]\n", name)
		for _, line := range strings.Split(strings.TrimSpace(s.Options), "\n") {
			if line != "" {
				b.WriteString("      " + line + "\n")
			}
		}
	}
	handler("tether")
	if s.Pauseless {
		handler(PauselessHandler, "sandboxer = 'shim'", "disable_pause_image_pull = true")
	}
	return b.String() + extraConfig(2, s.Handlers)
}

func criConfig1(s CRISettings) string {
	var b strings.Builder
	b.WriteString("[plugins.\"io.containerd.grpc.v1.cri\"]\n")
	if !s.ForNode {
		fmt.Fprintf(&b, "  sandbox_image = %q\n", PauseImageName)
		b.WriteString("  restrict_oom_score_adj = true\n")
	}
	if s.CNIConfDir != "" {
		b.WriteString("  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n")
		fmt.Fprintf(&b, "    bin_dir = %q\n", s.CNIBinDir)
		fmt.Fprintf(&b, "    conf_dir = %q\n", s.CNIConfDir)
	}
	// 1.x drops its default runc handler once runtimes are configured.
	b.WriteString("  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n")
	b.WriteString("    runtime_type = \"io.containerd.runc.v2\"\n")
	handler := func(name string, extra ...string) {
		fmt.Fprintf(&b, "  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.%s]\n", name)
		b.WriteString("    runtime_type = \"io.containerd.tether.v2\"\n")
		for _, line := range extra {
			b.WriteString("    " + line + "\n")
		}
		fmt.Fprintf(&b, "    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.%s.options]\n", name)
		fmt.Fprintf(&b, "      ConfigPath = %q\n", s.OptionsFile)
	}
	handler("tether")
	if s.Pauseless {
		// containerd 1.x knows neither key: what it does with them is what
		// TestCRIShimSandboxerOnTheNodesNetwork shows.
		handler(PauselessHandler, "sandboxer = \"shim\"", "disable_pause_image_pull = true")
	}
	return b.String() + extraConfig(1, s.Handlers)
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
