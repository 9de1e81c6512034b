package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// cniBinDir is where Debian's containernetworking-plugins installs them.
const cniBinDir = "/usr/lib/cni"

// podNetwork writes a CNI configuration under dir for pods with a network
// namespace of their own: a bridge of this test's own (no address on the
// host, no masquerading: traffic stays on the machine) and host-local
// addresses from a private range, its state under dir too. It returns the
// bin and conf directories for the CRI configuration; the bridge is removed
// when the test ends.
func podNetwork(t *testing.T, dir string) (binDir, confDir string) {
	t.Helper()
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniBinDir, plugin)); err != nil {
			t.Fatalf("CNI plugin %s missing (make deps installs containernetworking-plugins): %v", plugin, err)
		}
	}
	n := suite.seq.Add(1)
	bridge := fmt.Sprintf("tth%d-%d", os.Getpid()%100000, n%100)
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "tether-it-%[1]d",
  "plugins": [{
    "type": "bridge",
    "bridge": %[2]q,
    "isGateway": false,
    "ipMasq": false,
    "ipam": {
      "type": "host-local",
      "dataDir": %[3]q,
      "ranges": [[{"subnet": "10.199.%[4]d.0/24"}]]
    }
  }]
}
`, n, bridge, filepath.Join(dir, "cni-ipam"), n%250)
	confDir = filepath.Join(dir, "net.d")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "10-tether-it.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// Registered before containerd starts, so it runs after it stopped.
	t.Cleanup(func() {
		if _, err := os.Stat(filepath.Join("/sys/class/net", bridge)); err == nil {
			if out, err := exec.Command("ip", "link", "delete", bridge).CombinedOutput(); err != nil {
				t.Errorf("remove test bridge %s: %v: %s", bridge, err, out)
			}
		}
	})
	return cniBinDir, confDir
}
