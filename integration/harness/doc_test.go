package harness

import (
	"os"
	"strings"
	"testing"
)

// TestKubernetesSystemdDocMatchesTheTests: docs/kubernetes-systemd.md gives
// the node configuration the CRI tests run with (NodeOptions, CRIConfig),
// for both drivers and both configuration versions.
func TestKubernetesSystemdDocMatchesTheTests(t *testing.T) {
	data, err := os.ReadFile("../../docs/kubernetes-systemd.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	for _, d := range []CgroupDriver{Systemd, Cgroupfs} {
		opts := NodeOptions("/usr/sbin/runc", "/run/containerd/runc", d)
		for _, snippet := range []string{
			CRIConfig(2, CRISettings{ForNode: true, Options: opts}),
			CRIConfig(1, CRISettings{ForNode: true, OptionsFile: "/etc/containerd/tether.toml"}),
			"# /etc/containerd/tether.toml\n" + opts,
		} {
			if !strings.Contains(doc, "```toml\n"+snippet+"```\n") {
				t.Errorf("docs/kubernetes-systemd.md lacks, for the %s driver:\n%s", d, snippet)
			}
		}
	}
}
