package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tether-shim/tether/integration/harness"
)

// TestRuntimeFailuresAreReportedAndLeaveNothing: a config runc rejects, a
// missing runtime binary, a runtime that crashes and one that explains its
// failure in its JSON log all give the caller the runtime's own words, and
// leave no shim, mount, bundle or runtime state behind.
func TestRuntimeFailuresAreReportedAndLeaveNothing(t *testing.T) {
	e := setup(t)
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	crashing := script("crashing-runtime", "kill -SEGV $$\n")
	explaining := script("explaining-runtime", `while [ $# -gt 0 ]; do
	if [ "$1" = --log ]; then log=$2; fi
	shift
done
echo '{"level":"error","msg":"custom runtime says: no cgroup for you","time":"2026-01-01T00:00:00Z"}' >> "$log"
exit 1
`)
	cases := []struct {
		name, options string
		args          []string
		want          []string
	}{
		{"config the runtime rejects", "", []string{"/nonexistent-command"}, []string{"/nonexistent-command", "no such file or directory"}},
		{"missing runtime binary", `BinaryName = "/nonexistent/runc"`, []string{"true"}, []string{"/nonexistent/runc"}},
		{"crashing runtime", `BinaryName = "` + crashing + `"`, []string{"true"}, []string{"exit status 139"}},
		{"runtime with its own message", `BinaryName = "` + explaining + `"`, []string{"true"}, []string{"custom runtime says: no cgroup for you"}},
	}
	for i, c := range cases {
		id := e.id("fail")
		args := []string{"run", "--rm", "--runtime", harness.Runtime}
		if c.options != "" {
			args = append(args, "--runtime-config-path", e.runtimeConfig(c.options+"\n"))
		}
		args = append(append(args, harness.BusyboxImageName, id), c.args...)
		res, err := e.ctrErr(nil, args...)
		if err == nil {
			t.Errorf("%s: run succeeded", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(res.Stderr, w) {
				t.Errorf("%s: error %q lacks %q", c.name, strings.TrimSpace(res.Stderr), w)
			}
		}
		bundle := e.bundle(id)
		e.waitFor(c.name+": shim to exit", 10*time.Second, func() bool { return len(shimsFor(id)) == 0 })
		if m := mountsMatching(bundle); len(m) > 0 {
			t.Errorf("%s: mounts left: %v", c.name, m)
		}
		if _, err := os.Stat(bundle); !os.IsNotExist(err) {
			t.Errorf("%s: bundle left (%v)", c.name, err)
		}
		if _, err := os.Stat(filepath.Join("/run/containerd/runc", e.ctd.Namespace, id)); !os.IsNotExist(err) {
			t.Errorf("%s: runtime state left", c.name)
		}
		if res, _ := e.ctrErr(nil, "container", "ls", "-q"); strings.Contains(res.Stdout, id) {
			t.Errorf("%s: container left", c.name)
		}
		t.Logf("case %d, %s: %s", i+1, c.name, strings.TrimSpace(res.Stderr))
	}
}
