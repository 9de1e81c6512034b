package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/oci"
	"github.com/tether-shim/tether/proto/runtimeoptions"
)

// docOptions are the runtime options the documentation's CRI
// configurations show, as the CRI tests give them (with their own paths).
const docOptions = "BinaryName = \"/usr/sbin/runc\"\nRoot = \"/run/containerd/runc\"\nSystemdCgroup = false\n"

// docNodeOptions are docOptions with the cgroup driver d, as
// harness.NodeOptions writes them for the CRI tests.
func docNodeOptions(d harness.CgroupDriver) string {
	return harness.NodeOptions("/usr/sbin/runc", "/run/containerd/runc", d)
}

// docOptionsPath is where the documentation keeps tether's options file.
const docOptionsPath = "/etc/containerd/tether.toml"

// containerdBinary is the containerd of the generation (1 or 2): Debian's
// on PATH, or the 2.x build the suite runs against (TETHER_CONTAINERD_DIR)
// or make containerd2 left in the cache.
func containerdBinary(t *testing.T, major int) string {
	t.Helper()
	if suite.ctd.Major == major {
		return suite.ctd.ContainerdBinary
	}
	if major == 1 {
		return "containerd"
	}
	bin := "/var/cache/tether/containerd-v2.4.2/containerd"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("SKIPPED here: no containerd 2.x (make containerd2 builds %s); checked when the suite runs against 2.x", bin)
	}
	return bin
}

// checkContainerdLoads has the real containerd of the generation load the
// configuration (config dump) and checks that every key the block sets is
// in what it loaded, with the block's value: a key it does not know is
// dropped (1.x) or refused.
func checkContainerdLoads(t *testing.T, b docBlock, major int, config string) {
	t.Helper()
	setup(t)
	bin := containerdBinary(t, major)
	version := map[int]int{1: 2, 2: 3}[major]
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, []byte(fmt.Sprintf("version = %d\n%s", version, config)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", path, "config", "dump")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s:%d: %s config dump: %v\n%s", b.page, b.line, bin, err, stderr.String())
	}
	if strings.Contains(stderr.String(), "unknown key") || strings.Contains(stderr.String(), "level=error") {
		t.Errorf("%s:%d: %s complains:\n%s", b.page, b.line, bin, stderr.String())
	}
	var want, got map[string]any
	if err := toml.Unmarshal([]byte(config), &want); err != nil {
		t.Fatalf("%s:%d: not TOML: %v", b.page, b.line, err)
	}
	if err := toml.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s config dump: %v", bin, err)
	}
	for _, key := range leafKeys(want, nil) {
		w, g := lookup(want, key), lookup(got, key)
		if !reflect.DeepEqual(w, g) {
			t.Errorf("%s:%d: %s: containerd %d.x loaded %v, the page says %v", b.page, b.line, strings.Join(key, "."), major, g, w)
		}
	}
}

func leafKeys(m map[string]any, prefix []string) [][]string {
	var keys [][]string
	for k, v := range m {
		key := append(append([]string{}, prefix...), k)
		if sub, ok := v.(map[string]any); ok {
			keys = append(keys, leafKeys(sub, key)...)
		} else {
			keys = append(keys, key)
		}
	}
	return keys
}

func lookup(m map[string]any, key []string) any {
	var v any = m
	for _, k := range key {
		sub, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = sub[k]
	}
	return v
}

// checkOptionsFile parses the block as tether's options file, the way the
// shim reads the ConfigPath containerd's CRI passes.
func checkOptionsFile(t *testing.T, b docBlock) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tether.toml")
	if err := os.WriteFile(path, []byte(b.text), 0o644); err != nil {
		t.Fatal(err)
	}
	a, err := anypb.New(&runtimeoptions.Options{ConfigPath: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := oci.ParseOptions(a); err != nil {
		t.Errorf("%s:%d: tether refuses the options: %v", b.page, b.line, err)
	}
}
