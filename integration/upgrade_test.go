package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
	"github.com/tether-shim/tether/proto/task"
)

// buildTether puts tether at version, with the -X settings x (harness.
// Programs' "tether-VERSION": the upgrade tests' versions, some failing on
// purpose), at dir/name, and returns its path.
func buildTether(t *testing.T, dir, name, version string, x ...string) string {
	t.Helper()
	p, err := harness.ProgramNamed("tether-" + version)
	if err != nil || !slices.Equal(p.X, x) {
		t.Fatalf("tether %s with %v is not in harness.Programs (%v)", version, x, err)
	}
	root, _ := filepath.Abs("..")
	out := filepath.Join(dir, name)
	if err := harness.BuildProgram(root, p.Name, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// upgradeShims runs `containerd-shim-tether-v2 upgrade args...` from binary.
func upgradeShims(t *testing.T, binary string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, append([]string{"upgrade"}, args...)...).CombinedOutput()
	return string(out), err
}

// TestUpgradeSmoke: a running container's shim moves onto another binary;
// same pid, new version, the container still served.
func TestUpgradeSmoke(t *testing.T) {
	e := setup(t)
	id := e.id("upg")
	e.runDetached(id, "sleep", "100000")
	shim := shimsFor(id)[0].pid
	next := buildTether(t, t.TempDir(), "containerd-shim-tether-v2", "v-next")
	out, err := upgradeShims(t, next, "-namespace", e.ctd.Namespace, "-id", id, "-binary", next)
	t.Logf("upgrade: %s", out)
	if err != nil {
		t.Fatal(err)
	}
	if p := shimsFor(id); len(p) != 1 || p[0].pid != shim {
		t.Fatalf("shims after the upgrade: %v, want pid %d", p, shim)
	}
	if exe, _ := os.Readlink(filepath.Join("/proc", strconv.Itoa(shim), "exe")); exe != next {
		t.Fatalf("shim runs %s, want %s", exe, next)
	}
	// Its name is still its own (ps, top), not the descriptor it was
	// executed through.
	if comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(shim), "comm")); string(comm) != "containerd-shim\n" {
		t.Fatalf("the shim is named %q after the upgrade", comm)
	}
	client, err := e.ctd.DialShim(id)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	resp, err := client.Connect(context.Background(), &task.ConnectRequest{Id: id})
	if err != nil || resp.GetVersion() != "v-next" {
		t.Fatalf("connect: %v %v", resp, err)
	}
	res := e.ctr("task", "exec", "--exec-id", "after", id, "echo", "served")
	if strings.TrimSpace(res.Stdout) != "served" {
		t.Fatalf("exec after the upgrade: %q", res.Stdout)
	}
}
